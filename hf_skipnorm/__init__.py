"""hf_skipnorm: a transformers model family whose norm placement, norm type and residual are config fields.

Importing the package registers `SkipNormConfig` and every head with the transformers Auto classes, so spawned
workers (DDP ranks, dataloader workers), which only run the package import, see them too.
"""

from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForMaskedLM,
    AutoModelForSeq2SeqLM,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
)

from .configuration_skipnorm import SkipNormConfig
from .modeling_skipnorm import (
    SkipNormBlock,
    SkipNormForCausalLM,
    SkipNormForMaskedLM,
    SkipNormForSequenceClassification,
    SkipNormForTokenClassification,
    SkipNormModel,
    SkipNormPreTrainedModel,
)
from .modeling_seq2seq_skipnorm import SkipNormEncoderDecoderModel, SkipNormForConditionalGeneration

__version__ = "0.1.0"

AutoConfig.register("skipnorm", SkipNormConfig, exist_ok=True)
for _auto, _model in (
    (AutoModel, SkipNormModel),
    (AutoModelForCausalLM, SkipNormForCausalLM),
    (AutoModelForMaskedLM, SkipNormForMaskedLM),
    (AutoModelForSequenceClassification, SkipNormForSequenceClassification),
    (AutoModelForTokenClassification, SkipNormForTokenClassification),
    # One config type, two base models: AutoModel maps SkipNormConfig to SkipNormModel, whose `_from_config` /
    # `from_pretrained` hand configs with is_encoder_decoder=True to SkipNormEncoderDecoderModel.
    (AutoModelForSeq2SeqLM, SkipNormForConditionalGeneration),
):
    _auto.register(SkipNormConfig, _model, exist_ok=True)

# Tools that are also command lines (`python -m hf_skipnorm.convert`) load on first use: importing them here would
# put the module in sys.modules before runpy runs it, and runpy then warns on every run.
_LAZY = {"export_for_hub": "hub", "convert_from_hf": "convert", "convert_to_hf": "convert"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "SkipNormConfig",
    "SkipNormPreTrainedModel",
    "SkipNormModel",
    "SkipNormForCausalLM",
    "SkipNormForMaskedLM",
    "SkipNormForSequenceClassification",
    "SkipNormForTokenClassification",
    "SkipNormBlock",
    "SkipNormEncoderDecoderModel",
    "SkipNormForConditionalGeneration",
    "export_for_hub",
    "convert_from_hf",
    "convert_to_hf",
]

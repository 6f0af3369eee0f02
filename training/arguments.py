"""Command-line arguments of training/train.py and training/finetune.py, in the run_clm.py style.

`HfArgumentParser` over four dataclasses: `ModelArguments` (how the config is assembled), `SkipNormArguments`
(one option per SkipNormConfig field, generated from the config class at import time, so a field added to the
config later appears on the command line with no edit here), `DataArguments`, and transformers'
`TrainingArguments`.

Where a model config value comes from, later wins:
    training defaults (a small CPU-sized model, TRAIN_MODEL_DEFAULTS)  <  --preset NAME  <  --config_file JSON
    <  one option per field (--norm_position post, --hidden_size 256, --norm_position '["post","pre"]').
"""

from __future__ import annotations

import dataclasses
import json
import os
import typing
from dataclasses import dataclass, field

from transformers import PreTrainedConfig, TrainingArguments

from hf_skipnorm import SkipNormConfig

PRESETS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "presets")

# A model that trains in a few minutes on a 2-core CPU (README command 1); any of these can be overridden.
TRAIN_MODEL_DEFAULTS = {"hidden_size": 192, "num_hidden_layers": 4, "num_attention_heads": 6}

# Config fields whose names TrainingArguments already uses get this prefix on the command line
# (TrainingArguments.use_cache is the Trainer's own switch, applied to model.config during training).
CLASHING_FIELD_PREFIX = "config_"


def skipnorm_config_fields(config_class=SkipNormConfig) -> list[dataclasses.Field]:
    """The fields the config class declares (those of the PreTrainedConfig base, like id2label, are not model cells)."""
    base = {f.name for f in dataclasses.fields(PreTrainedConfig)}
    return [f for f in dataclasses.fields(config_class) if f.name not in base]


def cli_name(config_field: str) -> str:
    clashing = {f.name for f in dataclasses.fields(TrainingArguments)}
    return CLASHING_FIELD_PREFIX + config_field if config_field in clashing else config_field


_SIMPLE_TYPES = {int: "int", float: "float", bool: "bool", str: "str"}


def _field_type(config_field: dataclasses.Field):
    """int/float/bool/str for a field of exactly that type, else None (the option takes JSON text: lists, dicts,
    unions with None). The annotation may be a string (`from __future__ import annotations`) or a type."""
    by_name = {kind.__name__: kind for kind in _SIMPLE_TYPES}
    hint = by_name.get(config_field.type) if isinstance(config_field.type, str) else config_field.type
    return hint if hint in _SIMPLE_TYPES else None


def build_skipnorm_arguments(config_class=SkipNormConfig):
    """A dataclass with one optional option per config field, for HfArgumentParser."""
    fields = []
    for config_field in skipnorm_config_fields(config_class):
        simple = _field_type(config_field)
        default = (
            config_field.default
            if config_field.default is not dataclasses.MISSING
            else (config_field.default_factory() if config_field.default_factory is not dataclasses.MISSING else None)
        )
        kind = _SIMPLE_TYPES[simple] if simple else "JSON or a plain string"
        help_text = (
            f"{config_class.__name__}.{config_field.name} ({kind}; config default {default!r}). "
            + ("" if simple else "Give JSON for lists/numbers/null, e.g. '[\"post\", \"pre\"]'.")
        )
        fields.append(
            (cli_name(config_field.name), typing.Optional[simple or str], field(default=None, metadata={"help": help_text}))
        )
    return dataclasses.make_dataclass(f"{config_class.__name__}Arguments", fields)


# One option per SkipNormConfig field; None means "not given on the command line".
SkipNormArguments = build_skipnorm_arguments(SkipNormConfig)


def _parse_json_value(text):
    if not isinstance(text, str):
        return text
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text  # a bare word such as post: the string itself


def cli_config_overrides(skipnorm_args, config_class=SkipNormConfig) -> dict:
    """{config field: value} for every field given on the command line."""
    overrides = {}
    for config_field in skipnorm_config_fields(config_class):
        value = getattr(skipnorm_args, cli_name(config_field.name))
        if value is None:
            continue
        overrides[config_field.name] = value if _field_type(config_field) else _parse_json_value(value)
    return overrides


def available_presets() -> list[str]:
    return sorted(name[: -len(".json")] for name in os.listdir(PRESETS_DIR) if name.endswith(".json"))


def load_config_values(path: str, flag: str) -> dict:
    """Config field values from a JSON file; keys starting with '_' (like _source) are documentation."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{flag}: file {path!r} does not exist")
    with open(path, encoding="utf-8") as handle:
        try:
            values = json.load(handle)
        except json.JSONDecodeError as error:
            raise ValueError(f"{flag}: {path!r} is not valid JSON ({error})") from None
    if not isinstance(values, dict):
        raise ValueError(f"{flag}: {path!r} must hold a JSON object of SkipNormConfig fields")
    return {key: value for key, value in values.items() if not key.startswith("_")}


def preset_values(name: str) -> dict:
    """A preset by name (training/presets/NAME.json) or by path to a JSON file."""
    if os.path.isfile(name):
        return load_config_values(name, "--preset")
    if name not in available_presets():
        raise ValueError(f"--preset {name!r} is not valid; valid choices: {', '.join(available_presets())} (or a JSON path)")
    return load_config_values(os.path.join(PRESETS_DIR, f"{name}.json"), "--preset")


# A config.json written by save_pretrained also carries these bookkeeping keys; they are not model cells.
_SAVED_CONFIG_BOOKKEEPING = {"model_type", "architectures", "transformers_version", "auto_map", "dtype", "torch_dtype"}


def assemble_config_values(model_args, skipnorm_args, defaults: dict | None = None) -> dict:
    """Merge defaults < preset < config file < command line into one dict of SkipNormConfig keyword arguments."""
    values = dict(TRAIN_MODEL_DEFAULTS if defaults is None else defaults)
    if model_args.preset:
        values.update(preset_values(model_args.preset))
    if model_args.config_file:
        from_file = load_config_values(model_args.config_file, "--config_file")
        values.update({k: v for k, v in from_file.items() if k not in _SAVED_CONFIG_BOOKKEEPING})
    values.update(cli_config_overrides(skipnorm_args))
    known = {f.name for f in dataclasses.fields(SkipNormConfig)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"unknown SkipNormConfig field(s) {unknown} (from --preset/--config_file); fields: {sorted(known)}")
    return values


@dataclass
class ModelArguments:
    preset: str | None = field(
        default=None,
        metadata={"help": "A named cell from training/presets (gpt2-style, llama-style, bert-style, olmo2-style, "
                  "gemma2-style) or a path to a JSON file of SkipNormConfig fields."},
    )
    config_file: str | None = field(
        default=None, metadata={"help": "JSON file of SkipNormConfig fields (a saved config.json works); overrides --preset."}
    )
    tokenizer_name: str | None = field(
        default=None, metadata={"help": "A saved tokenizer folder to use instead of training a byte-level BPE one."}
    )
    tokenizer_vocab_size: int = field(
        default=4096, metadata={"help": "Vocabulary size of the byte-level BPE tokenizer trained on the train split."}
    )


@dataclass
class DataArguments:
    dataset_name: str | None = field(default=None, metadata={"help": "A `datasets` name (Hub; needs the network)."})
    dataset_config_name: str | None = field(default=None, metadata={"help": "The dataset's configuration name."})
    train_file: str | None = field(default=None, metadata={"help": "Local training data: .txt, .json/.jsonl or .csv."})
    validation_file: str | None = field(default=None, metadata={"help": "Local validation data, same format."})
    text_column: str | None = field(default=None, metadata={"help": "Column with the text (default: 'text')."})
    validation_split_percentage: float = field(
        default=5.0, metadata={"help": "Percent of train rows held out when there is no validation split."}
    )
    block_size: int = field(default=128, metadata={"help": "Tokens per training sequence (documents are packed)."})
    streaming: bool = field(default=False, metadata={"help": "Stream the dataset instead of downloading it (needs --max_steps)."})
    streaming_validation_rows: int = field(
        default=200, metadata={"help": "When streaming without a validation split: rows held out from the start."}
    )
    mlm_probability: float = field(default=0.15, metadata={"help": "Masking rate for masked-LM training (is_causal=False)."})
    preprocessing_num_workers: int | None = field(default=None, metadata={"help": "Processes for tokenization."})


@dataclass
class RunArguments:
    on_nonfinite: str = field(
        default="stop",
        metadata={"help": "On a non-finite loss/gradient: 'stop' (raise, naming the step and layer) or 'skip' the update."},
    )
    sample_prompt: str = field(default='The "assert" statement', metadata={"help": "Prompt for the generated sample."})
    sample_max_new_tokens: int = field(
        default=60, metadata={"help": "Tokens to generate after reloading the saved model in a fresh process (0: skip)."}
    )

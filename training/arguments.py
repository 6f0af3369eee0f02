"""Command-line arguments of training/train.py and training/finetune.py, in the run_clm.py style.

`HfArgumentParser` over four dataclasses: `ModelArguments` (how the config is assembled), `SkipNormArguments`
(one option per SkipNormConfig field, generated from the config class at import time, so a field added to the
config later appears on the command line with no edit here), `DataArguments`, and transformers'
`TrainingArguments`.

Where a model config value comes from, later wins:
    training defaults (a small CPU-sized model, TRAIN_MODEL_DEFAULTS)  <  --preset NAME  <  --config_file JSON
    (or --config_name FOLDER_OR_CACHED_ID)  <  --config_overrides "k=v,k2=v2"  <  one option per field (--norm_position post, --hidden_size 256,
    --norm_position '["post","pre"]').
With --model_name_or_path (continue training) or --resume_from_checkpoint the checkpoint fixes the cell: a field
given on the command line must equal the checkpoint's, except the runtime fields in RUNTIME_FIELDS.

Also here: `check_arguments` (every impossible setting refused before any data is read), `run_record` (what a
resume must agree on; checked by `checkpoints.check_resume_matches`), and the grouped `--help` (`build_parser`).
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import hashlib
import json
import math
import os
import typing
from dataclasses import dataclass, field

from transformers import HfArgumentParser, PreTrainedConfig, TrainingArguments

from hf_skipnorm import SkipNormConfig
from hf_skipnorm import configuration_skipnorm as cells
from hf_skipnorm.config_fields_skipnorm import Choice

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

# The valid values of the string-valued cell fields, read from the config's field table (its Choice rows) and,
# for the placements (checked by a function: a string or a per-layer list), from NORM_POSITIONS, so a value added
# there is listed by --help with no edit here.
FIELD_CHOICES: dict[str, tuple[str, ...]] = {
    **{row.name: row.spec.choices for row in cells.FIELDS
       if isinstance(row.spec, Choice) and isinstance(row.spec.choices, tuple)},
    **{name: cells.NORM_POSITIONS for name in ("norm_position", "attn_norm_position", "mlp_norm_position")},
}

# Fields that train.py takes from the tokenizer unless given.
TOKENIZER_FIELDS = ("vocab_size", "pad_token_id", "bos_token_id", "eos_token_id")

# Fields that change how a loaded model trains or runs, not what its weights compute at inference: a continued or
# resumed run may change them (dropout rates, stochastic depth, the KV cache switch).
RUNTIME_FIELDS = ("attention_dropout", "hidden_dropout", "layer_drop", "layer_drop_schedule", "use_cache")


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
        kind = _SIMPLE_TYPES[simple] if simple else "JSON"
        choices = FIELD_CHOICES.get(config_field.name)
        if config_field.name in TOKENIZER_FIELDS:
            shown = "from the tokenizer"
        elif config_field.name in TRAIN_MODEL_DEFAULTS and config_class is SkipNormConfig:
            shown = f"{TRAIN_MODEL_DEFAULTS[config_field.name]!r} in train.py ({default!r} in the config)"
        else:
            shown = repr(default)
        help_text = f"{kind}, default {shown}" + (f": {' | '.join(choices)}" if choices else "")
        fields.append(
            (cli_name(config_field.name), typing.Optional[simple or str], field(default=None, metadata={"help": help_text}))
        )
    arguments = dataclasses.make_dataclass(f"{config_class.__name__}Arguments", fields)
    # HfArgumentParser titles the group with this; argparse prints no description for it, so the title says it all.
    arguments._argument_group_name = (
        f"model cell, one option per {config_class.__name__} field (type, default, valid values; lists as JSON: "
        "--norm_position '[\"post\",\"pre\"]')"
    )
    return arguments


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


def _split_top_level(text: str) -> list[str]:
    """Split at commas outside brackets and quotes: norm_position=["post","pre"],hidden_size=64 is two items."""
    items, depth, quote, start = [], 0, None, 0
    for i, char in enumerate(text):
        if quote:
            quote = None if char == quote else quote
        elif char in "\"'":
            quote = char
        elif char in "[{":
            depth += 1
        elif char in "]}":
            depth -= 1
        elif char == "," and depth == 0:
            items.append(text[start:i])
            start = i + 1
    items.append(text[start:])
    return [item.strip() for item in items if item.strip()]


def parse_config_overrides(text: str | None, config_class=SkipNormConfig) -> dict:
    """--config_overrides "k=v,k2=v2" (run_clm.py's syntax): values typed by the field (bool true/false, int,
    float, str); list/dict fields take JSON. Unknown keys are refused with the nearest field named."""
    if not text:
        return {}
    fields = {f.name: f for f in skipnorm_config_fields(config_class)}
    overrides = {}
    for item in _split_top_level(text):
        key, sep, raw = item.partition("=")
        key, raw = key.strip(), raw.strip()
        if not sep or not key:
            raise ValueError(f"--config_overrides: {item!r} is not key=value (example: \"hidden_size=64,norm_type=layernorm\")")
        if key not in fields:
            near = difflib.get_close_matches(key, fields, n=1)
            raise ValueError(
                f"--config_overrides: {key!r} is not a {config_class.__name__} field"
                + (f"; did you mean {near[0]!r}?" if near else f"; fields: {sorted(fields)}")
            )
        kind = _field_type(fields[key])
        try:
            if kind is bool:
                if raw.lower() not in ("true", "false"):
                    raise ValueError("expected true or false")
                value = raw.lower() == "true"
            elif kind in (int, float):
                value = kind(raw)
            elif kind is str:
                value = raw
            else:
                value = _parse_json_value(raw)
        except ValueError as error:
            raise ValueError(f"--config_overrides: {key}={raw!r} is not a valid {kind.__name__} ({error})") from None
        overrides[key] = value
    return overrides


def checkpoint_conflicts(config, requested: dict) -> list[str]:
    """The requested cell values that contradict a checkpoint's config (runtime fields excepted), as
    'name=new (checkpoint: old)'. A value the config resolves on construction (residual_alpha=None becomes the
    residual's constant, rope_parameters=None the default RoPE) is compared after that resolution."""
    asked = {name: value for name, value in requested.items() if name not in RUNTIME_FIELDS}
    differing = [name for name, value in asked.items() if getattr(config, name, None) != value]
    if not differing:
        return []
    fields = {f.name: getattr(config, f.name) for f in skipnorm_config_fields(type(config))}
    try:
        rebuilt = type(config)(**{**fields, **asked})
    except (ValueError, TypeError):
        rebuilt = None  # the request does not even build: every differing value is a conflict
    return [
        f"{name}={asked[name]!r} (checkpoint: {getattr(config, name, None)!r})"
        for name in differing
        if rebuilt is None or getattr(rebuilt, name, None) != getattr(config, name, None)
    ]


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


def config_name_file(model_args) -> str | None:
    """The config.json of --config_name (a folder, or a Hub id in the local cache: never downloaded)."""
    name = getattr(model_args, "config_name", None)
    if not name:
        return None
    if os.path.isdir(name):
        return os.path.join(name, "config.json")
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(name, "config.json", cache_dir=model_args.cache_dir, revision=model_args.model_revision)
    if not isinstance(cached, str):
        raise FileNotFoundError(f"--config_name {name!r} is neither a folder nor a Hub id whose config.json is in the local "
                                "Hugging Face cache (train.py never downloads)")
    return cached


def assemble_config_values(model_args, skipnorm_args, defaults: dict | None = None) -> dict:
    """Merge defaults < preset < config file < --config_overrides < one option per field into one dict of
    SkipNormConfig keyword arguments."""
    values = dict(TRAIN_MODEL_DEFAULTS if defaults is None else defaults)
    if model_args.preset:
        values.update(preset_values(model_args.preset))
    for flag, path in (("--config_file", model_args.config_file), ("--config_name", config_name_file(model_args))):
        if path:
            from_file = load_config_values(path, flag)
            values.update({k: v for k, v in from_file.items() if k not in _SAVED_CONFIG_BOOKKEEPING})
    values.update(parse_config_overrides(getattr(model_args, "config_overrides", None)))
    values.update(cli_config_overrides(skipnorm_args))
    known = {f.name for f in dataclasses.fields(SkipNormConfig)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"unknown SkipNormConfig field(s) {unknown} (from --preset/--config_file); fields: {sorted(known)}")
    return values


DTYPE_CHOICES = ("auto", "float32", "bfloat16", "float16")


@dataclass
class ModelArguments:
    """Where the model comes from: a new cell (--preset, --config_file, --config_overrides and one option per field)
    or a saved model to continue training from (--model_name_or_path), in run_clm.py's vocabulary."""

    _argument_group_name = "model source (run_clm.py-style)"

    model_name_or_path: str | None = field(
        default=None,
        metadata={"help": "Continue training from a saved skipnorm model: a folder (train.py output, a checkpoint-N, "
                  "`python -m hf_skipnorm.convert` output) or a Hub id already in the local cache (never downloads). "
                  "Fresh optimizer; for an interrupted run use --resume_from_checkpoint."},
    )
    config_overrides: str | None = field(
        default=None,
        metadata={"help": "Config fields as \"k=v,k2=v2\" (run_clm.py syntax), e.g. \"hidden_size=64,norm_type=layernorm\"."},
    )
    preset: str | None = field(
        default=None,
        metadata={"help": "A named cell from training/presets (gpt2-style, llama-style, bert-style, olmo2-style, "
                  "gemma2-style) or a path to a JSON file of SkipNormConfig fields."},
    )
    config_file: str | None = field(
        default=None, metadata={"help": "JSON file of SkipNormConfig fields (a saved config.json works); overrides --preset."}
    )
    config_name: str | None = field(
        default=None,
        metadata={"help": "A folder or cached Hub id whose config.json gives the cell (run_clm.py); like --config_file."},
    )
    tokenizer_name: str | None = field(
        default=None,
        metadata={"help": "A tokenizer folder or cached Hub id (default: the model's own with --model_name_or_path, "
                  "else a byte-level BPE tokenizer trained on the train split)."},
    )
    tokenizer_vocab_size: int = field(
        default=4096, metadata={"help": "Vocabulary size of the byte-level BPE tokenizer trained on the train split."}
    )
    cache_dir: str | None = field(default=None, metadata={"help": "Hugging Face cache folder for Hub ids and datasets."})
    model_revision: str = field(default="main", metadata={"help": "Branch, tag or commit of a cached Hub id."})
    trust_remote_code: bool = field(
        default=False,
        metadata={"help": "Let transformers run model/tokenizer code shipped in the folder (auto_map) instead of the "
                  "installed hf_skipnorm classes."},
    )
    dtype: str | None = field(
        default=None,
        metadata={"help": f"Weights dtype of the trained model ({' | '.join(DTYPE_CHOICES)}; auto: the checkpoint's). "
                  "Default float32 (master weights; use --bf16 for mixed precision)."},
    )
    torch_dtype: str | None = field(default=None, metadata={"help": "Old name of --dtype (run_clm.py)."})
    low_cpu_mem_usage: bool = field(
        default=False,
        metadata={"help": "Accepted for run_clm.py command lines; transformers 5 always loads this way (no effect)."},
    )

    def resolved_dtype(self) -> str:
        if self.dtype and self.torch_dtype and self.dtype != self.torch_dtype:
            raise ValueError(f"--dtype {self.dtype!r} and --torch_dtype {self.torch_dtype!r} disagree: give one")
        value = self.dtype or self.torch_dtype or "float32"
        if value not in DTYPE_CHOICES:
            raise ValueError(f"--dtype {value!r} is not valid; valid choices: {', '.join(DTYPE_CHOICES)}")
        return value


@dataclass
class DataArguments:
    _argument_group_name = "data"

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
    max_train_samples: int | None = field(
        default=None, metadata={"help": "Train on the first N packed blocks only (run_clm.py; for quick checks)."}
    )
    max_eval_samples: int | None = field(default=None, metadata={"help": "Evaluate on the first N packed blocks only."})


@dataclass
class RunArguments:
    _argument_group_name = "run"

    overwrite_output_dir: bool = field(
        default=False,
        metadata={"help": "Allow an --output_dir that already holds files; its checkpoint-N folders are deleted first "
                  "(otherwise such a folder is refused, so no run replaces another's checkpoints)."},
    )
    on_nonfinite: str = field(
        default="stop",
        metadata={"help": "On a non-finite loss/gradient: 'stop' (raise, naming the step and layer) or 'skip' the update."},
    )
    sample_prompt: str = field(default='The "assert" statement', metadata={"help": "Prompt for the generated sample."})
    sample_max_new_tokens: int = field(
        default=60, metadata={"help": "Tokens to generate after reloading the saved model in a fresh process (0: skip)."}
    )


# ---------------------------------------------------------------------------------------------- checks
def _positive(name: str, value, allow_fraction: bool = False) -> str | None:
    if value is None:
        return None
    if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
        what = "a positive number of steps (or a fraction in (0, 1) of the run)" if allow_fraction else "at least 1"
        return f"--{name} {value!r} must be {what}"
    return None


STEP_INTERVALS = ("eval_steps", "save_steps", "logging_steps")


def check_step_intervals(parsed: dict) -> None:
    """On the parsed command line, before TrainingArguments exists: it silently replaces --eval_steps 0 by
    --logging_steps, so a zero must be caught here."""
    for name in STEP_INTERVALS:
        value = parsed.get(name)
        if value is not None and not (math.isfinite(value) and value > 0):
            raise ValueError(f"impossible training settings:\n  --{name} {value} must be a positive number of steps "
                             "(or a fraction in (0, 1) of the run)")


def check_arguments(model_args, data_args, run_args, training_args) -> None:
    """Refuse every setting that cannot train, before any data is read or tokenizer trained: one ValueError
    listing each problem with the option, its value and what is valid."""
    problems = []
    max_steps = training_args.max_steps
    if max_steps == 0 or max_steps < -1:
        problems.append(f"--max_steps {max_steps} must be a positive number of optimizer steps (or -1: use --num_train_epochs)")
    if max_steps == -1 and not training_args.num_train_epochs > 0:
        problems.append(f"--num_train_epochs {training_args.num_train_epochs} must be > 0 when --max_steps is -1")
    lr = training_args.learning_rate
    if not (math.isfinite(lr) and lr >= 0):
        problems.append(f"--learning_rate {lr} must be a finite number >= 0")
    for name in ("per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps"):
        value = getattr(training_args, name)
        if not (isinstance(value, int) and value >= 1):
            problems.append(f"--{name} {value!r} must be at least 1")
    strategies = {"eval_steps": "eval_strategy", "save_steps": "save_strategy", "logging_steps": "logging_strategy"}
    for name, strategy in strategies.items():
        if str(getattr(training_args, strategy)).rsplit(".", 1)[-1].lower() == "steps":
            problems.append(_positive(name, getattr(training_args, name), allow_fraction=True))
    for name in ("weight_decay", "max_grad_norm", "warmup_steps"):
        value = getattr(training_args, name)
        if not (math.isfinite(value) and value >= 0):
            problems.append(f"--{name} {value} must be a finite number >= 0")
    if not (0 <= training_args.adam_beta1 < 1 and 0 <= training_args.adam_beta2 < 1):
        problems.append(f"--adam_beta1 {training_args.adam_beta1} / --adam_beta2 {training_args.adam_beta2} must be in [0, 1)")
    if not training_args.adam_epsilon > 0:
        problems.append(f"--adam_epsilon {training_args.adam_epsilon} must be > 0")
    if training_args.save_total_limit is not None and training_args.save_total_limit < 1:
        problems.append(f"--save_total_limit {training_args.save_total_limit} must be at least 1 (or unset: keep all)")
    if data_args.block_size < 2:
        problems.append(f"--block_size {data_args.block_size} must be at least 2 (a language model predicts token t+1 from t)")
    if not 0 < data_args.mlm_probability < 1:
        problems.append(f"--mlm_probability {data_args.mlm_probability} must be in (0, 1)")
    if not 0 < data_args.validation_split_percentage < 100:
        problems.append(f"--validation_split_percentage {data_args.validation_split_percentage} must be in (0, 100)")
    if data_args.streaming_validation_rows < 1:
        problems.append(f"--streaming_validation_rows {data_args.streaming_validation_rows} must be at least 1")
    for name in ("max_train_samples", "max_eval_samples"):
        if getattr(data_args, name) is not None and getattr(data_args, name) < 1:
            problems.append(f"--{name} {getattr(data_args, name)} must be at least 1")
    if data_args.preprocessing_num_workers is not None and data_args.preprocessing_num_workers < 1:
        problems.append(f"--preprocessing_num_workers {data_args.preprocessing_num_workers} must be at least 1")
    if data_args.streaming and max_steps <= 0:
        problems.append("--streaming needs --max_steps > 0: a streamed dataset has no length to count epochs from")
    minimum_vocab = 256 + 3 + 1  # byte alphabet + the special tokens of training/data.py + at least one merge
    if not (model_args.model_name_or_path or model_args.tokenizer_name) and model_args.tokenizer_vocab_size < minimum_vocab:
        problems.append(
            f"--tokenizer_vocab_size {model_args.tokenizer_vocab_size} is too small: byte-level BPE needs 256 byte "
            f"tokens plus 3 special tokens, so use at least {minimum_vocab}"
        )
    if run_args.on_nonfinite not in ("stop", "skip"):
        problems.append(f"--on_nonfinite {run_args.on_nonfinite!r} is not valid; valid choices: stop, skip")
    if run_args.sample_max_new_tokens < 0:
        problems.append(f"--sample_max_new_tokens {run_args.sample_max_new_tokens} must be >= 0 (0: no sample)")
    try:
        model_args.resolved_dtype()
    except ValueError as error:
        problems.append(str(error))
    problems = [p for p in problems if p]
    if problems:
        raise ValueError("impossible training settings:\n  " + "\n  ".join(problems))


# ------------------------------------------------------------------------------------- the run's identity
# The TrainingArguments that decide the trajectory: a resume with any of them changed is a different run.
RUN_TRAINING_FIELDS = (
    "seed", "data_seed", "learning_rate", "lr_scheduler_type", "lr_scheduler_kwargs", "warmup_steps", "weight_decay",
    "adam_beta1", "adam_beta2", "adam_epsilon", "optim", "optim_args", "max_grad_norm", "max_steps",
    "num_train_epochs", "per_device_train_batch_size", "gradient_accumulation_steps", "label_smoothing_factor",
    "dataloader_drop_last", "bf16", "fp16", "full_determinism",
)
# Files bigger than this are identified by size and mtime instead of a content hash (hashing would delay the start).
HASH_LIMIT_BYTES = 256 * 2**20


def file_identity(path: str | None) -> str | None:
    if not path or not os.path.isfile(path):
        return path
    size = os.path.getsize(path)
    if size > HASH_LIMIT_BYTES:
        return f"{os.path.abspath(path)} ({size} bytes, mtime {os.path.getmtime(path):.0f})"
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(2**20), b""):
            digest.update(chunk)
    return f"{os.path.abspath(path)} (sha256 {digest.hexdigest()[:16]})"


def run_record(training_args, data_args=None, model_args=None, extra: dict | None = None) -> dict:
    """{option name: value} for everything a resumed run must share with the run that wrote the checkpoint:
    seed, schedule, optimizer, batch and steps (RUN_TRAINING_FIELDS), the processes, the data and tokenizer."""
    saved = training_args.to_dict()
    record = {name: saved.get(name) for name in RUN_TRAINING_FIELDS}
    record["world_size"] = training_args.world_size
    if data_args is not None:
        record.update(
            dataset_name=data_args.dataset_name, dataset_config_name=data_args.dataset_config_name,
            train_file=file_identity(data_args.train_file), validation_file=file_identity(data_args.validation_file),
            text_column=data_args.text_column, validation_split_percentage=data_args.validation_split_percentage,
            block_size=data_args.block_size, streaming=data_args.streaming,
            streaming_validation_rows=data_args.streaming_validation_rows, mlm_probability=data_args.mlm_probability,
            max_train_samples=data_args.max_train_samples,
        )
    if model_args is not None:
        record.update(
            model_name_or_path=model_args.model_name_or_path, tokenizer_name=model_args.tokenizer_name,
            tokenizer_vocab_size=model_args.tokenizer_vocab_size, dtype=model_args.resolved_dtype(),
        )
    record.update(extra or {})
    return json.loads(json.dumps(record, default=str))  # the form it has once read back from disk


# ---------------------------------------------------------------------------------------------- --help
# TrainingArguments options shown in full by --help; the other ~100 are listed by name (--help_all: all in full).
COMMON_TRAINING_OPTIONS = (
    "output_dir", "max_steps", "num_train_epochs", "learning_rate", "lr_scheduler_type", "warmup_steps",
    "weight_decay", "max_grad_norm", "per_device_train_batch_size", "per_device_eval_batch_size",
    "gradient_accumulation_steps", "eval_strategy", "eval_steps", "save_steps", "save_total_limit",
    "logging_steps", "seed", "resume_from_checkpoint", "bf16", "use_cpu", "report_to", "disable_tqdm",
)
HELP_ALL = "--help_all"


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the description's line breaks (the usage examples); one line per option where it fits; appends
    the default only where the help does not state it."""

    def __init__(self, prog):
        super().__init__(prog, max_help_position=34, width=118)

    def _get_help_string(self, action):
        text = action.help or ""
        if "default" in text or action.default in (None, argparse.SUPPRESS, False) or action.option_strings == []:
            return text
        return f"{text} (default: {action.default})"

    def _format_action_invocation(self, action):
        # "--norm_position V", not "--norm_position, --norm-position NORM_POSITION" (the dashed alias still works)
        if action.option_strings and action.nargs != 0:
            return f"{action.option_strings[0]} {self._format_args(action, 'V')}"
        return action.option_strings[0] if action.option_strings else super()._format_action_invocation(action)

    def _format_args(self, action, default_metavar):
        if action.choices is not None and len(action.choices) > 4:
            return "V"  # the choices are in the help text
        return super()._format_args(action, "V")


def build_parser(dataclass_types, description: str, usage: str, defaults: dict, full_help: bool = False) -> HfArgumentParser:
    """HfArgumentParser over `dataclass_types` whose --help is grouped and short: our options in full, each cell
    field on one line with its valid values, the common Trainer options in full and the others by name."""
    parser = HfArgumentParser(dataclass_types, formatter_class=_HelpFormatter, usage=usage, description=description)
    parser.set_defaults(**defaults)
    parser.add_argument(HELP_ALL, action="store_true", help="Show every TrainingArguments option in full, then exit.")
    if full_help:
        return parser
    training_dests = {f.name for f in dataclasses.fields(TrainingArguments)}
    hidden = []
    for action in parser._actions:
        if action.dest in training_dests and action.dest not in COMMON_TRAINING_OPTIONS and action.help != argparse.SUPPRESS:
            action.help = argparse.SUPPRESS
            if action.option_strings and action.option_strings[0].startswith("--no_"):
                continue  # the negated twin of a boolean option
            hidden.append(action.option_strings[0])
    trainer_group = parser._optionals  # TrainingArguments has no group of its own: it fills argparse's default one
    trainer_group.title = "Trainer options (TrainingArguments; the common ones) and help"
    trainer_group.description = _wrap_names(f"Also accepted, shown in full by {HELP_ALL}:", sorted(set(hidden)), width=114)
    parser._action_groups.remove(trainer_group)  # after our own groups
    parser._action_groups.append(trainer_group)
    return parser


def _wrap_names(lead: str, names: list[str], width: int) -> str:
    lines, line = [], lead
    for name in names:
        if len(line) + 1 + len(name) > width:
            lines.append(line)
            line = " "
        line += " " + name
    return "\n".join(lines + [line])

"""Safe, strict checkpoint loading: safetensors only, and the weights must be the ones the config builds.

transformers 5.24's `from_pretrained`, left alone (checked by running it):
- falls back to `pytorch_model.bin` when a folder has no safetensors file and reads it with `torch.load`
  (a restricted unpickler, but still an unpickler of an untrusted file);
- fills weights that the checkpoint lacks with random values and only logs a report, so a config that asks
  for 3 layers "loads" a 2-layer checkpoint, and an untied checkpoint without `lm_head.weight` gets a random head;
- drops checkpoint tensors the model has no place for (a `final_norm` the config switched off), logging them;
- refuses shape mismatches but names the keys only in the logged report;
- reports a truncated safetensors file as a `SafetensorError` that names no file.
`safe_from_pretrained` turns each of these into an error that names the file or the key (`LoadReport`). Only a new
task head (`score`, `mlm_transform`, ...) missing from a checkpoint of another task or of the backbone is
initialized, with a warning, as fine-tuning expects; tied weights are filled from their source as usual.

It imports only the standard library (and torch, inside the NaN scan), so it travels with a checkpoint for
`trust_remote_code` like the rest of the model code.
"""

from __future__ import annotations

import json
import os
import struct
import warnings
from collections.abc import Callable
from typing import Any

SAFE_WEIGHTS_NAME = "model.safetensors"
SAFE_WEIGHTS_INDEX_NAME = "model.safetensors.index.json"
# Files that `torch.load` / `pickle` would read: refused, never opened.
PICKLE_SUFFIXES: tuple[str, ...] = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
MAX_LISTED_PROBLEMS = 20  # a 100-layer mismatch should not print 900 lines


def _with_variant(name: str, variant: str | None) -> str:
    """transformers' variant naming: model.safetensors -> model.<variant>.safetensors."""
    if not variant:
        return name
    stem, _, rest = name.partition(".")
    return f"{stem}.{variant}.{rest}"


def pickle_weight_files(folder: str) -> list[str]:
    """Names of the files in `folder` that hold (or index) pickled weights."""
    return sorted(
        name for name in os.listdir(folder)
        if name.endswith(PICKLE_SUFFIXES) or name.endswith(tuple(s + ".index.json" for s in PICKLE_SUFFIXES))
    )


def check_safetensors_file(path: str) -> None:
    """Raise `OSError` naming `path` unless it is a complete safetensors file.

    The format is an 8-byte little-endian header length, a JSON header mapping each tensor name to its dtype,
    shape and ``data_offsets`` (relative to the end of the header), then the tensor bytes. A truncated download
    or a corrupted file breaks the header or leaves offsets pointing past the end of the file.
    """
    size = os.path.getsize(path)
    with open(path, "rb") as handle:
        prefix = handle.read(8)
        if len(prefix) < 8:
            raise OSError(f"{path} is not a valid safetensors file: {size} bytes, shorter than the 8-byte header length")
        (header_len,) = struct.unpack("<Q", prefix)
        if 8 + header_len > size:
            raise OSError(
                f"{path} is truncated or corrupted: its header claims {header_len} bytes but the file has {size} bytes"
            )
        try:
            header = json.loads(handle.read(header_len))
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise OSError(f"{path} is corrupted: its safetensors header is not valid JSON ({error})") from None
    if not isinstance(header, dict):
        raise OSError(f"{path} is corrupted: its safetensors header is not a JSON object")
    data_len = size - 8 - header_len
    data_end = 0
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        offsets = entry.get("data_offsets") if isinstance(entry, dict) else None
        if not (isinstance(offsets, list) and len(offsets) == 2 and 0 <= offsets[0] <= offsets[1]):
            raise OSError(f"{path} is corrupted: tensor {name!r} has no valid data_offsets")
        if offsets[1] > data_len:
            raise OSError(
                f"{path} is truncated: tensor {name!r} ends at byte {offsets[1]} of the data section, "
                f"which has only {data_len} bytes"
            )
        data_end = max(data_end, offsets[1])
    if data_end != data_len:
        raise OSError(f"{path} is corrupted: {data_len - data_end} bytes after the last tensor")


def local_weight_files(folder: str, variant: str | None = None) -> list[str]:
    """The safetensors files `from_pretrained` would read from a local `folder` (same order as transformers:
    a single file, then a sharded index, then the rank shards of `save_pretrained(distributed_checkpoint=True)`);
    raises `OSError` naming a shard the index lists but lacks."""
    single = os.path.join(folder, _with_variant(SAFE_WEIGHTS_NAME, variant))
    if os.path.isfile(single):
        return [single]
    index = os.path.join(folder, _with_variant(SAFE_WEIGHTS_INDEX_NAME, variant))
    if not os.path.isfile(index):
        return sorted(os.path.join(folder, name) for name in os.listdir(folder) if name.endswith(".safetensors"))
    try:
        with open(index, encoding="utf-8") as handle:
            shards = sorted(set(json.load(handle)["weight_map"].values()))
    except (json.JSONDecodeError, KeyError, AttributeError, TypeError) as error:
        raise OSError(f"{index} is corrupted: expected JSON with a 'weight_map' ({error!r})") from None
    paths = [os.path.join(folder, shard) for shard in shards]
    for path in paths:
        if not os.path.isfile(path):
            raise OSError(f"{index} lists the shard {os.path.basename(path)} but {path} does not exist")
    return paths


def check_local_checkpoint(folder: str, variant: str | None = None) -> None:
    """Refuse a local checkpoint folder before transformers touches it: pickle-only weights, or a safetensors
    file that is truncated or corrupted. Each error names the file."""
    files = local_weight_files(folder, variant)
    if not files:
        pickled = pickle_weight_files(folder)
        if pickled:
            raise OSError(
                f"{folder} has only pickle weights ({', '.join(pickled)}) and no {SAFE_WEIGHTS_NAME}. SkipNorm models "
                f"load safetensors only, because unpickling a file can run arbitrary code. If you trust the file, "
                f"convert it once: model.load_state_dict(torch.load(path, weights_only=True)); model.save_pretrained(dir)."
            )
        return  # nothing to load: transformers raises its own "no file named model.safetensors" error
    for path in files:
        check_safetensors_file(path)


class CheckpointMismatchError(ValueError, RuntimeError):
    """The checkpoint's tensors do not fit the model its config builds. A `RuntimeError`, as transformers raises for
    shape mismatches (so `except RuntimeError` written for transformers still catches it), and a `ValueError`, as
    every other bad-input error of this package."""


# The task heads of the SkipNorm classes (`lm_head`, `mlm_transform`, `score`): the only modules that a checkpoint of
# another task (or of the bare backbone) may lack, or carry without this class having them.
# `final_logits_bias` is the encoder-decoder LM head's fixed logit bias (BART, Marian; issue 16).
TASK_HEADS: tuple[str, ...] = ("lm_head", "mlm_transform", "score", "final_logits_bias")


def _listed(keys, limit: int = MAX_LISTED_PROBLEMS) -> str:
    keys = sorted(keys)
    shown = ", ".join(keys[:limit])
    return shown + (f", ... and {len(keys) - limit} more" if len(keys) > limit else "")


class LoadReport:
    """How each tensor of a load was reconciled with the model the config builds.

    `problems`: one line per key that would be silently dropped or random-filled (the load is refused);
    `new_heads`: task-head tensors initialized because the checkpoint is another task's or the bare backbone's;
    `other_heads`: another task's head tensors in the checkpoint that this class has no place for;
    `reinitialized`: shape mismatches re-initialized on request (`ignore_mismatched_sizes=True`).
    """

    def __init__(self, model, info: dict[str, Any], allow_shape_mismatch: bool, checkpoint_classes: list[str]):
        self.problems: list[str] = []
        self.new_heads: list[str] = []
        self.other_heads: list[str] = []
        self.reinitialized: list[str] = []
        prefix = model.base_model_prefix + "."
        is_base = model.base_model is model
        children = {name for name, _ in model.named_children()}
        # saved by this class (or a class it subclasses): every head tensor must be there
        saved_by = next((c.__name__ for c in type(model).__mro__ if c.__name__ in checkpoint_classes), None)

        for key, checkpoint_shape, model_shape in sorted(info["mismatched_keys"]):
            line = (f"{key}: shape {tuple(checkpoint_shape)} in the checkpoint, {tuple(model_shape)} built from the "
                    f"config")
            (self.reinitialized if allow_shape_mismatch else self.problems).append(line)

        def head_of(key: str) -> str | None:
            """The task head a key belongs to, or None for a backbone (or unknown) key."""
            if not is_base and key.startswith(prefix):
                return None
            root = key.split(".")[0]
            return root if root in TASK_HEADS else None

        tied = set(getattr(model, "all_tied_weights_keys", {}))  # filled from their source, never "loaded"
        unexpected_heads = {head_of(key) for key in info["unexpected_keys"]}
        loaded_heads = {head_of(key) for key in model.state_dict() if key not in info["missing_keys"] | tied}
        for key in sorted(info["unexpected_keys"]):
            head = head_of(key)
            if head is not None and head not in children:
                self.other_heads.append(key)
            else:
                self.problems.append(
                    f"{key}: in the checkpoint but not built from the config (the model has no tensor of that name)"
                )
        for key in sorted(info["missing_keys"]):
            head = head_of(key)
            if head is None:
                self.problems.append(f"{key}: built from the config but missing from the checkpoint")
            elif saved_by:
                hint = ("; if the checkpoint ties it to the input embeddings, load with tie_word_embeddings=True"
                        if key == "lm_head.weight" else "")
                self.problems.append(f"{key}: missing from a checkpoint saved by {saved_by}, which has this head (it "
                                     f"would be random-filled){hint}")
            elif head in unexpected_heads or head in loaded_heads:
                self.problems.append(f"{key}: missing, while the checkpoint holds other {head} tensors: the head would "
                                     f"be half loaded (a renamed key, or another task's head of the same name)")
            else:
                self.new_heads.append(key)

    def warn(self, name) -> None:
        if self.new_heads:
            warnings.warn(
                f"Some weights of {name} are newly initialized, as the checkpoint is not a checkpoint of this task: "
                f"{_listed(self.new_heads)}. Train the model on the task before using it for predictions.",
                stacklevel=4,
            )
        if self.other_heads:
            warnings.warn(f"The checkpoint {name} holds another task's head, which this class does not use: "
                          f"{_listed(self.other_heads)}", stacklevel=4)
        if self.reinitialized:
            warnings.warn(
                f"Some weights of {name} have other shapes than the config builds and were re-initialized "
                f"(ignore_mismatched_sizes=True):\n  " + "\n  ".join(self.reinitialized[:MAX_LISTED_PROBLEMS]),
                stacklevel=4,
            )

    def raise_problems(self, name, model) -> None:
        if not self.problems:
            return
        listed = self.problems[:MAX_LISTED_PROBLEMS]
        if len(self.problems) > len(listed):
            listed.append(f"... and {len(self.problems) - len(listed)} more")
        raise CheckpointMismatchError(
            f"The weights in {name} do not match its config ({type(model).__name__}):\n  " + "\n  ".join(listed)
            + "\nNothing is dropped or random-filled silently. To drop or initialize keys on purpose, list them (as "
            "regexes) in `_keys_to_ignore_on_load_unexpected` / `_keys_to_ignore_on_load_missing` of a subclass, as "
            "transformers documents; for shape mismatches, pass ignore_mismatched_sizes=True."
        )


def non_finite_tensors(model, skip: set[str]) -> list[str]:
    """Names of the model's floating tensors (parameters and persistent buffers) holding NaN or inf, except `skip`.

    Reads the tensors already in memory, no second read of the files: one min/max reduction per tensor (NaN
    propagates through both, inf shows in one; 30x faster than `isfinite().all()`, which writes a mask), one host
    sync for all of them."""
    import torch

    names, bounds, seen = [], [], set()
    for key, tensor in model.state_dict(keep_vars=True).items():
        if key in skip or id(tensor) in seen or not tensor.is_floating_point() or tensor.is_meta or not tensor.numel():
            continue
        seen.add(id(tensor))
        local = tensor.to_local() if hasattr(tensor, "to_local") else tensor  # a TP shard (DTensor): this rank's part
        if local.numel():
            names.append(key)
            bounds.append(torch.stack(torch.aminmax(local.detach())).float().cpu())
    if not bounds:
        return []
    finite = torch.stack(bounds).isfinite().all(dim=1).tolist()
    return [key for key, ok in zip(names, finite) if not ok]


def safe_from_pretrained(load: Callable, pretrained_model_name_or_path, *model_args, **kwargs):
    """Call transformers' `from_pretrained` (`load`, bound to the class) safetensors-only and strictly.

    Raises `ValueError` for `use_safetensors=False`, `OSError` naming the file for pickle-only folders and
    truncated or corrupted safetensors files, and `CheckpointMismatchError` (a `ValueError` and a `RuntimeError`)
    naming every tensor that would be dropped or random-filled (`LoadReport`). transformers' switches keep their
    meaning: `ignore_mismatched_sizes=True` re-initializes shape mismatches (reported in the loading info and a
    warning), `output_loading_info=True` returns the info dict, `_keys_to_ignore_on_load_*` drop keys from it.
    A tensor holding NaN or inf is named in a warning.
    """
    if kwargs.get("use_safetensors") is False:
        raise ValueError(
            "use_safetensors=False is not supported: SkipNorm models load safetensors only, because unpickling a "
            "file can run arbitrary code"
        )
    kwargs["use_safetensors"] = True
    name = pretrained_model_name_or_path
    if name is not None and kwargs.get("state_dict") is None and kwargs.get("gguf_file") is None:
        subfolder = kwargs.get("subfolder")
        folder = os.path.join(str(name), subfolder) if subfolder else str(name)
        if os.path.isdir(folder):
            check_local_checkpoint(folder, kwargs.get("variant"))
    want_info = kwargs.pop("output_loading_info", False)
    allow_shape_mismatch = kwargs.pop("ignore_mismatched_sizes", False)
    try:
        # Mismatches are collected and reported below by key instead of transformers' bare RuntimeError.
        model, info = load(name, *model_args, output_loading_info=True, ignore_mismatched_sizes=True, **kwargs)
    except Exception as error:
        if type(error).__name__ == "SafetensorError":  # a remote file: the local pre-check could not see it
            raise OSError(f"Could not read the safetensors weights of {name}: {error}") from error
        raise
    report = LoadReport(model, info, allow_shape_mismatch, getattr(model.config, "architectures", None) or [])
    report.raise_problems(name, model)
    report.warn(name)
    initialized = set(info["missing_keys"]) | {key for key, *_ in info["mismatched_keys"]}
    bad = non_finite_tensors(model, initialized)
    if bad:
        warnings.warn(f"The checkpoint {name} holds NaN or inf values in: {_listed(bad)}", stacklevel=3)
    return (model, info) if want_info else model

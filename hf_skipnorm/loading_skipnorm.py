"""Safe, strict checkpoint loading: safetensors only, and the weights must be the ones the config builds.

transformers 5.24's `from_pretrained`, left alone (checked by running it):
- falls back to `pytorch_model.bin` when a folder has no safetensors file and reads it with `torch.load`
  (a restricted unpickler, but still an unpickler of an untrusted file);
- fills weights that the checkpoint lacks with random values and only logs a report, so a config that asks
  for 3 layers "loads" a 2-layer checkpoint;
- refuses shape mismatches but names the keys only in the logged report;
- reports a truncated safetensors file as a `SafetensorError` that names no file.
`safe_from_pretrained` turns each of these into an error that names the file or the key. A new task head
(`score`, `mlm_transform`) missing from a backbone checkpoint is still initialized, as fine-tuning expects.

It imports only the standard library, so it travels with a checkpoint for `trust_remote_code` like the rest
of the model code.
"""

from __future__ import annotations

import json
import os
import struct
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


def weight_mismatches(model, info: dict[str, Any], allow_shape_mismatch: bool) -> list[str]:
    """Keys whose checkpoint weights do not fit the config: shapes that differ, backbone weights missing from the
    checkpoint, and backbone weights the config does not build. Head weights (`score`, `lm_head`, ...) may be
    missing or unexpected, so a backbone checkpoint still loads into a new task head."""
    problems = []
    if not allow_shape_mismatch:
        for key, checkpoint_shape, model_shape in sorted(info["mismatched_keys"]):
            problems.append(
                f"{key}: shape {tuple(checkpoint_shape)} in the checkpoint, {tuple(model_shape)} built from the config"
            )
    base = model.base_model
    prefix = "" if base is model else model.base_model_prefix + "."
    backbone_roots = {key.split(".")[0] for key in base.state_dict()}
    for key in sorted(info["missing_keys"]):
        if key.startswith(prefix):
            problems.append(f"{key}: built from the config but missing from the checkpoint")
    for key in sorted(info["unexpected_keys"]):
        relative = key.removeprefix(model.base_model_prefix + ".")
        if relative.split(".")[0] in backbone_roots:
            problems.append(f"{key}: in the checkpoint but not built from the config")
    return problems


def safe_from_pretrained(load: Callable, pretrained_model_name_or_path, *model_args, **kwargs):
    """Call transformers' `from_pretrained` (`load`, bound to the class) safetensors-only and strictly.

    Raises `ValueError` for `use_safetensors=False`, `OSError` naming the file for pickle-only folders and
    truncated or corrupted safetensors files, and `ValueError` naming every key whose weight does not match the
    config. `ignore_mismatched_sizes=True` keeps transformers' meaning: shape mismatches are re-initialized.
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
    problems = weight_mismatches(model, info, allow_shape_mismatch)
    if problems:
        listed = problems[:MAX_LISTED_PROBLEMS]
        if len(problems) > len(listed):
            listed.append(f"... and {len(problems) - len(listed)} more")
        raise ValueError(
            f"The weights in {name} do not match its config ({type(model).__name__}):\n  " + "\n  ".join(listed)
        )
    return (model, info) if want_info else model

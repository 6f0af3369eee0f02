"""The study's grid file: what a user writes, how it is checked, and the runs it expands to.

A grid is a JSON object. The smallest useful one:

    {"cells": {"pre": {"norm_position": "pre"}, "post": {"norm_position": "post"}},
     "depths": [6, 12], "learning_rates": [1e-3, 3e-3], "warmup": [true, false], "seeds": [0, 1], "steps": 500}

Every run is one point of the product cells x depths x widths x learning_rates x warmup x seeds. A grid may
instead (or as well) list `blocks`: several such products that share the grid's other settings; a key a block
omits is taken from the top level (`training/study_grids/default.json` uses this to hold the six findings' runs
without training the full product). Runs that two blocks both name are trained once.

Keys (see GRID_KEYS for the defaults):
- `cells`: {name: SkipNormConfig fields}, applied on top of `model` (the fields all cells share). A cell with
  `"is_encoder_decoder": true` is an encoder-decoder (SkipNormForConditionalGeneration, both stacks at the run's
  depth, N = M) trained on BART-style text infilling of the same text (training/study.py `DenoisingData`);
  `training/study_grids/seq2seq.json` holds such cells (finding 9).
- `depths` (num_hidden_layers), `widths` (hidden_size), `learning_rates` (peak), `warmup` (true/false),
  `seeds` (model init and batch order), `steps` (optimizer steps per run).
- `batch_size`, `sequence_length` (tokens per row), `warmup_fraction` (share of the steps warmed up, when
  warm-up is on), `eval_every` / `eval_batches`, `save_every` (checkpoint interval: what a resumed run
  restarts from).
- `data`: as train.py takes it: {} for the embedded corpus, {"dataset_name": ..., "dataset_config_name": ...},
  or {"train_file": ..., "validation_file": ...}; plus "text_column", "validation_split_percentage".
  Text is read as UTF-8 bytes (vocabulary 256: nothing to train, the same ids for every cell).
- `precision` ("fp32", "bf16", "fp16"), `torch_compile` (bool), `threads` (torch threads per process),
  `report_to` (Trainer loggers, e.g. ["tensorboard"]), `init_std` (number, or "1/sqrt(width)").
- `optimizer`: AdamW {"beta1", "beta2", "eps", "weight_decay"} (decay on matrices only), `max_grad_norm`
  (0: no clipping, the study's default, since clipping hides the instabilities it measures).
- `skip_unavailable_cells`: cells whose fields this build lacks are reported as unavailable instead of
  refused (the built-in grids set it so that cells of features still to land wait for them).
- `init_probes` {"cells", "depths", "seeds"}: gradient profiles at initialization only (finding 1).
- `reference_models`: runs whose trained model is saved with a model card ([{"run": {...}, "name": ...}]).
- `measure_callback_overhead`: time DiagnosticsCallback on a short Trainer run (the README's 2% figure).
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import itertools
import json
import os

GRIDS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "study_grids")
BUILTIN_GRIDS = ("default", "quick", "gpu", "seq2seq")

# Model fields every cell starts from unless the grid's `model` says otherwise: a tiny causal byte-level LM
# (vocab 256), plain GELU MLP and LayerNorm, as in the published analyses the findings test.
BASE_MODEL = dict(vocab_size=256, num_attention_heads=4, max_position_embeddings=256, norm_type="layernorm",
                  norm_eps=1e-5, mlp_type="plain", hidden_act="gelu", tie_word_embeddings=True)

# Key: (default, what it is). The default None means "required" for the product keys when no blocks are given.
GRID_KEYS = {
    "cells": (None, "{name: SkipNormConfig fields}"),
    "model": ({}, "SkipNormConfig fields shared by every cell (on top of the study's tiny byte-level LM)"),
    "depths": ([6], "num_hidden_layers values"),
    "widths": ([64], "hidden_size values"),
    "learning_rates": ([1e-3], "peak learning rates"),
    "warmup": ([True], "warm-up on (true) and/or off (false)"),
    "seeds": ([0], "seeds (init and batch order)"),
    "blocks": (None, "a list of products sharing the other settings (keys: cells as a list of names, depths, "
                     "widths, learning_rates, warmup, seeds)"),
    "steps": (150, "optimizer steps per run"),
    "batch_size": (16, "rows per optimizer step"),
    "sequence_length": (64, "tokens per row"),
    "warmup_fraction": (0.2, "share of the steps with linear warm-up when warm-up is on"),
    "min_lr_fraction": (0.1, "the cosine decays to this share of the peak"),
    "eval_every": (None, "evaluate every N steps (default: steps // 5)"),
    "eval_batches": (8, "held-out batches per evaluation"),
    "save_every": (None, "checkpoint every N steps (default: steps // 3)"),
    "data": ({}, "the data, as train.py takes it ({} = the embedded corpus)"),
    "precision": ("fp32", "fp32, bf16 or fp16"),
    "torch_compile": (False, "torch.compile each model"),
    "threads": (1, "torch threads per process"),
    "report_to": (["none"], "Trainer loggers (tensorboard, wandb, ...)"),
    "init_std": ("1/sqrt(width)", "initializer_range: a number or '1/sqrt(width)'"),
    "optimizer": ({}, "AdamW settings: beta1, beta2, eps, weight_decay"),
    "max_grad_norm": (0.0, "gradient clipping (0 = none)"),
    "keep_checkpoints": (False, "keep each finished run's last checkpoint (default: deleted once its result is written)"),
    "skip_unavailable_cells": (False, "report cells this build cannot build instead of refusing the grid"),
    "init_probes": (None, "{cells, depths, seeds}: gradient profiles at initialization (finding 1)"),
    "reference_models": ([], "runs saved with a model card: [{\"run\": {cell, depth, ...}, \"name\": ...}]"),
    "measure_callback_overhead": (False, "time DiagnosticsCallback on a short Trainer run"),
    "overhead_steps": (40, "steps of the callback-overhead runs"),
    "label": (None, "a name for the report's title"),
}
PRODUCT_KEYS = ("cells", "depths", "widths", "learning_rates", "warmup", "seeds")
DATA_KEYS = ("dataset_name", "dataset_config_name", "train_file", "validation_file", "text_column",
             "validation_split_percentage")
OPTIMIZER_DEFAULTS = {"beta1": 0.9, "beta2": 0.98, "eps": 1e-8, "weight_decay": 0.01}
PRECISIONS = ("fp32", "bf16", "fp16")


@dataclasses.dataclass(frozen=True)
class RunSpec:
    """One training run: a cell at one depth, width, peak LR, warm-up setting and seed."""

    cell: str
    depth: int
    width: int
    lr: float
    warmup: bool
    seed: int

    @property
    def run_id(self) -> str:
        return f"{self.cell}-L{self.depth}-d{self.width}-lr{self.lr:g}-{'warmup' if self.warmup else 'nowarmup'}-s{self.seed}"

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def _bad(key: str, value, expected: str) -> ValueError:
    return ValueError(f"grid key {key!r}: {value!r} is not valid; expected {expected}")


def _list_of(key: str, value, kind, positive: bool = False) -> list:
    if not isinstance(value, list) or not value:
        raise _bad(key, value, f"a non-empty JSON list of {kind.__name__}")
    for item in value:
        if kind is float:
            ok = isinstance(item, (int, float)) and not isinstance(item, bool)
        elif kind is int:
            ok = isinstance(item, int) and not isinstance(item, bool)
        else:
            ok = isinstance(item, kind)
        if not ok or (positive and item <= 0):
            raise _bad(key, value, f"a list of {'positive ' if positive else ''}{kind.__name__}")
    return [float(v) for v in value] if kind is float else list(value)


def _positive_int(key: str, value) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise _bad(key, value, "a positive integer")
    return value


def load_grid(source: str) -> tuple[dict, str]:
    """(the grid as written, where it came from): a built-in name (default, quick, gpu) or a JSON file path."""
    path = source
    if not os.path.isfile(source):
        if source not in BUILTIN_GRIDS:
            raise ValueError(f"--grid {source!r} is neither a file nor a built-in grid; built-in grids: "
                             f"{', '.join(BUILTIN_GRIDS)}")
        path = os.path.join(GRIDS_DIR, f"{source}.json")
    with open(path, encoding="utf-8") as handle:
        try:
            grid = json.load(handle)
        except json.JSONDecodeError as error:
            raise ValueError(f"--grid {path!r} is not valid JSON ({error})") from None
    if not isinstance(grid, dict):
        raise ValueError(f"--grid {path!r} must hold a JSON object (keys: {', '.join(GRID_KEYS)})")
    return grid, path


def normalize_grid(raw: dict) -> dict:
    """The grid with every default filled in and every value checked (ValueError naming the key and the choices)."""
    unknown = sorted(k for k in raw if k not in GRID_KEYS and not k.startswith("_"))
    if unknown:
        raise ValueError(f"unknown grid key(s) {unknown}; valid keys: {', '.join(GRID_KEYS)} (keys starting with '_' "
                         "are comments)")
    grid = {key: copy.deepcopy(raw.get(key, default)) for key, (default, _) in GRID_KEYS.items()}
    cells = grid["cells"]
    if not isinstance(cells, dict) or not cells or not all(isinstance(v, dict) for v in cells.values()):
        raise _bad("cells", cells, "a non-empty object {name: {SkipNormConfig field: value}}")
    for name in cells:
        if not name or any(c in name for c in "/\\ ") or name.startswith("."):
            raise _bad("cells", name, "cell names without '/', '\\\\', spaces or a leading '.' (they name folders)")
    if not isinstance(grid["model"], dict):
        raise _bad("model", grid["model"], "an object of SkipNormConfig fields")
    for key in ("depths", "widths", "seeds"):
        grid[key] = _list_of(key, grid[key], int, positive=key != "seeds")
    grid["learning_rates"] = _list_of("learning_rates", grid["learning_rates"], float, positive=True)
    grid["warmup"] = _list_of("warmup", grid["warmup"], bool)
    for key in ("steps", "batch_size", "sequence_length", "eval_batches", "threads", "overhead_steps"):
        grid[key] = _positive_int(key, grid[key])
    grid["eval_every"] = _positive_int("eval_every", grid["eval_every"] or max(1, grid["steps"] // 5))
    grid["save_every"] = _positive_int("save_every", grid["save_every"] or max(1, grid["steps"] // 3))
    for key in ("warmup_fraction", "min_lr_fraction"):
        value = grid[key]
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 <= value <= 1:
            raise _bad(key, value, "a number in [0, 1]")
    if grid["precision"] not in PRECISIONS:
        raise _bad("precision", grid["precision"], f"one of {', '.join(PRECISIONS)}")
    for key in ("torch_compile", "skip_unavailable_cells", "measure_callback_overhead", "keep_checkpoints"):
        if not isinstance(grid[key], bool):
            raise _bad(key, grid[key], "true or false")
    data = grid["data"]
    if not isinstance(data, dict) or set(data) - set(DATA_KEYS):
        raise _bad("data", data, f"an object with keys among {', '.join(DATA_KEYS)} ({{}} = the embedded corpus)")
    if data.get("dataset_name") and data.get("train_file"):
        raise _bad("data", data, "either dataset_name or train_file/validation_file, not both")
    if isinstance(grid["report_to"], str):
        grid["report_to"] = [grid["report_to"]]
    optimizer = grid["optimizer"]
    if not isinstance(optimizer, dict) or set(optimizer) - set(OPTIMIZER_DEFAULTS):
        raise _bad("optimizer", optimizer, f"an object with keys among {', '.join(OPTIMIZER_DEFAULTS)}")
    grid["optimizer"] = {**OPTIMIZER_DEFAULTS, **optimizer}
    if not (grid["init_std"] == "1/sqrt(width)" or (isinstance(grid["init_std"], (int, float)) and grid["init_std"] > 0)):
        raise _bad("init_std", grid["init_std"], "a positive number or '1/sqrt(width)'")
    if not isinstance(grid["max_grad_norm"], (int, float)) or grid["max_grad_norm"] < 0:
        raise _bad("max_grad_norm", grid["max_grad_norm"], "a number >= 0")
    grid["blocks"] = _normalize_blocks(grid)
    probes = grid["init_probes"]
    if probes is not None:
        if not isinstance(probes, dict) or set(probes) - {"cells", "depths", "seeds"}:
            raise _bad("init_probes", probes, "an object with keys cells, depths, seeds")
        probes["cells"] = _cell_names("init_probes.cells", probes.get("cells", list(cells)), cells)
        probes["depths"] = _list_of("init_probes.depths", probes.get("depths", grid["depths"]), int, positive=True)
        probes["seeds"] = _list_of("init_probes.seeds", probes.get("seeds", [0]), int)
        seq2seq = [c for c in probes["cells"] if is_seq2seq_cell(grid, c)]
        if seq2seq:
            raise ValueError(f"grid key 'init_probes.cells': {seq2seq} are encoder-decoder cells; the init-gradient "
                             "probes (finding 1) measure causal LMs only: list causal cells")
    if grid["measure_callback_overhead"] and all(is_seq2seq_cell(grid, c) for c in cells):
        raise ValueError("grid key 'measure_callback_overhead': true needs a causal cell (it times DiagnosticsCallback "
                         "on a causal LM) and every cell of this grid is an encoder-decoder: set it to false")
    if not isinstance(grid["reference_models"], list):
        raise _bad("reference_models", grid["reference_models"], "a list of {\"run\": {...}, \"name\": ...}")
    return grid


def is_seq2seq_cell(grid: dict, cell: str) -> bool:
    """Whether the cell is an encoder-decoder: is_encoder_decoder set by the cell, else by the grid's `model`."""
    return bool({**grid["model"], **grid["cells"][cell]}.get("is_encoder_decoder"))


def _cell_names(key: str, names, cells: dict) -> list[str]:
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        raise _bad(key, names, "a non-empty list of cell names")
    missing = [n for n in names if n not in cells]
    if missing:
        raise ValueError(f"grid key {key!r}: cell(s) {missing} are not defined in 'cells' ({', '.join(cells)})")
    return names


def _normalize_blocks(grid: dict) -> list[dict]:
    """The products to expand: the listed blocks, or one block from the top-level product keys."""
    blocks = grid["blocks"]
    if blocks is None:
        return [{key: (list(grid["cells"]) if key == "cells" else grid[key]) for key in PRODUCT_KEYS}]
    if not isinstance(blocks, list) or not blocks:
        raise _bad("blocks", blocks, "a non-empty list of objects")
    out = []
    for index, block in enumerate(blocks):
        where = f"blocks[{index}]"
        if not isinstance(block, dict) or set(block) - set(PRODUCT_KEYS) - {"_about"}:
            raise _bad(where, block, f"an object with keys among {', '.join(PRODUCT_KEYS)}")
        normalized = {"cells": _cell_names(f"{where}.cells", block.get("cells", list(grid["cells"])), grid["cells"])}
        for key, kind in (("depths", int), ("widths", int), ("seeds", int), ("learning_rates", float), ("warmup", bool)):
            normalized[key] = _list_of(f"{where}.{key}", block.get(key, grid[key]), kind,
                                       positive=key in ("depths", "widths", "learning_rates"))
        out.append(normalized)
    return out


def expand(grid: dict) -> list[RunSpec]:
    """Every run of the (normalized) grid, in the grid's order, each once."""
    runs: list[RunSpec] = []
    seen = set()
    for block in grid["blocks"]:
        for cell, depth, width, lr, warmup, seed in itertools.product(
                block["cells"], block["depths"], block["widths"], block["learning_rates"], block["warmup"],
                block["seeds"]):
            spec = RunSpec(cell, depth, width, lr, warmup, seed)
            if spec not in seen:
                seen.add(spec)
                runs.append(spec)
    return runs


# The settings that decide a run's result besides its RunSpec: a finished run is reused only when they match.
RUN_SETTINGS = ("model", "steps", "batch_size", "sequence_length", "warmup_fraction", "min_lr_fraction",
                "eval_every", "eval_batches", "data", "precision", "torch_compile", "init_std", "optimizer",
                "max_grad_norm")


def run_fingerprint(grid: dict, spec: RunSpec) -> dict:
    """Everything that decides one run's numbers: its spec, its cell's fields and the shared settings."""
    return {"spec": spec.as_dict(), "fields": grid["cells"][spec.cell], **{k: grid[k] for k in RUN_SETTINGS}}


def fingerprint_digest(fingerprint: dict) -> str:
    return hashlib.sha256(json.dumps(fingerprint, sort_keys=True).encode()).hexdigest()[:16]


def estimated_cost(grid: dict, spec: RunSpec) -> float:
    """Relative cost of a run (training FLOPs ~ 6 * parameters * tokens; parameters ~ 12 L d^2 + V d, and an
    encoder-decoder's 12 N d^2 + 16 M d^2 + V d, its decoder blocks having cross-attention): used to deal runs to
    processes and to estimate the time left."""
    vocab = grid["model"].get("vocab_size", BASE_MODEL["vocab_size"])
    blocks = spec.depth * (12 + 16) if is_seq2seq_cell(grid, spec.cell) else 12 * spec.depth
    parameters = blocks * spec.width**2 + vocab * spec.width
    return 6.0 * parameters * grid["steps"] * grid["batch_size"] * grid["sequence_length"]


def assign(runs: list[RunSpec], grid: dict, rank: int, world_size: int) -> list[RunSpec]:
    """The runs process `rank` trains: the runs sorted by estimated cost (largest first, ties in grid order),
    dealt round-robin. One run per process at a time; a run is never split across processes."""
    order = sorted(range(len(runs)), key=lambda i: (-estimated_cost(grid, runs[i]), i))
    return [runs[i] for position, i in enumerate(order) if position % world_size == rank]

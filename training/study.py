"""A reproducible norm-placement study at CPU scale: six published claims, measured with hf_skipnorm.diagnostics.

    python training/study.py                      # default study (< 30 min on 2 cores), writes training/study_output/
    python training/study.py --quick --out /tmp/q  # CI-sized (< 3 min)

Every cell is a tiny causal byte-level LM (d=64, 4 heads, plain GELU MLP, LayerNorm unless the cell says otherwise)
trained from scratch on the embedded corpus, the Python Language Reference shipped with CPython
(`pydoc_data.topics`), with AdamW and no gradient clipping (clipping would hide the instabilities we measure).
The init std is 1/sqrt(d) (Xavier-like): the scale the analyses of Xiong et al. assume; the GPT-2 constant 0.02 at
d=64 would make every branch ~25x smaller relative to the stream than at d=768.

Cells whose config values do not exist in this build (e.g. `residual="deepnorm"` before the residual catalogue lands)
are reported as "not available in this build" with the reason, and measured when rerun after they land.

Outputs: `report.md` (each finding: claim, paper, what we measured, the checks behind the verdict, the verdict),
`fig*.png`, `results.json` (every number: per-step losses and gradient norms, per-layer init and trained profiles,
update ratios, wall times), and the model cards of the two reference models (`--cards`, default OUT/model_cards).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import shutil
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from hf_skipnorm import SkipNormConfig, SkipNormForCausalLM  # noqa: E402
from hf_skipnorm.diagnostics import profile, snapshot_weights, update_ratios  # noqa: E402

NOT_AVAILABLE = "not available in this build"
NOT_RUN = "not measured (its cells were not run in this study)"
DIVERGED_LOSS = math.log(256)  # a diverged cell counts as the loss of a uniform byte guess


# ----------------------------------------------------------------------------------------------- settings
@dataclasses.dataclass
class Settings:
    steps: int = 150
    batch_size: int = 16
    seq_len: int = 64
    hidden_size: int = 64
    warmup_fraction: float = 0.2  # linear warm-up over this share of the steps, then cosine decay to 10%
    eval_batches: int = 8
    seeds: tuple = (0,)
    init_grad_depths: tuple = (3, 6, 12, 24)  # finding 1: init-only, cheap
    init_grad_seeds: tuple = (0, 1, 2)
    base_depth: int = 6  # findings 2 and 6
    mid_depth: int = 12  # findings 4 and 5
    deep_depth: int = 16  # finding 3
    lrs: tuple = (1e-3, 3e-3, 1e-2)  # finding 2
    norm_free_lrs: tuple = (1e-3, 3e-3)  # finding 6
    deep_lrs: tuple = (1e-3, 3e-3)  # finding 3: the same LRs for all three
    mid_lr: float = 1e-3  # findings 4 and 5
    overhead_steps: int = 40  # Trainer with and without the diagnostics callback
    overhead_every: int = 10
    noise_seeds: tuple = (1, 2)  # extra seeds of the reference cells: the seed-to-seed spread the findings sit on
    threads: int = 1
    cells: tuple | None = None  # restrict the training runs to these cells (None: all); findings without data say so
    label: str = "default"


QUICK = dict(label="quick", steps=30, batch_size=8, seq_len=32, eval_batches=2, init_grad_depths=(2, 4, 8),
             init_grad_seeds=(0,), base_depth=2, mid_depth=4, deep_depth=6, lrs=(1e-3, 1e-2), norm_free_lrs=(1e-3,),
             overhead_steps=10, overhead_every=5, noise_seeds=(1,))

BASE_CONFIG = dict(vocab_size=256, num_attention_heads=4, max_position_embeddings=256, norm_type="layernorm",
                   norm_eps=1e-5, mlp_type="plain", hidden_act="gelu", tie_word_embeddings=True)

# The cells, by name: the config fields they set on top of BASE_CONFIG.
CELLS = {
    "post": {"norm_position": "post"},
    "pre": {"norm_position": "pre"},
    "deepnorm": {"norm_position": "post", "residual": "deepnorm"},
    "peri": {"norm_position": "sandwich", "embedding_norm": True},  # Peri-LN: sandwich + normalized embeddings
    "ln_scaling": {"norm_position": "pre", "norm_depth_scaling": True},  # LayerNorm Scaling 1/sqrt(l)
    "pre_noskip": {"norm_position": "pre", "residual": "none"},
    "dyt": {"norm_position": "pre", "norm_type": "dyt"},
    "rezero": {"norm_position": "none", "norm_type": "none", "residual": "rezero"},
}


def make_config(cell: str, depth: int, settings: Settings, **extra) -> SkipNormConfig:
    """The cell's config (the cell's fields override BASE_CONFIG, `extra` overrides both)."""
    return SkipNormConfig(**{**BASE_CONFIG, **CELLS[cell], **extra}, hidden_size=settings.hidden_size,
                          num_hidden_layers=depth, initializer_range=settings.hidden_size**-0.5)


def availability(cell: str, settings: Settings) -> str | None:
    """None when this build has the cell's fields and values, else why not.

    Checked against the config's own vocabulary (its dataclass fields and the value tuples next to the registries),
    so a cell that needs a later issue's value is skipped with a reason instead of crashing the study; a cell whose
    values exist but whose construction is refused reports the refusal. Baseline cells must always build.
    """
    from hf_skipnorm import configuration_skipnorm as vocabulary

    fields = SkipNormConfig.__dataclass_fields__
    choices = {"norm_position": vocabulary.NORM_POSITIONS, "norm_type": vocabulary.NORM_TYPES,
               "residual": vocabulary.RESIDUALS}
    for key, value in CELLS[cell].items():
        if key not in fields:  # PreTrainedConfig would silently keep an unknown kwarg as a plain attribute
            return f"SkipNormConfig has no field {key!r}"
        if key in choices and value not in choices[key]:
            return f"{key}={value!r} is not in this build's choices ({', '.join(choices[key])})"
    if cell in ("pre", "post"):
        return None
    try:
        SkipNormForCausalLM(make_config(cell, 2, settings))
    except ValueError as error:
        return f"refused: {error}"
    return None


# ----------------------------------------------------------------------------------------------- data
def corpus_bytes() -> torch.Tensor:
    """The embedded corpus as byte ids (a byte-level tokenizer: vocab 256, nothing to train).

    The passages of `training.data.reference_corpus`, which keeps each repeated paragraph of the Language Reference
    once (`specialnames` repeats `customization`, ...): otherwise the 90/10 split would validate on text that is
    also in the training bytes."""
    from training.data import reference_corpus

    text = "\n\n".join(reference_corpus()["text"])
    return torch.tensor(list(text.encode("utf-8")), dtype=torch.long)


class Data:
    """90/10 split of the byte stream; training batches at random offsets from a seeded generator."""

    def __init__(self, settings: Settings):
        ids = corpus_bytes()
        cut = int(0.9 * len(ids))
        self.train, self.val = ids[:cut], ids[cut:]
        self.settings = settings
        generator = torch.Generator().manual_seed(1234)
        self.eval = [self._batch(self.val, generator) for _ in range(settings.eval_batches)]
        self.diagnostic = self._batch(self.val, torch.Generator().manual_seed(99))
        counts = torch.bincount(self.val, minlength=256).double()
        p = counts[counts > 0] / counts.sum()
        self.unigram_entropy = float(-(p * p.log()).sum())  # nats: the loss of a model that learned only byte counts

    def _batch(self, ids: torch.Tensor, generator: torch.Generator) -> dict:
        s = self.settings
        starts = torch.randint(0, len(ids) - s.seq_len - 1, (s.batch_size,), generator=generator)
        return {"input_ids": torch.stack([ids[i : i + s.seq_len] for i in starts.tolist()])}

    def stream(self, seed: int):
        generator = torch.Generator().manual_seed(seed)
        while True:
            yield self._batch(self.train, generator)


# ----------------------------------------------------------------------------------------------- one run
def lr_at(step: int, lr: float, steps: int, warmup_steps: int) -> float:
    """Linear warm-up to `lr` over `warmup_steps` (none when 0), then cosine decay to 10% of `lr`."""
    if step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, steps - warmup_steps)
    return lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


@torch.no_grad()
def evaluate(model, batches) -> float:
    model.eval()
    losses = [model(**b, labels=b["input_ids"]).loss.item() for b in batches]
    model.train()
    return sum(losses) / len(losses)


def train_cell(cell: str, depth: int, lr: float, warmup: bool, seed: int, settings: Settings, data: Data,
               save_to: str | None = None) -> dict:
    """Train one cell; returns every number measured on it (or its unavailability)."""
    result = {"cell": cell, "depth": depth, "lr": lr, "warmup": warmup, "seed": seed, "fields": CELLS[cell]}
    reason = availability(cell, settings)
    if reason is not None:
        return {**result, "status": NOT_AVAILABLE, "reason": reason}
    start = time.perf_counter()
    torch.manual_seed(seed)
    model = SkipNormForCausalLM(make_config(cell, depth, settings))
    model.train()
    result["init_profile"] = profile(model, data.diagnostic)
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]  # gains, biases, scalars (ReZero alpha, DyT)
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": 0.01}, {"params": no_decay, "weight_decay": 0.0}],
                                  lr=lr, betas=(0.9, 0.98), eps=1e-8)
    warmup_steps = int(settings.warmup_fraction * settings.steps) if warmup else 0
    losses, grad_norms, update_log = [], [], {}
    status = "trained"
    for step, batch in zip(range(settings.steps), data.stream(seed)):
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, lr, settings.steps, warmup_steps)
        loss = model(**batch, labels=batch["input_ids"]).loss
        if not torch.isfinite(loss):
            status = "diverged"
            break
        loss.backward()
        grad_norms.append(torch.nn.utils.clip_grad_norm_(model.parameters(), float("inf")).item())
        watch = step in (0, settings.steps // 2)
        before = snapshot_weights(model) if watch else None
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if watch:
            update_log[str(step + 1)] = update_ratios(model, before)
        losses.append(loss.item())
    val = evaluate(model, data.eval) if status == "trained" else float("nan")
    if status == "trained" and not math.isfinite(val):
        status = "diverged"
    result.update(status=status, train_loss=losses, grad_norm=grad_norms, update_ratio=update_log,
                  val_loss=val if status == "trained" else None, warmup_steps=warmup_steps,
                  parameters=sum(p.numel() for p in model.parameters()))
    if status == "trained":
        result["trained_profile"] = profile(model, data.diagnostic)
        if save_to:
            model.save_pretrained(save_to)
            with open(os.path.join(save_to, "training_info.json"), "w") as handle:
                json.dump({k: result[k] for k in ("cell", "depth", "lr", "warmup", "seed", "fields", "val_loss",
                                                  "warmup_steps")}
                          | {"steps": settings.steps, "batch_size": settings.batch_size, "seq_len": settings.seq_len,
                             "optimizer": "AdamW(betas=(0.9, 0.98), weight_decay=0.01 on matrices)",
                             "schedule": "linear warm-up then cosine to 10%", "tokenizer": "bytes (vocab 256)",
                             "dataset": "pydoc_data.topics (Python Language Reference, repeated paragraphs once), 90/10 split",
                             "unigram_entropy": data.unigram_entropy}, handle, indent=1)
    result["seconds"] = time.perf_counter() - start
    return result


def effective_loss(run: dict) -> float:
    """Validation loss, with a diverged run counted as the uniform-guess loss ln 256."""
    return run["val_loss"] if run.get("status") == "trained" else DIVERGED_LOSS


# ----------------------------------------------------------------------------------------------- finding 1 (init only)
def init_gradients(settings: Settings, data: Data) -> dict:
    """Per-layer MLP-weight gradient norms at init for post and pre at several depths, averaged over seeds.

    Also Pre-LN with the embeddings multiplied by sqrt(d) (`pre_sqrt_d`, Vaswani et al.'s convention): a control for
    how much Pre-LN's layer profile depends on the scale the stream starts at, not part of any verdict.
    """
    out = {}
    variants = {"post": ("post", {}), "pre": ("pre", {})}
    if "embedding_multiplier" in SkipNormConfig.__dataclass_fields__:
        variants["pre_sqrt_d"] = ("pre", {"embedding_multiplier": settings.hidden_size**0.5})
    for name, (cell, extra) in variants.items():
        for depth in settings.init_grad_depths:
            per_seed = []
            for seed in settings.init_grad_seeds:
                torch.manual_seed(seed)
                model = SkipNormForCausalLM(make_config(cell, depth, settings, **extra))
                per_seed.append([row["grad_norm/mlp"] for row in profile(model, data.diagnostic)["layers"]])
            out[f"{name}/{depth}"] = [sum(v) / len(v) for v in zip(*per_seed)]
    return out


def loglog_slope(xs, ys) -> float:
    lx, ly = [math.log(x) for x in xs], [math.log(y) for y in ys]
    mx, my = sum(lx) / len(lx), sum(ly) / len(ly)
    return sum((a - mx) * (b - my) for a, b in zip(lx, ly)) / sum((a - mx) ** 2 for a in lx)


# ----------------------------------------------------------------------------------------------- callback overhead
def callback_overhead(settings: Settings, data: Data, workdir: str) -> dict:
    """Wall time of the same Trainer run with and without `DiagnosticsCallback`, plus the callback's own timer."""
    from datasets import Dataset
    from transformers import Trainer, TrainingArguments
    from transformers.trainer_callback import PrinterCallback

    from hf_skipnorm.diagnostics import attach_diagnostics

    rows = [b["input_ids"][i].tolist() for b in (next(data.stream(7)) for _ in range(settings.overhead_steps))
            for i in range(settings.batch_size)]
    dataset = Dataset.from_dict({"input_ids": rows, "labels": rows})
    timings = {}
    for label in ("without", "with", "with_2"):  # with_2: a second timed run, to show the wall-clock noise
        torch.manual_seed(0)
        model = SkipNormForCausalLM(make_config("pre", settings.base_depth, settings))
        args = TrainingArguments(output_dir=os.path.join(workdir, f"overhead_{label}"), per_device_train_batch_size=
                                 settings.batch_size, max_steps=settings.overhead_steps, learning_rate=1e-3,
                                 logging_steps=10_000, save_strategy="no", report_to=[], use_cpu=True,
                                 disable_tqdm=True, dataloader_num_workers=0)
        trainer = Trainer(model=model, args=args, train_dataset=dataset)
        trainer.remove_callback(PrinterCallback)  # keep the study's log readable; the numbers go to results.json
        callback = None
        if label != "without":
            callback = attach_diagnostics(trainer, every_n_steps=settings.overhead_every,
                                          jsonl_path=os.path.join(workdir, f"overhead_{label}", "diagnostics.jsonl"))
        start = time.perf_counter()
        trainer.train()
        timings[label] = {"seconds": time.perf_counter() - start,
                          "callback_seconds": callback.overhead_seconds if callback else 0.0}
    measured = timings["with"]["callback_seconds"] / timings["with"]["seconds"]
    wall = timings["with"]["seconds"] / timings["without"]["seconds"] - 1
    return {"steps": settings.overhead_steps, "every_n_steps": settings.overhead_every, "runs": timings,
            "callback_fraction": measured, "wall_overhead": wall}


# ----------------------------------------------------------------------------------------------- the grid
def planned_runs(settings: Settings) -> list[tuple]:
    """(cell, depth, lr, warmup) of every training run; duplicates across findings are run once."""
    runs = []
    for cell in ("post", "pre"):  # finding 2
        for lr in settings.lrs:
            for warmup in (True, False):
                runs.append((cell, settings.base_depth, lr, warmup))
    for cell in ("post", "deepnorm", "pre"):  # finding 3
        for lr in settings.deep_lrs:
            runs.append((cell, settings.deep_depth, lr, True))
    for cell in ("pre", "peri", "ln_scaling", "pre_noskip"):  # findings 4 and 5
        runs.append((cell, settings.mid_depth, settings.mid_lr, True))
    for cell in ("pre", "dyt", "rezero"):  # finding 6
        for lr in settings.norm_free_lrs:
            runs.append((cell, settings.base_depth, lr, True))
    unique = []
    for run in runs:
        if run not in unique and (settings.cells is None or run[0] in settings.cells):
            unique.append(run)
    return unique


def run_key(cell, depth, lr, warmup) -> str:
    return f"{cell}/L{depth}/lr{lr:g}/{'warmup' if warmup else 'nowarmup'}"


REFERENCE_MODELS = {"pre": "skipnorm-study-pre-ln", "post": "skipnorm-study-post-ln"}


def run_study(settings: Settings, out: str, log=print, cards: str | None = None, scratch: str | None = None) -> dict:
    """Run every planned cell, write report.md, figures and results.json to `out`, and model cards of the reference
    models (Pre-LN and Post-LN at the base depth, first LR, with warm-up) to `cards` (default `out/model_cards`).
    Checkpoints and Trainer folders go to `scratch` (default: a temporary folder, removed at the end), so `out` holds
    only what is worth committing."""
    own_scratch = scratch is None
    scratch = scratch or tempfile.mkdtemp(prefix="skipnorm_study_")
    torch.set_num_threads(settings.threads)
    os.makedirs(out, exist_ok=True)
    started = time.perf_counter()
    data = Data(settings)
    results = {"settings": dataclasses.asdict(settings), "unigram_entropy": data.unigram_entropy,
               "availability": {cell: availability(cell, settings) or "available" for cell in CELLS}, "runs": {}}
    log(f"cells available: {results['availability']}")
    t0 = time.perf_counter()
    results["init_gradients"] = init_gradients(settings, data)
    log(f"finding 1 (init gradients): {time.perf_counter() - t0:.0f}s")
    for cell, depth, lr, warmup in planned_runs(settings):
        key = run_key(cell, depth, lr, warmup)
        runs = []
        for seed in settings.seeds:
            save_to = None
            if cell in REFERENCE_MODELS and depth == settings.base_depth and lr == settings.lrs[0] and warmup and seed == 0:
                save_to = os.path.join(scratch, "checkpoints", REFERENCE_MODELS[cell])
            runs.append(train_cell(cell, depth, lr, warmup, seed, settings, data, save_to))
        results["runs"][key] = runs
        first = runs[0]
        log(f"{key}: {first['status']} val={first.get('val_loss')} ({first.get('seconds', 0):.0f}s)")
    results["noise"] = {}
    for cell in REFERENCE_MODELS:
        if settings.cells is None or cell in settings.cells:
            key = run_key(cell, settings.base_depth, settings.lrs[0], True)
            extra = [train_cell(cell, settings.base_depth, settings.lrs[0], True, seed, settings, data)
                     for seed in settings.noise_seeds]
            losses = [effective_loss(r) for r in results["runs"][key][:1] + extra]
            results["noise"][key] = losses
            log(f"noise {key}: {[round(v, 3) for v in losses]}")
    t0 = time.perf_counter()
    results["callback_overhead"] = callback_overhead(settings, data, os.path.join(scratch, "work"))
    log(f"callback overhead: {results['callback_overhead']['callback_fraction']:.1%} measured "
        f"({time.perf_counter() - t0:.0f}s)")
    results["findings"] = findings(results, settings)
    results["wall_seconds"] = time.perf_counter() - started
    write_figures(results, settings, out)
    with open(os.path.join(out, "results.json"), "w") as handle:
        json.dump(results, handle, indent=0, default=float)
    write_report(results, settings, out)
    write_cards(scratch, cards or os.path.join(out, "model_cards"), log)
    if own_scratch:
        shutil.rmtree(scratch, ignore_errors=True)
    log(f"study done in {results['wall_seconds']:.0f}s -> {out}/report.md")
    return results


def write_cards(scratch: str, cards: str, log=print) -> None:
    from model_cards.generate import validate_card, write_card

    summaries = {
        "pre": "Pre-LN reference model of the hf_skipnorm norm-placement study (`x + F(N(x))`).",
        "post": "Post-LN reference model of the hf_skipnorm norm-placement study (`N(x + F(x))`).",
    }
    for cell, name in REFERENCE_MODELS.items():
        checkpoint = os.path.join(scratch, "checkpoints", name)
        if os.path.isdir(checkpoint):
            write_card(checkpoint, os.path.join(cards, name), name, summaries[cell])
            validate_card(os.path.join(cards, name, "README.md"))
            log(f"model card: {os.path.join(cards, name, 'README.md')}")


# ----------------------------------------------------------------------------------------------- verdicts
def _runs(results: dict, cell, depth, lr, warmup) -> list[dict]:
    return results["runs"].get(run_key(cell, depth, lr, warmup), [])


def _mean_loss(runs: list[dict]) -> float | None:
    if not runs or runs[0].get("status") == NOT_AVAILABLE:
        return None
    return sum(effective_loss(r) for r in runs) / len(runs)


def _fmt(value, digits=3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _layer_values(run: dict, which: str, key: str) -> list[float]:
    rows = run.get(which, {}).get("layers", [])
    return [row[key] for row in rows if key in row]


def _why(results: dict, cell: str) -> str:
    """Why a cell has no numbers: its unavailability reason, or that it was not run."""
    reason = results.get("availability", {}).get(cell, "available")
    return "not run in this study" if reason == "available" else reason


def _noise(results: dict) -> float:
    """The largest seed-to-seed range of the final val loss among the reference cells (0.05 when not measured): the
    margin a loss difference must exceed before a check counts it."""
    return max((max(v) - min(v) for v in results.get("noise", {}).values() if len(v) > 1), default=0.05)


def _missing(results: dict, cells) -> str:
    """The verdict for cells without numbers: unavailable in this build if any is, else not run."""
    unavailable = any(results.get("availability", {}).get(c, "available") != "available" for c in cells)
    return NOT_AVAILABLE if unavailable else NOT_RUN


def _verdict(checks: list[tuple[str, bool]]) -> str:
    """agree when every check of the claim holds, disagree when none does, partly in between."""
    passed = [ok for _, ok in checks]
    if all(passed):
        return "agree"
    if any(passed):
        return "partly agree"
    return "disagree"


def findings(results: dict, s: Settings) -> list[dict]:
    out = []
    # 1 ------------------------------------------------------------------------------------------------
    grads = results["init_gradients"]
    depths = list(s.init_grad_depths)
    last = {c: [grads[f"{c}/{d}"][-1] for d in depths] for c in ("post", "pre")}
    slope = {c: loglog_slope(depths, last[c]) for c in ("post", "pre")}
    ref = depths[-2] if len(depths) > 2 else depths[-1]
    spread = {c: grads[f"{c}/{ref}"][-1] / grads[f"{c}/{ref}"][0] for c in ("post", "pre")}
    control = control_slope = None
    if f"pre_sqrt_d/{ref}" in grads:
        control = grads[f"pre_sqrt_d/{ref}"][-1] / grads[f"pre_sqrt_d/{ref}"][0]
        control_slope = loglog_slope(depths, [grads[f"pre_sqrt_d/{d}"][-1] for d in depths])
    checks = [("Pre-LN last-layer grad shrinks with L (slope < -0.25)", slope["pre"] < -0.25),
              ("Post-LN's does not shrink like Pre-LN's (slope > Pre-LN's + 0.25)", slope["post"] > slope["pre"] + 0.25),
              (f"Post-LN grads grow toward the output (last/first > 1.5 at L={ref})", spread["post"] > 1.5),
              (f"Pre-LN grads flat across layers (0.5 < last/first < 2 at L={ref})", 0.5 < spread["pre"] < 2.0)]
    out.append(dict(
        number=1, title="Gradient norm by layer at initialization: Post-LN vs Pre-LN",
        paper="Xiong et al. 2020, On Layer Normalization in the Transformer Architecture (arXiv 2002.04745), Fig. 3 "
              "and Theorem 1",
        claim="At init, Post-LN's gradient of the last layer's FFN weights is O(d sqrt(ln d)), independent of depth L, "
              "and grows toward the output; Pre-LN's is O(d sqrt(ln d / L)), shrinking with L and flat across layers.",
        measured=(f"last-layer MLP grad norm vs L={depths}: post {[round(v, 4) for v in last['post']]} "
                  f"(log-log slope {slope['post']:+.2f}), pre {[round(v, 4) for v in last['pre']]} "
                  f"(slope {slope['pre']:+.2f}; theorem: 0 and -0.5). Last/first layer at L={ref}: "
                  f"post {spread['post']:.2f}x, pre {spread['pre']:.2f}x."
                  + (f" Control, Pre-LN with embeddings x sqrt(d): last/first {control:.2f}x, last-layer slope "
                     f"{control_slope:+.2f}." if control is not None else "")),
        verdict=_verdict(checks), checks=checks, figure="fig1_init_gradients.png"))
    # 2 ------------------------------------------------------------------------------------------------
    table = {}
    for cell in ("post", "pre"):
        for warmup in (True, False):
            table[f"{cell}/{'warmup' if warmup else 'nowarmup'}"] = [
                _mean_loss(_runs(results, cell, s.base_depth, lr, warmup)) for lr in s.lrs]
    gap = {c: sum(n - w for n, w in zip(table[f"{c}/nowarmup"], table[f"{c}/warmup"])) / len(s.lrs)
           for c in ("post", "pre")}
    spread_lr = {k: max(v) - min(v) for k, v in table.items()}
    diverged = [k for k, runs in results["runs"].items() if runs and runs[0].get("status") == "diverged"]
    noise = _noise(results)
    gaps = {c: [n - w for n, w in zip(table[f"{c}/nowarmup"], table[f"{c}/warmup"])] for c in ("post", "pre")}
    checks = [(f"without warm-up Post-LN loses more than the seed range ({noise:.3f}) at the largest LR",
               gaps["post"][-1] > noise),
              (f"Pre-LN's warm-up effect stays within the seed range at every LR", all(abs(g) <= noise for g in gaps["pre"])),
              ("without warm-up Post-LN's loss spreads more across LRs than Pre-LN's (LR sensitivity)",
               spread_lr["post/nowarmup"] > spread_lr["pre/nowarmup"])]
    out.append(dict(
        number=2, title="Learning-rate sensitivity with and without warm-up",
        paper="Xiong et al. 2020 (arXiv 2002.04745), Sec. 3 / Fig. 2",
        claim="Post-LN needs the warm-up stage: without it, it trains worse or fails, more so at larger LR; Pre-LN "
              "trains without warm-up and is less sensitive to the LR.",
        measured=(f"final val loss (L={s.base_depth}, LRs {list(s.lrs)}): "
                  + "; ".join(f"{k} {[_fmt(v) for v in vals]}" for k, vals in table.items())
                  + f". Mean cost of dropping warm-up: post {gap['post']:+.3f}, pre {gap['pre']:+.3f} nats. "
                  f"Loss spread across LRs: " + ", ".join(f"{k} {v:.3f}" for k, v in spread_lr.items())
                  + f". Diverged runs: {diverged or 'none'}."),
        verdict=_verdict(checks), checks=checks, figure="fig2_lr_warmup.png"))
    # 3 ------------------------------------------------------------------------------------------------
    trio = ("post", "deepnorm", "pre")
    loss3 = {c: [_mean_loss(_runs(results, c, s.deep_depth, lr, True)) for lr in s.deep_lrs] for c in trio}
    spikes = {}
    for c in trio:
        for lr in s.deep_lrs:
            runs = _runs(results, c, s.deep_depth, lr, True)
            if runs and runs[0].get("grad_norm"):
                g = sorted(runs[0]["grad_norm"])
                spikes[f"{c}/lr{lr:g}"] = max(runs[0]["grad_norm"]) / g[len(g) // 2]
    have = {c: None not in loss3[c] for c in trio}
    if not (have["post"] and have["pre"]):
        checks, verdict3 = [], NOT_RUN
    else:
        noise = _noise(results)
        trails = [lr for lr, p, q in zip(s.deep_lrs, loss3["post"], loss3["pre"]) if p > q + noise]
        checks = [(f"deep Post-LN trails Pre-LN by more than the seed range ({noise:.3f}) at every LR",
                   len(trails) == len(s.deep_lrs))]
        if have["deepnorm"]:
            fixes = [d < p - noise for lr, d, p in zip(s.deep_lrs, loss3["deepnorm"], loss3["post"]) if lr in trails]
            checks += [("DeepNorm beats Post-LN by more than the seed range at every LR where Post-LN trails Pre-LN",
                        bool(fixes) and all(fixes)),
                       ("DeepNorm's best is within the seed range of Pre-LN's best (or better)",
                        min(loss3["deepnorm"]) < min(loss3["pre"]) + noise)]
            verdict3 = _verdict(checks)
        else:
            verdict3 = "post-vs-pre part: " + _verdict(checks) + f"; DeepNorm {_missing(results, ('deepnorm',))}"
    learned = {f"{c}/lr{lr:g}": v < results["unigram_entropy"] - 0.05
               for c in trio for lr, v in zip(s.deep_lrs, loss3[c]) if v is not None}
    out.append(dict(
        number=3, title=f"Depth stability at L={s.deep_depth}: Post-LN vs DeepNorm vs Pre-LN at the same LRs",
        paper="Wang et al. 2022, DeepNet: Scaling Transformers to 1,000 Layers (arXiv 2203.00555)",
        claim="Deep Post-LN is unstable (large early updates, divergence); DeepNorm (N(alpha*x + F(x)), branch init "
              "beta) keeps Post-LN's quality and trains stably at depth; Pre-LN is stable but (per the paper) worse.",
        measured=(f"final val loss at LRs {list(s.deep_lrs)} (with warm-up): "
                  + ", ".join(f"{c} {[_fmt(v) for v in vals]}" for c, vals in loss3.items())
                  + "; learned beyond byte counts (val < unigram - 0.05): "
                  + ", ".join(f"{k} {'yes' if v else 'NO'}" for k, v in learned.items())
                  + "; max/median grad norm over training: " + ", ".join(f"{k} {v:.1f}x" for k, v in spikes.items())
                  + ("" if have["deepnorm"] else f" (DeepNorm: {_why(results, 'deepnorm')})")),
        verdict=verdict3, checks=checks, figure="fig3_depth.png"))
    # 4 ------------------------------------------------------------------------------------------------
    mid = {c: _runs(results, c, s.mid_depth, s.mid_lr, True) for c in ("pre", "peri", "ln_scaling")}
    growth, deep_ratio, final_norm = {}, {}, {}
    for c, runs in mid.items():
        if runs and runs[0].get("status") == "trained":
            norms = _layer_values(runs[0], "trained_profile", "stream_norm")
            # Over the blocks, not from the embeddings: Peri-LN normalizes the embeddings (norm sqrt(d)), which
            # would flatter any ratio taken from depth 0.
            growth[c] = norms[-1] / norms[0]
            final_norm[c] = norms[-1]
            ratios = _layer_values(runs[0], "trained_profile", "branch_ratio/mlp")
            deep_ratio[c] = sum(ratios[len(ratios) // 2 :]) / len(ratios[len(ratios) // 2 :])
    init_growth = {}
    for c, runs in mid.items():
        if runs and runs[0].get("init_profile"):
            norms = _layer_values(runs[0], "init_profile", "stream_norm")
            init_growth[c] = norms[-1] / norms[0]
    checks = [(f"{c} grows less than Pre-LN (trained, last block / first block)", growth[c] < growth["pre"])
              for c in ("peri", "ln_scaling") if c in growth and "pre" in growth]
    missing = [c for c in ("peri", "ln_scaling") if c not in growth]
    verdict4 = _verdict(checks) if checks else (NOT_RUN if "pre" not in growth else _missing(results, missing))
    if missing and checks:
        verdict4 += f" (for the measured cells; {', '.join(missing)}: {_missing(results, missing)})"
    loss4 = {c: _mean_loss(r) for c, r in mid.items()}
    out.append(dict(
        number=4, title=f"Hidden-state norm growth with depth (L={s.mid_depth})",
        paper="Sun et al. 2025, The Curse of Depth in LLMs (arXiv 2502.05795); Kim et al. 2025, Peri-LN (arXiv 2502.02732)",
        claim="Under Pre-LN the residual stream's norm grows with depth, so deep blocks contribute little (near-identity); "
              "LayerNorm Scaling (1/sqrt(l)) and Peri-LN (output norm on every branch) keep the growth in check.",
        measured=("stream norm, last block / first block, after training: " + ", ".join(f"{c} {v:.2f}x" for c, v in growth.items())
                  + " (last block's norm: " + ", ".join(f"{c} {v:.1f}" for c, v in final_norm.items()) + ")"
                  + "; at init: " + ", ".join(f"{c} {v:.2f}x" for c, v in init_growth.items())
                  + "; mean MLP branch/stream ratio in the deeper half (trained): "
                  + ", ".join(f"{c} {v:.3f}" for c, v in deep_ratio.items())
                  + "; val loss: " + ", ".join(f"{c} {_fmt(v)}" for c, v in loss4.items())
                  + "".join(f"; {c}: {_why(results, c)}" for c in missing)),
        verdict=verdict4, checks=checks, figure="fig4_stream_norm.png"))
    # 5 ------------------------------------------------------------------------------------------------
    add, none = mid["pre"], _runs(results, "pre_noskip", s.mid_depth, s.mid_lr, True)
    cos = {}
    for label, runs in (("add", add), ("none", none)):
        if runs and runs[0].get("init_profile"):
            cos[f"{label}/init"] = _layer_values(runs[0], "init_profile", "token_cosine")[-1]
        if runs and runs[0].get("trained_profile"):
            cos[f"{label}/trained"] = _layer_values(runs[0], "trained_profile", "token_cosine")[-1]
    loss5 = {"add": _mean_loss(add), "none": _mean_loss(none)}
    measured5 = None not in loss5.values() and {"none/init", "add/init"} <= set(cos)
    checks = [("without skips the last block is >= 10x closer to full collapse at init (1 - cosine)",
               (1 - cos["none/init"]) * 10 <= 1 - cos["add/init"]),
              (f"without skips the model trains worse (by more than the seed range, {_noise(results):.3f})",
               loss5["none"] > loss5["add"] + _noise(results))] if measured5 else []
    out.append(dict(
        number=5, title=f'Signal propagation without skips: residual="none" vs "add" (Pre-LN, L={s.mid_depth})',
        paper="Dong et al. 2021, Attention is Not All You Need: Pure Attention Loses Rank Doubly Exponentially with "
              "Depth (arXiv 2103.03404)",
        claim="Without skip connections, token representations collapse toward one direction with depth (rank "
              "collapse) and the network is hard to train; the skip path prevents it.",
        measured=("mean pairwise token cosine after the last block: " + ", ".join(f"{k} {v:.3f}" for k, v in cos.items())
                  + (f" (embeddings {add[0]['init_profile']['embedding']['token_cosine']:.3f} at init)"
                     if add and add[0].get("init_profile") else "")
                  + "; val loss: " + ", ".join(f"{k} {_fmt(v)}" for k, v in loss5.items())
                  + f" (unigram baseline {results['unigram_entropy']:.3f})."),
        verdict=_verdict(checks) if measured5 else NOT_RUN, checks=checks, figure="fig5_no_skip.png"))
    # 6 ------------------------------------------------------------------------------------------------
    loss6 = {c: [_mean_loss(_runs(results, c, s.base_depth, lr, True)) for lr in s.norm_free_lrs]
             for c in ("pre", "dyt", "rezero")}
    best = {c: (min(v for v in vals if v is not None) if any(v is not None for v in vals) else None)
            for c, vals in loss6.items()}
    # Convergence speed as the area under the training curve: the mean training loss over all steps (lower = faster).
    area = {c: [None] * len(s.norm_free_lrs) for c in ("pre", "dyt", "rezero")}
    for c in area:
        for i, lr in enumerate(s.norm_free_lrs):
            runs = _runs(results, c, s.base_depth, lr, True)
            if runs and runs[0].get("train_loss") and runs[0]["status"] == "trained":
                area[c][i] = sum(runs[0]["train_loss"]) / len(runs[0]["train_loss"])
    checks, parts = [], []
    if best["pre"] is not None and best["dyt"] is not None:
        checks.append((f"DyT's best loss within the seed range ({_noise(results):.3f}) of LayerNorm's (or better)",
                       best["dyt"] < best["pre"] + _noise(results)))
    else:
        parts.append(f"DyT {_missing(results, ('dyt',))}")
    if best["pre"] is not None and best["rezero"] is not None:
        pairs = [(r, p) for r, p in zip(area["rezero"], area["pre"]) if r is not None and p is not None]
        checks.append(("ReZero's mean training loss is below Pre-LN's at every LR (faster convergence)",
                       bool(pairs) and all(r < p for r, p in pairs)))
    else:
        parts.append(f"ReZero {_missing(results, ('rezero',))}")
    verdict6 = NOT_RUN if best["pre"] is None else (
        (_verdict(checks) if checks else _missing(results, ("dyt", "rezero")))
        + (f" ({'; '.join(parts)})" if parts and checks else ""))
    out.append(dict(
        number=6, title="Norm-free training: DyT vs LayerNorm, ReZero vs Pre-LN",
        paper="Zhu et al. 2025, Transformers without Normalization (DyT, arXiv 2503.10622); Bachlechner et al. 2020, "
              "ReZero is All You Need (arXiv 2003.04887)",
        claim="DyT (g*tanh(a*x)+b in place of every norm) matches LayerNorm; ReZero (x + alpha*F(x), alpha=0 at init, "
              "no norms) converges faster than Pre-LN.",
        measured=(f"final val loss at LRs {list(s.norm_free_lrs)}: " + ", ".join(
            f"{c} {[_fmt(v) for v in vals]}" for c, vals in loss6.items())
                  + "; mean training loss over the run (area under the curve): " + ", ".join(
            f"{c} {[_fmt(v) for v in vals]}" for c, vals in area.items())
                  + f"; DyT alpha init {_dyt_alpha()}"
                  + "".join(f"; {c}: {_why(results, c)}" for c in ("dyt", "rezero") if best[c] is None)),
        verdict=verdict6, checks=checks, figure="fig6_norm_free.png"))
    return out


def _dyt_alpha():
    field = SkipNormConfig.__dataclass_fields__.get("dyt_alpha_init")
    return "n/a" if field is None else field.default


def _smooth(values: list[float], window: int) -> list[float]:
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


# ----------------------------------------------------------------------------------------------- figures and report
def write_figures(results: dict, s: Settings, out: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def save(fig, name):
        fig.tight_layout()
        fig.savefig(os.path.join(out, name), dpi=72)
        plt.close(fig)

    # 1: per-layer grads at the second-largest depth, and last-layer grad vs depth
    grads = results["init_gradients"]
    depths = list(s.init_grad_depths)
    ref = depths[-2] if len(depths) > 2 else depths[-1]
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.4))
    if f"pre_sqrt_d/{ref}" in grads:
        a.plot(range(1, ref + 1), grads[f"pre_sqrt_d/{ref}"], "--", color="C0", label=f"pre-LN, emb x sqrt(d), L={ref}")
    for c, color in (("post", "C3"), ("pre", "C0")):
        for d in depths:
            a.plot(range(1, d + 1), grads[f"{c}/{d}"], "-o", ms=2, color=color, alpha=0.4 + 0.6 * (d == ref),
                   label=f"{c}-LN L={d}" if d == ref else None)
        b.loglog(depths, [grads[f"{c}/{d}"][-1] for d in depths], "-o", color=color, label=f"{c}-LN")
    b.loglog(depths, [grads[f"pre/{depths[0]}"][-1] * (d / depths[0]) ** -0.5 for d in depths], ":", color="gray",
             label="L^-1/2")
    b.set_xticks(depths, [str(d) for d in depths])
    b.minorticks_off()
    a.set(yscale="log", xlabel="layer", ylabel="||grad W_mlp|| at init", title="grad norm by layer (faint: other L)")
    b.set(xlabel="depth L", ylabel="last layer ||grad W_mlp||", title="last-layer grad vs depth")
    a.legend(fontsize=7), b.legend(fontsize=7)
    save(fig, "fig1_init_gradients.png")

    # 2: final loss vs LR
    fig, ax = plt.subplots(figsize=(5, 3.4))
    for c, color in (("post", "C3"), ("pre", "C0")):
        for warmup, style in ((True, "-o"), (False, "--x")):
            ys = [_mean_loss(_runs(results, c, s.base_depth, lr, warmup)) for lr in s.lrs]
            ax.plot(s.lrs, ys, style, color=color, label=f"{c}-LN {'warm-up' if warmup else 'no warm-up'}")
    ax.axhline(results["unigram_entropy"], color="gray", ls=":", label="unigram baseline")
    ax.set(xscale="log", xlabel="peak LR", ylabel="final val loss (nats/byte)", title=f"L={s.base_depth}")
    ax.legend(fontsize=7)
    save(fig, "fig2_lr_warmup.png")

    def curves(ax, items, title):
        for label, runs, color in items:
            if runs and runs[0].get("train_loss"):
                ax.plot(range(1, len(runs[0]["train_loss"]) + 1), _smooth(runs[0]["train_loss"], 10), color=color,
                        label=f"{label} ({runs[0]['status']})")
        ax.set(xlabel="step", ylabel="train loss (10-step mean)", title=title)
        ax.legend(fontsize=7)

    # 3: deep runs
    fig, axes = plt.subplots(1, len(s.deep_lrs) + 1, figsize=(4.5 * (len(s.deep_lrs) + 1), 3.4))
    for ax, lr in zip(axes, s.deep_lrs):
        items = [(c, _runs(results, c, s.deep_depth, lr, True), col)
                 for c, col in (("post", "C3"), ("deepnorm", "C2"), ("pre", "C0"))]
        curves(ax, items, f"L={s.deep_depth}, LR {lr:g}")
        ax.axhline(results["unigram_entropy"], color="gray", ls=":")
        for label, runs, color in items:
            if runs and runs[0].get("grad_norm"):
                axes[-1].plot(range(1, len(runs[0]["grad_norm"]) + 1), runs[0]["grad_norm"], color=color, lw=0.8,
                              ls="-" if lr == s.deep_lrs[-1] else ":", label=f"{label} LR {lr:g}")
    axes[-1].set(yscale="log", xlabel="step", ylabel="total grad norm", title="gradient norm during training")
    axes[-1].legend(fontsize=6)
    save(fig, "fig3_depth.png")

    # 4: stream norm by depth
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.4))
    for c, color in (("pre", "C0"), ("peri", "C1"), ("ln_scaling", "C2")):
        runs = _runs(results, c, s.mid_depth, s.mid_lr, True)
        for which, style in (("init_profile", ":"), ("trained_profile", "-o")):
            if runs and runs[0].get(which):
                p = runs[0][which]
                a.plot(range(0, s.mid_depth + 1), [p["embedding"]["stream_norm"]] + _layer_values(runs[0], which, "stream_norm"),
                       style, ms=2, color=color, label=f"{c} {'init' if which == 'init_profile' else 'trained'}")
                if which == "trained_profile":
                    b.plot(range(1, s.mid_depth + 1), _layer_values(runs[0], which, "branch_ratio/mlp"), "-o", ms=2,
                           color=color, label=c)
    a.set(yscale="log", xlabel="block (0 = embeddings)", ylabel="mean token ||h||", title="residual-stream norm")
    b.set(yscale="log", xlabel="block", ylabel="||MLP branch|| / ||stream||", title="branch contribution (trained)")
    a.legend(fontsize=7), b.legend(fontsize=7)
    save(fig, "fig4_stream_norm.png")

    # 5: no skip
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.4))
    items = [("add", _runs(results, "pre", s.mid_depth, s.mid_lr, True), "C0"),
             ("none", _runs(results, "pre_noskip", s.mid_depth, s.mid_lr, True), "C3")]
    for label, runs, color in items:
        for which, style in (("init_profile", ":"), ("trained_profile", "-o")):
            if runs and runs[0].get(which):
                p = runs[0][which]
                a.plot(range(0, s.mid_depth + 1), [p["embedding"]["token_cosine"]] + _layer_values(runs[0], which, "token_cosine"),
                       style, ms=2, color=color, label=f"residual={label} {'init' if which == 'init_profile' else 'trained'}")
    a.set(xlabel="block (0 = embeddings)", ylabel="mean pairwise token cosine", title="rank collapse", ylim=(-0.05, 1.05))
    a.legend(fontsize=7)
    curves(b, [(f"residual={k}", r, c) for k, r, c in items], f"Pre-LN L={s.mid_depth}")
    b.axhline(results["unigram_entropy"], color="gray", ls=":")
    save(fig, "fig5_no_skip.png")

    # 6: norm-free
    fig, axes = plt.subplots(1, len(s.norm_free_lrs), figsize=(4.5 * len(s.norm_free_lrs), 3.4), squeeze=False)
    for ax, lr in zip(axes[0], s.norm_free_lrs):
        curves(ax, [(c, _runs(results, c, s.base_depth, lr, True), col)
                    for c, col in (("pre", "C0"), ("dyt", "C1"), ("rezero", "C2"))], f"L={s.base_depth}, LR {lr:g}")
    save(fig, "fig6_norm_free.png")


def write_report(results: dict, s: Settings, out: str) -> None:
    lines = [
        "# Norm-placement study (CPU scale)",
        "",
        "Generated by `python training/study.py" + (" --quick" if s.label == "quick" else "") + "`; every "
        "number below is in `results.json`. Rerun to reproduce (seeded; CPU float32).",
        "",
        "## Setup",
        "",
        f"- Model: causal byte-level LM, d={s.hidden_size}, 4 heads, plain GELU MLP (4d), RoPE, LayerNorm (eps 1e-5) "
        f"unless the cell says otherwise, tied embeddings, init std 1/sqrt(d).",
        f"- Data: the Python Language Reference shipped with CPython (`pydoc_data.topics`, repeated paragraphs once), UTF-8 bytes, 90/10 split; "
        f"unigram baseline {results['unigram_entropy']:.3f} nats/byte, uniform guess {DIVERGED_LOSS:.3f}.",
        f"- Training: {s.steps} steps of {s.batch_size}x{s.seq_len} tokens, AdamW (0.9, 0.98), weight decay 0.01 on "
        f"matrices, no gradient clipping; warm-up = linear over {s.warmup_fraction:.0%} of the steps, then cosine to "
        f"10% (no warm-up: cosine from step 0). Seeds {list(s.seeds)}. Diverged runs count as {DIVERGED_LOSS:.3f}.",
        f"- Validation loss: mean over {s.eval_batches} fixed held-out batches. Diagnostics (hf_skipnorm.diagnostics."
        f"profile) on one fixed held-out batch, at init and after training.",
        f"- Wall time: {results['wall_seconds']:.0f} s on this machine ({s.threads} torch thread(s)).",
        "",
        "Cells: " + ", ".join(f"`{c}` = {json.dumps(CELLS[c])}" for c in CELLS),
        "",
        "Availability in this build: " + "; ".join(
            f"`{c}`: {'available' if v == 'available' else NOT_AVAILABLE + ' (' + v + ')'}"
            for c, v in results["availability"].items()),
        "",
        "Seed-to-seed spread of the final val loss (same cell, seeds " + ", ".join(map(str, (0, *s.noise_seeds)))
        + "): " + "; ".join(f"{k}: {min(v):.3f} to {max(v):.3f} (range {max(v) - min(v):.3f})"
                            for k, v in results.get("noise", {}).items())
        + ". Loss differences smaller than this range are not evidence either way: the loss-based checks below use the "
        "largest range as their margin (measured at one cell only, so a lower bound on the noise elsewhere).",
        "",
        "## Findings",
        "",
    ]
    for f in results["findings"]:
        lines += [
            f"### {f['number']}. {f['title']}",
            "",
            f"- **Paper:** {f['paper']}",
            f"- **Claim:** {f['claim']}",
            f"- **Measured:** {f['measured']}",
            f"- **Checks:** " + ("; ".join(f"{'yes' if ok else 'NO'}: {text}" for text, ok in f["checks"]) or "none"),
            f"- **Verdict:** {f['verdict']}",
            "",
            f"![finding {f['number']}]({f['figure']})",
            "",
        ]
    o = results["callback_overhead"]
    lines += [
        "## Diagnostics callback overhead",
        "",
        f"`DiagnosticsCallback(every_n_steps={o['every_n_steps']})` on a {o['steps']}-step Trainer run "
        f"(L={s.base_depth}, d={s.hidden_size}): its own timers measured {o['callback_fraction']:.1%} of the run; "
        "wall clock " + ", ".join(f"{k} {v['seconds']:.1f}s" for k, v in o["runs"].items())
        + f" (with/without - 1 = {o['wall_overhead']:+.1%}; the two 'with' runs show the noise of a shared machine).",
        "",
        "## All runs",
        "",
        "| run | status | val loss | learned beyond byte counts? | params | seconds |",
        "|---|---|---|---|---|---|",
    ]
    for key, runs in results["runs"].items():
        r = runs[0]
        learned = "" if r.get("val_loss") is None else ("yes" if r["val_loss"] < results["unigram_entropy"] - 0.05 else "no")
        lines.append(f"| {key} | {r['status']} | {_fmt(r.get('val_loss'))} | {learned} | {r.get('parameters', '')} | "
                     f"{r.get('seconds', 0):.0f} |")
    lines += ["", "## Limitations", "",
              "Tiny models (d=64), a 465 kB corpus, short runs, one seed by default: these are qualitative checks of "
              "mechanisms, not reproductions of the papers' numbers. A verdict is computed from the thresholds in "
              "`training/study.py:findings`, printed beside each number; read the numbers, not only the verdict.", ""]
    with open(os.path.join(out, "report.md"), "w") as handle:
        handle.write("\n".join(lines))


def rewrite_report(out: str) -> dict:
    """Findings, figures and report.md again from `out/results.json` (e.g. after a change to a verdict's checks)."""
    with open(os.path.join(out, "results.json")) as handle:
        results = json.load(handle)
    settings = Settings(**{k: tuple(v) if isinstance(v, list) else v for k, v in results["settings"].items()})
    results["findings"] = findings(results, settings)
    write_figures(results, settings, out)
    with open(os.path.join(out, "results.json"), "w") as handle:
        json.dump(results, handle, indent=0, default=float)
    write_report(results, settings, out)
    return results


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="CI-sized study (< 3 minutes)")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "study_output"))
    parser.add_argument("--steps", type=int, help="override the number of training steps per run")
    parser.add_argument("--seeds", type=int, nargs="+", help="override the seeds of every training run")
    parser.add_argument("--threads", type=int, help="torch threads (default 1: the machine is shared)")
    parser.add_argument("--cells", nargs="+", choices=sorted(CELLS), help="only train these cells")
    parser.add_argument("--cards", help="folder for the reference models' cards (default: OUT/model_cards)")
    parser.add_argument("--scratch", help="keep checkpoints and Trainer folders here (default: a temporary folder)")
    parser.add_argument("--report-only", action="store_true",
                        help="recompute the findings, figures and report.md from OUT/results.json without training")
    args = parser.parse_args(argv)
    if args.report_only:
        return rewrite_report(args.out)
    settings = Settings(**(QUICK if args.quick else {}))
    if args.steps:
        settings.steps = args.steps
    if args.seeds:
        settings.seeds = tuple(args.seeds)
    if args.threads:
        settings.threads = args.threads
    if args.cells:
        settings.cells = tuple(args.cells)
    return run_study(settings, args.out, cards=args.cards, scratch=args.scratch)


if __name__ == "__main__":
    main()

"""The study's findings as data: each published claim is one `Finding` entry that names the cells it needs, where in
the grid it looks (a function of the runs the grid holds), and how its verdict is computed from the numbers.

A finding is checked wherever a grid holds its cells, in any user grid: the cells are recognized by their
SkipNormConfig fields (ROLES; a grid may name them as it likes), at the grid's first width. Where the grid lacks
them the finding says so ("not measured") and no verdict is made up. Adding a finding is one entry in FINDINGS:
a `measure` function returning {measured, checks, verdict} and a `figure` function; the verdict of every check
list is `_verdict` (agree / partly agree / disagree), and loss comparisons use the measured seed-to-seed range of
the final validation loss as their margin (`_noise`).

The six built-in findings (1-6) are computed exactly as the study always computed them (the code moved here from
training/study.py). Findings 7 and 8 (AttnRes, value residual, U-Net skips: issue 15) measure the cells of those
features; until the features are in this build their cells are reported as not available. Finding 9 (issue 16)
reads encoder-decoder cells (`is_encoder_decoder: true`, the `seq2seq` grid); their losses are compared only with
each other, with the seed-to-seed range of those cells as the margin.
"""

from __future__ import annotations

import dataclasses
import math
import os
from types import SimpleNamespace
from typing import Callable

NOT_AVAILABLE = "not available in this build"
NOT_RUN = "not measured (its cells were not run in this study)"
DIVERGED_LOSS = math.log(256)  # a diverged run counts as the loss of a uniform byte guess

# The cells the findings know, by their SkipNormConfig fields (on top of the grid's shared `model` fields).
ROLES = {
    "post": {"norm_position": "post"},
    "pre": {"norm_position": "pre"},
    "deepnorm": {"norm_position": "post", "residual": "deepnorm"},
    "peri": {"norm_position": "sandwich", "embedding_norm": True},  # Peri-LN: sandwich + normalized embeddings
    "ln_scaling": {"norm_position": "pre", "norm_depth_scaling": True},  # LayerNorm Scaling 1/sqrt(l)
    "pre_noskip": {"norm_position": "pre", "residual": "none"},
    "dyt": {"norm_position": "pre", "norm_type": "dyt"},
    "rezero": {"norm_position": "none", "norm_type": "none", "residual": "rezero"},
    # issue 15 (the frontier of depth mixing): the fields those features add
    "attn_res": {"norm_position": "pre", "residual": "attn_res"},
    "value_residual": {"norm_position": "pre", "value_residual": "fixed"},  # ResFormer's constants 0.5 / 0.5
    "unet_skips": {"norm_position": "pre", "unet_skips": True},
    # issue 16 (encoder-decoders): both stacks at the run's depth, N = M, trained on BART-style text infilling
    "s2s_post": {"is_encoder_decoder": True, "norm_position": "post"},
    "s2s_pre": {"is_encoder_decoder": True, "norm_position": "pre"},
    "s2s_deepnorm": {"is_encoder_decoder": True, "norm_position": "post", "residual": "deepnorm"},
}
SEQ2SEQ = ("s2s_post", "s2s_pre", "s2s_deepnorm")  # their loss is per target byte of a denoising task: compared
# only among themselves, with their own seed-to-seed range


def run_key(cell, depth, lr, warmup) -> str:
    return f"{cell}/L{depth}/lr{lr:g}/{'warmup' if warmup else 'nowarmup'}"


def effective_loss(run: dict) -> float:
    """Validation loss, with a diverged run counted as the uniform-guess loss ln 256."""
    return run["val_loss"] if run.get("status") == "trained" else DIVERGED_LOSS


def loglog_slope(xs, ys) -> float:
    lx, ly = [math.log(x) for x in xs], [math.log(y) for y in ys]
    mx, my = sum(lx) / len(lx), sum(ly) / len(ly)
    return sum((a - mx) * (b - my) for a, b in zip(lx, ly)) / sum((a - mx) ** 2 for a in lx)


# ----------------------------------------------------------------------------------------------- the view of a study
def role_cells(grid: dict) -> dict[str, str]:
    """{role: the grid's cell with exactly the role's fields} (the first such cell). Whether a cell is an
    encoder-decoder is read with the grid's `model` (is_encoder_decoder may be set there for every cell)."""
    def kind_and_fields(fields: dict, shared: dict) -> tuple[bool, dict]:
        return (bool({**shared, **fields}.get("is_encoder_decoder")),
                {k: v for k, v in fields.items() if k != "is_encoder_decoder"})

    out = {}
    for role, fields in ROLES.items():
        for name, cell_fields in grid["cells"].items():
            if kind_and_fields(cell_fields, grid.get("model") or {}) == kind_and_fields(fields, {}):
                out[role] = name
                break
    return out


def findings_width(results: dict) -> int | None:
    runs = results.get("runs") or []
    return runs[0]["width"] if runs else None


def view(results: dict) -> dict:
    """The study's results as the findings read them: runs grouped by (role, depth, LR, warm-up) over seeds, at the
    grid's first width; availability, init-gradient probes and the seed-to-seed ranges by role."""
    cells = role_cells(results["grid"])
    role_of = {cell: role for role, cell in cells.items()}
    width = findings_width(results)
    grouped: dict[str, list[dict]] = {}
    for run in results["runs"]:
        if run["width"] == width and run["cell"] in role_of:
            grouped.setdefault(run_key(role_of[run["cell"]], run["depth"], run["lr"], run["warmup"]), []).append(run)
    for runs in grouped.values():
        runs.sort(key=lambda r: r["seed"])
    probes = results.get("init_gradients") or {}
    init_gradients = {}
    for key, values in probes.items():
        name, depth = key.rsplit("/", 1)
        role = role_of.get(name, name if name == "pre_sqrt_d" else None)
        if role:
            init_gradients[f"{role}/{depth}"] = values
    noise = {key: [effective_loss(r) for r in runs] for key, runs in grouped.items()
             if len(runs) > 1 and all(r.get("status") in ("trained", "diverged") for r in runs)}
    return {"runs": grouped, "init_gradients": init_gradients, "unigram_entropy": results["unigram_entropy"],
            "availability": {role: results["availability"].get(cells[role], "available") if role in cells else "available"
                             for role in ROLES},
            "noise": noise, "width": width}


def _have(r: dict, role: str, depth: int, lr: float, warmup: bool) -> bool:
    runs = r["runs"].get(run_key(role, depth, lr, warmup), [])
    return bool(runs) and runs[0].get("status") != NOT_AVAILABLE


def _points(r: dict, role: str, warmup: bool) -> set[tuple[int, float]]:
    """(depth, lr) of the role's runs with that warm-up setting."""
    out = set()
    for key, runs in r["runs"].items():
        run = runs[0]
        if key.startswith(role + "/") and run["warmup"] == warmup and run.get("status") != NOT_AVAILABLE:
            out.add((run["depth"], run["lr"]))
    return out


def _common(r: dict, roles, warmup: bool = True) -> set[tuple[int, float]]:
    sets = [_points(r, role, warmup) for role in roles]
    return set.intersection(*sets) if sets else set()


def _any_of(r: dict, base: str, others, warmup: bool = True) -> set[tuple[int, float]]:
    """(depth, lr) where `base` and at least one of `others` have runs."""
    return _points(r, base, warmup) & set().union(*[_points(r, o, warmup) for o in others])


# ----------------------------------------------------------------------------------------------- where each finding looks
def _deepest(points: set | None, depth_name: str, lr_name: str) -> SimpleNamespace | None:
    """The largest depth among `points` and its smallest LR, under the names a finding's code reads."""
    if not points:
        return None
    depth = max(d for d, _ in points)
    return SimpleNamespace(**{depth_name: depth, lr_name: min(lr for d, lr in points if d == depth)})


def params_1(r):
    grads = r["init_gradients"]
    depths = sorted({int(k.split("/")[1]) for k in grads if k.startswith("post/")}
                    & {int(k.split("/")[1]) for k in grads if k.startswith("pre/")})
    return SimpleNamespace(init_grad_depths=tuple(depths)) if len(depths) >= 2 else None


def params_2(r):
    both = _common(r, ("post", "pre"), True) & _common(r, ("post", "pre"), False)
    if not both:
        return None
    depth = min(d for d, _ in both)
    return SimpleNamespace(base_depth=depth, lrs=tuple(sorted(lr for d, lr in both if d == depth)))


def params_3(r):
    common = _common(r, ("post", "pre"))
    if not common:
        return None
    depth = max(d for d, _ in common)
    return SimpleNamespace(deep_depth=depth, deep_lrs=tuple(sorted(lr for d, lr in common if d == depth)))


def params_4(r):
    return _deepest(_any_of(r, "pre", ("peri", "ln_scaling")), "mid_depth", "mid_lr")


def params_5(r):
    return _deepest(_common(r, ("pre", "pre_noskip")), "mid_depth", "mid_lr")


def params_6(r):
    points = _any_of(r, "pre", ("dyt", "rezero"))
    if not points:
        return None
    depth = min(d for d, _ in points)
    return SimpleNamespace(base_depth=depth, norm_free_lrs=tuple(sorted(lr for d, lr in points if d == depth)))


FRONTIER = ("attn_res", "value_residual", "unet_skips")


def params_7(r):
    return _deepest(_common(r, ("pre", "attn_res")), "depth", "lr")


def params_8(r):
    return _deepest(_any_of(r, "pre", FRONTIER), "depth", "lr")


# ----------------------------------------------------------------------------------------------- helpers (as before)
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


def _noise(results: dict, roles=None) -> float:
    """The largest seed-to-seed range of the final val loss among the reference cells (0.05 when not measured): the
    margin a loss difference must exceed before a check counts it. `roles`: the cells whose ranges count (default:
    the causal ones; the encoder-decoder cells' loss is another task's)."""
    counted = [v for key, v in results.get("noise", {}).items()
               if (key.split("/")[0] in roles if roles else key.split("/")[0] not in SEQ2SEQ)]
    return max((max(v) - min(v) for v in counted if len(v) > 1), default=0.05)


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



def _dyt_alpha():
    from hf_skipnorm import SkipNormConfig

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



def finding_1(results: dict, s) -> dict:
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
    return dict(
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
        verdict=_verdict(checks), checks=checks, figure="fig1_init_gradients.png")


def figure_1(results: dict, s, path: str) -> None:
    plt = _pyplot()
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
    _save(fig, path)



def finding_2(results: dict, s) -> dict:
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
    return dict(
        number=2, title="Learning-rate sensitivity with and without warm-up",
        paper="Xiong et al. 2020 (arXiv 2002.04745), Sec. 3 / Fig. 2",
        claim="Post-LN needs the warm-up stage: without it, it trains worse or fails, more so at larger LR; Pre-LN "
              "trains without warm-up and is less sensitive to the LR.",
        measured=(f"final val loss (L={s.base_depth}, LRs {list(s.lrs)}): "
                  + "; ".join(f"{k} {[_fmt(v) for v in vals]}" for k, vals in table.items())
                  + f". Mean cost of dropping warm-up: post {gap['post']:+.3f}, pre {gap['pre']:+.3f} nats. "
                  f"Loss spread across LRs: " + ", ".join(f"{k} {v:.3f}" for k, v in spread_lr.items())
                  + f". Diverged runs: {diverged or 'none'}."),
        verdict=_verdict(checks), checks=checks, figure="fig2_lr_warmup.png")


def figure_2(results: dict, s, path: str) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.4))
    for c, color in (("post", "C3"), ("pre", "C0")):
        for warmup, style in ((True, "-o"), (False, "--x")):
            ys = [_mean_loss(_runs(results, c, s.base_depth, lr, warmup)) for lr in s.lrs]
            ax.plot(s.lrs, ys, style, color=color, label=f"{c}-LN {'warm-up' if warmup else 'no warm-up'}")
    ax.axhline(results["unigram_entropy"], color="gray", ls=":", label="unigram baseline")
    ax.set(xscale="log", xlabel="peak LR", ylabel="final val loss (nats/byte)", title=f"L={s.base_depth}")
    ax.legend(fontsize=7)
    _save(fig, path)




def finding_3(results: dict, s) -> dict:
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
    return dict(
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
        verdict=verdict3, checks=checks, figure="fig3_depth.png")


def figure_3(results: dict, s, path: str) -> None:
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(s.deep_lrs) + 1, figsize=(4.5 * (len(s.deep_lrs) + 1), 3.4))
    for ax, lr in zip(axes, s.deep_lrs):
        items = [(c, _runs(results, c, s.deep_depth, lr, True), col)
                 for c, col in (("post", "C3"), ("deepnorm", "C2"), ("pre", "C0"))]
        _curves(ax, items, f"L={s.deep_depth}, LR {lr:g}")
        ax.axhline(results["unigram_entropy"], color="gray", ls=":")
        for label, runs, color in items:
            if runs and runs[0].get("grad_norm"):
                axes[-1].plot(range(1, len(runs[0]["grad_norm"]) + 1), runs[0]["grad_norm"], color=color, lw=0.8,
                              ls="-" if lr == s.deep_lrs[-1] else ":", label=f"{label} LR {lr:g}")
    axes[-1].set(yscale="log", xlabel="step", ylabel="total grad norm", title="gradient norm during training")
    axes[-1].legend(fontsize=6)
    _save(fig, path)



def finding_4(results: dict, s) -> dict:
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
    return dict(
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
        verdict=verdict4, checks=checks, figure="fig4_stream_norm.png")


def figure_4(results: dict, s, path: str) -> None:
    plt = _pyplot()
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
    _save(fig, path)



def finding_5(results: dict, s) -> dict:
    add, none = _runs(results, "pre", s.mid_depth, s.mid_lr, True), _runs(results, "pre_noskip", s.mid_depth, s.mid_lr, True)
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
    return dict(
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
        verdict=_verdict(checks) if measured5 else NOT_RUN, checks=checks, figure="fig5_no_skip.png")


def figure_5(results: dict, s, path: str) -> None:
    plt = _pyplot()
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
    _curves(b, [(f"residual={k}", r, c) for k, r, c in items], f"Pre-LN L={s.mid_depth}")
    b.axhline(results["unigram_entropy"], color="gray", ls=":")
    _save(fig, path)



def finding_6(results: dict, s) -> dict:
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
    return dict(
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
        verdict=verdict6, checks=checks, figure="fig6_norm_free.png")


def figure_6(results: dict, s, path: str) -> None:
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(s.norm_free_lrs), figsize=(4.5 * len(s.norm_free_lrs), 3.4), squeeze=False)
    for ax, lr in zip(axes[0], s.norm_free_lrs):
        _curves(ax, [(c, _runs(results, c, s.base_depth, lr, True), col)
                    for c, col in (("pre", "C0"), ("dyt", "C1"), ("rezero", "C2"))], f"L={s.base_depth}, LR {lr:g}")
    _save(fig, path)



# ----------------------------------------------------------------------------------------------- 7, 8: the frontier (issue 15)
def _spread(values: list[float]) -> float:
    """max / min over the blocks (1 = perfectly uniform)."""
    return max(values) / min(values) if values and min(values) > 0 else float("inf")


def _cv(values: list[float]) -> float:
    """Coefficient of variation (std / mean) over the blocks (0 = perfectly uniform)."""
    mean = sum(values) / len(values)
    return (sum((v - mean) ** 2 for v in values) / len(values)) ** 0.5 / mean if mean else float("inf")


def _block_grads(run: dict, which: str) -> list[float]:
    rows = run.get(which, {}).get("layers", [])
    return [row.get("grad_norm/attn", 0.0) + row.get("grad_norm/mlp", 0.0) for row in rows]


def finding_7(results: dict, s) -> dict:
    runs = {c: _runs(results, c, s.depth, s.lr, True) for c in ("pre", "attn_res")}
    magnitude, gradients = {}, {}
    for c, group in runs.items():
        if group and group[0].get("status") == "trained":
            magnitude[c] = _spread(_layer_values(group[0], "trained_profile", "stream_norm"))
            gradients[c] = _cv(_block_grads(group[0], "trained_profile"))
    checks = []
    if len(magnitude) == 2:
        checks = [("AttnRes's block outputs vary less across depth than Pre-LN's (max/min stream norm, trained)",
                   magnitude["attn_res"] < magnitude["pre"]),
                  ("AttnRes's per-block gradient norms vary less across depth (coefficient of variation, trained)",
                   gradients["attn_res"] < gradients["pre"])]
    return dict(
        number=7, title=f"Attention Residuals vs Pre-LN: uniformity across depth (L={s.depth})",
        paper="Kimi Team 2026, Attention Residuals (arXiv 2603.15031)",
        claim="Attending over the preceding layers' outputs instead of adding them keeps output magnitudes and "
              "gradients more uniform across depth than PreNorm's accumulating residual stream.",
        measured=("max/min block stream norm (trained): " + ", ".join(f"{c} {v:.2f}x" for c, v in magnitude.items())
                  + "; coefficient of variation of per-block gradient norms (trained): "
                  + ", ".join(f"{c} {v:.3f}" for c, v in gradients.items())
                  + "; val loss: " + ", ".join(f"{c} {_fmt(_mean_loss(g))}" for c, g in runs.items())
                  + ("" if "attn_res" in magnitude else f"; attn_res: {_why(results, 'attn_res')}")),
        verdict=_verdict(checks) if checks else NOT_RUN, checks=checks, figure="fig7_attn_res.png")


def figure_7(results: dict, s, path: str) -> None:
    plt = _pyplot()
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.4))
    for c, color in (("pre", "C0"), ("attn_res", "C1")):
        runs = _runs(results, c, s.depth, s.lr, True)
        if runs and runs[0].get("trained_profile"):
            norms = _layer_values(runs[0], "trained_profile", "stream_norm")
            a.plot(range(len(norms)), norms, "-o", ms=2, color=color, label=c)
            grads = _block_grads(runs[0], "trained_profile")
            b.plot(range(len(grads)), grads, "-o", ms=2, color=color, label=c)
    from matplotlib.ticker import MaxNLocator

    a.set(yscale="log", xlabel="block", ylabel="mean token ||h|| after the block", title="output magnitude (trained)")
    b.set(xlabel="block", ylabel="||grad|| attn + mlp", title="gradient by block (trained)")
    for ax in (a, b):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # blocks numbered from 0, as the diagnostics table
        ax.legend(fontsize=7)
    _save(fig, path)


def finding_8(results: dict, s) -> dict:
    noise = _noise(results)
    pre = _mean_loss(_runs(results, "pre", s.depth, s.lr, True))
    losses = {c: _mean_loss(_runs(results, c, s.depth, s.lr, True)) for c in FRONTIER}
    measured_cells = [c for c, v in losses.items() if v is not None]
    checks = [(f"{c}'s final val loss is below Pre-LN's by more than the seed range ({noise:.3f})", losses[c] < pre - noise)
              for c in measured_cells] if pre is not None else []
    missing = [c for c in FRONTIER if c not in measured_cells]
    verdict = _verdict(checks) if checks else _missing(results, FRONTIER)
    if checks and missing:
        verdict += f" (for the measured cells; {', '.join(missing)}: {_missing(results, missing)})"
    return dict(
        number=8, title=f"Loss at equal steps: AttnRes, value residual, U-Net skips vs Pre-LN (L={s.depth})",
        paper="Kimi Team 2026, Attention Residuals (arXiv 2603.15031); Zhou et al. 2024, Value Residual Learning "
              "(ResFormer, arXiv 2410.17897); U-Net skips of the modded-nanogpt speedrun records (no paper)",
        claim="Each of these changes to how layers mix reaches a lower loss than Pre-LN in the same number of steps.",
        measured=(f"final val loss at LR {s.lr:g}: pre {_fmt(pre)}, "
                  + ", ".join(f"{c} {_fmt(v)}" for c, v in losses.items())
                  + "".join(f"; {c}: {_why(results, c)}" for c in missing)),
        verdict=verdict, checks=checks, figure="fig8_frontier_loss.png")


def figure_8(results: dict, s, path: str) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 3.4))
    _curves(ax, [(c, _runs(results, c, s.depth, s.lr, True), f"C{i}") for i, c in enumerate(("pre",) + FRONTIER)],
            f"L={s.depth}, LR {s.lr:g}")
    ax.axhline(results["unigram_entropy"], color="gray", ls=":")
    _save(fig, path)


# ----------------------------------------------------------------------------------------------- 9: encoder-decoders (issue 16)
def params_9(r):
    """Every depth where s2s_post and s2s_pre both ran (warm-up; two or more depths: the finding is about deepening),
    and the LRs they share at all of those depths."""
    points = _common(r, ("s2s_post", "s2s_pre"))
    depths = sorted({d for d, _ in points})
    if len(depths) < 2:
        return None
    lrs = sorted(set.intersection(*[{lr for d, lr in points if d == depth} for depth in depths]))
    return SimpleNamespace(depths=tuple(depths), lrs=tuple(lrs)) if lrs else None


def finding_9(results: dict, s) -> dict:
    noise = _noise(results, SEQ2SEQ)
    measured_noise = any(k.split("/")[0] in SEQ2SEQ for k in results.get("noise", {}))
    shallow, deep = s.depths[0], s.depths[-1]
    loss = {c: {(d, lr): _mean_loss(_runs(results, c, d, lr, True)) for d in s.depths for lr in s.lrs} for c in SEQ2SEQ}
    diverged = sorted(f"{c}/L{d}/lr{lr:g}" for c in SEQ2SEQ for d in s.depths for lr in s.lrs
                      if any(r.get("status") == "diverged" for r in _runs(results, c, d, lr, True)))
    post, pre, deepnorm = loss["s2s_post"], loss["s2s_pre"], loss["s2s_deepnorm"]
    have_deepnorm = all(v is not None for v in deepnorm.values())
    gap = {key: post[key] - pre[key] for key in post}  # Post-LN minus Pre-LN (a diverged run counts as ln 256)
    checks = [(f"at the deepest depth (N=M={deep}) Post-LN trails Pre-LN by more than the seed range ({noise:.3f}) "
               "or diverges, at every LR", all(gap[(deep, lr)] > noise for lr in s.lrs))]
    checks.append((f"Post-LN's gap to Pre-LN is larger at N=M={deep} than at N=M={shallow}, at every LR",
                   all(gap[(deep, lr)] > gap[(shallow, lr)] for lr in s.lrs)))
    if have_deepnorm:
        trails = [k for k in post if gap[k] > noise]  # as finding 3: DeepNorm's fix is measured where Post-LN fails
        checks += [("DeepNorm beats Post-LN by more than the seed range at every depth and LR where Post-LN trails "
                    "Pre-LN", bool(trails) and all(deepnorm[k] < post[k] - noise for k in trails)),
                   ("DeepNorm trains wherever Pre-LN does: within the seed range of Pre-LN's loss (or better) at "
                    "every depth and LR", all(deepnorm[k] < pre[k] + noise for k in pre))]
    shallow_cells = SEQ2SEQ if have_deepnorm else ("s2s_post", "s2s_pre")
    spread = {lr: max(loss[c][(shallow, lr)] for c in shallow_cells) - min(loss[c][(shallow, lr)] for c in shallow_cells)
              for lr in s.lrs}
    checks.append((f"at N=M={shallow} the {'three' if have_deepnorm else 'two'} placements are within the seed range "
                   "of each other at every LR", all(v <= noise for v in spread.values())))
    verdict = _verdict(checks) + ("" if have_deepnorm else f" (DeepNorm {_missing(results, ('s2s_deepnorm',))})")
    spikes = {}
    for c in SEQ2SEQ:
        for lr in s.lrs:
            runs = _runs(results, c, deep, lr, True)
            if runs and runs[0].get("grad_norm"):
                g = sorted(runs[0]["grad_norm"])
                spikes[f"{c}/lr{lr:g}"] = max(runs[0]["grad_norm"]) / g[len(g) // 2]
    table = "; ".join(f"{c} " + ", ".join(f"N=M={d}: {[_fmt(loss[c][(d, lr)]) for lr in s.lrs]}" for d in s.depths)
                      for c in SEQ2SEQ)
    return dict(
        number=9, title=f"Encoder-decoders: Post-LN vs Pre-LN vs DeepNorm as both stacks deepen (N=M in {list(s.depths)})",
        paper="Xiong et al. 2020, On Layer Normalization in the Transformer Architecture (arXiv 2002.04745; "
              "encoder-decoder translation); Wang et al. 2022, DeepNet: Scaling Transformers to 1,000 Layers (arXiv "
              "2203.00555; encoder-decoder translation, DeepNorm's N/M constants)",
        claim="In encoder-decoders, Post-LN gets harder to train as the stacks deepen (it trails Pre-LN or diverges), "
              "while at shallow depth the placements train alike; DeepNorm (its encoder-decoder alpha/beta from N and "
              "M) trains wherever Pre-LN does.",
        measured=(f"final val loss (nats per target byte of BART text infilling, with warm-up) at LRs {list(s.lrs)}: "
                  + table + "; Post-LN minus Pre-LN: " + ", ".join(
                      f"N=M={d} {[f'{gap[(d, lr)]:+.3f}' for lr in s.lrs]}" for d in s.depths)
                  + f"; spread of the placements at N=M={shallow}: {[f'{spread[lr]:.3f}' for lr in s.lrs]}"
                  + f"; max/median grad norm at N=M={deep}: " + ", ".join(f"{k} {v:.1f}x" for k, v in spikes.items())
                  + f"; diverged runs: {diverged or 'none'}; margin: the encoder-decoder cells' seed-to-seed range "
                  + (f"{noise:.3f}" if measured_noise else "(not measured: the grid repeats no seeds of these cells): 0.05, a guess")
                  + ("" if have_deepnorm else f"; s2s_deepnorm: {_why(results, 's2s_deepnorm')}")),
        verdict=verdict, checks=checks, figure="fig9_seq2seq_depth.png")


def figure_9(results: dict, s, path: str) -> None:
    plt = _pyplot()
    colors = {"s2s_post": "C3", "s2s_deepnorm": "C2", "s2s_pre": "C0"}
    fig, axes = plt.subplots(1, len(s.lrs) + 1, figsize=(4.3 * (len(s.lrs) + 1), 3.4))
    for ax, lr in zip(axes, s.lrs):
        for c, color in colors.items():
            points = [(d, [effective_loss(r) for r in _runs(results, c, d, lr, True)]) for d in s.depths]
            points = [(d, v) for d, v in points if v and _runs(results, c, d, lr, True)[0].get("status") != NOT_AVAILABLE]
            if not points:
                continue
            xs, mean = [d for d, _ in points], [sum(v) / len(v) for _, v in points]
            err = [[m - min(v) for m, (_, v) in zip(mean, points)], [max(v) - m for m, (_, v) in zip(mean, points)]]
            ax.errorbar(xs, mean, yerr=err, fmt="-o", ms=3, capsize=3, color=color, label=c)
            bad = [(d, m) for d, m in zip(xs, mean)
                   if any(r.get("status") == "diverged" for r in _runs(results, c, d, lr, True))]
            if bad:
                ax.plot(*zip(*bad), "x", ms=9, color=color)
        ax.set(xlabel="depth N = M", ylabel="final val loss (nats/target byte)", title=f"LR {lr:g} (x: diverged)")
        ax.set_xticks(list(s.depths))
        ax.legend(fontsize=7)
    deep, lr = s.depths[-1], s.lrs[-1]
    _curves(axes[-1], [(c, _runs(results, c, deep, lr, True), color) for c, color in colors.items()],
            f"N=M={deep}, LR {lr:g}")
    _save(fig, path)


# ----------------------------------------------------------------------------------------------- the registry
@dataclasses.dataclass(frozen=True)
class Finding:
    """One published claim: the cells it reads, where in a grid it looks, its verdict and its figure."""

    number: int
    title: str
    paper: str
    claim: str
    cells: tuple[str, ...]  # the ROLES it reads
    needs: str  # what a grid must hold for a verdict, in words (printed when it does not)
    where: Callable[[dict], SimpleNamespace | None]  # the depths/LRs it uses, found in the grid; None: not there
    measure: Callable[[dict, SimpleNamespace], dict]  # -> {title, measured, checks, verdict, figure, ...}
    figure: Callable[[dict, SimpleNamespace, str], None]


FINDINGS = [
    Finding(1, "Gradient norm by layer at initialization: Post-LN vs Pre-LN",
            "Xiong et al. 2020 (arXiv 2002.04745)", "Post-LN's last-layer gradient at init is independent of depth and "
            "grows toward the output; Pre-LN's shrinks as L^-1/2 and is flat across layers.", ("post", "pre"),
            "init_probes of post and pre at two or more depths", params_1, finding_1, figure_1),
    Finding(2, "Learning-rate sensitivity with and without warm-up", "Xiong et al. 2020 (arXiv 2002.04745)",
            "Post-LN needs warm-up; Pre-LN trains without it and is less LR-sensitive.", ("post", "pre"),
            "post and pre at one depth, with and without warm-up, at the same LRs", params_2, finding_2, figure_2),
    Finding(3, "Depth stability: Post-LN vs DeepNorm vs Pre-LN at the same LRs",
            "Wang et al. 2022, DeepNet (arXiv 2203.00555)", "Deep Post-LN is unstable; DeepNorm fixes it.",
            ("post", "deepnorm", "pre"), "post and pre (and deepnorm) with warm-up at a common depth and LR",
            params_3, finding_3, figure_3),
    Finding(4, "Hidden-state norm growth with depth", "Sun et al. 2025 (arXiv 2502.05795); Kim et al. 2025 (arXiv "
            "2502.02732)", "Pre-LN's stream norm grows with depth; LayerNorm Scaling and Peri-LN keep it in check.",
            ("pre", "peri", "ln_scaling"), "pre and peri or ln_scaling with warm-up at a common depth and LR",
            params_4, finding_4, figure_4),
    Finding(5, "Signal propagation without skips", "Dong et al. 2021 (arXiv 2103.03404)",
            "Without skips, tokens collapse toward one direction and training fails.", ("pre", "pre_noskip"),
            "pre and pre_noskip with warm-up at a common depth and LR", params_5, finding_5, figure_5),
    Finding(6, "Norm-free training: DyT vs LayerNorm, ReZero vs Pre-LN", "Zhu et al. 2025 (arXiv 2503.10622); "
            "Bachlechner et al. 2020 (arXiv 2003.04887)", "DyT matches LayerNorm; ReZero converges faster than Pre-LN.",
            ("pre", "dyt", "rezero"), "pre and dyt or rezero with warm-up at a common depth and LR",
            params_6, finding_6, figure_6),
    Finding(7, "Attention Residuals vs Pre-LN: uniformity across depth", "Kimi Team 2026, Attention Residuals "
            "(arXiv 2603.15031)", "AttnRes keeps output magnitudes and gradients more uniform across depth than PreNorm.",
            ("pre", "attn_res"), "pre and attn_res with warm-up at a common depth and LR", params_7, finding_7, figure_7),
    Finding(8, "Loss at equal steps: AttnRes, value residual, U-Net skips vs Pre-LN", "arXiv 2603.15031, 2410.17897; "
            "modded-nanogpt", "Each reaches a lower loss than Pre-LN in the same number of steps.",
            ("pre",) + FRONTIER, "pre and at least one of attn_res, value_residual, unet_skips with warm-up at a "
            "common depth and LR", params_8, finding_8, figure_8),
    Finding(9, "Encoder-decoders: Post-LN vs Pre-LN vs DeepNorm as both stacks deepen", "Xiong et al. 2020 (arXiv "
            "2002.04745); Wang et al. 2022, DeepNet (arXiv 2203.00555)", "Deep Post-LN encoder-decoders trail Pre-LN "
            "or diverge; DeepNorm trains wherever Pre-LN does; shallow, the placements train alike.", SEQ2SEQ,
            "s2s_post and s2s_pre (and s2s_deepnorm) with warm-up at common depths and LRs (python training/study.py "
            "--grid seq2seq)", params_9, finding_9, figure_9),
]


def compute(results: dict) -> list[dict]:
    """Every finding's record for a study's results (a verdict where the grid holds its cells, else why not)."""
    r = view(results)
    out = []
    for finding in FINDINGS:
        where = finding.where(r)
        if where is None:
            unavailable = {c: r["availability"][c] for c in finding.cells if r["availability"][c] != "available"}
            out.append(dict(number=finding.number, title=finding.title, paper=finding.paper, claim=finding.claim,
                            measured=f"this grid does not hold the runs it needs ({finding.needs})"
                            + "".join(f"; {c}: {reason}" for c, reason in unavailable.items()),
                            verdict=NOT_AVAILABLE if unavailable else NOT_RUN, checks=[], figure=None, where=None))
            continue
        record = finding.measure(r, where)
        record["where"] = {**vars(where), "width": r["width"]}
        out.append(record)
    return out


def write_figures(results: dict, records: list[dict], out_dir: str) -> list[str]:
    """The figure of every finding that has numbers; returns the file names."""
    r = view(results)
    written = []
    for finding, record in zip(FINDINGS, records):
        if record.get("figure") and record.get("where") is not None:
            where = SimpleNamespace(**{k: tuple(v) if isinstance(v, list) else v
                                       for k, v in record["where"].items() if k != "width"})
            finding.figure(r, where, os.path.join(out_dir, record["figure"]))
            written.append(record["figure"])
    return written


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=72)
    import matplotlib.pyplot as plt

    plt.close(fig)


def _curves(ax, items, title):
    for label, runs, color in items:
        if runs and runs[0].get("train_loss"):
            ax.plot(range(1, len(runs[0]["train_loss"]) + 1), _smooth(runs[0]["train_loss"], 10), color=color,
                    label=f"{label} ({runs[0]['status']})")
    ax.set(xlabel="step", ylabel="train loss (10-step mean)", title=title)
    ax.legend(fontsize=7)

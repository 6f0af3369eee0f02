"""The study's report folder, built from results.json alone: report.md, the sweep's figures, the findings' figures.

    python training/study.py --report_only --output_dir runs/my-study   # rebuild after editing a verdict or a figure

Nothing here trains or imports the model: a reader with results.json can rebuild every table and figure.
"""

from __future__ import annotations

import json
import math
import os
import statistics

from training import study_findings
from training.study_findings import DIVERGED_LOSS, NOT_AVAILABLE, effective_loss

# A loss spike: a step whose training loss exceeds the median of the SPIKE_WINDOW preceding steps by more than
# SPIKE_FACTOR times (so 10% above its recent level; the batch-to-batch noise of these runs is a few percent).
SPIKE_WINDOW = 10
SPIKE_FACTOR = 1.10
SPIKE_RULE = (f"a step t > {SPIKE_WINDOW} whose training loss is more than {SPIKE_FACTOR:.2f} x the median of the "
              f"{SPIKE_WINDOW} steps before it")


# ----------------------------------------------------------------------------------------------- per-run measures
def loss_spikes(losses: list[float]) -> list[int]:
    """1-based steps that are spikes by SPIKE_RULE."""
    return [t + 1 for t in range(SPIKE_WINDOW, len(losses))
            if losses[t] > SPIKE_FACTOR * statistics.median(losses[t - SPIKE_WINDOW : t])]


def _ratio(values: list[float]) -> float | None:
    return values[-1] / values[0] if values and values[0] else None


def stability(run: dict) -> dict:
    """Spikes, gradient-norm extremes, divergence and the diagnostics at init and at the end, for one run."""
    grads = run.get("grad_norm") or []
    out = {"spikes": loss_spikes(run.get("train_loss") or []),
           "max_grad_norm": max(grads) if grads else None,
           "max_over_median_grad_norm": max(grads) / statistics.median(grads) if grads and statistics.median(grads) else None,
           "diverged_at": (run.get("divergence") or {}).get("step"),
           "first_nonfinite": (run.get("divergence") or {}).get("first_nonfinite")}
    for label, key in (("init", "init_profile"), ("end", "trained_profile")):
        rows = (run.get(key) or {}).get("layers", [])
        if rows:
            out[f"{label}/stream_growth"] = _ratio([r["stream_norm"] for r in rows])
            out[f"{label}/grad_last_over_first"] = _ratio([r["grad_norm/mlp"] for r in rows])
            out[f"{label}/last_token_cosine"] = rows[-1]["token_cosine"]
    return out


def _fmt(value, digits=3) -> str:
    if value is None:
        return ""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


# ----------------------------------------------------------------------------------------------- sweep figures
def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _groups(results: dict) -> dict[tuple, list[dict]]:
    """Runs that differ only by seed: {(cell, depth, width, lr, warmup): [runs]} (trained or diverged)."""
    out: dict[tuple, list[dict]] = {}
    for run in results["runs"]:
        if run.get("status") in ("trained", "diverged"):
            out.setdefault((run["cell"], run["depth"], run["width"], run["lr"], run["warmup"]), []).append(run)
    return out


def _smooth(values: list[float], window: int = 10) -> list[float]:
    return study_findings._smooth(values, window)


def _label(depth, width, lr, warmup, many_widths) -> str:
    return f"L{depth}" + (f" d{width}" if many_widths else "") + f" lr{lr:g}" + ("" if warmup else " no-wu")


def figure_curves(results: dict, path: str) -> None:
    """Training (10-step mean; band: seed range) and evaluation loss curves, one panel per cell."""
    plt = _pyplot()
    groups = _groups(results)
    cells = [c for c in results["grid"]["cells"] if any(k[0] == c for k in groups)]
    if not cells:
        return
    many_widths = len({k[2] for k in groups}) > 1
    columns = min(4, len(cells))
    rows = math.ceil(len(cells) / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(4.2 * columns, 3.2 * rows), squeeze=False)
    for ax in axes.flat[len(cells):]:
        ax.axis("off")
    for ax, cell in zip(axes.flat, cells):
        keys = sorted(k for k in groups if k[0] == cell)
        for i, key in enumerate(keys):
            runs, color = groups[key], f"C{i % 10}"  # qualitative colors: neighbouring settings stay apart
            curves = [_smooth(r["train_loss"]) for r in runs if r.get("train_loss")]
            if not curves:
                continue
            length = min(len(c) for c in curves)
            steps = range(1, length + 1)
            mean = [sum(c[t] for c in curves) / len(curves) for t in range(length)]
            ax.plot(steps, mean, color=color, lw=1, label=_label(*key[1:], many_widths)
                    + (" (diverged)" if any(r["status"] == "diverged" for r in runs) else ""))
            if len(curves) > 1:
                ax.fill_between(steps, [min(c[t] for c in curves) for t in range(length)],
                                [max(c[t] for c in curves) for t in range(length)], color=color, alpha=0.2)
            evals = [r["eval_curve"] for r in runs if r.get("eval_curve")]
            if evals:
                points = sorted({s for e in evals for s, _ in e})
                ys = [statistics.mean(v for e in evals for s, v in e if s == p) for p in points]
                ax.plot(points, ys, "o--", ms=3, lw=0.8, color=color)
        ax.axhline(results["unigram_entropy"], color="gray", ls=":", lw=0.8)
        ax.set(title=f"{cell}", xlabel="step", ylabel="loss (nats/byte)")
        ax.set_ylim(top=min(DIVERGED_LOSS + 0.3, ax.get_ylim()[1]))
        ax.legend(fontsize=7, title="line: train, o: eval", title_fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def _final_loss_figure(results: dict, path: str, x: str) -> bool:
    """Final val loss against `x` ('lr' or 'depth'), one panel per value of the other settings, a line per cell
    (error bars: the seed-to-seed range; a diverged run counts as ln 256 and is drawn as x)."""
    plt = _pyplot()
    groups = _groups(results)
    many_widths = len({k[2] for k in groups}) > 1
    panels: dict[tuple, dict[tuple, dict]] = {}
    for (cell, depth, width, lr, warmup), runs in groups.items():
        panel = (depth, width) if x == "lr" else (width, lr, warmup)
        line = (cell, warmup) if x == "lr" else (cell,)
        panels.setdefault(panel, {}).setdefault(line, {})[lr if x == "lr" else depth] = runs
    panels = {p: lines for p, lines in panels.items() if any(len(points) > 1 for points in lines.values())}
    if not panels:
        return False
    keys = sorted(panels)
    columns = min(3, len(keys))
    rows = math.ceil(len(keys) / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(4.6 * columns, 3.4 * rows), squeeze=False)
    for ax in axes.flat[len(keys):]:
        ax.axis("off")
    cells = list(results["grid"]["cells"])
    for ax, panel in zip(axes.flat, keys):
        for line, points in sorted(panels[panel].items(), key=lambda item: (cells.index(item[0][0]), item[0][1:])):
            xs = sorted(points)
            losses = [[effective_loss(r) for r in points[v]] for v in xs]
            mean = [sum(v) / len(v) for v in losses]
            err = [[m - min(v) for m, v in zip(mean, losses)], [max(v) - m for m, v in zip(mean, losses)]]
            color = f"C{cells.index(line[0]) % 10}"
            style = "-" if len(line) == 1 or line[1] else "--"
            ax.errorbar(xs, mean, yerr=err, fmt="o" + style, ms=3, lw=1, capsize=3, color=color,
                        label=line[0] + ("" if len(line) == 1 else (" warm-up" if line[1] else " no warm-up")))
            diverged = [(v, m) for v, m, runs in zip(xs, mean, (points[v] for v in xs))
                        if any(r["status"] == "diverged" for r in runs)]
            if diverged:
                ax.plot(*zip(*diverged), "x", ms=8, color=color)
        ax.axhline(results["unigram_entropy"], color="gray", ls=":", lw=0.8, label="unigram baseline")
        if x == "lr":
            depth, width = panel
            ax.set(xscale="log", xlabel="peak LR", title=f"L={depth}" + (f", d={width}" if many_widths else ""))
        else:
            width, lr, warmup = panel
            ax.set(xlabel="depth L", title=f"LR {lr:g}, {'warm-up' if warmup else 'no warm-up'}"
                   + (f", d={width}" if many_widths else ""))
            ax.set_xticks(sorted({d for points in panels[panel].values() for d in points}))
        ax.set_ylabel("final val loss (nats/byte)")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return True


# ----------------------------------------------------------------------------------------------- report.md
def _seconds(value: float) -> str:
    return f"{value:.0f} s" if value < 120 else f"{value / 60:.1f} min"


def write_report_folder(results: dict, out_dir: str) -> dict:
    """Findings, stability measures, figures, results.json and report.md into `out_dir`."""
    os.makedirs(out_dir, exist_ok=True)
    results["findings"] = study_findings.compute(results)
    results["stability"] = {run["run_id"]: stability(run) for run in results["runs"]
                            if run.get("status") in ("trained", "diverged")}
    figures = {"curves": "fig_curves.png", "lr": "fig_loss_vs_lr.png", "depth": "fig_loss_vs_depth.png"}
    figure_curves(results, os.path.join(out_dir, figures["curves"]))
    drawn = {"curves": any(r.get("train_loss") for r in results["runs"])}
    drawn["lr"] = _final_loss_figure(results, os.path.join(out_dir, figures["lr"]), "lr")
    drawn["depth"] = _final_loss_figure(results, os.path.join(out_dir, figures["depth"]), "depth")
    results["figures"] = {k: v for k, v in figures.items() if drawn[k]}
    study_findings.write_figures(results, results["findings"], out_dir)
    from training.study import write_json

    write_json(os.path.join(out_dir, "results.json"), results)
    with open(os.path.join(out_dir, "report.md"), "w") as handle:
        handle.write(markdown(results))
    return results


def rewrite(out_dir: str) -> dict:
    """Everything in the report folder again from out_dir/results.json (no training)."""
    with open(os.path.join(out_dir, "results.json")) as handle:
        results = json.load(handle)
    return write_report_folder(results, out_dir)


def _cpu_time(runs: list[dict]) -> str:
    """', X of CPU time' over the attempts that recorded it (what the runs would take on an idle machine)."""
    attempts = [a for r in runs for a in r.get("attempts", [])]
    timed = [a["cpu_seconds"] for a in attempts if a.get("cpu_seconds") is not None]
    if not timed:
        return ""
    return f", {_seconds(sum(timed))} of CPU time" + ("" if len(timed) == len(attempts) else
                                                      f" (over the {len(timed)} of {len(attempts)} attempts that recorded it)")


def compact_json(value: dict) -> str:
    """One line per top-level key (and per block), the way a person writes a grid file."""
    def item(key, inner):
        if key == "blocks" and isinstance(inner, list):
            return f' "{key}": [\n' + ",\n".join(f"  {json.dumps(b)}" for b in inner) + "\n ]"
        if key == "cells" and isinstance(inner, dict):
            return f' "{key}": {{\n' + ",\n".join(f"  {json.dumps(k)}: {json.dumps(v)}" for k, v in inner.items()) + "\n }"
        return f" {json.dumps(key)}: {json.dumps(inner)}"

    return "{\n" + ",\n".join(item(k, v) for k, v in value.items()) + "\n}"


def markdown(results: dict) -> str:
    grid, env = results["grid"], results["environment"]
    runs = results["runs"]
    trained = [r for r in runs if r.get("status") == "trained"]
    step_times = sorted(a["train_runtime"] / grid["steps"] for r in runs for a in r.get("attempts", [])
                        if a.get("train_runtime") and not a.get("resumed_from"))
    label = grid.get("label") or os.path.splitext(os.path.basename(results.get("grid_source", "grid")))[0]
    training_seconds = sum(r.get("seconds", 0) for r in runs)
    seq2seq = [c for c, f in grid["cells"].items() if {**grid["model"], **f}.get("is_encoder_decoder")]
    lines = [
        f"# Norm-placement study: {label}",
        "",
        f"Generated by `{results['command']}` ({results['processes']} process(es)); every number below is in "
        "`results.json`, and `python training/study.py --report_only --output_dir DIR` rebuilds this report and its "
        "figures from it. Seeded: re-running the command reproduces the runs.",
        "",
        "## How it ran",
        "",
        f"- Versions: torch {env['torch']}, transformers {env['transformers']}, accelerate {env['accelerate']}, "
        f"Python {env['python']}; hf_skipnorm commit {env.get('git_commit') or 'n/a'}.",
        f"- Hardware: {env['platform']}, {env['cpu_count']} CPU cores"
        + (f", GPU {env['cuda']}" if env.get("cuda") else ", no GPU") + f"; {grid['threads']} torch thread(s) per process.",
        f"- Time: {len(runs)} runs, {_seconds(training_seconds)} of training summed over runs"
        + (f" (median {statistics.median(step_times) * 1000:.0f} ms per optimizer step, evaluations and checkpoints "
           "included)" if step_times else "")
        + _cpu_time(runs)
        + f"; this invocation {_seconds(results['wall_seconds'])} wall clock"
        + (f" (it trained {fresh} of the {len(runs)} runs; the others were finished by an earlier invocation)"
           if (fresh := sum(r.get("finished_at", 0) >= results.get("started_at", 0) for r in runs)) < len(runs) else "")
        + (f"; {resumed} run(s) resumed from a checkpoint" if (resumed := sum(bool(r.get("resumed")) for r in runs)) else "")
        + ".",
        f"- Runs spread over {results['processes']} process(es), one run per process at a time (runs sorted by "
        "estimated cost, dealt round-robin); every run through `StudyTrainer` (training/reliable_trainer.py: atomic "
        "checkpoints, the non-finite guard).",
        "",
        "<details><summary>The grid file</summary>",
        "",
        "```json",
        compact_json(results["grid_file"]),
        "```",
        "",
        "</details>",
        "",
        "## Setup",
        "",
        f"- Model{' (the other settings of the encoder-decoder cells too)' if seq2seq else ''}: causal LM on UTF-8 "
        f"bytes (vocab 256), {grid['model'] or 'the study base'} "
        f"(base: d_head = width / heads, plain GELU MLP, LayerNorm eps 1e-5, RoPE, tied embeddings, unless a cell says "
        f"otherwise); init std {grid['init_std']}.",
        f"- Data: {results['data']}; unigram baseline {results['unigram_entropy']:.3f} nats/byte, uniform guess "
        f"{DIVERGED_LOSS:.3f} (a diverged run counts as the latter).",
        *([f"- Encoder-decoder cells ({', '.join(f'`{c}`' for c in seq2seq)}): SkipNormForConditionalGeneration with "
           "both stacks at the run's depth (N = M), ByT5's byte tokenizer (bytes + pad, EOS and one mask: vocabulary "
           "260), trained on BART text infilling (arXiv 1910.13461) of the same text by training/seq2seq.py's own "
           f"`denoising_dataset`: chunks of {grid['sequence_length'] - 1} bytes + EOS are the targets, their noised "
           "copies (30% of the bytes masked in Poisson(3) spans, each run of spans one mask) the sources. Their loss "
           "is nats per target byte of that task, which shows the model most of the answer: compare it only among "
           "these cells. Their diagnostics in the tables below are the decoder's (the encoder's are in results.json)."]
          if seq2seq else []),
        f"- Training: {grid['steps']} steps of {grid['batch_size']} x {grid['sequence_length']} tokens, AdamW "
        f"(betas {grid['optimizer']['beta1']}, {grid['optimizer']['beta2']}, eps {grid['optimizer']['eps']:g}), weight "
        f"decay {grid['optimizer']['weight_decay']} on matrices only, "
        + ("no gradient clipping" if not grid["max_grad_norm"] else f"gradient clipping at {grid['max_grad_norm']}")
        + f", {grid['precision']}" + (", torch.compile" if grid["torch_compile"] else "")
        + f"; warm-up = linear over {grid['warmup_fraction']:.0%} of the steps, then cosine to "
        f"{grid['min_lr_fraction']:.0%} of the peak (no warm-up: cosine from step 1).",
        f"- Evaluation every {grid['eval_every']} steps on {grid['eval_batches']} fixed held-out batches; final val "
        "loss = the evaluation after the last step. Diagnostics (hf_skipnorm.diagnostics.profile) on one fixed "
        "held-out batch, at init and after training.",
        "",
        "Cells: " + ", ".join(f"`{c}` = {json.dumps(f)}" for c, f in grid["cells"].items()),
        "",
        "Availability in this build: " + "; ".join(
            f"`{c}`: {'available' if v == 'available' else NOT_AVAILABLE + ' (' + v + ')'}"
            for c, v in results["availability"].items()),
        "",
    ]
    noise = study_findings.view(results)["noise"]
    if noise:
        lines += ["Seed-to-seed range of the final val loss: " + "; ".join(
            f"{k}: {min(v):.3f} to {max(v):.3f} (range {max(v) - min(v):.3f})" for k, v in noise.items())
            + ". Loss differences smaller than this are not evidence either way: the loss-based checks use the "
            "largest range as their margin (measured where the grid repeats seeds, so a lower bound elsewhere).", ""]
    else:
        lines += ["This grid repeats no seeds, so no seed-to-seed range was measured: the loss-based checks use a "
                  "margin of 0.05 nats, a guess (add seeds to measure it).", ""]
    lines += ["## Findings", "",
              "Each finding is checked wherever the grid holds its cells (recognized by their fields), at the grid's "
              "first width; its checks and thresholds are in `training/study_findings.py`.", ""]
    for f in results["findings"]:
        lines += [f"### {f['number']}. {f['title']}", "",
                  f"- **Paper:** {f['paper']}",
                  f"- **Claim:** {f['claim']}",
                  f"- **Measured:** {f['measured']}",
                  "- **Checks:** " + ("; ".join(f"{'yes' if ok else 'NO'}: {text}" for text, ok in f["checks"]) or "none"),
                  f"- **Verdict:** {f['verdict']}", ""]
        if f.get("figure") and f.get("where") is not None:
            lines += [f"![finding {f['number']}]({f['figure']})", ""]
    figures = results.get("figures", {})
    lines += ["## The sweep", ""]
    if "curves" in figures:
        lines += ["Loss curves per cell (lines: training loss, 10-step mean, band: the seed range; circles: evaluation "
                  "loss; dotted: unigram baseline):", "", f"![loss curves]({figures['curves']})", ""]
    if "lr" in figures:
        lines += ["Final validation loss against the peak learning rate (error bars: the seed range; x: diverged):", "",
                  f"![loss vs LR]({figures['lr']})", ""]
    if "depth" in figures:
        lines += ["Final validation loss against depth:", "", f"![loss vs depth]({figures['depth']})", ""]
    lines += [f"## Stability of every run", "",
              f"Loss spike: {SPIKE_RULE}. Grad norms are the total norm before the optimizer step (no clipping). "
              "Init/end: stream-norm growth (last block / first block), MLP gradient last block / first block, token "
              "cosine after the last block.", "",
              "| run | status | val loss | spikes (first) | max grad norm | max/median | diverged at (where) | "
              "stream growth init / end | grad last/first init / end | token cosine init / end | s |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    for run in runs:
        st = results["stability"].get(run["run_id"])
        if st is None:
            lines.append(f"| {run['run_id']} | {run['status']} ({run.get('reason', '')}) |  |  |  |  |  |  |  |  |  |")
            continue
        spikes = f"{len(st['spikes'])}" + (f" ({st['spikes'][0]})" if st["spikes"] else "")
        diverged = f"{st['diverged_at']} ({st['first_nonfinite']})" if st["diverged_at"] else ""
        pair = lambda key, digits=2: f"{_fmt(st.get('init/' + key), digits)} / {_fmt(st.get('end/' + key), digits)}"  # noqa: E731
        lines.append(f"| {run['run_id']} | {run['status']}{' (resumed)' if run.get('resumed') else ''} | "
                     f"{_fmt(run.get('val_loss'))} | {spikes} | {_fmt(st['max_grad_norm'], 2)} | "
                     f"{_fmt(st['max_over_median_grad_norm'], 1)} | {diverged} | {pair('stream_growth')} | "
                     f"{pair('grad_last_over_first')} | {pair('last_token_cosine', 3)} | {run.get('seconds', 0):.0f} |")
    lines.append("")
    overhead = results.get("callback_overhead")
    if overhead:
        lines += ["## Diagnostics callback overhead", "",
                  f"`DiagnosticsCallback(every_n_steps={overhead['every_n_steps']})` on a {overhead['steps']}-step "
                  f"Trainer run ({overhead.get('cell', 'pre')}, L={overhead.get('depth')}): its own timers measured "
                  f"{overhead['callback_fraction']:.1%} of the run; wall clock "
                  + ", ".join(f"{k} {v['seconds']:.1f}s" for k, v in overhead["runs"].items())
                  + f" (with/without - 1 = {overhead['wall_overhead']:+.1%}; the two 'with' runs show the noise of a "
                  "shared machine).", ""]
    lines += ["## Limitations", "",
              "Small models, one corpus, short runs, few seeds: qualitative checks of mechanisms, not reproductions of "
              "the papers' numbers. A verdict is computed from the thresholds printed beside each number; read the "
              f"numbers, not only the verdict. {len(trained)} of {len(runs)} runs trained to the end.", ""]
    return "\n".join(lines)

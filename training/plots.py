#!/usr/bin/env python
"""Training curves from a Trainer run's own record (`trainer_state.json`'s `log_history`).

    python training/plots.py runs/main            # -> runs/main/loss_curve.png
    python training/plots.py runs/main/checkpoint-250 --out /tmp/curve.png

train.py and finetune.py call `write_loss_curve` after training, so the PNG sits beside the model card that shows
it. The same log gives the card's per-evaluation "Training results" table (`training_results`).
"""

from __future__ import annotations

import argparse
import json
import math
import os

LOSS_CURVE_PNG = "loss_curve.png"
# Keys of an evaluation log entry that describe the evaluation run itself rather than the model.
EVAL_BOOKKEEPING = ("eval_runtime", "eval_samples_per_second", "eval_steps_per_second")


def read_log_history(folder: str) -> list[dict]:
    """`log_history` from `folder/trainer_state.json`; ValueError naming the file when it is absent or malformed."""
    path = os.path.join(folder, "trainer_state.json")
    if not os.path.isfile(path):
        raise ValueError(f"{path} does not exist: the Trainer writes it with trainer.save_state() and into every "
                         f"checkpoint-N folder")
    with open(path, encoding="utf-8") as handle:
        state = json.load(handle)
    history = state.get("log_history") if isinstance(state, dict) else None
    if not isinstance(history, list):
        raise ValueError(f"{path} has no log_history list")
    return history


def loss_points(log_history: list[dict]) -> tuple[list[tuple[int, float]], list[tuple[int, float]]]:
    """(train, eval) as (step, loss) pairs in log order; non-finite values are kept out of the plot."""
    train = [(int(e["step"]), float(e["loss"])) for e in log_history
             if "loss" in e and "step" in e and math.isfinite(float(e["loss"]))]
    evals = [(int(e["step"]), float(e["eval_loss"])) for e in log_history
             if "eval_loss" in e and "step" in e and math.isfinite(float(e["eval_loss"]))]
    evals = [point for index, point in enumerate(evals) if index == 0 or point != evals[index - 1]]
    return train, evals


def training_results(log_history: list[dict]) -> list[dict]:
    """One row per evaluation, as the Trainer's own model cards have: the last training loss logged at or before
    the evaluation's step, the epoch, the step, the validation loss and every other eval metric."""
    rows, last_train_loss = [], None
    for entry in log_history:
        if "loss" in entry:
            last_train_loss = entry["loss"]
        if "eval_loss" not in entry:
            continue
        row = {"Training Loss": last_train_loss if last_train_loss is not None else "No log",
               "Epoch": entry.get("epoch"), "Step": entry.get("step"), "Validation Loss": entry["eval_loss"]}
        for key, value in entry.items():
            if key.startswith("eval_") and key != "eval_loss" and key not in EVAL_BOOKKEEPING:
                row[" ".join(part.capitalize() for part in key.removeprefix("eval_").split("_"))] = value
        if rows and rows[-1] == row:
            continue  # trainer.evaluate() after training repeats the evaluation logged at the last step
        rows.append(row)
    return rows


def markdown_table(rows: list[dict]) -> str:
    """A markdown table of `rows` (the union of their keys, in first-seen order); floats to 4 significant digits."""
    if not rows:
        return ""
    columns = list(dict.fromkeys(key for row in rows for key in row))

    def cell(value) -> str:
        if isinstance(value, float):
            return f"{value:.4g}"
        return "" if value is None else str(value)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(row.get(column)) for column in columns) + " |" for row in rows]
    return "\n".join(lines)


def plot_loss_curve(log_history: list[dict], path: str, title: str = "") -> str | None:
    """Train and eval loss against the optimizer step, one PNG. Returns the path, or None when nothing was logged."""
    train, evals = loss_points(log_history)
    if not train and not evals:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, axis = plt.subplots(figsize=(7, 4.2))
    if train:
        axis.plot(*zip(*train), "-", marker="." if len(train) < 40 else None, color="C0", label="train loss")
    if evals:
        axis.plot(*zip(*evals), "o-", color="C1", label="eval loss")
    axis.set_xlabel("optimizer step", fontsize=11)
    axis.set_ylabel("cross-entropy loss (nats/token)", fontsize=11)
    axis.xaxis.set_major_locator(MaxNLocator(integer=True))
    axis.tick_params(labelsize=10)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=10)
    if title:
        axis.set_title(title, fontsize=11)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def write_loss_curve(folder: str, title: str | None = None, path: str | None = None) -> str | None:
    """`folder/loss_curve.png` (or `path`) from `folder/trainer_state.json`; None when the log has no loss."""
    title = title if title is not None else os.path.basename(os.path.normpath(folder))
    return plot_loss_curve(read_log_history(folder), path or os.path.join(folder, LOSS_CURVE_PNG), title)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", help="a run's output folder or a checkpoint-N folder (has trainer_state.json)")
    parser.add_argument("--out", help=f"PNG path (default: FOLDER/{LOSS_CURVE_PNG})")
    args = parser.parse_args(argv)
    written = write_loss_curve(args.folder, path=args.out)
    print(f"wrote {written}" if written else f"{args.folder}: no loss was logged; nothing drawn")


if __name__ == "__main__":
    main()

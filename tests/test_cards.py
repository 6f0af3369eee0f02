"""Cards and plots say what the folder holds: the tokenizer from its files, the per-evaluation table and the loss
curve from the log, and a diagnostics figure whose axes are labelled and numbered like the printed table."""

import json
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from test_ecosystem import tiny_tokenizer  # noqa: E402
from training.model_card import describe_tokenizer, tokenizer_sentence  # noqa: E402
from training.plots import loss_points, markdown_table, plot_loss_curve, training_results  # noqa: E402

LOG = [
    {"loss": 4.0, "step": 1, "epoch": 0.1},
    {"loss": 3.5, "step": 2, "epoch": 0.2},
    {"eval_loss": 3.6, "eval_perplexity": 36.6, "eval_runtime": 0.5, "step": 2, "epoch": 0.2},
    {"loss": 3.0, "step": 3, "epoch": 0.3},
    {"loss": float("nan"), "step": 4, "epoch": 0.4},
    {"eval_loss": 3.1, "eval_perplexity": 22.2, "eval_runtime": 0.4, "step": 4, "epoch": 0.4},
    {"train_runtime": 9.0, "train_loss": 3.4, "step": 4, "epoch": 0.4},
    {"eval_loss": 3.1, "eval_perplexity": 22.2, "eval_runtime": 0.3, "step": 4, "epoch": 0.4},  # trainer.evaluate()
]


def test_training_results_pair_each_evaluation_with_the_last_training_loss():
    rows = training_results(LOG)
    # Written out from the log above: evaluations at steps 2 and 4 (the repeat after training is the same
    # evaluation), each with the training loss last logged at or before it (NaN at step 4 is what was logged).
    assert [(r["Step"], r["Validation Loss"], r["Perplexity"]) for r in rows] == [(2, 3.6, 36.6), (4, 3.1, 22.2)]
    assert rows[0]["Training Loss"] == 3.5 and rows[1]["Training Loss"] != rows[1]["Training Loss"]  # NaN
    assert all("Runtime" not in r for r in rows)
    table = markdown_table(rows).splitlines()
    assert table[0] == "| Training Loss | Epoch | Step | Validation Loss | Perplexity |"
    assert table[2] == "| 3.5 | 0.2 | 2 | 3.6 | 36.6 |"


def test_loss_points_skip_non_finite_values_and_repeats():
    train, evals = loss_points(LOG)
    assert train == [(1, 4.0), (2, 3.5), (3, 3.0)]
    assert evals == [(2, 3.6), (4, 3.1)]


def test_loss_curve_png(tmp_path):
    path = plot_loss_curve(LOG, str(tmp_path / "loss.png"), "run")
    assert Path(path).stat().st_size > 5_000
    assert plot_loss_curve([{"train_runtime": 1.0, "step": 0}], str(tmp_path / "none.png")) is None
    assert not (tmp_path / "none.png").exists()


def test_tokenizer_described_from_its_files(tmp_path):
    from hf_skipnorm import SkipNormConfig

    config = SkipNormConfig(vocab_size=64, hidden_size=32, num_hidden_layers=1, num_attention_heads=4)
    assert describe_tokenizer(str(tmp_path)) is None
    assert tokenizer_sentence(None, config) == "No tokenizer files in this folder: inputs are token ids below vocab_size=64."
    tokenizer = tiny_tokenizer()
    tokenizer.save_pretrained(tmp_path)
    facts = describe_tokenizer(str(tmp_path))
    spec = json.loads((tmp_path / "tokenizer.json").read_text())
    assert facts["algorithm"] == spec["model"]["type"] == "WordLevel" and facts["byte_level"] is False
    assert facts["vocab_size"] == len(tokenizer)
    assert facts["class"] == json.loads((tmp_path / "tokenizer_config.json").read_text())["tokenizer_class"]
    sentence = tokenizer_sentence(facts, config)
    assert sentence.startswith(f"WordLevel tokenizer, {len(tokenizer)} tokens, class `{facts['class']}`")
    assert "pad `<pad>`" in sentence and "mask `<mask>`" in sentence
    assert f"The model's embedding has vocab_size=64 rows." in sentence  # the tokenizer has fewer tokens


def test_diagnostics_figure_axes(tmp_path, monkeypatch):
    """Labelled y axes, integer 0-based block ticks with `emb` as in `format_table`, legends where lines need
    telling apart, a readable font."""
    import matplotlib.figure

    from hf_skipnorm import SkipNormConfig, SkipNormForCausalLM
    from hf_skipnorm.diagnostics import format_table, plot_profiles, profile

    figures = []
    original = matplotlib.figure.Figure.savefig
    monkeypatch.setattr(matplotlib.figure.Figure, "savefig",
                        lambda self, *a, **k: (figures.append(self), original(self, *a, **k))[1])
    torch.manual_seed(0)
    model = SkipNormForCausalLM(SkipNormConfig(vocab_size=64, hidden_size=32, num_hidden_layers=4,
                                               num_attention_heads=4, intermediate_size=64))
    batch = {"input_ids": torch.randint(0, 64, (2, 12))}
    result = profile(model, batch)
    plot_profiles({"init": result, "again": result}, str(tmp_path / "profile.png"), "title")
    (figure,) = figures
    table_labels = [line.split()[0] for line in format_table(result).splitlines()[2:-1]]
    assert table_labels == ["emb", "0", "1", "2", "3"]
    figure.canvas.draw()
    for axis in figure.axes:
        assert axis.get_ylabel() and axis.get_xlabel()
        labels = [t.get_text() for t in axis.get_xticklabels() if -1.4 <= t.get_position()[0] <= 3.4]
        assert labels == table_labels, labels
        assert all(t.get_fontsize() >= 10 for t in axis.get_xticklabels())
    legends = {axis.get_title(): [t.get_text() for t in axis.get_legend().get_texts()]
               for axis in figure.axes if axis.get_legend()}
    assert legends["residual-stream norm"] == ["init", "again"]
    assert legends["branch output relative to the stream"] == ["init: attn", "init: mlp", "again: attn", "again: mlp"]
    width, height = figure.get_size_inches() * figure.dpi
    assert width >= 1000 and height >= 700

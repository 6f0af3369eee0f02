"""hf_skipnorm.diagnostics against independent float64 computations, the Trainer callback, and the command line."""

import json
import math
import os

import pytest
import torch
from torch import nn

from hf_skipnorm import SkipNormConfig, SkipNormForCausalLM, SkipNormModel
from hf_skipnorm import configuration_skipnorm as vocabulary
from hf_skipnorm.diagnostics import (
    DiagnosticsCallback,
    ForwardProbe,
    attach_diagnostics,
    decoder_layers,
    flatten,
    format_table,
    gradient_norms,
    main,
    mean_token_cosine,
    profile,
    snapshot_weights,
    token_norm,
    update_ratios,
)

TINY = dict(vocab_size=61, hidden_size=16, num_hidden_layers=3, num_attention_heads=2, max_position_embeddings=64,
            initializer_range=0.25)


def tiny_model(**fields) -> SkipNormForCausalLM:
    return SkipNormForCausalLM(SkipNormConfig(**{**TINY, **fields})).double()


def batch(batch_size=2, seq_len=9, vocab=61, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return {"input_ids": torch.randint(0, vocab, (batch_size, seq_len), generator=generator)}


# ------------------------------------------------------------------------------------------------ formulas
def test_token_norm_and_cosine_match_explicit_loops():
    hidden = torch.randn(2, 5, 7, dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    norms, pairs = [], []
    for b in range(2):
        real = [t for t in range(5) if mask[b, t]]
        norms += [math.sqrt(sum(v * v for v in hidden[b, t].tolist())) for t in real]
        for i in real:
            for j in real:
                if i != j:
                    u, v = hidden[b, i].tolist(), hidden[b, j].tolist()
                    dot = sum(a * c for a, c in zip(u, v))
                    pairs.append(dot / math.sqrt(sum(a * a for a in u)) / math.sqrt(sum(c * c for c in v)))
    assert token_norm(hidden, mask) == pytest.approx(sum(norms) / len(norms), rel=1e-12)
    assert mean_token_cosine(hidden, mask) == pytest.approx(sum(pairs) / len(pairs), rel=1e-12)
    same = hidden[:, :1].expand(2, 5, 7)
    assert mean_token_cosine(same) == pytest.approx(1.0, abs=1e-12)  # full rank collapse


def test_stream_norm_and_similarity_match_output_hidden_states():
    # final_norm=False: then output_hidden_states holds the raw output of every block (the last one too).
    model = tiny_model(norm_position="pre", final_norm=False)
    inputs = batch()
    with torch.no_grad():
        states = model(**inputs, output_hidden_states=True).hidden_states  # (embeddings, block 0, ..., block L-1)
    result = profile(model, inputs)
    assert result["embedding"]["stream_norm"] == pytest.approx(states[0].norm(dim=-1).mean().item(), rel=1e-10)
    for row, state in zip(result["layers"], states[1:]):
        assert row["stream_norm"] == pytest.approx(state.norm(dim=-1).mean().item(), rel=1e-10)
        unit = state / state.norm(dim=-1, keepdim=True)
        cosine = unit @ unit.transpose(1, 2)
        t = state.shape[1]
        expected = ((cosine.sum((1, 2)) - t) / (t * (t - 1))).mean().item()
        assert row["token_cosine"] == pytest.approx(expected, rel=1e-10)


def test_profile_ignores_padding_tokens():
    model = tiny_model(norm_position="pre", final_norm=False)
    inputs = batch()
    inputs["attention_mask"] = torch.ones_like(inputs["input_ids"])
    inputs["attention_mask"][1, 5:] = 0  # right padding in the second row
    with torch.no_grad():
        states = model(**inputs, output_hidden_states=True).hidden_states
    result = profile(model, inputs)
    real = inputs["attention_mask"].bool()
    for row, state in zip(result["layers"], states[1:]):
        assert row["stream_norm"] == pytest.approx(state.norm(dim=-1)[real].mean().item(), rel=1e-10)


@pytest.mark.parametrize("residual, alpha, multiplier", [("add", 1.0, 1.0), ("scaled", 0.5, 2.0), ("none", 1.0, 1.0)],
                         ids=["add", "scaled", "none"])
def test_branch_ratio_is_what_the_branch_adds_over_the_stream(residual, alpha, multiplier):
    model = tiny_model(norm_position="pre", residual=residual, residual_alpha=alpha, branch_multiplier=multiplier)
    inputs = batch()
    captured = []  # (block input, stream between attention and MLP, block output), captured independently
    handles = []
    for block in model.model.layers:
        record = {}
        captured.append(record)
        handles.append(block.register_forward_pre_hook(lambda m, a, k, r=record: r.__setitem__("x", a[0]),
                                                       with_kwargs=True))
        handles.append(block.mlp_pre_norm.register_forward_pre_hook(lambda m, a, r=record: r.__setitem__("mid", a[0])))
        handles.append(block.register_forward_hook(lambda m, a, o, r=record: r.__setitem__("out", o)))
    with torch.no_grad():
        model(**inputs)
    for handle in handles:
        handle.remove()
    result = profile(model, inputs)
    skip = {"add": 1.0, "scaled": alpha, "none": 0.0}[residual]
    for row, record in zip(result["layers"], captured):
        x, mid, out = record["x"], record["mid"], record["out"]
        attn_added = mid - skip * x  # R(x, y) - R(x, 0)
        mlp_added = out - skip * mid
        assert row["branch_ratio/attn"] == pytest.approx(
            attn_added.norm(dim=-1).mean().item() / x.norm(dim=-1).mean().item(), rel=1e-9)
        assert row["branch_ratio/mlp"] == pytest.approx(
            mlp_added.norm(dim=-1).mean().item() / mid.norm(dim=-1).mean().item(), rel=1e-9)


def test_gradient_norms_match_the_autograd_gradients():
    model = tiny_model(norm_position="post", norm_type="layernorm")
    inputs = batch()
    result = profile(model, inputs)
    assert all(p.grad is None for p in model.parameters())  # profile leaves no gradients behind
    model(**inputs, labels=inputs["input_ids"]).loss.backward()
    for row, block in zip(result["layers"], model.model.layers):
        for group, prefix in (("attn", "self_attn."), ("mlp", "mlp.")):
            expected = math.sqrt(sum(float((p.grad ** 2).sum()) for n, p in block.named_parameters()
                                     if n.startswith(prefix)))
            assert row[f"grad_norm/{group}"] == pytest.approx(expected, rel=1e-10)
        others = [p for n, p in block.named_parameters() if not n.startswith(("self_attn.", "mlp."))]
        assert row["grad_norm/other"] == pytest.approx(math.sqrt(sum(float((p.grad ** 2).sum()) for p in others)),
                                                       rel=1e-10)


def test_update_ratio_of_an_sgd_step_is_lr_times_grad_over_weight():
    model = tiny_model()
    inputs = batch()
    lr = 0.1
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    model(**inputs, labels=inputs["input_ids"]).loss.backward()
    grads = gradient_norms(model)
    weights = [math.sqrt(sum(float((p.detach() ** 2).sum()) for n, p in block.named_parameters()
                             if n.startswith("mlp.")))
               for block in model.model.layers]
    before = snapshot_weights(model)
    optimizer.step()
    ratios = update_ratios(model, before)
    for ratio, grad, weight in zip(ratios, grads, weights):
        assert ratio["mlp"] == pytest.approx(lr * grad["mlp"] / weight, rel=1e-10)


# ------------------------------------------------------------------------------------------------ any model
class SumStreams(nn.Module):
    def reduce(self, stream):  # (B, T, n, C) -> (B, T, C)
        return stream.sum(dim=-2)


class TwoStreamBlock(nn.Module):
    """A stand-in multi-stream block without residual modules: streams (B, T, 2, C), branches read their sum."""

    def __init__(self, dim):
        super().__init__()
        self.self_attn = nn.Linear(dim, dim)
        self.mlp = nn.Linear(dim, dim)

    def forward(self, stream):
        attn = self.self_attn(stream.sum(-2))
        stream = stream + torch.stack([attn, 0 * attn], dim=-2)
        return stream + torch.stack([0 * attn, self.mlp(stream.sum(-2))], dim=-2)


class TwoStreamModel(nn.Module):
    def __init__(self, vocab=13, dim=8, layers=2):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.layers = nn.ModuleList(TwoStreamBlock(dim) for _ in range(layers))
        self.residual_stream = SumStreams()

    def forward(self, input_ids):
        h = self.embed(input_ids)
        stream = torch.stack([h, h], dim=-2)
        for block in self.layers:
            stream = block(stream)
        return self.residual_stream.reduce(stream)


def test_multi_stream_blocks_are_read_through_the_models_reduce():
    model = TwoStreamModel().double()
    inputs = batch(vocab=13)
    result = profile(model, inputs)  # headless: the loss is the mean square of the output
    with torch.no_grad():
        h = model.embed(inputs["input_ids"])
        stream = torch.stack([h, h], dim=-2)
        for row, block in zip(result["layers"], model.layers):
            x = stream.sum(-2)
            attn = block.self_attn(x)
            stream = block(stream)
            reduced = stream.sum(-2)
            assert row["stream_norm"] == pytest.approx(reduced.norm(dim=-1).mean().item(), rel=1e-10)
            assert row["branch_ratio/attn"] == pytest.approx(
                attn.norm(dim=-1).mean().item() / x.norm(dim=-1).mean().item(), rel=1e-10)
            assert row["grad_norm/attn"] > 0 and row["grad_norm/mlp"] > 0


def test_non_skipnorm_model_is_refused_naming_what_is_missing():
    with pytest.raises(ValueError, match="model.layers"):
        decoder_layers(nn.Linear(2, 2))
    with pytest.raises(ValueError, match="every_n_steps"):
        DiagnosticsCallback(every_n_steps=0)


def test_headless_base_model_and_probe_context():
    model = SkipNormModel(SkipNormConfig(**TINY))
    result = profile(model, batch())
    assert len(result["layers"]) == TINY["num_hidden_layers"]
    assert all(math.isfinite(row["grad_norm/mlp"]) for row in result["layers"])
    with ForwardProbe(model) as probe:
        assert probe.handles
        model(**batch())
    assert not probe.handles  # removed on exit
    assert len(probe.rows()[1]) == TINY["num_hidden_layers"] and "stream_norm" in probe.rows()[1][-1]
    names = flatten(result["layers"])
    assert "diag/grad_norm/mlp/layer_02" in names
    assert "emb" in format_table(result)


# Every placement with the plain skip and every residual under Pre-LN (a cross, not the product: the catalogue's own
# tests walk the product; here each code path of the probe, single- and multi-stream, is hit once).
GRID = [(p, "add") for p in vocabulary.NORM_POSITIONS] + [("pre", r) for r in vocabulary.RESIDUALS if r != "add"]


@pytest.mark.parametrize("norm_position, residual", GRID, ids=[f"{p}-{r}" for p, r in GRID])
def test_profile_runs_on_every_cell_of_the_grid(norm_position, residual):
    fields = dict(norm_position=norm_position, residual=residual, num_hidden_layers=2)
    if norm_position == "none":
        fields["norm_type"] = "none"
    try:
        model = SkipNormForCausalLM(SkipNormConfig(**{**TINY, **fields}))
    except ValueError as error:  # a combination the config refuses is not a diagnostics failure
        pytest.skip(f"refused by the config: {error}")
    result = profile(model, batch(seq_len=6))
    assert math.isfinite(result["loss"])
    for row in result["layers"]:
        for key in ("stream_norm", "token_cosine", "branch_ratio/attn", "branch_ratio/mlp", "grad_norm/attn",
                    "grad_norm/mlp"):
            assert math.isfinite(row[key]), (key, row)


# ------------------------------------------------------------------------------------------------ Trainer callback
def test_callback_logs_to_jsonl_log_history_and_tensorboard(tmp_path):
    from datasets import Dataset
    from transformers import Trainer, TrainingArguments

    pytest.importorskip("tensorboard")
    torch.manual_seed(0)
    model = SkipNormForCausalLM(SkipNormConfig(**TINY))
    rows = torch.randint(0, 61, (12, 10)).tolist()
    args = TrainingArguments(output_dir=str(tmp_path / "run"), per_device_train_batch_size=2, max_steps=6,
                             learning_rate=1e-3, report_to=["tensorboard"], logging_steps=100, save_strategy="no", use_cpu=True, disable_tqdm=True)
    trainer = Trainer(model=model, args=args, train_dataset=Dataset.from_dict({"input_ids": rows, "labels": rows}))
    jsonl = tmp_path / "diag" / "diagnostics.jsonl"
    callback = attach_diagnostics(trainer, every_n_steps=3, jsonl_path=str(jsonl))
    trainer.train()

    records = [json.loads(line) for line in jsonl.read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 3, 6]
    for record in records:
        assert len(record["layers"]) == TINY["num_hidden_layers"]
        for row in record["layers"]:
            assert row["grad_norm/mlp"] > 0 and 0 < row["update_ratio/mlp"] < 1 and row["stream_norm"] > 0
    logged = [entry for entry in trainer.state.log_history if "diag/grad_norm/mlp/layer_00" in entry]
    assert [entry["step"] for entry in logged] == [1, 3, 6]
    assert 0 < logged[-1]["diag/overhead_fraction"] < 1 and callback.overhead_seconds > 0
    events = [root for root, _, files in os.walk(tmp_path / "run") for f in files if f.startswith("events.out.tfevents")]
    assert events, "TensorBoard received nothing"  # the Trainer's TensorBoard callback writes under output_dir/runs
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(events[0])
    accumulator.Reload()
    assert "train/diag/grad_norm/mlp/layer_00" in accumulator.Tags()["scalars"]
    assert not callback.probe.handles  # hooks removed at the end of training


def test_callback_without_a_trainer_writes_log_history(tmp_path):
    from datasets import Dataset
    from transformers import Trainer, TrainingArguments

    model = SkipNormForCausalLM(SkipNormConfig(**TINY))
    rows = torch.randint(0, 61, (4, 10)).tolist()
    args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=2, max_steps=2, report_to=[],
                             save_strategy="no", use_cpu=True, disable_tqdm=True, logging_steps=100,
                             gradient_accumulation_steps=2)
    callback = DiagnosticsCallback(every_n_steps=1)
    trainer = Trainer(model=model, args=args, train_dataset=Dataset.from_dict({"input_ids": rows, "labels": rows}),
                      callbacks=[callback])
    trainer.train()
    logged = [entry for entry in trainer.state.log_history if "diag/stream_norm/layer_00" in entry]
    assert [entry["step"] for entry in logged] == [1, 2]


# ------------------------------------------------------------------------------------------------ command line
def test_command_line_on_a_config_and_on_a_checkpoint(tmp_path, capsys):
    config_path = tmp_path / "config.json"
    config_path.write_text(json.dumps({**TINY, "vocab_size": 256, "norm_position": "post"}))
    main([str(config_path), "--out", str(tmp_path / "init"), "--batch-size", "2", "--seq-len", "16"])
    printed = capsys.readouterr().out
    assert "init profile: norm_position=post" in printed and "grad mlp" in printed
    assert (tmp_path / "init" / "profile.png").stat().st_size > 1000
    init = json.loads((tmp_path / "init" / "profile.json").read_text())
    assert init["kind"] == "init" and len(init["layers"]) == TINY["num_hidden_layers"]

    SkipNormForCausalLM(SkipNormConfig(**{**TINY, "vocab_size": 256})).save_pretrained(tmp_path / "ckpt")
    main([str(tmp_path / "ckpt"), "--out", str(tmp_path / "trained"), "--batch-size", "2", "--seq-len", "16"])
    assert json.loads((tmp_path / "trained" / "profile.json").read_text())["kind"] == "trained"
    with pytest.raises(ValueError, match="field=value"):
        main([str(config_path), "--set", "norm_position", "--out", str(tmp_path / "x")])

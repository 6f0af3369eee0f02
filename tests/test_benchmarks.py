"""Smoke tests of the benchmark harness (benchmarks/bench.py, fsdp_smoke.py, gpu_check.sh) at the tiny size.

They check that every measured quantity is produced and sane (not its speed), that the FLOPs formula matches an
independent count, that the memory method sees the weights and the AdamW state, that the placement table follows
the config's vocabulary, and that every command line in gpu_check.sh parses (it cannot run here: no GPU).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH_DIR = os.path.join(ROOT, "benchmarks")
sys.path.insert(0, BENCH_DIR)

import bench  # noqa: E402


@pytest.fixture(scope="module")
def tiny_results(tmp_path_factory):
    """One dry run of the LLaMA comparison (train, prefill, decode) without the memory subprocesses."""
    out = tmp_path_factory.mktemp("bench") / "tiny.json"
    bench.main(["--dry-run", "--suites", "llama", "--no-memory", "--threads", "1", "--json", str(out)])
    with open(out) as handle:
        return json.load(handle)


def test_pair_measures_every_metric_for_both_models(tiny_results):
    (record,) = tiny_results["suites"]["llama"]
    assert record["reference"] == "llama"
    assert set(record["candidates"]) == {"llama", "ours_llama"}
    for name, info in record["candidates"].items():
        for metric in ("train", "prefill", "decode"):
            rate = info[metric]["tokens_per_s"]["median"]
            assert rate > 0 and rate == rate, (name, metric)
        assert 0 < info["train"]["mfu"] < 2.0  # against a matmul peak measured in the same process
    reference = record["candidates"]["llama"]
    for metric in ("train", "prefill", "decode"):  # the reference's ratio to itself is exactly one, every round
        assert reference[metric]["ratio_vs_reference"]["median"] == 1.0
    ratio = record["candidates"]["ours_llama"]["train"]["ratio_vs_reference"]
    assert ratio["min"] <= ratio["median"] <= ratio["max"]


def test_our_cells_compute_what_the_references_compute(tiny_results):
    """The throughput comparison is only fair if both models compute the same function."""
    for label in ("llama", "gpt2"):
        parity = tiny_results["parity"][label]
        assert parity["missing_keys"] == [] and parity["unexpected_keys"] == []
        assert parity["max_abs_logit_diff"] < 1e-4, label


def test_flops_per_token_matches_an_independent_count():
    shape = bench.SIZES["tiny"]
    env = bench.Env(bench.torch.device("cpu"), bench.torch.float32, "auto")
    model = bench.build_llama(shape, env)
    d, f, L, V, T = shape.hidden_size, shape.gated_intermediate_size, shape.num_hidden_layers, shape.vocab_size, shape.seq_len
    n = L * (4 * d * d + 3 * d * f) + V * d  # q, k, v, o; gate, up, down; the untied lm_head (embedding excluded)
    assert bench.matmul_parameter_count(model) == n
    expected = 6.0 * n + 12.0 * L * d * T  # PaLM appendix B: 6N + 12 L H Q T with H Q = d
    assert bench.flops_per_token(n, shape, training=True) == pytest.approx(expected, rel=1e-12)
    assert bench.flops_per_token(n, shape, training=False) == pytest.approx(expected / 3, rel=1e-12)


def test_tied_head_is_counted_once():
    shape = bench.SIZES["tiny"]
    env = bench.Env(bench.torch.device("cpu"), bench.torch.float32, "auto")
    model = bench.build_gpt2(shape, env)
    d, f, L, V = shape.hidden_size, shape.plain_intermediate_size, shape.num_hidden_layers, shape.vocab_size
    assert bench.matmul_parameter_count(model) == L * (4 * d * d + 2 * d * f) + V * d


def test_cpu_peak_memory_sees_weights_and_adamw_state():
    """Fresh-process RSS method: the step peak holds at least weights + AdamW's two moments + gradients."""
    shape = bench.SIZES["tiny"]
    env = bench.Env(bench.torch.device("cpu"), bench.torch.float32, "auto")
    args = bench.parse_args(["--threads", "1"])
    memory = bench.measure_memory("llama", shape, env, args)
    parameters = sum(p.numel() for p in bench.build_llama(shape, env).parameters())
    assert memory["peak_bytes"] >= 4 * 4 * parameters
    assert 0 < memory["step_extra_bytes"] <= memory["peak_bytes"] < 2**30


def test_placement_table_follows_the_config_vocabulary(monkeypatch):
    config_module = bench.skipnorm_configuration
    (comparison,) = bench.suite_comparisons("placements")
    expected = {f"ours_pos_{p}" for p in config_module.NORM_POSITIONS if p != "pre"}
    expected |= {f"ours_res_{r}" for r in config_module.RESIDUALS if r != "add"}
    assert expected <= set(comparison.others)
    # A value added later by another engineer shows up without touching the harness.
    monkeypatch.setattr(config_module, "RESIDUALS", tuple(config_module.RESIDUALS) + ("brand_new",))
    (comparison,) = bench.suite_comparisons("placements")
    assert "ours_res_brand_new" in comparison.others


def test_markdown_and_summary_tables(tiny_results, tmp_path):
    markdown = bench.render_markdown(tiny_results)
    assert "| ours_llama |" in markdown and "Command: `python benchmarks/bench.py" in markdown
    results = tmp_path / "r.json"
    results.write_text(json.dumps(tiny_results))
    fsdp = tmp_path / "f.json"
    fsdp.write_text(json.dumps({
        "distributed_type": "FSDP", "fsdp_version": 2, "mixed_precision": "bf16", "num_processes": 1, "sharded": True,
        "size": "gpu125m", "tokens_per_s": 1000.0, "loss_first": 10.4, "loss_last": 9.1, "loss_fell": True,
        "peak_memory_bytes": 2**31, "state_dict_has_public_keys": True,
    }))
    table = bench.summary_table([str(results), str(fsdp), str(tmp_path / "absent.json")]).splitlines()
    assert table[0].startswith("| check |")
    assert any("| llama | tiny | ours_llama |" in row for row in table)
    assert any("FSDP smoke" in row and "sharded=True" in row for row in table)
    assert any("absent.json" in row and "missing" in row for row in table)


def _gpu_check_commands():
    """The bench.py and accelerate command lines of gpu_check.sh, with its shell variables expanded."""
    text = open(os.path.join(BENCH_DIR, "gpu_check.sh")).read().replace("\\\n", " ")
    bench_prefix = re.search(r'^BENCH="\$PY benchmarks/bench.py (.*)"$', text, re.M).group(1)
    commands = []
    for line in text.splitlines():
        line = line.split(">", 1)[0].replace("$BENCH", "$PY benchmarks/bench.py " + bench_prefix)
        line = line.replace("$RESULTS", "/tmp/r")
        if "timeout" in line or "--summarize" in line:
            words = shlex.split(line.replace("$PY", "python"))
            commands.append(words[words.index("python"):])
    return commands


def test_gpu_check_script_parses():
    result = subprocess.run(["bash", "-n", os.path.join(BENCH_DIR, "gpu_check.sh")], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    commands = _gpu_check_commands()
    bench_calls = [c for c in commands if c[1] == "benchmarks/bench.py"]
    launches = [c for c in commands if c[1:3] == ["-m", "accelerate.commands.launch"]]
    overheads = [c for c in commands if c[1] == "benchmarks/residual_overhead.py"]
    assert len(bench_calls) == 4 and len(launches) == 1 and len(overheads) == 1
    import residual_overhead

    variants = overheads[0][overheads[0].index("--variants") + 1].split(",")
    assert set(variants) <= set(residual_overhead.VARIANTS), set(variants) - set(residual_overhead.VARIANTS)
    # the time boxes of the default run (opt-in extras excluded) add up to less than the 8 minutes it is sized for
    script = open(os.path.join(BENCH_DIR, "gpu_check.sh")).read()
    script = re.sub(r'\nif \[ "\$\{GPU_CHECK_[A-Z]+:-0\}" = 1 \]; then\n.*?\nfi\n', "\n", script, flags=re.S)
    boxes = re.findall(r"timeout -k 5 (\d+)", script)
    assert sum(map(int, boxes)) + 5 * len(boxes) <= 480, boxes
    for command in bench_calls:  # argparse exits on an unknown flag or a bad choice
        args = bench.parse_args(command[2:])
        for size in (args.sizes + "," + (args.compile_sizes or "")).split(","):
            assert not size or size in bench.SIZES
        for suite in args.suites.split(","):
            assert suite in bench.SUITES
    from accelerate.commands.launch import launch_command_parser

    launch_args = launch_command_parser().parse_args(launches[0][3:])
    assert launch_args.use_fsdp and launch_args.num_processes == 1
    assert launch_args.training_script == "benchmarks/fsdp_smoke.py"
    assert launch_args.fsdp_transformer_layer_cls_to_wrap == "SkipNormBlock"


@pytest.mark.slow  # a fresh process importing torch + transformers + accelerate: ~10-20 s on the shared machine
def test_fsdp_smoke_script_runs_unsharded_on_cpu(tmp_path):
    out = tmp_path / "fsdp.json"
    result = subprocess.run(
        [sys.executable, os.path.join(BENCH_DIR, "fsdp_smoke.py"), "--size", "tiny", "--steps", "2", "--json", str(out)],
        capture_output=True, text=True, timeout=300, env=dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1"),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    data = json.loads(out.read_text())
    assert data["sharded"] is False  # no --use_fsdp here: the script must say so, not pretend
    assert data["loss_fell"] and data["state_dict_has_public_keys"]
    assert data["tokens_per_s"] > 0


def test_our_llama_cell_saves_no_more_activations_than_llama():
    """Autograd's saved tensors are exact (no allocator noise): the same cell must keep the same activations."""
    shape = bench.SIZES["tiny"]
    env = bench.Env(bench.torch.device("cpu"), bench.torch.float32, "auto")
    llama = bench.saved_activation_bytes(bench.Candidate("llama", shape, env))
    ours = bench.saved_activation_bytes(bench.Candidate("ours_llama", shape, env))
    # The logits alone (B, T, V) in float32 are saved for the loss's backward: a floor both must exceed.
    assert llama > shape.batch_size * shape.seq_len * shape.vocab_size * 4
    assert ours <= llama * 1.01

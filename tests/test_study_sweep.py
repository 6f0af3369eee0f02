"""training/study.py as a sweep tool: grid files and their refusals, runs split over two processes into one report,
a sweep killed with SIGKILL and restarted (finished runs skipped, the interrupted one resumed to the same numbers),
a grown grid, a diverging cell, and the report rebuilt from results.json alone."""

import json
import os
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from training import study, study_grid, study_report  # noqa: E402

STUDY = os.path.join(ROOT, "training", "study.py")
GRID = {"cells": {"pre": {"norm_position": "pre"}, "post": {"norm_position": "post"}},
        "depths": [1], "widths": [32], "learning_rates": [3e-3], "warmup": [True], "seeds": [0],
        "steps": 8, "batch_size": 2, "sequence_length": 16, "eval_every": 4, "save_every": 4, "eval_batches": 1}
RUNS = ("pre-L1-d32-lr0.003-warmup-s0", "post-L1-d32-lr0.003-warmup-s0")


def _env(**extra):
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", OMP_NUM_THREADS="1",
               TOKENIZERS_PARALLELISM="false")
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    env.update(extra)
    return env


def _grid_file(folder, **changes):
    path = os.path.join(folder, f"grid-{len(os.listdir(folder))}.json")
    with open(path, "w") as handle:
        json.dump({**GRID, **changes}, handle)
    return path


def _result(out, run_id):
    with open(os.path.join(out, "runs", run_id, "result.json")) as handle:
        return json.load(handle)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The two-run sweep trained once, in one process, without interruption."""
    folder = tmp_path_factory.mktemp("reference")
    out = str(folder / "out")
    study.run_study(_grid_file(str(folder)), out, log=lambda *a: None)
    return out


def _same_numbers(a, b):
    for key in ("train_loss", "grad_norm", "eval_curve", "val_loss", "init_profile", "trained_profile", "update_ratio"):
        assert a[key] == b[key], key


# ----------------------------------------------------------------------------------------------- grid files
@pytest.mark.parametrize("change, message", [
    ({"learning_rate": [1e-3]}, "unknown grid key(s) ['learning_rate']"),
    ({"learning_rates": [-1.0]}, "grid key 'learning_rates'"),
    ({"precision": "fp8"}, "one of fp32, bf16, fp16"),
    ({"blocks": [{"cells": ["sandwich"]}]}, "cell(s) ['sandwich'] are not defined"),
    ({"data": {"dataset": "x"}}, "grid key 'data'"),
])
def test_bad_grids_are_refused_naming_the_key(change, message):
    with pytest.raises(ValueError) as error:
        study_grid.normalize_grid({**GRID, **change})
    assert message in str(error.value)


def test_encoder_decoder_cells_are_refused_where_only_causal_lms_are_measured():
    s2s = {"is_encoder_decoder": True, "norm_position": "pre"}
    with pytest.raises(ValueError, match=r"'init_probes.cells': \['s2s'\] are encoder-decoder cells"):
        study_grid.normalize_grid({**GRID, "cells": {**GRID["cells"], "s2s": s2s}, "init_probes": {"cells": ["s2s"]}})
    with pytest.raises(ValueError, match="'measure_callback_overhead': true needs a causal cell"):
        study_grid.normalize_grid({**GRID, "cells": {"s2s": s2s}, "measure_callback_overhead": True})
    grid = study_grid.normalize_grid({**GRID, "cells": {**GRID["cells"], "s2s": s2s}})
    assert study_grid.is_seq2seq_cell(grid, "s2s") and not study_grid.is_seq2seq_cell(grid, "pre")
    # an encoder-decoder run costs more than a causal one of the same depth (its decoder blocks cross-attend)
    costs = {s.cell: study_grid.estimated_cost(grid, s) for s in study_grid.expand(grid)}
    tokens = 8 * 2 * 16  # steps x batch x sequence_length; depth 1, width 32, vocabulary 256
    assert costs["s2s"] == 6.0 * (28 * 32**2 + 256 * 32) * tokens and costs["pre"] == 6.0 * (12 * 32**2 + 256 * 32) * tokens


def test_a_cell_this_build_cannot_train_is_refused_unless_the_grid_reports_it():
    grid = study_grid.normalize_grid({**GRID, "cells": {"pre": {"norm_position": "pre"},
                                                         "typo": {"norm_postion": "post"}}})
    with pytest.raises(ValueError, match="typo: SkipNormConfig has no field 'norm_postion'"):
        study.check_cells(grid)
    grid["skip_unavailable_cells"] = True
    assert study.check_cells(grid)["typo"] == "SkipNormConfig has no field 'norm_postion'"


def test_blocks_expand_to_each_run_once_and_runs_are_dealt_to_processes():
    grid = study_grid.normalize_grid({**GRID, "blocks": [
        {"cells": ["pre", "post"], "depths": [1, 4], "seeds": [0, 1]}, {"cells": ["pre"], "depths": [1], "seeds": [0]}]})
    runs = study_grid.expand(grid)
    assert len(runs) == 8 == len(set(runs))
    shares = [study_grid.assign(runs, grid, rank, 3) for rank in range(3)]
    assert sorted(r.run_id for share in shares for r in share) == sorted(r.run_id for r in runs)
    assert all(r.depth == 4 for r in shares[0][:1]) and [len(s) for s in shares] == [3, 3, 2]  # largest runs first


def test_output_folders_never_default_to_the_committed_report(tmp_path):
    default = study.default_output_dir("default", "training/study_grids/default.json")
    assert os.path.dirname(default) == os.path.join(ROOT, "runs") and "study_output" not in default
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="--overwrite_output_dir"):
        study.prepare_output_dir(str(busy), overwrite=False, rank=0)
    study.prepare_output_dir(str(busy), overwrite=True, rank=0)
    assert list(busy.iterdir()) == []


# ----------------------------------------------------------------------------------------------- sweeps
def test_two_processes_split_the_runs_and_write_one_report(tmp_path, reference):
    out = tmp_path / "two"
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29653",
               STUDY, "--grid", _grid_file(str(tmp_path)), "--output_dir", str(out)]
    result = subprocess.run(command, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    assert "process 0/2: 1 of 2 runs" in result.stdout and "process 1/2: 1 of 2 runs" in result.stdout
    saved = json.loads((out / "results.json").read_text())
    assert saved["processes"] == 2 and sorted(r["process"] for r in saved["runs"]) == [0, 1]
    for run_id in RUNS:  # a run never depends on how many processes the sweep had
        _same_numbers(_result(str(out), run_id), _result(reference, run_id))
    assert sorted(p.name for p in out.iterdir() if p.suffix == ".md") == ["report.md"]
    assert "torchrun --nproc_per_node 2" in (out / "report.md").read_text()


def test_a_killed_sweep_restarted_skips_finished_runs_and_resumes_to_the_same_result(tmp_path, reference, capsys):
    out = tmp_path / "killed"
    grid = _grid_file(str(tmp_path))
    command = [sys.executable, STUDY, "--grid", grid, "--output_dir", str(out)]
    killed = subprocess.run(command, cwd=ROOT, env=_env(**{study.KILL_HOOK: f"{RUNS[1]}:4"}), capture_output=True,
                            text=True, timeout=300)
    assert killed.returncode == -9, killed.stderr[-3000:]  # SIGKILL right after checkpoint-4 of the second run
    finished = os.path.join(out, "runs", RUNS[0], "result.json")
    assert os.path.isfile(finished) and not os.path.isfile(os.path.join(out, "runs", RUNS[1], "result.json"))
    assert os.listdir(os.path.join(out, "runs", RUNS[1], "trainer")) == ["checkpoint-4"]
    stamp = os.stat(finished).st_mtime_ns
    study.main(["--grid", grid, "--output_dir", str(out)])  # the same command again
    assert "1 already finished, 1 to train" in capsys.readouterr().out
    assert os.stat(finished).st_mtime_ns == stamp  # skipped, not retrained
    resumed = _result(str(out), RUNS[1])
    assert resumed["resumed"] and resumed["attempts"][-1]["resumed_from"] == "checkpoint-4"
    _same_numbers(resumed, _result(reference, RUNS[1]))
    assert "(resumed)" in (out / "report.md").read_text()


def test_a_grown_grid_trains_only_its_new_runs_and_changed_settings_are_refused(tmp_path, reference, capsys):
    out = tmp_path / "grown"
    shutil.copytree(reference, out)
    stamps = {run_id: os.stat(os.path.join(out, "runs", run_id, "result.json")).st_mtime_ns for run_id in RUNS}
    study.main(["--grid", _grid_file(str(tmp_path), seeds=[0, 1]), "--output_dir", str(out)])
    assert "2 already finished, 2 to train" in capsys.readouterr().out
    assert all(os.stat(os.path.join(out, "runs", r, "result.json")).st_mtime_ns == t for r, t in stamps.items())
    assert len(json.loads((out / "results.json").read_text())["runs"]) == 4
    # A run recorded as unavailable (its feature had not landed) is trained once its cell builds
    path = os.path.join(out, "runs", RUNS[1], "result.json")
    with open(path, "w") as handle:
        json.dump({"run_id": RUNS[1], "status": study.NOT_AVAILABLE, "reason": "not yet"}, handle)
    study.main(["--grid", _grid_file(str(tmp_path), seeds=[0, 1]), "--output_dir", str(out)])
    assert "3 already finished, 1 to train" in capsys.readouterr().out
    assert _result(str(out), RUNS[1])["status"] == "trained"
    with pytest.raises(ValueError, match="was made with other settings \\(changed: \\['steps'"):
        study.main(["--grid", _grid_file(str(tmp_path), steps=9), "--output_dir", str(out)])


def test_a_diverging_cell_and_an_unavailable_cell_are_recorded_and_the_sweep_goes_on(tmp_path):
    pytest.importorskip("tensorboard")
    cells = {"pre": {"norm_position": "pre"}, "boom": {"norm_position": "post"}, "later": {"residual": "someday"}}
    grid = _grid_file(str(tmp_path), cells=cells, skip_unavailable_cells=True, report_to=["tensorboard"],
                      blocks=[{"cells": ["boom"], "learning_rates": [1e6], "warmup": [False]}, {"cells": ["pre", "later"]}])
    out = tmp_path / "diverging"
    study.main(["--grid", grid, "--output_dir", str(out)])
    boom, pre = _result(str(out), "boom-L1-d32-lr1e+06-nowarmup-s0"), _result(str(out), RUNS[0])
    assert boom["status"] == "diverged" and boom["val_loss"] is None and pre["status"] == "trained"
    divergence = boom["divergence"]
    assert 1 <= divergence["step"] <= GRID["steps"] and len(boom["train_loss"]) == divergence["step"] - 1
    assert divergence["first_nonfinite"].startswith(("embeddings", "block ", "output", "backward"))
    assert f"optimizer step {divergence['step']}" in divergence["message"]
    later = _result(str(out), "later-L1-d32-lr0.003-warmup-s0")  # a cell this build lacks: reported, not trained
    assert later["status"] == study.NOT_AVAILABLE and "residual='someday'" in later["reason"]
    events = list((out / "runs" / RUNS[0] / "trainer").rglob("events.out.tfevents.*"))
    assert events, "report_to=['tensorboard'] reached the run's Trainer"
    report = (out / "report.md").read_text()
    row = next(line for line in report.splitlines() if line.startswith("| boom-"))
    assert f"| {divergence['step']} ({divergence['first_nonfinite']}) |" in row and "| diverged |" in row


def test_the_report_is_built_from_results_json_alone(tmp_path, reference):
    alone = tmp_path / "alone"
    alone.mkdir()
    shutil.copy(os.path.join(reference, "results.json"), alone / "results.json")
    results = study_report.rewrite(str(alone))  # no run folders, no models, no training
    with open(os.path.join(reference, "report.md")) as handle:
        assert (alone / "report.md").read_text() == handle.read()
    for name in results["figures"].values():
        assert (alone / name).stat().st_size > 1000
    report = (alone / "report.md").read_text()
    for run_id in RUNS:
        assert f"| {run_id} | trained |" in report
    assert study_report.loss_spikes([1.0] * 10 + [1.2, 1.0]) == [11]  # 1.2 > 1.10 x median of the 10 before
    assert study_report.loss_spikes([1.0] * 10 + [1.05]) == []


@pytest.mark.parametrize("name", study_grid.BUILTIN_GRIDS)
def test_builtin_grids_are_valid_and_gpu_check_runs_the_gpu_preset(name):
    grid = study_grid.normalize_grid(study_grid.load_grid(name)[0])
    runs = study_grid.expand(grid)
    assert len(runs) == len(set(runs)) >= 20
    assert set(study.check_cells(grid)) == set(grid["cells"])  # unavailable frontier cells are reported, not refused
    if name == "gpu":
        assert grid["precision"] == "bf16" and grid["widths"] == [256]
        with open(os.path.join(ROOT, "benchmarks", "gpu_check.sh")) as handle:
            assert "training/study.py --grid gpu" in handle.read()

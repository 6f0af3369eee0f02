"""training/study.py: its formulas, its verdicts computed from numbers, a 2-cell micro study end to end, model cards."""

import json
import math
import os
import sys
import time

import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from hf_skipnorm import configuration_skipnorm as vocabulary  # noqa: E402
from hf_skipnorm.configuration_skipnorm import SkipNormConfig  # noqa: E402
from training import study  # noqa: E402

MICRO = dict(steps=3, batch_size=2, seq_len=16, eval_batches=1, init_grad_depths=(1, 2, 3), init_grad_seeds=(0,),
             base_depth=1, mid_depth=2, deep_depth=2, lrs=(1e-3,), norm_free_lrs=(1e-3,), deep_lrs=(1e-3,), overhead_steps=2,
             overhead_every=1, cells=("post", "pre"), label="micro", noise_seeds=(1,))
VERDICTS = ("agree", "partly agree", "disagree")


def test_lr_schedule_matches_its_formula():
    lr, steps, warmup = 1e-3, 100, 20
    assert study.lr_at(0, lr, steps, warmup) == pytest.approx(lr / 20)
    assert study.lr_at(19, lr, steps, warmup) == pytest.approx(lr)
    assert study.lr_at(20, lr, steps, warmup) == pytest.approx(lr)  # cosine starts at the peak
    assert study.lr_at(60, lr, steps, warmup) == pytest.approx(lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5))))
    assert study.lr_at(0, lr, steps, 0) == pytest.approx(lr)  # no warm-up: the peak at step 0


def test_loglog_slope_recovers_a_power_law():
    depths = [3, 6, 12, 24]
    assert study.loglog_slope(depths, [2.0 * d ** -0.5 for d in depths]) == pytest.approx(-0.5, abs=1e-12)
    assert study.loglog_slope(depths, [0.7] * 4) == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("cell", sorted(study.CELLS))
def test_availability_follows_the_config_vocabulary(cell):
    fields = study.CELLS[cell]
    choices = {"norm_position": vocabulary.NORM_POSITIONS, "norm_type": vocabulary.NORM_TYPES,
               "residual": vocabulary.RESIDUALS}
    known = all(k in SkipNormConfig.__dataclass_fields__ and (k not in choices or v in choices[k])
                for k, v in fields.items())
    reason = study.availability(cell, study.Settings())
    if not known:
        assert reason is not None and "refused" not in reason
    elif reason is not None:
        assert reason.startswith("refused:")  # the values exist but the config refuses the combination


def _fake_results(settings, post_losses, pre_losses, post_grads, pre_grads):
    runs = {}
    for cell, losses in (("post", post_losses), ("pre", pre_losses)):
        for (lr, warmup), loss in losses.items():
            runs[study.run_key(cell, settings.base_depth, lr, warmup)] = [{"status": "trained", "val_loss": loss}]
    grads = {}
    for depth in settings.init_grad_depths:
        grads[f"post/{depth}"] = post_grads(depth)
        grads[f"pre/{depth}"] = pre_grads(depth)
    return {"runs": runs, "init_gradients": grads, "unigram_entropy": 3.1}


def test_verdicts_are_computed_from_the_numbers():
    s = study.Settings(lrs=(1e-3, 1e-2), norm_free_lrs=(1e-3,))
    # Xiong et al.'s picture: post flat in L and growing toward the output, pre ~ L^-1/2 and flat across layers;
    # post needs warm-up, pre does not.
    paper = _fake_results(
        s,
        {(1e-3, True): 2.5, (1e-3, False): 2.9, (1e-2, True): 2.6, (1e-2, False): 3.2},
        {(1e-3, True): 2.5, (1e-3, False): 2.5, (1e-2, True): 2.3, (1e-2, False): 2.31},
        lambda d: [0.5 * (1 + 2 * i / d) for i in range(d)],
        lambda d: [d ** -0.5] * d,
    )
    found = study.findings(paper, s)
    assert [f["verdict"] for f in found[:2]] == ["agree", "agree"]
    # The opposite picture must be called a disagreement.
    opposite = _fake_results(
        s,
        {(1e-3, True): 2.9, (1e-3, False): 2.5, (1e-2, True): 3.2, (1e-2, False): 2.6},
        {(1e-3, True): 2.5, (1e-3, False): 2.9, (1e-2, True): 2.3, (1e-2, False): 3.0},
        lambda d: [d ** -0.5 * (1 - 0.5 * i / d) for i in range(d)],
        lambda d: [0.5 * (1 + 3 * i / d) for i in range(d)],
    )
    found = study.findings(opposite, s)
    assert [f["verdict"] for f in found[:2]] == ["disagree", "disagree"]
    assert [f["verdict"] for f in found[2:]] == [study.NOT_RUN] * 4  # no runs: no verdict, not a fake one


def test_micro_study_end_to_end(tmp_path):
    from model_cards.generate import validate_card

    settings = study.Settings(**MICRO)
    results = study.run_study(settings, str(tmp_path / "out"), log=lambda *a: None)
    out = tmp_path / "out"
    report = (out / "report.md").read_text()
    saved = json.loads((out / "results.json").read_text())
    assert len(saved["findings"]) == 6
    for finding in saved["findings"]:
        for part in ("Claim:** " + finding["claim"], "Verdict:** " + finding["verdict"]):
            assert part in report
        assert (out / finding["figure"]).stat().st_size > 1000
    assert saved["findings"][0]["verdict"] in VERDICTS and saved["findings"][1]["verdict"] in VERDICTS
    trained = [runs[0] for runs in saved["runs"].values()]
    assert {r["cell"] for r in trained} == {"post", "pre"}
    for run in trained:
        assert run["status"] == "trained" and len(run["train_loss"]) == settings.steps
        assert len(run["init_profile"]["layers"]) == run["depth"] == len(run["trained_profile"]["layers"])
        assert set(run["update_ratio"]) == {"1", "2"}
    for cell, status in saved["availability"].items():  # unavailable cells are named with their reason
        assert status == "available" or status in report
    assert results["callback_overhead"]["callback_fraction"] > 0
    assert all(len(losses) == 2 for losses in saved["noise"].values()) and "Seed-to-seed spread" in report
    before = report
    study.main(["--report-only", "--out", str(out)])  # recomputed from results.json alone: the same report
    assert (out / "report.md").read_text() == before
    for name in study.REFERENCE_MODELS.values():
        validate_card(str(out / "model_cards" / name / "README.md"))


@pytest.mark.slow
def test_quick_study_runs_under_three_minutes(tmp_path):
    start = time.perf_counter()
    study.main(["--quick", "--out", str(tmp_path / "quick")])
    assert time.perf_counter() - start < 180
    assert (tmp_path / "quick" / "report.md").exists()

"""training/study.py: its schedule and optimizer, its verdicts computed from numbers, a micro study end to end."""

import json
import math
import os
import sys
import time

import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from hf_skipnorm import configuration_skipnorm as vocabulary  # noqa: E402
from hf_skipnorm.configuration_skipnorm import SkipNormConfig  # noqa: E402
from training import study, study_findings, study_grid  # noqa: E402

VERDICTS = ("agree", "partly agree", "disagree")
DEFAULT = study_grid.normalize_grid(study_grid.load_grid("default")[0])


def test_trainer_schedule_and_optimizer_match_their_formulas(tmp_path):
    """The Trainer path's LR schedule is the study's (linear warm-up (t+1)/w, then cosine to 10% of the peak) and
    AdamW decays exactly the matrices, with the grid's betas and eps."""
    import torch

    grid = study_grid.normalize_grid({"cells": {"pre": {"norm_position": "pre"}}, "widths": [32], "depths": [2],
                                      "steps": 50, "warmup_fraction": 0.2, "learning_rates": [1e-3]})
    spec = study_grid.RunSpec("pre", 2, 32, 1e-3, True, 0)
    model = study.SkipNormForCausalLM(study.make_config(grid, "pre", 2, 32))
    rows = study.Rows(torch.zeros(4, 3, dtype=torch.long))
    trainer = study.StudyTrainer(model=model, args=study.training_arguments(grid, spec, str(tmp_path)),
                                 train_dataset=rows, eval_dataset=rows)
    trainer.create_optimizer_and_scheduler(num_training_steps=50)
    lr, steps, warmup, floor = 1e-3, 50, 10, 0.1

    def expected(t):  # the t-th optimizer step (0-based)
        if t < warmup:
            return lr * (t + 1) / warmup
        progress = (t - warmup + 1) / (steps - warmup)
        return lr * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress)))

    seen = []
    for _ in range(steps):
        seen.append(trainer.optimizer.param_groups[0]["lr"])
        trainer.optimizer.step()
        trainer.lr_scheduler.step()
    assert seen == pytest.approx([expected(t) for t in range(steps)], rel=1e-9)
    assert seen[warmup - 1] == pytest.approx(lr) and seen[-1] == pytest.approx(lr * floor, rel=0.01)
    decayed = {id(p) for g in trainer.optimizer.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    for name, p in model.named_parameters():
        assert (id(p) in decayed) == (p.ndim >= 2), name
    group = trainer.optimizer.param_groups[0]
    assert group["betas"] == (0.9, 0.98) and group["eps"] == 1e-8
    assert isinstance(trainer._get_train_sampler(rows), torch.utils.data.SequentialSampler)


def test_loglog_slope_recovers_a_power_law():
    depths = [3, 6, 12, 24]
    assert study_findings.loglog_slope(depths, [2.0 * d ** -0.5 for d in depths]) == pytest.approx(-0.5, abs=1e-12)
    assert study_findings.loglog_slope(depths, [0.7] * 4) == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("cell", sorted(DEFAULT["cells"]))
def test_availability_follows_the_config_vocabulary(cell):
    fields = DEFAULT["cells"][cell]
    choices = {"norm_position": vocabulary.NORM_POSITIONS, "norm_type": vocabulary.NORM_TYPES,
               "residual": vocabulary.RESIDUALS}
    known = all(k in SkipNormConfig.__dataclass_fields__ and (k not in choices or v in choices[k])
                for k, v in fields.items())
    reason = study.availability(DEFAULT, cell)
    if not known:
        assert reason is not None and "refused" not in reason
    elif reason is not None:
        assert reason.startswith("refused:")  # the values exist but the config refuses the combination


def test_built_in_grid_roles_are_their_cells():
    """Every built-in cell is recognized by the findings (by its fields): the default grid feeds every causal finding,
    the seq2seq grid the encoder-decoder one."""
    causal = [role for role in study_findings.ROLES if role not in study_findings.SEQ2SEQ]
    assert study_findings.role_cells(DEFAULT) == {role: role for role in causal}
    seq2seq = study_grid.normalize_grid(study_grid.load_grid("seq2seq")[0])
    assert study_findings.role_cells(seq2seq) == {role: role for role in study_findings.SEQ2SEQ}
    # is_encoder_decoder set once in the grid's `model` makes the same cells encoder-decoders, never causal roles
    shared = {"model": {"is_encoder_decoder": True}, "cells": {"a": {"norm_position": "pre"},
                                                               "b": {"norm_position": "post", "residual": "deepnorm"}}}
    assert study_findings.role_cells(shared) == {"s2s_pre": "a", "s2s_deepnorm": "b"}


def _fake_results(post_losses, pre_losses, post_grads, pre_grads, depths=(3, 6, 12, 24)):
    runs = []
    for cell, losses in (("post", post_losses), ("pre", pre_losses)):
        for (lr, warmup), loss in losses.items():
            runs.append({"cell": cell, "depth": 6, "width": 64, "lr": lr, "warmup": warmup, "seed": 0,
                         "status": "trained", "val_loss": loss, "run_id": f"{cell}-{lr}-{warmup}"})
    grads = {}
    for depth in depths:
        grads[f"post/{depth}"] = post_grads(depth)
        grads[f"pre/{depth}"] = pre_grads(depth)
    grid = {"cells": {"my_post": {"norm_position": "post"}, "my_pre": {"norm_position": "pre"}}}
    for run in runs:
        run["cell"] = "my_" + run["cell"]  # the findings recognize cells by their fields, not their names
    grads = {"my_" + k: v for k, v in grads.items()}
    return {"grid": grid, "runs": runs, "init_gradients": grads, "unigram_entropy": 3.1,
            "availability": {"my_post": "available", "my_pre": "available"}}


def test_verdicts_are_computed_from_the_numbers():
    # Xiong et al.'s picture: post flat in L and growing toward the output, pre ~ L^-1/2 and flat across layers;
    # post needs warm-up, pre does not.
    paper = _fake_results(
        {(1e-3, True): 2.5, (1e-3, False): 2.9, (1e-2, True): 2.6, (1e-2, False): 3.2},
        {(1e-3, True): 2.5, (1e-3, False): 2.5, (1e-2, True): 2.3, (1e-2, False): 2.31},
        lambda d: [0.5 * (1 + 2 * i / d) for i in range(d)],
        lambda d: [d ** -0.5] * d,
    )
    found = study_findings.compute(paper)
    assert [f["verdict"] for f in found[:2]] == ["agree", "agree"]
    assert found[1]["where"] == {"base_depth": 6, "lrs": (1e-3, 1e-2), "width": 64}
    # The opposite picture must be called a disagreement.
    opposite = _fake_results(
        {(1e-3, True): 2.9, (1e-3, False): 2.5, (1e-2, True): 3.2, (1e-2, False): 2.6},
        {(1e-3, True): 2.5, (1e-3, False): 2.9, (1e-2, True): 2.3, (1e-2, False): 3.0},
        lambda d: [d ** -0.5 * (1 - 0.5 * i / d) for i in range(d)],
        lambda d: [0.5 * (1 + 3 * i / d) for i in range(d)],
    )
    found = study_findings.compute(opposite)
    assert [f["verdict"] for f in found[:2]] == ["disagree", "disagree"]
    # Finding 3 reads post and pre at their largest common depth (6 here: the only one): measured, deepnorm absent.
    assert "DeepNorm not measured" in found[2]["verdict"]
    assert [f["verdict"] for f in found[3:]] == [study_findings.NOT_RUN] * (len(found) - 3)  # no runs: no fake verdict


def test_a_finding_is_one_registry_entry():
    numbers = [f.number for f in study_findings.FINDINGS]
    assert numbers == sorted(set(numbers))
    for finding in study_findings.FINDINGS:
        assert set(finding.cells) <= set(study_findings.ROLES), finding.number
        assert callable(finding.where) and callable(finding.measure) and callable(finding.figure)


MICRO_GRID = {
    "cells": {"pre": {"norm_position": "pre"}, "post": {"norm_position": "post"}},
    "blocks": [{"cells": ["pre", "post"], "depths": [1, 2], "learning_rates": [1e-3], "warmup": [True, False]},
               {"cells": ["pre"], "depths": [1], "learning_rates": [1e-3], "warmup": [True], "seeds": [0, 1]}],
    "widths": [32], "steps": 3, "batch_size": 2, "sequence_length": 16, "eval_every": 3, "save_every": 3,
    "eval_batches": 1, "init_probes": {"cells": ["post", "pre"], "depths": [1, 2, 3]},
    "reference_models": [{"run": {"cell": "pre", "depth": 1, "lr": 1e-3}, "name": "micro-pre"}],
}


def test_micro_study_end_to_end(tmp_path):
    from model_cards.generate import validate_card

    grid_file = tmp_path / "grid.json"
    grid_file.write_text(json.dumps(MICRO_GRID))
    out = tmp_path / "out"
    results = study.run_study(str(grid_file), str(out), log=lambda *a: None)
    report = (out / "report.md").read_text()
    saved = json.loads((out / "results.json").read_text())
    assert len(saved["findings"]) == len(study_findings.FINDINGS)
    for finding in saved["findings"]:
        for part in ("Claim:** " + finding["claim"], "Verdict:** " + finding["verdict"]):
            assert part in report
        if finding["figure"]:
            assert (out / finding["figure"]).stat().st_size > 1000
    assert saved["findings"][0]["verdict"] in VERDICTS and saved["findings"][1]["verdict"] in VERDICTS
    assert {r["run_id"] for r in saved["runs"]} == {s.run_id for s in study_grid.expand(study_grid.normalize_grid(MICRO_GRID))}
    for run in saved["runs"]:
        assert run["status"] == "trained" and len(run["train_loss"]) == 3 == len(run["grad_norm"])
        assert len(run["init_profile"]["layers"]) == run["depth"] == len(run["trained_profile"]["layers"])
        assert set(run["update_ratio"]) == {"1"} and run["eval_curve"][-1] == [3, run["val_loss"]]
        assert run["run_id"] in report
    for name in results["figures"].values():
        assert (out / name).stat().st_size > 1000
    assert "Seed-to-seed range" in report and "Loss spike:" in report and json.dumps(MICRO_GRID["steps"]) in report
    before = report
    study.main(["--report_only", "--output_dir", str(out)])  # recomputed from results.json alone: the same report
    assert (out / "report.md").read_text() == before
    validate_card(str(out / "model_cards" / "micro-pre" / "README.md"))


@pytest.mark.slow
def test_quick_study_runs_under_three_minutes(tmp_path):
    start = time.perf_counter()
    study.main(["--quick", "--output_dir", str(tmp_path / "quick")])
    assert time.perf_counter() - start < 180
    assert (tmp_path / "quick" / "report.md").exists()


def _frontier_results(pre_norms, attn_norms, pre_grads, attn_grads, losses):
    def run(cell, norms, grads, loss, seed=0):
        layers = [{"layer": i, "stream_norm": n, "grad_norm/attn": g / 2, "grad_norm/mlp": g / 2, "token_cosine": 0.5}
                  for i, (n, g) in enumerate(zip(norms, grads))]
        return {"cell": cell, "depth": len(norms), "width": 64, "lr": 1e-3, "warmup": True, "seed": seed,
                "status": "trained", "val_loss": loss, "run_id": f"{cell}-{seed}", "trained_profile": {"layers": layers}}

    runs = [run("pre", pre_norms, pre_grads, losses["pre"]), run("pre", pre_norms, pre_grads, losses["pre"] + 0.02, 1),
            run("attn_res", attn_norms, attn_grads, losses["attn_res"]),
            run("value_residual", attn_norms, attn_grads, losses["value_residual"])]
    cells = {c: study_findings.ROLES[c] for c in ("pre", "attn_res", "value_residual", "unet_skips")}
    return {"grid": {"cells": cells}, "runs": runs, "unigram_entropy": 3.1,
            "availability": {c: "available" for c in cells}}


def test_frontier_verdicts_are_computed_from_the_numbers():
    growing, flat = [1.0, 2.0, 4.0, 8.0], [3.0, 3.2, 3.1, 3.3]
    uneven, even = [1.0, 0.5, 0.25, 0.1], [0.5, 0.45, 0.5, 0.48]
    paper = _frontier_results(growing, flat, uneven, even, {"pre": 2.6, "attn_res": 2.4, "value_residual": 2.5})
    seven, eight = study_findings.compute(paper)[6:8]
    assert seven["verdict"] == "agree" and eight["verdict"].startswith("agree")
    assert "unet_skips: not measured" in eight["verdict"]  # in the grid's cells but never run
    opposite = _frontier_results(flat, growing, even, uneven, {"pre": 2.4, "attn_res": 2.6, "value_residual": 2.41})
    seven, eight = study_findings.compute(opposite)[6:8]
    assert seven["verdict"] == "disagree" and eight["verdict"].startswith("disagree")
    # value_residual is 0.01 worse: inside the seed range (0.02), so it must not count as better either way
    assert ("value_residual's final val loss is below Pre-LN's by more than the seed range (0.020)", False) in [
        tuple(c) for c in eight["checks"]]


# ----------------------------------------------------------------------------------------------- encoder-decoders (issue 16)
def _seq2seq_results(losses, deepnorm_status="available", depths=(2, 12)):
    """Synthetic results of the seq2seq grid: losses[(cell, depth, lr)] (None = diverged); s2s_pre at depth 2 and LR
    1e-3 has a second seed 0.02 above the first (the margin)."""
    runs = []
    for (cell, depth, lr), loss in losses.items():
        if depth not in depths:
            continue
        seeds = [(0, loss), (1, loss + 0.02)] if (cell, depth, lr) == ("s2s_pre", 2, 1e-3) else [(0, loss)]
        for seed, value in seeds:
            status = "diverged" if value is None else "trained"
            if cell == "s2s_deepnorm" and deepnorm_status != "available":
                status = study_findings.NOT_AVAILABLE
            runs.append({"cell": "my_" + cell, "depth": depth, "width": 64, "lr": lr, "warmup": True, "seed": seed,
                         "status": status, "val_loss": value if status == "trained" else None,
                         "run_id": f"{cell}-{depth}-{lr}-{seed}"})
    cells = {"my_" + c: study_findings.ROLES[c] for c in study_findings.SEQ2SEQ}
    availability = {"my_s2s_post": "available", "my_s2s_pre": "available", "my_s2s_deepnorm": deepnorm_status}
    return {"grid": {"cells": cells}, "runs": runs, "unigram_entropy": 3.1, "availability": availability}


def _table(post, pre, deepnorm):
    """{(cell, depth, lr): loss} from {depth: loss} per cell, the same at both LRs."""
    return {(cell, depth, lr): value for cell, values in (("s2s_post", post), ("s2s_pre", pre),
                                                          ("s2s_deepnorm", deepnorm))
            for depth, value in values.items() for lr in (1e-3, 3e-3)}


def test_seq2seq_verdict_is_computed_from_the_numbers():
    nine = lambda results: study_findings.compute(results)[8]  # noqa: E731
    # The papers' picture: alike at depth 2 (within the 0.02 seed range), deep Post-LN diverges, DeepNorm ~ Pre-LN.
    paper = nine(_seq2seq_results(_table({2: 2.00, 12: None}, {2: 2.00, 12: 1.80}, {2: 2.01, 12: 1.81})))
    assert paper["verdict"] == "agree" and paper["where"] == {"depths": (2, 12), "lrs": (1e-3, 3e-3), "width": 64}
    assert [ok for _, ok in paper["checks"]] == [True] * 5 and "(0.020)" in paper["checks"][0][0]
    assert "diverged runs: ['s2s_post/L12/lr0.001', 's2s_post/L12/lr0.003']" in paper["measured"]
    # The opposite: deep Post-LN better than Pre-LN, DeepNorm worse, the placements far apart at depth 2.
    opposite = nine(_seq2seq_results(_table({2: 2.30, 12: 1.70}, {2: 2.00, 12: 1.90}, {2: 2.60, 12: 3.00})))
    assert opposite["verdict"] == "disagree" and [ok for _, ok in opposite["checks"]] == [False] * 5
    # A difference inside the seed range is no evidence: Post-LN 0.015 behind at depth 12 does not "trail".
    close = nine(_seq2seq_results(_table({2: 2.00, 12: 1.815}, {2: 2.00, 12: 1.80}, {2: 2.00, 12: 1.80})))
    assert close["verdict"] == "partly agree" and close["checks"][0][1] is False
    # Missing cells: DeepNorm unavailable -> the other checks stand and the verdict says so; one depth or no
    # encoder-decoder runs -> no verdict at all.
    missing = nine(_seq2seq_results(_table({2: 2.00, 12: None}, {2: 2.00, 12: 1.80}, {2: 2.0, 12: 1.8}),
                                    deepnorm_status="SkipNormConfig has no field 'x'"))
    assert missing["verdict"] == f"agree (DeepNorm {study_findings.NOT_AVAILABLE})" and len(missing["checks"]) == 3
    one_depth = nine(_seq2seq_results(_table({2: 2.0}, {2: 2.0}, {2: 2.0}), depths=(2,)))
    assert one_depth["verdict"] == study_findings.NOT_RUN and one_depth["checks"] == []
    causal_only = _fake_results({(1e-3, True): 2.5}, {(1e-3, True): 2.5}, lambda d: [1.0] * d, lambda d: [1.0] * d)
    assert nine(causal_only)["verdict"] == study_findings.NOT_RUN


SEQ2SEQ_GRID = {
    "cells": {"post": {"is_encoder_decoder": True, "norm_position": "post"},
              "pre": {"is_encoder_decoder": True, "norm_position": "pre"},
              "deepnorm": {"is_encoder_decoder": True, "norm_position": "post", "residual": "deepnorm"}},
    "depths": [1, 2], "widths": [32], "learning_rates": [3e-3], "steps": 3, "batch_size": 2, "sequence_length": 16,
    "eval_every": 3, "save_every": 3, "eval_batches": 1,
    "reference_models": [{"run": {"cell": "pre", "depth": 1, "lr": 3e-3}, "name": "micro-s2s-pre"}],
}


def test_micro_seq2seq_study_end_to_end(tmp_path):
    """Encoder-decoder cells go through the study's Trainer path on seq2seq.py's own text infilling pairs: each run
    trains both stacks at N = M = depth, its diagnostics are per stack, and finding 9 gets a computed verdict."""
    from training import seq2seq

    grid_file = tmp_path / "grid.json"
    grid_file.write_text(json.dumps(SEQ2SEQ_GRID))
    out = tmp_path / "out"
    study.run_study(str(grid_file), str(out), log=lambda *a: None)
    saved = json.loads((out / "results.json").read_text())
    for run in saved["runs"]:
        assert run["status"] == "trained" and len(run["train_loss"]) == 3 and run["eval_curve"][-1] == [3, run["val_loss"]]
        for which in ("init_profile", "trained_profile"):  # the decoder's rows, and the encoder's beside them
            assert len(run[which]["layers"]) == run["depth"] == len(run[which]["encoder"]["layers"])
            assert "grad_norm/cross_attn" in run[which]["layers"][0]
        assert set(run["update_ratio"]["1"]) == {"encoder", "decoder"}
    nine = saved["findings"][8]
    assert nine["verdict"] in VERDICTS and nine["where"]["depths"] == [1, 2]
    assert (out / nine["figure"]).stat().st_size > 1000 and "### 9." in (out / "report.md").read_text()
    # The pairs are seq2seq.py's text infilling of the study's text: target = a chunk + EOS, source = the same chunk
    # with spans replaced by single masks (the kept bytes in order).
    grid = study_grid.normalize_grid(SEQ2SEQ_GRID)
    pairs = study.ByteData(grid).denoising
    tokenizer = study.byte_tokenizer()
    assert seq2seq.text_infilling.__module__ == "training.seq2seq"
    for row in pairs.train.select(range(20)):
        source, target = row["input_ids"], row["labels"]
        assert target[-1] == source[-1] == tokenizer.eos_token_id and len(target) == grid["sequence_length"]
        kept = [t for t in source[:-1] if t != tokenizer.mask_token_id]
        it = iter(target[:-1])
        assert all(any(t == u for u in it) for t in kept)  # the kept bytes are a subsequence of the target
        assert tokenizer.mask_token_id in source and source.count(tokenizer.mask_token_id) < len(target)
    from model_cards.generate import validate_card

    card = out / "model_cards" / "micro-s2s-pre" / "README.md"  # the reference model's card, per-stack diagnostics
    validate_card(str(card))
    assert "AutoModelForSeq2SeqLM" in card.read_text() and "| encoder 0 |" in card.read_text()
    model = study.model_for(study.make_config(grid, "pre", 3, 32))
    assert model.config.num_hidden_layers == model.config.decoder_depth == 3

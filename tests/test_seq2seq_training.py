"""training/seq2seq.py at toy size: the offline default (BART text infilling on the embedded corpus) end to end in a
fresh process with the Hub off, a JSON-lines translation run, resume equal to an uninterrupted run, the refusals,
the sacreBLEU/chrF module against the sacrebleu package, and the infilling noise against its stated rule."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import sacrebleu
import torch
from safetensors.torch import load_file
from transformers import TrainerCallback

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from training import seq2seq  # noqa: E402

SCRIPT = os.path.join(ROOT, "training", "seq2seq.py")
TINY = ["--hidden_size", "32", "--num_hidden_layers", "1", "--decoder_layers", "2", "--num_attention_heads", "2",
        "--tokenizer_vocab_size", "300", "--logging_steps", "1", "--disable_tqdm", "true", "--report_to", "none",
        "--generation_max_length", "12", "--per_device_train_batch_size", "4", "--per_device_eval_batch_size", "8"]


def _env():
    env = dict(os.environ)
    env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", HTTP_PROXY="http://127.0.0.1:9",
               HTTPS_PROXY="http://127.0.0.1:9", OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    return env


def test_offline_default_trains_denoising_reports_bleu_chrf_and_reloads_in_a_fresh_process(tmp_path):
    out = tmp_path / "s2s"
    reload = (
        "import sys, torch; from transformers import AutoModelForSeq2SeqLM, AutoTokenizer\n"
        "model = AutoModelForSeq2SeqLM.from_pretrained(sys.argv[1]).eval(); tok = AutoTokenizer.from_pretrained(sys.argv[1])\n"
        "ids = tok(['The assert statement'], return_tensors='pt').input_ids\n"
        "print(type(model).__name__, model.config.is_encoder_decoder, model.generate(ids, max_new_tokens=4).shape[0])\n"
    )
    command = [sys.executable, SCRIPT, "--output_dir", str(out), *TINY, "--max_steps", "4", "--max_eval_samples", "8",
               "--norm_position", "post", "--decoder_overrides", '{"norm_position": "pre"}']
    result = subprocess.run(command, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    assert "text infilling on pydoc_data.topics" in result.stdout
    metrics = json.loads((out / "all_results.json").read_text())
    for key in ("eval_bleu", "eval_chrf", "eval_loss", "train_loss"):
        assert np.isfinite(metrics[key]), key
    assert 0 <= metrics["eval_bleu"] <= 100 and 0 <= metrics["eval_chrf"] <= 100
    config = json.loads((out / "config.json").read_text())
    assert config["is_encoder_decoder"] and config["norm_position"] == "post"
    assert config["decoder_overrides"]["norm_position"] == "pre" and config["use_cache"] is True
    # The model card, written as train.py writes it: the metrics from all_results.json, per-stack diagnostics, the
    # seq2seq Auto class, the data and the command that ran.
    from model_cards.generate import validate_card

    validate_card(str(out / "README.md"))
    card = (out / "README.md").read_text()
    for metric in ("eval_bleu", "eval_chrf", "eval_loss"):
        assert f"| {metric} | {metrics[metric]:.6g} |" in card, metric
    assert "pipeline_tag: text2text-generation" in card and "AutoModelForSeq2SeqLM.from_pretrained" in card
    assert "| encoder 0 |" in card and "| decoder 1 |" in card and "BART text infilling" in card
    assert f"python training/seq2seq.py --output_dir {out} " in card and "'{\"norm_position\": \"pre\"}'" in card
    loaded = subprocess.run([sys.executable, "-c", "import hf_skipnorm\n" + reload, str(out)], cwd=ROOT, env=_env(),
                            capture_output=True, text=True, timeout=120)
    assert loaded.returncode == 0, loaded.stderr[-3000:]
    assert loaded.stdout.split() == ["SkipNormForConditionalGeneration", "True", "1"]


PAIRS = [("one two three", "eins zwei drei"), ("two three four", "zwei drei vier"), ("four five", "vier fünf"),
         ("five one", "fünf eins"), ("three three", "drei drei"), ("one four", "eins vier"), ("two five", "zwei fünf"),
         ("four one two", "vier eins zwei")]


def _write_translation(path, pairs):
    with open(path, "w", encoding="utf-8") as handle:
        for en, de in pairs:
            handle.write(json.dumps({"translation": {"en": en, "de": de}}, ensure_ascii=False) + "\n")
    return str(path)


class _StopAt(TrainerCallback):
    def __init__(self, step):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step >= self.step:
            control.should_training_stop = True
        return control


def test_translation_jsonl_run_and_resume_equals_uninterrupted(tmp_path):
    train = _write_translation(tmp_path / "train.jsonl", PAIRS * 3)
    valid = _write_translation(tmp_path / "valid.jsonl", PAIRS[:4])
    argv = [*TINY, "--train_file", train, "--validation_file", valid, "--source_lang", "en", "--target_lang", "de",
            "--source_prefix", "translate: ", "--max_steps", "4", "--save_steps", "2", "--num_beams", "2",
            "--max_source_length", "16", "--max_target_length", "16", "--hidden_dropout", "0.1"]
    whole = seq2seq.main(["--output_dir", str(tmp_path / "whole"), *argv])
    assert {"eval_bleu", "eval_chrf"} <= set(whole)
    seq2seq.main(["--output_dir", str(tmp_path / "cut"), *argv], callbacks=[_StopAt(2)])
    assert not (tmp_path / "cut" / "checkpoint-4").exists()
    resumed = seq2seq.main(["--output_dir", str(tmp_path / "cut"), *argv, "--resume_from_checkpoint", "last"])
    a, b = load_file(tmp_path / "whole" / "model.safetensors"), load_file(tmp_path / "cut" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # bitwise
    assert resumed["eval_loss"] == whole["eval_loss"] and resumed["eval_bleu"] == whole["eval_bleu"]


def test_refusals_before_any_data_is_read(tmp_path):
    train = _write_translation(tmp_path / "train.jsonl", PAIRS)
    out = ["--output_dir", str(tmp_path / "never")]
    decoder_only = tmp_path / "gpt.json"
    decoder_only.write_text(json.dumps({"is_encoder_decoder": False, "norm_position": "pre"}))
    with pytest.raises(ValueError, match="is_encoder_decoder=False: training/seq2seq.py trains encoder-decoders"):
        seq2seq.main([*out, *TINY, "--config_file", str(decoder_only)])
    with pytest.raises(ValueError, match="translation needs both"):
        seq2seq.main([*out, *TINY, "--train_file", train, "--source_lang", "en"])
    with pytest.raises(ValueError, match="need data"):
        seq2seq.main([*out, *TINY, "--source_lang", "en", "--target_lang", "de"])
    with pytest.raises(ValueError, match=r"mask_ratio 1.5 must be in \(0, 1\)"):
        seq2seq.main([*out, *TINY, "--mask_ratio", "1.5"])
    with pytest.raises(ValueError, match="exceed max_position_embeddings=8"):
        seq2seq.main([*out, *TINY, "--max_position_embeddings", "8"])
    assert not (tmp_path / "never").exists()  # refused before the output folder was made
    with pytest.raises(ValueError, match=r"languages in the first row: \['de', 'en'\]\): give --source_lang and --target_lang"):
        seq2seq.main([*out, *TINY, "--train_file", train])
    with pytest.raises(ValueError, match=r"\['fr'\] not in the data's translation pairs"):
        seq2seq.main([*out, *TINY, "--train_file", train, "--source_lang", "en", "--target_lang", "fr"])
    summaries = tmp_path / "sum.jsonl"
    summaries.write_text("".join(json.dumps({"text": f"long text {i}", "summary": f"t{i}"}) + "\n" for i in range(8)))
    with pytest.raises(ValueError, match=r"--summary_column 'abstract' is not a column of the data; columns: \['text', 'summary'\]"):
        seq2seq.main([*out, *TINY, "--train_file", str(summaries), "--summary_column", "abstract"])
    with pytest.raises(ValueError, match="need a 'translation' column"):
        seq2seq.main([*out, *TINY, "--train_file", str(summaries), "--source_lang", "en", "--target_lang", "de"])


def test_metric_module_equals_sacrebleu_called_directly():
    import evaluate

    metric = evaluate.load(seq2seq.METRIC_PATH)
    hypotheses = ["the cat sat on the mat", "a quick brown dog", "über alles, ja!", ""]
    references = [["the cat sat on a mat", "a cat sat on the mat"], ["the quick brown fox", "a fast brown dog"],
                  ["über alles ja", "über alles, ja!"], ["empty", "nothing"]]
    scores = metric.compute(predictions=hypotheses, references=references)
    streams = [[refs[j] for refs in references] for j in range(2)]
    assert scores["bleu"] == sacrebleu.corpus_bleu(hypotheses, streams).score
    assert scores["chrf"] == sacrebleu.corpus_chrf(hypotheses, streams).score
    assert 0 < scores["bleu"] < 100 and 0 < scores["chrf"] < 100
    assert metric.compute(predictions=["a b c d"], references=[["a b c d"]])["bleu"] == pytest.approx(100.0)
    with pytest.raises(ValueError, match="same number"):
        metric.compute(predictions=["a", "b"], references=[["a"], ["b", "c"]])


MASK = -1


def test_text_infilling_follows_its_rule_on_a_fixed_seed():
    spans_seen = []
    for n in (1, 2, 7, 10, 33, 100, 1000):
        ids = list(range(n))
        for trial in range(20):
            noised = seq2seq.text_infilling(ids, MASK, np.random.default_rng([n, trial]), 0.3, 3.0)
            kept = [t for t in noised if t != MASK]
            masked = int(round(0.3 * n))
            assert len(kept) == n - masked  # exactly round(0.3 n) tokens are masked
            assert kept == sorted(kept) and set(kept) <= set(ids)  # the kept tokens keep their order
            pairs = list(zip(noised, noised[1:]))
            assert (MASK, MASK) not in pairs  # adjacent spans merged into one mask
            # every gap between consecutive kept tokens (and the ends) is either nothing or exactly one mask
            for left, right in zip([-1] + kept, kept + [n]):
                between = noised[noised.index(left) + 1 if left >= 0 else 0: noised.index(right) if right < n else len(noised)]
                assert between in ([], [MASK]) and (right - left - 1 == 0 or between == [MASK])
            if n == 1000:
                spans_seen.append(noised.count(MASK))
    # Poisson(3) spans over 300 masked tokens: about 100 spans (+5% of length 0), fewer masks after merging. A wrong
    # length law (every span 1 token: 300 masks; one span: 1 mask) falls far outside.
    assert 60 < np.mean(spans_seen) < 110, np.mean(spans_seen)
    again = seq2seq.text_infilling(list(range(50)), MASK, np.random.default_rng(7))
    assert again == seq2seq.text_infilling(list(range(50)), MASK, np.random.default_rng(7))


def test_text_infilling_inserts_a_mask_for_a_zero_length_span():
    # round(0.3 * 1) = 0: nothing is masked and no span is drawn.
    assert seq2seq.text_infilling([5], MASK, np.random.default_rng(0), 0.3, 3.0) == [5]
    # A Poisson draw of 0 followed by the spans that reach m: the zero-length span adds a mask without removing tokens.
    class Draws:
        def __init__(self):
            self.values = iter([0, 2])

        def poisson(self, lam):
            return next(self.values)

        def choice(self, slots, size, replace):
            return np.array([0, 3])  # the zero-length span before token 0, the 2-token span after token 1

    noised = seq2seq.text_infilling([10, 11, 12, 13, 14, 15, 16], MASK, Draws(), 0.3, 3.0)
    assert noised == [MASK, 10, 11, MASK, 14, 15, 16]

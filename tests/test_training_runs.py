"""Whole runs of training/ in fresh processes: the main job at toy size (train, card, reload, sample), a run
killed with SIGKILL and resumed (bitwise equal weights), a two-process DDP run on CPU against one process
with the same global batch, and fine-tuning with the network unreachable."""

import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

TRAIN = os.path.join(ROOT, "training", "train.py")
TINY = ["--hidden_size", "32", "--num_hidden_layers", "2", "--num_attention_heads", "2", "--block_size", "32",
        "--tokenizer_vocab_size", "400", "--eval_strategy", "no", "--sample_max_new_tokens", "0",
        "--disable_tqdm", "true", "--logging_steps", "1", "--validation_split_percentage", "2"]


def _env(**extra):
    env = dict(os.environ)
    # No network: the Hub is off, and any HTTP(S) attempt goes to a closed local port and fails at once.
    env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", HTTP_PROXY="http://127.0.0.1:9",
               HTTPS_PROXY="http://127.0.0.1:9", OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    env.update(extra)
    return env


def _run(command, timeout=300, **env):
    result = subprocess.run(command, cwd=ROOT, env=_env(**env), capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{command}\nstdout:\n{result.stdout[-3000:]}\nstderr:\n{result.stderr[-5000:]}"
    return result


def _weights(folder):
    return load_file(os.path.join(folder, "model.safetensors"))


def test_main_job_at_toy_size_trains_saves_a_card_and_reloads_in_a_fresh_process(tmp_path):
    out = tmp_path / "main"
    argv = [a for a in TINY if a not in ("--disable_tqdm", "true", "--sample_max_new_tokens", "0")]
    result = _run([sys.executable, TRAIN, "--output_dir", str(out), *argv, "--max_steps", "4",
                   "--sample_max_new_tokens", "8", "--norm_position", "post"])
    assert "it/s]" in result.stderr or "s/it]" in result.stderr  # the Trainer's tqdm progress bar
    assert "eval_perplexity" in result.stdout
    assert "Reloaded" in result.stdout and "in a fresh process" in result.stdout
    sample = result.stdout.split("in a fresh process. Sample:\n", 1)[1]
    assert sample.startswith('The "assert" statement') and len(sample.strip()) > len('The "assert" statement')
    for name in ("model.safetensors", "config.json", "tokenizer.json", "tokenizer_config.json", "README.md"):
        assert (out / name).is_file(), name
    config = json.loads((out / "config.json").read_text())
    assert config["norm_position"] == "post" and config["use_cache"] is True
    card = (out / "README.md").read_text()
    for expected in ("| `norm_position` | `post` |", "pydoc_data.topics", "| `learning_rate` |", "eval_perplexity",
                     "type: perplexity", "AutoModelForCausalLM"):
        assert expected in card, expected


# A driver that runs train.py in-process and SIGKILLs itself in the middle of saving a checkpoint: after the
# model weights of that checkpoint are written, before its optimizer state. The resumed run must ignore the
# half-written checkpoint and continue from the last complete one.
KILL_DURING_SAVE = """
import os, signal, sys
from transformers import Trainer
sys.path.insert(0, {root!r})
from training import train

KILL_AT = int(sys.argv[1])
save_optimizer = Trainer._save_optimizer_and_scheduler

def save_optimizer_or_die(self, output_dir):
    if self.state.global_step == KILL_AT:
        os.kill(os.getpid(), signal.SIGKILL)
    return save_optimizer(self, output_dir)

Trainer._save_optimizer_and_scheduler = save_optimizer_or_die
train.main(sys.argv[2:])
"""


def test_sigkill_mid_save_then_resume_gives_bitwise_identical_weights(tmp_path):
    from training import train

    argv = [*TINY, "--max_steps", "12", "--save_steps", "4", "--seed", "7"]
    train.main(["--output_dir", str(tmp_path / "straight"), *argv])  # the uninterrupted reference, in-process

    driver = tmp_path / "kill_during_save.py"
    driver.write_text(KILL_DURING_SAVE.format(root=ROOT))
    killed = tmp_path / "killed"
    result = subprocess.run([sys.executable, str(driver), "8", "--output_dir", str(killed), *argv], cwd=ROOT,
                            env=_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == -9, result.stderr[-3000:]  # died by SIGKILL
    checkpoints = sorted(p.name for p in killed.iterdir() if p.name.startswith("checkpoint"))
    assert checkpoints == ["checkpoint-4"]  # step 8's checkpoint is absent, not half-written
    assert (killed / ".staging" / "checkpoint-8" / "model.safetensors").is_file()  # it was being written
    assert not (killed / ".staging" / "checkpoint-8" / "optimizer.pt").exists()

    result = _run([sys.executable, TRAIN, "--output_dir", str(killed), *argv, "--resume_from_checkpoint", "last"])
    assert "resuming from" in result.stdout and "checkpoint-4" in result.stdout
    straight, resumed = _weights(tmp_path / "straight"), _weights(killed)
    assert straight.keys() == resumed.keys()
    for name in straight:
        assert torch.equal(straight[name], resumed[name]), name
    assert not (killed / ".staging").exists()


def test_two_processes_on_cpu_match_one_process_with_the_same_global_batch(tmp_path):
    from training import train

    argv = [*TINY, "--max_steps", "4", "--save_steps", "4", "--seed", "3"]
    single = tmp_path / "single"
    train.main(["--output_dir", str(single), *argv, "--per_device_train_batch_size", "8"])
    ddp = tmp_path / "ddp"
    result = _run(["accelerate", "launch", "--config_file", os.path.join(ROOT, "training/accelerate/cpu_multi_process.yaml"),
                   "--num_processes", "2", "--main_process_port", "29517", TRAIN, "--output_dir", str(ddp), *argv,
                   "--per_device_train_batch_size", "4"], timeout=400)
    assert [p.name for p in ddp.iterdir() if p.name.startswith("checkpoint")] == ["checkpoint-4"]
    assert not (ddp / ".staging").exists()
    # each rank saved its own RNG state into the one checkpoint: both trained
    assert (ddp / "checkpoint-4" / "rng_state_0.pth").is_file() and (ddp / "checkpoint-4" / "rng_state_1.pth").is_file()
    losses = {}
    for name, folder in (("single", single), ("ddp", ddp)):
        state = json.loads((folder / "checkpoint-4" / "trainer_state.json").read_text())
        losses[name] = [entry["loss"] for entry in state["log_history"] if "loss" in entry]
        assert state["global_step"] == 4
    assert len(losses["ddp"]) == 4
    assert losses["ddp"] == pytest.approx(losses["single"], rel=1e-4)
    single_weights, ddp_weights = _weights(single), _weights(ddp)
    for name in single_weights:
        torch.testing.assert_close(ddp_weights[name], single_weights[name], rtol=1e-4, atol=1e-5)


@pytest.fixture(scope="module")
def tiny_pretrained(tmp_path_factory):
    """A saved (untrained) tiny causal skipnorm model with a tokenizer trained on the corpus."""
    from hf_skipnorm import SkipNormConfig, SkipNormForCausalLM
    from training import data

    folder = tmp_path_factory.mktemp("pretrained")
    tokenizer = data.train_tokenizer(data.reference_corpus()["text"], vocab_size=400)
    config = SkipNormConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                            pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                            bos_token_id=tokenizer.bos_token_id)
    SkipNormForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


FINETUNE_ARGS = ["--max_steps", "3", "--eval_strategy", "no", "--save_strategy", "no", "--disable_tqdm", "true",
                 "--per_device_train_batch_size", "8", "--max_length", "48"]


def test_finetune_sequence_classification_offline_reports_accuracy_and_f1(tiny_pretrained, tmp_path):
    out = tmp_path / "topics"
    _run([sys.executable, os.path.join(ROOT, "training", "finetune.py"), "--model_name_or_path", str(tiny_pretrained),
          "--output_dir", str(out), *FINETUNE_ARGS, "--num_topics", "3"])
    metrics = json.loads((out / "all_results.json").read_text())
    assert 0.0 <= metrics["eval_accuracy"] <= 1.0 and 0.0 <= metrics["eval_f1_macro"] <= 1.0
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["SkipNormForSequenceClassification"] and len(config["id2label"]) == 3
    assert "| eval_accuracy |" in (out / "README.md").read_text()


def test_finetune_token_classification_labels_tokens_from_character_spans(tiny_pretrained, tmp_path):
    from training import data, finetune

    text = 'Call "len()" on *cls* here.'
    char_labels = data.character_span_labels(text)
    assert char_labels[text.index('"')] == 1 and char_labels[text.index("*cls*") + 2] == 2 and char_labels[0] == 0
    # offsets of a space-led token start at the space: its label is that of its first visible character
    assert finetune.token_labels(char_labels, [(0, 0), (4, 12), (12, 15), (15, 21)], text) == [-100, 1, 0, 2]
    metrics = finetune.main(["--model_name_or_path", str(tiny_pretrained), "--output_dir", str(tmp_path / "spans"),
                             "--task", "token", *FINETUNE_ARGS])
    assert 0.0 <= metrics["eval_accuracy"] <= 1.0 and "eval_f1_macro" in metrics

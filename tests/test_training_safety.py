"""Training never loses a run (issue 13): an output folder holding another run is refused, a resume must match
the run it continues, a kill during checkpoint rotation leaves no half-deleted checkpoint, resuming at max_steps
takes no step, and impossible settings, unwritable folders and full disks fail early with the path and cause.

Runs are tiny (d=32, L=2, block 16, a saved tokenizer and a small train file), in-process."""

import errno
import json
import os
import signal
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from training import data, train  # noqa: E402
from training import checkpoints as ck  # noqa: E402
from training import reliable_trainer as rt  # noqa: E402


@pytest.fixture(scope="module")
def small_data(tmp_path_factory):
    """A saved 300-token tokenizer and a train file of ~120 lines from the embedded corpus."""
    folder = tmp_path_factory.mktemp("small_data")
    text = data.reference_topics()["assert"] + data.reference_topics()["customization"][:6000]
    lines = [line for line in text.splitlines() if line.strip()][:120]
    (folder / "train.txt").write_text("\n".join(lines))
    data.train_tokenizer(lines, vocab_size=300).save_pretrained(folder / "tokenizer")
    return folder


def tiny_args(small_data, out, *extra):
    return ["--output_dir", str(out), "--hidden_size", "32", "--num_hidden_layers", "2", "--num_attention_heads", "2",
            "--block_size", "16", "--tokenizer_name", str(small_data / "tokenizer"),
            "--train_file", str(small_data / "train.txt"), "--validation_split_percentage", "10",
            "--per_device_train_batch_size", "4", "--eval_strategy", "no", "--sample_max_new_tokens", "0",
            "--disable_tqdm", "true", "--logging_steps", "1", "--report_to", "none", *extra]


def names(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("checkpoint"))


# ------------------------------------------------------------------------------------- one folder, one run
def test_a_second_run_into_a_used_folder_is_refused_and_overwrite_replaces_it(small_data, tmp_path):
    out = tmp_path / "run"
    train.main(tiny_args(small_data, out, "--max_steps", "4", "--save_steps", "1", "--save_total_limit", "2"))
    assert names(out) == ["checkpoint-3", "checkpoint-4"]  # rotation by step number kept the two newest
    assert all(rt.is_complete_checkpoint(str(out / n)) for n in names(out))
    assert not [p for p in out.iterdir() if p.name.startswith((rt.TRASH_PREFIX, rt.STAGING_DIR))]
    before = load_file(out / "model.safetensors")

    with pytest.raises(ValueError, match=r"already holds files \(.*checkpoint-3.*\).*--overwrite_output_dir") as error:
        train.main(tiny_args(small_data, out, "--max_steps", "2", "--save_steps", "2", "--seed", "1"))
    assert "--resume_from_checkpoint last" in str(error.value)
    assert names(out) == ["checkpoint-3", "checkpoint-4"]  # untouched
    assert all(torch.equal(before[k], v) for k, v in load_file(out / "model.safetensors").items())

    train.main(tiny_args(small_data, out, "--max_steps", "2", "--save_steps", "2", "--seed", "1", "--overwrite_output_dir", "true"))
    assert names(out) == ["checkpoint-2"]  # the old run's higher-numbered checkpoints cannot be resumed from
    assert rt.last_complete_checkpoint(str(out)) == str(out / "checkpoint-2")
    assert json.loads((out / rt.RUN_RECORD).read_text())["seed"] == 1


@pytest.fixture(scope="module")
def finished_run(small_data, tmp_path_factory):
    """A 4-step run with a constant learning rate, checkpointed at steps 2 and 4."""
    out = tmp_path_factory.mktemp("finished") / "run"
    argv = tiny_args(small_data, out, "--max_steps", "4", "--save_steps", "2", "--seed", "7",
                     "--lr_scheduler_type", "constant", "--warmup_steps", "0")
    train.main(argv)
    return out, argv


@pytest.mark.parametrize(
    "change, named",
    [
        (["--seed", "8"], "--seed 8 (the checkpoint's run: 7)"),
        (["--learning_rate", "0.002"], "--learning_rate 0.002 (the checkpoint's run: 0.001)"),
        (["--max_steps", "6"], "--max_steps 6 (the checkpoint's run: 4)"),
        (["--per_device_train_batch_size", "2"], "--per_device_train_batch_size 2 (the checkpoint's run: 4)"),
        (["--lr_scheduler_type", "cosine"], "--lr_scheduler_type 'cosine' (the checkpoint's run: 'constant')"),
        (["--block_size", "8"], "--block_size 8 (the checkpoint's run: 16)"),
        (["--validation_split_percentage", "20"], "--validation_split_percentage 20.0 (the checkpoint's run: 10.0)"),
        (["--norm_position", "post"], "norm_position='post' (checkpoint: 'pre')"),
    ],
    ids=["seed", "lr", "max_steps", "batch", "schedule", "block_size", "split", "cell"],
)
def test_resume_refuses_a_command_that_differs_from_the_checkpoints_run(finished_run, change, named, monkeypatch):
    out, argv = finished_run
    monkeypatch.setattr(data, "load_raw_datasets", _must_not_run)  # refused before any data is read
    with pytest.raises(ValueError) as error:
        train.main([*argv, *change, "--resume_from_checkpoint", str(out / "checkpoint-2")])
    assert named in str(error.value)


def test_resume_into_a_folder_of_another_run_is_refused(finished_run, tmp_path):
    out, argv = finished_run
    other = tmp_path / "other"
    other.mkdir()
    record = json.loads((out / rt.RUN_RECORD).read_text())
    (other / rt.RUN_RECORD).write_text(json.dumps({**record, "seed": 99}))
    argv = [a if a != str(out) else str(other) for a in argv]
    with pytest.raises(ValueError, match=r"holds another run than this command's:\n  --seed 7 \(that folder's run: 99\)"):
        train.main([*argv, "--resume_from_checkpoint", str(out / "checkpoint-2")])


def test_resume_refuses_a_changed_train_file(finished_run, tmp_path):
    out, argv = finished_run
    edited = tmp_path / "train.txt"
    original = argv[argv.index("--train_file") + 1]
    edited.write_text(open(original).read() + "\none more line")
    argv = [a if a != original else str(edited) for a in argv]
    with pytest.raises(ValueError, match=r"--train_file .*sha256 .* \(the checkpoint's run: .*sha256"):
        train.main([*argv, "--resume_from_checkpoint", "last"])


def test_resume_from_the_checkpoint_at_max_steps_takes_no_step_bitwise(finished_run, tmp_path):
    out, argv = finished_run
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(out, copy)  # resume in a copy: the module's other tests use the original
    argv = [a if a != str(out) else str(copy) for a in argv]
    train.main([*argv, "--resume_from_checkpoint", "last"])
    state = json.loads((copy / "checkpoint-4" / "trainer_state.json").read_text())
    assert state["global_step"] == 4
    at_checkpoint, final = load_file(copy / "checkpoint-4" / "model.safetensors"), load_file(copy / "model.safetensors")
    for name, tensor in at_checkpoint.items():  # a constant schedule: one extra step would change every weight
        assert torch.equal(tensor, final[name]), name


# ------------------------------------------------------------------------------------- rotation and kills
def fake_checkpoint(folder, step, complete=True, mtime=None):
    path = folder / f"checkpoint-{step}"
    path.mkdir()
    for name in ("model.safetensors", "optimizer.pt", "trainer_state.json"):
        (path / name).write_bytes(b"x" * 64)
    if complete:
        (path / rt.COMPLETE_MARKER).write_text(json.dumps({"global_step": step}))
    if mtime is not None:
        os.utime(path, (mtime, mtime))
    return path


def test_checkpoint_prefix_is_the_trainers():
    from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

    assert ck.PREFIX_CHECKPOINT_DIR == PREFIX_CHECKPOINT_DIR


def test_rotation_orders_by_step_counts_only_complete_checkpoints_and_keeps_the_best(tmp_path):
    # mtimes in reverse step order (what deleting files inside a folder does): the stock mtime rotation would
    # delete the newest checkpoints
    for step, mtime in ((2, 5000), (4, 4000), (6, 3000), (8, 2000)):
        fake_checkpoint(tmp_path, step, mtime=mtime)
    fake_checkpoint(tmp_path, 10, complete=False)  # half-written by some other tool: neither counted nor deleted
    (tmp_path / "checkpoint-12").mkdir()
    (tmp_path / "checkpoint-12" / rt.COMPLETE_MARKER).write_text(json.dumps({"global_step": 11}))  # wrong step
    assert [os.path.basename(p) for p in rt.complete_checkpoints(str(tmp_path))] == ["checkpoint-2", "checkpoint-4",
                                                                                     "checkpoint-6", "checkpoint-8"]
    deleted = rt.rotate_complete_checkpoints(str(tmp_path), 2, best_model_checkpoint=str(tmp_path / "checkpoint-2"))
    assert sorted(os.path.basename(p) for p in deleted) == ["checkpoint-4", "checkpoint-6"]
    assert names(tmp_path) == ["checkpoint-10", "checkpoint-12", "checkpoint-2", "checkpoint-8"]
    assert rt.last_complete_checkpoint(str(tmp_path)) == str(tmp_path / "checkpoint-8")


KILL_DURING_DELETE = """
import os, shutil, signal, sys
sys.path.insert(0, {root!r})
from training import checkpoints as rt

def rmtree_then_die(path, *args, **kwargs):
    os.remove(os.path.join(path, "model.safetensors"))  # half of the folder is gone ...
    os.kill(os.getpid(), signal.SIGKILL)                # ... when the process is killed

shutil.rmtree = rmtree_then_die
rt.rotate_complete_checkpoints(sys.argv[1], 1)
"""


def test_sigkill_during_rotation_leaves_no_half_deleted_checkpoint(tmp_path):
    for step in (2, 4):
        fake_checkpoint(tmp_path, step)
    driver = tmp_path / "driver.py"
    driver.write_text(KILL_DURING_DELETE.format(root=ROOT))
    result = subprocess.run([sys.executable, str(driver), str(tmp_path)], capture_output=True, text=True, timeout=120,
                            env={**os.environ, "PYTHONPATH": ROOT})
    assert result.returncode == -signal.SIGKILL, result.stderr[-2000:]
    assert names(tmp_path) == ["checkpoint-4"]  # checkpoint-2 is gone from the checkpoint namespace at once
    trash = [p for p in tmp_path.iterdir() if p.name.startswith(rt.TRASH_PREFIX)]
    assert len(trash) == 1 and not (trash[0] / "model.safetensors").exists()  # the half-deleted remains are trash
    assert rt.last_complete_checkpoint(str(tmp_path)) == str(tmp_path / "checkpoint-4")
    rt.sweep_trash(str(tmp_path))  # the next save finishes the deletion
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-4", "driver.py"]


def test_a_checkpoint_without_its_completion_marker_is_not_resumed_from(small_data, tmp_path):
    fake_checkpoint(tmp_path, 2)
    fake_checkpoint(tmp_path, 6, complete=False)
    assert rt.last_complete_checkpoint(str(tmp_path)) == str(tmp_path / "checkpoint-2")
    with pytest.raises(ValueError, match=r"is not a complete checkpoint: it has no checkpoint_complete.json"):
        train.main(tiny_args(small_data, tmp_path, "--max_steps", "2", "--resume_from_checkpoint", str(tmp_path / "checkpoint-6")))


# ------------------------------------------------------------------------------------- impossible settings
def _must_not_run(*args, **kwargs):
    raise AssertionError("data was read (or a tokenizer trained) before the settings were checked")


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--max_steps", "0"], r"--max_steps 0 must be a positive number of optimizer steps"),
        (["--learning_rate", "-0.001"], r"--learning_rate -0.001 must be a finite number >= 0"),
        (["--per_device_train_batch_size", "0"], r"--per_device_train_batch_size 0 must be at least 1"),
        (["--gradient_accumulation_steps", "0"], r"--gradient_accumulation_steps 0 must be at least 1"),
        (["--eval_strategy", "steps", "--eval_steps", "0"], r"--eval_steps 0.0 must be a positive number of steps"),
        (["--save_steps", "0"], r"--save_steps 0.0 must be a positive number of steps"),
        (["--weight_decay", "-1"], r"--weight_decay -1.0 must be a finite number >= 0"),
        (["--save_total_limit", "0"], r"--save_total_limit 0 must be at least 1"),
        (["--mlm_probability", "1.5"], r"--mlm_probability 1.5 must be in \(0, 1\)"),
        (["--on_nonfinite", "ignore"], r"--on_nonfinite 'ignore' is not valid; valid choices: stop, skip"),
        (["--position_embedding", "learned", "--max_position_embeddings", "8"],
         r"--block_size 16 is larger than max_position_embeddings=8"),
        (["--norm_position", "prre"], r"norm_position='prre' is not valid"),
        (["--config_overrides", "norm_postion=post"], r"'norm_postion' is not a SkipNormConfig field; did you mean 'norm_position'"),
        (["--dtype", "float8"], r"--dtype 'float8' is not valid; valid choices: auto, float32, bfloat16, float16"),
    ],
    ids=["max_steps0", "negative_lr", "batch0", "accumulation0", "eval_steps0", "save_steps0", "weight_decay",
         "save_limit0", "mlm_probability", "on_nonfinite", "block_size", "norm_position_typo", "override_typo", "dtype"],
)
def test_impossible_settings_fail_before_the_data_and_the_tokenizer(small_data, tmp_path, monkeypatch, extra, message):
    monkeypatch.setattr(data, "load_raw_datasets", _must_not_run)
    monkeypatch.setattr(data, "train_tokenizer", _must_not_run)
    argv = tiny_args(small_data, tmp_path / "out", "--max_steps", "2", *extra)
    argv.remove("--tokenizer_name")  # a new tokenizer would be trained: the config is checked before that
    argv.remove(str(small_data / "tokenizer"))
    with pytest.raises(ValueError, match=message):
        train.main(argv)
    assert not (tmp_path / "out").exists()


def test_a_one_line_train_file_gets_our_own_error(small_data, tmp_path):
    (tmp_path / "one.txt").write_text("just one line of text, long enough to hold a block of sixteen tokens or more\n")
    argv = tiny_args(small_data, tmp_path / "out", "--max_steps", "2")
    argv[argv.index("--train_file") + 1] = str(tmp_path / "one.txt")
    with pytest.raises(ValueError, match=r"--train_file '.*one.txt' has 1 row\(s\): holding out 10% .* --validation_file"):
        train.main(argv)


def test_an_unwritable_output_folder_is_refused_before_the_data(small_data, tmp_path, monkeypatch):
    monkeypatch.setattr(data, "load_raw_datasets", _must_not_run)
    (tmp_path / "a_file").write_text("")
    with pytest.raises(ValueError, match=r"--output_dir '.*a_file/out' is not writable: Not a directory"):
        train.main(tiny_args(small_data, tmp_path / "a_file" / "out", "--max_steps", "2"))


def test_too_little_free_disk_is_refused_before_training(small_data, tmp_path, monkeypatch):
    import shutil

    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(rt.shutil, "disk_usage", lambda path: usage._replace(free=1000))
    with pytest.raises(ValueError, match=r"--output_dir '.*out': 0.0 MiB free on its disk, but this run needs about"):
        train.main(tiny_args(small_data, tmp_path / "out", "--max_steps", "2"))
    assert not list((tmp_path / "out").glob("checkpoint-*"))


def test_a_full_disk_while_saving_names_the_checkpoint_and_the_cause(small_data, tmp_path, monkeypatch):
    from transformers import Trainer

    def disk_full(self, output_dir):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    out = tmp_path / "out"
    monkeypatch.setattr(Trainer, "_save_optimizer_and_scheduler", disk_full)
    with pytest.raises(rt.CheckpointSaveError) as error:
        train.main(tiny_args(small_data, out, "--max_steps", "2", "--save_steps", "2"))
    text = str(error.value)
    assert f"could not save checkpoint {out / 'checkpoint-2'}: No space left on device (ENOSPC)" in text
    assert "the last complete checkpoint is none" in text
    assert error.value.errno == errno.ENOSPC and not (out / rt.STAGING_DIR).exists() and not names(out)

    # the final save: the message names the output folder and the last complete checkpoint to resume from
    monkeypatch.undo()
    real_save = Trainer._save

    def final_disk_full(self, output_dir=None, state_dict=None):
        if os.path.basename(str(output_dir)) == "out2":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_save(self, output_dir, state_dict)

    monkeypatch.setattr(Trainer, "_save", final_disk_full)
    out2 = tmp_path / "out2"
    with pytest.raises(rt.CheckpointSaveError, match=rf"could not save the model to {out2}: No space left on device"
                       rf".*last complete checkpoint is {out2 / 'checkpoint-2'}.*--resume_from_checkpoint last"):
        train.main(tiny_args(small_data, out2, "--max_steps", "2", "--save_steps", "2"))

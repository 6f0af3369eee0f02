"""Checkpoint folders and output folders: the rules training/reliable_trainer.py and train.py follow, in plain
Python (no torch, no transformers) so that a process can apply them, and a test can kill it, cheaply.

- A `checkpoint-N` counts as complete only when it holds `checkpoint_complete.json` saying step N; the Trainer
  writes it last, in the staging folder, before the atomic rename into place.
- Checkpoints are ordered by step number, never by mtime.
- A checkpoint is deleted by renaming it to `.trash-checkpoint-N-PID` first (one atomic `os.replace`), so a kill
  mid-deletion leaves trash (swept at the next save), never a half-deleted `checkpoint-N`.
- An output folder that holds another run is refused unless overwriting; the run's arguments are recorded in
  `skipnorm_run.json` (in the folder and in every checkpoint) so a resume can check it continues the same run.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil

_log = logging.getLogger(__name__)

PREFIX_CHECKPOINT_DIR = "checkpoint"  # transformers.trainer_utils.PREFIX_CHECKPOINT_DIR (a test checks they agree)
STAGING_DIR = ".staging"
TRASH_PREFIX = ".trash-"  # a checkpoint being deleted; never matched by checkpoint-N, swept at the next save
COMPLETE_MARKER = "checkpoint_complete.json"  # written last into a staged checkpoint: {"global_step": N}
WRITE_PROBE = ".write-test-"  # a file that proves the output folder writable, deleted at once
RUN_RECORD = "skipnorm_run.json"  # the arguments of the run that wrote a folder (training.arguments.run_record)
_CHECKPOINT_NAME = re.compile(rf"{PREFIX_CHECKPOINT_DIR}-(\d+)")


def fsync_dir(folder: str) -> None:
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def fsync_tree(folder: str) -> None:
    """Flush every file under `folder`, then the folders themselves, so the rename publishes data on disk."""
    for root, _, files in os.walk(folder):
        for name in files:
            with open(os.path.join(root, name), "rb") as handle:
                os.fsync(handle.fileno())
        fsync_dir(root)


# ---------------------------------------------------------------------------------------- checkpoint folders
def checkpoint_step(path: str) -> int | None:
    """N for a folder named checkpoint-N, else None."""
    match = _CHECKPOINT_NAME.fullmatch(os.path.basename(os.path.normpath(path)))
    return int(match.group(1)) if match else None


def is_complete_checkpoint(path: str) -> bool:
    """A checkpoint-N folder whose completion marker says step N (written last, before the atomic rename)."""
    step = checkpoint_step(path)
    marker = os.path.join(path, COMPLETE_MARKER)
    if step is None or not os.path.isfile(marker):
        return False
    try:
        with open(marker, encoding="utf-8") as handle:
            return json.load(handle).get("global_step") == step
    except (OSError, ValueError, AttributeError):
        return False


def checkpoint_folders(output_dir: str) -> list[str]:
    """Every checkpoint-N folder directly under output_dir, complete or not, ordered by step number."""
    if not os.path.isdir(output_dir):
        return []
    found = [(checkpoint_step(name), os.path.join(output_dir, name)) for name in os.listdir(output_dir)]
    return [path for step, path in sorted(f for f in found if f[0] is not None) if os.path.isdir(path)]


def complete_checkpoints(output_dir: str) -> list[str]:
    """The complete checkpoint-N folders under output_dir, ordered by step number (oldest first)."""
    return [path for path in checkpoint_folders(output_dir) if is_complete_checkpoint(path)]


def last_complete_checkpoint(output_dir: str) -> str | None:
    complete = complete_checkpoints(output_dir)
    return complete[-1] if complete else None


def _fsync_dir_quietly(folder: str) -> None:
    try:
        fsync_dir(folder)
    except OSError:  # some filesystems refuse fsync on a directory; the rename is still atomic
        pass


def remove_checkpoint(path: str) -> None:
    """Delete a checkpoint so that no kill can leave a half-deleted checkpoint-N: rename it to a trash name in one
    `os.replace`, then delete the trash."""
    parent = os.path.dirname(os.path.normpath(path))
    trash = os.path.join(parent, f"{TRASH_PREFIX}{os.path.basename(os.path.normpath(path))}-{os.getpid()}")
    os.replace(path, trash)
    _fsync_dir_quietly(parent)
    shutil.rmtree(trash)


def sweep_trash(output_dir: str) -> None:
    """Finish deletions a kill interrupted (the `.trash-*` folders); they were never complete checkpoints."""
    if os.path.isdir(output_dir):
        for name in os.listdir(output_dir):
            if name.startswith(TRASH_PREFIX):
                shutil.rmtree(os.path.join(output_dir, name), ignore_errors=True)


def rotate_complete_checkpoints(output_dir: str, save_total_limit: int | None, best_model_checkpoint: str | None = None) -> list[str]:
    """Keep the newest `save_total_limit` complete checkpoints (by step number) plus the best one; delete the other
    complete ones. Incomplete checkpoint-N folders are neither counted nor deleted. Returns the deleted paths."""
    if not save_total_limit or save_total_limit <= 0:
        return []
    complete = complete_checkpoints(output_dir)
    keep = set(complete[-save_total_limit:])
    best = os.path.normpath(best_model_checkpoint) if best_model_checkpoint else None
    if best in {os.path.normpath(p) for p in complete} and best not in {os.path.normpath(p) for p in keep}:
        # the best checkpoint stays; so does the newest (to resume from), even with save_total_limit=1
        keep = set(complete[-max(save_total_limit - 1, 1):]) | {best_model_checkpoint}
    keep = {os.path.normpath(p) for p in keep}
    deleted = [path for path in complete if os.path.normpath(path) not in keep]
    for path in deleted:
        remove_checkpoint(path)
    return deleted


# ------------------------------------------------------------------------------------------- output folder
def check_output_dir(output_dir: str, overwrite: bool, resume: str | None, record: dict | None = None) -> None:
    """Before any data is read: refuse a folder that holds another run (unless `overwrite`, or resuming that run:
    the folder's RUN_RECORD must then match `record`), and prove the folder writable (it may be created, empty).
    Every rank checks; `claim_output_dir` then writes."""
    # Other ranks' write probes (below) are transient and not a run. Every rank checks before the main process
    # claims the folder: train.py claims it after the data's main_process_first barrier.
    existing = sorted(n for n in os.listdir(output_dir) if not n.startswith(WRITE_PROBE)) if os.path.isdir(output_dir) else []
    if existing and not resume and not overwrite:
        shown = ", ".join(existing[:8]) + (f", ... ({len(existing)} entries)" if len(existing) > 8 else "")
        raise ValueError(
            f"--output_dir {output_dir!r} already holds files ({shown}): a new run there would replace another run's "
            "checkpoints, and --resume_from_checkpoint last would then mix the two. Use a new --output_dir, "
            "--resume_from_checkpoint last to continue that run, or --overwrite_output_dir to replace it."
        )
    if resume and record is not None and not overwrite and RUN_RECORD in existing:
        with open(os.path.join(output_dir, RUN_RECORD), encoding="utf-8") as handle:
            differences = run_record_differences(json.load(handle), json.loads(json.dumps(record, default=str)),
                                                 "that folder's run")
        if differences:
            raise ValueError(
                f"--output_dir {output_dir!r} holds another run than this command's:\n  " + "\n  ".join(differences)
                + "\nResume into that run's folder, or give a new --output_dir."
            )
    if os.path.exists(output_dir) and not os.path.isdir(output_dir):
        raise ValueError(f"--output_dir {output_dir!r} is a file, not a folder")
    try:
        os.makedirs(output_dir, exist_ok=True)
        probe = os.path.join(output_dir, f"{WRITE_PROBE}{os.getpid()}")
        with open(probe, "wb") as handle:
            handle.write(b"0")
            handle.flush()
            os.fsync(handle.fileno())
        os.remove(probe)
    except OSError as error:
        raise ValueError(f"--output_dir {output_dir!r} is not writable: {error.strerror or error}") from None


def claim_output_dir(output_dir: str, overwrite: bool, resume: str | None, record: dict | None) -> None:
    """Main process, just before training: with `overwrite`, delete the old run's checkpoints (so
    `--resume_from_checkpoint last` can never pick them); record this run's arguments (RUN_RECORD)."""
    if overwrite and not resume:
        removed = checkpoint_folders(output_dir)
        for path in removed:
            remove_checkpoint(path)
        for name in (STAGING_DIR, RUN_RECORD):
            target = os.path.join(output_dir, name)
            if os.path.isdir(target):
                shutil.rmtree(target)
            elif os.path.exists(target):
                os.remove(target)
        sweep_trash(output_dir)
        if removed:
            _log.warning(f"--overwrite_output_dir: deleted {[os.path.basename(p) for p in removed]} from {output_dir}")
    if record is not None:
        with open(os.path.join(output_dir, RUN_RECORD), "w", encoding="utf-8") as handle:
            json.dump(record, handle, indent=2, sort_keys=True)


# ------------------------------------------------------------------------------------------------ resuming
def run_record_differences(saved: dict, current: dict, whose: str = "the checkpoint's run") -> list[str]:
    """'--name NEW (the checkpoint's run: OLD)' for every recorded option whose value differs."""
    return [
        f"--{name} {current.get(name)!r} ({whose}: {saved.get(name)!r})"
        for name in sorted(set(saved) | set(current))
        if saved.get(name) != current.get(name)
    ]


def resolve_resume(value: str | None, output_dir: str) -> str | None:
    """--resume_from_checkpoint PATH (a complete checkpoint), or 'true'/'last' for the newest complete checkpoint
    in --output_dir."""
    if value is None:
        return None
    if value.lower() in ("true", "last"):
        last = last_complete_checkpoint(output_dir)
        if last is None:
            broken = [os.path.basename(p) for p in checkpoint_folders(output_dir)]
            raise ValueError(
                f"--resume_from_checkpoint {value}: no complete checkpoint-N folder in {output_dir!r}"
                + (f" (incomplete, without {COMPLETE_MARKER}: {broken})" if broken else "")
            )
        return last
    if not os.path.isdir(value):
        raise FileNotFoundError(f"--resume_from_checkpoint {value!r} is not a folder")
    if not is_complete_checkpoint(value):
        raise ValueError(
            f"--resume_from_checkpoint {value!r} is not a complete checkpoint: it has no {COMPLETE_MARKER} for its step "
            "(half-written, or not written by training/train.py). Resume from a complete one (--resume_from_checkpoint last)."
        )
    return value


def check_resume_matches(resume: str, record: dict) -> None:
    """The checkpoint must come from a run with the same seed, data, schedule, batch and steps as this command."""
    path = os.path.join(resume, RUN_RECORD)
    if not os.path.isfile(path):
        raise ValueError(f"--resume_from_checkpoint {resume!r} has no {RUN_RECORD}: its run's arguments cannot be checked")
    with open(path, encoding="utf-8") as handle:
        saved = json.load(handle)
    differences = run_record_differences(saved, json.loads(json.dumps(record, default=str)))
    if differences:
        raise ValueError(
            f"--resume_from_checkpoint {resume}: this command differs from the run that wrote the checkpoint:\n  "
            + "\n  ".join(differences)
            + f"\nResume with that run's options, or start a new run (another --output_dir; --model_name_or_path "
            f"{resume} continues from its weights with a fresh optimizer and schedule)."
        )

"""`SkipNormTrainer`: the transformers `Trainer` with the guarantees the stock one (5.24) does not give.

1. Checkpoints are complete or absent. The stock `_save_checkpoint` writes model, optimizer, scheduler, RNG and
   trainer state one file at a time straight into `checkpoint-N/`, so a crash while saving leaves a folder that
   `resume_from_checkpoint=True` would pick and load half-written. Here every file is written into
   `<output_dir>/.staging/checkpoint-N/`, then a completion marker (`checkpoint_complete.json`) is written last,
   everything is flushed to disk, and the folder is renamed into place in one `os.replace` (atomic on POSIX
   within a filesystem). Only a `checkpoint-N` holding the marker for step N counts as complete
   (`training/checkpoints.py`: `complete_checkpoints`, `last_complete_checkpoint`): a staging leftover, a folder copied by hand half-way
   or one written by another tool is never resumed from.
   Rotation (`save_total_limit`) orders checkpoints by step number, not by mtime (deleting files inside a folder
   refreshes its mtime, so the stock mtime order can delete complete checkpoints and keep a broken one), counts
   only complete ones, and deletes a checkpoint by first renaming it to `.trash-checkpoint-N` (atomic), so a kill
   during the deletion leaves a `.trash-*` folder that is swept at the next save, never a half-deleted
   `checkpoint-N`.
   A save that fails (a full disk: `OSError(ENOSPC)`) raises `CheckpointSaveError` naming the checkpoint path,
   the cause and the last complete checkpoint; the partial files are removed.
2. A non-finite loss or gradient stops training with a `NonFiniteTrainingError` naming the optimizer step,
   the loss and the first parameter (in model order) whose gradient is not finite, before the optimizer applies
   it: the weights in memory and every checkpoint on disk stay the last good ones. With
   `on_nonfinite="skip"` the step's update is dropped instead (gradients set to None, so AdamW changes neither
   the weights nor its moments) and training continues; the count is logged as `nonfinite_skipped_steps`.
3. `eval_perplexity = exp(eval_loss)` is logged beside `eval_loss` (for language modelling runs).
4. Resuming from a checkpoint taken at (or past) the last step runs no optimizer step: the stock loop takes one
   more step before it checks `max_steps` (global_step ends at 13 of 12, and the weights change).
5. With `run_record` (a dict of the run's arguments, from train.py/finetune.py), every checkpoint carries it
   as `skipnorm_run.json`, so a resume can check that it continues the same run (`checkpoints.check_resume_matches`).

The gradient check runs where the stock loop computes the gradient norm: after the backward pass of the last
micro-batch (so after DDP's all-reduce: every rank sees the same gradients and makes the same decision) and
before clipping (clipping by a non-finite norm would turn every gradient into NaN and hide where it started).
"""

from __future__ import annotations

import errno
import json
import math
import os
import shutil

import torch
from transformers import Trainer
from transformers.trainer import TRAINER_STATE_NAME
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
from transformers.utils import logging

from training.checkpoints import (  # noqa: F401  (re-exported: the folder rules the Trainer follows)
    COMPLETE_MARKER,
    RUN_RECORD,
    STAGING_DIR,
    TRASH_PREFIX,
    check_output_dir,
    checkpoint_folders,
    checkpoint_step,
    claim_output_dir,
    complete_checkpoints,
    fsync_dir,
    fsync_tree,
    is_complete_checkpoint,
    last_complete_checkpoint,
    remove_checkpoint,
    rotate_complete_checkpoints,
    sweep_trash,
)

logger = logging.get_logger(__name__)

ON_NONFINITE_CHOICES = ("stop", "skip")


class NonFiniteTrainingError(RuntimeError):
    """Raised when a training step produced a non-finite loss or gradient and on_nonfinite='stop'."""


class CheckpointSaveError(OSError):
    """A checkpoint or the final model could not be written (full disk, permissions): names the path and cause."""


class SkipNormTrainer(Trainer):
    """Trainer with atomic checkpoints, a non-finite guard and perplexity logging (see the module docstring)."""

    def __init__(self, *args, on_nonfinite: str = "stop", report_perplexity: bool = False,
                 run_record: dict | None = None, **kwargs):
        if on_nonfinite not in ON_NONFINITE_CHOICES:
            raise ValueError(f"on_nonfinite={on_nonfinite!r} is not valid; valid choices: {', '.join(ON_NONFINITE_CHOICES)}")
        super().__init__(*args, **kwargs)
        self.on_nonfinite = on_nonfinite
        self.report_perplexity = report_perplexity
        self.run_record = run_record
        self.nonfinite_skipped_steps = 0
        self._staging = False
        self._step_losses: list[torch.Tensor] = []  # this optimizer step's micro-batch losses (detached)

    # ------------------------------------------------------------------ 1. atomic checkpoints
    def _get_output_dir(self, trial) -> str:
        run_dir = super()._get_output_dir(trial)
        return os.path.join(run_dir, STAGING_DIR) if self._staging else run_dir

    def _save_checkpoint(self, model, trial) -> None:
        run_dir = super()._get_output_dir(trial)
        name = f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        staging_root = os.path.join(run_dir, STAGING_DIR)
        staged, final = os.path.join(staging_root, name), os.path.join(run_dir, name)
        if self.args.should_save:
            sweep_trash(run_dir)  # deletions a kill interrupted
            if os.path.isdir(staging_root):
                shutil.rmtree(staging_root)  # leftovers of a run killed while saving: never complete, never used
        self.accelerator.wait_for_everyone()
        try:
            self._staging = True
            try:
                super()._save_checkpoint(model, trial)  # every rank writes its files (RNG state) into `staged`
            finally:
                self._staging = False
            best = self.state.best_model_checkpoint
            if best and os.path.dirname(best) == staging_root:
                # The stock method recorded the staged path as the best checkpoint; record where it will live.
                self.state.best_model_checkpoint = os.path.join(run_dir, os.path.basename(best))
                if self.args.should_save:
                    self.state.save_to_json(os.path.join(staged, TRAINER_STATE_NAME))
            self.accelerator.wait_for_everyone()
            if self.args.should_save:
                self._write_json(os.path.join(staged, RUN_RECORD), self.run_record)
                self._write_json(os.path.join(staged, COMPLETE_MARKER), {"global_step": self.state.global_step})
                fsync_tree(staged)
                self._publish(staged, final, run_dir)
                os.rmdir(staging_root)  # empty now; its absence says no save is in progress
        except OSError as error:
            if self.args.should_save:
                shutil.rmtree(staging_root, ignore_errors=True)  # partial files: never complete, and they hold space
            raise self._save_error(f"could not save checkpoint {final}", error) from error
        if self.args.should_save:
            self._publish_checkpoint(run_dir)
        self.accelerator.wait_for_everyone()

    @staticmethod
    def _write_json(path: str, payload: dict | None) -> None:
        if payload is not None:
            with open(path, "w", encoding="utf-8") as handle:
                json.dump(payload, handle, indent=2, sort_keys=True)

    @staticmethod
    def _publish(staged: str, final: str, run_dir: str) -> None:
        """Move the staged checkpoint into place. The same step saved twice (a rerun): the old folder is renamed to
        trash first, so at every instant checkpoint-N is either the old complete folder or the new one."""
        trash = None
        if os.path.isdir(final):
            trash = os.path.join(run_dir, f"{TRASH_PREFIX}{os.path.basename(final)}-{os.getpid()}")
            os.replace(final, trash)
        os.replace(staged, final)
        fsync_dir(run_dir)
        if trash:
            shutil.rmtree(trash)

    def _save_error(self, what: str, error: OSError) -> CheckpointSaveError:
        cause = error.strerror or str(error)
        code = errno.errorcode.get(error.errno, "") if error.errno else ""
        last = last_complete_checkpoint(self.args.output_dir)
        hint = " Free space on that disk (or point --output_dir elsewhere)" if error.errno == errno.ENOSPC else ""
        return CheckpointSaveError(
            error.errno,
            f"{what}: {cause}{f' ({code})' if code else ''}"
            f"{f' writing {error.filename}' if error.filename else ''}. The partial files were removed; the last "
            f"complete checkpoint is {last or 'none'}.{hint}"
            + (" and resume with --resume_from_checkpoint last." if hint and last else ""),
        )

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False):
        if _internal_call:  # inside _save_checkpoint, which reports its own failures
            return super().save_model(output_dir, _internal_call)
        try:
            return super().save_model(output_dir, _internal_call)
        except OSError as error:
            raise self._save_error(f"could not save the model to {output_dir or self.args.output_dir}", error) from error

    def _publish_checkpoint(self, run_dir: str) -> None:
        # The stock method ran its best-model bookkeeping and rotation against the staging folder; redo both
        # against the real one, by step number and over complete checkpoints only.
        if self.state.best_global_step:
            best = os.path.join(run_dir, f"{PREFIX_CHECKPOINT_DIR}-{self.state.best_global_step}")
            if os.path.isdir(best):
                self.state.best_model_checkpoint = best
        rotate_complete_checkpoints(run_dir, self.args.save_total_limit, self.state.best_model_checkpoint)

    def checkpoint_bytes(self) -> int:
        """About what one checkpoint takes on disk: the weights plus AdamW's two moments, plus 1 MiB of state."""
        weights = sum(p.numel() * p.element_size() for p in self.model.parameters())
        return 3 * weights + 2**20

    def check_free_space(self) -> None:
        """Before training: refuse when the output folder's disk cannot hold two checkpoints (one kept while the
        next is staged) and the final model, rather than failing at the first save."""
        if not self.args.should_save:
            return
        needed = 2 * self.checkpoint_bytes() + self.checkpoint_bytes() // 3
        free = shutil.disk_usage(self.args.output_dir).free
        if free < needed:
            raise ValueError(
                f"--output_dir {self.args.output_dir!r}: {free / 2**20:.1f} MiB free on its disk, but this run needs about "
                f"{needed / 2**20:.1f} MiB (two checkpoints of weights + optimizer state, and the final model): free "
                "space or choose another --output_dir"
            )

    # ------------------------------------------------------------------ 4. no step past max_steps on resume
    def _run_epoch(self, *args, **kwargs):
        if 0 < self.state.max_steps <= self.state.global_step:
            # Resumed from the checkpoint taken at the last step: the stock loop would take one more step before
            # its max_steps check. Nothing is left to train.
            self.control.should_training_stop = True
            return None
        return super()._run_epoch(*args, **kwargs)

    # ------------------------------------------------------------------ 2. non-finite guard
    def training_step(self, model, inputs, num_items_in_batch=None):
        loss = super().training_step(model, inputs, num_items_in_batch)
        self._step_losses.append(loss.detach())  # checked once per optimizer step: no device sync here
        return loss

    def _clip_grad_norm(self, model):
        self._guard_gradients(model)
        return super()._clip_grad_norm(model)

    def _get_grad_norm(self, model, grad_norm=None):
        if grad_norm is None:  # max_grad_norm == 0: _clip_grad_norm was not called, so check here
            self._guard_gradients(model)
        return super()._get_grad_norm(model, grad_norm)

    def _guard_gradients(self, model) -> None:
        losses, self._step_losses = self._step_losses, []
        named_grads = [(name, p.grad) for name, p in model.named_parameters() if p.grad is not None]
        # One flag tensor and one host sync per optimizer step, not one per parameter.
        finite = [torch.isfinite(loss).all().to(self.args.device) for loss in losses]
        finite += [torch.isfinite(grad).all().to(self.args.device) for _, grad in named_grads]
        local_flag = (~torch.stack(finite)).any().float() if finite else torch.zeros((), device=self.args.device)
        # The loss is per rank; gradients are already all-reduced. Agree on one decision so no rank is left
        # waiting in a collective that the others skipped.
        if self.accelerator.num_processes > 1:
            local_flag = self.accelerator.reduce(local_flag, reduction="sum")
        if local_flag.item() == 0:
            return
        loss_values = [loss.item() for loss in losses]
        bad_loss = next((value for value in loss_values if not math.isfinite(value)), None)
        bad_params = [name for name, grad in named_grads if not torch.isfinite(grad).all()]
        step = self.state.global_step + 1  # the optimizer step being computed (global_step counts finished ones)
        where = self._first_bad_parameter(bad_params)
        loss_text = f"loss {bad_loss}" if bad_loss is not None else f"loss finite on this rank ({loss_values})"
        if self.on_nonfinite == "skip":
            self.nonfinite_skipped_steps += 1
            logger.warning(f"Skipping optimizer step {step}: non-finite {loss_text}; {where}.")
            model.zero_grad(set_to_none=True)  # AdamW skips parameters without .grad: no update, moments kept
            return
        last_good = last_complete_checkpoint(self.args.output_dir)
        raise NonFiniteTrainingError(
            f"Non-finite training step at optimizer step {step} (epoch {self.state.epoch or 0:.2f}): {loss_text}; "
            f"{where}. Training stopped before applying the update; the last good checkpoint is "
            f"{last_good or 'none (no checkpoint was saved yet)'}. Lower the learning rate, enable warm-up or "
            "gradient clipping, or pass --on_nonfinite skip to drop such steps."
        )

    @staticmethod
    def _first_bad_parameter(bad_params: list[str]) -> str:
        if not bad_params:
            return "all gradients are finite on this rank"
        name = bad_params[0].removeprefix("module.")  # DDP wraps the model as `module`
        parts = name.split(".")
        layer = f"layer {parts[parts.index('layers') + 1]} " if "layers" in parts else ""
        return (
            f"first non-finite gradient in {layer}parameter {name} "
            f"({len(bad_params)} parameter tensor(s) with non-finite gradients)"
        )

    # ------------------------------------------------------------------ 3. perplexity
    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if self.report_perplexity and "eval_loss" in logs:
            # exp overflows above ~709; report inf rather than raising
            logs["eval_perplexity"] = math.exp(logs["eval_loss"]) if logs["eval_loss"] < 700 else float("inf")
        if self.nonfinite_skipped_steps and "loss" in logs:
            logs["nonfinite_skipped_steps"] = self.nonfinite_skipped_steps
        super().log(logs, start_time)

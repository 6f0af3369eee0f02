"""`SkipNormTrainer`: the transformers `Trainer` with three guarantees the stock one (5.24) does not give.

1. Checkpoints are complete or absent. The stock `_save_checkpoint` writes model, optimizer, scheduler, RNG and
   trainer state one file at a time straight into `checkpoint-N/`, so a crash while saving leaves a folder that
   `resume_from_checkpoint=True` would pick and load half-written. Here every file is written into
   `<output_dir>/.staging/checkpoint-N/`, flushed to disk, and the folder is renamed into place in one
   `os.replace` (atomic on POSIX within a filesystem). `get_last_checkpoint` only matches `checkpoint-<digits>`
   directly under `output_dir`, so a staging leftover is never resumed from.
2. A non-finite loss or gradient stops training with a `NonFiniteTrainingError` naming the optimizer step,
   the loss and the first parameter (in model order) whose gradient is not finite, before the optimizer applies
   it: the weights in memory and every checkpoint on disk stay the last good ones. With
   `on_nonfinite="skip"` the step's update is dropped instead (gradients set to None, so AdamW changes neither
   the weights nor its moments) and training continues; the count is logged as `nonfinite_skipped_steps`.
3. `eval_perplexity = exp(eval_loss)` is logged beside `eval_loss` (for language modelling runs).

The gradient check runs where the stock loop computes the gradient norm: after the backward pass of the last
micro-batch (so after DDP's all-reduce: every rank sees the same gradients and makes the same decision) and
before clipping (clipping by a non-finite norm would turn every gradient into NaN and hide where it started).
"""

from __future__ import annotations

import math
import os
import shutil

import torch
from transformers import Trainer
from transformers.trainer import TRAINER_STATE_NAME
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, get_last_checkpoint, rotate_checkpoints
from transformers.utils import logging

logger = logging.get_logger(__name__)

STAGING_DIR = ".staging"
ON_NONFINITE_CHOICES = ("stop", "skip")


class NonFiniteTrainingError(RuntimeError):
    """Raised when a training step produced a non-finite loss or gradient and on_nonfinite='stop'."""


def _fsync_tree(folder: str) -> None:
    """Flush every file under `folder`, then the folders themselves, so the rename publishes data on disk."""
    for root, _, files in os.walk(folder):
        for name in files:
            with open(os.path.join(root, name), "rb") as handle:
                os.fsync(handle.fileno())
        _fsync_dir(root)


def _fsync_dir(folder: str) -> None:
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


class SkipNormTrainer(Trainer):
    """Trainer with atomic checkpoints, a non-finite guard and perplexity logging (see the module docstring)."""

    def __init__(self, *args, on_nonfinite: str = "stop", report_perplexity: bool = False, **kwargs):
        if on_nonfinite not in ON_NONFINITE_CHOICES:
            raise ValueError(f"on_nonfinite={on_nonfinite!r} is not valid; valid choices: {', '.join(ON_NONFINITE_CHOICES)}")
        super().__init__(*args, **kwargs)
        self.on_nonfinite = on_nonfinite
        self.report_perplexity = report_perplexity
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
        if self.args.should_save and os.path.isdir(staging_root):
            shutil.rmtree(staging_root)  # leftovers of a run killed while saving: never complete, never used
        self.accelerator.wait_for_everyone()
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
            _fsync_tree(staged)
            if os.path.isdir(final):  # the same step saved twice (e.g. a rerun): the new one replaces it
                shutil.rmtree(final)
            os.replace(staged, final)
            os.rmdir(staging_root)  # empty now; its absence says no save is in progress
            _fsync_dir(run_dir)
            self._publish_checkpoint(run_dir)
        self.accelerator.wait_for_everyone()

    def _publish_checkpoint(self, run_dir: str) -> None:
        # The stock method ran its best-model bookkeeping and rotation against the staging folder; redo both
        # against the real one.
        if self.state.best_global_step:
            best = os.path.join(run_dir, f"{PREFIX_CHECKPOINT_DIR}-{self.state.best_global_step}")
            if os.path.isdir(best):
                self.state.best_model_checkpoint = best
        rotate_checkpoints(
            output_dir=run_dir,
            save_total_limit=self.args.save_total_limit,
            best_model_checkpoint=self.state.best_model_checkpoint,
            use_mtime=True,
        )

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
        last_good = get_last_checkpoint(self.args.output_dir) if os.path.isdir(self.args.output_dir) else None
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

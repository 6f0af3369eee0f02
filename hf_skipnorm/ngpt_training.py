"""nGPT's training rule as a `transformers.TrainerCallback` (arXiv 2410.01131; NVIDIA/ngpt train.py).

nGPT keeps its embeddings and matrix rows on the unit sphere by normalizing them again after every optimizer step
(NVIDIA/ngpt: ``normalize_matrices()`` right after ``optimizer.step()``), and trains without weight decay (and
without learning-rate warm-up). `NGPTNormalizeCallback` does both with the stock `Trainer`:

    trainer = Trainer(model=model, args=TrainingArguments(..., weight_decay=0.0),
                      callbacks=[NGPTNormalizeCallback()])

- ``on_train_begin``: refuses ``weight_decay != 0`` (ValueError naming the value) and a model that is not nGPT,
  then normalizes once (so a model loaded from elsewhere starts on the sphere);
- ``on_optimizer_step``: runs after every ``optimizer.step()`` (once per gradient-accumulation cycle, before
  ``zero_grad``), and normalizes every weight `ngpt_skipnorm.ngpt_unit_weights` lists.

This module is for training only: it does not travel with a checkpoint (nothing in the model imports it).
"""

from __future__ import annotations

from transformers import TrainerCallback

from .ngpt_skipnorm import normalize_ngpt_weights_


def _unwrap(model):
    """The model the Trainer hands to callbacks may be wrapped (DDP, accelerate); its `.module` is ours."""
    while hasattr(model, "module") and not hasattr(model, "config"):
        model = model.module
    return model


class NGPTNormalizeCallback(TrainerCallback):
    """Renormalize nGPT's weights after every optimizer step, and refuse weight decay (see the module docstring)."""

    @staticmethod
    def check_arguments(args, config) -> None:
        """Refuse a run nGPT does not define, before any work: another architecture, or weight decay."""
        architecture = getattr(config, "architecture", None)
        if architecture != "ngpt":
            raise ValueError(
                f"NGPTNormalizeCallback needs a model with SkipNormConfig.architecture='ngpt', got {architecture!r}: "
                f"renormalizing the weights of any other model would change what it computes"
            )
        if args.weight_decay != 0:
            raise ValueError(
                f"TrainingArguments.weight_decay={args.weight_decay!r} is not valid for nGPT: the paper (arXiv "
                f"2410.01131; NVIDIA/ngpt train.py) trains without weight decay, its weights live on the unit sphere "
                f"and its scalings would be pulled toward 0; valid choices: 0.0 (train.py: --weight_decay 0)"
            )

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        model = _unwrap(model)
        self.check_arguments(args, getattr(model, "config", None))
        normalize_ngpt_weights_(model)

    def on_optimizer_step(self, args, state, control, model=None, **kwargs):
        normalize_ngpt_weights_(_unwrap(model))


__all__ = ["NGPTNormalizeCallback"]

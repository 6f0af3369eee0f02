"""How the skip combines: the residual registry (`residual` -> module ``R(x, y)``).

``x`` is the stream entering the sublayer, ``y`` the (normalized) branch output. The combine is a module, not an
inline ``+``, so forward hooks can watch it (OLMo-core does the same) and a residual style is one class.
"""

from __future__ import annotations

import torch
from torch import nn

from .configuration_skipnorm import SkipNormConfig


class AddResidual(nn.Module):
    """``x + y``: the identity skip, He et al. 2016 (arXiv 1512.03385)."""

    def __init__(self, config: SkipNormConfig, layer_idx: int, sublayer: str):
        super().__init__()

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return x + y


class NoResidual(nn.Module):
    """``y``: no skip path at all, the ablation behind rank collapse (Dong et al. 2021, arXiv 2103.03404)."""

    def __init__(self, config: SkipNormConfig, layer_idx: int, sublayer: str):
        super().__init__()

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return y


class ScaledResidual(nn.Module):
    """``a * x + m * y`` with constants ``a = residual_alpha``, ``m = branch_multiplier`` (Granite, MiniCPM)."""

    def __init__(self, config: SkipNormConfig, layer_idx: int, sublayer: str):
        super().__init__()
        # Python floats, not buffers: meta-device loading would wipe a buffer (HF_NOTES.md).
        self.alpha = float(config.residual_alpha)
        self.multiplier = float(config.branch_multiplier)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.alpha * x + self.multiplier * y

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}, multiplier={self.multiplier}"


RESIDUAL_CLASSES: dict[str, type[nn.Module]] = {
    "add": AddResidual,
    "none": NoResidual,
    "scaled": ScaledResidual,
}


def build_residual(config: SkipNormConfig, layer_idx: int, sublayer: str) -> nn.Module:
    """The combine module for `sublayer` ("attn" or "mlp") of block `layer_idx`."""
    try:
        residual_class = RESIDUAL_CLASSES[config.residual]
    except KeyError:
        raise ValueError(
            f"SkipNormConfig.residual={config.residual!r} is not valid; valid choices: {', '.join(RESIDUAL_CLASSES)}"
        ) from None
    return residual_class(config, layer_idx, sublayer)

"""What `N` is: the norm registry (`norm_type` -> class).

Each class takes ``(dim, config)`` so a new norm is one class plus one registry row. The gain is stored as ``w``
and used as ``w`` or, with ``norm_unit_offset``, as ``1 + w`` (Gemma): the offset is chosen once at construction,
never tested in `forward`. Statistics are computed in at least float32 (bf16 variance underflows), in float64 for float64 inputs.
"""

from __future__ import annotations

import torch
from torch import nn
import torch.nn.functional as F

from .configuration_skipnorm import SkipNormConfig


def _stats_dtype(x: torch.Tensor) -> torch.dtype:
    """float32 for half-precision inputs (bf16 variance underflows), the input's own dtype for float32/float64."""
    return torch.promote_types(x.dtype, torch.float32)


class SkipNormLayerNorm(nn.Module):
    """LayerNorm, Ba et al. 2016 (arXiv 1607.06450): ``g * (x - mean) / sqrt(var + eps) + b``."""

    def __init__(self, dim: int, config: SkipNormConfig):
        super().__init__()
        self.eps = config.norm_eps
        self.unit_offset = 1.0 if config.norm_unit_offset else 0.0  # gain = unit_offset + weight
        self.weight = nn.Parameter(torch.empty(dim))
        self.bias = nn.Parameter(torch.empty(dim)) if config.norm_bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (..., dim)
        dtype = _stats_dtype(x)
        gain = (self.weight + self.unit_offset).to(dtype)
        bias = None if self.bias is None else self.bias.to(dtype)
        return F.layer_norm(x.to(dtype), gain.shape, gain, bias, self.eps).to(x.dtype)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}, bias={self.bias is not None}, unit_offset={bool(self.unit_offset)}"


class SkipNormRMSNorm(nn.Module):
    """RMSNorm, Zhang & Sennrich 2019 (arXiv 1910.07467): ``g * x / sqrt(mean(x^2) + eps)``."""

    def __init__(self, dim: int, config: SkipNormConfig):
        super().__init__()
        self.eps = config.norm_eps
        self.unit_offset = 1.0 if config.norm_unit_offset else 0.0
        self.weight = nn.Parameter(torch.empty(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (..., dim)
        dtype = _stats_dtype(x)
        xs = x.to(dtype)
        normed = xs * torch.rsqrt(xs.pow(2).mean(-1, keepdim=True) + self.eps)
        return (normed * (self.weight.to(dtype) + self.unit_offset)).to(x.dtype)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}, unit_offset={bool(self.unit_offset)}"


class Identity(nn.Identity):
    """An absent slot: returns its input. It is an `nn.Identity` (no parameters, no state-dict keys) called without
    `nn.Module.__call__`'s hook dispatch, which costs about a microsecond per call; a LLaMA-cell block has ten absent
    slots, all called for every decoded token (benchmarks/RESULTS.md). Hooks on an absent slot therefore never fire:
    hook the block, the branch (`self_attn`, `mlp`) or the residual module instead."""

    def __call__(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        return x


class NoNorm(Identity):
    """`norm_type="none"`: the identity (no parameters)."""

    def __init__(self, dim: int, config: SkipNormConfig):
        super().__init__()


NORM_CLASSES: dict[str, type[nn.Module]] = {
    "layernorm": SkipNormLayerNorm,
    "rmsnorm": SkipNormRMSNorm,
    "none": NoNorm,
}


def build_norm(config: SkipNormConfig, dim: int, present: bool = True) -> nn.Module:
    """The configured norm over `dim`, or `nn.Identity` when the slot is absent (so `forward` never tests a flag)."""
    if not present:
        return Identity()
    try:
        norm_class = NORM_CLASSES[config.norm_type]
    except KeyError:
        raise ValueError(
            f"SkipNormConfig.norm_type={config.norm_type!r} is not valid; valid choices: {', '.join(NORM_CLASSES)}"
        ) from None
    return norm_class(dim, config)

"""What `N` is: the norm registry (`norm_type` -> class).

Each class takes ``(dim, config)`` so a new norm is one class plus one registry row. The gain is stored as ``w``
and used as ``w`` or, with ``norm_unit_offset``, as ``1 + w`` (Gemma): the offset is chosen once at construction,
never tested in `forward`. Statistics are computed in at least float32 (bf16 variance underflows), in float64 for float64 inputs.

Every norm also multiplies its output by ``output_scale``, a Python float fixed at construction: 1.0 except for the
input norms of LayerNorm Scaling (``1/sqrt(l)``, arXiv 2502.05795). Initial values live in
`SkipNormPreTrainedModel._init_weights`; the constants that init needs (DyT's ``alpha`` init, ScaleNorm's
``sqrt(d)``) are Python attributes set here from the config, so meta-device loading cannot wipe them.
"""

from __future__ import annotations

import functools
import math

import torch
from torch import nn
import torch.nn.functional as F
from torch.nn.modules import module as _torch_module

from .configuration_skipnorm import SkipNormConfig


def _unchanged(t: torch.Tensor) -> torch.Tensor:
    return t


def _offset_and_scale(t: torch.Tensor, offset: float, scale: float) -> torch.Tensor:
    return (t + offset) * scale


def fold_affine(offset: float, scale: float):
    """``t -> (t + offset) * scale`` with Python-float constants, chosen at construction: the identity when there is
    nothing to fold, so the common cell (no unit offset, no depth scaling) spends no tensor op per call on it (two
    scalar ops per norm were a measurable share of a CPU decode step, benchmarks/RESULTS.md)."""
    if offset == 0.0 and scale == 1.0:
        return _unchanged
    return functools.partial(_offset_and_scale, offset=offset, scale=scale)


# float32 statistics for half-precision inputs (bf16 variance underflows), the input's own dtype otherwise; a dict
# lookup rather than torch.promote_types, which is a dispatched op on every norm call.
_HALF_TO_FLOAT32 = {torch.float16: torch.float32, torch.bfloat16: torch.float32}


def _stats_dtype(x: torch.Tensor) -> torch.dtype:
    return _HALF_TO_FLOAT32.get(x.dtype, x.dtype)


def _as(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """`t.to(dtype)` without dispatching an op when `t` already has it (the common float32 case): a no-op `.to` still
    costs a dispatcher round trip, three per norm call, which is a measurable share of a CPU decode step."""
    return t if t.dtype == dtype else t.to(dtype)


class HookableModule(nn.Module):
    """An `nn.Module` whose call goes straight to `forward` while nothing watches it, and through `nn.Module.__call__`
    (hooks, `module.compile()`, `torch.jit.trace`) as soon as anything does.

    `nn.Module.__call__` costs two Python frames (`_wrapped_call_impl`, `_call_impl`) before `forward`; our norms,
    residual combines, attention and MLP run several times per block for every decoded token, where those frames
    were a measurable share of a CPU decode step (benchmarks/RESULTS.md, "Decode-path overhead"). The test below is
    the same one `_call_impl` makes before it skips its hook machinery, so every hook still fires: forward and
    backward hooks, pre-hooks, global hooks. Under `torch.compile` dynamo inlines this `__call__` and guards on the
    hook dicts, as it does for `nn.Module.__call__`.
    """

    def __call__(self, *args, **kwargs):
        if (self._forward_hooks or self._forward_pre_hooks or self._backward_hooks or self._backward_pre_hooks
                or _torch_module._global_forward_hooks or _torch_module._global_forward_pre_hooks
                or _torch_module._global_backward_hooks or _torch_module._global_backward_pre_hooks
                or self._compiled_call_impl is not None or torch._C._get_tracing_state()):
            return nn.Module.__call__(self, *args, **kwargs)
        return self.forward(*args, **kwargs)


class SkipNormLayerNorm(HookableModule):
    """LayerNorm, Ba et al. 2016 (arXiv 1607.06450): ``g * (x - mean) / sqrt(var + eps) + b``."""

    def __init__(self, dim: int, config: SkipNormConfig, sublayer: str = "mlp", output_scale: float = 1.0):
        super().__init__()
        self.eps = config.norm_eps
        self.unit_offset = 1.0 if config.norm_unit_offset else 0.0  # gain = unit_offset + weight
        self.output_scale = float(output_scale)
        self.weight = nn.Parameter(torch.empty(dim))
        self.bias = nn.Parameter(torch.empty(dim)) if config.norm_bias else None
        # output_scale folds into gain and bias ((g*z + b)*s = (g*s)*z + b*s): no extra full-size multiply.
        self.fold_gain = fold_affine(self.unit_offset, self.output_scale)
        self.fold_bias = fold_affine(0.0, self.output_scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (..., dim)
        # _stats_dtype and _as inlined: a Python frame each, four per call, on the decode path of the GPT-2 cell
        dtype = _HALF_TO_FLOAT32.get(x.dtype, x.dtype)
        weight, bias = self.weight, self.bias
        gain = self.fold_gain(weight if weight.dtype == dtype else weight.to(dtype))
        if bias is not None:
            bias = self.fold_bias(bias if bias.dtype == dtype else bias.to(dtype))
        y = F.layer_norm(x if x.dtype == dtype else x.to(dtype), gain.shape, gain, bias, self.eps)
        return y if y.dtype == x.dtype else y.to(x.dtype)

    def extra_repr(self) -> str:
        return (f"{self.weight.shape[0]}, eps={self.eps}, bias={self.bias is not None}, "
                f"unit_offset={bool(self.unit_offset)}, output_scale={self.output_scale:g}")


class SkipNormRMSNorm(HookableModule):
    """RMSNorm, Zhang & Sennrich 2019 (arXiv 1910.07467): ``g * x / sqrt(mean(x^2) + eps)``."""

    def __init__(self, dim: int, config: SkipNormConfig, sublayer: str = "mlp", output_scale: float = 1.0):
        super().__init__()
        self.eps = config.norm_eps
        self.unit_offset = 1.0 if config.norm_unit_offset else 0.0
        self.output_scale = float(output_scale)
        self.weight = nn.Parameter(torch.empty(dim))
        # The scalars fold into the (dim,) gain first: one full-size multiply, not three (benchmarks/RESULTS.md).
        self.fold_gain = fold_affine(self.unit_offset, self.output_scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (..., dim)
        # _stats_dtype and _as inlined: a Python frame each, four per call, on the decode path of the LLaMA cell
        dtype = _HALF_TO_FLOAT32.get(x.dtype, x.dtype)
        xs = x if x.dtype == dtype else x.to(dtype)
        weight = self.weight
        normed = xs * torch.rsqrt(xs.pow(2).mean(-1, keepdim=True) + self.eps)
        y = normed * self.fold_gain(weight if weight.dtype == dtype else weight.to(dtype))
        return y if y.dtype == x.dtype else y.to(x.dtype)

    def extra_repr(self) -> str:
        return (f"{self.weight.shape[0]}, eps={self.eps}, unit_offset={bool(self.unit_offset)}, "
                f"output_scale={self.output_scale:g}")


class SkipNormScaleNorm(HookableModule):
    """ScaleNorm, Nguyen & Salazar 2019 (Transformers without Tears, arXiv 1910.05895): ``g * x / max(||x||, eps)``.

    One learned scalar ``g`` (`scale`), initialized to ``sqrt(dim)`` as in the paper, so at init the output has the
    unit RMS of an RMSNorm.
    """

    def __init__(self, dim: int, config: SkipNormConfig, sublayer: str = "mlp", output_scale: float = 1.0):
        super().__init__()
        self.eps = config.norm_eps
        self.output_scale = float(output_scale)
        self.scale_init = math.sqrt(dim)  # the paper's g init, read by _init_weights
        self.scale = nn.Parameter(torch.empty(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (..., dim)
        dtype = _stats_dtype(x)
        xs = _as(x, dtype)
        norm = torch.linalg.vector_norm(xs, dim=-1, keepdim=True).clamp(min=self.eps)
        return _as(_as(self.scale, dtype) * xs / norm * self.output_scale, x.dtype)

    def extra_repr(self) -> str:
        return f"eps={self.eps}, scale_init={self.scale_init:g}, output_scale={self.output_scale:g}"


class SkipNormSimpleRMSNorm(HookableModule):
    """Simple RMSNorm (SRMSNorm), TransNormerLLM (arXiv 2307.14995): ``x / (||x|| / sqrt(dim) + eps)``, no parameters."""

    def __init__(self, dim: int, config: SkipNormConfig, sublayer: str = "mlp", output_scale: float = 1.0):
        super().__init__()
        self.eps = config.norm_eps
        self.output_scale = float(output_scale)
        self.inv_sqrt_dim = dim**-0.5

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (..., dim)
        dtype = _stats_dtype(x)
        xs = _as(x, dtype)
        rms = torch.linalg.vector_norm(xs, dim=-1, keepdim=True) * self.inv_sqrt_dim
        return _as(xs / (rms + self.eps) * self.output_scale, x.dtype)

    def extra_repr(self) -> str:
        return f"eps={self.eps}, output_scale={self.output_scale:g}"


class SkipNormDynamicTanh(HookableModule):
    """Dynamic Tanh, Zhu et al. 2025 (Transformers without Normalization, arXiv 2503.10622): ``g * tanh(a*x) + b``.

    ``a`` is one learned scalar (`alpha`, init `dyt_alpha_init`, or `dyt_attn_alpha_init` in the attention sublayer as
    the paper does for LLaMA); ``g`` per channel (``1 + w`` with `norm_unit_offset`); ``b`` iff `norm_bias`. They all
    sit under a `*_norm` module name, so the Trainer's no-decay rule skips them.
    """

    def __init__(self, dim: int, config: SkipNormConfig, sublayer: str = "mlp", output_scale: float = 1.0):
        super().__init__()
        self.unit_offset = 1.0 if config.norm_unit_offset else 0.0
        self.output_scale = float(output_scale)
        self.alpha_init = config.dyt_alpha_init_for(sublayer)  # read by _init_weights
        self.alpha = nn.Parameter(torch.empty(1))
        self.weight = nn.Parameter(torch.empty(dim))
        # no b when norm_bias is off (the DyT LLaMA code drops it, as RMSNorm has none)
        self.bias = nn.Parameter(torch.empty(dim)) if config.norm_bias else None

    def squash(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(_as(self.alpha, x.dtype) * x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (..., dim)
        dtype = _stats_dtype(x)
        y = self.squash(_as(x, dtype)) * (_as(self.weight, dtype) + self.unit_offset)
        bias = 0.0 if self.bias is None else _as(self.bias, dtype)
        return _as((y + bias) * self.output_scale, x.dtype)

    def extra_repr(self) -> str:
        return (f"{self.weight.shape[0]}, alpha_init={self.alpha_init:g}, bias={self.bias is not None}, "
                f"unit_offset={bool(self.unit_offset)}, output_scale={self.output_scale:g}")


class SkipNormDynamicErf(SkipNormDynamicTanh):
    """Dynamic erf (Derf), Stronger Normalization-Free Transformers (arXiv 2512.10938): ``g * erf(a*x + s) + b``.

    DyT with ``erf`` for ``tanh`` and a learned scalar shift ``s`` (`shift`, init 0); ``a`` starts at
    `derf_alpha_init` (0.5, the paper's value).
    """

    def __init__(self, dim: int, config: SkipNormConfig, sublayer: str = "mlp", output_scale: float = 1.0):
        super().__init__(dim, config, sublayer, output_scale)
        self.alpha_init = float(config.derf_alpha_init)
        self.shift = nn.Parameter(torch.empty(1))

    def squash(self, x: torch.Tensor) -> torch.Tensor:
        return torch.erf(_as(self.alpha, x.dtype) * x + _as(self.shift, x.dtype))


class Identity(nn.Identity):
    """An absent slot: returns its input. It is an `nn.Identity` (no parameters, no state-dict keys) called without
    `nn.Module.__call__`'s hook dispatch, which costs about a microsecond per call; a LLaMA-cell block has ten absent
    slots, all called for every decoded token (benchmarks/RESULTS.md). Hooks on an absent slot therefore never fire:
    hook the block, the branch (`self_attn`, `mlp`) or the residual module instead."""

    def __call__(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        return x


def through(self: nn.Module, x: torch.Tensor, *slots: str) -> torch.Tensor:
    """`x` through this module's slots named `slots`, in order, skipping absent ones (`Identity`) without calling
    them; used as a method (``through = through``) by the blocks, attention and MLPs.

    ``self.through(y, "attn_out_norm", "branch_dropout")`` computes ``branch_dropout(attn_out_norm(y))``: the same
    formula, minus a Python call and an `nn.Module.__getattr__` lookup per absent slot (a LLaMA-cell block has a
    dozen, all on every decoded token; benchmarks/RESULTS.md, "Decode-path overhead"). Slots are read from
    `self._modules` at call time, so a slot replaced after construction (``block.attn_out_norm = MyNorm(...)``) is
    used from the next call on, and a present slot is called as a module: its hooks fire.
    """
    modules = self._modules
    for name in slots:
        module = modules[name]
        if not isinstance(module, Identity):
            x = module(x)
    return x


class NoNorm(Identity):
    """`norm_type="none"`: the identity (no parameters)."""

    def __init__(self, dim: int, config: SkipNormConfig, sublayer: str = "mlp", output_scale: float = 1.0):
        super().__init__()


NORM_CLASSES: dict[str, type[nn.Module]] = {
    "layernorm": SkipNormLayerNorm,
    "rmsnorm": SkipNormRMSNorm,
    "scalenorm": SkipNormScaleNorm,
    "simple_rmsnorm": SkipNormSimpleRMSNorm,
    "dyt": SkipNormDynamicTanh,
    "derf": SkipNormDynamicErf,
    "none": NoNorm,
}


def build_norm(config: SkipNormConfig, dim: int, present: bool = True, sublayer: str = "mlp",
               output_scale: float = 1.0) -> nn.Module:
    """The configured norm over `dim`, or `nn.Identity` when the slot is absent (so `forward` never tests a flag).

    `sublayer` ("attn", "mlp", "embedding", "final", ...) gives sublayer-specific init (DyT's attention alpha);
    `output_scale` is LayerNorm Scaling's ``1/sqrt(l)`` on input norms.
    """
    if not present:
        return Identity()
    try:
        norm_class = NORM_CLASSES[config.norm_type]
    except KeyError:
        raise ValueError(
            f"SkipNormConfig.norm_type={config.norm_type!r} is not valid; valid choices: {', '.join(NORM_CLASSES)}"
        ) from None
    return norm_class(dim, config, sublayer=sublayer, output_scale=output_scale)

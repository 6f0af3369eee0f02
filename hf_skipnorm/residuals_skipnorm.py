"""How the skip combines: the residual registry (`residual` -> module ``R(x, y)``).

``x`` is the stream entering the sublayer, ``y`` the (normalized) branch output. The combine is a module, not an
inline ``+``, so forward hooks can watch it (OLMo-core does the same) and a residual style is one class; as a
`HookableModule` it skips `nn.Module.__call__` while no hook is registered, so the decode path pays no more than a call.

Learned residual coefficients are stored as learned offsets from their paper init, ``c = c_init + c_bias`` with
``c_init`` a Python constant from the config (ReZero's 0, LayerScale's CaiT value, Admin's profiled omega). The
offset is a bias in the plain sense, so the `Trainer`'s no-decay rule (names containing ``bias``) keeps weight decay
off it, and the model starts at the paper's init by construction. All initial values are set in
`SkipNormPreTrainedModel._init_weights`.

`hyper`, `mhc` and `dense` carry more than one stream; their connection modules live in
hyper_connections_skipnorm.py and their blocks in modeling_skipnorm.py. Inside a DenseFormer block the sublayers
combine with the plain ``x + y``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from .configuration_skipnorm import SkipNormConfig
from .depth_mixing_skipnorm import SublayerDepthAttention
from .hyper_connections_skipnorm import (
    DYNAMIC_SCALE_INIT,
    ManifoldHyperConnection,
    StaticHyperConnection,
    at_least_float32,
    full_precision,
    hyper_connection,
    sublayer_index,
)
from .norms_skipnorm import HookableModule, build_norm


class AddResidual(HookableModule):
    """``x + y``: the identity skip, He et al. 2016 (arXiv 1512.03385)."""

    def __init__(self, config: SkipNormConfig, layer_idx: int, sublayer: str):
        super().__init__()

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return x + y


class NoResidual(HookableModule):
    """``y``: no skip path at all, the ablation behind rank collapse (Dong et al. 2021, arXiv 2103.03404)."""

    def __init__(self, config: SkipNormConfig, layer_idx: int, sublayer: str):
        super().__init__()

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return y


class ScaledResidual(HookableModule):
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


class DeepNormResidual(HookableModule):
    """``alpha * x + y``, inside a post-LN sublayer: DeepNorm ``N(alpha*x + F(x))``, DeepNet (arXiv 2203.00555).

    ``alpha = residual_alpha``, resolved by the config to ``(2L)^(1/4)`` (encoder-only and decoder-only alike); the
    paired init (Xavier-normal gain ``beta = (8L)^(-1/4)`` on v_proj, o_proj and the MLP) is in `_init_weights`.
    """

    def __init__(self, config: SkipNormConfig, layer_idx: int, sublayer: str):
        super().__init__()
        self.alpha = float(config.residual_alpha)  # a Python float: depth constants never live in buffers

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.alpha * x + y

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}"


class AdminResidual(HookableModule):
    """``omega * x + y`` inside a post-LN sublayer, Admin (Liu et al. 2020, arXiv 2004.08249, Sec. 5).

    ``omega`` is per channel and learned: ``omega = omega_init + omega_bias`` with ``omega_init`` this sublayer's
    entry of `admin_omegas` (1 until `admin_profile` fills them: plain post-LN) and ``omega_bias`` 0 at init.
    """

    def __init__(self, config: SkipNormConfig, layer_idx: int, sublayer: str):
        super().__init__()
        self.sublayer_index = sublayer_index(layer_idx, sublayer)
        omegas = config.admin_omegas
        self.omega_init = float(omegas[self.sublayer_index]) if omegas is not None else 1.0
        self.omega_bias = nn.Parameter(torch.empty(config.hidden_size))

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return (self.omega_init + self.omega_bias) * x + y

    def extra_repr(self) -> str:
        return f"sublayer={self.sublayer_index}, omega_init={self.omega_init}"


class ReZeroResidual(HookableModule):
    """``x + a * y`` with one learned scalar ``a`` initialized to 0: ReZero (arXiv 2003.04887), SkipInit (arXiv
    2002.10444). Stored as ``alpha_bias`` (the offset from the init 0, i.e. ``a`` itself). One ``a`` per sublayer;
    the ReZero code shares one between a layer's two sublayers."""

    def __init__(self, config: SkipNormConfig, layer_idx: int, sublayer: str):
        super().__init__()
        self.alpha_bias = nn.Parameter(torch.empty(1))

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return x + self.alpha_bias * y


class LayerScaleResidual(HookableModule):
    """``x + diag(lambda) * y``, LayerScale of CaiT (Touvron et al. 2021, arXiv 2103.17239, Sec. 3.1).

    ``lambda = layerscale_init + lambda_bias`` per channel, ``layerscale_init`` by default CaiT's depth schedule
    (0.1 up to 18 blocks, 1e-5 up to 24, 1e-6 beyond) and ``lambda_bias`` 0 at init.
    """

    def __init__(self, config: SkipNormConfig, layer_idx: int, sublayer: str):
        super().__init__()
        self.lambda_init = float(config.layerscale_init)
        self.lambda_bias = nn.Parameter(torch.empty(config.hidden_size))

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return x + (self.lambda_init + self.lambda_bias) * y

    def extra_repr(self) -> str:
        return f"lambda_init={self.lambda_init}"


# The gate starts mostly closed, sigmoid(-1) = 0.27: Highway networks (Srivastava et al. 2015, arXiv 1505.00387,
# Sec. 2.2) initialize the transform-gate bias negative (-1, -3) so the carry (skip) path dominates early.
GATE_BIAS_INIT = -1.0


class GatedResidual(HookableModule):
    """``x + g * y`` with a per-channel gate ``g = sigmoid(W_g [x; y] + b_g)``: a highway gate on the branch
    (Highway networks, arXiv 1505.00387; GTrXL, arXiv 1910.06764, gates its residuals with a GRU instead). The skip
    stays an identity, as in the VARIANTS table, so only the branch is gated. ``W_g`` (`gate_proj`, 2C -> C) gets the
    usual linear init, ``b_g = -1``."""

    def __init__(self, config: SkipNormConfig, layer_idx: int, sublayer: str):
        super().__init__()
        self.gate_proj = nn.Linear(2 * config.hidden_size, config.hidden_size, bias=True)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        gate = torch.sigmoid(self.gate_proj(torch.cat((x, y), dim=-1)))  # (B, T, C)
        return x + gate * y


# ----------------------------------------------------------------------------------------------------- issue 15
class OrthogonalResidual(HookableModule):
    """``x + F_perp`` with ``F_perp = F - (<x, F> / (<x, x> + eps)) x``: the Orthogonal Residual Update (Oh et al.
    2025, arXiv 2505.11881), per token over the hidden size (the reference code's "feature" variant,
    BootsofLagrangian/ortho-residual `_orthogonal_channel`, ``eps = orthogonal_eps = 1e-6``). The branch's component
    along the stream is dropped, so a sublayer can rotate the stream but not rescale it. The projection coefficient
    is computed in at least float32 (the reference keeps ``<x, x>`` in float32 for mixed precision)."""

    def __init__(self, config: SkipNormConfig, layer_idx: int, sublayer: str):
        super().__init__()
        self.eps = float(config.orthogonal_eps)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        x32, y32 = at_least_float32(x), at_least_float32(y)
        coefficient = (x32 * y32).sum(-1, keepdim=True) / ((x32 * x32).sum(-1, keepdim=True) + self.eps)  # (B, T, 1)
        return x + (y - coefficient.to(x.dtype) * x)

    def extra_repr(self) -> str:
        return f"eps={self.eps}"


def laurel_softmax(logits: torch.Tensor) -> torch.Tensor:
    """(alpha, beta) = softmax(a, b): they sum to 1."""
    return torch.softmax(logits, dim=-1)


def laurel_sigmoid(logits: torch.Tensor) -> torch.Tensor:
    """alpha = sigmoid(a), beta = sigmoid(b): each in (0, 1)."""
    return torch.sigmoid(logits)


# `laurel_rw_weights` -> the map from the logits (a, b) to LAuReL-RW's (alpha, beta). The paper (arXiv 2411.07501,
# Sec. 2.1): "we cannot let alpha and beta grow unbounded, and using a normalization function such as softmax or
# sigmoid helps".
LAUREL_RW_NORMALIZERS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "softmax": laurel_softmax,
    "sigmoid": laurel_sigmoid,
}


def laurel_column_orthogonal(weight: torch.Tensor) -> torch.Tensor:
    """LAuReL-LR's init of ``A`` in the paper's LLM runs (arXiv 2411.07501, Sec. 3.3, footnote 2): ``A_ij =
    1/sqrt(r D)`` if ``i mod r = j`` and 0 otherwise, ``A`` being D x r; here the (r, D) weight of the D -> r
    `laurel_down`, so row ``j`` holds ``1/sqrt(r D)`` at the columns ``i`` with ``i mod r = j``."""
    rank, width = weight.shape
    columns = torch.arange(width, device=weight.device)
    out = torch.zeros(rank, width, dtype=weight.dtype, device=weight.device)
    out[columns % rank, columns] = 1.0 / math.sqrt(rank * width)
    return out


class LaurelRWResidual(HookableModule):
    """LAuReL-RW (Menghani et al., arXiv 2411.07501, Sec. 2.1): ``alpha * F + beta * x`` with two learned scalars per
    sublayer, bounded as the paper prescribes by `laurel_rw_weights` (softmax or sigmoid of the logits ``a``, ``b``,
    stored as `alpha_logit_bias`, `beta_logit_bias`: offsets from their init 0, so no weight decay). The paper gives no
    init; logits 0 give ``alpha = beta = 1/2``."""

    def __init__(self, config: SkipNormConfig, layer_idx: int, sublayer: str):
        super().__init__()
        self.weights_name = config.laurel_rw_weights
        self.normalize = LAUREL_RW_NORMALIZERS[config.laurel_rw_weights]
        self.alpha_logit_bias = nn.Parameter(torch.empty(1))
        self.beta_logit_bias = nn.Parameter(torch.empty(1))

    def weights(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(alpha, beta), computed in at least float32."""
        logits = at_least_float32(torch.cat((self.alpha_logit_bias, self.beta_logit_bias)))
        alpha, beta = self.normalize(logits).unbind()
        return alpha, beta

    def skip(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        alpha, beta = self.weights()
        return alpha.to(y.dtype) * y + beta.to(x.dtype) * self.skip(x)

    def extra_repr(self) -> str:
        return f"weights={self.weights_name}"


class LaurelLRResidual(HookableModule):
    """LAuReL-LR (arXiv 2411.07501, Sec. 2.2, Eq. 3): ``F + x + B A x``, the skip ``W x`` with ``W = I + B A`` of rank
    r, ``A`` = `laurel_down` (d -> r), ``B`` = `laurel_up` (r -> d). ``B = 0`` and ``A`` column-orthogonal
    (`laurel_column_orthogonal`, the paper's LLM init), so the model starts as the plain residual. Both are weight
    matrices, decayed like every linear map."""

    def __init__(self, config: SkipNormConfig, layer_idx: int, sublayer: str):
        super().__init__()
        self.laurel_down = nn.Linear(config.hidden_size, config.laurel_rank, bias=False)  # A
        self.laurel_up = nn.Linear(config.laurel_rank, config.hidden_size, bias=False)  # B

    def skip(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.laurel_up(self.laurel_down(x))  # (I + B A) x

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return y + self.skip(x)


class LaurelRWLRResidual(LaurelRWResidual):
    """LAuReL-RW+LR (arXiv 2411.07501, Sec. 2.4, Eq. 5): ``alpha * F + beta * (x + B A x)``, both of the above."""

    def __init__(self, config: SkipNormConfig, layer_idx: int, sublayer: str):
        super().__init__(config, layer_idx, sublayer)
        self.laurel_down = nn.Linear(config.hidden_size, config.laurel_rank, bias=False)  # A
        self.laurel_up = nn.Linear(config.laurel_rank, config.hidden_size, bias=False)  # B

    skip = LaurelLRResidual.skip


class LaurelPAResidual(HookableModule):
    """LAuReL-PA (arXiv 2411.07501, Sec. 2.3, Eq. 4): ``x_{i+1} = F + x_i + sum_{j=0}^{k-1} gamma_j h(x_{i-j})``, the
    previous-activations version with the paper's "in practice" ``h = B A`` (rank `laurel_rank`, as LAuReL-LR),
    ``k = laurel_pa_activations`` learned scalars ``gamma`` (stored as ``gamma_bias = gamma - 1``: 1 at init, our
    choice, since the paper states none and ``gamma = 0`` with ``B = 0`` would leave both without gradient), ``x_j``
    the output of the j-th residual connection (sublayer; ``x_0`` the embedding output). ``h`` is linear, so the sum
    is applied as ``h(sum_j gamma_j x_{i-j})``. `SkipNormLaurelPABlock` passes the previous outputs
    ``[x_{i-1}, ..., x_{i-k+1}]`` (zeros where ``i - j < 0``: absent terms add nothing) as `previous`; called as
    ``R(x, y)`` (no `previous`) only ``x_i`` is read, and the branch's contribution ``R(x, y) - R(x, 0) = y`` is
    the same."""

    def __init__(self, config: SkipNormConfig, layer_idx: int, sublayer: str):
        super().__init__()
        self.activations = config.laurel_pa_activations
        self.gamma_bias = nn.Parameter(torch.empty(self.activations))  # gamma - 1, [gamma_0 (x_i), gamma_1, ...]
        self.laurel_down = nn.Linear(config.hidden_size, config.laurel_rank, bias=False)  # A
        self.laurel_up = nn.Linear(config.laurel_rank, config.hidden_size, bias=False)  # B

    def forward(self, x: torch.Tensor, y: torch.Tensor, previous: torch.Tensor | None = None) -> torch.Tensor:
        gamma = (1.0 + self.gamma_bias).to(x.dtype)  # (k,)
        mixed = gamma[0] * x  # (B, T, C)
        if previous is not None:  # (B, T, k - 1, C)
            mixed = mixed + torch.einsum("...jc,j->...c", previous, gamma[1:])
        return y + x + self.laurel_up(self.laurel_down(mixed))

    def extra_repr(self) -> str:
        return f"activations={self.activations}"


class LaurelPAStream(HookableModule):
    """LAuReL-PA's block state (B, T, k, C): ``[x_i, x_{i-1}, ..., x_{i-k+1}]``, the stream and the outputs of the
    k - 1 sublayers before it. `expand` starts it at ``[x_0, 0, ..., 0]`` (the embedding output, no earlier
    activations); `reduce` returns the stream ``x_i``."""

    def __init__(self, config: SkipNormConfig):
        super().__init__()
        self.activations = config.laurel_pa_activations

    def expand(self, hidden_states: torch.Tensor) -> torch.Tensor:  # (B, T, C) -> (B, T, k, C)
        absent = hidden_states.new_zeros(*hidden_states.shape[:-1], self.activations - 1, hidden_states.shape[-1])
        return torch.cat((hidden_states.unsqueeze(-2), absent), dim=-2)

    def reduce(self, stream: torch.Tensor) -> torch.Tensor:  # (B, T, k, C) -> (B, T, C)
        return stream[..., 0, :]

    @staticmethod
    def push(stream: torch.Tensor, output: torch.Tensor) -> torch.Tensor:
        """The state after a sublayer: its output in front, the oldest activation dropped."""
        return torch.cat((output.unsqueeze(-2), stream[..., :-1, :]), dim=-2)


LAUREL_CLASSES: dict[str, type[nn.Module]] = {
    "rw": LaurelRWResidual, "lr": LaurelLRResidual, "rw_lr": LaurelRWLRResidual, "pa": LaurelPAResidual,
}


def laurel_residual(config: SkipNormConfig, layer_idx: int, sublayer: str) -> nn.Module:
    """`residual="laurel"`: the LAuReL variant named by `laurel_variant` (rw, lr, rw_lr or pa)."""
    return LAUREL_CLASSES[config.laurel_variant](config, layer_idx, sublayer)


class StaticFracConnection(StaticHyperConnection):
    """Static Frac-Connections (Zhu et al. 2025, arXiv 2503.14125): hyper-connections on ``m = frac_rate`` fractions
    of the hidden state instead of ``n`` copies of it. With ``H = Reshape(h, (m, d/m))`` (rows ``h_1 .. h_m``) and the
    connection matrix ``[[0, B], [Y, A]]`` (``B``: 1 x m, ``Y``, ``A``: m x m)::

        h_in = Concat(Y^T H)              (width connection: the sublayer input, d wide)
        H'   = A^T H + B^T o Reshape(T(h_in), (m, d/m))    (depth connection; B scales fraction i of T's output)

    The math is the hyper-connections' (`StaticHyperConnection`, whose offsets and float32 mixing this reuses) with
    the streams replaced by fractions, so the state stays one (B, T, d) tensor (`SingleStream`). Initialized to the
    plain residual, ``Y = A = I``, ``B = 1`` (then ``H' = H + Reshape(T(h))``: ``x + T(x)`` exactly), stored as
    offsets ``input_bias = Y - I``, ``mixing_bias = A - I``, ``output_bias = B - 1``, all 0 at init.

    Checked against the paper's text: Sec. 4.1 (Eqs. 6-8), Algorithm 1 (``h_0 = Reshape(Y^T H, (d,))``,
    ``H' = B^T Reshape(T(h_0), (m, d/m)) + A^T H``; its pseudocode scales fraction i by ``beta_i``, elementwise) and
    Sec. 4.3 (Eq. 15: ``B = 1``, ``Y = A = I``, the static weights without weight decay: stored as ``*_bias``).
    """

    def __init__(self, config: SkipNormConfig, layer_idx: int, sublayer: str):
        nn.Module.__init__(self)  # not StaticHyperConnection's: m fractions, and Y is m x m where A_m was n x 1
        m = config.frac_rate
        self.num_streams = m  # the fractions play the streams' part
        self.input_bias = nn.Parameter(torch.empty(m, m))  # Y - I, indexed [from fraction j, to fraction i]
        self.mixing_bias = nn.Parameter(torch.empty(m, m))  # A - I, indexed [from fraction j, to fraction i]
        self.output_bias = nn.Parameter(torch.empty(m))  # B - 1

    def width(self, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(B, T, d) -> (sublayer input Concat(Y^T H): (B, T, d), A^T H: (B, T, m, d/m) float32, B: (m,) or
        (B, T, m) float32)."""
        with full_precision(hidden):
            fractions = at_least_float32(hidden).unflatten(-1, (self.num_streams, -1))  # (B, T, m, d/m)
            input_offset, mixing_offset, output_offset = self.connection_offsets(fractions)
            sublayer_input = fractions + input_offset.transpose(-1, -2) @ fractions  # Y^T H = H + (Y - I)^T H
            mixed = fractions + mixing_offset.transpose(-1, -2) @ fractions  # A^T H = H + (A - I)^T H
        return sublayer_input.flatten(-2).to(hidden.dtype), mixed, 1.0 + output_offset

    @staticmethod
    def depth(mixed: torch.Tensor, write_weights: torch.Tensor, branch: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """H' = A^T H + B^T o Reshape(y): fraction i of the sublayer output y (B, T, d) added to fraction i, times B_i."""
        with full_precision(mixed):
            branch_fractions = branch.to(mixed.dtype).unflatten(-1, mixed.shape[-2:])  # (B, T, m, d/m)
            return (mixed + write_weights[..., None] * branch_fractions).flatten(-2).to(dtype)

    def extra_repr(self) -> str:
        return f"fractions={self.num_streams}"


class DynamicFracConnection(StaticFracConnection):
    """Dynamic Frac-Connections (arXiv 2503.14125), the input-dependent connections of dynamic hyper-connections
    (arXiv 2409.19606, Sec. 2.2) on fractions::

        Hn = N(H)                           (each fraction normalized: `dynamic_norm` over d/m, of `norm_type`)
        Y(H) = Y + s_a tanh(Hn W_y)         A(H) = A + s_a tanh(Hn W_a)        (W_y, W_a: d/m x m)
        B(H) = B + s_b tanh(Hn W_b)^T       (W_b: d/m x 1)

    ``W = 0`` at init (so it starts as the static, plain-residual connection), ``s_a = s_b = 0.01`` as in the HC
    code, stored as ``width_scale_bias = s_a - 0.01``, ``depth_scale_bias = s_b - 0.01``. Checked against Sec. 4.2
    (Eqs. 11-14: one ``s_alpha`` for Y and A, ``s_beta`` for B, "normalization before the linear transformation",
    tanh after it) and Sec. 4.3 (the dynamic W at 0, decayed: plain weights); the paper counts the norm's parameters as
    RMSNorm's ``d/m`` (Sec. 4.4), here the `norm_type` norm over ``d/m``."""

    def __init__(self, config: SkipNormConfig, layer_idx: int, sublayer: str):
        super().__init__(config, layer_idx, sublayer)
        m, width = config.frac_rate, config.hidden_size // config.frac_rate
        self.dynamic_norm = build_norm(config, width)
        self.dynamic_width_proj = nn.Linear(width, 2 * m, bias=False)  # [W_y | W_a]
        self.dynamic_depth_proj = nn.Linear(width, 1, bias=False)  # W_b
        self.width_scale_bias = nn.Parameter(torch.empty(1))  # s_a - 0.01
        self.depth_scale_bias = nn.Parameter(torch.empty(1))  # s_b - 0.01

    def connection_offsets(self, fractions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        static_input, static_mixing, static_output = super().connection_offsets(fractions)
        m, dtype = self.num_streams, fractions.dtype
        normed = self.dynamic_norm(fractions).to(dtype)  # (B, T, m, d/m)
        width = torch.tanh(normed @ self.dynamic_width_proj.weight.to(dtype).t())  # (B, T, m, 2m): row j = fraction j
        depth = torch.tanh(normed @ self.dynamic_depth_proj.weight.to(dtype).t())[..., 0]  # (B, T, m)
        width_scale = DYNAMIC_SCALE_INIT + self.width_scale_bias.to(dtype)
        depth_scale = DYNAMIC_SCALE_INIT + self.depth_scale_bias.to(dtype)
        return (static_input + width_scale * width[..., :m], static_mixing + width_scale * width[..., m:],
                static_output + depth_scale * depth)


def frac_connection(config: SkipNormConfig, layer_idx: int, sublayer: str) -> StaticFracConnection:
    """`residual="frac"`: dynamic (DFC) or static (SFC) Frac-Connections by `hyper_dynamic`."""
    return (DynamicFracConnection if config.hyper_dynamic else StaticFracConnection)(config, layer_idx, sublayer)


RESIDUAL_CLASSES: dict[str, Callable[[SkipNormConfig, int, str], nn.Module]] = {
    "add": AddResidual,
    "none": NoResidual,
    "scaled": ScaledResidual,
    "deepnorm": DeepNormResidual,
    "admin": AdminResidual,
    "rezero": ReZeroResidual,
    "skipinit": ReZeroResidual,  # SkipInit's x + a*F(x) with a = 0 at init is ReZero's formula and init
    "layerscale": LayerScaleResidual,
    "gated": GatedResidual,
    "hyper": hyper_connection,  # static or dynamic by `hyper_dynamic`; used by HyperConnectionBlock
    "mhc": ManifoldHyperConnection,  # used by HyperConnectionBlock
    "dense": AddResidual,  # inside a DenseFormer block; the depth-weighted average sits after the block
    "orthogonal": OrthogonalResidual,
    "laurel": laurel_residual,  # rw, lr, rw_lr or pa by `laurel_variant`; pa is used by SkipNormLaurelPABlock
    "frac": frac_connection,  # static or dynamic by `hyper_dynamic`; used by HyperConnectionBlock on one stream
    "attn_res": SublayerDepthAttention,  # Attention Residuals' depth attention; used by AttnResBlock
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

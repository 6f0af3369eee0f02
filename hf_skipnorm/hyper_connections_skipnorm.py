"""Residuals whose state is more than one (B, T, C) tensor: hyper-connections, mHC and DenseFormer.

The residual state is ONE tensor so gradient checkpointing and output capture keep working:
- hyper-connections (`hyper`, `mhc`): ``n`` residual streams, shape (B, T, n, C);
- DenseFormer (`dense`): the embeddings and every block output so far plus the current block input,
  shape (B, T, l + 2, C) entering block ``l`` (0-based).
A stream adapter (`expand` before the blocks, `reduce` after them) turns (B, T, C) into that state and back.

Every learned connection weight is stored as a learned offset from its paper initialization, ``w = w_init + w_bias``
(``w_init`` a constant: identity, one-hot or 0.01): the model then starts exactly at the paper's init whatever
happens to buffers, and the offset is a bias in the plain sense of the word, so the `Trainer`'s no-decay rule (names
containing ``bias``) leaves it alone; decay would otherwise pull mixing weights toward "no skip at all". The one
exception is mHC's ``b``, which the paper itself calls a bias and which is stored as is.

All mixing runs in float32 whatever the model dtype, autocast switched off around it (the mHC paper keeps these
small matrices in full precision); the results are cast back to the stream's dtype.
"""

from __future__ import annotations

import torch
import torch.utils.checkpoint
from torch import nn

from .configuration_skipnorm import SkipNormConfig
from .norms_skipnorm import SkipNormRMSNorm, build_norm

# Initial scale of the input-dependent part of (m)HC connections: 0.01 in the HC paper's pseudo-code (arXiv
# 2409.19606, appendix) and mHC's gating factors alpha (arXiv 2512.24880); small so the static part leads at first.
DYNAMIC_SCALE_INIT = 0.01


def at_least_float32(tensor: torch.Tensor) -> torch.Tensor:
    """The tensor in float32, or float64 if it already is: mixing never runs in bf16/fp16."""
    return tensor.to(torch.promote_types(tensor.dtype, torch.float32))


def full_precision(tensor: torch.Tensor):
    """A context in which autocast (the Trainer's bf16/fp16 mixed precision) leaves the mixing in float32."""
    return torch.autocast(device_type=tensor.device.type, enabled=False)


def read_streams(weights: torch.Tensor, streams: torch.Tensor) -> torch.Tensor:
    """``W^T H`` per token: (n, m) or per-token (B, T, n, m) weights, (B, T, n, C) streams -> (B, T, m, C).

    A stack-wide (n, m) matrix is applied as ONE matrix multiply over all tokens (the streams flattened to
    (B*T, n, C)); per-token weights take one batched multiply. Both replace a broadcast (m, n) @ (B, T, n, C), whose
    expanded batched GEMMs of 4 x 4 matrices (and their backward) cost 2.5x as much on CPU (benchmarks/RESULTS.md).
    Products with the paper's init (0/1 entries) are exact, so the model still starts as the pre-norm model."""
    if weights.dim() == 2:
        flat = streams.reshape(-1, *streams.shape[-2:])  # (B*T, n, C)
        return torch.einsum("nm,bnc->bmc", weights, flat).reshape(*streams.shape[:-2], weights.shape[-1],
                                                                   streams.shape[-1])
    return weights.transpose(-1, -2) @ streams


def mix_streams(connection: nn.Module, streams: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The width connection, its intermediates kept for backward (the default)."""
    return connection.width(streams)


def mix_streams_recomputed(connection: nn.Module, streams: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor,
                                                                                   torch.Tensor]:
    """The width connection under a non-reentrant checkpoint: only its input is kept, and the mixing runs again in
    the backward pass (`stream_recompute`, as mHC recomputes its kernels, arXiv 2512.24880, Sec. 4.3)."""
    return torch.utils.checkpoint.checkpoint(connection.width, streams, use_reentrant=False)


def stream_mixer(config: SkipNormConfig):
    """`mix_streams` or its recomputed twin by `stream_recompute`: chosen once, at construction."""
    return mix_streams_recomputed if config.stream_recompute else mix_streams


def sublayer_index(layer_idx: int, sublayer: str) -> int:
    """Position of a sublayer in the whole stack: layer 0 attention = 0, layer 0 MLP = 1, layer 1 attention = 2, ..."""
    return 2 * layer_idx + (0 if sublayer == "attn" else 1)


# ----------------------------------------------------------------------------------------------------- HC
class StaticHyperConnection(nn.Module):
    """Static hyper-connections, SHC (Zhu et al. 2024, arXiv 2409.19606, Sec. 2), for one sublayer ``T``.

    With the streams ``H`` (n x C per token) and the connection matrix ``[[0, B], [A_m, A_r]]``::

        h = A_m^T H                       (width connection: the sublayer input)
        H' = A_r^T H + B^T T(h)           (depth connection: the output written back to every stream)

    initialized as the paper's pre-norm-equivalent SHC: ``A_m = e_{k mod n}`` (sublayer ``k`` reads stream ``k mod n``),
    ``A_r = I``, ``B = 1``. Stored as offsets ``input_bias = A_m - e_k``, ``mixing_bias = A_r - I``,
    ``output_bias = B - 1``, all 0 at init, so with identical streams every stream equals the pre-norm stream exactly.
    ``T`` is the block's own sublayer with its norms (``N_out(F(N_in(h)))``); the block calls `width`, runs ``T`` on
    ``h``, then `depth` with what `width` returned.
    """

    def __init__(self, config: SkipNormConfig, layer_idx: int, sublayer: str):
        super().__init__()
        n = config.residual_streams
        self.num_streams = n
        self.input_stream = sublayer_index(layer_idx, sublayer) % n  # the k of e_{k mod n}
        self.input_bias = nn.Parameter(torch.empty(n))  # A_m - e_k
        self.mixing_bias = nn.Parameter(torch.empty(n, n))  # A_r - I, indexed [from stream j, to stream i]
        self.output_bias = nn.Parameter(torch.empty(n))  # B - 1

    def connection_offsets(self, streams: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Offsets of (A_m, A_r, B) from their init, float32; static: the parameters themselves."""
        dtype = streams.dtype
        return self.input_bias.to(dtype), self.mixing_bias.to(dtype), self.output_bias.to(dtype)

    def width(self, streams: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(B, T, n, C) streams -> (sublayer input h = A_m^T H: (B, T, C), mixed streams A_r^T H: (B, T, n, C) float32,
        write weights B: (n,) or (B, T, n) float32). Dynamic B is read from the streams before the sublayer."""
        with full_precision(streams):
            h32 = at_least_float32(streams)
            input_offset, mixing_offset, output_offset = self.connection_offsets(h32)
            n = self.num_streams
            identity = torch.eye(n, dtype=h32.dtype, device=h32.device)
            # [A_m | A_r] = [e_k + (A_m - e_k) | I + (A_r - I)]: (n, 1 + n), or (B, T, n, 1 + n) when dynamic
            weights = torch.cat(((identity[:, self.input_stream] + input_offset).unsqueeze(-1),
                                 identity + mixing_offset), dim=-1)
            both = read_streams(weights, h32)  # (B, T, 1 + n, C): [A_m^T H ; A_r^T H]
        return both[..., 0, :].to(streams.dtype), both[..., 1:, :], 1.0 + output_offset

    @staticmethod
    def depth(mixed: torch.Tensor, write_weights: torch.Tensor, branch: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """H' = A_r^T H + B^T y: the sublayer output y (B, T, C) added to stream i with weight B_i."""
        with full_precision(mixed):  # one fused op: mixed + B_i * y for every stream i
            return torch.addcmul(mixed, write_weights[..., None], branch.to(mixed.dtype)[..., None, :]).to(dtype)

    def extra_repr(self) -> str:
        return f"streams={self.num_streams}, input_stream={self.input_stream}"


class DynamicHyperConnection(StaticHyperConnection):
    """Dynamic hyper-connections, DHC (arXiv 2409.19606, Sec. 2.2): the static connections plus input-dependent ones::

        Hn = N(H)                                   (each stream normalized: `dynamic_norm`, of `norm_type`)
        A_m(H) = A_m + s_a * tanh(Hn W_m)           W_m: C x 1
        A_r(H) = A_r + s_a * tanh(Hn W_r)           W_r: C x n
        B(H)   = B   + s_b * tanh(Hn W_b)^T         W_b: C x 1

    ``W`` initialized to 0 (so DHC starts as SHC, hence as pre-norm) and ``s_a = s_b = 0.01`` (the paper's code),
    stored as ``width_scale_bias = s_a - 0.01``, ``depth_scale_bias = s_b - 0.01``. The HC paper's best variant.
    """

    def __init__(self, config: SkipNormConfig, layer_idx: int, sublayer: str):
        super().__init__(config, layer_idx, sublayer)
        n = config.residual_streams
        self.dynamic_norm = build_norm(config, config.hidden_size)
        self.dynamic_width_proj = nn.Linear(config.hidden_size, 1 + n, bias=False)  # [W_m | W_r]
        self.dynamic_depth_proj = nn.Linear(config.hidden_size, 1, bias=False)  # W_b
        self.width_scale_bias = nn.Parameter(torch.empty(1))  # s_a - 0.01
        self.depth_scale_bias = nn.Parameter(torch.empty(1))  # s_b - 0.01
        # N(H) W: RMSNorm folds into the projection (no normalized copy of the streams), other norms run as modules
        self.normalized_projection = (rms_normalized_projection if isinstance(self.dynamic_norm, SkipNormRMSNorm)
                                      else normalized_projection)

    def connection_offsets(self, streams: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        static_input, static_mixing, static_output = super().connection_offsets(streams)
        dtype = streams.dtype
        # [W_m | W_r | W_b] in one projection: one pass over the normalized streams instead of two
        projection = torch.cat((self.dynamic_width_proj.weight, self.dynamic_depth_proj.weight)).to(dtype)
        dynamic = torch.tanh(self.normalized_projection(self.dynamic_norm, streams, projection))  # (B, T, n, 2 + n)
        width, depth = dynamic[..., :-1], dynamic[..., -1]  # (B, T, n, 1 + n), (B, T, n)
        width_scale = DYNAMIC_SCALE_INIT + self.width_scale_bias.to(dtype)
        depth_scale = DYNAMIC_SCALE_INIT + self.depth_scale_bias.to(dtype)
        return (static_input + width_scale * width[..., 0], static_mixing + width_scale * width[..., 1:],
                static_output + depth_scale * depth)


def normalized_projection(norm: nn.Module, streams: torch.Tensor, projection: torch.Tensor) -> torch.Tensor:
    """``N(H) W^T`` for (B, T, n, C) streams and a (k, C) projection -> (B, T, n, k), with the norm as a module."""
    return norm(streams).to(streams.dtype) @ projection.t()


def rms_normalized_projection(norm: nn.Module, streams: torch.Tensor, projection: torch.Tensor) -> torch.Tensor:
    """``RMSNorm(H) W^T = r * (H (g W)^T)`` with ``r = 1 / sqrt(mean(H^2) + eps)`` per stream and ``g`` the norm's
    gain: the same product without a normalized (B, T, n, C) copy of the streams (nor its backward), as mHC's
    kernels reorder the norm after the projection (arXiv 2512.24880, Sec. 4.3)."""
    gain = norm.fold_gain(norm.weight.to(streams.dtype))
    squares = torch.linalg.vector_norm(streams, dim=-1, keepdim=True).square()
    inverse_rms = torch.rsqrt(squares / streams.shape[-1] + norm.eps)
    return (streams @ (projection * gain).t()) * inverse_rms


def hyper_connection(config: SkipNormConfig, layer_idx: int, sublayer: str) -> StaticHyperConnection:
    """`residual="hyper"`: dynamic (DHC) or static (SHC) hyper-connections by `hyper_dynamic`."""
    hyper_class = DynamicHyperConnection if config.hyper_dynamic else StaticHyperConnection
    return hyper_class(config, layer_idx, sublayer)


# ----------------------------------------------------------------------------------------------------- mHC
def sinkhorn_knopp(logits: torch.Tensor, iterations: int) -> torch.Tensor:
    """Project (..., n, n) logits to a doubly stochastic matrix: ``M = exp(logits)``, then `iterations` rounds of
    ``M <- T_r(T_c(M))`` (columns, then rows, rescaled to sum to 1), mHC's Sinkhorn-Knopp (arXiv 2512.24880, Sec. 4.2).
    Ending on the rows makes every row sum to 1 exactly, so identical streams stay identical. (`SinkhornKnopp`.)"""
    return SinkhornKnopp.apply(logits, iterations)


class SinkhornKnopp(torch.autograd.Function):
    """`sinkhorn_knopp` with a hand-written backward: each rescaling ``y = x / s``, ``s = sum(x)`` along one axis, has
    ``dL/dx = (g - sum(g * y)) / s`` (4 small ops instead of autograd's ~10 per rescaling, on (B, T, n, n) matrices
    where the per-op cost is all there is: 20 iterations x 2 rescalings per sublayer). ``exp(l - max l)`` gets
    ``dL/dl = g * M``: the output does not change when M is scaled, so the max's share of the gradient is 0.
    tests/test_residuals.py checks it with `gradcheck` in float64."""

    @staticmethod
    def forward(ctx, logits: torch.Tensor, iterations: int) -> torch.Tensor:
        matrix = torch.exp(logits - logits.amax(dim=(-2, -1), keepdim=True))  # the shift cancels in the normalization
        saved = [matrix]
        for _ in range(iterations):
            for dim in (-2, -1):  # T_c: columns sum to 1, then T_r: rows sum to 1
                total = matrix.sum(dim=dim, keepdim=True)
                matrix = matrix / total
                saved += [total, matrix]
        ctx.save_for_backward(*saved)
        return matrix

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        start, *steps = ctx.saved_tensors
        for index in range(len(steps) // 2 - 1, -1, -1):
            total, out = steps[2 * index], steps[2 * index + 1]
            dim = -2 if index % 2 == 0 else -1
            grad = (grad - (grad * out).sum(dim=dim, keepdim=True)) / total
        return grad * start, None


class ManifoldHyperConnection(nn.Module):
    """Manifold-constrained hyper-connections, mHC (Xie et al. 2025, arXiv 2512.24880, Sec. 4), for one sublayer::

        x~      = RMS(vec(x_l))                           (the n*C stream vector, normalized; no learned gain)
        H_pre   = sigmoid(a_pre  * (x~ phi_pre)  + b_pre)          1 x n
        H_post  = 2 sigmoid(a_post * (x~ phi_post) + b_post)       1 x n
        H_res   = SinkhornKnopp(a_res * mat(x~ phi_res) + b_res)   n x n, doubly stochastic
        x_{l+1} = H_res x_l + H_post^T F(H_pre x_l)

    Convention chosen here (the paper fixes the formulas, not these inits): ``phi = 0``; gating factors
    ``a = 0.01`` (stored as ``*_scale_bias = a - 0.01``); logits that mirror HC's init through the constraints:
    ``b_pre = e_{k mod n}`` (sublayer ``k`` leans on stream ``k mod n``), ``b_post = 0`` (so ``H_post = 1``, HC's
    ``B = 1``), ``b_res = I``. With identical streams the rows of ``H_res`` summing to 1 keep them identical and
    ``H_pre x`` is the stream times ``sum(sigmoid(b_pre))``, which a pre-norm sublayer normalizes away: at init the
    model computes the pre-norm model up to the norm's epsilon. `sinkhorn_iters` sets the paper's ``t_max`` (20).
    """

    def __init__(self, config: SkipNormConfig, layer_idx: int, sublayer: str):
        super().__init__()
        n = config.residual_streams
        self.num_streams = n
        self.input_stream = sublayer_index(layer_idx, sublayer) % n
        self.sinkhorn_iters = config.sinkhorn_iters
        self.eps = config.norm_eps
        self.pre_bias = nn.Parameter(torch.empty(n))  # b_pre (logits)
        self.post_bias = nn.Parameter(torch.empty(n))  # b_post (logits)
        self.res_bias = nn.Parameter(torch.empty(n, n))  # b_res (logits), indexed [to stream i, from stream j]
        self.dynamic_proj = nn.Linear(n * config.hidden_size, 2 * n + n * n, bias=False)  # [phi_pre|phi_post|phi_res]
        self.pre_scale_bias = nn.Parameter(torch.empty(1))  # a_pre - 0.01
        self.post_scale_bias = nn.Parameter(torch.empty(1))  # a_post - 0.01
        self.res_scale_bias = nn.Parameter(torch.empty(1))  # a_res - 0.01

    def mappings(self, streams: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(H_pre (B, T, n), H_post (B, T, n), H_res (B, T, n, n)) for (B, T, n, C) float32 (or 64) streams."""
        n, dtype = self.num_streams, streams.dtype
        flat = streams.flatten(-2)  # (B, T, n*C)
        # RMS(x~) phi = (x~ phi) / rms(x~): the per-token scale applied after the projection, as the mHC paper's
        # kernels reorder it (Sec. 4.3), so no normalized copy of the n*C stream vector is made (or saved for backward)
        inverse_rms = torch.rsqrt(torch.linalg.vector_norm(flat, dim=-1, keepdim=True).square() / flat.shape[-1]
                                  + self.eps)  # no squared (B, T, n*C) copy
        dynamic = (flat @ self.dynamic_proj.weight.to(dtype).t()) * inverse_rms  # (B, T, 2n + n^2)
        pre_scale, post_scale, res_scale = (DYNAMIC_SCALE_INIT + p.to(dtype) for p in (
            self.pre_scale_bias, self.post_scale_bias, self.res_scale_bias))
        pre = torch.sigmoid(pre_scale * dynamic[..., :n] + self.pre_bias.to(dtype))
        post = 2.0 * torch.sigmoid(post_scale * dynamic[..., n:2 * n] + self.post_bias.to(dtype))
        res_logits = res_scale * dynamic[..., 2 * n:].unflatten(-1, (n, n)) + self.res_bias.to(dtype)
        res = sinkhorn_knopp(res_logits, self.sinkhorn_iters)
        return pre, post, res

    def width(self, streams: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(B, T, n, C) -> (sublayer input H_pre x: (B, T, C), mixed streams H_res x: (B, T, n, C) float32,
        write weights H_post: (B, T, n) float32)."""
        with full_precision(streams):
            h32 = at_least_float32(streams)
            pre, post, res = self.mappings(h32)
            # [H_pre ; H_res] x_l in one batched multiply: (B, T, n, 1 + n) read weights -> (B, T, 1 + n, C)
            both = read_streams(torch.cat((pre.unsqueeze(-1), res.transpose(-1, -2)), dim=-1), h32)
        return both[..., 0, :].to(streams.dtype), both[..., 1:, :], post

    depth = staticmethod(StaticHyperConnection.depth)  # x_{l+1} = H_res x_l + H_post^T y

    def extra_repr(self) -> str:
        return f"streams={self.num_streams}, input_stream={self.input_stream}, sinkhorn_iters={self.sinkhorn_iters}"


class MultiStream(nn.Module):
    """`hyper` / `mhc` stream adapter: ``H^0 = (h, ..., h)`` (the embeddings copied into n streams, arXiv 2409.19606)
    before the blocks; after them the streams are averaged. The paper sums them; the final norm makes sum and mean
    the same up to its epsilon, and the mean keeps the output equal to the pre-norm model's at init also without a
    final norm."""

    def __init__(self, config: SkipNormConfig):
        super().__init__()
        self.num_streams = config.residual_streams

    def expand(self, hidden_states: torch.Tensor) -> torch.Tensor:  # (B, T, C) -> (B, T, n, C)
        return hidden_states.unsqueeze(-2).expand(*hidden_states.shape[:-1], self.num_streams, hidden_states.shape[-1])

    def reduce(self, stream: torch.Tensor) -> torch.Tensor:  # (B, T, n, C) -> (B, T, C)
        return stream.mean(dim=-2)


# ----------------------------------------------------------------------------------------------------- DenseFormer
class DepthWeightedAverage(nn.Module):
    """DenseFormer's DWA after block ``i`` (Pagliardini et al. 2024, arXiv 2402.02622, Sec. 3)::

        X_i = sum_{j=0..i} alpha_{i,j} Y_j         Y_0 = embeddings, Y_j = output of block j (1-based)

    initialized to the plain residual, ``alpha_{i,j} = 1 if j == i else 0`` (the paper's init), stored as
    ``alpha_bias = alpha - e_i``. The paper reports reaching the perplexity of much deeper Transformers with fewer
    parameters and faster inference.

    With `dense_dilation` k (the paper's k x p-DenseFormer, Sec. 3.2; epfml/DenseFormer's `DWAModules`) the average
    after block i only reads ``Y_j`` with ``j = i (mod k)``: ``alpha_{i,j} = 0`` otherwise, so it has
    ``floor(i / k) + 1`` weights. (`dense_period` is `build_depth_average`'s business: blocks without a DWA.)
    """

    def __init__(self, config: SkipNormConfig, layer_idx: int):
        super().__init__()
        dilation = config.dense_dilation
        latest = layer_idx + 1  # i: Y_0 .. Y_i after 0-based block l
        self.sources = slice(latest % dilation, None, dilation)  # j = i (mod k), ending at Y_i itself
        self.num_inputs = len(range(latest % dilation, latest + 1, dilation))
        self.alpha_bias = nn.Parameter(torch.empty(self.num_inputs))

    def forward(self, history: torch.Tensor) -> torch.Tensor:  # (B, T, l + 2, C) -> (B, T, C)
        with full_precision(history):
            h32 = at_least_float32(history[..., self.sources, :])  # (B, T, floor(i/k) + 1, C)
            weighted = h32[..., -1, :] + torch.einsum("k,...kc->...c", self.alpha_bias.to(h32.dtype), h32)
        return weighted.to(history.dtype)

    def extra_repr(self) -> str:
        return f"inputs={self.num_inputs}, dilation={self.sources.step}"


class LatestBlockOutput(nn.Module):
    """A block without DWA in a periodic DenseFormer: ``X_i = Y_i``, the plain residual (no parameters)."""

    def forward(self, history: torch.Tensor) -> torch.Tensor:  # (B, T, l + 2, C) -> (B, T, C)
        return history[..., -1, :]


def build_depth_average(config: SkipNormConfig, layer_idx: int) -> nn.Module:
    """DenseFormer's DWA after block `layer_idx`, or none: with `dense_period` p only blocks ``i = 0 (mod p)``
    (1-based) have one (the paper's k x p-DenseFormer; epfml/DenseFormer's ``(i + 1) % period == 0``)."""
    if (layer_idx + 1) % config.dense_period != 0:
        return LatestBlockOutput()
    return DepthWeightedAverage(config, layer_idx)


class DenseStream(nn.Module):
    """`dense` stream adapter: the state entering block ``l`` is ``[Y_0, ..., Y_l, X_l]`` (B, T, l + 2, C); the model
    starts from ``[Y_0, X_0 = Y_0]`` and ends with the last slot, ``X_L``."""

    def expand(self, hidden_states: torch.Tensor) -> torch.Tensor:  # (B, T, C) -> (B, T, 2, C)
        return torch.stack((hidden_states, hidden_states), dim=-2)

    def reduce(self, stream: torch.Tensor) -> torch.Tensor:
        return stream[..., -1, :]

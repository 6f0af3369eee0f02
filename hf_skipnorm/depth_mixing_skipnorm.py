"""Depth mixing of the 2024-2026 frontier (issue 15): Attention Residuals, value residuals, U-Net skips, layer drop.

- Attention Residuals (Kimi Team, arXiv 2603.15031; MoonshotAI/Attention-Residuals): every sublayer's input is a
  softmax-weighted sum over depth, ``h = sum_i alpha_i v_i`` with ``alpha = softmax_i(w^T RMSNorm(v_i))`` and ``w`` a
  learned pseudo-query. `DepthAttention` is that operator; `AttnResStream` is the stream adapter whose state is the
  stack of sources ``[v_0, v_1, ...]`` (Full AttnRes) or ``[b_0, ..., b_{n-1}, b_n^i]`` (Block AttnRes), shape
  (B, T, S, C), and whose `reduce` is the final aggregation the paper's reference code puts before the output norm.
- Value residual (ResFormer, arXiv 2410.17897): later layers attend with ``lambda_1 V_1 + lambda_2 V_n``; the first
  layer's values travel to the others in a per-forward `FirstLayerValues` (`value_residual`).
- U-Net skips (modded-nanogpt): the first half's block outputs added to the mirrored blocks' inputs (`unet_skips`).
- Layer drop (stochastic depth arXiv 1603.09382, LayerDrop arXiv 1909.11556): per-sample branch drop (`layer_drop`).
- Per-head QK gains (x-transformers' MultiheadRMSNorm): `qk_norm="per_head_gains"`.

Learned scalars and vectors are stored as offsets from their paper init named ``*_bias`` (the pseudo-query ``w`` is
``0 + query_bias``), so the Trainer's no-decay rule (names containing ``bias`` or ``norm``) leaves them alone, as in
hyper_connections_skipnorm.py. Mixing runs in at least float32, autocast off.
"""

from __future__ import annotations

import functools

import torch
from torch import nn

from .configuration_skipnorm import SkipNormConfig
from .hyper_connections_skipnorm import at_least_float32, full_precision, sublayer_index
from .norms_skipnorm import Identity, SkipNormRMSNorm


# ----------------------------------------------------------------------------------------------------- AttnRes
def attn_res_block_size(config: SkipNormConfig) -> int:
    """Sublayers per AttnRes block ``S``: 1 for Full AttnRes (every attention and MLP output is its own source), else
    ``2L / N`` for `attn_res_blocks` = N (the reference code's `block_size`, which "counts ATTN + MLP")."""
    if config.attn_res_blocks is None:
        return 1
    return 2 * config.num_hidden_layers // config.attn_res_blocks


class DepthSoftmax(torch.autograd.Function):
    """AttnRes's softmax over depth for K pseudo-queries at once, over S stacked sources ``v_i`` (..., S, C)::

        l_ki = w_k^T RMSNorm(v_i) = r_i <q_k, v_i>,   r_i = 1 / sqrt(mean(v_i^2) + eps),   q_k = w_k * g_k
        mean_k = sum_i softmax_i(l_k)_i v_i,          lse_k = log sum_i exp(l_ki)

    -> (mean_1, ..., mean_K (..., C) each, lse (..., K)). `DepthAttention.combine` merges a (mean, lse) group with
    sources that are not stacked yet, exactly: the softmax over all sources weighs the group by ``exp(lse)``.

    One Function so that neither pass materializes a normalized (..., S, C) copy of the sources, and both sublayers
    of a block read the block's sources once: the forward reads them three times (norms, dot products, weighted sums,
    each for all K queries), keeps only the sources themselves (they exist anyway) and (..., S, K) statistics; the
    backward forms ``dL/dv_i = sum_k (p_ki g_k + (dL/dd_ki) q_k) - (sum_k dL/dl_ki d_ki) r_i^3 v_i / C`` in one new
    tensor. Composed of autograd ops, the formula kept three normalized copies per sublayer and cost 1.6x a training
    step at d=512, L=8 (benchmarks/RESULTS.md). tests/test_frontier_depth.py checks it with `gradcheck` in float64.
    """

    @staticmethod
    def forward(ctx, queries: torch.Tensor, eps: float, stack: torch.Tensor):
        """(K, C) queries, (..., S, C) sources -> (mean_1, ..., mean_K (..., C) each, lse (..., K))."""
        *batch, size, dim = stack.shape
        flat = stack.reshape(-1, size, dim)  # (N, S, C): a view for a block's stack (also for a slice along S)
        dots = rows_times(flat, queries.t())  # (N, S, K): d_ki = <q_k, v_i>
        inverse_rms = torch.linalg.vector_norm(flat, dim=-1).square_().div_(dim).add_(eps).rsqrt_()  # (N, S): r_i
        logits = dots * inverse_rms[..., None]
        lse = torch.logsumexp(logits, dim=1)  # (N, K)
        weights = torch.exp(logits - lse[:, None, :])  # (N, S, K): softmax over the sources
        means = torch.bmm(weights.transpose(1, 2), flat)  # (N, K, C)
        ctx.save_for_backward(queries, stack, weights, inverse_rms, dots)
        # one output per query: indexing a joint output would cost a zero-filled gradient per sublayer
        return (*(mean.view(*batch, dim) for mean in means.unbind(1)), lse.view(*batch, -1))

    @staticmethod
    def backward(ctx, *grads: torch.Tensor):
        queries, stack, weights, inverse_rms, dots = ctx.saved_tensors
        *_, size, dim = stack.shape
        flat = stack.reshape(-1, size, dim)
        count = queries.shape[0]
        grad_means = torch.stack([g.reshape(-1, dim) for g in grads[:-1]], dim=1)  # (N, K, C)
        grad_lse = grads[-1].reshape(-1, 1, count)
        # mean_k: dL/dl_ki = p_ki (<g_k, v_i> - <g_k, mean_k>); lse_k: dL/dl_ki = p_ki dL/dlse_k
        grad_weights = torch.bmm(flat, grad_means.transpose(1, 2))  # (N, S, K): <v_i, g_k>
        grad_logits = weights * (grad_weights - (weights * grad_weights).sum(1, keepdim=True) + grad_lse)
        grad_dots = grad_logits * inverse_rms[..., None]  # l = d r
        grad_norms = (grad_logits * dots).sum(-1) * inverse_rms.pow(3) / -dim  # dr_i/dv_i = -r_i^3 v_i / C
        # A fresh tensor of the input's shape (not a view), which autograd then accumulates the state's other
        # gradient into in place: sum_k p_ki g_k + sum_k (dL/dd_ki) q_k (K outer products, then one matrix
        # multiply), then the norm's term.
        grad_stack = torch.empty(stack.shape, dtype=stack.dtype, device=stack.device)
        grad = torch.mul(weights[..., 0, None], grad_means[:, None, 0, :], out=grad_stack.view(-1, size, dim))
        for k in range(1, count):
            grad.addcmul_(weights[..., k, None], grad_means[:, None, k, :])
        grad.view(-1, dim).addmm_(grad_dots.reshape(-1, count), queries)
        grad.addcmul_(grad_norms[..., None], flat)
        grad_queries = None
        if ctx.needs_input_grad[0]:
            grad_queries = rows_times(flat, grad_dots, transpose=True)  # sum over tokens and sources
        return grad_queries, None, grad_stack


def rows_times(stack: torch.Tensor, matrix: torch.Tensor, transpose: bool = False) -> torch.Tensor:
    """``stack`` (N, S, C) times a (C, K) matrix per row: (N, S, K); with `transpose`, ``matrix`` (N, S, K) and the
    result sum_{n, s} matrix[n, s]^T stack[n, s]: (K, C). One plain matrix multiply over all N * S rows where the
    rows are one block of memory (MKL's batched multiply of 512 tiny matrices costs about twice as much)."""
    if stack.is_contiguous():
        rows = stack.view(-1, stack.shape[-1])
        return matrix.reshape(-1, matrix.shape[-1]).t() @ rows if transpose else (rows @ matrix).view(
            *stack.shape[:-1], matrix.shape[-1])
    if transpose:
        return torch.bmm(matrix.transpose(1, 2), stack).sum(0)
    return torch.bmm(stack, matrix.expand(stack.shape[0], *matrix.shape))


def depth_softmax(stack: torch.Tensor, *attentions: "DepthAttention") -> tuple[list[torch.Tensor], torch.Tensor]:
    """([mean_1, ..., mean_K] (B, T, C) each, lse (B, T, K)) of the stacked sources (B, T, S, C) for the K depth
    attentions, in at least float32 with autocast off (`combine` casts its result back)."""
    with full_precision(stack):
        values = at_least_float32(stack)
        queries = torch.stack([attention.query(values.dtype) for attention in attentions])
        *means, lse = DepthSoftmax.apply(queries, attentions[0].key_norm.eps, values)
        return means, lse


class DepthAttention(nn.Module):
    """Softmax attention over depth, Attention Residuals (Kimi Team 2026, arXiv 2603.15031, Sec. 3)::

        h = sum_i alpha_i v_i,    alpha_i = exp(w^T RMSNorm(v_i)) / sum_j exp(w^T RMSNorm(v_j))

    over the sources ``v_i`` (B, T, S, C): keys are the RMS-normalized values (`key_norm`, an RMSNorm with a learned
    gain as in the reference code, whatever `norm_type` is), the query ``w`` is one learned vector per sublayer,
    independent of the input (the "pseudo-query"). ``w`` starts at 0 (the paper's init), so every aggregation starts
    as the uniform mean of its sources. Stored as ``query_bias = w - 0``.

    Since ``w^T (g * v / rms(v)) = <w * g, v> / rms(v)``, the key norm's gain ``g`` folds into the query (`query`);
    `key_norm` holds the gain and eps and is not called as a module. The stacked sources go through `depth_softmax`
    (shared by the block's two sublayers), the few not stacked yet through `combine`.
    """

    def __init__(self, config: SkipNormConfig):
        super().__init__()
        self.query_bias = nn.Parameter(torch.empty(config.hidden_size))  # the pseudo-query w
        self.key_norm = SkipNormRMSNorm(config.hidden_size, config)

    def query(self, dtype: torch.dtype) -> torch.Tensor:
        """``q = w * g``: the pseudo-query with the key norm's gain folded in, (C,)."""
        return self.query_bias.to(dtype) * self.key_norm.fold_gain(self.key_norm.weight.to(dtype))

    def combine(self, mean: torch.Tensor, lse: torch.Tensor, *latest: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """The aggregation over stacked sources, given as their softmax mean (B, T, C) and log-sum-exp (B, T), and
        the sources ``latest`` (B, T, C) not stacked yet: ``h = sum_g softmax_g(lse_g) mean_g`` over the groups, each
        latest source its own group with ``lse = l_j``, which is the softmax over all sources. -> (B, T, C) in
        `dtype` (the stream's)."""
        if not latest:
            return mean.to(dtype)
        with full_precision(mean):
            values = [at_least_float32(v) for v in latest]
            query = self.query(mean.dtype)
            eps = self.key_norm.eps
            logits = [lse] + [(v @ query) * torch.rsqrt(v.pow(2).mean(-1) + eps) for v in values]
            weights = torch.softmax(torch.stack(logits, dim=-1), dim=-1)  # (B, T, 1 + len(latest))
            mixed = weights[..., :1] * mean
            for index, value in enumerate(values, start=1):
                mixed = mixed + weights[..., index:index + 1] * value
        return mixed.to(dtype)

    def aggregate(self, sources: torch.Tensor, *latest: torch.Tensor) -> torch.Tensor:
        """(B, T, S, C) stacked sources, then any (B, T, C) sources not stacked yet -> (B, T, C)."""
        (mean,), lse = depth_softmax(sources, self)
        return self.combine(mean, lse[..., 0], *latest, dtype=sources.dtype)


def stack_sources(sources: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """The state a block hands on, (B, T, S, C): the stacked sources and the block's new ones, in one copy."""
    stack, *latest = sources
    if not latest:
        return stack
    return torch.cat((stack, *(v.unsqueeze(-2) for v in latest)), dim=-2)


def whole_stack(stack: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """A sublayer that opens a block reads exactly the stacked sources; so does the sublayer after it."""
    return (stack,)


def last_unstacked(stack: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """A sublayer that adds to a block: its partial sum (the last source) is about to change, so the sources both
    sublayers of the block share are the others; the last one travels as a latest source."""
    return (stack[..., :-1, :], stack[..., -1, :])


def open_block(sources: tuple[torch.Tensor, ...], output: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The sublayer opens a new block: its output becomes a new source, ``[..., v_k]``. Inside a block the sources
    are a tuple ``(stack (B, T, S, C), *latest (B, T, C))``: new ones stay unstacked until `stack_sources`."""
    return (*sources, output.to(sources[0].dtype))


def add_to_block(sources: tuple[torch.Tensor, ...], output: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Inside a block the residual is the plain sum: the last source (the partial block ``b_n^i``) gains the output."""
    stack, *latest = sources
    output = output.to(stack.dtype)
    if latest:
        return (stack, *latest[:-1], latest[-1] + output)
    return (stack[..., :-1, :], stack[..., -1, :] + output)


class SublayerDepthAttention(DepthAttention):
    """One sublayer's AttnRes: `aggregate` reads its input from the sources, `write` puts its output back.

    Block AttnRes (arXiv 2603.15031, Sec. 3.2) with ``S`` sublayers per block: ``b_0`` is the embedding output, block
    ``n`` sums its sublayer outputs, ``b_n = sum_{j in B_n} f_j(h_j)``; the first sublayer of block ``n`` attends over
    ``[b_0, ..., b_{n-1}]``, the ``i``-th (i >= 2) over ``[b_0, ..., b_{n-1}, b_n^{i-1}]`` with ``b_n^{i-1}`` the
    partial sum so far. Full AttnRes is ``S = 1``: every output is a source. Whether this sublayer opens a block is a
    Python fact of its position, fixed at construction.
    """

    def __init__(self, config: SkipNormConfig, layer_idx: int, sublayer: str):
        super().__init__(config)
        self.position_in_block = sublayer_index(layer_idx, sublayer) % attn_res_block_size(config)
        self.write = open_block if self.position_in_block == 0 else add_to_block
        # the sources this sublayer shares with the next one (the rest stays a latest source): `whole_stack` or
        # `last_unstacked`, read by the block for its attention sublayer
        self.split = whole_stack if self.position_in_block == 0 else last_unstacked

    def extra_repr(self) -> str:
        return f"position_in_block={self.position_in_block}"


class AttnResStream(DepthAttention):
    """`attn_res` stream adapter: the state is the stack of AttnRes sources (B, T, S, C), starting from
    ``[b_0 = embeddings]``; `reduce` is the final depth attention with its own pseudo-query and key norm, which the
    reference integrations (``final_attn_res_proj`` / ``final_attn_res_norm``) apply before the output norm."""

    def expand(self, hidden_states: torch.Tensor) -> torch.Tensor:  # (B, T, C) -> (B, T, 1, C)
        return hidden_states.unsqueeze(-2)

    def reduce(self, stream: torch.Tensor) -> torch.Tensor:  # (B, T, S, C) -> (B, T, C)
        return self.aggregate(stream)


# ----------------------------------------------------------------------------------------------------- value residual
class FirstLayerValues:
    """Carries the first layer's attention values ``V_1`` (B, H_kv, T, hd) of one forward to the later layers.

    `SkipNormModel` puts a fresh one in the blocks' keyword arguments for every forward (`ValueResidualSource`); the
    first layer's attention writes it, the others read it. A Python object, not a tensor: gradient checkpointing passes
    it through untouched, and the (default, non-reentrant) checkpoint keeps ``V_1``'s graph, so gradients reach the
    first layer's `v_proj` from every layer that mixes it in (tests/test_frontier_depth.py compares the gradients).
    """

    values: torch.Tensor | None = None


class NoValueSource:
    """`value_residual="none"`: nothing to carry."""

    def attach(self, kwargs: dict) -> dict:
        return kwargs


class ValueResidualSource(NoValueSource):
    """A fresh `FirstLayerValues` per forward under the keyword ``first_layer_values``. Refuses reentrant gradient
    checkpointing, under which ``V_1`` would reach the later layers without its graph and the first layer's `v_proj`
    would silently miss the value-residual part of its gradient."""

    def __init__(self, layers: nn.ModuleList):
        self.layers = layers

    def attach(self, kwargs: dict) -> dict:
        checkpoint = getattr(self.layers[0], "_gradient_checkpointing_func", None)
        # transformers binds the checkpoint's kwargs with functools.partial; any other callable (a caller's own
        # wrapper, a test's Mock) says nothing about reentrancy, so only a bound use_reentrant=True is refused
        keywords = checkpoint.keywords if isinstance(checkpoint, functools.partial) else {}
        if self.layers[0].gradient_checkpointing and keywords.get("use_reentrant", False):
            raise ValueError(
                "SkipNormConfig.value_residual is not valid with reentrant gradient checkpointing (use_reentrant=True): "
                "the first layer's values would reach later layers without their graph; use the default "
                "gradient_checkpointing_kwargs={'use_reentrant': False}"
            )
        return {**kwargs, "first_layer_values": FirstLayerValues()}


def build_value_source(config: SkipNormConfig, layers: nn.ModuleList):
    return NoValueSource() if config.value_residual == "none" else ValueResidualSource(layers)


class PlainValues(nn.Module):
    """The value mixes' interface: ``(V_n, attention input x, FirstLayerValues) -> V_n'``."""

    def forward(self, values: torch.Tensor, hidden_states: torch.Tensor, first_layer_values=None) -> torch.Tensor:
        return values


class RecordFirstValues(PlainValues):
    """The first layer under a value residual: ``V_1`` is used as is and handed to the later layers."""

    def forward(self, values: torch.Tensor, hidden_states: torch.Tensor, first_layer_values=None) -> torch.Tensor:
        first_layer_values.values = values
        return values


class FixedValueMix(PlainValues):
    """ResFormer (Zhou et al., arXiv 2410.17897, ACL 2025): ``U_n = A_n (lambda_1 V_1 + lambda_2 V_n)`` with the paper's
    constants ``lambda_1 = lambda_2 = 0.5`` (from `value_residual_lambda`: ``lambda_1 = l``, ``lambda_2 = 1 - l``)."""

    def __init__(self, config: SkipNormConfig):
        super().__init__()
        self.first_weight = float(config.value_residual_lambda)  # lambda_1, a Python float (never a buffer)

    def forward(self, values: torch.Tensor, hidden_states: torch.Tensor, first_layer_values=None) -> torch.Tensor:
        return self.first_weight * first_layer_values.values + (1.0 - self.first_weight) * values

    def extra_repr(self) -> str:
        return f"lambda_1={self.first_weight:g}, lambda_2={1.0 - self.first_weight:g}"


class LearnedValueMix(FixedValueMix):
    """Learnable-ResFormer (arXiv 2410.17897): ``lambda_1 V_1 + lambda_2 V_n`` with two learned scalars per layer,
    starting at the fixed values (``lambda = (l, 1 - l) + lambda_bias``, offsets 0 at init; modded-nanogpt's
    value-embedding lambdas are the same two scalars)."""

    def __init__(self, config: SkipNormConfig):
        super().__init__(config)
        self.lambda_bias = nn.Parameter(torch.empty(2))  # (lambda_1, lambda_2) - their init

    def forward(self, values: torch.Tensor, hidden_states: torch.Tensor, first_layer_values=None) -> torch.Tensor:
        offset = self.lambda_bias.to(values.dtype)
        return ((self.first_weight + offset[0]) * first_layer_values.values
                + (1.0 - self.first_weight + offset[1]) * values)


class TokenValueMix(PlainValues):
    """A per-token, per-head mix: ``V_n' = m V_n + (1 - m) V_1`` with ``m = sigmoid(W x + b)`` read from the attention
    input ``x`` (one gate per key/value head; x-transformers' `learned_value_residual_mix`). ``W = 0``, ``b = 0`` at
    init (here; x-transformers draws W at random), so the model starts at ResFormer's fixed ``0.5 V_1 + 0.5 V_n``."""

    def __init__(self, config: SkipNormConfig):
        super().__init__()
        self.mix_proj = nn.Linear(config.hidden_size, config.num_key_value_heads, bias=True)

    def forward(self, values: torch.Tensor, hidden_states: torch.Tensor, first_layer_values=None) -> torch.Tensor:
        mix = torch.sigmoid(self.mix_proj(hidden_states)).transpose(1, 2).unsqueeze(-1)  # (B, H_kv, T, 1)
        return mix * values + (1.0 - mix) * first_layer_values.values


VALUE_RESIDUAL_CLASSES: dict[str, type[nn.Module]] = {
    "fixed": FixedValueMix,
    "learned": LearnedValueMix,
    "per_token": TokenValueMix,
}


def build_value_residual(config: SkipNormConfig, layer_idx: int) -> nn.Module:
    """What layer `layer_idx`'s attention does to its values ``V_n`` (B, H_kv, T, hd) under `value_residual`."""
    if config.value_residual == "none":
        return Identity()  # returns V_n; no module-call overhead on every decoded token
    if layer_idx == 0:
        return RecordFirstValues()
    return VALUE_RESIDUAL_CLASSES[config.value_residual](config)


# ----------------------------------------------------------------------------------------------------- U-Net skips
class NoUNetSkips:
    """`unet_skips=False`: the blocks run one after the other, nothing saved, nothing added."""

    def start(self) -> list:
        return []

    def enter(self, index: int, hidden_states: torch.Tensor, saved: list) -> torch.Tensor:
        return hidden_states

    def leave(self, index: int, hidden_states: torch.Tensor, saved: list) -> torch.Tensor:
        return hidden_states


class UNetSkips(nn.Module):
    """U-Net skips over the stack (modded-nanogpt's speedrun records; no paper): with ``n = L // 2``, the output of
    block ``j < n`` is saved and added, times a learned scalar ``w_j``, to the input of its mirror block ``L - 1 - j``::

        x_in(L-1-j) = x + w_j * out(j)          w_j = 1 + weight_bias_j, 1 at init (modded-nanogpt's torch.ones)

    For even L this is modded-nanogpt's push / pop; for odd L the middle block neither saves nor receives. The saved
    outputs live in a per-forward list outside the blocks, so gradient checkpointing and the KV cache see plain
    blocks. Only single-stream residuals (the config refuses the others).
    """

    def __init__(self, config: SkipNormConfig):
        super().__init__()
        self.num_layers = config.num_hidden_layers
        self.num_skips = config.num_hidden_layers // 2
        self.weight_bias = nn.Parameter(torch.empty(self.num_skips))  # w - 1

    def start(self) -> list:
        return []

    def enter(self, index: int, hidden_states: torch.Tensor, saved: list) -> torch.Tensor:
        source = self.num_layers - 1 - index  # the mirror block whose output this one receives
        if source >= self.num_skips:
            return hidden_states
        return hidden_states + (1.0 + self.weight_bias[source]).to(hidden_states.dtype) * saved[source]

    def leave(self, index: int, hidden_states: torch.Tensor, saved: list) -> torch.Tensor:
        if index < self.num_skips:
            saved.append(hidden_states)
        return hidden_states

    def extra_repr(self) -> str:
        return f"skips={self.num_skips}"


def build_unet_skips(config: SkipNormConfig):
    return UNetSkips(config) if config.unet_skips else NoUNetSkips()


# ----------------------------------------------------------------------------------------------------- layer drop
def layer_drop_rate(config: SkipNormConfig, layer_idx: int) -> float:
    """Drop probability of block `layer_idx` (0-based): `linear` is stochastic depth's schedule (Huang et al. 2016,
    arXiv 1603.09382), ``p_l = (l / L) * p_L`` for the 1-based ``l`` with ``p_L = layer_drop``; `uniform` is
    LayerDrop's one rate for every layer (Fan et al. 2019, arXiv 1909.11556)."""
    if config.layer_drop_schedule == "linear":
        return config.layer_drop * (layer_idx + 1) / config.num_hidden_layers
    return float(config.layer_drop)


class DropBranch(nn.Module):
    """Stochastic depth on one sublayer's branch, in the drop-path form Transformers use it (DeiT, Swin, timm): per
    sample, the branch output is dropped with probability ``p`` during training, and kept ones are scaled by
    ``1 / (1 - p)``, the inverted form of the paper's test-time ``p_survive * f`` rescaling, so evaluation is the plain
    deterministic model (and checkpoints need no conversion). The block still runs, so a KV cache stays consistent."""

    def __init__(self, rate: float):
        super().__init__()
        self.rate = float(rate)

    def forward(self, branch: torch.Tensor) -> torch.Tensor:  # (B, T, C)
        if not self.training:
            return branch
        keep = 1.0 - self.rate
        # drawn in float32 whatever the model dtype: the same seed drops the same samples in bf16 and float64
        uniform = torch.rand(branch.shape[0], *([1] * (branch.dim() - 1)), device=branch.device)
        return branch * ((uniform < keep).to(branch.dtype) / keep)

    def extra_repr(self) -> str:
        return f"rate={self.rate:g}"


# ----------------------------------------------------------------------------------------------------- QK norm
class PerHeadGainRMSNorm(nn.Module):
    """RMSNorm over each head's ``head_dim`` with a gain of its own per head, ``g_h * x_h / sqrt(mean(x_h^2) + eps)``
    (x-transformers' `MultiheadRMSNorm`), where Qwen3's QK-norm shares one gain ``g`` among all heads. Weight
    (heads, head_dim); ``1 + w`` with `norm_unit_offset` (x-transformers stores ``gamma + 1`` the same way)."""

    def __init__(self, config: SkipNormConfig, heads: int, head_dim: int):
        super().__init__()
        self.eps = config.norm_eps
        self.unit_offset = 1.0 if config.norm_unit_offset else 0.0
        self.weight = nn.Parameter(torch.empty(heads, head_dim))

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (..., heads, head_dim)
        dtype = torch.promote_types(x.dtype, torch.float32)
        normed = self.normalize(x.to(dtype)) * (self.weight.to(dtype) + self.unit_offset)
        return normed.to(x.dtype)

    def extra_repr(self) -> str:
        return f"{tuple(self.weight.shape)}, eps={self.eps}, unit_offset={bool(self.unit_offset)}"


class PerHeadGainLayerNorm(PerHeadGainRMSNorm):
    """LayerNorm over each head's ``head_dim`` with a gain (and, with `norm_bias`, a bias) per head."""

    def __init__(self, config: SkipNormConfig, heads: int, head_dim: int):
        super().__init__(config, heads, head_dim)
        self.bias = nn.Parameter(torch.empty(heads, head_dim)) if config.norm_bias else None

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        centered = x - x.mean(-1, keepdim=True)
        return centered * torch.rsqrt(centered.pow(2).mean(-1, keepdim=True) + self.eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = super().forward(x)
        return out if self.bias is None else out + self.bias.to(out.dtype)


PER_HEAD_GAIN_NORMS: dict[str, type[nn.Module]] = {"rmsnorm": PerHeadGainRMSNorm, "layernorm": PerHeadGainLayerNorm}

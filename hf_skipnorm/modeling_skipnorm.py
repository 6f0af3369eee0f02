"""SkipNorm models: a LLaMA-shaped transformer whose norm placement, norm type and residual are config fields.

Identical to transformers' `LlamaModel` except:
- each sublayer computes ``N_post(R(x, N_out(F(N_in(x)))))``; the placement (`norm_position`) decides which of
  the three norm slots exist (absent slots are `nn.Identity`), the residual (`residual`) decides ``R``;
- the norm class comes from `norm_type` (norms_skipnorm.py); norms may also sit inside a branch (Q/K norms, HybridNorm's
  QKV-norm, Sub-LN's norm before the output projection, NormFormer's head scales), and placements that rewire the
  block (parallel, B2T, ResiDual's dual stream) are block subclasses chosen by `block_topology`;
- positions may be RoPE (optionally partial), learned absolute, or none; the MLP may be gated or plain;
- the same stack serves decoders (`is_causal=True`) and bidirectional encoders (`is_causal=False`), with optional
  token-type embeddings and an embedding norm (BERT);
- the final norm is named `final_norm` and exists only where the placement implies it (or `final_norm` says so).
"""

from __future__ import annotations

import functools
import math
import os
import re
from collections.abc import Callable

import torch
from torch import nn

from transformers.activations import ACT2FN
from transformers.cache_utils import Cache, DynamicCache
from transformers.dynamic_module_utils import custom_object_save
from transformers.generation import GenerationMixin
from transformers import initialization as init
from transformers.masking_utils import create_bidirectional_mask, create_causal_mask
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import (
    BaseModelOutputWithPast,
    CausalLMOutputWithPast,
    MaskedLMOutput,
    SequenceClassifierOutputWithPast,
    TokenClassifierOutput,
)
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS, dynamic_rope_update
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS, PreTrainedModel
from transformers.processing_utils import Unpack
from transformers.utils import TransformersKwargs, can_return_tuple
from transformers.utils.deprecation import deprecate_kwarg
from transformers.utils.generic import merge_with_config_defaults
from transformers.utils.output_capturing import capture_outputs

from .configuration_skipnorm import PLACEMENT_SLOTS, SkipNormConfig, SublayerNorms
from .loading_skipnorm import safe_from_pretrained
from .norms_skipnorm import (
    HookableModule,
    Identity,
    SkipNormDynamicErf,
    SkipNormDynamicTanh,
    SkipNormScaleNorm,
    build_norm,
    fold_affine,
    through,
)
from .hyper_connections_skipnorm import (
    DenseStream,
    DepthWeightedAverage,
    DynamicHyperConnection,
    ManifoldHyperConnection,
    MultiStream,
    StaticHyperConnection,
    build_depth_average,
    stream_mixer,
)
from .depth_mixing_skipnorm import (
    AttnResStream,
    DepthAttention,
    depth_softmax,
    stack_sources,
    DropBranch,
    PER_HEAD_GAIN_NORMS,
    UNetSkips,
    build_unet_skips,
    layer_drop_rate,
    LearnedValueMix,
    TokenValueMix,
    build_value_residual,
    build_value_source,
)
from .residuals_skipnorm import (
    GATE_BIAS_INIT,
    AdminResidual,
    DynamicFracConnection,
    GatedResidual,
    LaurelLRResidual,
    LaurelPAResidual,
    LaurelPAStream,
    LaurelRWLRResidual,
    LaurelRWResidual,
    LayerScaleResidual,
    ReZeroResidual,
    build_residual,
    laurel_column_orthogonal,
)


# ----------------------------------------------------------------------------------------------------- inputs
# Bad inputs get a ValueError naming the input, the value and the valid range, not torch's bare IndexError (CPU) or
# device-side assert (CUDA). Shape checks are free; value checks cost one host sync per call and are skipped while
# torch.compile traces (a data-dependent branch would break fullgraph).
def check_inputs(input_ids: torch.Tensor | None, inputs_embeds: torch.Tensor | None, vocab_size: int) -> None:
    """Exactly one of `input_ids` (B, T) / `inputs_embeds` (B, T, C), non-empty, and every id in [0, vocab_size).

    One call per forward for all of it (the range check of `check_ids_in_range` inlined): a Python call per check
    was a visible share of a CPU decode step at small sizes (benchmarks/RESULTS.md, "Decode-path overhead")."""
    if (input_ids is None) ^ (inputs_embeds is not None):
        raise ValueError("You must specify exactly one of input_ids or inputs_embeds")
    name, tensor, dims = ("input_ids", input_ids, 2) if input_ids is not None else ("inputs_embeds", inputs_embeds, 3)
    if tensor.dim() != dims:
        raise ValueError(f"{name} must be {dims}-D, (batch, seq_len{', hidden_size' if dims == 3 else ''}); got shape "
                         f"{tuple(tensor.shape)}")
    if 0 in tensor.shape[:2]:
        raise ValueError(f"{name} is empty: shape {tuple(tensor.shape)}; valid: at least one sequence of one token")
    if input_ids is not None and not torch.compiler.is_compiling():
        low, high = torch.aminmax(input_ids)
        low, high = low.item(), high.item()
        if low < 0 or high >= vocab_size:
            raise_out_of_range("input_ids", low, high, vocab_size, "vocab_size")


def raise_out_of_range(name: str, low: int, high: int, size: int, field: str) -> None:
    raise ValueError(f"{name} holds {low if low < 0 else high}, outside the valid range [0, {size - 1}] "
                     f"(SkipNormConfig.{field}={size})")


def check_ids_in_range(name: str, ids: torch.Tensor | None, size: int, field: str) -> None:
    """Every id of `ids` must index a row of an embedding with `size` rows (`SkipNormConfig.<field>`)."""
    if ids is None or torch.compiler.is_compiling():
        return
    low, high = torch.aminmax(ids)  # one reduction, compared as Python ints (tensor comparisons cost 4x more)
    low, high = low.item(), high.item()
    if low < 0 or high >= size:
        raise_out_of_range(name, low, high, size, field)


def check_labels(labels: torch.Tensor | None, input_ids: torch.Tensor | None,
                 inputs_embeds: torch.Tensor | None) -> None:
    """One label per token (-100: ignored), for the causal LM, masked LM and token classification heads."""
    inputs = input_ids if input_ids is not None else inputs_embeds
    if labels is None or inputs is None:
        return  # no inputs: the base model names that
    expected = tuple(inputs.shape[:2])
    if tuple(labels.shape) != expected:
        raise ValueError(f"labels have shape {tuple(labels.shape)} but the inputs have {expected} tokens; valid: one "
                         f"label per token, shape {expected} (-100 for tokens without a label)")


# ----------------------------------------------------------------------------------------------------- positions
class SkipNormRotaryEmbedding(HookableModule):
    """RoPE (Su et al., arXiv 2104.09864) over the first ``head_dim * partial_rotary_factor`` dims of each head.

    Returns ``(hidden_states, (cos, sin))``: the embeddings pass through unchanged, the angles go to attention.
    """

    def __init__(self, config: SkipNormConfig):
        super().__init__()
        self.config = config
        self.rope_type = config.rope_parameters.get("rope_type", "default")
        self.max_seq_len_cached = config.max_position_embeddings
        self.original_max_seq_len = config.max_position_embeddings
        rope_init_fn = self.compute_default_rope_parameters
        if self.rope_type != "default":
            rope_init_fn = ROPE_INIT_FUNCTIONS[self.rope_type]
        inv_freq, self.attention_scaling = rope_init_fn(config)
        # Non-persistent: derived from the config, so checkpoints stay free of them; transformers' default
        # `_init_weights` recomputes them after meta-device loading (it matches "RotaryEmbedding" + original_inv_freq).
        self.register_buffer("inv_freq", inv_freq, persistent=False)
        self.register_buffer("original_inv_freq", inv_freq.clone(), persistent=False)

    @staticmethod
    def compute_default_rope_parameters(config: SkipNormConfig, device=None, seq_len=None) -> tuple[torch.Tensor, float]:
        base = config.rope_parameters["rope_theta"]
        dim = int(config.head_dim * config.partial_rotary_factor)
        inv_freq = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.int64).to(device=device, dtype=torch.float) / dim))
        return inv_freq, 1.0

    # No `torch.no_grad()` (LLaMA dropped it too): the angles depend only on buffers and positions, so autograd records
    # nothing, and the context manager cost a dozen Python calls per forward, a visible share of a CPU decode step.
    @dynamic_rope_update
    def rotary(self, x: torch.Tensor, position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        dtype = torch.float64 if x.dtype == torch.float64 else torch.float32  # angles in at least float32 (LLaMA)
        freqs = position_ids[:, None, :, None].to(dtype) * self.inv_freq.to(device=x.device, dtype=dtype)  # (B, 1, T, r/2)
        emb = torch.cat((freqs, freqs), dim=-1)  # (B, 1, T, r): the head axis once here, not per layer in attention
        return (emb.cos() * self.attention_scaling).to(x.dtype), (emb.sin() * self.attention_scaling).to(x.dtype)

    def forward(self, hidden_states: torch.Tensor, position_ids: torch.Tensor):
        return hidden_states, self.rotary(hidden_states, position_ids)


class SkipNormLearnedPositions(nn.Embedding):
    """Learned absolute positions added to the token embeddings (GPT-2, BERT)."""

    def __init__(self, config: SkipNormConfig):
        super().__init__(config.max_position_embeddings, config.hidden_size)

    def forward(self, hidden_states: torch.Tensor, position_ids: torch.Tensor):
        check_ids_in_range("position_ids", position_ids, self.num_embeddings, "max_position_embeddings")
        return hidden_states + super().forward(position_ids), None


class SkipNormNoPositions(nn.Module):
    """No positional signal at all (NoPE, Kazemnejad et al. 2023, arXiv 2305.19466); a causal mask still orders."""

    def __init__(self, config: SkipNormConfig):
        super().__init__()

    def forward(self, hidden_states: torch.Tensor, position_ids: torch.Tensor):
        return hidden_states, None


POSITION_CLASSES: dict[str, type[nn.Module]] = {
    "rope": SkipNormRotaryEmbedding,
    "learned": SkipNormLearnedPositions,
    "none": SkipNormNoPositions,
}


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate the first ``cos.shape[-1]`` dims of each head of ``x`` (B, H, T, hd); the rest pass through."""
    rotary_dim = cos.shape[-1]  # cos, sin: (B, 1, T, r), broadcast over the heads
    if rotary_dim == x.shape[-1]:
        return x * cos + rotate_half(x) * sin
    x_rot, x_pass = x[..., :rotary_dim], x[..., rotary_dim:]
    return torch.cat((x_rot * cos + rotate_half(x_rot) * sin, x_pass), dim=-1)


# ----------------------------------------------------------------------------------------------------- attention
def repeat_kv(hidden_states: torch.Tensor, n_rep: int) -> torch.Tensor:
    """(B, H_kv, T, hd) -> (B, H_kv * n_rep, T, hd) for grouped-query attention."""
    if n_rep == 1:
        return hidden_states
    batch, num_kv, seq, head_dim = hidden_states.shape
    return hidden_states[:, :, None].expand(batch, num_kv, n_rep, seq, head_dim).reshape(batch, num_kv * n_rep, seq, head_dim)


def eager_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    softcap: float | None = None,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor]:
    """softmax(cap(Q K^T * scaling) + mask) V, the reference path that the other backends must match.

    ``cap(s) = softcap * tanh(s / softcap)`` when `attn_logit_softcapping` is set (Gemma 2, arXiv 2408.00118).
    """
    key = repeat_kv(key, module.num_key_value_groups)
    value = repeat_kv(value, module.num_key_value_groups)
    attn_weights = torch.matmul(query, key.transpose(2, 3)) * scaling  # (B, H, T, S)
    if softcap is not None:
        attn_weights = softcap * torch.tanh(attn_weights / softcap)
    if attention_mask is not None:
        attn_weights = attn_weights + attention_mask
    # softmax in at least float32 (half precision saturates), in float64 for float64 checks
    softmax_dtype = torch.promote_types(query.dtype, torch.float32)
    attn_weights = nn.functional.softmax(attn_weights, dim=-1, dtype=softmax_dtype).to(query.dtype)
    attn_weights = nn.functional.dropout(attn_weights, p=dropout, training=module.training)
    attn_output = torch.matmul(attn_weights, value).transpose(1, 2).contiguous()  # (B, T, H, hd)
    return attn_output, attn_weights


class SkipNormHeadScale(nn.Module):
    """NormFormer's HeadScale (arXiv 2110.09456): head ``h``'s attention output times a learned gain ``gamma_h``
    (init 1), before `o_proj`. The paper counts it among its three "normalization operations"; it is stored as
    `head_scale_norm` so the Trainer's no-decay rule (names with `_norm.`) leaves it, like every norm gain, undecayed."""

    def __init__(self, num_heads: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_heads))

    def forward(self, heads: torch.Tensor) -> torch.Tensor:  # (B, T, H, hd)
        return heads * self.weight[:, None].to(heads.dtype)


def build_qk_norm(config: SkipNormConfig, qk_norm: str, heads: int, head_dim: int) -> nn.Module:
    """The Q or K norm for `qk_norm`: the configured norm over each head's `head_dim` with one gain shared by the
    heads (`per_head`, Qwen3), over the whole projection (`full`, OLMo 2), or per head with a gain of each head's own
    (`per_head_gains`, x-transformers' MultiheadRMSNorm); an absent slot for `none`."""
    if qk_norm == "per_head_gains":
        return PER_HEAD_GAIN_NORMS[config.norm_type](config, heads, head_dim)
    return build_norm(config, heads * head_dim if qk_norm == "full" else head_dim, qk_norm != "none", "attn")


class SkipNormAttention(HookableModule):
    """Multi-head attention with grouped-query heads, RoPE and a KV cache, through transformers' attention interface.

    ``o_proj(N_sub(HeadScale(softmax(q k^T / sqrt(hd)) v)))`` with ``q = N_q(W_q x)``, ``k = N_k(W_k x)``,
    ``v = N_v(W_v x)``; every ``N`` is an identity unless the config asks for it: `qk_norm` (per head, Qwen3 / Gemma 3;
    or over the full projection, OLMo 2), HybridNorm's QKV-norm (per head, arXiv 2503.04598), NormFormer's HeadScale
    (arXiv 2110.09456), Sub-LN's norm before `o_proj` (Magneto, arXiv 2210.06423). Q/K norms act before RoPE.
    """

    def __init__(self, config: SkipNormConfig, layer_idx: int, norms: SublayerNorms = SublayerNorms(),
                 init_gain: float = 1.0):
        super().__init__()
        self.config = config
        self.layer_idx = layer_idx
        self.head_dim = config.head_dim
        self.num_key_value_groups = config.num_attention_heads // config.num_key_value_heads
        # softmax(s Q K^T): s = 1/sqrt(head_dim) (Vaswani et al. 2017) unless the config sets it (Gemma 2, Granite).
        self.scaling = self.head_dim**-0.5 if config.attention_multiplier is None else config.attention_multiplier
        self.softcap = config.attn_logit_softcapping  # None: no capping; every backend accepts the keyword
        self.attention_dropout = config.attention_dropout
        self.is_causal = config.is_causal
        self.init_gain = float(init_gain)  # Magneto's gamma on v_proj / o_proj at init (_init_weights), else 1
        heads, kv_heads, hd = config.num_attention_heads, config.num_key_value_heads, self.head_dim
        self.q_proj = nn.Linear(config.hidden_size, heads * hd, bias=config.attention_bias)
        self.k_proj = nn.Linear(config.hidden_size, kv_heads * hd, bias=config.attention_bias)
        self.v_proj = nn.Linear(config.hidden_size, kv_heads * hd, bias=config.attention_bias)
        self.o_proj = nn.Linear(heads * hd, config.hidden_size, bias=config.attention_bias)

        qk_norm = "per_head" if norms.qkv else config.qk_norm
        # The shape each Q/K norm sees: (heads, hd) normalizes each head's vector, (heads * hd,) the whole projection.
        # -1 heads, never the config's count: under tensor parallelism a rank holds only its share of the heads.
        self.qk_norm_shape = (-1,) if qk_norm == "full" else (-1, hd)
        self.q_norm = build_qk_norm(config, qk_norm, heads, hd)
        self.k_norm = build_qk_norm(config, qk_norm, kv_heads, hd)
        self.v_norm = build_norm(config, hd, norms.qkv, "attn")
        self.head_scale_norm = SkipNormHeadScale(heads) if norms.head_scale else Identity()
        self.sub_norm = build_norm(config, heads * hd, norms.sub, "attn")
        self.value_residual = build_value_residual(config, layer_idx)  # ResFormer's V mix (arXiv 2410.17897)

    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")
    def forward(
        self,
        hidden_states: torch.Tensor,  # (B, T, C)
        position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None,
        attention_mask: torch.Tensor | None = None,
        cache: Cache | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        input_shape = hidden_states.shape[:-1]
        hidden_shape = (*input_shape, -1, self.head_dim)
        query = self.through(self.q_proj(hidden_states).view(*input_shape, *self.qk_norm_shape), "q_norm")
        key = self.through(self.k_proj(hidden_states).view(*input_shape, *self.qk_norm_shape), "k_norm")
        query = query.view(hidden_shape).transpose(1, 2)  # (B, H, T, hd)
        key = key.view(hidden_shape).transpose(1, 2)  # (B, H_kv, T, hd)
        value = self.through(self.v_proj(hidden_states).view(hidden_shape), "v_norm").transpose(1, 2)
        first_layer_values = kwargs.pop("first_layer_values", None)
        if not isinstance(self.value_residual, Identity):  # ResFormer's V mix; `value_residual="none"` skips the call
            value = self.value_residual(value, hidden_states, first_layer_values)  # (B, H_kv, T, hd)
        if position_embeddings is not None:
            cos, sin = position_embeddings
            query, key = apply_rotary(query, cos, sin), apply_rotary(key, cos, sin)
        attn_output, attn_weights = self.attend(query, key, value, attention_mask, cache, **kwargs)
        attn_output = self.through(attn_output, "head_scale_norm")  # (B, T, H, hd)
        attn_output = self.through(attn_output.reshape(*input_shape, -1).contiguous(), "sub_norm")  # (B, T, H*hd)
        return self.o_proj(attn_output), attn_weights

    def attend(self, query, key, value, attention_mask, cache: Cache | None, **kwargs):
        """``softmax(scaling * q k^T + mask) v`` through the configured attention backend, after appending this
        step's keys and values to `cache`: (B, H, T, hd) inputs, (B, T, H, hd) output and the weights (or None).
        Shared by every attention of the family (nGPT's too), whatever it does to q, k and v before."""
        if cache is not None:
            key, value = cache.update(key, value, self.layer_idx)
        attention_interface: Callable = ALL_ATTENTION_FUNCTIONS.get_interface(
            self.config._attn_implementation, eager_attention_forward
        )
        return attention_interface(
            self,
            query,
            key,
            value,
            attention_mask,
            dropout=0.0 if not self.training else self.attention_dropout,
            scaling=self.scaling,
            softcap=self.softcap,
            **kwargs,
        )

    through = through  # x through the present slots among the named ones (absent slots are not called)


def build_dropout(p: float) -> nn.Module:
    """`nn.Dropout(p)`, or an absent slot when ``p == 0``: `nn.Dropout` costs several microseconds per call even at
    p = 0 (F.dropout's checks), and a block calls it twice per decoded token (benchmarks/RESULTS.md)."""
    return nn.Dropout(p) if p > 0 else Identity()


def build_branch_dropout(config: SkipNormConfig, layer_idx: int) -> nn.Module:
    """What every sublayer's branch passes through before the skip: `hidden_dropout`, then layer drop (stochastic
    depth at `layer_drop_rate`, arXiv 1603.09382 / 1909.11556) when `layer_drop` > 0; an absent slot when neither."""
    dropout = build_dropout(config.hidden_dropout)
    rate = layer_drop_rate(config, layer_idx)
    if rate == 0.0:
        return dropout
    return DropBranch(rate) if config.hidden_dropout == 0 else nn.Sequential(dropout, DropBranch(rate))


# ----------------------------------------------------------------------------------------------------- embeddings
class SkipNormScaledEmbedding(nn.Embedding):
    """``m * E[ids]`` with the Python float ``m = embedding_multiplier`` (Gemma's sqrt(d), BART / Marian / M2M100's
    `scale_embedding`), applied in the lookup as transformers' scaled word embeddings do: `get_input_embeddings()(ids)`
    is what the model reads for `ids`, and a caller's `inputs_embeds` are used as given. The weight is the plain
    table (`embed_tokens.weight`, tied to the lm_head unscaled)."""

    def __init__(self, num_embeddings: int, embedding_dim: int, padding_idx: int | None, scale: float):
        super().__init__(num_embeddings, embedding_dim, padding_idx)
        self.scale = float(scale)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return super().forward(input_ids) * self.scale

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, scale={self.scale:g}"


def build_token_embedding(config: SkipNormConfig) -> nn.Embedding:
    """The token embedding: a plain `nn.Embedding` unless `embedding_multiplier` scales it."""
    if float(config.embedding_multiplier) == 1.0:
        return nn.Embedding(config.vocab_size, config.hidden_size, config.pad_token_id)
    return SkipNormScaledEmbedding(config.vocab_size, config.hidden_size, config.pad_token_id,
                                   config.embedding_multiplier)


# ----------------------------------------------------------------------------------------------------- MLPs
class SkipNormGatedMLP(HookableModule):
    """``down(N_sub(act(gate(x)) * up(x)))``: SwiGLU / GeGLU by `hidden_act` (Shazeer 2020, arXiv 2002.05202).

    ``N_sub`` (`sub_norm`, over `intermediate_size`) is Sub-LN's / NormFormer's norm before the output projection;
    an identity unless the placement asks for it.
    """

    def __init__(self, config: SkipNormConfig, norms: SublayerNorms = SublayerNorms(), init_gain: float = 1.0):
        super().__init__()
        self.init_gain = float(init_gain)  # Magneto's gamma on every projection at init (_init_weights), else 1
        self.gate_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=config.mlp_bias)
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=config.mlp_bias)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=config.mlp_bias)
        self.act_fn = ACT2FN[config.hidden_act]
        self.sub_norm = build_norm(config, config.intermediate_size, norms.sub, "mlp")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.through(self.act_fn(self.gate_proj(x)) * self.up_proj(x), "sub_norm"))

    through = through  # x through the present slots among the named ones (absent slots are not called)


class SkipNormPlainMLP(HookableModule):
    """``down(N_sub(act(up(x))))``: the two-layer MLP of GPT-2 and BERT (``N_sub`` as in the gated MLP)."""

    def __init__(self, config: SkipNormConfig, norms: SublayerNorms = SublayerNorms(), init_gain: float = 1.0):
        super().__init__()
        self.init_gain = float(init_gain)
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=config.mlp_bias)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=config.mlp_bias)
        self.act_fn = ACT2FN[config.hidden_act]
        self.sub_norm = build_norm(config, config.intermediate_size, norms.sub, "mlp")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.through(self.act_fn(self.up_proj(x)), "sub_norm"))

    through = through


MLP_CLASSES: dict[str, type[nn.Module]] = {"gated": SkipNormGatedMLP, "plain": SkipNormPlainMLP}


# ----------------------------------------------------------------------------------------------------- the block
class SkipNormBlock(GradientCheckpointingLayer):
    """One transformer block: attention, then MLP, each as ``N_post(R(x, N_out(F(N_in(x)))))``.

    With ``R(x, y) = x + y`` the placements read: pre ``x + F(N(x))`` (Xiong et al. 2020, arXiv 2002.04745),
    post ``N(x + F(x))`` (Vaswani et al. 2017), sandwich ``x + N(F(N(x)))`` (arXiv 2105.13290),
    output ``x + N(F(x))`` (OLMo 2, arXiv 2501.00656), pre_post ``N(x + F(N(x)))`` (arXiv 2601.19895), none ``x + F(x)``.
    Slot names say what they normalize: ``*_pre_norm`` the sublayer input, ``*_out_norm`` the branch output before
    the skip, ``*_post_norm`` the sum after the skip; norms inside a branch live in the branch (`self_attn.q_norm`,
    `self_attn.sub_norm`, `mlp.sub_norm`, ...). The placement table (`PLACEMENT_SLOTS`) also gives subln
    (Magneto, arXiv 2210.06423), normformer (arXiv 2110.09456), hybrid / hybrid_pre (HybridNorm, arXiv 2503.04598),
    peri (arXiv 2502.02732) and, resolved per layer, mix (Mix-LN, arXiv 2412.13795). With `norm_depth_scaling` the
    input norms output ``N(x) / sqrt(l)`` (LayerNorm Scaling, arXiv 2502.05795).
    """

    def __init__(self, config: SkipNormConfig, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        attn_position, mlp_position = config.layer_norm_positions(layer_idx)
        attn_norms = PLACEMENT_SLOTS[attn_position][0]
        mlp_norms = PLACEMENT_SLOTS[mlp_position][1]
        input_scale = config.norm_depth_scale(layer_idx)  # LayerNorm Scaling on N_in; 1.0 when off
        magneto = config.subln_init_gain  # Sub-LN's init gain gamma, only on subln sublayers
        d = config.hidden_size

        self.attn_pre_norm = build_norm(config, d, attn_norms.pre, "attn", input_scale)
        self.self_attn = SkipNormAttention(config, layer_idx, attn_norms, magneto if attn_position == "subln" else 1.0)
        self.attn_out_norm = build_norm(config, d, attn_norms.out, "attn")
        self.attn_residual = build_residual(config, layer_idx, "attn")
        self.attn_post_norm = build_norm(config, d, attn_norms.post, "attn")

        self.mlp_pre_norm = build_norm(config, d, mlp_norms.pre, "mlp", input_scale)
        self.mlp = MLP_CLASSES[config.mlp_type](config, mlp_norms, magneto if mlp_position == "subln" else 1.0)
        self.mlp_out_norm = build_norm(config, d, mlp_norms.out, "mlp")
        self.mlp_residual = build_residual(config, layer_idx, "mlp")
        self.mlp_post_norm = build_norm(config, d, mlp_norms.post, "mlp")

        self.branch_dropout = build_branch_dropout(config, layer_idx)

    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")
    def forward(
        self,
        hidden_states: torch.Tensor,  # (B, T, C)
        attention_mask: torch.Tensor | None = None,
        position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None,
        cache: Cache | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> torch.Tensor:
        # x = attn_post_norm(attn_residual(x, branch_dropout(attn_out_norm(attn(attn_pre_norm(x)))))), then the
        # same for the MLP; `through` applies the named slots in order and skips the absent ones without a call.
        x = hidden_states
        attn, _ = self.self_attn(
            self.through(x, "attn_pre_norm"), position_embeddings=position_embeddings, attention_mask=attention_mask,
            cache=cache, **kwargs,
        )
        x = self.through(self.attn_residual(x, self.through(attn, "attn_out_norm", "branch_dropout")), "attn_post_norm")
        mlp = self.mlp(self.through(x, "mlp_pre_norm"))
        x = self.through(self.mlp_residual(x, self.through(mlp, "mlp_out_norm", "branch_dropout")), "mlp_post_norm")
        return x

    through = through  # x through the present slots among the named ones (absent slots are not called)


class SkipNormParallelBlock(SkipNormBlock):
    """Parallel attention and MLP: ``R(x, N_ao(Attn(N_a(x))) + N_mo(MLP(N_m(x))))`` (GPT-J; GPT-NeoX
    `use_parallel_residual`; PaLM, arXiv 2204.02311). With `parallel_shared_norm` one `shared_pre_norm` feeds both
    branches (GPT-J, Phi, Cohere), and `attn_pre_norm` / `mlp_pre_norm` are identities. One skip, one combine
    (`residual`), so placements with a norm after the skip are refused by the config.
    """

    def __init__(self, config: SkipNormConfig, layer_idx: int):
        super().__init__(config, layer_idx)
        shared = config.parallel_shared_norm
        attn_norms = PLACEMENT_SLOTS[config.layer_norm_positions(layer_idx)[0]][0]
        self.shared_pre_norm = build_norm(config, config.hidden_size, shared and attn_norms.pre, "attn",
                                          config.norm_depth_scale(layer_idx))
        if shared:
            self.attn_pre_norm, self.mlp_pre_norm = Identity(), Identity()
        # One skip for the summed branches: keep the attention's combine module and drop the MLP's.
        self.residual = self.attn_residual
        del self.attn_residual, self.mlp_residual

    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")
    def forward(
        self,
        hidden_states: torch.Tensor,  # (B, T, C)
        attention_mask: torch.Tensor | None = None,
        position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None,
        cache: Cache | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> torch.Tensor:
        x = hidden_states
        u = self.shared_pre_norm(x)
        attn, _ = self.self_attn(
            self.attn_pre_norm(u), position_embeddings=position_embeddings, attention_mask=attention_mask,
            cache=cache, **kwargs,
        )
        mlp = self.mlp(self.mlp_pre_norm(u))
        branches = self.branch_dropout(self.attn_out_norm(attn)) + self.branch_dropout(self.mlp_out_norm(mlp))
        return self.residual(x, branches)


class SkipNormB2TBlock(SkipNormBlock):
    """Post-LN with the B2T connection (Takase et al., arXiv 2206.00330, Findings of ACL 2023):
    ``h = N_a(x + Attn(x))``, ``out = N_m(h + FFN(h) + x)``: the block input skips to the last norm, so the
    gradient has a path around every post-LN norm but the last. Norms: `attn_post_norm`, `mlp_post_norm`.
    """

    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")
    def forward(
        self,
        hidden_states: torch.Tensor,  # (B, T, C)
        attention_mask: torch.Tensor | None = None,
        position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None,
        cache: Cache | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> torch.Tensor:
        x = hidden_states
        attn, _ = self.self_attn(
            x, position_embeddings=position_embeddings, attention_mask=attention_mask, cache=cache, **kwargs,
        )
        h = self.attn_post_norm(self.attn_residual(x, self.branch_dropout(attn)))
        return self.mlp_post_norm(self.mlp_residual(h, self.branch_dropout(self.mlp(h))) + x)


class SkipNormResiDualBlock(SkipNormBlock):
    """ResiDual's Pre-Post-LN block (Xie et al., arXiv 2304.14802), per sublayer ``F``:
    ``x <- N(x + F(x))`` (the post-LN stream) and ``d <- d + F(x)`` (the dual stream, never normalized).

    The stream is one tensor (B, T, 2, C): ``[..., 0, :]`` is ``x``, ``[..., 1, :]`` is ``d`` (`ResiDualStream`).
    """

    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")
    def forward(
        self,
        hidden_states: torch.Tensor,  # (B, T, 2, C)
        attention_mask: torch.Tensor | None = None,
        position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None,
        cache: Cache | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> torch.Tensor:
        x, d = hidden_states.unbind(-2)  # (B, T, C) each
        attn, _ = self.self_attn(
            x, position_embeddings=position_embeddings, attention_mask=attention_mask, cache=cache, **kwargs,
        )
        attn = self.branch_dropout(attn)
        x, d = self.attn_post_norm(self.attn_residual(x, attn)), d + attn
        mlp = self.branch_dropout(self.mlp(x))
        x, d = self.mlp_post_norm(self.mlp_residual(x, mlp)), d + mlp
        return torch.stack((x, d), dim=-2)


class SkipNormHyperConnectionBlock(SkipNormBlock):
    """A block on ``n`` residual streams (B, T, n, C): hyper-connections (`hyper`, arXiv 2409.19606) or mHC (`mhc`,
    arXiv 2512.24880); or on the ``m`` fractions of one stream (B, T, C): Frac-Connections (`frac`, arXiv 2503.14125,
    whose `width` / `depth` reshape to fractions and back). Per sublayer, with ``T(h) = N_out(F(N_in(h)))`` the sequential block's own sublayer::

        h, mixed, w = connection.width(H)     (h = A_m^T H, mixed = A_r^T H, w = B)
        H = mixed + w^T T(h)                  (connection.depth)

    The connection modules sit in the `attn_residual` / `mlp_residual` slots; the config refuses placements with a
    norm after the skip. `stream_recompute` runs `width` under a checkpoint (`mix`), recomputed in backward.
    """

    def __init__(self, config: SkipNormConfig, layer_idx: int):
        super().__init__(config, layer_idx)
        self.mix = stream_mixer(config)  # a module-level function: (connection, streams) -> width(streams)

    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")
    def forward(
        self,
        hidden_states: torch.Tensor,  # (B, T, n, C)
        attention_mask: torch.Tensor | None = None,
        position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None,
        cache: Cache | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> torch.Tensor:
        streams = hidden_states
        h, mixed, write = self.mix(self.attn_residual, streams)
        attn, _ = self.self_attn(
            self.attn_pre_norm(h), position_embeddings=position_embeddings, attention_mask=attention_mask,
            cache=cache, **kwargs,
        )
        streams = self.attn_residual.depth(mixed, write, self.branch_dropout(self.attn_out_norm(attn)), streams.dtype)
        h, mixed, write = self.mix(self.mlp_residual, streams)
        mlp = self.mlp(self.mlp_pre_norm(h))
        return self.mlp_residual.depth(mixed, write, self.branch_dropout(self.mlp_out_norm(mlp)), streams.dtype)


class SkipNormDenseBlock(SkipNormBlock):
    """A DenseFormer block (arXiv 2402.02622): the sequential block ``Y_{l+1} = Block(X_l)``, then the depth-weighted
    average ``X_{l+1} = DWA([Y_0, ..., Y_{l+1}])`` (`depth_average`).

    The state is one tensor ``[Y_0, ..., Y_l, X_l]`` (B, T, l + 2, C) in, ``[Y_0, ..., Y_{l+1}, X_{l+1}]`` out.
    """

    def __init__(self, config: SkipNormConfig, layer_idx: int):
        super().__init__(config, layer_idx)
        self.depth_average = build_depth_average(config, layer_idx)

    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")
    def forward(
        self,
        hidden_states: torch.Tensor,  # (B, T, l + 2, C)
        attention_mask: torch.Tensor | None = None,
        position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None,
        cache: Cache | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> torch.Tensor:
        history, x = hidden_states[..., :-1, :], hidden_states[..., -1, :]
        y = super().forward(x, attention_mask=attention_mask, position_embeddings=position_embeddings, cache=cache,
                            **kwargs)
        history = torch.cat((history, y.unsqueeze(-2)), dim=-2)  # (B, T, l + 2, C)
        return torch.cat((history, self.depth_average(history).unsqueeze(-2)), dim=-2)


class SkipNormAttnResBlock(SkipNormBlock):
    """A block under Attention Residuals (Kimi Team, arXiv 2603.15031): per sublayer ``F`` (with its norms),

        h = sum_i alpha_i v_i            (`*_residual.aggregate`: softmax over depth with the sublayer's pseudo-query)
        sources <- write(sources, F(h))  (a new source, or added to the current block's partial sum)

    The state is the stack of sources (B, T, S, C) (`AttnResStream`); the depth-attention modules sit in the
    `attn_residual` / `mlp_residual` slots. The config refuses placements with a norm after the skip.
    """

    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")
    def forward(
        self,
        hidden_states: torch.Tensor,  # (B, T, S, C)
        attention_mask: torch.Tensor | None = None,
        position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None,
        cache: Cache | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> torch.Tensor:
        sources = self.attn_residual.split(hidden_states)  # (stack shared by both sublayers, *latest)
        means, lse = depth_softmax(sources[0], self.attn_residual, self.mlp_residual)  # both queries in one pass
        h = self.attn_residual.combine(means[0], lse[..., 0], *sources[1:], dtype=hidden_states.dtype)
        attn, _ = self.self_attn(
            self.attn_pre_norm(h), position_embeddings=position_embeddings, attention_mask=attention_mask,
            cache=cache, **kwargs,
        )
        sources = self.attn_residual.write(sources, self.branch_dropout(self.attn_out_norm(attn)))
        h = self.mlp_residual.combine(means[1], lse[..., 1], *sources[1:], dtype=hidden_states.dtype)
        mlp = self.mlp(self.mlp_pre_norm(h))
        return stack_sources(self.mlp_residual.write(sources, self.branch_dropout(self.mlp_out_norm(mlp))))


class SkipNormLaurelPABlock(SkipNormBlock):
    """The sequential block under LAuReL-PA (arXiv 2411.07501, Sec. 2.3, Eq. 4): per sublayer, with its norms,

        x_{i+1} = N_post(F(x_i) + x_i + sum_j gamma_j B A x_{i-j})     (`*_residual`: `LaurelPAResidual`)

    The state is ``[x_i, x_{i-1}, ..., x_{i-k+1}]`` (B, T, k, C) (`LaurelPAStream`): each sublayer reads ``x_i``
    and the k - 1 outputs before it, then pushes its output in front.
    """

    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")
    def forward(
        self,
        hidden_states: torch.Tensor,  # (B, T, k, C)
        attention_mask: torch.Tensor | None = None,
        position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None,
        cache: Cache | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> torch.Tensor:
        state = hidden_states
        x, previous = state[..., 0, :], state[..., 1:, :]
        attn, _ = self.self_attn(
            self.attn_pre_norm(x), position_embeddings=position_embeddings, attention_mask=attention_mask,
            cache=cache, **kwargs,
        )
        x = self.attn_post_norm(self.attn_residual(x, self.branch_dropout(self.attn_out_norm(attn)), previous))
        state = LaurelPAStream.push(state, x)
        x, previous = state[..., 0, :], state[..., 1:, :]
        mlp = self.mlp(self.mlp_pre_norm(x))
        x = self.mlp_post_norm(self.mlp_residual(x, self.branch_dropout(self.mlp_out_norm(mlp)), previous))
        return LaurelPAStream.push(state, x)


# ----------------------------------------------------------------------------------------------------- topologies
# Which block class builds layer `l`. Placements and residuals that change the block's wiring (parallel blocks,
# dual streams, hyper-connections, ...) add a block subclass and a row here; `block_topology` picks the row.
BLOCK_CLASSES: dict[str, type[nn.Module]] = {
    "sequential": SkipNormBlock,
    "parallel": SkipNormParallelBlock,
    "b2t": SkipNormB2TBlock,
    "resi_dual": SkipNormResiDualBlock,
    "hyper": SkipNormHyperConnectionBlock,
    "dense": SkipNormDenseBlock,
    "attn_res": SkipNormAttnResBlock,
    "laurel_pa": SkipNormLaurelPABlock,
}


def block_topology(config: SkipNormConfig, layer_idx: int) -> str:
    """The `BLOCK_CLASSES` key for block `layer_idx`: placements that rewire the block name their own class (the
    config refuses mixing them across sublayers or with `parallel_block`), then the parallel block, else sequential."""
    if config.architecture == "ngpt":  # the normalized Transformer replaces the whole block (ngpt_skipnorm.py)
        return "ngpt"
    attn_position, _ = config.layer_norm_positions(layer_idx)
    if attn_position in ("b2t", "resi_dual"):
        return attn_position
    if config.parallel_block:
        return "parallel"
    if config.residual in ("hyper", "mhc", "frac"):  # the config refuses them with parallel / b2t / resi_dual blocks
        return "hyper"
    if config.residual == "dense":
        return "dense"
    if config.residual == "attn_res":
        return "attn_res"
    if config.residual == "laurel" and config.laurel_variant == "pa":  # the config refuses it with rewired blocks
        return "laurel_pa"
    return "sequential"


class SingleStream(nn.Module):
    """The residual stream is one tensor (B, T, C): nothing to expand before the blocks or reduce after them.

    Multi-stream residuals (hyper-connections: (B, T, n, C); dual streams) replace this with a module whose
    `expand` builds the stream state from the embeddings and whose `reduce` maps it back to (B, T, C).
    """

    def expand(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return hidden_states

    def reduce(self, stream: torch.Tensor) -> torch.Tensor:
        return stream


class ResiDualStream(nn.Module):
    """ResiDual's two streams as one tensor (B, T, 2, C) (arXiv 2304.14802; microsoft/ResiDual):
    both start at the embeddings (``x_1 = d_1 = e``); the output is ``x_L + N(d_L)`` with `dual_final_norm`.
    """

    def __init__(self, config: SkipNormConfig):
        super().__init__()
        self.dual_final_norm = build_norm(config, config.hidden_size, True, "final")

    def expand(self, hidden_states: torch.Tensor) -> torch.Tensor:  # (B, T, C) -> (B, T, 2, C)
        return torch.stack((hidden_states, hidden_states), dim=-2)

    def reduce(self, stream: torch.Tensor) -> torch.Tensor:  # (B, T, 2, C) -> (B, T, C)
        x, d = stream.unbind(-2)
        return x + self.dual_final_norm(d)


def build_stream(config: SkipNormConfig) -> nn.Module:
    if config.norm_position == "resi_dual":  # whole-stack only (the config refuses it in lists and overrides)
        return ResiDualStream(config)
    if config.residual in ("hyper", "mhc"):
        return MultiStream(config)
    if config.residual == "dense":
        return DenseStream()
    if config.residual == "attn_res":
        return AttnResStream(config)
    if config.residual == "laurel" and config.laurel_variant == "pa":
        return LaurelPAStream(config)
    return SingleStream()


def reduce_captured_streams(forward: Callable) -> Callable:
    """`output_hidden_states` records each block's output, which for multi-stream residuals (hyper-connections,
    mHC, DenseFormer, ResiDual) is the whole stream state, (B, T, n, C). Report what the final norm would read
    instead, (B, T, C), as every transformers model does; `diagnostics.py` hooks the blocks for the raw state.
    `return_dict=False` is applied after the reduction (transformers' tuple holds the same tensors)."""

    @functools.wraps(forward)
    def wrapper(self, *args, **kwargs):
        as_tuple = kwargs.pop("return_dict", None) is False
        outputs = forward(self, *args, **kwargs)  # a ModelOutput (config.return_dict=False is refused)
        hidden_states = getattr(outputs, "hidden_states", None)
        if hidden_states is not None:
            outputs.hidden_states = tuple(
                h if h is None or h.dim() == 3 else self.residual_stream.reduce(h) for h in hidden_states
            )
        return outputs.to_tuple() if as_tuple else outputs

    return wrapper


# ----------------------------------------------------------------------------------------------------- models
# Auto class -> head class, written to config.json's `auto_map` by every `save_pretrained` (issue 14): a saved
# folder (the Trainer's checkpoint-N included) then opens with `trust_remote_code=True` where hf_skipnorm is not
# installed, as a backbone or under any head. `register_for_auto_class` would record only one Auto class.
AUTO_MAP_HEADS = {
    "AutoModel": "SkipNormModel",
    "AutoModelForCausalLM": "SkipNormForCausalLM",
    "AutoModelForMaskedLM": "SkipNormForMaskedLM",
    "AutoModelForSequenceClassification": "SkipNormForSequenceClassification",
    "AutoModelForTokenClassification": "SkipNormForTokenClassification",
}


def remote_auto_map(model_class: type, config_class: type) -> dict[str, str]:
    """`auto_map` naming the config and every head as ``module.Class`` of the files copied beside the weights (the
    heads of the model's own family: `model_class.auto_map_heads`; the encoder-decoders have theirs)."""
    modeling_module = model_class.__module__.rsplit(".", 1)[-1]
    auto_map = {"AutoConfig": f"{config_class.__module__.rsplit('.', 1)[-1]}.{config_class.__name__}"}
    heads = getattr(model_class, "auto_map_heads", AUTO_MAP_HEADS)
    auto_map.update({auto: f"{modeling_module}.{name}" for auto, name in heads.items()})
    return auto_map


class SkipNormPreTrainedModel(PreTrainedModel):
    config_class = SkipNormConfig
    config: SkipNormConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    # Filled per instance by SkipNormModel with the block classes it actually holds: accelerate's FSDP wrap policy
    # looks each listed name up in the model and raises on a name that is absent, and matches by isinstance, so the
    # list must be exactly the present classes (a subclass such as the parallel block is not "SkipNormBlock").
    _no_split_modules: list[str] = []
    # Set per instance by SkipNormModel (`fp32_residual_patterns`): transformers checks that each listed module exists.
    _keep_in_fp32_modules_strict: list[str] = []
    _supports_flash_attn = True
    _supports_flex_attn = True
    _supports_attention_backend = True
    # The class default; each instance narrows it in `post_init` to what its own modules allow.
    _can_compile_fullgraph = True
    _can_record_outputs = {"hidden_states": SkipNormBlock, "attentions": SkipNormAttention}
    auto_map_heads: dict[str, str] = AUTO_MAP_HEADS  # written to auto_map by save_pretrained

    @property
    def _supports_sdpa(self) -> bool:
        # SDPA cannot soft-cap attention scores (transformers raises if asked), so soft-capped configs default to eager.
        return self.config.attn_logit_softcapping is None

    def post_init(self) -> None:
        super().post_init()
        # True only if a fullgraph compile of this instance has no graph break: a block class or stream adapter whose
        # forward breaks the graph declares `compiles_fullgraph = False` (tests/test_compile.py checks every topology
        # both ways, so the flag cannot drift from what dynamo really does).
        self._can_compile_fullgraph = all(getattr(module, "compiles_fullgraph", True) for module in self.modules())

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, **kwargs):
        """transformers' `from_pretrained`, safetensors only, and refusing weights that do not match the config
        (see loading_skipnorm.py): a checkpoint never gets unpickled or silently half-initialized."""
        loaded = safe_from_pretrained(super().from_pretrained, pretrained_model_name_or_path, *model_args, **kwargs)
        (loaded[0] if isinstance(loaded, tuple) else loaded).check_tensor_parallel()
        return loaded

    def check_tensor_parallel(self) -> None:
        """Under tensor parallelism (`tp_plan="auto"`), each rank must hold whole attention heads."""
        tp_size = getattr(self, "_tp_size", None) or 1
        if tp_size == 1 or not any(key.endswith("self_attn.q_proj") for key in self.tp_plan):
            return
        for field in ("num_attention_heads", "num_key_value_heads"):
            heads = getattr(self.config, field)
            if heads % tp_size:
                raise ValueError(
                    f"SkipNormConfig.{field}={heads} cannot be split over tp_size={tp_size} ranks: tensor parallelism "
                    f"shards attention by heads, so tp_size must divide {field} (valid: "
                    f"{[n for n in range(1, heads + 1) if heads % n == 0]})"
                )

    def save_pretrained(self, save_directory, *args, **kwargs):
        """transformers' `save_pretrained` plus what a machine without hf_skipnorm needs to load the folder:
        `auto_map` for the config and every head, and the model code (this file and the sibling modules it imports,
        copied the way transformers copies remote code). State-dict keys and the safetensors files are unchanged."""
        self.config.auto_map = remote_auto_map(type(self), type(self.config))
        result = super().save_pretrained(save_directory, *args, **kwargs)
        if kwargs.get("is_main_process", True) and os.path.isdir(save_directory):
            custom_object_save(self, save_directory)  # copies the files only: config=None leaves auto_map alone
        return result

    def _initialize_weights(self, module: nn.Module, is_custom_code: bool = False) -> None:
        # transformers marks a custom-code module with no direct parameters as initialized without calling
        # `_init_weights` (a guard for remote code that writes weights in place). Ours uses `transformers.initialization`,
        # which skips loaded tensors itself, and parents (attention, MLP) must run to re-init their branch projections.
        super()._initialize_weights(module, is_custom_code=False)

    def branch_init_std(self) -> float:
        """Std of the branch output projections (`o_proj`, `down_proj`) from `branch_init`."""
        std = self.config.initializer_range
        return {
            "normal": std,
            "scaled_depth": std / math.sqrt(2 * self.config.num_hidden_layers),  # GPT-2 (Radford et al. 2019)
            "zero": 0.0,  # every branch starts as 0: SkipInit (arXiv 2002.10444)
        }[self.config.branch_init]

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        """All initialization, as a table (children are initialized before their parents):

        | module | init |
        | Linear, Embedding | N(0, initializer_range); biases 0; padding row 0 |
        | norm gain / bias | 1 (0 when `norm_unit_offset`, since the gain is 1 + w) / 0 |
        | attention o_proj, MLP down_proj | N(0, branch std) from `branch_init` (zero: all 0) |
        | subln sublayers: v_proj, o_proj, gate/up/down_proj | the above times Magneto's gamma = sqrt(log 2L) |
        | ScaleNorm g | sqrt(d) (arXiv 1910.05895) |
        | DyT / Derf alpha, Derf shift | `dyt_alpha_init` (attention: `dyt_attn_alpha_init`) or `derf_alpha_init`, 0 |
        | NormFormer head scales | 1 |
        | `branch_init_gain` set (deepnorm: beta = (8L)^(-1/4)) | Xavier-normal: q/k_proj gain 1; v/o_proj and every MLP
          projection gain `branch_init_gain` (DeepNet's deepnorm_init, arXiv 2203.00555) |
        | Admin omega / ReZero a / LayerScale lambda offsets (`*_bias`) | 0: omega = `admin_omegas` (or 1), a = 0,
          lambda = `layerscale_init` |
        | gated residual gate bias | -1 (sigmoid(-1) = 0.27: the skip dominates, Highway networks) |
        | hyper-connections (SHC / DHC) | offsets 0: A_m = e_{k mod n}, A_r = I, B = 1; dynamic W = 0, s = 0.01 |
        | mHC | b_pre = e_{k mod n}, b_post = 0, b_res = I (logits); phi = 0; gating offsets 0 (alpha = 0.01) |
        | DenseFormer depth weights | offsets 0: the plain residual (weight 1 on the latest block output) |
        | Frac-Connections (SFC / DFC) | offsets 0: Y = A = I, B = 1 (the plain residual); dynamic W = 0, s = 0.01 |
        | LAuReL-RW logits a, b (`alpha_logit_bias`, `beta_logit_bias`) | 0: alpha = beta = 1/2 (softmax or sigmoid) |
        | LAuReL-LR B (`laurel_up`), A (`laurel_down`) | 0: W = I + B A = I (the plain residual); A column-orthogonal,
          A_ij = 1/sqrt(r d) where i mod r = j (arXiv 2411.07501, footnote 2) |
        | LAuReL-PA gamma offsets (`gamma_bias`), B, A | 0 (gamma = 1), 0 (the plain residual), as LAuReL-LR's A |
        | value residual: learned lambda offsets / per-token mix_proj W, b | 0 (lambda = (0.5, 0.5); sigmoid(0) = 0.5) |
        | U-Net skip weights w (`unet_skips.weight_bias`) | offsets 0: w = 1 (modded-nanogpt) |
        | AttnRes pseudo-queries w (`query_bias`), key RMSNorm gain | 0 (uniform weights over depth, the paper's init) / 1 |
        | rotary inv_freq | recomputed from the config (transformers' default) |
        | nGPT (`architecture="ngpt"`) | the above, then embeddings, lm_head, q/k/v/gate/up rows and o/down columns unit
          vectors; alpha, s_qk, s_u, s_v, s_z offsets 0 (their paper inits, ngpt_skipnorm.py) |
        """
        super()._init_weights(module)
        if hasattr(module, "unit_offset") and getattr(module, "weight", None) is not None:
            # Our norms: gain = unit_offset + weight, so the stored weight starts at 1 - unit_offset.
            init.constant_(module.weight, 1.0 - module.unit_offset)
            if getattr(module, "bias", None) is not None:
                init.zeros_(module.bias)
        if isinstance(module, SkipNormScaleNorm):
            init.constant_(module.scale, module.scale_init)
        if isinstance(module, SkipNormDynamicTanh):  # Derf too (a subclass)
            init.constant_(module.alpha, module.alpha_init)
        if isinstance(module, SkipNormDynamicErf):
            init.zeros_(module.shift)
        if isinstance(module, SkipNormHeadScale):
            init.ones_(module.weight)
        branch_out = {SkipNormAttention: "o_proj", SkipNormGatedMLP: "down_proj", SkipNormPlainMLP: "down_proj"}
        if type(module) in branch_out:
            proj = getattr(module, branch_out[type(module)])
            std = self.branch_init_std() * module.init_gain
            if std == 0.0:
                init.zeros_(proj.weight)
            else:
                init.normal_(proj.weight, mean=0.0, std=std)
            # Magneto (arXiv 2210.06423) scales the init of every branch weight but Q and K by gamma (torchscale:
            # fc1, fc2, out_proj, v_proj); gamma is 1 outside subln sublayers, so nothing is redrawn there.
            if module.init_gain != 1.0:
                for name in ("v_proj", "gate_proj", "up_proj"):
                    if hasattr(module, name):
                        init.normal_(getattr(module, name).weight, mean=0.0,
                                     std=self.config.initializer_range * module.init_gain)
        self._init_residual_weights(module)
        self._init_ngpt_weights(module)

    def _init_ngpt_weights(self, module: nn.Module) -> None:
        """nGPT's rows of the `_init_weights` table (arXiv 2410.01131; NVIDIA/ngpt): the usual normal draw, then every
        matrix row (column for W_o / down_proj) and embedding along the hidden dimension made a unit vector, after
        the module's own Linears are drawn (children first); scalings at their paper init (offsets 0)."""
        if isinstance(module, NGPTScaling):
            init.zeros_(module.s_bias)
        unit_weights = dict(NGPT_UNIT_WEIGHTS)
        for attribute, dim in unit_weights.get(type(module), ()):
            weight = getattr(module, attribute).weight
            init.copy_(weight, ngpt_unit(weight, dim=dim))
        if self.config.architecture == "ngpt" and isinstance(module, (SkipNormModel, SkipNormForCausalLM)):
            embedding = module.embed_tokens if isinstance(module, SkipNormModel) else module.lm_head
            init.copy_(embedding.weight, ngpt_unit(embedding.weight, dim=-1))

    def _init_residual_weights(self, module: nn.Module) -> None:
        """The residual catalogue's rows of the `_init_weights` table."""
        gain = self.config.branch_init_gain
        if gain is not None and isinstance(module, SkipNormAttention):
            init.xavier_normal_(module.q_proj.weight, gain=1.0)
            init.xavier_normal_(module.k_proj.weight, gain=1.0)
            init.xavier_normal_(module.v_proj.weight, gain=gain)
            init.xavier_normal_(module.o_proj.weight, gain=gain)
        if gain is not None and isinstance(module, (SkipNormGatedMLP, SkipNormPlainMLP)):
            for proj in (module.get_submodule(name) for name in ("gate_proj", "up_proj", "down_proj")
                         if hasattr(module, name)):
                init.xavier_normal_(proj.weight, gain=gain)
        if isinstance(module, AdminResidual):
            init.zeros_(module.omega_bias)
        if isinstance(module, ReZeroResidual):
            init.zeros_(module.alpha_bias)
        if isinstance(module, LayerScaleResidual):
            init.zeros_(module.lambda_bias)
        if isinstance(module, GatedResidual):
            init.constant_(module.gate_proj.bias, GATE_BIAS_INIT)
        if isinstance(module, StaticHyperConnection):
            for param in (module.input_bias, module.mixing_bias, module.output_bias):
                init.zeros_(param)
        if isinstance(module, DynamicHyperConnection):
            for param in (module.dynamic_width_proj.weight, module.dynamic_depth_proj.weight, module.width_scale_bias,
                          module.depth_scale_bias):
                init.zeros_(param)
        if isinstance(module, ManifoldHyperConnection):
            one_hot = torch.zeros(module.num_streams, dtype=module.pre_bias.dtype, device=module.pre_bias.device)
            one_hot[module.input_stream] = 1.0
            init.copy_(module.pre_bias, one_hot)
            init.zeros_(module.post_bias)
            init.eye_(module.res_bias)
            for param in (module.dynamic_proj.weight, module.pre_scale_bias, module.post_scale_bias,
                          module.res_scale_bias):
                init.zeros_(param)
        if isinstance(module, DepthWeightedAverage):
            init.zeros_(module.alpha_bias)
        if isinstance(module, DynamicFracConnection):  # its static offsets are zeroed by the hyper-connection row
            for param in (module.dynamic_width_proj.weight, module.dynamic_depth_proj.weight, module.width_scale_bias,
                          module.depth_scale_bias):
                init.zeros_(param)
        if isinstance(module, LaurelRWResidual):  # RW and RW+LR: logits 0 (the paper states no init)
            init.zeros_(module.alpha_logit_bias)
            init.zeros_(module.beta_logit_bias)
        if isinstance(module, (LaurelLRResidual, LaurelRWLRResidual)):  # B = 0: W = I + B A starts as the identity
            init.zeros_(module.laurel_up.weight)
            init.copy_(module.laurel_down.weight, laurel_column_orthogonal(module.laurel_down.weight))
        if isinstance(module, LaurelPAResidual):  # gamma = 1, B = 0 (the plain residual), A as LAuReL-LR's
            init.zeros_(module.gamma_bias)
            init.zeros_(module.laurel_up.weight)
            init.copy_(module.laurel_down.weight, laurel_column_orthogonal(module.laurel_down.weight))
        if isinstance(module, DepthAttention):
            init.zeros_(module.query_bias)
        if isinstance(module, UNetSkips):
            init.zeros_(module.weight_bias)
        if isinstance(module, LearnedValueMix):
            init.zeros_(module.lambda_bias)
        if isinstance(module, TokenValueMix):
            init.zeros_(module.mix_proj.weight)
            init.zeros_(module.mix_proj.bias)

    @torch.no_grad()
    def admin_profile(self, batch: torch.Tensor | dict) -> list[float]:
        """Admin's profiling pass (Liu et al. 2020, arXiv 2004.08249, Sec. 5): set every ``omega`` from a forward
        pass on `batch` (input ids, or a dict of model inputs; labels are ignored) and store them in
        `config.admin_omegas`, so `from_config` / `save_pretrained` reproduce them. Returns the omegas.

        As the authors' code (Transformer-Clinic, ``adaptive-profiling``) computes it, sublayer by sublayer in
        forward order: ``omega_1 = 1``, ``omega_{i+1} = sqrt(Var[omega_i * x_i] + Var[F_i(x_i)])``, where ``x_i`` is
        the sublayer's skip input, ``F_i(x_i)`` its branch output and Var the variance over every element of the
        batch. The pass runs in eval mode (the authors' runs in train mode, dropout included), which makes it
        deterministic. The learned offsets ``omega_bias`` are left as they are (0 at init). The first sublayer's skip
        input is the embedding output, so its variance enters ``omega_2``: fairseq, where Admin was built, scales
        embeddings to unit variance; here that is `embedding_norm=True` (BERT-style post-LN).
        """
        if self.config.residual != "admin":
            raise ValueError(f"admin_profile needs SkipNormConfig.residual='admin', got {self.config.residual!r}")
        inputs = dict(batch) if isinstance(batch, dict) else {"input_ids": batch}
        inputs.pop("labels", None)
        residuals = sorted((m for m in self.modules() if isinstance(m, AdminResidual)), key=lambda m: m.sublayer_index)
        omegas = [1.0] * len(residuals)
        running = [1.0]  # omega of the next sublayer in forward order

        def profile(module: AdminResidual, args: tuple) -> None:
            x, y = args
            module.omega_init = running[0]
            omegas[module.sublayer_index] = running[0]
            skip = (module.omega_init + module.omega_bias.double()) * x.double()
            running[0] = math.sqrt(skip.var(unbiased=False).item() + y.double().var(unbiased=False).item())

        handles = [module.register_forward_pre_hook(profile) for module in residuals]
        was_training = self.training
        try:
            self.eval()
            self(**inputs, use_cache=False)
        finally:
            self.train(was_training)
            for handle in handles:
                handle.remove()
        self.config.admin_omegas = omegas
        return omegas


# Hyper-connection weights stay float32 when loading in bf16/fp16 (they also compute in float32): small mixing
# matrices whose products over depth amplify rounding (mHC, arXiv 2512.24880, keeps them in full precision).
FP32_RESIDUALS: tuple[type[nn.Module], ...] = (StaticHyperConnection, ManifoldHyperConnection, DepthAttention)


def fp32_residual_patterns(model: nn.Module) -> list[str]:
    """`_keep_in_fp32_modules_strict` for `model`: one ``<slot>.<parameter>`` module path per parameter (or submodule)
    of the FP32_RESIDUALS it holds, e.g. ``attn_residual.input_bias``, ``residual_stream.query_bias`` (none for a model
    without them). transformers' loader searches each as a pattern, its tests look each up as a module path in the
    state dict. The modules are also made float32 here, at construction, as transformers requires of strict-fp32
    modules (so `from_config(..., dtype=torch.bfloat16)` keeps them in float32 too)."""
    names = set()
    for path, module in model.named_modules():
        if isinstance(module, FP32_RESIDUALS):
            if any(param.dtype in (torch.float16, torch.bfloat16) for param in module.parameters()):
                module.float()  # built under a half default dtype; a float64 model stays float64
            slot = path.rsplit(".", 1)[-1]
            names |= {f"{slot}.{name.split('.')[0]}" for name, _ in module.named_parameters()}
    return sorted(names)


def tensor_parallel_blockers(layer: nn.Module) -> dict[str, list[str]]:
    """Why a block's attention / MLP cannot be sharded by heads / hidden units: a norm or gain over the whole
    projection width (rank-local slices would normalize the wrong vector). Empty lists: shardable."""
    attn, mlp = layer.self_attn, layer.mlp
    attn_blockers = [
        reason for reason, module in (
            ("qk_norm='full' (a norm over the whole Q/K projection)",
             attn.q_norm if attn.qk_norm_shape == (-1,) else Identity()),
            ("NormFormer's head_scale_norm (one gain per global head)", attn.head_scale_norm),
            ("qk_norm='per_head_gains' (one gain vector per global head)",
             attn.q_norm if isinstance(attn.q_norm, tuple(PER_HEAD_GAIN_NORMS.values())) else Identity()),
            ("the attention sub_norm over heads * head_dim (subln, normformer)", attn.sub_norm),
            ("nGPT's s_qk (one gain per global head and dim)", getattr(attn, "qk_scale", Identity())),
        ) if not isinstance(module, Identity)
    ]
    mlp_blockers = [] if isinstance(mlp.sub_norm, Identity) else [
        "the MLP sub_norm over intermediate_size (subln, normformer)"]
    if hasattr(mlp, "up_scale"):  # nGPT's s_u, s_v: one gain per global hidden unit
        mlp_blockers.append("nGPT's s_u / s_v over intermediate_size")
    return {"self_attn": attn_blockers, "mlp": mlp_blockers}


def tensor_parallel_plan(model: nn.Module, plan: dict[str, str]) -> dict[str, str]:
    """`plan` (the config's `base_model_tp_plan`) narrowed to what `model` builds: rules naming no module are dropped
    (`gate_proj` of a plain MLP), and a sublayer that some block cannot shard (`tensor_parallel_blockers`) stays
    whole on every rank in all blocks (transformers' plans match all layers by one `layers.*` rule). Per-head Q/K/V
    norms of sharded attention see only the rank's heads, so their replicated gains sum gradients over the ranks
    (`replicated_with_grad_allreduce`, as transformers' Qwen3 plan does)."""
    generic = {re.sub(r"\.\d+(\.|$)", r".*\1", name) for name, _ in model.named_modules()}
    blocked = {part for layer in model.layers for part, why in tensor_parallel_blockers(layer).items() if why}
    plan = {
        key: style for key, style in plan.items()
        if key in generic and not any(key.startswith(f"layers.*.{part}.") for part in blocked)
    }
    if "self_attn" not in blocked:
        for norm in ("q_norm", "k_norm", "v_norm"):
            if any(next(getattr(layer.self_attn, norm).parameters(), None) is not None for layer in model.layers):
                plan[f"layers.*.self_attn.{norm}"] = "replicated_with_grad_allreduce"
    return plan


class SkipNormModel(SkipNormPreTrainedModel):
    """Embeddings -> blocks -> optional final norm; returns the last hidden state."""

    def __init__(self, config: SkipNormConfig):
        super().__init__(config)
        if config.is_encoder_decoder:
            raise ValueError(
                "SkipNormConfig(is_encoder_decoder=True) is not valid for SkipNormModel and its decoder/encoder heads; "
                "use SkipNormEncoderDecoderModel or SkipNormForConditionalGeneration (AutoModel / AutoModelForSeq2SeqLM)"
            )
        self.padding_idx = config.pad_token_id
        # Gemma's sqrt(d) as a Python float in the lookup (nothing for loading to wipe); a plain table when it is 1.
        self.embed_tokens = build_token_embedding(config)
        self.embed_positions = POSITION_CLASSES[config.position_embedding](config)
        self.embed_token_types = (
            nn.Embedding(config.type_vocab_size, config.hidden_size) if config.type_vocab_size > 0 else None
        )
        self.embedding_norm = build_norm(config, config.hidden_size, config.embedding_norm)
        self.embedding_dropout = build_dropout(config.hidden_dropout)
        self.layers = nn.ModuleList(
            [BLOCK_CLASSES[block_topology(config, i)](config, i) for i in range(config.num_hidden_layers)]
        )
        self._no_split_modules = sorted({type(layer).__name__ for layer in self.layers})  # see the class attribute
        self.residual_stream = build_stream(config)
        self.value_source = build_value_source(config, self.layers)  # hands V_1 to later layers (value_residual)
        self.unet_skips = build_unet_skips(config)  # modded-nanogpt's U-Net skips, or nothing
        self.final_norm = build_norm(config, config.hidden_size, config.use_final_norm)
        self.gradient_checkpointing = False
        self._keep_in_fp32_modules_strict = fp32_residual_patterns(self)
        self.post_init()

    def init_parallel_plans(self) -> None:
        super().init_parallel_plans()
        self._tp_plan = tensor_parallel_plan(self, self._tp_plan)  # per config: what this model can shard

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embed_tokens

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.embed_tokens = value

    # `AutoModel` maps the one config type to this class; encoder-decoder configs get their own base model.
    @classmethod
    def _from_config(cls, config, **kwargs):
        if cls is SkipNormModel and getattr(config, "is_encoder_decoder", False):
            from .modeling_seq2seq_skipnorm import SkipNormEncoderDecoderModel

            return SkipNormEncoderDecoderModel._from_config(config, **kwargs)
        return super()._from_config(config, **kwargs)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, **kwargs):
        config = kwargs.get("config")
        if cls is SkipNormModel and not isinstance(config, SkipNormConfig):
            lookup = {k: kwargs[k] for k in ("cache_dir", "revision", "local_files_only", "token", "subfolder")
                      if k in kwargs}
            config = SkipNormConfig.from_pretrained(pretrained_model_name_or_path, **lookup)
        if cls is SkipNormModel and config.is_encoder_decoder:
            from .modeling_seq2seq_skipnorm import SkipNormEncoderDecoderModel

            return SkipNormEncoderDecoderModel.from_pretrained(pretrained_model_name_or_path, *model_args, **kwargs)
        return super().from_pretrained(pretrained_model_name_or_path, *model_args, **kwargs)

    def embed(
        self,
        inputs_embeds: torch.Tensor,  # (B, T, C)
        position_ids: torch.Tensor,  # (B, T)
        token_type_ids: torch.Tensor | None,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor] | None]:
        hidden_states, rotary = self.embed_positions(inputs_embeds, position_ids)
        if self.embed_token_types is not None:
            if token_type_ids is None:  # BERT's default: every token is segment 0
                token_type_ids = torch.zeros_like(position_ids)
            check_ids_in_range("token_type_ids", token_type_ids, self.config.type_vocab_size, "type_vocab_size")
            hidden_states = hidden_states + self.embed_token_types(token_type_ids)
        elif token_type_ids is not None:
            raise ValueError("token_type_ids were given but SkipNormConfig.type_vocab_size=0 (no token-type embedding)")
        return self.through(hidden_states, "embedding_norm", "embedding_dropout"), rotary

    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")
    @merge_with_config_defaults
    @reduce_captured_streams
    @capture_outputs
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        token_type_ids: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> BaseModelOutputWithPast:
        config = self.config  # each read of a config attribute is a Python call (PreTrainedConfig.__getattribute__)
        check_inputs(input_ids, inputs_embeds, config.vocab_size)
        if inputs_embeds is None:
            # Gemma: * sqrt(hidden_size) in the lookup (SkipNormScaledEmbedding); a caller's inputs_embeds as given
            inputs_embeds = self.embed_tokens(input_ids)
        is_causal = config.is_causal
        if not is_causal:
            use_cache = False  # an encoder re-reads the whole sequence; a cache would be wrong, not just useless
        if use_cache and cache is None:
            cache = DynamicCache(config=config)
        if position_ids is None:
            position_ids = self.default_position_ids(inputs_embeds, attention_mask, cache)

        mask_function = create_causal_mask if is_causal else create_bidirectional_mask
        mask = mask_function(
            config=config, inputs_embeds=inputs_embeds, attention_mask=attention_mask, cache=cache,
            position_ids=position_ids,
        )
        hidden_states, rotary = self.embed(inputs_embeds, position_ids, token_type_ids)
        stream = self.residual_stream.expand(hidden_states)
        kwargs = self.value_source.attach(kwargs)
        saved = self.unet_skips.start()
        for index, block in enumerate(self.layers[: config.num_hidden_layers]):
            stream = block(
                self.unet_skips.enter(index, stream, saved), attention_mask=mask, position_embeddings=rotary,
                position_ids=position_ids, cache=cache, use_cache=use_cache, **kwargs,
            )
            stream = self.unet_skips.leave(index, stream, saved)
        hidden_states = self.through(self.residual_stream.reduce(stream), "final_norm")
        return BaseModelOutputWithPast(last_hidden_state=hidden_states, cache=cache)

    through = through  # x through the present slots among the named ones (absent slots are not called)

    @staticmethod
    def default_position_ids(
        inputs_embeds: torch.Tensor, attention_mask: torch.Tensor | None, cache: Cache | None
    ) -> torch.Tensor:
        """Positions that skip left padding, so a left-padded row sees the same positions as the unpadded one."""
        seq_len = inputs_embeds.shape[1]
        past = cache.get_seq_length() if cache is not None else 0
        if attention_mask is not None and attention_mask.dim() == 2 and attention_mask.shape[-1] == past + seq_len:
            position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)  # (B, past + T)
            return position_ids[:, -seq_len:]
        return (torch.arange(seq_len, device=inputs_embeds.device) + past).unsqueeze(0)


class LogitSoftCap(nn.Module):
    """``cap * tanh(logits / cap)``: bounds the logits to (-cap, cap) smoothly (Gemma 2, arXiv 2408.00118)."""

    def __init__(self, cap: float):
        super().__init__()
        self.cap = float(cap)

    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        return self.cap * torch.tanh(logits / self.cap)

    def extra_repr(self) -> str:
        return f"cap={self.cap}"


def build_logit_softcap(cap: float | None) -> nn.Module:
    """`final_logit_softcapping`: the cap, or `nn.Identity` when unset (so `forward` never tests a flag)."""
    return Identity() if cap is None else LogitSoftCap(cap)


def build_logit_scale(config: SkipNormConfig) -> nn.Module:
    """nGPT's learned logit scale ``s_z`` (arXiv 2410.01131) for `architecture="ngpt"`, else `nn.Identity`."""
    return NGPTLogitScale(config) if config.architecture == "ngpt" else Identity()


class SkipNormForCausalLM(SkipNormPreTrainedModel, GenerationMixin):
    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}
    _tp_plan = {"lm_head": "colwise_gather_output"}

    def __init__(self, config: SkipNormConfig):
        super().__init__(config)
        self.model = SkipNormModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=config.lm_head_bias)
        self.logit_scale = build_logit_scale(config)  # nGPT's s_z; identity otherwise
        self.logit_softcap = build_logit_softcap(config.final_logit_softcapping)
        self.post_init()

    def resize_token_embeddings(self, new_num_tokens: int | None = None, pad_to_multiple_of: int | None = None,
                                mean_resizing: bool = True) -> nn.Embedding:
        """transformers' resize (embedding, lm_head and its bias), plus nGPT's per-token logit scale ``s_z``: kept
        rows stay, new ones start at the paper's init (``s_bias = 0``)."""
        embeddings = super().resize_token_embeddings(new_num_tokens, pad_to_multiple_of, mean_resizing)
        if isinstance(self.logit_scale, NGPTLogitScale):
            old, rows = self.logit_scale.s_bias, embeddings.weight.shape[0]
            bias = torch.zeros(rows, dtype=old.dtype, device=old.device)
            keep = min(rows, old.shape[0])
            bias[:keep] = old.detach()[:keep]
            self.logit_scale.s_bias = nn.Parameter(bias, requires_grad=old.requires_grad)
        return embeddings

    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")
    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        **kwargs: Unpack[TransformersKwargs],
    ) -> CausalLMOutputWithPast:
        check_labels(labels, input_ids, inputs_embeds)
        outputs: BaseModelOutputWithPast = self.model(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, cache=cache,
            inputs_embeds=inputs_embeds, use_cache=use_cache, **kwargs,
        )
        hidden_states = outputs.last_hidden_state
        keep = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
        logits = self.through(self.lm_head(hidden_states[:, keep, :]), "logit_scale", "logit_softcap")  # (B, T_keep, V)
        loss = None
        if labels is not None:
            loss = self.loss_function(logits=logits, labels=labels, vocab_size=self.config.vocab_size, **kwargs)
        return CausalLMOutputWithPast(
            loss=loss, logits=logits, cache=outputs.cache, hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
        )

    through = through  # x through the present slots among the named ones (absent slots are not called)


class SkipNormMaskedLMTransform(nn.Module):
    """BERT's prediction-head transform before the vocabulary projection: ``N(act(W x + b))``."""

    def __init__(self, config: SkipNormConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.act_fn = ACT2FN[config.hidden_act]
        self.norm = build_norm(config, config.hidden_size, config.norm_type != "none")

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.norm(self.act_fn(self.dense(hidden_states)))


class SkipNormForMaskedLM(SkipNormPreTrainedModel):
    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}
    _tp_plan = {"lm_head": "colwise_gather_output"}  # tied to the vocabulary-sharded embeddings under TP

    def __init__(self, config: SkipNormConfig):
        super().__init__(config)
        self.model = SkipNormModel(config)
        self.mlm_transform = SkipNormMaskedLMTransform(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=True)  # BERT's decoder has a bias
        self.post_init()

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        token_type_ids: torch.LongTensor | None = None,
        labels: torch.LongTensor | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> MaskedLMOutput:
        check_labels(labels, input_ids, inputs_embeds)
        outputs: BaseModelOutputWithPast = self.model(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
            inputs_embeds=inputs_embeds, token_type_ids=token_type_ids, use_cache=False, **kwargs,
        )
        logits = self.lm_head(self.mlm_transform(outputs.last_hidden_state))  # (B, T, V)
        loss = None
        if labels is not None:
            loss = self.loss_function(logits=logits, labels=labels, vocab_size=self.config.vocab_size, **kwargs)
        return MaskedLMOutput(loss=loss, logits=logits, hidden_states=outputs.hidden_states, attentions=outputs.attentions)


def _pool(hidden_states: torch.Tensor, how: str, attention_mask: torch.Tensor | None,
          input_ids: torch.Tensor | None, pad_token_id: int | None) -> torch.Tensor:
    """(B, T, C) -> (B, C): the last real token (right or left padding), the first token, or the masked mean."""
    batch, seq_len = hidden_states.shape[:2]
    if attention_mask is not None:
        real = attention_mask.to(hidden_states.device, torch.long)
    elif input_ids is not None and pad_token_id is not None:
        real = (input_ids != pad_token_id).to(hidden_states.device, torch.long)
    else:
        real = torch.ones(batch, seq_len, dtype=torch.long, device=hidden_states.device)
    if how == "mean":
        weights = real.unsqueeze(-1).to(hidden_states.dtype)
        return (hidden_states * weights).sum(1) / weights.sum(1).clamp(min=1.0)
    positions = torch.arange(seq_len, device=hidden_states.device)
    index = (positions * real).argmax(-1) if how == "last" else (real * (seq_len - positions)).argmax(-1)
    return hidden_states[torch.arange(batch, device=hidden_states.device), index]


class SkipNormForSequenceClassification(SkipNormPreTrainedModel):
    """Pooled (`classifier_pooling`) hidden state -> `score`; loss by `problem_type` as in transformers."""

    def __init__(self, config: SkipNormConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.model = SkipNormModel(config)
        self.classifier_dropout = build_dropout(config.hidden_dropout)
        self.score = nn.Linear(config.hidden_size, config.num_labels, bias=False)
        self.post_init()

    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")
    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        token_type_ids: torch.LongTensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> SequenceClassifierOutputWithPast:
        outputs: BaseModelOutputWithPast = self.model(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, cache=cache,
            inputs_embeds=inputs_embeds, token_type_ids=token_type_ids, use_cache=use_cache, **kwargs,
        )
        pooled = _pool(outputs.last_hidden_state, self.config.resolved_classifier_pooling, attention_mask, input_ids,
                       self.config.pad_token_id)
        logits = self.score(self.classifier_dropout(pooled))  # (B, num_labels)
        loss = None
        if labels is not None:
            loss = self.loss_function(logits=logits, labels=labels, pooled_logits=logits, config=self.config)
        return SequenceClassifierOutputWithPast(
            loss=loss, logits=logits, cache=outputs.cache, hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
        )


class SkipNormForTokenClassification(SkipNormPreTrainedModel):
    """Per-token `score` on the last hidden state (NER, POS tagging)."""

    def __init__(self, config: SkipNormConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.model = SkipNormModel(config)
        self.classifier_dropout = build_dropout(config.hidden_dropout)
        self.score = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        token_type_ids: torch.LongTensor | None = None,
        labels: torch.LongTensor | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> TokenClassifierOutput:
        check_labels(labels, input_ids, inputs_embeds)
        outputs: BaseModelOutputWithPast = self.model(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
            inputs_embeds=inputs_embeds, token_type_ids=token_type_ids, use_cache=False, **kwargs,
        )
        logits = self.score(self.classifier_dropout(outputs.last_hidden_state))  # (B, T, num_labels)
        loss = None
        if labels is not None:
            loss = self.loss_function(logits, labels, self.config)
        return TokenClassifierOutput(loss=loss, logits=logits, hidden_states=outputs.hidden_states,
                                     attentions=outputs.attentions)


__all__ = [
    "SkipNormPreTrainedModel",
    "SkipNormModel",
    "SkipNormForCausalLM",
    "SkipNormForMaskedLM",
    "SkipNormForSequenceClassification",
    "SkipNormForTokenClassification",
    "SkipNormBlock",
]


# nGPT (arXiv 2410.01131) builds on the attention, MLP and block above, so its sibling module is imported last.
from .ngpt_skipnorm import (  # noqa: E402
    NGPT_UNIT_WEIGHTS,
    NGPTLogitScale,
    NGPTScaling,
    SkipNormNGPTBlock,
)
from .ngpt_skipnorm import unit as ngpt_unit  # noqa: E402

BLOCK_CLASSES["ngpt"] = SkipNormNGPTBlock

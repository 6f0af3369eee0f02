"""nGPT, the normalized Transformer (Loshchilov, Hsieh, Sun & Ginsburg, arXiv 2410.01131; reference code NVIDIA/ngpt).

Identical to the SkipNorm decoder except (`architecture="ngpt"`):
- every embedding and every matrix row along the hidden dimension is a unit vector (``Norm(x) = x / ||x||``); the
  weights are normalized at init (`_init_weights`) and again after every optimizer step by
  `ngpt_training.NGPTNormalizeCallback` (`normalize_ngpt_weights_` here), and the paper trains without weight decay;
- no norm layers; each sublayer moves the hidden state along the sphere (the paper's block updates, Sec. 2)::

      h_A = Norm(Attn(h))           h <- Norm(h + alpha_A * (h_A - h))
      h_M = Norm(MLP(h))            h <- Norm(h + alpha_M * (h_M - h))

  with per-channel eigen learning rates ``alpha`` (the reference code takes ``|alpha|``);
- attention: ``q <- s_qk * Norm(q)``, ``k <- s_qk * Norm(k)`` per head after RoPE, softmax scale ``sqrt(d_k)``;
- MLP: SwiGLU ``W_o (u * SiLU(v))`` with ``u <- s_u * u``, ``v <- s_v * sqrt(d) * v``;
- logits ``z <- s_z * z``, and no final norm.

Every scaling ``s`` is stored as the paper stores it, a parameter with value ``s_scale`` at init that the forward
pass multiplies by ``s_init / s_scale`` (the paper, Sec. 2; NVIDIA/ngpt), so Adam moves it at the paper's effective rate. Here
the parameter is kept as its offset from that init, ``s = s_init * (s_scale + s_bias) / s_scale`` with ``s_bias = 0``
at init: the same function, the same Adam updates (a constant shift changes neither gradients nor Adam's moments),
and the name's ``bias`` keeps every scaling out of the Trainer's weight decay. (s_init, s_scale) as in the paper:
alpha_A, alpha_M (`ngpt_alpha_init` = 0.05, 1/sqrt(d)); s_qk (1, 1/sqrt(d)); s_u, s_v (1, 1); s_z (1, 1/sqrt(d)).

This module builds on modeling_skipnorm.py's attention, MLP and block; modeling_skipnorm imports it at its end.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from transformers.cache_utils import Cache
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.processing_utils import Unpack
from transformers.utils import TransformersKwargs
from transformers.utils.deprecation import deprecate_kwarg

from .configuration_skipnorm import SkipNormConfig
from .modeling_skipnorm import (
    SkipNormAttention,
    SkipNormBlock,
    SkipNormGatedMLP,
    apply_rotary,
    build_dropout,
)

# (s_init, s_scale) of the paper's scalings that do not come from the config (arXiv 2410.01131; NVIDIA/ngpt
# model.py: sqk 1 / base_scale, suv 1 / 1, sz 1 / base_scale with base_scale = 1/sqrt(d)).
QK_SCALE_INIT = 1.0
UV_SCALE_INIT, UV_SCALE_SCALE = 1.0, 1.0
LOGIT_SCALE_INIT = 1.0
# F.normalize's floor on ||x||: keeps a zero vector (the padding embedding row) at 0 instead of NaN.
UNIT_EPS = 1e-12


# The floor of ||x|| per dtype: 1e-12 is 0 in float16, where a zero row (SDPA's output for a fully masked query, a
# left pad) then gave 0/0 = NaN; the smallest normal float16 keeps it finite (issue 13, transformers' fp16 tests).
_UNIT_EPS_BY_DTYPE = {torch.float16: torch.finfo(torch.float16).tiny}


def unit(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """``Norm(x) = x / ||x||`` along `dim` (nGPT's normalization; ``||x||`` floored at 1e-12, at float16's smallest
    normal in float16)."""
    return nn.functional.normalize(x, p=2.0, dim=dim, eps=_UNIT_EPS_BY_DTYPE.get(x.dtype, UNIT_EPS))


def base_scale(config: SkipNormConfig) -> float:
    """The paper's ``1/sqrt(d_model)`` (NVIDIA/ngpt `base_scale`), the stored scale of alpha, s_qk and s_z."""
    return 1.0 / math.sqrt(config.hidden_size)


class NGPTScaling(nn.Module):
    """One learned scaling ``s = s_init * (s_scale + s_bias) / s_scale`` of `shape`, ``s_bias = 0`` at init (the
    paper's reparameterization as an offset, see the module docstring). `value()` (or calling it) returns ``s``."""

    def __init__(self, shape: tuple[int, ...], init_value: float, scale: float):
        super().__init__()
        self.init_value, self.scale = float(init_value), float(scale)
        self.s_bias = nn.Parameter(torch.empty(shape))

    def value(self) -> torch.Tensor:
        return self.init_value * (self.scale + self.s_bias) / self.scale

    def forward(self) -> torch.Tensor:
        return self.value()

    def extra_repr(self) -> str:
        return f"shape={tuple(self.s_bias.shape)}, init={self.init_value}, scale={self.scale:.6g}"


class NGPTAttention(SkipNormAttention):
    """nGPT attention (arXiv 2410.01131): ``q <- s_qk Norm(RoPE(W_q h))``, ``k <- s_qk Norm(RoPE(W_k h))``
    per head, ``v = W_v h``, ``softmax(sqrt(d_k) q k^T) v``, ``W_o``. The unit-norm rows of W_q, W_k, W_v (and
    columns of W_o) are kept by `normalize_ngpt_weights_`. Q/K are normalized after RoPE, as NVIDIA/ngpt does."""

    def __init__(self, config: SkipNormConfig, layer_idx: int):
        super().__init__(config, layer_idx)
        self.scaling = self.head_dim**0.5  # q, k are s_qk-scaled unit vectors: the paper's softmax scale sqrt(d_k)
        self.qk_scale = NGPTScaling((config.num_attention_heads, self.head_dim), QK_SCALE_INIT, base_scale(config))

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
        query = self.q_proj(hidden_states).view(hidden_shape).transpose(1, 2)  # (B, H, T, hd)
        key = self.k_proj(hidden_states).view(hidden_shape).transpose(1, 2)
        value = self.v_proj(hidden_states).view(hidden_shape).transpose(1, 2)
        if position_embeddings is not None:
            cos, sin = position_embeddings
            query, key = apply_rotary(query, cos, sin), apply_rotary(key, cos, sin)
        s_qk = self.qk_scale().to(query.dtype)[:, None, :]  # (H, 1, hd)
        query, key = s_qk * unit(query), s_qk * unit(key)
        attn_output, attn_weights = self.attend(query, key, value, attention_mask, cache, **kwargs)
        return self.o_proj(attn_output.reshape(*input_shape, -1).contiguous()), attn_weights


class NGPTMLP(SkipNormGatedMLP):
    """nGPT's SwiGLU (arXiv 2410.01131): ``W_o (u * SiLU(v))`` with ``u = s_u * W_u h`` (`up_proj`) and
    ``v = s_v * sqrt(d) * W_v h`` (`gate_proj`); ``sqrt(d)`` undoes the unit-norm rows' 1/sqrt(d) scale so SiLU
    sees O(1) inputs. (NVIDIA/ngpt also multiplies u by sqrt(d); the block's Norm of the output cancels that factor.)"""

    def __init__(self, config: SkipNormConfig):
        super().__init__(config)
        self.gate_input_scale = math.sqrt(config.hidden_size)
        self.up_scale = NGPTScaling((config.intermediate_size,), UV_SCALE_INIT, UV_SCALE_SCALE)  # s_u
        self.gate_scale = NGPTScaling((config.intermediate_size,), UV_SCALE_INIT, UV_SCALE_SCALE)  # s_v

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        u = self.up_scale().to(x.dtype) * self.up_proj(x)  # (B, T, I)
        v = self.gate_scale().to(x.dtype) * self.gate_input_scale * self.gate_proj(x)
        return self.down_proj(u * self.act_fn(v))


class SkipNormNGPTBlock(SkipNormBlock):
    """One nGPT block (arXiv 2410.01131): ``h <- Norm(h + alpha_A (Norm(Attn(h)) - h))``, then the same
    with the MLP and ``alpha_M``. The eigen learning rates are per channel, ``|alpha|`` as in NVIDIA/ngpt; the block
    input is normalized first (NVIDIA/ngpt's ``A_norm``: a no-op on unit vectors, it keeps a caller's
    `inputs_embeds` on the sphere). A `SkipNormBlock` subclass so `output_hidden_states` records it, but built from
    scratch: it has no norm slots and no residual modules."""

    def __init__(self, config: SkipNormConfig, layer_idx: int):
        GradientCheckpointingLayer.__init__(self)  # not SkipNormBlock's: none of its norm / residual slots exist here
        self.layer_idx = layer_idx
        self.self_attn = NGPTAttention(config, layer_idx)
        self.mlp = NGPTMLP(config)
        d, alpha_scale = config.hidden_size, base_scale(config)
        self.attn_alpha = NGPTScaling((d,), config.ngpt_alpha_init, alpha_scale)  # alpha_A
        self.mlp_alpha = NGPTScaling((d,), config.ngpt_alpha_init, alpha_scale)  # alpha_M
        self.branch_dropout = build_dropout(config.hidden_dropout)

    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")
    def forward(
        self,
        hidden_states: torch.Tensor,  # (B, T, C), unit vectors
        attention_mask: torch.Tensor | None = None,
        position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None,
        cache: Cache | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> torch.Tensor:
        h = unit(hidden_states)
        attn, _ = self.self_attn(h, position_embeddings=position_embeddings, attention_mask=attention_mask,
                                 cache=cache, **kwargs)
        h_a = unit(self.branch_dropout(attn))
        h = unit(h + self.attn_alpha().abs().to(h.dtype) * (h_a - h))
        h_m = unit(self.branch_dropout(self.mlp(h)))
        return unit(h + self.mlp_alpha().abs().to(h.dtype) * (h_m - h))


class NGPTLogitScale(NGPTScaling):
    """nGPT's logits ``z <- s_z * z`` (arXiv 2410.01131): ``z = E_out h`` are cosine similarities (unit
    rows, unit h), ``s_z`` per vocabulary entry, init 1 stored with scale 1/sqrt(d)."""

    def __init__(self, config: SkipNormConfig):
        super().__init__((config.vocab_size,), LOGIT_SCALE_INIT, base_scale(config))

    def forward(self, logits: torch.Tensor) -> torch.Tensor:  # (B, T, V)
        return self.value().to(logits.dtype) * logits


# Which weights are unit vectors, and along which dim of the (out, in) weight: the hidden dimension d.
# NVIDIA/ngpt normalize_matrices: wte, lm_head, query, key, value, c_fc along dim 1; att_c_proj, mlp_c_proj along dim 0.
NGPT_UNIT_WEIGHTS: dict[type[nn.Module], tuple[tuple[str, int], ...]] = {
    NGPTAttention: (("q_proj", -1), ("k_proj", -1), ("v_proj", -1), ("o_proj", 0)),
    NGPTMLP: (("gate_proj", -1), ("up_proj", -1), ("down_proj", 0)),
}


def ngpt_unit_weights(model: nn.Module) -> list[tuple[str, torch.Tensor, int]]:
    """(name, weight, dim) of every weight nGPT keeps on the unit sphere: the token embeddings, the output embeddings
    (`lm_head`, when the model has one) and the attention / MLP matrices, each along its hidden dimension."""
    found = []
    for name, module in model.named_modules():
        for attribute, dim in NGPT_UNIT_WEIGHTS.get(type(module), ()):
            found.append((f"{name}.{attribute}.weight", getattr(module, attribute).weight, dim))
    embeddings = [("input embeddings", model.get_input_embeddings())]
    if getattr(model, "get_output_embeddings", None) is not None and model.get_output_embeddings() is not None:
        embeddings.append(("output embeddings", model.get_output_embeddings()))
    found.extend((label, module.weight, -1) for label, module in embeddings)
    return found


@torch.no_grad()
def normalize_ngpt_weights_(model: nn.Module) -> None:
    """Put every nGPT weight back on the unit sphere, in place (NVIDIA/ngpt `normalize_matrices`, run after every
    optimizer step). Works on a `SkipNormModel` or any head model holding one."""
    for _, weight, dim in ngpt_unit_weights(model):
        # in at least float32 (bf16 rows would drift off the sphere), in float64 for float64 models
        weight.copy_(unit(weight.to(torch.promote_types(weight.dtype, torch.float32)), dim=dim).to(weight.dtype))


__all__ = ["SkipNormNGPTBlock", "NGPTAttention", "NGPTMLP", "NGPTLogitScale", "NGPTScaling",
           "normalize_ngpt_weights_", "ngpt_unit_weights"]

"""Checkpoint conversion between transformers' model zoo and SkipNorm, with exact logit parity.

Real architectures are cells of the SkipNorm grid (shared/VARIANTS.md, "Real architectures and their cells"):
LLaMA is ``pre`` + ``rmsnorm`` + RoPE + SwiGLU, GPT-2 is ``pre`` + ``layernorm`` + learned positions + GELU, BERT is
``post`` + ``layernorm`` + an embedding norm, and so on. Converting a checkpoint is therefore two small tables per
architecture: how its config maps to a `SkipNormConfig` (refusing, with the feature named, whatever has no cell),
and how its weight names map to ours (renames, plus the few fused or transposed tensors that need splitting).

    from hf_skipnorm import convert_from_hf, convert_to_hf
    ours = convert_from_hf(LlamaForCausalLM.from_pretrained(path))   # -> SkipNormForCausalLM, same logits
    back = convert_to_hf(ours)                                         # -> LlamaForCausalLM, same state dict

CLI (never downloads; a Hub id is used only where it is already in the local cache):

    python -m hf_skipnorm.convert SRC_DIR_OR_CACHED_HUB_ID DST_DIR

This module is not needed by the model at load time (the model files import only torch and transformers), so it
may import the package and anything else.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import time
from collections.abc import Callable, Iterable
from copy import deepcopy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import transformers
from transformers import PreTrainedModel
from transformers.activations import ACT2FN
from transformers.initialization import no_init_weights

from .configuration_skipnorm import SkipNormConfig
from .modeling_skipnorm import SkipNormForCausalLM, SkipNormForMaskedLM, SkipNormModel
from .modeling_seq2seq_skipnorm import (
    SkipNormEncoderDecoderModel,
    SkipNormForConditionalGeneration,
    SkipNormSinusoidalPositions,
)

Tensors = list[torch.Tensor]

# Config fields that change no computation at inference (or that the loader owns): ignored when deciding whether a
# SkipNorm config is exactly an architecture's cell in `convert_to_hf`.
_NON_ARCHITECTURAL = {
    "attention_dropout", "hidden_dropout", "initializer_range", "use_cache", "pad_token_id", "bos_token_id",
    "eos_token_id", "branch_init", "classifier_pooling", "dtype", "architectures", "transformers_version", "auto_map",
    "_name_or_path", "model_type", "num_labels", "id2label", "label2id", "problem_type", "output_attentions",
    "output_hidden_states", "return_dict", "chunk_size_feed_forward", "is_encoder_decoder", "tokenizer_class",
    "_attn_implementation_autoset", "sep_token_id", "decoder_start_token_id", "max_length",
}

# Tokenizer (and generation) files the CLI copies next to the converted weights when the source has them.
TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json", "vocab.json",
    "vocab.txt", "merges.txt", "tokenizer.model", "spiece.model", "chat_template.jinja", "chat_template.json",
    "generation_config.json",
)


class UnsupportedFeatureError(ValueError):
    """The source uses something SkipNorm cannot compute exactly; the message names the feature."""


# ----------------------------------------------------------------------------------------------------- weight rules
@dataclass(frozen=True)
class WeightRule:
    """How some transformers tensors become some SkipNorm tensors, and back.

    `to_ours(hf_tensors) -> our_tensors` and `to_hf(our_tensors) -> hf_tensors` are exact inverses (reshapes,
    transposes, splits): round trips reproduce the original state dict bit for bit.
    """

    hf: tuple[str, ...]
    ours: tuple[str, ...]
    to_ours: Callable[[Tensors], Tensors]
    to_hf: Callable[[Tensors], Tensors]


def _identity(tensors: Tensors) -> Tensors:
    return list(tensors)


def rename(hf: str, ours: str) -> WeightRule:
    return WeightRule((hf,), (ours,), _identity, _identity)


def transposed(hf: str, ours: str) -> WeightRule:
    """GPT-2's `Conv1D` stores (in, out); `nn.Linear` stores (out, in)."""

    def flip(tensors: Tensors) -> Tensors:
        return [tensors[0].t().contiguous()]

    return WeightRule((hf,), (ours,), flip, flip)


def same_tensor(hf: tuple[str, ...], ours: tuple[str, ...]) -> WeightRule:
    """Tied copies (e.g. tied `lm_head.weight`): every key holds one tensor, checked equal on the way in."""

    def check(tensors: Tensors) -> torch.Tensor:
        for key, tensor in zip(hf[1:], tensors[1:]):
            if tensor.shape != tensors[0].shape or not torch.equal(tensor, tensors[0]):
                raise ValueError(f"{key} should be tied to {hf[0]} (the config says so) but holds different values")
        return tensors[0]

    return WeightRule(hf, ours, lambda ts: [check(ts)] * len(ours), lambda ts: [ts[0]] * len(hf))


def split_rows(hf: str, ours: tuple[str, ...], sizes: tuple[int, ...], conv1d: bool = False) -> WeightRule:
    """A fused projection (`q|k|v` stacked along the output dim) split into separate `nn.Linear`s.

    With `conv1d` the fused tensor is GPT-2's (in, out) `Conv1D` weight: transposed and split along its columns.
    Biases (1-D) split the same way.
    """

    def to_ours(tensors: Tensors) -> Tensors:
        fused = tensors[0].t() if conv1d and tensors[0].dim() == 2 else tensors[0]
        return [part.contiguous() for part in torch.split(fused, list(sizes), dim=0)]

    def to_hf(tensors: Tensors) -> Tensors:
        fused = torch.cat(tensors, dim=0)
        return [fused.t().contiguous() if conv1d and fused.dim() == 2 else fused]

    return WeightRule((hf,), ours, to_ours, to_hf)


def split_heads_interleaved(hf: str, ours: tuple[str, str, str], num_heads: int, head_dim: int) -> WeightRule:
    """GPT-NeoX's fused `query_key_value`: its output rows are grouped per head as ``(H, [q, k, v], hd)``.

    NeoX views the projection as (B, T, H, 3*hd) and chunks the last dim into q, k, v, so rows ``h*3*hd + j*hd + i``
    belong to head h, part j (q/k/v). Separate q/k/v projections store rows ``h*hd + i``.
    """

    def to_ours(tensors: Tensors) -> Tensors:
        fused = tensors[0]
        grouped = fused.reshape(num_heads, 3, head_dim, *fused.shape[1:])  # (H, 3, hd[, C])
        return [grouped[:, j].reshape(num_heads * head_dim, *fused.shape[1:]).contiguous() for j in range(3)]

    def to_hf(tensors: Tensors) -> Tensors:
        parts = [t.reshape(num_heads, 1, head_dim, *t.shape[1:]) for t in tensors]
        fused = torch.cat(parts, dim=1)  # (H, 3, hd[, C])
        return [fused.reshape(3 * num_heads * head_dim, *tensors[0].shape[1:]).contiguous()]

    return WeightRule((hf,), ours, to_ours, to_hf)


def linear(hf: str, ours: str, bias: bool) -> list[WeightRule]:
    rules = [rename(f"{hf}.weight", f"{ours}.weight")]
    if bias:
        rules.append(rename(f"{hf}.bias", f"{ours}.bias"))
    return rules


def norm(hf: str, ours: str, bias: bool) -> list[WeightRule]:
    """A norm's gain (and bias): the same two names as a linear layer, spelled as what it is."""
    return linear(hf, ours, bias)


# ----------------------------------------------------------------------------------------------------- architectures
@dataclass(frozen=True)
class Head:
    """One transformers class of an architecture: which SkipNorm class it becomes and where its backbone sits."""

    ours: type[PreTrainedModel]
    hf_prefix: str  # backbone prefix in the transformers state dict ("model.", "transformer.", "" for base models)
    rules: Callable[[SkipNormConfig], list[WeightRule]] = lambda config: []  # head weights, full keys


def _our_prefix(ours: type[PreTrainedModel]) -> str:
    return "" if ours is SkipNormModel else "model."


def _lm_head(hf_embed: str) -> Callable[[SkipNormConfig], list[WeightRule]]:
    """`lm_head` (with its bias where the config has one), or the embedding under both names when tied."""

    def rules(config: SkipNormConfig) -> list[WeightRule]:
        if config.tie_word_embeddings:
            return [same_tensor((hf_embed, "lm_head.weight"), ("model.embed_tokens.weight", "lm_head.weight"))]
        return linear("lm_head", "lm_head", config.lm_head_bias)

    return rules


def _causal(prefix: str, embed: str, causal_lm: str, base: str) -> dict[str, Head]:
    return {causal_lm: Head(SkipNormForCausalLM, prefix, _lm_head(prefix + embed)), base: Head(SkipNormModel, "")}


# Config fields most transformers decoders spell as we do; copied both ways (a field the source lacks is skipped,
# so SkipNorm's default applies: e.g. head_dim = hidden_size / heads, num_key_value_heads = heads).
STANDARD_FIELDS = (
    "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "hidden_act",
    "max_position_embeddings", "initializer_range", "tie_word_embeddings", "attention_dropout", "pad_token_id",
    "bos_token_id", "eos_token_id",
)
# RoPE types whose inverse frequencies are static, so SkipNorm's rotary reproduces them through transformers'
# ROPE_INIT_FUNCTIONS; the parity tests cover each of them.
SUPPORTED_ROPE_TYPES = ("default", "linear", "llama3")
_MISSING = object()


class Architecture:
    """A transformers architecture as a SkipNorm cell: config mapping both ways and weight-name rules.

    A subclass declares:
    - `fields`: transformers config name -> SkipNorm field, copied both ways;
    - `cell`: the SkipNorm fields the architecture fixes (its cell of the grid: placement, norm type, ...);
    - `derived_to_ours` / `derived_to_hf`: the few fields that need arithmetic, and the refusals (`refuse`);
    - `heads`, `base_rules` and `layer_rules`: weight names (keys relative to the backbone / layer prefix).
    """

    name: str
    hf_config_class: str
    hf_layers: str  # prefix of layer i inside the backbone, with {i}
    heads: dict[str, Head]
    fields: dict[str, str]
    cell: dict[str, Any]
    uses_rope = True

    # --- config ---
    def config_to_ours(self, hf: Any) -> dict[str, Any]:
        copied = {ours: getattr(hf, name, _MISSING) for name, ours in self.fields.items()}
        copied = {k: v for k, v in copied.items() if v is not _MISSING}
        if "hidden_act" in copied and copied["hidden_act"] not in ACT2FN:
            raise self.refuse("hidden_act", copied["hidden_act"], "not a transformers activation")
        rope = self.rope_to_ours(hf) if self.uses_rope else {}
        return {**copied, **rope, **self.cell, **self.derived_to_ours(hf)}

    def config_to_hf(self, ours: SkipNormConfig) -> dict[str, Any]:
        copied = {name: getattr(ours, field) for name, field in self.fields.items()}
        rope = {}
        if self.uses_rope:
            rope_parameters = dict(ours.rope_parameters)
            if ours.partial_rotary_factor != 1.0:
                rope_parameters["partial_rotary_factor"] = ours.partial_rotary_factor
            rope = {"rope_parameters": rope_parameters}
        return {**copied, **rope, **self.derived_to_hf(ours)}

    def derived_to_ours(self, hf: Any) -> dict[str, Any]:
        return {}

    def derived_to_hf(self, ours: SkipNormConfig) -> dict[str, Any]:
        return {}

    def rope_to_ours(self, hf: Any) -> dict[str, Any]:
        """RoPE fields, refusing scaling types we do not compute and sliding windows that mask anything."""
        rope = dict(getattr(hf, "rope_parameters", None) or {"rope_type": "default", "rope_theta": 10000.0})
        if any(isinstance(v, dict) for v in rope.values()):
            raise self.refuse("rope_parameters", rope, "per-layer-type RoPE parameters have no SkipNorm field")
        rope.setdefault("rope_type", "default")
        if rope["rope_type"] not in SUPPORTED_ROPE_TYPES:
            raise self.refuse("rope_parameters.rope_type", rope["rope_type"],
                              f"supported rope scaling types: {', '.join(SUPPORTED_ROPE_TYPES)}")
        layer_types = getattr(hf, "layer_types", None) or []
        if set(layer_types) - {"full_attention"}:
            unknown = sorted(set(layer_types) - {"full_attention", "sliding_attention"})
            if unknown:
                raise self.refuse("layer_types", unknown, "only full and sliding attention layers are known")
            # A window at least as long as any sequence the model is meant to see masks nothing beyond causality:
            # key k is visible from query q when q - k < window, and q - k < max_position_embeddings always.
            window, longest = getattr(hf, "sliding_window", None), hf.max_position_embeddings
            if window is None or window < longest:
                raise self.refuse(
                    "sliding_window", window,
                    f"sliding-window attention layers; SkipNorm attends over the full causal context, which equals the "
                    f"window only when sliding_window >= max_position_embeddings={longest}",
                )
        return {"position_embedding": "rope", "rope_parameters": rope,
                "partial_rotary_factor": float(rope.get("partial_rotary_factor", 1.0))}

    def refuse(self, feature: str, value: Any, why: str) -> UnsupportedFeatureError:
        return UnsupportedFeatureError(f"cannot convert {self.name}: {feature}={value!r} is not supported ({why})")

    # --- weights ---
    def base_rules(self, config: SkipNormConfig) -> list[WeightRule]:
        raise NotImplementedError

    def layer_rules(self, config: SkipNormConfig, layer: int) -> list[WeightRule]:
        raise NotImplementedError

    def rules(self, config: SkipNormConfig, head: Head) -> list[WeightRule]:
        """Every rule with full keys on both sides, for the head `head`."""
        hf_base, our_base = head.hf_prefix, _our_prefix(head.ours)
        rules = [_prefixed(r, hf_base, our_base) for r in self.base_rules(config)]
        for i in range(config.num_hidden_layers):
            hf_layer = hf_base + self.hf_layers.format(i=i)
            rules += [_prefixed(r, hf_layer, f"{our_base}layers.{i}.") for r in self.layer_rules(config, i)]
        head_rules = head.rules(config)
        # A tied head re-lists the embedding: drop the plain embedding rule so each key has one owner.
        tied_keys = {k for r in head_rules for k in r.hf}
        return [r for r in rules if not set(r.hf) & tied_keys] + head_rules


def _prefixed(rule: WeightRule, hf_prefix: str, our_prefix: str) -> WeightRule:
    return WeightRule(tuple(hf_prefix + k for k in rule.hf), tuple(our_prefix + k for k in rule.ours),
                      rule.to_ours, rule.to_hf)


def _attention(config: SkipNormConfig, names: tuple[str, str, str, str], bias: bool) -> list[WeightRule]:
    """transformers' q/k/v/o projection names -> ours, as plain renames."""
    ours = ("q_proj", "k_proj", "v_proj", "o_proj")
    return [r for hf, our in zip(names, ours) for r in linear(hf, f"self_attn.{our}", bias)]


# ------------------------------------------------------------------ LLaMA
class Llama(Architecture):
    """LLaMA (arXiv 2302.13971): pre-norm RMSNorm, RoPE, SwiGLU, grouped-query attention, no biases by default."""

    name = "llama"
    hf_config_class = "LlamaConfig"
    hf_layers = "layers.{i}."
    heads = _causal("model.", "embed_tokens.weight", "LlamaForCausalLM", "LlamaModel")
    fields = {**{f: f for f in STANDARD_FIELDS}, "num_key_value_heads": "num_key_value_heads", "head_dim": "head_dim",
              "attention_bias": "attention_bias", "mlp_bias": "mlp_bias", "rms_norm_eps": "norm_eps"}
    cell = {"mlp_type": "gated", "norm_position": "pre", "norm_type": "rmsnorm"}

    def base_rules(self, config: SkipNormConfig) -> list[WeightRule]:
        return [rename("embed_tokens.weight", "embed_tokens.weight"), *norm("norm", "final_norm", False)]

    def attention_rules(self, config: SkipNormConfig) -> list[WeightRule]:
        names = tuple(f"self_attn.{p}" for p in ("q_proj", "k_proj", "v_proj", "o_proj"))
        return _attention(config, names, config.attention_bias)

    def mlp_rules(self, config: SkipNormConfig) -> list[WeightRule]:
        return [r for p in ("gate_proj", "up_proj", "down_proj") for r in linear(f"mlp.{p}", f"mlp.{p}", config.mlp_bias)]

    def qk_norm_rules(self, config: SkipNormConfig) -> list[WeightRule]:
        return [*norm("self_attn.q_norm", "self_attn.q_norm", False), *norm("self_attn.k_norm", "self_attn.k_norm", False)]

    def layer_rules(self, config: SkipNormConfig, layer: int) -> list[WeightRule]:
        return [
            *norm("input_layernorm", "attn_pre_norm", False),
            *self.attention_rules(config),
            # transformers' `post_attention_layernorm` is LLaMA's pre-MLP norm (VARIANTS.md, "Watch the names").
            *norm("post_attention_layernorm", "mlp_pre_norm", False),
            *self.mlp_rules(config),
        ]


# ------------------------------------------------------------------ Qwen3
class Qwen3(Llama):
    """Qwen3 (arXiv 2505.09388): LLaMA except an RMSNorm over each head's query and key (`qk_norm="per_head"`)
    and no MLP biases."""

    name = "qwen3"
    hf_config_class = "Qwen3Config"
    heads = _causal("model.", "embed_tokens.weight", "Qwen3ForCausalLM", "Qwen3Model")
    fields = {k: v for k, v in Llama.fields.items() if k != "mlp_bias"}
    cell = {**Llama.cell, "mlp_bias": False, "qk_norm": "per_head"}

    def layer_rules(self, config: SkipNormConfig, layer: int) -> list[WeightRule]:
        return [*super().layer_rules(config, layer), *self.qk_norm_rules(config)]


# ------------------------------------------------------------------ OLMo 2
class Olmo2(Llama):
    """OLMo 2 (arXiv 2501.00656): LLaMA except the norms sit on each branch output (`output` placement), Q and K
    are RMS-normalized over the whole projection (`qk_norm="full"`), and there are no MLP biases."""

    name = "olmo2"
    hf_config_class = "Olmo2Config"
    heads = _causal("model.", "embed_tokens.weight", "Olmo2ForCausalLM", "Olmo2Model")
    fields = {k: v for k, v in Llama.fields.items() if k not in ("mlp_bias", "head_dim")}  # head_dim = d / H
    cell = {**Llama.cell, "mlp_bias": False, "norm_position": "output", "qk_norm": "full"}

    def layer_rules(self, config: SkipNormConfig, layer: int) -> list[WeightRule]:
        return [
            *self.attention_rules(config),
            *self.qk_norm_rules(config),
            # OLMo 2's `post_attention_layernorm` really follows attention: it normalizes the branch output.
            *norm("post_attention_layernorm", "attn_out_norm", False),
            *self.mlp_rules(config),
            *norm("post_feedforward_layernorm", "mlp_out_norm", False),
        ]


# ------------------------------------------------------------------ Gemma 2
class Gemma2(Llama):
    """Gemma 2 (arXiv 2408.00118): LLaMA except sandwich norms, unit-offset RMSNorm (gain ``1 + w``), embeddings
    times ``sqrt(hidden_size)``, attention scale ``query_pre_attn_scalar**-0.5``, soft-capped attention scores and
    final logits, GeGLU (tanh GELU). Sliding-window layers only where the window covers every position."""

    name = "gemma2"
    hf_config_class = "Gemma2Config"
    heads = _causal("model.", "embed_tokens.weight", "Gemma2ForCausalLM", "Gemma2Model")
    fields = {**{k: v for k, v in Llama.fields.items() if k not in ("mlp_bias", "hidden_act")},
              "hidden_activation": "hidden_act", "attn_logit_softcapping": "attn_logit_softcapping",
              "final_logit_softcapping": "final_logit_softcapping"}
    cell = {**Llama.cell, "mlp_bias": False, "norm_position": "sandwich", "norm_unit_offset": True}

    def derived_to_ours(self, hf: Any) -> dict[str, Any]:
        if getattr(hf, "use_bidirectional_attention", None):
            raise self.refuse("use_bidirectional_attention", True, "only the causal Gemma 2 decoder is converted")
        return {"embedding_multiplier": hf.hidden_size**0.5, "attention_multiplier": hf.query_pre_attn_scalar**-0.5}

    def derived_to_hf(self, ours: SkipNormConfig) -> dict[str, Any]:
        # Gemma stores the scale as s**-2 (an integer in released models); rounding recovers it exactly.
        scalar = ours.head_dim if ours.attention_multiplier is None else ours.attention_multiplier**-2
        if abs(scalar - round(scalar)) < 1e-6:
            scalar = round(scalar)
        return {"query_pre_attn_scalar": scalar, "layer_types": ["full_attention"] * ours.num_hidden_layers}

    def layer_rules(self, config: SkipNormConfig, layer: int) -> list[WeightRule]:
        return [
            *norm("input_layernorm", "attn_pre_norm", False),
            *self.attention_rules(config),
            *norm("post_attention_layernorm", "attn_out_norm", False),
            *norm("pre_feedforward_layernorm", "mlp_pre_norm", False),
            *self.mlp_rules(config),
            *norm("post_feedforward_layernorm", "mlp_out_norm", False),
        ]


# ------------------------------------------------------------------ GPT-NeoX
class GPTNeoX(Architecture):
    """GPT-NeoX (arXiv 2204.06745): parallel attention and MLP with two LayerNorms (`parallel_block`), partial
    rotary, a fused per-head-interleaved `query_key_value`. `use_parallel_residual=False` is the sequential pre-LN."""

    name = "gpt_neox"
    hf_config_class = "GPTNeoXConfig"
    hf_layers = "layers.{i}."
    heads = _causal("gpt_neox.", "embed_in.weight", "GPTNeoXForCausalLM", "GPTNeoXModel")
    fields = {**{f: f for f in STANDARD_FIELDS}, "attention_bias": "attention_bias", "hidden_dropout": "hidden_dropout",
              "layer_norm_eps": "norm_eps", "use_parallel_residual": "parallel_block"}
    cell = {"mlp_bias": True, "mlp_type": "plain", "norm_position": "pre", "norm_type": "layernorm", "norm_bias": True}

    def base_rules(self, config: SkipNormConfig) -> list[WeightRule]:
        return [rename("embed_in.weight", "embed_tokens.weight"), *norm("final_layer_norm", "final_norm", True)]

    def layer_rules(self, config: SkipNormConfig, layer: int) -> list[WeightRule]:
        heads, hd = config.num_attention_heads, config.head_dim
        qkv = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")
        fused = "attention.query_key_value"
        rules = [
            *norm("input_layernorm", "attn_pre_norm", True),
            split_heads_interleaved(f"{fused}.weight", tuple(f"{p}.weight" for p in qkv), heads, hd),
            *linear("attention.dense", "self_attn.o_proj", config.attention_bias),
            # NeoX's `post_attention_layernorm` is its MLP's input norm in both the parallel and sequential forms.
            *norm("post_attention_layernorm", "mlp_pre_norm", True),
            *linear("mlp.dense_h_to_4h", "mlp.up_proj", True),
            *linear("mlp.dense_4h_to_h", "mlp.down_proj", True),
        ]
        if config.attention_bias:
            rules.append(split_heads_interleaved(f"{fused}.bias", tuple(f"{p}.bias" for p in qkv), heads, hd))
        return rules


# ------------------------------------------------------------------ Phi
class Phi(Architecture):
    """Phi-1/1.5/2: parallel attention and MLP reading one shared LayerNorm (`parallel_shared_norm`), partial rotary,
    biases everywhere including `lm_head`, optional per-head LayerNorm on Q and K (`qk_layernorm`)."""

    name = "phi"
    hf_config_class = "PhiConfig"
    hf_layers = "layers.{i}."
    heads = _causal("model.", "embed_tokens.weight", "PhiForCausalLM", "PhiModel")
    fields = {**{f: f for f in STANDARD_FIELDS}, "num_key_value_heads": "num_key_value_heads",
              "resid_pdrop": "hidden_dropout", "layer_norm_eps": "norm_eps"}
    cell = {"attention_bias": True, "mlp_bias": True, "lm_head_bias": True, "mlp_type": "plain", "norm_position": "pre",
            "norm_type": "layernorm", "norm_bias": True, "parallel_block": True, "parallel_shared_norm": True}

    def derived_to_ours(self, hf: Any) -> dict[str, Any]:
        return {"qk_norm": "per_head" if hf.qk_layernorm else "none"}

    def derived_to_hf(self, ours: SkipNormConfig) -> dict[str, Any]:
        return {"qk_layernorm": ours.qk_norm == "per_head", "embd_pdrop": ours.hidden_dropout}

    def base_rules(self, config: SkipNormConfig) -> list[WeightRule]:
        return [rename("embed_tokens.weight", "embed_tokens.weight"), *norm("final_layernorm", "final_norm", True)]

    def layer_rules(self, config: SkipNormConfig, layer: int) -> list[WeightRule]:
        names = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.dense")
        rules = [
            *norm("input_layernorm", "shared_pre_norm", True),
            *_attention(config, names, True),
            *linear("mlp.fc1", "mlp.up_proj", True),
            *linear("mlp.fc2", "mlp.down_proj", True),
        ]
        if config.qk_norm == "per_head":
            rules += [*norm("self_attn.q_layernorm", "self_attn.q_norm", True),
                      *norm("self_attn.k_layernorm", "self_attn.k_norm", True)]
        return rules


# ------------------------------------------------------------------ GPT-2
class GPT2(Architecture):
    """GPT-2 (Radford et al. 2019): pre-norm LayerNorm, learned positions, GELU MLP, biases, `Conv1D` weights
    stored (in, out) and a fused `c_attn`."""

    name = "gpt2"
    hf_config_class = "GPT2Config"
    hf_layers = "h.{i}."
    heads = _causal("transformer.", "wte.weight", "GPT2LMHeadModel", "GPT2Model")
    fields = {"vocab_size": "vocab_size", "n_embd": "hidden_size", "n_layer": "num_hidden_layers",
              "n_head": "num_attention_heads", "activation_function": "hidden_act", "n_positions": "max_position_embeddings",
              "initializer_range": "initializer_range", "tie_word_embeddings": "tie_word_embeddings",
              "attn_pdrop": "attention_dropout", "resid_pdrop": "hidden_dropout", "layer_norm_epsilon": "norm_eps",
              "pad_token_id": "pad_token_id", "bos_token_id": "bos_token_id", "eos_token_id": "eos_token_id"}
    cell = {"attention_bias": True, "mlp_bias": True, "position_embedding": "learned", "mlp_type": "plain",
            "norm_position": "pre", "norm_type": "layernorm", "norm_bias": True, "branch_init": "scaled_depth"}
    uses_rope = False

    def derived_to_ours(self, hf: Any) -> dict[str, Any]:
        if hf.add_cross_attention:
            raise self.refuse("add_cross_attention", True, "SkipNorm has no cross-attention")
        if hf.scale_attn_by_inverse_layer_idx:
            raise self.refuse("scale_attn_by_inverse_layer_idx", True, "a per-layer attention scale has no SkipNorm field")
        fields = {"intermediate_size": hf.n_inner or 4 * hf.n_embd}
        if not hf.scale_attn_weights:  # softmax(Q K^T) without the 1/sqrt(head_dim)
            fields["attention_multiplier"] = 1.0
        return fields

    def derived_to_hf(self, ours: SkipNormConfig) -> dict[str, Any]:
        return {"n_inner": ours.intermediate_size, "embd_pdrop": ours.hidden_dropout,
                "scale_attn_weights": ours.attention_multiplier != 1.0}

    def base_rules(self, config: SkipNormConfig) -> list[WeightRule]:
        return [
            rename("wte.weight", "embed_tokens.weight"),
            rename("wpe.weight", "embed_positions.weight"),
            *norm("ln_f", "final_norm", True),
        ]

    def layer_rules(self, config: SkipNormConfig, layer: int) -> list[WeightRule]:
        d = config.hidden_size
        qkv = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")
        return [
            *norm("ln_1", "attn_pre_norm", True),
            split_rows("attn.c_attn.weight", tuple(f"{p}.weight" for p in qkv), (d, d, d), conv1d=True),
            split_rows("attn.c_attn.bias", tuple(f"{p}.bias" for p in qkv), (d, d, d), conv1d=True),
            transposed("attn.c_proj.weight", "self_attn.o_proj.weight"),
            rename("attn.c_proj.bias", "self_attn.o_proj.bias"),
            *norm("ln_2", "mlp_pre_norm", True),
            transposed("mlp.c_fc.weight", "mlp.up_proj.weight"),
            rename("mlp.c_fc.bias", "mlp.up_proj.bias"),
            transposed("mlp.c_proj.weight", "mlp.down_proj.weight"),
            rename("mlp.c_proj.bias", "mlp.down_proj.bias"),
        ]


# ------------------------------------------------------------------ BERT
class Bert(Architecture):
    """BERT (Devlin et al. 2019, arXiv 1810.04805): post-norm LayerNorm encoder, embedding norm, token types,
    learned positions, and the masked-LM transform ``LayerNorm(act(W h + b))`` before the tied decoder."""

    name = "bert"
    hf_config_class = "BertConfig"
    hf_layers = "encoder.layer.{i}."
    fields = {**{f: f for f in STANDARD_FIELDS if f != "attention_dropout"},
              "attention_probs_dropout_prob": "attention_dropout", "hidden_dropout_prob": "hidden_dropout",
              "type_vocab_size": "type_vocab_size", "layer_norm_eps": "norm_eps"}
    cell = {"attention_bias": True, "mlp_bias": True, "is_causal": False, "use_cache": False,
            "position_embedding": "learned", "mlp_type": "plain", "norm_position": "post", "norm_type": "layernorm",
            "norm_bias": True, "embedding_norm": True}
    uses_rope = False

    @property
    def heads(self) -> dict[str, Head]:
        return {"BertForMaskedLM": Head(SkipNormForMaskedLM, "bert.", self.mlm_rules), "BertModel": Head(SkipNormModel, "")}

    def derived_to_ours(self, hf: Any) -> dict[str, Any]:
        if hf.is_decoder:
            raise self.refuse("is_decoder", True, "BERT as a causal decoder is not converted; use the encoder")
        if hf.add_cross_attention:
            raise self.refuse("add_cross_attention", True, "SkipNorm has no cross-attention")
        position_type = getattr(hf, "position_embedding_type", "absolute")
        if position_type != "absolute":
            raise self.refuse("position_embedding_type", position_type, "only absolute learned positions are supported")
        return {}

    def base_rules(self, config: SkipNormConfig) -> list[WeightRule]:
        return [
            rename("embeddings.word_embeddings.weight", "embed_tokens.weight"),
            rename("embeddings.position_embeddings.weight", "embed_positions.weight"),
            rename("embeddings.token_type_embeddings.weight", "embed_token_types.weight"),
            *norm("embeddings.LayerNorm", "embedding_norm", True),
        ]

    def layer_rules(self, config: SkipNormConfig, layer: int) -> list[WeightRule]:
        names = ("attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense")
        return [
            *_attention(config, names, True),
            *norm("attention.output.LayerNorm", "attn_post_norm", True),
            *linear("intermediate.dense", "mlp.up_proj", True),
            *linear("output.dense", "mlp.down_proj", True),
            *norm("output.LayerNorm", "mlp_post_norm", True),
        ]

    def mlm_rules(self, config: SkipNormConfig) -> list[WeightRule]:
        decoder = (
            same_tensor(("bert.embeddings.word_embeddings.weight", "cls.predictions.decoder.weight"),
                        ("model.embed_tokens.weight", "lm_head.weight"))
            if config.tie_word_embeddings else rename("cls.predictions.decoder.weight", "lm_head.weight")
        )
        return [
            *linear("cls.predictions.transform.dense", "mlm_transform.dense", True),
            *norm("cls.predictions.transform.LayerNorm", "mlm_transform.norm", True),
            decoder,
            # BertLMPredictionHead ties `decoder.bias` to its own `bias`: two keys, one tensor.
            same_tensor(("cls.predictions.bias", "cls.predictions.decoder.bias"), ("lm_head.bias",)),
        ]


# ----------------------------------------------------------------------------------------------------- encoder-decoders
# Issue 16. An encoder-decoder is two stacks: its rules walk the encoder's layers and the decoder's, with the
# decoder's cross-attention (`encoder_attn` / `EncDecAttention`) becoming `cross_attn`, and one shared embedding.
def _seq2seq_heads(hf_lm: str, hf_base: str, lm_prefix: str, embed_keys: tuple[str, ...],
                   final_logits_bias: bool) -> dict[str, Head]:
    """The conditional-generation head (tied lm_head = the shared embedding under every name) and the base model."""

    def lm_rules(config: SkipNormConfig) -> list[WeightRule]:
        rules = []
        if config.tie_word_embeddings:
            rules.append(_shared_embedding(tuple(lm_prefix + k for k in embed_keys) + ("lm_head.weight",),
                                           ("model.embed_tokens.weight", "lm_head.weight")))
        else:
            rules.append(rename("lm_head.weight", "lm_head.weight"))
        if final_logits_bias:
            rules.append(rename("final_logits_bias", "final_logits_bias.bias"))  # (1, V) both sides
        return rules

    return {hf_lm: Head(SkipNormForConditionalGeneration, lm_prefix, lm_rules), hf_base: Head(SkipNormEncoderDecoderModel, "")}


def _shared_embedding(hf: tuple[str, ...], ours: tuple[str, ...]) -> WeightRule:
    """One token embedding under every name of the source. transformers 5 ties `shared`, `encoder.embed_tokens` and
    `decoder.embed_tokens` only with `tie_word_embeddings=True`; untied checkpoints (T5 v1.1) normally still hold one
    matrix three times, and three different ones are refused: SkipNorm's stacks share one embedding."""
    rule = same_tensor(hf, ours)

    def to_ours(tensors: Tensors) -> Tensors:
        try:
            return rule.to_ours(tensors)
        except ValueError as error:
            raise UnsupportedFeatureError(f"cannot convert: separate encoder and decoder embeddings ({error}); "
                                          f"SkipNorm's encoder-decoder shares one token embedding") from None

    return WeightRule(hf, ours, to_ours, rule.to_hf)


class Seq2SeqArchitecture(Architecture):
    """An encoder-decoder family: `encoder_layer_rules` / `decoder_layer_rules` name one layer of each stack."""

    uses_rope = False
    hf_encoder_layers = "encoder.layers.{i}."
    hf_decoder_layers = "decoder.layers.{i}."

    def config_to_hf(self, ours: SkipNormConfig) -> dict[str, Any]:
        if not ours.is_encoder_decoder:
            raise self.refuse("is_encoder_decoder", ours.is_encoder_decoder, "an encoder-decoder architecture")
        if ours.decoder_overrides:
            raise self.refuse("decoder_overrides", ours.decoder_overrides, "both stacks share one cell here")
        return super().config_to_hf(ours)

    def rules(self, config: SkipNormConfig, head: Head) -> list[WeightRule]:
        hf_base = head.hf_prefix
        our_base = "" if head.ours is SkipNormEncoderDecoderModel else "model."
        rules = [_prefixed(r, hf_base, our_base) for r in self.base_rules(config)]
        for i in range(config.num_hidden_layers):
            rules += [_prefixed(r, hf_base + self.hf_encoder_layers.format(i=i), f"{our_base}encoder.layers.{i}.")
                      for r in self.encoder_layer_rules(config, i)]
        for i in range(config.decoder_depth):
            rules += [_prefixed(r, hf_base + self.hf_decoder_layers.format(i=i), f"{our_base}decoder.layers.{i}.")
                      for r in self.decoder_layer_rules(config, i)]
        head_rules = head.rules(config)
        tied_keys = {k for r in head_rules for k in r.hf}
        return [r for r in rules if not set(r.hf) & tied_keys] + head_rules

    def encoder_layer_rules(self, config: SkipNormConfig, layer: int) -> list[WeightRule]:
        raise NotImplementedError

    def decoder_layer_rules(self, config: SkipNormConfig, layer: int) -> list[WeightRule]:
        raise NotImplementedError


def _sinusoid_table_rule(hf: str, config: SkipNormConfig, rows: int) -> WeightRule:
    """Marian stores its fixed sinusoid table as a weight; SkipNorm computes the same values from the positions.
    Converting checks the stored table is exactly that (a trained or altered table is refused, never dropped), and
    converting back writes it again."""
    positions = SkipNormSinusoidalPositions(config)

    def table(like: torch.Tensor | None = None) -> torch.Tensor:
        values = positions.encoding(torch.arange(rows)[None])[0]
        return values.to(like.dtype if like is not None else torch.float32)

    def to_ours(tensors: Tensors) -> Tensors:
        stored = tensors[0]
        if stored.shape != (rows, config.hidden_size) or not torch.equal(stored, table(stored)):
            difference = (stored.float() - table(stored).float()).abs().max().item() if stored.shape == (
                rows, config.hidden_size) else f"shape {tuple(stored.shape)}"
            raise UnsupportedFeatureError(
                f"cannot convert: {hf} is not the fixed sinusoid table SkipNorm computes (max |difference| "
                f"{difference}); a learned or altered position table has no SkipNorm cell with sinusoidal positions"
            )
        return []

    return WeightRule((hf,), (), to_ours, lambda tensors: [table()])


class BartFamily(Seq2SeqArchitecture):
    """What BART, Marian, mBART and M2M100 share: fairseq's layer (q/k/v/out_proj with biases, fc1/fc2, LayerNorm
    eps 1e-5), one width and head count for both stacks, a shared embedding (times sqrt(d) with `scale_embedding`)."""

    fields = {"vocab_size": "vocab_size", "d_model": "hidden_size", "encoder_layers": "num_hidden_layers",
              "decoder_layers": "decoder_layers", "encoder_attention_heads": "num_attention_heads",
              "encoder_ffn_dim": "intermediate_size", "activation_function": "hidden_act", "dropout": "hidden_dropout",
              "attention_dropout": "attention_dropout", "init_std": "initializer_range", "pad_token_id": "pad_token_id",
              "bos_token_id": "bos_token_id", "eos_token_id": "eos_token_id",
              "decoder_start_token_id": "decoder_start_token_id", "tie_word_embeddings": "tie_word_embeddings"}
    cell = {"is_encoder_decoder": True, "norm_type": "layernorm", "norm_bias": True, "norm_eps": 1e-5,
            "attention_bias": True, "mlp_bias": True, "mlp_type": "plain"}
    post_ln = True  # BART, Marian: post-LN; mBART, M2M100: pre-LN with a final norm on both stacks
    embed_keys = ("shared.weight", "encoder.embed_tokens.weight", "decoder.embed_tokens.weight")

    def derived_to_ours(self, hf: Any) -> dict[str, Any]:
        for ours_side, theirs in (("encoder_attention_heads", "decoder_attention_heads"),
                                  ("encoder_ffn_dim", "decoder_ffn_dim")):
            if getattr(hf, ours_side) != getattr(hf, theirs):
                raise self.refuse(theirs, getattr(hf, theirs),
                                  f"the stacks differ from {ours_side}={getattr(hf, ours_side)}; SkipNorm's stacks share "
                                  f"width, heads and MLP size")
        if getattr(hf, "activation_dropout", 0.0):
            raise self.refuse("activation_dropout", hf.activation_dropout,
                              "SkipNorm has no dropout inside the MLP (inference would match, training would not)")
        scale = math.sqrt(hf.d_model) if hf.scale_embedding else 1.0
        return {"embedding_multiplier": scale, "norm_position": "post" if self.post_ln else "pre",
                "final_norm": None, **self.positions_to_ours(hf)}

    def derived_to_hf(self, ours: SkipNormConfig) -> dict[str, Any]:
        if ours.embedding_multiplier not in (1.0, math.sqrt(ours.hidden_size)):
            raise self.refuse("embedding_multiplier", ours.embedding_multiplier, "scale_embedding is sqrt(d) or 1")
        return {"decoder_attention_heads": ours.num_attention_heads, "decoder_ffn_dim": ours.intermediate_size,
                "scale_embedding": ours.embedding_multiplier != 1.0, "is_encoder_decoder": True,
                **self.positions_to_hf(ours)}

    def positions_to_ours(self, hf: Any) -> dict[str, Any]:
        # BART/mBART: a learned table whose row 0 is position -2 (fairseq's pad offset): max + 2 rows, offset 2
        return {"position_embedding": "learned", "position_offset": 2, "max_position_embeddings": hf.max_position_embeddings + 2}

    def positions_to_hf(self, ours: SkipNormConfig) -> dict[str, Any]:
        return {"max_position_embeddings": ours.max_position_embeddings - 2}

    def base_rules(self, config: SkipNormConfig) -> list[WeightRule]:
        rules = [_shared_embedding(self.embed_keys, ("embed_tokens.weight",))]
        for stack in ("encoder", "decoder"):
            if config.position_embedding == "learned":
                rules.append(rename(f"{stack}.embed_positions.weight", f"{stack}.embed_positions.weight"))
            if config.embedding_norm:
                rules += norm(f"{stack}.layernorm_embedding", f"{stack}.embedding_norm", True)
            if not self.post_ln:
                rules += norm(f"{stack}.layer_norm", f"{stack}.final_norm", True)
        return rules

    def _slot(self) -> str:
        return "post" if self.post_ln else "pre"

    def _attention_rules(self, hf: str, ours: str) -> list[WeightRule]:
        pairs = (("q_proj", "q_proj"), ("k_proj", "k_proj"), ("v_proj", "v_proj"), ("out_proj", "o_proj"))
        return [r for theirs, our in pairs for r in linear(f"{hf}.{theirs}", f"{ours}.{our}", True)]

    def encoder_layer_rules(self, config: SkipNormConfig, layer: int) -> list[WeightRule]:
        slot = self._slot()
        return [
            *self._attention_rules("self_attn", "self_attn"),
            *norm("self_attn_layer_norm", f"attn_{slot}_norm", True),
            *linear("fc1", "mlp.up_proj", True),
            *linear("fc2", "mlp.down_proj", True),
            # fairseq's `final_layer_norm` is the MLP sublayer's norm (after its skip in post-LN, before it in pre-LN)
            *norm("final_layer_norm", f"mlp_{slot}_norm", True),
        ]

    def decoder_layer_rules(self, config: SkipNormConfig, layer: int) -> list[WeightRule]:
        slot = self._slot()
        return [
            *self.encoder_layer_rules(config, layer),
            *self._attention_rules("encoder_attn", "cross_attn"),
            *norm("encoder_attn_layer_norm", f"cross_attn_{slot}_norm", True),
        ]


class Bart(BartFamily):
    """BART (arXiv 1910.13461): post-LN, learned positions from row 2, a LayerNorm on the embeddings of both stacks
    (`layernorm_embedding` = `embedding_norm`), GELU, `final_logits_bias`."""

    name = "bart"
    hf_config_class = "BartConfig"
    heads = _seq2seq_heads("BartForConditionalGeneration", "BartModel", "model.", BartFamily.embed_keys, True)
    cell = {**BartFamily.cell, "embedding_norm": True, "final_logits_bias": True}


class MBart(BartFamily):
    """mBART (arXiv 2001.08210): BART except pre-LN, with a final LayerNorm on both stacks (`encoder.layer_norm`,
    `decoder.layer_norm` = `final_norm`). Its `shift_tokens_right` (wrapping the language code to the front) is a
    data convention: pass `decoder_input_ids` made that way; SkipNorm's own shift puts `decoder_start_token_id` first."""

    name = "mbart"
    hf_config_class = "MBartConfig"
    heads = _seq2seq_heads("MBartForConditionalGeneration", "MBartModel", "model.", BartFamily.embed_keys, True)
    cell = {**BartFamily.cell, "embedding_norm": True, "final_logits_bias": True}
    post_ln = False


class Marian(BartFamily):
    """Marian (OPUS-MT): post-LN, fixed sinusoids in Marian's layout (stored as a weight, checked on the way in),
    no embedding norm, SiLU ("swish") by default, `final_logits_bias`, one shared vocabulary."""

    name = "marian"
    hf_config_class = "MarianConfig"
    heads = _seq2seq_heads("MarianMTModel", "MarianModel", "model.", BartFamily.embed_keys, True)
    cell = {**BartFamily.cell, "embedding_norm": False, "final_logits_bias": True}

    def derived_to_ours(self, hf: Any) -> dict[str, Any]:
        if getattr(hf, "share_encoder_decoder_embeddings", True) is not True:
            raise self.refuse("share_encoder_decoder_embeddings", hf.share_encoder_decoder_embeddings,
                              "SkipNorm's stacks share one token embedding")
        if getattr(hf, "decoder_vocab_size", hf.vocab_size) not in (None, hf.vocab_size):
            raise self.refuse("decoder_vocab_size", hf.decoder_vocab_size, f"it differs from vocab_size={hf.vocab_size}")
        return super().derived_to_ours(hf)

    def positions_to_ours(self, hf: Any) -> dict[str, Any]:
        return {"position_embedding": "sinusoidal", "position_offset": 0,
                "max_position_embeddings": hf.max_position_embeddings}

    def positions_to_hf(self, ours: SkipNormConfig) -> dict[str, Any]:
        if ours.position_offset != 0:
            raise self.refuse("position_offset", ours.position_offset, "Marian's sinusoids start at position 0")
        return {"max_position_embeddings": ours.max_position_embeddings}

    def base_rules(self, config: SkipNormConfig) -> list[WeightRule]:
        tables = [_sinusoid_table_rule(f"{stack}.embed_positions.weight", config, config.max_position_embeddings)
                  for stack in ("encoder", "decoder")]
        return [*super().base_rules(config), *tables]


class M2M100(BartFamily):
    """M2M100 / NLLB (arXiv 2010.11125, 2207.04672): pre-LN with a final LayerNorm on both stacks, fairseq's sinusoids
    counted over non-pad tokens from ``pad_token_id + 1`` (not stored: SkipNorm computes them), embeddings times
    sqrt(d), ReLU, no `final_logits_bias`. Layer drop is training-only."""

    name = "m2m_100"
    hf_config_class = "M2M100Config"
    heads = _seq2seq_heads("M2M100ForConditionalGeneration", "M2M100Model", "model.", BartFamily.embed_keys, False)
    cell = {**BartFamily.cell, "embedding_norm": False, "final_logits_bias": False}
    post_ln = False

    def positions_to_ours(self, hf: Any) -> dict[str, Any]:
        return {"position_embedding": "sinusoidal_fairseq", "position_offset": hf.pad_token_id + 1,
                "max_position_embeddings": hf.max_position_embeddings}

    def positions_to_hf(self, ours: SkipNormConfig) -> dict[str, Any]:
        if ours.pad_token_id is None or ours.position_offset != ours.pad_token_id + 1:
            raise self.refuse("position_offset", ours.position_offset, "M2M100 counts positions from pad_token_id + 1")
        return {"max_position_embeddings": ours.max_position_embeddings}


class T5(Seq2SeqArchitecture):
    """T5 (arXiv 1910.10683): pre-RMSNorm without bias or mean (T5LayerNorm = `rmsnorm`), no biases anywhere, no
    attention scaling (``attention_multiplier = 1``), a bucketed relative bias per stack (`t5_relative`), ReLU MLP
    (v1.0) or gated GELU (v1.1, Flan-T5: ``gated-gelu`` = `gated` + `gelu_new`), and with tied embeddings the
    decoder output scaled by ``d_model**-0.5`` before the lm_head (`lm_head_multiplier`)."""

    name = "t5"
    hf_config_class = "T5Config"
    hf_encoder_layers = "encoder.block.{i}."
    hf_decoder_layers = "decoder.block.{i}."
    heads = _seq2seq_heads("T5ForConditionalGeneration", "T5Model", "",
                           ("shared.weight", "encoder.embed_tokens.weight", "decoder.embed_tokens.weight"), False)
    fields = {"vocab_size": "vocab_size", "d_model": "hidden_size", "d_kv": "head_dim", "d_ff": "intermediate_size",
              "num_layers": "num_hidden_layers", "num_decoder_layers": "decoder_layers", "num_heads": "num_attention_heads",
              "relative_attention_num_buckets": "relative_attention_num_buckets",
              "relative_attention_max_distance": "relative_attention_max_distance", "layer_norm_epsilon": "norm_eps",
              "dropout_rate": "hidden_dropout", "pad_token_id": "pad_token_id", "eos_token_id": "eos_token_id",
              "tie_word_embeddings": "tie_word_embeddings"}
    cell = {"is_encoder_decoder": True, "norm_position": "pre", "norm_type": "rmsnorm", "attention_bias": False,
            "mlp_bias": False, "position_embedding": "t5_relative", "attention_multiplier": 1.0, "final_norm": None,
            "embedding_norm": False, "final_logits_bias": False}

    def derived_to_ours(self, hf: Any) -> dict[str, Any]:
        act = hf.feed_forward_proj.split("-")
        if len(act) > 2 or (len(act) == 2 and act[0] != "gated"):
            raise self.refuse("feed_forward_proj", hf.feed_forward_proj, "expected ACT or gated-ACT")
        start = getattr(hf, "decoder_start_token_id", None)
        return {"mlp_type": "gated" if hf.is_gated_act else "plain", "hidden_act": hf.dense_act_fn,
                "attention_dropout": hf.dropout_rate,
                "decoder_start_token_id": hf.pad_token_id if start is None else start,
                # transformers 5 always ties T5's lm_head and keeps the v1.0/v1.1 difference as `scale_decoder_outputs`
                "lm_head_multiplier": hf.d_model**-0.5 if getattr(hf, "scale_decoder_outputs", True) else 1.0,
                "max_position_embeddings": getattr(hf, "n_positions", 512)}

    def derived_to_hf(self, ours: SkipNormConfig) -> dict[str, Any]:
        gated = ours.mlp_type == "gated"
        if gated and ours.hidden_act == "gelu_new":
            projection = "gated-gelu"  # T5Config spells GELU-tanh gating this way (and maps it back to gelu_new)
        else:
            projection = f"gated-{ours.hidden_act}" if gated else ours.hidden_act
        if ours.decoder_start_token_id != ours.pad_token_id:
            raise self.refuse("decoder_start_token_id", ours.decoder_start_token_id, "T5 starts decoding with pad")
        if not ours.tie_word_embeddings:
            raise self.refuse("tie_word_embeddings", False, "transformers 5's T5 always ties its lm_head")
        if ours.lm_head_multiplier not in (1.0, ours.hidden_size**-0.5):
            raise self.refuse("lm_head_multiplier", ours.lm_head_multiplier, "T5 scales by d_model**-0.5 or not at all")
        # T5Config reads `tie_word_embeddings=False` as "do not scale the decoder output" (v1.1) and ties regardless
        return {"feed_forward_proj": projection, "is_encoder_decoder": True, "n_positions": ours.max_position_embeddings,
                "tie_word_embeddings": ours.lm_head_multiplier != 1.0}

    def base_rules(self, config: SkipNormConfig) -> list[WeightRule]:
        bias = "block.0.layer.0.SelfAttention.relative_attention_bias.weight"
        return [
            _shared_embedding(("shared.weight", "encoder.embed_tokens.weight", "decoder.embed_tokens.weight"),
                              ("embed_tokens.weight",)),
            rename(f"encoder.{bias}", "encoder.score_bias.relative_attention_bias.weight"),
            rename(f"decoder.{bias}", "decoder.score_bias.relative_attention_bias.weight"),
            *norm("encoder.final_layer_norm", "encoder.final_norm", False),
            *norm("decoder.final_layer_norm", "decoder.final_norm", False),
        ]

    @staticmethod
    def _attention_rules(hf: str, ours: str) -> list[WeightRule]:
        return [rename(f"{hf}.{theirs}.weight", f"{ours}.{our}.weight")
                for theirs, our in (("q", "q_proj"), ("k", "k_proj"), ("v", "v_proj"), ("o", "o_proj"))]

    @staticmethod
    def _mlp_rules(config: SkipNormConfig, hf: str) -> list[WeightRule]:
        names = (("wi_0", "gate_proj"), ("wi_1", "up_proj"), ("wo", "down_proj")) if config.mlp_type == "gated" else (
            ("wi", "up_proj"), ("wo", "down_proj"))
        return [rename(f"{hf}.DenseReluDense.{theirs}.weight", f"mlp.{our}.weight") for theirs, our in names]

    def encoder_layer_rules(self, config: SkipNormConfig, layer: int) -> list[WeightRule]:
        return [
            *norm("layer.0.layer_norm", "attn_pre_norm", False),
            *self._attention_rules("layer.0.SelfAttention", "self_attn"),
            *norm("layer.1.layer_norm", "mlp_pre_norm", False),
            *self._mlp_rules(config, "layer.1"),
        ]

    def decoder_layer_rules(self, config: SkipNormConfig, layer: int) -> list[WeightRule]:
        return [
            *norm("layer.0.layer_norm", "attn_pre_norm", False),
            *self._attention_rules("layer.0.SelfAttention", "self_attn"),
            *norm("layer.1.layer_norm", "cross_attn_pre_norm", False),
            *self._attention_rules("layer.1.EncDecAttention", "cross_attn"),
            *norm("layer.2.layer_norm", "mlp_pre_norm", False),
            *self._mlp_rules(config, "layer.2"),
        ]


# model_type -> architecture; convert_to_hf tries them in this order.
ARCHITECTURES: dict[str, Architecture] = {
    "llama": Llama(), "qwen3": Qwen3(), "olmo2": Olmo2(), "gemma2": Gemma2(), "gpt_neox": GPTNeoX(), "phi": Phi(),
    "gpt2": GPT2(), "bert": Bert(),
    # encoder-decoders (issue 16)
    "t5": T5(), "bart": Bart(), "marian": Marian(), "mbart": MBart(), "m2m_100": M2M100(),
}


def _find_head(hf_class_name: str) -> tuple[Architecture, Head]:
    for arch in ARCHITECTURES.values():
        if hf_class_name in arch.heads:
            return arch, arch.heads[hf_class_name]
    supported = sorted(name for arch in ARCHITECTURES.values() for name in arch.heads)
    raise UnsupportedFeatureError(
        f"cannot convert {hf_class_name}: no SkipNorm conversion for this class; supported: {', '.join(supported)}"
    )


# ----------------------------------------------------------------------------------------------------- conversion
def config_from_hf(hf_config: Any) -> SkipNormConfig:
    """The `SkipNormConfig` whose cell is exactly `hf_config`'s architecture (raises on what has no cell)."""
    arch = ARCHITECTURES.get(getattr(hf_config, "model_type", None))
    if arch is None:
        raise UnsupportedFeatureError(
            f"cannot convert model_type={getattr(hf_config, 'model_type', None)!r}; supported: {', '.join(ARCHITECTURES)}"
        )
    return SkipNormConfig(**arch.config_to_ours(hf_config))


def _apply(rules: list[WeightRule], source: dict[str, torch.Tensor], forward: bool, what: str,
           allow_unused: Iterable[str] = (), progress: bool = False) -> dict[str, torch.Tensor]:
    """Run every rule over `source`; missing source keys and unused source keys raise, listing the keys."""
    allow_unused = tuple(allow_unused)
    needed = [k for r in rules for k in (r.hf if forward else r.ours)]
    missing = [k for k in needed if k not in source]
    if missing:
        raise ValueError(f"missing weights in the {what} state dict: {missing}")
    unused = sorted(set(source) - set(needed))
    unexpected = [k for k in unused if not k.startswith(allow_unused)]
    if unexpected:
        hint = " (pass allow_unused=(prefix, ...) to drop weights SkipNorm has no place for, e.g. BERT's 'pooler.')"
        raise ValueError(f"unexpected weights in the {what} state dict, not representable in the target: {unexpected}{hint}")
    out: dict[str, torch.Tensor] = {}
    if progress:  # per-tensor bar with the time left, on stderr (the CLI on large folders)
        from tqdm.auto import tqdm

        rules = tqdm(rules, desc="Converting tensors", unit="rule", file=sys.stderr)
    for rule in rules:
        keys_in, keys_out = (rule.hf, rule.ours) if forward else (rule.ours, rule.hf)
        tensors = (rule.to_ours if forward else rule.to_hf)([source[k] for k in keys_in])
        out.update(zip(keys_out, tensors))
    return out


def _build(model_class: type[PreTrainedModel], config: Any, state_dict: dict[str, torch.Tensor]) -> PreTrainedModel:
    """Instantiate without random init and load `state_dict` strictly (every key, every shape)."""
    with no_init_weights():
        model = model_class(config)
    expected = set(model.state_dict())
    if set(state_dict) != expected:
        raise ValueError(
            f"converted weights do not match {model_class.__name__}: missing {sorted(expected - set(state_dict))}, "
            f"unexpected {sorted(set(state_dict) - expected)}"
        )
    model.load_state_dict(state_dict, strict=True, assign=True)
    model.tie_weights()  # assign=True replaced the shared Parameter with two; re-tie where the config ties
    dtypes = {t.dtype for t in state_dict.values() if t.is_floating_point()}
    if len(dtypes) == 1:
        model.config.dtype = next(iter(dtypes))
    return model.eval()


def convert_state_dict_from_hf(
    hf_class_name: str, hf_config: Any, state_dict: dict[str, torch.Tensor], allow_unused: Iterable[str] = (),
    progress: bool = False,
) -> tuple[type[PreTrainedModel], SkipNormConfig, dict[str, torch.Tensor]]:
    """(SkipNorm class, config, state dict) for a transformers class name, its config and its state dict."""
    arch, head = _find_head(hf_class_name)
    config = config_from_hf(hf_config)
    state = _apply(arch.rules(config, head), state_dict, True, hf_class_name, allow_unused, progress)
    return head.ours, config, state


def _detached_state(model: PreTrainedModel, copy: bool) -> dict[str, torch.Tensor]:
    """`model.state_dict()`, cloned when `copy`; tied weights (one tensor under several names) stay one tensor."""
    state, clones = {}, {}
    for key, tensor in model.state_dict().items():
        tensor = tensor.detach()
        if copy:
            identity = (tensor.data_ptr(), tensor.shape, tensor.stride())
            if identity not in clones:
                clones[identity] = tensor.clone()
            tensor = clones[identity]
        state[key] = tensor
    return state


def convert_from_hf(model: PreTrainedModel, allow_unused: Iterable[str] = (), copy: bool = True,
                    progress: bool = False) -> PreTrainedModel:
    """The SkipNorm model (same head type) computing exactly what the transformers `model` computes.

    Args:
        model: a supported transformers model (see `ARCHITECTURES`), e.g. `LlamaForCausalLM`, `GPT2LMHeadModel`,
            `BertForMaskedLM`.
        allow_unused: state-dict key prefixes SkipNorm may drop knowingly (e.g. `("pooler.",)` for `BertModel`,
            whose pooler has no SkipNorm counterpart). Any other unrepresentable weight raises, listing the keys.
        copy: clone the weights (default) so the two models do not share storage; `False` saves memory when the
            source is discarded right after (the CLI does this).
        progress: show a per-tensor progress bar with the time left on stderr (the CLI does this).

    Raises:
        UnsupportedFeatureError (a ValueError): the source uses a feature SkipNorm cannot compute; the message names it.
        ValueError: missing or unexpected weights, with the keys listed.
    """
    state = _detached_state(model, copy)
    model_class, config, converted = convert_state_dict_from_hf(type(model).__name__, model.config, state, allow_unused,
                                                                progress)
    ours = _build(model_class, config, converted)
    generation_config = getattr(model, "generation_config", None)
    if generation_config is not None and getattr(ours, "generation_config", None) is not None:
        ours.generation_config = deepcopy(generation_config)  # eos/pad ids and defaults carry over, unshared
    return ours


def _matching_architecture(config: SkipNormConfig) -> tuple[Architecture, dict[str, Any]]:
    """The architecture whose cell is exactly `config`: its config mapped there and back must change nothing."""
    reasons = []
    ours = {k: v for k, v in config.to_dict().items() if k not in _NON_ARCHITECTURAL}
    for arch in ARCHITECTURES.values():
        try:
            hf_fields = arch.config_to_hf(config)
            hf_config = getattr(transformers, arch.hf_config_class)(**hf_fields)
            back = SkipNormConfig(**arch.config_to_ours(hf_config)).to_dict()
        except (ValueError, TypeError) as error:
            reasons.append(f"{arch.name}: {error}")
            continue
        differing = sorted(k for k in ours if k not in _NON_ARCHITECTURAL and back.get(k) != ours[k])
        if not differing:
            return arch, hf_fields
        reasons.append(f"{arch.name}: differs in {', '.join(f'{k}={ours[k]!r} (needs {back.get(k)!r})' for k in differing)}")
    raise UnsupportedFeatureError("no transformers architecture computes this SkipNorm config exactly:\n  " + "\n  ".join(reasons))


def convert_to_hf(model: PreTrainedModel, copy: bool = True) -> PreTrainedModel:
    """The transformers model (LLaMA, GPT-2, BERT, ...) computing exactly what the SkipNorm `model` computes.

    The architecture is found from the config: the one whose cell maps there and back without changing any
    architectural field. `convert_to_hf(convert_from_hf(m))` reproduces `m.state_dict()` exactly.
    """
    arch, hf_fields = _matching_architecture(model.config)
    hf_config = getattr(transformers, arch.hf_config_class)(**hf_fields)
    for class_name, head in arch.heads.items():
        if head.ours is type(model):
            break
    else:
        raise UnsupportedFeatureError(
            f"cannot convert {type(model).__name__} to {arch.name}: supported heads {', '.join(arch.heads)}"
        )
    state = _detached_state(model, copy)
    hf_state = _apply(arch.rules(model.config, head), state, False, type(model).__name__)
    hf_class = getattr(transformers, class_name)
    if hasattr(model.config, "dtype"):
        hf_config.dtype = model.config.dtype
    return _build(hf_class, hf_config, hf_state)


# ----------------------------------------------------------------------------------------------------- CLI
def _resolve_source(source: str | Path, cache_dir: str | Path | None = None) -> Path:
    """A local folder, or a Hub id already in the local Hugging Face cache (never downloads)."""
    path = Path(source)
    if path.is_dir():
        return path
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return Path(snapshot_download(str(source), local_files_only=True, cache_dir=cache_dir))
    except (LocalEntryNotFoundError, ValueError, OSError) as error:
        raise FileNotFoundError(
            f"{source!r} is neither a local folder nor a Hub id present in the local Hugging Face cache; this tool "
            f"never downloads ({type(error).__name__})"
        ) from None


def load_hf_model(source: str | Path, cache_dir: str | Path | None = None) -> PreTrainedModel:
    """Load a transformers checkpoint (local folder or cached Hub id; safetensors only) with the class in its config."""
    folder = _resolve_source(source, cache_dir)
    if not list(folder.glob("*.safetensors")):
        others = sorted(p.name for p in folder.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".ckpt"))
        raise ValueError(
            f"{folder} has no .safetensors weights ({others or 'no weights at all'}); only safetensors are loaded, since "
            f"pickled checkpoints can run arbitrary code. Convert them with a tool you trust first."
        )
    with open(folder / "config.json") as f:
        architectures = json.load(f).get("architectures") or []
    if len(architectures) != 1:
        raise ValueError(f"{folder / 'config.json'}: expected exactly one entry in 'architectures', got {architectures}")
    _find_head(architectures[0])  # refuse unsupported classes before loading any weight
    hf_class = getattr(transformers, architectures[0])
    model, info = hf_class.from_pretrained(
        folder, local_files_only=True, use_safetensors=True, dtype="auto", output_loading_info=True
    )
    # transformers fills missing weights with random values and only logs it: converting those would be silent.
    problems = {k: sorted(map(str, v)) for k, v in info.items()
                if k in ("missing_keys", "unexpected_keys", "mismatched_keys") and v}
    if problems:
        raise ValueError(f"{folder}: the checkpoint does not match {architectures[0]}: {problems}")
    return model


class _Stages:
    """`[convert 1/3] loading 1.2 GB ...` lines on stderr with the elapsed time and, once a first stage has run, an
    estimate of the time left from its measured throughput (bytes per second of the source weights)."""

    def __init__(self, total_bytes: int, enabled: bool):
        self.total_bytes, self.enabled = total_bytes, enabled
        self.start = time.perf_counter()
        self.load_seconds: float | None = None

    def begin(self, index: int, what: str) -> None:
        if not self.enabled:
            return
        elapsed = time.perf_counter() - self.start
        line = f"[convert {index}/3] {what} (elapsed {elapsed:.1f} s"
        if self.load_seconds is not None:
            # Converting is a reshuffle of what was read and writing moves the same bytes: each costs about the load.
            line += f", about {self.load_seconds * (4 - index):.0f} s left"
        print(line + ")", file=sys.stderr, flush=True)

    def loaded(self) -> None:
        self.load_seconds = max(time.perf_counter() - self.start, 1e-3)


def convert_folder(source: str | Path, destination: str | Path, allow_unused: Iterable[str] = (),
                   cache_dir: str | Path | None = None, progress: bool = False) -> PreTrainedModel:
    """Convert a checkpoint folder (or cached Hub id) into a SkipNorm folder: config, safetensors, tokenizer files.

    `progress` reports each stage (load, convert, write) on stderr with the time left, and a per-tensor bar."""
    folder = _resolve_source(source, cache_dir)
    weight_files = sorted(folder.glob("*.safetensors"))
    total = sum(path.stat().st_size for path in weight_files)
    stages = _Stages(total, progress)
    stages.begin(1, f"loading {len(weight_files)} safetensors file(s), {total / 1e9:.2f} GB, from {folder}")
    hf_model = load_hf_model(folder)
    stages.loaded()
    stages.begin(2, f"converting {type(hf_model).__name__}")
    ours = convert_from_hf(hf_model, allow_unused=allow_unused, copy=False, progress=progress)
    destination = Path(destination)
    destination.mkdir(parents=True, exist_ok=True)
    stages.begin(3, f"writing {destination}")
    ours.save_pretrained(destination, safe_serialization=True)
    for name in TOKENIZER_FILES:
        if (folder / name).is_file() and not (name == "generation_config.json" and (destination / name).exists()):
            shutil.copy2(folder / name, destination / name)
    return ours


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m hf_skipnorm.convert",
        description="Convert a transformers checkpoint (GPT-2, LLaMA, BERT, T5, BART, Marian, ...) into an equivalent SkipNorm checkpoint.",
    )
    parser.add_argument("source", help="checkpoint folder (config.json + safetensors) or a Hub id already cached locally")
    parser.add_argument("destination", help="output folder for the SkipNorm checkpoint")
    parser.add_argument("--allow-unused", action="append", default=[], metavar="PREFIX",
                        help="drop source weights under PREFIX that SkipNorm has no place for (e.g. 'pooler.')")
    parser.add_argument("--cache-dir", default=None, help="Hugging Face cache to look a Hub id up in (default: HF's)")
    parser.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    args = parser.parse_args(argv)
    try:
        ours = convert_folder(args.source, args.destination, args.allow_unused, args.cache_dir,
                              progress=not args.quiet)
    except (ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"wrote {type(ours).__name__} ({sum(p.numel() for p in ours.parameters()):,} parameters) to {args.destination}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

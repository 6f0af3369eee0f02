"""SkipNorm configuration: where the norm sits, what the norm is, and how the skip combines.

Identical in spirit to `LlamaConfig` except for three axes, each one string-valued field:

- ``norm_position``: where each sublayer's norms sit relative to the skip connection;
- ``norm_type``: which normalization ``N`` is;
- ``residual``: how the skip path and the branch combine.

Every sublayer (attention, then MLP) computes ``N_post(R(x, N_out(F(N_in(x)))))`` where the placement chooses
which of ``N_in`` / ``N_out`` / ``N_post`` exist (the others are identities) and the residual chooses ``R``.
This module imports no torch so configs can be read and validated anywhere.
"""

from __future__ import annotations

import math
from typing import Any

from transformers.configuration_utils import PreTrainedConfig


# --- The vocabulary of each axis. The registries in norms_skipnorm.py / modeling_skipnorm.py use exactly these
# keys; tests/test_configuration.py asserts they agree. ---

# value -> (N_in, N_out, N_post): which norm slots a sublayer has (see the module docstring).
PLACEMENT_SLOTS: dict[str, tuple[bool, bool, bool]] = {
    "pre": (True, False, False),  # x + F(N(x))            GPT-2, LLaMA; Xiong et al. 2020 (2002.04745)
    "post": (False, False, True),  # N(x + F(x))            Vaswani 2017, BERT
    "sandwich": (True, True, False),  # x + N_out(F(N_in(x)))  CogView (2105.13290), Gemma 2/3, Peri-LN (2502.02732)
    "output": (False, True, False),  # x + N(F(x))            OLMo 2 (2501.00656), Swin-v2 res-post-norm
    "pre_post": (True, False, True),  # N_post(x + F(N_pre(x))) Keel (2601.19895)
    "none": (False, False, False),  # x + F(x)               norm-free (pairs with rezero / skipinit)
}
NORM_POSITIONS: tuple[str, ...] = tuple(PLACEMENT_SLOTS)
# Placements whose stream leaves the last block un-normalized, so a final norm is implied (pre/sandwich/output).
# post and pre_post end every block with a norm already; none is norm-free by intent.
FINAL_NORM_IMPLIED: dict[str, bool] = {
    "pre": True,
    "post": False,
    "sandwich": True,
    "output": True,
    "pre_post": False,
    "none": False,
}
NORM_TYPES: tuple[str, ...] = ("layernorm", "rmsnorm", "none")
RESIDUALS: tuple[str, ...] = ("add", "none", "scaled")
POSITION_EMBEDDINGS: tuple[str, ...] = ("rope", "learned", "none")
MLP_TYPES: tuple[str, ...] = ("gated", "plain")
BRANCH_INITS: tuple[str, ...] = ("normal", "scaled_depth", "zero")
CLASSIFIER_POOLINGS: tuple[str, ...] = ("last", "first", "mean")


def _choice_error(field: str, value: Any, choices: tuple[str, ...], why: str = "") -> ValueError:
    reason = f" ({why})" if why else ""
    return ValueError(f"SkipNormConfig.{field}={value!r} is not valid{reason}; valid choices: {', '.join(choices)}")


def _check_choice(field: str, value: Any, choices: tuple[str, ...]) -> None:
    if not isinstance(value, str) or value not in choices:
        raise _choice_error(field, value, choices)


class SkipNormConfig(PreTrainedConfig):
    r"""Configuration of a SkipNorm transformer.

    Standard fields follow transformers' names and meanings (see `LlamaConfig`). The SkipNorm-specific fields:

    Args:
        norm_position (`str` or `list[str]`, defaults to `"pre"`):
            Where each sublayer's norms sit. `pre`: ``x + F(N(x))`` (Xiong et al. 2020, arXiv 2002.04745: well-behaved
            gradients at init, trains without warm-up). `post`: ``N(x + F(x))`` (Vaswani et al. 2017; needs warm-up).
            `sandwich`: ``x + N_out(F(N_in(x)))`` (CogView, arXiv 2105.13290; Gemma 2). `output`: ``x + N(F(x))``
            (OLMo 2, arXiv 2501.00656). `pre_post`: ``N_post(x + F(N_pre(x)))`` (Keel, arXiv 2601.19895). `none`:
            ``x + F(x)``. A list gives one value per layer (generalizes Mix-LN, arXiv 2412.13795).
        attn_norm_position / mlp_norm_position (`str`, `list[str]` or `None`):
            Per-sublayer overrides of `norm_position`; `None` inherits it.
        norm_type (`str`, defaults to `"rmsnorm"`):
            What `N` is. `layernorm`: ``g*(x-mean)/sqrt(var+eps)+b`` (Ba et al. 2016, arXiv 1607.06450). `rmsnorm`:
            ``g*x/sqrt(mean(x^2)+eps)`` (Zhang & Sennrich 2019, arXiv 1910.07467). `none`: identity in every slot the
            placement has (an ablation: the placement's norms removed, the wiring kept).
        norm_eps (`float`, defaults to 1e-6): the epsilon inside every norm (LLaMA uses 1e-6, GPT-2/BERT 1e-5/1e-12).
        norm_bias (`bool`, defaults to `True`): whether `layernorm` has the additive bias `b` (OLMo drops it).
        norm_unit_offset (`bool`, defaults to `False`): store the gain as ``1 + w`` with `w` initialized to 0 (Gemma),
            so weight decay pulls the gain toward 1 rather than 0.
        residual (`str`, defaults to `"add"`):
            How the skip combines. `add`: ``x + F`` (He et al. 2016, arXiv 1512.03385). `none`: ``F`` with no skip
            (ablation of Dong et al. 2021, arXiv 2103.03404). `scaled`: ``residual_alpha*x + branch_multiplier*F``
            (Granite, MiniCPM).
        residual_alpha (`float`, defaults to 1.0): constant on the skip path for `scaled`.
        branch_multiplier (`float`, defaults to 1.0): constant on the branch for `scaled` (MiniCPM's scale_depth/sqrt(L)).
        embedding_norm (`bool`, defaults to `False`): normalize the embedding output (BERT; Peri-LN, arXiv 2502.02732).
        final_norm (`bool` or `None`): norm after the last block; `None` means what the last placement implies
            (on for pre/sandwich/output, off for post/pre_post/none).
        branch_init (`str`, defaults to `"normal"`): init of branch output projections (`o_proj`, `down_proj`):
            `normal` (std = initializer_range), `scaled_depth` (std / sqrt(2L), GPT-2), `zero` (branches start as 0,
            as in SkipInit, arXiv 2002.10444).
        position_embedding (`str`, defaults to `"rope"`): `rope` (RoFormer, arXiv 2104.09864), `learned` (GPT-2, BERT),
            `none` (NoPE).
        partial_rotary_factor (`float`, defaults to 1.0): fraction of each head's dims that RoPE rotates (GPT-NeoX 0.25).
        mlp_type (`str`, defaults to `"gated"`): `gated` = ``down(act(gate(x)) * up(x))`` (SwiGLU/GeGLU by
            `hidden_act`, arXiv 2002.05202); `plain` = ``down(act(up(x)))`` (GPT-2, BERT).
        is_causal (`bool`, defaults to `True`): decoder (causal mask) or bidirectional encoder.
        type_vocab_size (`int`, defaults to 0): number of token types (BERT segments); 0 = no token-type embedding.
        classifier_pooling (`str` or `None`): how sequence classification pools tokens; `None` means `last`
            (last non-pad token) for decoders and `mean` for encoders.
        embedding_multiplier (`float`, defaults to 1.0): token embeddings looked up from `input_ids` are multiplied by
            this (Gemma: ``sqrt(hidden_size)``; `inputs_embeds` passed by the caller are used as given, as in Gemma).
        attention_multiplier (`float` or `None`): the scale ``s`` in ``softmax(s * Q K^T)``; `None` means
            ``1/sqrt(head_dim)`` (Vaswani et al. 2017). Gemma 2 uses ``query_pre_attn_scalar**-0.5``.
        attn_logit_softcapping (`float` or `None`): attention scores become ``c * tanh(scores / c)`` before the mask
            and softmax (Gemma 2, arXiv 2408.00118); needs an attention backend that applies it (eager, flex, flash),
            so SDPA is not chosen by default.
        final_logit_softcapping (`float` or `None`): causal-LM logits become ``c * tanh(logits / c)`` (Gemma 2).
        lm_head_bias (`bool`, defaults to `False`): whether the causal-LM `lm_head` has a bias (Phi).
    """

    model_type = "skipnorm"
    keys_to_ignore_at_inference = ["cache"]
    base_model_tp_plan = {
        "layers.*.self_attn.q_proj": "colwise",
        "layers.*.self_attn.k_proj": "colwise",
        "layers.*.self_attn.v_proj": "colwise",
        "layers.*.self_attn.o_proj": "rowwise",
        "layers.*.mlp.gate_proj": "colwise",
        "layers.*.mlp.up_proj": "colwise",
        "layers.*.mlp.down_proj": "rowwise",
    }

    # --- transformers-standard fields ---
    vocab_size: int = 32000
    hidden_size: int = 768
    intermediate_size: int | None = None  # None: 4*d for plain MLPs, the LLaMA 8/3*d rounded to 64 for gated ones
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    num_key_value_heads: int | None = None  # None: multi-head attention; fewer: grouped-query (arXiv 2305.13245)
    head_dim: int | None = None
    hidden_act: str = "silu"
    max_position_embeddings: int = 2048
    initializer_range: float = 0.02
    use_cache: bool = True
    pad_token_id: int | None = None
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None
    tie_word_embeddings: bool = True
    rope_parameters: dict | None = None
    attention_bias: bool = False
    attention_dropout: float = 0.0
    hidden_dropout: float = 0.0
    mlp_bias: bool = False

    # --- architecture fields needed to express real models ---
    position_embedding: str = "rope"
    partial_rotary_factor: float = 1.0
    mlp_type: str = "gated"
    is_causal: bool = True
    type_vocab_size: int = 0
    classifier_pooling: str | None = None
    embedding_multiplier: float = 1.0
    attention_multiplier: float | None = None
    attn_logit_softcapping: float | None = None
    final_logit_softcapping: float | None = None
    lm_head_bias: bool = False

    # --- the three axes ---
    norm_position: str | list = "pre"
    attn_norm_position: str | list | None = None
    mlp_norm_position: str | list | None = None
    norm_type: str = "rmsnorm"
    norm_eps: float = 1e-6
    norm_bias: bool = True
    norm_unit_offset: bool = False
    residual: str = "add"
    residual_alpha: float = 1.0
    branch_multiplier: float = 1.0
    embedding_norm: bool = False
    final_norm: bool | None = None
    branch_init: str = "normal"

    def __post_init__(self, **kwargs):
        if self.head_dim is None and isinstance(self.hidden_size, int) and isinstance(self.num_attention_heads, int):
            if self.num_attention_heads > 0 and self.hidden_size % self.num_attention_heads == 0:
                self.head_dim = self.hidden_size // self.num_attention_heads
        if self.num_key_value_heads is None:
            self.num_key_value_heads = self.num_attention_heads
        if self.intermediate_size is None and isinstance(self.hidden_size, int):
            if self.mlp_type == "gated":
                # LLaMA's rule: 2/3 of 4d, rounded up to a multiple of 64 (keeps FLOPs equal to a plain 4d MLP).
                self.intermediate_size = 64 * math.ceil(int(8 * self.hidden_size / 3) / 64)
            else:
                self.intermediate_size = 4 * self.hidden_size
        if self.rope_parameters is None:
            self.rope_parameters = {"rope_type": "default", "rope_theta": 10000.0}
        if isinstance(self.norm_position, tuple):
            self.norm_position = list(self.norm_position)
        super().__post_init__(**kwargs)
        self.validate_skipnorm()

    # ------------------------------------------------------------------ validation
    def validate_skipnorm(self) -> None:
        """Check every field; raise ValueError naming the field, the value and the valid choices."""
        for name in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "max_position_embeddings"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"SkipNormConfig.{name}={value!r} is not valid; expected a positive integer")
        for name in ("num_key_value_heads", "head_dim", "intermediate_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(
                    f"SkipNormConfig.{name}={value!r} is not valid; expected a positive integer"
                    + (" (hidden_size must be divisible by num_attention_heads, or set head_dim)" if name == "head_dim" else "")
                )
        if self.num_attention_heads % self.num_key_value_heads != 0:
            raise ValueError(
                f"SkipNormConfig.num_key_value_heads={self.num_key_value_heads} is not valid; it must divide "
                f"num_attention_heads={self.num_attention_heads}"
            )
        if isinstance(self.type_vocab_size, bool) or not isinstance(self.type_vocab_size, int) or self.type_vocab_size < 0:
            raise ValueError(f"SkipNormConfig.type_vocab_size={self.type_vocab_size!r} is not valid; expected an integer >= 0")
        for name in ("attention_dropout", "hidden_dropout"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
                raise ValueError(f"SkipNormConfig.{name}={value!r} is not valid; expected a float in [0, 1)")
        for name in ("norm_eps", "initializer_range"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise ValueError(f"SkipNormConfig.{name}={value!r} is not valid; expected a float >= 0")
        for name in ("residual_alpha", "branch_multiplier"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"SkipNormConfig.{name}={value!r} is not valid; expected a finite float")
        for name in ("embedding_multiplier", "attention_multiplier", "attn_logit_softcapping",
                     "final_logit_softcapping"):
            value = getattr(self, name)
            if value is None and name != "embedding_multiplier":
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
                raise ValueError(
                    f"SkipNormConfig.{name}={value!r} is not valid; expected a finite float > 0"
                    + ("" if name == "embedding_multiplier" else " or None")
                )
        for name in ("norm_bias", "norm_unit_offset", "embedding_norm", "is_causal", "tie_word_embeddings",
                     "attention_bias", "mlp_bias", "lm_head_bias"):
            value = getattr(self, name)
            if not isinstance(value, bool):
                raise ValueError(f"SkipNormConfig.{name}={value!r} is not valid; expected True or False")
        if self.final_norm is not None and not isinstance(self.final_norm, bool):
            raise ValueError(f"SkipNormConfig.final_norm={self.final_norm!r} is not valid; expected True, False or None")
        if not isinstance(self.partial_rotary_factor, (int, float)) or not 0.0 < self.partial_rotary_factor <= 1.0:
            raise ValueError(
                f"SkipNormConfig.partial_rotary_factor={self.partial_rotary_factor!r} is not valid; expected 0 < f <= 1"
            )
        if self.position_embedding == "rope":
            rotary_dim = int(self.head_dim * self.partial_rotary_factor)
            if rotary_dim % 2 != 0 or rotary_dim == 0:
                raise ValueError(
                    f"SkipNormConfig.partial_rotary_factor={self.partial_rotary_factor!r} is not valid with "
                    f"head_dim={self.head_dim}: RoPE needs an even, non-zero number of rotated dims (got {rotary_dim})"
                )
        _check_choice("norm_type", self.norm_type, NORM_TYPES)
        _check_choice("residual", self.residual, RESIDUALS)
        _check_choice("position_embedding", self.position_embedding, POSITION_EMBEDDINGS)
        _check_choice("mlp_type", self.mlp_type, MLP_TYPES)
        _check_choice("branch_init", self.branch_init, BRANCH_INITS)
        if self.classifier_pooling is not None:
            _check_choice("classifier_pooling", self.classifier_pooling, CLASSIFIER_POOLINGS)
        self._check_positions("norm_position", self.norm_position, allow_none=False)
        self._check_positions("attn_norm_position", self.attn_norm_position, allow_none=True)
        self._check_positions("mlp_norm_position", self.mlp_norm_position, allow_none=True)

    def _check_positions(self, field: str, value: Any, allow_none: bool) -> None:
        if value is None and allow_none:
            return
        if isinstance(value, str):
            _check_choice(field, value, NORM_POSITIONS)
            return
        if isinstance(value, list):
            if len(value) != self.num_hidden_layers:
                raise ValueError(
                    f"SkipNormConfig.{field}={value!r} is not valid: a per-layer list needs one value per layer "
                    f"(num_hidden_layers={self.num_hidden_layers}, got {len(value)}); valid choices per entry: "
                    f"{', '.join(NORM_POSITIONS)}"
                )
            for index, entry in enumerate(value):
                if not isinstance(entry, str) or entry not in NORM_POSITIONS:
                    raise _choice_error(f"{field}[{index}]", entry, NORM_POSITIONS)
            return
        raise _choice_error(field, value, NORM_POSITIONS, "expected a string or a list with one string per layer")

    # ------------------------------------------------------------------ resolved views
    @staticmethod
    def _at_layer(value: str | list, layer_idx: int) -> str:
        return value[layer_idx] if isinstance(value, list) else value

    def layer_norm_positions(self, layer_idx: int) -> tuple[str, str]:
        """(attention placement, MLP placement) of block `layer_idx` (0-based), overrides applied."""
        base = self._at_layer(self.norm_position, layer_idx)
        attn = base if self.attn_norm_position is None else self._at_layer(self.attn_norm_position, layer_idx)
        mlp = base if self.mlp_norm_position is None else self._at_layer(self.mlp_norm_position, layer_idx)
        return attn, mlp

    @property
    def use_final_norm(self) -> bool:
        """Whether the stack ends with `final_norm`: the explicit field, else what the last placement implies."""
        if self.final_norm is not None:
            return self.final_norm
        return FINAL_NORM_IMPLIED[self.layer_norm_positions(self.num_hidden_layers - 1)[1]]

    @property
    def resolved_classifier_pooling(self) -> str:
        if self.classifier_pooling is not None:
            return self.classifier_pooling
        return "last" if self.is_causal else "mean"


__all__ = ["SkipNormConfig"]

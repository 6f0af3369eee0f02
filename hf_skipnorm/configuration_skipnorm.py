"""SkipNorm configuration: where the norm sits, what the norm is, and how the skip combines.

Identical in spirit to `LlamaConfig` except for three axes, each one string-valued field:

- ``norm_position``: where each sublayer's norms sit relative to the skip connection;
- ``norm_type``: which normalization ``N`` is;
- ``residual``: how the skip path and the branch combine.

Every sublayer (attention, then MLP) computes ``N_post(R(x, N_out(F(N_in(x)))))`` where the placement chooses
which of ``N_in`` / ``N_out`` / ``N_post`` exist (the others are identities) and the residual chooses ``R``.
This module imports no torch so configs can be read and validated anywhere. Validation is data: every field is
one row of `FIELDS` and every cross-field rule one `@rule` function below it (`config_fields_skipnorm.py` holds the
row kinds and the validator, and says how to add a row or a rule).
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import warnings
from typing import Any, NamedTuple

from transformers.configuration_utils import PreTrainedConfig
from transformers.generation.configuration_utils import GenerationConfig

from .config_fields_skipnorm import (
    FLOAT16_MAX, FLOAT16_TINY, FLOAT32_MAX, Bool, Check, Choice, Field, Float, Int, _is_number, choice_error, refuse,
    rule, validate,
)


# --- The vocabulary of each axis. The registries in norms_skipnorm.py / modeling_skipnorm.py use exactly these
# keys; tests/test_configuration.py asserts they agree. ---

class SublayerNorms(NamedTuple):
    """Which norms one sublayer (attention or MLP) has; each is its own module, absent ones are identities."""

    pre: bool = False  # N_in: normalizes the sublayer input
    out: bool = False  # N_out: normalizes the branch output before the skip
    post: bool = False  # N_post: normalizes the sum after the skip
    sub: bool = False  # inside the branch, before its output projection (Sub-LN, NormFormer's FFN norm)
    qkv: bool = False  # attention only: Q, K and V normalized per head after their projections (HybridNorm)
    head_scale: bool = False  # attention only: a learned gain per head before o_proj (NormFormer's HeadScale)


_P = SublayerNorms
# value -> (attention norms, MLP norms). Each sublayer computes N_post(R(x, N_out(F(N_in(x))))), F with its in-branch
# norms. "mix" has no row of its own: layer_norm_positions() resolves it to "post" or "pre" per layer. "b2t" and
# "resi_dual" rewire the block (BLOCK_PLACEMENTS); their rows list the norms their blocks use.
PLACEMENT_SLOTS: dict[str, tuple[SublayerNorms, SublayerNorms] | None] = {
    "pre": (_P(pre=True), _P(pre=True)),  # x + F(N(x))     GPT-2, LLaMA; Xiong et al. 2020 (2002.04745)
    "post": (_P(post=True), _P(post=True)),  # N(x + F(x))   Vaswani 2017, BERT
    "sandwich": (_P(pre=True, out=True), _P(pre=True, out=True)),  # x + N_out(F(N_in(x)))  CogView, Gemma 2/3
    "output": (_P(out=True), _P(out=True)),  # x + N(F(x))   OLMo 2 (2501.00656), Swin-v2 res-post-norm
    "pre_post": (_P(pre=True, post=True), _P(pre=True, post=True)),  # N_post(x + F(N_pre(x)))  Keel (2601.19895)
    "none": (_P(), _P()),  # x + F(x)   norm-free (pairs with rezero / skipinit)
    # Peri-LN (2502.02732): sandwich around every sublayer plus a normalized embedding output (forced on).
    "peri": (_P(pre=True, out=True), _P(pre=True, out=True)),
    # Sub-LN / Magneto (2210.06423): x + W_out N_sub(G(N(x))), branch weights initialized with gain sqrt(log 2L).
    "subln": (_P(pre=True, sub=True), _P(pre=True, sub=True)),
    # NormFormer (2110.09456): attn x + N_out(HeadScale(MHA(N(x)))), MLP x + W_2 N_sub(act(W_1 N(x))).
    "normformer": (_P(pre=True, out=True, head_scale=True), _P(pre=True, sub=True)),
    "mix": None,  # Mix-LN (2412.13795): post for the first floor(mix_ratio * L) blocks, pre for the rest
    # HybridNorm (2503.04598): attn N(x + MHA(QKV-norm)); MLP z + FFN(z) on the normalized z = that sum.
    "hybrid": (_P(post=True, qkv=True), _P()),
    # HybridNorm*'s first block: pre-norm on both sublayers, QKV-norm kept: ["hybrid_pre", "hybrid", ...].
    "hybrid_pre": (_P(pre=True, qkv=True), _P(pre=True)),
    "b2t": (_P(post=True), _P(post=True)),  # B2T (2206.00330): h = N(x + A(x)); N(h + FFN(h) + x)
    "resi_dual": (_P(post=True), _P(post=True)),  # ResiDual (2304.14802): post-LN stream + un-normed dual stream
}
NORM_POSITIONS: tuple[str, ...] = tuple(PLACEMENT_SLOTS)
# Issue 15: placements that are known and named, but not built, with the reason (`_check_positions` refuses them).
# SpanNorm's abstract describes its block only in words; the equations, the "principled scaling strategy" (its constant
# and how it depends on depth) and the init are in the paper's body, which no source reachable here holds.
REFUSED_NORM_POSITIONS: dict[str, str] = {
    "span": (
        "SpanNorm (Wang et al. 2026, arXiv 2601.22580) is not implemented: its abstract gives the block only in words "
        "('a clean residual connection that spans the entire transformer block ... a PostNorm-style computation that "
        "normalizes the aggregated output ... combined with a principled scaling strategy'), and the block equation, "
        "where its norms sit, the scaling strategy's constant and depth dependence and the init are in the paper's "
        "body, which no source reachable here holds; a guess would not be SpanNorm"
    ),
}
# Placements whose block is not the sequential attention -> MLP block (modeling_skipnorm.BLOCK_CLASSES rows).
BLOCK_PLACEMENTS: tuple[str, ...] = ("b2t", "resi_dual")
# Placements that only make sense for the whole stack, as the string value of norm_position.
WHOLE_STACK_PLACEMENTS: tuple[str, ...] = ("mix", "peri", "resi_dual")
# Placements whose stream leaves the last block un-normalized, so a final norm is implied (pre/sandwich/output).
# post and pre_post end every block with a norm already; none is norm-free by intent. resi_dual ends with its own
# x_L + N(d_L) (the stream adapter's `dual_final_norm`), so no further final norm.
FINAL_NORM_IMPLIED: dict[str, bool] = {
    "pre": True,
    "post": False,
    "sandwich": True,
    "output": True,
    "pre_post": False,
    "none": False,
    "peri": True,
    "subln": True,
    "normformer": True,
    "mix": True,  # never looked up: the last block of a mix stack is "pre"
    "hybrid": True,  # HybridNorm's last block ends with z + FFN(z), un-normalized (its OLMo code keeps ln_f)
    "hybrid_pre": True,
    "b2t": False,
    "resi_dual": False,
}
QK_NORMS: tuple[str, ...] = ("none", "per_head", "full", "per_head_gains")  # per_head_gains: issue 15
# Norm types with a per-channel gain g that `norm_unit_offset` can store as 1 + w.
UNIT_OFFSET_NORM_TYPES: tuple[str, ...] = ("layernorm", "rmsnorm", "dyt", "derf")
# Residuals whose combine R(x, y) is one module on one stream, so a parallel block can feed it y = Attn + MLP.
# Residuals not listed (multi-stream, or post-LN schemes such as DeepNet) are refused with parallel_block until
# someone checks that the pair means something.
PARALLEL_RESIDUALS: tuple[str, ...] = (
    "add", "none", "scaled", "rezero", "skipinit", "layerscale", "gated",
    "orthogonal", "laurel",  # issue 15: both are one combine on one stream, linear in the branch sum
)
NORM_TYPES: tuple[str, ...] = ("layernorm", "rmsnorm", "scalenorm", "simple_rmsnorm", "dyt", "derf", "none")
RESIDUALS: tuple[str, ...] = (
    "add", "none", "scaled", "deepnorm", "admin", "rezero", "skipinit", "layerscale", "gated", "hyper", "mhc", "dense",
    "orthogonal", "laurel", "frac",
    "attn_res",  # issue 15 (attn_res: depth mixing; orthogonal, laurel, frac: the residual frontier)
)
# Residuals that replace the single residual stream by several (hyper-connections) or by the history of block
# outputs (DenseFormer): their blocks take and return a stream state, not (B, T, C) (modeling_skipnorm.BLOCK_CLASSES).
STREAM_RESIDUALS: tuple[str, ...] = ("hyper", "mhc", "dense", "attn_res")
# Post-LN residuals: their formula is N(w * x + F(x)) and their constants were derived for post-LN.
POST_LN_RESIDUALS: tuple[str, ...] = ("deepnorm", "admin")
POSITION_EMBEDDINGS: tuple[str, ...] = ("rope", "learned", "none")
# Issue 16: position types only the encoder-decoder stacks compute (modeling_seq2seq_skipnorm.SEQ2SEQ_POSITION_CLASSES).
SEQ2SEQ_POSITION_EMBEDDINGS: tuple[str, ...] = ("sinusoidal", "sinusoidal_fairseq", "t5_relative")
# Fields `decoder_overrides` may set: the three axes and their constants, per stack. Everything else (width, heads,
# vocabulary, MLP, positions) is shared by the stacks of one model, as in every encoder-decoder in transformers.
DECODER_OVERRIDE_FIELDS: tuple[str, ...] = (
    "norm_position", "attn_norm_position", "mlp_norm_position", "norm_type", "norm_eps", "norm_bias",
    "norm_unit_offset", "residual", "residual_alpha", "branch_multiplier", "branch_init_gain", "layerscale_init",
    "admin_omegas", "embedding_norm", "final_norm", "branch_init", "qk_norm", "norm_depth_scaling", "mix_ratio",
    "dyt_alpha_init", "dyt_attn_alpha_init", "derf_alpha_init",
)
# The decoder's cross-attention block is the sequential one: placements and residuals that rewire a block (or carry
# several streams) are defined by their papers for two sublayers, and have no cross-attention variant here.
DECODER_REFUSED_PLACEMENTS: tuple[str, ...] = ("b2t", "resi_dual")
# Every multi-stream residual, and frac (one stream, but it runs on the hyper-connection block).
DECODER_REFUSED_RESIDUALS: tuple[str, ...] = STREAM_RESIDUALS + ("frac",)
ENCODER_DECODER_STACKS: tuple[str, ...] = ("encoder", "decoder")
MLP_TYPES: tuple[str, ...] = ("gated", "plain")
BRANCH_INITS: tuple[str, ...] = ("normal", "scaled_depth", "zero")
CLASSIFIER_POOLINGS: tuple[str, ...] = ("last", "first", "mean")
# --- issue 15: the 2024-2026 residual frontier ---
LAUREL_VARIANTS: tuple[str, ...] = ("rw", "lr", "rw_lr", "pa")  # LAuReL (arXiv 2411.07501): RW, LR, RW+LR, PA
# LAuReL-RW's bound on (alpha, beta): the paper, Sec. 2.1, "we cannot let alpha and beta grow unbounded, and using a
# normalization function such as softmax or sigmoid helps" (residuals_skipnorm.LAUREL_RW_NORMALIZERS).
LAUREL_RW_WEIGHTS: tuple[str, ...] = ("softmax", "sigmoid")
# Whole-model architectures: `transformer` is everything above; `ngpt` (arXiv 2410.01131) replaces the block, the
# embeddings and the logits by the normalized Transformer (ngpt_skipnorm.py), so it fixes several fields itself.
ARCHITECTURES: tuple[str, ...] = ("transformer", "ngpt")
# What nGPT needs of the other fields, with the reason: field -> (required value or tuple of values, why). The rule
# ngpt_fixes_its_fields refuses anything else, so no field is silently ignored.
NGPT_REQUIRED_FIELDS: dict[str, tuple[Any, str]] = {
    "norm_position": ("none", "nGPT has no norm layers: its normalizations to the unit sphere are part of the block"),
    "attn_norm_position": (None, "nGPT has no norm layers"),
    "mlp_norm_position": (None, "nGPT has no norm layers"),
    "residual": ("add", "nGPT's block has its own update h <- Norm(h + alpha (h_A - h))"),
    "parallel_block": (False, "nGPT's attention and MLP updates are sequential (the paper's block)"),
    "qk_norm": ("none", "nGPT normalizes q and k itself, times its s_qk"),
    "embedding_norm": (False, "nGPT's embeddings are normalized weights, not a norm layer"),
    "final_norm": ((None, False), "nGPT's last hidden state is already on the unit sphere"),
    "norm_depth_scaling": (False, "nGPT has no input norms to scale"),
    "mlp_type": ("gated", "nGPT's MLP is SwiGLU with its s_u, s_v scalings"),
    "tie_word_embeddings": (False, "the paper keeps E_input and E_output separate (NVIDIA/ngpt: no tying)"),
    "is_causal": (True, "nGPT is the paper's decoder-only LM; the masked-LM head has a norm layer and no s_z"),
    "is_encoder_decoder": (False, "nGPT is the paper's decoder-only LM"),
    "attention_bias": (False, "nGPT's matrices are normalized; a bias would move the outputs off their scale"),
    "mlp_bias": (False, "nGPT's matrices are normalized; a bias would move the outputs off their scale"),
    "lm_head_bias": (False, "nGPT's logits are s_z times cosine similarities"),
    "attention_multiplier": (None, "nGPT's softmax scale is sqrt(d_k), fixed by the paper (its q, k are unit vectors)"),
    "embedding_multiplier": (1.0, "nGPT's embeddings are unit vectors"),
    "branch_init": ("normal", "nGPT's matrices are normalized after init, so a branch init has no effect"),
    "branch_init_gain": (None, "nGPT's matrices are normalized after init, so a branch init has no effect"),
    "value_residual": ("none", "nGPT's attention is the paper's, with no value mixing"),
    "layer_drop": (0.0, "nGPT's update moves along the sphere; the paper has no stochastic depth"),
    "unet_skips": (False, "adding block outputs onto the unit-norm stream is not in the paper"),
}
NGPT_POSITION_EMBEDDINGS: tuple[str, ...] = ("rope", "none")  # learned positions would add an un-normalized vector
VALUE_RESIDUALS: tuple[str, ...] = ("none", "fixed", "learned", "per_token")  # issue 15: ResFormer, 2410.17897
LAYER_DROP_SCHEDULES: tuple[str, ...] = ("linear", "uniform")  # issue 15: Huang et al. 1603.09382; Fan et al. 1909.11556
PROBLEM_TYPES: tuple[str, ...] = ("regression", "single_label_classification", "multi_label_classification")

# Keys transformers' own code acts on when a config carries them, for features SkipNorm does not implement: left as
# silent attributes they change behaviour (DynamicCache reads sliding_window / layer_types and switches its layers
# to sliding windows while our attention stays full: cached generation then differs from the full forward).
UNIMPLEMENTED_KWARGS: dict[str, str] = {
    "sliding_window": "SkipNorm does not implement sliding-window attention (transformers' DynamicCache would read it)",
    "use_sliding_window": "SkipNorm does not implement sliding-window attention",
    "max_window_layers": "SkipNorm does not implement sliding-window attention",
    "layer_types": "SkipNorm does not implement per-layer attention types (transformers' DynamicCache would read it)",
    "attention_chunk_size": "SkipNorm does not implement chunked attention (transformers' DynamicCache would read it)",
    "kv_sharing_modes": "SkipNorm does not implement shared key/value layers (transformers' DynamicCache would read it)",
    "num_kv_shared_layers": "SkipNorm does not implement shared key/value layers",
    "per_layer_config": "SkipNorm does not implement heterogeneous per-layer configs",
}
# Keyword arguments transformers' PreTrainedConfig consumes that are not dataclass fields (never "unknown").
TRANSFORMERS_KWARGS: frozenset[str] = frozenset({
    "num_labels", "torch_dtype", "rope_theta", "rope_scaling", "attn_implementation", "experts_implementation",
    "name_or_path", "_name_or_path", "_commit_hash", "output_attentions", "auto_map", "transformers_version",
    "_attn_implementation_internal", "_experts_implementation_internal", "model_type",
})


def _is_default_rope(rope: Any) -> bool:
    """Whether `rope_parameters` is what every config carries by default (set by us or by transformers)."""
    return isinstance(rope, dict) and rope.get("rope_type", "default") == "default" and rope.get(
        "rope_theta", 10000.0) == 10000.0 and set(rope) <= {"rope_type", "rope_theta", "partial_rotary_factor"}


# --- Depth-dependent residual constants, as plain functions of the depth L (tests compare them with the papers). ---
def deepnet_alpha(num_layers: int) -> float:
    """DeepNet's skip constant for encoder-only or decoder-only models: ``alpha = (2L)^(1/4)`` (arXiv 2203.00555)."""
    return (2.0 * num_layers) ** 0.25


def deepnet_beta(num_layers: int) -> float:
    """DeepNet's branch-init gain for encoder-only or decoder-only models: ``beta = (8L)^(-1/4)`` (arXiv 2203.00555)."""
    return (8.0 * num_layers) ** -0.25


def deepnet_encoder_decoder_constants(encoder_layers: int, decoder_layers: int) -> dict[str, float]:
    """DeepNet's constants for an encoder-decoder with N encoder and M decoder layers (arXiv 2203.00555, the
    encoder-decoder row of its constants table): encoder ``alpha = 0.81 (N^4 M)^(1/16)``, ``beta = 0.87
    (N^4 M)^(-1/16)``; decoder ``alpha = (3M)^(1/4)``, ``beta = (12M)^(-1/4)``. (The paper's text was not reachable
    offline when this was written; the values are issue 16's quotation of the table, and torchscale's alphas and
    decoder beta agree with them.)

    torchscale's code (``torchscale/architecture/encoder.py``) writes the encoder's init as a *division* of the
    fairseq init by ``(N^4 M)^(1/16) / 1.15``, i.e. a multiplication by ``1.15 (N^4 M)^(-1/16)``, on top of fairseq's
    Xavier-uniform with gain ``1/sqrt(2)`` for ``v_proj`` (so ``~0.81 (N^4 M)^(-1/16)`` there and ``1.15 ...`` on the
    FFN and ``out_proj``); its decoder divides by ``(12M)^(1/4)``, matching the paper. We follow the paper's table (one
    Xavier-normal gain ``beta`` on v_proj, o_proj and the MLP, as the decoder-only DeepNorm here does): it is what the
    paper derives and states, and the same rule then serves all three sublayers of the decoder.
    """
    n, m = float(encoder_layers), float(decoder_layers)
    return {
        "encoder_alpha": 0.81 * (n**4 * m) ** (1.0 / 16.0),
        "encoder_beta": 0.87 * (n**4 * m) ** (-1.0 / 16.0),
        "decoder_alpha": (3.0 * m) ** 0.25,
        "decoder_beta": (12.0 * m) ** -0.25,
    }


def cait_layerscale_init(num_layers: int) -> float:
    """CaiT's LayerScale init by depth (arXiv 2103.17239, Sec. 3.1): 0.1 up to 18 blocks, 1e-5 up to 24, 1e-6 beyond."""
    if num_layers <= 18:
        return 0.1
    if num_layers <= 24:
        return 1e-5
    return 1e-6


_choice_error = choice_error  # the names earlier modules and branches use


def _check_choice(field: str, value: Any, choices: tuple[str, ...]) -> None:
    Choice(choices).check(field, value, None, "")


# --- Structured fields: one function each, used as `Check` rows below. ---
def _transformers_activations() -> tuple[str, ...]:
    """transformers' ACT2FN keys, the names `hidden_act` is looked up in (read lazily: that module imports torch)."""
    try:
        from transformers.activations import ACT2FN
    except ImportError:  # no torch: nothing can build the model, so nothing to check the name against
        return ()
    return tuple(sorted(ACT2FN))


def _check_hidden_act(name: str, value: Any, config: Any) -> None:
    choices = _transformers_activations()
    if not choices or (isinstance(value, str) and value in choices):
        return
    hint = ""
    if isinstance(value, str) and value.lower().endswith("glu") and value.lower() != "glu":
        # A GLU is a gate, not an activation (Shazeer 2020, arXiv 2002.05202): SwiGLU = gated MLP with SiLU.
        act = {"swi": "silu", "ge": "gelu", "re": "relu"}.get(value.lower()[:-3], value.lower()[:-3])
        hint = (f"a GLU is the gate, not the activation: {value!r} is mlp_type='gated' with hidden_act={act!r}"
                if act in choices else "a GLU is the gate, set by mlp_type='gated'")
    raise choice_error(name, value, choices, hint or "the names of transformers' ACT2FN")


def _refuse_unbuilt_position(name: str, value: str) -> None:
    """A placement from `REFUSED_NORM_POSITIONS` is refused with its reason, not as an unknown name."""
    if value in REFUSED_NORM_POSITIONS:
        raise choice_error(name, value, NORM_POSITIONS, REFUSED_NORM_POSITIONS[value])


def _check_positions(name: str, value: Any, config: Any) -> None:
    """A placement string, or a list with one placement per layer; the per-sublayer overrides may be None."""
    if value is None and name != "norm_position":
        return
    if isinstance(value, str):
        _refuse_unbuilt_position(name, value)
        Choice(NORM_POSITIONS).check(name, value, config, "")
        return
    if not isinstance(value, list):
        raise choice_error(name, value, NORM_POSITIONS, "expected a string or a list with one string per layer")
    if len(value) != config.num_hidden_layers:
        raise ValueError(
            f"SkipNormConfig.{name}={value!r} is not valid: a per-layer list needs one value per layer "
            f"(num_hidden_layers={config.num_hidden_layers}, got {len(value)}); valid choices per entry: "
            f"{', '.join(NORM_POSITIONS)}"
        )
    for index, entry in enumerate(value):
        if isinstance(entry, str):
            _refuse_unbuilt_position(f"{name}[{index}]", entry)
        if not isinstance(entry, str) or entry not in NORM_POSITIONS:
            raise choice_error(f"{name}[{index}]", entry, NORM_POSITIONS)
        if entry in WHOLE_STACK_PLACEMENTS:
            raise ValueError(
                f"SkipNormConfig.{name}[{index}]={entry!r} is not valid: {entry!r} describes a whole stack "
                f"(set norm_position={entry!r}); inside a per-layer list use the placements it resolves "
                f"to. Whole-stack values: {', '.join(WHOLE_STACK_PLACEMENTS)}"
            )


def _check_token_id(name: str, value: Any, config: Any) -> None:
    """None or an index into the vocabulary; `eos_token_id` may be a list of them (several stop tokens)."""
    values = value if isinstance(value, list) and name == "eos_token_id" else [value]
    for entry in values:
        if entry is None and not isinstance(value, list):
            continue
        if isinstance(entry, bool) or not isinstance(entry, int) or not 0 <= entry < config.vocab_size:
            expected = f"None or an integer in [0, vocab_size={config.vocab_size})"
            raise refuse(name, value, expected + (" or a list of such" if name == "eos_token_id" else ""),
                         "a token id indexes the embedding and the logits")


def _rope_types() -> tuple[str, ...]:
    """"default" plus transformers' ROPE_INIT_FUNCTIONS keys, which the rotary embedding uses (read lazily: torch)."""
    try:
        from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS
    except ImportError:
        return ("default",)
    return ("default",) + tuple(sorted(ROPE_INIT_FUNCTIONS))


def _check_rope_parameters(name: str, value: Any, config: Any) -> None:
    """With RoPE: a dict naming a known rope_type and a finite rope_theta > 0. Without RoPE: None (nothing reads it)."""
    if config.position_embedding != "rope":
        if value is not None:
            raise ValueError(
                f"SkipNormConfig.rope_parameters={value!r} is not valid with position_embedding="
                f"{config.position_embedding!r}: only RoPE reads it, so it would be ignored; valid choices: None, or "
                f"position_embedding='rope'"
            )
        return
    if not isinstance(value, dict):
        raise refuse(name, value, "a dict such as {'rope_type': 'default', 'rope_theta': 10000.0}")
    Choice(_rope_types()).check(f"{name}['rope_type']", value.get("rope_type"), config, "")
    Float(0.0, FLOAT32_MAX, open_low=True).check(f"{name}['rope_theta']", value.get("rope_theta"), config,
                                                 "the RoPE base; angles are positions / theta^(2i/d)")
    for key, entry in value.items():  # factors, frequencies, lengths: finite numbers (longrope: lists of them)
        entries = entry if isinstance(entry, list) else [entry]
        if key not in ("rope_type", "type") and not all(
                entry is None or isinstance(e, bool) or (_is_number(e) and math.isfinite(e)) for e in entries):
            raise refuse(f"{name}[{key!r}]", entry, "a finite number (or a list of them)", "a RoPE scaling parameter")
    if value.get("partial_rotary_factor", config.partial_rotary_factor) != config.partial_rotary_factor:
        raise ValueError(
            f"SkipNormConfig.rope_parameters['partial_rotary_factor']={value['partial_rotary_factor']!r} is not valid "
            f"with partial_rotary_factor={config.partial_rotary_factor!r}: the rotary embedding reads the field; "
            f"give one value"
        )


def _check_admin_omegas(name: str, value: Any, config: Any) -> None:
    if value is None:
        return
    expected = 2 * config.num_hidden_layers
    if not isinstance(value, list) or len(value) != expected or any(
            not _is_number(w) or not math.isfinite(w) or not 0 < w <= FLOAT16_MAX for w in value):
        raise ValueError(
            f"SkipNormConfig.{name}={value!r} is not valid; expected None or a list of {expected} finite floats > 0 "
            f"(one per sublayer: 2 * num_hidden_layers={config.num_hidden_layers})"
        )


_FLOAT_DTYPES = ("float16", "bfloat16", "float32", "float64")


def _check_dtype(name: str, value: Any, config: Any) -> None:
    """transformers' `dtype`: None, a floating dtype name, or that torch.dtype (checked by name: no torch import)."""
    if value is None:
        return
    label = value if isinstance(value, str) else str(value).removeprefix("torch.")
    if isinstance(value, str) or (type(value).__module__ == "torch" and type(value).__name__ == "dtype"):
        if label in _FLOAT_DTYPES:
            return
    raise choice_error(name, value, _FLOAT_DTYPES + ("None",), "the dtype the weights are stored and loaded in")


def _check_labels(name: str, value: Any, config: Any) -> None:
    ids = value if name == "id2label" and isinstance(value, dict) else {}
    if (value is not None and not isinstance(value, dict)) or not all(
            (isinstance(k, int) and not isinstance(k, bool)) or (isinstance(k, str) and k.isdigit()) for k in ids):
        raise refuse(name, value, "None or a dict (id2label: {0: 'NEG', 1: 'POS'}, integer keys; label2id the inverse)")


def _check_str_list(name: str, value: Any, config: Any) -> None:
    if value is not None and (not isinstance(value, list) or not all(isinstance(v, str) for v in value)):
        raise refuse(name, value, "None or a list of class names")


def _check_decoder_overrides(name: str, value: Any, config: Any) -> None:
    """None or a dict whose keys are per-stack fields (`DECODER_OVERRIDE_FIELDS`); the values are checked by the
    decoder's own config (`stack_config("decoder")`, rule `encoder_decoder_stacks_are_valid_configs`)."""
    if value is None:
        return
    if not isinstance(value, dict):
        raise refuse(name, value, f"None or a dict of per-stack fields ({', '.join(DECODER_OVERRIDE_FIELDS)})")
    unknown = sorted(set(value) - set(DECODER_OVERRIDE_FIELDS))
    if unknown:
        raise ValueError(
            f"SkipNormConfig.decoder_overrides has {unknown}, which are not valid: the stacks share everything but "
            f"the three axes and their constants; valid keys: {', '.join(DECODER_OVERRIDE_FIELDS)}"
        )


def _check_version(name: str, value: Any, config: Any) -> None:
    if value is not None and not isinstance(value, str):
        raise refuse(name, value, "None or a version string such as '5.24.0'")


# Sizes are bounded so that a typo (10**12) fails here, before a loop over layers or an allocation hangs; each bound
# leaves a wide margin over the largest published model.
MAX_LAYERS = 10_000  # DeepNet trains 1,000 layers (arXiv 2203.00555); validation loops over layers
MAX_WIDTH = 2**16  # PaLM 540B: d = 18,432 (arXiv 2204.02311)
MAX_VOCAB = 2**24  # Gemma 3: 262,144 tokens
MAX_POSITIONS = 2**24  # Llama 4 Scout: 10M context
MAX_SINKHORN_ITERS = 1_000  # mHC uses t_max = 20 (arXiv 2512.24880); every forward runs them all
MAX_STREAMS = 64  # hyper-connections use n = 2..8 (arXiv 2409.19606); the streams multiply activation memory


def _check_divisor_of_width(name: str, value: Any, config: Any) -> None:
    """`laurel_rank` / `frac_rate`: an integer >= 1; where its residual uses it, at most hidden_size (a rank of a
    d x d map) or a divisor of it (a number of equal fractions of d)."""
    fractions = name == "frac_rate"
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise refuse(name, value, "an integer >= 1")
    if config.residual != ("frac" if fractions else "laurel") or (not fractions and config.laurel_variant == "rw"):
        return  # bounded by the width only where it is used: a field of an unused residual must not refuse a model
    d = config.hidden_size
    if not value <= d or (fractions and d % value):
        what = ("an integer >= 1 that divides hidden_size={d} (Frac-Connections split the hidden state into that many "
                "equal fractions)" if fractions else "an integer in [1, hidden_size={d}] (the rank r of LAuReL-LR's B A)")
        raise refuse(name, value, what.format(d=d))


# Multipliers and init gains are applied in the activation dtype: float16's largest finite value bounds them.
_SCALE = "a constant multiplied into activations or weights, so it must stay finite in float16 (max 65504)"
_POSITIVE_SCALE = Float(0.0, FLOAT16_MAX, open_low=True)
_OPT_POSITIVE_SCALE = Float(0.0, FLOAT16_MAX, open_low=True, optional=True)
_SOFTCAP = Float(FLOAT16_TINY, FLOAT32_MAX, optional=True)
_SOFTCAP_WHY = ("c * tanh(x / c) divides by c: below float16's smallest normal (6.1e-05) c flushes to 0 and the "
                "logits become NaN")

# ================================================================================================== THE FIELD TABLE
# One row per field: Field(name, kind and range, why the range, citation). Read by config_fields_skipnorm.validate,
# in this order (a row may read fields of earlier rows: the token ids read vocab_size). To add a field: declare it on
# SkipNormConfig with its docstring line, then add its row here (see config_fields_skipnorm's docstring).
FIELDS: tuple[Field, ...] = (
    # --- sizes (bounded first: the rules below loop over layers) ---
    Field("vocab_size", Int(1, MAX_VOCAB), "embedding rows", "LlamaConfig"),
    Field("hidden_size", Int(1, MAX_WIDTH), "the residual stream width", "LlamaConfig"),
    Field("num_hidden_layers", Int(1, MAX_LAYERS), "blocks; validation loops over them", "LlamaConfig"),
    Field("num_attention_heads", Int(1, MAX_WIDTH), "query heads", "LlamaConfig"),
    Field("num_key_value_heads", Int(1, MAX_WIDTH), "key/value heads", "GQA, arXiv 2305.13245"),
    Field("head_dim", Int(1, MAX_WIDTH), "hidden_size must be divisible by num_attention_heads, or set head_dim",
          "LlamaConfig"),
    Field("intermediate_size", Int(1, 8 * MAX_WIDTH), "the MLP width", "LlamaConfig"),
    Field("max_position_embeddings", Int(1, MAX_POSITIONS), "the longest sequence", "LlamaConfig"),
    Field("type_vocab_size", Int(0, 2**16), "token types; 0 = no token-type embedding", "BERT, arXiv 1810.04805"),
    # --- transformers-standard values ---
    Field("hidden_act", Check(_check_hidden_act), "looked up in transformers' ACT2FN", "transformers.activations"),
    Field("initializer_range", Float(0.0, 1.0), "an init std; published ones are 0.02 and below", "GPT-2, BERT"),
    Field("use_cache", Bool(), "", "transformers"),
    Field("tie_word_embeddings", Bool(), "", "transformers"),
    Field("attention_bias", Bool(), "", "LlamaConfig"),
    Field("mlp_bias", Bool(), "", "LlamaConfig"),
    Field("attention_dropout", Float(0.0, 1.0, open_high=True), "a drop probability", "LlamaConfig"),
    Field("hidden_dropout", Float(0.0, 1.0, open_high=True), "a drop probability", "BERT"),
    Field("pad_token_id", Check(_check_token_id), "", "transformers"),
    Field("bos_token_id", Check(_check_token_id), "", "transformers"),
    Field("eos_token_id", Check(_check_token_id), "", "transformers"),
    # --- architecture ---
    Field("position_embedding", Choice(POSITION_EMBEDDINGS + SEQ2SEQ_POSITION_EMBEDDINGS), "",
          "RoFormer arXiv 2104.09864; GPT-2; NoPE; Vaswani 2017; fairseq; T5 arXiv 1910.10683"),
    Field("rope_parameters", Check(_check_rope_parameters), "", "transformers' RoPE utilities"),
    Field("partial_rotary_factor", Float(0.0, 1.0, open_low=True), "a fraction of each head's dims", "GPT-NeoX"),
    Field("mlp_type", Choice(MLP_TYPES), "", "arXiv 2002.05202"),
    Field("is_causal", Bool(), "", "transformers"),
    Field("classifier_pooling", Choice(CLASSIFIER_POOLINGS, optional=True), "", "transformers heads"),
    Field("embedding_multiplier", _POSITIVE_SCALE, _SCALE, "Gemma: sqrt(hidden_size)"),
    Field("attention_multiplier", _OPT_POSITIVE_SCALE, _SCALE, "Vaswani 2017; Gemma 2"),
    Field("attn_logit_softcapping", _SOFTCAP, _SOFTCAP_WHY, "Gemma 2, arXiv 2408.00118"),
    Field("final_logit_softcapping", _SOFTCAP, _SOFTCAP_WHY, "Gemma 2, arXiv 2408.00118"),
    Field("lm_head_bias", Bool(), "", "Phi"),
    # --- the three axes ---
    Field("mix_ratio", Float(0.0, 1.0), "a fraction of the layers", "Mix-LN, arXiv 2412.13795"),
    Field("norm_position", Check(_check_positions), "", "see the docstring"),
    Field("attn_norm_position", Check(_check_positions), "", "see the docstring"),
    Field("mlp_norm_position", Check(_check_positions), "", "see the docstring"),
    Field("norm_type", Choice(NORM_TYPES), "", "see the docstring"),
    Field("norm_eps", Float(0.0, 1.0), "a floor under a variance or norm", "LLaMA 1e-6, BERT 1e-12"),
    Field("norm_bias", Bool(), "", "OLMo"),
    Field("norm_unit_offset", Bool(), "", "Gemma"),
    Field("residual", Choice(RESIDUALS), "", "see the docstring"),
    Field("residual_alpha", Float(-FLOAT16_MAX, FLOAT16_MAX, optional=True), _SCALE, "Granite; DeepNet"),
    Field("branch_multiplier", Float(-FLOAT16_MAX, FLOAT16_MAX), _SCALE, "MiniCPM"),
    Field("embedding_norm", Bool(), "", "BERT; Peri-LN arXiv 2502.02732"),
    Field("final_norm", Bool(optional=True), "", "see the docstring"),
    Field("branch_init", Choice(BRANCH_INITS), "", "GPT-2; SkipInit arXiv 2002.10444"),
    # --- the norm catalogue ---
    Field("qk_norm", Choice(QK_NORMS), "", "Qwen3; OLMo 2 arXiv 2501.00656"),
    Field("norm_depth_scaling", Bool(), "", "arXiv 2502.05795"),
    Field("parallel_block", Bool(), "", "GPT-J, PaLM"),
    Field("parallel_shared_norm", Bool(), "", "GPT-J"),
    Field("dyt_alpha_init", _POSITIVE_SCALE, _SCALE, "DyT, arXiv 2503.10622"),
    Field("dyt_attn_alpha_init", _OPT_POSITIVE_SCALE, _SCALE, "DyT, arXiv 2503.10622"),
    Field("derf_alpha_init", _POSITIVE_SCALE, _SCALE, "Derf, arXiv 2512.10938"),
    # --- the residual catalogue ---
    Field("branch_init_gain", _OPT_POSITIVE_SCALE, _SCALE, "DeepNet, arXiv 2203.00555"),
    Field("admin_omegas", Check(_check_admin_omegas), "", "Admin, arXiv 2004.08249"),
    Field("layerscale_init", _OPT_POSITIVE_SCALE, _SCALE, "CaiT, arXiv 2103.17239"),
    Field("residual_streams", Int(1, MAX_STREAMS), "streams multiply activation memory", "arXiv 2409.19606"),
    Field("hyper_dynamic", Bool(), "", "arXiv 2409.19606"),
    Field("sinkhorn_iters", Int(1, MAX_SINKHORN_ITERS), "every forward runs them all; the paper uses 20",
          "mHC, arXiv 2512.24880"),
    # --- the residual frontier (issue 15) ---
    Field("orthogonal_eps", Float(0.0, 1.0, open_low=True), "a floor under <x, x> so a zero stream projects nothing",
          "Orthogonal Residual Update, arXiv 2505.11881 (reference code 1e-6)"),
    Field("laurel_variant", Choice(LAUREL_VARIANTS), "", "LAuReL, arXiv 2411.07501"),
    Field("laurel_rank", Check(_check_divisor_of_width), "", "LAuReL-LR, arXiv 2411.07501"),
    Field("laurel_rw_weights", Choice(LAUREL_RW_WEIGHTS), "", "LAuReL-RW, arXiv 2411.07501, Sec. 2.1"),
    Field("laurel_pa_activations", Int(1, MAX_STREAMS), "each one is a (B, T, C) tensor carried in the block state",
          "LAuReL-PA's k, arXiv 2411.07501, Sec. 2.3 (the paper's ablation: 3)"),
    Field("frac_rate", Check(_check_divisor_of_width), "", "Frac-Connections, arXiv 2503.14125"),
    Field("architecture", Choice(ARCHITECTURES), "", "nGPT, arXiv 2410.01131"),
    Field("ngpt_alpha_init", _POSITIVE_SCALE, _SCALE, "nGPT, arXiv 2410.01131 (0.05)"),
    Field("stream_recompute", Bool(), "trades a second run of the stream mixing for its saved activations",
          "mHC, arXiv 2512.24880, Sec. 4.3"),
    # --- issue 15: the depth-mixing frontier ---
    Field("attn_res_blocks", Int(1, MAX_LAYERS, optional=True), "None: Full AttnRes; N blocks of L/N layers",
          "Attention Residuals, arXiv 2603.15031"),
    Field("value_residual", Choice(VALUE_RESIDUALS), "", "ResFormer, arXiv 2410.17897"),
    Field("value_residual_lambda", Float(-FLOAT16_MAX, FLOAT16_MAX), _SCALE, "ResFormer's 0.5, arXiv 2410.17897"),
    Field("unet_skips", Bool(), "", "modded-nanogpt"),
    Field("layer_drop", Float(0.0, 1.0, open_high=True), "a drop probability",
          "stochastic depth arXiv 1603.09382; LayerDrop arXiv 1909.11556"),
    Field("layer_drop_schedule", Choice(LAYER_DROP_SCHEDULES), "", "arXiv 1603.09382; arXiv 1909.11556"),
    Field("dense_dilation", Int(1, MAX_LAYERS), "DWA reads every k-th block output", "DenseFormer, arXiv 2402.02622"),
    Field("dense_period", Int(1, MAX_LAYERS), "a DWA after every p-th block", "DenseFormer, arXiv 2402.02622"),
    # --- fields of transformers' PreTrainedConfig that its code reads from ours ---
    Field("output_attentions", Bool(), "", "transformers"),
    Field("output_hidden_states", Bool(optional=True), "", "transformers"),
    Field("return_dict", Bool(optional=True), "", "transformers"),
    Field("dtype", Check(_check_dtype), "", "transformers"),
    Field("chunk_size_feed_forward", Int(0, 0), "feed-forward chunking is not implemented", "transformers"),
    Field("is_encoder_decoder", Bool(), "", "transformers"),
    Field("id2label", Check(_check_labels), "", "transformers"),
    Field("label2id", Check(_check_labels), "", "transformers"),
    Field("problem_type", Choice(PROBLEM_TYPES, optional=True), "", "transformers"),
    Field("architectures", Check(_check_str_list), "", "transformers"),
    # --- encoder-decoder (issue 16) ---
    Field("decoder_layers", Int(1, MAX_LAYERS, optional=True), "decoder blocks; validation loops over them",
          "BART's name; T5's num_decoder_layers"),
    Field("decoder_overrides", Check(_check_decoder_overrides), "", "see the docstring"),
    Field("decoder_start_token_id", Check(_check_token_id), "", "transformers seq2seq"),
    Field("position_offset", Int(0, MAX_POSITIONS), "added to position ids before the lookup",
          "BART's 2; fairseq's pad + 1"),
    Field("relative_attention_num_buckets", Int(2, 2**16), "T5 halves them, twice", "T5, arXiv 1910.10683"),
    Field("relative_attention_max_distance", Int(2, MAX_POSITIONS), "the log-spaced buckets end here",
          "T5, arXiv 1910.10683"),
    Field("lm_head_multiplier", _POSITIVE_SCALE, _SCALE, "T5 (tied): d_model**-0.5"),
    Field("final_logits_bias", Bool(), "", "BART, Marian, mBART"),
    Field("encoder_decoder_stack", Choice(ENCODER_DECODER_STACKS, optional=True), "set by stack_config only",
          "this package"),
    Field("transformers_version", Check(_check_version), "", "transformers"),
)


def layers_of(config: Any) -> list[tuple[str, str]]:
    """(attention, MLP) placement of every layer, resolved; only called after num_hidden_layers is bounded."""
    return [config.layer_norm_positions(i) for i in range(config.num_hidden_layers)]


# ================================================================================================== CROSS-FIELD RULES
# One function per rule, registered with @rule and run in this order after every row passed. Each raises a ValueError
# naming every field involved, their values and the valid choices. To add one, write it beside its siblings here.

# --- attention shape ---
@rule
def kv_heads_divide_heads(c: Any, layers: list) -> None:
    if c.num_attention_heads % c.num_key_value_heads != 0:
        raise ValueError(
            f"SkipNormConfig.num_key_value_heads={c.num_key_value_heads} is not valid; it must divide "
            f"num_attention_heads={c.num_attention_heads}"
        )


@rule
def rope_rotates_an_even_number_of_dims(c: Any, layers: list) -> None:
    if c.position_embedding == "rope":
        rotary_dim = int(c.head_dim * c.partial_rotary_factor)
        if rotary_dim % 2 != 0 or rotary_dim == 0:
            raise ValueError(
                f"SkipNormConfig.partial_rotary_factor={c.partial_rotary_factor!r} is not valid with "
                f"head_dim={c.head_dim}: RoPE needs an even, non-zero number of rotated dims (got {rotary_dim})"
            )


# --- the norm vocabulary (NORM_TYPES, UNIT_OFFSET_NORM_TYPES) ---
# Norms that divide by a statistic of their input: with norm_eps=0, an all-zero input (a zero padding embedding,
# a rezero branch at init) is 0/0. DyT and Derf have no statistic; "none" is the identity.
NORM_TYPES_DIVIDING: tuple[str, ...] = ("layernorm", "rmsnorm", "scalenorm", "simple_rmsnorm")


@rule
def norm_eps_positive_where_norms_divide(c: Any, layers: list) -> None:
    if c.norm_eps == 0 and c.norm_type in NORM_TYPES_DIVIDING:
        raise ValueError(
            f"SkipNormConfig.norm_eps=0 is not valid with norm_type={c.norm_type!r}: it divides by a statistic of "
            f"its input, and an all-zero input (a zero padding embedding) gives 0/0 = NaN; expected norm_eps > 0 "
            f"(LLaMA 1e-6), or a norm type without a statistic: dyt, derf, none"
        )


@rule
def unit_offset_needs_a_gain(c: Any, layers: list) -> None:
    if c.norm_unit_offset and c.norm_type not in UNIT_OFFSET_NORM_TYPES:
        raise ValueError(
            f"SkipNormConfig.norm_unit_offset=True is not valid with norm_type={c.norm_type!r}: it has no "
            f"per-channel gain to store as 1 + w; norm types with one: {', '.join(UNIT_OFFSET_NORM_TYPES)}"
        )


# --- placements (PLACEMENT_SLOTS, WHOLE_STACK_PLACEMENTS, BLOCK_PLACEMENTS) ---
@rule
def whole_stack_placements_fix_both_sublayers(c: Any, layers: list) -> None:
    overrides = {f: getattr(c, f) for f in ("attn_norm_position", "mlp_norm_position") if getattr(c, f) is not None}
    for field, value in overrides.items():
        if value in WHOLE_STACK_PLACEMENTS:
            raise ValueError(
                f"SkipNormConfig.{field}={value!r} is not valid: {value!r} describes a whole stack, both sublayers; "
                f"set norm_position={value!r} and leave the per-sublayer overrides None"
            )
    if c.norm_position in WHOLE_STACK_PLACEMENTS and overrides:
        raise ValueError(
            f"SkipNormConfig.norm_position={c.norm_position!r} is not valid with per-sublayer overrides "
            f"{overrides!r}: it fixes both sublayers of every block; leave attn_norm_position/mlp_norm_position None"
        )


@rule
def rewired_blocks_keep_both_sublayers_and_plain_sums(c: Any, layers: list) -> None:
    for layer, (attn, mlp) in enumerate(layers):
        if (attn in BLOCK_PLACEMENTS or mlp in BLOCK_PLACEMENTS) and attn != mlp:
            raise ValueError(
                f"SkipNormConfig.norm_position: block {layer} mixes {attn!r} (attention) with {mlp!r} (MLP), which is "
                f"not valid: {', '.join(BLOCK_PLACEMENTS)} wire both sublayers of a block together"
            )
    rewired = {position for pair in layers for position in pair} & set(BLOCK_PLACEMENTS)
    if rewired and c.residual != "add":
        raise ValueError(
            f"SkipNormConfig.residual={c.residual!r} is not valid with norm_position using {sorted(rewired)}: "
            f"B2T and ResiDual define their own skip paths as plain sums; valid choices: add"
        )
    if c.norm_position == "resi_dual" and c.final_norm:
        raise ValueError(
            "SkipNormConfig.final_norm=True is not valid with norm_position='resi_dual': the output x_L + N(d_L) "
            "already ends with ResiDual's own norm; valid choices: None or False"
        )


@rule
def hybrid_norm_already_normalizes_qk(c: Any, layers: list) -> None:
    if c.qk_norm != "none" and any(PLACEMENT_SLOTS[attn][0].qkv for attn, _ in layers):
        raise ValueError(
            f"SkipNormConfig.qk_norm={c.qk_norm!r} is not valid with a HybridNorm placement "
            f"(norm_position={c.norm_position!r}): HybridNorm already normalizes Q, K and V per head; "
            f"valid choices: none"
        )


@rule
def parallel_block_has_one_skip(c: Any, layers: list) -> None:
    if c.parallel_shared_norm and not c.parallel_block:
        raise ValueError(
            "SkipNormConfig.parallel_shared_norm=True is not valid with parallel_block=False: there is no second "
            "branch to share the input norm with; set parallel_block=True"
        )
    if not c.parallel_block:
        return
    valid = [p for p, slots in PLACEMENT_SLOTS.items()
             if slots and not slots[0].post and not slots[1].post and p not in BLOCK_PLACEMENTS]
    for layer, (attn, mlp) in enumerate(layers):
        bad = [p for p in (attn, mlp) if p in BLOCK_PLACEMENTS or PLACEMENT_SLOTS[p][0].post or PLACEMENT_SLOTS[p][1].post]
        if bad:
            raise ValueError(
                f"SkipNormConfig.parallel_block=True is not valid with placement {bad[0]!r} (block {layer}): a "
                f"parallel block sums both branches onto one skip, so a norm after each sublayer's skip "
                f"(post, pre_post, mix's post blocks, hybrid, b2t, resi_dual) has no place; valid placements: "
                f"{', '.join(valid)}"
            )
        if c.parallel_shared_norm and PLACEMENT_SLOTS[attn][0].pre != PLACEMENT_SLOTS[mlp][1].pre:
            raise ValueError(
                f"SkipNormConfig.parallel_shared_norm=True is not valid with block {layer}'s placements "
                f"{attn!r} / {mlp!r}: one has an input norm and the other not, so there is nothing to share"
            )
    if c.residual not in PARALLEL_RESIDUALS:
        raise ValueError(
            f"SkipNormConfig.residual={c.residual!r} is not valid with parallel_block=True: a parallel block "
            f"combines one skip with the sum of both branches; valid choices: "
            f"{', '.join(r for r in PARALLEL_RESIDUALS if r in RESIDUALS)}"
        )


@rule
def depth_scaling_needs_input_norms(c: Any, layers: list) -> None:
    if not c.norm_depth_scaling:
        return
    has_input_norm = any(PLACEMENT_SLOTS[attn][0].pre or PLACEMENT_SLOTS[mlp][1].pre for attn, mlp in layers)
    if not has_input_norm or c.norm_type == "none":
        raise ValueError(
            f"SkipNormConfig.norm_depth_scaling=True is not valid with norm_position={c.norm_position!r}, "
            f"norm_type={c.norm_type!r}: LayerNorm Scaling scales the output of input norms N_in, and this "
            f"model has none; use a placement with an input norm (pre, sandwich, peri, subln, normformer, mix)"
        )
    if c.branch_init == "scaled_depth":
        raise ValueError(
            "SkipNormConfig.branch_init='scaled_depth' is not valid with norm_depth_scaling=True: LayerNorm "
            "Scaling (arXiv 2502.05795) replaces depth-scaled init, which would shrink deep branches twice; "
            "valid choices: normal, zero"
        )


# --- residuals (RESIDUALS, POST_LN_RESIDUALS, STREAM_RESIDUALS) ---
@rule
def one_branch_init_rescaling(c: Any, layers: list) -> None:
    if "subln" in {p for pair in layers for p in pair} and c.residual == "deepnorm":
        raise ValueError(
            "SkipNormConfig.residual='deepnorm' is not valid with norm_position 'subln': DeepNet and Magneto both "
            "rescale the init of the same branch weights (beta vs gamma); pick one"
        )
    if c.branch_init_gain is not None and c.branch_init != "normal":
        raise ValueError(
            f"SkipNormConfig.branch_init={c.branch_init!r} is not valid with branch_init_gain="
            f"{c.branch_init_gain!r}: both set the init of the branch output projections; valid choices: normal"
        )


@rule
def admin_omegas_only_for_admin(c: Any, layers: list) -> None:
    if c.admin_omegas is not None and c.residual != "admin":
        raise ValueError(
            f"SkipNormConfig.admin_omegas is not valid with residual={c.residual!r}: only Admin uses them; "
            f"valid choices: residual='admin' or admin_omegas=None"
        )


@rule
def post_ln_residuals_need_post_ln(c: Any, layers: list) -> None:
    if c.residual in POST_LN_RESIDUALS:
        off = sorted({p for pair in layers for p in pair} - {"post"})
        if off:
            raise ValueError(
                f"SkipNormConfig.residual={c.residual!r} is not valid with placements {off}: its formula "
                f"N(w*x + F(x)) and its constants are for post-LN; valid choices: norm_position='post' (no "
                f"per-sublayer overrides)"
            )


@rule
def stream_recompute_needs_stream_mixing(c: Any, layers: list) -> None:
    if c.stream_recompute and c.residual not in ("hyper", "mhc"):
        raise ValueError(
            f"SkipNormConfig.stream_recompute=True is not valid with residual={c.residual!r}: it recomputes the "
            f"stream mixing of hyper-connections; valid choices: residual='hyper' or 'mhc', or stream_recompute=False"
        )


@rule
def laurel_pa_needs_the_sequential_block(c: Any, layers: list) -> None:
    """LAuReL-PA carries the last k sublayer outputs in the block state (`SkipNormLaurelPABlock`): only the sequential
    attention -> MLP block has that state (b2t and resi_dual already refuse every residual but `add`)."""
    if c.residual != "laurel" or c.laurel_variant != "pa":
        return
    clashes = [(f"parallel_block={c.parallel_block}", c.parallel_block),
               (f"unet_skips={c.unet_skips}", c.unet_skips),
               ("an encoder-decoder (its stacks are not built around that state)",
                c.is_encoder_decoder or c.encoder_decoder_stack is not None)]
    for what, clash in clashes:
        if clash:
            raise ValueError(
                f"SkipNormConfig.laurel_variant='pa' is not valid with {what}: LAuReL-PA (arXiv 2411.07501, Eq. 4) "
                f"adds the previous sublayers' outputs x_(i-j), which its sequential block carries as a stream "
                f"state; valid choices: laurel_variant rw, lr or rw_lr, or the sequential block on one stream"
            )


def first_post_norm(layers: list) -> tuple[int, str] | None:
    """(block, placement) of the first sublayer whose placement puts a norm after its skip, or None: what the
    residuals that replace the skip sum (hyper-connections, mHC, AttnRes, Frac) cannot have."""
    for layer, (attn, mlp) in enumerate(layers):
        for placement, sublayer in ((attn, 0), (mlp, 1)):
            if PLACEMENT_SLOTS[placement][sublayer].post:
                return layer, placement
    return None


@rule
def stream_residuals_need_the_sequential_block(c: Any, layers: list) -> None:
    if c.residual in STREAM_RESIDUALS and c.parallel_block:
        raise ValueError(
            f"SkipNormConfig.residual={c.residual!r} is not valid with parallel_block=True: its blocks wire "
            f"attention then MLP on a stream state; valid choices with a parallel block: add, none, scaled"
        )
    if c.residual in ("hyper", "mhc"):
        post = first_post_norm(layers)
        if post is not None:
            layer, placement = post
            raise ValueError(
                f"SkipNormConfig.norm_position={placement!r} (block {layer}) is not valid with residual="
                f"{c.residual!r}: hyper-connections mix several streams after each sublayer, so a norm "
                f"after the skip has no single stream to normalize; valid choices: placements without a "
                f"post norm, e.g. pre, sandwich, output, none"
            )


# --- issue 15: the depth-mixing frontier (attn_res, value_residual, unet_skips, layer_drop, DenseFormer k x p) ---
@rule
def attn_res_blocks_are_whole_layers_of_attn_res(c: Any, layers: list) -> None:
    blocks = c.attn_res_blocks
    if blocks is None:
        return
    if c.residual != "attn_res":
        raise ValueError(
            f"SkipNormConfig.attn_res_blocks={blocks!r} is not valid with residual={c.residual!r}: it sets the "
            f"blocks of Attention Residuals; valid choices: residual='attn_res' or attn_res_blocks=None"
        )
    if c.num_hidden_layers % blocks:
        raise ValueError(
            f"SkipNormConfig.attn_res_blocks={blocks!r} is not valid; expected None (Full AttnRes) or an integer "
            f"N >= 1 dividing num_hidden_layers={c.num_hidden_layers} (Block AttnRes: blocks of whole transformer "
            f"layers, as the reference code's block_size counts attention + MLP)"
        )


@rule
def attn_res_replaces_the_skip_sum(c: Any, layers: list) -> None:
    if c.residual != "attn_res":
        return
    post = first_post_norm(layers)
    if post is not None:
        layer, placement = post
        raise ValueError(
            f"SkipNormConfig.norm_position={placement!r} (block {layer}) is not valid with residual='attn_res': "
            f"Attention Residuals replace the skip sum by attention over depth, so a norm after the skip has no "
            f"sum to normalize (the paper builds on PreNorm); valid choices: placements without a post norm, "
            f"e.g. pre, sandwich, output, none"
        )


@rule
def value_residual_needs_later_layers(c: Any, layers: list) -> None:
    if c.value_residual != "none" and c.num_hidden_layers < 2:
        raise ValueError(
            f"SkipNormConfig.value_residual={c.value_residual!r} is not valid with num_hidden_layers="
            f"{c.num_hidden_layers}: it mixes the first layer's values into later layers, and there are none; "
            f"valid choices: none"
        )


@rule
def unet_skips_need_one_stream_and_two_halves(c: Any, layers: list) -> None:
    if not c.unet_skips:
        return
    if c.residual in STREAM_RESIDUALS or c.norm_position == "resi_dual":
        raise ValueError(
            f"SkipNormConfig.unet_skips=True is not valid with residual={c.residual!r}, norm_position="
            f"{c.norm_position!r}: U-Net skips add a block output onto one residual stream, and this stack carries "
            f"several (hyper, mhc, dense, attn_res, resi_dual); valid choices: unet_skips=False"
        )
    if c.num_hidden_layers < 2:
        raise ValueError(
            f"SkipNormConfig.unet_skips=True is not valid with num_hidden_layers={c.num_hidden_layers}: a U-Net "
            f"needs a first half to skip from; valid choices: unet_skips=False"
        )


@rule
def per_head_qk_gains_need_a_gain(c: Any, layers: list) -> None:
    if c.qk_norm == "per_head_gains" and c.norm_type not in ("rmsnorm", "layernorm"):
        raise ValueError(
            f"SkipNormConfig.qk_norm='per_head_gains' is not valid with norm_type={c.norm_type!r}: it gives each "
            f"head its own per-channel gain after the norm, which needs a norm with such a gain; valid norm types: "
            f"rmsnorm, layernorm"
        )


@rule
def dense_sparsity_only_for_dense(c: Any, layers: list) -> None:
    for name in ("dense_dilation", "dense_period"):
        value = getattr(c, name)
        if value != 1 and c.residual != "dense":
            raise ValueError(
                f"SkipNormConfig.{name}={value!r} is not valid with residual={c.residual!r}: it sparsifies "
                f"DenseFormer's depth-weighted averages; valid choices: residual='dense' or {name}=1"
            )


# --- the residual frontier (issue 15: ORTHOGONAL, LAUREL, FRAC, NGPT_REQUIRED_FIELDS) ---
@rule
def frac_connections_need_no_post_norm(c: Any, layers: list) -> None:
    if c.residual != "frac":
        return
    post = first_post_norm(layers)
    if post is not None:
        layer, placement = post
        raise ValueError(
            f"SkipNormConfig.norm_position={placement!r} (block {layer}) is not valid with residual='frac': "
            f"Frac-Connections, like hyper-connections, write the sublayer output back through their depth "
            f"connection, leaving no sum for a norm after the skip; valid choices: placements without a post "
            f"norm, e.g. pre, sandwich, output, none"
        )


@rule
def ngpt_fixes_its_fields(c: Any, layers: list) -> None:
    """nGPT replaces the block, the embeddings and the logits: every field it would otherwise ignore must say so."""
    if c.architecture != "ngpt":
        return
    for field, (required, why) in NGPT_REQUIRED_FIELDS.items():
        value, accepted = getattr(c, field), required if isinstance(required, tuple) else (required,)
        # bool is an int subclass: False must not pass for 0.0, nor 1 for True
        if not any(value == ok and isinstance(value, bool) == isinstance(ok, bool) for ok in accepted):
            raise ValueError(f"SkipNormConfig.{field}={value!r} is not valid with architecture='ngpt': {why}; "
                             f"valid choices: {', '.join(map(repr, accepted))}")
    if c.position_embedding not in NGPT_POSITION_EMBEDDINGS:
        raise ValueError(
            f"SkipNormConfig.position_embedding={c.position_embedding!r} is not valid with architecture='ngpt': "
            f"learned positions add an un-normalized vector to the unit-norm embeddings (the paper uses RoPE); "
            f"valid choices: {', '.join(NGPT_POSITION_EMBEDDINGS)}")
    if c.num_key_value_heads != c.num_attention_heads:
        raise ValueError(
            f"SkipNormConfig.num_key_value_heads={c.num_key_value_heads} is not valid with architecture='ngpt': the "
            f"paper's one s_qk scales q and k of every head alike, which grouped-query attention's fewer key heads "
            f"cannot share; valid choices: num_attention_heads={c.num_attention_heads}")


# --- what transformers reads from our config ---
@rule
def encoder_decoder_fields_need_a_decoder(c: Any, layers: list) -> None:
    if c.is_encoder_decoder or c.encoder_decoder_stack is not None:
        return
    if c.position_embedding in SEQ2SEQ_POSITION_EMBEDDINGS:
        raise ValueError(
            f"SkipNormConfig.position_embedding={c.position_embedding!r} is not valid with is_encoder_decoder=False: "
            f"only the encoder-decoder stacks compute it; valid choices here: {', '.join(POSITION_EMBEDDINGS)}"
        )
    for name in ("decoder_layers", "decoder_overrides"):
        if getattr(c, name) is not None:
            raise ValueError(
                f"SkipNormConfig.{name}={getattr(c, name)!r} is not valid with is_encoder_decoder=False: there is no "
                f"decoder stack; set is_encoder_decoder=True or leave it None"
            )
    # The decoder-only heads would ignore these (their lm_head and positions do not read them): refuse, not drop.
    for name, default in (("lm_head_multiplier", 1.0), ("final_logits_bias", False), ("position_offset", 0)):
        if getattr(c, name) != default:
            raise ValueError(
                f"SkipNormConfig.{name}={getattr(c, name)!r} is not valid with is_encoder_decoder=False: only "
                f"SkipNormForConditionalGeneration reads it; valid choices here: {default!r}"
            )


@rule
def position_offset_needs_a_position_table(c: Any, layers: list) -> None:
    if c.position_offset and c.position_embedding not in ("learned", "sinusoidal", "sinusoidal_fairseq"):
        raise ValueError(
            f"SkipNormConfig.position_offset={c.position_offset} is not valid with position_embedding="
            f"{c.position_embedding!r}: it shifts the row of an absolute position table; valid choices: 0, or "
            f"position_embedding in learned, sinusoidal, sinusoidal_fairseq"
        )


@rule
def encoder_decoder_stacks_are_valid_configs(c: Any, layers: list) -> None:
    """Each stack validates as a config of its own, with its own depth and overrides; the shared fields must mean
    something for an encoder-decoder."""
    if not c.is_encoder_decoder or c.encoder_decoder_stack is not None:
        return
    if c.type_vocab_size:
        raise ValueError(
            f"SkipNormConfig.type_vocab_size={c.type_vocab_size} is not valid with is_encoder_decoder=True: token "
            f"types are BERT's segments; an encoder-decoder separates its segments by stack; valid: 0"
        )
    if c.final_logit_softcapping is not None:
        raise ValueError(
            f"SkipNormConfig.final_logit_softcapping={c.final_logit_softcapping!r} is not valid with "
            f"is_encoder_decoder=True: no encoder-decoder in the catalogue soft-caps its logits; valid: None"
        )
    c.stack_config("encoder")
    decoder = c.stack_config("decoder")
    omegas = c.decoder_admin_omegas
    if omegas is not None:
        expected = 3 * c.decoder_depth
        if decoder.residual != "admin":
            raise ValueError(
                f"SkipNormConfig.decoder_overrides['admin_omegas'] is not valid with the decoder's residual="
                f"{decoder.residual!r}: only Admin uses them; valid choices: residual='admin' or no omegas"
            )
        if not isinstance(omegas, list) or len(omegas) != expected or any(
                not _is_number(w) or not math.isfinite(w) or not 0 < w <= FLOAT16_MAX for w in omegas):
            raise ValueError(
                f"SkipNormConfig.decoder_overrides['admin_omegas']={omegas!r} is not valid; expected a list of "
                f"{expected} finite floats > 0 (3 per decoder layer: self-attention, cross-attention, MLP)"
            )


@rule
def encoder_decoder_stacks_wire_no_value_residual_or_unet(c: Any, layers: list) -> None:
    """Value residuals and U-Net skips are wired in `SkipNormModel`'s forward (they carry the first layer's values /
    the first half's outputs across blocks); the encoder and decoder stacks have forwards of their own that do not
    carry them, so refuse them rather than build a model that crashes on, or silently ignores, the field."""
    if not (c.is_encoder_decoder or c.encoder_decoder_stack is not None):
        return
    for name, default in (("value_residual", "none"), ("unet_skips", False)):
        if getattr(c, name) != default:
            raise ValueError(
                f"SkipNormConfig.{name}={getattr(c, name)!r} is not valid with is_encoder_decoder=True: it carries "
                f"state across the blocks of a decoder-only or encoder-only stack, which the encoder-decoder stacks "
                f"do not wire (yet); valid choices here: {default!r}"
            )


@rule
def decoder_block_is_sequential(c: Any, layers: list) -> None:
    """The decoder block (self-attention, cross-attention, MLP) is sequential: refuse what rewires it."""
    if c.encoder_decoder_stack != "decoder":
        return
    rewired = sorted({p for pair in layers for p in pair} & set(DECODER_REFUSED_PLACEMENTS))
    if rewired:
        raise ValueError(
            f"SkipNormConfig.norm_position={rewired[0]!r} is not valid for the decoder of an encoder-decoder: "
            f"{', '.join(DECODER_REFUSED_PLACEMENTS)} rewire a two-sublayer block and have no cross-attention form "
            f"here; set decoder_overrides={{'norm_position': ...}} to a sequential placement (the encoder may keep it)"
        )
    if c.residual in DECODER_REFUSED_RESIDUALS:
        raise ValueError(
            f"SkipNormConfig.residual={c.residual!r} is not valid for the decoder of an encoder-decoder: multi-stream "
            f"residuals (and Frac-Connections, which run on the hyper-connection block) are not implemented around "
            f"cross-attention; set decoder_overrides={{'residual': ...}} (the encoder may keep it)"
        )
    if c.parallel_block:
        raise ValueError(
            "SkipNormConfig.parallel_block=True is not valid with is_encoder_decoder=True: a parallel block sums "
            "branches that read one input, and cross-attention reads the self-attention's output; valid: False"
        )


@rule
def output_attentions_needs_eager_attention(c: Any, layers: list) -> None:
    if c.output_attentions and c._attn_implementation not in (None, "eager"):
        raise ValueError(
            f"SkipNormConfig.output_attentions=True is not valid with attn_implementation="
            f"{c._attn_implementation!r}: only eager attention returns the attention weights; valid choices: "
            f"attn_implementation='eager'"
        )


@rule
def return_dict_stays_on_in_the_config(c: Any, layers: list) -> None:
    if c.return_dict is False:
        raise ValueError(
            "SkipNormConfig.return_dict=False is not valid: with it the base model returns a tuple and every task "
            "head, which reads the base model's output by name, fails (LlamaForCausalLM does too in transformers "
            "5.24); valid choices: True or None, and pass return_dict=False to forward() for tuples"
        )


@rule
def transformers_save_checks_pass(c: Any, layers: list) -> None:
    """transformers runs its own class validators in `save_pretrained`: run them now, so a config that constructs
    also saves (its `validate_rope` is what refused a NoPE head_dim of 5 at save time)."""
    for validator in type(c).__class_validators__:
        try:
            validator(c)
        except (ValueError, TypeError) as error:
            raise ValueError(
                f"SkipNormConfig is not valid for transformers' {validator.__name__} (save_pretrained runs it): {error}"
            ) from error



class SkipNormConfig(PreTrainedConfig):
    r"""Configuration of a SkipNorm transformer.

    Standard fields follow transformers' names and meanings (`LlamaConfig`, Touvron et al. 2023, arXiv 2302.13971):
    `vocab_size` (embedding rows), `hidden_size` (the residual stream width d), `intermediate_size` (the MLP width;
    `None`: 4d for plain MLPs, LLaMA's 8d/3 rounded up to 64 for gated ones), `num_hidden_layers` (blocks L),
    `num_attention_heads`, `num_key_value_heads` (`None`: multi-head; fewer: grouped-query, arXiv 2305.13245),
    `head_dim` (`None`: d / heads), `hidden_act` (a key of transformers' ACT2FN; a GLU is `mlp_type="gated"`),
    `max_position_embeddings`, `initializer_range` (the init std, GPT-2's 0.02), `use_cache`, `pad_token_id` /
    `bos_token_id` / `eos_token_id` (ids in the vocabulary; `eos_token_id` may be a list), `tie_word_embeddings`
    (Press & Wolf 2017, arXiv 1608.05859), `rope_parameters` (transformers' RoPE dict; `None` without RoPE),
    `attention_bias` / `mlp_bias` (biases of the projections, Qwen2 / GPT-2), `attention_dropout` / `hidden_dropout`
    (Srivastava et al. 2014). Every field's type and range, with the reason for the range, is a row of `FIELDS`.

    Args:
        norm_position (`str` or `list[str]`, defaults to `"pre"`):
            Where each sublayer's norms sit. `pre`: ``x + F(N(x))`` (Xiong et al. 2020, arXiv 2002.04745: well-behaved
            gradients at init, trains without warm-up). `post`: ``N(x + F(x))`` (Vaswani et al. 2017; needs warm-up).
            `sandwich`: ``x + N_out(F(N_in(x)))`` (CogView, arXiv 2105.13290; Gemma 2). `output`: ``x + N(F(x))``
            (OLMo 2, arXiv 2501.00656). `pre_post`: ``N_post(x + F(N_pre(x)))`` (Keel, arXiv 2601.19895). `none`:
            ``x + F(x)``. `peri`: Peri-LN (arXiv 2502.02732, ICML 2025): sandwich plus a normalized embedding output
            (forces `embedding_norm=True`); steadier activation variance and gradients than pre/post up to 3.2B.
            `subln`: Sub-LN of Magneto (Foundation Transformers, arXiv 2210.06423): ``x + W_out N_sub(G(N(x)))``, an
            extra norm inside each branch before its output projection (before `o_proj` / `down_proj`), and the
            branch weights (`v_proj`, `o_proj`, `gate_proj`, `up_proj`, `down_proj`) initialized with gain
            ``gamma = sqrt(log(2L))`` (the paper's value for encoder-only and decoder-only models; torchscale `subln`).
            `normformer`: NormFormer (arXiv 2110.09456): attention ``x + N_out(HeadScale(MHA(N(x))))`` with a learned
            gain per head before `o_proj` (init 1), MLP ``x + W_2 N_sub(act(W_1 N(x)))``; reaches the pre-norm
            baseline's perplexity 24% faster at 1.3B (the paper's "three normalization operations").
            `mix`: Mix-LN (arXiv 2412.13795, ICLR 2025): `post` for the first ``floor(mix_ratio * L)`` blocks, `pre`
            for the rest. `hybrid`: HybridNorm (arXiv 2503.04598): attention ``h = N(x + MHA(x))`` with Q, K and V each
            normalized per head after their projections (no input norm), MLP ``h + FFN(h)`` on that normalized ``h``
            (the paper's ``Y = FFN(Norm(X')) + Norm(X')``). `hybrid_pre`: HybridNorm*'s first block (pre-norm on both
            sublayers, QKV-norm kept): HybridNorm* is ``["hybrid_pre"] + ["hybrid"] * (L - 1)``. `b2t`: B2T
            connection (arXiv 2206.00330): ``h = N(x + Attn(x))``, ``out = N(h + FFN(h) + x)``, post-LN that trains
            deep (18L and 100L) where post-LN diverges. `resi_dual`: ResiDual (arXiv 2304.14802): post-LN stream
            ``x_{k+1} = N(x_k + F(x_k))`` plus an un-normalized dual stream ``d_{k+1} = d_k + F(x_k)`` started at the
            embeddings, output ``x_L + N(d_L)``, per sublayer.
            A list gives one value per layer (generalizes Mix-LN); `mix`, `peri` and `resi_dual` describe a whole
            stack and are only valid as the string value.
            `span` (SpanNorm, arXiv 2601.22580) is refused with the reason: the paper's block equation, norm
            positions, scaling strategy and init could not be read from any source here (`REFUSED_NORM_POSITIONS`).
        attn_norm_position / mlp_norm_position (`str`, `list[str]` or `None`):
            Per-sublayer overrides of `norm_position`; `None` inherits it.
        norm_type (`str`, defaults to `"rmsnorm"`):
            What `N` is. `layernorm`: ``g*(x-mean)/sqrt(var+eps)+b`` (Ba et al. 2016, arXiv 1607.06450). `rmsnorm`:
            ``g*x/sqrt(mean(x^2)+eps)`` (Zhang & Sennrich 2019, arXiv 1910.07467). `none`: identity in every slot the
            placement has (an ablation: the placement's norms removed, the wiring kept). `scalenorm`: ScaleNorm
            ``g * x / max(||x||, eps)`` with one scalar ``g`` initialized to ``sqrt(d)`` (Nguyen & Salazar 2019,
            Transformers without Tears, arXiv 1910.05895). `simple_rmsnorm`: ``x / (||x|| / sqrt(d) + eps)`` with no
            parameters (SRMSNorm of TransNormerLLM, arXiv 2307.14995). `dyt`: Dynamic Tanh ``g * tanh(a*x) + b``, a
            learned scalar ``a`` (Zhu et al. 2025, Transformers without Normalization, arXiv 2503.10622: matches
            LayerNorm with no statistics). `derf`: Dynamic erf ``g * erf(a*x + s) + b`` with learned scalars ``a``
            (init `derf_alpha_init`) and ``s`` (init 0) (Stronger Normalization-Free Transformers, arXiv 2512.10938:
            beats LayerNorm, RMSNorm and DyT on ViT, DiT, speech and DNA). `dyt` and `derf` have ``b`` iff
            `norm_bias` (the DyT LLaMA code drops it, as RMSNorm has none).
        norm_eps (`float`, defaults to 1e-6): the epsilon inside every norm (LLaMA uses 1e-6, GPT-2/BERT 1e-5/1e-12).
        norm_bias (`bool`, defaults to `True`): whether `layernorm` has the additive bias `b` (OLMo drops it).
        norm_unit_offset (`bool`, defaults to `False`): store the gain as ``1 + w`` with `w` initialized to 0 (Gemma),
            so weight decay pulls the gain toward 1 rather than 0. Applies to the per-channel gain ``g`` of
            `layernorm`, `rmsnorm`, `dyt` and `derf`; refused for the others, which have no such gain.
        qk_norm (`str`, defaults to `"none"`): normalize queries and keys after their projections, before RoPE.
            `per_head`: one norm over each head's `head_dim` shared by all heads (Qwen3, Gemma 3); `full`: one norm
            over the whole projection, ``H * head_dim`` for Q and ``H_kv * head_dim`` for K (OLMo 2, arXiv
            2501.00656); `per_head_gains` (issue 15): per head as `per_head` but each head with its own gain (and bias)
            vector, weight (heads, head_dim), x-transformers' `MultiheadRMSNorm` (rmsnorm or layernorm only).
            Modules `self_attn.q_norm` / `self_attn.k_norm`, of `norm_type`.
        norm_depth_scaling (`bool`, defaults to `False`): LayerNorm Scaling (The Curse of Depth, arXiv 2502.05795):
            every input norm ``N_in`` of block ``l`` (1-based) outputs ``N(x) / sqrt(l)``, taming the variance growth
            that makes deep pre-LN layers near-identities. The paper drops depth-scaled init with it, so
            `branch_init="scaled_depth"` is refused.
        parallel_block (`bool`, defaults to `False`): ``x + Attn(N_a(x)) + MLP(N_m(x))``, both branches read the block
            input (GPT-J, GPT-NeoX `use_parallel_residual`, PaLM). Only placements without a norm after the skip.
        parallel_shared_norm (`bool`, defaults to `False`): with `parallel_block`, one input norm `shared_pre_norm`
            feeds both branches (GPT-J, Phi, Cohere) instead of two (GPT-NeoX).
        mix_ratio (`float`, defaults to 0.25): Mix-LN's fraction of post-LN blocks, the paper's default alpha = 0.25
            (post for blocks ``l < floor(mix_ratio * L)``, 0-based).
        dyt_alpha_init (`float`, defaults to 0.5): initial ``a`` of every `dyt` norm (the DyT paper's default 0.5).
        dyt_attn_alpha_init (`float` or `None`): initial ``a`` of the norms of the attention sublayer (`None`: as
            `dyt_alpha_init`). The DyT paper tunes LLaMA this way: 0.8 (attention) / 0.2 (other) at 7B, 0.6 / 0.15 at
            13B, 0.2 / 0.05 at 34B and 70B.
        derf_alpha_init (`float`, defaults to 0.5): initial ``a`` of every `derf` norm (the Derf paper's 0.5).
        residual (`str`, defaults to `"add"`):
            How the skip combines. `add`: ``x + F`` (He et al. 2016, arXiv 1512.03385). `none`: ``F`` with no skip
            (ablation of Dong et al. 2021, arXiv 2103.03404). `scaled`: ``residual_alpha*x + branch_multiplier*F``
            (Granite, MiniCPM).
            `deepnorm`: DeepNet (arXiv 2203.00555): post-LN ``N(alpha*x + F(x))`` with ``alpha = (2L)^(1/4)`` and the
            branch weights initialized Xavier-normal with gain ``beta = (8L)^(-1/4)`` (the paper's values for
            encoder-only and for decoder-only models alike; needs `norm_position="post"`); trains 1,000 layers.
            `admin`: Admin (Liu et al. 2020, arXiv 2004.08249): post-LN ``N(omega*x + F(x))`` with a learned
            per-channel ``omega`` initialized from a profiling pass (`admin_omegas`, filled by
            `SkipNormPreTrainedModel.admin_profile(batch)`); needs `norm_position="post"`.
            `rezero`: ReZero (Bachlechner et al. 2020, arXiv 2003.04887): ``x + a*F`` with one learned scalar ``a`` per
            sublayer initialized to 0 (usually with `norm_position="none"`); the paper reports 56% faster convergence
            on enwik8. `skipinit`: SkipInit (De & Smith 2020, arXiv 2002.10444), the same formula and init,
            an alias of `rezero`. `layerscale`: CaiT's LayerScale (Touvron et al. 2021, arXiv 2103.17239):
            ``x + diag(lambda)*F`` with a learned per-channel ``lambda`` initialized to `layerscale_init`.
            `gated`: a highway gate on the branch, ``x + g*F`` with ``g = sigmoid(W_g [x; F] + b_g)`` per channel,
            ``W_g`` initialized like the other linears and ``b_g = -1`` so the skip dominates at init (Highway
            networks, Srivastava et al. 2015, arXiv 1505.00387, who advise a negative gate bias; GTrXL, arXiv
            1910.06764, replaces the residual sum by a GRU-style gate instead). `hyper`: hyper-connections (Zhu et al. 2024,
            arXiv 2409.19606): `residual_streams` copies of the residual stream mixed by learned width and depth
            connections, static or input-dependent (`hyper_dynamic`), initialized so the model computes exactly the
            pre-norm model; the streams are averaged before the final norm. `mhc`: manifold-constrained
            hyper-connections (Xie et al. 2025, arXiv 2512.24880): the stream-mixing matrix is projected onto the
            doubly stochastic matrices by `sinkhorn_iters` Sinkhorn-Knopp iterations; the paper reports 6.7% training
            overhead at n=4. `dense`: DenseFormer (Pagliardini et al. 2024, arXiv 2402.02622): after block ``i`` a
            depth-weighted average of the embeddings and every block output so far, initialized to the plain residual.
            `attn_res`: Attention Residuals (Kimi Team 2026, arXiv 2603.15031; MoonshotAI/Attention-Residuals): each
            sublayer's input is ``h = sum_i alpha_i v_i`` with ``alpha = softmax_i(w^T RMSNorm(v_i))`` over the embedding
            and every earlier sublayer output (Full AttnRes) or block sums (`attn_res_blocks`), ``w`` a learned
            pseudo-query per sublayer initialized to 0 (uniform weights at init); a last aggregation with its own ``w``
            feeds the final norm. The paper reports Block AttnRes matching a baseline trained with 1.25x more compute
            and more uniform output magnitudes and gradients across depth than PreNorm (Kimi Linear 48B).
            `hyper`, `mhc`, `dense` and `attn_res` need the sequential block (no `parallel_block`, `b2t` or
            `resi_dual`); `hyper`, `mhc` and `attn_res` need placements without a norm after the skip.
            `orthogonal`: Orthogonal Residual Update (Oh et al. 2025, arXiv 2505.11881): ``x + F_perp`` with
            ``F_perp = F - (<x, F> / (<x, x> + eps)) x`` per token over the hidden size (the reference code's
            "feature" variant, BootsofLagrangian/ortho-residual), so each sublayer adds only directions new to the
            stream; +3.78 pp ImageNet-1k top-1 for ViT-B. No parameters; not the plain residual at init.
            `laurel`: LAuReL (Menghani et al., ICML 2025, arXiv 2411.07501, Sec. 2), by `laurel_variant`: `rw`
            ``alpha*F + beta*x`` (Sec. 2.1) with the two learned scalars bounded by `laurel_rw_weights` (the paper:
            "we cannot let alpha and beta grow unbounded"), `lr` ``F + x + B A x`` (Eq. 3) with a rank-`laurel_rank`
            ``B A``, `rw_lr` ``alpha*F + beta*(x + B A x)`` (Eq. 5). ``B = 0`` and ``A`` the column-orthogonal init
            of the paper's LLM runs (Sec. 3.3, footnote 2: ``A_ij = 1/sqrt(r d)`` where ``i mod r = j``, else 0), so
            `lr` starts as the plain residual; the paper gives no init for alpha and beta, whose logits start at 0
            here (``alpha = beta = 1/2``: `rw` and `rw_lr` start as ``(F + x) / 2``). `pa` (Sec. 2.3, Eq. 4)
            ``F + x_i + sum_{j<k} gamma_j B A x_(i-j)``: the low-rank ``h = B A`` on this and the previous
            ``k - 1`` = `laurel_pa_activations` - 1 sublayer outputs (the embedding output is ``x_0``; absent ones
            add nothing), ``k`` learned scalars ``gamma`` (1 at init, our choice: the paper states none), ``B = 0``,
            so it starts as the plain residual; the block carries the last ``k`` outputs as its state (sequential
            block only). The paper's RW+PA combinations (Eq. 6) are not built. The paper reports 2.5%-20% better
            downstream scores for 1B and 4B LLMs at +0.012% / +0.1% parameters.
            `frac`: Frac-Connections (Zhu et al. 2025, arXiv 2503.14125): hyper-connections on `frac_rate` fractions of
            the hidden state, ``h_in = Concat(Y^T H)``, ``H' = A^T H + B^T o Reshape(F(h_in))`` with
            ``H = Reshape(h, (m, d/m))`` (Eqs. 6-8), static or input-dependent (`hyper_dynamic`, Eqs. 11-14),
            initialized to the plain residual (Eq. 15); keeps hyper-connections' benefit without widening the stream (the paper trains up to a 7B MoE
            on 3T tokens, beating residual connections). Needs placements without a norm after the skip.
        residual_alpha (`float` or `None`): constant on the skip path for `scaled` and `deepnorm`. `None` resolves to
            DeepNet's ``(2L)^(1/4)`` for `deepnorm` and to 1.0 otherwise; the resolved value is stored.
        branch_init_gain (`float` or `None`): when set, the branch weights (`v_proj`, `o_proj`, `gate_proj`,
            `up_proj`, `down_proj`) are initialized Xavier-normal with this gain and `q_proj` / `k_proj` Xavier-normal
            with gain 1, as DeepNet's ``deepnorm_init`` does. `None` resolves to ``(8L)^(-1/4)`` for `deepnorm` and
            stays `None` otherwise (the `initializer_range` / `branch_init` init).
        admin_omegas (`list[float]` or `None`): Admin's initial ``omega`` per sublayer, in the order layer 0
            attention, layer 0 MLP, layer 1 attention, ... (``2L`` values). `None`: all 1 (plain post-LN) until
            `admin_profile` fills them.
        layerscale_init (`float` or `None`): initial ``lambda`` of `layerscale`. `None` resolves to CaiT's depth
            schedule: 0.1 for ``L <= 18``, 1e-5 for ``L <= 24``, 1e-6 deeper (arXiv 2103.17239, Sec. 3.1).
        residual_streams (`int`, defaults to 4): the expansion rate ``n`` of `hyper` and `mhc` (both papers use 4).
        hyper_dynamic (`bool`, defaults to `True`): `hyper` with the input-dependent connections (DHC, the paper's
            best) as well as the static ones; `False` gives static hyper-connections (SHC). The same for `frac`
            (dynamic DFC or static SFC Frac-Connections).
        sinkhorn_iters (`int`, defaults to 20): Sinkhorn-Knopp iterations of `mhc` (the paper's ``t_max = 20``).
        frac_rate (`int`, defaults to 4): the number ``m`` of fractions `frac` splits the hidden state into (each
            ``hidden_size / m`` wide; Frac-Connections, arXiv 2503.14125, write the rate as ``n = 1/m``); our default.
        orthogonal_eps (`float`, defaults to 1e-6): the ``eps`` in `orthogonal`'s ``<x, x> + eps`` (the reference
            code's `residual_eps`, arXiv 2505.11881), so a zero stream projects nothing instead of dividing by 0.
        laurel_variant (`str`, defaults to `"rw_lr"`): which LAuReL (arXiv 2411.07501) `laurel` builds:
            `rw` (learned residual weights), `lr` (low-rank augmented skip), `rw_lr` (both, the paper's
            combination, Eq. 5) or `pa` (previous activations, Eq. 4).
        laurel_rank (`int`, defaults to 16): the rank ``r`` of LAuReL-LR's ``B A`` (``2 r d`` parameters per
            sublayer); our default, small enough for tiny test models (Gemma 3n's LAuReL-LR block uses 64).
        laurel_rw_weights (`str`, defaults to `"softmax"`): how LAuReL-RW (`rw`, `rw_lr`) bounds ``alpha`` and
            ``beta``, the two functions the paper names (arXiv 2411.07501, Sec. 2.1): `softmax` ``(alpha, beta) =
            softmax(a, b)`` (they sum to 1), `sigmoid` ``alpha = sigmoid(a)``, ``beta = sigmoid(b)``. The logits
            ``a``, ``b`` are `alpha_logit_bias` / `beta_logit_bias` (no weight decay), 0 at init (the paper states
            no init).
        laurel_pa_activations (`int`, defaults to 3): LAuReL-PA's ``k``, the number of activations
            ``x_i, ..., x_(i-k+1)`` each sublayer's low-rank skip reads (the paper's ablation uses 3); each costs a
            (B, T, C) tensor in the block state.
        architecture (`str`, defaults to `"transformer"`): `transformer` is the model the fields above describe;
            `ngpt` is the normalized Transformer (Loshchilov et al. 2024, arXiv 2410.01131; NVIDIA/ngpt): unit-norm
            embeddings and matrix rows, ``h <- Norm(h + alpha (Norm(F(h)) - h))`` per sublayer with per-channel
            eigen learning rates alpha, ``s_qk``-scaled unit q and k with softmax scale ``sqrt(d_k)``, SwiGLU scaled by
            ``s_u``, ``s_v sqrt(d)``, logits ``s_z * E_out h``, no norm layers, no weight decay; the weights are
            renormalized after every optimizer step by `ngpt_training.NGPTNormalizeCallback`. The paper reports 4x
            to 20x fewer training steps to the same loss. It fixes the fields listed in `NGPT_REQUIRED_FIELDS`
            (set them as listed; anything else is refused with the reason).
        ngpt_alpha_init (`float`, defaults to 0.05): initial eigen learning rates ``alpha_A``, ``alpha_M`` of `ngpt`
            (the paper's and NVIDIA/ngpt's 0.05, stored with scale ``1/sqrt(d)``).
        stream_recompute (`bool`, defaults to `False`): with `hyper` / `mhc`, recompute each sublayer's stream mixing
            (the width connection: dynamic norms, projections, Sinkhorn, the mixed streams) in the backward pass instead
            of keeping its intermediates, as the mHC paper does to keep memory flat (arXiv 2512.24880, Sec. 4.3); the
            same values and gradients, less saved-activation memory, one more mixing pass per sublayer.
        value_residual (`str`, defaults to `"none"`): ResFormer's value residual (Zhou et al., arXiv 2410.17897, ACL
            2025): every layer after the first attends with ``lambda_1 V_1 + lambda_2 V_n`` instead of ``V_n`` (``V_1``
            the first layer's values, mixed before the KV cache). `fixed`: the paper's constants 0.5 / 0.5; `learned`:
            Learnable-ResFormer's two scalars per layer, starting there (modded-nanogpt); `per_token`: a sigmoid gate per
            token and key/value head read from the attention input, ``m V_n + (1 - m) V_1`` (x-transformers'
            `learned_value_residual_mix`), initialized to 0.5. The paper reports the same loss with 16.1% fewer
            parameters and 20.3% less data.
        value_residual_lambda (`float`, defaults to 0.5): ``lambda_1`` (the weight on ``V_1``) of `fixed`, and the init
            of `learned`; ``lambda_2 = 1 - lambda_1`` (ResFormer's 0.5 / 0.5).
        dense_dilation (`int`, defaults to 1): DenseFormer's dilation k (arXiv 2402.02622, Sec. 3.2): the average after
            block i reads only ``Y_j`` with ``j = i (mod k)``, k times fewer weights and multiply-adds.
        dense_period (`int`, defaults to 1): DenseFormer's period p: only every p-th block (1-based ``i = 0 mod p``) has
            a depth-weighted average; the others pass their output on as the plain residual. The paper finds the
            4x5-DenseFormer (k=4, p=5) keeps most of the gain at a fraction of the overhead.
        unet_skips (`bool`, defaults to `False`): U-Net skips over depth (modded-nanogpt's speedrun records, no paper;
            x-transformers has a concatenating variant): block ``j < L // 2``'s output is added, times a learned scalar
            ``w_j`` (1 at init, as modded-nanogpt), to the input of its mirror block ``L - 1 - j``. Single-stream
            residuals only.
        layer_drop (`float`, defaults to 0.0): stochastic depth's drop probability of the last layer ``p_L`` (Huang et
            al. 2016, arXiv 1603.09382: deep networks train faster and generalize better), in the drop-path form
            Transformers use (DeiT, Swin, timm): each sublayer's branch is dropped per sample during training and
            kept ones are scaled by ``1/(1-p)``; evaluation and generation are the plain deterministic model.
        layer_drop_schedule (`str`, defaults to `"linear"`): `linear`: ``p_l = (l/L) p_L`` (Huang et al.); `uniform`:
            ``p`` for every layer (LayerDrop's rate, Fan et al. 2019, arXiv 1909.11556, which skips whole layers so that
            they can be pruned at inference; this drops the branches instead).
        attn_res_blocks (`int` or `None`): Block AttnRes (arXiv 2603.15031, Sec. 3.2): `None` is Full AttnRes (every
            attention and MLP output is a source, memory O(Ld)); N splits the L layers into N blocks of L/N whole layers,
            plain residual sums inside a block and attention over the block sums ``[b_0 = embeddings, b_1, ...]`` plus
            the partial sum of the current block (memory O(Nd)); the paper finds N around 8 recovers most of Full's gain.
        branch_multiplier (`float`, defaults to 1.0): constant on the branch for `scaled` (MiniCPM's scale_depth/sqrt(L)).
        embedding_norm (`bool`, defaults to `False`): normalize the embedding output (BERT; Peri-LN, arXiv 2502.02732;
            `norm_position="peri"` turns it on).
        final_norm (`bool` or `None`): norm after the last block; `None` means what the last placement implies
            (on for pre/sandwich/output/peri/subln/normformer/mix/hybrid, off for post/pre_post/none/b2t/resi_dual).
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

    Encoder-decoder fields (issue 16; `SkipNormForConditionalGeneration`, modeling_seq2seq_skipnorm.py):
        is_encoder_decoder (`bool`, defaults to `False`): build an encoder (bidirectional, `num_hidden_layers` blocks)
            and a decoder (causal self-attention, cross-attention, MLP; `decoder_layers` blocks) sharing one
            token embedding: the Transformer of Vaswani et al. 2017, BART, Marian, mBART, M2M100 and T5.
        decoder_layers (`int` or `None`): the decoder's depth M (BART's name); `None` resolves to `num_hidden_layers`
            (T5's rule) and the resolved value is stored.
        decoder_overrides (`dict` or `None`): the decoder's own values of the per-stack fields
            (`DECODER_OVERRIDE_FIELDS`: the three axes and their constants, e.g. ``{"norm_position": "post"}``). The
            top-level fields describe the encoder and are the decoder's defaults; one clear place for what differs.
            Depth-derived constants left unset are resolved per stack and stored here (DeepNet's decoder ``alpha =
            (3M)^(1/4)``, ``beta = (12M)^(-1/4)``; CaiT's LayerScale init by M); Admin's decoder omegas (`admin_omegas`,
            ``3M`` values: self-attention, cross-attention, MLP per layer) are stored here by `admin_profile`.
        decoder_start_token_id (`int` or `None`): the first decoder input; `labels` are shifted right behind it to
            give `decoder_input_ids` (BART: eos, Marian/T5: pad), as transformers' seq2seq models do.
        position_offset (`int`, defaults to 0): added to every position before the lookup: BART/mBART's learned table
            starts at row 2; fairseq's sinusoids (M2M100/NLLB) at ``pad_token_id + 1``.
        relative_attention_num_buckets / relative_attention_max_distance (`int`, 32 / 128): T5's bucketed relative
            attention bias (Raffel et al. 2020, arXiv 1910.10683, Sec. 2.1): half the buckets exact offsets, half
            log-spaced up to the max distance; bidirectional in the encoder, causal in the decoder.
        lm_head_multiplier (`float`, defaults to 1.0): the decoder output is multiplied by this before `lm_head`
            (T5 with tied embeddings: ``d_model**-0.5``, Mesh TensorFlow's rescaling).
        final_logits_bias (`bool`, defaults to `False`): a fixed (1, V) buffer added to the logits (BART, Marian,
            mBART keep one; zero unless converted).
        encoder_decoder_stack (`str` or `None`): set by `stack_config` on the derived per-stack configs (`encoder` /
            `decoder`); `None` on a user's config.
        position_embedding, encoder-decoder only: `sinusoidal` (Vaswani et al. 2017 frequencies ``10000^(-2i/d)``,
            sines in the first half of the channels and cosines in the second, as Marian stores them), `sinusoidal_fairseq`
            (fairseq's table, M2M100/NLLB: frequencies ``10000^(-i/(d/2-1))``, positions counted over non-pad tokens
            from `position_offset`, pad tokens get a zero vector), `t5_relative` (T5's bias on the attention scores).
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
    residual_alpha: float | None = None
    branch_multiplier: float = 1.0
    embedding_norm: bool = False
    final_norm: bool | None = None
    branch_init: str = "normal"

    # --- the norm catalogue (arXiv ids and paper defaults in the docstring) ---
    qk_norm: str = "none"
    norm_depth_scaling: bool = False
    parallel_block: bool = False
    parallel_shared_norm: bool = False
    mix_ratio: float = 0.25
    dyt_alpha_init: float = 0.5
    dyt_attn_alpha_init: float | None = None
    derf_alpha_init: float = 0.5

    # --- the residual catalogue (arXiv ids and paper defaults in the docstring) ---
    branch_init_gain: float | None = None
    admin_omegas: list | None = None
    layerscale_init: float | None = None
    residual_streams: int = 4
    hyper_dynamic: bool = True
    sinkhorn_iters: int = 20
    stream_recompute: bool = False

    # --- issue 15: the residual frontier (arXiv ids and paper defaults in the docstring) ---
    orthogonal_eps: float = 1e-6
    laurel_variant: str = "rw_lr"
    laurel_rank: int = 16
    laurel_rw_weights: str = "softmax"
    laurel_pa_activations: int = 3
    architecture: str = "transformer"
    ngpt_alpha_init: float = 0.05
    frac_rate: int = 4

    # --- issue 15: the depth-mixing frontier (arXiv ids and paper defaults in the docstring) ---
    attn_res_blocks: int | None = None
    value_residual: str = "none"
    value_residual_lambda: float = 0.5
    unet_skips: bool = False
    layer_drop: float = 0.0
    layer_drop_schedule: str = "linear"
    dense_dilation: int = 1
    dense_period: int = 1

    # --- encoder-decoder (issue 16; reasons and citations in the docstring) ---
    is_encoder_decoder: bool = False
    decoder_layers: int | None = None
    decoder_overrides: dict | None = None
    decoder_start_token_id: int | None = None
    position_offset: int = 0
    relative_attention_num_buckets: int = 32
    relative_attention_max_distance: int = 128
    lm_head_multiplier: float = 1.0
    final_logits_bias: bool = False
    encoder_decoder_stack: str | None = None

    def __post_init__(self, **kwargs):
        self._screen_kwargs(kwargs)
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
        if self.rope_parameters is None and kwargs.get("rope_scaling") is None:
            # transformers fills a missing rope_theta with setdefault, so a rope_theta kwarg must go in here
            self.rope_parameters = {"rope_type": "default", "rope_theta": kwargs.pop("rope_theta", 10000.0)}
        if isinstance(self.norm_position, tuple):
            self.norm_position = list(self.norm_position)
        if self.norm_position == "peri":
            self.embedding_norm = True  # Peri-LN normalizes the embedding output too (arXiv 2502.02732)
        self.resolve_encoder_decoder_constants()
        self.resolve_residual_constants()
        super().__post_init__(**kwargs)
        if self.position_embedding != "rope" and _is_default_rope(self.rope_parameters):
            # Nothing reads it without RoPE, and transformers' save-time validate_rope would judge head_dim by it
            # (an odd head_dim of 5 with NoPE failed in save_pretrained). The default every earlier file carries.
            self.rope_parameters = None
        if self.output_attentions and self._attn_implementation is None:
            self._attn_implementation = "eager"  # what transformers' output_attentions setter does; only eager returns them
        if self.is_encoder_decoder or self.encoder_decoder_stack is not None:
            # Issue 16: tensor parallelism is refused for encoder-decoders (`check_tensor_parallel`), so no plan: the
            # class plan names the decoder-only layout (`layers.*`), which matches nothing in the stacks
            self.base_model_tp_plan = None
        self.validate_skipnorm()

    def _screen_kwargs(self, kwargs: dict) -> None:
        """Keys that are not fields: refuse the ones transformers would act on and we do not implement, refuse values
        transformers would crash on or drop, and warn about near-misses of our fields (a typo leaves the default)."""
        for key, why in UNIMPLEMENTED_KWARGS.items():
            if kwargs.get(key) not in (None, False):
                raise ValueError(f"SkipNormConfig.{key}={kwargs[key]!r} is not valid: {why}; valid choices: None (omit it)")
        defaults = GenerationConfig._get_default_generation_params()
        for key in sorted(set(kwargs) & set(defaults) - {"use_cache"}):
            if kwargs[key] != defaults[key]:
                raise ValueError(
                    f"SkipNormConfig.{key}={kwargs[key]!r} is not valid: a generation parameter belongs in "
                    f"model.generation_config (GenerationConfig), not the model config (transformers drops it here "
                    f"and refuses it in save_pretrained)"
                )
        if "num_labels" in kwargs:
            Int(1, 2**20).check("num_labels", kwargs["num_labels"], self, "classes of a classification head")
        rope = self.rope_parameters
        if rope is not None and not isinstance(rope, dict):
            raise refuse("rope_parameters", rope, "None or a dict such as {'rope_type': 'default', 'rope_theta': 10000.0}")
        for key in ("rope_scaling", "rope_theta"):  # transformers' legacy spellings of rope_parameters entries
            if kwargs.get(key) is not None and rope is not None:
                theirs = kwargs[key] if key == "rope_scaling" else {"rope_theta": kwargs[key]}
                if not isinstance(theirs, dict) or any(rope.get(k, v) != v for k, v in theirs.items()):
                    raise ValueError(
                        f"SkipNormConfig.{key}={kwargs[key]!r} is not valid with rope_parameters={rope!r}: two values "
                        f"for one RoPE setting (transformers would keep one silently); give rope_parameters only"
                    )
        Check(_check_labels).check("id2label", self.id2label, self, "")  # transformers converts its keys with int()
        Check(_check_dtype).check("torch_dtype", kwargs.get("torch_dtype"), self, "")
        Check(_check_dtype).check("dtype", self.dtype, self, "")
        Bool().check("output_attentions", kwargs.get("output_attentions", False), self, "")
        known = {f.name for f in dataclasses.fields(self)} | TRANSFORMERS_KWARGS | set(defaults)
        for key in sorted(set(kwargs) - known):
            close = difflib.get_close_matches(key, sorted(known), n=1, cutoff=0.8)
            if close:
                warnings.warn(
                    f"SkipNormConfig got an unknown key {key}={kwargs[key]!r}; did you mean {close[0]}? It is stored "
                    f"as an attribute that nothing reads, so {close[0]} keeps {getattr(self, close[0], None)!r}",
                    UserWarning, stacklevel=4,
                )

    @classmethod
    def _dict_from_json_file(cls, json_file) -> dict:
        """transformers' reader, refusing a file that holds valid JSON but not an object (a list, a number)."""
        config_dict = super()._dict_from_json_file(json_file)
        if not isinstance(config_dict, dict):
            raise ValueError(
                f"{json_file} is not a valid SkipNormConfig file: it holds a JSON {type(config_dict).__name__}, "
                f"expected a JSON object of config fields"
            )
        return config_dict

    @classmethod
    def from_dict(cls, config_dict: dict, **kwargs):
        """transformers' reader sets keyword overrides (`from_pretrained(path, norm_eps=...)`) with `setattr` after
        construction, which skips validation; fields given as keywords join the dict instead (issue 13, loading),
        so the constructor validates the config that is actually built."""
        fields = {f.name for f in dataclasses.fields(cls)} - {"dtype", "torch_dtype"}  # transformers' "auto" handling
        overrides = {key: kwargs.pop(key) for key in list(kwargs) if key in fields}
        return super().from_dict({**config_dict, **overrides}, **kwargs)

    # ------------------------------------------------------------------ validation
    def validate_skipnorm(self) -> None:
        """Check every row of FIELDS, then every @rule; raise ValueError naming the field, the value and the choices."""
        validate(self, FIELDS, layers_of)

    def resolve_residual_constants(self) -> None:
        """Fill the residual constants left `None` from the depth, so the saved config states the values used."""
        depth = self.num_hidden_layers
        if isinstance(depth, bool) or not isinstance(depth, int) or not 0 < depth <= MAX_LAYERS:
            return  # the num_hidden_layers row names it
        if self.residual_alpha is None:
            self.residual_alpha = deepnet_alpha(depth) if self.residual == "deepnorm" else 1.0
        if self.branch_init_gain is None and self.residual == "deepnorm":
            self.branch_init_gain = deepnet_beta(depth)
        if self.layerscale_init is None and self.residual == "layerscale":
            self.layerscale_init = cait_layerscale_init(depth)
        if isinstance(self.admin_omegas, tuple):
            self.admin_omegas = list(self.admin_omegas)

    # ------------------------------------------------------------------ encoder-decoder (issue 16)
    @property
    def decoder_depth(self) -> int:
        """M, the decoder's number of blocks (`decoder_layers`, or `num_hidden_layers` when unset)."""
        return self.num_hidden_layers if self.decoder_layers is None else self.decoder_layers

    def resolve_encoder_decoder_constants(self) -> None:
        """Resolve the depth-derived residual constants of both stacks with DeepNet's encoder-decoder table (and CaiT's
        schedule for the decoder's depth), storing the decoder's in `decoder_overrides` so the saved config says them."""
        if self.is_encoder_decoder is not True or self.encoder_decoder_stack is not None:
            return
        if self.decoder_layers is None and isinstance(self.num_hidden_layers, int):
            # Stored, not left None: transformers' cache sizing reads `decoder_layers` of flat encoder-decoder configs.
            self.decoder_layers = self.num_hidden_layers
        n, m = self.num_hidden_layers, self.decoder_depth
        if isinstance(self.decoder_overrides, dict):
            self.decoder_overrides = dict(self.decoder_overrides)
        if any(isinstance(v, bool) or not isinstance(v, int) or not 0 < v <= MAX_LAYERS for v in (n, m)) or not isinstance(
                self.decoder_overrides, (dict, type(None))):
            return  # validate_encoder_decoder names the bad value
        overrides = self.decoder_overrides if self.decoder_overrides is not None else {}
        decoder_residual = overrides.get("residual", self.residual)
        deepnet = deepnet_encoder_decoder_constants(n, m)
        resolved = {
            "residual_alpha": deepnet["decoder_alpha"] if decoder_residual == "deepnorm" else 1.0,
            "branch_init_gain": deepnet["decoder_beta"] if decoder_residual == "deepnorm" else None,
            "layerscale_init": cait_layerscale_init(m) if decoder_residual == "layerscale" else None,
        }
        depth_derived = {"residual_alpha": ("deepnorm",), "branch_init_gain": ("deepnorm",),
                         "layerscale_init": ("layerscale",)}
        for field, residuals in depth_derived.items():
            unset_at_top = getattr(self, field) is None
            if field not in overrides and unset_at_top and (decoder_residual in residuals or self.residual in residuals):
                overrides[field] = resolved[field]
        if overrides:
            self.decoder_overrides = overrides
        if self.residual == "deepnorm":
            if self.residual_alpha is None:
                self.residual_alpha = deepnet["encoder_alpha"]
            if self.branch_init_gain is None:
                self.branch_init_gain = deepnet["encoder_beta"]

    def stack_config(self, stack: str) -> "SkipNormConfig":
        """The `SkipNormConfig` one stack is built from: the encoder (bidirectional, `num_hidden_layers` blocks) or the
        decoder (causal, `decoder_layers` blocks, `decoder_overrides` applied). Validated like any config."""
        if not self.is_encoder_decoder:
            raise ValueError("SkipNormConfig.stack_config needs is_encoder_decoder=True")
        _check_choice("stack", stack, ENCODER_DECODER_STACKS)
        fields = self.to_dict()
        for key in ("architectures", "auto_map", "transformers_version", "model_type", "_name_or_path", "dtype",
                    "decoder_overrides", "decoder_layers", "is_encoder_decoder", "encoder_decoder_stack"):
            fields.pop(key, None)
        if stack == "decoder":
            overrides = dict(self.decoder_overrides or {})
            overrides.pop("admin_omegas", None)  # 3 per decoder layer, read by the decoder blocks themselves
            # The encoder's omegas (2 per layer) are not the decoder's (3 per layer, `decoder_admin_omegas`).
            fields.update(overrides, num_hidden_layers=self.decoder_depth, is_causal=True, admin_omegas=None)
        else:
            fields.update(is_causal=False)
        # Both stack configs keep M: Magneto's encoder-decoder gains read both depths (`subln_init_gain`).
        config = SkipNormConfig(**fields, decoder_layers=self.decoder_depth, encoder_decoder_stack=stack)
        config._attn_implementation_internal = self._attn_implementation_internal
        return config

    @property
    def decoder_admin_omegas(self) -> list | None:
        """Admin's decoder omegas (3 per layer: self-attention, cross-attention, MLP), or None (all 1)."""
        return (self.decoder_overrides or {}).get("admin_omegas")

    # ------------------------------------------------------------------ resolved views
    @staticmethod
    def _at_layer(value: str | list, layer_idx: int) -> str:
        return value[layer_idx] if isinstance(value, list) else value

    def layer_norm_positions(self, layer_idx: int) -> tuple[str, str]:
        """(attention placement, MLP placement) of block `layer_idx` (0-based), overrides applied, `mix` resolved."""
        base = self._at_layer(self.norm_position, layer_idx)
        attn = base if self.attn_norm_position is None else self._at_layer(self.attn_norm_position, layer_idx)
        mlp = base if self.mlp_norm_position is None else self._at_layer(self.mlp_norm_position, layer_idx)
        mixed = "post" if layer_idx < self.mix_post_layers else "pre"
        return (mixed if attn == "mix" else attn), (mixed if mlp == "mix" else mlp)

    @property
    def mix_post_layers(self) -> int:
        """Mix-LN's split: the first ``floor(mix_ratio * L)`` blocks are post-LN (arXiv 2412.13795, alpha = 0.25)."""
        return math.floor(self.mix_ratio * self.num_hidden_layers)

    def norm_depth_scale(self, layer_idx: int) -> float:
        """LayerNorm Scaling's factor on block `layer_idx`'s input norms: ``1 / sqrt(l)``, l = layer_idx + 1 (1-based,
        as in the paper's code); 1.0 when `norm_depth_scaling` is off. A Python float, never a buffer."""
        return 1.0 / math.sqrt(layer_idx + 1) if self.norm_depth_scaling else 1.0

    @property
    def subln_init_gain(self) -> float:
        """Magneto's branch init gain ``gamma = sqrt(log(2L))`` for encoder-only and decoder-only stacks
        (Foundation Transformers, arXiv 2210.06423, Sec. 2.2; torchscale's `subln` init). In an encoder-decoder
        (N encoder, M decoder layers) torchscale uses the paper's pair: encoder ``sqrt(log(3M) log(2N) / 3)``,
        decoder ``sqrt(log(3M))``."""
        if self.encoder_decoder_stack == "encoder":
            return math.sqrt(math.log(3 * self.decoder_layers) * math.log(2 * self.num_hidden_layers) / 3)
        if self.encoder_decoder_stack == "decoder":
            return math.sqrt(math.log(3 * self.num_hidden_layers))
        return math.sqrt(math.log(2 * self.num_hidden_layers))

    def dyt_alpha_init_for(self, sublayer: str) -> float:
        """Initial DyT ``alpha`` of a norm in `sublayer` ("attn" or anything else, e.g. "mlp", "final")."""
        if sublayer == "attn" and self.dyt_attn_alpha_init is not None:
            return float(self.dyt_attn_alpha_init)
        return float(self.dyt_alpha_init)

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

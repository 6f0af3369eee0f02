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
from typing import Any, NamedTuple

from transformers.configuration_utils import PreTrainedConfig


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
QK_NORMS: tuple[str, ...] = ("none", "per_head", "full")
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
    "orthogonal", "laurel", "frac",  # issue 15 (see validate_frontier_residuals)
)
# Residuals that replace the single residual stream by several (hyper-connections) or by the history of block
# outputs (DenseFormer): their blocks take and return a stream state, not (B, T, C) (modeling_skipnorm.BLOCK_CLASSES).
STREAM_RESIDUALS: tuple[str, ...] = ("hyper", "mhc", "dense")
# Post-LN residuals: their formula is N(w * x + F(x)) and their constants were derived for post-LN.
POST_LN_RESIDUALS: tuple[str, ...] = ("deepnorm", "admin")
POSITION_EMBEDDINGS: tuple[str, ...] = ("rope", "learned", "none")
MLP_TYPES: tuple[str, ...] = ("gated", "plain")
BRANCH_INITS: tuple[str, ...] = ("normal", "scaled_depth", "zero")
CLASSIFIER_POOLINGS: tuple[str, ...] = ("last", "first", "mean")
# --- issue 15: the 2024-2026 residual frontier ---
LAUREL_VARIANTS: tuple[str, ...] = ("rw", "lr", "rw_lr")  # LAuReL (arXiv 2411.07501), Sec. 2: RW, LR, RW+LR
# Whole-model architectures: `transformer` is everything above; `ngpt` (arXiv 2410.01131) replaces the block, the
# embeddings and the logits by the normalized Transformer (ngpt_skipnorm.py), so it fixes several fields itself.
ARCHITECTURES: tuple[str, ...] = ("transformer", "ngpt")
# What nGPT needs of the other fields, with the reason: field -> (required value or tuple of values, why). validate_frontier_residuals
# refuses anything else, so no field is silently ignored.
NGPT_REQUIRED_FIELDS: dict[str, tuple[Any, str]] = {
    "norm_position": ("none", "nGPT has no norm layers: its normalizations to the unit sphere are part of the block"),
    "attn_norm_position": (None, "nGPT has no norm layers"),
    "mlp_norm_position": (None, "nGPT has no norm layers"),
    "residual": ("add", "nGPT's block has its own update h <- Norm(h + alpha (h_A - h))"),
    "parallel_block": (False, "nGPT's attention and MLP updates are sequential (its Eq. 10-11)"),
    "qk_norm": ("none", "nGPT normalizes q and k itself, times its s_qk"),
    "embedding_norm": (False, "nGPT's embeddings are normalized weights, not a norm layer"),
    "final_norm": ((None, False), "nGPT's last hidden state is already on the unit sphere"),
    "norm_depth_scaling": (False, "nGPT has no input norms to scale"),
    "mlp_type": ("gated", "nGPT's MLP is SwiGLU with its s_u, s_v scalings"),
    "tie_word_embeddings": (False, "the paper keeps E_input and E_output separate (NVIDIA/ngpt: no tying)"),
    "attention_bias": (False, "nGPT's matrices are normalized; a bias would move the outputs off their scale"),
    "mlp_bias": (False, "nGPT's matrices are normalized; a bias would move the outputs off their scale"),
    "lm_head_bias": (False, "nGPT's logits are s_z times cosine similarities"),
    "attention_multiplier": (None, "nGPT's softmax scale is sqrt(d_k), fixed by the paper (its q, k are unit vectors)"),
    "embedding_multiplier": (1.0, "nGPT's embeddings are unit vectors"),
    "branch_init": ("normal", "nGPT's matrices are normalized after init, so a branch init has no effect"),
    "branch_init_gain": (None, "nGPT's matrices are normalized after init, so a branch init has no effect"),
}
NGPT_POSITION_EMBEDDINGS: tuple[str, ...] = ("rope", "none")  # learned positions would add an un-normalized vector


# --- Depth-dependent residual constants, as plain functions of the depth L (tests compare them with the papers). ---
def deepnet_alpha(num_layers: int) -> float:
    """DeepNet's skip constant for encoder-only or decoder-only models: ``alpha = (2L)^(1/4)`` (arXiv 2203.00555)."""
    return (2.0 * num_layers) ** 0.25


def deepnet_beta(num_layers: int) -> float:
    """DeepNet's branch-init gain for encoder-only or decoder-only models: ``beta = (8L)^(-1/4)`` (arXiv 2203.00555)."""
    return (8.0 * num_layers) ** -0.25


def cait_layerscale_init(num_layers: int) -> float:
    """CaiT's LayerScale init by depth (arXiv 2103.17239, Sec. 3.1): 0.1 up to 18 blocks, 1e-5 up to 24, 1e-6 beyond."""
    if num_layers <= 18:
        return 0.1
    if num_layers <= 24:
        return 1e-5
    return 1e-6


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
            2501.00656). Modules `self_attn.q_norm` / `self_attn.k_norm`, of `norm_type`.
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
            `hyper`, `mhc` and `dense` need the sequential block (no `parallel_block`, `b2t` or `resi_dual`); `hyper`
            and `mhc` need placements without a norm after the skip.
            `orthogonal`: Orthogonal Residual Update (Oh et al. 2025, arXiv 2505.11881): ``x + F_perp`` with
            ``F_perp = F - (<x, F> / (<x, x> + eps)) x`` per token over the hidden size (the reference code's
            "feature" variant, BootsofLagrangian/ortho-residual), so each sublayer adds only directions new to the
            stream; +3.78 pp ImageNet-1k top-1 for ViT-B. No parameters; not the plain residual at init.
            `laurel`: LAuReL (Menghani et al., ICML 2025, arXiv 2411.07501), by `laurel_variant`: `rw`
            ``alpha*F + beta*x`` with learned scalars, `lr` ``F + x + B A x`` with a rank-`laurel_rank` ``B A``,
            `rw_lr` ``alpha*F + beta*(x + B A x)``; initialized to the plain residual (``alpha = beta = 1``,
            ``B = 0``). The paper reports 2.5%-20% better downstream scores for 1B and 4B LLMs at +0.012% / +0.1%
            parameters.
            `frac`: Frac-Connections (Zhu et al. 2025, arXiv 2503.14125): hyper-connections on `frac_rate` fractions of
            the hidden state, ``h_in = Concat(Y^T H)``, ``H' = A^T H + B^T o Reshape(F(h_in))`` with
            ``H = Reshape(h, (m, d/m))``, static or input-dependent (`hyper_dynamic`), initialized to the plain
            residual; keeps hyper-connections' benefit without widening the stream (the paper trains up to a 7B MoE
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
        laurel_variant (`str`, defaults to `"rw_lr"`): which LAuReL (arXiv 2411.07501, Sec. 2) `laurel` builds:
            `rw` (learned residual weights), `lr` (low-rank augmented skip) or `rw_lr` (both, the paper's combination).
        laurel_rank (`int`, defaults to 16): the rank ``r`` of LAuReL-LR's ``B A`` (``2 r d`` parameters per
            sublayer); our default, the paper's LLM runs do not fix one value for every size.
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

    # --- issue 15: the residual frontier (arXiv ids and paper defaults in the docstring) ---
    orthogonal_eps: float = 1e-6
    laurel_variant: str = "rw_lr"
    laurel_rank: int = 16
    architecture: str = "transformer"
    ngpt_alpha_init: float = 0.05
    frac_rate: int = 4

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
        if self.norm_position == "peri":
            self.embedding_norm = True  # Peri-LN normalizes the embedding output too (arXiv 2502.02732)
        self.resolve_residual_constants()
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
        self.validate_norm_catalogue()
        self.validate_residual_catalogue()
        self.validate_frontier_residuals()

    def validate_norm_catalogue(self) -> None:
        """Cross-field checks of the norm catalogue: refuse combinations that do not mean anything, saying why."""
        _check_choice("qk_norm", self.qk_norm, QK_NORMS)
        for name in ("norm_depth_scaling", "parallel_block", "parallel_shared_norm"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"SkipNormConfig.{name}={getattr(self, name)!r} is not valid; expected True or False")
        if isinstance(self.mix_ratio, bool) or not isinstance(self.mix_ratio, (int, float)) or not 0.0 <= self.mix_ratio <= 1.0:
            raise ValueError(f"SkipNormConfig.mix_ratio={self.mix_ratio!r} is not valid; expected a float in [0, 1]")
        for name in ("dyt_alpha_init", "dyt_attn_alpha_init", "derf_alpha_init"):
            value = getattr(self, name)
            if value is None and name == "dyt_attn_alpha_init":
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
                raise ValueError(f"SkipNormConfig.{name}={value!r} is not valid; expected a finite float > 0")
        if self.norm_unit_offset and self.norm_type not in UNIT_OFFSET_NORM_TYPES:
            raise ValueError(
                f"SkipNormConfig.norm_unit_offset=True is not valid with norm_type={self.norm_type!r}: it has no "
                f"per-channel gain to store as 1 + w; norm types with one: {', '.join(UNIT_OFFSET_NORM_TYPES)}"
            )

        # Whole-stack placements: one string for the stack, no per-layer lists, no per-sublayer overrides.
        for field in ("norm_position", "attn_norm_position", "mlp_norm_position"):
            value = getattr(self, field)
            if isinstance(value, list):
                for index, entry in enumerate(value):
                    if entry in WHOLE_STACK_PLACEMENTS:
                        raise ValueError(
                            f"SkipNormConfig.{field}[{index}]={entry!r} is not valid: {entry!r} describes a whole stack "
                            f"(set norm_position={entry!r}); inside a per-layer list use the placements it resolves "
                            f"to. Whole-stack values: {', '.join(WHOLE_STACK_PLACEMENTS)}"
                        )
        overrides = {f: getattr(self, f) for f in ("attn_norm_position", "mlp_norm_position") if getattr(self, f) is not None}
        for field, value in overrides.items():
            if value in WHOLE_STACK_PLACEMENTS:
                raise ValueError(
                    f"SkipNormConfig.{field}={value!r} is not valid: {value!r} describes a whole stack, both sublayers; "
                    f"set norm_position={value!r} and leave the per-sublayer overrides None"
                )
        if self.norm_position in WHOLE_STACK_PLACEMENTS and overrides:
            raise ValueError(
                f"SkipNormConfig.norm_position={self.norm_position!r} is not valid with per-sublayer overrides "
                f"{overrides!r}: it fixes both sublayers of every block; leave attn_norm_position/mlp_norm_position None"
            )

        layers = [self.layer_norm_positions(i) for i in range(self.num_hidden_layers)]
        for layer, (attn, mlp) in enumerate(layers):
            if (attn in BLOCK_PLACEMENTS or mlp in BLOCK_PLACEMENTS) and attn != mlp:
                raise ValueError(
                    f"SkipNormConfig.norm_position: block {layer} mixes {attn!r} (attention) with {mlp!r} (MLP), which is "
                    f"not valid: {', '.join(BLOCK_PLACEMENTS)} wire both sublayers of a block together"
                )
        used = {position for pair in layers for position in pair}
        rewired = used & set(BLOCK_PLACEMENTS)
        if rewired and self.residual != "add":
            raise ValueError(
                f"SkipNormConfig.residual={self.residual!r} is not valid with norm_position using {sorted(rewired)}: "
                f"B2T and ResiDual define their own skip paths as plain sums; valid choices: add"
            )
        if self.norm_position == "resi_dual" and self.final_norm:
            raise ValueError(
                "SkipNormConfig.final_norm=True is not valid with norm_position='resi_dual': the output x_L + N(d_L) "
                "already ends with ResiDual's own norm; valid choices: None or False"
            )

        if self.qk_norm != "none" and any(PLACEMENT_SLOTS[attn][0].qkv for attn, _ in layers):
            raise ValueError(
                f"SkipNormConfig.qk_norm={self.qk_norm!r} is not valid with a HybridNorm placement "
                f"(norm_position={self.norm_position!r}): HybridNorm already normalizes Q, K and V per head; "
                f"valid choices: none"
            )
        if self.parallel_shared_norm and not self.parallel_block:
            raise ValueError(
                "SkipNormConfig.parallel_shared_norm=True is not valid with parallel_block=False: there is no second "
                "branch to share the input norm with; set parallel_block=True"
            )
        if self.parallel_block:
            for layer, (attn, mlp) in enumerate(layers):
                bad = [p for p in (attn, mlp) if p in BLOCK_PLACEMENTS or PLACEMENT_SLOTS[p][0].post or PLACEMENT_SLOTS[p][1].post]
                if bad:
                    raise ValueError(
                        f"SkipNormConfig.parallel_block=True is not valid with placement {bad[0]!r} (block {layer}): a "
                        f"parallel block sums both branches onto one skip, so a norm after each sublayer's skip "
                        f"(post, pre_post, mix's post blocks, hybrid, b2t, resi_dual) has no place; valid placements: "
                        f"{', '.join(p for p, slots in PLACEMENT_SLOTS.items() if slots and not slots[0].post and not slots[1].post and p not in BLOCK_PLACEMENTS)}"
                    )
                if self.parallel_shared_norm and PLACEMENT_SLOTS[attn][0].pre != PLACEMENT_SLOTS[mlp][1].pre:
                    raise ValueError(
                        f"SkipNormConfig.parallel_shared_norm=True is not valid with block {layer}'s placements "
                        f"{attn!r} / {mlp!r}: one has an input norm and the other not, so there is nothing to share"
                    )
            if self.residual not in PARALLEL_RESIDUALS:
                raise ValueError(
                    f"SkipNormConfig.residual={self.residual!r} is not valid with parallel_block=True: a parallel block "
                    f"combines one skip with the sum of both branches; valid choices: "
                    f"{', '.join(r for r in PARALLEL_RESIDUALS if r in RESIDUALS)}"
                )
        if self.norm_depth_scaling:
            has_input_norm = any(PLACEMENT_SLOTS[attn][0].pre or PLACEMENT_SLOTS[mlp][1].pre for attn, mlp in layers)
            if not has_input_norm or self.norm_type == "none":
                raise ValueError(
                    f"SkipNormConfig.norm_depth_scaling=True is not valid with norm_position={self.norm_position!r}, "
                    f"norm_type={self.norm_type!r}: LayerNorm Scaling scales the output of input norms N_in, and this "
                    f"model has none; use a placement with an input norm (pre, sandwich, peri, subln, normformer, mix)"
                )
            if self.branch_init == "scaled_depth":
                raise ValueError(
                    "SkipNormConfig.branch_init='scaled_depth' is not valid with norm_depth_scaling=True: LayerNorm "
                    "Scaling (arXiv 2502.05795) replaces depth-scaled init, which would shrink deep branches twice; "
                    "valid choices: normal, zero"
                )
        if "subln" in used and self.residual == "deepnorm":
            raise ValueError(
                "SkipNormConfig.residual='deepnorm' is not valid with norm_position 'subln': DeepNet and Magneto both "
                "rescale the init of the same branch weights (beta vs gamma); pick one"
            )

    def resolve_residual_constants(self) -> None:
        """Fill the residual constants left `None` from the depth, so the saved config states the values used."""
        depth = self.num_hidden_layers
        if isinstance(depth, bool) or not isinstance(depth, int) or depth <= 0:
            return  # validate_skipnorm names the bad num_hidden_layers
        if self.residual_alpha is None:
            self.residual_alpha = deepnet_alpha(depth) if self.residual == "deepnorm" else 1.0
        if self.branch_init_gain is None and self.residual == "deepnorm":
            self.branch_init_gain = deepnet_beta(depth)
        if self.layerscale_init is None and self.residual == "layerscale":
            self.layerscale_init = cait_layerscale_init(depth)
        if isinstance(self.admin_omegas, tuple):
            self.admin_omegas = list(self.admin_omegas)

    def validate_residual_catalogue(self) -> None:
        """Cross-field checks of the residual catalogue: refuse combinations that do not mean anything, saying why."""
        for name in ("branch_init_gain", "layerscale_init"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                      or not math.isfinite(value) or value <= 0):
                raise ValueError(f"SkipNormConfig.{name}={value!r} is not valid; expected None or a finite float > 0")
        for name in ("residual_streams", "sinkhorn_iters"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"SkipNormConfig.{name}={value!r} is not valid; expected an integer >= 1")
        if not isinstance(self.hyper_dynamic, bool):
            raise ValueError(f"SkipNormConfig.hyper_dynamic={self.hyper_dynamic!r} is not valid; expected True or False")
        if self.admin_omegas is not None:
            expected = 2 * self.num_hidden_layers
            if not isinstance(self.admin_omegas, list) or len(self.admin_omegas) != expected or any(
                isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w) or w <= 0
                for w in self.admin_omegas
            ):
                raise ValueError(
                    f"SkipNormConfig.admin_omegas={self.admin_omegas!r} is not valid; expected None or a list of "
                    f"{expected} finite floats > 0 (one per sublayer: 2 * num_hidden_layers={self.num_hidden_layers})"
                )
            if self.residual != "admin":
                raise ValueError(
                    f"SkipNormConfig.admin_omegas is not valid with residual={self.residual!r}: only Admin uses them; "
                    f"valid choices: residual='admin' or admin_omegas=None"
                )
        if self.branch_init_gain is not None and self.branch_init != "normal":
            raise ValueError(
                f"SkipNormConfig.branch_init={self.branch_init!r} is not valid with branch_init_gain="
                f"{self.branch_init_gain!r}: both set the init of the branch output projections; valid choices: normal"
            )

        layers = [self.layer_norm_positions(i) for i in range(self.num_hidden_layers)]
        if self.residual in POST_LN_RESIDUALS:
            off = sorted({p for pair in layers for p in pair} - {"post"})
            if off:
                raise ValueError(
                    f"SkipNormConfig.residual={self.residual!r} is not valid with placements {off}: its formula "
                    f"N(w*x + F(x)) and its constants are for post-LN; valid choices: norm_position='post' (no "
                    f"per-sublayer overrides)"
                )
        if self.residual in STREAM_RESIDUALS and self.parallel_block:
            raise ValueError(
                f"SkipNormConfig.residual={self.residual!r} is not valid with parallel_block=True: its blocks wire "
                f"attention then MLP on a stream state; valid choices with a parallel block: add, none, scaled"
            )
        if self.residual in ("hyper", "mhc"):
            for layer, (attn, mlp) in enumerate(layers):
                bad = [p for p, sub in ((attn, 0), (mlp, 1)) if PLACEMENT_SLOTS[p][sub].post]
                if bad:
                    raise ValueError(
                        f"SkipNormConfig.norm_position={bad[0]!r} (block {layer}) is not valid with residual="
                        f"{self.residual!r}: hyper-connections mix several streams after each sublayer, so a norm "
                        f"after the skip has no single stream to normalize; valid choices: placements without a "
                        f"post norm, e.g. pre, sandwich, output, none"
                    )

    def validate_frontier_residuals(self) -> None:
        """Issue 15's fields: orthogonal updates, LAuReL and nGPT; refuse what does not mean anything, saying why."""
        if isinstance(self.orthogonal_eps, bool) or not isinstance(self.orthogonal_eps, (int, float)) or not (
                math.isfinite(self.orthogonal_eps) and self.orthogonal_eps > 0):
            raise ValueError(f"SkipNormConfig.orthogonal_eps={self.orthogonal_eps!r} is not valid; expected a finite "
                             f"float > 0 (the reference code's 1e-6)")
        _check_choice("laurel_variant", self.laurel_variant, LAUREL_VARIANTS)
        rank = self.laurel_rank
        if isinstance(rank, bool) or not isinstance(rank, int) or not 1 <= rank <= self.hidden_size:
            raise ValueError(f"SkipNormConfig.laurel_rank={rank!r} is not valid; expected an integer in [1, "
                             f"hidden_size={self.hidden_size}] (the rank r of LAuReL-LR's B A)")
        frac = self.frac_rate
        if isinstance(frac, bool) or not isinstance(frac, int) or frac < 1 or self.hidden_size % frac:
            raise ValueError(f"SkipNormConfig.frac_rate={frac!r} is not valid; expected an integer >= 1 that divides "
                             f"hidden_size={self.hidden_size} (Frac-Connections split the hidden state into that many "
                             f"equal fractions)")
        if self.residual == "frac":
            for layer in range(self.num_hidden_layers):
                for position, sub in zip(self.layer_norm_positions(layer), (0, 1)):
                    if PLACEMENT_SLOTS[position][sub].post:
                        raise ValueError(
                            f"SkipNormConfig.norm_position={position!r} (block {layer}) is not valid with residual="
                            f"'frac': Frac-Connections, like hyper-connections, write the sublayer output back through "
                            f"their depth connection, leaving no sum for a norm after the skip; valid choices: "
                            f"placements without a post norm, e.g. pre, sandwich, output, none")
        _check_choice("architecture", self.architecture, ARCHITECTURES)
        alpha = self.ngpt_alpha_init
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not (math.isfinite(alpha) and alpha > 0):
            raise ValueError(f"SkipNormConfig.ngpt_alpha_init={alpha!r} is not valid; expected a finite float > 0 "
                             f"(the paper's 0.05)")
        if self.architecture != "ngpt":
            return
        for field, (required, why) in NGPT_REQUIRED_FIELDS.items():
            value, accepted = getattr(self, field), required if isinstance(required, tuple) else (required,)
            # bool is an int subclass: False must not pass for 0.0, nor 1 for True
            if not any(value == ok and isinstance(value, bool) == isinstance(ok, bool) for ok in accepted):
                raise ValueError(f"SkipNormConfig.{field}={value!r} is not valid with architecture='ngpt': {why}; "
                                 f"valid choices: {', '.join(map(repr, accepted))}")
        if self.position_embedding not in NGPT_POSITION_EMBEDDINGS:
            raise ValueError(
                f"SkipNormConfig.position_embedding={self.position_embedding!r} is not valid with architecture='ngpt':"
                f" learned positions add an un-normalized vector to the unit-norm embeddings (the paper uses RoPE); "
                f"valid choices: {', '.join(NGPT_POSITION_EMBEDDINGS)}")
        if self.num_key_value_heads != self.num_attention_heads:
            raise ValueError(
                f"SkipNormConfig.num_key_value_heads={self.num_key_value_heads} is not valid with architecture='ngpt': "
                f"the paper's one s_qk scales q and k of every head alike, which grouped-query attention's fewer key "
                f"heads cannot share; valid choices: num_attention_heads={self.num_attention_heads}")

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
        (Foundation Transformers, arXiv 2210.06423, Sec. 2.2; torchscale's `subln` init)."""
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

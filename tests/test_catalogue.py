"""The norm catalogue (issue 3) against formulas written here from the papers, in float64, plus the whole grid.

Nothing below reuses the package's math: every norm, attention (RoPE, causal mask, Q/K/V norms, head scales, the
Sub-LN norm), the MLP and each placement's wiring is written out again, and only parameters are read from the
module under test. Papers: Sub-LN / Magneto 2210.06423, NormFormer 2110.09456, Mix-LN 2412.13795, HybridNorm
2503.04598, ResiDual 2304.14802, B2T 2206.00330, Peri-LN 2502.02732, LayerNorm Scaling 2502.05795, DyT 2503.10622,
Derf 2512.10938, ScaleNorm 1910.05895, SRMSNorm 2307.14995, parallel blocks (GPT-J / GPT-NeoX / PaLM 2204.02311).
"""

from __future__ import annotations

import itertools
import math
import sys
import time

import pytest
import torch
import torch.nn.functional as F

from hf_skipnorm import SkipNormConfig, SkipNormModel
from hf_skipnorm import configuration_skipnorm as cfg
from hf_skipnorm.modeling_skipnorm import SkipNormBlock

TINY = dict(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            intermediate_size=24, norm_eps=1e-5, max_position_embeddings=32, attn_implementation="eager")
NEW_POSITIONS = ["peri", "subln", "normformer", "hybrid", "hybrid_pre"]  # block-level placements added here
ALL_NORM_TYPES = ["layernorm", "rmsnorm", "scalenorm", "simple_rmsnorm", "dyt", "derf", "none"]


def config_for(position="pre", norm_type="rmsnorm", **overrides):
    return SkipNormConfig(**{**TINY, "norm_position": position, "norm_type": norm_type, **overrides})


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


# ---------------------------------------------------------------------------------------------- reference math
def ref_norm(norm_type, module, unit_offset=False):
    """Each norm's formula from its paper, with the module's parameters (an Identity slot is the identity)."""
    if isinstance(module, torch.nn.Identity) or norm_type == "none":
        return lambda x: x
    eps = getattr(module, "eps", None)
    offset = 1.0 if unit_offset else 0.0

    def layernorm(x):  # Ba et al. 2016
        mean = x.mean(-1, keepdim=True)
        var = ((x - mean) ** 2).mean(-1, keepdim=True)
        bias = module.bias if module.bias is not None else 0.0
        return (module.weight + offset) * (x - mean) / torch.sqrt(var + eps) + bias

    def rmsnorm(x):  # Zhang & Sennrich 2019
        return (module.weight + offset) * x / torch.sqrt((x**2).mean(-1, keepdim=True) + eps)

    def scalenorm(x):  # Nguyen & Salazar 2019: g x / max(||x||, eps)
        return module.scale * x / torch.clamp(torch.sqrt((x**2).sum(-1, keepdim=True)), min=eps)

    def simple_rmsnorm(x):  # TransNormerLLM: x / (||x|| / sqrt(d) + eps)
        return x / (torch.sqrt((x**2).sum(-1, keepdim=True)) / math.sqrt(x.shape[-1]) + eps)

    def dyt(x):  # Zhu et al. 2025: g tanh(a x) + b
        bias = module.bias if module.bias is not None else 0.0
        return (module.weight + offset) * torch.tanh(module.alpha * x) + bias

    def derf(x):  # Chen et al. 2025: g erf(a x + s) + b
        bias = module.bias if module.bias is not None else 0.0
        return (module.weight + offset) * torch.erf(module.alpha * x + module.shift) + bias

    formula = dict(layernorm=layernorm, rmsnorm=rmsnorm, scalenorm=scalenorm, simple_rmsnorm=simple_rmsnorm,
                   dyt=dyt, derf=derf)[norm_type]
    return formula


ROPE_INV_FREQ = None  # whole-stack tests set this to the model's buffer (see random_stack)


def ref_rope(seq_len, dim, base=10000.0):
    """cos/sin of angle p * base^(-2i/dim). The model keeps its inverse frequencies in a float32 buffer (as LLaMA
    does), which moves float64 angles by ~1e-8 relative; whole-stack tests read that buffer (random_stack) so
    that 1e-10 compares the wiring, not the buffer's precision. Block tests pass these exact angles in."""
    inv = ROPE_INV_FREQ.tolist() if ROPE_INV_FREQ is not None else [base ** (-2 * i / dim) for i in range(dim // 2)]
    angles = torch.tensor([[p * f for f in inv] for p in range(seq_len)], dtype=torch.float64)
    angles = torch.cat([angles, angles], -1)
    return angles.cos(), angles.sin()


def ref_rotate(x, cos, sin):
    half = x.shape[-1] // 2
    return x * cos + torch.cat([-x[..., half:], x[..., :half]], -1) * sin


def ref_attention(attn, x, config, qkv_norm=False, head_scale=False, sub_norm=False):
    """softmax(q k^T / sqrt(hd) + causal) v per head, with the catalogue's optional norms, in explicit loops.

    qk_norm per_head: one norm on each head's q and k vectors; full: one norm on the whole q (H*hd) / k (Hkv*hd);
    HybridNorm: per-head norms on q, k and v; NormFormer: head h's output times gamma_h; Sub-LN: a norm on the
    concatenated heads before o_proj. Norms act before RoPE.
    """
    nt, u = config.norm_type, config.norm_unit_offset
    B, T, _ = x.shape
    H, Hkv, hd = config.num_attention_heads, config.num_key_value_heads, config.head_dim
    cos, sin = ref_rope(T, hd)
    q, k, v = x @ attn.q_proj.weight.T, x @ attn.k_proj.weight.T, x @ attn.v_proj.weight.T
    qk = "per_head" if qkv_norm else config.qk_norm
    if qk == "full":
        q, k = ref_norm(nt, attn.q_norm, u)(q), ref_norm(nt, attn.k_norm, u)(k)
    out = torch.zeros(B, T, H * hd, dtype=x.dtype)
    for b in range(B):
        for h in range(H):
            g = h // (H // Hkv)
            qh, kh, vh = q[b, :, h * hd:(h + 1) * hd], k[b, :, g * hd:(g + 1) * hd], v[b, :, g * hd:(g + 1) * hd]
            if qk == "per_head":
                qh, kh = ref_norm(nt, attn.q_norm, u)(qh), ref_norm(nt, attn.k_norm, u)(kh)
            if qkv_norm:
                vh = ref_norm(nt, attn.v_norm, u)(vh)
            scores = ref_rotate(qh, cos, sin) @ ref_rotate(kh, cos, sin).T / math.sqrt(hd)
            scores = scores.masked_fill(torch.triu(torch.ones(T, T, dtype=torch.bool), 1), float("-inf"))
            head = torch.softmax(scores, -1) @ vh
            out[b, :, h * hd:(h + 1) * hd] = head * (attn.head_scale_norm.weight[h] if head_scale else 1.0)
    if sub_norm:
        out = ref_norm(nt, attn.sub_norm, u)(out)
    return out @ attn.o_proj.weight.T


def ref_mlp(mlp, x, config, sub_norm=False):
    """SwiGLU W_down N_sub(silu(W_gate x) * W_up x) (N_sub only for Sub-LN / NormFormer)."""
    hidden = F.silu(x @ mlp.gate_proj.weight.T) * (x @ mlp.up_proj.weight.T)
    if sub_norm:
        hidden = ref_norm(config.norm_type, mlp.sub_norm, config.norm_unit_offset)(hidden)
    return hidden @ mlp.down_proj.weight.T


def ref_sublayer(position, sublayer, x, f, n_pre, n_out, n_post):
    """One sublayer's wiring, per placement, as the papers write it (residual: plain add)."""
    rules = {
        "pre": lambda: x + f(n_pre(x)),
        "post": lambda: n_post(x + f(x)),
        "sandwich": lambda: x + n_out(f(n_pre(x))),
        "peri": lambda: x + n_out(f(n_pre(x))),  # Peri-LN: norm around the module, input and output
        "output": lambda: x + n_out(f(x)),
        "pre_post": lambda: n_post(x + f(n_pre(x))),
        "none": lambda: x + f(x),
        "subln": lambda: x + f(n_pre(x)),  # the sub norm sits inside f
        # NormFormer: attention x + LN(HeadScale(MHA(LN x))); FFN x + W2 LN(act(W1 LN x)) (sub norm inside f)
        "normformer": (lambda: x + n_out(f(n_pre(x)))) if sublayer == "attn" else (lambda: x + f(n_pre(x))),
        # HybridNorm: X' = Norm(X + MHA_qkvnorm(X)); Y = X' + FFN(X')
        "hybrid": (lambda: n_post(x + f(x))) if sublayer == "attn" else (lambda: x + f(x)),
        "hybrid_pre": lambda: x + f(n_pre(x)),  # HybridNorm*'s first block: pre-norm, QKV-norm inside f
    }
    return rules[position]()


def ref_block(block, config, x, attn_position, mlp_position):
    nt = config.norm_type
    def norms(prefix):
        return [ref_norm(nt, getattr(block, f"{prefix}_{slot}_norm"), config.norm_unit_offset)
                for slot in ("pre", "out", "post")]
    qkv = attn_position in ("hybrid", "hybrid_pre")
    attn = lambda u: ref_attention(block.self_attn, u, config, qkv_norm=qkv,  # noqa: E731
                                   head_scale=attn_position == "normformer", sub_norm=attn_position == "subln")
    mlp = lambda u: ref_mlp(block.mlp, u, config, sub_norm=mlp_position in ("subln", "normformer"))  # noqa: E731
    h = ref_sublayer(attn_position, "attn", x, attn, *norms("attn"))
    return ref_sublayer(mlp_position, "mlp", h, mlp, *norms("mlp"))


def randomize_(module, matrix_std=0.3):
    """Random values everywhere (norm gains, DyT alphas, head scales included) so a skipped factor cannot hide.

    Whole stacks use a smaller `matrix_std`: with std 0.3 the attention logits of deep post-LN stacks grow large
    enough that float64 round-off alone, amplified by the softmax, reaches 1e-10.
    """
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.endswith(("alpha", "scale")):
                p.copy_(torch.rand_like(p) * 0.5 + 0.5)  # DyT/Derf alpha, ScaleNorm g: positive and O(1)
            elif p.dim() == 1:
                p.copy_(torch.randn_like(p) * 0.3 + 1.0)
            else:
                p.copy_(torch.randn_like(p) * matrix_std)


def causal_mask(T, dtype):
    return torch.full((T, T), torch.finfo(dtype).min, dtype=dtype).triu(1)[None, None]


def run_block(block, config, x):
    cos, sin = ref_rope(x.shape[1], config.head_dim)
    return block(x, attention_mask=causal_mask(x.shape[1], x.dtype),
                 position_embeddings=(cos[None].to(x.dtype), sin[None].to(x.dtype)))


def assert_rel(actual, expected, tol):
    """Relative error of the whole tensor: ||a - e|| / ||e||."""
    err = ((actual.double() - expected.double()).norm() / expected.double().norm().clamp(min=1e-30)).item()
    assert err <= tol, f"relative error {err:.3g} > {tol}"


# ---------------------------------------------------------------------------------------------- block formulas
@pytest.mark.parametrize("norm_type", ["layernorm", "rmsnorm", "dyt"])
@pytest.mark.parametrize("position", NEW_POSITIONS)
def test_new_placement_block_matches_formula(position, norm_type):
    config = config_for(position, norm_type)
    block = SkipNormBlock(config, 0).double()
    randomize_(block)
    x = torch.randn(2, 5, 16, dtype=torch.float64)
    assert_rel(run_block(block, config, x), ref_block(block, config, x, position, position), 1e-10)


@pytest.mark.parametrize("norm_type", ALL_NORM_TYPES)
def test_every_norm_type_in_a_sandwich_block_matches_formula(norm_type):
    config = config_for("sandwich", norm_type)
    block = SkipNormBlock(config, 0).double()
    randomize_(block)
    x = torch.randn(2, 5, 16, dtype=torch.float64)
    assert_rel(run_block(block, config, x), ref_block(block, config, x, "sandwich", "sandwich"), 1e-10)


@pytest.mark.parametrize("norm_type", ["layernorm", "rmsnorm", "dyt", "derf"])
def test_unit_offset_gains_in_block(norm_type):
    config = config_for("normformer", norm_type, norm_unit_offset=True, qk_norm="none")
    block = SkipNormBlock(config, 0).double()
    randomize_(block)
    x = torch.randn(2, 5, 16, dtype=torch.float64)
    assert_rel(run_block(block, config, x), ref_block(block, config, x, "normformer", "normformer"), 1e-10)


@pytest.mark.parametrize("qk_norm", ["per_head", "full"])
def test_qk_norm_matches_formula(qk_norm):
    config = config_for("pre", "rmsnorm", qk_norm=qk_norm)
    block = SkipNormBlock(config, 0).double()
    expected_dims = {"per_head": (4, 4), "full": (16, 8)}[qk_norm]  # (q, k): head_dim, or H*hd and Hkv*hd
    assert (block.self_attn.q_norm.weight.numel(), block.self_attn.k_norm.weight.numel()) == expected_dims
    randomize_(block)
    x = torch.randn(2, 5, 16, dtype=torch.float64)
    assert_rel(run_block(block, config, x), ref_block(block, config, x, "pre", "pre"), 1e-10)


@pytest.mark.parametrize("shared", [False, True])
@pytest.mark.parametrize("position", ["pre", "sandwich", "normformer"])
def test_parallel_block_matches_formula(position, shared):
    """GPT-NeoX: x + Attn(N1(x)) + MLP(N2(x)); GPT-J / Phi: x + Attn(N(x)) + MLP(N(x)); out norms per branch."""
    config = config_for(position, "layernorm", parallel_block=True, parallel_shared_norm=shared)
    model = SkipNormModel(config).double()
    block = model.layers[0]
    randomize_(block)
    nt = "layernorm"
    x = torch.randn(2, 5, 16, dtype=torch.float64)
    n_attn = ref_norm(nt, block.shared_pre_norm if shared else block.attn_pre_norm)
    n_mlp = ref_norm(nt, block.shared_pre_norm if shared else block.mlp_pre_norm)
    attn = ref_attention(block.self_attn, n_attn(x), config, head_scale=position == "normformer")
    mlp = ref_mlp(block.mlp, n_mlp(x), config, sub_norm=position == "normformer")
    expected = x + ref_norm(nt, block.attn_out_norm)(attn) + ref_norm(nt, block.mlp_out_norm)(mlp)
    assert_rel(run_block(block, config, x), expected, 1e-10)
    if shared:
        assert isinstance(block.attn_pre_norm, torch.nn.Identity) and isinstance(block.mlp_pre_norm, torch.nn.Identity)


def test_b2t_block_matches_formula():
    """B2T (2206.00330): h = LN(x + Attn(x)); out = LN(h + FFN(h) + x)."""
    config = config_for("b2t", "layernorm")
    model = SkipNormModel(config).double()
    block = model.layers[0]
    randomize_(block)
    x = torch.randn(2, 5, 16, dtype=torch.float64)
    h = ref_norm("layernorm", block.attn_post_norm)(x + ref_attention(block.self_attn, x, config))
    expected = ref_norm("layernorm", block.mlp_post_norm)(h + ref_mlp(block.mlp, h, config) + x)
    assert_rel(run_block(block, config, x), expected, 1e-10)


def embed(model, ids):
    return model.embed_tokens.weight[ids]


@pytest.fixture
def random_stack(monkeypatch):
    """A float64 model of `config` with random weights, and token ids; the reference RoPE reads its inv_freq."""
    def build(config):
        model = SkipNormModel(config).double().eval()
        monkeypatch.setattr(sys.modules[__name__], "ROPE_INV_FREQ", model.embed_positions.inv_freq)
        randomize_(model, matrix_std=0.15)
        return model, torch.randint(0, 50, (2, 6))
    return build


def test_resi_dual_whole_stack_matches_formula(random_stack):
    """ResiDual (2304.14802): per sublayer x <- LN(x + F(x)), d <- d + F(x), x_1 = d_1 = embeddings; out x + LN(d)."""
    config = config_for("resi_dual", "layernorm", num_hidden_layers=3)
    model, ids = random_stack(config)
    x = d = embed(model, ids)
    for block in model.layers:
        a = ref_attention(block.self_attn, x, config)
        x, d = ref_norm("layernorm", block.attn_post_norm)(x + a), d + a
        m = ref_mlp(block.mlp, x, config)
        x, d = ref_norm("layernorm", block.mlp_post_norm)(x + m), d + m
    expected = x + ref_norm("layernorm", model.residual_stream.dual_final_norm)(d)
    assert isinstance(model.final_norm, torch.nn.Identity)
    assert_rel(model(ids).last_hidden_state, expected, 1e-10)


@pytest.mark.parametrize("fields", [
    dict(norm_position="resi_dual"), dict(norm_position="b2t"), dict(norm_position="hybrid"),
    dict(norm_position="normformer"), dict(norm_position="subln", qk_norm="full"),
    dict(norm_position="pre", parallel_block=True, parallel_shared_norm=True, qk_norm="per_head"),
], ids=lambda f: "-".join(str(v) for v in f.values()))
def test_cached_generation_equals_uncached(fields):
    """The KV cache sees normalized keys/values exactly as a full forward does, in every rewired block."""
    from hf_skipnorm import SkipNormForCausalLM
    model = SkipNormForCausalLM(SkipNormConfig(**{**TINY, "norm_type": "layernorm", **fields})).double().eval()
    ids = torch.randint(0, 50, (2, 4))
    cached = model.generate(ids, max_new_tokens=4, do_sample=False, use_cache=True, pad_token_id=0)
    uncached = model.generate(ids, max_new_tokens=4, do_sample=False, use_cache=False, pad_token_id=0)
    assert torch.equal(cached, uncached)
    step_logits = model(cached[:, :-1], use_cache=True).logits
    assert torch.isfinite(step_logits).all()


@pytest.mark.parametrize("position,parallel", [("resi_dual", False), ("b2t", False), ("pre", True)])
def test_gradient_checkpointing_gives_the_same_gradients_in_rewired_blocks(position, parallel):
    from hf_skipnorm import SkipNormForCausalLM
    config = config_for(position, "layernorm", parallel_block=parallel)
    plain = SkipNormForCausalLM(config).double().train()
    ckpt = SkipNormForCausalLM(config).double().train()
    ckpt.load_state_dict(plain.state_dict())
    ckpt.activation_checkpointing_enable()  # the v5 name of gradient_checkpointing_enable
    ids = torch.randint(0, 50, (2, 6))
    plain(ids, labels=ids).loss.backward()
    ckpt(ids, labels=ids).loss.backward()
    for (name, a), (_, b) in zip(plain.named_parameters(), ckpt.named_parameters()):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-10, atol=1e-12, msg=name)


@pytest.mark.parametrize("ratio,num_layers,post_layers", [(0.25, 4, 1), (0.5, 4, 2), (0.25, 12, 3), (0.25, 32, 8),
                                                          (0.25, 3, 0), (1.0, 4, 4)])
def test_mix_ln_split_index_is_floor_alpha_l(ratio, num_layers, post_layers):
    """Mix-LN: post-LN on the first floor(alpha * L) layers (alpha = 0.25 in the paper; its 12-layer 71M run uses 3)."""
    config = config_for("mix", mix_ratio=ratio, num_hidden_layers=num_layers)
    assert config.mix_post_layers == math.floor(ratio * num_layers) == post_layers
    assert [config.layer_norm_positions(i) for i in range(num_layers)] == (
        [("post", "post")] * post_layers + [("pre", "pre")] * (num_layers - post_layers))


def test_mix_ln_stack_matches_formula(random_stack):
    config = config_for("mix", "rmsnorm", num_hidden_layers=4, mix_ratio=0.5)
    assert config.mix_ratio == 0.5 and SkipNormConfig().mix_ratio == 0.25  # the paper's default alpha
    model, ids = random_stack(config)
    h = embed(model, ids)
    for layer, block in enumerate(model.layers):
        position = "post" if layer < 2 else "pre"
        h = ref_block(block, config, h, position, position)
    expected = ref_norm("rmsnorm", model.final_norm)(h)  # the last block is pre-LN: a final norm is implied
    assert_rel(model(ids).last_hidden_state, expected, 1e-10)


def test_hybridnorm_star_as_a_list_matches_formula(random_stack):
    """HybridNorm* = first block pre-norm (QKV-norm kept), the rest HybridNorm; final norm (OLMo's ln_f)."""
    positions = ["hybrid_pre", "hybrid", "hybrid"]
    config = config_for(positions, "rmsnorm", num_hidden_layers=3)
    model, ids = random_stack(config)
    h = embed(model, ids)
    for block, position in zip(model.layers, positions):
        h = ref_block(block, config, h, position, position)
    expected = ref_norm("rmsnorm", model.final_norm)(h)
    assert_rel(model(ids).last_hidden_state, expected, 1e-10)


def test_peri_ln_stack_normalizes_embeddings_and_matches_formula(random_stack):
    config = config_for("peri", "layernorm")
    assert config.embedding_norm is True and config.use_final_norm is True
    model, ids = random_stack(config)
    h = ref_norm("layernorm", model.embedding_norm)(embed(model, ids))
    for block in model.layers:
        h = ref_block(block, config, h, "peri", "peri")
    assert_rel(model(ids).last_hidden_state, ref_norm("layernorm", model.final_norm)(h), 1e-10)


def test_layernorm_scaling_stack_matches_formula(random_stack):
    """LayerNorm Scaling: block l's input norms output LN(x) / sqrt(l), l = 1..L; the final norm is not scaled."""
    config = config_for("pre", "layernorm", num_hidden_layers=3, norm_depth_scaling=True)
    model, ids = random_stack(config)
    h = embed(model, ids)
    for layer, block in enumerate(model.layers):
        scale = 1.0 / math.sqrt(layer + 1)  # l = layer + 1
        h = h + ref_attention(block.self_attn, scale * ref_norm("layernorm", block.attn_pre_norm)(h), config)
        h = h + ref_mlp(block.mlp, scale * ref_norm("layernorm", block.mlp_pre_norm)(h), config)
    assert_rel(model(ids).last_hidden_state, ref_norm("layernorm", model.final_norm)(h), 1e-10)


def test_layernorm_scaling_factor_is_written_out_independently():
    config = config_for("pre", "rmsnorm", num_hidden_layers=6, norm_depth_scaling=True)
    model = SkipNormModel(config)
    assert [b.attn_pre_norm.output_scale for b in model.layers] == [1 / math.sqrt(l) for l in range(1, 7)]
    x = torch.randn(3, 16)
    block = model.layers[3]  # l = 4: output halves
    torch.testing.assert_close(block.attn_pre_norm(x),
                               0.5 * block.attn_pre_norm.weight * x / torch.sqrt((x**2).mean(-1, keepdim=True) + 1e-5))


# ---------------------------------------------------------------------------------------------- depth constants
@pytest.mark.parametrize("num_layers", [6, 12, 24, 48, 96])
def test_magneto_gamma_is_sqrt_log_2l(num_layers):
    """Foundation Transformers Sec. 2.2: gamma = sqrt(log 2N) for encoder-only / decoder-only (torchscale subln)."""
    for is_causal in (True, False):
        config = config_for("subln", num_hidden_layers=num_layers, is_causal=is_causal)
        assert config.subln_init_gain == pytest.approx(math.sqrt(math.log(2 * num_layers)), rel=1e-15)
    assert config_for("subln", num_hidden_layers=12).subln_init_gain == pytest.approx(1.7827, abs=1e-4)


def test_magneto_gamma_scales_the_branch_weights_at_init():
    config = config_for("subln", hidden_size=64, num_attention_heads=4, num_key_value_heads=4, intermediate_size=128,
                        num_hidden_layers=8, initializer_range=0.02)
    gamma = math.sqrt(math.log(16))
    model = SkipNormModel(config)

    def std(name):
        return torch.cat([layer.get_submodule(name).weight.flatten() for layer in model.layers]).std().item()

    for name in ("self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"):
        assert std(name) == pytest.approx(0.02 * gamma, rel=0.05), name
    for name in ("self_attn.q_proj", "self_attn.k_proj"):  # Q and K keep the plain init
        assert std(name) == pytest.approx(0.02, rel=0.05), name
    pre = SkipNormModel(config_for("pre", hidden_size=64, num_attention_heads=4, num_key_value_heads=4,
                                   intermediate_size=128, num_hidden_layers=8))
    assert torch.cat([l.self_attn.v_proj.weight.flatten() for l in pre.layers]).std().item() == pytest.approx(0.02, rel=0.05)


def test_depth_constants_survive_save_and_from_pretrained(tmp_path):
    """Constants are Python floats computed from the config, so meta-device loading cannot wipe them."""
    config = config_for(["subln", "pre", "pre", "subln"], "dyt", num_hidden_layers=4, norm_depth_scaling=True,
                        dyt_attn_alpha_init=0.8, dyt_alpha_init=0.2)
    model = SkipNormModel(config).eval()
    model.save_pretrained(tmp_path)
    loaded = SkipNormModel.from_pretrained(tmp_path, attn_implementation="eager").eval()
    for layer, block in enumerate(loaded.layers):
        assert block.attn_pre_norm.output_scale == 1 / math.sqrt(layer + 1)
        assert block.self_attn.init_gain == (math.sqrt(math.log(8)) if layer in (0, 3) else 1.0)
        assert block.attn_pre_norm.alpha_init == 0.8 and block.mlp_pre_norm.alpha_init == 0.2
    mix = SkipNormModel(config_for("mix", num_hidden_layers=8))
    mix.save_pretrained(tmp_path / "mix")
    mix_loaded = SkipNormModel.from_pretrained(tmp_path / "mix", attn_implementation="eager")
    assert [type(b.attn_post_norm).__name__ != "Identity" for b in mix_loaded.layers] == [True, True] + [False] * 6
    ids = torch.randint(0, 50, (2, 5))
    torch.testing.assert_close(loaded(ids).last_hidden_state, model(ids).last_hidden_state, rtol=0, atol=0)
    torch.testing.assert_close(mix_loaded(ids).last_hidden_state, mix(ids).last_hidden_state, rtol=0, atol=0)


# ---------------------------------------------------------------------------------------------- invalid combinations
@pytest.mark.parametrize("fields,words", [
    (dict(norm_position="hybrid", qk_norm="full"), ["qk_norm", "HybridNorm already normalizes"]),
    (dict(norm_position="post", parallel_block=True), ["parallel_block", "'post'"]),
    (dict(norm_position="hybrid", parallel_block=True), ["parallel_block", "'hybrid'"]),
    (dict(norm_position="pre", parallel_shared_norm=True), ["parallel_shared_norm", "parallel_block=False"]),
    (dict(norm_position="pre", mlp_norm_position="output", parallel_block=True, parallel_shared_norm=True),
     ["parallel_shared_norm", "nothing to share"]),
    (dict(norm_position=["mix", "pre"]), ["norm_position[0]", "whole stack"]),
    (dict(norm_position=["resi_dual", "resi_dual"]), ["whole stack"]),
    (dict(norm_position="peri", mlp_norm_position="pre"), ["overrides", "peri"]),
    (dict(norm_position="pre", attn_norm_position="resi_dual"), ["attn_norm_position", "whole stack"]),
    (dict(norm_position="b2t", mlp_norm_position="pre"), ["b2t", "wire both sublayers"]),
    (dict(norm_position="b2t", residual="scaled"), ["residual", "B2T and ResiDual"]),
    (dict(norm_position="resi_dual", final_norm=True), ["final_norm", "ResiDual"]),
    (dict(norm_position="post", norm_depth_scaling=True), ["norm_depth_scaling", "input norms"]),
    (dict(norm_position="pre", norm_depth_scaling=True, branch_init="scaled_depth"), ["branch_init", "2502.05795"]),
    (dict(norm_type="scalenorm", norm_unit_offset=True), ["norm_unit_offset", "per-channel gain"]),
    (dict(norm_type="simple_rmsnorm", norm_unit_offset=True), ["norm_unit_offset"]),
    (dict(qk_norm="both"), ["qk_norm", "per_head"]),
    (dict(mix_ratio=1.5), ["mix_ratio"]),
    (dict(dyt_alpha_init=0.0), ["dyt_alpha_init"]),
    (dict(norm_type="dyt", dyt_attn_alpha_init=-1.0), ["dyt_attn_alpha_init"]),
])
def test_meaningless_combinations_raise_value_error_with_the_reason(fields, words):
    with pytest.raises(ValueError) as info:
        SkipNormConfig(**{**TINY, **fields})
    message = str(info.value)
    assert "SkipNormConfig." in message
    for word in words:
        assert word in message, (word, message)


def test_hybrid_star_and_b2t_lists_and_overrides_that_mean_something_build():
    for fields in (dict(norm_position=["b2t", "pre"]), dict(norm_position=["hybrid_pre", "hybrid"]),
                   dict(norm_position="subln", mlp_norm_position="pre"), dict(norm_position="hybrid",
                                                                             mlp_norm_position="pre"),
                   dict(norm_position="normformer", parallel_block=True, parallel_shared_norm=True)):
        model = SkipNormModel(SkipNormConfig(**{**TINY, **fields}))
        model(torch.randint(0, 50, (1, 4))).last_hidden_state.sum().backward()


# ---------------------------------------------------------------------------------------------- the whole grid
def grid_cells():
    """norm_position x norm_type x residual x parallel_block, residuals read at test time (issue 4 adds some)."""
    return list(itertools.product(cfg.NORM_POSITIONS, cfg.NORM_TYPES, cfg.RESIDUALS, (False, True)))


def relative_error(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm().clamp(min=1e-30)).item()


def check_cell(cell: str, fields: dict, ids: torch.Tensor) -> tuple[str, str | None]:
    """("built" | "refused", failure or None) for one grid cell: it builds and runs forward/backward with finite
    values, float32 within 1e-5 and bfloat16 within 2e-2 (relative, whole tensor) of float64, or raises ValueError
    naming a SkipNormConfig field."""
    try:
        config = SkipNormConfig(**{**TINY, **fields})
    except ValueError as error:
        unclear = "SkipNormConfig." not in str(error) or "not valid" not in str(error)
        return "refused", f"{cell}: unclear error {error}" if unclear else None
    try:
        torch.manual_seed(0)
        model = SkipNormModel(config).double()
        torch.manual_seed(0)
        reference = model(ids).last_hidden_state
        reference.square().mean().backward()
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        if not torch.isfinite(reference).all() or not all(torch.isfinite(g).all() for g in grads) or not grads:
            return "built", f"{cell}: non-finite output or gradient"
        with torch.no_grad():  # each forward from the same seed: layer drop draws the same masks in every dtype
            torch.manual_seed(0)
            single = model.float()(ids).last_hidden_state
            # bfloat16 is judged on its arithmetic: against float64 run on the same bf16-rounded weights
            # (rounding the weights themselves is a quantization, not a forward-pass error).
            torch.manual_seed(0)
            half = model.to(torch.bfloat16)(ids).last_hidden_state
            torch.manual_seed(0)
            rounded_reference = model.double()(ids).last_hidden_state
        errors = relative_error(single, reference), relative_error(half, rounded_reference)
        if not errors[0] <= 1e-5 or not errors[1] <= 2e-2:
            return "built", f"{cell}: float32 rel err {errors[0]:.2e}, bfloat16 rel err {errors[1]:.2e}"
        return "built", None
    except ValueError as error:  # a refusal from a module's constructor is also a clear refusal
        return "refused", None if "SkipNormConfig." in str(error) else f"{cell}: unclear error {error}"
    except Exception as error:  # noqa: BLE001 -- any other exception is exactly what this test must report
        return "built", f"{cell}: {type(error).__name__}: {error}"


def test_whole_grid_builds_and_runs_or_raises_a_clear_value_error():
    """Every cell of norm_position x norm_type x residual x parallel_block passes `check_cell`.

    Default init, not randomized: the precision claim is about models as they are trained. One thread, tiny dims.
    """
    start = time.perf_counter()
    counts, failures = {"built": 0, "refused": 0}, []
    ids = torch.randint(0, 50, (2, 6))
    for position, norm_type, residual, parallel in grid_cells():
        cell = f"{position}-{norm_type}-{residual}-{'parallel' if parallel else 'sequential'}"
        kind, failure = check_cell(cell, {"norm_position": position, "norm_type": norm_type, "residual": residual,
                                          "parallel_block": parallel}, ids)
        counts[kind] += 1
        if failure:
            failures.append(failure)
    built, refused = counts["built"], counts["refused"]
    elapsed = time.perf_counter() - start
    print(f"\ngrid: {built + refused} cells, {built} built, {refused} refused, {elapsed:.1f}s")
    assert not failures, f"{len(failures)} bad cells:\n" + "\n".join(failures[:40])


def test_refused_placements_are_refused_across_the_grid_with_their_reason():
    """Placements named but not built (`REFUSED_NORM_POSITIONS`, issue 15's SpanNorm) are refused in every cell of
    norm_type x residual x parallel_block, as the string, as a per-layer entry and as a per-sublayer override, and the
    error gives the reason, not just "unknown"."""
    ids = torch.randint(0, 50, (2, 6))
    assert set(cfg.REFUSED_NORM_POSITIONS) == {"span"} and not set(cfg.REFUSED_NORM_POSITIONS) & set(cfg.NORM_POSITIONS)
    for position, reason in cfg.REFUSED_NORM_POSITIONS.items():
        for norm_type, residual, parallel in itertools.product(cfg.NORM_TYPES, cfg.RESIDUALS, (False, True)):
            cell = f"{position}-{norm_type}-{residual}-{'parallel' if parallel else 'sequential'}"
            assert check_cell(cell, {"norm_position": position, "norm_type": norm_type, "residual": residual,
                                     "parallel_block": parallel}, ids) == ("refused", None), cell
        for fields in ({"norm_position": position}, {"norm_position": ["pre", position]},
                       {"attn_norm_position": position}, {"mlp_norm_position": ["post", position]}):
            with pytest.raises(ValueError) as info:
                SkipNormConfig(**{**TINY, **fields})
            assert reason in str(info.value) and repr(position) in str(info.value), str(info.value)
    assert "arXiv 2601.22580" in cfg.REFUSED_NORM_POSITIONS["span"]


# Issue 15's fields, each across every placement, sequential and parallel, RMSNorm, with the residuals it goes with
# (the residual axis of the grid above already holds `attn_res`); the slow variant crosses them with a residual from
# each family (single stream, post-LN, several streams, history, depth attention).
FRONTIER_FIELDS = {
    "value_residual=fixed": dict(value_residual="fixed"), "value_residual=learned": dict(value_residual="learned"),
    "value_residual=per_token": dict(value_residual="per_token"), "unet_skips": dict(unet_skips=True),
    "layer_drop": dict(layer_drop=0.2), "qk_norm=per_head_gains": dict(qk_norm="per_head_gains"),
    "dense_dilation=2,period=2": dict(dense_dilation=2, dense_period=2),
    "attn_res_blocks=1": dict(attn_res_blocks=1),
    "laurel_variant=pa": dict(laurel_variant="pa"), "laurel_rw_weights=sigmoid": dict(laurel_rw_weights="sigmoid"),
}
FRONTIER_RESIDUALS = {"dense_dilation=2,period=2": ("dense",), "attn_res_blocks=1": ("attn_res",),
                      "laurel_variant=pa": ("laurel",), "laurel_rw_weights=sigmoid": ("laurel",)}


def frontier_grid(residuals_of):
    counts, failures = {"built": 0, "refused": 0}, []
    ids = torch.randint(0, 50, (2, 6))
    for name, fields in FRONTIER_FIELDS.items():
        for position, residual, parallel in itertools.product(cfg.NORM_POSITIONS, residuals_of(name), (False, True)):
            cell = f"{name}-{position}-{residual}-{'parallel' if parallel else 'sequential'}"
            kind, failure = check_cell(cell, {**fields, "norm_position": position, "residual": residual,
                                              "parallel_block": parallel}, ids)
            counts[kind] += 1
            if failure:
                failures.append(failure)
    print(f"\nissue 15 grid: {counts}")
    assert counts["built"] > 0 and counts["refused"] > 0
    assert not failures, f"{len(failures)} bad cells:\n" + "\n".join(failures[:40])


def test_issue_15_fields_across_the_grid_build_and_run_or_raise_a_clear_value_error():
    frontier_grid(lambda name: FRONTIER_RESIDUALS.get(name, ("add", "attn_res")))


@pytest.mark.slow
def test_issue_15_fields_across_residual_families():
    frontier_grid(lambda name: ("add", "deepnorm", "hyper", "mhc", "dense", "attn_res"))

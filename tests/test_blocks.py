"""Every foundation cell of norm_position x norm_type x residual against the formula, written here from the papers.

Nothing below reuses the package's math: norms, attention (with RoPE and a causal mask), the MLP and the placement
rules are written out again in float64, and only the parameters are read from the module under test.
"""

import math

import pytest
import torch
import torch.nn.functional as F

from hf_skipnorm import SkipNormConfig, SkipNormModel
from hf_skipnorm.modeling_skipnorm import SkipNormBlock

FOUNDATION_POSITIONS = ["pre", "post", "sandwich", "output", "pre_post", "none"]
FOUNDATION_NORMS = ["layernorm", "rmsnorm", "none"]
FOUNDATION_RESIDUALS = ["add", "none", "scaled"]
ALPHA, MULT = 0.7, 1.3  # residual="scaled" constants, deliberately not 1

# The placement rules, from ../shared/VARIANTS.md. N maps slot name -> norm; R is the residual combine.
PLACEMENT_RULES = {
    "pre": lambda x, f, N, R: R(x, f(N["pre"](x))),
    "post": lambda x, f, N, R: N["post"](R(x, f(x))),
    "sandwich": lambda x, f, N, R: R(x, N["out"](f(N["pre"](x)))),
    "output": lambda x, f, N, R: R(x, N["out"](f(x))),
    "pre_post": lambda x, f, N, R: N["post"](R(x, f(N["pre"](x)))),
    "none": lambda x, f, N, R: R(x, f(x)),
}
SLOTS_USED = {"pre": {"pre"}, "post": {"post"}, "sandwich": {"pre", "out"}, "output": {"out"},
              "pre_post": {"pre", "post"}, "none": set()}
RESIDUAL_RULES = {
    "add": lambda x, y: x + y,
    "none": lambda x, y: y,
    "scaled": lambda x, y: ALPHA * x + MULT * y,
}


def config_for(position="pre", norm_type="rmsnorm", residual="add", **overrides):
    fields = dict(
        vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        intermediate_size=24, norm_position=position, norm_type=norm_type, residual=residual,
        residual_alpha=ALPHA if residual == "scaled" else 1.0, branch_multiplier=MULT if residual == "scaled" else 1.0,
        norm_eps=1e-5, max_position_embeddings=32, attn_implementation="eager",
    )
    fields.update(overrides)
    return SkipNormConfig(**fields)


# ---------------------------------------------------------------------------------------------- reference math
def ref_norm(norm_type, module, unit_offset=False):
    """The norm formula (Ba et al. 2016; Zhang & Sennrich 2019) with the module's parameters."""
    if norm_type == "none":
        return lambda x: x
    gain = module.weight + (1.0 if unit_offset else 0.0)
    eps = module.eps
    if norm_type == "layernorm":
        bias = module.bias if module.bias is not None else torch.zeros_like(gain)

        def layernorm(x):
            mean = x.mean(-1, keepdim=True)
            var = ((x - mean) ** 2).mean(-1, keepdim=True)
            return gain * (x - mean) / torch.sqrt(var + eps) + bias

        return layernorm
    return lambda x: gain * x / torch.sqrt((x**2).mean(-1, keepdim=True) + eps)


def ref_rope(seq_len, dim, base=10000.0):
    """cos/sin of angle p * base^(-2i/dim) for the half-split rotation convention (RoFormer, as in LLaMA).

    The frequencies are rounded to float32 as LLaMA stores them (checkpoint parity depends on it); the angles and
    everything after are float64.
    """
    inv = [float(torch.tensor(base ** (-2 * i / dim), dtype=torch.float32)) for i in range(dim // 2)]
    angles = torch.tensor([[p * f for f in inv] for p in range(seq_len)], dtype=torch.float64)  # (T, dim/2)
    angles = torch.cat([angles, angles], -1)
    return angles.cos(), angles.sin()


def ref_rotate(x, cos, sin):  # x: (T, hd) for one head
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], -1)
    return x * cos + rotated * sin


def ref_attention(attn, x, cos, sin, causal=True):
    """softmax(q k^T / sqrt(hd) + mask) v per head, written with explicit loops over batch and heads."""
    B, T, _ = x.shape
    H, Hkv, hd = attn.config.num_attention_heads, attn.config.num_key_value_heads, attn.head_dim
    q = x @ attn.q_proj.weight.T
    k = x @ attn.k_proj.weight.T
    v = x @ attn.v_proj.weight.T
    out = torch.zeros(B, T, H * hd, dtype=x.dtype)
    for b in range(B):
        for h in range(H):
            g = h // (H // Hkv)  # the KV head this query head shares
            qh = ref_rotate(q[b, :, h * hd:(h + 1) * hd], cos, sin)
            kh = ref_rotate(k[b, :, g * hd:(g + 1) * hd], cos, sin)
            vh = v[b, :, g * hd:(g + 1) * hd]
            scores = qh @ kh.T / math.sqrt(hd)
            if causal:
                scores = scores.masked_fill(torch.triu(torch.ones(T, T, dtype=torch.bool), 1), float("-inf"))
            out[b, :, h * hd:(h + 1) * hd] = torch.softmax(scores, -1) @ vh
    return out @ attn.o_proj.weight.T


def ref_mlp(mlp, x):
    """SwiGLU: W_down (silu(W_gate x) * W_up x), Shazeer 2020."""
    return (F.silu(x @ mlp.gate_proj.weight.T) * (x @ mlp.up_proj.weight.T)) @ mlp.down_proj.weight.T


def ref_block(block, config, x, attn_position, mlp_position):
    cos, sin = ref_rope(x.shape[1], config.head_dim)
    def norm(name):  # looked up only when the rule uses the slot: absent slots are Identity modules
        return lambda u: ref_norm(config.norm_type, getattr(block, name), config.norm_unit_offset)(u)

    R = RESIDUAL_RULES[config.residual]
    attn_norms = {"pre": norm("attn_pre_norm"), "out": norm("attn_out_norm"), "post": norm("attn_post_norm")}
    mlp_norms = {"pre": norm("mlp_pre_norm"), "out": norm("mlp_out_norm"), "post": norm("mlp_post_norm")}
    h = PLACEMENT_RULES[attn_position](x, lambda u: ref_attention(block.self_attn, u, cos, sin), attn_norms, R)
    return PLACEMENT_RULES[mlp_position](h, lambda u: ref_mlp(block.mlp, u), mlp_norms, R)


def randomize_(module):
    """Random values everywhere, norm gains and biases included, so a skipped norm or bias cannot hide."""
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn_like(p) * 0.3 + (1.0 if p.dim() == 1 else 0.0))


def causal_mask(T, dtype):
    mask = torch.full((T, T), torch.finfo(dtype).min, dtype=dtype).triu(1)
    return mask[None, None]  # (1, 1, T, T)


def run_block(block, config, x):
    cos, sin = ref_rope(x.shape[1], config.head_dim)
    return block(x, attention_mask=causal_mask(x.shape[1], x.dtype),
                 position_embeddings=(cos[None, None].to(x.dtype), sin[None, None].to(x.dtype)))  # (B, 1, T, hd)


# ---------------------------------------------------------------------------------------------- the grid
@pytest.mark.parametrize("residual", FOUNDATION_RESIDUALS)
@pytest.mark.parametrize("norm_type", FOUNDATION_NORMS)
@pytest.mark.parametrize("position", FOUNDATION_POSITIONS)
def test_block_matches_formula(position, norm_type, residual):
    config = config_for(position, norm_type, residual)
    block = SkipNormBlock(config, 0).double()
    randomize_(block)
    x = torch.randn(2, 5, config.hidden_size, dtype=torch.float64)
    expected = ref_block(block, config, x, position, position)
    actual = run_block(block, config, x)
    torch.testing.assert_close(actual, expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("position", FOUNDATION_POSITIONS)
def test_block_has_exactly_the_placements_norm_slots(position):
    block = SkipNormBlock(config_for(position, "layernorm"), 0)
    for sublayer in ("attn", "mlp"):
        present = {slot for slot in ("pre", "out", "post")
                   if not isinstance(getattr(block, f"{sublayer}_{slot}_norm"), torch.nn.Identity)}
        assert present == SLOTS_USED[position], (sublayer, present)


@pytest.mark.parametrize("norm_type", ["layernorm", "rmsnorm"])
def test_unit_offset_gain_is_one_plus_w_and_starts_at_one(norm_type):
    config = config_for("sandwich", norm_type, norm_unit_offset=True)
    model = SkipNormModel(config).double()
    norm = model.layers[0].attn_pre_norm
    assert torch.all(norm.weight == 0), "unit-offset gains store w = 0 at init (gain 1), not w = 1 (gain 2)"
    randomize_(norm)
    x = torch.randn(3, 16, dtype=torch.float64)
    torch.testing.assert_close(norm(x), ref_norm(norm_type, norm, unit_offset=True)(x), rtol=1e-12, atol=1e-12)


def test_layernorm_without_bias_has_no_bias_parameter():
    block = SkipNormBlock(config_for("pre", "layernorm", norm_bias=False), 0)
    assert block.attn_pre_norm.bias is None
    assert not any(name.endswith("bias") for name, _ in block.named_parameters())


def test_per_layer_list_and_overrides_build_the_stack_from_the_formula():
    positions = ["post", "pre", "sandwich"]
    config = config_for(positions, "layernorm", num_hidden_layers=3, mlp_norm_position=["output", "pre_post", "pre"],
                        position_embedding="rope", embedding_norm=True)
    model = SkipNormModel(config).double().eval()
    randomize_(model)
    ids = torch.randint(0, config.vocab_size, (2, 6))
    h = model.embed_tokens.weight[ids]
    h = ref_norm("layernorm", model.embedding_norm)(h)
    for layer, (attn_position, mlp_position) in enumerate(zip(positions, ["output", "pre_post", "pre"])):
        h = ref_block(model.layers[layer], config, h, attn_position, mlp_position)
    h = ref_norm("layernorm", model.final_norm)(h)  # last MLP is "pre", so a final norm is implied
    torch.testing.assert_close(model(ids).last_hidden_state, h, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("position,expected", [("pre", True), ("post", False), ("sandwich", True), ("output", True),
                                               ("pre_post", False), ("none", False)])
def test_final_norm_follows_the_placement(position, expected):
    model = SkipNormModel(config_for(position, "layernorm"))
    assert (not isinstance(model.final_norm, torch.nn.Identity)) is expected
    forced = SkipNormModel(config_for(position, "layernorm", final_norm=not expected))
    assert (not isinstance(forced.final_norm, torch.nn.Identity)) is (not expected)


def test_plain_mlp_and_learned_positions_match_formula():
    config = config_for("pre", "layernorm", mlp_type="plain", hidden_act="gelu", position_embedding="learned",
                        mlp_bias=True, attention_bias=True, num_hidden_layers=1)
    model = SkipNormModel(config).double().eval()
    randomize_(model)
    ids = torch.randint(0, config.vocab_size, (2, 5))
    block = model.layers[0]
    h = model.embed_tokens.weight[ids] + model.embed_positions.weight[torch.arange(5)]

    def attention(u):  # no RoPE: identity rotation; biases on every projection
        a = block.self_attn
        B, T, _ = u.shape
        hd, H = a.head_dim, config.num_attention_heads
        q, k, v = (u @ p.weight.T + p.bias for p in (a.q_proj, a.k_proj, a.v_proj))
        out = torch.zeros(B, T, H * hd, dtype=u.dtype)
        for b in range(B):
            for hh in range(H):
                g = hh // (H // config.num_key_value_heads)
                s = q[b, :, hh * hd:(hh + 1) * hd] @ k[b, :, g * hd:(g + 1) * hd].T / math.sqrt(hd)
                s = s.masked_fill(torch.triu(torch.ones(T, T, dtype=torch.bool), 1), float("-inf"))
                out[b, :, hh * hd:(hh + 1) * hd] = torch.softmax(s, -1) @ v[b, :, g * hd:(g + 1) * hd]
        return out @ a.o_proj.weight.T + a.o_proj.bias

    def mlp(u):  # GELU MLP (GPT-2, BERT): W2 gelu(W1 u + b1) + b2
        m = block.mlp
        return F.gelu(u @ m.up_proj.weight.T + m.up_proj.bias) @ m.down_proj.weight.T + m.down_proj.bias

    h = h + attention(ref_norm("layernorm", block.attn_pre_norm)(h))
    h = h + mlp(ref_norm("layernorm", block.mlp_pre_norm)(h))
    h = ref_norm("layernorm", model.final_norm)(h)
    torch.testing.assert_close(model(ids).last_hidden_state, h, rtol=1e-10, atol=1e-10)


def test_partial_rotary_rotates_only_the_leading_dims():
    config = config_for("pre", "rmsnorm", partial_rotary_factor=0.5, num_hidden_layers=1, head_dim=8,
                        hidden_size=16, num_attention_heads=2, num_key_value_heads=2)
    model = SkipNormModel(config).double().eval()
    randomize_(model)
    ids = torch.randint(0, config.vocab_size, (1, 4))
    block = model.layers[0]
    rotary_dim = 4
    cos, sin = ref_rope(4, rotary_dim)

    def rope_partial(x):  # rotate x[..., :4] (half-split), keep x[..., 4:]
        return torch.cat([ref_rotate(x[..., :rotary_dim], cos, sin), x[..., rotary_dim:]], -1)

    def attention(u):
        a = block.self_attn
        q, k, v = (u[0] @ p.weight.T for p in (a.q_proj, a.k_proj, a.v_proj))
        outs = []
        for hh in range(2):
            sl = slice(hh * 8, (hh + 1) * 8)
            s = rope_partial(q[:, sl]) @ rope_partial(k[:, sl]).T / math.sqrt(8)
            s = s.masked_fill(torch.triu(torch.ones(4, 4, dtype=torch.bool), 1), float("-inf"))
            outs.append(torch.softmax(s, -1) @ v[:, sl])
        return (torch.cat(outs, -1) @ a.o_proj.weight.T)[None]

    h = model.embed_tokens.weight[ids]
    h = h + attention(ref_norm("rmsnorm", block.attn_pre_norm)(h))
    h = h + ref_mlp(block.mlp, ref_norm("rmsnorm", block.mlp_pre_norm)(h))
    h = ref_norm("rmsnorm", model.final_norm)(h)
    torch.testing.assert_close(model(ids).last_hidden_state, h, rtol=1e-10, atol=1e-10)


# ---------------------------------------------------------------------------------------------- hook points (issue 18)
def test_hooks_fire_on_every_present_module_of_the_fast_call_path():
    """Norms, residual combines, attention and MLP skip `nn.Module.__call__` while unhooked (HookableModule); a
    forward hook, a forward pre-hook and a full backward hook on them must still fire, and change nothing."""
    config = config_for("pre_post", "rmsnorm", "add")
    block = SkipNormBlock(config, 0).double()
    randomize_(block)
    x = torch.randn(2, 5, config.hidden_size, dtype=torch.float64, requires_grad=True)
    unhooked = run_block(block, config, x)
    seen = []
    points = ["attn_pre_norm", "attn_residual", "attn_post_norm", "mlp_pre_norm", "mlp_residual", "mlp_post_norm",
              "self_attn", "mlp"]
    for name in points:
        module = getattr(block, name)
        module.register_forward_pre_hook(lambda m, args, name=name: seen.append(("pre", name)))
        module.register_forward_hook(lambda m, args, out, name=name: seen.append(("fwd", name)))
        if name != "self_attn":  # the attention returns (output, weights=None): no full backward hook on a None
            module.register_full_backward_hook(lambda m, gin, gout, name=name: seen.append(("bwd", name)))
    hooked = run_block(block, config, x)
    hooked.sum().backward()
    torch.testing.assert_close(hooked, unhooked, rtol=0, atol=0)
    for kind in ("pre", "fwd"):
        assert [n for k, n in seen if k == kind] == ["attn_pre_norm", "self_attn", "attn_residual", "attn_post_norm",
                                                     "mlp_pre_norm", "mlp", "mlp_residual", "mlp_post_norm"]
    assert {n for k, n in seen if k == "bwd"} == set(points) - {"self_attn"}


def test_global_module_hook_sees_the_fast_call_modules():
    config = config_for("pre", "rmsnorm", "add")
    block = SkipNormBlock(config, 0).double()
    seen = []
    handle = torch.nn.modules.module.register_module_forward_hook(lambda m, a, o: seen.append(type(m).__name__))
    try:
        run_block(block, config, torch.randn(1, 3, config.hidden_size, dtype=torch.float64))
    finally:
        handle.remove()
    assert {"SkipNormRMSNorm", "AddResidual", "SkipNormAttention", "SkipNormGatedMLP"} <= set(seen)


def test_slot_replaced_after_construction_is_used():
    """`through` reads the slots at call time: an absent slot replaced by a real norm is applied, not skipped."""
    config = config_for("pre", "rmsnorm", "add")
    block = SkipNormBlock(config, 0).double()
    randomize_(block)
    x = torch.randn(2, 5, config.hidden_size, dtype=torch.float64)
    scale = torch.nn.Linear(config.hidden_size, config.hidden_size, bias=False).double()
    block.mlp_post_norm = scale
    expected = scale(ref_block(block, config, x, "pre", "pre"))
    torch.testing.assert_close(run_block(block, config, x), expected, rtol=1e-10, atol=1e-10)

"""Issue 15's depth mixing against formulas written here from the papers, in float64 on random (non-init) weights.

The depth bookkeeping (which sources each sublayer reads, how blocks sum, the softmax over depth, the mixes) is
written out again from the papers' equations; the attention and MLP branches themselves are the model's own modules
(tests/test_catalogue.py checks them against their formulas). Papers: Attention Residuals arXiv 2603.15031; ResFormer (value residual) arXiv 2410.17897;
U-Net skips: modded-nanogpt (no paper); stochastic depth arXiv 1603.09382, LayerDrop arXiv 1909.11556;
DenseFormer's dilation and period arXiv 2402.02622 (epfml/DenseFormer).
"""

from __future__ import annotations

import pytest
import torch
from transformers import Trainer, TrainingArguments

from hf_skipnorm import SkipNormConfig, SkipNormForCausalLM, SkipNormModel

TINY = dict(vocab_size=50, hidden_size=16, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
            intermediate_size=24, norm_eps=1e-5, max_position_embeddings=32, attn_implementation="eager")


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


def tiny(**fields):
    return SkipNormConfig(**{**TINY, **fields})


def randomize_(module, std=0.3):
    """Random values everywhere, pseudo-queries and norm gains included, so a skipped factor cannot hide."""
    with torch.no_grad():
        for _, p in module.named_parameters():
            p.copy_(torch.randn_like(p) * std + (1.0 if p.dim() == 1 else 0.0) * 0.5)


def rms(x, weight, eps):
    return weight * x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + eps)


def causal(T, dtype):
    return torch.full((T, T), torch.finfo(dtype).min, dtype=dtype).triu(1)[None, None]


def random_model(config, seed=1):
    torch.manual_seed(seed)
    model = SkipNormModel(config).double().eval()
    randomize_(model, std=0.25)
    return model, torch.randint(0, 50, (2, 6))


def branches(block, mask):
    """The block's attention and MLP as functions of their (already aggregated) input h, pre-norm included."""
    eps = block.attn_pre_norm.eps

    def attn(h):
        return block.self_attn(rms(h, block.attn_pre_norm.weight, eps), attention_mask=mask)[0]

    def mlp(h):
        return block.mlp(rms(h, block.mlp_pre_norm.weight, eps))

    return attn, mlp


# ---------------------------------------------------------------------------------------------- Attention Residuals
def depth_attention(sources, query, key_gain, eps):
    """arXiv 2603.15031 Eq. (2)-(3): h = sum_i alpha_i v_i, alpha_i = exp(w^T RMSNorm(v_i)) / sum_j exp(w^T RMSNorm(v_j))."""
    scores = torch.stack([(query * rms(v, key_gain, eps)).sum(-1) for v in sources])  # (S, B, T)
    alpha = torch.exp(scores - scores.max(0).values)
    alpha = alpha / alpha.sum(0)
    return sum(a[..., None] * v for a, v in zip(alpha, sources))


def attn_res_reference(model, ids, blocks):
    """Block AttnRes written from Sec. 3.2: b_0 = embeddings; L layers in N blocks of L/N layers; the first sublayer
    of block n reads [b_0..b_{n-1}], a later one [b_0..b_{n-1}, b_n^{i-1}]; the block sum b_n is the plain residual
    sum of its sublayer outputs. Full AttnRes: every sublayer output is its own source. A final depth attention
    (the reference code's final_attn_res_proj / _norm) feeds the final norm."""
    config = model.config
    x = model.embed_tokens.weight[ids]
    mask = causal(ids.shape[1], x.dtype)
    completed, partial = [x], None  # [b_0, ...], b_n^i (None: the block has no output yet)
    layers_per_block = None if blocks is None else config.num_hidden_layers // blocks
    for index, block in enumerate(model.layers):
        attn, mlp = branches(block, mask)
        for f, residual, sub in ((attn, block.attn_residual, 0), (mlp, block.mlp_residual, 1)):
            if layers_per_block is None:  # Full AttnRes: v_0 = embedding, v_k = output of sublayer k
                h = depth_attention(completed, residual.query_bias, residual.key_norm.weight, config.norm_eps)
                completed.append(f(h))
                continue
            starts_block = index % layers_per_block == 0 and sub == 0
            if starts_block and partial is not None:
                completed, partial = completed + [partial], None
            sources = completed + ([] if partial is None else [partial])
            h = depth_attention(sources, residual.query_bias, residual.key_norm.weight, config.norm_eps)
            partial = f(h) if partial is None else partial + f(h)
    final = completed + ([] if partial is None else [partial])
    stream = model.residual_stream
    out = depth_attention(final, stream.query_bias, stream.key_norm.weight, config.norm_eps)
    return rms(out, model.final_norm.weight, config.norm_eps)


@pytest.mark.parametrize("blocks", [None, 1, 2, 4], ids=lambda b: "full" if b is None else f"blocks{b}")
def test_attn_res_stack_matches_the_papers_equations(blocks):
    model, ids = random_model(tiny(residual="attn_res", attn_res_blocks=blocks, position_embedding="none"))
    expected = attn_res_reference(model, ids, blocks)
    actual = model(ids).last_hidden_state
    assert (actual - expected).abs().max().item() < 1e-10 * expected.abs().max().item()


def test_attn_res_starts_with_zero_queries_and_uniform_weights():
    """The paper's init: every pseudo-query 0, so each aggregation is the plain mean of its sources."""
    model = SkipNormModel(tiny(residual="attn_res")).double()
    queries = [p for n, p in model.named_parameters() if n.endswith("query_bias")]
    assert len(queries) == 2 * 4 + 1 and all(torch.all(q == 0) for q in queries)
    sources = torch.randn(2, 3, 5, 16, dtype=torch.float64) * torch.tensor([1.0, 10.0, 0.1, 3.0, 7.0])[:, None].double()
    torch.testing.assert_close(model.layers[2].attn_residual.aggregate(sources), sources.mean(-2), rtol=1e-12, atol=0)


def test_attn_res_depth_softmax_backward_is_the_formulas_gradient():
    """`DepthSoftmax` (K pseudo-queries over stacked sources: softmax means and log-sum-exps) against Eq. (2)-(3)
    written here, and its hand-written backward against autograd's numerical Jacobian (float64), on a stack and on
    a slice of one (the layout a block's shared sources take)."""
    from hf_skipnorm.depth_mixing_skipnorm import DepthSoftmax

    torch.manual_seed(3)
    queries = torch.randn(2, 8, dtype=torch.float64, requires_grad=True)
    scale = torch.tensor([1.0, 5.0, 0.2, 2.0, 3.0]).double()[:, None]
    stack = (torch.randn(2, 3, 5, 8, dtype=torch.float64) * scale).requires_grad_(True)
    *means, lse = DepthSoftmax.apply(queries, 1e-5, stack)
    ones = torch.ones(8, dtype=torch.float64)
    for k in range(2):
        expected = depth_attention(list(stack.unbind(-2)), queries[k], ones, 1e-5)
        torch.testing.assert_close(means[k], expected, rtol=1e-12, atol=1e-14)
        scores = torch.stack([(queries[k] * rms(v, ones, 1e-5)).sum(-1) for v in stack.unbind(-2)])
        torch.testing.assert_close(lse[..., k], torch.log(torch.exp(scores).sum(0)), rtol=1e-12, atol=1e-14)
    assert torch.autograd.gradcheck(lambda q, s: DepthSoftmax.apply(q, 1e-5, s), (queries, stack))
    assert torch.autograd.gradcheck(lambda q, s: DepthSoftmax.apply(q, 1e-5, s[..., :-1, :]), (queries, stack))


@pytest.mark.parametrize("blocks", [None, 2], ids=["full", "blocks2"])
def test_attn_res_hidden_states_and_state_layout(blocks):
    """output_hidden_states reports what the final norm would read (the final aggregation), (B, T, C); the raw state
    after block l holds the sources so far: Full 1 + 2(l+1), Block the completed blocks plus the partial sum."""
    model, ids = random_model(tiny(residual="attn_res", attn_res_blocks=blocks))
    states = []
    hooks = [layer.register_forward_hook(lambda m, a, out: states.append(out)) for layer in model.layers]
    out = model(ids, output_hidden_states=True)
    for hook in hooks:
        hook.remove()
    assert all(h.shape == (2, 6, 16) for h in out.hidden_states)
    assert [s.shape[-2] for s in states] == ([3, 5, 7, 9] if blocks is None else [2, 2, 3, 3])
    stream = model.residual_stream
    for state, hidden in zip(states[:-1], out.hidden_states[1:-1]):
        expected = depth_attention(list(state.unbind(-2)), stream.query_bias, stream.key_norm.weight, 1e-5)
        torch.testing.assert_close(hidden, expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("fields", [
    dict(residual="attn_res"), dict(residual="attn_res", attn_res_blocks=2, norm_position="sandwich"),
    dict(value_residual="learned"), dict(value_residual="per_token", qk_norm="per_head"),
    dict(unet_skips=True, num_hidden_layers=5), dict(layer_drop=0.3, unet_skips=True, norm_position="post"),
    dict(residual="dense", dense_dilation=2, dense_period=3, num_hidden_layers=6),
], ids=["full", "blocks2-sandwich", "value-learned", "value-per_token", "unet5", "layerdrop-unet-post", "dense2x3"])
def test_cached_generation_equals_uncached(fields):
    model = SkipNormForCausalLM(tiny(**fields)).double().eval()
    randomize_(model, std=0.2)
    ids = torch.randint(0, 50, (2, 4))
    cached = model.generate(ids, max_new_tokens=5, do_sample=False, use_cache=True, pad_token_id=0)
    uncached = model.generate(ids, max_new_tokens=5, do_sample=False, use_cache=False, pad_token_id=0)
    assert torch.equal(cached, uncached)


@pytest.mark.parametrize("fields", [dict(residual="attn_res"), dict(residual="attn_res", attn_res_blocks=2),
                                    dict(value_residual="per_token"), dict(value_residual="learned"),
                                    dict(unet_skips=True, layer_drop=0.3)],
                         ids=["full", "blocks2", "value-per_token", "value-learned", "unet-layerdrop"])
def test_gradient_checkpointing_gives_the_same_gradients(fields):
    plain = SkipNormForCausalLM(tiny(**fields)).double().train()
    randomize_(plain, std=0.2)
    ckpt = SkipNormForCausalLM(tiny(**fields)).double().train()
    ckpt.load_state_dict(plain.state_dict())
    ckpt.activation_checkpointing_enable()
    ids = torch.randint(0, 50, (2, 6))
    torch.manual_seed(11)  # layer drop: both draw the same masks (the checkpoint replays the RNG state)
    plain(ids, labels=ids).loss.backward()
    torch.manual_seed(11)
    ckpt(ids, labels=ids).loss.backward()
    for (name, a), (_, b) in zip(plain.named_parameters(), ckpt.named_parameters()):
        assert a.grad is not None, name
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-10, atol=1e-12, msg=name)


# ---------------------------------------------------------------------------------------------- value residual
def ref_attention(attn, x, mask, mix):
    """softmax(q k^T / sqrt(hd) + mask) mix(v) with grouped heads, no positions; ``mix`` is the value residual."""
    B, T, _ = x.shape
    H, Hkv, hd = attn.config.num_attention_heads, attn.config.num_key_value_heads, attn.head_dim
    q = (x @ attn.q_proj.weight.T).view(B, T, H, hd).transpose(1, 2)
    k = (x @ attn.k_proj.weight.T).view(B, T, Hkv, hd).transpose(1, 2)
    v = mix((x @ attn.v_proj.weight.T).view(B, T, Hkv, hd).transpose(1, 2), x)
    k, v_rep = k.repeat_interleave(H // Hkv, dim=1), v.repeat_interleave(H // Hkv, dim=1)
    probs = torch.softmax(q @ k.transpose(-1, -2) / hd**0.5 + mask, dim=-1)
    return (probs @ v_rep).transpose(1, 2).reshape(B, T, H * hd) @ attn.o_proj.weight.T, v


def value_residual_reference(model, ids, kind):
    """ResFormer (2410.17897): U_n = A_n (lambda_1 V_1 + lambda_2 V_n) for n >= 2, in a pre-norm stack."""
    x = model.embed_tokens.weight[ids]
    mask, eps = causal(ids.shape[1], x.dtype), model.config.norm_eps
    first = None
    for index, block in enumerate(model.layers):
        mixer = block.self_attn.value_residual

        def mix(v, h):
            if index == 0:
                return v
            if kind == "fixed":
                return 0.5 * first + 0.5 * v
            if kind == "learned":
                return (0.5 + mixer.lambda_bias[0]) * first + (0.5 + mixer.lambda_bias[1]) * v
            m = torch.sigmoid(h @ mixer.mix_proj.weight.T + mixer.mix_proj.bias).transpose(1, 2)[..., None]
            return m * v + (1 - m) * first

        a, v = ref_attention(block.self_attn, rms(x, block.attn_pre_norm.weight, eps), mask, mix)
        first = v if index == 0 else first
        x = x + a
        x = x + block.mlp(rms(x, block.mlp_pre_norm.weight, eps))
    return rms(x, model.final_norm.weight, eps)


@pytest.mark.parametrize("kind", ["fixed", "learned", "per_token"])
def test_value_residual_stack_matches_the_papers_equation(kind):
    model, ids = random_model(tiny(value_residual=kind, position_embedding="none"))
    expected = value_residual_reference(model, ids, kind)
    actual = model(ids).last_hidden_state
    assert (actual - expected).abs().max().item() < 1e-10 * expected.abs().max().item()


def test_value_residual_starts_at_resformers_half_and_half():
    """At init `learned` and `per_token` compute exactly `fixed` (0.5 V_1 + 0.5 V_n)."""
    torch.manual_seed(3)
    reference = SkipNormModel(tiny(value_residual="fixed")).double().eval()
    ids = torch.randint(0, 50, (2, 6))
    for kind in ("learned", "per_token"):
        model = SkipNormModel(tiny(value_residual=kind)).double().eval()
        model.load_state_dict(reference.state_dict(), strict=False)
        torch.testing.assert_close(model(ids).last_hidden_state, reference(ids).last_hidden_state, rtol=0, atol=0)


def test_value_residual_refuses_reentrant_checkpointing():
    model = SkipNormForCausalLM(tiny(value_residual="learned")).train()
    model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": True})
    ids = torch.randint(0, 50, (2, 6))
    with pytest.raises(ValueError, match="use_reentrant"):
        model(ids, labels=ids)


def test_value_residual_runs_under_a_checkpoint_function_that_is_not_a_partial():
    """transformers' tests swap `_gradient_checkpointing_func` for a Mock wrapping the checkpoint: that is not a
    refusal of reentrancy, and the model must train through it with the same gradients as without checkpointing."""
    from unittest.mock import Mock

    import torch.utils.checkpoint

    torch.manual_seed(4)
    model = SkipNormForCausalLM(tiny(value_residual="learned")).double().train()
    ids = torch.randint(0, 50, (2, 6))
    model(ids, labels=ids).loss.backward()
    expected = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    model.gradient_checkpointing_enable()
    wrapper = Mock(side_effect=lambda *a, **k: torch.utils.checkpoint.checkpoint(*a, use_reentrant=False, **k))
    for layer in model.model.layers:
        layer._gradient_checkpointing_func = wrapper
    model(ids, labels=ids).loss.backward()
    assert wrapper.call_count == len(model.model.layers)
    for name, p in model.named_parameters():
        if name in expected:
            torch.testing.assert_close(p.grad, expected[name], rtol=1e-12, atol=1e-12, msg=name)


# ---------------------------------------------------------------------------------------------- U-Net skips
def unet_reference(model, ids):
    """modded-nanogpt's U-Net: push the first half's block outputs, pop them (LIFO) into the second half's inputs,
    each times its learned weight; with odd L the middle block neither pushes nor pops."""
    L = model.config.num_hidden_layers
    n = L // 2
    x = model.embed_tokens.weight[ids]
    mask = causal(ids.shape[1], x.dtype)
    weights = 1.0 + model.unet_skips.weight_bias
    stack = []
    for i, block in enumerate(model.layers):
        if i >= L - n:
            x = x + weights[len(stack) - 1] * stack.pop()
        x = block(x, attention_mask=mask)
        if i < n:
            stack.append(x)
    return rms(x, model.final_norm.weight, model.config.norm_eps)


@pytest.mark.parametrize("layers", [4, 5])
def test_unet_skips_stack_matches_modded_nanogpt(layers):
    model, ids = random_model(tiny(unet_skips=True, position_embedding="none", num_hidden_layers=layers))
    assert model.unet_skips.weight_bias.abs().min() > 0  # randomized: a dropped weight would show
    expected = unet_reference(model, ids)
    actual = model(ids).last_hidden_state
    assert (actual - expected).abs().max().item() < 1e-10 * expected.abs().max().item()


def test_unet_skip_weights_start_at_one():
    model = SkipNormModel(tiny(unet_skips=True))
    assert model.unet_skips.weight_bias.shape == (2,) and torch.all(model.unet_skips.weight_bias == 0)


# ---------------------------------------------------------------------------------------------- layer drop
@pytest.mark.parametrize("schedule,rates", [("linear", [0.05, 0.1, 0.15, 0.2]), ("uniform", [0.2] * 4)])
def test_layer_drop_rates_follow_the_schedule(schedule, rates):
    """Huang et al. (1603.09382) Eq. 4: p_l = (l / L) p_L, l 1-based; LayerDrop (1909.11556): one rate."""
    model = SkipNormModel(tiny(layer_drop=0.2, layer_drop_schedule=schedule))
    assert [block.branch_dropout.rate for block in model.layers] == pytest.approx(rates)


def test_layer_drop_drops_whole_samples_and_rescales_the_kept_ones():
    from hf_skipnorm.depth_mixing_skipnorm import DropBranch
    drop = DropBranch(0.3).train()
    branch = torch.randn(4000, 3, 8, dtype=torch.float64)
    out = drop(branch)
    dropped = (out == 0).flatten(1).all(1)
    kept = ~dropped
    torch.testing.assert_close(out[kept], branch[kept] / 0.7, rtol=1e-14, atol=0)
    assert abs(dropped.double().mean().item() - 0.3) < 0.03  # 4000 Bernoulli(0.3) draws: sd 0.007
    assert torch.equal(drop.eval()(branch), branch)


def test_layer_drop_is_the_plain_model_at_eval():
    torch.manual_seed(5)
    plain = SkipNormForCausalLM(tiny()).double().eval()
    dropped = SkipNormForCausalLM(tiny(layer_drop=0.5, hidden_dropout=0.1)).double().eval()
    dropped.load_state_dict(plain.state_dict())
    ids = torch.randint(0, 50, (2, 6))
    assert torch.equal(plain(ids).logits, dropped(ids).logits)
    dropped.train()
    assert not torch.equal(plain(ids).logits, dropped(ids).logits)


# ---------------------------------------------------------------------------------------------- per-head QK gains
@pytest.mark.parametrize("norm_type", ["rmsnorm", "layernorm"])
def test_per_head_qk_gains_match_the_formula(norm_type):
    """q_h <- g_h * N(q_h) (+ b_h): each head's own gain (x-transformers' MultiheadRMSNorm), before attention."""
    model, _ = random_model(tiny(qk_norm="per_head_gains", norm_type=norm_type, position_embedding="none"))
    attn = model.layers[1].self_attn
    x = torch.randn(2, 5, 16, dtype=torch.float64)
    eps = model.config.norm_eps

    def norm(t, module):  # (B, T, heads, hd)
        if norm_type == "layernorm":
            t = t - t.mean(-1, keepdim=True)
        out = module.weight * t / torch.sqrt(t.pow(2).mean(-1, keepdim=True) + eps)
        return out + module.bias if norm_type == "layernorm" else out

    B, T, H, Hkv, hd = 2, 5, 4, 2, 4
    q = norm((x @ attn.q_proj.weight.T).view(B, T, H, hd), attn.q_norm).transpose(1, 2)
    k = norm((x @ attn.k_proj.weight.T).view(B, T, Hkv, hd), attn.k_norm).transpose(1, 2).repeat_interleave(2, 1)
    v = (x @ attn.v_proj.weight.T).view(B, T, Hkv, hd).transpose(1, 2).repeat_interleave(2, 1)
    probs = torch.softmax(q @ k.transpose(-1, -2) / hd**0.5 + causal(T, x.dtype), dim=-1)
    expected = (probs @ v).transpose(1, 2).reshape(B, T, H * hd) @ attn.o_proj.weight.T
    actual = attn(x, attention_mask=causal(T, x.dtype))[0]
    assert attn.q_norm.weight.shape == (4, 4) and attn.k_norm.weight.shape == (2, 4)
    assert (actual - expected).abs().max().item() < 1e-12 * expected.abs().max().item()


def test_per_head_qk_gains_with_equal_heads_are_qwen3s_shared_gain():
    shared, _ = random_model(tiny(qk_norm="per_head"))
    ids = torch.randint(0, 50, (2, 6))
    per_head = SkipNormModel(tiny(qk_norm="per_head_gains")).double().eval()
    state = {k: (v.expand(4 if "q_norm" in k else 2, -1) if k.endswith(("q_norm.weight", "k_norm.weight")) else v)
             for k, v in shared.state_dict().items()}
    per_head.load_state_dict(state)
    torch.testing.assert_close(per_head(ids).last_hidden_state, shared(ids).last_hidden_state, rtol=1e-12, atol=0)


def test_per_head_qk_gains_start_at_one_and_respect_the_unit_offset():
    for offset, start in ((False, 1.0), (True, 0.0)):
        model = SkipNormModel(tiny(qk_norm="per_head_gains", norm_unit_offset=offset))
        assert torch.all(model.layers[0].self_attn.q_norm.weight == start)


# ---------------------------------------------------------------------------------------------- DenseFormer k x p
@pytest.mark.parametrize("dilation,period", [(1, 1), (2, 1), (1, 2), (2, 3), (3, 2)])
def test_dilated_periodic_denseformer_matches_the_paper(dilation, period):
    """k x p-DenseFormer (2402.02622, Sec. 3.2): Y_0 = embeddings, Y_{i} = block_i(X_{i-1}); after block i (1-based)
    X_i = sum_{j <= i, j = i mod k} alpha_ij Y_j if i = 0 mod p, else X_i = Y_i."""
    from hf_skipnorm.modeling_skipnorm import SkipNormBlock
    model, ids = random_model(tiny(residual="dense", dense_dilation=dilation, dense_period=period,
                                   position_embedding="none", num_hidden_layers=6))
    x = model.embed_tokens.weight[ids]
    mask = causal(ids.shape[1], x.dtype)
    outputs = [x]  # Y_0, Y_1, ...
    for i, block in enumerate(model.layers, start=1):
        outputs.append(SkipNormBlock.forward(block, x, attention_mask=mask))
        if i % period:
            x = outputs[-1]
            assert not any(True for _ in block.depth_average.parameters())
            continue
        picked = [outputs[j] for j in range(i + 1) if (i - j) % dilation == 0]
        alpha = block.depth_average.alpha_bias.clone()
        alpha[-1] += 1.0  # stored as an offset from e_i
        assert alpha.shape == (len(picked),)
        x = sum(a * y for a, y in zip(alpha, picked))
    expected = rms(x, model.final_norm.weight, model.config.norm_eps)
    actual = model(ids).last_hidden_state
    assert (actual - expected).abs().max().item() < 1e-10 * expected.abs().max().item()


# Every learned scalar/vector of this issue, by name suffix and count in a 4-layer model.
NO_DECAY = {
    "attn_res": (dict(residual="attn_res"), {"query_bias": 9, "_residual.key_norm.weight": 8,
                                             "residual_stream.key_norm.weight": 1}),
    "value_residual_learned": (dict(value_residual="learned"), {"value_residual.lambda_bias": 3}),
    "value_residual_per_token": (dict(value_residual="per_token"), {"value_residual.mix_proj.bias": 3}),
    "unet_skips": (dict(unet_skips=True), {"unet_skips.weight_bias": 1}),
    "qk_per_head_gains": (dict(qk_norm="per_head_gains", norm_type="layernorm"),
                          {"q_norm.weight": 4, "k_norm.weight": 4, "q_norm.bias": 4, "k_norm.bias": 4}),
}
DECAY = {"value_residual_per_token": ["value_residual.mix_proj.weight"]}


@pytest.mark.parametrize("value", sorted(NO_DECAY))
def test_trainer_does_not_decay_the_learned_scalars(value, tmp_path):
    fields, expected = NO_DECAY[value]
    model = SkipNormForCausalLM(tiny(**fields))
    args = TrainingArguments(output_dir=str(tmp_path), weight_decay=0.1, report_to=[], use_cpu=True)
    optimizer = Trainer(model=model, args=args).create_optimizer()
    no_decay = {id(p) for g in optimizer.param_groups if g["weight_decay"] == 0.0 for p in g["params"]}
    for suffix, count in expected.items():
        matching = [n for n, p in model.named_parameters() if n.endswith(suffix)]
        assert len(matching) == count, matching
        assert all(id(dict(model.named_parameters())[n]) in no_decay for n in matching), matching
    for suffix in DECAY.get(value, []):
        matching = [n for n, p in model.named_parameters() if n.endswith(suffix)]
        assert matching and all(id(dict(model.named_parameters())[n]) not in no_decay for n in matching), matching


@pytest.mark.parametrize("fields,words", [
    (dict(residual="attn_res", norm_position="post"), "norm after the skip"),
    (dict(residual="attn_res", norm_position="mix", mix_ratio=0.5), "norm after the skip"),
    (dict(residual="attn_res", parallel_block=True), "parallel_block"),
    (dict(residual="add", attn_res_blocks=2), "residual='attn_res'"),
    (dict(residual="attn_res", attn_res_blocks=3), "dividing num_hidden_layers"),
    (dict(residual="attn_res", attn_res_blocks=0), "an integer in [1,"),
    (dict(value_residual="per_layer"), "valid choices: none, fixed, learned, per_token"),
    (dict(value_residual="fixed", num_hidden_layers=1), "there are none"),
    (dict(unet_skips=True, residual="hyper"), "one residual stream"),
    (dict(unet_skips=True, residual="attn_res"), "one residual stream"),
    (dict(unet_skips=True, norm_position="resi_dual"), "one residual stream"),
    (dict(unet_skips=True, num_hidden_layers=1), "first half"),
    (dict(layer_drop=1.0), "[0, 1)"),
    (dict(qk_norm="per_head_gains", norm_type="scalenorm"), "valid norm types: rmsnorm, layernorm"),
    (dict(dense_dilation=2), "residual='dense'"),
    (dict(residual="dense", dense_period=0), "an integer in [1,"),
    (dict(layer_drop=0.1, layer_drop_schedule="cosine"), "valid choices: linear, uniform"),
], ids=lambda v: v if isinstance(v, str) else "-".join(f"{k}={x}" for k, x in v.items()))
def test_meaningless_combinations_are_refused_with_the_reason(fields, words):
    with pytest.raises(ValueError, match="SkipNormConfig") as error:
        tiny(**fields)
    assert words in str(error.value)

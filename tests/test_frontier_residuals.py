"""Issue 15's residual frontier against formulas written again here from the papers, in float64.

Nothing below reuses the package's math: the orthogonal update (Oh et al., arXiv 2505.11881), LAuReL (Menghani et
al., arXiv 2411.07501) and nGPT (Loshchilov et al., arXiv 2410.01131; NVIDIA/ngpt) are recomputed from the modules'
parameters only, on random (non-init) weights. Model-level checks: the paper's init (LAuReL-LR starts as the
plain residual model, with the paper's column-orthogonal A), cached generation equals uncached, gradient checkpointing
gives the same gradients, the Trainer puts learned scalars in its no-decay group, and nGPT's weight renormalization
runs through the Trainer's callback.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from transformers import Trainer, TrainingArguments

from helpers import randomize_
from hf_skipnorm import SkipNormConfig, SkipNormForCausalLM, SkipNormModel
from hf_skipnorm.residuals_skipnorm import build_residual

VOCAB = 50


def tiny(**overrides):
    fields = dict(vocab_size=VOCAB, hidden_size=16, num_hidden_layers=2, num_attention_heads=4, intermediate_size=24,
                  max_position_embeddings=32, attn_implementation="eager")
    fields.update(overrides)
    return SkipNormConfig(**fields)


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


def generation_matches(config, randomize):
    model = SkipNormForCausalLM(config).eval()
    randomize(model)
    prompt = torch.randint(1, VOCAB, (2, 4))
    kwargs = dict(max_new_tokens=6, min_new_tokens=6, do_sample=False, pad_token_id=0)
    return torch.equal(model.generate(prompt, use_cache=True, **kwargs), model.generate(prompt, use_cache=False, **kwargs))


def checkpointed_gradients_match(config, randomize):
    plain = SkipNormForCausalLM(config).train()
    randomize(plain)
    ckpt = SkipNormForCausalLM(config).train()
    ckpt.load_state_dict(plain.state_dict())
    ckpt.activation_checkpointing_enable()
    ids = torch.randint(0, VOCAB, (2, 6))
    plain(ids, labels=ids).loss.backward()
    ckpt(ids, labels=ids).loss.backward()
    for (name, a), (_, b) in zip(plain.named_parameters(), ckpt.named_parameters()):
        assert a.grad is not None, name
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-5, atol=1e-6, msg=name)
    return True


def decay_groups(model, tmp_path, weight_decay=0.1):
    args = TrainingArguments(output_dir=str(tmp_path), weight_decay=weight_decay, report_to=[], use_cpu=True)
    optimizer = Trainer(model=model, args=args).create_optimizer()
    return {id(p): group["weight_decay"] for group in optimizer.param_groups for p in group["params"]}


# ---------------------------------------------------------------------------------------------- orthogonal
def ref_orthogonal(x, y, eps=1e-6):
    """Oh et al. 2025 (and the reference code's _orthogonal_channel): f_par = (<x, f> / (||x||^2 + eps)) x per token; x_{n+1} = x_n + (f - f_par)."""
    out = torch.empty_like(x)
    for index in range(x.shape[0] * x.shape[1]):
        b, t = divmod(index, x.shape[1])
        xv, fv = x[b, t], y[b, t]
        out[b, t] = xv + fv - (torch.dot(xv, fv) / (torch.dot(xv, xv) + eps)) * xv
    return out


def test_orthogonal_combine_matches_the_papers_formula():
    module = build_residual(tiny(residual="orthogonal"), 0, "attn")
    x, y = torch.randn(2, 5, 16, dtype=torch.float64), torch.randn(2, 5, 16, dtype=torch.float64)
    out = module(x, y)
    torch.testing.assert_close(out, ref_orthogonal(x, y), rtol=1e-12, atol=1e-12)
    # the update is orthogonal to the stream, up to the eps term
    assert ((out - x) * x).sum(-1).abs().max().item() < 1e-6 * (x * x).sum(-1).max().item()
    eps = build_residual(tiny(residual="orthogonal", orthogonal_eps=0.5), 0, "mlp")
    torch.testing.assert_close(eps(x, y), ref_orthogonal(x, y, eps=0.5), rtol=1e-12, atol=1e-12)
    zero = torch.zeros_like(x)
    torch.testing.assert_close(module(zero, y), y)  # a zero stream projects nothing (eps keeps it finite)


def test_every_sublayer_update_of_an_orthogonal_model_is_orthogonal_to_its_stream():
    """Whole model, random weights: hook each combine and check <x_out - x_in, x_in> = 0 (relative to ||x||^2)."""
    model = randomize_(SkipNormModel(tiny(residual="orthogonal", num_hidden_layers=3, orthogonal_eps=1e-12)).double(),
                       scale=0.2)  # eps leaves <F_perp, x> = <x, F> eps / (|x|^2 + eps): take it tiny here
    seen = []

    def check(module, args, output):
        x = args[0]
        seen.append(((output - x) * x).sum(-1).abs().max().item() / (x * x).sum(-1).max().item())

    for block in model.layers:
        for combine in (block.attn_residual, block.mlp_residual):
            combine.register_forward_hook(check)
    model(torch.randint(0, VOCAB, (2, 6)))
    assert len(seen) == 6 and max(seen) < 1e-9, seen


def test_orthogonal_parallel_block_projects_the_branch_sum():
    model = randomize_(SkipNormModel(tiny(residual="orthogonal", parallel_block=True)).double(), scale=0.2)
    block = model.layers[0]
    x = torch.randn(2, 5, 16, dtype=torch.float64)
    captured = {}
    block.self_attn.register_forward_hook(lambda m, a, out: captured.__setitem__("attn", out[0]))
    block.mlp.register_forward_hook(lambda m, a, out: captured.__setitem__("mlp", out))
    mask = torch.full((5, 5), torch.finfo(x.dtype).min, dtype=x.dtype).triu(1)[None, None]
    cos_sin = model.embed_positions.rotary(x, torch.arange(5)[None])
    out = block(x, attention_mask=mask, position_embeddings=cos_sin)
    torch.testing.assert_close(out, ref_orthogonal(x, captured["attn"] + captured["mlp"]), rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------------------------------------- LAuReL
def ref_laurel_weights(a, b, weights):
    """LAuReL-RW's bounded scalars (arXiv 2411.07501, Sec. 2.1: "a normalization function such as softmax or sigmoid"),
    from the two logits, by hand."""
    if weights == "softmax":
        return math.exp(a) / (math.exp(a) + math.exp(b)), math.exp(b) / (math.exp(a) + math.exp(b))
    return 1.0 / (1.0 + math.exp(-a)), 1.0 / (1.0 + math.exp(-b))


@pytest.mark.parametrize("weights", ["softmax", "sigmoid"])
@pytest.mark.parametrize("variant", ["rw", "lr", "rw_lr"])
def test_laurel_combine_matches_the_papers_formula(variant, weights):
    """LAuReL: RW  x' = a f(x) + b x (Sec. 2.1);  LR  x' = f(x) + B A x + x (Eq. 3);  RW+LR  x' = a f(x) + b (B A x + x)
    (Eq. 5); a, b the softmax or sigmoid of two learned logits."""
    config = tiny(residual="laurel", laurel_variant=variant, laurel_rank=3, laurel_rw_weights=weights)
    module = randomize_(build_residual(config, 0, "mlp").double(), scale=1.0)
    x, y = torch.randn(2, 5, 16, dtype=torch.float64), torch.randn(2, 5, 16, dtype=torch.float64)
    a, b = (ref_laurel_weights(module.alpha_logit_bias.item(), module.beta_logit_bias.item(), weights)
            if variant != "lr" else (1.0, 1.0))
    if variant == "rw":
        expected = a * y + b * x
    else:
        A, B = module.laurel_down.weight, module.laurel_up.weight  # (r, d), (d, r)
        assert A.shape == (3, 16) and B.shape == (16, 3)
        low_rank = torch.einsum("dr,rk,btk->btd", B, A, x)
        expected = a * y + b * (low_rank + x)
    torch.testing.assert_close(module(x, y), expected, rtol=1e-12, atol=1e-12)


def test_laurel_registries_agree_with_the_config_vocabulary():
    from hf_skipnorm import configuration_skipnorm as cfg
    from hf_skipnorm.residuals_skipnorm import LAUREL_CLASSES, LAUREL_RW_NORMALIZERS

    assert set(LAUREL_CLASSES) == set(cfg.LAUREL_VARIANTS) and set(LAUREL_RW_NORMALIZERS) == set(cfg.LAUREL_RW_WEIGHTS)


def test_laurel_rw_weights_stay_bounded_for_any_logits():
    """The paper's reason for the normalization: alpha and beta must not grow unbounded, whatever the logits do."""
    for weights in ("softmax", "sigmoid"):
        module = build_residual(tiny(residual="laurel", laurel_variant="rw", laurel_rw_weights=weights), 0, "attn")
        with torch.no_grad():
            module.alpha_logit_bias.fill_(40.0)
            module.beta_logit_bias.fill_(-40.0)
        alpha, beta = (w.item() for w in module.weights())
        assert 0.0 <= beta < alpha <= 1.0, (weights, alpha, beta)
        if weights == "softmax":
            assert alpha + beta == pytest.approx(1.0)


def ref_column_orthogonal(rank, width):
    """Footnote 2 of arXiv 2411.07501: A_ij = 1/sqrt(r D) if i mod r = j, else 0, for A in R^{D x r}."""
    A = torch.zeros(width, rank, dtype=torch.float64)
    for i in range(width):
        for j in range(rank):
            if i % rank == j:
                A[i, j] = 1.0 / math.sqrt(rank * width)
    return A


@pytest.mark.parametrize("variant", ["lr", "rw_lr"])
def test_laurel_lr_starts_with_the_papers_init(variant):
    """B = 0 and A column-orthogonal (the paper's LLM init); with `lr` the model is the residual='add' model with the
    same weights, exactly."""
    laurel = SkipNormModel(tiny(residual="laurel", laurel_variant=variant, laurel_rank=5)).eval()
    for block in laurel.layers:
        for residual in (block.attn_residual, block.mlp_residual):
            assert torch.all(residual.laurel_up.weight == 0)
            torch.testing.assert_close(residual.laurel_down.weight.double().t(), ref_column_orthogonal(5, 16))
    if variant == "lr":
        plain = SkipNormModel(tiny()).eval()
        missing, unexpected = plain.load_state_dict(laurel.state_dict(), strict=False)
        assert not missing and all("_residual." in key for key in unexpected)
        ids = torch.randint(0, VOCAB, (2, 6))
        torch.testing.assert_close(laurel(ids).last_hidden_state, plain(ids).last_hidden_state, rtol=0, atol=0)


@pytest.mark.parametrize("weights", ["softmax", "sigmoid"])
@pytest.mark.parametrize("variant", ["rw", "rw_lr"])
def test_laurel_rw_starts_at_half_weights(variant, weights):
    """Logits 0 (the paper states no init): alpha = beta = 1/2 under softmax and sigmoid alike, and with B = 0 the model
    is the residual='scaled' model 0.5 x + 0.5 F with the same weights."""
    laurel = SkipNormModel(tiny(residual="laurel", laurel_variant=variant, laurel_rw_weights=weights)).eval()
    scaled = SkipNormModel(tiny(residual="scaled", residual_alpha=0.5, branch_multiplier=0.5)).eval()
    missing, unexpected = scaled.load_state_dict(laurel.state_dict(), strict=False)
    assert not missing and all("_residual." in key for key in unexpected)
    ids = torch.randint(0, VOCAB, (2, 6))
    torch.testing.assert_close(laurel(ids).last_hidden_state, scaled(ids).last_hidden_state, rtol=1e-6, atol=1e-6)
    for block in laurel.layers:
        assert block.attn_residual.alpha_logit_bias.item() == 0.0 == block.attn_residual.beta_logit_bias.item()


def test_laurel_pa_combine_matches_eq_4():
    """LAuReL-PA, Eq. 4: x_{i+1} = f(x_i) + x_i + sum_{j=0}^{k-1} gamma_j h(x_{i-j}), h = B A, term by term."""
    config = tiny(residual="laurel", laurel_variant="pa", laurel_rank=3, laurel_pa_activations=4)
    module = randomize_(build_residual(config, 1, "attn").double(), scale=0.7)
    x, y = torch.randn(2, 5, 16, dtype=torch.float64), torch.randn(2, 5, 16, dtype=torch.float64)
    previous = torch.randn(2, 5, 3, 16, dtype=torch.float64)  # x_{i-1}, x_{i-2}, x_{i-3}
    A, B = module.laurel_down.weight, module.laurel_up.weight  # (r, d), (d, r)
    assert A.shape == (3, 16) and B.shape == (16, 3) and module.gamma_bias.shape == (4,)
    gamma = [1.0 + g for g in module.gamma_bias.tolist()]
    terms = [x] + [previous[..., j, :] for j in range(3)]
    expected = y + x + sum(g * torch.einsum("dr,rk,btk->btd", B, A, term) for g, term in zip(gamma, terms))
    torch.testing.assert_close(module(x, y, previous), expected, rtol=1e-12, atol=1e-12)
    # called as R(x, y), as the diagnostics do: only x_i is read, and R(x, y) - R(x, 0) = y either way
    only_current = y + x + gamma[0] * torch.einsum("dr,rk,btk->btd", B, A, x)
    torch.testing.assert_close(module(x, y), only_current, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(module(x, y, previous) - module(x, torch.zeros_like(y), previous), y)


@pytest.mark.parametrize("activations", [1, 3])
def test_laurel_pa_model_reads_the_previous_sublayer_outputs(activations):
    """Whole model, random weights: sublayer s (0-based over attn, mlp, attn, ...) reads x_s and x_{s-1}, ..., x_{s-k+1},
    x_t being the input of sublayer t (x_0 the embedding output) and 0 where t < 0; its output is the next one's x."""
    model = randomize_(SkipNormModel(tiny(residual="laurel", laurel_variant="pa", num_hidden_layers=3,
                                          laurel_pa_activations=activations, norm_position="pre_post")).double(),
                       scale=0.2)
    seen = []  # (x_s, previous_s, output_s) in forward order
    for block in model.layers:
        for name in ("attn", "mlp"):
            getattr(block, f"{name}_residual").register_forward_hook(
                lambda m, args, out: seen.append((args[0], args[2], out)))
            getattr(block, f"{name}_post_norm").register_forward_hook(lambda m, args, out: seen.append(out))
    embedded = {}
    model.layers[0].register_forward_pre_hook(lambda m, args: embedded.__setitem__("x0", args[0][..., 0, :]))
    model(torch.randint(0, VOCAB, (2, 6)))
    combines, outputs = seen[0::2], seen[1::2]
    assert len(combines) == 6 == len(outputs)
    inputs = [embedded["x0"]] + list(outputs)  # x_0, x_1, ..., x_6
    for s, (x, previous, _) in enumerate(combines):
        torch.testing.assert_close(x, inputs[s], rtol=0, atol=0)
        assert previous.shape[-2] == activations - 1
        for j in range(1, activations):
            want = inputs[s - j] if s - j >= 0 else torch.zeros_like(x)
            torch.testing.assert_close(previous[..., j - 1, :], want, rtol=0, atol=0)


def test_laurel_pa_starts_as_the_plain_residual_model():
    """gamma = 1, B = 0: the model is the residual='add' model with the same weights, exactly; A as LAuReL-LR's."""
    laurel = SkipNormModel(tiny(residual="laurel", laurel_variant="pa", laurel_rank=4)).eval()
    plain = SkipNormModel(tiny()).eval()
    missing, unexpected = plain.load_state_dict(laurel.state_dict(), strict=False)
    assert not missing and all("_residual." in key for key in unexpected)
    ids = torch.randint(0, VOCAB, (2, 6))
    torch.testing.assert_close(laurel(ids).last_hidden_state, plain(ids).last_hidden_state, rtol=0, atol=0)
    residual = laurel.layers[1].mlp_residual
    assert torch.all(residual.gamma_bias == 0) and torch.all(residual.laurel_up.weight == 0)
    torch.testing.assert_close(residual.laurel_down.weight.double().t(), ref_column_orthogonal(4, 16))


def test_laurel_scalars_are_not_decayed_and_its_matrices_are(tmp_path):
    for variant, suffixes in (("rw_lr", ("alpha_logit_bias", "beta_logit_bias")), ("pa", ("gamma_bias",))):
        model = SkipNormForCausalLM(tiny(residual="laurel", laurel_variant=variant))
        group_of = decay_groups(model, tmp_path)
        names = dict(model.named_parameters())
        scalars = [n for n in names if n.endswith(suffixes)]
        matrices = [n for n in names if "laurel_" in n]
        assert len(scalars) == 4 * len(suffixes) and len(matrices) == 8
        assert all(group_of[id(names[n])] == 0.0 for n in scalars), scalars
        assert all(group_of[id(names[n])] == 0.1 for n in matrices), matrices


@pytest.mark.parametrize("fields", [dict(residual="orthogonal"), dict(residual="laurel", laurel_variant="rw"),
                                    dict(residual="laurel", laurel_variant="lr"), dict(residual="laurel"),
                                    dict(residual="laurel", laurel_rw_weights="sigmoid"),
                                    dict(residual="laurel", laurel_variant="pa")],
                         ids=["orthogonal", "laurel-rw", "laurel-lr", "laurel-rw_lr", "laurel-rw_lr-sigmoid",
                              "laurel-pa"])
def test_cache_and_gradient_checkpointing_for_orthogonal_and_laurel(fields):
    config = tiny(pad_token_id=0, **fields)
    assert generation_matches(config, lambda m: randomize_(m, scale=0.2))
    assert checkpointed_gradients_match(tiny(**fields), lambda m: randomize_(m, scale=0.2))


@pytest.mark.parametrize("fields,words", [
    (dict(residual="laurel", laurel_rank=0), ["laurel_rank=0", "integer >= 1"]),
    (dict(residual="laurel", laurel_rank=17), ["laurel_rank=17", "hidden_size=16"]),
    (dict(residual="laurel", laurel_variant="rw_pa"), ["laurel_variant='rw_pa'", "rw, lr, rw_lr, pa"]),
    (dict(residual="laurel", laurel_pa_activations=0), ["laurel_pa_activations=0"]),
    (dict(residual="laurel", laurel_variant="pa", parallel_block=True), ["laurel_variant='pa'", "parallel_block=True"]),
    (dict(residual="laurel", laurel_variant="pa", norm_position="b2t"), ["residual='laurel'", "'b2t'"]),
    (dict(residual="laurel", laurel_variant="pa", unet_skips=True), ["laurel_variant='pa'", "unet_skips=True"]),
    (dict(is_encoder_decoder=True, residual="laurel", laurel_variant="pa"), ["laurel_variant='pa'", "encoder-decoder"]),
    (dict(residual="laurel", laurel_rw_weights="tanh"), ["laurel_rw_weights='tanh'", "softmax, sigmoid"]),
    (dict(residual="orthogonal", orthogonal_eps=-1.0), ["orthogonal_eps=-1.0"]),
])
def test_bad_frontier_residual_fields_are_refused_with_the_reason(fields, words):
    with pytest.raises(ValueError) as info:
        tiny(**fields)
    for word in words:
        assert word in str(info.value), (word, str(info.value))


def test_width_bounds_of_unused_residual_fields_do_not_refuse_a_model():
    """laurel_rank=16 and frac_rate=4 (the defaults) only bind where their residual is used: d=6 (3 heads of 2) builds."""
    for residual in ("add", "orthogonal"):
        tiny(hidden_size=6, num_attention_heads=3, residual=residual)
    tiny(hidden_size=6, num_attention_heads=3, residual="laurel", laurel_variant="rw")
    with pytest.raises(ValueError, match="frac_rate=4"):
        tiny(hidden_size=6, num_attention_heads=3, residual="frac")


# ---------------------------------------------------------------------------------------------- nGPT
def ngpt(**overrides):
    return tiny(architecture="ngpt", norm_position="none", tie_word_embeddings=False, **overrides)


def ngpt_randomize_(model):
    """Random matrices and scalings (not the init), then back on the sphere: a valid nGPT state to check formulas on."""
    from hf_skipnorm.ngpt_skipnorm import normalize_ngpt_weights_

    randomize_(model, scale=0.3)
    normalize_ngpt_weights_(model)
    return model


def ref_unit(x):
    return x / torch.sqrt((x * x).sum(-1, keepdim=True))


def ref_ngpt_logits(model, ids):
    """nGPT written out from arXiv 2410.01131 (Sec. 2) with NVIDIA/ngpt's scalings, in float64.

    h = E_in[ids]; per block  h_A = Norm(W_o Attn(q, k, v)),  h <- Norm(h + |alpha_A| (h_A - h)),
    h_M = Norm(W_down (u * SiLU(v))),  h <- Norm(h + |alpha_M| (h_M - h)),  with q, k = s_qk Norm(RoPE(W h)) per
    head, softmax(sqrt(d_k) q k^T + causal), u = s_u W_up h, v = s_v sqrt(d) W_gate h; logits = s_z E_out h.
    Each scaling s = s_init * (stored) / s_scale, stored = s_scale + offset.
    """
    config = model.config
    d, H, hd = config.hidden_size, config.num_attention_heads, config.head_dim
    base = 1.0 / math.sqrt(d)
    scaled = lambda offset, init, scale: init * (scale + offset) / scale  # noqa: E731
    # RoPE angles p * 10000^(-2i/hd); the model keeps these frequencies in a float32 buffer (as LLaMA does), ~1e-8
    # relative off the float64 values, so read them from it: the comparison is about nGPT's wiring, not the buffer.
    inv_freq = model.model.embed_positions.inv_freq.tolist()
    assert inv_freq == pytest.approx([10000.0 ** (-2 * i / hd) for i in range(hd // 2)], rel=1e-6)
    T = ids.shape[1]
    angles = torch.tensor([[p * f for f in inv_freq] for p in range(T)], dtype=torch.float64)
    angles = torch.cat([angles, angles], -1)
    rope = lambda x: x * angles.cos() + torch.cat([-x[..., hd // 2:], x[..., :hd // 2]], -1) * angles.sin()  # noqa
    h = model.model.embed_tokens.weight[ids]  # (B, T, d), unit rows
    for block in model.model.layers:
        attn = block.self_attn
        s_qk = scaled(attn.qk_scale.s_bias, 1.0, base)  # (H, hd)
        q, k, v = h @ attn.q_proj.weight.T, h @ attn.k_proj.weight.T, h @ attn.v_proj.weight.T
        heads = []
        for head in range(H):
            cut = slice(head * hd, (head + 1) * hd)
            qh = s_qk[head] * ref_unit(rope(q[..., cut]))
            kh = s_qk[head] * ref_unit(rope(k[..., cut]))
            scores = math.sqrt(hd) * qh @ kh.transpose(-1, -2)
            scores = scores.masked_fill(torch.triu(torch.ones(T, T, dtype=torch.bool), 1), float("-inf"))
            heads.append(torch.softmax(scores, -1) @ v[..., cut])
        h_a = ref_unit(torch.cat(heads, -1) @ attn.o_proj.weight.T)
        alpha_a = scaled(block.attn_alpha.s_bias, 0.05, base).abs()
        h = ref_unit(h + alpha_a * (h_a - h))
        mlp = block.mlp
        u = scaled(mlp.up_scale.s_bias, 1.0, 1.0) * (h @ mlp.up_proj.weight.T)
        g = scaled(mlp.gate_scale.s_bias, 1.0, 1.0) * math.sqrt(d) * (h @ mlp.gate_proj.weight.T)
        h_m = ref_unit((u * F.silu(g)) @ mlp.down_proj.weight.T)
        alpha_m = scaled(block.mlp_alpha.s_bias, 0.05, base).abs()
        h = ref_unit(h + alpha_m * (h_m - h))
    s_z = scaled(model.logit_scale.s_bias, 1.0, base)
    return s_z * (h @ model.lm_head.weight.T)


def test_ngpt_matches_the_papers_equations_in_float64():
    model = ngpt_randomize_(SkipNormForCausalLM(ngpt(num_hidden_layers=3)).double().eval())
    ids = torch.randint(0, VOCAB, (2, 7))
    out = model(ids, output_hidden_states=True)
    torch.testing.assert_close(out.logits, ref_ngpt_logits(model, ids), rtol=1e-10, atol=1e-10)
    for hidden in out.hidden_states:  # every hidden state lies on the unit sphere
        torch.testing.assert_close(hidden.norm(dim=-1), torch.ones(2, 7, dtype=torch.float64), rtol=0, atol=1e-12)
    sdpa = SkipNormForCausalLM._from_config(model.config, attn_implementation="sdpa").double().eval()
    sdpa.load_state_dict(model.state_dict())
    torch.testing.assert_close(sdpa(ids).logits, out.logits, rtol=1e-10, atol=1e-10)  # sdpa gets scale sqrt(d_k) too


def test_ngpt_init_is_the_papers():
    """Unit embeddings and matrix rows (columns of W_o, W_down), no norm layer, alpha = 0.05, s_qk = s_u = s_v = s_z =
    1 with the paper's stored scales 1/sqrt(d) (alpha, s_qk, s_z) and 1 (s_u, s_v)."""
    from hf_skipnorm.ngpt_skipnorm import ngpt_unit_weights

    model = SkipNormForCausalLM(ngpt())
    for name, weight, dim in ngpt_unit_weights(model):
        torch.testing.assert_close(weight.norm(dim=dim), torch.ones(weight.shape[1 - dim % 2]), msg=name)
    assert len(ngpt_unit_weights(model)) == 2 * 7 + 2
    assert not [n for n, _ in model.named_parameters() if "norm" in n]
    block = model.model.layers[1]
    assert torch.allclose(block.attn_alpha(), torch.full((16,), 0.05)) and block.attn_alpha.scale == 0.25
    assert torch.allclose(block.mlp_alpha(), torch.full((16,), 0.05))
    assert torch.all(block.self_attn.qk_scale() == 1.0) and block.self_attn.qk_scale.scale == 0.25
    assert torch.all(block.mlp.up_scale() == 1.0) and block.mlp.up_scale.scale == 1.0
    assert torch.all(model.logit_scale.value() == 1.0) and model.logit_scale.scale == 0.25
    assert block.self_attn.scaling == 2.0  # sqrt(head_dim = 4)
    assert model.lm_head.weight.data_ptr() != model.model.embed_tokens.weight.data_ptr()  # E_in, E_out separate


def test_ngpt_weights_are_renormalized_through_the_trainer_and_its_scalings_never_decay(tmp_path):
    from hf_skipnorm.ngpt_skipnorm import ngpt_unit_weights
    from hf_skipnorm.ngpt_training import NGPTNormalizeCallback

    ids = torch.randint(0, VOCAB, (8, 8))
    dataset = [{"input_ids": row, "labels": row} for row in ids]

    def train(callbacks, weight_decay=0.0):
        torch.manual_seed(0)
        model = SkipNormForCausalLM(ngpt())
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        args = TrainingArguments(output_dir=str(tmp_path), max_steps=3, learning_rate=3e-2, weight_decay=weight_decay,
                                 per_device_train_batch_size=4, gradient_accumulation_steps=2, report_to=[],
                                 use_cpu=True, save_strategy="no", logging_strategy="no", disable_tqdm=True)
        Trainer(model=model, args=args, train_dataset=dataset, callbacks=callbacks).train()
        return model, before

    model, before = train([NGPTNormalizeCallback()])
    for name, weight, dim in ngpt_unit_weights(model):
        torch.testing.assert_close(weight.norm(dim=dim), torch.ones_like(weight.norm(dim=dim)), rtol=0, atol=1e-5,
                                   msg=name)
    moved = [n for n, p in model.named_parameters() if not torch.equal(p, before[n])]
    assert len(moved) == len(before), set(before) - set(moved)  # every parameter trained, scalings included
    control, _ = train([])  # the same run without the callback leaves the sphere: the callback is what keeps it
    drift = max((w.norm(dim=d) - 1).abs().max().item() for _, w, d in ngpt_unit_weights(control))
    assert drift > 1e-3, drift
    with pytest.raises(ValueError, match="weight_decay=0.1"):
        train([NGPTNormalizeCallback()], weight_decay=0.1)
    with pytest.raises(ValueError, match="architecture='ngpt'"):
        args = TrainingArguments(output_dir=str(tmp_path), max_steps=1, report_to=[], use_cpu=True,
                                 save_strategy="no")
        Trainer(model=SkipNormForCausalLM(tiny()), args=args, train_dataset=dataset,
                callbacks=[NGPTNormalizeCallback()]).train()
    # Should a user decay anyway (without the callback), the scalings are in the Trainer's no-decay group.
    model = SkipNormForCausalLM(ngpt())
    group_of = decay_groups(model, tmp_path)
    for name, param in model.named_parameters():
        assert group_of[id(param)] == (0.0 if name.endswith("s_bias") else 0.1), name
    assert sum(name.endswith("s_bias") for name, _ in model.named_parameters()) == 2 * 5 + 1


def test_ngpt_cache_checkpointing_and_save_load(tmp_path):
    assert generation_matches(ngpt(pad_token_id=0), ngpt_randomize_)
    assert checkpointed_gradients_match(ngpt(), ngpt_randomize_)
    model = ngpt_randomize_(SkipNormForCausalLM(ngpt()))
    model.save_pretrained(tmp_path)
    loaded = SkipNormForCausalLM.from_pretrained(tmp_path)  # loaded weights are kept, not re-normalized or re-drawn
    for (name, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), name
    assert loaded.config.architecture == "ngpt"


@pytest.mark.parametrize("fields,words", [
    (dict(architecture="ngpt", tie_word_embeddings=False), ["norm_position='pre'", "no norm layers", "'none'"]),
    (dict(architecture="ngpt", norm_position="none"), ["tie_word_embeddings=True", "E_input and E_output"]),
    (dict(architecture="ngpt", norm_position="none", tie_word_embeddings=False, num_key_value_heads=2),
     ["num_key_value_heads=2", "s_qk"]),
    (dict(architecture="ngpt", norm_position="none", tie_word_embeddings=False, position_embedding="learned"),
     ["position_embedding='learned'", "rope, none"]),
    (dict(architecture="ngpt", norm_position="none", tie_word_embeddings=False, residual="laurel"),
     ["residual='laurel'", "Norm(h + alpha (h_A - h))"]),
    (dict(architecture="ngpt", norm_position="none", tie_word_embeddings=False, final_norm=True),
     ["final_norm=True", "unit sphere"]),
    (dict(architecture="ngpt", norm_position="none", tie_word_embeddings=False, ngpt_alpha_init=0.0),
     ["ngpt_alpha_init=0.0"]),
    (dict(architecture="gpt"), ["architecture='gpt'", "transformer, ngpt"]),
])
def test_ngpt_refuses_fields_it_would_otherwise_ignore(fields, words):
    with pytest.raises(ValueError) as info:
        tiny(**fields)
    for word in words:
        assert word in str(info.value), (word, str(info.value))


def test_ngpt_cells_of_the_grid_build_and_train_or_say_why():
    """architecture='ngpt' across norm_position x residual x parallel_block (the catalogue's grid axes): the one cell
    nGPT defines builds, trains (finite loss and gradients, float32 within 1e-5 of float64), every other cell is
    refused with a ValueError naming the field."""
    from hf_skipnorm import configuration_skipnorm as cfg

    built, refused = [], 0
    ids = torch.randint(0, VOCAB, (2, 6))
    for position in cfg.NORM_POSITIONS:
        for residual in cfg.RESIDUALS:
            for parallel in (False, True):
                try:
                    config = tiny(architecture="ngpt", tie_word_embeddings=False, norm_position=position,
                                  residual=residual, parallel_block=parallel)
                except ValueError as error:
                    assert "SkipNormConfig." in str(error) and "not valid" in str(error), str(error)
                    refused += 1
                    continue
                model = SkipNormForCausalLM(config).double()
                loss = model(ids, labels=ids).loss
                loss.backward()
                assert torch.isfinite(loss) and all(torch.isfinite(p.grad).all() for p in model.parameters())
                with torch.no_grad():
                    single = model.float()(ids).logits
                    double = model.double()(ids).logits
                assert ((single.double() - double).norm() / double.norm()).item() < 1e-5
                built.append((position, residual, parallel))
    assert built == [("none", "add", False)] and refused == len(cfg.NORM_POSITIONS) * len(cfg.RESIDUALS) * 2 - 1


# ---------------------------------------------------------------------------------------------- Frac-Connections
def ref_frac_sublayer(module, x, branch_fn, dynamic, eps):
    """Frac-Connections (arXiv 2503.14125) on one token at a time, fraction by fraction, from the connection matrix
    [[0, B], [Y, A]]: H = Reshape(h, (m, d/m)); input fraction i = sum_j Y[j, i] H_j; output fraction i =
    sum_j A[j, i] H_j + B_i T(input)_i. Dynamic: Y, A, B plus s * tanh(N(H_j) W) row by row (RMSNorm N, gain g)."""
    m = module.num_streams
    B_, T_, d = x.shape
    w = d // m
    H = x.reshape(B_, T_, m, w)
    Y = torch.eye(m, dtype=x.dtype) + module.input_bias
    A = torch.eye(m, dtype=x.dtype) + module.mixing_bias
    Bw = 1.0 + module.output_bias
    Y, A, Bw = Y.expand(B_, T_, m, m).clone(), A.expand(B_, T_, m, m).clone(), Bw.expand(B_, T_, m).clone()
    if dynamic:
        s_a, s_b = 0.01 + module.width_scale_bias, 0.01 + module.depth_scale_bias
        g = module.dynamic_norm.weight
        Wy, Wa = module.dynamic_width_proj.weight[:m], module.dynamic_width_proj.weight[m:]  # (m, w) each
        Wb = module.dynamic_depth_proj.weight[0]  # (w,)
        for j in range(m):
            hj = H[:, :, j]
            normed = g * hj / torch.sqrt((hj * hj).mean(-1, keepdim=True) + eps)
            Y[:, :, j] += s_a * torch.tanh(normed @ Wy.T)
            A[:, :, j] += s_a * torch.tanh(normed @ Wa.T)
            Bw[:, :, j] += s_b * torch.tanh(normed @ Wb)
    inputs = torch.stack([sum(Y[:, :, j, i, None] * H[:, :, j] for j in range(m)) for i in range(m)], 2)
    y = branch_fn(inputs.reshape(B_, T_, d)).reshape(B_, T_, m, w)
    out = torch.stack([sum(A[:, :, j, i, None] * H[:, :, j] for j in range(m)) + Bw[:, :, i, None] * y[:, :, i]
                       for i in range(m)], 2)
    return out.reshape(B_, T_, d)


@pytest.mark.parametrize("dynamic", [False, True], ids=["static", "dynamic"])
@pytest.mark.parametrize("rate", [2, 4])
def test_frac_connection_matches_the_papers_formula(dynamic, rate):
    config = tiny(residual="frac", frac_rate=rate, hyper_dynamic=dynamic)
    module = randomize_(build_residual(config, 1, "attn").double())
    if dynamic:
        with torch.no_grad():
            module.dynamic_norm.weight.add_(1.0)
    x = torch.randn(2, 5, 16, dtype=torch.float64)
    weight = torch.randn(16, 16, dtype=torch.float64) * 0.3
    branch_fn = lambda u: torch.tanh(u @ weight.T)  # noqa: E731  (any sublayer T)
    h_in, mixed, write = module.width(x)
    out = module.depth(mixed, write, branch_fn(h_in), x.dtype)
    torch.testing.assert_close(out, ref_frac_sublayer(module, x, branch_fn, dynamic, config.norm_eps),
                               rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dynamic", [False, True], ids=["static", "dynamic"])
def test_frac_starts_as_the_plain_residual_model_and_keeps_one_stream(dynamic):
    frac = SkipNormModel(tiny(residual="frac", hyper_dynamic=dynamic)).eval()
    plain = SkipNormModel(tiny()).eval()
    missing, unexpected = plain.load_state_dict(frac.state_dict(), strict=False)
    assert not missing and all("_residual." in key for key in unexpected)
    ids = torch.randint(0, VOCAB, (2, 6))
    out, ref = frac(ids, output_hidden_states=True), plain(ids, output_hidden_states=True)
    torch.testing.assert_close(out.last_hidden_state, ref.last_hidden_state, rtol=0, atol=0)
    assert all(h.shape == (2, 6, 16) for h in out.hidden_states)  # the state is the (B, T, d) stream itself


def test_frac_cache_checkpointing_and_no_decay(tmp_path):
    randomize = lambda m: randomize_(m, scale=0.2)  # noqa: E731
    assert generation_matches(tiny(residual="frac", pad_token_id=0), randomize)
    assert checkpointed_gradients_match(tiny(residual="frac"), randomize)
    model = SkipNormForCausalLM(tiny(residual="frac"))
    group_of = decay_groups(model, tmp_path)
    for name, param in model.named_parameters():
        if "_residual." in name:
            decayed = name.endswith(("dynamic_width_proj.weight", "dynamic_depth_proj.weight"))
            assert group_of[id(param)] == (0.1 if decayed else 0.0), name


@pytest.mark.parametrize("fields,words", [
    (dict(residual="frac", frac_rate=3), ["frac_rate=3", "divides hidden_size=16"]),
    (dict(residual="frac", norm_position="post"), ["norm_position='post'", "residual='frac'"]),
    (dict(residual="frac", parallel_block=True), ["residual='frac'", "parallel_block=True"]),
])
def test_frac_refusals_say_why(fields, words):
    with pytest.raises(ValueError) as info:
        tiny(**fields)
    for word in words:
        assert word in str(info.value), (word, str(info.value))


def test_train_py_refuses_ngpt_with_weight_decay_before_any_data_work(tmp_path):
    """train.py adds NGPTNormalizeCallback by itself; its default weight_decay=0.1 is refused first, with the fix."""
    from training import train

    argv = ["--output_dir", str(tmp_path / "run"), "--hidden_size", "32", "--num_hidden_layers", "2",
            "--num_attention_heads", "2", "--block_size", "32", "--max_steps", "1",
            "--config_overrides", "architecture=ngpt,norm_position=none,tie_word_embeddings=false"]
    with pytest.raises(ValueError, match=r"weight_decay=0.1 is not valid for nGPT.*--weight_decay 0"):
        train.main(argv)
    assert not (tmp_path / "run").exists() or not any((tmp_path / "run").iterdir())

"""Issue 15's residual frontier against formulas written again here from the papers, in float64.

Nothing below reuses the package's math: the orthogonal update (Oh et al., arXiv 2505.11881), LAuReL (Menghani et
al., arXiv 2411.07501) and nGPT (Loshchilov et al., arXiv 2410.01131; NVIDIA/ngpt) are recomputed from the modules'
parameters only, on random (non-init) weights. Model-level checks: the paper's init (LAuReL starts as the plain
residual model), cached generation equals uncached, gradient checkpointing gives the same gradients, the Trainer puts
learned scalars in its no-decay group, and nGPT's weight renormalization runs through the Trainer's callback.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from transformers import Trainer, TrainingArguments

from hf_skipnorm import SkipNormConfig, SkipNormForCausalLM, SkipNormModel
from hf_skipnorm.residuals_skipnorm import build_residual

VOCAB = 50


def tiny(**overrides):
    fields = dict(vocab_size=VOCAB, hidden_size=16, num_hidden_layers=2, num_attention_heads=4, intermediate_size=24,
                  max_position_embeddings=32, attn_implementation="eager")
    fields.update(overrides)
    return SkipNormConfig(**fields)


def randomize_(module, scale=0.3):
    """Every parameter random, so a formula test cannot pass on an init of 0 or 1."""
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn_like(p) * scale)
    return module


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


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
    """Oh et al. 2025, Eq. (4)-(5): f_par = (<x, f> / (||x||^2 + eps)) x per token; x_{n+1} = x_n + (f - f_par)."""
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
@pytest.mark.parametrize("variant", ["rw", "lr", "rw_lr"])
def test_laurel_combine_matches_the_papers_formula(variant):
    """LAuReL, Sec. 2: RW  x' = a f(x) + b x;  LR  x' = f(x) + B A x + x;  RW+LR  x' = a f(x) + b (B A x + x)."""
    module = randomize_(build_residual(tiny(residual="laurel", laurel_variant=variant, laurel_rank=3), 0, "mlp")
                        .double())
    x, y = torch.randn(2, 5, 16, dtype=torch.float64), torch.randn(2, 5, 16, dtype=torch.float64)
    a = 1.0 + module.alpha_bias.item() if variant != "lr" else 1.0
    b = 1.0 + module.beta_bias.item() if variant != "lr" else 1.0
    if variant == "rw":
        expected = a * y + b * x
    else:
        A, B = module.laurel_down.weight, module.laurel_up.weight  # (r, d), (d, r)
        assert A.shape == (3, 16) and B.shape == (16, 3)
        low_rank = torch.einsum("dr,rk,btk->btd", B, A, x)
        expected = a * y + b * (low_rank + x)
    torch.testing.assert_close(module(x, y), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("variant", ["rw", "lr", "rw_lr"])
def test_laurel_starts_as_the_plain_residual_model(variant):
    """alpha = beta = 1 and B = 0 at init: the model is the residual='add' model with the same weights, exactly."""
    laurel = SkipNormModel(tiny(residual="laurel", laurel_variant=variant)).eval()
    plain = SkipNormModel(tiny()).eval()
    missing, unexpected = plain.load_state_dict(laurel.state_dict(), strict=False)
    assert not missing and all("_residual." in key for key in unexpected)
    ids = torch.randint(0, VOCAB, (2, 6))
    torch.testing.assert_close(laurel(ids).last_hidden_state, plain(ids).last_hidden_state, rtol=0, atol=0)
    for block in laurel.layers:
        residual = block.attn_residual
        if variant != "lr":
            assert residual.alpha_bias.item() == 0.0 == residual.beta_bias.item()
        if variant != "rw":
            assert torch.all(residual.laurel_up.weight == 0) and residual.laurel_down.weight.std() > 0


def test_laurel_scalars_are_not_decayed_and_its_matrices_are(tmp_path):
    model = SkipNormForCausalLM(tiny(residual="laurel"))
    group_of = decay_groups(model, tmp_path)
    names = dict(model.named_parameters())
    scalars = [n for n in names if n.endswith(("alpha_bias", "beta_bias"))]
    matrices = [n for n in names if "laurel_" in n]
    assert len(scalars) == 8 and len(matrices) == 8
    assert all(group_of[id(names[n])] == 0.0 for n in scalars), scalars
    assert all(group_of[id(names[n])] == 0.1 for n in matrices), matrices


@pytest.mark.parametrize("fields", [dict(residual="orthogonal"), dict(residual="laurel", laurel_variant="rw"),
                                    dict(residual="laurel", laurel_variant="lr"), dict(residual="laurel")],
                         ids=["orthogonal", "laurel-rw", "laurel-lr", "laurel-rw_lr"])
def test_cache_and_gradient_checkpointing_for_orthogonal_and_laurel(fields):
    config = tiny(pad_token_id=0, **fields)
    assert generation_matches(config, lambda m: randomize_(m, scale=0.2))
    assert checkpointed_gradients_match(tiny(**fields), lambda m: randomize_(m, scale=0.2))


@pytest.mark.parametrize("fields,words", [
    (dict(residual="laurel", laurel_rank=0), ["laurel_rank=0", "hidden_size=16"]),
    (dict(residual="laurel", laurel_rank=17), ["laurel_rank=17"]),
    (dict(residual="laurel", laurel_variant="pa"), ["laurel_variant='pa'", "rw, lr, rw_lr"]),
    (dict(residual="orthogonal", orthogonal_eps=-1.0), ["orthogonal_eps=-1.0"]),
])
def test_bad_frontier_residual_fields_are_refused_with_the_reason(fields, words):
    with pytest.raises(ValueError) as info:
        tiny(**fields)
    for word in words:
        assert word in str(info.value), (word, str(info.value))

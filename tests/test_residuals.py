"""The residual catalogue: every `residual` value against its paper's formula, written again here in float64.

Nothing below reuses the package's math: each combine (DeepNorm, Admin, ReZero/SkipInit, LayerScale, the highway gate,
hyper-connections, mHC with its Sinkhorn projection, DenseFormer's depth-weighted average) is recomputed from the
module's parameters only. Model-level tests check what the issue asks: hyper-connections start as the pre-norm model,
streams are reduced before the final norm, learnable residual parameters get no weight decay under the Trainer, init
lives in `_init_weights` and survives save/load, hyper-connection weights stay float32 in bf16, cached generation
equals uncached generation, and `residual="none"` has no identity path.
"""

import math
import os
import sys

import pytest
import torch
import torch.nn.functional as F
from transformers import Trainer, TrainingArguments

from helpers import randomize_
from hf_skipnorm import SkipNormConfig, SkipNormForCausalLM, SkipNormModel
from hf_skipnorm import configuration_skipnorm as cfg
from hf_skipnorm.hyper_connections_skipnorm import DepthWeightedAverage
from hf_skipnorm.residuals_skipnorm import build_residual

VOCAB = 50
NEW_RESIDUALS = ["deepnorm", "admin", "rezero", "skipinit", "layerscale", "gated", "hyper", "mhc", "dense"]
POST_LN = {"deepnorm", "admin"}


def tiny(**overrides):
    fields = dict(vocab_size=VOCAB, hidden_size=16, num_hidden_layers=2, num_attention_heads=4, intermediate_size=24,
                  max_position_embeddings=32, attn_implementation="eager")
    if overrides.get("residual") in POST_LN:
        fields["norm_position"] = "post"
    fields.update(overrides)
    return SkipNormConfig(**fields)


# ---------------------------------------------------------------------------------------------- constants
@pytest.mark.parametrize("depth", [1, 6, 12, 18, 100, 1000])
@pytest.mark.parametrize("is_causal", [True, False], ids=["decoder-only", "encoder-only"])
def test_deepnet_constants_are_the_papers(depth, is_causal):
    # DeepNet (arXiv 2203.00555), Table 1: encoder-only alpha = (2N)^(1/4), beta = (8N)^(-1/4); decoder-only the
    # same in M. (Encoder-decoder uses other constants, e.g. 0.81 (N^4 M)^(1/16): not these.)
    config = SkipNormConfig(vocab_size=VOCAB, hidden_size=16, num_attention_heads=4, num_hidden_layers=depth,
                            residual="deepnorm", norm_position="post", is_causal=is_causal)
    assert config.residual_alpha == pytest.approx(math.pow(2.0 * depth, 0.25), rel=1e-15)
    assert config.branch_init_gain == pytest.approx(1.0 / math.pow(8.0 * depth, 0.25), rel=1e-15)
    # Stored resolved: the saved config carries the numbers, and an explicit value wins.
    assert SkipNormConfig.from_dict(config.to_dict()).residual_alpha == config.residual_alpha
    custom = SkipNormConfig(vocab_size=VOCAB, hidden_size=16, num_attention_heads=4, num_hidden_layers=depth,
                            residual="deepnorm", norm_position="post", residual_alpha=3.0, branch_init_gain=0.5)
    assert (custom.residual_alpha, custom.branch_init_gain) == (3.0, 0.5)


def test_deepnet_values_at_known_depths():
    # Hand-checked: N=8 -> alpha = 16^(1/4) = 2, beta = 64^(-1/4) = 1/(2*sqrt 2); N=2 -> alpha = sqrt 2, beta = 1/2.
    for depth, alpha, beta in [(8, 2.0, 1 / (2 * math.sqrt(2))), (2, math.sqrt(2), 0.5)]:
        config = tiny(residual="deepnorm", num_hidden_layers=depth)
        assert config.residual_alpha == pytest.approx(alpha) and config.branch_init_gain == pytest.approx(beta)
    assert tiny().residual_alpha == 1.0 and tiny().branch_init_gain is None


@pytest.mark.parametrize("depth,expected", [(1, 0.1), (12, 0.1), (18, 0.1), (19, 1e-5), (24, 1e-5), (25, 1e-6),
                                            (36, 1e-6)])
def test_layerscale_init_follows_caits_depth_schedule(depth, expected):
    # CaiT (arXiv 2103.17239), Sec. 3.1: epsilon = 0.1 up to depth 18, 1e-5 up to 24, 1e-6 for deeper networks.
    assert tiny(residual="layerscale", num_hidden_layers=depth).layerscale_init == expected
    assert tiny(residual="layerscale", layerscale_init=0.5).layerscale_init == 0.5


def test_deepnorm_init_is_xavier_normal_with_gain_beta():
    depth, d, ffn = 4, 128, 256
    model = SkipNormModel(tiny(residual="deepnorm", num_hidden_layers=depth, hidden_size=d, intermediate_size=ffn))
    beta = (8.0 * depth) ** -0.25
    xavier = lambda fan_in, fan_out, gain: gain * math.sqrt(2.0 / (fan_in + fan_out))  # noqa: E731 (Glorot 2010)

    def std_of(name):
        return torch.cat([layer.get_submodule(name).weight.flatten() for layer in model.layers]).std().item()

    for name, fans, gain in [("self_attn.q_proj", (d, d), 1.0), ("self_attn.k_proj", (d, d), 1.0),
                             ("self_attn.v_proj", (d, d), beta), ("self_attn.o_proj", (d, d), beta),
                             ("mlp.gate_proj", (d, ffn), beta), ("mlp.up_proj", (d, ffn), beta),
                             ("mlp.down_proj", (ffn, d), beta)]:
        expected = xavier(*fans, gain)
        assert abs(std_of(name) - expected) < 0.03 * expected, name


# ---------------------------------------------------------------------------------------------- single-stream combines
def combine_inputs(d=16):
    return torch.randn(3, 5, d, dtype=torch.float64), torch.randn(3, 5, d, dtype=torch.float64)


def test_deepnorm_and_admin_combines():
    x, y = combine_inputs()
    deepnorm = build_residual(tiny(residual="deepnorm", num_hidden_layers=6), 0, "attn")
    torch.testing.assert_close(deepnorm(x, y), (12.0 ** 0.25) * x + y, rtol=1e-14, atol=0)

    omegas = [1.0, 1.5, 2.0, 2.5]
    admin = randomize_(build_residual(tiny(residual="admin", admin_omegas=omegas), 1, "mlp").double())
    expected = (2.5 + admin.omega_bias) * x + y  # layer 1 MLP = sublayer 3
    torch.testing.assert_close(admin(x, y), expected, rtol=1e-14, atol=0)


@pytest.mark.parametrize("residual", ["rezero", "skipinit"])
def test_rezero_and_skipinit_start_as_the_identity(residual):
    model = SkipNormModel(tiny(residual=residual, norm_position="none"))
    combine = model.layers[0].attn_residual.double()
    x, y = combine_inputs()
    torch.testing.assert_close(combine(x, y), x, rtol=0, atol=0)  # a = 0 at init: the block is the identity
    randomize_(combine)
    a = combine.alpha_bias.item()
    torch.testing.assert_close(combine(x, y), x + a * y, rtol=1e-14, atol=0)


def test_layerscale_combine():
    model = SkipNormModel(tiny(residual="layerscale", layerscale_init=0.1))
    combine = model.layers[1].mlp_residual.double()
    x, y = combine_inputs()
    torch.testing.assert_close(combine(x, y), x + 0.1 * y, rtol=1e-14, atol=0)
    randomize_(combine)
    torch.testing.assert_close(combine(x, y), x + (0.1 + combine.lambda_bias) * y, rtol=1e-14, atol=0)


def test_gated_combine_is_a_highway_gate_on_the_branch():
    model = SkipNormModel(tiny(residual="gated"))
    combine = model.layers[0].attn_residual.double()
    assert torch.all(combine.gate_proj.bias == -1.0)
    x, y = combine_inputs()
    W, b = combine.gate_proj.weight, combine.gate_proj.bias
    gate = 1.0 / (1.0 + torch.exp(-(x @ W[:, :16].T + y @ W[:, 16:].T + b)))
    torch.testing.assert_close(combine(x, y), x + gate * y, rtol=1e-12, atol=1e-14)


# ---------------------------------------------------------------------------------------------- hyper-connections
def reference_rmsnorm(x, weight, eps):
    return weight * x / torch.sqrt((x * x).mean(-1, keepdim=True) + eps)


def reference_hyper(module, H, branch, dynamic):
    """H' = A_r(H)^T H + B(H)^T T(A_m(H)^T H), the connection matrix written out (arXiv 2409.19606, eqs. 1-13)."""
    n = H.shape[-2]
    k = module.input_stream
    A_m = torch.zeros(n, dtype=H.dtype)
    A_m[k] = 1.0
    A_m = A_m + module.input_bias  # (n,)
    A_r = torch.eye(n, dtype=H.dtype) + module.mixing_bias  # (n, n)
    B = 1.0 + module.output_bias  # (n,)
    if dynamic:
        Hn = reference_rmsnorm(H, module.dynamic_norm.weight, module.dynamic_norm.eps)
        s_a = 0.01 + module.width_scale_bias
        s_b = 0.01 + module.depth_scale_bias
        W = module.dynamic_width_proj.weight.T  # (C, 1 + n)
        A_m = A_m + s_a * torch.tanh(Hn @ W[:, :1])[..., 0]  # (B, T, n)
        A_r = A_r + s_a * torch.tanh(Hn @ W[:, 1:])  # (B, T, n, n), row j = stream j
        B = B + s_b * torch.tanh(Hn @ module.dynamic_depth_proj.weight.T)[..., 0]
    h = (A_m[..., :, None] * H).sum(-2)
    y = branch(h)
    mixed = (A_r[..., :, :, None] * H[..., :, None, :]).sum(-3)  # sum over j of A_r[j, i] H_j
    return mixed + B[..., :, None] * y[..., None, :]


@pytest.mark.parametrize("dynamic", [False, True], ids=["static", "dynamic"])
@pytest.mark.parametrize("layer,sublayer,streams", [(0, "attn", 4), (1, "mlp", 4), (2, "attn", 3)])
def test_hyper_connection_matches_the_papers_formula(dynamic, layer, sublayer, streams):
    config = tiny(residual="hyper", hyper_dynamic=dynamic, residual_streams=streams, num_hidden_layers=3)
    module = randomize_(build_residual(config, layer, sublayer)).double()
    assert module.input_stream == (2 * layer + (sublayer == "mlp")) % streams
    H = torch.randn(2, 5, streams, 16, dtype=torch.float64)
    W = torch.randn(16, 16, dtype=torch.float64)
    branch = lambda h: torch.tanh(h @ W)  # noqa: E731  any sublayer will do
    h, mixed, write = module.width(H)
    got = module.depth(mixed, write, branch(h), torch.float64)
    torch.testing.assert_close(got, reference_hyper(module, H, branch, dynamic), rtol=1e-12, atol=1e-12)


def reference_sinkhorn(logits, iterations):
    M = torch.exp(logits)
    for _ in range(iterations):
        M = M / M.sum(-2, keepdim=True)
        M = M / M.sum(-1, keepdim=True)
    return M


@pytest.mark.parametrize("iters", [1, 20])
def test_mhc_matches_the_papers_formula(iters):
    n, C = 4, 16
    module = randomize_(build_residual(tiny(residual="mhc", sinkhorn_iters=iters), 1, "attn"), scale=0.5).double()
    H = torch.randn(2, 5, n, C, dtype=torch.float64)
    x = H.flatten(-2)
    xn = x / torch.sqrt((x * x).mean(-1, keepdim=True) + module.eps)
    phi = module.dynamic_proj.weight.T  # (nC, 2n + n^2)
    a_pre, a_post, a_res = (0.01 + module.pre_scale_bias, 0.01 + module.post_scale_bias, 0.01 + module.res_scale_bias)
    H_pre = torch.sigmoid(a_pre * (xn @ phi[:, :n]) + module.pre_bias)
    H_post = 2 * torch.sigmoid(a_post * (xn @ phi[:, n:2 * n]) + module.post_bias)
    H_res = reference_sinkhorn(a_res * (xn @ phi[:, 2 * n:]).reshape(2, 5, n, n) + module.res_bias, iters)
    W = torch.randn(C, C, dtype=torch.float64)
    y = torch.tanh(torch.einsum("btj,btjc->btc", H_pre, H) @ W)
    expected = torch.einsum("btij,btjc->btic", H_res, H) + H_post[..., None] * y[..., None, :]
    h, mixed, write = module.width(H)
    torch.testing.assert_close(module.depth(mixed, write, torch.tanh(h @ W), torch.float64), expected,
                               rtol=1e-12, atol=1e-12)
    # The projection: rows sum to 1 exactly (the last step); columns approach 1 (20 steps leave ~1e-4 here, the
    # approximation gap mHC-lite, arXiv 2601.05732, points out).
    _, _, res = module.mappings(H)
    torch.testing.assert_close(res.sum(-1), torch.ones(2, 5, n, dtype=torch.float64), rtol=0, atol=1e-12)
    assert torch.all(res >= 0)
    if iters == 20:
        torch.testing.assert_close(res.sum(-2), torch.ones(2, 5, n, dtype=torch.float64), rtol=0, atol=1e-3)


def test_dense_depth_weighted_average():
    module = randomize_(DepthWeightedAverage(tiny(residual="dense", num_hidden_layers=4), 2)).double()
    history = torch.randn(2, 5, 4, 16, dtype=torch.float64)  # Y_0 .. Y_3 after 0-based block 2
    alpha = torch.tensor([0.0, 0.0, 0.0, 1.0], dtype=torch.float64) + module.alpha_bias  # e_last + offset
    torch.testing.assert_close(module(history), torch.einsum("k,btkc->btc", alpha, history), rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------------------------------------- model level
def copy_into(target_config, source):
    """A model of `target_config` carrying `source`'s shared weights (the residual's own parameters keep their init)."""
    model = SkipNormForCausalLM(target_config).eval()
    missing, unexpected = model.load_state_dict(source.state_dict(), strict=False)
    assert not unexpected
    assert all("_residual." in name or "depth_average" in name for name in missing), missing
    return model


@pytest.mark.parametrize("position", ["pre", "sandwich"])
@pytest.mark.parametrize("residual,dynamic,streams", [("hyper", True, 4), ("hyper", False, 4), ("hyper", True, 2),
                                                       ("dense", True, 4)],
                         ids=["dhc-4", "shc-4", "dhc-2", "dense"])
def test_hyper_connections_and_dense_start_as_the_plain_residual_model(position, residual, dynamic, streams):
    base = tiny(norm_position=position, num_hidden_layers=3)
    reference = SkipNormForCausalLM(base).eval()
    model = copy_into(tiny(norm_position=position, num_hidden_layers=3, residual=residual, hyper_dynamic=dynamic,
                           residual_streams=streams), reference)
    ids = torch.randint(0, VOCAB, (2, 7))
    # Identical streams, identity mixing, B = 1: every stream is the pre-norm stream exactly (fp32 rounding aside).
    torch.testing.assert_close(model(ids).logits, reference(ids).logits, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("position", ["output", "subln", "normformer", "peri", "none"])
def test_hyper_connections_start_as_the_single_stream_model_under_other_placements(position):
    reference = SkipNormForCausalLM(tiny(norm_position=position)).eval()
    model = copy_into(tiny(norm_position=position, residual="hyper"), reference)
    ids = torch.randint(0, VOCAB, (2, 7))
    torch.testing.assert_close(model(ids).logits, reference(ids).logits, rtol=1e-6, atol=1e-6)


def test_mhc_starts_as_the_pre_norm_model_up_to_the_norm_epsilon():
    base = tiny(num_hidden_layers=3, norm_eps=1e-12)  # mHC's H_pre scales the input; a pre-norm removes the scale
    reference = SkipNormForCausalLM(base).eval()
    model = copy_into(tiny(num_hidden_layers=3, norm_eps=1e-12, residual="mhc"), reference)
    ids = torch.randint(0, VOCAB, (2, 7))
    torch.testing.assert_close(model(ids).logits, reference(ids).logits, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("residual", ["hyper", "mhc", "dense"])
def test_streams_are_reduced_before_the_final_norm(residual):
    model = SkipNormModel(tiny(residual=residual)).eval()
    seen = []
    model.final_norm.register_forward_hook(lambda module, args, out: seen.append(args[0].shape))
    out = model(torch.randint(0, VOCAB, (2, 7)))
    assert seen == [torch.Size([2, 7, 16])] and out.last_hidden_state.shape == (2, 7, 16)


def test_residual_none_has_no_identity_path():
    ids = torch.randint(0, VOCAB, (2, 7))
    outputs = {}
    for residual in ("none", "add"):
        model = SkipNormModel(tiny(residual=residual, norm_position="none", branch_init="zero")).eval()
        embeddings = model.embed_tokens(ids)
        outputs[residual] = (model(ids).last_hidden_state, embeddings)
    hidden, embeddings = outputs["none"]
    assert embeddings.abs().sum() > 0
    assert torch.all(hidden == 0)  # zero branches and no skip: nothing of the input survives
    hidden, embeddings = outputs["add"]
    torch.testing.assert_close(hidden, embeddings, rtol=0, atol=0)  # the identity path carries it unchanged


# Every learnable residual parameter, by name, for the weight-decay test; weights of linear maps are decayed.
NO_DECAY = {
    "admin": ["omega_bias"], "rezero": ["alpha_bias"], "skipinit": ["alpha_bias"], "layerscale": ["lambda_bias"],
    "gated": ["gate_proj.bias"],
    "hyper": ["input_bias", "mixing_bias", "output_bias", "width_scale_bias", "depth_scale_bias",
              "dynamic_norm.weight"],
    "mhc": ["pre_bias", "post_bias", "res_bias", "pre_scale_bias", "post_scale_bias", "res_scale_bias"],
    "dense": ["depth_average.alpha_bias"],
}
DECAY = {"gated": ["gate_proj.weight"], "hyper": ["dynamic_width_proj.weight", "dynamic_depth_proj.weight"],
         "mhc": ["dynamic_proj.weight"]}


@pytest.mark.parametrize("residual", sorted(NO_DECAY))
def test_trainer_does_not_decay_learnable_residual_parameters(residual, tmp_path):
    model = SkipNormForCausalLM(tiny(residual=residual))
    args = TrainingArguments(output_dir=str(tmp_path), weight_decay=0.1, report_to=[], use_cpu=True)
    optimizer = Trainer(model=model, args=args).create_optimizer()
    ids_by_decay = {group["weight_decay"]: {id(p) for p in group["params"]} for group in optimizer.param_groups}
    names = dict(model.named_parameters())
    for suffix in NO_DECAY[residual]:
        matching = [n for n in names if n.endswith(suffix)]
        assert len(matching) == 2 * 2 or (suffix.startswith("depth_average") and len(matching) == 2), matching
        assert all(id(names[n]) in ids_by_decay[0.0] for n in matching), matching
    for suffix in DECAY.get(residual, []):
        matching = [n for n in names if n.endswith(suffix)]
        assert matching and all(id(names[n]) in ids_by_decay[0.1] for n in matching), matching


def residual_parameters(model):
    return {n: p for n, p in model.named_parameters() if "_residual." in n or "depth_average" in n}


@pytest.mark.parametrize("residual", NEW_RESIDUALS)
def test_init_is_in_init_weights_and_survives_save_and_load(residual, tmp_path):
    config = tiny(residual=residual, **({"admin_omegas": [1.0, 1.2, 1.4, 1.6]} if residual == "admin" else {}))
    model = SkipNormForCausalLM(config)
    fresh = residual_parameters(model)
    # Re-running transformers' init (what from_config and loading with missing keys do) gives the same values.
    again = SkipNormForCausalLM(config)
    for name, p in residual_parameters(again).items():
        if "dynamic" not in name and "gate_proj.weight" not in name:  # random draws aside, init is deterministic
            assert torch.equal(p, fresh[name]), name
    with torch.no_grad():  # trained values must survive a round trip, not be re-initialized
        for p in model.parameters():
            p.add_(0.25)
    model.save_pretrained(tmp_path)
    loaded = SkipNormForCausalLM.from_pretrained(tmp_path)
    for (name, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), name
    assert loaded.config.to_dict()["residual"] == residual


def test_init_values_of_each_residual():
    m = SkipNormModel(tiny(residual="mhc", residual_streams=3, num_hidden_layers=2))
    conn = [m.layers[0].attn_residual, m.layers[0].mlp_residual, m.layers[1].attn_residual]
    assert [c.pre_bias.argmax().item() for c in conn] == [0, 1, 2]  # b_pre = e_{k mod n}
    assert torch.equal(conn[2].res_bias, torch.eye(3)) and torch.all(conn[2].post_bias == 0)
    m = SkipNormModel(tiny(residual="admin", admin_omegas=[1.0, 1.2, 1.4, 1.6]))
    assert [m.layers[1].attn_residual.omega_init, m.layers[1].mlp_residual.omega_init] == [1.4, 1.6]
    assert torch.all(m.layers[1].attn_residual.omega_bias == 0)


def test_admin_profile_sets_omegas_by_the_authors_recurrence(tmp_path):
    model = SkipNormForCausalLM(tiny(residual="admin", num_hidden_layers=3, hidden_dropout=0.1))
    ids = torch.randint(0, VOCAB, (3, 8))
    omegas = model.admin_profile({"input_ids": ids, "labels": ids})
    assert model.training and model.config.admin_omegas == omegas and len(omegas) == 6
    # Recompute independently: with the omegas in place a forward pass sees the same x_i, y_i; check
    # omega_1 = 1 and omega_{i+1} = sqrt(Var[omega_i x_i] + Var[y_i]) in float64 over all elements.
    captured = []
    hooks = [m.register_forward_pre_hook(lambda mod, args: captured.append((mod.omega_init, *args)))
             for m in model.modules() if type(m).__name__ == "AdminResidual"]
    model.eval()
    with torch.no_grad():
        model(ids)
    for h in hooks:
        h.remove()
    assert captured[0][0] == 1.0 == omegas[0]
    for i in range(5):
        omega, x, y = captured[i]
        x, y = x.double(), y.double()
        expected = math.sqrt(((omega * x) - (omega * x).mean()).pow(2).mean().item() + (y - y.mean()).pow(2).mean().item())
        assert omegas[i + 1] == pytest.approx(expected, rel=1e-9)
    assert omegas[1] != 1.0
    model.save_pretrained(tmp_path)
    loaded = SkipNormForCausalLM.from_pretrained(tmp_path)
    assert loaded.config.admin_omegas == omegas
    assert loaded.model.layers[2].mlp_residual.omega_init == omegas[5]
    with pytest.raises(ValueError, match="residual='admin'"):
        SkipNormForCausalLM(tiny()).admin_profile(ids)


@pytest.mark.parametrize("residual", ["hyper", "mhc"])
def test_hyper_connection_weights_stay_float32_in_bf16(residual, tmp_path):
    model = SkipNormForCausalLM(tiny(residual=residual))
    randomize_(model.model.layers[0].attn_residual, scale=0.05)
    model.save_pretrained(tmp_path)
    loaded = SkipNormForCausalLM.from_pretrained(tmp_path, dtype=torch.bfloat16)
    for name, p in loaded.named_parameters():
        expected = torch.float32 if "_residual." in name else torch.bfloat16
        assert p.dtype == expected, name
    ids = torch.randint(0, VOCAB, (2, 6))
    logits = loaded(ids).logits
    assert logits.dtype == torch.bfloat16 and torch.isfinite(logits).all()
    torch.testing.assert_close(logits.float(), model(ids).logits, rtol=0.05, atol=0.05)


@pytest.mark.parametrize("residual", ["hyper", "mhc"])
def test_hyper_connection_mixing_stays_float32_under_autocast(residual):
    module = randomize_(build_residual(tiny(residual=residual), 0, "mlp"), scale=0.1)
    H = torch.randn(2, 5, 4, 16)
    y = torch.randn(2, 5, 16)
    h, mixed, write = module.width(H)
    expected = module.depth(mixed, write, y, torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        h_auto, mixed_auto, write_auto = module.width(H)
        got = module.depth(mixed_auto, write_auto, y, torch.float32)
    assert mixed_auto.dtype == write_auto.dtype == torch.float32
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


@pytest.mark.parametrize("residual", ["add", "none", "scaled"] + NEW_RESIDUALS)
def test_generation_with_cache_equals_without(residual):
    model = SkipNormForCausalLM(tiny(residual=residual, pad_token_id=0)).eval()
    randomize_(model.model.layers[0].attn_residual, scale=0.05) if residual in NO_DECAY else None
    prompt = torch.randint(1, VOCAB, (2, 4))
    kwargs = dict(max_new_tokens=6, min_new_tokens=6, do_sample=False, pad_token_id=0)
    cached = model.generate(prompt, use_cache=True, **kwargs)
    uncached = model.generate(prompt, use_cache=False, **kwargs)
    assert torch.equal(cached, uncached)


@pytest.mark.parametrize("residual", ["hyper", "mhc", "dense"])
def test_gradient_checkpointing_on_stream_residuals(residual):
    plain = SkipNormForCausalLM(tiny(residual=residual)).train()
    ckpt = SkipNormForCausalLM(tiny(residual=residual)).train()
    ckpt.load_state_dict(plain.state_dict())
    ckpt.activation_checkpointing_enable()  # the v5 name of gradient_checkpointing_enable
    ids = torch.randint(0, VOCAB, (2, 6))
    plain(ids, labels=ids).loss.backward()
    ckpt(ids, labels=ids).loss.backward()
    for (name, a), (_, b) in zip(plain.named_parameters(), ckpt.named_parameters()):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-5, atol=1e-6, msg=name)


# ---------------------------------------------------------------------------------------------- configuration
def clear_error(fragments, **overrides):
    with pytest.raises(ValueError) as info:
        tiny(**overrides)
    for fragment in fragments:
        assert fragment in str(info.value), (fragment, str(info.value))


def test_refused_combinations_name_field_value_and_reason():
    clear_error(["residual='deepnorm'", "post"], residual="deepnorm", norm_position="pre")
    clear_error(["residual='admin'", "post"], residual="admin", norm_position="post", mlp_norm_position="pre")
    clear_error(["norm_position='post'", "residual='hyper'", "pre"], residual="hyper", norm_position="post")
    clear_error(["norm_position='pre_post'", "residual='mhc'"], residual="mhc", norm_position="pre_post")
    clear_error(["admin_omegas", "4 finite floats"], residual="admin", admin_omegas=[1.0, 2.0])
    clear_error(["admin_omegas", "residual='add'"], admin_omegas=[1.0, 1.0, 1.0, 1.0])
    clear_error(["residual_streams", "0"], residual="hyper", residual_streams=0)
    clear_error(["sinkhorn_iters"], residual="mhc", sinkhorn_iters=0)
    clear_error(["layerscale_init"], residual="layerscale", layerscale_init=-1.0)
    clear_error(["hyper_dynamic"], residual="hyper", hyper_dynamic="yes")
    clear_error(["branch_init='zero'", "branch_init_gain"], residual="deepnorm", branch_init="zero")
    clear_error(["residual='dense'", "parallel_block"], residual="dense", parallel_block=True)


def test_the_grid_of_placements_and_residuals_builds_or_says_why():
    ids = torch.randint(0, VOCAB, (1, 5))
    built = refused = 0
    for position in cfg.NORM_POSITIONS:
        for residual in cfg.RESIDUALS:
            fields = dict(vocab_size=VOCAB, hidden_size=16, num_hidden_layers=2, num_attention_heads=4,
                          intermediate_size=24, norm_position=position, residual=residual)
            try:
                config = SkipNormConfig(**fields)
            except ValueError as error:
                assert "SkipNormConfig." in str(error) and "valid" in str(error), (position, residual, error)
                refused += 1
                continue
            out = SkipNormModel(config).eval()(ids).last_hidden_state
            assert out.shape == (1, 5, 16) and torch.isfinite(out).all(), (position, residual)
            built += 1
    assert built > refused > 0


def test_sinkhorn_backward_is_the_iterations_gradient():
    """`SinkhornKnopp`'s hand-written backward against autograd's numerical Jacobian (float64), and its forward
    against the iteration written here (`reference_sinkhorn`)."""
    from hf_skipnorm.hyper_connections_skipnorm import sinkhorn_knopp

    logits = torch.randn(2, 3, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(5)).requires_grad_()
    torch.testing.assert_close(sinkhorn_knopp(logits, 6), reference_sinkhorn(logits, 6), rtol=1e-12, atol=1e-14)
    assert torch.autograd.gradcheck(lambda x: sinkhorn_knopp(x, 6), (logits,))


# ----------------------------------------------------------------------------------------------------- recompute
@pytest.mark.parametrize("residual,max_ratio", [("hyper", 0.9), ("mhc", 0.85)])
def test_stream_recompute_gives_the_same_loss_and_gradients_and_saves_less(residual, max_ratio):
    """`stream_recompute` (mHC, arXiv 2512.24880, Sec. 4.3): the width connection runs again in backward instead of
    keeping its intermediates: bit-identical loss and gradients in float64, fewer bytes saved for backward. (DHC's
    plain width keeps no normalized copy of the streams, its RMSNorm folded into the projection, so recomputing it
    saves less than mHC's.)"""
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))
    import bench

    results = {}
    for recompute in (False, True):
        torch.manual_seed(0)
        config = SkipNormConfig(vocab_size=97, hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
                                residual=residual, stream_recompute=recompute)
        model = SkipNormForCausalLM(config).double().train()
        with torch.no_grad():  # off the paper's init, so every mixing weight matters
            for name, parameter in model.named_parameters():
                if "_residual." in name:
                    parameter.add_(0.1 * torch.randn_like(parameter))
        ids = torch.randint(0, 97, (2, 12), generator=torch.Generator().manual_seed(1))
        holder = type("Holder", (), {"model": model, "forward": model, "batch": ids,
                                     "env": bench.Env(torch.device("cpu"), torch.float64, "auto")})()
        saved = bench.saved_activation_bytes(holder)
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        results[recompute] = (loss.item(), {n: p.grad for n, p in model.named_parameters()}, saved)
    (plain_loss, plain_grads, plain_saved), (loss, grads, saved) = results[False], results[True]
    assert loss == plain_loss
    for name, grad in plain_grads.items():
        assert torch.equal(grads[name], grad), name
    assert saved < max_ratio * plain_saved, (saved, plain_saved)


def test_stream_recompute_is_refused_without_stream_mixing():
    with pytest.raises(ValueError, match=r"stream_recompute=True is not valid with residual='add'.*hyper"):
        SkipNormConfig(vocab_size=97, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                       stream_recompute=True)

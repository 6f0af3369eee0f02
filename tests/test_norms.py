"""The norm registry (`norm_type`) against each paper's formula in float64, the norms' initial values, and weight decay.

Formulas written here: LayerNorm (Ba et al. 2016), RMSNorm (1910.07467), ScaleNorm (1910.05895, g init sqrt(d)),
SRMSNorm (2307.14995), DyT (2503.10622, alpha init 0.5; LLaMA: 0.8 attention / 0.2 other at 7B), Derf (2512.10938).
"""

from __future__ import annotations

import math

import pytest
import torch

from hf_skipnorm import SkipNormConfig, SkipNormForCausalLM, SkipNormModel
from hf_skipnorm import configuration_skipnorm as cfg
from hf_skipnorm import norms_skipnorm
from hf_skipnorm.norms_skipnorm import NORM_CLASSES, build_norm

TINY = dict(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            intermediate_size=24, max_position_embeddings=32)
EPS = 1e-5


def config_for(norm_type, **fields):
    return SkipNormConfig(**{**TINY, "norm_type": norm_type, "norm_eps": EPS, **fields})


def formula(norm_type, x, p, offset=0.0):
    """Each norm written from its paper; `p` maps parameter names to tensors."""
    d = x.shape[-1]
    gain = p.get("weight", None)
    gain = None if gain is None else gain + offset
    bias = p.get("bias", 0.0)
    if bias is None:
        bias = 0.0
    l2 = torch.sqrt((x**2).sum(-1, keepdim=True))
    if norm_type == "layernorm":
        centered = x - x.mean(-1, keepdim=True)
        return gain * centered / torch.sqrt((centered**2).mean(-1, keepdim=True) + EPS) + bias
    if norm_type == "rmsnorm":
        return gain * x / torch.sqrt((x**2).mean(-1, keepdim=True) + EPS)
    if norm_type == "scalenorm":
        return p["scale"] * x / torch.clamp(l2, min=EPS)
    if norm_type == "simple_rmsnorm":
        return x / (l2 / math.sqrt(d) + EPS)
    if norm_type == "dyt":
        return gain * torch.tanh(p["alpha"] * x) + bias
    if norm_type == "derf":
        return gain * torch.erf(p["alpha"] * x + p["shift"]) + bias
    return x


def test_registry_rows_are_the_config_vocabulary():
    assert tuple(NORM_CLASSES) == cfg.NORM_TYPES
    assert set(cfg.UNIT_OFFSET_NORM_TYPES) <= set(cfg.NORM_TYPES)


@pytest.mark.parametrize("norm_bias", [True, False])
@pytest.mark.parametrize("norm_type", cfg.NORM_TYPES)
def test_norm_matches_paper_formula_in_float64(norm_type, norm_bias):
    norm = build_norm(config_for(norm_type, norm_bias=norm_bias), 16).double()
    with torch.no_grad():
        for name, param in norm.named_parameters():
            param.copy_(torch.rand_like(param) + 0.5 if name in ("alpha", "scale") else torch.randn_like(param))
    x = torch.randn(3, 7, 16, dtype=torch.float64) * 3
    expected = formula(norm_type, x, dict(norm.named_parameters()))
    torch.testing.assert_close(norm(x), expected, rtol=1e-10, atol=1e-12)
    if norm_type in ("layernorm", "dyt", "derf"):
        assert (norm.bias is not None) is norm_bias


@pytest.mark.parametrize("norm_type", cfg.UNIT_OFFSET_NORM_TYPES)
def test_unit_offset_gain_is_one_plus_w_with_w_zero_at_init(norm_type):
    model = SkipNormModel(config_for(norm_type, norm_position="sandwich", norm_unit_offset=True)).double()
    norm = model.layers[1].mlp_out_norm
    assert torch.all(norm.weight == 0), "the stored w starts at 0 (gain 1), not at 1 (gain 2)"
    with torch.no_grad():
        norm.weight.normal_()
    x = torch.randn(4, 16, dtype=torch.float64)
    torch.testing.assert_close(norm(x), formula(norm_type, x, dict(norm.named_parameters()), offset=1.0),
                               rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("norm_type", ["scalenorm", "simple_rmsnorm", "none"])
def test_unit_offset_is_refused_without_a_per_channel_gain(norm_type):
    with pytest.raises(ValueError, match="norm_unit_offset=True is not valid with norm_type"):
        config_for(norm_type, norm_unit_offset=True)


def test_initial_values_follow_the_papers():
    d = 16
    scalenorm = SkipNormModel(config_for("scalenorm")).layers[0].attn_pre_norm
    assert scalenorm.scale.item() == pytest.approx(math.sqrt(d))  # Transformers without Tears: g = sqrt(d)
    x = torch.randn(5, d)
    torch.testing.assert_close(scalenorm(x).pow(2).mean(-1), torch.ones(5))  # unit RMS at init, like RMSNorm

    dyt_model = SkipNormModel(config_for("dyt", norm_position="sandwich"))
    assert SkipNormConfig().dyt_alpha_init == 0.5 and SkipNormConfig().derf_alpha_init == 0.5
    for name, module in dyt_model.named_modules():
        if isinstance(module, norms_skipnorm.SkipNormDynamicTanh):
            assert module.alpha.item() == 0.5, name
            assert torch.all(module.weight == 1) and torch.all(module.bias == 0), name

    # The DyT paper's LLaMA-7B recipe: alpha0 = 0.8 in attention, 0.2 elsewhere (FFN and the final norm)
    llama = SkipNormModel(config_for("dyt", dyt_attn_alpha_init=0.8, dyt_alpha_init=0.2, qk_norm="per_head"))
    for block in llama.layers:
        assert block.attn_pre_norm.alpha.item() == pytest.approx(0.8)
        assert block.self_attn.q_norm.alpha.item() == pytest.approx(0.8)
        assert block.mlp_pre_norm.alpha.item() == pytest.approx(0.2)
    assert llama.final_norm.alpha.item() == pytest.approx(0.2)

    derf = SkipNormModel(config_for("derf")).layers[0].attn_pre_norm
    assert derf.alpha.item() == 0.5 and derf.shift.item() == 0.0
    head_scale = SkipNormModel(config_for("rmsnorm", norm_position="normformer")).layers[0].self_attn.head_scale_norm
    assert torch.all(head_scale.weight == 1)


def test_norm_init_survives_save_and_from_pretrained(tmp_path):
    config = config_for("dyt", dyt_attn_alpha_init=0.8, dyt_alpha_init=0.2, norm_position="normformer")
    model = SkipNormForCausalLM(config)
    with torch.no_grad():
        model.model.layers[0].attn_pre_norm.alpha.fill_(0.37)  # a trained value must come back, not the init
    model.save_pretrained(tmp_path)
    loaded = SkipNormForCausalLM.from_pretrained(tmp_path)
    assert loaded.model.layers[0].attn_pre_norm.alpha.item() == pytest.approx(0.37)
    assert loaded.model.layers[1].attn_pre_norm.alpha.item() == pytest.approx(0.8)
    assert loaded.model.layers[1].mlp_pre_norm.alpha.item() == pytest.approx(0.2)
    assert torch.all(loaded.model.layers[1].self_attn.head_scale_norm.weight == 1)


def test_trainer_excludes_norm_gains_dyt_alpha_and_head_scales_from_weight_decay(tmp_path):
    """The Trainer's rule is by name (bias / layernorm / rmsnorm / `norm.` / `_norm.`); every learnable gain or
    scalar of the catalogue must land in the weight_decay=0 group, every projection in the decayed one."""
    from transformers import Trainer, TrainingArguments

    config = config_for("dyt", norm_position="normformer", norm_unit_offset=True, qk_norm="per_head",
                        embedding_norm=True)
    model = SkipNormForCausalLM(config)
    args = TrainingArguments(output_dir=str(tmp_path), weight_decay=0.1, report_to=[], use_cpu=True)
    optimizer = Trainer(model=model, args=args).create_optimizer()
    group_of = {id(p): g["weight_decay"] for g in optimizer.param_groups for p in g["params"]}
    names = dict(model.named_parameters())
    no_decay = [n for n in names if n.endswith(("alpha", "shift", "scale")) or "_norm." in n]
    assert any(n.endswith("attn_pre_norm.alpha") for n in no_decay)
    assert any("head_scale_norm.weight" in n for n in no_decay)
    assert any("self_attn.q_norm.weight" in n for n in no_decay) and any("mlp.sub_norm.weight" in n for n in no_decay)
    for name in no_decay:
        assert group_of[id(names[name])] == 0.0, f"{name} is weight-decayed"
    for name in ("model.layers.0.self_attn.q_proj.weight", "model.layers.1.mlp.down_proj.weight"):
        assert group_of[id(names[name])] == 0.1, f"{name} is not weight-decayed"

    derf = SkipNormForCausalLM(config_for("derf", norm_position="sandwich"))
    scalenorm = SkipNormForCausalLM(config_for("scalenorm", norm_position="subln"))
    for extra in (derf, scalenorm):
        optimizer = Trainer(model=extra, args=args).create_optimizer()
        group_of = {id(p): g["weight_decay"] for g in optimizer.param_groups for p in g["params"]}
        for name, param in extra.named_parameters():
            if name.endswith(("alpha", "shift", "scale")):
                assert group_of[id(param)] == 0.0, f"{name} is weight-decayed"

"""Encoder-decoder SkipNorm (issue 16): config, formulas (float64, written here from the papers), generation, saving,
Auto classes, remote code."""

import math

import pytest
import torch
from torch import nn

from hf_skipnorm import SkipNormConfig, SkipNormEncoderDecoderModel, SkipNormForConditionalGeneration, SkipNormModel
from hf_skipnorm.configuration_skipnorm import PLACEMENT_SLOTS
from hf_skipnorm.hub import export_for_hub
from hf_skipnorm.modeling_seq2seq_skipnorm import (
    SkipNormCrossAttention,
    SkipNormDecoderBlock,
    SkipNormFairseqSinusoidalPositions,
    SkipNormSinusoidalPositions,
    relative_position_bucket,
)
from transformers import AutoModel, AutoModelForSeq2SeqLM, DataCollatorForSeq2Seq

TINY = dict(is_encoder_decoder=True, vocab_size=40, hidden_size=16, num_attention_heads=2, num_hidden_layers=2,
            decoder_layers=2, intermediate_size=32, max_position_embeddings=32, pad_token_id=0, bos_token_id=1,
            eos_token_id=2, decoder_start_token_id=1)


def tiny(**overrides) -> SkipNormForConditionalGeneration:
    torch.manual_seed(0)
    model = SkipNormForConditionalGeneration(SkipNormConfig(**{**TINY, **overrides})).eval()
    with torch.no_grad():  # non-init weights: every norm gain and bias perturbed, so a swapped slot shows
        for name, param in model.named_parameters():
            if "norm" in name:
                param.add_(0.3 * torch.randn_like(param))
    return model


def source_batch():
    ids = torch.tensor([[5, 6, 7, 8, 9, 2], [11, 12, 13, 2, 0, 0]])
    return ids, (ids != 0).long()


# ----------------------------------------------------------------------------------------------------- config
def test_deepnet_encoder_decoder_constants_follow_the_paper_table():
    config = SkipNormConfig(**{**TINY, "num_hidden_layers": 3, "decoder_layers": 2}, norm_position="post",
                            residual="deepnorm")
    n, m = 3, 2
    assert config.residual_alpha == pytest.approx(0.81 * (n**4 * m) ** (1 / 16))
    assert config.branch_init_gain == pytest.approx(0.87 * (n**4 * m) ** (-1 / 16))
    decoder = config.stack_config("decoder")
    assert decoder.residual_alpha == pytest.approx((3 * m) ** 0.25)
    assert decoder.branch_init_gain == pytest.approx((12 * m) ** -0.25)
    again = SkipNormConfig(**config.to_dict())  # stored, so a reload states the same constants
    assert again.decoder_overrides == config.decoder_overrides and again.residual_alpha == config.residual_alpha


def test_decoder_overrides_give_the_decoder_its_own_axes():
    config = SkipNormConfig(**TINY, norm_position="pre", decoder_overrides={"norm_position": "post",
                                                                            "norm_type": "layernorm"})
    encoder, decoder = config.stack_config("encoder"), config.stack_config("decoder")
    assert (encoder.norm_position, encoder.norm_type, encoder.is_causal) == ("pre", "rmsnorm", False)
    assert (decoder.norm_position, decoder.norm_type, decoder.is_causal) == ("post", "layernorm", True)
    model = SkipNormForConditionalGeneration(config)
    block = model.model.decoder.layers[0]
    assert type(block.cross_attn_post_norm).__name__ == "SkipNormLayerNorm"
    assert type(model.model.encoder.layers[0].attn_pre_norm).__name__ == "SkipNormRMSNorm"


@pytest.mark.parametrize("overrides, words", [
    (dict(norm_position="b2t"), "no cross-attention form"),
    (dict(norm_position="post", residual="add", decoder_overrides={"norm_position": "resi_dual"}), "resi_dual"),
    (dict(residual="hyper"), "multi-stream"),
    (dict(residual="attn_res"), "multi-stream"),
    (dict(value_residual="learned"), "value_residual='learned' is not valid with is_encoder_decoder=True"),
    (dict(unet_skips=True), "unet_skips=True is not valid with is_encoder_decoder=True"),
    (dict(parallel_block=True), "parallel_block"),
    (dict(decoder_overrides={"hidden_size": 8}), "valid keys"),
    (dict(decoder_layers=0), "decoder_layers"),
    (dict(decoder_overrides={"residual": "admin", "norm_position": "post", "admin_omegas": [1.0]}), "3 per decoder"),
    (dict(type_vocab_size=2), "type_vocab_size"),
])
def test_refusals_name_the_field_and_the_reason(overrides, words):
    with pytest.raises(ValueError, match=words):
        SkipNormConfig(**{**TINY, **overrides})


def test_deepnet_init_draws_each_stack_with_its_own_beta():
    """Xavier-normal with gain beta on v_proj (std = beta * sqrt(2 / (fan_in + fan_out))), per stack."""
    config = SkipNormConfig(**{**TINY, "hidden_size": 64, "num_attention_heads": 4, "intermediate_size": 128,
                               "num_hidden_layers": 4, "decoder_layers": 2}, norm_position="post", residual="deepnorm")
    torch.manual_seed(0)
    model = SkipNormForConditionalGeneration(config)
    for stack, beta in (("encoder", 0.87 * (4**4 * 2) ** (-1 / 16)), ("decoder", (12 * 2) ** -0.25)):
        weights = torch.cat([layer.self_attn.v_proj.weight.flatten() for layer in getattr(model.model, stack).layers])
        assert weights.std().item() == pytest.approx(beta * math.sqrt(2 / 128), rel=0.08), stack
    cross = torch.cat([layer.cross_attn.v_proj.weight.flatten() for layer in model.model.decoder.layers])
    assert cross.std().item() == pytest.approx((12 * 2) ** -0.25 * math.sqrt(2 / 128), rel=0.08)


def test_magneto_gains_follow_the_encoder_decoder_pair():
    """Sub-LN in an encoder-decoder: encoder gamma = sqrt(log(3M) log(2N) / 3), decoder sqrt(log(3M)) (Magneto;
    torchscale's encoder.py / decoder.py), on v_proj of self- and cross-attention alike."""
    config = SkipNormConfig(**{**TINY, "num_hidden_layers": 3, "decoder_layers": 2}, norm_position="subln")
    assert config.stack_config("encoder").subln_init_gain == pytest.approx(math.sqrt(math.log(6) * math.log(6) / 3))
    assert config.stack_config("decoder").subln_init_gain == pytest.approx(math.sqrt(math.log(6)))
    model = SkipNormForConditionalGeneration(config)
    block = model.model.decoder.layers[0]
    assert block.self_attn.init_gain == block.cross_attn.init_gain == pytest.approx(math.sqrt(math.log(6)))


@pytest.mark.parametrize("norm_type", ["layernorm", "rmsnorm", "scalenorm", "simple_rmsnorm", "dyt", "derf", "none"])
def test_every_norm_type_fills_the_cross_attention_slots(norm_type):
    model = tiny(norm_type=norm_type, norm_position="sandwich")
    block = model.model.decoder.layers[0]
    assert type(block.cross_attn_pre_norm) is type(block.attn_pre_norm) is type(block.mlp_out_norm)
    ids, mask = source_batch()
    assert torch.isfinite(model(input_ids=ids, attention_mask=mask).logits).all()


def test_encoder_decoder_only_fields_are_refused_without_a_decoder():
    with pytest.raises(ValueError, match="t5_relative"):
        SkipNormConfig(position_embedding="t5_relative")
    with pytest.raises(ValueError, match="decoder_overrides"):
        SkipNormConfig(decoder_overrides={"norm_position": "post"})
    with pytest.raises(ValueError, match="SkipNormEncoderDecoderModel"):
        SkipNormModel(SkipNormConfig(**TINY))
    for field, value in (("lm_head_multiplier", 0.5), ("final_logits_bias", True), ("position_offset", 2)):
        with pytest.raises(ValueError, match=field):
            SkipNormConfig(position_embedding="learned", **{field: value})
    with pytest.raises(ValueError, match="position_offset"):
        SkipNormConfig(**TINY, position_embedding="rope", position_offset=2)


def test_the_encoder_keeps_every_topology():
    """The encoder is the family's own block: B2T is fine there while the decoder uses post-LN."""
    model = tiny(norm_position="b2t", decoder_overrides={"norm_position": "post"})
    assert type(model.model.encoder.layers[0]).__name__ == "SkipNormB2TBlock"
    ids, mask = source_batch()
    assert torch.isfinite(model(input_ids=ids, attention_mask=mask).logits).all()


# ----------------------------------------------------------------------------------------------------- formulas
def reference_norm(norm: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """LayerNorm written out: g * (x - mean) / sqrt(var + eps) + b."""
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)
    return norm.weight * (x - mean) / torch.sqrt(var + norm.eps) + norm.bias


def reference_cross_attention(attn: SkipNormCrossAttention, h: torch.Tensor, enc: torch.Tensor,
                              enc_real: torch.Tensor) -> torch.Tensor:
    """softmax(Q K^T / sqrt(hd) + mask) V, heads concatenated, W_o; Q from the decoder, K and V from the encoder."""
    batch, t, _ = h.shape
    heads, hd = attn.config.num_attention_heads, attn.head_dim
    q = (h @ attn.q_proj.weight.T).view(batch, t, heads, hd).transpose(1, 2)
    k = (enc @ attn.k_proj.weight.T).view(batch, -1, heads, hd).transpose(1, 2)
    v = (enc @ attn.v_proj.weight.T).view(batch, -1, heads, hd).transpose(1, 2)
    scores = q @ k.transpose(-1, -2) / math.sqrt(hd)
    scores = scores.masked_fill(~enc_real[:, None, None, :].bool(), float("-inf"))
    out = (scores.softmax(-1) @ v).transpose(1, 2).reshape(batch, t, heads * hd)
    return out @ attn.o_proj.weight.T


@pytest.mark.parametrize("position", ["post", "pre"])
def test_decoder_block_cross_attention_sublayer_matches_the_formula_in_float64(position):
    """Post-LN: x2 = N(x1 + CA(x1, enc)); pre-LN: x2 = x1 + CA(N(x1), enc); checked on the block's cross sublayer."""
    model = tiny(norm_position=position, norm_type="layernorm", attn_implementation="eager").double()
    block: SkipNormDecoderBlock = model.model.decoder.layers[0]
    x1 = torch.randn(2, 3, 16, dtype=torch.float64)
    enc = torch.randn(2, 5, 16, dtype=torch.float64)
    enc_real = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    mask = torch.zeros(2, 1, 3, 5, dtype=torch.float64).masked_fill(~enc_real[:, None, None, :].bool(),
                                                                    torch.finfo(torch.float64).min)
    cross, _ = block.cross_attn(block.cross_attn_pre_norm(x1), enc, attention_mask=mask)
    ours = block.cross_attn_post_norm(block.cross_attn_residual(x1, block.cross_attn_out_norm(cross)))
    if position == "post":
        expected = reference_norm(block.cross_attn_post_norm, x1 + reference_cross_attention(block.cross_attn, x1, enc, enc_real))
    else:
        expected = x1 + reference_cross_attention(block.cross_attn, reference_norm(block.cross_attn_pre_norm, x1), enc,
                                                  enc_real)
    torch.testing.assert_close(ours, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("placement", ["pre", "post", "sandwich", "output", "pre_post", "none", "subln", "normformer",
                                       "peri", "mix", "hybrid"])
def test_every_sequential_placement_gives_cross_attention_the_attention_slots(placement):
    model = tiny(norm_position=placement)
    block = model.model.decoder.layers[-1]
    slots = PLACEMENT_SLOTS[model.model.decoder.config.layer_norm_positions(len(model.model.decoder.layers) - 1)[0]][0]
    for slot in ("pre", "out", "post"):
        present = not isinstance(getattr(block, f"cross_attn_{slot}_norm"), (nn.Identity,)) and \
            type(getattr(block, f"cross_attn_{slot}_norm")).__name__ != "Identity"
        assert present == getattr(slots, slot), slot
    ids, mask = source_batch()
    assert torch.isfinite(model(input_ids=ids, attention_mask=mask).logits).all()


@pytest.mark.parametrize("residual", ["add", "scaled", "rezero", "layerscale", "gated", "deepnorm", "admin"])
def test_every_single_stream_residual_runs_on_all_three_sublayers(residual):
    placement = "post" if residual in ("deepnorm", "admin") else "pre"
    model = tiny(norm_position=placement, residual=residual)
    block = model.model.decoder.layers[0]
    assert type(block.cross_attn_residual) is type(block.attn_residual) is type(block.mlp_residual)
    ids, mask = source_batch()
    assert torch.isfinite(model(input_ids=ids, attention_mask=mask).logits).all()


def test_sinusoidal_positions_match_vaswani_with_marian_layout():
    config = SkipNormConfig(**TINY, position_embedding="sinusoidal")
    positions = torch.arange(7)[None]
    ours = SkipNormSinusoidalPositions(config).encoding(positions)[0]
    d = 16
    expected = torch.empty(7, d, dtype=torch.float64)
    for p in range(7):
        for i in range(d // 2):
            expected[p, i] = math.sin(p / 10000 ** (2 * i / d))
            expected[p, d // 2 + i] = math.cos(p / 10000 ** (2 * i / d))
    torch.testing.assert_close(ours, expected, rtol=1e-12, atol=1e-12)


def test_fairseq_sinusoids_count_real_tokens_from_the_offset_and_zero_pads():
    config = SkipNormConfig(**TINY, position_embedding="sinusoidal_fairseq", position_offset=2)
    module = SkipNormFairseqSinusoidalPositions(config)
    position_ids = torch.tensor([[0, 1, 2, -1]])
    ours = module.encoding(position_ids)[0].double()
    half, d = 8, 16
    expected = torch.zeros(4, d, dtype=torch.float64)
    for slot, p in enumerate([2, 3, 4]):
        for i in range(half):
            w = math.exp(-i * math.log(10000) / (half - 1))
            expected[slot, i], expected[slot, half + i] = math.sin(p * w), math.cos(p * w)
    torch.testing.assert_close(ours, expected, rtol=0, atol=1e-6)  # fairseq computes the table in float32


def reference_bucket(relative: int, bidirectional: bool, num_buckets: int, max_distance: int) -> int:
    """T5's bucketing (Raffel et al. 2020, Sec. 2.1) for one offset key - query, in plain Python."""
    bucket = 0
    n = num_buckets
    if bidirectional:
        n //= 2
        bucket += n if relative > 0 else 0
        distance = abs(relative)
    else:
        distance = max(-relative, 0)
    exact = n // 2
    if distance < exact:
        return bucket + distance
    far = exact + int(math.log(distance / exact) / math.log(max_distance / exact) * (n - exact))
    return bucket + min(far, n - 1)


@pytest.mark.parametrize("bidirectional", [True, False])
def test_t5_relative_buckets_match_the_definition(bidirectional):
    offsets = torch.arange(-200, 201)
    ours = relative_position_bucket(offsets, bidirectional, 32, 128)
    expected = torch.tensor([reference_bucket(int(r), bidirectional, 32, 128) for r in offsets])
    assert torch.equal(ours, expected)


def test_t5_bias_is_added_to_every_encoder_block_scores():
    model = tiny(position_embedding="t5_relative", attention_multiplier=1.0, attn_implementation="eager").double()
    encoder = model.model.encoder
    bias = encoder.score_bias(None, 4, 4, 0, torch.float64)
    table = encoder.score_bias.relative_attention_bias.weight
    for q in range(4):
        for k in range(4):
            assert torch.equal(bias[0, :, q, k], table[reference_bucket(k - q, True, 32, 128)])


# ----------------------------------------------------------------------------------------------------- generation
@pytest.mark.parametrize("position", ["learned", "sinusoidal", "sinusoidal_fairseq", "t5_relative", "rope"])
def test_cached_equals_uncached_for_greedy_and_beam_search(position):
    model = tiny(position_embedding=position, position_offset=0 if position in ("rope", "t5_relative") else 2)
    ids, mask = source_batch()
    for kwargs in (dict(do_sample=False), dict(num_beams=3, do_sample=False)):
        cached = model.generate(ids, attention_mask=mask, max_new_tokens=6, min_new_tokens=6, **kwargs)
        uncached = model.generate(ids, attention_mask=mask, max_new_tokens=6, min_new_tokens=6, use_cache=False,
                                  **kwargs)
        assert torch.equal(cached, uncached), kwargs


def test_sampling_is_reproducible_and_cache_independent():
    model = tiny()
    ids, mask = source_batch()
    torch.manual_seed(3)
    a = model.generate(ids, attention_mask=mask, do_sample=True, top_k=10, max_new_tokens=6, min_new_tokens=6)
    torch.manual_seed(3)
    b = model.generate(ids, attention_mask=mask, do_sample=True, top_k=10, max_new_tokens=6, min_new_tokens=6,
                       use_cache=False)
    assert torch.equal(a, b)


def test_cached_logits_equal_the_full_forward():
    model = tiny(position_embedding="t5_relative", attn_implementation="eager")
    ids, mask = source_batch()
    decoder_ids = torch.tensor([[1, 7, 8, 9], [1, 3, 4, 5]])
    full = model(input_ids=ids, attention_mask=mask, decoder_input_ids=decoder_ids).logits
    out = model(input_ids=ids, attention_mask=mask, decoder_input_ids=decoder_ids[:, :2], use_cache=True)
    steps = [out.logits]
    for t in range(2, 4):
        out = model(encoder_outputs=(out.encoder_last_hidden_state,), attention_mask=mask,
                    decoder_input_ids=decoder_ids[:, t:t + 1], cache=out.cache, use_cache=True)
        steps.append(out.logits)
    torch.testing.assert_close(torch.cat(steps, 1), full, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("position", ["learned", "sinusoidal_fairseq", "t5_relative"])
def test_batched_padded_generation_equals_one_at_a_time(position):
    model = tiny(position_embedding=position, position_offset=2 if position != "t5_relative" else 0)
    ids, mask = source_batch()
    batched = model.generate(ids, attention_mask=mask, max_new_tokens=5, min_new_tokens=5, num_beams=2)
    for row in range(2):
        real = mask[row].bool()
        alone = model.generate(ids[row:row + 1, real], max_new_tokens=5, min_new_tokens=5, num_beams=2)
        assert torch.equal(alone[0], batched[row]), row


@pytest.mark.parametrize("position", ["learned", "sinusoidal", "rope"])
def test_left_padded_sources_see_their_unpadded_positions(position):
    model = tiny(position_embedding=position, position_offset=2 if position != "rope" else 0)
    ids = torch.tensor([[0, 0, 11, 12, 13, 2], [5, 6, 7, 8, 9, 2]])
    mask = (ids != 0).long()
    batched = model.generate(ids, attention_mask=mask, max_new_tokens=5, min_new_tokens=5)
    alone = model.generate(ids[:1, 2:], max_new_tokens=5, min_new_tokens=5)
    assert torch.equal(alone[0], batched[0])


# ----------------------------------------------------------------------------------------------------- ecosystem
def test_labels_shift_behind_decoder_start_and_the_collator_agrees():
    model = tiny()
    ids, mask = source_batch()
    labels = torch.tensor([[7, 8, 2], [9, 2, -100]])
    out = model(input_ids=ids, attention_mask=mask, labels=labels)
    shifted = torch.tensor([[1, 7, 8], [1, 9, 2]])
    logits = model(input_ids=ids, attention_mask=mask, decoder_input_ids=shifted).logits
    expected = nn.functional.cross_entropy(logits.reshape(-1, 40), labels.reshape(-1), ignore_index=-100)
    torch.testing.assert_close(out.loss, expected)
    collator = DataCollatorForSeq2Seq(tokenizer=_PadOnly(), model=model)
    batch = collator([{"input_ids": [5, 6, 2], "labels": [7, 8, 2]}, {"input_ids": [9, 2], "labels": [9, 2]}])
    assert batch["decoder_input_ids"].tolist() == [[1, 7, 8], [1, 9, 2]]


class _PadOnly:
    """The slice of a tokenizer DataCollatorForSeq2Seq uses: `pad` and `padding_side`."""

    padding_side = "right"
    pad_token_id = 0

    def pad(self, features, padding=True, max_length=None, pad_to_multiple_of=None, return_tensors="pt"):
        width = max(len(f["input_ids"]) for f in features)
        ids = [f["input_ids"] + [0] * (width - len(f["input_ids"])) for f in features]
        out = {"input_ids": torch.tensor(ids), "attention_mask": (torch.tensor(ids) != 0).long()}
        if "labels" in features[0]:
            out["labels"] = torch.tensor([f["labels"] for f in features])
        return out


def test_safetensors_round_trip_strict_loading_and_auto_classes(tmp_path):
    model = tiny(position_embedding="t5_relative", final_logits_bias=True, lm_head_multiplier=0.25)
    with torch.no_grad():
        model.final_logits_bias.bias.normal_()
    ids, mask = source_batch()
    expected = model(input_ids=ids, attention_mask=mask).logits
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists()
    loaded = AutoModelForSeq2SeqLM.from_pretrained(tmp_path).eval()
    assert type(loaded) is SkipNormForConditionalGeneration
    assert torch.equal(loaded(input_ids=ids, attention_mask=mask).logits, expected)
    base = AutoModel.from_pretrained(tmp_path)
    assert type(base) is SkipNormEncoderDecoderModel
    assert type(AutoModel.from_config(model.config)) is SkipNormEncoderDecoderModel
    with pytest.raises((RuntimeError, ValueError)):
        SkipNormForConditionalGeneration.from_pretrained(tmp_path, decoder_layers=3)


def test_sdpa_and_eager_agree():
    ids, mask = source_batch()
    decoder_ids = torch.tensor([[1, 7, 8, 9], [1, 3, 4, 5]])
    for position in ("learned", "t5_relative"):
        eager = tiny(position_embedding=position, attn_implementation="eager")
        sdpa = tiny(position_embedding=position, attn_implementation="sdpa")
        torch.testing.assert_close(sdpa(input_ids=ids, attention_mask=mask, decoder_input_ids=decoder_ids).logits,
                                   eager(input_ids=ids, attention_mask=mask, decoder_input_ids=decoder_ids).logits,
                                   rtol=1e-5, atol=1e-5)


def test_t5_bias_offers_only_the_backends_that_add_it():
    t5, plain = tiny(position_embedding="t5_relative"), tiny()
    for module in (t5, t5.model.encoder, t5.model.decoder):
        assert not module._supports_flash_attn and not module._supports_flex_attn
    assert plain._supports_flash_attn and plain.model.decoder._supports_flex_attn


def test_gradient_checkpointing_gives_the_same_gradients():
    ids, mask = source_batch()
    labels = torch.tensor([[7, 8, 2], [9, 2, -100]])
    grads = []
    for checkpointing in (False, True):
        model = tiny().train()
        if checkpointing:
            model.activation_checkpointing_enable()
        model(input_ids=ids, attention_mask=mask, labels=labels).loss.backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    assert "model.encoder.layers.0.self_attn.q_proj.weight" in grads[1]  # gradients reach the encoder
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], rtol=1e-5, atol=1e-6)


def test_admin_profiles_both_stacks_with_their_own_recurrence():
    model = tiny(norm_position="post", residual="admin", embedding_norm=True)
    ids, _ = source_batch()
    omegas = model.admin_profile(ids)
    assert len(omegas["encoder"]) == 4 and len(omegas["decoder"]) == 6
    assert omegas["encoder"][0] == omegas["decoder"][0] == 1.0
    # The recurrence, checked independently: rerun with the profiled omegas and read each sublayer's (x, F(x)).
    seen = {"encoder": [], "decoder": []}
    for stack in ("encoder", "decoder"):
        for layer in getattr(model.model, stack).layers:
            names = ("attn", "cross_attn", "mlp") if stack == "decoder" else ("attn", "mlp")
            for name in names:
                getattr(layer, f"{name}_residual").register_forward_pre_hook(
                    lambda module, args, stack=stack: seen[stack].append((module.omega_init, *args)))
    with torch.no_grad():
        model(input_ids=ids, decoder_input_ids=model.prepare_decoder_input_ids_from_labels(ids))
    for stack in ("encoder", "decoder"):
        for i, (omega, x, y) in enumerate(seen[stack][:-1]):
            expected = math.sqrt((omega * x.double()).var(unbiased=False).item() + y.double().var(unbiased=False).item())
            assert omegas[stack][i + 1] == pytest.approx(expected, rel=1e-9), (stack, i)
    rebuilt = SkipNormForConditionalGeneration(SkipNormConfig(**model.config.to_dict()))
    block = rebuilt.model.decoder.layers[1]
    assert [block.attn_residual.omega_init, block.cross_attn_residual.omega_init, block.mlp_residual.omega_init] == \
        omegas["decoder"][3:6]


def test_saved_folders_name_the_encoder_decoder_classes_and_carry_their_code(tmp_path):
    """The remote load itself runs in tests/test_hub.py's blocked child process (the `seq2seq_lm` head)."""
    import json

    model = tiny(position_embedding="sinusoidal")
    folder = export_for_hub(model, tmp_path / "repo")
    config = json.loads((tmp_path / "repo" / "config.json").read_text())
    assert config["auto_map"] == {
        "AutoConfig": "configuration_skipnorm.SkipNormConfig",
        "AutoModel": "modeling_seq2seq_skipnorm.SkipNormEncoderDecoderModel",
        "AutoModelForSeq2SeqLM": "modeling_seq2seq_skipnorm.SkipNormForConditionalGeneration",
    }
    for name in ("modeling_seq2seq_skipnorm.py", "modeling_skipnorm.py", "configuration_skipnorm.py"):
        assert (tmp_path / "repo" / name).is_file(), name
    model.save_pretrained(tmp_path / "plain")  # every save_pretrained writes the same auto_map
    assert json.loads((tmp_path / "plain" / "config.json").read_text())["auto_map"] == config["auto_map"]
    assert folder


def test_diagnostics_profile_each_stack():
    from hf_skipnorm.diagnostics import profile_encoder_decoder

    model = tiny(norm_position="pre")
    ids, mask = source_batch()
    result = profile_encoder_decoder(model, {"input_ids": ids, "attention_mask": mask})
    assert len(result["encoder"]["layers"]) == 2 and len(result["decoder"]["layers"]) == 2
    decoder_row = result["decoder"]["layers"][0]
    for key in ("branch_ratio/attn", "branch_ratio/cross_attn", "branch_ratio/mlp", "grad_norm/cross_attn"):
        assert math.isfinite(decoder_row[key]) and decoder_row[key] > 0, key
    assert "branch_ratio/cross_attn" not in result["encoder"]["layers"][0]
    # the ratio is ||R(x, y) - R(x, 0)|| / ||x|| = ||y|| / ||x|| for x + y: check it on the first decoder block
    block = model.model.decoder.layers[0]
    seen = {}
    block.cross_attn_residual.register_forward_hook(lambda m, args, out: seen.update(x=args[0], y=args[1]))
    with torch.no_grad():
        model(input_ids=ids, attention_mask=mask, labels=ids)
    expected = seen["y"].norm(dim=-1).mean() / seen["x"].norm(dim=-1).mean()
    assert decoder_row["branch_ratio/cross_attn"] == pytest.approx(expected.item(), rel=1e-5)


def test_resizing_the_vocabulary_resizes_every_vocabulary_tensor():
    model = tiny(final_logits_bias=True)
    with torch.no_grad():
        model.final_logits_bias.bias.normal_()
    kept = model.final_logits_bias.bias[0, :40].clone()
    model.resize_token_embeddings(48)
    assert model.model.encoder.embed_tokens.weight.shape[0] == model.lm_head.weight.shape[0] == 48
    assert model.model.encoder.embed_tokens is model.model.decoder.embed_tokens is model.get_input_embeddings()
    assert torch.equal(model.final_logits_bias.bias[0, :40], kept) and not model.final_logits_bias.bias[0, 40:].any()
    replacement = nn.Embedding(48, 16)
    model.set_input_embeddings(replacement)
    assert model.model.encoder.embed_tokens is model.model.decoder.embed_tokens is replacement
    ids, mask = source_batch()
    assert model(input_ids=ids, attention_mask=mask).logits.shape[-1] == 48


@pytest.mark.parametrize("stack", ["input_ids", "decoder_input_ids"])
@pytest.mark.parametrize("ids, message", [
    (torch.tensor([[1, 2, 99]]), r"holds 99, outside the valid range \[0, 39\] \(SkipNormConfig.vocab_size=40\)"),
    (torch.tensor([1, 2, 3]), r"input_ids must be 2-D"),
    (torch.zeros(1, 0, dtype=torch.long), r"input_ids is empty"),
])
def test_both_stacks_check_their_ids_as_the_decoder_family_does(stack, ids, message):
    """Bad ids for either stack get the family's ValueError (naming the input and the valid range) before any
    embedding lookup, instead of an IndexError or a reshape error deep inside attention."""
    model = tiny()
    good = torch.tensor([[1, 2, 3]])
    inputs = {"input_ids": good, "decoder_input_ids": good, stack: ids}
    with pytest.raises(ValueError, match=message):
        model(**inputs)

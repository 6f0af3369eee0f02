"""Model behaviour: every head round-trips, generation, masking, gradients, attention backends, init."""

import math

import pytest
import torch
from transformers import (
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForMaskedLM,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
)

from hf_skipnorm import (
    SkipNormConfig,
    SkipNormForCausalLM,
    SkipNormForMaskedLM,
    SkipNormForSequenceClassification,
    SkipNormForTokenClassification,
    SkipNormModel,
)

VOCAB = 64


def tiny(**overrides):
    fields = dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                  intermediate_size=48, max_position_embeddings=64, pad_token_id=0, eos_token_id=None,
                  bos_token_id=None)
    fields.update(overrides)
    return SkipNormConfig(**fields)


HEADS = [
    (AutoModel, SkipNormModel, {}),
    (AutoModelForCausalLM, SkipNormForCausalLM, {}),
    (AutoModelForMaskedLM, SkipNormForMaskedLM, {"is_causal": False, "norm_position": "post",
                                                 "norm_type": "layernorm", "embedding_norm": True,
                                                 "type_vocab_size": 2, "position_embedding": "learned"}),
    (AutoModelForSequenceClassification, SkipNormForSequenceClassification, {"num_labels": 3}),
    (AutoModelForTokenClassification, SkipNormForTokenClassification, {"num_labels": 5}),
]


def outputs_of(model, ids, mask):
    out = model(input_ids=ids, attention_mask=mask)
    return out.last_hidden_state if hasattr(out, "last_hidden_state") else out.logits


@pytest.mark.parametrize("auto_class,model_class,extra", HEADS, ids=[h[1].__name__ for h in HEADS])
def test_every_head_round_trips_through_auto_classes(tmp_path, auto_class, model_class, extra):
    config = tiny(**{"norm_position": "sandwich", **extra})
    model = auto_class.from_config(config).eval()
    assert type(model) is model_class
    model.save_pretrained(tmp_path)
    files = {p.name for p in tmp_path.iterdir()}
    assert "model.safetensors" in files and not any(f.endswith((".bin", ".pt", ".pth")) for f in files)
    loaded = auto_class.from_pretrained(tmp_path).eval()
    assert type(loaded) is model_class
    ids = torch.randint(1, VOCAB, (2, 7))
    mask = torch.ones_like(ids)
    mask[1, :2] = 0
    assert torch.equal(outputs_of(model, ids, mask), outputs_of(loaded, ids, mask))


def test_tied_embeddings_share_storage_and_untied_do_not(tmp_path):
    tied = SkipNormForCausalLM(tiny())
    assert tied.lm_head.weight is tied.model.embed_tokens.weight
    untied = SkipNormForCausalLM(tiny(tie_word_embeddings=False))
    assert untied.lm_head.weight is not untied.model.embed_tokens.weight
    untied.save_pretrained(tmp_path)
    again = SkipNormForCausalLM.from_pretrained(tmp_path)
    assert torch.equal(again.lm_head.weight, untied.lm_head.weight)


@pytest.mark.parametrize("position", ["pre", "post", "sandwich", "pre_post"])
@pytest.mark.parametrize("position_embedding", ["rope", "learned"])
def test_generation_with_cache_equals_without(position, position_embedding):
    model = SkipNormForCausalLM(tiny(norm_position=position, position_embedding=position_embedding)).eval()
    ids = torch.randint(1, VOCAB, (2, 5))
    kwargs = dict(max_new_tokens=8, min_new_tokens=8, do_sample=False, pad_token_id=0)
    with_cache = model.generate(ids, use_cache=True, **kwargs)
    without = model.generate(ids, use_cache=False, **kwargs)
    assert torch.equal(with_cache, without)


@pytest.mark.parametrize("position_embedding", ["rope", "learned"])
def test_left_padded_batch_generation_equals_one_at_a_time(position_embedding):
    model = SkipNormForCausalLM(tiny(position_embedding=position_embedding)).eval()
    prompts = [torch.randint(1, VOCAB, (n,)) for n in (3, 6, 4)]
    width = max(len(p) for p in prompts)
    ids = torch.zeros(len(prompts), width, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, prompt in enumerate(prompts):
        ids[row, width - len(prompt):] = prompt
        mask[row, width - len(prompt):] = 1
    kwargs = dict(max_new_tokens=6, min_new_tokens=6, do_sample=False, pad_token_id=0)
    batched = model.generate(ids, attention_mask=mask, **kwargs)[:, width:]
    for row, prompt in enumerate(prompts):
        single = model.generate(prompt[None], attention_mask=torch.ones(1, len(prompt), dtype=torch.long), **kwargs)
        assert torch.equal(batched[row], single[0, len(prompt):]), row


def test_left_padding_does_not_change_the_logits_of_real_tokens():
    model = SkipNormForCausalLM(tiny(position_embedding="learned")).eval()
    prompt = torch.randint(1, VOCAB, (1, 5))
    padded = torch.cat([torch.zeros(1, 3, dtype=torch.long), prompt], 1)
    mask = torch.cat([torch.zeros(1, 3, dtype=torch.long), torch.ones(1, 5, dtype=torch.long)], 1)
    torch.testing.assert_close(model(padded, attention_mask=mask).logits[:, 3:], model(prompt).logits,
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("position", ["pre", "post"])
def test_causal_mask_holds_and_encoder_sees_the_future(position):
    ids = torch.randint(1, VOCAB, (1, 8))
    changed = ids.clone()
    changed[0, 5:] = (changed[0, 5:] % (VOCAB - 1)) + 1  # change only the future
    decoder = SkipNormModel(tiny(norm_position=position)).eval()
    a, b = decoder(ids).last_hidden_state, decoder(changed).last_hidden_state
    assert torch.equal(a[:, :5], b[:, :5])
    encoder = SkipNormModel(tiny(norm_position=position, is_causal=False)).eval()
    a, b = encoder(ids).last_hidden_state, encoder(changed).last_hidden_state
    assert (a[:, :5] - b[:, :5]).abs().max() > 1e-4


@pytest.mark.parametrize("is_causal", [True, False])
def test_eager_and_sdpa_agree_with_padding(is_causal):
    config = dict(is_causal=is_causal, norm_position="post", norm_type="layernorm")
    eager = SkipNormModel(tiny(**config)).eval()
    eager.set_attn_implementation("eager")
    sdpa = SkipNormModel(tiny(**config)).eval()
    sdpa.load_state_dict(eager.state_dict())
    sdpa.set_attn_implementation("sdpa")
    assert sdpa.config._attn_implementation == "sdpa" and eager.config._attn_implementation == "eager"
    ids = torch.randint(1, VOCAB, (2, 9))
    mask = torch.ones_like(ids)
    mask[0, :3] = 0
    real = mask.bool()
    torch.testing.assert_close(eager(ids, attention_mask=mask).last_hidden_state[real],
                               sdpa(ids, attention_mask=mask).last_hidden_state[real], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("extra", [
    {"norm_position": "pre"},
    {"norm_position": "post", "norm_type": "layernorm", "position_embedding": "learned", "embedding_norm": True},
    {"norm_position": "sandwich", "residual": "scaled", "residual_alpha": 0.9, "attention_bias": True,
     "mlp_bias": True},
    {"norm_position": ["pre_post", "output"], "mlp_type": "plain", "hidden_act": "gelu"},
], ids=["pre", "post-learned", "sandwich-scaled-bias", "list-plain"])
def test_gradients_reach_every_parameter(extra):
    model = SkipNormForCausalLM(tiny(**extra))
    ids = torch.randint(1, VOCAB, (2, 6))
    model(ids, labels=ids).loss.backward()
    missing = [name for name, p in model.named_parameters() if p.grad is None or not torch.any(p.grad != 0)]
    assert not missing


def test_gradients_reach_token_type_embeddings_in_masked_lm():
    model = SkipNormForMaskedLM(tiny(is_causal=False, type_vocab_size=2, norm_position="post"))
    ids = torch.randint(1, VOCAB, (2, 6))
    types = torch.randint(0, 2, (2, 6))
    model(ids, token_type_ids=types, labels=ids).loss.backward()
    assert all(p.grad is not None and torch.any(p.grad != 0) for p in model.parameters())


def test_gradient_checkpointing_gives_the_same_gradients():
    config = tiny(norm_position="sandwich")
    plain = SkipNormForCausalLM(config).train()
    ckpt = SkipNormForCausalLM(config).train()
    ckpt.load_state_dict(plain.state_dict())
    ckpt.activation_checkpointing_enable()  # the v5 name of gradient_checkpointing_enable
    ids = torch.randint(1, VOCAB, (2, 6))
    plain(ids, labels=ids).loss.backward()
    ckpt(ids, labels=ids).loss.backward()
    for (name, a), (_, b) in zip(plain.named_parameters(), ckpt.named_parameters()):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-5, atol=1e-6, msg=name)


@pytest.mark.parametrize("branch_init,expected_std", [("normal", 0.02), ("scaled_depth", 0.02 / math.sqrt(2 * 8)),
                                                      ("zero", 0.0)])
def test_branch_init_sets_output_projection_std(branch_init, expected_std):
    model = SkipNormModel(tiny(branch_init=branch_init, num_hidden_layers=8, hidden_size=128, intermediate_size=256))
    o_proj = torch.cat([layer.self_attn.o_proj.weight.flatten() for layer in model.layers])
    down = torch.cat([layer.mlp.down_proj.weight.flatten() for layer in model.layers])
    q_proj = torch.cat([layer.self_attn.q_proj.weight.flatten() for layer in model.layers])
    for weights in (o_proj, down):
        assert abs(weights.std().item() - expected_std) <= 0.05 * expected_std + 1e-12
    assert abs(q_proj.std().item() - 0.02) < 0.001  # other projections keep initializer_range
    norm = model.layers[0].attn_pre_norm
    assert torch.all(norm.weight == 1)


def test_loading_does_not_reinitialize_loaded_weights(tmp_path):
    model = SkipNormForCausalLM(tiny(branch_init="zero"))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.5)
    model.save_pretrained(tmp_path)
    loaded = SkipNormForCausalLM.from_pretrained(tmp_path)
    for (name, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), name


def test_sequence_classification_pools_the_last_real_token_under_either_padding():
    model = SkipNormForSequenceClassification(tiny(num_labels=2)).eval()
    prompt = torch.randint(1, VOCAB, (1, 5))
    reference = model(prompt).logits
    right = torch.cat([prompt, torch.zeros(1, 2, dtype=torch.long)], 1)
    right_mask = torch.cat([torch.ones(1, 5, dtype=torch.long), torch.zeros(1, 2, dtype=torch.long)], 1)
    torch.testing.assert_close(model(right, attention_mask=right_mask).logits, reference, rtol=1e-5, atol=1e-5)
    labels = torch.tensor([1])
    assert model(prompt, labels=labels).loss > 0


def test_token_type_ids_without_token_types_is_a_clear_error():
    model = SkipNormModel(tiny())
    with pytest.raises(ValueError, match="type_vocab_size=0"):
        model(torch.randint(1, VOCAB, (1, 4)), token_type_ids=torch.zeros(1, 4, dtype=torch.long))


def test_output_hidden_states_and_attentions():
    model = SkipNormModel(tiny(attn_implementation="eager")).eval()
    out = model(torch.randint(1, VOCAB, (1, 4)), output_hidden_states=True, output_attentions=True)
    assert len(out.hidden_states) == 3 and len(out.attentions) == 2
    assert out.attentions[0].shape == (1, 4, 4, 4)


@pytest.mark.parametrize("extra", [{"residual": "hyper"}, {"residual": "mhc"}, {"residual": "dense"},
                                   {"norm_position": "resi_dual", "norm_type": "layernorm"}],
                         ids=["hyper", "mhc", "dense", "resi_dual"])
def test_multi_stream_models_report_hidden_states_as_one_stream(extra):
    """Each recorded hidden state is what the final norm would read, (B, T, C), as in any transformers model."""
    model = SkipNormModel(tiny(num_hidden_layers=3, **extra)).eval()
    ids = torch.randint(1, VOCAB, (2, 5))
    out = model(ids, output_hidden_states=True)
    assert len(out.hidden_states) == 4
    assert all(h.shape == (2, 5, 32) for h in out.hidden_states)
    torch.testing.assert_close(out.hidden_states[-1], out.last_hidden_state)
    # the first one is the embedding output e, put into the streams and read back: ResiDual reads x + N(d) = e + N(e),
    # the others read e itself
    e = model.embed_tokens(ids)
    expected = e + model.residual_stream.dual_final_norm(e) if "norm_position" in extra else e
    torch.testing.assert_close(out.hidden_states[0], expected)

"""What transformers' own model tests expect of a model (tests/test_modeling_common.py, the generation mixin's tests
and BART's model tester in transformers 5.24), checked here on tiny SkipNorm models: the encoder-decoder's stacks save
and load on their own, its decoder runs without an encoder output, the tensor-parallel plan names only modules the
model has, and the encoder-decoder's inputs, outputs and generation follow transformers' conventions (issues 13, 16)."""

import re

import pytest
import torch

from hf_skipnorm import (SkipNormConfig, SkipNormEncoderDecoderModel, SkipNormForCausalLM,
                         SkipNormForConditionalGeneration, SkipNormModel)
from hf_skipnorm.modeling_seq2seq_skipnorm import SkipNormDecoder, SkipNormEncoder
from transformers.cache_utils import EncoderDecoderCache, StaticCache

SEQ2SEQ = dict(is_encoder_decoder=True, vocab_size=40, hidden_size=16, num_attention_heads=4, num_hidden_layers=2,
               decoder_layers=2, intermediate_size=24, max_position_embeddings=32, pad_token_id=1, bos_token_id=0,
               eos_token_id=2, decoder_start_token_id=2)
DECODER = dict(vocab_size=40, hidden_size=16, num_attention_heads=4, num_key_value_heads=2, num_hidden_layers=2,
               intermediate_size=24, pad_token_id=0)


def perturbed(model):
    """Non-init weights: norm gains and biases moved, so a skipped or swapped norm shows."""
    torch.manual_seed(1)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name or name.endswith("bias"):
                param.add_(0.3 * torch.randn_like(param))
    return model.eval()


def seq2seq(cls=SkipNormForConditionalGeneration, **overrides):
    torch.manual_seed(0)
    return perturbed(cls(SkipNormConfig(**{**SEQ2SEQ, **overrides})))


def batch():
    torch.manual_seed(2)
    source = torch.randint(3, 40, (3, 7))
    source[:, -1] = 2
    target = torch.randint(3, 40, (3, 5))
    mask = torch.ones_like(source)
    mask[2, 5:] = 0  # one padded source row
    return source, mask, target


# ----------------------------------------------------------------------------------------------------- stacks
@pytest.mark.parametrize("cell", [{}, {"norm_position": "post", "norm_type": "layernorm", "position_embedding": "learned",
                                       "position_offset": 2, "embedding_norm": True},
                                  {"position_embedding": "t5_relative", "lm_head_multiplier": 0.25}])
def test_stacks_save_and_load_on_their_own(tmp_path, cell):
    """BART's `check_encoder_decoder_model_standalone`: `model.get_encoder().save_pretrained(d)` then
    `SkipNormEncoder.from_pretrained(d)` gives the same encoder output, and the same for the decoder; the saved
    stack carries the token embedding it reads, and the whole model keeps its one embedding tensor."""
    model = seq2seq(SkipNormEncoderDecoderModel, **cell)
    keys_before = sorted(model.state_dict())
    source, mask, target = batch()
    out = model(input_ids=source, attention_mask=mask, decoder_input_ids=target)
    model.get_encoder().save_pretrained(tmp_path / "encoder")
    model.get_decoder().save_pretrained(tmp_path / "decoder")
    assert sorted(model.state_dict()) == keys_before  # saving a stack borrowed the embedding, and gave it back
    assert "encoder.embed_tokens.weight" not in keys_before and "embed_tokens.weight" in keys_before
    encoder = SkipNormEncoder.from_pretrained(tmp_path / "encoder").eval()
    decoder = SkipNormDecoder.from_pretrained(tmp_path / "decoder").eval()
    assert "embed_tokens.weight" in encoder.state_dict()
    torch.testing.assert_close(encoder.embed_tokens.weight, model.embed_tokens.weight, rtol=0, atol=0)
    encoded = encoder(source, attention_mask=mask).last_hidden_state
    torch.testing.assert_close(encoded, out.encoder_last_hidden_state, rtol=0, atol=1e-6)
    decoded = decoder(input_ids=target, encoder_hidden_states=out.encoder_last_hidden_state,
                      encoder_attention_mask=mask).last_hidden_state
    torch.testing.assert_close(decoded, out.last_hidden_state, rtol=0, atol=1e-6)
    replacement = torch.nn.Embedding(40, 16)  # a standalone stack's embedding is its own to replace
    encoder.set_input_embeddings(replacement)
    assert encoder.get_input_embeddings() is replacement and encoder.embed_tokens is replacement


def test_saving_an_admin_decoder_alone_is_refused(tmp_path):
    """Admin's decoder omegas live in the whole model's config, not in the stack's: refused, not silently lost."""
    model = seq2seq(residual="admin", norm_position="post")
    source, mask, target = batch()
    model.admin_profile({"input_ids": source, "attention_mask": mask, "decoder_input_ids": target})
    with pytest.raises(ValueError, match="admin_omegas"):
        model.get_decoder().save_pretrained(tmp_path / "decoder")
    model.get_encoder().save_pretrained(tmp_path / "encoder")  # the encoder's omegas are in its own config
    encoder = SkipNormEncoder.from_pretrained(tmp_path / "encoder").eval()
    torch.testing.assert_close(encoder(source, attention_mask=mask).last_hidden_state,
                               model.get_encoder()(source, attention_mask=mask).last_hidden_state, rtol=0, atol=1e-6)


@pytest.mark.parametrize("norm_position", ["pre", "post"])
def test_decoder_without_encoder_output_is_self_attention_and_mlp(norm_position):
    """BART's `create_and_check_decoder_model_past_large_inputs` calls `model.get_decoder()(input_ids)` with no
    encoder output: each block is then ``x -> N_post(R(x, N_out(SelfAttn(N_in(x)))))`` followed by the MLP
    sublayer, cross-attention skipped. Written out here from the block's modules; and cached equals uncached."""
    model = seq2seq(norm_position=norm_position)
    decoder = model.get_decoder()
    ids = torch.randint(3, 40, (2, 6))
    out = decoder(ids).last_hidden_state

    hidden = decoder.get_input_embeddings()(ids)
    positions = torch.arange(ids.shape[1])[None].expand(2, -1)
    hidden, rotary = decoder.embed_positions(hidden, positions)
    hidden = decoder.embedding_norm(hidden)
    causal = torch.full((6, 6), float("-inf")).triu(1)[None, None]
    for block in decoder.layers:
        attn, _ = block.self_attn(block.attn_pre_norm(hidden), position_embeddings=rotary, attention_mask=causal)
        hidden = block.attn_post_norm(block.attn_residual(hidden, block.attn_out_norm(attn)))
        mlp = block.mlp(block.mlp_pre_norm(hidden))
        hidden = block.mlp_post_norm(block.mlp_residual(hidden, block.mlp_out_norm(mlp)))
    torch.testing.assert_close(out, decoder.final_norm(hidden), rtol=1e-5, atol=1e-5)

    first = decoder(ids, use_cache=True)
    assert isinstance(first.cache, EncoderDecoderCache)
    more = torch.randint(3, 40, (2, 3))
    mask = torch.ones(2, 9, dtype=torch.long)
    mask[1, 7] = 0
    uncached = decoder(torch.cat([ids, more], -1), attention_mask=mask).last_hidden_state[:, -3:]
    cached = decoder(more, attention_mask=mask, cache=first.cache).last_hidden_state
    torch.testing.assert_close(cached, uncached, rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------------------------------- parallel plans
def test_tensor_parallel_plan_names_only_modules_the_model_has():
    """transformers' `test_tp_plan_matches_params` / `test_tied_weights_are_sharded_together`: every plan entry
    matches a module; a tied head and its embedding are sharded together. Encoder-decoders refuse tensor
    parallelism (`check_tensor_parallel`), so they carry no plan at all rather than the decoder-only one."""
    model = SkipNormForCausalLM(SkipNormConfig(**DECODER))
    modules = {re.sub(r"\.\d+(\.|$)", r".*\1", name) for name, _ in model.named_modules()}
    assert model.tp_plan and set(model.tp_plan) <= modules
    assert ("lm_head" in model.tp_plan) == ("model.embed_tokens" in model.tp_plan)
    for cls in (SkipNormEncoderDecoderModel, SkipNormForConditionalGeneration):
        model = cls(SkipNormConfig(**SEQ2SEQ))
        assert model.tp_plan == {} and model.config.base_model_tp_plan is None
    assert SkipNormConfig(**SEQ2SEQ).stack_config("decoder").base_model_tp_plan is None
    assert "base_model_tp_plan" not in SkipNormConfig(**SEQ2SEQ).to_dict()


# ----------------------------------------------------------------------------------------------------- inputs / outputs
def test_seq2seq_inputs_and_outputs_follow_transformers():
    """encoder_outputs as a tuple, inputs_embeds / decoder_inputs_embeds, return_dict=False, labels only, and the
    shapes of every attention and hidden-state output (eager), as the common tests read them."""
    model = seq2seq()
    model.set_attn_implementation("eager")  # reaches both stacks (their configs are their own)
    source, mask, target = batch()
    ref = model(input_ids=source, attention_mask=mask, decoder_input_ids=target, output_attentions=True,
                output_hidden_states=True)
    encoded = model.get_encoder()(source, attention_mask=mask, return_dict=False)
    assert isinstance(encoded, tuple)
    again = model(encoder_outputs=encoded, attention_mask=mask, decoder_input_ids=target).logits
    torch.testing.assert_close(again, ref.logits, rtol=0, atol=0)
    embed = model.get_input_embeddings()
    from_embeds = model(inputs_embeds=embed(source), attention_mask=mask, decoder_inputs_embeds=embed(target)).logits
    torch.testing.assert_close(from_embeds, ref.logits, rtol=1e-6, atol=1e-6)
    as_tuple = model(input_ids=source, attention_mask=mask, decoder_input_ids=target, return_dict=False)
    torch.testing.assert_close(as_tuple[0], ref.logits, rtol=0, atol=0)
    heads, layers = 4, 2
    assert [a.shape for a in ref.encoder_attentions] == [(3, heads, 7, 7)] * layers
    assert [a.shape for a in ref.decoder_attentions] == [(3, heads, 5, 5)] * layers
    assert [a.shape for a in ref.cross_attentions] == [(3, heads, 5, 7)] * layers
    assert torch.all(ref.cross_attentions[0][2, :, :, 5:] == 0)  # the padded source positions get no weight
    assert [h.shape for h in ref.encoder_hidden_states] == [(3, 7, 16)] * (layers + 1)
    assert [h.shape for h in ref.decoder_hidden_states] == [(3, 5, 16)] * (layers + 1)
    labels = target.clone()
    labels[0, -2:] = -100
    shifted = model.prepare_decoder_input_ids_from_labels(labels=labels)
    assert torch.equal(shifted[:, 0], torch.full((3,), 2)) and torch.equal(shifted[0, 1:4], labels[0, :3])
    assert shifted[0, -1] == 1  # -100 becomes pad
    loss = model(input_ids=source, attention_mask=mask, labels=labels).loss
    logits = model(input_ids=source, attention_mask=mask, decoder_input_ids=shifted).logits
    assert loss.item() == pytest.approx(torch.nn.functional.cross_entropy(
        logits.reshape(-1, 40), labels.reshape(-1), ignore_index=-100).item(), rel=1e-6)


@pytest.mark.parametrize("kind", ["decoder", "seq2seq"])
def test_inputs_embeds_from_the_input_embeddings_match_input_ids(kind):
    """transformers' `test_inputs_embeds_matches_input_ids`: `model(inputs_embeds=get_input_embeddings()(ids))` is
    `model(input_ids=ids)`, also with a scaled embedding (Gemma's sqrt(d), BART's scale_embedding): the multiplier
    lives in the lookup, ``m * E[ids]``, and a caller's inputs_embeds are used as given. It survives a resize."""
    torch.manual_seed(0)
    if kind == "seq2seq":
        model = seq2seq(embedding_multiplier=4.0)
    else:
        model = perturbed(SkipNormForCausalLM(SkipNormConfig(**DECODER, embedding_multiplier=4.0)))
    ids = torch.randint(3, 40, (2, 5))
    table = model.get_input_embeddings()
    torch.testing.assert_close(table(ids), 4.0 * table.weight[ids], rtol=0, atol=0)
    for _ in range(2):
        embeds = model.get_input_embeddings()(ids)
        if kind == "seq2seq":
            by_ids = model(input_ids=ids, decoder_input_ids=ids).logits
            by_embeds = model(inputs_embeds=embeds, decoder_inputs_embeds=embeds).logits
        else:
            by_ids, by_embeds = model(input_ids=ids).logits, model(inputs_embeds=embeds).logits
        torch.testing.assert_close(by_embeds, by_ids, rtol=1e-6, atol=1e-6)
        model.resize_token_embeddings(44, mean_resizing=False)  # the second round runs on the resized table
    assert model.get_input_embeddings().scale == 4.0
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight


def test_fairseq_positions_from_inputs_embeds_are_sequential():
    """M2M100's `create_position_ids_from_inputs_embeds`: without ids the pad tokens cannot be seen, so the positions
    are 0, 1, ... whatever the mask (with ids they count the non-pad tokens). transformers' inputs_embeds test feeds
    a mask with zeros over tokens it made non-pad, and expects the two paths to agree."""
    model = seq2seq(position_embedding="sinusoidal_fairseq", position_offset=2, norm_type="layernorm")
    source, mask, target = batch()
    mask[0, :2] = 0  # zeros over tokens that are not pad, where a row starts (shifts mask-counted positions)
    target_mask = torch.ones_like(target)
    target_mask[1, 0] = 0
    embed = model.get_input_embeddings()
    by_ids = model(input_ids=source, attention_mask=mask, decoder_input_ids=target,
                   decoder_attention_mask=target_mask).logits
    by_embeds = model(inputs_embeds=embed(source), attention_mask=mask, decoder_inputs_embeds=embed(target),
                      decoder_attention_mask=target_mask).logits
    torch.testing.assert_close(by_embeds, by_ids, rtol=1e-6, atol=1e-6)


def test_resize_keeps_the_ties_and_the_logits_bias():
    model = seq2seq(final_logits_bias=True)
    with torch.no_grad():
        model.final_logits_bias.bias.normal_()
    old_bias = model.final_logits_bias.bias.clone()
    model.resize_token_embeddings(47, mean_resizing=False)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    assert model.get_encoder().embed_tokens is model.model.embed_tokens is model.get_decoder().embed_tokens
    assert model.final_logits_bias.bias.shape == (1, 47) and torch.equal(model.final_logits_bias.bias[:, :40], old_bias)
    assert model.config.vocab_size == 47
    source, mask, target = batch()
    assert model(input_ids=source, attention_mask=mask, decoder_input_ids=target).logits.shape == (3, 5, 47)


# ----------------------------------------------------------------------------------------------------- generation
@pytest.mark.parametrize("cls_config", ["seq2seq", "decoder"])
def test_generation_modes_agree(cls_config):
    """The generation mixin's tests: beams with num_return_sequences, assisted and prompt-lookup decoding equal to
    greedy, a static cache equal to the dynamic one, continuing from a returned cache equal to one longer call."""
    if cls_config == "seq2seq":
        model = seq2seq()
        source, mask, _ = batch()
        inputs = {"input_ids": source[:2], "attention_mask": mask[:2]}
    else:
        torch.manual_seed(0)
        model = perturbed(SkipNormForCausalLM(SkipNormConfig(**DECODER)))
        inputs = {"input_ids": torch.randint(3, 40, (2, 6)), "attention_mask": torch.ones(2, 6, dtype=torch.long)}
    model.generation_config.eos_token_id = None  # fixed lengths
    greedy = dict(do_sample=False, max_new_tokens=4, return_dict_in_generate=True, output_logits=True)
    base = model.generate(**inputs, **greedy)
    start = 1 if cls_config == "seq2seq" else 6
    assert base.sequences.shape == (2, start + 4)
    beams = model.generate(**inputs, num_beams=3, num_return_sequences=2, max_new_tokens=4, do_sample=False)
    assert beams.shape == (4, start + 4)
    for extra in ({"assistant_model": model}, {"prompt_lookup_num_tokens": 2}):
        one = {k: v[:1] for k, v in inputs.items()}
        assisted = model.generate(**one, **greedy, **extra)
        assert torch.equal(assisted.sequences, base.sequences[:1])
    static = model.generate(**inputs, **greedy, cache_implementation="static")
    assert torch.equal(static.sequences, base.sequences)
    cache = static.cache.self_attention_cache if cls_config == "seq2seq" else static.cache
    assert isinstance(cache, StaticCache)
    first = model.generate(**inputs, do_sample=False, max_new_tokens=3, return_dict_in_generate=True)
    more = dict(inputs)
    if cls_config == "seq2seq":  # with the decoder mask generate feeds only the token the cache lacks
        more["decoder_input_ids"] = first.sequences
        more["decoder_attention_mask"] = torch.ones_like(first.sequences)
    else:
        more["input_ids"] = first.sequences
        more["attention_mask"] = torch.ones_like(first.sequences)
    resumed = model.generate(**more, cache=first.cache, do_sample=False, max_new_tokens=1)
    assert torch.equal(resumed, base.sequences)


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_t5_bias_with_a_static_cache_equals_the_dynamic_cache(attn):
    """A static cache's mask spans the whole cache: T5's relative bias is computed over that many keys (it was over
    `past + new` and failed to add), and the logits equal the dynamic cache's."""
    model = seq2seq(position_embedding="t5_relative", relative_attention_num_buckets=8,
                    relative_attention_max_distance=16)
    with torch.no_grad():  # a bias that matters
        for stack in (model.get_encoder(), model.get_decoder()):
            stack.score_bias.relative_attention_bias.weight.normal_(0, 2)
    model.set_attn_implementation(attn)
    model.generation_config.eos_token_id = None
    source, mask, _ = batch()
    kwargs = dict(input_ids=source, attention_mask=mask, max_new_tokens=5, do_sample=False,
                  return_dict_in_generate=True, output_logits=True)
    dynamic = model.generate(**kwargs)
    static = model.generate(**kwargs, cache_implementation="static")
    assert isinstance(static.cache.self_attention_cache, StaticCache)
    assert torch.equal(dynamic.sequences, static.sequences)
    for a, b in zip(dynamic.logits, static.logits):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_old_cache_keyword_still_works_with_a_warning():
    """`past_key_values=` (the pre-5.24 name) is accepted with transformers' FutureWarning (test_bc_cache_name_forward)."""
    model = seq2seq()
    source, mask, target = batch()
    first = model(input_ids=source, attention_mask=mask, decoder_input_ids=target[:, :3], use_cache=True)
    with pytest.warns(FutureWarning, match="`past_key_values` is deprecated"):
        step = model(input_ids=source, attention_mask=mask, decoder_input_ids=target[:, 3:4],
                     past_key_values=first.cache)
    full = model(input_ids=source, attention_mask=mask, decoder_input_ids=target[:, :4]).logits[:, -1]
    torch.testing.assert_close(step.logits[:, -1], full, rtol=1e-5, atol=1e-5)
    decoder_only = SkipNormModel(SkipNormConfig(**DECODER))
    assert decoder_only.tp_plan  # the decoder-only base model keeps its plan


@pytest.mark.parametrize("fields", [dict(residual="hyper", residual_streams=2), dict(residual="attn_res"),
                                    dict(norm_position="resi_dual")], ids=["hyper", "attn_res", "resi_dual"])
def test_multi_stream_hidden_states_are_the_same_in_a_tuple(fields):
    """transformers' `test_model_outputs_equivalence`: `return_dict=False` gives the same tensors as the ModelOutput;
    multi-stream residuals report each hidden state reduced to (B, T, C) in both (the tuple kept the raw stream)."""
    torch.manual_seed(0)
    model = perturbed(SkipNormModel(SkipNormConfig(**DECODER, **fields)))
    ids = torch.randint(3, 40, (2, 6))
    as_dict = model(ids, output_hidden_states=True)
    as_tuple = model(ids, output_hidden_states=True, return_dict=False)
    assert isinstance(as_tuple, tuple) and len(as_tuple) == len(as_dict.to_tuple())
    torch.testing.assert_close(as_tuple[0], as_dict.last_hidden_state, rtol=0, atol=0)
    assert [h.shape for h in as_tuple[-1]] == [(2, 6, 16)] * 3
    for a, b in zip(as_tuple[-1], as_dict.hidden_states):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_ngpt_resize_keeps_the_logit_scale_per_token():
    """transformers' `test_resize_tokens_embeddings` on nGPT: the per-token logit scale ``s_z`` follows the vocabulary
    (kept rows stay, new rows at the paper's init, ``s_bias = 0``), so the resized model runs."""
    torch.manual_seed(0)
    config = SkipNormConfig(**{**DECODER, "num_key_value_heads": 4}, architecture="ngpt", norm_position="none",
                            tie_word_embeddings=False)
    model = SkipNormForCausalLM(config).eval()
    with torch.no_grad():
        model.logit_scale.s_bias.normal_()
    old = model.logit_scale.s_bias.detach().clone()
    ids = torch.randint(3, 40, (2, 5))
    before = model(ids).logits
    model.resize_token_embeddings(45, mean_resizing=False)
    assert model.logit_scale.s_bias.shape == (45,) and isinstance(model.logit_scale.s_bias, torch.nn.Parameter)
    assert torch.equal(model.logit_scale.s_bias[:40], old) and torch.all(model.logit_scale.s_bias[40:] == 0)
    after = model(ids).logits
    assert after.shape == (2, 5, 45)
    torch.testing.assert_close(after[..., :40], before, rtol=1e-6, atol=1e-6)  # the kept tokens' logits unchanged
    model.resize_token_embeddings(36)
    assert model(ids.clamp(max=35)).logits.shape == (2, 5, 36)


def test_ngpt_in_float16_stays_finite_with_left_padding():
    """transformers' eager-vs-SDPA test in float16: SDPA gives a zero row for a fully masked query (a left pad) and
    nGPT's ``x / max(||x||, eps)`` with eps = 1e-12 (0 in float16) made it 0/0 = NaN, spreading to every later
    position through the next layer's keys. Now finite, and equal to eager on the real tokens."""
    torch.manual_seed(0)
    config = SkipNormConfig(**{**DECODER, "num_key_value_heads": 4}, architecture="ngpt", norm_position="none",
                            tie_word_embeddings=False)
    ids = torch.randint(3, 40, (2, 7))
    mask = torch.ones_like(ids)
    mask[0, :3] = 0
    outputs = {}
    for attn in ("eager", "sdpa"):
        torch.manual_seed(0)
        model = SkipNormModel(config).eval().half()
        model.set_attn_implementation(attn)
        outputs[attn] = model(ids, attention_mask=mask).last_hidden_state
        assert torch.isfinite(outputs[attn]).all(), attn
    real = mask.bool()
    torch.testing.assert_close(outputs["sdpa"][real], outputs["eager"][real], rtol=5e-3, atol=5e-3)

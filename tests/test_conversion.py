"""Checkpoint conversion: exact parity with transformers' own classes, exact round trips, loud refusals.

Every source model is built here from a tiny config with random weights (no downloads). Weights are re-drawn at
unit scale (norm gains away from 1, biases away from 0) so that every term of every formula moves the logits well
above the 1e-4 tolerance: a missed soft-cap, scale or bias would fail.
"""

from __future__ import annotations

import json
import math
import os

import pytest
import torch
import transformers as T
from safetensors.torch import load_file, save_file

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from hf_skipnorm import SkipNormConfig, SkipNormForCausalLM, SkipNormModel, convert_from_hf, convert_to_hf
from hf_skipnorm.convert import UnsupportedFeatureError, convert_state_dict_from_hf, main
from hf_skipnorm.modeling_skipnorm import SkipNormAttention

TOLERANCE = 1e-4  # max |logit difference| in float32 (the bar)
SMALL = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, vocab_size=100,
             bos_token_id=1, eos_token_id=2, pad_token_id=0)
GPT2_SMALL = dict(n_embd=32, n_layer=2, n_head=4, vocab_size=100, n_positions=64, bos_token_id=1, eos_token_id=2,
                  pad_token_id=0)
BERT_SMALL = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, vocab_size=100,
                  max_position_embeddings=64)

# id -> (transformers class, config); decoders are compared with left padding and greedy generation.
DECODERS = {
    "llama-gqa": ("LlamaForCausalLM", lambda: T.LlamaConfig(**SMALL, num_key_value_heads=2)),
    "llama-bias-rope-llama3": ("LlamaForCausalLM", lambda: T.LlamaConfig(
        **SMALL, attention_bias=True, mlp_bias=True, tie_word_embeddings=True, rope_parameters={
            "rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 16})),
    "llama-rope-linear": ("LlamaForCausalLM", lambda: T.LlamaConfig(
        **SMALL, rope_parameters={"rope_type": "linear", "rope_theta": 10000.0, "factor": 4.0})),
    "gpt2": ("GPT2LMHeadModel", lambda: T.GPT2Config(**GPT2_SMALL)),
    "gpt2-untied-unscaled": ("GPT2LMHeadModel", lambda: T.GPT2Config(
        **GPT2_SMALL, tie_word_embeddings=False, scale_attn_weights=False, activation_function="gelu")),
    "qwen3": ("Qwen3ForCausalLM", lambda: T.Qwen3Config(**SMALL, num_key_value_heads=2, head_dim=16)),
    "olmo2": ("Olmo2ForCausalLM", lambda: T.Olmo2Config(**SMALL, num_key_value_heads=2)),
    "gpt_neox-parallel": ("GPTNeoXForCausalLM", lambda: T.GPTNeoXConfig(**SMALL)),
    "gpt_neox-sequential": ("GPTNeoXForCausalLM", lambda: T.GPTNeoXConfig(**SMALL, use_parallel_residual=False)),
    "phi": ("PhiForCausalLM", lambda: T.PhiConfig(**SMALL)),
    "phi-qk_layernorm-gqa": ("PhiForCausalLM", lambda: T.PhiConfig(**SMALL, qk_layernorm=True, num_key_value_heads=2)),
    # Window == max_position_embeddings: the sliding layers provably see the whole causal context (see convert.py).
    "gemma2": ("Gemma2ForCausalLM", lambda: T.Gemma2Config(
        **SMALL, num_key_value_heads=2, head_dim=16, query_pre_attn_scalar=24, max_position_embeddings=64,
        sliding_window=64, attn_logit_softcapping=2.0, final_logit_softcapping=1.5)),
}
ENCODERS = {
    "bert-mlm": ("BertForMaskedLM", lambda: T.BertConfig(**BERT_SMALL)),
    "bert-base": ("BertModel", lambda: T.BertConfig(**BERT_SMALL)),
}
MEASURED: dict[str, float] = {}  # id -> max |difference|, printed at the end (`pytest -s`) for the report


@pytest.fixture(scope="module", autouse=True)
def _report_measured():
    yield
    if MEASURED:
        print("\nmax |logit/hidden difference| per architecture:", json.dumps(MEASURED, indent=1))


def _unit_scale(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Re-draw every parameter at unit scale: matrices N(0, 1/fan_in), embeddings N(0, 1), vectors 1 + N(0, 0.2)
    for gains (Gemma's offset gains N(0, 0.2)) and N(0, 0.2) for biases."""
    generator = torch.Generator().manual_seed(seed)
    offset_gains = isinstance(model, T.Gemma2PreTrainedModel)
    with torch.no_grad():
        for name, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=generator)
            if param.dim() == 2:
                scale = 1.0 if "embed" in name or "wte" in name or "wpe" in name else param.shape[1] ** -0.5
                # GPT-2's Conv1D stores (in, out): its fan-in is the first dim.
                if "c_attn" in name or "c_proj" in name or "c_fc" in name:
                    scale = param.shape[0] ** -0.5
                param.copy_(noise * scale)
            elif name.endswith("weight") and not offset_gains:
                param.copy_(1.0 + 0.2 * noise)
            else:
                param.copy_(0.2 * noise)
    return model.eval()


def _batch(vocab: int, left: bool, batch: int = 3, length: int = 10, seed: int = 1):
    """Random tokens; row b has 2b padding tokens (left for decoders, right for encoders)."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, vocab, (batch, length), generator=generator)
    mask = torch.ones(batch, length, dtype=torch.long)
    for b in range(1, batch):
        if left:
            mask[b, : 2 * b] = 0
        else:
            mask[b, length - 2 * b:] = 0
    return ids.masked_fill(mask == 0, 0), mask


def _state_dicts_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("case", list(DECODERS), ids=list(DECODERS))
def test_decoder_parity_generation_and_round_trip(case):
    class_name, make_config = DECODERS[case]
    source = _unit_scale(getattr(T, class_name)(make_config()))
    ours = convert_from_hf(source)
    assert isinstance(ours, SkipNormForCausalLM)

    ids, mask = _batch(source.config.vocab_size, left=True)
    # transformers' forward numbers positions 0..T-1 whatever the padding; generate() derives them from the mask,
    # as SkipNorm's forward does. Give both the mask-derived positions so pad-skipping positions are compared.
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        expected = source(input_ids=ids, attention_mask=mask, position_ids=positions).logits
        actual = ours(input_ids=ids, attention_mask=mask).logits
    real = mask.bool()  # padded positions are masked out of every real token's computation and carry no meaning
    diff = (expected - actual).abs()[real].max().item()
    MEASURED[case] = diff
    assert expected.abs()[real].max() > 1.0, "logits too small for the tolerance to mean anything"
    assert diff <= TOLERANCE

    generated_source = source.generate(ids, attention_mask=mask, max_new_tokens=5, do_sample=False, pad_token_id=0)
    generated_ours = ours.generate(ids, attention_mask=mask, max_new_tokens=5, do_sample=False, pad_token_id=0)
    assert torch.equal(generated_source, generated_ours)

    back = convert_to_hf(ours)
    assert type(back) is type(source)
    assert _state_dicts_equal(back.state_dict(), source.state_dict())
    with torch.no_grad():  # non-persistent buffers (rotary frequencies, Gemma's embed scale) rebuilt too
        assert torch.equal(back(input_ids=ids, attention_mask=mask, position_ids=positions).logits, expected)


@pytest.mark.parametrize("case", list(ENCODERS), ids=list(ENCODERS))
def test_encoder_parity_and_round_trip(case):
    class_name, make_config = ENCODERS[case]
    source = _unit_scale(getattr(T, class_name)(make_config()))
    allow = ("pooler.",) if class_name == "BertModel" else ()
    ours = convert_from_hf(source, allow_unused=allow)
    ids, mask = _batch(source.config.vocab_size, left=False)
    token_types = (torch.arange(ids.shape[1]) >= 4).long().expand_as(ids)  # two segments, as BERT's pairs
    with torch.no_grad():
        out_source = source(input_ids=ids, attention_mask=mask, token_type_ids=token_types)
        out_ours = ours(input_ids=ids, attention_mask=mask, token_type_ids=token_types)
    if class_name == "BertModel":  # the bar for encoders: hidden states
        expected, actual = out_source.last_hidden_state, out_ours.last_hidden_state
    else:
        expected, actual = out_source.logits, out_ours.logits
    real = mask.bool()
    diff = (expected - actual).abs()[real].max().item()
    MEASURED[case] = diff
    assert diff <= TOLERANCE

    if class_name == "BertForMaskedLM":
        back = convert_to_hf(ours)
        assert type(back) is type(source) and _state_dicts_equal(back.state_dict(), source.state_dict())
    else:  # the pooler has no SkipNorm place: the way back would have to invent it
        with pytest.raises(ValueError, match="pooler"):
            convert_from_hf(source)


@pytest.mark.parametrize("class_name,make_config", [
    ("LlamaModel", lambda: T.LlamaConfig(**SMALL, num_key_value_heads=2)),
    ("GPTNeoXModel", lambda: T.GPTNeoXConfig(**SMALL)),
], ids=["llama", "gpt_neox"])
def test_base_models_convert_both_ways(class_name, make_config):
    source = _unit_scale(getattr(T, class_name)(make_config()))
    ours = convert_from_hf(source)
    assert isinstance(ours, SkipNormModel)
    ids = torch.randint(3, 100, (2, 7))
    with torch.no_grad():
        diff = (source(ids).last_hidden_state - ours(ids).last_hidden_state).abs().max().item()
    MEASURED[f"{class_name}-hidden"] = diff
    assert diff <= TOLERANCE
    back = convert_to_hf(ours)
    assert type(back) is type(source) and _state_dicts_equal(back.state_dict(), source.state_dict())


def test_converted_model_does_not_share_storage_and_keeps_ties():
    source = T.GPT2LMHeadModel(T.GPT2Config(**GPT2_SMALL))
    ours = convert_from_hf(source)
    assert ours.lm_head.weight is ours.model.embed_tokens.weight
    with torch.no_grad():
        ours.model.embed_tokens.weight.add_(1.0)
    assert not torch.equal(ours.model.embed_tokens.weight, source.transformer.wte.weight)


# ----------------------------------------------------------------------------------------------------- refusals
REFUSED = {
    "rope-yarn": (lambda: T.LlamaForCausalLM(T.LlamaConfig(**SMALL, rope_parameters={
        "rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0, "original_max_position_embeddings": 32})),
        "rope_type"),
    "rope-dynamic": (lambda: T.LlamaForCausalLM(T.LlamaConfig(**SMALL, rope_parameters={
        "rope_type": "dynamic", "rope_theta": 10000.0, "factor": 2.0})), "rope_type"),
    "gemma2-sliding-window": (lambda: T.Gemma2ForCausalLM(T.Gemma2Config(
        **SMALL, num_key_value_heads=2, head_dim=8, max_position_embeddings=128, sliding_window=32)), "sliding_window"),
    "qwen3-sliding-window": (lambda: T.Qwen3ForCausalLM(T.Qwen3Config(
        **SMALL, head_dim=8, use_sliding_window=True, sliding_window=16, max_window_layers=0)), "sliding_window"),
    "gpt2-layer-scaled-attention": (lambda: T.GPT2LMHeadModel(T.GPT2Config(
        **GPT2_SMALL, scale_attn_by_inverse_layer_idx=True)), "scale_attn_by_inverse_layer_idx"),
    "gpt2-cross-attention": (lambda: T.GPT2LMHeadModel(T.GPT2Config(**GPT2_SMALL, add_cross_attention=True)),
                             "add_cross_attention"),
    "bert-decoder": (lambda: T.BertForMaskedLM(T.BertConfig(**BERT_SMALL, is_decoder=True)), "is_decoder"),
    "unknown-class": (lambda: T.MistralForCausalLM(T.MistralConfig(**SMALL)), "MistralForCausalLM"),
}


@pytest.mark.parametrize("case", list(REFUSED), ids=list(REFUSED))
def test_unsupported_features_are_refused_by_name(case):
    make_model, feature = REFUSED[case]
    with pytest.raises(UnsupportedFeatureError, match=feature):
        convert_from_hf(make_model())


def test_missing_and_unexpected_weights_are_listed():
    source = T.LlamaForCausalLM(T.LlamaConfig(**SMALL))
    state = dict(source.state_dict())
    missing = dict(state)
    del missing["model.layers.1.mlp.up_proj.weight"]
    with pytest.raises(ValueError, match=r"missing weights.*model\.layers\.1\.mlp\.up_proj\.weight"):
        convert_state_dict_from_hf("LlamaForCausalLM", source.config, missing)
    extra = {**state, "model.layers.0.self_attn.rotary_emb.extra": torch.zeros(2)}
    with pytest.raises(ValueError, match=r"unexpected weights.*rotary_emb\.extra"):
        convert_state_dict_from_hf("LlamaForCausalLM", source.config, extra)


def test_convert_to_hf_refuses_configs_without_a_counterpart():
    config = SkipNormConfig(**{k: v for k, v in SMALL.items()}, norm_position="pre_post")
    with pytest.raises(UnsupportedFeatureError, match="norm_position"):
        convert_to_hf(SkipNormForCausalLM(config))


# ----------------------------------------------------------------------------------------------------- CLI
def _write_tokenizer_files(folder):
    (folder / "tokenizer_config.json").write_text(json.dumps({"model_max_length": 64}))
    (folder / "vocab.json").write_text(json.dumps({str(i): i for i in range(100)}))
    (folder / "merges.txt").write_text("#version: 0.2\n")


def test_cli_converts_a_sharded_safetensors_folder(tmp_path, capsys):
    source = _unit_scale(T.LlamaForCausalLM(T.LlamaConfig(**SMALL, num_key_value_heads=2)))
    src, dst = tmp_path / "llama", tmp_path / "skipnorm"
    source.save_pretrained(src, max_shard_size="20KB")  # several shards + an index
    assert len(list(src.glob("*.safetensors"))) > 1
    _write_tokenizer_files(src)

    assert main([str(src), str(dst)]) == 0
    assert "SkipNormForCausalLM" in capsys.readouterr().out
    for name in ("tokenizer_config.json", "vocab.json", "merges.txt"):
        assert (dst / name).read_bytes() == (src / name).read_bytes()
    assert not list(dst.glob("*.bin")) and list(dst.glob("*.safetensors"))
    assert json.loads((dst / "config.json").read_text())["model_type"] == "skipnorm"

    loaded = SkipNormForCausalLM.from_pretrained(dst)
    ids, mask = _batch(100, left=True)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        diff = (source(ids, attention_mask=mask, position_ids=positions).logits
                - loaded(ids, attention_mask=mask).logits).abs()[mask.bool()].max().item()
    assert diff <= TOLERANCE


def test_cli_refuses_pickle_only_folders_and_uncached_hub_ids(tmp_path, capsys):
    source = T.GPT2LMHeadModel(T.GPT2Config(**GPT2_SMALL))
    # transformers 5 only writes safetensors: write the legacy pickle layout by hand.
    source.config.save_pretrained(tmp_path / "bin")
    torch.save(source.state_dict(), tmp_path / "bin" / "pytorch_model.bin")
    assert main([str(tmp_path / "bin"), str(tmp_path / "out")]) == 1
    assert "safetensors" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()

    assert main(["someone/not-cached-model", str(tmp_path / "out2"), "--cache-dir", str(tmp_path / "cache")]) == 1
    assert "never downloads" in capsys.readouterr().err


def test_cli_accepts_a_hub_id_already_in_the_cache(tmp_path):
    # The Hugging Face cache layout: models--{org}--{name}/refs/main names a snapshot folder holding the files.
    commit = "0" * 40
    repo = tmp_path / "cache" / "models--tiny-org--tiny-gpt2"
    source = _unit_scale(T.GPT2LMHeadModel(T.GPT2Config(**GPT2_SMALL)))
    source.save_pretrained(repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    assert main(["tiny-org/tiny-gpt2", str(tmp_path / "out"), "--cache-dir", str(tmp_path / "cache")]) == 0
    loaded = SkipNormForCausalLM.from_pretrained(tmp_path / "out")
    ids = torch.randint(3, 100, (2, 7))
    with torch.no_grad():
        assert (source(ids).logits - loaded(ids).logits).abs().max() <= TOLERANCE


def test_cli_refuses_checkpoints_with_missing_weights(tmp_path, capsys):
    source = T.LlamaForCausalLM(T.LlamaConfig(**SMALL))
    source.save_pretrained(tmp_path / "llama")
    weights = next((tmp_path / "llama").glob("*.safetensors"))
    state = load_file(weights)
    del state["model.layers.1.mlp.up_proj.weight"]
    save_file(state, weights, metadata={"format": "pt"})
    assert main([str(tmp_path / "llama"), str(tmp_path / "out")]) == 1
    assert "model.layers.1.mlp.up_proj.weight" in capsys.readouterr().err


def test_cli_refuses_weights_without_a_place_unless_allowed(tmp_path, capsys):
    source = T.BertModel(T.BertConfig(**BERT_SMALL))
    source.save_pretrained(tmp_path / "bert")
    assert main([str(tmp_path / "bert"), str(tmp_path / "out")]) == 1
    assert "pooler.dense.weight" in capsys.readouterr().err
    assert main([str(tmp_path / "bert"), str(tmp_path / "out"), "--allow-unused", "pooler."]) == 0
    saved = load_file(next((tmp_path / "out").glob("*.safetensors")))
    assert "embedding_norm.weight" in saved and not any("pooler" in k for k in saved)
    assert isinstance(SkipNormModel.from_pretrained(tmp_path / "out"), SkipNormModel)


# ----------------------------------------------------------------------------------------------------- new fields
# Fields added for the conversions (Gemma 2, Phi, GPT-2 without scaling), each against a float64 formula here.
def _config(**overrides) -> SkipNormConfig:
    return SkipNormConfig(**{**SMALL, "num_hidden_layers": 1, **overrides})


def test_attention_multiplier_and_softcap_match_the_formula():
    torch.manual_seed(0)
    config = _config(position_embedding="none", attention_multiplier=0.7, attn_logit_softcapping=1.5)
    config._attn_implementation = "eager"
    attention = SkipNormAttention(config, 0).double().eval()
    for p in attention.parameters():
        torch.nn.init.normal_(p, std=0.5)
    x = torch.randn(2, 5, 32, dtype=torch.float64)
    causal = torch.full((5, 5), float("-inf"), dtype=torch.float64).triu(1)[None, None]
    out, _ = attention(x, position_embeddings=None, attention_mask=causal)

    def heads(t):  # (B, T, H*hd) -> (B, H, T, hd)
        return t.view(2, 5, 4, 8).transpose(1, 2)

    q, k, v = (heads(torch.nn.functional.linear(x, getattr(attention, n).weight, getattr(attention, n).bias))
               for n in ("q_proj", "k_proj", "v_proj"))
    scores = 0.7 * q @ k.transpose(-1, -2)
    scores = 1.5 * torch.tanh(scores / 1.5) + causal
    mixed = (scores.softmax(-1) @ v).transpose(1, 2).reshape(2, 5, 32)
    expected = torch.nn.functional.linear(mixed, attention.o_proj.weight, attention.o_proj.bias)
    assert torch.allclose(out, expected, atol=1e-12)


def test_softcapped_configs_default_to_eager_attention():
    assert SkipNormForCausalLM(_config(attn_logit_softcapping=5.0)).config._attn_implementation == "eager"
    assert SkipNormForCausalLM(_config()).config._attn_implementation == "sdpa"


def test_embedding_multiplier_final_softcap_and_lm_head_bias_match_the_formula():
    torch.manual_seed(0)
    config = _config(embedding_multiplier=3.0, final_logit_softcapping=2.0, lm_head_bias=True, tie_word_embeddings=False)
    model = SkipNormForCausalLM(config).double().eval()
    torch.nn.init.normal_(model.lm_head.bias, std=1.0)
    ids = torch.randint(3, 100, (2, 6))
    with torch.no_grad():
        logits = model(ids).logits
        # h0 = m * E[ids]; the caller's inputs_embeds are used as given (as in Gemma)
        hidden = model.model(inputs_embeds=3.0 * model.model.embed_tokens.weight[ids]).last_hidden_state
    raw = hidden @ model.lm_head.weight.T + model.lm_head.bias
    assert torch.allclose(logits, 2.0 * torch.tanh(raw / 2.0), atol=1e-12)
    assert logits.abs().max() < 2.0


@pytest.mark.parametrize("field,value", [
    ("embedding_multiplier", 0.0), ("attention_multiplier", -1.0), ("attn_logit_softcapping", float("inf")),
    ("final_logit_softcapping", "30"), ("lm_head_bias", 1),
])
def test_new_fields_are_validated(field, value):
    with pytest.raises(ValueError, match=field):
        _config(**{field: value})

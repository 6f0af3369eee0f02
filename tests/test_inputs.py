"""Bad runtime inputs get a ValueError naming the input, the bad value and the valid range, before torch's bare
IndexError (CPU) or device-side assert (CUDA): token ids, token-type ids, learned positions (also when generation
runs past them), empty or wrongly shaped inputs, and labels that are not one per token."""

from __future__ import annotations

import pytest
import torch

from hf_skipnorm import (
    SkipNormConfig,
    SkipNormForCausalLM,
    SkipNormForMaskedLM,
    SkipNormForTokenClassification,
    SkipNormModel,
)

TINY = dict(vocab_size=64, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
            max_position_embeddings=16)
BERT = dict(is_causal=False, norm_position="post", norm_type="layernorm", position_embedding="learned",
            type_vocab_size=2, mlp_type="plain", hidden_act="gelu")
IDS = torch.tensor([[1, 2, 3, 4], [5, 6, 7, 8]])


def ids_with(value, shape=(2, 4)):
    ids = torch.ones(shape, dtype=torch.long)
    ids.view(-1)[-1] = value
    return ids


# (class, config fields, forward keywords, the error)
BAD_INPUTS = {
    "token-id-too-large": (SkipNormModel, {}, dict(input_ids=ids_with(64)),
                           r"input_ids holds 64, outside the valid range \[0, 63\] \(SkipNormConfig\.vocab_size=64\)"),
    "token-id-negative": (SkipNormModel, {}, dict(input_ids=ids_with(-3)), r"input_ids holds -3, outside the valid "
                                                                             r"range \[0, 63\]"),
    "token-type-too-large": (SkipNormModel, BERT, dict(input_ids=IDS, token_type_ids=ids_with(2)),
                             r"token_type_ids holds 2, outside the valid range \[0, 1\] "
                             r"\(SkipNormConfig\.type_vocab_size=2\)"),
    "token-types-without-embedding": (SkipNormModel, {}, dict(input_ids=IDS, token_type_ids=torch.zeros_like(IDS)),
                                      r"token_type_ids were given but SkipNormConfig\.type_vocab_size=0"),
    "past-learned-positions": (SkipNormModel, BERT, dict(input_ids=torch.ones(1, 17, dtype=torch.long)),
                               r"position_ids holds 16, outside the valid range \[0, 15\] "
                               r"\(SkipNormConfig\.max_position_embeddings=16\)"),
    "negative-position": (SkipNormModel, BERT, dict(input_ids=IDS, position_ids=ids_with(-1)),
                          r"position_ids holds -1, outside the valid range \[0, 15\]"),
    "empty-sequence": (SkipNormModel, {}, dict(input_ids=torch.ones(2, 0, dtype=torch.long)),
                       r"input_ids is empty: shape \(2, 0\); valid: at least one sequence of one token"),
    "empty-batch": (SkipNormModel, {}, dict(input_ids=torch.ones(0, 4, dtype=torch.long)),
                    r"input_ids is empty: shape \(0, 4\)"),
    "3d-input-ids": (SkipNormModel, {}, dict(input_ids=torch.ones(2, 3, 4, dtype=torch.long)),
                     r"input_ids must be 2-D, \(batch, seq_len\); got shape \(2, 3, 4\)"),
    "1d-input-ids": (SkipNormModel, {}, dict(input_ids=torch.ones(4, dtype=torch.long)),
                     r"input_ids must be 2-D, \(batch, seq_len\); got shape \(4,\)"),
    "2d-inputs-embeds": (SkipNormModel, {}, dict(inputs_embeds=torch.ones(4, 16)),
                         r"inputs_embeds must be 3-D, \(batch, seq_len, hidden_size\); got shape \(4, 16\)"),
    "causal-lm-labels": (SkipNormForCausalLM, {}, dict(input_ids=IDS, labels=IDS[:, :3]),
                         r"labels have shape \(2, 3\) but the inputs have \(2, 4\) tokens"),
    "masked-lm-labels": (SkipNormForMaskedLM, BERT, dict(input_ids=IDS, labels=IDS.reshape(-1)),
                         r"labels have shape \(8,\) but the inputs have \(2, 4\) tokens"),
    "token-cls-labels": (SkipNormForTokenClassification, {}, dict(input_ids=IDS, labels=IDS[:1]),
                         r"labels have shape \(1, 4\) but the inputs have \(2, 4\) tokens"),
}


@pytest.mark.parametrize("cls, fields, inputs, message", BAD_INPUTS.values(), ids=BAD_INPUTS)
def test_a_bad_input_is_named_with_its_valid_range(cls, fields, inputs, message):
    model = cls(SkipNormConfig(**{**TINY, **fields})).eval()
    with pytest.raises(ValueError, match=message):
        model(**inputs)


def test_generation_past_the_learned_positions_is_refused():
    model = SkipNormForCausalLM(SkipNormConfig(**{**TINY, "position_embedding": "learned"})).eval()
    with pytest.raises(ValueError, match=r"position_ids holds 16, outside the valid range \[0, 15\] "
                                         r"\(SkipNormConfig\.max_position_embeddings=16\)"):
        model.generate(IDS, max_new_tokens=20, min_new_tokens=20, do_sample=False, pad_token_id=0)


def test_the_edges_of_the_valid_ranges_are_accepted():
    model = SkipNormForMaskedLM(SkipNormConfig(**{**TINY, **BERT})).eval()
    ids = torch.tensor([[0, 63] + [5] * 14])  # both vocabulary ends, all 16 learned positions
    out = model(input_ids=ids, token_type_ids=torch.tensor([[0, 1] * 8]), labels=ids)
    assert torch.isfinite(out.loss)
    causal = SkipNormForCausalLM(SkipNormConfig(**{**TINY, "position_embedding": "learned"})).eval()
    generated = causal.generate(IDS, max_new_tokens=12, min_new_tokens=12, do_sample=False, pad_token_id=0)
    assert generated.shape == (2, 16)  # up to the last learned position

"""Loading never drops a checkpoint tensor or random-fills a model weight silently (loading_skipnorm.py), while
transformers' documented switches keep their meaning: `ignore_mismatched_sizes`, `output_loading_info`,
`_keys_to_ignore_on_load_unexpected` / `_keys_to_ignore_on_load_missing`. A config.json value the constructor would
refuse is refused at load, and NaN/inf tensors are named in a warning."""

from __future__ import annotations

import json
import math
import re
import time
import warnings

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM

from hf_skipnorm import (
    SkipNormConfig,
    SkipNormForCausalLM,
    SkipNormForMaskedLM,
    SkipNormForSequenceClassification,
    SkipNormForTokenClassification,
    SkipNormModel,
)
from hf_skipnorm.loading_skipnorm import CheckpointMismatchError, non_finite_tensors

TINY = dict(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            intermediate_size=48, max_position_embeddings=32)


def save(folder, cls=SkipNormForCausalLM, **fields):
    model = cls(SkipNormConfig(**{**TINY, **fields}))
    model.save_pretrained(folder)
    return model


def edit_config(folder, **changes):
    path = folder / "config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


def edit_weights(folder, change):
    path = folder / "model.safetensors"
    tensors = load_file(path)
    change(tensors)
    save_file(tensors, path, metadata={"format": "pt"})


def rename(old, new):
    def change(tensors):
        tensors[new] = tensors.pop(old)
    return change


# ------------------------------------------------------------------------------------------ nothing dropped
# (saved with, config.json edited to, weights edited by, the key the error must name)
UNEXPECTED = {
    "final-norm-off": (dict(), dict(final_norm=False), None, "model.final_norm.weight"),
    "learned-positions-off": (dict(position_embedding="learned"), dict(position_embedding="rope"), None,
                              "model.embed_positions.weight"),
    "token-types-off": (dict(type_vocab_size=2), dict(type_vocab_size=0), None, "model.embed_token_types.weight"),
    "embedding-norm-off": (dict(embedding_norm=True), dict(embedding_norm=False), None, "model.embedding_norm.weight"),
    "lm-head-bias-off": (dict(tie_word_embeddings=False, lm_head_bias=True), dict(lm_head_bias=False), None,
                         "lm_head.bias"),
    "stray-top-level": (dict(), dict(), lambda t: t.update({"foo.weight": torch.ones(3)}), "foo.weight"),
    "stray-in-a-block": (dict(), dict(), lambda t: t.update({"model.layers.0.foo.weight": torch.ones(3)}),
                         "model.layers.0.foo.weight"),
}


@pytest.mark.parametrize("saved_with, edited, weights, key", UNEXPECTED.values(), ids=UNEXPECTED)
def test_a_tensor_the_model_has_no_place_for_is_refused(tmp_path, saved_with, edited, weights, key):
    save(tmp_path, **saved_with)
    edit_config(tmp_path, **edited)
    if weights:
        edit_weights(tmp_path, weights)
    with pytest.raises(CheckpointMismatchError, match=rf"{key}: in the checkpoint but not built from the config"):
        AutoModelForCausalLM.from_pretrained(tmp_path)


# ------------------------------------------------------------------------------------------ nothing random-filled
# (class, saved with, config.json edited to, weights edited by, what the error must say)
MISSING = {
    "untied-lm-head-absent": (SkipNormForCausalLM, dict(tie_word_embeddings=False), dict(),
                              lambda t: t.pop("lm_head.weight"), r"lm_head\.weight: missing from a checkpoint saved by "
                              r"SkipNormForCausalLM, which has this head.*tie_word_embeddings=True"),
    "tied-loaded-untied": (SkipNormForCausalLM, dict(), dict(tie_word_embeddings=False), None,
                           r"lm_head\.weight: missing from a checkpoint saved by SkipNormForCausalLM, which"),
    "backbone-key-renamed": (SkipNormForCausalLM, dict(), dict(),
                             rename("model.layers.0.mlp.up_proj.weight", "model.layers.0.mlp.up_proj.weighs"),
                             r"model\.layers\.0\.mlp\.up_proj\.weight: built from the config but missing"),
    "head-key-renamed": (SkipNormForCausalLM, dict(tie_word_embeddings=False), dict(),
                         rename("lm_head.weight", "lm_head.weigh"), r"lm_head\.weigh: in the checkpoint but not built"),
    "score-renamed": (SkipNormForSequenceClassification, dict(num_labels=3), dict(),
                      rename("score.weight", "score.weigh"), r"score\.weight: missing from a checkpoint saved by"),
}


@pytest.mark.parametrize("cls, saved_with, edited, weights, message", MISSING.values(), ids=MISSING)
def test_a_weight_the_checkpoint_lacks_is_refused(tmp_path, cls, saved_with, edited, weights, message):
    save(tmp_path, cls, **saved_with)
    edit_config(tmp_path, **edited)
    if weights:
        edit_weights(tmp_path, weights)
    with pytest.raises(CheckpointMismatchError, match=message):
        cls.from_pretrained(tmp_path)


def test_a_renamed_head_key_in_an_unknown_checkpoint_is_still_refused(tmp_path):
    """Without `architectures` in config.json, a head is 'new' only if the checkpoint has none of its tensors."""
    save(tmp_path, SkipNormForSequenceClassification, num_labels=3)
    config = json.loads((tmp_path / "config.json").read_text())
    del config["architectures"]
    (tmp_path / "config.json").write_text(json.dumps(config))
    edit_weights(tmp_path, rename("score.weight", "score.weigh"))
    with pytest.raises(CheckpointMismatchError, match=r"score\.weigh: in the checkpoint but not built"):
        SkipNormForSequenceClassification.from_pretrained(tmp_path)


# (checkpoint class and fields, class loaded, keys it may initialize)
NEW_HEADS = {
    "seq-cls-from-causal": ((SkipNormForCausalLM, dict()), SkipNormForSequenceClassification, {"score.weight"}),
    "token-cls-from-base": ((SkipNormModel, dict()), SkipNormForTokenClassification, {"score.weight", "score.bias"}),
    "masked-lm-from-causal": ((SkipNormForCausalLM, dict()), SkipNormForMaskedLM,
                              {"lm_head.bias", "mlm_transform.dense.weight", "mlm_transform.dense.bias",
                               "mlm_transform.norm.weight"}),
    "untied-causal-from-base": ((SkipNormModel, dict(tie_word_embeddings=False)), SkipNormForCausalLM,
                                {"lm_head.weight"}),
}


@pytest.mark.parametrize("saved, cls, new_keys", NEW_HEADS.values(), ids=NEW_HEADS)
def test_a_new_task_head_on_a_backbone_checkpoint_is_initialized_with_a_warning(tmp_path, saved, cls, new_keys):
    backbone = save(tmp_path, saved[0], **saved[1])
    with pytest.warns(UserWarning, match=r"newly initialized.*score|newly initialized.*lm_head|newly initialized.*mlm"):
        model, info = cls.from_pretrained(tmp_path, output_loading_info=True)
    assert info["missing_keys"] == new_keys
    source = backbone.state_dict() if saved[0] is SkipNormModel else backbone.model.state_dict()
    for name, tensor in source.items():
        torch.testing.assert_close(model.model.state_dict()[name], tensor, atol=0, rtol=0)


def test_another_tasks_head_is_dropped_with_a_warning(tmp_path):
    save(tmp_path, tie_word_embeddings=False)  # lm_head.weight is stored
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _, info = SkipNormForSequenceClassification.from_pretrained(tmp_path, num_labels=2, output_loading_info=True)
    messages = [str(warning.message) for warning in caught]
    assert any("another task's head" in m and "lm_head.weight" in m for m in messages), messages
    assert any("newly initialized" in m and "score.weight" in m for m in messages), messages
    assert info["unexpected_keys"] == {"lm_head.weight"} and info["missing_keys"] == {"score.weight"}


def test_a_tied_checkpoint_with_distinct_head_values_keeps_both(tmp_path):
    """transformers itself refuses to tie two different stored tensors: nothing is dropped, so nothing to refuse."""
    saved = save(tmp_path, tie_word_embeddings=False)
    edit_config(tmp_path, tie_word_embeddings=True)
    model = SkipNormForCausalLM.from_pretrained(tmp_path)
    torch.testing.assert_close(model.lm_head.weight, saved.lm_head.weight, atol=0, rtol=0)
    torch.testing.assert_close(model.model.embed_tokens.weight, saved.model.embed_tokens.weight, atol=0, rtol=0)


# ------------------------------------------------------------------------------------------ transformers' switches
def test_shape_mismatch_is_a_runtime_error_and_a_value_error(tmp_path):
    save(tmp_path)
    edit_config(tmp_path, intermediate_size=40)
    for caught in (RuntimeError, ValueError):
        with pytest.raises(caught, match=r"model\.layers\.0\.mlp\.up_proj\.weight: shape \(48, 32\) in the checkpoint, "
                                         r"\(40, 32\) built from the config"):
            SkipNormForCausalLM.from_pretrained(tmp_path)


def test_ignore_mismatched_sizes_reinitializes_and_reports(tmp_path):
    saved = save(tmp_path)
    edit_config(tmp_path, intermediate_size=40)
    with pytest.warns(UserWarning, match=r"(?s)re-initialized.*up_proj\.weight: shape \(48, 32\)"):
        model, info = SkipNormForCausalLM.from_pretrained(tmp_path, ignore_mismatched_sizes=True,
                                                          output_loading_info=True)
    assert set(info) == {"missing_keys", "unexpected_keys", "mismatched_keys", "error_msgs"}
    mismatched = {key for key, *_ in info["mismatched_keys"]}
    assert mismatched == {f"model.layers.{i}.mlp.{p}_proj.weight" for i in range(2) for p in ("gate", "up", "down")}
    assert model.model.layers[0].mlp.up_proj.weight.shape == (40, 32)
    assert model.model.layers[0].mlp.up_proj.weight.std() > 0  # re-initialized, not left empty
    torch.testing.assert_close(model.model.layers[0].self_attn.q_proj.weight,
                               saved.model.layers[0].self_attn.q_proj.weight, atol=0, rtol=0)


def test_output_loading_info_of_a_clean_load(tmp_path):
    save(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a clean load warns about nothing
        _, info = SkipNormForCausalLM.from_pretrained(tmp_path, output_loading_info=True)
    assert info == {"missing_keys": set(), "unexpected_keys": set(), "mismatched_keys": set(), "error_msgs": []}


class DropsFoo(SkipNormForCausalLM):
    _keys_to_ignore_on_load_unexpected = [r"^foo\."]


class InitializesTheHead(SkipNormForCausalLM):
    _keys_to_ignore_on_load_missing = [r"^lm_head\.weight$"]


def test_transformers_ignore_lists_are_the_explicit_request(tmp_path):
    save(tmp_path, tie_word_embeddings=False)
    edit_weights(tmp_path, lambda t: (t.update({"foo.weight": torch.ones(3)}), t.pop("lm_head.weight")))
    with pytest.raises(CheckpointMismatchError, match=r"lm_head\.weight: missing") as refused:
        DropsFoo.from_pretrained(tmp_path)  # foo.weight is dropped on request, lm_head.weight is still missing
    assert "foo.weight" not in str(refused.value)
    with pytest.raises(CheckpointMismatchError, match="foo.weight"):
        InitializesTheHead.from_pretrained(tmp_path)  # foo.weight is still unexpected

    class Both(DropsFoo):
        _keys_to_ignore_on_load_missing = [r"^lm_head\.weight$"]

    model = Both.from_pretrained(tmp_path)
    assert model.lm_head.weight.std() > 0  # initialized on request


# ------------------------------------------------------------------------------------------ NaN / inf
def test_non_finite_tensors_are_named_in_a_warning(tmp_path):
    save(tmp_path)

    def poison(tensors):
        tensors["model.layers.1.mlp.down_proj.weight"][0, 0] = math.nan
        tensors["model.final_norm.weight"][3] = math.inf

    edit_weights(tmp_path, poison)
    with pytest.warns(UserWarning, match=r"NaN or inf values in: model\.final_norm\.weight, "
                                         r"model\.layers\.1\.mlp\.down_proj\.weight$"):
        SkipNormForCausalLM.from_pretrained(tmp_path)


def test_the_non_finite_scan_reads_each_tensor_once_without_copies():
    """Cheaper than one copy of the weights (a second read of the file costs at least that): min over 3 runs."""
    model = SkipNormForCausalLM(SkipNormConfig(**{**TINY, "vocab_size": 8192, "hidden_size": 256,
                                                  "intermediate_size": 1024, "num_attention_heads": 4}))
    tensors = list(model.state_dict().values())

    def best(run):
        times = []
        for _ in range(3):
            start = time.perf_counter()
            run()
            times.append(time.perf_counter() - start)
        return min(times)

    scan = best(lambda: non_finite_tensors(model, set()))
    copy = best(lambda: [tensor.clone() for tensor in tensors])
    assert scan < copy, (scan, copy)


# ------------------------------------------------------------------------------------------ config.json values
# (config.json change or from_pretrained keyword, the field the error names)
BAD_CONFIG = {
    "norm-eps-nan": (dict(norm_eps=math.nan), "norm_eps"),
    "rope-theta-negative": (dict(rope_parameters={"rope_type": "default", "rope_theta": -1.0}), "rope_theta"),
    "pad-token-negative": (dict(pad_token_id=-1), "pad_token_id"),
    "hidden-act-unknown": (dict(hidden_act="swiglu"), "hidden_act"),
    "kv-heads-do-not-divide": (dict(num_key_value_heads=3), "num_key_value_heads"),
}


@pytest.mark.parametrize("change, field", BAD_CONFIG.values(), ids=BAD_CONFIG)
def test_a_config_json_value_the_constructor_refuses_is_refused_at_load(tmp_path, change, field):
    save(tmp_path)
    edit_config(tmp_path, **change)
    with pytest.raises(ValueError, match=field):
        AutoModelForCausalLM.from_pretrained(tmp_path)


@pytest.mark.parametrize("change, field", BAD_CONFIG.values(), ids=BAD_CONFIG)
def test_a_keyword_override_the_constructor_refuses_is_refused_at_load(tmp_path, change, field):
    save(tmp_path)
    with pytest.raises(ValueError, match=field):
        SkipNormForCausalLM.from_pretrained(tmp_path, **change)


def test_a_keyword_override_that_is_valid_is_applied(tmp_path):
    save(tmp_path)
    model = SkipNormForCausalLM.from_pretrained(tmp_path, hidden_dropout=0.25)
    assert model.config.hidden_dropout == 0.25 and model.model.embedding_dropout.p == 0.25


# ------------------------------------------------------------------------------------------ float32-kept weights
@pytest.mark.parametrize("fields, names", [
    (dict(), set()),
    (dict(residual="hyper", hyper_dynamic=False), {"input_bias", "mixing_bias", "output_bias"}),
    (dict(residual="mhc"), {"pre_bias", "post_bias", "res_bias", "dynamic_proj", "pre_scale_bias", "post_scale_bias",
                            "res_scale_bias"}),
], ids=["pre-norm", "static-hyper", "mhc"])
def test_keep_in_fp32_lists_only_the_modules_the_model_has(fields, names):
    model = SkipNormForCausalLM(SkipNormConfig(**{**TINY, **fields}))
    expected = {f"{slot}_residual.{name}" for name in names for slot in ("attn", "mlp")}
    assert model._keep_in_fp32_modules_strict == expected
    parameters = [name for name, _ in model.named_parameters()]
    for pattern in model._keep_in_fp32_modules_strict:  # transformers' tests: a module path in the state dict
        assert any(re.search(rf"(?:^|\.){pattern}(?:\.|$)", name) for name in parameters), pattern
    default = torch.get_default_dtype()  # built under a half default dtype they are float32 (transformers' rule)
    torch.set_default_dtype(torch.float16)
    try:
        half = SkipNormForCausalLM(SkipNormConfig(**{**TINY, **fields}))
    finally:
        torch.set_default_dtype(default)
    for name, param in half.named_parameters():
        kept = any(re.search(rf"(?:^|\.){pattern}(?:\.|$)", name) for pattern in half._keep_in_fp32_modules_strict)
        assert param.dtype == (torch.float32 if kept else torch.float16), name

"""SkipNormConfig: defaults, resolved views, round trips, and a clear ValueError for every bad input."""

import json

import pytest
from transformers import AutoConfig

import hf_skipnorm  # noqa: F401  (registers "skipnorm")
from hf_skipnorm import SkipNormConfig
from hf_skipnorm import configuration_skipnorm as cfg
from hf_skipnorm import norms_skipnorm, residuals_skipnorm, modeling_skipnorm


def tiny(**overrides):
    fields = dict(vocab_size=100, hidden_size=32, num_hidden_layers=4, num_attention_heads=4)
    fields.update(overrides)
    return SkipNormConfig(**fields)


def test_registries_agree_with_config_vocabulary():
    assert set(norms_skipnorm.NORM_CLASSES) == set(cfg.NORM_TYPES)
    assert set(residuals_skipnorm.RESIDUAL_CLASSES) >= set(cfg.RESIDUALS) - set(getattr(cfg, "MULTI_STREAM_RESIDUALS", ()))
    assert set(cfg.FINAL_NORM_IMPLIED) == set(cfg.NORM_POSITIONS)
    assert set(modeling_skipnorm.POSITION_CLASSES) == set(cfg.POSITION_EMBEDDINGS)
    assert set(modeling_skipnorm.MLP_CLASSES) == set(cfg.MLP_TYPES)


def test_issue_snippet_through_auto_config():
    config = AutoConfig.for_model("skipnorm", norm_position="post", norm_type="layernorm", residual="add",
                                  vocab_size=1000, hidden_size=128, num_hidden_layers=6, num_attention_heads=4)
    assert isinstance(config, SkipNormConfig)
    assert config.head_dim == 32 and config.num_key_value_heads == 4
    assert config.use_final_norm is False  # post-LN ends every block with a norm


def test_derived_defaults():
    config = tiny()
    assert config.intermediate_size == 128  # 8/3 * 32 = 85 -> rounded up to a multiple of 64
    assert tiny(mlp_type="plain").intermediate_size == 128  # 4 * d
    assert config.rope_parameters["rope_type"] == "default"
    assert config.resolved_classifier_pooling == "last"
    assert tiny(is_causal=False).resolved_classifier_pooling == "mean"


def test_round_trip_to_dict_and_save_pretrained(tmp_path):
    config = tiny(norm_position=["post", "pre", "sandwich", "pre"], mlp_norm_position="output", norm_type="layernorm",
                  residual="scaled", residual_alpha=0.5, branch_multiplier=2.0, embedding_norm=True, final_norm=True,
                  branch_init="scaled_depth", position_embedding="learned", type_vocab_size=2, is_causal=False)
    again = SkipNormConfig.from_dict(config.to_dict())
    assert again.to_dict() == config.to_dict()
    config.save_pretrained(tmp_path)
    loaded = AutoConfig.from_pretrained(tmp_path)
    assert isinstance(loaded, SkipNormConfig)
    strip = lambda d: {k: v for k, v in d.items() if k != "_name_or_path"}  # noqa: E731  (records the folder)
    assert strip(loaded.to_dict()) == strip(config.to_dict())
    assert loaded.layer_norm_positions(0) == ("post", "output")


def test_overrides_and_lists_resolve_per_layer():
    config = tiny(norm_position=["post", "post", "pre", "pre"], attn_norm_position="sandwich")
    assert [config.layer_norm_positions(i) for i in range(4)] == [
        ("sandwich", "post"), ("sandwich", "post"), ("sandwich", "pre"), ("sandwich", "pre")]
    assert config.use_final_norm is True  # the last block's MLP is pre


def assert_clear_error(match_all, **overrides):
    with pytest.raises(ValueError) as info:
        tiny(**overrides)
    message = str(info.value)
    for fragment in match_all:
        assert fragment in message, (fragment, message)


@pytest.mark.parametrize("field,value", [("norm_position", "middle"), ("attn_norm_position", "Pre"),
                                         ("mlp_norm_position", "postln")])
def test_unknown_position_names_field_value_and_choices(field, value):
    assert_clear_error([field, repr(value), "pre", "post", "sandwich", "pre_post"], **{field: value})


@pytest.mark.parametrize("field,value,choice", [("norm_type", "batchnorm", "rmsnorm"), ("residual", "concat", "scaled"),
                                                ("position_embedding", "alibi", "rope"), ("mlp_type", "moe", "gated"),
                                                ("branch_init", "xavier", "scaled_depth"),
                                                ("classifier_pooling", "max", "mean")])
def test_unknown_choice_names_field_value_and_choices(field, value, choice):
    assert_clear_error([field, repr(value), choice], **{field: value})


def test_wrong_types_are_refused():
    assert_clear_error(["norm_position", "3"], norm_position=3)
    assert_clear_error(["norm_type"], norm_type=None)
    assert_clear_error(["embedding_norm", "'yes'"], embedding_norm="yes")
    assert_clear_error(["final_norm"], final_norm="on")
    assert_clear_error(["hidden_size"], hidden_size=0)
    assert_clear_error(["hidden_dropout"], hidden_dropout=1.5)
    assert_clear_error(["residual_alpha"], residual_alpha=float("nan"))


def test_per_layer_list_errors():
    assert_clear_error(["norm_position", "num_hidden_layers=4", "got 3"], norm_position=["pre", "post", "pre"])
    assert_clear_error(["norm_position[1]", "'bad'", "sandwich"], norm_position=["pre", "bad", "pre", "pre"])
    assert_clear_error(["mlp_norm_position", "got 2"], mlp_norm_position=["pre", "post"])


def test_nonsense_combinations_are_refused():
    assert_clear_error(["num_key_value_heads", "num_attention_heads=4"], num_key_value_heads=3)
    assert_clear_error(["head_dim"], hidden_size=30)  # 30 is not divisible by 4 heads
    assert_clear_error(["partial_rotary_factor"], partial_rotary_factor=0.1)  # 0.8 rotated dims: not even
    assert_clear_error(["partial_rotary_factor"], partial_rotary_factor=0.0)


def test_invalid_config_json_is_refused_on_load(tmp_path):
    tiny().save_pretrained(tmp_path)
    data = json.loads((tmp_path / "config.json").read_text())
    data["norm_position"] = "sideways"
    (tmp_path / "config.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match="norm_position='sideways'"):
        AutoConfig.from_pretrained(tmp_path)


@pytest.mark.parametrize("module", ["configuration_skipnorm", "config_fields_skipnorm"])
def test_configuration_modules_import_no_torch(module):
    """STYLE.md: config is data; the configuration modules must not need torch (transformers decides its own).
    The lazy lookups of ACT2FN and ROPE_INIT_FUNCTIONS sit inside functions, read only at validation time."""
    import ast
    import importlib

    path = importlib.import_module(f"hf_skipnorm.{module}").__file__
    tree = ast.parse(open(path).read())
    top = [node for node in tree.body if isinstance(node, (ast.Import, ast.ImportFrom))]
    imported = {alias.name.split(".")[0] for node in top if isinstance(node, ast.Import) for alias in node.names}
    imported |= {(node.module or "").split(".")[0] for node in top if isinstance(node, ast.ImportFrom)}
    every = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    every |= {(node.module or "").split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert "torch" not in every
    stdlib = {"__future__", "dataclasses", "difflib", "math", "typing", "warnings"}
    assert imported <= stdlib | {"transformers", "config_fields_skipnorm", ""}, imported


def test_every_declared_field_has_one_row_in_the_table():
    """Validation as data: a field without a row would be unchecked; a row without a field checks nothing."""
    import dataclasses

    from transformers import PreTrainedConfig

    ours = {f.name for f in dataclasses.fields(SkipNormConfig)} - {f.name for f in dataclasses.fields(PreTrainedConfig)}
    rows = [row.name for row in cfg.FIELDS]
    assert len(rows) == len(set(rows)), "a field has two rows"
    assert ours <= set(rows), sorted(ours - set(rows))
    assert set(rows) <= {f.name for f in dataclasses.fields(SkipNormConfig)} | {"output_attentions"}
    doc = SkipNormConfig.__doc__
    undocumented = [name for name in ours if name not in doc]
    assert not undocumented, undocumented

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


# ---------------------------------------------------------------------------------------------- issue 13: every check
NAN, INF = float("nan"), float("inf")

# (id, overrides, fragments the ValueError must contain). One row per check; the fragments name the field, the bad
# value and what is valid.
REFUSED = [
    # floats: finite, and finite where they scale activations or weights
    ("norm_eps-nan", dict(norm_eps=NAN), ["norm_eps=nan", "finite float"]),
    ("norm_eps-negative", dict(norm_eps=-1e-6), ["norm_eps=-1e-06", "[0, 1]"]),
    ("norm_eps-zero-rmsnorm", dict(norm_eps=0.0), ["norm_eps=0", "norm_type='rmsnorm'", "0/0", "dyt, derf, none"]),
    ("norm_eps-zero-layernorm", dict(norm_eps=0, norm_type="layernorm"), ["norm_eps=0", "norm_type='layernorm'"]),
    ("norm_eps-zero-scalenorm", dict(norm_eps=0.0, norm_type="scalenorm"), ["norm_eps=0", "scalenorm"]),
    ("embedding_multiplier-1e39", dict(embedding_multiplier=1e39), ["embedding_multiplier=1e+39", "65504"]),
    ("embedding_multiplier-inf", dict(embedding_multiplier=INF), ["embedding_multiplier=inf"]),
    ("attention_multiplier-1e39", dict(attention_multiplier=1e39), ["attention_multiplier=1e+39", "or None"]),
    ("attention_multiplier-zero", dict(attention_multiplier=0.0), ["attention_multiplier=0.0"]),
    ("residual_alpha-1e39", dict(residual="scaled", residual_alpha=1e39), ["residual_alpha=1e+39"]),
    ("residual_alpha-nan", dict(residual_alpha=NAN), ["residual_alpha=nan"]),
    ("branch_multiplier-inf", dict(residual="scaled", branch_multiplier=-INF), ["branch_multiplier=-inf"]),
    ("branch_init_gain-1e39", dict(branch_init_gain=1e39), ["branch_init_gain=1e+39"]),
    ("branch_init_gain-zero", dict(branch_init_gain=0.0), ["branch_init_gain=0.0"]),
    ("initializer_range-1e39", dict(initializer_range=1e39), ["initializer_range=1e+39", "[0, 1]"]),
    ("initializer_range-nan", dict(initializer_range=NAN), ["initializer_range=nan"]),
    ("final_logit_softcapping-tiny", dict(final_logit_softcapping=1e-30), ["final_logit_softcapping=1e-30", "NaN"]),
    ("attn_logit_softcapping-zero", dict(attn_logit_softcapping=0.0), ["attn_logit_softcapping=0.0"]),
    ("dyt_alpha_init-huge", dict(norm_type="dyt", dyt_alpha_init=1e39), ["dyt_alpha_init=1e+39"]),
    ("derf_alpha_init-inf", dict(norm_type="derf", derf_alpha_init=INF), ["derf_alpha_init=inf"]),
    ("layerscale_init-huge", dict(residual="layerscale", layerscale_init=1e30), ["layerscale_init=1e+30"]),
    ("admin_omegas-inf", dict(residual="admin", norm_position="post", admin_omegas=[1.0] * 7 + [INF]),
     ["admin_omegas", "8 finite floats"]),
    ("mix_ratio-nan", dict(mix_ratio=NAN), ["mix_ratio=nan"]),
    ("hidden_dropout-one", dict(hidden_dropout=1.0), ["hidden_dropout=1.0", "[0, 1)"]),
    # RoPE
    ("rope_theta-negative", dict(rope_parameters={"rope_type": "default", "rope_theta": -1.0}),
     ["rope_parameters['rope_theta']=-1.0", "finite float in (0"]),
    ("rope_theta-zero", dict(rope_parameters={"rope_type": "default", "rope_theta": 0}), ["rope_theta']=0"]),
    ("rope_theta-nan-kwarg", dict(rope_theta=NAN), ["rope_theta']=nan"]),
    ("rope_theta-missing", dict(rope_parameters={"rope_type": "linear", "factor": 2.0, "rope_theta": None}),
     ["rope_theta']=None"]),
    ("rope_parameters-list", dict(rope_parameters=[10000.0]), ["rope_parameters=[10000.0]", "a dict"]),
    ("rope_type-unknown", dict(rope_parameters={"rope_type": "ntk", "rope_theta": 1e4}),
     ["rope_parameters['rope_type']='ntk'", "default", "yarn"]),
    ("rope-factor-string", dict(rope_parameters={"rope_type": "linear", "rope_theta": 1e4, "factor": "2"}),
     ["rope_parameters['factor']='2'", "finite number"]),
    ("rope-two-thetas", dict(rope_parameters={"rope_type": "default", "rope_theta": 1e4}, rope_theta=5e5),
     ["rope_theta=500000.0", "two values"]),
    ("rope-two-rotary-factors", dict(rope_parameters={"rope_type": "default", "rope_theta": 1e4,
                                                      "partial_rotary_factor": 0.5}),
     ["partial_rotary_factor']=0.5", "partial_rotary_factor=1.0"]),
    ("rope-without-rope", dict(position_embedding="learned", rope_parameters={"rope_type": "linear",
                                                                            "rope_theta": 1e4, "factor": 2.0}),
     ["rope_parameters=", "position_embedding='learned'", "ignored"]),
    ("rotary-dims-zero", dict(partial_rotary_factor=0.1), ["partial_rotary_factor=0.1", "got 0"]),
    # activation
    ("hidden_act-swiglu", dict(hidden_act="swiglu"), ["hidden_act='swiglu'", "mlp_type='gated'",
                                                      "hidden_act='silu'", "gelu_new"]),
    ("hidden_act-geglu", dict(hidden_act="geglu"), ["hidden_act='geglu'", "hidden_act='gelu'"]),
    ("hidden_act-unknown", dict(hidden_act="swoosh"), ["hidden_act='swoosh'", "silu", "relu"]),
    ("hidden_act-none", dict(hidden_act=None), ["hidden_act=None"]),
    # token ids
    ("pad-negative", dict(pad_token_id=-1), ["pad_token_id=-1", "[0, vocab_size=100)"]),
    ("bos-vocab", dict(bos_token_id=100), ["bos_token_id=100", "vocab_size=100"]),
    ("eos-list-out", dict(eos_token_id=[1, 100]), ["eos_token_id=[1, 100]", "a list of such"]),
    ("eos-float", dict(eos_token_id=2.0), ["eos_token_id=2.0"]),
    ("pad-bool", dict(pad_token_id=True), ["pad_token_id=True"]),
    # absurd sizes fail fast
    ("layers-1e12", dict(num_hidden_layers=10**12), ["num_hidden_layers=1000000000000", "10,000"]),
    ("hidden-1e12", dict(hidden_size=10**12, num_attention_heads=4), ["hidden_size=1000000000000"]),
    ("vocab-1e12", dict(vocab_size=10**12), ["vocab_size=1000000000000"]),
    ("positions-1e12", dict(max_position_embeddings=10**12), ["max_position_embeddings=1000000000000"]),
    ("intermediate-1e12", dict(intermediate_size=10**12), ["intermediate_size=1000000000000"]),
    ("sinkhorn-1e7", dict(residual="mhc", sinkhorn_iters=10**7), ["sinkhorn_iters=10000000", "1,000", "20"]),
    ("streams-1e6", dict(residual="hyper", residual_streams=10**6), ["residual_streams=1000000", "64"]),
    ("type_vocab-1e9", dict(type_vocab_size=10**9), ["type_vocab_size=1000000000"]),
    # keys transformers reads that we do not implement
    ("sliding_window", dict(sliding_window=2), ["sliding_window=2", "sliding-window attention", "None"]),
    ("use_sliding_window", dict(use_sliding_window=True), ["use_sliding_window=True", "sliding-window"]),
    ("layer_types", dict(layer_types=["full_attention"] * 4), ["layer_types=", "per-layer attention types"]),
    ("attention_chunk_size", dict(attention_chunk_size=8), ["attention_chunk_size=8", "chunked attention"]),
    ("chunk_size_feed_forward", dict(chunk_size_feed_forward=4), ["chunk_size_feed_forward=4", "not implemented"]),
    # encoder-decoders exist since issue 16; what they refuse is theirs (tests/test_seq2seq.py has the rest)
    ("is_encoder_decoder", dict(is_encoder_decoder=True, type_vocab_size=2),
     ["type_vocab_size=2", "is_encoder_decoder=True", "valid: 0"]),
    ("generation-param", dict(temperature=0.7), ["temperature=0.7", "generation_config"]),
    ("output_attentions-sdpa", dict(output_attentions=True, attn_implementation="sdpa"),
     ["output_attentions=True", "attn_implementation='sdpa'", "eager"]),
    # string booleans and other wrong types of transformers' own fields
    ("use_cache-str", dict(use_cache="False"), ["use_cache='False'", "a string is not a boolean"]),
    ("tie-str", dict(tie_word_embeddings="false"), ["tie_word_embeddings='false'", "True or False"]),
    ("tie-int", dict(tie_word_embeddings=1), ["tie_word_embeddings=1"]),
    ("parallel_block-str", dict(parallel_block="True"), ["parallel_block='True'"]),
    ("output_attentions-str", dict(output_attentions="yes"), ["output_attentions='yes'"]),
    ("output_hidden_states-str", dict(output_hidden_states="no"), ["output_hidden_states='no'"]),
    ("return_dict-int", dict(return_dict=0), ["return_dict=0"]),
    ("return_dict-false", dict(return_dict=False), ["return_dict=False", "forward()"]),
    ("dtype-unknown", dict(dtype="float8"), ["dtype='float8'", "bfloat16"]),
    ("torch_dtype-unknown", dict(torch_dtype="half"), ["torch_dtype='half'", "float16"]),
    ("problem_type", dict(problem_type="ranking"), ["problem_type='ranking'", "regression"]),
    ("num_labels-str", dict(num_labels="3"), ["num_labels='3'"]),
    ("id2label-list", dict(id2label=["a", "b"]), ["id2label=['a', 'b']"]),
    ("architectures-str", dict(architectures="SkipNormForCausalLM"), ["architectures='SkipNormForCausalLM'"]),
    ("transformers_version-int", dict(transformers_version=5), ["transformers_version=5"]),
]


@pytest.mark.parametrize("overrides,fragments", [pytest.param(o, f, id=i) for i, o, f in REFUSED])
def test_every_check_refuses_with_field_value_and_choices(overrides, fragments):
    assert_clear_error(["SkipNormConfig."] + fragments, **overrides)


@pytest.mark.parametrize("overrides", [
    pytest.param(dict(num_hidden_layers=10**12), id="layers"),
    pytest.param(dict(num_hidden_layers=10**12, norm_position="mix", residual="admin"), id="layers-mix-admin"),
    pytest.param(dict(residual="mhc", sinkhorn_iters=10**7), id="sinkhorn"),
])
def test_absurd_sizes_fail_fast(overrides):
    import time

    start = time.perf_counter()
    with pytest.raises(ValueError):
        tiny(**overrides)
    assert time.perf_counter() - start < 1.0


@pytest.mark.parametrize("overrides", [
    pytest.param(dict(hidden_size=10, num_attention_heads=2, position_embedding="none"), id="nope-odd-head-dim"),
    pytest.param(dict(hidden_size=10, num_attention_heads=2, position_embedding="learned"), id="learned-odd-head-dim"),
    pytest.param(dict(output_attentions=True), id="output_attentions"),
    pytest.param(dict(norm_eps=0.0, norm_type="dyt"), id="dyt-eps-0"),
    pytest.param(dict(rope_theta=500000.0), id="rope_theta-kwarg"),
    pytest.param(dict(rope_scaling={"rope_type": "linear", "factor": 2.0}), id="rope_scaling-kwarg"),
    pytest.param(dict(eos_token_id=[1, 2], pad_token_id=0, bos_token_id=99), id="token-ids"),
    pytest.param(dict(dtype="bfloat16", num_labels=3), id="dtype-num_labels"),
])
def test_a_config_that_constructs_also_saves_and_loads(overrides, tmp_path):
    """transformers runs its own validators in save_pretrained (validate_rope, validate_output_attentions): they run
    at construction too, so a config that constructs also saves, and the saved file loads back equal."""
    config = tiny(**overrides)
    config.save_pretrained(tmp_path)
    loaded = SkipNormConfig.from_pretrained(tmp_path)
    strip = lambda d: {k: v for k, v in d.items() if k != "_name_or_path"}  # noqa: E731
    assert strip(loaded.to_dict()) == strip(config.to_dict())


def test_output_attentions_dispatches_eager_and_returns_the_weights(tmp_path):
    import torch

    from hf_skipnorm import SkipNormForCausalLM

    model = SkipNormForCausalLM(tiny(output_attentions=True))
    assert model.config._attn_implementation == "eager"
    out = model(torch.tensor([[1, 2, 3]]))
    assert len(out.attentions) == 4 and out.attentions[0].shape == (1, 4, 3, 3)
    model.save_pretrained(tmp_path)  # raised StrictDataclassClassValidationError before


def test_transformers_switches_on_the_config_work():
    """The values transformers reads from a config that are accepted do what transformers documents."""
    import torch

    from hf_skipnorm import SkipNormForCausalLM

    ids = torch.tensor([[1, 2, 3]])
    assert len(SkipNormForCausalLM(tiny(output_hidden_states=True))(ids).hidden_states) == 5  # embeddings + 4 blocks
    assert SkipNormForCausalLM(tiny(use_cache=False))(ids).past_key_values is None
    untied = SkipNormForCausalLM(tiny(tie_word_embeddings=False))
    assert untied.lm_head.weight.data_ptr() != untied.model.embed_tokens.weight.data_ptr()
    assert isinstance(SkipNormForCausalLM(tiny())(ids, return_dict=False), tuple)


def test_without_rope_rope_parameters_is_none_and_old_files_still_load():
    config = tiny(position_embedding="learned")
    assert config.rope_parameters is None
    old = tiny(position_embedding="learned", rope_parameters={"rope_type": "default", "rope_theta": 10000.0})
    assert old.rope_parameters is None  # the default every earlier config.json carried: read as "none"


def test_no_key_the_cache_reads_switches_it_to_sliding_windows():
    """DynamicCache(config=...) builds sliding-window layers from sliding_window / layer_types: those keys are refused,
    so the cache our model builds always has full layers."""
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer

    cache = DynamicCache(config=tiny())
    assert cache.is_sliding == [False] * 4 or all(type(layer) is DynamicLayer for layer in cache.layers)


def test_near_miss_kwarg_warns_with_the_suggestion():
    with pytest.warns(UserWarning, match="norm_postion='post'.*did you mean norm_position.*keeps 'pre'"):
        config = tiny(norm_postion="post")
    assert config.norm_position == "pre"
    with pytest.warns(UserWarning, match="did you mean residual_alpha"):
        tiny(residual_alfa=0.5)


def test_unrelated_unknown_kwargs_stay_silent():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        config = tiny(my_project_tag="run-7", num_labels=3, rope_theta=10000.0)
    assert config.my_project_tag == "run-7"


@pytest.mark.parametrize("text", ["[1, 2]", "3", '"config"', "null"])
def test_config_json_that_is_not_an_object_is_refused_naming_the_file(text, tmp_path):
    (tmp_path / "config.json").write_text(text)
    for load in (lambda: SkipNormConfig.from_pretrained(tmp_path),
                 lambda: SkipNormConfig.from_json_file(tmp_path / "config.json")):
        with pytest.raises(ValueError, match="config.json is not a valid SkipNormConfig file: it holds a JSON"):
            load()
    # AutoConfig reads the file with PreTrainedConfig's own reader before it knows our class: it fails, but with
    # transformers' words (a ValueError naming the folder for a list, a TypeError for a number or null).
    with pytest.raises((ValueError, TypeError)):
        AutoConfig.from_pretrained(tmp_path)


def test_every_field_of_pretrained_config_has_a_row():
    """Every value transformers itself reads from our config is validated: PreTrainedConfig's fields are rows too."""
    import dataclasses

    from transformers import PreTrainedConfig

    theirs = {f.name for f in dataclasses.fields(PreTrainedConfig)}
    assert theirs <= {row.name for row in cfg.FIELDS}, sorted(theirs - {row.name for row in cfg.FIELDS})


def test_each_rule_is_a_named_function_in_the_registry():
    from hf_skipnorm import config_fields_skipnorm as fields

    names = [rule.__name__ for rule in fields.RULES]
    assert len(names) == len(set(names)) and all(not name.startswith("_") for name in names)
    assert "norm_eps_positive_where_norms_divide" in names and "transformers_save_checks_pass" in names


# Rows whose key transformers' loader consumes itself before our constructor sees it (an argument of from_pretrained,
# not a config.json entry), so a config.json cannot carry them.
NOT_A_FILE_ENTRY = {"output_attentions-sdpa", "torch_dtype-unknown"}


@pytest.mark.parametrize("overrides,fragments", [pytest.param(o, f, id=i) for i, o, f in REFUSED
                                                 if i not in NOT_A_FILE_ENTRY])
def test_every_check_also_refuses_the_value_in_a_config_json(overrides, fragments, tmp_path):
    """A config.json is read through the same constructor: each refused value is refused on load too, by AutoConfig."""
    data = tiny().to_dict()
    data.pop("rope_parameters")  # as saved it repeats partial_rotary_factor and rope_theta: let the row set them
    data.update(overrides)
    (tmp_path / "config.json").write_text(json.dumps(data))
    with pytest.raises(ValueError) as info:
        AutoConfig.from_pretrained(tmp_path)
    for fragment in fragments:
        assert fragment in str(info.value), (fragment, str(info.value))

"""Tests of training/: data, tokenizer, packing, command-line options, presets, metrics, input checks, the
non-finite guard and the accelerate configs. In-process and fast; the runs that need fresh processes
(main job, SIGKILL + resume, two-process DDP, offline fine-tuning) are in test_training_runs.py."""

import dataclasses
import json
import math
import os
import re
import sys

import numpy as np
import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from transformers import HfArgumentParser, TrainerCallback, TrainingArguments  # noqa: E402

from hf_skipnorm import SkipNormConfig, SkipNormForCausalLM  # noqa: E402
from training import arguments, data  # noqa: E402
from training.reliable_trainer import NonFiniteTrainingError  # noqa: E402

# A model small enough that a few steps take well under a second on one core.
TINY = ["--hidden_size", "32", "--num_hidden_layers", "2", "--num_attention_heads", "2", "--block_size", "32",
        "--tokenizer_vocab_size", "400", "--per_device_train_batch_size", "4", "--eval_strategy", "no",
        "--sample_max_new_tokens", "0", "--disable_tqdm", "true", "--logging_steps", "1",
        "--validation_split_percentage", "2"]


@pytest.fixture(scope="module")
def corpus_tokenizer():
    return data.train_tokenizer(data.reference_corpus()["text"], vocab_size=400)


# ------------------------------------------------------------------------------------------- metrics
def _load_metric(name):
    import evaluate

    return evaluate.load(os.path.join(ROOT, "training", "metrics", name))


def test_accuracy_metric_matches_a_hand_count():
    rng = np.random.default_rng(0)
    predictions, references = rng.integers(0, 4, 200), rng.integers(0, 4, 200)
    weights = rng.random(200)
    correct = sum(1 for p, r in zip(predictions, references) if p == r)
    weighted = sum(w for p, r, w in zip(predictions, references, weights) if p == r) / sum(weights)
    accuracy = _load_metric("accuracy")
    assert accuracy.compute(predictions=predictions, references=references)["accuracy"] == pytest.approx(correct / 200)
    assert accuracy.compute(predictions=predictions, references=references, sample_weight=weights)[
        "accuracy"
    ] == pytest.approx(weighted, rel=1e-12)


def _hand_f1(predictions, references, label):
    tp = sum(1 for p, r in zip(predictions, references) if p == label and r == label)
    fp = sum(1 for p, r in zip(predictions, references) if p == label and r != label)
    fn = sum(1 for p, r in zip(predictions, references) if p != label and r == label)
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    return 2 * precision * recall / (precision + recall) if precision + recall else 0.0


def test_f1_metric_matches_precision_recall_harmonic_mean():
    rng = np.random.default_rng(1)
    predictions, references = rng.integers(0, 3, 150).tolist(), rng.integers(0, 3, 150).tolist()
    predictions[:5] = [3] * 5  # a class that only ever appears as a (wrong) prediction
    f1 = _load_metric("f1")
    labels = sorted(set(predictions) | set(references))
    per_class = [_hand_f1(predictions, references, c) for c in labels]
    support = [references.count(c) for c in labels]
    assert f1.compute(predictions=predictions, references=references, average=None)["f1"] == pytest.approx(per_class)
    assert f1.compute(predictions=predictions, references=references, average="macro")["f1"] == pytest.approx(
        sum(per_class) / len(per_class)
    )
    assert f1.compute(predictions=predictions, references=references, average="weighted")["f1"] == pytest.approx(
        sum(f * s for f, s in zip(per_class, support)) / sum(support)
    )
    # single-label micro F1 is the accuracy
    accuracy = sum(p == r for p, r in zip(predictions, references)) / len(references)
    assert f1.compute(predictions=predictions, references=references, average="micro")["f1"] == pytest.approx(accuracy)
    binary_p, binary_r = [int(p == 1) for p in predictions], [int(r == 1) for r in references]
    assert f1.compute(predictions=binary_p, references=binary_r)["f1"] == pytest.approx(_hand_f1(binary_p, binary_r, 1))
    with pytest.raises(ValueError, match="average='samples'"):
        f1.compute(predictions=predictions, references=references, average="samples")


# ------------------------------------------------------------------------------------- corpus and tokens
def test_reference_corpus_holds_each_paragraph_once_in_topic_order():
    from pydoc_data.topics import topics

    corpus = data.reference_corpus()
    expected, seen = [], set()
    for name in sorted(topics):
        for paragraph in [p.strip("\n") for p in re.split(r"\n[ \t]*\n", topics[name]) if p.strip()]:
            if paragraph not in seen:
                seen.add(paragraph)
                expected.append(paragraph)
    got = [p for text in corpus["text"] for p in text.split("\n\n")]
    assert got == expected
    assert len(set(corpus["topic"])) > 70


def test_split_is_seeded_and_disjoint():
    first = data.load_raw_datasets(seed=3)
    again = data.load_raw_datasets(seed=3)
    assert first["validation"]["text"] == again["validation"]["text"]
    assert not set(first["train"]["text"]) & set(first["validation"]["text"])
    assert len(first["train"]) + len(first["validation"]) == len(data.reference_corpus())


def test_tokenizer_round_trips_the_corpus_and_is_deterministic(corpus_tokenizer):
    text = data.reference_topics()["customization"][:3000]
    ids = corpus_tokenizer(text, add_special_tokens=False)["input_ids"]
    assert corpus_tokenizer.decode(ids) == text
    assert len(corpus_tokenizer) == 400
    assert {corpus_tokenizer.eos_token, corpus_tokenizer.pad_token, corpus_tokenizer.mask_token} == set(data.SPECIAL_TOKENS)
    again = data.train_tokenizer(data.reference_corpus()["text"], vocab_size=400)
    assert again.get_vocab() == corpus_tokenizer.get_vocab()


def test_packing_concatenates_documents_with_eos_and_cuts_whole_blocks(corpus_tokenizer):
    import datasets

    texts = ["first document " * 7, "", "second one, a little longer " * 5, "third"]
    raw = datasets.DatasetDict({"train": datasets.Dataset.from_dict({"text": texts}),
                                "validation": datasets.Dataset.from_dict({"text": texts[:1]})})
    packed = data.pack_for_language_modeling(raw, corpus_tokenizer, block_size=8)
    stream = []
    for text in texts:
        if text:
            stream += corpus_tokenizer(text, add_special_tokens=False)["input_ids"] + [corpus_tokenizer.eos_token_id]
    expected = [stream[i : i + 8] for i in range(0, len(stream) - len(stream) % 8, 8)]
    assert packed["train"]["input_ids"] == expected


# ------------------------------------------------------------------------------------- command line
def _parse(argv):
    parser = HfArgumentParser((arguments.ModelArguments, arguments.SkipNormArguments, arguments.DataArguments,
                               arguments.RunArguments, TrainingArguments))
    return parser.parse_args_into_dataclasses(args=["--output_dir", "unused"] + argv)


def test_every_config_field_is_an_option():
    options = {f.name for f in dataclasses.fields(arguments.SkipNormArguments)}
    for config_field in arguments.skipnorm_config_fields():
        assert arguments.cli_name(config_field.name) in options, config_field.name
    # the one clash with TrainingArguments is renamed, not dropped
    assert "config_use_cache" in options and "use_cache" not in options


def test_options_reach_the_config_including_json_lists():
    model_args, skipnorm_args, *_ = _parse(
        ["--num_hidden_layers", "2", "--norm_position", '["post", "pre"]', "--norm_type", "layernorm",
         "--final_norm", "true", "--config_use_cache", "false", "--head_dim", "null", "--residual_alpha", "0.5"]
    )
    values = arguments.assemble_config_values(model_args, skipnorm_args)
    config = SkipNormConfig(**values)
    assert config.norm_position == ["post", "pre"]
    assert (config.norm_type, config.final_norm, config.use_cache, config.residual_alpha) == ("layernorm", True, False, 0.5)
    assert config.hidden_size == arguments.TRAIN_MODEL_DEFAULTS["hidden_size"]  # untouched fields keep the defaults


def test_a_field_added_to_the_config_later_becomes_an_option():
    class ExtendedConfig(SkipNormConfig):
        model_type = "skipnorm-extended-test"
        new_knob: float = 0.25

    assert "new_knob" in [f.name for f in arguments.skipnorm_config_fields(ExtendedConfig)]
    generated = arguments.build_skipnorm_arguments(ExtendedConfig)
    (parsed,) = HfArgumentParser(generated).parse_args_into_dataclasses(args=["--new_knob", "0.75"])
    assert arguments.cli_config_overrides(parsed, ExtendedConfig) == {"new_knob": 0.75}


def test_presets_build_configs_and_precedence_is_preset_file_flag(tmp_path):
    for name in arguments.available_presets():
        preset = arguments.preset_values(name)
        source = json.load(open(os.path.join(arguments.PRESETS_DIR, f"{name}.json")))["_source"]
        assert source, name
        SkipNormConfig(**{**arguments.TRAIN_MODEL_DEFAULTS, **preset})
    config_file = tmp_path / "cell.json"
    config_file.write_text(json.dumps({"norm_type": "rmsnorm", "norm_eps": 1e-3}))
    model_args, skipnorm_args, *_ = _parse(
        ["--preset", "gpt2-style", "--config_file", str(config_file), "--norm_eps", "0.01"]
    )
    values = arguments.assemble_config_values(model_args, skipnorm_args)
    assert values["position_embedding"] == "learned"  # from the preset
    assert values["norm_type"] == "rmsnorm"  # the file overrides the preset's layernorm
    assert values["norm_eps"] == 0.01  # the flag overrides the file
    with pytest.raises(ValueError, match="--preset 'nope' is not valid; valid choices: bert-style"):
        arguments.preset_values("nope")


# ------------------------------------------------------------------------------------- bad inputs
def _run_train(argv, callbacks=()):
    from training import train

    return train.main(argv, callbacks=callbacks)


@pytest.mark.parametrize(
    "case, message",
    [
        ("missing_file", r"--train_file: file '.*missing.txt' does not exist"),
        ("empty_file", r"the (train|validation) split is empty"),
        ("short_text", r"the train split has \d+ tokens, fewer than one block \(block_size=32\)"),
        ("vocab_too_small", r"the tokenizer has 400 tokens but the model's vocab_size is 300"),
        ("no_mask_token", r"is_causal=False trains a masked LM, which needs a tokenizer with a mask token"),
        ("streaming_without_max_steps", r"--streaming needs --max_steps > 0"),
        ("bad_field_value", r"SkipNormConfig.norm_position='middle' is not valid"),
    ],
)
def test_bad_inputs_fail_before_training(case, message, tmp_path, corpus_tokenizer):
    out = tmp_path / "out"
    argv = ["--output_dir", str(out), *TINY, "--max_steps", "-1" if case == "streaming_without_max_steps" else "2"]
    if case == "missing_file":
        argv += ["--train_file", str(tmp_path / "missing.txt")]
    elif case == "empty_file":
        (tmp_path / "empty.txt").write_text("")
        argv += ["--train_file", str(tmp_path / "empty.txt")]
    elif case == "short_text":
        (tmp_path / "short.txt").write_text("a few words\n" * 3)
        (tmp_path / "short_val.txt").write_text("a few words\n" * 3)
        argv += ["--train_file", str(tmp_path / "short.txt"), "--validation_file", str(tmp_path / "short_val.txt")]
    elif case == "vocab_too_small":
        argv += ["--vocab_size", "300"]
    elif case == "no_mask_token":
        from transformers import PreTrainedTokenizerFast

        without_mask = PreTrainedTokenizerFast(tokenizer_object=corpus_tokenizer.backend_tokenizer,
                                               eos_token=data.EOS_TOKEN, pad_token=data.PAD_TOKEN)
        without_mask.save_pretrained(tmp_path / "tok")
        argv += ["--tokenizer_name", str(tmp_path / "tok"), "--is_causal", "false"]
    elif case == "streaming_without_max_steps":
        argv += ["--streaming", "true"]
    elif case == "bad_field_value":
        argv += ["--norm_position", "middle"]
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        _run_train(argv)
    assert not out.exists() or not any(out.iterdir()), "nothing may be written before the inputs are checked"


# ------------------------------------------------------------------------------------- non-finite guard
class PoisonGradient(TrainerCallback):
    """From optimizer step `at` (1-based) on, multiply one parameter's gradient by NaN."""

    def __init__(self, parameter: str, at: int, once: bool = False):
        self.parameter, self.at, self.once, self.handle = parameter, at, once, None
        self.before = self.after = None

    def on_step_begin(self, args, state, control, model=None, **kwargs):
        if state.global_step + 1 == self.at:
            param = dict(model.named_parameters())[self.parameter]
            self.handle = param.register_hook(lambda grad: grad * float("nan"))
            self.before = {k: v.detach().clone() for k, v in model.state_dict().items()}

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step == self.at:
            self.after = {k: v.detach().clone() for k, v in model.state_dict().items()}
            if self.once:
                self.handle.remove()


def test_non_finite_gradient_stops_naming_step_and_layer_and_keeps_the_last_checkpoint(tmp_path):
    out = tmp_path / "run"
    poison = PoisonGradient("model.layers.1.mlp.down_proj.weight", at=3)
    with pytest.raises(NonFiniteTrainingError) as error:
        _run_train(["--output_dir", str(out), *TINY, "--max_steps", "6", "--save_steps", "2"], callbacks=[poison])
    text = str(error.value)
    assert "optimizer step 3" in text
    assert "layer 1 parameter model.layers.1.mlp.down_proj.weight" in text
    assert "checkpoint-2" in text and "--on_nonfinite skip" in text
    assert sorted(p.name for p in out.iterdir() if p.name.startswith("checkpoint")) == ["checkpoint-2"]
    assert not (out / ".staging").exists()
    from safetensors.torch import load_file

    weights = load_file(out / "checkpoint-2" / "model.safetensors")
    assert all(torch.isfinite(t).all() for t in weights.values())


def test_non_finite_loss_is_reported_as_the_loss():
    from training.reliable_trainer import SkipNormTrainer

    model = SkipNormForCausalLM(SkipNormConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2))
    with torch.no_grad():
        model.model.layers[0].self_attn.q_proj.weight[0, 0] = float("inf")
    args = TrainingArguments(output_dir="unused-never-written", report_to="none", max_steps=1)
    trainer = SkipNormTrainer(model=model, args=args, train_dataset=[{"input_ids": [1, 2, 3], "labels": [1, 2, 3]}])
    ids = torch.tensor([[1, 2, 3, 4]])
    loss = model(input_ids=ids, labels=ids).loss
    trainer._step_losses = [loss.detach()]
    loss.backward()
    with pytest.raises(NonFiniteTrainingError, match=r"optimizer step 1 .*: loss nan"):
        trainer._guard_gradients(model)


def test_skip_mode_drops_the_bad_update_and_finishes(tmp_path):
    poison = PoisonGradient("model.layers.0.self_attn.v_proj.weight", at=2, once=True)
    metrics = _run_train(["--output_dir", str(tmp_path / "run"), *TINY, "--max_steps", "4", "--save_steps", "4",
                          "--on_nonfinite", "skip"], callbacks=[poison])
    assert metrics["nonfinite_skipped_steps"] == 1
    for name, before in poison.before.items():  # the skipped step changed no weight
        assert torch.equal(before, poison.after[name]), name
    assert math.isfinite(metrics["eval_loss"])


# ------------------------------------------------------------------------------------- masked LM
def test_masked_lm_run_saves_a_masked_lm_that_fills_a_mask(tmp_path):
    from transformers import AutoConfig

    from training.sample import generate_sample

    out = tmp_path / "mlm"
    metrics = _run_train(["--output_dir", str(out), *TINY, "--max_steps", "3", "--is_causal", "false"])
    assert math.isfinite(metrics["eval_loss"])
    config = AutoConfig.from_pretrained(out)
    assert config.is_causal is False and config.architectures == ["SkipNormForMaskedLM"]
    assert "top-5 fillers" in generate_sample(str(out), "The assert statement is a way to check")


# ------------------------------------------------------------------------------------- accelerate configs
ACCELERATE_DIR = os.path.join(ROOT, "training", "accelerate")


def test_every_accelerate_config_loads_and_says_when_to_use_it():
    from accelerate.commands.config.config_args import load_config_from_file

    expected = {"cpu_multi_process.yaml": ("MULTI_GPU", 2), "single_gpu.yaml": ("NO", 1),
                "multi_gpu_ddp.yaml": ("MULTI_GPU", 2), "fsdp_full_shard.yaml": ("FSDP", 2),
                "multi_node.yaml": ("MULTI_GPU", 16)}
    assert sorted(os.listdir(ACCELERATE_DIR)) == sorted(expected)
    for name, (kind, processes) in expected.items():
        path = os.path.join(ACCELERATE_DIR, name)
        config = load_config_from_file(path)
        assert (str(config.distributed_type).split(".")[-1], config.num_processes) == (kind, processes), name
        assert "When to use" in open(path).read() or "when to use" in open(path).read().lower(), name


def test_fsdp_config_resolves_to_full_shard_of_our_block_with_sharded_state_dict(monkeypatch):
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils import FullyShardedDataParallelPlugin
    from accelerate.utils.dataclasses import get_module_class_from_name
    from accelerate.utils.launch import prepare_multi_gpu_env

    from hf_skipnorm import SkipNormBlock

    parsed = launch_command_parser().parse_args(
        ["--config_file", os.path.join(ACCELERATE_DIR, "fsdp_full_shard.yaml"), "training/train.py"]
    )
    launch_args, _, _ = _validate_launch_command(parsed)
    env = prepare_multi_gpu_env(launch_args)  # what `accelerate launch` exports to every rank
    for key, value in env.items():
        if key.startswith(("FSDP_", "ACCELERATE_USE_FSDP")):
            monkeypatch.setenv(key, value)
    plugin = FullyShardedDataParallelPlugin()
    assert plugin.fsdp_version == 2 and plugin.reshard_after_forward is True  # FULL_SHARD in FSDP2 terms
    assert "SHARDED_STATE_DICT" in str(plugin.state_dict_type)
    assert plugin.transformer_cls_names_to_wrap is None  # taken from the model's _no_split_modules
    from accelerate.utils.fsdp_utils import fsdp2_prepare_auto_wrap_policy

    from hf_skipnorm.modeling_skipnorm import SkipNormParallelBlock

    tiny = dict(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2)
    for extra, block_class in (({}, SkipNormBlock), ({"parallel_block": True}, SkipNormParallelBlock)):
        model = SkipNormForCausalLM(SkipNormConfig(**tiny, **extra))
        assert model._no_split_modules == {block_class.__name__}
        assert get_module_class_from_name(model, block_class.__name__) is block_class
        policy = fsdp2_prepare_auto_wrap_policy(FullyShardedDataParallelPlugin(), model)
        wrapped = [name for name, module in model.named_modules() if policy(module)]
        assert wrapped == ["model.layers.0", "model.layers.1"], (extra, wrapped)


# ------------------------------------------------------------------------------------- local files, streaming
def test_streaming_a_local_jsonl_file_with_its_own_text_column(tmp_path):
    topics = data.reference_topics()
    rows = [{"id": i, "body": text} for i, text in enumerate(list(topics.values())[:12])]
    (tmp_path / "train.jsonl").write_text("\n".join(json.dumps(row) for row in rows))
    metrics = _run_train(["--output_dir", str(tmp_path / "run"), *TINY, "--max_steps", "2",
                          "--train_file", str(tmp_path / "train.jsonl"), "--text_column", "body",
                          "--streaming", "true", "--streaming_validation_rows", "2"])
    assert math.isfinite(metrics["eval_loss"]) and metrics["eval_perplexity"] == pytest.approx(math.exp(metrics["eval_loss"]))

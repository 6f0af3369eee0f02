"""Continue training the way run_clm.py users expect (issue 14): train.py --model_name_or_path from a train.py
folder, a checkpoint-N, a masked LM, a converted transformers model or a Hub id in the local cache; the checkpoint
fixes the cell; --config_overrides; the generation command; a --help that fits on a few screens.

Tiny models (d=32, L=2, block 16), in-process. "Continued" is proven with --learning_rate 0: the saved weights
must equal the source's bitwise, so they were loaded, not initialized."""

import json
import os
import shutil
import sys

import pytest
import torch
from safetensors.torch import load_file

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from hf_skipnorm import SkipNormConfig, SkipNormForCausalLM, SkipNormForMaskedLM  # noqa: E402
from hf_skipnorm import configuration_skipnorm as cells  # noqa: E402
from training import arguments, data, sample, train  # noqa: E402

TINY_CELL = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    folder = tmp_path_factory.mktemp("corpus")
    lines = [line for line in data.reference_topics()["assert"].splitlines() if line.strip()]
    lines += [line for line in data.reference_topics()["customization"][:6000].splitlines() if line.strip()]
    (folder / "train.txt").write_text("\n".join(lines[:120]))
    tokenizer = data.train_tokenizer(lines[:120], vocab_size=300)
    tokenizer.save_pretrained(folder / "tokenizer")
    return folder, tokenizer


def run_args(corpus, out, *extra):
    folder, _ = corpus
    return ["--output_dir", str(out), "--block_size", "16", "--train_file", str(folder / "train.txt"),
            "--validation_split_percentage", "10", "--per_device_train_batch_size", "4", "--eval_strategy", "no",
            "--sample_max_new_tokens", "0", "--disable_tqdm", "true", "--report_to", "none", *extra]


@pytest.fixture(scope="module")
def source_run(corpus, tmp_path_factory):
    """A train.py run of 2 steps (checkpoint-2 and the final folder)."""
    out = tmp_path_factory.mktemp("source") / "run"
    train.main(run_args(corpus, out, "--hidden_size", "32", "--num_hidden_layers", "2", "--num_attention_heads", "2",
                        "--tokenizer_name", str(corpus[0] / "tokenizer"), "--max_steps", "2", "--save_steps", "2"))
    return out


def assert_same_weights(folder_a, folder_b):
    a, b = load_file(os.path.join(folder_a, "model.safetensors")), load_file(os.path.join(folder_b, "model.safetensors"))
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


def test_continue_from_a_train_py_folder_and_from_its_checkpoint(corpus, source_run, tmp_path, capsys):
    out = tmp_path / "more"
    train.main(run_args(corpus, out, "--model_name_or_path", str(source_run), "--learning_rate", "0", "--max_steps", "2",
                        "--hidden_dropout", "0.1",  # a runtime field
                        "--norm_position", "pre", "--residual_alpha", "null"))  # fields that agree (null: resolved to 1.0)
    assert f"continuing from {source_run}" in capsys.readouterr().out
    assert_same_weights(source_run, out)
    config = json.loads((out / "config.json").read_text())
    assert config["hidden_dropout"] == 0.1 and config["use_cache"] is True
    assert (out / "tokenizer.json").is_file()  # the source's tokenizer travels on
    assert f"Continued from `{source_run}`" in (out / "README.md").read_text()

    from_checkpoint = tmp_path / "from_checkpoint"
    train.main(run_args(corpus, from_checkpoint, "--model_name_or_path", str(source_run / "checkpoint-2"),
                        "--max_steps", "1", "--dtype", "bfloat16"))
    weights = load_file(from_checkpoint / "model.safetensors")
    assert all(t.dtype == torch.bfloat16 for t in weights.values())


@pytest.mark.parametrize(
    "extra, named",
    [
        (["--norm_position", "post"], "norm_position='post' (checkpoint: 'pre')"),
        (["--residual", "scaled"], "residual='scaled' (checkpoint: 'add')"),
        (["--config_overrides", "hidden_size=64,norm_type=layernorm"], "hidden_size=64 (checkpoint: 32)"),
        (["--preset", "gpt2-style"], "position_embedding='learned' (checkpoint: 'rope')"),
    ],
    ids=["norm_position", "residual", "config_overrides", "preset"],
)
def test_a_cell_field_that_contradicts_the_checkpoint_is_refused_naming_the_difference(
    corpus, source_run, tmp_path, monkeypatch, extra, named
):
    monkeypatch.setattr(data, "load_raw_datasets", lambda *a, **k: pytest.fail("data read before the check"))
    with pytest.raises(ValueError, match="contradicts the checkpoint's cell") as error:
        train.main(run_args(corpus, tmp_path / "out", "--model_name_or_path", str(source_run), "--max_steps", "1", *extra))
    assert named in str(error.value)


def test_continue_a_masked_lm(corpus, tmp_path):
    _, tokenizer = corpus
    source = tmp_path / "mlm"
    config = SkipNormConfig(vocab_size=len(tokenizer), is_causal=False, pad_token_id=tokenizer.pad_token_id,
                            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, **TINY_CELL)
    SkipNormForMaskedLM(config).save_pretrained(source)
    tokenizer.save_pretrained(source)
    out = tmp_path / "out"
    train.main(run_args(corpus, out, "--model_name_or_path", str(source), "--learning_rate", "0", "--max_steps", "1"))
    assert json.loads((out / "config.json").read_text())["architectures"] == ["SkipNormForMaskedLM"]
    assert_same_weights(source, out)


def test_convert_a_transformers_model_then_continue_training_it(corpus, tmp_path):
    import transformers as T

    from hf_skipnorm import convert

    _, tokenizer = corpus
    llama = tmp_path / "llama"
    T.LlamaForCausalLM(T.LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                     num_attention_heads=2, max_position_embeddings=64)).save_pretrained(llama)
    tokenizer.save_pretrained(llama)
    with pytest.raises(ValueError, match=r"holds a 'llama' model, not 'skipnorm': convert it first \(`python -m hf_skipnorm.convert"):
        train.main(run_args(corpus, tmp_path / "direct", "--model_name_or_path", str(llama), "--max_steps", "1"))
    assert convert.main([str(llama), str(tmp_path / "converted")]) == 0
    out = tmp_path / "out"
    train.main(run_args(corpus, out, "--model_name_or_path", str(tmp_path / "converted"), "--learning_rate", "0",
                        "--max_steps", "1"))
    assert_same_weights(tmp_path / "converted", out)


def test_a_hub_id_resolves_through_the_local_cache_only(corpus, source_run, tmp_path):
    # The huggingface_hub cache layout: models--{org}--{name}/refs/main names the snapshot folder with the files.
    commit = "1" * 40
    repo = tmp_path / "hub" / "models--tiny-org--tiny-skipnorm"
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"):
        shutil.copy(source_run / name, snapshot / name)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    assert os.environ.get("HF_HUB_OFFLINE") == "1"  # set by the suite: nothing may be downloaded
    out = tmp_path / "out"
    train.main(run_args(corpus, out, "--model_name_or_path", "tiny-org/tiny-skipnorm", "--cache_dir", str(tmp_path / "hub"),
                        "--model_revision", "main", "--learning_rate", "0", "--max_steps", "1"))
    assert_same_weights(source_run, out)
    with pytest.raises(FileNotFoundError, match=r"neither a folder nor a Hub id in the local Hugging Face cache .* never downloads"):
        train.main(run_args(corpus, tmp_path / "out2", "--model_name_or_path", "tiny-org/not-cached",
                            "--cache_dir", str(tmp_path / "hub"), "--max_steps", "1"))


def test_config_name_gives_a_new_cell_and_max_samples_limit_the_blocks(corpus, source_run, tmp_path):
    out = tmp_path / "scratch"
    train.main(run_args(corpus, out, "--config_name", str(source_run), "--tokenizer_name", str(corpus[0] / "tokenizer"),
                        "--max_steps", "-1", "--num_train_epochs", "1", "--max_train_samples", "8",
                        "--max_eval_samples", "2"))
    source, new = json.loads((source_run / "config.json").read_text()), json.loads((out / "config.json").read_text())
    for name in ("hidden_size", "num_hidden_layers", "norm_position", "vocab_size"):
        assert new[name] == source[name], name
    assert json.loads((out / "trainer_state.json").read_text())["global_step"] == 2  # 8 blocks / batch 4, one epoch
    with pytest.raises(AssertionError):
        assert_same_weights(source_run, out)  # a new model from the config, not the source's weights


def test_config_overrides_use_run_clm_syntax_typed_by_the_field():
    overrides = arguments.parse_config_overrides(
        'hidden_size=64,norm_type=layernorm,final_norm=true,norm_eps=1e-3,norm_position=["post","pre"],head_dim=null'
    )
    assert overrides == {"hidden_size": 64, "norm_type": "layernorm", "final_norm": True, "norm_eps": 1e-3,
                         "norm_position": ["post", "pre"], "head_dim": None}
    with pytest.raises(ValueError, match=r"'norm_postion' is not a SkipNormConfig field; did you mean 'norm_position'"):
        arguments.parse_config_overrides("norm_postion=post")
    with pytest.raises(ValueError, match=r"hidden_size='wide' is not a valid int"):
        arguments.parse_config_overrides("hidden_size=wide")
    with pytest.raises(ValueError, match=r"'hidden_size' is not key=value"):
        arguments.parse_config_overrides("hidden_size")


def test_help_is_grouped_short_and_lists_the_valid_choices(capsys):
    with pytest.raises(SystemExit):
        train.parse_args(["--help"])
    text = capsys.readouterr().out
    # 946 lines before the grouping; now one line per cell field (a few wrap), so a new config field adds one
    assert len(text.splitlines()) < 160 + len(arguments.skipnorm_config_fields())
    for group in ("model source (run_clm.py-style):", "model cell, one option per SkipNormConfig field", "data:", "run:",
                  "Trainer options (TrainingArguments; the common ones)"):
        assert group in text, group
    flat = " ".join(text.split())
    for choices in (cells.NORM_POSITIONS, cells.NORM_TYPES, cells.RESIDUALS):  # read from the config's tuples
        assert " | ".join(choices) in flat
    assert "--adam_beta2" in text and "--help_all" in text  # a hidden Trainer option is still named
    assert "  python training/train.py --output_dir runs/post --norm_position post" in text  # examples keep their lines
    with pytest.raises(SystemExit):
        train.parse_args(["--help_all"])
    full = capsys.readouterr().out
    assert len(full.splitlines()) > len(text.splitlines()) + 150 and "\n  --adam_beta2 V " in full


# ------------------------------------------------------------------------------------- generation command
@pytest.fixture(scope="module")
def random_causal(corpus, tmp_path_factory):
    """A tiny causal model with random (non-init) weights, so greedy decoding is not a constant."""
    _, tokenizer = corpus
    folder = tmp_path_factory.mktemp("random_causal")
    torch.manual_seed(3)
    config = SkipNormConfig(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
                            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, **TINY_CELL)
    model = SkipNormForCausalLM(config)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.normal_(0, 0.5)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder, tokenizer


def test_generation_is_greedy_by_default_and_matches_a_hand_argmax_loop(random_causal, capsys):
    folder, tokenizer = random_causal
    prompt = "The assert statement"
    model = SkipNormForCausalLM.from_pretrained(folder).eval()
    ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        for _ in range(6):  # greedy decoding by hand: the full forward each time, no cache
            ids = torch.cat([ids, model(ids).logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    expected = tokenizer.decode(ids[0], skip_special_tokens=True)
    sample.main([str(folder), prompt, "--max_new_tokens", "6"])
    assert capsys.readouterr().out.splitlines()[1:] == expected.splitlines()
    assert sample.generate_sample(str(folder), prompt, 6, num_beams=1) == expected

    sampled = [sample.generate_sample(str(folder), prompt, 6, seed=5, do_sample=True, top_k=20, top_p=0.9, temperature=1.5)
               for _ in range(2)]
    assert sampled[0] == sampled[1]  # seeded
    beams = sample.generate_sample(str(folder), prompt, 6, num_beams=3)
    assert beams.startswith(prompt)


@pytest.mark.parametrize(
    "options, message",
    [
        (["--temperature", "0"], "--temperature 0.0 must be a finite number > 0"),
        (["--do_sample", "--top_p", "1.5"], "--top_p 1.5 must be in (0, 1]"),
        (["--num_beams", "0"], "--num_beams 0 must be at least 1"),
        (["--top_k", "5"], "add --do_sample"),
        (["--max_new_tokens", "0"], "--max_new_tokens 0 must be at least 1"),
    ],
)
def test_generation_options_are_checked(random_causal, capsys, options, message):
    with pytest.raises(SystemExit):
        sample.main([str(random_causal[0]), "hello", *options])
    assert message in capsys.readouterr().err

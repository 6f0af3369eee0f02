"""The journey after README command 1, walked as a user walks it, at tiny size (issue 14).

train.py -> continue training from its folder -> finetune.py -> generate from the command line -> load every saved
folder (the final ones and every checkpoint-N) with `trust_remote_code=True` in a Python that cannot import
hf_skipnorm, tokenizer included and without a custom-code prompt -> build the card and check its facts against
the run's own files -> publish.py --dry-run. Each command runs in a fresh process, as a user types it.

Also here: auto_map entries that point outside the folder are refused before anything is imported, and
`python -m hf_skipnorm.convert` runs without runpy's RuntimeWarning.
"""

import dataclasses
import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from hf_skipnorm import SkipNormConfig, SkipNormForCausalLM  # noqa: E402
from hf_skipnorm.hub import check_auto_map, export_for_hub  # noqa: E402
from training.arguments import ModelArguments  # noqa: E402

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
       "PYTHONPATH": str(REPO)}
TINY_MODEL = ["--num_hidden_layers", "2", "--hidden_size", "32", "--num_attention_heads", "4",
              "--intermediate_size", "64"]
SHORT_RUN = ["--max_steps", "4", "--eval_steps", "2", "--save_steps", "2", "--logging_steps", "1",
             "--per_device_train_batch_size", "4", "--per_device_eval_batch_size", "16", "--block_size", "32",
             "--sample_max_new_tokens", "0"]  # the first run overrides it: see the fixture
# Continued training (`train.py --model_name_or_path`) is helper i13-training's part of issue 14; the step runs
# where that option exists and is reported as skipped, by name, where it does not.
CAN_CONTINUE = "model_name_or_path" in {f.name for f in dataclasses.fields(ModelArguments)}


def run(*command, timeout=300, **kwargs):
    result = subprocess.run([sys.executable, *map(str, command)], cwd=REPO, env=ENV, capture_output=True, text=True,
                            timeout=timeout, stdin=subprocess.DEVNULL, **kwargs)
    assert result.returncode == 0, f"{' '.join(map(str, command))} failed:\n{result.stderr[-4000:]}"
    return result


@pytest.fixture(scope="module")
def journey(tmp_path_factory):
    root = tmp_path_factory.mktemp("journey")
    folders = {"main": root / "main"}
    # train.py ends by running `python training/sample.py DIR --prompt ... --max_new_tokens N` in a fresh process:
    # the command-line generation step, kept inside this run to save a process start.
    folders["train_stdout"] = run("training/train.py", "--output_dir", folders["main"], "--tokenizer_vocab_size",
                                  "320", *TINY_MODEL, *SHORT_RUN, "--sample_max_new_tokens", "5",
                                  "--sample_prompt", "The").stdout
    if CAN_CONTINUE:
        folders["continued"] = root / "continued"
        run("training/train.py", "--output_dir", folders["continued"], "--model_name_or_path", folders["main"],
            *SHORT_RUN)
    folders["topics"] = root / "topics"
    run("training/finetune.py", "--model_name_or_path", folders["continued" if CAN_CONTINUE else "main"],
        "--output_dir", folders["topics"], "--max_steps", "2", "--eval_strategy", "steps", "--eval_steps", "1",
        "--save_strategy", "steps", "--save_steps", "2", "--logging_steps", "1", "--per_device_train_batch_size", "4",
        "--max_length", "32")
    return {"root": root, **folders}


def saved_folders(journey) -> list[Path]:
    folders = []
    for key in ("main", "continued", "topics"):
        if key in journey:
            folders.append(journey[key])
            folders.extend(sorted(journey[key].glob("checkpoint-*")))
    return folders


def test_every_run_writes_checkpoints(journey):
    assert [p.name for p in sorted(journey["main"].glob("checkpoint-*"))] == ["checkpoint-2", "checkpoint-4"]
    assert list(journey["topics"].glob("checkpoint-*"))


@pytest.mark.skipif(not CAN_CONTINUE, reason="train.py --model_name_or_path (issue 14, helper i13-training) is not on "
                                             "this branch: the continue-training step of the journey is not walked")
def test_continued_training_starts_from_the_checkpoint(journey):
    main_config = json.loads((journey["main"] / "config.json").read_text())
    continued = json.loads((journey["continued"] / "config.json").read_text())
    for field in ("norm_position", "norm_type", "residual", "hidden_size", "num_hidden_layers", "vocab_size"):
        assert continued[field] == main_config[field], field
    assert (journey["continued"] / "tokenizer.json").read_text() == (journey["main"] / "tokenizer.json").read_text()


def test_generate_from_the_command_line(journey):
    stdout = journey["train_stdout"]
    assert "with the Auto classes in a fresh process. Sample:\n" in stdout, stdout[-2000:]
    sample = stdout.split("Sample:\n", 1)[1].rstrip("\n")
    assert sample.startswith("The") and len(sample) > len("The"), sample


# Loads every folder with the Auto class of its architecture and the tokenizer with AutoTokenizer, in a Python
# that refuses hf_skipnorm at the import machinery (python -I keeps the repository off sys.path). stdin stays an
# open pipe nobody writes to, as under a notebook or a CI runner: a custom-code question would wait 15 s there.
CHILD = textwrap.dedent(r"""
    import importlib.abc, json, sys, time
    class Blocker(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] == "hf_skipnorm":
                raise ImportError("hf_skipnorm is blocked in this process")
    sys.meta_path.insert(0, Blocker())
    import torch, transformers
    from safetensors.torch import save_file
    jobs, outputs_path = json.loads(sys.argv[1]), sys.argv[2]
    report, outputs = {}, {}
    for key, folder, auto_name in jobs:
        model = getattr(transformers, auto_name).from_pretrained(folder, trust_remote_code=True).eval()
        start = time.perf_counter()
        tokenizer = transformers.AutoTokenizer.from_pretrained(folder, trust_remote_code=True)
        seconds = time.perf_counter() - start
        ids = tokenizer("The assert statement", return_tensors="pt")["input_ids"]
        with torch.no_grad():
            outputs[key] = model(input_ids=ids).logits.contiguous()
        report[key] = {"class": type(model).__name__, "module": type(model).__module__,
                       "tokenizer": type(tokenizer).__name__, "tokenizer_seconds": seconds, "ids": ids.tolist()}
    report["package_imported"] = any(m.split(".")[0] == "hf_skipnorm" for m in sys.modules)
    save_file(outputs, outputs_path)
    print(json.dumps(report))
""")
AUTO_CLASS = {"SkipNormForCausalLM": "AutoModelForCausalLM", "SkipNormForSequenceClassification":
              "AutoModelForSequenceClassification", "SkipNormForTokenClassification": "AutoModelForTokenClassification",
              "SkipNormForMaskedLM": "AutoModelForMaskedLM"}


def test_every_saved_folder_loads_without_the_package(journey, tmp_path):
    import hf_skipnorm
    from transformers import AutoTokenizer

    folders = saved_folders(journey)
    assert len(folders) >= 5
    jobs = []
    for index, folder in enumerate(folders):
        config = json.loads((folder / "config.json").read_text())
        assert set(config["auto_map"]) >= {"AutoConfig", "AutoModel", *AUTO_CLASS.values()}, folder
        assert {"configuration_skipnorm.py", "modeling_skipnorm.py"} <= {p.name for p in folder.iterdir()}, folder
        check_auto_map(folder)
        jobs.append((f"f{index}", str(folder), AUTO_CLASS[config["architectures"][0]]))
    outputs_path = tmp_path / "outputs.safetensors"
    env = {key: value for key, value in ENV.items() if key != "PYTHONPATH"}
    env["HF_MODULES_CACHE"] = str(tmp_path / "modules")
    child = subprocess.Popen([sys.executable, "-I", "-c", CHILD, json.dumps(jobs), str(outputs_path)], cwd=tmp_path,
                             env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        stdout, stderr = child.communicate(timeout=240)  # stdin is closed only at the end: a prompt would block
    finally:
        child.kill()
    assert child.returncode == 0, stderr[-4000:]
    assert "[y/N]" not in stdout + stderr
    report = json.loads(stdout.strip().splitlines()[-1])
    assert report.pop("package_imported") is False
    outputs = load_file(outputs_path)
    for key, folder, auto_name in jobs:
        entry = report[key]
        assert entry["module"].startswith("transformers_modules."), entry
        assert entry["tokenizer"] in ("TokenizersBackend", "PreTrainedTokenizerFast"), entry
        assert entry["tokenizer_seconds"] < 5, entry
        local_class = getattr(hf_skipnorm, entry["class"])
        model = local_class.from_pretrained(folder).eval()
        ids = AutoTokenizer.from_pretrained(folder)("The assert statement", return_tensors="pt")["input_ids"]
        assert ids.tolist() == entry["ids"]
        with torch.no_grad():
            expected = model(input_ids=ids).logits
        torch.testing.assert_close(outputs[key], expected, rtol=0, atol=1e-5)


def _eval_entries(history):
    """Evaluations in the log; trainer.evaluate() after training repeats the last step's (only its timing differs)."""
    entries = [e for e in history if "eval_loss" in e]
    same = lambda a, b: (a["step"], a["eval_loss"]) == (b["step"], b["eval_loss"])  # noqa: E731
    return [e for i, e in enumerate(entries) if i == 0 or not same(e, entries[i - 1])]


def test_training_card_states_what_the_run_did(journey):
    from huggingface_hub import ModelCard
    from transformers import AutoTokenizer

    folder = journey["main"]
    card = ModelCard.load(folder / "README.md")
    results = json.loads((folder / "all_results.json").read_text())
    history = json.loads((folder / "trainer_state.json").read_text())["log_history"]
    tokenizer = AutoTokenizer.from_pretrained(folder)
    assert len(tokenizer) == 320
    assert "Byte-level BPE tokenizer, 320 tokens" in card.text
    assert "vocab 256" not in card.text and "no tokenizer files" not in card.text.lower()
    index = {r.metric_type: r.metric_value for r in card.data.eval_results}
    assert index["loss"] == round(results["eval_loss"], 4)
    assert math.isclose(index["perplexity"], round(results["eval_perplexity"], 4))
    table = card.text.split("## Training results", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in table.splitlines() if line.startswith("| ") and "Validation Loss" not in line]
    evals = _eval_entries(history)
    assert len(rows) == len(evals) >= 2
    for row, entry in zip(rows, evals):
        cells = [cell.strip() for cell in row.strip("|").split("|")]
        assert int(cells[2]) == entry["step"] and float(cells[3]) == pytest.approx(entry["eval_loss"], rel=1e-3)
    for alt, png in (("loss curve", "loss_curve.png"), ("diagnostics", "diagnostics.png")):
        assert f"![{alt}]({png})" in card.text
        assert (folder / png).stat().st_size > 5_000


@pytest.mark.parametrize("which", ["main/checkpoint-4", "topics"])
def test_generated_card_reads_the_folder(journey, tmp_path, which):
    from huggingface_hub import ModelCard

    from model_cards.generate import validate_card, write_card

    folder = journey["root"] / which
    out = tmp_path / "card"
    write_card(str(folder), str(out))
    validate_card(str(out / "README.md"))
    card = ModelCard.load(out / "README.md")
    history = json.loads((folder / "trainer_state.json").read_text())["log_history"]
    last_eval = _eval_entries(history)[-1]
    index = {r.metric_type: r.metric_value for r in card.data.eval_results}
    assert index["loss"] == round(last_eval["eval_loss"], 4)
    assert "Byte-level BPE tokenizer, 320 tokens" in card.text and "vocab 256" not in card.text
    architecture = json.loads((folder / "config.json").read_text())["architectures"][0]
    expected_tag = {"SkipNormForCausalLM": "text-generation",
                    "SkipNormForSequenceClassification": "text-classification"}[architecture]
    assert card.data.pipeline_tag == expected_tag
    assert f"{AUTO_CLASS[architecture]}.from_pretrained" in card.text
    for png in ("diagnostics.png", "loss_curve.png"):
        assert (out / png).stat().st_size > 5_000
    if which == "topics":
        assert "accuracy" in index and index["accuracy"] == round(last_eval["eval_accuracy"], 4)


def test_publish_copies_the_card_figures(journey, tmp_path):
    publish = _load_publish()
    publish.build_repo_folder(str(journey["main"]), str(tmp_path / "repo"), "someone/skipnorm-journey")
    for png in ("loss_curve.png", "diagnostics.png"):
        assert (tmp_path / "repo" / png).read_bytes() == (journey["main"] / png).read_bytes()


def test_publish_dry_run_on_a_checkpoint(journey, tmp_path, capsys):
    # In this process (its validation still loads the repo in a child that cannot import hf_skipnorm).
    code = _load_publish().main([str(journey["main"] / "checkpoint-4"), "--repo-id", "someone/skipnorm-journey",
                                 "--out", str(tmp_path / "repo"), "--dry-run"])
    assert code == 0, capsys.readouterr().err
    assert "dry run: nothing uploaded" in capsys.readouterr().out
    names = os.listdir(tmp_path / "repo")
    assert {"README.md", "modeling_skipnorm.py", "tokenizer.json"} <= set(names)
    assert not {"optimizer.pt", "rng_state.pth", "training_args.bin"} & set(names)


# ------------------------------------------------------------------------------------------ auto_map refusal
def _saved_tiny(folder: Path) -> Path:
    torch.manual_seed(0)
    SkipNormForCausalLM(SkipNormConfig(vocab_size=64, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                                       intermediate_size=64, max_position_embeddings=32)).save_pretrained(folder)
    return folder


def _set_auto_map(folder: Path, entry: str, name="config.json", auto_class="AutoModelForCausalLM"):
    path = folder / name
    content = json.loads(path.read_text()) if path.exists() else {}
    content.setdefault("auto_map", {})[auto_class] = entry
    path.write_text(json.dumps(content))


@pytest.fixture
def evil_module(tmp_path):
    """A module outside the checkpoint that leaves a marker file when it is imported."""
    marker = tmp_path / "imported.txt"
    (tmp_path / "evil.py").write_text(f"open({str(marker)!r}, 'w').write('x')\nclass Model: pass\n")
    return tmp_path / "evil", marker


@pytest.mark.parametrize("entry", ["{evil}.Model", "../evil.Model", "someone/other-repo--modeling_skipnorm.Model",
                                   "missing_module.Model", "sub/modeling_skipnorm.SkipNormForCausalLM"])
def test_auto_map_outside_the_folder_is_refused(tmp_path, evil_module, entry):
    folder = _saved_tiny(tmp_path / "ckpt")
    evil, marker = evil_module
    _set_auto_map(folder, entry.format(evil=evil))
    with pytest.raises(ValueError, match="auto_map"):
        check_auto_map(folder)
    publish = _load_publish()
    with pytest.raises(publish.PublishError, match="auto_map"):
        publish.validate_repo_folder(str(folder), SkipNormForCausalLM.from_pretrained(folder))
    with pytest.raises(publish.PublishError, match="auto_map"):
        publish.build_repo_folder(str(folder), str(tmp_path / "repo"), "someone/x")
    assert not marker.exists(), "the file an auto_map entry names was imported"


def test_auto_map_through_a_symlink_leaving_the_folder_is_refused(tmp_path, evil_module):
    folder = _saved_tiny(tmp_path / "ckpt")
    evil, marker = evil_module
    (folder / "linked.py").symlink_to(f"{evil}.py")
    _set_auto_map(folder, "linked.Model")
    with pytest.raises(ValueError, match="linked.py is not a file inside the folder"):
        check_auto_map(folder)


def test_export_refuses_a_tokenizer_whose_auto_map_leaves_the_folder(tmp_path, evil_module):
    from test_ecosystem import tiny_tokenizer

    evil, marker = evil_module
    tokenizer = tiny_tokenizer()
    tokenizer.init_kwargs["auto_map"] = {"AutoTokenizer": [None, "../evil.Model"]}
    model = SkipNormForCausalLM(SkipNormConfig(vocab_size=64, hidden_size=32, num_hidden_layers=1,
                                               num_attention_heads=4, intermediate_size=64))
    with pytest.raises(ValueError, match=r"tokenizer_config.json: auto_map\['AutoTokenizer'\]"):
        export_for_hub(model, tmp_path / "repo", tokenizer=tokenizer)
    assert not marker.exists()


def test_saved_auto_map_passes_the_check(tmp_path):
    check_auto_map(_saved_tiny(tmp_path / "ckpt"))


def _load_publish():
    import importlib.util

    spec = importlib.util.spec_from_file_location("publish_for_journey", REPO / "training" / "publish.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ------------------------------------------------------------------------------------------ small things
def test_lazy_tools_still_import_from_the_package():
    import hf_skipnorm
    from hf_skipnorm import convert_from_hf, convert_to_hf, export_for_hub as exported

    assert convert_from_hf.__module__ == "hf_skipnorm.convert" and convert_to_hf.__module__ == "hf_skipnorm.convert"
    assert exported is export_for_hub
    assert {"convert_from_hf", "convert_to_hf", "export_for_hub"} <= set(dir(hf_skipnorm))
    with pytest.raises(AttributeError, match="no_such_name"):
        hf_skipnorm.no_such_name


def test_convert_cli_shows_progress_with_time_left_and_no_runpy_warning(tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                 intermediate_size=64)).save_pretrained(tmp_path / "llama")
    result = run("-W", "default", "-m", "hf_skipnorm.convert", tmp_path / "llama", tmp_path / "ours")
    # The package no longer imports the module runpy is about to run (issue 14): no RuntimeWarning on every run.
    assert "RuntimeWarning" not in result.stderr and "found in sys.modules" not in result.stderr, result.stderr
    assert "[convert 1/3] loading 1 safetensors file(s)" in result.stderr
    assert "[convert 3/3] writing" in result.stderr and "s left" in result.stderr
    assert "Converting tensors" in result.stderr

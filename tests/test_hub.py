"""Sharing on the Hub: an exported folder loads with `trust_remote_code` in a Python that cannot import hf_skipnorm
and gives the same outputs, for every head; loading refuses pickles, broken files and weights that do not fit the
config, each with an error naming the file or the key.
"""

import importlib.util
import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from hf_skipnorm import (
    SkipNormConfig,
    SkipNormForCausalLM,
    SkipNormForConditionalGeneration,
    SkipNormForMaskedLM,
    SkipNormForSequenceClassification,
    SkipNormForTokenClassification,
    SkipNormModel,
    export_for_hub,
)
from hf_skipnorm.hub import check_remote_code, remote_code_files, verify_remote_load
from test_ecosystem import tiny_tokenizer
from transformers import AutoModelForCausalLM

TINY = dict(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            intermediate_size=64, max_position_embeddings=32)
# One cell per head, spread over the axes so the remote copy has to get placement, norm, residual and the
# encoder switches right.
HEADS = {
    "causal_lm": (SkipNormForCausalLM, "AutoModelForCausalLM", dict(norm_position="pre")),
    "base": (SkipNormModel, "AutoModel", dict(norm_position="sandwich", norm_type="layernorm", residual="scaled",
                                              residual_alpha=0.8, branch_multiplier=1.2)),
    "masked_lm": (SkipNormForMaskedLM, "AutoModelForMaskedLM", dict(
        is_causal=False, norm_position="post", norm_type="layernorm", position_embedding="learned",
        type_vocab_size=2, embedding_norm=True, mlp_type="plain", hidden_act="gelu")),
    "sequence_classification": (SkipNormForSequenceClassification, "AutoModelForSequenceClassification",
                                dict(norm_position="output", num_labels=3, pad_token_id=0)),
    "token_classification": (SkipNormForTokenClassification, "AutoModelForTokenClassification",
                             dict(is_causal=False, norm_position="pre_post", num_labels=5)),
    # issue 16: an encoder-decoder (its own modeling file), T5 positions, a post-LN decoder under a pre-LN encoder
    "seq2seq_lm": (SkipNormForConditionalGeneration, "AutoModelForSeq2SeqLM", dict(
        is_encoder_decoder=True, decoder_layers=1, position_embedding="t5_relative", attention_multiplier=1.0,
        decoder_overrides={"norm_position": "post", "norm_type": "layernorm"}, final_logits_bias=True,
        pad_token_id=0, decoder_start_token_id=1)),
}
INPUT_IDS = torch.tensor([[5, 9, 3, 17, 42, 8, 1, 30], [2, 7, 7, 11, 63, 4, 20, 6]])
ATTENTION_MASK = torch.tensor([[1] * 8, [1] * 6 + [0] * 2])

# The remote side, written independently of hf_skipnorm.hub: a finder at the front of sys.meta_path refuses
# hf_skipnorm (the editable install would otherwise find it), and `python -I` keeps the repo off sys.path.
CHILD = textwrap.dedent(r"""
    import importlib.abc, json, sys
    class Blocker(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] == "hf_skipnorm":
                raise ImportError("hf_skipnorm is blocked in this process")
    sys.meta_path.insert(0, Blocker())
    import torch, transformers
    from safetensors.torch import load_file, save_file
    jobs, inputs_path, outputs_path = json.loads(sys.argv[1]), sys.argv[2], sys.argv[3]
    inputs = load_file(inputs_path)
    report, outputs = {}, {}
    try:
        import hf_skipnorm
        report["blocked"] = False
    except ImportError:
        report["blocked"] = True
    for key, folder, auto_name in jobs:
        try:
            model = getattr(transformers, auto_name).from_pretrained(folder, trust_remote_code=True)
        except Exception as error:
            report[key] = {"error": f"{type(error).__name__}: {error}"}
            continue
        with torch.no_grad():
            out = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])
        outputs[key] = (out.logits if getattr(out, "logits", None) is not None else out.last_hidden_state).contiguous()
        report[key] = {"class": type(model).__name__, "module": type(model).__module__,
                       "package_imported": any(m.split(".")[0] == "hf_skipnorm" for m in sys.modules)}
    save_file(outputs, outputs_path)
    print(json.dumps(report))
""")


def tiny_model(model_class, **overrides):
    torch.manual_seed(0)
    model = model_class(SkipNormConfig(**{**TINY, **overrides})).eval()
    return model


def run_outputs(model):
    with torch.no_grad():
        out = model(input_ids=INPUT_IDS, attention_mask=ATTENTION_MASK)
    return out.logits if getattr(out, "logits", None) is not None else out.last_hidden_state


REPO_ROOT = Path(__file__).resolve().parents[1]


def load_publish_script():
    spec = importlib.util.spec_from_file_location("publish", REPO_ROOT / "training" / "publish.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def published(tmp_path_factory):
    """`training/publish.py --dry-run` on a trained-looking checkpoint whose config leaves the special ids unset."""
    root = tmp_path_factory.mktemp("publish")
    model = tiny_model(SkipNormForCausalLM, norm_position="sandwich")
    model.save_pretrained(root / "ckpt")
    tokenizer = tiny_tokenizer()
    tokenizer.save_pretrained(root / "ckpt")
    code = load_publish_script().main([str(root / "ckpt"), "--repo-id", "someone/skipnorm-tiny", "--out",
                                       str(root / "repo"), "--max-shard-size", "20KB", "--dry-run"])
    return {"code": code, "folder": root / "repo", "model": model, "tokenizer": tokenizer, "root": root}


@pytest.fixture(scope="module")
def remote(tmp_path_factory, published):
    """Export every head, build a pickle-only remote-code folder, and load them all (with the folder built by
    publish.py) in one blocked child process."""
    root = tmp_path_factory.mktemp("hub")
    expected, jobs, folders = {}, [], {}
    jobs.append(("published", str(published["folder"]), "AutoModelForCausalLM"))
    expected["published"] = run_outputs(published["model"])
    for key, (model_class, auto_name, overrides) in HEADS.items():
        model = tiny_model(model_class, **overrides)
        folder = Path(export_for_hub(model, root / key))
        folders[key] = folder
        expected[key] = run_outputs(model)
        jobs.append((key, str(folder), auto_name))
    # A causal-LM checkpoint opened as a backbone: auto_map lists every head, not only the exported one.
    jobs.append(("causal_lm_as_backbone", str(root / "causal_lm"), "AutoModel"))
    expected["causal_lm_as_backbone"] = run_outputs(tiny_model(SkipNormForCausalLM, **HEADS["causal_lm"][2]).model)
    # The same code and config but the weights as a pickle: the remote class must refuse it, not unpickle it.
    pickled = root / "pickle_only"
    export_for_hub(tiny_model(SkipNormForCausalLM), pickled)
    torch.save(load_file(pickled / "model.safetensors"), pickled / "pytorch_model.bin")
    os.remove(pickled / "model.safetensors")
    jobs.append(("pickle_only", str(pickled), "AutoModelForCausalLM"))

    save_file({"input_ids": INPUT_IDS, "attention_mask": ATTENTION_MASK}, root / "inputs.safetensors")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_HUB_OFFLINE="1", HF_MODULES_CACHE=str(root / "modules_cache"))
    child = subprocess.run(
        [sys.executable, "-I", "-c", CHILD, json.dumps(jobs), str(root / "inputs.safetensors"),
         str(root / "outputs.safetensors")],
        cwd=root, env=env, capture_output=True, text=True, timeout=300,
    )
    assert child.returncode == 0, child.stderr[-4000:]
    report = json.loads(child.stdout.strip().splitlines()[-1])
    return {"report": report, "outputs": load_file(root / "outputs.safetensors"), "expected": expected,
            "folders": folders, "root": root}


def test_child_process_cannot_import_hf_skipnorm(remote):
    assert remote["report"]["blocked"] is True


@pytest.mark.parametrize("key", [*HEADS, "causal_lm_as_backbone", "published"])
def test_every_head_loads_remotely_with_the_same_outputs(remote, key):
    entry = remote["report"][key]
    assert "error" not in entry, entry.get("error")
    assert entry["module"].startswith("transformers_modules."), entry["module"]  # the folder's copy of the code
    assert not entry["package_imported"]
    got, want = remote["outputs"][key], remote["expected"][key]
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


def test_remote_code_refuses_a_pickle_only_folder(remote):
    error = remote["report"]["pickle_only"].get("error", "")
    assert "pytorch_model.bin" in error and "pickle" in error and "safetensors" in error, error


def test_auto_map_names_the_config_and_every_head(remote):
    config = json.loads((remote["folders"]["causal_lm"] / "config.json").read_text())
    assert config["auto_map"] == {
        "AutoConfig": "configuration_skipnorm.SkipNormConfig",
        "AutoModel": "modeling_skipnorm.SkipNormModel",
        "AutoModelForCausalLM": "modeling_skipnorm.SkipNormForCausalLM",
        "AutoModelForMaskedLM": "modeling_skipnorm.SkipNormForMaskedLM",
        "AutoModelForSequenceClassification": "modeling_skipnorm.SkipNormForSequenceClassification",
        "AutoModelForTokenClassification": "modeling_skipnorm.SkipNormForTokenClassification",
    }
    assert config["architectures"] == ["SkipNormForCausalLM"]


def test_exported_code_is_closed_under_relative_imports_and_nothing_else(remote):
    folder = remote["folders"]["causal_lm"]
    copied = {name for name in os.listdir(folder) if name.endswith(".py")}
    assert {"configuration_skipnorm.py", "modeling_skipnorm.py"} <= copied
    assert not copied & {"__init__.py", "hub.py"}  # __init__ registers Auto classes at import; hub is not model code
    needed = {"configuration_skipnorm", "modeling_skipnorm"}
    for name in copied:
        text = (folder / name).read_text()
        needed |= set(re.findall(r"^\s*from \.(\w+) import", text, flags=re.MULTILINE))
        assert not re.search(r"^\s*(from|import) hf_skipnorm", text, flags=re.MULTILINE), name
    assert copied == {f"{module}.py" for module in needed}


def test_remote_code_files_follows_relative_imports_recursively(tmp_path):
    (tmp_path / "configuration_x.py").write_text("import math\n")
    (tmp_path / "modeling_x.py").write_text("from .configuration_x import A\nfrom .helpers_x import h\n")
    (tmp_path / "helpers_x.py").write_text("def h():\n    from .deeper_x import d\n")
    (tmp_path / "deeper_x.py").write_text("d = 1\n")
    (tmp_path / "unrelated_x.py").write_text("u = 1\n")
    found = remote_code_files([tmp_path / "configuration_x.py", tmp_path / "modeling_x.py"])
    assert {os.path.basename(path) for path in found} == {
        "configuration_x.py", "modeling_x.py", "helpers_x.py", "deeper_x.py"}


@pytest.mark.parametrize("line", ["from . import helpers", "from .sub.helpers import h", "from ..helpers import h"])
def test_remote_code_files_refuses_imports_that_cannot_load_remotely(tmp_path, line):
    (tmp_path / "modeling_x.py").write_text(line + "\n")
    with pytest.raises(ValueError, match=r"modeling_x.py:1: .*flat sibling modules"):
        remote_code_files([tmp_path / "modeling_x.py"])


@pytest.mark.parametrize("source, problem", [
    ("import hf_skipnorm\n", "imports 'hf_skipnorm'"),
    ("from numpy import zeros\n", "imports 'numpy'"),
    ("from .missing_x import y\n", "relative import of 'missing_x'"),
    ("from transformers import AutoConfig\nAutoConfig.register('x', object)\n", "runs at import time"),
    ("for i in range(3):\n    pass\n", "runs at import time"),
])
def test_check_remote_code_refuses_foreign_imports_and_import_time_work(tmp_path, source, problem):
    path = tmp_path / "modeling_x.py"
    path.write_text(source)
    with pytest.raises(ValueError, match=re.escape(problem)):
        check_remote_code([path])


def test_check_remote_code_accepts_definitions_only(tmp_path):
    path = tmp_path / "modeling_x.py"
    path.write_text('"""Doc."""\nfrom typing import TYPE_CHECKING\nimport torch\nTABLE: dict = {"a": 1}\n'
                    "if TYPE_CHECKING:\n    import os\nclass A:\n    x = 1\ndef f():\n    return 2\n")
    check_remote_code([path])


@pytest.mark.slow  # a second child process (~15 s on the shared machine); publish's dry run covers the pass side
def test_verify_remote_load_detects_different_weights(remote):
    other = tiny_model(SkipNormForCausalLM, **HEADS["causal_lm"][2])
    with torch.no_grad():
        other.lm_head.weight.add_(0.1)  # tied: changes the embedding too
    with pytest.raises(RuntimeError, match="different outputs"):
        verify_remote_load(remote["folders"]["causal_lm"], other)


# ------------------------------------------------------------------------------------------ safety, in process
@pytest.fixture
def saved(tmp_path):
    model = tiny_model(SkipNormForCausalLM)
    model.save_pretrained(tmp_path / "ckpt")
    return model, tmp_path / "ckpt"


def test_pickle_only_folder_is_refused_without_unpickling(saved, monkeypatch):
    model, folder = saved
    torch.save(model.state_dict(), folder / "pytorch_model.bin")
    os.remove(folder / "model.safetensors")

    def no_unpickling(*args, **kwargs):
        raise AssertionError("torch.load was called")

    monkeypatch.setattr(torch, "load", no_unpickling)
    with pytest.raises(OSError, match=r"only pickle weights \(pytorch_model.bin\).*safetensors only"):
        AutoModelForCausalLM.from_pretrained(folder)


def test_use_safetensors_false_is_refused(saved):
    with pytest.raises(ValueError, match="use_safetensors=False"):
        SkipNormForCausalLM.from_pretrained(saved[1], use_safetensors=False)


def test_truncated_safetensors_file_is_named(saved):
    path = saved[1] / "model.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 100])
    with pytest.raises(OSError, match=re.escape(str(path)) + " is truncated"):
        AutoModelForCausalLM.from_pretrained(saved[1])


def test_corrupted_safetensors_header_is_named(saved):
    path = saved[1] / "model.safetensors"
    data = bytearray(path.read_bytes())
    data[8:16] = b"\x00garbage"  # the first bytes of the JSON header
    path.write_bytes(bytes(data))
    with pytest.raises(OSError, match=re.escape(str(path)) + " is corrupted"):
        AutoModelForCausalLM.from_pretrained(saved[1])


def test_sharded_checkpoint_with_a_missing_or_truncated_shard_is_named(tmp_path):
    tiny_model(SkipNormForCausalLM).save_pretrained(tmp_path, max_shard_size="20KB")
    shards = sorted(name for name in os.listdir(tmp_path) if name.startswith("model-"))
    assert len(shards) > 1
    data = (tmp_path / shards[-1]).read_bytes()
    (tmp_path / shards[-1]).write_bytes(data[:-4])
    with pytest.raises(OSError, match=re.escape(shards[-1]) + " is truncated"):
        AutoModelForCausalLM.from_pretrained(tmp_path)
    os.remove(tmp_path / shards[-1])
    with pytest.raises(OSError, match=f"lists the shard {re.escape(shards[-1])} but"):
        AutoModelForCausalLM.from_pretrained(tmp_path)


def test_unknown_norm_position_in_config_json_names_the_field_and_choices(saved):
    config_path = saved[1] / "config.json"
    config = json.loads(config_path.read_text())
    config["norm_position"] = "middle"
    config_path.write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"norm_position='middle'.*valid choices: pre, post, sandwich"):
        AutoModelForCausalLM.from_pretrained(saved[1])


@pytest.mark.parametrize("change, named", [
    (dict(num_hidden_layers=3), r"model\.layers\.2\.self_attn\.q_proj\.weight: built from the config,? but missing"),
    (dict(num_hidden_layers=1),
     r"model\.layers\.1\.mlp\.up_proj\.weight: in the checkpoint,? but not built from the config"),
    (dict(intermediate_size=96), r"model\.layers\.0\.mlp\.up_proj\.weight: shape \(64, 32\) in the checkpoint, "
                                 r"\(96, 32\) built from the config"),
    (dict(norm_type="layernorm"), r"model\.layers\.0\.attn_pre_norm\.bias: built from the config,? but missing"),
    (dict(norm_position="post"), r"model\.layers\.0\.attn_post_norm\.weight: built from the config,? but missing"),
], ids=["more-layers", "fewer-layers", "wider-mlp", "norm-type", "norm-position"])
def test_weights_that_do_not_match_the_config_are_refused_by_key(saved, change, named):
    config_path = saved[1] / "config.json"
    config_path.write_text(json.dumps({**json.loads(config_path.read_text()), **change}))
    with pytest.raises(ValueError, match=named):
        AutoModelForCausalLM.from_pretrained(saved[1])


def test_a_new_task_head_on_a_backbone_checkpoint_still_loads(saved):
    model, folder = saved
    classifier, info = SkipNormForSequenceClassification.from_pretrained(folder, num_labels=2,
                                                                          output_loading_info=True)
    assert info["missing_keys"] == {"score.weight"}
    for name, tensor in model.model.state_dict().items():
        torch.testing.assert_close(classifier.model.state_dict()[name], tensor, atol=0, rtol=0)


def test_ignore_mismatched_sizes_keeps_its_transformers_meaning(saved):
    config_path = saved[1] / "config.json"
    config_path.write_text(json.dumps({**json.loads(config_path.read_text()), "vocab_size": 80}))
    model = SkipNormForCausalLM.from_pretrained(saved[1], ignore_mismatched_sizes=True)
    assert model.model.embed_tokens.weight.shape == (80, TINY["hidden_size"])


# ------------------------------------------------------------------------------------------ publish.py
def test_publish_dry_run_builds_a_complete_sharded_repo_folder(published):
    assert published["code"] == 0
    names = set(os.listdir(published["folder"]))
    assert {"config.json", "configuration_skipnorm.py", "modeling_skipnorm.py", "generation_config.json",
            "README.md", "tokenizer.json", "tokenizer_config.json", "model.safetensors.index.json"} <= names
    shards = json.loads((published["folder"] / "model.safetensors.index.json").read_text())["weight_map"].values()
    assert len(set(shards)) > 1 and set(shards) <= names
    assert not [name for name in names if name.endswith((".bin", ".pt", ".pth", ".pkl", ".ckpt"))]


def test_publish_takes_the_generation_ids_from_the_tokenizer(published):
    generation = json.loads((published["folder"] / "generation_config.json").read_text())
    tokenizer = published["tokenizer"]
    assert published["model"].config.eos_token_id is None  # so the ids below came from the tokenizer
    assert (generation["bos_token_id"], generation["eos_token_id"], generation["pad_token_id"]) == (
        tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id)


def test_publish_model_card_says_how_to_load_it(published):
    from huggingface_hub import ModelCard

    card = ModelCard.load(published["folder"] / "README.md")
    assert card.data.pipeline_tag == "text-generation" and card.data.library_name == "transformers"
    assert {"skipnorm", "custom_code"} <= set(card.data.tags)
    assert 'AutoModelForCausalLM.from_pretrained("someone/skipnorm-tiny", trust_remote_code=True)' in card.text
    assert "`sandwich`" in card.text  # the config cell is described


def test_publish_refuses_a_pickle_checkpoint(tmp_path, capsys):
    model = tiny_model(SkipNormForCausalLM)
    model.save_pretrained(tmp_path / "ckpt")
    torch.save(model.state_dict(), tmp_path / "ckpt" / "pytorch_model.bin")
    os.remove(tmp_path / "ckpt" / "model.safetensors")
    code = load_publish_script().main([str(tmp_path / "ckpt"), "--repo-id", "someone/x", "--out",
                                       str(tmp_path / "repo"), "--dry-run"])
    assert code == 1
    assert "pickle weights only (pytorch_model.bin)" in capsys.readouterr().err
    assert not (tmp_path / "repo").exists()


def test_upload_refuses_pickles_offline_mode_and_a_missing_token(published, tmp_path, monkeypatch):
    import shutil

    import huggingface_hub

    publish = load_publish_script()
    folder = tmp_path / "repo"
    shutil.copytree(published["folder"], folder)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)
    with pytest.raises(publish.PublishError, match="no Hugging Face token"):
        publish.upload_repo_folder(str(folder), "someone/x")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(publish.PublishError, match="HF_HUB_OFFLINE"):
        publish.upload_repo_folder(str(folder), "someone/x", token="hf_fake")
    torch.save({"w": torch.zeros(2)}, folder / "extra_weights.safetensors")  # a pickle under a safe-looking name
    with pytest.raises(publish.PublishError, match="extra_weights.safetensors"):
        publish.upload_repo_folder(str(folder), "someone/x", token="hf_fake")


def test_upload_sends_the_folder_with_upload_folder(published, monkeypatch):
    import huggingface_hub

    publish = load_publish_script()
    calls = []

    class RecordingApi:
        def __init__(self, token):
            calls.append(("token", token))

        def create_repo(self, repo_id, **kwargs):
            calls.append(("create_repo", repo_id, kwargs["private"], kwargs["exist_ok"]))

        def upload_folder(self, folder_path, repo_id, **kwargs):
            calls.append(("upload_folder", folder_path, repo_id))
            return "commit-url"

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub, "HfApi", RecordingApi)
    result = publish.upload_repo_folder(str(published["folder"]), "someone/x", token="hf_fake", private=True)
    assert result == "commit-url"
    assert calls == [("token", "hf_fake"), ("create_repo", "someone/x", True, True),
                     ("upload_folder", str(published["folder"]), "someone/x")]

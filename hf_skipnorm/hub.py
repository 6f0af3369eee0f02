"""Share a SkipNorm model on the Hub: a folder that loads with `trust_remote_code` where hf_skipnorm is not installed.

`export_for_hub(model, dir)` writes what `save_pretrained` writes (safetensors, config.json, generation config)
plus what a user without this package needs:

- `auto_map` in config.json for the config and *every* head, set explicitly (`register_for_auto_class` records
  one Auto class per class, so a causal-LM checkpoint could not be opened with `AutoModel`);
- the model code: `configuration_skipnorm.py`, `modeling_skipnorm.py` and every flat sibling module they reach
  through relative imports, found by parsing the imports (new sibling modules travel without editing a list).

Before writing, the code is checked the way a remote loader will see it (`check_remote_code`): only the
standard library, torch, transformers and copied siblings are imported, and importing a file only defines things.
`verify_remote_load` proves the folder in a Python process that cannot import hf_skipnorm.

This module is not part of the exported code: it runs where hf_skipnorm is installed.
"""

from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterable

import torch

from .loading_skipnorm import pickle_weight_files
from .modeling_skipnorm import AUTO_MAP_HEADS
from .modeling_seq2seq_skipnorm import SEQ2SEQ_AUTO_MAP_HEADS

PACKAGE = "hf_skipnorm"
# Absolute imports the exported code may use: the standard library plus what every transformers user has.
ALLOWED_THIRD_PARTY: frozenset[str] = frozenset({"torch", "transformers"})
# Auto class -> the class name in the modeling module. All of them go into auto_map whatever head is exported, so
# one checkpoint opens as a backbone (AutoModel) or under a new task head (fine-tuning). The table lives in the
# model code, whose `save_pretrained` writes it into every saved folder.
AUTO_MODEL_CLASSES: dict[str, str] = dict(AUTO_MAP_HEADS)
# Files whose `auto_map` transformers follows when loading a folder with trust_remote_code.
AUTO_MAP_FILES = ("config.json", "tokenizer_config.json", "processor_config.json", "preprocessor_config.json")
# Encoder-decoder checkpoints (issue 16): the base and the seq2seq head, from modeling_seq2seq_skipnorm.py.
SEQ2SEQ_AUTO_MODEL_CLASSES: dict[str, str] = dict(SEQ2SEQ_AUTO_MAP_HEADS)
# Top-level statements that only define things. Anything else (a call such as `AutoConfig.register(...)`, a loop,
# a `with`, a `try`) would run when transformers imports the file.
_DEFINITION_NODES = (ast.Import, ast.ImportFrom, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Assign,
                     ast.AnnAssign)


def _module_file(obj) -> str:
    module = sys.modules[type(obj).__module__]
    return os.path.abspath(module.__file__)


def remote_code_files(entry_files: Iterable[str]) -> list[str]:
    """`entry_files` plus every flat sibling module they import relatively (``from .x import y``), recursively.

    Raises ValueError for the relative forms that transformers cannot load remotely: ``from . import x``
    (saves but fails to load) and ``from .pkg.mod import x`` / ``from ..x import y`` (save_pretrained fails).
    """
    todo = [os.path.abspath(path) for path in entry_files]
    found: list[str] = []
    while todo:
        path = todo.pop()
        if path in found:
            continue
        if not os.path.isfile(path):
            raise ValueError(f"{path} is imported by the model code but does not exist")
        found.append(path)
        tree = ast.parse(open(path, encoding="utf-8").read(), filename=path)
        for node in ast.walk(tree):
            if not isinstance(node, ast.ImportFrom) or node.level == 0:
                continue
            where = f"{os.path.basename(path)}:{node.lineno}"
            if node.level != 1 or node.module is None or "." in node.module:
                dots = "." * node.level
                raise ValueError(
                    f"{where}: 'from {dots}{node.module or ''} import ...' cannot travel with a checkpoint; "
                    f"remote code needs flat sibling modules imported as 'from .module import name'"
                )
            todo.append(os.path.join(os.path.dirname(path), node.module + ".py"))
    return sorted(found)


def check_remote_code(files: Iterable[str]) -> None:
    """Raise ValueError listing every line of `files` that would break or misbehave as remote code.

    Refused: absolute imports other than the standard library, torch and transformers (in particular of
    hf_skipnorm itself, absent on the user's machine); relative imports of a module not among `files`; and
    top-level statements that run something at import time instead of defining it.
    """
    files = [os.path.abspath(path) for path in files]
    siblings = {os.path.splitext(os.path.basename(path))[0] for path in files}
    allowed = set(sys.stdlib_module_names) | ALLOWED_THIRD_PARTY
    problems = []
    for path in files:
        name = os.path.basename(path)
        tree = ast.parse(open(path, encoding="utf-8").read(), filename=path)
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                roots = [alias.name.split(".")[0] for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                roots = [node.module.split(".")[0]]
            elif isinstance(node, ast.ImportFrom):
                if node.module not in siblings:
                    problems.append(f"{name}:{node.lineno}: relative import of {node.module!r}, not an exported file")
                continue
            else:
                continue
            for root in roots:
                if root not in allowed:
                    problems.append(f"{name}:{node.lineno}: imports {root!r} (allowed: standard library, "
                                    f"{', '.join(sorted(ALLOWED_THIRD_PARTY))}, sibling files)")
        for index, node in enumerate(tree.body):
            if isinstance(node, _DEFINITION_NODES):
                continue
            if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) and index == 0:
                continue  # the module docstring
            if isinstance(node, ast.If) and ast.unparse(node.test) in ("TYPE_CHECKING", "typing.TYPE_CHECKING"):
                continue
            problems.append(f"{name}:{node.lineno}: runs at import time: {ast.unparse(node).splitlines()[0][:80]}")
    if problems:
        raise ValueError("The model code cannot be exported as remote code:\n  " + "\n  ".join(problems))


def auto_map_for(model) -> dict[str, str]:
    """`auto_map` for config.json: the config class and every head, as ``module.Class`` of the copied files."""
    config_module = os.path.splitext(os.path.basename(_module_file(model.config)))[0]
    modeling = sys.modules[type(model).__module__]
    modeling_module = type(model).__module__.rsplit(".", 1)[-1]
    auto_map = {"AutoConfig": f"{config_module}.{type(model.config).__name__}"}
    classes = SEQ2SEQ_AUTO_MODEL_CLASSES if getattr(model.config, "is_encoder_decoder", False) else AUTO_MODEL_CLASSES
    for auto_class, class_name in classes.items():
        if not hasattr(modeling, class_name):
            raise ValueError(f"{modeling.__file__} defines no {class_name}, needed for {auto_class} in auto_map")
        auto_map[auto_class] = f"{modeling_module}.{class_name}"
    return auto_map


def _auto_map_references(value) -> list[str]:
    """The class references of one auto_map value: ``"module.Class"``, or the tokenizer's ``[slow, fast]`` pair."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, (list, tuple)):
        return [item for item in value if item is not None]
    raise ValueError(f"auto_map value {value!r} is neither a 'module.Class' string nor a [slow, fast] pair")


def check_auto_map(folder: str | os.PathLike) -> None:
    """Raise ValueError unless every `auto_map` entry in `folder`'s config files names a class in a file of the
    folder itself, as ``module.Class`` with a plain module name whose ``module.py`` lies inside the folder.

    transformers resolves an entry relative to the folder: an absolute path or ``..`` would import a file from
    elsewhere on the machine, and ``repo--module.Class`` fetches code from another Hub repo. Refused before anything
    is imported, with the file, the Auto class and the entry named.
    """
    folder = os.path.realpath(os.fspath(folder))
    problems = []
    for name in AUTO_MAP_FILES:
        path = os.path.join(folder, name)
        if not os.path.isfile(path):
            continue
        with open(path, encoding="utf-8") as handle:
            try:
                content = json.load(handle)
            except json.JSONDecodeError as error:
                raise ValueError(f"{path} is not valid JSON: {error}") from None
        auto_map = content.get("auto_map") if isinstance(content, dict) else None
        if auto_map is None:
            continue
        if not isinstance(auto_map, dict):
            problems.append(f"{name}: auto_map is {type(auto_map).__name__}, expected an object")
            continue
        for auto_class, value in auto_map.items():
            try:
                references = _auto_map_references(value)
            except ValueError as error:
                problems.append(f"{name}: auto_map[{auto_class!r}]: {error}")
                continue
            for reference in references:
                where = f"{name}: auto_map[{auto_class!r}] = {reference!r}"
                if not isinstance(reference, str):
                    problems.append(f"{where}: not a string")
                    continue
                module, _, class_name = reference.rpartition(".")
                if "--" in reference:
                    problems.append(f"{where}: the 'repo--module.Class' form loads code from another repo")
                elif not module.isidentifier() or not class_name.isidentifier():
                    problems.append(f"{where}: expected 'module.Class' naming a file of this folder "
                                    f"(no paths, no '..')")
                else:
                    code = os.path.realpath(os.path.join(folder, module + ".py"))
                    if os.path.dirname(code) != folder or not os.path.isfile(code):
                        problems.append(f"{where}: {module}.py is not a file inside the folder")
    if problems:
        raise ValueError(f"{folder}: auto_map points outside the folder:\n  " + "\n  ".join(problems))


def export_for_hub(model, save_directory: str | os.PathLike, tokenizer=None, max_shard_size: int | str = "5GB",
                   **save_kwargs) -> str:
    """Write `model` (and `tokenizer`) to `save_directory` as a Hub repo folder that loads with
    `AutoModel*.from_pretrained(dir, trust_remote_code=True)` on a machine without hf_skipnorm.

    Weights are safetensors, split into shards of at most `max_shard_size` (the Hub advises 5GB files).
    Returns the folder path. Raises ValueError if the folder already holds pickle weights or the code cannot
    travel (see `check_remote_code`).
    """
    if getattr(model.config, "model_type", None) != "skipnorm":
        raise ValueError(f"export_for_hub exports SkipNorm models; got model_type={model.config.model_type!r}")
    save_directory = os.fspath(save_directory)
    code_files = remote_code_files([_module_file(model.config), _module_file(model)])
    check_remote_code(code_files)
    auto_map = auto_map_for(model)
    if os.path.isdir(save_directory) and pickle_weight_files(save_directory):
        raise ValueError(
            f"{save_directory} already holds pickle weights ({', '.join(pickle_weight_files(save_directory))}); "
            f"export into a folder without them so the repo never ships a file that unpickles"
        )
    # The model's save_pretrained writes auto_map and copies the code; both are redone here from what was checked,
    # so a subclass or an older model class cannot ship less.
    model.save_pretrained(save_directory, max_shard_size=max_shard_size, **save_kwargs)
    config_path = os.path.join(save_directory, "config.json")
    with open(config_path, encoding="utf-8") as handle:
        config = json.load(handle)
    config["auto_map"] = auto_map
    with open(config_path, "w", encoding="utf-8") as handle:
        json.dump(config, handle, indent=2, sort_keys=True)
        handle.write("\n")
    for path in code_files:
        shutil.copyfile(path, os.path.join(save_directory, os.path.basename(path)))
    if tokenizer is not None:
        tokenizer.save_pretrained(save_directory)
    check_auto_map(save_directory)
    return save_directory


# The child process of `verify_remote_load`. It blocks hf_skipnorm at the import machinery, so neither the
# editable install nor the working directory can supply it, and asserts the classes came from the folder.
_REMOTE_LOAD_SCRIPT = r"""
import importlib.abc, json, sys
class _Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "hf_skipnorm" or name.startswith("hf_skipnorm."):
            raise ImportError(f"{name} is blocked: the checkpoint must load without it")
sys.meta_path.insert(0, _Block())
import torch, transformers
from safetensors.torch import load_file, save_file
folder, auto_name, inputs_path, outputs_path = sys.argv[1:5]
auto_class = getattr(transformers, auto_name)
model = auto_class.from_pretrained(folder, trust_remote_code=True)
assert not type(model).__module__.startswith("hf_skipnorm"), type(model).__module__
assert "hf_skipnorm" not in sys.modules
inputs = load_file(inputs_path)
with torch.no_grad():
    output = model(**inputs)
result = output.logits if getattr(output, "logits", None) is not None else output.last_hidden_state
save_file({"output": result.contiguous()}, outputs_path)
print(json.dumps({"class": type(model).__name__, "module": type(model).__module__}))
"""


def _child_env(modules_cache: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    env["HF_HUB_OFFLINE"] = "1"
    env["HF_MODULES_CACHE"] = modules_cache  # a fresh copy of the remote code, not one cached by an earlier run
    return env


def verify_remote_load(folder: str | os.PathLike, model=None, auto_class: str | None = None,
                       timeout: float = 300.0, atol: float = 1e-5) -> dict:
    """Load `folder` with `auto_class` and `trust_remote_code=True` in a fresh Python that cannot import
    hf_skipnorm, run it on a fixed batch and compare with `model` (default: the folder loaded here).

    `auto_class` defaults to the Auto class of the folder's architecture. Raises RuntimeError with the child's
    error, or if the outputs differ by more than `atol`. Returns the child's report (class and module).
    """
    from safetensors.torch import load_file, save_file

    folder = os.path.abspath(os.fspath(folder))
    check_auto_map(folder)  # before the child imports anything the folder names
    with open(os.path.join(folder, "config.json"), encoding="utf-8") as handle:
        config = json.load(handle)
    architecture = (config.get("architectures") or ["SkipNormModel"])[0]
    if auto_class is None:
        by_class = {class_name: auto for auto, class_name in (*AUTO_MODEL_CLASSES.items(),
                                                              *SEQ2SEQ_AUTO_MODEL_CLASSES.items())}
        auto_class = by_class.get(architecture, "AutoModel")
    if model is None:
        import hf_skipnorm

        classes = SEQ2SEQ_AUTO_MODEL_CLASSES if config.get("is_encoder_decoder") else AUTO_MODEL_CLASSES
        model = getattr(hf_skipnorm, classes[auto_class]).from_pretrained(folder)
    model.eval()
    seq_len = min(8, config["max_position_embeddings"])
    generator = torch.Generator().manual_seed(0)
    inputs = {
        "input_ids": torch.randint(0, config["vocab_size"], (2, seq_len), generator=generator),
        "attention_mask": torch.ones(2, seq_len, dtype=torch.long),
    }
    with torch.no_grad():
        output = model(**inputs)
    expected = output.logits if getattr(output, "logits", None) is not None else output.last_hidden_state
    with tempfile.TemporaryDirectory() as scratch:
        inputs_path, outputs_path = os.path.join(scratch, "inputs.safetensors"), os.path.join(scratch, "out.safetensors")
        save_file(inputs, inputs_path)
        # -I: isolated mode, so neither the working directory nor PYTHONPATH puts this repository on sys.path.
        child = subprocess.run(
            [sys.executable, "-I", "-c", _REMOTE_LOAD_SCRIPT, folder, auto_class, inputs_path, outputs_path],
            cwd=scratch, env=_child_env(os.path.join(scratch, "modules")), capture_output=True, text=True,
            timeout=timeout,
        )
        if child.returncode != 0:
            raise RuntimeError(f"{folder} does not load with {auto_class} and trust_remote_code=True in a Python "
                               f"without {PACKAGE}:\n{child.stderr[-3000:]}")
        got = load_file(outputs_path)["output"]
    if got.shape != expected.shape or not torch.allclose(got.float(), expected.float(), atol=atol, rtol=0):
        difference = (got.float() - expected.float()).abs().max().item() if got.shape == expected.shape else "shape"
        raise RuntimeError(f"{folder} loaded remotely with {auto_class} gives different outputs "
                           f"(max abs difference {difference}, atol {atol})")
    return json.loads(child.stdout.strip().splitlines()[-1])


__all__ = ["export_for_hub", "remote_code_files", "check_remote_code", "check_auto_map", "auto_map_for",
           "verify_remote_load"]

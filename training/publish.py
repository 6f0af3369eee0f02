"""Publish a SkipNorm checkpoint as a Hugging Face Hub repo that loads where hf_skipnorm is not installed.

    python training/publish.py CHECKPOINT --repo-id you/skipnorm-small --dry-run     # build and validate only
    python training/publish.py CHECKPOINT --repo-id you/skipnorm-small               # ... then upload

1. Refuse a checkpoint whose weights are pickles (`*.bin`, `*.pt`, ...): they are never read, never uploaded.
2. Load the model with hf_skipnorm (safetensors only, weights checked against config.json).
3. Write the repo folder (`--out`, default `CHECKPOINT-hub`): safetensors weights split into shards of at most
   `--max-shard-size`, config.json with `auto_map` for every head, the model code files, the tokenizer, the
   generation config (causal LMs) and a model card (the training card if CHECKPOINT has one, plus how to load it).
4. Validate the folder: the expected files exist, no file in it is a pickle or zip archive, every safetensors
   file is complete, the tokenizer loads, and a Python process that cannot import hf_skipnorm loads the model
   with `trust_remote_code=True` and reproduces this process's outputs.
5. Unless `--dry-run`: upload with `huggingface_hub` (`create_repo` + `upload_folder`). Needs a token (`--token`,
   `HF_TOKEN`, or `hf auth login`) and network; `HF_HUB_OFFLINE=1` refuses.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys

# Run as a script (python training/publish.py), the repository root is not on sys.path.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import hf_skipnorm  # noqa: E402
from hf_skipnorm.hub import AUTO_MODEL_CLASSES, check_auto_map, export_for_hub, verify_remote_load  # noqa: E402
from hf_skipnorm.loading_skipnorm import (  # noqa: E402
    PICKLE_SUFFIXES,
    check_local_checkpoint,
    local_weight_files,
    pickle_weight_files,
)

PIPELINE_TAGS = {
    "SkipNormForCausalLM": "text-generation",
    "SkipNormForMaskedLM": "fill-mask",
    "SkipNormForSequenceClassification": "text-classification",
    "SkipNormForTokenClassification": "token-classification",
    "SkipNormModel": "feature-extraction",
}
AUTO_CLASS_OF = {class_name: auto for auto, class_name in AUTO_MODEL_CLASSES.items()}
# First bytes of the formats that unpickle on load: a pickle stream (protocol 2-5) and the zip archive
# `torch.save` writes. Checked on every file, whatever its name.
PICKLE_MAGICS = (b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05", b"PK\x03\x04")
HUB_SECTION_TITLE = "## Use from the Hub"
HUB_SECTION = """{title}

The model code travels with the weights (`configuration_skipnorm.py`, `modeling_skipnorm.py` and their sibling
modules), so no package install is needed; read those files before trusting them.

```python
from transformers import {auto_class}, AutoTokenizer

model = {auto_class}.from_pretrained("{repo_id}", trust_remote_code=True)
tokenizer = AutoTokenizer.from_pretrained("{repo_id}", trust_remote_code=True)
```

The tokenizer is a stock class; `trust_remote_code=True` only spares the question transformers asks because
`AutoTokenizer` first reads the model's config, whose class is remote code.

Weights are safetensors only{shards}. The same checkpoint also opens as `AutoModel` (the backbone) or under a new
task head (`AutoModelForSequenceClassification`, `AutoModelForTokenClassification`, ...).
"""
FRESH_CARD = """# {name}

A `skipnorm` model ({architecture}) from the hf_skipnorm project: placement `{norm_position}`, norm `{norm_type}`,
residual `{residual}`, {num_hidden_layers} layers, hidden size {hidden_size}, {num_parameters:,} parameters.

| field | value |
|---|---|
{rows}
"""
CARD_FIELDS = ("norm_position", "attn_norm_position", "mlp_norm_position", "norm_type", "residual", "embedding_norm",
               "final_norm", "position_embedding", "mlp_type", "is_causal", "vocab_size", "hidden_size",
               "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "intermediate_size")


class PublishError(RuntimeError):
    """A refusal with a message meant for the user (no traceback needed)."""


def pickle_files_anywhere(folder: str) -> list[str]:
    """Every file under `folder` that is a pickle or a torch zip archive, by name or by its first bytes."""
    found = []
    for directory, _, names in os.walk(folder):
        for name in names:
            path = os.path.join(directory, name)
            with open(path, "rb") as handle:
                head = handle.read(4)
            if name.endswith(PICKLE_SUFFIXES) or head.startswith(PICKLE_MAGICS):
                found.append(os.path.relpath(path, folder))
    return sorted(found)


def load_checkpoint(checkpoint: str):
    """The model class named in config.json's `architectures`, loaded safetensors-only and strictly."""
    pickled = pickle_weight_files(checkpoint)
    if pickled and not local_weight_files(checkpoint):
        raise PublishError(f"{checkpoint} holds pickle weights only ({', '.join(pickled)}); publish refuses them. "
                           f"Re-save the model with save_pretrained (safetensors) first.")
    with open(os.path.join(checkpoint, "config.json"), encoding="utf-8") as handle:
        architectures = json.load(handle).get("architectures") or ["SkipNormModel"]
    if architectures[0] not in PIPELINE_TAGS:
        raise PublishError(f"{checkpoint}/config.json architectures={architectures}; expected one of "
                           f"{', '.join(PIPELINE_TAGS)}")
    return getattr(hf_skipnorm, architectures[0]).from_pretrained(checkpoint)


def model_card(checkpoint: str, model, repo_id: str, sharded: bool, license_name: str):
    """The training card from `checkpoint` (or a fresh one) with Hub metadata and a section on loading it."""
    from huggingface_hub import ModelCard

    architecture = type(model).__name__
    existing = os.path.join(checkpoint, "README.md")
    if os.path.isfile(existing):
        card = ModelCard.load(existing)
    else:
        config = model.config
        rows = "\n".join(f"| `{name}` | `{json.dumps(getattr(config, name))}` |" for name in CARD_FIELDS)
        card = ModelCard("---\nlibrary_name: transformers\n---\n" + FRESH_CARD.format(
            name=repo_id.split("/")[-1], architecture=architecture, rows=rows,
            num_parameters=sum(p.numel() for p in model.parameters()),
            **{name: getattr(config, name) for name in
               ("norm_position", "norm_type", "residual", "num_hidden_layers", "hidden_size")},
        ))
    card.data.library_name = "transformers"
    card.data.pipeline_tag = PIPELINE_TAGS[architecture]
    card.data.license = card.data.license or license_name
    card.data.tags = sorted(set(card.data.tags or []) | {"skipnorm", "custom_code", "safetensors"})
    if HUB_SECTION_TITLE not in card.text:
        card.text = card.text.rstrip() + "\n\n" + HUB_SECTION.format(
            title=HUB_SECTION_TITLE, auto_class=AUTO_CLASS_OF[architecture], repo_id=repo_id,
            shards=", split into shards (`model.safetensors.index.json` lists them)" if sharded else "",
        )
    return card


def build_repo_folder(checkpoint: str, out: str, repo_id: str, tokenizer_path: str | None = None,
                      max_shard_size: str = "5GB", license_name: str = "apache-2.0"):
    """Write the repo folder `out` from `checkpoint`; returns the loaded model (the reference for validation)."""
    from transformers import AutoTokenizer

    if os.path.abspath(out) == os.path.abspath(checkpoint):
        raise PublishError("--out must differ from the checkpoint folder (the repo folder is rebuilt from scratch)")
    tokenizer_path = tokenizer_path or checkpoint
    for folder in dict.fromkeys((checkpoint, tokenizer_path)):
        try:
            check_auto_map(folder)  # before transformers reads (and might import) what an auto_map names
        except ValueError as error:
            raise PublishError(str(error)) from None
    model = load_checkpoint(checkpoint)
    try:
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_path)
    except (OSError, ValueError) as error:
        raise PublishError(f"no tokenizer in {tokenizer_path} ({error}); pass --tokenizer DIR") from None
    if model.can_generate():
        # Generation needs to know where text ends and how to pad a batch: take it from the tokenizer when the
        # training config left it unset.
        generation = model.generation_config
        for field in ("bos_token_id", "eos_token_id", "pad_token_id"):
            if getattr(generation, field) is None and getattr(tokenizer, field) is not None:
                setattr(generation, field, getattr(tokenizer, field))
    if os.path.isdir(out):
        shutil.rmtree(out)
    export_for_hub(model, out, tokenizer=tokenizer, max_shard_size=max_shard_size)
    sharded = not os.path.isfile(os.path.join(out, "model.safetensors"))
    card = model_card(checkpoint, model, repo_id, sharded, license_name)
    card.save(os.path.join(out, "README.md"))
    for image in card_images(card.text):  # the training card's figures (loss curve, diagnostics) travel with it
        source = os.path.join(checkpoint, image)
        if os.path.isfile(source):
            shutil.copyfile(source, os.path.join(out, image))
    return model


def card_images(text: str) -> list[str]:
    """Plain file names of the images a card shows (``![alt](name.png)``); links and paths are left alone."""
    import re

    names = re.findall(r"!\[[^\]]*\]\(([^)\s]+)\)", text)
    return [name for name in names if os.path.basename(name) == name and not name.startswith(".")]


def validate_repo_folder(out: str, model) -> list[str]:
    """Raise PublishError unless `out` is a complete, pickle-free repo that loads without hf_skipnorm and
    reproduces `model`. Returns the folder's file names."""
    from transformers import AutoTokenizer

    names = sorted(os.listdir(out))
    required = ["config.json", "configuration_skipnorm.py", "modeling_skipnorm.py", "README.md",
                "tokenizer_config.json"]
    if model.can_generate():
        required.append("generation_config.json")
    missing = [name for name in required if name not in names]
    if missing:
        raise PublishError(f"{out} lacks {', '.join(missing)}")
    pickled = pickle_files_anywhere(out)
    if pickled:
        raise PublishError(f"{out} contains pickle files ({', '.join(pickled)}); they are never published")
    if not local_weight_files(out):
        raise PublishError(f"{out} has no safetensors weights")
    try:
        check_auto_map(out)
        check_local_checkpoint(out)
        AutoTokenizer.from_pretrained(out)
        verify_remote_load(out, model)
    except (OSError, ValueError, RuntimeError) as error:
        raise PublishError(f"{out} failed validation: {error}") from error
    return names


def upload_repo_folder(out: str, repo_id: str, token: str | None = None, private: bool = False,
                       commit_message: str = "Upload skipnorm model"):
    """Upload `out` to `repo_id` (created if needed). Refuses pickle files, a missing token and offline mode."""
    import huggingface_hub
    from huggingface_hub import HfApi

    pickled = pickle_files_anywhere(out)
    if pickled:
        raise PublishError(f"{out} contains pickle files ({', '.join(pickled)}); refusing to upload them")
    if huggingface_hub.constants.HF_HUB_OFFLINE:
        raise PublishError("HF_HUB_OFFLINE is set: cannot upload (use --dry-run to build and validate only)")
    token = token or huggingface_hub.get_token()
    if not token:
        raise PublishError("no Hugging Face token: pass --token, set HF_TOKEN or run `hf auth login` "
                           "(or use --dry-run)")
    api = HfApi(token=token)
    try:
        api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        return api.upload_folder(folder_path=out, repo_id=repo_id, repo_type="model", commit_message=commit_message)
    except Exception as error:  # network and Hub errors differ by huggingface_hub version; report them plainly
        raise PublishError(f"upload of {out} to {repo_id} failed: {type(error).__name__}: {error}") from error


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", help="folder written by save_pretrained / training/train.py")
    parser.add_argument("--repo-id", required=True, help="Hub repo, e.g. you/skipnorm-small")
    parser.add_argument("--out", help="repo folder to build (default: CHECKPOINT-hub); rebuilt from scratch")
    parser.add_argument("--tokenizer", help="tokenizer folder (default: the checkpoint)")
    parser.add_argument("--max-shard-size", default="5GB",
                        help="largest safetensors file; bigger models are sharded (default 5GB, the Hub's advice)")
    parser.add_argument("--license", default="apache-2.0", help="license in the card when the card has none")
    parser.add_argument("--private", action="store_true", help="create the repo as private")
    parser.add_argument("--token", help="Hugging Face token (default: HF_TOKEN or the stored login)")
    parser.add_argument("--dry-run", action="store_true", help="build and validate the folder, do not upload")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    out = args.out or args.checkpoint.rstrip("/") + "-hub"
    try:
        model = build_repo_folder(args.checkpoint, out, args.repo_id, args.tokenizer, args.max_shard_size,
                                  args.license)
        names = validate_repo_folder(out, model)
        print(f"built and validated {out}: {', '.join(names)}")
        if args.dry_run:
            print("dry run: nothing uploaded")
            return 0
        commit = upload_repo_folder(out, args.repo_id, args.token, args.private)
        print(f"uploaded {out} to {args.repo_id}: {commit}")
        return 0
    except PublishError as error:
        print(f"publish: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())

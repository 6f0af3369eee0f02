"""torch.compile across every block topology: `_can_compile_fullgraph` is true exactly where a fullgraph compile has
no graph break, and the Trainer's `torch_compile` trains every topology (train.py's `--torch_compile` included).

Dynamo's tracing decides graph breaks, so these tests compile with the `eager` / `aot_eager` backends (the whole
trace and, for aot_eager, AOTAutograd's functionalized forward and backward) without paying for inductor's code
generation on a 2-core CI machine; the slow test at the end runs inductor through train.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from transformers import StaticCache, Trainer, TrainingArguments

from hf_skipnorm import SkipNormConfig, SkipNormForCausalLM
from hf_skipnorm.modeling_skipnorm import BLOCK_CLASSES, block_topology

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = dict(vocab_size=61, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, max_position_embeddings=32)

# One config per BLOCK_CLASSES row (the test below fails when a topology is added without a row here), plus the
# stream layouts and rewired placements that share a block class but change what flows between blocks.
TOPOLOGY_CELLS: dict[str, dict] = {
    "sequential": {},
    "parallel": dict(parallel_block=True, parallel_shared_norm=True),
    "b2t": dict(norm_position="b2t"),
    "resi_dual": dict(norm_position="resi_dual"),
    "hyper": dict(residual="hyper"),
    "dense": dict(residual="dense"),
    "ngpt": dict(architecture="ngpt", norm_position="none", tie_word_embeddings=False),
    "attn_res": dict(residual="attn_res"),
    "laurel_pa": dict(residual="laurel", laurel_variant="pa"),
}
EXTRA_CELLS: dict[str, dict] = {
    "hyper_static": dict(residual="hyper", hyper_dynamic=False),
    "mhc": dict(residual="mhc", sinkhorn_iters=3),
    "post-admin": dict(norm_position="post", residual="admin"),
    "gated-qk_full": dict(residual="gated", qk_norm="full"),
    "orthogonal": dict(residual="orthogonal"),
    "laurel": dict(residual="laurel"),
    "frac": dict(residual="frac"),
    # issue 15
    "attn_res_blocks": dict(residual="attn_res", attn_res_blocks=1),
    "value_residual-unet": dict(value_residual="per_token", unet_skips=True, qk_norm="per_head_gains"),
    "dense_2x2-layer_drop": dict(residual="dense", dense_dilation=2, dense_period=2, layer_drop=0.1),
}
CELLS = {**TOPOLOGY_CELLS, **EXTRA_CELLS}


def tiny_model(**fields) -> SkipNormForCausalLM:
    torch.manual_seed(0)
    return SkipNormForCausalLM(SkipNormConfig(**TINY, **fields)).eval()


def test_every_block_topology_has_a_compile_cell():
    missing = set(BLOCK_CLASSES) - set(TOPOLOGY_CELLS)
    assert not missing, f"add a config for these BLOCK_CLASSES rows to TOPOLOGY_CELLS: {sorted(missing)}"
    for topology, fields in TOPOLOGY_CELLS.items():
        config = SkipNormConfig(**TINY, **fields)
        assert block_topology(config, 0) == topology


@pytest.mark.parametrize("cell", list(CELLS))
def test_can_compile_fullgraph_is_true_exactly_where_fullgraph_compiles(cell):
    model = tiny_model(**CELLS[cell])
    ids = torch.randint(3, TINY["vocab_size"], (2, 6))
    torch._dynamo.reset()
    try:
        compiled = torch.compile(model, fullgraph=True, backend="eager")  # fullgraph: any graph break raises
        with torch.no_grad():
            got = compiled(input_ids=ids).logits
        cache = StaticCache(config=model.config, max_cache_len=8)
        with torch.no_grad():  # one prefill and one decode step through a static cache, as compiled generate runs
            compiled(input_ids=ids[:1, :5], cache=cache, use_cache=True)
            step = compiled(input_ids=ids[:1, 5:6], cache=cache, use_cache=True).logits
        compiles = True
    except Exception as error:  # noqa: BLE001 - the assertion below reports it
        compiles, reason = False, f"{type(error).__name__}: {error}"
    assert model._can_compile_fullgraph == compiles, reason if not compiles else "compiles, flag says no"
    if compiles:
        with torch.no_grad():
            torch.testing.assert_close(got, model(input_ids=ids).logits, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(step[:, -1], model(input_ids=ids[:1]).logits[:, -1], atol=1e-5, rtol=1e-5)


class TokenDataset(torch.utils.data.Dataset):
    def __init__(self, rows: int = 8, length: int = 8):
        generator = torch.Generator().manual_seed(1)
        self.ids = torch.randint(3, TINY["vocab_size"], (rows, length), generator=generator)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> dict:
        return {"input_ids": self.ids[index], "labels": self.ids[index]}


@pytest.mark.parametrize("cell", list(TOPOLOGY_CELLS))
def test_trainer_torch_compile_trains_every_topology(cell, tmp_path):
    """The Trainer's `torch_compile=True` (what train.py's `--torch_compile` sets): forward and backward traced by
    AOTAutograd, the loss finite and falling toward the eager model's, the saved model loadable."""
    model = tiny_model(**TOPOLOGY_CELLS[cell]).train()
    eager = tiny_model(**TOPOLOGY_CELLS[cell]).train()
    args = dict(output_dir=str(tmp_path), max_steps=2, per_device_train_batch_size=4, learning_rate=1e-2,
                report_to=[], save_strategy="no", logging_steps=1, use_cpu=True, disable_tqdm=True, seed=0,
                dataloader_num_workers=0)
    torch._dynamo.reset()
    trainer = Trainer(model=model, args=TrainingArguments(**args, torch_compile=True,
                                                          torch_compile_backend="aot_eager"),
                      train_dataset=TokenDataset())
    compiled_losses = [r["loss"] for r in trainer.train() and trainer.state.log_history if "loss" in r]
    reference = Trainer(model=eager, args=TrainingArguments(**args), train_dataset=TokenDataset())
    eager_losses = [r["loss"] for r in reference.train() and reference.state.log_history if "loss" in r]
    assert len(compiled_losses) == 2 and all(torch.isfinite(torch.tensor(compiled_losses)))
    # the same batches and init: compiled training computes the same function (up to float reassociation)
    assert compiled_losses == pytest.approx(eager_losses, rel=1e-4, abs=1e-5)
    trainer.save_model(str(tmp_path / "saved"))
    loaded = SkipNormForCausalLM.from_pretrained(tmp_path / "saved")
    for name, tensor in loaded.state_dict().items():
        assert torch.equal(tensor, model.state_dict()[name]), name


def _train_cli(tmp_path, *extra: str, timeout: int = 600):
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", OMP_NUM_THREADS="1",
               TOKENIZERS_PARALLELISM="false", TORCHINDUCTOR_CACHE_DIR=str(tmp_path / "inductor"))
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    command = [sys.executable, os.path.join(ROOT, "training", "train.py"), "--output_dir", str(tmp_path / "run"),
               "--hidden_size", "32", "--num_hidden_layers", "2", "--num_attention_heads", "2", "--block_size", "32",
               "--tokenizer_vocab_size", "400", "--eval_strategy", "no", "--sample_max_new_tokens", "0",
               "--disable_tqdm", "true", "--logging_steps", "1", "--validation_split_percentage", "2",
               "--max_steps", "2", "--torch_compile", "true", *extra]
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"stdout:\n{result.stdout[-3000:]}\nstderr:\n{result.stderr[-5000:]}"
    return json.loads((tmp_path / "run" / "config.json").read_text())


def test_train_py_torch_compile_runs_and_saves_public_keys(tmp_path):
    config = _train_cli(tmp_path, "--torch_compile_backend", "aot_eager", "--residual", "hyper")
    assert config["residual"] == "hyper"
    from safetensors.torch import load_file

    keys = load_file(str(tmp_path / "run" / "model.safetensors")).keys()
    assert not [k for k in keys if "_orig_mod" in k]  # the compiled wrapper never leaks into the checkpoint


@pytest.mark.slow  # inductor's code generation: minutes on a shared 2-core machine
def test_train_py_torch_compile_with_inductor(tmp_path):
    _train_cli(tmp_path, timeout=1800)

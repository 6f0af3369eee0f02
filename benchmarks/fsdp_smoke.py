"""FSDP smoke run of our LLaMA cell through `accelerate launch` (one GPU in benchmarks/gpu_check.sh).

Checks that the model really is sharded by FSDP (not silently run as plain DDP or a single device), trains a
few steps on one fixed batch (the loss must fall), gathers the full state dict with the public key names, and
reports tokens/s and peak memory. Launch, for example:

    accelerate launch --num_processes 1 --num_machines 1 --mixed_precision bf16 --dynamo_backend no \
        --use_fsdp --fsdp_version 2 --fsdp_auto_wrap_policy TRANSFORMER_BASED_WRAP \
        --fsdp_transformer_layer_cls_to_wrap SkipNormBlock --fsdp_state_dict_type FULL_STATE_DICT \
        benchmarks/fsdp_smoke.py --size gpu125m --steps 8 --json fsdp.json

Without `--use_fsdp` it runs the same loop unsharded and says so (`sharded: false`): the CPU smoke test uses
that to check the script itself.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # bench.py beside this file
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repository root

from accelerate import Accelerator  # noqa: E402

import bench  # noqa: E402
from hf_skipnorm.configuration_skipnorm import SkipNormConfig  # noqa: E402
from hf_skipnorm.modeling_skipnorm import SkipNormForCausalLM  # noqa: E402


def is_sharded(model: torch.nn.Module) -> bool:
    """True when FSDP wrapped the parameters: DTensors (FSDP2) or an FSDP1 wrapper somewhere in the tree."""
    from torch.distributed.fsdp import FullyShardedDataParallel

    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # torch < 2.4
        DTensor = ()
    if any(isinstance(p, DTensor) for p in model.parameters()):
        return True
    return any(isinstance(m, FullyShardedDataParallel) for m in model.modules())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="gpu125m", choices=tuple(bench.SIZES))
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=None, help="default: the size's batch")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()

    accelerator = Accelerator()
    shape = bench.SIZES[args.size]
    batch_size = args.batch_size or shape.batch_size
    torch.manual_seed(0)
    model = SkipNormForCausalLM(SkipNormConfig(**bench.llama_cell_kwargs(shape)))
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-4)
    model, optimizer = accelerator.prepare(model, optimizer)
    generator = torch.Generator().manual_seed(0)
    batch = torch.randint(3, shape.vocab_size, (batch_size, shape.seq_len), generator=generator).to(accelerator.device)

    def step() -> float:
        loss = model(input_ids=batch, labels=batch, use_cache=False).loss
        accelerator.backward(loss)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.item()  # .item() synchronizes, so the wall clock below is honest on CUDA

    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    losses = [step(), step()]  # warm-up steps, not timed
    start = time.perf_counter()
    for _ in range(args.steps):
        losses.append(step())
    seconds = time.perf_counter() - start

    state = accelerator.get_state_dict(model)  # gathers a full state dict (rank 0) under FSDP
    expected = {"model.embed_tokens.weight", "model.layers.0.attn_pre_norm.weight", "model.layers.0.mlp_pre_norm.weight",
                "model.final_norm.weight", "lm_head.weight"}
    result = {
        "distributed_type": str(accelerator.distributed_type),
        "fsdp_version": getattr(getattr(accelerator.state, "fsdp_plugin", None), "fsdp_version", None),
        "mixed_precision": accelerator.mixed_precision,
        "num_processes": accelerator.num_processes,
        "sharded": is_sharded(model),
        "size": args.size,
        "parameters": sum(v.numel() for v in state.values()) if accelerator.is_main_process else None,
        "state_dict_has_public_keys": expected.issubset(state) if accelerator.is_main_process else None,
        "tokens_per_s": batch.numel() * accelerator.num_processes * args.steps / seconds,
        "loss_first": losses[0],
        "loss_last": losses[-1],
        "loss_fell": losses[-1] < losses[0],
        "peak_memory_bytes": torch.cuda.max_memory_allocated() if torch.cuda.is_available() else None,
        "device": str(accelerator.device),
    }
    if accelerator.is_main_process:
        print(json.dumps(result, indent=1))
        if args.json:
            with open(args.json, "w") as out:
                json.dump(result, out, indent=1)
    accelerator.end_training()


if __name__ == "__main__":
    main()

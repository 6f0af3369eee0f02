"""Training-step time of every `residual` relative to `"add"`, measured side by side in one process.

Each candidate is our LLaMA cell (RMSNorm, SwiGLU, RoPE) with one field changed: `residual`. DeepNorm and Admin are
post-LN by definition, so they run with `norm_position="post"`, and `add@post` is measured too so their cost can
be read against post-LN add as well as against the pre-LN reference. The interleaved rounds, the ratio statistics
and the clock come from benchmarks/bench.py: every round runs all candidates (reversed every other round, so slow
drift of a shared machine hits all alike) and gives one step time per candidate; the table reports the median,
min and max over rounds of ``step time / step time of add``, and `best`: the fastest step of the candidate over the
fastest step of add (interference only slows a round, so this is the estimate least touched by a shared machine).
A ratio of 1.10 means 10% slower than add.

Usage:
    python benchmarks/residual_overhead.py                       # d=256, 4 layers, T=128, batch 4, CPU time
    python benchmarks/residual_overhead.py --rounds 3 --hidden-size 64 --seq-len 32     # a quick smoke run
    python benchmarks/residual_overhead.py --compile --rounds 3 --variants add,hyper,mhc   # compiled, fresh caches
    python benchmarks/residual_overhead.py --device cuda --hidden-size 1024 --layers 8 --seq-len 2048   # GPU, bf16
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import bench  # noqa: E402  (the shared harness: interleaved rounds, ratio statistics, the clock)
from hf_skipnorm import SkipNormConfig, SkipNormForCausalLM  # noqa: E402
from hf_skipnorm.configuration_skipnorm import POST_LN_RESIDUALS, RESIDUALS  # noqa: E402
from hf_skipnorm.ngpt_skipnorm import normalize_ngpt_weights_  # noqa: E402

# name -> config fields on top of the shared cell; "hyper" is the paper's best (dynamic), "hyper_static" SHC.
VARIANTS: dict[str, dict] = {residual: {"residual": residual} for residual in RESIDUALS}
VARIANTS["hyper_static"] = {"residual": "hyper", "hyper_dynamic": False}
VARIANTS["add@post"] = {"residual": "add", "norm_position": "post"}
VARIANTS["laurel_rw"] = {"residual": "laurel", "laurel_variant": "rw"}  # "laurel" itself is the RW+LR default
VARIANTS["laurel_lr"] = {"residual": "laurel", "laurel_variant": "lr"}
VARIANTS["laurel_pa"] = {"residual": "laurel", "laurel_variant": "pa"}  # previous activations, its own block state
VARIANTS["frac_static"] = {"residual": "frac", "hyper_dynamic": False}  # "frac" itself is dynamic (DFC)
# nGPT replaces the block (arXiv 2410.01131); its step includes the renormalization after the optimizer step.
VARIANTS["ngpt"] = {"architecture": "ngpt", "norm_position": "none", "tie_word_embeddings": False}
VARIANTS["resi_dual"] = {"residual": "add", "norm_position": "resi_dual"}  # the dual-stream placement
# `stream_recompute`: the stream mixing recomputed in backward (mHC's trade of time for saved activations)
VARIANTS["hyper_recompute"] = {"residual": "hyper", "stream_recompute": True}
VARIANTS["mhc_recompute"] = {"residual": "mhc", "stream_recompute": True}
# Issue 15's depth mixing: Block AttnRes (N=2 blocks of the default 4 layers) beside Full AttnRes (`attn_res`).
VARIANTS["attn_res_blocks2"] = {"residual": "attn_res", "attn_res_blocks": 2}
VARIANTS["value_residual_learned"] = {"residual": "add", "value_residual": "learned"}
VARIANTS["value_residual_per_token"] = {"residual": "add", "value_residual": "per_token"}
VARIANTS["unet_skips"] = {"residual": "add", "unet_skips": True}
VARIANTS["layer_drop"] = {"residual": "add", "layer_drop": 0.1}
VARIANTS["qk_per_head_gains"] = {"residual": "add", "qk_norm": "per_head_gains"}
VARIANTS["dense_2x2"] = {"residual": "dense", "dense_dilation": 2, "dense_period": 2}  # k x p-DenseFormer
for residual in POST_LN_RESIDUALS:
    VARIANTS[residual]["norm_position"] = "post"


class ResidualCandidate:
    """One model, its AdamW and a fixed batch; `run("train", ...)` returns tokens/s as bench.Candidate does."""

    def __init__(self, name: str, fields: dict, args, compile_model: bool = False):
        config = SkipNormConfig(
            vocab_size=args.vocab_size, hidden_size=args.hidden_size, num_hidden_layers=args.layers,
            num_attention_heads=args.heads, max_position_embeddings=args.seq_len, **fields,
        )
        torch.manual_seed(0)
        self.name = name
        self.env = bench.Env(torch.device(args.device), getattr(torch, args.dtype), "auto")
        model = SkipNormForCausalLM._from_config(config, attn_implementation="sdpa", dtype=self.env.dtype)
        self.model = model.to(self.env.device).train()
        self.forward = torch.compile(self.model) if compile_model else self.model
        self.parameters = sum(p.numel() for p in self.model.parameters())
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=1e-4)
        generator = torch.Generator().manual_seed(1234)
        self.batch = torch.randint(3, args.vocab_size, (args.batch_size, args.seq_len), generator=generator)
        self.batch = self.batch.to(self.env.device)

    def train(self) -> tuple[int, float]:
        bench.sync(self.env)
        start = bench.clock()
        self.forward(input_ids=self.batch, labels=self.batch, use_cache=False).loss.backward()
        self.optimizer.step()
        if self.model.config.architecture == "ngpt":  # what NGPTNormalizeCallback does after every step
            normalize_ngpt_weights_(self.model)
        self.optimizer.zero_grad(set_to_none=True)
        bench.sync(self.env)
        return self.batch.numel(), bench.clock() - start

    def run(self, metric: str, min_seconds: float, max_repeats: int) -> float:
        tokens = seconds = 0.0
        repeats = 0
        while repeats == 0 or (seconds < min_seconds and repeats < max_repeats):
            t, s = getattr(self, metric)()
            tokens, seconds, repeats = tokens + t, seconds + s, repeats + 1
        return tokens / seconds


def compiled_child(name: str, args) -> dict:
    """Inside a fresh process with an empty inductor cache: compile one variant, time its first call, then its
    steady-state training tokens/s."""
    candidate = ResidualCandidate(name, VARIANTS[name], args, compile_model=True)
    start = time.perf_counter()
    candidate.run("train", 0.0, 1)
    first_call = time.perf_counter() - start
    candidate.run("train", 0.0, 1)  # settle recompilation and allocator
    rates = [candidate.run("train", args.min_seconds, 50) for _ in range(args.child_rounds)]
    return {"tokens_per_s": statistics.median(rates), "first_call_s": first_call}


def compiled_rounds(names: list[str], args) -> tuple[dict, dict]:
    """Per round, one fresh process per variant (alternating order), each with its own inductor cache: no variant
    reuses kernels another compiled (the project's rule for comparing compiled models)."""
    per_round: dict[str, list[float]] = {name: [] for name in names}
    first_calls: dict[str, list[float]] = {name: [] for name in names}
    forwarded = argv_of(args)
    for round_index in range(args.rounds):
        for name in (names if round_index % 2 == 0 else names[::-1]):
            with tempfile.TemporaryDirectory(prefix="overhead-inductor-") as cache:
                env = dict(os.environ, TORCHINDUCTOR_CACHE_DIR=os.path.join(cache, "inductor"),
                           TRITON_CACHE_DIR=os.path.join(cache, "triton"))
                done = subprocess.run([sys.executable, os.path.abspath(__file__), *forwarded, "--child", name],
                                      capture_output=True, text=True, env=env, timeout=3600)
            if done.returncode != 0:
                raise RuntimeError(f"compiled child {name} failed:\n{done.stderr[-2000:]}")
            result = json.loads(done.stdout.strip().splitlines()[-1])
            per_round[name].append(result["tokens_per_s"])
            first_calls[name].append(result["first_call_s"])
            print(f"  round {round_index + 1}: {name} compiled {result['tokens_per_s']:.0f} tok/s, first call "
                  f"{result['first_call_s']:.1f} s", file=sys.stderr, flush=True)
    return per_round, first_calls


def argv_of(args) -> list[str]:
    """The shape and timing options of this run, for a child process."""
    return ["--hidden-size", str(args.hidden_size), "--layers", str(args.layers), "--heads", str(args.heads),
            "--seq-len", str(args.seq_len), "--batch-size", str(args.batch_size), "--vocab-size", str(args.vocab_size),
            "--min-seconds", str(args.min_seconds), "--threads", str(args.threads), "--clock", args.clock,
            "--device", args.device, "--dtype", args.dtype, "--child-rounds", str(args.child_rounds)]


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden-size", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--vocab-size", type=int, default=4096)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--min-seconds", type=float, default=0.3, help="per candidate per round")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--clock", choices=("cpu", "wall"), default=None,
                        help="cpu: this process's CPU time (robust on a shared machine with one thread; the default "
                             "on CPU); wall: wall time (the default on CUDA, synchronized)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default=None, help="float32 (CPU default) or bfloat16 (CUDA default)")
    parser.add_argument("--compile", action="store_true",
                        help="torch.compile every variant, each in a fresh process per round with its own cache")
    parser.add_argument("--child-rounds", type=int, default=3, help="--compile: timed repeats inside each process")
    parser.add_argument("--no-memory", action="store_true", help="skip the saved-activation measurement")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--json", default=None, help="write the results here")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.dtype = args.dtype or ("bfloat16" if args.device.startswith("cuda") else "float32")
    args.clock = args.clock or ("cpu" if args.device == "cpu" else "wall")

    torch.set_num_threads(args.threads)
    bench.CLOCK = time.process_time if args.clock == "cpu" else time.perf_counter
    if args.child:
        print(json.dumps(compiled_child(args.child, args)))
        return {}
    names = args.variants.split(",")
    unknown = [name for name in names if name not in VARIANTS]
    if unknown:
        raise ValueError(f"--variants: unknown {unknown}; choices: {', '.join(VARIANTS)}")
    reference = "add"
    if reference not in names:
        names = [reference] + names
    candidates = [ResidualCandidate(name, VARIANTS[name], args) for name in names]
    saved = {} if args.no_memory else {c.name: bench.saved_activation_bytes(c) for c in candidates}
    parameters = {c.name: c.parameters for c in candidates}
    if args.compile:
        del candidates
        per_round, first_calls = compiled_rounds(names, args)
    else:
        for candidate in candidates:  # warm-up: allocator, AdamW state
            candidate.run("train", 0.0, 1)
        per_round = bench.interleaved_rounds(candidates, "train", args.rounds, args.min_seconds, max_repeats=50)
        first_calls = {}
    rows = []
    for name in names:
        # tokens/s ratio add / candidate = step time of candidate / step time of add
        stats = bench.ratio_stats(per_round, reference, name)
        row = {"residual": name, "parameters": parameters[name], "step_time_vs_add": stats,
               "tokens_per_s": bench.summarize(per_round[name])}
        if saved:
            row["saved_activation_bytes"] = saved[name]
            row["saved_activations_vs_add"] = saved[name] / saved[reference]
        if first_calls:
            row["first_call_s"] = first_calls[name]
        rows.append(row)
    shape = (f"d={args.hidden_size}, L={args.layers}, heads={args.heads}, T={args.seq_len}, batch={args.batch_size}, "
             f"vocab={args.vocab_size}, {args.device} {args.dtype}, {args.threads} thread(s), {args.clock} clock, "
             f"{args.rounds} rounds, {'compiled (fresh process + cache per variant and round)' if args.compile else 'eager'}, "
             f"torch {torch.__version__}")
    print(f"Training-step time relative to residual='add' ({shape})\n")
    print("| residual | params | step time / add (median) | min | max | best / best | saved activations MiB | vs add |"
          + (" first compiled call s |" if first_calls else ""))
    print("|---|---|---|---|---|---|---|---|" + ("---|" if first_calls else ""))
    for row in rows:
        s = row["step_time_vs_add"]
        memory = (f"{row['saved_activation_bytes'] / 2**20:,.1f} | {row['saved_activations_vs_add']:.2f}"
                  if saved else "- | -")
        first = f" {statistics.median(row['first_call_s']):.1f} |" if first_calls else ""
        print(f"| {row['residual']} | {row['parameters']:,} | {s['median']:.3f} | {s['min']:.3f} | {s['max']:.3f} | "
              f"{s['best']:.3f} | {memory} |{first}")
    result = {"shape": shape, "rows": rows}
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(result, handle, indent=2)
    return result


if __name__ == "__main__":
    main()

"""Training-step time of every `residual` relative to `"add"`, measured side by side in one process.

Each candidate is our LLaMA cell (RMSNorm, SwiGLU, RoPE) with one field changed: `residual`. DeepNorm and Admin are
post-LN by definition, so they run with `norm_position="post"`, and `add@post` is measured too so their cost can
be read against post-LN add as well as against the pre-LN reference. The interleaved rounds, the ratio statistics
and the clock come from benchmarks/bench.py: every round runs all candidates (reversed every other round, so slow
drift of a shared machine hits all alike) and gives one step time per candidate; the table reports the median,
min and max over rounds of ``step time / step time of add``. A ratio of 1.10 means 10% slower than add.

Usage:
    python benchmarks/residual_overhead.py                       # d=256, 4 layers, T=128, batch 4, CPU time
    python benchmarks/residual_overhead.py --rounds 3 --hidden-size 64 --seq-len 32     # a quick smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import sys
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
VARIANTS["frac_static"] = {"residual": "frac", "hyper_dynamic": False}  # "frac" itself is dynamic (DFC)
# nGPT replaces the block (arXiv 2410.01131); its step includes the renormalization after the optimizer step.
VARIANTS["ngpt"] = {"architecture": "ngpt", "norm_position": "none", "tie_word_embeddings": False}
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

    def __init__(self, name: str, fields: dict, args):
        config = SkipNormConfig(
            vocab_size=args.vocab_size, hidden_size=args.hidden_size, num_hidden_layers=args.layers,
            num_attention_heads=args.heads, max_position_embeddings=args.seq_len, **fields,
        )
        torch.manual_seed(0)
        self.name = name
        self.model = SkipNormForCausalLM._from_config(config, attn_implementation="sdpa").train()
        self.parameters = sum(p.numel() for p in self.model.parameters())
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=1e-4)
        generator = torch.Generator().manual_seed(1234)
        self.batch = torch.randint(3, args.vocab_size, (args.batch_size, args.seq_len), generator=generator)

    def train(self) -> tuple[int, float]:
        start = bench.clock()
        self.model(input_ids=self.batch, labels=self.batch, use_cache=False).loss.backward()
        self.optimizer.step()
        if self.model.config.architecture == "ngpt":  # what NGPTNormalizeCallback does after every step
            normalize_ngpt_weights_(self.model)
        self.optimizer.zero_grad(set_to_none=True)
        return self.batch.numel(), bench.clock() - start

    def run(self, metric: str, min_seconds: float, max_repeats: int) -> float:
        tokens = seconds = 0.0
        repeats = 0
        while repeats == 0 or (seconds < min_seconds and repeats < max_repeats):
            t, s = getattr(self, metric)()
            tokens, seconds, repeats = tokens + t, seconds + s, repeats + 1
        return tokens / seconds


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
    parser.add_argument("--clock", choices=("cpu", "wall"), default="cpu",
                        help="cpu: this process's CPU time (robust on a shared machine with one thread); wall: wall time")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--json", default=None, help="write the results here")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    bench.CLOCK = time.process_time if args.clock == "cpu" else time.perf_counter
    names = args.variants.split(",")
    candidates = [ResidualCandidate(name, VARIANTS[name], args) for name in names]
    for candidate in candidates:  # warm-up: allocator, AdamW state
        candidate.run("train", 0.0, 1)
    per_round = bench.interleaved_rounds(candidates, "train", args.rounds, args.min_seconds, max_repeats=50)
    reference = "add"
    rows = []
    for candidate in candidates:
        # tokens/s ratio add / candidate = step time of candidate / step time of add
        stats = bench.ratio_stats(per_round, reference, candidate.name)
        rows.append({"residual": candidate.name, "parameters": candidate.parameters,
                     "step_time_vs_add": stats, "tokens_per_s": bench.summarize(per_round[candidate.name])})
    shape = (f"d={args.hidden_size}, L={args.layers}, heads={args.heads}, T={args.seq_len}, batch={args.batch_size}, "
             f"vocab={args.vocab_size}, {args.threads} thread(s), {args.clock} clock, {args.rounds} rounds, "
             f"torch {torch.__version__}")
    print(f"Training-step time relative to residual='add' ({shape})\n")
    print("| residual | params | step time / add (median) | min | max |")
    print("|---|---|---|---|---|")
    for row in rows:
        s = row["step_time_vs_add"]
        print(f"| {row['residual']} | {row['parameters']:,} | {s['median']:.3f} | {s['min']:.3f} | {s['max']:.3f} |")
    result = {"shape": shape, "rows": rows}
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(result, handle, indent=2)
    return result


if __name__ == "__main__":
    main()

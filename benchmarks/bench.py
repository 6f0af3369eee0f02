"""Side-by-side throughput benchmarks: hf_skipnorm against transformers' own LLaMA and GPT-2.

Every model is built from a config with random weights (nothing is downloaded). All candidates of a
comparison live in one process and are measured in interleaved rounds (A B C, then C B A, ...), so slow
drift of a shared machine hits every candidate alike; each round gives one throughput per candidate and
one ratio per candidate against the reference, and the tables report the median, min and max of those
per-round ratios. Absolute tokens/s on a shared machine are noisy; the ratios are the result.

Metrics (per candidate):
- train:   tokens/s of a full training step (forward with labels + backward + AdamW step + zero_grad).
- prefill: tokens/s of a no-grad forward over the whole batch (use_cache=False, full logits).
- decode:  new tokens/s of greedy `generate` with the KV cache: exactly `new_tokens` per sequence
           (min_new_tokens = max_new_tokens, no EOS), timed end to end over a short prompt.
- memory:  peak memory of one steady-state training step (after a warm-up step created the AdamW
           state). CUDA: torch.cuda.max_memory_allocated after reset_peak_memory_stats. CPU: a fresh
           subprocess per candidate with glibc's mmap threshold pinned at 64 KiB (so freed tensors go back
           to the OS), peak RSS (VmHWM, reset through /proc/self/clear_refs just before the step) minus the
           RSS measured after imports, before the model was built. Both include weights, AdamW state,
           gradients and the activation peak.
- FLOPs/token and MFU: PaLM's formula (Chowdhery et al. 2022, arXiv 2204.02311, appendix B):
           training = 6 N + 12 L H Q T, forward only = 2 N + 4 L H Q T, where N counts the weights of
           every matrix multiply (all nn.Linear / Conv1D weights, lm_head included, embedding tables
           excluded), L layers, H heads, Q head dim, T sequence length (full T x T attention, as PaLM).
           Norms, activations and softmax are not counted. MFU = achieved model FLOP/s over the matrix
           multiply peak measured in the same run (best of several square matmuls in the run's dtype).

Usage:
    python benchmarks/bench.py --sizes tiny,small --suites llama,gpt2,placements,seqlen,compile \
        --threads 1 --json benchmarks/results_cpu.json --markdown benchmarks/RESULTS.md
    python benchmarks/bench.py --dry-run          # every suite at the tiny size, 1 round, seconds
    python benchmarks/bench.py --decode-counts --sizes tiny,small   # load-independent per-token counts, no timing
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import gc
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
import traceback
from dataclasses import asdict, dataclass, replace
from typing import Callable

import torch
from torch import nn

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import transformers  # noqa: E402
from transformers import GenerationConfig, GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM  # noqa: E402
from transformers.pytorch_utils import Conv1D  # noqa: E402

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)

try:  # the package is optional so the harness itself can be checked against transformers alone
    import hf_skipnorm  # noqa: F401
    from hf_skipnorm import configuration_skipnorm as skipnorm_configuration
    from hf_skipnorm.configuration_skipnorm import SkipNormConfig
    from hf_skipnorm.modeling_skipnorm import SkipNormForCausalLM

    SKIPNORM_IMPORT_ERROR = None
except Exception as error:  # noqa: BLE001 - reported in the results instead of crashing the harness
    SkipNormConfig = SkipNormForCausalLM = skipnorm_configuration = None
    SKIPNORM_IMPORT_ERROR = f"{type(error).__name__}: {error}"


# --------------------------------------------------------------------------------------------------
# Shapes
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Shape:
    """One model size plus the batch it is measured with; every candidate of a comparison shares it."""

    name: str
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    seq_len: int
    batch_size: int
    vocab_size: int
    gated_intermediate_size: int  # SwiGLU width, LLaMA's 8/3 d rounded up to a multiple of 16 or 256
    plain_intermediate_size: int  # GELU MLP width, GPT-2's 4 d
    prompt_len: int  # decode prompt
    new_tokens: int  # decode length, exactly this many per sequence
    decode_batch: int

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads


SIZES = {
    # d=64: seconds on one CPU core; for the smoke test and --dry-run.
    "tiny": Shape("tiny", 64, 2, 4, 64, 2, 512, 176, 256, 8, 16, 1),
    # The "small" (d=512, 8 layers, T=256) and "medium" (d=768, 12 layers, T=512).
    "small": Shape("small", 512, 8, 8, 256, 4, 8192, 1376, 2048, 16, 32, 1),
    "medium": Shape("medium", 768, 12, 12, 512, 2, 16384, 2048, 3072, 16, 32, 1),
    # Sequence-length sweep base; T is replaced by each --seq-lens value (batch 1, so tokens/step = T).
    "sweep": Shape("sweep", 256, 4, 4, 128, 1, 4096, 688, 1024, 16, 16, 1),
    # GPU sizes (benchmarks/gpu_check.sh): ~134M and ~373M parameters with a 32k vocabulary, untied head.
    "gpu125m": Shape("gpu125m", 768, 12, 12, 2048, 8, 32000, 2048, 3072, 128, 64, 8),
    "gpu350m": Shape("gpu350m", 1024, 24, 16, 2048, 8, 32000, 2816, 4096, 128, 64, 8),
}


def clock() -> float:
    """The timer of every measurement: wall time, or this process's CPU time (--clock cpu). On a shared CPU
    machine with one torch thread, CPU time counts the work done and not the time spent waiting for a core."""
    return CLOCK()


CLOCK = time.perf_counter


@dataclass
class Env:
    device: torch.device
    dtype: torch.dtype
    sdpa_backend: str  # "auto" or a torch SDPBackend name forced around every measurement


# --------------------------------------------------------------------------------------------------
# Candidates: name -> builder(shape, env) -> nn.Module (a causal LM with `generate`)
# --------------------------------------------------------------------------------------------------
def _finish(model: nn.Module, env: Env) -> nn.Module:
    return model.to(device=env.device, dtype=env.dtype)


def build_llama(shape: Shape, env: Env) -> nn.Module:
    """transformers' LlamaForCausalLM with sdpa attention: the model a user would otherwise pick."""
    config = LlamaConfig(
        vocab_size=shape.vocab_size,
        hidden_size=shape.hidden_size,
        intermediate_size=shape.gated_intermediate_size,
        num_hidden_layers=shape.num_hidden_layers,
        num_attention_heads=shape.num_attention_heads,
        num_key_value_heads=shape.num_attention_heads,
        max_position_embeddings=max(shape.seq_len, shape.prompt_len + shape.new_tokens),
        rms_norm_eps=1e-5,
        tie_word_embeddings=False,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    torch.manual_seed(0)
    return _finish(LlamaForCausalLM._from_config(config, attn_implementation="sdpa"), env)


def build_gpt2(shape: Shape, env: Env) -> nn.Module:
    """transformers' GPT2LMHeadModel (pre-LN, LayerNorm, learned positions, tanh-GELU MLP, tied head)."""
    config = GPT2Config(
        vocab_size=shape.vocab_size,
        n_positions=max(shape.seq_len, shape.prompt_len + shape.new_tokens),
        n_embd=shape.hidden_size,
        n_layer=shape.num_hidden_layers,
        n_head=shape.num_attention_heads,
        n_inner=shape.plain_intermediate_size,
        activation_function="gelu_new",
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        layer_norm_epsilon=1e-5,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    torch.manual_seed(0)
    return _finish(GPT2LMHeadModel._from_config(config, attn_implementation="sdpa"), env)


def llama_cell_kwargs(shape: Shape) -> dict:
    """Our config for LLaMA's cell: pre + rmsnorm + gated SiLU + RoPE, no biases, untied head."""
    return dict(
        vocab_size=shape.vocab_size,
        hidden_size=shape.hidden_size,
        intermediate_size=shape.gated_intermediate_size,
        num_hidden_layers=shape.num_hidden_layers,
        num_attention_heads=shape.num_attention_heads,
        num_key_value_heads=shape.num_attention_heads,
        max_position_embeddings=max(shape.seq_len, shape.prompt_len + shape.new_tokens),
        hidden_act="silu",
        mlp_type="gated",
        position_embedding="rope",
        norm_position="pre",
        norm_type="rmsnorm",
        norm_eps=1e-5,
        residual="add",
        attention_bias=False,
        mlp_bias=False,
        tie_word_embeddings=False,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )


def gpt2_cell_kwargs(shape: Shape) -> dict:
    """Our config for GPT-2's cell: pre + layernorm + plain tanh-GELU MLP + learned positions, biases, tied."""
    kwargs = llama_cell_kwargs(shape)
    kwargs.update(
        intermediate_size=shape.plain_intermediate_size,
        hidden_act="gelu_new",
        mlp_type="plain",
        position_embedding="learned",
        norm_type="layernorm",
        norm_bias=True,
        attention_bias=True,
        mlp_bias=True,
        tie_word_embeddings=True,
    )
    return kwargs


def build_ours(kwargs: dict, env: Env) -> nn.Module:
    if SkipNormForCausalLM is None:
        raise RuntimeError(f"hf_skipnorm is not importable: {SKIPNORM_IMPORT_ERROR}")
    config = SkipNormConfig(**kwargs)
    torch.manual_seed(0)
    return _finish(SkipNormForCausalLM._from_config(config, attn_implementation="sdpa"), env)


def skipnorm_vocabulary(name: str) -> tuple:
    """A vocabulary tuple of the config module, read at run time so values added later appear here."""
    if skipnorm_configuration is None:
        return ()
    return tuple(v for v in getattr(skipnorm_configuration, name, ()) if isinstance(v, str))


def build_variant(shape: Shape, env: Env, field: str, value: str) -> nn.Module:
    """Our LLaMA cell with one field changed. A residual that the config allows only with post-LN (DeepNet, Admin)
    is built on `norm_position="post"` instead, and the model says so in `benchmark_note`."""
    try:
        return build_ours({**llama_cell_kwargs(shape), field: value}, env)
    except ValueError as error:
        if field != "residual" or "norm_position='post'" not in str(error):
            raise
        model = build_ours({**llama_cell_kwargs(shape), field: value, "norm_position": "post"}, env)
        model.benchmark_note = "built on post: the config refuses it with pre"
        return model


def candidate_builder(name: str) -> Callable[[Shape, Env], nn.Module]:
    """Resolve a candidate name. Names: llama, gpt2, ours_llama, ours_gpt2, and our LLaMA cell with one
    field changed: ours_pos_<norm_position>, ours_res_<residual>, ours_type_<norm_type>."""
    if name == "llama":
        return build_llama
    if name == "gpt2":
        return build_gpt2
    if name == "ours_llama":
        return lambda shape, env: build_ours(llama_cell_kwargs(shape), env)
    if name == "ours_gpt2":
        return lambda shape, env: build_ours(gpt2_cell_kwargs(shape), env)
    for prefix, field in (("ours_pos_", "norm_position"), ("ours_res_", "residual"), ("ours_type_", "norm_type")):
        if name.startswith(prefix):
            value = name[len(prefix):]
            return lambda shape, env, field=field, value=value: build_variant(shape, env, field, value)
    raise ValueError(f"unknown candidate {name!r}")


# --------------------------------------------------------------------------------------------------
# A built candidate and its measured work
# --------------------------------------------------------------------------------------------------
def sync(env: Env) -> None:
    if env.device.type == "cuda":
        torch.cuda.synchronize()


def attention_context(env: Env):
    if env.sdpa_backend == "auto":
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([getattr(SDPBackend, env.sdpa_backend.upper())])


def matmul_parameter_count(model: nn.Module) -> int:
    """N of PaLM's formula: weights of every matrix multiply (Linear/Conv1D, lm_head too), counted once."""
    seen, total = set(), 0
    for module in model.modules():
        if isinstance(module, (nn.Linear, Conv1D)) and id(module.weight) not in seen:
            seen.add(id(module.weight))
            total += module.weight.numel()
    return total


def flops_per_token(n_matmul: int, shape: Shape, training: bool) -> float:
    """PaLM appendix B: 6N + 12 L H Q T for training, a third of it (2N + 4 L H Q T) forward only."""
    attention = 12 * shape.num_hidden_layers * shape.num_attention_heads * shape.head_dim * shape.seq_len
    per_token = 6 * n_matmul + attention
    return per_token if training else per_token / 3


class Candidate:
    """One built model with its optimizer and fixed inputs, and the three timed workloads."""

    def __init__(self, name: str, shape: Shape, env: Env, compile_model: bool = False):
        self.name, self.shape, self.env, self.compiled = name, shape, env, compile_model
        base_name = name.removesuffix("@compile")
        self.model = candidate_builder(base_name)(shape, env)
        self.model.train()
        self.parameters = sum(p.numel() for p in self.model.parameters())
        self.n_matmul = matmul_parameter_count(self.model)
        self.norm_modules = count_norm_modules(self.model)
        self.note = getattr(self.model, "benchmark_note", "")
        stream = getattr(getattr(self.model, "model", None), "residual_stream", None)
        self.single_stream = stream is None or type(stream).__name__ == "SingleStream"
        self.forward = torch.compile(self.model) if compile_model else self.model
        # foreach=False would slow every candidate alike; the default (foreach) is what users get.
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=1e-4)
        generator = torch.Generator().manual_seed(1234)
        low = 3  # skip pad/bos/eos ids
        self.batch = torch.randint(low, shape.vocab_size, (shape.batch_size, shape.seq_len), generator=generator).to(env.device)
        self.prompt = torch.randint(low, shape.vocab_size, (shape.decode_batch, shape.prompt_len), generator=generator).to(env.device)
        self.generation_config = GenerationConfig(
            max_new_tokens=shape.new_tokens,
            min_new_tokens=shape.new_tokens,
            do_sample=False,
            use_cache=True,
            pad_token_id=0,
            bos_token_id=None,
            eos_token_id=None,
        )
        if compile_model:
            # Static cache + generate's own compilation of the decoding forward; on CPU generate only
            # compiles when asked to compile on every device.
            from transformers import CompileConfig

            compile_config = CompileConfig() if env.device.type == "cuda" else CompileConfig(mode="default")
            compile_config._compile_all_devices = True  # a class-level switch, not a constructor argument
            self.generation_config.cache_implementation = "static"
            self.generation_config.compile_config = compile_config
        self.first_call_seconds: dict[str, float] = {}

    # Each workload returns (tokens processed, seconds).
    def train(self) -> tuple[int, float]:
        sync(self.env)
        start = clock()
        with attention_context(self.env):
            loss = self.forward(input_ids=self.batch, labels=self.batch, use_cache=False).loss
            loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        sync(self.env)
        return self.batch.numel(), clock() - start

    def prefill(self) -> tuple[int, float]:
        sync(self.env)
        start = clock()
        with torch.inference_mode(), attention_context(self.env):
            self.forward(input_ids=self.batch, use_cache=False)
        sync(self.env)
        return self.batch.numel(), clock() - start

    def decode(self) -> tuple[int, float]:
        self.model.eval()
        sync(self.env)
        start = clock()
        # Decoding runs on sdpa's automatic kernel choice even when --sdpa-backend forces one: the compiled path's
        # static cache needs an explicit mask, which the flash kernel does not take.
        with torch.inference_mode():
            out = self.model.generate(self.prompt, generation_config=self.generation_config)
        sync(self.env)
        seconds = clock() - start
        self.model.train()
        new = out.shape[1] - self.prompt.shape[1]
        if new != self.shape.new_tokens:  # the comparison is only fair at a fixed length
            raise RuntimeError(f"{self.name} generated {new} tokens, expected {self.shape.new_tokens}")
        return out.shape[0] * new, seconds

    def run(self, metric: str, min_seconds: float, max_repeats: int) -> float:
        """Tokens/s of `metric`, repeating the workload until `min_seconds` elapsed (at least once)."""
        workload = getattr(self, metric)
        tokens = seconds = 0.0
        repeats = 0
        while repeats == 0 or (seconds < min_seconds and repeats < max_repeats):
            t, s = workload()
            tokens, seconds, repeats = tokens + t, seconds + s, repeats + 1
        return tokens / seconds

    def warm_up(self, metric: str) -> None:
        workload = getattr(self, metric)
        start = time.perf_counter()
        workload()
        self.first_call_seconds[metric] = time.perf_counter() - start
        workload()  # the second call settles allocator caches (and, compiled, any recompilation)


def decode_counts(name: str, shape: Shape, env: Env) -> dict:
    """Per generated token of greedy `generate` (the decode workload, prefill included, divided by `new_tokens`):
    Python function calls and C function calls (`sys.setprofile` events) and aten ops (a `TorchDispatchMode`
    counter). Unlike times they do not depend on the machine's load: the primary evidence for per-call overhead."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class OpCounter(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.ops = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.ops += 1
            return func(*args, **(kwargs or {}))

    candidate = Candidate(name, shape, env)
    model = candidate.model.eval()

    def generate():  # what `Candidate.decode` times
        with torch.inference_mode():
            model.generate(candidate.prompt, generation_config=candidate.generation_config)

    generate()  # warm-up: lazy imports and caches are not per-token work
    calls = {"call": 0, "c_call": 0}

    def profile(frame, event, arg):
        if event in calls:
            calls[event] += 1

    sys.setprofile(profile)
    try:
        generate()
    finally:
        sys.setprofile(None)
    with OpCounter() as counter:
        generate()
    tokens = shape.decode_batch * shape.new_tokens
    return {"python_calls": calls["call"] / tokens, "c_calls": calls["c_call"] / tokens, "aten_ops": counter.ops / tokens}


def print_decode_counts(sizes: list[str], env: Env) -> dict:
    counts = {}
    print("| size | model | Python calls / token | C calls / token | aten ops / token |\n|---|---|---:|---:|---:|")
    for size in sizes:
        for name in ("llama", "ours_llama", "gpt2", "ours_gpt2"):
            row = counts.setdefault(size, {})[name] = decode_counts(name, SIZES[size], env)
            print(f"| {size} | {name} | {row['python_calls']:.1f} | {row['c_calls']:.1f} | {row['aten_ops']:.1f} |",
                  flush=True)
    return counts


def count_norm_modules(model: nn.Module) -> int:
    """Norm modules actually present: attributes named *norm that are not identities or parameter-free
    stand-ins (our absent slots are nn.Identity)."""
    count = 0
    for name, module in model.named_modules():
        leaf = name.rsplit(".", 1)[-1].lower()
        if (leaf.endswith("norm") or leaf.startswith("ln_") or leaf.endswith("layernorm")) and not isinstance(module, nn.Identity):
            if "Identity" not in type(module).__name__:
                count += 1
    return count


# --------------------------------------------------------------------------------------------------
# Measurement loops
# --------------------------------------------------------------------------------------------------
def summarize(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def interleaved_rounds(candidates: list[Candidate], metric: str, rounds: int, min_seconds: float, max_repeats: int) -> dict:
    """Per-round throughput of every candidate; odd rounds run in reverse order to cancel linear drift."""
    per_round: dict[str, list[float]] = {c.name: [] for c in candidates}
    for round_index in range(rounds):
        order = candidates if round_index % 2 == 0 else candidates[::-1]
        for candidate in order:
            per_round[candidate.name].append(candidate.run(metric, min_seconds, max_repeats))
    return per_round


def ratio_stats(per_round: dict[str, list[float]], numerator: str, denominator: str) -> dict:
    """median / min / max of the per-round ratios, and `best`: the ratio of the two candidates' fastest rounds.
    Interference on a shared machine only ever slows a round down, so the fastest round of each is the estimate
    least touched by it; a verdict should hold for both the median and `best`."""
    stats = summarize([a / b for a, b in zip(per_round[numerator], per_round[denominator])])
    stats["best"] = max(per_round[numerator]) / max(per_round[denominator])
    return stats


def measure_matmul_peak(env: Env, seconds: float = 1.0) -> float:
    """FLOP/s of the best square matmul in the run's dtype (n=1024 on CPU, 8192 on CUDA)."""
    n = 8192 if env.device.type == "cuda" else 1024
    a = torch.randn(n, n, device=env.device).to(env.dtype)
    b = torch.randn(n, n, device=env.device).to(env.dtype)
    for _ in range(3):
        torch.mm(a, b)
    sync(env)
    best = math.inf
    deadline = time.perf_counter() + seconds
    while True:
        sync(env)
        start = clock()
        torch.mm(a, b)
        sync(env)
        best = min(best, clock() - start)
        if time.perf_counter() > deadline:
            break
    return 2 * n**3 / best


def _read_status_kib(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def memory_child(name: str, shape: Shape, env: Env) -> dict:
    """Runs inside a fresh process (CPU) or in-process (CUDA): peak bytes of one steady-state train step."""
    if env.device.type == "cuda":
        gc.collect()
        torch.cuda.empty_cache()
        base = torch.cuda.memory_allocated()
        candidate = Candidate(name, shape, env)
        candidate.train()
        gc.collect()
        before_step = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        candidate.train()
        peak = torch.cuda.max_memory_allocated()
        result = {"peak_bytes": peak - base, "step_extra_bytes": peak - before_step, "method": "torch.cuda.max_memory_allocated"}
        del candidate
        gc.collect()
        torch.cuda.empty_cache()
        return result
    base = _read_status_kib("VmRSS")
    candidate = Candidate(name, shape, env)
    candidate.train()  # creates AdamW state; gradients are freed by zero_grad(set_to_none=True)
    gc.collect()
    before_step = _read_status_kib("VmRSS")
    with open("/proc/self/clear_refs", "w") as clear:  # "5" resets VmHWM to the current RSS
        clear.write("5")
    candidate.train()
    peak = _read_status_kib("VmHWM")
    return {
        "peak_bytes": (peak - base) * 1024,
        "step_extra_bytes": (peak - before_step) * 1024,
        "method": "peak RSS (VmHWM) of a fresh process minus RSS after imports, MALLOC_MMAP_THRESHOLD_=65536",
    }


def saved_activation_bytes(candidate: "Candidate") -> int:
    """Bytes that autograd keeps for the backward pass of one training forward (loss included): every tensor
    saved for backward, counted once per storage, parameters excluded. Exact and the same on every device, so it
    separates the models' activation memory from allocator and process noise."""
    parameters = {p.untyped_storage().data_ptr() for p in candidate.model.parameters()}
    storages: dict[int, int] = {}

    def pack(tensor: torch.Tensor):
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in parameters:
            storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor), attention_context(candidate.env):
        loss = candidate.forward(input_ids=candidate.batch, labels=candidate.batch, use_cache=False).loss
    del loss
    return sum(storages.values())


def measure_memory(name: str, shape: Shape, env: Env, args) -> dict:
    if env.device.type == "cuda":
        return memory_child(name, shape, env)
    command = [
        sys.executable, os.path.abspath(__file__), "--memory-child", name,
        "--shape-json", json.dumps(asdict(shape)), "--device", "cpu", "--dtype", args.dtype,
        "--threads", str(torch.get_num_threads()),
    ]
    child_env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="65536")
    completed = subprocess.run(command, capture_output=True, text=True, env=child_env, timeout=1800)
    if completed.returncode != 0:
        raise RuntimeError(f"memory child for {name} failed:\n{completed.stderr[-2000:]}")
    return json.loads(completed.stdout.strip().splitlines()[-1])


def time_norm(shape: Shape, env: Env, rounds: int, chain: int = 16) -> float:
    """Seconds of one RMSNorm forward+backward on a (B, T, d) activation: the unit an extra norm adds to a
    training step. `chain` norms are applied in sequence inside one autograd graph, so the per-norm time
    excludes the fixed cost of starting a backward pass; median of `rounds` after two warm-ups."""
    if SkipNormConfig is not None:  # the norm our LLaMA cell adds, exactly
        from hf_skipnorm.norms_skipnorm import build_norm

        config = SkipNormConfig(**llama_cell_kwargs(shape))
        norms = [build_norm(config, shape.hidden_size).to(env.device, env.dtype) for _ in range(chain)]
        for norm in norms:
            nn.init.ones_(norm.weight)
    else:
        norms = [nn.RMSNorm(shape.hidden_size, eps=1e-5).to(env.device, env.dtype) for _ in range(chain)]
    x = torch.randn(shape.batch_size, shape.seq_len, shape.hidden_size, device=env.device, dtype=env.dtype, requires_grad=True)
    grad = torch.randn_like(x)
    times = []
    for _ in range(max(rounds, 1) + 2):
        sync(env)
        start = clock()
        y = x
        for norm in norms:
            y = norm(y)
        y.backward(grad)
        sync(env)
        times.append((clock() - start) / chain)
    return statistics.median(times[2:])


# --------------------------------------------------------------------------------------------------
# Suites
# --------------------------------------------------------------------------------------------------
@dataclass
class Comparison:
    title: str
    reference: str
    others: list[str]
    metrics: tuple[str, ...]
    memory: bool = False


def suite_comparisons(suite: str) -> list[Comparison]:
    if suite == "baseline":  # transformers alone: checks the harness when hf_skipnorm is absent
        return [Comparison("GPT-2 vs LLaMA (transformers only)", "llama", ["gpt2"], ("train", "prefill", "decode"), memory=True)]
    if suite == "llama":
        return [Comparison("ours (pre, rmsnorm, gated SiLU, RoPE) vs LlamaForCausalLM", "llama", ["ours_llama"], ("train", "prefill", "decode"), memory=True)]
    if suite == "gpt2":
        return [Comparison("ours (pre, layernorm, GELU, learned positions) vs GPT2LMHeadModel", "gpt2", ["ours_gpt2"], ("train", "prefill", "decode"), memory=True)]
    if suite == "placements":
        others = [f"ours_pos_{p}" for p in skipnorm_vocabulary("NORM_POSITIONS") if p != "pre"]
        others += [f"ours_res_{r}" for r in skipnorm_vocabulary("RESIDUALS") if r != "add"]
        others += [f"ours_type_{t}" for t in skipnorm_vocabulary("NORM_TYPES") if t != "rmsnorm"]
        return [Comparison("every placement / residual / norm type vs our pre cell", "ours_llama", others, ("train",))]
    if suite == "compile":
        # One comparison per workload, so a time-boxed run keeps the training result if decoding runs out of time.
        others = ["ours_llama@compile", "llama", "llama@compile"]
        return [Comparison("torch.compile vs eager: training", "ours_llama", others, ("train",)),
                Comparison("torch.compile vs eager: decoding", "ours_llama", others, ("decode",))]
    if suite == "seqlen":
        return [Comparison("sequence-length sweep: ours vs LlamaForCausalLM", "llama", ["ours_llama"], ("train", "prefill"))]
    raise ValueError(f"unknown suite {suite!r}; choices: {SUITES}")


SUITES = ("baseline", "llama", "gpt2", "placements", "seqlen", "compile")
NEEDS_SKIPNORM = {"llama", "gpt2", "placements", "compile", "seqlen"}


def compile_child(base: str, metric: str, shape: Shape, env: Env, rounds: int, min_seconds: float,
                  max_repeats: int) -> dict:
    """Runs inside a fresh process with an empty inductor cache: the eager model `base` and its compiled twin, the
    compiled one's first call (compilation included) timed first, then interleaved rounds of both."""
    compiled = Candidate(f"{base}@compile", shape, env, compile_model=True)
    eager = Candidate(base, shape, env)
    compiled.warm_up(metric)
    eager.warm_up(metric)
    per_round = interleaved_rounds([eager, compiled], metric, rounds, min_seconds, max_repeats)
    return {"eager": statistics.median(per_round[base]), "compiled": statistics.median(per_round[compiled.name]),
            "first_call_s": compiled.first_call_seconds[metric], "eager_first_call_s": eager.first_call_seconds[metric]}


def run_compile_child(base: str, metric: str, shape: Shape, env: Env, args) -> dict:
    """One fresh Python process per compiled candidate and round, each with its own empty inductor (and Triton)
    cache, so no model reuses kernels another one compiled: a shared cache let the second model of a process skip
    most of its compilation, which made first-call times and sometimes the steady state incomparable."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="bench-inductor-") as cache:
        command = [
            sys.executable, os.path.abspath(__file__), "--compile-child", base, "--metrics", metric,
            "--shape-json", json.dumps(asdict(shape)), "--device", args.device, "--dtype", args.dtype,
            "--threads", str(torch.get_num_threads()), "--clock", args.clock, "--sdpa-backend", args.sdpa_backend,
            "--min-seconds", str(args.min_seconds), "--max-repeats", str(args.max_repeats),
            "--child-rounds", str(args.child_rounds),
        ]
        child_env = dict(os.environ, TORCHINDUCTOR_CACHE_DIR=os.path.join(cache, "inductor"),
                         TRITON_CACHE_DIR=os.path.join(cache, "triton"))
        completed = subprocess.run(command, capture_output=True, text=True, env=child_env, timeout=1800)
    if completed.returncode != 0:
        raise RuntimeError(f"compile child for {base} ({metric}) failed:\n{completed.stderr[-2000:]}")
    return json.loads(completed.stdout.strip().splitlines()[-1])


def run_compile_comparison(comparison: Comparison, shape: Shape, env: Env, args, log) -> dict:
    """torch.compile vs eager, fairly: every round starts one fresh process per model (`run_compile_child`), in
    alternating order (A B, then B A), each measuring its model eager and compiled side by side. Per round this
    gives each model's speedup (compiled / eager, same process) and ours / reference for both modes (processes run
    back to back); tables report median [min, max] over rounds, and each fresh compilation's first-call time."""
    record = {"title": comparison.title, "shape": asdict(shape), "reference": comparison.reference, "candidates": {},
              "refused": {}, "isolated": True}
    bases = [comparison.reference] + [n for n in comparison.others if "@" not in n]
    metrics = [m for m in comparison.metrics if not args.metrics or m in args.metrics.split(",")]
    for metric in metrics:
        per_round: dict[str, list[float]] = {}
        first_calls: dict[str, list[float]] = {}
        live = list(bases)
        for round_index in range(args.rounds):
            for base in (live if round_index % 2 == 0 else live[::-1]):
                try:
                    child = run_compile_child(base, metric, shape, env, args)
                except Exception as error:  # noqa: BLE001 - a model that fails to compile is reported, not fatal
                    if base == comparison.reference:
                        raise
                    record["refused"][f"{base}@compile"] = f"{metric}: {error}".splitlines()[0][:300]
                    live.remove(base)
                    continue
                per_round.setdefault(base, []).append(child["eager"])
                per_round.setdefault(f"{base}@compile", []).append(child["compiled"])
                first_calls.setdefault(f"{base}@compile", []).append(child["first_call_s"])
                log(f"  {metric} round {round_index + 1}: {base} eager {child['eager']:.0f} tok/s, compiled "
                    f"{child['compiled']:.0f} tok/s, first compiled call {child['first_call_s']:.1f} s")
        # rounds where a model was refused mid-way leave lists of unequal length: keep complete models only
        per_round = {name: values for name, values in per_round.items() if len(values) == args.rounds}
        record.setdefault("per_round", {})[metric] = per_round
        for name, values in per_round.items():
            reference = comparison.reference + ("@compile" if name.endswith("@compile") else "")
            record["candidates"].setdefault(name, {})[metric] = {
                "tokens_per_s": summarize(values),
                "ratio_vs_reference": ratio_stats(per_round, name, reference) if reference in per_round else None,
                "first_call_s": statistics.median(first_calls[name]) if name in first_calls else None,
                "first_call_s_all": first_calls.get(name),
            }
    for base in bases:
        model = candidate_builder(base)(shape, env)
        for name in (base, f"{base}@compile"):
            if name in record["candidates"]:
                info = record["candidates"][name]
                info["parameters"] = sum(p.numel() for p in model.parameters())
                info["matmul_parameters"] = matmul_parameter_count(model)
                info["train_flops_per_token"] = flops_per_token(info["matmul_parameters"], shape, training=True)
                info["forward_flops_per_token"] = flops_per_token(info["matmul_parameters"], shape, training=False)
        del model
    return record


def run_comparison(comparison: Comparison, shape: Shape, env: Env, args, log) -> dict:
    """Build, warm up and measure one comparison at one shape; returns a JSON-able record."""
    if any(name.endswith("@compile") for name in comparison.others) and not args.shared_compile_process:
        return run_compile_comparison(comparison, shape, env, args, log)
    record = {"title": comparison.title, "shape": asdict(shape), "reference": comparison.reference, "candidates": {}, "refused": {}}
    candidates: list[Candidate] = []
    for name in [comparison.reference] + comparison.others:
        try:
            candidates.append(Candidate(name, shape, env, compile_model=name.endswith("@compile")))
        except Exception as error:  # noqa: BLE001 - an invalid variant is reported, not fatal
            if name == comparison.reference:
                raise
            record["refused"][name] = f"{type(error).__name__}: {error}".splitlines()[0][:300]
            log(f"  {name}: refused at construction ({record['refused'][name]})")
    metrics = [m for m in comparison.metrics if not args.metrics or m in args.metrics.split(",")]
    for metric in metrics:
        live = []
        for candidate in candidates:
            try:
                candidate.warm_up(metric)
                live.append(candidate)
            except Exception as error:  # noqa: BLE001
                if candidate.name == comparison.reference:
                    raise
                record["refused"][candidate.name] = f"{metric}: {type(error).__name__}: {error}".splitlines()[0][:300]
                log(f"  {candidate.name}: {metric} failed ({record['refused'][candidate.name]})")
                if args.verbose:
                    traceback.print_exc()
        candidates = live
        del live
        per_round = interleaved_rounds(candidates, metric, args.rounds, args.min_seconds, args.max_repeats)
        record.setdefault("per_round", {})[metric] = per_round
        for candidate in candidates:
            record["candidates"].setdefault(candidate.name, {})[metric] = {
                "tokens_per_s": summarize(per_round[candidate.name]),
                "ratio_vs_reference": ratio_stats(per_round, candidate.name, comparison.reference),
                "first_call_s": candidate.first_call_seconds.get(metric),
            }
        log(f"  {metric}: " + ", ".join(f"{c.name} {statistics.median(per_round[c.name]):.0f} tok/s" for c in candidates))
    for candidate in candidates:
        info = record["candidates"].setdefault(candidate.name, {})
        info["parameters"] = candidate.parameters
        info["matmul_parameters"] = candidate.n_matmul
        info["norm_modules"] = candidate.norm_modules
        info["single_stream"] = candidate.single_stream
        info["note"] = candidate.note
        info["train_flops_per_token"] = flops_per_token(candidate.n_matmul, shape, training=True)
        info["forward_flops_per_token"] = flops_per_token(candidate.n_matmul, shape, training=False)
    if comparison.memory and not args.no_memory:
        reference = next(c for c in candidates if c.name == comparison.reference)
        reference_saved = saved_activation_bytes(reference)
        for candidate in candidates:
            saved = reference_saved if candidate is reference else saved_activation_bytes(candidate)
            record["candidates"][candidate.name]["saved_activations"] = {"bytes": saved, "ratio_vs_reference": saved / reference_saved}
        del candidates, reference
        gc.collect()
        for name in [comparison.reference] + comparison.others:
            if name in record["candidates"]:
                record["candidates"][name]["memory"] = measure_memory(name, shape, env, args)
        reference_peak = record["candidates"][comparison.reference]["memory"]["peak_bytes"]
        for name, info in record["candidates"].items():
            if "memory" in info:
                info["memory"]["ratio_vs_reference"] = info["memory"]["peak_bytes"] / reference_peak
        log("  memory: " + ", ".join(f"{n} {i['memory']['peak_bytes'] / 2**20:.0f} MiB" for n, i in record["candidates"].items() if "memory" in i))
    if comparison.title.startswith("every placement"):
        record["norm_seconds"] = time_norm(shape, env, args.rounds)
    return record


def llama_to_skipnorm(state: dict, shape: Shape) -> dict:
    """LlamaForCausalLM keys -> ours (API_PLAN.md names): LLaMA's input_layernorm normalizes the attention
    input (attn_pre_norm) and its post_attention_layernorm the MLP input (mlp_pre_norm)."""
    renames = {"input_layernorm": "attn_pre_norm", "post_attention_layernorm": "mlp_pre_norm"}
    mapped = {}
    for key, value in state.items():
        if key == "model.norm.weight":
            key = "model.final_norm.weight"
        parts = key.split(".")
        mapped[".".join(renames.get(p, p) for p in parts)] = value
    return mapped


def gpt2_to_skipnorm(state: dict, shape: Shape) -> dict:
    """GPT2LMHeadModel keys -> ours. GPT-2's Conv1D stores (in, out), nn.Linear (out, in): transpose; its
    fused c_attn splits into q, k, v along the output dimension."""
    d = shape.hidden_size
    mapped = {
        "model.embed_tokens.weight": state["transformer.wte.weight"],
        "model.embed_positions.weight": state["transformer.wpe.weight"],
        "model.final_norm.weight": state["transformer.ln_f.weight"],
        "model.final_norm.bias": state["transformer.ln_f.bias"],
    }
    for i in range(shape.num_hidden_layers):
        src, dst = f"transformer.h.{i}.", f"model.layers.{i}."
        for gpt2_name, ours_name in (("ln_1", "attn_pre_norm"), ("ln_2", "mlp_pre_norm")):
            for p in ("weight", "bias"):
                mapped[f"{dst}{ours_name}.{p}"] = state[f"{src}{gpt2_name}.{p}"]
        qkv_w, qkv_b = state[f"{src}attn.c_attn.weight"], state[f"{src}attn.c_attn.bias"]
        for j, proj in enumerate(("q_proj", "k_proj", "v_proj")):
            mapped[f"{dst}self_attn.{proj}.weight"] = qkv_w[:, j * d:(j + 1) * d].t()
            mapped[f"{dst}self_attn.{proj}.bias"] = qkv_b[j * d:(j + 1) * d]
        for gpt2_name, ours_name in (("attn.c_proj", "self_attn.o_proj"), ("mlp.c_fc", "mlp.up_proj"), ("mlp.c_proj", "mlp.down_proj")):
            mapped[f"{dst}{ours_name}.weight"] = state[f"{src}{gpt2_name}.weight"].t()
            mapped[f"{dst}{ours_name}.bias"] = state[f"{src}{gpt2_name}.bias"]
    return mapped


def compare_outputs(shape: Shape, env: Env) -> dict:
    """Copy LlamaForCausalLM's weights into our LLaMA cell (and GPT-2's into our GPT-2 cell) and compare
    logits: the throughput comparison is only meaningful if both compute the same function."""
    results = {}
    ids = torch.randint(3, shape.vocab_size, (1, min(shape.seq_len, 32)), generator=torch.Generator().manual_seed(7)).to(env.device)
    for label, build_ref, kwargs, mapper in (
        ("llama", build_llama, llama_cell_kwargs(shape), llama_to_skipnorm),
        ("gpt2", build_gpt2, gpt2_cell_kwargs(shape), gpt2_to_skipnorm),
    ):
        reference = build_ref(shape, env).eval()
        ours = build_ours(kwargs, env).eval()
        missing, unexpected = ours.load_state_dict(mapper(reference.state_dict(), shape), strict=False)
        missing = [k for k in missing if not k.endswith("lm_head.weight") or not kwargs["tie_word_embeddings"]]
        with torch.inference_mode():
            diff = (reference(ids).logits.float() - ours(ids).logits.float()).abs().max().item()
        results[label] = {"max_abs_logit_diff": diff, "missing_keys": missing, "unexpected_keys": list(unexpected)}
    return results


# --------------------------------------------------------------------------------------------------
# Markdown
# --------------------------------------------------------------------------------------------------
def _ratio(stats: dict | None) -> str:
    if not stats:
        return "-"
    best = f" best {stats['best']:.3f}" if "best" in stats else ""
    return f"{stats['median']:.3f} [{stats['min']:.3f}, {stats['max']:.3f}]{best}"


def _rate(info: dict, metric: str) -> str:
    return f"{info[metric]['tokens_per_s']['median']:,.0f}" if metric in info else "-"


def markdown_for(record: dict, kind: str) -> list[str]:
    shape = record["shape"]
    ref = record["reference"]
    lines = [
        f"#### {record['title']} — {shape['name']} (d={shape['hidden_size']}, L={shape['num_hidden_layers']}, "
        f"H={shape['num_attention_heads']}, T={shape['seq_len']}, B={shape['batch_size']}, V={shape['vocab_size']})",
        "",
    ]
    cands = record["candidates"]
    if kind == "pair":
        lines += [
            "| model | params | train tok/s | train ratio | train MFU | prefill tok/s | prefill ratio | decode tok/s | decode ratio | peak train MiB | memory ratio | saved activations MiB | ratio |",
            "|---|---:|---:|---|---:|---:|---|---:|---|---:|---:|---:|---:|",
        ]
        for name, info in cands.items():
            mem = info.get("memory")
            cells = [f"{name}{' (ref)' if name == ref else ''}", f"{info['parameters'] / 1e6:.2f}M"]
            for metric in ("train", "prefill", "decode"):
                cells += [_rate(info, metric), _ratio(info.get(metric, {}).get("ratio_vs_reference"))]
                if metric == "train":
                    cells.append(f"{info['train']['mfu'] * 100:.1f}%" if "train" in info else "-")
            cells += [f"{mem['peak_bytes'] / 2**20:,.0f}", f"{mem['ratio_vs_reference']:.3f}"] if mem else ["-", "-"]
            saved = info.get("saved_activations")
            cells += [f"{saved['bytes'] / 2**20:,.1f}", f"{saved['ratio_vs_reference']:.3f}"] if saved else ["-", "-"]
            lines.append("| " + " | ".join(cells) + " |")
        flops = cands[ref]["train_flops_per_token"]
        lines += ["", f"Training FLOPs/token (6N + 12LHQT) of {ref}: {flops / 1e6:,.1f} MFLOP."]
    elif kind == "placements":
        norm_s = record.get("norm_seconds", 0.0)
        ref_rate = cands[ref]["train"]["tokens_per_s"]["median"]
        ref_step = shape["batch_size"] * shape["seq_len"] / ref_rate
        lines += [
            f"Reference: {ref} ({cands[ref]['norm_modules']} norm modules), {ref_rate:,.0f} train tok/s. One RMSNorm "
            f"forward+backward on (B, T, d) costs {norm_s * 1e3:.2f} ms = {norm_s / ref_step * 100:.2f}% of a reference step.",
            "",
            "| variant | norm modules | train tok/s | step time vs pre, median [min, max] | expected from extra norms | overhead beyond norms | within 5% |",
            "|---|---:|---:|---|---:|---:|---|",
        ]
        for name, info in cands.items():
            if name == ref or "train" not in info:
                continue
            r = info["train"]["ratio_vs_reference"]
            time_ratio = 1 / r["median"]
            extra = (info["norm_modules"] - cands[ref]["norm_modules"]) * norm_s / ref_step
            beyond = time_ratio - 1 - extra
            single_stream = name.startswith("ours_pos_") and info.get("single_stream", True)
            verdict = ("yes" if beyond <= 0.05 else "NO") if single_stream else "n/a (reported)"
            note = f" ({info['note']})" if info.get("note") else ("" if info.get("single_stream", True) else " (multi-stream)")
            lines.append(
                f"| {name.removeprefix('ours_')}{note} | {info['norm_modules']} | {_rate(info, 'train')} | "
                f"{time_ratio:.3f} [{1 / r['max']:.3f}, {1 / r['min']:.3f}] | {extra * 100:+.1f}% | {beyond * 100:+.1f}% | {verdict} |"
            )
        for name, why in record.get("refused", {}).items():
            lines.append(f"| {name.removeprefix('ours_')} | - | - | refused: {why} | - | - | - |")
    elif kind == "compile":
        lines += ["| model | metric | eager tok/s | compiled tok/s | speedup, median [min, max] | first compiled call s |", "|---|---|---:|---:|---|---:|"]
        per_round = record.get("per_round", {})
        for base in ("ours_llama", "llama"):
            for metric in ("train", "decode"):
                compiled = f"{base}@compile"
                if metric not in per_round or compiled not in per_round[metric] or base not in per_round[metric]:
                    continue
                speed = ratio_stats(per_round[metric], compiled, base)
                lines.append(
                    f"| {base} | {metric} | {_rate(cands[base], metric)} | {_rate(cands[compiled], metric)} | {_ratio(speed)} | "
                    f"{cands[compiled][metric]['first_call_s']:.1f} |"
                )
        for name, why in record.get("refused", {}).items():
            lines.append(f"| {name} | - | - | - | refused: {why} | - |")
        if record.get("isolated"):
            others = sorted({n.removesuffix("@compile") for n in cands} - {ref})
            lines += ["", "| ours / other, same round | metric | eager | compiled |", "|---|---|---|---|"]
            for other in others:
                for metric in ("train", "decode"):
                    rounds = per_round.get(metric, {})
                    if not all(n in rounds for n in (ref, other, f"{ref}@compile", f"{other}@compile")):
                        continue
                    lines.append(f"| {ref} / {other} | {metric} | {_ratio(ratio_stats(rounds, ref, other))} | "
                                 f"{_ratio(ratio_stats(rounds, f'{ref}@compile', f'{other}@compile'))} |")
            lines += ["", "Each model and round ran in a fresh process with its own empty inductor cache (first compiled "
                      "call = compilation from scratch + one step); eager and compiled were interleaved inside it."]
        lines += ["", "Decode: eager uses the default dynamic cache; compiled uses a static cache and generate's compiled forward."]
    lines.append("")
    return lines


def markdown_seqlen(records: list[dict]) -> list[str]:
    if not records:
        return []
    shape = records[0]["shape"]
    lines = [
        f"#### Sequence-length sweep: ours vs LlamaForCausalLM (d={shape['hidden_size']}, L={shape['num_hidden_layers']}, B=1)",
        "",
        "| T | llama train tok/s | ours train tok/s | train ratio | llama prefill tok/s | ours prefill tok/s | prefill ratio | train FLOPs/token | attention share of FLOPs |",
        "|---:|---:|---:|---|---:|---:|---|---:|---:|",
    ]
    for record in records:
        if "error" in record:
            lines.append(f"| {record['shape']['seq_len']} | failed: {record['error'][:200]} | | | | | | | |")
            continue
        c, t = record["candidates"], record["shape"]["seq_len"]
        if "ours_llama" not in c:
            continue
        llama, ours = c["llama"], c["ours_llama"]
        att = 12 * shape["num_hidden_layers"] * shape["hidden_size"] * t
        lines.append(
            f"| {t} | {_rate(llama, 'train')} | {_rate(ours, 'train')} | {_ratio(ours['train']['ratio_vs_reference'])} | "
            f"{_rate(llama, 'prefill')} | {_rate(ours, 'prefill')} | {_ratio(ours['prefill']['ratio_vs_reference'])} | "
            f"{ours['train_flops_per_token'] / 1e6:,.1f}M | {att / ours['train_flops_per_token'] * 100:.0f}% |"
        )
    lines.append("")
    return lines


def render_markdown(results: dict) -> str:
    meta = results["meta"]
    lines = [
        "## Results",
        "",
        f"Command: `{meta['command']}`",
        "",
        f"Machine: {meta['machine']}; device {meta['device']}, dtype {meta['dtype']}, torch threads {meta['threads']}, "
        f"sdpa backend {meta['sdpa_backend']}, timed by {meta['clock']} clock; torch {meta['torch']}, transformers {meta['transformers']}; "
        f"git {meta['git']}; {meta['date']}.",
        f"Measured matmul peak: {meta['matmul_peak'] / 1e9:,.1f} GFLOP/s. Rounds per comparison: {meta['rounds']} "
        f"(interleaved, order reversed every other round); ratios are ours / reference per round, median [min, max].",
        "",
    ]
    if results.get("parity"):
        lines += ["Same function check (reference weights copied into ours, max |logit difference|): "
                  + ", ".join(f"{k}: {v['max_abs_logit_diff']:.2e}" for k, v in results["parity"].items()), ""]
    for suite, records in results["suites"].items():
        if isinstance(records, str):
            lines += [f"### {suite}", "", f"Skipped: {records}", ""]
            continue
        lines += [f"### {suite}", ""]
        if suite == "seqlen":
            lines += markdown_seqlen(records)
            continue
        kind = {"placements": "placements", "compile": "compile"}.get(suite, "pair")
        for record in records:
            if "error" in record:
                lines += [f"#### {record['title']} — {record['shape']['name']}: FAILED", "", f"`{record['error']}`", ""]
            else:
                lines += markdown_for(record, kind)
    return "\n".join(lines)


def summary_table(paths: list[str]) -> str:
    """One Markdown table from bench.py result files and fsdp_smoke.py files (benchmarks/gpu_check.sh)."""
    lines = [
        "| check | size | model | train tok/s | train MFU | train ratio | decode tok/s | decode ratio | peak train GiB | notes |",
        "|---|---|---|---:|---:|---|---:|---|---:|---|",
    ]
    for path in paths:
        if not os.path.exists(path):
            lines.append(f"| {os.path.basename(path)} | - | - | - | - | - | - | - | - | missing: the step failed or ran out of time (see its .log) |")
            continue
        with open(path) as handle:
            data = json.load(handle)
        if "distributed_type" in data:  # fsdp_smoke.py
            peak = data.get("peak_memory_bytes")
            lines.append(
                f"| FSDP smoke, {data['num_processes']} process ({data['distributed_type']}, FSDP v{data['fsdp_version']}, "
                f"{data['mixed_precision']}) | {data['size']} | ours_llama | {data['tokens_per_s']:,.0f} | - | - | - | - | "
                f"{peak / 2**30 if peak else float('nan'):.2f} | sharded={data['sharded']}, loss {data['loss_first']:.3f} -> "
                f"{data['loss_last']:.3f}, public state-dict keys={data['state_dict_has_public_keys']} |"
            )
            continue
        meta = data["meta"]
        if data.get("parity"):
            notes = ", ".join(f"{k} {v['max_abs_logit_diff']:.1e}" for k, v in data["parity"].items())
            lines.append(f"| same-function check ({meta['dtype']}) | - | - | - | - | - | - | - | - | max abs logit diff with copied weights: {notes} |")
        for suite, records in data["suites"].items():
            if isinstance(records, str):
                lines.append(f"| {suite} | - | - | - | - | - | - | - | - | skipped: {records} |")
                continue
            for record in records:
                size = record["shape"]["name"]
                if "error" in record:
                    lines.append(f"| {suite} | {size} | - | - | - | - | - | - | - | FAILED: {record['error'][:200]} |")
                    continue
                per_round = record.get("per_round", {})
                for name, info in record["candidates"].items():
                    base = name.removesuffix("@compile")
                    cells = []
                    for metric in ("train", "decode"):
                        if metric not in info:
                            cells += ["-", "-"] + (["-"] if metric == "train" else [])
                            continue
                        if name != base and base in per_round.get(metric, {}):
                            ratio = f"{_ratio(ratio_stats(per_round[metric], name, base))} vs eager"
                        else:
                            ratio = f"{_ratio(info[metric]['ratio_vs_reference'])} vs {record['reference']}"
                        cells.append(_rate(info, metric))
                        if metric == "train":
                            cells.append(f"{info['train']['mfu'] * 100:.1f}%")
                        cells.append(ratio)
                    peak = info.get("memory", {}).get("peak_bytes")
                    first = {m: v.get("first_call_s") for m, v in info.items() if isinstance(v, dict) and "first_call_s" in v}
                    notes = f"sdpa {meta['sdpa_backend']}" + (
                        "; first call " + ", ".join(f"{m} {s:.0f}s" for m, s in first.items() if s) if name != base else "")
                    lines.append(
                        f"| {suite} | {size} | {name} | " + " | ".join(cells) + f" | {peak / 2**30:.2f} | {notes} |" if peak
                        else f"| {suite} | {size} | {name} | " + " | ".join(cells) + f" | - | {notes} |"
                    )
                for name, why in record.get("refused", {}).items():
                    lines.append(f"| {suite} | {size} | {name} | - | - | - | - | - | - | refused: {why[:200]} |")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------------
def git_describe() -> str:
    try:
        return subprocess.run(["git", "-C", REPO_ROOT, "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip() or "?"
    except OSError:
        return "?"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--suites", default="llama,gpt2,placements,seqlen,compile", help=f"comma list of {SUITES}")
    parser.add_argument("--sizes", default="tiny,small", help=f"comma list of {tuple(SIZES)} (seqlen uses 'sweep')")
    parser.add_argument("--seq-lens", default="128,256,512,1024,2048", help="sequence lengths of the seqlen suite")
    parser.add_argument("--compile-sizes", default=None, help="sizes for the compile suite (default: the smallest of --sizes)")
    parser.add_argument("--placement-sizes", default=None, help="sizes for the placements suite (default: --sizes)")
    parser.add_argument("--metrics", default=None, help="comma list restricting every comparison to these of train,prefill,decode")
    parser.add_argument("--variants", default=None, help="comma list: keep only these non-reference candidates (e.g. ours_pos_post)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--suite-rounds", default="", help="per-suite overrides of --rounds, e.g. placements=3,seqlen=5")
    parser.add_argument("--min-seconds", type=float, default=0.3, help="minimum timed seconds per candidate per round")
    parser.add_argument("--max-repeats", type=int, default=50)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default=None, help="float32 (CPU default) or bfloat16 (CUDA default)")
    parser.add_argument("--sdpa-backend", default="auto", choices=["auto", "flash_attention", "efficient_attention", "math", "cudnn_attention"])
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--clock", default=None, choices=["wall", "cpu"],
                        help="wall time, or process CPU time (default: cpu on a CPU device with --threads 1, else wall)")
    parser.add_argument("--no-memory", action="store_true")
    parser.add_argument("--no-parity", action="store_true")
    parser.add_argument("--json", default=None, help="write the full results here")
    parser.add_argument("--markdown", default=None, help="write the Markdown tables here")
    parser.add_argument("--dry-run", action="store_true", help="tiny size, 1 round, short timings: checks every path")
    parser.add_argument("--verbose", action="store_true")
    parser.add_argument("--decode-counts", action="store_true",
                        help="print Python calls, C calls and aten ops per decoded token of each pair in --sizes, then exit")
    parser.add_argument("--summarize", nargs="+", default=None, metavar="JSON",
                        help="print one table from result files of this script and fsdp_smoke.py, then exit")
    parser.add_argument("--child-rounds", type=int, default=3,
                        help="compile suite: interleaved eager/compiled rounds inside each fresh process")
    parser.add_argument("--shared-compile-process", action="store_true",
                        help="compile suite: old method, every model compiled in this one process with one shared "
                             "inductor cache (unfair: later models reuse kernels); for comparison only")
    parser.add_argument("--memory-child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--compile-child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--shape-json", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.dtype is None:
        args.dtype = "bfloat16" if args.device.startswith("cuda") else "float32"
    if args.clock is None:
        args.clock = "cpu" if args.device == "cpu" and args.threads == 1 else "wall"
    if args.dry_run:
        args.sizes, args.rounds, args.min_seconds, args.max_repeats, args.child_rounds = "tiny", 1, 0.0, 1, 1
        args.seq_lens = "32,64"
        args.compile_sizes = args.compile_sizes or "tiny"
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    global CLOCK
    CLOCK = time.process_time if args.clock == "cpu" else time.perf_counter
    env = Env(torch.device(args.device), getattr(torch, args.dtype), args.sdpa_backend)
    transformers.logging.set_verbosity_error()

    if args.summarize:
        print(summary_table(args.summarize))
        return {}
    if args.decode_counts:
        return print_decode_counts([s for s in args.sizes.split(",") if s], env)
    if args.memory_child:
        shape = Shape(**json.loads(args.shape_json))
        print(json.dumps(memory_child(args.memory_child, shape, env)))
        return {}
    if args.compile_child:
        shape = Shape(**json.loads(args.shape_json))
        print(json.dumps(compile_child(args.compile_child, args.metrics, shape, env, args.child_rounds,
                                       args.min_seconds, args.max_repeats)))
        return {}

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    args.matmul_peak = measure_matmul_peak(env)
    log(f"matmul peak {args.matmul_peak / 1e9:.1f} GFLOP/s ({args.dtype}, {args.device}, {torch.get_num_threads()} threads)")
    sizes = [s for s in args.sizes.split(",") if s]
    for size in sizes:
        if size not in SIZES:
            raise ValueError(f"--sizes: unknown size {size!r}; choices: {tuple(SIZES)}")
    results = {
        "meta": {
            "command": "python " + " ".join([os.path.relpath(__file__, REPO_ROOT)] + (argv if argv is not None else sys.argv[1:])),
            "date": datetime.datetime.now().isoformat(timespec="seconds"),
            "machine": f"{platform.machine()} {os.cpu_count()} CPUs" + (f", {torch.cuda.get_device_name()}" if env.device.type == "cuda" else ""),
            "device": args.device, "dtype": args.dtype, "threads": torch.get_num_threads(), "sdpa_backend": args.sdpa_backend,
            "clock": args.clock,
            "torch": torch.__version__, "transformers": transformers.__version__, "git": git_describe(),
            "rounds": args.rounds, "min_seconds": args.min_seconds, "skipnorm_import_error": SKIPNORM_IMPORT_ERROR,
            "matmul_peak": args.matmul_peak,
        },
        "suites": {},
    }
    if SKIPNORM_IMPORT_ERROR is None and not args.no_parity:
        results["parity"] = compare_outputs(SIZES[sizes[0]], env)
        log(f"parity: {results['parity']}")
    suite_rounds = {k: int(v) for k, v in (item.split("=") for item in args.suite_rounds.split(",") if item)}
    for suite in [s for s in args.suites.split(",") if s]:
        if suite not in SUITES:
            raise ValueError(f"--suites: unknown suite {suite!r}; choices: {SUITES}")
        if suite in NEEDS_SKIPNORM and SKIPNORM_IMPORT_ERROR is not None:
            results["suites"][suite] = f"hf_skipnorm not importable ({SKIPNORM_IMPORT_ERROR})"
            log(f"{suite}: skipped, {results['suites'][suite]}")
            continue
        if suite == "seqlen":
            shapes = [replace(SIZES["sweep"], seq_len=int(t)) for t in args.seq_lens.split(",")]
        elif suite == "compile":
            shapes = [SIZES[s] for s in (args.compile_sizes or sizes[0]).split(",")]
        elif suite == "placements":
            shapes = [SIZES[s] for s in (args.placement_sizes or args.sizes).split(",")]
        else:
            shapes = [SIZES[s] for s in sizes]
        records = []
        results["suites"][suite] = records
        for shape in shapes:
            for comparison in suite_comparisons(suite):
                if args.metrics and not set(comparison.metrics) & set(args.metrics.split(",")):
                    continue
                if args.variants:
                    comparison = replace(comparison, others=[o for o in comparison.others if o in args.variants.split(",")])
                log(f"{suite} @ {shape.name} T={shape.seq_len}: {comparison.title}")
                try:
                    suite_args = argparse.Namespace(**{**vars(args), "rounds": suite_rounds.get(suite, args.rounds)})
                    results["meta"]["rounds"] = suite_args.rounds  # what the header reports (one suite per run)
                    records.append(run_comparison(comparison, shape, env, suite_args, log))
                except Exception as error:  # noqa: BLE001 - one broken comparison must not lose the others
                    traceback.print_exc()
                    records.append({"title": comparison.title, "shape": asdict(shape), "error": f"{type(error).__name__}: {error}"[:500]})
                gc.collect()
                if env.device.type == "cuda":
                    torch.cuda.empty_cache()
                args.matmul_peak = max(args.matmul_peak, measure_matmul_peak(env, seconds=0.3))
                results["meta"]["matmul_peak"] = args.matmul_peak
                write_results(results, args)  # after every comparison, so a time-boxed run keeps what it measured
    markdown = write_results(results, args)
    print(markdown)
    return results


def refresh_mfu(results: dict) -> None:
    """MFU of every train/prefill rate against the best matmul seen in the whole run (re-measured between
    comparisons, so a busy moment at start-up cannot inflate MFU)."""
    peak = results["meta"]["matmul_peak"]
    for records in results["suites"].values():
        for record in records if isinstance(records, list) else []:
            for info in record.get("candidates", {}).values():
                for metric, flops_key in (("train", "train_flops_per_token"), ("prefill", "forward_flops_per_token")):
                    if metric in info and flops_key in info:
                        info[metric]["mfu"] = info[metric]["tokens_per_s"]["median"] * info[flops_key] / peak


def write_results(results: dict, args) -> str:
    refresh_mfu(results)
    markdown = render_markdown(results)
    if args.json:
        with open(args.json, "w") as out:
            json.dump(results, out, indent=1)
    if args.markdown:
        with open(args.markdown, "w") as out:
            out.write(markdown + "\n")
    return markdown


if __name__ == "__main__":
    main()

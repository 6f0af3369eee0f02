"""Tensor parallelism (`from_pretrained(..., tp_plan="auto")`) on 2 CPU processes (torchrun, gloo): for every block
topology, forward logits, the gradients of every parameter and greedy generation equal the one-process model's.

One `torchrun` launch runs all the cases (this file is also the worker: `python tests/test_tensor_parallel.py
--worker FOLDER`), so the suite pays the process start-up once. Sublayers that cannot be sharded by heads or hidden
units (a norm over the whole projection width) stay whole on every rank: `tensor_parallel_plan` drops their rules.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from hf_skipnorm import SkipNormConfig, SkipNormForCausalLM, SkipNormForMaskedLM
from hf_skipnorm.modeling_skipnorm import SkipNormModel, tensor_parallel_blockers

TINY = dict(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            intermediate_size=48, max_position_embeddings=32, attn_implementation="eager")
# case -> (head class, config fields, rules the plan must keep sharding: "attn", "mlp")
CASES = {
    "pre-llama": (SkipNormForCausalLM, dict(norm_position="pre"), {"attn", "mlp"}),
    "post-layernorm-bias": (SkipNormForCausalLM, dict(norm_position="post", norm_type="layernorm",
                                                      attention_bias=True, mlp_bias=True), {"attn", "mlp"}),
    "sandwich-qk-per-head": (SkipNormForCausalLM, dict(norm_position="sandwich", qk_norm="per_head"), {"attn", "mlp"}),
    "hybrid-qkv-norm": (SkipNormForCausalLM, dict(norm_position="hybrid"), {"attn", "mlp"}),
    "parallel-block": (SkipNormForCausalLM, dict(parallel_block=True, parallel_shared_norm=True), {"attn", "mlp"}),
    "b2t": (SkipNormForCausalLM, dict(norm_position="b2t"), {"attn", "mlp"}),
    "resi-dual": (SkipNormForCausalLM, dict(norm_position="resi_dual"), {"attn", "mlp"}),
    "hyper-dynamic": (SkipNormForCausalLM, dict(residual="hyper", hyper_dynamic=True), {"attn", "mlp"}),
    "mhc": (SkipNormForCausalLM, dict(residual="mhc"), {"attn", "mlp"}),
    "dense": (SkipNormForCausalLM, dict(residual="dense"), {"attn", "mlp"}),
    "untied-lm-head-bias": (SkipNormForCausalLM, dict(tie_word_embeddings=False, lm_head_bias=True), {"attn", "mlp"}),
    "qk-full": (SkipNormForCausalLM, dict(qk_norm="full"), {"mlp"}),
    "subln": (SkipNormForCausalLM, dict(norm_position="subln"), set()),
    "normformer": (SkipNormForCausalLM, dict(norm_position="normformer"), set()),
    "bert-masked-lm": (SkipNormForMaskedLM, dict(is_causal=False, norm_position="post", norm_type="layernorm",
                                                 position_embedding="learned", type_vocab_size=2, embedding_norm=True,
                                                 mlp_type="plain", hidden_act="gelu"), {"attn", "mlp"}),
}
# Loading under TP must refuse these, naming the field: a rank would hold half a head.
REFUSED = {"refused-kv-heads": (SkipNormForCausalLM, dict(num_key_value_heads=1), "num_key_value_heads=1")}
CLASSES = {cls.__name__: cls for cls in (SkipNormForCausalLM, SkipNormForMaskedLM)}


def perturbed(model):
    """Random (non-init) weights everywhere, so zero-init gains and offsets take part in the check."""
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.1 * torch.randn(param.shape, generator=generator, dtype=param.dtype))
    return model


# ------------------------------------------------------------------------------------------------ worker (2 ranks)
def run_case(folder: str, cls) -> dict:
    """Max |diff| between the TP model (this rank) and the same checkpoint loaded in one process."""
    from torch.distributed.tensor import DTensor

    reference = cls.from_pretrained(folder)
    sharded = cls.from_pretrained(folder, tp_plan="auto")
    ids = torch.randint(0, TINY["vocab_size"], (2, 7), generator=torch.Generator().manual_seed(2))
    result = {"sharded": sorted(k for k, p in sharded.named_parameters() if isinstance(p, DTensor))}

    with torch.no_grad():  # transformers' local inference path
        result["forward_no_grad"] = (sharded(ids).logits - reference(ids).logits).abs().max().item()
    losses = []
    for model in (reference, sharded):  # the DTensor (training) path
        output = model(ids, labels=ids)
        output.loss.backward()
        losses.append(output.loss.item())
    result["loss"] = abs(losses[0] - losses[1])
    grads = dict(reference.named_parameters())
    worst, name = 0.0, None
    for key, param in sharded.named_parameters():
        grad = param.grad.full_tensor() if isinstance(param.grad, DTensor) else param.grad
        diff = (grad - grads[key].grad).abs().max().item()
        if diff >= worst:
            worst, name = diff, key
    result["grad"], result["grad_worst_key"] = worst, name
    if hasattr(sharded, "generate"):
        generated = [m.generate(ids, max_new_tokens=6, do_sample=False, pad_token_id=0) for m in (reference, sharded)]
        result["generate_equal"] = generated[0].tolist() == generated[1].tolist()
    return result


def worker(root: str) -> None:
    rank = int(os.environ["RANK"])
    results = {}
    for case in sorted(os.listdir(root)):
        folder = os.path.join(root, case)
        if not os.path.isdir(folder):
            continue
        cls = CLASSES[json.load(open(os.path.join(folder, "config.json")))["architectures"][0]]
        torch.manual_seed(0)
        if case in REFUSED:
            try:
                cls.from_pretrained(folder, tp_plan="auto")
                results[case] = "loaded"
            except ValueError as error:
                results[case] = str(error)
        else:
            results[case] = run_case(folder, cls)
    with open(os.path.join(root, f"rank{rank}.json"), "w") as handle:
        json.dump(results, handle)


# ------------------------------------------------------------------------------------------------ tests
def test_plan_keeps_only_shardable_sublayers():
    for case, (cls, fields, shardable) in CASES.items():
        model = cls(SkipNormConfig(**{**TINY, **fields}))
        plan = model.tp_plan
        for part, key in (("attn", "self_attn.q_proj"), ("mlp", "mlp.up_proj")):
            assert (f"model.layers.*.{key}" in plan) == (part in shardable), (case, plan)
        assert plan["model.embed_tokens"] == "embedding_rowwise" and plan["lm_head"] == "colwise_gather_output"
        if "attn" in shardable and fields.get("qk_norm") == "per_head":
            assert plan["model.layers.*.self_attn.q_norm"] == "replicated_with_grad_allreduce"


def test_blockers_name_the_reason():
    model = SkipNormModel(SkipNormConfig(**{**TINY, "norm_position": "normformer"}))
    blockers = tensor_parallel_blockers(model.layers[0])
    assert any("head_scale_norm" in why for why in blockers["self_attn"])
    assert any("sub_norm" in why for why in blockers["mlp"])
    assert tensor_parallel_blockers(SkipNormModel(SkipNormConfig(**TINY)).layers[0]) == {"self_attn": [], "mlp": []}


@pytest.fixture(scope="module")
def two_rank_results(tmp_path_factory):
    root = tmp_path_factory.mktemp("tp")
    for case, (cls, fields, _) in {**CASES, **REFUSED}.items():
        torch.manual_seed(0)
        perturbed(cls(SkipNormConfig(**{**TINY, **fields}))).save_pretrained(root / case)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(
        [os.path.dirname(os.path.dirname(os.path.abspath(__file__))), os.environ.get("PYTHONPATH", "")])}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               os.path.abspath(__file__), "--worker", str(root)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    return [json.loads((root / f"rank{rank}.json").read_text()) for rank in (0, 1)]


@pytest.mark.parametrize("case", list(CASES))
def test_two_ranks_match_one_process(two_rank_results, case):
    shardable = CASES[case][2]
    for results in two_rank_results:
        result = results[case]
        if "attn" in shardable:
            assert "model.layers.0.self_attn.q_proj.weight" in result["sharded"]
        if "mlp" in shardable:
            assert "model.layers.1.mlp.down_proj.weight" in result["sharded"]
        assert "model.embed_tokens.weight" in result["sharded"]
        assert result["forward_no_grad"] < 1e-5, result
        assert result["loss"] < 1e-5, result
        assert result["grad"] < 1e-5, result
        assert result.get("generate_equal", True), result


def test_heads_that_do_not_split_over_the_ranks_are_refused(two_rank_results):
    for results in two_rank_results:
        message = results["refused-kv-heads"]
        assert REFUSED["refused-kv-heads"][2] in message and "tp_size=2" in message, message


if __name__ == "__main__":
    if sys.argv[1:2] == ["--worker"]:
        import warnings

        import transformers

        transformers.logging.set_verbosity_error()
        warnings.filterwarnings("ignore", message="Passing `tp_plan` directly")  # the form README and users write
        worker(sys.argv[2])


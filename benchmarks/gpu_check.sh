#!/usr/bin/env bash
# One-shot GPU check for a single lent GPU (sized for one H200; at most about 7.5 minutes: each step is time-boxed so the
# final table always prints). Run from anywhere:
#
#     bash benchmarks/gpu_check.sh            # results under $OUT (the device tool's folder) or /tmp/gpu_check
#
# What it runs (bf16 weights, AdamW, random token batches, B=8, T=2048, vocab 32000):
#   1. our LLaMA cell vs LlamaForCausalLM at ~134M (gpu125m) and ~373M (gpu350m) parameters, eager, with
#      sdpa forced onto the FlashAttention kernel for training and prefill: tokens/s, MFU against a bf16 matmul
#      measured in the same run, peak memory (torch.cuda.max_memory_allocated), greedy decode tokens/s;
#   2. torch.compile vs eager for both models at gpu125m: training, then decoding (static cache + compiled forward,
#      CUDA graphs); each model compiled in a fresh process with its own empty inductor/Triton cache (the compile
#      fairness rule: no model reuses kernels another compiled), first-call time reported beside the ratios;
#   3. a 1-GPU FSDP2 smoke run through `accelerate launch` (sharded for real, loss falls, state dict gathers);
#   4. depth mixing: training-step time and saved activations of every multi-stream residual (hyper static and
#      dynamic, mhc, dense, resi_dual, attn_res Full and Block) relative to `add`, d=1024, L=8, T=2048, bf16;
#   5. one summary table of all of the above;
#   6. only with GPU_CHECK_STUDY=1 (about 8 more minutes): the study's GPU preset grid (training/study_grids/gpu.json:
#      the findings at d=256, L=8/16/32, bf16), 4 study processes sharing the GPU, report under $RESULTS/study_gpu.
#
# The device image may ship an older transformers than this project needs (>= 5.24). If so, carry the wheel:
# on the development machine run `bash benchmarks/gpu_wheels.sh` once (it fills .whl/, ignored by git), then
# name `.whl` in the device tool's `carry`. This script installs it into /tmp/site before anything else.
set -uo pipefail
cd "$(dirname "$0")/.."
RESULTS=${OUT:-/tmp/gpu_check}
mkdir -p "$RESULTS"
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false TRANSFORMERS_NO_ADVISORY_WARNINGS=1
START=$(date +%s)
elapsed() { echo $(( $(date +%s) - START )); }

echo "== environment ($(elapsed)s)"
if ! $PY -c "import sys, transformers; from packaging.version import Version; sys.exit(Version(transformers.__version__) < Version('5.24'))"; then
    if ls .whl/transformers-*.whl >/dev/null 2>&1; then
        $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
        export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
    else
        echo "transformers is older than 5.24 and .whl/ holds no wheel: run benchmarks/gpu_wheels.sh here first and carry .whl" >&2
        exit 2
    fi
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
$PY -c "import torch, transformers, accelerate; print('torch', torch.__version__, 'cuda', torch.version.cuda, '| transformers', transformers.__version__, '| accelerate', accelerate.__version__, '|', torch.cuda.get_device_name())" || exit 1

BENCH="$PY benchmarks/bench.py --device cuda --dtype bfloat16 --rounds 3 --min-seconds 0.3 --max-repeats 20"

echo "== 1. eager, flash attention: ours vs LlamaForCausalLM at gpu125m and gpu350m ($(elapsed)s)"
timeout -k 5 90 $BENCH --suites llama --sizes gpu125m,gpu350m --sdpa-backend flash_attention \
    --json "$RESULTS/gpu_eager.json" --markdown "$RESULTS/gpu_eager.md" > "$RESULTS/gpu_eager.log" 2>&1
echo "   exit $? ($(elapsed)s)"; tail -n 4 "$RESULTS/gpu_eager.log"

# torch.compile steps: each model's first call compiles (tens of seconds on the device's CPUs), so each step is
# its own time-boxed process and writes its JSON as soon as its comparison is done.
# torch.compile steps: every model compiles from scratch in its own process (tens of seconds on the device's CPUs),
# so each step is time-boxed and writes its JSON as soon as its comparison is done.
echo "== 2a. torch.compile vs eager, training, gpu125m, fresh process + cache per model ($(elapsed)s)"
timeout -k 5 130 $BENCH --suites compile --compile-sizes gpu125m --metrics train --rounds 1 --child-rounds 2 --no-parity \
    --json "$RESULTS/gpu_compile_train125m.json" --markdown "$RESULTS/gpu_compile_train125m.md" > "$RESULTS/gpu_compile_train125m.log" 2>&1
echo "   exit $? ($(elapsed)s)"; tail -n 4 "$RESULTS/gpu_compile_train125m.log"

echo "== 2b. torch.compile vs eager, decoding (static cache, CUDA graphs), gpu125m ($(elapsed)s)"
timeout -k 5 100 $BENCH --suites compile --compile-sizes gpu125m --metrics decode --rounds 1 --child-rounds 2 --no-parity \
    --json "$RESULTS/gpu_compile_decode.json" --markdown "$RESULTS/gpu_compile_decode.md" > "$RESULTS/gpu_compile_decode.log" 2>&1
echo "   exit $? ($(elapsed)s)"; tail -n 4 "$RESULTS/gpu_compile_decode.log"

echo "== 3. FSDP2 smoke run through accelerate launch, 1 GPU ($(elapsed)s)"
timeout -k 5 55 $PY -m accelerate.commands.launch --num_processes 1 --num_machines 1 --mixed_precision bf16 \
    --dynamo_backend no --use_fsdp --fsdp_version 2 --fsdp_auto_wrap_policy TRANSFORMER_BASED_WRAP \
    --fsdp_transformer_layer_cls_to_wrap SkipNormBlock --fsdp_state_dict_type FULL_STATE_DICT \
    --fsdp_reshard_after_forward true \
    benchmarks/fsdp_smoke.py --size gpu125m --steps 8 --json "$RESULTS/gpu_fsdp.json" > "$RESULTS/gpu_fsdp.log" 2>&1
echo "   exit $? ($(elapsed)s)"; tail -n 4 "$RESULTS/gpu_fsdp.log"

echo "== 4. depth mixing overhead vs add, d=1024 L=8 T=2048 bf16 ($(elapsed)s)"
timeout -k 5 70 $PY benchmarks/residual_overhead.py --device cuda --hidden-size 1024 --layers 8 --heads 16 \
    --seq-len 2048 --batch-size 4 --vocab-size 32000 --rounds 3 --min-seconds 0.2 \
    --variants add,hyper,hyper_static,mhc,dense,resi_dual,attn_res,attn_res_blocks2 \
    --json "$RESULTS/gpu_depth_mixing.json" > "$RESULTS/gpu_depth_mixing.log" 2>&1
echo "   exit $? ($(elapsed)s)"; grep "^|" "$RESULTS/gpu_depth_mixing.log"

if [ "${GPU_CHECK_STUDY:-0}" = 1 ]; then
    echo "== 6. the study's GPU preset grid, 4 processes on one GPU ($(elapsed)s)"
    timeout -k 5 480 $PY -m torch.distributed.run --nproc_per_node 4 --master_port 29533 training/study.py --grid gpu \
        --output_dir "$RESULTS/study_gpu" --overwrite_output_dir > "$RESULTS/study_gpu.log" 2>&1
    echo "   exit $? ($(elapsed)s)"; grep "\[study\]" "$RESULTS/study_gpu.log" | tail -n 4
fi

echo "== 5. summary ($(elapsed)s)"
$PY benchmarks/bench.py --summarize "$RESULTS"/gpu_eager.json "$RESULTS"/gpu_compile_train125m.json \
    "$RESULTS"/gpu_compile_decode.json "$RESULTS"/gpu_fsdp.json \
    | tee "$RESULTS/gpu_summary.md"
echo "total $(elapsed)s"

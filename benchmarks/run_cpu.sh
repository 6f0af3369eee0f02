#!/usr/bin/env bash
# The CPU run behind benchmarks/RESULTS.md: one torch thread, timed by process CPU time (the machine is shared),
# each part a separate process writing its own JSON + Markdown, so a part that fails (or is stopped) leaves the
# others intact. Parts run in the order of issue 18's targets, so a run cut short still has the headline numbers.
# `PARTS="pairs depth"` runs only those parts; the 2-thread MFU part needs both cores to itself.
set -uo pipefail
cd "$(dirname "$0")/.."
B="python benchmarks/bench.py --threads 1"
R="python benchmarks/residual_overhead.py --threads 1"
PARTS=${PARTS:-"pairs depth medium compile placements seqlen small15 placements9 depth_compile mfu2"}
DEPTH_VARIANTS=add,hyper,hyper_static,mhc,dense,resi_dual,attn_res,attn_res_blocks2,hyper_recompute,mhc_recompute,value_residual_learned,unet_skips,laurel,laurel_pa,frac,ngpt

part() {  # part NAME COMMAND...: run COMMAND if NAME is in $PARTS, with its start, end and exit status
    local name=$1; shift
    case " $PARTS " in *" $name "*) ;; *) return 0 ;; esac
    echo "== $name: start $(date -u +%H:%M:%S): $*"
    "$@"; local rc=$?
    echo "== $name: end $(date -u +%H:%M:%S), exit $rc"
}

# LLaMA / GPT-2 cells against transformers' models at tiny and small: training, prefill, decode, memory, parity, MFU.
part pairs $B --suites llama,gpt2 --sizes tiny,small --rounds 7 --json benchmarks/results_cpu_pairs.json --markdown benchmarks/results_cpu_pairs.md
# Depth mixing at the issue's small size (d=512, L=8, T=256), eager, with saved-activation bytes.
part depth $R --hidden-size 512 --layers 8 --heads 8 --seq-len 256 --batch-size 2 --rounds 7 --min-seconds 0 --variants $DEPTH_VARIANTS --json benchmarks/results_cpu_depth.json
part medium $B --suites llama --sizes medium --rounds 3 --no-parity --json benchmarks/results_cpu_medium.json --markdown benchmarks/results_cpu_medium.md
# Compiled vs compiled: every model in a fresh process with its own empty inductor cache, every round.
part compile $B --suites compile --compile-sizes tiny --rounds 3 --no-parity --json benchmarks/results_cpu_compile.json --markdown benchmarks/results_cpu_compile.md
part placements $B --suites placements --placement-sizes tiny,small --suite-rounds placements=3 --no-parity --json benchmarks/results_cpu_placements.json --markdown benchmarks/results_cpu_placements.md
part seqlen $B --suites seqlen --seq-lens 128,256,512,1024,2048 --rounds 5 --no-parity --json benchmarks/results_cpu_seqlen.json --markdown benchmarks/results_cpu_seqlen.md
# Headline pairs again at the small size with more rounds (the ratios above, tightened).
part small15 $B --suites llama,gpt2 --sizes small --rounds 15 --no-parity --json benchmarks/results_cpu_small15.json --markdown benchmarks/results_cpu_small15.md
# The four single-stream placements of the 5% target (and norm-free) again at the small size, with 9 rounds.
part placements9 $B --suites placements --placement-sizes small --variants ours_pos_post,ours_pos_sandwich,ours_pos_output,ours_pos_pre_post,ours_pos_none --suite-rounds placements=9 --no-parity --json benchmarks/results_cpu_placements9.json --markdown benchmarks/results_cpu_placements9.md
# Depth mixing compiled (each variant in a fresh process with its own cache), the multi-stream layouts.
part depth_compile $R --hidden-size 512 --layers 8 --heads 8 --seq-len 256 --batch-size 2 --rounds 1 --min-seconds 0 --compile --no-memory --variants add,hyper,hyper_static,mhc,dense,attn_res,attn_res_blocks2 --json benchmarks/results_cpu_depth_compile.json
# MFU with the machine's 2 threads (the parts above use 1), against a matmul peak measured in the same run.
part mfu2 python benchmarks/bench.py --threads 2 --suites llama --sizes small --metrics train --rounds 3 --no-parity --no-memory --json benchmarks/results_cpu_mfu2.json --markdown benchmarks/results_cpu_mfu2.md

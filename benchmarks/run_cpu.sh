#!/usr/bin/env bash
# The CPU run behind benchmarks/RESULTS.md: one torch thread, timed by process CPU time (the machine is shared),
# each part a separate process writing its own JSON + Markdown, so a part that fails leaves the others intact.
set -uo pipefail
cd "$(dirname "$0")/.."
B="python benchmarks/bench.py --threads 1"
$B --suites llama,gpt2 --sizes tiny,small --rounds 7 --json benchmarks/results_cpu_pairs.json --markdown benchmarks/results_cpu_pairs.md
$B --suites seqlen --seq-lens 128,256,512,1024,2048 --rounds 5 --no-parity --json benchmarks/results_cpu_seqlen.json --markdown benchmarks/results_cpu_seqlen.md
$B --suites compile --compile-sizes tiny --rounds 5 --no-parity --json benchmarks/results_cpu_compile.json --markdown benchmarks/results_cpu_compile.md
$B --suites placements --placement-sizes tiny,small --suite-rounds placements=3 --no-parity --json benchmarks/results_cpu_placements.json --markdown benchmarks/results_cpu_placements.md
# Headline pairs again at the small size with more rounds (the ratios above, tightened), then the medium size.
$B --suites llama,gpt2 --sizes small --rounds 15 --no-parity --json benchmarks/results_cpu_small15.json --markdown benchmarks/results_cpu_small15.md
$B --suites llama --sizes medium --rounds 3 --no-parity --json benchmarks/results_cpu_medium.json --markdown benchmarks/results_cpu_medium.md
# The four single-stream placements of the 5% target (and norm-free) again at the small size, with 9 rounds.
$B --suites placements --placement-sizes small --variants ours_pos_post,ours_pos_sandwich,ours_pos_output,ours_pos_pre_post,ours_pos_none --suite-rounds placements=9 --no-parity --json benchmarks/results_cpu_placements9.json --markdown benchmarks/results_cpu_placements9.md

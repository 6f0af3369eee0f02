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

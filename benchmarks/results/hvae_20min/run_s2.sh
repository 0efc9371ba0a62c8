#!/bin/bash
# The second seed of L=1 against L=2 at 20 minutes (issue 36): today's 20-minute default (L=1,
# bf16, 24 epochs) with seed 2, on the quick protocol (first 2,000 test images, S=250), paired
# against the L=2 K=1 seed-2 run of the mixture study (results/hvae_mixture_top/run.sh). Run it alone.
# usage: [PY=python] benchmarks/results/hvae_20min/run_s2.sh [OUT] [L2_RUN]
set -u
cd "$(dirname "$0")/../../.."
PY=${PY:-.venv/bin/python}
V="$PY -m vaekit"
O=${1:-/work/exp/hvae20_s2}
L2=${2:-/work/exp/hvae_mixture_top/k1_s2}
mkdir -p "$O"
$V train --precision bf16 --epochs 24 --max-minutes 20 --seed 2 --out "$O/l1" --quiet > "$O/l1.log" 2>&1
$V evaluate "$O/l1" --test-subset 2000 --nll-samples 250 --no-quality --quiet >> "$O/l1.log" 2>&1
$V compare "$O/l1" "$L2" --json "$O/compare_l1_l2.json" > "$O/compare_l1_l2.txt" 2>&1

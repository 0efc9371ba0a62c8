#!/bin/bash
# A two-level hierarchy with a 2-channel lower group (8x8x2, `--group-channels 2`) against today's
# 20-minute default (L=1, bf16), both `--epochs 24 --max-minutes 20`, one seed, on the quick
# protocol (first 2,000 test images, S=250), paired with `vaekit compare`. Run it alone.
# usage: [PY=python] benchmarks/results/hvae_20min/run_gc2.sh SEED [OUT]   (default /work/exp/hvae20_sSEED)
set -u
cd "$(dirname "$0")/../../.."
PY=${PY:-.venv/bin/python}
V="$PY -m vaekit"
S=$1
O=${2:-/work/exp/hvae20_s$S}
mkdir -p "$O"
[ -f "$O/l1/config.json" ] || $V train --precision bf16 --epochs 24 --max-minutes 20 --seed "$S" --out "$O/l1" --quiet > "$O/l1.log" 2>&1
[ -f "$O/l2_gc2/config.json" ] || $V train --levels 2 --group-channels 2 --epochs 24 --max-minutes 20 --seed "$S" \
  --out "$O/l2_gc2" --quiet > "$O/l2_gc2.log" 2>&1
for r in l1 l2_gc2; do
  [ -f "$O/$r/evaluation.json" ] || $V evaluate "$O/$r" --test-subset 2000 --nll-samples 250 --no-quality --quiet >> "$O/$r.log" 2>&1
done
$V compare "$O/l1" "$O/l2_gc2" --json "$O/compare_gc2.json" > "$O/compare_gc2.txt" 2>&1

#!/bin/bash
# Today's 20-minute default (L=1, bf16) against a two-level hierarchy with a 2-channel lower group
# (8x8x2, `--group-channels 2`), both `--epochs 24 --max-minutes 20`, one seed, on the quick
# protocol (first 2,000 test images, S=250), paired with `vaekit compare`; given an L2_RUN (an
# L=2 run with the default 8-channel lower group, e.g. the mixture study's K=1 run of the same
# seed), the L=1 run is compared with it too. Finished steps are skipped. Run it alone.
# usage: [PY=python] benchmarks/results/hvae_20min/run_gc2.sh SEED [OUT] [L2_RUN]   (default OUT /work/exp/hvae20_sSEED)
#   seed 2:     run_gc2.sh 2 /work/exp/hvae20_s2 /work/exp/hvae_mixture_top/k1_s2
#   seed 69420: run_gc2.sh 69420
set -u
cd "$(dirname "$0")/../../.."
PY=${PY:-.venv/bin/python}
V="$PY -m vaekit"
S=$1
O=${2:-/work/exp/hvae20_s$S}
L2=${3:-}
mkdir -p "$O"
[ -f "$O/l1/config.json" ] || $V train --precision bf16 --epochs 24 --max-minutes 20 --seed "$S" --out "$O/l1" --quiet > "$O/l1.log" 2>&1
[ -f "$O/l2_gc2/config.json" ] || $V train --levels 2 --group-channels 2 --epochs 24 --max-minutes 20 --seed "$S" \
  --out "$O/l2_gc2" --quiet > "$O/l2_gc2.log" 2>&1
for r in l1 l2_gc2; do
  [ -f "$O/$r/evaluation.json" ] || $V evaluate "$O/$r" --test-subset 2000 --nll-samples 250 --no-quality --quiet >> "$O/$r.log" 2>&1
done
if [ -n "$L2" ]; then
  $V compare "$O/l1" "$L2" --json "$O/compare_l1_l2.json" > "$O/compare_l1_l2.txt" 2>&1
  $V compare "$O/l1" "$L2" "$O/l2_gc2" --json "$O/compare_gc2.json" > "$O/compare_gc2.txt" 2>&1
else
  $V compare "$O/l1" "$O/l2_gc2" --json "$O/compare_gc2.json" > "$O/compare_gc2.txt" 2>&1
fi

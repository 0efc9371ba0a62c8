#!/bin/bash
# The mixture at the top of the hierarchy (issue 36): K=5 (pathwise, learned weights) against
# K=1 for the top group of --levels 2, at equal time (--max-minutes 20, epochs sized to fill it),
# two seeds, paired on the quick protocol (first 2,000 test images, S=250); then the per-image
# posterior gap of the top group (benchmarks/posterior_gap.py) on the first K=1 run. Run it alone.
# usage: [PY=python] [SEEDS="69420 2"] benchmarks/results/hvae_mixture_top/run.sh [OUT]   (default /work/exp/hvae_mixture_top)
set -u
cd "$(dirname "$0")/../../.."
PY=${PY:-.venv/bin/python}
V="$PY -m vaekit"
O=${1:-/work/exp/hvae_mixture_top}
mkdir -p "$O"
for seed in ${SEEDS:-69420 2}; do
  for k in 1 5; do
    r=$O/k${k}_s$seed
    [ -f "$r/evaluation.json" ] && continue
    if [ -f "$r/config.json" ]; then  # a run stopped part-way (the session ended): finish it
      $V train --resume "$r" --quiet >> "$r.log" 2>&1
    else
      $V train --levels 2 --components $k --mixture-estimator pathwise --seed $seed --epochs 20 --max-minutes 20 \
        --out "$r" --quiet > "$r.log" 2>&1
    fi
    $V evaluate "$r" --test-subset 2000 --nll-samples 250 --no-quality --quiet >> "$r.log" 2>&1
  done
  $V compare "$O/k1_s$seed" "$O/k5_s$seed" --json "$O/compare_s$seed.json" > "$O/compare_s$seed.txt" 2>&1
  # After the first seed: the top group's posterior gap, so a session that ends early has it.
  [ -f "$O/posterior_gap.json" ] || [ ! -f "$O/k1_s69420/evaluation.json" ] || $PY benchmarks/posterior_gap.py "$O/k1_s69420" --images 100 --steps 150 \
    --samples 8 --nll-samples 1000 --device cpu --out "$O/posterior_gap.json" > "$O/posterior_gap.txt" 2>&1
done

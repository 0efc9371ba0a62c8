#!/bin/bash
# The papers' S=5,000 against vaekit's S=1,000 for zoo:fashion-mnist-hvae, paired over the first
# 1,000 test images (as for the single-level models in the README's results table): both
# evaluations on those images, then the per-image S=5,000 - S=1,000 difference (vaekit's paired_difference;
# `vaekit compare` refuses two S by design). ~22 minutes on 2 cores.
# usage: [PY=python] benchmarks/results/hvae_long/s5000.sh [OUT]   (default OUT /work/exp/hvae_s5000)
set -eu
cd "$(dirname "$0")/../../.."
PY=${PY:-$PWD/.venv/bin/python}
V="$PY -m vaekit"
O=${1:-/work/exp/hvae_s5000}
mkdir -p "$O"
for S in 1000 5000; do
  [ -f "$O/s$S/evaluation.json" ] && continue
  (cd "$O" && $V evaluate zoo:fashion-mnist-hvae --no-quality --quiet --test-subset 1000 --nll-samples $S > "$O/s$S.log" 2>&1)
  mkdir -p "$O/s$S" && cp "$O/zoo-fashion-mnist-hvae/evaluation.json" "$O/zoo-fashion-mnist-hvae/evaluation_per_image.npz" "$O/s$S/"
done
$PY - "$O" <<'PY'
import json, sys
from vaekit.evaluation.compare import load_evaluated_run, paired_difference
out = sys.argv[1]
runs = {s: load_evaluated_run(f"{out}/s{s}") for s in (1000, 5000)}
assert (runs[1000].index == runs[5000].index).all()  # the same images in the same order
result = {f"S={s}": float(r.nll.mean()) for s, r in runs.items()}
result["S=5000 - S=1000"] = paired_difference(runs[1000].nll, runs[5000].nll)
json.dump(result, open(f"{out}/s5000_minus_s1000.json", "w"), indent=2)
print(json.dumps(result, indent=2))
PY

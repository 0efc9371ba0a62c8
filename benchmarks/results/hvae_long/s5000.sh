#!/bin/bash
# The papers' S=5,000 against vaekit's S=1,000 for zoo:fashion-mnist-hvae, paired over the first
# 1,000 test images (as for the single-level models in the README's results table): both
# evaluations on those images, then the per-image S=5,000 - S=1,000 difference and its standard
# error (`vaekit compare` refuses two S by design). ~22 minutes on 2 cores.
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
import numpy as np
out = sys.argv[1]
nll = {s: np.load(f"{out}/s{s}/evaluation_per_image.npz")["nll"] for s in (1000, 5000)}
d = nll[5000] - nll[1000]
result = {f"S={s}": float(v.mean()) for s, v in nll.items()}
result.update(images=len(d), difference=float(d.mean()), stderr=float(d.std(ddof=1) / np.sqrt(len(d))))
json.dump(result, open(f"{out}/s5000_minus_s1000.json", "w"), indent=2)
print(json.dumps(result, indent=2))
PY

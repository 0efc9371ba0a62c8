#!/bin/bash
# usage: scripts/weights_hash.sh [PYTHON] > hashes.txt  -- run it before and after a refactor and diff the two: it trains tiny runs with fixed seeds from the current directory's src and prints a hash of each run's final weights
PY=${1:-python}
set -e
T=$(mktemp -d)
run() { name=$1; shift; PYTHONPATH=$PWD/src $PY -m vaekit train --dataset digits --image-size 28 --epochs 2 --width 16 --latent-size 4 --train-subset 256 --batch-size 64 --quiet --out $T/$name "$@" >/dev/null 2>&1 || { echo "$name FAILED"; return; }
  PYTHONPATH=$PWD/src $PY - "$T/$name" "$name" <<'PYEOF'
import sys, hashlib, pathlib
from safetensors.torch import load_file
run = pathlib.Path(sys.argv[1])
files = sorted(run.rglob("*.safetensors"), key=lambda p: p.stat().st_mtime)
h = hashlib.sha256()
sd = load_file(str(files[-1]))
for k in sorted(sd):
    h.update(k.encode()); h.update(sd[k].float().numpy().tobytes())
print(sys.argv[2], h.hexdigest()[:16], len(sd), "tensors")
PYEOF
}
run k1
run k3pw --components 3 --mixture-estimator pathwise --prior vamp --prior-components 4
run k3marg --components 3 --prior mog --iw-samples 2 --lr-schedule cosine
run k3strat --components 3 --mixture-estimator stratified --mixture-weights equal
run grey_gauss --likelihood gaussian --grey --kl-warmup 1 --beta 0.5
run grey_logistic --likelihood logistic --logistic-mixtures 2 --grey
run cb --likelihood continuous-bernoulli --grey --free-bits 0.1 --prior normal  # free bits need the normal prior
rm -rf $T

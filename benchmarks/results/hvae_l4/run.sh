#!/bin/bash
# A four-level hierarchy (lower groups at 4x4, 8x8 and 16x16, 2 channels each) on the
# equal-time run's schedule (../hvae_eq148_gc2: width 128, the 50,000/10,000 split, a 185-epoch
# cosine, bf16 by `--precision auto`, capped at 148 minutes), to compare with the two-level
# run's validation ELBO at equal epochs and equal minutes (its metrics.csv is beside that
# script). Stopped with SIGINT it keeps a resumable checkpoint; `./run.sh OUT` again resumes.
# Run it alone.
# usage: [PY=python] benchmarks/results/hvae_l4/run.sh [OUT]   (default OUT /work/exp/hvae_l4)
set -u
cd "$(dirname "$0")/../../.."
PY=${PY:-$PWD/.venv/bin/python}
O=${1:-/work/exp/hvae_l4}
mkdir -p "$O"
if [ -f "$O/run/config.json" ]; then
  $PY -m vaekit train --resume "$O/run" --quiet >> "$O/train.log" 2>&1
else
  $PY -m vaekit train --out "$O/run" --val-size 10000 --levels 4 --group-channels 2 --width 128 \
    --epochs 185 --max-minutes 148 --quiet > "$O/train.log" 2>&1
fi

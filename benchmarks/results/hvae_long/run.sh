#!/bin/bash
# Issue 36's long run: the equal-time run (../hvae_eq148_gc2: `--levels 2 --group-channels 2
# --width 128 --val-size 10000`, bf16, 185 epochs in ~147.5 min) continued on a copy of its
# folder with the schedule extended to 620 epochs. Extending --epochs moves the cosine: the
# learning rate steps from ~0 back to 0.80x the peak (2.4e-3) at epoch 186 and anneals again over
# epochs 186-620 (a warm restart). At most 8 hours of training in all, the 147.5 minutes
# included; training time = the sum of metrics.csv's `seconds` column (validation excluded).
# Run it alone; stop it with SIGINT (the checkpoint of the step it was in is kept) and continue
# with `run.sh OUT` again: each call resumes where the last stopped.
# Processes (code of 33c466d from a worktree): 2026-12-02 22:16- (epoch 186 on; epochs
# 187-195 slowed 3-7x by a classifier's training and tests beside it).
# usage: [PY=python] [FROM=RUN] benchmarks/results/hvae_long/run.sh [OUT]
#   (default FROM /work/exp/hvae_eq148/run, the equal-time run; default OUT /work/exp/hvae_long)
set -eu
cd "$(dirname "$0")/../../.."
PY=${PY:-$PWD/.venv/bin/python}
O=${1:-/work/exp/hvae_long}
FROM=${FROM:-/work/exp/hvae_eq148/run}
if [ ! -f "$O/run/config.json" ]; then
  [ -f "$FROM/config.json" ] || { echo "no run at $FROM: train ../hvae_eq148_gc2/run.sh first" >&2; exit 2; }
  mkdir -p "$O" && cp -a "$FROM" "$O/run" && rm -f "$O"/run/evaluation*
fi
exec $PY -m vaekit train --resume "$O/run" --epochs 620 --quiet

#!/bin/bash
# Issue 36's equal-time run: the hierarchy (--levels 2) at width 128 on the literature's split,
# bf16 (auto on this CPU) and --compile, 96 epochs sized to take ~148 minutes of training on this
# Xeon (L=2 width 128 compiled: ~671 img/s in a step benchmark, 2026-12-02 06:50), against
# zoo:fashion-mnist-long (300 epochs in 148 min on the AMD EPYC of an earlier session).
# The code is a frozen worktree of commit 7c0a44f (/work/exp/code_7c0a44f), so edits to the
# checkout cannot reach the run. Interrupted with SIGINT (checkpoint kept) whenever the CPU is
# needed; resumed with:  ./run.sh --resume
# Training time = the sum of metrics.csv's `seconds` column.
cd /work/exp/code_7c0a44f
export PYTHONPATH=/work/exp/code_7c0a44f/src
V="/work/main/.venv/bin/python -m vaekit"
if [ "${1:-}" = "--resume" ]; then
  exec $V train --resume /work/exp/hvae_148/run --quiet
fi
exec $V train --levels 2 --width 128 --val-size 10000 --epochs 96 --compile --out /work/exp/hvae_148/run --quiet

#!/bin/bash
# Issue 36's long run: the equal-time run (../hvae_eq148_gc2: `--levels 2 --group-channels 2
# --width 128 --val-size 10000`, bf16, 185 epochs in ~147.5 min) continued on a copy of its
# folder with the schedule extended to 620 epochs. Extending --epochs moves the cosine: the
# learning rate steps from ~0 back to 0.80x the peak (2.4e-3) at epoch 186 and anneals again over
# epochs 186-620 (a warm restart). At most 8 hours of training in all, the 147.5 minutes
# included; training time = the sum of metrics.csv's `seconds` column (validation excluded).
# Run it alone; stop it with SIGINT (the checkpoint of the step it was in is kept) and continue
# with `run.sh OUT` again: each call resumes where the last stopped.
# Once the 620 epochs are trained: the full protocol on the last checkpoint (all 10,000 test
# images, S=1,000; its wall-clock minutes in OUT/full_eval_minutes.txt), paired against
# zoo:fashion-mnist-long with `vaekit compare`, the Fréchet distance of its prior samples
# (../hvae_samples/frechet.py, the classifier of the table there) and a 64-sample grid.
# Finished steps are skipped.
# Processes: 2026-12-02 22:16 - 2026-12-03 00:45 (code of 33c466d, epochs 186-385, stopped by
# that process's 148-minute cap; epochs 187-195 slowed 3-7x by a classifier's training and tests
# beside it); 2026-12-03 04:02-04:16 (831d2e2, epochs 385-407, `--max-minutes 135`), 04:23-05:32
# (bbcd67c, epochs 407-504; 04:28-04:32 ~25% slower beside a niced test), 05:43-~06:00 (ebe6518,
# epochs 504-529, stopped by the session's end), 06:14-07:15 (8bbd123, epochs 529-620; 06:30-07:15
# ~25% slower beside niced tests); the evaluation 07:17-07:57 (601ad33) alone. The others were
# stopped with SIGINT to run the test suite alone.
# usage: [PY=python] [FROM=RUN] benchmarks/results/hvae_long/run.sh [OUT]
#   (default FROM /work/exp/hvae_eq148/run, the equal-time run; default OUT /work/exp/hvae_long)
set -eu
cd "$(dirname "$0")/../../.."
PY=${PY:-$PWD/.venv/bin/python}
V="$PY -m vaekit"
O=${1:-/work/exp/hvae_long}
R=$O/run
FROM=${FROM:-/work/exp/hvae_eq148/run}
EPOCHS=620
if [ ! -f "$R/config.json" ]; then
  [ -f "$FROM/config.json" ] || { echo "no run at $FROM: train ../hvae_eq148_gc2/run.sh first" >&2; exit 2; }
  mkdir -p "$O" && cp -a "$FROM" "$R" && rm -f "$R"/evaluation*
fi
trained() { [ "$(tail -n 1 "$R/metrics.csv" | cut -d, -f1)" = "$EPOCHS" ]; }
trained || $V train --resume "$R" --epochs "$EPOCHS" --quiet >> "$O/train.log" 2>&1
trained || { echo "the run stopped before epoch $EPOCHS: run this again to continue it" >&2; exit 1; }
if [ ! -f "$R/evaluation.json" ]; then
  start=$(date +%s)
  $V evaluate "$R" --checkpoint latest --no-quality --quiet > "$O/full_eval.log" 2>&1
  echo "scale=1; ($(date +%s) - $start) / 60" | bc > "$O/full_eval_minutes.txt"
fi
[ -f "$O/compare_full.json" ] || $V compare zoo:fashion-mnist-long "$R" --json "$O/compare_full.json" > "$O/compare_full.txt" 2>&1
[ -f "$O/frechet.json" ] || $PY benchmarks/results/hvae_samples/frechet.py "$R" --out "$O/frechet.json" > "$O/frechet.log" 2>&1
[ -f "$O/samples.png" ] || $V sample "$R" -n 64 --out "$O/samples.png" > /dev/null

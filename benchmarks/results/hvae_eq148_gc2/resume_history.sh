#!/bin/bash
# The first process ran 16:48:41-16:56:42 (8.0 min, 11 epochs + 77 steps of a 180-epoch schedule); interrupted
# with SIGINT and resumed with the schedule extended to 220 epochs and the rest of the 148-minute budget.
cd /work/exp/hvae_eq148
PYTHONPATH=/work/exp/code_eq/src /work/main/.venv/bin/python -m vaekit train --resume /work/exp/hvae_eq148/run \
  --epochs 220 --max-minutes 139.9 --quiet
# Second process 16:56:55-17:28:46 (31.8 min, to epoch 57 step 22158 of the 220-epoch schedule); the hour slowed
# (36 -> 45 s an epoch), so the schedule was cut to 185 epochs to end inside the budget:
#   --resume run --epochs 185 --max-minutes 107.5

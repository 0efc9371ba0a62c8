#!/bin/bash
# The 20-minute budget for the hierarchy: --levels 2 with today's defaults (bf16 on this CPU),
# epochs sized to fill ~20 minutes at its measured step cost (1.13x L=1's in bf16: 21 epochs),
# capped by --max-minutes 20; paired on the quick protocol against /work/exp/bf16_20min/bf16.
set -u
cd /work/main
V=.venv/bin/vaekit
O=/work/exp/hvae20
R=${1:-l2}; shift
$V train --levels 2 --epochs 21 --max-minutes 20 --out $O/$R --quiet "$@" > $O/$R.log 2>&1
$V evaluate $O/$R --test-subset 2000 --nll-samples 250 --no-quality --quiet >> $O/$R.log 2>&1
$V compare /work/exp/bf16_20min/bf16 $O/$R --json $O/compare_$R.json > $O/compare_$R.txt 2>&1

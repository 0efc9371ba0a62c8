#!/bin/bash
# The 20-minute budget: today's defaults in fp32 and in bf16, each with the epochs that fill ~20
# minutes at its measured speed (fp32 ~57 s an epoch with validation: 20; bf16 ~48 s: 24), capped by
# --max-minutes 20, then paired on the quick protocol (first 2,000 test images, S=250).
set -u
cd /work/main
V=.venv/bin/vaekit
O=/work/exp/bf16_20min
$V train --precision fp32 --epochs 20 --max-minutes 20 --out $O/fp32 --quiet > $O/fp32.log 2>&1
$V train --precision bf16 --epochs 24 --max-minutes 20 --out $O/bf16 --quiet > $O/bf16.log 2>&1
for r in fp32 bf16; do $V evaluate $O/$r --test-subset 2000 --nll-samples 250 --no-quality --quiet >> $O/$r.log 2>&1; done
$V compare $O/fp32 $O/bf16 --json $O/compare.json > $O/compare.txt 2>&1

#!/bin/bash
# bf16 against fp32 training at equal epochs (8, the demo's), two seeds, paired on the quick protocol
# (first 2,000 test images, S=250). Runs live here, outside the checkout.
set -u
cd /work/main
V=.venv/bin/vaekit
OUT=/work/exp/bf16q
for seed in 69420 2; do
  for prec in fp32 bf16; do
    run=$OUT/$prec-s$seed
    [ -f $run/checkpoints/latest ] || { /usr/bin/time -f "$prec-s$seed train %e s" $V train --epochs 8 --seed $seed --precision $prec --out $run --quiet > $run.log 2>&1; tail -1 $run.log; }
  done
done
for seed in 69420 2; do
  for prec in fp32 bf16; do
    run=$OUT/$prec-s$seed
    [ -f $run/evaluation.json ] || /usr/bin/time -f "$prec-s$seed eval %e s" $V evaluate $run --test-subset 2000 --nll-samples 250 --no-quality --quiet --headline >> $run.log 2>&1
  done
  $V compare $OUT/fp32-s$seed $OUT/bf16-s$seed --json $OUT/compare-s$seed.json > $OUT/compare-s$seed.txt 2>&1
  cat $OUT/compare-s$seed.txt
done

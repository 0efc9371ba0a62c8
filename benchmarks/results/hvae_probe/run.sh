#!/bin/bash
# Design probes for the hierarchy at equal epochs: today's defaults (gated 96, VampPrior, bf16)
# for 8 epochs, seed 69420, against /work/exp/bf16q/bf16-s69420 (L=1, the same, val ELBO -232.253).
# usage: run.sh NAME [vaekit train flags]
set -u
cd /work/main
n=$1; shift
O=/work/exp/hvae_probe
/usr/bin/time -f "$n train %e s" .venv/bin/vaekit train --epochs 8 --seed 69420 --out $O/$n --quiet "$@" > $O/$n.log 2>&1

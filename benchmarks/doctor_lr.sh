#!/usr/bin/env bash
# `steplab doctor` on the default preset at its learning rate, x100 and /100 (600 steps each, ~3 x 10 CPU-minutes).
#   bash benchmarks/doctor_lr.sh
set -euo pipefail
out=${OUT:-runs/doctor_lr}
for lr in 3e-3 3e-1 3e-5; do
  steplab train --preset default --optim.lr "$lr" --train.tensorboard false --quiet \
    --run-dir "$out/lr$lr" --overwrite > /dev/null || true   # a diverged run exits 1: doctor still reads it
  steplab doctor "$out/lr$lr"
done

#!/usr/bin/env bash
# The learning-rate sweep behind steplab.optim.DEFAULT_LR: for each optimizer, three or four
# peak learning rates half a decade apart (a fourth where the best of three was at an edge) on the shakespeare_char model (4 layers, width 128,
# context 64, batch 12, cosine with 100 warm-up steps), 300 steps, one seed, final
# validation loss on a fixed seeded subset of 400 validation windows. Measured in steps,
# so the figures do not depend on the machine's speed. 38 runs of 300 steps; re-running
# with a longer grid trains only the new points (compare skips finished runs).
#
#   bash benchmarks/lr_sweep.sh                 # all optimizers
#   bash benchmarks/lr_sweep.sh muon lion       # some
#   STEPS=1000 bash benchmarks/lr_sweep.sh muon=1e-2,3e-2   # a longer horizon, own grid
set -euo pipefail
STEPS=${STEPS:-300}
OUT=${OUT:-runs/lr-sweep-${STEPS}}
PY=${PY:-python}
declare -A GRID=(
  [adamw]=1e-3,3e-3,1e-2,3e-2
  [adam]=1e-3,3e-3,1e-2,3e-2
  [sgd]=3e-2,0.1,0.3,1.0
  [adagrad]=3e-3,1e-2,3e-2,1e-1
  [rmsprop]=3e-4,1e-3,3e-3,1e-2
  [lion]=1e-4,3e-4,1e-3,3e-3
  [muon]=3e-3,1e-2,3e-2,1e-1
  [schedulefree_adamw]=1e-3,3e-3,1e-2,3e-2
  [adafactor]=3e-2,1e-1,3e-1
  [soap]=1e-3,3e-3,1e-2,3e-2
)
NAMES=("$@")
[ ${#NAMES[@]} -eq 0 ] && NAMES=(adamw muon lion sgd adagrad rmsprop adam schedulefree_adamw adafactor soap)
for arg in "${NAMES[@]}"; do
  name=${arg%%=*}
  lrs=${GRID[$name]}
  [[ "$arg" == *=* ]] && lrs=${arg#*=}
  $PY -m steplab compare --preset shakespeare_char --optim.name "$name" --vary "optim.lr=$lrs" \
    --train.max-steps "$STEPS" --eval.every 0 --eval.max-windows 400 --train.threads 1 \
    --train.tensorboard false --quiet --out "$OUT/$name"
done

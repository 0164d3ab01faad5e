#!/usr/bin/env bash
# The acceptance comparison of docs/optimizers.md (issue 3): six optimizers plus the project
# seed's AdamW setting on char-level Tiny Shakespeare, 120 s of training per run, 2 seeds.
# 14 runs: 28 minutes of training plus the evaluations (every 250 steps, whole validation split).
# Run it on an otherwise idle machine: the budget is wall-clock training time.
# Interrupt it freely; running it again continues where it stopped.
set -euo pipefail
PY=${PY:-python}
$PY -m steplab compare --preset shakespeare_char \
  --vary optim.name=adamw,muon,lion,sgd,adagrad,rmsprop \
  --variant seed_adamw optim.name=adamw optim.lr=1e-3 optim.eps=1e-8 optim.weight-decay=0.01 optim.beta2=0.999 \
  --train.max-seconds 120 --seeds 2 --target-loss 2.0 --out "${OUT:-runs/compare-optimizers}" "$@"

#!/usr/bin/env bash
# Per-step host-device sync cost of the divergence guard: tokens/s with --guard.policy off vs skip.
# Run on a GPU in a quiet window (timings on a shared machine are meaningless). Each run: 300 steps.
#   bash benchmarks/guard_overhead.sh [PRESET ...]      (default: tiny default gpt2_small)
set -euo pipefail
out=${OUT:-runs/guard_overhead}
presets=("$@")
[ ${#presets[@]} -eq 0 ] && presets=(tiny default gpt2_small)
for preset in "${presets[@]}"; do
  for policy in off skip; do
    steplab train --preset "$preset" --guard.policy "$policy" --train.max-steps 300 --train.log-every 50 \
      --eval.every 0 --train.tensorboard false --quiet --run-dir "$out/$preset-$policy" --overwrite > /dev/null
    python - "$out/$preset-$policy" <<'PY'
import json, statistics, sys
recs = [json.loads(l) for l in open(sys.argv[1] + "/metrics.jsonl") if '"tokens_per_second"' in l]
tps = statistics.median(r["tokens_per_second"] for r in recs[1:])  # the first interval includes warm-up
print(f"{sys.argv[1]}: median {tps:,.0f} tokens/s over {len(recs) - 1} log intervals")
PY
  done
done

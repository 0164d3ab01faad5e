#!/usr/bin/env bash
# docs/finetune.md's worked example: pretrain a small Llama-style model with steplab on Tiny
# Shakespeare, export it as a transformers directory (the "pretrained model"), then fine-tune
# it on another corpus (nine software licenses shipped by Debian's base-files): the loss
# before fine-tuning, lr-find's suggestion, a 5-point learning-rate grid, a fine-tune at the
# suggestion, and the same model trained from scratch on the licenses for comparison.
# Losses only (no timing claims): about 10 minutes of CPU on 2 idle cores. Extra flags go to
# every training command (e.g. --train.threads 2).
set -euo pipefail
PY=${PY:-python}
OUT=${OUT:-runs/finetune-example}
L=/usr/share/common-licenses
mkdir -p "$OUT"
cat $L/Apache-2.0 $L/Artistic $L/BSD $L/GFDL-1.3 $L/GPL-2 $L/GPL-3 $L/LGPL-2.1 $L/LGPL-3 $L/MPL-2.0 > "$OUT/licenses.txt"
FT=(--init-from "$OUT/base-hf" --data "$OUT/licenses.txt")

# 1. The pretrained model: 4 layers, width 128, context 64, BPE 1024, 500 steps of 16 x 64 tokens.
$PY -m steplab train --preset llama_char --tokenizer bpe --tokenizer.vocab-size 1024 \
  --train.batch-size 16 --train.max-steps 500 --optim.lr 3e-3 --schedule.warmup-steps 50 --eval.every 250 \
  --run-dir "$OUT/base" --overwrite --quiet "$@"
$PY -m steplab export --run "$OUT/base" --out "$OUT/base-hf" --overwrite

# 2. The pretrained model on the licenses, before any fine-tuning (validation split of the fine-tune).
$PY - "$OUT" <<'PYEOF'
import json, sys
from steplab.loop.session import build, evaluate
from steplab.presets import get_preset
cfg = get_preset("finetune")
cfg.train.init_from, cfg.data.path, cfg.train.progress = f"{sys.argv[1]}/base-hf", f"{sys.argv[1]}/licenses.txt", False
res = evaluate(build(cfg))
print(json.dumps(res))
open(f"{sys.argv[1]}/before.json", "w").write(json.dumps(res))
PYEOF

# 3. lr-find on the fine-tune, then a fine-tune at its suggestion (the finetune preset otherwise).
$PY -m steplab lr-find "${FT[@]}" --out "$OUT/lr-find" "$@"
LR=$($PY -c "import json,sys; print(f\"{json.load(open(sys.argv[1]))['suggestion']['lr']:.3g}\")" "$OUT/lr-find/lr_find.json")
$PY -m steplab train "${FT[@]}" --optim.lr "$LR" --run-dir "$OUT/at-suggestion" --overwrite --quiet "$@"

# 4. The 5-point grid around the preset's 3e-4, same data, seed and budget (the preset's 200 steps).
$PY -m steplab compare "${FT[@]}" --vary optim.lr=3e-5,1e-4,3e-4,1e-3,3e-3 --train.max-steps 200 \
  --out "$OUT/grid" --overwrite --quiet "$@"

# 5. The same model and tokenizer trained from scratch on the licenses, 200 steps (lr 3e-3, as pretraining).
$PY -m steplab train --preset finetune --tokenizer "$OUT/base-hf/tokenizer.json" --data "$OUT/licenses.txt" \
  --model.pos rope --model.norm rmsnorm --model.mlp swiglu --model.bias false --model.tie-embeddings false \
  --model.block-size 64 --optim.lr 3e-3 --run-dir "$OUT/scratch" --overwrite --quiet "$@"

$PY -m steplab runs "$OUT"

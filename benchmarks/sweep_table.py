"""Markdown table of an lr sweep made by benchmarks/lr_sweep.sh (reads each results.json).

python benchmarks/sweep_table.py runs/lr-sweep-300
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main(root: Path) -> None:
    print("| optimizer | final val loss by peak lr (best in bold) |")
    print("|---|---|")
    for path in sorted(root.glob("*/results.json")):
        rows = json.loads(path.read_text())["variants"]
        losses = {float(r["lr"]): r["mean"] for r in rows}
        finite = {lr: v for lr, v in losses.items() if v is not None}
        best = min(finite, key=finite.__getitem__) if finite else None
        cells = []
        for lr in sorted(losses):
            v = losses[lr]
            text = f"{lr:g}: {v:.3f}" if v is not None else f"{lr:g}: diverged"
            cells.append(f"**{text}**" if lr == best else text)
        print(f"| {path.parent.name} | {', '.join(cells)} |")


if __name__ == "__main__":
    main(Path(sys.argv[1]))

"""Autoregressive sampling: temperature, top-k, top-p (nucleus), seeded, streamed."""

from __future__ import annotations

from collections.abc import Iterator

import torch

from steplab.model import GPT


def filter_logits(logits: torch.Tensor, *, top_k: int | None, top_p: float | None) -> torch.Tensor:
    """Mask logits (B, V) outside the top-k and outside the smallest set with mass >= top_p."""
    if top_k is not None and 0 < top_k < logits.size(-1):
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and 0 < top_p < 1:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        drop = cum - sorted_logits.softmax(-1) >= top_p  # keep the token that crosses top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    return logits


@torch.no_grad()
def generate(
    model: GPT,
    prompt: torch.Tensor,
    max_new_tokens: int,
    *,
    temperature: float = 0.8,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int | None = None,
) -> Iterator[int]:
    """Yield new tokens one by one for a prompt (T,), cropping the context to `block_size`."""
    model.eval()
    device = next(model.parameters()).device
    g = torch.Generator(device=device)
    if seed is not None:
        g.manual_seed(seed)
    else:
        g.seed()
    idx = prompt.view(1, -1).to(device)
    for _ in range(max_new_tokens):
        logits, _ = model(idx[:, -model.cfg.block_size :])
        logits = logits[:, -1, :].float()
        if temperature <= 0:
            nxt = logits.argmax(-1, keepdim=True)
        else:
            probs = filter_logits(logits / temperature, top_k=top_k, top_p=top_p).softmax(-1)
            nxt = torch.multinomial(probs, 1, generator=g)
        idx = torch.cat([idx, nxt], dim=1)
        yield int(nxt.item())

"""A decoder-only transformer that reads top to bottom.

GPT-2 style by default (learned positions, LayerNorm, GELU, tied embeddings, biases; the
original GPT-2's tanh GELU is ``mlp="gelu_tanh"``); the Llama style is the same code with
``pos="rope", norm="rmsnorm", mlp="swiglu", bias=False``. Shapes in trailing comments: B batch, T time, C width, nh heads,
nkv key/value heads, hs head size, V vocabulary.

Under muP (``parametrization="mup"``; Yang et al. 2022, Tensor Programs V, Table 8) three
things change with the width ratio m = n_embd / mup_base_width: hidden weights are
initialised with std init_std/sqrt(m), attention scores are scaled by 1/hs instead of
1/sqrt(hs) (times sqrt(hs at the base width), so at m = 1 the model is the SP model), and
the logits are multiplied by 1/m. An untied output head starts at zero. The head count is
meant to stay fixed as the width grows (hs grows with it), as `steplab transfer` does.
The per-group learning-rate scaling lives in `steplab.optim`.

Three switches from the GPU speedrun community (modded-nanogpt), off by default and tried on
the CPU speedrun (docs/speedrun.md): ``logit_softcap`` (logits C·tanh(logits/C)),
``unet_skips`` (block i's output feeds block L-1-i with a learned weight) and
``value_embeds`` (embedding tables added to the attention values of the first and last
blocks). transformers has no equivalent of the last two, so export refuses them.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from steplab.config import ModelConfig

Rope = tuple[torch.Tensor, torch.Tensor] | None  # the (cos, sin) tables, or None without RoPE


class RMSNorm(nn.RMSNorm):
    """`nn.RMSNorm` computed in its input's dtype, as autocast does for linear layers.

    Under CPU bf16 autocast the per-head q and k arrive in bf16 while the weight stays float32;
    torch's fused kernel needs both alike, and otherwise takes a slower composite path with a
    "Mismatch dtype between input and weight" warning. The weight is cast for the op only (the
    float32 master copy is what the optimizer updates); in float32 the cast is a no-op.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.weight.to(x.dtype) if self.weight is not None else None
        return F.rms_norm(x, self.normalized_shape, weight, self.eps)


def make_norm(cfg: ModelConfig, dim: int) -> nn.Module:
    if cfg.norm == "rmsnorm":
        return RMSNorm(dim, eps=cfg.norm_eps)
    return nn.LayerNorm(dim, eps=cfg.norm_eps, bias=cfg.bias)


def rope_cache(cfg: ModelConfig, device: torch.device | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin tables for rotary embeddings, (T, hs/2) each, in the rotate-half layout."""
    hs = cfg.head_dim
    inv_freq = 1.0 / (cfg.rope_theta ** (torch.arange(0, hs, 2, device=device, dtype=torch.float32) / hs))
    t = torch.arange(cfg.block_size, device=device, dtype=torch.float32)
    freqs = torch.outer(t, inv_freq)  # (T, hs/2)
    return freqs.cos(), freqs.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate pairs (i, i + hs/2) of x (B, nh, T, hs): the Llama / Hugging Face convention."""
    x1, x2 = x.chunk(2, dim=-1)
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)


def attention_scale(cfg: ModelConfig) -> float | None:
    """Score scale: None is sdpa's 1/sqrt(hs); under muP 1/hs, times sqrt(base hs) so the
    base width gives exactly the standard model."""
    if cfg.parametrization != "mup":
        return None
    return math.sqrt(cfg.mup_base_width / cfg.n_head) / cfg.head_dim


MATMUL_ATTENTION_MAX_T = 256  # auto: above this context the (T, T) score matrix costs more than sdpa


def causal_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    scale: float | None,
    dropout: float,
    impl: str,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Causal attention of q, k, v (B, nh, T, hs) -> (B, nh, T, hs).

    Two implementations of the same function. sdpa is the fused kernel (flash on GPU, no
    (T, T) matrix in memory). matmul spells it out as q k^T + mask, softmax, times v: on CPU
    at short contexts its batched matmuls hit the bf16 (AMX) GEMMs, where sdpa's CPU flash
    kernel is several times slower in bf16 (docs/speedrun.md). `mask` is the additive causal
    mask (0 on and below the diagonal, -inf above), at least (T, T); made here when not given.
    """
    T = q.size(-2)
    if impl == "auto":
        impl = (
            "matmul"
            if (q.device.type == "cpu" and q.dtype != torch.float32 and T <= MATMUL_ATTENTION_MAX_T)
            else "sdpa"
        )
    if impl == "sdpa":
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=dropout, scale=scale)
    if mask is None or mask.size(0) < T:
        mask = causal_mask(T, q.device)
    scale = scale if scale is not None else 1.0 / math.sqrt(q.size(-1))
    scores = (q @ k.transpose(-2, -1)) * scale  # (B, nh, T, T)
    probs = (scores + mask[:T, :T].to(scores.dtype)).softmax(dim=-1)
    return F.dropout(probs, dropout) @ v


def causal_mask(T: int, device: torch.device | None = None) -> torch.Tensor:
    """(T, T) additive mask: 0 where a position may attend (itself and the past), -inf elsewhere."""
    return torch.full((T, T), float("-inf"), device=device).triu(1)


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_head, self.n_kv_head, self.head_dim = cfg.n_head, cfg.kv_heads, cfg.head_dim
        # One fused projection for q, k and v: (nh + 2 * nkv) * hs outputs.
        self.qkv = nn.Linear(cfg.n_embd, (self.n_head + 2 * self.n_kv_head) * self.head_dim, bias=cfg.bias)
        self.proj = nn.Linear(cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.q_norm = RMSNorm(self.head_dim, eps=cfg.norm_eps) if cfg.qk_norm else None
        self.k_norm = RMSNorm(self.head_dim, eps=cfg.norm_eps) if cfg.qk_norm else None
        self.dropout = cfg.dropout
        self.scale = attention_scale(cfg)
        self.impl = cfg.attention

    def forward(
        self, x: torch.Tensor, rope: Rope, mask: torch.Tensor | None = None, ve: torch.Tensor | None = None
    ) -> torch.Tensor:
        B, T, C = x.shape
        nh, nkv, hs = self.n_head, self.n_kv_head, self.head_dim
        q, k, v = self.qkv(x).split([nh * hs, nkv * hs, nkv * hs], dim=-1)
        if ve is not None:  # a value embedding (B, T, nkv * hs): token identity straight into the values
            v = v + ve
        q = q.view(B, T, nh, hs).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, nkv, hs).transpose(1, 2)  # (B, nkv, T, hs)
        v = v.view(B, T, nkv, hs).transpose(1, 2)  # (B, nkv, T, hs)
        if self.q_norm is not None and self.k_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        if rope is not None:
            cos, sin = rope[0][:T], rope[1][:T]
            q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if nkv != nh:  # grouped-query attention: each kv head serves nh / nkv query heads
            k = k.repeat_interleave(nh // nkv, dim=1)  # (B, nh, T, hs)
            v = v.repeat_interleave(nh // nkv, dim=1)
        y = causal_attention(
            q,
            k,
            v,
            scale=self.scale,
            dropout=self.dropout if self.training else 0.0,
            impl=self.impl,
            mask=mask,
        )  # (B, nh, T, hs)
        y = y.transpose(1, 2).reshape(B, T, C)
        return F.dropout(self.proj(y), self.dropout, self.training)


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.kind, hidden = cfg.mlp, cfg.mlp_hidden
        # swiglu fuses its gate and up projections into one matrix: (C) -> (2 * hidden)
        self.fc = nn.Linear(cfg.n_embd, hidden * (2 if self.kind == "swiglu" else 1), bias=cfg.bias)
        self.proj = nn.Linear(hidden, cfg.n_embd, bias=cfg.bias)
        self.dropout = cfg.dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc(x)
        if self.kind == "swiglu":
            gate, up = h.chunk(2, dim=-1)
            h = F.silu(gate) * up
        elif self.kind == "relu2":
            h = F.relu(h).square()
        elif self.kind == "gelu_tanh":
            h = F.gelu(h, approximate="tanh")
        else:
            h = F.gelu(h)
        return F.dropout(self.proj(h), self.dropout, self.training)


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.norm1 = make_norm(cfg, cfg.n_embd)
        self.attn = CausalSelfAttention(cfg)
        self.norm2 = make_norm(cfg, cfg.n_embd)
        self.mlp = MLP(cfg)

    def forward(
        self, x: torch.Tensor, rope: Rope, mask: torch.Tensor | None = None, ve: torch.Tensor | None = None
    ) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), rope, mask, ve)
        return x + self.mlp(self.norm2(x))


class GPT(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        assert cfg.vocab_size > 0, "vocab_size must be set (from the tokenizer) before building the model"
        self.cfg = cfg
        self.wte = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.wpe = nn.Embedding(cfg.block_size, cfg.n_embd) if cfg.pos == "learned" else None
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        # Value embeddings: table j serves block j and block L-N+j (the first and last N blocks).
        self.value_embeds = nn.ModuleList(
            nn.Embedding(cfg.vocab_size, cfg.kv_heads * cfg.head_dim) for _ in range(cfg.value_embeds)
        )
        # U-net: block L-1-i adds skip_weights[i] times block i's output to its input.
        self.skip_weights = nn.Parameter(torch.ones(cfg.n_layer // 2)) if cfg.unet_skips else None
        self.norm_f = make_norm(cfg, cfg.n_embd)
        self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.wte.weight
        width_mult = cfg.n_embd / cfg.mup_base_width if cfg.parametrization == "mup" else 1.0
        self.logit_scale = 1.0 / width_mult
        if cfg.pos == "rope":
            cos, sin = rope_cache(cfg)
            self.register_buffer("rope_cos", cos, persistent=False)
            self.register_buffer("rope_sin", sin, persistent=False)
        # The matmul attention's additive causal mask, made once (small at the contexts it serves).
        self.mask: torch.Tensor | None
        if cfg.attention == "matmul" or (
            cfg.attention == "auto" and cfg.block_size <= MATMUL_ATTENTION_MAX_T
        ):
            self.register_buffer("mask", causal_mask(cfg.block_size), persistent=False)
        else:
            self.mask = None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """GPT-2 init: N(0, 0.02), residual projections scaled by 1/sqrt(2 * n_layer).

        Under muP the hidden matrices' std also shrinks with 1/sqrt(width / base width).
        """
        cfg = self.cfg
        std = cfg.init_std
        hidden_std = std / math.sqrt(cfg.n_embd / cfg.mup_base_width) if cfg.parametrization == "mup" else std
        for name, p in self.named_parameters():
            if p.dim() < 2:
                if name.endswith("bias"):
                    nn.init.zeros_(p)
                else:
                    nn.init.ones_(p)
            elif name.startswith(("wte", "wpe", "value_embeds")):
                nn.init.normal_(p, 0.0, std)
            elif name.startswith("lm_head"):
                # Untied head: zero-init under muP (the standard muP readout), std otherwise.
                if cfg.parametrization == "mup":
                    nn.init.zeros_(p)
                else:
                    nn.init.normal_(p, 0.0, std)
            elif name.endswith("proj.weight"):
                nn.init.normal_(p, 0.0, hidden_std / math.sqrt(2 * cfg.n_layer))
            else:
                nn.init.normal_(p, 0.0, hidden_std)

    def forward(
        self, idx: torch.Tensor, targets: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Logits (B, T, V) and, given targets (B, T), the mean cross-entropy."""
        B, T = idx.shape
        assert self.cfg.block_size >= T, f"sequence of {T} tokens exceeds block_size {self.cfg.block_size}"
        x = self.wte(idx)  # (B, T, C)
        if self.wpe is not None:
            x = x + self.wpe(torch.arange(T, device=idx.device))  # (T, C) broadcast
        x = self.drop(x)
        rope = (self.rope_cos, self.rope_sin) if self.cfg.pos == "rope" else None
        L, N = len(self.blocks), len(self.value_embeds)
        ves = [table(idx) for table in self.value_embeds]  # (B, T, nkv * hs) each
        skips: list[torch.Tensor] = []  # the first half's outputs, for the U-net skips
        for i, block in enumerate(self.blocks):
            if self.skip_weights is not None and i >= L - len(self.skip_weights):
                x = x + self.skip_weights[L - 1 - i] * skips.pop()
            ve = ves[i] if i < N else ves[i - (L - N)] if i >= L - N else None
            x = block(x, rope, self.mask, ve)
            if self.skip_weights is not None and i < len(self.skip_weights):
                skips.append(x)
        logits = self.lm_head(self.norm_f(x))  # (B, T, V)
        if self.logit_scale != 1.0:
            logits = logits * self.logit_scale
        if self.cfg.logit_softcap is not None:  # smooth, bounded logits: |logit| < C
            logits = self.cfg.logit_softcap * torch.tanh(logits / self.cfg.logit_softcap)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.reshape(-1))
        return logits, loss


def count_params(model: GPT, *, embeddings: bool = True) -> int:
    """Parameters, shared ones once; without `embeddings`, the lookup tables are left out
    (a tied input embedding stays: it is also the output head)."""
    n = 0
    for name, p in model.named_parameters():  # named_parameters() yields a tied weight once
        if not embeddings and (
            name.startswith(("wpe", "value_embeds"))
            or (name.startswith("wte") and not model.cfg.tie_embeddings)
        ):
            continue
        n += p.numel()
    return n


def flops_per_token(cfg: ModelConfig, n_matmul_params: int) -> float:
    """Training FLOPs per token: 6N for the matmuls plus 12 * L * C * T for attention (PaLM appendix B)."""
    return 6.0 * n_matmul_params + 12.0 * cfg.n_layer * cfg.n_embd * cfg.block_size


def matmul_params(model: GPT) -> int:
    """Weights that take part in a matrix multiply per token (the head included, the lookup tables not)."""
    return sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Linear))

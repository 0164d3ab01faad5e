"""The model against an independent, straightforward implementation written here."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from steplab.config import ModelConfig
from steplab.model import GPT, count_params, flops_per_token, matmul_params


def reference_forward(model: GPT, idx: torch.Tensor) -> torch.Tensor:
    """Logits computed with explicit loops and masks from the model's raw weights."""
    cfg = model.cfg
    sd = model.state_dict()
    B, T = idx.shape
    C, nh, nkv, hs = cfg.n_embd, cfg.n_head, cfg.kv_heads, cfg.head_dim

    def norm(x: torch.Tensor, prefix: str) -> torch.Tensor:
        w = sd[prefix + ".weight"]
        if cfg.norm == "rmsnorm":
            return x / torch.sqrt((x * x).mean(-1, keepdim=True) + cfg.norm_eps) * w
        mu = x.mean(-1, keepdim=True)
        var = ((x - mu) ** 2).mean(-1, keepdim=True)
        y = (x - mu) / torch.sqrt(var + cfg.norm_eps) * w
        return y + sd[prefix + ".bias"] if cfg.bias else y

    def linear(x: torch.Tensor, prefix: str) -> torch.Tensor:
        y = x @ sd[prefix + ".weight"].T
        return y + sd[prefix + ".bias"] if cfg.bias else y

    def rope(x: torch.Tensor) -> torch.Tensor:  # x (B, h, T, hs): rotate pairs (i, i + hs/2)
        out = torch.empty_like(x)
        half = hs // 2
        for pos in range(T):
            for i in range(half):
                theta = pos / (cfg.rope_theta ** (2 * i / hs))
                c, s = math.cos(theta), math.sin(theta)
                a, b = x[..., pos, i], x[..., pos, i + half]
                out[..., pos, i] = a * c - b * s
                out[..., pos, i + half] = b * c + a * s
        return out

    x = sd["wte.weight"][idx]
    if cfg.pos == "learned":
        x = x + sd["wpe.weight"][:T]
    mask = torch.triu(torch.ones(T, T, dtype=torch.bool), 1)
    L, N, half = cfg.n_layer, cfg.value_embeds, cfg.n_layer // 2 if cfg.unet_skips else 0
    skips = []
    for layer in range(cfg.n_layer):
        p = f"blocks.{layer}"
        if layer >= L - half:  # U-net: the mirrored first-half block's output
            x = x + sd["skip_weights"][L - 1 - layer] * skips.pop()
        h = norm(x, f"{p}.norm1")
        qkv = linear(h, f"{p}.attn.qkv")
        q, k, v = qkv.split([nh * hs, nkv * hs, nkv * hs], -1)
        table = layer if layer < N else layer - (L - N) if layer >= L - N else None
        if table is not None:
            v = v + sd[f"value_embeds.{table}.weight"][idx]
        q = q.view(B, T, nh, hs).transpose(1, 2)
        k = k.view(B, T, nkv, hs).transpose(1, 2)
        v = v.view(B, T, nkv, hs).transpose(1, 2)
        if cfg.qk_norm:
            q = q / torch.sqrt((q * q).mean(-1, keepdim=True) + cfg.norm_eps) * sd[f"{p}.attn.q_norm.weight"]
            k = k / torch.sqrt((k * k).mean(-1, keepdim=True) + cfg.norm_eps) * sd[f"{p}.attn.k_norm.weight"]
        if cfg.pos == "rope":
            q, k = rope(q), rope(k)
        heads = []
        for head in range(nh):
            kv = head // (nh // nkv)
            att = (q[:, head] @ k[:, kv].transpose(-1, -2)) / math.sqrt(hs)
            att = att.masked_fill(mask, float("-inf")).softmax(-1)
            heads.append(att @ v[:, kv])
        y = torch.stack(heads, 1).transpose(1, 2).reshape(B, T, C)
        x = x + linear(y, f"{p}.attn.proj")
        h = linear(norm(x, f"{p}.norm2"), f"{p}.mlp.fc")
        if cfg.mlp == "swiglu":
            g, u = h.chunk(2, -1)
            h = g * torch.sigmoid(g) * u
        elif cfg.mlp == "relu2":
            h = torch.clamp(h, min=0) ** 2
        else:
            h = 0.5 * h * (1 + torch.erf(h / math.sqrt(2)))
        x = x + linear(h, f"{p}.mlp.proj")
        if layer < half:
            skips.append(x)
    x = norm(x, "norm_f")
    head = sd["wte.weight"] if cfg.tie_embeddings else sd["lm_head.weight"]
    logits = x @ head.T
    if cfg.logit_softcap is not None:
        logits = cfg.logit_softcap * torch.tanh(logits / cfg.logit_softcap)
    return logits


GPT2_STYLE = dict(pos="learned", norm="layernorm", mlp="gelu", bias=True, tie_embeddings=True)
LLAMA_STYLE = dict(pos="rope", norm="rmsnorm", mlp="swiglu", bias=False, tie_embeddings=False, n_kv_head=1)


@pytest.mark.parametrize(
    "style", [GPT2_STYLE, LLAMA_STYLE, dict(mlp="relu2", qk_norm=True)], ids=["gpt2", "llama", "relu2-qknorm"]
)
def test_forward_matches_independent_implementation(style: dict) -> None:
    torch.manual_seed(0)
    cfg = ModelConfig(n_layer=2, n_head=4, n_embd=16, block_size=8, vocab_size=11, **style)
    model = GPT(cfg).double().eval()
    with torch.no_grad():  # perturb the ones/zeros init so biases and norm weights matter
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    idx = torch.randint(0, 11, (3, 8))
    logits, _ = model(idx)
    expected = reference_forward(model, idx)
    assert torch.allclose(logits, expected, atol=1e-5, rtol=0), (logits - expected).abs().max()


@pytest.mark.parametrize("n_layer", [4, 5])
def test_speedrun_switches_match_independent_implementation(n_layer: int) -> None:
    """Value embeddings, U-net skips (an odd depth leaves the middle block without one), soft-capping."""
    torch.manual_seed(0)
    cfg = ModelConfig(
        n_layer=n_layer, n_head=4, n_embd=16, block_size=8, vocab_size=11, pos="rope", norm="rmsnorm",
        mlp="relu2", bias=False, value_embeds=2, unet_skips=True, logit_softcap=2.0,
    )  # fmt: skip
    model = GPT(cfg).double().eval()
    assert model.skip_weights is not None and model.skip_weights.tolist() == [1.0, 1.0]
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    idx = torch.randint(0, 11, (3, 8))
    logits, _ = model(idx)
    assert torch.allclose(logits, reference_forward(model, idx), atol=1e-6, rtol=0)
    assert logits.abs().max() < 2.0  # capped
    plain = GPT(
        ModelConfig(**{**cfg.__dict__, "value_embeds": 0, "unet_skips": False, "logit_softcap": None})
    )
    assert count_params(model) - count_params(plain) == 2 * 11 * 16 + n_layer // 2


def test_value_embeds_must_leave_the_first_and_last_blocks_apart() -> None:
    from steplab.errors import ConfigError

    with pytest.raises(ConfigError, match=r"--model.value-embeds 3: .*\(at most 2 with 4 layers\)"):
        ModelConfig(n_layer=4, value_embeds=3).check()


def test_loss_is_cross_entropy_of_logits() -> None:
    torch.manual_seed(0)
    cfg = ModelConfig(n_layer=1, n_head=2, n_embd=8, block_size=8, vocab_size=7)
    model = GPT(cfg)
    idx, tgt = torch.randint(0, 7, (2, 8)), torch.randint(0, 7, (2, 8))
    logits, loss = model(idx, tgt)
    assert loss is not None
    assert torch.allclose(loss, F.cross_entropy(logits.view(-1, 7), tgt.view(-1)))


def test_gpt2_init_scales_residual_projections() -> None:
    torch.manual_seed(0)
    cfg = ModelConfig(n_layer=8, n_head=4, n_embd=256, block_size=8, vocab_size=50)
    model = GPT(cfg)
    proj = model.blocks[0].mlp.proj.weight.std().item()
    fc = model.blocks[0].mlp.fc.weight.std().item()
    assert fc == pytest.approx(0.02, rel=0.05)
    assert proj == pytest.approx(0.02 / math.sqrt(16), rel=0.05)


def test_tied_and_untied_heads() -> None:
    tied = GPT(ModelConfig(n_layer=1, n_head=2, n_embd=8, block_size=4, vocab_size=10))
    untied = GPT(
        ModelConfig(n_layer=1, n_head=2, n_embd=8, block_size=4, vocab_size=10, tie_embeddings=False)
    )
    assert tied.lm_head.weight is tied.wte.weight
    assert count_params(untied) - count_params(tied) == 80


def test_flops_per_token_counts_matmuls_and_attention() -> None:
    cfg = ModelConfig(n_layer=2, n_head=2, n_embd=16, block_size=32, vocab_size=10, bias=False)
    model = GPT(cfg)
    n = matmul_params(model)
    # qkv 16*48 + proj 16*16 + fc 16*64 + proj 64*16 per layer, and the head 16*10
    assert n == 2 * (16 * 48 + 16 * 16 + 16 * 64 + 64 * 16) + 160
    assert flops_per_token(cfg, n) == 6 * n + 12 * 2 * 16 * 32


@pytest.mark.parametrize("kv_heads,mup", [(None, False), (2, False), (None, True)])
def test_matmul_attention_equals_sdpa(kv_heads: int | None, mup: bool) -> None:
    """The two attention kernels compute the same function: logits and gradients agree."""
    base = dict(vocab_size=50, n_layer=2, n_head=4, n_kv_head=kv_heads, n_embd=32, block_size=16)
    if mup:
        base.update(parametrization="mup", mup_base_width=16)
    torch.manual_seed(0)
    a = GPT(ModelConfig(**base, attention="sdpa"))
    b = GPT(ModelConfig(**base, attention="matmul"))
    b.load_state_dict(a.state_dict())
    idx = torch.randint(0, 50, (3, 12))  # shorter than block_size: the mask is cut to T
    la, loss_a = a(idx, idx)
    lb, loss_b = b(idx, idx)
    assert torch.allclose(la, lb, atol=1e-5)
    loss_a.backward()
    loss_b.backward()
    for (name, pa), pb in zip(a.named_parameters(), b.parameters(), strict=True):
        assert torch.allclose(pa.grad, pb.grad, atol=1e-5), name


def test_auto_attention_uses_matmul_only_for_short_low_precision_cpu_inputs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from steplab import model as model_mod

    calls: list[str] = []
    real = F.scaled_dot_product_attention
    monkeypatch.setattr(
        model_mod.F, "scaled_dot_product_attention", lambda *a, **k: calls.append("sdpa") or real(*a, **k)
    )
    q = torch.randn(1, 2, 8, 4)
    model_mod.causal_attention(q, q, q, scale=None, dropout=0.0, impl="auto")
    assert calls == ["sdpa"]  # float32 on CPU: sdpa's kernel is as fast and leaner
    out = model_mod.causal_attention(
        q.bfloat16(), q.bfloat16(), q.bfloat16(), scale=None, dropout=0.0, impl="auto"
    )
    assert calls == ["sdpa"] and out.dtype == torch.bfloat16  # bf16, short context: matmul
    long = torch.randn(1, 1, model_mod.MATMUL_ATTENTION_MAX_T + 1, 4).bfloat16()
    model_mod.causal_attention(long, long, long, scale=None, dropout=0.0, impl="auto")
    assert calls == ["sdpa", "sdpa"]


BF16_STEP = """
import warnings, torch
from steplab.config import ModelConfig
from steplab.model import GPT
warnings.simplefilter("always")
cfg = ModelConfig(n_layer=1, n_head=2, n_embd=16, block_size=8, vocab_size=11, pos="rope",
                  norm="rmsnorm", mlp="relu2", bias=False, qk_norm=True)
model = GPT(cfg)
opt = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True)
idx = torch.randint(0, 11, (2, 8))
with warnings.catch_warnings(record=True) as caught:
    with torch.autocast("cpu", dtype=torch.bfloat16):
        _, loss = model(idx, idx)
    loss.backward()
    opt.step()
print(sum("Mismatch dtype" in str(w.message) for w in caught))
"""


def test_bf16_step_with_qk_norm_takes_the_fused_norm_kernel() -> None:
    """No "Mismatch dtype between input and weight" in a bf16 autocast step (forward, backward,
    fused AdamW). In a fresh process: torch warns only once per process, so an earlier test that
    hit the slow path would hide it here."""
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", BF16_STEP], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "0", out.stdout + out.stderr
    q = torch.randn(2, 3, 4, 8).bfloat16()
    from steplab.model import RMSNorm

    assert RMSNorm(8)(q).dtype == torch.bfloat16  # computed in the input's dtype
    norm = RMSNorm(8)
    assert torch.equal(norm(q.float()), torch.nn.RMSNorm(8)(q.float()))  # float32: torch's own

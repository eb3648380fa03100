"""The tiny byte-level GPT that grows a black hole.

One readable file in the spirit of nanoGPT's ``model.py``: a config dataclass and
a GPT-2-shaped decoder (pre-LayerNorm, learned positions, tanh-GELU MLP, causal
self-attention, no dropout) whose input embedding and output projection are one
tied matrix, ``model.wte.weight`` of shape ``[vocab, width]``. Tokens are bytes.

The only unusual part is :meth:`GPT.init_weights`: every embedding row starts at
one shared centre ``c`` plus ``sigma`` times its own noise, so ``sigma=0`` puts
the whole vocabulary on a single point (``init="centre"``; see :data:`INITS` for
the unit-vector centre and the usual no-shared-point control).

>>> config = GPTConfig(vocab=128, width=64, layers=2, heads=2)
>>> model = GPT(config)
>>> centre = model.init_weights(sigma=0.0, generator=torch.Generator().manual_seed(0))
>>> model(torch.zeros(1, 16, dtype=torch.long)).shape
torch.Size([1, 16, 128])
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

# How the embedding rows start (all drawn in float32, rounded once to the training dtype):
INITS = {
    "centre": "row i = c + sigma * eps_i, c ~ N(0, 0.02^2) shared by every row (sigma = 0: one point)",
    "unit": "row i = u + sigma * eps_i, u a random unit vector shared by every row ('Lil Gatsby II')",
    "normal": "row i = sigma * eps_i: no shared point, the usual init (the control)",
}


@dataclass
class GPTConfig:
    """Shape of the model. The defaults are the "Lil Gatsby" recipe."""

    vocab: int = 128  # byte values the model knows: 128 = ASCII, 256 = any byte
    context: int = 128  # longest sequence (learned positions)
    width: int = 64  # embedding dimension
    layers: int = 2
    heads: int = 2
    mlp_ratio: int = 4  # MLP hidden width = mlp_ratio * width
    bias: bool = True  # biases in Linear and LayerNorm, as GPT-2

    def __post_init__(self) -> None:
        for name in ("vocab", "context", "width", "layers", "heads", "mlp_ratio"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)}")
        if self.width % self.heads:
            raise ValueError(f"width ({self.width}) must be divisible by heads ({self.heads})")

    def to_json(self) -> dict:
        return asdict(self)


class SelfAttention(nn.Module):
    """Causal multi-head self-attention (one fused qkv projection)."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.heads = config.heads
        self.qkv = nn.Linear(config.width, 3 * config.width, bias=config.bias)
        self.proj = nn.Linear(config.width, config.width, bias=config.bias)
        # True above the diagonal: the future positions a token may not see. A
        # constant buffer (not rebuilt each call) lets the compiled softmax vectorise.
        future = torch.ones(config.context, config.context, dtype=torch.bool).triu(1)
        self.register_buffer("future", future, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=2)
        # [B, T, C] -> [B, heads, T, C/heads]
        q, k, v = (t.view(B, T, self.heads, C // self.heads).transpose(1, 2) for t in (q, k, v))
        # Written out rather than F.scaled_dot_product_attention: at this size the
        # plain matmul + softmax path is several times faster on CPU (its flash
        # kernel's backward dominates a step).
        att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(k.shape[-1]))
        att = att.masked_fill(self.future[:T, :T], float("-inf"))
        y = F.softmax(att, dim=-1) @ v
        return self.proj(y.transpose(1, 2).reshape(B, T, C))


class MLP(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.fc = nn.Linear(config.width, config.mlp_ratio * config.width, bias=config.bias)
        self.proj = nn.Linear(config.mlp_ratio * config.width, config.width, bias=config.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(F.gelu(self.fc(x), approximate="tanh"))


class Block(nn.Module):
    """Pre-LayerNorm transformer block: x + attn(ln(x)), then x + mlp(ln(x))."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.ln1 = nn.LayerNorm(config.width, bias=config.bias)
        self.attn = SelfAttention(config)
        self.ln2 = nn.LayerNorm(config.width, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class GPT(nn.Module):
    """Byte-level GPT with tied input/output embedding ``wte.weight`` [vocab, width]."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        self.wte = nn.Embedding(config.vocab, config.width)
        self.wpe = nn.Embedding(config.context, config.width)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.layers))
        self.ln_f = nn.LayerNorm(config.width, bias=config.bias)
        # No separate lm_head: logits = h @ wte.weight.T (one tied matrix).

    @property
    def embedding(self) -> torch.Tensor:
        """The tied embedding/unembedding matrix (a Parameter)."""
        return self.wte.weight

    @torch.no_grad()
    def init_weights(self, sigma: float, generator: torch.Generator, init: str = "centre") -> torch.Tensor:
        """GPT-2 initialisation, except the embedding, whose rows start as :data:`INITS` says.

        ``eps_i ~ N(0, 1)``; the centre and the noise are drawn in float32 from
        ``generator`` (in the same order for every ``init``, so the other weights do not
        depend on it) and the rows are rounded once when the model is cast to its training
        dtype, so ``sigma=0`` gives bit-identical rows. Returns the rows' shared point
        (float32, ``[width]``; zeros for ``init="normal"``, which has none).

        >>> model = GPT(GPTConfig(vocab=8, context=4, width=4, layers=1, heads=1))
        >>> c = model.init_weights(0.0, torch.Generator().manual_seed(0), init="unit")
        >>> round(float(c.norm()), 6), bool((model.embedding == c).all())
        (1.0, True)
        """
        if init not in INITS:
            raise ValueError(f"init must be one of {', '.join(INITS)}, got {init!r}")
        cfg = self.config
        randn = lambda *shape: torch.randn(*shape, generator=generator, dtype=torch.float32)  # noqa: E731
        draw = randn(cfg.width)
        noise = randn(cfg.vocab, cfg.width)
        centre = {"centre": draw * 0.02, "unit": draw / draw.norm(), "normal": torch.zeros(cfg.width)}[init]
        self.wte.weight.copy_(centre + sigma * noise if sigma else centre.expand(cfg.vocab, -1))
        self.wpe.weight.copy_(randn(cfg.context, cfg.width) * 0.02)
        # Residual projections are scaled down by sqrt(2 * layers), as in GPT-2.
        proj_std = 0.02 / math.sqrt(2 * cfg.layers)
        for name, module in self.named_modules():
            if isinstance(module, nn.Linear):
                std = proj_std if name.endswith(".proj") else 0.02
                module.weight.copy_(randn(*module.weight.shape) * std)
                if module.bias is not None:
                    module.bias.zero_()
            elif isinstance(module, nn.LayerNorm):
                module.weight.fill_(1.0)
                if module.bias is not None:
                    module.bias.zero_()
        return centre

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        """Logits ``[B, T, vocab]`` for byte ids ``idx`` ``[B, T]`` (T <= context)."""
        T = idx.shape[1]
        if T > self.config.context:
            raise ValueError(f"sequence of {T} tokens is longer than the context ({self.config.context})")
        x = self.wte(idx) + self.wpe.weight[:T]
        for block in self.blocks:
            x = block(x)
        return F.linear(self.ln_f(x), self.wte.weight)

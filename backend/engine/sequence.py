"""A small transformer encoder classifier over stacked replicas, and its learning-rate schedule (paper Appendix A.1.4,
Figure 6).

The model is an nn.Module with its own attention (plain tensor ops, so torch.func.vmap works over replicas through
functional_call): token embedding + learned positions, L pre-LayerNorm encoder layers (H heads, width D, feed-forward
4D, GELU), mean-pooling over the non-padding tokens, linear head. No dropout: the mini-batches are the only randomness.

It is trained with AdamW from backend/optim.py (one optimizer over the stacked (N, …) parameters equals N
independent ones), gradients clipped per replica (the norm over that replica's parameters only) after the raw gradient
has been recorded — the variance reported is that of the stochastic gradient before clipping and Adam, as in the
paper. The learning rate warms up linearly for ``warmup`` steps, then decays linearly to 0 at the last step.
"""

from __future__ import annotations

import math

import torch

from backend.engine.runner import seed_for


class Encoder(torch.nn.Module):
    def __init__(self, vocab: int, max_len: int, width: int, heads: int, layers: int, classes: int = 2) -> None:
        super().__init__()
        if width % heads:
            raise ValueError("width must be a multiple of heads")
        self.heads = heads
        self.embed = torch.nn.Embedding(vocab, width)
        self.pos = torch.nn.Parameter(torch.zeros(max_len, width))
        self.blocks = torch.nn.ModuleList()
        for _ in range(layers):
            self.blocks.append(torch.nn.ModuleDict({
                "ln1": torch.nn.LayerNorm(width), "qkv": torch.nn.Linear(width, 3 * width),
                "out": torch.nn.Linear(width, width), "ln2": torch.nn.LayerNorm(width),
                "ff1": torch.nn.Linear(width, 4 * width), "ff2": torch.nn.Linear(4 * width, width)}))
        self.ln = torch.nn.LayerNorm(width)
        self.head = torch.nn.Linear(width, classes)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        B, L = ids.shape
        keep = (ids != 0).to(self.pos.dtype)  # (B, L)
        x = self.embed(ids) + self.pos[:L]
        H = self.heads
        for blk in self.blocks:
            h = blk["ln1"](x)
            q, k, v = blk["qkv"](h).chunk(3, dim=-1)
            q, k, v = (z.reshape(B, L, H, -1).transpose(1, 2) for z in (q, k, v))  # (B, H, L, d)
            scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
            scores = scores + (keep[:, None, None, :] - 1.0) * 1e9  # never attend to padding
            att = torch.softmax(scores, dim=-1) @ v
            x = x + blk["out"](att.transpose(1, 2).reshape(B, L, -1))
            x = x + blk["ff2"](torch.nn.functional.gelu(blk["ff1"](blk["ln2"](x))))
        x = self.ln(x)
        pooled = (x * keep[..., None]).sum(dim=1) / keep.sum(dim=1, keepdim=True).clamp(min=1.0)
        return self.head(pooled)


def init_params(model: Encoder, K: int, seed: int, dtype: torch.dtype, device: torch.device
                ) -> dict[str, torch.Tensor]:
    """K initial weights: linear layers as PyTorch initialises them (from a per-init generator), embeddings and
    positions N(0, 0.02²), LayerNorm weight 1 and bias 0."""
    out: dict[str, list[torch.Tensor]] = {n: [] for n, _ in model.named_parameters()}
    for k in range(K):
        gen = torch.Generator().manual_seed(seed_for(seed, 4099, k))
        for name, p in model.named_parameters():
            if name.startswith(("embed", "pos")):
                val = torch.randn(p.shape, generator=gen, dtype=torch.float64) * 0.02
            elif any(part.startswith("ln") for part in name.split(".")[:-1]):
                val = torch.ones(p.shape) if name.endswith("weight") else torch.zeros(p.shape)
            else:
                fan_in = p.shape[1] if p.dim() == 2 else model.get_parameter(name[: -len("bias")] + "weight").shape[1]
                bound = 1.0 / math.sqrt(fan_in)
                val = (torch.rand(p.shape, generator=gen, dtype=torch.float64) * 2 - 1) * bound
            out[name].append(val.to(torch.float64))
    return {n: torch.stack(v).to(dtype=dtype, device=device) for n, v in out.items()}


def lr_at(t: int, base: float, warmup: int, total: int) -> float:
    """Linear warm-up over ``warmup`` steps, then linear decay to 0 at step ``total``."""
    if warmup > 0 and t < warmup:
        return base * (t + 1) / warmup
    return base * max(0.0, (total - t) / max(1, total - warmup))

"""A small character-level transformer language model on the shipped Yelp sentences (backend/data/sentiment/,
UCI Sentiment Labelled Sentences; labels ignored), predicting each next character.

- data: the 1 000 sentences lower-cased and joined with "\\n"; characters → ids over the sorted set of characters
  (VOCAB ids); cut into non-overlapping windows of CONTEXT + 1 characters: inputs the first CONTEXT ids (int64),
  targets the next character at each position (n, CONTEXT); the last 10 % of the windows are the validation set;
- model(k): token and learned position embeddings (width 32) → 2 pre-norm blocks (causal self-attention with 2
  heads written out with matmuls, so that torch.func's vmap runs it; a 4× GELU MLP) → layer norm → linear head to
  the vocabulary; PyTorch's default initialisation after ``torch.manual_seed(k)`` inside ``fork_rng`` (the position
  embeddings N(0, 0.02²)). No Dropout, no buffers: the causal mask is built in the forward pass;
- loss(output, target): per sample, the mean over its CONTEXT positions of the next-character cross-entropy
  (output (n, CONTEXT, VOCAB), target (n, CONTEXT) → (n,)).
Self-contained (it imports no helper module of its own); the corpus is read relative to this file.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F

CONTEXT = 32
WIDTH = 32
HEADS = 2
LAYERS = 2
CORPUS = Path(__file__).resolve().parent.parent.parent / "backend" / "data" / "sentiment" / "yelp_labelled.txt"


def _text() -> str:
    lines = CORPUS.read_text(encoding="utf-8").split("\n")
    return "\n".join(line.rpartition("\t")[0].lower() for line in lines if "\t" in line)


def _alphabet() -> list[str]:
    return sorted(set(_text()))


VOCAB = len(_alphabet())


def data() -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """{"train": (ids (n, CONTEXT) int64, next ids (n, CONTEXT) int64), "val": (…)}; n = 1 618 + 179."""
    text = _text()
    index = {c: i for i, c in enumerate(_alphabet())}
    ids = torch.tensor([index[c] for c in text], dtype=torch.int64)
    n = (len(ids) - 1) // (CONTEXT + 1)
    windows = ids[: n * (CONTEXT + 1)].reshape(n, CONTEXT + 1)
    n_val = n // 10
    x, y = windows[:, :-1].contiguous(), windows[:, 1:].contiguous()
    return {"train": (x[:-n_val], y[:-n_val]), "val": (x[-n_val:], y[-n_val:])}


class Block(torch.nn.Module):
    """x + attn(LN(x)), then x + MLP(LN(x)); causal attention over the positions."""

    def __init__(self) -> None:
        super().__init__()
        self.ln1, self.ln2 = torch.nn.LayerNorm(WIDTH), torch.nn.LayerNorm(WIDTH)
        self.qkv, self.proj = torch.nn.Linear(WIDTH, 3 * WIDTH), torch.nn.Linear(WIDTH, WIDTH)
        self.mlp = torch.nn.Sequential(torch.nn.Linear(WIDTH, 4 * WIDTH), torch.nn.GELU(),
                                       torch.nn.Linear(4 * WIDTH, WIDTH))

    def attention(self, x: torch.Tensor) -> torch.Tensor:
        n, L, _ = x.shape
        q, k, v = self.qkv(x).reshape(n, L, 3, HEADS, WIDTH // HEADS).permute(2, 0, 3, 1, 4)
        scores = q @ k.transpose(-1, -2) / math.sqrt(WIDTH // HEADS)
        future = torch.ones(L, L, dtype=torch.bool, device=x.device).triu(1)
        weights = scores.masked_fill(future, float("-inf")).softmax(dim=-1)
        return self.proj((weights @ v).transpose(1, 2).reshape(n, L, WIDTH))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attention(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class CharLM(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(VOCAB, WIDTH)
        self.position = torch.nn.Parameter(0.02 * torch.randn(CONTEXT, WIDTH))
        self.blocks = torch.nn.Sequential(*(Block() for _ in range(LAYERS)))
        self.ln = torch.nn.LayerNorm(WIDTH)
        self.head = torch.nn.Linear(WIDTH, VOCAB)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """ids (n, L ≤ CONTEXT) → next-character logits (n, L, VOCAB)."""
        x = self.embed(ids) + self.position[: ids.shape[-1]]
        return self.head(self.ln(self.blocks(x)))


def model(seed: int) -> torch.nn.Module:
    """The language model with init ``seed``'s weights (float32)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return CharLM()


def loss(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-sample loss (n,): the mean next-character cross-entropy over the sample's positions."""
    return F.cross_entropy(output.transpose(1, 2), target, reduction="none").mean(dim=1)

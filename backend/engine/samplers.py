"""Mini-batch samplers batched over replicas. Every draw returns indices of shape (R, k) and whether they are the batch
(``include``) or its complement (``exclude``): for b > n/2 it is cheaper to draw the n − b left-out samples.

- ``without_replacement`` (paper §3.1): each replica draws a uniform b-subset of [n], independently at every step.
  We draw k = min(b, n − b) distinct indices as the first k distinct values of an i.i.d. uniform stream (by symmetry of
  the labels the set of the first k distinct values is a uniform k-subset); rows whose stream held fewer than k distinct
  values are redrawn whole, which conditions on an event symmetric in the labels and so keeps the draw uniform.
  Cost O(R · m log m) with m ≈ k(1 + k/(2n)) + margin: it does not grow with n for a fixed b (argsort costs O(R n log n)).
- ``with_replacement``: b i.i.d. uniform indices per replica and step.
- ``epoch_reshuffle``: each replica shuffles [n] once per epoch and walks the permutation in batches of b; the last
  partial batch is dropped so every step has exactly b samples (n // b steps per epoch). Not independent across steps.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass
class Draw:
    idx: torch.Tensor  # (R, k) int64
    include: bool  # True: idx is the batch; False: the batch is the complement of idx


def _stream_length(k: int, n: int) -> int:
    """Draws needed to see k distinct values among n with high probability (mean + 6 sd of the coupon-collector time)."""
    mean = sum(n / (n - j) for j in range(k))
    var = sum(j * n / ((n - j) ** 2) for j in range(k))
    return int(math.ceil(mean + 6.0 * math.sqrt(var) + 4))


def distinct_uniform(R: int, n: int, k: int, generator: torch.Generator, device: torch.device) -> torch.Tensor:
    """(R, k) indices; each row a uniform k-subset of [n] (in order of first appearance in its stream)."""
    if k == 0:
        return torch.empty((R, 0), dtype=torch.long, device=device)
    m = _stream_length(k, n)
    out = torch.empty((R, k), dtype=torch.long, device=device)
    todo = torch.arange(R, device=device)
    while todo.numel():
        r = todo.numel()
        stream = torch.randint(0, n, (r, m), generator=generator, device=device)
        vals, order = torch.sort(stream, dim=1, stable=True)
        first = torch.ones_like(vals, dtype=torch.bool)
        first[:, 1:] = vals[:, 1:] != vals[:, :-1]
        # position in the stream of every first occurrence; the others get m (never chosen)
        key = torch.full((r, m), m, dtype=torch.long, device=device)
        key.scatter_(1, order, torch.where(first, order, torch.full_like(order, m)))
        pos = torch.topk(key, k, dim=1, largest=False, sorted=True).values
        ok = pos[:, -1] < m
        chosen = torch.gather(stream, 1, pos.clamp(max=m - 1))
        out[todo[ok]] = chosen[ok]
        todo = todo[~ok]
    return out


class Sampler:
    """Draws mini-batch indices for R replicas, step after step, from an explicit torch generator."""

    name: str

    def __init__(self, n: int, b: int, R: int, generator: torch.Generator, device: torch.device) -> None:
        self.n, self.b, self.R, self.g, self.device = n, b, R, generator, device

    def draw(self) -> Draw:  # pragma: no cover - interface
        raise NotImplementedError


class WithoutReplacement(Sampler):
    name = "without_replacement"

    def draw(self) -> Draw:
        n, b = self.n, self.b
        if b <= n - b:
            return Draw(distinct_uniform(self.R, n, b, self.g, self.device), True)
        return Draw(distinct_uniform(self.R, n, n - b, self.g, self.device), False)


class WithReplacement(Sampler):
    name = "with_replacement"

    def draw(self) -> Draw:
        return Draw(torch.randint(0, self.n, (self.R, self.b), generator=self.g, device=self.device), True)


class EpochReshuffle(Sampler):
    name = "epoch_reshuffle"

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.steps_per_epoch = self.n // self.b
        self.pos = self.steps_per_epoch  # forces a shuffle at the first draw
        self.perm: torch.Tensor | None = None

    def draw(self) -> Draw:
        if self.pos == self.steps_per_epoch:
            self.perm = torch.rand((self.R, self.n), generator=self.g, device=self.device).argsort(dim=1)
            self.pos = 0
        start = self.pos * self.b
        self.pos += 1
        return Draw(self.perm[:, start:start + self.b], True)


SAMPLER_CLASSES = {c.name: c for c in (WithoutReplacement, WithReplacement, EpochReshuffle)}


def make_sampler(name: str, n: int, b: int, R: int, generator: torch.Generator, device: torch.device) -> Sampler:
    return SAMPLER_CLASSES[name](n, b, R, generator, device)


def batch_counts(draw: Draw, n: int) -> torch.Tensor:
    """(R, n) float: how many times each sample is in each replica's batch (0/1 without replacement)."""
    R = draw.idx.shape[0]
    m = torch.zeros((R, n), device=draw.idx.device)
    m.scatter_add_(1, draw.idx, torch.ones(draw.idx.shape, device=draw.idx.device))
    return m if draw.include else 1.0 - m

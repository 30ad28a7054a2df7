"""Mini-batch samplers batched over replicas. Every draw returns indices of shape (R, k) and whether they are the batch
(``include``) or its complement (``exclude``): for b > n/2 it is cheaper to draw the n − b left-out samples.

- ``without_replacement`` (paper §3.1): each replica draws a uniform b-subset of [n], independently at every step.
  We draw k = min(b, n − b) distinct indices: for k ≤ FLOYD_MAX by Floyd's algorithm (O(k²) per row, no rejection),
  else as the first k distinct values of an i.i.d. uniform stream (by symmetry of the labels the set of the first k
  distinct values is a uniform k-subset); rows whose stream held fewer than k distinct values are redrawn whole, which
  conditions on an event symmetric in the labels and so keeps the draw uniform. Neither cost grows with n for a fixed b
  (argsort costs O(R n log n)).
- ``with_replacement``: b i.i.d. uniform indices per replica and step.
- ``epoch_reshuffle``: each replica shuffles [n] once per epoch and walks the permutation in batches of b; the last
  partial batch is dropped so every step has exactly b samples (n // b steps per epoch). Not independent across steps.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class Draw:
    idx: torch.Tensor  # (R, k) int64
    include: bool  # True: idx is the batch; False: the batch is the complement of idx (see batch_indices)


def _stream_length(k: int, n: int) -> int:
    """Draws needed to see k distinct values among n with high probability (mean + 6 sd of the coupon-collector time)."""
    mean = sum(n / (n - j) for j in range(k))
    var = sum(j * n / ((n - j) ** 2) for j in range(k))
    return int(math.ceil(mean + 6.0 * math.sqrt(var) + 4))


PAIRWISE_MAX = 40  # streams up to this length find first occurrences by pairwise comparison, longer ones by sorting
FLOYD_MAX = 32  # subsets of up to this many indices by Floyd's algorithm (cost O(k²) per row), larger by streams


def floyd_subsets(rows: int, n: int, k: int, generator: torch.Generator, device: torch.device,
                  numpy_rng: np.random.Generator | None = None) -> torch.Tensor:
    """(rows, k) indices, each row a uniform k-subset of [n], by Floyd's algorithm: for j = n − k, …, n − 1 draw t
    uniform in {0, …, j}; take t unless it is taken already, then take j. Every k-subset has probability 1/C(n, k)
    (induction on j); no rejection, no host synchronisation. The draws t come in row order (k per row), so rows drawn
    in one call or several get the same subsets. On a CPU (``numpy_rng``) they are numpy's exact bounded integers
    (Lemire's method, 64-bit words) and the comparisons run in the narrowest integer type; on a GPU, t = u mod (j + 1)
    from 62 random bits u (uniform up to a bias below (j + 1)/2⁶² < 10⁻¹⁶ for n < 500 000)."""
    if numpy_rng is not None:
        draws = numpy_rng.integers(0, np.arange(n - k + 1, n + 1), size=(rows, k), dtype=np.int64)
        small = np.int16 if n <= np.iinfo(np.int16).max else np.int32 if n <= np.iinfo(np.int32).max else np.int64
        draws = draws.astype(small).T.copy()
        chosen = np.empty((k, rows), dtype=small)
        for i in range(k):
            t = draws[i]
            chosen[i] = np.where((chosen[:i] == t).any(axis=0), n - k + i, t) if i else t
        return torch.from_numpy(np.ascontiguousarray(chosen.T, dtype=np.int64))
    raw = torch.randint(0, 2**62, (rows, k), generator=generator, device=device).T.contiguous()
    chosen_t = torch.empty((k, rows), dtype=torch.long, device=device)
    for i in range(k):
        j = n - k + i
        t = raw[i] % (j + 1)
        chosen_t[i] = torch.where((chosen_t[:i] == t).any(dim=0), j, t) if i else t
    return chosen_t.T.contiguous()


def _first_occurrences(stream: torch.Tensor) -> torch.Tensor:
    """(r, m) bool: True where a value appears for the first time in its row."""
    m = stream.shape[1]
    if m <= PAIRWISE_MAX:  # O(m²) comparisons, no sort: faster for the short streams of small batches
        earlier = torch.ones((m, m), dtype=torch.bool, device=stream.device).tril(-1)  # [j, i]: i < j
        return ~((stream[:, :, None] == stream[:, None, :]) & earlier).any(dim=2)
    vals, order = torch.sort(stream, dim=1, stable=True)
    first_sorted = torch.ones_like(vals, dtype=torch.bool)
    first_sorted[:, 1:] = vals[:, 1:] != vals[:, :-1]
    return torch.zeros_like(first_sorted).scatter_(1, order, first_sorted)


def _first_distinct(stream: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first k distinct values of each row of ``stream`` (r, m), in stream order, and whether the row had k."""
    first = _first_occurrences(stream)
    rank = first.cumsum(dim=1)  # distinct values seen up to and including each position
    take = first & (rank <= k)
    out = torch.empty((stream.shape[0], k + 1), dtype=stream.dtype, device=stream.device)
    out.scatter_(1, torch.where(take, rank - 1, k), stream)  # column k collects what is not taken
    return out[:, :k], rank[:, -1] >= k


def distinct_uniform(R: int, n: int, k: int, generator: torch.Generator, device: torch.device,
                     redraw: torch.Generator | None = None) -> torch.Tensor:
    """(R, k) indices; each row a uniform k-subset of [n] (in order of first appearance in its stream).

    One stream of m draws per row from ``generator`` (R·m values in row order: R rows drawn at once are the same as
    the rows drawn in several calls); a row whose stream held fewer than k distinct values — rare by the choice of m —
    is redrawn alone, from ``redraw`` (default: ``generator``), until it has k, in row order."""
    if k == 0:
        return torch.empty((R, 0), dtype=torch.long, device=device)
    m = _stream_length(k, n)
    out, ok = _first_distinct(torch.randint(0, n, (R, m), generator=generator, device=device), k)
    bad = torch.nonzero(~ok).flatten().tolist()  # one host synchronisation per call
    for row in bad:
        while True:
            again, fine = _first_distinct(torch.randint(0, n, (1, m), generator=redraw or generator, device=device), k)
            if bool(fine[0]):
                out[row] = again[0]
                break
    return out


class Sampler:
    """Draws mini-batch indices for R replicas, step after step, from an explicit torch generator. With
    ``block`` > 1 the indices of ``block`` steps are drawn at once (fewer, larger operations, one host
    synchronisation per block) and handed out step by step. With blocks, the rare rejected rows of the
    without-replacement sampler are redrawn from a second generator (seeded from the first one's seed), so that the
    main stream does not depend on the blocking: on a CPU the draws are the same for every block size > 1 (tested),
    and the same as step by step unless a row was rejected. ``numpy_draws`` (the linear-regression engine, on a CPU)
    takes Floyd's draws from numpy's exact bounded integers; without it every draw comes from the torch generator, so
    its saved state is all a checkpoint needs (the MLP and sequence engines resume from it)."""

    name: str

    def __init__(self, n: int, b: int, R: int, generator: torch.Generator, device: torch.device,
                 block: int = 1, numpy_draws: bool = False) -> None:
        self.n, self.b, self.R, self.g, self.device, self.block = n, b, R, generator, device, max(1, int(block))
        self.redraw: torch.Generator | None = None  # step by step: rejected rows are redrawn from the main stream
        if self.block > 1:  # seeded from the main generator's seed without drawing from it
            self.redraw = torch.Generator(device=device)
            self.redraw.manual_seed((generator.initial_seed() * 6364136223846793005 + 1442695040888963407) % 2**63)
        # numpy_draws (on a CPU): Floyd's subsets from numpy's exact bounded integers, with a numpy generator seeded
        # from the torch generator's seed; otherwise from the torch generator alone (whose state a checkpoint saves)
        self.numpy_rng = np.random.default_rng(generator.initial_seed()) if numpy_draws and device.type == "cpu" else None
        self._buffer: list[Draw] = []

    def extra_state(self) -> dict:
        """What a checkpoint needs beside the generator's state to continue the stream exactly (none here)."""
        return {}

    def set_extra_state(self, state: dict) -> None:
        """Restore what ``extra_state`` gave (keys it did not give are absent)."""

    def draw(self) -> Draw:
        if not self._buffer:
            self._buffer = list(reversed(self.draw_block(self.block)))
        return self._buffer.pop()

    @property
    def includes(self) -> bool:
        """Whether the drawn indices are the batch (True) or its complement (see Draw)."""
        return True

    def draw_block(self, steps: int) -> list[Draw]:
        """The draws of the next ``steps`` steps."""
        return [self._draw_one() for _ in range(steps)]

    def draw_steps(self) -> torch.Tensor:
        """The indices of the next ``block`` steps as one tensor (block, R, k): the draws of ``block`` calls of
        ``draw``, for engines that hand a whole block of steps to the device at once."""
        return torch.stack([d.idx for d in self.draw_block(self.block)])

    def _draw_one(self) -> Draw:  # pragma: no cover - interface
        raise NotImplementedError


class WithoutReplacement(Sampler):
    name = "without_replacement"

    @property
    def includes(self) -> bool:
        return self.b <= self.n - self.b

    def _indices(self, steps: int) -> torch.Tensor:
        n, k = self.n, self.b if self.includes else self.n - self.b
        if k <= FLOYD_MAX:
            idx = floyd_subsets(steps * self.R, n, k, self.g, self.device, self.numpy_rng)
        else:
            idx = distinct_uniform(steps * self.R, n, k, self.g, self.device, self.redraw)
        return idx.reshape(steps, self.R, k)

    def draw_block(self, steps: int) -> list[Draw]:
        return [Draw(part, self.includes) for part in self._indices(steps)]

    def draw_steps(self) -> torch.Tensor:
        return self._indices(self.block)


class WithReplacement(Sampler):
    name = "with_replacement"

    def draw_block(self, steps: int) -> list[Draw]:
        return [Draw(part, True) for part in self._indices(steps)]

    def _indices(self, steps: int) -> torch.Tensor:
        return torch.randint(0, self.n, (steps, self.R, self.b), generator=self.g, device=self.device)

    def draw_steps(self) -> torch.Tensor:
        return self._indices(self.block)


class EpochReshuffle(Sampler):
    name = "epoch_reshuffle"

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.steps_per_epoch = self.n // self.b
        self.pos = self.steps_per_epoch  # forces a shuffle at the first draw
        self.perm: torch.Tensor | None = None

    def _draw_one(self) -> Draw:
        if self.pos == self.steps_per_epoch:
            self.perm = torch.rand((self.R, self.n), generator=self.g, device=self.device).argsort(dim=1)
            self.pos = 0
        start = self.pos * self.b
        self.pos += 1
        return Draw(self.perm[:, start:start + self.b], True)

    def extra_state(self) -> dict:
        """Mid-epoch: the epoch's permutations and the steps drawn from them (at an epoch's end the next draw
        shuffles afresh from the generator, so nothing more is needed)."""
        if self.perm is None or self.pos == self.steps_per_epoch:
            return {}
        return {"draw_pos": int(self.pos), "draw_perm": self.perm.cpu().numpy()}

    def set_extra_state(self, state: dict) -> None:
        if "draw_pos" in state:
            self.pos = int(state["draw_pos"])
            self.perm = torch.as_tensor(state["draw_perm"], device=self.device)


SAMPLER_CLASSES = {c.name: c for c in (WithoutReplacement, WithReplacement, EpochReshuffle)}


def make_sampler(name: str, n: int, b: int, R: int, generator: torch.Generator, device: torch.device,
                 block: int = 1, numpy_draws: bool = False) -> Sampler:
    """The named sampler; ``block`` steps of indices are drawn at once, ``numpy_draws`` takes Floyd's draws from
    numpy on a CPU (see Sampler)."""
    return SAMPLER_CLASSES[name](n, b, R, generator, device, block, numpy_draws)


def batch_indices(draw: Draw, n: int) -> torch.Tensor:
    """(R, b) the batch of each replica, whatever the draw holds: ``draw.idx`` itself when ``include``, else (a
    without-replacement draw with b > n/2 holds the n − b left-out indices) [n] minus them, in increasing order. Every
    engine that indexes data by a draw goes through this (or ``batch_counts``). Compacted by a running count — no
    host synchronisation, O(R·n)."""
    if draw.include:
        return draw.idx
    R, b = draw.idx.shape[0], n - draw.idx.shape[1]
    keep = torch.ones((R, n), dtype=torch.bool, device=draw.idx.device)
    keep.scatter_(1, draw.idx, False)
    slot = torch.where(keep, keep.cumsum(dim=1) - 1, b)  # the batch's j-th sample goes to column j; the rest to b
    out = torch.empty((R, b + 1), dtype=torch.long, device=draw.idx.device)
    out.scatter_(1, slot, torch.arange(n, device=draw.idx.device).expand(R, n))
    return out[:, :b]


def batch_counts(draw: Draw, n: int) -> torch.Tensor:
    """(R, n) float: how many times each sample is in each replica's batch (0/1 without replacement)."""
    R = draw.idx.shape[0]
    m = torch.zeros((R, n), device=draw.idx.device)
    m.scatter_add_(1, draw.idx, torch.ones(draw.idx.shape, device=draw.idx.device))
    return m if draw.include else 1.0 - m

"""What every replica engine's run shares: its replicas in chunks, cancellation, progress, and the divergence
bookkeeping; for the chunked engines (linear regression, the deep linear network) also the loop over a chunk's
schedule segments and blocks of steps (``run_blocks``), each engine supplying its per-segment setup and its block of
steps (``BlockSteps``).

A replica diverges at the first step where one of its quantities is non-finite or explodes; from then on it is left
out of every statistic, and the run reports the first such step and the count (docs/theory.md §4). The flags and
first steps stay on the device — updating them needs no host synchronisation — and are read once, when a chunk ends.
"""

from __future__ import annotations

import bisect
import contextlib
import threading
from dataclasses import dataclass, field
from typing import Callable, Protocol, Sequence

import numpy as np
import torch

from backend.errors import Cancelled
from backend.stats import group_ranges, group_start

DIVERGENCE_LOSS = 1e100  # a replica whose loss exceeds this (or turns non-finite) has diverged
ACTIVATION_ELEMENTS = 2**29  # activations one vectorised call over replicas may hold at once (2 GiB in float32)
STEP_BLOCK = 32  # steps whose indices are drawn at once and whose statistics are accumulated at once


def schedule_segments(b: int | list[tuple[int, int]], T: int) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """A batch size or a batch-size schedule [(b_i, steps_i), …] summing to T (docs/theory.md §12) as (segments,
    gradient ranges): segment i draws g_t for t in [a_i, e_i) with its b_i; the last one also at t = T."""
    segments = [(int(b), T)] if isinstance(b, (int, np.integer)) else [(int(x), int(s)) for x, s in b]
    if sum(s for _, s in segments) != T:
        raise ValueError(f"the schedule's steps sum to {sum(s for _, s in segments)}, expected {T}")
    ends = np.cumsum([s for _, s in segments]).tolist()
    starts = [0] + ends[:-1]
    ends[-1] = T + 1
    return segments, list(zip(starts, ends))


@dataclass
class ReplicaResult:
    """Estimates per t for one batch size: value, se, lo, hi arrays; plus divergence bookkeeping."""

    curves: dict[str, dict[str, np.ndarray]]
    finite_count: np.ndarray  # replicas still finite at each t
    diverged_at: int | None  # first step at which some replica became non-finite
    diverged_replicas: int
    groups: int


@dataclass(frozen=True)
class ChunkedRun:
    """What the run specs of the chunked replica engines (linear regression, the deep linear network) share: R
    replicas in K statistics groups, the sampler and seed of their streams, the device and dtype, CUDA graphs, the
    optimizer (backend/optim.py; None or plain: the engine's fused step), progress and cancel, and the batch-size
    schedule's segments [(b_i, steps_i)] with the steps [a_i, e_i) whose g_t each draws (``schedule_segments``; the
    last one also t = T). Each engine's ``RunSpec`` adds what is its own."""

    R: int
    K: int
    seed: int
    sampler: str
    device: torch.device
    dtype: torch.dtype
    cuda_graph: bool
    optimizer: object  # backend.optim.Optimizer | None
    progress: Callable[[int], None] | None
    cancel: threading.Event | None
    segments: list[tuple[int, int]]
    bounds: list[tuple[int, int]]

    @property
    def T1(self) -> int:
        """T + 1: the steps t = 0 … T whose statistics are taken."""
        return self.bounds[-1][1]


def seed_for(seed: int, *keys: int) -> int:
    """A 63-bit seed derived from (seed, keys...) by numpy's SeedSequence (independent streams per b and chunk)."""
    return int(np.random.SeedSequence([seed, *keys]).generate_state(2, dtype=np.uint64)[0] >> np.uint64(1))


@dataclass(frozen=True)
class Chunk:
    """Replicas [start, stop) of a run, processed together; ``groups`` the whole replica groups it holds (for
    engines whose statistics need whole groups), or None."""

    number: int
    start: int
    stop: int
    groups: range | None = None

    @property
    def size(self) -> int:
        return self.stop - self.start


def chunks(R: int, max_size: int, K: int | None = None) -> list[Chunk]:
    """The run's replicas in consecutive chunks of at most ``max_size`` (at least one replica, or with K groups at
    least one whole group: chunks then hold whole groups, contiguous blocks of the replica index as in
    backend.stats). The chunk number seeds the chunk's generators, so results do not depend on how many run at once."""
    if K is None:
        step = max(1, max_size)
        return [Chunk(i, start, min(R, start + step)) for i, start in enumerate(range(0, R, step))]
    return [Chunk(i, group_start(g.start, R, K), group_start(g.stop, R, K), g)
            for i, g in enumerate(group_ranges(R, K, max_size))]


@contextlib.contextmanager
def precision(name: str, device: torch.device):
    """The arithmetic of a forward/backward pass: ``float32`` as is; ``bf16`` autocast to bfloat16 (weights, their
    gradients and every statistic stay float32 / float64); ``tf32`` lets CUDA matrix products use TF32 tensor cores
    (on a CPU there is no TF32: the pass is float32)."""
    if name == "bf16":
        with torch.autocast(device.type, dtype=torch.bfloat16):
            yield
    elif name == "tf32" and device.type == "cuda":
        before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
        try:
            yield
        finally:
            torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before
    else:
        yield


def check_cancel(cancel: threading.Event | None) -> None:
    """Stop the run (nothing of it is cached) when the user has cancelled it."""
    if cancel is not None and cancel.is_set():
        raise Cancelled("cancelled")


def report(progress: Callable[[int], None] | None, units: int) -> None:
    if progress is not None:
        progress(units)


class Divergence:
    """Alive flags and first bad step of the replicas of one chunk (device tensors)."""

    def __init__(self, n: int, device: torch.device, bad_at: torch.Tensor | None = None) -> None:
        self.bad_at = torch.full((n,), -1, dtype=torch.long, device=device) if bad_at is None else bad_at
        self.alive = self.bad_at < 0

    def update(self, ok: torch.Tensor, t: int | torch.Tensor) -> torch.Tensor:
        """Record step t's verdict (``ok``: the replica's quantities are finite; t a number or a device scalar);
        returns the replicas that diverged at this step (a device tensor: testing it for any() is the caller's
        choice of a host sync). The flags are updated in place (a captured CUDA graph may hold them)."""
        newly = self.alive & ~ok
        self.bad_at.copy_(torch.where(newly, t, self.bad_at))
        self.alive &= ok
        return newly

    def update_block(self, ok: torch.Tensor, t0: int) -> torch.Tensor:
        """Record the verdicts ``ok`` (S, n) of steps t0 … t0 + S − 1 at once; returns (S, n): whether each replica
        was still finite after each step's verdict (what S calls of ``update`` would have left in ``alive``)."""
        alive = self.alive[None] & (ok.to(torch.uint8).cumprod(dim=0) > 0)
        newly = self.alive & ~alive[-1]
        self.bad_at = torch.where(newly, t0 + alive.sum(dim=0), self.bad_at)
        self.alive = alive[-1]
        return alive


class BlockSteps(Protocol):
    """A chunked engine's step code for one chunk, as ``run_blocks`` drives it."""

    def start_segment(self, j: int, div: Divergence) -> None:
        """Segment j begins: its b_j, stream and step code, starting where the previous segment ended (w and the
        optimizer's state, on the device)."""

    def run_block(self, j: int, t0: int, t1: int, div: Divergence) -> int:
        """Steps t0 … t1 − 1 of segment j: the statistics at each step that has them, the divergence verdicts into
        ``div``, the updates. Returns the steps completed: fewer than t1 − t0 ends the chunk (every replica
        diverged)."""


def run_blocks(spec: ChunkedRun, chunk: Chunk, steps: BlockSteps, stops: Sequence[int] = (),
               block: int = STEP_BLOCK) -> Divergence:
    """One chunk's replicas through every step t = 0 … T, the loop every chunked engine shares: segment after segment
    of the schedule (``spec.bounds``), ``steps.start_segment``, then blocks [t0, t1) of at most ``block`` steps (an
    engine whose buffers hold that many passes its own), each also ending after a step in ``stops`` (sorted; e.g. the
    recorded steps, the only ones of a block that may read the device back: only a block's last step is one). Before
    each block the cancel check, after it the progress (replica-steps; where every replica diverged, the chunk's
    remaining steps at once). Returns the chunk's divergence record, created here: its flags stay on the device and
    are read when the chunk ends (docs/theory.md §4)."""
    div = Divergence(chunk.size, spec.device)
    for j, (a, e) in enumerate(spec.bounds):
        steps.start_segment(j, div)
        t0 = a
        while t0 < e:
            check_cancel(spec.cancel)
            t1 = min(e, t0 + block)
            i = bisect.bisect_left(stops, t0)
            if i < len(stops) and stops[i] < t1:
                t1 = stops[i] + 1
            done = steps.run_block(j, t0, t1, div)
            if done < t1 - t0:
                report(spec.progress, chunk.size * (spec.T1 - t0))
                return div
            report(spec.progress, chunk.size * (t1 - t0))
            t0 = t1
    return div


@dataclass
class DivergenceLog:
    """The first bad steps of every chunk of a run, and its summary."""

    steps: list[np.ndarray] = field(default_factory=list)

    def add(self, chunk: Divergence) -> None:
        bad = chunk.bad_at.cpu().numpy()
        self.steps.append(bad[bad >= 0])

    @property
    def first(self) -> int | None:
        """The first step at which some replica diverged (None: none did)."""
        bad = np.concatenate(self.steps) if self.steps else np.zeros(0, dtype=np.int64)
        return int(bad.min()) if bad.size else None

    @property
    def count(self) -> int:
        return int(sum(s.size for s in self.steps))


# -- checkpoints of a resumable run (the cache holds them: backend/settings/classifier.py) -------------------------

CHECKPOINT_SECONDS = 20.0  # a resumable run saves its state at least this often (small states: at every chance)
SMALL_STATE = 5_000_000  # weights (numbers over all replicas) below which a run checkpoints at every chance


def checkpoint_due(last: float, params: dict[str, torch.Tensor], final: bool = False) -> bool:
    """Whether a resumable run saves its state now: at the end, when ``CHECKPOINT_SECONDS`` have passed since the
    last save (``last``, time.monotonic()), or always for a small state."""
    import time

    return (final or time.monotonic() - last > CHECKPOINT_SECONDS
            or sum(v.numel() for v in params.values()) < SMALL_STATE)


def pack_checkpoint(state: dict) -> tuple[dict, dict[str, np.ndarray]]:
    """A run's state as (meta, arrays) for the cache: ``params``, ``opt`` and ``stats`` (dicts of arrays) under the
    prefixes p., o., s.; every other array as is; numbers (the epoch or step reached) in the meta."""
    arrays = {f"p.{k}": v for k, v in state["params"].items()}
    arrays.update({f"o.{k}": v for k, v in state.get("opt", {}).items()})
    arrays.update({f"s.{k}": v for k, v in state["stats"].items()})
    arrays.update({k: v for k, v in state.items() if isinstance(v, np.ndarray)})
    return {k: v for k, v in state.items() if isinstance(v, (int, float))}, arrays


def unpack_checkpoint(meta: dict, arrays: dict[str, np.ndarray]) -> dict:
    """The state ``pack_checkpoint`` saved."""
    groups = {"p.": "params", "o.": "opt", "s.": "stats"}
    out: dict = {**meta, **{name: {} for name in groups.values()}}
    for k, v in arrays.items():
        prefix = k[:2]
        if prefix in groups:
            out[groups[prefix]][k[2:]] = v
        else:
            out[k] = v
    return out

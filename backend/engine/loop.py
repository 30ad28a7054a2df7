"""The shared training loop of the step-by-step replica engines (the MLP and sequence models, your own model): one
``RunSpec`` says what to run, the engine supplies its pieces (``Engine``: the step, the statistics of a record
point, where a checkpoint stands), and ``train_loop`` owns the rest — the training and probe streams of each
batch-size segment (docs/theory.md §12), blocks of STEP_BLOCK draws (never across a segment start or an epoch
end), cancel, progress, the divergence flags (docs/theory.md §4), the record points, the checkpoint cadence
(runner.checkpoint_due) and resuming from a checkpoint bitwise.

Per step t: draw (a block at a time), ``engine.step`` at α_t, the divergence verdict on its loss (on the device: no
host synchronisation), progress; after step t, when t + 1 starts a segment, that segment's streams and b; when
t + 1 is a record point, ``engine.record`` on the probe's fresh b-subset; then a checkpoint when one is due."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Callable, Protocol

import numpy as np
import torch

from backend.engine.runner import (STEP_BLOCK, Divergence, DivergenceLog, check_cancel, checkpoint_due, report,
                                   schedule_segments, seed_for)
from backend.engine.samplers import Sampler, batch_indices, make_sampler


def record_steps(steps: int, every: int) -> np.ndarray:
    """t = 0, k, 2k, …, and T (always)."""
    return np.unique(np.r_[np.arange(0, steps + 1, every), steps])


@dataclass(frozen=True)
class RunSpec:
    """One run of K inits × R replicas for ``steps`` steps on n training points.

    ``b``: a batch size, or a schedule [(b_i, steps_i), …] summing to ``steps`` (runner.schedule_segments);
    ``lr(t)``: α_t; ``record_at``: the steps t (increasing, 0 first) at which the statistics are recorded;
    ``epoch_steps``: when set, blocks of draws never cross an epoch's end and a checkpoint is saved only there
    (else at the end of any block of draws); ``checkpoint(state)`` / ``resume``: a resumable run's state
    (runner.pack_checkpoint / unpack_checkpoint)."""

    K: int
    R: int
    n: int
    steps: int
    b: int | list[tuple[int, int]]
    lr: Callable[[int], float]
    record_at: tuple[int, ...]
    sampler: str
    seed: int
    device: torch.device
    noise_samples: int
    precision: str = "float32"
    epoch_steps: int | None = None
    progress: Callable[[int], None] | None = None
    cancel: threading.Event | None = None
    checkpoint: Callable[[dict], None] | None = None
    resume: dict | None = None

    @property
    def N(self) -> int:
        return self.K * self.R

    @classmethod
    def for_epochs(cls, n: int, epochs: int, b: int, **fields) -> "RunSpec":
        """The run of ``epochs`` epochs of ⌊n/b⌋ steps at batch size b, recorded at every epoch's end (and t = 0),
        a checkpoint at an epoch's end; ``fields``: the others, by name."""
        per_epoch = n // b
        return cls(n=n, steps=epochs * per_epoch, b=b, record_at=tuple(range(0, epochs * per_epoch + 1, per_epoch)),
                   epoch_steps=per_epoch, **fields)

    @classmethod
    def for_steps(cls, n: int, steps: int, record_every: int, b, **fields) -> "RunSpec":
        """The run of ``steps`` steps recorded at record_steps(steps, record_every); ``fields``: the others, by
        name."""
        return cls(n=n, steps=steps, b=b, record_at=tuple(int(t) for t in record_steps(steps, record_every)), **fields)

    def noise_subset(self) -> np.ndarray:
        """The fixed uniform subsample S of min(noise_samples, n) training points of the one-step noise terms."""
        return np.random.default_rng(seed_for(self.seed, 31337)).permutation(self.n)[:min(self.noise_samples, self.n)]

    def restored(self, name: str) -> dict[str, torch.Tensor]:
        """The resumed state's tensors ``name`` ("params" or "opt"), own copies on the device (stepped in place)."""
        return {k: torch.as_tensor(v, device=self.device).clone() for k, v in self.resume.get(name, {}).items()}


class Engine(Protocol):
    """An engine's pieces of the loop: its weights ``params`` and optimizer state ``opt_state`` (checkpointed),
    its statistics ``stats`` ({name: (len(record_at), K)}, filled by ``record``)."""

    params: dict[str, torch.Tensor]
    opt_state: dict[str, torch.Tensor]
    stats: dict[str, np.ndarray]

    def step(self, idx: torch.Tensor, t: int, lr: float) -> torch.Tensor:
        """Step t on each replica's batch ``idx`` (N, b) at α_t = ``lr``; the (N,) losses (their finiteness is the
        divergence verdict)."""

    def settle(self) -> None:
        """Whatever the step holds back applied, before the weights are read."""

    def record(self, i: int, idx: torch.Tensor, b: int, alive: torch.Tensor) -> None:
        """The statistics of record point i into ``stats``: the probe's batch ``idx`` (N, b), the b of the segment
        that draws it, the replicas still alive."""

    def position(self, t: int) -> dict:
        """What a checkpoint taken after t steps says of where the run stands (its numbers)."""

    def start(self, resume: dict) -> int:
        """The first step a run resumed from ``resume`` takes (the inverse of ``position``)."""


def streams(spec: RunSpec, segments: list[tuple[int, int]], j: int) -> tuple[Sampler, Sampler]:
    """Segment j's training and probe samplers (segment 0: the streams of the constant-b_0 run)."""
    bj, tail = segments[j][0], (() if j == 0 else (j,))
    return tuple(make_sampler(name, spec.n, bj, spec.N, torch.Generator(device=spec.device).manual_seed(
        seed_for(spec.seed, bj, k, *tail)), spec.device) for name, k in ((spec.sampler, 1), ("without_replacement", 2)))


def train_loop(spec: RunSpec, engine: Engine) -> dict:
    """Run ``spec`` with ``engine``'s step and statistics; returns {"stats", "diverged_at", "diverged_replicas"}.
    A resumed run is bitwise the run that was not interrupted: blocks of draws start at the same steps and every
    draw comes from the saved streams."""
    segments, bounds = schedule_segments(spec.b, spec.steps)
    n, steps, resume = spec.n, spec.steps, spec.resume
    if resume is None:
        div, start = Divergence(spec.N, spec.device), 0
    else:
        div = Divergence(spec.N, spec.device, torch.as_tensor(resume["bad_at"], dtype=torch.long,
                                                              device=spec.device).clone())
        start = engine.start(resume)
    seg = next(j for j, (a, e) in enumerate(bounds) if a <= start < e)  # the segment that draws g_start
    draw, probe = streams(spec, segments, seg)
    b = segments[seg][0]
    if resume is not None:
        draw.g.set_state(torch.as_tensor(resume["gen"]))
        draw.set_extra_state(resume)  # an epoch-reshuffle stream saved mid-epoch: its permutations and position
        probe.g.set_state(torch.as_tensor(resume["probe"]))
    at = {int(t): i for i, t in enumerate(spec.record_at)}
    seg_at = {a: j for j, (a, _) in enumerate(bounds)}  # the step at which each segment starts
    epoch = spec.epoch_steps or steps

    def record(i: int) -> None:
        engine.settle()
        engine.record(i, batch_indices(probe.draw(), n), b, div.alive)

    if resume is None:
        record(0)
    draws: list = []
    last_saved = time.monotonic()
    for t in range(start, steps):
        check_cancel(spec.cancel)
        if not draws:  # a block of steps within the segment and the epoch
            end = min(steps, next(e for a, e in bounds if a <= t < e), (t // epoch + 1) * epoch)
            draws = draw.draw_block(min(STEP_BLOCK, end - t))[::-1]
        idx = batch_indices(draws.pop(), n)  # the batch, also when the draw holds its complement (b > n/2)
        loss = engine.step(idx, t, spec.lr(t))
        # no host sync: a dead replica keeps stepping (its weights may turn NaN) — replicas never mix, and every
        # statistic leaves it out through ``alive``
        div.update(torch.isfinite(loss), t)
        report(spec.progress, spec.N)  # every step (a Python count: no host sync)
        if t + 1 in seg_at:  # the next segment draws g_{t+1} on: its b and its own streams
            draw, probe = streams(spec, segments, seg_at[t + 1])
            b = segments[seg_at[t + 1]][0]
        if t + 1 in at:
            record(at[t + 1])
        if (spec.checkpoint is not None and not draws and (spec.epoch_steps is None or (t + 1) % epoch == 0)
                and checkpoint_due(last_saved, engine.params, final=t + 1 == steps)):
            engine.settle()
            spec.checkpoint({**engine.position(t + 1),
                             "params": {k: v.cpu().numpy().copy() for k, v in engine.params.items()},
                             "opt": {k: v.cpu().numpy().copy() for k, v in engine.opt_state.items()},
                             "stats": engine.stats, "gen": draw.g.get_state().numpy(), **draw.extra_state(),
                             "probe": probe.g.get_state().numpy(), "bad_at": div.bad_at.cpu().numpy()})
            last_saved = time.monotonic()
    diverged = DivergenceLog()
    diverged.add(div)
    return {"stats": engine.stats, "diverged_at": diverged.first, "diverged_replicas": diverged.count}

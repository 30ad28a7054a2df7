"""The shared loop of the chunked engines (backend/engine/runner.py: run_blocks): a chunk's steps t = 0 … T, segment
after segment of a batch-size schedule, in blocks of at most STEP_BLOCK steps that end at the recorded steps, with the
cancel check before each block and the progress after it; an engine whose every replica diverged ends its chunk early
and the run still reports all of its replica-steps. Checked against a step-by-step reference of what each step is."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from backend.config import parse_config
from backend.engine import deep_linear as engine_deep
from backend.engine import linreg as engine_linreg
from backend.engine.runner import STEP_BLOCK, Chunk, ChunkedRun, run_blocks, schedule_segments
from backend.errors import Cancelled

DEV = torch.device("cpu")


def spec_for(b, T: int, progress=None, cancel=None) -> ChunkedRun:
    segments, bounds = schedule_segments(b, T)
    return ChunkedRun(R=6, K=2, seed=0, sampler="auto", device=DEV, dtype=torch.float64, cuda_graph=False,
                      optimizer=None, progress=progress, cancel=cancel, segments=segments, bounds=bounds)


class Recorder:
    """BlockSteps that records what it is asked to do; ``stop_at``: the step at which every replica 'diverges'."""

    def __init__(self, stop_at: int | None = None) -> None:
        self.events: list[tuple] = []
        self.stop_at = stop_at

    def start_segment(self, j, div):
        self.events.append(("segment", j))

    def run_block(self, j, t0, t1, div):
        self.events.append(("block", j, t0, t1))
        if self.stop_at is not None and t0 <= self.stop_at < t1:
            return self.stop_at - t0
        return t1 - t0


@pytest.mark.parametrize("b,T,stops", [(4, 70, []), (4, 64, []), ([(2, 40), (4, 30)], 70, [0, 7, 14, 63, 70]),
                                       ([(2, 5), (8, 90), (3, 1)], 96, list(range(0, 97, 10)) + [96])])
def test_blocks_cover_every_step_once_within_segments_and_end_at_the_stops(b, T, stops):
    units = []
    spec = spec_for(b, T, progress=units.append)
    steps = Recorder()
    run_blocks(spec, Chunk(0, 0, 6), steps, stops=sorted(set(stops)))
    covered, segment = [], None
    for event in steps.events:
        if event[0] == "segment":
            segment = event[1]
            assert covered == list(range(spec.bounds[segment][0]))  # a segment starts where the previous one ended
            continue
        _, j, t0, t1 = event
        assert j == segment and spec.bounds[j][0] <= t0 < t1 <= spec.bounds[j][1]
        assert t1 - t0 <= STEP_BLOCK
        assert not [s for s in stops if t0 <= s < t1 - 1]  # a stop is always a block's last step
        covered.extend(range(t0, t1))
    assert covered == list(range(T + 1))
    assert [e[1] for e in steps.events if e[0] == "segment"] == list(range(len(spec.segments)))
    # blocks are as long as they may be: each ends at a segment's end, after a stop, or after STEP_BLOCK steps
    for _, j, t0, t1 in (e for e in steps.events if e[0] == "block"):
        assert t1 == spec.bounds[j][1] or (t1 - 1) in stops or t1 - t0 == STEP_BLOCK
    assert sum(units) == 6 * (T + 1) and len(units) == sum(e[0] == "block" for e in steps.events)


def test_a_chunk_whose_replicas_all_diverged_ends_and_counts_its_remaining_steps():
    units = []
    spec = spec_for([(2, 40), (4, 30)], 70, progress=units.append)
    steps = Recorder(stop_at=21)
    run_blocks(spec, Chunk(0, 0, 6), steps, stops=[0, 7, 14, 21, 28, 70])
    blocks = [e for e in steps.events if e[0] == "block"]
    assert blocks[-1][2] <= 21 < blocks[-1][3] and ("segment", 1) not in steps.events
    assert sum(units) == 6 * 71


def test_cancel_is_checked_before_each_block():
    cancel = threading.Event()
    spec = spec_for(4, 200, progress=lambda units: cancel.set(), cancel=cancel)
    steps = Recorder()
    with pytest.raises(Cancelled):
        run_blocks(spec, Chunk(0, 0, 6), steps)
    assert [e for e in steps.events if e[0] == "block"] == [("block", 0, 0, STEP_BLOCK)]


def test_both_engines_report_every_replica_step_when_every_replica_diverges():
    """A deep linear run whose replicas all diverge early, and a linear-regression run with most of them diverging,
    over a schedule and several chunks: the progress adds up to R (T + 1), and the divergence is reported."""
    cfg = parse_config({"setting": "deep_linear", "dims": [2, 2, 2], "steps": 60,
                        "lr": {"schedule": "constant", "c": 3}, "w0": {"seed": 0, "scale": 3}})
    units = []
    res = engine_deep.run_replicas([np.asarray(W, float) for W in cfg.w0_values],
                                   [np.asarray(W, float) for W in cfg.teacher_values], cfg.lr.alphas(60),
                                   [(1, 30), (2, 30)], 64, 5, DEV, progress=units.append, record_every=7)
    assert res.diverged_replicas == 64 and res.diverged_at is not None and sum(units) == 64 * 61
    assert res.finite_count[-1] == 0 and res.finite_count[0] == 64
    cfg = parse_config({"steps": 70, "batch_sizes": [2], "lr": {"schedule": "constant", "c": 2}})
    units = []
    res = engine_linreg.run_replicas(np.asarray(cfg.X, float), np.asarray(cfg.y, float),
                                     np.asarray(cfg.w0_values, float), cfg.lr.alphas(70), [(2, 35), (4, 35)], 100,
                                     cfg.sampler, 3, DEV, None, progress=units.append)
    assert res.diverged_replicas > 0 and sum(units) == 100 * 71
    assert res.finite_count[0] == 100 and res.finite_count[-1] == 100 - res.diverged_replicas

"""CUDA graph replay of the engines' step code (backend.engine.graphs, issue #13): on a GPU the captured path gives
the eager path's numbers bitwise — same seeds, same draws — for linear regression (each sampler, a partial last
block, several chunks, a divergence; two eager runs agree too: the group sums are deterministic segmented sums)
and the deep linear network (both Σ̂ samplers, thinned recording, a divergence), each also with momentum (heavy ball;
Nesterov with weight decay: the optimizer's static velocity buffers inside the captured step).
On a CPU there is no graph: the Replay helper runs its body at every call, and the engines' eager path is what the
rest of the suite tests. The CUDA tests run on a CUDA box (``benchmarks/gpu_check.py`` runs this file there)."""

import numpy as np
import pytest
import torch

from backend.config import parse_config
from backend.engine import deep_linear as engine_deep
from backend.engine import linreg as engine_linreg
from backend.engine.graphs import Replay
from backend.theory import linreg as th

CUDA = torch.device("cuda")
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA device")


def test_without_cuda_the_body_runs_at_every_call():
    calls = []
    replay = Replay(lambda: calls.append(len(calls)), torch.device("cpu"))
    for _ in range(4):
        replay()
    assert calls == [0, 1, 2, 3] and not replay.enabled and not replay.captured


@pytest.fixture
def replays(monkeypatch):
    """Counts graph replays, so a test knows the captured path ran."""
    count = {"n": 0}
    original = torch.cuda.CUDAGraph.replay

    def counted(self):
        count["n"] += 1
        return original(self)

    monkeypatch.setattr(torch.cuda.CUDAGraph, "replay", counted)
    return count


@needs_cuda
def test_replay_warms_up_then_captures_and_replays_on_the_same_buffers(replays):
    x = torch.zeros(4, device=CUDA)
    step = torch.ones((), device=CUDA)
    replay = Replay(lambda: x.add_(step), CUDA)
    for _ in range(3):
        replay()
    step.fill_(10.0)  # a replay reads the buffer's current value
    replay()
    torch.cuda.synchronize()
    assert replay.captured and replays["n"] == 3
    assert x.tolist() == [13.0] * 4  # warm-up 1, capture+replay 1, replay 1, replay 10


def linreg_args(cfg, b: int, R: int, seed: int) -> tuple:
    """engine_linreg.run_replicas's arguments for config ``cfg`` at batch size b on CUDA (the Rao–Blackwellised
    estimate wherever Lemma 1 applies)."""
    c = float(th.noise_factor(b, cfg.n, cfg.sampler)) if cfg.sampler != "epoch_reshuffle" else None
    return (np.asarray(cfg.X, float), np.asarray(cfg.y, float), np.asarray(cfg.w0_values, float),
            cfg.lr.alphas(cfg.steps), b, R, cfg.sampler, seed, CUDA, c)


def _same(a, b):
    assert a.curves.keys() == b.curves.keys()
    for q in a.curves:
        for stat in ("value", "se"):
            np.testing.assert_array_equal(a.curves[q][stat], b.curves[q][stat], err_msg=q)
    np.testing.assert_array_equal(a.finite_count, b.finite_count)
    assert a.diverged_at == b.diverged_at and a.diverged_replicas == b.diverged_replicas


@needs_cuda
@pytest.mark.parametrize("sampler,b,c", [("without_replacement", 16, "0.5"), ("without_replacement", 16, "1.9"),
                                         ("without_replacement", 460, "0.5"), ("with_replacement", 4, "0.5"),
                                         ("epoch_reshuffle", 8, "0.5")])
def test_linear_regression_graph_gives_the_eager_numbers(monkeypatch, replays, sampler, b, c):
    monkeypatch.setitem(engine_linreg.CHUNK_ELEMENTS, "cuda", 100 * max(1, min(b, 500 - b)) * 9)  # several chunks
    cfg = parse_config({"steps": 100, "batch_sizes": [b], "sampler": sampler,
                        "lr": {"schedule": "constant", "c": c}})
    args = linreg_args(cfg, b, 300, 3)
    eager = engine_linreg.run_replicas(*args, cuda_graph=False)
    assert replays["n"] == 0
    graph = engine_linreg.run_replicas(*args, cuda_graph=True)
    assert replays["n"] > 0
    _same(graph, eager)
    if sampler == "with_replacement":  # the statistics' group sums are deterministic too (no atomics)
        _same(engine_linreg.run_replicas(*args, cuda_graph=False), eager)
    if c == "1.9":
        assert eager.diverged_at is not None  # the divergence bookkeeping inside the graph is exercised


@needs_cuda
@pytest.mark.parametrize("b", [16, 460])
def test_linear_regression_column_major_gather_gives_the_row_major_numbers(monkeypatch, b):
    """On CUDA the drawn rows of X are gathered from a column-major copy (engine GATHER_LAYOUT: the elementwise
    gather kernel instead of the row kernel); the numbers are those of the row-major gather, bit for bit."""
    assert engine_linreg.GATHER_LAYOUT["cuda"] == "columns"
    cfg = parse_config({"steps": 70, "batch_sizes": [b]})
    args = linreg_args(cfg, b, 500, 4)
    columns = engine_linreg.run_replicas(*args)
    monkeypatch.setitem(engine_linreg.GATHER_LAYOUT, "cuda", "rows")
    _same(engine_linreg.run_replicas(*args), columns)


@needs_cuda
def test_linear_regression_two_level_group_sums_on_cuda(monkeypatch, replays):
    """With groups longer than SUM_PIECE (R = 4 000: 125 replicas per group) the CUDA group sums run in two levels:
    graph = eager bitwise, two runs agree bitwise, and the one-level sums give the same statistics to rounding."""
    from backend import stats

    assert stats.SUM_PIECE["cuda"] == 64
    cfg = parse_config({"steps": 70, "batch_sizes": [16]})
    args = linreg_args(cfg, 16, 4000, 6)
    assert stats.group_ids(0, 4000, 4000, 32, CUDA).pieces is not None
    eager = engine_linreg.run_replicas(*args, cuda_graph=False)
    _same(engine_linreg.run_replicas(*args, cuda_graph=True), eager)
    assert replays["n"] > 0
    _same(engine_linreg.run_replicas(*args, cuda_graph=False), eager)
    monkeypatch.setitem(stats.SUM_PIECE, "cuda", 0)
    one_level = engine_linreg.run_replicas(*args, cuda_graph=False)
    for q in eager.curves:
        want = one_level.curves[q]["value"]
        np.testing.assert_allclose(eager.curves[q]["value"], want, rtol=1e-10, atol=1e-13 * np.abs(want).max(), err_msg=q)


@needs_cuda
@pytest.mark.parametrize("b,every,diverge", [(2, 1, False), (2, 7, False), (8, 5, False), (1, 7, True)])
def test_deep_linear_graph_gives_the_eager_numbers(replays, b, every, diverge):
    over = {"setting": "deep_linear", "dims": [3, 4, 2], "steps": 60}
    if diverge:
        over.update({"dims": [2, 2, 2], "lr": {"schedule": "constant", "c": 3}, "w0": {"seed": 0, "scale": 3}})
    cfg = parse_config(over)
    W0 = [np.asarray(W, float) for W in cfg.w0_values]
    T = [np.asarray(W, float) for W in cfg.teacher_values]
    args = (W0, T, cfg.lr.alphas(60), b, 64, 5, CUDA)
    eager = engine_deep.run_replicas(*args, record_every=every, cuda_graph=False)
    graph = engine_deep.run_replicas(*args, record_every=every, cuda_graph=True)
    assert (replays["n"] > 0) == (every > 1)  # with every step recorded there is no plain step to capture
    _same(graph, eager)
    if diverge:
        assert eager.diverged_at is not None


MOMENTA = [(0.9, False, 0.0), (0.5, True, 0.01)]  # heavy ball; Nesterov with weight decay


@needs_cuda
@pytest.mark.parametrize("momentum,nesterov,weight_decay", MOMENTA, ids=["heavy_ball", "nesterov_wd"])
@pytest.mark.parametrize("sampler,b", [("without_replacement", 16), ("with_replacement", 4)])
def test_linear_regression_graph_with_momentum_gives_the_eager_numbers(monkeypatch, replays, sampler, b, momentum,
                                                                        nesterov, weight_decay):
    """The SGD family's velocity buffers are static in the captured step: graph = eager bitwise over several chunks
    (each chunk's velocity starts at 0), and the optimizer reached the step (the numbers differ from plain SGD)."""
    from backend.optim import sgd

    monkeypatch.setitem(engine_linreg.CHUNK_ELEMENTS, "cuda", 100 * max(1, min(b, 500 - b)) * 9)  # several chunks
    cfg = parse_config({"steps": 100, "batch_sizes": [b], "sampler": sampler,
                        "lr": {"schedule": "constant", "c": "0.05"}})
    args = linreg_args(cfg, b, 300, 3)
    opt = lambda: sgd(momentum, nesterov, weight_decay)  # noqa: E731  (a fresh optimizer per run)
    eager = engine_linreg.run_replicas(*args, cuda_graph=False, optimizer=opt())
    assert replays["n"] == 0
    graph = engine_linreg.run_replicas(*args, cuda_graph=True, optimizer=opt())
    assert replays["n"] > 0
    _same(graph, eager)
    plain = engine_linreg.run_replicas(*args, cuda_graph=False)
    assert not np.array_equal(plain.curves["loss"]["value"][-1], eager.curves["loss"]["value"][-1])


@needs_cuda
@pytest.mark.parametrize("momentum,nesterov,weight_decay", MOMENTA, ids=["heavy_ball", "nesterov_wd"])
@pytest.mark.parametrize("b,every", [(2, 7), (8, 5)])
def test_deep_linear_graph_with_momentum_gives_the_eager_numbers(replays, b, every, momentum, nesterov, weight_decay):
    from backend.optim import sgd

    cfg = parse_config({"setting": "deep_linear", "dims": [3, 4, 2], "steps": 60})
    W0 = [np.asarray(W, float) for W in cfg.w0_values]
    T = [np.asarray(W, float) for W in cfg.teacher_values]
    args = (W0, T, cfg.lr.alphas(60), b, 64, 5, CUDA)
    eager = engine_deep.run_replicas(*args, record_every=every, cuda_graph=False,
                                     optimizer=sgd(momentum, nesterov, weight_decay))
    graph = engine_deep.run_replicas(*args, record_every=every, cuda_graph=True,
                                     optimizer=sgd(momentum, nesterov, weight_decay))
    assert replays["n"] > 0
    _same(graph, eager)
    plain = engine_deep.run_replicas(*args, record_every=every, cuda_graph=False)
    assert not np.array_equal(plain.curves["loss"]["value"], eager.curves["loss"]["value"])

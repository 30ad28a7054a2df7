"""Replica engine against the exact theory (|z| ≤ 4), determinism, chunking and divergence handling."""

import numpy as np
import pytest
import torch

from backend import api
from backend.config import parse_config
from backend.engine import linreg as engine
from backend.theory import linreg as th

DEV = torch.device("cpu")


def run(cfg, b, R, seed=0, c=True):
    cval = float(th.noise_factor(b, cfg.n, cfg.sampler)) if c else None
    return engine.run_replicas(np.asarray(cfg.X, float), np.asarray(cfg.y, float), np.asarray(cfg.w0_values, float),
                               cfg.lr.alphas(cfg.steps), b, R, cfg.sampler, seed, DEV, cval)


def z(est, exact):
    se = np.sqrt(est["se"] ** 2 + (1e-9 * np.abs(exact)) ** 2)
    return (est["value"] - exact) / se


@pytest.mark.parametrize("sampler", ["without_replacement", "with_replacement"])
@pytest.mark.parametrize("b", [2, 16, 300])
def test_estimates_agree_with_exact_theory(sampler, b):
    """Graduate Admission, the paper's schedule: |z| ≤ 4 at t = 1, 3, 10, 25 for every quantity and estimator."""
    cfg = parse_config({"steps": 25, "sampler": sampler, "batch_sizes": [b]})
    exact = api.theory_curves(cfg, [b], cfg.steps)
    res = run(cfg, b, R=3000, seed=b)
    ts = [1, 3, 10, 25]
    for q, ref in (("var_g", "var_g"), ("var_full_grad", "var_full_grad"), ("loss", "loss"), ("var_g_rb", "var_g")):
        zz = z(res.curves[q], exact[ref][0])[ts]
        assert np.all(np.abs(zz) <= 4), (q, zz)
    # t = 0: var(g_0 | F_0) is Lemma 1, the RB estimator is exact there
    assert res.curves["var_g_rb"]["value"][0] == pytest.approx(exact["var_g"][0, 0], rel=1e-10)
    assert np.all(res.finite_count == 3000) and res.diverged_at is None


def test_rao_blackwell_has_smaller_se():
    cfg = parse_config({"steps": 30, "batch_sizes": [64]})
    res = run(cfg, 64, R=2000)
    ratio = res.curves["var_g"]["se"][1:] / res.curves["var_g_rb"]["se"][1:]
    assert np.median(ratio) > 1.5


def test_full_batch_has_zero_variance():
    cfg = parse_config({"steps": 10, "batch_sizes": [500]})
    res = run(cfg, 500, R=50)
    assert np.all(np.abs(res.curves["var_g"]["value"]) < 1e-20)


def test_same_seed_same_numbers_other_seed_differs():
    cfg = parse_config({"steps": 8, "batch_sizes": [8]})
    a, b, c = run(cfg, 8, 100, seed=3), run(cfg, 8, 100, seed=3), run(cfg, 8, 100, seed=4)
    np.testing.assert_array_equal(a.curves["var_g"]["value"], b.curves["var_g"]["value"])
    assert not np.array_equal(a.curves["var_g"]["value"], c.curves["var_g"]["value"])


def test_chunked_run_streams_and_agrees(monkeypatch):
    """With tiny chunks (many chunks per run) the streamed statistics still count every replica and match theory."""
    monkeypatch.setitem(engine.CHUNK_ELEMENTS, "cpu", 16 * 9 * 50)  # 50 replicas per chunk at b = 16
    cfg = parse_config({"steps": 10, "batch_sizes": [16]})
    assert engine.chunk_size(2000, 16, cfg.n, cfg.p) == 50
    res = run(cfg, 16, R=2000, seed=7)
    exact = api.theory_curves(cfg, [16], cfg.steps)
    assert np.all(res.finite_count == 2000)
    assert np.all(np.abs(z(res.curves["var_g"], exact["var_g"][0])[1:]) <= 4)


@pytest.mark.parametrize("piece", [0, 8])
def test_streaming_variance_equals_direct_computation(monkeypatch, piece):
    """The chunk-merged group statistics equal numpy's two-pass variance of the same gradients — with the group sums
    in one level (a CPU) and in two (pieces of 8 replicas, then the pieces of each group: CUDA's way)."""
    from backend import stats
    from backend.stats import GroupMoments, group_ids

    monkeypatch.setitem(stats.SUM_PIECE, "cpu", piece)
    assert (group_ids(0, 130, 1000, 10, DEV).pieces is not None) == bool(piece)

    rng = np.random.default_rng(0)
    x = rng.standard_normal((1000, 3)) * 1e3 + 1e6  # large mean: a naive E‖x‖² − ‖E x‖² would lose digits
    acc = GroupMoments.zeros(10, 1, DEV, d=3)
    for start in range(0, 1000, 130):
        stop = min(1000, start + 130)
        part = GroupMoments.of(torch.as_tensor(x[start:stop])[None], group_ids(start, stop, 1000, 10, DEV),
                               torch.ones((1, stop - start), dtype=torch.bool), dim=1, vector=True)
        acc.merge_(part)
    est = acc.variance_estimate()
    direct = ((x - x.mean(0)) ** 2).sum(1).sum() / 999
    assert est.value[0] == pytest.approx(direct, rel=1e-12)
    groups = [((g - g.mean(0)) ** 2).sum() / (len(g) - 1) for g in np.split(x, 10)]
    assert est.se[0] == pytest.approx(np.std(groups, ddof=1) / np.sqrt(10), rel=1e-10)


@pytest.mark.parametrize("start,stop,R,K,first,G", [(0, 1000, 1000, 8, 0, None), (130, 7000, 10000, 32, 0, None),
                                                     (250, 600, 1000, 10, 2, 5), (0, 300, 300, 2, 0, None)])
def test_two_level_group_sums_are_the_group_sums(monkeypatch, start, stop, R, K, first, G):
    """Groups.sum in pieces (SUM_PIECE, CUDA's way) gives each group's sum — numpy's, to float64 rounding — for
    groups cut by the chunk's edges, groups outside the chunk (0) and a window of groups (first, G)."""
    from backend import stats

    monkeypatch.setitem(stats.SUM_PIECE, "cpu", 16)
    groups = stats.group_ids(start, stop, R, K, DEV, first=first, G=G)
    assert groups.pieces is not None and int(groups.pieces.sum()) == stop - start
    x = np.random.default_rng(start).standard_normal((3, stop - start, 4)) + 5
    got = groups.sum(torch.as_tensor(x), 1).numpy()
    owner = (np.arange(start, stop) * K) // R - first
    want = np.stack([x[:, owner == g].sum(axis=1) for g in range(K - first if G is None else G)], axis=1)
    np.testing.assert_allclose(got, want, rtol=1e-13, atol=0)


def test_divergence_is_detected_and_reported():
    cfg = parse_config({"steps": 60, "batch_sizes": [4], "lr": {"schedule": "constant", "c": 3}})
    res = run(cfg, 4, R=200)
    assert res.diverged_at is not None and res.diverged_replicas > 0
    assert res.finite_count[0] == 200 and res.finite_count[-1] < 200
    # statistics before the divergence are finite and unaffected; after, they use the finite replicas only
    assert np.all(np.isfinite(res.curves["var_g"]["value"][: res.diverged_at]))
    assert not np.any(np.isnan(res.curves["loss"]["value"][res.finite_count >= 2]))


def test_epoch_reshuffle_runs_without_theory():
    cfg = parse_config({"steps": 30, "batch_sizes": [50], "sampler": "epoch_reshuffle"})
    res = run(cfg, 50, R=100, c=False)
    assert "var_g_rb" not in res.curves
    assert np.all(np.isfinite(res.curves["var_g"]["value"]))
    assert api.theory(cfg)["available"] is False


def test_cancel_stops_the_run_and_caches_nothing(tmp_path):
    import threading

    from backend.cache import ResultCache
    from backend.errors import Cancelled

    cache = ResultCache(tmp_path)
    cfg = parse_config({"steps": 2000, "batch_sizes": [4], "replicas": 100})
    cancel = threading.Event()
    progress = api.Progress()
    calls = []

    def advance(units):
        calls.append(units)
        if len(calls) == 50:
            cancel.set()

    progress.on_advance = advance
    with pytest.raises(Cancelled):
        api.simulate(cfg, progress=progress, cancel=cancel, cache=cache)
    assert len(calls) < 100 and api.cached_simulation(cfg, cache=cache) is None


def test_paper_figure_2b_preset_fits_the_guard():
    cfg = parse_config({"preset": "paper (Figure 2b)"})
    assert len(cfg.batch_sizes) == 21 and cfg.replicas == 200_000
    est = api.guard(cfg, DEV)  # passes the guard on a laptop: peak RSS measured 3.3 GB (b = 4, 200 000 replicas)
    assert 3 * 2**30 < est["memory_bytes"] < 6 * 2**30


def test_resource_guard_refuses_with_the_estimate():
    from backend.errors import TooExpensive

    cfg = parse_config({"steps": 20000, "replicas": 1_000_000, "batch_sizes": [250, 256]})
    with pytest.raises(TooExpensive) as err:
        api.simulate(cfg)
    assert err.value.field == "replicas" and ("minutes" in str(err.value) or "GiB" in str(err.value))


@pytest.mark.parametrize("sampler", ["without_replacement", "with_replacement", "epoch_reshuffle"])
def test_block_of_steps_gives_the_numbers_of_step_by_step(monkeypatch, sampler):
    """The engine draws indices and accumulates statistics a block of steps at a time; with blocks of one step the
    numbers are identical (bitwise), for a T that is not a multiple of the block, several chunks and a divergence."""
    monkeypatch.setitem(engine.CHUNK_ELEMENTS, "cpu", 16 * 9 * 70)
    cfg = parse_config({"steps": 45, "batch_sizes": [16], "sampler": sampler,
                        "lr": {"schedule": "constant", "c": "1.9"}})
    blocked = run(cfg, 16, R=200, seed=2, c=sampler != "epoch_reshuffle")
    monkeypatch.setattr(engine, "STEP_BLOCK", 1)
    stepwise = run(cfg, 16, R=200, seed=2, c=sampler != "epoch_reshuffle")
    assert blocked.curves.keys() == stepwise.curves.keys()
    for q in blocked.curves:
        for stat in ("value", "se"):
            np.testing.assert_array_equal(blocked.curves[q][stat], stepwise.curves[q][stat])
    np.testing.assert_array_equal(blocked.finite_count, stepwise.finite_count)
    assert blocked.diverged_at == stepwise.diverged_at



@pytest.mark.parametrize("b", [16, 460])
def test_column_major_gather_gives_the_row_major_numbers(monkeypatch, b):
    """CUDA gathers the drawn rows of X from a column-major copy (GATHER_LAYOUT; the fast kernel there): the rows,
    and so every statistic, are bit for bit those of the row-major gather — here on a CPU, for a batch and a
    complement draw (b = 460 of n = 500), several chunks and a divergence (tests/test_cuda_graphs.py checks the same
    on CUDA)."""
    monkeypatch.setitem(engine.CHUNK_ELEMENTS, "cpu", min(b, 500 - b) * 9 * 70)
    cfg = parse_config({"steps": 40, "batch_sizes": [b], "lr": {"schedule": "constant", "c": "10"}})
    assert engine.GATHER_LAYOUT["cpu"] == "rows"
    rows = run(cfg, b, R=200, seed=5)
    monkeypatch.setitem(engine.GATHER_LAYOUT, "cpu", "columns")
    Xg = engine.gather_source(torch.as_tensor(np.asarray(cfg.X, float)), "cpu")
    assert not Xg.is_contiguous() and Xg.T.is_contiguous()  # the column-major copy is really the one gathered from
    columns = run(cfg, b, R=200, seed=5)
    for q in rows.curves:
        for stat in ("value", "se"):
            np.testing.assert_array_equal(columns.curves[q][stat], rows.curves[q][stat], err_msg=q)
    np.testing.assert_array_equal(columns.finite_count, rows.finite_count)
    assert rows.diverged_at is not None and columns.diverged_at == rows.diverged_at


def test_every_step_gathers_from_the_laid_out_copy_of_x(monkeypatch):
    """The steps of full blocks (replayed: a CUDA graph there) and of the last, partial block all gather their rows
    from gather_source's copy: with that copy zeroed every drawn x_i is 0, so every g_t = (1/b) Σ x_i r_i = 0 and
    var(g_t) = 0 at each t = 0..40 (two blocks of 32), while the run with X's own rows has var(g_t) > 0 throughout."""
    cfg = parse_config({"steps": 40, "batch_sizes": [16]})
    plain = run(cfg, 16, R=50, seed=1)
    assert (plain.curves["var_g"]["value"] > 0).all()
    monkeypatch.setattr(engine, "gather_source", lambda X, device_type: torch.zeros_like(X))
    zeroed = run(cfg, 16, R=50, seed=1)
    assert zeroed.curves["var_g"]["value"].shape == (41,)
    np.testing.assert_array_equal(zeroed.curves["var_g"]["value"], 0.0)

"""Samplers draw every b-subset (or tuple) with the right frequency: chi-square tests with fixed seeds."""

import itertools
from math import comb

import numpy as np
import pytest
import torch
from scipy.stats import chisquare

from backend.engine import samplers
from backend.engine.samplers import batch_counts, make_sampler

DEV = torch.device("cpu")


def subset_counts(name, n, b, R, draws, seed):
    g = torch.Generator().manual_seed(seed)
    s = make_sampler(name, n, b, R, g, DEV)
    index = {c: k for k, c in enumerate(itertools.combinations(range(n), b))}
    counts = np.zeros(len(index))
    for _ in range(draws):
        m = batch_counts(s.draw(), n)
        assert torch.all(m.sum(1) == b) and m.max() <= 1
        for row in m.numpy():
            counts[index[tuple(np.flatnonzero(row))]] += 1
    return counts


@pytest.mark.parametrize("n,b", [(6, 1), (6, 2), (6, 3), (6, 4), (6, 5), (7, 6)])
def test_without_replacement_uniform_over_subsets(n, b):
    counts = subset_counts("without_replacement", n, b, R=2000, draws=10, seed=n * 10 + b)
    assert len(counts) == comb(n, b)
    assert chisquare(counts).pvalue > 1e-3


def test_without_replacement_b_equals_n_is_the_full_set():
    g = torch.Generator().manual_seed(0)
    d = make_sampler("without_replacement", 5, 5, 10, g, DEV).draw()
    assert torch.all(batch_counts(d, 5) == 1)


@pytest.mark.parametrize("n,b", [(6, 2), (7, 3), (6, 5)])
def test_stream_path_uniform_over_subsets(monkeypatch, n, b):
    """The stream path (used for k > FLOYD_MAX) on small cases, forced."""
    monkeypatch.setattr(samplers, "FLOYD_MAX", 0)
    counts = subset_counts("without_replacement", n, b, R=2000, draws=10, seed=n * 100 + b)
    assert chisquare(counts).pvalue > 1e-3


@pytest.mark.parametrize("source", ["numpy", "torch"])  # the CPU's exact draws, and the GPU's (run here on a CPU)
def test_floyd_rows_are_uniform_subsets(source):
    """Floyd's subsets: each of the C(7, 3) subsets equally often (a row is a set: its order carries no meaning);
    rows drawn in one call or in two are the same subsets."""
    def draw(rows_per_call, calls):
        gen = torch.Generator().manual_seed(3)
        rng = np.random.default_rng(3) if source == "numpy" else None
        return torch.cat([samplers.floyd_subsets(rows_per_call, 7, 3, gen, DEV, rng) for _ in range(calls)])

    idx = draw(42_000, 1)
    assert torch.equal(idx, draw(21_000, 2))
    index = {c: k for k, c in enumerate(itertools.combinations(range(7), 3))}
    counts = np.zeros(len(index))
    for row in idx.tolist():
        assert len(set(row)) == 3
        counts[index[tuple(sorted(row))]] += 1
    assert chisquare(counts).pvalue > 1e-3


def test_rejection_path_stays_uniform(monkeypatch):
    """Force short streams so most rows are redrawn: the conditioning is symmetric and keeps the draw uniform."""
    monkeypatch.setattr(samplers, "FLOYD_MAX", 0)
    monkeypatch.setattr(samplers, "_stream_length", lambda k, n: k + 1)
    counts = subset_counts("without_replacement", 6, 3, R=2000, draws=10, seed=5)
    assert chisquare(counts).pvalue > 1e-3


def test_independent_across_steps():
    """Pairs (B_t, B_{t+1}) of one replica are uniform over all pairs of subsets (independence across steps)."""
    n, b = 5, 2
    g = torch.Generator().manual_seed(11)
    s = make_sampler("without_replacement", n, b, 3000, g, DEV)
    index = {c: k for k, c in enumerate(itertools.combinations(range(n), b))}
    counts = np.zeros((len(index), len(index)))
    for _ in range(10):
        first = [index[tuple(sorted(r))] for r in s.draw().idx.tolist()]
        second = [index[tuple(sorted(r))] for r in s.draw().idx.tolist()]
        np.add.at(counts, (first, second), 1)
    assert chisquare(counts.ravel()).pvalue > 1e-3


def test_with_replacement_uniform_over_tuples():
    n, b = 4, 2
    g = torch.Generator().manual_seed(2)
    s = make_sampler("with_replacement", n, b, 4000, g, DEV)
    counts = np.zeros(n**b)
    for _ in range(5):
        idx = s.draw().idx.numpy()
        np.add.at(counts, idx[:, 0] * n + idx[:, 1], 1)
    assert chisquare(counts).pvalue > 1e-3


def test_epoch_reshuffle_covers_every_sample_once_per_epoch():
    n, b = 12, 4
    g = torch.Generator().manual_seed(3)
    s = make_sampler("epoch_reshuffle", n, b, 500, g, DEV)
    for _epoch in range(3):
        seen = torch.cat([s.draw().idx for _ in range(n // b)], dim=1)
        assert torch.all(torch.sort(seen, dim=1).values == torch.arange(n))
    # the first batch of an epoch is a uniform subset
    counts = np.zeros(comb(6, 2))
    index = {c: k for k, c in enumerate(itertools.combinations(range(6), 2))}
    s = make_sampler("epoch_reshuffle", 6, 2, 3000, torch.Generator().manual_seed(4), DEV)
    for row in s.draw().idx.tolist():
        counts[index[tuple(sorted(row))]] += 1
    assert chisquare(counts).pvalue > 1e-3


def test_cost_does_not_grow_with_n():
    """The subset draw reads O(b) random numbers per replica, not O(n): the stream length is flat in n."""
    lengths = [samplers._stream_length(16, n) for n in (500, 5_000, 500_000)]
    assert lengths[0] >= lengths[1] >= lengths[2] >= 16 and lengths[0] < 60


def _stacked(name, n, b, R, steps, block, seed, numpy_draws=False):
    s = make_sampler(name, n, b, R, torch.Generator().manual_seed(seed), DEV, block, numpy_draws)
    draws = [s.draw() for _ in range(steps)]
    return torch.stack([d.idx for d in draws]), {d.include for d in draws}


@pytest.mark.parametrize("numpy_draws", [False, True])
@pytest.mark.parametrize("name, n, b", [("without_replacement", 500, 16), ("without_replacement", 500, 400),
                                        ("without_replacement", 500, 64), ("without_replacement", 100, 45),
                                        ("with_replacement", 50, 8)])
def test_blocks_of_steps_draw_the_same_indices_as_step_by_step(name, n, b, numpy_draws):
    """Drawing the indices of a block of steps at once (one large operation) gives the draws of step by step:
    the same for every block size (and, without a rejected row, the same as block 1), from either source."""
    one, inc1 = _stacked(name, n, b, 300, 40, 1, seed=b, numpy_draws=numpy_draws)
    for block in (2, 7, 32):
        got, inc = _stacked(name, n, b, 300, 40, block, seed=b, numpy_draws=numpy_draws)
        assert torch.equal(got, one) and inc == inc1


def test_blocks_agree_when_rows_are_rejected(monkeypatch):
    """Force short streams (most rows rejected and redrawn): every block size > 1 still gives the same draws, and
    they stay uniform over the subsets (chi-square)."""
    monkeypatch.setattr(samplers, "FLOYD_MAX", 0)
    monkeypatch.setattr(samplers, "_stream_length", lambda k, n: k + 1)
    ref, _ = _stacked("without_replacement", 6, 3, 500, 12, 2, seed=9)
    for block in (3, 12):
        got, _ = _stacked("without_replacement", 6, 3, 500, 12, block, seed=9)
        assert torch.equal(got, ref)
    index = {c: k for k, c in enumerate(itertools.combinations(range(6), 3))}
    counts = np.zeros(len(index))
    for row in ref.reshape(-1, 3).tolist():
        counts[index[tuple(sorted(row))]] += 1
    assert chisquare(counts).pvalue > 1e-3


@pytest.mark.parametrize("k, n", [(16, 500), (30, 40), (120, 500)])  # pairwise (short streams) and sorting paths
def test_first_distinct_values_in_stream_order(k, n):
    """The k chosen values are the first k distinct values of the stream, in order (checked row by row in Python)."""
    m = samplers._stream_length(k, n)
    stream = torch.randint(0, n, (200, m), generator=torch.Generator().manual_seed(k))
    chosen, ok = samplers._first_distinct(stream, k)
    for row, got, fine in zip(stream.tolist(), chosen.tolist(), ok.tolist()):
        want = list(dict.fromkeys(row))
        assert fine == (len(want) >= k)
        if fine:
            assert got == want[:k]


@pytest.mark.parametrize("name,n,b", [("without_replacement", 9, 7), ("without_replacement", 9, 3),
                                      ("without_replacement", 50, 50), ("with_replacement", 9, 7),
                                      ("epoch_reshuffle", 9, 4)])
def test_batch_indices_are_the_batch_whatever_the_draw_holds(name, n, b):
    """batch_indices gives each replica's b batch indices: the draw itself when it is the batch, [n] minus the
    left-out indices of a complement draw (b > n/2), in increasing order — as batch_counts counts them."""
    d = make_sampler(name, n, b, 6, torch.Generator().manual_seed(3), torch.device("cpu")).draw()
    idx = samplers.batch_indices(d, n)
    assert idx.shape == (6, b) and idx.dtype == torch.long
    for r in range(6):
        row, drawn = idx[r].tolist(), d.idx[r].tolist()
        assert row == (drawn if d.include else sorted(set(range(n)) - set(drawn)))
    counts = torch.zeros((6, n)).scatter_add_(1, idx, torch.ones(idx.shape))
    assert torch.equal(counts, batch_counts(d, n))

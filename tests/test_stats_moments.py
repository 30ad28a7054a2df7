"""backend/stats.py's one per-group statistics interface (GroupMoments, docs/theory.md §4) against numpy computed
directly from the same known data: counts, sums, M2, the merge of chunks, per-group SEs and batch means."""

import numpy as np
import pytest
import torch

from backend.stats import GroupMoments, Groups, group_ids, ratio_se, variance_se

DEV = torch.device("cpu")
RNG = np.random.default_rng(7)
R, K, D = 103, 4, 3
X = RNG.standard_normal((R, D)) * 10.0 + 1e5  # a large mean: E‖x‖² − ‖E x‖² would lose the digits
BOUNDS = [(g * R + K - 1) // K for g in range(K + 1)]  # group g holds replicas BOUNDS[g] … BOUNDS[g+1] − 1
EVERY = torch.ones(R, dtype=torch.bool)


def numpy_groups(x):
    return [x[BOUNDS[g]:BOUNDS[g + 1]] for g in range(K)]


def test_moments_of_known_data_are_numpy_counts_sums_and_m2():
    m = GroupMoments.of(torch.as_tensor(X), group_ids(0, R, R, K, DEV), EVERY, vector=True)
    for g, rows in enumerate(numpy_groups(X)):
        assert m.count[g].item() == len(rows)
        np.testing.assert_allclose(m.sum[g].numpy(), rows.sum(axis=0), rtol=1e-15)
        assert m.m2[g].item() == pytest.approx(((rows - rows.mean(axis=0)) ** 2).sum(), rel=1e-9)


@pytest.mark.parametrize("cut", [1, 37, 50, 102])  # cuts inside a group: both halves hold part of it
def test_merge_of_two_halves_equals_the_whole(cut):
    x = torch.as_tensor(X)
    whole = GroupMoments.of(x, group_ids(0, R, R, K, DEV), EVERY, vector=True)
    merged = GroupMoments.zeros(K, 1, DEV, d=D)
    for a, b in ((0, cut), (cut, R)):
        part = GroupMoments.of(x[a:b][None], group_ids(a, b, R, K, DEV), EVERY[a:b][None], dim=1, vector=True)
        merged.merge_(part)
    np.testing.assert_array_equal(merged.count[:, 0].numpy(), whole.count.numpy())
    np.testing.assert_allclose(merged.sum[:, 0].numpy(), whole.sum.numpy(), rtol=1e-14)
    np.testing.assert_allclose(merged.m2[:, 0].numpy(), whole.m2.numpy(), rtol=1e-9)


def test_batch_means_se_and_pooled_estimates_against_numpy():
    m = GroupMoments.zeros(K, 1, DEV, d=D)
    m.merge_(GroupMoments.of(torch.as_tensor(X)[None], group_ids(0, R, R, K, DEV), EVERY[None], dim=1, vector=True))
    groups = numpy_groups(X)
    var_k = np.array([((g - g.mean(axis=0)) ** 2).sum() / (len(g) - 1) for g in groups])
    est = m.variance_estimate()
    assert est.value[0] == pytest.approx(((X - X.mean(axis=0)) ** 2).sum() / (R - 1), rel=1e-9)
    assert est.se[0] == pytest.approx(var_k.std(ddof=1) / np.sqrt(K), rel=1e-8)
    assert est.groups[0] == K and est.count[0] == R
    lo, hi = est.interval(0.95)
    q = 3.182446305284263  # t_{3, 0.975}
    assert (hi[0] - lo[0]) / 2 == pytest.approx(q * est.se[0], rel=1e-9)
    scalar = GroupMoments.zeros(K, 1, DEV, second=False)
    scalar.merge_(GroupMoments.of(torch.as_tensor(X[:, 0])[None], group_ids(0, R, R, K, DEV), EVERY[None], dim=1,
                                  second=False))
    mean_k = np.array([g[:, 0].mean() for g in groups])
    est = scalar.mean_estimate()
    assert est.value[0] == pytest.approx(X[:, 0].mean(), rel=1e-14)
    assert est.se[0] == pytest.approx(mean_k.std(ddof=1) / np.sqrt(K), rel=1e-8)


def test_per_group_mean_se_variance_se_and_ratio_se_against_numpy():
    size = 25
    x = torch.as_tensor(X[:K * size])
    blocks = Groups.blocks(K, size, DEV)
    valid = torch.ones(K * size, dtype=torch.bool)
    mean, se = GroupMoments.of(x[:, 0], blocks, valid).mean_se()
    v, v_se = variance_se(x, blocks, valid)
    a, b = x[:, 0] - 1e5 + 40, x[:, 1] - 1e5 + 50
    ratio, r_se = ratio_se(a, b, blocks, valid)
    for g in range(K):
        rows = X[g * size:(g + 1) * size]
        assert mean[g] == pytest.approx(rows[:, 0].mean(), rel=1e-14)
        assert se[g] == pytest.approx(rows[:, 0].std(ddof=1) / np.sqrt(size), rel=1e-8)
        u = size * ((rows - rows.mean(axis=0)) ** 2).sum(axis=1) / (size - 1)
        assert v[g] == pytest.approx(u.mean(), rel=1e-9)
        assert v_se[g] == pytest.approx(u.std(ddof=1) / np.sqrt(size), rel=1e-7)
        ag, bg = rows[:, 0] - 1e5 + 40, rows[:, 1] - 1e5 + 50
        assert ratio[g] == pytest.approx(ag.mean() / bg.mean(), rel=1e-12)
        infl = (ag - ag.mean() / bg.mean() * bg) / bg.mean()
        assert r_se[g] == pytest.approx(infl.std(ddof=1) / np.sqrt(size), rel=1e-8)


def test_invalid_entries_are_left_out_whatever_they_hold():
    x = torch.as_tensor(X.copy())
    valid = EVERY.clone()
    valid[[0, 5, 60]] = False
    x[0], x[5, 1], x[60] = float("nan"), float("inf"), float("-inf")
    m = GroupMoments.of(x, group_ids(0, R, R, K, DEV), valid, vector=True)
    keep = valid.numpy()
    for g in range(K):
        rows = X[BOUNDS[g]:BOUNDS[g + 1]][keep[BOUNDS[g]:BOUNDS[g + 1]]]
        assert m.count[g].item() == len(rows)
        assert m.m2[g].item() == pytest.approx(((rows - rows.mean(axis=0)) ** 2).sum(), rel=1e-9)
    assert np.isfinite(m.variances()).all() and np.isfinite(m.means()).all()
    # a group with a single valid replica: a mean without an SE, no variance
    lone = torch.zeros(R, dtype=torch.bool)
    lone[0] = True
    mean, se = GroupMoments.of(torch.as_tensor(X[:, 0]), group_ids(0, R, R, K, DEV), lone).mean_se()
    assert mean[0] == X[0, 0] and np.isnan(se[0]) and np.isnan(mean[1:]).all()


def test_blocks_sum_as_the_contiguous_groups():
    x = torch.as_tensor(RNG.standard_normal((2, 5 * 8, 3)))
    np.testing.assert_allclose(Groups.blocks(5, 8, DEV).sum(x, 1).numpy(),
                               group_ids(0, 40, 40, 5, DEV).sum(x, 1).numpy(), rtol=0, atol=1e-13)
    np.testing.assert_allclose(Groups.blocks(5, 8, DEV).sum(x, 1).numpy(), x.numpy().reshape(2, 5, 8, 3).sum(axis=2),
                               rtol=0, atol=1e-13)

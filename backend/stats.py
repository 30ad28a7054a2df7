"""Streaming replica statistics with batch-means standard errors (docs/theory.md §4), z-scores and polynomial fits.

Replicas are split into K contiguous groups. For every (group, t) we keep, in float64, the count, the mean vector and
M2 = Σ‖x − mean‖², merged chunk by chunk with the pairwise update of Chan, Golub & LeVeque (stable: never E‖x‖² − ‖E x‖²).
Memory is O(K · (T+1) · d), independent of the number of replicas R.
- var estimate:  V̂ = M2_all / (N − 1), unbiased for var(x_t | F_0) = E‖x − E x‖²;
- its SE:        sd_k(V̂_k) / √K  (batch means over the K groups), and a 95 % interval V̂ ± t_{K−1, 0.975} SE;
- mean estimate: Σ x / N with SE sd_k(mean_k)/√K.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

DEFAULT_GROUPS = 32


def n_groups(R: int, wanted: int = DEFAULT_GROUPS) -> int:
    """K = min(wanted, R // 2) so that every group has at least two replicas."""
    return max(2, min(wanted, R // 2))


# replicas per first-level piece of a group sum, per device type (0: one level). torch's CUDA segmented sum gives
# one thread to each (segment, lane) and walks the segment serially: 32 groups of 3 000 replicas leave a few
# thousand threads each waiting on 3 000 dependent loads (≈ 0.44 ms per call at 55 000 replicas, 15 % of the
# linear-regression step at R = 10⁵ on an H100, profiled); pieces of 64 then a sum over each group's pieces keep
# every thread's walk short. On a CPU one pass is faster (the two-level sum: 0.60 vs 0.29 ms at 1 000 replicas).
SUM_PIECE = {"cpu": 0, "cuda": 64}


def _segment_sum(x: torch.Tensor, lengths: torch.Tensor, dim: int) -> torch.Tensor:
    lengths = lengths.expand(*x.shape[:dim], len(lengths)).contiguous()
    return torch.segment_reduce(x, "sum", lengths=lengths, axis=dim, unsafe=True, initial=0.0)


@dataclass(frozen=True)
class Groups:
    """The statistics groups of a chunk of replicas: ``ids`` (Rc,) the group of each replica, sorted (groups are
    contiguous blocks of the replica index), and ``lengths`` (G,) the replicas of each group in the chunk (0 for a
    group outside it); ``pieces`` and ``per_group``, when set, split each group into consecutive pieces (their
    lengths, and the pieces of each group) for a two-level sum."""

    ids: torch.Tensor
    lengths: torch.Tensor
    pieces: torch.Tensor | None = None
    per_group: torch.Tensor | None = None

    def sum(self, x: torch.Tensor, dim: int) -> torch.Tensor:
        """Σ over each group's replicas along ``dim`` (size Rc → G). Segmented sums, in a fixed order: deterministic
        on every device (index_add_ adds with atomics on CUDA, in an order that changes from run to run); with one
        level (a CPU) the sums of index_add_ bit for bit (the same sequential order), with two (SUM_PIECE) the sums
        of each group's pieces, summed."""
        dim = dim % x.dim()
        if self.pieces is None:
            return _segment_sum(x, self.lengths, dim)
        return _segment_sum(_segment_sum(x, self.pieces, dim), self.per_group, dim)


def group_ids(start: int, stop: int, R: int, K: int, device: torch.device, first: int = 0,
              G: int | None = None) -> Groups:
    """Groups of the global replica indices [start, stop) among K groups of R replicas: contiguous blocks, sizes
    differing by at most one; numbered from group ``first``, G of them (default: K − first). Split into pieces of
    SUM_PIECE replicas on a device whose segmented sum walks each segment serially."""
    G = K - first if G is None else G
    ids = (np.arange(start, stop, dtype=np.int64) * K) // R - first
    lengths = np.bincount(ids, minlength=G)
    piece = SUM_PIECE.get(device.type, 0)
    as_t = lambda a: torch.as_tensor(np.asarray(a, dtype=np.int64), device=device)  # noqa: E731
    if not piece or lengths.max(initial=0) <= piece:
        return Groups(as_t(ids), as_t(lengths))
    per_group = -(-lengths // piece)
    pieces = [np.minimum(piece, L - piece * np.arange(m)) for L, m in zip(lengths, per_group)]
    return Groups(as_t(ids), as_t(lengths), as_t(np.concatenate(pieces)), as_t(per_group))


class VarianceAccumulator:
    """Per (group, t) count, mean vector and M2 for vectors x_t^{(r)} of dimension d."""

    def __init__(self, K: int, T1: int, d: int, device: torch.device) -> None:
        self.K = K
        self.count = torch.zeros((K, T1), dtype=torch.float64, device=device)
        self.mean = torch.zeros((K, T1, d), dtype=torch.float64, device=device)
        self.m2 = torch.zeros((K, T1), dtype=torch.float64, device=device)

    def update(self, t: int, x: torch.Tensor, gid: Groups, valid: torch.Tensor) -> None:
        """Add the vectors x (R, d) of the replicas with ``valid`` (R,) at step t."""
        self.update_block(t, x[None], gid, valid[None])

    def update_block(self, t0: int, x: torch.Tensor, gid: Groups, valid: torch.Tensor) -> None:
        """Add S steps at once: x (S, R, d) and valid (S, R) at steps t0 … t0 + S − 1. Each step's numbers are those
        of S separate ``update`` calls (the same sums in the same order), in a fixed number of tensor operations."""
        S = x.shape[0]
        x = torch.where(valid[..., None], x.to(torch.float64), 0.0)
        w = valid.to(torch.float64)
        cnt = gid.sum(w, 1)
        s = gid.sum(x, 1)
        mean_b = s / cnt.clamp(min=1.0)[..., None]
        dev = (x - mean_b[:, gid.ids]).square().sum(dim=2) * w
        m2_b = gid.sum(dev, 1)
        steps = slice(t0, t0 + S)
        n_a, mean_a, m2_a = self.count[:, steps].T, self.mean[:, steps].transpose(0, 1), self.m2[:, steps].T
        n = n_a + cnt
        frac = torch.where(n > 0, cnt / n.clamp(min=1.0), 0.0)
        delta = mean_b - mean_a
        self.mean[:, steps] = (mean_a + delta * frac[..., None]).transpose(0, 1)
        self.m2[:, steps] = (m2_a + m2_b + delta.square().sum(dim=2) * n_a * frac).T
        self.count[:, steps] = n.T

    def result(self) -> "VarianceEstimate":
        count = self.count.cpu().numpy()
        mean = self.mean.cpu().numpy()
        m2 = self.m2.cpu().numpy()
        N = count.sum(axis=0)
        overall = (count[:, :, None] * mean).sum(axis=0) / np.maximum(N, 1)[:, None]
        between = (count * ((mean - overall[None]) ** 2).sum(axis=2)).sum(axis=0)
        with np.errstate(invalid="ignore", divide="ignore"):
            var = (m2.sum(axis=0) + between) / (N - 1)
            group_var = np.where(count >= 2, m2 / (count - 1), np.nan)
        return VarianceEstimate(var, *batch_means_se(group_var), N, *group_shape(group_var))


class MeanAccumulator:
    """Per (group, t) count and sum of scalars x_t^{(r)}."""

    def __init__(self, K: int, T1: int, device: torch.device) -> None:
        self.K = K
        self.count = torch.zeros((K, T1), dtype=torch.float64, device=device)
        self.sum = torch.zeros((K, T1), dtype=torch.float64, device=device)

    def update(self, t: int, x: torch.Tensor, gid: Groups, valid: torch.Tensor) -> None:
        """Add the scalars x (R,) of the replicas with ``valid`` at step t."""
        self.update_block(t, x[None], gid, valid[None])

    def update_block(self, t0: int, x: torch.Tensor, gid: Groups, valid: torch.Tensor) -> None:
        """Add S steps at once: x and valid (S, R) at steps t0 … t0 + S − 1 (the numbers of S ``update`` calls)."""
        S = x.shape[0]
        x = torch.where(valid, x.to(torch.float64), 0.0)
        steps = slice(t0, t0 + S)
        self.count[:, steps] += gid.sum(valid.to(torch.float64), 1).T
        self.sum[:, steps] += gid.sum(x, 1).T

    def group_means(self) -> np.ndarray:
        count = self.count.cpu().numpy()
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(count > 0, self.sum.cpu().numpy() / count, np.nan)

    def result(self) -> "VarianceEstimate":
        count = self.count.cpu().numpy()
        N = count.sum(axis=0)
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = self.sum.cpu().numpy().sum(axis=0) / N
        groups = self.group_means()
        se, k_eff = batch_means_se(groups)
        return VarianceEstimate(mean, se, k_eff, N, *group_shape(groups))


@dataclass
class VarianceEstimate:
    """An estimate per t with its batch-means SE, the number of groups behind the SE, the replicas counted, and the
    shape of the group estimates (group_shape: the largest group's share, their skewness)."""

    value: np.ndarray
    se: np.ndarray
    groups: np.ndarray
    count: np.ndarray
    tail_share: np.ndarray | None = None
    skew: np.ndarray | None = None

    def interval(self, level: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
        q = t_quantile(level, np.maximum(self.groups - 1, 1))
        return self.value - q * self.se, self.value + q * self.se

    def curve(self, level: float = 0.95) -> dict[str, np.ndarray]:
        """{"value", "se", "lo", "hi", "tail_share", "skew"}: the arrays of a result's curve (backend/curves.py)."""
        lo, hi = self.interval(level)
        return {"value": self.value, "se": self.se, "lo": lo, "hi": hi, "tail_share": self.tail_share,
                "skew": self.skew}


def batch_means_se(group_values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """SE = sd_k(v_k) / √K over the groups with a finite value (axis 0), and that K."""
    finite = np.isfinite(group_values)
    k = finite.sum(axis=0)
    v = np.where(finite, group_values, 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        m = v.sum(axis=0) / k
        ss = (np.where(finite, group_values - m, 0.0) ** 2).sum(axis=0)
        se = np.sqrt(ss / (k - 1) / k)
    return np.where(k >= 2, se, np.nan), k


def group_shape(group_values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per column (groups on axis 0, finite entries only): ``tail_share`` = max_k |v_k| / Σ_k |v_k|, the share of the
    largest group (≈ 1/K when the tails are light), and ``skew`` = m₃ / m₂^{3/2}, the sample skewness of the K group
    estimates (m_j the central moments over the groups; NaN below 3 groups or when they are all equal)."""
    finite = np.isfinite(group_values)
    k = finite.sum(axis=0)
    v = np.where(finite, group_values, 0.0)
    absg = np.abs(v)
    with np.errstate(invalid="ignore", divide="ignore"):
        share = np.where(k > 0, absg.max(axis=0, initial=0.0) / absg.sum(axis=0), np.nan)
        dev = np.where(finite, v - v.sum(axis=0) / k, 0.0)
        m2, m3 = (dev ** 2).sum(axis=0) / k, (dev ** 3).sum(axis=0) / k
        skew = np.where((k >= 3) & (m2 > 0), m3 / m2 ** 1.5, np.nan)
    return share, skew


def t_quantile(level: float, dof: np.ndarray) -> np.ndarray:
    """Two-sided Student-t quantile t_{dof, (1+level)/2}."""
    from scipy.stats import t as student_t

    return student_t.ppf(0.5 + level / 2, dof)


def z_scores(estimate: np.ndarray, se: np.ndarray, exact: np.ndarray) -> np.ndarray:
    """z = (estimate − exact) / SE; NaN where the SE is zero or missing (e.g. b = n, where both are exactly zero)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        z = (np.asarray(estimate) - np.asarray(exact)) / np.asarray(se)
    return np.where(np.asarray(se) > 0, z, np.nan)


Z_ROUNDING = 1e-9  # relative float64 rounding floor added to the SE in z-scores (deterministic quantities at t = 0)


def exact_z(estimate: np.ndarray, se: np.ndarray, exact: np.ndarray) -> np.ndarray:
    """z against an exact value with SE² enlarged by (Z_ROUNDING · exact)² for float64 rounding (docs/theory.md §4).
    NaN where the exact value is zero (a deterministic quantity: b = n, or var(∇L) at t = 0) and the estimate is
    zero up to rounding, |estimate| ≤ Z_ROUNDING × the largest |exact| along the last axis (the curve's scale)."""
    exact = np.asarray(exact, dtype=np.float64)
    z = z_scores(estimate, np.sqrt(np.asarray(se) ** 2 + (Z_ROUNDING * np.abs(exact)) ** 2), exact)
    finite = np.where(np.isfinite(exact), np.abs(exact), 0.0)
    scale = finite.max(axis=-1, keepdims=True, initial=0.0) if exact.ndim else finite
    rounding = (exact == 0) & (np.abs(np.asarray(estimate)) <= Z_ROUNDING * scale)
    return np.where(rounding, np.nan, z)


# -- flags: estimates whose batch-means SE cannot be trusted (docs/theory.md §4) --------------------------------

HEAVY_TAIL_SHARE = 0.25  # one of the K groups carries more than a quarter of the summed group estimates
FLAG_Z = 4.0  # |z| against a known exact value beyond which the SE is not believed (a false alarm ≈ 1 in 16 000)
TRUSTED_SKEW = 0.1  # skewness of the whole estimate below which its normal (t) interval is trusted


def estimate_flags(curve: dict[str, np.ndarray], exact: np.ndarray | None, replicas: np.ndarray, groups: int
                   ) -> dict[str, np.ndarray]:
    """Per (b, x): whether the estimate of a curve (value, se, tail_share, skew over (B, X)) is unreliable, and how
    many replicas would make its SE trustworthy.

    Flagged (``flag``) when one of the K replica groups carries more than HEAVY_TAIL_SHARE of the summed group
    estimates (``heavy_tail``: a few huge samples dominate), or when an exact value is known and the estimate lies
    more than FLAG_Z standard errors from it (``far``; z by exact_z). Either way the batch-means SE of a strongly
    skewed distribution is too small at this number of replicas: the groups rarely contain the rare large samples.

    ``replicas_needed`` (where flagged): the mean of the K group estimates has skewness γ_G/√K, γ_G the skewness of
    one group estimate (stats.group_shape); a mean's skewness falls like 1/√(replicas), so with R' replicas it is
    γ_G √(R/R') / √K, and the t-interval is trusted (Edgeworth: its tail error is O(skewness)) once that is below
    TRUSTED_SKEW: R' = R γ_G² / (K · TRUSTED_SKEW²). Since a skewness measured from K groups that missed the rare
    samples is too small, R' is at least 10 R: a lower bound, not a guarantee (``replicas`` (B, X) counts the live
    replicas behind each estimate)."""
    value, se = np.asarray(curve["value"], dtype=np.float64), np.asarray(curve["se"], dtype=np.float64)
    share = curve.get("tail_share")
    heavy = (np.nan_to_num(np.asarray(share, dtype=np.float64), nan=0.0) > HEAVY_TAIL_SHARE if share is not None
             else np.zeros(value.shape, dtype=bool))
    z = exact_z(value, se, exact) if exact is not None else np.full(value.shape, np.nan)
    far = np.nan_to_num(np.abs(z), nan=0.0) > FLAG_Z
    flag = heavy | far
    skew = curve.get("skew")
    g2 = np.nan_to_num(np.asarray(skew, dtype=np.float64), nan=0.0) ** 2 if skew is not None else np.zeros(value.shape)
    R = np.asarray(replicas, dtype=np.float64)
    needed = np.maximum(R * g2 / (groups * TRUSTED_SKEW ** 2), 10 * R)
    needed = np.where(flag, nice_ceiling(needed), np.nan)
    return {"flag": flag, "heavy_tail": heavy, "far": far, "z": z, "replicas_needed": needed}


def nice_ceiling(x: np.ndarray) -> np.ndarray:
    """The smallest of 1, 2, 5 × 10^k at or above x (a replica count to suggest)."""
    x = np.maximum(np.asarray(x, dtype=np.float64), 1.0)
    p = 10.0 ** np.floor(np.log10(x))
    out = np.where(x <= p, p, np.where(x <= 2 * p, 2 * p, np.where(x <= 5 * p, 5 * p, 10 * p)))
    return out


def polyfit_inv_b(b: np.ndarray, values: np.ndarray, degree: int, weights: np.ndarray | None = None) -> np.ndarray:
    """Least-squares polynomial in x = 1/b with a constant term (the paper's Figure 2b fit): coefficients, lowest first.

    Solved in a scaled Vandermonde basis (x / max x) for conditioning. ``weights`` multiply the residuals (e.g. 1/SE).
    """
    x = 1.0 / np.asarray(b, dtype=np.float64)
    v = np.asarray(values, dtype=np.float64)
    deg = min(degree, len(x) - 1)
    s = x.max()
    A = np.vander(x / s, deg + 1, increasing=True)
    w = np.ones_like(v) if weights is None else np.asarray(weights, dtype=np.float64)
    coef, *_ = np.linalg.lstsq(A * w[:, None], v * w, rcond=None)
    coef = coef / s ** np.arange(deg + 1)
    return np.concatenate([coef, np.zeros(degree - deg)])


def first_increase(b: np.ndarray, values: np.ndarray, rtol: float = 1e-12) -> int | None:
    """Index j of the first b_j < b_{j+1} with values[j+1] > values[j] (beyond a relative rounding slack), else None."""
    v = np.asarray(values, dtype=np.float64)
    for j in range(len(v) - 1):
        if v[j + 1] > v[j] + rtol * max(abs(v[j]), abs(v[j + 1]), 1e-300):
            return j
    return None


def group_m2(x: torch.Tensor, G: int, consume: bool = False) -> torch.Tensor:
    """M2_j = Σ_{r∈j} ‖x_r − x̄_j‖² (two-pass) for G equal consecutive groups of the rows of x, in x's dtype, returned
    in float64; ``consume=True`` centres x in place (no copy)."""
    v = x.reshape(G, x.shape[0] // G, -1)
    mean = v.mean(dim=1, keepdim=True)
    dev = v.sub_(mean) if consume else v - mean
    return torch.linalg.vector_norm(dev, dim=(1, 2)).to(torch.float64).square()


class GroupStats:
    """Per (group, t) estimates for replicas processed in group-aligned chunks (each group lies in one chunk).

    ``variance`` stores the unbiased within-group variance V̂_k = Σ‖x − x̄_k‖²/(n_k − 1) of vectors; ``mean_block``
    stores group means of scalars. The final estimate is the mean over groups (batch means: unbiased, with
    SE = sd_k / √K); memory is O(K · T) per quantity whatever the number of parameters and replicas.
    """

    def __init__(self, K: int, T1: int) -> None:
        self.K, self.T1 = K, T1
        self.data: dict[str, np.ndarray] = {}
        self.counts = np.zeros((K, T1))

    def _slot(self, name: str) -> np.ndarray:
        if name not in self.data:
            self.data[name] = np.full((self.K, self.T1), np.nan)
        return self.data[name]

    @staticmethod
    def _group_moments(x: torch.Tensor, gid: Groups, valid: torch.Tensor):
        w = valid.to(torch.float64)
        x = torch.where(valid.reshape(-1, *([1] * (x.dim() - 1))), x, 0).to(torch.float64).reshape(len(w), -1)
        cnt = gid.sum(w, 0)
        mean = gid.sum(x, 0) / cnt.clamp(min=1.0)[:, None]
        return x, w, cnt, mean

    def store_variance(self, name: str, slots: list[int], groups: range, m2: torch.Tensor, n: int) -> None:
        """Store V̂_k = M2_k / (n − 1) computed elsewhere: m2 of shape (groups, slots), groups of n replicas each."""
        self._slot(name)[groups.start:groups.stop, slots] = (m2.to(torch.float64) / (n - 1)).cpu().numpy()
        self.counts[groups.start:groups.stop, slots] = n

    def mean_block(self, name: str, x: torch.Tensor, gid: Groups, valid: torch.Tensor, groups: range) -> None:
        """Group means of per-replica scalars x (Rc, T) over the replicas valid at each t (valid: (Rc, T))."""
        cnt = gid.sum(valid.to(torch.float64), 0)
        tot = gid.sum(torch.where(valid, x.to(torch.float64), 0.0), 0)
        cnt_np = cnt.cpu().numpy()
        with np.errstate(invalid="ignore", divide="ignore"):
            v = tot.cpu().numpy() / cnt_np
        v[cnt_np < 1] = np.nan
        self._slot(name)[groups.start:groups.stop, :] = v

    def variance(self, name: str, t: int, x: torch.Tensor, gid: Groups, valid: torch.Tensor,
                 groups: range, all_valid: bool = False, consume: bool = False) -> None:
        """x: (Rc, ...) vectors of the replicas of ``groups`` (gid local, 0..len(groups)−1).

        Fast path (equal group sizes, every replica valid): a two-pass variance on an (G, s, d) view in the input's
        dtype, reduced to float64 — the deviations from the group mean are small, so float32 loses nothing that
        matters here. Otherwise masked float64 scatter sums. ``consume=True`` lets the fast path centre x in place.
        """
        G = len(groups)
        Rc = x.shape[0]
        if all_valid and Rc % G == 0 and bool((gid.lengths == Rc // G).all()):
            self.store_variance(name, [t], groups, group_m2(x, G, consume)[:, None], Rc // G)
            return
        x, w, cnt, mean = self._group_moments(x, gid, valid)
        m2 = gid.sum((x - mean[gid.ids]).square().sum(dim=1) * w, 0)
        with np.errstate(invalid="ignore", divide="ignore"):
            v = (m2 / (cnt - 1)).cpu().numpy()
        v[cnt.cpu().numpy() < 2] = np.nan
        self._slot(name)[groups.start:groups.stop, t] = v
        self.counts[groups.start:groups.stop, t] = cnt.cpu().numpy()

    def result(self, name: str, level: float = 0.95) -> dict[str, np.ndarray]:
        g = self.data[name]
        finite = np.isfinite(g)
        k = finite.sum(axis=0)
        with np.errstate(invalid="ignore", divide="ignore"):
            value = np.where(finite, g, 0.0).sum(axis=0) / k
        se, k = batch_means_se(g)
        q = t_quantile(level, np.maximum(k - 1, 1))
        share, skew = group_shape(g)  # heavy-tail diagnostics (estimate_flags)
        return {"value": value, "se": se, "lo": value - q * se, "hi": value + q * se, "tail_share": share,
                "skew": skew}


def n_groups_equal(R: int, wanted: int = DEFAULT_GROUPS) -> int:
    """The largest K ≤ wanted dividing R with K ≥ 8 (equal groups allow the fast path), else n_groups(R)."""
    for K in range(min(wanted, R // 2), 7, -1):
        if R % K == 0:
            return K
    return n_groups(R, wanted)


def group_ranges(R: int, K: int, max_chunk: int) -> list[range]:
    """Consecutive ranges of whole groups whose replicas number at most ``max_chunk`` (at least one group each)."""
    starts = [(g * R + K - 1) // K for g in range(K + 1)]  # first replica r with r*K//R == g
    out, g0 = [], 0
    while g0 < K:
        g1 = g0 + 1
        while g1 < K and starts[g1 + 1] - starts[g0] <= max_chunk:
            g1 += 1
        out.append(range(g0, g1))
        g0 = g1
    return out


def group_start(g: int, R: int, K: int) -> int:
    return (g * R + K - 1) // K


# -- per-init statistics of replica rows (MLP / sequence: docs/theory.md §4) ------------------------------------

def group_var(x: torch.Tensor, K: int, alive: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Per init k: the unbiased across-replica variance V̂ = Σ‖x − x̄‖²/(n − 1) of (N, d) rows (replicas of init k
    contiguous), and its standard error sd(u)/√n with u_r = n‖x_r − x̄‖²/(n − 1) (V̂ = mean u; delta method, exact
    to O(1/n)). Rows of dead replicas (alive False) are left out, whatever they hold."""
    N = x.shape[0]
    R = N // K
    m = alive.reshape(K, R).to(torch.float64)
    v = torch.where(m[..., None] > 0, x.reshape(K, R, -1).to(torch.float64), 0.0)  # a dead row may hold NaN / inf
    cnt = m.sum(dim=1)
    mean = v.sum(dim=1) / cnt.clamp(min=1)[:, None]
    u = ((v - mean[:, None]) ** 2).sum(dim=2) * (cnt / (cnt - 1).clamp(min=1))[:, None]
    return _mean_and_se(u, m, cnt, minimum=2)


def group_mean(x: torch.Tensor, K: int, alive: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Per init k: the mean of the replicas' scalars x (N,) and its standard error sd/√n."""
    N = x.shape[0]
    v = x.reshape(K, N // K).to(torch.float64)
    m = alive.reshape(K, N // K).to(torch.float64)
    return _mean_and_se(v, m, m.sum(dim=1), minimum=1)


def group_ratio(a: torch.Tensor, b: torch.Tensor, K: int, alive: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Per init k: the ratio of means ā/b̄ of the replicas' scalars (N,) and its delta-method standard error
    sd(u)/√n with u_r = (a_r − (ā/b̄) b_r)/b̄ (exact to O(1/n))."""
    N = a.shape[0]
    A = a.reshape(K, N // K).to(torch.float64)
    B = b.reshape(K, N // K).to(torch.float64)
    m = alive.reshape(K, N // K).to(torch.float64)
    cnt = m.sum(dim=1).clamp(min=1)
    ratio = (torch.where(m > 0, A, 0.0) * m).sum(1) / (torch.where(m > 0, B, 0.0) * m).sum(1)
    u = (A - ratio[:, None] * B) / ((torch.where(m > 0, B, 0.0) * m).sum(1) / cnt)[:, None]
    _, se = _mean_and_se(u, m, m.sum(dim=1), minimum=1)
    ratio = ratio.cpu().numpy()
    ratio[m.sum(dim=1).cpu().numpy() < 1] = np.nan
    return ratio, se


RESOLVED_Z = 2.0  # B_simple is resolved when the debiased ‖∇L‖² lies more than 2 SE above zero


def subsample_noise(sq: torch.Tensor, dots: torch.Tensor, mean: torch.Tensor, K: int, alive: torch.Tensor, n: int,
                    b: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per init k: tr Σ̂, ‖G‖²^, Lemma 1's one-step noise c_b tr Σ̂ and B_simple = tr Σ̂ / ‖G‖²^ (docs/theory.md §3),
    each as (value, SE) with an SE that counts both the replicas and the fixed subsample S of m of the n points.

    Inputs per replica r (N = K·R, replicas of init k contiguous) and point i of S: sq = ‖g_ri‖² (N, m), the subsample
    gradient ḡ_r (N, P) and dots = g_ri · ḡ_r (N, m). With dev_ri = ‖g_ri − ḡ_r‖² = sq − 2 dots + ‖ḡ_r‖²,
      a_r = κ Σ_i dev_ri/(m − 1)  (κ = (n−1)/n: tr Σ̂),    β_r = ‖ḡ_r‖² − c_m a_r  (‖G‖²^),
    A_k, B_k their means over the live replicas, θ_k = A_k/B_k.
    - replica part: sd/√R for A, B (group_mean) and the ratio's delta-method SE (group_ratio);
    - subsample part (delta method over S): each statistic is a smooth function of the sample means over S of ‖g_i‖²
      and g_i, so stat(S) ≈ stat + (1/m) Σ_{i∈S} ψ_i with the influences
        ψ^a_ri = κ m/(m−1) (dev_ri − mean_i dev_ri),   ψ^β_ri = 2 (dots_ri − ‖ḡ_r‖²) − c_m ψ^a_ri,
      averaged over the replicas of init k (Ψ^A_i, Ψ^B_i; Ψ^θ_i = (Ψ^A_i − θ_k Ψ^B_i)/B_k), and for S a uniform
      m-subset without replacement var = (1 − m/n) s²(Ψ)/m, s² the sample variance over i ∈ S (zero at m = n);
    - SE = √(SE_replicas² + var_subsample): the two errors are uncorrelated to first order (given the replicas the
      subsample error has mean zero).
    Every replica of an init at the same weights (epoch 0) has a zero replica part; the subsample part remains."""
    from backend import lemma1

    N, m = sq.shape
    R = N // K
    kappa, c_m = lemma1.population_trace(1.0, n), float(lemma1.noise_factor(m, n))
    cnt = alive.reshape(K, R).to(torch.float64).sum(1).clamp(min=1)
    G = mean.square().sum(1)
    dev = sq - 2 * dots + G[:, None]
    a = lemma1.population_trace(dev.sum(1) / (m - 1), n)
    beta = lemma1.squared_full_gradient(G, a, m, n)
    psi_a = kappa * m / (m - 1) * (dev - dev.mean(1, keepdim=True))
    psi_b = 2 * (dots - G[:, None]) - c_m * psi_a

    def per_init(x: torch.Tensor) -> torch.Tensor:  # mean over each init's live replicas: (N, …) → (K, …)
        ones = [1] * (x.dim() - 1)
        x = torch.where(alive.reshape(N, *ones), x, 0.0)  # a dead replica may hold NaN
        return x.reshape(K, R, *x.shape[1:]).sum(1) / cnt.reshape(K, *ones)

    A, B = per_init(a), per_init(beta)
    theta = A / B
    Psi_a, Psi_b = per_init(psi_a), per_init(psi_b)
    fpc = (1 - m / n) / m

    def sub_var(psi: torch.Tensor) -> np.ndarray:
        return (fpc * psi.var(dim=1, correction=1)).cpu().numpy()

    var_sub = {"trace_sigma": sub_var(Psi_a), "grad_sq": sub_var(Psi_b),
               "b_simple": sub_var((Psi_a - theta[:, None] * Psi_b) / B[:, None])}
    rep = {"trace_sigma": group_mean(a, K, alive), "grad_sq": group_mean(beta, K, alive),
           "b_simple": group_ratio(a, beta, K, alive)}
    out = {name: (value, np.sqrt(se ** 2 + var_sub[name])) for name, (value, se) in rep.items()}
    c_b = float(lemma1.noise_factor(b, n))
    out["noise_one_step"] = (c_b * out["trace_sigma"][0], c_b * out["trace_sigma"][1])
    return out


def _mean_and_se(u: torch.Tensor, m: torch.Tensor, cnt: torch.Tensor, minimum: int) -> tuple[np.ndarray, np.ndarray]:
    u = torch.where(m > 0, u, 0.0)
    mean = (u * m).sum(dim=1) / cnt.clamp(min=1)
    var = (((u - mean[:, None]) ** 2) * m).sum(dim=1) / (cnt - 1).clamp(min=1)
    se = (var / cnt.clamp(min=1)).sqrt()
    mean, se, c = mean.cpu().numpy(), se.cpu().numpy(), cnt.cpu().numpy()
    mean[c < minimum] = np.nan
    se[c < max(minimum, 2)] = np.nan
    return mean, se


# -- summaries over initial weights, conditional on them (docs/theory.md §4) -----------------------------------

def nan_reduce(fn, v: np.ndarray) -> np.ndarray:
    """fn over inits (axis 1), NaN (without a warning) where every init is NaN."""
    out = np.full(v.shape[0], np.nan)
    ok = np.isfinite(v).any(axis=1)
    out[ok] = fn(v[ok], axis=1)
    return out


def median_with_se(values: np.ndarray, se: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per row of (E, K): the median over the finite entries and its SE given those entries' SEs — the SE of the
    middle entry, or half the root sum of squares of the two middle ones for an even count."""
    med, out_se = np.full(values.shape[0], np.nan), np.full(values.shape[0], np.nan)
    for e in range(values.shape[0]):  # E rows of K numbers: a summary, not a hot path
        ok = np.flatnonzero(np.isfinite(values[e]))
        if not ok.size:
            continue
        order = ok[np.argsort(values[e, ok], kind="stable")]
        mid = order[[(len(order) - 1) // 2, len(order) // 2]]
        med[e] = values[e, mid].mean()
        out_se[e] = se[e, mid[0]] if mid[0] == mid[1] else np.hypot(se[e, mid[0]], se[e, mid[1]]) / 2
    return med, out_se


def mean_with_se(values: np.ndarray, se: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per row of (E, K): the mean over the finite entries and its SE sqrt(Σ_k se_k²)/K."""
    ok = np.isfinite(values)
    k = ok.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(ok, values, 0.0).sum(axis=1) / k
        out_se = np.sqrt((np.where(ok, se, 0.0) ** 2).sum(axis=1)) / k
        out_se = np.where(np.isfinite(np.where(ok, se, 0.0)).all(axis=1), out_se, np.nan)
    return np.where(k > 0, mean, np.nan), np.where(k > 0, out_se, np.nan)

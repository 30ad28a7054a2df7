"""Replica statistics with standard errors (docs/theory.md §4), z-scores and polynomial fits.

One per-group interface, GroupMoments: replicas fall into groups (Groups: K contiguous blocks of the replica index,
or one block per init); for every (group, slot) it keeps, in float64, the count, the sum and M2 = Σ‖x − x̄‖², merged
chunk by chunk with the pairwise update of Chan, Golub & LeVeque (stable: never E‖x‖² − ‖E x‖²). Memory is
O(K · slots · d), independent of the number of replicas R. From it:
- pooled variance V̂ = (ΣM2 + between) / (N − 1), unbiased for var(x_t | F_0) = E‖x − E x‖², and pooled mean ΣS / N;
- batch-means SE sd_k(·_k) / √K over the K groups, a 95 % interval ± t_{K−1, 0.975} SE (``batch_means``);
- per group (an init): the mean with its SE sd/√n, and by the same moments of an influence u_r the variance and the
  ratio of means with delta-method SEs (``variance_se``, ``ratio_se``).
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
# one thread to each (segment, lane) and walks the segment serially, so a few thousand threads each wait on
# thousands of dependent loads; pieces of 64 then a sum over each group's pieces keep every thread's walk short. On
# a CPU one pass is faster. The profiles: benchmarks/TIMINGS.md.
SUM_PIECE = {"cpu": 0, "cuda": 64}


def _segment_sum(x: torch.Tensor, lengths: torch.Tensor, dim: int) -> torch.Tensor:
    lengths = lengths.expand(*x.shape[:dim], len(lengths)).contiguous()
    return torch.segment_reduce(x, "sum", lengths=lengths, axis=dim, unsafe=True, initial=0.0)


@dataclass(frozen=True)
class Groups:
    """The statistics groups of a chunk of replicas: ``ids`` (Rc,) the group of each replica, sorted (groups are
    contiguous blocks of the replica index), and ``lengths`` (G,) the replicas of each group in the chunk (0 for a
    group outside it); ``pieces`` and ``per_group``, when set, split each group into consecutive pieces (their
    lengths, and the pieces of each group) for a two-level sum; ``size`` > 0: every group holds ``size`` replicas
    (Groups.blocks), summed as a reshape."""

    ids: torch.Tensor
    lengths: torch.Tensor
    pieces: torch.Tensor | None = None
    per_group: torch.Tensor | None = None
    size: int = 0

    @classmethod
    def blocks(cls, K: int, size: int, device: torch.device) -> "Groups":
        """K groups of ``size`` consecutive replicas each (e.g. the replicas of each init)."""
        ids = torch.arange(K * size, device=device) // size
        return cls(ids, torch.full((K,), size, dtype=torch.int64, device=device), size=size)

    def sum(self, x: torch.Tensor, dim: int) -> torch.Tensor:
        """Σ over each group's replicas along ``dim`` (size Rc → G). Segmented sums, in a fixed order: deterministic
        on every device (index_add_ adds with atomics on CUDA, in an order that changes from run to run); with one
        level (a CPU) the sums of index_add_ bit for bit (the same sequential order), with two (SUM_PIECE) the sums
        of each group's pieces, summed."""
        dim = dim % x.dim()
        if self.size:
            return x.reshape(*x.shape[:dim], -1, self.size, *x.shape[dim + 1:]).sum(dim=dim + 1)
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


@dataclass
class GroupMoments:
    """The one per-group statistics of replicas (docs/theory.md §4): per group k (axis 0) and slot (a step, an
    epoch, …), in float64 on the replicas' device, the count n_k, the sum S_k = Σ_r x_r and M2_k = Σ_r ‖x_r − x̄_k‖²
    (x̄_k = S_k / n_k) over the valid replicas of x (scalars, or vectors on a last axis that M2 sums over). ``sum`` or
    ``m2`` is None where not kept (first moments only; an M2 computed elsewhere, e.g. stats.group_m2).

    Chunks of replicas merge by Chan, Golub & LeVeque (stable: never E‖x‖² − ‖E x‖²); memory O(K · slots · d),
    independent of the number of replicas. From the moments: per group the mean x̄_k with its SE √(M2_k/(n_k − 1)/n_k)
    (``mean_se``) and the unbiased variance V̂_k = M2_k/(n_k − 1) (``variances``); over the groups the pooled mean
    ΣS/N and variance (ΣM2 + Σ n_k‖x̄_k − x̄‖²)/(N − 1), each with the batch-means SE sd_k(·_k)/√K (``batch_means``)."""

    count: torch.Tensor
    sum: torch.Tensor | None = None
    m2: torch.Tensor | None = None

    @classmethod
    def zeros(cls, G: int, slots: int, device: torch.device, d: int | None = None, sums: bool = True,
              second: bool = True) -> "GroupMoments":
        """Empty moments of G groups × ``slots`` (vectors of dimension d, or scalars when d is None)."""
        z = lambda *shape: torch.zeros(shape, dtype=torch.float64, device=device)  # noqa: E731
        return cls(z(G, slots), (z(G, slots) if d is None else z(G, slots, d)) if sums else None,
                   z(G, slots) if second else None)

    @classmethod
    def of(cls, x: torch.Tensor, groups: Groups, valid: torch.Tensor, dim: int = 0, vector: bool = False,
           second: bool = True) -> "GroupMoments":
        """The moments of x over its replicas on axis ``dim`` (``vector``: x's last axis is the vector's), the group
        axis moved to the front; ``valid`` has x's shape without the vector axis, and an invalid entry is left out
        whatever it holds (NaN, inf). Two passes within the chunk: the group means, then the deviations from them."""
        dim = dim % valid.dim()
        xv = torch.where(valid[..., None] if vector else valid, x.to(torch.float64), 0.0)
        w = valid.to(torch.float64)
        cnt = groups.sum(w, dim)
        s = groups.sum(xv, dim)
        m2 = None
        if second:
            n = cnt.clamp(min=1.0)
            dev = (xv - (s / (n[..., None] if vector else n)).index_select(dim, groups.ids)).square()
            m2 = groups.sum((dev.sum(dim=-1) if vector else dev) * w, dim).movedim(dim, 0)
        return cls(cnt.movedim(dim, 0), s.movedim(dim, 0), m2)

    def _mean(self, count: torch.Tensor, total: torch.Tensor) -> torch.Tensor:
        n = count.clamp(min=1.0)
        return total / (n[..., None] if total.dim() > count.dim() else n)

    def merge_(self, other: "GroupMoments", slots: slice = slice(None)) -> None:
        """Add ``other`` (moments of further replicas of the same groups, at ``slots``) in place: counts and sums
        add, M2 = M2_a + M2_b + ‖x̄_b − x̄_a‖² n_a n_b / n (Chan et al.)."""
        n_a, n_b = self.count[:, slots], other.count
        n = n_a + n_b
        if self.m2 is not None:
            frac = torch.where(n > 0, n_b / n.clamp(min=1.0), 0.0)
            delta = (self._mean(n_b, other.sum) - self._mean(n_a, self.sum[:, slots])).square()
            self.m2[:, slots] = self.m2[:, slots] + other.m2 + (delta.sum(dim=-1) if delta.dim() > n.dim()
                                                                  else delta) * n_a * frac
        if self.sum is not None:
            self.sum[:, slots] = self.sum[:, slots] + other.sum
        self.count[:, slots] = n

    def put(self, groups: range, other: "GroupMoments", slots: slice | list[int] | int = slice(None)) -> None:
        """Set the moments of ``groups`` at ``slots`` to ``other``'s (groups computed whole in one chunk)."""
        rows = slice(groups.start, groups.stop)
        for name in ("count", "sum", "m2"):
            mine, theirs = getattr(self, name), getattr(other, name)
            if mine is not None and theirs is not None:
                mine[rows, slots] = theirs.to(torch.float64)

    def means(self) -> np.ndarray:
        """x̄_k per group and slot (NaN without a replica)."""
        count, total = self.count.cpu().numpy(), self.sum.cpu().numpy()
        count = count[..., None] if total.ndim > count.ndim else count
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(count > 0, total / count, np.nan)

    def variances(self) -> np.ndarray:
        """V̂_k = M2_k / (n_k − 1) per group and slot (NaN below two replicas)."""
        count = self.count.cpu().numpy()
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(count >= 2, self.m2.cpu().numpy() / (count - 1), np.nan)

    def mean_se(self, minimum: int = 1) -> tuple[np.ndarray, np.ndarray]:
        """Per group: x̄_k (NaN below ``minimum`` replicas) and its SE √(M2_k/(n_k − 1)/n_k) (NaN below two)."""
        n = self.count.clamp(min=1.0)
        mean = self._mean(self.count, self.sum)
        se = (self.m2 / (self.count - 1).clamp(min=1.0) / n).sqrt()
        mean, se, c = mean.cpu().numpy(), se.cpu().numpy(), self.count.cpu().numpy()
        mean[c < minimum] = np.nan
        se[c < max(minimum, 2)] = np.nan
        return mean, se

    def pooled_mean(self) -> np.ndarray:
        """ΣS / N over the groups (per slot)."""
        N = self.count.cpu().numpy().sum(axis=0)
        with np.errstate(invalid="ignore", divide="ignore"):
            return self.sum.cpu().numpy().sum(axis=0) / N

    def pooled_variance(self) -> np.ndarray:
        """(Σ M2_k + Σ n_k ‖x̄_k − x̄‖²) / (N − 1) over the groups (per slot): unbiased for the replicas' variance."""
        count, total, m2 = self.count.cpu().numpy(), self.sum.cpu().numpy(), self.m2.cpu().numpy()
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = np.where(count[..., None] > 0, total / np.maximum(count, 1)[..., None], 0.0)
        N = count.sum(axis=0)
        overall = (count[..., None] * mean).sum(axis=0) / np.maximum(N, 1)[..., None]
        between = (count * ((mean - overall[None]) ** 2).sum(axis=-1)).sum(axis=0)
        with np.errstate(invalid="ignore", divide="ignore"):
            return (m2.sum(axis=0) + between) / (N - 1)

    def mean_estimate(self) -> "Estimate":
        """The pooled mean with the batch-means SE of the group means."""
        return batch_means(self.means(), self.pooled_mean(), self.count.cpu().numpy().sum(axis=0))

    def variance_estimate(self) -> "Estimate":
        """The pooled variance with the batch-means SE of the group variances V̂_k."""
        return batch_means(self.variances(), self.pooled_variance(), self.count.cpu().numpy().sum(axis=0))


@dataclass
class Estimate:
    """An estimate per slot with its batch-means SE, the number of groups behind the SE, the replicas counted, and
    the shape of the group estimates (group_shape: the largest group's share, their skewness)."""

    value: np.ndarray
    se: np.ndarray
    groups: np.ndarray
    count: np.ndarray | None = None
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


def batch_means(group_values: np.ndarray, value: np.ndarray | None = None, count: np.ndarray | None = None
                ) -> Estimate:
    """Batch means over the groups (axis 0, finite entries): ``value`` (default: the mean of the group values) with
    the SE sd_k(v_k)/√K, that K and the groups' shape (group_shape)."""
    se, k = batch_means_se(group_values)
    if value is None:
        with np.errstate(invalid="ignore", divide="ignore"):
            value = np.where(np.isfinite(group_values), group_values, 0.0).sum(axis=0) / k
    return Estimate(value, se, k, count, *group_shape(group_values))


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


def polyfit_inv_b_se(b: np.ndarray, se: np.ndarray, degree: int) -> np.ndarray:
    """Standard errors of polyfit_inv_b's (unweighted) coefficients, lowest first, when the values are independent
    with standard errors ``se``: the fit is linear in the values, coef = M v, so cov = M diag(se²) Mᵀ."""
    x = 1.0 / np.asarray(b, dtype=np.float64)
    deg = min(degree, len(x) - 1)
    s = x.max()
    M = np.linalg.pinv(np.vander(x / s, deg + 1, increasing=True)) / (s ** np.arange(deg + 1))[:, None]
    out = np.sqrt(((M * np.asarray(se, dtype=np.float64)[None, :]) ** 2).sum(axis=1))
    return np.concatenate([out, np.zeros(degree - deg)])


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


# -- per-group estimates with their SE over the group's replicas (MLP / sequence / torch model: one group per init;
#    docs/theory.md §4) --------------------------------------------------------------------------------------------

def variance_se(x: torch.Tensor, groups: Groups, valid: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Per group k: the unbiased across-replica variance V̂ = Σ‖x − x̄‖²/(n − 1) of (N, d) rows and its SE
    sd(u)/√n with u_r = n‖x_r − x̄‖²/(n − 1) (V̂ = mean u; delta method, exact to O(1/n)): GroupMoments of u.
    Rows of invalid replicas are left out, whatever they hold."""
    first = GroupMoments.of(x, groups, valid, vector=True, second=False)
    cnt = first.count
    mean = first._mean(cnt, first.sum)
    xv = torch.where(valid[:, None], x.to(torch.float64), 0.0)
    u = (xv - mean[groups.ids]).square().sum(dim=1) * (cnt / (cnt - 1).clamp(min=1))[groups.ids]
    return GroupMoments.of(u, groups, valid).mean_se(minimum=2)


def ratio_se(a: torch.Tensor, b: torch.Tensor, groups: Groups, valid: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Per group k: the ratio of means ā/b̄ of the replicas' scalars (N,) and its delta-method SE sd(u)/√n with
    u_r = (a_r − (ā/b̄) b_r)/b̄ (exact to O(1/n)): GroupMoments of u."""
    A = GroupMoments.of(a, groups, valid, second=False)
    B = GroupMoments.of(b, groups, valid, second=False)
    ratio = A.sum / B.sum
    u = (a.to(torch.float64) - ratio[groups.ids] * b.to(torch.float64)) / (B.sum / A.count.clamp(min=1))[groups.ids]
    _, se = GroupMoments.of(u, groups, valid).mean_se()
    ratio = ratio.cpu().numpy()
    ratio[A.count.cpu().numpy() < 1] = np.nan
    return ratio, se


RESOLVED_Z = 2.0  # B_simple is resolved when the debiased ‖∇L‖² lies more than 2 SE above zero
B_SIMPLE_PARTS = ("trace_sigma", "grad_sq")  # subsample_noise's tr Σ̂ and debiased ‖∇L‖², B_simple's two parts


def subsample_noise(sq: torch.Tensor, dots: torch.Tensor, mean: torch.Tensor, groups: Groups, alive: torch.Tensor,
                    n: int, b: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per init k: tr Σ̂, ‖G‖²^, Lemma 1's one-step noise c_b tr Σ̂ and B_simple = tr Σ̂ / ‖G‖²^ (docs/theory.md §3),
    each as (value, SE) with an SE that counts both the replicas and the fixed subsample S of m of the n points.

    Inputs per replica r (``groups``: the inits, e.g. Groups.blocks(K, R)) and point i of S: sq = ‖g_ri‖² (N, m), the subsample
    gradient ḡ_r (N, P) and dots = g_ri · ḡ_r (N, m). With dev_ri = ‖g_ri − ḡ_r‖² = sq − 2 dots + ‖ḡ_r‖²,
      a_r = κ Σ_i dev_ri/(m − 1)  (κ = (n−1)/n: tr Σ̂),    β_r = ‖ḡ_r‖² − c_m a_r  (‖G‖²^),
    A_k, B_k their means over the live replicas, θ_k = A_k/B_k.
    - replica part: sd/√R for A, B (GroupMoments.mean_se) and the ratio's delta-method SE (ratio_se);
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
    kappa, c_m = lemma1.population_trace(1.0, n), float(lemma1.noise_factor(m, n))
    cnt = groups.sum(alive.to(torch.float64), 0).clamp(min=1)
    G = mean.square().sum(1)
    dev = sq - 2 * dots + G[:, None]
    a = lemma1.population_trace(dev.sum(1) / (m - 1), n)
    beta = lemma1.squared_full_gradient(G, a, m, n)
    psi_a = kappa * m / (m - 1) * (dev - dev.mean(1, keepdim=True))
    psi_b = 2 * (dots - G[:, None]) - c_m * psi_a

    def per_init(x: torch.Tensor) -> torch.Tensor:  # mean over each init's live replicas: (N, …) → (K, …)
        ones = [1] * (x.dim() - 1)
        x = torch.where(alive.reshape(N, *ones), x, 0.0)  # a dead replica may hold NaN
        return groups.sum(x, 0) / cnt.reshape(-1, *ones)

    A, B = per_init(a), per_init(beta)
    theta = A / B
    Psi_a, Psi_b = per_init(psi_a), per_init(psi_b)
    fpc = (1 - m / n) / m

    def sub_var(psi: torch.Tensor) -> np.ndarray:
        return (fpc * psi.var(dim=1, correction=1)).cpu().numpy()

    var_sub = {"trace_sigma": sub_var(Psi_a), "grad_sq": sub_var(Psi_b),
               "b_simple": sub_var((Psi_a - theta[:, None] * Psi_b) / B[:, None])}
    rep = {"trace_sigma": GroupMoments.of(a, groups, alive).mean_se(),
           "grad_sq": GroupMoments.of(beta, groups, alive).mean_se(), "b_simple": ratio_se(a, beta, groups, alive)}
    out = {name: (value, np.sqrt(se ** 2 + var_sub[name])) for name, (value, se) in rep.items()}
    c_b = float(lemma1.noise_factor(b, n))
    out["noise_one_step"] = (c_b * out["trace_sigma"][0], c_b * out["trace_sigma"][1])
    return out


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

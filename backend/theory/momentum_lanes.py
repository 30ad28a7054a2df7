"""The advisor's lanes with torch.optim.SGD's momentum, Nesterov and L2 weight decay (docs/theory.md §9, §7): the
time loop of ``backend/theory/paths.py: moment_paths`` on the doubled state z = (w, v), lane by lane its own β.

In the eigenbasis of H (D = Λ + λI diagonal) the step map of §9 is block-diagonal over the eigen-directions: for
direction i, A_i = [[1 − a s_d D_i, −a s_v], [D_i, β]] (heavy ball s_d = 1, s_v = β; Nesterov s_d = 1 + β, s_v = β²)
and the noise enters as E ξ with E = [−a s_d; 1]. So each entry (i, j) of the covariance's four blocks
M_ij = [[V^ww_ij, V^wv_ij], [V^vw_ij, V^vv_ij]] (V^vw = (V^wv)ᵀ) follows the 2×2 map
    M_ij ← A_i M_ij A_jᵀ + c Q_ij E Eᵀ,   Q = Q(V^ww, μ_w) (Lemma 1's covariance, read from the w-block only),
and the means m_w ← (1 − a s_d D) m_w − a s_v m_v + a s_d h̃, m_v ← D m_w + β m_v − h̃. The functionals (E L, var ∇L,
E tr Σ, …) read the w-block only, so they are those of the plain lanes. Cost per lane-step: the plain lane's product
Q(V, μ) plus O(p²) for the four blocks.
"""

from __future__ import annotations

import functools
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np


@functools.cache
def _compiled():
    """The loop compiled by numba (backend/theory/lanes.py: momentum_loop; once, cached on disk like the plain
    lanes' loop)."""
    from backend.theory import lanes

    return lanes.momentum_loop


def warm_up() -> None:
    """Compile both time loops now, the plain lanes' (``paths.warm_up``) and the doubled state's (≈ 4 s each, once
    per install: the Makefile calls this after installing) rather than at a user's first advice."""
    from backend.theory.linreg import LinRegProblem
    from backend.theory.paths import warm_up as plain_warm_up

    plain_warm_up()
    X = np.array([[1.0, 0.5], [0.2, 1.0], [-1.0, 0.3]])
    lane_paths(LinRegProblem(X, np.array([1.0, 0.0, -1.0])), np.zeros(2), np.array([0.1, 0.2]), np.ones(4),
               np.array([0.5, 0.0]), np.array([4, 2]), np.array([4, 2]), [0, 2], 0.1, np.array([0.5, 0.9]))


def run_momentum_lanes(*args) -> None:
    """``backend/theory/lanes.py: momentum_loop`` compiled (arguments as there)."""
    _compiled()(*args)


@dataclass(frozen=True)
class LaneMomentum:
    """The SGD family per lane for ``moment_paths(…, momentum=…)``: β per lane (L,), Nesterov and λ shared."""

    momentum: np.ndarray
    nesterov: bool = False
    weight_decay: float = 0.0

    def run(self, order, X, K, F, lam, lane_scale, shape, cs, hz, rec, grid, target, has_target, p, rec_out, grid_out,
            first_below) -> None:
        """The doubled-state loop on the plain loop's arrays (lanes in ``order``); v_0 = 0, so V^wv = V^vv = 0."""
        beta = np.asarray(self.momentum, dtype=np.float64)[order]
        sd, sv = (1.0 + beta, beta * beta) if self.nesterov else (np.ones_like(beta), beta)
        Y = np.zeros((X.shape[0], 2 * p * p + p))
        Kp, pairs = packed_product(K, p)
        run_momentum_lanes(X, Y, Kp, *pairs, F, lam, beta, sd, sv, float(self.weight_decay), lane_scale, shape, cs,
                           hz, rec, grid, target, has_target, p, rec_out, grid_out, first_below)


def packed_product(K: np.ndarray, p: int) -> tuple[np.ndarray, tuple[np.ndarray, ...]]:
    """K of the plain lanes (rows [vec Z | vec V | m | 1], columns [vec Q | h̃]) on the upper triangles of the
    symmetric Z, V and Q: (Kp, (zi, zj, vi, vj)). The rows of m are zero in K (Q and h̃ do not read m linearly)."""
    q = p + 1
    Q2, P2 = q * q, p * p
    if np.any(K[Q2 + P2:-1]):
        raise ValueError("the rows of the mean in K are expected to be zero")
    zi, zj = np.triu_indices(q)
    vi, vj = np.triu_indices(p)

    def rows(offset: int, m: int, i: np.ndarray, j: np.ndarray) -> np.ndarray:
        block = K[offset:offset + m * m]
        return np.where((i == j)[:, None], block[i * m + j], block[i * m + j] + block[j * m + i])

    Kp = np.concatenate([rows(0, q, zi, zj), rows(Q2, p, vi, vj), K[-1:]], axis=0)
    Kp = np.concatenate([Kp[:, vi * p + vj], Kp[:, P2:]], axis=1)
    return np.ascontiguousarray(Kp), tuple(np.ascontiguousarray(a, dtype=np.int64) for a in (zi, zj, vi, vj))


def lane_paths(problem, w0: np.ndarray, scales: np.ndarray, shape: np.ndarray, c: np.ndarray, horizon: np.ndarray,
               record_at: np.ndarray, grid, target: float | None, momentum: np.ndarray, nesterov: bool = False,
               weight_decay: float = 0.0) -> dict[str, np.ndarray]:
    """``moment_paths`` with β per lane: the plain lanes (β = λ = 0; Nesterov at β = 0 is heavy ball) through the
    plain loop — their numbers bitwise those of a plain advisor — the others on the doubled state, one pass each. The
    two passes run at once where there are two cores (both loops release the GIL; each pass's numbers are those it
    gives alone: the same lanes in the same calls)."""
    from backend.theory.paths import moment_paths

    momentum = np.asarray(momentum, dtype=np.float64)
    plain = (momentum == 0) & (float(weight_decay) == 0)
    jobs = [(idx, None if mask is plain else LaneMomentum(momentum[idx], nesterov, float(weight_decay)))
            for mask in (plain, ~plain) if (idx := np.flatnonzero(mask)).size]

    def run(job: tuple[np.ndarray, LaneMomentum | None]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        idx, opt = job
        return idx, moment_paths(problem, w0, np.asarray(scales)[idx], shape, np.asarray(c)[idx],
                                 np.asarray(horizon)[idx], np.asarray(record_at)[idx], grid, target, momentum=opt)

    if len(jobs) > 1 and len(os.sched_getaffinity(0)) > 1:
        with ThreadPoolExecutor(len(jobs), thread_name_prefix="batchvar-lanes") as pool:
            parts = list(pool.map(run, jobs))
    else:
        parts = [run(job) for job in jobs]
    out = {}
    for key in parts[0][1]:
        first = parts[0][1][key]
        out[key] = np.empty((len(momentum), *first.shape[1:]), dtype=first.dtype)
        for idx, res in parts:
            out[key][idx] = res[key]
    return out

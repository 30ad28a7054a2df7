"""Exact moments of linear-regression SGD along many lanes at once — the batch-size advisor's recursion (paper §3.1;
docs/theory.md §1, §7): lane l has its own step sizes, noise factor and horizon, and the recursion runs in the
eigenbasis of H with every map precomputed as a Kronecker matrix."""

from __future__ import annotations

import functools
from typing import NamedTuple, Sequence

import numpy as np

from backend.theory.linreg import LinRegProblem


def moment_paths(problem: LinRegProblem, w0: np.ndarray, scales: np.ndarray, shape: np.ndarray, c: np.ndarray,
                 horizon: np.ndarray, record_at: np.ndarray | None = None, grid: Sequence[int] = (),
                 target: float | None = None, momentum=None) -> dict[str, np.ndarray]:
    """Exact moments along L lanes of mini-batch SGD: lane l takes the step sizes α_t = ``scales[l]`` · ``shape[t]``
    (one schedule shape, a constant per lane) with noise factor ``c[l]`` for ``horizon[l]`` steps. float64. Memory
    O(L p⁴ + T), whatever the horizon. Returns, per lane:
    - var_g, var_full_grad, loss, noise_scale, hessian_noise_scale at t = ``record_at[l]`` (default: the horizon),
      each (L,);
    - grid_loss, grid_noise_scale, grid_hessian_noise_scale at the steps of ``grid`` (L, G), NaN past the lane's
      horizon;
    - first_below: the first t ≤ horizon with E L(w_t) ≤ ``target`` (−1: none), when a target is given.
    noise_scale = E tr Σ(w_t) / E‖∇L(w_t)‖² (Σ the population covariance of the per-sample gradients): McCandlish et
    al.'s B_simple along the trajectory; hessian_noise_scale = E tr(HΣ(w_t)) / E ∇L(w_t)ᵀH∇L(w_t): their B_noise
    (docs/theory.md §11), both ratios of expectations given F_0.

    The recursion of docs/theory.md §1 in its stable form, run in the eigenbasis of H (A_t = I − α_t H is then
    diagonal, so A V Aᵀ is an elementwise product), with V ↦ (1/n) Σ (x_iᵀVx_i) x_i x_iᵀ and μ ↦ (1/n) Σ r_i² x_i x_iᵀ
    as precomputed Kronecker matrices and lanes retired at their horizon: cost O(Σ_l horizon_l · p⁴). Agrees with
    ``moment_curves`` at every step (tested). Every product here and in the loop sums in a fixed order
    (backend/theory/lanes.py: matmul), not through numpy's BLAS, whose sums follow its thread count: the numbers are
    the same bits whatever OPENBLAS_NUM_THREADS (tests/test_lanes_threads.py); only the p × p eigendecomposition is
    LAPACK's (unthreaded at any p this recursion can hold)."""
    ops = _operators(problem)
    lam, U, he, Kz, Kv, p, q = ops.lam, ops.U, ops.he, ops.Kz, ops.Kv, ops.p, ops.q
    horizon = np.asarray(horizon, dtype=np.int64)
    record_at = horizon if record_at is None else np.asarray(record_at, dtype=np.int64)
    order = np.argsort(-horizon, kind="stable")  # longest horizon first: the active lanes are a prefix
    hz, rec = horizon[order], record_at[order]
    lane_scale = np.asarray(scales, dtype=np.float64)[order]
    shape = np.asarray(shape, dtype=np.float64)
    cs = np.asarray(c, dtype=np.float64)[order]
    L, Gn = len(order), len(grid)
    P2, Q2 = p * p, q * q
    # The state of lane l is one row X[l] = [vec Z | vec V | μ | 1] (Z = z zᵀ, z = [μ; 1], so z is X's last q
    # columns). Everything the recursion needs is linear in it: with K's columns [Q(V, μ) | h̃],
    #   X·K = [Z·Kz + V·Kv | h̃],   W = [vec V | μ] ← D_t ⊙ W + M_t ⊙ (X·K),
    # D_t = [vec(A_t ⊗ A_t) | A_t] (A_t = I − α_t Λ, diagonal here) and M_t = [α_t² c | α_t] per lane: one GEMM and a
    # few elementwise products per step, whatever the number of lanes; E L = X·[lz | lv | 0].
    X = np.zeros((L, Q2 + P2 + q))
    X[:, Q2 + P2:Q2 + P2 + p] = _dot(np.asarray(w0, dtype=np.float64), U)
    X[:, -1] = 1.0
    K = np.zeros((Q2 + P2 + q, P2 + p))
    K[:Q2, :P2], K[Q2:Q2 + P2, :P2], K[-1, P2:] = Kz, Kv, he
    F = _functionals(ops)  # read at recorded and grid steps: E L, var ∇L, E tr Σ, E‖∇L‖², the H-weighted pair
    rec_out = np.full((L, len(F)), np.nan)  # per lane at its recorded step: E L, var ∇L, E tr Σ, E‖∇L‖², the H-weighted
    grid_out = np.full((L, Gn, len(F)), np.nan)
    first_below = np.full(L, -1, dtype=np.int64)
    loop_args = (X, K, F, lam, lane_scale, shape, cs, hz, rec, np.asarray(grid, dtype=np.int64),
                 np.inf if target is None else float(target), target is not None, p, rec_out, grid_out, first_below)
    if momentum is None:
        _run_lanes(*loop_args)
    else:  # the SGD family (backend/theory/momentum_lanes.py: LaneMomentum, docs/theory.md §9): the doubled state
        momentum.run(order, *loop_args)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = {"loss": rec_out[:, 0], "var_full_grad": rec_out[:, 1], "var_g": rec_out[:, 1] + cs * rec_out[:, 2],
               "noise_scale": rec_out[:, 2] / rec_out[:, 3], "grid_loss": grid_out[:, :, 0],
               "grid_noise_scale": grid_out[:, :, 2] / grid_out[:, :, 3], "first_below": first_below,
               "hessian_noise_scale": rec_out[:, 4] / rec_out[:, 5],
               "grid_hessian_noise_scale": grid_out[:, :, 4] / grid_out[:, :, 5]}
    inverse = np.argsort(order)
    return {key: val[inverse] for key, val in out.items()}


class _Operators(NamedTuple):
    """The problem's precomputed maps in the eigenbasis of H = XᵀX/n (moment_paths; docs/theory.md §1): eigenvalues
    ``lam`` and vectors ``U``, h̃ = Uᵀ Xᵀy/n, the Kronecker matrices Kv, Kz of Q(V, μ) = V·Kv + Z·Kz and G (∇L(μ) = G z),
    and the vectors of E L = Z·lz + V·lv, tr HVH = V·hv, E tr Σ = V·sv + Z·sz, E tr(HΣ) = V·sv_h + Z·sz_h."""

    p: int
    q: int
    lam: np.ndarray
    U: np.ndarray
    he: np.ndarray
    G: np.ndarray
    Kv: np.ndarray
    Kz: np.ndarray
    lz: np.ndarray
    lv: np.ndarray
    hv: np.ndarray
    sv: np.ndarray
    sz: np.ndarray
    sv_h: np.ndarray
    sz_h: np.ndarray


def _operators(problem: LinRegProblem) -> _Operators:
    """The maps of the recursion, from the data alone (every product in a fixed order: _dot)."""
    X, y = np.asarray(problem.X, dtype=np.float64), np.asarray(problem.y, dtype=np.float64)
    n, p = X.shape
    q = p + 1
    lam, U = np.linalg.eigh(_dot(X.T, X) / n)
    Xe = _dot(X, U)  # rows x̃_i = Uᵀ x_i
    he = _dot(Xe.T, y) / n
    loss0 = float(_dot(y, y)) / (2 * n)
    outer = (Xe[:, :, None] * Xe[:, None, :]).reshape(n, p * p)  # vec(x̃ x̃ᵀ)
    # With z = [μ; 1] and Z = z zᵀ (vec), everything the recursion needs is linear in vec V and vec Z:
    #   Q(V, μ) = (1/n) Σ (x̃ᵀVx̃) x̃x̃ᵀ − ΛVΛ + (1/n) Σ r_i² x̃x̃ᵀ − ∇L ∇Lᵀ = V·Kv + Z·Kz   (r_i = ũ_iᵀ z, ∇L = G z)
    #   E L = ½ zᵀ [[Λ, −h], [−hᵀ, 2 L_0]] z + ½ tr(Λ V) = Z·lz + V·lv,   tr HVH = V·hv,   E tr Σ = V·sv + Z·sz
    lam_outer = np.outer(lam, lam).reshape(-1)
    fourth = _dot(outer.T, outer) / n  # (1/n) Σ vec(x̃x̃ᵀ) vec(x̃x̃ᵀ)ᵀ
    Kv = fourth - np.diag(lam_outer)
    ue = np.concatenate([Xe, -y[:, None]], axis=1)
    G = np.concatenate([np.diag(lam), -he[:, None]], axis=1)  # ∇L(μ) = G z
    Kz = _dot((ue[:, :, None] * ue[:, None, :]).reshape(n, q * q).T, outer) / n - np.kron(G, G).T
    Mq = np.zeros((q, q))
    Mq[:p, :p], Mq[:p, p], Mq[p, :p], Mq[p, p] = np.diag(lam), -he, -he, 2 * loss0
    lz, lv = Mq.reshape(-1) / 2, np.diag(lam).reshape(-1) / 2
    hv = np.diag(lam * lam).reshape(-1)
    eye = np.eye(p).reshape(-1)
    sv = _dot(fourth, eye) - hv  # tr Q_V(V) = (1/n) Σ (x̃ᵀVx̃)‖x̃‖² − tr ΛVΛ
    sz = _dot(Kz, eye)  # tr Q_m(μ) = Z·sz
    lam_vec = np.diag(lam).reshape(-1)  # tr(Λ Q_V(V)) = (1/n) Σ (x̃ᵀVx̃)(x̃ᵀΛx̃) − tr Λ³V,  tr(Λ Q_m(μ)) = Z·(Kz vec Λ)
    sv_h, sz_h = _dot(fourth, lam_vec) - np.diag(lam ** 3).reshape(-1), _dot(Kz, lam_vec)

    return _Operators(p, q, lam, U, he, G, Kv, Kz, lz, lv, hv, sv, sz, sv_h, sz_h)


def _functionals(ops: _Operators) -> np.ndarray:
    """(6, q² + p² + q): the linear functionals of a lane's state [vec Z | vec V | μ | 1] read at the recorded and grid
    steps — E L, var ∇L = tr HVH, E tr Σ, E‖∇L‖², E tr(HΣ), E ∇LᵀH∇L."""
    q, lam, G = ops.q, ops.lam, ops.G
    lz, lv, hv, sv, sz, sv_h, sz_h = ops.lz, ops.lv, ops.hv, ops.sv, ops.sz, ops.sv_h, ops.sz_h
    Q2 = q * q
    zeros_tail = np.zeros(q)  # μ and the constant 1 enter no functional below

    def on_state(v_part: np.ndarray, z_part: np.ndarray) -> np.ndarray:  # a linear functional of X
        return np.concatenate([z_part, v_part, zeros_tail])

    l_loss = on_state(lv, lz)
    l_var_full = on_state(hv, np.zeros(Q2))  # E‖∇L − E∇L‖² = tr HVH = V·hv
    l_trace = on_state(sv, sz)  # E tr Σ(w_t) = tr Q_V(V) + tr Q_m(μ)
    l_grad2 = on_state(hv, _dot(G.T, G).reshape(-1))  # E‖∇L(w_t)‖² = tr HVH + ‖∇L(μ)‖²
    l_htrace = on_state(sv_h, sz_h)  # E tr(H Σ(w_t))
    l_hgrad2 = on_state(np.diag(lam ** 3).reshape(-1), _dot(_dot(G.T, np.diag(lam)), G).reshape(-1))  # E ∇LᵀH∇L
    return np.stack([l_loss, l_var_full, l_trace, l_grad2, l_htrace, l_hgrad2])


def _dot(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a @ b (1-D or 2-D, float64) with each entry's sum in a fixed order (backend/theory/lanes.py: matmul): the same
    bits whatever OpenBLAS's thread count, which orders numpy's sums."""
    from backend.theory import lanes

    A, B = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    out = lanes.matmul(np.ascontiguousarray(A.reshape(1, -1) if A.ndim == 1 else A),
                       np.ascontiguousarray(B.reshape(-1, 1) if B.ndim == 1 else B))
    return out.reshape(A.shape[:-1] + B.shape[1:])


@functools.cache
def _compiled():
    """The time loop compiled by numba (on first use; the machine code is cached on disk, so later processes load
    it in a fraction of a second): 50 000 sequential steps cost microseconds each instead of numpy's per-call
    overhead (benchmarks/TIMINGS.md). It lives in backend/theory/lanes.py with the momentum lanes' loop and the
    bookkeeping they share, imported here at first use (numba costs ≈ 1 s to import)."""
    from backend.theory import lanes

    return lanes.plain_loop


def _run_lanes(*args) -> None:
    _compiled()(*args)


def warm_up() -> None:
    """Compile the time loop now (≈ 4 s once per install; ``make run`` and ``make test`` call this after installing)
    rather than at a user's first advice."""
    X = np.array([[1.0, 0.5], [0.2, 1.0], [-1.0, 0.3]])
    moment_paths(LinRegProblem(X, np.array([1.0, 0.0, -1.0])), np.zeros(2), np.array([0.1, 0.2]), np.ones(4),
                 np.array([0.5, 0.0]), np.array([4, 2]), grid=[0, 2], target=0.1)


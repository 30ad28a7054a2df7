"""Exact moments of linear-regression SGD along many lanes at once — the batch-size advisor's recursion (paper §3.1;
docs/theory.md §1, §7): lane l has its own step sizes, noise factor and horizon, and the recursion runs in the
eigenbasis of H with every map precomputed as a Kronecker matrix."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from backend.theory.linreg import LinRegProblem


def moment_paths(problem: LinRegProblem, w0: np.ndarray, scales: np.ndarray, shape: np.ndarray, c: np.ndarray,
                 horizon: np.ndarray, record_at: np.ndarray | None = None, grid: Sequence[int] = (),
                 target: float | None = None) -> dict[str, np.ndarray]:
    """Exact moments along L lanes of mini-batch SGD: lane l takes the step sizes α_t = ``scales[l]`` · ``shape[t]``
    (one schedule shape, a constant per lane) with noise factor ``c[l]`` for ``horizon[l]`` steps. float64. Memory
    O(L p⁴ + T), whatever the horizon. Returns, per lane:
    - var_g, var_full_grad, loss, noise_scale at t = ``record_at[l]`` (default: the horizon), each (L,);
    - grid_loss, grid_noise_scale at the steps of ``grid`` (L, G), NaN past the lane's horizon;
    - first_below: the first t ≤ horizon with E L(w_t) ≤ ``target`` (−1: none), when a target is given.
    noise_scale = E tr Σ(w_t) / E‖∇L(w_t)‖² (Σ the population covariance of the per-sample gradients: the exact
    gradient noise scale B_noise of McCandlish et al. along the trajectory).

    The recursion of docs/theory.md §1 in its stable form, run in the eigenbasis of H (A_t = I − α_t H is then
    diagonal, so A V Aᵀ is an elementwise product), with V ↦ (1/n) Σ (x_iᵀVx_i) x_i x_iᵀ and μ ↦ (1/n) Σ r_i² x_i x_iᵀ
    as precomputed Kronecker matrices and lanes retired at their horizon: cost O(Σ_l horizon_l · p⁴). Agrees with
    ``moment_curves`` at every step (tested)."""
    X, y = np.asarray(problem.X, dtype=np.float64), np.asarray(problem.y, dtype=np.float64)
    n, p = X.shape
    q = p + 1
    lam, U = np.linalg.eigh(X.T @ X / n)
    Xe = X @ U  # rows x̃_i = Uᵀ x_i
    he = Xe.T @ y / n
    loss0 = float(y @ y) / (2 * n)
    outer = (Xe[:, :, None] * Xe[:, None, :]).reshape(n, p * p)  # vec(x̃ x̃ᵀ)
    # With z = [μ; 1] and Z = z zᵀ (vec), everything the recursion needs is linear in vec V and vec Z:
    #   Q(V, μ) = (1/n) Σ (x̃ᵀVx̃) x̃x̃ᵀ − ΛVΛ + (1/n) Σ r_i² x̃x̃ᵀ − ∇L ∇Lᵀ = V·Kv + Z·Kz   (r_i = ũ_iᵀ z, ∇L = G z)
    #   E L = ½ zᵀ [[Λ, −h], [−hᵀ, 2 L_0]] z + ½ tr(Λ V) = Z·lz + V·lv,   tr HVH = V·hv,   E tr Σ = V·sv + Z·sz
    lam_outer = np.outer(lam, lam).reshape(-1)
    Kv = outer.T @ outer / n - np.diag(lam_outer)
    ue = np.concatenate([Xe, -y[:, None]], axis=1)
    G = np.concatenate([np.diag(lam), -he[:, None]], axis=1)  # ∇L(μ) = G z
    Kz = (ue[:, :, None] * ue[:, None, :]).reshape(n, q * q).T @ outer / n - np.kron(G, G).T
    Mq = np.zeros((q, q))
    Mq[:p, :p], Mq[:p, p], Mq[p, :p], Mq[p, p] = np.diag(lam), -he, -he, 2 * loss0
    lz, lv = Mq.reshape(-1) / 2, np.diag(lam).reshape(-1) / 2
    hv = np.diag(lam * lam).reshape(-1)
    eye = np.eye(p).reshape(-1)
    sv = (outer.T @ outer / n) @ eye - hv  # tr Q_V(V) = (1/n) Σ (x̃ᵀVx̃)‖x̃‖² − tr ΛVΛ
    sz = Kz @ eye  # tr Q_m(μ) = Z·sz

    horizon = np.asarray(horizon, dtype=np.int64)
    record_at = horizon if record_at is None else np.asarray(record_at, dtype=np.int64)
    order = np.argsort(-horizon, kind="stable")  # longest horizon first: the active lanes are a prefix
    hz, rec = horizon[order], record_at[order]
    lane_scale = np.asarray(scales, dtype=np.float64)[order]
    shape = np.asarray(shape, dtype=np.float64)
    cs = np.asarray(c, dtype=np.float64)[order]
    L, Gn = len(order), len(grid)
    hz_list = hz.tolist()
    grid_index = {int(t): j for j, t in enumerate(grid)}
    z = np.concatenate([np.tile(np.asarray(w0, dtype=np.float64) @ U, (L, 1)), np.ones((L, 1))], axis=1)
    V = np.zeros((L, p * p))
    out = {k: np.full(L, np.nan) for k in ("var_g", "var_full_grad", "loss", "noise_scale")}
    out.update(grid_loss=np.full((L, Gn), np.nan), grid_noise_scale=np.full((L, Gn), np.nan),
               first_below=np.full(L, -1, dtype=np.int64))
    at_step: dict[int, list[int]] = {}
    for k, t in enumerate(rec):
        at_step.setdefault(int(t), []).append(k)
    gsq = G.T @ G  # ‖∇L(μ)‖² = zᵀ GᵀG z

    def outer_z(zk: np.ndarray) -> np.ndarray:
        return (zk[:, :, None] * zk[:, None, :]).reshape(len(zk), -1)

    def moments(zk: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, ...]:
        Z = outer_z(zk)
        var_full = v @ hv
        trace_sigma = v @ sv + Z @ sz  # E tr Σ(w_t) = tr Q_V(V) + tr Q_m(μ)
        return var_full, trace_sigma, trace_sigma / (Z @ gsq.reshape(-1) + var_full), Z @ lz + v @ lv

    active = L
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):  # a diverging lane runs to inf / NaN
        for t in range(int(hz[0]) + 1 if L else 0):
            while active and hz_list[active - 1] < t:
                active -= 1
            if t in at_step:
                ks = np.asarray(at_step[t])
                var_full, trace_sigma, scale, loss = moments(z[ks], V[ks])
                out["var_full_grad"][ks], out["noise_scale"][ks], out["loss"][ks] = var_full, scale, loss
                out["var_g"][ks] = var_full + cs[ks] * trace_sigma
            if t in grid_index:
                _, _, scale, loss = moments(z[:active], V[:active])
                out["grid_loss"][:active, grid_index[t]] = loss
                out["grid_noise_scale"][:active, grid_index[t]] = scale
            zk, v = z[:active], V[:active]
            Z = outer_z(zk)
            if target is not None:
                first = out["first_below"][:active]
                first[(Z @ lz + v @ lv <= target) & (first < 0)] = t
            if t == hz_list[0]:
                break
            k = active if hz_list[active - 1] > t else int(np.count_nonzero(hz[:active] > t))  # lanes taking step t
            a = (lane_scale[:k] * shape[t])[:, None]
            A = 1.0 - a * lam  # (k, p): A_t in the eigenbasis
            V[:k] = v[:k] * (A[:, :, None] * A[:, None, :]).reshape(k, -1) \
                + (a * a) * cs[:k, None] * (v[:k] @ Kv + Z[:k] @ Kz)
            z[:k, :p] = zk[:k, :p] - a * (zk[:k, :p] * lam - he)
    inverse = np.argsort(order)
    return {key: val[inverse] for key, val in out.items()}

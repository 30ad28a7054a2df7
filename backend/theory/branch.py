"""Exact branched runs of linear-regression SGD (docs/theory.md §11): the critical batch size measured as Merrill et
al. (2025) do — from the state at a checkpoint t_c of a reference run with batch B, continue with batch b = k·B and a
constant step size for a fixed number of samples — but on the exact distribution of the state instead of one run.

The state z_t is w_t (plain SGD) or (w_t, v_t) (momentum, Nesterov, weight decay: the doubled state of §9). Given the
batch, z_{t+1} = A z_t + s + E ξ_t with A, s, E affine in the step size a and ξ_t = g_t − ∇L(w_t) of mean 0 and
covariance c_b Σ(w_t) given F_t (Lemma 1), so the mean m and covariance V of z follow
    m' = A m + s,   V' = A V Aᵀ + c_b E Q(V_w, μ) Eᵀ,   Q(V_w, μ) = Q_V(V_w) + Q_m(μ)   (§1, §9),
whatever the distribution before: a branch continues (m, V) at t_c with its own b, a and number of steps, the
optimizer state (the v-block) carried over. Lanes (checkpoint × b × rule) are a leading array dimension.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from backend.theory.linreg import PLAIN, LinRegProblem, SGDParams, step_maps


@dataclass(frozen=True)
class AffineStep:
    """z' = A(a) z + s(a) + E(a) ξ with A(a) = A0 + a A1 (likewise s, E): the one-step maps as functions of a; and
    ``noise`` (q², p²), q = p + 1: vec E Σ(w) = vec E[w̃ w̃ᵀ] · noise, w̃ = [w; 1] (Σ(w) = (1/n) Σ r_i² x_i x_iᵀ −
    ∇L∇Lᵀ is quadratic in w̃: r_i = ũ_iᵀ w̃ with ũ_i = [x_i; −y_i], ∇L = [H | −h] w̃)."""

    A0: np.ndarray
    A1: np.ndarray
    s0: np.ndarray
    s1: np.ndarray
    E0: np.ndarray
    E1: np.ndarray
    noise: np.ndarray

    @property
    def dim(self) -> int:
        return int(self.A0.shape[0])

    def at(self, a: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The maps for the step sizes ``a`` (L,): A (L, d, d), s (L, d), E (L, d, p)."""
        a = np.asarray(a, dtype=np.float64)
        return (self.A0 + a[:, None, None] * self.A1, self.s0 + a[:, None] * self.s1,
                self.E0 + a[:, None, None] * self.E1)


def affine_step(problem: LinRegProblem, opt: SGDParams = PLAIN) -> AffineStep:
    """The maps of one step: plain SGD on z = w (A = I − aH, s = a h, E = −a I), else §9's ``step_maps`` on (w, v)."""
    p, n = problem.p, problem.n
    X = np.asarray(problem.X, dtype=np.float64)
    U = np.concatenate([X, -np.asarray(problem.y, dtype=np.float64)[:, None]], axis=1)  # ũ_i
    Gm = np.concatenate([problem.H, -problem.h[:, None]], axis=1)  # ∇L(w) = Gm w̃
    noise = ((U[:, :, None] * U[:, None, :]).reshape(n, -1).T @ (X[:, :, None] * X[:, None, :]).reshape(n, -1) / n
             - np.kron(Gm, Gm).T)
    if opt.plain:
        eye = np.eye(p)
        return AffineStep(eye, -problem.H, np.zeros(p), problem.h.copy(), np.zeros((p, p)), -eye, noise)
    A0, s0, E0 = step_maps(problem, 0.0, opt)
    A1, s1, E1 = step_maps(problem, 1.0, opt)
    return AffineStep(A0, A1 - A0, s0, s1 - s0, E0, E1 - E0, noise)


def noise_covariance(step: AffineStep, m: np.ndarray, V: np.ndarray) -> np.ndarray:
    """E Σ(w) = Q_V(V_w) + Q_m(μ) over the lanes (the covariance of one uniformly drawn ∇L_i(w), averaged over w),
    as the linear map ``step.noise`` of the second moment E[w̃ w̃ᵀ] = [[V_w + μμᵀ, μ], [μᵀ, 1]]."""
    L, p = len(m), step.E0.shape[1]
    mu = m[:, :p]
    W = np.empty((L, p + 1, p + 1))
    W[:, :p, :p] = V[:, :p, :p] + mu[:, :, None] * mu[:, None, :]
    W[:, :p, p], W[:, p, :p], W[:, p, p] = mu, mu, 1.0
    return (W.reshape(L, -1) @ step.noise).reshape(L, p, p)


def advance(problem: LinRegProblem, step: AffineStep, m: np.ndarray, V: np.ndarray, a: np.ndarray, c: np.ndarray,
            steps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Lane l continues (m[l], V[l]) for ``steps[l]`` steps of constant size a[l] with noise factor c[l] (module doc);
    lanes retire at their horizon (longest first, so the active lanes are a prefix). Returns new (m, V)."""
    steps = np.asarray(steps, dtype=np.int64)
    order = np.argsort(-steps, kind="stable")
    m, V = m[order].copy(), V[order].copy()
    A, s, E = step.at(np.asarray(a, dtype=np.float64)[order])
    c, hz = np.asarray(c, dtype=np.float64)[order], steps[order]
    with np.errstate(over="ignore", invalid="ignore"):
        for t in range(int(hz[0]) if len(hz) else 0):
            k = int(np.count_nonzero(hz > t))  # the lanes still running: a prefix (hz sorted descending)
            Q = noise_covariance(step, m[:k], V[:k])
            V[:k] = A[:k] @ V[:k] @ A[:k].transpose(0, 2, 1) + c[:k, None, None] * (E[:k] @ Q @ E[:k].transpose(0, 2, 1))
            m[:k] = (A[:k] @ m[:k, :, None])[:, :, 0] + s[:k]
    inverse = np.argsort(order)
    return m[inverse], V[inverse]


def reference_states(problem: LinRegProblem, step: AffineStep, w0: np.ndarray, alphas: Sequence[float], c: float,
                     checkpoints: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """The exact (m, V) of the reference run (batch noise factor c, step sizes ``alphas``, v_0 = 0) at each checkpoint:
    arrays (C, d) and (C, d, d), in the order of ``checkpoints``."""
    d = step.dim
    m = np.zeros((1, d))
    m[0, :problem.p] = w0
    V = np.zeros((1, d, d))
    want = {int(t) for t in checkpoints}
    seen: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    with np.errstate(over="ignore", invalid="ignore"):
        for t in range(max(want) + 1):
            if t in want:
                seen[t] = (m[0].copy(), V[0].copy())
            if t == max(want):
                break
            A, s, E = step.at(np.array([alphas[t]]))
            Q = noise_covariance(step, m, V)
            V = A @ V @ A.transpose(0, 2, 1) + c * (E @ Q @ E.transpose(0, 2, 1))
            m = (A @ m[:, :, None])[:, :, 0] + s
    return np.stack([seen[int(t)][0] for t in checkpoints]), np.stack([seen[int(t)][1] for t in checkpoints])


def expected_loss(problem: LinRegProblem, m: np.ndarray, V: np.ndarray) -> np.ndarray:
    """E L(w) = L(μ) + ½ tr(H V_w) over the lanes."""
    p = problem.p
    mu = m[:, :p]
    with np.errstate(over="ignore", invalid="ignore"):  # a diverged lane: inf / nan, named by the caller
        r = mu @ problem.X.T - problem.y
        return (r * r).sum(axis=1) / (2 * problem.n) + 0.5 * np.einsum("ij,lji->l", problem.H, V[:, :p, :p])


def noise_moments(problem: LinRegProblem, step: AffineStep, m: np.ndarray, V: np.ndarray) -> dict[str, np.ndarray]:
    """The four expectations of McCandlish et al.'s noise scales over the lanes (docs/theory.md §11), from the exact
    moments of w: E tr Σ = tr Q_V(V) + tr Q_m(μ); E‖∇L‖² = tr(H V H) + ‖∇L(μ)‖²; E tr(HΣ) = tr(H Q_V(V)) + tr(H Q_m(μ));
    E ∇LᵀH∇L = tr(H³ V) + ∇L(μ)ᵀ H ∇L(μ)."""
    p, H = problem.p, problem.H
    Vw, mu = V[:, :p, :p], m[:, :p]
    S = noise_covariance(step, m, V)
    G = mu @ H - problem.h
    H2 = H @ H
    return {"trace": np.einsum("lii->l", S), "grad2": np.einsum("ij,lji->l", H2, Vw) + (G * G).sum(axis=1),
            "h_trace": np.einsum("ij,lji->l", H, S),
            "h_grad2": np.einsum("ij,lji->l", H2 @ H, Vw) + np.einsum("li,ij,lj->l", G, H, G)}

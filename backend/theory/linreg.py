"""Exact moments of mini-batch SGD on finite-sum linear regression (paper §3.1; docs/theory.md §1).

L(w) = (1/n) Σ ½(x_iᵀw − y_i)², ∇L_i(w) = x_i(x_iᵀw − y_i), g_t = (1/b) Σ_{i∈B_t} ∇L_i(w_t), w_{t+1} = w_t − α_t g_t.
Everything is conditional on F_0 (the initial weights); the only randomness is the choice of the mini-batches.

The noise factor ``c`` carries the batch size:
- without replacement (uniform b-subsets, independent per step): c = c_b = (n − b) / (b (n − 1))  (vanishes at b = n);
- with replacement (b i.i.d. uniform indices): c = 1/b.

Stable form (docs/theory.md §1). With H = XᵀX/n, h = Xᵀy/n, μ_t = E w_t (full-batch GD, independent of b) and
V_t = Cov(w_t | F_0):
    V_0 = 0,  V_{t+1} = A_t V_t A_tᵀ + α_t² c Q(S_t),  A_t = I − α_t H,
    Q(S_t) = Q_V(V_t) + Q_m(μ_t),
    Q_V(V) = (1/n) Σ (x_iᵀ V x_i) x_i x_iᵀ − H V H,          (the positive map Q on the covariance part)
    Q_m(μ) = (1/n) Σ r_i² x_i x_iᵀ − ∇L(μ) ∇L(μ)ᵀ,  r_i = x_iᵀμ − y_i  (Lemma 1's per-sample covariance at μ).
Then  Cov(g_t | F_0) = H V_t H + c Q(S_t)  (law of total variance with Lemma 1), and
    var(g_t | F_0) = tr(H V_t H) + c tr Q(S_t)                  (Corollary 1),
    var(∇L(w_t) | F_0) = tr(H V_t H),   E L(w_t) = L(μ_t) + ½ tr(H V_t).
V_t is a polynomial of degree t in c, so var(g_t | F_0) is a polynomial of degree t + 1 in c, hence in 1/b.

With momentum β, Nesterov and L2 weight decay λ (``SGDParams``; torch.optim.SGD, docs/theory.md §9) the state
z_t = (w_t, v_t) is affine given the batch: with ξ_t = g_t − ∇L(w_t) (mean 0, Cov c Σ(w_t) given F_t, Lemma 1),
    z_{t+1} = A_t z_t + s_t + E_t ξ_t,
so m_t = E z_t follows the b-free recursion m_{t+1} = A_t m_t + s_t and Cov(z_t) = V^z_t follows
    V^z_{t+1} = A_t V^z_t A_tᵀ + c E_t Q(V_t, μ_t) E_tᵀ,   V_t, μ_t the w-blocks,
and the three quantities are the formulas above on the w-block. β = λ = 0 runs the plain recursion (bitwise).

All routines work on float64 arrays and, for exact rational arithmetic, on numpy object arrays of rationals
(``fractions.Fraction`` or FLINT's faster ``fmpq``; see backend.exact).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from fractions import Fraction
from typing import Iterator, Sequence

import numpy as np

from backend.lemma1 import SAMPLERS_WITH_FACTOR, noise_factor, noise_factor_exact  # noqa: F401  (re-exported)

SAMPLERS_WITH_THEORY = SAMPLERS_WITH_FACTOR  # the samplers under which batches are independent across steps


@dataclass
class LinRegProblem:
    """The data of a finite-sum least-squares problem with the constant matrices the recursion needs.

    ``X`` (n × p) already holds the intercept column when there is one. dtype float64, or object (Fractions) for exact work.
    """

    X: np.ndarray
    y: np.ndarray
    H: np.ndarray = field(init=False)
    h: np.ndarray = field(init=False)
    N: np.ndarray = field(init=False)
    _K: np.ndarray | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        X, y = self.X, self.y
        n = X.shape[0]
        self.H = X.T @ X / n
        self.h = X.T @ y / n
        sq = (X * X).sum(axis=1)  # ‖x_i‖²
        self.N = (X.T * sq) @ X / n  # (1/n) Σ ‖x_i‖² x_i x_iᵀ

    @property
    def n(self) -> int:
        return int(self.X.shape[0])

    @property
    def p(self) -> int:
        return int(self.X.shape[1])

    @property
    def exact(self) -> bool:
        return self.X.dtype == object

    # -- the maps of docs/theory.md §1 --------------------------------------------------------------------------------
    def _use_kron(self) -> bool:
        return self.exact or self.p * self.p <= 2 * self.n

    @property
    def K(self) -> np.ndarray:
        """(1/n) Σ vec(x_i x_iᵀ) vec(x_i x_iᵀ)ᵀ, the p² × p² matrix of V ↦ (1/n) Σ (x_iᵀ V x_i) x_i x_iᵀ."""
        if self._K is None:
            n, p = self.X.shape
            outer = (self.X[:, :, None] * self.X[:, None, :]).reshape(n, p * p)
            self._K = outer.T @ outer / n
        return self._K

    def fourth_moment_map(self, V: np.ndarray) -> np.ndarray:
        """(1/n) Σ (x_iᵀ V x_i) x_i x_iᵀ for V of shape (..., p, p)."""
        p = self.p
        if self._use_kron():
            flat = V.reshape(-1, p * p)
            return (flat @ self.K.T).reshape(V.shape)
        X = self.X
        d = ((X @ V) * X).sum(axis=-1)  # (..., n): x_iᵀ V x_i
        return X.T @ (d[..., :, None] * X) / self.n

    def q_cov(self, V: np.ndarray) -> np.ndarray:
        """Q_V(V) = (1/n) Σ (x_iᵀ V x_i) x_i x_iᵀ − H V H  (a positive map)."""
        return self.fourth_moment_map(V) - self.H @ V @ self.H

    def residuals(self, w: np.ndarray) -> np.ndarray:
        return self.X @ w - self.y

    def full_gradient(self, w: np.ndarray) -> np.ndarray:
        """∇L(w) = H w − h."""
        return self.H @ w - self.h

    def loss(self, w: np.ndarray):
        r = self.residuals(w)
        return (r * r).sum() / (2 * self.n)

    def per_sample_covariance(self, w: np.ndarray) -> np.ndarray:
        """Q_m(w) = (1/n) Σ ∇L_i(w)∇L_i(w)ᵀ − ∇L(w)∇L(w)ᵀ: the covariance of one uniformly drawn ∇L_i(w)."""
        r = self.residuals(w)
        g = self.full_gradient(w)
        return (self.X.T * (r * r)) @ self.X / self.n - np.outer(g, g)


def one_step_variance(problem: LinRegProblem, w: np.ndarray, c, B: np.ndarray | None = None):
    """Lemma 1: var(B g_t | F_t) = c_b ( (1/n) Σ ‖B ∇L_i(w_t)‖² − ‖B ∇L(w_t)‖² ), any finite-sum loss.

    ``c`` is the noise factor (c_b, or 1/b with replacement); ``B`` defaults to the identity.
    """
    Qm = problem.per_sample_covariance(w)
    if B is None:
        return c * np.trace(Qm)
    return c * np.trace(B @ Qm @ B.T)


def _scalar(value: int, like: np.ndarray):
    """``value`` in the number type of ``like`` (float64, or the exact type of its entries: Fraction or fmpq)."""
    return type(like.flat[0])(value) if like.dtype == object else float(value)


def _identity(p: int, like: np.ndarray) -> np.ndarray:
    if like.dtype == object:
        eye = np.empty((p, p), dtype=object)
        for i in range(p):
            for j in range(p):
                eye[i, j] = _scalar(int(i == j), like)
        return eye
    return np.eye(p)


def _zeros(shape: tuple[int, ...], like: np.ndarray) -> np.ndarray:
    if like.dtype == object:
        out = np.empty(shape, dtype=object)
        out.fill(_scalar(0, like))
        return out
    return np.zeros(shape)


def _inner(A: np.ndarray, V: np.ndarray):
    """⟨A, V⟩ = Σ A_pq V_pq over the last two axes (A symmetric, so = tr(A V))."""
    return (A * V).sum(axis=(-2, -1))


@dataclass(frozen=True)
class SGDParams:
    """torch.optim.SGD's momentum β ∈ [0, 1), ``nesterov`` and L2 weight decay λ ≥ 0 (dampening 0). Numbers as given:
    Fractions for the exact recursion (converted to the problem's number type), anything real for float64."""

    momentum: object = 0
    nesterov: bool = False
    weight_decay: object = 0

    @property
    def plain(self) -> bool:
        return self.momentum == 0 and self.weight_decay == 0


PLAIN = SGDParams()


def _number(x, like: np.ndarray):
    """x (int, Fraction or float) in the number type of ``like``: exact (fmpq / Fraction) or float."""
    if like.dtype != object:
        return float(x)
    one = like.flat[0]
    if isinstance(one, Fraction):
        return Fraction(x)
    from backend.exact import rational
    return rational(x)


def step_maps(problem: LinRegProblem, a, opt: SGDParams) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(A, s, E) of one step z_{t+1} = A z_t + s + E ξ_t on z = (w, v), step size a (docs/theory.md §9):
    heavy ball  w' = w − a(β v + D w − h + ξ),  v' = β v + D w − h + ξ,  D = H + λI;
    Nesterov    w' = w − a((1 + β)(D w − h + ξ) + β² v),  v' the same."""
    X = problem.X
    p = problem.p
    eye = _identity(p, X)
    beta, lam = _number(opt.momentum, X), _number(opt.weight_decay, X)
    one = _number(1, X)
    D = problem.H + lam * eye
    sd, sv = (one + beta, beta * beta) if opt.nesterov else (one, beta)
    A = _zeros((2 * p, 2 * p), X)
    A[:p, :p] = eye - (a * sd) * D
    A[:p, p:] = -(a * sv) * eye
    A[p:, :p] = D
    A[p:, p:] = beta * eye
    s = np.concatenate([(a * sd) * problem.h, -problem.h])
    E = np.concatenate([-(a * sd) * eye, eye], axis=0)
    return A, s, E


@dataclass
class MomentState:
    """Moments of w_t given F_0 at one step t, for a batch of noise factors ``c`` (leading axis of V)."""

    t: int
    mu: np.ndarray  # E w_t, shape (p,)
    V: np.ndarray  # Cov(w_t), shape (B, p, p)
    Qm: np.ndarray  # Q_m(μ_t), shape (p, p)


def noise_at(c: np.ndarray, t: int) -> np.ndarray:
    """The noise factors of step t: ``c`` is (B,) (one b per lane) or (B, T+1) (a batch-size schedule: c[:, t] is
    that of the b drawing g_t, docs/theory.md §12)."""
    return c[:, t] if c.ndim == 2 else c


def iterate_moments(problem: LinRegProblem, w0: np.ndarray, alphas: Sequence, c: np.ndarray,
                    opt: SGDParams = PLAIN) -> Iterator[MomentState]:
    """Yield the moments of w_t at t = 0, 1, …, len(alphas) (docs/theory.md §1, stable form; with momentum or weight
    decay the doubled state of §9). ``c``: (B,), or (B, T+1) for b varying with t (§12: V_{t+1} takes c_{b_t}).
    Cost O(T · B · p⁴) (or O(T·B·n p²)); the doubled state costs about 8× the products."""
    if not opt.plain:
        yield from _iterate_momentum_moments(problem, w0, alphas, c, opt)
        return
    c = np.asarray(c, dtype=problem.X.dtype)
    p = problem.p
    eye = _identity(p, problem.X)
    mu = np.asarray(w0, dtype=problem.X.dtype)
    V = _zeros((len(c), p, p), problem.X)
    for t in range(len(alphas) + 1):
        Qm = problem.per_sample_covariance(mu)
        yield MomentState(t, mu, V, Qm)
        if t == len(alphas):
            return
        a = alphas[t]
        A = eye - a * problem.H
        Q = problem.q_cov(V) + Qm
        V = A @ V @ A.T + (a * a) * noise_at(c, t)[:, None, None] * Q
        mu = mu - a * problem.full_gradient(mu)


def _iterate_momentum_moments(problem: LinRegProblem, w0: np.ndarray, alphas: Sequence, c: np.ndarray,
                              opt: SGDParams) -> Iterator[MomentState]:
    """The doubled-state recursion (docs/theory.md §9): m = E z, Vz = Cov z, z = (w, v), v_0 = 0; yields the w-blocks."""
    X = problem.X
    c = np.asarray(c, dtype=X.dtype)
    p = problem.p
    m = np.concatenate([np.asarray(w0, dtype=X.dtype), _zeros((p,), X)])
    Vz = _zeros((len(c), 2 * p, 2 * p), X)
    for t in range(len(alphas) + 1):
        mu, V = m[:p], Vz[:, :p, :p]
        Qm = problem.per_sample_covariance(mu)
        yield MomentState(t, mu, V, Qm)
        if t == len(alphas):
            return
        A, s, E = step_maps(problem, alphas[t], opt)
        Q = problem.q_cov(V) + Qm
        Vz = A @ Vz @ A.T + noise_at(c, t)[:, None, None] * (E @ Q @ E.T)
        m = A @ m + s


def gradient_covariance(problem: LinRegProblem, state: MomentState, c: np.ndarray) -> np.ndarray:
    """Cov(g_t | F_0) = H V_t H + c (Q_V(V_t) + Q_m(μ_t)), shape (B, p, p) (law of total variance + Lemma 1)."""
    c = np.asarray(c, dtype=problem.X.dtype)
    H = problem.H
    return H @ state.V @ H + c[:, None, None] * (problem.q_cov(state.V) + state.Qm)


def moment_curves(problem: LinRegProblem, w0: np.ndarray, alphas: Sequence, c: np.ndarray,
                  opt: SGDParams = PLAIN) -> dict[str, np.ndarray]:
    """var(g_t | F_0), var(∇L(w_t) | F_0) and E L(w_t) for t = 0..T and every noise factor in ``c``: arrays (B, T+1),
    in the problem's number type (float64, or exact rationals for an exact problem, ``c`` and ``alphas`` exact too).
    ``c`` (B, T+1): a batch-size schedule per lane (docs/theory.md §12).

    Cost O(T · B · p⁴); T = 2 000 and 21 batch sizes on Graduate Admission take a fraction of a second.
    """
    c = np.asarray(c, dtype=problem.X.dtype)
    H2 = problem.H @ problem.H
    NminusH2 = problem.N - H2
    T = len(alphas)
    out = {k: np.empty((len(c), T + 1), dtype=problem.X.dtype) for k in ("var_g", "var_full_grad", "loss")}
    for s in iterate_moments(problem, w0, alphas, c, opt):
        var_full = _inner(H2, s.V)
        kappa = np.trace(s.Qm)
        out["var_full_grad"][:, s.t] = var_full
        out["var_g"][:, s.t] = var_full + noise_at(c, s.t) * (_inner(NminusH2, s.V) + kappa)
        out["loss"][:, s.t] = problem.loss(s.mu) + _inner(problem.H, s.V) / 2  # / 2: exact for rationals, = 0.5 * in float
    return out


def variance_of_linear_map(problem: LinRegProblem, w0, alphas: Sequence, c: np.ndarray, t: int, B: np.ndarray,
                           opt: SGDParams = PLAIN):
    """Theorem 2: var(B g_t | F_0) = tr(B Cov(g_t | F_0) Bᵀ) for any matrix B, one value per noise factor."""
    for s in iterate_moments(problem, w0, list(alphas)[:t], c, opt):
        pass
    C = gradient_covariance(problem, s, c)
    return np.trace(B @ C @ B.T, axis1=-2, axis2=-1)


def expected_weighted_sum_sq(problem: LinRegProblem, w0, alphas: Sequence, c: np.ndarray, t: int, A: np.ndarray,
                             opt: SGDParams = PLAIN):
    """Theorem 1: E‖Σ_i A_i ∇L_i(w_t)‖² = tr(M S_t Mᵀ), M = Σ_i A_i x_i u_iᵀ, u_i = [x_i; −y_i], S_t = E[z zᵀ], z = [w; 1].

    ``A`` has shape (n, q, p). One value per noise factor.
    """
    X, y = problem.X, problem.y
    U = np.concatenate([X, -y[:, None]], axis=1)  # (n, p+1)
    Ax = np.einsum("iqp,ip->iq", A, X)  # A_i x_i
    M = Ax.T @ U  # (q, p+1)
    for s in iterate_moments(problem, w0, list(alphas)[:t], c, opt):
        pass
    p = problem.p
    out = []
    for V in s.V:
        S = _zeros((p + 1, p + 1), X)
        S[:p, :p] = V + np.outer(s.mu, s.mu)
        S[:p, p] = s.mu
        S[p, :p] = s.mu
        S[p, p] = _scalar(1, X)
        out.append(np.trace(M @ S @ M.T))
    return np.array(out, dtype=X.dtype)


# -- polynomials in the noise factor -----------------------------------------------------------------------------

QUANTITIES = ("var_g", "var_full_grad", "loss")


def polynomial_in_c(problem: LinRegProblem, w0, alphas: Sequence, t: int, opt: SGDParams = PLAIN
                    ) -> dict[str, np.ndarray]:
    """Coefficients β_k (k = 0..t+1) with quantity(t) = Σ_k β_k c^k, for var_g, var_full_grad and loss.

    V_t = Σ_{k=1}^{t} c^k V_t^{(k)}: the recursion runs on the coefficient matrices, the c-term raising the degree by one:
        V^{(k)}_{s+1} = A_s V^{(k)}_s A_sᵀ + α_s² (Q_V(V^{(k−1)}_s) + [k = 1] Q_m(μ_s)).
    var(g_t) then has β_k = tr(H V^{(k)} H) + tr Q_V(V^{(k−1)}) + [k = 1] tr Q_m(μ_t); β_0 = 0 (no constant term).
    Generic in dtype: float64 arrays give float coefficients, object arrays of Fractions give exact rationals.
    Cost O(t² p⁴) operations (plus O(n p⁴) once for the map Q_V in exact mode). With momentum or weight decay the
    same recursion runs on the doubled state's coefficients (docs/theory.md §9), the degree bounds unchanged.
    """
    if not opt.plain:
        return _polynomial_in_c_momentum(problem, w0, alphas, t, opt)
    X = problem.X
    p = problem.p
    eye = _identity(p, X)
    mu = np.asarray(w0, dtype=X.dtype)
    V = _zeros((t + 2, p, p), X)  # V[k] = coefficient of c^k, k = 0..t+1 (V[0] stays 0)
    alphas = list(alphas)
    for s in range(t):
        a = alphas[s]
        A = eye - a * problem.H
        QV = problem.q_cov(V[:-1])
        new = A @ V @ A.T
        new[1:] = new[1:] + (a * a) * QV
        new[1] = new[1] + (a * a) * problem.per_sample_covariance(mu)
        V = new
        mu = mu - a * problem.full_gradient(mu)
    return _coefficients(problem, V, mu)


def _coefficients(problem: LinRegProblem, V: np.ndarray, mu: np.ndarray) -> dict[str, np.ndarray]:
    """The three quantities' coefficients in c from the coefficient matrices V[k] of V_t and the mean μ_t."""
    H2 = problem.H @ problem.H
    var_full = _inner(H2, V)
    trQV = _inner(problem.N, V) - var_full
    var_g = var_full.copy()
    var_g[1:] = var_g[1:] + trQV[:-1]
    var_g[1] = var_g[1] + np.trace(problem.per_sample_covariance(mu))
    loss = _inner(problem.H, V) / 2
    loss[0] = loss[0] + problem.loss(mu)
    return {"var_g": var_g, "var_full_grad": var_full, "loss": loss}


def _polynomial_in_c_momentum(problem: LinRegProblem, w0, alphas: Sequence, t: int, opt: SGDParams
                              ) -> dict[str, np.ndarray]:
    """polynomial_in_c on the doubled state: Vz^{(k)}_{s+1} = A_s Vz^{(k)}_s A_sᵀ + E_s (Q_V(V^{(k−1)}_s)
    + [k = 1] Q_m(μ_s)) E_sᵀ, V^{(k)} the w-block of Vz^{(k)}."""
    X = problem.X
    p = problem.p
    m = np.concatenate([np.asarray(w0, dtype=X.dtype), _zeros((p,), X)])
    Vz = _zeros((t + 2, 2 * p, 2 * p), X)
    alphas = list(alphas)
    for s in range(t):
        A, shift, E = step_maps(problem, alphas[s], opt)
        QV = problem.q_cov(Vz[:-1, :p, :p])
        new = A @ Vz @ A.T
        new[1:] = new[1:] + E @ QV @ E.T
        new[1] = new[1] + E @ problem.per_sample_covariance(m[:p]) @ E.T
        Vz = new
        m = A @ m + shift
    V, mu = Vz[:, :p, :p], m[:p]
    return _coefficients(problem, V, mu)


def c_to_inv_b(coeffs: Sequence, n: int, sampler: str = "without_replacement") -> list:
    """Re-express Σ β_k c^k in the basis (1/b)^k.

    Without replacement c_b = a·(1/b) + d with a = n/(n−1), d = −1/(n−1); with replacement c = 1/b (identity).
    Exact when the coefficients are Fractions.
    """
    coeffs = list(coeffs)
    if sampler == "with_replacement":
        return coeffs
    exact = any(isinstance(x, Fraction) for x in coeffs)
    one = Fraction(1) if exact else 1.0
    a = one * n / (n - 1)
    d = -one / (n - 1)
    out = [one * 0] * len(coeffs)
    power = [one]  # coefficients of (a x + d)^k in x
    for k, beta in enumerate(coeffs):
        if k > 0:
            nxt = [one * 0] * (k + 1)
            for j, v in enumerate(power):
                nxt[j] += v * d
                nxt[j + 1] += v * a
            power = nxt
        for j, v in enumerate(power):
            out[j] += beta * v
    return out


def polynomial_degree(coeffs: Sequence, rtol: float = 1e-12) -> int:
    """Index of the last non-zero coefficient (exactly zero for Fractions; relative to Σ|β| for floats)."""
    coeffs = list(coeffs)
    if not any(isinstance(x, (float, np.floating)) for x in coeffs):
        nz = [k for k, x in enumerate(coeffs) if x != 0]
    else:
        scale = sum(abs(float(x)) for x in coeffs)
        nz = [k for k, x in enumerate(coeffs) if abs(float(x)) > rtol * scale]
    return nz[-1] if nz else 0


def eval_polynomial(coeffs: Sequence, x: np.ndarray | float) -> np.ndarray:
    """Σ_k β_k x^k by Horner's rule (float)."""
    x = np.asarray(x, dtype=np.float64)
    acc = np.zeros_like(x)
    for beta in reversed(list(coeffs)):
        acc = acc * x + float(beta)
    return acc

"""Deep linear teacher–student networks with online Gaussian samples (paper §3.2, B.3; docs/theory.md §2).

Student W_1 (p_1×p), …, W_d (p_d×p_{d−1}); teacher W_1*, …, W_d*. Δ = W_d⋯W_1 − W_d*⋯W_1*, population loss
L = ½‖Δ‖_F². With b fresh samples x ~ N(0, I_p) per step and Σ̂ = (1/b) Σ_j x_j x_jᵀ:
    g_k = P_k Σ̂ R_k,  P_k = (W_d⋯W_{k+1})ᵀ Δ,  R_k = (W_{k−1}⋯W_1)ᵀ,  E[g_k | W] = P_k R_k = ∇_k L.
Gaussian fact: E[Σ̂ A Σ̂] = A + (1/b)(Aᵀ + tr(A) I), hence one-step conditional moments
    E[‖g_k‖² | W] = (1 + 1/b)‖P_k R_k‖² + (1/b)‖P_k‖²‖R_k‖²,  var(g_k | W) = (1/b)(‖P_k R_k‖² + ‖P_k‖²‖R_k‖²).

Exact methods (Theorem 4's polynomial Σ_j β_j b^{−j}, here computed instead of fitted; u = 1/b):
- t = 0, any depth and size: var(g_{0,k}) = (1/b)(‖P_k R_k‖² + ‖P_k‖²‖R_k‖²). Cost O(d p³).
- t = 1, any depth: W_{1,k} is linear in Σ̂_0; P, R are polynomial matrices in the p(p+1)/2 entries of Σ̂_0 (FLINT
  multivariate rationals), E over Σ̂_1 by the fact above and over Σ̂_0 by the Wishart matching rule (backend.theory.
  wishart). Cost grows with the number of monomials, ~C(p(p+1)/2 + D, D) for degree D = 2(2d − 1) in Σ̂_0: two layers
  with p ≤ 4 take seconds; larger cases are refused with a message.
- scalar network (every width 1), t ≤ 3: w_t is a polynomial in s_0, …, s_{t−1} (s = χ²_b/b) and
  E[s^k] = Π_{j<k}(1 + 2j/b). Degree in 1/b: 1, 6, 23, 76 for t = 0…3 (two layers).
Inputs are converted to exact rationals (floats by their exact binary value), so every coefficient is exact for the
given numbers; ``exact_inputs`` only decides whether they are printed as fractions.

With torch.optim.SGD's momentum β, Nesterov and weight decay λ (docs/theory.md §8; the velocity starts at 0, so
v_1 = d_0 = g_0 + λ W_0): the first step is W_1 = W_0 − α_0 s (g_0 + λ W_0) with s = 1 (heavy ball: w_1 is plain
SGD's when λ = 0) or s = 1 + β (Nesterov) — still linear in Σ̂_0, so exact t = 1 holds with α_0 s and the shrink
1 − α_0 s λ (``sgd_first_step``); the scalar network carries the velocity through its polynomial recursion.
"""

from __future__ import annotations

from fractions import Fraction
from math import comb
from typing import Sequence

import flint
import numpy as np

from backend.errors import TooExpensive
from backend.quantities import LOSS, VAR_G, per_layer  # the curves' names, declared once
from backend.theory.wishart import chi2_moment, sigma_moment

MAX_MONOMIALS = 60_000  # refuse exact t = 1 beyond this many monomials (minutes of work)
SCALAR_MAX_T = 3


# -- numeric helpers (float64 or any number type in numpy arrays) --------------------------------------------------

def products(Ws: Sequence[np.ndarray], Ts: Sequence[np.ndarray]):
    """Δ and (P_k, R_k) for every layer k = 1..d (index k−1)."""
    d = len(Ws)
    p = Ws[0].shape[1]

    def eye(n, like):
        out = np.zeros((n, n), dtype=like.dtype)
        for i in range(n):
            out[i, i] = like.flat[0] * 0 + 1 if like.dtype == object else 1.0
        return out

    def chain(mats, n_in, like):
        out = eye(n_in, like)
        for M in mats:
            out = M @ out
        return out

    delta = chain(Ws, p, Ws[0]) - chain(Ts, p, Ts[0])
    PR = []
    for k in range(d):
        above = Ws[k + 1:]
        P = chain(above, Ws[k].shape[0], Ws[0]).T @ delta
        R = chain(Ws[:k], p, Ws[0]).T
        PR.append((P, R))
    return delta, PR


def fro2(M):
    return (M * M).sum()


def variance_t0(Ws, Ts) -> list:
    """var(g_{0,k} | F_0) · b = ‖P_k R_k‖² + ‖P_k‖²‖R_k‖² for each layer (so var = β_1 / b)."""
    _, PR = products(Ws, Ts)
    return [fro2(P @ R) + fro2(P) * fro2(R) for P, R in PR]


# -- exact polynomials -------------------------------------------------------------------------------------------

def _q(x) -> flint.fmpq:
    f = x if isinstance(x, Fraction) else Fraction(x)
    return flint.fmpq(f.numerator, f.denominator)


def _to_fmpq_matrix(M: np.ndarray, ctx) -> np.ndarray:
    out = np.empty(M.shape, dtype=object)
    for idx, v in np.ndenumerate(M):
        out[idx] = ctx.constant(_q(v))
    return out


def _poly_add(a: list, b: list) -> list:
    n = max(len(a), len(b))
    return [(a[i] if i < len(a) else 0) + (b[i] if i < len(b) else 0) for i in range(n)]


def _poly_mul(a: list, b: list) -> list:
    out = [Fraction(0)] * (len(a) + len(b) - 1)
    for i, x in enumerate(a):
        if x:
            for j, y in enumerate(b):
                out[i + j] += x * y
    return out


def _trim(a: list) -> list:
    a = list(a)
    while len(a) > 1 and a[-1] == 0:
        a.pop()
    return a


class _Expect:
    """E over Σ̂_0 of a FLINT polynomial in its upper-triangle entries, as a coefficient list in u = 1/b."""

    def __init__(self, p: int, scalar: bool = False) -> None:
        self.pairs = [(i, j) for i in range(p) for j in range(i, p)]

    def __call__(self, poly) -> list[Fraction]:
        total: list[Fraction] = [Fraction(0)]
        for monom, coeff in poly.terms():
            factors = []
            for var, e in enumerate(monom):
                factors += [self.pairs[var]] * e
            mom = sigma_moment(factors)
            c = Fraction(int(coeff.p), int(coeff.q))
            total = _poly_add(total, [c * m for m in mom])
        return total


def _estimated_monomials(p: int, depth: int) -> int:
    nvars = p * (p + 1) // 2
    degree = 2 * (2 * depth - 1)
    return comb(nvars + degree, degree)


def sgd_first_step(alpha, momentum=0, nesterov: bool = False, weight_decay=0) -> tuple[Fraction, Fraction]:
    """(a, c) with W_1 = c W_0 − a g_0 for torch.optim.SGD's first step (v_0 = 0, so v_1 = d_0 = g_0 + λ W_0; the
    step is v_1, or d_0 + β v_1 = (1 + β) d_0 with Nesterov): a = α_0 s, c = 1 − a λ, s = 1 + β if Nesterov else 1."""
    a = Fraction(alpha) * (1 + Fraction(momentum) if nesterov else 1)
    return a, 1 - a * Fraction(weight_decay)


def exact_t1(Ws, Ts, alpha, momentum=0, nesterov: bool = False, weight_decay=0) -> dict[str, list[Fraction]]:
    """Exact var(g_{1,k} | F_0) for every layer, their sum, and E L(W_1), as coefficient lists in u = 1/b.

    W_{1,k} = c W_k − a P_k Σ̂_0 R_k (plain SGD: c = 1, a = α; the SGD family: sgd_first_step) is linear in the
    entries of Σ̂_0; then
        var(g_{1,k}) = E_0[(1 + u)‖P R‖² + u‖P‖²‖R‖²] − ‖E_0[P R]‖²  (P, R at W_1),
    with E_0 by the Wishart matching rule. Refuses (TooExpensive) when the expansion would have more than
    MAX_MONOMIALS monomials.
    """
    p = Ws[0].shape[1]
    d = len(Ws)
    est = _estimated_monomials(p, d)
    if est > MAX_MONOMIALS:
        raise TooExpensive("dims", f"exact t = 1 for input dimension p = {p} and depth {d} would expand about "
                                   f"{est:,} monomials (minutes or more); it is offered up to {MAX_MONOMIALS:,}. "
                                   "Use p ≤ 4 for two layers, or rely on the replica estimate and the fit.")
    names = tuple(f"s{i}_{j}" for i in range(p) for j in range(i, p))
    ctx = flint.fmpq_mpoly_ctx.get(names, "lex")
    gens = ctx.gens()
    S = np.empty((p, p), dtype=object)
    k = 0
    for i in range(p):
        for j in range(i, p):
            S[i, j] = S[j, i] = gens[k]
            k += 1
    W = [_to_fmpq_matrix(np.asarray(M, dtype=object), ctx) for M in Ws]
    T = [_to_fmpq_matrix(np.asarray(M, dtype=object), ctx) for M in Ts]
    step, shrink = sgd_first_step(alpha, momentum, nesterov, weight_decay)
    a = np.empty((), dtype=object)
    a[()] = ctx.constant(_q(step))  # a 0-d holder: numpy must not iterate the polynomial
    _, PR = products(W, T)
    if shrink != 1:  # weight decay: the first step shrinks the weights
        c = np.empty((), dtype=object)
        c[()] = ctx.constant(_q(shrink))
        W = [M * c for M in W]
    W1 = [W[k] - (P @ S @ R) * a for k, (P, R) in enumerate(PR)]
    delta1, PR1 = products(W1, T)
    E = _Expect(p)
    u = [Fraction(0), Fraction(1)]
    one_plus_u = [Fraction(1), Fraction(1)]
    out: dict[str, list[Fraction]] = {}
    total: list[Fraction] = [Fraction(0)]
    for k, (P, R) in enumerate(PR1):
        G = P @ R
        second = _poly_add(_poly_mul(one_plus_u, E(fro2(G))), _poly_mul(u, E(fro2(P) * fro2(R))))
        mean_sq: list[Fraction] = [Fraction(0)]
        for entry in G.flat:
            m = E(entry)
            mean_sq = _poly_add(mean_sq, _poly_mul(m, m))
        var = _trim(_poly_add(second, [-c for c in mean_sq]))
        out[per_layer(VAR_G, k + 1)] = var
        total = _poly_add(total, var)
    out[VAR_G] = _trim(total)
    out[LOSS] = _trim([c / 2 for c in E(fro2(delta1))])
    return out


def exact_scalar(ws: Sequence, ts: Sequence, alphas: Sequence, t: int, momentum=0, nesterov: bool = False,
                 weight_decay=0) -> dict[str, list[Fraction]]:
    """Scalar network (all widths 1): exact var(g_{t,k} | F_0), their sum and E L(w_t) in u = 1/b, for t ≤ 3.

    w_t is a polynomial in s_0..s_{t−1} (s_i = χ²_b/b, independent); g_{t,k} = c_k s_t with c_k = (Π_{j≠k} w_j) Δ,
    so var = (1 + 2u) E[c_k²] − E[c_k]², with E[s^m] = Π_{j<m}(1 + 2j u). With torch.optim.SGD's momentum β,
    Nesterov and weight decay λ the velocity is a polynomial too: d = c_k s + λ w_k, v ← β v + d (v_0 = 0),
    w_k ← w_k − α (v, or d + β v with Nesterov); g_t stays the data loss's c_k s_t.
    """
    if t > SCALAR_MAX_T:
        raise TooExpensive("t", f"the exact scalar network is offered for t ≤ {SCALAR_MAX_T} (degree 76 in 1/b at "
                                "t = 3; the expansion grows about threefold in degree per step)")
    d = len(ws)
    names = tuple(f"s{i}" for i in range(max(t, 1)))
    ctx = flint.fmpq_mpoly_ctx.get(names, "lex")
    gens = ctx.gens()
    w = [ctx.constant(_q(x)) for x in ws]
    target = _q(1)
    for x in ts:
        target *= _q(x)
    target = ctx.constant(target)

    def grads(w):
        prod = ctx.constant(1)
        for x in w:
            prod = prod * x
        delta = prod - target
        cs = []
        for k in range(d):
            others = ctx.constant(1)
            for j, x in enumerate(w):
                if j != k:
                    others = others * x
            cs.append(others * delta)
        return cs, delta

    beta, lam = ctx.constant(_q(momentum)), ctx.constant(_q(weight_decay))
    v = [ctx.constant(0)] * d
    for step in range(t):
        cs, _ = grads(w)
        a = ctx.constant(_q(alphas[step]))
        if not momentum and not weight_decay:  # plain SGD
            w = [w[k] - a * cs[k] * gens[step] for k in range(d)]
            continue
        dd = [cs[k] * gens[step] + lam * w[k] for k in range(d)]
        v = [beta * v[k] + dd[k] for k in range(d)]
        w = [w[k] - a * ((dd[k] + beta * v[k]) if nesterov else v[k]) for k in range(d)]
    cs, delta = grads(w)
    moments: dict[int, list[Fraction]] = {}

    def expect(poly) -> list[Fraction]:
        total: list[Fraction] = [Fraction(0)]
        for monom, coeff in poly.terms():
            term = [Fraction(int(coeff.p), int(coeff.q))]
            for e in monom[:t]:
                if e:
                    if e not in moments:
                        moments[e] = chi2_moment(e)
                    term = _poly_mul(term, moments[e])
            total = _poly_add(total, term)
        return total

    out: dict[str, list[Fraction]] = {}
    total: list[Fraction] = [Fraction(0)]
    for k, c in enumerate(cs):
        m = expect(c)
        var = _trim(_poly_add(_poly_mul([Fraction(1), Fraction(2)], expect(c * c)), [-x for x in _poly_mul(m, m)]))
        out[per_layer(VAR_G, k + 1)] = var
        total = _poly_add(total, var)
    out[VAR_G] = _trim(total)
    out[LOSS] = _trim([x / 2 for x in expect(delta * delta)])
    return out


def exact_t0(Ws, Ts) -> dict[str, list[Fraction]]:
    """t = 0 as coefficient lists in u (exact rationals from the given numbers)."""
    Wq = [np.vectorize(lambda v: Fraction(v) if not isinstance(v, Fraction) else v, otypes=[object])(
        np.asarray(M, dtype=object)) for M in Ws]
    Tq = [np.vectorize(lambda v: Fraction(v) if not isinstance(v, Fraction) else v, otypes=[object])(
        np.asarray(M, dtype=object)) for M in Ts]
    betas = variance_t0(Wq, Tq)
    delta, _ = products(Wq, Tq)
    out = {per_layer(VAR_G, k + 1): [Fraction(0), Fraction(beta)] for k, beta in enumerate(betas)}
    out[VAR_G] = [Fraction(0), sum(Fraction(x) for x in betas)]
    out[LOSS] = [Fraction(fro2(delta)) / 2]
    return out


def decrease_threshold(betas: Sequence) -> float:
    """Theorem 5's b_0: the largest real root of β_1 b^{r−1} + 2β_2 b^{r−2} + … + rβ_r (0 if none or if it is < 0).

    d/db Σ_j β_j b^{−j} = −b^{−r−1} Σ_j j β_j b^{r−j}, so with β_1 > 0 the polynomial is decreasing for every b > b_0.
    Exact coefficients use FLINT's certified complex roots; floats use numpy.
    """
    betas = list(betas)
    r = len(betas) - 1
    while r > 0 and betas[r] == 0:
        r -= 1
    if r <= 1:
        return 0.0
    coeffs = [j * betas[j] for j in range(1, r + 1)]  # coefficient of b^{r−j}
    if all(isinstance(c, Fraction) for c in coeffs):
        poly = flint.fmpq_poly([_q(c) for c in reversed(coeffs)])
        roots = [complex(z) for z, _m in poly.complex_roots()]
    else:
        roots = list(np.roots([float(c) for c in coeffs]))
    real = [z.real for z in roots if abs(z.imag) <= 1e-9 * max(1.0, abs(z))]
    return max([0.0] + real)

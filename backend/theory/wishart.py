"""Moments of the sample covariance Σ̂ = M/b, M = Σ_{j=1}^{b} x_j x_jᵀ, x_j ~ N(0, I_p), as exact polynomials in u = 1/b.

Real-Wishart matching rule (docs/theory.md §2): for index slots (a_1, c_1, …, a_K, c_K)
    E[Π_k M_{a_k c_k}] = Σ over perfect matchings P of the 2K slots with equal indices in each pair of b^{comp(P)},
where comp(P) counts the connected components (cycles) of the graph on the K factors whose edges are the pairs of P.
Hence E[Π_k Σ̂_{a_k c_k}] = Σ_P u^{K − comp(P)}: a polynomial in u of degree ≤ K − 1.

Cost: the matchings are enumerated with index pruning (only slots with equal indices are paired), and results are
memoised per monomial up to a relabelling of the indices; degree-6 monomials in p ≤ 4 take micro- to milliseconds.
"""

from __future__ import annotations

import itertools
from fractions import Fraction
from functools import lru_cache

SymPair = tuple[int, int]


def _canonical(pairs: tuple[SymPair, ...], p: int) -> tuple[SymPair, ...]:
    """Smallest sorted pair list over all relabellings of the indices that occur (a multigraph canonical form)."""
    used = sorted({i for pr in pairs for i in pr})
    best = None
    for perm in itertools.permutations(range(len(used))):
        relabel = dict(zip(used, perm))
        cand = tuple(sorted(tuple(sorted((relabel[a], relabel[c]))) for a, c in pairs))
        if best is None or cand < best:
            best = cand
    return best or ()


@lru_cache(maxsize=200_000)
def _matching_counts(pairs: tuple[SymPair, ...]) -> tuple[tuple[int, int], ...]:
    """{comp: number of matchings} for E[Π M_{a c}] over the factor list ``pairs`` (canonical form)."""
    K = len(pairs)
    slots = [(k, idx) for k, pr in enumerate(pairs) for idx in pr]
    parent = list(range(K))

    def find(x: int) -> int:
        while parent[x] != x:
            x = parent[x]
        return x

    counts: dict[int, int] = {}

    def rec(free: list[int]) -> None:
        if not free:
            roots = {find(k) for k in range(K)}
            counts[len(roots)] = counts.get(len(roots), 0) + 1
            return
        s0 = free[0]
        for j in range(1, len(free)):
            s1 = free[j]
            if slots[s0][1] != slots[s1][1]:
                continue
            f0, f1 = find(slots[s0][0]), find(slots[s1][0])
            changed = f0 != f1
            if changed:
                parent[f1] = f0
            rec(free[1:j] + free[j + 1:])
            if changed:
                parent[f1] = f1

    rec(list(range(2 * K)))
    return tuple(sorted(counts.items()))


def sigma_moment(pairs: list[SymPair]) -> list[int]:
    """E[Π_k Σ̂_{a_k c_k}] as integer coefficients of u^0, u^1, …, u^{K−1} (u = 1/b)."""
    K = len(pairs)
    if K == 0:
        return [1]
    p = 1 + max(max(pr) for pr in pairs)
    out = [0] * K
    for comp, n in _matching_counts(_canonical(tuple(pairs), p)):
        out[K - comp] += n
    return out


def chi2_moment(k: int) -> list[Fraction]:
    """E[(χ²_b / b)^k] = Π_{j<k} (1 + 2j u): coefficients in u (the scalar case p = 1)."""
    poly = [Fraction(1)]
    for j in range(k):
        nxt = [Fraction(0)] * (len(poly) + 1)
        for i, c in enumerate(poly):
            nxt[i] += c
            nxt[i + 1] += 2 * j * c
        poly = nxt
    return poly

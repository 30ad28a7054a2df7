"""Independent reference for the linear-regression theory: enumerate every sequence of mini-batches.

Plain SGD in exact rational arithmetic, no shared code with backend.theory: E over all equally likely sequences.
"""

from __future__ import annotations

import itertools
from fractions import Fraction


def _grad(X, y, w, batch):
    p = len(w)
    g = [Fraction(0)] * p
    for i in batch:
        r = sum(X[i][j] * w[j] for j in range(p)) - y[i]
        for j in range(p):
            g[j] += X[i][j] * r
    return [gj / len(batch) for gj in g]


def _loss(X, y, w):
    n, p = len(X), len(w)
    return sum((sum(X[i][j] * w[j] for j in range(p)) - y[i]) ** 2 for i in range(n)) / (2 * n)


def enumerate_states(X, y, w0, alphas, b, t, sampler="without_replacement"):
    """Every equally likely (w_t, B_t) pair after t updates (a list; each entry has the same probability)."""
    n = len(X)
    if sampler == "without_replacement":
        batches = list(itertools.combinations(range(n), b))
    else:
        batches = list(itertools.product(range(n), repeat=b))
    out = []
    for seq in itertools.product(batches, repeat=t + 1):
        w = list(w0)
        for s in range(t):
            g = _grad(X, y, w, seq[s])
            w = [wj - alphas[s] * gj for wj, gj in zip(w, g)]
        out.append((w, seq[t]))
    return out


def gradient(X, y, w, batch):
    return _grad(X, y, w, batch)


def enumerate_moments(X, y, w0, alphas, b, t, sampler="without_replacement"):
    """Exact var(g_t|F_0), var(∇L(w_t)|F_0) and E L(w_t) by enumerating every batch sequence of t + 1 steps."""
    n = len(X)
    if sampler == "without_replacement":
        batches = list(itertools.combinations(range(n), b))
    else:
        batches = list(itertools.product(range(n), repeat=b))
    full = list(range(n))
    sums = {"g": None, "gg": Fraction(0), "f": None, "ff": Fraction(0), "loss": Fraction(0)}
    count = 0
    for seq in itertools.product(batches, repeat=t + 1):
        w = list(w0)
        for s in range(t):
            g = _grad(X, y, w, seq[s])
            w = [wj - alphas[s] * gj for wj, gj in zip(w, g)]
        g = _grad(X, y, w, seq[t])
        f = _grad(X, y, w, full)
        for name, vec in (("g", g), ("f", f)):
            sums[name] = vec if sums[name] is None else [a + c for a, c in zip(sums[name], vec)]
            sums[name + name] += sum(v * v for v in vec)
        sums["loss"] += _loss(X, y, w)
        count += 1
    out = {}
    for name, key in (("g", "var_g"), ("f", "var_full_grad")):
        mean = [v / count for v in sums[name]]
        out[key] = sums[name + name] / count - sum(m * m for m in mean)
    out["loss"] = sums["loss"] / count
    return out

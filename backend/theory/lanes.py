"""The advisor's time loops, compiled by numba (docs/theory.md §1, §7, §9): the plain lanes of
``backend/theory/paths.py: moment_paths`` and the doubled state (w, v) of ``backend/theory/momentum_lanes.py``, with
the bookkeeping both share (``observe``: lanes retired at their horizon, Z_t = z zᵀ, the functionals recorded at each
lane's step, at the grid steps and against the target). Imported only when a loop is first needed (numba costs
≈ 1 s to import); the machine code is cached on disk (``cache=True``), and the loops and the helper they call live
in this one file so that an edit to any of them invalidates that cache. Every function releases the GIL
(``nogil=True``): ``lane_paths`` runs the two loops at once in two threads."""

from __future__ import annotations

import numba
import numpy as np

_compile = numba.njit(cache=True, nogil=True)


@_compile
def matmul(A, B):
    """A B (2-D float64), each entry summed over r = 0, 1, … in order with one rounded multiply and one rounded add a
    term (numba contracts nothing into an FMA without fastmath): the same bits whatever the thread count. numpy's
    ``@`` (OpenBLAS) orders its sums by the number of threads, so the advisor's last bits followed
    OPENBLAS_NUM_THREADS; every product of the recursion goes through here instead."""
    m, n = A.shape
    k = B.shape[1]
    out = np.zeros((m, k))
    i = 0
    while i + 4 <= m:  # four rows at once share the loads of B (each entry's sum keeps its order)
        o0, o1, o2, o3 = out[i], out[i + 1], out[i + 2], out[i + 3]
        for r in range(n):
            a0, a1, a2, a3 = A[i, r], A[i + 1, r], A[i + 2, r], A[i + 3, r]
            for j in range(k):
                b = B[r, j]
                o0[j] += a0 * b
                o1[j] += a1 * b
                o2[j] += a2 * b
                o3[j] += a3 * b
        i += 4
    for i in range(i, m):
        o = out[i]
        for r in range(n):
            a = A[i, r]
            for j in range(k):
                o[j] += a * B[r, j]
    return out


@_compile
def observe(X, F, hz, rec, grid, t, book, target, has_target, q, rec_out, grid_out, first_below):
    """Step t's bookkeeping of either loop, on X (L, q² + … + q) the lanes' states [vec Z | … | z] sorted by horizon
    (longest first, so the active lanes are a prefix): retire the lanes past their horizon; Z_t = z zᵀ from
    z = X[l, −q:] (the last column the constant 1); the functionals F · X[l] (E L, var ∇L, E tr Σ, E‖∇L‖², the
    H-weighted pair) into rec_out[l] at t = rec[l], into grid_out[l, gi] at the grid step, and first_below[l] = t at
    the first E L ≤ target. book = [active, gi]: the lanes still running and the next grid index, updated. Returns
    k: the k first lanes take step t (0 at the last step, hz[0])."""
    width = X.shape[1]
    active, gi = book[0], book[1]
    while active > 0 and hz[active - 1] < t:
        active -= 1
    for l in range(active):  # Z_t = z zᵀ from z = X[l, −q:]
        for i in range(q):
            zi = X[l, width - q + i]
            for j in range(q):
                X[l, i * q + j] = zi * X[l, width - q + j]
    on_grid = gi < len(grid) and grid[gi] == t
    for l in range(active):
        if rec[l] == t or on_grid or has_target:
            nf = len(F) if rec[l] == t or on_grid else 1  # the target reads E L = F[0] · X[l] alone
            vals = np.zeros(len(F))  # F · X[l], summed in order (see matmul)
            for f in range(nf):
                for r in range(width):
                    vals[f] += F[f, r] * X[l, r]
            if rec[l] == t:
                rec_out[l, :] = vals
            if on_grid:
                grid_out[l, gi, :] = vals
            if has_target and first_below[l] < 0 and vals[0] <= target:
                first_below[l] = t
    if on_grid:
        gi += 1
    book[0], book[1] = active, gi
    k = active
    while k > 0 and hz[k - 1] <= t:  # lanes taking step t
        k -= 1
    return k


@_compile
def plain_loop(X, K, F, lam, lane_scale, shape, cs, hz, rec, grid, target, has_target, p, rec_out, grid_out,
               first_below):
    """The time loop of moment_paths: X (L, q² + p² + q) the lanes' states [vec Z | vec V | μ | 1], sorted by horizon
    (longest first); K = [Kz; Kv; 0; (0 | h̃)]; F the functionals read at each lane's recorded step (rec_out) and at
    the grid steps (grid_out) by ``observe``. Per step, V_{t+1} = A V A + α² c Q(V, μ), μ_{t+1} = A μ + α h̃
    (A = I − α Λ)."""
    q = p + 1
    Q2, P2 = q * q, p * p
    A = np.empty(p)
    book = np.array([X.shape[0], 0])  # for observe: the active lanes (a prefix), the next grid step's index
    for t in range(hz[0] + 1 if len(hz) else 0):
        k = observe(X, F, hz, rec, grid, t, book, target, has_target, q, rec_out, grid_out, first_below)
        if k == 0:
            continue
        R = matmul(X[:k], K)  # [Q(V_t, μ_t) | h̃] per lane
        for l in range(k):
            a = lane_scale[l] * shape[t]
            noise = a * a * cs[l]
            for i in range(p):
                A[i] = 1.0 - a * lam[i]
            for i in range(p):  # V_{t+1} = A V A + α² c Q(V, μ)
                for j in range(p):
                    c = Q2 + i * p + j
                    X[l, c] = X[l, c] * A[i] * A[j] + noise * R[l, i * p + j]
            for i in range(p):  # μ_{t+1} = A μ + α h̃
                c = Q2 + P2 + i
                X[l, c] = X[l, c] * A[i] + a * R[l, P2 + i]


@_compile
def momentum_loop(X, Y, Kp, zi, zj, vi, vj, F, lam, beta, sd, sv, weight_decay, lane_scale, shape, cs, hz, rec, grid,
                  target, has_target, p, rec_out, grid_out, first_below):
    """The doubled state's time loop (backend/theory/momentum_lanes.py; docs/theory.md §9): X (L, q² + p² + q) each
    lane's [vec Z | vec V^ww | m_w | 1] as in the plain loop (sorted by horizon, longest first); Y (L, 2p² + p):
    [vec V^wv | vec V^vv | m_v]; β, s_d, s_v per lane; F and the outputs as the plain loop's (``observe``). Z and
    V^ww are symmetric, so the product Q(V^ww, m_w) is taken on their upper triangles (pairs (zi, zj), (vi, vj)):
    Xp = [Z_{i≤j} | V_{i≤j} | 1] times Kp = K with the rows of (i, j) and (j, i) added and the columns of Q's upper
    triangle and h̃ — a third of the plain product's arithmetic."""
    q = p + 1
    Q2, P2 = q * q, p * p
    nz, nv = len(zi), len(vi)
    Xp = np.empty((X.shape[0], nz + nv + 1))
    Xp[:, -1] = 1.0
    Qf = np.empty(P2)
    a11 = np.empty(p)
    D = np.empty(p)
    ww = np.empty(P2)
    wv = np.empty(P2)
    vv = np.empty(P2)
    for i in range(p):
        D[i] = lam[i] + weight_decay
    book = np.array([X.shape[0], 0])  # for observe: the active lanes (a prefix), the next grid step's index
    for t in range(hz[0] + 1 if len(hz) else 0):
        k = observe(X, F, hz, rec, grid, t, book, target, has_target, q, rec_out, grid_out, first_below)
        if k == 0:
            continue
        for l in range(k):
            for e in range(nz):
                Xp[l, e] = X[l, zi[e] * q + zj[e]]
            for e in range(nv):
                Xp[l, nz + e] = X[l, Q2 + vi[e] * p + vj[e]]
        R = matmul(Xp[:k], Kp)  # [Q(V^ww_t, m_w)_{i≤j} | h̃] per lane
        for l in range(k):
            for e in range(nv):
                Qf[vi[e] * p + vj[e]] = R[l, e]
                Qf[vj[e] * p + vi[e]] = R[l, e]
            a = lane_scale[l] * shape[t]
            b = beta[l]
            ad, a12 = a * sd[l], -a * sv[l]
            for i in range(p):
                a11[i] = 1.0 - ad * D[i]
            for i in range(p):
                for j in range(p):
                    e = i * p + j
                    qn = cs[l] * Qf[e]
                    vww, vwv, vvw, vvv = X[l, Q2 + e], Y[l, e], Y[l, j * p + i], Y[l, P2 + e]
                    # rows of A_i M_ij: (r1, r2) for w, (s1, s2) for v; then times A_jᵀ
                    r1, r2 = a11[i] * vww + a12 * vvw, a11[i] * vwv + a12 * vvv
                    s1, s2 = D[i] * vww + b * vvw, D[i] * vwv + b * vvv
                    ww[e] = r1 * a11[j] + r2 * a12 + ad * ad * qn
                    wv[e] = r1 * D[j] + r2 * b - ad * qn
                    vv[e] = s1 * D[j] + s2 * b + qn
            for e in range(P2):
                X[l, Q2 + e] = ww[e]
                Y[l, e] = wv[e]
                Y[l, P2 + e] = vv[e]
            for i in range(p):
                mw, mv, h = X[l, Q2 + P2 + i], Y[l, 2 * P2 + i], R[l, nv + i]
                X[l, Q2 + P2 + i] = a11[i] * mw + a12 * mv + ad * h
                Y[l, 2 * P2 + i] = D[i] * mw + b * mv - h

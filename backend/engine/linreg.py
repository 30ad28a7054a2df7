"""SGD replicas for finite-sum linear regression, vectorised over replicas (paper §3.1).

All R replicas start from the same w_0; replica r draws its own mini-batches. Per step and per replica:
    g_t = (1/b) Σ_{i∈B_t} x_i (x_iᵀ w_t − y_i)                      (or, for a complement draw,
        = (1/b) ( n ∇L(w_t) − Σ_{i∉B_t} x_i (x_iᵀ w_t − y_i) )    cost O(min(b, n − b) p)),
    ∇L(w_t) = H w_t − h,  L(w_t) = ½ w_tᵀ H w_t − hᵀ w_t + ½ yᵀy/n,
    Lemma 1's one-step variance  var(g_t | F_t) = c (z_tᵀ P z_t − ‖∇L(w_t)‖²),  P = (1/n) Σ ‖x_i‖² u_i u_iᵀ, z = [w; 1],
and w_{t+1} = w_t − α_t g_t. Statistics stream into group accumulators (backend.stats); replicas run in chunks so memory
does not grow with R. A replica whose gradient or loss becomes non-finite is dropped from that step on and reported
(also once its loss exceeds DIVERGENCE_LOSS, long before float64 overflows).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from backend.engine.samplers import make_sampler
from backend.engine.runner import DIVERGENCE_LOSS, Divergence, DivergenceLog, check_cancel, chunks, report
from backend.stats import MeanAccumulator, VarianceAccumulator, group_ids, n_groups

CHUNK_ELEMENTS = 8_000_000  # gathered batch elements (replicas × k × p) per chunk


@dataclass
class ReplicaResult:
    """Estimates per t for one batch size: value, se, lo, hi arrays; plus divergence bookkeeping."""

    curves: dict[str, dict[str, np.ndarray]]
    finite_count: np.ndarray  # replicas still finite at each t
    diverged_at: int | None  # first step at which some replica became non-finite
    diverged_replicas: int
    groups: int
    extra: dict = field(default_factory=dict)


def seed_for(seed: int, *keys: int) -> int:
    """A 63-bit seed derived from (seed, keys...) by numpy's SeedSequence (independent streams per b and chunk)."""
    return int(np.random.SeedSequence([seed, *keys]).generate_state(2, dtype=np.uint64)[0] >> np.uint64(1))


def chunk_size(R: int, b: int, n: int, p: int) -> int:
    k = max(1, min(b, n - b))
    return int(max(2, min(R, CHUNK_ELEMENTS // (k * (p + 1)))))


def run_replicas(
    X: np.ndarray,
    y: np.ndarray,
    w0: np.ndarray,
    alphas: list[float],
    b: int,
    R: int,
    sampler: str,
    seed: int,
    device: torch.device,
    c: float | None,
    progress: Callable[[int], None] | None = None,
    cancel=None,
    dtype: torch.dtype = torch.float64,
) -> ReplicaResult:
    """Run R replicas for T = len(alphas) updates; statistics at t = 0..T. ``c`` enables the Rao–Blackwellised estimate."""
    n, p = X.shape
    T1 = len(alphas) + 1
    Xt = torch.as_tensor(X, dtype=dtype, device=device)
    yt = torch.as_tensor(y, dtype=dtype, device=device)
    H = Xt.T @ Xt / n
    h = Xt.T @ yt / n
    half_yy = float((y @ y) / (2 * n))
    U = torch.cat([Xt, -yt[:, None]], dim=1)
    P = (U.T * (Xt * Xt).sum(dim=1)) @ U / n  # (1/n) Σ ‖x_i‖² u_i u_iᵀ
    K = n_groups(R)
    acc_g = VarianceAccumulator(K, T1, p, device)
    acc_f = VarianceAccumulator(K, T1, p, device)
    acc_loss = MeanAccumulator(K, T1, device)
    acc_cond = MeanAccumulator(K, T1, device) if c is not None else None
    finite = torch.zeros(T1, dtype=torch.float64, device=device)
    diverged = DivergenceLog()
    w_init = torch.as_tensor(np.asarray(w0, dtype=np.float64), dtype=dtype, device=device)
    for chunk in chunks(R, chunk_size(R, b, n, p)):
        start, stop, Rc = chunk.start, chunk.stop, chunk.size
        gen = torch.Generator(device=device)
        gen.manual_seed(seed_for(seed, b, chunk.number))
        draw_batch = make_sampler(sampler, n, b, Rc, gen, device)
        gid = group_ids(start, stop, R, K, device)
        W = w_init.expand(Rc, p).clone()
        div = Divergence(Rc, device)
        for t in range(T1):
            check_cancel(cancel)
            draw = draw_batch.draw()
            XB, yB = Xt[draw.idx], yt[draw.idx]  # (Rc, k, p), (Rc, k)
            r = torch.einsum("rkp,rp->rk", XB, W) - yB
            part = torch.einsum("rkp,rk->rp", XB, r)
            full = W @ H - h
            g = part / b if draw.include else (n * full - part) / b
            loss = 0.5 * ((W @ H) * W).sum(dim=1) - W @ h + half_yy
            ok = torch.isfinite(g).all(dim=1) & (loss.abs() <= DIVERGENCE_LOSS) & torch.isfinite(full).all(dim=1)
            div.update(ok, t)
            alive = div.alive
            acc_g.update(t, g, gid, alive)
            acc_f.update(t, full, gid, alive)
            acc_loss.update(t, loss, gid, alive)
            if acc_cond is not None:
                Z = torch.cat([W, torch.ones((Rc, 1), dtype=dtype, device=device)], dim=1)
                cond = c * (((Z @ P) * Z).sum(dim=1) - full.square().sum(dim=1))
                acc_cond.update(t, cond, gid, alive)
            finite[t] += alive.sum()
            if t < T1 - 1:
                W = torch.where(alive[:, None], W - alphas[t] * g, W)
            report(progress, Rc)
        diverged.add(div)
    curves = {}
    for name, est in (("var_g", acc_g.result()), ("var_full_grad", acc_f.result()), ("loss", acc_loss.result())):
        lo, hi = est.interval()
        curves[name] = {"value": est.value, "se": est.se, "lo": lo, "hi": hi}
    if acc_cond is not None:
        # Rao–Blackwellised: mean_r var(g_t | F_t^{(r)}) + sample variance_r of E[g_t | F_t^{(r)}] = ∇L(w_t^{(r)}).
        from backend.stats import batch_means_se, t_quantile

        fcount = acc_f.count.cpu().numpy()
        with np.errstate(invalid="ignore", divide="ignore"):
            group_var_f = np.where(fcount >= 2, acc_f.m2.cpu().numpy() / (fcount - 1), np.nan)
        groups_rb = acc_cond.group_means() + group_var_f
        se, k = batch_means_se(groups_rb)
        value = acc_cond.result().value + curves["var_full_grad"]["value"]
        q = t_quantile(0.95, np.maximum(k - 1, 1))
        curves["var_g_rb"] = {"value": value, "se": se, "lo": value - q * se, "hi": value + q * se}
    return ReplicaResult(
        curves=curves,
        finite_count=finite.cpu().numpy().astype(np.int64),
        diverged_at=diverged.first,
        diverged_replicas=diverged.count,
        groups=K,
    )


def estimate_cost(R: int, T: int, b: int, n: int, p: int) -> dict[str, float]:
    """Rough memory (bytes) and time (seconds, 2 CPU cores) of one batch size's run, for the resource guard."""
    k = max(1, min(b, n - b))
    Rc = chunk_size(R, b, n, p)
    K = n_groups(R)
    memory = 8.0 * (Rc * k * (p + 2) * 3 + 2 * K * (T + 1) * (p + 2))
    chunks = math.ceil(R / Rc)
    time_s = chunks * (T + 1) * (6e-4 + 3e-9 * Rc * k * p * 4 + 2e-5 * math.log2(max(k, 2)) * Rc / 100)
    return {"memory_bytes": memory, "seconds": time_s, "flops": 8.0 * R * (T + 1) * k * (p + 2),
            "steps": float(chunks * (T + 1))}

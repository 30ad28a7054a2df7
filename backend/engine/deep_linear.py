"""SGD replicas for deep linear teacher–student networks on fresh Gaussian samples (paper §3.2).

Layers are batched tensors (R, p_k, p_{k−1}); each replica draws its own Σ̂_t = (1/b) Σ_j x_j x_jᵀ every step:
- Bartlett (b ≥ p): bΣ̂ = L Lᵀ, L lower triangular, L_ii = √χ²_{b−i+1}, L_ij ~ N(0, 1) for i > j — O(p³) per replica,
  independent of b;
- direct (b < p): X (b × p) standard normal, Σ̂ = XᵀX / b.
Per step: g_k = P_k Σ̂ R_k, the population gradient ∇_k L = P_k R_k, L = ½‖Δ‖², and the closed-form conditional
variance var(g_k | W) = (1/b)(‖P_k R_k‖² + ‖P_k‖²‖R_k‖²) for the Rao–Blackwellised estimator. Replicas run in
chunks of whole statistics groups, so per-step group statistics are final and memory is O(K·T), not O(T·R·params).
A replica whose loss exceeds DIVERGENCE_LOSS or turns non-finite is dropped from that step on and reported.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from backend.engine.linreg import seed_for
from backend.errors import Cancelled
from backend.stats import GroupStats, group_ranges, group_start, n_groups_equal

DIVERGENCE_LOSS = 1e30
CHUNK_ELEMENTS = 40_000_000  # replicas × (params + p²) per chunk


@dataclass
class DeepResult:
    curves: dict[str, dict[str, np.ndarray]]
    finite_count: np.ndarray
    diverged_at: int | None
    diverged_replicas: int
    groups: int


class SigmaSampler:
    """Σ̂ for R replicas: Bartlett when b ≥ p (cost independent of b), direct otherwise (or when forced)."""

    def __init__(self, p: int, b: int, R: int, seed: int, device: torch.device, dtype: torch.dtype,
                 method: str = "auto") -> None:
        self.p, self.b, self.R, self.device, self.dtype = p, b, R, device, dtype
        self.method = ("bartlett" if b >= p else "direct") if method == "auto" else method
        self.gen = torch.Generator(device=device)
        self.gen.manual_seed(seed)
        self.np_rng = np.random.default_rng(seed)
        self.df = self.b - np.arange(p)  # χ² degrees of freedom b − i + 1 for i = 1..p

    def draw_factor(self) -> torch.Tensor:
        """Z of shape (R, m, p), m = min(b, p), with Σ̂ = ZᵀZ / b: the samples themselves (direct) or Lᵀ (Bartlett).
        Gradients are then computed like backpropagation on m pseudo-samples: O(m · params), never O(b · params)."""
        p, b, R = self.p, self.b, self.R
        if self.method == "direct":
            return torch.randn((R, b, p), generator=self.gen, device=self.device, dtype=self.dtype)
        L = torch.randn((R, p, p), generator=self.gen, device=self.device, dtype=self.dtype).tril(-1)
        chi = torch.as_tensor(np.sqrt(self.np_rng.chisquare(self.df, size=(R, p))), dtype=self.dtype,
                              device=self.device)
        L = L + torch.diag_embed(chi)
        return L.transpose(1, 2)

    def draw(self) -> torch.Tensor:
        Z = self.draw_factor()
        return Z.transpose(1, 2) @ Z / self.b


def _backprop(Ws: list[torch.Tensor], T_prod: torch.Tensor, Z: torch.Tensor):
    """Activations and back-propagated errors on the rows of Z (Σ̂ = ZᵀZ/b):
    a_0 = Z, a_k = a_{k−1} W_kᵀ, e = a_d − Z T*ᵀ (= Z Δᵀ), δ_d = e, δ_{k−1} = δ_k W_k; then g_k = δ_kᵀ a_{k−1} / b
    = P_k Σ̂ R_k. Cost O(m · params) with m = min(b, p) rows, never O(b · params)."""
    acts = [Z]
    for W in Ws:
        acts.append(acts[-1] @ W.transpose(1, 2))
    err = acts[-1] - Z @ T_prod.transpose(-1, -2)
    deltas = [None] * len(Ws)
    delta = err
    for k in range(len(Ws) - 1, -1, -1):
        deltas[k] = delta
        if k > 0:
            delta = delta @ Ws[k]
    return acts, deltas, err


def _stochastic_grads(Ws: list[torch.Tensor], T_prod: torch.Tensor, Z: torch.Tensor, b: int) -> list[torch.Tensor]:
    """g_k = P_k Σ̂ R_k for every layer (materialised: the recorded steps need them for the statistics)."""
    acts, deltas, _ = _backprop(Ws, T_prod, Z)
    return [deltas[k].transpose(1, 2) @ acts[k] / b for k in range(len(Ws))]


def recorded_steps(T: int, every: int) -> list[int]:
    """t = 0, every, 2·every, …, and always T."""
    return sorted(set(range(0, T + 1, max(1, every))) | {T})


def _forward(Ws: list[torch.Tensor], T_prod: torch.Tensor):
    """Δ, and P_k, R_k for every layer (batched over replicas); R_1 = I is returned as None (never multiplied)."""
    prefix = [None, Ws[0]]
    for W in Ws[1:]:
        prefix.append(W @ prefix[-1])
    delta = prefix[-1] - T_prod
    Ps = [None] * len(Ws)
    P = delta
    for k in range(len(Ws) - 1, -1, -1):
        Ps[k] = P
        if k > 0:
            P = Ws[k].transpose(1, 2) @ P
    Rs = [None if k == 0 else prefix[k].transpose(1, 2) for k in range(len(Ws))]
    return delta, Ps, Rs


def run_replicas(W0: list[np.ndarray], T: list[np.ndarray], alphas: list[float], b: int, R: int, seed: int,
                 device: torch.device, dtype: torch.dtype = torch.float64,
                 progress: Callable[[int], None] | None = None, cancel=None,
                 sampler: str = "auto", record_every: int = 1) -> DeepResult:
    """Statistics at the recorded steps t = 0, r, 2r, …, T (r = record_every; T always included)."""
    d = len(W0)
    p = W0[0].shape[1]
    T1 = len(alphas) + 1
    recorded = recorded_steps(len(alphas), record_every)
    record_index = {t: i for i, t in enumerate(recorded)}
    K = n_groups_equal(R)
    stats = GroupStats(K, len(recorded))
    n_params = sum(W.size for W in W0)
    max_chunk = max(2, CHUNK_ELEMENTS // (n_params + p * p + b * p))
    T_prod = torch.eye(p, dtype=dtype, device=device)
    for M in T:
        T_prod = torch.as_tensor(np.asarray(M, dtype=np.float64), dtype=dtype, device=device) @ T_prod
    finite = np.zeros(len(recorded), dtype=np.int64)
    bad_steps: list[np.ndarray] = []
    layer_names = [f"layer{k + 1}" for k in range(d)]
    for chunk_no, groups in enumerate(group_ranges(R, K, max_chunk)):
        start, stop = group_start(groups.start, R, K), group_start(groups.stop, R, K)
        Rc = stop - start
        gid = (torch.arange(start, stop, device=device) * K) // R - groups.start
        sig = SigmaSampler(p, b, Rc, seed_for(seed, b, chunk_no), device, dtype, sampler)
        Ws = [torch.as_tensor(np.asarray(W, dtype=np.float64), dtype=dtype, device=device).expand(Rc, *W.shape).clone()
              for W in W0]
        alive = torch.ones(Rc, dtype=torch.bool, device=device)
        bad_at = torch.full((Rc,), -1, dtype=torch.long, device=device)
        T_b = T_prod.expand(Rc, *T_prod.shape)
        for t in range(T1):
            if cancel is not None and cancel.is_set():
                raise Cancelled("cancelled")
            Z = sig.draw_factor()
            slot = record_index.get(t)
            if slot is None and bool(alive.all()) and t < T1 - 1:
                # between recorded steps: W_k ← W_k − (α/b) δ_kᵀ a_{k−1} in place (no gradient tensor is stored);
                # a replica whose output error turns non-finite has diverged
                acts, deltas, err = _backprop(Ws, T_b, Z)
                ok = torch.isfinite(err).flatten(1).all(dim=1)
                if bool(ok.all()):
                    for k, W in enumerate(Ws):
                        W.baddbmm_(deltas[k].transpose(1, 2), acts[k], alpha=-alphas[t] / b)
                    if progress is not None:
                        progress(Rc)
                    continue
            grads = _stochastic_grads(Ws, T_b, Z, b)
            if slot is not None:  # population quantities and statistics, at the recorded steps only
                delta, Ps, Rs = _forward(Ws, T_prod)
                loss = 0.5 * delta.square().sum(dim=(1, 2))
                fulls, conds = [], []
                for P, Rm in zip(Ps, Rs):
                    G = P if Rm is None else P @ Rm
                    fulls.append(G)
                    r2 = p if Rm is None else Rm.square().sum(dim=(1, 2))
                    conds.append((G.square().sum(dim=(1, 2)) + P.square().sum(dim=(1, 2)) * r2) / b)
                ok = torch.isfinite(loss) & (loss <= DIVERGENCE_LOSS)
                for cv in conds:
                    ok &= torch.isfinite(cv)
            else:
                ok = torch.ones_like(alive)
            for g in grads:  # and every stochastic gradient finite
                ok &= torch.isfinite(g.square().sum(dim=(1, 2)))
            newly = alive & ~ok
            if bool(newly.any()):
                bad_at[newly] = t
                alive &= ok
            every = bool(alive.all())
            if slot is not None:
                for name, g, G, cv in zip(layer_names, grads, fulls, conds):
                    stats.variance(f"var_g_{name}", slot, g, gid, alive, groups, every)
                    stats.variance(f"var_full_grad_{name}", slot, G, gid, alive, groups, every)
                    stats.mean(f"cond_{name}", slot, cv[:, None], gid, alive, groups)
                stats.mean("loss", slot, loss[:, None], gid, alive, groups)
                finite[slot] += int(alive.sum())
            if t < T1 - 1:
                a = alphas[t]
                if every:
                    for W, g in zip(Ws, grads):
                        W.sub_(g, alpha=a)
                else:
                    Ws = [torch.where(alive[:, None, None], W - a * g, W) for W, g in zip(Ws, grads)]
            if progress is not None:
                progress(Rc)
        bad_steps.append(bad_at[bad_at >= 0].cpu().numpy())
    for name in layer_names:
        stats.data[f"var_g_rb_{name}"] = stats.data[f"cond_{name}"] + stats.data[f"var_full_grad_{name}"]
    for q in ("var_g", "var_full_grad", "var_g_rb"):
        stats.data[q] = sum(stats.data[f"{q}_{name}"] for name in layer_names)
    curves = {}
    for q in ("var_g", "var_g_rb", "var_full_grad", "loss"):
        curves[q] = stats.result(q)
    for name in layer_names:
        for q in ("var_g", "var_g_rb", "var_full_grad"):
            curves[f"{q}_{name}"] = stats.result(f"{q}_{name}")
    bad = np.concatenate(bad_steps) if bad_steps else np.array([], dtype=np.int64)
    return DeepResult(curves, finite, int(bad.min()) if bad.size else None, int(bad.size), K)


def estimate_cost(dims: tuple[int, ...], R: int, T: int, b: int, record_every: int = 1) -> dict[str, float]:
    """Rough memory (bytes) and time (seconds on 2 CPU cores) of one batch size's run."""
    p = dims[0]
    m = min(b, p)
    n_params = sum(dims[k] * dims[k + 1] for k in range(len(dims) - 1))
    chunk = min(R, max(2, CHUNK_ELEMENTS // (n_params + p * p + b * p)))
    memory = 4.0 * chunk * (8 * n_params + 3 * p * p + m * sum(dims))
    step_flops = 6 * m * n_params + 2 * m * p * dims[-1]
    record_flops = 8 * p * n_params + 2 * p * p * dims[-1]
    n_rec = len(recorded_steps(T, record_every))
    seconds = (R * (T + 1) * step_flops / 4e10 + R * n_rec * (record_flops / 4e10 + 12 * n_params * 1e-9)
               + (T + 1) * 1e-3 * (len(dims) + 1))
    return {"memory_bytes": memory, "seconds": seconds}

"""SGD replicas for deep linear teacher–student networks on fresh Gaussian samples (paper §3.2).

Layers are batched tensors (R, p_k, p_{k−1}); each replica draws its own Σ̂_t = (1/b) Σ_j x_j x_jᵀ every step:
- Bartlett (b ≥ p): bΣ̂ = L Lᵀ, L lower triangular, L_ii = √χ²_{b−i+1}, L_ij ~ N(0, 1) for i > j — O(p³) per replica,
  independent of b;
- direct (b < p): X (b × p) standard normal, Σ̂ = XᵀX / b.
Per step: g_k = P_k Σ̂ R_k, the population gradient ∇_k L = P_k R_k, L = ½‖Δ‖², and the closed-form conditional
variance var(g_k | W) = (1/b)(‖P_k R_k‖² + ‖P_k‖²‖R_k‖²) for the Rao–Blackwellised estimator. Replicas run in
chunks of whole statistics groups, so per-step group statistics are final and memory is O(K·T), not O(T·R·params).
A replica whose loss exceeds DIVERGENCE_LOSS or turns non-finite is dropped from that step on and reported (its
weights are set to zero: a fixed point whose updates are exactly zero, so the chunk keeps its fast path).

Exact width reduction: every hidden space k keeps its SGD iterates inside S_k = col(W_k⁰) + row(W_{k+1}⁰) (the
column updates of W_k lie in row(W_{k+1}), the row updates of W_{k+1} in col(W_k), for every Σ̂), so the replicas run
on A_k = Q_kᵀ W_k Q_{k−1} with Q_k an orthonormal basis of S_k: hidden width min(p_k, rank) ≤ p_{k−1} + p_{k+1}
(256 → 192 for the paper's 64 → 256 → 128). The maps are isometries shared by all replicas, so every norm, variance
and loss is unchanged. On CPU a chunk holds a few MB of weights, so it stays in cache across its steps.

Optimizers (docs/theory.md §8): plain SGD takes the fused update above (no gradient tensor formed). Momentum,
Nesterov and weight decay (``optimizer``, backend/optim.py's SGD family with torch.optim.SGD's semantics) form
g_k = δ_kᵀ a_{k−1} / b and step the weights and a static (R, p_k, p_{k−1}) velocity buffer per layer in place (so the
CUDA graph replays on the same buffers). The width reduction stays exact: W_k and the velocity are sums of W_k⁰ and
of past gradients (and of the weights, for the decay), all inside S_k's column and S_{k−1}'s row spaces. Adam is not
offered here: its elementwise scaling does not commute with the rotations Q_k.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from backend.engine.graphs import Replay
from backend.engine.runner import (ChunkedRun, Divergence, DivergenceLog, ReplicaResult, chunks, run_blocks,
                                   schedule_segments, seed_for)
from backend.optim import Optimizer
from backend.quantities import LOSS, VAR_FULL_GRAD, VAR_G, VAR_G_RB, per_layer
from backend.stats import GroupMoments, Groups, batch_means, group_ids, group_m2, n_groups_equal

DIVERGENCE_LOSS = 1e30
CHUNK_ELEMENTS = 40_000_000  # replicas × (params + p²) per chunk
CPU_CHUNK_BYTES = 6 * 2**20  # on CPU, a chunk's weights and activations stay in cache from one step to the next


def hidden_bases(W0: list[np.ndarray]) -> list[np.ndarray | None]:
    """[None, Q_1, …, Q_{d−1}, None]: Q_k (p_k × s_k) an orthonormal basis of S_k = col(W_k) + row(W_{k+1}), or
    None where S_k is the whole hidden space (no reduction). Rank by SVD, tolerance max(shape)·ε·σ_max."""
    bases: list[np.ndarray | None] = [None]
    for k in range(len(W0) - 1):
        M = np.hstack([W0[k], W0[k + 1].T])
        U, s, _ = np.linalg.svd(M, full_matrices=False)
        tol = (s.max() if s.size else 0.0) * max(M.shape) * np.finfo(np.float64).eps
        r = max(1, int((s > tol).sum()))
        bases.append(None if r >= M.shape[0] else U[:, :r])
    bases.append(None)
    return bases


def reduce_widths(W0: list[np.ndarray]) -> list[np.ndarray]:
    """A_k = Q_kᵀ W_k Q_{k−1} (the identity where a basis is None): the same network on the invariant hidden spaces."""
    Q = hidden_bases(W0)
    out = []
    for k, W in enumerate(W0):
        A = W if Q[k + 1] is None else Q[k + 1].T @ W
        out.append(A if Q[k] is None else A @ Q[k])
    return out


def reduced_dims(W0: list[np.ndarray]) -> tuple[int, ...]:
    A = reduce_widths([np.asarray(W, dtype=np.float64) for W in W0])
    return (A[0].shape[1], *(M.shape[0] for M in A))


def chunk_replicas(dims: tuple[int, ...], b: int, device: torch.device, itemsize: int) -> int:
    """Replicas per chunk: bounded by memory everywhere and, on CPU, by cache size (the steps are memory-bound on
    a chunk that does not fit in cache; benchmarks/TIMINGS.md)."""
    p, m = dims[0], min(b, dims[0])
    n_params = sum(dims[k] * dims[k + 1] for k in range(len(dims) - 1))
    limit = CHUNK_ELEMENTS // (n_params + p * p + b * p)
    if device.type == "cpu":
        limit = min(limit, CPU_CHUNK_BYTES // (itemsize * (n_params + m * sum(dims))))
    return max(2, limit)


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


def _update_in_place(Ws: list[torch.Tensor], acts, deltas, neg_step: torch.Tensor) -> None:
    """W_k ← W_k + (−α/b) δ_kᵀ a_{k−1} in place (no gradient tensor is formed); ``neg_step`` = −α_t/b is a device
    scalar, so the same kernels serve every step (and a captured CUDA graph)."""
    for k, W in enumerate(Ws):
        W.baddbmm_((deltas[k] * neg_step).transpose(1, 2), acts[k])


def _norm2(x: torch.Tensor) -> torch.Tensor:
    """‖x_r‖²_F for each replica r (one pass, no temporary)."""
    return torch.linalg.vector_norm(x, dim=(1, 2)).square()


def _factored_norm2(d: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """‖dᵀa‖²_F = ⟨d dᵀ, a aᵀ⟩ per replica, from the m × m Gram matrices: O(m²(p_out + p_in)), dᵀa never formed."""
    return ((d @ d.transpose(1, 2)) * (a @ a.transpose(1, 2))).sum(dim=(1, 2)).to(torch.float64)


CANCELLATION_LIMIT = 0.99  # the one-pass group variance is used only while n‖ḡ‖² ≤ this share of Σ‖g_r‖²


def _factored_group_m2(d: torch.Tensor, a: torch.Tensor, norm2: torch.Tensor, n_groups: int) -> torch.Tensor | None:
    """M2_j = Σ_{r∈j} ‖g_r − ḡ_j‖² = Σ‖g_r‖² − n‖ḡ_j‖² for g_r = d_rᵀ a_r (rank ≤ m), equal groups of n replicas:
    ḡ_j = (1/n)[d_1ᵀ … d_nᵀ][a_1; …; a_n] is one GEMM of inner size n·m (the per-replica g_r are never formed).
    Returns None when n‖ḡ‖² > CANCELLATION_LIMIT · Σ‖g_r‖² for some group (more than two digits would cancel in
    float32): the caller then uses the two-pass form on the materialised gradients."""
    Rc, m, _ = d.shape
    n = Rc // n_groups
    dg = d.reshape(n_groups, n * m, d.shape[2]).transpose(1, 2)
    mean = (dg @ a.reshape(n_groups, n * m, a.shape[2])) / n
    between = n * _norm2(mean).to(torch.float64)
    total = norm2.reshape(n_groups, n).sum(dim=1)
    if not bool((between <= CANCELLATION_LIMIT * total).all()):
        return None
    return total - between


def recorded_steps(T: int, every: int) -> list[int]:
    """t = 0, every, 2·every, …, and always T."""
    return sorted(set(range(0, T + 1, max(1, every))) | {T})


def _forward(Ws: list[torch.Tensor], T_prod: torch.Tensor):
    """Δ = W_d⋯W_1 − T*, and P_k, R_k and the population gradient ∇_k L = P_k R_k for every layer (batched over
    replicas; explicit bmm, the fastest path here); R_1 = I is returned as None (never multiplied)."""
    prefix = [None, Ws[0]]
    for W in Ws[1:]:
        prefix.append(torch.bmm(W, prefix[-1]))
    delta = prefix[-1] - T_prod
    Ps = [None] * len(Ws)
    P = delta
    for k in range(len(Ws) - 1, -1, -1):
        Ps[k] = P
        if k > 0:
            P = torch.bmm(Ws[k].transpose(1, 2), P)
    Rs = [None if k == 0 else prefix[k].transpose(1, 2) for k in range(len(Ws))]
    Gs = [P if Rm is None else torch.bmm(P, Rm) for P, Rm in zip(Ps, Rs)]
    return delta, Ps, Rs, Gs


def _population(Ws: list[torch.Tensor], T_prod: torch.Tensor, b: int):
    """Per replica: the loss L = ½‖Δ‖², the population gradients ∇_k L = P_k R_k, and the conditional variances
    var(g_k | W) = (1/b)(‖P_k R_k‖² + ‖P_k‖²‖R_k‖²) (‖R_1‖² = ‖I_p‖² = p) of the Rao–Blackwellised estimator."""
    delta, Ps, Rs, fulls = _forward(Ws, T_prod)
    loss = 0.5 * _norm2(delta)
    conds = []
    for P, Rm, G in zip(Ps, Rs, fulls):
        g2 = _norm2(G)
        p2, r2 = (g2, T_prod.shape[1]) if Rm is None else (2 * loss if P is delta else _norm2(P), _norm2(Rm))
        conds.append((g2 + p2 * r2) / b)
    return loss, fulls, conds


# the curves of a run (backend/quantities.py declares their names): the variances of g_t and of ∇L(w_t) and the
# Rao–Blackwellised variance, each in total and per layer (PER_LAYER), and the mean loss
REPORTED = (VAR_G, VAR_G_RB, VAR_FULL_GRAD, LOSS)
PER_LAYER = (VAR_G, VAR_FULL_GRAD, VAR_G_RB)
COND = "cond"  # per layer: var(g_k | W) of each replica, averaged into var_g_rb (not a curve of its own)


def variance_names(layers: range) -> list[str]:
    """The per-layer accumulators of across-replica variances (M2 per group): of g_k and of ∇_k L."""
    return [per_layer(q, k) for q in (VAR_G, VAR_FULL_GRAD) for k in layers]


def scalar_names(layers: range) -> list[str]:
    """The per-replica scalars averaged per group: the loss and each layer's conditional variance."""
    return [LOSS, *(per_layer(COND, k) for k in layers)]


class _ChunkRecord:
    """A chunk's recorded statistics, kept on the device until the chunk ends: per-replica scalars (loss, conditional
    variances) with the replicas alive at each recorded step, and per-group M2's of the gradients."""

    def __init__(self, Rc: int, n_groups: int, n_rec: int, layers: range, device: torch.device) -> None:
        zeros = lambda *shape: torch.zeros(shape, dtype=torch.float64, device=device)  # noqa: E731
        self.scalars = {name: zeros(Rc, n_rec) for name in scalar_names(layers)}
        self.alive_at = torch.zeros((Rc, n_rec), dtype=torch.bool, device=device)
        self.m2s = {name: zeros(n_groups, n_rec) for name in variance_names(layers)}
        self.m2_slots: dict[str, list[int]] = {name: [] for name in self.m2s}

    def m2(self, name: str, slot: int, value: torch.Tensor) -> None:
        self.m2s[name][:, slot] = value
        self.m2_slots[name].append(slot)

    def flush(self, stats: dict[str, GroupMoments], gid: Groups, groups: range, per_group: int) -> np.ndarray:
        """Write the chunk's groups into ``stats``; returns the number of replicas alive at each recorded step."""
        for name, slots in self.m2_slots.items():
            if slots:
                m2 = self.m2s[name][:, slots]
                stats[name].put(groups, GroupMoments(torch.full_like(m2, per_group), m2=m2), slots)
        for name, x in self.scalars.items():
            stats[name].put(groups, GroupMoments.of(x, gid, self.alive_at, second=False))
        return self.alive_at.sum(dim=0).cpu().numpy()


def _gradient(acts, deltas, k: int, b: int) -> torch.Tensor:
    """g_k = δ_kᵀ a_{k−1} / b (R, p_k, p_{k−1}), materialised (the fused plain step never forms it)."""
    return torch.bmm(deltas[k].transpose(1, 2) * (1.0 / b), acts[k])


def _layer_params(Ws: list[torch.Tensor]) -> dict[str, torch.Tensor]:
    """The layers as backend/optim.py's parameter dict (the same tensors: stepped in place)."""
    return {f"W{k + 1}": W for k, W in enumerate(Ws)}


class _PlainStep:
    """One step between recorded steps, on buffers fixed for the chunk (so that CUDA replays it as a graph,
    backend.engine.graphs): the factor Z of Σ̂_t, the rate (−α_t/b for the fused plain update, α_t for an
    optimizer's step) and t are loaded, then ``body`` back-propagates, records the divergence verdict on the device
    and updates the weights in place — fused, or through ``optimizer`` on its static ``state`` (velocity buffers)."""

    def __init__(self, Ws: list[torch.Tensor], T_b: torch.Tensor, div: Divergence, Rc: int, sig: "SigmaSampler",
                 dtype: torch.dtype, device: torch.device, optimizer: Optimizer | None = None,
                 state: dict[str, torch.Tensor] | None = None) -> None:
        self.Ws, self.T_b, self.div = Ws, T_b, div
        self.optimizer, self.state, self.b = optimizer, state, sig.b
        m = sig.b if sig.method == "direct" else sig.p
        self.Z = torch.empty((Rc, m, sig.p), dtype=dtype, device=device)
        self.neg_step = torch.empty((), dtype=dtype, device=device)
        self.t = torch.empty((), dtype=torch.long, device=device)

    def load(self, Z: torch.Tensor, neg_step: torch.Tensor, t: torch.Tensor, static: bool) -> None:
        if static:
            self.Z.copy_(Z)
            self.neg_step.copy_(neg_step)
            self.t.copy_(t)
        else:
            self.Z, self.neg_step, self.t = Z, neg_step, t

    def body(self) -> None:
        acts, deltas, err = _backprop(self.Ws, self.T_b, self.Z)
        self.div.update(torch.isfinite(err.sum(dim=(1, 2))), self.t)
        if self.optimizer is None:
            _update_in_place(self.Ws, acts, deltas, self.neg_step)
        else:  # neg_step holds α_t here
            grads = {f"W{k + 1}": _gradient(acts, deltas, k, self.b) for k in range(len(self.Ws))}
            self.optimizer.step(_layer_params(self.Ws), grads, self.state, self.neg_step, self.t)


@dataclass(frozen=True)
class RunSpec(ChunkedRun):
    """One deep-linear replica run (the shared controls and the schedule's segments: runner.ChunkedRun, K equal
    groups): the (reduced) initial weights, the teacher's product T_prod, α_t and −α_t/b_t (what the fused step
    loads), the recorded steps."""

    W0: list[np.ndarray]
    T_prod: torch.Tensor
    alphas: list[float]
    neg_steps: torch.Tensor  # −α_t/b_t
    rates: torch.Tensor  # what the step body loads: −α_t/b_t, or α_t for an optimizer
    recorded: list[int]

    @property
    def layers(self) -> range:
        """The layers k = 1 … d (backend.quantities.per_layer names their curves)."""
        return range(1, len(self.W0) + 1)


def run_replicas(W0: list[np.ndarray], T: list[np.ndarray], alphas: list[float], b: int | list[tuple[int, int]],
                 R: int, seed: int,
                 device: torch.device, dtype: torch.dtype = torch.float64,
                 progress: Callable[[int], None] | None = None, cancel=None,
                 sampler: str = "auto", record_every: int = 1, reduce_hidden: bool = True,
                 cuda_graph: bool = True, optimizer: Optimizer | None = None) -> ReplicaResult:
    """Statistics at the recorded steps t = 0, r, 2r, …, T (r = record_every; T always included), on the exactly
    reduced hidden widths unless ``reduce_hidden`` is False; ``cuda_graph`` (on CUDA) replays the steps between
    recorded ones as a captured graph — the same numbers, fewer launches. ``optimizer``: backend/optim.py's SGD
    family (None or plain: the fused w − α g, bitwise today's numbers). ``b`` a list of (b_i, steps_i): a batch-size
    schedule (docs/theory.md §12), its segments one after another in each chunk, each with its own Σ̂ sampler and
    step, the weights and the optimizer's state carried on the device; one segment runs exactly the constant-b run."""
    segments, bounds = schedule_segments(b, len(alphas))
    b_at = np.concatenate([np.full(e - a, bj) for (bj, _), (a, e) in zip(segments, bounds)])  # b_t, t = 0..T
    if optimizer is not None and optimizer.plain:
        optimizer = None
    W0 = [np.asarray(W, dtype=np.float64) for W in W0]
    if reduce_hidden:
        W0 = reduce_widths(W0)
    p = W0[0].shape[1]
    T_prod = torch.eye(p, dtype=dtype, device=device)
    for M in T:
        T_prod = torch.as_tensor(np.asarray(M, dtype=np.float64), dtype=dtype, device=device) @ T_prod
    neg_steps = torch.as_tensor(-np.asarray(alphas, dtype=np.float64) / b_at[:-1], dtype=dtype, device=device)
    rates = neg_steps if optimizer is None else torch.as_tensor(np.asarray(alphas, dtype=np.float64), dtype=dtype,
                                                                device=device)
    spec = RunSpec(R=R, K=n_groups_equal(R), seed=seed, sampler=sampler, device=device, dtype=dtype,
                   cuda_graph=cuda_graph, optimizer=optimizer, progress=progress, cancel=cancel, W0=W0, T_prod=T_prod,
                   alphas=list(alphas), segments=segments, bounds=bounds,
                   neg_steps=neg_steps, rates=rates, recorded=recorded_steps(len(alphas), record_every))
    # per group and recorded step: the gradients' M2's (the fast path's, or merged where groups are not whole) and
    # the scalars' sums
    K, n_rec = spec.K, len(spec.recorded)
    stats = {**{name: GroupMoments.zeros(K, n_rec, device, sums=False) for name in variance_names(spec.layers)},
             **{name: GroupMoments.zeros(K, n_rec, device, second=False) for name in scalar_names(spec.layers)}}
    dims = (p, *(W.shape[0] for W in W0))
    max_chunk = min(chunk_replicas(dims, bj, device, torch.empty((), dtype=dtype).element_size()) for bj, _ in segments)
    finite = np.zeros(n_rec, dtype=np.int64)
    diverged = DivergenceLog()
    for chunk in chunks(R, max_chunk, K):
        run = _ChunkRun(spec, chunk, stats)
        finite += run.run()
        diverged.add(run.div)
    return ReplicaResult(_curves(stats, spec.layers), finite, diverged.first, diverged.count, K)


def _curves(stats: dict[str, GroupMoments], layers: range) -> dict[str, dict]:
    """Per group: V̂_k of the gradients, the scalars' means; sums over layers and the Rao–Blackwellised variance
    (mean conditional variance + V̂ of ∇L), then batch means over the groups: the curves REPORTED, in total and
    per layer."""
    data = {name: m.variances() if m.m2 is not None else m.means() for name, m in stats.items()}
    for k in layers:
        data[per_layer(VAR_G_RB, k)] = data[per_layer(COND, k)] + data[per_layer(VAR_FULL_GRAD, k)]
    for q in PER_LAYER:
        data[q] = sum(data[per_layer(q, k)] for k in layers)
    curves = {q: batch_means(data[q]).curve() for q in REPORTED}
    for k in layers:
        for q in REPORTED:
            if q in PER_LAYER:
                curves[per_layer(q, k)] = batch_means(data[per_layer(q, k)]).curve()
    return curves


class _ChunkRun:
    """One chunk of whole groups through every step, in the shared loop (runner.run_blocks: segments, blocks cut at
    the recorded steps, cancel, progress, the divergence record): between recorded steps the fused (or optimizer's)
    step with no host synchronisation (a replayed graph on CUDA); at a recorded step the statistics, the divergence
    verdicts and the update that fits them (docs/theory.md §4)."""

    def __init__(self, spec: RunSpec, chunk, stats: dict[str, GroupMoments]) -> None:
        self.spec, self.chunk, self.stats = spec, chunk, stats
        Rc, groups, device = chunk.size, chunk.groups, spec.device
        self.gid = group_ids(chunk.start, chunk.stop, spec.R, spec.K, device, first=groups.start, G=len(groups))
        self.Ws = [torch.as_tensor(W, dtype=spec.dtype, device=device).expand(Rc, *W.shape).clone() for W in spec.W0]
        self.T_b = spec.T_prod.expand(Rc, *spec.T_prod.shape)
        self.G_c = len(groups)
        self.equal = Rc % self.G_c == 0 and bool((self.gid.lengths == Rc // self.G_c).all())
        self.rec = _ChunkRecord(Rc, self.G_c, len(spec.recorded), spec.layers, device)
        self.state = spec.optimizer.init(_layer_params(self.Ws)) if spec.optimizer is not None else {}  # static
        self.step_numbers = torch.arange(spec.T1, device=device)
        self.record_index = {t: i for i, t in enumerate(spec.recorded)}

    def run(self) -> np.ndarray:
        """Every step of the chunk; returns its live replicas per recorded step (its statistics go to ``stats``)."""
        self.div = run_blocks(self.spec, self.chunk, self, stops=self.spec.recorded)
        return self.rec.flush(self.stats, self.gid, self.chunk.groups, self.chunk.size // self.G_c)

    def run_block(self, j: int, t0: int, t1: int, div: Divergence) -> int:
        """Steps t0 … t1 − 1, only the last of which may be recorded (or the run's last). Returns the steps completed:
        fewer when the whole chunk diverged (its later statistics stay empty)."""
        spec = self.spec
        for t in range(t0, t1):
            slot = self.record_index.get(t)
            last = t == spec.T1 - 1
            if slot is None and not last:
                # between recorded steps, no host synchronisation: the verdicts stay on the device and every replica
                # steps in place (one that diverged runs on in its own slice of the batch, apart from the others,
                # until the next recorded step zeroes it); on CUDA the step is a replayed graph
                self.plain.load(self.sig.draw_factor(), spec.rates[t], self.step_numbers[t], static=self.replay.enabled)
                self.replay()
            elif self.recorded_step(t, slot, last):
                return t - t0
        return t1 - t0

    def start_segment(self, j: int, div: Divergence) -> None:
        """Segment j's b, Σ̂ sampler (segment 0 as a constant b's; each later one its own) and step."""
        spec, chunk = self.spec, self.chunk
        self.div = div
        b = self.b = spec.segments[j][0]
        seed = seed_for(spec.seed, b, chunk.number) if j == 0 else seed_for(spec.seed, b, chunk.number, j)
        self.sig = SigmaSampler(self.T_b.shape[-1], b, chunk.size, seed, spec.device, spec.dtype, spec.sampler)
        self.plain = _PlainStep(self.Ws, self.T_b, self.div, chunk.size, self.sig, spec.dtype, spec.device,
                                spec.optimizer, self.state)
        self.replay = Replay(self.plain.body, spec.device, spec.cuda_graph)

    def recorded_step(self, t: int, slot: int | None, last: bool) -> bool:
        """A step that syncs with the host (a recorded one, or the last): the backward pass, the verdicts, the
        statistics at a recorded step, then the update. Returns whether every replica of the chunk has diverged."""
        div = self.div
        if not bool(div.alive.all()):  # a recorded step syncs anyway
            self._zero(~div.alive)  # replicas that diverged since: zero weights and velocities
        acts, deltas, err = _backprop(self.Ws, self.T_b, self.sig.draw_factor())
        # ‖g_k‖² per replica with g_k = δ_kᵀ a_{k−1} / b, from m × m Grams (a non-finite one means divergence)
        norms = [_factored_norm2(deltas[k], acts[k]) / self.b**2 for k in range(len(self.Ws))]
        ok = torch.isfinite(err.sum(dim=(1, 2)))
        for g2 in norms:
            ok &= torch.isfinite(g2)
        population = None
        if slot is not None:  # population quantities, at the recorded steps only
            population = loss, _, conds = _population(self.Ws, self.spec.T_prod, self.b)
            ok &= torch.isfinite(loss) & (loss <= DIVERGENCE_LOSS)
            for cv in conds:
                ok &= torch.isfinite(cv)
        fresh_dead = bool(div.update(ok, t).any())  # this path syncs anyway (it chooses the update below)
        if fresh_dead and not bool(div.alive.any()):
            return True
        grad = _LazyGradients(acts, deltas, self.b)
        if slot is not None:
            self._record(slot, population, acts, deltas, norms, grad)
        if not last:
            self._update(t, acts, deltas, grad, fresh_dead)
        return False

    def _zero(self, dead: torch.Tensor) -> None:
        """Set the weights and velocities of the replicas ``dead`` to zero (finite, fixed, out of the statistics), in
        place: they are the buffers a captured step reads."""
        for W in (*self.Ws, *self.state.values()):
            W.masked_fill_(dead[:, None, None], 0.0)

    def _record(self, slot: int, population, acts, deltas, norms, grad: "_LazyGradients") -> None:
        """The statistics of recorded step ``slot``: the loss and conditional variances per replica, the per-layer
        M2 of g_t and ∇L(w_t) per group (docs/theory.md §4)."""
        rec, G_c, alive, Rc = self.rec, self.G_c, self.div.alive, self.chunk.size
        loss, fulls, conds = population
        every = bool(alive.all())
        rec.alive_at[:, slot] = alive
        rec.scalars[LOSS][:, slot] = loss
        for k, (G, cv) in enumerate(zip(fulls, conds)):
            var_g, var_full = per_layer(VAR_G, k + 1), per_layer(VAR_FULL_GRAD, k + 1)
            rec.scalars[per_layer(COND, k + 1)][:, slot] = cv
            if every and self.equal:  # every group whole: M2 per group, kept until the chunk ends
                m2 = _factored_group_m2(deltas[k] * (1.0 / self.b), acts[k], norms[k], G_c)
                rec.m2(var_g, slot, group_m2(grad(k), G_c, consume=True) if m2 is None else m2)
                rec.m2(var_full, slot, group_m2(G, G_c, consume=True))
            else:
                for q, x in ((var_g, grad(k)), (var_full, G)):
                    self.stats[q].put(self.chunk.groups, GroupMoments.of(x.reshape(Rc, -1), self.gid, alive,
                                                                         vector=True), slot)

    def _update(self, t: int, acts, deltas, grad: "_LazyGradients", fresh_dead: bool) -> None:
        """Step t's update after a recorded step: backend/optim.py's step, or the fused plain-SGD update; replicas
        that have just diverged are set to zero."""
        spec, Ws, alive = self.spec, self.Ws, self.div.alive
        if spec.optimizer is not None:
            spec.optimizer.step(_layer_params(Ws), {f"W{k + 1}": grad(k) for k in range(len(Ws))}, self.state,
                                spec.alphas[t], t)
            if fresh_dead:
                self._zero(~alive)
        elif not fresh_dead:  # the dead, if any, hold zero weights: their update is exactly zero
            _update_in_place(Ws, acts, deltas, spec.neg_steps[t])
        else:  # newly diverged replicas: set to zero (finite, fixed), so the fast path can go on
            a = spec.alphas[t]
            for k, W in enumerate(Ws):  # in place: the weights are the buffers a captured step reads
                W.copy_(torch.where(alive[:, None, None], W - a * grad(k), 0.0))


class _LazyGradients:
    """The per-replica layer gradients g_k = δ_kᵀ a_{k−1} / b of a recorded step, each materialised at its first use
    only."""

    def __init__(self, acts, deltas, b: int) -> None:
        self.acts, self.deltas, self.b, self.cache = acts, deltas, b, {}

    def __call__(self, k: int) -> torch.Tensor:
        if k not in self.cache:
            self.cache[k] = _gradient(self.acts, self.deltas, k, self.b)
        return self.cache[k]


def generic_reduced_dims(dims: tuple[int, ...]) -> tuple[int, ...]:
    """Hidden widths after the exact reduction for generic weights: p_k' = min(p_k, p_{k−1}' + p_{k+1})."""
    out = [dims[0]]
    for k in range(1, len(dims) - 1):
        out.append(min(dims[k], out[-1] + dims[k + 1]))
    return (*out, dims[-1])


STEP_FLOPS_PER_S = {4: 1.1e11, 8: 5.5e10}  # measured on 2 CPU cores (float32, float64), small-m batched GEMMs
RECORD_FLOPS_PER_S = {4: 2.5e11, 8: 1.25e10}  # float64: batched products of small matrices (8 → 16 → 4)
# Python and small-op overhead per chunk and plain / recorded step, and per replica and recorded step (the statistics'
# small per-replica ops): benchmarks/bench_deep_linear_overhead.py — a chunk of 2 replicas costs 0.25 ms a plain step
# and 1.0–3 ms a recorded one at any width, 2 000 replicas ≈ 2–3 µs more per replica a recorded step (low percentiles
# of the per-step CPU time on a loaded box); the per-replica term keeps the defaults' calibration (5 b × 2 000 replicas
# × 51 recorded steps, 3.2 CPU-s on the critical path of a loaded box, benchmarks/bench_estimates.py). The per-chunk
# terms count once per chunk: the paper preset runs 25–32 chunks (CPU chunks are cache-sized).
CHUNK_STEP_OVERHEAD_S = (2.5e-4, 2.5e-3)
RECORD_REPLICA_S = 3e-6


def estimate_cost(dims: tuple[int, ...], R: int, T: int, b: int, record_every: int = 1,
                  itemsize: int = 8, optimizer_tensors: int = 0) -> dict[str, float]:
    """Rough memory (bytes) and time (seconds on 2 CPU cores) of one batch size's run, on the reduced widths.
    Calibrated on the paper preset (64 → 256 → 128, float32) and the small presets (float64).
    ``optimizer_tensors``: weight-sized tensors per replica that a non-plain optimizer adds (its velocity buffer,
    the materialised gradient, g + λw): memory, and per step the gradient's product and their elementwise passes."""
    dims = generic_reduced_dims(tuple(dims))
    p, m = dims[0], min(b, dims[0])
    n_params = sum(dims[k] * dims[k + 1] for k in range(len(dims) - 1))
    chunk = min(R, chunk_replicas(dims, b, torch.device("cpu"), itemsize))
    memory = float(itemsize) * chunk * ((8 + optimizer_tensors) * n_params + 3 * p * p + m * sum(dims))
    step_flops = 6 * m * n_params + 2 * m * p * dims[-1]
    if optimizer_tensors:  # g_k = δ_kᵀ a_{k−1} / b formed, then ≈ 3 elementwise passes per tensor
        step_flops += 2 * m * n_params + 3 * optimizer_tensors * n_params
    record_flops = 8 * p * n_params + 2 * p * p * dims[-1] + 16 * m * m * sum(dims)
    n_rec = len(recorded_steps(T, record_every))
    n_chunks = -(-R // chunk)
    seconds = (R * (T + 1) * step_flops / STEP_FLOPS_PER_S.get(itemsize, 5.5e10)
               + R * n_rec * record_flops / RECORD_FLOPS_PER_S.get(itemsize, 1e11)
               + n_chunks * ((T + 1) * CHUNK_STEP_OVERHEAD_S[0] + n_rec * CHUNK_STEP_OVERHEAD_S[1])
               + R * n_rec * RECORD_REPLICA_S)
    gpu_chunks = -(-R // min(R, max(2, CHUNK_ELEMENTS // (n_params + p * p + b * p))))
    return {"memory_bytes": memory, "seconds": seconds, "flops": float(R * (T + 1) * step_flops + R * n_rec * record_flops),
            "steps": float(gpu_chunks * (T + 1))}

"""SGD replicas for finite-sum linear regression, vectorised over replicas (paper §3.1).

All R replicas start from the same w_0; replica r draws its own mini-batches. Per step and per replica:
    g_t = (1/b) Σ_{i∈B_t} x_i (x_iᵀ w_t − y_i)                      (or, for a complement draw,
        = (1/b) ( n ∇L(w_t) − Σ_{i∉B_t} x_i (x_iᵀ w_t − y_i) )    cost O(min(b, n − b) p)),
    ∇L(w_t) = H w_t − h,  L(w_t) = ½ w_tᵀ H w_t − hᵀ w_t + ½ yᵀy/n,
    Lemma 1's one-step variance  var(g_t | F_t) = c (z_tᵀ P z_t − ‖∇L(w_t)‖²),  P = (1/n) Σ ‖x_i‖² u_i u_iᵀ, z = [w; 1],
and w_{t+1} = w_t − α_t g_t (plain SGD: one fused addcmul). With momentum, Nesterov or weight decay the step is
backend/optim.py's chain (torch.optim.SGD's semantics) on the block's slot w_{t+1}, with a static (R, p) velocity
buffer per chunk allocated once, so a captured CUDA graph replays it too (the graph path is kept, not bypassed).
Statistics stream into group accumulators (backend.stats); replicas run in chunks so memory
does not grow with R. A replica whose gradient or loss becomes non-finite is dropped from that step on and reported
(also once its loss exceeds DIVERGENCE_LOSS, long before float64 overflows).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from backend.engine.graphs import Replay
from backend.optim import Optimizer
from backend.quantities import LOSS, VAR_FULL_GRAD, VAR_G, VAR_G_RB
from backend.engine.samplers import FLOYD_MAX, _stream_length, make_sampler
from backend.engine.runner import (DIVERGENCE_LOSS, STEP_BLOCK, ChunkedRun, Divergence, DivergenceLog, ReplicaResult,
                                   chunks, run_blocks, schedule_segments, seed_for)
from backend.stats import GroupMoments, batch_means, group_ids, n_groups

# gathered batch elements (replicas × k × (p + 1)) per chunk: on a CPU a chunk's batches stay small; a GPU takes
# R = 10⁵ at b = 16 in one chunk (fewer, larger steps are faster there; benchmarks/TIMINGS.md)
CHUNK_ELEMENTS = {"cpu": 8_000_000, "cuda": 64_000_000}
# memory order of the copy of X whose rows each step gathers (the same rows, bit for bit, either way). On CUDA,
# index_select of contiguous 64-byte rows (p = 8 doubles) goes to torch's vectorized row-gather kernel, one thread
# block per drawn row with 4 busy threads of 32; from a column-major X it goes to the elementwise gather kernel, one
# thread per gathered number, like y's gather. On a CPU the row-major copy gathers faster. The measurements:
# benchmarks/TIMINGS.md.
GATHER_LAYOUT = {"cpu": "rows", "cuda": "columns"}


class StepBlock:
    """The weights w_t and stochastic gradients g_t of up to ``steps`` consecutive steps, with the block's indices
    and step sizes, kept on the device; their statistics (∇L, L, Lemma 1's conditional variance, the divergence
    verdicts) are computed and accumulated for the whole block at once (backend.stats ``update_block``: the numbers
    of step by step, in fewer, larger operations). ``steps`` reads and writes these buffers only, so on CUDA it is
    captured as a graph (backend.engine.graphs) and replayed block after block."""

    def __init__(self, steps: int, R: int, p: int, dtype: torch.dtype, device: torch.device, include: bool) -> None:
        self.W = torch.empty((steps, R, p), dtype=dtype, device=device)
        self.g = torch.empty((steps, R, p), dtype=dtype, device=device)
        self.idx: torch.Tensor | None = None  # (steps, R, k) indices of the block's batches (or complements)
        self.alpha: torch.Tensor | None = None  # (steps,) step sizes α_t of the block
        self.include = include
        self.optimizer: Optimizer | None = None  # None or plain: the fused w − α g
        self.opt_state: dict[str, torch.Tensor] = {}

    def use_optimizer(self, optimizer: Optimizer | None) -> None:
        """Step with ``optimizer`` (its state zeros of shape (R, p), static buffers) unless it is None or plain."""
        if optimizer is not None and not optimizer.plain:
            self.optimizer = optimizer
            self.opt_state = optimizer.init({"w": self.W[0]})

    def load(self, idx: torch.Tensor, alpha: torch.Tensor, static: bool) -> None:
        """The next block's indices and step sizes; ``static``: copied into the buffers a captured graph reads."""
        if static and self.idx is not None:
            self.idx.copy_(idx)
            self.alpha.copy_(alpha)
        else:
            self.idx = idx.to(self.W.device).clone() if static else idx.to(self.W.device)
            self.alpha = alpha.clone() if static else alpha

    def gradient(self, s: int, X: torch.Tensor, y: torch.Tensor, H: torch.Tensor, h: torch.Tensor, n: int,
                 b: int) -> None:
        """g_s = (1/b) Σ_{i∈B} x_i (x_iᵀ w_s − y_i), or (1/b)(n ∇L(w_s) − Σ_{i∉B} …) for a complement draw."""
        R, p = self.W.shape[1], self.W.shape[2]
        flat = self.idx[s].reshape(-1)
        W = self.W[s]
        XB, yB = X.index_select(0, flat).view(R, -1, p), y.index_select(0, flat).view(R, -1)  # (R, k, p), (R, k)
        r = torch.bmm(XB, W[:, :, None]).squeeze(2) - yB
        part = torch.bmm(r[:, None, :], XB).squeeze(1)  # Σ_i x_i r_i over the drawn samples
        torch.div(part if self.include else n * (W @ H - h) - part, b, out=self.g[s])

    def update(self, s: int, dst: int) -> None:
        """w_{s+1} = w_s − α_s g_s into slot ``dst`` (or the optimizer's step, its state in place)."""
        if self.optimizer is None:
            torch.addcmul(self.W[s], self.g[s], self.alpha[s], value=-1.0, out=self.W[dst])
            return
        if dst != s:
            self.W[dst].copy_(self.W[s])
        self.optimizer.step({"w": self.W[dst]}, {"w": self.g[s]}, self.opt_state, self.alpha[s], 0)

    def steps(self, S: int, X: torch.Tensor, y: torch.Tensor, H: torch.Tensor, h: torch.Tensor, n: int,
              b: int) -> None:
        """The block's S gradients and the S − 1 updates between them (the last update follows its statistics)."""
        for s in range(S):
            self.gradient(s, X, y, H, h, n, b)
            if s < S - 1:
                self.update(s, s + 1)


def gather_source(X: torch.Tensor, device_type: str) -> torch.Tensor:
    """X (n, p) laid out for the step's row gathers on this device type (GATHER_LAYOUT): the same values, row-major
    or column-major; ``X.index_select(0, idx)`` returns the same contiguous (len(idx), p) rows from either."""
    if GATHER_LAYOUT.get(device_type, "rows") == "columns":
        return X.T.contiguous().T
    return X.contiguous()


def chunk_size(R: int, b: int, n: int, p: int, device_type: str = "cpu") -> int:
    """Replicas per chunk on a device of this type ("cpu" or "cuda")."""
    k = max(1, min(b, n - b))
    return int(max(2, min(R, CHUNK_ELEMENTS.get(device_type, CHUNK_ELEMENTS["cpu"]) // (k * (p + 1)))))


@dataclass(frozen=True)
class Population:
    """The data on the device: the rows each step gathers, y, H = XᵀX/n, h = Xᵀy/n, ½ yᵀy/n and Lemma 1's
    P = (1/n) Σ ‖x_i‖² u_i u_iᵀ (u_i = [x_i; −y_i])."""

    Xg: torch.Tensor
    y: torch.Tensor
    H: torch.Tensor
    h: torch.Tensor
    half_yy: float
    P: torch.Tensor

    @classmethod
    def of(cls, X: np.ndarray, y: np.ndarray, dtype: torch.dtype, device: torch.device) -> "Population":
        n = X.shape[0]
        Xt = torch.as_tensor(X, dtype=dtype, device=device)
        yt = torch.as_tensor(y, dtype=dtype, device=device)
        U = torch.cat([Xt, -yt[:, None]], dim=1)
        return cls(gather_source(Xt, device.type), yt, Xt.T @ Xt / n, Xt.T @ yt / n, float((y @ y) / (2 * n)),
                   (U.T * (Xt * Xt).sum(dim=1)) @ U / n)

    @property
    def n(self) -> int:
        return int(self.y.shape[0])


@dataclass(frozen=True)
class RunSpec(ChunkedRun):
    """One replica run (the shared controls and the schedule's segments: runner.ChunkedRun): R replicas from w_0 for
    T = len(alphas) steps, Lemma 1's factor per segment (None: no Rao–Blackwellised estimate)."""

    pop: Population
    w0: torch.Tensor
    alphas: torch.Tensor  # α_t on the device, padded past T so that every block reads STEP_BLOCK of them
    seg_c: list[float | None]


# what each quantity of the table (backend/quantities.py: STEP_QUANTITIES) is over the replicas: the variance of
# g_t or of ∇L(w_t) (vectors in R^p), the mean of L(w_t)
REPORTED = {VAR_G: GroupMoments.variance_estimate, VAR_FULL_GRAD: GroupMoments.variance_estimate,
            LOSS: GroupMoments.mean_estimate}


class RunStats:
    """The run's per-group accumulators (backend.stats.GroupMoments), keyed by the quantity each estimates (REPORTED:
    g_t for var_g, ∇L(w_t) for var_full_grad, L(w_t) for loss), Lemma 1's conditional variance (for var_g_rb), the
    live count per step and the divergence log."""

    def __init__(self, K: int, T1: int, p: int, device: torch.device, rao_blackwell: bool) -> None:
        self.moments = {VAR_G: GroupMoments.zeros(K, T1, device, d=p),
                        VAR_FULL_GRAD: GroupMoments.zeros(K, T1, device, d=p),
                        LOSS: GroupMoments.zeros(K, T1, device, second=False)}
        self.cond = GroupMoments.zeros(K, T1, device, second=False) if rao_blackwell else None
        self.finite = torch.zeros(T1, dtype=torch.float64, device=device)
        self.diverged = DivergenceLog()

    def add_block(self, pop: Population, Wb: torch.Tensor, gb: torch.Tensor, t0: int, div: Divergence,
                  gid, c: float | None) -> None:
        """Steps t0 … t0 + S − 1 of a chunk (``Wb``, ``gb``: (S, Rc, p)): ∇L = H w − h, L, the divergence verdicts
        (finite, L ≤ DIVERGENCE_LOSS), each step merged into its own slot for the replicas still alive."""
        S, Rc = Wb.shape[0], Wb.shape[1]
        WH = Wb @ pop.H
        full = WH - pop.h
        loss = 0.5 * (WH * Wb).sum(dim=2) - Wb @ pop.h + pop.half_yy
        ok = torch.isfinite(gb).all(dim=2) & (loss.abs() <= DIVERGENCE_LOSS) & torch.isfinite(full).all(dim=2)
        alive = div.update_block(ok, t0)  # (S, Rc): finite up to and including each step
        steps = slice(t0, t0 + S)
        self.moments[VAR_G].merge_(GroupMoments.of(gb, gid, alive, dim=1, vector=True), steps)
        self.moments[VAR_FULL_GRAD].merge_(GroupMoments.of(full, gid, alive, dim=1, vector=True), steps)
        self.moments[LOSS].merge_(GroupMoments.of(loss, gid, alive, dim=1, second=False), steps)
        if self.cond is not None:
            Z = torch.cat([Wb, torch.ones((S, Rc, 1), dtype=Wb.dtype, device=Wb.device)], dim=2)
            cond = c * (((Z @ pop.P) * Z).sum(dim=2) - full.square().sum(dim=2))
            self.cond.merge_(GroupMoments.of(cond, gid, alive, dim=1, second=False), steps)
        self.finite[t0:t0 + S] += alive.sum(dim=1)

    def result(self, K: int) -> ReplicaResult:
        curves = {name: estimate(self.moments[name]).curve() for name, estimate in REPORTED.items()}
        if self.cond is not None:
            # Rao–Blackwellised: mean_r var(g_t | F_t^{(r)}) + sample variance_r of E[g_t | F_t^{(r)}] = ∇L(w_t^{(r)}).
            groups_rb = self.cond.means() + self.moments[VAR_FULL_GRAD].variances()
            value = self.cond.pooled_mean() + curves[VAR_FULL_GRAD]["value"]
            curves[VAR_G_RB] = batch_means(groups_rb, value, self.cond.count.cpu().numpy().sum(0)).curve()
        return ReplicaResult(curves=curves, finite_count=self.finite.cpu().numpy().astype(np.int64),
                             diverged_at=self.diverged.first, diverged_replicas=self.diverged.count, groups=K)


def run_replicas(
    X: np.ndarray,
    y: np.ndarray,
    w0: np.ndarray,
    alphas: list[float],
    b: int | list[tuple[int, int]],
    R: int,
    sampler: str,
    seed: int,
    device: torch.device,
    c: float | list[float] | None,
    progress: Callable[[int], None] | None = None,
    cancel=None,
    dtype: torch.dtype = torch.float64,
    cuda_graph: bool = True,
    optimizer: Optimizer | None = None,
) -> ReplicaResult:
    """Run R replicas for T = len(alphas) updates; statistics at t = 0..T. ``c`` enables the Rao–Blackwellised estimate
    (Lemma 1 holds given w_t with momentum too); ``cuda_graph`` (on CUDA) replays each block's steps as a captured
    graph — the same numbers, fewer launches; ``optimizer`` (backend/optim.py's SGD family; None or plain: the fused
    step) steps each replica with its own velocity, starting at 0 in every chunk. ``b`` a list of (b_i, steps_i): a
    batch-size schedule (docs/theory.md §12; Σ steps_i = len(alphas)), its segments one after another in each chunk,
    w and the optimizer's state carried over on the device; ``c`` then one noise factor per segment. One segment runs
    exactly the constant-b run (same streams, same numbers)."""
    n, p = X.shape
    T1 = len(alphas) + 1
    segments, bounds = schedule_segments(b, T1 - 1)
    alphas_t = torch.zeros(T1 + STEP_BLOCK, dtype=dtype, device=device)
    alphas_t[:T1 - 1] = torch.as_tensor(np.asarray(alphas, dtype=np.float64), dtype=dtype)
    spec = RunSpec(R=R, K=n_groups(R), seed=seed, sampler=sampler, device=device, dtype=dtype, cuda_graph=cuda_graph,
                   optimizer=optimizer, progress=progress, cancel=cancel, pop=Population.of(X, y, dtype, device),
                   w0=torch.as_tensor(np.asarray(w0, dtype=np.float64), dtype=dtype, device=device), alphas=alphas_t,
                   segments=segments, bounds=bounds, seg_c=[None] * len(segments) if c is None else
                   (list(c) if isinstance(c, (list, tuple)) else [c]))
    stats = RunStats(spec.K, T1, p, device, c is not None)
    for chunk in chunks(R, min(chunk_size(R, bj, n, p, device.type) for bj, _ in segments)):
        stats.diverged.add(run_blocks(spec, chunk, ChunkSteps(spec, chunk, stats), block=STEP_BLOCK))
    return stats.result(spec.K)


def segment_block(spec: RunSpec, chunk, j: int, prev: StepBlock | None) -> tuple[StepBlock, object, Replay]:
    """Segment j of a chunk: its stream (segment 0 that of a constant b's run, each later one its own), its step
    block starting from w_0 or where the previous segment ended (w_a and the optimizer's state, on the device), and
    the block's replay (a captured CUDA graph, or the same code eagerly)."""
    bj = spec.segments[j][0]
    gen = torch.Generator(device=spec.device)
    gen.manual_seed(seed_for(spec.seed, bj, chunk.number) if j == 0 else seed_for(spec.seed, bj, chunk.number, j))
    draw = make_sampler(spec.sampler, spec.pop.n, bj, chunk.size, gen, spec.device, block=STEP_BLOCK,
                        numpy_draws=True)
    block = StepBlock(STEP_BLOCK, chunk.size, spec.pop.H.shape[0], spec.dtype, spec.device, draw.includes)
    block.use_optimizer(spec.optimizer)
    if prev is None:
        block.W[0] = spec.w0  # w_t lives in the block's slot for step t; each update writes the next slot
    else:
        block.W[0].copy_(prev.W[0])
        for name, buf in block.opt_state.items():
            buf.copy_(prev.opt_state[name])
    pop = spec.pop
    replay = Replay(lambda: block.steps(STEP_BLOCK, pop.Xg, pop.y, pop.H, pop.h, pop.n, bj), spec.device,
                    spec.cuda_graph)
    return block, draw, replay


class ChunkSteps:
    """A chunk's step code for the shared loop (runner.run_blocks: segments, blocks of STEP_BLOCK steps, cancel,
    progress, the divergence record): every replica steps, one that diverged is left out of the statistics from then
    on."""

    def __init__(self, spec: RunSpec, chunk, stats: RunStats) -> None:
        self.spec, self.chunk, self.stats = spec, chunk, stats
        self.gid = group_ids(chunk.start, chunk.stop, spec.R, spec.K, spec.device)
        self.block: StepBlock | None = None

    def start_segment(self, j: int, div: Divergence) -> None:
        """Segment j's stream, step block (from where the previous one ended) and replay (segment_block)."""
        self.block, self.draw, self.replay = segment_block(self.spec, self.chunk, j, self.block)

    def run_block(self, j: int, t0: int, t1: int, div: Divergence) -> int:
        """Steps t0 … t1 − 1: the block's indices and step sizes, its gradients and updates, their statistics, and
        the update w_{t1} into slot 0 for the next block."""
        spec, pop, block = self.spec, self.spec.pop, self.block
        S = t1 - t0
        block.load(self.draw.draw_steps(), spec.alphas[t0:t0 + STEP_BLOCK], static=self.replay.enabled)
        if S == STEP_BLOCK:
            self.replay()  # on CUDA a captured graph of the block's steps; elsewhere the same code, eagerly
        else:
            block.steps(S, pop.Xg, pop.y, pop.H, pop.h, pop.n, spec.segments[j][0])
        self.stats.add_block(pop, block.W[:S], block.g[:S], t0, div, self.gid, spec.seg_c[j])
        if t1 < spec.T1:
            block.update(S - 1, 0)
        return S


def estimate_cost(R: int, T: int, b: int, n: int, p: int, device_type: str = "cpu") -> dict[str, float]:
    """Rough memory (bytes) and time (seconds, 2 CPU cores) of one batch size's run on a device of this type, for
    the resource guard."""
    k = max(1, min(b, n - b))
    Rc = chunk_size(R, b, n, p, device_type)
    K = n_groups(R)
    # the gathered batches, the accumulators, a block's weights, gradients and statistics, and the sampler's block
    # of draws (Floyd: k per row; the stream: m per row, sorted); peak RSS on a CPU, largest chunks of Graduate
    # Admission: 3.29 / 1.26 / 1.86 / 3.03 GB at b = 4 / 16 / 250 / 500, modelled 4.08 / 1.81 / 2.21 / 3.48
    m = _stream_length(k, n)
    sampler_words = 3 * k if k <= FLOYD_MAX else 5 * m
    memory = 8.0 * (Rc * k * (p + 2) * 3 + 2 * K * (T + 1) * (p + 2) + STEP_BLOCK * Rc * (8 * p + sampler_words))
    chunks = math.ceil(R / Rc)
    # per step: fixed overhead, the gathers and products, and the sampler (Floyd's O(k²) comparisons for k ≤ 32, the
    # stream's sort above); calibrated on 2 CPU cores (R = 1 000: ≈ 0.8 / 4.9 / 25 ms measured at b = 16 / 64 / 256,
    # 1.0 / 4.4 / 24 ms modelled); the fixed part from long runs at small b (benchmarks/bench_estimates.py: b = 2,
    # R = 500, 2 000 steps: 2.6 CPU-s on the critical path, ≈ 1.3 ms a step, on a loaded box)
    sampler_s = 1e-9 * Rc * k * k if k <= FLOYD_MAX else 5.5e-9 * Rc * m * math.log2(m)
    time_s = chunks * (T + 1) * (8e-4 + 4e-9 * Rc * k * (p + 1) + sampler_s)
    return {"memory_bytes": memory, "seconds": time_s, "flops": 8.0 * R * (T + 1) * k * (p + 2),
            "steps": float(chunks * (T + 1))}

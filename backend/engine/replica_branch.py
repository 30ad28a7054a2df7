"""Replica branches of a functional model for the critical batch size (docs/theory.md §11, "Replica branches"): the
MLP and your-own-model settings. R replicas of one initial weight w_0 train with the reference batch B (the config's
sampler, schedule and optimizer, through vmap(grad) and backend/optim.py); each replica's state at a checkpoint t_c
(in SGD steps) is a draw of (w_{t_c}, optimizer state) given F_0, so continuing every replica with batch k·B and the
constant step size α_{t_c}·f(k) for ⌊S/(kB)⌋ steps — optimizer state and step count carried over — gives an unbiased
estimate of the branch's E L with its SE across replicas.

Lanes (rule × checkpoint) × replicas are one leading dimension (per-replica step sizes and step counts); one loop over
the branch batch sizes, one over steps. At each checkpoint, per replica r (each with its own independent index draws,
so that the replicas' SE counts the subsampling error too):
- tr Σ(w) = (1/n) Σ_i ‖g_i − G‖² and ‖G‖² from a uniform m-subset S₁ (m = noise_samples; all n points, exactly, when
  m ≥ n): (n − 1)/n · S² and ‖∇L_{S₁}‖² − c_m tr Σ̂ (backend/lemma1.py), unbiased;
- ∇LᵀH∇L and tr(HΣ) = (1/n) Σ_i g_iᵀ H g_i − GᵀHG with H the Hessian of the training loss: Ĥ that of an independent
  m-subset S₃, ∇LᵀH∇L ≈ ∇L_{S₁}ᵀ Ĥ ∇L_{S₂} (S₂ a third independent m-subset; S₁ = S₂ = S₃ = all points when m ≥ n,
  exact), and (1/n) Σ_i g_iᵀHg_i ≈ the mean of g_jᵀ Ĥ g_j over NOISE_SAMPLES uniform points j — unbiased, as the
  factors are independent. Ĥv by reverse-over-reverse autodiff (torch.func.grad of ∇L_{S₃}·v), vmapped over replicas:
  NOISE_SAMPLES + 1 Hessian-vector products of m points per replica and checkpoint. A model whose operations have no
  second derivative in torch.func leaves the Hessian terms NaN (b_noise unavailable; ``hessian`` False).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from torch.func import grad, vmap

from backend import lemma1
from backend.engine.noise import noise_chunk
from backend.engine.replicas import Replicas
from backend.engine.runner import precision, seed_for
from backend.engine.samplers import batch_indices, make_sampler
from backend.optim import Optimizer

NOISE_SAMPLES = 4  # uniform points j per replica for (1/n) Σ_i g_iᵀ H g_i


@dataclass
class BranchTask:
    """A functional model and its data: ``rep`` (forward, batch-mean loss, per-sample gradients over replicas),
    training tensors (the gradient noise's population), the points the loss L is reported on, w_0 (unstacked)."""

    rep: Replicas
    Xtr: torch.Tensor
    Ytr: torch.Tensor
    Xev: torch.Tensor
    Yev: torch.Tensor
    w0: dict[str, torch.Tensor]
    sampler: str
    evaluate: Callable  # (params) → (N,) mean loss on (Xev, Yev), float64
    arithmetic: str = "float32"  # the training steps' precision (runner.precision); moments and losses in full


@dataclass
class Reference:
    """The reference run's state at each checkpoint (params, optimizer state: (R, …) each) and its moments."""

    states: list[tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]]
    moments: list[dict[str, torch.Tensor]]
    hessian: bool


def _subset(n: int, m: int, R: int, gen: torch.Generator, device: torch.device) -> torch.Tensor:
    """(R, m) a uniform m-subset of the n points per replica; every point (in order) when m ≥ n."""
    if m >= n:
        return torch.arange(n, device=device).expand(R, n)
    return batch_indices(make_sampler("without_replacement", n, m, R, gen, device).draw(), n)


def _dot(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> torch.Tensor:
    """Per replica Σ_k ⟨a_k, b_k⟩ in float64: (N,)."""
    return sum((a[k].to(torch.float64) * b[k].to(torch.float64)).reshape(a[k].shape[0], -1).sum(1) for k in a)


def _batch_grad(rep: Replicas, params, X, Y, idx) -> dict[str, torch.Tensor]:
    """∇L_S(w_r) per replica on its own index set idx[r] (the batch-mean loss)."""
    return rep.grad_and_loss(params, X[idx], Y[idx])[0]


def checkpoint_moments(task: BranchTask, params: dict[str, torch.Tensor], m: int, gen: torch.Generator
                       ) -> tuple[dict[str, torch.Tensor], bool]:
    """Per replica (R,) float64: L, ‖∇L‖², tr Σ, ∇LᵀH∇L, tr(HΣ) as the module doc; and whether the Hessian-vector
    products ran (else the last two are NaN)."""
    rep, X, Y = task.rep, task.Xtr, task.Ytr
    n = X.shape[0]
    R = next(iter(params.values())).shape[0]
    device = X.device
    m = min(m, n)
    S1 = _subset(n, m, R, gen, device)
    P = sum(v[0].numel() for v in params.values())
    chunk = noise_chunk(R, P)
    per_sample = vmap(rep.per_sample, in_dims=(0, 0, 0))  # replica r's gradients on its own points
    sums = {k: torch.zeros(v.shape, dtype=torch.float64, device=device) for k, v in params.items()}
    sq = torch.zeros(R, dtype=torch.float64, device=device)
    for s in range(0, m, chunk):
        idx = S1[:, s:s + chunk]
        g = rep.in_blocks(per_sample, params, X[idx], Y[idx])  # {name: (R, c, …)}
        for k, v in g.items():
            sums[k] += v.sum(1, dtype=torch.float64)
            sq += v.reshape(R, v.shape[1], -1).to(torch.float64).square().sum((1, 2))
    G1 = {k: v / m for k, v in sums.items()}
    G1sq = _dot(G1, G1)
    trace = lemma1.population_trace((sq - m * G1sq) / (m - 1), n) if m > 1 else torch.zeros_like(sq)
    grad2 = lemma1.squared_full_gradient(G1sq, trace, m, n)
    out = {"loss": task.evaluate(params), "grad2": grad2, "trace": trace}
    nan = torch.full_like(sq, float("nan"))
    try:
        h_grad2, h_diag = _hessian_terms(task, params, G1, m, gen)
        out.update(h_grad2=h_grad2, h_trace=h_diag - h_grad2)
        return out, True
    except (RuntimeError, NotImplementedError) as e:  # an operation without a second derivative in torch.func
        if isinstance(e, torch.cuda.OutOfMemoryError):  # not a missing derivative: the run's own failure
            raise
        out.update(h_grad2=nan, h_trace=nan.clone())
        return out, False


def _hessian_terms(task: BranchTask, params, G1: dict[str, torch.Tensor], m: int, gen: torch.Generator
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """(∇L_{S₁}ᵀ Ĥ ∇L_{S₂}, mean_j g_jᵀ Ĥ g_j) per replica, Ĥ the Hessian of the loss on S₃ (module doc)."""
    rep, X, Y = task.rep, task.Xtr, task.Ytr
    n = X.shape[0]
    R = G1[next(iter(G1))].shape[0]
    device = X.device
    if m >= n:
        S3 = _subset(n, m, R, gen, device)
        G2 = G1
    else:
        G2 = _batch_grad(rep, params, X, Y, _subset(n, m, R, gen, device))
        S3 = _subset(n, m, R, gen, device)
    J = torch.randint(0, n, (R, NOISE_SAMPLES), generator=gen, device=device)
    gj = rep.in_blocks(vmap(rep.per_sample, in_dims=(0, 0, 0)), params, X[J], Y[J])  # {name: (R, q, …)}

    def hvp(p, x, y, v):  # Ĥ v for one replica: the gradient of ∇L_S(p) · v
        return grad(lambda q: sum((a * v[k]).sum() for k, a in grad(rep.loss)(q, x, y).items()))(p)

    batched = vmap(hvp)
    XS, YS = X[S3], Y[S3]
    dtype = next(iter(params.values())).dtype
    cast = lambda d: {k: v.to(dtype) for k, v in d.items()}  # noqa: E731
    h_grad2 = _dot(G1, rep.in_blocks(batched, params, XS, YS, cast(G2)))
    diag = torch.zeros(R, dtype=torch.float64, device=device)
    for j in range(NOISE_SAMPLES):  # directions, not replicas: each one Ĥv over every replica at once
        v = {k: g[:, j] for k, g in gj.items()}
        diag += _dot(v, rep.in_blocks(batched, params, XS, YS, v))
    return h_grad2, diag / NOISE_SAMPLES


def reference(task: BranchTask, opt: Optimizer, alphas: list[float], b: int, R: int, seed: int,
              checkpoints: list[int], noise_samples: int, device: torch.device,
              advance: Callable[[int], None] | None = None) -> Reference:
    """R replicas of w_0 with batch b along ``alphas`` (the config's sampler and optimizer), their states and
    moments kept at the checkpoints (steps); ``advance(1)`` after each step."""
    n = task.Xtr.shape[0]
    params = {k: v.expand(R, *v.shape).clone() for k, v in task.w0.items()}
    state = opt.init(params)
    draw = make_sampler(task.sampler, n, b, R, torch.Generator(device=device).manual_seed(seed_for(seed, b, 1)),
                        device)
    probe = torch.Generator(device=device).manual_seed(seed_for(seed, b, 2))
    states, moments, hessian = [], [], True
    for t in range(max(checkpoints) + 1):
        if t in checkpoints:
            states.append(({k: v.clone() for k, v in params.items()}, {k: v.clone() for k, v in state.items()}))
            mom, ok = checkpoint_moments(task, params, noise_samples, probe)
            moments.append(mom)
            hessian = hessian and ok
        if t < max(checkpoints):
            idx = batch_indices(draw.draw(), n)
            with precision(task.arithmetic, device):
                g, _ = task.rep.grad_and_loss(params, task.Xtr[idx], task.Ytr[idx])
            opt.step(params, g, state, alphas[t], t)
            if advance is not None:
                advance(1)
    return Reference(states, moments, hessian)


def branch(task: BranchTask, ref: Reference, opt: Optimizer, b: int, lrs: np.ndarray, checkpoints: list[int],
           steps: int, seed: int, advance: Callable[[int], None] | None = None) -> torch.Tensor:
    """Every replica of every checkpoint continued for ``steps`` steps of batch b (the config's sampler, one fresh
    generator); lane (r, c) at the constant step size lrs[r, c], its optimizer's step count starting at t_c;
    ``advance(1)`` after each step. Returns the final loss per replica, (rules, C, R) float64 (non-finite:
    diverged)."""
    n_rules, C = lrs.shape
    R = next(iter(ref.states[0][0].values())).shape[0]
    n = task.Xtr.shape[0]

    def stack(i: int) -> dict[str, torch.Tensor]:
        return {k: torch.cat([s[i][k] for s in ref.states]).repeat(n_rules, *([1] * (v.dim() - 1)))
                for k, v in ref.states[0][i].items()}

    params, state = stack(0), stack(1)
    N = n_rules * C * R
    device = task.Xtr.device
    dtype = next(iter(params.values())).dtype
    lane = lambda a: torch.as_tensor(np.repeat(np.asarray(a, dtype=np.float64).reshape(-1), R), dtype=dtype,  # noqa
                                     device=device)
    lr = lane(lrs)
    t0 = torch.as_tensor(np.repeat(np.broadcast_to(np.asarray(checkpoints, dtype=np.float64), (n_rules, C)).reshape(-1),
                                   R), dtype=torch.float64, device=device)  # Adam's bias correction in float64
    draw = make_sampler(task.sampler, n, b, N, torch.Generator(device=device).manual_seed(seed_for(seed, b, 3)),
                        device)
    for s in range(steps):
        idx = batch_indices(draw.draw(), n)
        with precision(task.arithmetic, device):
            g, _ = task.rep.grad_and_loss(params, task.Xtr[idx], task.Ytr[idx])
        opt.step(params, g, state, lr, t0 + s)
        if advance is not None:
            advance(1)
    return task.evaluate(params).reshape(n_rules, C, R)

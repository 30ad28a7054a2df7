"""Replica branches of the deep linear network (docs/theory.md §11, "Replica branches"): every replica's state at a
checkpoint t_c of the reference run (batch B, the config's schedule and optimizer) is a draw of (W_{t_c}, v_{t_c}),
so continuing every replica with batch k·B and the constant step size α_{t_c}·f(k) for ⌊S/(kB)⌋ steps — optimizer
state carried over — gives an unbiased estimate of the branch's E L, with its SE across replicas.

Lanes (rule × checkpoint) × replicas are one leading tensor dimension; one loop over the branch batch sizes k·B (each
has its own Σ̂ draw shape), one over steps, no host synchronisation inside it. At the checkpoints the four
expectations of McCandlish et al.'s noise scales are estimated per replica: tr Σ(W) and ‖∇L(W)‖² in closed form
(Gaussian inputs: tr Σ_k = ‖P_k R_k‖² + ‖P_k‖²‖R_k‖², the engine's conditional variance at b = 1), ∇LᵀH∇L in
closed form (``hessian_form``), and tr(HΣ) = E_x (g_x − ∇L)ᵀ H (g_x − ∇L) by ``NOISE_SAMPLES`` fresh samples x per
replica (unbiased; its sampling error is in the replicas' SE).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from backend.engine.deep_linear import (DIVERGENCE_LOSS, SigmaSampler, _backprop, _forward, _gradient, _layer_params,
                                        _norm2, _population)
from backend.engine.runner import seed_for
from backend.optim import Optimizer

NOISE_SAMPLES = 4  # fresh samples x per replica for tr(HΣ)


def hessian_form(Ws: list[torch.Tensor], T_prod: torch.Tensor, Vs: list[torch.Tensor]) -> torch.Tensor:
    """vᵀ H v per replica for L(W) = ½‖W_d⋯W_1 − T*‖² in the direction V: with M(s) = Π_k (W_k + s V_k),
    d²/ds² L at s = 0 is ‖M'‖² + ⟨M − T*, M''⟩, M' and M'' by the product rule (M'' = W_k M'' + 2 V_k M')."""
    M, M1, M2 = Ws[0], Vs[0], torch.zeros_like(Ws[0])
    for W, V in zip(Ws[1:], Vs[1:]):
        M, M1, M2 = W @ M, W @ M1 + V @ M, W @ M2 + 2 * (V @ M1)
    return _norm2(M1) + ((M - T_prod) * M2).sum(dim=(1, 2))


def per_sample_gradients(Ws: list[torch.Tensor], T_prod: torch.Tensor, X: torch.Tensor) -> list[torch.Tensor]:
    """g_{x,k} = P_k x (R_kᵀ x)ᵀ, the gradient of ½‖Δx‖² for each row x of X (R, m, p): (R, m, p_k, p_{k−1})."""
    _, Ps, Rs, _ = _forward(Ws, T_prod)
    out = []
    for P, Rm in zip(Ps, Rs):
        left = X @ P.transpose(1, 2)  # (R, m, p_k)
        right = X if Rm is None else X @ Rm  # (R, m, p_{k−1})
        out.append(left[..., :, None] * right[..., None, :])
    return out


def checkpoint_moments(Ws: list[torch.Tensor], T_prod: torch.Tensor, gen: torch.Generator) -> dict[str, torch.Tensor]:
    """Per replica: L, ‖∇L‖², tr Σ, ∇LᵀH∇L (closed forms) and an unbiased draw of tr(HΣ) (module doc), float64."""
    loss, fulls, conds = _population(Ws, T_prod, 1)
    R, p, m = Ws[0].shape[0], Ws[0].shape[2], NOISE_SAMPLES
    X = torch.randn((R, m, p), generator=gen, device=Ws[0].device, dtype=Ws[0].dtype)
    devs = [(g - G[:, None]).reshape(R * m, *G.shape[1:]) for g, G in zip(per_sample_gradients(Ws, T_prod, X), fulls)]
    rep = [W.repeat_interleave(m, dim=0) for W in Ws]
    h_trace = hessian_form(rep, T_prod, devs).reshape(R, m).mean(dim=1)
    f64 = lambda x: x.to(torch.float64)  # noqa: E731
    return {"loss": f64(loss), "grad2": f64(sum(_norm2(G) for G in fulls)), "trace": f64(sum(conds)),
            "h_grad2": f64(hessian_form(Ws, T_prod, fulls)), "h_trace": f64(h_trace)}


@dataclass
class Reference:
    """The reference run's state at each checkpoint (weights and optimizer state, (R, …) each) and its moments."""

    states: list[tuple[list[torch.Tensor], dict[str, torch.Tensor]]]
    moments: list[dict[str, torch.Tensor]]


def _step(Ws: list[torch.Tensor], state: dict, opt: Optimizer, T_b: torch.Tensor, Z: torch.Tensor, b: int,
          lr: float | torch.Tensor) -> None:
    """One SGD-family step of every replica in place (g_k = δ_kᵀ a_{k−1} / b, backend/optim.py's step)."""
    acts, deltas, _ = _backprop(Ws, T_b, Z)
    grads = {f"W{k + 1}": _gradient(acts, deltas, k, b) for k in range(len(Ws))}
    opt.step(_layer_params(Ws), grads, state, lr, 0)


def reference(W0: list[np.ndarray], T_prod: torch.Tensor, alphas: list[float], b: int, R: int, seed: int,
              checkpoints: list[int], opt: Optimizer, device: torch.device, dtype: torch.dtype,
              advance: Callable[[int], None] | None = None) -> Reference:
    """R replicas of batch b along ``alphas`` from W0 (already width-reduced), their states kept at the checkpoints;
    ``advance(1)`` after each step."""
    Ws = [torch.as_tensor(W, dtype=dtype, device=device).expand(R, *W.shape).clone() for W in W0]
    state = opt.init(_layer_params(Ws))
    sig = SigmaSampler(T_prod.shape[1], b, R, seed_for(seed, b, 0), device, dtype)
    gen = torch.Generator(device=device)
    gen.manual_seed(seed_for(seed, b, 1))
    T_b = T_prod.expand(R, *T_prod.shape)
    states, moments = [], []
    for t in range(max(checkpoints) + 1):
        if t in checkpoints:
            states.append(([W.clone() for W in Ws], {k: v.clone() for k, v in state.items()}))
            moments.append(checkpoint_moments(Ws, T_prod, gen))
        if t < max(checkpoints):
            _step(Ws, state, opt, T_b, sig.draw_factor(), b, alphas[t])
            if advance is not None:
                advance(1)
    return Reference(states, moments)


def branch(ref: Reference, T_prod: torch.Tensor, b: int, lrs: np.ndarray, steps: int, seed: int, opt: Optimizer,
           advance: Callable[[int], None] | None = None) -> torch.Tensor:
    """Every replica of every checkpoint continued for ``steps`` steps of batch b; ``lrs`` (rules, C): lane (r, c)
    at step size lrs[r, c]; ``advance(1)`` after each step. Returns the final loss per replica, (rules, C, R) float64 (non-finite: diverged)."""
    n_rules, C = lrs.shape
    R = ref.states[0][0][0].shape[0]
    Ws = [torch.cat([s[0][k] for s in ref.states]).repeat(n_rules, *([1] * 2)) for k in range(len(ref.states[0][0]))]
    state = {key: torch.cat([s[1][key] for s in ref.states]).repeat(n_rules, 1, 1) for key in ref.states[0][1]}
    N = Ws[0].shape[0]
    lr = torch.as_tensor(np.repeat(np.asarray(lrs, dtype=np.float64).reshape(-1), R), dtype=Ws[0].dtype,
                         device=Ws[0].device)[:, None, None]
    sig = SigmaSampler(T_prod.shape[1], b, N, seed_for(seed, b, 2), Ws[0].device, Ws[0].dtype)
    T_b = T_prod.expand(N, *T_prod.shape)
    with torch.no_grad():
        for _ in range(steps):
            _step(Ws, state, opt, T_b, sig.draw_factor(), b, lr)
            if advance is not None:
                advance(1)
        loss = 0.5 * _norm2(_forward(Ws, T_prod)[0])
    return loss.to(torch.float64).reshape(n_rules, C, R)


def teacher_product(T: list[np.ndarray], device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """T* = T_d⋯T_1 on the device."""
    out = torch.eye(T[0].shape[1], dtype=dtype, device=device)
    for M in T:
        out = torch.as_tensor(np.asarray(M, dtype=np.float64), dtype=dtype, device=device) @ out
    return out


def alive(loss: torch.Tensor) -> torch.Tensor:
    """The replicas that did not diverge (finite loss ≤ the engine's DIVERGENCE_LOSS)."""
    return torch.isfinite(loss) & (loss <= DIVERGENCE_LOSS)


"""The per-sample quantities behind Lemma 1's one-step noise (docs/theory.md §3): for every replica, the sample
variance S² of the per-sample gradients on a subsample S and the subsample gradient ∇L_S, with memory bounded
whatever |S| — by vmapped per-sample gradients in chunks of points (any model), or for a Linear–ReLU stack from one
forward and backward pass without forming them (‖δ_i a_iᵀ‖² = ‖δ_i‖²‖a_i‖²)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from backend.engine import linear_relu
from backend.engine.runner import ACTIVATION_ELEMENTS

if TYPE_CHECKING:
    from backend.engine.replicas import Replicas


PER_SAMPLE_ELEMENTS = 2**27  # per-sample gradient entries held at once (0.5 GiB in float32)


def noise_chunk(N: int, P: int) -> int:
    """Training points per pass of per-sample gradients: N replicas × P parameters each, at most PER_SAMPLE_ELEMENTS
    entries (at least one point, at most 64)."""
    return max(1, min(64, PER_SAMPLE_ELEMENTS // max(1, N * P)))


def noise_terms(rep: "Replicas", params, XS: torch.Tensor, YS: torch.Tensor, chunk: int | None = None):
    """Per replica: tr Σ(w) = (1/(m−1)) Σ_i ‖∇L_i − ∇L_S‖² and the subsample gradient ∇L_S (flattened, float64).

    Per-sample gradients are formed ``chunk`` points at a time (default: noise_chunk), parameter by parameter, and
    reduced at once: memory O(N·P·chunk) plus the (N, P) float64 sum, whatever m."""
    N = next(iter(params.values())).shape[0]
    P = sum(v[0].numel() for v in params.values())
    chunk = chunk or noise_chunk(N, P)
    m = XS.shape[0]
    sums: dict[str, torch.Tensor] = {}
    sq = torch.zeros(N, dtype=torch.float64, device=XS.device)
    for s in range(0, m, chunk):
        per = rep.per_sample_replicas(params, XS[s:s + chunk], YS[s:s + chunk])  # {name: (N, c, …)}
        for name, g in per.items():
            g = g.reshape(N, g.shape[1], -1)
            part = g.sum(1, dtype=torch.float64)
            sums[name] = part if name not in sums else sums[name] + part
            sq += torch.linalg.vector_norm(g, dim=(1, 2), dtype=torch.float64).square()
        del per
    mean = torch.cat([sums[name] for name in params], dim=1) / m
    trace = (sq - m * mean.square().sum(1)) / (m - 1)
    return trace, mean


def _linear_relu_passes(params: dict[str, torch.Tensor], XS: torch.Tensor, YS: torch.Tensor, chunk: int | None):
    """For make_model's Linear–ReLU stack with the cross-entropy, ``chunk`` points of S at a time: yields
    (per-sample squared gradient norms (N, c) float64, {name: the chunk's summed gradient (N, …) float64}).

    A Linear layer's per-sample gradient is the outer product δ_{l,i} a_{l−1,i}ᵀ (bias: δ_{l,i}), δ the back-propagated
    error of the per-sample loss (backend.engine.linear_relu's pass: softmax − one-hot at the logits, below
    δ_l = (δ_{l+1} W_{l+1}) ⊙ 1[z_l > 0]), so ‖∇L_i‖² = Σ_l ‖δ_{l,i}‖² (‖a_{l−1,i}‖² + 1) and
    Σ_i ∇L_i = Σ_l [δ_lᵀ a_{l−1}, Σ_i δ_{l,i}]: one forward and one backward pass per replica, O(N·m·P), never N·m·P
    stored per-sample entries (default chunk: as many points as ACTIVATION_ELEMENTS allows)."""
    names = list(params)
    stack = linear_relu.layers(params)
    N, m, L = stack[0][0].shape[0], XS.shape[0], len(stack)
    width_sum = XS.shape[1] + sum(W.shape[1] for W, _ in stack)
    chunk = chunk or max(1, min(m, ACTIVATION_ELEMENTS // (3 * N * width_sum)))
    for s in range(0, m, chunk):
        x, y = XS[s:s + chunk], YS[s:s + chunk]
        acts, zs = linear_relu.forward(stack, x)
        delta = linear_relu.output_error(zs[-1], y)
        sq = torch.zeros(N, len(y), dtype=torch.float64, device=XS.device)
        sums: dict[str, torch.Tensor] = {}
        for ell in range(L - 1, -1, -1):
            a = acts[ell]
            a2 = a.square().sum(-1, dtype=torch.float64) + 1  # (c,) for the shared input, else (N, c)
            sq += delta.square().sum(-1, dtype=torch.float64) * a2
            sums[names[2 * ell]] = torch.matmul(delta.transpose(1, 2), a).to(torch.float64)
            sums[names[2 * ell + 1]] = delta.sum(1, dtype=torch.float64)
            if ell > 0:
                delta = torch.bmm(delta, stack[ell][0]) * (zs[ell - 1] > 0)
        yield sq, sums


def linear_relu_per_sample_sq_norms(params: dict[str, torch.Tensor], XS: torch.Tensor, YS: torch.Tensor,
                                    chunk: int | None = None) -> torch.Tensor:
    """(N, m): ‖∇L_i(w_r)‖² of every replica r on every point i of S (see _linear_relu_passes)."""
    return torch.cat([sq for sq, _ in _linear_relu_passes(params, XS, YS, chunk)], dim=1)


def linear_relu_noise_terms(params: dict[str, torch.Tensor], XS: torch.Tensor, YS: torch.Tensor,
                            chunk: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """noise_terms for make_model's Linear–ReLU stack with the cross-entropy, without forming per-sample gradients
    (_linear_relu_passes): S² = (Σ_i ‖∇L_i‖² − m‖∇L_S‖²)/(m − 1) and ∇L_S. Same sums as noise_terms."""
    N, m = next(iter(params.values())).shape[0], XS.shape[0]
    f64 = dict(dtype=torch.float64, device=XS.device)
    sums = {name: torch.zeros(v.shape, **f64) for name, v in params.items()}
    sq = torch.zeros(N, **f64)
    for part_sq, part in _linear_relu_passes(params, XS, YS, chunk):
        sq += part_sq.sum(1)
        for name, v in part.items():
            sums[name] += v
    mean = torch.cat([sums[name].reshape(N, -1) for name in params], dim=1) / m
    trace = (sq - m * mean.square().sum(1)) / (m - 1)
    return trace, mean

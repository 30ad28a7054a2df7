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


def sample_trace(sq: torch.Tensor, mean: torch.Tensor) -> torch.Tensor:
    """S² = (1/(m−1)) Σ_i ‖∇L_i − ∇L_S‖² = (Σ_i ‖∇L_i‖² − m‖∇L_S‖²)/(m − 1) from the per-sample squared norms
    sq (N, m) and the subsample gradient mean (N, P)."""
    m = sq.shape[1]
    return (sq.sum(1) - m * mean.square().sum(1)) / (m - 1)


def per_sample_terms(rep: "Replicas", params, XS: torch.Tensor, YS: torch.Tensor, chunk: int | None = None
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per replica and point of S: ‖∇L_i(w_r)‖² (N, m), and the subsample gradient ∇L_S(w_r) (N, P), float64.

    Per-sample gradients are formed ``chunk`` points at a time (default: noise_chunk), parameter by parameter, and
    reduced at once: memory O(N·P·chunk) plus the (N, P) float64 sum, whatever m."""
    N = next(iter(params.values())).shape[0]
    P = sum(v[0].numel() for v in params.values())
    chunk = chunk or noise_chunk(N, P)
    m = XS.shape[0]
    sums: dict[str, torch.Tensor] = {}
    sq = torch.zeros(N, m, dtype=torch.float64, device=XS.device)
    for s in range(0, m, chunk):
        per = rep.per_sample_replicas(params, XS[s:s + chunk], YS[s:s + chunk])  # {name: (N, c, …)}
        for name, g in per.items():
            g = g.reshape(N, g.shape[1], -1)
            part = g.sum(1, dtype=torch.float64)
            sums[name] = part if name not in sums else sums[name] + part
            sq[:, s:s + chunk] += torch.linalg.vector_norm(g, dim=2, dtype=torch.float64).square()
        del per
    return sq, torch.cat([sums[name] for name in params], dim=1) / m


def per_sample_dots(rep: "Replicas", params, XS: torch.Tensor, YS: torch.Tensor, v: torch.Tensor,
                    chunk: int | None = None) -> torch.Tensor:
    """(N, m): ∇L_i(w_r) · v_r for every replica r and point i of S, v (N, P) flattened in the parameters' order
    (per-sample gradients ``chunk`` points at a time, as per_sample_terms)."""
    N = next(iter(params.values())).shape[0]
    P = sum(p[0].numel() for p in params.values())
    chunk = chunk or noise_chunk(N, P)
    m = XS.shape[0]
    sizes = [p[0].numel() for p in params.values()]
    parts = dict(zip(params, torch.split(v, sizes, dim=1)))
    out = torch.zeros(N, m, dtype=torch.float64, device=XS.device)
    for s in range(0, m, chunk):
        per = rep.per_sample_replicas(params, XS[s:s + chunk], YS[s:s + chunk])
        for name, g in per.items():
            out[:, s:s + chunk] += torch.einsum("ncp,np->nc", g.reshape(N, g.shape[1], -1).to(torch.float64),
                                                parts[name])
        del per
    return out


def noise_terms(rep: "Replicas", params, XS: torch.Tensor, YS: torch.Tensor, chunk: int | None = None):
    """Per replica: S² = (1/(m−1)) Σ_i ‖∇L_i − ∇L_S‖² and the subsample gradient ∇L_S (flattened, float64)."""
    sq, mean = per_sample_terms(rep, params, XS, YS, chunk)
    return sample_trace(sq, mean), mean


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


def linear_relu_per_sample_terms(params: dict[str, torch.Tensor], XS: torch.Tensor, YS: torch.Tensor,
                                 chunk: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """per_sample_terms for make_model's Linear–ReLU stack with the cross-entropy, without forming per-sample
    gradients (_linear_relu_passes): ‖∇L_i‖² (N, m) and ∇L_S (N, P). Same sums as per_sample_terms."""
    N, m = next(iter(params.values())).shape[0], XS.shape[0]
    f64 = dict(dtype=torch.float64, device=XS.device)
    sums = {name: torch.zeros(v.shape, **f64) for name, v in params.items()}
    sq = []
    for part_sq, part in _linear_relu_passes(params, XS, YS, chunk):
        sq.append(part_sq)
        for name, v in part.items():
            sums[name] += v
    return torch.cat(sq, dim=1), torch.cat([sums[name].reshape(N, -1) for name in params], dim=1) / m


def linear_relu_noise_terms(params: dict[str, torch.Tensor], XS: torch.Tensor, YS: torch.Tensor,
                            chunk: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """noise_terms for make_model's Linear–ReLU stack: S² = (Σ_i ‖∇L_i‖² − m‖∇L_S‖²)/(m − 1) and ∇L_S."""
    sq, mean = linear_relu_per_sample_terms(params, XS, YS, chunk)
    return sample_trace(sq, mean), mean


def linear_relu_per_sample_dots(params: dict[str, torch.Tensor], XS: torch.Tensor, YS: torch.Tensor,
                                v: torch.Tensor, chunk: int | None = None) -> torch.Tensor:
    """per_sample_dots for make_model's Linear–ReLU stack, without per-sample gradients: with V_l, v_l the parts of
    v for layer l's weight and bias, ∇L_i · v = Σ_l δ_{l,i} · (V_l a_{l−1,i} + v_l) (one forward and backward pass
    per replica, as _linear_relu_passes)."""
    names = list(params)
    stack = linear_relu.layers(params)
    N, m, L = stack[0][0].shape[0], XS.shape[0], len(stack)
    sizes = [p[0].numel() for p in params.values()]
    parts = dict(zip(names, torch.split(v, sizes, dim=1)))
    width_sum = XS.shape[1] + sum(W.shape[1] for W, _ in stack)
    chunk = chunk or max(1, min(m, ACTIVATION_ELEMENTS // (3 * N * width_sum)))
    out = torch.zeros(N, m, dtype=torch.float64, device=XS.device)
    for s in range(0, m, chunk):
        x, y = XS[s:s + chunk], YS[s:s + chunk]
        acts, zs = linear_relu.forward(stack, x)
        delta = linear_relu.output_error(zs[-1], y)
        for ell in range(L - 1, -1, -1):
            W = stack[ell][0]
            Vw = parts[names[2 * ell]].reshape(W.shape).to(W.dtype)
            vb = parts[names[2 * ell + 1]].reshape(N, 1, -1).to(W.dtype)
            tangent = torch.matmul(acts[ell], Vw.transpose(1, 2)) + vb  # (N, c, out): V_l a_{l−1,i} + v_l
            out[:, s:s + chunk] += (delta * tangent).sum(-1, dtype=torch.float64)
            if ell > 0:
                delta = torch.bmm(delta, W) * (zs[ell - 1] > 0)
    return out

"""The forward and backward pass of make_model's Linear–ReLU stack with the cross-entropy, written out for all
replicas at once (docs/theory.md §3): the one home of the pass that the one-step noise terms (backend.engine.noise)
and the plain-SGD training step share.

For layers l = 1..L with weights W_l (N, out, in) and biases c_l (N, out): z_l = a_{l−1} W_lᵀ + c_l, a_l = relu(z_l)
(a_0 = x; the logits are z_L). The error at the logits of the per-sample loss ℓ_i = −log softmax(z_{L,i})_{y_i} is
δ_{L,i} = softmax(z_{L,i}) − e_{y_i}, and below δ_{l−1} = (δ_l W_l) ⊙ 1[z_{l−1} > 0]; a layer's gradient on a set of
points is Σ_i δ_{l,i} a_{l−1,i}ᵀ (bias: Σ_i δ_{l,i})."""

from __future__ import annotations

import torch

Layers = list[tuple[torch.Tensor, torch.Tensor]]


def layers(params: dict[str, torch.Tensor]) -> Layers:
    """[(W_l, c_l)] in order, from make_model's parameters ({'0.weight', '0.bias', '2.weight', …})."""
    names = list(params)
    return [(params[names[i]], params[names[i + 1]]) for i in range(0, len(names), 2)]


def forward(stack: Layers, x: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Activations [a_0 = x, a_1, …] and pre-activations [z_1, …, z_L] of every replica: x is (c, in) shared by the
    replicas or (N, c, in) one batch per replica; z_l is (N, c, out)."""
    acts, zs = [x], []
    for W, bias in stack:
        a = acts[-1]
        if a.dim() == 3:  # a batch per replica: the bias add fused into the product
            zs.append(torch.baddbmm(bias[:, None, :], a, W.transpose(1, 2)))
        else:
            zs.append(torch.matmul(a, W.transpose(1, 2)) + bias[:, None, :])
        acts.append(torch.relu(zs[-1]))
    return acts, zs


def output_error(z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """δ_L = softmax(z) − one-hot(y) at the logits z (N, c, C), for labels y (c,) shared or (N, c)."""
    delta = torch.softmax(z, dim=-1)
    y = y.expand(z.shape[:2])
    delta.scatter_add_(2, y[..., None], torch.full(y.shape + (1,), -1.0, dtype=delta.dtype, device=delta.device))
    return delta


def sgd_step(params: dict[str, torch.Tensor], xb: torch.Tensor, yb: torch.Tensor, lr: float) -> torch.Tensor:
    """One plain SGD step w ← w − α ∇L_B(w) of every replica on its own batch (xb (N, b, in), yb (N, b)), in place;
    returns each replica's batch loss L_B(w) = (1/b) Σ_{i∈B} ℓ_i(w) before the step (N,), in float32 or wider.

    ∇_{W_l} L_B = (1/b) δ_lᵀ a_{l−1} is never stored: each layer's update is one product accumulated into W_l
    (W_l ← W_l − α (δ_l/b)ᵀ a_{l−1}, a GEMM with β = 1), after δ_{l−1} is formed from the old W_l. Under bf16
    autocast the product is computed in bf16 like the autograd path's and added to the float32 weight."""
    stack = layers(params)
    acts, zs = forward(stack, xb)
    z = zs[-1].float() if zs[-1].dtype in (torch.bfloat16, torch.float16) else zs[-1]
    loss = (torch.logsumexp(z, dim=-1) - z.gather(2, yb[..., None])[..., 0]).mean(dim=1)
    delta = output_error(z, yb).div_(xb.shape[1])
    mixed = torch.is_autocast_enabled(xb.device.type)
    for ell in range(len(stack) - 1, -1, -1):
        W, bias = stack[ell]
        below = torch.bmm(delta, W) * (zs[ell - 1] > 0) if ell > 0 else None  # δ_{l−1}, from the old W_l
        if mixed:  # in-place products are not autocast: the bf16 product, then added
            W.add_(torch.bmm(delta.transpose(1, 2), acts[ell]), alpha=-lr)
        else:
            W.baddbmm_(delta.transpose(1, 2), acts[ell], alpha=-lr)
        bias.add_(delta.sum(dim=1), alpha=-lr)
        delta = below
    return loss

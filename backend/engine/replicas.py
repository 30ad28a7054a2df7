"""A functional classifier over replicas: forward(params, x) with the parameters stacked along a leading replica
dimension, and its batched gradients, losses, per-sample gradients and logits through torch.func (vmap over replicas,
in blocks of replicas when the activations of all of them would not fit)."""

from __future__ import annotations

import copy
from typing import Callable

import torch
from torch.func import functional_call, grad, vmap


def module_forward(model: torch.nn.Module) -> Callable:
    """forward(params, x) for an nn.Module through torch.func.functional_call, on a copy of the module whose parameters
    and buffers live on 'meta' (no data: the params passed in are used). The caller's module is left as it was."""
    memo: dict[int, torch.Tensor] = {id(p): torch.nn.Parameter(p.detach().to("meta"), p.requires_grad)
                                     for p in model.parameters()}
    memo.update({id(b): b.detach().to("meta") for b in model.buffers()})
    meta = copy.deepcopy(model, memo)
    return lambda params, x: functional_call(meta, params, (x,))


class Replicas:
    """A functional classifier forward(params, x) → logits and its batched gradient, loss and per-sample gradients.

    Every batched call runs over all replicas at once, or over consecutive blocks of ``replica_chunk`` replicas (each
    block vectorised) when the activations of all of them would not fit: results are concatenated, identical."""

    def __init__(self, model, replica_chunk: int | None = None, per_sample_loss: Callable | None = None) -> None:
        forward = module_forward(model) if isinstance(model, torch.nn.Module) else model
        self.forward = forward
        self.replica_chunk = replica_chunk

        def loss(params, x, y):  # the batch mean of per_sample_loss(output, y) (default: the cross-entropy)
            if per_sample_loss is not None:
                return per_sample_loss(forward(params, x), y).mean()
            return torch.nn.functional.cross_entropy(forward(params, x), y)

        self.loss = loss
        self.per_sample = vmap(grad(lambda p, x, y: loss(p, x[None], y[None])), in_dims=(None, 0, 0))
        self._losses = vmap(loss)  # over replicas: (params, xb, yb) → (N,)
        self._per_sample_replicas = vmap(self.per_sample, in_dims=(0, None, None))
        self._logits = vmap(lambda p, x: forward(p, x), in_dims=(0, None))

    def in_blocks(self, fn, params, *per_replica, shared=()):
        """fn(params, *per_replica, *shared) over all replicas at once, or block by block (``replica_chunk``; a
        per-replica argument is a tensor or a dict of tensors with the replicas first)."""
        N = next(iter(params.values())).shape[0]
        c = self.replica_chunk
        if c is None or c >= N:
            return fn(params, *per_replica, *shared)
        cut = lambda a, s: {k: v[s:s + c] for k, v in a.items()} if isinstance(a, dict) else a[s:s + c]  # noqa: E731
        parts = [fn(cut(params, s), *(cut(a, s) for a in per_replica), *shared) for s in range(0, N, c)]
        return _concat(parts)

    def grad_and_loss(self, params, xb, yb):
        """({name: (N, …)} gradients, (N,) losses) of each replica on its own batch xb[r], yb[r]: one backward pass
        of the summed losses through the vmapped forward — replica r's parameters enter its loss alone, so the
        gradient of Σ_r L_r with respect to them is ∇L_r (the same numbers as vmap(grad) up to the summation order
        of the backward kernels; 7–28 % faster on the CNN example: benchmarks/TIMINGS.md)."""
        return self.in_blocks(self._summed_grad_and_loss, params, xb, yb)

    def _summed_grad_and_loss(self, params, xb, yb):
        leaves = {k: v.detach().requires_grad_() for k, v in params.items()}
        with torch.enable_grad():
            losses = self._losses(leaves, xb, yb)
            grads = torch.autograd.grad(losses.sum(), list(leaves.values()))
        return dict(zip(leaves, grads)), losses.detach()

    def per_sample_replicas(self, params, X, Y):
        """{name: (N, m, …)}: every replica's gradient on each of the shared points (X, Y)."""
        return self.in_blocks(self._per_sample_replicas, params, shared=(X, Y))

    def logits(self, params, X):
        """(N, m, C): every replica's logits on the shared points X."""
        return self.in_blocks(self._logits, params, shared=(X,))


def _concat(parts):
    if isinstance(parts[0], torch.Tensor):
        return torch.cat(parts)
    if isinstance(parts[0], dict):
        return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}
    return tuple(_concat([p[i] for p in parts]) for i in range(len(parts[0])))

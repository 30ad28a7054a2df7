"""The forward and backward pass of make_model's Linear–ReLU stack with the cross-entropy, written out for all
replicas at once (docs/theory.md §3): the one home of the pass that the one-step noise terms (backend.engine.noise)
the plain-SGD training step (SGDSteps; on CUDA each wide layer's updates held as low-rank factors) and the
mini-batch gradients that the other optimizers step with (batch_grads) share.

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


def forward(stack: Layers, x: torch.Tensor, held: dict[int, tuple[torch.Tensor, torch.Tensor]] | None = None
            ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Activations [a_0 = x, a_1, …] and pre-activations [z_1, …, z_L] of every replica: x is (c, in) shared by the
    replicas or (N, c, in) one batch per replica; z_l is (N, c, out). ``held`` {l: (D_l, A_l)} (a batch per
    replica): layer l's weight is W_l − D_lᵀ A_l, its product taken as z_l = a W_lᵀ − (a A_lᵀ) D_l + c_l (sgd_step)."""
    acts, zs = [x], []
    for ell, (W, bias) in enumerate(stack):
        a = acts[-1]
        if a.dim() == 3:  # a batch per replica: the bias add fused into the product
            z = torch.baddbmm(bias[:, None, :], a, W.transpose(1, 2))
            if held and ell in held:
                z.baddbmm_(torch.bmm(a, held[ell][1].transpose(1, 2)), held[ell][0], alpha=-1)
        else:
            z = torch.matmul(a, W.transpose(1, 2)) + bias[:, None, :]
        zs.append(z)
        acts.append(torch.relu(z))
    return acts, zs


def output_error(z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """δ_L = softmax(z) − one-hot(y) at the logits z (N, c, C), for labels y (c,) shared or (N, c)."""
    delta = torch.softmax(z, dim=-1)
    y = y.expand(z.shape[:2])
    delta.scatter_add_(2, y[..., None], torch.full(y.shape + (1,), -1.0, dtype=delta.dtype, device=delta.device))
    return delta


HOLD_STEPS = {"cpu": 1, "cuda": 4}  # steps a layer's SGD update is held as factors before it is applied (1: never)


def hold_steps(device_type: str) -> int:
    """How many steps SGDSteps holds each layer's update on this device (HOLD_STEPS), in every precision. On a GPU a
    step of the paper's MLP is bound by memory traffic (the weights are read by the forward and backward products
    and read and written by the update: ≈ 4.5 GB per step at 250 replicas against ≈ 0.1 TFLOP), and holding 4
    updates cuts that traffic by ≈ 30 % for ≈ 15 % more arithmetic; on a CPU it gains nothing (measured: 117 vs
    116 ms per step, 50 replicas, 2 cores), and a CPU run keeps its numbers."""
    return HOLD_STEPS.get(device_type, 1)


def held_layers(stack: Layers, b: int, hold: int) -> list[int]:
    """The layers whose updates are held: those whose factors of ``hold`` steps, hold·b·(in + out) numbers, are
    fewer than the weight's in·out (holding a narrow layer's update moves more bytes than it saves)."""
    if hold <= 1:
        return []
    return [ell for ell, (W, _) in enumerate(stack) if hold * b * (W.shape[1] + W.shape[2]) <= W.shape[1] * W.shape[2]]


def sgd_step(params: dict[str, torch.Tensor], xb: torch.Tensor, yb: torch.Tensor, lr: float,
             held: dict[str, torch.Tensor] | None = None, slot: int = 0) -> torch.Tensor:
    """One plain SGD step w ← w − α ∇L_B(w) of every replica on its own batch (xb (N, b, in), yb (N, b)), in place;
    returns each replica's batch loss L_B(w) = (1/b) Σ_{i∈B} ℓ_i(w) before the step (N,), in float32 or wider.

    ∇_{W_l} L_B = (1/b) δ_lᵀ a_{l−1} is never stored: each layer's update is one product accumulated into W_l
    (W_l ← W_l − α (δ_l/b)ᵀ a_{l−1}, a GEMM with β = 1), after δ_{l−1} is formed from the old W_l. Under bf16
    autocast the product is computed in bf16 like the autograd path's and added to the float32 weight.

    ``held`` (SGDSteps): for the layers l it names, buffers D_l (N, h·b, out) and A_l (N, h·b, in) in which the
    updates of the last ``slot`` steps wait as factors, so that the weight the step uses is
    W_l = W̄_l − D_lᵀ A_l = W̄_l − Σ_k α_k (δ_{l,k}/b)ᵀ a_{l−1,k} (rows of the first slot·b of each buffer). The
    products with it are taken as W̄_l's plus a rank-slot·b correction — z_l = a W̄_lᵀ − (a A_lᵀ) D_l + c_l and
    δ_l W_l = δ_l W̄_l − (δ_l D_lᵀ) A_l — the same numbers up to rounding; this step's factors go to rows
    slot·b … (slot + 1)·b, and at slot = h − 1 the h updates are applied to W̄_l in one product (apply_held).
    Under bf16 autocast the factors are bf16 and ``held`` also holds S_l = bf16(W̄_l), the copy of the weight
    that autocast would otherwise cast from the float32 W̄_l at every product, refreshed when W̄_l changes."""
    masters = layers(params)
    held = held or {}
    stack = [(held.get(f"{ell}.S", W), bias) for ell, (W, bias) in enumerate(masters)]  # the weights products read
    mixed = torch.is_autocast_enabled(xb.device.type)
    if mixed:  # cast once: autocast would cast the batch at each product with it (the same values)
        xb = xb.to(torch.get_autocast_dtype(xb.device.type))
    b = xb.shape[1]
    rows = slot * b
    pending = {ell: (held[f"{ell}.D"][:, :rows], held[f"{ell}.A"][:, :rows])
               for ell in range(len(stack)) if rows and f"{ell}.D" in held}
    acts, zs = forward(stack, xb, pending)
    z = zs[-1].float() if zs[-1].dtype in (torch.bfloat16, torch.float16) else zs[-1]
    loss = (torch.logsumexp(z, dim=-1) - z.gather(2, yb[..., None])[..., 0]).mean(dim=1)
    delta = output_error(z, yb).div_(b)
    for ell in range(len(stack) - 1, -1, -1):
        W, bias = masters[ell]
        below = None
        if ell > 0:  # δ_{l−1}, from the old W_l
            below = torch.bmm(delta, stack[ell][0])
            if ell in pending:
                D, A = pending[ell]
                below.baddbmm_(torch.bmm(delta, D.transpose(1, 2)), A, alpha=-1)
            below.mul_(zs[ell - 1] > 0)
        if f"{ell}.D" in held:
            D, A = held[f"{ell}.D"], held[f"{ell}.A"]
            torch.mul(delta, lr, out=D[:, rows:rows + b])  # (rounded once to the buffer's dtype)
            A[:, rows:rows + b].copy_(acts[ell])
            if rows + b == D.shape[1]:
                apply_held(W, D, A, held.get(f"{ell}.S"))
        elif mixed:  # in-place products are not autocast: the bf16 product, then added
            W.add_(torch.bmm(delta.transpose(1, 2), acts[ell]), alpha=-lr)
        else:
            W.baddbmm_(delta.transpose(1, 2), acts[ell], alpha=-lr)
        bias.add_(delta.sum(dim=1), alpha=-lr)
        delta = below
    return loss


def batch_grads(params: dict[str, torch.Tensor], xb: torch.Tensor, yb: torch.Tensor
                ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Every replica's mini-batch gradient ∇L_B(w) on its own batch (xb (N, b, in), yb (N, b)) and its batch loss
    L_B(w) (N,), by the explicit pass (no vmap(grad)): ∇_{W_l} L_B = (δ_l/b)ᵀ a_{l−1}, ∇_{c_l} L_B = Σ_i δ_{l,i}/b,
    one batched product per layer — sgd_step's products, stored instead of accumulated into W_l, for the optimizers
    of backend/optim.py (the engine's step with momentum, weight decay, Adam(W)). The gradients have the
    parameters' dtype; under bf16 autocast the products are bf16 like the autograd path's, then widened."""
    stack = layers(params)
    mixed = torch.is_autocast_enabled(xb.device.type)
    if mixed:  # cast once (autocast would cast the batch at each product with it: the same values)
        xb = xb.to(torch.get_autocast_dtype(xb.device.type))
    b = xb.shape[1]
    acts, zs = forward(stack, xb)
    z = zs[-1].float() if zs[-1].dtype in (torch.bfloat16, torch.float16) else zs[-1]
    loss = (torch.logsumexp(z, dim=-1) - z.gather(2, yb[..., None])[..., 0]).mean(dim=1)
    delta = output_error(z, yb).div_(b)
    names, grads = list(params), {}
    for ell in range(len(stack) - 1, -1, -1):
        W, bias = stack[ell]
        grads[names[2 * ell]] = torch.bmm(delta.transpose(1, 2), acts[ell]).to(W.dtype)
        grads[names[2 * ell + 1]] = delta.sum(dim=1).to(bias.dtype)
        if ell > 0:  # δ_{l−1} = (δ_l W_l) ⊙ 1[z_{l−1} > 0]
            delta = torch.bmm(delta, W).mul_(zs[ell - 1] > 0)
    return {k: grads[k] for k in names}, loss


def apply_held(W: torch.Tensor, D: torch.Tensor, A: torch.Tensor, shadow: torch.Tensor | None) -> None:
    """W̄ ← W̄ − Dᵀ A, the held updates (rows of D and A) applied in one product. bf16 factors (``shadow`` S, the
    bf16 copy of W̄ the products read): their product in bf16 like the plain bf16 step's, subtracted from the
    float32 W̄, and S ← bf16(W̄)."""
    if shadow is None:
        W.baddbmm_(D.transpose(1, 2), A, alpha=-1)
    else:
        W.sub_(torch.bmm(D.transpose(1, 2), A))
        shadow.copy_(W)


class SGDSteps:
    """Plain SGD steps of every replica on the stack (sgd_step), each wide layer's update held for up to ``hold``
    steps (hold_steps, held_layers). ``step`` takes one step — all replicas, or block by block through ``blocks``
    (Replicas.in_blocks: params and the held buffers cut into the same replica blocks) — and ``settle`` applies
    what is held, after which the weights are those of plain SGD (to rounding); call it before reading them, and
    step on no other weights in between (under bf16 the products read the stepper's bf16 copies of them)."""

    def __init__(self, hold: int = 1):
        self.hold, self.slot, self.b = hold, 0, 0
        self.dtype: torch.dtype | None = None
        self.held: dict[str, torch.Tensor] = {}

    def step(self, params: dict[str, torch.Tensor], xb: torch.Tensor, yb: torch.Tensor, lr: float,
             blocks=None) -> torch.Tensor:
        """Every replica's batch loss before the step (N,); the weights are stepped in place."""
        device_type = xb.device.type
        dtype = torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else None
        if xb.shape[1] != self.b or dtype != self.dtype:  # the buffers for this batch size and arithmetic
            self.settle(params)
            self.b, self.dtype, self.held = xb.shape[1], dtype, {}
            stack = layers(params)
            for ell in held_layers(stack, self.b, self.hold):
                W = stack[ell][0]
                N, out, d_in = W.shape
                self.held[f"{ell}.D"] = W.new_empty(N, self.hold * self.b, out, dtype=dtype or W.dtype)
                self.held[f"{ell}.A"] = W.new_empty(N, self.hold * self.b, d_in, dtype=dtype or W.dtype)
                if dtype is not None:
                    self.held[f"{ell}.S"] = W.to(dtype)
        if blocks is None:
            loss = sgd_step(params, xb, yb, lr, self.held, self.slot)
        else:
            loss = blocks(lambda p, h, x, y: sgd_step(p, x, y, lr, h, self.slot), params, self.held, xb, yb)
        self.slot = (self.slot + 1) % self.hold
        return loss

    def settle(self, params: dict[str, torch.Tensor]) -> None:
        """Apply the updates held so far: W̄_l ← W̄_l − D_lᵀ A_l over the rows written since the last application."""
        rows, stack = self.slot * self.b, layers(params)
        for key in self.held if rows else ():
            if key.endswith(".D"):
                ell = int(key[:-2])
                apply_held(stack[ell][0], self.held[key][:, :rows], self.held[f"{ell}.A"][:, :rows],
                           self.held.get(f"{ell}.S"))
        self.slot = 0

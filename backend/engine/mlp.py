"""MLP classifier replicas with torch.func: K initial weights × R replicas as stacked parameters (paper §4.1).

Each of the N = K·R replicas draws its own mini-batches (indices drawn outside vmap from an explicit generator) and
takes steps on the cross-entropy: plain SGD through the fused Linear–ReLU step (linear_relu.SGDSteps), any other
optimizer on the gradients of the same explicit backward (linear_relu.batch_grads) — a task without them takes one
``vmap(grad(functional_call))`` over all replicas; the probe gradient of the statistics is always vmap(grad)'s.
At every epoch boundary e = 0..E, per initial weight k (over its R replicas):
- var_g: the across-replica variance of a fresh stochastic gradient g (a uniform b-subset, drawn from a separate
  probe generator so that measuring does not perturb training) — var(g_e | F_0);
- the split of docs/theory.md §3 (law of total variance with Lemma 1, backend.lemma1):
    noise_one_step = c_b · mean_r tr Σ̂(w_r),  c_b = (n − b)/(b(n − 1)),  tr Σ̂ = (n − 1)/n · S²(w) the unbiased
    estimate of the population trace tr Σ = (1/n) Σ_i ‖∇L_i − ∇L‖² over the n training points, from
    S²(w) = (1/(m − 1)) Σ_{i∈S} ‖∇L_i(w) − ∇L_S(w)‖² on a fixed uniform subsample S of m points (all of them when
    n ≤ noise_samples, which makes the term exact);
    noise_spread = the across-replica variance of ∇L_S(w_r) (of ∇L(w_r) when S is the whole training set);
- b_simple = mean_r tr Σ̂(w_r) / mean_r ‖G‖²^(w_r) (McCandlish et al.'s gradient noise scale with their population
  convention; ‖G‖²^ = ‖∇L_S‖² − c_m tr Σ̂ is unbiased for ‖∇L‖², exact at m = n), with a delta-method SE over the
  replicas and over the subsample S (backend.stats.subsample_noise: a second pass gives each ∇L_i · ∇L_S); the
  one-step noise, tr Σ̂ and ‖G‖²^ carry the subsample's error in their SEs too;
- loss and error on the training set (first eval_size points) and on the validation set, and every ``every`` epochs
  the accuracy gap between the training set and the elastically distorted validation set.
A replica whose loss turns non-finite is dropped from that step on and reported.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from backend.engine import linear_relu
from backend.engine.noise import (linear_relu_per_sample_dots, linear_relu_per_sample_terms, per_sample_dots,
                                  per_sample_terms)
from backend.engine.replicas import Replicas, module_forward  # noqa: F401  (module_forward: the settings)
from backend.engine.loop import RunSpec, train_loop
from backend.engine.runner import ACTIVATION_ELEMENTS, precision, seed_for
from backend.quantities import EPOCH_QUANTITIES
from backend.stats import B_SIMPLE_PARTS, GroupMoments, Groups, subsample_noise, variance_se

ESTIMATED = tuple(q.name for q in EPOCH_QUANTITIES)  # the per-init estimates reported (the table), each with its SE
WITH_SE = (*ESTIMATED, *B_SIMPLE_PARTS)  # and B_simple's two parts


def make_model(d_in: int, hidden: tuple[int, ...], n_classes: int) -> torch.nn.Sequential:
    layers: list[torch.nn.Module] = []
    widths = (d_in, *hidden)
    for a, b in zip(widths[:-1], widths[1:]):
        layers += [torch.nn.Linear(a, b), torch.nn.ReLU()]
    layers.append(torch.nn.Linear(widths[-1], n_classes))
    return torch.nn.Sequential(*layers)


def init_params(model: torch.nn.Module, K: int, seed: int, dtype: torch.dtype, device: torch.device
                ) -> dict[str, torch.Tensor]:
    """K initial weights from PyTorch's default Linear initialisation U(−1/√fan_in, 1/√fan_in), seeded per init."""
    stacked: dict[str, list[torch.Tensor]] = {name: [] for name, _ in model.named_parameters()}
    for k in range(K):
        gen = torch.Generator().manual_seed(seed_for(seed, 7919, k))
        for name, p in model.named_parameters():
            fan_in = p.shape[1] if p.dim() == 2 else model.get_parameter(name.replace("bias", "weight")).shape[1]
            bound = 1.0 / math.sqrt(fan_in)
            stacked[name].append((torch.rand(p.shape, generator=gen, dtype=torch.float64) * 2 - 1) * bound)
    return {n: torch.stack(v).to(dtype=dtype, device=device) for n, v in stacked.items()}


def flat(grads: dict[str, torch.Tensor], lead: int = 1) -> torch.Tensor:
    return torch.cat([g.reshape(*g.shape[:lead], -1) for g in grads.values()], dim=-1)


@dataclass
class EpochStats:
    """Per-init statistics at each recorded epoch: arrays (E+1, K)."""

    values: dict[str, np.ndarray]

    @classmethod
    def empty(cls, E1: int, K: int) -> "EpochStats":
        names = (*WITH_SE, "finite", *(f"{q}_se" for q in WITH_SE))
        return cls({n: np.full((E1, K), np.nan) for n in names})


CPU_EVAL_ELEMENTS = 2**26  # on CPU, smaller passes: each fresh GB of activations costs page faults
# (benchmarks/TIMINGS.md)


def evaluate(rep: Replicas, params, X: torch.Tensor, Y: torch.Tensor, chunk: int = 4096, act_per_sample: int = 0):
    """Per-replica mean loss and error on (X, Y), ``chunk`` points at a time (fewer when the activations of a block
    of replicas on them would exceed ACTIVATION_ELEMENTS, or CPU_EVAL_ELEMENTS on CPU)."""
    if act_per_sample:
        block = rep.replica_chunk or next(iter(params.values())).shape[0]
        limit = ACTIVATION_ELEMENTS if X.is_cuda else CPU_EVAL_ELEMENTS
        chunk = max(1, min(chunk, limit // (block * act_per_sample)))
    losses, errors = [], []
    for s in range(0, X.shape[0], chunk):
        logits = rep.logits(params, X[s:s + chunk])  # (N, n, C)
        y = Y[s:s + chunk]
        lp = torch.log_softmax(logits.to(torch.float64), dim=-1)
        losses.append(-lp.gather(2, y.expand(logits.shape[0], -1)[..., None])[..., 0].sum(dim=1))
        errors.append((logits.argmax(dim=-1) != y).to(torch.float64).sum(dim=1))
    n = X.shape[0]
    return torch.stack(losses).sum(0) / n, torch.stack(errors).sum(0) / n


@dataclass
class Task:
    """What the generic replica trainer needs: data tensors, the functional model, its K initial weights, the update.

    ``init(K) → {name: (K, …)}``; ``optimizer`` is None for plain SGD (w ← w − α_t g) or a backend.optim.Optimizer
    (``init(params)``, ``step(params, grads, state, lr, t)`` in place; its per-replica gradient clipping acts after
    the gradient is recorded — the variance reported is that of the raw stochastic gradient).
    ``act_per_sample``: activations one sample keeps for the backward pass (floats; 0 = small), which sets how many
    replicas one vectorised call may hold (ACTIVATION_ELEMENTS). ``per_sample_terms``, ``per_sample_dots``: a
    model-specific way to the one-step noise terms (the sums of noise.per_sample_terms and noise.per_sample_dots).
    ``sgd_steps(hold)``: a model-specific plain SGD stepper
    (linear_relu.SGDSteps: the steps vmap(grad) and w − α g take, in place, with the update fused into the gradient's
    product and held for up to ``hold`` steps; used when ``optimizer`` is None). ``batch_grads``: a model-specific
    way to every replica's mini-batch gradient and loss (linear_relu.batch_grads: the explicit pass, the numbers of
    vmap(grad) to rounding), fed to ``optimizer``'s step."""

    Xtr: torch.Tensor
    Ytr: torch.Tensor
    Xva: torch.Tensor
    Yva: torch.Tensor
    Xdist: torch.Tensor | None
    forward: Callable
    init: Callable[[int], dict]
    optimizer: object | None = None
    act_per_sample: int = 0
    per_sample_terms: Callable | None = None  # (params, XS, YS) → (‖g_i‖² (N, m), mean); None: vmap (noise.py)
    per_sample_dots: Callable | None = None  # (params, XS, YS, v) → g_i · v_r (N, m); None: vmap (noise.py)
    sgd_steps: Callable | None = None  # hold → a stepper (linear_relu.SGDSteps) of plain SGD in place; None: vmap
    batch_grads: Callable | None = None  # (params, xb, yb) → (grads, losses) for ``optimizer``; None: vmap(grad)


def replica_chunk(task: Task, N: int, b: int) -> int | None:
    """Replicas per vectorised call: all N unless their activations on b samples exceed ACTIVATION_ELEMENTS."""
    if not task.act_per_sample:
        return None
    c = max(1, ACTIVATION_ELEMENTS // (b * task.act_per_sample))
    return None if c >= N else c


def mlp_task(data, hidden, seed: int, dtype: torch.dtype, device: torch.device, distorted_val: np.ndarray | None,
             optimizer=None) -> Task:
    """The MLP's Task; ``optimizer`` None is plain SGD through the fused linear_relu.SGDSteps (held low-rank updates
    where they pay), any backend.optim.Optimizer takes the explicit pass's gradients (linear_relu.batch_grads) and
    its step (run_batch_size)."""
    n, h, w = data.x_train.shape
    d_in = h * w
    as_t = lambda a: torch.as_tensor(a.reshape(len(a), d_in), dtype=dtype, device=device)  # noqa: E731
    model = make_model(d_in, hidden, data.n_classes)
    return Task(as_t(data.x_train), torch.as_tensor(data.y_train, device=device), as_t(data.x_val),
                torch.as_tensor(data.y_val, device=device), None if distorted_val is None else as_t(distorted_val),
                module_forward(model),
                lambda K: init_params(model, K, seed, dtype, device), optimizer,
                act_per_sample=d_in + 2 * sum(hidden) + 2 * data.n_classes,
                per_sample_terms=linear_relu_per_sample_terms, per_sample_dots=linear_relu_per_sample_dots,
                sgd_steps=linear_relu.SGDSteps, batch_grads=linear_relu.batch_grads)


class MLPRun:
    """The MLP's pieces of the shared loop (loop.Engine): K·R replicas' weights (init k repeated R times), the step
    (the fused plain-SGD stepper, or the task's batch_grads — else vmap(grad) — and the optimizer), the statistics
    of an epoch (module doc)."""

    def __init__(self, task: Task, spec: RunSpec, gap_every: int, eval_size: int) -> None:
        self.task, self.spec, self.gap_every = task, spec, gap_every
        self.n, self.R, self.device, self.arithmetic = spec.n, spec.R, spec.device, spec.precision
        self.epochs = len(spec.record_at) - 1
        self.Xev, self.Yev = task.Xtr[:eval_size], task.Ytr[:eval_size]
        sub = spec.noise_subset()
        self.XS, self.YS = task.Xtr[sub], task.Ytr[sub]
        self.rep = Replicas(task.forward, replica_chunk(task, spec.N, spec.b))
        self.opt = task.optimizer
        self.inits = Groups.blocks(spec.K, spec.R, spec.device)  # the statistics groups: one per init, its R replicas
        if spec.resume is None:
            params0 = task.init(spec.K)
            self.params = {k: v.repeat_interleave(spec.R, dim=0).contiguous() for k, v in params0.items()}
            self.opt_state = self.opt.init(self.params) if self.opt is not None else {}
            self.stats = EpochStats.empty(self.epochs + 1, spec.K).values
        else:
            self.params, self.opt_state = spec.restored("params"), spec.restored("opt")
            self.stats = {k: v.copy() for k, v in spec.resume["stats"].items()}
        self.sgd = (task.sgd_steps(linear_relu.hold_steps(spec.device.type))
                    if task.sgd_steps is not None and self.opt is None else None)

    def step(self, idx: torch.Tensor, t: int, lr: float) -> torch.Tensor:
        task, params = self.task, self.params
        if self.sgd is not None:  # the model's own step: the update accumulated into each layer's gradient product
            with precision(self.arithmetic, self.device):
                return self.sgd.step(params, task.Xtr[idx], task.Ytr[idx], lr, blocks=self.rep.in_blocks)
        with precision(self.arithmetic, self.device):
            if self.opt is not None and task.batch_grads is not None:  # the explicit pass, then the optimizer
                g, loss = self.rep.in_blocks(task.batch_grads, params, task.Xtr[idx], task.Ytr[idx])
            else:
                g, loss = self.rep.grad_and_loss(params, task.Xtr[idx], task.Ytr[idx])
        if self.opt is not None:
            self.params = self.opt.step(params, g, self.opt_state, lr, t)
        else:  # one fused pass per tensor: w − α g
            self.params = {k: torch.add(params[k], g[k], alpha=-lr) for k in params}
        return loss

    def settle(self) -> None:
        if self.sgd is not None:
            self.sgd.settle(self.params)  # the updates still held, applied before the weights are read

    def record(self, e: int, idx: torch.Tensor, b: int, alive: torch.Tensor) -> None:
        task, rep, params, inits, put = self.task, self.rep, self.params, self.inits, self.stats
        with precision(self.arithmetic, self.device):  # the stochastic gradient as training computes it
            g, _ = rep.grad_and_loss(params, task.Xtr[idx], task.Ytr[idx])

        def keep(name: str, value_se: tuple[np.ndarray, np.ndarray]) -> None:
            put[name][e] = value_se[0]
            if name in WITH_SE:
                put[f"{name}_se"][e] = value_se[1]

        keep("var_g", variance_se(flat(g), inits, alive))
        sq, full = (task.per_sample_terms(params, self.XS, self.YS) if task.per_sample_terms is not None
                    else per_sample_terms(rep, params, self.XS, self.YS))
        keep("noise_spread", variance_se(full, inits, alive))
        dots = (task.per_sample_dots(params, self.XS, self.YS, full) if task.per_sample_dots is not None
                else per_sample_dots(rep, params, self.XS, self.YS, full))  # a second pass: g_i · ∇L_S
        for name, value_se in subsample_noise(sq, dots, full, inits, alive, self.n, b).items():
            keep(name, value_se)  # trace_sigma, grad_sq, noise_one_step, b_simple
        for split, (X, Y) in (("train", (self.Xev, self.Yev)), ("val", (task.Xva, task.Yva))):
            loss, err = evaluate(rep, params, X, Y, act_per_sample=task.act_per_sample)
            keep(f"loss_{split}", GroupMoments.of(loss, inits, alive).mean_se())
            keep(f"error_{split}", GroupMoments.of(err, inits, alive).mean_se())
            if split == "train":
                err_train = err
        if task.Xdist is not None and (e % self.gap_every == 0 or e == self.epochs):
            _, err_d = evaluate(rep, params, task.Xdist, task.Yva, act_per_sample=task.act_per_sample)
            keep("gap_distorted", GroupMoments.of(err_d - err_train, inits, alive).mean_se())
        put["finite"][e] = GroupMoments.of(alive.to(torch.float64), inits, torch.ones_like(alive)).mean_se()[0] * self.R

    def position(self, t: int) -> dict:
        return {"epoch": t // self.spec.epoch_steps - 1}  # the epoch just finished

    def start(self, resume: dict) -> int:
        return (int(resume["epoch"]) + 1) * self.spec.epoch_steps


def run_batch_size(task: Task, spec: RunSpec, gap_every: int, eval_size: int) -> dict:
    """Train the K·R replicas of ``spec`` (RunSpec.for_epochs on the task's n training points: a whole number of
    epochs, recorded and checkpointed at each epoch's end) through loop.train_loop (MLPRun's step); per-epoch
    per-init statistics (see module doc). The training steps and the probe gradient run in ``spec.precision``
    (float32, tf32 or bf16: backend.engine.runner.precision); the noise terms, evaluations and every statistic stay
    in full precision."""
    if spec.epoch_steps is None or spec.n != task.Xtr.shape[0]:
        raise ValueError("the MLP engine runs whole epochs of the task's training set: RunSpec.for_epochs")
    return {**train_loop(spec, MLPRun(task, spec, gap_every, eval_size)), "steps_per_epoch": spec.epoch_steps}


def estimate_cost(n_train: int, d_in: int, hidden: tuple[int, ...], n_classes: int, K: int, R: int, epochs: int,
                  b: int, eval_size: int, n_val: int, noise_samples: int, device_type: str = "cpu",
                  optimizer_state: int | None = None) -> dict[str, float]:
    """Memory (bytes), time (2 CPU cores), FLOPs and steps of one batch size's run. ``optimizer_state``: None for
    plain SGD (the fused step), else the optimizer's weight-sized state tensors per replica (momentum 1, Adam 2):
    the optimizer's step keeps the gradients (linear_relu.batch_grads: the fused step's products, stored) and that
    state (float32 each) and makes ≈ 3 elementwise passes over each per step."""
    widths = (d_in, *hidden, n_classes)
    P = sum(widths[i] * widths[i + 1] + widths[i + 1] for i in range(len(widths) - 1))
    N = K * R
    train_flops = 6 * P * n_train * N  # per epoch: every sample once per replica, forward + backward
    eval_flops = 2 * P * N * (min(eval_size, n_train) + 2 * n_val) + 6 * P * N * (b + 2 * min(noise_samples, n_train))
    # 2 CPU cores: training at 5·10¹⁰ FLOP/s plus ≈ 1.1 ms a step (Python and small ops: the laptop preset's steps,
    # 1.4 CPU-ms on the critical path of a loaded box); each of the epochs + 1 statistics passes ≈ 0.1 s plus its
    # FLOPs at 2·10¹⁰ (laptop preset: 0.12–0.24 CPU-s a pass), and ≈ 1.5 s of set-up (the data set loaded, the
    # distorted validation set, the tensors: a 3-epoch run at b = 16 takes 3.8 CPU-s; benchmarks/bench_estimates.py)
    seconds = (1.5 + epochs * (train_flops / 5e10 + (n_train // b) * 1.1e-3)
               + (epochs + 1) * (0.1 + eval_flops / 2e10))
    m = min(noise_samples, n_train)
    chunk = max(1, min(m, ACTIVATION_ELEMENTS // (3 * N * sum(widths))))  # the two noise passes (noise.py)
    memory = (4.0 * N * (3 * P + b * d_in + b * sum(widths)) + 4.0 * 3 * N * chunk * sum(widths)  # activations
              + 12.0 * N * P)  # the float64 sums of the noise terms and one float32 layer gradient
    if optimizer_state is not None:  # the gradients and the optimizer's state, stepped by backend/optim.py
        memory += 4.0 * N * P * (1 + optimizer_state)
        seconds += epochs * (n_train // b) * 3 * (1 + optimizer_state) * 4.0 * N * P / 5e9  # ≈ 5 GB/s of passes
        # (one thread, above the fused step's: at 4NP = 0.5 MB, the laptop preset, momentum +0.06 ms, Adam +0.36 ms
        # a step, cache-resident, this term 0.64, 0.96 ms; at 9.8 MB (256, 128 hidden) +2.8, +25 ms, this term 12,
        # 18 ms: Adam's temporaries are fresh pages)
    elif linear_relu.hold_steps(device_type) > 1:
        memory += 4.0 * N * P  # the updates held as factors (fewer numbers than the weights: held_layers); under
        # bf16, factors and the weights' bf16 copies at 2 bytes each
    return {"memory_bytes": memory, "seconds": seconds, "flops": float(epochs * (train_flops + eval_flops)),
            "steps": float(epochs * (n_train // b + 3 + 2 * -(-m // chunk)))}

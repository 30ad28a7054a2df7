"""MLP benchmark (not a test): the engine's training step for 50 replicas of the paper's MLP (784 → 1024 → 512 → 10;
backend.engine.linear_relu.sgd_step, the update accumulated into each layer's gradient product), the generic vmap
gradient + update, and a per-replica loop of nn.Module + torch.optim.SGD, same batches, in one run on this machine;
also the engine step with its updates held for 4 steps as on CUDA (linear_relu.HOLD_STEPS), which a CPU does not use.
Run: ``python benchmarks/bench_mlp.py [--steps N]``.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from backend.engine import linear_relu  # noqa: E402
from backend.engine import mlp as engine  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--replicas", type=int, default=50)
    args = ap.parse_args()
    print(f"machine: {platform.platform()}, {os.cpu_count()} CPU cores, torch {torch.__version__} "
          f"({torch.get_num_threads()} threads), cuda: "
          f"{torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'none'}")
    R, b, steps = args.replicas, 64, args.steps
    rng = np.random.default_rng(0)
    X = torch.as_tensor(rng.uniform(-1, 1, size=(4096, 784)), dtype=torch.float32)
    Y = torch.as_tensor(rng.integers(0, 10, size=4096))
    idx = torch.as_tensor(rng.integers(0, 4096, size=(steps, R, b)))
    model = engine.make_model(784, (1024, 512), 10)
    params0 = engine.init_params(model, 1, 0, torch.float32, torch.device("cpu"))
    P = sum(v[0].numel() for v in params0.values())

    params = {k: v.repeat_interleave(R, dim=0).contiguous() for k, v in params0.items()}
    rep = engine.Replicas(engine.make_model(784, (1024, 512), 10))
    rep.grad_and_loss(params, X[idx[0]], Y[idx[0]])  # warm-up
    t0 = time.perf_counter()
    for s in range(steps):
        g, _ = rep.grad_and_loss(params, X[idx[s]], Y[idx[s]])
        for k in params:
            params[k].sub_(g[k], alpha=3e-3)
    t_vmap = time.perf_counter() - t0

    params = {k: v.repeat_interleave(R, dim=0).contiguous() for k, v in params0.items()}
    linear_relu.sgd_step(params, X[idx[0]], Y[idx[0]], 3e-3)  # warm-up
    t0 = time.perf_counter()
    for s in range(steps):
        linear_relu.sgd_step(params, X[idx[s]], Y[idx[s]], 3e-3)
    t_fused = time.perf_counter() - t0

    params = {k: v.repeat_interleave(R, dim=0).contiguous() for k, v in params0.items()}
    held = linear_relu.SGDSteps(hold=4)  # the CUDA default (linear_relu.HOLD_STEPS): is it worth it on a CPU?
    held.step(params, X[idx[0]], Y[idx[0]], 3e-3)  # warm-up
    held.settle(params)
    t0 = time.perf_counter()
    for s in range(steps):
        held.step(params, X[idx[s]], Y[idx[s]], 3e-3)
    held.settle(params)
    t_held = time.perf_counter() - t0

    modules = []
    for _ in range(R):
        m = engine.make_model(784, (1024, 512), 10)
        with torch.no_grad():
            for name, p in m.named_parameters():
                p.copy_(params0[name][0])
        modules.append((m, torch.optim.SGD(m.parameters(), lr=3e-3)))
    for r, (m, opt) in enumerate(modules):  # warm-up, as for vmap (first calls are slower)
        opt.zero_grad()
        torch.nn.functional.cross_entropy(m(X[idx[0, r]]), Y[idx[0, r]]).backward()
        opt.step()
    t0 = time.perf_counter()
    for s in range(steps):
        for r, (m, opt) in enumerate(modules):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(m(X[idx[s, r]]), Y[idx[s, r]]).backward()
            opt.step()
    t_loop = time.perf_counter() - t0
    flops = 6 * P * b * R * steps
    print(f"{R} replicas of 784-1024-512-10 ({P:,} parameters), b = {b}, {steps} steps: engine step "
          f"{t_fused:.2f} s ({flops / t_fused / 1e9:.1f} GFLOP/s), vmap gradient + update {t_vmap:.2f} s "
          f"({flops / t_vmap / 1e9:.1f} GFLOP/s), per-replica loop {t_loop:.2f} s ({flops / t_loop / 1e9:.1f} GFLOP/s); "
          f"engine ×{t_loop / t_fused:.2f} the loop, ×{t_vmap / t_fused:.2f} the vmap step; the engine step with its "
          f"updates held 4 steps (the CUDA default) {t_held:.2f} s, ×{t_fused / t_held:.2f} the engine's CPU step")


if __name__ == "__main__":
    main()

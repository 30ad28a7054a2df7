"""Deep linear benchmarks, measured side by side in one run (not a test). Run: ``python benchmarks/bench_deep_linear.py``.

1. Cost per replica-step against b ∈ {1, 16, 256, 4096}: Bartlett sampling of Σ̂ (flat once b ≥ p) against direct
   sampling of the b × p Gaussian matrix.
2. The paper's preset (64 → 256 → 128, 1 000 replicas, 1 000 steps, one b = 16, float32): wall time of the engine,
   and a naive per-replica loop (one nn.Sequential of nn.Linear per replica with torch.optim.SGD) timed on a few
   replicas and scaled linearly (replicas are independent) — target ≥ 20×.
``--quick`` shortens everything for a smoke run.
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

from backend.config import DEEP_LINEAR_PRESETS, parse_config  # noqa: E402
from backend.engine.deep_linear import SigmaSampler, run_replicas  # noqa: E402


def naive_loop(W0, T, alphas, b, R, dtype=torch.float32):
    p = W0[0].shape[1]
    teacher = torch.nn.Sequential(*[torch.nn.Linear(M.shape[1], M.shape[0], bias=False) for M in T]).to(dtype)
    with torch.no_grad():
        for layer, M in zip(teacher, T):
            layer.weight.copy_(torch.as_tensor(M))
    for r in range(R):
        student = torch.nn.Sequential(*[torch.nn.Linear(M.shape[1], M.shape[0], bias=False) for M in W0]).to(dtype)
        with torch.no_grad():
            for layer, M in zip(student, W0):
                layer.weight.copy_(torch.as_tensor(M))
        opt = torch.optim.SGD(student.parameters(), lr=alphas[0])
        gen = torch.Generator().manual_seed(r)
        for t, a in enumerate(alphas):
            for group in opt.param_groups:
                group["lr"] = a
            x = torch.randn(b, p, generator=gen, dtype=dtype)
            with torch.no_grad():
                y = teacher(x)
            opt.zero_grad()
            loss = 0.5 * (student(x) - y).square().sum(dim=1).mean()
            loss.backward()
            opt.step()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    print(f"machine: {platform.platform()}, {os.cpu_count()} CPU cores, torch {torch.__version__} "
          f"({torch.get_num_threads()} threads), cuda: "
          f"{torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'none'}")
    dev = torch.device("cpu")
    R, p = 1000, 64
    print("[1] Σ̂ sampling, p = 64, R = 1 000: µs per replica-step")
    for b in (1, 16, 256, 4096):
        row = []
        for method in ("bartlett", "direct"):
            if method == "bartlett" and b < p:
                row.append("   n/a (b < p)")
                continue
            s = SigmaSampler(p, b, R, 0, dev, torch.float32, method)
            n = 3 if b >= 4096 else 10
            t0 = time.perf_counter()
            for _ in range(n):
                s.draw()
            row.append(f"{(time.perf_counter() - t0) / n / R * 1e6:10.1f} µs")
        print(f"    b = {b:5d}: Bartlett {row[0]}   direct {row[1]}")

    cfg = parse_config({"setting": "deep_linear", **DEEP_LINEAR_PRESETS["paper (Figure 3)"]})
    steps = 20 if args.quick else cfg.steps
    W0 = [np.asarray(M, dtype=np.float64) for M in cfg.w0_values]
    T = [np.asarray(M, dtype=np.float64) for M in cfg.teacher_values]
    alphas = cfg.lr.alphas(steps)
    t0 = time.perf_counter()
    run_replicas(W0, T, alphas, 16, cfg.replicas, 0, dev, torch.float32, record_every=cfg.record_every)
    t_engine = time.perf_counter() - t0
    steps_every = max(4, steps // 10)
    t0 = time.perf_counter()
    run_replicas(W0, T, alphas[:steps_every], 16, cfg.replicas, 0, dev, torch.float32, record_every=1)
    t_every = (time.perf_counter() - t0) * steps / steps_every
    r_naive = 2 if args.quick else 5
    t0 = time.perf_counter()
    naive_loop(W0, T, alphas, 16, r_naive)
    t_naive = (time.perf_counter() - t0) * cfg.replicas / r_naive
    print(f"[2] paper preset 64 → 256 → 128, {cfg.replicas} replicas, {steps} steps, b = 16, float32: engine "
          f"{t_engine:.1f} s with statistics every {cfg.record_every} steps (per-layer variances, RB, full-gradient "
          f"spread, loss), ≈ {t_every:.0f} s with statistics at every step ({steps_every} steps timed, scaled); naive "
          f"loop without any statistics ≈ {t_naive:.0f} s ({r_naive} replicas × {steps} steps timed, scaled "
          f"×{cfg.replicas // r_naive}); speed-up ×{t_naive / t_engine:.1f} (every {cfg.record_every}) and "
          f"×{t_naive / t_every:.1f} (every step); target ≥ 20")


if __name__ == "__main__":
    main()

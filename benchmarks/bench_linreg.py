"""Linear-regression benchmarks, measured side by side in one run (not a test). Run: ``make bench``.

1. Exact theory on Graduate Admission, T = 2 000, the paper's 21 batch sizes (target ≤ 1 s on 2 CPU cores).
2. Replica engine against a tutorial-style loop (one nn.Linear + torch.optim.SGD + DataLoader per replica),
   R = 1 000, T = 2 000, b = 16 (target ≥ 200×, issue #13). The loop is timed on a subset of replicas and scaled linearly
   (its cost is exactly linear in R: the replicas are independent), after a warm-up, best of 3; the engine runs
   all 1 000.
3. Exact theory against the replica count Monte Carlo needs to match a given relative precision.
4. Subset sampling: ours against torch.rand(R, n).argsort(), R = 1 000, n = 500.
Pass ``--quick`` for a short smoke run. On a CUDA machine the engine is also timed on the GPU.
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

from backend import api  # noqa: E402
from backend.config import parse_config  # noqa: E402
from backend.fields import paper_batch_sizes  # noqa: E402
from backend.engine import linreg as engine  # noqa: E402
from backend.engine.samplers import make_sampler  # noqa: E402
from backend.theory import linreg as th  # noqa: E402


def timed(fn, repeat: int = 1) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def naive_loop(cfg, R: int, T: int, b: int) -> None:
    """What a tutorial would write: a model, an optimizer and a DataLoader per replica."""
    from torch.utils.data import DataLoader, TensorDataset

    X = torch.as_tensor(np.asarray(cfg.X, float))
    y = torch.as_tensor(np.asarray(cfg.y, float))
    w0 = torch.as_tensor(np.asarray(cfg.w0_values, float))
    alphas = cfg.lr.alphas(T)
    for r in range(R):
        model = torch.nn.Linear(X.shape[1], 1, bias=False, dtype=torch.float64)
        with torch.no_grad():
            model.weight.copy_(w0[None])
        opt = torch.optim.SGD(model.parameters(), lr=alphas[0])
        loader = DataLoader(TensorDataset(X, y), batch_size=b, shuffle=True, drop_last=True,
                            generator=torch.Generator().manual_seed(r))
        t = 0
        while t < T:
            for xb, yb in loader:
                for group in opt.param_groups:
                    group["lr"] = alphas[t]
                opt.zero_grad()
                loss = 0.5 * ((model(xb).squeeze(1) - yb) ** 2).mean()
                loss.backward()
                opt.step()
                t += 1
                if t == T:
                    break


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    T = 200 if args.quick else 2000
    R = 1000
    print(f"machine: {platform.platform()}, {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPU cores, torch {torch.__version__} ({torch.get_num_threads()} threads), "
          f"cuda: {torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'none'}")

    # 1. exact theory
    cfg = parse_config({"steps": T, "batch_sizes": paper_batch_sizes(500)})
    t_theory = timed(lambda: api.theory_curves(cfg, cfg.batch_sizes, T), repeat=3)
    print(f"[1] exact theory, Graduate Admission, T = {T}, {len(cfg.batch_sizes)} batch sizes: {t_theory:.3f} s "
          f"(target ≤ 1 s)")

    # 2. engine vs naive loop
    cfg16 = parse_config({"steps": T, "batch_sizes": [16], "replicas": R})
    X, y = np.asarray(cfg16.X, float), np.asarray(cfg16.y, float)
    w0 = np.asarray(cfg16.w0_values, float)
    alphas = cfg16.lr.alphas(T)
    dev = torch.device("cpu")
    c = float(th.noise_factor(16, cfg16.n))
    engine.run_replicas(X, y, w0, alphas[:50], 16, R, "without_replacement", 0, dev, c)  # warm-up
    t_engine = timed(lambda: engine.run_replicas(X, y, w0, alphas, 16, R, "without_replacement", 0, dev, c), repeat=3)
    r_naive = 3 if args.quick else 10
    naive_loop(cfg16, 1, 200, 16)  # warm-up: the first seconds of a loop like this run up to 2× slower
    t_naive_sub = timed(lambda: naive_loop(cfg16, r_naive, T, 16), repeat=3)  # best of 3: the loop's fastest
    t_naive = t_naive_sub * R / r_naive
    print(f"[2] R = {R}, T = {T}, b = 16: engine {t_engine:.2f} s (all statistics, 3 quantities + RB); "
          f"tutorial loop {t_naive_sub:.2f} s for {r_naive} replicas → {t_naive:.0f} s for {R} (linear); "
          f"speed-up ×{t_naive / t_engine:.0f} (target ≥ 200; both best of 3)")
    if torch.cuda.is_available():
        gpu = torch.device("cuda")
        engine.run_replicas(X, y, w0, alphas[:10], 16, R, "without_replacement", 0, gpu, c)  # warm-up
        t_gpu = timed(lambda: engine.run_replicas(X, y, w0, alphas, 16, R, "without_replacement", 0, gpu, c))
        print(f"[2] on {torch.cuda.get_device_name(0)}: engine {t_gpu:.2f} s (×{t_engine / t_gpu:.1f} vs CPU)")

    # 3. exact theory vs the replicas Monte Carlo needs
    res = engine.run_replicas(X, y, w0, alphas, 16, R, "without_replacement", 0, dev, c)
    exact = api.theory_curves(cfg16, [16], T)["var_g"][0]
    rel_se = np.nanmedian(res.curves["var_g"]["se"][1:] / exact[1:])
    for target in (1e-2, 1e-3):
        need = R * (rel_se / target) ** 2
        print(f"[3] relative SE {rel_se:.3g} at R = {R} (median over t); to reach {target:g} Monte Carlo needs "
              f"≈ {need:,.0f} replicas ≈ {t_engine * need / R:,.0f} s with this engine; the exact curve takes "
              f"{timed(lambda: api.theory_curves(cfg16, [16], T)):.3f} s at float64 precision")

    # 4. subset sampler vs argsort
    g = torch.Generator().manual_seed(0)
    # as the engine draws: blocks of steps, numpy's exact integers
    s = make_sampler("without_replacement", 500, 16, R, g, dev, block=engine.STEP_BLOCK, numpy_draws=True)
    steps = 256
    t_ours = timed(lambda: [s.draw() for _ in range(steps)], repeat=3) / steps
    t_arg = timed(lambda: [torch.rand(R, 500, generator=g).argsort(dim=1)[:, :16] for _ in range(steps)]) / steps
    print(f"[4] b-subsets for R = {R}, n = 500, b = 16: ours {t_ours * 1e3:.2f} ms/step, argsort "
          f"{t_arg * 1e3:.2f} ms/step (×{t_arg / t_ours:.1f})")
    for n in (5_000, 50_000):
        s = make_sampler("without_replacement", n, 16, R, g, dev, block=engine.STEP_BLOCK, numpy_draws=True)
        t_n = timed(lambda: [s.draw() for _ in range(64)]) / 64
        print(f"    n = {n}: ours {t_n * 1e3:.2f} ms/step (flat in n)")


if __name__ == "__main__":
    main()

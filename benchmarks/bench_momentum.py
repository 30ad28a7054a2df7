"""Benchmark (#24): momentum against plain SGD, measured side by side in one run (not a test). Run: ``make bench`` or
``python benchmarks/bench_momentum.py [--mlp-epochs E]``.

(a) Linear-regression replicas (the setting's simulate, Graduate Admission defaults), R = 1 000, T = 2 000, b = 16:
    heavy ball β = 0.9 against plain SGD (target ≤ 1.3×).
(b) The MLP's laptop preset (its simulate): β = 0.9 against plain SGD (target ≤ 1.3×). Plain SGD runs the fused
    held-update path, momentum the explicit Linear–ReLU gradients + backend/optim.py (docs/theory.md §3, §8);
    ``--mlp-epochs`` shortens both runs alike (the output says so).
(c) The exact linear-regression recursion (theory at every t, T = 2 000, the paper's 21 batch sizes): β = 0.9 against
    plain (the state doubles; target ≤ 4×).
(d) The advisor along the momentum axis: 4 β (0, 0.5, 0.9, 0.99) × 3 rules × 21 b at N = 10⁵ (target < 1 s).

Each timing: a warm-up, then the best of 3 (the MLP: best of 2), plain and momentum taken in turn; every replica run
into a fresh throw-away cache. On a loaded box compare the ratios, not the seconds (the load average is printed).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from backend import api  # noqa: E402
from backend.cache import ResultCache  # noqa: E402
from backend.fields import paper_batch_sizes  # noqa: E402

MOMENTUM = {"optimizer": {"name": "sgd", "momentum": 0.9}}


def best_of(fn, repeat: int = 3) -> tuple[float, float]:
    """The least wall time and the least CPU time (this process, all its threads) of ``repeat`` calls."""
    wall, cpu = float("inf"), float("inf")
    for _ in range(repeat):
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        wall, cpu = min(wall, time.perf_counter() - t0), min(cpu, time.process_time() - c0)
    return wall, cpu


def simulate(raw: dict) -> None:
    """One uncached run of ``raw`` (a fresh cache: nothing served from an earlier run)."""
    with tempfile.TemporaryDirectory(prefix="bench-momentum-") as tmp:
        cache = ResultCache(Path(tmp))
        try:
            out = api.simulate(api.parse_config(raw), cache=cache)
        finally:
            cache.close()
    assert not out.get("cached"), "the run was served from a cache"


def verdict(ratio: float, target: float) -> str:
    return f"target ≤ {target:g}× {'PASS' if ratio <= target else 'FAIL'}"


def ratios(label: str, plain: tuple[float, float], momentum: tuple[float, float], target: float,
           digits: int = 2) -> None:
    """One line: wall seconds and their ratio with the verdict, and the CPU-time ratio (on a box shared with other
    work the wall time also counts waiting for a core; the CPU time counts the work)."""
    (w0, c0), (w1, c1) = plain, momentum
    print(f"{label}: plain {w0:.{digits}f} s, momentum 0.9 {w1:.{digits}f} s → ×{w1 / w0:.2f} wall "
          f"({verdict(w1 / w0, target)}), ×{c1 / c0:.2f} CPU time ({verdict(c1 / c0, target)}); load average "
          f"{os.getloadavg()[0]:.1f}", flush=True)


def side_by_side(label: str, plain: dict, momentum: dict, target: float, repeat: int = 3) -> None:
    """Best of ``repeat`` for each, the two runs taken in turn (a load that comes and goes hits both alike)."""
    simulate(plain)  # warm-up (imports, BLAS, torch's first calls)
    simulate(momentum)
    t_plain, t_mom = (float("inf"),) * 2, (float("inf"),) * 2
    for _ in range(repeat):
        t_plain = tuple(map(min, t_plain, best_of(lambda: simulate(plain), 1)))
        t_mom = tuple(map(min, t_mom, best_of(lambda: simulate(momentum), 1)))
    ratios(label, t_plain, t_mom, target)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mlp-epochs", type=int, default=None,
                    help="epochs of the MLP runs (default: the laptop preset's own)")
    ap.add_argument("--only", default="abcd", help="the parts to run, e.g. 'bd' (default: all four)")
    args = ap.parse_args()
    print(f"machine: {platform.platform()}, {os.cpu_count()} CPU cores, torch {torch.__version__} "
          f"({torch.get_num_threads()} threads), load average {os.getloadavg()[0]:.1f}, cuda: "
          f"{torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'none'}")

    T, bs = 2000, paper_batch_sizes(500)  # (c) and (d): the paper's 21 batch sizes

    # (a) linear-regression replicas
    if "a" in args.only:
        lin = {"setting": "linear_regression", "steps": 2000, "batch_sizes": [16], "replicas": 1000}
        side_by_side(f"(a) linear regression replicas, R = 1000, T = 2000, b = 16 ({api.resolve_device('auto')})",
                     lin, {**lin, **MOMENTUM}, 1.3)

    # (b) the MLP's laptop preset
    if "b" in args.only:
        mlp = api.expand_preset({"setting": "mlp", "preset": "laptop"})
        epochs = mlp.get("epochs", api.defaults("mlp")["epochs"])
        if args.mlp_epochs is not None:
            mlp["epochs"] = args.mlp_epochs
        cfg = api.parse_config(mlp)
        what = (f"laptop preset, {cfg.inits} × {cfg.replicas} replicas, b = {', '.join(map(str, cfg.batch_sizes))}, "
                + (f"{cfg.epochs} epochs (REDUCED from the preset's {epochs})" if cfg.epochs != epochs
                   else f"{cfg.epochs} epochs (the preset's)"))
        side_by_side(f"(b) MLP {what}", mlp, {**mlp, **MOMENTUM}, 1.3, repeat=2)

    # (c) the exact recursion at every t
    if "c" in args.only:
        exact = {"setting": "linear_regression", "steps": T, "batch_sizes": bs}
        plain_cfg, mom_cfg = api.parse_config(exact), api.parse_config({**exact, **MOMENTUM})
        api.theory_curves(plain_cfg, bs, 50)  # warm-up
        api.theory_curves(mom_cfg, bs, 50)
        t_plain = best_of(lambda: api.theory_curves(plain_cfg, bs, T))
        t_mom = best_of(lambda: api.theory_curves(mom_cfg, bs, T))
        ratios(f"(c) exact theory at every t, Graduate Admission, T = {T}, {len(bs)} batch sizes", t_plain, t_mom, 4,
               digits=3)

    # (d) the advisor's momentum axis
    if "d" in args.only:
        N, momenta = 100_000, [0, 0.5, 0.9, 0.99]
        adv = api.parse_config({"setting": "linear_regression", "batch_sizes": bs})
        api.advise_momentum(adv, 1000, momenta)  # warm-up
        (t_adv, c_adv), (t_eff, _), (t_one, c_one) = (
            best_of(lambda: api.advise_momentum(adv, N, momenta)),
            best_of(lambda: api.advise_momentum(adv, N, momenta, effective_lr=True)),
            best_of(lambda: api.advise_rules(adv, N)))
        print(f"(d) advisor, {len(momenta)} β × {len(api.SCALINGS)} rules × {len(bs)} b, N = {N}: {t_adv:.2f} s "
              f"(--effective-lr {t_eff:.2f} s; the plain advisor, 3 rules × {len(bs)} b, {t_one:.2f} s: "
              f"×{t_adv / t_one:.1f}) — target < 1 s {'PASS' if max(t_adv, t_eff) < 1 else 'FAIL'}; CPU time "
              f"{c_adv:.2f} s (plain {c_one:.2f} s: ×{c_adv / c_one:.1f}); load average {os.getloadavg()[0]:.1f}",
              flush=True)


if __name__ == "__main__":
    main()

"""Cost-model benchmark (not a test): each setting's time estimate (backend/costs.py, the settings' ``estimate``)
against a measured run of the same config on this machine, within a factor of 2.

Each config runs in a fresh process (``--one``) with a throw-away cache, so that nothing is served from a cache and
one run's warm-up does not help the next. The child reports
  - start-up: importing the backend (torch, numpy …) and torch.func's first call (it imports torch._dynamo, ≈ 3
    CPU-s; the app pays it in the background when it starts: backend/jobs.py ``warm_up``) — paid once per process
    (the app's or the CLI's), not part of the estimate;
  - the run: parsing, the estimate (which loads the data set or tokenises the corpus, as the run needs) and
    ``api.simulate``: wall time, the process's CPU time (user + sys of all its threads, ``resource.getrusage``) and
    the CPU time of the thread that ran it (``time.thread_time``).
The box this runs on may be shared, which inflates wall time but hardly CPU time (OpenMP threads wait passively:
backend/__init__.py), so the cost model is calibrated on CPU time: the run's CPU-seconds ÷ the cores it used, the
cores used being process CPU ÷ the running thread's CPU (it takes part in every parallel region and runs all serial
code, so its CPU time is the run's critical path — on an idle box, its wall time). The check is
``estimate / (CPU s ÷ cores used)`` within [1/2, 2]; the wall-time ratio and the load average (``os.getloadavg()``)
are printed beside it.

Run: ``python benchmarks/bench_estimates.py [--quick]`` (``--quick``: the shorter configs only, ≈ 1 min).
Exit status 1 when a ratio is outside [1/2, 2].
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# (name, config, quick): the defaults / laptop presets of every setting, and a few variants that move the model's
# terms apart (replicas, steps, batch sizes, widths)
CONFIGS: list[tuple[str, dict, bool]] = [
    ("linear regression: defaults", {"setting": "linear_regression"}, True),
    ("linear regression: b = 2, 2 000 steps, 500 replicas",
     {"setting": "linear_regression", "batch_sizes": [2], "steps": 2000, "replicas": 500}, True),
    ("linear regression: b = 16, 64, T = 1 000, 4 000 replicas",
     {"setting": "linear_regression", "batch_sizes": [16, 64], "steps": 1000, "replicas": 4000}, False),
    ("deep linear: defaults", {"setting": "deep_linear"}, True),
    ("deep linear: 8 → 16 → 4, 200 steps, 2 000 replicas",
     {"setting": "deep_linear", "dims": [8, 16, 4], "steps": 200, "batch_sizes": [4, 32], "replicas": 2000}, False),
    ("deep linear: Figure 3 widths, b = 4, 100 steps", {"setting": "deep_linear", "preset": "paper (Figure 3)",
                                                         "batch_sizes": [4], "steps": 100}, False),
    ("deep linear: Figure 3 widths, b = 64, 100 steps", {"setting": "deep_linear", "preset": "paper (Figure 3)",
                                                          "batch_sizes": [64], "steps": 100}, False),
    ("MLP: laptop preset", {"setting": "mlp", "preset": "laptop"}, True),
    ("MLP: laptop preset, 3 epochs, b = 16", {"setting": "mlp", "preset": "laptop", "epochs": 3,
                                             "batch_sizes": [16]}, False),
    ("sequence: laptop preset, 1 epoch", {"setting": "sequence", "preset": "laptop", "epochs": 1}, True),
    ("sequence: laptop preset", {"setting": "sequence", "preset": "laptop"}, False),
]
FACTOR = 2.0


def one(raw: dict) -> dict:
    """In this (fresh) process: start-up, then one uncached run of ``raw``; the estimate and the measured times."""
    import resource

    t0 = time.perf_counter()
    from backend import api  # first: it sets OMP_WAIT_POLICY before torch loads OpenMP
    from backend.cache import ResultCache

    import torch

    torch.func.grad(lambda x: (x * x).sum())(torch.ones(1))  # as backend/jobs.py: warm_up does when the app starts
    startup = time.perf_counter() - t0

    def cpu() -> float:
        r = resource.getrusage(resource.RUSAGE_SELF)
        return r.ru_utime + r.ru_stime

    with tempfile.TemporaryDirectory() as tmp:
        c0, th0, w0 = cpu(), time.thread_time(), time.perf_counter()
        config = api.parse_config(raw)
        est = api.estimate(config)  # loads the data set / corpus as the run does (kept per process after this)
        sim = api.simulate(config, cache=ResultCache(Path(tmp)))
        wall, cpu_s, thread_s = time.perf_counter() - w0, cpu() - c0, time.thread_time() - th0
    assert not sim.get("cached"), "the run was served from a cache"
    return {"startup_s": startup, "wall_s": wall, "cpu_s": cpu_s, "thread_s": thread_s,
            "threads": torch.get_num_threads(), "estimate_s": est["seconds"]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="the shorter configs only")
    ap.add_argument("--one", help=argparse.SUPPRESS)  # a config (JSON) to run in this process
    ap.add_argument("--only", help="run only the configs whose name contains this")
    args = ap.parse_args()
    if args.one:
        print(json.dumps(one(json.loads(args.one))))
        return
    from backend import api  # noqa: F401  (first: it sets OMP_WAIT_POLICY before torch loads OpenMP)

    import torch

    print(f"machine: {platform.platform()}, {os.cpu_count()} CPU cores, torch {torch.__version__} "
          f"({torch.get_num_threads()} threads); load average {os.getloadavg()[0]:.2f} at the start")
    print("ratio = estimate / (CPU s ÷ cores used): the run's CPU time is the measure (wall time on a shared box is "
          "inflated by the other processes); it must lie within [1/2, 2]")
    print(f"{'config':<58} {'estimate':>8} {'CPU':>7} {'cores':>5} {'CPU/core':>8} {'wall':>7} {'ratio':>6} "
          f"{'wall r':>6} {'start-up':>8} {'load':>5}")
    bad = 0
    for name, raw, quick in CONFIGS:
        if (args.quick and not quick) or (args.only and args.only not in name):
            continue
        out = subprocess.run([sys.executable, __file__, "--one", json.dumps(raw)], capture_output=True, text=True,
                             cwd=ROOT, check=False)
        if out.returncode:
            print(f"{name:<58} failed: {out.stderr.strip().splitlines()[-1] if out.stderr.strip() else out.returncode}")
            bad += 1
            continue
        m = json.loads(out.stdout.strip().splitlines()[-1])
        cores = min(m["threads"], max(1.0, m["cpu_s"] / max(m["thread_s"], 1e-9)))
        per_core = m["cpu_s"] / cores
        ratio, wall_ratio = m["estimate_s"] / per_core, m["estimate_s"] / m["wall_s"]
        ok = 1 / FACTOR <= ratio <= FACTOR
        bad += not ok
        print(f"{name:<58} {m['estimate_s']:7.1f}s {m['cpu_s']:6.1f}s {cores:5.2f} {per_core:7.1f}s {m['wall_s']:6.1f}s "
              f"{ratio:6.2f} "
              f"{wall_ratio:6.2f} {m['startup_s']:7.1f}s {os.getloadavg()[0]:5.2f}" + ("" if ok else "  <- off"))
    print("all estimates within a factor of 2 of the measured runs" if not bad else f"{bad} estimate(s) off")
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()

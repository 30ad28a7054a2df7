"""Benchmark: the overhead per cell of a sweep on an embedded Ray against the local executor, on one 16-cell sweep
(linear regression, 4 seeds × 4 learning rates, small cells), each into a fresh cache, measured side by side in one
run. Ray's start-up is timed apart (it is paid once per process). Run: python benchmarks/bench_sweep.py (make bench)."""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from backend import cluster, sweep  # noqa: E402
from backend.cache import ResultCache  # noqa: E402

SWEEP = {"base": {"setting": "linear_regression", "steps": 100, "replicas": 200, "batch_sizes": [16]},
         "grid": {"seed": [1, 2, 3, 4], "lr.c": [0.05, 0.1, 0.2, 0.5]}}


def timed(executor) -> float:
    spec = sweep.parse_sweep(SWEEP)
    t0 = time.perf_counter()
    out = sweep.run(spec, executor, ResultCache(tempfile.mkdtemp(prefix="bench-sweep-")))
    assert not out["failed"] and not any(c["cached"] for c in out["cells"])
    return time.perf_counter() - t0


def main() -> None:
    threads = torch.get_num_threads()
    n = 4 * 4
    timed(sweep.LocalExecutor())  # warm-up (imports, data, BLAS)
    local = min(timed(sweep.LocalExecutor()) for _ in range(2))
    t0 = time.perf_counter()
    executor = cluster.RayExecutor(threads=threads)
    start = time.perf_counter() - t0
    ray_one = min(timed(executor) for _ in range(2))
    executor_par = cluster.RayExecutor(threads=1)
    ray_par = min(timed(executor_par) for _ in range(2))
    cluster.shutdown()
    print(f"sweep, 16 cells (linear regression, R = 200, T = 100, b = 16), {threads} CPU threads: local "
          f"{local:.2f} s ({local / n * 1e3:.0f} ms/cell); embedded Ray, {threads} thread(s) per cell "
          f"{ray_one:.2f} s (overhead {(ray_one - local) / n * 1e3:+.0f} ms/cell); embedded Ray, 1 thread per cell "
          f"({executor_par.workers([])} at once) {ray_par:.2f} s; Ray start-up {start:.1f} s (once per process)")


if __name__ == "__main__":
    main()

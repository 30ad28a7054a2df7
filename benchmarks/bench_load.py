"""Load benchmark (not a test): one replica run alone against two at once, side by side in one run of this script.

Two runs at once happen when two browser sessions press Run (two threads of one Streamlit process) or when a page
runs beside a sweep or the CLI (two processes). Each of the two should take at most ≈ 2.2× the run alone on a box
whose cores they share. Measured here, in this order, each repeated ``--repeat`` times:
  alone      one run in a fresh process;
  threads    two runs as two background jobs of one fresh process (as two browser sessions: backend/jobs.py, whose
             RUN_SLOTS let one compute at a time — each job's time counts from both being started);
  processes  two fresh processes at once (as a page beside a sweep).
Printed: the wall time of each, the ratio to the run alone, and the load average (``os.getloadavg()``) — other
processes on a shared box load it too, so the ratios are what to read, each against the alone run next to it.

Run: ``python benchmarks/bench_load.py [--setting linear_regression|mlp|sequence] [--repeat N]``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

CONFIGS = {
    "linear_regression": {"setting": "linear_regression", "batch_sizes": [2, 16], "steps": 2000, "replicas": 500},
    "mlp": {"setting": "mlp", "preset": "laptop", "epochs": 3},
    "sequence": {"setting": "sequence", "preset": "laptop", "epochs": 1, "n_train": 400},
}


def child(raw: dict, copies: int) -> list[float]:
    """In this process: ``copies`` uncached runs of ``raw`` at once, in threads; their wall times."""
    from backend import api
    from backend.cache import ResultCache

    config = api.parse_config(raw)
    api.estimate(config)  # data loaded and tokenised once, as on a page before Run
    times = [0.0] * copies

    from backend import jobs

    tmp = tempfile.TemporaryDirectory()
    t0 = time.perf_counter()
    done = [0.0] * copies

    def work(i: int):  # as a page's Run: a background job (backend/jobs.py), one cache per run
        def run(progress, cancel):
            api.simulate(config, progress, cancel, cache=ResultCache(Path(tmp.name) / str(i)))
            done[i] = time.perf_counter() - t0
        return run

    started = [jobs.start(str(i), work(i), api.Progress()) for i in range(copies)]
    for job in started:
        job.thread.join()
        assert job.state == "done", job.error
    tmp.cleanup()
    return done


def spawn(raw: dict, copies: int) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, __file__, "--child", json.dumps(raw), "--copies", str(copies)],
                            stdout=subprocess.PIPE, text=True, cwd=ROOT)


def collect(proc: subprocess.Popen) -> list[float]:
    out, _ = proc.communicate()
    if proc.returncode:
        raise SystemExit(f"a run failed (exit {proc.returncode})")
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--setting", default="linear_regression", choices=list(CONFIGS))
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--copies", type=int, default=1, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(args.child), args.copies)))
        return
    from backend import api  # noqa: F401  (first: it sets OMP_WAIT_POLICY before torch loads OpenMP)

    import torch

    raw = CONFIGS[args.setting]
    print(f"{args.setting}: {json.dumps(raw)}; {os.cpu_count()} CPU cores, torch {torch.__version__} with "
          f"{torch.get_num_threads()} threads, OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}")
    worst = 0.0
    for r in range(args.repeat):
        alone = collect(spawn(raw, 1))[0]
        load = os.getloadavg()[0]
        pair = collect(spawn(raw, 2))
        both = [collect(p)[0] for p in [spawn(raw, 1), spawn(raw, 1)]]
        ratios = [t / alone for t in (*pair, *both)]
        worst = max(worst, *ratios)
        print(f"[{r + 1}] alone {alone:6.1f} s | two threads {pair[0]:6.1f} {pair[1]:6.1f} s "
              f"(×{ratios[0]:.2f}, ×{ratios[1]:.2f}) | two processes {both[0]:6.1f} {both[1]:6.1f} s "
              f"(×{ratios[2]:.2f}, ×{ratios[3]:.2f}) | load average {load:.2f} → {os.getloadavg()[0]:.2f}")
    print(f"worst ratio ×{worst:.2f} (goal ≤ ×2.2 each)")


if __name__ == "__main__":
    main()

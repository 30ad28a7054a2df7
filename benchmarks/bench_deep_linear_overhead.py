"""The deep-linear cost model's overhead terms (backend/engine/deep_linear.py: CHUNK_STEP_OVERHEAD_S, RECORD_REPLICA_S),
measured (not a test). Run: ``python benchmarks/bench_deep_linear_overhead.py``.

A chunk of 2 replicas does almost no arithmetic, so its per-step cost is the per-chunk overhead (Python, kernel
launches, small ops): plain steps (statistics at the first and last step only) and recorded steps (statistics every
step), at the paper's widths (64 → 256 → 128, float32) and the defaults' (3 → 4 → 2, float64). 2 000 replicas at the
defaults' widths add the per-replica cost of a recorded step. Each step's CPU time of the running thread is read from
the progress callback (one call per chunk and step); the 10th percentile is printed beside the median — on a shared
box most steps are inflated by the other processes, the low percentile is close to the step's cost on a quiet box.
The estimate multiplies the per-chunk terms by the number of chunks (25–32 for the paper preset on a CPU, whose
chunks are cache-sized), so an overhead fitted on the one-chunk defaults must not absorb their per-replica work.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from backend.config import parse_config  # noqa: E402
from backend.engine import deep_linear as engine  # noqa: E402

FIG3 = {"setting": "deep_linear", "preset": "paper (Figure 3)"}
DEFAULTS = {"setting": "deep_linear"}
CASES = [  # (what, config, replicas)
    ("paper widths, plain steps, 2 replicas", {**FIG3, "batch_sizes": [4], "steps": 1000, "record_every": 1000}, 2),
    ("paper widths, recorded steps, 2 replicas", {**FIG3, "batch_sizes": [4], "steps": 300, "record_every": 1}, 2),
    ("defaults' widths, recorded steps, 2 replicas", {**DEFAULTS, "batch_sizes": [4], "steps": 300}, 2),
    ("defaults' widths, recorded steps, 2 000 replicas", {**DEFAULTS, "batch_sizes": [4], "steps": 300}, 2000),
]


def step_times(raw: dict, replicas: int) -> np.ndarray:
    """CPU seconds of the running thread per chunk-step of one run (the first and the last step left out)."""
    cfg = parse_config(raw)
    stamps: list[float] = []
    W0 = [np.asarray(M, dtype=np.float64) for M in cfg.w0_values]
    T = [np.asarray(M, dtype=np.float64) for M in cfg.teacher_values]
    dtype = torch.float32 if cfg.dtype == "float32" else torch.float64
    t0 = time.thread_time()
    engine.run_replicas(W0, T, cfg.lr.alphas(cfg.steps), cfg.batch_sizes[0], replicas, cfg.seed, torch.device("cpu"),
                        dtype, lambda n: stamps.append(time.thread_time()), None, record_every=cfg.record_every)
    return np.diff([t0, *stamps])[1:-1]


def main() -> None:
    print(f"model: per chunk-step {engine.CHUNK_STEP_OVERHEAD_S[0] * 1e3:.2f} ms plain, "
          f"{engine.CHUNK_STEP_OVERHEAD_S[1] * 1e3:.2f} ms recorded; per replica and recorded step "
          f"{engine.RECORD_REPLICA_S * 1e6:.1f} µs")
    for what, raw, replicas in CASES:
        d = step_times(raw, replicas) * 1e3
        print(json.dumps({"case": what, "p1_ms": round(float(np.percentile(d, 1)), 3),
                          "p10_ms": round(float(np.percentile(d, 10)), 3),
                          "median_ms": round(float(np.median(d)), 3)}), flush=True)


if __name__ == "__main__":
    main()

"""Benchmark: the exact critical batch size (backend/cbs.py) on Graduate Admission — 4 checkpoints × 6 k × 3 scaling
rules in one pass (72 branches, the longest ⌊S/B⌋ = 1 000 steps, plus the reference run to the last checkpoint),
plain SGD and heavy ball (the doubled state). Target (#26): ≤ 1 s on 2 CPU cores. Run: python benchmarks/bench_cbs.py
(part of make bench)."""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from backend import cbs  # noqa: E402
from backend.config import parse_config  # noqa: E402

TARGET_SECONDS = 1.0


def best_of(fn, repeat: int = 3) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    B, S, checkpoints, ks = 8, 8000, [0, 50, 100, 200], [1, 2, 4, 8, 16, 32]
    for name, over in (("plain SGD", {}), ("momentum 0.9", {"optimizer": {"name": "sgd", "momentum": 0.9}})):
        cfg = parse_config({"setting": "linear_regression", "steps": 200, "lr": {"schedule": "inverse", "c": "1/2"},
                            **over})
        cbs.cbs_rules(cfg, B, checkpoints, S, ks=ks)  # warm-up (imports, BLAS)
        seconds = best_of(lambda: cbs.cbs_rules(cfg, B, checkpoints, S, ks=ks))
        print(f"cbs, Graduate Admission, {name}: {len(checkpoints)} checkpoints × {len(ks)} k × 3 rules, B = {B}, "
              f"S = {S} (longest branch {S // B} steps): {seconds:.2f} s — target ≤ {TARGET_SECONDS:g} s "
              f"{'met' if seconds <= TARGET_SECONDS else 'NOT met'}")


if __name__ == "__main__":
    main()

"""Benchmark: the exact batch-size advisor for Graduate Admission, 21 batch sizes (the paper's), N = 100 000 samples,
all three scaling rules in one pass — and each rule alone, and with a target loss. Target: interactive (well under a
second on 2 CPU cores). Run: python benchmarks/bench_advisor.py (part of make bench)."""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from backend import advisor  # noqa: E402
from backend.config import parse_config  # noqa: E402
from backend.fields import paper_batch_sizes  # noqa: E402


def best_of(fn, repeat: int = 3) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    cfg = parse_config({"batch_sizes": paper_batch_sizes(500)})
    N = 100_000
    advisor.advise(cfg, 1000)  # warm-up (imports, BLAS)
    all_rules = best_of(lambda: advisor.advise_rules(cfg, N))
    one = best_of(lambda: advisor.advise(cfg, N, "sqrt"))
    target = best_of(lambda: advisor.advise_rules(cfg, N, target_loss=0.004), repeat=1)
    steps = sum(N // b for b in cfg.batch_sizes)
    print(f"advisor, Graduate Admission, {len(cfg.batch_sizes)} batch sizes, N = {N}: all three rules in one pass "
          f"{all_rules:.2f} s; one rule {one:.2f} s; three rules with a target loss (2 T_b steps searched) "
          f"{target:.2f} s — {steps} lane-steps per rule, {N // min(cfg.batch_sizes)} sequential steps")


if __name__ == "__main__":
    main()

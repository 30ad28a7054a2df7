"""The product's own runs, timed side by side in one run on two source trees (not a test): this checkout against
another one (``--before DIR``, e.g. a ``git worktree`` of the commit before a redesign), to show that a change of
structure kept the speed. Each workload runs through the public API (``backend.api``: parse, theory, simulate,
advise), in a fresh Python process per tree and repetition, the trees alternating (before then after in each repetition) so that the box's
load falls on both alike; the time of each workload inside its process is the best of ``--repeat`` processes. No
cache: every simulation runs (a temporary result cache per process).

Run: ``python benchmarks/bench_before_after.py --before /tmp/before`` (add ``--quick`` for a smoke run). Prints one
table: per workload the best time in each tree and their ratio (after / before); within noise is about ±10 % on a
loaded 2-core box.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent

# name → (config, what to time): "theory" (exact curves), "simulate" (replicas), "advise" (budget 10⁵, all rules)
WORKLOADS: dict[str, tuple[dict, str]] = {
    "linreg theory T=2000, 21 b": ({"setting": "linear_regression", "steps": 2000}, "theory"),
    "linreg replicas R=1000 T=2000 b=16": ({"setting": "linear_regression", "steps": 2000, "replicas": 1000,
                                           "batch_sizes": [16]}, "simulate"),
    "deep linear replicas R=200 T=300": ({"setting": "deep_linear", "steps": 300, "replicas": 200,
                                         "batch_sizes": [4, 16]}, "simulate"),
    "MLP 1 epoch, 2×4 replicas, b=16,64": ({"setting": "mlp", "epochs": 1, "inits": 2, "replicas": 4,
                                           "batch_sizes": [16, 64]}, "simulate"),
    "sequence 1 epoch, 4 replicas, b=32": ({"setting": "sequence", "epochs": 1, "replicas": 4,
                                           "batch_sizes": [32]}, "simulate"),
    "advisor linreg N=1e5, 3 rules": ({"setting": "linear_regression"}, "advise"),
}

CHILD = textwrap.dedent("""
    import json, sys, tempfile, time
    import torch
    torch.set_num_threads({threads})
    from backend import api
    from backend.cache import ResultCache
    raw, what = json.loads(sys.argv[1]), sys.argv[2]
    config = api.parse_config(raw)
    cache = ResultCache(tempfile.mkdtemp())
    t0 = time.perf_counter()
    if what == "theory":
        api.theory(config, cache=cache)
    elif what == "simulate":
        api.simulate(config, cache=cache)
    else:
        api.advise_rules(config, 100000)
    print(json.dumps(time.perf_counter() - t0))
""")


def time_once(tree: Path, raw: dict, what: str, threads: int) -> float:
    """One fresh process in ``tree``: the workload's seconds."""
    out = subprocess.run([sys.executable, "-c", CHILD.replace("{threads}", str(threads)), json.dumps(raw), what],
                         cwd=tree, capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": str(tree)})
    return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", required=True, type=Path, help="the other source tree (its root)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--only", default="", help="run only the workloads whose name contains this")
    parser.add_argument("--quick", action="store_true", help="one repetition of the two fastest workloads")
    args = parser.parse_args()
    names = [n for n in WORKLOADS if args.only in n]
    if args.quick:
        names, args.repeat = names[:2], 1
    trees = {"before": args.before.resolve(), "after": HERE}
    print(f"before: {trees['before']}\nafter:  {trees['after']}\n{args.repeat} alternating processes per tree, "
          f"{args.threads} threads, load {os.getloadavg()[0]:.1f}\n")
    print(f"{'workload':40s} {'before s':>9s} {'after s':>9s} {'after/before':>13s}")
    for name in names:
        raw, what = WORKLOADS[name]
        best = {"before": float("inf"), "after": float("inf")}
        for _ in range(args.repeat):
            for label, tree in trees.items():
                best[label] = min(best[label], time_once(tree, raw, what, args.threads))
        print(f"{name:40s} {best['before']:9.3f} {best['after']:9.3f} {best['after'] / best['before']:13.2f}",
              flush=True)


if __name__ == "__main__":
    main()

"""batchvar backend: exact theory, replica engine, statistics and cache for studying SGD against the batch size b.

Nothing here imports Streamlit; the CLI (``python -m backend``) and the pages call the same functions in ``backend.api``.
"""

__all__ = ["ConfigError"]

import os

# OpenMP threads that wait for work sleep instead of spinning (libgomp reads this when torch loads it, so it is set
# before anything imports torch). Spinning threads burn their share of a busy box: with two other CPU-bound
# processes a 2-thread run took 13× its time alone, 1.2× with passive waiting (benchmarks/bench_load.py).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from backend.errors import ConfigError  # noqa: E402

"""The advisor's exact recursion (backend/theory/paths.py: moment_paths, backend/theory/momentum_lanes.py: lane_paths;
docs/theory.md §1, §7, §9) gives the same bits whatever OpenBLAS's thread count: its products sum in a fixed order
(backend/theory/lanes.py: matmul). Before, numpy's @ and the loops' BLAS calls ordered their sums by the thread
count, and OPENBLAS_NUM_THREADS = 1 and 2 differed in the last bits on this very problem."""

import os
import subprocess
import sys

import numpy as np
from conftest import ROOT

SCRIPT = """
import hashlib, sys
import numpy as np
from backend.theory.linreg import LinRegProblem
from backend.theory.momentum_lanes import lane_paths
rng = np.random.default_rng(3)
n, p = 2000, 8  # large enough for OpenBLAS to thread its products
X = rng.standard_normal((n, p)) * np.linspace(0.3, 2, p)
y = X @ rng.standard_normal(p) + 0.3 * rng.standard_normal(n)
prob, w0 = LinRegProblem(X, y), 0.1 * rng.standard_normal(p)
L = 12
horizon = rng.integers(1, 200, L)
out = lane_paths(prob, w0, rng.uniform(0.01, 0.1, L), np.ones(200), rng.uniform(0, 1, L), horizon, horizon,
                 [0, 3, 50, 150], 0.5 * float(prob.loss(w0)), np.tile([0.0, 0.5, 0.9], 4), True, 0.01)
digest = hashlib.sha256()
for key in sorted(out):
    digest.update(key.encode() + np.ascontiguousarray(out[key]).tobytes())
print(digest.hexdigest())
"""


def _digest(threads: int) -> str:
    env = {**os.environ, "OPENBLAS_NUM_THREADS": str(threads), "OMP_NUM_THREADS": str(threads)}
    done = subprocess.run([sys.executable, "-c", SCRIPT], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_the_advisor_recursion_gives_the_same_bits_with_one_and_two_blas_threads():
    assert _digest(1) == _digest(2)


def test_the_fixed_order_product_is_the_product():
    """matmul against an independent reference (exact sums of small integers, and float64 to rounding)."""
    from backend.theory import lanes

    rng = np.random.default_rng(0)
    for m, n, k in ((1, 1, 1), (3, 5, 2), (9, 17, 6), (4, 8, 44)):
        A, B = rng.integers(-9, 9, (m, n)).astype(float), rng.integers(-9, 9, (n, k)).astype(float)
        want = [[sum(int(A[i, r]) * int(B[r, j]) for r in range(n)) for j in range(k)] for i in range(m)]
        assert (lanes.matmul(A, B) == np.array(want, dtype=float)).all()
        A, B = rng.standard_normal((m, n)), rng.standard_normal((n, k))
        np.testing.assert_allclose(lanes.matmul(A, B), A @ B, rtol=1e-12, atol=1e-12 * n)
    A, B = rng.standard_normal((7, 5)), rng.standard_normal((5, 3))
    for i in range(7):  # the row blocks (four rows at once, then the rest) sum each entry in the same order
        assert (lanes.matmul(A[i:i + 1], B) == lanes.matmul(A, B)[i:i + 1]).all()

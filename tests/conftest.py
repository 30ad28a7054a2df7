import os
import sys
from fractions import Fraction
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

# Property-based tests: the same examples on every run unless asked otherwise. "ci" (the default, and always under
# CI=true) is derandomized with no example database, so a clean clone gives the same answer every time; "fuzz"
# (`make fuzz`, or HYPOTHESIS_PROFILE=fuzz) draws fresh random examples, five times as many, for local bug hunting.
# Every counterexample ever found is pinned as an @example beside its test.
settings.register_profile("ci", derandomize=True, database=None, deadline=None, print_blob=True,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("fuzz", derandomize=False, deadline=None, print_blob=True,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("ci" if os.environ.get("CI", "").lower() in ("1", "true", "yes")
                      else os.environ.get("HYPOTHESIS_PROFILE", "ci"))
FUZZ_FACTOR = 5 if settings().derandomize is False else 1  # the fuzz profile multiplies each test's example count

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))


@pytest.fixture(autouse=True, scope="session")
def _isolated_cache(tmp_path_factory):
    """Every test session gets its own cache directory (never the user's cache/)."""
    os.environ["BATCHVAR_CACHE_DIR"] = str(tmp_path_factory.mktemp("cache"))
    # the tests' own data files (IDX folders, corpora) live under pytest's tmp folders: an allowed data folder
    # (backend/allowed.py; tests/test_allowed.py sets and clears it itself)
    os.environ["BATCHVAR_DATA"] = str(tmp_path_factory.getbasetemp())
    yield


F = Fraction
# a tiny exact dataset: n = 5, two features and an intercept column (last)
TINY_X = [[F(1), F(2), F(1)], [F(-1), F(1, 2), F(1)], [F(3), F(0), F(1)], [F(0), F(-2), F(1)], [F(1, 3), F(1), F(1)]]
TINY_Y = [F(1), F(-1), F(2), F(0), F(1, 2)]
TINY_W0 = [F(1, 2), F(-1), F(0)]
TINY_ALPHAS = [F(1, 4), F(1, 5), F(1, 6), F(1, 7)]


def tiny_config_json(**over):
    """The tiny dataset as an inline config (exact strings)."""
    cfg = {
        "setting": "linear_regression",
        "dataset": {"X": [[str(v) for v in row[:2]] for row in TINY_X], "y": [str(v) for v in TINY_Y]},
        "standardize": False,
        "intercept": True,
        "w0": [str(v) for v in TINY_W0],
        "lr": {"schedule": "inverse", "c": "1/4", },
        "steps": 3,
        "batch_sizes": [1, 2, 3, 4, 5],
        "replicas": 2000,
        "seed": 1,
        "sampler": "without_replacement",
    }
    cfg.update(over)
    return cfg

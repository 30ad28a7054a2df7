import os
import sys
from fractions import Fraction
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))


@pytest.fixture(autouse=True, scope="session")
def _isolated_cache(tmp_path_factory):
    """Every test session gets its own cache directory (never the user's cache/)."""
    os.environ["BATCHVAR_CACHE_DIR"] = str(tmp_path_factory.mktemp("cache"))
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

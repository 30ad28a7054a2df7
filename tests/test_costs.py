"""Run-cost estimates: every setting reports memory, CPU time, FLOPs and device steps; the guard's limits."""

import pytest
import torch

from backend import api
from backend.config import parse_config
from backend.errors import TooExpensive

CPU = torch.device("cpu")
SETTINGS = [{"steps": 30, "batch_sizes": [4, 16], "replicas": 1000},
            {"setting": "deep_linear", "dims": [8, 16, 4], "steps": 30, "replicas": 1000},
            {"setting": "mlp", "preset": "laptop"},
            {"setting": "sequence", "preset": "laptop"}]


@pytest.mark.parametrize("raw", SETTINGS, ids=lambda r: r.get("setting", "linear_regression"))
def test_estimates_scale_with_the_replicas(raw):
    est = api.estimate(parse_config(raw))
    assert set(est) >= {"memory_bytes", "seconds", "flops", "steps"} and min(est.values()) > 0
    key = "replicas"
    twice = api.estimate(parse_config({**raw, key: 2 * parse_config(raw).replicas}))
    assert twice["flops"] == pytest.approx(2 * est["flops"], rel=0.01)  # the arithmetic is per replica
    assert twice["seconds"] > est["seconds"]


def test_guard_allows_long_resumable_runs_only():
    """MLP and sequence runs checkpoint every epoch: up to 12 h; the others: 1 h."""
    mlp = parse_config({"setting": "mlp", "preset": "laptop", "epochs": 10000, "replicas": 64})
    seconds = api.estimate(mlp)["seconds"]
    assert api.MAX_SIM_SECONDS < seconds < api.MAX_RESUMABLE_SECONDS
    assert api.guard(mlp, CPU)["seconds"] == seconds
    deep = parse_config({"setting": "deep_linear", "dims": [64, 256, 128], "steps": 5000, "replicas": 4000,
                         "batch_sizes": [64], "dtype": "float32"})
    assert api.estimate(deep)["seconds"] > api.MAX_SIM_SECONDS
    with pytest.raises(TooExpensive, match="limit is 1 h"):
        api.guard(deep, CPU)

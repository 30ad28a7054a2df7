"""Run-cost estimates: every setting reports memory, CPU time, FLOPs and device steps; the guard's limits."""

import pytest
import torch

from backend import api, core, costs, settings
from backend.config import parse_config
from backend.errors import TooExpensive

CPU = torch.device("cpu")
SETTINGS = [{"setting": name, "preset": "laptop"} for name in settings.SETTINGS]  # every setting of the registry


@pytest.mark.parametrize("raw", SETTINGS, ids=lambda r: r["setting"])
def test_estimates_scale_with_the_replicas(raw):
    est = api.estimate(parse_config(raw))
    assert est["setting"] == parse_config(raw).setting
    assert min(est[k] for k in ("memory_bytes", "seconds", "flops", "steps")) > 0
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


GiB = 2**30
H100_RATES = {"float32": 51.6e12, "tf32": 358.3e12, "bf16": 529.2e12}  # matmul rates measured on the card
H100_RATE = H100_RATES.__getitem__
# Wall times measured on one NVIDIA H100 80GB (torch 2.11+cu130) by benchmarks/gpu_check.py (CUDA graphs; linear
# regression with X's rows gathered from a column-major copy; the sequence figure from an earlier run of the same
# engine); benchmarks/TIMINGS.md lists them
MEASURED_H100 = [
    ({"steps": 2000, "replicas": 1000, "batch_sizes": [16], "device": "cuda"}, 0.313),
    ({"steps": 2000, "replicas": 10_000, "batch_sizes": [16], "device": "cuda"}, 0.372),
    ({"steps": 2000, "replicas": 100_000, "batch_sizes": [16], "device": "cuda"}, 1.352),
    ({"setting": "deep_linear", "preset": "paper (Figure 3)", "batch_sizes": [16]}, 0.99),  # 0.88 and 1.11 s
    ({"setting": "sequence", "preset": "paper", "epochs": 1, "batch_sizes": [32]}, 105.0),
]


@pytest.mark.parametrize("raw,seconds", MEASURED_H100, ids=lambda x: str(x)[:40])
def test_gpu_time_model_matches_the_h100_measurements(raw, seconds):
    est = api.estimate(parse_config(raw))
    assert costs.gpu_seconds(est, H100_RATE) == pytest.approx(seconds, rel=0.2)


@pytest.mark.parametrize("arithmetic,measured,per_epoch", [("float32", 18.5, 3.39), ("tf32", 16.4, 2.28),
                                                           ("bf16", 16.0, 1.98)])
def test_gpu_time_model_matches_the_mlp_paper_preset_on_an_h100(arithmetic, measured, per_epoch):
    """5 × 50 replicas of 784-1024-512-10, b = 64, 48 000 training images, 3 epochs in each precision: the whole
    run and the cost of one more epoch (training + its statistics, timed between the run's epoch ends) — the
    start-up and the per-epoch cost both matter. Fashion-MNIST need not be installed: the engine's cost model."""
    from backend.engine import mlp as engine

    est = {epochs: {**engine.estimate_cost(48000, 784, (1024, 512), 10, 5, 50, epochs, 64, 10000, 12000, 256),
                    "gpu_model": settings.get("mlp").GPU_MODEL, "precision": arithmetic} for epochs in (2, 3)}
    assert costs.gpu_seconds(est[3], H100_RATE) == pytest.approx(measured, rel=0.2)
    one_more = costs.gpu_seconds(est[3], H100_RATE) - costs.gpu_seconds(est[2], H100_RATE)
    assert one_more == pytest.approx(per_epoch, rel=0.2)


def test_a_precision_without_its_own_efficiency_is_timed_as_float32():
    cfg = parse_config({"setting": "sequence", "preset": "paper", "epochs": 1, "batch_sizes": [32]})
    est = api.estimate(cfg)
    assert costs.gpu_seconds({**est, "precision": "bf16"}, H100_RATE) == costs.gpu_seconds(est, H100_RATE)


def test_guard_counts_memory_held_by_torchs_cache(monkeypatch):
    """After an earlier run in the same process torch's caching allocator holds its blocks (reserved, no live
    tensor): they are available to the next run. The sequence paper preset (≈ 27.5 GiB) on an 80 GB card with
    14.4 GiB free and 60 GiB cached is allowed; with 60 GiB of live tensors it is refused, naming the card."""
    cfg = parse_config({"setting": "sequence", "preset": "paper", "epochs": 1, "batch_sizes": [32]})
    assert 20 * GiB < api.estimate(cfg)["memory_bytes"] < 30 * GiB
    cuda = torch.device("cuda")
    monkeypatch.setattr(costs, "matmul_rate", lambda device, arithmetic="float32": H100_RATES[arithmetic])
    monkeypatch.setattr(costs, "device_name", lambda device: "NVIDIA H100 80GB HBM3")
    held = {"free": 14.4 * GiB, "total": 79.1 * GiB, "reserved": 60 * GiB, "allocated": 0.0}
    monkeypatch.setattr(core, "cuda_memory", lambda device: held)
    assert api.available_memory(cuda) == pytest.approx(74.4 * GiB)
    est = api.guard(cfg, cuda)
    assert est["seconds"] == pytest.approx(costs.gpu_seconds(api.estimate(cfg), H100_RATE))
    monkeypatch.setattr(core, "cuda_memory", lambda device: {**held, "allocated": 60 * GiB})
    with pytest.raises(TooExpensive, match=r"14\.4 GiB are available on NVIDIA H100 80GB HBM3"):
        api.guard(cfg, cuda)

"""Run-cost estimates on the current device: memory, and time from a 2-core CPU model or, on a GPU, from FLOPs.

Each setting's estimate gives ``memory_bytes``, ``seconds`` (calibrated on this project's 2-core CPU box), ``flops``
(arithmetic of the whole run), ``steps`` (sequential device steps, each a few dozen kernel launches) and ``setting``.
On a CUDA device the time is
    fixed_seconds + steps · step_seconds + flops / (efficiency · r),
r this device's float32 matmul rate (measured once per process), with one GpuModel per setting in GPU_MODELS.
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class GpuModel:
    """GPU time of one setting's run: ``efficiency`` is the share of the card's float32 matmul rate reached on the
    estimate's FLOPs, ``step_seconds`` the cost of one sequential step (kernel launches, small reductions, host
    syncs), ``fixed_seconds`` the start-up of a run (data, CUDA context, the epoch-0 statistics)."""

    efficiency: float
    step_seconds: float
    fixed_seconds: float = 0.0


# The one calibration, and the card it came from (issue 11; float32, TF32 off, batchvar at 6c619bc):
GPU_CALIBRATION_CARD = "NVIDIA H100 80GB HBM3, torch 2.11+cu130, float32 matmul 51.6 TFLOP/s"
GPU_MODELS: dict[str, GpuModel] = {
    # R = 10³ and 10⁴ replicas, T = 2 000, b = 16: 4.65 s and 4.49 s (≈ 2.3 ms per step whatever R: launch- and
    # sync-bound); R = 10⁵ (two chunks): 11.2 s. The engine is memory-bound, hence the tiny "efficiency".
    "linear_regression": GpuModel(efficiency=0.0025, step_seconds=2.3e-3),
    # the paper preset (1 000 replicas × 1 000 steps, b = 16, statistics every 10 steps): 1.0 s
    "deep_linear": GpuModel(efficiency=0.25, step_seconds=2.7e-4),
    # the paper preset (5 × 50 replicas, b = 64, 48 000 training images): 1 epoch 17.7 s, 3 epochs 25.6 s
    "mlp": GpuModel(efficiency=0.60, step_seconds=3e-4, fixed_seconds=13.6),
    # the paper preset (100 replicas, b = 32), 1 epoch with the epoch-0 and epoch-1 statistics: 105 s (one figure:
    # start-up and per-epoch cost are not told apart)
    "sequence": GpuModel(efficiency=0.018, step_seconds=3e-4),
}


def combine_costs(costs: list[dict[str, float]]) -> dict[str, float]:
    """Batch sizes run one after another: memory is the largest; time, FLOPs and steps add up."""
    return {"memory_bytes": max(c["memory_bytes"] for c in costs),
            **{k: sum(c[k] for c in costs) for k in ("seconds", "flops", "steps")}}


@functools.lru_cache(maxsize=None)
def matmul_rate(device: str, arithmetic: str = "float32") -> float:
    """FLOP/s of a 4096³ float32 matrix product on ``device`` in ``arithmetic`` (float32 with TF32 off, tf32, or bf16
    autocast: backend.engine.runner.precision), best of 3."""
    from backend.engine.runner import precision

    dev = torch.device(device)
    a = torch.randn(4096, 4096, device=dev)
    best = float("inf")
    with precision(arithmetic, dev):
        for _ in range(4):
            torch.cuda.synchronize(dev)
            t0 = time.perf_counter()
            a @ a
            torch.cuda.synchronize(dev)
            best = min(best, time.perf_counter() - t0)
    return 2 * 4096**3 / best


def gpu_seconds(est: dict, rate: float) -> float:
    """The estimate's run time on a GPU whose float32 matmul rate is ``rate`` FLOP/s (GPU_MODELS[est["setting"]])."""
    model = GPU_MODELS[est["setting"]]
    return model.fixed_seconds + est["steps"] * model.step_seconds + est["flops"] / (model.efficiency * rate)


def device_seconds(est: dict, device: torch.device) -> float:
    """The estimate's run time on ``device``: the 2-core CPU model, or gpu_seconds at the card's measured rate."""
    if device.type != "cuda":
        return est["seconds"]
    return gpu_seconds(est, matmul_rate(str(device), est.get("precision", "float32")))


def device_name(device: torch.device) -> str:
    """'2 CPU cores' or the CUDA card's name."""
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "2 CPU cores"


def where(device: torch.device, arithmetic: str = "float32") -> str:
    """How the time was estimated, for the run panel (``arithmetic``: the run's precision)."""
    if device.type != "cuda":
        return "on 2 CPU cores" + ("" if arithmetic == "float32" else
                                   f" (precision {arithmetic}: the CPU model is float32's; there is no TF32 on a CPU)")
    return (f"on {device_name(device)} (from its measured {arithmetic} matmul rate, with the per-setting model "
            f"calibrated in float32 on an {GPU_CALIBRATION_CARD.split(',')[0]}: expect ±30 % on cards like it)")


def format_duration(seconds: float) -> str:
    """'under 1 s', 'about 42 s', 'about 3.5 min', 'about 2.0 h' — for estimates and ETAs."""
    if seconds < 1:
        return "under 1 s"
    if seconds < 90:
        return f"about {seconds:.0f} s"
    if seconds < 5400:
        return f"about {seconds / 60:.1f} min" if seconds < 600 else f"about {seconds / 60:.0f} min"
    return f"about {seconds / 3600:.1f} h"


def format_bytes(n: float) -> str:
    """'under 1 MiB', '350 MiB', '9.8 GiB'."""
    if n < 2**20:
        return "under 1 MiB"
    if n < 2**30:
        return f"{n / 2**20:.0f} MiB"
    return f"{n / 2**30:.1f} GiB"

"""Run-cost estimates on the current device: memory, and time from a 2-core CPU model or, on a GPU, from FLOPs.

Each setting's estimate gives ``memory_bytes``, ``seconds`` (calibrated on this project's 2-core CPU box), ``flops``
(arithmetic of the whole run), ``steps`` (sequential device steps, each a few dozen kernel launches) and ``setting``.
On a CUDA device the time is
    fixed_seconds + steps · step_seconds + flops / (efficiency · r)   (or the max of the last two: GpuModel.overlap),
r this device's matmul rate in the run's precision (measured once per process), with one GpuModel per setting in
GPU_MODELS, calibrated from ``benchmarks/gpu_check.py``'s CAL lines.
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass
from typing import Callable

import torch


@dataclass(frozen=True)
class GpuModel:
    """GPU time of one setting's run: ``efficiency`` the share of the card's matmul rate reached on the estimate's
    FLOPs, per precision (a precision without its own figure is timed as float32: its statistics, in float32/64,
    dominate or it was not measured), ``step_seconds`` the cost of one sequential step (kernel launches, small
    reductions), ``fixed_seconds`` the start-up of a run (data, CUDA context, the epoch-0 statistics). With
    ``overlap`` the step cost and the arithmetic overlap (a replayed CUDA graph's launches hide behind its kernels):
    steps · max(step_seconds, FLOPs per step / rate) instead of their sum."""

    efficiency: dict[str, float]
    step_seconds: float
    fixed_seconds: float = 0.0
    overlap: bool = False

    def precision(self, arithmetic: str) -> str:
        """The precision whose rate and efficiency time a run in ``arithmetic``."""
        return arithmetic if arithmetic in self.efficiency else "float32"


# The one calibration, and the card it came from (issue 13, batchvar with CUDA graphs; TF32 off unless tf32):
GPU_CALIBRATION_CARD = ("NVIDIA H100 80GB HBM3, torch 2.11+cu130, matmul 51.6 (float32) / 358 (tf32) / 529 (bf16) "
                        "TFLOP/s")
GPU_MODELS: dict[str, GpuModel] = {
    # R = 10³, 10⁴, 10⁵ replicas, T = 2 000, b = 16 (float64, one chunk each): 0.31, 0.37, 1.35 s — launch-bound
    # (0.16 ms per step) up to 10⁴ replicas, then bound by the gathers and products of the drawn rows of X
    "linear_regression": GpuModel(efficiency={"float32": 0.00367}, step_seconds=1.69e-4, overlap=True),
    # the paper preset (1 000 replicas × 1 000 steps, b = 16, statistics every 10 steps): 0.88 and 1.11 s (two runs)
    "deep_linear": GpuModel(efficiency={"float32": 0.25}, step_seconds=2.7e-4),
    # the paper preset (5 × 50 replicas, b = 64, 48 000 training images), 3 epochs: float32 18.5 s (3.39 s per
    # epoch), tf32 16.4 s (2.28 s), bf16 16.0 s (1.98 s); start-up 8.3–10.1 s. Training is memory-bound (250
    # replicas × 1.33 M float32 weights read every step; on CUDA the updates are held 4 steps, bf16 reads bf16
    # copies), and each epoch's statistics (≈ 0.55 s) run in float32/64 whatever the precision
    "mlp": GpuModel(efficiency={"float32": 0.73, "tf32": 0.162, "bf16": 0.129}, step_seconds=3e-4,
                    fixed_seconds=9.3),
    # the paper preset (100 replicas, b = 32), 1 epoch with the epoch-0 and epoch-1 statistics: 105 s in float32
    # (one figure: start-up and per-epoch cost are not told apart; the training alone is ≈ 10 s of it)
    "sequence": GpuModel(efficiency={"float32": 0.018}, step_seconds=3e-4),
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


def gpu_seconds(est: dict, rate: Callable[[str], float]) -> float:
    """The estimate's run time on a GPU whose matmul rate in a precision is ``rate(precision)`` FLOP/s
    (GPU_MODELS[est["setting"]])."""
    model = GPU_MODELS[est["setting"]]
    arithmetic = model.precision(est.get("precision", "float32"))
    compute = est["flops"] / (model.efficiency[arithmetic] * rate(arithmetic))
    steps = est["steps"] * model.step_seconds
    return model.fixed_seconds + (max(steps, compute) if model.overlap else steps + compute)


def device_seconds(est: dict, device: torch.device) -> float:
    """The estimate's run time on ``device``: the 2-core CPU model, or gpu_seconds at the card's measured rates."""
    if device.type != "cuda":
        return est["seconds"]
    return gpu_seconds(est, lambda arithmetic: matmul_rate(str(device), arithmetic))


def device_name(device: torch.device) -> str:
    """'2 CPU cores' or the CUDA card's name."""
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "2 CPU cores"


def where(device: torch.device, arithmetic: str = "float32") -> str:
    """How the time was estimated, for the run panel (``arithmetic``: the run's precision)."""
    if device.type != "cuda":
        return "on 2 CPU cores" + ("" if arithmetic == "float32" else
                                   f" (precision {arithmetic}: the CPU model is float32's; there is no TF32 on a CPU)")
    return (f"on {device_name(device)} (from its measured {arithmetic} matmul rate, with the per-setting model "
            f"calibrated on an {GPU_CALIBRATION_CARD.split(',')[0]}: expect ±30 % on cards like it)")


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

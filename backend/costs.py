"""Run-cost estimates on the current device: memory, and time from a 2-core CPU model or, on a GPU, from FLOPs.

Each setting's estimate gives ``memory_bytes``, ``seconds`` (calibrated on this project's 2-core CPU box), ``flops``
(arithmetic of the whole run), ``steps`` (sequential device steps, each a few dozen kernel launches) and ``setting``.
On a CUDA device the time is
    fixed_seconds + steps · step_seconds + flops / (efficiency · r)   (or the max of the last two: GpuModel.overlap),
r this device's matmul rate in the run's precision (measured once per process), with the setting's own GpuModel (its
module's GPU_MODEL), calibrated from ``benchmarks/gpu_check.py``'s CAL lines.
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


# The one calibration of the settings' GPU models (each setting's GPU_MODEL), and the card it came from (TF32 off
# unless tf32; the runs behind each figure are in benchmarks/gpu_check.py):
GPU_CALIBRATION_CARD = ("NVIDIA H100 80GB HBM3, torch 2.11+cu130, matmul 51.6 (float32) / 358 (tf32) / 529 (bf16) "
                        "TFLOP/s")


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
    """The estimate's run time on a GPU whose matmul rate in a precision is ``rate(precision)`` FLOP/s, by the
    setting's model ``est["gpu_model"]`` (its GPU_MODEL, put there by backend.core.estimate)."""
    model: GpuModel = est["gpu_model"]
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

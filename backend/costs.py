"""Run-cost estimates on the current device: memory, and time from a 2-core CPU model or, on a GPU, from FLOPs.

Each setting's estimate gives ``memory_bytes``, ``seconds`` (calibrated on this project's 2-core CPU box), ``flops``
(arithmetic of the whole run) and ``steps`` (sequential device steps, each a few dozen kernel launches). On a CUDA
device the time is flops / (GPU_EFFICIENCY · r) + steps · GPU_STEP_SECONDS, with r this device's float32 matmul rate
measured once per process. GPU_EFFICIENCY and GPU_STEP_SECONDS are first guesses, not yet calibrated on a GPU
(``benchmarks/gpu_check.py`` prints the achieved rates that calibrate them).
"""

from __future__ import annotations

import functools
import time

import torch

GPU_EFFICIENCY = 0.25  # share of the float32 matmul rate the batched replica engines reach (guess)
GPU_STEP_SECONDS = 3e-4  # per sequential step: kernel launches and small reductions (guess)


def combine_costs(costs: list[dict[str, float]]) -> dict[str, float]:
    """Batch sizes run one after another: memory is the largest; time, FLOPs and steps add up."""
    return {"memory_bytes": max(c["memory_bytes"] for c in costs),
            **{k: sum(c[k] for c in costs) for k in ("seconds", "flops", "steps")}}


@functools.lru_cache(maxsize=None)
def matmul_rate(device: str) -> float:
    """float32 FLOP/s of a 4096³ matrix product on ``device`` (TF32 off, as the engines use it), best of 3."""
    dev = torch.device(device)
    a = torch.randn(4096, 4096, device=dev)
    best = float("inf")
    for _ in range(4):
        torch.cuda.synchronize(dev)
        t0 = time.perf_counter()
        a @ a
        torch.cuda.synchronize(dev)
        best = min(best, time.perf_counter() - t0)
    return 2 * 4096**3 / best


def device_seconds(est: dict[str, float], device: torch.device) -> float:
    """The estimate's run time on ``device``."""
    if device.type != "cuda":
        return est["seconds"]
    return est["flops"] / (GPU_EFFICIENCY * matmul_rate(str(device))) + est["steps"] * GPU_STEP_SECONDS


def where(device: torch.device) -> str:
    """How the time was estimated, for the run panel."""
    if device.type != "cuda":
        return "on 2 CPU cores"
    return (f"on {torch.cuda.get_device_name(device)} (from FLOPs at {GPU_EFFICIENCY:.0%} of its measured float32 "
            "matmul rate: rough)")


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

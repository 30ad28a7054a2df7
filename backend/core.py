"""The run core: what every run goes through, whichever module asks — the device, the resource guard, the setting's
simulate / cached simulation / theory / polynomial / estimate / checks through the registry, the cache keys and the
quantity table.

Sweeps (backend/sweep.py, backend/cluster.py), the advisor (backend/advisor.py) and the CLI documents
(backend/report.py) build on this module; backend/api.py, the face the pages, the CLI and scripts call, re-exports it.
Nothing here is per setting: what differs (its GPU cost model, whether a run resumes, its checks) is the setting's own
(backend/settings/base.py: the Setting protocol).
"""

from __future__ import annotations

import threading
from typing import Any, Callable

import torch

from backend import costs, settings
from backend.cache import ResultCache, default_cache
from backend.errors import ConfigError, TooExpensive
from backend.progress import Progress, as_progress
from backend.settings import base

MAX_SIM_SECONDS = 3600.0
MAX_RESUMABLE_SECONDS = 12 * 3600.0  # a resumable setting checkpoints every epoch: a cancelled run resumes


def resolve_device(name: str = "auto") -> torch.device:
    """The device a config's ``device`` field names ("auto": CUDA where there is one, else the CPU)."""
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device", "CUDA was requested but no CUDA device is available")
    if name == "cpu" or (name == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    return torch.device("cuda")


def or_default(cache: ResultCache | None) -> ResultCache:
    """``cache``, or the project's default cache when None."""
    return cache if cache is not None else default_cache()


def quantity_table(config) -> list[base.Quantity]:
    """The quantities the config's setting reports: name, label, LaTeX, x-axis, exact theory?, estimator."""
    return settings.for_config(config).quantities(config)


def quantities(config) -> list[str]:
    """The names of the quantities the config's setting reports (curves, CLI fields)."""
    return [q.name for q in quantity_table(config)]


def has_theory(config) -> bool:
    """Whether the config's setting has exact theory for some quantity (its table says so)."""
    return any(q.exact for q in quantity_table(config))


def theory(config, cache: ResultCache | None = None) -> dict[str, Any]:
    """Exact curves for the config's batch sizes: {"t", "batch_sizes", "curves", "available", "note", …}; curves is
    None where the setting has no theory, NaN at steps without an exact method (deep linear networks)."""
    return settings.for_config(config).theory(config, or_default(cache))


def polynomial(config, t: int, quantity: str = "var_g", exact: bool | None = None) -> dict[str, Any]:
    """Coefficients of ``quantity`` at step t as a polynomial in 1/b (exact rationals where the inputs are)."""
    return settings.for_config(config).polynomial(config, t, quantity, exact)


def check(config, cache: ResultCache | None = None) -> dict[str, Any]:
    """The setting's checks of Theorems 1–2 on its exact values (the CLI's ``check``); a ConfigError where the setting
    has none."""
    return settings.for_config(config).check(config, or_default(cache))


def estimate(config) -> dict[str, Any]:
    """Estimated memory (bytes, the largest batch size), time (seconds on 2 CPU cores), FLOPs and sequential device
    steps of ``simulate``, the setting's name, the run's precision and the setting's GPU time model (``gpu_model``:
    backend.costs turns the estimate into time on a GPU)."""
    setting = settings.for_config(config)
    return {**setting.estimate(config), "setting": config.setting,
            "precision": getattr(config, "precision", "float32"), "gpu_model": setting.GPU_MODEL}


def cuda_memory(device: torch.device) -> dict[str, float]:
    """The CUDA card's memory in bytes: ``free`` (not held by anyone), ``total``, and what this process's caching
    allocator ``reserved`` and has ``allocated`` to live tensors."""
    free, total = torch.cuda.mem_get_info(device)
    return {"free": float(free), "total": float(total), "reserved": float(torch.cuda.memory_reserved(device)),
            "allocated": float(torch.cuda.memory_allocated(device))}


def available_memory(device: torch.device) -> float:
    """Bytes a run can use on ``device``. On CUDA: the free memory plus what torch's caching allocator holds without
    a live tensor in it (reserved − allocated): an earlier run in this process (the app's server is one process)
    leaves its blocks cached, and the next run reuses them. On CPU: MemAvailable."""
    if device.type == "cuda":
        mem = cuda_memory(device)
        return mem["free"] + max(0.0, mem["reserved"] - mem["allocated"])
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return float(line.split()[1]) * 1024
    except OSError:
        pass
    return 8.0 * 1024**3


def time_limit(config) -> float:
    """The longest run the guard allows: 12 hours for a setting whose runs resume (RESUMABLE), else one hour."""
    return MAX_RESUMABLE_SECONDS if settings.for_config(config).RESUMABLE else MAX_SIM_SECONDS


def guard(config, device: torch.device) -> dict[str, Any]:
    """Refuse a run that would not fit in memory or would take longer than ``time_limit``, with the estimate, the
    device it is for and what to change.

    Time on the device by backend.costs.device_seconds (2-core CPU model, or the setting's GPU model at the card's
    rate)."""
    return guard_estimate(dict(estimate(config)), device, time_limit(config))


def guard_estimate(est: dict[str, Any], device: torch.device, limit: float,
                   reduce: str = "replicas, steps or epochs or the number of batch sizes") -> dict[str, Any]:
    """``guard``'s refusal for any run's estimate (``estimate``'s keys; the cbs replica branches' too): more than half
    the available memory, or more than ``limit`` seconds on ``device`` (the message: what to ``reduce``); returns
    ``est`` with its device seconds."""
    est["seconds"] = costs.device_seconds(est, device)
    avail = available_memory(device)
    name = costs.device_name(device)
    if est["memory_bytes"] > 0.5 * avail:
        raise TooExpensive("replicas", f"the run needs about {est['memory_bytes'] / 2**30:.1f} GiB but "
                                       f"{avail / 2**30:.1f} GiB are available on {name} (a run may use half): "
                                       "reduce replicas or steps")
    if est["seconds"] > limit:
        raise TooExpensive("replicas", f"the run would take about {est['seconds'] / 60:.0f} minutes on {name} "
                                       f"(the limit is {limit / 3600:.0f} h): reduce {reduce} (or use a GPU)")
    return est


def simulation_key(config, device: torch.device | None = None) -> str:
    """The cache key of ``simulate(config)`` on ``device`` (default: the one it would run on here)."""
    return base.simulation_key(config, device if device is not None else resolve_device(config.device))


def cached_simulation(config, cache: ResultCache | None = None, device: torch.device | None = None
                      ) -> dict[str, Any] | None:
    """The cached result of ``simulate(config)`` on ``device`` (default: the one it would run on here) if there is
    one (never computes)."""
    device = device if device is not None else resolve_device(config.device)
    return settings.for_config(config).cached_simulation(config, device, or_default(cache))


def simulate(config, progress: Progress | Callable[[int], None] | None = None,
             cancel: threading.Event | None = None, cache: ResultCache | None = None) -> dict[str, Any]:
    """Run the config's replicas on its device (after the resource guard); estimates with standard errors.

    Settings in SGD steps: per quantity {"value", "se", "lo", "hi"} arrays (B, steps) over t; settings in epochs:
    per b, per-epoch lists with ``_se``, bands and per-init values. ``meta`` names the device."""
    device = resolve_device(config.device)
    guard(config, device)
    return settings.for_config(config).simulate(config, device, or_default(cache), as_progress(progress), cancel)

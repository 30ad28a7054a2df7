"""The backend's public API: pages, the CLI and scripts call only this module.

A thin dispatcher over the registry of settings (backend/settings): every call looks up the config's setting and
calls the same protocol method there. Beside it live what is not per setting: the device, the resource guard and the
z-score agreement with exact theory. The setting-specific views the pages draw (Theorems 1–2 check, Theorem 4 fits,
LaTeX of polynomials, …) are re-exported here so that the pages need no other backend module.
"""

from __future__ import annotations

import math
import threading
from typing import Any, Callable

import numpy as np
import torch

from backend import settings
from backend.cache import ResultCache, default_cache
# what the pages need of the config boundary and the data readers (pages import only this module and the charts)
from backend.config import expand_preset, from_query, loads, parse_config, to_query  # noqa: F401
from backend.fields import (DTYPES, MAX_REPLICAS, MIN_REPLICAS, MLP_SAMPLERS, PRECISIONS, SAMPLER_LABELS,  # noqa: F401
                            SAMPLERS, SCHEDULES, paper_batch_sizes)
from backend.datasets import MAX_UPLOAD_BYTES, parse_csv_text  # noqa: F401
from backend.docs import theory_preamble, theory_sections  # noqa: F401
from backend.advisor import SCALINGS, advise, advise_rules, sweep, sweep_cells  # noqa: F401  (the batch-size advisor)
from backend.exact import jsonable_number  # noqa: F401
from backend.costs import device_name, device_seconds, format_duration  # noqa: F401  (format_duration: pages)
from backend.errors import ConfigError, TooExpensive  # noqa: F401  (ConfigError: the one error a page shows)
from backend.latex import polynomial_equation, polynomial_latex  # noqa: F401
from backend.progress import Progress, as_progress
from backend.settings import base
from backend.settings.classifier import SAMPLER_LABELS as CLASSIFIER_SAMPLER_LABELS  # noqa: F401
from backend.settings.classifier import b_ordering_share, cached_checkpoint_epoch  # noqa: F401
from backend.settings.deep_linear import (decreasing_everywhere, describe_methods, eval_inv_b,  # noqa: F401
                                          eval_theorem4, fit_theorem4)
from backend.settings.linear_regression import (EXACT_MAX_T, FLOAT_POLY_MAX_T, QUANTITY_LABELS,  # noqa: F401
                                                all_b_grid, check_monotone, eval_poly_inv_b, paper_fit,
                                                theory_all_b, theory_curves)
from backend.curves import flag_message, flagged_points, per_b_table, unreliable  # noqa: F401  (flags, per-b table)
from backend.stats import exact_z
from backend.theory.deep_linear import decrease_threshold  # noqa: F401

MAX_SIM_SECONDS = 3600.0
MAX_RESUMABLE_SECONDS = 12 * 3600.0  # MLP / sequence runs checkpoint every epoch: a cancelled run resumes
RESUMABLE = ("mlp", "sequence")


def resolve_device(name: str = "auto") -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device", "CUDA was requested but no CUDA device is available")
    if name == "cpu" or (name == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    return torch.device("cuda")


def _cache(cache: ResultCache | None) -> ResultCache:
    return cache if cache is not None else default_cache()


def registry() -> list[dict[str, Any]]:
    """Every setting with its quantities and presets (``python -m backend settings``)."""
    return settings.describe()


def setting_pages() -> list[dict[str, str]]:
    """Every setting's name, title, icon and Home card, in registry order (the app's navigation; cheap: parses
    nothing)."""
    return [{"name": m.NAME, "title": m.TITLE, "icon": m.ICON, "card": m.CARD} for m in settings.SETTINGS.values()]


def defaults(setting: str) -> dict[str, Any]:
    """The normalised default config of a setting (what its page starts from)."""
    return parse_config({"setting": settings.get(setting).NAME}).to_json()


def presets(setting: str) -> list[str]:
    """The names of a setting's presets (``{"setting": …, "preset": name}`` is a complete config)."""
    return list(settings.get(setting).PRESETS)


def quantity_table(config) -> list[base.Quantity]:
    """The quantities the config's setting reports: name, label, LaTeX, x-axis, exact theory?, estimator."""
    return settings.for_config(config).quantities(config)


def quantities(config) -> list[str]:
    """The names of the quantities the config's setting reports (curves, CLI fields)."""
    return [q.name for q in quantity_table(config)]


def theory(config, cache: ResultCache | None = None) -> dict[str, Any]:
    """Exact curves for the config's batch sizes: {"t", "batch_sizes", "curves", "available", "note", …}; curves is
    None where the setting has no theory, NaN at steps without an exact method (deep linear networks)."""
    return settings.for_config(config).theory(config, _cache(cache))


def polynomial(config, t: int, quantity: str = "var_g", exact: bool | None = None) -> dict[str, Any]:
    """Coefficients of ``quantity`` at step t as a polynomial in 1/b (exact rationals where the inputs are)."""
    return settings.for_config(config).polynomial(config, t, quantity, exact)


def estimate(config) -> dict[str, Any]:
    """Estimated memory (bytes, the largest batch size), time (seconds on 2 CPU cores), FLOPs and sequential device
    steps of ``simulate``, and the setting's name (backend.costs turns them into time on a GPU)."""
    return {**settings.for_config(config).estimate(config), "setting": config.setting,
            "precision": getattr(config, "precision", "float32")}


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


def guard(config, device: torch.device) -> dict[str, float]:
    """Refuse a run that would not fit in memory or would take more than an hour (12 hours for the MLP and sequence
    runs, which checkpoint every epoch and resume), with the estimate, the device it is for and what to change.

    Time on the device by backend.costs.device_seconds (2-core CPU model, or the GPU model at the card's rate)."""
    est = dict(estimate(config))
    est["seconds"] = device_seconds(est, device)
    avail = available_memory(device)
    name = device_name(device)
    if est["memory_bytes"] > 0.5 * avail:
        raise TooExpensive("replicas", f"the run needs about {est['memory_bytes'] / 2**30:.1f} GiB but "
                                       f"{avail / 2**30:.1f} GiB are available on {name} (a run may use half): "
                                       "reduce replicas or steps")
    limit = MAX_RESUMABLE_SECONDS if config.setting in RESUMABLE else MAX_SIM_SECONDS
    if est["seconds"] > limit:
        raise TooExpensive("replicas", f"the run would take about {est['seconds'] / 60:.0f} minutes on {name} "
                                       f"(the limit is {limit / 3600:.0f} h): reduce replicas, steps or epochs or the "
                                       "number of batch sizes (or use a GPU)")
    return est


def simulation_key(config, device: torch.device | None = None) -> str:
    """The cache key of ``simulate(config)`` on ``device`` (default: the one it would run on here)."""
    return base.simulation_key(config, device if device is not None else resolve_device(config.device))


def cached_simulation(config, cache: ResultCache | None = None, device: torch.device | None = None
                      ) -> dict[str, Any] | None:
    """The cached result of ``simulate(config)`` on ``device`` (default: the one it would run on here) if there is
    one (never computes)."""
    device = device if device is not None else resolve_device(config.device)
    return settings.for_config(config).cached_simulation(config, device, _cache(cache))


def simulate(config, progress: Progress | Callable[[int], None] | None = None,
             cancel: threading.Event | None = None, cache: ResultCache | None = None) -> dict[str, Any]:
    """Run the config's replicas on its device (after the resource guard); estimates with standard errors.

    Linear regression / deep linear networks: per quantity {"value", "se", "lo", "hi"} arrays (B, steps) over t;
    MLP / sequence: per b, per-epoch lists with ``_se``, bands and per-init values. ``meta`` names the device."""
    device = resolve_device(config.device)
    guard(config, device)
    return settings.for_config(config).simulate(config, device, _cache(cache), as_progress(progress), cancel)


def agreement(theory_res: dict, sim_res: dict, quantity: str = "var_g", estimate_name: str | None = None
              ) -> dict[str, Any]:
    """z = (estimate − exact)/SE for every (b, t), with SE² augmented by (1e-9 · exact)² for float64 rounding.

    NaN where the SE and the exact value are both zero (b = n, or t = 0 for deterministic quantities).
    ``estimate_name`` picks another estimator of the same quantity (e.g. var_g_rb for var_g).
    """
    exact = theory_res["curves"][quantity]
    est = sim_res["curves"][estimate_name or quantity]
    z = exact_z(est["value"], est["se"], exact)
    finite = np.isfinite(z)
    k = int(finite.sum())
    return {
        "z": z,
        "count": k,
        "within_2": float((np.abs(z[finite]) <= 2).mean()) if k else math.nan,
        "within_4": float((np.abs(z[finite]) <= 4).mean()) if k else math.nan,
        "max_abs": float(np.abs(z[finite]).max()) if k else math.nan,
    }


# -- sweeps (backend/sweep.py, backend/cluster.py): imported when used (they build on this module) ---------------

def sweep_fields(config) -> list[str]:
    """The fields a sweep can vary for this config: every top-level field but the setting, and one level of dotted
    paths into the object-valued ones (``lr.c``, ``w0.seed``, …)."""
    out = []
    for key, value in config.to_json().items():
        if key == "setting":
            continue
        if isinstance(value, dict):
            out.extend(f"{key}.{sub}" for sub in value)
        out.append(key)
    return out


def sweep_spec(raw: dict, plain: dict | None = None):
    """A validated sweep ``{"base": CONFIG, "grid": {FIELD: [values]}}`` (a ConfigError names the cell and field);
    ``raw`` read with exact decimals (``loads``), ``plain`` the same read by ``json.loads`` (the overrides shown)."""
    from backend import sweep

    return sweep.parse_sweep(raw, plain)


def sweep_executor(kind: str = "local", address: str | None = None, threads: int | None = None):
    """Where a sweep runs: ``local`` (this process), ``ray`` (embedded on 127.0.0.1, or joining ``address``)."""
    from backend import sweep

    if kind == "local":
        return sweep.LocalExecutor()
    if kind != "ray":
        raise ConfigError("executor", f"expected 'local' or 'ray', got {kind!r}")
    from backend.cluster import RayExecutor

    return RayExecutor(address or None, threads)


def sweep_estimate(spec, executor) -> dict[str, Any]:
    """The cost model of a sweep's uncached cells: total device seconds and per worker of the executor."""
    from backend import sweep

    return sweep.estimate(spec, executor)


def run_sweep(spec, executor, progress: Progress | None = None, cancel: threading.Event | None = None
              ) -> dict[str, Any]:
    """Run a sweep (cached cells served from the cache); ``progress`` counts finished cells and its message is the
    last cell's line."""
    import time

    from backend import sweep

    progress = progress or Progress()
    progress.total = len(spec.cells)
    started = time.monotonic()

    def on_cell(done: int, total: int, entry: dict) -> None:
        progress.message = sweep.progress_line(done, total, entry, started)
        progress.advance(1)

    return sweep.run(spec, executor, None, on_cell, cancel)


def sweep_table(out: dict, with_theory: bool = True) -> list[dict[str, Any]]:
    """A sweep's results as one long table (cell overrides, b, x, quantity, value, se, lo, hi, exact)."""
    from backend import sweep

    return sweep.table(out, with_theory)

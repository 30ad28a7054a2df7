"""What every setting shares: the Setting protocol, the quantity (declared in backend/quantities.py) and the one
cache-key builder.

A setting is a module of backend/settings that provides the names below (checked by tests/test_settings.py); the
registry in backend/settings/__init__.py maps its NAME to it, and backend/api.py, the CLI and the pages dispatch
through the registry only. docs/architecture.md shows the data flow and how to add a setting.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Callable, Mapping, Protocol

import numpy as np
import torch

from backend.cache import CODE_VERSION, ResultCache, make_key
from backend.costs import GpuModel
from backend.curves import curves_result, pack_stats, unpack_stats
from backend.fields import curve_keys, run_batches
from backend.progress import Progress
from backend.quantities import STEP_QUANTITIES, Quantity, estimated_by  # Quantity: the tables' entries


class Setting(Protocol):
    """The interface of a setting module (structural: a module with these names is a Setting). What is a setting's own
    lives here and nowhere else: its GPU time model, whether its runs resume, its CLI document, its checks, its Home
    card; nothing outside backend/settings and pages/ names a setting."""

    NAME: str
    TITLE: str
    ORDER: int  # position in the registry and the navigation
    ICON: str  # the app's icon for its page (a Streamlit material icon name)
    CARD: str  # one line on the Home page: what its page shows (after the title)
    CONFIG: type
    PRESETS: Mapping[str, dict]
    THEORY_ONLY_DROPS: tuple[str, ...]  # config fields the exact theory does not read (left out of its cache key)
    GPU_MODEL: GpuModel  # its time on a GPU from the estimate's FLOPs and steps (backend/costs.py)
    RESUMABLE: bool  # its runs checkpoint in the cache and resume after a cancel (the guard allows 12 h, else 1 h)

    def quantities(self, config) -> list[Quantity]: ...

    def theory(self, config, cache: ResultCache) -> dict[str, Any]: ...

    def simulate(self, config, device: torch.device, cache: ResultCache, progress: Progress,
                 cancel: threading.Event | None) -> dict[str, Any]: ...

    def cached_simulation(self, config, device: torch.device, cache: ResultCache) -> dict[str, Any] | None: ...

    def estimate(self, config) -> dict[str, float]: ...

    def polynomial(self, config, t: int, quantity: str, exact: bool | None) -> dict[str, Any]: ...

    def check(self, config, cache: ResultCache) -> dict[str, Any]: ...  # Theorems 1–2 (a ConfigError if it has none)

    def simulate_document(self, config, res: dict[str, Any]) -> dict[str, Any]: ...  # the CLI's simulate JSON


class ExactAdvisor(Protocol):
    """The advisor's hook of a setting that answers exactly (backend/advisor.py: ``advise`` for every lane j: batch
    size b[j], steps[j], the schedule's constant lr_c[j], the search horizon, the target loss and the t grid)."""

    def advise(self, config, b: np.ndarray, steps: np.ndarray, lr_c: np.ndarray, horizon: np.ndarray,
               target: float | None, grid) -> dict[str, Any]: ...


class ReplicaAdvisor(Protocol):
    """The advisor's hooks of a setting answered from replica runs: the run for one b, the quantities it reads
    (advisor name → the setting's quantity) and the SGD steps behind a result's x values."""

    ADVISOR_QUANTITIES: Mapping[str, str]

    def advise_cell(self, config, b: int, budget: int, lr_factor: float): ...

    def advisor_steps(self, config, b: int, x) -> np.ndarray: ...


def cache_key(kind: str, config, extra: dict | None = None, drop: tuple[str, ...] = ()) -> str:
    """The cache key of a result: (kind, the normalised config without the fields in ``drop``, extra, code hash)."""
    cfg = config.to_json()
    if drop:
        cfg = {k: v for k, v in cfg.items() if k not in drop}
    return make_key(kind, cfg, extra)


def run_device_type(config) -> str:
    """The device type a run of this config takes, for its cost estimate: 'cuda' when its ``device`` field asks for
    it or is 'auto' on a machine with CUDA, else 'cpu' (api.resolve_device picks the device itself)."""
    return "cuda" if config.device == "cuda" or (config.device == "auto" and torch.cuda.is_available()) else "cpu"


def simulation_key(config, device: torch.device) -> str:
    """The key under which ``simulate(config)`` on ``device`` is cached."""
    return cache_key(f"simulate_{config.setting}", config, {"device": device.type})


# -- the replica run shared by the settings that run in SGD steps (linear regression, the deep linear network) ----

def step_simulation(config, device: torch.device, cache: ResultCache, progress: Progress,
                    run_one: Callable[[Any], Any], meta: Callable[[], dict[str, Any]], x) -> dict[str, Any]:
    """``simulate`` of a step setting: ``run_one(b)`` runs the replicas of one batch size, or of the batch_schedule
    as one run (fields.run_batches), and gives its ReplicaResult; the runs' statistics are packed
    (curves.pack_stats) and cached under simulation_key with the setting's ``meta()`` (called on a cache miss only)
    and what every run reports
    (device, groups, divergence, seconds, code version). ``x``: the recorded steps."""

    def compute():
        t0 = time.monotonic()
        per_b = [run_one(b) for b in run_batches(config)]
        return {**meta(), "device": str(device), "groups": per_b[0].groups,
                "diverged_at": [r.diverged_at for r in per_b], "diverged_replicas": [r.diverged_replicas for r in per_b],
                "seconds": time.monotonic() - t0, "code_version": CODE_VERSION}, pack_stats(per_b)

    progress.total = config.replicas * (config.steps + 1) * len(curve_keys(config))
    found, arrays, hit = cache.get_or_compute(simulation_key(config, device), compute)
    progress.finish()
    return step_result(config, x, found, arrays, hit)


def cached_step_simulation(config, device: torch.device, cache: ResultCache, x) -> dict[str, Any] | None:
    """The cached result of step_simulation for ``config`` on ``device`` if there is one (never computes)."""
    found = cache.get(simulation_key(config, device))
    return None if found is None else step_result(config, x, *found, hit=True)


def step_result(config, x, meta: dict, arrays: dict, hit: bool) -> dict[str, Any]:
    """A step setting's cached arrays in the one result shape (curves.curves_result), x = the recorded steps."""
    return curves_result("t", np.asarray(x), curve_keys(config), unpack_stats(arrays), arrays["finite_count"], meta,
                         hit)


# -- the batch-size advisor's hooks shared by the settings that run in SGD steps (backend/advisor.py) -----------

# the advisor's outputs (loss, var_full_grad, var_g) are named after the step quantities: each reads its own curve
STEP_ADVISOR_QUANTITIES = {q.name: q.name for q in STEP_QUANTITIES}


def scaled_lr(config, lr_factor: float) -> dict:
    """The config's schedule (JSON) with its constant c multiplied by ``lr_factor``."""
    lr = config.lr.to_json()
    lr["c"] = float(config.lr.c) * lr_factor
    return lr


def step_advise_cell(config, b: int, budget: int, lr_factor: float):
    """The advisor's run for b: ⌊budget / b⌋ steps, the schedule's constant × lr_factor."""
    return config.replace(batch_sizes=[b], steps=budget // b, lr=scaled_lr(config, lr_factor))


def step_advisor_steps(config, b: int, x):
    """SGD steps behind the x-axis values of a result (x is the step t)."""
    return np.asarray(x)


# -- the CLI's documents (backend/report.py): strict JSON, NaN and ±inf as null ------------------------------------

def json_list(a) -> list:
    """A float array as a JSON list (NaN and ±inf → None)."""
    return [None if not np.isfinite(v) else float(v) for v in np.asarray(a, dtype=np.float64)]


def curves_json(batch_sizes, curves: dict | None, quantities, with_se: bool) -> dict[str, Any]:
    """Per batch size, each quantity over t (with ``q_se`` for estimates); None everywhere without curves."""
    out: dict[str, Any] = {}
    for j, b in enumerate(batch_sizes):
        entry: dict[str, Any] = {}
        for q in quantities:
            if curves is None:
                entry[q] = None
                continue
            if with_se:
                if q not in curves:
                    continue
                entry[q] = json_list(curves[q]["value"][j])
                entry[f"{q}_se"] = json_list(curves[q]["se"][j])
            else:
                entry[q] = json_list(curves[q][j])
        out[str(b)] = entry
    return out


def step_document(config, res: dict, table: list[Quantity]) -> dict[str, Any]:
    """The ``simulate`` document of a setting run in SGD steps: per b each quantity of its ``table`` (and each further
    estimator of one, e.g. the Rao–Blackwellised var_g_rb, where reported) over t with its SE, the finite replicas at each t, the first divergence
    per b, the sampler, the device and the replica groups."""
    meta, keys = res["meta"], curve_keys(config)  # the batch sizes, or "schedule"
    return {"t": res["t"].tolist(),
            "curves": curves_json(keys, res["curves"], tuple(estimated_by(table)), True),
            "finite_count": {str(b): res["finite_count"][j].tolist() for j, b in enumerate(keys)},
            "diverged_at": dict(zip(map(str, keys), meta["diverged_at"])),
            **({} if getattr(config, "batch_schedule", None) is None
               else {"batch_schedule": config.batch_schedule.to_json()}),
            "sampler": meta["sampler_label"], "device": meta["device"], "groups": meta["groups"]}

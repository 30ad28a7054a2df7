"""The backend's public face: pages, the CLI and scripts call only this module, and nothing in backend/ imports it.

It re-exports the run core (backend/core.py: the device, the resource guard, simulate / cached simulation / theory /
polynomial / checks / estimates through the registry of settings, the cache keys, the quantity table), the config
boundary, the advisor and the sweeps, and the setting-specific views the pages draw (Theorems 1–2 check, Theorem 4
fits, LaTeX of polynomials, …), so that the pages need no other backend module. Its own: the registry as the pages
and the CLI list it, and the z-score agreement with exact theory.
"""

from __future__ import annotations

import math
import threading
from typing import Any

import numpy as np

from backend import settings
from backend.core import (MAX_RESUMABLE_SECONDS, MAX_SIM_SECONDS, available_memory, cached_simulation,  # noqa: F401
                          check, cuda_memory, estimate, guard, has_theory, polynomial, quantities, quantity_table,
                          resolve_device, simulate, simulation_key, theory, time_limit)
# what the pages need of the config boundary and the data readers (pages import only this module and the charts)
from backend.config import expand_preset, from_query, loads, parse_config, to_query  # noqa: F401
from backend.fields import (DTYPES, MAX_REPLICAS, MIN_REPLICAS, MLP_SAMPLERS, PRECISIONS, SAMPLER_LABELS,  # noqa: F401
                            SAMPLERS, SCHEDULES, curve_keys, paper_batch_sizes, parse_batch_schedule_text)
from backend.datasets import MAX_UPLOAD_BYTES, parse_csv_text  # noqa: F401
from backend.docs import display_math_pieces, theory_preamble, theory_sections  # noqa: F401
from backend.advisor import (SCALINGS, advise, advise_rules, reachable_target, replica_plan, sweep,  # noqa: F401
                             sweep_cells)  # (the batch-size advisor)
from backend.advisor import compare_schedule  # noqa: F401  (the advisor's schedule against constant b)
from backend.advisor import compare_replicas  # noqa: F401  (the exact advisor's replica check)
from backend.cbs import DEFAULT_TOLERANCE as CBS_TOLERANCE, cbs, cbs_rules, exact_settings as cbs_settings  # noqa: F401
from backend.cbs import read_ints, table as cbs_table  # noqa: F401  (the critical batch size page)
from backend.cbs import estimate as cbs_estimate, max_checkpoint as cbs_max_checkpoint  # noqa: F401  (its replica runs)
from backend.cbs import replica_setting as cbs_replica_setting  # noqa: F401
from backend.costs import format_bytes  # noqa: F401  (the critical batch size page's estimate)
from backend.exact import jsonable_number  # noqa: F401
from backend.optimizer_choices import optimizer_names  # noqa: F401  (the shared optimizer widget asks the setting)
from backend.optim import FAMILIES as OPTIMIZERS, is_plain as plain_optimizer  # noqa: F401  (the shared widget)
from backend.advisor import advise_momentum, check_momenta, momentum_config  # noqa: F401  (the momentum axis)
from backend.allowed import ROOT as PROJECT_ROOT, model_files  # noqa: F401  (the Your-model page's file list)
from backend.costs import device_name, device_seconds, format_duration  # noqa: F401  (format_duration: pages)
from backend.costs import where as estimate_where  # noqa: F401  (pages: how a time estimate was made)
from backend.errors import ConfigError, TooExpensive  # noqa: F401  (ConfigError: the one error a page shows)
from backend.latex import polynomial_equation, polynomial_latex  # noqa: F401
from backend.progress import Progress
from backend.quantities import labels as quantity_labels  # noqa: F401  (pages: a table's labels)
from backend.settings.classifier import SAMPLER_LABELS as CLASSIFIER_SAMPLER_LABELS  # noqa: F401
from backend.settings.classifier import (b_ordering_share, b_simple_note, cached_checkpoint_epoch,  # noqa: F401
                                         split_note, variance_split)
from backend.settings.deep_linear import (decreasing_everywhere, describe_methods, eval_inv_b,  # noqa: F401
                                          eval_theorem4, fit_theorem4)
from backend.settings.linear_regression import (EXACT_MAX_T, FLOAT_POLY_MAX_T,  # noqa: F401
                                                against_b, all_b_grid, check_monotone, eval_poly_inv_b, paper_fit,
                                                theory_all_b, theory_curves)
from backend.curves import flag_message, flagged_points, per_b_table, unreliable  # noqa: F401  (flags, per-b table)
from backend.stats import exact_z
from backend.theory.deep_linear import decrease_threshold  # noqa: F401


def registry() -> list[dict[str, Any]]:
    """Every setting with its quantities and presets (``python -m backend settings``)."""
    return settings.describe()


def setting_pages() -> list[dict[str, Any]]:
    """Every setting's name, title, icon and Home card, in registry order (the app's navigation; cheap: parses
    nothing), and whether the advisor is exact for it (its module's ``advise`` hook)."""
    return [{"name": m.NAME, "title": m.TITLE, "icon": m.ICON, "card": m.CARD, "exact_advice": hasattr(m, "advise")}
            for m in settings.SETTINGS.values()]


def missing_data(config) -> str | None:
    """Why the config cannot run on this machine (its data is not installed), or None: a setting may say so with
    its ``missing_data(config)``; its estimate stands either way."""
    check = getattr(settings.for_config(config), "missing_data", None)
    return check(config) if check is not None else None


def defaults(setting: str) -> dict[str, Any]:
    """The normalised default config of a setting (what its page starts from)."""
    return parse_config({"setting": settings.get(setting).NAME}).to_json()


def presets(setting: str) -> list[str]:
    """The names of a setting's presets (``{"setting": …, "preset": name}`` is a complete config)."""
    return list(settings.get(setting).PRESETS)


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


# -- sweeps (backend/sweep.py, backend/cluster.py; imported in the functions: ``sweep`` here is the advisor's) -----

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
    return out + optimizer_sweep_fields(config, out)


def optimizer_sweep_fields(config, present: list[str]) -> list[str]:
    """The ``optimizer.*`` fields a sweep can vary that the config's JSON leaves out (plain SGD is left out of
    it): those of the optimizers the setting runs (asked of the setting, ``optimizer_names``)."""
    names = optimizer_names(config.setting, config.to_json()) or ()
    fields = [f"optimizer.{f}" for n in names for f in OPTIMIZERS[n].fields] + (["optimizer.name"] if names else [])
    return [f for f in dict.fromkeys(fields) if f not in present]


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
    progress.message = f"{len(spec.cells)} cell(s): cached ones are served first, then each runs in turn"

    def on_cell(done: int, total: int, entry: dict) -> None:
        progress.log.append(sweep.progress_line(done, total, entry, started))
        progress.message = f"cell {done + 1} of {total} running" if done < total else ""
        progress.advance(1)

    return sweep.run(spec, executor, None, on_cell, cancel)


def sweep_table(out: dict, with_theory: bool = True) -> list[dict[str, Any]]:
    """A sweep's results as one long table (cell overrides, b, x, quantity, value, se, lo, hi, exact)."""
    from backend import sweep

    return sweep.table(out, with_theory)

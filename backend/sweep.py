"""Sweeps: a grid of replica experiments (the Cartesian product of a few config fields' values), each cell one cached
``simulate`` — run one after another here (``local``) or spread over a Ray cluster (backend/cluster.py).

A sweep file is ``{"base": CONFIG, "grid": {"FIELD": [v1, v2, …], …}}``; FIELD is a top-level config field or a
dotted path into one (``"lr.c"``, ``"dataset.n"``). Written against the Setting protocol only: a cell is a config,
its result is ``simulate``'s, its cache entry is ``simulate``'s (so a later ``simulate`` of a cell's config is a cache
hit, and a rerun of the sweep computes nothing). Every cell is validated before anything runs.
"""

from __future__ import annotations

import copy
import itertools
import json
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Protocol

import torch

from backend import core, costs, report
from backend.cache import ResultCache, default_cache
from backend.config import JSON_DECIMALS, expand_preset, loads, parse_config
from backend.errors import Cancelled, ConfigError, one_line
from backend.fields import curve_keys

MAX_CELLS = 10_000
RESERVED = ("setting", "preset")  # a sweep runs one setting; its cells are full configs, not presets
OPTIONAL_OBJECTS = ("optimizer",)  # object fields a config's JSON may leave out (backend/optim.py: plain SGD)


@dataclass(frozen=True)
class Cell:
    """One grid point: the overrides as the sweep file wrote them, and the validated config they give."""

    index: int
    overrides: dict[str, Any]
    config: Any


@dataclass(frozen=True)
class Sweep:
    setting: str
    base: dict[str, Any]
    fields: tuple[str, ...]
    cells: tuple[Cell, ...]


def _set_path(doc: dict, path: str, value: Any) -> None:
    """Set a dotted path in a config document; every part but the last must be an object there, or one of
    OPTIONAL_OBJECTS that the normalised config leaves out (plain SGD's ``optimizer``): that one starts empty, and
    the cell's parse validates it."""
    parts = path.split(".")
    node = doc
    for i, part in enumerate(parts[:-1]):
        if node is doc and part in OPTIONAL_OBJECTS and part not in node:
            node[part] = {}
        if not isinstance(node.get(part), dict):
            raise ConfigError(path, f"'{'.'.join(parts[:i + 1])}' is not an object in the base config "
                                    f"(its fields: {sorted(node)})")
        node = node[part]
    node[parts[-1]] = copy.deepcopy(value)


def parse_sweep(raw: Any, plain: Any | None = None) -> Sweep:
    """Validate a sweep document into its cells. ``raw`` is read with exact decimals (backend.config.loads);
    ``plain`` (the same document read by ``json.loads``) gives the overrides echoed in the output, as written.
    A ConfigError names the cell and the field of the first invalid cell."""
    plain = raw if plain is None else plain
    if not isinstance(raw, dict):
        raise ConfigError("sweep", f"expected a JSON object with 'base' and 'grid', got {type(raw).__name__}")
    unknown = sorted(set(raw) - {"base", "grid"})
    if unknown:
        raise ConfigError(f"sweep.{unknown[0]}", "unknown field; expected 'base' and 'grid'")
    if "base" not in raw:
        raise ConfigError("sweep.base", "missing: the config every cell starts from")
    base_config = parse_config(raw["base"])
    base = base_config.to_json()
    grid, grid_plain = raw.get("grid", {}), plain.get("grid", {})
    if not isinstance(grid, dict):
        raise ConfigError("sweep.grid", f"expected an object {{FIELD: [values]}}, got {type(grid).__name__}")
    for name, values in grid.items():
        if not isinstance(name, str) or not name or any(not p for p in name.split(".")):
            raise ConfigError(f"grid.{name}", "expected a field name or a dotted path such as 'lr.c'")
        if name.split(".")[0] in RESERVED:
            raise ConfigError(f"grid.{name}", "a sweep runs one setting: put the setting or preset in 'base'")
        if not isinstance(values, list) or not values:
            raise ConfigError(f"grid.{name}", "expected a non-empty list of values")
    names = list(grid)
    for a, b in itertools.permutations(names, 2):
        if b.startswith(a + "."):
            raise ConfigError(f"grid.{b}", f"overlaps the grid field '{a}'")
    count = 1
    for name in names:
        count *= len(grid[name])
    if count > MAX_CELLS:
        raise ConfigError("sweep.grid", f"{count} cells; at most {MAX_CELLS}")
    cells = []
    for index, combo in enumerate(itertools.product(*(range(len(grid[n])) for n in names))):
        doc = copy.deepcopy(base)
        overrides = {n: grid_plain[n][i] for n, i in zip(names, combo)}
        try:
            for n, i in zip(names, combo):
                _set_path(doc, n, grid[n][i])
            config = parse_config(doc)
        except ConfigError as e:
            raise ConfigError(f"cell {index} {json.dumps(overrides)}: {e.field}", e.message) from None
        cells.append(Cell(index, overrides, config))
    return Sweep(base_config.setting, base, tuple(names), tuple(cells))


def load_sweep(text: str) -> Sweep:
    """A sweep from the text of a sweep file."""
    raw = loads(text)
    try:
        plain = json.loads(text)
    except json.JSONDecodeError:  # pragma: no cover - loads already refused it
        plain = raw
    if isinstance(raw, dict) and isinstance(raw.get("base"), dict):
        if JSON_DECIMALS in raw["base"]:  # a downloaded config pasted as the base: its decimals are floats
            raw["base"] = loads(json.dumps(plain["base"]))
        raw["base"] = expand_preset(raw["base"])
    return parse_sweep(raw, plain)


# -- executors --------------------------------------------------------------------------------------------------

class Executor(Protocol):
    """Where the cells run. ``device(config)`` is the device a cell would run on (its cache key depends on it);
    ``workers(cells)`` how many run at once; ``run`` yields (cell, outcome) as cells finish, where outcome is
    {"result", "seconds", "node", "cached"} or {"error"}; cells it could not start before a cancel are yielded with
    {"error": "cancelled"}."""

    name: str

    def device(self, config) -> torch.device: ...

    def workers(self, cells: list[Cell]) -> int: ...

    def run(self, cells: list[Cell], cache: ResultCache, cancel: threading.Event) -> Iterator[tuple[Cell, dict]]: ...


class LocalExecutor:
    """The cells one after another in this process, through ``core.simulate`` (guard, device, cache)."""

    name = "local"

    def device(self, config) -> torch.device:
        return core.resolve_device(config.device)

    def workers(self, cells: list[Cell]) -> int:
        return 1

    def run(self, cells: list[Cell], cache: ResultCache, cancel: threading.Event) -> Iterator[tuple[Cell, dict]]:
        for k, cell in enumerate(cells):
            if cancel.is_set():
                yield from ((c, {"error": "cancelled"}) for c in cells[k:])
                return
            start = time.perf_counter()
            try:
                res = core.simulate(cell.config, cancel=cancel, cache=cache)
            except Cancelled:
                yield from ((c, {"error": "cancelled"}) for c in cells[k:])
                return
            except ConfigError as e:
                yield cell, {"error": one_line(str(e))}
                continue
            except Exception as e:  # noqa: BLE001 - one cell's failure is reported; the others still run
                yield cell, {"error": one_line(f"{type(e).__name__}: {e}")}
                continue
            yield cell, {"result": report.simulate_output(cell.config, res), "cached": bool(res["cached"]),
                         "seconds": time.perf_counter() - start, "node": "local"}


# -- the driver -------------------------------------------------------------------------------------------------

def estimate(sweep: Sweep, executor: Executor, cache: ResultCache | None = None) -> dict[str, Any]:
    """The cost model (backend.costs) of the cells not yet cached: total device seconds, and per worker."""
    cache = cache if cache is not None else default_cache()
    pending = [c for c in sweep.cells if _cached(c, executor, cache) is None]
    seconds = sum(costs.device_seconds(core.estimate(c.config), executor.device(c.config)) for c in pending)
    workers = max(1, min(executor.workers(pending), len(pending))) if pending else 1
    return {"cells": len(sweep.cells), "cached": len(sweep.cells) - len(pending), "seconds": seconds,
            "workers": workers, "seconds_per_worker": seconds / workers}


def _cached(cell: Cell, executor: Executor, cache: ResultCache) -> dict | None:
    return core.cached_simulation(cell.config, cache, device=executor.device(cell.config))


def run(sweep: Sweep, executor: Executor | None = None, cache: ResultCache | None = None,
        on_cell: Callable[[int, int, dict], None] | None = None,
        cancel: threading.Event | None = None) -> dict[str, Any]:
    """Run every cell not yet cached on ``executor`` (default: local); cached cells are served from the cache.

    Returns {"executor", "cells": [{"overrides", "config", "cached", "seconds", "node", "result"}], "failed":
    [{"overrides", "error"}]} in grid order. ``on_cell(done, total, entry)`` is called as each cell finishes."""
    executor = executor or LocalExecutor()
    cache = cache if cache is not None else default_cache()
    cancel = cancel or threading.Event()
    done: dict[int, dict] = {}
    total = len(sweep.cells)

    def finish(cell: Cell, outcome: dict) -> None:
        head = {"overrides": cell.overrides}
        entry = {**head, "error": outcome["error"]} if "error" in outcome else {
            **head, "config": cell.config.to_json(), "cached": outcome["cached"],
            "seconds": outcome["seconds"], "node": outcome["node"], "result": outcome["result"]}
        done[cell.index] = entry
        if on_cell is not None:
            on_cell(len(done), total, entry)

    pending = []
    for cell in sweep.cells:
        hit = _cached(cell, executor, cache)
        if hit is None:
            pending.append(cell)
        else:
            finish(cell, {"result": report.simulate_output(cell.config, hit), "cached": True, "seconds": 0.0,
                          "node": "local" if executor.name == "local" else "cache"})
    for cell, outcome in executor.run(pending, cache, cancel):
        finish(cell, outcome)
    ordered = [done[c.index] for c in sweep.cells if c.index in done]
    return {"executor": executor.name, "fields": list(sweep.fields),
            "cells": [e for e in ordered if "error" not in e],
            "failed": [e for e in ordered if "error" in e]}


def progress_line(done: int, total: int, entry: dict, started: float) -> str:
    """One line per finished cell: count, overrides, outcome, node and the ETA of the rest."""
    elapsed = time.monotonic() - started
    eta = elapsed / done * (total - done) if done else 0.0
    what = (f"failed: {entry['error']}" if "error" in entry else
            "cached" if entry["cached"] else f"{entry['seconds']:.1f} s on {entry['node'][:12]}")
    return f"[{done}/{total}] {json.dumps(entry['overrides'])}: {what}; ETA {costs.format_duration(eta)}"


def table(out: dict[str, Any], with_theory: bool = True) -> list[dict[str, Any]]:
    """The sweep's results as a long table (the page's charts and the CSV download): one row per finished cell, batch
    size b, x (t or epoch) and quantity, with the overrides as columns, the estimate, its SE, the 95 % normal
    interval, and ``exact`` (the setting's exact value, where it has theory at that x and ``with_theory``)."""
    rows: list[dict[str, Any]] = []
    for cell in out["cells"]:
        config = parse_config(cell["config"])
        quantities = core.quantity_table(config)
        res = cell["result"]
        x_name = quantities[0].x
        xs = res[x_name]
        exact = None
        if with_theory and any(q.exact for q in quantities):
            exact = core.theory(config)["curves"]
        for j, b in enumerate(curve_keys(config)):  # the batch sizes, or a batch_schedule's "schedule"
            per_b = res["curves"][str(b)]
            for q in quantities:
                values, ses = per_b.get(q.name), per_b.get(f"{q.name}_se")
                if values is None:
                    continue
                ex = exact[q.name][j] if exact is not None and q.name in exact else None
                for i, x in enumerate(xs):
                    v, se = values[i], ses[i] if ses is not None else None
                    row = {**{f: json.dumps(val) if isinstance(val, (list, dict)) else val
                              for f, val in cell["overrides"].items()},
                           "b": int(b), "x_name": x_name, "x": x, "quantity": q.name, "value": v, "se": se,
                           "lo": None if v is None or se is None else v - 1.96 * se,
                           "hi": None if v is None or se is None else v + 1.96 * se,
                           "exact": None if ex is None or not _finite(ex[i]) else float(ex[i])}
                    rows.append(row)
    return rows


def _finite(x) -> bool:
    try:
        return bool(float(x) == float(x) and abs(float(x)) != float("inf"))
    except (TypeError, ValueError):
        return False

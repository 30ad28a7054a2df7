"""The JSON documents the CLI prints (and a sweep embeds per cell): one place that turns a result into JSON.

``simulate_output(config, res)`` is exactly what ``python -m backend simulate`` prints for ``config``; the sweep
(backend/sweep.py) puts the same document in each cell, so a cell's numbers can be compared field by field with a
``simulate`` of its config. Non-finite numbers become ``null`` (strict JSON).
"""

from __future__ import annotations

from typing import Any

from backend import core, curves, settings
from backend.fields import curve_keys
from backend.quantities import estimated_by
from backend.settings.base import curves_json


def simulate_output(config, res: dict) -> dict[str, Any]:
    """The ``simulate`` command's document for ``config`` and its result ``res`` (from ``simulate``): the setting's
    own document (its ``simulate_document``) under its name, with the flags of its estimates where it has exact
    theory."""
    doc = {"setting": config.setting, **settings.for_config(config).simulate_document(config, res)}
    if core.has_theory(config):
        doc.update(flags_json(config, res))
    return doc


def flags_json(config, res: dict) -> dict[str, Any]:
    """``flags``: per quantity, the (b, t) whose estimate cannot be trusted (curves.flagged_points: heavy tails or
    |z| > 4 against the exact value) with the replicas that would make the SE trustworthy; ``flag_note``: why (or
    None when nothing is flagged)."""
    th = core.theory(config)
    exact = th["curves"] if th["available"] and th["curves"] is not None else {}
    of = estimated_by(core.quantity_table(config))  # each curve → the quantity it estimates (backend/quantities.py)
    flags = {q: curves.flagged_points(res, of[q], exact.get(of[q]), q) for q in of if q in res["curves"]}
    worst = [p for ps in flags.values() for p in ps]
    return {"flags": flags, "flag_note": curves.flag_message(worst, config.replicas) if worst else None}


def theory_output(config, res: dict) -> dict[str, Any]:
    """The ``theory`` command's document."""
    out = {"setting": config.setting, "t": res["t"].tolist(), "available": res["available"], "note": res["note"],
           "curves": curves_json(curve_keys(config), res["curves"], core.quantities(config), with_se=False)}
    if "methods" in res:
        out["exact_methods"] = {str(t): m for t, m in res["methods"].items()}
    return out

"""The JSON documents the CLI prints (and a sweep embeds per cell): one place that turns a result into JSON.

``simulate_output(config, res)`` is exactly what ``python -m backend simulate`` prints for ``config``; the sweep
(backend/sweep.py) puts the same document in each cell, so a cell's numbers can be compared field by field with a
``simulate`` of its config. Non-finite numbers become ``null`` (strict JSON).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from backend import api


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


def classifier_curves_json(curves: dict, j: int, fields, per_init: bool) -> dict[str, Any]:
    """Batch size number j of an MLP / sequence result: each field q over epochs with q_se, var_g_min / var_g_max
    (the spread over initial weights), and with several initial weights q_per_init and q_per_init_se (one list over
    epochs per init)."""
    entry: dict[str, Any] = {}
    for f in fields:
        c = curves[f]
        entry[f] = json_list(c["value"][j])
        entry[f"{f}_se"] = json_list(c["se"][j])
        if per_init:
            for suffix in ("per_init", "per_init_se"):
                entry[f"{f}_{suffix}"] = [json_list(col) for col in np.asarray(c[suffix][j]).T]
    entry["var_g_min"], entry["var_g_max"] = json_list(curves["var_g"]["min"][j]), json_list(curves["var_g"]["max"][j])
    return entry


def simulate_output(config, res: dict) -> dict[str, Any]:
    """The ``simulate`` command's document for ``config`` and its result ``res`` (from ``api.simulate``)."""
    meta = res["meta"]
    if config.setting in ("mlp", "sequence"):
        return {"setting": config.setting, "epoch": res["epoch"].tolist(),
                "curves": {str(b): classifier_curves_json(res["curves"], j, api.quantities(config), config.inits > 1)
                           for j, b in enumerate(config.batch_sizes)},
                "inits": config.inits, "replicas": config.replicas, "band": res["band"],
                "sampler": meta["sampler_label"], "device": meta["device"],
                "diverged_at": {str(x["b"]): x["diverged_at"] for x in meta["per_b"]}}
    return {"setting": config.setting, "t": res["t"].tolist(),
            "curves": curves_json(config.batch_sizes, res["curves"], (*api.quantities(config), "var_g_rb"), True),
            **flags_json(config, res),
            "finite_count": {str(b): res["finite_count"][j].tolist() for j, b in enumerate(config.batch_sizes)},
            "diverged_at": dict(zip(map(str, config.batch_sizes), meta["diverged_at"])),
            "sampler": meta["sampler_label"], "device": meta["device"], "groups": meta["groups"]}


def flags_json(config, res: dict) -> dict[str, Any]:
    """``flags``: per quantity, the (b, t) whose estimate cannot be trusted (api.flagged_points: heavy tails or
    |z| > 4 against the exact value) with the replicas that would make the SE trustworthy; ``flag_note``: why (or
    None when nothing is flagged)."""
    th = api.theory(config)
    exact = th["curves"] if th["available"] and th["curves"] is not None else {}
    of = {q: q for q in api.quantities(config)} | {"var_g_rb": "var_g"}  # estimator → the quantity it estimates
    flags = {q: api.flagged_points(res, of[q], exact.get(of[q]), q) for q in of if q in res["curves"]}
    worst = [p for ps in flags.values() for p in ps]
    return {"flags": flags, "flag_note": api.flag_message(worst, config.replicas) if worst else None}


def theory_output(config, res: dict) -> dict[str, Any]:
    """The ``theory`` command's document."""
    out = {"setting": config.setting, "t": res["t"].tolist(), "available": res["available"], "note": res["note"],
           "curves": curves_json(config.batch_sizes, res["curves"], api.quantities(config), with_se=False)}
    if "methods" in res:
        out["exact_methods"] = {str(t): m for t, m in res["methods"].items()}
    return out

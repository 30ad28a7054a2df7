"""The one result shape every setting returns (docs/architecture.md): curves over (b, x) with the x-axis named.

    {"x_name": "t" | "epoch", "x": array (X,), <x_name>: the same array, "batch_sizes": [b, …],
     "curves": {quantity: {"value": (B, X), "se": (B, X), "lo": (B, X), "hi": (B, X), …}},
     "finite_count": (B, X) replicas alive, "meta": {"device", "seconds", "diverged_at": [per b], "diverged_replicas":
     [per b], …}, "cached": bool, …}

lo/hi is the band drawn: the 95 % interval of the estimate, or for the replica classifiers with several initial
weights the min–max over them (``band`` says which). Settings may add per-quantity arrays (``min``, ``max``,
``per_init``, ``per_init_se``, ``tail_share``) and top-level fields; the keys above are always there.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from backend.stats import FLAG_Z, estimate_flags

STATS = ("value", "se", "lo", "hi")


def curves_result(x_name: str, x: np.ndarray, batch_sizes, curves: dict[str, dict[str, np.ndarray]],
                  finite_count: np.ndarray, meta: dict[str, Any], cached: bool, **extra: Any) -> dict[str, Any]:
    """A result in the one shape (checks that every quantity has value/se/lo/hi over (b, x))."""
    x = np.asarray(x)
    shape = (len(batch_sizes), len(x))
    for name, stats in curves.items():
        for stat in STATS:
            if np.shape(stats[stat]) != shape:
                raise ValueError(f"{name}.{stat} has shape {np.shape(stats[stat])}, expected {shape}")
    return {"x_name": x_name, "x": x, x_name: x, "batch_sizes": list(batch_sizes), "curves": curves,
            "finite_count": np.asarray(finite_count), "meta": meta, "cached": cached, **extra}


def pack_stats(runs) -> dict[str, np.ndarray]:
    """The replica runs of every b (each a ReplicaResult: ``curves`` {q: {stat: (X,)}}, ``finite_count``) as the
    cache's {"q.stat": (B, X), "finite_count": (B, X)} (the inverse of unpack_stats)."""
    arrays = {f"{name}.{stat}": np.stack([r.curves[name][stat] for r in runs])
              for name in runs[0].curves for stat in ("value", "se", "lo", "hi", "tail_share", "skew")}
    arrays["finite_count"] = np.stack([r.finite_count for r in runs])
    return arrays


def unpack_stats(arrays: dict[str, np.ndarray]) -> dict[str, dict[str, np.ndarray]]:
    """{"q.stat": array} (as cached) → {q: {stat: array}}."""
    curves: dict[str, dict[str, np.ndarray]] = {}
    for k, v in arrays.items():
        if "." in k:
            name, stat = k.rsplit(".", 1)
            curves.setdefault(name, {})[stat] = v
    return curves


# -- flags and the per-b table (the linear-regression and deep-linear pages, the CLI's simulate) -----------------

def unreliable(sim: dict[str, Any], quantity: str, exact: np.ndarray | None = None,
               estimate_name: str | None = None) -> dict[str, np.ndarray]:
    """backend.stats.estimate_flags for one curve of a result: per (b, x) ``flag``, ``heavy_tail``, ``far``, ``z``
    and ``replicas_needed`` (``estimate_name``: another estimator of ``quantity``, e.g. var_g_rb)."""
    return estimate_flags(sim["curves"][estimate_name or quantity], exact, sim["finite_count"], sim["meta"]["groups"])


def flagged_points(sim: dict[str, Any], quantity: str, exact: np.ndarray | None = None,
                   estimate_name: str | None = None) -> list[dict[str, Any]]:
    """The flagged (b, x) of a curve, in order of b then x: b, x, estimate, se, exact, z, heavy_tail,
    replicas_needed."""
    f = unreliable(sim, quantity, exact, estimate_name)
    c = sim["curves"][estimate_name or quantity]
    out = []
    for j, i in zip(*np.nonzero(f["flag"])):
        out.append({"b": curve_key(sim["batch_sizes"][j]), sim["x_name"]: int(sim["x"][i]),
                    "estimate": _num(c["value"][j, i]), "se": _num(c["se"][j, i]),
                    "exact": None if exact is None else _num(exact[j, i]), "z": _num(f["z"][j, i]),
                    "heavy_tail": bool(f["heavy_tail"][j, i]), "replicas_needed": int(f["replicas_needed"][j, i])})
    return out


def flag_message(points: list[dict[str, Any]], replicas: int, x_name: str = "t", shown: int = 8) -> str | None:
    """The warning for flagged estimates (None when there are none): where, why, and how many replicas would do."""
    if not points:
        return None
    first: dict[tuple[int, int], dict[str, Any]] = {}
    for p in points:  # one reason per (b, x): a point's z where it is far from the exact value, else the dominant group
        first.setdefault((p["b"], p[x_name]), p)
    pairs = sorted(first)

    def why(p: dict[str, Any]) -> str:
        return (f"z = {p['z']:.1f}" if p["z"] is not None and abs(p["z"]) > FLAG_Z else "a dominant group")

    where = ", ".join(f"({b}, {x}: {why(first[b, x])})" for b, x in pairs[:shown]) + (" …" if len(pairs) > shown
                                                                                      else "")
    need = max(p["replicas_needed"] for p in points)
    return (f"Unreliable estimates at (b, {x_name}) = {where}: one replica group carries more than a quarter of the "
            "summed group estimates, or the estimate lies more than 4 SE from the exact value. The distribution of "
            f"the replicas is strongly skewed, so at {replicas:,} replicas the batch-means SE is too small (the groups "
            f"rarely hold the rare large values that carry much of the variance). About {need:,} replicas would make "
            "the SE trustworthy (from the skewness of the group estimates; at least 10× the replicas: a lower "
            "bound, since a skewness measured on groups that missed the rare values is itself too small).")


def per_b_table(theory: dict[str, Any] | None, sim: dict[str, Any], quantity: str, x: int,
                estimate_name: str | None = None) -> list[dict[str, Any]]:
    """One row per batch size at x (a recorded t or epoch): b, x, estimate, se, exact (None where no exact value
    is known), z (against it, by stats.exact_z), flag and replicas_needed (stats.estimate_flags), replicas (live)."""
    from backend.errors import ConfigError

    xs = [int(v) for v in sim["x"]]
    if int(x) not in xs:
        raise ConfigError(sim["x_name"], f"{x} is not a recorded {sim['x_name']} (recorded: {xs[0]} … {xs[-1]})")
    i = xs.index(int(x))
    exact = None if theory is None or theory.get("curves") is None else theory["curves"].get(quantity)
    f = unreliable(sim, quantity, exact, estimate_name)
    c = sim["curves"][estimate_name or quantity]
    rows = []
    for j, b in enumerate(sim["batch_sizes"]):
        flag = bool(f["flag"][j, i])
        rows.append({"b": curve_key(b), sim["x_name"]: int(x), "estimate": _num(c["value"][j, i]), "se": _num(c["se"][j, i]),
                     "exact": None if exact is None else _num(exact[j, i]), "z": _num(f["z"][j, i]), "flag": flag,
                     "replicas_needed": int(f["replicas_needed"][j, i]) if flag else None,
                     "replicas": int(sim["finite_count"][j, i])})
    return rows


def curve_key(b) -> int | str:
    """A curve's key as reported: its batch size, or "schedule" (a batch-size schedule's one curve)."""
    return b if isinstance(b, str) else int(b)


def _num(v) -> float | None:
    v = float(v)
    return v if np.isfinite(v) else None

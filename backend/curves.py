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


def unpack_stats(arrays: dict[str, np.ndarray]) -> dict[str, dict[str, np.ndarray]]:
    """{"q.stat": array} (as cached) → {q: {stat: array}}."""
    curves: dict[str, dict[str, np.ndarray]] = {}
    for k, v in arrays.items():
        if "." in k:
            name, stat = k.rsplit(".", 1)
            curves.setdefault(name, {})[stat] = v
    return curves

"""Downloads: the curves as CSV (exact and estimates side by side) and the config as reloadable JSON."""

from __future__ import annotations

import numpy as np
import pandas as pd

from backend.config import dumps


def curves_csv(t: np.ndarray, batch_sizes: list[int], theory_curves: dict | None, sim: dict | None,
               quantities: tuple[str, ...], x_name: str = "t") -> str:
    """One row per (b, x, quantity), x = t or epoch: exact, estimate, se, lo, hi, finite replicas."""
    frames = []
    for j, b in enumerate(batch_sizes):
        for q in quantities:
            cols = {"b": b, x_name: t, "quantity": q}
            cols["exact"] = theory_curves[q][j] if theory_curves is not None and q in theory_curves else np.nan
            if sim is not None and q in sim["curves"]:
                est = sim["curves"][q]
                cols.update({"estimate": est["value"][j], "se": est["se"][j], "lo": est["lo"][j],
                             "hi": est["hi"][j], "finite_replicas": sim["finite_count"][j]})
            frames.append(pd.DataFrame(cols))
    return pd.concat(frames, ignore_index=True).to_csv(index=False)


def config_json(config) -> str:
    """The config as reloadable JSON: ``backend.config.dumps`` (to_json with the marker ``"json_decimals": "float"``,
    so that loading it back gives the same config and cache key)."""
    return dumps(config)


def table_csv(rows: list[dict]) -> str:
    """A table of rows (e.g. api.per_b_table's) as CSV; None becomes an empty field."""
    return pd.DataFrame(rows).to_csv(index=False)

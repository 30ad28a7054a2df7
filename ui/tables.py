"""The per-b table at a chosen t: estimate ± SE, exact, z and the flag of every batch size (backend.api.per_b_table)."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from backend import api, export
from backend.quantities import Quantity, estimated_by


def per_b_table(prefix: str, theory: dict | None, sim: dict | None, table: list[Quantity],
                default_x: int = 5) -> list[dict] | None:
    """Pick a quantity of the setting's table (or a further estimator of one) and a recorded t, show one row per b
    (api.per_b_table) with a CSV download; the rows (None before a run)."""
    if sim is None:
        st.info("Run the replicas to tabulate the estimates per batch size.")
        return None
    x_name = sim["x_name"]
    xs = [int(v) for v in sim["x"]]
    c1, c2 = st.columns(2)
    of, labels = estimated_by(table), api.quantity_labels(table)
    q = c1.selectbox("Quantity", [q for q in of if q in sim["curves"]], format_func=lambda v: labels.get(v, v),
                     key=f"{prefix}_tabq")
    x = c2.select_slider(x_name, xs, value=min(xs, key=lambda v: abs(v - default_x)), key=f"{prefix}_tabx")
    rows = api.per_b_table(theory, sim, of[q], x, estimate_name=q)
    table = pd.DataFrame([{"b": r["b"], "estimate": r["estimate"], "SE": r["se"],
                           "estimate ± SE": (f"{r['estimate']:.5g} ± {r['se']:.2g}" if r["estimate"] is not None and
                                             r["se"] is not None else "—"),
                           "exact": r["exact"], "z": r["z"],
                           "flag": (f"unreliable: about {r['replicas_needed']:,} replicas needed" if r["flag"] else ""),
                           "replicas": r["replicas"]} for r in rows])
    st.dataframe(table, hide_index=True)
    st.caption(f"At {x_name} = {x}: the replica estimate ± one batch-means SE, the exact value where one is known, "
               "z = (estimate − exact)/SE, and a flag where the estimate cannot be trusted (one replica group carries "
               "more than a quarter of the summed group estimates, or |z| > 4), with the replicas that would make its "
               "SE trustworthy.")
    st.download_button("Per-b table (CSV)", export.table_csv(rows), f"batchvar_per_b_{x_name}{x}.csv", "text/csv",
                       key=f"{prefix}_tabcsv")
    return rows

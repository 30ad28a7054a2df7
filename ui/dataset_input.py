"""The linear-regression dataset in the sidebar: Graduate Admission (the paper's), a synthetic set, an uploaded CSV
(parsed by the backend and carried inline in the config), or the inline data of a loaded config."""

from __future__ import annotations

from typing import Any, Callable

import streamlit as st

from backend import api
from ui.state import user_text
from ui.widgets import number

INLINE = "inline (from config)"


def regression_dataset(d: Callable[[str], Any], k: Callable[[str], str]) -> dict:
    """The raw ``dataset`` field (validated with the rest of the config in ui.state.validated); stops the page
    with a note while a CSV is awaited, and with a red line for a CSV that is too large or cannot be used."""
    sb = st.sidebar
    ds0 = d("dataset") if isinstance(d("dataset"), dict) else {"name": d("dataset")}
    inline = ds0.get("name") == "inline"
    sources = ["graduate_admission", "synthetic", "upload CSV"] + ([INLINE] if inline else [])
    default = INLINE if inline else ds0.get("name", "graduate_admission")
    source = sb.selectbox("Dataset", sources, index=sources.index(default), key=k("source"),
                          help="Graduate Admission: 500 rows, 7 features, target 'Chance of Admit' (the paper's "
                               "setting)")
    if source == "graduate_admission":
        return {"name": "graduate_admission"}
    if source == "synthetic":
        c1, c2 = sb.columns(2)
        return {"name": "synthetic", "n": c1.number_input("n", 2, 100_000, int(ds0.get("n", 200)), key=k("sn")),
                "p": c2.number_input("p", 1, 50, int(ds0.get("p", 5)), key=k("sp")),
                "noise": number(c1, "noise", "dataset.noise", float(ds0.get("noise", 0.5)), 0.0, 100.0,
                                key=k("snoise")),
                "seed": c2.number_input("data seed", 0, 2**32 - 1, int(ds0.get("seed", 0)), key=k("sseed"))}
    if source == INLINE:
        return ds0
    return _uploaded_csv(k)


def _uploaded_csv(k: Callable[[str], str]) -> dict:
    f = st.sidebar.file_uploader("CSV with a header row (numeric columns)", type=["csv"], key=k("csv"))
    if f is None:
        st.info("Upload a CSV in the sidebar to continue, or pick another dataset.")
        st.stop()
    if f.size > api.MAX_UPLOAD_BYTES:
        st.error(f"The file is {f.size / 2**20:.1f} MiB; the limit is {api.MAX_UPLOAD_BYTES / 2**20:.0f} MiB.")
        st.stop()
    text = f.getvalue().decode("utf-8", errors="replace")
    header = text.splitlines()[0].split(",") if text.strip() else []
    target = st.sidebar.selectbox("Target column", [h.strip() for h in header][::-1], key=k("target"))
    try:
        data = api.parse_csv_text(text, target)
    except api.ConfigError as e:
        st.error(f"Cannot use that CSV: {user_text(e.message)}")
        st.stop()
    return {"name": "inline", "X": [[api.jsonable_number(v) for v in row] for row in data.X],
            "y": [api.jsonable_number(v) for v in data.y], "columns": [*data.feature_names, data.target_name]}

"""The advisor page's momentum axis under Streamlit's AppTest (#24): the default (β = 0 alone) is the plain page; a
list of momenta draws one line per β with the best b of each β and the best (b, β) of each rule, as
api.advise_momentum gives them; the effective-lr toggle runs each β with c·(1 − β); a bad list is one red line
naming the field; the JSON download carries the axis."""

from __future__ import annotations

import json

import pandas as pd
import pyarrow as pa
import pytest
import streamlit as st
from test_app import by_label, open_page, shown

from backend import api
from backend.config import parse_config

BUDGET = 20000
MOMENTA = "0, 0.9"


def _open(momenta: str | None = None, effective_lr: bool = False):
    at = open_page("pages/advisor.py")
    by_label(at.sidebar.number_input, "Budget N (samples)").set_value(BUDGET)
    if momenta is not None:
        by_label(at.sidebar.text_input, "Momenta β (comma-separated)").set_value(momenta)
    if effective_lr:
        by_label(at.sidebar.checkbox, "Effective learning rate α/(1−β) fixed").check()
    at.run()
    assert not at.exception, at.exception
    return at


def _momentum_chart(at):
    """The momentum chart's element (its spec in ``.proto.spec``, its data in ``.proto.datasets``)."""
    found = [c for c in at.get("vega_lite_chart") if "one line per β" in str(json.loads(c.proto.spec).get("title"))]
    assert len(found) == 1
    return found[0]


def _first_layer_rows(chart) -> pd.DataFrame:
    """The rows the chart's first layer (the lines) reads: Streamlit sends each dataset as Arrow."""
    name = json.loads(chart.proto.spec)["layer"][0]["data"]["name"]
    data = next(d.data.data for d in chart.proto.datasets if d.name == name)
    return pa.ipc.open_stream(data).read_pandas()


def _recording_downloads(monkeypatch) -> dict:
    """What the page hands st.download_button, by label."""
    seen: dict = {}
    original = st.download_button

    def recording(label, data, *args, **kwargs):
        seen[label] = data
        return original(label, data, *args, **kwargs)

    monkeypatch.setattr(st, "download_button", recording)
    return seen


def test_the_default_page_is_the_plain_advisor():
    at = _open()
    assert not at.error, [e.value for e in at.error]
    assert {m.label for m in at.metric} == {"best b (none)", "best b (sqrt)", "best b (linear)"}
    assert all("β" not in df.value.columns for df in at.dataframe)
    assert not [c for c in at.get("vega_lite_chart") if "one line per β" in str(json.loads(c.proto.spec).get("title"))]


def test_several_momenta_draw_one_line_per_beta_with_the_best_b_per_beta_and_overall(monkeypatch):
    downloads = _recording_downloads(monkeypatch)
    at = _open(MOMENTA)
    assert not at.error, [e.value for e in at.error]
    ref = api.advise_momentum(parse_config({"setting": "linear_regression"}), BUDGET, [0, 0.9])
    metrics = {m.label: m.value for m in at.metric}
    assert set(metrics) == {"best (b, β) (none)", "best (b, β) (sqrt)", "best (b, β) (linear)"}
    for rule, best in ref["best"].items():
        assert metrics[f"best (b, β) ({rule})"] == f"b = {best['b']}, β = {best['momentum']:g}"
    per_beta = next(df.value for df in at.dataframe if "best b (none)" in df.value.columns)
    assert list(per_beta["β"]) == [0.0, 0.9]
    for rule in ref["answers"]:
        assert list(per_beta[f"best b ({rule})"]) == [ref["best_b"][rule]["0"], ref["best_b"][rule]["0.9"]]
    chart = _momentum_chart(at)
    layer = json.loads(chart.proto.spec)["layer"][0]
    assert layer["encoding"]["color"]["field"] == "β" and layer["encoding"]["color"]["scale"]["domain"] == ["0", "0.9"]
    drawn = _first_layer_rows(chart)
    assert set(drawn["β"]) == {"0", "0.9"}
    assert drawn.groupby(["β", "rule"]).ngroups == 6  # one line per (β, rule)
    for (beta, rule), line in drawn.groupby(["β", "rule"]):
        want = ref["answers"][rule][beta]["curves"]
        assert list(line["loss"]) == pytest.approx([want[str(b)]["loss"] for b in line["b"]], rel=1e-12)
    advice = json.loads(downloads["Advice (JSON)"])  # the downloads carry the axis
    assert advice["momentum"] == [0, 0.9] and advice["best"] == json.loads(json.dumps(ref["best"]))
    assert "β" in downloads["Table (CSV)"].splitlines()[0]
    # the details below (noise scales, replica check) follow the chosen β: its best b per rule and its optimizer
    by_label(at.selectbox, "β for the details below").set_value("0.9").run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    texts = [shown(m) for m in [*at.markdown, *at.caption, *at.info]]
    assert any("replicas of SGD with momentum β = 0.9 for b" in t for t in texts), texts
    table = next(df.value for df in at.dataframe if "β" in df.value.columns and "loss" in df.value.columns)
    assert set(table["β"]) == {0.0, 0.9} and len(table) == 2 * 3 * len(parse_config({}).batch_sizes)
    # momentum changes the answer: β = 0.9 at the same c is not β = 0
    zero, heavy = (table[(table["β"] == beta) & (table["rule"] == "none")]["loss"].to_numpy() for beta in (0.0, 0.9))
    assert (zero != heavy).any()


def test_effective_lr_runs_each_beta_with_c_times_one_minus_beta():
    plain = _open(MOMENTA)
    eff = _open(MOMENTA, effective_lr=True)
    assert not eff.error, [e.value for e in eff.error]

    def c_b(at, beta):
        table = next(df.value for df in at.dataframe if "β" in df.value.columns and "c_b" in df.value.columns)
        return table[table["β"] == beta].sort_values(["rule", "b"])["c_b"].to_numpy()

    assert c_b(eff, 0.0) == pytest.approx(c_b(plain, 0.0), rel=1e-15)
    assert c_b(eff, 0.9) == pytest.approx(0.1 * c_b(plain, 0.9), rel=1e-12)
    assert "α/(1 − β) fixed" in json.loads(_momentum_chart(eff).proto.spec)["title"]["text"]


@pytest.mark.parametrize("text", ["0, 1.5", "0, abc", "0.5, 0.5", ""])
def test_a_bad_momentum_list_is_one_red_line_naming_the_field(text):
    at = _open(text)
    assert len(at.error) == 1 and "momentum" in shown(at.error[0]) and "\n" not in at.error[0].value, \
        [e.value for e in at.error]
    assert not at.metric

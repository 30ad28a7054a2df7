"""A sweep over optimizer.momentum (the nested field that plain SGD's JSON leaves out): its cells are simulate's runs of
the configs with that β — the β = 0 cell today's plain config and cache entry — each replica estimate within 4 SE of
the exact value with its own β, offered by the Sweeps page's fields, and drawn on an ordinal axis."""

from __future__ import annotations

import json

import pandas as pd

from backend import api, charts, sweep
from backend.cache import ResultCache

BASE = {"setting": "linear_regression", "steps": 12, "replicas": 400, "batch_sizes": [4],
        "lr": {"schedule": "constant", "c": "1/20"}}
MOMENTA = [0, 0.5, 0.9]


def test_a_sweep_over_momentum_runs_each_beta(tmp_path):
    doc = {"base": BASE, "grid": {"optimizer.momentum": MOMENTA}}
    spec = sweep.load_sweep(json.dumps(doc))
    assert [c.overrides for c in spec.cells] == [{"optimizer.momentum": m} for m in MOMENTA]
    assert "optimizer" not in spec.cells[0].config.to_json()  # β = 0: plain SGD, today's config and cache key
    assert [c.config.to_json().get("optimizer", {}).get("momentum") for c in spec.cells] == [None, "1/2", "9/10"]
    cache = ResultCache(tmp_path / "cache")
    out = sweep.run(spec, sweep.LocalExecutor(), cache)
    assert not out["failed"] and len(out["cells"]) == 3
    plain = api.cached_simulation(api.parse_config(BASE), cache)
    assert plain is not None  # the β = 0 cell is the plain config's cache entry
    finals = []
    for cell, m in zip(out["cells"], MOMENTA):
        cfg = api.parse_config(cell["config"])
        exact = api.theory(cfg, cache=cache)["curves"]["var_g"][0]
        est = cell["result"]["curves"]["4"]
        for t in (3, 12):
            z = (est["var_g"][t] - exact[t]) / est["var_g_se"][t]
            assert abs(z) <= 4, (m, t, z)
        finals.append(exact[12])
    assert len(set(finals)) == 3  # the momentum changed the numbers


def test_the_sweeps_page_offers_the_optimizer_fields_and_draws_momentum_on_an_ordinal_axis():
    fields = api.sweep_fields(api.parse_config(BASE))
    assert {"optimizer.momentum", "optimizer.nesterov", "optimizer.weight_decay"} <= set(fields)
    sel = pd.DataFrame({"axis": [0, 0.5, 0.9], "line": ["b=4"] * 3, "value": [1.0, 2.0, 3.0], "lo": [0.5] * 3,
                        "hi": [3.5] * 3, "se": [0.1] * 3, "exact": [1.0, 2.0, 3.0]})
    spec = charts.sweep_chart(sel, "optimizer.momentum", ["b"], "var_g", False).to_dict()
    assert spec["layer"][0]["encoding"]["x"]["type"] == "ordinal"
    assert [float(v) for v in spec["layer"][0]["encoding"]["x"]["sort"]] == [0, 0.5, 0.9]  # in value order


def test_the_sweeps_page_sweeps_momentum_end_to_end(monkeypatch, tmp_path):
    """The Sweeps page (AppTest) with optimizer.momentum as field 1 over 0, 0.5, 0.9: three cells, each cell's
    config carrying its β (β = 0: plain SGD, the field left out), each cell's result the cached simulate of that
    config, and the chart's x axis ordinal over the three momenta."""
    from test_app import by_label, open_page, wait_for_run

    monkeypatch.setenv("BATCHVAR_CACHE_DIR", str(tmp_path / "cache"))
    at = open_page("pages/sweeps.py")
    at.session_state["last_config_linear_regression"] = {**BASE, "replicas": 50}
    at.run()
    by_label(at.sidebar.selectbox, "Field 1").set_value("optimizer.momentum")
    at.run()
    by_label(at.sidebar.text_input, "Values 1 (JSON list)").set_value(json.dumps(MOMENTA))
    at.run()
    by_label(at.button, "Run").click()
    at.run()
    wait_for_run(at, "sw")
    assert not at.exception and not at.error, (at.exception, [e.value for e in at.error])
    out = next(iter(at.session_state["sw_results"].values()))
    assert [c["config"].get("optimizer", {}).get("momentum") for c in out["cells"]] == [None, "1/2", "9/10"]
    for cell in out["cells"]:
        again = api.cached_simulation(api.parse_config(cell["config"]))
        assert again is not None
        assert cell["result"]["curves"]["4"]["var_g"] == again["curves"]["var_g"]["value"][0].tolist()
    spec = json.loads(at.get("vega_lite_chart")[0].proto.spec)
    x = spec["layer"][0]["encoding"]["x"]
    assert x["type"] == "ordinal" and [float(v) for v in x["sort"]] == MOMENTA

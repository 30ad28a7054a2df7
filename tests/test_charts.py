"""Chart specs (``chart.to_dict()``) of backend/charts/ on real results of small configs run through backend.api:
the band stays see-through under every selection state, the estimate and the exact value are drawn differently,
no log axis receives a non-positive value, many batch sizes get a sequential colour scale, the against-b axis stays
within [1, n], a sweep's discrete field is an ordinal axis in numeric order, and the advisor says when everything
diverged."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pandas as pd
import pytest

from backend import api, charts
from backend.config import parse_config


# -- reading specs ----------------------------------------------------------------------------------------------

def layers(spec: dict):
    """Every unit layer of a (possibly nested) layered spec."""
    if "layer" in spec:
        for layer in spec["layer"]:
            yield from layers(layer)
    else:
        yield spec


def mark_type(layer: dict) -> str:
    mark = layer["mark"]
    return mark if isinstance(mark, str) else mark["type"]


def rows(spec: dict, layer: dict) -> list[dict]:
    """The data rows a layer reads (its own named dataset or the top level's)."""
    data = layer.get("data") or spec.get("data")
    return spec["datasets"][data["name"]] if "name" in data else data["values"]


def source_filter(layer: dict) -> str | None:
    """'exact' / 'estimate' when the layer keeps only that source (transform_filter on datum.source)."""
    for tr in layer.get("transform", []):
        text = json.dumps(tr.get("filter", ""))
        for source in ("exact", "estimate"):
            if f"'{source}'" in text or f'\\"{source}\\"' in text:
                return source
    return None


def opacities(layer: dict) -> list[float]:
    """Every opacity a layer can take: the mark's own, the encoding's value and each condition's value."""
    found = []
    mark = layer["mark"] if isinstance(layer["mark"], dict) else {}
    for key in ("opacity", "fillOpacity"):
        if key in mark:
            found.append(mark[key])
        enc = layer.get("encoding", {}).get(key)
        if enc is not None:
            if "value" in enc:
                found.append(enc["value"])
            conds = enc.get("condition", [])
            for cond in conds if isinstance(conds, list) else [conds]:
                if "value" in cond:
                    found.append(cond["value"])
            if "scale" in enc and "range" in enc["scale"]:
                found.extend(enc["scale"]["range"])
    return found


def log_fields(layer: dict, channels=("y", "y2", "x", "x2")) -> list[str]:
    """Fields of the layer drawn on a log scale (y2 shares y's scale, x2 x's)."""
    enc = layer.get("encoding", {})
    out = []
    for ch in channels:
        main = enc.get(ch[0]) or {}
        if (main.get("scale") or {}).get("type") == "log" and ch in enc and "field" in enc[ch]:
            out.append(enc[ch]["field"])
    return out


def assert_log_axes_positive(spec: dict) -> int:
    """No row a log-scaled layer reads has a non-positive value in a log-scaled field; returns how many were read."""
    checked = 0
    for layer in layers(spec):
        fields = log_fields(layer)
        if not fields:
            continue
        source = source_filter(layer)
        for row in rows(spec, layer):
            if source is not None and row.get("source") != source:
                continue
            for f in fields:
                v = row.get(f)
                if v is None or (isinstance(v, float) and math.isnan(v)):
                    continue
                assert v > 0, (f, row)
                checked += 1
    return checked


# -- real results -----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def linreg():
    cfg = parse_config({"steps": 8, "batch_sizes": [2, 16, 64], "replicas": 200, "seed": 3})
    return cfg, api.theory(cfg), api.simulate(cfg)


@pytest.fixture(scope="module")
def mlp():
    cfg = parse_config({"setting": "mlp", "dataset": {"name": "digits", "train_size": 200}, "hidden": [8],
                        "inits": 2, "replicas": 4, "epochs": 2, "batch_sizes": [16, 64]})
    return cfg, api.simulate(cfg)


def linreg_chart(linreg, quantity="var_g", log=True):
    cfg, th, sim = linreg
    df = charts.curves_frame(th["t"], cfg.batch_sizes, th["curves"], sim["curves"], quantity, sim["finite_count"])
    return df, charts.time_chart(df, quantity, log=log,
                                 nonnegative=charts.is_nonnegative(quantity, api.quantity_table(cfg))).to_dict()


def test_band_is_see_through_under_every_selection_state(linreg, mlp):
    _, spec = linreg_chart(linreg)
    cfg, sim = mlp
    df = charts.curves_frame(sim["x"], cfg.batch_sizes, None, sim["curves"], "var_g", sim["finite_count"], "epoch")
    specs = [spec, charts.time_chart(df, "var(g)", x_name="epoch", band=sim["band"]).to_dict(),
             charts.split_chart(sim["epoch"], "epoch", cfg.batch_sizes, sim["curves"], sim["band"]).to_dict(),
             charts.b_simple_chart(sim["epoch"], "epoch", cfg.batch_sizes, sim["curves"]["b_simple"]).to_dict()]
    for s in specs:
        areas = [layer for layer in layers(s) if mark_type(layer) == "area"]
        assert areas, "every one of these charts draws a band"
        for layer in areas:
            values = opacities(layer)
            assert values, "the band's opacity is set explicitly"
            assert all(0 < v <= 0.5 for v in values), values


def test_estimate_and_exact_drawn_with_different_strokes_and_exact_on_top(linreg):
    _, spec = linreg_chart(linreg)
    lines = {source_filter(layer): layer for layer in layers(spec) if mark_type(layer) == "line"}
    assert set(lines) == {"exact", "estimate"}
    dash = lines["exact"]["encoding"]["strokeDash"]
    assert dash == lines["estimate"]["encoding"]["strokeDash"]  # one key names both
    by_label = dict(zip(dash["scale"]["domain"], dash["scale"]["range"]))
    data = rows(spec, lines["exact"])
    exact_label = {r["curve"] for r in data if r["source"] == "exact"}
    estimate_label = {r["curve"] for r in data if r["source"] == "estimate"}
    assert len(exact_label) == len(estimate_label) == 1
    (e,), (s,) = exact_label, estimate_label
    assert by_label[e] != by_label[s] and by_label[e] in ([1, 0], None) and len(by_label[s]) == 2
    assert "band" in s and "replica estimate" in s and e == "exact"  # the key says which is which
    # the estimate also carries open markers, so it shows where it sits on the exact line
    points = [layer for layer in layers(spec) if mark_type(layer) == "point" and source_filter(layer) == "estimate"]
    assert points and points[0]["mark"]["filled"] is False
    order = [source_filter(layer) for layer in layers(spec) if mark_type(layer) == "line"]
    assert order[-1] == "exact"  # drawn last: on top of the estimate and its band


def test_no_non_positive_value_reaches_a_log_axis(linreg, mlp):
    # var(∇L(w_0)) is exactly zero at t = 0, and var(g_t) = 0 at b = n without replacement
    df, spec = linreg_chart(linreg, "var_full_grad")
    assert (df.loc[df["t"] == 0, "value"].abs() < 1e-9).all()
    assert assert_log_axes_positive(spec) > 0
    drawn = charts.drawn_summary(df, log=True)
    assert drawn["dropped"] >= 3 and "non-positive values not drawn" in charts.drawn_caption(drawn, True)
    cfg, th, sim = linreg
    all_b = api.theory_all_b(cfg)
    exact = all_b["curves"]["var_g"][:, 4]
    assert exact[-1] == pytest.approx(0, abs=1e-12) and all_b["b"][-1] == cfg.n
    est = pd.DataFrame({"b": cfg.batch_sizes, **{k: sim["curves"]["var_g"][k][:, 4] for k in ("value", "lo", "hi",
                                                                                               "se")}})
    bspec = charts.b_chart(all_b["b"], exact, 4, est, b_max=cfg.n).to_dict()
    assert assert_log_axes_positive(bspec) > 0
    assert "not drawn on the log axis" in json.dumps(bspec["title"])
    mcfg, msim = mlp  # the spread of ∇L at epoch 0 is an exact zero: every replica of an init starts at w_0
    assert (msim["curves"]["noise_spread"]["value"][:, 0] == 0).all()
    sspec = charts.split_chart(msim["epoch"], "epoch", mcfg.batch_sizes, msim["curves"]).to_dict()
    assert assert_log_axes_positive(sspec) > 0
    assert "not drawn on the log axis" in json.dumps(sspec["title"])
    assert assert_log_axes_positive(charts.b_simple_chart(msim["epoch"], "epoch", mcfg.batch_sizes,
                                                          msim["curves"]["b_simple"]).to_dict()) > 0


def test_log_axes_use_one_number_format():
    assert charts.log_axis_format([1e-3, 5.0, 2e4]) == "~g"
    assert charts.log_axis_format([3.0, 1e19]) == "~e"
    assert charts.log_axis_format([1e-35, 1.0]) == "~e"


def test_linear_axis_of_a_non_negative_quantity_stays_above_zero(linreg):
    df, spec = linreg_chart(linreg, "var_g", log=False)
    assert (df["lo"] < 0).any(), "at b = 2 the raw 95 % band reaches below 0"
    for layer in layers(spec):
        enc = layer["encoding"]
        if mark_type(layer) == "area":
            assert enc["y"]["scale"].get("domainMin") == 0
            assert all(r["lo"] is None or r["lo"] >= 0 for r in rows(spec, layer))


def test_many_batch_sizes_get_a_sequential_scale_and_a_full_legend():
    cfg = parse_config({"setting": "linear_regression", "preset": "paper (Figure 2b)"})
    assert len(cfg.batch_sizes) > charts.MAX_CATEGORICAL
    th = api.theory(cfg)
    df = charts.curves_frame(th["t"], cfg.batch_sizes, th["curves"], None, "var_g")
    spec = charts.time_chart(df, "var(g_t | F_0)").to_dict()
    colors = [layer["encoding"]["color"] for layer in layers(spec)]
    for color in colors:
        assert color["type"] == "ordinal" and "scheme" in color["scale"] and "range" not in color["scale"]
        assert color["scale"]["domain"] == [str(b) for b in sorted(cfg.batch_sizes)]
        assert color["legend"]["symbolLimit"] == 0  # no entry dropped
    caption = charts.drawn_caption(charts.drawn_summary(df, True), ran=False)
    assert "no replica estimate yet" in caption and not re.search(r"\b0 points", caption)


def test_isolated_exact_points_are_drawn_as_markers():
    """Deep linear, Figure 3 preset before a run: exact values only at t = 0 (a line of one point draws nothing)."""
    cfg = parse_config({"setting": "deep_linear", "preset": "paper (Figure 3)"})
    th = api.theory(cfg)
    df = charts.curves_frame(th["t"], cfg.batch_sizes, th["curves"], None, "var_g")
    finite = df[np.isfinite(df["value"].to_numpy(dtype=float))]
    spec = charts.time_chart(df, "var(g_t | F_0)").to_dict()
    dots = [layer for layer in layers(spec) if mark_type(layer) == "point" and source_filter(layer) == "exact"]
    assert dots and dots[0]["mark"]["filled"] is True
    drawn_as_dots = {r["b"] for r in rows(spec, dots[0]) if r["source"] == "exact" and r["dot"]
                     and r["value"] is not None}
    alone = {b for b, size in finite.groupby("b").size().items() if size == 1}
    assert alone and alone <= drawn_as_dots


def test_b_chart_titles_axis_domain_and_key(linreg):
    cfg, th, sim = linreg
    all_b = api.theory_all_b(cfg)
    t = 5
    est = pd.DataFrame({"b": cfg.batch_sizes, **{k: sim["curves"]["var_g"][k][:, t] for k in ("value", "lo", "hi",
                                                                                               "se")}})
    fit = api.eval_poly_inv_b(list(api.paper_fit(np.array(cfg.batch_sizes), est["value"].to_numpy(), degree=2)),
                              all_b["b"])
    spec = charts.b_chart(all_b["b"], all_b["curves"]["var_g"][:, t], t, est, {"fit": fit}, b_max=cfg.n).to_dict()
    for layer in layers(spec):
        enc = layer["encoding"]
        assert enc["y"]["title"] == "var(g_t | F_0)"  # the errorbar's lo must not add ", lo" to the axis title
        xs = enc["x"]["scale"]
        assert xs["nice"] is False and 1 <= xs["domain"][0] and xs["domain"][1] <= cfg.n
    color = next(iter(layers(spec)))["encoding"]["color"]
    named = dict(zip(color["scale"]["domain"], color["scale"]["range"]))
    assert set(named) == {"exact", "fit", charts.REPLICA_KEY}  # the replica dots have a legend entry
    assert len(set(named.values())) == 3
    points = [layer for layer in layers(spec) if mark_type(layer) == "point"]
    assert points and points[0]["encoding"]["color"]["field"] == "curve"
    lines = [layer for layer in layers(spec) if mark_type(layer) == "line"]
    filters = [json.dumps(layer.get("transform", [])) for layer in lines]
    assert len(lines) == 2 and "!==" in filters[0] and "===" in filters[1]  # the fits first, the exact line on top
    assert lines[0]["mark"]["strokeDash"] == [6, 3] and "strokeDash" not in lines[1]["mark"]  # fits dashed, exact solid


@pytest.fixture(scope="module")
def seed_sweep():
    spec = api.sweep_spec({"base": {"setting": "linear_regression", "steps": 4, "replicas": 40,
                                    "batch_sizes": [2, 16, 64, 256]},
                           "grid": {"seed": [0, 1, 2], "lr.c": ["1/4", "1/2", "1"]}})
    out = api.run_sweep(spec, api.sweep_executor("local"))
    return pd.DataFrame(api.sweep_table(out, with_theory=True))


def test_sweep_discrete_field_is_ordinal_and_legends_are_numeric(seed_sweep):
    x_at = seed_sweep["x"].max()
    sel, others = charts.sweep_frame(seed_sweep, "var_g", x_at, "seed", ("seed", "lr.c"))
    spec = charts.sweep_chart(sel, "seed", others, "var_g", log_y=True).to_dict()
    first = next(iter(layers(spec)))
    assert first["encoding"]["x"]["type"] == "ordinal" and first["encoding"]["x"]["sort"] == ["0", "1", "2"]
    order = first["encoding"]["color"]["sort"]
    cs = [line.split(", ")[0] for line in order]
    bs = [int(line.split(", ")[1]) for line in order]
    assert cs[0] == "1/4" and cs[-1] == "1"  # fractions by value, not as text
    assert bs[:4] == [2, 16, 64, 256]  # numbers by value, not "16, 2, 256, 64"
    assert first["encoding"]["y"]["scale"]["type"] == "log" and assert_log_axes_positive(spec) > 0
    # against the fractions: an ordinal axis in value order; a linear y of a variance starts at 0
    sel, others = charts.sweep_frame(seed_sweep, "var_g", x_at, "lr.c", ("seed", "lr.c"))
    spec = charts.sweep_chart(sel, "lr.c", others, "var_g", log_y=False).to_dict()
    first = next(iter(layers(spec)))
    assert first["encoding"]["x"]["sort"] == ["1/4", "1/2", "1"]
    assert first["encoding"]["y"]["scale"]["zero"] is True
    # against b: a continuous log axis
    sel, others = charts.sweep_frame(seed_sweep, "var_g", x_at, "b", ("seed", "lr.c"))
    first = next(iter(layers(charts.sweep_chart(sel, "b", others, "var_g", log_y=True).to_dict())))
    assert first["encoding"]["x"]["type"] == "quantitative" and first["encoding"]["x"]["scale"]["type"] == "log"


def test_advisor_chart_says_when_every_rule_diverged():
    cfg = parse_config({"setting": "linear_regression", "batch_sizes": [4, 16, 64],
                        "lr": {"schedule": "constant", "c": "50"}})
    answers = api.advise_rules(cfg, 2000, ("none", "sqrt"))
    assert all(row["diverged"] for ans in answers.values() for row in ans["curves"].values())
    spec = charts.advisor_chart(answers, "loss", "title").to_dict()
    texts = [layer for layer in layers(spec) if mark_type(layer) == "text"]
    assert texts and "diverged" in json.dumps(rows(spec, texts[0]))


def test_advisor_best_markers_of_two_rules_at_one_b_stay_visible():
    """One batch size: it is every rule's best, at the same loss (c_b = c at b = b_ref for every rule)."""
    cfg = parse_config({"setting": "linear_regression", "batch_sizes": [8]})
    answers = api.advise_rules(cfg, 4000, ("none", "sqrt", "linear"), 8)
    assert {ans["best_b"] for ans in answers.values()} == {8}
    spec = charts.advisor_chart(answers, "E L(w_T)", "title").to_dict()
    best = [layer for layer in layers(spec) if mark_type(layer) == "point" and layer["mark"].get("shape") == "diamond"]
    assert best
    marks = rows(spec, best[0])
    marks = [r for r in marks if r.get("best")]
    assert len(marks) == 3 and len({r["size"] for r in marks}) == 3  # concentric, none hidden
    assert all(set(r["best for"].split(", ")) == {"none", "sqrt", "linear"} for r in marks)
    assert assert_log_axes_positive(spec) > 0


def _momentum_result(losses: dict, best: dict) -> dict:
    """An advise_momentum-shaped result from {rule: {β: {b: loss or None (diverged)}}} and each rule's best (b, β)."""
    answers = {}
    for rule, per_beta in losses.items():
        answers[rule] = {}
        for beta, by_b in per_beta.items():
            alive = {b: v for b, v in by_b.items() if v is not None}
            answers[rule][beta] = {"best_b": min(alive, key=alive.get) if alive else None, "curves": {
                str(b): {"steps": 100 // b, "lr_c": 0.5, "loss": v, "loss_se": None, "diverged": v is None}
                for b, v in by_b.items()}}
    betas = list(next(iter(losses.values())))
    return {"momentum": [float(k) for k in betas], "answers": answers, "best": best,
            "best_b": {r: {k: a["best_b"] for k, a in per.items()} for r, per in answers.items()}}


def test_advisor_momentum_chart_draws_one_line_per_beta_with_its_best_b_and_the_best_pair():
    result = _momentum_result(
        {"none": {"0": {2: 0.5, 8: 0.3, 32: 0.4}, "0.9": {2: 0.2, 8: 0.25, 32: None}},
         "linear": {"0": {2: 0.6, 8: 0.45, 32: 0.35}, "0.9": {2: 0.3, 8: None, 32: None}}},
        {"none": {"momentum": 0.9, "b": 2, "loss": 0.2}, "linear": {"momentum": 0.9, "b": 2, "loss": 0.3}})
    spec = charts.advisor_momentum_chart(result, "E L(w_T)", "title").to_dict()
    all_layers = list(layers(spec))
    line = next(layer for layer in all_layers if mark_type(layer) == "line")
    assert line["encoding"]["color"]["field"] == "β" and line["encoding"]["color"]["scale"]["domain"] == ["0", "0.9"]
    assert line["encoding"]["strokeDash"]["field"] == "rule"  # two rules: one dash each
    drawn = pd.DataFrame(rows(spec, line))
    assert drawn.groupby(["β", "rule"]).ngroups == 4
    assert not ((drawn["β"] == "0.9") & (drawn["b"] == 32)).any()  # the diverged lanes are left out
    diamonds = next(layer for layer in all_layers if layer["mark"].get("shape") == "diamond")
    got = {(r["β"], r["rule"], r["b"]) for r in rows(spec, diamonds) if r["best"]}
    assert got == {("0", "none", 8), ("0.9", "none", 2), ("0", "linear", 32), ("0.9", "linear", 2)}
    star = next(layer for layer in all_layers if mark_type(layer) == "point" and layer["mark"].get("filled"))
    stars = {(r["β"], r["rule"], r["b"]) for r in rows(spec, star) if r["best_overall"]}
    assert stars == {("0.9", "none", 2), ("0.9", "linear", 2)}
    assert assert_log_axes_positive(spec) > 0
    assert line["encoding"]["x"]["axis"]["values"] == [2.0, 8.0, 32.0]  # a tick at every b (not the log defaults)
    one_rule = {**result, "answers": {"none": result["answers"]["none"]}, "best": {"none": result["best"]["none"]}}
    line = next(layer for layer in layers(charts.advisor_momentum_chart(one_rule, "y", "t").to_dict())
                if mark_type(layer) == "line")
    assert "strokeDash" not in line["encoding"]


def test_advisor_momentum_chart_says_when_every_lane_diverged():
    result = _momentum_result({"none": {"0": {2: None}, "0.5": {2: None}}}, {"none": None})
    spec = charts.advisor_momentum_chart(result, "loss", "title").to_dict()
    texts = [layer for layer in layers(spec) if mark_type(layer) == "text"]
    assert texts and "diverged" in json.dumps(rows(spec, texts[0]))


def test_sweep_error_bars_of_cells_at_one_x_stand_side_by_side(seed_sweep):
    """Against the seed every combination of the other fields shares each x: each line's marks are offset by their
    own number of pixels (xOffset, no scale), the same for its point, error bar and ticks, and distinct across lines."""
    sel, others = charts.sweep_frame(seed_sweep, "var_g", seed_sweep["x"].max(), "seed", ("seed", "lr.c"))
    spec = charts.sweep_chart(sel, "seed", others, "var_g", log_y=True).to_dict()
    bars = [layer for layer in layers(spec) if mark_type(layer) == "rule"]
    assert bars and bars[0]["encoding"]["y"]["field"] == "lo" and bars[0]["encoding"]["y2"]["field"] == "hi"
    for layer in layers(spec):
        assert layer["encoding"]["xOffset"] == {"field": "dodge", "type": "quantitative", "scale": None}
    data = pd.DataFrame(rows(spec, bars[0]))
    per_line = data.groupby("line")["dodge"].nunique()
    assert (per_line == 1).all()  # one offset per line, at every x
    for _, at_x in data.groupby("axis"):
        assert at_x["line"].nunique() > 1 and at_x["dodge"].nunique() == at_x["line"].nunique()
    assert data["dodge"].max() - data["dodge"].min() <= charts.DODGE_SPAN_PX


def test_nonnegativity_comes_from_the_quantity_table(mlp):
    """The MLP's table declares the distorted-accuracy gap signed and its losses and variances ≥ 0; a linear chart
    starts at 0 only for the latter; a name the table does not list is not assumed ≥ 0."""
    cfg, sim = mlp
    table = api.quantity_table(cfg)
    declared = {q.name: q.nonnegative for q in table}
    assert declared["gap_distorted"] is False and all(declared[q] for q in ("var_g", "loss_train", "error_val",
                                                                            "noise_one_step", "b_simple"))
    assert all(q.to_json()["nonnegative"] == q.nonnegative for q in table)
    assert not charts.is_nonnegative("var_not_listed", table)
    for quantity, starts_at_zero in (("loss_train", True), ("gap_distorted", False)):
        df = charts.curves_frame(sim["x"], cfg.batch_sizes, None, sim["curves"], quantity, sim["finite_count"], "epoch")
        spec = charts.time_chart(df, quantity, log=False, x_name="epoch",
                                 nonnegative=charts.is_nonnegative(quantity, table)).to_dict()
        area = next(layer for layer in layers(spec) if mark_type(layer) == "area")
        assert (area["encoding"]["y"]["scale"].get("domainMin") == 0) is starts_at_zero, quantity


def test_the_band_comes_from_the_quantity_table(linreg):
    """Quantity.band decides whether a time chart shades the estimate's band: every quantity of linear regression's
    table has an SE and declares its band (a further estimator, var_g_rb, follows var_g); a table that turns the
    loss's band off gets a loss chart with no area layer, no "shaded" key and no band in the caption, while var_g
    keeps its band. The JSON of a quantity carries the flag."""
    from dataclasses import replace

    cfg, th, sim = linreg
    table = api.quantity_table(cfg)
    assert all(q.band and q.to_json()["band"] is True for q in table)
    assert charts.draws_band("var_g_rb", table) and charts.draws_band("not_listed", table)
    no_loss_band = [replace(q, band=False) if q.name == "loss" else q for q in table]
    assert [q.to_json()["band"] for q in no_loss_band] == [q.name != "loss" for q in table]
    for quantity in ("var_g", "loss"):
        shade = charts.draws_band(quantity, no_loss_band)
        assert shade is (quantity != "loss")
        df = charts.curves_frame(th["t"], cfg.batch_sizes, th["curves"], sim["curves"], quantity, sim["finite_count"])
        spec = charts.time_chart(df, quantity, log=quantity != "loss", shade=shade).to_dict()
        areas = [layer for layer in layers(spec) if mark_type(layer) == "area"]
        assert bool(areas) is shade, quantity
        keys = [k for layer in layers(spec) for k in
                (((layer.get("encoding") or {}).get("strokeDash") or {}).get("scale") or {}).get("domain", [])]
        assert any("replica estimate" in k for k in keys) and any("shaded" in k for k in keys) is shade
        caption = charts.drawn_caption(charts.drawn_summary(df), True, shade=shade)
        assert ("with its band" in caption) is shade, caption


def test_exact_values_drawn_only_as_points_are_keyed_as_a_dot(linreg):
    """Deep linear, Figure 3 before a run: the exact values are dots only (t = 0), so the key shows a filled dot for
    exact and no exact stroke; where the exact value is a line (linear regression) the key keeps its stroke."""
    cfg = parse_config({"setting": "deep_linear", "preset": "paper (Figure 3)"})
    th = api.theory(cfg)
    spec = charts.time_chart(charts.curves_frame(th["t"], cfg.batch_sizes, th["curves"], None, "var_g"),
                             "var(g_t | F_0)").to_dict()
    assert not [layer for layer in layers(spec) if mark_type(layer) == "line"]
    dot = next(layer for layer in layers(spec) if mark_type(layer) == "point" and source_filter(layer) == "exact")
    shape = dot["encoding"]["shape"]
    assert shape["scale"] == {"domain": ["exact"], "range": ["circle"]} and dot["mark"]["filled"] is True
    assert shape["legend"]["orient"] == "top"
    _, lspec = linreg_chart(linreg)
    ex_line = next(layer for layer in layers(lspec) if mark_type(layer) == "line" and source_filter(layer) == "exact")
    assert "exact" in ex_line["encoding"]["strokeDash"]["scale"]["domain"]
    assert all("shape" not in layer["encoding"] for layer in layers(lspec))


def test_b_chart_names_b_equals_n_when_its_zero_is_left_off_the_log_axis(linreg):
    cfg, th, sim = linreg
    all_b = api.theory_all_b(cfg)
    t = 4
    est = pd.DataFrame({"b": cfg.batch_sizes, **{k: sim["curves"]["var_g"][k][:, t] for k in ("value", "lo", "hi",
                                                                                               "se")}})
    spec = charts.b_chart(all_b["b"], all_b["curves"]["var_g"][:, t], t, est, b_max=cfg.n).to_dict()
    (note,) = spec["title"]["subtitle"]
    assert f"b = n = {cfg.n} is 0" in note and "not drawn on the log axis" in note
    loss = charts.b_chart(all_b["b"], all_b["curves"]["loss"][:, t], t, None, b_max=cfg.n, title="E L").to_dict()
    assert "subtitle" not in loss["title"]  # the loss at b = n is positive: nothing left off, nothing said


def test_split_chart_epoch_ticks_of_a_tiny_run_are_distinct_whole_numbers(mlp):
    cfg, sim = mlp
    for last in (1, 2):  # a run of one epoch (x = 0, 1) and of two
        x = sim["epoch"][:last + 1]
        curves = {q: {k: np.asarray(v)[:, :last + 1] for k, v in c.items()} for q, c in sim["curves"].items()
                  if q in charts.SPLIT_TERMS.values()}
        spec = charts.split_chart(x, "epoch", cfg.batch_sizes, curves, sim["band"]).to_dict()
        for layer in layers(spec):
            axis = layer["encoding"]["x"]["axis"]
            assert axis["values"] == list(range(last + 1)) and axis["format"] == "d"


def test_before_a_run_the_x_axis_spans_the_runs_steps():
    """Deep linear, Figure 3 preset before a run: exact values only at t = 0 (t = 1 is off its record grid), yet the
    x axis of every layer spans the run's steps t = 0..T, not t = 0 alone."""
    cfg = parse_config({"setting": "deep_linear", "preset": "paper (Figure 3)"})
    th = api.theory(cfg)
    df = charts.curves_frame(th["t"], api.curve_keys(cfg), th["curves"], None, "var_g")
    assert set(df.loc[np.isfinite(df["value"].to_numpy(dtype=float)), "t"]) == {0}
    for log in (True, False):
        spec = charts.time_chart(df, "var(g_t | F_0)", log=log).to_dict()
        xs = [layer["encoding"]["x"] for layer in layers(spec) if "x" in layer.get("encoding", {})]
        assert xs and all(x["scale"]["domain"] == [0, cfg.steps] for x in xs), xs


def test_split_and_b_simple_charts_shade_only_what_the_table_declares(mlp):
    """split_chart and b_simple_chart read Quantity.band from the setting's table (charts.draws_band): with the
    declared table (today: every band on) the bands are drawn and the title says "shaded"; with b_simple's band
    turned off the B_simple chart has no area layer and no "shaded" wording; with every split term's band off the
    split chart has none either; with one term off only the others are shaded (named in the title)."""
    from dataclasses import replace

    cfg, sim = mlp
    table = api.quantity_table(cfg)
    off = lambda names: [replace(q, band=False) if q.name in names else q for q in table]  # noqa: E731
    args = (sim["epoch"], "epoch", cfg.batch_sizes)
    areas = lambda spec: [ly for ly in layers(spec) if mark_type(ly) == "area"]  # noqa: E731

    on = charts.b_simple_chart(*args, sim["curves"]["b_simple"], table=table).to_dict()
    assert areas(on) and "shaded" in json.dumps(on["title"])
    assert on == charts.b_simple_chart(*args, sim["curves"]["b_simple"]).to_dict()  # the default: today's chart
    no = charts.b_simple_chart(*args, sim["curves"]["b_simple"], table=off({"b_simple"})).to_dict()
    assert not areas(no) and "shaded" not in json.dumps(no["title"])

    terms = set(charts.SPLIT_TERMS.values())
    on = charts.split_chart(*args, sim["curves"], table=table).to_dict()
    assert areas(on) and "shaded" in json.dumps(on["title"])
    no = charts.split_chart(*args, sim["curves"], table=off(terms)).to_dict()
    assert not areas(no) and "shaded" not in json.dumps(no["title"])
    some = charts.split_chart(*args, sim["curves"], table=off({"noise_spread"})).to_dict()
    assert len(areas(some)) == 1 and "shaded: 95 %, total var(g), one-step noise" in json.dumps(some["title"])


def test_the_spread_over_inits_gets_the_lines_se_bars(mlp):
    """With several initial weights the band is their min–max, not the line's uncertainty: the result says so
    (band_is_interval) and the chart then draws, at each marker, value ± 1.96 SE from the frame's se column; with
    one initial weight (or linear regression) the band is the interval and no bars are drawn."""
    cfg, sim = mlp
    assert sim["band_is_interval"] is False and "min–max" in sim["band"]
    df = charts.curves_frame(sim["x"], cfg.batch_sizes, None, sim["curves"], "var_g", sim["finite_count"], "epoch")
    spec = charts.time_chart(df, "var(g)", x_name="epoch", band=sim["band"], error_bars=True).to_dict()
    rules = [layer for layer in layers(spec) if mark_type(layer) == "rule"]
    assert len(rules) == 1
    calc = {t["as"]: t["calculate"] for t in rules[0]["transform"] if "calculate" in t}
    assert calc["err_hi"] == "datum.value + 1.96 * datum.se" and "datum.value - 1.96 * datum.se" in calc["err_lo"]
    assert rules[0]["encoding"]["y"]["field"] == "err_lo" and rules[0]["encoding"]["y2"]["field"] == "err_hi"
    assert df.loc[df["source"] == "estimate", "se"].notna().any()
    assert "95 % interval (± 1.96 SE" in charts.drawn_caption(charts.drawn_summary(df), True, sim["band"], True, True)
    linear = charts.time_chart(df, "var(g)", log=False, x_name="epoch", band=sim["band"], error_bars=True).to_dict()
    bars = next(layer for layer in layers(linear) if mark_type(layer) == "rule")
    assert {t["as"]: t["calculate"] for t in bars["transform"] if "calculate" in t}["err_lo"] == \
        "datum.value - 1.96 * datum.se"  # a linear axis: the whole interval, negative values too
    plain = charts.time_chart(df, "var(g)", x_name="epoch", band=sim["band"]).to_dict()
    assert not [layer for layer in layers(plain) if mark_type(layer) == "rule"]
    one = api.simulate(cfg.replace(inits=1))
    assert one["band_is_interval"] is True

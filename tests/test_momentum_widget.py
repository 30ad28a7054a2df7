"""The shared optimizer widget (ui/optimizer.py) under Streamlit's AppTest: on the linear-regression page the exact
curves and polynomial follow β live (and come back with β = 0), a bad value is one red line naming the field, a link
carries the field both ways, and every setting page offers what its setting runs (asked of the setting)."""

from __future__ import annotations

import json

import pytest
from test_app import by_label, open_link, open_page, shown

from backend import api, settings

SHORT = {"steps": "12"}  # a short run keeps each rerun's exact theory (every b in [1, n]) quick


def _query(at, key: str):
    """A query parameter of the page's URL, read back as JSON."""
    value = at.query_params[key]
    return json.loads(value[0] if isinstance(value, list) else value)


def _charts(at) -> list[str]:
    return [c.proto.spec for c in at.get("vega_lite_chart")]


def test_exact_curves_follow_momentum_live_and_plain_is_todays_page():
    at = open_link("pages/linear_regression.py", SHORT)
    charts0, poly0 = _charts(at), at.latex[0].value
    assert "optimizer" not in at.query_params  # plain SGD: today's link
    by_label(at.sidebar.text_input, "Momentum β").set_value("0.9").run()
    assert not at.exception and not at.error
    cfg = at.session_state["last_config_linear_regression"]
    assert cfg["optimizer"] == {"name": "sgd", "momentum": "9/10", "nesterov": False, "weight_decay": "0"}
    assert _query(at, "optimizer")["momentum"] == "9/10"
    charts1 = _charts(at)
    assert charts1[0] != charts0[0] and at.latex[0].value != poly0  # var(g_t) against t and its polynomial moved
    by_label(at.sidebar.checkbox, "Nesterov").check().run()
    assert not at.error and _charts(at)[0] not in (charts0[0], charts1[0])
    by_label(at.sidebar.checkbox, "Nesterov").uncheck().run()
    by_label(at.sidebar.text_input, "Momentum β").set_value("0").run()
    assert _charts(at)[0] == charts0[0] and at.latex[0].value == poly0 and "optimizer" not in at.query_params


def test_a_bad_value_is_one_red_line_naming_the_field():
    at = open_link("pages/linear_regression.py", SHORT)
    for label, value, field in (("Momentum β", "1.5", "optimizer.momentum"), ("Momentum β", "abc", "optimizer.momentum"),
                                ("Weight decay λ", "-1", "optimizer.weight_decay")):
        by_label(at.sidebar.text_input, label).set_value(value).run()
        assert not at.exception and len(at.error) == 1, value
        assert field in shown(at.error[0]) and "\n" not in at.error[0].value
        by_label(at.sidebar.text_input, label).set_value("0").run()
        assert not at.error
    by_label(at.sidebar.checkbox, "Nesterov").check().run()  # Nesterov with β = 0
    assert len(at.error) == 1 and "optimizer.nesterov" in shown(at.error[0])


def test_a_link_carries_the_optimizer_both_ways():
    opt = {"name": "sgd", "momentum": "1/2", "nesterov": True, "weight_decay": "1/10"}
    at = open_link("pages/linear_regression.py", {"optimizer": json.dumps(opt), **SHORT})
    assert by_label(at.sidebar.text_input, "Momentum β").value == "1/2"
    assert by_label(at.sidebar.text_input, "Weight decay λ").value == "1/10"
    assert by_label(at.sidebar.checkbox, "Nesterov").value is True
    assert _query(at, "optimizer") == opt and not at.warning


@pytest.mark.parametrize("setting", [name for name in settings.SETTINGS if name != "linear_regression"])
def test_every_page_offers_what_its_setting_runs(setting):
    """Every setting of the registry (linear regression's page has its own test above): the widget's names are the
    setting's own answer (its parse); with the SGD family a momentum reaches the page's config; with plain SGD only
    the page says so and leaves the field out."""
    names = api.optimizer_names(setting)
    at = open_page(f"pages/{setting}.py")
    if not names:
        assert not [s for s in at.sidebar.selectbox if s.label == "Optimizer"]
        assert "optimizer" not in at.session_state[f"last_config_{setting}"]
        return
    assert by_label(at.sidebar.selectbox, "Optimizer").options == _labels(names)
    if "sgd" in names:
        if by_label(at.sidebar.selectbox, "Optimizer").value != "sgd":  # a default of the Adam family
            by_label(at.sidebar.selectbox, "Optimizer").set_value("sgd").run()
        by_label(at.sidebar.text_input, "Momentum β").set_value("1/2").run()
        assert not at.exception and not at.error
        assert at.session_state[f"last_config_{setting}"]["optimizer"]["momentum"] in ("1/2", 0.5)


def _labels(names):
    return [api.OPTIMIZERS[n].label for n in names]


def test_the_adam_rows_start_from_the_config_and_reach_it():
    """The Adam(W) rows of backend/optim.py's FAMILIES: the sequence page's old-form AdamW fields (beta1, beta2, eps)
    start the β₁, β₂, ε boxes; edited, they reach the config (AdamW kept in its old-form fields there: one config,
    one cache key) beside the page's lr, warm-up, clip; Adam takes the named form; a β₁ out of [0, 1) is one red
    line naming optimizer.betas[0]."""
    at = open_page("pages/sequence.py")
    d = api.defaults("sequence")["optimizer"]
    assert by_label(at.sidebar.selectbox, "Optimizer").value == "adamw"
    assert [by_label(at.sidebar.text_input, lab).value for lab in ("β₁", "β₂", "ε")] == \
        [str(d["beta1"]), str(d["beta2"]), str(d["eps"])]
    by_label(at.sidebar.text_input, "β₁").set_value("4/5").run()
    assert not at.exception and not at.error
    opt = at.session_state["last_config_sequence"]["optimizer"]
    assert (opt["beta1"], opt["beta2"], opt["eps"]) == (0.8, d["beta2"], d["eps"]) and "name" not in opt
    assert {"lr", "warmup", "clip"} <= set(opt)
    by_label(at.sidebar.selectbox, "Optimizer").set_value("adam").run()
    assert not at.exception and not at.error
    opt = at.session_state["last_config_sequence"]["optimizer"]
    assert opt["name"] == "adam" and opt["betas"] == ["4/5", "999/1000"] and {"lr", "warmup", "clip"} <= set(opt)
    by_label(at.sidebar.text_input, "β₁").set_value("1").run()
    assert len(at.error) == 1 and "optimizer.betas[0]" in shown(at.error[0]) and "\n" not in at.error[0].value

"""One home per quantity (backend/quantities.py): every setting's table is made of Quantity declarations, the engines
report by it, its further estimators exist in the results, and the classifiers' summary over inits follows it."""

import tempfile

import numpy as np
import pytest

from backend import core, quantities, settings
from backend.cache import ResultCache
from backend.config import parse_config
from backend.engine import linreg as engine_linreg
from backend.engine import mlp as engine_mlp
from backend.engine import torch_model as engine_torch


@pytest.mark.parametrize("name", list(settings.SETTINGS))
def test_every_table_declares_its_quantities_once(name):
    table = core.quantity_table(parse_config({"setting": name}))
    assert table and all(isinstance(q, quantities.Quantity) for q in table)
    names = [q.name for q in table]
    assert len(set(names)) == len(names)
    assert all(q.summary in ("mean", "median") and q.x in ("t", "epoch") for q in table)
    json = [q.to_json() for q in table]
    assert all({"name", "label", "latex", "x", "log", "band", "tab", "estimators"} <= set(j) for j in json)


def test_the_classifier_engines_report_the_table():
    names = [q.name for q in quantities.EPOCH_QUANTITIES]
    assert list(engine_mlp.ESTIMATED) == names
    assert list(engine_torch.ESTIMATED) == [n for n in names if n != "gap_distorted"]
    q = quantities.find(list(quantities.EPOCH_QUANTITIES), "var_g")
    steps = q.over("t")
    assert steps.x == "t" and steps.latex == r"\operatorname{var}(g_t \mid \mathcal F_0)" and steps.log


@pytest.mark.parametrize("raw", [
    {"setting": "linear_regression", "steps": 4, "replicas": 40, "batch_sizes": [2], "sampler": "with_replacement"},
    {"setting": "deep_linear", "dims": [3, 4, 5, 2], "steps": 3, "replicas": 40, "batch_sizes": [2]}])
def test_the_step_engines_report_their_setting_table(raw):
    """Linear regression's and the deep linear network's engines name their curves by the declarations of
    backend/quantities.py that the settings' tables list: a run's curves are the table's quantities and their
    further estimators, and besides them only the spread of ∇L(w_t) (declared there; deep linear: in total and per
    layer, undrawn)."""
    config = parse_config(raw)
    table = core.quantity_table(config)
    res = core.simulate(config, cache=ResultCache(tempfile.mkdtemp()))
    listed = set(quantities.estimated_by(table))
    assert listed <= set(res["curves"])
    extra = set(res["curves"]) - listed
    full = quantities.VAR_FULL_GRAD
    if raw["setting"] == "deep_linear":
        assert extra == {full, *(quantities.per_layer(full, k) for k in (1, 2, 3))}
        assert [q.name for q in table] == ["var_g_layer1", "var_g_layer2", "var_g_layer3", "var_g", "loss"]
    else:
        assert not extra and [q.name for q in table] == [q.name for q in quantities.STEP_QUANTITIES]
        assert sorted(engine_linreg.REPORTED) == sorted(q.name for q in table)


@pytest.mark.parametrize("raw", [
    {"setting": "linear_regression", "steps": 4, "replicas": 40, "batch_sizes": [2], "sampler": "with_replacement"},
    {"setting": "deep_linear", "steps": 3, "replicas": 40, "batch_sizes": [2]}])
def test_declared_estimators_are_in_the_results_and_labelled(raw):
    config = parse_config(raw)
    table = core.quantity_table(config)
    res = core.simulate(config, cache=ResultCache(tempfile.mkdtemp()))
    declared = [name for q in table for name, _ in q.estimators]
    assert declared and all(name in res["curves"] for name in declared)
    labels = quantities.labels(table)
    for q in table:
        for name, what in q.estimators:
            assert labels[name] == f"{q.label}, {what}" and quantities.find(table, name) is q
    rb = [name for name in res["curves"] if "_rb" in name]  # every Rao–Blackwellised curve a run gives is declared
    assert sorted(rb) == sorted(declared)
    doc = settings.for_config(config).simulate_document(config, res)  # the CLI's document carries each, with its SE
    entry = doc["curves"][str(config.batch_sizes[0])]
    assert all(name in entry and f"{name}_se" in entry for name in declared)


def test_the_summary_over_inits_follows_the_table():
    config = parse_config({"setting": "mlp", "dataset": {"name": "digits", "train_size": 200}, "hidden": [8],
                           "inits": 3, "replicas": 4, "epochs": 1, "eval_size": 100, "noise_samples": 32})
    res = core.simulate(config, cache=ResultCache(tempfile.mkdtemp()))
    checked = set()
    for q in core.quantity_table(config):
        c = res["curves"][q.name]
        v = c["per_init"][0]  # (x, K) at the first b
        ok = np.isfinite(v).all(axis=1)
        if not ok.any():
            continue
        want = (np.median if q.summary == "median" else np.mean)(v[ok], axis=1)
        np.testing.assert_allclose(c["value"][0][ok], want, rtol=1e-12, err_msg=q.name)
        checked.add(q.summary)
    assert checked == {"mean", "median"}

"""The batch-size advisor (docs/theory.md §7): exact for linear regression, checked against the moment recursion run
step by step with the scaled schedule, against enumeration of every batch sequence in exact rationals, against
replicas, and through the CLI."""

import json
import os
import subprocess
import sys
from fractions import Fraction

import numpy as np
import pytest
from bruteforce import enumerate_moments
from conftest import ROOT, TINY_W0, TINY_X, TINY_Y, tiny_config_json

from backend import advisor, api
from backend.cache import ResultCache
from backend.config import parse_config
from backend.settings import linear_regression as lr
from backend.theory import linreg as th


@pytest.mark.parametrize("scaling", ["none", "sqrt", "linear"])
def test_advisor_equals_the_recursion_with_the_scaled_schedule(scaling):
    cfg = parse_config({"batch_sizes": [4, 32, 100, 500], "lr": {"schedule": "inverse", "c": "1/4"}})
    res = advisor.advise(cfg, 2000, scaling, b_ref=16)
    prob, w0 = lr._problem(cfg), lr._w0(cfg)
    k = {"none": 0, "sqrt": 0.5, "linear": 1}[scaling]
    for b in cfg.batch_sizes:
        T, c_b = 2000 // b, 0.25 * (b / 16) ** k
        row = res["curves"][str(b)]
        assert row["steps"] == T and row["lr_c"] == pytest.approx(c_b, rel=1e-15)
        ref = th.moment_curves(prob, w0, [c_b / (t + 1) for t in range(T)], th.noise_factor(np.array([b]), cfg.n))
        for q in ("loss", "var_full_grad", "var_g"):
            want = ref[q][0, T]
            if want == 0:
                assert row[q] == pytest.approx(0, abs=1e-15)
            else:
                assert row[q] == pytest.approx(want, rel=1e-10), (b, q)
    finite = {int(b): r["loss"] for b, r in res["curves"].items() if not r["diverged"]}
    assert res["best_b"] == min(finite, key=finite.get)


def test_advisor_equals_enumeration_in_exact_rationals():
    """n = 5, every sequence of mini-batches enumerated in exact arithmetic (tests/bruteforce.py, no shared code)."""
    cfg = parse_config(tiny_config_json(batch_sizes=[2, 3], lr={"schedule": "inverse", "c": "1/4"}))
    for scaling in ("none", "linear"):
        res = advisor.advise(cfg, 6, scaling, b_ref=2)
        for b in (2, 3):
            T = 6 // b
            c_b = Fraction(1, 4) * (Fraction(b, 2) if scaling == "linear" else 1)
            ref = enumerate_moments(TINY_X, TINY_Y, TINY_W0, [c_b / (t + 1) for t in range(T)], b, T)
            row = res["curves"][str(b)]
            for q, key in (("loss", "loss"), ("var_full_grad", "var_full_grad"), ("var_g", "var_g")):
                assert row[q] == pytest.approx(float(ref[key]), rel=1e-12, abs=1e-15), (scaling, b, q)


def test_steps_to_target_is_the_first_crossing_and_the_frontier_is_fitted():
    cfg = parse_config({"batch_sizes": [2, 8, 32, 128], "lr": {"schedule": "constant", "c": "0.02"}})
    prob, w0 = lr._problem(cfg), lr._w0(cfg)
    target = 0.0045
    res = advisor.advise(cfg, 20000, "none", target_loss=target)
    reached = 0
    for b in cfg.batch_sizes:
        S = res["steps_to_target"][str(b)]
        horizon = res["target_search_steps"][str(b)]
        curve = th.moment_curves(prob, w0, [0.02] * horizon, th.noise_factor(np.array([b]), cfg.n))["loss"][0]
        if S is None:
            assert np.all(curve > target)
            continue
        reached += 1
        assert curve[S] <= target and np.all(curve[:S] > target), b  # the first crossing, both sides checked
        assert res["examples_to_target"][str(b)] == b * S
    assert reached >= 2 and res["frontier"] is not None and res["frontier"]["S_min"] > 0


def test_frontier_fit_recovers_the_model():
    """Points on (S/S_min − 1)(E/E_min − 1) = 1 give back S_min, E_min and B_crit = E_min / S_min."""
    b = np.array([1, 2, 4, 8, 16, 64, 256, 1024])
    S = 300.0 * (1 + 40.0 / b)
    fit = advisor.fit_frontier(b, S)
    assert fit["S_min"] == pytest.approx(300, rel=1e-12) and fit["E_min"] == pytest.approx(12000, rel=1e-12)
    assert fit["B_crit"] == pytest.approx(40, rel=1e-12) and fit["relative_rms"] < 1e-12
    E = b * S
    assert np.allclose((S / fit["S_min"] - 1) * (E / fit["E_min"] - 1), 1)
    assert advisor.fit_frontier(np.array([4, 4]), np.array([10, 11])) is None


def _noise_ratios(X, y, w):
    """(B_simple, B_noise) at one w from the per-sample gradients themselves (population Σ, H = XᵀX/n)."""
    grads = X * (X @ w - y)[:, None]
    G = grads.mean(axis=0)
    S = (grads - G).T @ (grads - G) / len(y)
    H = X.T @ X / len(y)
    return np.trace(S) / (G @ G), np.trace(H @ S) / (G @ H @ G)


def test_noise_scales_at_t0_are_the_per_sample_gradient_ratios():
    """B_simple(w0) = tr Σ / ‖∇L‖² and B_noise(w0) = tr(HΣ) / ∇LᵀH∇L, Graduate Admission with the issue's w0
    (2.77 and 2.06, #26): the old key's values are under b_simple now."""
    w0 = np.linspace(-0.5, 0.5, 8)
    cfg = parse_config({"batch_sizes": [4, 64], "w0": w0.tolist()})
    res = advisor.advise(cfg, 640)
    want_simple, want_noise = _noise_ratios(np.asarray(cfg.X, float), np.asarray(cfg.y, float), w0)
    assert round(want_simple, 2) == 2.77 and round(want_noise, 2) == 2.06
    for b in ("4", "64"):
        assert res["b_simple"]["t"][0] == 0 and res["b_noise"]["t"][0] == 0
        assert res["b_simple"]["curves"][b][0] == pytest.approx(want_simple, rel=1e-10)
        assert res["b_noise"]["curves"][b][0] == pytest.approx(want_noise, rel=1e-10)


def test_noise_scales_along_t_equal_enumeration():
    """At t > 0 both are ratios of expectations over every equally likely w_t (tests/bruteforce.py, n = 5)."""
    from bruteforce import enumerate_states

    cfg = parse_config(tiny_config_json(batch_sizes=[2, 3], lr={"schedule": "inverse", "c": "1/4"}))
    res = advisor.advise(cfg, 6)
    X, y = np.array(TINY_X, dtype=float), np.array(TINY_Y, dtype=float)
    H = X.T @ X / len(y)
    for b in (2, 3):
        for i, t in enumerate(res["b_noise"]["t"]):
            if t > 6 // b:
                continue
            sums = np.zeros(4)
            states = enumerate_states(TINY_X, TINY_Y, TINY_W0, [Fraction(1, 4) / (s + 1) for s in range(t)], b, t)
            for w, _ in states:
                grads = X * (X @ np.array(w, dtype=float) - y)[:, None]
                G = grads.mean(axis=0)
                S = (grads - G).T @ (grads - G) / len(y)
                sums += [np.trace(S), G @ G, np.trace(H @ S), G @ H @ G]
            assert res["b_simple"]["curves"][str(b)][i] == pytest.approx(sums[0] / sums[1], rel=1e-10), (b, t)
            assert res["b_noise"]["curves"][str(b)][i] == pytest.approx(sums[2] / sums[3], rel=1e-10), (b, t)


def test_replicas_agree_with_the_advisors_exact_loss(tmp_path):
    cfg = parse_config({"batch_sizes": [16], "steps": 25, "replicas": 4000, "seed": 3, "device": "cpu",
                        "lr": {"schedule": "inverse", "c": "1/2"}})
    exact = advisor.advise(cfg, 400, "none")["curves"]["16"]
    sim = api.simulate(cfg, cache=ResultCache(tmp_path))
    est = sim["curves"]["loss"]
    z = (est["value"][0, 25] - exact["loss"]) / est["se"][0, 25]
    assert exact["steps"] == 25 and abs(z) <= 4, z


@pytest.mark.parametrize("args,option", [(["--budget", "1"], "budget"), (["--budget", "x"], "budget"),
                                         (["--budget", "100", "--scaling", "cube"], "scaling"),
                                         (["--budget", "100", "--b-ref", "0"], "b_ref"),
                                         (["--budget", "100", "--target-loss", "-1"], "target_loss")])
def test_cli_refuses_bad_options_in_one_line(tmp_path, args, option):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"batch_sizes": [2, 16]}))
    out = subprocess.run([sys.executable, "-m", "backend", "advise", str(path), *args], cwd=ROOT,
                         capture_output=True, text=True, env=os.environ.copy(), timeout=120)
    assert out.returncode == 2 and out.stderr.startswith(f"error: {option}:") and out.stderr.count("\n") == 1


def test_cli_advises_and_refuses_a_setting_without_exact_theory(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"batch_sizes": [4, 64]}))
    out = subprocess.run([sys.executable, "-m", "backend", "advise", str(path), "--budget", "6400",
                          "--scaling", "sqrt", "--target-loss", "0.006"], cwd=ROOT, capture_output=True, text=True,
                         env=os.environ.copy(), timeout=120)
    assert out.returncode == 0, out.stderr
    res = json.loads(out.stdout)
    assert res["exact"] and res["scaling"] == "sqrt" and res["b_ref"] == 4 and set(res["curves"]) == {"4", "64"}
    assert res["curves"]["64"]["lr_c"] == pytest.approx(0.5 * 4) and res["best_b"] in (4, 64)
    assert {"steps_to_target", "examples_to_target", "frontier", "b_simple", "b_noise"} <= set(res)


def test_a_replica_setting_is_advised_through_a_sweep_of_cached_runs(tmp_path, monkeypatch):
    """Deep linear network, tiny: each b's answer is exactly the end of ``simulate`` of that b's cell config (same
    cache), a second call recomputes nothing, the best b minimises the loss, and the CLI prints it with SEs."""
    monkeypatch.setenv("BATCHVAR_CACHE_DIR", str(tmp_path / "cache"))
    from backend.settings import deep_linear

    cfg = parse_config({"setting": "deep_linear", "batch_sizes": [2, 8, 32], "replicas": 400, "device": "cpu"})
    res = advisor.advise(cfg, 320, "sqrt")
    assert not res["exact"] and res["b_ref"] == 2
    for b in (2, 8, 32):
        row = res["curves"][str(b)]
        cell = deep_linear.advise_cell(cfg, b, 320, (b / 2) ** 0.5)
        assert row["config"] == cell.to_json() and row["steps"] == 320 // b
        assert cell.lr.c == pytest.approx(float(cfg.lr.c) * (b / 2) ** 0.5)
        sim = api.simulate(cell)
        assert sim["cached"]  # the advisor's run, served again
        assert row["loss"] == sim["curves"]["loss"]["value"][0, -1] and row["loss_se"] == sim["curves"]["loss"]["se"][0, -1]
        assert row["var_g"] == sim["curves"]["var_g"]["value"][0, -1] and row["var_g_se"] > 0
    again = advisor.advise(cfg, 320, "sqrt")
    assert all(r["cached"] for r in again["curves"].values())
    finite = {int(b): r["loss"] for b, r in res["curves"].items() if not r["diverged"]}
    assert res["best_b"] == min(finite, key=finite.get)
    path = tmp_path / "c.json"
    path.write_text(json.dumps(cfg.to_json()))
    out = subprocess.run([sys.executable, "-m", "backend", "advise", str(path), "--budget", "320", "--scaling", "sqrt"],
                         cwd=ROOT, capture_output=True, text=True, env=os.environ.copy(), timeout=300)
    assert out.returncode == 0, out.stderr
    cli = json.loads(out.stdout)
    assert cli["curves"]["8"]["loss"] == res["curves"]["8"]["loss"] and "loss_se" in cli["curves"]["8"]


def test_the_replica_check_of_the_exact_advice_agrees(tmp_path, monkeypatch):
    """Linear regression: the sweep of replica runs (the page's 'Replica check') agrees with the exact answer."""
    monkeypatch.setenv("BATCHVAR_CACHE_DIR", str(tmp_path))
    cfg = parse_config({"batch_sizes": [8, 32], "replicas": 3000, "seed": 5, "device": "cpu"})
    exact = advisor.advise_rules(cfg, 480, ("none", "sqrt"))
    check = advisor.sweep(cfg, 480, ("none", "sqrt"))
    for rule in ("none", "sqrt"):
        for b in ("8", "32"):
            est, want = check[rule]["curves"][b], exact[rule]["curves"][b]
            assert est["steps"] == want["steps"] and est["config"]["lr"]["c"] == pytest.approx(want["lr_c"])
            assert abs(est["loss"] - want["loss"]) <= 4 * est["loss_se"], (rule, b, est, want)


@pytest.mark.parametrize("scalings", [(), []])
def test_no_scaling_rule_is_a_clear_error(scalings):
    cfg = parse_config(tiny_config_json())
    with pytest.raises(api.ConfigError, match="scaling: expected a non-empty list of scaling rules"):
        advisor.advise_rules(cfg, 480, scalings)
    with pytest.raises(api.ConfigError, match="scaling"):
        advisor.sweep(cfg, 480, scalings)


def _with_schedule(setting):
    """The setting's default config with a two-segment batch_schedule in place of its batch sizes (None: the setting
    refuses a schedule when parsing: it trains in epochs)."""
    from backend import settings

    d = settings.get(setting).CONFIG.parse({"setting": setting})
    raw = {k: v for k, v in d.to_json().items() if k not in ("batch_sizes", "steps")}
    raw["batch_schedule"] = [[min(d.batch_sizes), 30], [max(d.batch_sizes), 20]]
    try:
        return parse_config(raw)
    except api.ConfigError as e:
        assert e.field == "batch_schedule" and "give batch_sizes" in e.message, e
        return None


@pytest.mark.parametrize("setting", sorted(__import__("backend.settings", fromlist=["SETTINGS"]).SETTINGS))
def test_every_setting_refuses_a_batch_schedule_in_the_advisor_in_one_line(setting):
    """The advisor's b axis replaces a batch-size schedule: every entry point (exact, replica sweep, plan, cells,
    momentum axis) refuses a config carrying one, for every setting of the registry, in the same one line naming
    batch_schedule (the epoch settings cannot carry one: their parse refuses it)."""
    cfg = _with_schedule(setting)
    if cfg is None:
        return
    budget = 10 * max(cfg.batch_sizes)
    calls = {"advise": lambda: advisor.advise(cfg, budget), "advise_rules": lambda: advisor.advise_rules(cfg, budget),
             "sweep": lambda: advisor.sweep(cfg, budget), "replica_plan": lambda: advisor.replica_plan(cfg, budget),
             "sweep_cells": lambda: advisor.sweep_cells(cfg, budget),
             "advise_momentum": lambda: advisor.advise_momentum(cfg, budget, [0, 0.5])}
    for name, call in calls.items():
        with pytest.raises(api.ConfigError) as err:
            call()
        assert err.value.field == "batch_schedule" and err.value.message == advisor.SCHEDULE_REFUSED, (name, err.value)
        assert "\n" not in str(err.value)


def test_the_cli_refuses_a_batch_schedule_in_one_line(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"setting": "deep_linear", "batch_schedule": [[2, 10], [8, 5]]}))
    out = subprocess.run([sys.executable, "-m", "backend", "advise", str(path), "--budget", "80"], cwd=ROOT,
                         capture_output=True, text=True, env=os.environ.copy(), timeout=120)
    assert out.returncode == 2 and out.stderr == f"error: batch_schedule: {advisor.SCHEDULE_REFUSED}\n", out.stderr


def test_the_replica_check_gives_z_where_both_converge_and_says_why_not_elsewhere():
    """compare_replicas on the exact advisor and its replica sweep: a (rule, b) whose exact loss diverges (the
    linear rule at large b) gets no z and says so; every other cell agrees within |z| ≤ 4."""
    config = api.parse_config({"setting": "linear_regression", "batch_sizes": [2, 8, 128], "replicas": 400,
                               "seed": 3, "device": "cpu"})
    budget, rules, b_ref = 2048, ("none", "linear"), 2
    exact = api.advise_rules(config, budget, rules, b_ref)
    assert exact["linear"]["curves"]["128"]["diverged"] and not exact["none"]["curves"]["128"]["diverged"]
    rows = api.compare_replicas(exact, api.sweep(config, budget, rules, b_ref))
    assert len(rows) == 6
    for row in rows:
        if exact[row["rule"]]["curves"][str(row["b"])]["diverged"]:
            assert row["z"] is None and row["note"] == "diverged (exact): no z"
        else:
            assert row["note"] == "agrees" and abs(row["z"]) <= 4, row
    assert sum(r["z"] is not None for r in rows) >= 4

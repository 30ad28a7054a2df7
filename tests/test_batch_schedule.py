"""Batch-size schedules (issue #26, docs/theory.md §12): ``batch_schedule`` = [[b1, steps1], …] in place of batch_sizes.

The exact curves against an independent reference — every batch sequence enumerated in rationals, segment after
segment (b_t at step t; plain SGD and torch.optim.SGD's momentum/Nesterov/weight decay written out); a one-segment
schedule bitwise equal to the constant-b curve (theory and replicas); replicas against the exact curve (|z| ≤ 4);
the refusals through the CLI (exit 2, one line naming batch_schedule); the advisor's schedule-against-constant-b
comparison against enumeration."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
from fractions import Fraction

import numpy as np
import pytest

from bruteforce import _grad, _loss
from conftest import ROOT, TINY_W0, TINY_X, TINY_Y, tiny_config_json

from backend import api
from backend.config import parse_config
from backend.errors import ConfigError

F = Fraction
ALPHAS = [F(1, 4), F(1, 8), F(1, 12), F(1, 16)]  # the tiny config's schedule: inverse, c = 1/4


def enumerate_schedule(X, y, w0, alphas, bs, momentum=F(0), nesterov=False, weight_decay=F(0),
                       sampler="without_replacement"):
    """var(g_t | F_0), var(∇L(w_t) | F_0), E L(w_t) for t = 0..T, T = len(bs) − 1, where step t draws its batch of
    size bs[t] (bs[T]: the gradient after the last update), every equally likely batch sequence enumerated; the
    update is torch.optim.SGD's (dampening 0). Exact rationals."""
    n = len(X)
    T = len(bs) - 1

    def batches(b):
        return (list(itertools.combinations(range(n), b)) if sampler == "without_replacement"
                else list(itertools.product(range(n), repeat=b)))

    full = list(range(n))
    out = {k: [] for k in ("var_g", "var_full_grad", "loss")}
    for t in range(T + 1):
        sg = sf = None
        sgg = sff = sl = F(0)
        count = 0
        for seq in itertools.product(*[batches(b) for b in bs[:t + 1]]):
            w, buf = list(w0), None
            for s in range(t):
                d = [gj + weight_decay * wj for gj, wj in zip(_grad(X, y, w, seq[s]), w)]
                buf = list(d) if buf is None else [momentum * bj + dj for bj, dj in zip(buf, d)]
                step = [dj + momentum * bj for dj, bj in zip(d, buf)] if nesterov else buf
                w = [wj - alphas[s] * sj for wj, sj in zip(w, step)]
            g, f = _grad(X, y, w, seq[t]), _grad(X, y, w, full)
            sg = g if sg is None else [a + c for a, c in zip(sg, g)]
            sf = f if sf is None else [a + c for a, c in zip(sf, f)]
            sgg += sum(v * v for v in g)
            sff += sum(v * v for v in f)
            sl += _loss(X, y, w)
            count += 1
        out["var_g"].append(sgg / count - sum((v / count) ** 2 for v in sg))
        out["var_full_grad"].append(sff / count - sum((v / count) ** 2 for v in sf))
        out["loss"].append(sl / count)
    return out


def schedule_config(schedule, **over):
    cfg = tiny_config_json(**over)
    del cfg["batch_sizes"]
    cfg.pop("steps")
    cfg["batch_schedule"] = schedule
    return cfg


def cli(cmd: str, cfg, tmp_path, *args, capsys=None):
    """The CLI on a config file: in this process through its own entry point (``capsys`` given: returns rc,
    stdout, stderr), else as ``python -m backend`` in a subprocess."""
    path = tmp_path / "config.json"
    path.write_text(cfg if isinstance(cfg, str) else json.dumps(cfg))
    if capsys is not None:
        from backend.__main__ import main

        capsys.readouterr()
        rc = main([cmd, str(path), *args])
        out = capsys.readouterr()
        return subprocess.CompletedProcess([cmd], rc, out.out, out.err)
    return subprocess.run([sys.executable, "-m", "backend", cmd, str(path), *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)


def per_step_b(schedule):
    bs = [b for b, s in schedule for _ in range(s)]
    return bs + [schedule[-1][0]]


# -- the exact curves -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("schedule,optimizer,sampler", [
    ([[1, 1], [3, 2]], None, "without_replacement"),
    ([[2, 2], [4, 1]], {"name": "sgd", "momentum": "1/2"}, "without_replacement"),
    ([[1, 1], [2, 1], [4, 1]], {"name": "sgd", "momentum": "3/5", "nesterov": True, "weight_decay": "1/7"},
     "without_replacement"),
    ([[1, 1], [2, 1]], {"name": "sgd", "weight_decay": "1/3"}, "with_replacement"),
])
def test_theory_against_enumeration(tmp_path, capsys, schedule, optimizer, sampler):
    """The CLI's theory of a schedule: one curve keyed "schedule", equal to the enumeration over every batch sequence
    with b_t at step t (the segments run one after another, each from the state the last one left)."""
    over = {"sampler": sampler} | ({"optimizer": optimizer} if optimizer else {})
    out = cli("theory", schedule_config(schedule, **over), tmp_path, capsys=capsys)
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert list(doc["curves"]) == ["schedule"]
    T = sum(s for _, s in schedule)
    assert doc["t"] == list(range(T + 1))
    o = optimizer or {}
    ref = enumerate_schedule(TINY_X, TINY_Y, TINY_W0, ALPHAS, per_step_b(schedule), F(o.get("momentum", 0)),
                             o.get("nesterov", False), F(o.get("weight_decay", 0)), sampler)
    for q in ("var_g", "var_full_grad", "loss"):
        np.testing.assert_allclose(doc["curves"]["schedule"][q], [float(v) for v in ref[q]], rtol=1e-11, atol=1e-14,
                                   err_msg=q)


def test_a_schedule_is_not_its_constant_b():
    """The schedule's curve differs from the constant-b curve of each of its b after the switch (the test above
    would pass for a broken switch only if the schedule's b did not matter)."""
    sched = api.theory(parse_config(schedule_config([[1, 1], [4, 2]])))["curves"]
    for b in (1, 4):
        const = api.theory(parse_config(tiny_config_json(batch_sizes=[b], steps=3)))["curves"]
        assert not np.allclose(sched["var_g"][0], const["var_g"][0])
    const1 = api.theory(parse_config(tiny_config_json(batch_sizes=[1], steps=3)))["curves"]
    # before the switch, b = 1's curve bitwise: g_0 and w_1 come from b = 1 (g_1 is drawn with b = 4)
    assert sched["var_g"][0, 0] == const1["var_g"][0, 0] and sched["var_g"][0, 1] != const1["var_g"][0, 1]
    for q in ("var_full_grad", "loss"):
        assert np.array_equal(sched[q][0, :2], const1[q][0, :2]), q


@pytest.mark.parametrize("optimizer", [None, {"name": "sgd", "momentum": "1/2", "nesterov": True}])
def test_one_segment_is_constant_b_bitwise(optimizer):
    over = {"optimizer": optimizer} if optimizer else {}
    sched = parse_config(schedule_config([[2, 3]], **over))
    const = parse_config(tiny_config_json(batch_sizes=[2], steps=3, **over))
    a, c = api.theory(sched)["curves"], api.theory(const)["curves"]
    for q in a:
        assert np.array_equal(a[q], c[q]), q
    sa, sc = api.simulate(sched.replace(replicas=200)), api.simulate(const.replace(replicas=200))
    for q in sa["curves"]:
        for stat in ("value", "se"):
            assert np.array_equal(sa["curves"][q][stat], sc["curves"][q][stat], equal_nan=True), (q, stat)


# -- replicas -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("schedule,optimizer", [
    ([[1, 2], [4, 3], [2, 2]], None),
    ([[1, 3], [3, 4]], {"name": "sgd", "momentum": "1/2"}),
])
def test_replicas_against_exact(tmp_path, capsys, schedule, optimizer):
    """The CLI's simulate of a schedule: one curve "schedule", every estimate within 4 SE of the exact value (the
    exact curve checked against enumeration above)."""
    cfg = schedule_config(schedule, replicas=4000, seed=3, **({"optimizer": optimizer} if optimizer else {}))
    out = cli("simulate", cfg, tmp_path, capsys=capsys)
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert list(doc["curves"]) == ["schedule"] and doc["batch_schedule"] == schedule
    exact = api.theory(parse_config(cfg))["curves"]
    for q in ("var_g", "var_full_grad", "loss", "var_g_rb"):
        est, se = np.array(doc["curves"]["schedule"][q]), np.array(doc["curves"]["schedule"][f"{q}_se"])
        ex = exact["var_g" if q == "var_g_rb" else q][0]
        live = se > 1e-9 * np.abs(ex).max()  # var(∇L(w_0)) = 0: its SE is rounding
        z = (est[live] - ex[live]) / se[live]
        assert live.sum() >= len(est) - 1 and np.all(np.abs(z) <= 4), (q, z)
    assert doc["flags"]["var_g"] == [] or all(p["b"] == "schedule" for p in doc["flags"]["var_g"])


def test_cache_key_holds_the_schedule():
    a = parse_config(schedule_config([[1, 1], [3, 2]]))
    b = parse_config(schedule_config([[3, 1], [1, 2]]))
    assert a.to_json()["batch_schedule"] == [[1, 1], [3, 2]] and "batch_sizes" not in a.to_json()
    assert api.simulation_key(a, api.resolve_device("cpu")) != api.simulation_key(b, api.resolve_device("cpu"))
    assert parse_config(a.to_json()) == a  # the normalised form reloads (steps = Σ steps_i)


# -- bad input ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("over,needle", [
    ({"batch_schedule": [[0, 2]]}, "batch_schedule[0][0]"),
    ({"batch_schedule": [[6, 2]]}, "batch_schedule"),
    ({"batch_schedule": [[2, 0]]}, "batch_schedule[0][1]"),
    ({"batch_schedule": [[2, -1]]}, "batch_schedule[0][1]"),
    ({"batch_schedule": []}, "batch_schedule"),
    ({"batch_schedule": [[2]]}, "batch_schedule"),
    ({"batch_schedule": "2:3"}, "batch_schedule"),
    ({"batch_schedule": [[2, 3]], "batch_sizes": [2]}, "batch_schedule"),
    ({"batch_schedule": [[2, 3]], "steps": 4}, "batch_schedule"),
])
def test_bad_schedules_exit_2(tmp_path, capsys, over, needle):
    cfg = {k: v for k, v in tiny_config_json().items() if k not in ("batch_sizes", "steps")} | over
    for cmd in ("theory", "simulate"):
        out = cli(cmd, cfg, tmp_path, capsys=capsys)
        assert out.returncode == 2, out.stdout
        assert "Traceback" not in out.stderr and out.stderr.strip().count("\n") == 0, out.stderr
        assert out.stderr.startswith(f"error: {needle}"), out.stderr


def test_schedule_agreeing_steps_is_accepted():
    cfg = schedule_config([[2, 1], [3, 2]]) | {"steps": 3}
    assert parse_config(cfg).steps == 3


def test_bad_schedule_in_a_subprocess(tmp_path):
    """``python -m backend`` itself: exit 2, one line naming the field, no traceback."""
    out = cli("theory", schedule_config([[9, 2]]), tmp_path)
    assert out.returncode == 2 and out.stderr.startswith("error: batch_schedule") and out.stderr.count("\n") == 1


def test_views_over_constant_b_refuse_a_schedule(tmp_path, capsys):
    cfg = schedule_config([[2, 1], [3, 2]])
    for args in (("check",), ("polynomial", "--t", "2")):
        out = cli(args[0], cfg, tmp_path, *args[1:], capsys=capsys)
        assert out.returncode == 2 and out.stderr.startswith("error: batch_schedule"), out.stderr


def test_page_text_parses():
    assert api.parse_batch_schedule_text("8:100, 32: 200") == [[8, 100], [32, 200]]
    for bad in ("8", "8:x", "8:1:2", ""):
        with pytest.raises(ConfigError) as e:
            api.parse_batch_schedule_text(bad)
        assert e.value.field == "batch_schedule"


# -- the advisor's comparison ---------------------------------------------------------------------------------

def test_advisor_comparison_against_enumeration():
    """Warm-up 1 → 3 against constant b = 1, 2, 3 at the schedule's budget N = 1·1 + 3·1 = 4 samples (T_b = ⌊N/b⌋:
    4, 2, 1 steps): every final E L against the enumeration over every batch sequence, the best b and the verdict
    from those enumerated values."""
    config = parse_config(tiny_config_json())
    out = api.compare_schedule(config, [[1, 1], [3, 1]], [1, 2, 3])
    assert out["budget"] == 4 and out["steps"] == 2 and out["exact"]

    def final_loss(bs):
        return float(enumerate_schedule(TINY_X, TINY_Y, TINY_W0, ALPHAS, bs)["loss"][-1])

    ref_sched = final_loss([1, 3, 3])
    ref = {b: final_loss([b] * (4 // b) + [b]) for b in (1, 2, 3)}
    assert out["loss"] == pytest.approx(ref_sched, rel=1e-12)
    assert {b: r["steps"] for b, r in out["constant"].items()} == {"1": 4, "2": 2, "3": 1}
    for b, v in ref.items():
        assert out["constant"][str(b)]["loss"] == pytest.approx(v, rel=1e-12), b
    assert out["best_constant_b"] == min(ref, key=ref.get)
    assert out["schedule_better"] == (ref_sched < min(ref.values()))
    assert out["loss_path"][0] == pytest.approx(float(_loss(TINY_X, TINY_Y, TINY_W0)), rel=1e-14)


def test_advisor_comparison_refusals():
    config = parse_config(tiny_config_json())
    with pytest.raises(ConfigError) as e:
        api.compare_schedule(config, [[9, 1]])
    assert e.value.field == "batch_schedule"
    with pytest.raises(ConfigError) as e:
        api.compare_schedule(config, [[1, 1]], [2])  # b = 2 > the budget N = 1
    assert e.value.field == "batch_sizes"
    with pytest.raises(ConfigError) as e:
        api.compare_schedule(parse_config({"setting": "deep_linear", "steps": 2}), [[1, 1]])
    assert e.value.field == "setting"


# -- the deep linear network --------------------------------------------------------------------------------------

SCALAR = {"setting": "deep_linear", "dims": [1, 1, 1], "w0": [[["1/2"]], [["3/2"]]], "teacher": [[["1"]], [["2"]]],
          "lr": {"schedule": "inverse", "c": "1/20"}}


def scalar_monte_carlo(schedule, draws: int = 400_000, seed: int = 11):
    """An independent reference for the scalar network W2 W1 with teacher τ = T2 T1 on online Gaussian samples: the
    mini-batch gradient of ½(w2 w1 x − τ x)² averaged over b_t samples is (w2 w1 − τ) s_t (w2, w1), s_t = χ²_{b_t}/b_t;
    plain SGD with α_t = 0.05/(t+1). Returns per t (mean, SE) of the population loss ½(w2 w1 − τ)² and the total
    variance over the two layers of g_t (with its delta-free SE from the squared deviations)."""
    rng = np.random.default_rng(seed)
    bs = per_step_b(schedule)
    w1, w2, tau = np.full(draws, 0.5), np.full(draws, 1.5), 2.0
    out = {"loss": [], "var_g": []}
    for t, b in enumerate(bs):
        r = w2 * w1 - tau
        s = rng.chisquare(b, draws) / b
        g1, g2 = w2 * r * s, w1 * r * s
        loss = 0.5 * r * r
        out["loss"].append((loss.mean(), loss.std(ddof=1) / np.sqrt(draws)))
        dev = (g1 - g1.mean()) ** 2 + (g2 - g2.mean()) ** 2
        out["var_g"].append((dev.sum() / (draws - 1), dev.std(ddof=1) / np.sqrt(draws)))
        if t < len(bs) - 1:
            a = 0.05 / (t + 1)
            w1, w2 = w1 - a * g1, w2 - a * g2
    return out


def test_deep_linear_replicas_against_independent_monte_carlo(tmp_path, capsys):
    """The engine along [[1, 2], [8, 3]] against an independent simulation of the same process (|z| ≤ 4 with both
    SEs); in its first segment against the exact polynomials at b = 1 as well."""
    schedule = [[1, 2], [8, 3]]
    cfg = {**SCALAR, "batch_schedule": schedule, "replicas": 20000, "seed": 5}
    out = cli("simulate", cfg, tmp_path, capsys=capsys)
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert list(doc["curves"]) == ["schedule"] and doc["t"] == list(range(6))
    mc = scalar_monte_carlo(schedule)
    for q in ("loss", "var_g"):
        est, se = np.array(doc["curves"]["schedule"][q]), np.array(doc["curves"]["schedule"][f"{q}_se"])
        ref, ref_se = np.array(mc[q]).T
        live = se**2 + ref_se**2 > 0  # t = 0: deterministic, equal
        np.testing.assert_allclose(est[~live], ref[~live], rtol=1e-12)
        z = (est[live] - ref[live]) / np.sqrt(se[live] ** 2 + ref_se[live] ** 2)
        assert live.sum() >= 5 and np.all(np.abs(z) <= 4), (q, z)
    assert doc["diverged_at"]["schedule"] is None
    wrong = np.array(scalar_monte_carlo([[1, 5]])["var_g"]).T  # the power of the check: b = 1 throughout is far off
    est, se = np.array(doc["curves"]["schedule"]["var_g"]), np.array(doc["curves"]["schedule"]["var_g_se"])
    assert np.max(np.abs(est[2:] - wrong[0, 2:]) / np.sqrt(se[2:] ** 2 + wrong[1, 2:] ** 2)) > 20
    th = api.theory(parse_config(cfg))
    assert th["batch_sizes"] == ["schedule"]
    exact = th["curves"]["loss"][0]
    assert np.isfinite(exact[:2]).all() and np.isnan(exact[2:]).all()  # exact in the first segment only
    const = api.theory(parse_config({**SCALAR, "batch_sizes": [1], "steps": 5}))["curves"]["loss"][0]
    assert np.array_equal(exact[:2], const[:2])


def test_deep_linear_one_segment_is_constant_b_bitwise():
    a = api.simulate(parse_config({**SCALAR, "batch_schedule": [[4, 3]], "replicas": 200}))
    c = api.simulate(parse_config({**SCALAR, "batch_sizes": [4], "steps": 3, "replicas": 200}))
    for q in a["curves"]:
        assert np.array_equal(a["curves"][q]["value"], c["curves"][q]["value"], equal_nan=True), q


@pytest.mark.parametrize("cfg", [
    {**SCALAR, "batch_schedule": [[2, 0]]},
    {**SCALAR, "batch_schedule": []},
    {**SCALAR, "batch_schedule": [[2, 3]], "batch_sizes": [2]},
    {**SCALAR, "batch_schedule": [[2, 3]], "steps": 2},
    {"setting": "mlp", "batch_schedule": [[8, 2]]},
    {"setting": "sequence", "batch_schedule": [[8, 2]]},
])
def test_other_settings_refuse_bad_schedules(tmp_path, capsys, cfg):
    """Deep linear: the same refusals; the MLP and the sequence model train in epochs and refuse the field."""
    out = cli("simulate", cfg, tmp_path, capsys=capsys)
    assert out.returncode == 2 and out.stderr.startswith("error: batch_schedule"), out.stderr
    assert out.stderr.strip().count("\n") == 0


# -- the linear-regression page -------------------------------------------------------------------------------------

def test_page_draws_the_schedule_over_its_replicas():
    """The page's schedule field: the config takes it (URL included), a small Run draws the "schedule" curve (exact
    over the estimate), the per-b table has one row keyed "schedule" agreeing with the exact value; a bad entry is
    one error line naming batch_schedule, no traceback."""
    from test_app import by_label, open_page, shown, wait_for_run

    at = open_page("pages/linear_regression.py")
    by_label(at.sidebar.number_input, "Replicas").set_value(400)
    by_label(at.sidebar.text_input, "Batch-size schedule (optional)").set_value("4:6, 64:6")
    at.run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert "batch_schedule" in dict(at.query_params)
    by_label(at.button, "Run").click()
    at.run()
    wait_for_run(at)
    assert not at.exception and not at.error, (at.exception, [e.value for e in at.error])
    frames = [df.value for df in at.dataframe]
    table = next(f for f in frames if "estimate ± SE" in f.columns)
    assert list(table["b"]) == ["schedule"] and abs(float(table["z"].iloc[0])) <= 4
    assert any("schedule" in i.value for i in at.info)  # the views over constant b say why they are empty
    by_label(at.sidebar.text_input, "Batch-size schedule (optional)").set_value("4:6, 9999:6")
    at.run()
    assert not at.exception and any(shown(e).startswith("Check the inputs — batch_schedule") for e in at.error)
    by_label(at.sidebar.text_input, "Batch-size schedule (optional)").set_value("4:x")
    at.run()
    assert not at.exception and any("batch_schedule" in shown(e) for e in at.error)


def test_advisor_page_compares_a_schedule():
    """The advisor page's schedule section: its table holds the schedule's and each constant b's exact E L(w_T),
    equal to compare_schedule's; a bad schedule is one error line naming batch_schedule."""
    from test_app import by_label, open_page, shown

    at = open_page("pages/advisor.py")
    label = "Schedule b:steps, b:steps (e.g. a warm-up 8:200, 32:300)"
    by_label(at.text_input, label).set_value("4:20, 16:10")
    at.run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    table = next(df.value for df in at.dataframe if "run" in df.value.columns)
    ref = api.compare_schedule(parse_config({"setting": "linear_regression", "lr": {"schedule": "inverse", "c": "1/2"}}),
                               [[4, 20], [16, 10]])
    assert list(table["run"]) == ["schedule 4:20, 16:10", "constant b = 4", "constant b = 16"]
    assert list(table["steps"]) == [30, 60, 15]
    np.testing.assert_allclose(table["E L(w_T)"], [ref["loss"], ref["constant"]["4"]["loss"],
                                                   ref["constant"]["16"]["loss"]], rtol=1e-12)
    by_label(at.text_input, label).set_value("4:20, 0:10")
    at.run()
    assert not at.exception and any("batch_schedule" in shown(e) for e in at.error)


def test_deep_linear_page_keeps_a_loaded_schedule_and_runs_it():
    """The deep-linear page has the linear-regression page's schedule field (ui.widgets.batch_schedule): a link's
    batch_schedule is shown and kept (URL included), not dropped; a small Run has one "schedule" row in the per-b
    table, and the views over constant b say why they are empty; a bad entry is one error line naming the field."""
    from test_app import by_label, open_link, shown, wait_for_run

    at = open_link("pages/deep_linear.py", {"setting": "deep_linear", "dims": "[1,1,1]", "replicas": "200",
                                            "batch_schedule": "[[2,3],[8,2]]"})
    assert not at.error, [e.value for e in at.error]
    assert by_label(at.sidebar.text_input, "Batch-size schedule (optional)").value == "2:3, 8:2"
    assert json.loads(dict(at.query_params)["batch_schedule"]) == [[2, 3], [8, 2]]
    assert at.session_state["last_config_deep_linear"]["batch_schedule"] == [[2, 3], [8, 2]]
    by_label(at.button, "Run").click()
    at.run()
    wait_for_run(at, "dl")
    assert not at.exception and not at.error, (at.exception, [e.value for e in at.error])
    table = next(df.value for df in at.dataframe if "b" in df.value.columns)
    assert list(table["b"]) == ["schedule"]
    assert any("schedule" in i.value for i in at.info)
    by_label(at.sidebar.text_input, "Batch-size schedule (optional)").set_value("2:x")
    at.run()
    assert not at.exception and any(shown(e).startswith("Check the inputs — batch_schedule") for e in at.error)

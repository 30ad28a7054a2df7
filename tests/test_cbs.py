"""The critical batch size by branching (backend/cbs.py; docs/theory.md §11): branch losses against every batch sequence
enumerated in exact rationals (plain SGD and momentum, optimizer state carried over) and against an independent Monte
Carlo of replicas (|z| ≤ 4); B_simple and B_noise at t = 0 against the per-sample gradients and along t against the
advisor's separate recursion; McCandlish et al.'s one-step optimum against the minimum over α of E L(w_1) found
independently; the cbs rule; bad inputs through the CLI."""

import itertools
import json
import math
import os
import subprocess
import sys
from fractions import Fraction

import numpy as np
import pytest
from bruteforce import _grad, _loss
from conftest import ROOT, TINY_W0, TINY_X, TINY_Y, tiny_config_json
from test_advisor import _noise_ratios

from backend import advisor, api, cbs
from backend.__main__ import main
from backend.config import parse_config

F = Fraction
TINY_ALPHA = [F(1, 4) / (t + 1) for t in range(4)]  # the tiny config's schedule: inverse, c = 1/4


def enumerate_final_weights(segments, momentum=F(0), nesterov=False, weight_decay=F(0)):
    """Every equally likely w_T after the ``segments`` [(b, [α per step]), …] of torch.optim.SGD (dampening 0; the
    momentum buffer carried across segments), batches drawn without replacement from the tiny set."""
    n = len(TINY_X)
    steps = [(b, a) for b, alphas in segments for a in alphas]
    choices = [list(itertools.combinations(range(n), b)) for b, _ in steps]
    out = []
    for seq in itertools.product(*choices):
        w, buf = list(TINY_W0), None
        for batch, (_, a) in zip(seq, steps):
            d = [gj + weight_decay * wj for gj, wj in zip(_grad(TINY_X, TINY_Y, w, batch), w)]
            buf = list(d) if buf is None else [momentum * bj + dj for bj, dj in zip(buf, d)]
            step = [dj + momentum * bj for dj, bj in zip(d, buf)] if nesterov else buf
            w = [wj - a * sj for wj, sj in zip(w, step)]
        out.append(w)
    return out


def _mean_loss(ws) -> Fraction:
    return sum(_loss(TINY_X, TINY_Y, w) for w in ws) / len(ws)


@pytest.mark.parametrize("opt", [None, {"name": "sgd", "momentum": "1/2"},
                                 {"name": "sgd", "momentum": "3/5", "nesterov": True, "weight_decay": "1/7"}])
def test_branch_losses_equal_enumeration(opt):
    """Tiny set (n = 5), B = 1, checkpoints 0 and 2, S = 3, k = 1, 2, 3, linear scaling: E L at the end of every
    branch equals the mean over every batch sequence of the reference's t_c steps then the branch's ⌊S/(kB)⌋."""
    over = {} if opt is None else {"optimizer": opt}
    cfg = parse_config(tiny_config_json(**over))
    doc = cbs.cbs(cfg, 1, [0, 2], 3, "linear", ks=[1, 2, 3])
    kw = {} if opt is None else {"momentum": F(opt["momentum"]), "nesterov": opt.get("nesterov", False),
                                 "weight_decay": F(opt.get("weight_decay", 0))}
    assert doc["exact"] and [c["t"] for c in doc["checkpoints"]] == [0, 2]
    for row in doc["checkpoints"]:
        t = row["t"]
        assert row["loss"] == pytest.approx(float(_mean_loss(enumerate_final_weights([(1, TINY_ALPHA[:t])], **kw))),
                                            rel=1e-12)
        for k in (1, 2, 3):
            br = row["branches"][str(k)]
            lr = TINY_ALPHA[t] * k
            assert br["steps"] == 3 // k and br["lr"] == pytest.approx(float(lr), rel=1e-15)
            ws = enumerate_final_weights([(1, TINY_ALPHA[:t]), (k, [lr] * (3 // k))], **kw)
            assert br["loss"] == pytest.approx(float(_mean_loss(ws)), rel=1e-10), (t, k)


def test_noise_scales_with_momentum_equal_enumeration():
    """B_simple and B_noise at a checkpoint of a momentum run: ratios of expectations over every enumerated w_t."""
    cfg = parse_config(tiny_config_json(optimizer={"name": "sgd", "momentum": "1/2"}))
    row = cbs.cbs(cfg, 2, [3], 2)["checkpoints"][0]
    X, y = np.array(TINY_X, float), np.array(TINY_Y, float)
    H = X.T @ X / len(y)
    sums = np.zeros(4)
    for w in enumerate_final_weights([(2, TINY_ALPHA[:3])], momentum=F(1, 2)):
        grads = X * (X @ np.array(w, float) - y)[:, None]
        G = grads.mean(axis=0)
        S = (grads - G).T @ (grads - G) / len(y)
        sums += [np.trace(S), G @ G, np.trace(H @ S), G @ H @ G]
    assert row["b_simple"] == pytest.approx(sums[0] / sums[1], rel=1e-10)
    assert row["b_noise"] == pytest.approx(sums[2] / sums[3], rel=1e-10)


def _monte_carlo_branch(cfg, b_ref, t_c, b, lr, steps, beta, R, seed):
    """Independent replicas in numpy: heavy-ball SGD (torch's convention) with uniform b-subsets; returns the final
    losses of R runs (batches from random keys, every replica a row)."""
    X, y = np.asarray(cfg.X, float), np.asarray(cfg.y, float)
    n = len(y)
    rng = np.random.default_rng(seed)
    w = np.tile(np.asarray(cfg.w0_values, float), (R, 1))
    v = np.zeros_like(w)
    plan = [(b_ref, cfg.lr.alpha(t)) for t in range(t_c)] + [(b, lr)] * steps
    for bb, a in plan:
        idx = np.argpartition(rng.random((R, n)), bb - 1, axis=1)[:, :bb]
        r = np.einsum("rbp,rp->rb", X[idx], w) - y[idx]
        g = np.einsum("rb,rbp->rp", r, X[idx]) / bb
        v = beta * v + g
        w = w - float(a) * v
    res = X @ w.T - y[:, None]
    return (res * res).mean(axis=0) / 2


@pytest.mark.parametrize("beta", [0.0, 0.5])
def test_branch_losses_agree_with_replicas(beta):
    """Synthetic n = 60: B = 2, checkpoint 4, S = 32, k = 1 and 4 (sqrt scaling), 6 000 replicas each: |z| ≤ 4."""
    over = {} if beta == 0 else {"optimizer": {"name": "sgd", "momentum": beta}}
    cfg = parse_config({"setting": "linear_regression", "dataset": {"name": "synthetic", "n": 60, "p": 3},
                        "lr": {"schedule": "inverse", "c": "1/4"}, "steps": 10, **over})
    row = cbs.cbs(cfg, 2, [4], 32, "sqrt", ks=[1, 4])["checkpoints"][0]
    for k in (1, 4):
        br = row["branches"][str(2 * k)]
        assert br["lr"] == pytest.approx(float(cfg.lr.alpha(4)) * math.sqrt(k), rel=1e-15)
        loss = _monte_carlo_branch(cfg, 2, 4, 2 * k, br["lr"], 32 // (2 * k), beta, 6000, 7 + k)
        z = (loss.mean() - br["loss"]) / (loss.std(ddof=1) / math.sqrt(len(loss)))
        assert abs(z) <= 4, (k, z)


def test_noise_scales_at_t0_and_along_t():
    """At t = 0: the per-sample gradients' ratios on Graduate Admission with w0 = linspace(−0.5, 0.5, 8) (2.77 and
    2.06); at t > 0: the advisor's own recursion (eigenbasis lanes, backend/theory/paths.py) at the same steps."""
    w0 = np.linspace(-0.5, 0.5, 8)
    cfg = parse_config({"setting": "linear_regression", "w0": w0.tolist(), "lr": {"schedule": "constant", "c": 0.05},
                        "steps": 400, "batch_sizes": [8]})
    adv = advisor.advise(cfg, 8 * 400)
    ts = [t for t in adv["b_noise"]["t"] if t in (0, 3, 40, 400) or t == adv["b_noise"]["t"][-1]]
    doc = cbs.cbs(cfg, 8, ts, 64, ks=[1, 2])
    want_simple, want_noise = _noise_ratios(np.asarray(cfg.X, float), np.asarray(cfg.y, float), w0)
    assert round(want_simple, 2) == 2.77 and round(want_noise, 2) == 2.06
    first = doc["checkpoints"][0]
    assert first["t"] == 0 and first["b_simple"] == pytest.approx(want_simple, rel=1e-10)
    assert first["b_noise"] == pytest.approx(want_noise, rel=1e-10)
    for row in doc["checkpoints"]:
        i = adv["b_noise"]["t"].index(row["t"])
        assert row["b_simple"] == pytest.approx(adv["b_simple"]["curves"]["8"][i], rel=1e-8), row["t"]
        assert row["b_noise"] == pytest.approx(adv["b_noise"]["curves"]["8"][i], rel=1e-8), row["t"]
    assert len(doc["checkpoints"]) >= 3


def _min_over_alpha(expected_loss, alpha_hi: float) -> float:
    """min over α ∈ [0, alpha_hi] of a function, by golden-section search (independent of any formula)."""
    lo, hi = 0.0, alpha_hi
    g = (math.sqrt(5) - 1) / 2
    for _ in range(200):
        a, b = hi - g * (hi - lo), lo + g * (hi - lo)
        lo, hi = (lo, b) if expected_loss(a) < expected_loss(b) else (a, hi)
    return expected_loss((lo + hi) / 2)


@pytest.mark.parametrize("b", [1, 2, 3])
def test_one_step_gain_is_the_best_first_step_on_the_tiny_set(b):
    """McCandlish's identity at t = 0: gain(b) = L(w0) − min_α E L(w_1), E over every b-subset (exact rationals);
    ε_opt(b) is the minimiser. E L(w_1) is a quadratic in α: its three values at α = 0, 1, 2 give it exactly."""
    cfg = parse_config(tiny_config_json())
    row = cbs.cbs(cfg, 1, [0], 4, ks=[1, 2, 3])["checkpoints"][0]
    batches = list(itertools.combinations(range(len(TINY_X)), b))

    def expected(a):
        return sum(_loss(TINY_X, TINY_Y, [wj - a * gj for wj, gj in zip(TINY_W0, _grad(TINY_X, TINY_Y, TINY_W0, B))])
                   for B in batches) / len(batches)

    f0, f1, f2 = expected(F(0)), expected(F(1)), expected(F(2))
    curv, slope = (f2 - 2 * f1 + f0) / 2, (4 * f1 - 3 * f0 - f2) / 2  # E L(w_1) = f0 + slope α + curv α²
    a_star = -slope / (2 * curv)
    assert row["step_opt"][str(b)] == pytest.approx(float(a_star), rel=1e-12)
    assert row["step_gain"][str(b)] == pytest.approx(float(f0 - expected(a_star)), rel=1e-12)


def test_one_step_gain_is_the_best_first_step_on_graduate_admission():
    """The same identity on Graduate Admission at b = 1 (every one of the 500 single-sample batches), the minimum
    over α found by golden-section search."""
    cfg = parse_config({"setting": "linear_regression", "w0": np.linspace(-0.5, 0.5, 8).tolist()})
    row = cbs.cbs(cfg, 1, [0], 8, ks=[1])["checkpoints"][0]
    X, y, w0 = np.asarray(cfg.X, float), np.asarray(cfg.y, float), np.linspace(-0.5, 0.5, 8)
    grads = X * (X @ w0 - y)[:, None]
    r0, P = X @ w0 - y, X @ grads.T  # residuals at w0; column i: X g_i, so X w_1 − y = r0 − α X g_i

    def expected(a):  # the mean over the 500 equally likely batches {i} of L(w0 − α g_i)
        return float((((r0[:, None] - a * P) ** 2).mean(axis=0)).mean() / 2)

    best = _min_over_alpha(expected, 1.0)
    assert row["loss"] - best == pytest.approx(row["step_gain"]["1"], rel=1e-7)
    assert expected(row["step_opt"]["1"]) == pytest.approx(best, rel=1e-12)


def test_the_cbs_rule():
    """The largest b within (1 + ε) of the k = 1 loss; a diverged branch never qualifies; none if k = 1 diverged."""
    bs = np.array([4, 8, 16, 32])
    loss = np.array([1.0, 1.005, 1.02, 0.5])
    assert cbs.critical_batch(bs, loss, np.array([False] * 4), 0.01) == 32
    assert cbs.critical_batch(bs, loss, np.array([False, False, False, True]), 0.01) == 8
    assert cbs.critical_batch(bs, loss, np.array([False, False, False, True]), 0.05) == 16
    assert cbs.critical_batch(bs, loss, np.array([True, False, False, False]), 0.05) is None


def test_diverged_branches_are_named_and_left_out():
    """A linear-scaled step far past 2/λ_max (λ_max ≈ 4.7 here) blows up: the branch says diverged, and the cbs
    stays below it."""
    cfg = parse_config({"setting": "linear_regression", "lr": {"schedule": "constant", "c": 0.05}, "steps": 20})
    row = cbs.cbs(cfg, 2, [20], 512, "linear", ks=[1, 2, 4, 8, 16, 32])["checkpoints"][0]
    div = [int(b) for b, br in row["branches"].items() if br["diverged"]]
    assert div and not row["branches"]["2"]["diverged"] and row["cbs"] < min(div)
    for b in div:  # non-finite, or above 10⁶ × the loss at w0
        assert row["branches"][str(b)]["loss"] is None or row["branches"][str(b)]["loss"] > 1e6 * row["loss"]


def test_defaults_and_the_document_shape():
    cfg = parse_config({"setting": "linear_regression", "steps": 50})
    doc = cbs.cbs(cfg, 16, [0, 50], 1600)
    assert set(doc) == {"setting", "b_ref", "samples", "scaling", "tolerance", "exact", "checkpoints"}
    assert doc["tolerance"] == 0.01 and doc["scaling"] == "none" and doc["exact"] is True
    row = doc["checkpoints"][1]
    assert list(row["branches"]) == ["16", "32", "64", "128", "256"]  # powers of two while k·B ≤ n = 500
    assert {"t", "loss", "b_simple", "b_noise", "step_opt", "step_gain", "branches", "cbs"} <= set(row)
    assert set(row["branches"]["32"]) == {"steps", "lr", "loss", "diverged"} and row["branches"]["32"]["steps"] == 50
    assert set(row["step_opt"]) == set(row["branches"])
    assert api.cbs_rules is not None and api.cbs is cbs.cbs


@pytest.mark.parametrize("args,option", [
    (["--b-ref", "0"], "b_ref"), (["--b-ref", "x"], "b_ref"), (["--checkpoints", "-1"], "checkpoints"),
    (["--checkpoints", "0,4"], "checkpoints"), (["--samples", "1"], "samples"), (["--scaling", "cube"], "scaling"),
    (["--tolerance", "0"], "tolerance"), (["--tolerance", "-0.1"], "tolerance"), (["--ks", "0"], "ks"),
    (["--ks", "1,8"], "ks"), (["--ks", "1,two"], "ks"), (["--samples", "400000"], "samples")])
def test_cli_refuses_bad_input_in_one_line(tmp_path, capsys, args, option):
    """The tiny config (steps 3, n = 5): exit 2 and one line naming the option (S / B past the step limit too)."""
    path = tmp_path / "c.json"
    path.write_text(json.dumps(tiny_config_json()))
    base = {"--b-ref": "2", "--checkpoints": "0,3", "--samples": "4"}
    base.update(dict(zip(args[::2], args[1::2])))
    code = main(["cbs", str(path), *itertools.chain.from_iterable(base.items())])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith(f"error: {option}:") and err.count("\n") == 1, err


def test_cli_prints_the_document_and_refuses_a_config_it_cannot_branch(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps(tiny_config_json()))
    out = subprocess.run([sys.executable, "-m", "backend", "cbs", str(path), "--b-ref", "1", "--checkpoints", "0,3",
                          "--samples", "4", "--scaling", "linear", "--ks", "1,2,4"], cwd=ROOT, capture_output=True,
                         text=True, env=os.environ.copy(), timeout=300)
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    ws = enumerate_final_weights([(1, TINY_ALPHA[:3]), (2, [TINY_ALPHA[3] * 2] * 2)])
    assert doc["checkpoints"][1]["branches"]["2"]["loss"] == pytest.approx(float(_mean_loss(ws)), rel=1e-10)
    # every setting branches now (exactly or from replicas, #26); a config whose reference run is not at a constant
    # B is refused in one line naming the field
    path.write_text(json.dumps({"setting": "deep_linear", "batch_schedule": [[2, 4], [4, 4]]}))
    out = subprocess.run([sys.executable, "-m", "backend", "cbs", str(path), "--b-ref", "2", "--checkpoints", "0",
                          "--samples", "4"], cwd=ROOT, capture_output=True, text=True, env=os.environ.copy(),
                         timeout=300)
    assert out.returncode == 2 and out.stderr.startswith("error: batch_schedule:") and out.stderr.count("\n") == 1


def test_page_draws_the_defaults_and_refuses_bad_input_in_one_red_line():
    """The Critical batch size page under AppTest: registered in the navigation, its defaults drawn (a metric per
    rule, both charts, the table) without an error; a tolerance of 0 and an unreadable checkpoint list each give one
    red line naming the option."""
    from test_app import open_page

    at = open_page("pages/critical_batch.py")
    assert not at.error and len(at.metric) == 3
    assert len(at.dataframe) == 2 and len(at.get("download_button")) == 2
    table = at.dataframe[1].value  # the defaults' checkpoints each have a critical b; the headings are names
    assert {"critical b at t", "branch loss", "B_noise"} <= set(table.columns) and "cbs" not in table.columns
    assert table["critical b at t"].notna().all() and table["branch loss"].notna().all()
    at.number_input(key="cbs_tol").set_value(0.0).run()
    assert len(at.error) == 1 and "tolerance" in at.error[0].value
    at.number_input(key="cbs_tol").set_value(0.01).run()
    at.text_input(key="cbs_checkpoints_linear_regression").set_value("0,x").run()
    assert len(at.error) == 1 and "checkpoints" in at.error[0].value


def test_charts_draw_what_the_documents_say():
    """The CBS chart carries every rule's critical batch size and both noise scales at every checkpoint (a missing
    CBS left out and counted); the branch chart leaves out the diverged branches and names them."""
    from backend import charts

    cfg = parse_config({"setting": "linear_regression", "lr": {"schedule": "constant", "c": 0.05}, "steps": 20})
    docs = cbs.cbs_rules(cfg, 2, [0, 20], 512, ks=[1, 2, 4, 8, 16, 32])
    spec = charts.cbs_chart(docs).to_dict()
    values = [row for data in spec["datasets"].values() for row in data]
    for rule, doc in docs.items():
        for row in doc["checkpoints"]:
            assert {"t": row["t"], "rule": rule, "b": row["cbs"]} in values
            assert {"t": row["t"], "scale": "B_noise", "b": row["b_noise"]} in values
    lines = [layer["mark"] for layer in spec["layer"] if "color" in layer["encoding"]]  # one layer per rule
    widths = [m["strokeWidth"] for m in lines]
    assert len(lines) == len(docs) and widths == sorted(set(widths), reverse=True)
    assert len({json.dumps(m["strokeDash"]) for m in lines}) == len(docs)
    # rules at the same b are nested, widest first and each with its own dash, so that none hides another
    docs["linear"]["checkpoints"][0]["cbs"] = None
    assert "1 checkpoint(s) without" in json.dumps(charts.cbs_chart(docs).to_dict())
    spec = json.dumps(charts.branch_loss_chart(docs, 20).to_dict())
    div = [b for b, br in docs["linear"]["checkpoints"][1]["branches"].items() if br["diverged"]]
    assert div and all(f"linear b = {b}" in spec for b in div)


def test_noise_scales_with_nesterov_equal_the_advisors_doubled_state_lanes():
    """Nesterov momentum 0.9: B_simple and B_noise at each checkpoint equal the advisor's own doubled-state lanes
    (backend/theory/momentum_lanes.py, a separate recursion) at the same steps."""
    cfg = parse_config({"setting": "linear_regression", "lr": {"schedule": "constant", "c": 0.02}, "steps": 300,
                        "batch_sizes": [8], "optimizer": {"name": "sgd", "momentum": 0.9, "nesterov": True}})
    adv = advisor.advise(cfg, 8 * 300)
    ts = adv["b_noise"]["t"]
    doc = cbs.cbs(cfg, 8, [t for t in ts if t in (0, 5, 50, 300)], 64, ks=[1])
    assert len(doc["checkpoints"]) >= 3
    for row in doc["checkpoints"]:
        i = ts.index(row["t"])
        for key in ("b_simple", "b_noise"):
            assert row[key] == pytest.approx(adv[key]["curves"]["8"][i], rel=1e-9), (key, row["t"])


def test_page_fields_start_from_each_settings_own_config():
    """Switching the setting on the Critical batch size page: B, the checkpoints, S and the k's start from the new
    setting's config (its steps and batch sizes), not from the previous setting's values."""
    from test_app import open_page

    at = open_page("pages/critical_batch.py")
    lr_checkpoints = at.text_input(key="cbs_checkpoints_linear_regression").value
    at.selectbox(key="cbs_setting").set_value("mlp").run()
    config = api.parse_config(api.defaults("mlp"))
    b = min(config.batch_sizes)
    last = api.cbs_max_checkpoint(config, b)
    assert at.number_input(key="cbs_bref_mlp").value == b
    assert at.text_input(key="cbs_checkpoints_mlp").value == f"0,{last // 2},{last}" != lr_checkpoints
    assert at.number_input(key="cbs_samples_mlp").value == 32 * b
    assert at.text_input(key="cbs_ks_mlp").value == "1,2,4,8"

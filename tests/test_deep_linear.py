"""Deep linear networks: exact polynomials against Monte Carlo and quadrature, samplers, fits, b_0, CLI."""

import itertools
import json
from fractions import Fraction

import numpy as np
import pytest
import torch
from scipy.special import roots_genlaguerre

from backend import api
from backend.settings import deep_linear as api_deep
from backend.config import parse_config
from backend.settings.deep_linear import PRESETS as DEEP_LINEAR_PRESETS
from backend.engine import deep_linear as engine_deep
from backend.engine.deep_linear import (SigmaSampler, _factored_group_m2, _factored_norm2, hidden_bases, reduced_dims,
                                        run_replicas)
from backend.stats import group_m2
from backend.theory import deep_linear as th
from backend.theory.wishart import chi2_moment, sigma_moment

DEV = torch.device("cpu")


def floats(mats):
    return [np.asarray(M, dtype=np.float64) for M in mats]


def z(est, exact):
    return (est["value"] - exact) / np.sqrt(est["se"] ** 2 + (1e-9 * abs(exact)) ** 2)


def poly_at(coeffs, b):
    return float(sum(Fraction(c) * Fraction(1, b) ** k for k, c in enumerate(coeffs)))


@pytest.mark.parametrize("dims", [[3, 4, 2], [2, 3, 3, 2]])
def test_t0_closed_form_against_monte_carlo(dims):
    cfg = parse_config({"setting": "deep_linear", "dims": dims, "steps": 0})
    exact = th.exact_t0(cfg.w0_values, cfg.teacher_values)
    for b in (1, 3, 10):
        res = run_replicas(floats(cfg.w0_values), floats(cfg.teacher_values), [], b, 20000, b, DEV)
        for k in range(len(dims) - 1):
            q = f"var_g_layer{k + 1}"
            assert abs(z(res.curves[q], poly_at(exact[q], b))[0]) <= 4, (b, q)
        assert res.curves["var_g_rb"]["value"][0] == pytest.approx(poly_at(exact["var_g"], b), rel=1e-10)


def test_exact_t1_against_a_million_replicas():
    """dims 2 → 3 → 2, α_0 = 1/20: 200 000 replicas for each of b = 1, 2, 4, 8, 16 (10⁶ in total)."""
    cfg = parse_config({"setting": "deep_linear", "dims": [2, 3, 2], "steps": 1,
                        "lr": {"schedule": "constant", "c": "1/20"}})
    exact = th.exact_t1(cfg.w0_values, cfg.teacher_values, Fraction(1, 20))
    for q, c in exact.items():
        if q != "loss":
            assert c[0] == 0 and len(c) - 1 == 6  # Theorem 4: no constant term; degree 6 at t = 1
    for b in (1, 2, 4, 8, 16):
        res = run_replicas(floats(cfg.w0_values), floats(cfg.teacher_values), [0.05], b, 200_000, 10 + b, DEV)
        for q in ("var_g_layer1", "var_g_layer2", "var_g", "loss"):
            assert abs(z(res.curves[q], poly_at(exact[q], b))[1]) <= 4, (b, q)
        assert abs(z(res.curves["var_g_rb"], poly_at(exact["var_g"], b))[1]) <= 4, b


def scalar_by_quadrature(ws, ts, alphas, t, b, nodes=40):
    """Independent reference: E over s_i = χ²_b/b by generalised Gauss–Laguerre quadrature (exact for these
    polynomial degrees), plain float dynamics at every node."""
    y, w = roots_genlaguerre(nodes, b / 2 - 1)
    w = w / w.sum()
    s_nodes = 2 * y / b
    grids = np.meshgrid(*([s_nodes] * t), indexing="ij") if t else []
    weights = np.ones(()) if t == 0 else np.prod(np.meshgrid(*([w] * t), indexing="ij"), axis=0)
    wv = [np.full(weights.shape, float(x)) for x in ws]
    target = float(np.prod([float(x) for x in ts]))
    for step in range(t):
        prod = np.prod(wv, axis=0)
        delta = prod - target
        grads = [np.prod([wv[j] for j in range(len(wv)) if j != k], axis=0) * delta for k in range(len(wv))]
        wv = [wv[k] - float(alphas[step]) * grads[k] * grids[step] for k in range(len(wv))]
    prod = np.prod(wv, axis=0)
    delta = prod - target
    es2 = float((w * s_nodes**2).sum())  # E[s_t²]
    out = {}
    total = 0.0
    for k in range(len(wv)):
        c = np.prod([wv[j] for j in range(len(wv)) if j != k], axis=0) * delta
        var = es2 * float((weights * c * c).sum()) - float((weights * c).sum()) ** 2
        out[f"var_g_layer{k + 1}"] = var
        total += var
    out["var_g"] = total
    out["loss"] = 0.5 * float((weights * delta * delta).sum())
    return out


@pytest.mark.parametrize("t", [0, 1, 2, 3])
def test_scalar_network_exact_against_quadrature(t):
    ws, ts, alphas = [Fraction(1, 2), Fraction(3, 4)], [Fraction(1), Fraction(1)], [Fraction(1, 10)] * 3
    exact = th.exact_scalar(ws, ts, alphas, t)
    assert len(exact["var_g"]) - 1 == [1, 6, 23, 76][t] and exact["var_g"][0] == 0
    for b in (1, 2, 3, 8):
        ref = scalar_by_quadrature(ws, ts, alphas, t, b, nodes=45 if t == 3 else 30)
        for q, v in ref.items():
            assert poly_at(exact[q], b) == pytest.approx(v, rel=1e-8, abs=1e-14), (t, b, q)


def test_scalar_network_exact_against_monte_carlo_where_tails_allow():
    cfg = parse_config({"setting": "deep_linear", **DEEP_LINEAR_PRESETS["scalar network"]})
    polys = {t: api_deep.exact_polynomials(cfg, t) for t in range(4)}
    for b in (4, 16):
        res = run_replicas(floats(cfg.w0_values), floats(cfg.teacher_values), cfg.lr.alphas(3), b, 200_000, b, DEV)
        for t in range(1, 4):
            for q in ("var_g", "var_g_layer1", "loss"):
                assert abs(z(res.curves[q], poly_at(polys[t][q], b))[t]) <= 4, (b, t, q)


def test_heavy_tails_are_flagged_at_small_b():
    """Scalar network, b = 1, t = 3: the exact variance is far above what replicas see; the page must flag it."""
    raw = {**DEEP_LINEAR_PRESETS["scalar network"], "lr": {"schedule": "constant", "c": "1/2"},
           "batch_sizes": [1], "replicas": 4000}
    cfg = parse_config({"setting": "deep_linear", **raw})
    exact = api.theory(cfg)["curves"]["var_g"]
    sim = api.simulate(cfg)
    assert exact[0, 3] > 10 * sim["curves"]["var_g"]["value"][0, 3]
    flags = api.unreliable(sim, "var_g", exact)
    assert flags["flag"][0, 3] and flags["replicas_needed"][0, 3] >= 10 * cfg.replicas
    assert api.per_b_table(api.theory(cfg), sim, "var_g", 3)[0]["flag"]


@pytest.mark.parametrize("b", [4, 9])
def test_bartlett_and_direct_sampling_agree_in_two_moments(b):
    p, R = 3, 100_000
    exact_var = lambda i, j: (1 + (i == j)) / b  # noqa: E731 - var(Σ̂_ij) = (1 + δ_ij)/b
    for method in ("bartlett", "direct"):
        S = SigmaSampler(p, b, R, 7, DEV, torch.float64, method).draw().numpy()
        for i, j in itertools.product(range(p), repeat=2):
            x = S[:, i, j]
            assert abs(x.mean() - (i == j)) <= 4 * x.std() / np.sqrt(R), (method, i, j)
            v = x.var(ddof=1)
            se_v = np.sqrt((((x - x.mean()) ** 4).mean() - v**2) / R)
            assert abs(v - exact_var(i, j)) <= 4 * se_v, (method, i, j)


def test_wishart_moment_rule_against_monte_carlo():
    rng = np.random.default_rng(0)
    b, p, R = 3, 3, 400_000
    X = rng.standard_normal((R, b, p))
    S = np.einsum("rbi,rbj->rij", X, X) / b
    for pattern in ([(0, 0), (0, 0), (1, 1)], [(0, 1), (1, 2), (2, 0)], [(0, 1), (0, 1), (0, 0), (1, 1)]):
        vals = np.prod([S[:, i, j] for i, j in pattern], axis=0)
        exact = sum(c * (1 / b) ** k for k, c in enumerate(sigma_moment(pattern)))
        assert abs(vals.mean() - exact) <= 4 * vals.std() / np.sqrt(R), pattern
    assert chi2_moment(3) == [1, 6, 8, 0]  # (1)(1 + 2u)(1 + 4u): E[(χ²_b/b)^3]


def test_fit_recovers_a_known_polynomial_and_b0():
    beta = np.array([2.0, -3.0, 1.5])
    b = np.array([1, 2, 3, 4, 6, 8, 12, 16, 32, 64], dtype=float)
    truth = api_deep.eval_theorem4(beta, b)
    rng = np.random.default_rng(1)
    se = 0.002 * truth + 1e-4
    fit = api_deep.fit_theorem4(b, truth + rng.standard_normal(len(b)) * se, se, degree=3)
    assert np.all(fit["beta_lo"] <= beta) and np.all(beta <= fit["beta_hi"])
    assert fit["p_value"] > 1e-3
    # b_0 for β = (2, −3, 1.5): 2 b² − 6 b + 4.5 = 0 has a double root at 1.5
    assert th.decrease_threshold([0, 2.0, -3.0, 1.5]) == pytest.approx(1.5, abs=1e-6)
    # exact path: β = (1, −3, 1) → 1·b² − 6·b + 3 = 0, largest root 3 + √6
    assert th.decrease_threshold([Fraction(0), Fraction(1), Fraction(-3), Fraction(1)]) == pytest.approx(
        3 + np.sqrt(6), rel=1e-9)


def test_exact_refuses_big_sizes_with_a_message():
    from backend.errors import TooExpensive

    cfg = parse_config({"setting": "deep_linear", "dims": [8, 8, 8], "steps": 2})
    with pytest.raises(TooExpensive, match="monomials"):
        th.exact_t1(cfg.w0_values, cfg.teacher_values, Fraction(1, 10))
    assert api_deep.exact_method(cfg, 1) is None and api_deep.exact_method(cfg, 0) is not None
    th_res = api.theory(cfg)
    assert np.all(np.isfinite(th_res["curves"]["var_g"][:, 0])) and np.all(np.isnan(th_res["curves"]["var_g"][:, 1]))


def test_exact_strings_give_exact_coefficients_via_the_cli(tmp_path):
    import os
    import subprocess
    import sys

    from conftest import ROOT

    cfg = {"setting": "deep_linear", **DEEP_LINEAR_PRESETS["scalar network"]}
    path = tmp_path / "c.json"
    path.write_text(json.dumps(cfg))
    out = subprocess.run([sys.executable, "-m", "backend", "polynomial", str(path), "--t", "2", "--quantity",
                          "var_g_layer1"], cwd=ROOT, capture_output=True, text=True, env=os.environ.copy())
    res = json.loads(out.stdout)
    assert res["exact"] and res["degree"] == 23 and res["coefficients"][0] == "0"
    assert "scalar" in res["method"]
    ref = scalar_by_quadrature([Fraction(1, 2), Fraction(3, 4)], [1, 1], [Fraction(1, 10)] * 2, 2, 5)
    assert poly_at(res["coefficients"], 5) == pytest.approx(ref["var_g_layer1"], rel=1e-9)
    for bad, field in (({"dims": [2]}, "dims"), ({"teacher": [[[1]]]}, "teacher"), ({"dtype": "int8"}, "dtype")):
        path.write_text(json.dumps({"setting": "deep_linear", **bad}))
        out = subprocess.run([sys.executable, "-m", "backend", "theory", str(path)], cwd=ROOT, capture_output=True,
                             text=True, env=os.environ.copy())
        assert out.returncode == 2 and out.stderr.startswith(f"error: {field}")


def test_divergence_reported():
    cfg = parse_config({"setting": "deep_linear", "dims": [2, 2, 2], "steps": 60, "batch_sizes": [1],
                        "lr": {"schedule": "constant", "c": 3}, "replicas": 100, "w0": {"seed": 0, "scale": 3}})
    sim = api.simulate(cfg)
    assert sim["meta"]["diverged_at"][0] is not None and sim["finite_count"][0, -1] < 100


def test_recording_every_k_steps_only_thins_the_statistics():
    """The in-place update used between recorded steps gives the same trajectory as the recorded path."""
    cfg = parse_config({"setting": "deep_linear", "dims": [3, 4, 2], "steps": 12})
    W0, T = floats(cfg.w0_values), floats(cfg.teacher_values)
    every = run_replicas(W0, T, cfg.lr.alphas(12), 2, 64, 5, DEV)
    thin = run_replicas(W0, T, cfg.lr.alphas(12), 2, 64, 5, DEV, record_every=5)
    steps = [0, 5, 10, 12]
    for q in ("var_g", "var_g_layer2", "var_full_grad", "loss"):
        np.testing.assert_allclose(thin.curves[q]["value"], every.curves[q]["value"][steps], rtol=1e-9)
    cfg_bad = parse_config({"setting": "deep_linear", "dims": [2, 2, 2], "steps": 60, "batch_sizes": [1],
                            "lr": {"schedule": "constant", "c": 3}, "w0": {"seed": 0, "scale": 3}})
    res = run_replicas(floats(cfg_bad.w0_values), floats(cfg_bad.teacher_values), cfg_bad.lr.alphas(60), 1, 40, 0,
                       DEV, record_every=7)
    assert res.diverged_at is not None and res.finite_count[-1] < 40


def test_hidden_subspace_is_invariant_under_sgd():
    """S_k = col(W_k) + row(W_{k+1}) holds every SGD iterate, whatever Σ̂: the basis of the width reduction."""
    rng = np.random.default_rng(3)
    Ws = [rng.normal(size=(6, 2)), rng.normal(size=(3, 6)), rng.normal(size=(2, 3))]  # 2 → 6 → 3 → 2
    Tp = rng.normal(size=(2, 2))
    Q = hidden_bases(Ws)
    assert Q[1].shape == (6, 5) and Q[2] is None  # 2 + 3 < 6; col(W_2) + row(W_3) fills R^3
    proj = np.eye(6) - Q[1] @ Q[1].T
    for _ in range(20):
        X = rng.normal(size=(3, 2))
        S = X.T @ X / 3
        delta = Ws[2] @ Ws[1] @ Ws[0] - Tp
        g = [(Ws[2] @ Ws[1]).T @ delta @ S, Ws[2].T @ delta @ S @ Ws[0].T, delta @ S @ (Ws[1] @ Ws[0]).T]
        Ws = [W - 0.05 * gk for W, gk in zip(Ws, g)]
        assert np.abs(proj @ Ws[0]).max() < 1e-12 and np.abs(Ws[1] @ proj).max() < 1e-12


@pytest.mark.parametrize("dims", [[2, 6, 2], [2, 6, 3, 2]])
def test_width_reduction_gives_the_same_statistics(dims):
    cfg = parse_config({"setting": "deep_linear", "dims": dims, "steps": 8})
    W0, T = floats(cfg.w0_values), floats(cfg.teacher_values)
    assert reduced_dims(W0)[1] < dims[1]
    full = run_replicas(W0, T, cfg.lr.alphas(8), 3, 64, 1, DEV, reduce_hidden=False)
    small = run_replicas(W0, T, cfg.lr.alphas(8), 3, 64, 1, DEV)
    for q in full.curves:  # equal up to rounding (the spread of the full gradient is exactly 0 at t = 0)
        for f in ("value", "se"):
            ref = full.curves[q][f]
            np.testing.assert_allclose(small.curves[q][f], ref, rtol=1e-8, atol=1e-12 * np.abs(ref).max(),
                                       err_msg=f"{q} {f}")


def test_factored_group_variance_matches_the_two_pass_form(monkeypatch):
    rng = np.random.default_rng(0)
    d, a = torch.tensor(rng.normal(size=(12, 3, 5))), torch.tensor(rng.normal(size=(12, 3, 4)))
    g = d.transpose(1, 2) @ a
    norms = _factored_norm2(d, a)
    np.testing.assert_allclose(norms.numpy(), g.square().sum(dim=(1, 2)).numpy(), rtol=1e-12)
    m2 = _factored_group_m2(d, a, norms, 3)
    np.testing.assert_allclose(m2.numpy(), group_m2(g, 3).numpy(), rtol=1e-10)
    # replicas nearly equal: most digits would cancel, so the one-pass form declines
    d2, a2 = d[:1] + 1e-3 * d, a[:1] + 1e-3 * a
    assert _factored_group_m2(d2, a2, _factored_norm2(d2, a2), 3) is None
    # and the engine's statistics are the same with the one-pass form switched off
    cfg = parse_config({"setting": "deep_linear", "dims": [3, 4, 2], "steps": 6})
    W0, T = floats(cfg.w0_values), floats(cfg.teacher_values)
    one = run_replicas(W0, T, cfg.lr.alphas(6), 2, 64, 4, DEV)
    monkeypatch.setattr(engine_deep, "CANCELLATION_LIMIT", -1.0)
    two = run_replicas(W0, T, cfg.lr.alphas(6), 2, 64, 4, DEV)
    for q in ("var_g", "var_g_layer1", "var_g_layer2", "var_g_rb"):
        np.testing.assert_allclose(one.curves[q]["value"], two.curves[q]["value"], rtol=1e-9, err_msg=q)


def test_diverged_replicas_do_not_disturb_the_others():
    """Some replicas diverge (zeroed and frozen); the survivors' statistics do not depend on how often statistics
    are recorded, i.e. on which path (in place or masked) each step took."""
    cfg = parse_config({"setting": "deep_linear", "dims": [2, 3, 2], "steps": 30, "batch_sizes": [1],
                        "lr": {"schedule": "constant", "c": "1/2"}, "w0": {"seed": 0, "scale": 2}})
    W0, T = floats(cfg.w0_values), floats(cfg.teacher_values)
    every = run_replicas(W0, T, cfg.lr.alphas(30), 1, 64, 0, DEV)
    thin = run_replicas(W0, T, cfg.lr.alphas(30), 1, 64, 0, DEV, record_every=5)
    steps = [0, 5, 10, 15, 20, 25, 30]
    assert 0 < every.diverged_replicas < 64 and every.finite_count[-1] > 1
    np.testing.assert_array_equal(thin.finite_count, every.finite_count[steps])
    for q in ("var_g", "var_g_layer1", "var_full_grad", "loss"):
        np.testing.assert_allclose(thin.curves[q]["value"], every.curves[q]["value"][steps], rtol=1e-9, err_msg=q)

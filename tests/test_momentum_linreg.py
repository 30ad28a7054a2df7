"""SGD with momentum, Nesterov and weight decay for linear regression (docs/theory.md §9): the exact doubled-state
recursion against exhaustive enumeration of every batch sequence in rationals, the replica engine against the exact
values and against torch.optim.SGD, β = 0 bitwise today's numbers, the refusals, and Theorems 1–2 on the exact values."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
from fractions import Fraction

import numpy as np
import pytest
import torch

from bruteforce import _grad, _loss
from conftest import ROOT, TINY_W0, TINY_X, TINY_Y, tiny_config_json

F = Fraction


# -- an independent reference: torch.optim.SGD's update written out, every batch sequence enumerated ------------

def enumerate_sgd(X, y, w0, alphas, b, t, momentum, nesterov, weight_decay, sampler="without_replacement"):
    """var(g_t | F_0), var(∇L(w_t) | F_0), E L(w_t) over every equally likely batch sequence of t + 1 steps, with
    torch.optim.SGD's update (dampening 0): d = g + λw; buf = d on the first step, else β buf + d; step = buf, or
    d + β buf (Nesterov); w ← w − α step."""
    n = len(X)
    batches = (list(itertools.combinations(range(n), b)) if sampler == "without_replacement"
               else list(itertools.product(range(n), repeat=b)))
    full = list(range(n))
    sg, sf = None, None
    sgg = sff = sl = F(0)
    count = 0
    for seq in itertools.product(batches, repeat=t + 1):
        w = list(w0)
        buf = None
        for s in range(t):
            g = _grad(X, y, w, seq[s])
            d = [gj + weight_decay * wj for gj, wj in zip(g, w)]
            buf = list(d) if buf is None else [momentum * bj + dj for bj, dj in zip(buf, d)]
            step = [dj + momentum * bj for dj, bj in zip(d, buf)] if nesterov else buf
            w = [wj - alphas[s] * sj for wj, sj in zip(w, step)]
        g = _grad(X, y, w, seq[t])
        f = _grad(X, y, w, full)
        sg = g if sg is None else [a + c for a, c in zip(sg, g)]
        sf = f if sf is None else [a + c for a, c in zip(sf, f)]
        sgg += sum(v * v for v in g)
        sff += sum(v * v for v in f)
        sl += _loss(X, y, w)
        count += 1
    return {"var_g": sgg / count - sum((v / count) ** 2 for v in sg),
            "var_full_grad": sff / count - sum((v / count) ** 2 for v in sf),
            "loss": sl / count}


OPTIMIZERS = {
    "heavy_ball": {"name": "sgd", "momentum": "1/2"},
    "nesterov": {"name": "sgd", "momentum": "3/5", "nesterov": True},
    "weight_decay": {"name": "sgd", "weight_decay": "1/3"},
    "all": {"name": "sgd", "momentum": "9/10", "nesterov": True, "weight_decay": "1/7"},
}

from backend import api  # noqa: E402
from backend.config import parse_config  # noqa: E402
from backend.engine import linreg as engine  # noqa: E402
from backend.errors import ConfigError  # noqa: E402
from backend.optim import OptimizerSpec  # noqa: E402
from backend.settings import linear_regression as lr  # noqa: E402
from backend.theory import linreg as th  # noqa: E402

DEV = torch.device("cpu")
ALPHAS = [F(1, 4), F(1, 8), F(1, 12)]  # the tiny config's schedule: inverse, c = 1/4
CASES = [("without_replacement", 1), ("without_replacement", 2), ("without_replacement", 4),
         ("with_replacement", 1), ("with_replacement", 2)]


def tiny(opt, **over):
    return parse_config(tiny_config_json(optimizer=opt, **over))


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_exact_theory_equals_enumeration(name):
    """The exact recursion (rationals) equals the enumeration of every batch sequence, for t = 0, 1, 2 and every
    quantity, both samplers; so does the exact polynomial in 1/b evaluated at b."""
    cfg = tiny(OPTIMIZERS[name])
    assert cfg.exact and cfg.lr.alphas(3, exact=True) == ALPHAS
    o = cfg.optimizer
    problem, w0 = lr._problem(cfg, exact=True), lr._w0(cfg, exact=True)
    for sampler, b in CASES:
        c = np.array([lr.rational(th.noise_factor_exact(b, 5, sampler))], dtype=object)
        curves = th.moment_curves(problem, w0, [lr.rational(a) for a in ALPHAS[:2]], c, lr._sgd(cfg))
        for t in range(3):
            ref = enumerate_sgd(TINY_X, TINY_Y, TINY_W0, ALPHAS, b, t, o.momentum, o.nesterov, o.weight_decay,
                                sampler)
            for q, value in ref.items():
                assert lr.to_fraction(curves[q][0, t]) == value, (sampler, b, t, q)
                if sampler == "without_replacement":
                    poly = lr.polynomial(cfg, t, q)
                    assert poly["exact"] and poly["degree"] <= poly["degree_bound"]
                    at_b = sum(F(k) / F(b) ** j for j, k in enumerate(poly["coefficients"]))
                    assert at_b == value, (b, t, q)


def test_momentum_changes_the_numbers_and_the_float_recursion_agrees():
    """Not a no-op: heavy ball, Nesterov and weight decay give different exact values; the float64 curves of
    ``theory`` equal the exact ones to 1e-12."""
    seen = set()
    for name, opt in OPTIMIZERS.items():
        cfg = tiny(opt)
        exact = th.moment_curves(lr._problem(cfg, True), lr._w0(cfg, True),
                                 [lr.rational(a) for a in ALPHAS[:3]],
                                 np.array([lr.rational(th.noise_factor_exact(b, 5)) for b in cfg.batch_sizes], dtype=object),
                                 lr._sgd(cfg))
        floats = api.theory(cfg)["curves"]
        for q in ("var_g", "var_full_grad", "loss"):
            ex = np.array([[float(lr.to_fraction(v)) for v in row] for row in exact[q]])
            np.testing.assert_allclose(floats[q], ex, rtol=1e-12, atol=1e-15)
        seen.add(round(float(floats["loss"][1, 3]), 12))
    plain = api.theory(parse_config(tiny_config_json()))["curves"]["loss"][1, 3]
    assert len(seen | {round(float(plain), 12)}) == len(OPTIMIZERS) + 1


@pytest.mark.parametrize("plain", [{"name": "sgd"}, {"name": "sgd", "momentum": 0, "nesterov": False,
                                                     "weight_decay": "0"}, "sgd"])
def test_plain_field_is_todays_config_and_numbers(plain):
    """A plain optimizer field gives the config of today (no optimizer in to_json, so the same cache keys and URLs),
    and bitwise the same theory and replica numbers."""
    base, cfg = parse_config(tiny_config_json()), parse_config(tiny_config_json(optimizer=plain))
    assert "optimizer" not in base.to_json() and cfg.to_json() == base.to_json()
    assert lr.theory_key(cfg) == lr.theory_key(base)
    t0, t1 = lr.theory_curves(base, [1, 2, 5], 3), lr.theory_curves(cfg, [1, 2, 5], 3)
    for q in t0:
        assert np.array_equal(t0[q], t1[q])
    X, y, w0 = np.asarray(base.X, float), np.asarray(base.y, float), np.asarray(base.w0_values, float)
    args = (X, y, w0, base.lr.alphas(3), 2, 50, "without_replacement", 3, DEV, 0.3)
    r0 = engine.run_replicas(*args)
    r1 = engine.run_replicas(*args, optimizer=cfg.optimizer.build())
    for q in r0.curves:
        for stat in r0.curves[q]:
            assert np.array_equal(r0.curves[q][stat], r1.curves[q][stat], equal_nan=True)


def test_non_plain_optimizer_goes_through_json_and_keys():
    cfg = tiny(OPTIMIZERS["all"])
    assert cfg.to_json()["optimizer"] == {"name": "sgd", "momentum": "9/10", "nesterov": True, "weight_decay": "1/7"}
    assert parse_config(cfg.to_json()) == cfg
    assert lr.theory_key(cfg) != lr.theory_key(parse_config(tiny_config_json()))
    from backend.config import from_query, to_query
    assert OptimizerSpec.parse(from_query(to_query(cfg))["optimizer"], names=("sgd",)) == cfg.optimizer  # the URL


def _z(est, exact):
    se = np.sqrt(est["se"] ** 2 + (1e-9 * np.abs(exact)) ** 2)
    return (est["value"] - exact) / se


@pytest.mark.parametrize("name", ["heavy_ball", "nesterov", "weight_decay"])
@pytest.mark.parametrize("sampler", ["without_replacement", "with_replacement"])
def test_replicas_agree_with_exact_theory(name, sampler):
    """Graduate Admission, momentum 0.9 / Nesterov 0.6 / weight decay 1/3, 25 steps: |z| ≤ 4 for every quantity."""
    opt = {**OPTIMIZERS[name], "momentum": "0.9"} if name == "heavy_ball" else OPTIMIZERS[name]
    cfg = parse_config({"steps": 25, "sampler": sampler, "batch_sizes": [4], "optimizer": opt,
                        "lr": {"schedule": "inverse", "c": "1/4"}})
    exact = api.theory_curves(cfg, [4], cfg.steps)
    res = engine.run_replicas(np.asarray(cfg.X, float), np.asarray(cfg.y, float), lr._w0(cfg),
                              cfg.lr.alphas(cfg.steps), 4, 3000, sampler, 11, DEV,
                              float(th.noise_factor(4, cfg.n, sampler)), optimizer=cfg.optimizer.build())
    ts = [1, 2, 5, 12, 25]
    for q, ref in (("var_g", "var_g"), ("var_full_grad", "var_full_grad"), ("loss", "loss"), ("var_g_rb", "var_g")):
        zz = _z(res.curves[q], exact[ref][0])[ts]
        assert np.all(np.abs(zz) <= 4), (q, zz)
    assert res.diverged_at is None


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_engine_step_equals_torch_optim_sgd(name):
    """The engine's block of steps equals torch.optim.SGD on separate copies, one per replica, same batches, float64."""
    spec = OptimizerSpec.parse(OPTIMIZERS[name])
    X = torch.tensor([[float(v) for v in row] for row in TINY_X], dtype=torch.float64)
    y = torch.tensor([float(v) for v in TINY_Y], dtype=torch.float64)
    w0 = torch.tensor([float(v) for v in TINY_W0], dtype=torch.float64)
    n, p, b, R, S = 5, 3, 2, 4, 8
    gen = torch.Generator().manual_seed(0)
    idx = torch.stack([torch.stack([torch.randperm(n, generator=gen)[:b] for _ in range(R)]) for _ in range(S)])
    alpha = torch.tensor([0.3 / (s + 1) for s in range(S)], dtype=torch.float64)
    block = engine.StepBlock(S, R, p, torch.float64, DEV, include=True)
    block.W[0] = w0
    block.use_optimizer(spec.build())
    block.load(idx, alpha, static=False)
    block.steps(S, X, y, X.T @ X / n, X.T @ y / n, n, b)
    for r in range(R):
        w = w0.clone().requires_grad_(True)
        opt = torch.optim.SGD([w], lr=0.3, momentum=float(spec.momentum), nesterov=spec.nesterov,
                              weight_decay=float(spec.weight_decay))
        for s in range(S - 1):
            for group in opt.param_groups:
                group["lr"] = float(alpha[s])
            opt.zero_grad()
            B = idx[s, r]
            (0.5 * (X[B] @ w - y[B]).square().mean()).backward()
            torch.testing.assert_close(block.g[s, r], w.grad, rtol=1e-12, atol=1e-14)
            opt.step()
            torch.testing.assert_close(block.W[s + 1, r], w.detach(), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("opt, field", [
    ({"name": "sgd", "momentum": 1}, "optimizer.momentum"),
    ({"name": "sgd", "momentum": "-0.1"}, "optimizer.momentum"),
    ({"name": "sgd", "nesterov": True}, "optimizer.nesterov"),
    ({"name": "sgd", "momentum": "0.5", "nesterov": True, "weight_decay": "-1"}, "optimizer.weight_decay"),
    ({"name": "lion"}, "optimizer.name"),
    ({"name": "adam"}, "optimizer.name"),
    ({"name": "sgd", "momentum": "fast"}, "optimizer.momentum"),
    ({"name": "sgd", "betas": [0.9, 0.99]}, "optimizer.betas"),
])
def test_bad_optimizer_is_refused_in_one_line(opt, field, tmp_path):
    with pytest.raises(ConfigError) as err:
        parse_config(tiny_config_json(optimizer=opt))
    assert str(err.value).startswith(field)
    path = tmp_path / "c.json"
    path.write_text(json.dumps(tiny_config_json(optimizer=opt)))
    for command in (["theory"], ["simulate"])[: 2 if field == "optimizer.momentum" else 1]:
        out = subprocess.run([sys.executable, "-m", "backend", *command, str(path)], cwd=ROOT, capture_output=True,
                             text=True, timeout=300)
        assert out.returncode == 2, out.stderr
        assert out.stderr.startswith(f"error: {field}") and len(out.stderr.strip().splitlines()) == 1


# the deep linear network, the MLP and the sequence model take the optimizer field too: tests/test_momentum_replicas.py


# -- Theorems 1–2 with momentum, checked on the exact values for every b in [1, n] ------------------------------

@pytest.mark.parametrize("opt", [{"name": "sgd", "momentum": m} for m in ("0.5", "0.9", "0.99")]
                         + [{"name": "sgd", "momentum": "0.9", "nesterov": True},
                            {"name": "sgd", "momentum": "0.9", "weight_decay": "0.01"}])
@pytest.mark.parametrize("data", ["tiny", "graduate_admission"])
def test_theorems_1_2_hold_with_momentum(opt, data):
    """var(g_t), var(∇L(w_t)) and E L(w_t) are non-increasing in b at every t, every b in [1, n] (docs/theory.md §9)."""
    cfg = (parse_config(tiny_config_json(optimizer=opt, steps=30)) if data == "tiny"
           else parse_config({"steps": 200, "optimizer": opt, "lr": {"schedule": "inverse", "c": "1/10"}}))
    all_b = lr.theory_all_b(cfg)
    assert all(np.isfinite(v).all() for v in all_b["curves"].values())
    res = lr.check_monotone(cfg, all_b)
    for q, r in res.items():
        assert r["holds"], (q, r["first_violation"])
        assert r["checked_b"] == cfg.n


def test_cli_check_and_polynomial_with_momentum(tmp_path):
    """The CLI's check and polynomial read the optimizer field: Theorems 1–2 hold, the coefficients are exact and at
    b = 2 equal the enumeration at t = 2."""
    opt = OPTIMIZERS["nesterov"]
    path = tmp_path / "c.json"
    path.write_text(json.dumps(tiny_config_json(optimizer=opt)))

    def run(*args):
        out = subprocess.run([sys.executable, "-m", "backend", *args, str(path)], cwd=ROOT, capture_output=True,
                             text=True, timeout=300)
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout)

    assert all(r["holds"] and r["checked_b"] == 5 for r in run("check")["checks"].values())
    poly = run("polynomial", "--t", "2", "--quantity", "loss")
    assert poly["exact"] and poly["degree"] <= poly["degree_bound"] == 2
    ref = enumerate_sgd(TINY_X, TINY_Y, TINY_W0, ALPHAS, 2, 2, F(3, 5), True, F(0))["loss"]
    assert sum(F(k) / F(2) ** j for j, k in enumerate(poly["coefficients"])) == ref

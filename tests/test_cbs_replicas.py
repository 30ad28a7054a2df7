"""Replica branches of the critical batch size (backend/cbs.py, backend/engine/deep_linear_branch.py; docs/theory.md
§11): the deep linear network's branch losses against the scalar network's exact χ²-moment theory (checkpoint 0) and
against an independent numpy Monte Carlo of the same branching procedure with momentum (checkpoint > 0), |z| ≤ 4;
the k = 1 branch against the engine's own continuation of the reference run; ∇LᵀH∇L against autograd's Hessian;
B_simple and B_noise at t = 0 against autograd's per-sample gradients and Hessian; divergence; bad inputs in one line.
Depth 1 (plain linear regression) is not a deep-linear config (depth 2 to 4), so the exact-theory check is the scalar
network's. The numbers come out of ``cbs_rules`` / the CLI."""

import json
import math
import threading
from fractions import Fraction

import numpy as np
import pytest
import torch

from backend import api, cbs
from backend.__main__ import main
from backend.cache import ResultCache
from backend.config import parse_config
from backend.engine import deep_linear_branch as dlb
from backend.settings import deep_linear as dl

SCALAR = {"setting": "deep_linear", "dims": [1, 1, 1], "w0": [[["1/2"]], [["3/4"]]], "teacher": [[["1"]], [["1"]]],
          "lr": {"schedule": "constant", "c": "1/10"}, "steps": 8, "batch_sizes": [2, 4], "replicas": 6000,
          "seed": 3}


def _z(a, sa, b, sb=0.0):
    return (a - b) / math.hypot(sa, sb)


@pytest.fixture()
def cache(tmp_path):
    return ResultCache(tmp_path)


def test_scalar_branches_from_t0_match_exact_theory(cache):
    """From t_c = 0 a branch is a fresh constant-b run: E L after ⌊S/(kB)⌋ steps is the scalar network's exact
    polynomial in 1/b (backend/theory/deep_linear.py exact_scalar; t = 2 and 1 here) at α = α_0·f(k)."""
    config = parse_config(SCALAR)
    docs = cbs.cbs_rules(config, 2, [0], 5, ("none", "linear"), ks=[1, 2], cache=cache)
    zs, exact = [], {}
    for rule, doc in docs.items():
        assert doc["exact"] is False and doc["replicas"] == 6000
        for b, br in doc["checkpoints"][0]["branches"].items():
            lr = Fraction(1, 10) * (int(b) // 2 if rule == "linear" else 1)  # α_0·f(k), exactly
            assert br["lr"] == pytest.approx(float(lr))
            if (lr, br["steps"]) not in exact:
                exact_cfg = parse_config({**SCALAR, "lr": {"schedule": "constant", "c": str(lr)},
                                          "steps": br["steps"]})
                exact[lr, br["steps"]] = dl.exact_polynomials(exact_cfg, br["steps"])["loss"]
            value = dl.eval_inv_b(exact[lr, br["steps"]], np.array([int(b)]))[0]
            assert br["steps"] == 5 // int(b) and br["loss_se"] > 0
            zs.append(_z(br["loss"], br["loss_se"], value))
    assert len(zs) == 4 and max(abs(z) for z in zs) <= 4, zs


def _numpy_branch(w1, w2, v1, v2, lr, b, steps, beta, rng):
    for _ in range(steps):
        s = rng.chisquare(b, size=w1.shape) / b  # Σ̂ = χ²_b / b for scalar inputs
        r = w2 * w1 - 1.0
        g1, g2 = w2 * r * s, w1 * r * s
        v1, v2 = beta * v1 + g1, beta * v2 + g2
        w1, w2 = w1 - lr * v1, w2 - lr * v2
    return w1, w2, v1, v2


def test_branches_with_momentum_match_numpy_monte_carlo(cache):
    """Checkpoint 4 of an inverse schedule with heavy-ball momentum 0.5: the velocity carries over into the branch.
    An independent numpy Monte Carlo (its own generator, 40 000 runs) of the same procedure, |z| ≤ 4."""
    raw = {**SCALAR, "lr": {"schedule": "inverse", "c": "1/5"}, "optimizer": {"name": "sgd", "momentum": 0.5},
           "replicas": 4000}
    config = parse_config(raw)
    doc = cbs.cbs(config, 2, [4], 16, "linear", ks=[1, 2, 4], cache=cache)
    rng = np.random.default_rng(11)
    n = 40_000
    w1, w2 = np.full(n, 0.5), np.full(n, 0.75)
    alphas = config.lr.alphas(5)
    w1, w2, v1, v2 = w1, w2, np.zeros(n), np.zeros(n)
    for t in range(4):
        w1, w2, v1, v2 = _numpy_branch(w1, w2, v1, v2, alphas[t], 2, 1, 0.5, rng)
    row = doc["checkpoints"][0]
    ref_loss = 0.5 * (w2 * w1 - 1.0) ** 2
    assert abs(_z(row["loss"], row["loss_se"], ref_loss.mean(), ref_loss.std() / math.sqrt(n))) <= 4
    for b, br in row["branches"].items():
        k = int(b) // 2
        e1, e2, _, _ = _numpy_branch(w1, w2, v1, v2, alphas[4] * k, int(b), 16 // int(b), 0.5, rng)
        loss = 0.5 * (e2 * e1 - 1.0) ** 2
        assert br["lr"] == pytest.approx(alphas[4] * k)
        assert abs(_z(br["loss"], br["loss_se"], loss.mean(), loss.std() / math.sqrt(n))) <= 4, (b, br)


def test_k1_branch_is_the_reference_run_continued(cache):
    """With a constant schedule the k = 1 branch from t_c for s steps is the reference run at t_c + s: against the
    engine's own replica run (backend/engine/deep_linear.py, independent draws) of t_c + s steps, |z| ≤ 4."""
    raw = {"setting": "deep_linear", "dims": [2, 3, 2], "lr": {"schedule": "constant", "c": "1/20"}, "steps": 6,
           "batch_sizes": [2], "replicas": 3000, "seed": 5}
    config = parse_config(raw)
    br = cbs.cbs(config, 2, [3], 8, "none", ks=[1], cache=cache)["checkpoints"][0]["branches"]["2"]
    assert br["steps"] == 4
    sim = api.simulate(parse_config({**raw, "steps": 7, "seed": 9}), cache=cache)
    value, se = sim["curves"]["loss"]["value"][0, 7], sim["curves"]["loss"]["se"][0, 7]
    assert abs(_z(br["loss"], br["loss_se"], value, se)) <= 4


def test_hessian_form_against_autograd():
    gen = torch.Generator().manual_seed(0)
    Ws = [torch.randn((3, a, b), generator=gen, dtype=torch.float64) for a, b in ((4, 3), (5, 4), (2, 5))]
    Vs = [torch.randn(W.shape, generator=gen, dtype=torch.float64) for W in Ws]
    T = torch.randn((2, 3), generator=gen, dtype=torch.float64)
    got = dlb.hessian_form(Ws, T, Vs)
    for r in range(3):
        def loss(*ws):
            return 0.5 * ((ws[2] @ ws[1] @ ws[0] - T) ** 2).sum()
        _, hv = torch.autograd.functional.hvp(loss, tuple(W[r] for W in Ws), tuple(V[r] for V in Vs))
        want = sum((h * V[r]).sum() for h, V in zip(hv, Vs))
        assert float(got[r]) == pytest.approx(float(want), rel=1e-10)


def test_noise_scales_at_t0_against_autograd(cache):
    """At t = 0 every replica is at w0: B_simple = tr Σ/‖∇L‖² (closed form, SE 0) and B_noise = tr(HΣ)/∇LᵀH∇L (a
    Monte Carlo over x) against autograd's per-sample gradients of ½‖Δx‖² and autograd's Hessian, the expectation over
    x taken on 200 000 independent samples."""
    raw = {"setting": "deep_linear", "dims": [2, 3, 2], "steps": 2, "batch_sizes": [1], "replicas": 2000, "seed": 1}
    config = parse_config(raw)
    row = cbs.cbs(config, 1, [0], 4, ks=[1], cache=cache)["checkpoints"][0]
    W = [torch.as_tensor(np.asarray(M, dtype=np.float64)) for M in config.w0_values]
    T = [torch.as_tensor(np.asarray(M, dtype=np.float64)) for M in config.teacher_values]
    shapes = [w.shape for w in W]
    flat0 = torch.cat([w.reshape(-1) for w in W])

    def unflat(f):
        out, i = [], 0
        for s in shapes:
            out.append(f[i:i + s.numel()].reshape(s))
            i += s.numel()
        return out

    def pop(f):
        a, b = unflat(f)
        return 0.5 * ((b @ a - T[1] @ T[0]) ** 2).sum()

    def sample_loss(f, x):
        a, b = unflat(f)
        return 0.5 * (((b @ a - T[1] @ T[0]) @ x) ** 2).sum()

    H = torch.autograd.functional.hessian(pop, flat0)
    G = torch.func.grad(pop)(flat0)
    X = torch.randn((200_000, 2), generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    g = torch.vmap(torch.func.grad(sample_loss), in_dims=(None, 0))(flat0, X) - G
    tr_s = (g * g).sum(1)
    h_tr = ((g @ H) * g).sum(1)
    assert row["b_simple"] == pytest.approx(float(tr_s.mean() / (G @ G)), rel=0.02)
    assert row["b_simple_se"] == pytest.approx(0.0, abs=1e-9)
    want = float(h_tr.mean() / (G @ H @ G))
    want_se = float(h_tr.std() / math.sqrt(len(X)) / (G @ H @ G))
    assert abs(_z(row["b_noise"], row["b_noise_se"], want, want_se)) <= 4
    assert row["b_noise_se"] > 0 and row["loss"] == pytest.approx(float(pop(flat0)), rel=1e-12)


def test_diverged_branch_never_the_cbs(cache):
    raw = {**SCALAR, "lr": {"schedule": "constant", "c": "1"}, "replicas": 200}
    doc = cbs.cbs(parse_config(raw), 2, [0], 64, "linear", ks=[1, 8], cache=cache)
    row = doc["checkpoints"][0]
    assert row["branches"]["16"]["diverged"] and row["branches"]["16"]["diverged_replicas"] > 0
    assert row["cbs"] != 16


def test_cached_and_cli(cache, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("BATCHVAR_CACHE_DIR", str(tmp_path / "cli"))
    path = tmp_path / "c.json"
    path.write_text(json.dumps({**SCALAR, "replicas": 100}))
    assert main(["cbs", str(path), "--b-ref", "2", "--checkpoints", "0,3", "--samples", "8", "--ks", "1,2"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["exact"] is False and all("loss_se" in br for row in doc["checkpoints"]
                                         for br in row["branches"].values())
    assert all(row["b_noise_se"] is not None for row in doc["checkpoints"])


@pytest.mark.parametrize("change, args, option", [
    ({"batch_schedule": [[2, 4], [4, 4]]}, {}, "batch_schedule"),
    ({}, {"checkpoints": [9]}, "checkpoints"),
    ({}, {"b_ref": 0}, "b_ref"),
    ({}, {"samples": 1}, "samples"),
])
def test_bad_inputs_one_line(cache, change, args, option):
    raw = {k: v for k, v in {**SCALAR, **change}.items() if not (change and k == "batch_sizes"
                                                                  and "batch_schedule" in change)}
    if "batch_schedule" in change:
        raw.pop("steps")
    request = {"b_ref": 2, "checkpoints": [0], "samples": 8, **args}
    with pytest.raises(api.ConfigError) as e:
        cbs.cbs(parse_config(raw), request["b_ref"], request["checkpoints"], request["samples"], cache=cache)
    assert option in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("which", ["deep_linear", "mlp"])
def test_progress_advances_step_by_step_to_its_total(tmp_path, which):
    """The page's bar (a Progress given to cbs_rules): its total is the reference run's max t_c steps plus every
    branch's ⌊S/(kB)⌋, advanced once a step (more than once, in order) to that total; a cached run finishes it; the
    exact branches of linear regression finish it at once."""
    from test_cbs_functional import MLP

    raw = {**SCALAR, "replicas": 50} if which == "deep_linear" else {**MLP, "replicas": 2}
    config, B, cps, S, ks = parse_config(raw), 2, [0, 3], 16, [1, 2, 4]
    progress = api.Progress(total=1)
    seen: list[int] = []
    progress.on_advance = lambda units: seen.append(progress.done)
    cbs.cbs_rules(config, B, cps, S, ("none", "linear"), ks=ks, cache=ResultCache(tmp_path), progress=progress)
    assert progress.total == 3 + 8 + 4 + 2 and progress.done == progress.total
    assert seen == list(range(1, progress.total + 1))  # one unit a step, the bar moving before the end
    again = api.Progress(total=1)
    cbs.cbs_rules(config, B, cps, S, ("none", "linear"), ks=ks, cache=ResultCache(tmp_path), progress=again)
    assert again.fraction == 1.0 and again.done == again.total
    exact = api.Progress(total=7)
    cbs.cbs_rules(parse_config({"setting": "linear_regression"}), 1, [0, 2], 4, ("none",), ks=[1, 2],
                  progress=exact)
    assert exact.fraction == 1.0


@pytest.mark.parametrize("which", ["deep_linear", "mlp"])
def test_cancel_stops_the_replica_run_at_its_next_step_and_caches_nothing(tmp_path, which):
    """The page's Cancel (an Event given to cbs_rules): set after the 4th step, the run raises Cancelled at that
    step — not at its end (17 steps) — and nothing is cached; the same request then runs to its end and is cached.
    An Event already set stops it before its first step."""
    from test_cbs_functional import MLP

    from backend.errors import Cancelled

    raw = {**SCALAR, "replicas": 50} if which == "deep_linear" else {**MLP, "replicas": 2}
    config, B, cps, S, ks = parse_config(raw), 2, [0, 3], 16, [1, 2, 4]
    cache, cancel = ResultCache(tmp_path), threading.Event()
    progress = api.Progress(total=1)
    progress.on_advance = lambda units: cancel.set() if progress.done == 4 else None
    with pytest.raises(Cancelled):
        cbs.cbs_rules(config, B, cps, S, ("none",), ks=ks, cache=cache, progress=progress, cancel=cancel)
    assert progress.done == 4 and progress.total == 17 and len(cache) == 0
    done = api.Progress(total=1)
    doc = cbs.cbs_rules(config, B, cps, S, ("none",), ks=ks, cache=cache, progress=done, cancel=threading.Event())
    assert done.done == done.total == 17 and len(cache) == 1 and doc["none"]["checkpoints"][-1]["t"] == 3
    before = api.Progress(total=1)
    with pytest.raises(Cancelled):
        cbs.cbs_rules(config, B, cps, S, ("none",), ks=ks, cache=ResultCache(tmp_path / "other"), progress=before,
                      cancel=cancel)
    assert before.done == 0

"""Replicas with every optimizer (issue 24): the deep linear network with torch.optim.SGD's momentum, Nesterov and
weight decay, the MLP and the sequence model with the SGD family and Adam(W) — each engine against R separate
nn.Module copies with their own torch.optim instance on the same index (or sample) draws; the deep linear network's
exact values with momentum against an independent Monte Carlo and against its replicas; the field left out, or
plain, gives today's numbers bitwise; the refusals in one line naming the field; the estimates count the state."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from fractions import Fraction

import numpy as np
import pytest
import torch
from conftest import ROOT

from backend import api
from backend.engine.loop import RunSpec
from backend.cache import ResultCache
from backend.config import parse_config
from backend.engine import deep_linear as engine_deep
from backend.engine import linear_relu
from backend.engine import loop as engine_loop, mlp as engine_mlp
from backend.engine import sequence as seq
from backend.errors import ConfigError
from backend.images import load_dataset
from backend.optim import OptimizerSpec
from backend.settings import deep_linear as deep
from backend.settings import sequence as sequence_setting

DEV = torch.device("cpu")
SGD_FAMILY = {
    "heavy_ball": {"name": "sgd", "momentum": "0.9"},
    "nesterov": {"name": "sgd", "momentum": "0.6", "nesterov": True},
    "weight_decay": {"name": "sgd", "weight_decay": "0.3"},
    "all": {"name": "sgd", "momentum": "0.5", "nesterov": True, "weight_decay": "0.1"},
}
ADAM = {"adam": {"name": "adam", "betas": [0.8, 0.99], "eps": "1e-6", "weight_decay": "0.01"},
        "adamw": {"name": "adamw", "betas": [0.9, 0.95], "weight_decay": "0.05"}}


def torch_optimizer(raw: dict, params, lr: float) -> torch.optim.Optimizer:
    """The torch.optim instance an ``optimizer`` field names, written out from torch's own arguments."""
    spec = OptimizerSpec.parse(raw)
    if spec.name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=float(spec.momentum), nesterov=spec.nesterov,
                               weight_decay=float(spec.weight_decay))
    cls = torch.optim.Adam if spec.name == "adam" else torch.optim.AdamW
    return cls(params, lr=lr, betas=tuple(float(b) for b in spec.betas), eps=float(spec.eps),
               weight_decay=float(spec.weight_decay))


def set_lr(opt: torch.optim.Optimizer, lr: float) -> None:
    for group in opt.param_groups:
        group["lr"] = lr


# -- the deep linear network ------------------------------------------------------------------------------------

def recorded_draws(monkeypatch) -> list[torch.Tensor]:
    """Every factor Z of Σ̂_t = ZᵀZ/b the engine draws, in order (one per step of a one-chunk run)."""
    draws: list[torch.Tensor] = []
    real = engine_deep.SigmaSampler.draw_factor

    def spy(self):
        Z = real(self)
        draws.append(Z.clone())
        return Z

    monkeypatch.setattr(engine_deep.SigmaSampler, "draw_factor", spy)
    return draws


def deep_modules(W0, raw, R: int, lr: float):
    """R float64 nn.Sequential copies of the student (Linear layers without bias), each with its torch.optim."""
    out = []
    for _ in range(R):
        m = torch.nn.Sequential(*[torch.nn.Linear(W.shape[1], W.shape[0], bias=False) for W in W0]).double()
        with torch.no_grad():
            for layer, W in zip(m, W0):
                layer.weight.copy_(torch.as_tensor(W))
        out.append((m, torch_optimizer(raw, m.parameters(), lr)))
    return out


def product(m) -> torch.Tensor:
    P = m[0].weight
    for layer in list(m)[1:]:
        P = layer.weight @ P
    return P


@pytest.mark.parametrize("name, record_every, sampler, reduce_hidden", [
    ("heavy_ball", 1, "direct", False), ("nesterov", 3, "bartlett", False), ("weight_decay", 2, "direct", True),
    ("all", 3, "direct", True), ("all", 1, "bartlett", False)])
def test_deep_linear_engine_equals_torch_optim_sgd_on_module_copies(monkeypatch, name, record_every, sampler,
                                                                    reduce_hidden):
    """The engine's replicas (recorded steps and, with record_every > 1, the graph-ready step between them; on the
    full or the exactly reduced hidden widths) take torch.optim.SGD's steps on separate modules fed the same
    samples: the mean loss and the group-mean variances of g_t and ∇L(w_t) agree to float64 rounding."""
    cfg = parse_config({"setting": "deep_linear", "dims": [2, 6, 2], "steps": 6, "batch_sizes": [2],
                        "optimizer": SGD_FAMILY[name], "lr": {"schedule": "inverse", "c": "0.2"}})
    W0 = [np.asarray(M, dtype=np.float64) for M in cfg.w0_values]
    Tm = [np.asarray(M, dtype=np.float64) for M in cfg.teacher_values]
    T = torch.as_tensor(Tm[1] @ Tm[0])
    b, R, alphas = 2, 16, cfg.lr.alphas(cfg.steps)
    draws = recorded_draws(monkeypatch)
    res = engine_deep.run_replicas(W0, Tm, alphas, b, R, 3, DEV, torch.float64, sampler=sampler,
                                   record_every=record_every, reduce_hidden=reduce_hidden,
                                   optimizer=cfg.optimizer.build())
    assert len(draws) == cfg.steps + 1
    mods = deep_modules(W0, SGD_FAMILY[name], R, alphas[0])
    K = engine_deep.n_groups_equal(R)
    recorded = engine_deep.recorded_steps(cfg.steps, record_every)
    for t in range(cfg.steps + 1):
        grads, fulls, losses = [], [], []
        for r, (m, opt) in enumerate(mods):
            Z = draws[t][r]
            opt.zero_grad()
            (0.5 * (Z @ (product(m) - T).T).square().sum() / b).backward()  # ∇ = P Σ̂ R with Σ̂ = ZᵀZ/b
            grads.append(torch.cat([layer.weight.grad.flatten() for layer in m]))
            with torch.no_grad():
                delta = product(m) - T
                losses.append(0.5 * delta.square().sum())
            m.zero_grad()
            (0.5 * (product(m) - T).square().sum()).backward()
            fulls.append(torch.cat([layer.weight.grad.flatten() for layer in m]))
            for layer, g in zip(m, grads[-1].split([layer.weight.numel() for layer in m])):
                layer.weight.grad = g.reshape(layer.weight.shape).clone()
            if t < cfg.steps:
                set_lr(opt, alphas[t])
                opt.step()
        if t in recorded:
            i = recorded.index(t)
            g = torch.stack(grads).reshape(K, R // K, -1)
            f = torch.stack(fulls).reshape(K, R // K, -1)
            for q, x in (("var_g", g), ("var_full_grad", f)):
                want = float(x.var(dim=1, unbiased=True).sum(dim=1).mean())
                assert res.curves[q]["value"][i] == pytest.approx(want, rel=1e-9, abs=1e-14), (q, t)
            assert res.curves["loss"]["value"][i] == pytest.approx(float(torch.stack(losses).mean()), rel=1e-10)


def deep_mc(ws, ts, alpha, t, b, momentum, nesterov, weight_decay, M=400_000, seed=0):
    """Independent Monte Carlo of the scalar network with torch.optim.SGD's update written out (numpy): s = χ²_b/b
    each step; per sample var(g_t) = Σ_k var(c_k s_t) and L = ½Δ², with batch-means SEs over 100 groups."""
    rng = np.random.default_rng(seed)
    w = [np.full(M, float(Fraction(x))) for x in ws]
    v = [np.zeros(M) for _ in ws]
    target = float(np.prod([float(x) for x in ts]))

    def coeffs(w):
        delta = np.prod(w, axis=0) - target
        return [np.prod([w[j] for j in range(len(w)) if j != k], axis=0) * delta for k in range(len(w))], delta

    for _ in range(t):
        s = rng.chisquare(b, M) / b
        cs, _ = coeffs(w)
        d = [c * s + weight_decay * wk for c, wk in zip(cs, w)]
        v = [momentum * vk + dk for vk, dk in zip(v, d)]
        w = [wk - alpha * ((dk + momentum * vk) if nesterov else vk) for wk, dk, vk in zip(w, d, v)]
    cs, delta = coeffs(w)
    s = rng.chisquare(b, M) / b
    g = np.stack([c * s for c in cs])  # (d, M)
    groups = g.reshape(len(cs), 100, -1)
    var_groups = groups.var(axis=2, ddof=1).sum(axis=0)
    loss_groups = (0.5 * delta**2).reshape(100, -1).mean(axis=1)
    return {q: (x.mean(), x.std(ddof=1) / 10) for q, x in (("var_g", var_groups), ("loss", loss_groups))}


@pytest.mark.parametrize("name", list(SGD_FAMILY))
def test_scalar_network_exact_with_momentum_against_independent_monte_carlo(name):
    """The scalar network's exact values (the velocity carried through the polynomial recursion; t ≤ 2 here, t = 3
    takes a minute) agree with a numpy Monte Carlo of torch.optim.SGD's update (|z| ≤ 4), and differ from plain
    SGD's where they should."""
    raw = {"setting": "deep_linear", **deep.PRESETS["scalar network"], "batch_sizes": [32, 64], "steps": 2,
           "optimizer": SGD_FAMILY[name]}
    cfg = parse_config(raw)
    exact = api.theory(cfg)
    plain = api.theory(parse_config({**raw, "optimizer": {"name": "sgd"}}))
    o = cfg.optimizer
    for t in (1, 2):
        for j, b in enumerate(cfg.batch_sizes):
            mc = deep_mc(["1/2", "3/4"], [1, 1], 0.1, t, b, float(o.momentum), o.nesterov, float(o.weight_decay),
                         seed=100 * t + b)
            for q in ("var_g", "loss"):
                value, se = mc[q]
                assert abs(value - exact["curves"][q][j, t]) <= 4 * se, (q, t, b, value, se, exact["curves"][q][j, t])
    heavy_ball_only = name == "heavy_ball"
    assert np.array_equal(exact["curves"]["var_g"][:, 1], plain["curves"]["var_g"][:, 1]) == heavy_ball_only
    assert not np.allclose(exact["curves"]["var_g"][:, 2], plain["curves"]["var_g"][:, 2], rtol=1e-6)


def test_first_step_claims_exactly():
    """v_0 = 0 leaves w_1 unchanged for heavy ball (the t = 1 polynomials are plain SGD's, exactly); Nesterov's first
    step is (1 + β)α₀ g₀ (plain SGD's polynomials at α₀(1 + β)); weight decay changes t = 1; t = 0 never changes."""
    base = {"setting": "deep_linear", "dims": [2, 2, 2], "steps": 1, "lr": {"schedule": "constant", "c": "1/10"},
            "w0": [[["1/2", "1/3"], ["-1/4", "1"]], [["1", "0"], ["1/5", "-1/2"]]],
            "teacher": [[["1", "0"], ["0", "1"]], [["1/2", "1/2"], ["0", "1"]]]}
    poly = lambda raw, t: deep.exact_polynomials(parse_config(raw), t)  # noqa: E731
    plain = poly(base, 1)
    assert poly({**base, "optimizer": {"name": "sgd", "momentum": "9/10"}}, 1) == plain
    nesterov = poly({**base, "optimizer": {"name": "sgd", "momentum": "1/2", "nesterov": True}}, 1)
    assert nesterov == poly({**base, "lr": {"schedule": "constant", "c": "3/20"}}, 1) != plain
    assert poly({**base, "optimizer": {"name": "sgd", "weight_decay": "1/4"}}, 1) != plain
    for opt in SGD_FAMILY.values():
        assert poly({**base, "optimizer": opt}, 0) == poly(base, 0)
    assert deep.exact_method(parse_config({**base, "optimizer": SGD_FAMILY["all"]}), 1) == "real-Wishart matching rule"


@pytest.mark.parametrize("name", ["nesterov", "all"])
def test_deep_linear_exact_t1_with_momentum_against_replicas(name):
    """Exact t = 1 (real-Wishart rule on the SGD family's first step) against the replicas: |z| ≤ 4 per layer."""
    cfg = parse_config({"setting": "deep_linear", "dims": [2, 3, 2], "steps": 1, "batch_sizes": [2, 8],
                        "replicas": 20000, "optimizer": SGD_FAMILY[name], "w0": {"seed": 0, "scale": 0.7},
                        "teacher": {"seed": 1, "scale": 0.7}})
    exact = api.theory(cfg)
    sim = api.simulate(cfg, cache=ResultCache(tempfile.mkdtemp()))
    assert sim["meta"]["update"].startswith("torch.optim.SGD")
    for q in ("var_g_layer1", "var_g_layer2", "loss"):
        z = (sim["curves"][q]["value"] - exact["curves"][q]) / sim["curves"][q]["se"]
        assert np.all(np.abs(z[:, 1]) <= 4), (q, z)
    assert "w₁ is plain SGD's" in exact["optimizer_note"]


PLAIN_FIELDS = [{"name": "sgd"}, {"name": "sgd", "momentum": 0, "nesterov": False, "weight_decay": "0"}, "sgd"]


@pytest.mark.parametrize("plain", PLAIN_FIELDS)
def test_deep_linear_plain_field_is_todays_config_and_numbers(plain):
    raw = {"setting": "deep_linear", "dims": [2, 3, 2], "steps": 4, "batch_sizes": [1, 4], "replicas": 64,
           "record_every": 2}
    base, cfg = parse_config(raw), parse_config({**raw, "optimizer": plain})
    assert "optimizer" not in base.to_json() and cfg.to_json() == base.to_json() and api.estimate(cfg) == api.estimate(base)
    a = api.simulate(base, cache=ResultCache(tempfile.mkdtemp()))
    b = api.simulate(cfg, cache=ResultCache(tempfile.mkdtemp()))
    for q in a["curves"]:
        for stat, v in a["curves"][q].items():
            assert np.array_equal(v, b["curves"][q][stat], equal_nan=True), (q, stat)
    assert a["meta"]["update"].startswith("plain SGD")


def test_deep_linear_non_plain_goes_through_json_keys_and_the_estimate():
    cfg = parse_config({"setting": "deep_linear", "optimizer": SGD_FAMILY["all"]})
    assert cfg.to_json()["optimizer"] == {"name": "sgd", "momentum": "1/2", "nesterov": True, "weight_decay": "1/10"}
    assert parse_config(cfg.to_json()) == cfg and not cfg.exact  # random weights: floats
    plain = parse_config({"setting": "deep_linear"})
    assert api.estimate(cfg)["memory_bytes"] > api.estimate(plain)["memory_bytes"]
    assert api.estimate(cfg)["seconds"] > api.estimate(plain)["seconds"]


def test_diverged_replicas_with_momentum_do_not_disturb_the_others():
    """Some replicas diverge under heavy ball (zeroed with their velocity: a fixed point); the survivors' statistics
    do not depend on how often statistics are recorded, i.e. on which path (in place or masked) each step took."""
    cfg = parse_config({"setting": "deep_linear", "dims": [2, 3, 2], "steps": 30, "batch_sizes": [1],
                        "lr": {"schedule": "constant", "c": "0.05"}, "w0": {"seed": 0, "scale": 2},
                        "optimizer": {"name": "sgd", "momentum": "0.9"}})
    W0 = [np.asarray(M, dtype=np.float64) for M in cfg.w0_values]
    T = [np.asarray(M, dtype=np.float64) for M in cfg.teacher_values]
    run = lambda every: engine_deep.run_replicas(W0, T, cfg.lr.alphas(30), 1, 64, 0, DEV, record_every=every,  # noqa: E731
                                                 optimizer=cfg.optimizer.build())
    every, thin = run(1), run(5)
    steps = [0, 5, 10, 15, 20, 25, 30]
    assert 0 < every.diverged_replicas < 64 and every.finite_count[-1] > 1
    np.testing.assert_array_equal(thin.finite_count, every.finite_count[steps])
    for q in ("var_g", "var_g_layer1", "var_full_grad", "loss"):
        assert np.all(np.isfinite(every.curves[q]["value"]))
        np.testing.assert_allclose(thin.curves[q]["value"], every.curves[q]["value"][steps], rtol=1e-9, err_msg=q)


class StaticEager:
    """A stand-in for backend.engine.graphs.Replay that says it is enabled (so the engine loads each step's inputs
    into its static buffers, as for a CUDA graph) and runs the body eagerly: the graph's data path on a CPU."""

    def __init__(self, body, device, enabled=True):
        self.body, self.enabled, self.calls = body, True, 0

    def __call__(self):
        self.calls += 1
        self.body()


def test_deep_linear_static_buffers_give_the_same_numbers(monkeypatch):
    """With momentum, Nesterov and decay, the step between recorded steps run on the static buffers a CUDA graph
    replays (inputs copied in, velocity buffers allocated once per chunk) gives bitwise the eager numbers."""
    cfg = parse_config({"setting": "deep_linear", "dims": [3, 4, 2], "steps": 20, "optimizer": SGD_FAMILY["all"]})
    W0 = [np.asarray(M, dtype=np.float64) for M in cfg.w0_values]
    T = [np.asarray(M, dtype=np.float64) for M in cfg.teacher_values]
    args = (W0, T, cfg.lr.alphas(20), 2, 64, 5, DEV)
    eager = engine_deep.run_replicas(*args, record_every=7, optimizer=cfg.optimizer.build())
    monkeypatch.setattr(engine_deep, "Replay", StaticEager)
    static = engine_deep.run_replicas(*args, record_every=7, optimizer=cfg.optimizer.build())
    for q in eager.curves:
        for stat, v in eager.curves[q].items():
            assert np.array_equal(v, static.curves[q][stat], equal_nan=True), (q, stat)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA device")
@pytest.mark.parametrize("every, diverge", [(7, False), (5, True)])
def test_deep_linear_graph_with_momentum_gives_the_eager_numbers(monkeypatch, every, diverge):
    """On CUDA the captured step with the optimizer (static velocity buffers) replays to the eager numbers bitwise."""
    replays = {"n": 0}
    original = torch.cuda.CUDAGraph.replay
    monkeypatch.setattr(torch.cuda.CUDAGraph, "replay",
                        lambda self: (replays.__setitem__("n", replays["n"] + 1), original(self))[1])
    over = {"setting": "deep_linear", "dims": [3, 4, 2], "steps": 40, "optimizer": SGD_FAMILY["all"]}
    if diverge:
        over.update({"dims": [2, 3, 2], "lr": {"schedule": "constant", "c": "0.05"}, "w0": {"seed": 0, "scale": 2},
                     "optimizer": SGD_FAMILY["heavy_ball"]})
    cfg = parse_config(over)
    W0 = [np.asarray(M, dtype=np.float64) for M in cfg.w0_values]
    T = [np.asarray(M, dtype=np.float64) for M in cfg.teacher_values]
    args = (W0, T, cfg.lr.alphas(40), 1 if diverge else 2, 64, 0, torch.device("cuda"))
    eager = engine_deep.run_replicas(*args, record_every=every, cuda_graph=False, optimizer=cfg.optimizer.build())
    graph = engine_deep.run_replicas(*args, record_every=every, cuda_graph=True, optimizer=cfg.optimizer.build())
    assert replays["n"] > 0
    for q in eager.curves:
        for stat, v in eager.curves[q].items():
            assert np.array_equal(v, graph.curves[q][stat], equal_nan=True), (q, stat)
    assert (eager.diverged_at is not None) == diverge


# -- the MLP and the sequence model: the generic replica trainer -------------------------------------------------

def record_training_draws(monkeypatch, module, name: str) -> list[torch.Tensor]:
    """The index draws of the training sampler (``name``; the probe's sampler is another), in step order."""
    draws: list[torch.Tensor] = []
    real = module.make_sampler

    def make(sampler_name, *args, **kw):
        s = real(sampler_name, *args, **kw)
        if sampler_name == name:
            block = s.draw_block

            def spy(k):
                out = block(k)
                draws.extend(d.idx.clone() for d in out)
                return out

            s.draw_block = spy
        return s

    monkeypatch.setattr(module, "make_sampler", make)
    return draws


def run_and_capture(task, K, R, epochs, lr_fn, b, seed=0, noise=8, eval_size=40):
    """run_batch_size, returning the parameters at every epoch's end (its checkpoints)."""
    saved = []
    spec = RunSpec.for_epochs(task.Xtr.shape[0], epochs, b, K=K, R=R, lr=lr_fn, sampler="epoch_reshuffle", seed=seed,
                              device=DEV, noise_samples=noise, checkpoint=lambda state: saved.append(state))
    out = engine_mlp.run_batch_size(task, spec, 1, eval_size)
    return out, saved


def step_copies(modules, X, Y, draws, lr_fn, clip=None) -> None:
    for t, idx in enumerate(draws):
        for r, (m, opt) in enumerate(modules):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(m(X[idx[r]]), Y[idx[r]]).backward()
            if clip is not None:
                torch.nn.utils.clip_grad_norm_(m.parameters(), clip)
            set_lr(opt, lr_fn(t))
            opt.step()


def assert_copies(saved_params: dict, modules, rtol: float) -> None:
    for r, (m, _) in enumerate(modules):
        for name, p in m.named_parameters():
            np.testing.assert_allclose(saved_params[name][r], p.detach().numpy(), rtol=rtol, atol=rtol * 1e-2,
                                       err_msg=f"{name}[{r}]")


@pytest.mark.parametrize("name", ["heavy_ball", "adam"])  # the sequence model's test takes "all" and "adamw"
def test_mlp_engine_equals_torch_optim_on_module_copies(monkeypatch, name):
    """The MLP trainer with momentum / Nesterov + decay / Adam / AdamW (linear_relu.batch_grads + backend/optim.py)
    takes the steps of torch.optim on separate nn.Module copies, each replica on its own recorded batches, a changing
    α_t; float64, two epochs of 4 steps; the fused plain stepper is not used."""
    raw = {**SGD_FAMILY, **ADAM}[name]
    data = load_dataset({"name": "digits", "train_size": 48})
    hidden, K, R, b = (7,), 2, 2, 12
    spec = OptimizerSpec.parse(raw)
    task = engine_mlp.mlp_task(data, hidden, 0, torch.float64, DEV, None, spec.build())
    calls = {"n": 0}
    monkeypatch.setattr(linear_relu, "sgd_step", lambda *a, **k: calls.__setitem__("n", calls["n"] + 1))
    draws = record_training_draws(monkeypatch, engine_loop, "epoch_reshuffle")
    lr_fn = (lambda t: 0.2 / (1 + t)) if spec.name == "sgd" else (lambda t: 0.01 / (1 + t))
    _, saved = run_and_capture(task, K, R, 2, lr_fn, b)
    assert calls["n"] == 0 and len(draws) == 2 * (48 // b) and len(saved) == 2
    params0 = task.init(K)
    modules = []
    for r in range(K * R):
        m = engine_mlp.make_model(64, hidden, 10).double()
        with torch.no_grad():
            for pname, p in m.named_parameters():
                p.copy_(params0[pname][r // R])
        modules.append((m, torch_optimizer(raw, m.parameters(), lr_fn(0))))
    step_copies(modules, task.Xtr, task.Ytr, draws[:4], lr_fn)
    assert_copies(saved[0]["params"], modules, 1e-9 if spec.name == "sgd" else 1e-7)
    step_copies(modules, task.Xtr, task.Ytr, draws[4:], lambda t: lr_fn(t + 4))
    assert_copies(saved[1]["params"], modules, 1e-9 if spec.name == "sgd" else 1e-7)
    assert set(saved[1]["opt"]) == set(spec.build().init(params0))  # the state is checkpointed


@pytest.mark.parametrize("dtype,rtol", [(torch.float64, 1e-10), (torch.float32, 1e-5)])
@pytest.mark.parametrize("name", ["heavy_ball", "nesterov_decay", "adam"])
@pytest.mark.parametrize("chunk", [False, True])
def test_mlp_explicit_gradients_take_the_vmap_grad_steps(monkeypatch, name, dtype, rtol, chunk):
    """With an optimizer the MLP's step takes linear_relu.batch_grads (no vmap(grad) in the training steps: only the
    epochs' probe gradients call it): the weights and the optimizer state after two epochs equal those of the
    vmap(grad) step (the task without batch_grads) to rounding, in float64 and float32, all replicas in one call or
    in blocks of 2 (their activations over ACTIVATION_ELEMENTS)."""
    import dataclasses

    from backend.engine.replicas import Replicas

    raw = {**SGD_FAMILY, **ADAM}[name] if name != "nesterov_decay" else {"name": "sgd", "momentum": 0.9,
                                                                          "nesterov": True, "weight_decay": 0.01}
    data = load_dataset({"name": "digits", "train_size": 48})
    task = engine_mlp.mlp_task(data, (7,), 0, dtype, DEV, None, OptimizerSpec.parse(raw).build())
    if chunk:
        monkeypatch.setattr(engine_mlp, "ACTIVATION_ELEMENTS", 2 * 12 * task.act_per_sample)
    calls = {"n": 0}
    real = Replicas.grad_and_loss
    monkeypatch.setattr(Replicas, "grad_and_loss",
                        lambda self, *a: (calls.__setitem__("n", calls["n"] + 1), real(self, *a))[1])
    lr_fn = (lambda t: 0.2 / (1 + t)) if raw["name"] == "sgd" else (lambda t: 0.01 / (1 + t))
    _, fast = run_and_capture(task, 2, 2, 2, lr_fn, 12)
    assert calls["n"] == 3  # the probe at epochs 0, 1, 2
    _, slow = run_and_capture(dataclasses.replace(task, batch_grads=None), 2, 2, 2, lr_fn, 12)
    assert calls["n"] == 3 + 3 + 2 * (48 // 12)
    for part in ("params", "opt"):
        for k, v in slow[-1][part].items():
            np.testing.assert_allclose(fast[-1][part][k], v, rtol=rtol, atol=rtol * np.abs(v).max(), err_msg=k)
    assert not np.allclose(fast[-1]["params"]["0.weight"], task.init(2)["0.weight"].repeat_interleave(2, 0))


MLP_TINY = {"setting": "mlp", "epochs": 2, "inits": 2, "replicas": 3, "hidden": [8],
            "dataset": {"name": "digits", "train_size": 64}, "batch_sizes": [16], "noise_samples": 16,
            "eval_size": 40}


def test_mlp_plain_field_keeps_the_fused_held_path_and_todays_numbers(monkeypatch):
    """Plain SGD, the field left out or given, steps through the fused Linear–ReLU stepper (the held low-rank updates
    where they apply) with bitwise the same statistics; momentum leaves it (and the meta says which path ran)."""
    calls = {"n": 0}
    real = linear_relu.sgd_step

    def counted(*args):
        calls["n"] += 1
        return real(*args)

    monkeypatch.setattr(linear_relu, "sgd_step", counted)
    base = parse_config(MLP_TINY)
    for plain in PLAIN_FIELDS:
        cfg = parse_config({**MLP_TINY, "optimizer": plain})
        assert "optimizer" not in base.to_json() and cfg.to_json() == base.to_json()
        assert api.estimate(cfg) == api.estimate(base)
    cfg = parse_config({**MLP_TINY, "optimizer": PLAIN_FIELDS[1]})  # every default written out
    a = api.simulate(base, cache=ResultCache(tempfile.mkdtemp()))
    b = api.simulate(cfg, cache=ResultCache(tempfile.mkdtemp()))
    assert calls["n"] == 2 * 2 * (64 // 16)
    for q in engine_mlp.ESTIMATED:
        assert np.array_equal(a["curves"][q]["value"], b["curves"][q]["value"], equal_nan=True), q
    assert "held" in a["meta"]["update"]
    mom = api.simulate(parse_config({**MLP_TINY, "optimizer": SGD_FAMILY["heavy_ball"]}),
                       cache=ResultCache(tempfile.mkdtemp()))
    assert calls["n"] == 2 * 2 * (64 // 16) and "explicit Linear–ReLU backward" in mom["meta"]["update"]
    assert not np.allclose(mom["curves"]["loss_train"]["value"], a["curves"]["loss_train"]["value"])


def test_mlp_with_adam_resumes_from_its_checkpoint_to_the_uninterrupted_result(tmp_path):
    """A cancelled Adam run resumes with its moments (checkpointed beside the weights): the result is the
    uninterrupted run's (fresh moments would take other steps)."""
    import threading

    from backend.errors import Cancelled
    from backend.settings import classifier

    cfg = parse_config({**MLP_TINY, "epochs": 3, "optimizer": ADAM["adam"], "lr": {"schedule": "constant",
                                                                                   "c": "0.01"}})
    full = api.simulate(cfg, cache=ResultCache(tmp_path / "a"))
    cache, cancel, progress = ResultCache(tmp_path / "b"), threading.Event(), api.Progress()
    per_epoch = cfg.inits * cfg.replicas * (cfg.n_train // 16)
    progress.on_advance = lambda units: cancel.set() if progress.done == 2 * per_epoch else None
    with pytest.raises(Cancelled):
        api.simulate(cfg, progress=progress, cancel=cancel, cache=cache)
    assert classifier.cached_checkpoint_epoch(cfg, DEV, cache) == {16: 2}
    resumed = api.simulate(cfg, cache=cache)
    assert resumed["meta"]["per_b"][0]["resumed_from_epoch"] == 2
    for q in ("var_g", "loss_train", "error_val"):
        np.testing.assert_allclose(resumed["curves"][q]["value"], full["curves"][q]["value"], rtol=1e-6, err_msg=q)


def test_mlp_estimate_counts_the_optimizer_state():
    mem = {n: api.estimate(parse_config({**MLP_TINY, "optimizer": o}))["memory_bytes"]
           for n, o in (("plain", {"name": "sgd"}), ("weight_decay", SGD_FAMILY["weight_decay"]),
                        ("heavy_ball", SGD_FAMILY["heavy_ball"]), ("adam", ADAM["adam"]))}
    assert mem["plain"] < mem["weight_decay"] < mem["heavy_ball"] < mem["adam"]
    P = 64 * 8 + 8 + 8 * 10 + 10
    assert mem["adam"] - mem["heavy_ball"] == pytest.approx(4.0 * 6 * P)  # one more state tensor, 6 replicas


SEQ_TINY = {"setting": "sequence", "max_len": 8, "vocab": 60, "layers": 1, "heads": 2, "width": 8, "inits": 1,
            "replicas": 2, "epochs": 1, "batch_sizes": [200], "noise_samples": 8, "eval_size": 40, "dtype": "float64"}


@pytest.mark.parametrize("name", ["all", "adamw"])
def test_sequence_engine_equals_torch_optim_on_module_copies(monkeypatch, name):
    """The sequence model with the named optimizer field (per-replica clipping first) takes the steps of
    clip_grad_norm_ + torch.optim on separate Encoder copies on the same batches, with warm-up then decay."""
    raw = {**SGD_FAMILY, **ADAM}[name]
    lr = 0.05 if raw["name"] == "sgd" else 0.005
    cfg = parse_config({**SEQ_TINY, "optimizer": {**raw, "lr": lr, "warmup": 2, "clip": "0.5"}})
    task, vocab = sequence_setting.build_task(cfg, DEV)
    steps = cfg.n_train // 200
    lr_fn = lambda t: seq.lr_at(t, lr, 2, steps)  # noqa: E731
    draws = record_training_draws(monkeypatch, engine_loop, "epoch_reshuffle")
    _, saved = run_and_capture(task, 1, 2, 1, lr_fn, 200)
    assert len(draws) == steps >= 3
    params0 = task.init(1)
    modules = []
    for r in range(2):
        m = seq.Encoder(vocab, cfg.max_len, cfg.width, cfg.heads, cfg.layers).double()
        with torch.no_grad():
            for pname, p in m.named_parameters():
                p.copy_(params0[pname][0])
        modules.append((m, torch_optimizer(raw, m.parameters(), lr_fn(0))))
    step_copies(modules, task.Xtr, task.Ytr, draws, lr_fn, clip=0.5)
    assert_copies(saved[0]["params"], modules, 1e-8 if raw["name"] == "sgd" else 1e-6)


def test_sequence_adamw_fields_and_the_named_form_are_one_config_and_the_same_numbers():
    """Old configs (the AdamW fields) keep loading with today's JSON; {"name": "adamw"} with the same numbers is the
    same config (one cache key) and runs bitwise the same; SGD and Adam keep the named form with lr, warmup, clip."""
    old = parse_config({**SEQ_TINY, "dtype": "float32", "optimizer": {"lr": "0.001", "beta1": "0.8"}})
    assert old.to_json()["optimizer"] == {"lr": 0.001, "eps": 1e-8, "beta1": 0.8, "beta2": 0.999, "weight_decay": 0.0,
                                          "warmup": 5, "clip": 1.0}
    named = parse_config({**SEQ_TINY, "dtype": "float32",
                          "optimizer": {"name": "adamw", "lr": "0.001", "betas": ["0.8", "0.999"]}})
    assert named == old and named.to_json() == old.to_json()
    a = api.simulate(old, cache=ResultCache(tempfile.mkdtemp()))
    b = api.simulate(parse_config({**SEQ_TINY, "dtype": "float32",
                                   "optimizer": {"name": "adamw", "lr": 0.001, "betas": [0.8, 0.999]}}),
                     cache=ResultCache(tempfile.mkdtemp()))
    for q in engine_mlp.ESTIMATED:
        if q in a["curves"]:
            assert np.array_equal(a["curves"][q]["value"], b["curves"][q]["value"], equal_nan=True), q
    sgd = parse_config({**SEQ_TINY, "optimizer": {"name": "sgd", "momentum": "0.9", "lr": "0.05"}})
    assert sgd.to_json()["optimizer"] == {"name": "sgd", "momentum": "9/10", "nesterov": False, "weight_decay": "0",
                                          "lr": 0.05, "warmup": 5, "clip": 1.0}
    assert parse_config(sgd.to_json()) == sgd
    adam = parse_config({**SEQ_TINY, "optimizer": {"name": "adam"}})
    assert api.estimate(adam)["memory_bytes"] > api.estimate(sgd)["memory_bytes"]
    assert api.estimate(parse_config(SEQ_TINY)) == api.estimate(named.replace(dtype="float64"))


# -- refusals: one line naming the field --------------------------------------------------------------------------

@pytest.mark.parametrize("setting, opt, field", [
    ("deep_linear", {"name": "adam"}, "optimizer.name"),
    ("deep_linear", {"name": "adamw", "betas": [0.9, 0.99]}, "optimizer.name"),
    ("deep_linear", {"name": "sgd", "momentum": 1}, "optimizer.momentum"),
    ("deep_linear", {"name": "sgd", "nesterov": True}, "optimizer.nesterov"),
    ("mlp", {"name": "sgd", "weight_decay": "-0.1"}, "optimizer.weight_decay"),
    ("mlp", {"name": "adam", "betas": [0.9, 1.0]}, "optimizer.betas[1]"),
    ("mlp", {"name": "lion"}, "optimizer.name"),
    ("mlp", {"name": "sgd", "momentum": "fast"}, "optimizer.momentum"),
    ("sequence", {"name": "sgd", "beta1": "0.9"}, "optimizer.beta1"),
    ("sequence", {"momentum": "0.9"}, "optimizer.momentum"),
    ("sequence", {"name": "adam", "lr": "-1"}, "optimizer.lr"),
    ("sequence", {"name": "no_such_optimizer"}, "optimizer.name"),
    ("sequence", {"name": ["adam"]}, "optimizer.name"),
])
def test_bad_optimizer_is_refused_in_one_line(setting, opt, field, tmp_path):
    with pytest.raises(ConfigError) as err:
        parse_config({"setting": setting, "optimizer": opt})
    assert str(err.value).startswith(field), str(err.value)
    if opt.get("name") == "adam" and setting == "deep_linear":
        path = tmp_path / "c.json"
        path.write_text(json.dumps({"setting": setting, "optimizer": opt}))
        out = subprocess.run([sys.executable, "-m", "backend", "simulate", str(path)], cwd=ROOT, capture_output=True,
                             text=True, timeout=300)
        assert out.returncode == 2 and out.stderr.startswith(f"error: {field}")
        assert len(out.stderr.strip().splitlines()) == 1

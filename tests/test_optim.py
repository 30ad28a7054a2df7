"""backend/optim.py: every optimizer over stacked replicas against torch.optim on R separate parameter copies, the
plain update bitwise, the state as static buffers, and the reader of the ``optimizer`` field."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
import torch

from backend import optim
from backend.errors import ConfigError

R, STEPS = 4, 10
SHAPES = {"layer.weight": (3, 5), "layer.bias": (5,), "scale": (1,)}
LRS = [0.05, 0.1, 0.02, 0.2, 0.07, 0.15, 0.01, 0.3, 0.05, 0.12]  # varying step sizes, one per step


def problem(dtype=torch.float64):
    """Initial stacked weights (R, …), per-element curvatures and per-step noises of a separable loss whose
    gradient g(w) = a·w + 0.1·w³ + ξ_t is elementwise, so the stack and each replica's slice get the same bits."""
    gen = torch.Generator().manual_seed(3)
    w0 = {k: torch.randn((R, *s), generator=gen, dtype=dtype) for k, s in SHAPES.items()}
    a = {k: torch.rand((R, *s), generator=gen, dtype=dtype) * 2 + 0.1 for k, s in SHAPES.items()}
    xi = [{k: torch.randn((R, *s), generator=gen, dtype=dtype) * 0.5 for k, s in SHAPES.items()} for _ in range(STEPS)]
    return w0, a, xi


def grad(w: torch.Tensor, a: torch.Tensor, xi: torch.Tensor) -> torch.Tensor:
    return a * w + 0.1 * (w * w * w) + xi


def torch_optimizer(raw: dict, params: list[torch.nn.Parameter]) -> torch.optim.Optimizer:
    """The torch.optim instance that ``raw`` (an ``optimizer`` field) names, written out by hand."""
    name = raw.get("name", "sgd")
    if name == "sgd":
        return torch.optim.SGD(params, lr=1.0, momentum=float(raw.get("momentum", 0)),
                               nesterov=bool(raw.get("nesterov", False)),
                               weight_decay=float(raw.get("weight_decay", 0)))
    cls = torch.optim.Adam if name == "adam" else torch.optim.AdamW
    return cls(params, lr=1.0, betas=tuple(float(b) for b in raw["betas"]), eps=float(raw["eps"]),
               weight_decay=float(raw.get("weight_decay", 0)))


def run_stacked(opt: optim.Optimizer, w0, a, xi, lrs=LRS):
    params = {k: v.clone() for k, v in w0.items()}
    state = opt.init(params)
    for t, lr in enumerate(lrs):
        params = opt.step(params, {k: grad(params[k], a[k], xi[t][k]) for k in params}, state, lr, t)
    return params, state


def run_torch(raw: dict, clip: float | None, w0, a, xi) -> list[dict[str, torch.Tensor]]:
    """R independent copies, each with its own torch.optim instance (and clip_grad_norm_ when ``clip``)."""
    out = []
    for r in range(R):
        ps = {k: torch.nn.Parameter(v[r].clone()) for k, v in w0.items()}
        o = torch_optimizer(raw, list(ps.values()))
        for t, lr in enumerate(LRS):
            for k, p in ps.items():
                p.grad = grad(p.detach(), a[k][r], xi[t][k][r])
            if clip is not None:
                torch.nn.utils.clip_grad_norm_(list(ps.values()), clip)
            for group in o.param_groups:
                group["lr"] = lr
            o.step()
        out.append({k: p.detach() for k, p in ps.items()})
    return out


CASES = [
    ({"name": "sgd"}, None),
    ({"name": "sgd", "momentum": "0.9"}, None),
    ({"name": "sgd", "momentum": "0.9", "nesterov": True}, None),
    ({"name": "sgd", "weight_decay": "0.05"}, None),
    ({"name": "sgd", "momentum": "0.5", "nesterov": True, "weight_decay": "0.05"}, None),
    ({"name": "sgd", "momentum": "0.9"}, 0.5),
    ({"name": "adam", "betas": ["0.8", "0.99"], "eps": "1e-8"}, None),
    ({"name": "adam", "betas": ["0.9", "0.999"], "eps": "1e-6", "weight_decay": "0.1"}, None),
    ({"name": "adamw", "betas": ["0.8", "0.99"], "eps": "1e-8"}, None),
    ({"name": "adamw", "betas": ["0.9", "0.999"], "eps": "1e-8", "weight_decay": "0.1"}, None),
    ({"name": "adamw", "betas": ["0.9", "0.999"], "eps": "1e-8", "weight_decay": "0.01"}, 0.5),
    ({"name": "sgd", "momentum": "0.5", "nesterov": True, "weight_decay": "0.05"}, 0.5),  # clip → decay → Nesterov
    ({"name": "adam", "betas": ["0.9", "0.999"], "eps": "1e-8", "weight_decay": "0.1"}, 0.5),  # clip → L2 → Adam
]


@pytest.mark.parametrize("raw,clip", CASES, ids=[f"{c[0]}-clip{c[1]}" for c in CASES])
def test_equals_torch_optim_on_separate_copies(raw, clip):
    w0, a, xi = problem()
    params, _ = run_stacked(optim.OptimizerSpec.parse(raw).build(clip=clip), w0, a, xi)
    reference = run_torch(raw, clip, w0, a, xi)
    moved = max(float((params[k] - w0[k]).abs().max()) for k in params)
    assert moved > 0.1  # the steps did something: a wrong rule would be far off
    for r in range(R):
        for k in params:
            torch.testing.assert_close(params[k][r], reference[r][k], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("raw", [c[0] for c in CASES if c[1] is None], ids=str)
def test_state_tensors_count_what_torch_optim_keeps(raw):
    """``OptimizerSpec.state_tensors`` (the cost models' count) is the number of parameter-shaped tensors that
    torch.optim keeps per parameter after a step (SGD's momentum_buffer, Adam's exp_avg and exp_avg_sq)."""
    p = torch.nn.Parameter(torch.ones(3, 2, dtype=torch.float64))
    o = torch_optimizer(raw, [p])
    p.grad = torch.full_like(p, 0.5)
    o.step()
    kept = [v for v in o.state[p].values() if isinstance(v, torch.Tensor) and v.shape == p.shape]
    kept = [v for v in kept if v.abs().sum() > 0]  # torch keeps momentum_buffer=None for plain SGD
    assert optim.OptimizerSpec.parse(raw).state_tensors == len(kept)


def test_clipping_bites_in_the_clipped_cases():
    """clip = 0.5 is below every replica's gradient norm at the start, so the clipped cases test clipping."""
    w0, a, xi = problem()
    sq = sum(grad(w0[k], a[k], xi[0][k]).reshape(R, -1).square().sum(1) for k in w0)
    assert bool((sq.sqrt() > 0.5).all())


def test_plain_sgd_is_w_minus_alpha_g_bitwise():
    w0, a, xi = problem(torch.float32)
    opt = optim.OptimizerSpec.parse({"name": "sgd", "momentum": 0, "weight_decay": 0}).build()
    assert opt.plain and optim.OptimizerSpec.parse(None).plain
    params, state = run_stacked(opt, w0, a, xi)
    assert state == {}
    w = dict(w0)
    for t, lr in enumerate(LRS):
        w = {k: torch.add(w[k], grad(w[k], a[k], xi[t][k]), alpha=-lr) for k in w}
    for k in w:
        assert torch.equal(params[k], w[k])
    assert not optim.sgd(momentum=0.9).plain and not optim.sgd(weight_decay=0.1).plain and not optim.adam().plain


@pytest.mark.parametrize("opt", [optim.sgd(0.9, True, 0.01), optim.adamw((0.9, 0.99), 1e-8, 0.1)],
                         ids=["sgd", "adamw"])
def test_step_size_as_a_device_tensor_and_state_in_place(opt):
    """A 0-dim tensor α gives the float path's numbers; parameters and state keep their storage (static buffers)."""
    w0, a, xi = problem()
    expected, _ = run_stacked(opt, w0, a, xi)
    params = {k: v.clone() for k, v in w0.items()}
    state = opt.init(params)
    storage = {k: v.data_ptr() for k, v in (*params.items(), *state.items())}
    lr = torch.zeros((), dtype=torch.float64)
    for t, value in enumerate(LRS):
        lr.fill_(value)
        out = opt.step(params, {k: grad(params[k], a[k], xi[t][k]) for k in params}, state, lr, t)
        assert out is params
    assert {k: v.data_ptr() for k, v in (*params.items(), *state.items())} == storage
    for k in params:
        torch.testing.assert_close(params[k], expected[k], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("opt", [optim.sgd(0.9, True), optim.adam(weight_decay=0.1)], ids=["sgd", "adam"])
def test_state_survives_a_checkpoint(opt):
    """Half the steps, the state through numpy (as a checkpoint stores it), the other half: the same bits."""
    w0, a, xi = problem()
    whole, _ = run_stacked(opt, w0, a, xi)
    params = {k: v.clone() for k, v in w0.items()}
    state = opt.init(params)
    for t in range(STEPS):
        if t == STEPS // 2:
            saved = {k: v.numpy().copy() for k, v in state.items()}, {k: v.numpy().copy() for k, v in params.items()}
            state = {k: torch.tensor(v) for k, v in saved[0].items()}
            params = {k: torch.tensor(v) for k, v in saved[1].items()}
            assert all(isinstance(v, np.ndarray) for v in saved[0].values())
        params = opt.step(params, {k: grad(params[k], a[k], xi[t][k]) for k in params}, state, LRS[t], t)
    for k in params:
        assert torch.equal(params[k], whole[k])


def test_one_optimizer_over_the_stack_is_per_replica():
    """Replica r's trajectory does not depend on the other replicas (clipping's norm is per replica)."""
    w0, a, xi = problem()
    opt = optim.adamw(weight_decay=0.1, clip=0.5)
    full, _ = run_stacked(opt, w0, a, xi)
    pick = lambda d: {k: v[1:3].clone() for k, v in d.items()}  # noqa: E731
    part, _ = run_stacked(opt, pick(w0), pick(a), [pick(x) for x in xi])
    for k in full:
        assert torch.equal(full[k][1:3], part[k])


@pytest.mark.parametrize("name", optim.NAMES)
def test_every_registered_optimizer_parses_builds_and_round_trips(name):
    """Each FAMILIES entry has its branches in OptimizerSpec: its probe (every hyperparameter off its default) and
    its bare name parse, build a chain and come back from to_json unchanged; its widget fields are its JSON's."""
    family = optim.FAMILIES[name]
    for raw in (family.probe, {"name": name}):
        spec = optim.OptimizerSpec.parse(raw)
        assert spec.name == name and optim.OptimizerSpec.parse(spec.to_json()) == spec
        assert isinstance(spec.build(), optim.Optimizer)
        assert set(family.fields) == set(spec.to_json()) - {"name"}


def test_a_family_without_its_branches_is_refused_not_run_as_adam(monkeypatch):
    """A FAMILIES entry that OptimizerSpec has no branch for raises at parse, never silently runs as Adam(W)."""
    monkeypatch.setitem(optim.FAMILIES, "newopt", optim.FAMILIES["adam"])
    with pytest.raises(NotImplementedError, match="newopt"):
        optim.OptimizerSpec.parse({"name": "newopt"}, names=("newopt",))
    with pytest.raises(NotImplementedError, match="newopt"):
        optim.OptimizerSpec("newopt").build()


def test_spec_defaults_round_trip_and_exact_numbers():
    assert optim.OptimizerSpec.parse(None) == optim.OptimizerSpec.parse({}) == optim.OptimizerSpec.parse("sgd")
    spec = optim.OptimizerSpec.parse({"name": "sgd", "momentum": "0.9", "nesterov": "true", "weight_decay": "1/100"})
    assert (spec.momentum, spec.nesterov, spec.weight_decay) == (Fraction(9, 10), True, Fraction(1, 100))
    assert spec.to_json() == {"name": "sgd", "momentum": "9/10", "nesterov": True, "weight_decay": "1/100"}
    for raw in ({"name": "sgd", "momentum": 0.9}, {"name": "adam"}, "adamw",
                {"name": "adamw", "betas": [0.5, "0.9"], "eps": "1e-6", "weight_decay": 0.01}):
        spec = optim.OptimizerSpec.parse(raw)
        assert optim.OptimizerSpec.parse(spec.to_json()) == spec
    adam = optim.OptimizerSpec.parse({"name": "adam"})
    assert (adam.betas, adam.eps, adam.weight_decay) == ((Fraction(9, 10), Fraction(999, 1000)), Fraction(1, 10**8), 0)
    assert not adam.plain


REFUSALS = [
    ({"momentum": 1}, "optimizer.momentum", "[0, 1)"),
    ({"momentum": "-0.1"}, "optimizer.momentum", "[0, 1)"),
    ({"momentum": "fast"}, "optimizer.momentum", "number"),
    ({"momentum": True}, "optimizer.momentum", "number"),
    ({"nesterov": True}, "optimizer.nesterov", "momentum"),
    ({"momentum": 0.9, "nesterov": "yes"}, "optimizer.nesterov", "true or false"),
    ({"name": "no_such_optimizer"}, "optimizer.name", "expected one of"),
    ({"weight_decay": -1}, "optimizer.weight_decay", "non-negative"),
    ({"weight_decay": "nan"}, "optimizer.weight_decay", "finite"),
    ({"name": "sgd", "betas": [0.9, 0.99]}, "optimizer.betas", "unknown field"),
    ({"name": "adam", "momentum": 0.9}, "optimizer.momentum", "unknown field"),
    ({"name": "adam", "betas": [0.9]}, "optimizer.betas", "beta1, beta2"),
    ({"name": "adamw", "betas": [0.9, 1]}, "optimizer.betas[1]", "[0, 1)"),
    ({"name": "adam", "eps": 0}, "optimizer.eps", "positive"),
    ({"name": "adam", "weight_decay": "x"}, "optimizer.weight_decay", "number"),
    (7, "optimizer", "JSON object"),
]


@pytest.mark.parametrize("raw,field,fragment", REFUSALS, ids=[r[1] + "-" + str(i) for i, r in enumerate(REFUSALS)])
def test_spec_refusals_name_the_field_in_one_line(raw, field, fragment):
    with pytest.raises(ConfigError) as err:
        optim.OptimizerSpec.parse(raw)
    assert err.value.field == field
    assert fragment in err.value.message and "\n" not in str(err.value)


def test_spec_refuses_what_a_setting_cannot_run_and_names_its_field():
    with pytest.raises(ConfigError) as err:
        optim.OptimizerSpec.parse({"name": "adam"}, names=("sgd",))
    assert err.value.field == "optimizer.name" and "['sgd']" in err.value.message
    with pytest.raises(ConfigError) as err:
        optim.OptimizerSpec.parse({"momentum": 2}, field="model.optimizer")
    assert err.value.field == "model.optimizer.momentum"


class _NewStorage(torch.utils._python_dispatch.TorchDispatchMode):
    """Records every aten op whose tensor output of at least ``size`` elements is new storage (none of its inputs',
    no ``out=`` buffer): a temporary allocated by the step."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.size, self.new = size, []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        flat = torch.utils._pytree.tree_flatten
        given = {t.untyped_storage().data_ptr() for t in flat((args, kwargs))[0] if isinstance(t, torch.Tensor)}
        self.new += [(str(func), tuple(t.shape)) for t in flat(out)[0] if isinstance(t, torch.Tensor)
                     and t.numel() >= self.size and t.untyped_storage().data_ptr() not in given]
        return out


@pytest.mark.parametrize("opt", [optim.adam(), optim.adam(weight_decay=0.1), optim.adamw(weight_decay=0.1),
                                 optim.sgd(0, False, 0.01), optim.sgd(0.9, True, 0.01),
                                 optim.sgd(0.9, clip=0.5), optim.adamw(weight_decay=0.1, clip=0.5)],
                         ids=["adam", "adam-l2", "adamw", "sgd-decay", "nesterov-decay", "clip-momentum",
                              "clip-adamw"])
@pytest.mark.parametrize("lr", [0.01, "lanes"])
def test_a_step_allocates_no_parameter_sized_temporaries(opt, lr):
    """Weight decay, Nesterov's step and Adam(W)'s step work in buffers reused from step to step: after the first
    step, no op of a step makes a new tensor of a parameter's size (a wide model's step is passes over memory
    already there). The numbers are torch.optim's (test_equals_torch_optim_on_separate_copies)."""
    gen = torch.Generator().manual_seed(0)
    params = {"w1": torch.randn(4, 64, 32, generator=gen), "w2": torch.randn(4, 32, 16, generator=gen),
              "b": torch.randn(4, 16, generator=gen)}
    grads = {k: torch.randn(v.shape, generator=gen) for k, v in params.items()}
    rate = torch.linspace(0.005, 0.02, 4, dtype=torch.float64) if lr == "lanes" else lr
    state = opt.init(params)
    opt.step(params, grads, state, rate, 0)
    before = {k: v.clone() for k, v in grads.items()}
    with _NewStorage(64) as mode:
        opt.step(params, grads, state, rate, 1)
    assert mode.new == [], mode.new
    assert all(torch.equal(grads[k], before[k]) for k in grads)  # the gradients it was given are not written

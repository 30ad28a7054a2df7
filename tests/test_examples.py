"""The model files that ship in examples/models/ (the torch_model setting's contract, issue 25): each file's functions
return the right types and shapes and a finite per-sample loss; the MLP example builds the MLP setting's data and
initial weights; the checkpoint example loads trained weights; and BackPACK (an independent library, test-only)
gives the CNN example's per-sample gradient statistics at one point equal to a torch.func vmap(grad) computation."""

from __future__ import annotations

import importlib.util
from types import ModuleType

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call, grad, vmap

from backend import allowed

pytestmark = pytest.mark.filterwarnings("ignore:Full backward hook")
CLASSIFIERS = {"mlp_digits": (64,), "cnn_digits": (1, 8, 8), "cnn_digits_checkpoint": (1, 8, 8)}
EXAMPLES = (*CLASSIFIERS, "char_transformer")


def load(name: str) -> ModuleType:
    path = allowed.model_file(f"examples/models/{name}.py")
    spec = importlib.util.spec_from_file_location(f"example_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def per_sample_loss(module: ModuleType):
    if hasattr(module, "loss"):
        return module.loss
    return lambda out, target: F.cross_entropy(out, target, reduction="none")  # the contract's default


@pytest.mark.parametrize("name", EXAMPLES)
def test_data_are_tensors_of_matching_lengths(name):
    d = load(name).data()
    assert set(d) == {"train", "val"}
    for split in ("train", "val"):
        X, y = d[split]
        assert isinstance(X, torch.Tensor) and isinstance(y, torch.Tensor)
        assert len(X) == len(y) > 100 and y.dtype == torch.int64
        if name in CLASSIFIERS:
            assert X.dtype == torch.float32 and tuple(X.shape[1:]) == CLASSIFIERS[name]
            assert X.min() >= -1 and X.max() <= 1 and set(y.unique().tolist()) == set(range(10))
        else:
            assert X.dtype == torch.int64 and X.shape == y.shape and X.shape[1] == load(name).CONTEXT
            assert torch.equal(X[:, 1:], y[:, :-1])  # each target is the next character
            assert 0 <= int(X.min()) and int(y.max()) < load(name).VOCAB


@pytest.mark.parametrize("name", EXAMPLES)
def test_model_is_a_seeded_module_with_a_finite_per_sample_loss(name):
    m = load(name)
    state = torch.get_rng_state()
    nets = [m.model(0), m.model(0), m.model(1)]
    assert torch.equal(torch.get_rng_state(), state)  # building a model leaves the global generator alone
    assert all(isinstance(n, torch.nn.Module) for n in nets)
    p0, p0b, p1 = (torch.cat([p.detach().reshape(-1) for p in n.parameters()]) for n in nets)
    assert torch.equal(p0, p0b) and not torch.equal(p0, p1)
    assert not list(nets[0].buffers())  # nothing torch.func would have to update in place
    X, y = m.data()["train"]
    dtype = next(nets[0].parameters()).dtype
    Xb = X[:7].to(dtype) if X.is_floating_point() else X[:7]
    out = nets[0](Xb)
    expect = (7, 10) if name in CLASSIFIERS else (7, m.CONTEXT, m.VOCAB)
    assert tuple(out.shape) == expect
    losses = per_sample_loss(m)(out, y[:7])
    assert losses.shape == (7,) and torch.isfinite(losses).all()
    # near chance at init: ln 10 for ten classes, ln V over the characters (within a factor of 2)
    chance = np.log(10 if name in CLASSIFIERS else m.VOCAB)
    if name != "cnn_digits_checkpoint":
        assert 0.5 * chance < losses.mean().item() < 2 * chance


def test_the_mlp_example_builds_the_mlp_settings_data_and_initial_weights():
    """Seed 0, hidden [32, 16]: the digits split and every init's weights as backend/engine/mlp.py draws them."""
    from backend.engine import mlp as engine
    from backend.images import load_dataset

    m = load("mlp_digits")
    d, ref = m.data(), load_dataset({"name": "digits"})
    np.testing.assert_array_equal(d["train"][0].numpy(), ref.x_train.reshape(-1, 64))
    np.testing.assert_array_equal(d["train"][1].numpy(), ref.y_train)
    np.testing.assert_array_equal(d["val"][0].numpy(), ref.x_val.reshape(-1, 64))
    np.testing.assert_array_equal(d["val"][1].numpy(), ref.y_val)
    K = 3
    w0 = engine.init_params(engine.make_model(64, m.HIDDEN, 10), K, m.SETTING_SEED, torch.float64,
                            torch.device("cpu"))
    for k in range(K):
        mine = dict(m.model(k).named_parameters())
        assert set(mine) == set(w0)
        for name, p in mine.items():
            assert p.dtype == torch.float64 and torch.equal(p.detach(), w0[name][k]), name


class _Marks:
    """Unpickling it runs code (writes a file): what weights_only=True must refuse."""

    def __init__(self, mark):
        self.mark = str(mark)

    def __reduce__(self):
        return exec, (f"open({self.mark!r}, 'w').write('ran')",)


def test_the_checkpoint_example_loads_trained_weights_safely(tmp_path, monkeypatch):
    m = load("cnn_digits_checkpoint")
    assert m.CHECKPOINT.stat().st_size < 200_000
    state = m.checkpoint()
    assert state and all(isinstance(v, torch.Tensor) for v in state.values())
    mark = tmp_path / "ran"
    torch.save({"w": _Marks(mark)}, tmp_path / "evil.pt")
    monkeypatch.setattr(m, "CHECKPOINT", tmp_path / "evil.pt")
    with pytest.raises(Exception, match="(?i)weights"):  # torch's "Weights only load failed"
        m.checkpoint()
    assert not mark.exists()
    (Xv, yv) = m.data()["val"]
    errors = []
    for k in (0, 3):
        net = m.model(k)
        fresh = (net(Xv).argmax(1) != yv).double().mean().item()
        net.load_state_dict(state)  # strict: the same names and shapes
        errors.append(((net(Xv).argmax(1) != yv).double().mean().item(), fresh))
    (e0, f0), (e3, f3) = errors
    assert e0 == e3 < 0.1 < 0.5 < min(f0, f3)  # every init starts from the same trained weights


def test_the_training_script_trains_and_gives_a_checkpoint_of_the_same_shape():
    spec = importlib.util.spec_from_file_location("train_checkpoint", allowed.EXAMPLES / "train_checkpoint.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    state, ((l0, _), (l1, _)) = script.train(steps=100)
    saved = load("cnn_digits_checkpoint").checkpoint()
    assert {k: v.shape for k, v in state.items()} == {k: v.shape for k, v in saved.items()}
    assert l1 < 0.8 * l0


def test_backpack_gives_the_cnn_examples_per_sample_gradient_variance_as_vmap_grad():
    """At one point w (init 2, float64) on 96 training digits: BackPACK's per-sample gradients (BatchGrad), their
    squared norms (BatchL2Grad) and elementwise variance (Variance) against torch.func's vmap(grad) of the example's
    functional model; then tr Σ = (1/n) Σ_i ‖g_i − ḡ‖² (the population covariance, docs/theory.md §3) both ways."""
    from backpack import backpack, extend
    from backpack.extensions import BatchGrad, BatchL2Grad, Variance

    m = load("cnn_digits")
    X, y = m.data()["train"]
    X, y = X[:96].double(), y[:96]
    n = len(X)
    net = m.model(2).double()
    params = {k: v.detach() for k, v in net.named_parameters()}

    def sample_loss(p, x, t):
        return F.cross_entropy(functional_call(net, p, (x[None],)), t[None])

    ref = vmap(grad(sample_loss), in_dims=(None, 0, 0))(params, X, y)  # {name: (n, …)}

    bp = extend(m.model(2).double())
    loss = extend(torch.nn.CrossEntropyLoss(reduction="sum"))(bp(X), y)  # sum: per-sample gradients unscaled
    with backpack(BatchGrad(), BatchL2Grad(), Variance()):
        loss.backward()
    names = [k for k, _ in bp.named_parameters()]
    assert names == list(ref)
    for name, p in bp.named_parameters():
        torch.testing.assert_close(p.grad_batch, ref[name], rtol=1e-10, atol=1e-13)
        torch.testing.assert_close(p.batch_l2, ref[name].reshape(n, -1).square().sum(1), rtol=1e-10, atol=1e-13)
        # BackPACK's Variance with a summed loss: (1/n) Σ g_i² − ((1/n) Σ g_i)², the population variance per entry
        torch.testing.assert_close(p.variance, ref[name].var(dim=0, unbiased=False), rtol=1e-8, atol=1e-14)
    g = torch.cat([ref[k].reshape(n, -1) for k in ref], dim=1)
    trace_vmap = (g - g.mean(0)).square().sum(1).mean()
    sq = sum(p.batch_l2 for p in bp.parameters())
    mean = torch.cat([p.grad.reshape(-1) for p in bp.parameters()]) / n
    trace_backpack = sq.mean() - mean.square().sum()
    assert trace_vmap.item() == pytest.approx(trace_backpack.item(), rel=1e-10)
    variance_sum = sum(p.variance.sum() for p in bp.parameters())
    assert variance_sum.item() == pytest.approx(trace_vmap.item(), rel=1e-8)
    assert trace_vmap.item() > 0


def test_the_settings_one_step_noise_and_b_simple_at_w0_are_backpacks(tmp_path, monkeypatch):
    """The torch_model setting's own output on the CNN example (float64, init 0, S = all n training digits) at t = 0
    against BackPACK's per-sample squared norms (BatchL2Grad) on the same n digits: noise_one_step = c_b tr Σ(w_0)
    with c_b = (n − b)/(b(n − 1)) (b-subsets, Lemma 1) and b_simple = tr Σ / ‖∇L‖² (docs/theory.md §3)."""
    from backpack import backpack, extend
    from backpack.extensions import BatchL2Grad

    from backend import api
    from backend.settings import torch_model as setting

    monkeypatch.setenv("BATCHVAR_CACHE_DIR", str(tmp_path / "cache"))
    b = 8
    config = api.parse_config({"setting": "torch_model", "model": {"file": "examples/models/cnn_digits.py"},
                               "inits": 1, "replicas": 2, "steps": 1, "record_every": 1, "batch_sizes": [b],
                               "noise_samples": 100_000, "dtype": "float64", "sampler": "without_replacement"})
    doc = setting.simulate_document(config, api.simulate(config))["curves"][str(b)]
    m = load("cnn_digits")
    X, y = m.data()["train"]
    X, n = X.double(), len(X)
    net = extend(m.model(0).double())
    loss = extend(torch.nn.CrossEntropyLoss(reduction="sum"))(net(X), y)
    with backpack(BatchL2Grad()):
        loss.backward()
    sq = sum(p.batch_l2 for p in net.parameters())
    mean = torch.cat([p.grad.reshape(-1) for p in net.parameters()]) / n
    trace = (sq.mean() - mean.square().sum()).item()
    assert doc["noise_one_step"][0] == pytest.approx((n - b) / (b * (n - 1)) * trace, rel=1e-10)
    assert doc["b_simple"][0] == pytest.approx(trace / mean.square().sum().item(), rel=1e-10)
    assert doc["noise_one_step_se"][0] == 0 and doc["noise_spread"][0] == 0  # every replica at w_0, S = all n


def test_the_checkpoint_example_branches_every_init_from_the_trained_weights(tmp_path, monkeypatch):
    """The shipped checkpoint example through the setting (two inits): at t = 0 both inits sit at the trained
    weights — the same training loss, that of the checkpoint loaded into the module by hand (float64), well below
    the fresh CNN's — and each estimates var(g_0 | F_0) at that one point (positive)."""
    from backend import api

    monkeypatch.setenv("BATCHVAR_CACHE_DIR", str(tmp_path / "cache"))
    common = {"inits": 2, "replicas": 4, "steps": 4, "record_every": 4, "batch_sizes": [16], "noise_samples": 64,
              "dtype": "float64", "device": "cpu"}
    res = api.simulate(api.parse_config({"setting": "torch_model", "model": {
        "file": "examples/models/cnn_digits_checkpoint.py"}, **common}))
    fresh = api.simulate(api.parse_config({"setting": "torch_model", "model": {
        "file": "examples/models/cnn_digits.py"}, **common}))
    m = load("cnn_digits_checkpoint")
    X, y = m.data()["train"]
    net = m.model(0).double()
    net.load_state_dict({k: v.double() for k, v in m.checkpoint().items()})
    with torch.no_grad():
        trained = F.cross_entropy(net(X.double()), y).item()
    per_init = res["curves"]["loss_train"]["per_init"][0, 0]
    assert per_init[0] == per_init[1] == pytest.approx(trained, rel=1e-12)
    assert trained < 0.5 * fresh["curves"]["loss_train"]["value"][0, 0]
    var0 = res["curves"]["var_g"]["per_init"][0, 0]
    assert var0[0] > 0 and var0[1] > 0


@pytest.mark.parametrize("name, replicas, noise_samples", [("cnn_digits", 48, 128), ("char_transformer", 24, 96)])
def test_lemma1_at_t0_for_the_cnn_and_the_transformer(name, replicas, noise_samples, monkeypatch, tmp_path):
    """At t = 0 every replica sits at w_0, so the replicas' var(g_0 | F_0) is the one-step noise c_b tr Σ(w_0)
    (Lemma 1) estimated independently from per-sample gradients on a subsample (docs/theory.md §3, §10): the two
    agree within their combined SE, and the spread term is 0."""
    from backend import api
    from backend.settings import torch_model as setting

    monkeypatch.setenv("BATCHVAR_CACHE_DIR", str(tmp_path))
    config = api.parse_config({"setting": "torch_model", "model": {"file": f"examples/models/{name}.py"},
                               "inits": 1, "replicas": replicas, "steps": 1, "record_every": 1, "batch_sizes": [8],
                               "noise_samples": noise_samples, "seed": 3})
    e = setting.simulate_document(config, api.simulate(config))["curves"]["8"]
    var, var_se = e["var_g"][0], e["var_g_se"][0]
    one, one_se = e["noise_one_step"][0], e["noise_one_step_se"][0]
    assert var > 0 and one > 0 and var_se > 0 and one_se > 0
    assert abs(var - one) / np.hypot(var_se, one_se) <= 4, (var, var_se, one, one_se)
    assert abs(e["noise_spread"][0]) < 1e-12 * one

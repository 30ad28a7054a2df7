"""The torch_model setting (issue 25; docs/theory.md §10): a model file's network trained as replicas through
torch.func, checked against Lemma 1, the exact linear-regression theory (with momentum), torch.optim on separate
module copies, and its refusals; the page under AppTest. Tiny model files of tests/models/ (BATCHVAR_MODELS)."""

from __future__ import annotations

import json
import os
import shutil
import sys

import numpy as np
import pytest
import torch
from conftest import ROOT, tiny_config_json

from backend import api
from backend.engine import loop, torch_model as engine
from backend.cache import default_cache
from backend.errors import ConfigError
from backend.settings import torch_model as setting

MODELS = ROOT / "tests" / "models"


@pytest.fixture(autouse=True)
def _test_models(monkeypatch):
    monkeypatch.setenv("BATCHVAR_MODELS", str(MODELS))


def cfg(file: str, **over):
    return api.parse_config({"setting": "torch_model", "model": {"file": file}, **over})


def doc_of(config):
    return setting.simulate_document(config, api.simulate(config))


def z(est, se, exact):
    return (np.asarray(est) - np.asarray(exact)) / np.asarray(se)


# -- the MLP example is the MLP setting ----------------------------------------------------------------------------

@pytest.mark.parametrize("dtype, sampler, optimizer, epochs, rtol", [
    ("float64", "without_replacement", None, 2, 1e-12),
    ("float64", "epoch_reshuffle", {"name": "sgd", "momentum": "0.9", "nesterov": True}, 2, 1e-12),
    # float32: the MLP engine holds plain SGD's low-rank updates, the replicas backpropagate the summed losses
    # (other summation orders). 44 steps agree to 1e-7; later a ReLU or an argmax that rounding flips makes the
    # runs drift apart like two seeds' (7e-4 of var_g at 88 steps, 6 % of an SE at 132): one epoch is compared
    ("float32", "epoch_reshuffle", None, 1, 1e-5),
])
def test_the_mlp_example_gives_the_mlp_settings_numbers(tmp_path, dtype, sampler, optimizer, epochs, rtol):
    """examples/models/mlp_digits.py run by torch_model for E·⌊n/B⌋ steps, recorded every ⌊n/B⌋, against the MLP
    setting (seed 0, hidden [32, 16], the whole training set evaluated, no distortion) for E epochs: every estimate,
    its SE and its per-init values at t = e·⌊n/B⌋ equal the MLP setting's at epoch e (the same streams, initial
    weights, subsample S = all n: the exact split and a resolved B_simple)."""
    from backend.cache import ResultCache

    b, n = 32, 1438
    common = {"batch_sizes": [b], "replicas": 4, "inits": 2, "lr": {"schedule": "constant", "c": "1/20"},
              "seed": 0, "sampler": sampler, "dtype": dtype, "noise_samples": n, "device": "cpu",
              **({"optimizer": optimizer} if optimizer else {})}
    mlp = api.simulate(api.parse_config({"setting": "mlp", "hidden": [32, 16], "epochs": epochs, "eval_size": n,
                                         **common}), cache=ResultCache(tmp_path / "mlp"))
    mine = api.simulate(api.parse_config({"setting": "torch_model", "model": {"file": str(
        ROOT / "examples" / "models" / "mlp_digits.py")}, "steps": epochs * (n // b), "record_every": n // b,
        **common}), cache=ResultCache(tmp_path / "mine"))
    assert list(mine["t"]) == [e * (n // b) for e in range(epochs + 1)] and list(mlp["epoch"]) == list(
        range(epochs + 1))
    assert set(mine["curves"]) == set(mlp["curves"]) - {"gap_distorted"}
    assert np.isfinite(mine["curves"]["b_simple"]["value"]).all()
    for q, curve in mine["curves"].items():
        for part in ("value", "se", "per_init", "per_init_se"):
            np.testing.assert_allclose(curve[part], mlp["curves"][q][part], rtol=rtol, atol=1e-14,
                                       err_msg=f"{q}.{part}")
    np.testing.assert_array_equal(mine["finite_count"], mlp["finite_count"])


# -- Lemma 1 at t = 0, the law of total variance later, the document's shape ------------------------------------

def test_lemma1_at_t0_the_split_and_the_document():
    """At t = 0 every replica sits at w_0: var(g_0 | F_0) = c_b tr Σ(w_0) (Lemma 1), the one-step noise is exact
    (noise_samples ≥ n) with SE 0, and the spread is 0. Later var_g = one-step + spread (law of total variance)."""
    c = cfg("tests/models/tiny_mlp.py", inits=2, replicas=64, steps=20, record_every=10, batch_sizes=[4, 16],
            noise_samples=48, dtype="float64")
    d = doc_of(c)
    assert d["t"] == [0, 10, 20] and d["inits"] == 2
    for b in ("4", "16"):
        e = d["curves"][b]
        for q in ("var_g", "loss_train", "loss_val", "error_train", "error_val", "noise_one_step", "noise_spread",
                  "b_simple"):
            assert len(e[q]) == 3 and len(e[f"{q}_se"]) == 3 and len(e[f"{q}_per_init"]) == 2, q
        assert len(e["var_g_min"]) == len(e["var_g_max"]) == 3
        var, var_se = np.array(e["var_g_per_init"]), np.array(e["var_g_per_init_se"])
        one, one_se = np.array(e["noise_one_step_per_init"]), np.array(e["noise_one_step_per_init_se"])
        spread, spread_se = np.array(e["noise_spread_per_init"]), np.array(e["noise_spread_per_init_se"])
        assert np.all(one_se[:, 0] == 0) and np.all(spread[:, 0] < 1e-20)
        assert np.all(np.abs(z(var[:, 0], var_se[:, 0], one[:, 0])) <= 4), (var[:, 0], one[:, 0], var_se[:, 0])
        total_se = np.sqrt(var_se ** 2 + one_se ** 2 + spread_se ** 2)
        assert np.all(np.abs(z(var[:, 1:], total_se[:, 1:], one[:, 1:] + spread[:, 1:])) <= 4)
    assert np.all(np.array(d["curves"]["4"]["noise_one_step"]) > np.array(d["curves"]["16"]["noise_one_step"]))


def test_bf16_keeps_the_variance_estimates_of_float32():
    """precision bf16 (autocast training passes, float32 weights): the same draws give var_g within the SEs of the
    float32 run, and not bitwise the same numbers (the autocast is applied)."""
    runs = {p: api.simulate(cfg("tests/models/tiny_mlp.py", inits=1, replicas=32, steps=10, record_every=5,
                                batch_sizes=[8], noise_samples=48, precision=p))["curves"]["var_g"]
            for p in ("float32", "bf16")}
    a, b = runs["float32"], runs["bf16"]
    assert not np.array_equal(a["value"], b["value"])
    assert np.all(np.abs(a["value"] - b["value"]) <= 4 * np.hypot(a["se"], b["se"]))


# -- least squares as a model file against the exact theory, with momentum -------------------------------------

@pytest.mark.parametrize("optimizer", [{"name": "sgd", "momentum": "1/2"},
                                       {"name": "sgd", "momentum": "1/2", "nesterov": True, "weight_decay": "1/10"}],
                         ids=["momentum", "nesterov+wd"])
def test_least_squares_file_matches_linear_regression_theory(optimizer):
    """tests/models/least_squares.py is the 5-point data set of conftest with its w_0: its replicas' var_g, loss
    and spread of ∇L equal the linear-regression setting's exact moment recursion (docs/theory.md §9) within SE."""
    steps, bs = 6, [1, 2, 4]
    lin = api.parse_config(tiny_config_json(lr={"schedule": "constant", "c": "1/10"}, steps=steps, batch_sizes=bs,
                                            optimizer=optimizer))
    exact = api.theory(lin)["curves"]
    c = cfg("tests/models/least_squares.py", inits=1, replicas=4000, steps=steps, record_every=1, batch_sizes=bs,
            lr={"schedule": "constant", "c": "1/10"}, optimizer=optimizer, noise_samples=5, dtype="float64", seed=3)
    res = api.simulate(c)
    assert list(res["t"]) == list(range(steps + 1))
    for ours, theirs in (("var_g", "var_g"), ("loss_train", "loss"), ("noise_spread", "var_full_grad")):
        est, se = res["curves"][ours]["value"], res["curves"][ours]["se"]
        ok = se > 0
        zz = z(est[ok], se[ok], np.asarray(exact[theirs])[ok])
        assert np.all(np.abs(zz) <= 4.5), (ours, zz)
        assert np.mean(np.abs(zz) <= 2) >= 0.8, (ours, zz)
    # t = 0: every replica at w_0, the loss exact and the spread zero
    assert np.allclose(res["curves"]["loss_train"]["value"][:, 0], exact["loss"][:, 0], rtol=1e-12)
    assert not any(q.startswith("error_") for q in res["curves"])  # real-valued targets: no error rate


def test_the_last_step_is_recorded_when_it_is_not_a_multiple_of_record_every():
    """t = 0, k, 2k, …, and T: steps 5 every 2 records t = 0, 2, 4, 5 (the result's x axis and its curves)."""
    res = api.simulate(cfg("tests/models/least_squares.py", inits=1, replicas=4, steps=5, record_every=2,
                           batch_sizes=[2], noise_samples=5, dtype="float64"))
    assert list(res["t"]) == [0, 2, 4, 5] and res["curves"]["var_g"]["value"].shape == (1, 4)


# -- torch.optim on separate module copies -----------------------------------------------------------------------

@pytest.mark.parametrize("optimizer,lr,make", [
    ({"name": "sgd", "momentum": "0.9", "nesterov": True, "weight_decay": "0.01"}, 0.05,
     lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.01)),
    ({"name": "adam", "betas": ["0.8", "0.99"], "eps": "1e-6", "weight_decay": "0.01"}, 0.01,
     lambda p: torch.optim.Adam(p, lr=0.01, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.01)),
    ({"name": "adamw", "weight_decay": "0.1"}, 0.01,
     lambda p: torch.optim.AdamW(p, lr=0.01, weight_decay=0.1)),
], ids=["sgd-nesterov-wd", "adam-l2", "adamw"])
def test_replicas_equal_torch_optim_on_module_copies(monkeypatch, optimizer, lr, make):
    """The stacked replicas take the same steps as R·K separate copies of model(k), each with its own torch.optim,
    on the same mini-batches (recorded from the run's sampler): the per-init mean training and validation losses
    and the spread of the full gradient at t = T agree to rounding."""
    drawn: list = []
    real = loop.make_sampler  # the shared loop's streams (backend/engine/loop.py)

    def spy(name, *args, **kwargs):
        s = real(name, *args, **kwargs)
        if name == "with_replacement":  # the training sampler (the probe draws without replacement)
            block = s.draw_block
            s.draw_block = lambda steps: drawn.extend(out := block(steps)) or out
        return s

    monkeypatch.setattr(loop, "make_sampler", spy)
    K, R, T, b = 2, 3, 4, 5
    c = cfg("tests/models/tiny_mlp.py", inits=K, replicas=R, steps=T, record_every=T, batch_sizes=[b],
            sampler="with_replacement", lr={"schedule": "constant", "c": str(lr)}, optimizer=optimizer,
            noise_samples=48, dtype="float64", seed=11)
    d = doc_of(c)["curves"][str(b)]
    mod = engine.load(engine.Path(MODELS / "tiny_mlp.py")).module
    data = mod.data()
    (Xtr, Ytr), (Xva, Yva) = data["train"], data["val"]
    assert len(drawn) == T
    losses, val_losses, grads = np.zeros((K, R)), np.zeros((K, R)), [[None] * R for _ in range(K)]
    for r in range(K * R):
        k, j = divmod(r, R)
        net = mod.model(k).double()
        opt = make(net.parameters())
        for t in range(T):
            idx = drawn[t].idx[r]
            opt.zero_grad()
            torch.nn.functional.cross_entropy(net(Xtr[idx].double()), Ytr[idx]).backward()
            opt.step()
        net.zero_grad()
        full = torch.nn.functional.cross_entropy(net(Xtr.double()), Ytr)
        full.backward()
        losses[k, j] = full.item()
        grads[k][j] = torch.cat([p.grad.reshape(-1) for p in net.parameters()])
        with torch.no_grad():
            val_losses[k, j] = torch.nn.functional.cross_entropy(net(Xva.double()), Yva).item()
    spread = [torch.stack(g).var(dim=0, correction=1).sum().item() for g in grads]
    np.testing.assert_allclose(np.array(d["loss_train_per_init"])[:, -1], losses.mean(1), rtol=1e-10)
    np.testing.assert_allclose(np.array(d["loss_val_per_init"])[:, -1], val_losses.mean(1), rtol=1e-10)
    np.testing.assert_allclose(np.array(d["noise_spread_per_init"])[:, -1], spread, rtol=1e-8)


# -- a checkpoint: every init starts from it ---------------------------------------------------------------------

def test_every_init_starts_from_the_checkpoint():
    c = cfg("tests/models/tiny_checkpoint.py", inits=2, replicas=4, steps=2, record_every=2, batch_sizes=[8],
            noise_samples=48, dtype="float64")
    d = doc_of(c)["curves"]["8"]
    mod = engine.load(engine.Path(MODELS / "tiny_checkpoint.py")).module
    net = mod.model(0).double()
    net.load_state_dict(mod.checkpoint())
    X, Y = mod.data()["train"]
    with torch.no_grad():
        expected = torch.nn.functional.cross_entropy(net(X.double()), Y).item()
    start = np.array(d["loss_train_per_init"])[:, 0]
    np.testing.assert_allclose(start, [expected, expected], rtol=1e-12)
    assert mod.model(1).state_dict()["0.weight"].ne(net.state_dict()["0.weight"]).any()  # not model(k)'s weights


# -- refusals: one line naming the file and the function --------------------------------------------------------

DATA = ("import torch\n"
        "def data():\n"
        "    g = torch.Generator().manual_seed(0)\n"
        "    X = torch.randn(20, 4, generator=g)\n"
        "    return {'train': (X, (X[:, 0] > 0).long())}\n")
MODEL = "def model(seed):\n    torch.manual_seed(seed)\n    return torch.nn.Sequential({})\n"
BAD_FILES = {
    "syntax.py": ("def model(:\n", "import", "SyntaxError"),
    "missing_module.py": ("import no_such_module_anywhere\n", "import", "ModuleNotFoundError"),
    "no_data.py": ("import torch\n" + MODEL.format("torch.nn.Linear(4, 2)"), "data()", "missing"),
    "not_module.py": (DATA + "def model(seed):\n    return 3\n", "model(0)", "torch.nn.Module"),
    "bad_data.py": ("import torch\ndef data():\n    return (torch.zeros(3, 4), torch.zeros(3))\n"
                    + MODEL.format("torch.nn.Linear(4, 2)"), "data()", '"train"'),
    "shape.py": (DATA + MODEL.format("torch.nn.Linear(5, 2)"), "model() forward", "RuntimeError"),
    "loss_shape.py": (DATA + MODEL.format("torch.nn.Linear(4, 2)")
                      + "def loss(out, y):\n    return torch.nn.functional.cross_entropy(out, y)\n",
                      "loss()", "one floating-point loss per sample"),
    "nonfinite.py": (DATA + MODEL.format("torch.nn.Linear(4, 2)")
                     + "def loss(out, y):\n    return out.sum(1) * float('inf')\n", "loss()", "not finite"),
    "batchnorm.py": (DATA + MODEL.format("torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3), torch.nn.Linear(3, 2)"),
                     "model()", "'1' (BatchNorm1d) is in train mode"),
    "dropout.py": (DATA + MODEL.format("torch.nn.Linear(4, 3), torch.nn.Dropout(0.5), torch.nn.Linear(3, 2)"),
                   "model()", "'1' (Dropout, p = 0.5) is in train mode"),
    "inplace.py": (DATA + "class Count(torch.nn.Module):\n"
                          "    def __init__(self):\n"
                          "        super().__init__()\n"
                          "        self.register_buffer('calls', torch.zeros(()))\n"
                          "    def forward(self, x):\n"
                          "        self.calls += 1\n"
                          "        return x\n"
                   + MODEL.format("torch.nn.Linear(4, 2), Count()"), "model()", "module '1' writes its buffer"),
    "unseeded.py": (DATA + "def model(seed):\n    return torch.nn.Linear(4, 2)\n", "model(0)", "different weights"),
    "functional_dropout.py": (DATA + "class Drop(torch.nn.Module):\n"
                                     "    def forward(self, x):\n"
                                     "        return torch.nn.functional.dropout(x, 0.5, training=True)\n"
                              + MODEL.format("Drop(), torch.nn.Linear(4, 2)"), "model() forward",
                              "draws random numbers (functional dropout"),
    "noisy_forward.py": (DATA + "class Noise(torch.nn.Module):\n"
                                "    def forward(self, x):\n"
                                "        return x + torch.randn_like(x)\n"
                         + MODEL.format("Noise(), torch.nn.Linear(4, 2)"), "model() forward", "draws random numbers"),
    "bad_checkpoint.py": (DATA + MODEL.format("torch.nn.Linear(4, 2)")
                          + "def checkpoint():\n    return {'nope': torch.zeros(1)}\n", "checkpoint()", "nope"),
}


@pytest.mark.parametrize("name", sorted(BAD_FILES))
def test_a_failing_model_file_is_one_line_naming_file_and_function(tmp_path, monkeypatch, name):
    source, function, why = BAD_FILES[name]
    (tmp_path / name).write_text(source)
    monkeypatch.setenv("BATCHVAR_MODELS", str(tmp_path))
    with pytest.raises(ConfigError) as e:
        cfg(str(tmp_path / name))
    msg = str(e.value)
    assert e.value.field == "model.file" and "\n" not in msg
    assert f"{name}: {function}" in msg and why in msg, msg


def test_a_later_init_with_a_nonfinite_loss_fails_the_run_and_caches_nothing(tmp_path, monkeypatch):
    (tmp_path / "late.py").write_text(DATA + "def model(seed):\n    torch.manual_seed(seed)\n"
                                             "    m = torch.nn.Linear(4, 2)\n"
                                             "    if seed == 1:\n        torch.nn.init.constant_(m.bias, float('nan'))\n"
                                             "    return m\n")
    monkeypatch.setenv("BATCHVAR_MODELS", str(tmp_path))
    c = cfg(str(tmp_path / "late.py"), inits=2, replicas=2, steps=2, record_every=1, batch_sizes=[4],
            noise_samples=20)
    progress = api.Progress(total=1)
    with pytest.raises(ConfigError, match=r"late\.py: model\(1\): the loss at w_0 is not finite"):
        api.simulate(c, progress=progress)
    assert api.cached_simulation(c) is None
    assert progress.done == 0  # refused before the first step
    assert setting.Checkpoints(c, torch.device("cpu"), default_cache()).resume(4) is None


def test_a_nonfinite_loss_beyond_the_checked_points_leaves_no_checkpoint(tmp_path, monkeypatch):
    """Init 1's loss overflows only on a training point past the first engine.CHECK_POINTS (the load-time check):
    the run of b = 4 finds it at t = 0 and is refused naming model(1), and the checkpoint it saved is gone."""
    far = engine.CHECK_POINTS + 100
    (tmp_path / "far.py").write_text(
        "import torch\n"
        "def data():\n"
        "    g = torch.Generator().manual_seed(0)\n"
        f"    X = torch.randn({far + 10}, 4, generator=g)\n"
        f"    X[{far}] = 1e30\n"
        "    return {'train': (X, (X[:, 0] > 0).long())}\n"
        "def model(seed):\n    torch.manual_seed(seed)\n    m = torch.nn.Linear(4, 2)\n"
        "    if seed == 1:\n        torch.nn.init.constant_(m.weight, 1e10)\n"
        "    return m\n")
    monkeypatch.setenv("BATCHVAR_MODELS", str(tmp_path))
    c = cfg(str(tmp_path / "far.py"), inits=2, replicas=2, steps=2, record_every=1, batch_sizes=[4],
            noise_samples=20)
    with pytest.raises(ConfigError, match=r"far\.py: model\(1\): the loss at w_0 is not finite"):
        api.simulate(c)
    assert api.cached_simulation(c) is None
    assert setting.Checkpoints(c, torch.device("cpu"), default_cache()).resume(4) is None


def test_the_cli_exits_2_with_the_line_and_prints_the_document(tmp_path, monkeypatch, capsys):
    from backend.__main__ import main

    (tmp_path / "bad.py").write_text(BAD_FILES["shape.py"][0])
    monkeypatch.setenv("BATCHVAR_MODELS", f"{tmp_path}{__import__('os').pathsep}{MODELS}")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"setting": "torch_model", "model": {"file": str(tmp_path / "bad.py")}}))
    assert main(["simulate", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "bad.py: model() forward: RuntimeError" in err, err
    good = tmp_path / "good.json"
    good.write_text(json.dumps({"setting": "torch_model", "model": {"file": "tests/models/tiny_mlp.py"},
                                "steps": 4, "record_every": 2, "batch_sizes": [8], "replicas": 4, "inits": 1,
                                "precision": "bf16", "noise_samples": 48}))
    assert main(["simulate", str(good)]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["setting"] == "torch_model" and doc["t"] == [0, 2, 4]
    assert doc["model"]["file"] == "tests/models/tiny_mlp.py" and len(doc["model"]["sha256"]) == 64
    e = doc["curves"]["8"]
    assert all(v is not None and v > 0 for v in e["var_g"] + e["var_g_se"][1:] + e["noise_one_step"])
    assert "var_g_per_init" not in e  # one init: no per-init lists


def test_a_file_outside_the_allowed_folders_is_refused_before_import(tmp_path, monkeypatch):
    marker = tmp_path / "ran"
    (tmp_path / "evil.py").write_text(f"open({str(marker)!r}, 'w').write('x')\n")
    with pytest.raises(ConfigError, match="outside the allowed folders") as e:
        cfg(str(tmp_path / "evil.py"))
    assert e.value.field == "model.file" and not marker.exists()


# -- the cache key holds the file's and the data's content ------------------------------------------------------

def test_the_cache_key_follows_the_file_and_its_data(tmp_path, monkeypatch):
    monkeypatch.setenv("BATCHVAR_MODELS", str(tmp_path))
    path = tmp_path / "m.py"
    shutil.copy(MODELS / "tiny_mlp.py", path)
    first = cfg(str(path), steps=2, record_every=1, batch_sizes=[4])
    key = api.simulation_key(first)
    assert api.simulation_key(cfg(str(path), steps=2, record_every=1, batch_sizes=[4])) == key
    path.write_text(path.read_text() + "\n# an edit that changes nothing but the bytes\n")
    edited = cfg(str(path), steps=2, record_every=1, batch_sizes=[4])
    assert api.simulation_key(edited) != key
    assert edited.model["data_sha256"] == first.model["data_sha256"] != ""
    with pytest.raises(ConfigError) as e:  # a config saved before the edit is not run on the edited file
        api.parse_config(first.to_json())
    assert e.value.field == "model.sha256"
    # data read from a file beside the model file: a change there changes the data hash (the file's stays)
    torch.save({"X": torch.ones(6, 4), "Y": torch.tensor([0, 1, 0, 1, 0, 1])}, tmp_path / "d.pt")
    (tmp_path / "from_disk.py").write_text(
        "import pathlib, torch\n"
        "def data():\n"
        "    d = torch.load(pathlib.Path(__file__).with_name('d.pt'))\n"
        "    return {'train': (d['X'], d['Y'])}\n" + MODEL.format("torch.nn.Linear(4, 2)"))
    before = cfg(str(tmp_path / "from_disk.py"), batch_sizes=[2])
    torch.save({"X": torch.ones(6, 4) * 2, "Y": torch.tensor([0, 1, 0, 1, 0, 1])}, tmp_path / "d.pt")
    after = cfg(str(tmp_path / "from_disk.py"), batch_sizes=[2])
    assert after.model["sha256"] == before.model["sha256"]
    assert after.model["data_sha256"] != before.model["data_sha256"]
    assert api.simulation_key(after) != api.simulation_key(before)


@pytest.mark.parametrize("where", ["sub/d.pt", "../elsewhere/d.pt"])
def test_data_read_from_another_folder_is_hashed_again_when_it_changes(tmp_path, monkeypatch, where):
    """In one process (the app): data() reads a file in a subfolder, or in a folder outside the model folder; a
    change there (nothing beside the model file changes) loads the file again and changes the data hash and the
    simulation key, as a fresh process would; an unchanged file is not loaded again."""
    folder = tmp_path / "models"
    data_file = (folder / where).resolve()
    data_file.parent.mkdir(parents=True)
    folder.mkdir(exist_ok=True)
    monkeypatch.setenv("BATCHVAR_MODELS", str(folder))
    torch.save({"X": torch.ones(6, 4), "Y": torch.tensor([0, 1, 0, 1, 0, 1])}, data_file)
    (folder / "reads.py").write_text(
        "import torch\n"
        "def data():\n"
        f"    d = torch.load({str(data_file)!r})\n"
        "    return {'train': (d['X'], d['Y'])}\n" + MODEL.format("torch.nn.Linear(4, 2)"))
    before = cfg(str(folder / "reads.py"), batch_sizes=[2])
    assert engine.load(folder / "reads.py") is engine.load(folder / "reads.py")  # nothing changed: remembered
    torch.save({"X": torch.ones(6, 4) * 5, "Y": torch.tensor([1, 1, 1, 1, 0, 1])}, data_file)
    os.utime(data_file, ns=(data_file.stat().st_atime_ns, data_file.stat().st_mtime_ns + 10**9))
    after = cfg(str(folder / "reads.py"), batch_sizes=[2])
    assert after.model["sha256"] == before.model["sha256"]
    assert after.model["data_sha256"] != before.model["data_sha256"]
    assert api.simulation_key(after) != api.simulation_key(before)


@pytest.mark.parametrize("where", ["top", "inside"])
def test_an_edited_helper_module_changes_the_key_and_is_imported_again(tmp_path, monkeypatch, where):
    """In one process (the app): the model file imports a helper module of its own (put on sys.path by the file;
    at its top, or inside model()); an edit of the helper alone (the model file's bytes unchanged) changes the code
    hash and the simulation key, refuses a config saved before, and runs the edited helper's network."""
    folder = tmp_path / "models"
    (folder / "lib").mkdir(parents=True)
    monkeypatch.setenv("BATCHVAR_MODELS", str(folder))
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.delitem(sys.modules, "helper_net_mod", raising=False)
    helper = folder / "lib" / "helper_net_mod.py"
    helper.write_text("import torch\ndef net():\n    return torch.nn.Linear(4, 2)\n")
    imp = "    import helper_net_mod\n"
    (folder / "uses.py").write_text(
        "import sys, pathlib, torch\n"
        "sys.path.insert(0, str(pathlib.Path(__file__).parent / 'lib'))\n"
        + ("import helper_net_mod\n" if where == "top" else "") + DATA
        + "def model(seed):\n" + (imp if where == "inside" else "")
        + "    torch.manual_seed(seed)\n    return helper_net_mod.net()\n")
    before = cfg(str(folder / "uses.py"), batch_sizes=[2])
    mf = engine.load(folder / "uses.py")
    assert mf.modules == {"helper_net_mod": str(helper.resolve())}
    assert before.model["sha256"] != engine.file_sha256(folder / "uses.py")  # the helper is in the hash
    assert engine.load(folder / "uses.py") is mf  # nothing changed: remembered
    helper.write_text("import torch\ndef net():\n    return torch.nn.Sequential(torch.nn.Linear(4, 3), "
                      "torch.nn.Linear(3, 2))\n")
    os.utime(helper, ns=(helper.stat().st_atime_ns, helper.stat().st_mtime_ns + 10**9))
    after = cfg(str(folder / "uses.py"), batch_sizes=[2])
    assert engine.load(folder / "uses.py").n_params == 4 * 3 + 3 + 3 * 2 + 2  # the edited helper's network
    assert after.model["sha256"] != before.model["sha256"]
    assert after.model["data_sha256"] == before.model["data_sha256"]
    assert api.simulation_key(after) != api.simulation_key(before)
    with pytest.raises(ConfigError) as e:  # a config saved before the edit is not run on the edited helper
        api.parse_config(before.to_json())
    assert e.value.field == "model.sha256"


def _helper_files(folder, name, width=2, where="inside"):
    """A model file ``folder/uses_{name}.py`` whose network is helper module ``name``'s (in folder/lib, put on
    sys.path by the file), imported inside model() or at the file's top."""
    (folder / "lib").mkdir(parents=True, exist_ok=True)
    helper = folder / "lib" / f"{name}.py"
    helper.write_text(f"import torch\ndef net():\n    return torch.nn.Linear(4, {width})\n")
    for user in ("a", "b"):
        (folder / f"{user}_{name}.py").write_text(
            "import sys, pathlib, torch\n"
            "sys.path.insert(0, str(pathlib.Path(__file__).parent / 'lib'))\n"
            + (f"import {name}\n" if where == "top" else "") + DATA
            + "def model(seed):\n" + (f"    import {name}\n" if where == "inside" else "")
            + f"    torch.manual_seed(seed)\n    return {name}.net()\n")
    return helper


def test_a_helper_imported_before_by_another_file_is_still_found(tmp_path, monkeypatch):
    """Two model files import the same helper inside model(): the second, loaded after the first had imported it,
    also hashes it and follows its edit (it was served stale: the import found the module already loaded); a
    file loaded again after the first had imported its helper gets the same hash as on its first load."""
    folder = tmp_path / "models"
    monkeypatch.setenv("BATCHVAR_MODELS", str(folder))
    monkeypatch.setattr(sys, "path", list(sys.path))
    helper = _helper_files(folder, "shared_helper_mod")
    a, b = engine.load(folder / "a_shared_helper_mod.py"), engine.load(folder / "b_shared_helper_mod.py")
    assert a.modules == b.modules == {"shared_helper_mod": str(helper.resolve())}
    first_sha = b.sha256
    engine._loaded.clear()  # as after the 8-file memory has let it go
    assert engine.load(folder / "b_shared_helper_mod.py").sha256 == first_sha
    helper.write_text("import torch\ndef net():\n    return torch.nn.Linear(4, 3)\n")
    os.utime(helper, ns=(helper.stat().st_atime_ns, helper.stat().st_mtime_ns + 10**9))
    assert engine.load(folder / "b_shared_helper_mod.py").n_params == 4 * 3 + 3
    assert engine.load(folder / "a_shared_helper_mod.py").n_params == 4 * 3 + 3


def test_an_edit_that_keeps_the_helpers_size_and_second_is_not_run_from_stale_bytecode(tmp_path, monkeypatch):
    """Bytecode written: a helper edited within the same second to the same size (a .pyc matches its source by
    whole-second mtime and size) is run from its source when the model file is validated again."""
    folder = tmp_path / "models"
    monkeypatch.setenv("BATCHVAR_MODELS", str(folder))
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.setattr(sys, "dont_write_bytecode", False)
    helper = _helper_files(folder, "pyc_helper_mod", where="top")
    assert engine.load(folder / "a_pyc_helper_mod.py").n_params == 4 * 2 + 2
    stat = helper.stat()
    helper.write_text(helper.read_text().replace("Linear(4, 2)", "Linear(4, 5)"))  # same size
    os.utime(helper, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    user = folder / "a_pyc_helper_mod.py"
    user.write_text(user.read_text() + "# edited\n")  # validated again
    assert engine.load(user).n_params == 4 * 5 + 5


def test_two_files_validated_at_once_each_hash_only_their_own_helpers(tmp_path, monkeypatch):
    """Loads on two threads (two browser sessions): each file's helpers are its own, never the other's."""
    import threading

    folder = tmp_path / "models"
    monkeypatch.setenv("BATCHVAR_MODELS", str(folder))
    monkeypatch.setattr(sys, "path", list(sys.path))
    paths = {}
    for name in ("left_helper_mod", "right_helper_mod"):
        _helper_files(folder, name)
        paths[name] = folder / f"a_{name}.py"
    out = {}
    threads = [threading.Thread(target=lambda n=n, p=p: out.__setitem__(n, engine.load(p))) for n, p in paths.items()]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    for name in paths:
        assert list(out[name].modules) == [name], out[name].modules


# -- the page ---------------------------------------------------------------------------------------------------

def test_page_offers_the_allowed_files_runs_and_shows_a_failing_file_in_a_red_box(tmp_path, monkeypatch):
    from test_app import by_label, open_page, wait_for_run

    folder = tmp_path / "models"
    folder.mkdir()
    shutil.copy(MODELS / "tiny_mlp.py", folder / "tiny_mlp.py")
    (folder / "broken.py").write_text("import torch\nraise RuntimeError('broken on purpose')\n"
                                      "def model(seed):\n    pass\ndef data():\n    pass\n")
    monkeypatch.setenv("BATCHVAR_MODELS", str(folder))
    at = open_page("pages/torch_model.py")
    box = by_label(at.sidebar.selectbox, "Model file")
    offered = set(box.options)
    assert {str((folder / "tiny_mlp.py").resolve()), str((folder / "broken.py").resolve())} <= offered
    assert not any(o.startswith("tests/") for o in offered)  # only the allowed folders
    box.set_value(str((folder / "broken.py").resolve()))
    at.run()
    assert not at.exception
    assert any("broken.py: import: RuntimeError: broken on purpose" in e.value for e in at.error), \
        [e.value for e in at.error]
    by_label(at.sidebar.selectbox, "Model file").set_value(str((folder / "tiny_mlp.py").resolve()))
    at.run()
    by_label(at.sidebar.slider, "Steps T").set_value(10)
    by_label(at.sidebar.number_input, "Record every k steps").set_value(5)
    by_label(at.sidebar.number_input, "Replicas per init R").set_value(4)
    by_label(at.sidebar.multiselect, "Batch sizes b").set_value([4, 16])
    at.run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    by_label(at.button, "Run").click()
    at.run()
    wait_for_run(at, "torch_model")
    assert not at.exception and not at.error, (at.exception, [e.value for e in at.error])
    assert [t.label for t in at.tabs] == ["Variance", "Loss and error", "Variance split", "Downloads"]
    assert any("recorded steps" in m.value for m in at.markdown)
    assert any("(t 10)" in str(df.value.columns) for df in at.dataframe)


# -- no host synchronisation inside the step loop -----------------------------------------------------------------

def test_the_step_loop_reads_nothing_back_per_step(monkeypatch):
    """Device values read back (Tensor.__bool__, .item(), .tolist(), .cpu()) do not grow with the steps between two
    recorded steps: 64 more steps cost at most a read per block of drawn indices (STEP_BLOCK steps)."""
    from backend.engine.runner import STEP_BLOCK
    from backend.optim import sgd

    pr = engine.prepare(engine.load(MODELS / "tiny_mlp.py"), torch.float32, torch.device("cpu"))
    counts = {"n": 0}
    for name in ("__bool__", "item", "tolist", "cpu"):
        original = getattr(torch.Tensor, name)

        def wrapped(self, *args, _original=original, **kwargs):
            counts["n"] += 1
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, wrapped)

    def reads(steps: int) -> int:
        counts["n"] = 0
        spec = loop.RunSpec.for_steps(pr.mf.n_train, steps, steps, 4, K=1, R=4, lr=lambda t: 0.05,
                                      sampler="without_replacement", seed=0, device=torch.device("cpu"),
                                      noise_samples=8)
        engine.run_batch_size(pr, spec, sgd(momentum=0.9))
        return counts["n"]

    assert reads(128) - reads(64) <= 64 // STEP_BLOCK


@pytest.mark.parametrize("sampler", ["without_replacement", "with_replacement"])
def test_a_batch_schedule_matches_the_exact_linear_regression_theory(sampler):
    """batch_schedule in place of batch_sizes (issue 26): the one curve keyed "schedule" of the least-squares file
    equals the linear-regression setting's exact theory along the same schedule (docs/theory.md §12) within SE —
    b = 1 for 3 steps, then b = 4 > n/2 (complement draws without replacement) for 3, g_T at the last b; the config
    round-trips with the schedule, and a schedule of one segment is the constant-b run, bitwise."""
    sched, lr = [[1, 3], [4, 3]], {"schedule": "constant", "c": "1/10"}
    raw = {k: v for k, v in tiny_config_json(lr=lr, sampler=sampler).items() if k not in ("steps", "batch_sizes")}
    lin = api.parse_config({**raw, "batch_schedule": sched})
    exact = api.theory(lin)["curves"]
    c = cfg("tests/models/least_squares.py", inits=1, replicas=4000, record_every=1, batch_schedule=sched, lr=lr,
            noise_samples=5, dtype="float64", seed=3, sampler=sampler)
    assert c.steps == 6 and api.parse_config(c.to_json()) == c and "batch_sizes" not in c.to_json()
    res = api.simulate(c)
    assert list(res["t"]) == list(range(7)) and res["batch_sizes"] == ["schedule"]
    probe = [("var_g", "var_g")] if sampler == "without_replacement" else []  # g_t is probed without replacement
    for ours, theirs in (*probe, ("loss_train", "loss"), ("noise_spread", "var_full_grad")):
        est, se = res["curves"][ours]["value"], res["curves"][ours]["se"]
        assert est.shape == (1, 7)
        ok = se > 0
        zz = z(est[ok], se[ok], np.asarray(exact[theirs])[ok])
        assert np.all(np.abs(zz) <= 4.5), (ours, zz)
    assert list(doc_of(c)["curves"]) == ["schedule"] and doc_of(c)["batch_schedule"] == sched
    one = api.simulate(cfg("tests/models/least_squares.py", inits=1, replicas=50, record_every=1,
                           batch_schedule=[[2, 4]], lr=lr, dtype="float64", sampler=sampler))
    const = api.simulate(cfg("tests/models/least_squares.py", inits=1, replicas=50, record_every=1, steps=4,
                             batch_sizes=[2], lr=lr, dtype="float64", sampler=sampler))
    for q in ("var_g", "loss_train"):
        assert np.array_equal(one["curves"][q]["value"], const["curves"][q]["value"], equal_nan=True), q


# -- a cancelled run resumes from its checkpoints ---------------------------------------------------------------

@pytest.mark.parametrize("over, saved_at", [  # blocks of 32 steps from each segment's start: the last save ≤ t = 45
    ({"batch_sizes": [4, 8], "optimizer": {"name": "sgd", "momentum": 0.9, "nesterov": True}}, 32),
    ({"batch_schedule": [[4, 20], [8, 40]], "optimizer": {"name": "adam"}, "lr": {"schedule": "constant", "c": 0.01}},
     20),
    ({"batch_sizes": [16], "sampler": "epoch_reshuffle"}, 32),  # saved mid-epoch (3 steps an epoch): its permutation
])
def test_a_cancelled_run_resumes_to_the_uninterrupted_result_bitwise(tmp_path, over, saved_at):
    """Cancel in the middle of the last curve: the finished curve's state and the running one's last checkpoint
    (weights, optimizer state, statistics, streams) stay in the cache; Run resumes each from there and gives the
    uninterrupted run's numbers bitwise; once the result is cached the checkpoints are gone."""
    import threading

    from backend.cache import ResultCache
    from backend.errors import Cancelled
    from backend.settings.classifier import Checkpoints, checkpoint_key

    c = cfg("tests/models/tiny_mlp.py", inits=2, replicas=8, steps=60, record_every=10, noise_samples=16,
            dtype="float64", **over)
    full = api.simulate(c, cache=ResultCache(tmp_path / "a"))
    device = torch.device(full["meta"]["device"])
    cache = ResultCache(tmp_path / "b")
    curves = [k for k, _ in setting.replica_runs(c)]
    per_step = c.inits * c.replicas  # progress units: replica-steps, reported every step
    stop_at = per_step * (c.steps * (len(curves) - 1) + 45)  # at t = 45 of the last curve
    cancel, progress = threading.Event(), api.Progress()
    progress.on_advance = lambda units: cancel.set() if progress.done >= stop_at else None
    with pytest.raises(Cancelled):
        api.simulate(c, progress=progress, cancel=cancel, cache=cache)
    saved = Checkpoints(c, device, cache)
    assert [None if saved.resume(k) is None else saved.resume(k)["step"] for k in curves] == \
        [60] * (len(curves) - 1) + [saved_at]
    assert api.cached_simulation(c, cache=cache) is None  # nothing of the result is cached before it finishes
    resumed = api.simulate(c, cache=cache)
    assert [p["resumed_from_step"] for p in resumed["meta"]["per_b"]] == [60] * (len(curves) - 1) + [saved_at]
    for q, curve in full["curves"].items():
        for part, value in curve.items():
            if isinstance(value, np.ndarray):
                np.testing.assert_array_equal(resumed["curves"][q][part], value, err_msg=f"{q}.{part}")
    assert all(cache.get(checkpoint_key(c, device, k)) is None for k in curves)


# -- the advisor and sweeps on your model ------------------------------------------------------------------------

def test_the_advisor_and_a_sweep_run_your_model(tmp_path):
    """The replica advisor on a model file: each (rule, b) runs ⌊N/b⌋ steps at c·(b/b_ref)^k and reports that run's
    final training loss, var_g and spread of ∇L with their SEs (the run made again from its config in another cache
    gives the same numbers); a sweep over the seed runs one cell per value, each the simulate document of its
    config."""
    from backend import advisor, sweep
    from backend.cache import ResultCache

    base = cfg("tests/models/tiny_mlp.py", inits=1, replicas=4, batch_sizes=[2, 8], record_every=4,
               lr={"schedule": "constant", "c": "1/10"}, noise_samples=8, dtype="float64")
    answers = advisor.advise_rules(base, 64, ("none", "linear"), 2)
    for rule, k in (("none", 0), ("linear", 1)):
        for b in (2, 8):
            row = answers[rule]["curves"][str(b)]
            cell = api.parse_config(row["config"])
            assert (cell.steps, row["steps"], cell.batch_sizes) == (64 // b, 64 // b, (b,))
            assert float(cell.lr.c) == pytest.approx(0.1 * (b / 2) ** k, rel=1e-15)
            again = api.simulate(cell, cache=ResultCache(tmp_path / f"{rule}{b}"))
            for out, q in (("loss", "loss_train"), ("var_g", "var_g"), ("var_full_grad", "noise_spread")):
                assert row[out] == again["curves"][q]["value"][0, -1] and row[f"{out}_se"] == \
                    again["curves"][q]["se"][0, -1], (rule, b, out)
    spec = sweep.load_sweep(json.dumps({"base": base.to_json(), "grid": {"seed": [0, 1]}}))
    out = sweep.run(spec, sweep.LocalExecutor(), ResultCache(tmp_path / "sweep"))
    assert not out["failed"] and [c["config"]["seed"] for c in out["cells"]] == [0, 1]
    for cell in out["cells"]:
        config = api.parse_config(cell["config"])
        doc = setting.simulate_document(config, api.simulate(config, cache=ResultCache(tmp_path / "direct")))
        assert cell["result"]["curves"] == json.loads(json.dumps(doc["curves"]))
    assert out["cells"][0]["result"]["curves"] != out["cells"][1]["result"]["curves"]


def test_the_defaults_resolve_b_simple():
    """The page's defaults draw B_simple: on the default noise subsample the debiased ‖∇L‖² is resolved at every
    recorded t (B_simple ≈ 50–80 on the digits MLP, so a subsample of 64 points could not resolve it), each
    estimate within a quarter of itself."""
    res = api.simulate(api.parse_config({"setting": "torch_model", "device": "cpu"}))
    value, se = res["curves"]["b_simple"]["value"], res["curves"]["b_simple"]["se"]
    assert np.isfinite(value).all() and (se < value / 4).all(), (value, se)

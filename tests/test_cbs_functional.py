"""Replica branches of the critical batch size for the functional models — the MLP and your own model
(backend/engine/replica_branch.py, backend/settings/replica_cbs.py; docs/theory.md §11): the branch losses and their
SEs against a per-replica reference (one nn.Module and one torch.optim optimizer per replica, Python loops, the same
index draws), exactly up to rounding; B_simple and B_noise at t = 0 against autograd's per-sample gradients and full
Hessian over the whole training set (|z| ≤ 4); the Hessian-free fallback; the CLI's document and its bad input."""

import copy
import json
import math

import numpy as np
import pytest
import torch

from backend import allowed, cbs
from backend.__main__ import main
from backend.cache import ResultCache
from backend.config import parse_config
from backend.engine import mlp as mlp_engine
from backend.engine import replica_branch as rb
from backend.engine import torch_model as tm_engine
from backend.engine.runner import seed_for
from backend.engine.samplers import batch_indices, make_sampler
from backend.images import load_dataset

MLP = {"setting": "mlp", "hidden": [4], "replicas": 3, "epochs": 1, "noise_samples": 16, "eval_size": 300,
       "dtype": "float64", "sampler": "epoch_reshuffle", "lr": {"schedule": "inverse", "c": "0.5"},
       "optimizer": {"name": "adam"}, "seed": 2}
TORCH = {"setting": "torch_model", "replicas": 3, "steps": 12, "record_every": 4, "dtype": "float64",
         "lr": {"schedule": "constant", "c": "0.05"}, "optimizer": {"name": "sgd", "momentum": 0.9, "nesterov": True},
         "noise_samples": 16, "seed": 4}


@pytest.fixture()
def cache(tmp_path):
    return ResultCache(tmp_path)


def _mlp_reference_parts(config):
    data = load_dataset(config.dataset)
    X = torch.as_tensor(data.x_train.reshape(len(data.x_train), -1), dtype=torch.float64)
    Y = torch.as_tensor(data.y_train)
    model = mlp_engine.make_model(X.shape[1], config.hidden, data.n_classes).double()
    w0 = mlp_engine.init_params(model, 1, config.seed, torch.float64, torch.device("cpu"))
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(w0[name][0])
    loss = lambda out, y: torch.nn.functional.cross_entropy(out, y)  # noqa: E731
    return model, X, Y, X[:config.eval_size], Y[:config.eval_size], loss, torch.optim.Adam


def _torch_reference_parts(config):
    mf = tm_engine.load(allowed.model_file(config.model["file"]))
    model = copy.deepcopy(mf.template).double()
    X, Y = mf.Xtr.to(torch.float64) if mf.Xtr.is_floating_point() else mf.Xtr, mf.Ytr
    loss = lambda out, y: mf.loss(out, y).mean()  # noqa: E731
    make = lambda params, lr: torch.optim.SGD(params, lr=lr, momentum=0.9, nesterov=True)  # noqa: E731
    return model, X, Y, X, Y, loss, make


def _per_replica_reference(config, parts, b_ref, cps, samples, rules, ks, alphas=None):
    """Each replica its own module copy and torch.optim optimizer (Python loops over replicas and lanes); the index
    draws of the engine's samplers (the reference run's seed_for(seed, B, 1), each branch's seed_for(seed, kB, 3) over
    rules × checkpoints × replicas rows); ``alphas`` the reference run's α_t (default the config's lr schedule).
    Returns {(rule, t, b): the per-replica final losses}."""
    model, X, Y, Xev, Yev, loss, make_opt = parts
    n, R = X.shape[0], config.replicas
    alphas = config.lr.alphas(max(cps) + 1) if alphas is None else alphas
    gen = torch.Generator().manual_seed(seed_for(config.seed, b_ref, 1))
    draw = make_sampler(config.sampler, n, b_ref, R, gen, torch.device("cpu"))
    models = [copy.deepcopy(model) for _ in range(R)]
    opts = [make_opt(m.parameters(), 1.0) for m in models]
    saved = {}
    for t in range(max(cps) + 1):
        if t in cps:
            saved[t] = [(copy.deepcopy(m.state_dict()), copy.deepcopy(o.state_dict())) for m, o in zip(models, opts)]
        if t < max(cps):
            idx = batch_indices(draw.draw(), n)
            for r in range(R):
                opts[r].param_groups[0]["lr"] = alphas[t]
                opts[r].zero_grad()
                loss(models[r](X[idx[r]]), Y[idx[r]]).backward()
                opts[r].step()
    out = {}
    for k in ks:
        b = k * b_ref
        rows = make_sampler(config.sampler, n, b, len(rules) * len(cps) * R,
                            torch.Generator().manual_seed(seed_for(config.seed, b, 3)), torch.device("cpu"))
        lanes = [(rule, t, r) for rule in rules for t in cps for r in range(R)]
        ms, os_ = [], []
        for rule, t, r in lanes:
            m = copy.deepcopy(model)
            m.load_state_dict(saved[t][r][0])
            o = make_opt(m.parameters(), 1.0)
            o.load_state_dict(copy.deepcopy(saved[t][r][1]))  # its own moments (torch shares the tensors)
            o.param_groups[0]["lr"] = alphas[t] * k ** {"none": 0, "sqrt": 0.5, "linear": 1}[rule]
            ms.append(m)
            os_.append(o)
        for _ in range(samples // b):
            idx = batch_indices(rows.draw(), n)
            for i, (m, o) in enumerate(zip(ms, os_)):
                o.zero_grad()
                loss(m(X[idx[i]]), Y[idx[i]]).backward()
                o.step()
        with torch.no_grad():
            for i, (rule, t, r) in enumerate(lanes):
                out.setdefault((rule, t, b), []).append(float(loss(ms[i](Xev), Yev)))
    return out


@pytest.mark.parametrize("raw, parts", [(MLP, _mlp_reference_parts), (TORCH, _torch_reference_parts)],
                         ids=["mlp-adam-inverse", "torch_model-nesterov"])
def test_branches_equal_a_per_replica_reference(cache, raw, parts):
    """The vectorised lanes (rules × checkpoints × replicas, per-lane α and Adam's step count) against a module and
    an optimizer per replica: the same numbers up to float64 rounding, the mean and its SE over the replicas."""
    config = parse_config(raw)
    rules, cps, ks = ("none", "linear"), [0, 5], [1, 2]
    docs = cbs.cbs_rules(config, 8, cps, 32, rules, ks=ks, cache=cache)
    want = _per_replica_reference(config, parts(config), 8, cps, 32, rules, ks)
    for rule in rules:
        for row in docs[rule]["checkpoints"]:
            for b, br in row["branches"].items():
                losses = np.asarray(want[rule, row["t"], int(b)])
                assert br["loss"] == pytest.approx(losses.mean(), rel=1e-9), (rule, row["t"], b)
                assert br["loss_se"] == pytest.approx(losses.std(ddof=1) / math.sqrt(len(losses)), rel=1e-6)
                assert not br["diverged"] and br["diverged_replicas"] == 0


def _exact_noise_scales(config):
    """tr Σ, ‖∇L‖², tr(HΣ), ∇LᵀH∇L at w_0 over all n training images: per-sample gradients by autograd, the full
    Hessian of the training loss by torch.autograd.functional.hessian."""
    model, X, Y, *_ = _mlp_reference_parts(config)
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for _, p in model.named_parameters()]
    flat0 = torch.cat([p.detach().reshape(-1) for p in model.parameters()])

    def unflat(f):
        out, i = {}, 0
        for name, s in zip(names, shapes):
            out[name] = f[i:i + s.numel()].reshape(s)
            i += s.numel()
        return out

    def loss(f, x, y):
        return torch.nn.functional.cross_entropy(torch.func.functional_call(model, unflat(f), (x,)), y)

    H = torch.autograd.functional.hessian(lambda f: loss(f, X, Y), flat0)
    g = torch.vmap(torch.func.grad(lambda f, x, y: loss(f, x[None], y[None])), in_dims=(None, 0, 0))(flat0, X, Y)
    G = g.mean(0)
    d = g - G
    return {"trace": float((d * d).sum(1).mean()), "grad2": float(G @ G),
            "h_trace": float(((d @ H) * d).sum(1).mean()), "h_grad2": float(G @ H @ G)}


def test_noise_scales_at_t0_against_autograd(cache):
    """At t = 0 every replica sits at w_0 and each draws its own subsets: B_simple and B_noise (replica means of
    unbiased estimates, SEs across replicas) within 4 SE of the exact ratios over the n = 1438 images; with
    noise_samples ≥ n, tr Σ and ‖∇L‖² are exact (B_simple's SE 0)."""
    config = parse_config({**MLP, "hidden": [3], "replicas": 400, "noise_samples": 64, "optimizer": {"name": "sgd"}})
    exact = _exact_noise_scales(config)
    row = cbs.cbs(config, 8, [0], 8, ks=[1], cache=cache)["checkpoints"][0]
    zs = [(row["b_simple"] - exact["trace"] / exact["grad2"]) / row["b_simple_se"],
          (row["b_noise"] - exact["h_trace"] / exact["h_grad2"]) / row["b_noise_se"]]
    assert max(abs(z) for z in zs) <= 4, (zs, row, exact)
    full = parse_config({**MLP, "hidden": [3], "replicas": 20, "noise_samples": 5000, "optimizer": {"name": "sgd"}})
    row = cbs.cbs(full, 8, [0], 8, ks=[1], cache=cache)["checkpoints"][0]
    assert row["b_simple"] == pytest.approx(exact["trace"] / exact["grad2"], rel=1e-9)
    assert row["b_simple_se"] == pytest.approx(0.0, abs=1e-9)
    assert row["b_noise_se"] > 0  # tr(HΣ) by NOISE_SAMPLES points per replica


def test_without_second_derivatives_b_noise_is_null(cache, monkeypatch):
    def refuse(*args, **kwargs):
        raise NotImplementedError("no double backward")

    monkeypatch.setattr(rb, "_hessian_terms", refuse)
    doc = cbs.cbs(parse_config({**MLP, "seed": 7}), 8, [0, 3], 16, ks=[1, 2], cache=cache)
    assert "b_noise_note" in doc and "Hessian" in doc["b_noise_note"]
    for row in doc["checkpoints"]:
        assert row["b_noise"] is None and row["b_simple"] is not None and row["step_opt"]["8"] is None
        assert all(br["loss"] is not None for br in row["branches"].values())


def test_cli_document_and_bad_checkpoint(tmp_path, capsys, monkeypatch):
    """The CLI on the MLP (the local executor): the replica document (loss_se per branch); a checkpoint past
    epochs × ⌊n/B⌋ steps (1 × ⌊1438/8⌋ = 179) exits 2 with one line naming it; --address without --executor ray too."""
    monkeypatch.setenv("BATCHVAR_CACHE_DIR", str(tmp_path / "cli"))
    path = tmp_path / "c.json"
    path.write_text(json.dumps(MLP))
    assert main(["cbs", str(path), "--b-ref", "8", "--checkpoints", "0,179", "--samples", "16", "--ks", "1,2",
                 "--executor", "local"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["exact"] is False and doc["setting"] == "mlp" and doc["replicas"] == 3
    assert all("loss_se" in br for row in doc["checkpoints"] for br in row["branches"].values())
    assert main(["cbs", str(path), "--b-ref", "8", "--checkpoints", "180", "--samples", "16"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: checkpoints:") and "179" in err and err.count("\n") == 1
    assert main(["cbs", str(path), "--b-ref", "8", "--checkpoints", "0", "--samples", "16", "--address", "1.2.3.4:1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: address:") and err.count("\n") == 1


def test_estimate_and_guard(tmp_path, capsys):
    """The estimate before a replica cbs run (None where the branches are exact); the resource guard refuses a run past
    an hour on this machine, and the CLI says so in one line (exit 2) naming replicas."""
    config = parse_config(MLP)
    est = cbs.estimate(config, 8, [0, 5], 32, ("none", "linear"), [1, 2])
    assert est["seconds"] > 0 and est["memory_bytes"] > 0 and est["flops"] > 0
    bigger = cbs.estimate(config.replace(replicas=30), 8, [0, 5], 32, ("none", "linear"), [1, 2])
    assert bigger["flops"] > 5 * est["flops"]
    assert cbs.estimate(parse_config({"setting": "linear_regression"}), 1, [0], 4) is None
    huge = {**MLP, "hidden": [2048, 2048], "replicas": 5000, "epochs": 50}
    with pytest.raises(cbs.ConfigError) as e:
        cbs.estimate(parse_config(huge), 8, [0, 5000], 60000, ("none", "sqrt", "linear"), [1, 2, 4, 8])
    assert str(e.value).startswith("replicas:")
    path = tmp_path / "c.json"
    path.write_text(json.dumps(huge))
    assert main(["cbs", str(path), "--b-ref", "8", "--checkpoints", "0,5000", "--samples", "60000"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: replicas:") and err.count("\n") == 1, err


def test_branch_chart_draws_95_percent_intervals(cache):
    """The branch chart of a replica document: one error bar per drawn branch, loss ∓ t_{0.975, R−1} · loss_se
    (scipy's quantile here), inside the chart spec; the CSV table carries loss_se."""
    from scipy import stats as sps

    from backend import charts

    docs = cbs.cbs_rules(parse_config({**MLP, "replicas": 5}), 8, [0, 5], 32, ("none", "linear"), ks=[1, 2],
                         cache=cache)
    spec = charts.branch_loss_chart(docs, 5).to_dict()
    assert "95 % intervals" in json.dumps(spec["title"])
    assert any(layer.get("mark", {}).get("type") == "errorbar" for layer in spec["layer"])
    rows = [r for data in spec["datasets"].values() for r in data if "hi" in r and r.get("se") is not None]
    q = sps.t.ppf(0.975, 4)
    for rule, doc in docs.items():
        for b, br in doc["checkpoints"][1]["branches"].items():
            got = [r for r in rows if r["rule"] == rule and r["b"] == int(b)]
            assert got and got[0]["hi"] == pytest.approx(br["loss"] + q * br["loss_se"], rel=1e-9)
            assert got[0]["lo"] == pytest.approx(br["loss"] - q * br["loss_se"], rel=1e-9)
    table = cbs.table(docs)
    assert all(r["loss_se"] is not None and "b_noise_se" in r for r in table)


def test_page_runs_the_replica_branches():
    """The Critical batch size page on the MLP: the estimate before Run, then Run draws the replica branches (a metric
    per rule, both charts, the tables, both downloads) without an error box; the table carries each branch loss's SE."""
    from test_app import open_page, press_run_and_wait

    at = open_page("pages/critical_batch.py")
    at.selectbox(key="cbs_setting").set_value("mlp").run()
    at.text_input(key="cbs_checkpoints_mlp").set_value("0,30").run()
    at.text_input(key="cbs_ks_mlp").set_value("1,2").run()
    at.multiselect(key="cbs_rules").set_value(["none", "linear"]).run()
    assert not at.error and any("estimated" in m.value for m in at.markdown)
    press_run_and_wait(at)
    assert not at.error and not at.exception and len(at.metric) == 2
    assert len(at.get("download_button")) == 2 and len(at.dataframe) == 2
    assert "branch loss SE" in at.dataframe[1].value.columns  # loss_se, under the quantity's name

"""B_simple and the one-step noise from a fixed subsample: the per-sample dot products behind their subsample error,
the SE that counts that error, and B_simple never reported negative or with a zero SE where it is estimated."""

import io

import numpy as np
import pandas as pd
import pytest
import torch

from backend import api, export, report
from backend.engine import mlp as engine
from backend.engine import noise
from backend.images import load_digits
from backend.stats import RESOLVED_Z, Groups, subsample_noise

DEV = torch.device("cpu")


def mlp_params(hidden, K, R, dtype=torch.float64, jitter=0.0):
    model = engine.make_model(64, hidden, 10)
    params = {k: v.repeat_interleave(R, dim=0) for k, v in engine.init_params(model, K, 0, dtype, DEV).items()}
    if jitter:
        gen = torch.Generator().manual_seed(1)
        params = {k: v + jitter * torch.randn(v.shape, generator=gen, dtype=dtype) for k, v in params.items()}
    return params


def digits(m, dtype=torch.float64, start=0):
    data = load_digits()
    X = torch.as_tensor(data.x_train[start:start + m].reshape(-1, 64), dtype=dtype)
    return X, torch.as_tensor(data.y_train[start:start + m])


def test_per_sample_dots_against_autograd():
    """g_i · v_r for every replica and point: the Linear–ReLU pass, the vmapped per-sample gradients and a plain
    autograd loop agree (float64)."""
    hidden, K, R = (7, 5), 1, 3
    params = mlp_params(hidden, K, R, jitter=0.05)
    rep = engine.Replicas(engine.make_model(64, hidden, 10))
    XS, YS = digits(30)
    P = sum(v[0].numel() for v in params.values())
    v = torch.randn(K * R, P, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    fast = noise.linear_relu_per_sample_dots(params, XS, YS, v, chunk=8)
    slow = noise.per_sample_dots(rep, params, XS, YS, v, chunk=7)
    torch.testing.assert_close(fast, slow, rtol=1e-10, atol=1e-12)
    for r in range(K * R):
        m = engine.make_model(64, hidden, 10).double()
        with torch.no_grad():
            for name, p in m.named_parameters():
                p.copy_(params[name][r])
        for i in (0, 11, 29):
            m.zero_grad()
            torch.nn.functional.cross_entropy(m(XS[i:i + 1]), YS[i:i + 1]).backward()
            g = torch.cat([p.grad.reshape(-1) for p in m.parameters()])
            assert fast[r, i].item() == pytest.approx((g @ v[r]).item(), rel=1e-10, abs=1e-12)
    sq, mean = noise.linear_relu_per_sample_terms(params, XS, YS)
    sq2, mean2 = noise.per_sample_terms(rep, params, XS, YS, chunk=4)
    torch.testing.assert_close(sq, sq2, rtol=1e-10, atol=0)
    torch.testing.assert_close(mean, mean2, rtol=1e-10, atol=1e-14)


def test_subsample_se_covers_the_spread_over_independent_subsamples():
    """Fixed weights (every replica of an init at its w_0, as at epoch 0: no replica error), J independent uniform
    m-subsets of the n points: the spread (sd) of B_simple, tr Σ̂ and ‖G‖²^ over the subsamples matches the RMS of
    their reported SEs. Tolerance: the sd of J draws has relative SE √((κ − 1)/(4J)) (κ their kurtosis), ×4, plus
    10 % for the delta method's O(1/m) error (m large enough for the linearisation: B_simple's relative SE ≈ 15 %)."""
    hidden, K, R, n, m, b, J = (6,), 2, 2, 1000, 250, 8, 120
    params = mlp_params(hidden, K, R)
    X, Y = digits(n)
    alive = torch.ones(K * R, dtype=torch.bool)
    gen = np.random.default_rng(5)
    vals = {q: [] for q in ("b_simple", "trace_sigma", "grad_sq")}
    ses = {q: [] for q in vals}
    for _ in range(J):
        idx = torch.as_tensor(gen.choice(n, m, replace=False))
        XS, YS = X[idx], Y[idx]
        sq, mean = noise.linear_relu_per_sample_terms(params, XS, YS)
        dots = noise.linear_relu_per_sample_dots(params, XS, YS, mean)
        out = subsample_noise(sq, dots, mean, Groups.blocks(K, R, DEV), alive, n, b)
        for q in vals:
            vals[q].append(out[q][0])
            ses[q].append(out[q][1])
    for q in vals:
        v, s = np.array(vals[q]), np.array(ses[q])  # (J, K)
        assert (s > 0).all(), q
        sd = v.std(axis=0, ddof=1)
        rms = np.sqrt((s ** 2).mean(axis=0))
        kurt = ((v - v.mean(0)) ** 4).mean(0) / v.var(0) ** 2
        tol = 4 * np.sqrt((kurt - 1) / (4 * J)) + 0.10
        assert np.all(np.abs(rms / sd - 1) <= tol), (q, rms, sd, tol)


def test_subsample_error_vanishes_when_the_subsample_is_the_whole_set():
    hidden, K, R, n = (6,), 1, 3, 40
    params = mlp_params(hidden, K, R)
    X, Y = digits(n)
    sq, mean = noise.linear_relu_per_sample_terms(params, X, Y)
    out = subsample_noise(sq, noise.linear_relu_per_sample_dots(params, X, Y, mean), mean, Groups.blocks(K, R, DEV),
                          torch.ones(K * R, dtype=torch.bool), n, 4)
    for q in ("b_simple", "trace_sigma", "grad_sq", "noise_one_step"):
        assert out[q][1][0] == pytest.approx(0.0, abs=1e-12 * abs(out[q][0][0])), q


def check_b_simple(res: dict) -> int:
    """Every reported B_simple (summary and per init) is positive with a positive SE, or null; returns the nulls."""
    c = res["curves"]["b_simple"]
    for value, se in ((c["value"], c["se"]), (c["per_init"], c["per_init_se"])):
        shown = np.isfinite(value)
        assert (value[shown] > 0).all() and (se[shown] > 0).all(), (value, se)
        assert np.isnan(se[~shown]).all()
    return int((~np.isfinite(c["value"])).sum())


def test_mlp_b_simple_has_a_subsample_se_at_epoch_0():
    """Epoch 0: every replica of an init sits at w_0, so the replica SE is zero; the SE now counts the subsample."""
    cfg = api.parse_config({"setting": "mlp", "hidden": [8], "inits": 2, "replicas": 4, "epochs": 1,
                            "batch_sizes": [16], "eval_size": 200})  # 512 noise samples (the default)
    res = api.simulate(cfg)
    check_b_simple(res)
    c = res["curves"]["b_simple"]
    assert np.isfinite(c["value"][0, 0]) and c["se"][0, 0] > 0
    assert (res["curves"]["noise_one_step"]["se"][0, 0] > 0)


def test_unresolved_b_simple_is_null_with_a_note():
    """64 noise samples of 1 438 digits: ‖G‖²^ is within 2 SE of zero, so B_simple is not resolved — null in the
    result, the CLI document and the downloads, with a note that names noise_samples (the sequence model's laptop
    preset, with 16 noise samples, is the same case)."""
    cfg = api.parse_config({"setting": "mlp", "hidden": [8], "inits": 2, "replicas": 4, "epochs": 1,
                            "batch_sizes": [16], "noise_samples": 64, "eval_size": 200})
    res = api.simulate(cfg)
    nulls = check_b_simple(res)
    raw = res["per_init"][16]
    unresolved = ~(raw["grad_sq"] > RESOLVED_Z * raw["grad_sq_se"])
    assert unresolved.any() and nulls == int(unresolved.any(axis=1).sum())
    assert (res["curves"]["b_simple"]["resolved"][0] == ~unresolved.any(axis=1)).all()
    doc = report.simulate_output(cfg, res)
    entry = doc["curves"]["16"]
    assert None in entry["b_simple"]
    assert [v is not None for v in entry["b_simple"]] == entry["b_simple_resolved"]
    assert any("B_simple is not resolved" in note for note in doc["notes"])
    split = api.variance_split(res)
    assert entry["spread_resolved"] == split["resolved"][0].tolist()
    assert len(entry["total_minus_one_step"]) == len(entry["total_minus_one_step_se"]) == cfg.epochs + 1
    csv = export.curves_csv(res["x"], cfg.batch_sizes, None, res, ("b_simple",), "epoch")
    rows = pd.read_csv(io.StringIO(csv))
    assert rows["estimate"].isna().sum() == nulls
    note = api.b_simple_note(cfg, res)
    assert note and "noise_samples" in note and "not resolved" in note


def test_split_note_says_when_the_difference_is_within_its_ses():
    """The split's data: total − one-step with √(SE² + SE²) and whether it exceeds 2 SE; the note names each b whose
    difference does not (the MLP figures of the report: 1.272 ± 0.3 total against 1.634 ± 0.11 one-step)."""
    c = {"var_g": {"value": np.array([[2.0, 1.272], [2.0, 3.0]]), "se": np.array([[0.1, 0.3], [0.1, 0.1]])},
         "noise_one_step": {"value": np.array([[1.0, 1.634], [1.0, 1.0]]), "se": np.array([[0.1, 0.11], [0.1, 0.1]])}}
    sim = {"curves": c, "batch_sizes": [16, 64], "x": np.array([0, 12])}
    split = api.variance_split(sim)
    assert split["difference"][0, 1] == pytest.approx(-0.362) and split["difference_se"][0, 1] == pytest.approx(
        np.hypot(0.3, 0.11))
    assert split["resolved"].tolist() == [[True, False], [True, True]]
    note = api.split_note(sim)
    assert "b = 16: total − one-step = -0.362 ± 0.32" in note and "b = 64" not in note and "epoch 12" in note
    c["var_g"]["value"][0, 1] = 3.0
    assert api.split_note(sim) is None

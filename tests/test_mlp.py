"""MLP classifier: vmap replicas vs separate modules, the variance split, B_simple, IDX files, distortion, resume, CLI."""

import gzip
import json
import os
import struct
import subprocess
import sys
import tempfile
import threading

import numpy as np
import pytest
import torch
from conftest import ROOT

from backend import api, stats
from backend.settings import classifier as api_mlp
from backend.cache import ResultCache
from backend.config import parse_config
from backend.engine import mlp as engine
from backend.engine import noise
from backend.engine.loop import RunSpec
from backend.engine.samplers import make_sampler
from backend.errors import Cancelled, ConfigError
from backend.images import displacement_fields, elastic_distort, gaussian_kernel, load_digits, load_idx_dir, read_idx

DEV = torch.device("cpu")


def small_setup(hidden=(6,), K=2, R=3, dtype=torch.float64):
    data = load_digits()
    model = engine.make_model(64, hidden, 10)
    params0 = engine.init_params(model, K, 0, dtype, DEV)
    params = {k: v.repeat_interleave(R, dim=0) for k, v in params0.items()}
    return data, model, params


def test_vmap_replicas_match_separate_modules():
    data, model, params = small_setup()
    rep = engine.Replicas(engine.make_model(64, (6,), 10))
    X = torch.as_tensor(data.x_train.reshape(-1, 64), dtype=torch.float64)
    Y = torch.as_tensor(data.y_train)
    idx = make_sampler("without_replacement", len(X), 8, 6, torch.Generator().manual_seed(0), DEV).draw().idx
    g, loss = rep.grad_and_loss(params, X[idx], Y[idx])
    for r in range(6):
        m = engine.make_model(64, (6,), 10).double()
        with torch.no_grad():
            for name, p in m.named_parameters():
                p.copy_(params[name][r])
        out = torch.nn.functional.cross_entropy(m(X[idx[r]]), Y[idx[r]])
        out.backward()
        assert loss[r].item() == pytest.approx(out.item(), rel=1e-12)
        for name, p in m.named_parameters():
            torch.testing.assert_close(g[name][r], p.grad, rtol=1e-10, atol=1e-12)


def test_noise_terms_and_b_simple_against_autograd_loops():
    """tr Σ (per-sample gradient covariance on S) and ∇L_S from per-sample vmap equal plain autograd loops."""
    data, model, params = small_setup(K=1, R=2)
    rep = engine.Replicas(engine.make_model(64, (6,), 10))
    XS = torch.as_tensor(data.x_train[:20].reshape(-1, 64), dtype=torch.float64)
    YS = torch.as_tensor(data.y_train[:20])
    trace, mean = noise.noise_terms(rep, params, XS, YS, chunk=7)
    trace1, mean1 = noise.noise_terms(rep, params, XS, YS, chunk=1)  # one point per pass: the same sums
    torch.testing.assert_close(trace1, trace, rtol=1e-12, atol=0)
    torch.testing.assert_close(mean1, mean, rtol=1e-12, atol=1e-15)
    fast = noise.linear_relu_noise_terms(params, XS, YS)  # outer-product norms, no per-sample gradients
    for r in range(2):
        m = engine.make_model(64, (6,), 10).double()
        with torch.no_grad():
            for name, p in m.named_parameters():
                p.copy_(params[name][r])
        grads = []
        for i in range(20):
            m.zero_grad()
            torch.nn.functional.cross_entropy(m(XS[i:i + 1]), YS[i:i + 1]).backward()
            grads.append(torch.cat([p.grad.reshape(-1) for p in m.parameters()]))
        G = torch.stack(grads)
        cov_trace = ((G - G.mean(0)) ** 2).sum() / 19
        assert trace[r].item() == pytest.approx(cov_trace.item(), rel=1e-10)
        torch.testing.assert_close(mean[r], G.mean(0), rtol=1e-10, atol=1e-12)
        assert fast[0][r].item() == pytest.approx(cov_trace.item(), rel=1e-10)
        torch.testing.assert_close(fast[1][r], G.mean(0), rtol=1e-10, atol=1e-12)
        b_simple = cov_trace / G.mean(0).square().sum()
        assert (trace[r] / mean[r].square().sum()).item() == pytest.approx(b_simple.item(), rel=1e-10)


def test_linear_relu_noise_terms_equal_per_sample_gradients_deeper():
    """Two hidden layers, float64 and float32, whole and in chunks of points: the outer-product form of the one-step
    noise terms gives the sums of the vmapped per-sample gradients."""
    for dtype, rtol in ((torch.float64, 1e-11), (torch.float32, 1e-4)):
        data, model, params = small_setup(hidden=(7, 5), K=2, R=3, dtype=dtype)
        params = {k: v + 0.05 * torch.randn(v.shape, generator=torch.Generator().manual_seed(1), dtype=dtype)
                  for k, v in params.items()}  # the replicas differ
        rep = engine.Replicas(engine.make_model(64, (7, 5), 10))
        XS = torch.as_tensor(data.x_train[:50].reshape(-1, 64), dtype=dtype)
        YS = torch.as_tensor(data.y_train[:50])
        ref = noise.noise_terms(rep, params, XS, YS)
        for chunk in (None, 8):
            got = noise.linear_relu_noise_terms(params, XS, YS, chunk=chunk)
            torch.testing.assert_close(got[0], ref[0], rtol=rtol, atol=0)
            torch.testing.assert_close(got[1], ref[1], rtol=rtol, atol=rtol * ref[1].abs().max().item())


def test_variance_split_adds_up():
    """var(g_t | F_0) = E[var(g_t | F_t)] + var(∇L(w_t)): after a few SGD steps from one init, the plain across-replica
    variance of a fresh mini-batch gradient agrees with one-step (Lemma 1, exact per-sample variance over the whole
    training set) + spread, |z| ≤ 4 with batch-means SEs."""
    data = load_digits()
    n, b, R = 150, 10, 2000
    X = torch.as_tensor(data.x_train[:n].reshape(n, 64), dtype=torch.float64)
    Y = torch.as_tensor(data.y_train[:n])
    model = engine.make_model(64, (5,), 10)
    rep = engine.Replicas(engine.make_model(64, (5,), 10))
    params = {k: v.repeat_interleave(R, dim=0) for k, v in engine.init_params(model, 1, 3, torch.float64, DEV).items()}
    gen = torch.Generator().manual_seed(1)
    train = make_sampler("without_replacement", n, b, R, gen, DEV)
    for _ in range(5):
        idx = train.draw().idx
        g, _ = rep.grad_and_loss(params, X[idx], Y[idx])
        for k in params:
            params[k] = params[k] - 0.5 * g[k]
    probe = make_sampler("without_replacement", n, b, R, torch.Generator().manual_seed(2), DEV)
    idx = probe.draw().idx
    g = engine.flat(rep.grad_and_loss(params, X[idx], Y[idx])[0])
    trace, full = noise.noise_terms(rep, params, X, Y)
    c_b = (n - b) / (b * (n - 1))
    per_sample_var = trace * (n - 1) / n  # population variance over the n training points (Lemma 1)
    G = 40
    one = stats.Groups.blocks(1, R // G, DEV)
    tot = np.array([stats.variance_se(g[i::G], one, torch.ones(R // G, dtype=torch.bool))[0][0] for i in range(G)])
    split = np.array([c_b * per_sample_var[i::G].mean().item()
                      + stats.variance_se(full[i::G], one, torch.ones(R // G, dtype=torch.bool))[0][0]
                      for i in range(G)])
    diff = tot - split
    z = diff.mean() / (diff.std(ddof=1) / np.sqrt(G))
    assert abs(z) <= 4, z
    assert tot.mean() > 1.5 * (split.mean() - c_b * per_sample_var.mean().item())  # the one-step term matters


def write_idx(path, array, gz=True):
    code = {np.dtype(np.uint8): 0x08}[array.dtype]
    header = bytes([0, 0, code, array.ndim]) + struct.pack(">" + "I" * array.ndim, *array.shape)
    blob = header + array.tobytes()
    if gz:
        with gzip.open(path, "wb") as fh:
            fh.write(blob)
    else:
        path.write_bytes(blob)


def test_idx_loader_on_generated_files(tmp_path):
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, size=(30, 5, 4), dtype=np.uint8)
    labels = rng.integers(0, 3, size=30, dtype=np.uint8)
    write_idx(tmp_path / "train-images-idx3-ubyte.gz", imgs)
    write_idx(tmp_path / "train-labels-idx1-ubyte", labels, gz=False)
    data = load_idx_dir(tmp_path)
    assert data.x_train.shape[1:] == (5, 4) and len(data.x_train) + len(data.x_val) == 30
    assert data.x_train.min() >= -1 and data.x_train.max() <= 1
    np.testing.assert_array_equal(read_idx(tmp_path / "train-images-idx3-ubyte.gz"), imgs)
    # malformed files
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "train-images-idx3-ubyte").write_bytes(b"\x01\x02\x03\x04garbage")
    write_idx(tmp_path / "bad" / "train-labels-idx1-ubyte.gz", labels)
    with pytest.raises(ConfigError, match="bad magic"):
        load_idx_dir(tmp_path / "bad")
    (tmp_path / "trunc").mkdir()
    write_idx(tmp_path / "trunc" / "train-images-idx3-ubyte", imgs, gz=False)
    raw = (tmp_path / "trunc" / "train-images-idx3-ubyte").read_bytes()
    (tmp_path / "trunc" / "train-images-idx3-ubyte").write_bytes(raw[:-7])
    write_idx(tmp_path / "trunc" / "train-labels-idx1-ubyte.gz", labels)
    with pytest.raises(ConfigError, match="announces"):
        load_idx_dir(tmp_path / "trunc")
    (tmp_path / "mismatch").mkdir()
    write_idx(tmp_path / "mismatch" / "train-images-idx3-ubyte.gz", imgs)
    write_idx(tmp_path / "mismatch" / "train-labels-idx1-ubyte.gz", labels[:10])
    with pytest.raises(ConfigError, match="do not match"):
        load_idx_dir(tmp_path / "mismatch")


def test_dataset_parse_cache_rereads_changed_files_and_hands_out_copies(tmp_path):
    """load_dataset parses a directory once per process, but a rewritten file is read again, and a caller that
    changes its arrays does not change what the next caller gets."""
    from backend.images import load_dataset

    rng = np.random.default_rng(1)
    imgs = rng.integers(0, 256, size=(40, 4, 4), dtype=np.uint8)
    write_idx(tmp_path / "train-images-idx3-ubyte.gz", imgs)
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.arange(40, dtype=np.uint8) % 3)
    spec = {"name": "idx", "path": str(tmp_path)}
    first = load_dataset(spec)
    first.x_train[:] = 7.0
    again = load_dataset(spec)
    assert again.x_train.max() <= 1  # not the caller's 7.0
    np.testing.assert_array_equal(again.x_train, load_idx_dir(tmp_path).x_train)
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.arange(40, dtype=np.uint8) % 2)
    os.utime(tmp_path / "train-labels-idx1-ubyte.gz", ns=(1, 1))  # a new stamp even on a coarse clock
    changed = load_dataset(spec)
    assert set(np.unique(np.concatenate([changed.y_train, changed.y_val]))) == {0, 1}


def test_missing_directory_and_single_class(tmp_path):
    with pytest.raises(ConfigError, match="lacks"):
        load_idx_dir(tmp_path)
    imgs = np.zeros((10, 3, 3), dtype=np.uint8)
    write_idx(tmp_path / "train-images-idx3-ubyte.gz", imgs)
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.zeros(10, dtype=np.uint8))
    with pytest.raises(ConfigError, match="single class"):
        parse_config({"setting": "mlp", "dataset": {"name": "idx", "path": str(tmp_path)}})


def test_elastic_distortion_identity_and_statistics():
    data = load_digits()
    np.testing.assert_allclose(elastic_distort(data.x_val[:20], 0.0, 2.0, seed=3), data.x_val[:20], atol=1e-6)
    assert np.abs(elastic_distort(data.x_val[:20], 8.0, 2.0, seed=3) - data.x_val[:20]).max() > 0.5
    alpha, sigma = 3.0, 1.5
    disp = displacement_fields(400, 40, 40, alpha, sigma, torch.Generator().manual_seed(0)).numpy()
    k = gaussian_kernel(sigma).numpy()
    r = (len(k) - 1) // 2
    interior = disp[:, :, r:-r, r:-r]
    expected_var = alpha**2 / 3 * (k**2).sum() ** 2  # U(−1, 1) has variance 1/3; smoothing by the 2-D kernel k⊗k
    assert abs(interior.mean()) < 4 * np.sqrt(expected_var / interior.size) * 30  # pixels are correlated: loose on the mean
    assert interior.var() == pytest.approx(expected_var, rel=0.05)


@pytest.mark.parametrize("b", [64, 16])  # the probe's subsets by streams (k = 64) and by Floyd's algorithm (k = 16)
def test_cancel_then_resume_gives_the_uninterrupted_result(tmp_path, b):
    cfg = parse_config({"setting": "mlp", "preset": "laptop", "epochs": 3, "inits": 2, "replicas": 4,
                        "batch_sizes": [b], "dataset": {"name": "digits", "train_size": 300}, "noise_samples": 50,
                        "eval_size": 100})
    full = api.simulate(cfg, cache=ResultCache(tmp_path / "a"))
    device = torch.device(full["meta"]["device"])  # the run resolves "auto": cuda on a GPU box, else cpu
    cache = ResultCache(tmp_path / "b")
    cancel = threading.Event()
    progress = api.Progress()
    per_epoch = cfg.inits * cfg.replicas * (cfg.n_train // b)  # progress units: replica-steps, reported every step

    def advance(units):
        if progress.done == 2 * per_epoch:  # the last step of the second epoch: its checkpoint is written, then the
            cancel.set()  # next step stops the run

    progress.on_advance = advance
    with pytest.raises(Cancelled):
        api.simulate(cfg, progress=progress, cancel=cancel, cache=cache)
    assert api_mlp.cached_checkpoint_epoch(cfg, device, cache) == {b: 2}
    resumed = api.simulate(cfg, cache=cache)
    assert resumed["meta"]["per_b"][0]["resumed_from_epoch"] == 2
    for f in ("var_g", "loss_train", "error_val", "noise_spread"):
        np.testing.assert_allclose(resumed["curves"][f]["value"], full["curves"][f]["value"], rtol=1e-6)
    assert api_mlp.cached_checkpoint_epoch(cfg, device, cache) == {}


def test_a_cancel_in_a_later_batch_size_keeps_the_finished_ones(tmp_path):
    """Two batch sizes, cancelled in the second one's second epoch: the first b's finished state stays in the cache
    (it is not run again) beside the second one's last epoch; the resumed result is the uninterrupted one."""
    cfg = parse_config({"setting": "mlp", "preset": "laptop", "epochs": 3, "inits": 1, "replicas": 4,
                        "batch_sizes": [64, 16], "dataset": {"name": "digits", "train_size": 300},
                        "noise_samples": 50, "eval_size": 100})
    full = api.simulate(cfg, cache=ResultCache(tmp_path / "a"))
    device = torch.device(full["meta"]["device"])
    cache = ResultCache(tmp_path / "b")
    cancel = threading.Event()
    progress = api.Progress()
    units = {b: cfg.inits * cfg.replicas * (cfg.n_train // b) for b in cfg.batch_sizes}  # per epoch
    first, second = cfg.batch_sizes  # in the order they run
    stop_at = units[first] * cfg.epochs + units[second] + 1  # a step into the second b's second epoch

    progress.on_advance = lambda _: cancel.set() if progress.done >= stop_at else None
    with pytest.raises(Cancelled):
        api.simulate(cfg, progress=progress, cancel=cancel, cache=cache)
    assert api_mlp.cached_checkpoint_epoch(cfg, device, cache) == {first: 3, second: 1}
    resumed = api.simulate(cfg, cache=cache)
    assert [p["resumed_from_epoch"] for p in resumed["meta"]["per_b"]] == [3, 1]
    for f in ("var_g", "loss_train", "error_val", "noise_spread"):
        np.testing.assert_allclose(resumed["curves"][f]["value"], full["curves"][f]["value"], rtol=1e-6)
    assert api_mlp.cached_checkpoint_epoch(cfg, device, cache) == {}


def test_laptop_preset_via_cli_orders_variance_by_b(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"setting": "mlp", "preset": "laptop"}))
    out = subprocess.run([sys.executable, "-m", "backend", "simulate", str(path)], cwd=ROOT, capture_output=True,
                         text=True, env=os.environ.copy(), timeout=600)
    assert out.returncode == 0, out.stderr
    res = json.loads(out.stdout)
    assert res["epoch"][0] == 0 and len(res["epoch"]) == 13
    named = {"var_g", "loss_train", "loss_val", "error_train", "error_val", "gap_distorted", "noise_one_step",
             "noise_spread", "b_simple"}
    table = set(api.quantities(api.parse_config({"setting": "mlp", "preset": "laptop"})))
    assert named <= table  # the document follows the quantity table (a new quantity needs no edit here)
    fields = table | {"var_g_min", "var_g_max"}
    c16 = res["curves"]["16"]
    estimated = fields - {"var_g_min", "var_g_max"}
    per_init = {f"{q}{suffix}" for q in estimated for suffix in ("_se", "_per_init", "_per_init_se")}
    split = {"b_simple_resolved", "total_minus_one_step", "total_minus_one_step_se", "spread_resolved"}
    assert set(c16) == fields | per_init | split  # every estimate with its SE, per initial weight; the split's flags
    assert [v is not None for v in c16["b_simple"]] == c16["b_simple_resolved"]
    assert res["inits"] == 3 and len(c16["var_g_per_init"]) == 3 and len(c16["var_g_per_init"][0]) == 13
    se = np.array(c16["var_g_se"][1:], dtype=float)
    assert np.all(se > 0) and np.all(se < np.array(c16["var_g"][1:]))
    for q in ("var_g", "noise_one_step", "b_simple"):  # the median's SE is the SE of the median init's estimate
        vals, ses = np.array(c16[f"{q}_per_init"], dtype=float), np.array(c16[f"{q}_per_init_se"], dtype=float)
        ok = np.isfinite(vals).all(axis=0)  # B_simple: null at an epoch where one init's is not resolved
        assert [v is not None for v in c16[q]] == ok.tolist() and (ok.all() or q == "b_simple")
        mid = np.argsort(vals, axis=0)[1]
        np.testing.assert_allclose(np.array(c16[q], dtype=float)[ok], vals[mid, range(13)][ok], rtol=1e-12)
        np.testing.assert_allclose(np.array(c16[f"{q}_se"], dtype=float)[ok], ses[mid, range(13)][ok], rtol=1e-12)
    v16, v64 = np.array(res["curves"]["16"]["var_g"][1:]), np.array(res["curves"]["64"]["var_g"][1:])
    assert np.mean(v16 > v64) >= 0.75
    assert res["curves"]["16"]["loss_train"][-1] < res["curves"]["16"]["loss_train"][0]


@pytest.mark.parametrize("raw,field", [({"hidden": []}, "hidden"), ({"inits": 0}, "inits"),
                                       ({"batch_sizes": [5000]}, "batch_sizes"), ({"preset": "huge"}, "preset"),
                                       ({"dataset": {"name": "idx"}}, "dataset.path"),
                                       ({"distortion": {"alpha": -1}}, "distortion.alpha")])
def test_cli_refuses_bad_fields(tmp_path, raw, field):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"setting": "mlp", **raw}))
    out = subprocess.run([sys.executable, "-m", "backend", "simulate", str(path)], cwd=ROOT, capture_output=True,
                         text=True, env=os.environ.copy())
    assert out.returncode == 2 and out.stderr.startswith(f"error: {field}") and "Traceback" not in out.stderr


def test_per_init_standard_errors_cover_at_the_nominal_rate():
    """variance_se / GroupMoments.mean_se SEs: 95 % intervals cover the true value in 95 % of 2 000 independent inits (± 4
    binomial SEs); Gaussian rows with known covariance 4·I (var = 4d)."""
    K, R, d = 2000, 400, 5
    x = 2 * torch.randn(K * R, d, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    alive = torch.ones(K * R, dtype=torch.bool)
    tol = 4 * np.sqrt(0.95 * 0.05 / K)
    inits = stats.Groups.blocks(K, R, DEV)
    v, se = stats.variance_se(x, inits, alive)
    assert abs(np.mean(np.abs(v - 4 * d) <= 1.96 * se) - 0.95) <= tol
    m, se = stats.GroupMoments.of(x[:, 0], inits, alive).mean_se()
    assert abs(np.mean(np.abs(m) <= 1.96 * se) - 0.95) <= tol
    alive[:R - 1] = False  # one replica left in the first init: no variance, no SE
    v, se = stats.variance_se(x, inits, alive)
    assert np.isnan(v[0]) and np.isnan(se[0]) and np.isfinite(v[1:]).all()


def test_dead_replicas_are_left_out_whatever_their_rows_hold():
    """A diverged replica's gradient may be NaN or inf: the per-init statistics equal those of the survivors alone."""
    K, R = 2, 6
    x = torch.randn(K * R, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    alive = torch.ones(K * R, dtype=torch.bool)
    alive[[1, 7, 8]] = False
    x[1], x[7], x[8, 0] = float("nan"), float("inf"), float("-inf")
    def per_mean(arg, groups, valid):
        return stats.GroupMoments.of(arg, groups, valid).mean_se()

    for fn, arg in ((stats.variance_se, x), (per_mean, x[:, 0])):
        got = fn(arg, stats.Groups.blocks(K, R, DEV), alive)
        for k in range(K):
            keep = alive[k * R:(k + 1) * R]
            n = int(keep.sum())
            want = fn(arg[k * R:(k + 1) * R][keep], stats.Groups.blocks(1, n, DEV), torch.ones(n, dtype=torch.bool))
            assert got[0][k] == pytest.approx(want[0][0], rel=1e-12) and got[1][k] == pytest.approx(want[1][0], rel=1e-12)
    ratio, se = stats.ratio_se(x[:, 0].abs() + 1, x[:, 1].abs() + 1, stats.Groups.blocks(K, R, DEV), alive)
    assert np.isfinite(ratio).all() and np.isfinite(se).all()


def test_bf16_and_tf32_keep_the_variance_estimates(tmp_path):
    """precision bf16 (autocast forward/backward, float32 weights, float64 statistics) changes the arithmetic but not
    what is estimated: var(g) per epoch agrees with float32 within the standard errors; tf32 on a CPU is float32."""
    base = {"setting": "mlp", "dataset": {"name": "digits", "train_size": 300}, "hidden": [32], "inits": 1,
            "replicas": 200, "epochs": 2, "batch_sizes": [16], "device": "cpu", "eval_size": 100,
            "noise_samples": 64}
    runs = {p: api.simulate(parse_config({**base, "precision": p}), cache=ResultCache(tmp_path / p))
            for p in ("float32", "bf16", "tf32")}
    f32, b16 = runs["float32"]["curves"]["var_g"], runs["bf16"]["curves"]["var_g"]
    z = (b16["value"] - f32["value"]) / np.hypot(b16["se"], f32["se"])
    assert np.all(np.abs(z) <= 4) and not np.array_equal(b16["value"], f32["value"])  # bf16 did run
    np.testing.assert_array_equal(runs["tf32"]["curves"]["var_g"]["value"], f32["value"])
    assert parse_config({**base, "precision": "bf16"}).to_json()["precision"] == "bf16"
    with pytest.raises(ConfigError, match="^precision: bf16 runs float32 master weights"):
        parse_config({**base, "precision": "bf16", "dtype": "float64"})


def test_per_sample_gradients_are_held_in_bounded_chunks():
    """The paper preset (5 × 50 replicas of 784-1024-512-10) would need 85 GB for 64 points of per-sample gradients
    at once; the chunk shrinks to one point (1.3 GB) and the run's memory estimate fits a GPU."""
    P = 784 * 1024 + 1024 + 1024 * 512 + 512 + 512 * 10 + 10
    assert noise.noise_chunk(250, P) == 1 and noise.noise_chunk(6, 500) == 64
    assert 250 * P * noise.noise_chunk(250, P) <= max(noise.PER_SAMPLE_ELEMENTS, 250 * P)
    est = engine.estimate_cost(60000, 784, (1024, 512), 10, 5, 50, 1, 64, 10000, 10000, 256)
    assert est["memory_bytes"] < 16 * 2**30


def test_replica_blocks_give_the_same_results(monkeypatch):
    """Replicas processed in blocks (when their activations would not fit) give exactly what one vmap gives, call by
    call, and the same statistics over a whole run (to float64 rounding: the noise pass then takes fewer points at a
    time)."""
    data, model, params = small_setup(K=2, R=3)
    X = torch.as_tensor(data.x_train[:40].reshape(-1, 64), dtype=torch.float64)
    Y = torch.as_tensor(data.y_train[:40])
    whole, blocks = engine.Replicas(engine.make_model(64, (6,), 10)), engine.Replicas(engine.make_model(64, (6,), 10), 4)
    idx = torch.randint(0, 40, (6, 5), generator=torch.Generator().manual_seed(0))
    for a, b in ((whole.grad_and_loss(params, X[idx], Y[idx]), blocks.grad_and_loss(params, X[idx], Y[idx])),
                 (whole.per_sample_replicas(params, X[:7], Y[:7]), blocks.per_sample_replicas(params, X[:7], Y[:7])),
                 (whole.logits(params, X), blocks.logits(params, X))):
        torch.testing.assert_close(b, a, rtol=0, atol=0)
    cfg = {"setting": "mlp", "preset": "laptop", "epochs": 2, "inits": 2, "replicas": 3, "hidden": [8],
           "dataset": {"name": "digits", "train_size": 120}, "dtype": "float64", "batch_sizes": [16]}
    runs = []
    for limit in (engine.ACTIVATION_ELEMENTS, 16 * 200):  # the second: blocks of two replicas
        monkeypatch.setattr(engine, "ACTIVATION_ELEMENTS", limit)
        runs.append(api.simulate(parse_config(cfg), cache=ResultCache(tempfile.mkdtemp())))
    for q in ("var_g", "loss_train", "error_val", "noise_spread", "b_simple"):
        want = runs[0]["curves"][q]["value"]  # the noise pass also runs in smaller chunks of points: float64
        np.testing.assert_allclose(runs[1]["curves"][q]["value"], want, rtol=1e-12,  # rounding, at the curve's scale
                                   atol=1e-12 * np.nanmax(np.abs(want)), err_msg=q)


@pytest.mark.parametrize("hidden", [(6,), (7, 5)])
def test_fused_sgd_step_matches_torch_optim_sgd_on_module_copies(hidden):
    """The Linear–ReLU stack's own SGD step (backend.engine.linear_relu.sgd_step: the update accumulated into each
    layer's gradient product, in place) takes the steps torch.optim.SGD takes on separate nn.Module copies, each
    replica on its own batches; float64, three steps, and the batch losses it reports are the modules' losses."""
    from backend.engine import linear_relu

    data, model, params = small_setup(hidden=hidden)
    params = {k: v.clone() for k, v in params.items()}
    X = torch.as_tensor(data.x_train.reshape(-1, 64), dtype=torch.float64)
    Y = torch.as_tensor(data.y_train)
    gen = torch.Generator().manual_seed(1)
    batches = [torch.randint(0, len(X), (6, 9), generator=gen) for _ in range(3)]
    modules = module_copies(params, hidden)
    for idx in batches:
        losses = linear_relu.sgd_step(params, X[idx], Y[idx], 0.3)
        step_modules(modules, X, Y, idx, 0.3, losses)
    assert_module_weights(params, modules)


def module_copies(params: dict, hidden: tuple) -> list:
    """One float64 nn.Module (make_model) per replica, with its weights, and a torch.optim.SGD for it."""
    modules = []
    for r in range(next(iter(params.values())).shape[0]):
        m = engine.make_model(64, hidden, 10).double()
        with torch.no_grad():
            for name, p in m.named_parameters():
                p.copy_(params[name][r])
        modules.append((m, torch.optim.SGD(m.parameters(), lr=0.1)))
    return modules


def step_modules(modules: list, X, Y, idx, lr: float, losses) -> None:
    """One torch.optim.SGD step of each module on its replica's batch idx[r]; its batch loss must equal losses[r]."""
    for r, (m, opt) in enumerate(modules):
        opt.param_groups[0]["lr"] = lr
        opt.zero_grad()
        out = torch.nn.functional.cross_entropy(m(X[idx[r]]), Y[idx[r]])
        out.backward()
        opt.step()
        assert losses[r].item() == pytest.approx(out.item(), rel=1e-12)


def assert_module_weights(params: dict, modules: list) -> None:
    for r, (m, _) in enumerate(modules):
        for name, p in m.named_parameters():
            torch.testing.assert_close(params[name][r], p.detach(), rtol=1e-11, atol=1e-13)


def test_held_updates_take_the_steps_of_torch_optim_sgd():
    """SGDSteps holding each wide layer's update as factors for up to 3 steps (the forward and backward products
    then take W̄ plus a low-rank correction; the CUDA default, linear_relu.HOLD_STEPS) steps as torch.optim.SGD
    on separate nn.Module copies: float64, ten steps with a different α each, settled once in mid-cycle (as
    before the statistics of an epoch) and at the end, the replicas in blocks of 2 as Replicas.in_blocks cuts
    them; the batch losses it reports are the modules' losses. The last layer (30 → 10) is too narrow to hold."""
    from backend.engine import linear_relu

    hidden, b = (40, 30), 3
    data, model, params = small_setup(hidden=hidden)
    params = {k: v.clone() for k, v in params.items()}
    assert linear_relu.held_layers(linear_relu.layers(params), b, 3) == [0, 1]
    X = torch.as_tensor(data.x_train.reshape(-1, 64), dtype=torch.float64)
    Y = torch.as_tensor(data.y_train)
    gen = torch.Generator().manual_seed(2)
    modules = module_copies(params, hidden)
    steps = linear_relu.SGDSteps(hold=3)
    rep = engine.Replicas(engine.make_model(64, hidden, 10), replica_chunk=2)
    for t in range(10):
        lr = 0.4 / (1 + t)
        idx = torch.randint(0, len(X), (6, b), generator=gen)
        losses = steps.step(params, X[idx], Y[idx], lr, blocks=rep.in_blocks)
        step_modules(modules, X, Y, idx, lr, losses)
        if t == 4:  # mid-cycle: 2 updates held
            assert steps.slot == 2
            steps.settle(params)
            assert_module_weights(params, modules)
    assert steps.slot == 2  # 5 more steps after the settle: one application, two held
    steps.settle(params)
    assert_module_weights(params, modules)


def test_fused_sgd_step_in_bf16_is_as_close_to_float32_as_the_autograd_step():
    """Under bf16 autocast the fused step's products run in bf16 like the autograd path's, on float32 master weights:
    measured against the float32 step, its error is of the autograd bf16 step's size (bf16 rounding, and hidden
    units whose pre-activation rounds to the other side of 0), over eight batches."""
    from backend.engine import linear_relu
    from backend.engine.runner import precision

    data, model, params = small_setup(hidden=(32,), dtype=torch.float32)
    X = torch.as_tensor(data.x_train.reshape(-1, 64), dtype=torch.float32)
    Y = torch.as_tensor(data.y_train)
    rep = engine.Replicas(engine.make_model(64, (32,), 10))
    norm = torch.linalg.vector_norm
    errors = {"fused": [], "autograd": []}
    for seed in range(8):
        idx = torch.randint(0, len(X), (6, 16), generator=torch.Generator().manual_seed(seed))
        g32, loss32 = rep.grad_and_loss(params, X[idx], Y[idx])
        fused = {k: v.clone() for k, v in params.items()}
        with precision("bf16", DEV):
            g16, _ = rep.grad_and_loss(params, X[idx], Y[idx])
            loss = linear_relu.sgd_step(fused, X[idx], Y[idx], 0.5)
        torch.testing.assert_close(loss, loss32, rtol=2e-2, atol=0)
        for k in params:
            assert fused[k].dtype == torch.float32
            want = params[k] - 0.5 * g32[k]
            errors["fused"].append(float(norm(fused[k] - want) / norm(0.5 * g32[k])))
            errors["autograd"].append(float(norm(params[k] - 0.5 * g16[k] - want) / norm(0.5 * g32[k])))
    assert 0 < max(errors["fused"]) <= 0.1 and max(errors["autograd"]) <= 0.1
    assert np.mean(errors["fused"]) <= 2 * np.mean(errors["autograd"])


def test_training_loop_uses_the_fused_step_and_gets_the_autograd_numbers(monkeypatch):
    """The MLP task's training steps go through its fused SGD step (counted), and a run gives the statistics of the
    vmap(grad) path to float64 rounding (the steps' products are associated differently)."""
    from backend.engine import linear_relu

    cfg = {"setting": "mlp", "epochs": 2, "inits": 2, "replicas": 4, "hidden": [8], "dtype": "float64",
           "dataset": {"name": "digits", "train_size": 120}, "batch_sizes": [16], "noise_samples": 120,
           "eval_size": 60}
    calls = {"n": 0}
    original = linear_relu.sgd_step

    def counted(*args):
        calls["n"] += 1
        return original(*args)

    monkeypatch.setattr(linear_relu, "sgd_step", counted)
    fused = api.simulate(parse_config(cfg), cache=ResultCache(tempfile.mkdtemp()))
    assert calls["n"] == 2 * (120 // 16)
    real_task = engine.mlp_task

    def autograd_task(*args, **kw):
        task = real_task(*args, **kw)
        task.sgd_steps = None
        return task

    monkeypatch.setattr(engine, "mlp_task", autograd_task)
    plain = api.simulate(parse_config(cfg), cache=ResultCache(tempfile.mkdtemp()))
    assert calls["n"] == 2 * (120 // 16)  # the second run did not step through it
    for q in ("var_g", "loss_train", "error_val", "noise_spread", "b_simple"):
        want = plain["curves"][q]["value"]
        assert np.isfinite(want).all(), q  # noise_samples = n: the exact split and B_simple, never NaN
        np.testing.assert_allclose(fused["curves"][q]["value"], want, rtol=1e-9, atol=1e-12 * np.nanmax(np.abs(want)),
                                   err_msg=q)


def test_a_run_with_held_updates_gives_the_plain_steps_statistics(monkeypatch):
    """A run whose wide layer holds its updates for 3 steps (as on CUDA, linear_relu.HOLD_STEPS; 31 steps per
    epoch, so an epoch ends with updates held and they are applied before its statistics), its replicas in blocks
    of two, gives the statistics of the run that applies every update at once, to float64 rounding."""
    from backend.engine import linear_relu

    cfg = {"setting": "mlp", "epochs": 2, "inits": 2, "replicas": 3, "hidden": [48], "dtype": "float64",
           "dataset": {"name": "digits", "train_size": 126}, "batch_sizes": [4], "noise_samples": 126,
           "eval_size": 60}
    plain = api.simulate(parse_config(cfg), cache=ResultCache(tempfile.mkdtemp()))
    held_keys, block_sizes = set(), set()
    original = linear_relu.sgd_step

    def spy(params, xb, yb, lr, held=None, slot=0):
        held_keys.update(held or {})
        block_sizes.add(xb.shape[0])
        return original(params, xb, yb, lr, held, slot)

    monkeypatch.setattr(linear_relu, "sgd_step", spy)
    monkeypatch.setattr(linear_relu, "HOLD_STEPS", {"cpu": 3})
    monkeypatch.setattr(engine, "ACTIVATION_ELEMENTS", 2 * 4 * 180)  # blocks of two replicas (180 floats a sample)
    held = api.simulate(parse_config(cfg), cache=ResultCache(tempfile.mkdtemp()))
    assert held_keys == {"0.D", "0.A"} and block_sizes == {2}  # 64 → 48 held; 48 → 10 too narrow
    for q in ("var_g", "loss_train", "error_val", "noise_spread", "b_simple", "loss_val"):
        want = plain["curves"][q]["value"]
        assert np.isfinite(want).all(), q  # noise_samples = n: the exact split and B_simple, never NaN
        np.testing.assert_allclose(held["curves"][q]["value"], want, rtol=1e-9, atol=1e-12 * np.nanmax(np.abs(want)),
                                   err_msg=q)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the CUDA default (held updates) needs a CUDA device")
def test_on_cuda_a_run_holds_updates_and_gives_the_plain_steps_statistics(monkeypatch):
    """On CUDA the wide layers hold their updates (linear_relu.HOLD_STEPS['cuda'] steps): a float64 run there gives
    the statistics of the run that applies every update at once, to float64 rounding, and it did hold them."""
    from backend.engine import linear_relu

    cfg = {"setting": "mlp", "epochs": 2, "inits": 2, "replicas": 3, "hidden": [48], "dtype": "float64",
           "dataset": {"name": "digits", "train_size": 126}, "batch_sizes": [4], "noise_samples": 126,
           "eval_size": 60, "device": "cuda"}
    assert linear_relu.hold_steps("cuda") > 1
    held_keys = set()
    original = linear_relu.sgd_step

    def spy(params, xb, yb, lr, held=None, slot=0):
        assert xb.device.type == "cuda"
        held_keys.update(held or {})
        return original(params, xb, yb, lr, held, slot)

    monkeypatch.setattr(linear_relu, "sgd_step", spy)
    held = api.simulate(parse_config(cfg), cache=ResultCache(tempfile.mkdtemp()))
    assert held_keys == {"0.D", "0.A"}
    monkeypatch.setattr(linear_relu, "HOLD_STEPS", {"cuda": 1})
    plain = api.simulate(parse_config(cfg), cache=ResultCache(tempfile.mkdtemp()))
    for q in ("var_g", "loss_train", "error_val", "noise_spread", "b_simple", "loss_val"):
        want = plain["curves"][q]["value"]
        assert np.isfinite(want).all(), q  # noise_samples = n: the exact split and B_simple, never NaN
        np.testing.assert_allclose(held["curves"][q]["value"], want, rtol=1e-9, atol=1e-12 * np.nanmax(np.abs(want)),
                                   err_msg=q)


def test_the_cuda_memory_estimate_covers_the_held_factors():
    """On CUDA the paper's MLP holds its updates (linear_relu.hold_steps): the run's memory estimate there exceeds
    the CPU one by at least the bytes a stepper allocates for 10 replicas at b = 64 — the factors, and under bf16
    autocast the bf16 factors and bf16 copies of the held weights."""
    from backend.engine import linear_relu
    from backend.engine.runner import precision

    N, b = 10, 64
    params = engine.init_params(engine.make_model(784, (1024, 512), 10), N, 0, torch.float32, torch.device("cpu"))
    X, Y = torch.rand(N, b, 784), torch.randint(0, 10, (N, b))
    held = {}
    for arithmetic in ("tf32", "bf16"):
        steps = linear_relu.SGDSteps(linear_relu.hold_steps("cuda"))
        with precision(arithmetic, DEV):
            steps.step({k: v.clone() for k, v in params.items()}, X, Y, 0.01)
        held[arithmetic] = sum(v.numel() * v.element_size() for v in steps.held.values())
        assert held[arithmetic] > 0 and ("0.S" in steps.held) == (arithmetic == "bf16")
    cpu, cuda = (engine.estimate_cost(60000, 784, (1024, 512), 10, 2, 5, 1, b, 10000, 10000, 256, dev)["memory_bytes"]
                 for dev in ("cpu", "cuda"))
    assert cuda - cpu >= max(held.values())


def test_held_updates_under_bf16_are_as_close_to_float32_as_the_plain_bf16_steps():
    """Under bf16 autocast the held updates are bf16 factors and the products read a bf16 copy of each held weight
    (as on CUDA): over ten steps (a different α each, settled in mid-cycle and at the end, replicas in blocks of 2)
    the float32 weights stay as close to those of float32 steps as the plain bf16 steps' do, measured against the
    size of the ten updates, and the bf16 copy is the rounded weight after each settle."""
    from backend.engine import linear_relu
    from backend.engine.runner import precision

    hidden, b = (40, 30), 3
    data, model, params = small_setup(hidden=hidden, dtype=torch.float32)
    X = torch.as_tensor(data.x_train.reshape(-1, 64), dtype=torch.float32)
    Y = torch.as_tensor(data.y_train)
    gen = torch.Generator().manual_seed(3)
    runs = {name: {k: v.clone() for k, v in params.items()} for name in ("float32", "bf16", "bf16 held")}
    steps = linear_relu.SGDSteps(hold=3)
    rep = engine.Replicas(engine.make_model(64, hidden, 10), replica_chunk=2)
    for t in range(10):
        lr = 0.4 / (1 + t)
        idx = torch.randint(0, len(X), (6, b), generator=gen)
        loss32 = linear_relu.sgd_step(runs["float32"], X[idx], Y[idx], lr)
        with precision("bf16", DEV):
            linear_relu.sgd_step(runs["bf16"], X[idx], Y[idx], lr)
            loss = steps.step(runs["bf16 held"], X[idx], Y[idx], lr, blocks=rep.in_blocks)
        torch.testing.assert_close(loss, loss32, rtol=3e-2, atol=0)
        if t in (4, 9):
            steps.settle(runs["bf16 held"])
            for ell in (0, 1):
                W = runs["bf16 held"][f"{2 * ell}.weight"]
                assert steps.held[f"{ell}.D"].dtype == torch.bfloat16
                torch.testing.assert_close(steps.held[f"{ell}.S"], W.to(torch.bfloat16), rtol=0, atol=0)
    assert set(steps.held) == {"0.D", "0.A", "0.S", "1.D", "1.A", "1.S"}
    norm = torch.linalg.vector_norm
    error = {name: max(float(norm(runs[name][k] - runs["float32"][k]) / norm(runs["float32"][k] - params[k]))
                       for k in params) for name in ("bf16", "bf16 held")}
    assert 0 < error["bf16 held"] <= max(2 * error["bf16"], 0.02) and error["bf16"] <= 0.1, error


def test_a_bf16_run_with_held_updates_keeps_the_variance_estimates(monkeypatch, tmp_path):
    """A bf16 run whose wide layer holds its updates (2 steps here; on CUDA linear_relu.HOLD_STEPS) as bf16 factors
    estimates what the float32 run does: var(g) per epoch agrees within the standard errors."""
    from backend.engine import linear_relu

    base = {"setting": "mlp", "dataset": {"name": "digits", "train_size": 300}, "hidden": [64], "inits": 1,
            "replicas": 200, "epochs": 2, "batch_sizes": [16], "device": "cpu", "eval_size": 100,
            "noise_samples": 64}
    f32 = api.simulate(parse_config(base), cache=ResultCache(tmp_path / "f32"))["curves"]["var_g"]
    held_keys = set()
    original = linear_relu.sgd_step

    def spy(params, xb, yb, lr, held=None, slot=0):
        held_keys.update(k for k, v in (held or {}).items() if v.dtype == torch.bfloat16)
        return original(params, xb, yb, lr, held, slot)

    monkeypatch.setattr(linear_relu, "sgd_step", spy)
    monkeypatch.setattr(linear_relu, "HOLD_STEPS", {"cpu": 2})
    b16 = api.simulate(parse_config({**base, "precision": "bf16"}), cache=ResultCache(tmp_path / "b16"))
    assert held_keys == {"0.D", "0.A", "0.S"}  # 64 → 64 held (2·16·128 ≤ 64²); 64 → 10 too narrow
    b16 = b16["curves"]["var_g"]
    z = (b16["value"] - f32["value"]) / np.hypot(b16["se"], f32["se"])
    assert np.all(np.abs(z) <= 4) and not np.array_equal(b16["value"], f32["value"])


def test_progress_moves_every_step_not_only_at_epoch_ends(tmp_path):
    cfg = parse_config({"setting": "mlp", "preset": "laptop", "epochs": 2, "inits": 1, "replicas": 2,
                        "batch_sizes": [64], "dataset": {"name": "digits", "train_size": 300}, "noise_samples": 50,
                        "eval_size": 100})
    progress = api.Progress()
    calls = []
    progress.on_advance = calls.append
    api.simulate(cfg, progress=progress, cache=ResultCache(tmp_path))
    steps = 2 * (300 // 64)
    assert len(calls) == steps and set(calls) == {2}  # one report of its 2 replicas per step: the bar moves each step
    assert progress.done == progress.total



@pytest.mark.parametrize("fused", [True, False])
def test_a_batch_over_half_the_data_trains_on_the_batch_not_its_complement(fused):
    """Without replacement with b > n/2 the sampler draws the n − b left-out samples (include=False): the step must
    use the b samples of the batch. n = 40, b = 30 (one step per epoch): the epoch-1 training loss of every replica
    equals that of an nn.Module copy stepped by torch.optim.SGD on the batch rebuilt here as [n] minus the draw
    (the fused Linear–ReLU step and the explicit-gradient step with an optimizer)."""
    from backend import optim
    from backend.engine.runner import seed_for
    from backend.images import ImageData

    full = load_digits()
    n, b, K, R, seed, lr = 40, 30, 2, 3, 5, 0.5
    data = ImageData(full.x_train[:n], full.y_train[:n], full.x_val[:20], full.y_val[:20], "digits")
    task = engine.mlp_task(data, (6,), seed, torch.float64, DEV, None,
                           optimizer=None if fused else optim.sgd(momentum=0.9))  # step 1 of momentum SGD is w − α g
    assert (task.optimizer is None) == fused  # None: the fused Linear–ReLU steps
    params = {k: v.repeat_interleave(R, dim=0) for k, v in task.init(K).items()}
    spec = RunSpec.for_epochs(n, 1, b, K=K, R=R, lr=lambda t: lr, sampler="without_replacement", seed=seed,
                              device=DEV, noise_samples=8)
    out = engine.run_batch_size(task, spec, gap_every=1, eval_size=n)
    assert out["steps_per_epoch"] == 1
    left_out = make_sampler("without_replacement", n, b, K * R,
                            torch.Generator().manual_seed(seed_for(seed, b, 1)), DEV).draw()
    assert not left_out.include and left_out.idx.shape == (K * R, n - b)
    X = torch.as_tensor(data.x_train.reshape(n, 64), dtype=torch.float64)
    Y = torch.as_tensor(data.y_train)
    batch = torch.tensor([sorted(set(range(n)) - set(row.tolist())) for row in left_out.idx])
    losses = []
    for r, (m, opt) in enumerate(module_copies(params, (6,))):
        opt.param_groups[0]["lr"] = lr
        torch.nn.functional.cross_entropy(m(X[batch[r]]), Y[batch[r]]).backward()
        opt.step()
        with torch.no_grad():
            losses.append(torch.nn.functional.cross_entropy(m(X), Y).item())
    want = np.asarray(losses).reshape(K, R).mean(axis=1)
    np.testing.assert_allclose(out["stats"]["loss_train"][1], want, rtol=1e-10)

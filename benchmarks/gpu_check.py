"""One prepared GPU check (≈ 3.5 min on an H100; parts are skipped past ``--budget`` seconds): correctness of every
engine on the device, then the GPU timings the issues ask for. Not a test; prints one line per result and appends
each line to ``--out``/gpu_check.txt as it comes (a run cut short keeps what it measured).

Run on the device machine (the backend needs python-flint and diskcache there; ``scripts/fetch_gpu_wheels.sh`` puts
their wheels in .whl/ here, carried with the call):

    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
        .whl/*.whl && export PYTHONPATH=/tmp/site:. PYTHONUNBUFFERED=1 && python3 benchmarks/gpu_check.py --out $OUT

``--small`` shrinks every part so the script's code paths can be checked on a CPU in about a minute.

Checks (each prints PASS/FAIL): the CUDA-only tests — tests/test_cuda_graphs.py (the captured CUDA graphs of the
linear-regression and deep-linear steps give the eager numbers bitwise, plain SGD and with momentum) and the MLP run
with held updates; linear regression and the deep linear network at t = 1 against their exact theory on the device
(|z| ≤ 4 wherever defined), MLP replica gradients (vmap) and the engine's fused SGD step, alone and with held updates, against
separate module copies (torch.optim.SGD) on the device.
Timings, each with a ``CAL`` line (the estimate's steps and FLOPs beside the measured seconds: what backend/costs.py's
GPU models are fitted to): linear-regression engine (R = 10³, 10⁴, 10⁵, T = 2 000, b = 16), graph and eager, and the
graph gathering X's rows from the other memory layout and with the group sums in the other number of levels;
deep-linear paper preset (1 000 replicas, 1 000 steps, b = 16), graph and eager, against the naive per-replica loop;
the MLP paper preset's training steps (the engine's fused step with its updates held as on this device, beside the
same step holding 2, applying each update at once, and the vmap gradient + update) and a 3-epoch run of it, its
start-up and per-epoch cost told apart by the epoch ends (5 × 50 replicas of 784-1024-512-10, b = 64, on a
synthetic 60 000-image IDX set: timing does not depend on pixel values), in float32, tf32 and bf16 with achieved
FLOP/s against this card's matmul rate in that precision; the sequence paper preset's vmap+AdamW throughput in each
precision (extrapolated to an epoch) and against the per-replica loop. Last, a profile (torch.profiler, the kernels
with the most device time) of the linear-regression step at R = 10⁵ and of the MLP paper preset's tf32 and bf16
steps. The model files of examples/models/ (the CNN, the character-level transformer): R replicas through vmap(grad)
and one fused update per step in each precision, FLOPs counted by torch's FlopCounterMode, the achieved FLOP/s
against the card's rate, and a torch_model run of each through the API (``--only example``).
"""

from __future__ import annotations

import argparse
import gc
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("BATCHVAR_CACHE_DIR", tempfile.mkdtemp(prefix="batchvar-gpu-cache-"))
# the synthetic IDX sets below live in the temporary folder: an allowed data folder (backend/allowed.py)
os.environ["BATCHVAR_DATA"] = os.pathsep.join(p for p in (os.environ.get("BATCHVAR_DATA", ""), tempfile.gettempdir()) if p)

from backend import api, costs  # noqa: E402
from backend.config import parse_config  # noqa: E402
from backend.engine import deep_linear as deep  # noqa: E402
from backend.engine import linreg  # noqa: E402
from backend.engine import mlp as mlp_engine  # noqa: E402
from backend.engine.samplers import make_sampler  # noqa: E402
from backend.theory import linreg as th  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
OUT_FILE: Path | None = None
PRECISIONS = ["float32", "tf32", "bf16"]


def say(line: str) -> None:
    print(line, flush=True)
    if OUT_FILE is not None:
        with OUT_FILE.open("a") as fh:
            fh.write(line + "\n")


def calibration(est: dict, seconds: float, label: str) -> None:
    """One line for backend/costs.py's GPU model of the setting: the estimate's sequential steps and FLOPs, and the
    measured time."""
    say(f"CAL {est['setting']} [{label}] precision={est.get('precision', 'float32')} steps={est['steps']:.0f} "
        f"flops={est['flops']:.4g} seconds={seconds:.3f}")


def sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, dev: torch.device) -> float:
    sync(dev)
    t0 = time.perf_counter()
    fn()
    sync(dev)
    return time.perf_counter() - t0


def matmul_rate(dev: torch.device, n: int) -> float:
    """float32 FLOP/s of an n × n × n product (TF32 off: the engines compute in true float32)."""
    torch.backends.cuda.matmul.allow_tf32 = False
    a, b = torch.randn(n, n, device=dev), torch.randn(n, n, device=dev)
    for _ in range(3):
        a @ b
    reps = 10
    t = timed(lambda: [a @ b for _ in range(reps)], dev)
    return 2 * n**3 * reps / t


def check(name: str, ok: bool, detail: str) -> None:
    say(f"{'PASS' if ok else 'FAIL'} {name}: {detail}")


def check_graphs(dev: torch.device) -> None:
    """The CUDA-only tests under pytest (skipped without CUDA): tests/test_cuda_graphs.py (CUDA graph replay = eager
    path, bitwise, plain SGD and with momentum) and the MLP run with its updates held on CUDA = the plain steps'
    statistics."""
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_cuda_graphs.py",
                          "tests/test_mlp.py::test_on_cuda_a_run_holds_updates_and_gives_the_plain_steps_statistics"],
                         cwd=ROOT, capture_output=True, text=True, timeout=400)
    lines = (run.stdout + run.stderr).strip().splitlines()
    summary = lines[-1] if lines else "no output"
    ok = run.returncode == 0 and (dev.type != "cuda" or "skipped" not in summary)
    check("CUDA-only tests (graph replay = eager numbers; MLP held updates = plain steps)", ok, summary)
    if not ok:
        for line in lines[-40:]:
            say(f"  | {line}")


def check_linreg(dev: torch.device, small: bool) -> None:
    cfg = parse_config({"dataset": {"name": "synthetic", "n": 40, "p": 3, "noise": 0.5, "seed": 1}, "steps": 20,
                        "batch_sizes": [2, 8], "replicas": 4000 if small else 40000, "device": dev.type})
    agree = api.agreement(api.theory(cfg), api.simulate(cfg))
    check("linear regression vs exact theory", agree["within_4"] == 1.0,
          f"|z| ≤ 4 for {agree['within_4']:.1%} of {agree['count']} (b, t); max |z| = {agree['max_abs']:.2f}")


def check_deep(dev: torch.device, small: bool) -> None:
    cfg = parse_config({"setting": "deep_linear", "dims": [3, 4, 2], "steps": 1, "batch_sizes": [2, 8, 32],
                        "replicas": 20000 if small else 400000, "device": dev.type})
    z = api.agreement(api.theory(cfg), api.simulate(cfg))["z"]
    ok = np.isfinite(z[:, 1]).all() and (np.abs(z[:, 1]) <= 4).all()
    check("deep linear t = 1 vs exact polynomial", bool(ok), f"z at t = 1: {np.round(z[:, 1], 2).tolist()}")


def check_mlp_grads(dev: torch.device) -> None:
    rng = np.random.default_rng(0)
    X = torch.as_tensor(rng.uniform(-1, 1, size=(64, 20)), device=dev)
    Y = torch.as_tensor(rng.integers(0, 4, size=64), device=dev)
    model = mlp_engine.make_model(20, (16, 8), 4).double().to(dev)
    params = mlp_engine.init_params(model, 2, 0, torch.float64, dev)
    params = {k: v.repeat_interleave(3, dim=0).contiguous() for k, v in params.items()}  # 6 replicas
    rep = mlp_engine.Replicas(mlp_engine.make_model(20, (16, 8), 4).double().to(dev))
    idx = make_sampler("without_replacement", 64, 8, 6, torch.Generator(device=dev).manual_seed(0), dev).draw().idx
    g, _ = rep.grad_and_loss(params, X[idx], Y[idx])
    worst = 0.0
    for r in range(6):
        m = mlp_engine.make_model(20, (16, 8), 4).double().to(dev)
        with torch.no_grad():
            for name, p in m.named_parameters():
                p.copy_(params[name][r])
        torch.nn.functional.cross_entropy(m(X[idx[r]]), Y[idx[r]]).backward()
        for name, p in m.named_parameters():
            worst = max(worst, float((p.grad - g[name][r]).abs().max()))
    check("MLP vmap gradients vs module copies", worst < 1e-10, f"max |difference| = {worst:.2e}")
    from backend.engine import linear_relu

    worst = 0.0
    for r in range(6):  # the engine's training step (update fused into the gradient products) vs torch.optim.SGD
        m = mlp_engine.make_model(20, (16, 8), 4).double().to(dev)
        with torch.no_grad():
            for name, p in m.named_parameters():
                p.copy_(params[name][r])
        m.zero_grad()
        torch.nn.functional.cross_entropy(m(X[idx[r]]), Y[idx[r]]).backward()
        torch.optim.SGD(m.parameters(), lr=0.3).step()
        stepped = {k: v[r:r + 1].clone() for k, v in params.items()}
        linear_relu.sgd_step(stepped, X[idx[r:r + 1]], Y[idx[r:r + 1]], 0.3)
        for name, p in m.named_parameters():
            worst = max(worst, float((p.detach() - stepped[name][0]).abs().max()))
    check("MLP fused SGD step vs torch.optim.SGD on module copies", worst < 1e-10, f"max |difference| = {worst:.2e}")
    hidden = (64, 48)  # wide enough for its first two layers to hold their updates at b = 2
    params = mlp_engine.init_params(mlp_engine.make_model(20, hidden, 4), 6, 1, torch.float64, dev)
    modules = []
    for r in range(6):
        m = mlp_engine.make_model(20, hidden, 4).double().to(dev)
        with torch.no_grad():
            for name, p in m.named_parameters():
                p.copy_(params[name][r])
        modules.append((m, torch.optim.SGD(m.parameters(), lr=0.1)))
    steps = linear_relu.SGDSteps(hold=3)
    gen = torch.Generator(device=dev).manual_seed(1)
    for t in range(7):  # two applications of 3 held updates, then one settled
        idx = torch.randint(0, 64, (6, 2), generator=gen, device=dev)
        steps.step(params, X[idx], Y[idx], 0.3 / (1 + t))
        for r, (m, opt) in enumerate(modules):
            opt.param_groups[0]["lr"] = 0.3 / (1 + t)
            opt.zero_grad()
            torch.nn.functional.cross_entropy(m(X[idx[r]]), Y[idx[r]]).backward()
            opt.step()
    steps.settle(params)
    worst = max(float((p.detach() - params[name][r]).abs().max())
                for r, (m, _) in enumerate(modules) for name, p in m.named_parameters())
    check(f"MLP held updates ({len(steps.held) // 2} layers, 3 steps) vs torch.optim.SGD on module copies",
          worst < 1e-10 and len(steps.held) == 4, f"max |difference| = {worst:.2e}")


def time_linreg(dev: torch.device, small: bool) -> None:
    """The linear-regression engine at R = 10³, 10⁴, 10⁵ (T = 2 000, b = 16; issue #13's targets on a GPU: ≤ 0.5 s
    at 10³ and ≤ 3 s at 10⁵), with the block's steps replayed as a CUDA graph and eagerly, as the engine runs on this
    device (linreg.GATHER_LAYOUT: X's rows gathered from a column-major copy on CUDA; stats.SUM_PIECE: group sums in
    two levels on CUDA); and, side by side, the graph with each of these as before (row-major X; one-level sums)."""
    from backend import stats

    T, sizes = (200, (200, 2000)) if small else (2000, (1000, 10_000, 100_000))
    cfg = parse_config({"steps": T, "batch_sizes": [16]})
    X, y, w0 = np.asarray(cfg.X, float), np.asarray(cfg.y, float), np.asarray(cfg.w0_values, float)
    alphas = cfg.lr.alphas(T)
    c = float(th.noise_factor(16, cfg.n))
    layout, piece = linreg.GATHER_LAYOUT.get(dev.type, "rows"), stats.SUM_PIECE.get(dev.type, 0)
    other_layout, other_piece = ("rows" if layout == "columns" else "columns"), (0 if piece else 64)
    variants = {"graph": (True, layout, piece), "eager": (False, layout, piece),
                f"graph, X {other_layout}": (True, other_layout, piece),
                f"graph, sums in pieces of {other_piece}" if other_piece else "graph, one-level sums":
                    (True, layout, other_piece)}
    for R in sizes:
        est = api.estimate(parse_config({"steps": T, "batch_sizes": [16], "replicas": R, "device": dev.type}))
        secs = {}
        for label, (graph, gather, sum_piece) in variants.items():
            linreg.GATHER_LAYOUT[dev.type], stats.SUM_PIECE[dev.type] = gather, sum_piece
            try:
                run = lambda: linreg.run_replicas(X, y, w0, alphas, 16, R, "without_replacement", 0, dev,  # noqa: E731
                                                  c, cuda_graph=graph)
                linreg.run_replicas(X, y, w0, alphas[:80], 16, R, "without_replacement", 0, dev, c, cuda_graph=graph)
                secs[label] = timed(run, dev)
            finally:
                linreg.GATHER_LAYOUT[dev.type], stats.SUM_PIECE[dev.type] = layout, piece
            calibration(est, secs[label], f"R = {R}, {label}")
        others = "; ".join(f"{label} {t:.2f} s" for label, t in secs.items() if label not in ("graph", "eager"))
        say(f"TIME linear regression engine, R = {R}, T = {T}, b = 16 on {dev}: CUDA graph {secs['graph']:.2f} s "
            f"({secs['graph'] / (T + 1) * 1e3:.3f} ms per step), eager {secs['eager']:.2f} s "
            f"({secs['eager'] / (T + 1) * 1e3:.3f} ms per step) (X {layout}, sums in "
            f"{'pieces of ' + str(piece) if piece else 'one level'}); {others}; "
            f"estimated {costs.device_seconds(est, dev):.2f} s")


def time_deep(dev: torch.device, small: bool) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_deep_linear import naive_loop

    cfg = parse_config({"setting": "deep_linear", "preset": "paper (Figure 3)"})
    steps, R = (50, 100) if small else (cfg.steps, cfg.replicas)
    W0 = [np.asarray(M, dtype=np.float64) for M in cfg.w0_values]
    T = [np.asarray(M, dtype=np.float64) for M in cfg.teacher_values]
    alphas = cfg.lr.alphas(steps)
    est = api.estimate(parse_config({"setting": "deep_linear", "preset": "paper (Figure 3)", "batch_sizes": [16],
                                     "steps": steps, "replicas": R, "device": dev.type}))
    secs = {}
    for graph in (True, False):
        deep.run_replicas(W0, T, alphas[:25], 16, R, 0, dev, torch.float32, record_every=cfg.record_every,
                          cuda_graph=graph)  # warm-up
        secs[graph] = timed(lambda: deep.run_replicas(W0, T, alphas, 16, R, 0, dev, torch.float32,
                                                      record_every=cfg.record_every, cuda_graph=graph), dev)
        calibration(est, secs[graph], f"paper preset, b = 16, {'graph' if graph else 'eager'}")
    r_naive = 2
    naive_loop(W0, T, alphas[:20], 16, 1, device=dev)  # warm-up
    t_naive = timed(lambda: naive_loop(W0, T, alphas, 16, r_naive, device=dev), dev) * R / r_naive
    say(f"TIME deep linear paper preset, {R} replicas, {steps} steps, b = 16, statistics every {cfg.record_every}: "
        f"engine with CUDA graphs {secs[True]:.2f} s, eager {secs[False]:.2f} s, naive per-replica loop ≈ "
        f"{t_naive:.0f} s ({r_naive} replicas timed, scaled) on {dev}: ×{t_naive / secs[True]:.1f}; estimated "
        f"{costs.device_seconds(est, dev):.2f} s")


def write_synthetic_idx(directory: Path, n: int) -> None:
    import struct

    rng = np.random.default_rng(0)
    for stem, arr in (("train-images-idx3-ubyte", rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)),
                      ("train-labels-idx1-ubyte", rng.integers(0, 10, size=n, dtype=np.uint8))):
        header = bytes([0, 0, 0x08, arr.ndim]) + struct.pack(">" + "I" * arr.ndim, *arr.shape)
        (directory / stem).write_bytes(header + arr.tobytes())


def time_mlp(dev: torch.device, small: bool, rate: float) -> None:
    for arithmetic in PRECISIONS:  # issue 13: the paper preset per epoch in each precision
        time_mlp_steps(dev, small, arithmetic)
        time_mlp_precision(dev, small, arithmetic)


def time_mlp_steps(dev: torch.device, small: bool, arithmetic: str) -> None:
    """The training steps alone (batches gathered from the device), in ``arithmetic``: the engine's step for the MLP
    (backend.engine.linear_relu.SGDSteps: the update accumulated into each layer's weight-gradient product, in
    place, held for linear_relu.hold_steps steps on this device) and, side by side, the same step applying every
    update at once and the generic one (vmap gradient + the fused update pass): what one epoch of the paper preset
    costs without its statistics."""
    from backend.engine import linear_relu
    from backend.engine.runner import precision

    hidden, N, n, steps = ((64, 32), 8, 3000, 12) if small else ((1024, 512), 250, 48000, 60)
    model = mlp_engine.make_model(784, hidden, 10).to(dev)
    params = mlp_engine.init_params(model, N, 0, torch.float32, dev)
    rep = mlp_engine.Replicas(mlp_engine.make_model(784, hidden, 10).to(dev))
    gen = torch.Generator(device=dev).manual_seed(0)
    X = torch.rand((n, 784), device=dev)
    Y = torch.randint(0, 10, (n,), device=dev)
    hold = linear_relu.hold_steps(dev.type)

    def vmap_steps(k: int) -> None:
        nonlocal params
        for _ in range(k):
            idx = torch.randint(0, n, (N, 64), generator=gen, device=dev)
            with precision(arithmetic, dev):
                g, _ = rep.grad_and_loss(params, X[idx], Y[idx])
            params = {name: torch.add(params[name], g[name], alpha=-0.01) for name in params}

    def engine_steps(h: int):
        def run(k: int) -> None:
            stepper = linear_relu.SGDSteps(h)
            for _ in range(k):
                idx = torch.randint(0, n, (N, 64), generator=gen, device=dev)
                with precision(arithmetic, dev):
                    stepper.step(params, X[idx], Y[idx], 0.01)
            stepper.settle(params)
        return run

    secs = {}
    holds = [hold, 2] if hold > 2 else [hold] if hold == 2 else []  # the device's hold and, beside it, 2
    variants = [(f"engine (held {h})", engine_steps(h)) for h in holds]
    variants += [("engine (applied each step)", engine_steps(1)), ("vmap + update", vmap_steps)]
    for name, run in variants:
        run(3)
        secs[name] = timed(lambda: run(steps), dev) / steps
    widths = [784, *hidden, 10]
    P = sum(widths[k] * widths[k + 1] + widths[k + 1] for k in range(len(widths) - 1))
    flops = 6 * P * 64 * N
    t = secs[f"engine (held {hold})" if hold > 1 else "engine (applied each step)"]
    others = "; ".join(f"{name} {s * 1e3:.2f} ms ({s * (n // 64):.2f} s per epoch)" for name, s in secs.items())
    say(f"TIME MLP steps ({arithmetic}) {'-'.join(map(str, widths))}, {N} replicas, b = 64 on {dev}: {t * 1e3:.2f} ms "
        f"per step → {t * (n // 64):.2f} s per epoch of {n} images without statistics; {flops / t / 1e12:.1f} TFLOP/s "
        f"(updates held {hold} steps); side by side: {others}")


def time_mlp_precision(dev: torch.device, small: bool, arithmetic: str) -> None:
    """The MLP paper preset run end to end for 3 epochs in ``arithmetic``: its start-up (data, replicas, the epoch-0
    statistics) and the cost of one more epoch with its statistics, told apart by the time of each epoch's end
    (the run's progress reports)."""
    rate = costs.matmul_rate(str(dev), arithmetic) if dev.type == "cuda" else matmul_rate(dev, 1024)
    epochs = 3
    with tempfile.TemporaryDirectory() as tmp:
        n = 3000 if small else 60000
        write_synthetic_idx(Path(tmp), n)
        over = {"setting": "mlp", "preset": "paper", "epochs": epochs, "batch_sizes": [64], "device": dev.type,
                "dataset": {"name": "idx", "path": tmp}, "precision": arithmetic}
        if small:
            over.update({"hidden": [64, 32], "inits": 2, "replicas": 4, "eval_size": 500})
        cfg = parse_config(over)
        est = api.estimate(cfg)
        ends: list[float] = []  # when the progress passed each epoch's last step (it advances by blocks of steps)
        per_epoch, done = cfg.inits * cfg.replicas * (cfg.n_train // 64), [0]

        def on_advance(units: int) -> None:
            done[0] += units
            ends.extend([time.perf_counter()] * (done[0] // per_epoch - len(ends)))

        start = time.perf_counter()
        res = api.simulate(cfg, progress=on_advance)
        total = time.perf_counter() - start
    epoch = float(np.median(np.diff(ends[-epochs:])))  # each epoch's training and its statistics
    calibration(est, total, f"paper preset, {epochs} epochs, b = 64, one more epoch {epoch:.3f} s")
    widths = [784, *cfg.hidden, 10]
    P = sum(widths[k] * widths[k + 1] + widths[k + 1] for k in range(len(widths) - 1))
    n_train = res["meta"]["n_train"]
    flops = 6 * P * n_train * cfg.inits * cfg.replicas  # one epoch of SGD (forward + backward)
    say(f"TIME MLP ({arithmetic}) {'-'.join(map(str, widths))}, {cfg.inits} × {cfg.replicas} replicas, b = 64, "
        f"n_train = {n_train} on {dev}: {epochs} epochs {total:.1f} s = start-up {total - epochs * epoch:.1f} s + "
        f"{epochs} × {epoch:.2f} s per epoch (training + its statistics; epoch ends at "
        f"{', '.join(f'{t - start:.1f}' for t in ends)} s); SGD alone {flops / 1e12:.1f} TFLOP → "
        f"≥ {flops / epoch / 1e12:.2f} TFLOP/s vs {rate / 1e12:.1f} TFLOP/s {arithmetic} matmul "
        f"({flops / epoch / rate:.0%}); estimated {costs.device_seconds(est, dev):.1f} s, "
        f"{est['memory_bytes'] / 2**30:.1f} GiB")


def time_sequence(dev: torch.device, small: bool) -> None:
    """The sequence preset's vmap+AdamW throughput in each precision, extrapolated to one epoch (a whole epoch of
    the paper preset takes minutes), and against the per-replica loop in float32."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_sequence import bench

    import contextlib
    import io

    preset = "laptop" if small else "paper"
    cfg = parse_config({"setting": "sequence", "preset": preset, "device": dev.type})
    for arithmetic in PRECISIONS:  # issue 13: the paper preset per epoch in each precision
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            out = bench(preset, 3 if small else 6, dev, arithmetic, loop=arithmetic == "float32")
        for line in buf.getvalue().splitlines():
            say(f"TIME sequence {line}")
        rate = costs.matmul_rate(str(dev), arithmetic) if dev.type == "cuda" else matmul_rate(dev, 1024)
        b = int(out["b"])
        epoch_seqs = (cfg.n_train // b) * b * out["replicas"]
        epoch_s = epoch_seqs / out["vmap"]
        flops = 6 * out["params"] * out["length"] * epoch_seqs  # dense parameters only: a lower bound
        say(f"TIME sequence ({arithmetic}) {preset} preset, {out['replicas']:.0f} replicas, b = {b}: one epoch of "
            f"training ≈ {epoch_s:.1f} s on {dev} (extrapolated from the timed steps; without the statistics); "
            f"≥ {flops / epoch_s / 1e12:.2f} TFLOP/s vs {rate / 1e12:.1f} TFLOP/s {arithmetic} matmul "
            f"({flops / epoch_s / rate:.0%})")


def _example(name: str):
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"gpu_check_{name}", ROOT / "examples" / "models" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def example_step(module, R: int, b: int, dev: torch.device, lr: float = 0.01):
    """One SGD step of R replicas of a model file's network: vmap(grad(functional_call)) over the stacked
    parameters (indices drawn outside vmap), one fused update (torch._foreach_add_); returns step() → None."""
    import copy

    import torch.nn.functional as F
    from torch.func import functional_call, grad, stack_module_state, vmap

    X, Y = (t.to(dev) for t in module.data()["train"])
    net = module.model(0).to(dev)
    params, _ = stack_module_state([copy.deepcopy(net) for _ in range(R)])
    params = {k: v.detach().clone() for k, v in params.items()}
    per_sample = getattr(module, "loss", lambda o, t: F.cross_entropy(o, t, reduction="none"))
    grads = vmap(grad(lambda p, xb, yb: per_sample(functional_call(net, p, (xb,)), yb).mean()))
    names = list(params)
    gen = torch.Generator(device=dev).manual_seed(0)

    def step() -> None:
        idx = torch.randint(0, len(X), (R, b), generator=gen, device=dev)
        g = grads(params, X[idx], Y[idx])
        torch._foreach_add_([params[k] for k in names], [g[k] for k in names], alpha=-lr)

    return step, sum(p.numel() for p in net.parameters())


def time_examples(dev: torch.device, small: bool) -> None:
    """The model files of examples/models/ (issue 25): the CNN and the character-level transformer, R replicas
    stepped by vmap(grad) + one fused update in each precision, their FLOPs per step counted by torch's
    FlopCounterMode on one step (forward and backward, every op torch counts), and the achieved FLOP/s against this
    card's matmul rate in that precision; then, where the torch_model setting is registered, a whole run of each
    through backend.api (a CAL line for its GPU model)."""
    from torch.utils.flop_counter import FlopCounterMode

    from backend.engine.runner import precision

    sizes = {"cnn_digits": (8, 8) if small else (2000, 64), "char_transformer": (4, 4) if small else (256, 32)}
    steps = 3 if small else 20
    for name, (R, b) in sizes.items():
        module = _example(name)
        for arithmetic in PRECISIONS:
            step, P = example_step(module, R, b, dev)
            with precision(arithmetic, dev):
                step()  # warm-up
                with FlopCounterMode(display=False) as counter:
                    step()
                flops = counter.get_total_flops()
                seconds = timed(lambda: [step() for _ in range(steps)], dev)
            rate = costs.matmul_rate(str(dev), arithmetic) if dev.type == "cuda" else matmul_rate(dev, 1024)
            achieved = flops * steps / seconds
            say(f"TIME example {name} ({P} parameters, {arithmetic}): R = {R}, b = {b}, {steps} steps on {dev}: "
                f"{seconds / steps * 1e3:.2f} ms/step, {flops / 1e9:.2f} GFLOP/step → {achieved / 1e12:.3f} TFLOP/s "
                f"vs {rate / 1e12:.1f} TFLOP/s {arithmetic} matmul ({achieved / rate:.1%})")
        _time_example_run(name, dev, small)


def _time_example_run(name: str, dev: torch.device, small: bool) -> None:
    """A torch_model run of the example file end to end (statistics at t = 0, T/2, T), with its estimate."""
    from backend import settings

    setting = "torch_model"
    if setting not in settings.SETTINGS:
        say(f"SKIP example run {name}: the torch_model setting is not registered")
        return
    R, b, T = (4, 8, 4) if small else (64, 32, 200)
    cfg = parse_config({"setting": setting, "model": {"file": f"examples/models/{name}.py"}, "batch_sizes": [b],
                        "replicas": R, "inits": 2, "steps": T, "record_every": T // 2, "noise_samples": 64,
                        "device": dev.type})
    est = api.estimate(cfg)
    t0 = time.perf_counter()
    api.simulate(cfg)
    seconds = time.perf_counter() - t0
    calibration(est, seconds, f"{name}, 2 × {R} replicas, b = {b}, T = {T}")
    say(f"TIME example run {name} on {dev}: {seconds:.1f} s, estimated {costs.device_seconds(est, dev):.1f} s")


def profile_steps(dev: torch.device, small: bool) -> None:
    """Where the device time goes (torch.profiler, the kernels with the most self time): 64 eager steps of the
    linear-regression engine at R = 10⁵, b = 16, and 20 of the MLP paper preset's training steps in tf32 and in
    bf16 — issue #13's two hardest GPU targets, for whoever tunes them next."""
    from torch.profiler import ProfilerActivity, profile

    from backend.engine import linear_relu
    from backend.engine.runner import precision

    from torch.autograd import DeviceType

    activity = ProfilerActivity.CUDA if dev.type == "cuda" else ProfilerActivity.CPU
    key = "self_device_time_total" if dev.type == "cuda" else "self_cpu_time_total"
    kind = DeviceType.CUDA if dev.type == "cuda" else DeviceType.CPU  # kernels on a GPU (ops would count them twice)
    cfg = parse_config({"steps": 64, "batch_sizes": [16]})
    X, y, w0 = np.asarray(cfg.X, float), np.asarray(cfg.y, float), np.asarray(cfg.w0_values, float)
    R = 2000 if small else 100_000
    run = lambda: linreg.run_replicas(X, y, w0, cfg.lr.alphas(64), 16, R, "without_replacement", 0, dev,  # noqa: E731
                                      float(th.noise_factor(16, cfg.n)), cuda_graph=False)
    hidden, N, n = ((64, 32), 8, 3000) if small else ((1024, 512), 250, 48000)
    params = mlp_engine.init_params(mlp_engine.make_model(784, hidden, 10), N, 0, torch.float32, dev)
    Xi, Yi = torch.rand((n, 784), device=dev), torch.randint(0, 10, (n,), device=dev)

    def mlp_steps(arithmetic: str):
        def run_steps() -> None:
            stepper = linear_relu.SGDSteps(linear_relu.hold_steps(dev.type))
            for _ in range(20):
                idx = torch.randint(0, n, (N, 64), device=dev)
                with precision(arithmetic, dev):
                    stepper.step(params, Xi[idx], Yi[idx], 0.01)
            stepper.settle(params)
        return run_steps

    mlp = f"MLP {'-'.join(map(str, (784, *hidden, 10)))}, {N} replicas, 20"
    for label, fn in ((f"linear regression, R = {R}, 64 eager steps", run), (f"{mlp} tf32 steps", mlp_steps("tf32")),
                      (f"{mlp} bf16 steps", mlp_steps("bf16"))):
        fn()
        sync(dev)
        with profile(activities=[activity]) as prof:
            fn()
            sync(dev)
        events = sorted((e for e in prof.key_averages() if e.device_type == kind), key=lambda e: getattr(e, key),
                        reverse=True)
        total = sum(getattr(e, key) for e in events) or 1.0
        top = "; ".join(f"{e.key[:60]} {getattr(e, key) / 1e3:.1f} ms ({getattr(e, key) / total:.0%}, {e.count}×)"
                        for e in events[:8])
        say(f"PROFILE {label} on {dev}: self time {total / 1e3:.1f} ms; {top}")


def main() -> None:
    global OUT_FILE
    ap = argparse.ArgumentParser()
    ap.add_argument("--small", action="store_true", help="shrink everything (a CPU smoke run of the code paths)")
    ap.add_argument("--out", default=None, help="directory for gpu_check.txt")
    ap.add_argument("--budget", type=float, default=480.0, help="seconds after which the remaining parts are skipped")
    ap.add_argument("--only", default="", help="comma-separated words: run only the parts whose label holds one")
    ap.add_argument("--precisions", default="float32,tf32,bf16", help="the MLP and sequence timings' precisions")
    args = ap.parse_args()
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        OUT_FILE = Path(args.out, "gpu_check.txt")
        OUT_FILE.write_text("")
    start = time.perf_counter()
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    name = torch.cuda.get_device_name(0) if dev.type == "cuda" else "CPU"
    rate = matmul_rate(dev, 1024 if args.small else 8192)
    say(f"device {name}, torch {torch.__version__}; float32 matmul {rate / 1e12:.2f} TFLOP/s")
    steps = [("CUDA graph tests", lambda: check_graphs(dev)),
             ("linear regression check", lambda: check_linreg(dev, args.small)),
             ("deep linear check", lambda: check_deep(dev, args.small)),
             ("MLP gradient check", lambda: check_mlp_grads(dev)),
             ("linear regression timing", lambda: time_linreg(dev, args.small)),
             ("deep linear timing", lambda: time_deep(dev, args.small)),
             ("MLP timing", lambda: time_mlp(dev, args.small, rate)),
             ("sequence timing", lambda: time_sequence(dev, args.small)),
             ("example models timing", lambda: time_examples(dev, args.small)),
             ("profile", lambda: profile_steps(dev, args.small))]
    PRECISIONS[:] = args.precisions.split(",")
    wanted = [w.strip() for w in args.only.split(",") if w.strip()]
    for label, fn in steps:
        if wanted and not any(w in label for w in wanted):
            continue
        if time.perf_counter() - start > args.budget:
            say(f"SKIP {label}: past the {args.budget:.0f} s budget")
            continue
        t0 = time.perf_counter()
        gc.collect()  # each part starts with the card's memory free of the last one's
        if dev.type == "cuda":
            torch.cuda.empty_cache()
        try:
            fn()
        except Exception as exc:  # one failing part must not hide the others' results
            say(f"FAIL {label}: {type(exc).__name__}: {exc}")
        say(f"  ({label}: {time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()

"""Your-model benchmark (not a test; issue 25): R replicas of the CNN example (examples/models/cnn_digits.py) trained
by SGD, three ways side by side in one run on this machine, the same mini-batches for each:

- vmap: the parameters stacked over replicas (torch.func.stack_module_state), one ``vmap(grad(functional_call))``
  for all R gradients and one fused update of every stacked tensor (torch._foreach_add_) per step;
- loop: R ``nn.Module`` copies, each with its own ``torch.optim.SGD`` (zero_grad, backward, step per replica);
- setting: the torch_model setting's own run (backend.api.simulate, statistics only at t = 0 and T), its cost per
  step taken as the difference of a T-step and a T/4-step run over the 3T/4 steps between them (so the start-up and
  the two statistics passes cancel) — when the setting is registered.
The vmap and loop weights after the steps are compared (max |Δ|: float32 rounding only). Target: ≥ 10× the loop on
2 CPU cores. The loop's cost is mostly per-call overhead, the vmap's grows with R·b (a convolution over stacked
weights runs as a grouped convolution), so the ratio falls with b: b = 8 and b = 32 are both timed.
Run: ``python benchmarks/bench_torch_model.py [--replicas 64] [--batch 8 32] [--steps 20]``.
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import os
import platform
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.func import functional_call, grad, stack_module_state, vmap

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
EXAMPLE = ROOT / "examples" / "models" / "cnn_digits.py"
LR = 0.05


def load_example():
    spec = importlib.util.spec_from_file_location("bench_cnn_digits", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def time_vmap(net: torch.nn.Module, X: torch.Tensor, Y: torch.Tensor, idx: torch.Tensor) -> tuple[float, dict]:
    """Seconds for the steps of ``idx`` (steps, R, b) with stacked parameters; the final stacked weights."""
    R = idx.shape[1]
    params, _ = stack_module_state([copy.deepcopy(net) for _ in range(R)])
    params = {k: v.detach().clone() for k, v in params.items()}

    def batch_loss(p, xb, yb):
        return F.cross_entropy(functional_call(net, p, (xb,)), yb)

    grads_of = vmap(grad(batch_loss))
    names = list(params)

    def step(s: int) -> None:
        g = grads_of(params, X[idx[s]], Y[idx[s]])
        torch._foreach_add_([params[k] for k in names], [g[k] for k in names], alpha=-LR)

    warm = {k: v.clone() for k, v in params.items()}
    step(0)  # warm-up (first-call costs), then back to w_0
    for k in names:
        params[k].copy_(warm[k])
    t0 = time.perf_counter()
    for s in range(idx.shape[0]):
        step(s)
    return time.perf_counter() - t0, params


def time_loop(net: torch.nn.Module, X: torch.Tensor, Y: torch.Tensor, idx: torch.Tensor) -> tuple[float, dict]:
    """Seconds for the same steps with R module copies and R torch.optim.SGD; the final weights stacked."""
    R = idx.shape[1]
    nets = [copy.deepcopy(net) for _ in range(R)]
    opts = [torch.optim.SGD(m.parameters(), lr=LR) for m in nets]
    warm = [copy.deepcopy(m.state_dict()) for m in nets]

    def step(s: int) -> None:
        for r in range(R):
            opts[r].zero_grad()
            F.cross_entropy(nets[r](X[idx[s, r]]), Y[idx[s, r]]).backward()
            opts[r].step()

    step(0)  # warm-up, then back to w_0
    for m, sd in zip(nets, warm):
        m.load_state_dict(sd)
    t0 = time.perf_counter()
    for s in range(idx.shape[0]):
        step(s)
    seconds = time.perf_counter() - t0
    return seconds, {k: torch.stack([dict(m.named_parameters())[k].detach() for m in nets]) for k, _ in
                     net.named_parameters()}


def time_setting(R: int, b: int, steps: int) -> float | None:
    """Seconds per step of the torch_model setting's run (difference of the best of 3 T-step and best of 3 T/4-step
    runs), None where it is not available, NaN where the difference is not resolved (a loaded box)."""
    from backend import api
    from backend.cache import ResultCache
    from backend.config import parse_config
    from backend.errors import ConfigError

    import tempfile

    def run(T: int) -> float:
        cfg = parse_config({"setting": "torch_model", "model": {"file": str(EXAMPLE)}, "batch_sizes": [b],
                            "replicas": R, "inits": 1, "steps": T, "record_every": T, "noise_samples": 32,
                            "lr": {"schedule": "constant", "c": str(LR)}, "device": "cpu", "seed": 0})
        t0 = time.perf_counter()
        api.simulate(cfg, cache=ResultCache(tempfile.mkdtemp(prefix="bench-torch-model-")))
        return time.perf_counter() - t0

    try:
        short = max(1, steps // 4)
        run(short)  # warm-up: the file's import and checks, torch.func's first calls
        t_short = min(run(short) for _ in range(3))
        t_long = min(run(steps) for _ in range(3))
    except (ConfigError, ImportError, KeyError) as e:
        print(f"setting: not available here ({type(e).__name__}: {e})")
        return None
    if t_long - t_short < 0.1 * t_long:  # the steps are lost in the noise of the statistics passes
        return float("nan")
    return (t_long - t_short) / (steps - short)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--replicas", type=int, default=64)
    ap.add_argument("--batch", type=int, nargs="+", default=[8, 32])
    ap.add_argument("--steps", type=int, default=20)
    args = ap.parse_args()
    print(f"machine: {platform.platform()}, {os.cpu_count()} CPU cores, torch {torch.__version__} "
          f"({torch.get_num_threads()} threads), load average {os.getloadavg()[0]:.1f} (the loop suffers most from a "
          "loaded box: compare ratios measured at a low load)")
    R, steps = args.replicas, args.steps
    ex = load_example()
    X, Y = ex.data()["train"]
    net = ex.model(0)
    P = sum(p.numel() for p in net.parameters())
    for b in args.batch:
        idx = torch.randint(0, len(X), (steps, R, b), generator=torch.Generator().manual_seed(0))
        t_vmap, w_vmap = time_vmap(net, X, Y, idx)
        t_loop, w_loop = time_loop(net, X, Y, idx)
        diff = max((w_vmap[k] - w_loop[k]).abs().max().item() for k in w_loop)
        print(f"CNN example ({P} parameters), R = {R}, b = {b}, {steps} steps, CPU float32: vmap "
              f"{t_vmap / steps * 1e3:.2f} ms/step, per-replica loop {t_loop / steps * 1e3:.2f} ms/step "
              f"(×{t_loop / t_vmap:.1f}); weights after the steps agree to {diff:.1e}", flush=True)
        per_step = time_setting(R, b, steps)
        if per_step is not None and per_step != per_step:
            print(f"  setting torch_model (R = {R}, b = {b}): per-step cost not resolved at this load (the T- and "
                  f"T/4-step runs differ by less than 10 %): rerun on a quiet box or with more --steps", flush=True)
        elif per_step is not None:
            print(f"  setting torch_model (R = {R}, b = {b}; its own sampler and step): {per_step * 1e3:.2f} ms/step "
                  f"(×{t_loop / steps / per_step:.1f} the loop)", flush=True)


if __name__ == "__main__":
    main()

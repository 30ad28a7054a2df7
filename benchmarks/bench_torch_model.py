"""Your-model benchmark (not a test; issue 25): R replicas of the CNN example (examples/models/cnn_digits.py) trained
by SGD, three ways side by side in one run on this machine, the same mini-batches for each:

- vmap: the parameters stacked over replicas (torch.func.stack_module_state), one ``vmap(grad(functional_call))``
  for all R gradients and one fused update of every stacked tensor (torch._foreach_add_) per step;
- loop: R ``nn.Module`` copies, each with its own ``torch.optim.SGD`` (zero_grad, backward, step per replica);
- setting: the torch_model setting's own run (backend.api.simulate, statistics only at t = 0 and T), each step
  timed by its progress callback (called once a step, after the divergence check) — when the setting is registered.
Each way's cost is the median of its per-step times (a 2-core box's jitter and the first-call costs do not move a
median; the mean is printed beside it). The vmap and loop weights after the steps are compared (max |Δ|: float32
rounding, and max-pool ties that rounding flips). Target: ≥ 10× the loop on 2 CPU cores. The loop's cost is mostly per-call overhead, the vmap's grows with R·b (a convolution over stacked
weights runs as a grouped convolution), so the ratio falls with b: b = 8 and b = 32 are both timed.
Run: ``python benchmarks/bench_torch_model.py [--replicas 64] [--batch 1 4 8 32] [--steps 40]``.
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
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
    return step_times(step, idx.shape[0]), params


def step_times(step, steps: int) -> list[float]:
    """Seconds of each of ``steps`` calls step(s)."""
    out = []
    for s in range(steps):
        t0 = time.perf_counter()
        step(s)
        out.append(time.perf_counter() - t0)
    return out


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
    seconds = step_times(step, idx.shape[0])
    return seconds, {k: torch.stack([dict(m.named_parameters())[k].detach() for m in nets]) for k, _ in
                     net.named_parameters()}


def time_setting(R: int, b: int, steps: int) -> list[float] | None:
    """Seconds of each step of the torch_model setting's run after its first (between consecutive progress calls,
    the record points' statistics left out), None where the setting is not available."""
    from backend import api
    from backend.cache import ResultCache
    from backend.config import parse_config
    from backend.errors import ConfigError

    import tempfile

    cfg = parse_config({"setting": "torch_model", "model": {"file": str(EXAMPLE)}, "batch_sizes": [b],
                        "replicas": R, "inits": 1, "steps": steps + 1, "record_every": steps + 1,
                        "noise_samples": 32, "lr": {"schedule": "constant", "c": str(LR)}, "device": "cpu",
                        "seed": 0})
    stamps: list[float] = []
    try:
        api.simulate(cfg, progress=lambda units: stamps.append(time.perf_counter()),
                     cache=ResultCache(tempfile.mkdtemp(prefix="bench-torch-model-")))
    except (ConfigError, ImportError, KeyError) as e:
        print(f"setting: not available here ({type(e).__name__}: {e})")
        return None
    return list(np.diff(stamps[:steps + 1]))  # steps 1 … T (step 0 pays the first calls; the last record after T)


def per_step(times: list[float]) -> str:
    return f"{statistics.median(times) * 1e3:.2f} ms/step (mean {statistics.fmean(times) * 1e3:.2f})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--replicas", type=int, default=64)
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 4, 8, 32])
    ap.add_argument("--steps", type=int, default=40)
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
        loop = statistics.median(t_loop)
        print(f"CNN example ({P} parameters), R = {R}, b = {b}, {steps} steps, CPU float32: vmap {per_step(t_vmap)}, "
              f"per-replica loop {per_step(t_loop)} (×{loop / statistics.median(t_vmap):.1f} by the medians); "
              f"weights after the steps agree to {diff:.1e}", flush=True)
        t_setting = time_setting(R, b, steps)
        if t_setting is not None:
            print(f"  setting torch_model (R = {R}, b = {b}; its own sampler, step and divergence check): "
                  f"{per_step(t_setting)} (×{loop / statistics.median(t_setting):.1f} the loop)", flush=True)

if __name__ == "__main__":
    main()

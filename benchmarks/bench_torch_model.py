"""Your-model benchmark (not a test; issue 25): R replicas of the CNN example (examples/models/cnn_digits.py) trained
by SGD, side by side in one run on this machine, the same mini-batches for each:

- loop: R ``nn.Module`` copies, each with its own ``torch.optim.SGD`` (zero_grad, backward, step per replica);
- vmap(grad): the parameters stacked over replicas (torch.func.stack_module_state), one
  ``vmap(grad(functional_call))`` for all R gradients and one fused update (torch._foreach_add_) per step;
- summed: the setting's engine step (backend/engine/replicas.py: one backward pass of the summed losses through the
  vmapped forward) and the same fused update;
- setting: the torch_model setting's own run (backend.api.simulate, statistics only at t = 0 and T), each step timed
  by its progress callback (called once a step, after the divergence check), run after the others.
The first three take turns at every step (a drift of the box's speed hits them alike); each way's cost is the median
of its per-step times (the mean printed beside it). The weights after the steps are compared with the loop's (max |Δ|:
float32 rounding, and max-pool ties that rounding flips). Target: ≥ 10× the loop on 2 CPU cores. The loop's cost is
mostly per-call overhead, the stacked ways' grows with R·b (a convolution over stacked weights runs as a grouped
convolution, the max-pool as one NCHW kernel over R·b images), so the ratio falls with b.
Run: ``python benchmarks/bench_torch_model.py [--replicas 64] [--batch 1 4 8 32] [--steps 40]``."""

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


def vmap_steps(net: torch.nn.Module, X: torch.Tensor, Y: torch.Tensor, idx: torch.Tensor, summed: bool):
    """(step(s), the stacked weights): step s of ``idx`` (steps, R, b) with stacked parameters and one fused update;
    the gradients by vmap(grad) of each replica's loss, or (``summed``) by the setting's engine — one backward pass of
    the summed losses through the vmapped forward (backend/engine/replicas.py)."""
    from backend.engine.replicas import Replicas

    R = idx.shape[1]
    params, _ = stack_module_state([copy.deepcopy(net) for _ in range(R)])
    params = {k: v.detach().clone() for k, v in params.items()}
    names = list(params)
    if summed:
        rep = Replicas(net)
        grads_of = lambda p, xb, yb: rep.grad_and_loss(p, xb, yb)[0]  # noqa: E731
    else:
        grads_of = vmap(grad(lambda p, xb, yb: F.cross_entropy(functional_call(net, p, (xb,)), yb)))

    def step(s: int) -> None:
        g = grads_of(params, X[idx[s]], Y[idx[s]])
        torch._foreach_add_([params[k] for k in names], [g[k] for k in names], alpha=-LR)

    return step, params


def loop_steps(net: torch.nn.Module, X: torch.Tensor, Y: torch.Tensor, idx: torch.Tensor):
    """(step(s), the weights stacked on demand): the same steps with R module copies and R torch.optim.SGD."""
    R = idx.shape[1]
    nets = [copy.deepcopy(net) for _ in range(R)]
    opts = [torch.optim.SGD(m.parameters(), lr=LR) for m in nets]

    def step(s: int) -> None:
        for r in range(R):
            opts[r].zero_grad()
            F.cross_entropy(nets[r](X[idx[s, r]]), Y[idx[s, r]]).backward()
            opts[r].step()

    return step, lambda: {k: torch.stack([dict(m.named_parameters())[k].detach() for m in nets])
                          for k, _ in net.named_parameters()}


def interleaved(steps_of: dict, n: int) -> dict[str, list[float]]:
    """Seconds of each way's step s, the ways taking turns at every s (a drift of the box's speed hits all alike);
    each way's first call (warm-up) is step 0 and is not counted."""
    times: dict[str, list[float]] = {name: [] for name in steps_of}
    for s in range(n):
        for name, step in steps_of.items():
            t0 = time.perf_counter()
            step(s)
            if s:
                times[name].append(time.perf_counter() - t0)
    return times


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
        idx = torch.randint(0, len(X), (steps + 1, R, b), generator=torch.Generator().manual_seed(0))
        vmap_step, w_vmap = vmap_steps(net, X, Y, idx, summed=False)
        summed_step, w_summed = vmap_steps(net, X, Y, idx, summed=True)
        loop_step, w_loop = loop_steps(net, X, Y, idx)
        t = interleaved({"vmap": vmap_step, "summed": summed_step, "loop": loop_step}, steps + 1)
        w_loop = w_loop()
        diff = max(max((w_vmap[k] - w_loop[k]).abs().max().item(), (w_summed[k] - w_loop[k]).abs().max().item())
                   for k in w_loop)
        loop = statistics.median(t["loop"])
        print(f"CNN example ({P} parameters), R = {R}, b = {b}, {steps} steps, CPU float32, the ways taking turns "
              f"at every step: per-replica loop {per_step(t['loop'])}; vmap(grad) {per_step(t['vmap'])} "
              f"(×{loop / statistics.median(t['vmap']):.1f}); the engine's summed backward {per_step(t['summed'])} "
              f"(×{loop / statistics.median(t['summed']):.1f}; {statistics.median(t['summed']) / statistics.median(t['vmap']):.2f}"
              f" of vmap(grad)'s); weights after the steps agree with the loop's to {diff:.1e}", flush=True)
        t_setting = time_setting(R, b, steps)
        if t_setting is not None:
            print(f"  setting torch_model (R = {R}, b = {b}; its own sampler, step and divergence check, run after): "
                  f"{per_step(t_setting)} (×{loop / statistics.median(t_setting):.1f} the loop)", flush=True)

if __name__ == "__main__":
    main()

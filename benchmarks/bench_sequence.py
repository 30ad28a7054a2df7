"""Sequence-model benchmark (not a test): replica throughput (sequences per second, all replicas) of one
vmap(grad)+AdamW step over stacked replicas against a per-replica loop of modules with torch.optim.AdamW and
clip_grad_norm_, on the laptop preset's model; on a CUDA GPU, the paper preset's epoch time. Run:
``python benchmarks/bench_sequence.py [--steps N]``."""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from backend.settings.sequence import encode_corpus  # noqa: E402
from backend.config import parse_config  # noqa: E402
from backend.engine import mlp as trainer  # noqa: E402
from backend.engine import sequence as seq  # noqa: E402
from backend.engine.runner import precision  # noqa: E402
from backend.optim import adamw  # noqa: E402


def bench(preset: str, steps: int, device: torch.device, arithmetic: str = "float32",
          loop: bool = True) -> dict[str, float]:
    """Times ``steps`` vmap steps (in ``arithmetic``: backend.engine.runner.precision) and, with ``loop``, the
    per-replica loop (float32); prints one line, returns sequences per second ("vmap", "loop") and the model's
    parameter count, sequence length and replicas."""
    cfg = parse_config({"setting": "sequence", "preset": preset})
    # the run's sequence length: the longest sentence of the corpus (up to max_len; see backend/settings/sequence.py: encode_corpus)
    R, b, L, V = cfg.inits * cfg.replicas, cfg.batch_sizes[0], encode_corpus(cfg)[1].shape[1], cfg.vocab
    model = seq.Encoder(V, L, cfg.width, cfg.heads, cfg.layers)
    params = {k: v.repeat_interleave(R // cfg.inits, 0).contiguous()
              for k, v in seq.init_params(model, cfg.inits, 0, torch.float32, device).items()}
    rep = trainer.Replicas(trainer.module_forward(seq.Encoder(V, L, cfg.width, cfg.heads, cfg.layers)))
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(2, V, (steps, R, b, L), generator=gen).to(device)
    y = torch.randint(0, 2, (steps, R, b), generator=gen).to(device)
    opt = adamw(clip=1.0)
    state = opt.init(params)
    with precision(arithmetic, device):
        rep.grad_and_loss(params, ids[0], y[0])
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for s in range(steps):
        with precision(arithmetic, device):
            g, _ = rep.grad_and_loss(params, ids[s], y[s])
        params = opt.step(params, g, state, 1e-3, s)
    if device.type == "cuda":
        torch.cuda.synchronize()
    t_vmap = time.perf_counter() - t0
    seqs = steps * R * b
    out = {"vmap": seqs / t_vmap, "params": float(sum(v[0].numel() for v in params.values())), "length": float(L),
           "replicas": float(R), "b": float(b)}
    if not loop:
        print(f"{preset} model ({cfg.layers} layers, width {cfg.width}, {cfg.heads} heads, length {L}), {R} replicas, "
              f"b = {b}, {steps} steps on {device} in {arithmetic}: vmap {seqs / t_vmap:,.0f} sequences/s")
        return out
    modules = [seq.Encoder(V, L, cfg.width, cfg.heads, cfg.layers).to(device) for _ in range(R)]
    opts = [torch.optim.AdamW(m.parameters(), lr=1e-3, weight_decay=0.0) for m in modules]
    for s in (0, -1):  # warm-up, as for vmap (first calls and the optimizers' state creation are slower)
        for r, (m, o) in enumerate(zip(modules, opts)):
            o.zero_grad()
            torch.nn.functional.cross_entropy(m(ids[s, r]), y[s, r]).backward()
            o.step()
    t0 = time.perf_counter()
    for s in range(steps):
        for r, (m, o) in enumerate(zip(modules, opts)):
            o.zero_grad()
            torch.nn.functional.cross_entropy(m(ids[s, r]), y[s, r]).backward()
            torch.nn.utils.clip_grad_norm_(m.parameters(), 1.0)
            o.step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    t_loop = time.perf_counter() - t0
    out["loop"] = seqs / t_loop
    print(f"{preset} model ({cfg.layers} layers, width {cfg.width}, {cfg.heads} heads, length {L}), {R} replicas, "
          f"b = {b}, {steps} steps on {device}: vmap {seqs / t_vmap:,.0f} sequences/s, per-replica loop "
          f"{seqs / t_loop:,.0f} sequences/s (×{t_loop / t_vmap:.2f})")
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=20)
    args = ap.parse_args()
    print(f"machine: {platform.platform()}, {os.cpu_count()} CPU cores, torch {torch.__version__} "
          f"({torch.get_num_threads()} threads), cuda: "
          f"{torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'none'}")
    bench("laptop", args.steps, torch.device("cpu"))
    if torch.cuda.is_available():
        bench("paper", 3, torch.device("cuda"))


if __name__ == "__main__":
    main()

"""The deep linear network's replica branches for the critical batch size (backend/cbs.py; docs/theory.md §11,
"Replica branches"): the hooks ``branch_bounds`` and ``replica_branches`` that backend/settings/deep_linear.py exposes.
No exact theory: every replica's state at t_c continues, so the branch losses are replica means with SEs."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch

from backend.cache import CODE_VERSION, ResultCache
from backend.engine import deep_linear as dl
from backend.engine import deep_linear_branch as dlb
from backend.errors import ConfigError
from backend.progress import Progress, as_progress
from backend.settings.base import cache_key
from backend.settings.replica_cbs import summarise


def branch_bounds(config) -> dict[str, int | None]:
    """What ``cbs`` may ask: checkpoints up to the config's steps; online samples, so any b is a batch (``max_b``
    None) and the default k's are the powers of two while k·B ≤ the config's largest batch size (``n``)."""
    if config.batch_schedule is not None:
        raise ConfigError("batch_schedule", "the critical batch size's reference run is at the constant batch B; "
                                            "give batch_sizes instead of a batch_schedule")
    return {"max_t": config.steps, "n": max(config.batch_sizes), "max_b": None}


def replica_branches(config, b_ref: int, checkpoints: list[int], bs: np.ndarray,
                     factors: np.ndarray, steps: np.ndarray, device: torch.device, cache: ResultCache,
                     progress: Progress | None = None) -> dict[str, Any]:
    """Replica branches (backend/engine/deep_linear_branch.py): the config's replicas run with batch ``b_ref``, its
    schedule and optimizer; at each checkpoint every replica continues with batch bs[j] and the constant step size
    α_{t_c}·factors[r, j] for steps[j] steps, velocity carried over. Means over the replicas with their SEs
    (backend/settings/replica_cbs.py: summarise; one init), cached under the config, the request and the device.
    ``progress``: its total the reference run's and the branches' steps, advanced by each (finished on a hit)."""
    progress = as_progress(progress)
    extra = {"b_ref": int(b_ref), "checkpoints": [int(t) for t in checkpoints], "bs": np.asarray(bs).tolist(),
             "factors": np.asarray(factors, dtype=np.float64).tolist(), "steps": np.asarray(steps).tolist(),
             "device": str(device)}
    meta, arrays, _ = cache.get_or_compute(cache_key("cbs_replicas_deep", config, extra=extra),
                                           lambda: _replica_branches(config, b_ref, checkpoints, bs, factors, steps,
                                                                     device, progress))
    progress.finish()
    alpha = np.asarray(config.lr.alphas(max(checkpoints) + 1))[list(checkpoints)]
    out = summarise(arrays, dlb.alive(torch.as_tensor(arrays["branch_loss"])), config.replicas, list(checkpoints), bs,
                    factors, alpha, 1.0 / np.asarray(bs, dtype=np.float64))
    out.update(loss0=meta["loss0"], noise_samples=meta["noise_samples"])
    return out


def _replica_branches(config, b_ref: int, checkpoints: list[int], bs: np.ndarray,
                      factors: np.ndarray, steps: np.ndarray, device: torch.device,
                      progress: Progress) -> tuple[dict, dict]:
    """The replica runs behind ``replica_branches``: (meta, arrays) for the cache; per-replica moments (C, R) and
    branch losses (rules, C, K, R); ``progress`` advanced after every step."""
    t0 = time.monotonic()
    dtype = torch.float64 if config.dtype == "float64" else torch.float32
    W0 = dl.reduce_widths([np.asarray(M, dtype=np.float64) for M in config.w0_values])
    T_prod = dlb.teacher_product([np.asarray(M, dtype=np.float64) for M in config.teacher_values], device, dtype)
    opt = config.optimizer.build()
    alphas = config.lr.alphas(max(checkpoints) + 1)
    progress.total = max(checkpoints) + int(np.sum(steps))
    with torch.no_grad():
        ref = dlb.reference(W0, T_prod, alphas, int(b_ref), config.replicas, config.seed, list(checkpoints), opt,
                            device, dtype, progress.advance)
        alpha = np.asarray(alphas)[list(checkpoints)]
        losses = [dlb.branch(ref, T_prod, int(b), alpha[None, :] * np.asarray(factors)[:, j:j + 1], int(steps[j]),
                             config.seed, opt, progress.advance) for j, b in enumerate(bs)]
    arrays = {q: torch.stack([m[q] for m in ref.moments]).cpu().numpy() for q in ref.moments[0]}
    arrays["branch_loss"] = torch.stack(losses, dim=2).cpu().numpy()
    W0_t = [torch.as_tensor(W, dtype=torch.float64)[None] for W in W0]
    loss0 = float(0.5 * dl._norm2(dl._forward(W0_t, T_prod.to("cpu", torch.float64))[0])[0])
    return {"kind": "cbs_replicas_deep", "device": str(device), "loss0": loss0, "noise_samples": dlb.NOISE_SAMPLES,
            "seconds": time.monotonic() - t0, "code_version": CODE_VERSION}, arrays


# 2-core CPU cost of the branch steps (no chunks: every lane in one call; the tensors out of cache), fitted on process
# time with one thread at dims (1, 1, 1), (3, 4, 2), (16, 32, 8), (32, 64, 16), b = 1…64, float64 (float32: about half
# the per-parameter terms; benchmarks/TIMINGS.md): µs per lane and step ≈ 0.15 + P·(4 + 1.2·m + 2·s)·10⁻³ ×
# itemsize/8 (P the reduced widths' parameters, m = min(b, p) the factor's rank, s the optimizer's weight-sized state
# tensors); ≈ 4 + 0.065·P µs per replica and checkpoint for the moments; ≈ 0.2 ms a step of fixed cost.
LANE_STEP_S = 1.5e-7
PARAM_STEP_S = (4e-9, 1.2e-9, 2e-9)  # per parameter: the step, × m, × each optimizer state tensor (float64)
MOMENT_S = (4e-6, 6.5e-8)  # per replica and checkpoint: fixed, per parameter
STEP_S = 2e-4


def branch_seconds(dims: tuple[int, ...], R: int, lanes: int, checkpoints: list[int], b_ref: int, bs: np.ndarray,
                   steps: np.ndarray, itemsize: int, optimizer_tensors: int) -> float:
    """2-core CPU seconds of ``replica_branches`` (the module constants): the reference run (R replicas, max t_c steps
    of B), the moments at each checkpoint, then per k the ``lanes`` = rules × checkpoints × R lanes for ⌊S/(kB)⌋
    steps of batch k·B, and 0.05 s of set-up."""
    d = dl.generic_reduced_dims(tuple(dims))
    P, p = sum(d[k] * d[k + 1] for k in range(len(d) - 1)), d[0]
    scale = itemsize / 8

    def run(n: int, T: int, b: int) -> float:
        per_lane = LANE_STEP_S + P * scale * (PARAM_STEP_S[0] + PARAM_STEP_S[1] * min(b, p)
                                              + PARAM_STEP_S[2] * optimizer_tensors)
        return T * (n * per_lane + STEP_S)

    seconds = 0.05 + run(R, max(checkpoints), int(b_ref)) + R * len(checkpoints) * (MOMENT_S[0] + MOMENT_S[1] * P)
    return float(seconds + sum(run(lanes, int(s), int(b)) for b, s in zip(bs, steps)))

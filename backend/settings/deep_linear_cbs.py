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
                     factors: np.ndarray, steps: np.ndarray, device: torch.device, cache: ResultCache
                     ) -> dict[str, Any]:
    """Replica branches (backend/engine/deep_linear_branch.py): the config's replicas run with batch ``b_ref``, its
    schedule and optimizer; at each checkpoint every replica continues with batch bs[j] and the constant step size
    α_{t_c}·factors[r, j] for steps[j] steps, velocity carried over. Means over the replicas with their SEs
    (backend/settings/replica_cbs.py: summarise; one init), cached under the config, the request and the device."""
    extra = {"b_ref": int(b_ref), "checkpoints": [int(t) for t in checkpoints], "bs": np.asarray(bs).tolist(),
             "factors": np.asarray(factors, dtype=np.float64).tolist(), "steps": np.asarray(steps).tolist(),
             "device": str(device)}
    meta, arrays, _ = cache.get_or_compute(cache_key("cbs_replicas_deep", config, extra=extra),
                                           lambda: _replica_branches(config, b_ref, checkpoints, bs, factors, steps,
                                                                     device))
    alpha = np.asarray(config.lr.alphas(max(checkpoints) + 1))[list(checkpoints)]
    out = summarise(arrays, dlb.alive(torch.as_tensor(arrays["branch_loss"])), config.replicas, list(checkpoints), bs,
                    factors, alpha, 1.0 / np.asarray(bs, dtype=np.float64))
    out.update(loss0=meta["loss0"], noise_samples=meta["noise_samples"])
    return out


def _replica_branches(config, b_ref: int, checkpoints: list[int], bs: np.ndarray,
                      factors: np.ndarray, steps: np.ndarray, device: torch.device) -> tuple[dict, dict]:
    """The replica runs behind ``replica_branches``: (meta, arrays) for the cache; per-replica moments (C, R) and
    branch losses (rules, C, K, R)."""
    t0 = time.monotonic()
    dtype = torch.float64 if config.dtype == "float64" else torch.float32
    W0 = dl.reduce_widths([np.asarray(M, dtype=np.float64) for M in config.w0_values])
    T_prod = dlb.teacher_product([np.asarray(M, dtype=np.float64) for M in config.teacher_values], device, dtype)
    opt = config.optimizer.build()
    alphas = config.lr.alphas(max(checkpoints) + 1)
    with torch.no_grad():
        ref = dlb.reference(W0, T_prod, alphas, int(b_ref), config.replicas, config.seed, list(checkpoints), opt,
                            device, dtype)
        alpha = np.asarray(alphas)[list(checkpoints)]
        losses = [dlb.branch(ref, T_prod, int(b), alpha[None, :] * np.asarray(factors)[:, j:j + 1], int(steps[j]),
                             config.seed, opt) for j, b in enumerate(bs)]
    arrays = {q: torch.stack([m[q] for m in ref.moments]).cpu().numpy() for q in ref.moments[0]}
    arrays["branch_loss"] = torch.stack(losses, dim=2).cpu().numpy()
    W0_t = [torch.as_tensor(W, dtype=torch.float64)[None] for W in W0]
    loss0 = float(0.5 * dl._norm2(dl._forward(W0_t, T_prod.to("cpu", torch.float64))[0])[0])
    return {"kind": "cbs_replicas_deep", "device": str(device), "loss0": loss0, "noise_samples": dlb.NOISE_SAMPLES,
            "seconds": time.monotonic() - t0, "code_version": CODE_VERSION}, arrays

"""What every setting's replica branches share (backend/cbs.py; docs/theory.md §11, "Replica branches"): per-replica
moments at the checkpoints and per-replica branch losses → the means and SEs ``cbs`` documents (backend/stats.py:
GroupMoments.mean_se, ratio_se); and the functional models' hook (the MLP, your own model) over
backend/engine/replica_branch.py, cached under the config and the request."""

from __future__ import annotations

import time
from typing import Any, Callable

import numpy as np
import torch

from backend import lemma1
from backend.cache import CODE_VERSION, ResultCache
from backend.engine import replica_branch as rb
from backend.engine.noise import noise_chunk
from backend.optim import Optimizer
from backend.progress import Progress, as_progress
from backend.settings.base import cache_key
from backend.stats import GroupMoments, Groups, ratio_se

MOMENTS = ("loss", "grad2", "trace", "h_grad2", "h_trace")


def summarise(arrays: dict[str, np.ndarray], ok: torch.Tensor, R: int, checkpoints: list[int], bs: np.ndarray,
              factors: np.ndarray, alpha: np.ndarray, noise_factor: np.ndarray) -> dict[str, Any]:
    """``replica_branches``' answer from per-replica arrays: the moments (C, R) of ``MOMENTS`` and ``branch_loss``
    (rules, C, K, R), ``ok`` (rules, C, K, R) the branch replicas that did not diverge; ``alpha`` (C,) the reference
    run's α_{t_c}; ``noise_factor`` (K,) c_b. Means over the replicas with their SEs; a replica whose moments are not
    finite (diverged in the reference run) is left out of them."""
    C = len(checkpoints)
    mom = {q: torch.as_tensor(arrays[q]).reshape(C * R) for q in MOMENTS}
    every = torch.isfinite(mom["loss"]) & torch.isfinite(mom["grad2"]) & torch.isfinite(mom["trace"])
    out: dict[str, Any] = {"exact": False, "replicas": R, "noise_factor": np.asarray(noise_factor, dtype=np.float64)}
    per_cp = Groups.blocks(C, R, every.device)  # the replicas of each checkpoint
    out["loss"], out["loss_se"] = GroupMoments.of(mom["loss"], per_cp, every).mean_se()
    for q in ("grad2", "trace", "h_grad2", "h_trace"):
        out[q] = GroupMoments.of(mom[q], per_cp, every).mean_se()[0]
    out["b_simple"], out["b_simple_se"] = ratio_se(mom["trace"], mom["grad2"], per_cp, every)
    out["b_noise"], out["b_noise_se"] = ratio_se(mom["h_trace"], mom["h_grad2"], per_cp, every)
    c_b = out["noise_factor"]
    denom = mom["h_grad2"][None, :] + torch.as_tensor(c_b)[:, None] * mom["h_trace"][None, :]  # (K, C·R)
    K = len(bs)
    _, eps_se = ratio_se(mom["grad2"].repeat(K), denom.reshape(-1), Groups.blocks(K * C, R, every.device),
                         every.repeat(K))
    out["step_opt_se"] = eps_se.reshape(K, C).T
    out["step_gain_se"] = _gain_se(mom["grad2"], denom, C, K, every)
    loss = torch.as_tensor(arrays["branch_loss"])  # (rules, C, K, R)
    lanes = Groups.blocks(loss[..., 0].numel(), loss.shape[-1], loss.device)  # the replicas of each branch
    mean, se = GroupMoments.of(torch.where(ok, loss, 0.0).reshape(-1), lanes, ok.reshape(-1)).mean_se()
    out["branch_loss"], out["branch_loss_se"] = mean.reshape(loss.shape[:3]), se.reshape(loss.shape[:3])
    out["diverged_replicas"] = (~ok).sum(dim=-1).numpy()
    out["lr"] = np.asarray(alpha, dtype=np.float64)[None, :, None] * np.asarray(factors, dtype=np.float64)[:, None, :]
    return out


def _gain_se(grad2: torch.Tensor, denom: torch.Tensor, C: int, K: int, every: torch.Tensor) -> np.ndarray:
    """The SE of the one-step gain ½ ā²/d̄ (ā = mean ‖∇L‖², d̄ = mean of ∇LᵀH∇L + c_b tr(HΣ)) by the delta method:
    sd(u)/√R with u_r = (ā/d̄)(a_r − ā) − ½(ā/d̄)²(d_r − d̄), the SE of the mean of u (GroupMoments.mean_se). (C, K)."""
    R = grad2.numel() // C
    live = every.reshape(C, R)
    a = torch.where(live, grad2.reshape(C, R).to(torch.float64), 0.0)
    d = torch.where(live[None], denom.reshape(K, C, R).to(torch.float64), 0.0)
    cnt = live.sum(dim=1).clamp(min=1)
    abar = (a.sum(dim=1) / cnt)[None, :, None]
    dbar = (d.sum(dim=2) / cnt[None])[..., None]
    u = (abar / dbar) * (a[None] - abar) - 0.5 * (abar / dbar) ** 2 * (d - dbar)
    lanes = Groups.blocks(K * C, R, u.device)
    return GroupMoments.of(u.reshape(-1), lanes, live[None].expand(K, C, R).reshape(-1)).mean_se()[1].reshape(K, C).T


def alive(loss: torch.Tensor) -> torch.Tensor:
    """The branch replicas of a functional model that did not diverge: a finite final loss."""
    return torch.isfinite(loss)


def functional_branches(config, kind: str, b_ref: int, checkpoints: list[int], bs: np.ndarray, factors: np.ndarray,
                        steps: np.ndarray, device: torch.device, cache: ResultCache,
                        make_task: Callable[[torch.device], tuple[rb.BranchTask, float, int]],
                        progress: Progress | None = None, optimizer: Optimizer | None = None,
                        alphas: Callable[[int], list[float]] | None = None) -> dict[str, Any]:
    """A functional model's ``replica_branches`` (backend/engine/replica_branch.py): ``config.replicas`` replicas of
    init 0 (the config's seed) — the expectations are given F_0, one w_0 — run with batch ``b_ref``, the config's
    sampler, schedule (α_t of the step t) and optimizer; at each checkpoint (a step) every replica continues with batch
    bs[j] and α_{t_c}·factors[r, j] for steps[j] steps. ``make_task(device)`` → (task, L(w_0), n); cached under
    ``kind``, the config, the request and the device. ``optimizer`` (default ``config.optimizer.build()``) and
    ``alphas(T)`` (α_0 … α_{T−1}; default ``config.lr.alphas``) for a setting with its own (the sequence model's
    clipped AdamW and warm-up/decay schedule). ``progress``: its total set to the reference run's and the branches'
    steps, advanced by each (finished at once on a cache hit)."""
    alphas_of = config.lr.alphas if alphas is None else alphas
    progress = as_progress(progress)
    extra = {"b_ref": int(b_ref), "checkpoints": [int(t) for t in checkpoints], "bs": np.asarray(bs).tolist(),
             "factors": np.asarray(factors, dtype=np.float64).tolist(), "steps": np.asarray(steps).tolist(),
             "device": str(device)}

    def compute() -> tuple[dict, dict]:
        t0 = time.monotonic()
        task, loss0, n = make_task(device)
        opt = config.optimizer.build() if optimizer is None else optimizer
        alphas = alphas_of(max(checkpoints) + 1)
        alpha = np.asarray(alphas, dtype=np.float64)[list(checkpoints)]
        progress.total = max(checkpoints) + int(np.sum(steps))
        ref = rb.reference(task, opt, alphas, int(b_ref), config.replicas, config.seed, list(checkpoints),
                           config.noise_samples, device, progress.advance)
        losses = [rb.branch(task, ref, opt, int(b), alpha[None, :] * np.asarray(factors)[:, j:j + 1],
                            list(checkpoints), int(steps[j]), config.seed, progress.advance)
                  for j, b in enumerate(bs)]
        arrays = {q: torch.stack([m[q] for m in ref.moments]).cpu().numpy() for q in MOMENTS}
        arrays["branch_loss"] = torch.stack(losses, dim=2).cpu().numpy()
        return {"kind": kind, "device": str(device), "loss0": float(loss0), "n": int(n), "hessian": ref.hessian,
                "noise_samples": rb.NOISE_SAMPLES, "seconds": time.monotonic() - t0,
                "code_version": CODE_VERSION}, arrays

    meta, arrays, _ = cache.get_or_compute(cache_key(kind, config, extra=extra), compute)
    progress.finish()
    sampler = "with_replacement" if config.sampler == "with_replacement" else "without_replacement"
    alpha = np.asarray(alphas_of(max(checkpoints) + 1), dtype=np.float64)[list(checkpoints)]
    out = summarise(arrays, alive(torch.as_tensor(arrays["branch_loss"])), config.replicas, list(checkpoints), bs,
                    factors, alpha, lemma1.noise_factor(np.asarray(bs), meta["n"], sampler))
    out.update(loss0=meta["loss0"], noise_samples=meta["noise_samples"])
    if not meta["hessian"]:
        out["b_noise_note"] = ("b_noise, ε_opt and the one-step gain need Hessian-vector products, which this model's "
                               "operations do not support under torch.func (no second derivative)")
    return out


def functional_estimate(P: int, F: float, act: int, n_eval: int, R: int, checkpoints: list[int], n_rules: int,
                        b_ref: int, bs: np.ndarray, steps: np.ndarray, noise_samples: int, n: int, bytes_per: int,
                        optimizer_state: int, rate: float, setup: float, step_seconds: float = 3e-3
                        ) -> dict[str, float]:
    """Memory (bytes), 2-core CPU seconds, FLOPs and sequential steps of ``functional_branches``: P parameters, F
    forward FLOPs per sample (a gradient ≈ 3F, a Hessian-vector product ≈ 2 gradients), ``act`` activations per
    sample. The reference run (R replicas, max t_c steps of B), at each checkpoint the moments (per-sample gradients
    on m points, NOISE_SAMPLES + 1 Hessian-vector products on m points, the loss on n_eval points), then per k the
    rules × checkpoints × R lanes for ⌊S/(kB)⌋ steps and their final loss. 2 CPU cores: ``setup`` seconds (data,
    model), every FLOP at ``rate`` FLOP/s (vmapped over replicas: the setting's figure) and ``step_seconds`` a step
    (≈ 3 ms by default: the vmapped step's small ops)."""
    m, q, C = min(noise_samples, n), rb.NOISE_SAMPLES, len(checkpoints)
    N = n_rules * C * R
    bs, steps = np.asarray(bs, dtype=np.float64), np.asarray(steps, dtype=np.float64)
    t_ref = float(max(checkpoints))
    train = 3.0 * F * (b_ref * R * t_ref + float((bs * steps).sum()) * N)
    per_sample = 3.0 * F * R * (m + q) * C
    hessian = 6.0 * F * R * m * (q + 1) * C
    evals = F * n_eval * (R * C + N * len(bs))
    n_steps = t_ref + float(steps.sum()) + C * (q + 3 + 2 * m / max(1, noise_chunk(R, P)))
    seconds = setup + (train + hessian + evals + per_sample) / rate + n_steps * step_seconds
    b_max = float(max(bs.max(), b_ref))
    memory = (bytes_per * N * P * (3 + optimizer_state) + bytes_per * min(N * b_max, 2**27 / max(act, 1)) * act * 3
              + 8.0 * R * P * (noise_chunk(R, P) + 2) + bytes_per * R * m * act * 4)
    return {"memory_bytes": float(memory), "seconds": float(seconds), "flops": float(train + per_sample + hessian
                                                                                         + evals),
            "steps": n_steps}


"""What the two replica classifiers (the MLP and the sequence model) share: the resumable run over batch sizes, the
per-epoch result with standard errors, and their quantity table (docs/theory.md §3–§4).

A run is checkpointed in the cache at epoch boundaries (key: the config, the batch size and the code version); a
cancelled or killed run resumes from its last checkpoint, and the finished result replaces the checkpoints.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch

from backend.cache import CODE_VERSION, ResultCache
from backend.engine import mlp as engine
from backend.engine.loop import RunSpec
from backend.engine.replica_branch import BranchTask
from backend.engine.runner import pack_checkpoint, unpack_checkpoint
from backend.curves import curves_result
from backend.errors import ConfigError
from backend.fields import curve_keys
from backend.progress import Progress
from backend.quantities import EPOCH_QUANTITIES, Quantity
from backend.settings.base import cache_key, json_list, simulation_key
from backend.stats import RESOLVED_Z, mean_with_se, median_with_se, nan_reduce, t_quantile

SAMPLER_LABELS = {"epoch_reshuffle": "reshuffle each epoch (the paper's training), n // b steps per epoch",
                  "without_replacement": "uniform b-subsets without replacement, independent per step"}


THEORY_ONLY_DROPS: tuple[str, ...] = ()
def classifier_quantities(with_gap: bool) -> list[Quantity]:
    """The per-epoch quantities (backend/quantities.py: EPOCH_QUANTITIES; no exact theory for a nonlinear network),
    each reported with ``_se``; the generalization gap only where there is a distorted validation set."""
    return [q for q in EPOCH_QUANTITIES if with_gap or q.name != "gap_distorted"]


ADVISOR_QUANTITIES = {"loss": "loss_train", "var_full_grad": "noise_spread", "var_g": "var_g"}


def advisor_steps(config, b: int, x: np.ndarray) -> np.ndarray:
    """SGD steps behind the x-axis values of a result (x is the epoch: ⌊n / b⌋ steps each)."""
    return np.asarray(x) * (config.n_train // b)


def no_theory(config, cache: ResultCache | None = None) -> dict[str, Any]:
    return {"t": np.arange(config.epochs + 1), "batch_sizes": list(config.batch_sizes), "curves": None,
            "available": False, "note": "no exact theory for a nonlinear network: replica estimates only"}


def no_polynomial(config, t: int, quantity: str = "var_g", exact: bool | None = None) -> dict[str, Any]:
    raise ConfigError("setting", "no exact polynomial for a nonlinear network")


def cached_classifier(config, device: torch.device, cache: ResultCache) -> dict[str, Any] | None:
    """The cached result of ``simulate(config)`` on ``device`` if there is one (never computes)."""
    found = cache.get(simulation_key(config, device))
    return None if found is None else shape_result(config, *found, hit=True)


def simulate_classifier(config, device: torch.device, cache: ResultCache, progress: Progress, cancel,
                        task_for_b, lr_for_b, gap_every: int, extra_meta: dict) -> tuple[dict, dict, bool]:
    """Run every batch size of a replica classifier (MLP or sequence model) through engine.run_batch_size, resuming
    each from its last checkpoint in the cache; returns (meta, arrays, cache hit). ``task_for_b(b)`` builds the Task,
    ``lr_for_b(b)`` the learning-rate function of the step."""
    kind = config.setting
    key = simulation_key(config, device)

    def compute():
        t0 = time.monotonic()
        advance = progress.advance
        arrays, meta_b = {}, []
        for b in config.batch_sizes:
            resume = checkpoints.resume(b)
            if resume is not None:
                advance(config.inits * config.replicas * (config.n_train // b) * (resume["epoch"] + 1))
            task = task_for_b(b)
            spec = RunSpec.for_epochs(task.Xtr.shape[0], config.epochs, b, K=config.inits, R=config.replicas,
                                      lr=lr_for_b(b), sampler=config.sampler, seed=config.seed, device=device,
                                      noise_samples=config.noise_samples, precision=config.precision,
                                      progress=advance, cancel=cancel, checkpoint=checkpoints.saver(b), resume=resume)
            out = engine.run_batch_size(task, spec, gap_every, config.eval_size)
            for name, v in out["stats"].items():
                arrays[f"{b}.{name}"] = v
            meta_b.append({"b": b, "diverged_at": out["diverged_at"], "diverged_replicas": out["diverged_replicas"],
                           "steps_per_epoch": out["steps_per_epoch"], "resumed_from_epoch":
                           None if resume is None else int(resume["epoch"]) + 1})
        meta = {"kind": f"simulate_{kind}", "device": str(device), "per_b": meta_b, "sampler": config.sampler,
                "sampler_label": SAMPLER_LABELS[config.sampler], "seconds": time.monotonic() - t0,
                "code_version": CODE_VERSION, **extra_meta}
        return meta, arrays

    checkpoints = Checkpoints(config, device, cache)
    progress.total = sum(config.inits * config.replicas * (config.n_train // b) * config.epochs
                         for b in config.batch_sizes)
    meta, arrays, hit = cache.get_or_compute(key, compute)
    checkpoints.clear(config.batch_sizes)
    progress.finish()
    return meta, arrays, hit


def checkpoint_key(config, device: torch.device, b: int | str) -> str:
    return cache_key(f"checkpoint_{config.setting}", config, {"device": device.type, "b": b})


class Checkpoints:
    """A resumable run's checkpoints in the cache, one per curve (a batch size, or "schedule"), keyed by the run's
    config and device (so another config's or code version's state is never resumed): each curve saves its state as
    it goes and resumes from it; a finished curve's last state stays until the whole result is cached, so a run
    cancelled or killed in a later curve loses no finished one. Every engine's state goes through
    runner.pack_checkpoint / unpack_checkpoint."""

    def __init__(self, config, device: torch.device, cache: ResultCache) -> None:
        self.config, self.device, self.cache = config, device, cache

    def resume(self, curve: int | str) -> dict | None:
        found = self.cache.get(checkpoint_key(self.config, self.device, curve))
        return None if found is None else unpack_checkpoint(*found)

    def saver(self, curve: int | str):
        key = checkpoint_key(self.config, self.device, curve)
        return lambda state: self.cache.set(key, *pack_checkpoint(state))

    def clear(self, curves) -> None:
        """Drop the checkpoints once the result they lead to is cached."""
        for curve in curves:
            self.cache.raw().delete(checkpoint_key(self.config, self.device, curve))


def shape_result(config, meta: dict, arrays: dict, hit: bool, x_name: str = "epoch", x: np.ndarray | None = None,
                 names: tuple[str, ...] | None = None) -> dict[str, Any]:
    """The run as the one result shape (backend/curves.py) over epochs; per estimated quantity q (engine.ESTIMATED),
    arrays (B, epochs + 1):
    - value: each quantity's ``summary`` over initial weights (backend/quantities.py): the median for the variances
      and B_simple (the paper's), the mean for losses, errors and the gap;
    - se: its standard error given the inits (replica noise only): the SE of the median init's estimate (the two
      middle ones averaged for an even count) or sqrt(Σ_k se_k²)/K for the mean;
    - min, max over inits; lo, hi the band: min–max over inits (K > 1) or the 95 % t-interval of the replica
      estimate (K = 1) — ``band`` says which, ``band_is_interval`` whether it is the interval;
    - per_init, per_init_se: (B, epochs + 1, K), the per-init estimates and their SEs.
    B_simple is null (NaN) for an init where it is not resolved (b_simple_resolved), and its summary wherever one
    init's is not (``resolved`` (B, epochs + 1) says where it is). ``per_init`` at the top level keeps every per-init
    array the engine recorded, per b."""
    t95 = t_quantile(0.95, max(config.replicas - 1, 1))
    keys = curve_keys(config)  # the batch sizes, or "schedule" (a step-based setting's batch_schedule)
    raw = {b: {k.split(".", 1)[1]: v for k, v in arrays.items() if k.startswith(f"{b}.")} for b in keys}
    curves: dict[str, dict[str, np.ndarray]] = {}
    median = {q.name for q in EPOCH_QUANTITIES if q.summary == "median"}
    for q in names or engine.ESTIMATED:  # names: another engine's quantities (x over x_name, default epochs)
        rows = []
        for b in keys:
            v, se = raw[b][q], raw[b][f"{q}_se"]
            resolved = b_simple_resolved(raw[b]) if q == "b_simple" else None
            if resolved is not None:  # not resolved: null, never a negative or unbounded ratio
                v, se = np.where(resolved, v, np.nan), np.where(resolved, se, np.nan)
            value, value_se = (median_with_se if q in median else mean_with_se)(v, se)
            if resolved is not None:
                value, value_se = (np.where(resolved.all(axis=1), x, np.nan) for x in (value, value_se))
            row = {"value": value, "se": value_se, "min": nan_reduce(np.nanmin, v), "max": nan_reduce(np.nanmax, v),
                   "per_init": v, "per_init_se": se}
            if resolved is not None:
                row["resolved"] = resolved.all(axis=1)
            if config.inits > 1:  # the paper's band: the spread over initial weights
                row["lo"], row["hi"] = row["min"], row["max"]
            else:  # one initial weight: the 95 % interval of the replica estimate
                row["lo"], row["hi"] = value - t95 * value_se, value + t95 * value_se
            rows.append(row)
        curves[q] = {stat: np.stack([r[stat] for r in rows]) for stat in rows[0]}
    finite = np.stack([np.nansum(raw[b]["finite"], axis=1) for b in keys])
    meta = {**meta, "diverged_at": [row["diverged_at"] for row in meta["per_b"]],
            "diverged_replicas": [row["diverged_replicas"] for row in meta["per_b"]]}
    band = ("min–max over initial weights" if config.inits > 1 else
            f"95 % interval from the {config.replicas} replicas (one initial weight)")
    return curves_result(x_name, np.arange(config.epochs + 1) if x is None else x, keys, curves,
                         finite, meta, hit, band=band, band_is_interval=config.inits == 1, per_init=raw)


def b_simple_resolved(raw: dict[str, np.ndarray]) -> np.ndarray:
    """(epochs + 1, K): B_simple = tr Σ̂ / ‖G‖²^ is resolved where the debiased ‖∇L‖² lies more than RESOLVED_Z of its
    SEs (replicas and the subsample's error: stats.subsample_noise) above zero. Elsewhere it is below its own noise:
    the ratio is unbounded or negative, and reported as null."""
    with np.errstate(invalid="ignore"):
        return np.nan_to_num(raw["grad_sq"] - RESOLVED_Z * raw["grad_sq_se"], nan=-1.0) > 0


def b_simple_note(config, sim: dict[str, Any]) -> str | None:
    """The note where B_simple is not resolved (None where it is everywhere)."""
    c = sim["curves"]["b_simple"]
    where = [(b, int(sim["x"][e])) for j, b in enumerate(sim["batch_sizes"])
             for e in np.flatnonzero(~c["resolved"][j])]
    if not where:
        return None
    m = min(config.noise_samples, config.n_train)
    shown = ", ".join(f"({b}, {e})" for b, e in where[:8]) + (" …" if len(where) > 8 else "")
    return (f"B_simple is not resolved at (b, {sim.get('x_name', 'epoch')}) = {shown}: there ‖∇L‖², debiased on the fixed "
            f"subsample of {m} training points, is within {RESOLVED_Z:g} standard errors of zero (below its own noise), "
            "so tr Σ / ‖∇L‖² is unbounded or negative; it is reported as null. Raise noise_samples (now "
            f"{config.noise_samples}; the training set has {config.n_train} points) to resolve it.")


def variance_split(sim: dict[str, Any]) -> dict[str, np.ndarray]:
    """The split of docs/theory.md §3 per (b, epoch): ``difference`` = total var(g) − one-step noise (the spread term
    the law of total variance implies) with ``difference_se`` = √(SE_total² + SE_one-step²) (their errors are taken
    as independent), and ``resolved``: the difference lies more than RESOLVED_Z SEs above zero."""
    c = sim["curves"]
    diff = c["var_g"]["value"] - c["noise_one_step"]["value"]
    se = np.hypot(c["var_g"]["se"], c["noise_one_step"]["se"])
    return {"difference": diff, "difference_se": se,
            "resolved": np.nan_to_num(diff - RESOLVED_Z * se, nan=-1.0) > 0}


def split_note(sim: dict[str, Any]) -> str | None:
    """The note where the spread term is not resolved at the last epoch (total − one-step within RESOLVED_Z SEs of
    zero, or below it), None where it is for every b."""
    s = variance_split(sim)
    last = s["difference"].shape[1] - 1
    d, se = s["difference"][:, last], s["difference_se"][:, last]
    bad = [f"b = {b}: total − one-step = {d[j]:.3g} ± {se[j]:.2g}"
           + (" (below zero by more than its SEs allow)" if d[j] < -RESOLVED_Z * se[j] else "")
           for j, b in enumerate(sim["batch_sizes"]) if not s["resolved"][j, last]]
    if not bad:
        return None
    return (f"The spread term is not resolved at {sim.get('x_name', 'epoch')} {int(sim['x'][last])} ({'; '.join(bad)}; ± one "
            f"SE): the total variance does not exceed the one-step noise by more than {RESOLVED_Z:g} standard errors "
            "of their difference, so the replicas cannot tell the spread of ∇L from zero there (more replicas, or a larger "
            "noise subsample, shrink the SEs).")


def cached_checkpoint_epoch(config, device: torch.device, cache: ResultCache) -> dict[int, int]:
    """The last checkpointed epoch per batch size (what a Run would resume from)."""
    out = {}
    for b in config.batch_sizes:
        found = cache.get(checkpoint_key(config, device, b))
        if found is not None:
            out[b] = int(found[0]["epoch"]) + 1
    return out


def b_ordering_share(result: dict[str, Any], quantity: str = "var_g") -> float:
    """Share of epochs (after epoch 0) at which var_g strictly decreases with b across all batch sizes."""
    vals = result["curves"][quantity]["value"][:, 1:]
    return float(np.mean(np.all(np.diff(vals, axis=0) < 0, axis=0)))


def no_check(config, cache: ResultCache | None = None) -> dict[str, Any]:
    raise ConfigError("setting", f"no exact theory for a nonlinear network: the setting {config.setting!r} has no "
                                 "Theorems 1-2 check; use 'simulate'")


def classifier_document(config, res: dict[str, Any], names) -> dict[str, Any]:
    """The ``simulate`` document of a replica classifier: per b each quantity in ``names`` over epochs with its SE,
    var_g_min / var_g_max (the spread over initial weights), and with several initial weights q_per_init and
    q_per_init_se (one list over epochs per init); b_simple_resolved (b_simple_resolved: null B_simple where False),
    the split's total_minus_one_step with its _se and spread_resolved (variance_split); the band, the sampler, the
    device, the first divergence per b, and the notes of the page (b_simple_note, split_note)."""
    meta = res["meta"]
    split = variance_split(res)
    per_init = config.inits > 1
    curves: dict[str, Any] = {}
    for j, b in enumerate(curve_keys(config)):
        entry: dict[str, Any] = {}
        for f in names:
            c = res["curves"][f]
            entry[f] = json_list(c["value"][j])
            entry[f"{f}_se"] = json_list(c["se"][j])
            if per_init:
                for suffix in ("per_init", "per_init_se"):
                    entry[f"{f}_{suffix}"] = [json_list(col) for col in np.asarray(c[suffix][j]).T]
        var_g = res["curves"]["var_g"]
        entry["var_g_min"], entry["var_g_max"] = json_list(var_g["min"][j]), json_list(var_g["max"][j])
        entry["b_simple_resolved"] = [bool(v) for v in res["curves"]["b_simple"]["resolved"][j]]
        entry["total_minus_one_step"] = json_list(split["difference"][j])
        entry["total_minus_one_step_se"] = json_list(split["difference_se"][j])
        entry["spread_resolved"] = [bool(v) for v in split["resolved"][j]]
        curves[str(b)] = entry
    return {res["x_name"]: res["x"].tolist(), "curves": curves, "inits": config.inits, "replicas": config.replicas,
            "band": res["band"], "sampler": meta["sampler_label"], "device": meta["device"],
            "diverged_at": {str(x["b"]): x["diverged_at"] for x in meta["per_b"]},
            "notes": [note for note in (b_simple_note(config, res), split_note(res)) if note]}


def branch_task(config, task, lanes: int, bs) -> tuple[BranchTask, float, int]:
    """What a replica classifier's cbs branches run on (backend/settings/replica_cbs.py: functional_branches): the
    task's replicas in chunks for ``lanes`` stacked lanes at the largest branch batch, init 0's weights, L the training
    loss on the first eval_size points; returns (BranchTask, L(w_0), n)."""
    rep = engine.Replicas(task.forward, engine.replica_chunk(task, lanes, int(max(bs))))
    w0 = {k: v[0] for k, v in task.init(1).items()}
    Xev, Yev = task.Xtr[:config.eval_size], task.Ytr[:config.eval_size]

    def evaluate(params):
        return engine.evaluate(rep, params, Xev, Yev, act_per_sample=task.act_per_sample)[0]

    loss0 = float(evaluate({k: v[None] for k, v in w0.items()})[0])
    return (BranchTask(rep, task.Xtr, task.Ytr, Xev, Yev, w0, config.sampler, evaluate, config.precision), loss0,
            int(task.Xtr.shape[0]))

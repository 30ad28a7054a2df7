"""Your own model (docs/theory.md §10): any PyTorch model and data from a Python file in an allowed folder
(backend/allowed.py), from fresh initial weights or a trained checkpoint, trained as K inits × R replicas with the
``optimizer`` field (backend/optim.py); the MLP's per-init statistics at the steps t = 0, k, 2k, …, T. A Setting
(backend/settings/base.py); the engine is backend/engine/torch_model.py, the result shape the classifiers'."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch

from backend import allowed
from backend.cache import CODE_VERSION, ResultCache
from backend.costs import GpuModel, combine_costs
from backend.engine import torch_model as engine
from backend.engine.loop import RunSpec
from backend.engine.replica_branch import BranchTask
from backend.engine.replicas import Replicas
from backend.errors import ConfigError
from backend.fields import (MAX_STEPS, SAMPLER_LABELS, SAMPLERS, BatchSchedule, Fields, Schedule, config_fields,
                            curve_keys, read_choice, read_int, read_step_batches, replace_fields, replica_run_fields)
from backend.optim import OptimizerSpec
from backend.progress import Progress
from backend.settings import replica_cbs
from backend.settings.base import Quantity, scaled_lr, simulation_key, step_advisor_steps
from backend.settings.classifier import (Checkpoints, classifier_document, classifier_quantities, no_check,
                                         no_polynomial, shape_result)
from backend.settings.classifier import ADVISOR_QUANTITIES  # noqa: F401  (the advisor's protocol)
from backend.settings.classifier import THEORY_ONLY_DROPS  # noqa: F401  (part of the Setting protocol)

DEFAULT_FILE = "examples/models/mlp_digits.py"
PRESETS: dict[str, dict[str, Any]] = {
    "laptop": {},  # the defaults: the paper's MLP on the 8×8 digits, 2 × 8 replicas, 100 steps
}


@dataclass(frozen=True)
class TorchModelConfig:
    """A PyTorch model and data from a model file, trained by SGD / momentum / Adam(W) as K inits × R replicas."""

    setting: ClassVar[str] = "torch_model"
    DEFAULTS: ClassVar[dict[str, Any]] = {
        "model": {"file": DEFAULT_FILE}, "batch_sizes": [16, 64], "replicas": 8, "inits": 2, "steps": 100,
        "record_every": 20, "lr": {"schedule": "constant", "c": "0.05"}, "optimizer": {"name": "sgd"},
        "seed": 0, "sampler": "without_replacement", "dtype": "float32", "precision": "float32",
        "noise_samples": 512, "device": "auto"}
    model: dict
    batch_sizes: tuple[int, ...]
    replicas: int
    inits: int
    steps: int
    record_every: int
    lr: Schedule
    optimizer: OptimizerSpec
    seed: int
    sampler: str
    dtype: str
    precision: str
    noise_samples: int
    device: str
    batch_schedule: BatchSchedule | None = None  # b_i for steps_i steps (docs/theory.md §12); None: out of to_json
    n_train: int = field(default=0, repr=False, compare=False)
    sizes: dict = field(default_factory=dict, repr=False, compare=False)  # n_params, n_val, act_per_sample, classes

    @classmethod
    def parse(cls, raw: dict) -> "TorchModelConfig":
        f, val = config_fields(raw, cls.DEFAULTS)
        model, mf = _read_model(val("model"))
        batch_sizes, batch_schedule, steps = read_step_batches(f, val, mf.n_train, cls.DEFAULTS["batch_sizes"])
        replicas = read_int(val("replicas"), "replicas", 2, 10_000)
        inits = read_int(val("inits"), "inits", 1, 50)
        steps = read_int(steps, "steps", 1, MAX_STEPS)
        record_every = read_int(val("record_every"), "record_every", 1, steps)
        lr = Schedule.parse(val("lr"), defaults=cls.DEFAULTS["lr"])
        optimizer = OptimizerSpec.parse(val("optimizer"))
        sampler = read_choice(val("sampler"), "sampler", SAMPLERS)
        common = replica_run_fields(lambda k: val(k) if k != "eval_size" else 2)
        common.pop("eval_size")
        f.finish()
        sizes = {"n_params": mf.n_params, "n_train": mf.n_train, "n_val": mf.n_val,
                 "act_per_sample": mf.act_per_sample, "flops_per_sample": mf.flops_per_sample, "classes": mf.classes}
        return cls(model, batch_sizes, replicas, inits, steps, record_every, lr, optimizer, sampler=sampler,
                   batch_schedule=batch_schedule, n_train=mf.n_train, sizes=sizes, **common)

    def to_json(self) -> dict:
        return {"setting": self.setting, "model": self.model,
                **({"batch_sizes": list(self.batch_sizes)} if self.batch_schedule is None
                   else {"batch_schedule": self.batch_schedule.to_json()}),
                "replicas": self.replicas, "inits": self.inits, "steps": self.steps,
                "record_every": self.record_every, "lr": self.lr.to_json(), "optimizer": self.optimizer.to_json(),
                "seed": self.seed, "sampler": self.sampler, "dtype": self.dtype, "precision": self.precision,
                "noise_samples": self.noise_samples, "device": self.device}

    replace = replace_fields  # a new validated config with some JSON fields changed


def _read_model(raw: Any) -> tuple[dict, engine.ModelFile]:
    """``{"file": PATH}`` (and, as to_json writes them, the file's and its data's sha256): the file confined to
    the allowed folders, loaded and checked; hashes given that differ from the file's now are refused (an edited
    file never passes for the one a saved config ran)."""
    fm = Fields({"file": raw} if isinstance(raw, str) else raw, "model")
    path = allowed.model_file(fm.get("file"))
    mf = engine.load(path)
    for key, now in (("sha256", mf.sha256), ("data_sha256", mf.data_sha256)):
        given = fm.get(key)
        if given is not None and given != now:
            raise ConfigError(f"model.{key}", f"{path.name} (or its data) changed since this config was written: "
                                              f"{str(given)[:12]}… ≠ {now[:12]}… now; leave the hash out to run the "
                                              "file as it is")
    fm.finish()
    try:
        shown = str(path.relative_to(allowed.ROOT))
    except ValueError:
        shown = str(path)
    return {"file": shown, "sha256": mf.sha256, "data_sha256": mf.data_sha256}, mf


NAME = "torch_model"
ORDER = 5  # position in the registry and the app's navigation
ICON = ":material/upload_file:"
TITLE = "Your model"
CARD = ("Any PyTorch model and data from a model file (fresh weights or a checkpoint): variance, loss, the variance "
        "split and B_simple against the step")
CONFIG = TorchModelConfig
polynomial = no_polynomial
check = no_check
RESUMABLE = True  # checkpointed in the cache as it runs (classifier.Checkpoints): a cancelled run resumes
# GPU time (backend/costs.py): not calibrated on a card yet — the MLP's figures for the arithmetic (vmapped
# functional_call of small modules reaches a small share of the matmul rate) and a vmapped call's launches per step
GPU_MODEL = GpuModel(efficiency={"float32": 0.05}, step_seconds=2e-3, fixed_seconds=5.0)


def quantities(config: TorchModelConfig) -> list[Quantity]:
    """The classifiers' table over the step t: error_* only for class targets, loss_val only with a validation set."""
    keep = set(engine.ESTIMATED) - ({"error_train", "error_val"} if not config.sizes["classes"] else set())
    if not config.sizes["n_val"]:
        keep -= {"loss_val", "error_val"}
    return [q.over("t") for q in classifier_quantities(with_gap=False) if q.name in keep]


def theory(config: TorchModelConfig, cache: ResultCache | None = None) -> dict[str, Any]:
    return {"t": engine.record_steps(config.steps, config.record_every), "batch_sizes": list(config.batch_sizes),
            "curves": None, "available": False, "note": "no exact theory for a user's model: replica estimates only"}


def simulate_document(config: TorchModelConfig, res: dict[str, Any]) -> dict[str, Any]:
    """The CLI's ``simulate`` document: the classifiers' shape with ``t`` as its x key (backend/report.py)."""
    doc = classifier_document(config, res, [q.name for q in quantities(config)])
    return {**doc, "model": config.model, **({} if config.batch_schedule is None
                                             else {"batch_schedule": config.batch_schedule.to_json()})}


def advise_cell(config: TorchModelConfig, b: int, budget: int, lr_factor: float) -> TorchModelConfig:
    """The advisor's run for b: ⌊budget / b⌋ steps (record_every at most that), the schedule's c × lr_factor."""
    steps = budget // b
    return config.replace(batch_sizes=[b], steps=steps, record_every=min(config.record_every, max(1, steps)),
                          lr=scaled_lr(config, lr_factor))


advisor_steps = step_advisor_steps


def _dtype(config: TorchModelConfig) -> torch.dtype:
    return torch.float32 if config.dtype == "float32" else torch.float64


def estimate(config: TorchModelConfig) -> dict[str, float]:
    bytes_per = 4 if config.dtype == "float32" else 8
    runs = ([(b, config.steps) for b in config.batch_sizes] if config.batch_schedule is None
            else config.batch_schedule.segments)  # a schedule's segments run one after another: their costs add
    return combine_costs([engine.estimate_cost(config.sizes, config.inits, config.replicas, steps,
                                               min(config.record_every, steps), b, config.noise_samples, bytes_per)
                          for b, steps in runs])


def replica_runs(config: TorchModelConfig) -> list:
    """(curve key, what run_batch_size takes as b) of each run: the batch sizes, or "schedule" and its segments."""
    if config.batch_schedule is None:
        return [(b, b) for b in config.batch_sizes]
    return [(key, list(config.batch_schedule.segments)) for key in curve_keys(config)]


def cached_simulation(config: TorchModelConfig, device: torch.device, cache: ResultCache) -> dict[str, Any] | None:
    found = cache.get(simulation_key(config, device))
    return None if found is None else _shape(config, *found, hit=True)


def _shape(config: TorchModelConfig, meta: dict, arrays: dict, hit: bool) -> dict[str, Any]:
    names = tuple(q.name for q in quantities(config))
    return shape_result(config, meta, arrays, hit, "t", engine.record_steps(config.steps, config.record_every),
                        names)


def simulate(config: TorchModelConfig, device: torch.device, cache: ResultCache, progress: Progress,
             cancel: threading.Event | None = None) -> dict[str, Any]:
    """Every batch size (or the schedule) one after another, each checkpointed in the cache as it goes
    (classifier.Checkpoints): a cancelled or killed run resumes where its curves stopped, bitwise the same result;
    the result is cached once all finish. A failing model file raises a ConfigError naming it and its function."""
    checkpoints = Checkpoints(config, device, cache)

    def compute():
        t0 = time.monotonic()
        mf = engine.load(allowed.model_file(config.model["file"]))
        if (mf.sha256, mf.data_sha256) != (config.model["sha256"], config.model["data_sha256"]):
            raise ConfigError("model.file", f"{mf.path.name} (or its data) changed since the config was read: "
                                            "read it again")
        engine.check_inits(mf, config.inits)  # a failing init refused before any step (and any checkpoint)
        pr = engine.prepare(mf, _dtype(config), device)
        arrays, per_b = {}, []
        for key, b in replica_runs(config):
            resume = checkpoints.resume(key)
            if resume is not None:
                progress.advance(config.inits * config.replicas * int(resume["step"]))
            spec = RunSpec.for_steps(mf.n_train, config.steps, config.record_every, b, K=config.inits,
                                     R=config.replicas, lr=lambda t: float(config.lr.alpha(t)), sampler=config.sampler,
                                     seed=config.seed, device=device, noise_samples=config.noise_samples,
                                     precision=config.precision, progress=progress.advance, cancel=cancel,
                                     checkpoint=checkpoints.saver(key), resume=resume)
            out = engine.run_batch_size(pr, spec, config.optimizer.build())
            try:  # on the whole training set (check_inits saw its first points): the run's checkpoints go too
                _refuse_nonfinite_start(mf, out["stats"], key)
            except ConfigError:
                checkpoints.clear(k for k, _ in replica_runs(config))
                raise
            arrays.update({f"{key}.{name}": v for name, v in out["stats"].items()})
            per_b.append({"b": key, "diverged_at": out["diverged_at"], "diverged_replicas": out["diverged_replicas"],
                          "resumed_from_step": None if resume is None else int(resume["step"])})
        meta = {"kind": f"simulate_{config.setting}", "device": str(device), "per_b": per_b,
                "sampler": config.sampler, "sampler_label": SAMPLER_LABELS[config.sampler],
                "seconds": time.monotonic() - t0, "code_version": CODE_VERSION, "n_train": mf.n_train,
                "n_val": mf.n_val, "classes": mf.classes, "n_params": mf.n_params, "checkpoint": mf.checkpoint
                is not None}
        return meta, arrays

    progress.total = len(replica_runs(config)) * config.inits * config.replicas * config.steps
    meta, arrays, hit = cache.get_or_compute(simulation_key(config, device), compute)
    checkpoints.clear(key for key, _ in replica_runs(config))
    progress.finish()
    return _shape(config, meta, arrays, hit)


def _refuse_nonfinite_start(mf: engine.ModelFile, stats: dict[str, np.ndarray], b: int) -> None:
    """A non-finite training loss at w_0 of some init (model(k) for k > 0 is first called in the run)."""
    bad = np.flatnonzero(~np.isfinite(stats["loss_train"][0]))
    if bad.size:
        raise engine.fail(mf.path, f"model({int(bad[0])})", "the loss at w_0 is not finite on the training data")


# -- the critical batch size's replica branches (backend/cbs.py, backend/settings/replica_cbs.py; §11) --------------

def branch_bounds(config: TorchModelConfig) -> dict[str, Any]:
    """What ``cbs`` may ask: checkpoints up to the config's steps; a batch is at most the n training samples (the
    default k's: powers of two while k·B ≤ n). The reference run is at the constant batch B: a batch_schedule is
    refused in one line."""
    if getattr(config, "batch_schedule", None) is not None:
        raise ConfigError("batch_schedule", "the critical batch size's reference run is at the constant batch B; "
                                            "give batch_sizes instead of a batch_schedule")
    return {"max_t": config.steps, "n": config.n_train, "max_b": config.n_train}


def replica_branches(config: TorchModelConfig, b_ref: int, checkpoints: list[int], bs, factors, steps,
                     device: torch.device, cache: ResultCache, progress: Progress | None = None
                     ) -> dict[str, Any]:
    """Replica branches of the file's model (backend/settings/replica_cbs.py: functional_branches): init 0's
    ``replicas`` replicas (model(0), or the checkpoint), the config's sampler and optimizer; L is the file's loss on
    the whole training set. b_noise needs the model's second derivatives under torch.func (else null, with a note)."""
    lanes = np.asarray(factors).shape[0] * len(checkpoints) * config.replicas

    def make_task(dev: torch.device):
        mf = engine.load(allowed.model_file(config.model["file"]))
        if (mf.sha256, mf.data_sha256) != (config.model["sha256"], config.model["data_sha256"]):
            raise ConfigError("model.file", f"{mf.path.name} (or its data) changed since the config was read: "
                                            "read it again")
        pr = engine.prepare(mf, _dtype(config), dev)
        rep = Replicas(pr.forward, engine.replica_block(mf.act_per_sample, lanes, int(max(bs))), mf.loss)
        w0 = {k: v[0] for k, v in engine.init_params(mf, 1, pr.dtype, dev).items()}

        def evaluate(params):
            return engine.evaluate(rep, pr, params, pr.Xtr, pr.Ytr)[0]

        loss0 = float(evaluate({k: v[None] for k, v in w0.items()})[0])
        return (BranchTask(rep, pr.Xtr, pr.Ytr, pr.Xtr, pr.Ytr, w0, config.sampler, evaluate, config.precision), loss0,
                mf.n_train)

    return replica_cbs.functional_branches(config, "cbs_replicas_torch_model", b_ref, checkpoints, bs, factors,
                                           steps, device, cache, make_task, progress)


BRANCH_RATE = 2e9  # FLOP/s of a file's modules vmapped over many replicas on 2 CPU cores (the CNN example: its
# forward over 72 replicas × 1438 images and its gradients ran at ≈ 1·10⁹ on a loaded box, 1.5-2·10⁹ quieter)


def branch_estimate(config: TorchModelConfig, b_ref: int, checkpoints: list[int], bs, factors, steps
                    ) -> dict[str, float]:
    """The cost of ``replica_branches`` (backend/settings/replica_cbs.py: functional_estimate, with the FLOPs per
    sample counted on the file's model)."""
    sz = config.sizes
    spec = config.optimizer
    state = spec.state_tensors
    return replica_cbs.functional_estimate(sz["n_params"], sz["flops_per_sample"], sz["act_per_sample"],
                                           sz["n_train"], config.replicas, checkpoints, np.asarray(factors).shape[0],
                                           b_ref, bs, steps, config.noise_samples, sz["n_train"],
                                           4 if config.dtype == "float32" else 8, state, BRANCH_RATE, 1.0)

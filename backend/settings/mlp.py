"""The MLP classifier (paper §4.1, Appendix A.1.3; Figures 1, 4, 5): K initial weights × R replicas trained by
mini-batch SGD, per-epoch variance, losses, errors, the distorted-set gap and the variance split (docs/theory.md §3).
A Setting (backend/settings/base.py); the run itself is backend/settings/classifier.py's."""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, ClassVar

import numpy as np
import torch

from backend.cache import ResultCache
from backend.fields import (MLP_SAMPLERS, Fields, Schedule, config_fields, read_batch_sizes, read_choice, read_int,
                            read_positive, read_source, refuse_batch_schedule, replace_fields, replica_run_fields)
from backend.costs import GpuModel, combine_costs
from backend.engine import mlp as engine
from backend.errors import ConfigError
from backend.images import DataShape, data_shape, elastic_distort, load_dataset
from backend.images import missing_data as missing_data_for
from backend.optim import OptimizerSpec
from backend.progress import Progress
from backend.settings import replica_cbs
from backend.settings.base import Quantity, run_device_type, scaled_lr
from backend.settings.classifier import (branch_task, cached_classifier, classifier_document, classifier_quantities,
                                         no_check, no_polynomial, no_theory, shape_result, simulate_classifier)
from backend.settings.classifier import ADVISOR_QUANTITIES, advisor_steps  # noqa: F401  (the advisor's protocol)
from backend.settings.classifier import THEORY_ONLY_DROPS  # noqa: F401  (part of the Setting protocol)

PRESETS: dict[str, dict[str, Any]] = {
    "laptop": {},  # the defaults (MLPConfig.DEFAULTS): digits, 64 → 32 → 16 → 10, 3 × 16 replicas, 12 epochs
    "paper": {"dataset": {"name": "fashion_mnist"}, "hidden": [1024, 512], "inits": 5, "replicas": 50,
              "epochs": 1000, "lr": {"schedule": "constant", "c": "0.003"}, "batch_sizes": [64, 128],
              "distortion": {"alpha": 8, "sigma": 2, "every": 100}, "noise_samples": 256, "eval_size": 10000},
}


@dataclass(frozen=True)
class MLPConfig:
    """Fully connected ReLU classifier trained by mini-batch SGD (paper §4.1, Appendix A.1.3; Figures 1, 4, 5)."""

    setting: ClassVar[str] = "mlp"
    DEFAULTS: ClassVar[dict[str, Any]] = {"dataset": {"name": "digits"}, "hidden": [32, 16], "inits": 3, "replicas": 16, "epochs": 12,
        "lr": {"schedule": "constant", "c": "0.05"}, "batch_sizes": [16, 64], "sampler": "epoch_reshuffle",
        "distortion": {"alpha": 1.5, "sigma": 1.0, "every": 1}, "noise_samples": 512, "eval_size": 2000,
        "seed": 0, "device": "auto", "dtype": "float32", "precision": "float32"}
    dataset: dict
    hidden: tuple[int, ...]
    inits: int
    replicas: int
    epochs: int
    lr: Schedule
    batch_sizes: tuple[int, ...]
    sampler: str
    distortion: dict
    noise_samples: int
    eval_size: int
    seed: int
    device: str
    dtype: str
    precision: str
    # torch.optim.SGD (momentum, Nesterov, weight decay), Adam or AdamW (backend/optim.py); plain SGD when left out
    optimizer: OptimizerSpec = OptimizerSpec()
    n_train: int = field(default=0, repr=False, compare=False)

    @classmethod
    def parse(cls, raw: dict) -> "MLPConfig":
        f, val = config_fields(raw, cls.DEFAULTS)
        fd, dataset = read_source(val("dataset"), "dataset", ("digits", "fashion_mnist", "idx"), "digits", "idx",
                                  "the directory holding the IDX files is required for 'idx'")
        for key in ("train_size", "val_size"):
            if fd.get(key) is not None:
                dataset[key] = read_int(fd.raw[key], f"dataset.{key}", 2, 10**7)
        fd.finish()
        hidden_raw = val("hidden")
        if not isinstance(hidden_raw, list) or not 1 <= len(hidden_raw) <= 4:
            raise ConfigError("hidden", "expected a list of 1 to 4 hidden widths")
        hidden = tuple(read_int(h, f"hidden[{i}]", 1, 4096) for i, h in enumerate(hidden_raw))
        inits = read_int(val("inits"), "inits", 1, 50)
        replicas = read_int(val("replicas"), "replicas", 2, 10_000)
        epochs = read_int(val("epochs"), "epochs", 1, 100_000)
        lr = Schedule.parse(val("lr"), defaults=cls.DEFAULTS["lr"])
        sampler = read_choice(val("sampler"), "sampler", MLP_SAMPLERS)
        dist_raw = val("distortion")
        fdist = Fields(dist_raw, "distortion")
        d0 = cls.DEFAULTS["distortion"]  # a partial object takes the rest from the defaults
        distortion = {"alpha": float(read_positive(fdist.get("alpha", d0["alpha"]), "distortion.alpha", True)),
                      "sigma": float(read_positive(fdist.get("sigma", d0["sigma"]), "distortion.sigma", True)),
                      "every": read_int(fdist.get("every", d0["every"]), "distortion.every", 1, 100_000)}
        fdist.finish()
        common = replica_run_fields(val)
        n_train = _mlp_train_size(dataset)
        batch_sizes = read_batch_sizes(val("batch_sizes"), n_train)
        optimizer = OptimizerSpec.parse(f.get("optimizer"))  # plain SGD: left out of to_json (today's keys)
        refuse_batch_schedule(f, "the MLP")
        f.finish()
        return cls(dataset, hidden, inits, replicas, epochs, lr, batch_sizes, sampler, distortion, n_train=n_train,
                   optimizer=optimizer, **common)

    def to_json(self) -> dict:
        return {"setting": self.setting, "dataset": self.dataset, "hidden": list(self.hidden), "inits": self.inits,
                "replicas": self.replicas, "epochs": self.epochs, "lr": self.lr.to_json(),
                "batch_sizes": list(self.batch_sizes), "sampler": self.sampler, "distortion": self.distortion,
                "noise_samples": self.noise_samples, "eval_size": self.eval_size, "seed": self.seed,
                "device": self.device, "dtype": self.dtype, "precision": self.precision,
                **({} if self.optimizer.plain else {"optimizer": self.optimizer.to_json()})}

    replace = replace_fields  # a new validated config with some JSON fields changed


@lru_cache(maxsize=16)
def _shape_cached(spec: str) -> DataShape:
    return data_shape(json.loads(spec))


def _shape(dataset: dict) -> DataShape:
    """The dataset's sizes (read once per process; Fashion-MNIST's published ones where it is not installed)."""
    return _shape_cached(json.dumps(dataset, sort_keys=True))


def _mlp_train_size(dataset: dict) -> int:
    return _shape(dataset).n_train


NAME = "mlp"
ORDER = 3  # position in the registry and the app's navigation
ICON = ":material/hub:"
TITLE = "MLP classifier"
CARD = ("Digits, Fashion-MNIST or IDX: variance, loss, error, the gap on distorted images, the variance split "
        "(paper §4.1, Figures 1, 4, 5)")  # its card on the Home page
CONFIG = MLPConfig
theory = no_theory
polynomial = no_polynomial
cached_simulation = cached_classifier
check = no_check
RESUMABLE = True  # checkpointed in the cache at every epoch: a cancelled run resumes
# GPU time (backend/costs.py; calibrated on costs.GPU_CALIBRATION_CARD). The paper preset (5 × 50 replicas, b = 64,
# 48 000 training images), 3 epochs in float32, tf32 and bf16, whole run and per epoch (benchmarks/gpu_check.py).
# Training is memory-bound (250 replicas × 1.33 M float32 weights read every step; on CUDA the updates are held 4
# steps, bf16 reads bf16 copies), and each epoch's statistics run in float32/64 whatever the precision; the start-up
# (data, CUDA context, the epoch-0 statistics) is fixed_seconds
GPU_MODEL = GpuModel(efficiency={"float32": 0.73, "tf32": 0.162, "bf16": 0.129}, step_seconds=3e-4, fixed_seconds=9.3)


def quantities(config: MLPConfig) -> list[Quantity]:
    return classifier_quantities(with_gap=True)


def simulate_document(config, res: dict[str, Any]) -> dict[str, Any]:
    """The CLI's ``simulate`` document (backend/report.py): per b each quantity over epochs with its SE."""
    return classifier_document(config, res, [q.name for q in quantities(config)])


def advise_cell(config: MLPConfig, b: int, budget: int, lr_factor: float) -> MLPConfig:
    """The batch-size advisor's run for b: ⌊budget / n⌋ epochs (⌊n/b⌋ steps each), the learning rate × lr_factor."""
    return config.replace(batch_sizes=[b], epochs=max(1, budget // config.n_train), lr=scaled_lr(config, lr_factor))


def optimizer_state(spec: OptimizerSpec) -> int | None:
    """Weight-sized state tensors per replica of the optimizer (momentum 1, Adam(W) 2), None for plain SGD (the
    fused step, engine.mlp.estimate_cost)."""
    return None if spec.plain else spec.state_tensors


def update_path(spec: OptimizerSpec) -> str:
    """Which update the training steps take (the run's meta, the page's caption): plain SGD keeps the fused
    Linear–ReLU step (held low-rank updates on CUDA); any other optimizer takes the gradients of the explicit
    Linear–ReLU backward (engine.linear_relu.batch_grads) and backend/optim.py's step."""
    if spec.plain:
        return ("plain SGD: the fused Linear–ReLU step (w − α g in the gradient's products; on CUDA the wide layers' "
                "updates held as low-rank factors for a few steps)")
    return (f"{spec.name} ({', '.join(f'{k} {v}' for k, v in spec.to_json().items() if k != 'name')}): the gradients "
            "by the explicit Linear–ReLU backward (one batched product per layer), then backend/optim.py's step "
            "(torch.optim's semantics; no held updates)")


def estimate(config: MLPConfig) -> dict[str, float]:
    shape = _shape(config.dataset)
    costs = [engine.estimate_cost(shape.n_train, shape.height * shape.width, config.hidden, shape.n_classes,
                                  config.inits, config.replicas, config.epochs, b, config.eval_size, shape.n_val,
                                  config.noise_samples, run_device_type(config), optimizer_state(config.optimizer))
             for b in config.batch_sizes]
    return combine_costs(costs)


def missing_data(config: MLPConfig) -> str | None:
    """Why this config cannot run here (its dataset is not installed), or None; its estimate stands either way."""
    return missing_data_for(config.dataset)


def simulate(config: MLPConfig, device: torch.device, cache: ResultCache, progress: Progress,
             cancel: threading.Event | None = None) -> dict[str, Any]:
    dtype = torch.float32 if config.dtype == "float32" else torch.float64
    data = load_dataset(config.dataset)
    prepared: dict[str, Any] = {}

    def task_for_b(b: int) -> engine.Task:
        if "distorted" not in prepared:
            prepared["distorted"] = elastic_distort(data.x_val, config.distortion["alpha"],
                                                    config.distortion["sigma"], seed=config.seed)
        return engine.mlp_task(data, config.hidden, config.seed, dtype, device, prepared["distorted"],
                               None if config.optimizer.plain else config.optimizer.build())

    meta, arrays, hit = simulate_classifier(
        config, device, cache, progress, cancel, task_for_b, lambda b: (lambda t: float(config.lr.alpha(t))),
        config.distortion["every"], {"n_train": len(data.x_train), "n_val": len(data.x_val),
                                     "update": update_path(config.optimizer)})
    return shape_result(config, meta, arrays, hit)


# -- the critical batch size's replica branches (backend/cbs.py, backend/settings/replica_cbs.py; §11) --------------

def branch_bounds(config: MLPConfig) -> dict[str, Any]:
    """What ``cbs`` may ask: checkpoints are SGD steps of the reference run, up to its epochs × ⌊n/B⌋ steps; a batch
    is at most the n training images (the default k's: powers of two while k·B ≤ n)."""
    n = config.n_train
    return {"max_t": lambda b_ref: config.epochs * (n // b_ref), "n": n, "max_b": n}


def replica_branches(config: MLPConfig, b_ref: int, checkpoints: list[int], bs, factors, steps,
                     device: torch.device, cache: ResultCache, progress: Progress | None = None
                     ) -> dict[str, Any]:
    """Replica branches of the MLP (backend/settings/replica_cbs.py: functional_branches): init 0's ``replicas``
    replicas through vmap(grad) and backend/optim.py (plain SGD as w − α g), the checkpoints in steps (epoch e ends at
    step e·⌊n/B⌋), the config's sampler; L is the training loss on the first eval_size images (the run's loss_train),
    the noise scales over all n."""
    dtype = torch.float32 if config.dtype == "float32" else torch.float64
    lanes = np.asarray(factors).shape[0] * len(checkpoints) * config.replicas

    def make_task(dev: torch.device):
        task = engine.mlp_task(load_dataset(config.dataset), config.hidden, config.seed, dtype, dev, None)
        return branch_task(config, task, lanes, bs)

    return replica_cbs.functional_branches(config, "cbs_replicas_mlp", b_ref, checkpoints, bs, factors, steps,
                                           device, cache, make_task, progress)


BRANCH_RATE = 1e10  # FLOP/s of the vmapped dense layers on 2 CPU cores (benchmarks/TIMINGS.md)


def branch_estimate(config: MLPConfig, b_ref: int, checkpoints: list[int], bs, factors, steps) -> dict[str, float]:
    """The cost of ``replica_branches`` (backend/settings/replica_cbs.py: functional_estimate; F = 2P, a dense
    network's forward FLOPs per sample)."""
    shape = _shape(config.dataset)
    widths = (shape.height * shape.width, *config.hidden, shape.n_classes)
    P = sum(a * b + b for a, b in zip(widths[:-1], widths[1:]))
    state = optimizer_state(config.optimizer) or 0
    return replica_cbs.functional_estimate(P, 2.0 * P, widths[0] + 2 * sum(config.hidden) + 2 * shape.n_classes,
                                           min(config.eval_size, shape.n_train), config.replicas, checkpoints,
                                           np.asarray(factors).shape[0], b_ref, bs, steps, config.noise_samples,
                                           shape.n_train, 4 if config.dtype == "float32" else 8, state,
                                           BRANCH_RATE, 2.5)

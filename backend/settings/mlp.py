"""The MLP classifier (paper §4.1, Appendix A.1.3; Figures 1, 4, 5): K initial weights × R replicas trained by
mini-batch SGD, per-epoch variance, losses, errors, the distorted-set gap and the variance split (docs/theory.md §3).
A Setting (backend/settings/base.py); the run itself is backend/settings/classifier.py's."""

from __future__ import annotations

import threading
from typing import Any

import torch

from backend.cache import ResultCache
from backend.config import MLP_PRESETS as PRESETS  # noqa: F401  (the setting's presets, as data)
from backend.config import MLPConfig
from backend.costs import combine_costs
from backend.engine import mlp as engine
from backend.images import elastic_distort, load_dataset
from backend.progress import Progress
from backend.settings.base import Quantity
from backend.settings.classifier import (THEORY_ONLY_DROPS, cached_classifier, classifier_quantities,  # noqa: F401
                                         no_polynomial, no_theory, shape_result, simulate_classifier)

NAME = "mlp"
TITLE = "MLP classifier"
CONFIG = MLPConfig
theory = no_theory
polynomial = no_polynomial
cached_simulation = cached_classifier


def quantities(config: MLPConfig) -> list[Quantity]:
    return classifier_quantities(with_gap=True)


def estimate(config: MLPConfig) -> dict[str, float]:
    data = load_dataset(config.dataset)
    h, w = data.shape
    costs = [engine.estimate_cost(len(data.x_train), h * w, config.hidden, data.n_classes, config.inits,
                                  config.replicas, config.epochs, b, config.eval_size, len(data.x_val),
                                  config.noise_samples) for b in config.batch_sizes]
    return combine_costs(costs)


def simulate(config: MLPConfig, device: torch.device, cache: ResultCache, progress: Progress,
             cancel: threading.Event | None = None) -> dict[str, Any]:
    dtype = torch.float32 if config.dtype == "float32" else torch.float64
    data = load_dataset(config.dataset)
    prepared: dict[str, Any] = {}

    def task_for_b(b: int) -> engine.Task:
        if "distorted" not in prepared:
            prepared["distorted"] = elastic_distort(data.x_val, config.distortion["alpha"],
                                                    config.distortion["sigma"], seed=config.seed)
        return engine.mlp_task(data, config.hidden, config.seed, dtype, device, prepared["distorted"])

    meta, arrays, hit = simulate_classifier(
        config, device, cache, progress, cancel, task_for_b, lambda b: (lambda t: float(config.lr.alpha(t))),
        config.distortion["every"], {"n_train": len(data.x_train), "n_val": len(data.x_val)})
    return shape_result(config, meta, arrays, hit)

"""The sequence model trained with Adam (paper Appendix A.1.4, Figure 6): the generic replica trainer of
backend.engine.mlp with the transformer of backend.engine.sequence, its tokenised data and AdamW (per-replica
clipping, warm-up then decay). A Setting (backend/settings/base.py); the run is backend/settings/classifier.py's."""

from __future__ import annotations

import threading
from typing import Any

import torch

from backend.cache import ResultCache
from backend.config import SEQUENCE_PRESETS as PRESETS  # noqa: F401  (the setting's presets, as data)
from backend.config import SequenceConfig
from backend.engine import mlp as trainer
from backend.engine import sequence as seq
from backend.engine.mlp import module_forward
from backend.progress import Progress
from backend.settings.base import Quantity
from backend.settings.classifier import (THEORY_ONLY_DROPS, cached_classifier, classifier_quantities,  # noqa: F401
                                         no_polynomial, no_theory, shape_result, simulate_classifier)
from backend.text import Tokenizer, load_corpus

NAME = "sequence"
TITLE = "Sequence model (Adam)"
CONFIG = SequenceConfig
theory = no_theory
polynomial = no_polynomial
cached_simulation = cached_classifier


def quantities(config: SequenceConfig) -> list[Quantity]:
    return classifier_quantities(with_gap=False)  # no distorted test set for text


def encode_corpus(config: SequenceConfig):
    """(tokenizer, train ids, validation ids, labels): ids (n, L) with L = min(max_len, the longest sentence) —
    columns that are padding in every sentence are dropped. Exact: padding is never attended to nor pooled, so the
    logits and gradients are the same, and the cost follows the longest sentence instead of max_len."""
    data = load_corpus(config.corpus)
    tok = Tokenizer.build(data.train_text, config.tokenizer, config.max_len, config.vocab)
    tr, va = tok.encode(data.train_text), tok.encode(data.val_text)
    used = int(max((tr != 0).sum(1).max(initial=1), (va != 0).sum(1).max(initial=1)))
    return tok, tr[:, :used], va[:, :used], data


def activations_per_sequence(config: SequenceConfig, tokens: int) -> int:
    """Floats one sequence keeps for the backward pass: per layer ≈ tokens · (16 · width + 2 · heads · tokens)."""
    return tokens * config.layers * (16 * config.width + 2 * config.heads * tokens)


def build_task(config: SequenceConfig, device: torch.device, total_steps: int) -> tuple[trainer.Task, int]:
    tok, tr, va, data = encode_corpus(config)
    dtype = torch.float32 if config.dtype == "float32" else torch.float64
    model = seq.Encoder(tok.size, config.max_len, config.width, config.heads, config.layers).to(dtype)
    opt = config.optimizer
    task = trainer.Task(
        torch.as_tensor(tr, device=device), torch.as_tensor(data.y_train, device=device),
        torch.as_tensor(va, device=device), torch.as_tensor(data.y_val, device=device), None,
        module_forward(seq.Encoder(tok.size, config.max_len, config.width, config.heads, config.layers).to(dtype)),
        lambda K: seq.init_params(model, K, config.seed, dtype, device),
        seq.AdamW((opt["beta1"], opt["beta2"]), opt["eps"], opt["weight_decay"], opt["clip"]),
        act_per_sample=activations_per_sequence(config, tr.shape[1]))
    return task, tok.size


def n_params(config: SequenceConfig, vocab_size: int) -> int:
    D, L = config.width, config.layers
    return vocab_size * D + config.max_len * D + L * (12 * D * D + 13 * D) + 2 * D + 2 * D + 2


def estimate(config: SequenceConfig) -> dict[str, float]:
    tok, tr, _, _ = encode_corpus(config)
    P = n_params(config, tok.size)
    N = config.inits * config.replicas
    tokens = tr.shape[1]
    flops_per_seq = 6 * (P - config.vocab * config.width) * tokens + 12 * config.layers * tokens**2 * config.width
    seconds = flops = n_steps = 0.0
    for b in config.batch_sizes:
        steps = config.n_train // b
        train = N * steps * b * flops_per_seq
        evals = N * (min(config.eval_size, config.n_train) + config.n_train // 4 + b
                     + 3 * config.noise_samples) * flops_per_seq / 3
        seconds += config.epochs * ((train + evals) / 4.6e10 + steps * 8e-3)  # calibrated: laptop preset, 2 cores
        flops += config.epochs * (train + evals)
        n_steps += config.epochs * (steps + 3)
    # parameters, gradients, Adam moments; the activations of one vectorised block of replicas (trainer.replica_chunk)
    act = activations_per_sequence(config, tokens)
    b_max = max(config.batch_sizes)
    block = min(N, max(1, trainer.ACTIVATION_ELEMENTS // (b_max * act)))
    memory = 4.0 * N * 6 * P + 4.0 * block * b_max * act
    return {"memory_bytes": memory, "seconds": seconds, "flops": flops, "steps": n_steps}


def simulate(config: SequenceConfig, device: torch.device, cache: ResultCache, progress: Progress,
             cancel: threading.Event | None = None) -> dict[str, Any]:
    opt = config.optimizer

    def task_for_b(b: int) -> trainer.Task:
        return build_task(config, device, config.epochs * (config.n_train // b))[0]

    def lr_for_b(b: int):
        total = config.epochs * (config.n_train // b)
        return lambda t: seq.lr_at(t, opt["lr"], opt["warmup"], total)

    meta, arrays, hit = simulate_classifier(config, device, cache, progress, cancel, task_for_b, lr_for_b, 1,
                                            {"vocab_size": _vocab_size(config)})
    return shape_result(config, meta, arrays, hit)


def _vocab_size(config: SequenceConfig) -> int:
    data = load_corpus(config.corpus)
    return Tokenizer.build(data.train_text, config.tokenizer, config.max_len, config.vocab).size

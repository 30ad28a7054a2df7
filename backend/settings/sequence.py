"""The sequence model trained with Adam (paper Appendix A.1.4, Figure 6): the generic replica trainer of
backend.engine.mlp with the transformer of backend.engine.sequence, its tokenised data and AdamW of backend/optim.py
(per-replica clipping, warm-up then decay). A Setting (backend/settings/base.py); the run is
backend/settings/classifier.py's."""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, ClassVar

import numpy as np
import torch

from backend.cache import ResultCache
from backend.costs import GpuModel
from backend.fields import (MLP_SAMPLERS, Fields, config_fields, read_batch_sizes, read_choice, read_int,
                            read_positive, read_source, refuse_batch_schedule, replace_fields, replica_run_fields)
from backend.engine import mlp as trainer, sequence as seq
from backend.engine.mlp import module_forward
from backend.errors import ConfigError
from backend.optim import FAMILIES, OptimizerSpec
from backend.progress import Progress
from backend.settings import replica_cbs
from backend.settings.base import Quantity
from backend.settings.classifier import (branch_task, cached_classifier, classifier_document, classifier_quantities,
                                         no_check, no_polynomial, no_theory, shape_result, simulate_classifier)
from backend.settings.classifier import ADVISOR_QUANTITIES, advisor_steps  # noqa: F401  (the advisor's protocol)
from backend.settings.classifier import THEORY_ONLY_DROPS  # noqa: F401  (part of the Setting protocol)
from backend.text import Tokenizer, load_corpus

PRESETS: dict[str, dict[str, Any]] = {
    "laptop": {},  # the defaults (SequenceConfig.DEFAULTS): 2 layers × 64 wide on Yelp, 2 × 6 replicas, 5 epochs
    "paper": {"max_len": 128, "vocab": 20000, "layers": 6, "heads": 12, "width": 384, "inits": 1, "replicas": 100,
              "epochs": 20, "optimizer": {"lr": "4e-5", "eps": "1e-8", "beta1": "0.9", "beta2": "0.999",
                                          "weight_decay": "0", "warmup": 50, "clip": "1"},
              "batch_sizes": [32, 64]},
}


@dataclass(frozen=True)
class SequenceConfig:
    """Transformer encoder classifier on review sentences trained with Adam (paper Appendix A.1.4, Figure 6)."""

    setting: ClassVar[str] = "sequence"
    DEFAULTS: ClassVar[dict[str, Any]] = {  # the one statement of the defaults (raw JSON; presets override them)
        "corpus": {"name": "yelp"}, "tokenizer": "word", "max_len": 20, "vocab": 1500, "layers": 2, "heads": 4,
        "width": 64, "inits": 2, "replicas": 6, "epochs": 5,
        "optimizer": {"lr": "0.0005", "eps": "1e-8", "beta1": "0.9", "beta2": "0.999", "weight_decay": "0",
                      "warmup": 5, "clip": "1"},
        "batch_sizes": [16, 64], "sampler": "epoch_reshuffle", "noise_samples": 16, "eval_size": 800, "seed": 0,
        "device": "auto", "dtype": "float32", "precision": "float32"}
    corpus: dict
    tokenizer: str
    max_len: int
    vocab: int
    layers: int
    heads: int
    width: int
    inits: int
    replicas: int
    epochs: int
    optimizer: dict
    batch_sizes: tuple[int, ...]
    sampler: str
    noise_samples: int
    eval_size: int
    seed: int
    device: str
    dtype: str
    precision: str
    n_train: int = field(default=0, repr=False, compare=False)

    @classmethod
    def parse(cls, raw: dict) -> "SequenceConfig":
        f, val = config_fields(raw, cls.DEFAULTS)
        fc, corpus = read_source(val("corpus"), "corpus", ("yelp", "amazon", "imdb", "all", "file"), "yelp", "file",
                                 "the path of a TSV or CSV file of (text, label) is required")
        if corpus["name"] == "file":
            corpus["format"] = read_choice(fc.get("format", "tsv"), "corpus.format", ("tsv", "csv"))
        fc.finish()
        tokenizer = read_choice(val("tokenizer"), "tokenizer", ("word", "char"))
        max_len = read_int(val("max_len"), "max_len", 2, 1024)
        vocab = read_int(val("vocab"), "vocab", 3, 200_000)
        layers = read_int(val("layers"), "layers", 1, 24)
        heads = read_int(val("heads"), "heads", 1, 32)
        width = read_int(val("width"), "width", 2, 2048)
        if width % heads:
            raise ConfigError("width", f"must be a multiple of heads ({heads}), got {width}")
        inits = read_int(val("inits"), "inits", 1, 50)
        replicas = read_int(val("replicas"), "replicas", 2, 10_000)
        epochs = read_int(val("epochs"), "epochs", 1, 10_000)
        opt = _parse_optimizer(val("optimizer"), cls.DEFAULTS["optimizer"])
        sampler = read_choice(val("sampler"), "sampler", MLP_SAMPLERS)
        common = replica_run_fields(val)
        n_train = _sequence_train_size(json.dumps(corpus, sort_keys=True))
        batch_sizes = read_batch_sizes(val("batch_sizes"), n_train)
        refuse_batch_schedule(f, "the sequence model")
        f.finish()
        return cls(corpus, tokenizer, max_len, vocab, layers, heads, width, inits, replicas, epochs, opt, batch_sizes,
                   sampler, n_train=n_train, **common)

    replace = replace_fields  # a new validated config with some JSON fields changed

    @property
    def optimizer_spec(self) -> OptimizerSpec:
        """The optimizer as backend/optim.py's spec (the AdamW fields as adamw; the named form as it was given)."""
        return optimizer_spec(self.optimizer)

    def to_json(self) -> dict:
        return {"setting": self.setting, "corpus": self.corpus, "tokenizer": self.tokenizer, "max_len": self.max_len,
                "vocab": self.vocab, "layers": self.layers, "heads": self.heads, "width": self.width,
                "inits": self.inits, "replicas": self.replicas, "epochs": self.epochs,
                "optimizer": self.optimizer, "batch_sizes": list(self.batch_sizes), "sampler": self.sampler,
                "noise_samples": self.noise_samples, "eval_size": self.eval_size, "seed": self.seed,
                "device": self.device, "dtype": self.dtype, "precision": self.precision}


SCHEDULE_KEYS = ("lr", "warmup", "clip")  # the sequence model's own optimizer fields, beside either form


def _parse_optimizer(raw: Any, o0: dict[str, Any]) -> dict[str, Any]:
    """The ``optimizer`` field, in either form, normalised: its own AdamW fields {lr, eps, beta1, beta2,
    weight_decay, warmup, clip} (old configs; the defaults), or the shared form of backend/optim.py {"name": any of
    its FAMILIES, …} beside lr (the peak rate), warmup and clip. AdamW in either form is kept as the AdamW fields
    (one config, one cache key, today's JSON); every other optimizer as the shared form with lr, warmup, clip.

    A partial object takes the rest from the defaults, and the two forms mix one way only. Without a name the fields
    are AdamW's: the named form's momentum, nesterov or betas beside them (a sweep cell over ``optimizer.momentum`` on
    an old-form config) is refused in one line naming the field — momentum applies to sgd, set optimizer.name.
    With a name, old-form fields beside it (a sweep cell over ``optimizer.name`` on an old-form config) are read as
    that optimizer's where they mean the same: lr, warmup, clip always; beta1/beta2 → betas for an optimizer whose
    family has betas (adam, adamw), eps for one that has eps; weight_decay as the named optimizer's λ (L2 for sgd and
    adam, decoupled for adamw). The Adam-only beta1, beta2, eps beside an optimizer without them (``"sgd"``) are
    refused in one line naming the field (even at their defaults: nothing is dropped silently) — to sweep momentum,
    write the base's optimizer in the named form ``{"name": "sgd", "lr": …}``."""
    fo = Fields(raw, "optimizer")
    if not fo.has("name"):
        shared = sorted(set(fo.raw) & {"momentum", "nesterov", "betas"})
        if shared:
            what = "betas apply to adam and adamw" if shared[0] == "betas" else f"{shared[0]} applies to sgd"
            raise ConfigError(f"optimizer.{shared[0]}", f"{what}, and optimizer's fields without a name are "
                                                        "AdamW's (beta1, beta2): set optimizer.name")
        return _read_adamw_fields(fo, o0)
    spec = OptimizerSpec.parse(_named_fields(fo, o0))
    sched = _read_schedule(fo, o0)
    if spec.name == "adamw":
        return {"lr": sched["lr"], "eps": float(spec.eps), "beta1": float(spec.betas[0]),
                "beta2": float(spec.betas[1]), "weight_decay": float(spec.weight_decay), "warmup": sched["warmup"],
                "clip": sched["clip"]}
    return {**spec.to_json(), **sched}


ADAM_ONLY = ("beta1", "beta2", "eps")  # the old form's fields that plain SGD has no use for


def _named_fields(fo: Fields, o0: dict[str, Any]) -> dict[str, Any]:
    """The named form's fields for OptimizerSpec.parse, with old-form fields beside the name read as
    _parse_optimizer says (beta1/beta2 → betas for a family with betas; the Adam-only ones beside a family without
    them refused)."""
    out = {k: v for k, v in fo.raw.items() if k not in SCHEDULE_KEYS}
    name = out.get("name")
    family = FAMILIES.get(name) if isinstance(name, str) else None  # an unknown name: OptimizerSpec.parse names it
    legacy = [k for k in ("beta1", "beta2") if k in out]
    if family and "betas" in family.fields and legacy:
        if "betas" in out:
            raise ConfigError(f"optimizer.{legacy[0]}", "give either betas or beta1 and beta2, not both")
        out["betas"] = [out.pop("beta1", o0["beta1"]), out.pop("beta2", o0["beta2"])]
    elif family:
        for k in ADAM_ONLY:
            if k in out and k not in family.fields:
                raise ConfigError(f"optimizer.{k}", f"an Adam field, not used by {out['name']}: leave it out (to "
                                                    "sweep momentum from an old-form config, write its optimizer as "
                                                    "{\"name\": \"sgd\", \"lr\": …})")
    return out


def _read_schedule(fo: Fields, o0: dict[str, Any]) -> dict[str, Any]:
    return {"lr": float(read_positive(fo.get("lr", o0["lr"]), "optimizer.lr")),
            "warmup": read_int(fo.get("warmup", o0["warmup"]), "optimizer.warmup", 0, 10**7),
            "clip": float(read_positive(fo.get("clip", o0["clip"]), "optimizer.clip"))}


def optimizer_spec(opt: dict[str, Any]) -> OptimizerSpec:
    """A normalised ``optimizer`` dict (_parse_optimizer) as backend/optim.py's spec."""
    if "name" not in opt:
        return OptimizerSpec("adamw", weight_decay=opt["weight_decay"], betas=(opt["beta1"], opt["beta2"]),
                             eps=opt["eps"])
    return OptimizerSpec.parse({k: v for k, v in opt.items() if k not in SCHEDULE_KEYS})


def _read_adamw_fields(fo: Fields, o0: dict[str, Any]) -> dict[str, Any]:
    """The AdamW fields of old configs (a partial object takes the rest from the defaults)."""
    opt = {"lr": float(read_positive(fo.get("lr", o0["lr"]), "optimizer.lr")),
           "eps": float(read_positive(fo.get("eps", o0["eps"]), "optimizer.eps")),
           "beta1": float(read_positive(fo.get("beta1", o0["beta1"]), "optimizer.beta1", allow_zero=True)),
           "beta2": float(read_positive(fo.get("beta2", o0["beta2"]), "optimizer.beta2", allow_zero=True)),
           "weight_decay": float(read_positive(fo.get("weight_decay", o0["weight_decay"]), "optimizer.weight_decay",
                                               True)),
           "warmup": read_int(fo.get("warmup", o0["warmup"]), "optimizer.warmup", 0, 10**7),
           "clip": float(read_positive(fo.get("clip", o0["clip"]), "optimizer.clip"))}
    for beta in ("beta1", "beta2"):
        if not opt[beta] < 1:
            raise ConfigError(f"optimizer.{beta}", f"must be in [0, 1), got {opt[beta]}")
    fo.finish()
    return opt


@lru_cache(maxsize=16)
def _sequence_train_size(spec: str) -> int:
    from backend.text import load_corpus

    return len(load_corpus(json.loads(spec)).train_text)


NAME = "sequence"
ORDER = 4  # position in the registry and the app's navigation
ICON = ":material/notes:"
TITLE = "Sequence model (Adam)"
CARD = ("A small transformer on Yelp/Amazon/IMDb review sentences: variance, loss and error per epoch "
        "(paper Appendix A.1.4, Figure 6)")  # its card on the Home page
CONFIG = SequenceConfig
theory = no_theory
polynomial = no_polynomial
cached_simulation = cached_classifier
check = no_check
RESUMABLE = True  # checkpointed in the cache at every epoch: a cancelled run resumes
# GPU time (backend/costs.py; calibrated on costs.GPU_CALIBRATION_CARD): the paper preset (100 replicas, b = 32), 1
# epoch with the epoch-0 and epoch-1 statistics, in float32 (one figure: start-up and per-epoch cost are not told
# apart; benchmarks/gpu_check.py)
GPU_MODEL = GpuModel(efficiency={"float32": 0.018}, step_seconds=3e-4)


def quantities(config: SequenceConfig) -> list[Quantity]:
    return classifier_quantities(with_gap=False)  # no distorted test set for text


def simulate_document(config, res: dict[str, Any]) -> dict[str, Any]:
    """The CLI's ``simulate`` document (backend/report.py): per b each quantity over epochs with its SE."""
    return classifier_document(config, res, [q.name for q in quantities(config)])


def advise_cell(config: SequenceConfig, b: int, budget: int, lr_factor: float) -> SequenceConfig:
    """The batch-size advisor's run for b: ⌊budget / n⌋ epochs (⌊n/b⌋ steps each), Adam's peak rate × lr_factor."""
    return config.replace(batch_sizes=[b], epochs=max(1, budget // config.n_train),
                          optimizer={**config.optimizer, "lr": config.optimizer["lr"] * lr_factor})


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


def build_task(config: SequenceConfig, device: torch.device) -> tuple[trainer.Task, int]:
    tok, tr, va, data = encode_corpus(config)
    dtype = torch.float32 if config.dtype == "float32" else torch.float64
    model = seq.Encoder(tok.size, config.max_len, config.width, config.heads, config.layers).to(dtype)
    task = trainer.Task(
        torch.as_tensor(tr, device=device), torch.as_tensor(data.y_train, device=device),
        torch.as_tensor(va, device=device), torch.as_tensor(data.y_val, device=device), None,
        module_forward(model),
        lambda K: seq.init_params(model, K, config.seed, dtype, device),
        config.optimizer_spec.build(clip=config.optimizer["clip"]),  # the AdamW fields: adamw, as they always were
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
                     + 6 * config.noise_samples) * flops_per_seq / 3  # two per-sample passes over S
        # 2 CPU cores: training at 3.7·10¹⁰ FLOP/s plus ≈ 60 ms a step (the vmapped AdamW step's small ops), each of
        # the epochs + 1 statistics passes at 1.9·10¹⁰ — the laptop preset's steps at b = 16 / 64 (0.13 / 0.33 CPU-s)
        # and passes (≈ 2.9 CPU-s) on the critical path (benchmarks/bench_estimates.py)
        seconds += config.epochs * (train / 3.7e10 + steps * 0.06) + (config.epochs + 1) * evals / 1.9e10
        flops += config.epochs * (train + evals)
        n_steps += config.epochs * (steps + 3)
    # parameters, gradients, the optimizer's state (Adam's two moments, SGD's velocity) and two temporaries; the
    # activations of one vectorised block of replicas (trainer.replica_chunk)
    act = activations_per_sequence(config, tokens)
    b_max = max(config.batch_sizes)
    block = min(N, max(1, trainer.ACTIVATION_ELEMENTS // (b_max * act)))
    memory = 4.0 * N * (4 + config.optimizer_spec.state_tensors) * P + 4.0 * block * b_max * act
    return {"memory_bytes": memory, "seconds": seconds, "flops": flops, "steps": n_steps}


def simulate(config: SequenceConfig, device: torch.device, cache: ResultCache, progress: Progress,
             cancel: threading.Event | None = None) -> dict[str, Any]:
    opt = config.optimizer

    def task_for_b(b: int) -> trainer.Task:
        return build_task(config, device)[0]

    def lr_for_b(b: int):
        total = config.epochs * (config.n_train // b)
        return lambda t: seq.lr_at(t, opt["lr"], opt["warmup"], total)

    meta, arrays, hit = simulate_classifier(config, device, cache, progress, cancel, task_for_b, lr_for_b, 1,
                                            {"vocab_size": _vocab_size(config), "update": (
                                                f"{config.optimizer_spec.name} (backend/optim.py, torch.optim's "
                                                "semantics) after per-replica clipping")})
    return shape_result(config, meta, arrays, hit)


def _vocab_size(config: SequenceConfig) -> int:
    data = load_corpus(config.corpus)
    return Tokenizer.build(data.train_text, config.tokenizer, config.max_len, config.vocab).size


# -- the critical batch size's replica branches (backend/cbs.py, backend/settings/replica_cbs.py; §11) --------------

def branch_bounds(config: SequenceConfig) -> dict[str, Any]:
    """What ``cbs`` may ask: checkpoints are optimizer steps of the reference run, up to its epochs × ⌊n/B⌋ steps (epoch
    e ends at step e·⌊n/B⌋, as for the MLP); a batch is at most the n training sentences."""
    n = config.n_train
    return {"max_t": lambda b_ref: config.epochs * (n // b_ref), "n": n, "max_b": n}


def reference_alphas(config: SequenceConfig, b_ref: int):
    """α_0 … α_{T−1} of the reference run at batch B: the run's own schedule at b = B (warm-up, then linear decay to 0
    at its last step epochs·⌊n/B⌋; seq.lr_at), as ``simulate`` steps it."""
    opt, total = config.optimizer, config.epochs * (config.n_train // b_ref)
    return lambda T: [seq.lr_at(t, opt["lr"], opt["warmup"], total) for t in range(T)]


def replica_branches(config: SequenceConfig, b_ref: int, checkpoints: list[int], bs, factors, steps,
                     device: torch.device, cache: ResultCache, progress: Progress | None = None) -> dict[str, Any]:
    """Replica branches of the transformer (backend/settings/replica_cbs.py: functional_branches): init 0's
    ``replicas`` replicas through vmap(grad) and the config's optimizer with its per-replica clipping (the AdamW fields
    or the named form), its warm-up/decay schedule at b = B; at each checkpoint (a step) every replica's weights,
    optimizer state and step count continue with k·B and α_{t_c}·f(k). L is the training loss on the first
    eval_size sentences; b_noise by Hessian-vector products through the encoder (torch.func, reverse over reverse)."""
    lanes = np.asarray(factors).shape[0] * len(checkpoints) * config.replicas

    def make_task(dev: torch.device):
        return branch_task(config, build_task(config, dev)[0], lanes, bs)

    return replica_cbs.functional_branches(config, "cbs_replicas_sequence", b_ref, checkpoints, bs, factors, steps,
                                           device, cache, make_task, progress,
                                           optimizer=config.optimizer_spec.build(clip=config.optimizer["clip"]),
                                           alphas=reference_alphas(config, b_ref))


# 2-core CPU cost of the branches (process time with one thread, float32, 3 rules, B = 16; benchmarks/TIMINGS.md):
# the laptop preset (2 × 64, R = 6, t_c ≤ 250, k ≤ 8) 79 CPU-s, 1 × 32 (R = 3, t_c ≤ 50, k ≤ 4) 6.5, 2 × 16 (R = 4,
# t_c ≤ 20, k ≤ 2) 1.9, 1 × 8 in float64 (R = 3, t_c ≤ 10, k ≤ 2) 4.0 (7.5 in a fresh process: torch.func's first
# calls) — 84, 6.0, 3.5 and 3.2 estimated by these figures
BRANCH_RATE = 3.5e10  # FLOP/s of the encoder's steps vmapped over replicas (the sequence estimate's 3.7·10¹⁰)
BRANCH_STEP_SECONDS = 0.025  # a step's small ops (LayerNorm, attention's reshapes, the optimizer's elementwise pieces)
BRANCH_SETUP_SECONDS = 2.0  # the corpus, its tokenizer, the model and torch.func's first calls


def branch_estimate(config: SequenceConfig, b_ref: int, checkpoints: list[int], bs, factors, steps
                    ) -> dict[str, float]:
    """The cost of ``replica_branches`` (backend/settings/replica_cbs.py: functional_estimate; F = 2(P − V·D)·L +
    4·layers·L²·D forward FLOPs per sequence of L tokens, the embedding a lookup)."""
    tok, tr, _, _ = encode_corpus(config)
    P, tokens = n_params(config, tok.size), tr.shape[1]
    F = 2.0 * (P - tok.size * config.width) * tokens + 4.0 * config.layers * tokens**2 * config.width
    return replica_cbs.functional_estimate(P, F, activations_per_sequence(config, tokens),
                                           min(config.eval_size, config.n_train), config.replicas, checkpoints,
                                           np.asarray(factors).shape[0], b_ref, bs, steps, config.noise_samples,
                                           config.n_train, 4 if config.dtype == "float32" else 8,
                                           config.optimizer_spec.state_tensors, BRANCH_RATE,
                                           BRANCH_SETUP_SECONDS, BRANCH_STEP_SECONDS)

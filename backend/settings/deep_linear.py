"""Deep linear teacher–student networks (paper §3.2, Figure 3): exact polynomials in 1/b where feasible, replicas,
Theorem 4 fits and b_0 (docs/theory.md §2). A Setting (backend/settings/base.py)."""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass, field, replace
from fractions import Fraction
from typing import Any, ClassVar

import numpy as np
import torch

from backend.cache import ResultCache
from backend.fields import (DEVICES, DTYPES, MAX_REPLICAS, MAX_STEPS, MAX_WIDTH, MIN_REPLICAS, BatchSchedule, Fields,
                            Schedule, config_fields, curve_keys, read_choice, read_int, read_positive,
                            read_step_batches, replace_fields)
from backend.costs import GpuModel, combine_costs
from backend.engine import deep_linear as engine
from backend.errors import ConfigError, TooExpensive
from backend.exact import fraction_str, is_exact, jsonable_number, parse_number
from backend.optim import OptimizerSpec
from backend.progress import Progress
from backend.quantities import LOSS, STEP_LOSS, STEP_VAR_G, VAR_G, per_layer
from backend.settings.base import (STEP_ADVISOR_QUANTITIES, Quantity, cache_key, cached_step_simulation,
                                   step_advise_cell, step_advisor_steps, step_document, step_simulation)
from backend.stats import t_quantile
from backend.theory import deep_linear as th
from backend.theory.linreg import eval_polynomial

# -- the config ------------------------------------------------------------------------------------------------


def _parse_weights(raw: Any, dims: tuple[int, ...], name: str, default_seed: int) -> tuple[Any, list[np.ndarray]]:
    """A list of the d matrices [W_1, …, W_d] (W_k of shape p_k × p_{k−1}, nested lists, exact strings allowed),
    or {"seed": int, "scale": number}: entries N(0, scale² / p_{k−1}) from numpy's default_rng(seed)."""
    d = len(dims) - 1
    if isinstance(raw, dict):
        f = Fields(raw, name)
        seed = read_int(f.get("seed", default_seed), f"{name}.seed", 0, 2**32 - 1)
        scale = float(read_positive(f.get("scale", 1.0), f"{name}.scale", allow_zero=True))
        f.finish()
        rng = np.random.default_rng(seed)
        mats = []
        for k in range(d):
            W = rng.standard_normal((dims[k + 1], dims[k])) * scale / math.sqrt(dims[k])
            M = np.empty(W.shape, dtype=object)
            M[:] = W.tolist()
            mats.append(M)
        return {"seed": seed, "scale": scale}, mats
    if not isinstance(raw, list) or len(raw) != d:
        raise ConfigError(name, f"expected a list of the {d} matrices [W_1, …, W_{d}] or {{\"seed\": int, \"scale\": "
                                "number}")
    mats = []
    for k, M in enumerate(raw):
        rows, cols = dims[k + 1], dims[k]
        field_k = f"{name}[{k}]"
        if not isinstance(M, list) or len(M) != rows or not all(isinstance(r, list) and len(r) == cols for r in M):
            raise ConfigError(field_k, f"W_{k + 1} must be a {rows} × {cols} nested list (p_{k + 1} × p_{k})")
        out = np.empty((rows, cols), dtype=object)
        for i, r in enumerate(M):
            for j, v in enumerate(r):
                out[i, j] = parse_number(v, f"{field_k}[{i}][{j}]")
        mats.append(out)
    return [[[jsonable_number(v) for v in row] for row in M] for M in mats], mats


@dataclass(frozen=True)
class DeepLinearConfig:
    """Deep linear teacher–student network, online Gaussian samples (paper §3.2, Appendix B.3)."""

    setting: ClassVar[str] = "deep_linear"
    DEFAULTS: ClassVar[dict[str, Any]] = {  # the one statement of the defaults (raw JSON; presets override them)
        "dims": [3, 4, 2], "teacher": {"seed": 1, "scale": 1.0}, "w0": {"seed": 0, "scale": 1.0},
        "lr": {"schedule": "inverse", "c": "1/10"}, "steps": 50, "batch_sizes": [1, 2, 4, 8, 16], "replicas": 2000,
        "seed": 0, "device": "auto", "dtype": "float64", "record_every": 1}
    dims: tuple[int, ...]
    teacher: Any
    w0: Any
    lr: Schedule
    steps: int
    batch_sizes: tuple[int, ...]
    replicas: int
    seed: int
    device: str
    dtype: str
    record_every: int
    # torch.optim.SGD's momentum, Nesterov and weight decay (backend/optim.py); plain SGD when the field is left out
    optimizer: OptimizerSpec = OptimizerSpec()
    batch_schedule: BatchSchedule | None = None  # b_i for steps_i steps (docs/theory.md §12); None: out of to_json
    teacher_values: list = field(default=None, repr=False, compare=False)
    w0_values: list = field(default=None, repr=False, compare=False)

    @classmethod
    def parse(cls, raw: dict) -> "DeepLinearConfig":
        f, val = config_fields(raw, cls.DEFAULTS)
        dims_raw = val("dims")
        if not isinstance(dims_raw, list) or not 3 <= len(dims_raw) <= 5:
            raise ConfigError("dims", "expected [p, p_1, …, p_d] with depth d from 2 to 4")
        dims = tuple(read_int(v, f"dims[{i}]", 1, MAX_WIDTH) for i, v in enumerate(dims_raw))
        teacher_json, teacher = _parse_weights(val("teacher"), dims, "teacher", 1)
        w0_json, w0 = _parse_weights(val("w0"), dims, "w0", 0)
        lr = Schedule.parse(val("lr"), defaults=cls.DEFAULTS["lr"])
        batch_sizes, batch_schedule, steps = read_step_batches(f, val, 10**6, cls.DEFAULTS["batch_sizes"])
        replicas = read_int(val("replicas"), "replicas", MIN_REPLICAS, MAX_REPLICAS)
        seed = read_int(val("seed"), "seed", 0, 2**32 - 1)
        device = read_choice(val("device"), "device", DEVICES)
        dtype = read_choice(val("dtype"), "dtype", DTYPES)
        record_every = read_int(val("record_every"), "record_every", 1, MAX_STEPS)
        # the SGD family (Adam's elementwise scaling would break the exact width reduction and the t = 1 theory)
        optimizer = OptimizerSpec.parse(f.get("optimizer"), names=("sgd",))
        f.finish()
        return cls(dims, teacher_json, w0_json, lr, steps, batch_sizes, replicas, seed, device, dtype, record_every,
                   optimizer, batch_schedule, teacher, w0)

    @property
    def depth(self) -> int:
        return len(self.dims) - 1

    @property
    def scalar(self) -> bool:
        return all(p == 1 for p in self.dims)

    @property
    def n_params(self) -> int:
        return sum(self.dims[k] * self.dims[k + 1] for k in range(self.depth))

    @property
    def exact(self) -> bool:
        """Weights given as exact numbers and a rational schedule: coefficients are printed as exact fractions."""
        return (isinstance(self.teacher, list) and isinstance(self.w0, list) and self.lr.exact
                and all(is_exact(M) for M in self.teacher_values) and all(is_exact(M) for M in self.w0_values)
                and is_exact([self.optimizer.momentum, self.optimizer.weight_decay]))

    def to_json(self) -> dict:
        return {"setting": self.setting, "dims": list(self.dims), "teacher": self.teacher, "w0": self.w0,
                "lr": self.lr.to_json(), "steps": self.steps,
                **({"batch_sizes": list(self.batch_sizes)} if self.batch_schedule is None
                   else {"batch_schedule": self.batch_schedule.to_json()}),
                "replicas": self.replicas, "seed": self.seed, "device": self.device, "dtype": self.dtype,
                "record_every": self.record_every,
                **({} if self.optimizer.plain else {"optimizer": self.optimizer.to_json()})}  # plain: today's JSON

    replace = replace_fields  # a new validated config with some JSON fields changed


PRESETS: dict[str, dict[str, Any]] = {
    "laptop": {"dims": [3, 4, 2], "steps": 50, "batch_sizes": [1, 2, 4, 8, 16, 32], "replicas": 4000},
    "scalar network": {"dims": [1, 1, 1], "steps": 3, "batch_sizes": [4, 8, 16, 32, 64], "replicas": 20000,
                       "w0": [[["1/2"]], [["3/4"]]], "teacher": [[["1"]], [["1"]]],
                       "lr": {"schedule": "constant", "c": "1/10"}},
    # the paper does not give its weights' scale; at scale 1 with α_1 = 0.1 most replicas diverge for b ≤ 8
    "paper (Figure 3)": {"dims": [64, 256, 128], "steps": 1000, "batch_sizes": [4, 8, 16, 32, 64],
                         "replicas": 1000, "lr": {"schedule": "inverse", "c": "1/10"}, "dtype": "float32",
                         "record_every": 10, "w0": {"seed": 0, "scale": 0.5}, "teacher": {"seed": 1, "scale": 0.5}},
}


# -- the setting -----------------------------------------------------------------------------------------------

NAME = "deep_linear"
ORDER = 2  # position in the registry and the app's navigation
ICON = ":material/account_tree:"
TITLE = "Deep linear network"
CARD = ("Teacher–student on online Gaussian samples; exact polynomials in 1/b beyond t = 0, Theorem 4 fits, "
        "b₀ (paper §3.2, Figure 3)")  # its card on the Home page
CONFIG = DeepLinearConfig
THEORY_ONLY_DROPS = ("replicas", "seed", "device", "dtype", "batch_sizes")
RESUMABLE = False  # a run starts again from t = 0
# GPU time (backend/costs.py; calibrated on costs.GPU_CALIBRATION_CARD): the paper preset (1 000 replicas × 1 000
# steps, b = 16, statistics every 10 steps; benchmarks/gpu_check.py)
GPU_MODEL = GpuModel(efficiency={"float32": 0.25}, step_seconds=2.7e-4)


def quantities(config: DeepLinearConfig) -> list[Quantity]:
    """var(g_{t,k} | F_0) per layer k, their sum, and the population loss; exact where an exact method applies."""
    how = "across-replica variance, batch-means SE (and the Rao–Blackwellised estimator from the Gaussian moments)"
    total = replace(STEP_VAR_G, label="var(g_t | F_0), all layers", estimator=how)
    layers = [replace(total, name=per_layer(VAR_G, k), label=f"var(g_t, layer {k} | F_0)",
                      latex=rf"\operatorname{{var}}(g_{{t,{k}}} \mid \mathcal F_0)",
                      estimators=tuple((per_layer(name, k), what) for name, what in total.estimators))
              for k in range(1, config.depth + 1)]
    return [*layers, total, STEP_LOSS]


def _names(config: DeepLinearConfig) -> list[str]:
    return [q.name for q in quantities(config)]


def simulate_document(config: DeepLinearConfig, res: dict[str, Any]) -> dict[str, Any]:
    """The CLI's ``simulate`` document (backend/report.py): per b each quantity over t with its SE."""
    return step_document(config, res, quantities(config))


def check(config: DeepLinearConfig, cache: ResultCache) -> dict[str, Any]:
    """The CLI's ``check``: at each t with an exact method, per variance whether its polynomial in 1/b has no
    constant term (Theorem 4) and the threshold b₀ beyond which it decreases in b (Theorem 5); the method used."""
    _require_constant_b(config, "the check of Theorems 4–5")
    res = theory(config, cache)
    return {str(t): {q: {"no_constant_term": c[0] == 0 if q != LOSS else None,
                         "b0": th.decrease_threshold(c) if q != LOSS else None,
                         "method": res["methods"][t]}
                     for q, c in qs.items()} for t, qs in res["polynomials"].items()}


def exact_method(config: DeepLinearConfig, t: int) -> str | None:
    """Which exact method applies at step t (None: none is feasible)."""
    if t == 0:
        return "closed form"
    if config.scalar and t <= th.SCALAR_MAX_T:
        return "scalar network, χ² moments"
    if t == 1 and th._estimated_monomials(config.dims[0], config.depth) <= th.MAX_MONOMIALS:
        return "real-Wishart matching rule"
    return None


def describe_methods(methods: dict[int, str]) -> str:
    """'t = 0 (closed form), t = 1 (real-Wishart matching rule)': the steps with exact values, grouped by method."""
    if not methods:
        return "no step (no exact method applies)"
    groups: dict[str, list[int]] = {}
    for t, m in sorted(methods.items()):
        groups.setdefault(m, []).append(int(t))
    return ", ".join(("t = " if len(ts) == 1 else "t ∈ {") + ", ".join(map(str, ts)) + ("" if len(ts) == 1 else "}")
                     + f" ({m})" for m, ts in groups.items())


def _alphas_exact(config: DeepLinearConfig, t: int) -> list[Fraction]:
    return [Fraction(a) for a in config.lr.alphas(t, exact=True)]


def _sgd_family(config: DeepLinearConfig) -> dict[str, Any]:
    """The optimizer's momentum, Nesterov and weight decay as the exact methods take them (exact rationals)."""
    o = config.optimizer
    return {"momentum": Fraction(o.momentum), "nesterov": o.nesterov, "weight_decay": Fraction(o.weight_decay)}


def exact_polynomials(config: DeepLinearConfig, t: int) -> dict[str, list[Fraction]]:
    """Coefficient lists in u = 1/b for every quantity at step t, by the applicable exact method (for every
    optimizer of the SGD family: t = 0 does not depend on it, t = 1 through its first step, theory/deep_linear.py
    sgd_first_step, and the scalar network through the velocity's polynomial recursion; docs/theory.md §9)."""
    method = exact_method(config, t)
    if method is None:
        raise TooExpensive("t", f"no exact method is feasible at t = {t} for dims {list(config.dims)}: exact values "
                                "exist at t = 0 (any size), t = 1 (input dimension p ≤ 4 for two layers) and for the "
                                f"scalar network up to t = {th.SCALAR_MAX_T}")
    if t == 0:
        if config.exact:
            return th.exact_t0(config.w0_values, config.teacher_values)
        # float inputs: the closed form in float64 (O(d p³), milliseconds even for 64 → 256 → 128)
        W = [np.asarray(M, dtype=np.float64) for M in config.w0_values]
        T = [np.asarray(M, dtype=np.float64) for M in config.teacher_values]
        betas = th.variance_t0(W, T)
        delta, _ = th.products(W, T)
        out = {per_layer(VAR_G, k + 1): [Fraction(0), Fraction(float(beta))] for k, beta in enumerate(betas)}
        out[VAR_G] = [Fraction(0), Fraction(float(sum(betas)))]
        out[LOSS] = [Fraction(float(th.fro2(delta))) / 2]
        return out
    if config.scalar:
        ws = [M[0, 0] for M in config.w0_values]
        ts = [M[0, 0] for M in config.teacher_values]
        return th.exact_scalar(ws, ts, _alphas_exact(config, t), t, **_sgd_family(config))
    return th.exact_t1(config.w0_values, config.teacher_values, _alphas_exact(config, 1)[0], **_sgd_family(config))


def eval_inv_b(coeffs: list[Fraction], b: np.ndarray) -> np.ndarray:
    """Σ_k c_k (1/b)^k at every b (float64, Horner's rule of backend.theory.linreg.eval_polynomial)."""
    return eval_polynomial(coeffs, 1.0 / np.asarray(b, dtype=np.float64))


def theory(config: DeepLinearConfig, cache: ResultCache) -> dict[str, Any]:
    """Exact values at every t ≤ steps where an exact method applies (NaN elsewhere), for the config's batch sizes."""
    ts = [t for t in range(exact_horizon(config)) if exact_method(config, t) is not None]

    def compute():
        arrays = {}
        for t in ts:
            for q, coeffs in exact_polynomials(config, t).items():
                arrays[f"t{t}.{q}"] = np.array([fraction_str(c) for c in coeffs])
        return {"kind": "theory_deep", "ts": ts}, arrays

    meta, arrays, hit = cache.get_or_compute(cache_key("theory_deep", config, drop=THEORY_ONLY_DROPS), compute)
    polys: dict[int, dict[str, list[Fraction]]] = {}
    for k, v in arrays.items():
        t, q = k[1:].split(".", 1)
        polys.setdefault(int(t), {})[q] = [Fraction(str(c)) for c in v]
    b = np.asarray(config.batch_sizes if config.batch_schedule is None else [config.batch_schedule.segments[0][0]])
    steps = engine.recorded_steps(config.steps, config.record_every)
    slot = {t: i for i, t in enumerate(steps)}
    curves = {q: np.full((len(b), len(steps)), np.nan) for q in _names(config)}
    for t, qs in polys.items():
        if t in slot:
            for q, coeffs in qs.items():
                curves[q][:, slot[t]] = eval_inv_b(coeffs, b)
    return {"t": np.asarray(steps), "batch_sizes": curve_keys(config), "curves": curves,
            "available": bool(ts), "exact_t": sorted(polys), "polynomials": polys, "cached": hit,
            "methods": {t: exact_method(config, t) for t in sorted(polys)},
            "optimizer_note": None if config.optimizer.plain else FIRST_STEP_NOTE,
            "note": "exact where an exact method applies (t = 0; t = 1 for small inputs; the scalar network to t = 3)"
                    + ("" if config.optimizer.plain else "; " + FIRST_STEP_NOTE)}


# what the exact values mean with momentum, Nesterov or weight decay (the page's caption, theory's note)
FIRST_STEP_NOTE = ("with the optimizer's velocity starting at 0, the first step is α₀(g₀ + λW₀) with heavy ball "
                   "(w₁ is plain SGD's when λ = 0) and α₀(1 + β)(g₀ + λW₀) with Nesterov; t = 0 does not depend on "
                   "the optimizer, t = 1 and the scalar network follow it exactly")


def polynomial(config: DeepLinearConfig, t: int, quantity: str = "var_g", exact: bool | None = None
               ) -> dict[str, Any]:
    """The exact polynomial in 1/b of ``quantity`` at step t by the method that applies there (``exact``: unused,
    the coefficients are exact rationals when the weights and lr.c are)."""
    _require_constant_b(config, "a polynomial in 1/b")
    if quantity not in _names(config):
        raise ConfigError("quantity", f"expected one of {_names(config)}, got {quantity!r}")
    if not isinstance(t, int) or t < 0:
        raise ConfigError("t", f"expected a non-negative integer, got {t!r}")
    coeffs = exact_polynomials(config, t)[quantity]
    exact = config.exact
    return {"t": t, "quantity": quantity, "basis": "inv_b", "exact": exact, "method": exact_method(config, t),
            "coefficients": [fraction_str(c) if exact else float(c) for c in coeffs],
            "degree": len(coeffs) - 1, "constant_term_zero": coeffs[0] == 0 if quantity != LOSS else None,
            "b0": th.decrease_threshold(coeffs) if quantity != LOSS else None}


def _optimizer_tensors(config: DeepLinearConfig) -> int:
    """Weight-sized tensors per replica a non-plain optimizer adds: the gradient, its state (the velocity), and the
    work buffers of g + λw and of Nesterov's d + βv."""
    o = config.optimizer
    return 0 if o.plain else 1 + o.state_tensors + (o.weight_decay != 0) + bool(o.nesterov)


def estimate(config: DeepLinearConfig) -> dict[str, float]:
    itemsize = 8 if config.dtype == "float64" else 4
    runs = ([(b, config.steps) for b in config.batch_sizes] if config.batch_schedule is None
            else config.batch_schedule.segments)  # a schedule's segments run one after another: their costs add
    costs = [engine.estimate_cost(config.dims, config.replicas, s, b, config.record_every, itemsize,
                                  _optimizer_tensors(config))
             for b, s in runs]
    return combine_costs(costs)


def branch_estimate(config: DeepLinearConfig, b_ref: int, checkpoints: list[int], bs: np.ndarray, factors: np.ndarray,
                    steps: np.ndarray) -> dict[str, float]:
    """The cost of ``replica_branches``: the reference run (R replicas, max t_c steps of B) and per k the rules ×
    checkpoints × R lanes for ⌊S/(kB)⌋ steps — memory and FLOPs by the engine's estimate_cost
    (backend/engine/deep_linear.py) of each, the seconds by the branches' own cost (deep_linear_cbs.branch_seconds:
    all lanes in one call, no records: the engine's figure for a run is not theirs)."""
    itemsize = 8 if config.dtype == "float64" else 4
    N = np.asarray(factors).shape[0] * len(checkpoints) * config.replicas
    runs = [(config.replicas, max(max(checkpoints), 1), int(b_ref))] + [(N, max(int(s), 1), int(b))
                                                                          for b, s in zip(bs, steps)]
    parts = [engine.estimate_cost(config.dims, R, T, b, T, itemsize, _optimizer_tensors(config)) for R, T, b in runs]
    total = combine_costs(parts)
    total["memory_bytes"] = float(parts[0]["memory_bytes"] + max(p["memory_bytes"] for p in parts[1:]))  # the
    # reference's states are kept beside the largest branch
    total["seconds"] = branch_seconds(config.dims, config.replicas, N, checkpoints, b_ref, bs, steps, itemsize,
                                      _optimizer_tensors(config))
    return total


def _require_constant_b(config: DeepLinearConfig, what: str) -> None:
    if config.batch_schedule is not None:
        raise ConfigError("batch_schedule", f"{what} is over constant batch sizes; give batch_sizes instead of a "
                                            "batch_schedule")


def exact_horizon(config: DeepLinearConfig) -> int:
    """The steps t < horizon at which the exact polynomials apply: every t for constant b; along a batch_schedule the
    steps of its first segment (g_t and w_t there are those of a constant b_1; docs/theory.md §12)."""
    return config.steps + 1 if config.batch_schedule is None else config.batch_schedule.segments[0][1]


def simulate(config: DeepLinearConfig, device: torch.device, cache: ResultCache, progress: Progress,
             cancel: threading.Event | None = None) -> dict[str, Any]:
    dtype = torch.float64 if config.dtype == "float64" else torch.float32
    alphas = config.lr.alphas(config.steps)
    W0 = [np.asarray(M, dtype=np.float64) for M in config.w0_values]
    T = [np.asarray(M, dtype=np.float64) for M in config.teacher_values]
    opt = None if config.optimizer.plain else config.optimizer.build()

    def run_one(b):
        return engine.run_replicas(W0, T, alphas, b, config.replicas, config.seed, device, dtype, progress.advance,
                                   cancel, record_every=config.record_every, optimizer=opt)

    def meta() -> dict[str, Any]:  # on a cache miss only (reduced_dims: an SVD per layer)
        return {"kind": "simulate_deep",
                "sampler": "fresh Gaussian samples each step (online); Σ̂ by Bartlett when b ≥ p, else directly",
                "sampler_label": "online Gaussian samples, Bartlett-sampled Σ̂ (b ≥ p)",
                "simulated_dims": list(engine.reduced_dims(W0)),
                "update": ("plain SGD, fused into the backward products" if opt is None else
                           "torch.optim.SGD's step (backend/optim.py) on the gradients, velocity buffers per layer")}

    return step_simulation(config, device, cache, progress, run_one, meta, _recorded(config))


def cached_simulation(config: DeepLinearConfig, device: torch.device, cache: ResultCache) -> dict[str, Any] | None:
    """The cached result of ``simulate(config)`` on ``device`` if there is one (never computes)."""
    return cached_step_simulation(config, device, cache, _recorded(config))


def _recorded(config: DeepLinearConfig) -> np.ndarray:
    return np.asarray(engine.recorded_steps(config.steps, config.record_every))


ADVISOR_QUANTITIES = STEP_ADVISOR_QUANTITIES  # the batch-size advisor's hooks (backend/advisor.py)
advise_cell = step_advise_cell
advisor_steps = step_advisor_steps


def fit_theorem4(b: np.ndarray, values: np.ndarray, se: np.ndarray | None, degree: int) -> dict[str, Any]:
    """Weighted least squares fit of Σ_{j=1}^{r} β_j b^{−j} (Theorem 4's form: no constant term) with β_1 ≥ 0.

    Weights 1/SE; β intervals from the weighted normal equations (95 %, Student t with n − r dof); goodness of fit
    χ²/dof and its p-value; b_0 from the fitted β's (Theorem 5).
    """
    from scipy.optimize import lsq_linear
    from scipy.stats import chi2

    b = np.asarray(b, dtype=np.float64)
    y = np.asarray(values, dtype=np.float64)
    ok = np.isfinite(y) & (np.isfinite(se) & (se > 0) if se is not None else True)
    b, y = b[ok], y[ok]
    w = 1.0 / np.asarray(se, dtype=np.float64)[ok] if se is not None else np.ones_like(y)
    r = int(min(degree, max(1, len(b) - 1)))
    scale = b.min()  # fit in the scaled variable (b_min / b) for conditioning
    A = np.stack([(scale / b) ** j for j in range(1, r + 1)], axis=1)
    lower = np.full(r, -np.inf)
    lower[0] = 0.0
    sol = lsq_linear(A * w[:, None], y * w, bounds=(lower, np.full(r, np.inf)))
    gamma = sol.x
    resid = (A @ gamma - y) * w
    dof = max(len(y) - r, 1)
    chisq = float(resid @ resid)
    try:
        cov = np.linalg.inv((A * w[:, None]).T @ (A * w[:, None]))
    except np.linalg.LinAlgError:
        cov = np.full((r, r), np.nan)
    factors = scale ** np.arange(1, r + 1)
    beta = gamma * factors
    half = t_quantile(0.95, dof) * np.sqrt(np.diag(cov)) * factors
    return {"degree": r, "beta": beta, "beta_lo": beta - half, "beta_hi": beta + half, "chi2": chisq, "dof": dof,
            "chi2_per_dof": chisq / dof, "p_value": float(chi2.sf(chisq, dof)) if se is not None else math.nan,
            "beta1_at_bound": bool(gamma[0] <= 1e-12 and sol.active_mask[0] != 0),
            "b0": th.decrease_threshold([0.0, *beta])}


def eval_theorem4(beta: np.ndarray, b: np.ndarray) -> np.ndarray:
    b = np.asarray(b, dtype=np.float64)
    return sum(beta[j - 1] * b ** (-j) for j in range(1, len(beta) + 1))


def decreasing_everywhere(values: np.ndarray) -> bool:
    v = np.asarray(values, dtype=np.float64)
    return bool(np.all(np.diff(v) < 0))


from backend.settings.deep_linear_cbs import branch_bounds, branch_seconds, replica_branches  # noqa: E402,F401

"""Linear regression on a finite sum (paper §3.1, Figure 2): exact curves at every t, polynomials in 1/b, Theorems
1–2 on the exact values, and the replica engine (docs/theory.md §1, §4). A Setting (backend/settings/base.py)."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, ClassVar

import numpy as np
import torch

from backend import datasets
from backend.cache import ResultCache, default_cache
from backend.fields import (DEVICES, MAX_REPLICAS, MIN_REPLICAS, SAMPLER_LABELS, SAMPLERS, BatchSchedule, Fields,
                            Schedule, config_fields, curve_keys, paper_batch_sizes, read_bool, read_choice, read_int,
                            read_positive, read_step_batches, replace_fields)
from backend.costs import GpuModel, combine_costs
from backend.engine import linreg as engine
from backend.errors import ConfigError, TooExpensive
from backend.exact import is_exact, jsonable_number, parse_number, rational, to_fraction, to_rational_array
from backend.optim import OptimizerSpec
from backend.progress import Progress
from backend.quantities import STEP_QUANTITIES
from backend.settings.base import (STEP_ADVISOR_QUANTITIES, Quantity, cache_key, cached_step_simulation,
                                   run_device_type, step_advise_cell, step_advisor_steps, step_document,
                                   step_simulation)
from backend.stats import first_increase, polyfit_inv_b, polyfit_inv_b_se
from backend.theory import linreg as th
from backend.theory.momentum_lanes import lane_paths

# -- the config ------------------------------------------------------------------------------------------------


def _parse_w0(raw: Any, p: int) -> tuple[Any, np.ndarray]:
    if isinstance(raw, dict):
        f = Fields(raw, "w0")
        seed = read_int(f.get("seed", 0), "w0.seed", 0, 2**32 - 1)
        scale = float(read_positive(f.get("scale", 1.0), "w0.scale", allow_zero=True))
        f.finish()
        w = np.random.default_rng(seed).standard_normal(p) * scale
        vals = np.empty(p, dtype=object)
        vals[:] = w.tolist()
        return {"seed": seed, "scale": scale}, vals
    if isinstance(raw, list):
        if len(raw) != p:
            raise ConfigError("w0", f"expected {p} weights (the features, then the intercept last when there is one), "
                                    f"got {len(raw)}")
        vals = np.empty(p, dtype=object)
        for j, v in enumerate(raw):
            vals[j] = parse_number(v, f"w0[{j}]")
        return [jsonable_number(v) for v in vals], vals
    raise ConfigError("w0", 'expected a list of numbers or {"seed": int, "scale": number}')


@dataclass(frozen=True)
class LinearRegressionConfig:
    """Linear regression, finite sum (paper §3.1). Defaults: the paper's Graduate Admission setting (Appendix A.1.1)."""

    setting: ClassVar[str] = "linear_regression"
    DEFAULTS: ClassVar[dict[str, Any]] = {  # the one statement of the defaults (raw JSON; presets override them)
        "dataset": {"name": "graduate_admission"}, "standardize": True, "intercept": True,
        "w0": {"seed": 0, "scale": 1.0}, "lr": {"schedule": "inverse", "c": "1/2"}, "steps": 200,
        "batch_sizes": [2, 16, 64, 256], "replicas": 1000, "seed": 0, "sampler": "without_replacement",
        "device": "auto"}
    dataset: dict
    standardize: bool
    intercept: bool
    w0: Any
    lr: Schedule
    steps: int
    batch_sizes: tuple[int, ...]
    replicas: int
    seed: int
    sampler: str
    device: str
    # torch.optim.SGD's momentum, Nesterov and weight decay (backend/optim.py); plain SGD when the field is left out,
    # and then it stays out of to_json (so a config without it keeps its cache key and URL)
    optimizer: OptimizerSpec = OptimizerSpec()
    # b_i for steps_i steps in place of batch_sizes (docs/theory.md §12): one curve, keyed "schedule"; None: left out
    # of to_json (a config without it keeps its cache key)
    batch_schedule: BatchSchedule | None = None
    # derived (not part of the JSON): the design matrix and the weights
    X: np.ndarray = field(default=None, repr=False, compare=False)
    y: np.ndarray = field(default=None, repr=False, compare=False)
    w0_values: np.ndarray = field(default=None, repr=False, compare=False)
    exact_data: bool = field(default=False, repr=False, compare=False)
    feature_names: tuple[str, ...] = field(default=(), repr=False, compare=False)

    @classmethod
    def parse(cls, raw: dict) -> "LinearRegressionConfig":
        f, val = config_fields(raw, cls.DEFAULTS)
        ds_json, data = datasets.parse_dataset(val("dataset"))
        standardize = read_bool(val("standardize"), "standardize")
        intercept = read_bool(val("intercept"), "intercept")
        X, y, exact = datasets.design_matrix(data, standardize, intercept)
        n, p = X.shape
        w0_json, w0_vals = _parse_w0(val("w0"), p)
        lr = Schedule.parse(val("lr"), defaults=cls.DEFAULTS["lr"])
        default_b = [b for b in cls.DEFAULTS["batch_sizes"] if b <= n] or [1]  # a small data set: the b that fit
        batch_sizes, batch_schedule, steps = read_step_batches(f, val, n, default_b)
        replicas = read_int(val("replicas"), "replicas", MIN_REPLICAS, MAX_REPLICAS)
        seed = read_int(val("seed"), "seed", 0, 2**32 - 1)
        sampler = read_choice(val("sampler"), "sampler", SAMPLERS)
        device = read_choice(val("device"), "device", DEVICES)
        optimizer = OptimizerSpec.parse(f.get("optimizer"), names=("sgd",))  # the SGD family has exact theory
        f.finish()
        names = tuple(data.feature_names) + (("intercept",) if intercept else ())
        return cls(ds_json, standardize, intercept, w0_json, lr, steps, batch_sizes, replicas, seed, sampler, device,
                   optimizer, batch_schedule, X, y, w0_vals, exact, names)

    @property
    def n(self) -> int:
        return int(self.X.shape[0])

    @property
    def p(self) -> int:
        return int(self.X.shape[1])

    @property
    def exact(self) -> bool:
        """True when data, initial weights, schedule, momentum and weight decay are all rational: polynomials then have
        exact coefficients."""
        return (self.exact_data and is_exact(self.w0_values) and self.lr.exact
                and is_exact([self.optimizer.momentum, self.optimizer.weight_decay]))

    def to_json(self) -> dict:
        return {
            "setting": self.setting,
            "dataset": self.dataset,
            "standardize": self.standardize,
            "intercept": self.intercept,
            "w0": self.w0,
            "lr": self.lr.to_json(),
            "steps": self.steps,
            **({"batch_sizes": list(self.batch_sizes)} if self.batch_schedule is None
               else {"batch_schedule": self.batch_schedule.to_json()}),
            "replicas": self.replicas,
            "seed": self.seed,
            "sampler": self.sampler,
            "device": self.device,
            **({} if self.optimizer.plain else {"optimizer": self.optimizer.to_json()}),
        }

    replace = replace_fields  # a new validated config with some JSON fields changed


PRESETS: dict[str, dict[str, Any]] = {
    "laptop": {"steps": 200, "batch_sizes": [2, 16, 64, 256], "replicas": 1000},
    "paper (Figure 2a)": {"steps": 2000, "batch_sizes": [2, 16, 64, 256], "replicas": 1000},
    "paper (Figure 2b)": {"steps": 40, "batch_sizes": paper_batch_sizes(500), "replicas": 200_000},
}


# -- the setting -----------------------------------------------------------------------------------------------

NAME = "linear_regression"
ORDER = 1  # position in the registry and the app's navigation
ICON = ":material/show_chart:"
TITLE = "Linear regression"
CARD = ("Graduate Admission, synthetic data or your CSV: the exact variance at every step as a polynomial in "
        "1/b, drawn over replica runs (paper §3.1, Figure 2)")  # its card on the Home page
CONFIG = LinearRegressionConfig
THEORY_ONLY_DROPS = ("replicas", "seed", "device")
RESUMABLE = False  # a run starts again from t = 0
# GPU time (backend/costs.py; calibrated on costs.GPU_CALIBRATION_CARD): R = 10³, 10⁴, 10⁵ replicas, T = 2 000, b = 16
# (float64, one chunk each; benchmarks/gpu_check.py) — launch-bound up to 10⁴ replicas, then bound by the gathers and
# products of the drawn rows of X; a replayed CUDA graph's launches hide behind its kernels (overlap)
GPU_MODEL = GpuModel(efficiency={"float32": 0.00367}, step_seconds=1.69e-4, overlap=True)
QUANTITIES = STEP_QUANTITIES  # var_g (and var_g_rb), var_full_grad, loss: declared once in backend/quantities.py
EXACT_QUANTITIES = tuple(q.name for q in QUANTITIES)
EXACT_MAX_T = 30  # exact rational polynomials: cost grows like t² p⁴ with ever longer integers
FLOAT_POLY_MAX_T = 400


def quantities(config: LinearRegressionConfig) -> list[Quantity]:
    return list(QUANTITIES)


def simulate_document(config: LinearRegressionConfig, res: dict[str, Any]) -> dict[str, Any]:
    """The CLI's ``simulate`` document (backend/report.py): per b each quantity over t with its SE."""
    return step_document(config, res, quantities(config))


def check(config: LinearRegressionConfig, cache: ResultCache | None = None) -> dict[str, Any]:
    """The CLI's ``check``: Theorems 1–2 on the exact values at every b ≤ n (check_monotone)."""
    return check_monotone(config)


def _problem(config: LinearRegressionConfig, exact: bool = False) -> th.LinRegProblem:
    if exact:
        return th.LinRegProblem(to_rational_array(config.X), to_rational_array(config.y))
    return th.LinRegProblem(np.asarray(config.X, dtype=np.float64), np.asarray(config.y, dtype=np.float64))


def _w0(config: LinearRegressionConfig, exact: bool = False) -> np.ndarray:
    return to_rational_array(config.w0_values) if exact else np.asarray(config.w0_values, dtype=np.float64)


def _sgd(config: LinearRegressionConfig) -> th.SGDParams:
    """The config's optimizer as the exact recursion's parameters (docs/theory.md §9)."""
    o = config.optimizer
    return th.SGDParams(o.momentum, o.nesterov, o.weight_decay)


def _require_theory(config: LinearRegressionConfig) -> None:
    if config.sampler not in th.SAMPLERS_WITH_THEORY:
        raise ConfigError("sampler", f"no exact theory for {config.sampler!r}: batches within an epoch are dependent; "
                                     "choose without_replacement or with_replacement")


def noise_factors(config: LinearRegressionConfig, batch_sizes=None) -> np.ndarray:
    """The recursion's noise factors: (B,) for ``batch_sizes``, or with None the config's curves — its batch sizes, or
    (1, T+1) along its batch_schedule, c at t that of b_t (docs/theory.md §12)."""
    if batch_sizes is None and config.batch_schedule is not None:
        return th.noise_factor(config.batch_schedule.batch_at(), config.n, config.sampler)[None, :]
    return th.noise_factor(np.asarray(config.batch_sizes if batch_sizes is None else batch_sizes), config.n,
                           config.sampler)


def _require_constant_b(config: LinearRegressionConfig, what: str) -> None:
    if config.batch_schedule is not None:
        raise ConfigError("batch_schedule", f"{what} is over constant batch sizes; give batch_sizes instead of a "
                                            "batch_schedule")


def theory_curves(config: LinearRegressionConfig, batch_sizes, steps: int) -> dict[str, np.ndarray]:
    """Exact var(g_t | F_0), var(∇L(w_t) | F_0), E L(w_t) (float64, stable recursion) for t = 0..steps: arrays (B, steps+1);
    ``batch_sizes`` None: the config's own curves (its batch_schedule's one curve where it has one)."""
    _require_theory(config)
    c = noise_factors(config, batch_sizes)
    return th.moment_curves(_problem(config), _w0(config), config.lr.alphas(steps), c, _sgd(config))


def theory(config: LinearRegressionConfig, cache: ResultCache) -> dict[str, Any]:
    """Exact curves for the config's batch sizes and t = 0..steps. ``available`` is False (curves None) without theory
    (the epoch-reshuffle sampler)."""
    t = np.arange(config.steps + 1)
    if config.sampler not in th.SAMPLERS_WITH_THEORY:
        return {"t": t, "batch_sizes": curve_keys(config), "curves": None, "available": False,
                "note": f"no exact theory for the sampler {config.sampler!r}"}

    def compute():
        curves = theory_curves(config, None, config.steps)
        return {"kind": "theory"}, curves

    _, arrays, hit = cache.get_or_compute(theory_key(config), compute)
    return {"t": t, "batch_sizes": curve_keys(config), "curves": arrays, "available": True, "cached": hit,
            "note": "exact (float64, stable moment recursion of docs/theory.md §1" +
                    ("" if config.optimizer.plain else ", on the doubled state (w_t, v_t) of §9") + ")"}


def theory_key(config: LinearRegressionConfig, all_b: bool = False) -> str:
    """The cache key of the exact curves at the config's b (``theory``) or at every b (``theory_all_b``): the
    config without the fields that only the replicas read (and without its b for every b)."""
    if all_b:
        return cache_key("theory_all_b", config, drop=(*THEORY_ONLY_DROPS, "batch_sizes"))
    return cache_key("theory", config, drop=THEORY_ONLY_DROPS)


def all_b_grid(n: int, max_points: int = 1000) -> np.ndarray:
    """Every b in [1, n] when n ≤ max_points, else a log-spaced grid of distinct integers including 1 and n."""
    if n <= max_points:
        return np.arange(1, n + 1)
    return np.unique(np.round(np.geomspace(1, n, max_points)).astype(int))


def theory_all_b(config: LinearRegressionConfig, cache: ResultCache | None = None) -> dict[str, Any]:
    """Exact curves for every b in [1, n] (a log grid when n > 1000), t = 0..steps: the var-against-b view and the
    check of Theorems 1–2."""
    _require_theory(config)
    _require_constant_b(config, "the view against b (and Theorems 1–2)")
    b = all_b_grid(config.n)

    def compute():
        return {"kind": "theory_all_b"}, theory_curves(config, b, config.steps)

    _, arrays, hit = (cache if cache is not None else default_cache()).get_or_compute(theory_key(config, True), compute)
    return {"b": b, "curves": arrays, "cached": hit}


def check_monotone(config: LinearRegressionConfig, all_b: dict | None = None) -> dict[str, Any]:
    """Theorems 1–2 on the exact values: var(g_t | F_0) and var(∇L(w_t) | F_0) non-increasing in b at every t.

    Returns, per quantity, whether it holds and the first violation (t, b, b+1, values) if any. A relative slack of
    1e-12 absorbs float64 rounding.
    """
    all_b = all_b or theory_all_b(config)
    b = all_b["b"]
    out = {}
    for q in ("var_g", "var_full_grad", "loss"):
        vals = all_b["curves"][q]
        violation = None
        for t in range(vals.shape[1]):
            j = first_increase(b, vals[:, t])
            if j is not None:
                violation = {"t": t, "b": int(b[j]), "b_next": int(b[j + 1]),
                             "value": float(vals[j, t]), "value_next": float(vals[j + 1, t])}
                break
        out[q] = {"holds": violation is None, "first_violation": violation, "checked_t": int(vals.shape[1]),
                  "checked_b": int(len(b))}
    return out


def polynomial(config: LinearRegressionConfig, t: int, quantity: str = "var_g", exact: bool | None = None
               ) -> dict[str, Any]:
    """Coefficients of ``quantity`` at step t as a polynomial in 1/b (and in the noise factor c).

    Exact rational coefficients when data, w0 and schedule are rational (and ``exact`` is not False), for t ≤ 30
    (EXACT_MAX_T); float64 otherwise, for t ≤ 400 (FLOAT_POLY_MAX_T; accurate to t ≈ 50 in the 1/b basis, the c basis
    stays well conditioned). Beyond either limit a TooExpensive names it.
    """
    _require_theory(config)
    _require_constant_b(config, "a polynomial in 1/b")
    if quantity not in EXACT_QUANTITIES:
        raise ConfigError("quantity", f"expected one of {list(EXACT_QUANTITIES)}, got {quantity!r}")
    if not isinstance(t, int) or t < 0:
        raise ConfigError("t", f"expected a non-negative integer, got {t!r}")
    use_exact = config.exact if exact is None else exact
    if use_exact and not config.exact:
        raise ConfigError("exact", "exact coefficients need rational data (not standardized), rational w0, lr.c, "
                                   "optimizer.momentum and optimizer.weight_decay")
    if use_exact and t > EXACT_MAX_T:
        raise TooExpensive("t", f"exact rational coefficients are limited to t ≤ {EXACT_MAX_T} (cost grows like "
                                f"t²·p⁴ with ever longer integers); use float coefficients for larger t")
    if not use_exact and t > FLOAT_POLY_MAX_T:
        raise TooExpensive("t", f"polynomial coefficients are limited to t ≤ {FLOAT_POLY_MAX_T}; beyond t ≈ 50 float "
                                "coefficients in 1/b lose accuracy anyway — use the curves (theory) instead")
    alphas = config.lr.alphas(t, exact=use_exact)
    if use_exact:
        alphas = [rational(a) for a in alphas]
    coeffs_c = th.polynomial_in_c(_problem(config, use_exact), _w0(config, use_exact), alphas, t, _sgd(config))[quantity]
    coeffs_c = [to_fraction(x) for x in coeffs_c] if use_exact else [float(x) for x in coeffs_c]
    coeffs_b = th.c_to_inv_b(coeffs_c, config.n, config.sampler)
    return {
        "t": t,
        "quantity": quantity,
        "basis": "inv_b",
        "exact": use_exact,
        "method": "exact rational recursion (FLINT fmpq)" if use_exact else "float64 recursion",
        "coefficients": [jsonable_number(x) if use_exact else float(x) for x in coeffs_b],
        "coefficients_c": [jsonable_number(x) if use_exact else float(x) for x in coeffs_c],
        "noise_factor": "c_b = (n-b)/(b(n-1))" if config.sampler == "without_replacement" else "1/b",
        "degree": th.polynomial_degree(coeffs_b),
        "degree_bound": t + 1 if quantity == "var_g" else t,
        "n": config.n,
    }


def eval_poly_inv_b(coeffs: list, b: np.ndarray) -> np.ndarray:
    return th.eval_polynomial([float(Fraction(c)) if isinstance(c, str) else c for c in coeffs], 1.0 / np.asarray(b))


def paper_fit(b: np.ndarray, values: np.ndarray, degree: int = 6) -> np.ndarray:
    """The paper's Figure 2b fit: least squares polynomial of ``degree`` in 1/b (with a constant term)."""
    return polyfit_inv_b(np.asarray(b), np.asarray(values), degree)


PAPER_FIT_DEGREE = 6
FIT_MIN_ESTIMATES = PAPER_FIT_DEGREE + 1  # fewer batch sizes than coefficients: the fit uses the exact values


def against_b(config: LinearRegressionConfig, t: int, sim: dict | None = None, all_b: dict | None = None
              ) -> dict[str, Any]:
    """var(g_t | F_0) against b at step t (paper Figure 2b; docs/theory.md §1): the exact values at every b in
    [1, n] (theory_all_b), the replica estimates of ``sim`` at the run's b (value, 95 % interval, SE), and the
    paper's least-squares polynomial of degree 6 in 1/b with a constant term. The fit is to the estimates where the
    run has ≥ 7 batch sizes — its coefficients' SEs propagated from the estimates' (independent streams per b) —
    else to the exact values at the paper's 21 batch sizes (no sampling error: SEs 0)."""
    all_b = all_b or theory_all_b(config)
    if not isinstance(t, int) or not 0 <= t <= config.steps:
        raise ConfigError("t", f"expected an integer in [0, {config.steps}], got {t!r}")
    grid, exact = all_b["b"], all_b["curves"]["var_g"][:, t]
    estimates = None
    if sim is not None:
        e = sim["curves"]["var_g"]
        estimates = {"b": np.asarray(config.batch_sizes), **{k: e[k][:, t] for k in ("value", "lo", "hi", "se")}}
    if estimates is not None and len(config.batch_sizes) >= FIT_MIN_ESTIMATES:
        source, fb, fv, fse = "estimates", estimates["b"], estimates["value"], estimates["se"]
    else:
        fb = np.array([b for b in paper_batch_sizes(config.n) if b <= config.n])
        at = np.searchsorted(grid, fb).clip(max=len(grid) - 1)
        on_grid = bool(np.array_equal(grid[at], fb))  # every b up to n = 1000; a log grid beyond
        fv = exact[at] if on_grid else theory_curves(config, fb, config.steps)["var_g"][:, t]
        source = "exact values at the paper's b"
        fse = np.zeros(len(fb))
    coef = paper_fit(fb, fv, PAPER_FIT_DEGREE)
    return {"t": t, "b": grid, "exact": exact, "estimates": estimates,
            "fit": {"source": source, "b": fb, "degree": PAPER_FIT_DEGREE, "coefficients": coef,
                    "coefficients_se": polyfit_inv_b_se(fb, fse, PAPER_FIT_DEGREE),
                    "curve": eval_poly_inv_b(list(coef), grid)}}


def simulate(config: LinearRegressionConfig, device: torch.device, cache: ResultCache, progress: Progress,
             cancel: threading.Event | None = None) -> dict[str, Any]:
    """Run ``replicas`` SGD replicas per batch size; estimates with batch-means SEs and 95 % intervals per t.

    Curves (arrays (B, T+1)): var_g, var_full_grad, loss and, for i.i.d. samplers, var_g_rb (Rao–Blackwellised:
    mean of Lemma 1's conditional variance plus the spread of ∇L(w_t); same expectation, smaller SE).
    """
    alphas = config.lr.alphas(config.steps)
    X, y = np.asarray(config.X, dtype=np.float64), np.asarray(config.y, dtype=np.float64)

    def run_one(b):
        c = (_rb_noise(config, b) if config.sampler in th.SAMPLERS_WITH_THEORY else None)
        return engine.run_replicas(X, y, _w0(config), alphas, b, config.replicas, config.sampler, config.seed, device,
                                   c, progress=progress.advance, cancel=cancel, optimizer=config.optimizer.build())

    def meta() -> dict[str, Any]:
        return {"kind": "simulate", "sampler": config.sampler, "sampler_label": SAMPLER_LABELS[config.sampler],
                "torch": torch.__version__}

    return step_simulation(config, device, cache, progress, run_one, meta, np.arange(config.steps + 1))


def _rb_noise(config: LinearRegressionConfig, b):
    """The Rao–Blackwellised estimate's noise factor: a float for one b, one per segment for a schedule."""
    if isinstance(b, list):
        return [float(th.noise_factor(bi, config.n, config.sampler)) for bi, _ in b]
    return float(th.noise_factor(b, config.n, config.sampler))


def advise(config: LinearRegressionConfig, b: np.ndarray, steps: np.ndarray, lr_c: np.ndarray, horizon: np.ndarray,
           target: float | None, grid, momentum: np.ndarray | None = None) -> dict[str, Any]:
    """The batch-size advisor's quantities, exact (backend/advisor.py; docs/theory.md §7): for each lane j (batch
    size b[j], the schedule's shape with constant lr_c[j]), E L, var(∇L) and var(g) at t = steps[j], the first
    t ≤ horizon[j] with E L(w_t) ≤ target, and the exact noise scale along ``grid`` — the moment recursion; with
    the SGD family (§9) on the doubled state, β per lane ``momentum[j]`` (default the config's), its Nesterov and λ."""
    _require_theory(config)
    _require_constant_b(config, "the advisor")
    T = int(np.max(horizon))
    c = th.noise_factor(np.asarray(b), config.n, config.sampler)
    problem, w0 = _problem(config), _w0(config)
    o = config.optimizer
    beta = np.full(len(c), float(o.momentum)) if momentum is None else np.asarray(momentum, dtype=np.float64)
    out = lane_paths(problem, w0, lr_c, config.lr.shape(T), c, horizon, steps, grid, target, beta, o.nesterov,
                     float(o.weight_decay))  # plain lanes through moment_paths, bitwise
    return {**out, "loss0": float(problem.loss(w0)), "exact": True}


ADVISOR_QUANTITIES = STEP_ADVISOR_QUANTITIES  # the batch-size advisor's hooks (backend/advisor.py)
advise_cell = step_advise_cell
advisor_steps = step_advisor_steps


def branch_bounds(config: LinearRegressionConfig) -> dict[str, int | None]:
    """What the critical-batch-size branches (backend/cbs.py) may ask of this config: checkpoints up to its steps,
    batch sizes up to n (``max_b``; None with replacement, where any b is a batch)."""
    return {"max_t": config.steps, "n": config.n,
            "max_b": config.n if config.sampler == "without_replacement" else None}


def branches(config: LinearRegressionConfig, b_ref: int, checkpoints: list[int], bs: np.ndarray,
             factors: np.ndarray, steps: np.ndarray) -> dict[str, Any]:
    """Exact branched runs (backend/cbs.py; docs/theory.md §11): the reference run (batch ``b_ref``, the config's
    schedule and optimizer) at each checkpoint, continued with batch bs[j], constant step size α_{t_c} · factors[r, j]
    (rule r) for steps[j] steps, optimizer state carried over. Returns E L at the checkpoints and at the branches'
    ends (R, C, K), McCandlish et al.'s four noise expectations at the checkpoints, the α_{t_c} and c_b."""
    from backend.theory import branch as br

    _require_theory(config)
    problem, w0 = _problem(config), _w0(config)
    step = br.affine_step(problem, _sgd(config))
    alphas = config.lr.alphas(max(checkpoints) + 1)
    alpha = np.array([alphas[t] for t in checkpoints])
    lrs = alpha[None, :, None] * np.asarray(factors, dtype=np.float64)[:, None, :]  # (R, C, K)
    m, V = br.reference_states(problem, step, w0, alphas, float(th.noise_factor(b_ref, config.n, config.sampler)),
                               checkpoints)
    R, C, K = lrs.shape
    lane = np.arange(R * C * K)
    at = (lane // K) % C  # lanes ordered (rule, checkpoint, b)
    c_b = th.noise_factor(np.asarray(bs), config.n, config.sampler)
    m_end, V_end = br.advance(problem, step, m[at], V[at], lrs.reshape(-1), c_b[lane % K], np.asarray(steps)[lane % K])
    return {"exact": True, "loss0": float(problem.loss(w0)), "loss": br.expected_loss(problem, m, V),
            "branch_loss": br.expected_loss(problem, m_end, V_end).reshape(R, C, K),
            "lr": lrs, "noise_factor": c_b,
            **br.noise_moments(problem, step, m, V)}


def cached_simulation(config: LinearRegressionConfig, device: torch.device, cache: ResultCache
                      ) -> dict[str, Any] | None:
    """The cached result of ``simulate(config)`` on ``device`` if there is one (never computes)."""
    return cached_step_simulation(config, device, cache, np.arange(config.steps + 1))


def estimate(config: LinearRegressionConfig) -> dict[str, float]:
    if config.batch_schedule is not None:  # the segments one after another: their costs add (one run)
        return combine_costs([engine.estimate_cost(config.replicas, s, b, config.n, config.p, run_device_type(config))
                              for b, s in config.batch_schedule.segments])
    return combine_costs([engine.estimate_cost(config.replicas, config.steps, b, config.n, config.p,
                                               run_device_type(config)) for b in config.batch_sizes])


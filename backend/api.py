"""The backend's entry points: theory, simulate, polynomial and the derived checks. Pages and the CLI call only these.

Results are plain dicts of numpy arrays and JSON-safe metadata, cached on disk by (kind, normalised config, code).
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, Callable

import numpy as np
import torch

from backend.cache import CODE_VERSION, ResultCache, default_cache, make_key
from backend.costs import combine_costs, device_name, device_seconds
from backend import api_deep, api_mlp, api_sequence
from backend.config import (SAMPLER_LABELS, DeepLinearConfig, LinearRegressionConfig, MLPConfig,  # noqa: F401
                            SequenceConfig, paper_batch_sizes)

CLASSIFIERS = (MLPConfig, SequenceConfig)
from backend.engine import linreg as engine
from backend.errors import ConfigError, TooExpensive
from backend.exact import jsonable_number, rational, to_fraction, to_rational_array
from backend.stats import first_increase, polyfit_inv_b, z_scores
from backend.theory import linreg as th

QUANTITIES = ("var_g", "var_full_grad", "loss")
QUANTITY_LABELS = {
    "var_g": "var(g_t | F_0)",
    "var_full_grad": "var(∇L(w_t) | F_0)",
    "loss": "E L(w_t)",
    "var_g_rb": "var(g_t | F_0), Rao–Blackwellised",
}
EXACT_MAX_T = 30  # exact rational polynomials: cost grows like t² p⁴ with ever longer integers
FLOAT_POLY_MAX_T = 400
MAX_SIM_SECONDS = 3600.0
MAX_RESUMABLE_SECONDS = 12 * 3600.0  # MLP / sequence runs checkpoint every epoch: a cancelled run resumes
Z_ROUNDING = 1e-9  # relative float64 rounding floor added to the SE in z-scores (deterministic quantities at t = 0)


def resolve_device(name: str = "auto") -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device", "CUDA was requested but no CUDA device is available")
    if name == "cpu" or (name == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    return torch.device("cuda")


def _problem(config: LinearRegressionConfig, exact: bool = False) -> th.LinRegProblem:
    if exact:
        return th.LinRegProblem(to_rational_array(config.X), to_rational_array(config.y))
    return th.LinRegProblem(np.asarray(config.X, dtype=np.float64), np.asarray(config.y, dtype=np.float64))


def _w0(config: LinearRegressionConfig, exact: bool = False) -> np.ndarray:
    return to_rational_array(config.w0_values) if exact else np.asarray(config.w0_values, dtype=np.float64)


def _require_theory(config: LinearRegressionConfig) -> None:
    if config.sampler not in th.SAMPLERS_WITH_THEORY:
        raise ConfigError("sampler", f"no exact theory for {config.sampler!r}: batches within an epoch are dependent; "
                                     "choose without_replacement or with_replacement")


def _cache(cache: ResultCache | None) -> ResultCache:
    return cache if cache is not None else default_cache()


# -- theory -----------------------------------------------------------------------------------------------------

def theory_curves(config: LinearRegressionConfig, batch_sizes, steps: int) -> dict[str, np.ndarray]:
    """Exact var(g_t | F_0), var(∇L(w_t) | F_0), E L(w_t) (float64, stable recursion) for t = 0..steps: arrays (B, steps+1)."""
    _require_theory(config)
    c = th.noise_factor(np.asarray(batch_sizes), config.n, config.sampler)
    return th.moment_curves(_problem(config), _w0(config), config.lr.alphas(steps), c)


def quantities(config) -> list[str]:
    """The quantities a setting reports (curves, CLI fields)."""
    if isinstance(config, DeepLinearConfig):
        return api_deep.quantities(config)
    if isinstance(config, MLPConfig):
        from backend.engine.mlp import FIELDS

        return list(FIELDS)
    if isinstance(config, SequenceConfig):
        from backend.engine.mlp import FIELDS

        return [f for f in FIELDS if f != "gap_distorted"]
    return list(QUANTITIES)


def theory(config, cache: ResultCache | None = None) -> dict[str, Any]:
    """Exact curves for the config's batch sizes and t = 0..steps. ``available`` is False (curves None) without theory.

    Deep linear networks: exact values where an exact method applies, NaN elsewhere (see backend.api_deep).
    """
    if isinstance(config, DeepLinearConfig):
        return api_deep.theory(config, _cache(cache))
    if isinstance(config, CLASSIFIERS):
        return {"t": np.arange(config.epochs + 1), "batch_sizes": list(config.batch_sizes), "curves": None,
                "available": False, "note": "no exact theory for a nonlinear network: replica estimates only"}
    t = np.arange(config.steps + 1)
    if config.sampler not in th.SAMPLERS_WITH_THEORY:
        return {"t": t, "batch_sizes": list(config.batch_sizes), "curves": None, "available": False,
                "note": f"no exact theory for the sampler {config.sampler!r}"}

    def compute():
        curves = theory_curves(config, config.batch_sizes, config.steps)
        return {"kind": "theory"}, curves

    _, arrays, hit = _cache(cache).get_or_compute(_key("theory", config), compute)
    return {"t": t, "batch_sizes": list(config.batch_sizes), "curves": arrays, "available": True, "cached": hit,
            "note": "exact (float64, stable moment recursion of docs/theory.md §1)"}


def all_b_grid(n: int, max_points: int = 1000) -> np.ndarray:
    """Every b in [1, n] when n ≤ max_points, else a log-spaced grid of distinct integers including 1 and n."""
    if n <= max_points:
        return np.arange(1, n + 1)
    return np.unique(np.round(np.geomspace(1, n, max_points)).astype(int))


def theory_all_b(config: LinearRegressionConfig, cache: ResultCache | None = None) -> dict[str, Any]:
    """Exact curves for every b in [1, n] (a log grid when n > 1000), t = 0..steps: the var-against-b view and the
    check of Theorems 1–2."""
    _require_theory(config)
    b = all_b_grid(config.n)

    def compute():
        return {"kind": "theory_all_b"}, theory_curves(config, b, config.steps)

    _, arrays, hit = _cache(cache).get_or_compute(_key("theory_all_b", config), compute)
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


# -- polynomials ------------------------------------------------------------------------------------------------

def polynomial(config, t: int, quantity: str = "var_g", exact: bool | None = None) -> dict[str, Any]:
    """Coefficients of ``quantity`` at step t as a polynomial in 1/b (and in the noise factor c).

    Exact rational coefficients when data, w0 and schedule are rational (and ``exact`` is not False), for t ≤ 40;
    float64 otherwise (accurate to t ≈ 50 in the 1/b basis; the c basis stays well conditioned).
    Deep linear networks: the exact method that applies at t (backend.api_deep.polynomial).
    """
    if isinstance(config, DeepLinearConfig):
        return api_deep.polynomial(config, t, quantity)
    if isinstance(config, CLASSIFIERS):
        raise ConfigError("setting", "no exact polynomial for a nonlinear network")
    _require_theory(config)
    if quantity not in QUANTITIES:
        raise ConfigError("quantity", f"expected one of {list(QUANTITIES)}, got {quantity!r}")
    if not isinstance(t, int) or t < 0:
        raise ConfigError("t", f"expected a non-negative integer, got {t!r}")
    use_exact = config.exact if exact is None else exact
    if use_exact and not config.exact:
        raise ConfigError("exact", "exact coefficients need rational data (not standardized), rational w0 and lr.c")
    if use_exact and t > EXACT_MAX_T:
        raise TooExpensive("t", f"exact rational coefficients are limited to t ≤ {EXACT_MAX_T} (cost grows like "
                                f"t²·p⁴ with ever longer integers); use float coefficients for larger t")
    if not use_exact and t > FLOAT_POLY_MAX_T:
        raise TooExpensive("t", f"polynomial coefficients are limited to t ≤ {FLOAT_POLY_MAX_T}; beyond t ≈ 50 float "
                                "coefficients in 1/b lose accuracy anyway — use the curves (theory) instead")
    alphas = config.lr.alphas(t, exact=use_exact)
    if use_exact:
        alphas = [rational(a) for a in alphas]
    coeffs_c = th.polynomial_in_c(_problem(config, use_exact), _w0(config, use_exact), alphas, t)[quantity]
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


def polynomial_latex(poly: dict[str, Any], variable: str = r"\frac{1}{b}", digits: int = 6,
                     max_digits: int | None = None, line_width: int | None = None) -> str:
    """LaTeX of Σ_k β_k (1/b)^k: exact fractions as \\frac, floats with ``digits`` significant digits.

    When an exact coefficient has more than ``max_digits`` characters the whole polynomial is shown rounded, prefixed
    by ``\\approx`` (the exact coefficients stay in ``poly["coefficients"]``). With ``line_width``, a line break
    ``\\\\ &\\qquad`` (for an aligned block) goes before a term that would take a line past about that many
    characters (a fraction counts its longer part, a power of 1/b five).
    """
    coeffs = poly["coefficients"]
    prefix = ""
    if max_digits is not None and any(isinstance(c, str) and len(c) > max_digits for c in coeffs):
        coeffs = [float(Fraction(c)) for c in coeffs]
        prefix = r"\approx "
    terms = []
    for k, beta in enumerate(coeffs):
        if isinstance(beta, str):
            val = Fraction(beta)
            if val == 0:
                continue
            num, den = abs(val.numerator), val.denominator
            mag = str(num) if den == 1 else rf"\frac{{{num}}}{{{den}}}"
            width = max(len(str(num)), len(str(den)))
            neg = val < 0
        else:
            if beta == 0:
                continue
            neg = beta < 0
            mant, _, exp = f"{abs(beta):.{digits - 1}e}".partition("e")
            e = int(exp)
            mag = mant if e == 0 else rf"{mant}\times 10^{{{e}}}"
            width = len(mant) + (0 if e == 0 else 4 + len(exp))
        power = "" if k == 0 else (rf"\left({variable}\right)" if k == 1 else rf"\left({variable}\right)^{{{k}}}")
        terms.append(("-" if neg else "+", mag + (r"\," + power if power else ""), width + 2 + (5 if power else 0)))
    if not terms:
        return prefix + "0"
    text = ("-" if terms[0][0] == "-" else "") + terms[0][1]
    used = terms[0][2]
    for sign, body, width in terms[1:]:
        if line_width is not None and used + width > line_width:
            text += rf" \\ &\qquad {sign} {body}"
            used = width
        else:
            text += f" {sign} {body}"
            used += width
    return prefix + text


def polynomial_equation(lhs: str, poly: dict[str, Any], max_digits: int | None = 40, line_width: int = 48) -> str:
    """``lhs = Σ_k β_k (1/b)^k`` as an aligned LaTeX block, broken into lines of about ``line_width`` characters so a
    long polynomial does not run off the page."""
    return (r"\begin{aligned}" + lhs + " &= " + polynomial_latex(poly, max_digits=max_digits, line_width=line_width)
            + r"\end{aligned}")


def eval_poly_inv_b(coeffs: list, b: np.ndarray) -> np.ndarray:
    return th.eval_polynomial([float(Fraction(c)) if isinstance(c, str) else c for c in coeffs], 1.0 / np.asarray(b))


def paper_fit(b: np.ndarray, values: np.ndarray, degree: int = 6) -> np.ndarray:
    """The paper's Figure 2b fit: least squares polynomial of ``degree`` in 1/b (with a constant term)."""
    return polyfit_inv_b(np.asarray(b), np.asarray(values), degree)


# -- simulation -------------------------------------------------------------------------------------------------

@dataclass
class Progress:
    """Thread-safe progress of a run: units done out of total, elapsed time and an ETA; read by the page."""

    total: int
    done: int = 0
    message: str = ""
    started: float = field(default_factory=time.monotonic)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def advance(self, units: int) -> None:
        with self.lock:
            self.done += units

    @property
    def fraction(self) -> float:
        return min(1.0, self.done / self.total) if self.total else 1.0

    @property
    def eta_seconds(self) -> float | None:
        f = self.fraction
        if f <= 0:
            return None
        return (time.monotonic() - self.started) * (1 - f) / f


def estimate(config) -> dict[str, Any]:
    """Estimated memory (bytes, the largest batch size), time (seconds on 2 CPU cores), FLOPs and sequential device
    steps of ``simulate``, and the setting's name (backend.costs turns them into time on a GPU)."""
    if isinstance(config, DeepLinearConfig):
        est = api_deep.estimate(config)
    elif isinstance(config, MLPConfig):
        est = api_mlp.estimate(config)
    elif isinstance(config, SequenceConfig):
        est = api_sequence.estimate(config)
    else:
        est = combine_costs([engine.estimate_cost(config.replicas, config.steps, b, config.n, config.p)
                             for b in config.batch_sizes])
    return {**est, "setting": config.setting}


def cuda_memory(device: torch.device) -> dict[str, float]:
    """The CUDA card's memory in bytes: ``free`` (not held by anyone), ``total``, and what this process's caching
    allocator ``reserved`` and has ``allocated`` to live tensors."""
    free, total = torch.cuda.mem_get_info(device)
    return {"free": float(free), "total": float(total), "reserved": float(torch.cuda.memory_reserved(device)),
            "allocated": float(torch.cuda.memory_allocated(device))}


def available_memory(device: torch.device) -> float:
    """Bytes a run can use on ``device``. On CUDA: the free memory plus what torch's caching allocator holds without
    a live tensor in it (reserved − allocated): an earlier run in this process (the app's server is one process)
    leaves its blocks cached, and the next run reuses them. On CPU: MemAvailable."""
    if device.type == "cuda":
        mem = cuda_memory(device)
        return mem["free"] + max(0.0, mem["reserved"] - mem["allocated"])
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return float(line.split()[1]) * 1024
    except OSError:
        pass
    return 8.0 * 1024**3


def guard(config, device: torch.device) -> dict[str, float]:
    """Refuse a run that would not fit in memory or would take more than an hour (12 hours for the MLP and sequence
    runs, which checkpoint every epoch and resume), with the estimate, the device it is for and what to change.

    Time on the device by backend.costs.device_seconds (2-core CPU model, or the GPU model at the card's rate)."""
    est = dict(estimate(config))
    est["seconds"] = device_seconds(est, device)
    avail = available_memory(device)
    name = device_name(device)
    if est["memory_bytes"] > 0.5 * avail:
        raise TooExpensive("replicas", f"the run needs about {est['memory_bytes'] / 2**30:.1f} GiB but "
                                       f"{avail / 2**30:.1f} GiB are available on {name} (a run may use half): "
                                       "reduce replicas or steps")
    limit = MAX_RESUMABLE_SECONDS if isinstance(config, CLASSIFIERS) else MAX_SIM_SECONDS
    if est["seconds"] > limit:
        raise TooExpensive("replicas", f"the run would take about {est['seconds'] / 60:.0f} minutes on {name} "
                                       f"(the limit is {limit / 3600:.0f} h): reduce replicas, steps or epochs or the "
                                       "number of batch sizes (or use a GPU)")
    return est


def simulation_key(config) -> str:
    if isinstance(config, DeepLinearConfig):
        return api_deep._key("simulate_deep", config, {"device": resolve_device(config.device).type})
    if isinstance(config, MLPConfig):
        return api_mlp._key("simulate_mlp", config, {"device": resolve_device(config.device).type})
    if isinstance(config, SequenceConfig):
        return api_sequence._key("simulate_sequence", config, {"device": resolve_device(config.device).type})
    return _key("simulate", config, {"device": resolve_device(config.device).type})


def cached_simulation(config, cache: ResultCache | None = None) -> dict[str, Any] | None:
    """The cached result of ``simulate(config)`` if there is one (never computes)."""
    found = _cache(cache).get(simulation_key(config))
    if found is not None and isinstance(config, CLASSIFIERS):
        res = api_mlp.shape_result(config, *found, hit=True)
        if isinstance(config, SequenceConfig):
            for b in config.batch_sizes:
                res["curves"][b]["gap_distorted"] = np.full(config.epochs + 1, np.nan)
        return res
    if found is not None and isinstance(config, DeepLinearConfig):
        res = _sim_result(config, *found, hit=True)
        res["t"] = np.asarray(api_deep.engine.recorded_steps(config.steps, config.record_every))
        return res
    return None if found is None else _sim_result(config, *found, hit=True)


def _sim_result(config, meta: dict, arrays: dict, hit: bool) -> dict[str, Any]:
    curves: dict[str, dict[str, np.ndarray]] = {}
    for k, v in arrays.items():
        if "." in k:
            name, stat = k.rsplit(".", 1)
            curves.setdefault(name, {})[stat] = v
    return {"t": np.arange(config.steps + 1), "batch_sizes": list(config.batch_sizes), "curves": curves,
            "finite_count": arrays["finite_count"], "meta": meta, "cached": hit}


def simulate(config, progress: Progress | Callable[[int], None] | None = None,
             cancel: threading.Event | None = None, cache: ResultCache | None = None) -> dict[str, Any]:
    """Run ``replicas`` SGD replicas per batch size; estimates with batch-means SEs and 95 % intervals per t.

    Curves (arrays (B, T+1)): var_g, var_full_grad, loss and, for i.i.d. samplers, var_g_rb (Rao–Blackwellised:
    mean of Lemma 1's conditional variance plus the spread of ∇L(w_t); same expectation, smaller SE).
    """
    device = resolve_device(config.device)
    guard(config, device)
    if isinstance(config, DeepLinearConfig):
        return api_deep.simulate(config, device, _cache(cache), progress, cancel)
    if isinstance(config, MLPConfig):
        return api_mlp.simulate(config, device, _cache(cache), progress, cancel)
    if isinstance(config, SequenceConfig):
        return api_sequence.simulate(config, device, _cache(cache), progress, cancel)
    key = simulation_key(config)

    def compute():
        advance = progress.advance if isinstance(progress, Progress) else progress
        t0 = time.monotonic()
        alphas = config.lr.alphas(config.steps)
        per_b = []
        for b in config.batch_sizes:
            c = (float(th.noise_factor(b, config.n, config.sampler))
                 if config.sampler in th.SAMPLERS_WITH_THEORY else None)
            per_b.append(engine.run_replicas(
                np.asarray(config.X, dtype=np.float64), np.asarray(config.y, dtype=np.float64),
                _w0(config), alphas, b, config.replicas, config.sampler, config.seed, device, c,
                progress=advance, cancel=cancel))
        arrays = {}
        for name in per_b[0].curves:
            for stat in ("value", "se", "lo", "hi"):
                arrays[f"{name}.{stat}"] = np.stack([r.curves[name][stat] for r in per_b])
        arrays["finite_count"] = np.stack([r.finite_count for r in per_b])
        meta = {
            "kind": "simulate",
            "device": str(device),
            "sampler": config.sampler,
            "sampler_label": SAMPLER_LABELS[config.sampler],
            "groups": per_b[0].groups,
            "diverged_at": [r.diverged_at for r in per_b],
            "diverged_replicas": [r.diverged_replicas for r in per_b],
            "seconds": time.monotonic() - t0,
            "torch": torch.__version__,
            "code_version": CODE_VERSION,
        }
        return meta, arrays

    if isinstance(progress, Progress):
        progress.total = config.replicas * (config.steps + 1) * len(config.batch_sizes)
    meta, arrays, hit = _cache(cache).get_or_compute(key, compute)
    if isinstance(progress, Progress):
        progress.done = progress.total
    return _sim_result(config, meta, arrays, hit)


def agreement(theory_res: dict, sim_res: dict, quantity: str = "var_g", estimate_name: str | None = None
              ) -> dict[str, Any]:
    """z = (estimate − exact)/SE for every (b, t), with SE² augmented by (1e-9 · exact)² for float64 rounding.

    NaN where the SE and the exact value are both zero (b = n, or t = 0 for deterministic quantities).
    ``estimate_name`` picks another estimator of the same quantity (e.g. var_g_rb for var_g).
    """
    exact = theory_res["curves"][quantity]
    est = sim_res["curves"][estimate_name or quantity]
    se = np.sqrt(est["se"] ** 2 + (Z_ROUNDING * np.abs(exact)) ** 2)
    z = z_scores(est["value"], se, exact)
    finite = np.isfinite(z)
    k = int(finite.sum())
    return {
        "z": z,
        "count": k,
        "within_2": float((np.abs(z[finite]) <= 2).mean()) if k else math.nan,
        "within_4": float((np.abs(z[finite]) <= 4).mean()) if k else math.nan,
        "max_abs": float(np.abs(z[finite]).max()) if k else math.nan,
    }


_NOT_IN_THEORY = {"replicas", "seed", "device"}


def _key(kind: str, config: LinearRegressionConfig, extra: dict | None = None) -> str:
    """Cache key; theory keys leave out the fields that only the simulation reads."""
    cfg = config.to_json()
    if kind.startswith("theory"):
        drop = _NOT_IN_THEORY | ({"batch_sizes"} if kind == "theory_all_b" else set())
        cfg = {k: v for k, v in cfg.items() if k not in drop}
    return make_key(kind, cfg, extra)

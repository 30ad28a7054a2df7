"""One frozen, typed config per setting; every field is validated here, whether it comes from widgets, CLI JSON or Python.

``parse_config(dict)`` dispatches on ``"setting"`` and raises :class:`ConfigError` naming the field. ``config.to_json()``
is the normalised form: it round-trips through ``parse_config`` and is what the cache key, the downloads and the URL use.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from fractions import Fraction
from functools import lru_cache
from typing import Any, ClassVar

import numpy as np

from backend import datasets
from backend.errors import ConfigError
from backend.exact import is_exact, jsonable_number, parse_number

SCHEDULES = ("constant", "inverse", "inverse_offset")
SAMPLERS = ("without_replacement", "with_replacement", "epoch_reshuffle")
SAMPLER_LABELS = {
    "without_replacement": "uniform b-subsets without replacement, independent per step (paper §3.1)",
    "with_replacement": "b indices drawn with replacement, independent per step",
    "epoch_reshuffle": "reshuffle each epoch, walk the permutation in batches of b (last partial batch dropped)",
}
DEVICES = ("auto", "cpu", "cuda")
MAX_STEPS = 20_000
MAX_REPLICAS = 1_000_000
MIN_REPLICAS = 10
MAX_BATCH_SIZES = 64


class _Fields:
    """Reads fields from a dict, remembers which were used, and refuses unknown keys."""

    def __init__(self, raw: Any, where: str = "") -> None:
        if not isinstance(raw, dict):
            raise ConfigError(where or "config", f"expected a JSON object, got {type(raw).__name__}")
        self.raw = raw
        self.where = where
        self.used: set[str] = set()

    def name(self, key: str) -> str:
        return f"{self.where}.{key}" if self.where else key

    def get(self, key: str, default: Any = None) -> Any:
        self.used.add(key)
        return self.raw.get(key, default)

    def has(self, key: str) -> bool:
        return key in self.raw

    def finish(self) -> None:
        unknown = sorted(set(self.raw) - self.used)
        if unknown:
            raise ConfigError(self.name(unknown[0]), f"unknown field; expected one of {sorted(self.used)}")


def _int(value: Any, field_name: str, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ConfigError(field_name, f"expected an integer, got {value!r}")
    if isinstance(value, str):
        try:
            value = float(value) if "." in value or "e" in value.lower() else int(value)
        except ValueError:
            raise ConfigError(field_name, f"expected an integer, got {value!r}") from None
    if isinstance(value, float):
        if not math.isfinite(value) or value != int(value):
            raise ConfigError(field_name, f"expected an integer, got {value!r}")
        value = int(value)
    if not lo <= value <= hi:
        raise ConfigError(field_name, f"must be between {lo} and {hi}, got {value}")
    return int(value)


def _bool(value: Any, field_name: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise ConfigError(field_name, f"expected true or false, got {value!r}")


def _choice(value: Any, field_name: str, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ConfigError(field_name, f"expected one of {list(choices)}, got {value!r}")
    return value


def _positive(value: Any, field_name: str, allow_zero: bool = False) -> Fraction | float:
    x = parse_number(value, field_name)
    if x < 0 or (x == 0 and not allow_zero):
        raise ConfigError(field_name, f"must be {'non-negative' if allow_zero else 'positive'}, got {jsonable_number(x)}")
    return x


@dataclass(frozen=True)
class Schedule:
    """Learning-rate schedule (docs/theory.md §0): constant α_t = c; inverse α_t = c/(t+1); inverse_offset α_t = c/(t+1+t0)."""

    kind: str = "inverse"
    c: Fraction | float = Fraction(1, 2)
    t0: int = 0

    @classmethod
    def parse(cls, raw: Any, where: str = "lr") -> "Schedule":
        if isinstance(raw, (int, float, str)) and not isinstance(raw, bool):
            return cls("constant", _positive(raw, where))
        f = _Fields(raw, where)
        kind = _choice(f.get("schedule", "inverse"), f.name("schedule"), SCHEDULES)
        c = _positive(f.get("c", Fraction(1, 2)), f.name("c"))
        t0 = _int(f.get("t0", 0), f.name("t0"), 0, 10**9) if kind == "inverse_offset" else 0
        if kind != "inverse_offset" and f.raw.get("t0", 0) not in (0, None):
            raise ConfigError(f.name("t0"), "only the 'inverse_offset' schedule takes t0")
        f.finish()
        return cls(kind, c, t0)

    def alpha(self, t: int) -> Fraction | float:
        if self.kind == "constant":
            return self.c
        denom = t + 1 + (self.t0 if self.kind == "inverse_offset" else 0)
        return self.c / denom

    def alphas(self, T: int, exact: bool = False) -> list:
        vals = [self.alpha(t) for t in range(T)]
        if exact:
            return [Fraction(v) for v in vals]
        return [float(v) for v in vals]

    @property
    def exact(self) -> bool:
        return isinstance(self.c, Fraction)

    def to_json(self) -> dict:
        out: dict[str, Any] = {"schedule": self.kind, "c": jsonable_number(self.c)}
        if self.kind == "inverse_offset":
            out["t0"] = self.t0
        return out

    def describe(self) -> str:
        c = jsonable_number(self.c)
        c = f"({c})" if isinstance(c, str) and "/" in c else c  # (1/10)/(t+1), not 1/10/(t+1)
        return {"constant": f"α_t = {c}", "inverse": f"α_t = {c}/(t+1)",
                "inverse_offset": f"α_t = {c}/(t+1+{self.t0})"}[self.kind]


@lru_cache(maxsize=8)
def _builtin_dataset(name: str) -> datasets.RegressionData:
    return datasets.graduate_admission()


def _parse_dataset(raw: Any) -> tuple[dict, datasets.RegressionData]:
    if isinstance(raw, str):
        raw = {"name": raw}
    f = _Fields(raw, "dataset")
    name = f.get("name", "inline" if "X" in raw else None)
    if name == "graduate_admission":
        f.finish()
        return {"name": name}, _builtin_dataset(name)
    if name == "synthetic":
        n = _int(f.get("n", 200), "dataset.n", 2, datasets.MAX_ROWS)
        p = _int(f.get("p", 5), "dataset.p", 1, 50)
        noise = float(_positive(f.get("noise", 0.5), "dataset.noise", allow_zero=True))
        seed = _int(f.get("seed", 0), "dataset.seed", 0, 2**32 - 1)
        f.finish()
        return {"name": name, "n": n, "p": p, "noise": noise, "seed": seed}, datasets.synthetic(n, p, noise, seed)
    if name == "inline":
        data = datasets.inline(f.get("X"), f.get("y"))
        names = f.get("columns")
        if names is not None:
            if not isinstance(names, list) or len(names) != data.X.shape[1] + 1 or not all(isinstance(s, str) for s in names):
                raise ConfigError("dataset.columns", "expected the feature names then the target name, as strings")
            data = datasets.RegressionData(data.X, data.y, tuple(names[:-1]), names[-1])
        f.finish()
        norm = {"name": "inline", "X": [[jsonable_number(v) for v in row] for row in data.X],
                "y": [jsonable_number(v) for v in data.y]}
        if names is not None:
            norm["columns"] = list(names)
        return norm, data
    raise ConfigError("dataset.name", f"expected 'graduate_admission', 'synthetic' or 'inline', got {name!r}")


def _parse_w0(raw: Any, p: int) -> tuple[Any, np.ndarray]:
    if isinstance(raw, dict):
        f = _Fields(raw, "w0")
        seed = _int(f.get("seed", 0), "w0.seed", 0, 2**32 - 1)
        scale = float(_positive(f.get("scale", 1.0), "w0.scale", allow_zero=True))
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


def _parse_batch_sizes(raw: Any, n: int, field_name: str = "batch_sizes") -> tuple[int, ...]:
    if isinstance(raw, (int, str)) and not isinstance(raw, bool):
        raw = [raw]
    if not isinstance(raw, (list, tuple)) or not raw:
        raise ConfigError(field_name, "expected a non-empty list of batch sizes")
    if len(raw) > MAX_BATCH_SIZES:
        raise ConfigError(field_name, f"at most {MAX_BATCH_SIZES} batch sizes, got {len(raw)}")
    out = sorted({_int(b, f"{field_name}[{i}]", 1, 10**9) for i, b in enumerate(raw)})
    if out[-1] > n:
        raise ConfigError(field_name, f"batch size {out[-1]} exceeds the number of samples n = {n}")
    return tuple(out)


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
    # derived (not part of the JSON): the design matrix and the weights
    X: np.ndarray = field(default=None, repr=False, compare=False)
    y: np.ndarray = field(default=None, repr=False, compare=False)
    w0_values: np.ndarray = field(default=None, repr=False, compare=False)
    exact_data: bool = field(default=False, repr=False, compare=False)
    feature_names: tuple[str, ...] = field(default=(), repr=False, compare=False)

    @classmethod
    def parse(cls, raw: dict) -> "LinearRegressionConfig":
        f = _Fields(raw)
        f.get("setting")
        val = _default_reader(f, cls.DEFAULTS)
        ds_json, data = _parse_dataset(val("dataset"))
        standardize = _bool(val("standardize"), "standardize")
        intercept = _bool(val("intercept"), "intercept")
        X, y, exact = datasets.design_matrix(data, standardize, intercept)
        n, p = X.shape
        w0_json, w0_vals = _parse_w0(val("w0"), p)
        lr = Schedule.parse(val("lr"))
        steps = _int(val("steps"), "steps", 0, MAX_STEPS)
        default_b = [b for b in cls.DEFAULTS["batch_sizes"] if b <= n] or [1]  # a small data set: the b that fit
        batch_sizes = _parse_batch_sizes(f.get("batch_sizes", default_b), n)
        replicas = _int(val("replicas"), "replicas", MIN_REPLICAS, MAX_REPLICAS)
        seed = _int(val("seed"), "seed", 0, 2**32 - 1)
        sampler = _choice(val("sampler"), "sampler", SAMPLERS)
        device = _choice(val("device"), "device", DEVICES)
        f.finish()
        names = tuple(data.feature_names) + (("intercept",) if intercept else ())
        return cls(ds_json, standardize, intercept, w0_json, lr, steps, batch_sizes, replicas, seed, sampler, device,
                   X, y, w0_vals, exact, names)

    @property
    def n(self) -> int:
        return int(self.X.shape[0])

    @property
    def p(self) -> int:
        return int(self.X.shape[1])

    @property
    def exact(self) -> bool:
        """True when data, initial weights and schedule are all rational: polynomials then have exact coefficients."""
        return self.exact_data and is_exact(self.w0_values) and self.lr.exact

    def to_json(self) -> dict:
        return {
            "setting": self.setting,
            "dataset": self.dataset,
            "standardize": self.standardize,
            "intercept": self.intercept,
            "w0": self.w0,
            "lr": self.lr.to_json(),
            "steps": self.steps,
            "batch_sizes": list(self.batch_sizes),
            "replicas": self.replicas,
            "seed": self.seed,
            "sampler": self.sampler,
            "device": self.device,
        }

    def replace(self, **changes: Any) -> "LinearRegressionConfig":
        """A new validated config with some JSON fields changed."""
        raw = self.to_json()
        raw.update({k: (v.to_json() if isinstance(v, Schedule) else v) for k, v in changes.items()})
        return LinearRegressionConfig.parse(raw)


def paper_batch_sizes(n: int = 500) -> list[int]:
    """Figure 2b's batch sizes: powers of two and multiples of 40 in [2, n], plus b = n (21 values for n = 500)."""
    powers = [2**k for k in range(1, 20) if 2**k <= n]
    forties = list(range(40, n + 1, 40))
    return sorted(set(powers + forties + [n]))


PRESETS: dict[str, dict[str, Any]] = {
    "laptop": {"steps": 200, "batch_sizes": [2, 16, 64, 256], "replicas": 1000},
    "paper (Figure 2a)": {"steps": 2000, "batch_sizes": [2, 16, 64, 256], "replicas": 1000},
    "paper (Figure 2b)": {"steps": 40, "batch_sizes": paper_batch_sizes(500), "replicas": 200_000},
}


MAX_WIDTH = 1024
DTYPES = ("float64", "float32")


def _parse_weights(raw: Any, dims: tuple[int, ...], name: str, default_seed: int) -> tuple[Any, list[np.ndarray]]:
    """A list of the d matrices [W_1, …, W_d] (W_k of shape p_k × p_{k−1}, nested lists, exact strings allowed),
    or {"seed": int, "scale": number}: entries N(0, scale² / p_{k−1}) from numpy's default_rng(seed)."""
    d = len(dims) - 1
    if isinstance(raw, dict):
        f = _Fields(raw, name)
        seed = _int(f.get("seed", default_seed), f"{name}.seed", 0, 2**32 - 1)
        scale = float(_positive(f.get("scale", 1.0), f"{name}.scale", allow_zero=True))
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
    teacher_values: list = field(default=None, repr=False, compare=False)
    w0_values: list = field(default=None, repr=False, compare=False)

    @classmethod
    def parse(cls, raw: dict) -> "DeepLinearConfig":
        f = _Fields(raw)
        f.get("setting")
        val = _default_reader(f, cls.DEFAULTS)
        dims_raw = val("dims")
        if not isinstance(dims_raw, list) or not 3 <= len(dims_raw) <= 5:
            raise ConfigError("dims", "expected [p, p_1, …, p_d] with depth d from 2 to 4")
        dims = tuple(_int(v, f"dims[{i}]", 1, MAX_WIDTH) for i, v in enumerate(dims_raw))
        teacher_json, teacher = _parse_weights(val("teacher"), dims, "teacher", 1)
        w0_json, w0 = _parse_weights(val("w0"), dims, "w0", 0)
        lr = Schedule.parse(val("lr"))
        steps = _int(val("steps"), "steps", 0, MAX_STEPS)
        batch_sizes = _parse_batch_sizes(val("batch_sizes"), 10**6)
        replicas = _int(val("replicas"), "replicas", MIN_REPLICAS, MAX_REPLICAS)
        seed = _int(val("seed"), "seed", 0, 2**32 - 1)
        device = _choice(val("device"), "device", DEVICES)
        dtype = _choice(val("dtype"), "dtype", DTYPES)
        record_every = _int(val("record_every"), "record_every", 1, MAX_STEPS)
        f.finish()
        return cls(dims, teacher_json, w0_json, lr, steps, batch_sizes, replicas, seed, device, dtype, record_every,
                   teacher, w0)

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
                and all(is_exact(M) for M in self.teacher_values) and all(is_exact(M) for M in self.w0_values))

    def to_json(self) -> dict:
        return {"setting": self.setting, "dims": list(self.dims), "teacher": self.teacher, "w0": self.w0,
                "lr": self.lr.to_json(), "steps": self.steps, "batch_sizes": list(self.batch_sizes),
                "replicas": self.replicas, "seed": self.seed, "device": self.device, "dtype": self.dtype,
                "record_every": self.record_every}

    def replace(self, **changes: Any) -> "DeepLinearConfig":
        raw = self.to_json()
        raw.update({k: (v.to_json() if isinstance(v, Schedule) else v) for k, v in changes.items()})
        return DeepLinearConfig.parse(raw)


DEEP_LINEAR_PRESETS: dict[str, dict[str, Any]] = {
    "laptop": {"dims": [3, 4, 2], "steps": 50, "batch_sizes": [1, 2, 4, 8, 16, 32], "replicas": 4000},
    "scalar network": {"dims": [1, 1, 1], "steps": 3, "batch_sizes": [4, 8, 16, 32, 64], "replicas": 20000,
                       "w0": [[["1/2"]], [["3/4"]]], "teacher": [[["1"]], [["1"]]],
                       "lr": {"schedule": "constant", "c": "1/10"}},
    # the paper does not give its weights' scale; at scale 1 with α_1 = 0.1 most replicas diverge for b ≤ 8
    "paper (Figure 3)": {"dims": [64, 256, 128], "steps": 1000, "batch_sizes": [4, 8, 16, 32, 64],
                         "replicas": 1000, "lr": {"schedule": "inverse", "c": "1/10"}, "dtype": "float32",
                         "record_every": 10, "w0": {"seed": 0, "scale": 0.5}, "teacher": {"seed": 1, "scale": 0.5}},
}


MLP_SAMPLERS = ("epoch_reshuffle", "without_replacement")


def _default_reader(f: "_Fields", defaults: dict[str, Any]):
    """val(key): the field if given, else the config class's default (its DEFAULTS, the one place they are stated)."""
    return lambda key: f.get(key, defaults[key])


def _replica_run_fields(val) -> dict[str, Any]:
    """The fields every replica classifier shares (validated)."""
    return {"noise_samples": _int(val("noise_samples"), "noise_samples", 2, 100_000),
            "eval_size": _int(val("eval_size"), "eval_size", 2, 10**7),
            "seed": _int(val("seed"), "seed", 0, 2**32 - 1),
            "device": _choice(val("device"), "device", DEVICES),
            "dtype": _choice(val("dtype"), "dtype", DTYPES)}
MLP_PRESETS: dict[str, dict[str, Any]] = {
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
        "seed": 0, "device": "auto", "dtype": "float32"}
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
    n_train: int = field(default=0, repr=False, compare=False)

    @classmethod
    def parse(cls, raw: dict) -> "MLPConfig":
        f = _Fields(raw)
        f.get("setting")
        val = _default_reader(f, cls.DEFAULTS)
        ds_raw = val("dataset")
        if isinstance(ds_raw, str):
            ds_raw = {"name": ds_raw}
        fd = _Fields(ds_raw, "dataset")
        name = _choice(fd.get("name", "digits"), "dataset.name", ("digits", "fashion_mnist", "idx"))
        dataset: dict[str, Any] = {"name": name}
        if name == "idx":
            path = fd.get("path")
            if not isinstance(path, str) or not path:
                raise ConfigError("dataset.path", "the directory holding the IDX files is required for 'idx'")
            dataset["path"] = path
        for key in ("train_size", "val_size"):
            if fd.get(key) is not None:
                dataset[key] = _int(fd.raw[key], f"dataset.{key}", 2, 10**7)
        fd.finish()
        hidden_raw = val("hidden")
        if not isinstance(hidden_raw, list) or not 1 <= len(hidden_raw) <= 4:
            raise ConfigError("hidden", "expected a list of 1 to 4 hidden widths")
        hidden = tuple(_int(h, f"hidden[{i}]", 1, 4096) for i, h in enumerate(hidden_raw))
        inits = _int(val("inits"), "inits", 1, 50)
        replicas = _int(val("replicas"), "replicas", 2, 10_000)
        epochs = _int(val("epochs"), "epochs", 1, 100_000)
        lr = Schedule.parse(val("lr"))
        sampler = _choice(val("sampler"), "sampler", MLP_SAMPLERS)
        dist_raw = val("distortion")
        fdist = _Fields(dist_raw, "distortion")
        distortion = {"alpha": float(_positive(fdist.get("alpha", 8), "distortion.alpha", allow_zero=True)),
                      "sigma": float(_positive(fdist.get("sigma", 2), "distortion.sigma", allow_zero=True)),
                      "every": _int(fdist.get("every", 1), "distortion.every", 1, 100_000)}
        fdist.finish()
        common = _replica_run_fields(val)
        n_train = _mlp_train_size(dataset)
        batch_sizes = _parse_batch_sizes(val("batch_sizes"), n_train)
        f.finish()
        return cls(dataset, hidden, inits, replicas, epochs, lr, batch_sizes, sampler, distortion, n_train=n_train,
                   **common)

    def to_json(self) -> dict:
        return {"setting": self.setting, "dataset": self.dataset, "hidden": list(self.hidden), "inits": self.inits,
                "replicas": self.replicas, "epochs": self.epochs, "lr": self.lr.to_json(),
                "batch_sizes": list(self.batch_sizes), "sampler": self.sampler, "distortion": self.distortion,
                "noise_samples": self.noise_samples, "eval_size": self.eval_size, "seed": self.seed,
                "device": self.device, "dtype": self.dtype}

    def replace(self, **changes: Any) -> "MLPConfig":
        raw = self.to_json()
        raw.update({k: (v.to_json() if isinstance(v, Schedule) else v) for k, v in changes.items()})
        return MLPConfig.parse(raw)


@lru_cache(maxsize=16)
def _mlp_train_size_cached(spec: str) -> int:
    from backend.images import load_dataset

    return len(load_dataset(json.loads(spec)).x_train)


def _mlp_train_size(dataset: dict) -> int:
    return _mlp_train_size_cached(json.dumps(dataset, sort_keys=True))


SEQUENCE_PRESETS: dict[str, dict[str, Any]] = {
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
        "device": "auto", "dtype": "float32"}
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
    n_train: int = field(default=0, repr=False, compare=False)

    @classmethod
    def parse(cls, raw: dict) -> "SequenceConfig":
        f = _Fields(raw)
        f.get("setting")
        val = _default_reader(f, cls.DEFAULTS)
        c_raw = val("corpus")
        if isinstance(c_raw, str):
            c_raw = {"name": c_raw}
        fc = _Fields(c_raw, "corpus")
        name = _choice(fc.get("name", "yelp"), "corpus.name", ("yelp", "amazon", "imdb", "all", "file"))
        corpus: dict[str, Any] = {"name": name}
        if name == "file":
            path = fc.get("path")
            if not isinstance(path, str) or not path:
                raise ConfigError("corpus.path", "the path of a TSV or CSV file of (text, label) is required")
            corpus["path"] = path
            corpus["format"] = _choice(fc.get("format", "tsv"), "corpus.format", ("tsv", "csv"))
        fc.finish()
        tokenizer = _choice(val("tokenizer"), "tokenizer", ("word", "char"))
        max_len = _int(val("max_len"), "max_len", 2, 1024)
        vocab = _int(val("vocab"), "vocab", 3, 200_000)
        layers = _int(val("layers"), "layers", 1, 24)
        heads = _int(val("heads"), "heads", 1, 32)
        width = _int(val("width"), "width", 2, 2048)
        if width % heads:
            raise ConfigError("width", f"must be a multiple of heads ({heads}), got {width}")
        inits = _int(val("inits"), "inits", 1, 50)
        replicas = _int(val("replicas"), "replicas", 2, 10_000)
        epochs = _int(val("epochs"), "epochs", 1, 10_000)
        fo = _Fields(val("optimizer"), "optimizer")
        opt = {"lr": float(_positive(fo.get("lr", "1e-3"), "optimizer.lr")),
               "eps": float(_positive(fo.get("eps", "1e-8"), "optimizer.eps")),
               "beta1": float(_positive(fo.get("beta1", "0.9"), "optimizer.beta1", allow_zero=True)),
               "beta2": float(_positive(fo.get("beta2", "0.999"), "optimizer.beta2", allow_zero=True)),
               "weight_decay": float(_positive(fo.get("weight_decay", "0"), "optimizer.weight_decay", True)),
               "warmup": _int(fo.get("warmup", 0), "optimizer.warmup", 0, 10**7),
               "clip": float(_positive(fo.get("clip", "1"), "optimizer.clip"))}
        for beta in ("beta1", "beta2"):
            if not opt[beta] < 1:
                raise ConfigError(f"optimizer.{beta}", f"must be in [0, 1), got {opt[beta]}")
        fo.finish()
        sampler = _choice(val("sampler"), "sampler", MLP_SAMPLERS)
        common = _replica_run_fields(val)
        n_train = _sequence_train_size(json.dumps(corpus, sort_keys=True))
        batch_sizes = _parse_batch_sizes(val("batch_sizes"), n_train)
        f.finish()
        return cls(corpus, tokenizer, max_len, vocab, layers, heads, width, inits, replicas, epochs, opt, batch_sizes,
                   sampler, n_train=n_train, **common)

    def to_json(self) -> dict:
        return {"setting": self.setting, "corpus": self.corpus, "tokenizer": self.tokenizer, "max_len": self.max_len,
                "vocab": self.vocab, "layers": self.layers, "heads": self.heads, "width": self.width,
                "inits": self.inits, "replicas": self.replicas, "epochs": self.epochs,
                "optimizer": self.optimizer, "batch_sizes": list(self.batch_sizes), "sampler": self.sampler,
                "noise_samples": self.noise_samples, "eval_size": self.eval_size, "seed": self.seed,
                "device": self.device, "dtype": self.dtype}


@lru_cache(maxsize=16)
def _sequence_train_size(spec: str) -> int:
    from backend.text import load_corpus

    return len(load_corpus(json.loads(spec)).train_text)


CONFIG_TYPES: dict[str, type] = {"linear_regression": LinearRegressionConfig, "deep_linear": DeepLinearConfig,
                                 "mlp": MLPConfig, "sequence": SequenceConfig}
Config = LinearRegressionConfig | DeepLinearConfig | MLPConfig | SequenceConfig


PRESETS_BY_SETTING: dict[str, dict[str, dict[str, Any]]] = {
    "linear_regression": PRESETS, "deep_linear": DEEP_LINEAR_PRESETS, "mlp": MLP_PRESETS,
    "sequence": SEQUENCE_PRESETS}


def expand_preset(raw: dict) -> dict:
    """The one preset mechanism, for every setting: ``{"setting": s, "preset": name, …fields}`` is the preset's
    fields with the given fields on top (a preset is partial: what it leaves out takes the class's DEFAULTS)."""
    if "preset" not in raw:
        return raw
    setting = raw.get("setting", "linear_regression")
    presets = PRESETS_BY_SETTING[setting]
    name = raw["preset"]
    if not isinstance(name, str) or name not in presets:
        raise ConfigError("preset", f"expected one of {sorted(presets)}, got {name!r}")
    return {**presets[name], **{k: v for k, v in raw.items() if k != "preset"}}


def parse_config(raw: Any) -> "Config":
    """Validate a config dict (from JSON, widgets or Python; with an optional ``"preset"``) into the frozen config of
    its setting."""
    if not isinstance(raw, dict):
        raise ConfigError("config", f"expected a JSON object, got {type(raw).__name__}")
    setting = raw.get("setting", "linear_regression")
    if not isinstance(setting, str) or setting not in CONFIG_TYPES:
        raise ConfigError("setting", f"expected one of {sorted(CONFIG_TYPES)}, got {setting!r}")
    return CONFIG_TYPES[setting].parse(expand_preset(raw))


def loads(text: str) -> dict:
    """Parse JSON keeping decimal numbers exact (they become strings, read as rationals by the config)."""
    try:
        return json.loads(text, parse_float=lambda s: s)
    except json.JSONDecodeError as e:
        raise ConfigError("config", f"not valid JSON ({e.msg} at line {e.lineno}, column {e.colno})") from None


def canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


# -- URL query parameters ---------------------------------------------------------------------------------------

def to_query(config) -> dict[str, str]:
    """One query parameter per top-level field, each a compact JSON value (inline data are not put in the URL)."""
    out = {}
    for k, v in config.to_json().items():
        if k == "dataset" and v.get("name") == "inline":
            continue
        if k in ("teacher", "w0") and isinstance(v, list) and len(json.dumps(v)) > 2000:
            continue
        out[k] = v if isinstance(v, str) else json.dumps(v, separators=(",", ":"))
    return out


def from_query(params: dict[str, str]) -> dict:
    """The raw config dict encoded by :func:`to_query` (unknown parameters are ignored; values are validated later)."""
    keys = {"setting"} | {k for cls in CONFIG_TYPES.values() for k in cls.DEFAULTS}
    text_fields = {"setting"} | {k for cls in CONFIG_TYPES.values() for k, v in cls.DEFAULTS.items()
                                 if isinstance(v, str)}  # written as is by to_query
    raw: dict[str, Any] = {}
    for k, v in params.items():
        if k not in keys:
            continue
        if k in text_fields:
            raw[k] = v
            continue
        try:
            raw[k] = json.loads(v, parse_float=lambda s: s)
        except json.JSONDecodeError:
            raise ConfigError(k, f"cannot read {v!r} from the URL") from None
    return raw

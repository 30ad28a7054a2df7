"""The field readers every setting's frozen config is built with: ``Fields`` (reads a raw dict, refuses unknown keys),
``read_*`` (one line naming the field for bad input), the learning-rate ``Schedule``, the shared limits and choices.

Below the settings (backend/settings import it; it imports none of them); parsing that needs the registry — presets,
``parse_config``, the URL codec — is backend/config.py, beside the registry.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import numpy as np

from backend.allowed import data_path
from backend.errors import ConfigError
from backend.exact import jsonable_number, parse_number

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


class Fields:
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


def read_int(value: Any, field_name: str, lo: int, hi: int) -> int:
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


def read_bool(value: Any, field_name: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise ConfigError(field_name, f"expected true or false, got {value!r}")


def read_choice(value: Any, field_name: str, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ConfigError(field_name, f"expected one of {list(choices)}, got {value!r}")
    return value


def read_source(raw: Any, key: str, choices: tuple[str, ...], default: str, path_for: str,
                path_message: str) -> tuple[Fields, dict[str, Any]]:
    """A named data source (``"name"`` or ``{"name": …, …}``): its name validated, ``"path"`` required when the name
    is ``path_for`` (``path_message`` otherwise). Returns its Fields (for the caller's further keys, then ``finish``)
    and the normalised ``{"name"[, "path"]}``."""
    fields = Fields({"name": raw} if isinstance(raw, str) else raw, key)
    name = read_choice(fields.get("name", default), f"{key}.name", choices)
    source: dict[str, Any] = {"name": name}
    if name == path_for:
        path = fields.get("path")
        if not isinstance(path, str) or not path:
            raise ConfigError(f"{key}.path", path_message)
        data_path(path, f"{key}.path")  # confined to the shipped data and $BATCHVAR_DATA (backend/allowed.py)
        source["path"] = path
    return fields, source


def read_positive(value: Any, field_name: str, allow_zero: bool = False) -> Fraction | float:
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
    def parse(cls, raw: Any, where: str = "lr", defaults: dict | None = None) -> "Schedule":
        """The field ``where``; a partial object takes the rest from ``defaults`` (the setting's DEFAULTS entry)."""
        if isinstance(raw, (int, float, str)) and not isinstance(raw, bool):
            return cls("constant", read_positive(raw, where))
        d = defaults if isinstance(defaults, dict) else {}
        f = Fields(raw, where)
        kind = read_choice(f.get("schedule", d.get("schedule", "inverse")), f.name("schedule"), SCHEDULES)
        c = read_positive(f.get("c", d.get("c", Fraction(1, 2))), f.name("c"))
        t0 = read_int(f.get("t0", 0), f.name("t0"), 0, 10**9) if kind == "inverse_offset" else 0
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

    def shape(self, T: int) -> np.ndarray:
        """α_t / c for t < T as float64: 1, 1/(t+1) or 1/(t+1+t0) — the schedule without its constant."""
        t = np.arange(T, dtype=np.float64)
        if self.kind == "constant":
            return np.ones(T)
        return 1.0 / (t + 1 + (self.t0 if self.kind == "inverse_offset" else 0))

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


def read_batch_sizes(raw: Any, n: int, field_name: str = "batch_sizes") -> tuple[int, ...]:
    if isinstance(raw, (int, str)) and not isinstance(raw, bool):
        raw = [raw]
    if not isinstance(raw, (list, tuple)) or not raw:
        raise ConfigError(field_name, "expected a non-empty list of batch sizes")
    if len(raw) > MAX_BATCH_SIZES:
        raise ConfigError(field_name, f"at most {MAX_BATCH_SIZES} batch sizes, got {len(raw)}")
    out = sorted({read_int(b, f"{field_name}[{i}]", 1, 10**9) for i, b in enumerate(raw)})
    if out[-1] > n:
        raise ConfigError(field_name, f"batch size {out[-1]} exceeds the number of samples n = {n}")
    return tuple(out)


def paper_batch_sizes(n: int = 500) -> list[int]:
    """Figure 2b's batch sizes: powers of two and multiples of 40 in [2, n], plus b = n (21 values for n = 500)."""
    powers = [2**k for k in range(1, 20) if 2**k <= n]
    forties = list(range(40, n + 1, 40))
    return sorted(set(powers + forties + [n]))


SCHEDULE_KEY = "schedule"  # the one curve of a config with a batch_schedule (its results, documents and charts)
MAX_SEGMENTS = 64


@dataclass(frozen=True)
class BatchSchedule:
    """A batch-size schedule (docs/theory.md §12): b_i for steps_i steps, in order; T = Σ steps_i. The gradient at
    t = T (after the last update) is drawn with the last segment's b."""

    segments: tuple[tuple[int, int], ...]

    @property
    def steps(self) -> int:
        return sum(s for _, s in self.segments)

    def batch_at(self) -> np.ndarray:
        """b_t for t = 0..T (int64, length T + 1): the b of the segment that draws g_t, the last one at t = T."""
        out = np.concatenate([np.full(s, b, dtype=np.int64) for b, s in self.segments])
        return np.concatenate([out, [self.segments[-1][0]]])

    def samples(self) -> int:
        """Σ b_i steps_i: the gradient evaluations of the T updates."""
        return sum(b * s for b, s in self.segments)

    def to_json(self) -> list[list[int]]:
        return [[b, s] for b, s in self.segments]

    def describe(self) -> str:
        return ", ".join(f"{b}:{s}" for b, s in self.segments)


def run_batches(config) -> list:
    """What each replica run of a step setting takes as its b: the batch sizes, or the one ``batch_schedule`` as its
    [(b, steps), …] (one run)."""
    if config.batch_schedule is not None:
        return [list(config.batch_schedule.segments)]
    return list(config.batch_sizes)


def read_batch_schedule(raw: Any, n: int, field_name: str = "batch_schedule") -> BatchSchedule:
    """``[[b1, steps1], [b2, steps2], …]`` with 1 ≤ b_i ≤ n and steps_i ≥ 1 (one line naming the field otherwise)."""
    if not isinstance(raw, (list, tuple)) or not raw:
        raise ConfigError(field_name, "expected a non-empty list of [b, steps] pairs, e.g. [[8, 100], [64, 200]]")
    if len(raw) > MAX_SEGMENTS:
        raise ConfigError(field_name, f"at most {MAX_SEGMENTS} segments, got {len(raw)}")
    segments = []
    for i, seg in enumerate(raw):
        if not isinstance(seg, (list, tuple)) or len(seg) != 2:
            raise ConfigError(field_name, f"segment {i}: expected a pair [b, steps], got {seg!r}")
        b = read_int(seg[0], f"{field_name}[{i}][0]", 1, 10**9)
        if b > n:
            raise ConfigError(field_name, f"segment {i}: batch size {b} is outside [1, n = {n}]")
        segments.append((b, read_int(seg[1], f"{field_name}[{i}][1]", 1, MAX_STEPS)))
    out = BatchSchedule(tuple(segments))
    if out.steps > MAX_STEPS:
        raise ConfigError(field_name, f"the segments' steps sum to {out.steps}; the limit is {MAX_STEPS}")
    return out


def parse_batch_schedule_text(text: str, field_name: str = "batch_schedule") -> list[list[int]]:
    """``"b:steps, b:steps"`` (a page's text field) → the raw ``[[b, steps], …]`` (validated by read_batch_schedule)."""
    out = []
    for i, part in enumerate(p.strip() for p in str(text).split(",")):
        pieces = part.split(":")
        if len(pieces) != 2 or not all(x.strip().lstrip("-").isdigit() for x in pieces):
            raise ConfigError(field_name, f"segment {i}: expected b:steps (whole numbers), got {part!r}")
        out.append([int(pieces[0]), int(pieces[1])])
    return out


def read_step_batches(f: "Fields", val, n: int, default_b: list[int]
                      ) -> tuple[tuple[int, ...], BatchSchedule | None, int]:
    """(batch_sizes, batch_schedule, steps) of a config run in SGD steps. ``batch_schedule`` replaces ``batch_sizes``
    (both given: refused); its segments' sum is the config's T: ``steps`` may be left out, and if given must equal it.
    With a schedule, batch_sizes are its distinct b (for costs); its one curve is keyed SCHEDULE_KEY."""
    if f.has("batch_schedule"):
        if f.has("batch_sizes"):
            raise ConfigError("batch_schedule", "give either batch_sizes or batch_schedule, not both")
        sched = read_batch_schedule(f.get("batch_schedule"), n)
        if f.has("steps") and read_int(f.get("steps"), "steps", 0, MAX_STEPS) != sched.steps:
            raise ConfigError("batch_schedule", f"its segments' steps sum to {sched.steps} but steps = "
                                                f"{f.get('steps')}; leave steps out or make them agree")
        f.get("batch_sizes")
        return tuple(sorted({b for b, _ in sched.segments})), sched, sched.steps
    f.get("batch_schedule")
    steps = read_int(val("steps"), "steps", 0, MAX_STEPS)
    return read_batch_sizes(f.get("batch_sizes", default_b), n), None, steps


def refuse_batch_schedule(f: Fields, what: str) -> None:
    """A setting that trains in epochs (``what``: its name) refuses batch_schedule in one line naming it."""
    if f.has("batch_schedule"):
        raise ConfigError("batch_schedule", f"{what} trains in epochs of a fixed b; batch-size schedules are for the "
                                            "settings run in SGD steps (linear regression, deep linear network) — "
                                            "give batch_sizes")


def curve_keys(config) -> list:
    """The keys of a result's curves, in order: ``["schedule"]`` for a config with a batch_schedule, else its batch
    sizes (every consumer of curves labels them through this)."""
    return [SCHEDULE_KEY] if getattr(config, "batch_schedule", None) is not None else list(config.batch_sizes)


MAX_WIDTH = 1024
DTYPES = ("float64", "float32")


MLP_SAMPLERS = ("epoch_reshuffle", "without_replacement")


def replace_fields(config, **changes: Any):
    """A new validated config of the same setting with some JSON fields changed (every config's ``replace``)."""
    raw = config.to_json()
    raw.update({k: (v.to_json() if isinstance(v, Schedule) else v) for k, v in changes.items()})
    return type(config).parse(raw)


def config_fields(raw: Any, defaults: dict[str, Any]):
    """(fields, val) for a config class's ``parse``: the raw dict's reader (``"setting"`` read) and val(key) — the field
    if given, else the class's default (its DEFAULTS, the one place they are stated)."""
    f = Fields(raw)
    f.get("setting")
    return f, lambda key: f.get(key, defaults[key])


PRECISIONS = ("float32", "tf32", "bf16")  # the replica classifiers' arithmetic for the forward and backward passes


def replica_run_fields(val) -> dict[str, Any]:
    """The fields every replica classifier shares (validated). ``precision`` tf32 / bf16 keeps float32 master weights,
    so it needs dtype float32."""
    out = {"noise_samples": read_int(val("noise_samples"), "noise_samples", 2, 100_000),
           "eval_size": read_int(val("eval_size"), "eval_size", 2, 10**7),
           "seed": read_int(val("seed"), "seed", 0, 2**32 - 1),
           "device": read_choice(val("device"), "device", DEVICES),
           "dtype": read_choice(val("dtype"), "dtype", DTYPES),
           "precision": read_choice(val("precision"), "precision", PRECISIONS)}
    if out["precision"] != "float32" and out["dtype"] != "float32":
        raise ConfigError("precision", f"{out['precision']} runs float32 master weights: it needs dtype float32, "
                                       f"got {out['dtype']}")
    return out

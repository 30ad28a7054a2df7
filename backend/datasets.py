"""Regression datasets: the vendored Graduate Admission CSV, a seeded synthetic generator, inline arrays and CSV uploads.

Values read from text (the CSV, exact strings in a config) are kept as Fractions so that exact rational theory is possible;
every dataset also has its float64 view. CSV uploads are parsed as data only (the ``csv`` module; no pickle, no eval).
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass
from functools import lru_cache
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from backend.fields import Fields, read_int, read_positive
from backend.errors import ConfigError
from backend.exact import jsonable_number, parse_number, to_float_array

DATA_DIR = Path(__file__).parent / "data"
GRADUATE_ADMISSION = DATA_DIR / "graduate_admission.csv"
GRADUATE_TARGET = "Chance of Admit"
MAX_UPLOAD_BYTES = 5 * 1024 * 1024
MAX_ROWS = 100_000


@dataclass(frozen=True)
class RegressionData:
    """Features (n × p, without intercept), target (n,), column names; ``exact`` when every value is a Fraction."""

    X: np.ndarray  # object array of Fraction/float
    y: np.ndarray
    feature_names: tuple[str, ...]
    target_name: str

    @property
    def exact(self) -> bool:
        return all(isinstance(v, Fraction) for v in self.X.ravel()) and all(isinstance(v, Fraction) for v in self.y)

    @property
    def n(self) -> int:
        return int(self.X.shape[0])


def parse_csv_text(text: str, target: str | None = None, field: str = "dataset") -> RegressionData:
    """A numeric table with a header row; ``target`` names the target column (default: the last one).

    Columns named like an index (``Serial No.``, ``id``, ``index``, or empty) are dropped. Every other column must be
    numeric; NaN, empty cells and fewer than 2 rows are refused with the row and column named.
    """
    if len(text.encode("utf-8", errors="replace")) > MAX_UPLOAD_BYTES:
        raise ConfigError(field, f"the file is larger than {MAX_UPLOAD_BYTES // 2**20} MiB")
    reader = csv.reader(io.StringIO(text))
    rows = [r for r in reader if any(cell.strip() for cell in r)]
    if not rows:
        raise ConfigError(field, "the file is empty")
    header = [h.strip() for h in rows[0]]
    body = rows[1:]
    if len(body) < 2:
        raise ConfigError(field, f"need at least 2 data rows, found {len(body)}")
    if len(body) > MAX_ROWS:
        raise ConfigError(field, f"at most {MAX_ROWS} rows are supported, found {len(body)}")
    if len(set(header)) != len(header):
        raise ConfigError(field, "the header has repeated column names")
    if target is None:
        target = header[-1]
    target = target.strip()
    if target not in header:
        raise ConfigError(field, f"target column {target!r} not found; columns are {header}")
    keep = [j for j, h in enumerate(header) if h.lower() not in ("serial no.", "serial no", "id", "index", "")]
    values: dict[int, list] = {j: [] for j in keep}
    for r_no, row in enumerate(body, start=2):
        if len(row) != len(header):
            raise ConfigError(field, f"row {r_no} has {len(row)} cells, the header has {len(header)}")
        for j in keep:
            cell = row[j].strip()
            try:
                v = Fraction(cell)
            except (ValueError, ZeroDivisionError):
                try:
                    f = float(cell)
                except ValueError:
                    raise ConfigError(field, f"column {header[j]!r} is not numeric (row {r_no}: {cell!r})") from None
                if not math.isfinite(f):
                    raise ConfigError(field, f"column {header[j]!r} has a missing or non-finite value at row {r_no}")
                v = f
            values[j].append(v)
    t_idx = header.index(target)
    if t_idx not in keep:
        raise ConfigError(field, f"target column {target!r} looks like an index column")
    feats = [j for j in keep if j != t_idx]
    if not feats:
        raise ConfigError(field, "no feature columns besides the target")
    X = np.empty((len(body), len(feats)), dtype=object)
    for k, j in enumerate(feats):
        X[:, k] = values[j]
    y = np.empty(len(body), dtype=object)
    y[:] = values[t_idx]
    return RegressionData(X, y, tuple(header[j] for j in feats), target)


def graduate_admission() -> RegressionData:
    """Graduate Admission 2 (Acharya et al., 2019): 500 rows, 7 features, target ``Chance of Admit``."""
    return parse_csv_text(GRADUATE_ADMISSION.read_text(encoding="utf-8"), target=GRADUATE_TARGET)


def synthetic(n: int, p: int, noise: float, seed: int) -> RegressionData:
    """y = X β + noise·ε with X, β, ε standard normal from ``numpy.random.default_rng(seed)`` (floats: not exact)."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, p))
    beta = rng.standard_normal(p)
    y = X @ beta + noise * rng.standard_normal(n)
    Xo = np.empty((n, p), dtype=object)
    Xo[:] = X.tolist()
    yo = np.empty(n, dtype=object)
    yo[:] = y.tolist()
    return RegressionData(Xo, yo, tuple(f"x{j + 1}" for j in range(p)), "y")


def inline(X: list, y: list, field: str = "dataset") -> RegressionData:
    """Arrays given in the config; entries may be numbers or exact strings (``"1/3"``, ``"0.92"``)."""
    if not isinstance(X, list) or not X or not all(isinstance(r, list) for r in X):
        raise ConfigError(f"{field}.X", "expected a non-empty list of rows (a list of lists of numbers)")
    if not isinstance(y, list):
        raise ConfigError(f"{field}.y", "expected a list of numbers")
    p = len(X[0])
    if p == 0 or any(len(r) != p for r in X):
        raise ConfigError(f"{field}.X", "every row must have the same, non-zero number of entries")
    if len(y) != len(X):
        raise ConfigError(f"{field}.y", f"has {len(y)} entries but X has {len(X)} rows")
    if len(X) < 2:
        raise ConfigError(f"{field}.X", "need at least 2 rows")
    Xo = np.empty((len(X), p), dtype=object)
    for i, r in enumerate(X):
        for j, v in enumerate(r):
            Xo[i, j] = parse_number(v, f"{field}.X[{i}][{j}]")
    yo = np.empty(len(y), dtype=object)
    for i, v in enumerate(y):
        yo[i] = parse_number(v, f"{field}.y[{i}]")
    return RegressionData(Xo, yo, tuple(f"x{j + 1}" for j in range(p)), "y")


def design_matrix(data: RegressionData, standardize: bool, intercept: bool) -> tuple[np.ndarray, np.ndarray, bool]:
    """(X, y, exact): features standardized by the mean and the population standard deviation (ddof = 0) when asked,
    then a column of ones appended last when ``intercept``. Exact (object array of Fractions) only when the data are
    exact and not standardized (the standard deviation is a square root); float64 otherwise.
    """
    exact = data.exact and not standardize
    if exact:
        X, y = data.X.copy(), data.y.copy()
    else:
        X, y = to_float_array(data.X), to_float_array(data.y)
    if standardize:
        mean = X.mean(axis=0)
        std = X.std(axis=0)
        const = [data.feature_names[j] for j in np.flatnonzero(std == 0)]
        if const:
            raise ConfigError("standardize", f"feature(s) {const} are constant and cannot be standardized")
        X = (X - mean) / std
    if intercept:
        ones = np.empty((X.shape[0], 1), dtype=object) if exact else np.ones((X.shape[0], 1))
        if exact:
            ones[:] = Fraction(1)
        X = np.concatenate([X, ones], axis=1)
    return X, y, exact


# -- the config field ----------------------------------------------------------------------------------------

@lru_cache(maxsize=8)
def _builtin(name: str) -> RegressionData:
    return graduate_admission()


def parse_dataset(raw: Any) -> tuple[dict, RegressionData]:
    """The ``dataset`` field of a linear-regression config: its normalised JSON and the data."""
    if isinstance(raw, str):
        raw = {"name": raw}
    f = Fields(raw, "dataset")
    name = f.get("name", "inline" if "X" in raw else None)
    if name == "graduate_admission":
        f.finish()
        return {"name": name}, _builtin(name)
    if name == "synthetic":
        n = read_int(f.get("n", 200), "dataset.n", 2, MAX_ROWS)
        p = read_int(f.get("p", 5), "dataset.p", 1, 50)
        noise = float(read_positive(f.get("noise", 0.5), "dataset.noise", allow_zero=True))
        seed = read_int(f.get("seed", 0), "dataset.seed", 0, 2**32 - 1)
        f.finish()
        return {"name": name, "n": n, "p": p, "noise": noise, "seed": seed}, synthetic(n, p, noise, seed)
    if name == "inline":
        data = inline(f.get("X"), f.get("y"))
        names = f.get("columns")
        if names is not None:
            if not isinstance(names, list) or len(names) != data.X.shape[1] + 1 or not all(isinstance(s, str) for s in names):
                raise ConfigError("dataset.columns", "expected the feature names then the target name, as strings")
            data = RegressionData(data.X, data.y, tuple(names[:-1]), names[-1])
        f.finish()
        norm = {"name": "inline", "X": [[jsonable_number(v) for v in row] for row in data.X],
                "y": [jsonable_number(v) for v in data.y]}
        if names is not None:
            norm["columns"] = list(names)
        return norm, data
    raise ConfigError("dataset.name", f"expected 'graduate_admission', 'synthetic' or 'inline', got {name!r}")

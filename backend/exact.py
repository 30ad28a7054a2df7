"""Exact numbers: read JSON numbers and strings such as ``"1/3"`` or ``"0.92"`` as rationals, and print them back."""

from __future__ import annotations

import math
from fractions import Fraction
from typing import Any

import numpy as np
from flint import fmpq


def parse_number(value: Any, field: str) -> Fraction | float:
    """A Fraction when ``value`` is exact (int, exact string, decimal text), else a float.

    JSON numbers reach us as ``str`` from the decimal text when the CLI parses with ``parse_float=str``; a Python float is
    taken as given (it is inexact). Raises ConfigError naming ``field`` on anything that is not a finite number.
    """
    from backend.errors import ConfigError

    if isinstance(value, bool):
        raise ConfigError(field, f"expected a number, got {value!r}")
    if isinstance(value, int):
        return Fraction(value)
    if isinstance(value, Fraction):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ConfigError(field, f"expected a finite number, got {value!r}")
        return float(value)
    if isinstance(value, str):
        text = value.strip()
        try:
            return Fraction(text)
        except (ValueError, ZeroDivisionError):
            pass
        try:
            f = float(text)
        except ValueError:
            raise ConfigError(field, f"expected a number or an exact fraction like '1/3', got {value!r}") from None
        if not math.isfinite(f):
            raise ConfigError(field, f"expected a finite number, got {value!r}")
        return f
    raise ConfigError(field, f"expected a number, got {type(value).__name__}")


def is_exact(values: Any) -> bool:
    """True when every entry of a (nested) sequence or array is a Fraction or an fmpq."""
    arr = np.asarray(values, dtype=object).ravel()
    return all(isinstance(v, (Fraction, fmpq)) for v in arr)


def to_float_array(values: Any) -> np.ndarray:
    return np.asarray(np.vectorize(float, otypes=[float])(np.asarray(values, dtype=object)), dtype=np.float64)


def to_fraction_array(values: Any) -> np.ndarray:
    """Object array of Fractions (floats are taken as their exact binary value)."""
    arr = np.asarray(values, dtype=object)
    out = np.empty(arr.shape, dtype=object)
    for idx, v in np.ndenumerate(arr):
        out[idx] = to_fraction(v)
    return out


def to_fraction(v: Any) -> Fraction:
    """A Fraction from a Fraction, int, float (its exact binary value) or FLINT fmpq."""
    if isinstance(v, Fraction):
        return v
    if isinstance(v, fmpq):
        return Fraction(int(v.p), int(v.q))
    return Fraction(v)


def to_rational_array(values: Any) -> np.ndarray:
    """Object array of FLINT ``fmpq`` rationals: exact like Fractions, arithmetic in C (about 6× faster in numpy
    object matmul), which is what makes exact polynomials of degree ~40 on 500 samples take seconds, not minutes."""
    arr = np.asarray(values, dtype=object)
    out = np.empty(arr.shape, dtype=object)
    for idx, v in np.ndenumerate(arr):
        f = to_fraction(v)
        out[idx] = fmpq(f.numerator, f.denominator)
    return out


def rational(v: Any) -> fmpq:
    f = to_fraction(v)
    return fmpq(f.numerator, f.denominator)


def fraction_str(x: Fraction) -> str:
    """``"p/q"`` (or ``"p"`` when q = 1)."""
    x = Fraction(x)
    return str(x.numerator) if x.denominator == 1 else f"{x.numerator}/{x.denominator}"


def jsonable_number(x: Any) -> Any:
    """Fractions → ``"p/q"`` strings, numpy scalars → Python floats/ints, non-finite floats → None."""
    if isinstance(x, (Fraction, fmpq)):
        return fraction_str(to_fraction(x))
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (float, np.floating)):
        f = float(x)
        return f if math.isfinite(f) else None
    return x

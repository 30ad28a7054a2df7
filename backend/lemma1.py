"""Lemma 1 of the paper (docs/theory.md §0, §3): the one-step variance of a mini-batch gradient over a finite sum.

For a finite sum of n per-sample gradients ∇L_i(w) with mean ∇L(w) and **population** covariance
    Σ(w) = (1/n) Σ_i (∇L_i(w) − ∇L(w))(∇L_i(w) − ∇L(w))ᵀ,
the mean g of b of them drawn uniformly without replacement has
    var(g | w) = c_b · tr Σ(w),   c_b = (n − b) / (b (n − 1))   (c_b = 1/b when drawn with replacement),
so var = tr Σ at b = 1 and 0 at b = n. This module is the only place the factor and the population convention live.
"""

from __future__ import annotations

from fractions import Fraction

import numpy as np

SAMPLERS_WITH_FACTOR = ("without_replacement", "with_replacement")


def noise_factor(b: int | np.ndarray, n: int, sampler: str = "without_replacement") -> np.ndarray:
    """Lemma 1's c_b = (n − b)/(b(n − 1)) without replacement; 1/b with replacement (float64, broadcasts over b)."""
    b = np.asarray(b, dtype=np.float64)
    if sampler == "without_replacement":
        if n == 1:
            return np.zeros_like(b)
        return (n - b) / (b * (n - 1))
    if sampler == "with_replacement":
        return 1.0 / b
    raise ValueError(f"no exact theory for sampler {sampler!r}")


def noise_factor_exact(b: int, n: int, sampler: str = "without_replacement") -> Fraction:
    """c_b as an exact rational."""
    if sampler == "without_replacement":
        return Fraction(0) if n == 1 else Fraction(n - b, b * (n - 1))
    if sampler == "with_replacement":
        return Fraction(1, b)
    raise ValueError(f"no exact theory for sampler {sampler!r}")


def population_trace(sample_trace, n: int):
    """tr Σ(w) over the n points from S² = (1/(m−1)) Σ_{i∈S} ‖∇L_i − ∇L_S‖², S a uniform m-subset (m ≥ 2) of them.

    Under sampling without replacement E[S²] = n/(n − 1) · tr Σ for every m, so (n − 1)/n · S² is unbiased; at m = n it
    is exactly (1/n) Σ_i ‖∇L_i − ∇L‖² = tr Σ. (Using S² itself overstates tr Σ, hence Lemma 1's noise, by n/(n − 1).)"""
    return sample_trace * (n - 1) / n


def one_step_noise(trace_population, b: int, n: int, sampler: str = "without_replacement"):
    """Lemma 1: var(g | w) = c_b · tr Σ(w) (tr Σ with the population convention of ``population_trace``)."""
    return float(noise_factor(b, n, sampler)) * trace_population


def squared_full_gradient(subsample_grad_sq, trace_population, m: int, n: int):
    """‖∇L(w)‖² from ‖∇L_S(w)‖², S a uniform m-subset of the n points: E‖∇L_S‖² = ‖∇L‖² + c_m tr Σ (Lemma 1 with S as
    the batch), so ‖∇L_S‖² − c_m · (unbiased tr Σ) is unbiased; exact at m = n (c_n = 0)."""
    c_m = noise_factor_exact(m, n)
    return subsample_grad_sq - (c_m if isinstance(subsample_grad_sq, Fraction) else float(c_m)) * trace_population

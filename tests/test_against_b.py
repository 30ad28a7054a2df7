"""The view against b (paper Figure 2b; docs/theory.md §1): the paper's degree-6 fit in 1/b and its coefficients'
standard errors, checked against the exact polynomial (the fit's model holds it for t ≤ 5, so the fit to exact
values is the exact curve and the fit to estimates is unbiased for its coefficients) and against Monte Carlo refits."""

from __future__ import annotations

import numpy as np
import pytest

from backend import api
from backend.stats import polyfit_inv_b, polyfit_inv_b_se


def lr_config(**over):
    return api.parse_config({"setting": "linear_regression", "lr": {"schedule": "constant", "c": "1/2"},
                             "device": "cpu", **over})


@pytest.mark.parametrize("sampler", ["without_replacement", "with_replacement"])
def test_the_fit_to_exact_values_is_the_exact_curve_while_its_degree_is_at_most_six(sampler):
    """var(g_t | F_0) is a polynomial of degree t + 1 in 1/b (Theorem 1's proof): for t ≤ 5 the least-squares fit
    of degree 6 to the exact values at the paper's 21 b reproduces the exact value at every b in [1, n]."""
    config = lr_config(steps=5, sampler=sampler)
    for t in range(6):
        view = api.against_b(config, t)
        assert view["fit"]["source"] == "exact values at the paper's b" and view["estimates"] is None
        assert np.array_equal(view["b"], np.arange(1, config.n + 1))
        np.testing.assert_allclose(view["fit"]["curve"], view["exact"], rtol=1e-7, atol=1e-12 * view["exact"].max())
        assert not np.any(view["fit"]["coefficients_se"])  # no sampling error in exact values
        exact = api.polynomial(config, t)["coefficients"]
        np.testing.assert_allclose(view["fit"]["coefficients"][:len(exact)], exact, rtol=1e-5,
                                   atol=1e-9 * max(abs(c) for c in exact))


def test_beyond_n_1000_the_fit_reads_the_exact_values_at_its_own_b():
    """n = 3 000: the exact curve is on a log grid of b that misses most of the paper's b; the fit to the exact
    values at those b still reproduces the exact curve at every grid b (t ≤ 5)."""
    config = lr_config(steps=3, dataset={"name": "synthetic", "n": 3000, "p": 3, "noise": 0.5, "seed": 1})
    view = api.against_b(config, 3)
    assert len(view["b"]) < 1000 and not set(view["fit"]["b"]) <= set(view["b"].tolist())
    np.testing.assert_allclose(view["fit"]["curve"], view["exact"], rtol=1e-6, atol=1e-12 * view["exact"].max())


def test_the_coefficient_ses_match_the_spread_of_monte_carlo_refits():
    """polyfit_inv_b_se (linear propagation) against the standard deviation of 4 000 refits of values with
    independent Gaussian errors of the given SEs: agreement within 5 sampling SEs of a standard deviation
    (relative 1/√(2M) ≈ 1.1 %)."""
    rng = np.random.default_rng(20261204)
    b = np.array(api.paper_batch_sizes(500), dtype=float)
    truth = 0.3 / b + 2.0 / b**2
    se = 0.01 * truth + 1e-4
    M = 4000
    refits = np.array([polyfit_inv_b(b, truth + se * rng.standard_normal(len(b)), 6) for _ in range(M)])
    sd = refits.std(axis=0, ddof=1)
    np.testing.assert_allclose(polyfit_inv_b_se(b, se, 6), sd, rtol=5 / np.sqrt(2 * M))


def test_the_fit_to_estimates_covers_the_exact_coefficients():
    """With ≥ 7 batch sizes the fit is to the replica estimates; for t = 3 (degree 4 ≤ 6) the least-squares
    coefficients are unbiased for the exact polynomial's, so each z = (fit − exact) / SE stays within 4."""
    config = lr_config(steps=3, replicas=4000, seed=11, batch_sizes=[1, 2, 4, 8, 16, 32, 64, 128, 256])
    sim = api.simulate(config)
    t = 3
    view = api.against_b(config, t, sim)
    fit = view["fit"]
    assert fit["source"] == "estimates"
    np.testing.assert_array_equal(view["estimates"]["value"], sim["curves"]["var_g"]["value"][:, t])
    exact = np.zeros(7)
    coeffs = api.polynomial(config, t)["coefficients"]
    exact[:len(coeffs)] = coeffs
    assert np.all(fit["coefficients_se"] > 0)
    z = (fit["coefficients"] - exact) / fit["coefficients_se"]
    assert np.all(np.abs(z) <= 4), z
    with pytest.raises(api.ConfigError):
        api.against_b(config, config.steps + 1, sim)

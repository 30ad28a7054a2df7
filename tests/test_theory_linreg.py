"""Exact linear-regression theory against brute-force enumeration of every mini-batch sequence, and its own identities."""

from fractions import Fraction

import numpy as np
import pytest
from bruteforce import enumerate_moments, enumerate_states, gradient
from conftest import TINY_ALPHAS, TINY_W0, TINY_X, TINY_Y

from backend.exact import to_fraction, to_fraction_array, to_rational_array
from backend.theory import linreg as th

N = len(TINY_X)


def exact_problem(kind="fraction"):
    conv = to_fraction_array if kind == "fraction" else to_rational_array
    return th.LinRegProblem(conv(TINY_X), conv(TINY_Y)), conv(TINY_W0), [conv([a])[0] for a in TINY_ALPHAS]


def float_problem():
    return th.LinRegProblem(np.array(TINY_X, dtype=float), np.array(TINY_Y, dtype=float)), \
        np.array(TINY_W0, dtype=float), [float(a) for a in TINY_ALPHAS]


@pytest.mark.parametrize("sampler,bs,tmax", [("without_replacement", range(1, N + 1), 3),
                                             ("with_replacement", (1, 2), 2)])
def test_recursion_equals_enumeration(sampler, bs, tmax):
    """Every b, every t ≤ tmax: the exact-rational recursion equals enumeration exactly; float64 to 1e-12 relative."""
    bs = list(bs)
    brute = {(b, t): enumerate_moments(TINY_X, TINY_Y, TINY_W0, TINY_ALPHAS, b, t, sampler)
             for b in bs for t in range(tmax + 1)}
    for kind in ("fraction", "fmpq"):
        prob, w0, alphas = exact_problem(kind)
        for t in range(tmax + 1):
            poly = th.polynomial_in_c(prob, w0, alphas, t)
            for b in bs:
                c = th.noise_factor_exact(b, N, sampler)
                for q in ("var_g", "var_full_grad", "loss"):
                    val = sum(to_fraction(beta) * c**k for k, beta in enumerate(poly[q]))
                    assert val == brute[b, t][q], (kind, sampler, b, t, q)
    fprob, fw0, falphas = float_problem()
    curves = th.moment_curves(fprob, fw0, falphas[:tmax], th.noise_factor(np.array(bs), N, sampler))
    for j, b in enumerate(bs):
        for t in range(tmax + 1):
            for q in ("var_g", "var_full_grad", "loss"):
                assert curves[q][j, t] == pytest.approx(float(brute[b, t][q]), rel=1e-12, abs=1e-14)
    if sampler == "without_replacement":  # b = n: no noise at all
        assert all(brute[N, t]["var_g"] == 0 for t in range(tmax + 1))


def test_theorems_1_2_general_forms_against_enumeration():
    """Theorem 2: var(B g_t) for a random B; Theorem 1: E‖Σ A_i ∇L_i(w_t)‖² for random A_i — both by enumeration."""
    rng = np.random.default_rng(3)
    B = to_fraction_array(rng.integers(-3, 4, size=(2, 3)))
    A = to_fraction_array(rng.integers(-2, 3, size=(N, 2, 3)))
    prob, w0, alphas = exact_problem()
    for b in (2, 3):
        c = np.array([th.noise_factor_exact(b, N)], dtype=object)
        for t in (0, 2):
            states = enumerate_states(TINY_X, TINY_Y, TINY_W0, TINY_ALPHAS, b, t)
            Bg = [B @ np.array(gradient(TINY_X, TINY_Y, w, batch), dtype=object) for w, batch in states]
            mean = sum(Bg) / len(Bg)
            brute_var = sum((v - mean) @ (v - mean) for v in Bg) / len(Bg)
            assert th.variance_of_linear_map(prob, w0, alphas, c, t, B)[0] == brute_var
            full = list(range(N))
            sums = []
            for w, _ in states:
                v = sum(A[i] @ np.array(gradient(TINY_X, TINY_Y, w, [i]), dtype=object) for i in full)
                sums.append(v @ v)
            assert th.expected_weighted_sum_sq(prob, w0, alphas, c, t, A)[0] == sum(sums) / len(sums)


def test_lemma1_is_t0_and_b_equal_n_is_zero():
    prob, w0, alphas = float_problem()
    cs = th.noise_factor(np.arange(1, N + 1), N)
    curves = th.moment_curves(prob, w0, alphas, cs)
    lemma1 = np.array([th.one_step_variance(prob, w0, c) for c in cs])
    np.testing.assert_allclose(curves["var_g"][:, 0], lemma1, rtol=1e-13)
    assert np.all(curves["var_g"][-1] == 0) and np.all(curves["var_full_grad"][-1] == 0)
    # the per-sample form of Lemma 1 (mean of ‖∇L_i‖² minus ‖∇L‖²) on the raw data
    grads = np.array([np.array(TINY_X[i], dtype=float) * (np.array(TINY_X[i], dtype=float) @ w0 - float(TINY_Y[i]))
                      for i in range(N)])
    direct = (grads**2).sum(1).mean() - (grads.mean(0) ** 2).sum()
    assert th.one_step_variance(prob, w0, 1.0) == pytest.approx(direct, rel=1e-13)


def test_polynomial_degree_and_exact_equals_float():
    prob, w0, alphas = exact_problem("fmpq")
    fprob, fw0, falphas = float_problem()
    alphas = alphas + [to_rational_array([Fraction(1, 8)])[0]] * 4
    falphas = falphas + [0.125] * 4
    for t in range(0, 8):
        ex = th.polynomial_in_c(prob, w0, alphas, t)["var_g"]
        fl = th.polynomial_in_c(fprob, fw0, falphas, t)["var_g"]
        assert ex[0] == 0 and th.polynomial_degree(list(ex)) == t + 1
        np.testing.assert_allclose([float(to_fraction(x)) for x in ex], fl, rtol=1e-9, atol=1e-12)
        inv_b = th.c_to_inv_b([to_fraction(x) for x in ex], N)
        for b in range(1, N + 1):
            direct = sum(to_fraction(x) * th.noise_factor_exact(b, N) ** k for k, x in enumerate(ex))
            assert sum(x * Fraction(1, b) ** k for k, x in enumerate(inv_b)) == direct


def test_polynomial_evaluated_at_every_b_equals_recursion_on_graduate_admission():
    from backend.config import parse_config

    cfg = parse_config({"steps": 12})
    prob = th.LinRegProblem(np.asarray(cfg.X, float), np.asarray(cfg.y, float))
    w0 = np.asarray(cfg.w0_values, float)
    alphas = cfg.lr.alphas(12)
    bs = np.arange(1, cfg.n + 1)
    curves = th.moment_curves(prob, w0, alphas, th.noise_factor(bs, cfg.n))
    for t in (0, 1, 5, 12):
        poly = th.polynomial_in_c(prob, w0, alphas, t)
        for q in ("var_g", "var_full_grad", "loss"):
            via_c = th.eval_polynomial(poly[q], th.noise_factor(bs, cfg.n))
            np.testing.assert_allclose(via_c, curves[q][:, t], rtol=1e-10, atol=1e-13)
            inv_b = th.c_to_inv_b(poly[q], cfg.n)
            np.testing.assert_allclose(th.eval_polynomial(inv_b, 1.0 / bs), curves[q][:, t], rtol=1e-7, atol=1e-10)
    assert np.all(curves["var_g"][-1] == 0)


def test_monotone_in_b_graduate_admission_every_t():
    """Theorems 1–2 on Graduate Admission, every b in [1, 500], t ≤ 300, through the API check."""
    from backend import api
    from backend.config import parse_config

    res = api.check_monotone(parse_config({"steps": 300}))
    assert all(r["holds"] for r in res.values()), res
    assert res["var_g"]["checked_b"] == 500 and res["var_g"]["checked_t"] == 301


def test_first_increase_detects_a_violation():
    from backend.stats import first_increase

    assert first_increase(np.array([1, 2, 3, 4]), np.array([4.0, 3.0, 3.5, 1.0])) == 1
    assert first_increase(np.array([1, 2, 3]), np.array([4.0, 3.0, 3.0])) is None


def test_the_polynomial_docstring_states_its_limits():
    """The t limits polynomial's docstring states are the ones it enforces (it said t ≤ 40 for exact coefficients)."""
    import re

    from conftest import tiny_config_json

    from backend.config import parse_config
    from backend.errors import TooExpensive
    from backend.settings import linear_regression as lr

    exact_max, float_max = (int(x) for x in re.findall(r"t ≤ (\d+)", lr.polynomial.__doc__))
    cfg = parse_config(tiny_config_json())
    assert cfg.exact
    with pytest.raises(TooExpensive, match=f"t ≤ {exact_max} "):
        lr.polynomial(cfg, exact_max + 1, exact=True)
    with pytest.raises(TooExpensive, match=f"t ≤ {float_max};"):
        lr.polynomial(cfg, float_max + 1, exact=False)

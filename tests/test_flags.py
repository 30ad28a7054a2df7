"""Honest flags where a replica estimate cannot be trusted, and the per-b table (linear regression, deep linear)."""

import io

import numpy as np
import pandas as pd
import pytest

from backend import api, export, report
from backend.stats import TRUSTED_SKEW, estimate_flags, exact_z, group_shape

# Linear regression, the page's defaults but 20 steps and b ∈ {2, 64}: at b = 2 the replica distribution of g_5 is
# strongly skewed and 1 000 replicas put the estimate 7.33 ± 0.78 against the exact 11.40 (|z| = 5.2).
SKEWED = {"setting": "linear_regression", "seed": 0, "replicas": 1000, "steps": 20, "batch_sizes": [2, 64]}


@pytest.fixture(scope="module")
def skewed():
    cfg = api.parse_config(SKEWED)
    return cfg, api.theory(cfg), api.simulate(cfg)


def test_group_shape_measures_the_largest_share_and_the_skewness():
    g = np.array([[1.0, 1.0], [1.0, 2.0], [1.0, 3.0], [5.0, 4.0]])
    share, skew = group_shape(g)
    assert share == pytest.approx([5 / 8, 4 / 10])
    assert skew[0] == pytest.approx(1.1547005, rel=1e-6)  # (1, 1, 1, 5): m2 = 3, m3 = 6 → 6 / 3^1.5
    assert skew[1] == pytest.approx(0.0, abs=1e-12)  # symmetric


def test_estimate_flags_rules():
    """Flagged for a dominant group or |z| > 4; the replicas needed follow R γ² / (K · TRUSTED_SKEW²), at least 10 R."""
    curve = {"value": np.array([[10.0, 10.0, 10.0, 10.0]]), "se": np.array([[1.0, 1.0, 1.0, 1.0]]),
             "tail_share": np.array([[0.05, 0.30, 0.05, 0.05]]), "skew": np.array([[0.0, 0.0, 4.0, 0.2]])}
    exact = np.array([[10.5, 10.5, 15.0, 14.5]])
    f = estimate_flags(curve, exact, np.full((1, 4), 1000), 32)
    assert f["flag"].tolist() == [[False, True, True, True]]
    assert f["heavy_tail"].tolist() == [[False, True, False, False]]
    assert f["far"].tolist() == [[False, False, True, True]]
    assert np.isnan(f["replicas_needed"][0, 0])
    # γ = 4, K = 32, R = 1000: 1000 · 16 / (32 · 0.01) = 50 000; γ = 0.2: 125 < 10 R → 10 000
    assert TRUSTED_SKEW == 0.1
    assert f["replicas_needed"][0, 2] == 50_000 and f["replicas_needed"][0, 3] == 10_000
    assert estimate_flags(curve, None, np.full((1, 4), 1000), 32)["flag"].tolist() == [[False, True, False, False]]


def test_exact_z_ignores_rounding_of_deterministic_zeros():
    exact = np.array([[0.0, 4.0, 2.0]])
    z = exact_z(np.array([[3e-30, 4.0, 2.5]]), np.array([[1e-34, 0.0, 0.1]]), exact)
    assert np.isnan(z[0, 0]) and z[0, 1] == 0.0 and z[0, 2] == pytest.approx(5.0)
    assert exact_z(np.array([[0.5, 4.0]]), np.array([[0.1, 1.0]]), np.array([[0.0, 4.0]]))[0, 0] == pytest.approx(5.0)


def test_skewed_small_b_is_flagged_with_a_replica_count(skewed):
    cfg, th, sim = skewed
    points = api.flagged_points(sim, "var_g", th["curves"]["var_g"])
    at5 = [p for p in points if (p["b"], p["t"]) == (2, 5)]
    assert at5, points
    p = at5[0]
    assert p["estimate"] == pytest.approx(7.33, abs=0.01) and p["exact"] == pytest.approx(11.40, abs=0.01)
    assert p["z"] < -4 and p["replicas_needed"] >= 10 * cfg.replicas
    assert not [q for q in points if q["b"] == 64], "b = 64 is light-tailed here: nothing to flag"
    msg = api.flag_message(points, cfg.replicas)
    most = max(q["replicas_needed"] for q in points)
    assert "(2, 5: z = -5.2)" in msg and "(2, 4: a dominant group)" in msg and "skewed" in msg and f"About {most:,} replicas would make the SE trustworthy" in msg


def test_the_suggested_replicas_make_the_estimate_agree(skewed):
    """The flagged estimate with the replicas the flag asks for: within 4 SE of the exact value (t ≤ 5 only)."""
    cfg, th, sim = skewed
    need = api.flagged_points(sim, "var_g", th["curves"]["var_g"])
    need = max(p["replicas_needed"] for p in need if (p["b"], p["t"]) == (2, 5))
    big = api.parse_config({**SKEWED, "replicas": need, "steps": 5, "batch_sizes": [2]})
    res = api.simulate(big)
    z = api.agreement(api.theory(big), res, "var_g")["z"]
    assert abs(z[0, 5]) <= 4


def test_simulate_output_carries_the_flags(skewed):
    cfg, _, sim = skewed
    out = report.simulate_output(cfg, sim)
    assert (2, 5) in {(p["b"], p["t"]) for p in out["flags"]["var_g"]}
    assert set(out["flags"]) == {"var_g", "var_full_grad", "loss", "var_g_rb"}
    assert "replicas would make the SE trustworthy" in out["flag_note"]


def test_per_b_table_at_a_chosen_t(skewed):
    cfg, th, sim = skewed
    rows = api.per_b_table(th, sim, "var_g", 5)
    assert [r["b"] for r in rows] == [2, 64] and all(r["t"] == 5 for r in rows)
    for j, r in enumerate(rows):
        assert r["estimate"] == sim["curves"]["var_g"]["value"][j, 5] and r["se"] == sim["curves"]["var_g"]["se"][j, 5]
        assert r["exact"] == th["curves"]["var_g"][j, 5] and r["replicas"] == 1000
    assert rows[0]["flag"] and rows[0]["z"] < -4 and rows[0]["replicas_needed"] >= 10_000
    assert not rows[1]["flag"] and abs(rows[1]["z"]) <= 4 and rows[1]["replicas_needed"] is None
    back = pd.read_csv(io.StringIO(export.table_csv(rows)))
    assert back["b"].tolist() == [2, 64] and back["exact"].tolist() == pytest.approx([r["exact"] for r in rows])
    with pytest.raises(api.ConfigError, match="not a recorded t"):
        api.per_b_table(th, sim, "var_g", 21)


def test_per_b_table_without_theory_has_no_exact_value():
    cfg = api.parse_config({**SKEWED, "sampler": "epoch_reshuffle", "replicas": 100, "steps": 3})
    th, sim = api.theory(cfg), api.simulate(cfg)
    rows = api.per_b_table(th, sim, "var_g", 2)
    assert all(r["exact"] is None and r["z"] is None for r in rows)

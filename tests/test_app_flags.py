"""AppTest: the honest flags on the pages — a skewed linear-regression estimate flagged with the replicas it needs and
the per-b table; the MLP's variance split with its notes."""

import test_app as app  # the helpers (a module import: its tests are not collected twice)
from conftest import ROOT  # noqa: F401  (sys.path for test_app)

open_with = app.open_link  # a fresh session opening a page by a link


def test_linear_regression_flags_the_skewed_small_b_estimate_and_tabulates_per_b():
    """Seed 0, T = 20, b ∈ {2, 64}, 1 000 replicas: at b = 2, t = 5 the estimate is 7.33 ± 0.78 against the exact
    11.40 (|z| = 5.2); the page warns with the replicas that would do, and the per-b table flags b = 2 only."""
    at = open_with("pages/linear_regression.py", {"seed": "0", "replicas": "1000", "steps": "20",
                                                   "batch_sizes": "[2,64]"})
    assert not at.warning or not any("Unreliable" in w.value for w in at.warning), "no flag before a run"
    app.by_label(at.button, "Run").click()
    at.run()
    app.wait_for_run(at, "lr")
    assert not at.exception and not at.error, (at.exception, [e.value for e in at.error])
    warnings = [w.value for w in at.warning if "Unreliable estimates" in w.value]
    assert warnings and "(2, 5: z = -5.2)" in warnings[0] and "replicas would make the SE trustworthy" in warnings[0]
    assert "(64," not in warnings[0]
    tables = [d.value for d in at.dataframe if "flag" in d.value.columns]
    assert tables, "the per-b table is shown"
    table = tables[0]
    assert table["b"].tolist() == [2, 64]
    assert table["flag"].iloc[0].startswith("unreliable") and table["flag"].iloc[1] == ""
    assert abs(table["estimate"].iloc[0] - 7.33) < 0.01 and abs(table["exact"].iloc[0] - 11.40) < 0.01
    assert table["z"].iloc[0] < -4
    assert any(b.label == "Per-b table (CSV)" for b in at.get("download_button"))


def test_mlp_split_says_what_is_not_resolved():
    """64 noise samples: B_simple is not resolved (a note to raise noise_samples, 'not resolved' in the table)."""
    at = open_with("pages/mlp.py", {"setting": "mlp", "hidden": "[8]", "inits": "2", "replicas": "4", "epochs": "1",
                                    "batch_sizes": "[16]", "noise_samples": "64", "eval_size": "200"})
    app.by_label(at.button, "Run").click()
    at.run()
    app.wait_for_run(at, "mlp")
    assert not at.exception and not at.error, (at.exception, [e.value for e in at.error])
    notes = [i.value for i in at.info]
    assert any("B_simple is not resolved" in n and "noise_samples" in n for n in notes), notes
    split = [d.value for d in at.dataframe if any(c.startswith("total − one-step") for c in d.value.columns)]
    assert split and any("not resolved" in str(v) for v in split[0].iloc[0].tolist())

"""CLI: good configs give the documented schema; bad fields exit 2 with one line naming the field, no traceback."""

import json
import os
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT, tiny_config_json



def cli(*args, config=None, tmp_path=None):
    path = None
    if config is not None:
        path = Path(tmp_path) / "config.json"
        path.write_text(config if isinstance(config, str) else json.dumps(config))
    cmd = [sys.executable, "-m", "backend", *args] + ([str(path)] if path else [])
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300, env=os.environ.copy())


def test_theory_schema(tmp_path):
    out = cli("theory", config={"setting": "linear_regression", "steps": 4, "batch_sizes": [2, 500]},
              tmp_path=tmp_path)
    assert out.returncode == 0, out.stderr
    res = json.loads(out.stdout)
    assert res["t"] == [0, 1, 2, 3, 4] and set(res["curves"]) == {"2", "500"}
    assert set(res["curves"]["2"]) == {"var_g", "var_full_grad", "loss"}
    assert res["curves"]["500"]["var_g"] == [0.0] * 5 and res["curves"]["2"]["var_g"][0] > 0


def test_simulate_schema_and_agreement(tmp_path):
    cfg = tiny_config_json(replicas=4000, batch_sizes=[2, 3])
    out = cli("simulate", config=cfg, tmp_path=tmp_path)
    assert out.returncode == 0, out.stderr
    res = json.loads(out.stdout)
    for b in ("2", "3"):
        entry = res["curves"][b]
        for q in ("var_g", "var_full_grad", "loss"):
            assert len(entry[q]) == 4 and len(entry[q + "_se"]) == 4
    exact = json.loads(cli("theory", config=cfg, tmp_path=tmp_path).stdout)
    for b in ("2", "3"):
        est, se = np.array(res["curves"][b]["var_g"]), np.array(res["curves"][b]["var_g_se"])
        assert np.all(np.abs(est - np.array(exact["curves"][b]["var_g"])) <= 4 * se)


def test_polynomial_exact_strings_match_float(tmp_path):
    cfg = tiny_config_json()
    exact = json.loads(cli("polynomial", "--t", "3", config=cfg, tmp_path=tmp_path).stdout)
    flt = json.loads(cli("polynomial", "--t", "3", "--float", config=cfg, tmp_path=tmp_path).stdout)
    assert exact["t"] == 3 and exact["quantity"] == "var_g" and exact["basis"] == "inv_b" and exact["exact"]
    assert all(isinstance(c, str) for c in exact["coefficients"]) and exact["degree"] == 4
    vals = [float(Fraction(c)) for c in exact["coefficients"]]
    np.testing.assert_allclose(vals, flt["coefficients"], rtol=1e-9, atol=1e-12)
    # evaluated at b, the exact polynomial equals the curve from `theory`
    theory = json.loads(cli("theory", config=cfg, tmp_path=tmp_path).stdout)
    for b in range(1, 6):
        val = sum(Fraction(c) * Fraction(1, b) ** k for k, c in enumerate(exact["coefficients"]))
        assert float(val) == pytest.approx(theory["curves"][str(b)]["var_g"][3], rel=1e-12, abs=1e-15)


@pytest.mark.parametrize("cfg,field", [
    ({"batch_sizes": [0]}, "batch_sizes[0]"),
    ({"batch_sizes": [600]}, "batch_sizes"),
    ({"lr": {"c": -1}}, "lr.c"),
    ({"steps": 10**7}, "steps"),
    ({"replicas": 2}, "replicas"),
    ({"w0": [1]}, "w0"),
    ({"bogus": 1}, "bogus"),
    ({"sampler": "x"}, "sampler"),
    ("{not json", "config"),
    ("[1, 2]", "config"),
])
def test_bad_config_exit_2(tmp_path, cfg, field):
    out = cli("theory", config=cfg, tmp_path=tmp_path)
    assert out.returncode == 2
    assert "Traceback" not in out.stderr and out.stderr.strip().count("\n") == 0
    assert out.stderr.startswith(f"error: {field}")


def test_a_downloaded_config_keeps_its_floats(tmp_path):
    """The CLI reads a config as the page downloads it (export.config_json, with "json_decimals": "float"): lr.c 0.8
    stays the float it was, so the polynomial is a float one; the same file without the marker is hand-written JSON,
    its 0.8 the exact 4/5, and the polynomial exact."""
    from backend import export
    from backend.config import parse_config

    download = export.config_json(parse_config(tiny_config_json(lr={"schedule": "constant", "c": 0.8})))
    out = cli("polynomial", "--t", "3", config=download, tmp_path=tmp_path)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["exact"] is False
    hand = {k: v for k, v in json.loads(download).items() if k != "json_decimals"}
    out = cli("polynomial", "--t", "3", config=json.dumps(hand), tmp_path=tmp_path)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["exact"] is True
    out = cli("theory", config={**hand, "json_decimals": "exact"}, tmp_path=tmp_path)
    assert out.returncode == 2 and out.stderr.startswith("error: json_decimals:") and len(out.stderr.splitlines()) == 1


def test_bad_arguments_exit_2(tmp_path):
    assert cli("polynomial", config={}, tmp_path=tmp_path).returncode == 2  # --t missing
    out = cli("polynomial", "--t", "3", "--quantity", "nope", config={}, tmp_path=tmp_path)
    assert out.returncode == 2 and out.stderr.startswith("error: quantity")
    out = cli("theory", "/nonexistent.json")
    assert out.returncode == 2 and "cannot read" in out.stderr
    out = cli("polynomial", "--t", "31", config=tiny_config_json(), tmp_path=tmp_path)
    assert out.returncode == 2 and out.stderr.startswith("error: t:")


def test_check_command(tmp_path):
    out = cli("check", config={"steps": 5}, tmp_path=tmp_path)
    res = json.loads(out.stdout)
    assert res["checks"]["var_g"]["holds"] and res["checks"]["var_g"]["checked_b"] == 500


def test_check_is_the_settings_own(tmp_path):
    """Each setting's own check: the deep linear network's is Theorems 4–5 at each t with an exact method (before,
    the CLI ran linear regression's for any setting it did not name); a setting without exact theory is refused in
    one line."""
    out = cli("check", config={"setting": "deep_linear", "preset": "scalar network"}, tmp_path=tmp_path)
    assert out.returncode == 0, out.stderr
    checks = json.loads(out.stdout)["checks"]
    assert checks and all({"no_constant_term", "b0", "method"} <= set(c) for qs in checks.values() for c in qs.values())
    assert all(qs["var_g"]["no_constant_term"] for qs in checks.values())  # Theorem 4: no constant term in 1/b
    out = cli("check", config={"setting": "mlp"}, tmp_path=tmp_path)
    assert out.returncode == 2 and out.stderr.startswith("error: setting:") and len(out.stderr.splitlines()) == 1

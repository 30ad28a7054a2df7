"""The Setting protocol and its registry: every setting provides the same interface, the API dispatches through the
registry only, and `python -m backend settings` prints it."""

import inspect
import json
import os
import subprocess
import sys

import pytest
from conftest import ROOT

from backend import api, core, settings
from backend.config import parse_config
from backend.settings.base import Quantity, Setting

PROTOCOL = [name for name in dir(Setting) if not name.startswith("_")] + list(Setting.__annotations__)


@pytest.mark.parametrize("name", sorted(settings.SETTINGS))
def test_every_setting_implements_the_protocol(name):
    module = settings.SETTINGS[name]
    missing = [attr for attr in PROTOCOL if not hasattr(module, attr)]
    assert not missing, missing
    assert module.NAME == name and module.CONFIG.setting == name
    config = parse_config({"setting": name})
    table = module.quantities(config)
    assert table and all(isinstance(q, Quantity) and q.x in ("t", "epoch") for q in table)
    assert len({q.name for q in table}) == len(table)
    for method in ("theory", "simulate", "cached_simulation", "estimate", "polynomial", "quantities", "check",
                   "simulate_document"):
        assert callable(getattr(module, method))
    assert set(module.PRESETS) and all(isinstance(p, dict) for p in module.PRESETS.values())


@pytest.mark.parametrize("module", [api, core], ids=lambda m: m.__name__)
def test_api_and_core_are_thin_dispatchers(module):
    """No per-setting branching in the API or the run core: they name no config class and ask no isinstance."""
    source = inspect.getsource(module)
    assert "isinstance(config" not in source and "Config)" not in source


def test_cli_prints_the_registry():
    out = subprocess.run([sys.executable, "-m", "backend", "settings"], cwd=ROOT, capture_output=True, text=True,
                         env=os.environ.copy(), timeout=120)
    assert out.returncode == 0, out.stderr
    reg = {s["name"]: s for s in json.loads(out.stdout)["settings"]}
    assert list(reg) == list(settings.SETTINGS)
    lr = {q["name"]: q for q in reg["linear_regression"]["quantities"]}
    assert set(lr) == {"var_g", "var_full_grad", "loss"} and all(q["exact"] and q["x"] == "t" for q in lr.values())
    mlp = {q["name"]: q for q in reg["mlp"]["quantities"]}
    assert {"var_g", "noise_one_step", "b_simple", "gap_distorted"} <= set(mlp)
    assert all(not q["exact"] and q["x"] == "epoch" for q in mlp.values())
    assert "gap_distorted" not in {q["name"] for q in reg["sequence"]["quantities"]}
    assert reg["deep_linear"]["presets"] == ["laptop", "scalar network", "paper (Figure 3)"]
    assert set(reg["mlp"]["presets"]) == {"laptop", "paper"}


def test_unknown_setting_is_refused_with_the_known_ones():
    with pytest.raises(Exception, match="expected one of"):
        settings.get("fifth")


def test_pages_use_only_the_public_api():
    """Pages gather inputs, call backend.api and draw (backend.charts); they reach into no other backend module."""
    import re

    for page in sorted((ROOT / "pages").glob("*.py")):
        imported = set(re.findall(r"^from backend(?:\.(\w+))? import ([\w, ]+)", page.read_text(), re.MULTILINE))
        modules = {sub or name.strip() for sub, names in imported for name in names.split(",")}
        assert modules <= {"api", "charts"}, (page.name, modules)


def test_a_setting_is_found_from_its_module_alone(tmp_path, monkeypatch):
    """The registry discovers every module of backend/settings that defines NAME: a fifth setting needs no edit
    elsewhere in the backend (the app lists pages/<NAME>.py by itself)."""
    import importlib
    import shutil

    import backend.settings as pkg

    fake = tmp_path / "fifth.py"
    shutil.copy(ROOT / "backend" / "settings" / "linear_regression.py", fake)
    fake.write_text(fake.read_text().replace('NAME = "linear_regression"', 'NAME = "fifth"')
                    .replace("ORDER = 1", "ORDER = 99"))  # after every setting there is
    monkeypatch.setattr(pkg, "__path__", [*pkg.__path__, str(tmp_path)])
    try:
        found = pkg._discover()
        assert list(found)[-1] == "fifth" and list(found)[:-1] == list(settings.SETTINGS)
    finally:
        sys.modules.pop("backend.settings.fifth", None)
    assert [p["name"] for p in api.setting_pages()] == list(settings.SETTINGS)
    importlib.invalidate_caches()

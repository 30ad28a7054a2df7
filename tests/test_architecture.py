"""The structure the project is held to: no import cycle among its modules, no setting named outside its own rooms,
the API a face that nothing in backend/ imports, and a fifth setting that needs no edit outside its module."""

import shutil
import sys

import pytest
from conftest import ROOT
from import_graph import cycles, import_graph, modules, setting_literals

from backend import core, costs, settings
from backend.config import parse_config


def test_no_import_cycle():
    assert cycles(import_graph(modules(ROOT))) == []


def test_the_checker_finds_a_cycle_and_a_setting_name(tmp_path):
    """The check itself: a two-module cycle through an import inside a function, and a setting's name in backend/."""
    (tmp_path / "backend").mkdir()
    (tmp_path / "backend" / "__init__.py").write_text("")
    (tmp_path / "backend" / "a.py").write_text("from backend import b\n")
    (tmp_path / "backend" / "b.py").write_text("def f():\n    from backend.a import x\n    return 'mlp'\n")
    mods = modules(tmp_path)
    assert cycles(import_graph(mods)) == [["backend.a", "backend.b"]]
    assert setting_literals(mods, {"mlp"}, tmp_path) == ["backend/b.py:3:mlp"]


def test_no_setting_is_named_outside_its_rooms():
    """No table, branch or literal keyed by a setting's name in backend/ or ui/ (backend/settings, pages/ and
    ui/shell.py are the settings' own rooms)."""
    assert setting_literals(modules(ROOT), set(settings.SETTINGS), ROOT) == []


def test_nothing_in_the_backend_imports_the_api():
    """backend/api.py is the face on top: pages, the CLI (backend/__main__.py) and scripts import it; the core below
    (backend/core.py) is what sweeps, the advisor, the cluster and the CLI documents build on."""
    graph = import_graph(modules(ROOT))
    users = sorted(m for m, deps in graph.items() if m.startswith("backend") and "backend.api" in deps)
    assert users == ["backend.__main__"]


@pytest.mark.parametrize("name", list(settings.SETTINGS))
def test_each_setting_owns_its_run_rules(name):
    """Its GPU model, whether it resumes, its check (or a clear refusal) and its advisor hooks, all in its module."""
    module = settings.SETTINGS[name]
    assert isinstance(module.GPU_MODEL, costs.GpuModel) and isinstance(module.RESUMABLE, bool)
    est = core.estimate(parse_config({"setting": name}))
    assert est["gpu_model"] is module.GPU_MODEL and costs.gpu_seconds(est, lambda arithmetic: 1e13) > 0
    assert core.time_limit(parse_config({"setting": name})) == (core.MAX_RESUMABLE_SECONDS if module.RESUMABLE
                                                               else core.MAX_SIM_SECONDS)
    assert hasattr(module, "advise") or all(hasattr(module, k) for k in ("advise_cell", "ADVISOR_QUANTITIES",
                                                                            "advisor_steps"))


def test_a_fifth_setting_runs_through_the_core_from_its_module_alone(tmp_path, monkeypatch):
    """A copy of linear regression's module under another name: estimated, guarded, timed on a GPU, checked, offered
    its optimizers and given its place in the navigation and its Home card (after the others, by its ORDER) with
    no edit elsewhere in the backend or ui/ (before, costs.GPU_MODELS raised a KeyError and the guard's time limit, the
    CLI's check and its document were chosen by the setting's name)."""
    import backend.settings as pkg

    fake = tmp_path / "fifth.py"
    shutil.copy(ROOT / "backend" / "settings" / "linear_regression.py", fake)
    fake.write_text(fake.read_text().replace('NAME = "linear_regression"', 'NAME = "fifth"')
                    .replace('setting: ClassVar[str] = "linear_regression"', 'setting: ClassVar[str] = "fifth"')
                    .replace("ORDER = 1", "ORDER = 6"))
    monkeypatch.setattr(pkg, "__path__", [*pkg.__path__, str(tmp_path)])
    try:
        monkeypatch.setattr(pkg, "SETTINGS", pkg._discover())
        config = parse_config({"setting": "fifth", "steps": 5, "batch_sizes": [4, 16], "replicas": 20})
        assert config.setting == "fifth"
        est = core.estimate(config)
        assert costs.gpu_seconds(est, lambda arithmetic: 1e13) > 0
        assert core.guard(config, core.resolve_device("cpu"))["seconds"] == est["seconds"]
        assert set(core.check(config)) == {"var_g", "var_full_grad", "loss"}
        from backend.optimizer_choices import optimizer_names
        from ui.shell import nav_pages

        assert optimizer_names("fifth") == ("sgd",)  # the shared optimizer widget asks the module
        pages = nav_pages()  # the navigation, the sidebar's links and Home's list
        fifth = [p for p in pages if p.url_path == "fifth"]
        assert len(fifth) == 1 and fifth[0].path == "pages/fifth.py"
        copied = settings.SETTINGS["linear_regression"]
        assert (fifth[0].title, fifth[0].card) == (copied.TITLE, copied.CARD)
        order = [p.url_path for p in pages]
        assert order[len(settings.SETTINGS)] == "fifth" and order[len(settings.SETTINGS) + 1] == "advisor"  # ORDER 6
    finally:
        sys.modules.pop("backend.settings.fifth", None)


def test_the_batchvar_command_is_the_cli_of_python_m_backend():
    """pyproject.toml: ``pip install -e .`` gives a ``batchvar`` command bound to the main that ``python -m backend``
    runs, with requirements.txt as its dependencies and the backend package (its data included) installed."""
    import importlib
    import tomllib

    import backend.__main__ as cli  # what `python -m backend` runs

    meta = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    module, _, name = meta["project"]["scripts"]["batchvar"].partition(":")
    assert getattr(importlib.import_module(module), name) is cli.main
    tool = meta["tool"]["setuptools"]
    assert tool["dynamic"]["dependencies"] == {"file": ["requirements.txt"]} and "dependencies" in meta["project"]["dynamic"]
    assert "backend" in tool["packages"]["find"]["include"] and tool["package-data"]["backend"] == ["data/**/*"]

"""Sweeps with the local executor: each cell is simulate's output and simulate's cache entry; a rerun is all cache
hits; bad sweeps are refused before anything runs (exit 2 naming the cell and the field); a failing cell is listed
with its error while the others finish (exit 1); cancel keeps what finished."""

import json
import os
import subprocess
import sys
import threading

import pytest
from conftest import ROOT

from backend import api, report, sweep
from backend.cache import ResultCache

BASE = {"setting": "linear_regression", "steps": 12, "replicas": 60, "batch_sizes": [2, 16]}
GRID = {"lr.c": [0.05, 0.5], "seed": [3, 4]}


def cli(*args, stdin=None, env=None):
    return subprocess.run([sys.executable, "-m", "backend", *args], cwd=ROOT, input=stdin, capture_output=True,
                          text=True, timeout=300, env={**os.environ, **(env or {})})


def sweep_cli(doc, tmp_path, *extra, env=None):
    path = tmp_path / "sweep.json"
    path.write_text(json.dumps(doc))
    return cli("sweep", str(path), *extra, env=env)


def test_cells_are_simulate_outputs_and_rerun_is_all_cached(tmp_path):
    env = {"BATCHVAR_CACHE_DIR": str(tmp_path / "cache")}
    first = sweep_cli({"base": BASE, "grid": GRID}, tmp_path, env=env)
    assert first.returncode == 0, first.stderr
    out = json.loads(first.stdout)
    assert out["executor"] == "local" and out["failed"] == [] and len(out["cells"]) == 4
    assert [c["overrides"] for c in out["cells"]] == [{"lr.c": 0.05, "seed": 3}, {"lr.c": 0.05, "seed": 4},
                                                     {"lr.c": 0.5, "seed": 3}, {"lr.c": 0.5, "seed": 4}]
    assert not any(c["cached"] for c in out["cells"]) and {c["node"] for c in out["cells"]} == {"local"}
    # one progress line per finished cell, with an ETA, after the estimate
    lines = first.stderr.strip().splitlines()
    assert lines[0].startswith("sweep: 4 cells (0 cached)") and len(lines) == 5
    assert all(line.startswith(f"[{k}/4]") and "ETA" in line for k, line in enumerate(lines[1:], 1))
    for cell in out["cells"]:
        assert cell["config"]["lr"]["c"] == ("1/20" if cell["overrides"]["lr.c"] == 0.05 else "1/2")
        assert cell["config"]["seed"] == cell["overrides"]["seed"] and cell["config"]["steps"] == 12
    for cell in out["cells"][::3]:
        # the cell's config is the base with the overrides, and its result is what `simulate` prints for it:
        # served from the same cache entry (hit), and equal to a fresh computation in another cache
        (tmp_path / "cell.json").write_text(json.dumps(cell["config"]))
        again = cli("simulate", str(tmp_path / "cell.json"), env=env)
        assert again.returncode == 0 and json.loads(again.stdout) == cell["result"]
        fresh = cli("simulate", "--no-cache", str(tmp_path / "cell.json"), env=env)
        assert json.loads(fresh.stdout) == cell["result"]
    cache = ResultCache(tmp_path / "cache")
    assert all(api.cached_simulation(api.parse_config(c["config"]), cache) is not None for c in out["cells"])
    second = sweep_cli({"base": BASE, "grid": GRID}, tmp_path, env=env)
    again = json.loads(second.stdout)
    assert second.returncode == 0 and all(c["cached"] for c in again["cells"])
    assert [c["result"] for c in again["cells"]] == [c["result"] for c in out["cells"]]
    assert "(4 cached)" in second.stderr


def test_cells_differ_where_the_grid_says(tmp_path):
    out = sweep.run(sweep.parse_sweep({"base": BASE, "grid": {"seed": [3, 4]}}), cache=ResultCache(tmp_path))
    a, b = (c["result"]["curves"]["2"]["loss"] for c in out["cells"])
    assert a[0] == b[0] and a[1:] != b[1:]  # the same w0 (it has its own seed), other mini-batch draws


@pytest.mark.parametrize("grid, named", [
    ({"foo": [1]}, 'cell 0 {"foo": 1}: foo: unknown field'),
    ({"seed": [1], "lr.c": [0.1, -1]}, 'cell 1 {"seed": 1, "lr.c": -1}: lr.c: must be positive'),
    ({"dataset.n": [10]}, 'cell 0 {"dataset.n": 10}: dataset.n: unknown field'),
    ({"nope.x": [1]}, 'cell 0 {"nope.x": 1}: nope.x:'),
    ({"seed": []}, "grid.seed: expected a non-empty list"),
    ({"lr": [0.1], "lr.c": [1]}, "grid.lr.c: overlaps the grid field 'lr'"),
    ({"setting": ["mlp"]}, "grid.setting: a sweep runs one setting"),
    ({"batch_sizes": [[2, 4], [0]]}, 'cell 1 {"batch_sizes": [0]}: batch_sizes[0]: must be between'),
])
def test_bad_sweeps_exit_2_naming_cell_and_field(tmp_path, grid, named):
    env = {"BATCHVAR_CACHE_DIR": str(tmp_path / "cache")}
    out = sweep_cli({"base": {"setting": "linear_regression", "steps": 3}, "grid": grid}, tmp_path, env=env)
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr.count("\n") == 1 and "Traceback" not in out.stderr
    assert named in out.stderr, out.stderr
    assert not (tmp_path / "cache" / "results").exists() or len(ResultCache(tmp_path / "cache")) == 0


def test_bad_sweep_files(tmp_path):
    for text, named in (("[1]", "sweep: expected a JSON object"), ('{"grid": {}}', "sweep.base: missing"),
                        ('{"base": {}, "grid": {}, "x": 1}', "sweep.x: unknown field"),
                        ('{"base": {"setting": "mlp", "preset": "nope"}}', "preset: expected one of")):
        out = cli("sweep", "-", stdin=text)
        assert out.returncode == 2 and named in out.stderr, out.stderr
    out = cli("sweep", "--address", "127.0.0.1:1", "-", stdin=json.dumps({"base": BASE}))
    assert out.returncode == 2 and "address: --address joins a Ray cluster" in out.stderr


def test_a_failing_cell_is_listed_and_the_rest_finish(tmp_path):
    env = {"BATCHVAR_CACHE_DIR": str(tmp_path / "cache")}
    # 10^6 replicas × 20 000 steps passes validation but the resource guard refuses it at run time
    out = sweep_cli({"base": {**BASE, "steps": 20000}, "grid": {"replicas": [60, 1000000]}}, tmp_path, env=env)
    assert out.returncode == 1, out.stderr
    res = json.loads(out.stdout)
    assert [c["overrides"] for c in res["cells"]] == [{"replicas": 60}]
    assert res["failed"][0]["overrides"] == {"replicas": 1000000}
    assert "replicas:" in res["failed"][0]["error"] and "minutes" in res["failed"][0]["error"]
    assert "failed: replicas:" in out.stderr


def test_cancel_keeps_the_finished_cells(tmp_path):
    cache = ResultCache(tmp_path)
    spec = sweep.parse_sweep({"base": BASE, "grid": {"seed": [10, 11, 12]}})
    cancel = threading.Event()
    out = sweep.run(spec, cache=cache, on_cell=lambda k, n, e: cancel.set(), cancel=cancel)
    assert [c["overrides"] for c in out["cells"]] == [{"seed": 10}]
    assert [(f["overrides"], f["error"]) for f in out["failed"]] == [({"seed": 11}, "cancelled"),
                                                                      ({"seed": 12}, "cancelled")]
    assert api.cached_simulation(spec.cells[0].config, cache) is not None
    assert api.cached_simulation(spec.cells[1].config, cache) is None


def test_estimate_counts_only_uncached_cells(tmp_path):
    cache = ResultCache(tmp_path)
    spec = sweep.parse_sweep({"base": BASE, "grid": {"seed": [20, 21]}})
    before = sweep.estimate(spec, sweep.LocalExecutor(), cache)
    assert before["cells"] == 2 and before["cached"] == 0 and before["seconds"] > 0 and before["workers"] == 1
    api.simulate(spec.cells[0].config, cache=cache)
    after = sweep.estimate(spec, sweep.LocalExecutor(), cache)
    assert after["cached"] == 1 and 0 < after["seconds"] < before["seconds"]


def test_simulate_output_is_the_cli_document(tmp_path):
    config = api.parse_config({**BASE, "seed": 30})
    doc = report.simulate_output(config, api.simulate(config, cache=ResultCache(tmp_path)))
    (tmp_path / "c.json").write_text(json.dumps(config.to_json()))
    out = cli("simulate", str(tmp_path / "c.json"), env={"BATCHVAR_CACHE_DIR": str(tmp_path)})
    assert json.loads(out.stdout) == doc and out.stderr == ""


def test_ctrl_c_cancels_the_rest_and_prints_what_finished(tmp_path):
    """SIGINT after the first finished cell: exit 130, the finished cells in the document (and in the cache), the
    others listed as cancelled."""
    import signal
    import time

    (tmp_path / "sweep.json").write_text(json.dumps({"base": {**BASE, "steps": 400, "replicas": 400},
                                                    "grid": {"seed": [41, 42, 43, 44, 45, 46]}}))
    env = {**os.environ, "BATCHVAR_CACHE_DIR": str(tmp_path / "cache")}
    proc = subprocess.Popen([sys.executable, "-m", "backend", "sweep", str(tmp_path / "sweep.json")], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    lines = []
    deadline = time.time() + 120
    while time.time() < deadline:
        line = proc.stderr.readline()
        lines.append(line)
        if line.startswith("[1/6]"):
            break
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, (lines, err)
    res = json.loads(out)
    done = [c["overrides"]["seed"] for c in res["cells"]]
    cancelled = [f["overrides"]["seed"] for f in res["failed"] if f["error"] == "cancelled"]
    assert done[:1] == [41] and sorted(done + cancelled) == [41, 42, 43, 44, 45, 46] and cancelled
    cache = ResultCache(tmp_path / "cache")
    for cell in res["cells"]:
        assert api.cached_simulation(api.parse_config(cell["config"]), cache) is not None


def test_a_downloaded_config_as_the_base_keeps_its_floats():
    """A config downloaded from a page (with its marker "json_decimals": "float") pasted as a sweep's base: its
    decimals stay the floats they were (the cells' configs equal the download's), the same base without the marker
    reads them as exact rationals, and a bad marker value there is refused naming it."""
    from fractions import Fraction

    from backend import export
    from backend.config import parse_config
    from backend.errors import ConfigError

    cfg = parse_config({"setting": "linear_regression", "lr": {"schedule": "constant", "c": 0.8}})
    base = json.loads(export.config_json(cfg))
    spec = sweep.load_sweep(json.dumps({"base": base, "grid": {"seed": [1, 2]}}))
    assert [c.config.lr.c for c in spec.cells] == [0.8, 0.8] and isinstance(spec.cells[0].config.lr.c, float)
    del base["json_decimals"]
    spec = sweep.load_sweep(json.dumps({"base": base, "grid": {"seed": [1]}}))
    assert spec.cells[0].config.lr.c == Fraction(4, 5)
    with pytest.raises(ConfigError) as err:
        sweep.load_sweep(json.dumps({"base": {**base, "json_decimals": "exact"}, "grid": {"seed": [1]}}))
    assert err.value.field == "json_decimals"

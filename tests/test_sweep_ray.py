"""Sweeps on a real embedded Ray (2 CPUs, 127.0.0.1 only, token authentication on): each cell's result equals
simulate's, the driver writes simulate's cache entry, a rerun is all cache hits, a failing cell is listed with its
error, and the CLI's ``--executor ray`` runs end to end. One Ray for the module (start-up kept off the fast path)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import ROOT

from backend import api, cluster, report, sweep
from backend.cache import ResultCache

BASE = {"setting": "linear_regression", "steps": 10, "replicas": 50, "batch_sizes": [2, 16]}


@pytest.fixture(scope="module")
def ray_cluster():
    info = cluster.connect(None, num_cpus=2)
    yield info
    cluster.shutdown()


def _listening_sockets() -> dict[int, str]:
    """{socket inode: local address} of every listening TCP socket on this machine (IPv4 and IPv6)."""
    out = {}
    for table, v6 in (("/proc/net/tcp", False), ("/proc/net/tcp6", True)):
        if not Path(table).exists():
            continue
        for line in Path(table).read_text().splitlines()[1:]:
            parts = line.split()
            if parts[3] != "0A":  # LISTEN
                continue
            addr = parts[1].split(":")[0]
            if v6:
                ip = "::ffff:" + ".".join(str(int(addr[24:][i:i + 2], 16)) for i in (6, 4, 2, 0)) \
                    if addr[:24] == "0000000000000000FFFF0000" else addr
            else:
                ip = ".".join(str(int(addr[i:i + 2], 16)) for i in (6, 4, 2, 0))
            out[int(parts[9])] = ip
    return out


def _ray_process_sockets() -> dict[str, set[str]]:
    """{process name: listening addresses} for the Ray processes (GCS, raylet, workers, agents) on this machine."""
    listening = _listening_sockets()
    found: dict[str, set[str]] = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            if not any(k in cmd for k in ("gcs_server", "raylet", "ray::", "default_worker", "ray/_private",
                                          "ray/dashboard")):
                continue
            for fd in os.listdir(f"/proc/{pid}/fd"):
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
                if link.startswith("socket:[") and int(link[8:-1]) in listening:
                    found.setdefault(cmd.split()[0], set()).add(listening[int(link[8:-1])])
        except (FileNotFoundError, PermissionError, ProcessLookupError):
            continue
    return found


def test_embedded_ray_listens_on_loopback_only_with_token_auth(ray_cluster):
    from ray._raylet import AuthenticationMode, get_authentication_mode

    assert [n["address"] for n in ray_cluster["nodes"]] == ["127.0.0.1"] and ray_cluster["embedded"]
    sockets = _ray_process_sockets()
    assert any("gcs_server" in name for name in sockets) and any("raylet" in name for name in sockets), sockets
    addresses = set().union(*sockets.values())
    assert addresses <= {"127.0.0.1", "::ffff:127.0.0.1"}, sockets
    assert get_authentication_mode() == AuthenticationMode.TOKEN


def test_ray_cells_equal_simulate_and_rerun_is_cached(ray_cluster, tmp_path):
    cache = ResultCache(tmp_path)
    spec = sweep.parse_sweep({"base": BASE, "grid": {"seed": [1, 2], "lr.c": [0.1, 0.5]}})
    executor = cluster.RayExecutor(threads=1)
    assert executor.workers(list(spec.cells)) == 2
    seen = []
    out = sweep.run(spec, executor, cache, on_cell=lambda k, n, e: seen.append(k))
    assert out["executor"] == "ray" and out["failed"] == [] and len(out["cells"]) == 4 and seen == [1, 2, 3, 4]
    node = ray_cluster["nodes"][0]["node"]
    assert all(not c["cached"] and c["node"] == node for c in out["cells"])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the cells ran with one thread each: compare like with like
    try:
        for cell, entry in zip(spec.cells, out["cells"]):
            # the driver wrote simulate's own cache entry …
            hit = api.cached_simulation(cell.config, cache)
            assert hit is not None and report.simulate_output(cell.config, hit) == entry["result"]
            # … and it equals simulate computed here, from scratch
            fresh = api.simulate(cell.config, cache=ResultCache(tmp_path / f"fresh{cell.index}"))
            assert report.simulate_output(cell.config, fresh) == entry["result"]
    finally:
        torch.set_num_threads(threads)
    again = sweep.run(spec, executor, cache)
    assert all(c["cached"] and c["node"] == "cache" for c in again["cells"])
    assert [c["result"] for c in again["cells"]] == [c["result"] for c in out["cells"]]


def test_ray_failing_cell_is_listed_and_the_rest_cached(ray_cluster, tmp_path):
    cache = ResultCache(tmp_path)
    spec = sweep.parse_sweep({"base": {**BASE, "steps": 20000}, "grid": {"replicas": [1000000, 40]}})
    out = sweep.run(spec, cluster.RayExecutor(threads=1), cache)
    assert [f["overrides"] for f in out["failed"]] == [{"replicas": 1000000}]
    assert out["failed"][0]["error"].startswith("replicas: the run would take about")
    assert [c["overrides"] for c in out["cells"]] == [{"replicas": 40}]
    assert api.cached_simulation(spec.cells[1].config, cache) is not None


def test_a_cell_asking_for_cuda_is_refused_on_a_cluster_without_gpus(ray_cluster, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: the embedded cluster has one")  # the CUDA box runs the GPU path
    executor = cluster.RayExecutor(threads=1)
    spec = sweep.parse_sweep({"base": {**BASE, "device": "cpu"}, "grid": {"seed": [1]}})
    assert executor.device(spec.cells[0].config).type == "cpu"
    with pytest.raises(api.ConfigError, match="device: the cell asks for CUDA"):
        executor.device(_cuda_config())


def _cuda_config():
    """A config that names CUDA, built without the CUDA check of the boundary (this machine has none)."""
    import dataclasses

    return dataclasses.replace(api.parse_config(BASE), device="cuda")


def test_threads_beyond_the_largest_node_are_refused(ray_cluster):
    with pytest.raises(api.ConfigError, match="threads: each cell asks for 64 CPU thread"):
        cluster.RayExecutor(threads=64)


def test_cli_ray_executor_end_to_end(tmp_path):
    (tmp_path / "sweep.json").write_text(json.dumps({"base": BASE, "grid": {"seed": [7, 8]}}))
    env = {**os.environ, "BATCHVAR_CACHE_DIR": str(tmp_path / "cache")}
    out = subprocess.run([sys.executable, "-m", "backend", "sweep", "--executor", "ray", "--threads", "1",
                          str(tmp_path / "sweep.json")], cwd=ROOT, capture_output=True, text=True, timeout=300,
                         env=env)
    assert out.returncode == 0, out.stderr
    res = json.loads(out.stdout)
    assert res["executor"] == "ray" and len(res["cells"]) == 2 and not any(c["cached"] for c in res["cells"])
    assert "on ray" in out.stderr.splitlines()[0] and len(out.stderr.strip().splitlines()) == 3
    (tmp_path / "cell.json").write_text(json.dumps(res["cells"][1]["config"]))
    sim = subprocess.run([sys.executable, "-m", "backend", "simulate", str(tmp_path / "cell.json")], cwd=ROOT,
                         capture_output=True, text=True, timeout=300, env={**env, "OMP_NUM_THREADS": "1"})
    assert json.loads(sim.stdout) == res["cells"][1]["result"]


def test_the_advisor_sweeps_a_replica_setting_on_ray(ray_cluster, tmp_path, monkeypatch):
    """Deep linear network, tiny: `advise --executor ray` runs every (rule, b) cell as a Ray task; its answer equals
    the local advisor's (one thread on both sides), with the cells then served from the cache."""
    from backend import advisor

    monkeypatch.setenv("BATCHVAR_CACHE_DIR", str(tmp_path / "ray"))
    cfg = api.parse_config({"setting": "deep_linear", "batch_sizes": [2, 8], "replicas": 200, "device": "cpu"})
    on_ray = advisor.advise_rules(cfg, 64, ("none", "sqrt"), executor=cluster.RayExecutor(threads=1))
    monkeypatch.setenv("BATCHVAR_CACHE_DIR", str(tmp_path / "local"))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        local = advisor.advise_rules(cfg, 64, ("none", "sqrt"))
    finally:
        torch.set_num_threads(threads)
    for rule in ("none", "sqrt"):
        assert on_ray[rule]["best_b"] == local[rule]["best_b"]
        for b in ("2", "8"):
            ray_row, local_row = on_ray[rule]["curves"][b], local[rule]["curves"][b]
            for q in ("loss", "loss_se", "var_g", "var_g_se", "steps"):
                assert ray_row[q] == local_row[q], (rule, b, q)


def test_replica_cbs_runs_as_one_ray_task(ray_cluster, tmp_path):
    """`cbs --executor ray` (#26): the MLP's replica branches as one Ray task whose cache entry the driver writes;
    the documents equal the local run's (one thread on both sides) and a second call is a cache hit."""
    from backend import cbs
    from backend.cache import ResultCache

    cfg = api.parse_config({"setting": "mlp", "hidden": [4], "replicas": 3, "epochs": 1, "noise_samples": 16,
                            "eval_size": 200, "device": "cpu"})
    request = dict(b_ref=8, checkpoints=[0, 4], samples=16, scalings=("none", "linear"), ks=[1, 2])
    cache = ResultCache(tmp_path / "ray")
    on_ray = cbs.cbs_rules(cfg, **request, cache=cache, executor=cluster.RayExecutor(threads=1))
    assert len(cache) == 1 and cache.stats["hits"] == 1  # the worker's entry, read by the driver
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        local = cbs.cbs_rules(cfg, **request, cache=ResultCache(tmp_path / "local"), executor=sweep.LocalExecutor())
    finally:
        torch.set_num_threads(threads)
    assert on_ray == local


def test_ray_cbs_advances_the_progress_step_by_step_as_the_local_run_does(ray_cluster, tmp_path):
    """`cbs --executor ray`: the driver's progress gets the local run's total — the reference run's steps to the last
    checkpoint and each branch's ⌊S/(kB)⌋ steps, 4 + 16/8 + 16/16 — and advances as the task reports its steps (here
    at every step: report_seconds 0), the local run's increments; not finished at once at the end from a zero total."""
    from backend import cbs
    from backend.progress import Progress

    cfg = api.parse_config({"setting": "mlp", "hidden": [4], "replicas": 3, "epochs": 1, "noise_samples": 16,
                            "eval_size": 200, "device": "cpu"})
    request = dict(b_ref=8, checkpoints=[0, 4], samples=16, scalings=("none",), ks=[1, 2])
    total = 4 + 16 // 8 + 16 // 16
    on_ray = cluster.RayExecutor(threads=1)
    on_ray.report_seconds = 0
    calls: dict[str, list] = {}
    for name, executor in (("local", sweep.LocalExecutor()), ("ray", on_ray)):
        progress = Progress()
        seen = calls.setdefault(name, [])
        progress.on_advance = lambda n, p=progress, seen=seen: seen.append((n, p.done, p.total))
        cbs.cbs_rules(cfg, **request, cache=ResultCache(tmp_path / name), executor=executor, progress=progress)
        assert progress.done == progress.total == total, name
    assert calls["ray"] == calls["local"] == [(1, k, total) for k in range(1, total + 1)]


def test_cancel_stops_the_ray_cbs_task_and_writes_nothing(ray_cluster, tmp_path):
    """The page's Cancel on a Ray cbs: set at the task's first reported step, the driver raises Cancelled, writes no
    cache entry, and the task is cancelled (force): the cluster's CPUs are free again long before the run would
    have ended (its estimate: over a minute on 2 cores)."""
    import threading
    import time

    import ray

    from backend import cbs
    from backend.errors import Cancelled
    from backend.progress import Progress

    cfg = api.parse_config({"setting": "mlp", "hidden": [128, 128], "replicas": 256, "epochs": 4,
                            "noise_samples": 16, "eval_size": 200, "device": "cpu"})
    request = dict(b_ref=8, checkpoints=[0, 700], samples=4096, scalings=("none",), ks=[1, 2, 4])
    assert api.cbs_estimate(cfg, 8, [0, 700], 4096, ("none",), [1, 2, 4])["seconds"] > 60
    on_ray = cluster.RayExecutor(threads=1)
    on_ray.report_seconds = 0
    cancel, progress = threading.Event(), Progress()
    progress.on_advance = lambda units: cancel.set()
    cache = ResultCache(tmp_path / "cbs")
    with pytest.raises(Cancelled):
        cbs.cbs_rules(cfg, **request, cache=cache, executor=on_ray, progress=progress, cancel=cancel)
    assert len(cache) == 0 and 0 < progress.done < progress.total
    total = ray.cluster_resources()["CPU"]
    deadline = time.monotonic() + 30
    while ray.available_resources().get("CPU", 0) < total and time.monotonic() < deadline:
        time.sleep(0.2)
    assert ray.available_resources().get("CPU", 0) == total


def test_the_driver_refuses_a_worker_document_of_other_code_config_device_or_key():
    """cluster.accept, no Ray: a worker's report equal to the driver's own passes; any of code version, normalised
    config, device or cache key differing is one line naming the cell and what differs."""
    from backend import cache as cache_module

    cfg = api.parse_config(BASE)
    other = api.parse_config({**BASE, "seed": 3})
    key = "k" * 64
    doc = {"code": cache_module.CODE_VERSION, "config": cfg.to_json(), "device": "cpu", "key": key}
    cluster.accept(doc, cfg, torch.device("cpu"), 'cell {"seed": 1}', key)
    cluster.accept({**doc, "key": "other"}, cfg, torch.device("cpu"), "the replica cbs")  # no key asked for
    for changed, differs in (({"code": "0123456789abcdef"}, "code version is"),
                             ({"config": other.to_json()}, "config is"), ({"device": "cuda"}, "device is"),
                             ({"key": "k" * 63 + "j"}, "cache key is"),
                             ({"code": "x", "device": "cuda"}, "code version and device are")):
        with pytest.raises(api.ConfigError) as err:
            cluster.accept({**doc, **changed}, cfg, torch.device("cpu"), 'cell {"seed": 1}', key)
        msg = str(err.value)
        assert msg.startswith(f"executor: cell {{\"seed\": 1}}: the Ray worker's {differs} not the driver's: "), msg
        assert "\n" not in msg


def test_a_stale_worker_result_is_refused_not_cached(ray_cluster, tmp_path, monkeypatch):
    """The driver's code version made other than the workers' (as a driver would see a stale worker): the Ray cbs
    run is refused naming the run and nothing goes into the cache; a sweep cell is listed failed, naming the cell."""
    from backend import cbs

    monkeypatch.setattr(cluster, "CODE_VERSION", "0123456789abcdef")
    cfg = api.parse_config({"setting": "mlp", "hidden": [4], "replicas": 3, "epochs": 1, "noise_samples": 16,
                            "eval_size": 200, "device": "cpu"})
    cache = ResultCache(tmp_path / "cbs")
    with pytest.raises(api.ConfigError, match=r"^executor: the replica cbs of mlp: the Ray worker's code version is "
                                              r"not the driver's: its result is refused"):
        cbs.cbs_rules(cfg, b_ref=8, checkpoints=[0, 4], samples=16, scalings=("none",), ks=[1, 2], cache=cache,
                      executor=cluster.RayExecutor(threads=1))
    assert len(cache) == 0
    cells = ResultCache(tmp_path / "cells")
    spec = sweep.parse_sweep({"base": BASE, "grid": {"seed": [5]}})
    out = sweep.run(spec, cluster.RayExecutor(threads=1), cells)
    assert out["cells"] == [] and [f["error"] for f in out["failed"]] == [
        "executor: cell {\"seed\": 5}: the Ray worker's code version is not the driver's: its result is refused "
        "(a worker running other batchvar code or config)"]
    assert len(cells) == 0


def test_a_client_without_the_token_is_refused(ray_cluster):
    """Token authentication is on: a process that joins the embedded cluster with a wrong token is turned away."""
    import ray

    address = ray.get_runtime_context().gcs_address
    code = ("import ray, sys\n"
            "try:\n"
            f"    ray.init(address={address!r}, log_to_driver=False)\n"
            "except Exception as e:\n"
            "    print('refused', type(e).__name__); sys.exit(3)\n"
            "print('joined'); sys.exit(0)\n")
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": "not-the-token-" + "0" * 20}
    env.pop("RAY_AUTH_TOKEN_PATH", None)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert out.returncode == 3 and "refused" in out.stdout, (out.stdout, out.stderr[-500:])

"""Cache: miss then hit, config and code changes miss, corrupt or planted entries are recomputed, compute once."""

import multiprocessing as mp
import pickle
import time

import diskcache
import numpy as np
import pytest

from backend import api
from backend.cache import ResultCache, decode, encode, make_key
from backend.config import parse_config


def compute_factory(counter):
    def compute():
        counter.append(1)
        return {"kind": "x"}, {"a": np.arange(5.0)}
    return compute


def test_miss_then_hit_and_roundtrip(tmp_path):
    cache = ResultCache(tmp_path)
    calls = []
    key = make_key("k", {"a": 1})
    m1, a1, hit1 = cache.get_or_compute(key, compute_factory(calls))
    m2, a2, hit2 = cache.get_or_compute(key, compute_factory(calls))
    assert (hit1, hit2) == (False, True) and len(calls) == 1
    np.testing.assert_array_equal(a2["a"], np.arange(5.0)) and m2 == m1


def test_changed_config_or_code_version_misses():
    base = make_key("simulate", {"steps": 10})
    assert make_key("simulate", {"steps": 11}) != base
    assert make_key("simulate", {"steps": 10}, code_version="other") != base
    assert make_key("theory", {"steps": 10}) != base


def test_api_simulate_hits_and_theory_ignores_simulation_fields(tmp_path):
    cache = ResultCache(tmp_path)
    cfg = parse_config({"steps": 3, "batch_sizes": [4], "replicas": 20})
    r1 = api.simulate(cfg, cache=cache)
    r2 = api.simulate(cfg, cache=cache)
    assert not r1["cached"] and r2["cached"]
    np.testing.assert_array_equal(r1["curves"]["var_g"]["value"], r2["curves"]["var_g"]["value"])
    assert not api.simulate(cfg.replace(seed=5), cache=cache)["cached"]
    api.theory(cfg, cache=cache)
    assert api.theory(cfg.replace(replicas=999, seed=3), cache=cache)["cached"]


@pytest.mark.parametrize("damage", ["flip", "truncate", "garbage", "pickle"])
def test_corrupt_entry_is_recomputed_not_served(tmp_path, damage):
    cache = ResultCache(tmp_path)
    key = make_key("k", {"d": damage})
    calls = []
    cache.get_or_compute(key, compute_factory(calls))
    blob = cache.raw().get(key)
    if damage == "flip":
        bad = bytearray(blob)
        bad[-10] ^= 0xFF
        cache.raw().set(key, bytes(bad))
    elif damage == "truncate":
        cache.raw().set(key, blob[: len(blob) // 2])
    elif damage == "garbage":
        cache.raw().set(key, b"not a cache entry")
    else:  # a pickled value planted by another program in the same directory: never unpickled
        plain = diskcache.Cache(str(tmp_path / "results"))
        plain.set(key, {"evil": object.__name__})
        plain.close()
    meta, arrays, hit = cache.get_or_compute(key, compute_factory(calls))
    assert not hit and len(calls) == 2 and np.array_equal(arrays["a"], np.arange(5.0))
    assert cache.get_or_compute(key, compute_factory(calls))[2]


def test_file_backed_entry_truncated_on_disk(tmp_path):
    """Large values live in files: truncating the file is caught by the checksum."""
    cache = ResultCache(tmp_path)
    key = make_key("big", {})
    big = {"a": np.random.default_rng(0).standard_normal(50_000)}
    cache.set(key, {}, big)
    files = [p for p in (tmp_path / "results").rglob("*.val")]
    assert files, "expected a file-backed value"
    files[0].write_bytes(files[0].read_bytes()[:1000])
    assert cache.get(key) is None and cache.stats["corrupt"] == 1


def test_bytes_only():
    with pytest.raises(ValueError):
        decode(pickle.dumps({"a": 1}))
    meta, arrays = decode(encode({"x": 1}, {"v": np.ones(3)}))
    assert meta == {"x": 1} and arrays["v"].tolist() == [1, 1, 1]


def _worker(directory, key, log):
    cache = ResultCache(directory)

    def compute():
        with open(log, "a") as fh:
            fh.write("computed\n")
        time.sleep(1.0)
        return {}, {"a": np.ones(2)}

    cache.get_or_compute(key, compute)


def test_two_processes_compute_once(tmp_path):
    key = make_key("shared", {})
    log = tmp_path / "log.txt"
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_worker, args=(str(tmp_path / "c"), key, str(log))) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert all(p.exitcode == 0 for p in procs)
    assert log.read_text().count("computed") == 1


def test_size_bound_evicts(tmp_path):
    cache = ResultCache(tmp_path, size_limit=200_000)
    for i in range(20):
        cache.set(make_key("e", {"i": i}), {}, {"a": np.random.default_rng(i).standard_normal(5_000)})
    cache.raw().cull()
    assert cache.volume() <= 400_000 and len(cache) < 20


def test_value_files_outside_the_cache_directory_are_never_read(tmp_path):
    """A row planted in the cache's database pointing at a file elsewhere is refused and recomputed."""
    import sqlite3

    outside = tmp_path / "secret.bin"
    outside.write_bytes(encode({"planted": True}, {"a": np.zeros(1)}))
    cache = ResultCache(tmp_path / "c")
    key = make_key("k", {"planted": 1})
    cache.set(key, {}, {"a": np.random.default_rng(0).standard_normal(20_000)})  # file-backed
    db = sqlite3.connect(str(tmp_path / "c" / "results" / "cache.db"))
    db.execute("UPDATE Cache SET filename = ? WHERE key = ?", (str(outside), key))
    db.commit()
    db.close()
    calls = []
    meta, arrays, hit = cache.get_or_compute(key, compute_factory(calls))
    assert not hit and len(calls) == 1 and "planted" not in meta


def test_killed_run_leaves_no_entry(tmp_path):
    """SIGKILL a CLI simulation midway: no entry is served afterwards, and the next run computes from scratch."""
    import json
    import os
    import signal
    import subprocess
    import sys

    from conftest import ROOT

    env = {**os.environ, "BATCHVAR_CACHE_DIR": str(tmp_path)}
    cfg = {"steps": 20000, "batch_sizes": [8], "replicas": 2000}  # minutes of work: still running at 6 s
    proc = subprocess.Popen([sys.executable, "-m", "backend", "simulate", "-"], cwd=ROOT, env=env,
                            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, text=True)
    proc.stdin.write(json.dumps(cfg))
    proc.stdin.close()
    time.sleep(6)
    assert proc.poll() is None, "the run finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    cache = ResultCache(tmp_path)
    assert len(cache) == 0 and api.cached_simulation(parse_config(cfg), cache=cache) is None

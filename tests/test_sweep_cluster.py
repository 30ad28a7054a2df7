"""A sweep on two Ray nodes on one machine (ray.cluster_utils.Cluster, 127.0.0.1): cells run on both nodes, and
when a node is removed mid-sweep the sweep still finishes — the lost tasks retried on the other node, or reported
failed — with every finished cell in the cache."""

import pytest

from backend import api, cluster, sweep
from backend.cache import ResultCache

# cells of about a second each on one thread, so that the removal lands while some still run or wait
BASE = {"setting": "linear_regression", "steps": 400, "replicas": 400, "batch_sizes": [16]}


@pytest.fixture(scope="module")
def two_nodes():
    from ray.cluster_utils import Cluster

    cluster.loopback_only()
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    worker = c.add_node(num_cpus=1)
    c.wait_for_nodes()
    cluster.connect(c.address)
    yield c, worker
    cluster.shutdown()
    c.shutdown()


def test_cells_run_on_both_nodes_and_survive_a_node_removed_mid_sweep(two_nodes, tmp_path):
    c, worker = two_nodes
    cache = ResultCache(tmp_path)
    executor = cluster.RayExecutor(c.address, threads=1)
    assert len(executor.cluster["nodes"]) == 2 and executor.workers([]) == 2
    spec = sweep.parse_sweep({"base": BASE, "grid": {"seed": [1, 2, 3, 4]}})
    out = sweep.run(spec, executor, cache)
    assert out["failed"] == [] and len({cell["node"] for cell in out["cells"]}) == 2

    spec = sweep.parse_sweep({"base": BASE, "grid": {"seed": [11, 12, 13, 14, 15, 16]}})
    removed = []

    def remove_after_first(done, total, entry):
        if not removed:
            c.remove_node(worker)
            removed.append(done)

    out = sweep.run(spec, executor, cache, on_cell=remove_after_first)
    assert removed and len(out["cells"]) + len(out["failed"]) == 6
    assert {tuple(e["overrides"].items()) for e in out["cells"] + out["failed"]} == {
        (("seed", s),) for s in (11, 12, 13, 14, 15, 16)}
    assert len(out["cells"]) >= 1
    for entry in out["failed"]:
        assert "retries" in entry["error"] or "Error" in entry["error"]
    for cell in spec.cells:  # exactly the finished cells are in the cache
        finished = any(e["overrides"] == cell.overrides for e in out["cells"])
        assert (api.cached_simulation(cell.config, cache) is not None) == finished
    assert len(cluster.info()["nodes"]) == 1  # the removed node is gone from the cluster

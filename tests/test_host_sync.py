"""No host synchronisation inside the step loops: the linear-regression and deep-linear engines read device values
back (Tensor.__bool__, .item(), .tolist(), .cpu()) a number of times that does not grow with the steps between
recorded steps or blocks, and the MLP/sequence loop once per block of steps at most — counted on the CPU, where the
same code runs."""

import numpy as np
import pytest
import torch

from backend.config import parse_config
from backend.engine import deep_linear as engine_deep
from backend.engine import linreg as engine_linreg

DEV = torch.device("cpu")
READS = ("__bool__", "item", "tolist", "cpu")


@pytest.fixture
def count_reads(monkeypatch):
    counts = {"n": 0}
    for name in READS:
        original = getattr(torch.Tensor, name)

        def wrapped(self, *args, _original=original, **kwargs):
            counts["n"] += 1
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, wrapped)
    return counts


def _linreg_reads(count_reads, steps: int, b: int) -> int:
    cfg = parse_config({"steps": steps, "batch_sizes": [b]})
    count_reads["n"] = 0
    engine_linreg.run_replicas(np.asarray(cfg.X, float), np.asarray(cfg.y, float), np.asarray(cfg.w0_values, float),
                               cfg.lr.alphas(steps), b, 200, cfg.sampler, 0, DEV, 0.01)
    return count_reads["n"]


@pytest.mark.parametrize("b", [16, 100])  # Floyd's sampler, and the stream sampler (one read per block of steps)
def test_linear_regression_reads_back_per_block_not_per_step(count_reads, b):
    short, long = _linreg_reads(count_reads, 64, b), _linreg_reads(count_reads, 640, b)
    blocks = 640 // engine_linreg.STEP_BLOCK - 64 // engine_linreg.STEP_BLOCK
    assert long - short <= 2 * blocks, (short, long)  # 576 more steps, at most two reads per extra block


def test_deep_linear_reads_back_at_recorded_steps_only(count_reads):
    cfg = parse_config({"setting": "deep_linear", "dims": [3, 4, 2], "steps": 200})
    W0 = [np.asarray(W, float) for W in cfg.w0_values]
    T = [np.asarray(W, float) for W in cfg.teacher_values]

    def reads(steps: int) -> int:
        count_reads["n"] = 0
        engine_deep.run_replicas(W0, T, cfg.lr.alphas(steps), 2, 64, 0, DEV, record_every=50)
        return count_reads["n"]

    short, long = reads(100), reads(200)
    assert long - short <= 25 * 2, (short, long)  # 100 more steps, 2 more recorded steps: reads at those only


@pytest.mark.parametrize("optimizer", [None, {"name": "sgd", "momentum": 0.9}, {"name": "adam"}])
def test_mlp_draws_a_block_of_steps_per_host_read(count_reads, monkeypatch, tmp_path, optimizer):
    """The MLP (and sequence) training loop reads the device back per block of steps, not per step: at b = 40 (the
    stream sampler, whose rare rejected rows need one read per draw) an epoch of 35 steps costs at least 30 reads
    fewer with blocks of 32 than with blocks of one step (the per-epoch statistics read the same in both) — with
    plain SGD's fused step and with an optimizer's step on the explicit gradients (linear_relu.batch_grads)."""
    from backend import api
    from backend.cache import ResultCache
    from backend.engine import loop

    def reads_per_epoch(block: int) -> int:
        monkeypatch.setattr(loop, "STEP_BLOCK", block)  # the shared loop's blocks of draws
        counts = []
        for epochs in (1, 2):
            cfg = parse_config({"setting": "mlp", "preset": "laptop", "epochs": epochs, "batch_sizes": [40],
                                "inits": 2, "replicas": 2, "sampler": "without_replacement",
                                **({} if optimizer is None else {"optimizer": optimizer})})
            count_reads["n"] = 0
            api.simulate(cfg, cache=ResultCache(tmp_path / f"{block}-{epochs}"))
            counts.append(count_reads["n"])
        return counts[1] - counts[0]

    stepwise, blocked = reads_per_epoch(1), reads_per_epoch(32)
    assert blocked <= stepwise - 30, (stepwise, blocked)

"""Replica branches of the critical batch size for the sequence model (backend/settings/sequence.py over
backend/engine/replica_branch.py; docs/theory.md §11): the branch losses and their SEs against one nn.Module
(backend/engine/sequence.py's Encoder) and one torch.optim optimizer per replica with torch's clip_grad_norm_ before
each step — the AdamW fields of old configs and the named form (SGD with momentum) — along the warm-up/decay schedule
written out here, exactly up to float64 rounding; b_noise from Hessian-vector products through the encoder; the
checkpoints in steps (epochs × ⌊n/B⌋) and a bad one in one line."""

import math

import numpy as np
import pytest
import torch

from backend import cbs
from backend.cache import ResultCache
from backend.config import parse_config
from backend.engine import sequence as seq_engine
from backend.settings import sequence as seq_setting
from test_cbs_functional import _per_replica_reference

TINY = {"setting": "sequence", "width": 8, "heads": 2, "layers": 1, "max_len": 8, "vocab": 60, "replicas": 3,
        "epochs": 1, "eval_size": 100, "noise_samples": 16, "dtype": "float64", "seed": 1}
ADAMW = {"lr": "0.01", "warmup": 3, "clip": "0.3", "weight_decay": "0.01"}  # the old form: AdamW's own fields
SGD = {"name": "sgd", "momentum": 0.9, "lr": "0.05", "warmup": 2, "clip": "0.3"}  # the named form


class _Clipped:
    """A torch.optim optimizer with torch.nn.utils.clip_grad_norm_ on the module's gradients before each step."""

    def __init__(self, params, opt, clip):
        self.params, self.opt, self.clip = list(params), opt, clip

    @property
    def param_groups(self):  # the optimizer's own (load_state_dict replaces the list)
        return self.opt.param_groups

    def zero_grad(self):
        self.opt.zero_grad()

    def step(self):
        torch.nn.utils.clip_grad_norm_(self.params, self.clip)
        self.opt.step()

    def state_dict(self):
        return self.opt.state_dict()

    def load_state_dict(self, state):
        self.opt.load_state_dict(state)


def _parts(config, optimizer):
    tok, tr, _, data = seq_setting.encode_corpus(config)
    X, Y = torch.as_tensor(tr), torch.as_tensor(data.y_train)
    model = seq_engine.Encoder(tok.size, config.max_len, config.width, config.heads, config.layers).double()
    w0 = seq_engine.init_params(model, 1, config.seed, torch.float64, torch.device("cpu"))
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(w0[name][0])
    clip = float(optimizer["clip"])
    if optimizer.get("name") == "sgd":
        make = lambda params, lr: (lambda ps: _Clipped(ps, torch.optim.SGD(ps, lr=lr, momentum=0.9), clip))(  # noqa
            list(params))
    else:
        make = lambda params, lr: (lambda ps: _Clipped(ps, torch.optim.AdamW(  # noqa: E731
            ps, lr=lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01), clip))(list(params))
    loss = lambda out, y: torch.nn.functional.cross_entropy(out, y)  # noqa: E731
    return model, X, Y, X[:config.eval_size], Y[:config.eval_size], loss, make


def _schedule(lr: float, warmup: int, total: int, T: int) -> list[float]:
    """The sequence model's α_t: lr·(t + 1)/warmup for t < warmup, then lr·(total − t)/(total − warmup)."""
    return [lr * (t + 1) / warmup if t < warmup else lr * (total - t) / (total - warmup) for t in range(T)]


@pytest.mark.parametrize("optimizer", [ADAMW, SGD], ids=["adamw-fields", "named-sgd-momentum"])
def test_branches_equal_a_per_replica_reference(tmp_path, optimizer):
    config = parse_config({**TINY, "optimizer": optimizer})
    rules, cps, ks, b_ref, samples = ("none", "linear"), [0, 5], [1, 2], 8, 32
    docs = cbs.cbs_rules(config, b_ref, cps, samples, rules, ks=ks, cache=ResultCache(tmp_path))
    total = config.epochs * (config.n_train // b_ref)  # 100 steps of B = 8 over n = 800 sentences
    alphas = _schedule(float(optimizer["lr"]), optimizer["warmup"], total, max(cps) + 1)
    want = _per_replica_reference(config, _parts(config, optimizer), b_ref, cps, samples, rules, ks, alphas)
    for rule in rules:
        doc = docs[rule]
        assert doc["exact"] is False and doc["replicas"] == 3 and "b_noise_note" not in doc
        for row in doc["checkpoints"]:
            assert row["b_noise"] is not None and row["b_simple"] is not None and row["b_noise_se"] > 0
            for b, br in row["branches"].items():
                losses = np.asarray(want[rule, row["t"], int(b)])
                assert br["lr"] == pytest.approx(alphas[row["t"]] * (int(b) // b_ref) ** (rule == "linear"),
                                                 rel=1e-12)
                assert br["loss"] == pytest.approx(losses.mean(), rel=1e-9), (rule, row["t"], b)
                assert br["loss_se"] == pytest.approx(losses.std(ddof=1) / math.sqrt(len(losses)), rel=1e-6)
                assert not br["diverged"] and br["diverged_replicas"] == 0


def test_checkpoints_are_steps_of_the_reference_run():
    """epochs × ⌊n/B⌋ steps: 2 × ⌊800/16⌋ = 100 is the last checkpoint, 101 is refused naming checkpoints."""
    config = parse_config({**TINY, "epochs": 2})
    assert cbs.max_checkpoint(config, 16) == 100
    with pytest.raises(cbs.ConfigError) as e:
        cbs.check_request(config, 16, [0, 101], 32, ("none",), 0.01, [1])
    assert str(e.value).startswith("checkpoints:") and "100" in str(e.value)
    est = cbs.estimate(config, 16, [0, 100], 64, ("none", "linear"), [1, 2])
    assert est["seconds"] > 0 and est["memory_bytes"] > 0 and est["flops"] > 0

"""The functional classifier over replicas (backend/engine/replicas.py): module_forward leaves the caller's module as
it was, and a task builds its model once."""

import torch

from backend.config import parse_config
from backend.engine import mlp as engine
from backend.engine.replicas import module_forward
from backend.images import load_digits


def test_module_forward_leaves_the_callers_module_untouched():
    model = engine.make_model(5, (4,), 3).double()
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    forward = module_forward(model)
    assert all(p.device.type == "cpu" for p in model.parameters())
    assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items())
    x = torch.linspace(-1, 1, 10, dtype=torch.float64).reshape(2, 5)
    params = dict(model.named_parameters())
    torch.testing.assert_close(forward(params, x), model(x), rtol=0, atol=0)  # the module still computes


def test_the_mlp_task_builds_its_model_once(monkeypatch):
    built = []
    make = engine.make_model
    monkeypatch.setattr(engine, "make_model", lambda *a: built.append(a) or make(*a))
    task = engine.mlp_task(load_digits(), (6,), 0, torch.float64, torch.device("cpu"), None)
    assert len(built) == 1
    params = task.init(2)
    assert params["0.weight"].shape == (2, 6, 64) and params["0.weight"].device.type == "cpu"


def test_the_sequence_task_builds_its_model_once(monkeypatch):
    from backend.settings import sequence

    built = []

    class Counted(sequence.seq.Encoder):
        def __init__(self, *a, **k):
            built.append(a)
            super().__init__(*a, **k)

    monkeypatch.setattr(sequence.seq, "Encoder", Counted)
    sequence.build_task(parse_config({"setting": "sequence", "preset": "laptop"}), torch.device("cpu"))
    assert len(built) == 1

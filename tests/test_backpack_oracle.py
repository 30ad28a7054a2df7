"""BackPACK (an independent library, test-only) as the oracle of the MLP path's per-sample statistics, float64.

BackPACK's BatchGrad / BatchL2Grad give each training point's gradient and its squared norm for an nn.Sequential of
Linear and ReLU layers. From them, with Σ the population covariance over the n points (docs/theory.md §3):
tr Σ = (1/n) Σ_i ‖∇L_i‖² − ‖∇L‖², Lemma 1's one-step noise c_b · tr Σ and B_simple = tr Σ / ‖∇L‖². These are checked
against the engine's outer-product path and against what a whole run reports at epoch 0 (every replica at w0; the
noise subsample is the whole training set, so the run's numbers are exact). Attention layers are beyond BackPACK:
the sequence model keeps its torch.func references (tests/test_sequence.py).
"""

import pytest
import torch
from backpack import backpack, extend
from backpack.extensions import BatchGrad, BatchL2Grad

from backend import api, lemma1
from backend.cache import ResultCache
from backend.config import parse_config
from backend.engine import mlp as engine
from backend.engine import noise
from backend.images import load_digits

DEV = torch.device("cpu")
pytestmark = pytest.mark.filterwarnings("ignore:Full backward hook")


def _oracle(params: dict[str, torch.Tensor], X: torch.Tensor, Y: torch.Tensor, widths) -> dict[str, torch.Tensor]:
    """Per-sample squared norms, mean gradient and tr Σ of one weight (params without the replica dimension)."""
    model = engine.make_model(widths[0], tuple(widths[1:-1]), widths[-1]).double()
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(params[name])
    model = extend(model)
    loss = extend(torch.nn.CrossEntropyLoss(reduction="sum"))(model(X), Y)  # sum: per-sample gradients unscaled
    with backpack(BatchGrad(), BatchL2Grad()):
        loss.backward()
    n = X.shape[0]
    sq = sum(p.batch_l2 for p in model.parameters())
    grads = torch.cat([p.grad_batch.reshape(n, -1) for p in model.parameters()], dim=1)
    mean = torch.cat([p.grad.reshape(-1) for p in model.parameters()]) / n
    trace = sq.mean() - mean.square().sum()
    return {"sq": sq, "grads": grads, "mean": mean, "trace": trace}


@pytest.mark.parametrize("hidden", [(32, 16), (128, 64)])
def test_engine_per_sample_statistics_match_backpack(hidden):
    data = load_digits()
    n = 60
    X = torch.as_tensor(data.x_train[:n].reshape(n, 64), dtype=torch.float64)
    Y = torch.as_tensor(data.y_train[:n])
    widths = (64, *hidden, 10)
    params = engine.init_params(engine.make_model(64, hidden, 10), 3, 5, torch.float64, DEV)  # three replicas
    sq = noise.linear_relu_per_sample_sq_norms(params, X, Y, chunk=17)
    s2, mean = noise.linear_relu_noise_terms(params, X, Y, chunk=17)
    for r in range(3):
        ref = _oracle({k: v[r] for k, v in params.items()}, X, Y, widths)
        torch.testing.assert_close(ref["grads"].square().sum(1), ref["sq"], rtol=1e-13, atol=0)  # BackPACK agrees
        torch.testing.assert_close(sq[r], ref["sq"], rtol=1e-13, atol=0)
        torch.testing.assert_close(mean[r], ref["mean"], rtol=1e-12, atol=1e-15)
        pop = lemma1.population_trace(s2[r], n)
        assert pop.item() == pytest.approx(ref["trace"].item(), rel=1e-12)


def test_run_reports_backpacks_noise_and_b_simple_at_epoch_0():
    n, b = 40, 4
    cfg = parse_config({"setting": "mlp", "dataset": {"name": "digits", "train_size": n}, "hidden": [32, 16],
                        "inits": 2, "replicas": 3, "epochs": 1, "batch_sizes": [b], "sampler": "without_replacement",
                        "noise_samples": n, "eval_size": n, "dtype": "float64", "device": "cpu", "seed": 3})
    res = api.simulate(cfg, cache=ResultCache(__import__("tempfile").mkdtemp()))
    assert res["meta"]["device"] == "cpu"
    assert res["x_name"] == "epoch" and res["batch_sizes"] == [b]
    c = res["curves"]
    data = load_digits()
    # the run's training points: the first n of the digits' training split (backend.images.load_dataset)
    X = torch.as_tensor(data.x_train[:n].reshape(n, 64), dtype=torch.float64)
    Y = torch.as_tensor(data.y_train[:n])
    w0 = engine.init_params(engine.make_model(64, (32, 16), 10), 2, 3, torch.float64, DEV)
    c_b = (n - b) / (b * (n - 1))  # Lemma 1
    for k in range(2):
        ref = _oracle({name: v[k] for name, v in w0.items()}, X, Y, (64, 32, 16, 10))
        noise = c_b * ref["trace"].item()
        b_simple = (ref["trace"] / ref["mean"].square().sum()).item()
        assert c["noise_one_step"]["per_init"][0, 0, k] == pytest.approx(noise, rel=1e-12)
        assert c["b_simple"]["per_init"][0, 0, k] == pytest.approx(b_simple, rel=1e-12)
        assert c["noise_one_step"]["per_init_se"][0, 0, k] <= 1e-12 * noise  # all replicas at w0
    per_init = c["noise_one_step"]["per_init"][0, 0]
    assert c["noise_one_step"]["value"][0, 0] == pytest.approx(per_init.mean(), rel=1e-15)  # median of two

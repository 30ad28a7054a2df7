"""Train the CNN of cnn_digits_checkpoint.py briefly and save its state_dict beside it (cnn_digits_checkpoint.pt).

    python examples/models/train_checkpoint.py [--steps 400] [--out PATH]

Plain torch: init 0, torch.optim.SGD (lr 0.1), STEPS steps on mini-batches of 32 drawn without replacement from a
``torch.Generator`` seeded 0, float32 on the CPU (deterministic). Prints the validation loss and error before and
after. A script, not a model file: it defines no ``model``/``data``, so the page does not offer it.
"""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

import torch
import torch.nn.functional as F

HERE = Path(__file__).resolve().parent


def _model_file():
    spec = importlib.util.spec_from_file_location("cnn_digits_checkpoint", HERE / "cnn_digits_checkpoint.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _evaluate(net: torch.nn.Module, X: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    with torch.no_grad():
        out = net(X)
    return F.cross_entropy(out, y).item(), (out.argmax(1) != y).double().mean().item()


def train(steps: int, batch: int = 32, lr: float = 0.1) -> tuple[dict[str, torch.Tensor], list[tuple[float, float]]]:
    """(state_dict after ``steps`` SGD steps from init 0, [(val loss, val error) before, after])."""
    mf = _model_file()
    d = mf.data()
    (X, y), (Xv, yv) = d["train"], d["val"]
    net = mf.model(0)
    opt = torch.optim.SGD(net.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(0)
    scores = [_evaluate(net, Xv, yv)]
    for _ in range(steps):
        idx = torch.randperm(len(X), generator=gen)[:batch]
        opt.zero_grad()
        F.cross_entropy(net(X[idx]), y[idx]).backward()
        opt.step()
    scores.append(_evaluate(net, Xv, yv))
    return {k: v.detach().clone() for k, v in net.state_dict().items()}, scores


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--out", type=Path, default=HERE / "cnn_digits_checkpoint.pt")
    args = ap.parse_args()
    torch.set_num_threads(1)  # the same numbers on any machine's thread count
    state, ((l0, e0), (l1, e1)) = train(args.steps)
    torch.save(state, args.out)
    print(f"validation loss {l0:.3f} → {l1:.3f}, error {e0:.3f} → {e1:.3f}; saved {args.out} "
          f"({args.out.stat().st_size} bytes)")


if __name__ == "__main__":
    main()

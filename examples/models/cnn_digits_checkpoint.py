"""Branching from a trained model: the CNN of cnn_digits.py on the same digits, every init starting from the weights
that ``train_checkpoint.py`` saved in ``cnn_digits_checkpoint.pt`` (400 SGD steps from init 0, b = 32, lr 0.1; a
validation error of 2.8 %, from 95 % at init). The replicas then measure var(g_t | F_0) around a trained w_0,
as the critical batch size of language models is measured today (Merrill et al. 2025 branch from checkpoints).

- data, model(k): those of cnn_digits.py (repeated here: a model file stands alone, the model folder is not on
  ``sys.path``);
- checkpoint(): the saved state_dict, read with ``torch.load(weights_only=True)`` (tensors only: no pickled code
  runs); ``python examples/models/train_checkpoint.py`` writes it again (the same numbers on the
  same torch build: one thread, seeded draws).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

CHECKPOINT = Path(__file__).resolve().with_name("cnn_digits_checkpoint.pt")


def data() -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """{"train": (X (1438, 1, 8, 8) float32, y (1438,) int64), "val": (X (359, 1, 8, 8), y (359,))}."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.images.astype(np.float32) / 8.0 - 1.0).astype(np.float32)[:, None]
    y = d.target.astype(np.int64)
    perm = np.random.default_rng(0).permutation(len(x))
    n_val = int(round(0.2 * len(x)))
    tr, va = perm[n_val:], perm[:n_val]
    return {"train": (torch.from_numpy(x[tr]), torch.from_numpy(y[tr])),
            "val": (torch.from_numpy(x[va]), torch.from_numpy(y[va]))}


def model(seed: int) -> torch.nn.Module:
    """The CNN with init ``seed``'s fresh weights (the checkpoint replaces them)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return torch.nn.Sequential(
            torch.nn.Conv2d(1, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
            torch.nn.Conv2d(8, 16, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
            torch.nn.Flatten(), torch.nn.Linear(64, 10))


def checkpoint() -> dict[str, torch.Tensor]:
    """The trained weights: model(k).load_state_dict(checkpoint()) for every init k."""
    return torch.load(CHECKPOINT, map_location="cpu", weights_only=True)

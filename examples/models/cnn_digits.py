"""A small convolutional network on scikit-learn's bundled 8×8 digits (no download).

- data: the 1 797 digits as (n, 1, 8, 8) images in [−1, 1] (pixel/8 − 1); validation = the first 20 % of numpy's
  ``default_rng(0).permutation(1797)``, training = the rest (the MLP setting's split);
- model(k): conv 3×3 (1 → 8) · ReLU · max-pool 2 → conv 3×3 (8 → 16) · ReLU · max-pool 2 → flatten (64) → linear
  (64 → 10); 1 898 parameters with PyTorch's default initialisation drawn after ``torch.manual_seed(k)`` inside
  ``torch.random.fork_rng`` (the global generator is left as it was). No BatchNorm, no Dropout, no buffers: every
  replica is a pure function of its parameters;
- loss: the default (cross-entropy on the integer class targets).
Self-contained (it imports no helper module of its own).
"""

from __future__ import annotations

import numpy as np
import torch


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
    """The CNN with init ``seed``'s weights (float32)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return torch.nn.Sequential(
            torch.nn.Conv2d(1, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
            torch.nn.Conv2d(8, 16, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
            torch.nn.Flatten(), torch.nn.Linear(64, 10))

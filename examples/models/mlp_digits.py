"""The paper's MLP (§4.1, Appendix A.1.3) on scikit-learn's bundled 8×8 digits, built exactly as the MLP setting
builds it, so that a torch_model run of this file gives the MLP setting's numbers (seed 0, hidden [32, 16]).

- data: the 1 797 digits mapped to [−1, 1] (pixel/8 − 1), flattened to 64 features; validation = the first 20 % of
  numpy's ``default_rng(0).permutation(1797)``, training = the rest (backend/images.py's fixed split);
- model(k): 64 → 32 → 16 → 10, ReLU, PyTorch's default Linear ranges U(−1/√fan_in, 1/√fan_in) drawn in float64 from
  ``torch.Generator().manual_seed(s_k)``, s_k = SeedSequence([0, 7919, k]) (the MLP setting's init k at seed 0),
  in the parameter order weight, bias of each layer. The parameters stay float64 (the setting casts them to its
  dtype, as the MLP setting casts these draws);
- loss: the default (cross-entropy on the integer class targets).
Self-contained: nothing is imported from the project.
"""

from __future__ import annotations

import math

import numpy as np
import torch

HIDDEN = (32, 16)
SETTING_SEED = 0  # the MLP setting's `seed` these initial weights equal


def _init_seed(k: int) -> int:
    """The MLP setting's generator seed of init k: 63 bits of numpy's SeedSequence([seed, 7919, k])."""
    state = np.random.SeedSequence([SETTING_SEED, 7919, k]).generate_state(2, dtype=np.uint64)[0]
    return int(state >> np.uint64(1))


def data() -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """{"train": (X (1438, 64) float32, y (1438,) int64), "val": (X (359, 64), y (359,))}."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.images.astype(np.float32) / 8.0 - 1.0).astype(np.float32).reshape(len(d.images), 64)
    y = d.target.astype(np.int64)
    perm = np.random.default_rng(0).permutation(len(x))
    n_val = int(round(0.2 * len(x)))
    tr, va = perm[n_val:], perm[:n_val]
    return {"train": (torch.from_numpy(x[tr]), torch.from_numpy(y[tr])),
            "val": (torch.from_numpy(x[va]), torch.from_numpy(y[va]))}


def model(seed: int) -> torch.nn.Module:
    """The MLP with init ``seed``'s weights (float64)."""
    widths = (64, *HIDDEN)
    layers: list[torch.nn.Module] = []
    with torch.random.fork_rng(devices=[]):  # nn.Linear's own draws (overwritten below) leave the global generator
        for a, b in zip(widths[:-1], widths[1:]):
            layers += [torch.nn.Linear(a, b), torch.nn.ReLU()]
        layers.append(torch.nn.Linear(widths[-1], 10))
    net = torch.nn.Sequential(*layers).to(torch.float64)
    gen = torch.Generator().manual_seed(_init_seed(seed))
    with torch.no_grad():
        for layer in net:
            if isinstance(layer, torch.nn.Linear):
                bound = 1.0 / math.sqrt(layer.in_features)
                for p in (layer.weight, layer.bias):
                    p.copy_((torch.rand(p.shape, generator=gen, dtype=torch.float64) * 2 - 1) * bound)
    return net

"""Finite-sum least squares as a model file: L(w) = (1/n) Σ ½(x_iᵀw − y_i)², the linear-regression setting's loss
(docs/theory.md §1), on the 5-point data set of tests/conftest.py (TINY_X with its intercept column, TINY_Y) from
w_0 = TINY_W0."""

import torch

X = torch.tensor([[1, 2, 1], [-1, 0.5, 1], [3, 0, 1], [0, -2, 1], [1 / 3, 1, 1]], dtype=torch.float64)
Y = torch.tensor([1, -1, 2, 0, 0.5], dtype=torch.float64)
W0 = torch.tensor([[0.5, -1.0, 0.0]], dtype=torch.float64)


def data():
    return {"train": (X, Y)}


def model(seed: int) -> torch.nn.Module:
    lin = torch.nn.Linear(3, 1, bias=False).double()
    with torch.no_grad():
        lin.weight.copy_(W0)
    return lin


def loss(output, target):
    return 0.5 * (output[..., 0] - target) ** 2

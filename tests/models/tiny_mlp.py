"""A tiny classifier for the tests: 48 training and 24 validation points in 4 dimensions, 3 classes (seeded)."""

import torch


def data():
    g = torch.Generator().manual_seed(5)
    X = torch.randn(72, 4, generator=g)
    Y = (X[:, 0] + 0.5 * X[:, 1] > 0).long() + (X[:, 2] > 1).long()
    return {"train": (X[:48], Y[:48]), "val": (X[48:], Y[48:])}


def model(seed: int) -> torch.nn.Module:
    torch.manual_seed(1000 + seed)
    return torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.Tanh(), torch.nn.Linear(6, 3))

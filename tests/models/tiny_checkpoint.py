"""tiny_mlp's network and data, branching from a checkpoint: checkpoint() trains init 99 for 5 full-batch gradient
steps and returns its state_dict, from which every init starts."""

import torch


def data():
    g = torch.Generator().manual_seed(5)
    X = torch.randn(72, 4, generator=g)
    Y = (X[:, 0] + 0.5 * X[:, 1] > 0).long() + (X[:, 2] > 1).long()
    return {"train": (X[:48], Y[:48]), "val": (X[48:], Y[48:])}


def model(seed: int) -> torch.nn.Module:
    torch.manual_seed(1000 + seed)
    return torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.Tanh(), torch.nn.Linear(6, 3))


def checkpoint() -> dict:
    net = model(99)
    X, Y = data()["train"]
    opt = torch.optim.SGD(net.parameters(), lr=0.5)
    for _ in range(5):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(net(X), Y).backward()
        opt.step()
    return net.state_dict()

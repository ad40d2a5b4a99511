"""Small models for the chapters' experiments."""

from __future__ import annotations

from torch import nn


class MLP(nn.Sequential):
    """``in_dim -> hidden -> ... -> out_dim`` with ``depth`` hidden layers and tanh activations."""

    def __init__(self, in_dim: int, out_dim: int, *, hidden: int = 64, depth: int = 2) -> None:
        for name, value in (("in_dim", in_dim), ("out_dim", out_dim), ("hidden", hidden)):
            if value <= 0:
                raise ValueError(f"Invalid {name}: {value} (expected a positive int)")
        if depth < 1:
            raise ValueError(f"Invalid depth: {depth} (expected at least 1 hidden layer)")
        layers: list[nn.Module] = []
        width = in_dim
        for _ in range(depth):
            layers += [nn.Linear(width, hidden), nn.Tanh()]
            width = hidden
        layers.append(nn.Linear(width, out_dim))
        super().__init__(*layers)

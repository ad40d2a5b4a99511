"""Small synthetic problems for the chapters' experiments: generated, never downloaded."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor

from course_lib._checks import check_positive_int


def badly_scaled_teacher(
    num_samples: int,
    dim: int,
    *,
    scale_range: tuple[float, float] = (0.01, 10.0),
    noise: float = 0.05,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """Inputs whose features differ in scale by orders of magnitude, labelled by a random MLP.

    Feature ``j`` is Gaussian with standard deviation spaced log-uniformly over
    ``scale_range``; the target is a fixed random two-layer tanh network of the inputs, plus
    Gaussian noise of std ``noise``. One learning rate suits all coordinates poorly here,
    which is the situation Adam's per-parameter scaling was designed for.
    """
    check_positive_int("num_samples", num_samples)
    check_positive_int("dim", dim)
    low, high = scale_range
    if not 0 < low <= high:
        raise ValueError(f"Invalid scale_range: {scale_range} (expected 0 < low <= high)")
    if noise < 0:
        raise ValueError(f"Invalid noise: {noise} (expected noise >= 0)")
    scales = torch.logspace(torch.log10(torch.tensor(low)), torch.log10(torch.tensor(high)), dim)
    x = torch.randn(num_samples, dim, generator=generator) * scales
    w1 = torch.randn(dim, 16, generator=generator) / scales[:, None] / dim**0.5
    w2 = torch.randn(16, 1, generator=generator) / 4
    y = torch.tanh(x @ w1) @ w2 + noise * torch.randn(num_samples, 1, generator=generator)
    return x, y


def minibatches(
    x: Tensor,
    y: Tensor,
    batch_size: int,
    *,
    generator: torch.Generator | None = None,
) -> Iterator[tuple[Tensor, Tensor]]:
    """Endless shuffled minibatches of ``(x, y)``: a new permutation every epoch."""
    check_positive_int("batch_size", batch_size)
    if len(x) != len(y):
        raise ValueError(f"x and y differ in length: {len(x)} != {len(y)}")
    if batch_size > len(x):
        raise ValueError(f"Invalid batch_size: {batch_size} (the data has only {len(x)} samples)")
    while True:
        order = torch.randperm(len(x), generator=generator).to(x.device)
        for start in range(0, len(x) - batch_size + 1, batch_size):
            index = order[start : start + batch_size]
            yield x[index], y[index]

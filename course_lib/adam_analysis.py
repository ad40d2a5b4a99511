"""What Adam's update does to one scalar parameter, step by step.

These helpers run the optimizer's own core, :func:`course_lib.optim.adam_step`, on a
single float64 parameter fed a chosen sequence of gradients, and report the size of each
update. The chapters use them to measure claims about Adam instead of asserting them.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from course_lib.optim import adam_step


def adam_updates(
    grads: Sequence[float] | torch.Tensor,
    *,
    lr: float = 1e-3,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    bias_correction: bool = True,
) -> torch.Tensor:
    """The update ``theta_t - theta_{t-1}`` of each step for parameters fed ``grads`` in turn.

    ``grads[t - 1]`` is the gradient at step ``t``: a sequence of floats for one scalar
    parameter, or a tensor of shape ``(steps, *shape)`` to run many independent parameters at
    once (one column per random seed, say). Returns float64 updates of the same shape.
    """
    grads = torch.as_tensor(grads, dtype=torch.float64)
    if grads.ndim == 0 or grads.shape[0] == 0:
        raise ValueError("grads is empty: give a sequence of at least one gradient")
    if not torch.isfinite(grads).all():
        raise ValueError("grads contains a non-finite value")
    param = torch.zeros(grads.shape[1:], dtype=torch.float64)
    exp_avg = torch.zeros_like(param)
    exp_avg_sq = torch.zeros_like(param)
    updates = torch.empty_like(grads)
    for t, grad in enumerate(grads, start=1):
        before = param.clone()
        adam_step(
            param, grad, exp_avg, exp_avg_sq, None, t,
            lr=lr, beta1=betas[0], beta2=betas[1], eps=eps, bias_correction=bias_correction,
        )  # fmt: skip
        updates[t - 1] = param - before
    return updates


def effective_step_sizes(
    grads: Sequence[float] | torch.Tensor,
    *,
    lr: float = 1e-3,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    bias_correction: bool = True,
) -> torch.Tensor:
    """``|update_t| / lr``: each step's size in units of the learning rate.

    1 means the parameter moved by exactly ``lr``; Adam's step is close to 1 when the
    gradient is consistent, and much smaller when it is noisy.
    """
    if lr <= 0:
        raise ValueError(f"Invalid learning rate: {lr} (expected lr > 0)")
    updates = adam_updates(grads, lr=lr, betas=betas, eps=eps, bias_correction=bias_correction)
    return updates.abs() / lr


def constant_gradient_ratio(
    t: int | torch.Tensor, betas: tuple[float, float] = (0.9, 0.999)
) -> torch.Tensor:
    """``(1 - beta1**t) / sqrt(1 - beta2**t)``: the step size in units of ``lr`` at step ``t``
    for a constant gradient when bias correction is left out (and eps is negligible)."""
    t = torch.as_tensor(t, dtype=torch.float64)
    if (t < 1).any():
        raise ValueError("t counts updates from 1")
    beta1, beta2 = betas
    return (1 - beta1**t) / torch.sqrt(1 - beta2**t)

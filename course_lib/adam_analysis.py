"""What Adam's update does to one scalar parameter, step by step.

These helpers run the optimizer's own core, :func:`course_lib.optim.adam_step`, on float64
parameters fed a chosen sequence of gradients, and report the size of each update. The
chapters use them to measure claims about Adam instead of asserting them:

- :func:`adam_updates` and :func:`effective_step_sizes`: each step's update, and its size in
  learning rates; ``second_moment=`` replaces Adam's estimate ``v_hat`` by an exact value, to
  see how much of a result is due to that estimate;
- :func:`adam_moments`: the bias-corrected moments ``m_hat`` and ``v_hat`` themselves;
- :func:`largest_step` and :func:`worst_case_gradients`: how far one step can move a
  parameter at all, over every possible sequence of gradients, and the sequence that does it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from course_lib.optim import adam_step

__all__ = [
    "adam_moments",
    "adam_updates",
    "constant_gradient_ratio",
    "effective_step_sizes",
    "largest_step",
    "worst_case_gradients",
]


def _check_betas(betas: tuple[float, float]) -> tuple[float, float]:
    if len(betas) != 2:
        raise ValueError(f"Invalid betas: {betas!r} (expected two values, beta1 and beta2)")
    for index, beta in enumerate(betas):
        if not 0.0 <= beta < 1.0:
            raise ValueError(f"Invalid beta parameter at index {index}: {beta}")
    return float(betas[0]), float(betas[1])


def _as_gradients(grads: Sequence[float] | torch.Tensor) -> torch.Tensor:
    grads = torch.as_tensor(grads, dtype=torch.float64)
    if grads.ndim == 0 or grads.shape[0] == 0:
        raise ValueError("grads is empty: give a sequence of at least one gradient")
    if not torch.isfinite(grads).all():
        raise ValueError("grads contains a non-finite value")
    return grads


def adam_updates(
    grads: Sequence[float] | torch.Tensor,
    *,
    lr: float = 1e-3,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    bias_correction: bool = True,
    amsgrad: bool = False,
) -> torch.Tensor:
    """The update ``theta_t - theta_{t-1}`` of each step for parameters fed ``grads`` in turn.

    ``grads[t - 1]`` is the gradient at step ``t``: a sequence of floats for one scalar
    parameter, or a tensor of shape ``(steps, *shape)`` to run many independent parameters at
    once (one column per random seed, say). Returns float64 updates of the same shape.
    ``amsgrad=True`` runs PyTorch's AMSGrad (the running maximum of the raw ``v``).
    """
    grads = _as_gradients(grads)
    beta1, beta2 = _check_betas(betas)
    param = torch.zeros(grads.shape[1:], dtype=torch.float64)
    exp_avg = torch.zeros_like(param)
    exp_avg_sq = torch.zeros_like(param)
    max_exp_avg_sq = torch.zeros_like(param) if amsgrad else None
    updates = torch.empty_like(grads)
    for t, grad in enumerate(grads, start=1):
        before = param.clone()
        adam_step(
            param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq, t,
            lr=lr, beta1=beta1, beta2=beta2, eps=eps, bias_correction=bias_correction,
            amsgrad=amsgrad,
        )  # fmt: skip
        updates[t - 1] = param - before
    return updates


def adam_moments(
    grads: Sequence[float] | torch.Tensor,
    *,
    betas: tuple[float, float] = (0.9, 0.999),
    bias_correction: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(m_hat, v_hat)`` after every step: Adam's two moments, bias-corrected.

    Written from the paper's recurrences, ``m_t = beta1 m_{t-1} + (1 - beta1) g_t`` and
    ``v_t = beta2 v_{t-1} + (1 - beta2) g_t**2`` divided by ``1 - beta**t``, independently of
    :func:`adam_step`, so the two can be checked against each other. ``v_hat`` is the
    (weighted) mean of ``g**2``, not the variance of ``g``.
    """
    grads = _as_gradients(grads)
    beta1, beta2 = _check_betas(betas)
    m = torch.zeros(grads.shape[1:], dtype=torch.float64)
    v = torch.zeros_like(m)
    m_hat, v_hat = torch.empty_like(grads), torch.empty_like(grads)
    for t, grad in enumerate(grads, start=1):
        m = beta1 * m + (1 - beta1) * grad
        v = beta2 * v + (1 - beta2) * grad**2
        m_hat[t - 1] = m / (1 - beta1**t) if bias_correction else m
        v_hat[t - 1] = v / (1 - beta2**t) if bias_correction else v
    return m_hat, v_hat


def effective_step_sizes(
    grads: Sequence[float] | torch.Tensor,
    *,
    lr: float = 1e-3,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    bias_correction: bool = True,
    second_moment: float | torch.Tensor | None = None,
) -> torch.Tensor:
    """``|update_t| / lr``: each step's size in units of the learning rate.

    1 means the parameter moved by exactly ``lr``; Adam's step is close to 1 when the
    gradient is consistent, and much smaller when it is noisy.

    ``second_moment``: a control. Given, Adam's estimate ``v_hat`` is replaced by this exact
    value of ``E[g**2]`` (a number, or a tensor broadcasting against one step's gradient), and
    the step is ``|m_hat| / (sqrt(second_moment) + eps)`` with Adam's own ``m_hat``.
    """
    if lr <= 0:
        raise ValueError(f"Invalid learning rate: {lr} (expected lr > 0)")
    if second_moment is None:
        updates = adam_updates(grads, lr=lr, betas=betas, eps=eps, bias_correction=bias_correction)
        return updates.abs() / lr
    second_moment = torch.as_tensor(second_moment, dtype=torch.float64)
    if not (torch.isfinite(second_moment).all() and (second_moment > 0).all()):
        raise ValueError(f"second_moment must be positive and finite, got {second_moment}")
    m_hat, _ = adam_moments(grads, betas=betas, bias_correction=bias_correction)
    return m_hat.abs() / (second_moment.sqrt() + eps)


def constant_gradient_ratio(
    t: int | torch.Tensor, betas: tuple[float, float] = (0.9, 0.999)
) -> torch.Tensor:
    """``(1 - beta1**t) / sqrt(1 - beta2**t)``: the step size in units of ``lr`` at step ``t``
    for a constant gradient when bias correction is left out (and eps is negligible)."""
    t = torch.as_tensor(t, dtype=torch.float64)
    if (t < 1).any():
        raise ValueError("t counts updates from 1")
    beta1, beta2 = _check_betas(betas)
    return (1 - beta1**t) / torch.sqrt(1 - beta2**t)


def largest_step(betas: tuple[float, float] = (0.9, 0.999), t: int | None = None) -> float:
    """The largest ``|m_hat_t| / sqrt(v_hat_t)`` over every sequence of gradients.

    That is the longest step Adam can take at step ``t``, in learning rates, with
    ``eps = 0`` (``eps`` only shortens it). With ``k`` counting steps back from ``t``,
    ``m_t = (1 - beta1) sum_k beta1**k g_{t-k}`` and ``v_t = (1 - beta2) sum_k beta2**k
    g_{t-k}**2``, and the Cauchy-Schwarz inequality gives, with ``r = beta1**2 / beta2``,

        |m_t| / sqrt(v_t) <= (1 - beta1) / sqrt(1 - beta2) * sqrt(sum_{k<t} r**k),

    with equality for ``g_{t-k}`` proportional to ``(beta1 / beta2)**k`` (see
    :func:`worst_case_gradients`). The bias corrections multiply it by
    ``sqrt(1 - beta2**t) / (1 - beta1**t)``. ``t=None`` gives the limit of many steps,
    ``(1 - beta1) / sqrt((1 - beta2) (1 - r))``: about 7.27 for the default betas, against
    Kingma and Ba's ``(1 - beta1) / sqrt(1 - beta2)``, about 3.16, the step right after a
    single nonzero gradient. It is infinite when ``beta1**2 >= beta2``.
    """
    beta1, beta2 = _check_betas(betas)
    if beta2 == 0.0:
        raise ValueError("Invalid beta parameter at index 1: 0.0 (the bound needs beta2 > 0)")
    r = beta1**2 / beta2
    scale = (1 - beta1) / math.sqrt(1 - beta2)
    if t is None:
        return math.inf if r >= 1 else scale / math.sqrt(1 - r)
    if isinstance(t, bool) or int(t) != t or t < 1:
        raise ValueError(f"t counts updates from 1, got {t!r}")
    t = int(t)
    weight = float(t) if r == 1 else (1 - r**t) / (1 - r)
    return scale * math.sqrt(weight) * math.sqrt(1 - beta2**t) / (1 - beta1**t)


def worst_case_gradients(t: int, betas: tuple[float, float] = (0.9, 0.999)) -> torch.Tensor:
    """The ``t`` gradients whose step ``t`` is :func:`largest_step` ``(betas, t)``.

    ``g_s = (beta1 / beta2)**(t - s)`` for ``s = 1, ..., t``: a burst that grows by the factor
    ``beta2 / beta1`` every step up to the last one (so, for ``beta1 < beta2``, it rises out
    of what is almost silence). The scale is arbitrary: Adam's step does not depend on it.
    Values below ``1e-150`` are set to 0, since their squares would underflow float64; the
    step they leave out is smaller than a relative ``1e-290``.
    """
    beta1, beta2 = _check_betas(betas)
    if beta2 == 0.0:
        raise ValueError("Invalid beta parameter at index 1: 0.0 (the bound needs beta2 > 0)")
    if isinstance(t, bool) or int(t) != t or t < 1:
        raise ValueError(f"t counts updates from 1, got {t!r}")
    steps_back = torch.arange(int(t) - 1, -1, -1, dtype=torch.float64)
    grads = (beta1 / beta2) ** steps_back
    return torch.where(grads < 1e-150, 0.0, grads)

"""Adam's early variance: RAdam's rectification, and GI-Adam's initial second moment.

Liu et al. (2020, "On the Variance of the Adaptive Learning Rate and Beyond") argue that Adam
needs warmup because its adaptive learning rate ``1 / sqrt(v_hat_t)`` is estimated from very
few squared gradients early on, so its variance is huge, or even undefined, in the first
steps. They model ``v_hat_t`` as a simple moving average (SMA) of ``rho_t`` squared
gradients, where ``rho_t`` is the SMA length whose centre of mass matches that of Adam's
exponential average:

    rho_inf = 2 / (1 - beta2) - 1
    rho_t   = rho_inf - 2 t beta2**t / (1 - beta2**t)

and multiply the adaptive step by the *rectification* ``r_t``, the square root of the ratio
of the adaptive rate's variance at ``rho_inf`` to its variance at ``rho_t``:

    r_t = sqrt((rho_t - 4)(rho_t - 2) rho_inf / ((rho_inf - 4)(rho_inf - 2) rho_t))

While ``rho_t`` is too small for that variance to exist, RAdam takes a plain SGD-with-momentum
step (the bias-corrected first moment times ``lr``) instead. The paper's Algorithm 1 switches
to the adaptive step once ``rho_t > 4``; ``torch.optim.RAdam`` waits for ``rho_t > 5``.

The step convention here is the paper's and the optimizer's: ``t`` is the number of the
update, 1 for the first one (``state["step"]`` after it is incremented). In the course's
schedule convention (:mod:`course_lib.schedules`) that update uses ``lr(s)`` with ``s = t - 1``.

Kalra & Barkeshli (2024, "Why Warmup the Learning Rate? Underlying Mechanisms and
Improvements") suggest a different fix, GI-Adam: start Adam's second moment at the squared
gradient at initialisation instead of at zero. :func:`gi_adam_init_` does that to an Adam
optimizer's state.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from course_lib.optim import Adam as CourseAdam

PAPER_THRESHOLD = 4.0
"""Liu et al.'s Algorithm 1 takes the adaptive (rectified) step once ``rho_t > 4``."""

TORCH_THRESHOLD = 5.0
"""``torch.optim.RAdam`` takes the adaptive (rectified) step once ``rho_t > 5``."""


def _check_beta2(beta2: float) -> float:
    if isinstance(beta2, bool) or not isinstance(beta2, (int, float)):
        raise TypeError(f"beta2 must be a real number, got {type(beta2).__name__}")
    if not 0.0 < beta2 < 1.0:
        raise ValueError(f"Invalid beta2: {beta2} (expected 0 < beta2 < 1)")
    return float(beta2)


def _as_steps(step: int | Sequence[int] | Tensor) -> Tensor:
    if isinstance(step, bool):
        raise TypeError("step must be an int or a sequence of ints, got bool")
    steps = torch.as_tensor(step, dtype=torch.float64)
    if steps.numel() == 0:
        raise ValueError("Invalid step: empty (expected at least one update number)")
    if not torch.isfinite(steps).all() or (steps < 1).any() or (steps != steps.round()).any():
        raise ValueError(f"Invalid step: {step!r} (expected whole update numbers t >= 1)")
    return steps


def rho_inf(beta2: float) -> float:
    """``2 / (1 - beta2) - 1``: the length of the SMA that Adam's second moment approximates
    once its exponential average has forgotten its zero start (1999 for ``beta2 = 0.999``)."""
    beta2 = _check_beta2(beta2)
    return 2.0 / (1.0 - beta2) - 1.0


def rho(step: int | Sequence[int] | Tensor, beta2: float) -> Tensor:
    """``rho_t = rho_inf - 2 t beta2**t / (1 - beta2**t)`` at update ``t`` (float64 tensor).

    ``rho_1 = 1`` for every ``beta2``: after one update the second moment is one squared
    gradient. ``rho_t`` grows by almost one per update at first and approaches ``rho_inf``.
    """
    steps = _as_steps(step)
    beta2 = _check_beta2(beta2)
    power = beta2**steps
    return rho_inf(beta2) - 2.0 * steps * power / (1.0 - power)


def rectification(step: int | Sequence[int] | Tensor, beta2: float) -> Tensor:
    """RAdam's variance rectification ``r_t`` at update ``t`` (float64 tensor).

    ``r_t = sqrt((rho_t - 4)(rho_t - 2) rho_inf / ((rho_inf - 4)(rho_inf - 2) rho_t))``,
    between 0 and 1 and rising to 1 as ``t`` grows. Where ``rho_t <= 4`` the variance it is
    built from does not exist and the result is NaN (RAdam takes an SGD step there).
    """
    beta2 = _check_beta2(beta2)
    inf = rho_inf(beta2)
    if inf <= 4.0:
        raise ValueError(
            f"Invalid beta2: {beta2} (rho_inf = {inf:g} <= 4: the rectification is never "
            "defined; expected beta2 > 0.6)"
        )
    r = rho(step, beta2)
    ratio = (r - 4.0) * (r - 2.0) * inf / ((inf - 4.0) * (inf - 2.0) * r)
    return torch.where(r > 4.0, ratio.clamp(min=0.0).sqrt(), torch.nan)


def first_adaptive_step(beta2: float, threshold: float = PAPER_THRESHOLD) -> int:
    """The first update ``t`` with ``rho_t > threshold``: RAdam's first adaptive step.

    ``threshold`` is :data:`PAPER_THRESHOLD` (4, Liu et al.'s Algorithm 1) or
    :data:`TORCH_THRESHOLD` (5, ``torch.optim.RAdam``). Every earlier update is an
    un-adapted SGD-with-momentum step.
    """
    beta2 = _check_beta2(beta2)
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)):
        raise TypeError(f"threshold must be a real number, got {type(threshold).__name__}")
    inf = rho_inf(beta2)
    if not inf > threshold:
        raise ValueError(
            f"Invalid threshold: {threshold} (rho_t never exceeds it for beta2={beta2}: "
            f"rho_inf = {inf:g}; expected threshold < rho_inf)"
        )
    t = 1
    while not rho(t, beta2).item() > threshold:  # rho_t rises by about 1 per update
        t += 1
    return t


def adaptive_lr_variance(rho_t: float | Tensor, *, approximate: bool = False) -> Tensor:
    """Variance of the adaptive rate ``psi = sqrt(rho / X)``, ``X ~ chi2(rho)``, at ``rho = rho_t``.

    This is ``1 / sqrt(v)`` for ``v`` the mean of ``rho`` squared standard-normal gradients,
    Liu et al.'s model of ``1 / sqrt(v_hat_t)``. Exactly (from the moments of ``X``),

        Var[psi] = rho / (rho - 2) - (rho / 2) * (Gamma((rho - 1) / 2) / Gamma(rho / 2))**2,

    finite only for ``rho > 2`` (``inf`` below). ``approximate=True`` gives the paper's
    first-order approximation ``rho / (2 (rho - 2)(rho - 4))`` (for ``rho > 4``, NaN below),
    the expression the rectification ``r_t`` is built from: ``r_t**2`` is its value at
    ``rho_inf`` divided by its value at ``rho_t``. Both approach ``1 / (2 rho)`` for large
    ``rho``.
    """
    r = torch.as_tensor(rho_t, dtype=torch.float64)
    if torch.isnan(r).any() or (r <= 0).any():
        raise ValueError(f"Invalid rho_t: {rho_t!r} (expected rho_t > 0)")
    if approximate:
        value = r / (2.0 * (r - 2.0) * (r - 4.0))
        return torch.where(r > 4.0, value, torch.nan)
    log_ratio = torch.lgamma((r - 1.0) / 2.0) - torch.lgamma(r / 2.0)
    value = r / (r - 2.0) - (r / 2.0) * torch.exp(2.0 * log_ratio)
    return torch.where(r > 2.0, value, torch.inf)


def radam_updates(
    grads: Sequence[float] | Tensor,
    *,
    lr: float = 1e-3,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    threshold: float = TORCH_THRESHOLD,
) -> Tensor:
    """RAdam's updates ``theta_t - theta_{t-1}`` of a scalar fed ``grads``, from the formulas.

    Written from Liu et al.'s Algorithm 1, with ``torch.optim.RAdam``'s placement of ``eps``
    (added to ``sqrt(v_t)`` before the bias correction; the paper has no ``eps``). With
    ``m_hat_t`` the bias-corrected first moment:

    - ``rho_t <= threshold``: ``-lr * m_hat_t`` (SGD with momentum, no adaptive rate);
    - otherwise: ``-lr * r_t * m_hat_t * sqrt(1 - beta2**t) / (sqrt(v_t) + eps)``.

    Returns a float64 tensor as long as ``grads``. :func:`torch_radam_updates` measures the
    same thing on ``torch.optim.RAdam``.
    """
    grads = _check_grads(grads)
    beta1, beta2 = betas
    if not 0.0 <= beta1 < 1.0:
        raise ValueError(f"Invalid beta1: {beta1} (expected 0 <= beta1 < 1)")
    beta2 = _check_beta2(beta2)
    if lr < 0:
        raise ValueError(f"Invalid learning rate: {lr} (expected lr >= 0)")
    if eps < 0:
        raise ValueError(f"Invalid eps: {eps} (expected eps >= 0)")
    m = v = 0.0
    updates = torch.empty_like(grads)
    for index, g in enumerate(grads.tolist()):
        t = index + 1
        m = beta1 * m + (1.0 - beta1) * g
        v = beta2 * v + (1.0 - beta2) * g * g
        m_hat = m / (1.0 - beta1**t)
        rho_t = rho(t, beta2).item()
        if rho_t > threshold:
            adaptive = math.sqrt(1.0 - beta2**t) / (math.sqrt(v) + eps)
            updates[index] = -lr * rectification(t, beta2).item() * m_hat * adaptive
        else:
            updates[index] = -lr * m_hat
    return updates


def torch_radam_updates(
    grads: Sequence[float] | Tensor,
    *,
    lr: float = 1e-3,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
) -> Tensor:
    """The updates ``torch.optim.RAdam`` makes to a float64 scalar fed ``grads`` in turn.

    A measurement, not a formula: each gradient is written into ``.grad`` and the optimizer
    steps. Compare with :func:`radam_updates` to see which steps were adaptive.
    """
    grads = _check_grads(grads)
    param = torch.zeros((), dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.RAdam([param], lr=lr, betas=betas, eps=eps, foreach=False)
    updates = torch.empty_like(grads)
    for index, g in enumerate(grads):
        before = param.detach().clone()
        param.grad = g.clone().reshape(())
        optimizer.step()
        updates[index] = param.detach() - before
    return updates


def _check_grads(grads: Sequence[float] | Tensor) -> Tensor:
    grads = torch.as_tensor(grads, dtype=torch.float64).flatten()
    if grads.numel() == 0:
        raise ValueError("Invalid grads: empty (expected at least one gradient)")
    if not torch.isfinite(grads).all():
        raise ValueError("Invalid grads: contains a non-finite value")
    return grads


ADAM_TYPES: tuple[type[torch.optim.Optimizer], ...] = (torch.optim.Adam, CourseAdam)
"""Optimizers whose state :func:`gi_adam_init_` knows: ``torch.optim.Adam`` / ``AdamW`` and
the course's :class:`course_lib.optim.Adam` / ``AdamW`` (their subclasses; same state keys)."""


def gi_adam_init_(optimizer: torch.optim.Optimizer) -> int:
    """GI-Adam: set Adam's second moment to the current gradient squared, before the first step.

    Call it after ``loss.backward()`` on a first batch and before the first
    ``optimizer.step()``. For every parameter with a gradient it writes the state Adam would
    otherwise create lazily, with one change: ``exp_avg_sq = grad**2`` instead of zeros
    (``step = 0``, ``exp_avg = 0`` as usual; ``max_exp_avg_sq = 0`` under AMSGrad, so its
    running maximum starts from the first update's ``v``). It returns the number of
    parameters initialised. Then either step on this gradient or, as Kalra & Barkeshli do,
    ``zero_grad()`` and train from the next batch.

    **How the bias correction interacts.** The optimizer is unchanged, so it still divides
    the second moment by ``1 - beta2**t``. That correction assumes ``v_0 = 0``; with
    ``v_0 = g_0**2`` the average ``v_t = beta2**t g_0**2 + (1 - beta2) sum_i beta2**(t-i)
    g_i**2`` already has weights summing to 1, so ``v_hat_t = v_t / (1 - beta2**t)`` is
    *larger* than the typical squared gradient by the factor ``1 / (1 - beta2**t)``: 1000 at
    ``t = 1`` for ``beta2 = 0.999``. While gradients keep their size, each step is therefore
    about ``sqrt(1 - beta2**t)`` times the step plain Adam would take (for a constant gradient
    ``g``, exactly ``lr * sqrt(1 - beta2**t) * sign(g)`` up to ``eps``): a built-in warmup of
    the step size with time constant ``1 / (1 - beta2)``. This is the variant Kalra &
    Barkeshli's code runs (the bias correction kept). The first moment starts at zero and is
    bias-corrected exactly as in Adam.

    Raises ``TypeError`` for an optimizer other than Adam/AdamW, and ``ValueError`` if no
    parameter has a gradient or if any parameter has already been stepped.
    """
    if not isinstance(optimizer, ADAM_TYPES):
        raise TypeError(
            "optimizer must be torch.optim.Adam/AdamW or course_lib.optim.Adam/AdamW, "
            f"got {type(optimizer).__name__}"
        )
    pending = []
    for group in optimizer.param_groups:
        for p in group["params"]:
            if p.grad is None:
                continue
            state = optimizer.state.get(p, {})
            if state and float(state["step"]) > 0:
                raise ValueError(
                    f"Invalid optimizer: a parameter of shape {tuple(p.shape)} has already taken "
                    f"{int(float(state['step']))} step(s) (expected gi_adam_init_ before the "
                    "first optimizer.step())"
                )
            if p.grad.is_sparse:
                raise ValueError("Invalid gradient: sparse gradients are not supported by Adam")
            pending.append((group, p))
    if not pending:
        raise ValueError(
            "Invalid optimizer: no parameter has a gradient (expected loss.backward() first)"
        )
    for group, p in pending:
        grad = p.grad.detach()
        if torch.is_complex(grad):  # torch updates complex tensors as pairs of reals
            second = torch.view_as_complex(torch.view_as_real(grad).square().contiguous())
        else:
            second = grad.square()
        on_device = group.get("capturable", False) or group.get("fused", False)
        state = optimizer.state[p]
        state.clear()
        state["step"] = (
            torch.zeros((), dtype=torch.float32, device=p.device)
            if on_device
            else torch.tensor(0.0, dtype=torch.float32)
        )
        state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        state["exp_avg_sq"] = second.clone(memory_format=torch.preserve_format)
        if group.get("amsgrad", False):
            state["max_exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
    return len(pending)

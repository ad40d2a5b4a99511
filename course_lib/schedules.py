"""Learning-rate schedules as pure functions of the step.

A schedule is a function ``lr(step) -> float`` that returns the learning rate itself, not a
multiplier of some base rate. Each one below is a small module-level function with
keyword-only hyperparameters; bind them with :func:`functools.partial` to get a schedule::

    from functools import partial
    from course_lib import schedules

    lr = partial(schedules.cosine_schedule, peak_lr=3e-4, num_warmup_steps=2000,
                 num_training_steps=100_000, min_lr=1e-5)
    lr(0), lr(2000), lr(99_999)    # 0.0, 0.0003, 1e-05

A ``partial`` of a module-level function pickles, prints its hyperparameters and can be
called at any step, which is what makes these schedules easy to test, plot and resume.

The step convention
-------------------
``step`` counts the updates already made, from 0: **lr(s) is the rate used for update number
s + 1**. ``lr(0)`` is the rate of the first ``optimizer.step()``. This is exactly the number
``torch.optim.lr_scheduler.LambdaLR`` passes to its function (its ``last_epoch``) when
``scheduler.step()`` is called once after every ``optimizer.step()``; :func:`as_lambda_lr`
drives any torch optimizer that way. With ``W = num_warmup_steps`` and
``T = num_training_steps``:

- **Warmup** covers ``s = 0 .. W - 1``. The linear ramp is ``lr(s) = peak_lr * s / W``, so
  ``lr(0) = 0`` (the first update only feeds Adam's moment estimates) and ``lr(W) = peak_lr``.
  ``W = 0`` means no warmup.
- **Decay** starts at the peak at ``s = W`` and reaches the floor ``min_lr`` at
  ``s = T - 1``, the last of the ``T`` updates.
- **Past the end** (``s >= T``) a schedule with a length holds its last value,
  ``lr(s) = lr(T - 1)``: the floor for the decays. Schedules without a length (constant,
  inverse square root, step decay, cosine with restarts) go on by their formula.
- Formulas that papers write for 1-based update numbers ``t`` (Vaswani et al.'s
  ``step_num``, Ma & Yarats' ``t``) are evaluated at ``t = s + 1``: the same rate for the
  same update.

For example, peak 3e-4, 2000 warmup steps, 100000 steps and floor 1e-5 give
``lr(0) = 0``, ``lr(1999) = 3e-4 * 1999 / 2000``, ``lr(2000) = 3e-4``,
``lr(99999) = 1e-5`` and ``lr(s) = 1e-5`` for every ``s >= 100000``.

Warmup and decay
----------------
Every schedule except :func:`one_cycle_schedule` and :func:`transformer_schedule` (whose
warmups are part of their formulas) takes ``num_warmup_steps``, a ramp shape ``warmup``
(``"linear"``, the default; ``"cosine"``, a half-cosine; ``"none"``, hold the peak) and
``warmup_start_lr`` (default 0). Warmups defined by Adam's ``beta2`` rather than by a length
(:func:`exponential_warmup`, :func:`untuned_linear_warmup`) go in front of any schedule with
:func:`with_warmup`, which takes the smaller of the two rates at every step,
``lr(s) = min(warmup(s), schedule(s))``. For a ramp that reaches the peak where the schedule
starts to decay that is "warm up, then decay"; a ramp that only approaches the peak hands
over smoothly, as the ``min`` in the Transformer's formula does.

The same schedules elsewhere
----------------------------
Checked value by value in ``tests/test_schedules.py``:

- ``transformers`` (Hugging Face) uses the same step numbers, but its decays reach the floor
  one step later, at ``s = num_training_steps``: its ``get_linear_schedule_with_warmup``,
  ``get_cosine_schedule_with_warmup``, ``get_cosine_with_min_lr_schedule_with_warmup`` and
  ``get_wsd_schedule`` with ``num_training_steps = T - 1`` are ours with
  ``num_training_steps = T``; ``get_inverse_sqrt_schedule`` is ours with the same arguments.
- ``torch.optim.lr_scheduler``: ``SequentialLR([LinearLR(start_factor=f, total_iters=W),
  CosineAnnealingLR(T_max=T - 1 - W, eta_min=min_lr)], milestones=[W])`` is
  ``cosine_schedule`` with ``warmup_start_lr = f * peak_lr``. The usual ``T_max = T - W``
  reaches the floor one step after the last update: it is ours with ``T + 1``. ``StepLR``,
  ``OneCycleLR`` and ``CosineAnnealingWarmRestarts`` are :func:`step_decay_schedule`,
  :func:`one_cycle_schedule` and :func:`cosine_restarts_schedule` step for step.

Bad hyperparameters raise ``ValueError`` naming the argument and the allowed range; a step or a
step count that is not an integer raises ``TypeError``.
"""

from __future__ import annotations

import itertools
import math
import numbers
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from matplotlib.axes import Axes

__all__ = [
    "COOLDOWN_SHAPES",
    "ONE_CYCLE_ANNEALS",
    "SCHEDULES",
    "WARMUP_SHAPES",
    "as_lambda_lr",
    "constant_schedule",
    "cosine_restarts_schedule",
    "cosine_schedule",
    "cosine_warmup",
    "exponential_warmup",
    "inverse_sqrt_schedule",
    "linear_schedule",
    "linear_warmup",
    "make_schedule",
    "one_cycle_schedule",
    "plot_schedules",
    "step_decay_schedule",
    "transformer_schedule",
    "untuned_linear_warmup",
    "untuned_warmup_steps",
    "with_warmup",
    "wsd_schedule",
]

Schedule = Callable[[int], float]

WARMUP_SHAPES = ("linear", "cosine", "none")
"""Ramps a schedule can warm up with: ``peak * p``, ``peak * (1 - cos(pi p)) / 2``, or none."""

COOLDOWN_SHAPES = ("linear", "cosine", "1-sqrt")
"""Cooldown shapes of :func:`wsd_schedule`, as in ``transformers.get_wsd_schedule``."""

ONE_CYCLE_ANNEALS = ("cos", "linear")
"""Annealing strategies of :func:`one_cycle_schedule`, as in ``torch.optim.lr_scheduler.OneCycleLR``."""


# --- validation ---------------------------------------------------------------------------


def _check_int(name: str, value: object, minimum: int = 0) -> int:
    """``value`` as an int, or ``TypeError`` (not an integer) / ``ValueError`` (below minimum)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise ValueError(f"Invalid {name}: {value} (expected an integer >= {minimum})")
    return int(value)


def _check_step(step: object) -> int:
    return _check_int("step", step, minimum=0)


def _check_real(
    name: str,
    value: object,
    *,
    low: float,
    high: float = math.inf,
    low_open: bool = False,
    high_open: bool = False,
    high_label: str | None = None,
) -> float:
    """``value`` as a float in the given range, or ``TypeError`` / ``ValueError`` saying which."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__} {value!r}")
    x = float(value)
    above = x > low if low_open else x >= low
    below = x < high if high_open else x <= high
    if not (math.isfinite(x) and above and below):
        allowed = f"{low:g} {'<' if low_open else '<='} {name}"
        if not math.isinf(high):
            allowed += f" {'<' if high_open else '<='} {high_label or format(high, 'g')}"
        raise ValueError(f"Invalid {name}: {value!r} (expected a finite value with {allowed})")
    return x


def _check_choice(name: str, value: object, choices: Sequence[str]) -> str:
    if value not in choices:
        raise ValueError(
            f"Invalid {name}: {value!r} (expected one of {', '.join(map(repr, choices))})"
        )
    return str(value)


def _check_peak(peak_lr: object) -> float:
    return _check_real("peak_lr", peak_lr, low=0.0, low_open=True)


def _check_floor(min_lr: object, peak_lr: float) -> float:
    return _check_real("min_lr", min_lr, low=0.0, high=peak_lr, high_label=f"peak_lr = {peak_lr!r}")


def _check_warmup(
    peak_lr: float,
    num_warmup_steps: object,
    warmup: object,
    start_lr: object,
    start_name: str = "warmup_start_lr",
) -> int:
    """Validate the warmup arguments every schedule shares; return ``num_warmup_steps``."""
    num_warmup_steps = _check_int("num_warmup_steps", num_warmup_steps)
    _check_choice("warmup", warmup, WARMUP_SHAPES)
    _check_real(start_name, start_lr, low=0.0, high=peak_lr, high_label=f"peak_lr = {peak_lr!r}")
    return num_warmup_steps


def _check_decay_length(num_warmup_steps: int, num_training_steps: object) -> int:
    """The run must leave room for the peak at ``W`` and at least one step of decay after it."""
    num_training_steps = _check_int("num_training_steps", num_training_steps, minimum=2)
    if num_warmup_steps > num_training_steps - 2:
        raise ValueError(
            f"Invalid num_warmup_steps: {num_warmup_steps} (expected 0 <= num_warmup_steps <= "
            f"num_training_steps - 2 = {num_training_steps - 2}: the rate peaks at step "
            "num_warmup_steps and needs at least one more step to decay to min_lr)"
        )
    return num_training_steps


# --- the arithmetic shared by every schedule -----------------------------------------------


def _mix(start: float, end: float, fraction: float) -> float:
    """``start`` at fraction 0 and ``end`` at fraction 1, exactly; linear in between.

    Rounding can neither overshoot ``end`` nor break monotonicity in ``fraction``.
    """
    if fraction >= 1.0:
        return end
    value = start + (end - start) * fraction
    return min(value, end) if end >= start else max(value, end)


def _progress(step: int, start: int | float, end: int | float) -> float:
    """How far ``step`` is from ``start`` (0.0) to ``end`` (1.0)."""
    return (step - start) / (end - start)


def _ramp(step: int, peak_lr: float, num_warmup_steps: int, shape: str, start_lr: float) -> float:
    """The warmup rate at ``step < num_warmup_steps`` for a ramp ``shape`` in WARMUP_SHAPES."""
    p = step / num_warmup_steps
    if shape == "linear":
        return _mix(start_lr, peak_lr, p)
    if shape == "cosine":
        return _mix(start_lr, peak_lr, (1.0 - math.cos(math.pi * p)) / 2.0)
    return peak_lr  # "none": hold the peak


# --- warmups --------------------------------------------------------------------------------


def linear_warmup(
    step: int, *, peak_lr: float, num_warmup_steps: int, start_lr: float = 0.0
) -> float:
    """Linear warmup from ``start_lr`` to ``peak_lr`` over ``num_warmup_steps``, then constant.

    ``lr(s) = start_lr + (peak_lr - start_lr) * s / W`` for ``s < W``: ``lr(0) = start_lr``
    (0 by default), ``lr(W - 1)`` is one ramp step short of the peak, ``lr(s) = peak_lr`` for
    every ``s >= W``. It never ends, so it is also "constant with warmup".
    """
    step = _check_step(step)
    peak_lr = _check_peak(peak_lr)
    num_warmup_steps = _check_warmup(peak_lr, num_warmup_steps, "linear", start_lr, "start_lr")
    if step >= num_warmup_steps:
        return peak_lr
    return _ramp(step, peak_lr, num_warmup_steps, "linear", start_lr)


def cosine_warmup(
    step: int, *, peak_lr: float, num_warmup_steps: int, start_lr: float = 0.0
) -> float:
    """Half-cosine ramp from ``start_lr`` to ``peak_lr`` over ``num_warmup_steps``, then constant.

    ``lr(s) = start_lr + (peak_lr - start_lr) * (1 - cos(pi s / W)) / 2`` for ``s < W``:
    ``lr(0) = start_lr``, slow at both ends, half way at ``s = W / 2``, ``peak_lr`` from ``W``.
    """
    step = _check_step(step)
    peak_lr = _check_peak(peak_lr)
    num_warmup_steps = _check_warmup(peak_lr, num_warmup_steps, "cosine", start_lr, "start_lr")
    if step >= num_warmup_steps:
        return peak_lr
    return _ramp(step, peak_lr, num_warmup_steps, "cosine", start_lr)


def exponential_warmup(step: int, *, peak_lr: float, beta2: float = 0.999) -> float:
    """Ma & Yarats' untuned exponential warmup: ``peak_lr * (1 - exp(-(1 - beta2) t))``.

    The paper (Ma & Yarats, 2021, "On the adequacy of untuned warmup for adaptive
    optimization") numbers updates ``t = 1, 2, ...``; here ``t = s + 1``, so
    ``lr(0) = peak_lr * (1 - exp(-(1 - beta2)))``, about ``peak_lr * (1 - beta2)``. The rate
    reaches ``1 - 1/e`` of the peak after ``1 / (1 - beta2)`` updates, 86% after twice that,
    and approaches ``peak_lr`` without reaching it. Put it in front of a decay with
    :func:`with_warmup`.
    """
    step = _check_step(step)
    peak_lr = _check_peak(peak_lr)
    beta2 = _check_real("beta2", beta2, low=0.0, high=1.0, high_open=True)
    t = step + 1
    return peak_lr * (1.0 - math.exp(-(1.0 - beta2) * t))


def untuned_warmup_steps(beta2: float = 0.999) -> int:
    """Ma & Yarats' rule of thumb for a linear warmup's length: ``2 / (1 - beta2)`` updates.

    2000 for Adam's default ``beta2 = 0.999``; rounded to the nearest integer.
    """
    beta2 = _check_real("beta2", beta2, low=0.0, high=1.0, high_open=True)
    return round(2.0 / (1.0 - beta2))


def untuned_linear_warmup(step: int, *, peak_lr: float, beta2: float = 0.999) -> float:
    """Ma & Yarats' untuned linear warmup: ``peak_lr * min(1, (1 - beta2) t / 2)``, ``t = s + 1``.

    A linear warmup over ``2 / (1 - beta2)`` updates (2000 for ``beta2 = 0.999``), written as
    in the paper with 1-based update numbers: ``lr(0) = peak_lr * (1 - beta2) / 2`` and the
    peak is reached at ``s = 2 / (1 - beta2) - 1``. It equals
    ``linear_warmup(s + 1, num_warmup_steps=untuned_warmup_steps(beta2))``: the same ramp one
    update earlier than this module's linear warmup, which starts at 0.
    """
    step = _check_step(step)
    peak_lr = _check_peak(peak_lr)
    beta2 = _check_real("beta2", beta2, low=0.0, high=1.0, high_open=True)
    t = step + 1
    return peak_lr * min(1.0, (1.0 - beta2) * t / 2.0)


def with_warmup(step: int, *, warmup: Schedule, schedule: Schedule) -> float:
    """Cap ``schedule`` by ``warmup``: ``lr(s) = min(warmup(s), schedule(s))``.

    Both are schedules (functions of the step); bind them with ``functools.partial`` so the
    result pickles. Use ``warmup="none"`` in ``schedule`` to keep its own ramp out of the way,
    for example Ma & Yarats' exponential warmup in front of a cosine decay::

        partial(with_warmup,
                warmup=partial(exponential_warmup, peak_lr=3e-4, beta2=0.999),
                schedule=partial(cosine_schedule, peak_lr=3e-4, num_warmup_steps=0,
                                 num_training_steps=100_000, min_lr=1e-5))

    At step 0 it is ``min(warmup(0), schedule(0))``; it ends where ``schedule`` ends as long
    as ``warmup`` is above ``schedule``'s floor by then.
    """
    if not callable(warmup):
        raise TypeError(f"warmup must be a schedule (a callable), got {type(warmup).__name__}")
    if not callable(schedule):
        raise TypeError(f"schedule must be a callable, got {type(schedule).__name__}")
    step = _check_step(step)
    return min(warmup(step), schedule(step))


# --- schedules ------------------------------------------------------------------------------


def constant_schedule(
    step: int,
    *,
    peak_lr: float,
    num_warmup_steps: int = 0,
    warmup: str = "linear",
    warmup_start_lr: float = 0.0,
) -> float:
    """Warm up over ``num_warmup_steps`` (if any), then hold ``peak_lr`` forever.

    ``lr(0) = warmup_start_lr`` when there is a warmup (``peak_lr`` when there is none);
    ``lr(s) = peak_lr`` for every ``s >= num_warmup_steps``. It has no end.
    """
    step = _check_step(step)
    peak_lr = _check_peak(peak_lr)
    num_warmup_steps = _check_warmup(peak_lr, num_warmup_steps, warmup, warmup_start_lr)
    if step < num_warmup_steps:
        return _ramp(step, peak_lr, num_warmup_steps, warmup, warmup_start_lr)
    return peak_lr


def linear_schedule(
    step: int,
    *,
    peak_lr: float,
    num_warmup_steps: int,
    num_training_steps: int,
    min_lr: float = 0.0,
    warmup: str = "linear",
    warmup_start_lr: float = 0.0,
) -> float:
    """Warm up, then decay linearly from ``peak_lr`` at step ``W`` to ``min_lr`` at ``T - 1``.

    ``lr(0) = warmup_start_lr`` (0; ``peak_lr`` if ``W = 0``), ``lr(W) = peak_lr``,
    ``lr(T - 1) = min_lr`` (which may be 0), and ``min_lr`` for every step after the end.
    ``transformers.get_linear_schedule_with_warmup(num_training_steps=T - 1)`` is this with
    ``min_lr = 0``.
    """
    step = _check_step(step)
    peak_lr = _check_peak(peak_lr)
    num_warmup_steps = _check_warmup(peak_lr, num_warmup_steps, warmup, warmup_start_lr)
    num_training_steps = _check_decay_length(num_warmup_steps, num_training_steps)
    min_lr = _check_floor(min_lr, peak_lr)
    # 1) warmup, 2) past the end: the floor, 3) in between: the line.
    if step < num_warmup_steps:
        return _ramp(step, peak_lr, num_warmup_steps, warmup, warmup_start_lr)
    if step >= num_training_steps - 1:
        return min_lr
    p = _progress(step, num_warmup_steps, num_training_steps - 1)
    return _mix(min_lr, peak_lr, 1.0 - p)


def cosine_schedule(
    step: int,
    *,
    peak_lr: float,
    num_warmup_steps: int,
    num_training_steps: int,
    min_lr: float = 0.0,
    warmup: str = "linear",
    warmup_start_lr: float = 0.0,
) -> float:
    """Warm up, then follow half a cosine from ``peak_lr`` at step ``W`` to ``min_lr`` at ``T - 1``.

    ``lr(s) = min_lr + (peak_lr - min_lr) * (1 + cos(pi p)) / 2`` with
    ``p = (s - W) / (T - 1 - W)``. ``lr(0) = warmup_start_lr`` (0; ``peak_lr`` if ``W = 0``),
    ``lr(W) = peak_lr``, ``lr(T - 1) = min_lr``, and ``min_lr`` for every step after the end.
    ``transformers.get_cosine_with_min_lr_schedule_with_warmup(num_training_steps=T - 1)``
    is this schedule; nanoGPT's ``get_lr`` is this one with ``lr_decay_iters = T - 1``.
    """
    step = _check_step(step)
    peak_lr = _check_peak(peak_lr)
    num_warmup_steps = _check_warmup(peak_lr, num_warmup_steps, warmup, warmup_start_lr)
    num_training_steps = _check_decay_length(num_warmup_steps, num_training_steps)
    min_lr = _check_floor(min_lr, peak_lr)
    # 1) warmup, 2) past the end: the floor, 3) in between: the cosine.
    if step < num_warmup_steps:
        return _ramp(step, peak_lr, num_warmup_steps, warmup, warmup_start_lr)
    if step >= num_training_steps - 1:
        return min_lr
    p = _progress(step, num_warmup_steps, num_training_steps - 1)
    return _mix(min_lr, peak_lr, (1.0 + math.cos(math.pi * p)) / 2.0)


def inverse_sqrt_schedule(
    step: int,
    *,
    peak_lr: float,
    num_warmup_steps: int,
    timescale: int | None = None,
    warmup: str = "linear",
    warmup_start_lr: float = 0.0,
) -> float:
    """Warm up, then decay as ``peak_lr * sqrt(timescale / (s - W + timescale))`` for ``s >= W``.

    The form of ``transformers.get_inverse_sqrt_schedule`` (from big_vision), with the same
    parameters: ``timescale`` defaults to ``num_warmup_steps``, or 10000 without warmup.
    ``lr(0) = warmup_start_lr`` (0; ``peak_lr`` if ``W = 0``), ``lr(W) = peak_lr``, then
    ``peak_lr / sqrt(2)`` at ``s = W + timescale``; it has no end and never reaches 0. With
    ``timescale = W`` this is ``peak_lr * sqrt(W / s)``, the Transformer's decay: see
    :func:`transformer_schedule`.
    """
    step = _check_step(step)
    peak_lr = _check_peak(peak_lr)
    num_warmup_steps = _check_warmup(peak_lr, num_warmup_steps, warmup, warmup_start_lr)
    if timescale is None:
        timescale = num_warmup_steps or 10_000
    timescale = _check_int("timescale", timescale, minimum=1)
    if step < num_warmup_steps:
        return _ramp(step, peak_lr, num_warmup_steps, warmup, warmup_start_lr)
    return peak_lr * math.sqrt(timescale / (step - num_warmup_steps + timescale))


def transformer_schedule(
    step: int, *, d_model: int, num_warmup_steps: int, scale: float = 1.0
) -> float:
    """The Transformer's rate: ``scale * d_model^-0.5 * min(n^-0.5, n * W^-1.5)``, ``n = s + 1``.

    Vaswani et al. (2017), eq. (3), number updates ``step_num = n = 1, 2, ...``; in this
    module's convention update ``n`` uses ``lr(n - 1)``, hence ``n = s + 1``. So
    ``lr(0) = scale * d_model^-0.5 * W^-1.5`` (not 0), the peak
    ``scale * (d_model * W)^-0.5`` is at ``s = W - 1`` (the paper's ``step_num = W``), and
    the rate falls as ``1 / sqrt(s + 1)`` after it, without end. It is
    ``inverse_sqrt_schedule`` with ``peak_lr = scale * (d_model * W)^-0.5`` and
    ``timescale = W``, one update earlier: ``transformer_schedule(s) == inverse_sqrt_schedule(s + 1)``.
    (The Annotated Transformer clamps its 0-based step to 1 instead, so its first two updates
    share ``lr(0)``.)
    """
    step = _check_step(step)
    d_model = _check_int("d_model", d_model, minimum=1)
    num_warmup_steps = _check_int("num_warmup_steps", num_warmup_steps, minimum=1)
    scale = _check_real("scale", scale, low=0.0, low_open=True)
    n = step + 1
    return scale * d_model**-0.5 * min(n**-0.5, n * num_warmup_steps**-1.5)


def step_decay_schedule(
    step: int,
    *,
    peak_lr: float,
    step_size: int,
    gamma: float = 0.1,
    num_warmup_steps: int = 0,
    warmup: str = "linear",
    warmup_start_lr: float = 0.0,
) -> float:
    """Warm up, then multiply the rate by ``gamma`` every ``step_size`` steps.

    ``lr(s) = peak_lr * gamma ** ((s - W) // step_size)`` for ``s >= W``: ``peak_lr`` from
    ``W`` to ``W + step_size - 1``, then ``gamma * peak_lr``, and so on without end. With no
    warmup it is ``torch.optim.lr_scheduler.StepLR(step_size, gamma)``, step for step.
    """
    step = _check_step(step)
    peak_lr = _check_peak(peak_lr)
    num_warmup_steps = _check_warmup(peak_lr, num_warmup_steps, warmup, warmup_start_lr)
    step_size = _check_int("step_size", step_size, minimum=1)
    gamma = _check_real("gamma", gamma, low=0.0, high=1.0, low_open=True)
    if step < num_warmup_steps:
        return _ramp(step, peak_lr, num_warmup_steps, warmup, warmup_start_lr)
    return peak_lr * gamma ** ((step - num_warmup_steps) // step_size)


def wsd_schedule(
    step: int,
    *,
    peak_lr: float,
    num_warmup_steps: int,
    num_training_steps: int,
    cooldown_fraction: float = 0.2,
    cooldown: str = "linear",
    min_lr: float = 0.0,
    warmup: str = "linear",
    warmup_start_lr: float = 0.0,
) -> float:
    """Warmup-stable-decay: warm up, hold ``peak_lr``, then cool down over the last steps.

    The cooldown is the last ``D = round(cooldown_fraction * T)`` updates (Python's
    ``round``: nearest integer, ties to even), ``s = T - D .. T - 1``; every one of them is
    below the peak and the last is ``min_lr``. ``D`` counts the updates below the peak, as
    ``W`` counts the warmup's and ``num_decay_steps`` the cooldown's in ``transformers``: a
    cooldown whose first update were still at the peak would lower only ``D - 1`` updates (and
    ``D = 1`` would be the same schedule as ``D = 2``). So the line leaves the peak at
    ``s = T - D - 1``: with ``p = (s - (T - D - 1)) / D`` its shape is ``1 - p`` (``"linear"``),
    ``(1 + cos(pi p)) / 2`` (``"cosine"``) or ``1 - sqrt(p)`` (``"1-sqrt"``, Hägele et al.
    2024), scaled between ``min_lr`` and ``peak_lr``. ``lr(0) = warmup_start_lr``,
    ``lr(s) = peak_lr`` for ``W <= s < T - D``, ``lr(T - 1) = min_lr`` and ``min_lr`` after
    the end; with ``cooldown_fraction = 0`` the rate stays at the peak. This is
    ``transformers.get_wsd_schedule(num_training_steps=T - 1, num_decay_steps=D,
    min_lr_ratio=min_lr / peak_lr)`` when ``warmup_start_lr = min_lr``.
    """
    step = _check_step(step)
    peak_lr = _check_peak(peak_lr)
    num_warmup_steps = _check_warmup(peak_lr, num_warmup_steps, warmup, warmup_start_lr)
    num_training_steps = _check_int("num_training_steps", num_training_steps, minimum=1)
    cooldown_fraction = _check_real("cooldown_fraction", cooldown_fraction, low=0.0, high=1.0)
    _check_choice("cooldown", cooldown, COOLDOWN_SHAPES)
    min_lr = _check_floor(min_lr, peak_lr)
    num_cooldown_steps = round(cooldown_fraction * num_training_steps)
    if num_warmup_steps + num_cooldown_steps > num_training_steps - 1:
        raise ValueError(
            f"Invalid num_warmup_steps: {num_warmup_steps} with cooldown_fraction "
            f"{cooldown_fraction!r} ({num_cooldown_steps} cooldown steps) and num_training_steps "
            f"{num_training_steps} (expected num_warmup_steps + cooldown steps <= "
            f"num_training_steps - 1 = {num_training_steps - 1}, so the peak is reached before "
            "the cooldown)"
        )
    step = min(step, num_training_steps - 1)  # past the end: stay where the run ended
    cooldown_start = num_training_steps - num_cooldown_steps
    if step < num_warmup_steps:
        return _ramp(step, peak_lr, num_warmup_steps, warmup, warmup_start_lr)
    if step < cooldown_start:
        return peak_lr
    p = _progress(step, cooldown_start - 1, num_training_steps - 1)
    if cooldown == "linear":
        shape = 1.0 - p
    elif cooldown == "cosine":
        shape = (1.0 + math.cos(math.pi * p)) / 2.0
    else:  # "1-sqrt"
        shape = 1.0 - math.sqrt(p)
    return _mix(min_lr, peak_lr, shape)


def one_cycle_schedule(
    step: int,
    *,
    peak_lr: float,
    num_training_steps: int,
    pct_start: float = 0.3,
    anneal: str = "cos",
    div_factor: float = 25.0,
    final_div_factor: float = 1e4,
    three_phase: bool = False,
) -> float:
    """The one-cycle policy, exactly as ``torch.optim.lr_scheduler.OneCycleLR`` computes it.

    Parameters keep torch's names (``peak_lr`` is ``max_lr``, ``num_training_steps`` is
    ``total_steps``, ``anneal`` is ``anneal_strategy``). The rate starts at
    ``initial = peak_lr / div_factor`` at step 0, rises to ``peak_lr`` at step
    ``pct_start * T - 1`` and anneals to ``initial / final_div_factor`` at ``T - 1``.
    With ``three_phase`` it comes back down to ``initial`` at ``2 * pct_start * T - 2``
    first. Each phase runs from its start value at its first step to its end value at its
    last, along half a cosine (``"cos"``) or a line. Past the end it stays at the final rate
    (where ``OneCycleLR`` raises).
    """
    step = _check_step(step)
    peak_lr = _check_peak(peak_lr)
    num_training_steps = _check_int("num_training_steps", num_training_steps, minimum=1)
    pct_start = _check_real("pct_start", pct_start, low=0.0, high=1.0)
    _check_choice("anneal", anneal, ONE_CYCLE_ANNEALS)
    div_factor = _check_real("div_factor", div_factor, low=1.0)
    final_div_factor = _check_real("final_div_factor", final_div_factor, low=1.0)
    if not isinstance(three_phase, bool):
        raise TypeError(f"three_phase must be a bool, got {type(three_phase).__name__}")
    total = num_training_steps
    initial_lr = peak_lr / div_factor
    final_lr = initial_lr / final_div_factor
    # (last step of the phase, rate at its start, rate at its end), as OneCycleLR's phases.
    if three_phase:
        phases = [
            (pct_start * total - 1, initial_lr, peak_lr),
            (2 * pct_start * total - 2, peak_lr, initial_lr),
            (total - 1, initial_lr, final_lr),
        ]
    else:
        phases = [(pct_start * total - 1, initial_lr, peak_lr), (total - 1, peak_lr, final_lr)]
    ends = [0.0] + [end for end, _, _ in phases]
    if any(later <= earlier for earlier, later in itertools.pairwise(ends)):
        bound = "(T + 1) / (2 T)" if three_phase else "1"
        raise ValueError(
            f"Invalid pct_start: {pct_start!r} with num_training_steps {total} (expected "
            f"1 / T < pct_start < {bound} with T = num_training_steps, so that every phase "
            "lasts at least one step)"
        )
    step = min(step, total - 1)  # past the end: stay at the final rate
    start = 0.0
    for index, (end, lr_from, lr_to) in enumerate(phases):
        if step <= end or index == len(phases) - 1:
            p = _progress(step, start, end)
            if anneal == "cos":
                return _mix(lr_to, lr_from, (1.0 + math.cos(math.pi * p)) / 2.0)
            return _mix(lr_from, lr_to, p)
        start = end
    raise AssertionError("unreachable: the last phase always returns")


def cosine_restarts_schedule(
    step: int,
    *,
    peak_lr: float,
    cycle_steps: int,
    cycle_mult: int = 1,
    min_lr: float = 0.0,
    num_warmup_steps: int = 0,
    warmup: str = "linear",
    warmup_start_lr: float = 0.0,
) -> float:
    """Warm up, then cosine cycles from ``peak_lr`` towards ``min_lr`` with restarts (SGDR).

    The first cycle lasts ``cycle_steps`` steps and each next one ``cycle_mult`` times longer.
    Within a cycle of length ``L`` at position ``t = 0 .. L - 1``,
    ``lr = min_lr + (peak_lr - min_lr) * (1 + cos(pi t / L)) / 2``: the first step of a cycle
    is ``peak_lr``, its last is just above ``min_lr``, and the next step restarts at the peak.
    ``lr(W) = peak_lr``; it has no end. With no warmup it is
    ``torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(T_0=cycle_steps,
    T_mult=cycle_mult, eta_min=min_lr)``, step for step.
    """
    step = _check_step(step)
    peak_lr = _check_peak(peak_lr)
    num_warmup_steps = _check_warmup(peak_lr, num_warmup_steps, warmup, warmup_start_lr)
    cycle_steps = _check_int("cycle_steps", cycle_steps, minimum=1)
    cycle_mult = _check_int("cycle_mult", cycle_mult, minimum=1)
    min_lr = _check_floor(min_lr, peak_lr)
    if step < num_warmup_steps:
        return _ramp(step, peak_lr, num_warmup_steps, warmup, warmup_start_lr)
    t, length = step - num_warmup_steps, cycle_steps
    if cycle_mult == 1:
        t %= length
    else:
        while t >= length:  # cycles grow geometrically: a few dozen iterations at most
            t, length = t - length, length * cycle_mult
    return _mix(min_lr, peak_lr, (1.0 + math.cos(math.pi * t / length)) / 2.0)


SCHEDULES: Mapping[str, Callable[..., float]] = {
    "constant": constant_schedule,
    "linear": linear_schedule,
    "cosine": cosine_schedule,
    "inverse_sqrt": inverse_sqrt_schedule,
    "transformer": transformer_schedule,
    "step_decay": step_decay_schedule,
    "wsd": wsd_schedule,
    "one_cycle": one_cycle_schedule,
    "cosine_restarts": cosine_restarts_schedule,
}
"""Every schedule of this module by name, for :func:`make_schedule`."""


def make_schedule(name: str, **hyperparameters: Any) -> Schedule:
    """``functools.partial(SCHEDULES[name], **hyperparameters)``, checked before it is returned.

    The schedule is evaluated once at step 0, so bad hyperparameters fail here, with the
    schedule's own ``ValueError``/``TypeError``, rather than in the middle of a run.
    """
    _check_choice("name", name, tuple(SCHEDULES))
    schedule = partial(SCHEDULES[name], **hyperparameters)
    schedule(0)
    return schedule


# --- driving a torch optimizer -----------------------------------------------------------


def as_lambda_lr(
    optimizer: torch.optim.Optimizer, schedule: Schedule | Sequence[Schedule]
) -> torch.optim.lr_scheduler.LambdaLR:
    """Drive ``optimizer`` by ``schedule`` through ``torch.optim.lr_scheduler.LambdaLR``.

    ``schedule`` is one schedule for every parameter group, or a list with one per group.
    Each group's base rate (``lr`` and ``initial_lr``) is set to 1.0, so LambdaLR's
    multiplier *is* the schedule and ``optimizer.param_groups[i]["lr"]`` equals
    ``schedule(s)`` exactly during update ``s + 1``. Call ``optimizer.step()`` then
    ``scheduler.step()`` once per update, as for any LambdaLR.

    The scheduler's ``state_dict`` holds the step count (and nothing of the schedule when it
    is a ``functools.partial``, so it loads with ``torch.load(weights_only=True)``). To
    resume: build the optimizer and ``as_lambda_lr(optimizer, schedule)`` afresh, then load
    both state dicts; the run continues with the same rates as if it had never stopped.

    The schedules are checked at step 0 before the optimizer is touched: a bad one raises and
    leaves the optimizer as it was.
    """
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(
            f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}"
        )
    groups = optimizer.param_groups
    if callable(schedule):
        schedules: list[Schedule] = [schedule]
        lr_lambda: Schedule | list[Schedule] = schedule
    elif isinstance(schedule, Sequence) and not isinstance(schedule, str):
        schedules = lr_lambda = list(schedule)
        if len(schedules) != len(groups):
            raise ValueError(
                f"Invalid schedule: {len(schedules)} schedules for {len(groups)} parameter "
                "groups (expected one schedule, or one per group)"
            )
    else:
        raise TypeError(
            f"schedule must be a callable or a list of callables, got {type(schedule).__name__}"
        )
    for index, each in enumerate(schedules):
        if not callable(each):
            raise TypeError(f"schedule {index} must be callable, got {type(each).__name__}")
        each(0)  # raises on bad hyperparameters before anything is changed
    for group in groups:
        if isinstance(group["lr"], torch.Tensor):
            group["lr"].fill_(1.0)
            group["initial_lr"] = group["lr"].clone()
        else:
            group["lr"] = 1.0
            group["initial_lr"] = 1.0
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda)


# --- plotting ------------------------------------------------------------------------------


def plot_schedules(
    schedules: Mapping[str, Schedule],
    num_steps: int,
    ax: Axes | None = None,
    log: bool = False,
    *,
    num_points: int | None = None,
) -> Axes:
    """Plot each schedule over steps ``0 .. num_steps - 1``, labelled by its name; return the axes.

    Every step is evaluated unless ``num_points`` asks for fewer, evenly spaced ones (the
    first and last step always included; a step decay's jumps then look slanted). With
    ``log=True`` the rate axis is logarithmic and rates of 0 are left out. When ``ax`` is
    None a new figure is made in the course's style (:func:`course_lib.plotting.subplots`).
    """
    num_steps = _check_int("num_steps", num_steps, minimum=1)
    if num_points is not None:
        num_points = _check_int("num_points", num_points, minimum=2)
    if not schedules:
        raise ValueError("Invalid schedules: empty (expected a dict of name -> schedule)")
    if num_points is None or num_points >= num_steps:
        steps = list(range(num_steps))
    else:
        steps = sorted({round(i * (num_steps - 1) / (num_points - 1)) for i in range(num_points)})
    if ax is None:
        from course_lib import plotting  # the course's figure style; imports pyplot

        _, ax = plotting.subplots()
    for name, schedule in schedules.items():
        if not callable(schedule):
            raise TypeError(f"schedule {name!r} must be callable, got {type(schedule).__name__}")
        rates = [schedule(s) for s in steps]
        if log:
            rates = [r if r > 0 else math.nan for r in rates]
        ax.plot(steps, rates, label=str(name))
    ax.set_xlabel("step")
    ax.set_ylabel("learning rate")
    if log:
        ax.set_yscale("log")
    ax.legend()
    return ax

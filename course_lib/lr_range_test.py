"""The learning-rate range test: sweep the rate up, watch the loss, pick a rate.

Leslie Smith's "LR range test" ("Cyclical Learning Rates for Training Neural Networks",
WACV 2017, arXiv:1506.01186) trains for a few epochs while the learning rate grows
*linearly* between two bounds, and reads the accuracy against the rate. fastai's ``lr_find``
(https://github.com/fastai/fastai/blob/master/fastai/callback/schedule.py) made it the
common tool in the form this module follows: the rate grows *exponentially* from tiny to huge
(by default 1e-7 to 10 in 100 minibatches), the smoothed training loss is recorded, and the
sweep stops once it exceeds four times its minimum. At first the rate is too small to change
anything; then the loss starts to fall, falls fastest, bottoms out, and finally blows up. The
curve shows, in one short run, the range of rates a model tolerates.

:func:`lr_range_test` runs it on any model and ``torch.optim`` optimizer:

- **The sweep** is exponential: update ``i = 0 .. num_steps - 1`` uses
  ``lr_i = start_lr * (end_lr / start_lr) ** (i / (num_steps - 1))``, the same rate for every
  parameter group, so equal numbers of steps cover each decade.
- **The loss is smoothed** by an exponential moving average with bias correction (as Adam
  corrects its moments): ``avg_i = smoothing * avg_{i-1} + (1 - smoothing) * loss_i``,
  ``smoothed_i = avg_i / (1 - smoothing ** (i + 1))``. ``smoothing = 0`` keeps the raw loss.
- **It stops on divergence**: when a loss is not finite, or when the smoothed loss exceeds
  ``diverge_threshold`` times the smallest smoothed loss seen so far. The rate of that step is
  ``RangeTestResult.divergence_lr``. A step whose loss is not finite is not recorded. The
  ratio test assumes a positive loss (squared error, cross-entropy); while the smallest
  smoothed loss is 0 or negative, only a non-finite loss stops the sweep.
- **It changes nothing**: the model's and the optimizer's ``state_dict`` (weights, buffers,
  Adam's moments and step counts, every group's hyperparameters) and the model's train/eval
  mode are copied before the sweep and loaded back after it, also when it fails or is
  interrupted. What it does consume is the ``batches`` iterator and the global random state
  (dropout, if any).

Two documented rules turn the curve into one suggested rate (``RangeTestResult.suggest``):

``"min/10"`` (the default)
    The rate at the smallest smoothed loss, divided by 10. At the minimum the rate is already
    so large that the loss is about to rise; a tenth of it is a rate that still trains fast
    and leaves room for noise (fastai's ``minimum`` suggestion, once called ``lr_min``; not a
    rule from Smith's papers).
``"steepest"``
    The rate where the smoothed loss falls fastest per decade of rate: the most negative
    slope ``d smoothed / d log10(lr)`` among the recorded steps before the minimum (the idea
    of fastai's ``lr_steep``). Each slope is a central difference over a window half a decade
    wide (``STEEPEST_WINDOW_DECADES``), cut off at the first step and at the minimum: over a
    single step, minibatch noise divided by the tiny change in ``log(lr)`` would swamp the
    trend. The first ``ceil(1 / (1 - smoothing))`` steps, where the moving average still
    rests on a few losses, are not candidates. It is still noisier than ``"min/10"``; if the
    loss never fell it is the first rate, ``start_lr``.

Both are starting points for a short tuning sweep, not replacements for one. Bad arguments
raise ``ValueError`` (or ``TypeError``) naming the argument and the allowed range.
"""

from __future__ import annotations

import copy
import math
import numbers
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from course_lib.train import progress_enabled

if TYPE_CHECKING:
    from matplotlib.axes import Axes

__all__ = ["RULES", "RangeTestResult", "lr_range_test", "sweep_rates"]

RULES = ("min/10", "steepest")
"""The rules :meth:`RangeTestResult.suggest` knows: see the module docstring."""

STEEPEST_WINDOW_DECADES = 0.5
"""The ``"steepest"`` rule measures slopes over windows this many decades of rate wide."""


def _check_real(
    name: str, value: object, *, low: float, high: float = math.inf, low_open: bool = True
) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__} {value!r}")
    x = float(value)
    above = x > low if low_open else x >= low
    if not (math.isfinite(x) and above and x < high):
        bound = f"{low:g} {'<' if low_open else '<='} {name}"
        if math.isfinite(high):
            bound += f" < {high:g}"
        raise ValueError(f"Invalid {name}: {value!r} (expected a finite value with {bound})")
    return x


def _check_rule(rule: object) -> str:
    if rule not in RULES:
        raise ValueError(f"Invalid rule: {rule!r} (expected one of {', '.join(map(repr, RULES))})")
    return str(rule)


def sweep_rates(start_lr: float, end_lr: float, num_steps: int) -> list[float]:
    """The rates of the sweep: ``start_lr * (end_lr / start_lr) ** (i / (num_steps - 1))``.

    ``num_steps`` rates, the first exactly ``start_lr`` and the last exactly ``end_lr``,
    equally spaced on a log scale.
    """
    start_lr = _check_real("start_lr", start_lr, low=0.0)
    end_lr = _check_real("end_lr", end_lr, low=0.0)
    if end_lr <= start_lr:
        raise ValueError(f"Invalid end_lr: {end_lr!r} (expected end_lr > start_lr = {start_lr!r})")
    if isinstance(num_steps, bool) or not isinstance(num_steps, numbers.Integral):
        raise TypeError(f"num_steps must be an integer, got {type(num_steps).__name__}")
    if num_steps < 2:
        raise ValueError(f"Invalid num_steps: {num_steps} (expected an integer >= 2)")
    ratio = end_lr / start_lr
    rates = [start_lr * ratio ** (i / (num_steps - 1)) for i in range(num_steps)]
    rates[-1] = end_lr
    return rates


@dataclass
class RangeTestResult:
    """What one range test recorded, step by step, and the rate it suggests.

    ``lrs[i]``, ``losses[i]`` and ``smoothed_losses[i]`` belong to update ``i`` of the sweep.
    ``diverged`` says whether the sweep stopped early, and ``divergence_lr`` is the rate of the
    step that stopped it (``None`` if the sweep reached ``end_lr``).
    """

    lrs: list[float] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    smoothed_losses: list[float] = field(default_factory=list)
    diverged: bool = False
    divergence_lr: float | None = None
    rule: str = "min/10"
    smoothing: float = 0.0

    @property
    def min_loss_lr(self) -> float:
        """The rate at which the smoothed loss was smallest."""
        if not self.smoothed_losses:
            raise ValueError("the range test recorded no step (the first loss was not finite)")
        best = min(range(len(self.smoothed_losses)), key=self.smoothed_losses.__getitem__)
        return self.lrs[best]

    @property
    def suggested_lr(self) -> float:
        """The rate :meth:`suggest` gives by this result's ``rule``."""
        return self.suggest(self.rule)

    def suggest(self, rule: str = "min/10") -> float:
        """The rate suggested by ``rule``: ``"min/10"`` or ``"steepest"`` (module docstring)."""
        rule = _check_rule(rule)
        if rule == "min/10":
            return self.min_loss_lr / 10.0
        smoothed, log_lrs = self.smoothed_losses, [math.log10(lr) for lr in self.lrs]
        end = min(range(len(smoothed)), key=smoothed.__getitem__)  # the minimum's index
        if end < 2:  # the loss never fell: no slope to speak of
            return self.lrs[0]
        # Differences over +-k steps spanning about half a decade: per-step differences
        # would divide minibatch noise by a tiny step in log(lr) and point anywhere.
        per_step = (log_lrs[-1] - log_lrs[0]) / (len(log_lrs) - 1)
        k = max(1, math.ceil(STEEPEST_WINDOW_DECADES / 2 / per_step))
        # The first ~1 / (1 - smoothing) smoothed values average only a few losses: skip them.
        first = min(end - 1, math.ceil(1.0 / (1.0 - self.smoothing)))
        slopes = {
            i: (smoothed[min(i + k, end)] - smoothed[max(i - k, 0)])
            / (log_lrs[min(i + k, end)] - log_lrs[max(i - k, 0)])
            for i in range(first, end)
        }
        return self.lrs[min(slopes, key=slopes.__getitem__)]

    def plot(self, ax: Axes | None = None, *, raw: bool = True) -> Axes:
        """Loss against rate (log rate axis): raw and smoothed, the suggestion, the blow-up."""
        if ax is None:
            from course_lib import plotting

            _, ax = plotting.subplots()
        if raw:
            ax.plot(self.lrs, self.losses, color="0.75", lw=1, label="loss")
        ax.plot(self.lrs, self.smoothed_losses, label="smoothed loss")
        ax.axvline(self.suggested_lr, color="C2", ls="--", label=f"suggested ({self.rule})")
        if self.divergence_lr is not None:
            ax.axvline(self.divergence_lr, color="C3", ls=":", label="stopped (diverged)")
        ax.set(xscale="log", xlabel="learning rate", ylabel="training loss")
        ax.legend()
        return ax


def _set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        if isinstance(group["lr"], Tensor):  # capturable / fused optimizers keep it as a tensor
            group["lr"].fill_(lr)
        else:
            group["lr"] = lr


def lr_range_test(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    batches: Iterator[tuple[Tensor, Tensor]],
    *,
    start_lr: float = 1e-7,
    end_lr: float = 10.0,
    num_steps: int = 100,
    smoothing: float = 0.9,
    diverge_threshold: float = 4.0,
    rule: str = "min/10",
    loss_fn: Callable[[Tensor, Tensor], Tensor] = nn.functional.mse_loss,
    device: torch.device | str | None = None,
    progress: bool | None = None,
) -> RangeTestResult:
    """Sweep the learning rate from ``start_lr`` to ``end_lr`` over ``num_steps`` updates.

    Each update takes the next ``(x, y)`` from ``batches`` (moved to ``device`` if given),
    sets every parameter group's rate to the sweep's, and minimises ``loss_fn(model(x), y)``
    with ``optimizer``. The sweep stops early when a loss is not finite or the smoothed loss
    exceeds ``diverge_threshold`` times its minimum so far. Afterwards (even after an error or
    a ``KeyboardInterrupt``) the model and the optimizer are exactly as they were before.
    Returns a :class:`RangeTestResult` whose ``suggested_lr`` follows ``rule``.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(
            f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}"
        )
    rates = sweep_rates(start_lr, end_lr, num_steps)
    smoothing = _check_real("smoothing", smoothing, low=0.0, high=1.0, low_open=False)
    diverge_threshold = _check_real("diverge_threshold", diverge_threshold, low=1.0)
    rule = _check_rule(rule)
    if progress is None:
        progress = progress_enabled()

    saved_model = copy.deepcopy(model.state_dict())  # state_dict() holds live references
    saved_optimizer = copy.deepcopy(optimizer.state_dict())
    was_training = model.training
    result = RangeTestResult(rule=rule, smoothing=smoothing)
    average, best = 0.0, math.inf
    try:
        model.train()
        with tqdm(total=num_steps, desc="lr range test", disable=not progress, leave=False) as bar:
            for i, lr in enumerate(rates):
                x, y = next(batches)
                if device is not None:
                    x, y = x.to(device), y.to(device)
                _set_lr(optimizer, lr)
                optimizer.zero_grad(set_to_none=True)
                loss = loss_fn(model(x), y)
                value = loss.item()
                if not math.isfinite(value):
                    result.diverged, result.divergence_lr = True, lr
                    break
                loss.backward()
                optimizer.step()
                # 1) record, 2) smooth with bias correction, 3) stop if it blew up.
                average = smoothing * average + (1.0 - smoothing) * value
                smoothed = average / (1.0 - smoothing ** (i + 1))
                result.lrs.append(lr)
                result.losses.append(value)
                result.smoothed_losses.append(smoothed)
                bar.update()
                if best > 0 and smoothed > diverge_threshold * best:
                    result.diverged, result.divergence_lr = True, lr
                    break
                best = min(best, smoothed)
    finally:
        model.load_state_dict(saved_model)
        optimizer.load_state_dict(saved_optimizer)
        optimizer.zero_grad(set_to_none=True)
        model.train(was_training)
    return result

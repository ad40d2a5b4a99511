"""The gradient noise scale and the critical batch size (McCandlish et al. 2018).

Write ``G`` for the true gradient (the mean over all examples) and ``Sigma`` for the
covariance of one example's gradient. A minibatch of ``B`` examples gives an unbiased
estimate of ``G`` whose squared norm has expectation

    E |G_B|^2 = |G|^2 + tr(Sigma) / B.

The **simple noise scale** ``B_simple = tr(Sigma) / |G|^2`` is the batch size at which the
noise term equals the signal term. Below it each step is noise-dominated and doubling the batch
nearly halves the number of steps; far above it the gradient is nearly exact and a larger
batch buys almost nothing. McCandlish et al. found that the *critical batch size*, where the
trade-off between steps and examples turns, is close to ``B_simple``. In their model the
steps ``S`` and examples ``E = B * S`` to reach a given loss satisfy

    S = S_min * (1 + B_crit / B),    E = E_min * (1 + B / B_crit),

with ``B_crit = E_min / S_min``; eliminating ``B`` gives their trade-off
``(S / S_min - 1) (E / E_min - 1) = 1``. :func:`fit_critical_batch` fits it to measured steps,
:func:`fit_critical_batch_over_seeds` adds bootstrap intervals over seeds.

Two ways to measure ``B_simple``:

- :func:`per_example_gradients` + :func:`simple_noise_scale`: the gradient of every example
  separately (``torch.func.vmap`` over ``torch.func.grad``), then the sample mean and the
  unbiased sample variance. Exact but costs memory proportional to the batch.
- :func:`two_batch_noise_scale`: only the squared norms of gradients averaged over two batch
  sizes ``b_small < b_big``, solved for ``|G|^2`` and ``tr(Sigma)`` from the equation above.
  Data-parallel training gets both for free: each worker's gradient (``b_small``) and the
  all-reduced one (``b_big``).

Both quantities are invariant to multiplying the loss by a constant; ``B_simple`` changes
along training (McCandlish et al. saw it grow as the loss falls).
:func:`noise_scale_along_training` trains a model and measures ``B_simple`` from per-example
gradients on fixed probe examples at chosen steps.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap
from tqdm.auto import tqdm

from course_lib.seeds import bootstrap_interval
from course_lib.train import progress_enabled

__all__ = [
    "CriticalBatchFit",
    "CriticalBatchInterval",
    "NoiseScale",
    "NoiseScaleTrace",
    "critical_batch_steps",
    "fit_critical_batch",
    "fit_critical_batch_over_seeds",
    "gradient_sq_norm",
    "noise_scale_along_training",
    "per_example_gradients",
    "simple_noise_scale",
    "two_batch_noise_scale",
]


@dataclass(frozen=True)
class NoiseScale:
    """An estimate of ``|G|^2``, ``tr(Sigma)`` and their ratio ``B_simple``."""

    grad_sq_norm: float
    trace_cov: float

    def expected_sq_norm(self, batch_size: float) -> float:
        """``E |G_B|^2 = |G|^2 + tr(Sigma) / B``, the mean squared norm of a batch-B gradient.

        It falls with the batch towards ``|G|^2``: a larger batch gives a more exact gradient,
        not a bigger one. (For batches drawn with replacement; without replacement from ``N``
        examples the noise term is multiplied by ``(N - B) / (N - 1)``.)
        """
        if isinstance(batch_size, bool) or not batch_size > 0:
            raise ValueError(f"Invalid batch_size: {batch_size!r} (expected a positive number)")
        return self.grad_sq_norm + self.trace_cov / batch_size

    @property
    def b_simple(self) -> float:
        """``tr(Sigma) / |G|^2``; ``inf`` when the estimate of ``|G|^2`` is not positive."""
        if self.grad_sq_norm <= 0:
            return math.inf
        return self.trace_cov / self.grad_sq_norm


def per_example_gradients(
    model: nn.Module,
    loss_fn: Callable[[Tensor, Tensor], Tensor],
    x: Tensor,
    y: Tensor,
    *,
    chunk_size: int | None = None,
) -> Tensor:
    """The gradient of ``loss_fn`` at each example, flattened: a ``[len(x), num_params]`` tensor.

    ``loss_fn(prediction, target)`` is applied to one example at a time (with a batch
    dimension of 1, so ``nn.functional.mse_loss`` works unchanged). Buffers are used as they
    are; models whose output for one example depends on the others (batch norm in training
    mode) have no per-example gradient and are not supported.
    """
    if len(x) != len(y):
        raise ValueError(f"Invalid x/y: lengths {len(x)} and {len(y)} differ")
    if len(x) < 1:
        raise ValueError("Invalid x: expected at least one example")
    params = {name: p.detach() for name, p in model.named_parameters() if p.requires_grad}
    buffers = {name: b.detach() for name, b in model.named_buffers()}

    def loss_of_one(parameters: dict[str, Tensor], xi: Tensor, yi: Tensor) -> Tensor:
        prediction = functional_call(model, (parameters, buffers), (xi[None],))
        return loss_fn(prediction, yi[None])

    grads = vmap(grad(loss_of_one), in_dims=(None, 0, 0), chunk_size=chunk_size)(params, x, y)
    return torch.cat([g.reshape(len(x), -1) for g in grads.values()], dim=1)


def simple_noise_scale(per_example: Tensor) -> NoiseScale:
    """Unbiased estimates of ``|G|^2`` and ``tr(Sigma)`` from per-example gradients ``[n, P]``.

    ``tr(Sigma)`` is the sum over coordinates of the sample variance (divided by ``n - 1``);
    ``|G|^2`` is the squared norm of the mean gradient minus its expected excess
    ``tr(Sigma) / n``. Computed in float64.
    """
    if per_example.ndim != 2 or per_example.shape[0] < 2:
        raise ValueError(
            f"Invalid per_example: shape {tuple(per_example.shape)} "
            "(expected [n, num_params] with n >= 2)"
        )
    g = per_example.double()
    n = g.shape[0]
    mean = g.mean(dim=0)
    trace_cov = ((g - mean) ** 2).sum().item() / (n - 1)
    grad_sq_norm = mean.square().sum().item() - trace_cov / n
    return NoiseScale(grad_sq_norm=grad_sq_norm, trace_cov=trace_cov)


def two_batch_noise_scale(
    small_sq_norm: float | Sequence[float] | Tensor,
    big_sq_norm: float | Sequence[float] | Tensor,
    *,
    b_small: int,
    b_big: int,
) -> NoiseScale:
    """McCandlish et al.'s estimator from gradient norms at two batch sizes (their appendix A).

    ``small_sq_norm`` and ``big_sq_norm`` are ``|G_B|^2`` measured on minibatches of
    ``b_small`` and ``b_big`` examples (one value or many, which are averaged first: the ratio
    of averages is far less biased than the average of ratios). Solving
    ``E |G_B|^2 = |G|^2 + tr(Sigma) / B`` at both sizes gives::

        |G|^2     = (b_big |G_big|^2 - b_small |G_small|^2) / (b_big - b_small)
        tr(Sigma) = (|G_small|^2 - |G_big|^2) / (1 / b_small - 1 / b_big)
    """
    for name, value in (("b_small", b_small), ("b_big", b_big)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"Invalid {name}: {value!r} (expected a positive int)")
    if not b_small < b_big:
        raise ValueError(f"Invalid b_small/b_big: {b_small}, {b_big} (expected b_small < b_big)")
    small = torch.as_tensor(small_sq_norm, dtype=torch.float64).mean().item()
    big = torch.as_tensor(big_sq_norm, dtype=torch.float64).mean().item()
    grad_sq_norm = (b_big * big - b_small * small) / (b_big - b_small)
    trace_cov = (small - big) / (1.0 / b_small - 1.0 / b_big)
    return NoiseScale(grad_sq_norm=grad_sq_norm, trace_cov=trace_cov)


def gradient_sq_norm(
    model: nn.Module, loss_fn: Callable[[Tensor, Tensor], Tensor], x: Tensor, y: Tensor
) -> float:
    """``|G_B|^2``: the squared norm of the mean-loss gradient on the batch ``(x, y)``.

    Leaves the model's ``.grad`` untouched.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    grads = torch.autograd.grad(loss_fn(model(x), y), params)
    return sum(g.double().square().sum().item() for g in grads)


@dataclass(frozen=True)
class NoiseScaleTrace:
    """``B_simple`` measured at several steps of one run, on the same probe examples.

    ``noise[i]`` is the estimate after ``steps[i]`` optimizer steps (step 0: the initial
    weights), ``losses[i]`` the mean loss on the probe examples there, and ``evaluations[i]``
    whatever ``evaluate`` returned (empty without it).
    """

    steps: tuple[int, ...]
    losses: tuple[float, ...]
    noise: tuple[NoiseScale, ...]
    evaluations: tuple[float, ...] = ()

    @property
    def b_simple(self) -> np.ndarray:
        return np.array([n.b_simple for n in self.noise])

    def growth(self) -> float:
        """``B_simple`` at the last measurement over ``B_simple`` at the first."""
        return float(self.b_simple[-1] / self.b_simple[0])


def noise_scale_along_training(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    batches: Iterator[tuple[Tensor, Tensor]],
    checkpoints: Sequence[int],
    x_probe: Tensor,
    y_probe: Tensor,
    *,
    loss_fn: Callable[[Tensor, Tensor], Tensor] = nn.functional.mse_loss,
    evaluate: Callable[[nn.Module], float] | None = None,
    chunk_size: int | None = None,
    desc: str | None = None,
) -> NoiseScaleTrace:
    """Train on ``batches`` and measure ``B_simple`` after each number of steps in ``checkpoints``.

    At each checkpoint the per-example gradients of ``loss_fn`` on ``(x_probe, y_probe)`` give
    ``|G|^2`` and ``tr(Sigma)`` (:func:`simple_noise_scale`); the probe is the same at every
    checkpoint, so the estimates differ only because the weights moved. Takes exactly
    ``checkpoints[-1]`` optimizer steps. Raises ``ValueError`` for checkpoints that are not
    increasing integers >= 0, and ``RuntimeError`` if the training loss stops being finite.
    """
    steps = list(checkpoints)
    integers = all(isinstance(s, numbers.Integral) and not isinstance(s, bool) for s in steps)
    if not steps or not integers or steps[0] < 0 or np.any(np.diff(steps) <= 0):
        raise ValueError(
            f"Invalid checkpoints: {steps!r} (expected strictly increasing integers >= 0)"
        )
    steps = [int(s) for s in steps]
    losses, noise, evaluations = [], [], []
    step = 0
    with tqdm(total=steps[-1], desc=desc, disable=not progress_enabled(), leave=False) as bar:
        for checkpoint in steps:
            while step < checkpoint:
                x, y = next(batches)
                optimizer.zero_grad(set_to_none=True)
                loss = loss_fn(model(x), y)
                if not torch.isfinite(loss):
                    raise RuntimeError(f"the training loss is {loss.item()} at step {step + 1}")
                loss.backward()
                optimizer.step()
                step += 1
                bar.update()
            with torch.no_grad():
                losses.append(loss_fn(model(x_probe), y_probe).item())
            per_example = per_example_gradients(
                model, loss_fn, x_probe, y_probe, chunk_size=chunk_size
            )
            noise.append(simple_noise_scale(per_example))
            if evaluate is not None:
                evaluations.append(float(evaluate(model)))
    return NoiseScaleTrace(tuple(steps), tuple(losses), tuple(noise), tuple(evaluations))


def critical_batch_steps(batch_size: float | Tensor, *, s_min: float, b_crit: float):
    """McCandlish et al.'s steps to a target loss: ``S_min * (1 + B_crit / B)``."""
    return s_min * (1 + b_crit / batch_size)


class CriticalBatchFit(NamedTuple):
    """``S = S_min (1 + B_crit / B)``; unpacks as ``(s_min, b_crit)``."""

    s_min: float
    b_crit: float

    @property
    def e_min(self) -> float:
        """The fewest examples: ``E_min = S_min * B_crit``, approached as ``B -> 0``."""
        return self.s_min * self.b_crit

    def steps(self, batch_size):
        return critical_batch_steps(batch_size, s_min=self.s_min, b_crit=self.b_crit)

    def examples(self, batch_size):
        """``E = B * S = E_min (1 + B / B_crit)``."""
        return batch_size * self.steps(batch_size)


def fit_critical_batch(batch_sizes: Sequence[float], steps: Sequence[float]) -> CriticalBatchFit:
    """Fit ``S = S_min (1 + B_crit / B)`` to measured steps; returns ``(S_min, B_crit)``.

    The model is linear in ``1 / B`` (``S = a + b / B`` with ``S_min = a``,
    ``B_crit = b / a``, ``E_min = b``); the least squares weigh each point by ``1 / S`` so
    that every batch size counts by its relative error, not by how many steps it took.
    """
    b = np.asarray(batch_sizes, dtype=float)
    s = np.asarray(steps, dtype=float)
    if b.ndim != 1 or b.shape != s.shape or len(b) < 2:
        raise ValueError(
            f"Invalid batch_sizes/steps: shapes {b.shape} and {s.shape} "
            "(expected two equal 1-d sequences of at least 2 values)"
        )
    if np.any(b <= 0) or np.any(s <= 0) or not np.all(np.isfinite(s)):
        raise ValueError("Invalid batch_sizes/steps: expected positive, finite values")
    design = np.stack([np.ones_like(b), 1 / b], 1) / s[:, None]
    (a, slope), *_ = np.linalg.lstsq(design, np.ones_like(s), rcond=None)
    if a <= 0:
        raise ValueError(
            "Invalid batch_sizes/steps: the fit gives S_min <= 0; the steps do not level off "
            "with batch size over this range (every batch size is below the critical one)"
        )
    if slope <= 0:
        raise ValueError(
            "Invalid batch_sizes/steps: the fit gives B_crit <= 0; the steps do not fall with "
            "batch size over this range (every batch size is above the critical one)"
        )
    return CriticalBatchFit(float(a), float(slope / a))


@dataclass(frozen=True)
class CriticalBatchInterval:
    """A :class:`CriticalBatchFit` with bootstrap intervals over seeds, ``(low, high)`` each."""

    fit: CriticalBatchFit
    steps: tuple[float, ...]  # the steps fitted, one per batch size
    s_min: tuple[float, float]
    e_min: tuple[float, float]
    b_crit: tuple[float, float]
    level: float


def fit_critical_batch_over_seeds(
    batch_sizes: Sequence[float],
    steps: np.ndarray | Sequence,
    *,
    level: float = 0.95,
    resamples: int = 2000,
    seed: int = 0,
) -> CriticalBatchInterval:
    """Fit the critical batch to steps measured over seeds, with bootstrap intervals.

    ``steps[i, j, s]`` is the steps to the target at ``batch_sizes[i]``, learning rate ``j``
    of that batch size's candidates, seed ``s`` (``inf`` if it never got there); a 2-d
    ``steps[i, s]`` means one learning rate. Each batch size's steps are the mean over seeds
    at its best learning rate (the fewest mean steps: each batch size gets its own tuned rate,
    as in McCandlish et al.); a learning rate where any seed failed does not count. The
    intervals resample seeds, the same at every batch size, and redo the whole fit.
    """
    steps = np.asarray(steps, dtype=float)
    if steps.ndim == 2:
        steps = steps[:, None, :]
    if steps.ndim != 3 or len(steps) != len(batch_sizes) or steps.shape[2] < 2:
        raise ValueError(
            f"Invalid steps: shape {steps.shape} (expected [batch sizes ({len(batch_sizes)}), "
            "learning rates, seeds >= 2])"
        )

    def tuned(picks: np.ndarray) -> np.ndarray:
        chosen = steps[:, :, picks.astype(int)]
        means = np.where(np.isfinite(chosen).all(axis=2), chosen.mean(axis=2), np.inf)
        return means.min(axis=1)

    every = tuned(np.arange(steps.shape[2]))
    failed = [b for b, s in zip(batch_sizes, every, strict=True) if not np.isfinite(s)]
    if failed:
        raise ValueError(
            f"Invalid steps: at batch sizes {failed} no learning rate reached the target "
            "at every seed"
        )
    fit = fit_critical_batch(batch_sizes, every)

    def statistic(picks: np.ndarray) -> np.ndarray:
        resampled = fit_critical_batch(batch_sizes, tuned(picks))
        return np.array([resampled.s_min, resampled.e_min, resampled.b_crit])

    low, high = bootstrap_interval(
        np.arange(steps.shape[2]), statistic, level=level, resamples=resamples, seed=seed
    )
    return CriticalBatchInterval(
        fit=fit,
        steps=tuple(float(s) for s in every),
        s_min=(float(low[0]), float(high[0])),
        e_min=(float(low[1]), float(high[1])),
        b_crit=(float(low[2]), float(high[2])),
        level=level,
    )

"""Weight-decay experiments: a grid of runs trained at once, and the valley of its optimum.

Tuning weight decay means training the same model at many (learning rate, weight decay)
pairs. The runs are small and independent, so :func:`train_mlp_grid` trains all of them in
one program: every tensor of the :class:`~course_lib.models.MLP` gets a leading axis, one
entry per run, and each run gets its own learning rate and weight decay. Run ``n`` is, to
rounding, what ``torch.optim.Adam`` (L2, ``decoupled=False``) or ``torch.optim.AdamW``
(``decoupled=True``) on :func:`course_lib.param_groups.param_groups` would give, with the
learning rate driven by a schedule (the tests compare them in float64).

:func:`log_optimum` and :func:`valley_slope` then read the grid: the best weight decay of
each learning rate, between grid points, and the slope of ``log(best decay)`` against
``log(learning rate)``. A slope of 0 means the best decay does not depend on the learning
rate (the two can be tuned separately); a slope of -1 means the product ``lr * wd`` is what
stays put. :func:`extend_until_interior` grows the decay axis until every learning rate's
optimum lies inside it.

:func:`ema_timescale` and :func:`weight_decay_for_timescale` are Wang & Aitchison's
(ICML 2025; arXiv 2024) reading of AdamW's decay as an exponential moving average of the
updates, with timescale ``1 / (lr * weight_decay)`` updates.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from course_lib._checks import check_positive_int
from course_lib.data import minibatches
from course_lib.models import MLP
from course_lib.sweeps import EdgeOptimum, interior_best, log_vertex, mean_score
from course_lib.train import progress_enabled

__all__ = [
    "Valley",
    "ema_timescale",
    "extend_until_interior",
    "log_optimum",
    "train_mlp_grid",
    "valley_slope",
    "weight_decay_for_timescale",
]


# --- the EMA timescale ---------------------------------------------------------------------


def _check_positive(name: str, value: object, *, allow_zero: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        expected = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"Invalid {name}: {value} (expected a finite number {expected})")
    return value


def ema_timescale(lr: float, weight_decay: float, *, steps_per_epoch: float | None = None) -> float:
    """AdamW's averaging timescale ``tau = 1 / (lr * weight_decay)``, in updates or epochs.

    Each AdamW step multiplies the weights by ``1 - lr * wd`` and adds an update, so the
    weights are an exponential moving average of past updates that forgets with that factor:
    its timescale is ``1 / (lr * wd)`` updates (Wang & Aitchison, their ``tau_iter``;
    the exact e-folding time is ``-1 / log(1 - lr * wd)``, the same to first order). With
    ``steps_per_epoch`` (the dataset size over the batch size) the timescale is returned in
    epochs, their ``tau_epoch``. ``weight_decay = 0`` never forgets: the timescale is
    infinite. ``lr`` and ``wd`` are PyTorch's (the decay per step is ``lr * wd``).
    """
    lr = _check_positive("lr", lr)
    weight_decay = _check_positive("weight_decay", weight_decay, allow_zero=True)
    if steps_per_epoch is not None:
        steps_per_epoch = _check_positive("steps_per_epoch", steps_per_epoch)
    if weight_decay == 0:
        return math.inf
    tau = 1.0 / (lr * weight_decay)
    return tau if steps_per_epoch is None else tau / steps_per_epoch


def weight_decay_for_timescale(
    lr: float, tau: float, *, steps_per_epoch: float | None = None
) -> float:
    """The ``weight_decay`` that gives timescale ``tau`` at learning rate ``lr``.

    The inverse of :func:`ema_timescale`: ``wd = 1 / (lr * tau)`` with ``tau`` in updates, or
    in epochs when ``steps_per_epoch`` is given (``tau_iter = tau * steps_per_epoch``).
    Keeping ``tau`` in epochs fixed while the dataset grows ``k`` times (at the same batch
    size and learning rate) divides the weight decay by ``k``.
    """
    lr = _check_positive("lr", lr)
    tau = _check_positive("tau", tau)
    if steps_per_epoch is not None:
        tau *= _check_positive("steps_per_epoch", steps_per_epoch)
    return 1.0 / (lr * tau)


# --- a grid of MLPs trained at once --------------------------------------------------------


def _per_run(name: str, values: object, runs: int) -> list:
    """``values`` as a list with one entry per run; a single number is repeated."""
    if isinstance(values, (bool, int, float, np.generic)):
        return [values] * runs
    try:
        if isinstance(values, (str, bytes)):
            raise TypeError
        values = list(values)  # type: ignore[call-overload]
    except TypeError:
        raise TypeError(
            f"{name} must be a number or a sequence with one entry per run, "
            f"got {type(values).__name__}"
        ) from None
    if len(values) != runs:
        raise ValueError(f"{name} has {len(values)} entries for {runs} runs (one per run)")
    return values


def train_mlp_grid(
    x_train: Tensor,
    y_train: Tensor,
    x_test: Tensor,
    y_test: Tensor,
    *,
    lrs: Sequence[float],
    weight_decays: Sequence[float] | float,
    decoupled: Sequence[bool] | bool,
    num_steps: int,
    batch_size: int,
    hidden: int = 64,
    depth: int = 2,
    schedule: Callable[[int], float] | None = None,
    seed: int = 0,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    progress: bool | None = None,
    desc: str | None = None,
) -> Tensor:
    """Train one MLP per entry of ``lrs`` at once; return each run's held-out MSE.

    Run ``n`` trains ``MLP(in_dim, out_dim, hidden=hidden, depth=depth)`` for ``num_steps``
    updates of Adam with learning rate ``lrs[n] * schedule(step)`` (``schedule`` maps the
    step, from 0, to a multiplier; default constant 1) and weight decay ``weight_decays[n]``
    on the weight matrices only (biases are not decayed, as :func:`param_groups` does):
    decoupled as in ``torch.optim.AdamW`` (``weights *= 1 - lr_t * wd``) where
    ``decoupled[n]`` is true, an L2 term ``wd * weights`` added to the gradient as in
    ``torch.optim.Adam(weight_decay=wd)`` where it is false.

    Every run starts from the same weights, those of the MLP built after
    ``torch.manual_seed(seed)``, and sees the same minibatches, drawn by
    :func:`course_lib.data.minibatches` with a generator seeded with ``seed``: the runs
    differ only by their hyperparameters. Returns a tensor of shape ``(len(lrs),)``: the
    mean squared error on ``(x_test, y_test)`` after the last update, ``inf`` for a run
    whose loss stopped being finite.
    """
    check_positive_int("num_steps", num_steps)
    check_positive_int("batch_size", batch_size)
    if x_train.ndim != 2 or y_train.ndim != 2 or x_test.ndim != 2 or y_test.ndim != 2:
        raise ValueError("x_train, y_train, x_test and y_test must be 2-d (examples, features)")
    if isinstance(lrs, (str, bytes)) or not hasattr(lrs, "__iter__"):
        raise TypeError(f"lrs must be a sequence with one learning rate per run, got {lrs!r}")
    lrs = [float(v) for v in lrs]
    runs = len(lrs)
    if runs == 0:
        raise ValueError("lrs is empty: give one learning rate per run")
    wds = [float(v) for v in _per_run("weight_decays", weight_decays, runs)]
    flags = _per_run("decoupled", decoupled, runs)
    for name, values in (("lrs", lrs), ("weight_decays", wds)):
        for value in values:
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"Invalid {name} entry: {value} (expected a finite number >= 0)")
    if not all(isinstance(flag, (bool, np.bool_)) for flag in flags):
        raise TypeError("decoupled must be a bool or a sequence of bools")
    beta1, beta2 = betas
    if not (0 <= beta1 < 1 and 0 <= beta2 < 1):
        raise ValueError(f"Invalid betas: {betas} (expected 0 <= beta < 1)")
    schedule = schedule or (lambda step: 1.0)

    device, dtype = x_train.device, x_train.dtype
    torch.manual_seed(seed)
    template = MLP(x_train.shape[1], y_train.shape[1], hidden=hidden, depth=depth)
    template = template.to(device=device, dtype=dtype)
    # layers[k] = (weight [runs, out, in], bias [runs, out]), every run a copy of the template.
    layers = [
        tuple(
            p.detach().unsqueeze(0).repeat(runs, *([1] * p.ndim)).requires_grad_(True)
            for p in (module.weight, module.bias)
        )
        for module in template
        if isinstance(module, torch.nn.Linear)
    ]
    params = [p for layer in layers for p in layer]
    exp_avgs = [torch.zeros_like(p) for p in params]
    exp_avg_sqs = [torch.zeros_like(p) for p in params]
    lr_base = torch.tensor(lrs, device=device, dtype=dtype)
    wd = torch.tensor(wds, device=device, dtype=dtype)
    is_decoupled = torch.tensor([bool(f) for f in flags], device=device)
    l2 = torch.where(is_decoupled, torch.zeros_like(wd), wd)
    decay = torch.where(is_decoupled, wd, torch.zeros_like(wd))
    diverged = torch.zeros(runs, dtype=torch.bool, device=device)

    def forward(x: Tensor) -> Tensor:
        h = x.expand(runs, *x.shape)
        for index, (weight, bias) in enumerate(layers):
            h = torch.baddbmm(bias.unsqueeze(1), h, weight.transpose(1, 2))
            if index < len(layers) - 1:
                h = torch.tanh(h)
        return h  # [runs, examples, out]

    batches = minibatches(
        x_train, y_train, batch_size, generator=torch.Generator().manual_seed(seed)
    )
    if progress is None:
        progress = progress_enabled()
    for step in tqdm(range(num_steps), desc=desc, disable=not progress, leave=False):
        x, y = next(batches)
        losses = ((forward(x) - y) ** 2).mean(dim=(1, 2))
        diverged |= ~torch.isfinite(losses)
        for p in params:
            p.grad = None
        losses.sum().backward()
        t = step + 1
        lr = lr_base * float(schedule(step))
        bias_correction1 = 1 - beta1**t
        bias_correction2_sqrt = (1 - beta2**t) ** 0.5
        with torch.no_grad():
            for p, m, v in zip(params, exp_avgs, exp_avg_sqs, strict=True):
                shape = (runs,) + (1,) * (p.ndim - 1)
                grad = p.grad
                if p.ndim == 3:  # a weight matrix: decayed; biases never are
                    grad = grad + l2.view(shape) * p
                    p.mul_(1 - (lr * decay).view(shape))
                m.lerp_(grad, 1 - beta1)
                v.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                denom = (v.sqrt() / bias_correction2_sqrt).add_(eps)
                p.sub_((lr / bias_correction1).view(shape) * (m / denom))
    with torch.no_grad():
        held_out = ((forward(x_test) - y_test) ** 2).mean(dim=(1, 2))
    held_out[diverged | ~torch.isfinite(held_out)] = math.inf
    return held_out.detach()


# --- reading the grid ----------------------------------------------------------------------


def _check_grid(grid: Sequence[float]) -> np.ndarray:
    grid = np.asarray(grid, dtype=float)
    if grid.ndim != 1 or len(grid) < 3:
        raise ValueError(f"the grid needs at least 3 points, got {grid.tolist()}")
    if not np.all(grid > 0) or not np.all(np.diff(grid) > 0):
        raise ValueError(f"the grid must be positive and increasing: {grid.tolist()}")
    return grid


def log_optimum(grid: Sequence[float], values: Sequence[float]) -> float:
    """The minimiser of ``values`` over ``grid``, between grid points, on a log axis.

    Fits a parabola in ``log(grid)`` through the smallest value and its two neighbours (the
    three points nearest the edge when the smallest is on it) and returns its vertex,
    clipped to the grid's range. Non-finite values (diverged runs) count as worse than any
    finite one. A grid of equal values (or a parabola that opens downwards) gives the grid
    point of the smallest value.
    """
    grid = _check_grid(grid)
    values = np.asarray(values, dtype=float)
    if values.shape != grid.shape:
        raise ValueError(f"{len(grid)} grid points but values of shape {values.shape}")
    finite = np.where(np.isfinite(values), values, np.inf)
    if np.all(np.isinf(finite)):
        raise ValueError("every value is infinite or NaN: no run trained")
    return log_vertex(grid, finite, int(np.argmin(finite)))


@dataclass(frozen=True)
class Valley:
    """The best decay of each learning rate, and the slope of the line through them."""

    lrs: np.ndarray
    optima: np.ndarray  # the best decay at each learning rate (log_optimum)
    slope: float  # d log(optimum) / d log(lr), least squares
    intercept: float  # log10(optimum) at lr = 1

    def line(self, lrs: Sequence[float]) -> np.ndarray:
        """The fitted optimum at ``lrs``: ``10**intercept * lrs**slope``."""
        return 10**self.intercept * np.asarray(lrs, dtype=float) ** self.slope


def valley_slope(lrs: Sequence[float], decays: Sequence[float], losses: np.ndarray) -> Valley:
    """Fit ``log10(best decay) = intercept + slope * log10(lr)`` across the learning rates.

    ``losses[i, j]`` is the loss at ``decays[i]`` and ``lrs[j]`` (a mean over seeds, say);
    the best decay of each learning rate is :func:`log_optimum` of its column. In the same
    runs written as ``lambda = lr * wd`` (the paper's decay) the slope is this one plus 1.
    """
    lrs = np.asarray(lrs, dtype=float)
    losses = np.asarray(losses, dtype=float)
    if lrs.ndim != 1 or len(lrs) < 2 or np.any(lrs <= 0):
        raise ValueError(f"need at least 2 positive learning rates, got {lrs.tolist()}")
    if losses.shape != (len(decays), len(lrs)):
        raise ValueError(
            f"losses has shape {losses.shape}, expected (len(decays), len(lrs)) = "
            f"({len(decays)}, {len(lrs)})"
        )
    optima = np.array([log_optimum(decays, losses[:, j]) for j in range(len(lrs))])
    slope, intercept = np.polyfit(np.log10(lrs), np.log10(optima), 1)
    return Valley(lrs, optima, float(slope), float(intercept))


def extend_until_interior(
    run_rows: Callable[[list[float]], np.ndarray],
    decays: Sequence[float],
    *,
    factor: float,
    losses: np.ndarray | None = None,
    max_extensions: int = 4,
) -> tuple[list[float], np.ndarray, list[int]]:
    """Run a (decay x learning rate) grid and extend the decay axis until optima are interior.

    ``run_rows(decays)`` returns losses of shape ``(seeds, len(decays), learning rates)``;
    ``losses``, if given, are those of the increasing ``decays`` already run.
    For each learning rate the seed-mean loss must be lowest strictly inside the decay axis
    (:func:`course_lib.sweeps.interior_best`); while one is lowest on an edge, one more row
    is run beyond that edge (the last decay times ``factor``, or the first divided by it),
    at most ``max_extensions`` times. Returns the decays (increasing), the losses, and the
    learning-rate columns whose optimum is still on an edge (empty when all are interior).
    """
    if not factor > 1:
        raise ValueError(f"factor must be greater than 1, got {factor}")
    if list(decays) != sorted(decays):
        raise ValueError(f"decays must increase: {list(decays)}")
    decays = [float(d) for d in decays]
    losses = np.asarray(run_rows(decays) if losses is None else losses, dtype=float)
    if losses.ndim != 3 or losses.shape[1] != len(decays):
        raise ValueError(f"losses have shape {losses.shape}; expected (seeds, {len(decays)}, lrs)")

    def edges() -> list[tuple[int, str]]:
        found = []
        for j in range(losses.shape[2]):
            scores = [mean_score(row) for row in losses[:, :, j].T]
            try:
                interior_best(decays, scores)
            except EdgeOptimum as edge:
                found.append((j, edge.side))
        return found

    for _ in range(max_extensions):
        sides = {side for _, side in edges()}
        if not sides:
            break
        for side in sorted(sides):
            new = decays[0] / factor if side == "low" else decays[-1] * factor
            row = np.asarray(run_rows([new]), dtype=float)
            if side == "low":
                decays.insert(0, new)
                losses = np.concatenate([row, losses], axis=1)
            else:
                decays.append(new)
                losses = np.concatenate([losses, row], axis=1)
    return decays, losses, [j for j, _ in edges()]

"""What to do to the learning rate, the betas, epsilon and the warmup when the batch grows.

Write ``kappa = new batch size / old batch size``. Two rules answer the question:

**The linear rule** (Goyal et al. 2017, for SGD): multiply the learning rate by ``kappa`` and
keep everything else. One step of batch ``kappa * B`` then moves the weights about as far as
``kappa`` steps of batch ``B`` did, as long as the gradient changes little over those steps.

**The square-root rule** (Malladi et al. 2022, for Adam and RMSprop): multiply the learning
rate by ``sqrt(kappa)``, scale ``1 - beta`` by ``kappa`` (``beta -> 1 - kappa * (1 - beta)``)
and divide ``eps`` by ``sqrt(kappa)``. Adam's step is about ``lr`` per coordinate whatever
the gradient's size, and averaging ``kappa`` times more examples shrinks the gradient noise by
``sqrt(kappa)``; the rule keeps the *stochastic differential equation* that approximates Adam
unchanged. The moving averages must forget ``kappa`` times faster per step because each step
now covers ``kappa`` times more examples. It stops making sense when ``kappa * (1 - beta1)``
reaches 1 (``beta1`` would be 0 or negative, see :func:`sqrt_rule_max_kappa`) and, like the
linear rule, when the batch outgrows the gradient noise scale (the critical batch size of
:mod:`course_lib.noise_scale`): past it, the gradient is no longer noise-dominated and a
larger batch buys little.

**Warmup.** Both rules are statements about training per *example* seen: a run with ``kappa``
times the batch takes ``kappa`` times fewer steps over the same data, so a warmup kept equal
in examples (samples, tokens, epochs) becomes ``W / kappa`` steps. The three sources agree
once each rule is applied in full:

- Goyal et al. 2017 (linear rule, SGD) ramp the rate over 5 *epochs* at every batch size:
  fixed examples, ``kappa`` times fewer steps.
- Malladi et al. 2022 (square-root rule, Adam): one step of the scaled run stands for
  ``kappa`` steps of the old one on the time axis of their SDE (step ``k`` sits at time
  ``k * lr**2``, and ``lr**2`` grew by ``kappa``), so a schedule that follows the SDE's time,
  warmup included, lasts ``W / kappa`` steps: fixed examples.
- Ma & Yarats 2021: the untuned warmup for Adam is ``2 / (1 - beta2)`` steps
  (:func:`untuned_warmup_steps`, 2000 for ``beta2 = 0.999``). It counts *steps* of the
  second-moment average, so it follows ``beta2``: with ``beta2`` kept (the linear rule, or a
  practitioner who keeps Adam's defaults) it stays ``W`` steps; with the square-root rule's
  ``beta2 -> 1 - kappa (1 - beta2)`` it becomes ``W / kappa`` steps, the same examples again.

:class:`ScaledHyperparameters` reports the warmup in examples, the step count for those who
keep steps, and Ma & Yarats' untuned count for the new ``beta2``.

**The half-life rule for beta2** (Marek et al. 2025): a moving average with coefficient
``beta`` weighs the gradient of ``k`` steps ago by ``beta**k``, so its weight halves after
``ln 2 / -ln(beta)`` steps, ``batch_size`` times as many examples
(:func:`beta_half_life_examples`). Keeping that half-life fixed in examples when the batch
changes from ``B`` to ``B'`` gives ``beta2' = beta2 ** (B' / B)`` (:func:`beta2_for_batch`).
With ``kappa = B' / B`` and ``1 - beta2 = d``, ``beta2**kappa = 1 - kappa d +
kappa (kappa - 1) d**2 / 2 + ...``: to first order in ``d`` it is the square-root rule's
``1 - kappa d`` (:func:`sqrt_rule_beta`), and the two part where ``kappa d`` is no longer
small. For ``kappa >= 1`` the difference lies between 0 and ``(kappa d)**2 / 2``; the linear
form reaches 0 at ``kappa d = 1`` and is refused beyond, while the power form stays in
``(0, 1)`` for every ``kappa``.

**LARS** (You et al. 2017) gives each layer the local rate ``eta * |w| / (|grad L| + beta |w|)``
with a trust coefficient ``eta`` and the weight decay ``beta`` (:func:`lars_local_lr`).

Bad arguments raise ``ValueError`` naming the argument and the allowed range.
"""

from __future__ import annotations

import math
import numbers
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from course_lib.seeds import bootstrap_interval
from course_lib.sweeps import (
    EdgeOptimum,
    interior_best,
    log_vertex,
    mean_score,
    sweep_until_interior,
)

__all__ = [
    "RULES",
    "ExponentFit",
    "LRSweep",
    "ScaledHyperparameters",
    "batch_ratio",
    "best_lr",
    "beta2_for_batch",
    "beta_half_life_examples",
    "compare_with_rules",
    "fit_lr_exponent",
    "fit_power_law",
    "lars_local_lr",
    "linear_rule",
    "scale_hyperparameters",
    "separates_rules",
    "sqrt_rule",
    "sqrt_rule_beta",
    "sqrt_rule_max_kappa",
    "sweep_lr",
    "untuned_warmup_steps",
    "warmup_samples",
    "warmup_steps_for_samples",
]

RULES = ("linear", "sqrt")
"""Names accepted by :func:`scale_hyperparameters`."""


# --- validation ---------------------------------------------------------------------------


def _check_real(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__} {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"Invalid {name}: {value} (expected a finite number)")
    return value


def _check_positive(name: str, value: object) -> float:
    value = _check_real(name, value)
    if value <= 0:
        raise ValueError(f"Invalid {name}: {value} (expected {name} > 0)")
    return value


def _check_kappa(kappa: object) -> float:
    return _check_positive("kappa", kappa)


def _check_batch_size(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {type(value).__name__} {value!r}")
    if value < 1:
        raise ValueError(f"Invalid {name}: {value} (expected an integer >= 1)")
    return int(value)


def _check_beta(name: str, value: object) -> float:
    value = _check_real(name, value)
    if not 0.0 <= value < 1.0:
        raise ValueError(f"Invalid {name}: {value} (expected 0 <= {name} < 1)")
    return value


def _check_warmup_steps(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"warmup_steps must be an integer, got {type(value).__name__} {value!r}")
    if value < 0:
        raise ValueError(f"Invalid warmup_steps: {value} (expected an integer >= 0)")
    return int(value)


# --- the pieces -----------------------------------------------------------------------------


def batch_ratio(base_batch_size: int, batch_size: int) -> float:
    """``kappa = batch_size / base_batch_size``, the factor the rules scale by."""
    base = _check_batch_size("base_batch_size", base_batch_size)
    new = _check_batch_size("batch_size", batch_size)
    return new / base


def sqrt_rule_beta(beta: float, kappa: float, *, name: str = "beta") -> float:
    """The square-root rule's ``1 - kappa * (1 - beta)``: the average forgets kappa times faster.

    A moving average with coefficient ``beta`` remembers about ``1 / (1 - beta)`` steps; the
    scaled one remembers ``kappa`` times fewer steps, which hold the same number of examples.
    Raises ``ValueError`` when the result would leave ``[0, 1)``, that is when
    ``kappa >= 1 / (1 - beta)`` would ask for a memory shorter than one step.
    """
    beta = _check_beta(name, beta)
    kappa = _check_kappa(kappa)
    scaled = 1.0 - kappa * (1.0 - beta)
    # Zero up to the rounding of this computation means zero: 1 - 10 * (1 - 0.9) is 2.2e-16
    # in floating point. The error of 1 - kappa * (1 - beta) is a few ulps of kappa * (1 -
    # beta) ~ kappa (the representation error of beta scaled by kappa, and two roundings),
    # so anything within 4 * kappa * eps of 0 is 0, and a genuinely small beta (1e-12 with
    # kappa = 1) is kept.
    if abs(scaled) <= 4.0 * kappa * sys.float_info.epsilon:
        scaled = 0.0
    if not 0.0 <= scaled < 1.0:
        raise ValueError(
            f"Invalid kappa: {kappa:g} scales {name}={beta:g} to 1 - {kappa:g} * (1 - {beta:g}) = "
            f"{scaled:g}, outside [0, 1); the square-root rule needs "
            f"kappa <= 1 / (1 - {name}) = {1.0 / (1.0 - beta):g}"
        )
    return scaled


def sqrt_rule_max_kappa(betas: Sequence[float] = (0.9, 0.999)) -> float:
    """The largest ``kappa`` the square-root rule accepts for ``betas``: ``1 / (1 - beta1)``.

    With Adam's default ``beta1 = 0.9`` that is 10: scaling the batch more than tenfold would
    ask for a first moment that remembers less than one step. (``beta2 = 0.999`` would allow
    1000.)
    """
    if len(betas) != 2:
        raise ValueError(f"Invalid betas: {betas!r} (expected two values, beta1 and beta2)")
    beta1 = _check_beta("betas[0]", betas[0])
    beta2 = _check_beta("betas[1]", betas[1])
    return 1.0 / (1.0 - min(beta1, beta2))


def untuned_warmup_steps(beta2: float) -> int:
    """Ma & Yarats' (2021) untuned linear warmup for Adam: ``2 / (1 - beta2)`` steps, rounded.

    2000 steps for ``beta2 = 0.999``, 20 for ``beta2 = 0.9``. The count is in *steps* of the
    second-moment average, whose memory is ``1 / (1 - beta2)`` steps: scaling ``beta2`` by the
    square-root rule (``1 - kappa (1 - beta2)``) divides it by ``kappa``.
    """
    beta2 = _check_beta("beta2", beta2)
    return round(2.0 / (1.0 - beta2))


def warmup_samples(warmup_steps: int, batch_size: int) -> int:
    """The number of examples a warmup of ``warmup_steps`` at ``batch_size`` spans."""
    return _check_warmup_steps(warmup_steps) * _check_batch_size("batch_size", batch_size)


def warmup_steps_for_samples(num_samples: int, batch_size: int) -> int:
    """Steps at ``batch_size`` that cover ``num_samples`` examples, rounded to the nearest step.

    A non-zero warmup never rounds down to zero steps.
    """
    if isinstance(num_samples, bool) or not isinstance(num_samples, numbers.Integral):
        raise TypeError(
            f"num_samples must be an integer, got {type(num_samples).__name__} {num_samples!r}"
        )
    if num_samples < 0:
        raise ValueError(f"Invalid num_samples: {num_samples} (expected an integer >= 0)")
    batch_size = _check_batch_size("batch_size", batch_size)
    if num_samples == 0:
        return 0
    return max(1, round(num_samples / batch_size))


def beta_half_life_examples(beta: float, batch_size: int) -> float:
    """The half-life of a moving average with coefficient ``beta``, counted in examples.

    Adam's average ``v_t = beta v_{t-1} + (1 - beta) g_t**2`` weighs the gradient of ``k``
    steps ago by ``(1 - beta) beta**k``: the weight halves every ``ln 2 / -ln(beta)`` steps,
    each of ``batch_size`` examples. ``beta = 0`` (no averaging) has half-life 0. Marek et al.
    (2025) count the same half-life in tokens (examples times sequence length).
    """
    beta = _check_beta("beta", beta)
    batch_size = _check_batch_size("batch_size", batch_size)
    if beta == 0.0:
        return 0.0
    return batch_size * math.log(2.0) / -math.log(beta)


def beta2_for_batch(beta2: float, batch_size: int, new_batch_size: int) -> float:
    """``beta2 ** (new_batch_size / batch_size)``: the same half-life in examples at the new batch.

    Marek et al.'s (2025) rule for Adam's second moment: a batch ``kappa`` times larger takes
    ``kappa`` times fewer steps over the same examples, so each step must forget as much as
    ``kappa`` old steps did. To first order in ``1 - beta2`` this is the square-root rule's
    ``1 - kappa (1 - beta2)`` (:func:`sqrt_rule_beta`); unlike it, it stays in ``[0, 1)`` at
    any ``kappa``. Raises ``ValueError`` when the result rounds to 1 in floating point (a
    half-life too long for a float64 ``beta2``).
    """
    beta2 = _check_beta("beta2", beta2)
    kappa = _check_batch_size("new_batch_size", new_batch_size) / _check_batch_size(
        "batch_size", batch_size
    )
    scaled = beta2**kappa
    if scaled >= 1.0:
        raise ValueError(
            f"Invalid beta2/batch sizes: beta2={beta2!r} ** ({new_batch_size} / {batch_size}) "
            "rounds to 1 in float64; Adam needs beta2 < 1 (use a smaller beta2 or a smaller "
            "change of batch size)"
        )
    return scaled


# --- the rules ------------------------------------------------------------------------------


@dataclass(frozen=True)
class ScaledHyperparameters:
    """Adam's hyperparameters for a new batch size, as one rule prescribes them.

    ``warmup_steps`` keeps the warmup equal in examples (the rules' own reading);
    ``warmup_steps_same_steps`` is the count for those who keep it equal in steps;
    ``warmup_samples`` is the number of examples both before and after;
    ``untuned_warmup_steps`` is Ma & Yarats' ``2 / (1 - beta2)`` for the *new* ``beta2``
    (:func:`untuned_warmup_steps`): under the square-root rule it falls by ``kappa`` with
    ``1 - beta2``, under the linear rule (``beta2`` kept) it does not change.
    """

    rule: str
    kappa: float
    batch_size: int
    lr: float
    betas: tuple[float, float]
    eps: float
    warmup_steps: int
    warmup_steps_same_steps: int
    warmup_samples: int
    untuned_warmup_steps: int

    def summary(self) -> str:
        """One line for a table: batch, lr, betas, eps and both warmup counts."""
        return (
            f"{self.rule:>6} rule, batch {self.batch_size}: lr {self.lr:.3g}, "
            f"betas ({self.betas[0]:.4g}, {self.betas[1]:.4g}), eps {self.eps:.3g}, "
            f"warmup {self.warmup_steps} steps ({self.warmup_samples:,} samples) "
            f"or {self.warmup_steps_same_steps} steps if counted in steps; untuned "
            f"2 / (1 - beta2) = {self.untuned_warmup_steps} steps"
        )


def linear_rule(
    *,
    base_batch_size: int,
    batch_size: int,
    lr: float,
    betas: Sequence[float] = (0.9, 0.999),
    eps: float = 1e-8,
    warmup_steps: int = 0,
) -> ScaledHyperparameters:
    """Goyal et al.'s rule: ``lr * kappa``; betas, eps unchanged; warmup equal in examples."""
    return _scale("linear", base_batch_size, batch_size, lr, betas, eps, warmup_steps)


def sqrt_rule(
    *,
    base_batch_size: int,
    batch_size: int,
    lr: float,
    betas: Sequence[float] = (0.9, 0.999),
    eps: float = 1e-8,
    warmup_steps: int = 0,
) -> ScaledHyperparameters:
    """Malladi et al.'s rule for Adam: ``lr * sqrt(kappa)``, ``1 - beta`` times ``kappa``,
    ``eps / sqrt(kappa)``; warmup equal in examples.

    Raises ``ValueError`` when ``kappa > 1 / (1 - beta1)`` (see :func:`sqrt_rule_beta`).
    """
    return _scale("sqrt", base_batch_size, batch_size, lr, betas, eps, warmup_steps)


def scale_hyperparameters(rule: str, **kwargs) -> ScaledHyperparameters:
    """:func:`linear_rule` or :func:`sqrt_rule` by name (``"linear"`` or ``"sqrt"``)."""
    if rule not in RULES:
        raise ValueError(f"Invalid rule: {rule!r} (expected one of {', '.join(RULES)})")
    return (linear_rule if rule == "linear" else sqrt_rule)(**kwargs)


def _scale(
    rule: str,
    base_batch_size: int,
    batch_size: int,
    lr: float,
    betas: Sequence[float],
    eps: float,
    warmup_steps: int,
) -> ScaledHyperparameters:
    kappa = batch_ratio(base_batch_size, batch_size)
    lr = _check_positive("lr", lr)
    eps = _check_real("eps", eps)
    if eps < 0:
        raise ValueError(f"Invalid eps: {eps} (expected eps >= 0)")
    if len(betas) != 2:
        raise ValueError(f"Invalid betas: {betas!r} (expected two values, beta1 and beta2)")
    beta1 = _check_beta("betas[0]", betas[0])
    beta2 = _check_beta("betas[1]", betas[1])
    warmup_steps = _check_warmup_steps(warmup_steps)
    samples = warmup_samples(warmup_steps, base_batch_size)

    if rule == "linear":
        new_lr, new_betas, new_eps = lr * kappa, (beta1, beta2), eps
    else:
        root = math.sqrt(kappa)
        new_lr = lr * root
        new_betas = (
            sqrt_rule_beta(beta1, kappa, name="betas[0]"),
            sqrt_rule_beta(beta2, kappa, name="betas[1]"),
        )
        new_eps = eps / root
    return ScaledHyperparameters(
        rule=rule,
        kappa=kappa,
        batch_size=batch_size,
        lr=new_lr,
        betas=new_betas,
        eps=new_eps,
        warmup_steps=warmup_steps_for_samples(samples, batch_size),
        warmup_steps_same_steps=warmup_steps,
        warmup_samples=samples,
        untuned_warmup_steps=untuned_warmup_steps(new_betas[1]),
    )


# --- LARS -----------------------------------------------------------------------------------


def lars_local_lr(
    weight: torch.Tensor,
    grad: torch.Tensor,
    *,
    trust_coefficient: float = 0.001,
    weight_decay: float = 0.0,
) -> float:
    """LARS's local learning rate of one layer (You et al. 2017, eq. 6).

    ``trust_coefficient * |w| / (|grad L(w)| + weight_decay * |w|)``: the trust coefficient
    ``eta`` times the ratio of the weights' norm to the norm of the update direction
    ``grad L + weight_decay * w`` (bounded by it, by the triangle inequality). The global
    learning rate multiplies it. A layer whose weights or gradient are all zero gets 1, as in
    common implementations, since the ratio is then undefined or 0.
    """
    trust_coefficient = _check_positive("trust_coefficient", trust_coefficient)
    weight_decay = _check_real("weight_decay", weight_decay)
    if weight_decay < 0:
        raise ValueError(f"Invalid weight_decay: {weight_decay} (expected weight_decay >= 0)")
    if weight.shape != grad.shape:
        raise ValueError(
            f"Invalid weight/grad: shapes {tuple(weight.shape)} and {tuple(grad.shape)} differ"
        )
    w_norm = float(weight.detach().double().norm())
    g_norm = float(grad.detach().double().norm())
    denominator = g_norm + weight_decay * w_norm
    if w_norm == 0.0 or denominator == 0.0:
        return 1.0
    return trust_coefficient * w_norm / denominator


# --- reading sweeps -------------------------------------------------------------------------


def best_lr(lrs: Sequence[float], losses: Sequence) -> float:
    """The learning rate of a sweep's lowest (mean) loss, refined between grid points.

    ``losses[i]`` is the loss at ``lrs[i]``: one number, or one per seed (their mean is used;
    a point where any seed diverged, ``inf``/``nan``, counts as infinitely bad). A minimum on
    either end of the grid is refused with :class:`~course_lib.sweeps.EdgeOptimum` (a
    ``ValueError`` whose message and ``side`` say which end to extend): it is only a bound.
    Inside the grid, a parabola in ``log lr`` through the lowest mean loss and its two
    neighbours places the minimum between grid points; when a neighbour diverged, the grid
    point itself is returned. ``lrs`` must be positive and increasing.
    """
    lr = np.asarray(lrs, dtype=float)
    if lr.ndim != 1 or len(lr) != len(losses):
        raise ValueError(
            f"Invalid lrs/losses: {np.size(lr)} learning rates and {len(losses)} losses "
            "(expected one loss, or one array of seeds, per learning rate)"
        )
    if len(lr) < 3:
        raise ValueError(f"Invalid lrs: an interior best needs at least 3 points, got {len(lr)}")
    if np.any(lr <= 0) or np.any(np.diff(lr) <= 0):
        raise ValueError("Invalid lrs: expected positive, strictly increasing learning rates")
    means = np.array([mean_score(loss) for loss in losses])
    if np.all(np.isinf(means)):
        raise ValueError("Invalid losses: every run diverged, there is no best learning rate")
    return log_vertex(lr, means, interior_best(lr, means))


@dataclass(frozen=True)
class LRSweep:
    """A learning-rate sweep at one batch size: ``losses[i, s]`` at ``lrs[i]`` and seed ``s``."""

    lrs: np.ndarray
    losses: np.ndarray

    @property
    def num_seeds(self) -> int:
        return self.losses.shape[1]

    def best(self, seeds: Sequence[int] | None = None) -> float:
        """:func:`best_lr` of the mean over ``seeds`` (indices, repeats allowed; all by default)."""
        losses = self.losses if seeds is None else self.losses[:, np.asarray(seeds, dtype=int)]
        return best_lr(self.lrs, list(losses))


def sweep_lr(
    evaluate: Callable[[float], float | Sequence[float]],
    grid: Sequence[float],
    *,
    factor: float = 2.0,
    max_extensions: int = 6,
    desc: str | None = None,
) -> LRSweep:
    """Sweep the learning rate until the optimum is inside the grid, for the mean and every seed.

    ``evaluate(lr)`` returns the loss of each seed (an array, the same seeds at every ``lr``).
    :func:`~course_lib.sweeps.sweep_until_interior` extends ``grid`` by ``factor`` until the
    mean's minimum is interior; then the grid is extended further on any side where one seed's
    own minimum still sits, so that a bootstrap over seeds (:func:`fit_lr_exponent`) does not
    meet an edge optimum in a resample. Raises ``EdgeOptimum`` after ``max_extensions``.
    """
    lrs, values = sweep_until_interior(
        evaluate, grid, factor=factor, max_extensions=max_extensions, desc=desc
    )
    values = [np.atleast_1d(np.asarray(v, dtype=float)) for v in values]
    for extension in range(max_extensions + 1):
        losses = np.stack(values)
        sides = set()
        for seed in range(losses.shape[1]):
            try:
                interior_best(lrs, [mean_score(loss) for loss in losses[:, seed]])
            except EdgeOptimum as edge:
                sides.add(edge.side)
        if not sides:
            return LRSweep(np.array(lrs), losses)
        if extension == max_extensions:
            break
        if "low" in sides:
            lrs.insert(0, lrs[0] / factor)
            values.insert(0, np.atleast_1d(np.asarray(evaluate(lrs[0]), dtype=float)))
        if "high" in sides:
            lrs.append(lrs[-1] * factor)
            values.append(np.atleast_1d(np.asarray(evaluate(lrs[-1]), dtype=float)))
    raise EdgeOptimum(
        f"a seed's best learning rate is still on the {'/'.join(sorted(sides))} edge of "
        f"{[f'{v:.3g}' for v in lrs]} after {max_extensions} extensions",
        sorted(sides)[0],
    )


def fit_power_law(x: Sequence[float], y: Sequence[float]) -> tuple[float, float]:
    """Least-squares fit of ``y = c * x**p`` in log-log space; returns ``(p, c)``.

    The exponent ``p`` of best learning rate against batch size is 1 under the linear rule
    and 1/2 under the square-root rule.
    """
    xs = np.asarray(x, dtype=float)
    ys = np.asarray(y, dtype=float)
    if xs.ndim != 1 or xs.shape != ys.shape or len(xs) < 2:
        raise ValueError(
            f"Invalid x/y: shapes {xs.shape} and {ys.shape} "
            "(expected two equal 1-d sequences of at least 2 values)"
        )
    if np.any(xs <= 0) or np.any(ys <= 0) or not np.all(np.isfinite(ys)):
        raise ValueError("Invalid x/y: a power law needs positive, finite values")
    if np.all(xs == xs[0]):
        raise ValueError("Invalid x: all values are equal, the exponent is undetermined")
    p, log_c = np.polyfit(np.log(xs), np.log(ys), 1)
    return float(p), float(np.exp(log_c))


@dataclass(frozen=True)
class ExponentFit:
    """``best lr = prefactor * B**exponent``, with a bootstrap interval of the exponent."""

    batch_sizes: tuple[int, ...]
    best_lrs: tuple[float, ...]
    exponent: float
    prefactor: float
    low: float
    high: float
    level: float

    def lr(self, batch_size: float) -> float:
        """The fitted best learning rate at ``batch_size``."""
        return self.prefactor * batch_size**self.exponent


def fit_lr_exponent(
    batch_sizes: Sequence[int],
    sweeps: Sequence[LRSweep],
    *,
    level: float = 0.95,
    resamples: int = 2000,
    seed: int = 0,
) -> ExponentFit:
    """Fit ``best lr ~ B**alpha`` over sweeps at several batch sizes, with a bootstrap interval.

    The point estimate uses the mean loss over all seeds at each batch size. The interval
    resamples *seeds* (the same resampled seeds at every batch size, since seed ``s`` shares
    its initial weights and data order across batch sizes), takes each batch size's
    :func:`best_lr` of the resampled mean and refits the exponent: a percentile interval at
    ``level`` (:func:`course_lib.seeds.bootstrap_interval`).
    """
    if len(batch_sizes) != len(sweeps) or len(sweeps) < 2:
        raise ValueError(
            f"Invalid batch_sizes/sweeps: {len(batch_sizes)} batch sizes and {len(sweeps)} "
            "sweeps (expected one sweep per batch size, at least 2)"
        )
    seeds = {sweep.num_seeds for sweep in sweeps}
    if len(seeds) != 1:
        raise ValueError(f"Invalid sweeps: they ran different numbers of seeds {sorted(seeds)}")
    best = [sweep.best() for sweep in sweeps]
    exponent, prefactor = fit_power_law(batch_sizes, best)

    def exponent_of(picks: np.ndarray) -> float:
        try:
            return fit_power_law(batch_sizes, [sweep.best(picks) for sweep in sweeps])[0]
        except EdgeOptimum as edge:
            raise EdgeOptimum(
                f"a bootstrap resample of seeds {picks.astype(int).tolist()} puts the best "
                f"learning rate on an edge ({edge}): extend the sweep",
                edge.side,
            ) from None

    low, high = bootstrap_interval(
        np.arange(seeds.pop()), exponent_of, level=level, resamples=resamples, seed=seed
    )
    return ExponentFit(
        batch_sizes=tuple(int(b) for b in batch_sizes),
        best_lrs=tuple(best),
        exponent=exponent,
        prefactor=prefactor,
        low=float(low),
        high=float(high),
        level=level,
    )


def separates_rules(low: float, high: float) -> bool:
    """Whether the interval ``[low, high]`` leaves out 1/2 or 1 (so it tells the rules apart)."""
    return not (low <= 0.5 and high >= 1.0)


def compare_with_rules(low: float, high: float) -> str:
    """What an interval of the exponent says about the square-root (1/2) and linear (1) rules."""
    if not low <= high:
        raise ValueError(f"Invalid interval: low {low} > high {high}")
    has_half, has_one = low <= 0.5 <= high, low <= 1.0 <= high
    if has_half and has_one:
        return (
            "contains both 1/2 and 1, so it cannot tell the square-root rule from the linear rule"
        )
    if has_half:
        return (
            "contains 1/2 and excludes 1: it agrees with the square-root rule, not the linear rule"
        )
    if has_one:
        return (
            "contains 1 and excludes 1/2: it agrees with the linear rule, not the square-root rule"
        )
    if high < 0.5:
        return "lies below 1/2: the best rate grows more slowly than either rule says"
    if low > 1.0:
        return "lies above 1: the best rate grows faster than either rule says"
    return "lies between 1/2 and 1 and excludes both: neither rule's exponent fits"

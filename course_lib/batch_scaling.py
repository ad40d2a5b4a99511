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
times the batch takes ``kappa`` times fewer steps over the same data. Kept equal in examples
(samples, tokens, epochs), a warmup of ``W`` steps becomes ``W / kappa`` steps. Goyal et al.
did exactly this (5 epochs at every batch size). Arguments tied to the *step* count instead,
such as Adam's second-moment estimate needing about ``2 / (1 - beta2)`` updates (Ma & Yarats
2021), keep ``W`` steps when ``beta2`` is kept, and give ``W / kappa`` steps when ``beta2`` is
scaled by the square-root rule. :class:`ScaledHyperparameters` reports both counts.

Bad arguments raise ``ValueError`` naming the argument and the allowed range.
"""

from __future__ import annotations

import math
import numbers
import sys
from collections.abc import Sequence
from dataclasses import dataclass

import torch

__all__ = [
    "RULES",
    "ScaledHyperparameters",
    "batch_ratio",
    "best_lr",
    "fit_power_law",
    "linear_rule",
    "scale_hyperparameters",
    "sqrt_rule",
    "sqrt_rule_beta",
    "sqrt_rule_max_kappa",
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


# --- the rules ------------------------------------------------------------------------------


@dataclass(frozen=True)
class ScaledHyperparameters:
    """Adam's hyperparameters for a new batch size, as one rule prescribes them.

    ``warmup_steps`` keeps the warmup equal in examples (the rules' own reading);
    ``warmup_steps_same_steps`` is the count for those who keep it equal in steps;
    ``warmup_samples`` is the number of examples both before and after.
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

    def summary(self) -> str:
        """One line for a table: batch, lr, betas, eps and both warmup counts."""
        return (
            f"{self.rule:>6} rule, batch {self.batch_size}: lr {self.lr:.3g}, "
            f"betas ({self.betas[0]:.4g}, {self.betas[1]:.4g}), eps {self.eps:.3g}, "
            f"warmup {self.warmup_steps} steps ({self.warmup_samples:,} samples) "
            f"or {self.warmup_steps_same_steps} steps if counted in steps"
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
    )


# --- reading sweeps -------------------------------------------------------------------------


def best_lr(lrs: Sequence[float], losses: Sequence[float]) -> float:
    """The learning rate of a sweep's lowest loss, refined between grid points.

    A parabola through the lowest loss and its two neighbours (in ``log lr`` and
    ``log loss``) locates the minimum between grid points; at either end of the grid, or
    when the parabola opens downwards, the grid point itself is returned. Diverged runs
    (``inf``/``nan`` losses) count as infinitely bad. ``lrs`` must be increasing.
    """
    lr = torch.as_tensor(lrs, dtype=torch.float64)
    loss = torch.as_tensor(losses, dtype=torch.float64)
    if lr.ndim != 1 or len(lr) != len(loss) or len(lr) == 0:
        raise ValueError(
            f"Invalid lrs/losses: lengths {len(lr)} and {len(loss)} (expected equal, >= 1)"
        )
    if (lr <= 0).any() or (len(lr) > 1 and (lr.diff() <= 0).any()):
        raise ValueError("Invalid lrs: expected positive, strictly increasing learning rates")
    loss = torch.where(torch.isfinite(loss) & (loss > 0), loss, torch.tensor(math.inf))
    if torch.isinf(loss).all():
        raise ValueError("Invalid losses: every run diverged, there is no best learning rate")
    i = int(loss.argmin())
    if i == 0 or i == len(lr) - 1 or not torch.isfinite(loss[i - 1 : i + 2]).all():
        return float(lr[i])
    u = lr[i - 1 : i + 2].log()
    f = loss[i - 1 : i + 2].log()
    a, b, _ = torch.linalg.lstsq(
        torch.stack([u**2, u, torch.ones(3, dtype=u.dtype)], 1), f
    ).solution
    if a <= 0:
        return float(lr[i])
    return float(torch.clamp(-b / (2 * a), u[0], u[2]).exp())


def fit_power_law(x: Sequence[float], y: Sequence[float]) -> tuple[float, float]:
    """Least-squares fit of ``y = c * x**p`` in log-log space; returns ``(p, c)``.

    The exponent ``p`` of best learning rate against batch size is 1 under the linear rule
    and 1/2 under the square-root rule.
    """
    xs = torch.as_tensor(x, dtype=torch.float64)
    ys = torch.as_tensor(y, dtype=torch.float64)
    if xs.ndim != 1 or xs.shape != ys.shape or len(xs) < 2:
        raise ValueError(
            f"Invalid x/y: shapes {tuple(xs.shape)} and {tuple(ys.shape)} "
            "(expected two equal 1-d sequences of at least 2 values)"
        )
    if (xs <= 0).any() or (ys <= 0).any():
        raise ValueError("Invalid x/y: a power law needs positive values")
    if (xs == xs[0]).all():
        raise ValueError("Invalid x: all values are equal, the exponent is undetermined")
    design = torch.stack([xs.log(), torch.ones_like(xs)], 1)
    p, log_c = torch.linalg.lstsq(design, ys.log()[:, None]).solution[:, 0]
    return float(p), float(log_c.exp())

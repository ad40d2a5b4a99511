"""The warmup map: target learning rate x warmup length, each run classified from its traces.

Kalra & Barkeshli (2024, "Why Warmup the Learning Rate? Underlying Mechanisms and
Improvements") describe three regimes for a step at rate ``eta`` against the curvature:

- ``eta < eta_c``: stable, the loss falls;
- ``eta_c < eta < eta_max``: the loss spikes, the sharpness drops, and the loss comes back
  down: a *catapult* (Lewkowycz et al., 2020, "The large learning rate phase of deep
  learning: the catapult mechanism");
- ``eta > eta_max``: the loss does not come back: divergence.

For gradient descent ``eta_c = 2 / lambda_max(H)``. For Adam the curvature that counts is the
preconditioned sharpness ``lambda_max(P^{-1} H)`` with ``P = diag(sqrt(v_hat)) + eps``, and
with momentum ``beta1`` the bound is ``eta_c = (2 + 2 beta1) / ((1 - beta1) lambda_max)``
(Cohen et al., 2022, "Adaptive Gradient Methods at the Edge of Stability").

A map needs hundreds of runs, each with its curvature measured along the way, so this module
trains them *all at once*: every run is one slice of a stack of small MLPs
(:class:`StackedMLP`), trained full-batch by a stacked optimizer (:func:`train_stack`) in
which every run has its own learning rate and warmup. The loss of the stack is the sum of
the runs' losses, so its Hessian is block diagonal, one block per run, and one
Hessian-vector product of the sum gives every run's product at once
(:func:`stacked_sharpness`). :func:`classify` then reads each run's loss and sharpness
traces and names its regime.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from course_lib import adam_variance
from course_lib.schedules import linear_warmup
from course_lib.train import progress_enabled

__all__ = [
    "CLASSES",
    "MapRuns",
    "StackedMLP",
    "catapult_onset",
    "classify",
    "critical_lr",
    "stacked_sharpness",
    "stacked_step",
    "teacher_task",
    "train_stack",
]

METHODS = ("sgd", "adam", "gi-adam", "radam")
"""The optimizers :func:`stacked_step` implements: gradient descent, Adam, GI-Adam, RAdam."""

CLASSES = ("stable", "catapult", "divergent")
"""The regimes :func:`classify` names, in order of the learning rate that produces them."""


# --- the task and the stacked model ---------------------------------------------------------


def teacher_task(
    seed: int, *, samples: int = 64, inputs: int = 8, outputs: int = 4, width: int = 32
) -> tuple[Tensor, Tensor]:
    """A regression task made in code: Gaussian inputs, targets from a random tanh teacher.

    Returns ``(x, y)`` of shapes ``(samples, inputs)`` and ``(samples, outputs)``, float32,
    from a generator seeded with ``seed``; the targets are scaled to unit variance.
    """
    for name, value in (("samples", samples), ("inputs", inputs), ("outputs", outputs)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"Invalid {name}: {value!r} (expected a positive int)")
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(samples, inputs, generator=generator)
    w1 = torch.randn(inputs, width, generator=generator) / math.sqrt(inputs)
    w2 = torch.randn(width, outputs, generator=generator) / math.sqrt(width)
    y = torch.tanh(2.0 * x @ w1) @ w2
    return x, y / y.std()


@dataclass
class StackedMLP:
    """``runs`` tanh MLPs of the same shape, their weights stacked along a first axis.

    ``weights[i]`` has shape ``(runs, fan_in, fan_out)`` and ``biases[i]`` ``(runs, fan_out)``.
    Layer ``i`` computes ``tanh(h @ W_i + b_i)`` (no tanh on the last), so run ``r`` is the
    ordinary MLP with weights ``weights[i][r]``. Weights start as ``N(0, 1 / fan_in)``
    (LeCun's initialisation), biases at zero, from a generator seeded per run: two runs with
    the same seed start from the same weights, whatever their learning rate.
    """

    weights: list[Tensor]
    biases: list[Tensor]

    @classmethod
    def create(cls, sizes: Sequence[int], seeds: Sequence[int]) -> StackedMLP:
        if len(sizes) < 2 or any(int(s) < 1 for s in sizes):
            raise ValueError(f"Invalid sizes: {list(sizes)} (expected at least two sizes >= 1)")
        if len(seeds) == 0:
            raise ValueError("Invalid seeds: empty (expected one seed per run)")
        per_seed = {}
        for seed in sorted(set(int(s) for s in seeds)):
            generator = torch.Generator().manual_seed(seed)
            per_seed[seed] = [
                torch.randn(fan_in, fan_out, generator=generator) / math.sqrt(fan_in)
                for fan_in, fan_out in itertools.pairwise(sizes)
            ]
        weights = [torch.stack([per_seed[int(s)][i] for s in seeds]) for i in range(len(sizes) - 1)]
        biases = [torch.zeros(len(seeds), fan_out) for fan_out in sizes[1:]]
        return cls(weights, biases)

    @property
    def runs(self) -> int:
        return self.weights[0].shape[0]

    def parameters(self) -> list[Tensor]:
        return [t for pair in zip(self.weights, self.biases, strict=True) for t in pair]

    def __call__(self, x: Tensor) -> Tensor:
        """``x`` of shape ``(runs, samples, inputs)`` -> outputs ``(runs, samples, outputs)``."""
        h = x
        last = len(self.weights) - 1
        for i, (w, b) in enumerate(zip(self.weights, self.biases, strict=True)):
            h = torch.baddbmm(b.unsqueeze(1), h, w)
            if i < last:
                h = torch.tanh(h)
        return h


def run_losses(model: StackedMLP, x: Tensor, y: Tensor) -> Tensor:
    """Each run's mean squared error ``mean((f(x) - y)**2)`` over samples and outputs: ``(runs,)``."""
    return (model(x) - y).square().mean(dim=(1, 2))


# --- stacked optimizers ---------------------------------------------------------------------


@dataclass
class StackState:
    """Per-parameter moments of a stacked optimizer, and the number of updates taken."""

    exp_avg: list[Tensor]
    exp_avg_sq: list[Tensor]
    step: int = 0


def _per_run(value: Tensor, like: Tensor) -> Tensor:
    """A ``(runs,)`` vector shaped to broadcast against a stacked tensor ``like``."""
    return value.reshape(-1, *([1] * (like.dim() - 1)))


def init_state(
    method: str, params: Sequence[Tensor], first_grads: Sequence[Tensor] | None = None
) -> StackState:
    """Zero moments; for ``"gi-adam"``, the second moment starts at ``first_grads**2``."""
    if method not in METHODS:
        raise ValueError(f"Invalid method: {method!r} (expected one of {', '.join(METHODS)})")
    exp_avg = [torch.zeros_like(p) for p in params]
    if method == "gi-adam":
        if first_grads is None:
            raise ValueError("gi-adam needs first_grads: the gradients at the initial weights")
        exp_avg_sq = [g.detach().square() for g in first_grads]
    else:
        exp_avg_sq = [torch.zeros_like(p) for p in params]
    return StackState(exp_avg, exp_avg_sq)


def stacked_step(
    method: str,
    params: Sequence[Tensor],
    grads: Sequence[Tensor],
    state: StackState,
    lr: Tensor,
    *,
    betas: tuple[float, float] = (0.9, 0.98),
    eps: float = 1e-8,
) -> None:
    """One update of every run in place; ``lr`` has one rate per run, shape ``(runs,)``.

    ``"sgd"``: ``theta -= lr * g``. ``"adam"`` and ``"gi-adam"``: ``torch.optim.Adam``'s
    update, ``theta -= lr * m_hat / (sqrt(v_hat) + eps)`` with ``m_hat = m / (1 - beta1^t)``
    and ``v_hat = v / (1 - beta2^t)`` (GI-Adam differs only in its initial ``v``, see
    :func:`init_state`). ``"radam"``: ``torch.optim.RAdam``'s, ``theta -= lr * m_hat`` while
    ``rho_t <= 5``, then ``theta -= lr * r_t * m_hat * sqrt(1 - beta2^t) / (sqrt(v) + eps)``
    (:mod:`course_lib.adam_variance`). The tests check each against ``torch.optim``.
    """
    beta1, beta2 = betas
    state.step += 1
    t = state.step
    if method == "sgd":
        for p, g in zip(params, grads, strict=True):
            p.sub_(_per_run(lr, p) * g)
        return
    rect = None
    if method == "radam":
        if adam_variance.rho(t, beta2).item() > adam_variance.TORCH_THRESHOLD:
            rect = adam_variance.rectification(t, beta2).item()
    for p, g, m, v in zip(params, grads, state.exp_avg, state.exp_avg_sq, strict=True):
        m.lerp_(g, 1.0 - beta1)
        v.mul_(beta2).addcmul_(g, g, value=1.0 - beta2)
        m_hat = m / (1.0 - beta1**t)
        if method == "radam" and rect is None:
            p.sub_(_per_run(lr, p) * m_hat)
            continue
        denom = v.sqrt() / math.sqrt(1.0 - beta2**t) + eps
        scale = _per_run(lr, p) * (1.0 if rect is None else rect)
        p.sub_(scale * m_hat / denom)


def preconditioner(
    method: str,
    state: StackState,
    *,
    betas: tuple[float, float] = (0.9, 0.98),
    eps: float = 1e-8,
) -> list[Tensor] | None:
    """Adam's ``P = sqrt(v_hat) + eps`` per parameter, from the state after update ``t``.

    ``None`` for ``"sgd"`` (``P = I``). Adam and GI-Adam step by ``lr * P^{-1} m_hat``.
    RAdam's adaptive steps are ``lr * r_t * P^{-1} m_hat`` (its first steps are SGD steps,
    ``lr * m_hat``); its curvature is measured in the same ``P`` throughout, so that
    measurements before and after its switch compare, and the rectification goes into its
    rate (:func:`effective_rate`).
    """
    if method == "sgd":
        return None
    if state.step < 1:
        raise ValueError("Invalid state: no update taken yet (expected step >= 1 to read v_hat)")
    correction = math.sqrt(1.0 - betas[1] ** state.step)
    return [v.sqrt() / correction + eps for v in state.exp_avg_sq]


def effective_rate(method: str, lr: Tensor, step: int, beta2: float = 0.98) -> Tensor:
    """The rate that multiplies ``P^{-1} m_hat`` in update ``step`` (1 for the first).

    ``lr`` itself, except for RAdam: ``lr * r_t`` once its steps are adaptive, and 0 before
    (its SGD steps do not scale with ``P^{-1}``; they are stable on this curvature).
    """
    lr = torch.as_tensor(lr, dtype=torch.float64)
    if method != "radam":
        return lr
    if not adam_variance.rho(step, beta2).item() > adam_variance.TORCH_THRESHOLD:
        return torch.zeros_like(lr)
    return lr * adam_variance.rectification(step, beta2).item()


def stability_threshold(method: str, lr: Tensor, beta1: float = 0.9) -> Tensor:
    """The largest (preconditioned) sharpness a step at ``lr`` is stable on.

    ``2 / lr`` for gradient descent; ``(2 + 2 beta1) / ((1 - beta1) lr)`` (38 / lr for
    ``beta1 = 0.9``) for the momentum methods (Cohen et al., 2022).
    """
    lr = torch.as_tensor(lr, dtype=torch.float64)
    if (lr < 0).any():
        raise ValueError("Invalid learning rate: expected lr >= 0 (0 gives an infinite bound)")
    bound = 2.0 if method == "sgd" else (2.0 + 2.0 * beta1) / (1.0 - beta1)
    return bound / lr


# --- curvature of every run at once ---------------------------------------------------------


def _run_dot(a: Sequence[Tensor], b: Sequence[Tensor]) -> Tensor:
    return sum((x * y).flatten(1).sum(1) for x, y in zip(a, b, strict=True))


def stacked_sharpness(
    losses: Tensor,
    params: Sequence[Tensor],
    *,
    preconditioner: Sequence[Tensor] | None = None,
    iters: int = 20,
    init: list[Tensor] | None = None,
    seed: int = 0,
) -> tuple[Tensor, list[Tensor]]:
    """Top eigenvalue of each run's Hessian, or of ``P^{-1/2} H P^{-1/2}``, by power iteration.

    ``losses`` holds one loss per run (shape ``(runs,)``), run ``r`` depending only on slice
    ``r`` of every tensor in ``params``. The Hessian of ``losses.sum()`` is then block
    diagonal, and one Hessian-vector product of the sum is every run's product. With a
    ``preconditioner`` (one positive tensor per parameter, stacked like it), each block is
    ``P^{-1/2} H P^{-1/2}``, which has the eigenvalues of ``P^{-1} H``. ``iters`` products
    from ``init`` (the previous call's vectors, a good warm start) or a seeded random start.
    Power iteration finds the eigenvalue of largest magnitude; a run whose result is negative
    gets a second pass on ``A + |lambda| I``, so the result is the top of each spectrum.
    Returns the eigenvalues ``(runs,)`` (float64) and the unit eigenvectors.
    """
    if iters < 1:
        raise ValueError(f"Invalid iters: {iters} (expected >= 1)")
    params = list(params)
    if losses.dim() != 1 or losses.shape[0] != params[0].shape[0]:
        raise ValueError(
            f"Invalid losses: shape {tuple(losses.shape)} (expected one loss per run, "
            f"({params[0].shape[0]},))"
        )
    grads = torch.autograd.grad(losses.sum(), params, create_graph=True)
    scale = None
    if preconditioner is not None:
        if len(preconditioner) != len(params):
            raise ValueError("Invalid preconditioner: expected one tensor per parameter")
        if any((q <= 0).any() for q in preconditioner):
            raise ValueError("Invalid preconditioner: expected every entry > 0")
        scale = [q.detach().rsqrt() for q in preconditioner]

    def matvec(v: list[Tensor]) -> list[Tensor]:
        if scale is not None:
            v = [s * x for s, x in zip(scale, v, strict=True)]
        out = torch.autograd.grad(grads, params, grad_outputs=v, retain_graph=True)
        if scale is not None:
            out = [s * x for s, x in zip(scale, out, strict=True)]
        return [x.detach() for x in out]

    def normalise(v: list[Tensor]) -> list[Tensor]:
        norm = _run_dot(v, v).sqrt().clamp_min(1e-30)
        return [x / _per_run(norm, x) for x in v]

    def power(v: list[Tensor], shift: Tensor | None) -> tuple[Tensor, list[Tensor]]:
        value = torch.zeros(params[0].shape[0], dtype=params[0].dtype)
        for _ in range(iters):
            w = matvec(v)
            if shift is not None:
                w = [x + _per_run(shift, x) * y for x, y in zip(w, v, strict=True)]
            value = _run_dot(v, w)
            v = normalise(w)
        return value if shift is None else value - shift, v

    if init is None:
        generator = torch.Generator().manual_seed(seed)
        init = [torch.randn(p.shape, generator=generator, dtype=p.dtype) for p in params]
    value, vector = power(normalise(init), None)
    if (value < 0).any():
        shift = torch.where(value < 0, value.abs(), torch.zeros_like(value))
        value, vector = power(vector, shift)
    return value.double(), vector


# --- training every run of the map at once --------------------------------------------------


@dataclass
class MapRuns:
    """Every run of one optimizer on the map, trained together by :func:`train_stack`.

    Run ``r`` has target rate ``lr[r]``, warmup ``warmup[r]`` updates and seed ``seed[r]``.
    ``losses[r, t]`` is its full-batch loss after ``t`` updates (``inf`` once diverged);
    ``rates[r, t]`` the rate of update ``t + 1``. ``sharpness[r, k]`` is its (preconditioned,
    for the Adam family) sharpness after ``measured[k]`` updates, ``threshold[r, k]`` the
    stability bound for the rate of the next update, and ``plain[r, k]`` the plain
    sharpness ``lambda_max(H)`` (NaN once diverged).
    """

    method: str
    lr: np.ndarray
    warmup: np.ndarray
    seed: np.ndarray
    losses: np.ndarray
    rates: np.ndarray
    measured: np.ndarray
    sharpness: np.ndarray
    threshold: np.ndarray
    plain: np.ndarray
    betas: tuple[float, float] = (0.9, 0.98)
    classes: list[str] = field(default_factory=list)


def train_stack(
    method: str,
    lrs: Sequence[float],
    warmups: Sequence[int],
    seeds: Sequence[int],
    *,
    steps: int,
    measure_at: Sequence[int],
    sizes: Sequence[int] = (8, 32, 32, 4),
    samples: int = 64,
    betas: tuple[float, float] = (0.9, 0.98),
    power_iters: int = 8,
    blowup: float = 1e3,
    desc: str | None = None,
) -> MapRuns:
    """Train one run per (target rate, warmup, seed), all at once, full batch; measure curvature.

    Each seed has its own :func:`teacher_task` and initial weights, shared by every rate and
    warmup. Run ``(lr, W, seed)`` takes update ``s + 1`` at :func:`course_lib.schedules.linear_warmup`
    ``(s, peak_lr=lr, num_warmup_steps=W)``. After each update count in ``measure_at`` (0 is
    the initial weights) the sharpness is measured with :func:`stacked_sharpness`, in the
    coordinates of the next update (:func:`preconditioner`; at 0, for the Adam family, the
    ``P`` that the first update will use, from the gradient at the initial weights). A run
    whose loss exceeds ``blowup`` times its initial loss, or is not finite, has diverged: its
    losses are ``inf`` from there on and its weights stop changing.
    """
    if method not in METHODS:
        raise ValueError(f"Invalid method: {method!r} (expected one of {', '.join(METHODS)})")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"Invalid steps: {steps!r} (expected a positive int)")
    if any(not lr > 0 for lr in lrs) or any(int(w) < 0 for w in warmups) or not len(seeds):
        raise ValueError("Invalid grid: expected lrs > 0, warmups >= 0 and at least one seed")
    grid = [(lr, w, s) for lr in lrs for w in warmups for s in seeds]
    lr_run = np.array([g[0] for g in grid], dtype=float)
    w_run = np.array([g[1] for g in grid], dtype=int)
    s_run = np.array([g[2] for g in grid], dtype=int)
    runs = len(grid)
    schedule = {
        (lr, w): [linear_warmup(s, peak_lr=lr, num_warmup_steps=int(w)) for s in range(steps)]
        for lr in lrs
        for w in warmups
    }
    rates = np.array([schedule[(lr, w)] for lr, w, _ in grid])
    tasks = {int(s): teacher_task(int(s), samples=samples, inputs=sizes[0], outputs=sizes[-1])
             for s in seeds}  # fmt: skip
    x = torch.stack([tasks[int(s)][0] for s in s_run])
    y = torch.stack([tasks[int(s)][1] for s in s_run])
    model = StackedMLP.create(sizes, s_run.tolist())
    params = model.parameters()
    for p in params:
        p.requires_grad_(True)
    marks = sorted({int(m) for m in measure_at if 0 <= int(m) <= steps})
    losses = np.full((runs, steps + 1), np.inf)
    sharp = np.full((runs, len(marks)), np.nan)
    plain = np.full((runs, len(marks)), np.nan)
    threshold = np.full((runs, len(marks)), np.nan)
    alive = torch.ones(runs, dtype=torch.bool)
    state = None
    warm: dict[str, list[Tensor] | None] = {"pre": None, "plain": None}
    first_loss = None
    bar = tqdm(total=steps, desc=desc or method, disable=not progress_enabled(), leave=False)
    for t in range(steps + 1):
        loss = run_losses(model, x, y)
        if first_loss is None:
            first_loss = loss.detach().clone()
        blown = ~torch.isfinite(loss) | (loss > blowup * first_loss)
        newly = alive & blown
        if newly.any():  # freeze the diverged runs at finite weights, out of the sum
            alive &= ~newly
            with torch.no_grad():
                for p in params:
                    p[newly] = 0.0
                if state is not None:
                    for m, v in zip(state.exp_avg, state.exp_avg_sq, strict=True):
                        m[newly] = 0.0
                        v[newly] = 1.0
            loss = run_losses(model, x, y)
        losses[alive.numpy(), t] = loss.detach()[alive].double().numpy()
        masked = torch.where(alive, loss, torch.zeros_like(loss))
        grads = None
        if t < steps or t in marks:
            grads = torch.autograd.grad(masked.sum(), params)
        if state is None:
            state = init_state(method, params, grads)
        if t in marks:
            k = marks.index(t)
            if method == "sgd":
                pre = None
            elif t == 0:  # the P of the first update, from the gradient at the start
                probe = init_state(method, params, grads if method == "gi-adam" else None)
                stacked_step(method, [p.detach().clone() for p in params], grads, probe,
                             torch.zeros(runs), betas=betas)  # fmt: skip
                pre = preconditioner(method, probe, betas=betas)
            else:
                pre = preconditioner(method, state, betas=betas)
            iters = power_iters if t else 4 * power_iters  # a cold start needs more
            value, warm["pre"] = stacked_sharpness(
                run_losses(model, x, y), params, preconditioner=pre, iters=iters,
                init=warm["pre"],
            )  # fmt: skip
            sharp[:, k] = np.where(alive.numpy(), value.numpy(), np.nan)
            if pre is None:
                plain[:, k] = sharp[:, k]
            else:
                value, warm["plain"] = stacked_sharpness(
                    run_losses(model, x, y), params, iters=iters, init=warm["plain"]
                )
                plain[:, k] = np.where(alive.numpy(), value.numpy(), np.nan)
            if t < steps:
                rate = effective_rate(method, torch.as_tensor(rates[:, t]), t + 1, betas[1])
                threshold[:, k] = stability_threshold(method, rate, betas[0]).numpy()
        if t == steps:
            break
        lr = torch.as_tensor(rates[:, t], dtype=params[0].dtype) * alive
        with torch.no_grad():
            stacked_step(method, params, grads, state, lr, betas=betas)
        bar.update()
    bar.close()
    return MapRuns(method, lr_run, w_run, s_run, losses, rates, np.array(marks), sharp,
                   threshold, plain, betas)  # fmt: skip


# --- naming each run's regime ---------------------------------------------------------------


@dataclass(frozen=True)
class Verdict:
    """What :func:`classify` found in one run's traces.

    ``label`` is one of :data:`CLASSES` (or ``"spike"``: a loss spike that came back down
    although the sharpness did not fall, which is not a catapult). ``spike_start`` and
    ``spike_peak`` are update counts (``-1`` without a spike); ``sharp_before`` and
    ``sharp_after`` the sharpness measured at or before the start of the spike and at or
    after its end (NaN without a spike).
    """

    label: str
    spike_start: int = -1
    spike_peak: int = -1
    sharp_before: float = math.nan
    sharp_after: float = math.nan


def classify_run(
    losses: Sequence[float],
    measured: Sequence[int],
    sharpness: Sequence[float],
    *,
    rise: float = 0.1,
) -> Verdict:
    """Name the regime of one run from its loss after every update and its sharpness.

    - **divergent**: a loss is not finite, or the last loss is above the first: the run
      blew up, or never came back below where it started;
    - otherwise a **spike** is a rise of the loss, above the lowest loss so far, by more than
      ``rise`` times the initial loss. Without one the run is **stable**;
    - a spike is a **catapult** when the sharpness after it (the first measurement once the
      loss is back below its level at the spike's start, else the last) is lower than before
      it (the last measurement at or before the spike's start).

    ``losses[t]`` is the loss after ``t`` updates; ``sharpness[k]`` was measured after
    ``measured[k]`` updates.
    """
    losses = np.asarray(losses, dtype=float)
    measured = np.asarray(measured, dtype=int)
    sharpness = np.asarray(sharpness, dtype=float)
    if losses.ndim != 1 or len(losses) < 2:
        raise ValueError(f"Invalid losses: expected at least 2 losses, got shape {losses.shape}")
    if measured.shape != sharpness.shape or measured.ndim != 1:
        raise ValueError(
            f"Invalid sharpness: {sharpness.shape} values for {measured.shape} measurements"
        )
    if not rise > 0:
        raise ValueError(f"Invalid rise: {rise} (expected > 0)")
    if not np.all(np.isfinite(losses)) or losses[-1] > losses[0]:
        return Verdict("divergent")
    lowest = np.minimum.accumulate(losses)
    above = losses[1:] - lowest[:-1] > rise * losses[0]
    if not above.any():
        return Verdict("stable")
    first = int(np.argmax(above)) + 1  # the first update count at which the loss is up
    start = int(np.argmax(losses[:first] == lowest[first - 1]))  # the low point before it
    back = np.nonzero(losses[first:] <= losses[start])[0]
    end = first + int(back[0]) if len(back) else len(losses) - 1
    peak = first + int(np.argmax(losses[first : end + 1]))
    ok = np.isfinite(sharpness)
    before = np.nonzero(ok & (measured <= start))[0]
    after = np.nonzero(ok & (measured >= end))[0]
    if not len(after):
        after = np.nonzero(ok & (measured > peak))[0][-1:]
    if not len(before) or not len(after):
        raise ValueError(
            f"cannot judge the spike at updates {start}-{end}: no sharpness measured "
            "before and after it (measure more often)"
        )
    sharp_before, sharp_after = float(sharpness[before[-1]]), float(sharpness[after[0]])
    label = "catapult" if sharp_after < sharp_before else "spike"
    return Verdict(label, start, peak, sharp_before, sharp_after)


def classify(runs: MapRuns, *, rise: float = 0.1) -> list[Verdict]:
    """:func:`classify_run` for every run of a map; also stores the labels in ``runs.classes``."""
    verdicts = [
        classify_run(runs.losses[r], runs.measured, runs.sharpness[r], rise=rise)
        for r in range(len(runs.lr))
    ]
    runs.classes = [v.label for v in verdicts]
    return verdicts


def critical_lr(runs: MapRuns, at: int | None = None) -> dict[int, float]:
    """Per seed, ``eta_c``: the target rate at which update ``at + 1`` meets its stability
    bound with the sharpness measured after ``at`` updates.

    The bound is ``c / rate`` (``c = 2`` for gradient descent, ``38`` with momentum 0.9), so
    ``eta_c = c / lambda``, divided by RAdam's rectification ``r_{at+1}`` (its adaptive rate
    is ``lr * r_t``). ``at`` defaults to 0, the initial weights, and for RAdam to the update
    count before its first adaptive step (its earlier steps are SGD steps). Each seed's value
    is read from its run with the smallest rate and warmup, the one that moved least.
    """
    if runs.method == "radam" and at is None:
        at = adam_variance.first_adaptive_step(runs.betas[1], adam_variance.TORCH_THRESHOLD) - 1
    at = 0 if at is None else at
    if at not in runs.measured:
        raise ValueError(f"Invalid runs: no sharpness measured after {at} updates")
    k = int(np.nonzero(runs.measured == at)[0][0])
    factor = float(effective_rate(runs.method, torch.tensor(1.0), at + 1, runs.betas[1]))
    if factor <= 0:
        raise ValueError(f"Invalid at: update {at + 1} of {runs.method} is not adaptive")
    out = {}
    for seed in np.unique(runs.seed):
        mine = np.nonzero(runs.seed == seed)[0]
        first = mine[np.lexsort((runs.warmup[mine], runs.lr[mine]))[0]]
        value = float(runs.sharpness[first, k])
        bound = float(stability_threshold(runs.method, torch.tensor(1.0), runs.betas[0]))
        out[int(seed)] = bound / (value * factor)
    return out


def catapult_onset(
    losses: np.ndarray, lrs: Sequence[float], *, within: int, tol: float = 0.01
) -> float:
    """Kalra & Barkeshli's idea of finding ``eta_c`` from the loss alone: the smallest rate
    at which the loss goes *up*, from one update to the next, within the first ``within``
    updates (by more than ``tol`` relative, so that rounding does not count): a catapult
    begins.

    ``losses[i]`` is the loss trace of a run at constant rate ``lrs[i]`` (increasing) from the
    same initial weights. A loss that is not finite counts as going up. Returns ``inf`` if no
    rate on the grid makes the loss rise.
    """
    losses = np.asarray(losses, dtype=float)
    lrs = np.asarray(lrs, dtype=float)
    if losses.ndim != 2 or losses.shape[0] != len(lrs):
        raise ValueError(f"Invalid losses: shape {losses.shape} for {len(lrs)} rates")
    if not np.all(np.diff(lrs) > 0):
        raise ValueError("Invalid lrs: expected increasing rates")
    if not 1 <= within < losses.shape[1]:
        raise ValueError(f"Invalid within: {within} (expected 1 <= within < {losses.shape[1]})")
    if not tol >= 0:
        raise ValueError(f"Invalid tol: {tol} (expected >= 0)")
    window = losses[:, : within + 1]
    with np.errstate(invalid="ignore"):
        down = np.isfinite(window[:, 1:]) & (window[:, 1:] <= (1.0 + tol) * window[:, :-1])
    rises = ~np.all(down, axis=1)
    return float(lrs[np.argmax(rises)]) if rises.any() else math.inf

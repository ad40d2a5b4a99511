"""Cooldowns from the checkpoints of one constant-rate run (warmup-stable-decay at any budget).

A warmup-stable-decay schedule is the constant-rate schedule until its cooldown starts. So one
constant-rate run with checkpoints gives, for the price of the cooldowns alone, every WSD run
whose cooldown starts at one of them: load the checkpoint at the step ``c`` where the WSD
schedule first differs from the constant one and train on with the WSD schedule from ``c`` to
its end. Hägele et al. (2024, "Scaling Laws and Compute-Optimal Training Beyond Fixed Training
Durations") use this to get models at many budgets, and to compare cooldown shapes and
lengths, from one run::

    runs = cooldown_runs(build, batches, stable, {
        "1-sqrt, 20%": (partial(wsd_schedule, ..., cooldown="1-sqrt"), 1000),
        "linear, 20%": (partial(wsd_schedule, ..., cooldown="linear"), 1000),
    }, evaluate=held_out_loss)
    runs.cooldowns["1-sqrt, 20%"].evaluation

:func:`cooldown_runs` trains the stable run once, up to the last checkpoint it needs, and
continues each cooldown from its checkpoint in fresh objects built by ``build``, loaded with
the checkpoint's model, optimizer and scheduler state. Every branch sees the same minibatches,
``batches[s]`` at step ``s``, as a run trained from scratch with its schedule: with
deterministic kernels the branch *is* that run, to the last bit (the tests check it).

One detail matters when a checkpoint continues under another schedule: the optimizer's
state dict holds each parameter group's current rate, the stable schedule's. The branch sets
it from its own schedule at the checkpoint's step before its first update.

The stable run can also keep exponential moving averages of its weights
(:class:`course_lib.averaging.WeightEMA`), ``averages={"EMA": decay}``, evaluated at every
checkpoint next to the run itself: weight averaging instead of a cooldown, from the same run
(Hägele et al. compare the two). The averages never touch the run: a branch is the same with
or without them.
"""

from __future__ import annotations

import copy
import math
import numbers
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from course_lib.averaging import WeightEMA
from course_lib.schedules import as_lambda_lr
from course_lib.train import progress_enabled, train

__all__ = ["Cooldown", "CooldownRuns", "branch_point", "cooldown_runs"]

Schedule = Callable[[int], float]


def _check_steps(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {type(value).__name__} {value!r}")
    if value < 1:
        raise ValueError(f"Invalid {name}: {value} (expected an integer >= 1)")
    return int(value)


def branch_point(schedule: Schedule, stable: Schedule, num_steps: int) -> int:
    """The first step ``s < num_steps`` where ``schedule(s) != stable(s)``; ``num_steps`` if none.

    Steps ``0 .. branch_point - 1`` of a run with ``schedule`` are the stable run's, so the
    run can start from the stable run's checkpoint after ``branch_point`` updates.
    """
    if not callable(schedule) or not callable(stable):
        raise TypeError("schedule and stable must be schedules (callables of the step)")
    num_steps = _check_steps("num_steps", num_steps)
    for step in range(num_steps):
        if schedule(step) != stable(step):
            return step
    return num_steps


@dataclass
class Cooldown:
    """One run completed from a checkpoint of the stable run.

    ``losses[i]`` and ``lrs[i]`` belong to update ``start + i + 1`` (step ``start + i``); the
    run's steps before ``start`` are the stable run's. ``evaluation`` is ``evaluate(model)``
    after the last update (``inf`` if the run diverged).
    """

    start: int
    num_steps: int
    losses: list[float] = field(default_factory=list)
    lrs: list[float] = field(default_factory=list)
    evaluation: float = math.inf
    diverged: bool = False


@dataclass
class CooldownRuns:
    """What :func:`cooldown_runs` recorded: the stable run, its checkpoints, the cooldowns."""

    stable_losses: list[float]
    stable_lrs: list[float]
    checkpoints: dict[int, float]  # step -> evaluate(model) of the stable run at that step
    cooldowns: dict[str, Cooldown]
    # name -> {step -> evaluate(model holding that EMA of the stable run's weights)}
    averaged: dict[str, dict[int, float]] = field(default_factory=dict)

    def losses(self, name: str) -> list[float]:
        """The whole training-loss curve of cooldown ``name``: the stable prefix, then its own."""
        run = self.cooldowns[name]
        return self.stable_losses[: run.start] + run.losses

    def lrs(self, name: str) -> list[float]:
        """The rate of every update of cooldown ``name``, from the first."""
        run = self.cooldowns[name]
        return self.stable_lrs[: run.start] + run.lrs


def _state(model: nn.Module, optimizer: torch.optim.Optimizer, scheduler) -> dict:
    return copy.deepcopy(
        {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
        }
    )


def cooldown_runs(
    build: Callable[[], tuple[nn.Module, torch.optim.Optimizer]],
    batches: Sequence[tuple[Tensor, Tensor]],
    stable: Schedule,
    cooldowns: Mapping[str, tuple[Schedule, int]],
    *,
    evaluate: Callable[[nn.Module], float],
    averages: Mapping[str, float] | None = None,
    device: torch.device | str | None = None,
    progress: bool | None = None,
) -> CooldownRuns:
    """Train ``stable`` once and complete each of ``cooldowns`` from its checkpoint.

    ``build()`` returns a fresh ``(model, optimizer)``; the first call makes the stable run
    (seed the generators before calling this), later calls only make objects to load
    checkpoints into. ``batches[s]`` is the minibatch of step ``s``. ``cooldowns`` maps a name
    to ``(schedule, num_steps)``: a run of ``num_steps`` updates whose rates equal
    ``stable``'s up to its :func:`branch_point`, where it continues from the stable run's
    checkpoint. The stable run is trained up to the last branch point and evaluated at each.
    ``averages`` maps a name to the decay of an EMA of the stable run's weights (bias
    corrected, updated after every step); each is evaluated at every checkpoint as well.
    """
    if not callable(build):
        raise TypeError(f"build must be a callable returning (model, optimizer), got {build!r}")
    if not callable(stable):
        raise TypeError(f"stable must be a schedule (a callable), got {type(stable).__name__}")
    if not callable(evaluate):
        raise TypeError(f"evaluate must be a callable of the model, got {evaluate!r}")
    if not isinstance(cooldowns, Mapping) or not cooldowns:
        raise ValueError(
            "Invalid cooldowns: expected a non-empty dict of name -> (schedule, steps)"
        )
    starts = {}
    for name, spec in cooldowns.items():
        if not (isinstance(spec, tuple) and len(spec) == 2 and callable(spec[0])):
            raise TypeError(f"cooldown {name!r} must be a (schedule, num_steps) pair, got {spec!r}")
        num_steps = _check_steps(f"num_steps of cooldown {name!r}", spec[1])
        if num_steps > len(batches):
            raise ValueError(
                f"Invalid cooldown {name!r}: {num_steps} steps but only {len(batches)} batches"
            )
        starts[name] = branch_point(spec[0], stable, num_steps)
    if averages is None:
        averages = {}
    if not isinstance(averages, Mapping):
        raise TypeError(f"averages must be a dict of name -> decay, got {averages!r}")
    if progress is None:
        progress = progress_enabled()

    # 1) the stable run, with a checkpoint at every branch point
    model, optimizer = build()
    scheduler = as_lambda_lr(optimizer, stable)
    saved, checkpoints, stable_losses, stable_lrs, done, diverged = {}, {}, [], [], 0, False
    emas = {name: WeightEMA(model, decay) for name, decay in averages.items()}
    averaged: dict[str, dict[int, float]] = {name: {} for name in emas}
    hook = optimizer.register_step_post_hook(
        lambda *_: [ema.update(model) for ema in emas.values()]
    )
    for start in sorted(set(starts.values())):
        if not diverged:
            history = train(
                model,
                optimizer,
                iter(batches[done:start]),
                start - done,
                scheduler=scheduler,
                device=device,
                progress=progress,
                desc="stable",
            )
            stable_losses += history.losses
            stable_lrs += history.lrs
            diverged = history.diverged
            done = start
        if diverged:
            checkpoints[start] = math.inf
            for values in averaged.values():
                values[start] = math.inf
            continue
        checkpoints[start] = float(evaluate(model))
        for name, ema in emas.items():
            with ema.applied(model):  # puts the run's own weights back afterwards
                averaged[name][start] = float(evaluate(model))
        saved[start] = _state(model, optimizer, scheduler)
    hook.remove()
    del model, optimizer, scheduler

    # 2) each cooldown, from its checkpoint, in fresh objects
    runs = {}
    for name in tqdm(cooldowns, desc="cooldowns", disable=not progress, leave=False):
        schedule, num_steps = cooldowns[name]
        start = starts[name]
        run = Cooldown(start=start, num_steps=num_steps)
        runs[name] = run
        if start not in saved:  # the stable run diverged before this checkpoint
            run.diverged = True
            continue
        model, optimizer = build()
        scheduler = as_lambda_lr(optimizer, schedule)
        state = copy.deepcopy(saved[start])  # load_state_dict may keep the tensors it is given
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        for group in optimizer.param_groups:  # the saved rate is the stable schedule's
            if isinstance(group["lr"], Tensor):
                group["lr"].fill_(schedule(start))
            else:
                group["lr"] = schedule(start)
        history = train(
            model,
            optimizer,
            iter(batches[start:num_steps]),
            num_steps - start,
            scheduler=scheduler,
            device=device,
            progress=progress,
            desc=str(name),
        )
        run.losses, run.lrs, run.diverged = history.losses, history.lrs, history.diverged
        run.evaluation = math.inf if history.diverged else float(evaluate(model))
    return CooldownRuns(stable_losses, stable_lrs, checkpoints, runs, averaged)

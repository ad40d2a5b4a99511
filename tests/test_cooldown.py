"""Tests for course_lib.cooldown: cooldowns branched from one constant-rate run.

The claim under test: a WSD run completed from the stable run's checkpoint is the WSD run
trained from scratch, update for update, when both see the same minibatches (float64, CPU).
"""

from __future__ import annotations

import math
from functools import partial

import pytest
import torch
from torch import nn

from course_lib import schedules
from course_lib.averaging import WeightEMA
from course_lib.cooldown import branch_point, cooldown_runs
from course_lib.train import train

T, W, PEAK = 60, 6, 0.02


def make_batches(n, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 8, 5, generator=gen, dtype=torch.float64)
    w = torch.randn(5, 1, generator=gen, dtype=torch.float64)
    y = x @ w + 0.1 * torch.randn(n, 8, 1, generator=gen, dtype=torch.float64)
    return list(zip(x, y, strict=True))


def build():
    model = nn.Sequential(nn.Linear(5, 16), nn.Tanh(), nn.Linear(16, 1)).double()
    return model, torch.optim.AdamW(model.parameters(), weight_decay=0.01)


EVAL_BATCHES = make_batches(4, seed=9)


def evaluate(model):
    with torch.no_grad():
        return sum(nn.functional.mse_loss(model(x), y).item() for x, y in EVAL_BATCHES)


STABLE = partial(schedules.constant_schedule, peak_lr=PEAK, num_warmup_steps=W)


def wsd(total, fraction, shape="1-sqrt"):
    return partial(
        schedules.wsd_schedule,
        peak_lr=PEAK,
        num_warmup_steps=W,
        num_training_steps=total,
        cooldown_fraction=fraction,
        cooldown=shape,
    )


def from_scratch(schedule, num_steps, batches, seed=0):
    torch.manual_seed(seed)
    model, optimizer = build()
    history = train(
        model,
        optimizer,
        iter(batches[:num_steps]),
        num_steps,
        scheduler=schedules.as_lambda_lr(optimizer, schedule),
        progress=False,
    )
    return history, evaluate(model), model


@pytest.mark.parametrize("fraction", [0.1, 0.2, 0.4, 0.5])
def test_branch_point_of_wsd_is_its_first_cooldown_step(fraction):
    cooldown_steps = round(fraction * T)
    assert branch_point(wsd(T, fraction), STABLE, T) == T - cooldown_steps
    # the update at the branch point is the first below the peak, the one before is at it
    assert wsd(T, fraction)(T - cooldown_steps) < PEAK == wsd(T, fraction)(T - cooldown_steps - 1)


def test_branch_point_at_the_ends():
    assert branch_point(STABLE, STABLE, T) == T  # never differs: the checkpoint is the run
    other = partial(schedules.constant_schedule, peak_lr=PEAK / 2, num_warmup_steps=W)
    assert branch_point(other, STABLE, T) == 1  # both start at 0, differ from the first ramp step
    cosine = partial(
        schedules.cosine_schedule, peak_lr=PEAK, num_warmup_steps=W, num_training_steps=T
    )
    assert branch_point(cosine, STABLE, T) == W + 1  # the cosine leaves the peak right after W


def test_branches_are_the_runs_trained_from_scratch():
    batches = make_batches(T)
    plan = {
        "1-sqrt 20%": (wsd(T, 0.2), T),
        "linear 20%": (wsd(T, 0.2, "linear"), T),  # shares the 1-sqrt run's checkpoint
        "1-sqrt 40%": (wsd(T, 0.4), T),
        "half budget": (wsd(T // 2, 0.2), T // 2),
    }
    torch.manual_seed(0)
    runs = cooldown_runs(build, batches, STABLE, plan, evaluate=evaluate, progress=False)
    starts = {name: T - round(0.2 * T) for name in ("1-sqrt 20%", "linear 20%")}
    starts |= {"1-sqrt 40%": T - round(0.4 * T), "half budget": T // 2 - round(0.2 * T // 2)}
    assert {name: run.start for name, run in runs.cooldowns.items()} == starts
    assert sorted(runs.checkpoints) == sorted(set(starts.values()))
    assert len(runs.stable_losses) == max(starts.values())  # trained only as far as needed

    for name, (schedule, num_steps) in plan.items():
        history, loss, _ = from_scratch(schedule, num_steps, batches)
        assert runs.losses(name) == history.losses, f"{name}: losses differ from scratch"
        assert runs.lrs(name) == history.lrs == [schedule(s) for s in range(num_steps)], name
        assert runs.cooldowns[name].evaluation == loss, name
        assert len(runs.cooldowns[name].losses) == num_steps - runs.cooldowns[name].start

    # the stable run's evaluation at a checkpoint is the constant-rate run's at that step
    start = starts["1-sqrt 40%"]
    assert runs.checkpoints[start] == from_scratch(STABLE, start, batches)[1]


def test_the_branch_uses_its_own_rate_at_the_checkpoint():
    """The optimizer's state dict carries the stable rate; the branch must not use it."""
    batches = make_batches(T)
    torch.manual_seed(0)
    runs = cooldown_runs(
        build,
        batches,
        STABLE,
        {"wsd": (wsd(T, 0.5, "linear"), T)},
        evaluate=evaluate,
        progress=False,
    )
    run = runs.cooldowns["wsd"]
    assert run.lrs[0] == wsd(T, 0.5, "linear")(run.start) < PEAK
    assert runs.stable_lrs[-1] == PEAK


def test_a_cooldown_that_never_leaves_the_stable_run_is_its_checkpoint():
    batches = make_batches(T)
    torch.manual_seed(0)
    runs = cooldown_runs(
        build, batches, STABLE, {"none": (STABLE, 20)}, evaluate=evaluate, progress=False
    )
    assert runs.cooldowns["none"].start == 20 and runs.cooldowns["none"].losses == []
    assert runs.cooldowns["none"].evaluation == runs.checkpoints[20]


def test_a_diverging_stable_run_marks_later_cooldowns_diverged():
    batches = [(x, y * 1e200) for x, y in make_batches(T)]  # the loss overflows at once
    torch.manual_seed(0)
    runs = cooldown_runs(
        build, batches, STABLE, {"late": (wsd(T, 0.2), T)}, evaluate=evaluate, progress=False
    )
    assert runs.checkpoints[runs.cooldowns["late"].start] == math.inf
    assert runs.cooldowns["late"].diverged and runs.cooldowns["late"].evaluation == math.inf


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"cooldowns": {}}, ValueError, "non-empty"),
        ({"cooldowns": {"a": (wsd(T, 0.2), T + 1)}}, ValueError, "'a'.*61 steps.*60 batches"),
        ({"cooldowns": {"a": (wsd(T, 0.2), 0)}}, ValueError, "num_steps of cooldown 'a'.*>= 1"),
        ({"cooldowns": {"a": (wsd(T, 0.2), 2.5)}}, TypeError, "must be an integer"),
        ({"cooldowns": {"a": wsd(T, 0.2)}}, TypeError, r"'a' must be a \(schedule, num_steps\)"),
        ({"stable": 0.01}, TypeError, "stable must be a schedule"),
        ({"evaluate": None}, TypeError, "evaluate must be a callable"),
        ({"build": None}, TypeError, "build must be a callable"),
        ({"averages": [0.9]}, TypeError, "averages must be a dict"),
        ({"averages": {"ema": 1.0}}, ValueError, "Invalid decay: 1.0"),
    ],
)
def test_bad_input_is_a_clear_error(kwargs, error, match):
    arguments = {
        "build": build,
        "batches": make_batches(T),
        "stable": STABLE,
        "cooldowns": {"a": (wsd(T, 0.2), T)},
        "evaluate": evaluate,
    } | kwargs
    with pytest.raises(error, match=match):
        cooldown_runs(
            arguments.pop("build"),
            arguments.pop("batches"),
            arguments.pop("stable"),
            arguments.pop("cooldowns"),
            **arguments,
            progress=False,
        )


def test_branch_point_rejects_bad_input():
    with pytest.raises(TypeError, match="callables"):
        branch_point(0.1, STABLE, T)
    with pytest.raises(ValueError, match="num_steps"):
        branch_point(STABLE, STABLE, 0)


def test_averages_are_the_ema_of_the_constant_run_at_each_checkpoint():
    """The EMA kept along the stable run, evaluated at a checkpoint, is the EMA of the
    constant-rate run trained from scratch to that step; and keeping it changes no branch."""
    batches = make_batches(T)
    plan = {"1-sqrt 20%": (wsd(T, 0.2), T), "to the end": (STABLE, T), "early": (STABLE, 25)}
    decays = {"fast": 0.8, "slow": 0.97}
    torch.manual_seed(0)
    runs = cooldown_runs(
        build, batches, STABLE, plan, evaluate=evaluate, averages=decays, progress=False
    )
    torch.manual_seed(0)
    plain = cooldown_runs(build, batches, STABLE, plan, evaluate=evaluate, progress=False)
    assert plain.averaged == {}
    assert runs.stable_losses == plain.stable_losses and runs.checkpoints == plain.checkpoints
    for name in plan:
        assert runs.losses(name) == plain.losses(name), name
        assert runs.cooldowns[name].evaluation == plain.cooldowns[name].evaluation, name

    assert set(runs.averaged) == set(decays)
    for name, decay in decays.items():
        assert sorted(runs.averaged[name]) == sorted(runs.checkpoints) == [25, 48, T]
        for step, value in runs.averaged[name].items():
            torch.manual_seed(0)
            model, optimizer = build()
            ema = WeightEMA(model, decay)
            scheduler = schedules.as_lambda_lr(optimizer, STABLE)
            for x, y in batches[:step]:
                optimizer.zero_grad()
                nn.functional.mse_loss(model(x), y).backward()
                optimizer.step()
                scheduler.step()
                ema.update(model)
            ema.copy_to(model)
            assert value == pytest.approx(evaluate(model), rel=1e-12), (name, step)
            assert value != runs.checkpoints[step]  # the average is not the run itself


def test_averages_of_a_diverged_stable_run_are_inf():
    batches = [(x, y * 1e200) for x, y in make_batches(T)]
    torch.manual_seed(0)
    runs = cooldown_runs(
        build,
        batches,
        STABLE,
        {"late": (wsd(T, 0.2), T)},
        evaluate=evaluate,
        averages={"ema": 0.9},
        progress=False,
    )
    assert runs.averaged["ema"] == {runs.cooldowns["late"].start: math.inf}

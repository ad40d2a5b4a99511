"""course_lib.weight_decay: the EMA timescale, the batched grid of runs, and its valley."""

from __future__ import annotations

import math
from functools import partial

import numpy as np
import pytest
import torch

from course_lib import schedules
from course_lib.data import minibatches
from course_lib.models import MLP
from course_lib.param_groups import param_groups
from course_lib.weight_decay import (
    ema_timescale,
    extend_until_interior,
    log_optimum,
    train_mlp_grid,
    valley_slope,
    weight_decay_for_timescale,
)

# --- the EMA timescale ---------------------------------------------------------------------


def test_timescale_is_one_over_lr_times_wd():
    assert ema_timescale(1e-3, 0.1) == pytest.approx(10_000)
    # 50,000 examples at batch 500: 100 updates per epoch, so 10,000 updates are 100 epochs.
    assert ema_timescale(1e-3, 0.1, steps_per_epoch=100) == pytest.approx(100)
    assert ema_timescale(1e-3, 0.0) == math.inf


def test_timescale_is_the_ema_of_updates():
    """With a constant update u, AdamW's weights converge to the EMA's fixed point u / (lr wd),
    and after tau steps from zero they have covered 1 - 1/e of the way (to first order)."""
    lr, wd = 0.01, 0.5
    tau = ema_timescale(lr, wd)
    theta, update = 0.0, 1e-3
    for _ in range(round(tau)):
        theta = theta * (1 - lr * wd) + update
    fixed_point = update / (lr * wd)
    assert theta / fixed_point == pytest.approx(1 - math.exp(-1), abs=0.01)


def test_weight_decay_for_timescale_inverts_it():
    wd = weight_decay_for_timescale(3e-4, 20, steps_per_epoch=250)
    assert ema_timescale(3e-4, wd, steps_per_epoch=250) == pytest.approx(20)
    # four times the data at the same batch size and tau in epochs: a quarter of the decay
    assert weight_decay_for_timescale(3e-4, 20, steps_per_epoch=1000) == pytest.approx(wd / 4)


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda: ema_timescale(0.0, 0.1), ValueError, "lr"),
        (lambda: ema_timescale(1e-3, -0.1), ValueError, "weight_decay"),
        (lambda: ema_timescale(1e-3, 0.1, steps_per_epoch=0), ValueError, "steps_per_epoch"),
        (lambda: ema_timescale("1e-3", 0.1), TypeError, "lr"),
        (lambda: weight_decay_for_timescale(1e-3, math.inf), ValueError, "tau"),
        (lambda: weight_decay_for_timescale(1e-3, 0), ValueError, "tau"),
    ],
)
def test_timescale_bad_arguments(call, error, match):
    with pytest.raises(error, match=match):
        call()


# --- the batched grid ----------------------------------------------------------------------


def _data(dtype=torch.float64):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(96, 5, generator=gen, dtype=dtype)
    y = torch.sin(x.sum(dim=1, keepdim=True)) + 0.1 * torch.randn(96, 1, generator=gen, dtype=dtype)
    return x[:64], y[:64], x[64:], y[64:]


def _one_run(data, lr, wd, decoupled, steps, schedule, seed, hidden, dtype=torch.float64):
    """The reference: one MLP, torch.optim's own Adam or AdamW, param_groups, LambdaLR."""
    x_train, y_train, x_test, y_test = data
    torch.manual_seed(seed)
    model = MLP(5, 1, hidden=hidden).to(dtype)
    make = torch.optim.AdamW if decoupled else torch.optim.Adam
    optimizer = make(param_groups(model, wd), lr=lr, foreach=False)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    batches = minibatches(x_train, y_train, 16, generator=torch.Generator().manual_seed(seed))
    for _ in range(steps):
        x, y = next(batches)
        optimizer.zero_grad()
        torch.nn.functional.mse_loss(model(x), y).backward()
        optimizer.step()
        scheduler.step()
    with torch.no_grad():
        return torch.nn.functional.mse_loss(model(x_test), y_test).item()


@pytest.mark.parametrize("scheduled", [False, True])
def test_grid_matches_torch_adam_and_adamw_run_by_run(scheduled):
    data = _data()
    steps = 40
    schedule = (
        partial(
            schedules.cosine_schedule, peak_lr=1.0, num_warmup_steps=5, num_training_steps=steps
        )
        if scheduled
        else (lambda step: 1.0)
    )
    runs = [
        (3e-2, 0.0, True),
        (3e-2, 0.5, True),
        (1e-2, 2.0, True),
        (3e-2, 0.05, False),
        (1e-2, 0.5, False),
    ]
    lrs, wds, flags = zip(*runs, strict=True)
    got = train_mlp_grid(
        *data,
        lrs=lrs,
        weight_decays=wds,
        decoupled=flags,
        num_steps=steps,
        batch_size=16,
        hidden=8,
        schedule=schedule if scheduled else None,
        seed=3,
        progress=False,
    )
    expected = [_one_run(data, lr, wd, d, steps, schedule, 3, 8) for lr, wd, d in runs]
    assert got.dtype == torch.float64
    assert got.tolist() == pytest.approx(expected, rel=1e-10), (
        "run n of the grid must be torch.optim.Adam (L2) or AdamW on param_groups, step for step"
    )
    # and the decay matters: the runs differ from each other
    assert len({round(v, 8) for v in got.tolist()}) == len(runs)


def test_a_diverged_run_is_inf_and_leaves_the_others_alone():
    data = tuple(t.float() for t in _data())
    kwargs = {"num_steps": 150, "batch_size": 16, "hidden": 8, "seed": 1, "progress": False}
    # lr * wd = 3: each step multiplies the weights by 1 - 3 = -2, which overflows float32
    both = train_mlp_grid(
        *data, lrs=[1.0, 0.01], weight_decays=[3.0, 0.1], decoupled=True, **kwargs
    )
    alone = train_mlp_grid(*data, lrs=[0.01], weight_decays=[0.1], decoupled=True, **kwargs)
    assert both[0] == math.inf
    assert both[1].item() == pytest.approx(alone[0].item(), rel=1e-5)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"lrs": []}, ValueError, "lrs"),
        ({"weight_decays": [0.1, 0.2, 0.3]}, ValueError, "weight_decays"),
        ({"weight_decays": -0.1}, ValueError, "weight_decays"),
        ({"lrs": [1e-3, float("nan")]}, ValueError, "lrs"),
        ({"decoupled": [True, 1]}, TypeError, "decoupled"),
        ({"weight_decays": "0.1"}, TypeError, "weight_decays"),
        ({"lrs": None}, TypeError, "lrs"),
        ({"num_steps": 0}, ValueError, "num_steps"),
        ({"batch_size": 1.5}, TypeError, "batch_size"),
    ],
)
def test_grid_bad_arguments(kwargs, error, match):
    arguments = {
        "lrs": [1e-3, 1e-2],
        "weight_decays": 0.1,
        "decoupled": True,
        "num_steps": 2,
        "batch_size": 16,
        "progress": False,
    }
    with pytest.raises(error, match=match):
        train_mlp_grid(*_data(), **{**arguments, **kwargs})


# --- reading the grid ----------------------------------------------------------------------


def test_log_optimum_finds_the_vertex_between_grid_points():
    grid = [10 ** (k / 2) for k in range(-4, 3)]
    best = 10**-0.3
    values = [(math.log(g) - math.log(best)) ** 2 + 0.2 for g in grid]
    assert log_optimum(grid, values) == pytest.approx(best, rel=1e-9)
    # a minimum beyond the grid is clipped to its edge, not extrapolated
    assert log_optimum(grid, [-math.log(g) for g in grid]) == pytest.approx(grid[-1])
    # diverged runs (inf, nan) are worse than any run that trained
    values[-1], values[-2] = math.inf, math.nan
    assert log_optimum(grid, values) == pytest.approx(best, rel=1e-9)


def test_log_optimum_bad_input():
    with pytest.raises(ValueError, match="increasing"):
        log_optimum([1, 3, 2], [1, 0, 1])
    with pytest.raises(ValueError, match="infinite"):
        log_optimum([1, 2, 3], [math.inf, math.nan, math.inf])
    with pytest.raises(ValueError, match="values"):
        log_optimum([1, 2, 3], [1, 0])


@pytest.mark.parametrize("true_slope", [0.0, -1.0, 0.4])
def test_valley_slope_recovers_how_the_optimum_moves(true_slope):
    lrs = np.array([10 ** (-3 + k / 4) for k in range(6)])
    decays = np.array([10 ** (-2 + k / 3) for k in range(10)])
    optimum = 0.1 * (lrs / 1e-2) ** true_slope
    losses = (np.log(decays)[:, None] - np.log(optimum)[None, :]) ** 2
    valley = valley_slope(lrs, decays, losses)
    assert valley.slope == pytest.approx(true_slope, abs=1e-9)
    assert valley.optima == pytest.approx(optimum, rel=1e-9)
    assert valley.line(lrs) == pytest.approx(optimum, rel=1e-9)
    # the same runs in the paper's coordinates, lambda = lr * wd: the slope is one more
    lambdas = valley.optima * lrs
    assert np.polyfit(np.log10(lrs), np.log10(lambdas), 1)[0] == pytest.approx(true_slope + 1)


def test_valley_slope_bad_shape():
    with pytest.raises(ValueError, match="shape"):
        valley_slope([1e-3, 1e-2], [0.1, 1.0, 10.0], np.zeros((2, 3)))


def test_extend_until_interior_grows_the_axis_towards_the_optimum():
    optimum = np.array([30.0, 3.0, 0.3])  # one per learning rate, beyond both ends of the grid
    calls = []

    def run_rows(decays):
        calls.append(list(decays))
        d = np.log(np.asarray(decays))[None, :, None]
        clean = (d - np.log(optimum)[None, None, :]) ** 2
        return np.concatenate([clean, clean + 0.01])  # two "seeds"

    decays, losses, edges = extend_until_interior(run_rows, [1.0, 2.0, 4.0], factor=2)
    assert edges == []
    assert decays[0] < 0.3 and 30 < decays[-1]
    best = losses.mean(axis=0).argmin(axis=0)
    assert all(0 < i < len(decays) - 1 for i in best), "every optimum inside the grid"
    assert decays == sorted(decays)
    assert losses.shape == (2, len(decays), 3)
    assert losses[0] == pytest.approx(run_rows(decays)[0])
    assert all(len(c) == 1 for c in calls[1:-1]), "each extension runs one row"
    # losses already run are used as they are: only the new rows are run
    calls.clear()
    first = run_rows([1.0, 2.0, 4.0])
    again, _, _ = extend_until_interior(run_rows, [1.0, 2.0, 4.0], factor=2, losses=first)
    assert again == decays and all(len(c) == 1 for c in calls[1:])


def test_extend_until_interior_reports_a_column_that_stays_on_the_edge():
    def run_rows(decays):  # the second learning rate always wants less decay
        d = np.log(np.asarray(decays))
        return np.stack([np.stack([d**2, d], axis=1)] * 2)

    decays, _, edges = extend_until_interior(run_rows, [0.5, 1.0, 2.0], factor=2, max_extensions=3)
    assert edges == [1]
    assert len(decays) == 6


def test_extend_until_interior_bad_arguments():
    with pytest.raises(ValueError, match="factor"):
        extend_until_interior(lambda d: np.zeros((2, len(d), 1)), [1, 2, 3], factor=1)
    with pytest.raises(ValueError, match="increase"):
        extend_until_interior(lambda d: np.zeros((2, len(d), 1)), [1, 3, 2], factor=2)
    with pytest.raises(ValueError, match="shape"):
        extend_until_interior(lambda d: np.zeros((2, 1)), [1, 2, 3], factor=2)

"""Tests for course_lib.lr_range_test: the sweep, divergence detection, restoring, suggestions.

The divergence test uses the one problem where the answer is known in closed form: plain SGD
on a quadratic with curvatures up to L multiplies the error along the top curvature by
(1 - lr L) each step, so it blows up exactly when lr > 2 / L. Noise in the targets keeps the
error from collapsing to zero on the way, as minibatch noise does in a real run.
"""

from __future__ import annotations

import copy
import itertools
import math
from functools import partial

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from course_lib import schedules
from course_lib.lr_range_test import (
    RULES,
    RangeTestResult,
    lr_range_test,
    sweep_rates,
)
from course_lib.optim import AdamW


class Quadratic(nn.Module):
    """``model(x)`` is ``sqrt(curvatures) * theta``; with :func:`half_sse` the loss is
    ``0.5 * sum(curvatures * (theta - target)**2)``, whose Hessian is ``diag(curvatures)``."""

    def __init__(self, curvatures: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("root", curvatures.sqrt())
        self.theta = nn.Parameter(torch.ones_like(curvatures))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.root * self.theta.expand_as(x)


def half_sse(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return 0.5 * ((prediction - target) ** 2).sum(-1).mean()


def noisy_targets(curvatures: torch.Tensor, noise: float, seed: int):
    """Batches whose minimum moves by ``noise`` around 0 from step to step."""
    generator = torch.Generator().manual_seed(seed)
    root = curvatures.sqrt()
    while True:
        target = noise * torch.randn(1, len(curvatures), generator=generator, dtype=root.dtype)
        yield torch.zeros_like(target), root * target


def regression_batches(seed: int, batch_size: int = 32):
    generator = torch.Generator().manual_seed(seed)
    w = torch.randn(8, 1, generator=generator)
    while True:
        x = torch.randn(batch_size, 8, generator=generator)
        yield x, x @ w + 0.1 * torch.randn(batch_size, 1, generator=generator)


def small_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.Tanh(), nn.Linear(16, 1))


def train_steps(model, optimizer, batches, num_steps):
    for _ in range(num_steps):
        x, y = next(batches)
        optimizer.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        optimizer.step()


def assert_state_dicts_equal(actual, expected, what):
    """Bit-for-bit equality of two (nested) state dicts; names the first entry that differs."""
    if isinstance(expected, dict):
        assert isinstance(actual, dict) and actual.keys() == expected.keys(), (
            f"{what}: keys {sorted(map(str, actual))} differ from {sorted(map(str, expected))}"
        )
        for key in expected:
            assert_state_dicts_equal(actual[key], expected[key], f"{what}[{key!r}]")
    elif isinstance(expected, (list, tuple)):
        assert len(actual) == len(expected), f"{what}: length {len(actual)} != {len(expected)}"
        for index, (a, e) in enumerate(zip(actual, expected, strict=True)):
            assert_state_dicts_equal(a, e, f"{what}[{index}]")
    elif isinstance(expected, torch.Tensor):
        assert torch.equal(actual, expected), (
            f"{what} was not restored: largest change {(actual - expected).abs().max().item():.3e}"
        )
    else:
        assert actual == expected, f"{what} was not restored: {actual!r}, expected {expected!r}"


# --- the sweep ------------------------------------------------------------------------------


def test_sweep_starts_and_ends_exactly_and_is_geometric():
    rates = sweep_rates(1e-7, 10.0, 81)
    assert len(rates) == 81
    assert rates[0] == 1e-7 and rates[-1] == 10.0
    ratios = [b / a for a, b in itertools.pairwise(rates)]
    assert all(math.isclose(r, 10 ** (8 / 80), rel_tol=1e-12) for r in ratios), (
        "the sweep should multiply the rate by the same factor every step"
    )


@settings(max_examples=100, deadline=None)
@given(
    start=st.floats(1e-9, 1.0),
    decades=st.floats(0.01, 12.0),
    num_steps=st.integers(2, 500),
)
def test_sweep_is_increasing_and_spans_the_range(start, decades, num_steps):
    end = start * 10**decades
    rates = sweep_rates(start, end, num_steps)
    assert len(rates) == num_steps
    assert rates[0] == start and rates[-1] == end
    assert all(b > a for a, b in itertools.pairwise(rates))


def test_each_update_uses_the_sweep_rate():
    # Loss = theta + 100, gradient 1: SGD moves theta by exactly the rate of each update.
    theta = nn.Parameter(torch.zeros((), dtype=torch.float64))
    model = nn.Module()
    model.theta = theta
    model.forward = lambda x: theta.expand(len(x))
    seen = []

    def loss_fn(prediction, _target):
        seen.append(prediction[0].item())
        return prediction.mean() + 100.0

    batches = iter(lambda: (torch.zeros(1), torch.zeros(1)), None)
    optimizer = torch.optim.SGD([theta], lr=0.5)
    result = lr_range_test(
        model, optimizer, batches, start_lr=1e-3, end_lr=1e-1, num_steps=20, loss_fn=loss_fn,
        progress=False,
    )  # fmt: skip
    expected = sweep_rates(1e-3, 1e-1, 20)
    assert result.lrs == expected and not result.diverged
    moved = [a - b for a, b in itertools.pairwise(seen)]
    for step, (move, rate) in enumerate(zip(moved, expected, strict=False)):
        assert math.isclose(move, rate, rel_tol=1e-9), (
            f"update {step} moved theta by {move!r}; the sweep's rate there is {rate!r}"
        )
    assert theta.item() == 0.0 and optimizer.param_groups[0]["lr"] == 0.5


# --- divergence -------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("top_curvature", [0.5, 10.0, 300.0])
@pytest.mark.parametrize(("smoothing", "high"), [(0.9, 1.5), (0.98, 1.6)])
def test_detected_blow_up_lies_near_two_over_L_for_sgd(top_curvature, smoothing, high, seed):
    curvatures = top_curvature * torch.logspace(-2, 0, 10, dtype=torch.float64)
    model = Quadratic(curvatures)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    limit = 2.0 / top_curvature
    result = lr_range_test(
        model, optimizer, noisy_targets(curvatures, 0.1, seed),
        start_lr=1e-2 * limit, end_lr=100 * limit, num_steps=400,
        smoothing=smoothing, loss_fn=half_sse, progress=False,
    )  # fmt: skip
    assert result.diverged, f"SGD swept to 100 x 2/L = {100 * limit:g} and never diverged"
    ratio = result.divergence_lr / limit
    assert 0.9 <= ratio <= high, (
        f"with L = {top_curvature} SGD diverges for lr > 2/L = {limit:.4g}; the test stopped at "
        f"{result.divergence_lr:.4g} = {ratio:.3f} x 2/L (expected 0.9 to {high} x 2/L with "
        f"smoothing {smoothing}: the loss needs a few steps above 2/L to grow 4-fold, and the "
        "moving average lags by about 1 / (1 - smoothing) steps)"
    )
    assert result.suggested_lr < limit, "the suggested rate should be a stable one"
    assert result.suggest("steepest") < limit, "the steepest descent should be at a stable rate"


def test_unsmoothed_noise_can_stop_the_sweep_early_but_never_late():
    # Without smoothing, one noisy loss 4x the best one ends the sweep, possibly below 2/L.
    curvatures = 10.0 * torch.logspace(-2, 0, 10, dtype=torch.float64)
    for seed in range(3):
        model = Quadratic(curvatures)
        result = lr_range_test(
            model, torch.optim.SGD(model.parameters(), lr=0.1),
            noisy_targets(curvatures, 0.1, seed), start_lr=2e-3, end_lr=20.0, num_steps=400,
            smoothing=0.0, loss_fn=half_sse, progress=False,
        )  # fmt: skip
        assert result.diverged and result.divergence_lr <= 1.3 * 0.2
        assert result.smoothed_losses == result.losses


def test_non_finite_loss_stops_the_sweep_and_is_not_recorded():
    theta = nn.Parameter(torch.ones(1))
    model = nn.Module()
    model.theta = theta
    model.forward = lambda x: theta.expand(len(x))
    optimizer = torch.optim.SGD([theta], lr=0.1)
    calls = []

    def loss_fn(prediction, _target):
        calls.append(None)
        value = (prediction**2).mean()
        return value * math.inf if len(calls) == 7 else value

    batches = iter(lambda: (torch.zeros(1), torch.zeros(1)), None)
    result = lr_range_test(
        model, optimizer, batches, start_lr=1e-6, end_lr=1e-5, num_steps=50, loss_fn=loss_fn,
        progress=False,
    )  # fmt: skip
    assert result.diverged and len(result.lrs) == 6 and len(calls) == 7
    assert result.divergence_lr == sweep_rates(1e-6, 1e-5, 50)[6]
    assert all(math.isfinite(v) for v in result.losses + result.smoothed_losses)


def test_smoothing_is_a_bias_corrected_moving_average():
    model = small_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    result = lr_range_test(
        model, optimizer, regression_batches(0), start_lr=1e-6, end_lr=1e-4, num_steps=30,
        smoothing=0.8, progress=False,
    )  # fmt: skip
    average = 0.0
    for i, (loss, smoothed) in enumerate(zip(result.losses, result.smoothed_losses, strict=True)):
        average = 0.8 * average + 0.2 * loss
        assert math.isclose(smoothed, average / (1 - 0.8 ** (i + 1)), rel_tol=1e-12)
    assert math.isclose(result.smoothed_losses[0], result.losses[0], rel_tol=1e-12)
    raw = lr_range_test(
        model, optimizer, regression_batches(0), start_lr=1e-6, end_lr=1e-4, num_steps=30,
        smoothing=0.0, progress=False,
    )  # fmt: skip
    assert raw.smoothed_losses == raw.losses


# --- restoring the model and the optimizer ----------------------------------------------------


@pytest.mark.parametrize(
    "make_optimizer",
    [
        pytest.param(lambda p: AdamW(p, lr=3e-3, weight_decay=0.1), id="course_lib.AdamW"),
        pytest.param(lambda p: torch.optim.Adam(p, lr=3e-3, amsgrad=True), id="torch.Adam"),
        pytest.param(lambda p: torch.optim.SGD(p, lr=1e-2, momentum=0.9), id="torch.SGD"),
    ],
)
def test_model_and_optimizer_are_restored_exactly(make_optimizer):
    model = small_model()
    optimizer = make_optimizer(model.parameters())
    train_steps(model, optimizer, regression_batches(1), 5)  # some state to restore
    model.eval()
    twin, twin_optimizer = copy.deepcopy(model), None
    twin_optimizer = make_optimizer(twin.parameters())
    twin_optimizer.load_state_dict(copy.deepcopy(optimizer.state_dict()))
    before_model = copy.deepcopy(model.state_dict())
    before_optimizer = copy.deepcopy(optimizer.state_dict())

    result = lr_range_test(
        model, optimizer, regression_batches(2), start_lr=1e-5, end_lr=100.0, num_steps=60,
        progress=False,
    )  # fmt: skip
    assert len(result.lrs) > 5, "the sweep should have taken steps (and changed the weights)"
    assert_state_dicts_equal(model.state_dict(), before_model, "model.state_dict()")
    assert_state_dicts_equal(optimizer.state_dict(), before_optimizer, "optimizer.state_dict()")
    assert not model.training, "the model was in eval mode before the test and should be again"
    assert all(p.grad is None for p in model.parameters())

    # And training continues exactly as if the test had never run.
    model.train()
    twin.train()
    train_steps(model, optimizer, regression_batches(3), 5)
    train_steps(twin, twin_optimizer, regression_batches(3), 5)
    assert_state_dicts_equal(model.state_dict(), twin.state_dict(), "weights after 5 more steps")


def test_fresh_optimizer_gets_no_state_from_the_sweep():
    model = small_model()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    lr_range_test(model, optimizer, regression_batches(0), num_steps=20, progress=False)
    assert len(optimizer.state) == 0, "the sweep's Adam moments leaked into a fresh optimizer"
    assert optimizer.param_groups[0]["lr"] == 1e-3


def test_state_is_restored_when_the_sweep_fails():
    model = small_model()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    before = copy.deepcopy(model.state_dict())

    def batches():
        source = regression_batches(0)
        for _ in range(10):
            yield next(source)
        raise KeyboardInterrupt  # as if the user pressed Ctrl-C mid-sweep

    with pytest.raises(KeyboardInterrupt):
        lr_range_test(model, optimizer, batches(), num_steps=50, progress=False)
    assert_state_dicts_equal(model.state_dict(), before, "model.state_dict() after an interrupt")
    assert len(optimizer.state) == 0 and optimizer.param_groups[0]["lr"] == 1e-3


def test_a_scheduled_optimizer_keeps_its_schedule():
    model = small_model()
    optimizer = AdamW(model.parameters())
    schedule = partial(
        schedules.cosine_schedule, peak_lr=1e-3, num_warmup_steps=2, num_training_steps=20
    )
    scheduler = schedules.as_lambda_lr(optimizer, schedule)
    for _ in range(4):
        train_steps(model, optimizer, regression_batches(0), 1)
        scheduler.step()
    lr_range_test(model, optimizer, regression_batches(1), num_steps=20, progress=False)
    assert optimizer.param_groups[0]["lr"] == schedule(4)
    train_steps(model, optimizer, regression_batches(0), 1)
    scheduler.step()
    assert optimizer.param_groups[0]["lr"] == schedule(5)


# --- suggestions ----------------------------------------------------------------------------


def synthetic_result(smoothed, lrs, smoothing=0.0):
    return RangeTestResult(
        lrs=list(lrs), losses=list(smoothed), smoothed_losses=list(smoothed), smoothing=smoothing
    )


def test_suggestion_rules_on_a_known_curve():
    # Falls fastest at lr = 1e-3 (the tanh's centre), lowest near 3e-2, then rises steeply.
    lrs = sweep_rates(1e-6, 1.0, 121)
    u = [math.log10(lr) for lr in lrs]
    curve = [1 - math.tanh(2 * (x + 3)) + 0.5 * math.exp(4 * (x + 1.5)) for x in u]
    result = synthetic_result(curve, lrs)
    best = min(range(len(curve)), key=curve.__getitem__)
    assert result.min_loss_lr == lrs[best]
    assert result.suggest("min/10") == lrs[best] / 10
    assert result.suggested_lr == lrs[best] / 10, "the default rule is min/10"
    assert result.suggested_lr < result.suggest("steepest") < result.min_loss_lr
    steepest = result.suggest("steepest")
    assert abs(math.log10(steepest) + 3) <= 0.06, (
        f"the curve falls fastest at lr = 1e-3; 'steepest' suggested {steepest:.3g}"
    )
    assert set(RULES) == {"min/10", "steepest"}


def test_steepest_ignores_single_step_noise():
    # A slow descent centred on 1e-2, plus a one-step dip early on that a per-step slope would pick.
    lrs = sweep_rates(1e-5, 1.0, 201)
    curve = [1 - 0.5 * math.tanh(math.log10(lr) + 2) for lr in lrs]
    curve[30] -= 0.05
    steepest = synthetic_result(curve, lrs).suggest("steepest")
    assert abs(math.log10(steepest) + 2) <= 0.2, f"suggested {steepest:.3g}, expected about 1e-2"


def test_a_loss_that_never_falls_suggests_the_start():
    lrs = sweep_rates(1e-5, 1e-1, 40)
    rising = [1.0 + i for i in range(40)]
    result = synthetic_result(rising, lrs, smoothing=0.9)
    assert result.suggest("steepest") == 1e-5
    assert math.isclose(result.suggest("min/10"), 1e-6, rel_tol=1e-12)


def test_an_empty_result_says_why_it_has_no_minimum():
    with pytest.raises(ValueError, match="recorded no step"):
        RangeTestResult().min_loss_lr  # noqa: B018


def test_plot_labels_its_axes():
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    lrs = sweep_rates(1e-5, 1.0, 50)
    result = synthetic_result([1 / (1 + i) for i in range(50)], lrs)
    result.divergence_lr = 1.0
    ax = Figure().subplots()
    result.plot(ax)
    assert ax.get_xlabel() == "learning rate" and ax.get_ylabel() == "training loss"
    assert ax.get_xscale() == "log"


# --- bad arguments --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"start_lr": 0.0}, "start_lr"),
        ({"start_lr": -1e-3}, "start_lr"),
        ({"start_lr": math.nan}, "start_lr"),
        ({"end_lr": math.inf}, "end_lr"),
        ({"start_lr": 1e-2, "end_lr": 1e-3}, "end_lr"),
        ({"start_lr": 1e-2, "end_lr": 1e-2}, "end_lr"),
        ({"num_steps": 1}, "num_steps"),
        ({"num_steps": 0}, "num_steps"),
        ({"smoothing": 1.0}, "smoothing"),
        ({"smoothing": -0.1}, "smoothing"),
        ({"diverge_threshold": 1.0}, "diverge_threshold"),
        ({"diverge_threshold": 0.5}, "diverge_threshold"),
        ({"rule": "steep"}, "rule"),
    ],
)
def test_bad_arguments_raise_value_error_naming_the_argument(kwargs, name):
    model = small_model()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(ValueError, match=rf"Invalid {name}\b"):
        lr_range_test(model, optimizer, regression_batches(0), progress=False, **kwargs)
    assert_state_dicts_equal(model.state_dict(), before, "model.state_dict()")
    assert len(optimizer.state) == 0


@pytest.mark.parametrize(
    ("args", "kwargs", "name"),
    [
        (("not a model", None), {}, "model"),
        ((None, "not an optimizer"), {}, "optimizer"),
        ((None, None), {"num_steps": 2.5}, "num_steps"),
        ((None, None), {"start_lr": "1e-3"}, "start_lr"),
    ],
)
def test_wrong_types_raise_type_error_naming_the_argument(args, kwargs, name):
    model = small_model()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    model_arg = model if args[0] is None else args[0]
    optimizer_arg = optimizer if args[1] is None else args[1]
    with pytest.raises(TypeError, match=rf"^{name}\b"):
        lr_range_test(model_arg, optimizer_arg, regression_batches(0), progress=False, **kwargs)


def test_suggest_rejects_an_unknown_rule():
    result = synthetic_result([3.0, 2.0, 1.0], sweep_rates(1e-3, 1e-1, 3))
    with pytest.raises(ValueError, match=r"Invalid rule: 'valley'"):
        result.suggest("valley")


def test_a_loss_below_zero_stops_only_when_it_is_not_finite():
    theta = nn.Parameter(torch.zeros((), dtype=torch.float64))
    model = nn.Module()
    model.theta = theta
    model.forward = lambda x: theta.expand(len(x))
    batches = iter(lambda: (torch.zeros(1), torch.zeros(1)), None)
    result = lr_range_test(
        model, torch.optim.SGD([theta], lr=0.1), batches, start_lr=1e-3, end_lr=1.0,
        num_steps=30, loss_fn=lambda p, _y: p.mean(), progress=False,
    )  # fmt: skip
    assert not result.diverged and len(result.lrs) == 30

"""Tests for course_lib.schedules and course_lib.schedule_explorer.

The convention under test (course_lib.schedules' docstring): lr(s) is the rate used for update
s + 1; warmup is peak * s / W for s < W; a decay is at the peak at s = W and at its floor at
s = T - 1; past the end it holds its last value. Each schedule is checked at its boundaries
against hand-computed numbers, by hypothesis for its invariants, against torch's own
schedulers over a real run, and against the formulas of Hugging Face transformers.
"""

from __future__ import annotations

import itertools
import json
import math
import pickle
import re
import shutil
import subprocess
import warnings
from functools import partial

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from course_lib import schedule_explorer as X
from course_lib import schedules as S

PROPERTY_SETTINGS = settings(max_examples=150, deadline=None)


def assert_same_rates(actual, expected, what, rel=1e-12):
    """Compare two rate sequences step by step; name the first step that differs."""
    assert len(actual) == len(expected), f"{what}: {len(actual)} rates, expected {len(expected)}"
    for step, (a, e) in enumerate(zip(actual, expected, strict=True)):
        assert math.isclose(a, e, rel_tol=rel, abs_tol=1e-15), (
            f"{what}: at step {step} the rate is {a!r}, expected {e!r}"
        )


def rates_over_run(make, num_steps):
    """The rate read from param_groups[0] before each update of a real run of a tiny model.

    ``make(params)`` returns ``(optimizer, scheduler)``. The run follows torch's protocol
    (optimizer.step() then scheduler.step()) with every warning turned into an error.
    """
    param = torch.nn.Parameter(torch.tensor([1.0, -2.0], dtype=torch.float64))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        optimizer, scheduler = make([param])
        rates = []
        for _ in range(num_steps):
            rates.append(optimizer.param_groups[0]["lr"])
            optimizer.zero_grad()
            (param**2).sum().backward()
            optimizer.step()
            scheduler.step()
    return rates


# --- the convention, on the issue's example --------------------------------------------------


def test_warmup_cosine_convention_on_the_issue_example():
    lr = partial(
        S.cosine_schedule,
        peak_lr=3e-4,
        num_warmup_steps=2000,
        num_training_steps=100_000,
        min_lr=1e-5,
    )
    assert lr(0) == 0.0, "lr(0) is the first update's rate: the linear warmup starts at 0"
    assert lr(1) == pytest.approx(3e-4 / 2000, rel=1e-12)
    assert lr(1999) == pytest.approx(3e-4 * 1999 / 2000, rel=1e-12)
    assert lr(2000) == 3e-4, "the first decay step is the peak"
    assert 1e-5 < lr(2001) < 3e-4
    assert 1e-5 < lr(99_998) < 1e-5 * 1.0001
    assert lr(99_999) == 1e-5, "the last of 100000 updates (s = 99999) is at the floor"
    assert lr(100_000) == lr(10**9) == 1e-5, "past the end the rate stays at the floor"


# --- boundary values of every schedule, computed by hand --------------------------------------

R2 = math.sqrt(2.0)
COS_ONE_HUNDREDTH = (1 + math.cos(0.01 * math.pi)) / 2

BOUNDARIES = {
    "linear_warmup from 0.4": (
        partial(S.linear_warmup, peak_lr=2.0, num_warmup_steps=4, start_lr=0.4),
        {0: 0.4, 1: 0.8, 3: 1.6, 4: 2.0, 5: 2.0, 10**6: 2.0},
    ),
    "cosine_warmup": (
        partial(S.cosine_warmup, peak_lr=2.0, num_warmup_steps=4),
        {0: 0.0, 1: 1 - R2 / 2, 2: 1.0, 3: 1 + R2 / 2, 4: 2.0, 99: 2.0},
    ),
    "exponential_warmup (t = s + 1)": (
        partial(S.exponential_warmup, peak_lr=1.0, beta2=0.99),
        {0: 1 - math.exp(-0.01), 99: 1 - math.exp(-1.0), 199: 1 - math.exp(-2.0)},
    ),
    "untuned_linear_warmup (t = s + 1)": (
        partial(S.untuned_linear_warmup, peak_lr=1.0, beta2=0.999),
        {0: 0.0005, 999: 0.5, 1998: 0.9995, 1999: 1.0, 5000: 1.0},
    ),
    "constant with warmup": (
        partial(S.constant_schedule, peak_lr=1.0, num_warmup_steps=10),
        {0: 0.0, 9: 0.9, 10: 1.0, 10**9: 1.0},
    ),
    "constant without warmup": (partial(S.constant_schedule, peak_lr=0.5), {0: 0.5, 7: 0.5}),
    "linear to a floor": (
        partial(
            S.linear_schedule, peak_lr=1.0, num_warmup_steps=10, num_training_steps=111, min_lr=0.1
        ),
        {0: 0.0, 9: 0.9, 10: 1.0, 11: 0.991, 60: 0.55, 109: 0.109, 110: 0.1, 111: 0.1, 10**6: 0.1},
    ),
    "linear to zero, no warmup": (
        partial(S.linear_schedule, peak_lr=2.0, num_warmup_steps=0, num_training_steps=5),
        {0: 2.0, 1: 1.5, 2: 1.0, 3: 0.5, 4: 0.0, 5: 0.0},
    ),
    "cosine to a floor": (
        partial(
            S.cosine_schedule, peak_lr=1.0, num_warmup_steps=10, num_training_steps=111, min_lr=0.1
        ),
        {
            0: 0.0,
            9: 0.9,
            10: 1.0,
            11: 0.1 + 0.9 * COS_ONE_HUNDREDTH,
            60: 0.55,
            109: 0.1 + 0.9 * (1 - COS_ONE_HUNDREDTH),
            110: 0.1,
            500: 0.1,
        },
    ),
    "cosine with cosine warmup from 0.2": (
        partial(
            S.cosine_schedule,
            peak_lr=1.0,
            num_warmup_steps=4,
            num_training_steps=9,
            warmup="cosine",
            warmup_start_lr=0.2,
        ),
        {0: 0.2, 2: 0.6, 4: 1.0, 6: 0.5, 8: 0.0},
    ),
    "cosine, warmup 'none' holds the peak": (
        partial(
            S.cosine_schedule, peak_lr=1.0, num_warmup_steps=4, num_training_steps=9, warmup="none"
        ),
        {0: 1.0, 3: 1.0, 4: 1.0, 6: 0.5, 8: 0.0},
    ),
    "inverse sqrt, timescale = W": (
        partial(S.inverse_sqrt_schedule, peak_lr=1.0, num_warmup_steps=4),
        {0: 0.0, 3: 0.75, 4: 1.0, 8: math.sqrt(0.5), 16: 0.5, 10**6: math.sqrt(4 / 10**6)},
    ),
    "inverse sqrt, no warmup: timescale 10000": (
        partial(S.inverse_sqrt_schedule, peak_lr=1.0, num_warmup_steps=0),
        {0: 1.0, 10_000: 1 / R2, 30_000: 0.5},
    ),
    "inverse sqrt, timescale 100": (
        partial(S.inverse_sqrt_schedule, peak_lr=1.0, num_warmup_steps=4, timescale=100),
        {4: 1.0, 104: 1 / R2, 304: 0.5},
    ),
    "transformer (step_num = s + 1)": (
        partial(S.transformer_schedule, d_model=512, num_warmup_steps=4000),
        {
            0: 512**-0.5 * 4000**-1.5,
            3998: 512**-0.5 * 3999 * 4000**-1.5,
            3999: (512 * 4000) ** -0.5,
            4000: (512 * 4001) ** -0.5,
            15_999: (512 * 16_000) ** -0.5,
        },
    ),
    "step decay with warmup": (
        partial(S.step_decay_schedule, peak_lr=1.0, step_size=3, gamma=0.5, num_warmup_steps=2),
        {0: 0.0, 1: 0.5, 2: 1.0, 4: 1.0, 5: 0.5, 7: 0.5, 8: 0.25, 32: 0.5**10},
    ),
    "wsd, linear cooldown": (
        # T = 110, D = round(0.2 * 110) = 22: cooldown s = 88..109, p = (s - 87) / 22
        partial(
            S.wsd_schedule, peak_lr=1.0, num_warmup_steps=10, num_training_steps=110, min_lr=0.0
        ),
        {0: 0.0, 9: 0.9, 10: 1.0, 87: 1.0, 88: 1 - 1 / 22, 98: 0.5, 109: 0.0, 500: 0.0},
    ),
    "wsd, 1-sqrt cooldown to a floor": (
        partial(
            S.wsd_schedule,
            peak_lr=1.0,
            num_warmup_steps=10,
            num_training_steps=110,
            cooldown="1-sqrt",
            min_lr=0.2,
        ),
        {10: 1.0, 87: 1.0, 98: 0.2 + 0.8 * (1 - math.sqrt(0.5)), 109: 0.2, 110: 0.2},
    ),
    "wsd, cosine cooldown": (
        partial(
            S.wsd_schedule,
            peak_lr=1.0,
            num_warmup_steps=0,
            num_training_steps=110,
            cooldown="cosine",
        ),
        {0: 1.0, 87: 1.0, 98: 0.5, 109: 0.0},
    ),
    "wsd, cooldown steps rounded to nearest": (
        # D = round(0.37 * 10) = 4 (not 3): cooldown s = 6..9, p = (s - 5) / 4
        partial(
            S.wsd_schedule,
            peak_lr=1.0,
            num_warmup_steps=0,
            num_training_steps=10,
            cooldown_fraction=0.37,
        ),
        {5: 1.0, 6: 0.75, 7: 0.5, 9: 0.0},
    ),
    "wsd without cooldown stays at the peak": (
        partial(
            S.wsd_schedule,
            peak_lr=1.0,
            num_warmup_steps=2,
            num_training_steps=10,
            cooldown_fraction=0.0,
        ),
        {0: 0.0, 1: 0.5, 2: 1.0, 9: 1.0, 50: 1.0},
    ),
    "one-cycle, torch defaults": (
        # phase ends 0.3 * 100 - 1 = 29 and 99; initial 1/25, final 1/25/1e4
        partial(S.one_cycle_schedule, peak_lr=1.0, num_training_steps=100),
        {0: 0.04, 29: 1.0, 64: (1 + 4e-6) / 2, 99: 4e-6, 1000: 4e-6},
    ),
    "one-cycle, three phases, linear": (
        partial(
            S.one_cycle_schedule,
            peak_lr=1.0,
            num_training_steps=100,
            anneal="linear",
            three_phase=True,
        ),
        {0: 0.04, 29: 1.0, 58: 0.04, 99: 4e-6, 300: 4e-6},
    ),
    "cosine restarts, doubling cycles": (
        partial(S.cosine_restarts_schedule, peak_lr=1.0, cycle_steps=4, cycle_mult=2),
        {0: 1.0, 2: 0.5, 3: (1 + math.cos(0.75 * math.pi)) / 2, 4: 1.0, 8: 0.5, 12: 1.0, 28: 1.0},
    ),
    "cosine restarts, equal cycles after warmup": (
        partial(
            S.cosine_restarts_schedule, peak_lr=1.0, cycle_steps=4, min_lr=0.2, num_warmup_steps=2
        ),
        {0: 0.0, 1: 0.5, 2: 1.0, 4: 0.6, 6: 1.0, 10**6 + 4: 0.6},
    ),
}


@pytest.mark.parametrize("name", list(BOUNDARIES))
def test_boundary_values(name):
    schedule, expected = BOUNDARIES[name]
    for step, value in expected.items():
        assert schedule(step) == pytest.approx(value, rel=1e-12, abs=1e-15), (
            f"{name}: lr({step}) should be {value!r}, got {schedule(step)!r}"
        )


@pytest.mark.parametrize("name", list(BOUNDARIES))
def test_schedules_pickle(name):
    schedule, expected = BOUNDARIES[name]
    restored = pickle.loads(pickle.dumps(schedule))
    assert [restored(s) for s in expected] == [schedule(s) for s in expected]


@pytest.mark.parametrize("cooldown_steps", [1, 2, 3, 7])
def test_wsd_cooldown_counts_the_updates_below_the_peak(cooldown_steps):
    # D = round(cooldown_fraction * T) updates are lowered, s = T - D .. T - 1, as W counts
    # the warmup's: a line that left the peak at T - D would lower only D - 1 (D = 1 and 2
    # the same schedule). The schedules exercise follows this convention.
    lr = partial(
        S.wsd_schedule,
        peak_lr=1.0,
        num_warmup_steps=1,
        num_training_steps=10,
        cooldown_fraction=cooldown_steps / 10,
    )
    rates = [lr(s) for s in range(10)]
    assert rates[1 : 10 - cooldown_steps] == [1.0] * (9 - cooldown_steps), rates
    assert all(rate < 1.0 for rate in rates[10 - cooldown_steps :]), rates
    assert rates[-1] == 0.0 and rates[-2] == pytest.approx(1 / cooldown_steps), rates


def test_transformer_is_inverse_sqrt_one_update_earlier():
    d_model, warmup = 512, 4000
    paper = partial(S.transformer_schedule, d_model=d_model, num_warmup_steps=warmup)
    hf_form = partial(
        S.inverse_sqrt_schedule, peak_lr=(d_model * warmup) ** -0.5, num_warmup_steps=warmup
    )
    for step in [0, 1, 1000, 3998, 3999, 4000, 4001, 10**5]:
        assert paper(step) == pytest.approx(hf_form(step + 1), rel=1e-12)
        # Vaswani et al., eq. (3), with step_num = step + 1
        step_num = step + 1
        vaswani = d_model**-0.5 * min(step_num**-0.5, step_num * warmup**-1.5)
        assert paper(step) == pytest.approx(vaswani, rel=1e-12)
    assert max(range(3990, 4010), key=paper) == warmup - 1


def test_untuned_warmup_is_linear_warmup_over_two_over_one_minus_beta2():
    assert S.untuned_warmup_steps(0.999) == 2000
    assert S.untuned_warmup_steps(0.99) == 200
    assert S.untuned_warmup_steps(0.98) == 100
    untuned = partial(S.untuned_linear_warmup, peak_lr=3e-4, beta2=0.999)
    linear = partial(S.linear_warmup, peak_lr=3e-4, num_warmup_steps=2000)
    for step in range(0, 2100, 7):
        assert untuned(step) == pytest.approx(linear(step + 1), rel=1e-12)


# --- composition ---------------------------------------------------------------------------


RUN = {"peak_lr": 1e-3, "num_warmup_steps": 50, "num_training_steps": 400, "min_lr": 1e-5}


@pytest.mark.parametrize("shape", ["linear", "cosine"])
def test_with_warmup_in_front_of_a_held_peak_is_the_built_in_warmup(shape):
    ramp = {"linear": S.linear_warmup, "cosine": S.cosine_warmup}[shape]
    built_in = partial(S.cosine_schedule, **RUN, warmup=shape)
    composed = partial(
        S.with_warmup,
        warmup=partial(ramp, peak_lr=RUN["peak_lr"], num_warmup_steps=RUN["num_warmup_steps"]),
        schedule=partial(S.cosine_schedule, **RUN, warmup="none"),
    )
    assert [composed(s) for s in range(450)] == [built_in(s) for s in range(450)]
    assert pickle.loads(pickle.dumps(composed))(30) == built_in(30)


def test_exponential_warmup_hands_over_smoothly_to_a_decay():
    peak, floor, total, beta2 = 1e-3, 1e-5, 20_000, 0.999
    lr = partial(
        S.with_warmup,
        warmup=partial(S.exponential_warmup, peak_lr=peak, beta2=beta2),
        schedule=partial(
            S.cosine_schedule,
            peak_lr=peak,
            num_warmup_steps=0,
            num_training_steps=total,
            min_lr=floor,
        ),
    )
    rates = [lr(s) for s in range(total + 10)]
    assert rates[0] == pytest.approx(peak * (1 - math.exp(-(1 - beta2))), rel=1e-12)
    assert max(rates) < peak
    assert rates[total - 1] == floor and rates[-1] == floor
    # no jump larger than the steepest step of either part: (1 - beta2) * peak for the
    # exponential, pi / 2 * (peak - floor) / (T - 1) for the cosine
    largest_jump = max(abs(b - a) for a, b in itertools.pairwise(rates))
    assert largest_jump <= peak * (1 - beta2) * 1.0001
    # it rises, then falls once: a single maximum
    top = rates.index(max(rates))
    assert all(a <= b for a, b in itertools.pairwise(rates[: top + 1]))
    assert all(a >= b for a, b in itertools.pairwise(rates[top:]))


def test_make_schedule_binds_and_checks():
    lr = S.make_schedule("cosine", **RUN)
    assert isinstance(lr, partial) and lr.func is S.cosine_schedule
    assert lr(RUN["num_warmup_steps"]) == RUN["peak_lr"]
    assert set(S.SCHEDULES) >= {"cosine", "linear", "wsd", "one_cycle", "cosine_restarts"}
    with pytest.raises(ValueError, match=r"Invalid min_lr"):
        S.make_schedule("cosine", **{**RUN, "min_lr": 1.0})
    with pytest.raises(ValueError, match=r"Invalid name: 'cosin'.*'cosine'"):
        S.make_schedule("cosin", **RUN)


# --- properties ----------------------------------------------------------------------------


@st.composite
def decaying_runs(draw):
    """A schedule that decays to a floor, its hyperparameters, and the largest decay step."""
    total = draw(st.integers(2, 300_000))
    warmup = draw(st.integers(0, total - 2))
    peak = draw(st.floats(1e-7, 10.0))
    floor = peak * draw(st.sampled_from([0.0, 0.01, 1.0]) | st.floats(0.0, 1.0))
    start = peak * draw(st.sampled_from([0.0, 1.0]) | st.floats(0.0, 1.0))
    shape = draw(st.sampled_from(S.WARMUP_SHAPES))
    kind = draw(st.sampled_from(["linear", "cosine", "wsd-linear", "wsd-cosine", "wsd-1-sqrt"]))
    common = {
        "peak_lr": peak,
        "num_warmup_steps": warmup,
        "num_training_steps": total,
        "min_lr": floor,
        "warmup": shape,
        "warmup_start_lr": start,
    }
    if kind == "linear":
        schedule, slope = partial(S.linear_schedule, **common), 1.0
    elif kind == "cosine":
        schedule, slope = partial(S.cosine_schedule, **common), math.pi / 2
    else:
        cooldown_steps = draw(st.integers(1, total - 1 - warmup))
        schedule = partial(
            S.wsd_schedule,
            **common,
            cooldown_fraction=cooldown_steps / total,
            cooldown=kind.removeprefix("wsd-"),
        )
        slope = None  # the stable phase follows the warmup; 1-sqrt is steep at its start
    steps = draw(st.lists(st.integers(0, 2 * total), max_size=25))
    return schedule, common, slope, steps


@PROPERTY_SETTINGS
@given(decaying_runs())
def test_decays_stay_between_floor_and_peak_and_are_monotone(run):
    schedule, p, _, steps = run
    peak, floor, warmup = p["peak_lr"], p["min_lr"], p["num_warmup_steps"]
    total = p["num_training_steps"]
    edges = [0, warmup - 1, warmup, warmup + 1, total - 2, total - 1, total, 2 * total]
    for s in [s for s in edges + steps if s >= 0]:
        rate, following = schedule(s), schedule(s + 1)
        assert 0.0 <= rate <= peak, f"lr({s}) = {rate} outside [0, peak {peak}]"
        if s >= warmup:
            assert rate >= floor, f"lr({s}) = {rate} below the floor {floor}"
            assert following <= rate, f"rises after the warmup: lr({s}) = {rate} < {following}"
        elif s + 1 <= warmup:
            assert following >= rate, f"falls during the warmup: lr({s}) = {rate} > {following}"
    assert schedule(total - 1) == floor, "the last update is not at the floor"
    assert schedule(total) == schedule(10 * total) == floor, "past the end is not the floor"


@PROPERTY_SETTINGS
@given(decaying_runs())
def test_decays_are_continuous_at_the_end_of_warmup(run):
    schedule, p, slope, _ = run
    peak, warmup, start = p["peak_lr"], p["num_warmup_steps"], p["warmup_start_lr"]
    assert schedule(warmup) == peak, "the first step after the warmup must be the peak"
    tolerance = 1e-12 * peak
    if warmup > 0:
        # the last warmup step is one ramp step below the peak: at most pi/2 * (peak - start) / W
        last_ramp_step = peak - schedule(warmup - 1)
        assert -tolerance <= last_ramp_step <= math.pi / 2 * (peak - start) / warmup + tolerance
        first = schedule(0)
        assert first == (peak if p["warmup"] == "none" else pytest.approx(start, abs=tolerance))
    if slope is not None:
        decay_steps = p["num_training_steps"] - 1 - warmup
        first_decay_step = peak - schedule(warmup + 1)
        bound = slope * (peak - p["min_lr"]) / decay_steps
        assert -tolerance <= first_decay_step <= bound + tolerance


@PROPERTY_SETTINGS
@given(
    peak=st.floats(1e-6, 1.0),
    warmup=st.integers(0, 5000),
    timescale=st.integers(1, 10**5),
    step_size=st.integers(1, 1000),
    gamma=st.floats(0.01, 1.0),
    steps=st.lists(st.integers(0, 10**7), min_size=1, max_size=20),
)
def test_inverse_sqrt_and_step_decay_never_rise_after_the_peak(
    peak, warmup, timescale, step_size, gamma, steps
):
    for schedule in [
        partial(
            S.inverse_sqrt_schedule, peak_lr=peak, num_warmup_steps=warmup, timescale=timescale
        ),
        partial(
            S.step_decay_schedule,
            peak_lr=peak,
            num_warmup_steps=warmup,
            step_size=step_size,
            gamma=gamma,
        ),
    ]:
        assert schedule(warmup) == peak
        for s in steps:
            assert 0.0 <= schedule(s) <= peak
            if s >= warmup:
                assert schedule(s + 1) <= schedule(s)


@PROPERTY_SETTINGS
@given(
    peak=st.floats(1e-6, 1.0),
    floor_fraction=st.floats(0.0, 1.0),
    cycle=st.integers(1, 500),
    mult=st.integers(1, 3),
    warmup=st.integers(0, 100),
    steps=st.lists(st.integers(0, 10**6), min_size=1, max_size=20),
)
def test_cosine_restarts_restart_at_the_peak(peak, floor_fraction, cycle, mult, warmup, steps):
    floor = peak * floor_fraction
    lr = partial(
        S.cosine_restarts_schedule,
        peak_lr=peak,
        cycle_steps=cycle,
        cycle_mult=mult,
        min_lr=floor,
        num_warmup_steps=warmup,
    )
    start, length = warmup, cycle
    for _ in range(5):  # each cycle starts at the peak and falls until the next one
        assert lr(start) == peak
        assert lr(start + length - 1) <= lr(start)
        start, length = start + length, length * mult
    for s in steps:
        assert (floor if s >= warmup else 0.0) <= lr(s) <= peak


@PROPERTY_SETTINGS
@given(
    total=st.integers(50, 100_000),
    pct=st.floats(0.05, 0.45),
    three_phase=st.booleans(),
    anneal=st.sampled_from(S.ONE_CYCLE_ANNEALS),
)
def test_one_cycle_rises_to_the_peak_then_falls_to_the_final_rate(total, pct, three_phase, anneal):
    lr = partial(
        S.one_cycle_schedule,
        peak_lr=1.0,
        num_training_steps=total,
        pct_start=pct,
        three_phase=three_phase,
        anneal=anneal,
    )
    top = math.floor(pct * total - 1)
    stride = max(1, total // 200)
    rising = [lr(s) for s in range(0, top + 1, stride)] + [lr(top)]
    falling = [lr(s) for s in range(top + 1, total, stride)] + [lr(total - 1)]
    assert all(a <= b for a, b in itertools.pairwise(rising))
    if not three_phase:
        assert all(a >= b for a, b in itertools.pairwise(falling))
    assert max(rising + falling) <= 1.0
    assert min(rising + falling) >= lr(total - 1) == 1.0 / 25 / 1e4


# --- equality with torch's schedulers over a real run -----------------------------------------


@pytest.mark.parametrize(("warmup", "total", "start_factor"), [(10, 60, 0.1), (1, 8, 1e-8)])
def test_linearlr_then_cosineannealinglr_in_sequentiallr(warmup, total, start_factor):
    """The exact torch equivalent of cosine_schedule.

    LinearLR(start_factor=f, total_iters=W) is the linear ramp from warmup_start_lr = f * peak
    (torch needs f > 0, so our default start of 0 is only approached). CosineAnnealingLR
    reaches eta_min at its T_max-th step, so T_max = T - 1 - W puts the floor on the last
    update, s = T - 1, as this course's convention does.
    """
    peak, floor = 0.5, 0.01

    def make(params):
        optimizer = torch.optim.SGD(params, lr=peak)
        warm = torch.optim.lr_scheduler.LinearLR(
            optimizer, start_factor=start_factor, end_factor=1.0, total_iters=warmup
        )
        decay = torch.optim.lr_scheduler.CosineAnnealingLR(
            optimizer, T_max=total - 1 - warmup, eta_min=floor
        )
        sequence = torch.optim.lr_scheduler.SequentialLR(
            optimizer, [warm, decay], milestones=[warmup]
        )
        return optimizer, sequence

    ours = partial(
        S.cosine_schedule,
        peak_lr=peak,
        num_warmup_steps=warmup,
        num_training_steps=total,
        min_lr=floor,
        warmup_start_lr=start_factor * peak,
    )
    assert_same_rates(rates_over_run(make, total), [ours(s) for s in range(total)], "torch")


def test_the_usual_t_max_is_one_step_longer():
    """Off by one: the way it is usually written, CosineAnnealingLR(T_max=T - W), reaches the
    floor at s = T, one step after the last of T updates: that is cosine_schedule with
    num_training_steps = T + 1, and its last update (s = T - 1) is still above the floor."""
    peak, floor, warmup, total = 0.5, 0.01, 10, 60

    def make(params):
        optimizer = torch.optim.SGD(params, lr=peak)
        warm = torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=0.1, total_iters=warmup)
        decay = torch.optim.lr_scheduler.CosineAnnealingLR(
            optimizer, T_max=total - warmup, eta_min=floor
        )
        return optimizer, torch.optim.lr_scheduler.SequentialLR(
            optimizer, [warm, decay], milestones=[warmup]
        )

    def ours(num_training_steps):
        return partial(
            S.cosine_schedule,
            peak_lr=peak,
            num_warmup_steps=warmup,
            num_training_steps=num_training_steps,
            min_lr=floor,
            warmup_start_lr=0.1 * peak,
        )

    torch_rates = rates_over_run(make, total)
    assert_same_rates(torch_rates, [ours(total + 1)(s) for s in range(total)], "T_max = T - W")
    assert torch_rates[-1] > floor == ours(total)(total - 1)


@pytest.mark.parametrize(("step_size", "gamma"), [(7, 0.5), (1, 0.9), (100, 0.1)])
def test_steplr(step_size, gamma):
    def make(params):
        optimizer = torch.optim.SGD(params, lr=0.3)
        return optimizer, torch.optim.lr_scheduler.StepLR(optimizer, step_size, gamma=gamma)

    ours = partial(S.step_decay_schedule, peak_lr=0.3, step_size=step_size, gamma=gamma)
    assert_same_rates(rates_over_run(make, 60), [ours(s) for s in range(60)], "StepLR")


@pytest.mark.parametrize(
    ("total", "pct", "anneal", "three_phase"),
    [(100, 0.3, "cos", False), (101, 0.25, "linear", False), (90, 0.3, "cos", True)],
)
def test_onecyclelr(total, pct, anneal, three_phase):
    def make(params):
        optimizer = torch.optim.Adam(params, lr=1.0)
        scheduler = torch.optim.lr_scheduler.OneCycleLR(
            optimizer,
            max_lr=0.01,
            total_steps=total,
            pct_start=pct,
            anneal_strategy=anneal,
            div_factor=20.0,
            final_div_factor=100.0,
            three_phase=three_phase,
        )
        return optimizer, scheduler

    ours = partial(
        S.one_cycle_schedule,
        peak_lr=0.01,
        num_training_steps=total,
        pct_start=pct,
        anneal=anneal,
        div_factor=20.0,
        final_div_factor=100.0,
        three_phase=three_phase,
    )
    assert_same_rates(rates_over_run(make, total), [ours(s) for s in range(total)], "OneCycleLR")


@pytest.mark.parametrize(("cycle", "mult", "floor"), [(10, 1, 0.0), (5, 2, 0.001), (3, 3, 0.01)])
def test_cosineannealingwarmrestarts(cycle, mult, floor):
    def make(params):
        optimizer = torch.optim.SGD(params, lr=0.1)
        scheduler = torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(
            optimizer, T_0=cycle, T_mult=mult, eta_min=floor
        )
        return optimizer, scheduler

    ours = partial(
        S.cosine_restarts_schedule, peak_lr=0.1, cycle_steps=cycle, cycle_mult=mult, min_lr=floor
    )
    steps = 120
    assert_same_rates(rates_over_run(make, steps), [ours(s) for s in range(steps)], "restarts")


# --- equality with Hugging Face transformers' formulas ---------------------------------------
# transformers is not a dependency. These are the lr_lambda multipliers of
# src/transformers/optimization.py (transformers v4.5x), copied formula for formula:
# _get_linear_schedule_with_warmup_lr_lambda, _get_cosine_schedule_with_warmup_lr_lambda (which
# with min_lr_rate is get_cosine_with_min_lr_schedule_with_warmup), _get_inverse_sqrt_schedule_
# lr_lambda (timescale defaults to num_warmup_steps or 10_000) and _get_wsd_scheduler_lambda.
# Their decays reach the floor at current_step = num_training_steps, one step after ours.


def hf_linear(current_step, *, num_warmup_steps, num_training_steps):
    if current_step < num_warmup_steps:
        return float(current_step) / float(max(1, num_warmup_steps))
    return max(
        0.0,
        float(num_training_steps - current_step)
        / float(max(1, num_training_steps - num_warmup_steps)),
    )


def hf_cosine(
    current_step, *, num_warmup_steps, num_training_steps, num_cycles=0.5, min_lr_rate=0.0
):
    if current_step < num_warmup_steps:
        return float(current_step) / float(max(1, num_warmup_steps))
    progress = float(current_step - num_warmup_steps) / float(
        max(1, num_training_steps - num_warmup_steps)
    )
    factor = 0.5 * (1.0 + math.cos(math.pi * float(num_cycles) * 2.0 * progress))
    factor = factor * (1 - min_lr_rate) + min_lr_rate
    return max(0, factor)


def hf_inverse_sqrt(current_step, *, num_warmup_steps, timescale=None):
    if timescale is None:
        timescale = num_warmup_steps or 10_000
    if current_step < num_warmup_steps:
        return float(current_step) / float(max(1, num_warmup_steps))
    shift = timescale - num_warmup_steps
    return 1.0 / math.sqrt((current_step + shift) / timescale)


def hf_wsd(
    current_step,
    *,
    num_warmup_steps,
    num_decay_steps,
    num_training_steps,
    warmup_type="linear",
    decay_type="cosine",
    min_lr_ratio=0.0,
    num_cycles=0.5,
):
    num_stable_steps = num_training_steps - num_warmup_steps - num_decay_steps
    if current_step < num_warmup_steps:
        progress = float(current_step) / float(max(1, num_warmup_steps))
        if warmup_type == "linear":
            factor = progress
        elif warmup_type == "cosine":
            factor = 0.5 * (1.0 - math.cos(math.pi * progress))
        factor = factor * (1.0 - min_lr_ratio) + min_lr_ratio
        return max(0.0, factor)
    if current_step < num_warmup_steps + num_stable_steps:
        return 1.0
    if current_step < num_warmup_steps + num_stable_steps + num_decay_steps:
        progress = float(current_step - num_warmup_steps - num_stable_steps) / float(
            max(1, num_decay_steps)
        )
        if decay_type == "linear":
            factor = 1.0 - progress
        elif decay_type == "cosine":
            factor = 0.5 * (1.0 + math.cos(math.pi * float(num_cycles) * 2.0 * progress))
        elif decay_type == "1-sqrt":
            factor = 1.0 - math.sqrt(progress)
        factor = factor * (1.0 - min_lr_ratio) + min_lr_ratio
        return max(0.0, factor)
    return min_lr_ratio


WARMUP_AND_LENGTH = [(0, 50), (1, 50), (20, 300), (299, 301)]
PEAK = 2e-3


@pytest.mark.parametrize(("warmup", "total"), WARMUP_AND_LENGTH)
def test_hf_linear_schedule_with_warmup(warmup, total):
    ours = partial(
        S.linear_schedule, peak_lr=PEAK, num_warmup_steps=warmup, num_training_steps=total
    )
    hf = partial(hf_linear, num_warmup_steps=warmup, num_training_steps=total - 1)
    steps = range(total + 20)  # both are 0 after the end
    assert_same_rates([ours(s) for s in steps], [PEAK * hf(s) for s in steps], "HF linear")


@pytest.mark.parametrize(("warmup", "total"), WARMUP_AND_LENGTH)
@pytest.mark.parametrize("min_lr_rate", [0.0, 0.1])
def test_hf_cosine_schedules_with_warmup_and_min_lr(warmup, total, min_lr_rate):
    ours = partial(
        S.cosine_schedule,
        peak_lr=PEAK,
        num_warmup_steps=warmup,
        num_training_steps=total,
        min_lr=min_lr_rate * PEAK,
    )
    hf = partial(
        hf_cosine, num_warmup_steps=warmup, num_training_steps=total - 1, min_lr_rate=min_lr_rate
    )
    # (past its end HF's cosine turns back up; ours stays at the floor, so compare the run)
    steps = range(total)
    assert_same_rates([ours(s) for s in steps], [PEAK * hf(s) for s in steps], "HF cosine")


@pytest.mark.parametrize(("warmup", "timescale"), [(100, None), (0, None), (10, 1000), (1, 1)])
def test_hf_inverse_sqrt_schedule(warmup, timescale):
    ours = partial(
        S.inverse_sqrt_schedule, peak_lr=PEAK, num_warmup_steps=warmup, timescale=timescale
    )
    hf = partial(hf_inverse_sqrt, num_warmup_steps=warmup, timescale=timescale)
    steps = [*range(300), 10**4, 10**6]
    assert_same_rates([ours(s) for s in steps], [PEAK * hf(s) for s in steps], "HF inverse sqrt")


@pytest.mark.parametrize("decay_type", S.COOLDOWN_SHAPES)
@pytest.mark.parametrize("warmup_type", ["linear", "cosine"])
@pytest.mark.parametrize(
    ("warmup", "total", "fraction"), [(10, 100, 0.2), (0, 57, 0.5), (5, 40, 0.85)]
)
def test_hf_wsd_schedule(decay_type, warmup_type, warmup, total, fraction):
    min_lr_ratio = 0.05
    ours = partial(
        S.wsd_schedule,
        peak_lr=PEAK,
        num_warmup_steps=warmup,
        num_training_steps=total,
        cooldown_fraction=fraction,
        cooldown=decay_type,
        min_lr=min_lr_ratio * PEAK,
        warmup=warmup_type,
        warmup_start_lr=min_lr_ratio * PEAK,  # HF's WSD warms up from the floor
    )
    hf = partial(
        hf_wsd,
        num_warmup_steps=warmup,
        num_decay_steps=round(fraction * total),
        num_training_steps=total - 1,
        warmup_type=warmup_type,
        decay_type=decay_type,
        min_lr_ratio=min_lr_ratio,
    )
    steps = range(total + 20)
    assert_same_rates([ours(s) for s in steps], [PEAK * hf(s) for s in steps], "HF WSD")


# --- the LambdaLR adapter ---------------------------------------------------------------------

ADAPTED = partial(
    S.cosine_schedule, peak_lr=0.05, num_warmup_steps=5, num_training_steps=40, min_lr=5e-4
)


@pytest.mark.parametrize("optimizer_class", [torch.optim.SGD, torch.optim.AdamW])
def test_as_lambda_lr_sets_the_schedule_s_rate_exactly(optimizer_class):
    def make(params):
        optimizer = optimizer_class(params, lr=123.0)
        return optimizer, S.as_lambda_lr(optimizer, ADAPTED)

    rates = rates_over_run(make, 45)
    assert rates == [ADAPTED(s) for s in range(45)]  # exactly: the base rate is 1.0


def test_as_lambda_lr_drives_the_update():
    """SGD's update is -lr * grad: the parameter moves by exactly the schedule's rate."""
    param = torch.nn.Parameter(torch.zeros(1, dtype=torch.float64))
    optimizer = torch.optim.SGD([param], lr=0.1)
    scheduler = S.as_lambda_lr(optimizer, ADAPTED)
    for step in range(12):
        before = param.item()
        param.grad = torch.ones(1, dtype=torch.float64)
        optimizer.step()
        scheduler.step()
        assert before - param.item() == pytest.approx(ADAPTED(step), rel=1e-12)


def test_as_lambda_lr_one_schedule_per_group_and_tensor_rates():
    slow = partial(S.constant_schedule, peak_lr=1e-4)
    a = torch.nn.Parameter(torch.zeros(2))
    b = torch.nn.Parameter(torch.zeros(2))
    optimizer = torch.optim.Adam([{"params": [a]}, {"params": [b], "lr": torch.tensor(0.5)}])
    scheduler = S.as_lambda_lr(optimizer, [ADAPTED, slow])
    for step in range(10):
        assert optimizer.param_groups[0]["lr"] == ADAPTED(step)
        assert isinstance(optimizer.param_groups[1]["lr"], torch.Tensor)
        assert optimizer.param_groups[1]["lr"].item() == pytest.approx(1e-4, rel=1e-6)
        (a.sum() + b.sum()).backward()
        optimizer.step()
        scheduler.step()


def test_resume_from_state_dict_gives_the_same_rates(tmp_path):
    """Run 40 updates at once, or 17, save, rebuild everything from scratch, load, and 23 more:
    the rates read from the optimizer and the final weights are identical."""
    data = torch.randn(16, 3, generator=torch.Generator().manual_seed(0))
    target = data.sum(dim=1, keepdim=True)

    def fresh():
        torch.manual_seed(0)
        model = torch.nn.Linear(3, 1)
        optimizer = torch.optim.AdamW(model.parameters(), lr=0.123, weight_decay=0.01)
        return model, optimizer, S.as_lambda_lr(optimizer, ADAPTED)

    def train(model, optimizer, scheduler, num_steps):
        rates = []
        for _ in range(num_steps):
            rates.append(optimizer.param_groups[0]["lr"])
            optimizer.zero_grad()
            torch.nn.functional.mse_loss(model(data), target).backward()
            optimizer.step()
            scheduler.step()
        return rates

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model, optimizer, scheduler = fresh()
        uninterrupted = train(model, optimizer, scheduler, 40)

        first = fresh()
        before = train(*first, 17)
        torch.save(
            {
                "model": first[0].state_dict(),
                "optimizer": first[1].state_dict(),
                "scheduler": first[2].state_dict(),
            },
            tmp_path / "checkpoint.pt",
        )
        del first
        resumed = fresh()
        checkpoint = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
        resumed[0].load_state_dict(checkpoint["model"])
        resumed[1].load_state_dict(checkpoint["optimizer"])
        resumed[2].load_state_dict(checkpoint["scheduler"])
        after = train(*resumed, 23)

    assert before + after == uninterrupted, "the resumed run's rates differ"
    assert uninterrupted == [ADAPTED(s) for s in range(40)]
    for name, value in model.state_dict().items():
        assert torch.equal(value, resumed[0].state_dict()[name]), f"{name} differs after resuming"


def test_as_lambda_lr_rejects_bad_input_and_leaves_the_optimizer_alone():
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=0.1)
    bad = partial(S.cosine_schedule, **{**RUN, "min_lr": 1.0})
    with pytest.raises(ValueError, match="Invalid min_lr"):
        S.as_lambda_lr(optimizer, bad)
    with pytest.raises(ValueError, match="2 schedules for 1 parameter groups"):
        S.as_lambda_lr(optimizer, [ADAPTED, ADAPTED])
    with pytest.raises(TypeError, match="schedule 0 must be callable"):
        S.as_lambda_lr(optimizer, [0.1])
    with pytest.raises(TypeError, match="schedule must be a callable"):
        S.as_lambda_lr(optimizer, 0.1)
    with pytest.raises(TypeError, match=r"optimizer must be a torch\.optim\.Optimizer"):
        S.as_lambda_lr([param], ADAPTED)
    assert optimizer.param_groups[0]["lr"] == 0.1 and "initial_lr" not in optimizer.param_groups[0]


# --- every error path -------------------------------------------------------------------------

COSINE = partial(S.cosine_schedule, 5, **{k: v for k, v in RUN.items() if k != "min_lr"})
WSD = partial(S.wsd_schedule, 5, peak_lr=1.0, num_warmup_steps=10, num_training_steps=100)
ONE_CYCLE = partial(S.one_cycle_schedule, 5, peak_lr=1.0, num_training_steps=100)
RESTARTS = partial(S.cosine_restarts_schedule, 5, peak_lr=1.0, cycle_steps=10)
TRANSFORMER = partial(S.transformer_schedule, 5, d_model=512, num_warmup_steps=4000)
STEP_DECAY = partial(S.step_decay_schedule, 5, peak_lr=1.0, step_size=10)
INV_SQRT = partial(S.inverse_sqrt_schedule, 5, peak_lr=1.0, num_warmup_steps=10)

ERRORS = {
    "negative step": (partial(S.cosine_schedule, -1, **RUN), ValueError, r"Invalid step: -1 .*>= 0"),
    "float step": (partial(S.cosine_schedule, 3.0, **RUN), TypeError, r"step must be an integer"),
    "bool step": (partial(S.constant_schedule, True, peak_lr=1.0), TypeError, r"step must be an"),
    "zero peak": (partial(COSINE, peak_lr=0.0), ValueError, r"Invalid peak_lr: 0.0 .*0 < peak_lr"),
    "negative peak": (partial(S.linear_warmup, 0, peak_lr=-1e-3, num_warmup_steps=3), ValueError, r"Invalid peak_lr"),
    "nan peak": (partial(COSINE, peak_lr=math.nan), ValueError, r"Invalid peak_lr: nan"),
    "infinite peak": (partial(COSINE, peak_lr=math.inf), ValueError, r"peak_lr: inf .*finite"),
    "string peak": (partial(COSINE, peak_lr="3e-4"), TypeError, r"peak_lr must be a real number"),
    "floor above peak": (partial(COSINE, min_lr=2e-3), ValueError, r"Invalid min_lr: 0.002 .*min_lr <= peak_lr = 0.001"),
    "negative floor": (partial(COSINE, min_lr=-1e-5), ValueError, r"Invalid min_lr: -1e-05 .*0 <= min_lr"),
    "restart floor above peak": (partial(RESTARTS, min_lr=2.0), ValueError, r"Invalid min_lr"),
    "warmup start above peak": (partial(COSINE, warmup_start_lr=1.0), ValueError, r"Invalid warmup_start_lr: 1.0 .*<= peak_lr"),
    "ramp start above peak": (partial(S.cosine_warmup, 0, peak_lr=1.0, num_warmup_steps=3, start_lr=2.0), ValueError, r"Invalid start_lr"),
    "negative warmup": (partial(COSINE, num_warmup_steps=-1), ValueError, r"Invalid num_warmup_steps: -1"),
    "float warmup": (partial(COSINE, num_warmup_steps=10.0), TypeError, r"num_warmup_steps must be an integer"),
    "warmup longer than the run": (partial(COSINE, num_warmup_steps=500), ValueError, r"num_warmup_steps: 500 .*<= num_training_steps - 2 = 398"),
    "warmup as long as the run": (partial(S.linear_schedule, 0, peak_lr=1.0, num_warmup_steps=10, num_training_steps=10), ValueError, r"num_warmup_steps"),
    "run of one step": (partial(COSINE, num_warmup_steps=0, num_training_steps=1), ValueError, r"Invalid num_training_steps: 1 .*>= 2"),
    "float run length": (partial(COSINE, num_training_steps=1e5), TypeError, r"num_training_steps must be an integer"),
    "unknown warmup shape": (partial(COSINE, warmup="quadratic"), ValueError, r"Invalid warmup: 'quadratic' .*'linear', 'cosine', 'none'"),
    "cooldown fraction above 1": (partial(WSD, cooldown_fraction=1.5), ValueError, r"Invalid cooldown_fraction: 1.5 .*0 <= cooldown_fraction <= 1"),
    "negative cooldown fraction": (partial(WSD, cooldown_fraction=-0.1), ValueError, r"Invalid cooldown_fraction"),
    "cooldown overlaps warmup": (partial(WSD, cooldown_fraction=0.95), ValueError, r"num_warmup_steps: 10 with cooldown_fraction 0.95 \(95 cooldown"),
    "unknown cooldown": (partial(WSD, cooldown="exp"), ValueError, r"Invalid cooldown: 'exp' .*'1-sqrt'"),
    "wsd of zero steps": (partial(WSD, num_warmup_steps=0, num_training_steps=0), ValueError, r"Invalid num_training_steps: 0"),
    "beta2 of 1": (partial(S.exponential_warmup, 0, peak_lr=1.0, beta2=1.0), ValueError, r"Invalid beta2: 1.0 .*0 <= beta2 < 1"),
    "negative beta2": (partial(S.untuned_linear_warmup, 0, peak_lr=1.0, beta2=-0.1), ValueError, r"Invalid beta2"),
    "untuned steps for beta2 above 1": (partial(S.untuned_warmup_steps, 1.5), ValueError, r"Invalid beta2"),
    "zero timescale": (partial(INV_SQRT, timescale=0), ValueError, r"Invalid timescale: 0 .*>= 1"),
    "zero d_model": (partial(TRANSFORMER, d_model=0), ValueError, r"Invalid d_model: 0"),
    "transformer without warmup": (partial(TRANSFORMER, num_warmup_steps=0), ValueError, r"Invalid num_warmup_steps: 0 .*>= 1"),
    "zero scale": (partial(TRANSFORMER, scale=0.0), ValueError, r"Invalid scale"),
    "zero step size": (partial(STEP_DECAY, step_size=0), ValueError, r"Invalid step_size: 0"),
    "zero gamma": (partial(STEP_DECAY, gamma=0.0), ValueError, r"Invalid gamma: 0.0 .*0 < gamma <= 1"),
    "gamma above 1": (partial(STEP_DECAY, gamma=1.5), ValueError, r"Invalid gamma"),
    "pct_start of 0": (partial(ONE_CYCLE, pct_start=0.0), ValueError, r"Invalid pct_start: 0.0 .*1 / T < pct_start < 1"),
    "pct_start of 1 / T": (partial(ONE_CYCLE, pct_start=0.01), ValueError, r"Invalid pct_start"),
    "pct_start of 1": (partial(ONE_CYCLE, pct_start=1.0), ValueError, r"Invalid pct_start"),
    "three phases too long": (partial(ONE_CYCLE, pct_start=0.6, three_phase=True), ValueError, r"pct_start < \(T \+ 1\) / \(2 T\)"),
    "pct_start above 1": (partial(ONE_CYCLE, pct_start=1.2), ValueError, r"Invalid pct_start: 1.2"),
    "unknown anneal": (partial(ONE_CYCLE, anneal="exp"), ValueError, r"Invalid anneal: 'exp' .*'cos', 'linear'"),
    "div_factor below 1": (partial(ONE_CYCLE, div_factor=0.5), ValueError, r"Invalid div_factor: 0.5 .*1 <= div_factor"),
    "zero final_div_factor": (partial(ONE_CYCLE, final_div_factor=0.0), ValueError, r"Invalid final_div_factor"),
    "three_phase not a bool": (partial(ONE_CYCLE, three_phase="yes"), TypeError, r"three_phase must be a bool"),
    "zero cycle": (partial(RESTARTS, cycle_steps=0), ValueError, r"Invalid cycle_steps: 0"),
    "zero cycle_mult": (partial(RESTARTS, cycle_mult=0), ValueError, r"Invalid cycle_mult: 0"),
    "float cycle_mult": (partial(RESTARTS, cycle_mult=1.5), TypeError, r"cycle_mult must be an integer"),
    "with_warmup of a number": (partial(S.with_warmup, 0, warmup=0.1, schedule=ADAPTED), TypeError, r"warmup must be a schedule"),
    "with_warmup of no schedule": (partial(S.with_warmup, 0, warmup=ADAPTED, schedule=None), TypeError, r"schedule must be a callable"),
    "plot no steps": (partial(S.plot_schedules, {"a": ADAPTED}, 0), ValueError, r"Invalid num_steps: 0"),
    "plot nothing": (partial(S.plot_schedules, {}, 10), ValueError, r"Invalid schedules: empty"),
    "plot one point": (partial(S.plot_schedules, {"a": ADAPTED}, 10, num_points=1), ValueError, r"Invalid num_points: 1"),
    "explorer kind": (partial(X.explorer_schedule, "cosin", peak_lr=1.0, num_training_steps=100), ValueError, r"Invalid kind: 'cosin'"),
    "explorer warmup": (partial(X.explorer_schedule, "cosine", peak_lr=1.0, num_training_steps=100, warmup_fraction=0.6), ValueError, r"Invalid warmup_fraction: 0.6 .*<= 0.5"),
    "explorer floor": (partial(X.explorer_schedule, "cosine", peak_lr=1.0, num_training_steps=100, floor_fraction=1.5), ValueError, r"Invalid floor_fraction"),
    "explorer length": (partial(X.explorer_schedule, "cosine", peak_lr=1.0, num_training_steps=2), ValueError, r"Invalid num_training_steps: 2 .*>= 3"),
    "explorer element id": (partial(X.static_explorer_html, element_id="a b"), ValueError, r"Invalid element_id"),
}  # fmt: skip


@pytest.mark.parametrize("name", list(ERRORS))
def test_bad_input_is_rejected_with_the_argument_and_its_range(name):
    call, error, message = ERRORS[name]
    with pytest.raises(error, match=message):
        call()


# --- plotting ---------------------------------------------------------------------------------


def test_plot_schedules_draws_every_step_with_labelled_axes():
    from matplotlib.figure import Figure

    ax = Figure().subplots()
    named = {"cosine": ADAPTED, "constant": partial(S.constant_schedule, peak_lr=0.02)}
    assert S.plot_schedules(named, 50, ax=ax) is ax
    assert ax.get_xlabel() == "step" and ax.get_ylabel() == "learning rate"
    assert [line.get_label() for line in ax.get_lines()] == ["cosine", "constant"]
    assert list(ax.get_lines()[0].get_xdata()) == list(range(50))
    assert list(ax.get_lines()[0].get_ydata()) == [ADAPTED(s) for s in range(50)]
    assert ax.get_yscale() == "linear"
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["cosine", "constant"]


def test_plot_schedules_log_scale_leaves_out_zero_and_can_subsample():
    from matplotlib.figure import Figure

    ax = Figure().subplots()
    S.plot_schedules({"cosine": ADAPTED}, 1000, ax=ax, log=True, num_points=11)
    assert ax.get_yscale() == "log"
    xs, ys = ax.get_lines()[0].get_xdata(), ax.get_lines()[0].get_ydata()
    assert xs[0] == 0 and xs[-1] == 999 and len(xs) == 11
    assert {b - a for a, b in itertools.pairwise(xs)} <= {99, 100}, "not evenly spaced"
    assert math.isnan(ys[0]), "lr(0) = 0 has no place on a log axis"
    assert ys[-1] == ADAPTED(999)


def test_plot_schedules_makes_a_figure_in_the_course_style():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ax = S.plot_schedules({"cosine": ADAPTED}, 40)
    try:
        assert ax.get_xlabel() == "step" and len(ax.get_lines()) == 1
    finally:
        plt.close(ax.figure)


# --- the explorers ----------------------------------------------------------------------------


@pytest.mark.parametrize("kind", X.KINDS)
def test_explorer_schedules_are_valid_at_the_slider_extremes(kind):
    for total in [3, 100, 1_000_000]:
        for warmup in [0.0, X.MAX_WARMUP_FRACTION]:
            for floor in [0.0, 1.0]:
                lr = X.explorer_schedule(
                    kind,
                    peak_lr=1e-3,
                    num_training_steps=total,
                    warmup_fraction=warmup,
                    floor_fraction=floor,
                )
                pickle.dumps(lr)
                rates = [lr(s) for s in {0, total // 3, total // 2, total - 1}]
                assert all(0 <= r <= 1e-3 for r in rates)


def embedded_data(page):
    match = re.search(r"var DATA = (\{.*?\});\n", page)
    assert match, "no DATA in the explorer's script"
    return json.loads(match.group(1))


def test_static_explorer_html_has_the_controls_and_no_external_resources():
    page = X.static_explorer_html(element_id="sched-demo")
    assert '<div id="sched-demo"' in page and "getElementById(ROOT_ID)" in page
    assert 'var ROOT_ID = "sched-demo"' in page
    options = re.findall(r"<option value=\"(\d+)\">([^<]*)</option>", page)
    assert [name for _, name in options] == list(X.KINDS)
    for role in ["peak", "warmup", "floor", "length"]:
        assert re.search(rf'data-role="{role}" type="range"', page), f"no {role} slider"
    assert 'data-role="log" type="checkbox"' in page and "<svg" in page
    assert ">step</text>" in page and ">learning rate</text>" in page
    assert "src=" not in page and "http" not in page and "<link" not in page
    assert page.count("<script>") == 1 and "</script>" in page.split("<script>", 1)[1]
    assert X.static_explorer_html() != X.static_explorer_html(), "two explorers need two ids"


def test_static_explorer_data_are_the_schedules_values():
    data = embedded_data(X.static_explorer_html())
    assert data == X.explorer_data()
    steps = [round(x * (X.REFERENCE_STEPS - 1)) for x in data["x"]]
    assert len(steps) == X.NUM_POINTS and steps[0] == 0 and steps[-1] == X.REFERENCE_STEPS - 1
    kinds = {kind["name"]: kind for kind in data["kinds"]}
    assert list(kinds) == list(X.KINDS)
    # cosine, warmup 5% (500 steps), floor 10%: straight from course_lib.schedules
    cosine = partial(
        S.cosine_schedule,
        peak_lr=1.0,
        num_warmup_steps=500,
        num_training_steps=X.REFERENCE_STEPS,
        min_lr=0.1,
    )
    curve = kinds["cosine"]["curves"][data["warmup"].index(0.05) * 4 + data["floor"].index(0.1)]
    assert curve == pytest.approx([cosine(s) for s in steps], rel=5e-4, abs=1e-12)
    # wsd with 1-sqrt cooldown, no warmup, floor 1%
    wsd = partial(
        S.wsd_schedule,
        peak_lr=1.0,
        num_warmup_steps=0,
        num_training_steps=X.REFERENCE_STEPS,
        cooldown="1-sqrt",
        min_lr=0.01,
    )
    curve = kinds["wsd (1-sqrt cooldown)"]["curves"][data["floor"].index(0.01)]
    assert curve == pytest.approx([wsd(s) for s in steps], rel=5e-4, abs=1e-12)
    # every curve of every kind, against the schedule the explorer names
    for kind in data["kinds"]:
        floors = data["floor"] if kind["usesFloor"] else [0.0]
        assert len(kind["curves"]) == len(data["warmup"]) * len(floors)
        for index, curve in enumerate(kind["curves"]):
            lr = X.explorer_schedule(
                kind["name"],
                peak_lr=1.0,
                num_training_steps=X.REFERENCE_STEPS,
                warmup_fraction=data["warmup"][index // len(floors)],
                floor_fraction=floors[index % len(floors)],
            )
            assert curve == pytest.approx([lr(s) for s in steps], rel=5e-4, abs=1e-12)


NODE_HARNESS = """
const els = {};
const roles = ["kind", "peak", "warmup", "floor", "length", "log",
               "peak-out", "warmup-out", "floor-out", "length-out", "plot"];
const values = {kind: "1", peak: "-3", warmup: "4", floor: "2", length: "3", log: false};
for (const role of roles) {
  els[role] = {value: values[role], checked: values[role], textContent: "", innerHTML: "",
               disabled: false, listeners: 0, addEventListener() { this.listeners++; }};
}
const root = {
  querySelector(selector) { return els[selector.match(/data-role="([^"]+)"/)[1]]; },
  querySelectorAll() { return roles.slice(0, 6).map((role) => els[role]); },
};
global.document = {getElementById(id) { return id === "node-test" ? root : null; }};
const explorer = require(process.argv[2]);
const picked = explorer.pickCurve(explorer.DATA, 7, 3, 1, 2e-3, 5001);
console.log(JSON.stringify({picked, plot: els.plot.innerHTML, floorOut: els["floor-out"].textContent,
                            listeners: els.kind.listeners}));
"""


@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")
def test_static_explorer_script_picks_and_draws_under_node(tmp_path):
    page = X.static_explorer_html(element_id="node-test")
    script = page.split("<script>", 1)[1].split("</script>", 1)[0]
    (tmp_path / "explorer.js").write_text(script)
    (tmp_path / "harness.js").write_text(NODE_HARNESS)
    result = subprocess.run(
        ["node", str(tmp_path / "harness.js"), str(tmp_path / "explorer.js")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    data = X.explorer_data()
    kind = data["kinds"][7]  # cosine restarts, warmup index 3, floor index 1
    assert kind["name"] == "cosine restarts" and kind["usesFloor"]
    curve = kind["curves"][3 * len(data["floor"]) + 1]
    assert out["picked"]["steps"] == pytest.approx([x * 5000 for x in data["x"]], rel=1e-12)
    assert out["picked"]["rates"] == pytest.approx([y * 2e-3 for y in curve], rel=1e-12)
    # the page's own draw() ran on the fake DOM: the linear schedule (kind 1) at peak 1e-3
    assert '<path d="M' in out["plot"] and ">step</text>" in out["plot"]
    assert ">learning rate</text>" in out["plot"] and out["floorOut"] == "10% of peak"
    assert out["listeners"] == 2


def test_ipywidgets_explorer_redraws_when_a_control_changes():
    ui = X.explorer(num_training_steps=2000)
    widgets = {}
    for child in ui.children:
        for w in getattr(child, "children", [child]):
            widgets[getattr(w, "description", "") or type(w).__name__] = w
    assert {"schedule", "peak rate", "run length", "warmup", "floor / peak", "log scale"} <= set(
        widgets
    )
    image, info = widgets["Image"], widgets["HTML"]
    assert bytes(image.value).startswith(b"\x89PNG")
    assert "warmup 100 steps" in info.value
    first = bytes(image.value)
    widgets["schedule"].value = "constant"
    assert bytes(image.value) != first and widgets["floor / peak"].disabled
    assert "no floor" in info.value
    widgets["schedule"].value = "wsd (1-sqrt cooldown)"
    assert not widgets["floor / peak"].disabled
    widgets["log scale"].value = True
    widgets["warmup"].value = 0.2
    assert "warmup 400 steps" in info.value
    logged = bytes(image.value)
    widgets["log scale"].value = False
    assert bytes(image.value) != logged
    with pytest.raises(ValueError, match="Invalid kind"):
        X.explorer(kind="nope")

"""The batch-size scaling rules: the checkpoint question's numbers, invariants, and errors."""

from __future__ import annotations

import math

import pytest
from hypothesis import assume, example, given, settings
from hypothesis import strategies as st

from course_lib.batch_scaling import (
    batch_ratio,
    best_lr,
    fit_power_law,
    linear_rule,
    scale_hyperparameters,
    sqrt_rule,
    sqrt_rule_beta,
    sqrt_rule_max_kappa,
    warmup_samples,
    warmup_steps_for_samples,
)

CHECKPOINT = {"base_batch_size": 256, "batch_size": 2048, "lr": 3e-4, "warmup_steps": 2000}


def test_linear_rule_on_the_checkpoint_question():
    hp = linear_rule(**CHECKPOINT)
    assert hp.kappa == 8.0
    assert hp.lr == pytest.approx(2.4e-3, rel=1e-12), "linear rule: lr * 8 = 2.4e-3"
    assert hp.betas == (0.9, 0.999) and hp.eps == 1e-8, "the linear rule keeps betas and eps"
    assert hp.warmup_samples == 2000 * 256
    assert hp.warmup_steps == 250, "2000 steps of 256 = 512,000 samples = 250 steps of 2048"
    assert hp.warmup_steps_same_steps == 2000


def test_sqrt_rule_on_the_checkpoint_question():
    hp = sqrt_rule(**CHECKPOINT)
    assert hp.lr == pytest.approx(3e-4 * math.sqrt(8), rel=1e-12)
    assert hp.lr == pytest.approx(8.485e-4, rel=1e-3)
    assert hp.betas[0] == pytest.approx(0.2, abs=1e-12), "1 - 8 * (1 - 0.9) = 0.2"
    assert hp.betas[1] == pytest.approx(0.992, abs=1e-12), "1 - 8 * (1 - 0.999) = 0.992"
    assert hp.eps == pytest.approx(1e-8 / math.sqrt(8), rel=1e-12)
    assert hp.warmup_steps == 250 and hp.warmup_samples == 512_000
    assert "sqrt" in hp.summary() and "250 steps" in hp.summary()


def test_scale_hyperparameters_dispatches_by_name():
    assert scale_hyperparameters("linear", **CHECKPOINT) == linear_rule(**CHECKPOINT)
    assert scale_hyperparameters("sqrt", **CHECKPOINT) == sqrt_rule(**CHECKPOINT)
    with pytest.raises(ValueError, match="rule"):
        scale_hyperparameters("cubic", **CHECKPOINT)


@given(
    base=st.integers(1, 4096),
    lr=st.floats(1e-6, 1.0),
    beta1=st.floats(0.0, 0.999),
    beta2=st.floats(0.0, 0.9999),
    warmup=st.integers(0, 10_000),
)
@settings(max_examples=100, deadline=None)
# A beta far below 1: the old absolute 1e-12 cut-off turned it into 0 even with kappa = 1.
@example(base=1, lr=1e-6, beta1=1e-12, beta2=0.0, warmup=0)
@example(base=256, lr=3e-4, beta1=5e-13, beta2=2e-16, warmup=1)
def test_same_batch_changes_nothing(base, lr, beta1, beta2, warmup):
    for rule in (linear_rule, sqrt_rule):
        hp = rule(base_batch_size=base, batch_size=base, lr=lr, betas=(beta1, beta2),
                  warmup_steps=warmup)  # fmt: skip
        assert hp.kappa == 1.0 and hp.lr == pytest.approx(lr, rel=1e-15)
        assert hp.betas == pytest.approx((beta1, beta2), abs=1e-15)
        assert hp.warmup_steps == warmup


@given(k1=st.floats(0.1, 3.0), k2=st.floats(0.1, 3.0), beta=st.floats(0.0, 0.99))
@settings(max_examples=200, deadline=None)
def test_sqrt_rule_beta_composes(k1, k2, beta):
    """Scaling by k1 then k2 is scaling by k1 * k2: the rule is a change of time unit."""
    assume(k1 * k2 * (1 - beta) < 1 and k1 * (1 - beta) < 1)
    twice = sqrt_rule_beta(sqrt_rule_beta(beta, k1), k2)
    assert twice == pytest.approx(sqrt_rule_beta(beta, k1 * k2), abs=1e-12)
    # the memory 1 / (1 - beta), in steps, shrinks by exactly kappa
    assert 1 / (1 - sqrt_rule_beta(beta, k1)) == pytest.approx(1 / (1 - beta) / k1, rel=1e-9)


def test_sqrt_rule_beta_is_zero_only_up_to_rounding():
    """Zero means zero up to the rounding of 1 - kappa * (1 - beta), relative to kappa."""
    assert sqrt_rule_beta(0.9, 10.0) == 0.0  # 2.2e-16 in floating point: exactly 0 here
    assert sqrt_rule_beta(0.99, 100.0) == 0.0
    assert sqrt_rule_beta(1e-12, 1.0) == pytest.approx(1e-12, rel=1e-3)  # not snapped to 0
    assert sqrt_rule_beta(0.5, 2.0 - 2e-12) == pytest.approx(1e-12, rel=1e-3)


def test_rules_halve_and_double_consistently():
    half = sqrt_rule(base_batch_size=512, batch_size=256, lr=1e-3)
    assert half.lr == pytest.approx(1e-3 / math.sqrt(2))
    assert half.betas == pytest.approx((0.95, 0.9995))
    assert half.eps == pytest.approx(1e-8 * math.sqrt(2))
    assert linear_rule(base_batch_size=512, batch_size=256, lr=1e-3).lr == pytest.approx(5e-4)


def test_sqrt_rule_stops_where_beta1_would_leave_the_unit_interval():
    assert sqrt_rule_max_kappa((0.9, 0.999)) == pytest.approx(10.0)
    assert sqrt_rule_max_kappa((0.99, 0.95)) == pytest.approx(20.0)
    edge = sqrt_rule(base_batch_size=100, batch_size=1000, lr=1e-3)  # kappa = 10: beta1 = 0
    assert edge.betas[0] == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(
        ValueError, match=r"kappa.*betas\[0\]=0\.9.*kappa <= 1 / \(1 - betas\[0\]\) = 10"
    ):
        sqrt_rule(base_batch_size=100, batch_size=1100, lr=1e-3)
    # the linear rule leaves the betas alone, so it has no such limit
    assert linear_rule(base_batch_size=100, batch_size=100_000, lr=1e-3).betas == (0.9, 0.999)


@pytest.mark.parametrize("kappa", [0, -1, -0.5, math.inf, math.nan])
def test_bad_kappa_raises(kappa):
    with pytest.raises(ValueError, match="kappa"):
        sqrt_rule_beta(0.9, kappa)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"base_batch_size": 0}, "base_batch_size"),
        ({"batch_size": -8}, "batch_size"),
        ({"lr": 0.0}, "lr"),
        ({"lr": -1e-3}, "lr"),
        ({"betas": (1.0, 0.999)}, r"betas\[0\]"),
        ({"betas": (0.9, -0.1)}, r"betas\[1\]"),
        ({"betas": (0.9,)}, "betas"),
        ({"eps": -1e-8}, "eps"),
        ({"warmup_steps": -1}, "warmup_steps"),
    ],
)
def test_bad_hyperparameters_raise_naming_the_argument(kwargs, name):
    for rule in (linear_rule, sqrt_rule):
        with pytest.raises(ValueError, match=f"Invalid {name}"):
            rule(**{**CHECKPOINT, **kwargs})


def test_non_integers_raise_type_errors():
    with pytest.raises(TypeError, match="batch_size"):
        batch_ratio(256, 2048.0)
    with pytest.raises(TypeError, match="warmup_steps"):
        linear_rule(**{**CHECKPOINT, "warmup_steps": 2.5})


def test_warmup_conversions():
    assert warmup_samples(2000, 256) == 512_000
    assert warmup_steps_for_samples(512_000, 2048) == 250
    assert warmup_steps_for_samples(1000, 3000) == 1, "a warmup never rounds away to 0 steps"
    assert warmup_steps_for_samples(0, 3000) == 0
    assert warmup_steps_for_samples(2500, 1000) == 2  # round half to even, 2.5 -> 2
    with pytest.raises(ValueError, match="num_samples"):
        warmup_steps_for_samples(-1, 8)


def test_best_lr_finds_the_vertex_between_grid_points():
    lrs = [1e-4 * 2**k for k in range(8)]
    true = 1e-4 * 2**3.4
    losses = [math.exp(0.3 * (math.log(lr / true)) ** 2 - 2.0) for lr in lrs]
    assert best_lr(lrs, losses) == pytest.approx(true, rel=1e-9)
    # at the edge of the grid, or with a diverged neighbour, the grid point itself
    assert best_lr(lrs, sorted(losses)) == lrs[0]
    diverged = [*losses[:4], math.inf, *losses[5:]]
    assert best_lr(lrs, diverged) == lrs[3]
    with pytest.raises(ValueError, match="diverged"):
        best_lr([1e-3, 1e-2], [math.inf, math.nan])
    with pytest.raises(ValueError, match="increasing"):
        best_lr([1e-2, 1e-3], [1.0, 2.0])


@given(p=st.floats(-2.0, 2.0), c=st.floats(1e-4, 1e2))
@settings(max_examples=50, deadline=None)
def test_fit_power_law_recovers_the_exponent(p, c):
    x = [8, 16, 32, 64, 128, 256]
    fitted_p, fitted_c = fit_power_law(x, [c * v**p for v in x])
    assert fitted_p == pytest.approx(p, abs=1e-9)
    assert fitted_c == pytest.approx(c, rel=1e-8)


def test_fit_power_law_rejects_bad_input():
    with pytest.raises(ValueError, match="positive"):
        fit_power_law([1, 2], [1, -1])
    with pytest.raises(ValueError, match="undetermined"):
        fit_power_law([4, 4, 4], [1, 2, 3])
    with pytest.raises(ValueError, match="Invalid x/y"):
        fit_power_law([1], [1])

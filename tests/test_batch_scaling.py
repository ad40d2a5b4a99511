"""The batch-size scaling rules: the checkpoint question's numbers, invariants, and errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import assume, example, given, settings
from hypothesis import strategies as st

from course_lib.batch_scaling import (
    batch_ratio,
    best_lr,
    beta2_for_batch,
    beta_half_life_examples,
    compare_with_rules,
    fit_lr_exponent,
    fit_power_law,
    lars_local_lr,
    linear_rule,
    scale_hyperparameters,
    separates_rules,
    sqrt_rule,
    sqrt_rule_beta,
    sqrt_rule_max_kappa,
    sweep_lr,
    untuned_warmup_steps,
    warmup_samples,
    warmup_steps_for_samples,
)
from course_lib.sweeps import EdgeOptimum

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
    assert hp.untuned_warmup_steps == 250, "Ma & Yarats: 2 / (1 - 0.992) = 250"


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


def test_best_lr_finds_the_vertex_of_a_parabola_in_log_lr():
    lrs = [1e-4 * 2**k for k in range(8)]
    true = 1e-4 * 2**3.4
    losses = [0.3 * math.log(lr / true) ** 2 + 0.1 for lr in lrs]
    assert best_lr(lrs, losses) == pytest.approx(true, rel=1e-9)
    # per-seed losses: the mean over seeds is what counts (two seeds shifted up and down)
    per_seed = [[loss - 0.05, loss + 0.05] for loss in losses]
    assert best_lr(lrs, per_seed) == pytest.approx(true, rel=1e-9)


@pytest.mark.parametrize(("order", "side"), [(sorted, "low"), (lambda v: sorted(v)[::-1], "high")])
def test_best_lr_refuses_an_edge_optimum_naming_the_side(order, side):
    lrs = [1e-3, 2e-3, 4e-3, 8e-3]
    with pytest.raises(
        EdgeOptimum, match=f"extend it {'lower' if side == 'low' else 'higher'}"
    ) as err:
        best_lr(lrs, order([0.4, 0.3, 0.2, 0.1]))
    assert err.value.side == side
    assert isinstance(err.value, ValueError)


def test_best_lr_with_diverged_runs():
    lrs = [1e-3, 2e-3, 4e-3, 8e-3, 1.6e-2]
    # a diverged neighbour: no parabola, the grid point itself
    assert best_lr(lrs, [0.5, 0.3, 0.2, math.inf, math.inf]) == 4e-3
    # one seed diverged at 8e-3: that point is infinitely bad whatever the other seed did
    assert best_lr(lrs, [[0.5, 0.5], [0.3, 0.3], [0.2, 0.2], [0.01, math.nan], [0.9, 0.9]]) == 4e-3
    with pytest.raises(ValueError, match="diverged"):
        best_lr(lrs[:3], [math.inf, math.nan, math.inf])
    with pytest.raises(ValueError, match="increasing"):
        best_lr([1e-2, 1e-3, 1e-4], [1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="at least 3"):
        best_lr([1e-3, 1e-2], [1.0, 2.0])


def synthetic_sweeps(alpha, offsets, batch_sizes, c=1e-4):
    """Sweeps of a loss whose minimum for seed s at batch B is c * B**alpha * exp(offsets[s, i])."""

    def loss(lr, i, seed):
        return 0.2 * (math.log(lr) - math.log(c * batch_sizes[i] ** alpha) - offsets[seed, i]) ** 2

    seeds = range(offsets.shape[0])
    return [
        sweep_lr(
            lambda lr, i=i: [loss(lr, i, s) for s in seeds],
            [c * b**alpha * 2.0**k for k in (-1, 0, 1)],
        )
        for i, b in enumerate(batch_sizes)
    ]


def test_sweep_lr_extends_until_every_seed_is_interior():
    calls = []
    seeds = [0, 1, 2]

    def evaluate(lr):
        calls.append(lr)
        # seed 2's optimum is two octaves above the others': the mean is interior first
        return [0.2 * (math.log(lr / (1e-3 * (4 if s == 2 else 1)))) ** 2 for s in seeds]

    sweep = sweep_lr(evaluate, [2.5e-4, 5e-4, 1e-3], factor=2)
    assert len(calls) == len(set(calls)), "no learning rate is evaluated twice"
    assert np.all(np.diff(sweep.lrs) > 0) and sweep.losses.shape == (len(sweep.lrs), 3)
    for seed in seeds:
        assert 0 < int(np.argmin(sweep.losses[:, seed])) < len(sweep.lrs) - 1
    assert sweep.lrs[-1] >= 8e-3, "seed 2's optimum at 4e-3 needs the grid to reach 8e-3"
    assert sweep.best([2, 2]) == pytest.approx(4e-3, rel=1e-9)
    assert sweep.best([0]) == pytest.approx(1e-3, rel=1e-9)


def test_sweep_lr_gives_up_with_an_edge_error():
    with pytest.raises(EdgeOptimum, match="high edge"):
        sweep_lr(lambda lr: [-lr, -2 * lr], [1e-3, 2e-3, 4e-3], max_extensions=2)


@pytest.mark.parametrize("alpha", [0.5, 0.75, 1.0])
def test_fit_lr_exponent_recovers_a_known_exponent_with_an_interval_that_covers_it(alpha):
    batch_sizes = [8, 32, 128, 512]
    rng = np.random.default_rng(int(alpha * 100))
    covered, widths = 0, []
    for _ in range(10):  # 10 experiments of 12 seeds, each seed's optimum off by ~N(0, 0.3)
        offsets = rng.normal(0.0, 0.3, size=(12, len(batch_sizes)))
        fit = fit_lr_exponent(
            batch_sizes, synthetic_sweeps(alpha, offsets, batch_sizes), resamples=200
        )
        covered += fit.low <= alpha <= fit.high
        widths.append(fit.high - fit.low)
        # the rule that is not alpha is far outside: the interval separates 0.5 from 1
        assert separates_rules(fit.low, fit.high)
    assert covered >= 8, f"the 95% interval covered {alpha} in only {covered} of 10 experiments"
    assert max(widths) < 0.2
    # without noise the estimate is exact and the interval has no width
    exact = fit_lr_exponent(
        batch_sizes,
        synthetic_sweeps(alpha, np.zeros((3, len(batch_sizes))), batch_sizes),
        resamples=200,
    )
    assert exact.exponent == pytest.approx(alpha, abs=1e-9)
    assert exact.high - exact.low < 1e-9
    assert exact.lr(64) == pytest.approx(1e-4 * 64**alpha, rel=1e-9)


def test_fit_lr_exponent_rejects_mismatched_sweeps():
    a = sweep_lr(lambda lr: [math.log(lr / 1e-3) ** 2] * 2, [5e-4, 1e-3, 2e-3])
    b = sweep_lr(lambda lr: [math.log(lr / 1e-3) ** 2] * 3, [5e-4, 1e-3, 2e-3])
    with pytest.raises(ValueError, match="different numbers of seeds"):
        fit_lr_exponent([8, 16], [a, b])
    with pytest.raises(ValueError, match="one sweep per batch size"):
        fit_lr_exponent([8, 16, 32], [a, a])


@pytest.mark.parametrize(
    ("low", "high", "separates", "words"),
    [
        (0.3, 1.2, False, "cannot tell"),
        (0.4, 0.7, True, "agrees with the square-root rule"),
        (0.8, 1.1, True, "agrees with the linear rule"),
        (0.1, 0.4, True, "below 1/2"),
        (1.1, 1.3, True, "above 1"),
        (0.6, 0.9, True, "excludes both"),
    ],
)
def test_compare_with_rules(low, high, separates, words):
    assert separates_rules(low, high) is separates
    assert words in compare_with_rules(low, high)


def test_compare_with_rules_rejects_an_inverted_interval():
    with pytest.raises(ValueError, match="low"):
        compare_with_rules(0.9, 0.5)


def test_untuned_warmup_follows_beta2():
    assert untuned_warmup_steps(0.999) == 2000, "Ma & Yarats: 2 / (1 - 0.999)"
    assert untuned_warmup_steps(0.992) == 250, "2 / (1 - 0.992), the square-root rule's beta2"
    # the checkpoint question: the square-root rule's untuned warmup is the same examples...
    sqrt_hp = sqrt_rule(**CHECKPOINT)
    assert sqrt_hp.untuned_warmup_steps == sqrt_hp.warmup_steps == 250
    # ...and the linear rule, which keeps beta2, keeps the steps
    assert linear_rule(**CHECKPOINT).untuned_warmup_steps == 2000
    with pytest.raises(ValueError, match="beta2"):
        untuned_warmup_steps(1.0)


def test_lars_local_lr_is_the_trust_ratio_of_you_et_al():
    w = torch.tensor([3.0, 4.0], dtype=torch.float64)  # |w| = 5
    g = torch.tensor([0.8, -0.6], dtype=torch.float64)  # |g| = 1, orthogonal to w
    # eta |w| / (|g| + beta |w|) = 0.001 * 5 / (1 + 0.1 * 5)
    assert lars_local_lr(w, g, trust_coefficient=0.001, weight_decay=0.1) == pytest.approx(
        0.001 * 5 / 1.5, rel=1e-12
    )
    # not |w| / |g + beta w| (= 5 / sqrt(1.25) here), nor without the trust coefficient
    assert lars_local_lr(w, g, trust_coefficient=0.001, weight_decay=0.1) != pytest.approx(
        0.001 * 5 / math.sqrt(1.25)
    )
    assert lars_local_lr(w, g, trust_coefficient=1.0) == pytest.approx(5.0)
    assert lars_local_lr(torch.zeros(2), g) == 1.0
    assert lars_local_lr(w, torch.zeros(2)) == 1.0, "no gradient, no weight decay: ratio 1"
    # no gradient but weight decay: eta |w| / (beta |w|) = eta / beta
    assert lars_local_lr(w, torch.zeros(2), weight_decay=0.01) == pytest.approx(0.1)
    with pytest.raises(ValueError, match="trust_coefficient"):
        lars_local_lr(w, g, trust_coefficient=0.0)
    with pytest.raises(ValueError, match="weight_decay"):
        lars_local_lr(w, g, weight_decay=-0.1)
    with pytest.raises(ValueError, match="shapes"):
        lars_local_lr(w, torch.ones(3))


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


# --- the half-life rule for beta2 (Marek et al. 2025) ----------------------------------------


def test_beta2_for_batch_exact_values():
    assert beta2_for_batch(0.81, 256, 128) == pytest.approx(0.9, abs=1e-15), "0.81 ** (1/2)"
    assert beta2_for_batch(0.5, 1, 3) == pytest.approx(0.125, abs=1e-15), "0.5 ** 3"
    assert beta2_for_batch(0.95, 128, 8) == pytest.approx(0.9967993022898, abs=1e-12)
    assert beta2_for_batch(0.999, 128, 128) == 0.999, "the same batch keeps beta2"
    assert beta2_for_batch(0.0, 4, 2) == 0.0, "no memory stays no memory"
    # not the square-root rule's linear form: 1 - 64 * 0.05 = -2.2, while 0.95 ** 64 = 0.0375
    assert beta2_for_batch(0.95, 1, 64) == pytest.approx(0.0375241392, rel=1e-8)


def test_beta_half_life_examples_exact_values():
    assert beta_half_life_examples(0.5, 7) == pytest.approx(7.0, rel=1e-15), "halves every step"
    assert beta_half_life_examples(0.25, 1) == pytest.approx(0.5, rel=1e-15)
    assert beta_half_life_examples(0.999, 128) == pytest.approx(88678.47029, rel=1e-9)
    assert beta_half_life_examples(0.95, 128) == pytest.approx(128 * 13.5134, rel=1e-5)
    assert beta_half_life_examples(0.0, 16) == 0.0


@given(beta=st.floats(1e-3, 0.9999), old=st.integers(1, 4096), new=st.integers(1, 4096))
@settings(max_examples=200, deadline=None)
def test_beta2_for_batch_keeps_the_half_life_in_examples(beta, old, new):
    scaled = beta2_for_batch(beta, old, new)
    assert 0.0 < scaled < 1.0
    assert beta_half_life_examples(scaled, new) == pytest.approx(
        beta_half_life_examples(beta, old), rel=1e-6
    )
    # and it composes: old -> new -> old gives back beta
    assert beta2_for_batch(scaled, new, old) == pytest.approx(beta, rel=1e-9)


@given(d=st.floats(1e-4, 0.5), old=st.integers(1, 256), new=st.integers(1, 256))
@settings(max_examples=300, deadline=None)
def test_power_and_linear_forms_agree_to_first_order(d, old, new):
    """beta**kappa - (1 - kappa d) lies in [0, (kappa d)**2 / 2] for kappa >= 1, and in
    [-kappa d**2 / (2 (1 - d)), 0] for kappa <= 1: the two differ at second order in d."""
    kappa = new / old
    assume(kappa * d < 1)
    power = beta2_for_batch(1 - d, old, new)
    linear = sqrt_rule_beta(1 - d, kappa)
    difference = power - linear
    slack = 1e-14
    if kappa >= 1:
        assert -slack <= difference <= (kappa * d) ** 2 / 2 + slack
    else:
        assert -kappa * d**2 / (2 * (1 - d)) - slack <= difference <= slack


@pytest.mark.parametrize("kappa", [1 / 16, 1 / 4, 4, 16])
def test_the_second_order_term_is_kappa_times_kappa_minus_one_over_two(kappa):
    old, new = (16, int(16 * kappa)) if kappa >= 1 else (int(1 / kappa), 1)
    for d in (1e-3, 1e-4):
        difference = beta2_for_batch(1 - d, old, new) - sqrt_rule_beta(1 - d, kappa)
        assert difference / d**2 == pytest.approx(kappa * (kappa - 1) / 2, rel=0.02)


def test_where_the_linear_form_fails_the_power_form_stays_in_the_unit_interval():
    # kappa (1 - beta2) = 1 exactly: the linear form gives 0, a memory of one step...
    assert sqrt_rule_beta(0.95, 20.0) == 0.0
    # ...and beyond it is refused, naming the limit, while the power form is still in (0, 1)
    for kappa in (21, 64, 1000):
        with pytest.raises(ValueError, match=r"kappa <= 1 / \(1 - beta\) = 20"):
            sqrt_rule_beta(0.95, float(kappa))
        assert 0.0 < beta2_for_batch(0.95, 1, kappa) < 1.0
    assert beta2_for_batch(0.95, 1, 1000) == pytest.approx(0.95**1000, rel=1e-12)


@pytest.mark.parametrize(
    ("args", "error", "name"),
    [
        ((1.0, 8, 16), ValueError, "beta2"),
        ((-0.1, 8, 16), ValueError, "beta2"),
        ((math.nan, 8, 16), ValueError, "beta2"),
        ((0.9, 0, 16), ValueError, "batch_size"),
        ((0.9, 8, 0), ValueError, "new_batch_size"),
        ((0.9, 8.0, 16), TypeError, "batch_size"),
        ((0.9, 8, True), TypeError, "new_batch_size"),
        ((1 - 1e-15, 4096, 1), ValueError, "rounds to 1"),
    ],
)
def test_beta2_for_batch_rejects_bad_input(args, error, name):
    with pytest.raises(error, match=name):
        beta2_for_batch(*args)


@pytest.mark.parametrize(
    ("args", "error", "name"),
    [
        ((1.0, 8), ValueError, "beta"),
        ((0.9, 0), ValueError, "batch_size"),
        (("0.9", 8), TypeError, "beta"),
    ],
)
def test_beta_half_life_examples_rejects_bad_input(args, error, name):
    with pytest.raises(error, match=name):
        beta_half_life_examples(*args)

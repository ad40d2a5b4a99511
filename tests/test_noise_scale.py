"""The gradient noise scale, on a problem where it is known in closed form.

Linear regression ``y = w* . x + sigma * noise`` with ``x ~ N(0, I_d)``, evaluated at
``w = w* + delta`` with the loss ``(w . x - y)^2``: the per-example gradient is
``2 r x`` with ``r = delta . x - sigma * noise``, so ``G = 2 delta`` and (Gaussian fourth
moments) ``tr(Sigma) = 4 ((d + 1) |delta|^2 + d sigma^2)``; hence

    B_simple = ((d + 1) |delta|^2 + d sigma^2) / |delta|^2.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from torch import nn

from course_lib.noise_scale import (
    NoiseScale,
    critical_batch_steps,
    fit_critical_batch,
    fit_critical_batch_over_seeds,
    gradient_sq_norm,
    noise_scale_along_training,
    per_example_gradients,
    simple_noise_scale,
    two_batch_noise_scale,
)

D, SIGMA = 8, 0.5


def regression_problem(n: int, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    w_star = torch.randn(1, D, generator=gen, dtype=torch.float64)
    delta = 0.3 * torch.randn(1, D, generator=gen, dtype=torch.float64)
    model = nn.Linear(D, 1, bias=False).double()
    with torch.no_grad():
        model.weight.copy_(w_star + delta)
    x = torch.randn(n, D, generator=gen, dtype=torch.float64)
    y = x @ w_star.T + SIGMA * torch.randn(n, 1, generator=gen, dtype=torch.float64)
    d2 = delta.square().sum().item()
    true = NoiseScale(grad_sq_norm=4 * d2, trace_cov=4 * ((D + 1) * d2 + D * SIGMA**2))
    return model, x, y, true


def test_per_example_gradients_match_autograd_one_example_at_a_time():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 2)).double()
    x, y = torch.randn(6, 5, dtype=torch.float64), torch.randn(6, 2, dtype=torch.float64)
    per_example = per_example_gradients(model, nn.functional.mse_loss, x, y)
    assert per_example.shape == (6, sum(p.numel() for p in model.parameters()))
    for i in range(6):
        model.zero_grad()
        nn.functional.mse_loss(model(x[i : i + 1]), y[i : i + 1]).backward()
        expected = torch.cat([p.grad.reshape(-1) for p in model.parameters()])
        torch.testing.assert_close(per_example[i], expected, rtol=1e-12, atol=1e-14)
    # the mean of per-example gradients is the batch gradient
    model.zero_grad()
    nn.functional.mse_loss(model(x), y).backward()
    batch = torch.cat([p.grad.reshape(-1) for p in model.parameters()])
    torch.testing.assert_close(per_example.mean(0), batch, rtol=1e-12, atol=1e-14)


def test_simple_noise_scale_recovers_the_closed_form():
    model, x, y, true = regression_problem(40_000)
    measured = simple_noise_scale(per_example_gradients(model, nn.functional.mse_loss, x, y))
    assert measured.trace_cov == pytest.approx(true.trace_cov, rel=0.05)
    assert measured.grad_sq_norm == pytest.approx(true.grad_sq_norm, rel=0.05)
    assert measured.b_simple == pytest.approx(true.b_simple, rel=0.07), (
        f"B_simple should be {true.b_simple:.2f}, measured {measured.b_simple:.2f}"
    )


def test_simple_noise_scale_is_exact_on_a_hand_computed_sample():
    # two "examples" with gradients (1, 0) and (3, 2): mean (2, 1), variance sum 2 + 2 = 4
    measured = simple_noise_scale(torch.tensor([[1.0, 0.0], [3.0, 2.0]]))
    assert measured.trace_cov == pytest.approx(4.0)
    assert measured.grad_sq_norm == pytest.approx(5.0 - 4.0 / 2)
    assert measured.b_simple == pytest.approx(4.0 / 3.0)


def test_noise_scale_does_not_depend_on_the_loss_scale():
    model, x, y, _ = regression_problem(500)
    plain = simple_noise_scale(per_example_gradients(model, nn.functional.mse_loss, x, y))
    scaled = simple_noise_scale(
        per_example_gradients(model, lambda p, t: 1000.0 * nn.functional.mse_loss(p, t), x, y)
    )
    assert scaled.b_simple == pytest.approx(plain.b_simple, rel=1e-9)
    assert scaled.trace_cov == pytest.approx(1e6 * plain.trace_cov, rel=1e-9)


def test_two_batch_estimator_recovers_the_closed_form():
    model, x, y, true = regression_problem(2**16, seed=1)
    b_small, b_big = 16, 1024
    small = [gradient_sq_norm(model, nn.functional.mse_loss, xb, yb)
             for xb, yb in zip(x.split(b_small), y.split(b_small), strict=True)]  # fmt: skip
    big = [gradient_sq_norm(model, nn.functional.mse_loss, xb, yb)
           for xb, yb in zip(x.split(b_big), y.split(b_big), strict=True)]  # fmt: skip
    measured = two_batch_noise_scale(small, big, b_small=b_small, b_big=b_big)
    assert measured.b_simple == pytest.approx(true.b_simple, rel=0.1), (
        f"B_simple should be {true.b_simple:.2f}, the two-batch estimate is {measured.b_simple:.2f}"
    )


def test_two_batch_estimator_inverts_its_model_exactly():
    g2, trace = 3.0, 120.0
    expected = lambda b: g2 + trace / b  # noqa: E731
    measured = two_batch_noise_scale(expected(8), expected(256), b_small=8, b_big=256)
    assert measured.grad_sq_norm == pytest.approx(g2) and measured.trace_cov == pytest.approx(trace)
    assert measured.b_simple == pytest.approx(40.0)
    # a non-positive |G|^2 estimate means "more noise than this can resolve": infinite scale
    assert NoiseScale(grad_sq_norm=-1.0, trace_cov=5.0).b_simple == math.inf
    with pytest.raises(ValueError, match="b_small < b_big"):
        two_batch_noise_scale(1.0, 2.0, b_small=64, b_big=64)
    with pytest.raises(ValueError, match="Invalid b_small"):
        two_batch_noise_scale(1.0, 2.0, b_small=0, b_big=64)


def mccandlish_steps(batch_sizes, s_min, e_min):
    """Steps S at each B that solve (S / S_min - 1)(E / E_min - 1) = 1 with E = B S."""
    steps = []
    for b in batch_sizes:
        # (S/S_min - 1)(B S/E_min - 1) = 1 is a quadratic in S; take its root above S_min
        qa, qb, qc = b / (s_min * e_min), -(1 / s_min + b / e_min), 0.0
        steps.append((-qb + math.sqrt(qb * qb - 4 * qa * qc)) / (2 * qa))
    return steps


def test_fit_critical_batch_recovers_s_min_and_e_min_of_the_mccandlish_relation():
    batches = [4, 16, 64, 256, 1024, 4096]
    s_min, e_min = 150.0, 12_000.0
    steps = mccandlish_steps(batches, s_min, e_min)
    for b, s in zip(batches, steps, strict=True):  # the data obey the relation
        assert (s / s_min - 1) * (b * s / e_min - 1) == pytest.approx(1.0, rel=1e-9)
    fit = fit_critical_batch(batches, steps)
    assert fit.s_min == pytest.approx(s_min, rel=1e-9)
    assert fit.e_min == pytest.approx(e_min, rel=1e-9)
    assert fit.b_crit == pytest.approx(e_min / s_min, rel=1e-9)
    s_fit, b_fit = fit  # still unpacks as (S_min, B_crit)
    assert (s_fit, b_fit) == (fit.s_min, fit.b_crit)
    assert fit.steps(64) == pytest.approx(critical_batch_steps(64, s_min=s_min, b_crit=80.0))
    assert fit.examples(80.0) == pytest.approx(2 * e_min), "at B_crit: twice E_min"
    noisy = [s * (1 + 0.03 * (-1) ** i) for i, s in enumerate(steps)]
    assert fit_critical_batch(batches, noisy).b_crit == pytest.approx(80.0, rel=0.15)


def test_fit_critical_batch_over_seeds_covers_the_truth():
    batches = [4, 16, 64, 256, 1024, 4096]
    s_min, e_min = 150.0, 12_000.0
    truth = np.array(mccandlish_steps(batches, s_min, e_min))
    rng = np.random.default_rng(0)
    covered = {"S_min": 0, "E_min": 0}
    for _ in range(10):
        seeds = truth[:, None] * np.exp(rng.normal(0, 0.15, size=(len(batches), 12)))
        # three candidate rates per batch size: the tuned one, one slower, one that fails once
        worse = 1.6 * seeds
        failing = 0.8 * seeds
        failing[:, 0] = np.inf
        steps = np.stack([worse, seeds, failing], axis=1)
        result = fit_critical_batch_over_seeds(batches, steps, resamples=300)
        assert result.steps == pytest.approx(tuple(seeds.mean(axis=1)), rel=1e-12), (
            "each batch size takes the fewest mean steps among the rates that always got there"
        )
        covered["S_min"] += result.s_min[0] <= s_min <= result.s_min[1]
        covered["E_min"] += result.e_min[0] <= e_min <= result.e_min[1]
        assert result.b_crit[0] <= result.fit.b_crit <= result.b_crit[1]
    for name, count in covered.items():
        assert count >= 8, f"the 95% interval covered the true {name} in only {count} of 10"


def test_fit_critical_batch_over_seeds_rejects_a_batch_that_never_got_there():
    steps = np.array([[100.0, 120.0], [30.0, np.inf], [20.0, 22.0]])
    with pytest.raises(ValueError, match=r"batch sizes \[64\]"):
        fit_critical_batch_over_seeds([8, 64, 512], steps)
    with pytest.raises(ValueError, match="seeds >= 2"):
        fit_critical_batch_over_seeds([8, 64], np.ones((2, 1)))


def test_expected_sq_norm_is_exact_for_batches_drawn_with_replacement():
    # a population of 3 per-example gradients; enumerate every batch of 2 with replacement
    population = torch.tensor([[1.0, 0.0], [3.0, 2.0], [-1.0, 4.0]], dtype=torch.float64)
    mean = population.mean(0)
    noise = NoiseScale(
        grad_sq_norm=mean.square().sum().item(),
        trace_cov=(population - mean).square().sum().item() / 3,  # the population's variance
    )
    for batch in (1, 2, 3):
        exact = np.mean([
            population[list(picks)].mean(0).square().sum().item()
            for picks in itertools.product(range(3), repeat=batch)
        ])  # fmt: skip
        assert noise.expected_sq_norm(batch) == pytest.approx(exact, rel=1e-12)
    assert noise.expected_sq_norm(10**9) == pytest.approx(noise.grad_sq_norm, rel=1e-6)
    with pytest.raises(ValueError, match="batch_size"):
        noise.expected_sq_norm(0)


def test_fit_critical_batch_rejects_bad_input():
    with pytest.raises(ValueError, match="positive"):
        fit_critical_batch([8, 16], [10, 0])
    with pytest.raises(ValueError, match="B_crit <= 0"):
        fit_critical_batch([8, 16, 32], [10, 12, 14])  # steps grow with the batch
    with pytest.raises(ValueError, match="S_min <= 0"):
        fit_critical_batch([8, 16, 32], [100, 25, 5])  # falls faster than 1 / B: no plateau
    with pytest.raises(ValueError, match="Invalid batch_sizes/steps"):
        fit_critical_batch([8], [1])
    with pytest.raises(ValueError, match="n >= 2"):
        simple_noise_scale(torch.ones(1, 3))
    with pytest.raises(ValueError, match="differ"):
        per_example_gradients(
            nn.Linear(2, 1), nn.functional.mse_loss, torch.ones(3, 2), torch.ones(2, 1)
        )


# --- the noise scale along training --------------------------------------------------------


def counted_batches(x, y, batch_size, seed, taken):
    """Endless minibatches of (x, y) in a fixed random order; appends to ``taken`` per batch."""
    gen = torch.Generator().manual_seed(seed)
    while True:
        index = torch.randint(len(x), (batch_size,), generator=gen)
        taken.append(index)
        yield x[index], y[index]


def test_noise_scale_along_training_measures_the_weights_it_reached():
    model, x, y, _ = regression_problem(2000, seed=3)
    replay = nn.Linear(D, 1, bias=False).double()
    replay.load_state_dict(model.state_dict())
    taken = []
    trace = noise_scale_along_training(
        model, torch.optim.SGD(model.parameters(), lr=0.05),
        counted_batches(x, y, 16, 0, taken), [0, 1, 5, 20], x[:500], y[:500],
        evaluate=lambda m: float(m.weight.detach().norm()),
    )  # fmt: skip
    assert len(taken) == 20, "exactly checkpoints[-1] optimizer steps"
    assert trace.steps == (0, 1, 5, 20)
    # replay the same batches by hand, and measure at the same steps
    optimizer = torch.optim.SGD(replay.parameters(), lr=0.05)
    for i, index in enumerate([None, *taken]):
        if index is not None:
            optimizer.zero_grad()
            nn.functional.mse_loss(replay(x[index]), y[index]).backward()
            optimizer.step()
        if i in trace.steps:
            k = trace.steps.index(i)
            want = simple_noise_scale(
                per_example_gradients(replay, nn.functional.mse_loss, x[:500], y[:500])
            )
            assert trace.noise[k].trace_cov == pytest.approx(want.trace_cov, rel=1e-10)
            assert trace.noise[k].grad_sq_norm == pytest.approx(want.grad_sq_norm, rel=1e-10)
            loss = nn.functional.mse_loss(replay(x[:500]), y[:500]).item()
            assert trace.losses[k] == pytest.approx(loss, rel=1e-12)
            assert trace.evaluations[k] == pytest.approx(
                float(replay.weight.detach().norm()), rel=1e-12
            )
    assert trace.b_simple.shape == (4,)
    assert trace.growth() == pytest.approx(trace.b_simple[-1] / trace.b_simple[0])


def test_the_noise_scale_grows_as_sgd_approaches_the_minimum():
    """In the closed form, B_simple = ((d + 1)|delta|^2 + d sigma^2) / |delta|^2 grows as
    training shrinks delta = w - w*: the measured trace must show it."""
    model, x, y, _ = regression_problem(20_000, seed=4)
    taken = []
    trace = noise_scale_along_training(
        model, torch.optim.SGD(model.parameters(), lr=0.02),
        counted_batches(x, y, 32, 1, taken), [0, 10, 40, 200], x, y,
    )  # fmt: skip
    assert np.all(np.diff(trace.b_simple) > 0), f"B_simple along training: {trace.b_simple}"
    assert np.all(np.diff(trace.losses) < 0)
    assert trace.growth() > 3
    assert trace.evaluations == ()


@pytest.mark.parametrize("checkpoints", [[], [3, 2], [-1, 2], [0, 1.5], [0, 2, 2], [True]])
def test_noise_scale_along_training_rejects_bad_checkpoints(checkpoints):
    model, x, y, _ = regression_problem(100)
    with pytest.raises(ValueError, match="checkpoints"):
        noise_scale_along_training(
            model, torch.optim.SGD(model.parameters(), lr=0.01),
            counted_batches(x, y, 8, 0, []), checkpoints, x, y,
        )  # fmt: skip


def test_noise_scale_along_training_stops_on_a_diverged_run():
    model, x, y, _ = regression_problem(100)
    with pytest.raises(RuntimeError, match="training loss"):
        noise_scale_along_training(
            model, torch.optim.SGD(model.parameters(), lr=1e6),
            counted_batches(x, y, 8, 0, []), [0, 500], x, y,
        )  # fmt: skip

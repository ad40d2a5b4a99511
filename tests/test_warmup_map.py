"""The warmup map: stacked optimizers against torch.optim, stacked sharpness against exact
eigenvalues, and the classification of synthetic traces."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from course_lib import adam_variance
from course_lib.warmup_map import (
    StackedMLP,
    catapult_onset,
    classify_run,
    critical_lr,
    effective_rate,
    init_state,
    preconditioner,
    stability_threshold,
    stacked_sharpness,
    stacked_step,
    teacher_task,
    train_stack,
)

# --- stacked optimizers reproduce torch.optim ----------------------------------------------


def _grads(seed, steps, shape):
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=generator, dtype=torch.float64) for _ in range(steps)]


@pytest.mark.parametrize("method", ["sgd", "adam", "radam", "gi-adam"])
def test_stacked_step_matches_torch_optim_per_run(method):
    """Each run of the stack, with its own rate, takes the update torch.optim takes."""
    shape, steps, lrs = (3, 2), 12, [1e-3, 0.05, 0.7]
    betas = (0.9, 0.98)
    grads = _grads(0, steps + 1, (len(lrs), *shape))
    stacked = torch.zeros(len(lrs), *shape, dtype=torch.float64)
    first = [grads[0]] if method == "gi-adam" else None
    state = init_state(method, [stacked], first)
    for t in range(1, steps + 1):
        stacked_step(method, [stacked], [grads[t]], state,
                     torch.tensor(lrs, dtype=torch.float64), betas=betas)  # fmt: skip
    for r, lr in enumerate(lrs):
        param = torch.zeros(shape, dtype=torch.float64, requires_grad=True)
        if method == "sgd":
            optimizer = torch.optim.SGD([param], lr=lr)
        elif method == "radam":
            optimizer = torch.optim.RAdam([param], lr=lr, betas=betas, foreach=False)
        else:
            optimizer = torch.optim.Adam([param], lr=lr, betas=betas, foreach=False)
        if method == "gi-adam":
            param.grad = grads[0][r].clone()
            adam_variance.gi_adam_init_(optimizer)
        for t in range(1, steps + 1):
            param.grad = grads[t][r].clone()
            optimizer.step()
        # torch computes r_t from a float32 step count: agreement to 1e-7, not to float64 eps
        torch.testing.assert_close(stacked[r], param.detach(), rtol=1e-7, atol=1e-10)


def test_stacked_step_rejects_unknown_method():
    with pytest.raises(ValueError, match="method"):
        init_state("adamax", [torch.zeros(2, 3)])
    with pytest.raises(ValueError, match="first_grads"):
        init_state("gi-adam", [torch.zeros(2, 3)])


def test_stacked_mlp_runs_are_independent_mlps():
    """Run r of the stack is the MLP with its weights; same seed, same initial weights."""
    model = StackedMLP.create([3, 5, 2], [7, 8, 7])
    torch.testing.assert_close(model.weights[0][0], model.weights[0][2])
    assert not torch.equal(model.weights[0][0], model.weights[0][1])
    x = torch.randn(3, 4, 3)
    out = model(x)
    for r in range(3):
        expected = torch.tanh(x[r] @ model.weights[0][r] + model.biases[0][r])
        expected = expected @ model.weights[1][r] + model.biases[1][r]
        torch.testing.assert_close(out[r], expected)
    with pytest.raises(ValueError, match="sizes"):
        StackedMLP.create([3], [0])


def test_teacher_task_is_seeded_and_scaled():
    x, y = teacher_task(3, samples=50)
    x2, y2 = teacher_task(3, samples=50)
    assert torch.equal(x, x2) and torch.equal(y, y2)
    assert y.std().item() == pytest.approx(1.0, rel=1e-5)
    with pytest.raises(ValueError, match="samples"):
        teacher_task(0, samples=0)


# --- curvature of every run at once --------------------------------------------------------


def _quadratic_stack(eigenvalue_sets, seed=0):
    """Runs of 0.5 theta^T A_r theta, with A_r symmetric of the given eigenvalues."""
    mats = []
    generator = torch.Generator().manual_seed(seed)
    for eigenvalues in eigenvalue_sets:
        n = len(eigenvalues)
        q, _ = torch.linalg.qr(torch.randn(n, n, generator=generator, dtype=torch.float64))
        mats.append(q @ torch.diag(torch.tensor(eigenvalues, dtype=torch.float64)) @ q.T)
    a = torch.stack(mats)
    theta = torch.randn(a.shape[0], a.shape[1], generator=generator, dtype=torch.float64)
    theta.requires_grad_(True)
    losses = 0.5 * torch.einsum("ri,rij,rj->r", theta, a, theta)
    return a, theta, losses


def test_stacked_sharpness_is_each_runs_top_eigenvalue():
    a, theta, losses = _quadratic_stack([[9.0, 1.0, 0.5, -2.0], [3.0, 2.0, 0.1, 0.0],
                                         [0.7, 0.2, -0.1, 0.05]])  # fmt: skip
    value, vectors = stacked_sharpness(losses, [theta], iters=300)
    torch.testing.assert_close(value, torch.tensor([9.0, 3.0, 0.7], dtype=torch.float64))
    for r in range(3):
        torch.testing.assert_close(a[r] @ vectors[0][r], value[r] * vectors[0][r], atol=1e-6,
                                   rtol=0)  # fmt: skip


def test_stacked_sharpness_finds_the_top_when_the_largest_magnitude_is_negative():
    _, theta, losses = _quadratic_stack([[-20.0, 5.0, 1.0], [4.0, 1.0, -1.0]])
    value, _ = stacked_sharpness(losses, [theta], iters=400)
    torch.testing.assert_close(value, torch.tensor([5.0, 4.0], dtype=torch.float64))


def test_preconditioned_sharpness_matches_brute_force_eigenvalues_of_p_inverse_h():
    """lambda_max(P^{-1} H) for P = diag(sqrt(v_hat)) + eps, against numpy's eigvals."""
    a, theta, losses = _quadratic_stack([[5.0, 2.0, 1.0, 0.5], [1.0, 0.9, 0.3, 0.1]], seed=3)
    generator = torch.Generator().manual_seed(1)
    v_hat = torch.rand(2, 4, generator=generator, dtype=torch.float64) * 4 + 0.01
    p = v_hat.sqrt() + 1e-8
    value, _ = stacked_sharpness(losses, [theta], preconditioner=[p], iters=400)
    for r in range(2):
        brute = np.linalg.eigvals(np.diag(1 / p[r].numpy()) @ a[r].numpy()).real.max()
        assert value[r].item() == pytest.approx(brute, rel=1e-8)


def test_preconditioner_reads_v_hat_from_the_state():
    state = init_state("adam", [torch.zeros(2, 3)])
    with pytest.raises(ValueError, match="no update"):
        preconditioner("adam", state)
    g = torch.full((2, 3), 0.5)
    stacked_step("adam", [torch.zeros(2, 3)], [g], state, torch.zeros(2))
    (p,) = preconditioner("adam", state)
    torch.testing.assert_close(p, torch.full((2, 3), 0.5 + 1e-8))  # v_hat_1 = g^2
    assert preconditioner("sgd", state) is None


def test_stacked_sharpness_validates_its_arguments():
    _, theta, losses = _quadratic_stack([[1.0, 2.0]])
    with pytest.raises(ValueError, match="iters"):
        stacked_sharpness(losses, [theta], iters=0)
    with pytest.raises(ValueError, match="> 0"):
        stacked_sharpness(losses, [theta], preconditioner=[torch.zeros_like(theta)])
    with pytest.raises(ValueError, match="one loss per run"):
        stacked_sharpness(losses.sum().reshape(1, 1), [theta])


def test_thresholds_and_effective_rates():
    assert stability_threshold("sgd", torch.tensor(0.5)).item() == pytest.approx(4.0)
    assert stability_threshold("adam", torch.tensor(0.1)).item() == pytest.approx(380.0)
    assert math.isinf(stability_threshold("adam", torch.tensor(0.0)).item())
    # RAdam: no adaptive rate before rho_t > 5 (update 6 for beta2 = 0.999), r_t after
    assert effective_rate("radam", torch.tensor(1.0), 5, 0.999).item() == 0.0
    r6 = adam_variance.rectification(6, 0.999).item()
    assert effective_rate("radam", torch.tensor(2.0), 6, 0.999).item() == pytest.approx(2 * r6)
    assert effective_rate("adam", torch.tensor(2.0), 1).item() == 2.0


# --- classification of synthetic traces ----------------------------------------------------


def test_a_falling_loss_is_stable():
    losses = np.exp(-0.05 * np.arange(100))
    verdict = classify_run(losses, [0, 50, 99], [3.0, 3.1, 3.2])
    assert verdict.label == "stable"


def test_a_spike_that_recovers_while_the_sharpness_falls_is_a_catapult():
    losses = np.concatenate([[1.0, 0.8, 0.7], [1.5, 3.0, 1.2], np.linspace(0.6, 0.1, 50)])
    measured = [0, 2, 6, 20, 52]
    verdict = classify_run(losses, measured, [4.0, 4.2, 2.0, 1.9, 1.9])
    assert verdict.label == "catapult"
    assert verdict.spike_start == 2 and verdict.spike_peak == 4
    assert verdict.sharp_before == 4.2 and verdict.sharp_after == 2.0


def test_a_spike_without_a_fall_of_the_sharpness_is_not_a_catapult():
    losses = np.concatenate([[1.0, 0.8, 0.7], [1.5, 3.0, 1.2], np.linspace(0.6, 0.1, 50)])
    verdict = classify_run(losses, [0, 2, 6, 52], [4.0, 4.2, 5.0, 5.0])
    assert verdict.label == "spike"


def test_a_loss_that_blows_up_or_ends_above_its_start_is_divergent():
    assert classify_run([1.0, 2.0, np.inf, np.inf], [0], [1.0]).label == "divergent"
    assert classify_run([1.0, 0.5, 3.0, 1.1], [0], [1.0]).label == "divergent"
    assert classify_run([1.0, 0.5, np.nan, 0.1], [0], [1.0]).label == "divergent"


def test_small_wiggles_below_the_rise_threshold_are_stable():
    losses = np.array([1.0, 0.5, 0.55, 0.4, 0.45, 0.3])  # rises of 0.05 = 5% of the start
    assert classify_run(losses, [0, 5], [1.0, 1.0], rise=0.1).label == "stable"
    assert classify_run(losses, [0, 5], [2.0, 1.0], rise=0.01).label == "catapult"


def test_classify_refuses_a_spike_it_cannot_judge():
    losses = np.concatenate([[1.0, 0.8], [3.0], np.linspace(0.6, 0.1, 10)])
    with pytest.raises(ValueError, match="measure more often"):
        classify_run(losses, [5], [1.0])
    with pytest.raises(ValueError, match="measurements"):
        classify_run(losses, [0, 5], [1.0])


def test_catapult_onset_is_the_smallest_rate_whose_loss_rises():
    losses = np.array([[1.0, 0.9, 0.8], [1.0, 0.95, 0.951], [1.0, 0.8, 0.9], [1.0, 5.0, np.inf]])
    assert catapult_onset(losses, [0.1, 0.2, 0.4, 0.8], within=2) == 0.4  # 0.951: within tol
    assert catapult_onset(losses, [0.1, 0.2, 0.4, 0.8], within=2, tol=0.0) == 0.2
    assert catapult_onset(losses, [0.1, 0.2, 0.4, 0.8], within=1) == 0.8
    assert catapult_onset(losses[:2], [0.1, 0.2], within=2) == math.inf
    with pytest.raises(ValueError, match="increasing"):
        catapult_onset(losses, [0.4, 0.2, 0.1, 0.8], within=2)


# --- the whole pipeline on gradient descent --------------------------------------------------


def test_gradient_descent_map_shows_the_three_regimes_around_two_over_lambda():
    """Below 2/lambda_0 stable, a little above a catapult, far above divergent."""
    runs = train_stack("sgd", [0.2, 1.0, 8.0], [0], [0], steps=40,
                       measure_at=range(0, 41, 2), power_iters=6)  # fmt: skip
    eta_c = critical_lr(runs)[0]
    assert 0.2 < eta_c < 1.0
    labels = [classify_run(runs.losses[r], runs.measured, runs.sharpness[r]).label
              for r in range(3)]  # fmt: skip
    assert labels[0] == "stable" and labels[2] == "divergent"
    assert np.isinf(runs.losses[2, -1])
    # the loss-only search finds the onset near 2 / lambda_0
    search = train_stack("sgd", np.geomspace(0.3, 3.0, 11).tolist(), [0], [0], steps=10,
                         measure_at=[])  # fmt: skip
    onset = catapult_onset(search.losses, search.lr, within=10)
    assert eta_c / 2 < onset < eta_c * 2


def test_train_stack_uses_the_courses_warmup_and_rejects_bad_grids():
    runs = train_stack("adam", [0.1], [4], [0], steps=6, measure_at=[])
    np.testing.assert_allclose(runs.rates[0], [0.0, 0.025, 0.05, 0.075, 0.1, 0.1])
    with pytest.raises(ValueError, match="method"):
        train_stack("lion", [0.1], [0], [0], steps=3, measure_at=[])
    with pytest.raises(ValueError, match="grid"):
        train_stack("adam", [-0.1], [0], [0], steps=3, measure_at=[])
    with pytest.raises(ValueError, match="steps"):
        train_stack("adam", [0.1], [0], [0], steps=0, measure_at=[])

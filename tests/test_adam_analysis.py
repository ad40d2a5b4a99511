"""The measurements the Adam chapter quotes, checked against closed forms."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from course_lib.adam_analysis import (
    adam_moments,
    adam_updates,
    constant_gradient_ratio,
    effective_step_sizes,
    largest_step,
    worst_case_gradients,
)


@pytest.mark.parametrize("grad", [1e-6, -1e-3, 1.0, -1e3])
def test_first_step_is_lr_times_sign_with_bias_correction(grad):
    update = adam_updates([grad], lr=1e-3, eps=1e-12)
    assert update.item() == pytest.approx(-1e-3 * (1 if grad > 0 else -1), rel=1e-5)


def test_without_bias_correction_steps_follow_the_closed_form():
    t = torch.arange(1, 301)
    measured = effective_step_sizes([0.5] * 300, lr=1e-2, eps=0.0, bias_correction=False)
    torch.testing.assert_close(measured, constant_gradient_ratio(t), rtol=1e-12, atol=0.0)
    assert measured[0].item() == pytest.approx(0.1 / 0.001**0.5)


def test_constant_and_alternating_gradients():
    constant = effective_step_sizes([0.1] * 100, lr=1e-3, betas=(0.9, 0.999))
    alternating = effective_step_sizes([(-1.0) ** k for k in range(100)], lr=1e-3)
    torch.testing.assert_close(constant, torch.ones(100, dtype=torch.float64), rtol=1e-6, atol=0)
    # m_hat settles at +-(1 - beta1) / (1 + beta1); v_hat is exactly 1.
    assert alternating[-1].item() == pytest.approx(0.1 / 1.9, rel=1e-4)
    assert alternating[0].item() == pytest.approx(1.0)


def test_many_parameters_at_once_equal_one_at_a_time():
    grads = torch.randn(50, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    together = adam_updates(grads, lr=1e-2)
    for j in range(4):
        torch.testing.assert_close(together[:, j], adam_updates(grads[:, j], lr=1e-2))


@pytest.mark.parametrize(
    ("grads", "message"),
    [([], "grads is empty"), ([1.0, float("nan")], "non-finite"), (3.0, "grads is empty")],
)
def test_bad_gradients_are_rejected(grads, message):
    with pytest.raises(ValueError, match=message):
        adam_updates(grads)


def test_bad_lr_and_step_are_rejected():
    with pytest.raises(ValueError, match="Invalid learning rate"):
        effective_step_sizes([1.0], lr=0.0)
    with pytest.raises(ValueError, match="t counts updates from 1"):
        constant_gradient_ratio(0)


# ---------------------------------------------------------------------------------------
# Sparse gradients: how far one step can go


def test_one_spike_after_long_silence_reaches_kingma_and_bas_value():
    # Kingma & Ba (2015, section 2.1): a gradient that was zero at every step but the current
    # one moves the parameter by lr (1 - beta1) / sqrt(1 - beta2), 3.1623 lr for the defaults.
    steps = effective_step_sizes([0.0] * 10_000 + [0.5], lr=1e-3, eps=1e-300)
    expected = 0.1 / 0.001**0.5 * (1 - 0.999**10_001) ** 0.5 / (1 - 0.9**10_001)
    assert steps[-1].item() == pytest.approx(expected, rel=1e-12)
    assert steps[-1].item() == pytest.approx(3.16221, abs=1e-5)
    assert (steps[:-1] == 0).all()


def test_two_adjacent_spikes_after_silence_exceed_that_value():
    steps = effective_step_sizes([0.0] * 10_000 + [1.0, 1.0], lr=1e-3, eps=1e-300)
    # m = 0.1 (0.9 + 1), v = 0.001 (0.999 + 1): the second step is 0.19 / sqrt(0.001999).
    assert steps[-1].item() == pytest.approx(0.19 / 0.001999**0.5, rel=1e-4)
    assert steps[-1].item() > 4.2


@pytest.mark.parametrize("t", [1, 2, 7, 60, 400, 3000])
@pytest.mark.parametrize("betas", [(0.9, 0.999), (0.9, 0.95), (0.0, 0.99), (0.5, 0.9)])
def test_worst_case_gradients_reach_the_largest_step(t, betas):
    steps = effective_step_sizes(worst_case_gradients(t, betas), betas=betas, eps=1e-300)
    assert steps[-1].item() == pytest.approx(largest_step(betas, t), rel=1e-9)


def test_largest_step_values():
    assert largest_step(t=1) == pytest.approx(1.0)
    assert largest_step() == pytest.approx(0.1 / (0.001 * (1 - 0.81 / 0.999)) ** 0.5, rel=1e-12)
    assert largest_step() == pytest.approx(7.2703, abs=1e-4)
    # with beta1 = 0 there is no averaging of m: a lone spike gives 1 / sqrt(1 - beta2)
    assert largest_step((0.0, 0.999)) == pytest.approx(1 / 0.001**0.5)
    assert largest_step((0.99, 0.9)) == float("inf")
    assert largest_step(t=20_000) == pytest.approx(largest_step(), rel=1e-7)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.floats(-1e3, 1e3).map(lambda g: g if abs(g) > 1e-6 else 0.0), min_size=1,
             max_size=40),
    st.sampled_from([(0.9, 0.999), (0.9, 0.95), (0.5, 0.9)]),
)  # fmt: skip
def test_no_gradient_sequence_steps_further_than_the_largest_step(grads, betas):
    # eps = 1e-300 only turns 0 / 0 (every gradient so far zero) into a step of 0
    steps = effective_step_sizes(grads, betas=betas, eps=1e-300)
    bounds = torch.tensor([largest_step(betas, t) for t in range(1, len(grads) + 1)])
    assert (steps <= bounds * (1 + 1e-9)).all()


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: largest_step((0.9, 1.0)), "index 1"),
        (lambda: largest_step((-0.1, 0.9)), "index 0"),
        (lambda: largest_step((0.9, 0.0)), "beta2 > 0"),
        (lambda: largest_step(t=0), "t counts updates from 1"),
        (lambda: largest_step(t=2.5), "t counts updates from 1"),
        (lambda: worst_case_gradients(0), "t counts updates from 1"),
        (lambda: adam_updates([1.0], betas=(0.9,)), "expected two values"),
    ],
)
def test_bad_betas_and_steps_are_rejected(call, message):
    with pytest.raises(ValueError, match=message):
        call()


# ---------------------------------------------------------------------------------------
# The moments, and the controls that replace one of them


def test_adam_moments_agree_with_adam_step():
    grads = torch.randn(200, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    m_hat, v_hat = adam_moments(grads, betas=(0.8, 0.99))
    from_moments = -1e-2 * m_hat / (v_hat.sqrt() + 1e-8)
    torch.testing.assert_close(from_moments, adam_updates(grads, lr=1e-2, betas=(0.8, 0.99)))
    m, v = adam_moments(grads, betas=(0.8, 0.99), bias_correction=False)
    t = torch.arange(1, 201, dtype=torch.float64)[:, None]
    torch.testing.assert_close(m, m_hat * (1 - 0.8**t))
    torch.testing.assert_close(v, v_hat * (1 - 0.99**t))


def test_second_moment_is_the_mean_square_not_the_variance():
    grads = 3.0 + 0.1 * torch.randn(5000, generator=torch.Generator().manual_seed(2),
                                    dtype=torch.float64)  # fmt: skip
    _, v_hat = adam_moments(grads)
    # E[g^2] = 9.01, Var[g] = 0.01: v_hat is the first, within its averaging noise
    assert v_hat[-1].item() == pytest.approx(9.01, rel=0.01)


def test_exact_second_moment_control():
    # Gradients +-1 have g^2 = 1 at every step, so Adam's own v_hat is exactly 1, and the
    # control with E[g^2] = 1 must give the same steps: only m_hat decides them.
    signs = torch.randint(0, 2, (300, 5), generator=torch.Generator().manual_seed(3)) * 2 - 1
    grads = signs.to(torch.float64)
    adam = effective_step_sizes(grads, lr=1e-3)
    control = effective_step_sizes(grads, lr=1e-3, second_moment=1.0)
    torch.testing.assert_close(control, adam, rtol=1e-7, atol=1e-12)
    # the control's scale: E[g^2] = 4 halves every step; beta1 = 0 makes it |g| / 2
    halved = effective_step_sizes(grads, lr=1e-3, second_moment=4.0, betas=(0.0, 0.999))
    torch.testing.assert_close(halved, torch.full_like(halved, 0.5), rtol=1e-7, atol=0)
    with pytest.raises(ValueError, match="second_moment must be positive"):
        effective_step_sizes(grads, second_moment=0.0)


def test_beta1_zero_steps_are_g_over_root_v_hat():
    grads = torch.randn(100, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    _, v_hat = adam_moments(grads, betas=(0.0, 0.999))
    steps = effective_step_sizes(grads, betas=(0.0, 0.999), eps=0.0)
    torch.testing.assert_close(steps, grads.abs() / v_hat.sqrt())


# ---------------------------------------------------------------------------------------
# AMSGrad


def test_amsgrad_matches_torch_bit_for_bit():
    grads = [1.0] + [0.1] * 50 + [3.0] + [0.01] * 30
    ours = adam_updates(grads, lr=1e-3, amsgrad=True)
    param = torch.zeros((), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.Adam([param], lr=1e-3, amsgrad=True, foreach=False)
    theirs = []
    for g in grads:
        before = param.detach().clone()
        param.grad = torch.tensor(g, dtype=torch.float64)
        opt.step()
        theirs.append((param.detach() - before).item())
    assert ours.tolist() == theirs


def test_amsgrad_keeps_the_raw_v_maximum_and_todays_bias_correction():
    # A gradient of 1 at step 1, then 0.1: the largest v_hat ever seen is v_hat_1 = 1, but
    # PyTorch keeps max(v_s) of the raw v and divides it by 1 - beta2**t of the current step.
    grads = [1.0] + [0.1] * 999
    ams = adam_updates(grads, lr=1.0, amsgrad=True, eps=0.0).abs()
    m_hat, v_hat = adam_moments(grads)
    _, v_raw = adam_moments(grads, bias_correction=False)
    t = torch.arange(1, 1001, dtype=torch.float64)
    torch_rule = m_hat / (v_raw.cummax(0).values / (1 - 0.999**t)).sqrt()
    largest_v_hat_rule = m_hat / v_hat.cummax(0).values.sqrt()
    torch.testing.assert_close(ams, torch_rule, rtol=1e-9, atol=0)
    assert ams[-1].item() > 5 * largest_v_hat_rule[-1].item()

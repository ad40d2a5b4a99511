"""The measurements the Adam chapter quotes, checked against closed forms."""

from __future__ import annotations

import pytest
import torch

from course_lib.adam_analysis import adam_updates, constant_gradient_ratio, effective_step_sizes


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

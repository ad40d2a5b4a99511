"""RAdam's rectification and GI-Adam, checked against the paper's derivation and against torch."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from course_lib.adam_variance import (
    PAPER_THRESHOLD,
    TORCH_THRESHOLD,
    adaptive_lr_variance,
    first_adaptive_step,
    gi_adam_init_,
    radam_updates,
    rectification,
    rho,
    rho_inf,
    torch_radam_updates,
)
from course_lib.optim import Adam, AdamW

betas2 = st.floats(min_value=0.7, max_value=0.9999)


# --- rho_t: the length of the SMA that matches Adam's EMA ----------------------------------


@given(beta2=betas2, t=st.integers(min_value=1, max_value=3000))
def test_rho_matches_the_centre_of_mass_of_the_ema(beta2, t):
    """Liu et al. define rho_t by equating the mean age of the EMA's weights with the mean age
    (rho - 1) / 2 of an SMA of length rho. Sum the EMA's weights directly."""
    ages = torch.arange(t, dtype=torch.float64)  # age 0 is the newest squared gradient
    weights = (1 - beta2) * beta2**ages / (1 - beta2**t)
    assert weights.sum().item() == pytest.approx(1.0, rel=1e-9)
    mean_age = (weights * ages).sum().item()
    assert rho(t, beta2).item() == pytest.approx(2 * mean_age + 1, rel=1e-7, abs=1e-7)


@given(beta2=betas2)
def test_rho_starts_at_one_and_rises_towards_rho_inf(beta2):
    assert rho(1, beta2).item() == pytest.approx(1.0, abs=1e-9)
    inf = rho_inf(beta2)
    assert inf == pytest.approx((1 + beta2) / (1 - beta2))  # the EMA's own SMA length
    values = rho(torch.arange(1, 400), beta2)
    assert (values.diff() >= 0).all(), "rho_t must never decrease"
    assert (values[:5].diff() > 0).all(), "rho_t must increase while far from rho_inf"
    assert (values <= inf).all()
    assert rho(10**7, beta2).item() == pytest.approx(inf, rel=1e-6)


def test_rho_inf_for_the_default_beta2():
    assert rho_inf(0.999) == pytest.approx(1999.0)
    assert rho_inf(0.98) == pytest.approx(99.0)


# --- the rectification r_t -------------------------------------------------------------------


@given(beta2=st.floats(min_value=0.9, max_value=0.9999), t=st.integers(1, 5000))
def test_rectification_is_the_variance_ratio_of_the_paper(beta2, t):
    r = rectification(t, beta2).item()
    rho_t = rho(t, beta2).item()
    if rho_t <= 4:
        assert math.isnan(r), "r_t is undefined (NaN) while rho_t <= 4"
        return
    var_t = adaptive_lr_variance(rho_t, approximate=True).item()
    var_inf = adaptive_lr_variance(rho_inf(beta2), approximate=True).item()
    assert r == pytest.approx(math.sqrt(var_inf / var_t), rel=1e-9)
    assert 0 < r <= 1 + 1e-12


def test_rectification_rises_to_one():
    r = rectification(torch.arange(6, 20_000), 0.999)
    assert (r.diff() > 0).all()
    assert r[-1].item() == pytest.approx(1.0, abs=1e-4)


def test_first_adaptive_steps_for_beta2_0999():
    # rho_4 = 3.997, rho_5 = 4.996, rho_6 = 5.994 for beta2 = 0.999
    assert first_adaptive_step(0.999, PAPER_THRESHOLD) == 5
    assert first_adaptive_step(0.999, TORCH_THRESHOLD) == 6
    assert 4 < rho(5, 0.999).item() <= 5


@pytest.mark.parametrize("beta2", [0.9, 0.95, 0.98, 0.999, 0.9999])
def test_torch_radam_steps_unadapted_exactly_until_the_first_adaptive_step(beta2):
    """A constant gradient g makes m_hat = g exactly: RAdam's SGD step is -lr * g, its
    adaptive step about -lr * r_t * sign(g). Read the kind of each step off torch.optim.RAdam."""
    g, lr, steps = 2.0, 0.5, 40
    updates = torch_radam_updates([g] * steps, lr=lr, betas=(0.9, beta2), eps=1e-12)
    first = first_adaptive_step(beta2, TORCH_THRESHOLD)
    for t in range(1, steps + 1):
        measured = updates[t - 1].item()
        if t < first:
            assert measured == pytest.approx(-lr * g, rel=1e-12), (
                f"step {t}: rho_t = {rho(t, beta2).item():.4f} <= 5, RAdam should take "
                f"-lr * m_hat = {-lr * g}, it took {measured}"
            )
        else:
            expected = -lr * rectification(t, beta2).item()
            assert measured == pytest.approx(expected, rel=1e-9), f"step {t}"


@settings(max_examples=40, deadline=None)
@given(
    grads=st.lists(
        st.floats(min_value=-100, max_value=100, allow_nan=False).filter(lambda g: abs(g) > 1e-3),
        min_size=1,
        max_size=30,
    ),
    beta1=st.floats(min_value=0.0, max_value=0.99),
    beta2=st.floats(min_value=0.8, max_value=0.9999),
    lr=st.floats(min_value=1e-4, max_value=1.0),
)
def test_radam_formulas_match_torch_radam(grads, beta1, beta2, lr):
    predicted = radam_updates(grads, lr=lr, betas=(beta1, beta2), eps=1e-8)
    measured = torch_radam_updates(grads, lr=lr, betas=(beta1, beta2), eps=1e-8)
    torch.testing.assert_close(predicted, measured, rtol=1e-9, atol=1e-15)


def test_the_paper_threshold_differs_from_torch_at_exactly_one_step():
    grads = torch.linspace(-1, 2, 12, dtype=torch.float64)
    paper = radam_updates(grads, lr=0.1, betas=(0.9, 0.999), threshold=PAPER_THRESHOLD)
    torch_rule = torch_radam_updates(grads, lr=0.1, betas=(0.9, 0.999))
    differs = [t + 1 for t in range(12) if not math.isclose(paper[t], torch_rule[t], rel_tol=1e-9)]
    assert differs == [5], f"with rho_5 = 4.996, only update 5 should differ; got {differs}"


# --- the variance of the adaptive learning rate -----------------------------------------


@pytest.mark.parametrize("r", [6, 10, 30])
def test_exact_variance_matches_monte_carlo(r):
    generator = torch.Generator().manual_seed(r)
    samples = torch.randn(200_000, r, generator=generator, dtype=torch.float64)
    psi = (r / samples.square().sum(1)).sqrt()
    expected = adaptive_lr_variance(r).item()
    assert psi.var().item() == pytest.approx(expected, rel=0.05)


def test_paper_approximation_approaches_the_exact_variance():
    rhos = torch.tensor([10.0, 100.0, 1000.0, 10_000.0], dtype=torch.float64)
    exact = adaptive_lr_variance(rhos)
    approx = adaptive_lr_variance(rhos, approximate=True)
    gap = (approx / exact - 1).abs()
    assert (gap.diff() < 0).all() and gap[-1] < 1e-3
    assert (exact[-1] * 2 * rhos[-1]).item() == pytest.approx(1.0, rel=1e-3)


def test_variance_is_infinite_or_undefined_for_tiny_rho():
    assert math.isinf(adaptive_lr_variance(2.0).item())
    assert math.isnan(adaptive_lr_variance(3.0, approximate=True).item())


# --- validation ------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [0.0, 1.0, -0.5, 1.5])
def test_bad_beta2_is_a_value_error_naming_it(bad):
    with pytest.raises(ValueError, match="beta2"):
        rho(3, bad)


@pytest.mark.parametrize("bad", [0, -1, 2.5])
def test_bad_step_is_a_value_error_naming_it(bad):
    with pytest.raises(ValueError, match="step"):
        rho(bad, 0.999)


def test_threshold_that_is_never_reached():
    with pytest.raises(ValueError, match="threshold"):
        first_adaptive_step(0.6, threshold=4.0)  # rho_inf = 4


def test_bad_grads():
    with pytest.raises(ValueError, match="grads"):
        radam_updates([])
    with pytest.raises(ValueError, match="grads"):
        torch_radam_updates([1.0, math.inf])


# --- GI-Adam ----------------------------------------------------------------------------------


def _param_with_grad(values, grad):
    p = torch.tensor(values, dtype=torch.float64, requires_grad=True)
    p.grad = torch.tensor(grad, dtype=torch.float64)
    return p


@pytest.mark.parametrize("make", [torch.optim.Adam, Adam, torch.optim.AdamW, AdamW])
def test_gi_adam_state_after_init(make):
    p = _param_with_grad([1.0, -2.0, 3.0], [0.5, -4.0, 0.0])
    optimizer = make([p], lr=0.1)
    assert gi_adam_init_(optimizer) == 1
    state = optimizer.state[p]
    assert float(state["step"]) == 0
    torch.testing.assert_close(
        state["exp_avg_sq"], torch.tensor([0.25, 16.0, 0.0], dtype=torch.float64)
    )
    assert not state["exp_avg"].any()


@pytest.mark.parametrize("make", [torch.optim.Adam, Adam])
def test_gi_adam_first_step_is_shrunk_by_sqrt_one_minus_beta2(make):
    """v_1 = beta2 g^2 + (1 - beta2) g^2 = g^2, and the bias correction divides it by
    1 - beta2: the first step is lr * sqrt(1 - beta2) instead of plain Adam's lr."""
    lr, beta2, eps = 0.1, 0.999, 1e-8
    g = torch.tensor([0.5, -4.0, 1e-3], dtype=torch.float64)
    p = _param_with_grad([0.0, 0.0, 0.0], g.tolist())
    optimizer = make([p], lr=lr, betas=(0.9, beta2), eps=eps)
    gi_adam_init_(optimizer)
    optimizer.step()
    expected = -lr * g / (g.abs() / math.sqrt(1 - beta2) + eps)
    torch.testing.assert_close(p.detach(), expected, rtol=1e-12, atol=0)
    plain = _param_with_grad([0.0, 0.0, 0.0], g.tolist())
    torch_opt = make([plain], lr=lr, betas=(0.9, beta2), eps=eps)
    torch_opt.step()
    ratio = (p.detach() / plain.detach())[:2]
    torch.testing.assert_close(
        ratio, torch.full_like(ratio, math.sqrt(1 - beta2)), rtol=1e-6, atol=0
    )


@settings(max_examples=30, deadline=None)
@given(
    g=st.floats(min_value=1e-2, max_value=1e2) | st.floats(min_value=-1e2, max_value=-1e-2),
    beta2=st.floats(min_value=0.9, max_value=0.9999),
    steps=st.integers(min_value=1, max_value=60),
)
def test_gi_adam_is_a_sqrt_warmup_for_a_constant_gradient(g, beta2, steps):
    lr = 1e-2
    p = _param_with_grad([0.0], [g])
    optimizer = Adam([p], lr=lr, betas=(0.9, beta2), eps=0.0)
    gi_adam_init_(optimizer)
    before = 0.0
    for t in range(1, steps + 1):
        p.grad = torch.tensor([g], dtype=torch.float64)
        optimizer.step()
        step = p.item() - before
        before = p.item()
        expected = -lr * math.copysign(1.0, g) * math.sqrt(1 - beta2**t)
        assert step == pytest.approx(expected, rel=1e-9), f"update {t}"


def test_gi_adam_course_and_torch_agree_over_a_run():
    generator = torch.Generator().manual_seed(1)
    grads = torch.randn(25, 6, generator=generator, dtype=torch.float64)
    results = []
    for make in (torch.optim.Adam, Adam):
        p = torch.zeros(6, dtype=torch.float64, requires_grad=True)
        optimizer = make([p], lr=0.05, betas=(0.9, 0.99))
        p.grad = grads[0].clone()
        gi_adam_init_(optimizer)
        for g in grads:
            p.grad = g.clone()
            optimizer.step()
        results.append(p.detach().clone())
    torch.testing.assert_close(results[0], results[1], rtol=0, atol=0)


def test_gi_adam_with_amsgrad_steps():
    p = _param_with_grad([0.0, 0.0], [1.0, -2.0])
    optimizer = torch.optim.Adam([p], lr=0.1, amsgrad=True)
    gi_adam_init_(optimizer)
    assert "max_exp_avg_sq" in optimizer.state[p]
    optimizer.step()
    torch.testing.assert_close(
        optimizer.state[p]["max_exp_avg_sq"], torch.tensor([1.0, 4.0], dtype=torch.float64)
    )


def test_gi_adam_skips_parameters_without_gradients():
    a = _param_with_grad([1.0], [3.0])
    b = torch.zeros(2, dtype=torch.float64, requires_grad=True)
    optimizer = Adam([a, b], lr=0.1)
    assert gi_adam_init_(optimizer) == 1
    assert b not in optimizer.state or not optimizer.state[b]


def test_gi_adam_errors():
    p = _param_with_grad([1.0], [1.0])
    with pytest.raises(TypeError, match="optimizer"):
        gi_adam_init_(torch.optim.SGD([p], lr=0.1))
    no_grad = torch.zeros(1, requires_grad=True)
    with pytest.raises(ValueError, match="backward"):
        gi_adam_init_(torch.optim.Adam([no_grad], lr=0.1))
    optimizer = torch.optim.Adam([p], lr=0.1)
    optimizer.step()
    with pytest.raises(ValueError, match="before the first"):
        gi_adam_init_(optimizer)

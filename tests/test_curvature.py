"""Top Hessian eigenvalues by power iteration, checked against exact spectra."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.func import functional_call

from course_lib.curvature import (
    adam_preconditioner,
    adam_stability_threshold,
    gd_stability_threshold,
    hessian_vector_product,
    sharpness,
    top_eigenvalue,
    track_sharpness,
)
from course_lib.data import minibatches
from course_lib.models import MLP
from course_lib.optim import Adam
from course_lib.train import train


def _symmetric(eigenvalues, seed=0):
    """A random symmetric matrix with the given eigenvalues (float64)."""
    n = len(eigenvalues)
    generator = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=generator, dtype=torch.float64))
    return q @ torch.diag(torch.tensor(eigenvalues, dtype=torch.float64)) @ q.T


# --- power iteration on known spectra ------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(
    rest=st.lists(st.floats(min_value=-1.0, max_value=1.0), min_size=1, max_size=12),
    top=st.floats(min_value=1.5, max_value=50.0),
    seed=st.integers(0, 1000),
)
def test_top_eigenvalue_of_a_matrix_with_known_spectrum(rest, top, seed):
    eigenvalues = [top, *(top * r / 1.5 for r in rest)]  # the top is >= 1.5x any other
    a = _symmetric(eigenvalues, seed)
    found = top_eigenvalue(lambda v: a @ v, len(eigenvalues), max_iter=500, tol=1e-12,
                           seed=seed, dtype=torch.float64)  # fmt: skip
    assert found.converged
    assert found.value == pytest.approx(top, rel=1e-8)
    torch.testing.assert_close(a @ found.vector, top * found.vector, rtol=0, atol=1e-5 * top)


@pytest.mark.parametrize(
    "eigenvalues, expected",
    [
        ([-20.0, 5.0, 1.0, -3.0], 5.0),  # the largest magnitude is negative: shift and retry
        ([-4.0, -1.0, -9.0], -1.0),  # all negative: the top is the one nearest zero
        ([7.0, -6.0, 0.5], 7.0),
    ],
)
def test_top_eigenvalue_is_the_most_positive_not_the_largest_magnitude(eigenvalues, expected):
    a = _symmetric(eigenvalues, seed=3)
    found = top_eigenvalue(lambda v: a @ v, len(eigenvalues), max_iter=2000, tol=1e-13,
                           dtype=torch.float64)  # fmt: skip
    assert found.value == pytest.approx(expected, rel=1e-7)


def test_warm_start_converges_at_once_and_the_cap_is_reported():
    a = _symmetric([3.0, 2.9, 1.0], seed=1)  # a small gap: slow from a random start
    cold = top_eigenvalue(lambda v: a @ v, 3, max_iter=5, tol=1e-12, dtype=torch.float64)
    assert not cold.converged and cold.iterations == 5
    exact = torch.linalg.eigh(a).eigenvectors[:, -1]
    warm = top_eigenvalue(lambda v: a @ v, 3, init=exact, tol=1e-12, dtype=torch.float64)
    assert warm.converged and warm.iterations <= 3
    assert warm.value == pytest.approx(3.0, rel=1e-12)


def test_same_seed_same_result():
    a = _symmetric([4.0, 3.0, 1.0, 0.5], seed=2)
    one = top_eigenvalue(lambda v: a @ v, 4, max_iter=7, seed=5, dtype=torch.float64)
    two = top_eigenvalue(lambda v: a @ v, 4, max_iter=7, seed=5, dtype=torch.float64)
    assert one.value == two.value
    torch.testing.assert_close(one.vector, two.vector, rtol=0, atol=0)


# --- Hessian-vector products and sharpness -----------------------------------------------


def test_hvp_of_a_quadratic_is_the_matrix():
    a = _symmetric([5.0, 2.0, -1.0, 0.25], seed=4)
    b = torch.randn(4, dtype=torch.float64)
    x = torch.randn(4, dtype=torch.float64, requires_grad=True)
    loss = 0.5 * x @ a @ x + b @ x
    hvp = hessian_vector_product(loss, [x])
    for _ in range(3):
        v = torch.randn(4, dtype=torch.float64)
        torch.testing.assert_close(hvp(v), a @ v)


def test_sharpness_of_a_quadratic_split_over_two_tensors():
    a = _symmetric([9.0, 4.0, 1.0, 0.5, -2.0], seed=5)
    x = torch.randn(2, dtype=torch.float64, requires_grad=True)
    y = torch.randn(3, dtype=torch.float64, requires_grad=True)

    def closure():
        z = torch.cat([x, y])
        return 0.5 * z @ a @ z

    found = sharpness(closure, [x, y], max_iter=1000, tol=1e-12)
    assert found.value == pytest.approx(9.0, rel=1e-8)


def _tiny_mlp_problem(seed=0):
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = MLP(3, 2, hidden=5, depth=1).double()
    x = torch.randn(16, 3, generator=generator, dtype=torch.float64)
    y = torch.randn(16, 2, generator=generator, dtype=torch.float64)
    names = [name for name, _ in model.named_parameters()]
    shapes = [p.shape for p in model.parameters()]
    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])

    def loss_of_flat(theta):
        tensors, offset = {}, 0
        for name, shape in zip(names, shapes, strict=True):
            size = math.prod(shape)
            tensors[name] = theta[offset : offset + size].view(shape)
            offset += size
        out = functional_call(model, tensors, (x,))
        return torch.nn.functional.mse_loss(out, y)

    full = torch.autograd.functional.hessian(loss_of_flat, flat)
    return model, x, y, full


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_sharpness_of_a_tiny_mlp_matches_the_full_hessian(seed):
    model, x, y, full = _tiny_mlp_problem(seed)
    exact = torch.linalg.eigvalsh(full).max().item()
    found = sharpness(
        lambda: torch.nn.functional.mse_loss(model(x), y),
        list(model.parameters()),
        max_iter=5000,
        tol=1e-13,
    )
    assert found.value == pytest.approx(exact, rel=1e-7)


def test_preconditioned_sharpness_of_a_tiny_mlp_matches_the_full_hessian():
    model, x, y, full = _tiny_mlp_problem(7)
    generator = torch.Generator().manual_seed(7)
    p = torch.rand(full.shape[0], generator=generator, dtype=torch.float64) * 10 + 0.1
    scaled = full / p.sqrt()[:, None] / p.sqrt()[None, :]
    exact = torch.linalg.eigvalsh(scaled).max().item()
    found = sharpness(
        lambda: torch.nn.functional.mse_loss(model(x), y),
        list(model.parameters()),
        preconditioner=p,
        max_iter=5000,
        tol=1e-13,
    )
    assert found.value == pytest.approx(exact, rel=1e-7)
    assert exact != pytest.approx(torch.linalg.eigvalsh(full).max().item(), rel=1e-2)


# --- Adam's preconditioner and the stability thresholds ----------------------------------


@pytest.mark.parametrize("make", [torch.optim.Adam, Adam])
@pytest.mark.parametrize("amsgrad", [False, True])
def test_adam_preconditioner_for_a_constant_gradient(make, amsgrad):
    """A constant gradient g gives v_hat = g^2 exactly at every step, so P = |g| + eps."""
    g = torch.tensor([0.5, -3.0, 2e-3], dtype=torch.float64)
    w = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    b = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    optimizer = make([{"params": [w]}, {"params": [b], "eps": 1e-3}], lr=0.1,
                     betas=(0.9, 0.95), eps=1e-8, amsgrad=amsgrad)  # fmt: skip
    for _ in range(7):
        w.grad, b.grad = g.clone(), torch.tensor([4.0], dtype=torch.float64)
        optimizer.step()
    found = adam_preconditioner(optimizer, [w, b])
    expected = torch.cat([g.abs() + 1e-8, torch.tensor([4.0 + 1e-3], dtype=torch.float64)])
    torch.testing.assert_close(found, expected, rtol=1e-12, atol=0)


def test_adam_preconditioner_needs_a_step():
    w = torch.zeros(2, requires_grad=True)
    optimizer = torch.optim.Adam([w])
    with pytest.raises(ValueError, match=r"optimizer\.step\(\)"):
        adam_preconditioner(optimizer, [w])
    with pytest.raises(ValueError, match="not optimized"):
        adam_preconditioner(optimizer, [torch.zeros(1)])


def test_thresholds():
    assert gd_stability_threshold(0.01) == pytest.approx(200.0)
    assert adam_stability_threshold(0.01) == pytest.approx(3800.0)  # 38 / lr for beta1 = 0.9
    assert adam_stability_threshold(0.1, beta1=0.0) == pytest.approx(20.0)  # no momentum: 2 / lr


def _momentum_on_a_quadratic(curvature, lr, beta1, steps=4000):
    """Adam's update with a frozen preconditioner P = 1 on f(x) = curvature * x^2 / 2."""
    x, m = 1.0, 0.0
    for _ in range(steps):
        m = beta1 * m + (1 - beta1) * curvature * x
        x -= lr * m
        if abs(x) > 1e6:  # clearly diverging; stop before it overflows
            break
    return abs(x)


@pytest.mark.parametrize("beta1", [0.0, 0.5, 0.9, 0.95])
def test_adam_threshold_separates_stable_from_unstable_momentum(beta1):
    lr = 0.01
    threshold = adam_stability_threshold(lr, beta1)
    assert _momentum_on_a_quadratic(0.97 * threshold, lr, beta1) < 1e-3
    assert _momentum_on_a_quadratic(1.03 * threshold, lr, beta1) > 1e3


# --- validation ------------------------------------------------------------------------


def test_validation():
    with pytest.raises(ValueError, match="dim"):
        top_eigenvalue(lambda v: v, 0)
    with pytest.raises(ValueError, match="tol"):
        top_eigenvalue(lambda v: v, 3, tol=0.0)
    with pytest.raises(ValueError, match="init"):
        top_eigenvalue(lambda v: v, 3, init=torch.zeros(3))
    with pytest.raises(ValueError, match="init"):
        top_eigenvalue(lambda v: v, 3, init=torch.ones(4))
    x = torch.ones(2, requires_grad=True)
    with pytest.raises(ValueError, match="preconditioner"):
        sharpness(lambda: (x**2).sum(), [x], preconditioner=torch.tensor([1.0, -1.0]))
    with pytest.raises(ValueError, match="loss"):
        hessian_vector_product(x**2, [x])
    with pytest.raises(ValueError, match="learning rate"):
        adam_stability_threshold(0.0)
    with pytest.raises(ValueError, match="beta1"):
        adam_stability_threshold(0.1, beta1=1.0)


# --- tracking during training -------------------------------------------------------


def test_track_sharpness_records_every_block_and_matches_a_direct_measurement():
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(64, 3, generator=generator)
    y = torch.randn(64, 1, generator=generator)
    model = MLP(3, 1, hidden=8, depth=1)
    optimizer = Adam(model.parameters(), lr=1e-2)
    record = track_sharpness(
        model, optimizer, minibatches(x, y, 16, generator=generator), 25,
        measure_batch=(x, y), every=10, max_iter=200, tol=1e-6, progress=False,
    )  # fmt: skip
    assert record.steps == [10, 20, 25]
    assert len(record.history.losses) == 25 and len(record.history.lrs) == 25
    assert all(math.isfinite(v) and v > 0 for v in record.sharpness + record.preconditioned)
    params = list(model.parameters())
    direct = sharpness(
        lambda: torch.nn.functional.mse_loss(model(x), y),
        params,
        preconditioner=adam_preconditioner(optimizer, params),
        max_iter=500,
        tol=1e-7,
    )
    assert record.preconditioned[-1] == pytest.approx(direct.value, rel=1e-3)


def test_track_sharpness_at_chosen_steps_leaves_the_run_unchanged():
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(64, 3, generator=generator)
    y = torch.randn(64, 1, generator=generator)
    runs = []
    for tracked in (True, False):
        torch.manual_seed(1)
        model = MLP(3, 1, hidden=8, depth=1)
        optimizer = Adam(model.parameters(), lr=1e-2)
        batches = minibatches(x, y, 16, generator=torch.Generator().manual_seed(2))
        if tracked:
            record = track_sharpness(
                model, optimizer, batches, 12, measure_batch=(x, y), at=[3, 1, 10, 50],
                plain=False, progress=False,
            )  # fmt: skip
            assert record.steps == [1, 3, 10]
            assert all(math.isnan(v) for v in record.sharpness)
            losses = record.history.losses
        else:
            losses = train(model, optimizer, batches, 12, progress=False).losses
        runs.append((losses, torch.nn.utils.parameters_to_vector(model.parameters())))
    assert len(runs[0][0]) == 12 and runs[0][0] == runs[1][0]
    torch.testing.assert_close(runs[0][1], runs[1][1], rtol=0, atol=0)


def test_track_sharpness_needs_every_or_at():
    model = MLP(2, 1, hidden=2, depth=1)
    batch = (torch.zeros(4, 2), torch.zeros(4, 1))
    with pytest.raises(ValueError, match="every and at"):
        track_sharpness(model, Adam(model.parameters()), iter([]), 5, measure_batch=batch)
    with pytest.raises(ValueError, match="at"):
        track_sharpness(model, Adam(model.parameters()), iter([]), 5, measure_batch=batch, at=[0])

"""Relative update sizes ‖Δw‖/‖w‖: exact values on hand-made tensors, the zero-norm rule, bad
input, and the optimizer-step recorder against updates computed by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from course_lib.optim import Adam
from course_lib.update_size import (
    RelativeUpdateCap,
    UpdateSizeRecorder,
    ratio_of_norms,
    relative_update_sizes,
)

# --- relative_update_sizes on hand-made tensors ---------------------------------------------


def test_exact_values_on_hand_made_tensors():
    before = {
        "vector": torch.tensor([3.0, 4.0]),  # norm 5
        "matrix": torch.tensor([[1.0, 0.0], [0.0, 1.0]]),  # norm sqrt(2)
    }
    after = {
        "vector": torch.tensor([3.0, 5.0]),  # moved by 1
        "matrix": torch.tensor([[1.0, 2.0], [-2.0, 0.0]]),  # moved by (0, 2, -2, -1): norm 3
    }
    sizes = relative_update_sizes(before, after)
    assert sizes == {"vector": pytest.approx(0.2), "matrix": pytest.approx(3 / math.sqrt(2))}


def test_the_norm_is_of_the_weights_before_the_update():
    """The denominator is ‖w‖ before the step: swapping the snapshots changes the result."""
    before, after = {"w": torch.tensor([0.0, 2.0])}, {"w": torch.tensor([0.0, 4.0])}
    assert relative_update_sizes(before, after)["w"] == pytest.approx(1.0)
    assert relative_update_sizes(after, before)["w"] == pytest.approx(0.5)


def test_computed_in_float64():
    """A tiny update of float32 weights is not lost to float32 rounding of the norms."""
    w = torch.full((1000,), 1.0, dtype=torch.float32)
    moved = w.clone()
    moved[0] += 2.0**-20
    expected = 2.0**-20 / math.sqrt(1000)
    assert relative_update_sizes({"w": w}, {"w": moved})["w"] == pytest.approx(expected, rel=1e-9)


def test_zero_norm_rule():
    zero = torch.zeros(3)
    sizes = relative_update_sizes(
        {"still": zero, "moved": zero}, {"still": zero.clone(), "moved": torch.tensor([0, 1e-9, 0])}
    )
    assert sizes == {"still": 0.0, "moved": math.inf}


def test_non_finite_weights_give_nan():
    sizes = relative_update_sizes(
        {"a": torch.tensor([1.0, 2.0]), "b": torch.tensor([1.0, 2.0])},
        {"a": torch.tensor([1.0, math.nan]), "b": torch.tensor([math.inf, 2.0])},
    )
    assert math.isnan(sizes["a"]) and math.isnan(sizes["b"])


def test_ratio_of_norms_is_vectorised_with_the_same_rule():
    got = ratio_of_norms([1.0, 0.0, 2.0, math.nan, 1.0], [4.0, 0.0, 0.0, 1.0, math.inf])
    np.testing.assert_array_equal(got, [0.25, 0.0, math.inf, math.nan, math.nan])
    with pytest.raises(ValueError, match="negative"):
        ratio_of_norms(-1.0, 1.0)


@pytest.mark.parametrize(
    ("before", "after", "error", "message"),
    [
        ({"a": torch.ones(2)}, {"b": torch.ones(2)}, ValueError, r"missing from after \['a'\]"),
        ({"a": torch.ones(2)}, {"a": torch.ones(3)}, ValueError, r"'a': shape \(2,\)"),
        ({}, {}, ValueError, "empty"),
        ({"a": [1.0, 2.0]}, {"a": torch.ones(2)}, TypeError, "'a': expected tensors"),
        ([torch.ones(2)], {"a": torch.ones(2)}, TypeError, "before must map names"),
        ({"a": torch.ones(2)}, None, TypeError, "after must map names"),
    ],
)
def test_bad_input_is_named(before, after, error, message):
    with pytest.raises(error, match=message):
        relative_update_sizes(before, after)


# --- the recorder on real optimizer steps ----------------------------------------------------


def _linear_loss(params, directions):
    """A loss whose gradient with respect to params[i] is directions[i], at every point."""
    return sum((p * d).sum() for p, d in zip(params, directions, strict=True))


def test_recorder_matches_sgd_steps_computed_by_hand():
    w = torch.tensor([3.0, 4.0], dtype=torch.float64, requires_grad=True)
    m = torch.tensor([[1.0, 1.0], [1.0, 1.0]], dtype=torch.float64, requires_grad=True)
    g_w, g_m = torch.tensor([1.0, 0.0], dtype=torch.float64), torch.full((2, 2), 0.5).double()
    optimizer = torch.optim.SGD([{"params": [w], "lr": 0.5}, {"params": [m], "lr": 0.1}])
    with UpdateSizeRecorder(optimizer, [("w", w), ("m", m)]) as record:
        for _ in range(2):
            optimizer.zero_grad()
            _linear_loss([w, m], [g_w, g_m]).backward()
            optimizer.step()
    assert record.steps == 2 and record.names == ["w", "m"]
    # step 1: w moves by 0.5 * (1, 0) from norm 5; m by 0.1 * 0.5 in each of 4 entries, from 2
    # step 2: w = (2.5, 4) has norm sqrt(22.25); m = 0.95 everywhere has norm 1.9
    expected = [[0.5 / 5, 0.1 / 2], [0.5 / math.sqrt(22.25), 0.1 / 1.9]]
    np.testing.assert_allclose(record.relative(), expected, rtol=1e-12)
    np.testing.assert_allclose(record.lrs, [[0.5, 0.1], [0.5, 0.1]])
    # u = dw / lr is the gradient itself for SGD: rms 1/sqrt(2) for w, 0.5 for m
    np.testing.assert_allclose(record.update_rms_per_lr(), [[1 / math.sqrt(2), 0.5]] * 2)


def test_recorder_agrees_with_snapshots():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Tanh(), torch.nn.Linear(3, 2))
    optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
    x, y = torch.randn(16, 4), torch.randn(16, 2)
    snapshots = []
    with UpdateSizeRecorder(optimizer, model.named_parameters()) as record:
        for _ in range(3):
            snapshots.append({k: v.clone() for k, v in model.state_dict().items()})
            optimizer.zero_grad()
            torch.nn.functional.mse_loss(model(x), y).backward()
            optimizer.step()
    snapshots.append({k: v.clone() for k, v in model.state_dict().items()})
    for t in range(3):
        by_hand = relative_update_sizes(snapshots[t], snapshots[t + 1])
        np.testing.assert_allclose(record.relative()[t], [by_hand[n] for n in record.names])


def test_adam_first_update_has_rms_one_per_unit_rate_whatever_the_gradient():
    """The first Adam update is lr * sign(g): ‖Δw‖/‖w‖ = lr √n / ‖w‖, u has rms exactly 1."""
    w = torch.tensor([[0.1, -2.0, 3.0], [0.5, 0.0, 1.0]], dtype=torch.float64, requires_grad=True)
    gradient = torch.tensor([[1e-4, -30.0, 2.0], [0.7, -1e3, 5.0]], dtype=torch.float64)
    norm = float(w.detach().norm())
    optimizer = Adam([w], lr=0.01, eps=0.0)
    with UpdateSizeRecorder(optimizer, [("w", w)]) as record:
        _linear_loss([w], [gradient]).backward()
        optimizer.step()
    assert record.update_rms_per_lr()[0, 0] == pytest.approx(1.0, rel=1e-12)
    assert record.relative()[0, 0] == pytest.approx(0.01 * math.sqrt(6) / norm, rel=1e-12)


def test_zero_rate_step_records_zero_update_and_nan_rms():
    w = torch.tensor([1.0, 1.0], requires_grad=True)
    optimizer = torch.optim.SGD([w], lr=0.0)
    with UpdateSizeRecorder(optimizer, [("w", w)]) as record:
        w.sum().backward()
        optimizer.step()
    assert record.relative()[0, 0] == 0.0
    assert math.isnan(record.update_rms_per_lr()[0, 0])


def test_recorder_stops_when_removed_and_keeps_what_it_has():
    w = torch.ones(2, requires_grad=True)
    optimizer = torch.optim.SGD([w], lr=0.1)
    record = UpdateSizeRecorder(optimizer, [("w", w)])
    for _ in range(2):
        w.grad = torch.ones(2)
        optimizer.step()
    record.remove()
    w.grad = torch.ones(2)
    optimizer.step()
    assert record.steps == 2 and record.relative().shape == (2, 1)
    with UpdateSizeRecorder(optimizer, [("w", w)]) as second:
        optimizer.step()
    optimizer.step()
    assert second.steps == 1


def test_recorder_before_any_step_is_empty():
    w = torch.ones(2, requires_grad=True)
    record = UpdateSizeRecorder(torch.optim.SGD([w], lr=0.1), [("w", w)])
    assert record.steps == 0 and record.relative().shape == (0, 1)


def test_recorder_bad_input_is_named():
    w, stray = torch.ones(2, requires_grad=True), torch.ones(3, requires_grad=True)
    optimizer = torch.optim.SGD([w], lr=0.1)
    with pytest.raises(ValueError, match=r"not updated by the optimizer: \['stray'\]"):
        UpdateSizeRecorder(optimizer, [("w", w), ("stray", stray)])
    with pytest.raises(ValueError, match=r"repeat: \['w'\]"):
        UpdateSizeRecorder(optimizer, [("w", w), ("w", w)])
    with pytest.raises(ValueError, match="empty"):
        UpdateSizeRecorder(optimizer, [])
    with pytest.raises(TypeError, match=r"torch\.optim\.Optimizer"):
        UpdateSizeRecorder("adam", [("w", w)])
    with pytest.raises(TypeError, match="'w': expected a tensor"):
        UpdateSizeRecorder(optimizer, [("w", [1.0, 2.0])])


# --- the relative-update cap --------------------------------------------------------------


def test_cap_shortens_only_updates_above_the_limit_keeping_their_direction():
    big = torch.tensor([3.0, 4.0], dtype=torch.float64, requires_grad=True)  # norm 5
    small = torch.tensor([10.0, 0.0], dtype=torch.float64, requires_grad=True)  # norm 10
    optimizer = torch.optim.SGD([big, small], lr=1.0)
    with RelativeUpdateCap(optimizer, [("big", big), ("small", small)], max_ratio=0.1) as cap:
        big.grad = torch.tensor([0.0, -2.0], dtype=torch.float64)  # SGD moves it by (0, 2): 0.4
        small.grad = torch.tensor([0.5, 0.0], dtype=torch.float64)  # by (-0.5, 0): 0.05
        optimizer.step()
    # big: the update (0, 2) shortened to length 0.1 * 5 = 0.5, same direction
    torch.testing.assert_close(big.detach(), torch.tensor([3.0, 4.5], dtype=torch.float64))
    torch.testing.assert_close(small.detach(), torch.tensor([9.5, 0.0], dtype=torch.float64))
    assert cap.capped == [1]


def test_capped_updates_have_exactly_the_limit_and_record_agrees():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
    optimizer = torch.optim.Adam(model.parameters(), lr=0.3)  # first steps: about 0.3 / rms(w)
    matrices = [(n, p) for n, p in model.named_parameters() if p.ndim >= 2]
    x, y = torch.randn(32, 5), torch.randn(32, 1)
    # the recorder is registered after the cap, so it sees the capped updates
    with RelativeUpdateCap(optimizer, matrices, 0.05) as cap:
        with UpdateSizeRecorder(optimizer, model.named_parameters()) as record:
            for _ in range(5):
                optimizer.zero_grad()
                torch.nn.functional.mse_loss(model(x), y).backward()
                optimizer.step()
    relative = record.relative()
    capped_columns = [record.names.index(n) for n, _ in matrices]
    assert cap.capped[0] == 2  # both matrices would move by far more than 5 %
    np.testing.assert_allclose(relative[0, capped_columns], 0.05, rtol=1e-5)
    assert np.all(relative[:, capped_columns] <= 0.05 * (1 + 1e-5))
    biases = [i for i in range(len(record.names)) if i not in capped_columns]
    assert np.any(relative[:, biases] > 0.05)  # the biases were not capped


def test_cap_leaves_zero_weights_free_to_move():
    w = torch.zeros(3, requires_grad=True)
    optimizer = torch.optim.SGD([w], lr=1.0)
    with RelativeUpdateCap(optimizer, [("w", w)], 0.01) as cap:
        w.grad = torch.ones(3)
        optimizer.step()
    torch.testing.assert_close(w.detach(), -torch.ones(3))
    assert cap.capped == [0]


@pytest.mark.parametrize("max_ratio", [0, -0.1, math.inf, math.nan, True, "0.1"])
def test_cap_rejects_bad_max_ratio(max_ratio):
    w = torch.ones(2, requires_grad=True)
    with pytest.raises(ValueError, match="Invalid max_ratio"):
        RelativeUpdateCap(torch.optim.SGD([w], lr=0.1), [("w", w)], max_ratio)


def test_cap_rejects_parameters_the_optimizer_does_not_update():
    w, stray = torch.ones(2, requires_grad=True), torch.ones(2, requires_grad=True)
    with pytest.raises(ValueError, match=r"not updated by the optimizer: \['stray'\]"):
        RelativeUpdateCap(torch.optim.SGD([w], lr=0.1), [("stray", stray)], 0.1)

"""course_lib.optim.fast: the fused (compiled) AdamW step agrees with torch.optim.AdamW."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import DEVICES

from course_lib.optim.fast import FusedAdamW, adamw_fused_update


def _run(model, optimizer, data, steps):
    for _ in range(steps):
        optimizer.zero_grad()
        model(data).square().mean().backward()
        optimizer.step()


def _models(device):
    torch.manual_seed(0)
    base = torch.nn.Sequential(torch.nn.Linear(20, 30), torch.nn.Tanh(), torch.nn.Linear(30, 5))
    return base.to(device), copy.deepcopy(base).to(device)


@pytest.mark.parametrize("device", DEVICES)
def test_eager_fused_update_matches_torch_adamw(device):
    ours_model, torch_model = _models(device)
    ours = FusedAdamW(ours_model.parameters(), lr=3e-2, weight_decay=0.1, compile=False)
    reference = torch.optim.AdamW(torch_model.parameters(), lr=3e-2, weight_decay=0.1)
    data = torch.randn(16, 20, device=device)
    _run(ours_model, ours, data, 100)
    _run(torch_model, reference, data, 100)
    for p, q in zip(ours_model.parameters(), torch_model.parameters(), strict=True):
        # Same formula, other rounding order: float32 rounding, not bit-exact.
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
    state, torch_state = ours.state[ours_model[0].weight], reference.state[torch_model[0].weight]
    assert state["step"].item() == torch_state["step"].item() == 100
    torch.testing.assert_close(state["exp_avg_sq"], torch_state["exp_avg_sq"], rtol=1e-5, atol=0)


def test_update_formula_on_one_element():
    # One step from m = v = 0 with bias correction: p <- p (1 - lr wd) - lr * g / (|g| + eps)
    p, g = torch.tensor([2.0]), torch.tensor([-0.5])
    m, v = torch.zeros(1), torch.zeros(1)
    lr, wd = 0.1, 0.01
    adamw_fused_update(
        [p], [g], [m], [v],
        torch.tensor(1 - lr * wd), torch.tensor(lr / (1 - 0.9)), torch.tensor((1 - 0.999) ** 0.5),
        beta1=0.9, beta2=0.999, eps=1e-8,
    )  # fmt: skip
    assert p.item() == pytest.approx(2.0 * (1 - lr * wd) + lr, rel=1e-6)
    assert m.item() == pytest.approx(-0.05) and v.item() == pytest.approx(0.001 * 0.25)


@pytest.mark.parametrize("device", DEVICES)
def test_compiled_step_matches_torch_adamw(device):
    ours_model, torch_model = _models(device)
    ours = FusedAdamW(ours_model.parameters(), lr=3e-2, weight_decay=0.1)
    reference = torch.optim.AdamW(torch_model.parameters(), lr=3e-2, weight_decay=0.1)
    data = torch.randn(16, 20, device=device)
    _run(ours_model, ours, data, 30)
    _run(torch_model, reference, data, 30)
    for p, q in zip(ours_model.parameters(), torch_model.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
    # The learning rate is an input of the kernel, not a constant baked into it.
    for group in ours.param_groups + reference.param_groups:
        group["lr"] = 1e-3
    _run(ours_model, ours, data, 5)
    _run(torch_model, reference, data, 5)
    for p, q in zip(ours_model.parameters(), torch_model.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


def test_state_dict_is_torch_compatible():
    ours_model, torch_model = _models("cpu")
    reference = torch.optim.AdamW(torch_model.parameters(), lr=1e-2)
    data = torch.randn(16, 20)
    _run(torch_model, reference, data, 3)
    ours_model.load_state_dict(torch_model.state_dict())
    ours = FusedAdamW(ours_model.parameters(), compile=False)
    ours.load_state_dict(copy.deepcopy(reference.state_dict()))  # torch shares "step" otherwise
    _run(torch_model, reference, data, 3)
    _run(ours_model, ours, data, 3)
    for p, q in zip(ours_model.parameters(), torch_model.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


def test_bad_arguments():
    params = [torch.nn.Parameter(torch.zeros(3))]
    with pytest.raises(ValueError, match="learning rate"):
        FusedAdamW(params, lr=-1.0)
    with pytest.raises(ValueError, match="weight_decay"):
        FusedAdamW(params, weight_decay=-1.0)
    with pytest.raises(TypeError, match="compile"):
        FusedAdamW(params, compile="yes")
    opt = FusedAdamW(params, compile=False)
    opt.param_groups[0]["amsgrad"] = True
    params[0].grad = torch.ones(3)
    with pytest.raises(ValueError, match="amsgrad"):
        opt.step()


def test_parameters_that_gain_or_lose_gradients_are_handled():
    # The step caches its tensor lists; a parameter whose grad appears (or disappears)
    # must be picked up, with its own step count, as torch.optim.AdamW does.
    torch.manual_seed(0)
    ours_params = [torch.nn.Parameter(torch.randn(5, 5)) for _ in range(3)]
    torch_params = [torch.nn.Parameter(p.detach().clone()) for p in ours_params]
    ours = FusedAdamW(ours_params, lr=0.1, compile=False)
    reference = torch.optim.AdamW(torch_params, lr=0.1)
    for step, active in enumerate([[0], [0, 1], [0, 1, 2], [2], [0, 2]]):
        grads = [torch.randn(5, 5) for _ in range(3)]
        for i in range(3):
            ours_params[i].grad = grads[i].clone() if i in active else None
            torch_params[i].grad = grads[i].clone() if i in active else None
        ours.step()
        reference.step()
        for p, q in zip(ours_params, torch_params, strict=True):
            torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6, msg=f"step {step}")
    assert [ours.state[p]["step"].item() for p in ours_params] == [4, 2, 3]

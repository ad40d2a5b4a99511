"""course_lib.memory: bytes per parameter by recipe, exact optimizer-state sizes, step traffic."""

from __future__ import annotations

import pytest
import torch

from course_lib.memory import (
    RECIPES,
    adamw_step_traffic,
    bytes_per_parameter,
    eight_bit_state_bytes,
    format_bytes,
    optimizer_state_bytes,
    state_bytes_per_parameter,
    training_memory,
)
from course_lib.optim import AdamW


def test_recipes_match_the_usual_accounting():
    # fp32 AdamW: 4 (weights) + 4 (grads) + 8 (m, v) = 16 bytes; mixed precision with fp32
    # master weights also 16 (2 + 2 + 4 + 8), as in the ZeRO paper's 16 * Psi.
    assert RECIPES["fp32"].total == 16
    assert RECIPES["bf16-mixed"].total == 16
    assert RECIPES["bf16-mixed"].master_weights == 4
    assert RECIPES["fp32-8bit"].total == pytest.approx(10 + 8 / 2048)
    assert RECIPES["bf16-mixed-8bit"].optimizer_state == pytest.approx(2.00390625)
    assert eight_bit_state_bytes(256) == pytest.approx(2 + 8 / 256)


def test_seven_billion_parameters():
    memory = training_memory(7_000_000_000, "fp32")
    assert memory["total"] == 112e9
    assert memory["optimizer_state"] == 56e9
    mixed = training_memory(7_000_000_000, "bf16-mixed-8bit")
    assert mixed["total"] == pytest.approx(7e9 * (2 + 2 + 4 + 2 * (1 + 4 / 2048)))
    assert sum(v for k, v in mixed.items() if k != "total") == pytest.approx(mixed["total"])


def test_state_bytes_are_measured_exactly():
    params = [torch.nn.Parameter(torch.randn(100, 30)), torch.nn.Parameter(torch.randn(7))]
    opt = AdamW(params)
    with pytest.raises(ValueError, match="no state"):
        state_bytes_per_parameter(opt)
    for p in params:
        p.grad = torch.ones_like(p)
    opt.step()
    # two float32 moments per element, plus a 4-byte float32 step counter per tensor
    assert optimizer_state_bytes(opt) == 8 * 3007 + 4 * 2
    assert state_bytes_per_parameter(opt) == pytest.approx((8 * 3007 + 8) / 3007)
    amsgrad = AdamW(params, amsgrad=True)
    amsgrad.step()
    assert optimizer_state_bytes(amsgrad) == 12 * 3007 + 8


def test_step_traffic_is_28_bytes_per_fp32_parameter():
    assert adamw_step_traffic(1) == 28
    assert adamw_step_traffic(10**9) == 28e9
    # bf16 params and grads, fp32 states: 2*2 + 2 + 16
    assert adamw_step_traffic(1, param_bytes=2, grad_bytes=2) == 22


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: bytes_per_parameter("fp64"), "recipe"),
        (lambda: training_memory(-1, "fp32"), "num_params"),
        (lambda: training_memory(10, "fp32", block_size=0), "block_size"),
        (lambda: adamw_step_traffic(10, state_bytes=0), "state_bytes"),
        (lambda: adamw_step_traffic(-5), "num_params"),
        (lambda: format_bytes(-1), "num_bytes"),
    ],
)
def test_bad_arguments(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_optimizer_type_is_checked():
    with pytest.raises(TypeError, match="optimizer"):
        optimizer_state_bytes([torch.zeros(3)])


def test_format_bytes():
    assert format_bytes(112e9) == "112.0 GB"
    assert format_bytes(1.5e6) == "1.5 MB"
    assert format_bytes(12) == "12 B"


def test_state_bytes_count_a_shared_storage_once():
    p = torch.zeros(4, requires_grad=True)
    optimizer = torch.optim.SGD([p], lr=0.1)
    buffer = torch.zeros(8)
    optimizer.state[p] = {"a": buffer, "b": buffer, "c": torch.zeros(2, dtype=torch.float64)}
    assert optimizer_state_bytes(optimizer) == 8 * 4 + 2 * 8

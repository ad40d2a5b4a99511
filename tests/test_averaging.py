"""Tests for course_lib.averaging: an EMA of the weights against its closed forms.

With decay d and weights w_0 (at creation), w_1 .. w_t (after each update), the average is
sum_i (1 - d) d^(t-i) w_i / (1 - d^t) with bias correction and d^t w_0 + sum_i (1 - d) d^(t-i) w_i
without it. The no-correction form is also checked against torch.optim.swa_utils.AveragedModel.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from course_lib.averaging import WeightEMA, decay_from_half_life


def linear(weight, bias):
    """A 2 -> 1 float64 linear layer holding the given weights."""
    model = nn.Linear(2, 1).double()
    set_weights(model, weight, bias)
    return model


def set_weights(model, weight, bias):
    with torch.no_grad():
        model.weight.copy_(torch.tensor([weight], dtype=torch.float64))
        model.bias.copy_(torch.tensor([bias], dtype=torch.float64))


def closed_form(ws, decay, bias_correction):
    """The average of ws[1:] (ws[0] = the weights at creation), from its formula."""
    t = len(ws) - 1
    total = sum((1 - decay) * decay ** (t - i) * ws[i] for i in range(1, t + 1))
    if bias_correction:
        return total / (1 - decay**t) if t else ws[0]
    return decay**t * ws[0] + total


def test_hand_computed_values():
    # d = 1/2, w_0 = 0, then 1, 2, 4: sum = 1/2 (1/4 + 2/2 + 4) = 2.625; corrected / (7/8) = 3.
    # The second weight is 8 at creation and 0 after: d^3 * 8 = 1 without correction, 0 with.
    model = linear([0.0, 8.0], 0.0)
    plain, corrected = WeightEMA(model, 0.5, bias_correction=False), WeightEMA(model, 0.5)
    for w in (1.0, 2.0, 4.0):
        set_weights(model, [w, 0.0], w)
        plain.update(model)
        corrected.update(model)
    assert plain.averaged()["weight"].tolist() == [[2.625, 1.0]]
    assert plain.averaged()["bias"].item() == 2.625
    assert corrected.averaged()["weight"].tolist() == [[3.0, 0.0]]
    assert corrected.averaged()["bias"].item() == 3.0
    assert plain.num_updates == corrected.num_updates == 3


@pytest.mark.parametrize("bias_correction", [True, False])
@pytest.mark.parametrize("decay", [0.0, 0.3, 0.9, 0.999])
def test_matches_the_closed_form_after_every_update(decay, bias_correction):
    gen = torch.Generator().manual_seed(0)
    ws = [torch.randn(3, generator=gen, dtype=torch.float64) for _ in range(8)]
    model = linear(ws[0][:2].tolist(), ws[0][2].item())
    ema = WeightEMA(model, decay, bias_correction=bias_correction)
    for t in range(len(ws)):
        if t:
            set_weights(model, ws[t][:2].tolist(), ws[t][2].item())
            ema.update(model)
        expected = closed_form(ws[: t + 1], decay, bias_correction)
        got = torch.cat([ema.averaged()["weight"][0], ema.averaged()["bias"]])
        torch.testing.assert_close(got, expected, rtol=1e-11, atol=1e-14, msg=f"t={t}")


def test_bias_correction_forgets_the_initial_weights():
    a, b = linear([5.0, -5.0], 100.0), linear([0.0, 0.0], 0.0)
    emas = [WeightEMA(a, 0.9), WeightEMA(b, 0.9)]
    for w in (1.0, 3.0, -2.0):
        for model, ema in zip((a, b), emas, strict=True):
            set_weights(model, [w, w], w)
            ema.update(model)
    for name, tensor in emas[0].averaged().items():
        torch.testing.assert_close(tensor, emas[1].averaged()[name], rtol=1e-14, atol=1e-14)
    # the first update replaces the initial weights whatever they were: beta_1 = 1
    assert WeightEMA(a, 0.9).weight == 1.0
    assert WeightEMA(a, 0.9, bias_correction=False).weight == pytest.approx(0.1)


def test_without_correction_equals_torch_averaged_model():
    """AveragedModel copies the first weights it is given, then lerps with 1 - decay: the
    uncorrected EMA created from w_1 and updated with w_2 .. w_t."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1)).double()
    reference = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(0.8))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    ema = None
    for _ in range(12):
        optimizer.zero_grad()
        model(torch.randn(5, 4, dtype=torch.float64)).pow(2).mean().backward()
        optimizer.step()
        reference.update_parameters(model)
        if ema is None:
            ema = WeightEMA(model, 0.8, bias_correction=False)
        else:
            ema.update(model)
    ours = ema.averaged()
    for name, tensor in reference.module.named_parameters():
        torch.testing.assert_close(ours[name], tensor, rtol=1e-13, atol=1e-15, msg=name)


def test_half_life():
    d = decay_from_half_life(10)
    assert d**10 == pytest.approx(0.5, rel=1e-14)
    assert decay_from_half_life(1) == 0.5
    # the EMA's weight of an update ten updates back is half that of the latest
    ws = [torch.zeros(3, dtype=torch.float64) for _ in range(12)]
    ws[1][0], ws[11][0] = 1.0, 1.0  # the first and the latest update carry a marker
    ws[1][1], ws[11][2] = 1.0, 1.0
    model = linear([0.0, 0.0], 0.0)
    ema = WeightEMA(model, d, bias_correction=False)
    for w in ws[1:]:
        set_weights(model, w[:2].tolist(), w[2].item())
        ema.update(model)
    first, latest = ema.averaged()["weight"][0, 1].item(), ema.averaged()["bias"].item()
    assert first / latest == pytest.approx(0.5, rel=1e-12)
    for bad in (0, -3, math.inf, math.nan):
        with pytest.raises(ValueError, match="half_life"):
            decay_from_half_life(bad)
    with pytest.raises(TypeError, match="half_life"):
        decay_from_half_life("10")


def test_applied_swaps_the_average_in_and_restores_the_model_exactly():
    model = linear([0.1, 0.2], 0.3)
    ema = WeightEMA(model, 0.5)
    set_weights(model, [1.0 / 3, 2.0 / 7], 5.0 / 11)
    ema.update(model)
    set_weights(model, [0.7, -0.4], 0.25)
    ema.update(model)
    own = {k: v.clone() for k, v in model.state_dict().items()}
    with ema.applied(model) as inside:
        assert inside is model
        for name, tensor in ema.averaged().items():
            assert torch.equal(dict(model.named_parameters())[name].detach(), tensor)
        assert not torch.equal(model.weight.detach(), own["weight"])
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, own[name]), name
    with pytest.raises(RuntimeError, match="inside"), ema.applied(model):
        raise RuntimeError("inside")
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, own[name]), f"{name} not restored after an exception"


def test_copy_to_writes_the_average():
    model = linear([1.0, 1.0], 1.0)
    ema = WeightEMA(model, 0.5)
    set_weights(model, [3.0, 3.0], 3.0)
    ema.update(model)
    set_weights(model, [9.0, 9.0], 9.0)  # not yet folded in
    ema.copy_to(model)
    assert model.weight.tolist() == [[3.0, 3.0]] and model.bias.item() == 3.0


def test_batchnorm_buffers_refused_by_default_and_averaged_on_request():
    model = nn.Sequential(nn.Linear(2, 3), nn.BatchNorm1d(3)).double()
    with pytest.raises(ValueError, match=r"1\.running_mean.*update_bn"):
        WeightEMA(model, 0.9)
    ema = WeightEMA(model, 0.5, buffers="average")
    means = [model[1].running_mean.clone()]
    gen = torch.Generator().manual_seed(1)
    for _ in range(3):
        model(torch.randn(16, 2, generator=gen, dtype=torch.float64))  # updates the stats
        ema.update(model)
        means.append(model[1].running_mean.clone())
    torch.testing.assert_close(ema.averaged()["1.running_mean"], closed_form(means, 0.5, True))
    assert ema.averaged()["1.num_batches_tracked"].item() == 3  # copied, not averaged
    with ema.applied(model):
        assert torch.equal(model[1].running_mean, ema.averaged()["1.running_mean"])
    assert torch.equal(model[1].running_mean, means[-1])


def test_a_model_without_float_buffers_is_accepted():
    # LayerNorm has parameters, no buffers; an int buffer alone is not a statistic to average
    model = nn.Sequential(nn.Linear(2, 3), nn.LayerNorm(3))
    model.register_buffer("counter", torch.tensor(0))
    WeightEMA(model, 0.9)


@pytest.mark.parametrize("decay", [1.0, 1.5, -0.1, math.nan])
def test_bad_decay(decay):
    with pytest.raises(ValueError, match="Invalid decay"):
        WeightEMA(linear([0.0, 0.0], 0.0), decay)


@pytest.mark.parametrize("decay", [True, "0.9", None])
def test_decay_of_the_wrong_type(decay):
    with pytest.raises(TypeError, match="decay"):
        WeightEMA(linear([0.0, 0.0], 0.0), decay)


def test_other_bad_arguments():
    model = linear([0.0, 0.0], 0.0)
    with pytest.raises(ValueError, match="buffers"):
        WeightEMA(model, 0.9, buffers="keep")
    with pytest.raises(TypeError, match=r"nn\.Module"):
        WeightEMA(model.state_dict(), 0.9)
    ema = WeightEMA(model, 0.9)
    with pytest.raises(ValueError, match="missing"):
        ema.update(nn.Linear(2, 1, bias=False).double())
    with pytest.raises(ValueError, match="shape"):
        ema.copy_to(nn.Linear(3, 1).double())
    assert ema.num_updates == 0  # nothing half-done

"""course_lib.optim.ScheduleFreeAdamW against the authors' package, step by step in float64."""

from __future__ import annotations

import pytest
import schedulefree
import torch

from course_lib.optim import ScheduleFreeAdamW

SETTINGS = [
    dict(lr=0.01),
    dict(lr=0.02, betas=(0.8, 0.99), weight_decay=0.1, warmup_steps=5),
    dict(lr=0.005, weight_decay=0.01, warmup_steps=3, r=1.0, weight_lr_power=1.0, eps=1e-6),
]


def run(optimizer_class, settings, steps=12, seed=0):
    """Train a tiny two-tensor model; return y after each step and x after eval()."""
    torch.manual_seed(seed)
    w = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    b = torch.randn(3, dtype=torch.float64, requires_grad=True)
    data = torch.randn(steps, 8, 5, dtype=torch.float64)
    optimizer = optimizer_class([w, b], **settings)
    optimizer.train()
    trace = []
    for t in range(steps):
        loss = ((data[t] @ w + b).tanh() ** 2).mean() + (w**4).sum() * 1e-3
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        trace.append(torch.cat([w.detach().flatten(), b.detach()]).clone())
    optimizer.eval()
    x = torch.cat([w.detach().flatten(), b.detach()]).clone()
    optimizer.train()
    y_again = torch.cat([w.detach().flatten(), b.detach()]).clone()
    return torch.stack(trace), x, y_again


@pytest.mark.parametrize("settings", SETTINGS)
@pytest.mark.parametrize(
    "reference", ["AdamWScheduleFreeReference", "AdamWScheduleFree"], ids=["reference", "main"]
)
def test_matches_the_schedulefree_package(settings, reference):
    ours = run(ScheduleFreeAdamW, settings)
    theirs = run(getattr(schedulefree, reference), settings)
    for name, a, b in zip(
        ("train-mode y", "eval-mode x", "y after train()"), ours, theirs, strict=True
    ):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12, msg=f"{name} differs")


def test_eval_puts_the_average_in_the_parameters_and_train_puts_y_back():
    trace, x, y_again = run(ScheduleFreeAdamW, SETTINGS[1])
    assert not torch.allclose(x, trace[-1]), "eval() must switch the parameters to x"
    torch.testing.assert_close(y_again, trace[-1], rtol=0, atol=0)


def test_step_in_eval_mode_is_refused():
    p = torch.zeros(2, requires_grad=True)
    optimizer = ScheduleFreeAdamW([p])
    p.grad = torch.ones(2)
    with pytest.raises(RuntimeError, match=r"call optimizer.train\(\)"):
        optimizer.step()


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(lr=0.0), "lr must be positive"),
        (dict(betas=(1.0, 0.999)), "betas"),
        (dict(weight_decay=-0.1), "non-negative"),
    ],
)
def test_bad_settings_are_clear_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ScheduleFreeAdamW([torch.zeros(2, requires_grad=True)], **kwargs)

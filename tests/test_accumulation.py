"""Gradient accumulation gives the large-batch update."""

from __future__ import annotations

import contextlib
import copy

import pytest
import torch
from torch import nn

from course_lib.accumulation import accumulate_gradients, accumulation_step, split_batch
from course_lib.data import badly_scaled_teacher, minibatches
from course_lib.models import MLP
from course_lib.train import train


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models run fastest on one thread (several fight over 2 shared cores)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def setup(dtype):
    x, y = badly_scaled_teacher(1024, 8, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(1)
    model = MLP(8, 1, hidden=16).to(dtype)
    return x.to(dtype), y.to(dtype), model


@pytest.mark.parametrize(
    ("dtype", "tol", "micro"),
    [(torch.float64, 1e-12, 1), (torch.float64, 1e-12, 10), (torch.float64, 1e-12, 64),
     (torch.float32, 2e-5, 10)],
    ids=["float64-micro1", "float64-micro10", "float64-micro64", "float32-micro10"],
)  # fmt: skip
def test_accumulated_steps_equal_large_batch_steps(dtype, tol, micro):
    """64-example batches in micro-batches of `micro` (10 leaves a last one of 4) vs whole."""
    x, y, model = setup(dtype)
    reference, accumulated = model, copy.deepcopy(model)
    opt_ref = torch.optim.Adam(reference.parameters(), lr=3e-3)
    opt_acc = torch.optim.Adam(accumulated.parameters(), lr=3e-3)
    history = train(reference, opt_ref, minibatches(x, y, 64, generator=torch.Generator().manual_seed(2)),
                    20, progress=False)  # fmt: skip
    batches = minibatches(x, y, 64, generator=torch.Generator().manual_seed(2))
    losses = [accumulation_step(accumulated, opt_acc, batches, micro_batch_size=micro)
              for _ in range(20)]  # fmt: skip
    torch.testing.assert_close(
        torch.tensor(losses), torch.tensor(history.losses), rtol=tol, atol=tol
    )
    moved = max(
        (p - q).abs().max().item()
        for p, q in zip(model.parameters(), setup(dtype)[2].parameters(), strict=True)
    )
    assert moved > 1e-3, "the weights should have moved"
    for p, q in zip(reference.parameters(), accumulated.parameters(), strict=True):
        torch.testing.assert_close(q, p, rtol=tol, atol=tol,
                                   msg=lambda m: f"accumulation in micro-batches of {micro} differs "
                                   f"from the batch of 64 after 20 steps: {m}")  # fmt: skip


def test_equal_weights_per_micro_batch_would_be_wrong():
    """The last, smaller micro-batch must weigh less: averaging micro-batch means is not it."""
    x, y, model = setup(torch.float64)
    xb, yb = x[:10], y[:10]
    accumulate_gradients(model, xb, yb, micro_batch_size=4)  # pieces of 4, 4, 2
    accumulated = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    nn.functional.mse_loss(model(xb), yb).backward()
    for a, p in zip(accumulated, model.parameters(), strict=True):
        torch.testing.assert_close(a, p.grad, rtol=1e-12, atol=1e-14)
    model.zero_grad()
    for xm, ym in split_batch(xb, yb, 4):
        (nn.functional.mse_loss(model(xm), ym) / 3).backward()
    wrong = [p.grad for p in model.parameters()]
    assert max((a - w).abs().max().item() for a, w in zip(accumulated, wrong, strict=True)) > 1e-6


def test_ddp_communicates_only_on_the_last_micro_batch():
    class FakeDDP(nn.Module):
        def __init__(self, module):
            super().__init__()
            self.module, self.synced = module, []
            self._sync = True

        @contextlib.contextmanager
        def no_sync(self):
            self._sync = False
            try:
                yield
            finally:
                self._sync = True

        def forward(self, x):
            self.synced.append(self._sync)
            return self.module(x)

    x, y, model = setup(torch.float32)
    wrapped = FakeDDP(model)
    loss = accumulate_gradients(wrapped, x[:20], y[:20], micro_batch_size=8)
    assert wrapped.synced == [False, False, True]
    assert loss == pytest.approx(nn.functional.mse_loss(model(x[:20]), y[:20]).item(), rel=1e-5)


def test_split_batch_and_errors():
    x, y = torch.arange(10.0)[:, None], torch.arange(10.0)[:, None]
    assert [len(a) for a, _ in split_batch(x, y, 4)] == [4, 4, 2]
    with pytest.raises(ValueError, match="micro_batch_size"):
        split_batch(x, y, 0)
    with pytest.raises(TypeError, match="micro_batch_size"):
        split_batch(x, y, 2.0)
    with pytest.raises(ValueError, match="differ"):
        split_batch(x, y[:5], 2)


def test_a_diverged_batch_leaves_the_weights_alone():
    x, y, model = setup(torch.float32)
    y = y.clone()
    y[0] = float("nan")
    before = copy.deepcopy(model.state_dict())
    optimizer = torch.optim.Adam(model.parameters())
    with pytest.raises(FloatingPointError, match="diverged"):
        accumulation_step(model, optimizer, iter([(x[:16], y[:16])]), micro_batch_size=4)
    for name, value in model.state_dict().items():
        torch.testing.assert_close(value, before[name], rtol=0, atol=0)

"""Gradient accumulation: the gradient of a large batch, computed a few examples at a time.

A batch of ``B`` examples that does not fit in memory is split into micro-batches. Each
micro-batch's *mean* loss is multiplied by its share of the batch, ``len(micro) / B``, before
``backward()``; the ``.grad`` buffers add the pieces up, and one ``optimizer.step()`` follows.
The sum of the weighted micro-batch means is the mean over the whole batch, so the update is
the large-batch update, up to the order of floating-point additions. Weighting by the share,
rather than dividing by the number of micro-batches, keeps this exact when the last
micro-batch is smaller.

What it does not make equal: layers that look at the whole batch (batch norm statistics),
and anything counted in steps per *micro*-batch. Schedules and warmups count optimizer steps.

Under ``DistributedDataParallel`` every ``backward()`` all-reduces the gradients; inside
``model.no_sync()`` it only accumulates locally. :func:`accumulate_gradients` skips the
all-reduce on all micro-batches but the last, so each step communicates once.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator

import torch
from torch import Tensor, nn

__all__ = ["accumulate_gradients", "accumulation_step", "split_batch"]


def split_batch(x: Tensor, y: Tensor, micro_batch_size: int) -> list[tuple[Tensor, Tensor]]:
    """``(x, y)`` cut into consecutive micro-batches of ``micro_batch_size`` (the last may be
    smaller)."""
    if isinstance(micro_batch_size, bool) or not isinstance(micro_batch_size, int):
        raise TypeError(f"micro_batch_size must be an int, got {type(micro_batch_size).__name__}")
    if micro_batch_size < 1:
        raise ValueError(f"Invalid micro_batch_size: {micro_batch_size} (expected an int >= 1)")
    if len(x) != len(y):
        raise ValueError(f"Invalid x/y: lengths {len(x)} and {len(y)} differ")
    if len(x) == 0:
        raise ValueError("Invalid x: the batch is empty")
    return list(zip(x.split(micro_batch_size), y.split(micro_batch_size), strict=True))


def accumulate_gradients(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    micro_batch_size: int,
    loss_fn: Callable[[Tensor, Tensor], Tensor] = nn.functional.mse_loss,
) -> float:
    """Add the gradient of the mean loss over ``(x, y)`` to ``.grad``, a micro-batch at a time.

    ``loss_fn`` must return the *mean* over its batch (PyTorch's default reduction). Returns
    the mean loss over the whole batch. Does not zero the gradients and does not step.
    """
    pieces = split_batch(x, y, micro_batch_size)
    total = len(x)
    no_sync = getattr(model, "no_sync", None)
    loss_sum = 0.0
    for index, (xb, yb) in enumerate(pieces):
        last = index == len(pieces) - 1
        context = no_sync() if (no_sync is not None and not last) else contextlib.nullcontext()
        with context:
            loss = loss_fn(model(xb), yb)
            (loss * (len(xb) / total)).backward()
        loss_sum += loss.item() * len(xb)
    return loss_sum / total


def accumulation_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    batches: Iterator[tuple[Tensor, Tensor]],
    *,
    micro_batch_size: int,
    loss_fn: Callable[[Tensor, Tensor], Tensor] = nn.functional.mse_loss,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
) -> float:
    """One optimizer step on the next batch from ``batches``, accumulated over micro-batches.

    Zeroes the gradients, accumulates, steps the optimizer (and the scheduler, once per
    optimizer step). Returns the batch's mean loss; a non-finite loss raises
    ``FloatingPointError`` before the weights are touched.
    """
    x, y = next(batches)
    optimizer.zero_grad(set_to_none=True)
    loss = accumulate_gradients(model, x, y, micro_batch_size=micro_batch_size, loss_fn=loss_fn)
    if not math.isfinite(loss):
        raise FloatingPointError(f"the loss is {loss}: the run diverged")
    optimizer.step()
    if scheduler is not None:
        scheduler.step()
    return loss

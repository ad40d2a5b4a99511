"""A plain training loop that records what the chapters plot."""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

PROGRESS_ENV = "COURSE_PROGRESS"


def progress_enabled() -> bool:
    """Progress bars are on unless ``COURSE_PROGRESS=0`` (the book build sets it)."""
    return os.environ.get(PROGRESS_ENV, "1").strip() not in {"0", "false", "no", "off"}


@dataclass
class History:
    """What one run recorded: the loss and learning rate of every step."""

    losses: list[float] = field(default_factory=list)
    lrs: list[float] = field(default_factory=list)
    diverged: bool = False

    @property
    def final_loss(self) -> float:
        """Mean loss over the last tenth of the run (inf if it diverged)."""
        if self.diverged or not self.losses:
            return math.inf
        tail = self.losses[-max(1, len(self.losses) // 10) :]
        return sum(tail) / len(tail)


def train(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    batches: Iterator[tuple[Tensor, Tensor]],
    num_steps: int,
    *,
    loss_fn: Callable[[Tensor, Tensor], Tensor] = nn.functional.mse_loss,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    device: torch.device | str | None = None,
    progress: bool | None = None,
    desc: str | None = None,
) -> History:
    """Take ``num_steps`` optimizer steps on minibatches from ``batches``.

    Records the loss and the learning rate of ``optimizer.param_groups[0]`` at every step.
    A non-finite loss stops the run early with ``History.diverged = True``.
    """
    if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 0:
        raise ValueError(f"Invalid num_steps: {num_steps!r} (expected an int >= 0)")
    if progress is None:
        progress = progress_enabled()
    history = History()
    model.train()
    with tqdm(total=num_steps, desc=desc, disable=not progress, leave=False) as bar:
        for _ in range(num_steps):
            x, y = next(batches)
            if device is not None:
                x, y = x.to(device), y.to(device)
            history.lrs.append(float(optimizer.param_groups[0]["lr"]))
            optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(model(x), y)
            value = loss.item()
            if not math.isfinite(value):
                history.diverged = True
                break
            loss.backward()
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
            history.losses.append(value)
            bar.update()
            if bar.n % 50 == 0:
                bar.set_postfix(loss=f"{value:.4g}")
    return history

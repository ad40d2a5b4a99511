"""An exponential moving average (EMA) of a model's weights, kept alongside training.

Averaging the iterates of a stochastic gradient method cancels much of their noise without
lowering the learning rate (Polyak and Juditsky, 1992; Izmailov et al., 2018, "Averaging
Weights Leads to Wider Optima and Better Generalization"). An EMA weights the recent
iterates most: after ``t`` updates of the weights ``w_1 .. w_t`` (``w_0`` the weights it was
created from) it holds, with decay ``d``,

* with bias correction (the default), as Adam corrects its moments::

      sum_{i=1..t} (1 - d) d^(t-i) w_i / (1 - d^t)

  a weighted mean of ``w_1 .. w_t`` alone: the initial weights do not count;

* without it (``bias_correction=False``, as ``timm``'s ``ModelEmaV2`` and most
  training scripts do it)::

      d^t w_0 + sum_{i=1..t} (1 - d) d^(t-i) w_i

  which keeps a share ``d^t`` of the initial weights.

Both are one ``lerp`` per tensor and update: ``a_t = a_(t-1) + beta_t (w_t - a_(t-1))``,
``beta_t = (1 - d) / (1 - d^t)`` with correction, ``1 - d`` without. The weight of ``w_i``
halves every ``h`` updates back when ``d = 0.5^(1/h)``: :func:`decay_from_half_life`.

    ema = WeightEMA(model, decay_from_half_life(100))
    for ...:
        optimizer.step()
        ema.update(model)
    with ema.applied(model):          # the model holds the average inside the block
        loss = evaluate(model)

Buffers (BatchNorm's running statistics) are not parameters: by default a model with a
floating-point buffer is refused, because statistics collected with the training weights do
not belong to the averaged ones (recompute them, e.g. ``torch.optim.swa_utils.update_bn``).
``buffers="average"`` averages them like the weights, as ``timm`` does, and copies the
others (``num_batches_tracked``) from the latest model.
"""

from __future__ import annotations

import contextlib
import math
import numbers
from collections.abc import Iterator

import torch
from torch import Tensor, nn

__all__ = ["WeightEMA", "decay_from_half_life"]

BUFFER_MODES = ("refuse", "average")


def decay_from_half_life(half_life: float) -> float:
    """The decay ``d = 0.5^(1/half_life)``: the weight of an iterate halves every ``half_life``
    updates back."""
    if isinstance(half_life, bool) or not isinstance(half_life, numbers.Real):
        raise TypeError(f"half_life must be a number of updates, got {type(half_life).__name__}")
    if not (math.isfinite(half_life) and half_life > 0):
        raise ValueError(f"Invalid half_life: {half_life} (expected a finite number > 0)")
    return 0.5 ** (1.0 / half_life)


class WeightEMA:
    """An EMA of ``model``'s parameters (and, if asked, floating-point buffers).

    ``decay`` is in ``[0, 1)``: 0 keeps only the latest weights. ``update(model)`` after every
    optimizer step; ``averaged()`` returns the average by name, ``copy_to(model)`` writes it
    into a model, ``applied(model)`` does so for the length of a ``with`` block and then puts
    the model's own weights back, bit for bit. See the module's docstring for the formulas.
    """

    def __init__(
        self,
        model: nn.Module,
        decay: float,
        *,
        bias_correction: bool = True,
        buffers: str = "refuse",
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if isinstance(decay, bool) or not isinstance(decay, numbers.Real):
            raise TypeError(f"decay must be a real number, got {type(decay).__name__}")
        if not 0.0 <= decay < 1.0:  # also refuses NaN
            raise ValueError(f"Invalid decay: {decay} (expected 0 <= decay < 1)")
        if buffers not in BUFFER_MODES:
            raise ValueError(f"Invalid buffers: {buffers!r} (expected one of {BUFFER_MODES})")
        floating = [n for n, b in model.named_buffers() if torch.is_floating_point(b)]
        if floating and buffers == "refuse":
            raise ValueError(
                f"the model has floating-point buffers ({', '.join(floating)}), for example "
                "BatchNorm's running statistics, which were collected with the training "
                "weights, not the averaged ones: pass buffers='average' to average them too, "
                "or recompute them for the averaged weights (torch.optim.swa_utils.update_bn)"
            )
        self.decay = float(decay)
        self.bias_correction = bool(bias_correction)
        self.buffers = buffers
        self.num_updates = 0
        self._average = {name: t.detach().clone() for name, t in self._averaged_tensors(model)}
        self._copied = {name: b.detach().clone() for name, b in self._copied_buffers(model)}

    def _averaged_tensors(self, model: nn.Module) -> Iterator[tuple[str, Tensor]]:
        yield from model.named_parameters()
        if self.buffers == "average":
            yield from ((n, b) for n, b in model.named_buffers() if torch.is_floating_point(b))

    def _copied_buffers(self, model: nn.Module) -> Iterator[tuple[str, Tensor]]:
        if self.buffers == "average":
            yield from ((n, b) for n, b in model.named_buffers() if not torch.is_floating_point(b))

    def _matched(self, model: nn.Module) -> list[tuple[Tensor, Tensor]]:
        """(average, model tensor) pairs; a ValueError if the model is not the one averaged."""
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        ours = {**self._average, **self._copied}
        theirs = dict(self._averaged_tensors(model)) | dict(self._copied_buffers(model))
        if theirs.keys() != ours.keys():
            missing, extra = (
                sorted(ours.keys() - theirs.keys()),
                sorted(theirs.keys() - ours.keys()),
            )
            raise ValueError(
                f"the model does not match the averaged one: missing {missing}, unexpected {extra}"
            )
        for name, tensor in theirs.items():
            if tensor.shape != ours[name].shape:
                raise ValueError(
                    f"the model's {name} has shape {tuple(tensor.shape)}, the average "
                    f"{tuple(ours[name].shape)}"
                )
        return [(ours[name], theirs[name]) for name in ours]

    @property
    def weight(self) -> float:
        """``beta_t``, the share of the next update's weights in the average."""
        t = self.num_updates + 1
        if self.bias_correction:
            return (1.0 - self.decay) / (1.0 - self.decay**t)
        return 1.0 - self.decay

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Fold ``model``'s current weights into the average (call after each step)."""
        pairs = self._matched(model)  # the averaged tensors first, then the copied buffers
        beta = self.weight
        for average, tensor in pairs[: len(self._average)]:
            average.lerp_(tensor.detach(), beta)
        for copied, tensor in pairs[len(self._average) :]:
            copied.copy_(tensor)
        self.num_updates += 1

    def averaged(self) -> dict[str, Tensor]:
        """The average by name (copies): parameters, and buffers if they are averaged."""
        return {name: t.clone() for name, t in {**self._average, **self._copied}.items()}

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> None:
        """Write the average into ``model``'s parameters (and buffers, if averaged)."""
        for average, tensor in self._matched(model):
            tensor.copy_(average)

    @contextlib.contextmanager
    def applied(self, model: nn.Module) -> Iterator[nn.Module]:
        """Within the block ``model`` holds the average; afterwards its own weights again."""
        own = [tensor.detach().clone() for _, tensor in self._matched(model)]
        self.copy_to(model)
        try:
            yield model
        finally:
            with torch.no_grad():
                for saved, (_, tensor) in zip(own, self._matched(model), strict=True):
                    tensor.copy_(saved)

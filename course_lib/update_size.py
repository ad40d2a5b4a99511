"""How large an update is next to the weights it changes: ``‖Δw‖ / ‖w‖`` per parameter tensor.

Kosson, Messmer & Jaggi (2024, "Analyzing & Reducing the Need for Learning Rate Warmup in GPT
Training") read warmup as a limit on the size of the early updates ``Δw_t = η_t u_t``: Adam's
normalised update ``u_t`` is large at the start of training, and a small ``η_t`` keeps
``Δw_t`` small while it is. The size that matters for a weight matrix is relative, the change
of its direction: ``‖Δw_t‖ / ‖w_t‖``, with ``w_t`` the weights *before* the update.

:func:`relative_update_sizes` computes it from two snapshots of named tensors;
:class:`UpdateSizeRecorder` hooks into any ``torch.optim`` optimizer and records it at every
``step()``, together with ``‖Δw‖ / (η √n)``, the root mean square of the normalised update
``u = Δw / η`` (exactly 1 for Adam's first update, whatever the gradient).
:class:`RelativeUpdateCap` limits ``‖Δw‖ / ‖w‖`` directly instead, the idea behind the
optimizers Kosson et al. propose in place of warmup (theirs, LionAR, fixes the angular update
of a Lion step and keeps ``‖w‖`` constant; the cap is the bluntest version of the idea).

Norms are Frobenius norms (the Euclidean norm of all entries), in float64. **Zero-norm rule**: a
tensor whose weights before the update are all zero has no scale to compare with; its
relative update is ``0.0`` when the update is zero too (nothing moved) and ``inf`` when it is
not. Non-finite weights or updates (a diverged run) give ``nan``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Self

import numpy as np
import torch
from torch import Tensor

__all__ = ["RelativeUpdateCap", "UpdateSizeRecorder", "ratio_of_norms", "relative_update_sizes"]


def ratio_of_norms(update_norm, weight_norm) -> np.ndarray:
    """``update_norm / weight_norm`` elementwise, with the module's zero-norm rule.

    ``weight_norm == 0``: ``0.0`` if ``update_norm == 0``, else ``inf``; any non-finite input
    gives ``nan``. Norms must not be negative.
    """
    update = np.asarray(update_norm, dtype=float)
    weight = np.asarray(weight_norm, dtype=float)
    if np.any(update < 0) or np.any(weight < 0):
        raise ValueError(
            f"norms cannot be negative, got update_norm={update_norm!r}, "
            f"weight_norm={weight_norm!r}"
        )
    finite = np.isfinite(update) & np.isfinite(weight)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(weight > 0, update / np.where(weight > 0, weight, 1.0), np.inf)
    ratio = np.where((weight == 0) & (update == 0), 0.0, ratio)
    return np.where(finite, ratio, np.nan)


def _optimized_groups(optimizer, named: list[tuple[str, Tensor]]) -> list[int]:
    """The index of each tensor's param group; errors name what is not a parameter of it."""
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(
            f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}"
        )
    if not named:
        raise ValueError("named_parameters is empty: there is nothing to watch")
    names = [name for name, _ in named]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise ValueError(f"parameter names repeat: {repeated}")
    for name, p in named:
        if not isinstance(p, Tensor):
            raise TypeError(f"{name!r}: expected a tensor, got {type(p).__name__}")
    group_of = {id(p): i for i, group in enumerate(optimizer.param_groups) for p in group["params"]}
    outside = [name for name, p in named if id(p) not in group_of]
    if outside:
        raise ValueError(f"these parameters are not updated by the optimizer: {outside}")
    return [group_of[id(p)] for _, p in named]


def _norm(t: Tensor) -> float:
    return float(torch.linalg.vector_norm(t.detach().to(torch.float64)))


def relative_update_sizes(
    before: Mapping[str, Tensor], after: Mapping[str, Tensor]
) -> dict[str, float]:
    """``‖after[k] - before[k]‖ / ‖before[k]‖`` for every name ``k``.

    ``before`` and ``after`` map the same names to tensors of the same shapes (for example two
    ``model.state_dict()`` snapshots, taken before and after an optimizer step). Zero and
    non-finite norms follow the module's rule (see :func:`ratio_of_norms`).
    """
    for label, snapshot in (("before", before), ("after", after)):
        if not isinstance(snapshot, Mapping):
            raise TypeError(f"{label} must map names to tensors, got {type(snapshot).__name__}")
    if not before:
        raise ValueError("before is empty: there are no tensors to compare")
    if set(before) != set(after):
        missing = sorted(set(before) - set(after))
        extra = sorted(set(after) - set(before))
        raise ValueError(
            f"before and after must name the same tensors: missing from after {missing}, "
            f"only in after {extra}"
        )
    sizes = {}
    for name, old in before.items():
        new = after[name]
        if not isinstance(old, Tensor) or not isinstance(new, Tensor):
            raise TypeError(
                f"{name!r}: expected tensors, got {type(old).__name__} and {type(new).__name__}"
            )
        if old.shape != new.shape:
            raise ValueError(
                f"{name!r}: shape {tuple(old.shape)} before the update and "
                f"{tuple(new.shape)} after it"
            )
        delta = new.detach().to(torch.float64) - old.detach().to(torch.float64)
        sizes[name] = float(ratio_of_norms(_norm(delta), _norm(old)))
    return sizes


class _StepHooks:
    """Hooks on ``optimizer.step()`` for named parameters: before each step they are copied
    (``_snapshot``), after it :meth:`_after` (the subclass's) sees them and the copy. A
    context manager; :meth:`remove` takes the hooks off."""

    def __init__(
        self, optimizer: torch.optim.Optimizer, named_parameters: Iterable[tuple[str, Tensor]]
    ) -> None:
        pairs = list(named_parameters)
        self._groups = _optimized_groups(optimizer, pairs)
        self.names = [name for name, _ in pairs]
        self._params = [p for _, p in pairs]
        self._snapshot: list[Tensor] | None = None
        self._handles = [
            optimizer.register_step_pre_hook(self._before),
            optimizer.register_step_post_hook(self._after),
        ]

    def _before(self, optimizer, args, kwargs) -> None:
        self._snapshot = [p.detach().clone() for p in self._params]

    def remove(self) -> None:
        """Stop (what was recorded stays)."""
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.remove()


class UpdateSizeRecorder(_StepHooks):
    """Record the update of named parameters at every ``optimizer.step()``.

    Before each step the recorder copies the parameters; after it, it stores ``‖Δw‖``, the
    norm ``‖w‖`` before the step, and the learning rate of the parameter's group, one row per
    step. Use it as a context manager, or call :meth:`remove` to stop recording::

        matrices = [(n, p) for n, p in model.named_parameters() if p.ndim >= 2]
        with UpdateSizeRecorder(optimizer, matrices) as record:
            train(model, optimizer, batches, 100)
        record.relative()          # (steps, parameters): ‖Δw‖ / ‖w‖
    """

    def __init__(
        self, optimizer: torch.optim.Optimizer, named_parameters: Iterable[tuple[str, Tensor]]
    ) -> None:
        super().__init__(optimizer, named_parameters)
        self.numels = np.array([p.numel() for p in self._params])
        self._lrs_now: list[float] = []
        self.update_norms: list[list[float]] = []
        self.weight_norms: list[list[float]] = []
        self.lrs: list[list[float]] = []

    def _before(self, optimizer, args, kwargs) -> None:
        super()._before(optimizer, args, kwargs)
        self._lrs_now = [float(optimizer.param_groups[g]["lr"]) for g in self._groups]

    def _after(self, optimizer, args, kwargs) -> None:
        if self._snapshot is None:  # pragma: no cover - torch always calls the pre-hook first
            return
        with torch.no_grad():
            deltas = [
                torch.linalg.vector_norm((p.detach() - old).to(torch.float64))
                for p, old in zip(self._params, self._snapshot, strict=True)
            ]
            weights = [torch.linalg.vector_norm(old.to(torch.float64)) for old in self._snapshot]
            norms = torch.stack([*deltas, *weights]).cpu().tolist()
        self.update_norms.append(norms[: len(deltas)])
        self.weight_norms.append(norms[len(deltas) :])
        self.lrs.append(self._lrs_now)
        self._snapshot = None

    @property
    def steps(self) -> int:
        """How many steps were recorded."""
        return len(self.update_norms)

    def relative(self) -> np.ndarray:
        """``‖Δw‖ / ‖w‖``, shape ``(steps, parameters)``, in the order of :attr:`names`."""
        return ratio_of_norms(self._array(self.update_norms), self._array(self.weight_norms))

    def update_rms_per_lr(self) -> np.ndarray:
        """``‖Δw‖ / (η √n)``: the root mean square of the normalised update ``u = Δw / η``.

        For Adam without weight decay, ``|u_i| = |m̂_i| / (√v̂_i + ε)``: exactly 1 in every
        coordinate at the first step (up to ε), whatever the gradient. ``nan`` where ``η = 0``.
        """
        lrs = self._array(self.lrs)
        with np.errstate(divide="ignore", invalid="ignore"):
            rms = self._array(self.update_norms) / (lrs * np.sqrt(self.numels))
        return np.where(lrs > 0, rms, np.nan)

    def _array(self, rows: list[list[float]]) -> np.ndarray:
        return np.array(rows, dtype=float).reshape(len(rows), len(self.names))


class RelativeUpdateCap(_StepHooks):
    """After every ``optimizer.step()``, shorten any update larger than ``max_ratio · ‖w‖``.

    For each watched tensor, with ``w`` its value before the step and ``Δw`` the optimizer's
    update: if ``‖Δw‖ > max_ratio · ‖w‖`` the tensor is set to ``w + Δw · max_ratio ‖w‖ / ‖Δw‖``
    (same direction, relative size ``max_ratio``); otherwise it is left as the optimizer left
    it. The optimizer's state (Adam's moments) is not touched. A tensor whose weights are all
    zero before the step has no scale to limit against and is left alone (a cap there would
    keep it at zero for ever). :attr:`capped` counts, per step, how many tensors were
    shortened. Use as a context manager, or call :meth:`remove`.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        named_parameters: Iterable[tuple[str, Tensor]],
        max_ratio: float,
    ) -> None:
        if (
            isinstance(max_ratio, bool)
            or not isinstance(max_ratio, int | float)
            or not 0 < max_ratio < float("inf")
        ):
            raise ValueError(f"Invalid max_ratio: {max_ratio!r} (expected a number > 0)")
        super().__init__(optimizer, named_parameters)
        self.max_ratio = float(max_ratio)
        self.capped: list[int] = []

    def _after(self, optimizer, args, kwargs) -> None:
        if self._snapshot is None:  # pragma: no cover - torch always calls the pre-hook first
            return
        shortened = 0
        with torch.no_grad():
            for p, old in zip(self._params, self._snapshot, strict=True):
                delta = p - old
                limit = self.max_ratio * torch.linalg.vector_norm(old.to(torch.float64))
                size = torch.linalg.vector_norm(delta.to(torch.float64))
                if limit > 0 and size > limit:
                    p.copy_(old + delta * (limit / size).to(p.dtype))
                    shortened += 1
        self.capped.append(shortened)
        self._snapshot = None

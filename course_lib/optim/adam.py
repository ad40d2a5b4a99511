"""``Adam`` and ``AdamW`` as ``torch.optim.Optimizer`` subclasses.

The classes do bookkeeping only: validate hyperparameters, keep ``param_groups`` and
``state`` under the same keys as PyTorch (``step``, ``exp_avg``, ``exp_avg_sq``,
``max_exp_avg_sq``), and hand tensors to the functions in :mod:`course_lib.optim.functional`.
Because the keys and the arithmetic are PyTorch's, a ``state_dict`` saved from
``torch.optim.AdamW`` loads into :class:`AdamW` and training continues identically, and
the other way round.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable
from numbers import Real
from typing import Any

import torch
from torch import Tensor

from course_lib.optim.functional import adam_multi_tensor, adam_step


def _check_hyperparameters(group: dict[str, Any]) -> None:
    """Raise ``ValueError`` with PyTorch's wording for a hyperparameter out of range."""
    lr = group["lr"]
    if isinstance(lr, Tensor):
        if lr.numel() != 1:
            raise ValueError("Tensor lr must be 1-element")
        lr = lr.item()
    betas = group["betas"]
    if not isinstance(betas, (tuple, list)) or len(betas) != 2:
        raise TypeError(f"betas must be a pair (beta1, beta2), got {betas!r}")
    for name, value in (("lr", lr), ("eps", group["eps"]), ("weight_decay", group["weight_decay"])):
        if isinstance(value, bool) or not isinstance(value, Real):
            raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    if not 0.0 <= lr:
        raise ValueError(f"Invalid learning rate: {lr}")
    if not 0.0 <= group["eps"]:
        raise ValueError(f"Invalid epsilon value: {group['eps']}")
    for index, beta in enumerate(betas):
        if isinstance(beta, Tensor):
            if beta.numel() != 1:
                raise ValueError(f"Tensor betas[{index}] must be 1-element")
            beta = beta.item()
        if isinstance(beta, bool) or not isinstance(beta, Real):
            raise TypeError(f"betas[{index}] must be a real number, got {type(beta).__name__}")
        if not 0.0 <= beta < 1.0:
            raise ValueError(f"Invalid beta parameter at index {index}: {beta}")
    if not 0.0 <= group["weight_decay"]:
        raise ValueError(f"Invalid weight_decay value: {group['weight_decay']}")


def _as_float(value: float | Tensor) -> float:
    return value.item() if isinstance(value, Tensor) else float(value)


class Adam(torch.optim.Optimizer):
    """Adam (Kingma & Ba, 2015), with torch's constructor, defaults, validation and state.

    ``foreach=None`` picks the multi-tensor path when every parameter is on CUDA and the
    per-tensor loop otherwise, as ``torch.optim.Adam`` does. ``decoupled_weight_decay=True``
    makes it AdamW; :class:`AdamW` is that with a default ``weight_decay`` of ``1e-2``.
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float | Tensor = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0,
        amsgrad: bool = False,
        *,
        foreach: bool | None = None,
        maximize: bool = False,
        decoupled_weight_decay: bool = False,
    ) -> None:
        defaults = {
            "lr": lr,
            "betas": tuple(betas) if isinstance(betas, (tuple, list)) else betas,
            "eps": eps,
            "weight_decay": weight_decay,
            "amsgrad": amsgrad,
            "maximize": maximize,
            "foreach": foreach,
            "decoupled_weight_decay": decoupled_weight_decay,
        }
        _check_hyperparameters(defaults)
        super().__init__(params, defaults)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        # torch checks only the constructor's defaults; a group's own values are checked too.
        super().add_param_group(param_group)
        _check_hyperparameters(self.param_groups[-1])

    def __setstate__(self, state: dict[str, Any]) -> None:
        # Called by load_state_dict: fill keys that an older or foreign state_dict lacks.
        super().__setstate__(state)
        for group in self.param_groups:
            group.setdefault("amsgrad", False)
            group.setdefault("maximize", False)
            group.setdefault("foreach", None)
            group.setdefault("decoupled_weight_decay", False)
            for p in group["params"]:
                p_state = self.state.get(p, {})
                if p_state and not torch.is_tensor(p_state["step"]):
                    p_state["step"] = torch.tensor(float(p_state["step"]), dtype=torch.float32)

    def _init_state(self, p: Tensor, amsgrad: bool) -> dict[str, Tensor]:
        state = self.state[p]
        if not state:
            # Same layout as torch: the step counter is a float32 scalar on the CPU.
            state["step"] = torch.tensor(0.0, dtype=torch.float32)
            state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        if amsgrad and "max_exp_avg_sq" not in state:
            state["max_exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        return state

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        """Perform one update of every parameter that has a gradient; return the closure's loss."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()

        for group in self.param_groups:
            beta1, beta2 = (_as_float(b) for b in group["betas"])
            hyper = {
                "lr": _as_float(group["lr"]),
                "beta1": beta1,
                "beta2": beta2,
                "eps": group["eps"],
                "weight_decay": group["weight_decay"],
                "decoupled_weight_decay": group["decoupled_weight_decay"],
                "amsgrad": group["amsgrad"],
                "maximize": group["maximize"],
            }
            tensors = []  # (param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq, step)
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError(
                        "Adam does not support sparse gradients, please consider SparseAdam instead"
                    )
                state = self._init_state(p, group["amsgrad"])
                state["step"] += 1
                views = _real_views(
                    p,
                    p.grad,
                    state["exp_avg"],
                    state["exp_avg_sq"],
                    state.get("max_exp_avg_sq") if group["amsgrad"] else None,
                )
                tensors.append((*views, state["step"].item()))
            if not tensors:
                continue

            foreach = group["foreach"]
            if foreach is None:
                foreach = all(t[0].is_cuda for t in tensors)
            if foreach:
                for bucket in _by_device_and_dtype(tensors):
                    params, grads, exp_avgs, exp_avg_sqs, max_sqs, steps = map(
                        list, zip(*bucket, strict=True)
                    )
                    adam_multi_tensor(params, grads, exp_avgs, exp_avg_sqs, max_sqs, steps, **hyper)
            else:
                for param, grad, exp_avg, exp_avg_sq, max_sq, t in tensors:
                    adam_step(param, grad, exp_avg, exp_avg_sq, max_sq, t, **hyper)
        return loss


class AdamW(Adam):
    """AdamW (Loshchilov & Hutter, 2019): Adam with decoupled weight decay.

    Each step first multiplies the weights by ``1 - lr * weight_decay``, then takes the Adam
    step with the plain gradient. Note PyTorch's convention, kept here: the decay is scaled by
    the *current* learning rate, so the paper's ``lambda`` is ``lr * weight_decay``.
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float | Tensor = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
        amsgrad: bool = False,
        *,
        foreach: bool | None = None,
        maximize: bool = False,
    ) -> None:
        super().__init__(
            params,
            lr,
            betas,
            eps,
            weight_decay,
            amsgrad,
            foreach=foreach,
            maximize=maximize,
            decoupled_weight_decay=True,
        )

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        for group in self.param_groups:
            group["decoupled_weight_decay"] = True


def _real_views(*tensors: Tensor | None) -> tuple[Tensor | None, ...]:
    """Complex tensors are updated as pairs of reals, as torch does (``view_as_real``)."""
    return tuple(
        torch.view_as_real(t) if t is not None and torch.is_complex(t) else t for t in tensors
    )


def _by_device_and_dtype(tensors: list[tuple]) -> list[list[tuple]]:
    """Split the update's tensors into buckets that one ``_foreach`` call can take."""
    buckets: dict[tuple[torch.device, torch.dtype], list[tuple]] = defaultdict(list)
    for entry in tensors:
        buckets[(entry[0].device, entry[0].dtype)].append(entry)
    return list(buckets.values())

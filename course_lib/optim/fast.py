"""A fused AdamW step: the multi-tensor update, compiled by ``torch.compile`` into one kernel.

One AdamW step reads each parameter, its gradient and both moments, and writes the parameter
and the moments back: 28 bytes per float32 parameter, for about a dozen floating-point
operations. Memory traffic, not arithmetic, sets its speed. The readable per-tensor loop
(:func:`course_lib.optim.adam_step`) makes one pass over memory per operation, about ten in
all; the multi-tensor path (:func:`course_lib.optim.adam_multi_tensor`) makes the same passes
with fewer calls. A *fused* step makes one pass: it loads the four values of an element,
computes, and stores three.

:func:`adamw_fused_update` is written as the per-element arithmetic; ``torch.compile``
(Inductor) turns it into one loop per tensor (C++ with OpenMP on a CPU, Triton on a GPU).
Everything that changes from step to step (the learning rate, the bias corrections) is passed
as a 0-dimensional tensor computed outside, so the compiled kernel is reused at every step
and never computes a power per element.

:class:`FusedAdamW` is :class:`course_lib.optim.AdamW` with this step. ``compile=False``
runs the same function eagerly, for machines where Inductor cannot compile (it needs a C++
compiler on a CPU, Triton on a GPU).
"""

from __future__ import annotations

import warnings
from collections import defaultdict
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor

from course_lib.optim.adam import AdamW, _as_float


def adamw_fused_update(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    decay: Tensor,
    step_size: Tensor,
    bias_correction2_sqrt: Tensor,
    *,
    beta1: float,
    beta2: float,
    eps: float,
) -> None:
    """AdamW over lists of tensors, in place, as one expression per element.

    ``decay = 1 - lr * weight_decay``, ``step_size = lr / (1 - beta1**t)`` and
    ``bias_correction2_sqrt = sqrt(1 - beta2**t)`` are 0-dimensional tensors on the
    parameters' device.
    """
    for p, g, m, v in zip(params, grads, exp_avgs, exp_avg_sqs, strict=True):
        p.mul_(decay)
        m.lerp_(g, 1 - beta1)
        v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
        denom = v.sqrt() / bias_correction2_sqrt + eps
        p.sub_(m / denom * step_size)


_COMPILED: dict[str, Callable[..., None]] = {}


def compiled_update() -> Callable[..., None]:
    """:func:`adamw_fused_update` compiled by ``torch.compile(fullgraph=True)``, made once.

    Compilation happens at the first call for each set of shapes and takes seconds (a minute
    for hundreds of tensors); Inductor caches the kernels on disk for later processes.
    """
    if "update" not in _COMPILED:
        # Inductor's wrapper re-checks every input's size and stride in Python before the
        # kernel (4 calls per parameter: most of a small tensors' step); Dynamo's guards check
        # exactly that already (dynamic=False), so the asserts are switched off.
        _COMPILED["update"] = torch.compile(
            adamw_fused_update,
            fullgraph=True,
            dynamic=False,
            options={"size_asserts": False, "alignment_asserts": False},
        )
    return _COMPILED["update"]


class FusedAdamW(AdamW):
    """:class:`course_lib.optim.AdamW` whose step is :func:`adamw_fused_update`, compiled.

    Same constructor, state keys and ``state_dict`` as :class:`AdamW` (and so as
    ``torch.optim.AdamW``), without ``amsgrad`` and ``maximize``. The results agree with
    ``torch.optim.AdamW`` to float32 rounding, not bit for bit: the fused kernel evaluates
    the same formula in a different order (and with fused multiply-adds).
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float | Tensor = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
        *,
        compile: bool = True,
    ) -> None:
        if not isinstance(compile, bool):
            raise TypeError(f"compile must be a bool, got {type(compile).__name__}")
        self._plans: dict[int, tuple] = {}
        super().__init__(params, lr, betas, eps, weight_decay)
        self._update = compiled_update() if compile else adamw_fused_update

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        """One AdamW update of every parameter that has a gradient; return the closure's loss."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for index, group in enumerate(self.param_groups):
            if group["amsgrad"] or group["maximize"]:
                raise ValueError("FusedAdamW supports neither amsgrad nor maximize")
            lr = _as_float(group["lr"])
            beta1, beta2 = (_as_float(b) for b in group["betas"])
            active = [p for p in group["params"] if p.grad is not None]
            if not active:
                continue
            for device, params, exp_avgs, exp_avg_sqs, counters in self._plan(index, active):
                counters.add_(1.0)  # every state["step"] of the bucket is a view into it
                t = counters[0].item()  # a bucket's counters are equal (see _plan)
                grads = [p.grad for p in params]
                scalars = torch.tensor(
                    [1 - lr * group["weight_decay"], lr / (1 - beta1**t), (1 - beta2**t) ** 0.5],
                    dtype=torch.float32,
                    device=device,
                )
                with warnings.catch_warnings():
                    # Inductor imports deprecated torch.jit helpers while it compiles; the
                    # warnings are torch's own and say nothing about this code.
                    warnings.filterwarnings("ignore", category=DeprecationWarning)
                    warnings.filterwarnings("ignore", category=FutureWarning, module=r"torch\.")
                    self._update(
                        params,
                        grads,
                        exp_avgs,
                        exp_avg_sqs,
                        scalars[0],
                        scalars[1],
                        scalars[2],
                        beta1=beta1,
                        beta2=beta2,
                        eps=group["eps"],
                    )
        return loss

    def _plan(self, index: int, active: list[Tensor]) -> list[tuple]:
        """The step's tensors, bucketed by device, dtype and step count; cached between steps.

        Looking up the state of hundreds of tensors costs more than the compiled update of
        small ones, so the lists are built once and reused for as long as the same
        parameters have gradients (and no state_dict is loaded).
        """
        key = tuple(map(id, active))
        cached = self._plans.get(index)
        if cached is not None and cached[0] == key:
            return cached[1]
        for p in active:
            if p.grad.is_sparse or torch.is_complex(p):
                raise RuntimeError("FusedAdamW supports dense real tensors only")
        states = [self._init_state(p, amsgrad=False) for p in active]
        steps = torch.stack([state["step"] for state in states]).tolist()
        buckets: dict[tuple, list[int]] = defaultdict(list)
        for i, (p, t) in enumerate(zip(active, steps, strict=True)):
            buckets[(p.device, p.dtype, t)].append(i)
        plan = []
        for (device, _, _), members in buckets.items():
            # One tensor holds the bucket's step counters, and each state["step"] becomes a
            # 0-d view of it: one add per step instead of one per parameter (hundreds of
            # small tensors). The views keep torch's state layout for state_dict.
            counters = torch.stack([states[i]["step"] for i in members])
            for k, i in enumerate(members):
                states[i]["step"] = counters[k]
            plan.append(
                (
                    device,
                    [active[i] for i in members],
                    [states[i]["exp_avg"] for i in members],
                    [states[i]["exp_avg_sq"] for i in members],
                    counters,
                )
            )
        self._plans[index] = (key, plan)
        return plan

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._plans.clear()
        super().load_state_dict(state_dict)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        if hasattr(self, "_plans"):
            self._plans.clear()
        super().add_param_group(param_group)

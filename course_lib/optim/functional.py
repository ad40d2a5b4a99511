"""The Adam update as plain functions of tensors: no classes, no state dictionaries.

Both functions apply the same arithmetic, in the same order, as PyTorch's own
``torch.optim.Adam`` (``foreach=False`` and ``foreach=True``), so their results agree with it
to the last bit on the same hardware. Every tensor is updated in place.

The step convention: ``step`` is ``t`` in the paper, the number of this update, so it is 1 for
the first update. The optimizer increments its counter *before* calling these functions.
"""

from __future__ import annotations

import torch
from torch import Tensor


def adam_step(
    param: Tensor,
    grad: Tensor,
    exp_avg: Tensor,
    exp_avg_sq: Tensor,
    max_exp_avg_sq: Tensor | None,
    step: float,
    *,
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float = 0.0,
    decoupled_weight_decay: bool = False,
    amsgrad: bool = False,
    maximize: bool = False,
    bias_correction: bool = True,
) -> None:
    """One Adam (or AdamW) update of one parameter tensor, in place.

    ``exp_avg`` is the first moment ``m``, ``exp_avg_sq`` the second moment ``v``, and
    ``max_exp_avg_sq`` the running maximum of ``v`` that AMSGrad uses (``None`` without it).
    ``bias_correction=False`` drops the ``1 - beta**t`` factors, to see what they are for.
    """
    if maximize:
        grad = -grad

    # 1. Weight decay. AdamW shrinks the weights directly; Adam adds an L2 term to the gradient.
    if weight_decay != 0:
        if decoupled_weight_decay:
            param.mul_(1 - lr * weight_decay)
        else:
            grad = grad.add(param, alpha=weight_decay)

    # 2. Moving averages: m <- beta1 m + (1 - beta1) g, written as m + (1 - beta1)(g - m),
    #    and v <- beta2 v + (1 - beta2) g^2.
    exp_avg.lerp_(grad, 1 - beta1)
    exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)

    # 3. Bias correction: m and v start at 0, so divide by the weight their averages have had.
    bias_correction1 = 1 - beta1**step if bias_correction else 1.0
    bias_correction2 = 1 - beta2**step if bias_correction else 1.0

    # 4. AMSGrad normalises by the largest v seen so far instead of the current one.
    if amsgrad:
        torch.maximum(max_exp_avg_sq, exp_avg_sq, out=max_exp_avg_sq)
        exp_avg_sq = max_exp_avg_sq

    # 5. The update: theta <- theta - lr * m_hat / (sqrt(v_hat) + eps).
    denom = (exp_avg_sq.sqrt() / bias_correction2**0.5).add_(eps)
    param.addcdiv_(exp_avg, denom, value=-lr / bias_correction1)


def adam_multi_tensor(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    max_exp_avg_sqs: list[Tensor],
    steps: list[float],
    *,
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float = 0.0,
    decoupled_weight_decay: bool = False,
    amsgrad: bool = False,
    maximize: bool = False,
) -> None:
    """:func:`adam_step` over lists of tensors, one ``torch._foreach_*`` call per operation.

    Fewer, larger kernel launches than a Python loop over tensors: the speed-up is large on
    a GPU with many small tensors. All tensors must share one device and one dtype (the
    optimizer groups them); ``steps[i]`` is the update number of ``params[i]``.
    """
    if not params:
        return
    if maximize:
        grads = torch._foreach_neg(grads)

    if weight_decay != 0:
        if decoupled_weight_decay:
            torch._foreach_mul_(params, 1 - lr * weight_decay)
        else:
            grads = torch._foreach_add(grads, params, alpha=weight_decay)

    torch._foreach_lerp_(exp_avgs, grads, 1 - beta1)
    torch._foreach_mul_(exp_avg_sqs, beta2)
    torch._foreach_addcmul_(exp_avg_sqs, grads, grads, value=1 - beta2)

    bias_correction2_sqrt = [(1 - beta2**t) ** 0.5 for t in steps]
    step_sizes = [-lr / (1 - beta1**t) for t in steps]

    if amsgrad:
        torch._foreach_maximum_(max_exp_avg_sqs, exp_avg_sqs)
        second_moments = max_exp_avg_sqs
    else:
        second_moments = exp_avg_sqs

    denoms = torch._foreach_sqrt(second_moments)
    torch._foreach_div_(denoms, bias_correction2_sqrt)
    torch._foreach_add_(denoms, eps)
    torch._foreach_addcdiv_(params, exp_avgs, denoms, step_sizes)

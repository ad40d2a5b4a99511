"""Sharpness: the top eigenvalue of the loss's Hessian, plain and as Adam's scaling sees it.

Gradient descent with step size ``lr`` on a quadratic diverges along any direction whose
curvature exceeds ``2 / lr``. Cohen et al. (2021, "Gradient Descent on Neural Networks
Typically Occurs at the Edge of Stability") found that full-batch training pushes the top
Hessian eigenvalue, the *sharpness*, up to that threshold and holds it there; Gilmer et al.
(2022, "A Loss Curvature Perspective on Training Instabilities of Deep Learning Models")
tied warmup's benefit to this curvature. For Adam the relevant quantity is the sharpness of
the *preconditioned* Hessian (Cohen et al., 2022, "Adaptive Gradient Methods at the Edge of
Stability"). With the preconditioner held fixed, Adam's update with momentum ``beta1`` is
stable on a quadratic only while

    lambda_max(P^{-1/2} H P^{-1/2}) < (2 + 2 beta1) / ((1 - beta1) lr)   (= 38 / lr for 0.9)

where ``P = diag(sqrt(v_hat) + eps)`` is Adam's per-coordinate denominator.

Everything here works on flat vectors: the parameters of a model, concatenated in order.
The Hessian is never formed; :func:`hessian_vector_product` applies it to a vector by
differentiating the gradient a second time (``torch.autograd.grad`` with
``create_graph=True``), and :func:`top_eigenvalue` runs power iteration on that product.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from course_lib._checks import check_positive_int
from course_lib.train import History, train

MatVec = Callable[[Tensor], Tensor]


@dataclass
class Eigen:
    """The result of :func:`top_eigenvalue`.

    ``value`` is the largest eigenvalue found, ``vector`` its unit eigenvector (flat),
    ``iterations`` the number of products taken, and ``converged`` whether successive
    estimates agreed to the tolerance before the iteration cap.
    """

    value: float
    vector: Tensor
    iterations: int
    converged: bool


def _power_iteration(
    matvec: MatVec, start: Tensor, max_iter: int, tol: float
) -> tuple[float, Tensor, int, bool]:
    """Power iteration from ``start``: the eigenvalue of largest magnitude (Rayleigh quotient)."""
    v = start / start.norm()
    value = math.nan
    for iteration in range(1, max_iter + 1):
        w = matvec(v)
        new_value = torch.dot(v, w).item()
        norm = w.norm()
        if norm == 0 or not torch.isfinite(norm):
            return new_value, v, iteration, bool(norm == 0)
        v = w / norm
        if abs(new_value - value) <= tol * abs(new_value):
            return new_value, v, iteration, True
        value = new_value
    return value, v, max_iter, False


def top_eigenvalue(
    matvec: MatVec,
    dim: int,
    *,
    max_iter: int = 100,
    tol: float = 1e-4,
    seed: int = 0,
    init: Tensor | None = None,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> Eigen:
    """The largest (most positive) eigenvalue of a symmetric operator, by power iteration.

    ``matvec(v)`` applies the operator to a flat vector of length ``dim``. The start vector is
    ``init`` when given (the previous eigenvector makes a good warm start), otherwise a
    standard-normal vector from a generator seeded with ``seed``. Iteration stops when two
    successive Rayleigh quotients agree to ``tol`` relative, or after ``max_iter`` products.

    Power iteration finds the eigenvalue of largest *magnitude*. When that one is negative,
    the search is repeated on the shifted operator ``A + |lambda| I``, whose largest
    eigenvalue is ``lambda_max + |lambda|``, so the result is always the top of the spectrum.
    ``iterations`` counts the products of both passes.
    """
    check_positive_int("dim", dim)
    check_positive_int("max_iter", max_iter)
    if not (isinstance(tol, (int, float)) and tol > 0):
        raise ValueError(f"Invalid tol: {tol!r} (expected tol > 0)")
    if init is None:
        generator = torch.Generator().manual_seed(seed)
        start = torch.randn(dim, generator=generator, dtype=dtype).to(device)
    else:
        start = init.detach().flatten().to(dtype=dtype, device=device)
        if start.numel() != dim:
            raise ValueError(f"Invalid init: {start.numel()} entries (expected dim={dim})")
        if start.norm() == 0:
            raise ValueError("Invalid init: the zero vector (expected a non-zero start vector)")
    value, vector, used, converged = _power_iteration(matvec, start, max_iter, tol)
    if value < 0:
        shift = abs(value)

        def shifted(v: Tensor) -> Tensor:
            return matvec(v) + shift * v

        # Start away from the negative eigenvector just found, which is the shifted
        # operator's eigenvector of eigenvalue 0.
        restart = start - torch.dot(start, vector) * vector
        if restart.norm() <= 1e-6 * start.norm():
            restart = torch.randn(dim, generator=torch.Generator().manual_seed(seed + 1))
            restart = restart.to(dtype=dtype, device=device)
        shifted_value, vector, more, converged = _power_iteration(shifted, restart, max_iter, tol)
        value, used = shifted_value - shift, used + more
    return Eigen(value=value, vector=vector, iterations=used, converged=converged)


def _flat(tensors: Sequence[Tensor]) -> Tensor:
    return torch.cat([t.reshape(-1) for t in tensors])


def _unflat(vector: Tensor, like: Sequence[Tensor]) -> list[Tensor]:
    out, offset = [], 0
    for t in like:
        out.append(vector[offset : offset + t.numel()].view_as(t))
        offset += t.numel()
    return out


def hessian_vector_product(loss: Tensor, params: Sequence[Tensor]) -> MatVec:
    """``v -> H v`` for the Hessian of the scalar ``loss`` with respect to ``params``.

    ``loss`` must have been computed from ``params`` with autograd recording. The gradient is
    taken once with ``create_graph=True``; each product is then one more backward pass
    through it (a double backward), so the Hessian is never formed. ``v`` and ``H v`` are
    flat vectors in the order of ``params``.
    """
    params = list(params)
    if not params:
        raise ValueError("Invalid params: empty (expected at least one tensor)")
    if loss.numel() != 1:
        raise ValueError(f"Invalid loss: shape {tuple(loss.shape)} (expected a scalar)")
    grads = torch.autograd.grad(loss, params, create_graph=True)
    size = sum(p.numel() for p in params)

    def matvec(v: Tensor) -> Tensor:
        if v.numel() != size:
            raise ValueError(f"Invalid vector: {v.numel()} entries (expected {size})")
        pieces = _unflat(v.to(dtype=grads[0].dtype), params)
        products = torch.autograd.grad(grads, params, grad_outputs=pieces, retain_graph=True)
        return _flat(products).detach().to(v.dtype)

    return matvec


def adam_preconditioner(optimizer: torch.optim.Optimizer, params: Sequence[Tensor]) -> Tensor:
    """Adam's per-coordinate denominator ``sqrt(v_hat) + eps`` for ``params``, flat (float32+).

    Read from the optimizer's state after its most recent update ``t``:
    ``v_hat = exp_avg_sq / (1 - beta2**t)`` (``max_exp_avg_sq`` under AMSGrad), with the
    ``beta2`` and ``eps`` of each parameter's group. This is the ``P`` Adam divides its
    momentum by, so ``P^{-1/2} H P^{-1/2}`` is the Hessian in the coordinates Adam steps in.
    (Cohen et al. 2022 also fold the momentum's bias correction ``1 - beta1**t`` into ``P``;
    it is 1 to within 1% after 44 updates with ``beta1 = 0.9``, and left out here.)

    Works for ``torch.optim.Adam``/``AdamW`` and :mod:`course_lib.optim`'s, which share the
    state keys. Raises ``ValueError`` for a parameter that has not been stepped yet.
    """
    groups = {id(p): group for group in optimizer.param_groups for p in group["params"]}
    pieces = []
    for p in params:
        if id(p) not in groups:
            raise ValueError(f"Invalid params: a tensor of shape {tuple(p.shape)} is not optimized")
        group, state = groups[id(p)], optimizer.state.get(p, {})
        if "exp_avg_sq" not in state or float(state["step"]) < 1:
            raise ValueError(
                f"Invalid optimizer state: a parameter of shape {tuple(p.shape)} has not taken a "
                "step yet (expected at least one optimizer.step() before reading v_hat)"
            )
        beta2 = float(group["betas"][1])
        t = float(state["step"])
        second = state["max_exp_avg_sq"] if group.get("amsgrad") else state["exp_avg_sq"]
        v_hat = second.detach() / (1.0 - beta2**t)
        pieces.append(v_hat.sqrt().add(group["eps"]).reshape(-1))
    return torch.cat(pieces)


def sharpness(
    closure: Callable[[], Tensor],
    params: Sequence[Tensor],
    *,
    preconditioner: Tensor | None = None,
    max_iter: int = 100,
    tol: float = 1e-4,
    seed: int = 0,
    init: Tensor | None = None,
) -> Eigen:
    """The top eigenvalue of the Hessian of ``closure()`` (a loss) with respect to ``params``.

    With a ``preconditioner`` ``P`` (a flat positive vector, for example
    :func:`adam_preconditioner`), the top eigenvalue of ``P^{-1/2} H P^{-1/2}`` instead: the
    preconditioned sharpness, which has the same eigenvalues as ``P^{-1} H``. ``closure`` is
    called once. The other arguments are :func:`top_eigenvalue`'s.
    """
    params = list(params)
    with torch.enable_grad():
        loss = closure()
        hvp = hessian_vector_product(loss, params)
    dim = sum(p.numel() for p in params)
    if preconditioner is None:
        matvec = hvp
    else:
        if preconditioner.numel() != dim:
            raise ValueError(
                f"Invalid preconditioner: {preconditioner.numel()} entries (expected {dim})"
            )
        if not (preconditioner > 0).all():
            raise ValueError("Invalid preconditioner: expected every entry > 0")
        scale = preconditioner.detach().rsqrt()

        def matvec(v: Tensor) -> Tensor:
            return scale * hvp(scale * v)

    return top_eigenvalue(
        matvec,
        dim,
        max_iter=max_iter,
        tol=tol,
        seed=seed,
        init=init,
        dtype=params[0].dtype,
        device=params[0].device,
    )


def gd_stability_threshold(lr: float) -> float:
    """``2 / lr``: the largest curvature gradient descent with step ``lr`` is stable on."""
    if not lr > 0:
        raise ValueError(f"Invalid learning rate: {lr} (expected lr > 0)")
    return 2.0 / lr


def adam_stability_threshold(lr: float, beta1: float = 0.9) -> float:
    """``(2 + 2 beta1) / ((1 - beta1) lr)``: Adam's bound on the preconditioned sharpness.

    Cohen et al. (2022): with the preconditioner frozen, Adam's momentum update on a quadratic
    is stable only while ``lambda_max(P^{-1} H)`` stays below this; ``38 / lr`` for
    ``beta1 = 0.9``.
    """
    if not lr > 0:
        raise ValueError(f"Invalid learning rate: {lr} (expected lr > 0)")
    if not 0.0 <= beta1 < 1.0:
        raise ValueError(f"Invalid beta1: {beta1} (expected 0 <= beta1 < 1)")
    return (2.0 + 2.0 * beta1) / ((1.0 - beta1) * lr)


@dataclass
class SharpnessHistory:
    """What :func:`track_sharpness` recorded.

    ``history`` is the training run's :class:`course_lib.train.History` (loss and rate of
    every update). ``steps[i]`` is the number of updates made before measurement ``i``;
    ``lrs[i]`` is the rate of the next update, the one that meets the measured curvature;
    ``sharpness[i]`` and ``preconditioned[i]`` are the top eigenvalues of ``H`` and of
    ``P^{-1/2} H P^{-1/2}`` on the measurement batch (NaN where not measured).
    """

    history: History = field(default_factory=History)
    steps: list[int] = field(default_factory=list)
    lrs: list[float] = field(default_factory=list)
    sharpness: list[float] = field(default_factory=list)
    preconditioned: list[float] = field(default_factory=list)


def track_sharpness(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    batches: Iterator[tuple[Tensor, Tensor]],
    num_steps: int,
    *,
    measure_batch: tuple[Tensor, Tensor],
    every: int | None = None,
    at: Sequence[int] | None = None,
    loss_fn: Callable[[Tensor, Tensor], Tensor] = nn.functional.mse_loss,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    plain: bool = True,
    max_iter: int = 30,
    tol: float = 1e-3,
    seed: int = 0,
    progress: bool | None = None,
) -> SharpnessHistory:
    """Train with :func:`course_lib.train.train` and measure the curvature along the way.

    The curvature is measured after every ``every`` updates (and after the last), or after
    the update counts listed in ``at`` (give one of the two; counts above ``num_steps`` are
    ignored). Each measurement takes the sharpness (if ``plain``) and Adam's preconditioned
    sharpness (:func:`adam_preconditioner` from the optimizer's current state) on the fixed
    ``measure_batch``, each by power iteration warm-started from the previous measurement's
    eigenvector. Measuring changes neither the gradients nor any random state, so the run
    is the one :func:`course_lib.train.train` alone would make. A run that diverges stops
    there. ``progress`` is :func:`course_lib.train.train`'s (on unless ``COURSE_PROGRESS=0``).
    """
    if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 0:
        raise ValueError(f"Invalid num_steps: {num_steps!r} (expected an int >= 0)")
    if (every is None) == (at is None):
        raise ValueError("Invalid arguments: give exactly one of every and at")
    if every is not None:
        check_positive_int("every", every)
        marks = [*range(every, num_steps, every), num_steps] if num_steps else []
    else:
        for count in at:
            check_positive_int("at", count)
        marks = sorted({count for count in at if count <= num_steps})
    x, y = measure_batch
    params = [p for p in model.parameters() if p.requires_grad]
    record = SharpnessHistory()
    warm: dict[str, Tensor | None] = {"plain": None, "pre": None}

    def closure() -> Tensor:
        return loss_fn(model(x), y)

    done = 0
    for mark in marks:
        if mark > done:
            part = train(
                model, optimizer, batches, mark - done,
                loss_fn=loss_fn, scheduler=scheduler, progress=progress,
            )  # fmt: skip
            record.history.losses += part.losses
            record.history.lrs += part.lrs
            done += len(part.losses)
            if part.diverged:
                record.history.diverged = True
                return record
        record.steps.append(done)
        record.lrs.append(float(optimizer.param_groups[0]["lr"]))
        value = math.nan
        if plain:
            eig = sharpness(
                closure, params, max_iter=max_iter, tol=tol, seed=seed, init=warm["plain"]
            )
            value, warm["plain"] = eig.value, eig.vector
        record.sharpness.append(value)
        eig = sharpness(
            closure,
            params,
            preconditioner=adam_preconditioner(optimizer, params),
            max_iter=max_iter,
            tol=tol,
            seed=seed,
            init=warm["pre"],
        )
        warm["pre"] = eig.vector
        record.preconditioned.append(eig.value)
    if done < num_steps:
        part = train(
            model, optimizer, batches, num_steps - done,
            loss_fn=loss_fn, scheduler=scheduler, progress=progress,
        )  # fmt: skip
        record.history.losses += part.losses
        record.history.lrs += part.lrs
        record.history.diverged = part.diverged
    return record

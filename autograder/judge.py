"""The judging halves of the checks: references, known mistakes, comparisons, messages.

A judge runs in the trusted process (the grader's, or the notebook's own in inline mode). It
gets the check's trusted arguments (seeds, steps, and the references, expected values,
hints and mistake models that hidden tests pass) and an *observation*, the plain data that
:func:`course_lib.grading.observe.observe` recorded in the student's process. It regenerates
the same inputs, computes the reference (``torch.optim.Adam``/``AdamW``,
:func:`reference_update`, the hidden tests' functions) and raises :class:`GradingError` with
the step, parameter, element, expected and got values, tolerance and likely mistake.

The observation is untrusted: every field is validated, and anything that is not what the
check records raises ``GradingError("... malformed ...")``, never another exception.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch import Tensor

from autograder.common import (
    DTYPE_NAMES,
    MAX_ITEMS,
    RTOL,
    GradingError,
    close,
    decode_tensor,
    malformed,
    number_from,
    recorded_float,
    text,
)
from autograder.delegation import refusal
from autograder.observe import (
    Probe,
)

# --------------------------------------------------------------------------------------
# Comparing tensors and numbers, with messages a student can act on.
# --------------------------------------------------------------------------------------


def tolerance(dtype: torch.dtype) -> float:
    if dtype not in RTOL:
        raise ValueError(f"No tolerance for {dtype}: the checks use float32 and float64")
    return RTOL[dtype]


def relative_error(got: Tensor, expected: Tensor) -> Tensor:
    """``|got - expected| / max(|expected|, 1)`` elementwise, in float64; NaN counts as inf."""
    got64 = got.detach().to("cpu", torch.float64)
    exp64 = expected.detach().to("cpu", torch.float64)
    if got64.shape != exp64.shape:
        raise GradingError(f"shape {tuple(got.shape)} where {tuple(expected.shape)} was expected")
    error = (got64 - exp64).abs() / exp64.abs().clamp_min(1.0)
    return torch.where(torch.isnan(error), torch.full_like(error, math.inf), error)


def first_mismatch(got: Tensor, expected: Tensor, rtol: float) -> tuple[int, ...] | None:
    """Index of the worst element outside ``rtol * max(|expected|, 1)``; None when all fit."""
    error = relative_error(got, expected)
    if error.numel() == 0 or error.max().item() <= rtol:
        return None
    flat = int(error.argmax().item())
    return tuple(int(i) for i in torch.unravel_index(torch.tensor(flat), error.shape))


def describe_mismatch(got: Tensor, expected: Tensor, index: tuple[int, ...], rtol: float) -> str:
    g = got.detach()[index].item() if index else got.detach().item()
    e = expected.detach()[index].item() if index else expected.detach().item()
    at = f"element {index}" if index else "value"
    return (
        f"{at}: expected {e:.10g}, got {g:.10g} (difference {abs(g - e):.3g}; allowed "
        f"{rtol:.0e} x max(|expected|, 1) for {DTYPE_NAMES.get(got.dtype, got.dtype)})"
    )


def format_call(name: str, kwargs: dict[str, Any], positional: Sequence[Any] = ()) -> str:
    args = [repr(a) for a in positional] + [f"{k}={v!r}" for k, v in kwargs.items()]
    return f"{name}({', '.join(args)})"


def recorded_number(desc: Any, what: str) -> int | float:
    """The number an observation recorded: an ``int`` where the answer returned an integer
    (JSON carries it exactly), else a float; the errors of :func:`number_from`."""
    got = number_from(desc, what)
    return desc["value"] if type(desc["value"]) is int else got


def disagreement(
    got: float, expected: Any, rtol: float, atol: float = 0.0, unit: str = ""
) -> str | None:
    """None when ``got`` agrees with ``expected``, else ``"expected E, got G (how compared)"``.

    An ``int`` expected (a byte count, a block count, a step number) is compared exactly: only
    the same integer agrees (or an integral float equal to it). Other numbers agree within
    ``rtol`` of ``|expected|`` or ``atol``, as :func:`close`.
    """
    if type(expected) is int:  # not a bool
        if got != expected:
            return f"expected {expected}{unit}, got {got!r}{unit} (compared exactly: an integer)"
    elif not close(float(got), float(expected), rtol, atol):
        return (
            f"expected {float(expected):.10g}{unit}, got {got:.10g}{unit} (allowed relative "
            f"error {rtol:g})"
        )
    return None


# --------------------------------------------------------------------------------------
# Adam's update and the mistakes students make, for diagnosis.
# --------------------------------------------------------------------------------------

MISTAKES: dict[str, str] = {
    "no_bias_correction": (
        "your result matches Adam without bias correction: after {t} steps the bias correction "
        "of m should be 1 - {b1}**{t} = {bc1:.5g} (and of v 1 - {b2}**{t} = {bc2:.5g}); yours "
        "is 1.0. Divide m by 1 - beta1**step and v by 1 - beta2**step."
    ),
    "step_plus_one": (
        "your result matches a bias correction one step ahead: after {t} steps it should be "
        "1 - {b1}**{t} = {bc1:.5g}; yours is 1 - {b1}**{t1} = {bc1_next:.5g}. Is `step` "
        "incremented before it is used (or counted from 1 and incremented again)? step is the "
        "number of this update: 1 for the first."
    ),
    "eps_inside_sqrt": (
        "your result matches eps inside the square root: the update is "
        "m_hat / (sqrt(v_hat) + eps), with eps added after the square root."
    ),
    "eps_before_bias_correction": (
        "your result matches eps added before the bias correction of v: the denominator is "
        "sqrt(v / (1 - beta2**step)) + eps, eps added last."
    ),
    "betas_swapped": (
        "your moving averages put the weights the wrong way round: m = beta1 * m + "
        "(1 - beta1) * grad, and v = beta2 * v + (1 - beta2) * grad**2."
    ),
    "v_not_squared": "your v averages |grad| instead of grad**2.",
    "no_sqrt": "your update divides by v_hat instead of sqrt(v_hat).",
    "no_weight_decay": (
        "your result matches weight_decay being ignored: Adam adds weight_decay * param to "
        "the gradient before the moving averages."
    ),
    "decoupled_in_adam": (
        "your weight decay is decoupled (AdamW's): this is Adam, whose weight_decay adds "
        "weight_decay * param to the gradient before the moving averages (as torch.optim.Adam)."
    ),
    "coupled": (
        "your result matches weight decay added to the gradient (Adam's L2 penalty, "
        "grad + weight_decay * param). AdamW decouples it: first param *= 1 - lr * "
        "weight_decay, then the Adam step with the plain gradient."
    ),
    "decay_without_lr": (
        "your weight decay is not scaled by the learning rate: torch.optim.AdamW multiplies "
        "the weights by 1 - lr * weight_decay, not 1 - weight_decay."
    ),
    "decay_after_update": (
        "your weight decay is applied after the Adam step; torch.optim.AdamW shrinks the "
        "weights first (param *= 1 - lr * weight_decay), then subtracts the Adam update."
    ),
    "lr_cached": (
        "after the learning rate was changed in param_groups (before step {t}), your optimizer "
        "kept the old one: read group['lr'] inside step(), every step (schedulers change it)."
    ),
}


def reference_update(
    param: Tensor,
    grad: Tensor,
    m: Tensor,
    v: Tensor,
    t: int,
    *,
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float = 0.0,
    decoupled: bool = False,
    mistake: str | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """One Adam/AdamW update as new float64 tensors, optionally with one known mistake."""
    p, g = param.double(), grad.double()
    m, v = m.double(), v.double()
    if mistake == "step_plus_one":
        t = t + 1
    decay_first = decay_after = False
    if weight_decay:
        if decoupled:
            if mistake == "coupled":
                g = g + weight_decay * p
            elif mistake == "decay_without_lr":
                p = p * (1 - weight_decay)
            elif mistake == "decay_after_update":
                decay_after = True
            elif mistake != "no_weight_decay":
                decay_first = True
        elif mistake == "decoupled_in_adam":
            decay_first = True
        elif mistake != "no_weight_decay":
            g = g + weight_decay * p
    if decay_first:
        p = p * (1 - lr * weight_decay)
    if mistake == "betas_swapped":
        m = beta1 * g + (1 - beta1) * m
        v = beta2 * g * g + (1 - beta2) * v
    else:
        m = beta1 * m + (1 - beta1) * g
        v = beta2 * v + (1 - beta2) * (g.abs() if mistake == "v_not_squared" else g * g)
    bc1, bc2 = 1 - beta1**t, 1 - beta2**t
    if mistake == "no_bias_correction":
        bc1 = bc2 = 1.0
    if mistake == "eps_inside_sqrt":
        denom = (v / bc2 + eps).sqrt()
    elif mistake == "eps_before_bias_correction":
        denom = (v.sqrt() + eps) / math.sqrt(bc2)
    elif mistake == "no_sqrt":
        denom = v / bc2 + eps
    else:
        denom = (v / bc2).sqrt() + eps
    p = p - lr * (m / bc1) / denom
    if decay_after:
        p = p * (1 - lr * weight_decay)
    return p, m, v


def hint(mistake: str, t: int, beta1: float, beta2: float) -> str:
    return (
        MISTAKES[mistake]
        .replace("{t} steps", "{t} step" + ("s" if t != 1 else ""))
        .format(
            t=t,
            t1=t + 1,
            b1=beta1,
            b2=beta2,
            bc1=1 - beta1**t,
            bc2=1 - beta2**t,
            bc1_next=1 - beta1 ** (t + 1),
        )
    )


ADAM_MISTAKES = (
    "no_bias_correction",
    "step_plus_one",
    "eps_inside_sqrt",
    "eps_before_bias_correction",
    "betas_swapped",
    "v_not_squared",
    "no_sqrt",
)


ADAMW_MISTAKES = (
    "coupled",
    "decay_without_lr",
    "decay_after_update",
    "lr_cached",
    *ADAM_MISTAKES,
)


def trajectory(
    probe: Probe, decoupled: bool, mistake: str | None = None
) -> list[tuple[Tensor, Tensor, Tensor]]:
    """(param, m, v) after every update of ``probe``, in float64, optionally with a mistake."""
    p = torch.tensor(probe.start, dtype=torch.float64)
    m, v = torch.zeros_like(p), torch.zeros_like(p)
    out = []
    for t in range(1, probe.steps + 1):
        lr = probe.lr if mistake == "lr_cached" else probe.lr_at(t)
        g = torch.tensor(probe.gradient(t), dtype=torch.float64)
        p, m, v = reference_update(
            p, g, m, v, t, lr=lr, beta1=probe.beta1, beta2=probe.beta2, eps=probe.eps,
            weight_decay=probe.weight_decay, decoupled=decoupled,
            mistake=None if mistake == "lr_cached" else mistake,
        )  # fmt: skip # the arguments grouped by meaning, not one a line
        out.append((p, m, v))
    return out


def diagnose(
    got: list[Tensor], probe: Probe, decoupled: bool, candidates: Iterable[str]
) -> str | None:
    """The first of ``candidates`` (known mistakes) that this probe can tell apart and whose
    parameter trajectory ``got`` matches, if one does.

    A mistake is named only when its trajectory differs from the correct one by more than
    1e-7 (relative, as :func:`first_mismatch` measures) and ``got`` is within 1e-7 of it and
    closer to it than to the correct one: without weight decay, Adam's L2 penalty and AdamW's
    decoupled decay are the same trajectory, and neither is named.
    """

    def distance(a: list[Tensor], b: list[Tensor]) -> float:  # over the steps of the shorter
        errors = [relative_error(x, y).max().item() for x, y in zip(a, b, strict=False)]
        return max(errors, default=0.0)

    correct = [p for p, _, _ in trajectory(probe, decoupled)][: len(got)]
    for mistake in candidates:
        expected = [p for p, _, _ in trajectory(probe, decoupled, mistake)]
        near = distance(got, expected)
        if distance(expected, correct) > 1e-7 and near <= 1e-7 and near < distance(got, correct):
            return mistake
    return None


def first_nonfinite_hint(t: int) -> str:
    if t == 1:
        return (
            " The first update is not finite: if the bias correction is 1 - beta**(step - 1), "
            "it is 0 at the first update. step is the number of this update, 1 for the first: "
            "is `step` used before it is incremented?"
        )
    return " A value became inf or NaN: check for a division by a quantity that can be 0."


def torch_effective_steps(
    grads: Sequence[float], *, lr: float, betas: tuple[float, float], eps: float
) -> Tensor:
    """|update_t| / lr of ``torch.optim.Adam`` on one float64 scalar fed ``grads`` in order."""
    p = torch.zeros((), dtype=torch.float64, requires_grad=False)
    opt = torch.optim.Adam([p], lr=lr, betas=tuple(betas), eps=eps, foreach=False)
    out = []
    for g in grads:
        before = p.clone()
        p.grad = torch.tensor(float(g), dtype=torch.float64)
        opt.step()
        out.append((p - before).abs().item() / lr)
    return torch.tensor(out, dtype=torch.float64)


# --------------------------------------------------------------------------------------
# Reading an observation: every field checked.
# --------------------------------------------------------------------------------------


def _field(obs: Any, key: str, kind: type | tuple[type, ...], what: str | None = None) -> Any:
    if not isinstance(obs, dict) or key not in obs:
        raise malformed(f"{what or key} is missing")
    value = obs[key]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
        raise malformed(f"{what or key} has the wrong type")
    return value


def _list(obs: Any, key: str, max_len: int, what: str | None = None) -> list[Any]:
    value = _field(obs, key, list, what)
    if len(value) > max_len:
        raise malformed(f"{what or key} has {len(value)} entries, more than the {max_len} made")
    return value


def _int(obs: Any, key: str, what: str | None = None) -> int:
    return _field(obs, key, int, what)


_float = recorded_float


def _texts(value: Any, what: str) -> list[str]:
    if not isinstance(value, list) or len(value) > MAX_ITEMS:
        raise malformed(f"{what} is not a short list")
    return [text(x) for x in value]


def refuse_delegation(obs: Any, name: str) -> None:
    """Refuse the answer when its MRO or source named the reference (seen in the sandbox)."""
    reasons = _texts(_field(obs, "delegation", list), "delegation")
    if reasons:
        raise refusal(name, reasons)


def raise_stop(
    obs: Any,
    name: str,
    *,
    calls: dict[str, str] | None = None,
    handlers: dict[str, Callable[[dict[str, Any]], None]] | None = None,
) -> None:
    """Raise the error for why the observation ended where it did (an exception, a refused
    call, an unusable result). Called where the recorded data end."""
    stop = obs.get("stop") if isinstance(obs, dict) else None
    if stop is None:
        raise malformed("the recorded data end early without a reason")
    if not isinstance(stop, dict):
        raise malformed("the reason it stopped is not a record")
    kind, call = stop.get("kind"), stop.get("call", "call")
    if not isinstance(kind, str) or not isinstance(call, str):
        raise malformed("the reason it stopped is not described")
    calls = calls or {"call": name}
    if kind == "refused":
        hits = _texts(stop.get("hits"), "hits")
        raise refusal(name, [f"running it called {hit}" for hit in dict.fromkeys(hits)])
    if kind == "raised":
        if call not in calls:
            raise malformed("the call that raised is unknown")
        raise GradingError(f"{calls[call]} raised {text(stop.get('error'))}")
    if kind == "crash":
        raise GradingError(
            f"{name}: looking at its results raised {text(stop.get('error'))}; return plain "
            "tensors, numbers and containers"
        )
    if handlers and kind in handlers:
        handlers[kind](stop)
    raise malformed(f"it stopped for an unknown reason {text(kind, 40)!r}")


def end_of(obs: Any, name: str, **kwargs: Any) -> None:
    """Every recorded result passed: a recorded stop still fails the check."""
    if isinstance(obs, dict) and obs.get("stop") is not None:
        raise_stop(obs, name, **kwargs)


def _device_text(device: torch.device) -> str:
    """How a tensor on ``device`` reports its device (``cuda`` becomes ``cuda:0``)."""
    if device.type == "cpu":
        return "cpu"
    try:
        return str(torch.empty(0, device=device).device)
    except (RuntimeError, AssertionError):
        return f"{device.type}:{device.index or 0}"


def check_tensor_desc(
    desc: Any, shape: tuple[int, ...], dtype: torch.dtype, device: str, what: str
) -> None:
    """The messages of a result that is not a tensor like the parameter."""
    if not isinstance(desc, dict):
        raise malformed(f"the description of {what} is not a record")
    if desc.get("is_tensor") is not True:
        raise GradingError(f"{what} should be a torch.Tensor, got {text(desc.get('type'), 200)}")
    got_shape = desc.get("shape")
    if not isinstance(got_shape, list) or len(got_shape) > 16:
        raise malformed(f"the shape of {what} is not a list")
    if tuple(got_shape) != tuple(shape):
        raise GradingError(
            f"{what} has shape {tuple(got_shape)}; expected {tuple(shape)}"[: 2 * MAX_ITEMS]
        )
    if text(desc.get("dtype"), 100) != str(dtype):
        raise GradingError(
            f"{what} has dtype {text(desc.get('dtype'), 100)}; expected {dtype}, the dtype of "
            "the parameter"
        )
    if text(desc.get("device"), 100) != device:
        raise GradingError(
            f"{what} is on {text(desc.get('device'), 100)}; expected {device}, the parameter's "
            "device"
        )


def _bad_update_result(shape: tuple[int, ...], dtype: torch.dtype, device: str) -> Callable:
    def handler(stop: dict[str, Any]) -> None:
        length = stop.get("length")
        if length != 3:
            raise GradingError(
                "adam_update should return the tuple (param, m, v) of new tensors; got "
                f"{text(stop.get('type'), 200)}"
                + (f" of length {length}" if isinstance(length, int) else "")
            )
        items = stop.get("items")
        if not isinstance(items, list) or len(items) != 3:
            raise malformed("the results of adam_update are not described")
        names = ("the returned param", "the returned m", "the returned v")
        for desc, what in zip(items, names, strict=True):
            check_tensor_desc(desc, shape, dtype, device, what)
        raise malformed("a result recorded as unusable is a tensor like the parameter")

    return handler


def _trajectory_of(
    value: Any, what: str, shape: tuple[int, ...], dtype: torch.dtype, steps: int
) -> Tensor:
    """A recorded ``[steps done, *shape]`` stack of a parameter's values after every step."""
    stacked = decode_tensor(value, what, dtype=dtype)
    if tuple(stacked.shape[1:]) != tuple(shape) or stacked.dim() != len(shape) + 1:
        raise malformed(f"{what} does not hold values of shape {tuple(shape)}")
    if stacked.shape[0] > steps:
        raise malformed(f"{what} holds more steps than were made")
    return stacked

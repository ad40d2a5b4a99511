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

from course_lib.grading.common import (
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
from course_lib.grading.delegation import refusal
from course_lib.grading.observe import (
    Probe,
    adam_probes,
    adam_torch_cases,
    adamw_probes,
    adamw_torch_cases,
    closure_problem,
    constructor_cases,
)

# --------------------------------------------------------------------------------------
# Comparing tensors and numbers, with messages a student can act on.
# --------------------------------------------------------------------------------------


def tolerance(dtype: torch.dtype) -> float:
    if dtype not in RTOL:
        raise ValueError(f"No tolerance for {dtype}: the checks use float32 and float64")
    return RTOL[dtype]


def first_mismatch(got: Tensor, expected: Tensor, rtol: float) -> tuple[int, ...] | None:
    """Index of the worst element outside ``rtol * max(|expected|, 1)``; None when all fit."""
    got64 = got.detach().to("cpu", torch.float64)
    exp64 = expected.detach().to("cpu", torch.float64)
    if got64.shape != exp64.shape:
        raise GradingError(f"shape {tuple(got.shape)} where {tuple(expected.shape)} was expected")
    error = (got64 - exp64).abs() / exp64.abs().clamp_min(1.0)
    error = torch.where(torch.isnan(error), torch.full_like(error, math.inf), error)
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
        )  # fmt: skip
        out.append((p, m, v))
    return out


def diagnose(
    got: list[Tensor], probe: Probe, decoupled: bool, candidates: Iterable[str]
) -> str | None:
    """The name of the known mistake whose parameter trajectory matches ``got``, if one does."""
    for mistake in candidates:
        expected = [p for p, _, _ in trajectory(probe, decoupled, mistake)]
        if len(expected) >= len(got) and all(
            first_mismatch(g, e, 1e-7) is None for g, e in zip(got, expected, strict=False)
        ):
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
    if not isinstance(value, kind) or (isinstance(value, bool) and bool not in _kinds(kind)):
        raise malformed(f"{what or key} has the wrong type")
    return value


def _kinds(kind: type | tuple[type, ...]) -> tuple[type, ...]:
    return kind if isinstance(kind, tuple) else (kind,)


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


def notes_of(obs: Any) -> list[str]:
    """The warnings and stderr output the observation recorded (for the note printed)."""
    if not isinstance(obs, dict) or "notes" not in obs:
        return []
    try:
        return [text(x, 300) for x in _texts(obs["notes"], "notes")][:5]
    except GradingError:
        return []


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


# --------------------------------------------------------------------------------------
# Assignment `adam`.
# --------------------------------------------------------------------------------------


def judge_adam_first_steps(obs: Any, *, device: str, seed: int | None) -> None:
    name = "adam_update"
    refuse_delegation(obs, name)
    like_device = _device_text(torch.device(device))
    probes = adam_probes(seed)
    recorded = _list(obs, "probes", len(probes))
    dtype, rtol = torch.float64, RTOL[torch.float64]
    for index, probe in enumerate(probes):
        handlers = {"bad_result": _bad_update_result((len(probe.start),), dtype, like_device)}
        if index >= len(recorded):
            raise_stop(obs, name, handlers=handlers)
        steps = recorded[index]
        if not isinstance(steps, list) or len(steps) > probe.steps:
            raise malformed("a probe's steps are not a list of the steps made")
        expected = trajectory(probe, decoupled=False)
        got_params: list[Tensor] = []
        for t in range(1, probe.steps + 1):
            if t > len(steps):
                raise_stop(obs, name, handlers=handlers)
            entry = steps[t - 1]
            shape = (len(probe.start),)
            p, m, v = (
                decode_tensor(_field(entry, key, dict), key, shape=shape, dtype=dtype)
                for key in ("p", "m", "v")
            )
            got_params.append(p)
            exp_p, exp_m, exp_v = expected[t - 1]
            for what, got, exp in (("m", m, exp_m), ("v", v, exp_v), ("param", p, exp_p)):
                index_ = first_mismatch(got, exp.to(dtype), rtol)
                if index_ is None:
                    continue
                message = (
                    f"adam_update({probe.settings()}, {DTYPE_NAMES[dtype]}): at step={t}, the "
                    f"returned {what} is wrong, {describe_mismatch(got, exp, index_, rtol)}."
                )
                if not torch.isfinite(got).all():
                    message += first_nonfinite_hint(t)
                else:
                    candidates = ADAM_MISTAKES + (
                        ("no_weight_decay", "decoupled_in_adam") if probe.weight_decay else ()
                    )
                    # m or v wrong: the parameter's trajectory so far may still name the mistake.
                    mistake = diagnose(got_params, probe, False, candidates)
                    if mistake:
                        message += " Likely mistake: " + hint(mistake, t, probe.beta1, probe.beta2)
                    elif what == "m":
                        message += " m = beta1 * m + (1 - beta1) * grad (with Adam's weight decay added to grad first)."
                    elif what == "v":
                        message += " v = beta2 * v + (1 - beta2) * grad**2 (with Adam's weight decay added to grad first)."
                raise GradingError(message)
    end_of(obs, name)


def judge_adam_against_torch(
    obs: Any, *, device: str, seed: int, cases: int, steps: int, dtypes: Sequence[Any]
) -> None:
    name = "adam_update"
    refuse_delegation(obs, name)
    torch_device = torch.device(device)
    like_device = _device_text(torch_device)
    recorded = _list(obs, "cases", cases)
    for index, case in enumerate(adam_torch_cases(seed, cases, steps, dtypes, torch_device)):
        handlers = {"bad_result": _bad_update_result(case.shape, case.dtype, like_device)}
        if index >= len(recorded):
            raise_stop(obs, name, handlers=handlers)
        params = _trajectory_of(
            _field(recorded[index], "params", dict), "params", case.shape, case.dtype, steps
        )
        rtol = tolerance(case.dtype)
        hyper = case.hyper
        ref = case.start.clone()
        torch_opt = torch.optim.Adam(
            [ref], lr=hyper["lr"], betas=(hyper["beta1"], hyper["beta2"]), eps=hyper["eps"],
            weight_decay=hyper["weight_decay"], foreach=False,
        )  # fmt: skip
        for t, g in enumerate(case.grads, start=1):
            if t > params.shape[0]:
                raise_stop(obs, name, handlers=handlers)
            p = params[t - 1]
            ref.grad = g.clone()
            torch_opt.step()
            index_ = first_mismatch(p, ref, rtol)
            if index_ is not None:
                settings = ", ".join(f"{k}={val:.4g}" for k, val in hyper.items())
                raise GradingError(
                    f"adam_update against torch.optim.Adam (seed {seed}, case {index}: shape "
                    f"{tuple(case.shape)}, {DTYPE_NAMES[case.dtype]} on {torch_device}, "
                    f"{settings}, gradients of scale {case.scale:g}): after step={t} the "
                    f"parameter differs, {describe_mismatch(p, ref, index_, rtol)}."
                    + (first_nonfinite_hint(t) if not torch.isfinite(p).all() else "")
                )
    end_of(obs, name)


def judge_effective_steps(
    obs: Any,
    *,
    sequences: Sequence[Sequence[float]],
    lr: float,
    betas: tuple[float, float],
    eps: float,
    rtol: float,
) -> None:
    name = "effective_steps"
    refuse_delegation(obs, name)
    results = _list(obs, "results", len(sequences))

    def not_numbers(stop: dict[str, Any]) -> None:
        raise GradingError(
            "effective_steps should return a list or 1-d tensor of numbers, got "
            f"{text(stop.get('type'), 200)}"
        )

    for index, grads in enumerate(sequences):
        expected = torch_effective_steps(grads, lr=lr, betas=betas, eps=eps)
        if index >= len(results):
            raise_stop(obs, name, handlers={"bad_result": not_numbers})
        count = _int(results[index], "count")
        if count != len(grads):
            raise GradingError(
                f"effective_steps returned {count} values for {len(grads)} gradients: one per step"
            )
        values = _field(results[index], "values", list)
        if len(values) != len(grads):
            raise malformed("the number of values is not the count recorded")
        for t in range(len(grads)):
            got = _float(values[t], "a value")
            if not close(got, expected[t].item(), rtol, atol=1e-12):
                shown = ", ".join(f"{x:g}" for x in list(grads)[:6]) + (
                    ", ..." if len(grads) > 6 else ""
                )
                raise GradingError(
                    f"effective_steps([{shown}], lr={lr}, beta1={betas[0]}, beta2={betas[1]}, "
                    f"eps={eps}): at step {t + 1} expected {expected[t].item():.8g}, got "
                    f"{got:.8g} (allowed relative error {rtol:g}). The effective step is "
                    "|theta_t - theta_(t-1)| / lr, from a fresh optimizer, gradients fed in order."
                )
    end_of(obs, name)


# --------------------------------------------------------------------------------------
# Assignment `adamw`.
# --------------------------------------------------------------------------------------

_OPTIMIZER_CALLS = {"init": "AdamW", "step": "AdamW.step"}


def _optimizer_handlers(name: str) -> dict[str, Callable[[dict[str, Any]], None]]:
    def not_optimizer(stop: dict[str, Any]) -> None:
        raise GradingError(
            f"{name}(...) should be a torch.optim.Optimizer, got {text(stop.get('type'), 200)}"
        )

    return {"not_optimizer": not_optimizer}


def _stop(obs: Any, name: str) -> None:
    raise_stop(
        obs, name, calls={"init": name, "step": f"{name}.step"}, handlers=_optimizer_handlers(name)
    )


def check_class(obs: Any, name: str) -> None:
    """The answer is a ``torch.optim.Optimizer`` subclass that does not delegate."""
    info = _field(obs, "class", dict)
    if info.get("ok") is not True:
        raise GradingError(
            f"{name} should be a class derived from torch.optim.Optimizer, got "
            f"{text(info.get('repr'))}"
        )
    refuse_delegation(obs, name)


def judge_adamw_constructor(obs: Any, *, seed: int | None) -> None:
    name = "AdamW"
    check_class(obs, name)
    if "defaults" not in obs:
        _stop(obs, name)
    defaults = _field(obs, "defaults", dict)
    expected = {"lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 1e-2}
    for key, value in expected.items():
        entry = _field(defaults, key, dict)
        if entry.get("present") is not True:
            raise GradingError(
                f"param_groups[0] has no {key!r}: pass the hyperparameters as the defaults dict "
                "to torch.optim.Optimizer.__init__(params, defaults)"
            )
        got = entry.get("value")
        if key == "betas":
            same = isinstance(got, list) and tuple(got) == value
        else:
            same = got is not None and not isinstance(got, (list, dict, str)) and got == value
        if not same:
            raise GradingError(
                f"the default {key} should be {value} (as torch.optim.AdamW), got "
                f"{text(entry.get('repr'))}"
            )
    cases = constructor_cases(seed)
    if "invalid" not in obs:
        _stop(obs, name)
    invalid = _list(obs, "invalid", len(cases))
    for index, (kwargs, what) in enumerate(cases):
        if index >= len(invalid):
            _stop(obs, name)
        entry = invalid[index]
        hits = _texts(_field(entry, "hits", list), "hits")
        if hits:
            raise refusal(name, [f"running it called {hit}" for hit in hits])
        call = ", ".join(f"{k}={v!r}" for k, v in kwargs.items())
        outcome = _field(entry, "outcome", str)
        if outcome == "value_error":
            continue
        if outcome == "other":
            raise GradingError(
                f"AdamW([p], {call}) raised {text(entry.get('error'))}; an invalid {what} "
                "should raise ValueError"
            )
        if outcome == "accepted":
            raise GradingError(
                f"AdamW([p], {call}) was accepted: an invalid {what} should raise ValueError, "
                f"as torch.optim.AdamW does (e.g. ValueError('Invalid learning rate: -0.5'))"
            )
        raise malformed("an outcome is unknown")
    end_of(obs, name, calls={"init": name, "step": f"{name}.step"})


def judge_adamw_first_steps(obs: Any, *, device: str, seed: int | None) -> None:
    name = "AdamW"
    check_class(obs, name)
    probes = adamw_probes(seed)
    recorded = _list(obs, "probes", len(probes))
    rtol = RTOL[torch.float64]
    for index, probe in enumerate(probes):
        if index >= len(recorded):
            _stop(obs, name)
        params = _trajectory_of(
            _field(recorded[index], "params", dict), "params", (len(probe.start),),
            torch.float64, probe.steps,
        )  # fmt: skip
        if params.shape[0] < probe.steps:
            _stop(obs, name)  # the run stopped before its steps were compared
        got = list(params)
        expected = [p for p, _, _ in trajectory(probe, decoupled=True)]
        for t, (g, e) in enumerate(zip(got, expected, strict=True), start=1):
            index_ = first_mismatch(g, e, rtol)
            if index_ is None:
                continue
            message = (
                f"AdamW([p], {probe.settings()}) on float64: after step {t} the parameter is "
                f"wrong, {describe_mismatch(g, e, index_, rtol)}."
            )
            if not torch.isfinite(g).all():
                message += first_nonfinite_hint(t)
            else:
                mistake = diagnose(got, probe, True, ADAMW_MISTAKES)
                if mistake:
                    hint_t = (
                        probe.lr_change_at + 1
                        if mistake == "lr_cached" and probe.lr_change_at is not None
                        else t
                    )
                    message += " Likely mistake: " + hint(mistake, hint_t, probe.beta1, probe.beta2)
            raise GradingError(message)
    end_of(obs, name, calls={"init": name, "step": f"{name}.step"})


def judge_adamw_against_torch(
    obs: Any, *, device: str, seed: int, cases: int, steps: int, dtypes: Sequence[Any]
) -> None:
    name = "AdamW"
    check_class(obs, name)
    torch_device = torch.device(device)
    recorded = _list(obs, "cases", cases)
    for index, case in enumerate(adamw_torch_cases(seed, cases, steps, dtypes, torch_device)):
        if index >= len(recorded):
            _stop(obs, name)
        stacks = _field(recorded[index], "params", list)
        if len(stacks) != len(case.shapes):
            raise malformed("a case does not record every parameter")
        history = [
            _trajectory_of(stack, f"parameter {i}", shape, case.dtype, steps)
            for i, (stack, shape) in enumerate(zip(stacks, case.shapes, strict=True))
        ]
        done = history[0].shape[0]
        if any(h.shape[0] != done for h in history):
            raise malformed("the parameters record different numbers of steps")
        rtol = tolerance(case.dtype)
        theirs = [s.clone().requires_grad_(True) for s in case.starts]
        reference = torch.optim.AdamW(case.groups(theirs), **case.common)
        for step, row in enumerate(case.grads):
            if step >= done:
                _stop(obs, name)
            if step == case.change_at:
                for group in reference.param_groups:
                    group["lr"] = group["lr"] * case.factor
            for b, g in zip(theirs, row, strict=True):
                b.grad = None if g is None else g.clone()
            reference.step()
            for i, b in enumerate(theirs):
                a = history[i][step]
                index_ = first_mismatch(a, b, rtol)
                if index_ is None:
                    continue
                group_index = i % case.n_groups
                events = []
                if step >= case.change_at:
                    events.append(
                        f"every group's lr was multiplied by {case.factor} before step "
                        f"{case.change_at + 1}"
                    )
                if step >= case.none_every - 1 or i:
                    events.append(
                        f"parameter {i} had grad None at steps where (step - 1 + {i}) % "
                        f"{case.none_every} == 0 (it must be skipped then, its state untouched)"
                    )
                raise GradingError(
                    f"AdamW against torch.optim.AdamW (seed {seed}, case {index}: "
                    f"{len(case.shapes)} parameters of shapes {case.shapes} in {case.n_groups} "
                    f"group(s), {DTYPE_NAMES[case.dtype]} on {torch_device}; constructor "
                    f"{case.common}; group {group_index} settings "
                    f"{case.group_hypers[group_index]}): after step {step + 1}, parameter {i} "
                    f"differs, {describe_mismatch(a, b, index_, rtol)}."
                    + (" Notes: " + "; ".join(events) + "." if events else "")
                    + (first_nonfinite_hint(step + 1) if not torch.isfinite(a).all() else "")
                    + " Run check_adamw_first_steps for a diagnosis on a small example."
                )
    end_of(obs, name, calls={"init": name, "step": f"{name}.step"})


def judge_adamw_state_and_closure(obs: Any, *, device: str, seed: int) -> None:
    name = "AdamW"
    check_class(obs, name)
    torch_device = torch.device(device)
    like_device = _device_text(torch_device)
    problem = closure_problem(seed, torch_device)
    if "steps" not in obs:
        _stop(obs, name)
    recorded = _list(obs, "steps", problem.steps)
    b = problem.start.clone().requires_grad_(True)
    reference = torch.optim.AdamW([b], lr=problem.lr, weight_decay=0.0)
    for t in range(problem.steps):
        if t >= len(recorded):
            _stop(obs, name)
        entry = recorded[t]
        if _int(entry, "calls") == 0:
            raise GradingError(
                "AdamW.step(closure) did not call the closure: call it under "
                "torch.enable_grad() and use the gradients it computes"
            )
        closure_loss = _float(_field(entry, "closure_loss", (int, float)), "the closure's loss")
        returned = entry.get("returned")
        same = False
        if _field(entry, "returned_tensor", bool):
            if not isinstance(returned, dict):
                raise malformed("the loss returned is not described")
            if returned.get("kind") == "number":
                same = number_from(returned, "the loss returned") == closure_loss
        if not same:
            raise GradingError(
                f"AdamW.step(closure) should return the closure's loss ({closure_loss:.6g}), "
                f"got {text(entry.get('repr'))}"
            )
        reference.zero_grad()
        ((b - problem.target) ** 2).sum().backward()
        reference.step()
    if "state" not in obs:
        _stop(obs, name)
    state = _field(obs, "state", dict)
    steps = problem.steps
    if state.get("present") is not True:
        raise GradingError(
            "AdamW.state[p] is empty after steps: keep each parameter's state in self.state[p]"
        )
    keys = _texts(_field(state, "keys", list), "keys")
    for key in ("step", "exp_avg", "exp_avg_sq"):
        if key not in state:
            raise GradingError(
                f"AdamW.state[p] has keys {sorted(keys)}; it should use torch's: 'step', 'exp_avg', 'exp_avg_sq'"
            )
    if number_from(state["step"], "state['step']") != steps:
        raise GradingError(
            f"after {steps} steps state['step'] should be {steps}, got "
            f"{text(state.get('step_repr'))}"
        )
    ref_state = reference.state[b]
    for key in ("exp_avg", "exp_avg_sq"):
        what = f"state[p][{key!r}]"
        check_tensor_desc(state[key], tuple(b.shape), b.dtype, like_device, what)
        value = decode_tensor(
            _field(state[key], "data", dict), what, shape=tuple(b.shape), dtype=b.dtype
        )
        index_ = first_mismatch(value, ref_state[key], RTOL[torch.float64])
        if index_ is not None:
            raise GradingError(
                f"after {steps} steps with a closure, state[p][{key!r}] differs from torch.optim.AdamW's: "
                f"{describe_mismatch(value, ref_state[key], index_, RTOL[torch.float64])}"
            )
    if _field(obs, "frozen_state", bool):
        raise GradingError("a parameter whose .grad is None got state: skip it in step()")
    end_of(obs, name, calls={"init": name, "step": f"{name}.step"})


# --------------------------------------------------------------------------------------
# Functions of plain inputs (schedules, by-hand calculations).
# --------------------------------------------------------------------------------------

Case = tuple[Sequence[Any], dict[str, Any]]


def _results(obs: Any, name: str, count: int) -> list[Any]:
    refuse_delegation(obs, name)
    return _list(obs, "results", count)


def _result(obs: Any, results: list[Any], index: int, name: str) -> Any:
    if index >= len(results):
        raise_stop(obs, name)
    return results[index]


def judge_values(
    obs: Any,
    *,
    name: str,
    cases: Sequence[tuple[Sequence[Any], dict[str, Any], float, str]],
    rtol: float,
    atol: float,
) -> None:
    results = _results(obs, name, len(cases))
    for index, (args, kwargs, expected, hint_) in enumerate(cases):
        got = number_from(_result(obs, results, index, name), f"{name}'s result")
        if not close(got, expected, rtol, atol):
            raise GradingError(
                f"{format_call(name, kwargs, args)}: expected {expected:.10g}, got {got:.10g} "
                f"(allowed relative error {rtol:g}). {hint_}".rstrip()
            )
    end_of(obs, name)


def judge_against_reference(
    obs: Any,
    *,
    reference: Callable,
    name: str,
    cases: Sequence[Case],
    rtol: float,
    atol: float,
    mistakes: dict[str, Callable] | None,
) -> None:
    results = _results(obs, name, len(cases))
    for index, (args, kwargs) in enumerate(cases):
        expected = float(reference(*args, **kwargs))
        got = number_from(_result(obs, results, index, name), f"{name}'s result")
        if close(got, expected, rtol, atol):
            continue
        message = (
            f"{format_call(name, kwargs, args)}: expected {expected:.10g}, got {got:.10g} "
            f"(allowed relative error {rtol:g})."
        )
        for description, wrong in (mistakes or {}).items():
            try:
                if close(got, float(wrong(*args, **kwargs)), 1e-9, 1e-15):
                    message += f" Likely mistake: {description}"
                    break
            except Exception:  # a mistake model that does not apply to these inputs
                continue
        raise GradingError(message)
    end_of(obs, name)


def judge_predicate(
    obs: Any, *, name: str, cases: Sequence[Case], predicate: Callable[[float], Any], message: str
) -> None:
    results = _results(obs, name, len(cases))
    for index, (args, kwargs) in enumerate(cases):
        got = number_from(_result(obs, results, index, name), f"{name}'s result")
        if not predicate(got):
            raise GradingError(f"{format_call(name, kwargs, args)} = {got:.10g}: {message}")
    end_of(obs, name)


def _format_number(value: Any) -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return f"{float(value):.10g}"


def _dict_result(
    entry: Any, call: str, keys: Sequence[str], total: str | None, rtol: float, atol: float
) -> dict[str, Any]:
    """The structure of one dict result: exactly ``keys``, and ``total`` the sum of the rest."""
    if not isinstance(entry, dict):
        raise malformed("a result is not a record")
    shown = text(entry.get("repr"))
    if entry.get("is_dict") is not True:
        raise GradingError(f"{call} should return a dict with keys {', '.join(keys)}; got {shown}")
    got_keys = _texts(_field(entry, "keys", list), "keys")
    if _int(entry, "other_keys") or set(got_keys) != set(keys):
        raise GradingError(f"{call} should return a dict with keys {', '.join(keys)}; got {shown}")
    values = _field(entry, "values", dict)
    if total is not None:
        others = [k for k in keys if k != total]
        numbers = {k: number_from(_field(values, k, dict), f"{call}[{k!r}]") for k in keys}
        if not close(numbers[total], sum(numbers[k] for k in others), rtol, atol):
            raise GradingError(f"{call}: {total} should be {' + '.join(others)}, got {shown}")
    return values


def judge_dict_values(
    obs: Any,
    *,
    name: str,
    cases: Sequence[tuple[Sequence[Any], dict[str, Any], dict[str, float], str]],
    keys: Sequence[str],
    total: str | None,
    rtol: float,
    atol: float,
) -> None:
    results = _results(obs, name, len(cases))
    for index, (args, kwargs, expected, hint_) in enumerate(cases):
        call = format_call(name, kwargs, args)
        values = _dict_result(_result(obs, results, index, name), call, keys, total, rtol, atol)
        for key, want in (expected or {}).items():
            got = number_from(_field(values, key, dict), f"{call}[{key!r}]")
            if not close(got, float(want), rtol, atol):
                raise GradingError(
                    f"{call}[{key!r}]: expected {_format_number(want)}, got "
                    f"{text(values[key].get('repr'))}. {hint_}".rstrip()
                )
    end_of(obs, name)


def judge_dict_against_reference(
    obs: Any,
    *,
    reference: Callable[..., dict[str, Any]],
    name: str,
    cases: Sequence[Case],
    keys: Sequence[str],
    rtol: float,
    atol: float,
    unit: str,
    hints: Callable[..., str] | None,
) -> None:
    results = _results(obs, name, len(cases))
    for index, (args, kwargs) in enumerate(cases):
        want = reference(*args, **kwargs)
        entry = _result(obs, results, index, name)
        call = format_call(name, kwargs, args)
        if not isinstance(entry, dict):
            raise malformed("a result is not a record")
        if entry.get("is_dict") is not True:
            raise GradingError(
                f"{call} should return a dict with keys {', '.join(keys)}; got "
                f"{text(entry.get('repr'))}"
            )
        values = _field(entry, "values", dict)
        for key in keys:
            desc = values.get(key)
            got = None if desc is None else number_from(desc, f"{call}[{key!r}]")
            if got is None or not close(got, float(want[key]), rtol, atol):
                shown = "None" if desc is None else text(desc.get("repr"))
                hint_ = hints(key, *args, **kwargs) if hints else ""
                raise GradingError(
                    f"{call}[{key!r}]: expected {_format_number(want[key])}{unit}, got "
                    f"{shown}. {hint_}".rstrip()
                )
    end_of(obs, name)


# --------------------------------------------------------------------------------------
# Plain answers: a number, a type, letters.
# --------------------------------------------------------------------------------------


def _value(obs: Any) -> dict[str, Any]:
    return _field(obs, "value", dict)


def judge_number(
    obs: Any, *, name: str, expected: float, rtol: float, atol: float, message: str | None
) -> None:
    value = _value(obs)
    got = number_from(_field(value, "number", dict), name)
    if not close(got, expected, rtol, atol):
        shown = text(value.get("repr"))
        if message:
            raise GradingError(message.format(name=name, got=shown, expected=expected))
        raise GradingError(
            f"{name} = {shown}: expected {expected:.10g} (allowed relative error {rtol:g})"
        )
    end_of(obs, name)


def judge_type(obs: Any, *, name: str, types: Sequence[type], description: str) -> None:
    value = _value(obs)
    mro = _texts(_field(value, "mro", list), "mro")
    if not any(f"{t.__module__}.{t.__qualname__}" in mro for t in types):
        raise GradingError(f"{name} should be {description}, got {text(value.get('repr'))}")
    end_of(obs, name)


def _letters(value: dict[str, Any]) -> list[dict[str, Any]]:
    items = _field(value, "items", list)
    if len(items) > MAX_ITEMS or not all(isinstance(x, dict) for x in items):
        raise malformed("the letters are not a short list of records")
    return items


def judge_choice(
    obs: Any,
    *,
    name: str,
    options: str,
    count: int | None,
    ordered: bool,
    nonempty: bool,
) -> None:
    value = _value(obs)
    shown = text(value.get("repr"))
    container = value.get("container")
    if container not in ("str", "list", "tuple", "set", "frozenset"):
        raise GradingError(f"{name} should be a letter or a collection of letters, got {shown}")
    if ordered and container not in ("list", "tuple"):
        raise GradingError(f"{name} should be a list in order, first fix first, got {shown}")
    items = _letters(value)
    size = _int(value, "size")
    bad = [
        text(x.get("repr"), 200)
        for x in items
        if x.get("is_str") is not True or text(x.get("str"), 200).strip().lower() not in options
    ]
    if bad:
        raise GradingError(
            f"{name}: [{', '.join(bad)}] are not among the options {', '.join(options)}"
        )
    if count is not None and size != count:
        raise GradingError(f"{name} should hold {count} letter(s), got {size}: {shown}")
    if len({text(x.get("str"), 200).strip().lower() for x in items}) != size:
        raise GradingError(f"{name} repeats a letter: {shown}")
    if nonempty and size == 0:
        raise GradingError(f"{name} is empty: choose every letter that applies")
    end_of(obs, name)


def judge_answer_letters(
    obs: Any,
    *,
    name: str,
    expected: Sequence[str],
    ordered: bool,
    explanations: dict[str, str],
) -> None:
    value = _value(obs)
    shown = text(value.get("repr"))
    if value.get("container") is None:
        raise GradingError(f"{name} should be a letter or a collection of letters, got {shown}")
    got = [text(x.get("str"), 200).strip().lower() for x in _letters(value)]
    if _int(value, "size") != len(got):
        raise GradingError(f"{name} = {shown}: far more letters than there are options")
    want = [x.lower() for x in expected]
    if (got == want) if ordered else (set(got) == set(want) and len(got) == len(set(got))):
        end_of(obs, name)
        return
    lines = []
    for letter in got:
        if letter not in want:
            lines.append(f"({letter}) is not right: {explanations.get(letter, '')}")
    for letter in want:
        if letter not in got:
            lines.append(f"one right answer is missing. {explanations.get('missing', '')}")
            break
    if ordered and set(got) == set(want):
        lines.append("the order is not right: do first what tells you where the NaN comes from.")
    raise GradingError(f"{name} = {shown}: " + " ".join(lines))

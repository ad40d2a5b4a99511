"""The checks the exercises' test cells call, each declared once, with how it is judged.

A declaration is a judge function under :func:`check`: its signature, after the observation,
is the check's signature in the test cells (``grading.check_<name>(answer, ...)``); the
decorator names the observer in :mod:`autograder.observe` that records what the answer does
in the student's process (the sandbox), the answer's name for messages, the delegation rules
(``kind``), and which arguments travel to the sandbox as plain data (``inputs``). Everything
else is derived: the function test cells call, the request the grader plans, the check that a
recorded observation is of this check and these inputs.

A judge runs in the trusted process (the grader's, or the notebook's own in inline mode): it
regenerates the check's inputs, computes the reference (``torch.optim.Adam``/``AdamW``, the
functions, expected values, hints and mistake models the hidden tests pass) and raises
:class:`GradingError` naming the step, parameter, element, expected and got values, the
tolerance and the likely mistake. The observation is untrusted: a field of the wrong type
or length fails the check as *malformed*, never crashes the judge.

This module never enters the sandbox: it holds the references.
"""

from __future__ import annotations

import inspect
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from autograder import grading
from autograder.common import (
    DTYPE_NAMES,
    FLOAT_RTOL,
    MAX_ITEMS,
    RTOL,
    GradingError,
    decode_tensor,
    device_name,
    malformed,
    number_from,
    text,
)
from autograder.delegation import refusal
from autograder.judge import (
    ADAM_MISTAKES,
    ADAMW_MISTAKES,
    _bad_update_result,
    _device_text,
    _field,
    _float,
    _int,
    _list,
    _texts,
    _trajectory_of,
    check_tensor_desc,
    describe_mismatch,
    diagnose,
    disagreement,
    end_of,
    first_mismatch,
    first_nonfinite_hint,
    format_call,
    hint,
    raise_stop,
    recorded_number,
    refuse_delegation,
    tolerance,
    torch_effective_steps,
    trajectory,
)
from autograder.observe import (
    adam_probes,
    adam_torch_cases,
    adamw_probes,
    adamw_torch_cases,
    closure_problem,
    constructor_cases,
    dtype_of,
)

#: What ``grading`` exposes: ``check_<name>`` for every declaration, and the references that
#: hidden tests use.
API: dict[str, Any] = {}


@dataclass(frozen=True)
class Check:
    """One check: see the module's docstring. Calling it runs it in the current mode."""

    name: str
    observer: str
    answer: str | None  # the answer's name in messages; None: the call's `name` argument
    kind: str | None  # delegation rules; "argument": the call's `kind`; None: a plain value
    inputs: tuple[str, ...] | Callable[[dict[str, Any]], dict[str, Any]]
    judge: Callable[..., None]

    def __call__(self, answer: Any, *args: Any, **kwargs: Any) -> None:
        bound = inspect.signature(self.judge).bind(None, *args, **kwargs)
        bound.apply_defaults()
        arguments = dict(bound.arguments)
        arguments.pop(next(iter(arguments)))  # the observation
        if "device" in arguments:
            arguments["device"] = device_name(arguments["device"])
        if "dtypes" in arguments:
            arguments["dtypes"] = [DTYPE_NAMES[dtype_of(d)] for d in arguments["dtypes"]]
        if callable(self.inputs):
            inputs = self.inputs(arguments)
        else:
            inputs = {key: arguments[key] for key in self.inputs}
        kind = arguments.get("kind") if self.kind == "argument" else self.kind
        grading.run_check(
            self.name, self.observer, answer, inputs,
            lambda obs: self.judge(obs, **arguments),
            name=self.answer or arguments["name"], kind=kind,
        )  # fmt: skip # the arguments grouped by meaning, not one a line


def check(
    observer: str,
    *,
    inputs: tuple[str, ...] | Callable[[dict[str, Any]], dict[str, Any]],
    answer: str | None = None,
    kind: str | None = None,
) -> Callable[[Callable[..., None]], Check]:
    """Declare a check: the judge function below it, and how its answer is observed."""

    def declare(judge: Callable[..., None]) -> Check:
        name = judge.__name__.rstrip("_")
        declared = Check(name, observer, answer, kind, inputs, judge)
        API[f"check_{name}"] = declared
        return declared

    return declare


def calls(cases: Sequence[Sequence[Any]]) -> list[list[Any]]:
    """The calls of ``cases`` (positional args, keyword args, ...) as plain data."""
    return [[list(case[0]), dict(case[1])] for case in cases]


# --------------------------------------------------------------------------------------
# Assignment `adam`.
# --------------------------------------------------------------------------------------


@check("adam_first_steps", answer="adam_update", kind="optimizer", inputs=("device", "seed"))
def adam_first_steps(obs: Any, *, device: Any = None, seed: int | None = None) -> None:
    """A few updates on a 3-element float64 parameter; diagnoses the usual mistakes.

    ``seed=None`` uses the fixed probe the notebook describes; a seed draws new settings.
    """
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
                    # m or v wrong: the parameter's trajectory so far may still name the mistake.
                    mistake = diagnose(
                        got_params,
                        probe,
                        False,
                        (*ADAM_MISTAKES, "no_weight_decay", "decoupled_in_adam"),
                    )
                    if mistake:
                        message += " Likely mistake: " + hint(mistake, t, probe.beta1, probe.beta2)
                    elif what == "m":
                        message += " m = beta1 * m + (1 - beta1) * grad (with Adam's weight decay added to grad first)."
                    elif what == "v":
                        message += " v = beta2 * v + (1 - beta2) * grad**2 (with Adam's weight decay added to grad first)."
                raise GradingError(message)
    end_of(obs, name)


@check(
    "adam_against_torch", answer="adam_update", kind="optimizer",
    inputs=("device", "seed", "cases", "steps", "dtypes"),
)  # fmt: skip # the arguments grouped by meaning, not one a line
def adam_against_torch(
    obs: Any,
    *,
    device: Any = None,
    seed: int = 0,
    cases: int = 3,
    steps: int = 100,
    dtypes: Sequence[Any] = (torch.float64, torch.float32),
) -> None:
    """Random shapes and hyperparameters, ``steps`` updates each, against ``torch.optim.Adam``."""
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
        )  # fmt: skip # the arguments grouped by meaning, not one a line
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


@check(
    "effective_steps", answer="effective_steps", kind="optimizer",
    inputs=lambda a: {
        "sequences": [[float(g) for g in grads] for grads in a["sequences"]],
        "lr": a["lr"], "betas": list(a["betas"]), "eps": a["eps"],
    },
)  # fmt: skip # the arguments grouped by meaning, not one a line
def effective_steps(
    obs: Any,
    sequences: Sequence[Sequence[float]],
    *,
    lr: float = 1e-3,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    rtol: float = 1e-6,
) -> None:
    """``effective_steps(grads, lr=, beta1=, beta2=, eps=)`` against |update| / lr of torch's Adam."""
    sequences = [[float(g) for g in grads] for grads in sequences]
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
            wrong = disagreement(_float(values[t], "a value"), expected[t].item(), rtol, 1e-12)
            if wrong:
                shown = ", ".join(f"{x:g}" for x in grads[:6]) + (", ..." if len(grads) > 6 else "")
                raise GradingError(
                    f"effective_steps([{shown}], lr={lr}, beta1={betas[0]}, beta2={betas[1]}, "
                    f"eps={eps}): at step {t + 1} {wrong}. The effective step is "
                    "|theta_t - theta_(t-1)| / lr, from a fresh optimizer, gradients fed in order."
                )
    end_of(obs, name)


# --------------------------------------------------------------------------------------
# Assignment `adamw`.
# --------------------------------------------------------------------------------------


def _stop(obs: Any, name: str) -> None:
    def not_optimizer(stop: dict[str, Any]) -> None:
        raise GradingError(
            f"{name}(...) should be a torch.optim.Optimizer, got {text(stop.get('type'), 200)}"
        )

    calls = {"init": name, "step": f"{name}.step"}
    raise_stop(obs, name, calls=calls, handlers={"not_optimizer": not_optimizer})


def check_class(obs: Any, name: str) -> None:
    """The answer is a ``torch.optim.Optimizer`` subclass that does not delegate."""
    info = _field(obs, "class", dict)
    if info.get("ok") is not True:
        raise GradingError(
            f"{name} should be a class derived from torch.optim.Optimizer, got "
            f"{text(info.get('repr'))}"
        )
    refuse_delegation(obs, name)


@check("adamw_constructor", answer="AdamW", kind="optimizer", inputs=("seed",))
def adamw_constructor(obs: Any, *, seed: int | None = None) -> None:
    """Defaults like torch's, and ``ValueError`` for hyperparameters out of range."""
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


@check("adamw_first_steps", answer="AdamW", kind="optimizer", inputs=("device", "seed"))
def adamw_first_steps(obs: Any, *, device: Any = None, seed: int | None = None) -> None:
    """A 3-element float64 parameter over a few steps, with weight decay and an lr change."""
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
        )  # fmt: skip # the arguments grouped by meaning, not one a line
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
                if mistake:  # lr_cached is told apart only on a probe whose lr changes
                    hint_t = probe.lr_change_at + 1 if mistake == "lr_cached" else t
                    message += " Likely mistake: " + hint(mistake, hint_t, probe.beta1, probe.beta2)
            raise GradingError(message)
    end_of(obs, name, calls={"init": name, "step": f"{name}.step"})


@check(
    "adamw_against_torch", answer="AdamW", kind="optimizer",
    inputs=("device", "seed", "cases", "steps", "dtypes"),
)  # fmt: skip # the arguments grouped by meaning, not one a line
def adamw_against_torch(
    obs: Any,
    *,
    device: Any = None,
    seed: int = 0,
    cases: int = 2,
    steps: int = 100,
    dtypes: Sequence[Any] = (torch.float64, torch.float32),
) -> None:
    """Random shapes, hyperparameters and parameter groups, the learning rate changed mid-run,
    some gradients ``None``: ``steps`` steps against ``torch.optim.AdamW``, after every step."""
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


@check("adamw_state_and_closure", answer="AdamW", kind="optimizer", inputs=("device", "seed"))
def adamw_state_and_closure(obs: Any, *, device: Any = None, seed: int = 0) -> None:
    """``step(closure)`` returns the closure's loss; ``state`` uses torch's keys and values."""
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


@check(
    "calls",
    kind="argument",
    inputs=lambda a: {"name": a["name"], "kind": a["kind"], "calls": calls(a["cases"])},
)
def values(
    obs: Any,
    name: str,
    cases: Sequence[tuple[Sequence[Any], dict[str, Any], float, str]],
    *,
    kind: str = "course_lib",
    rtol: float = FLOAT_RTOL,
    atol: float = 0.0,
) -> None:
    """``cases``: (positional args, keyword args, expected value, hint when wrong); an ``int``
    expected is compared exactly (:func:`~autograder.judge.disagreement`)."""
    results = _results(obs, name, len(cases))
    for index, (args, kwargs, expected, hint_) in enumerate(cases):
        got = recorded_number(_result(obs, results, index, name), f"{name}'s result")
        wrong = disagreement(got, expected, rtol, atol)
        if wrong:
            raise GradingError(f"{format_call(name, kwargs, args)}: {wrong}. {hint_}".rstrip())
    end_of(obs, name)


@check(
    "calls",
    kind="argument",
    inputs=lambda a: {"name": a["name"], "kind": a["kind"], "calls": calls(a["cases"])},
)
def against_reference(
    obs: Any,
    reference: Callable,
    name: str,
    cases: Sequence[Case],
    *,
    kind: str = "course_lib",
    rtol: float = FLOAT_RTOL,
    atol: float = 0.0,
    mistakes: dict[str, Callable] | None = None,
) -> None:
    """``function(*args, **kwargs)`` equals ``reference(...)`` on every case (exactly, where
    the reference returns an ``int``); when it does not, name the first of ``mistakes``
    (description -> function) that gives the same value."""
    results = _results(obs, name, len(cases))
    for index, (args, kwargs) in enumerate(cases):
        got = recorded_number(_result(obs, results, index, name), f"{name}'s result")
        wrong = disagreement(got, reference(*args, **kwargs), rtol, atol)
        if wrong is None:
            continue
        message = f"{format_call(name, kwargs, args)}: {wrong}."
        for description, mistake in (mistakes or {}).items():
            try:
                if disagreement(got, mistake(*args, **kwargs), 1e-9, 1e-15) is None:
                    message += f" Likely mistake: {description}"
                    break
            except Exception:  # a mistake model that does not apply to these inputs
                continue
        raise GradingError(message)
    end_of(obs, name)


@check(
    "calls",
    kind="argument",
    inputs=lambda a: {"name": a["name"], "kind": a["kind"], "calls": calls(a["cases"])},
)
def predicate(
    obs: Any,
    name: str,
    cases: Sequence[Case],
    predicate: Callable[[float], Any],
    message: str,
    *,
    kind: str = "course_lib",
) -> None:
    """``predicate(function(*args, **kwargs))`` holds on every case (a property, without the
    answer): when it does not, ``"name(args) = got: message"``."""
    results = _results(obs, name, len(cases))
    for index, (args, kwargs) in enumerate(cases):
        got = recorded_number(_result(obs, results, index, name), f"{name}'s result")
        if not predicate(got):
            raise GradingError(f"{format_call(name, kwargs, args)} = {got:.10g}: {message}")
    end_of(obs, name)


def _dict_result(
    entry: Any, call: str, keys: Sequence[str], total: str | None, rtol: float, atol: float
) -> dict[str, int | float]:
    """The numbers of one dict result: exactly ``keys``, and ``total`` the sum of the rest."""
    if not isinstance(entry, dict):
        raise malformed("a result is not a record")
    shown = text(entry.get("repr"))
    if entry.get("is_dict") is not True:
        raise GradingError(f"{call} should return a dict with keys {', '.join(keys)}; got {shown}")
    got_keys = _texts(_field(entry, "keys", list), "keys")
    if _int(entry, "other_keys") or set(got_keys) != set(keys):
        raise GradingError(f"{call} should return a dict with keys {', '.join(keys)}; got {shown}")
    values = _field(entry, "values", dict)
    numbers = {k: recorded_number(_field(values, k, dict), f"{call}[{k!r}]") for k in keys}
    if total is not None:
        others = [k for k in keys if k != total]
        if disagreement(numbers[total], sum(numbers[k] for k in others), rtol, atol):
            raise GradingError(f"{call}: {total} should be {' + '.join(others)}, got {shown}")
    return numbers


@check(
    "dict_calls", kind="argument",
    inputs=lambda a: {"name": a["name"], "kind": a["kind"], "calls": calls(a["cases"]), "keys": list(a["keys"])},
)  # fmt: skip # the arguments grouped by meaning, not one a line
def dict_values(
    obs: Any,
    name: str,
    cases: Sequence[tuple[Sequence[Any], dict[str, Any], dict[str, float], str]],
    *,
    keys: Sequence[str],
    total: str | None = None,
    kind: str = "course_lib",
    rtol: float = FLOAT_RTOL,
    atol: float = 0.0,
) -> None:
    """A function that returns a dict of numbers: exactly ``keys``, ``total`` (when given) the
    sum of the others, and the values of each case's ``expected`` dict (which may name only
    some keys, or none; an ``int`` is compared exactly). ``cases``: (positional args, keyword
    args, expected, hint)."""
    results = _results(obs, name, len(cases))
    for index, (args, kwargs, expected, hint_) in enumerate(cases):
        call = format_call(name, kwargs, args)
        numbers = _dict_result(_result(obs, results, index, name), call, keys, total, rtol, atol)
        for key, want in (expected or {}).items():
            wrong = disagreement(numbers[key], want, rtol, atol)
            if wrong:
                raise GradingError(f"{call}[{key!r}]: {wrong}. {hint_}".rstrip())
    end_of(obs, name)


@check(
    "dict_calls", kind="argument",
    inputs=lambda a: {"name": a["name"], "kind": a["kind"], "calls": calls(a["cases"]), "keys": list(a["keys"])},
)  # fmt: skip # the arguments grouped by meaning, not one a line
def dict_against_reference(
    obs: Any,
    reference: Callable[..., dict[str, Any]],
    name: str,
    cases: Sequence[Case],
    *,
    keys: Sequence[str],
    kind: str = "course_lib",
    rtol: float = FLOAT_RTOL,
    atol: float = 0.0,
    unit: str = "",
    hints: Callable[..., str] | None = None,
) -> None:
    """``function(*args, **kwargs)`` has exactly ``keys`` and ``[key]`` equals
    ``reference(...)[key]`` for every key and case (exactly, where the reference's value is
    an ``int``: byte counts); ``hints(key, *args, **kwargs)`` says what to look at when one
    differs."""
    results = _results(obs, name, len(cases))
    for index, (args, kwargs) in enumerate(cases):
        want = reference(*args, **kwargs)
        call = format_call(name, kwargs, args)
        numbers = _dict_result(_result(obs, results, index, name), call, keys, None, rtol, atol)
        for key in keys:
            wrong = disagreement(numbers[key], want[key], rtol, atol, unit)
            if wrong:
                hint_ = hints(key, *args, **kwargs) if hints else ""
                raise GradingError(f"{call}[{key!r}]: {wrong}. {hint_}".rstrip())
    end_of(obs, name)


# --------------------------------------------------------------------------------------
# Plain answers: a number, a type, letters.
# --------------------------------------------------------------------------------------


def _value(obs: Any) -> dict[str, Any]:
    return _field(obs, "value", dict)


@check("value", inputs=("name",))
def number(
    obs: Any,
    name: str,
    expected: float,
    *,
    rtol: float = FLOAT_RTOL,
    atol: float = 0.0,
    message: str | None = None,
) -> None:
    """A number equal to ``expected`` (exactly, where it is an ``int``). ``message``, when
    given, is formatted with ``name``, ``got`` (the answer's repr) and ``expected``."""
    value = _value(obs)
    wrong = disagreement(recorded_number(_field(value, "number", dict), name), expected, rtol, atol)
    if wrong:
        shown = text(value.get("repr"))
        if message:
            raise GradingError(message.format(name=name, got=shown, expected=expected))
        raise GradingError(f"{name} = {shown}: {wrong}")
    end_of(obs, name)


@check("value", inputs=("name",))
def type_(
    obs: Any,
    name: str,
    types: type | tuple[type, ...] = float,
    *,
    description: str | None = None,
) -> None:
    """``isinstance(value, types)``; the message says ``name should be <description>``."""
    types = types if isinstance(types, tuple) else (types,)
    description = description or "a " + " or a ".join(t.__name__ for t in types)
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


@check("value", inputs=("name",))
def choice(
    obs: Any,
    name: str,
    *,
    options: str,
    count: int | None = None,
    ordered: bool = False,
    nonempty: bool = False,
) -> None:
    """The answer's format: letters from ``options``; ``count`` of them when given, at least
    one when ``nonempty``; a list or tuple when ``ordered``."""
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


@check("value", inputs=("name",))
def answer_letters(
    obs: Any,
    name: str,
    expected: Sequence[str],
    *,
    ordered: bool,
    explanations: dict[str, str],
) -> None:
    """Compare a choice with the key; explain each wrong or missing letter."""
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


# --------------------------------------------------------------------------------------
# What several hidden tests share (they run in the grader's process, never in the sandbox).
# --------------------------------------------------------------------------------------


def schedule_cases(seed: int, *, length: bool = False, cooldown: bool = False) -> list[Case]:
    """Calls of a schedule for a hidden test, with ``course_lib.schedules``' keywords.

    Eight random schedules: ``peak_lr`` and ``num_warmup_steps >= 1``; with ``length`` also
    ``num_training_steps`` and ``min_lr``, and with ``cooldown`` a ``cooldown_fraction`` whose
    cooldown starts after the warmup. Each is called at its boundaries (0, the warmup's last
    and first steps, the last two steps of the run and past its end) and at random steps.
    """
    rng = random.Random(seed)
    cases: list[Case] = []
    for _ in range(8):
        peak = 10 ** rng.uniform(-5, -2)
        warmup = rng.choice([1, 2, 10, rng.randint(3, 500)])
        kwargs = {"peak_lr": peak, "num_warmup_steps": warmup}
        if length:
            if cooldown:
                total = 100 * rng.randint(2 * (warmup // 100 + 2), 400)
                kwargs["cooldown_fraction"] = rng.choice([0.1, 0.2, 0.25, 0.5])
            else:
                total = warmup + rng.randint(20, 5000)
            kwargs.update(num_training_steps=total, min_lr=rng.choice([0.0, peak / 10, peak / 100]))
        steps = [0, 1, warmup - 1, warmup, warmup + 1]
        steps += [rng.randint(0, 3 * warmup) for _ in range(4)]
        if length:
            steps += [total - 2, total - 1, total, total + rng.randint(1, 1000)]
            steps += [rng.randint(warmup, total) for _ in range(6)]
        cases += [((step,), dict(kwargs)) for step in steps if step >= 0]
    return cases


def warmup_ahead(schedule: Callable[..., float]) -> dict[str, Callable[..., float]]:
    """The mistake "the warmup is one step ahead" of a ``course_lib.schedules`` schedule, as
    :func:`against_reference` takes mistakes: the rate of step ``s + 1`` during the warmup."""
    description = (
        "the warmup is one step ahead: the course's convention is lr(s) = peak_lr * s / "
        "num_warmup_steps, so lr(0) = 0 and the peak is reached at s = num_warmup_steps."
    )
    return {description: lambda s, **k: schedule(s + 1 if s < k["num_warmup_steps"] else s, **k)}


API.update(  # the references and inputs hidden tests use
    torch_effective_steps=torch_effective_steps,
    schedule_cases=schedule_cases,
    warmup_ahead=warmup_ahead,
)

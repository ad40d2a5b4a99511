"""The checks behind the exercises' test cells: precise messages, no lost points to warnings.

The notebooks in ``exercises/`` call these functions in their test cells; so do the hidden
tests that the grader restores. The answer (a function, a class or a value) is always the
first argument. Every check has two halves:

- **observe** (:mod:`.observe`), which runs in the student's process: it makes the check's
  inputs from its plain arguments (seeds, steps, the calls to make), calls the answer the
  same way whatever it returns, and records what it did as plain JSON data (outputs after
  every step, exceptions, types and shapes, delegation seen);
- **judge** (:mod:`.judge`), which runs in the trusted process: it regenerates the same
  inputs, computes the reference (``torch.optim``, or what the hidden test passes) and
  raises :class:`GradingError`, an ``AssertionError`` whose message says which step, which
  parameter and which element went wrong, expected against got, the tolerance, and, when
  the result matches a known mistake, what that mistake is.

A check runs in one of three modes:

- ``inline`` (the default, what a student's notebook and plain nbgrader run): both halves in
  this process, with warnings and stderr recorded and printed to stdout afterwards as a note
  (nbgrader scores a test cell 0 as soon as it writes to stderr);
- ``plan`` (``with planning() as requests:``): the check records what to observe,
  ``{"check", "answer", "inputs"}``, and calls nothing; the answer is an :class:`AnswerRef`;
- ``judge`` (``with judging(observations):``): the check takes the next recorded
  observation, verifies that it is of this check and these inputs, and judges it.

The batch grader plans a notebook's test cells, has the sandbox observe the student's
answers, and judges in its own process, where the student's code cannot reach the
comparisons. Delegation (an answer that calls ``torch.optim.Adam``/``AdamW``, their kernels
or ``course_lib``) is refused: see :mod:`.delegation`.
"""

from __future__ import annotations

import contextlib
import random
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import torch

from course_lib.grading import judge as _judge
from course_lib.grading import observe
from course_lib.grading.common import (
    DTYPE_NAMES,
    FLOAT_RTOL,
    RTOL,
    GradingError,
    as_float,
    canonical,
    captured,
    close,
    default_device,
    device_name,
    graded,
    hide_test_source_when_autograding,
    malformed,
    print_notes,
    round_trip,
    text,
)
from course_lib.grading.delegation import (
    Forbidden,
    call_answer,
    check_not_delegating,
    delegation_reasons,
    forbidden,
    mro_reasons,
    refusal,
    static_reasons,
    static_reasons_from_sources,
)
from course_lib.grading.judge import (
    ADAM_MISTAKES,
    ADAMW_MISTAKES,
    MISTAKES,
    describe_mismatch,
    first_mismatch,
    reference_update,
    torch_effective_steps,
    trajectory,
)
from course_lib.grading.observe import Probe, dtype_of

__all__ = [
    "ADAMW_MISTAKES",
    "ADAM_MISTAKES",
    "DTYPE_NAMES",
    "FLOAT_RTOL",
    "MISTAKES",
    "RTOL",
    "AnswerRef",
    "Forbidden",
    "GradingError",
    "Probe",
    "as_float",
    "call_answer",
    "check_adam_against_torch",
    "check_adam_first_steps",
    "check_adamw_against_torch",
    "check_adamw_constructor",
    "check_adamw_first_steps",
    "check_adamw_state_and_closure",
    "check_against_reference",
    "check_answer_letters",
    "check_choice",
    "check_dict_against_reference",
    "check_dict_values",
    "check_effective_steps",
    "check_not_delegating",
    "check_number",
    "check_predicate",
    "check_type",
    "check_values",
    "close",
    "default_device",
    "delegation_reasons",
    "describe_mismatch",
    "first_mismatch",
    "forbidden",
    "graded",
    "hide_test_source_when_autograding",
    "judging",
    "mode",
    "mro_reasons",
    "normalise_choice",
    "observe",
    "planning",
    "random_cases",
    "reference_update",
    "rng",
    "static_reasons",
    "static_reasons_from_sources",
    "torch_effective_steps",
    "trajectory",
]


# --------------------------------------------------------------------------------------
# Modes.
# --------------------------------------------------------------------------------------


class AnswerRef:
    """A student's answer by name, where the grader runs a test cell outside the sandbox.

    ``sources`` are the text of the submission's code cells: the judge parses the answer's
    definition in them for delegation (see :func:`static_reasons_from_sources`).
    """

    def __init__(self, name: str, sources: Iterable[str] = ()) -> None:
        self.name = name
        self.__name__ = name
        self.sources = list(sources)

    def __repr__(self) -> str:
        return f"AnswerRef({self.name!r})"


_STATE: dict[str, Any] = {"mode": "inline", "requests": None, "entries": None}


def mode() -> str:
    """``"inline"``, ``"plan"`` or ``"judge"``."""
    return _STATE["mode"]


@contextlib.contextmanager
def _mode(**state: Any) -> Iterator[None]:
    saved = dict(_STATE)
    _STATE.update(state)
    try:
        yield
    finally:
        _STATE.clear()
        _STATE.update(saved)


@contextlib.contextmanager
def planning() -> Iterator[list[dict[str, Any]]]:
    """Plan mode: every check called appends ``{"check", "answer", "inputs"}`` to the list
    yielded and returns None, calling nothing. Answers are :class:`AnswerRef`."""
    requests: list[dict[str, Any]] = []
    with _mode(mode="plan", requests=requests, entries=None):
        yield requests


@contextlib.contextmanager
def judging(observations: Iterable[dict[str, Any]]) -> Iterator[None]:
    """Judge mode: each check called judges the next of ``observations``, a list of
    ``{"check", "inputs", "obs"}`` or ``{"check", "inputs", "failed": message}`` in the
    order the checks are called."""
    with _mode(mode="judge", requests=None, entries=deque(observations)):
        yield


def _judged(judge: Callable[[dict[str, Any]], None], obs: Any) -> None:
    """Run a judge; anything but a GradingError means the observation was not usable."""
    if not isinstance(obs, dict):
        raise malformed("it is not a record")
    try:
        judge(obs)
    except GradingError:
        raise
    except Exception as error:
        raise GradingError(
            "the observation of this check is malformed or could not be judged "
            f"({type(error).__name__}: {str(error)[:300]})"
        ) from error


def _run(
    check: str,
    answer: Any,
    inputs: dict[str, Any],
    judge: Callable[[dict[str, Any]], None],
    *,
    name: str,
    kind: str | None = None,
) -> None:
    """One check in the current mode. Returns None: nbgrader would read a number returned
    by a test cell as a partial score."""
    current = _STATE["mode"]
    if current == "plan":
        if not isinstance(answer, AnswerRef):
            raise TypeError(
                f"in plan mode a check's answer must be a grading.AnswerRef, got "
                f"{type(answer).__name__}: the test cell must pass the student's name, not "
                "a value computed from it"
            )
        _STATE["requests"].append(
            {"check": check, "answer": answer.name, "inputs": round_trip(inputs)}
        )
        return None
    if current == "judge":
        _judge_next(check, answer, inputs, judge, name=name, kind=kind)
        return None
    if isinstance(answer, AnswerRef):
        raise TypeError(f"{answer!r} can only be checked in plan or judge mode")
    hide_test_source_when_autograding()
    obs: dict[str, Any] | None = None
    notes: list[str] = []
    try:
        with captured() as notes:
            # The same plain data the sandbox gets and returns, so that a notebook grades as
            # the batch grader grades it.
            obs = round_trip(observe.observe(check, answer, round_trip(inputs)))
            _judged(judge, obs)
    finally:
        print_notes(_judge.notes_of(obs) + notes)
    return None


def _judge_next(
    check: str,
    answer: Any,
    inputs: dict[str, Any],
    judge: Callable[[dict[str, Any]], None],
    *,
    name: str,
    kind: str | None,
) -> None:
    entries: deque = _STATE["entries"]
    if not entries:
        raise GradingError(
            f"{name}: this test did not run in the submitted notebook (no observation of "
            f"{check} was recorded for it)"
        )
    entry = entries.popleft()
    try:
        same = (
            isinstance(entry, dict)
            and entry.get("check") == check
            and canonical(entry.get("inputs")) == canonical(inputs)
        )
    except (TypeError, ValueError):
        same = False
    if not same:
        raise GradingError(
            f"{name}: this test did not run in the submitted notebook as it runs here (the "
            f"observation recorded is not of {check} on these inputs)"
        )
    if "failed" in entry:
        raise GradingError(text(entry["failed"]))
    if kind is not None and isinstance(answer, AnswerRef) and answer.sources:
        reasons = static_reasons_from_sources(answer.name, answer.sources, kind)
        if reasons:
            raise refusal(name, reasons)
    obs = entry.get("obs")
    try:
        _judged(judge, obs)
    finally:
        print_notes(_judge.notes_of(obs))


# --------------------------------------------------------------------------------------
# Assignment `adam`: one update as a function.
# --------------------------------------------------------------------------------------


def check_adam_first_steps(
    adam_update: Callable, *, device: torch.device | str | None = None, seed: int | None = None
) -> None:
    """A few updates on a 3-element float64 parameter; diagnoses the usual mistakes.

    ``seed=None`` uses the fixed probe the notebook describes; a seed draws new settings.
    """
    inputs = {"device": device_name(device), "seed": seed}
    _run(
        "adam_first_steps",
        adam_update,
        inputs,
        lambda obs: _judge.judge_adam_first_steps(obs, **inputs),
        name="adam_update",
        kind="optimizer",
    )


def _dtype_names(dtypes: Sequence[Any]) -> list[str]:
    return [DTYPE_NAMES[dtype_of(d)] for d in dtypes]


def check_adam_against_torch(
    adam_update: Callable,
    *,
    device: torch.device | str | None = None,
    seed: int = 0,
    cases: int = 3,
    steps: int = 100,
    dtypes: Sequence[torch.dtype] = (torch.float64, torch.float32),
) -> None:
    """Random shapes and hyperparameters, ``steps`` updates each, against ``torch.optim.Adam``."""
    inputs = {
        "device": device_name(device),
        "seed": seed,
        "cases": cases,
        "steps": steps,
        "dtypes": _dtype_names(dtypes),
    }
    _run(
        "adam_against_torch",
        adam_update,
        inputs,
        lambda obs: _judge.judge_adam_against_torch(obs, **inputs),
        name="adam_update",
        kind="optimizer",
    )


def check_effective_steps(
    effective_steps: Callable,
    sequences: Sequence[Sequence[float]],
    *,
    lr: float = 1e-3,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    rtol: float = 1e-6,
) -> None:
    """``effective_steps(grads, lr=, beta1=, beta2=, eps=)`` against |update| / lr of torch's Adam."""
    sequences = [[float(g) for g in grads] for grads in sequences]
    inputs = {"sequences": sequences, "lr": lr, "betas": list(betas), "eps": eps}
    _run(
        "effective_steps",
        effective_steps,
        inputs,
        lambda obs: _judge.judge_effective_steps(
            obs, sequences=sequences, lr=lr, betas=tuple(betas), eps=eps, rtol=rtol
        ),
        name="effective_steps",
        kind="optimizer",
    )


# --------------------------------------------------------------------------------------
# Assignment `adamw`: an Optimizer subclass.
# --------------------------------------------------------------------------------------


def check_adamw_constructor(AdamW: type, *, seed: int | None = None) -> None:
    """Defaults like torch's, and ``ValueError`` for hyperparameters out of range."""
    inputs = {"seed": seed}
    _run(
        "adamw_constructor",
        AdamW,
        inputs,
        lambda obs: _judge.judge_adamw_constructor(obs, **inputs),
        name="AdamW",
        kind="optimizer",
    )


def check_adamw_first_steps(AdamW: type, *, device: Any = None, seed: int | None = None) -> None:
    """A 3-element float64 parameter over a few steps, with weight decay and an lr change."""
    inputs = {"device": device_name(device), "seed": seed}
    _run(
        "adamw_first_steps",
        AdamW,
        inputs,
        lambda obs: _judge.judge_adamw_first_steps(obs, **inputs),
        name="AdamW",
        kind="optimizer",
    )


def check_adamw_against_torch(
    AdamW: type,
    *,
    device: Any = None,
    seed: int = 0,
    cases: int = 2,
    steps: int = 100,
    dtypes: Sequence[torch.dtype] = (torch.float64, torch.float32),
) -> None:
    """Random shapes, hyperparameters and parameter groups, the learning rate changed mid-run,
    some gradients ``None``: ``steps`` steps against ``torch.optim.AdamW``, after every step."""
    inputs = {
        "device": device_name(device),
        "seed": seed,
        "cases": cases,
        "steps": steps,
        "dtypes": _dtype_names(dtypes),
    }
    _run(
        "adamw_against_torch",
        AdamW,
        inputs,
        lambda obs: _judge.judge_adamw_against_torch(obs, **inputs),
        name="AdamW",
        kind="optimizer",
    )


def check_adamw_state_and_closure(AdamW: type, *, device: Any = None, seed: int = 0) -> None:
    """``step(closure)`` returns the closure's loss; ``state`` uses torch's keys and values."""
    inputs = {"device": device_name(device), "seed": seed}
    _run(
        "adamw_state_and_closure",
        AdamW,
        inputs,
        lambda obs: _judge.judge_adamw_state_and_closure(obs, **inputs),
        name="AdamW",
        kind="optimizer",
    )


# --------------------------------------------------------------------------------------
# Schedules and by-hand calculations: functions of their inputs, checked on many inputs.
# --------------------------------------------------------------------------------------


def _calls(cases: Iterable[Sequence[Any]]) -> list[list[Any]]:
    """The calls of ``cases`` (positional args, keyword args, ...) as plain data."""
    return [[list(case[0]), dict(case[1])] for case in cases]


def check_values(
    function: Callable,
    name: str,
    cases: Sequence[tuple[Sequence[Any], dict[str, Any], float, str]],
    *,
    kind: str = "course_lib",
    rtol: float = FLOAT_RTOL,
    atol: float = 0.0,
) -> None:
    """``cases``: (positional args, keyword args, expected value, hint when wrong)."""
    cases = list(cases)
    inputs = {"name": name, "kind": kind, "calls": _calls(cases)}
    _run(
        "values",
        function,
        inputs,
        lambda obs: _judge.judge_values(obs, name=name, cases=cases, rtol=rtol, atol=atol),
        name=name,
        kind=kind,
    )


def check_against_reference(
    function: Callable,
    reference: Callable,
    name: str,
    cases: Iterable[tuple[Sequence[Any], dict[str, Any]]],
    *,
    kind: str = "course_lib",
    rtol: float = FLOAT_RTOL,
    atol: float = 0.0,
    mistakes: dict[str, Callable] | None = None,
) -> None:
    """``function(*args, **kwargs)`` equals ``reference(...)`` on every case; when it does not,
    name the first of ``mistakes`` (description -> function) that gives the same value."""
    cases = list(cases)
    inputs = {"name": name, "kind": kind, "calls": _calls(cases)}
    _run(
        "against_reference",
        function,
        inputs,
        lambda obs: _judge.judge_against_reference(
            obs,
            reference=reference,
            name=name,
            cases=cases,
            rtol=rtol,
            atol=atol,
            mistakes=mistakes,
        ),
        name=name,
        kind=kind,
    )


def check_predicate(
    function: Callable,
    name: str,
    cases: Iterable[tuple[Sequence[Any], dict[str, Any]]],
    predicate: Callable[[float], Any],
    message: str,
    *,
    kind: str = "course_lib",
) -> None:
    """``predicate(function(*args, **kwargs))`` holds on every case (a property, without the
    answer): when it does not, ``"name(args) = got: message"``."""
    cases = list(cases)
    inputs = {"name": name, "kind": kind, "calls": _calls(cases)}
    _run(
        "predicate",
        function,
        inputs,
        lambda obs: _judge.judge_predicate(
            obs, name=name, cases=cases, predicate=predicate, message=message
        ),
        name=name,
        kind=kind,
    )


def check_dict_values(
    function: Callable,
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
    some keys, or none). ``cases``: (positional args, keyword args, expected, hint)."""
    cases = list(cases)
    keys = list(keys)
    inputs = {"name": name, "kind": kind, "calls": _calls(cases), "keys": keys}
    _run(
        "dict_values",
        function,
        inputs,
        lambda obs: _judge.judge_dict_values(
            obs, name=name, cases=cases, keys=keys, total=total, rtol=rtol, atol=atol
        ),
        name=name,
        kind=kind,
    )


def check_dict_against_reference(
    function: Callable,
    reference: Callable[..., dict[str, Any]],
    name: str,
    cases: Iterable[tuple[Sequence[Any], dict[str, Any]]],
    *,
    keys: Sequence[str],
    kind: str = "course_lib",
    rtol: float = FLOAT_RTOL,
    atol: float = 0.0,
    unit: str = "",
    hints: Callable[..., str] | None = None,
) -> None:
    """``function(*args, **kwargs)[key]`` equals ``reference(...)[key]`` for every key and
    case; ``hints(key, *args, **kwargs)`` says what to look at when one differs."""
    cases = list(cases)
    keys = list(keys)
    inputs = {"name": name, "kind": kind, "calls": _calls(cases), "keys": keys}
    _run(
        "dict_against_reference",
        function,
        inputs,
        lambda obs: _judge.judge_dict_against_reference(
            obs,
            reference=reference,
            name=name,
            cases=cases,
            keys=keys,
            rtol=rtol,
            atol=atol,
            unit=unit,
            hints=hints,
        ),
        name=name,
        kind=kind,
    )


# --------------------------------------------------------------------------------------
# Plain answers: a number, a type, letters.
# --------------------------------------------------------------------------------------


def check_number(
    value: Any,
    name: str,
    expected: float,
    *,
    rtol: float = FLOAT_RTOL,
    atol: float = 0.0,
    message: str | None = None,
) -> None:
    """A number equal to ``expected``. ``message``, when given, is formatted with ``name``,
    ``got`` (the answer's repr) and ``expected``."""
    expected = float(expected)
    _run(
        "number",
        value,
        {"name": name},
        lambda obs: _judge.judge_number(
            obs, name=name, expected=expected, rtol=rtol, atol=atol, message=message
        ),
        name=name,
    )


def check_type(
    value: Any,
    name: str,
    types: type | tuple[type, ...] = float,
    *,
    description: str | None = None,
) -> None:
    """``isinstance(value, types)``; the message says ``name should be <description>``."""
    types = types if isinstance(types, tuple) else (types,)
    description = description or "a " + " or a ".join(t.__name__ for t in types)
    _run(
        "type",
        value,
        {"name": name},
        lambda obs: _judge.judge_type(obs, name=name, types=types, description=description),
        name=name,
    )


def check_choice(
    answer: Any,
    name: str,
    *,
    options: str,
    count: int | None = None,
    ordered: bool = False,
    nonempty: bool = False,
) -> None:
    """The answer's format: letters from ``options``; ``count`` of them when given, at least
    one when ``nonempty``; a list or tuple when ``ordered``."""
    _run(
        "choice",
        answer,
        {"name": name},
        lambda obs: _judge.judge_choice(
            obs, name=name, options=options, count=count, ordered=ordered, nonempty=nonempty
        ),
        name=name,
    )


def normalise_choice(answer: Any) -> list[str]:
    """The answer's letters, lower-case, in the order given."""
    letters = [answer] if isinstance(answer, str) else list(answer)
    return [str(x).strip().lower() for x in letters]


def check_answer_letters(
    answer: Any, name: str, expected: Sequence[str], *, ordered: bool, explanations: dict[str, str]
) -> None:
    """Compare a choice with the key; explain each wrong or missing letter."""
    _run(
        "answer_letters",
        answer,
        {"name": name},
        lambda obs: _judge.judge_answer_letters(
            obs, name=name, expected=expected, ordered=ordered, explanations=explanations
        ),
        name=name,
    )


# --------------------------------------------------------------------------------------
# For the test cells' own draws.
# --------------------------------------------------------------------------------------


def random_cases(
    seed: int, count: int, draw: Callable[[random.Random], tuple[Sequence[Any], dict[str, Any]]]
) -> list[tuple[Sequence[Any], dict[str, Any]]]:
    """``count`` cases from ``draw(rng)``, reproducible from ``seed``."""
    r = random.Random(seed)
    return [draw(r) for _ in range(count)]


def rng(seed: int) -> random.Random:
    """A ``random.Random`` for a test cell's own draws (no import needed in the cell)."""
    return random.Random(seed)


# Importing this module is the first thing every exercise notebook does (in a locked cell,
# which nbgrader restores before grading): hidden tests that fail with a plain `assert` are
# covered too.
hide_test_source_when_autograding()

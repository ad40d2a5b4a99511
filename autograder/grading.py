"""What the exercises' test cells import: ``from autograder import grading``.

Test cells call ``grading.check_<name>(answer, ...)`` with the student's answer (a function, a
class or a value) as the first argument. The checks are declared in :mod:`autograder.checks`,
one declaration each; this module only runs them, in one of three modes:

- ``inline`` (the default: the student's notebook, plain ``nbgrader autograde``): the
  observation (:mod:`autograder.observe`) and the judgement (:mod:`autograder.checks`) both
  run in this process, the observation sent through JSON as the grader sends it, with
  warnings and stderr printed to stdout afterwards as a note (nbgrader scores a cell 0 as
  soon as it writes to stderr);
- ``plan`` (``with planning() as requests:``): a check records what to observe,
  ``{"check", "observer", "answer", "inputs"}``, and calls nothing; the answer is an
  :class:`AnswerRef`;
- ``judge`` (``with judging(entries):``): a check takes the next recorded observation,
  verifies that it is of this check and these inputs, and judges it.

This module is part of what the grading sandbox holds (with :mod:`.common`,
:mod:`.observe` and :mod:`.delegation`): it imports the declarations, and with them the
references, only when a check is called, which never happens there.
"""

from __future__ import annotations

import contextlib
import random
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

from autograder.common import (
    GradingError,
    canonical,
    captured,
    default_device,
    hide_test_source_when_autograding,
    malformed,
    print_notes,
    round_trip,
    text,
)

__all__ = [
    "AnswerRef",
    "GradingError",
    "default_device",
    "judging",
    "mode",
    "planning",
    "random_cases",
    "rng",
]


class AnswerRef:
    """A student's answer by name, where the grader runs a test cell outside the sandbox.

    ``sources`` are the text of the submission's code cells: the judge parses the answer's
    definition in them for delegation (see ``delegation.static_reasons_from_sources``).
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
    """Plan mode: every check called appends its request to the list yielded and returns
    None, calling nothing. Answers are :class:`AnswerRef`."""
    requests: list[dict[str, Any]] = []
    with _mode(mode="plan", requests=requests, entries=None):
        yield requests


@contextlib.contextmanager
def judging(entries: Iterable[dict[str, Any]]) -> Iterator[None]:
    """Judge mode: each check called judges the next of ``entries``, a list of
    ``{"check", "inputs", "obs"}`` or ``{"check", "inputs", "failed": message}`` in the
    order the checks are called."""
    with _mode(mode="judge", requests=None, entries=deque(entries)):
        yield


def _judged(judge: Callable[[Any], None], obs: Any) -> None:
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


def notes_of(obs: Any) -> list[str]:
    """The warnings and stderr output an observation recorded (for the note printed)."""
    notes = obs.get("notes") if isinstance(obs, dict) else None
    if not isinstance(notes, list):
        return []
    return [text(x, 300) for x in notes[:5] if isinstance(x, str)]


def run_check(
    check: str,
    observer: str,
    answer: Any,
    inputs: dict[str, Any],
    judge: Callable[[Any], None],
    *,
    name: str,
    kind: str | None,
) -> None:
    """One check in the current mode (called by the declarations). Returns None: nbgrader
    would read a number returned by a test cell as a partial score."""
    current = _STATE["mode"]
    if current == "plan":
        if not isinstance(answer, AnswerRef):
            raise TypeError(
                f"in plan mode a check's answer must be a grading.AnswerRef, got "
                f"{type(answer).__name__}: the test cell must pass the student's name, not "
                "a value computed from it"
            )
        _STATE["requests"].append(
            {
                "check": check,
                "observer": observer,
                "answer": answer.name,
                "inputs": round_trip(inputs),
            }
        )
        return None
    if current == "judge":
        _judge_next(check, answer, inputs, judge, name=name, kind=kind)
        return None
    if isinstance(answer, AnswerRef):
        raise TypeError(f"{answer!r} can only be checked in plan or judge mode")
    from autograder import observe

    hide_test_source_when_autograding()
    obs: Any = None
    notes: list[str] = []
    try:
        with captured() as notes:
            # The same plain data the sandbox gets and returns, so that a notebook grades as
            # the batch grader grades it.
            obs = round_trip(observe.observe(observer, answer, round_trip(inputs)))
            _judged(judge, obs)
    finally:
        print_notes(notes_of(obs) + notes)
    return None


def _judge_next(
    check: str,
    answer: Any,
    inputs: dict[str, Any],
    judge: Callable[[Any], None],
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
        from autograder.delegation import refusal, static_reasons_from_sources

        reasons = static_reasons_from_sources(answer.name, answer.sources, kind)
        if reasons:
            raise refusal(name, reasons)
    obs = entry.get("obs")
    try:
        _judged(judge, obs)
    finally:
        print_notes(notes_of(obs))


def random_cases(
    seed: int, count: int, draw: Callable[[random.Random], tuple[Sequence[Any], dict[str, Any]]]
) -> list[tuple[Sequence[Any], dict[str, Any]]]:
    """``count`` cases from ``draw(rng)``, reproducible from ``seed``."""
    r = random.Random(seed)
    return [draw(r) for _ in range(count)]


def rng(seed: int) -> random.Random:
    """A ``random.Random`` for a test cell's own draws (no import needed in the cell)."""
    return random.Random(seed)


def __getattr__(name: str) -> Any:
    """``check_<name>`` and the references hidden tests use, from :mod:`autograder.checks`
    (imported on first use: never in the sandbox, which does not hold it)."""
    from autograder import checks

    if name in checks.API:
        return checks.API[name]
    raise AttributeError(f"module 'autograder.grading' has no attribute {name!r}")


# Importing this module is the first thing every exercise notebook does (in a locked cell,
# which nbgrader restores before grading): hidden tests that fail with a plain `assert` are
# covered too.
hide_test_source_when_autograding()

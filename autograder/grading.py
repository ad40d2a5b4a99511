"""What the exercises' test cells import: ``from autograder import grading``.

Test cells call ``grading.check_<name>(answer, ...)`` (declared in :mod:`autograder.checks`)
in one of three modes (``autograder/README.md``): ``inline`` (the default: observe and judge
here, the observation sent through JSON as the sandbox sends it), ``plan`` (``with
planning() as requests:``: record the requests, call nothing; answers are
:class:`AnswerRef`) and ``judge`` (``with judging(entries):``: judge the recorded
observations, verified to be of this check and these inputs). The sandbox holds this module
but never calls a check, so it never imports the references.
"""

from __future__ import annotations

import contextlib
import random
from collections import deque
from collections.abc import Callable, Iterable, Iterator
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

__all__ = ["AnswerRef", "GradingError", "default_device", "judging", "mode", "planning", "rng"]


class AnswerRef:
    """A student's answer by name, where the grader runs a test cell outside the sandbox;
    ``sources``, the submission's code cells, are parsed for delegation."""

    def __init__(self, name: str, sources: Iterable[str] = ()) -> None:
        self.name = self.__name__ = name
        self.sources = list(sources)

    def __repr__(self) -> str:
        return f"AnswerRef({self.name!r})"


_STATE: dict[str, Any] = {"mode": "inline", "requests": None, "entries": None}


def mode() -> str:
    return _STATE["mode"]


@contextlib.contextmanager
def _mode(**state: Any) -> Iterator[None]:
    saved = dict(_STATE)
    _STATE.update(state)
    try:
        yield
    finally:
        _STATE.update(saved)


@contextlib.contextmanager
def planning() -> Iterator[list[dict[str, Any]]]:
    requests: list[dict[str, Any]] = []
    with _mode(mode="plan", requests=requests, entries=None):
        yield requests


@contextlib.contextmanager
def judging(entries: Iterable[dict[str, Any]]) -> Iterator[None]:
    """``entries``: ``{"check", "inputs", "obs"}`` or ``{"check", "inputs", "failed"}``, in
    the order the checks are called."""
    with _mode(mode="judge", requests=None, entries=deque(entries)):
        yield


def _judged(judge: Callable[[Any], None], obs: Any) -> None:
    """Run a judge; anything but a GradingError means the observation was not usable."""
    try:
        if not isinstance(obs, dict):
            raise malformed("it is not a record")
        judge(obs)
    except GradingError:
        raise
    except Exception as error:
        raise GradingError(
            "the observation of this check is malformed or could not be judged "
            f"({type(error).__name__}: {str(error)[:300]})"
        ) from error


def _notes(obs: Any) -> list[str]:
    """The warnings and stderr output an observation recorded."""
    notes = obs.get("notes") if isinstance(obs, dict) else None
    return (
        [text(x, 300) for x in notes[:5] if isinstance(x, str)] if isinstance(notes, list) else []
    )


def run_check(
    check: str,
    protocol: str,
    answer: Any,
    inputs: dict[str, Any],
    judge: Callable[[Any], None],
    *,
    name: str,
    kind: str | None,
) -> None:
    """One check in the current mode. Returns None: nbgrader would read a number returned by
    a test cell as a partial score."""
    if _STATE["mode"] == "plan":
        if not isinstance(answer, AnswerRef):
            raise TypeError(
                f"in plan mode a check's answer must be a grading.AnswerRef, got "
                f"{type(answer).__name__}: the test cell must pass the student's name, not "
                "a value computed from it"
            )
        request = {"check": check, "protocol": protocol, "answer": answer.name}
        _STATE["requests"].append({**request, "inputs": round_trip(inputs)})
    elif _STATE["mode"] == "judge":
        entry = _STATE["entries"].popleft() if _STATE["entries"] else None
        if entry is None:
            raise GradingError(
                f"{name}: this test did not run in the submitted notebook (no observation of "
                f"{check} was recorded for it)"
            )
        try:
            same = entry["check"] == check and canonical(entry["inputs"]) == canonical(inputs)
        except (TypeError, ValueError, KeyError):
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
        try:
            _judged(judge, entry.get("obs"))
        finally:
            print_notes(_notes(entry.get("obs")))
    elif isinstance(answer, AnswerRef):
        raise TypeError(f"{answer!r} can only be checked in plan or judge mode")
    else:
        from autograder import observe

        hide_test_source_when_autograding()
        obs, notes = None, []
        try:
            with captured() as notes:
                obs = round_trip(observe.observe(protocol, answer, round_trip(inputs)))
                _judged(judge, obs)
        finally:
            print_notes(_notes(obs) + notes)


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

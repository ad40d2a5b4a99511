"""What the exercises' test cells import: ``from autograder import grading``.

Test cells call ``grading.check_<name>(answer, ...)`` (declared in :mod:`autograder.checks`)
in one of three modes (``autograder/README.md``): ``inline`` (the default), :func:`planning`
and :func:`judging`. The sandbox holds this module but never calls a check, so it never
imports the references.
"""

from __future__ import annotations

import contextlib
import os
import random
import textwrap
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from autograder.common import (
    GradingError,
    canonical,
    captured,
    default_device,
    malformed,
    round_trip,
    text,
)
from autograder.delegation import refusal, static_reasons_from_sources
from autograder.observe import observe

__all__ = ["AnswerRef", "GradingError", "default_device", "judging", "mode", "planning", "rng"]


class AnswerRef:
    """A student's answer by name, where the grader runs a test cell outside the sandbox;
    ``sources``, the submission's code cells, are parsed for delegation."""

    def __init__(self, name: str, sources: Iterable[str] = ()) -> None:
        self.name = self.__name__ = name
        self.sources = list(sources)

    def __repr__(self) -> str:
        return f"AnswerRef({self.name!r})"


_STATE: dict[str, Any] = {"mode": "inline", "queue": None}  # plan: requests; judge: entries


def mode() -> str:
    return _STATE["mode"]


@contextlib.contextmanager
def _mode(mode: str, queue: Any) -> Iterator[Any]:
    saved = dict(_STATE)
    _STATE.update(mode=mode, queue=queue)
    try:
        yield queue
    finally:
        _STATE.update(saved)


def planning() -> contextlib.AbstractContextManager[list[dict[str, Any]]]:
    """``with planning() as requests:`` each check records its request there and calls
    nothing; answers are :class:`AnswerRef`."""
    return _mode("plan", [])


def judging(entries: Iterable[dict[str, Any]]) -> contextlib.AbstractContextManager[Any]:
    """Each check judges the next of ``entries`` (``{"check", "inputs", "obs"}`` or
    ``{"check", "inputs", "failed"}``), verified to be of this check and these inputs."""
    return _mode("judge", deque(entries))


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


def _print_notes(obs: Any, notes: list[str]) -> None:
    """Print the warnings and stderr output the observation recorded, and ``notes``."""
    recorded = obs.get("notes") if isinstance(obs, dict) else None
    if isinstance(recorded, list):
        notes = [text(x, 300) for x in recorded[:5] if isinstance(x, str)] + notes
    if unique := list(dict.fromkeys(notes)):
        count = len(unique)
        print(f"Note: {count} warning(s) or stderr message(s) were captured; they cost no points:")
        for note in unique[:5]:
            print("  " + textwrap.shorten(note, 300))


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
        _STATE["queue"].append({**request, "inputs": round_trip(inputs)})
    elif _STATE["mode"] == "judge":
        entry = _STATE["queue"].popleft() if _STATE["queue"] else None
        if entry is None:
            raise GradingError(
                f"{name}: this test did not run in the submitted notebook (no observation of "
                f"{check} was recorded for it)"
            )
        # The harness wrote the entry's check and inputs from the plan: plain data.
        if entry.get("check") != check or canonical(entry.get("inputs")) != canonical(inputs):
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
        try:
            _judged(judge, entry.get("obs"))
        finally:
            _print_notes(entry.get("obs"), [])
    elif isinstance(answer, AnswerRef):
        raise TypeError(f"{answer!r} can only be checked in plan or judge mode")
    else:  # observe and judge here, the observation sent through JSON as the sandbox sends it
        hide_test_source_when_autograding()
        obs, notes = None, []
        try:
            with captured() as notes:
                obs = round_trip(observe(protocol, answer, round_trip(inputs)))
                _judged(judge, obs)
        finally:
            _print_notes(obs, notes)


def hide_test_source_when_autograding() -> None:
    """While nbgrader autogrades (``NBGRADER_EXECUTION=autograde``), reduce tracebacks to the
    exception and its message: IPython would quote the failing lines, which in a test cell
    are the hidden tests, and the feedback shows the outputs."""
    if os.environ.get("NBGRADER_EXECUTION") != "autograde":
        return
    from IPython import get_ipython  # nbgrader runs the notebook in IPython

    traceback = getattr(get_ipython(), "InteractiveTB", None)
    if traceback is not None and traceback.mode != "Minimal":
        traceback.set_mode(mode="Minimal")


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

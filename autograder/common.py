"""What both halves of a check share: errors, tolerances, plain data, captured warnings.

It runs in the student's sandboxed process as well as in the grader: standard library and
torch only.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import sys
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

# Allowed elementwise error against torch: |got - expected| <= RTOL * max(|expected|, 1).
# float64 leaves room only for a different order of the same operations (measured: below
# 1e-13 after 100 steps); float32 for its rounding over 100+ steps on CPU or CUDA (measured:
# below 1e-6). A real mistake (bias correction, decay, eps placement) moves results by 1e-4
# or more on the inputs the checks use.
RTOL: dict[torch.dtype, float] = {torch.float64: 1e-9, torch.float32: 2e-5}
DTYPE_NAMES = {torch.float64: "float64", torch.float32: "float32"}
# Plain Python float arithmetic (schedules, memory, scaling rules): relative tolerance.
FLOAT_RTOL = 1e-9
# Bounds on what an observation carries (it is untrusted data).
MAX_TEXT = 2000  # characters of one repr or message
MAX_ITEMS = 100  # elements of a recorded collection (keys, letters, notes)


class GradingError(AssertionError):
    """A check failed; the message says what to fix."""


def default_device() -> torch.device:
    """CUDA when available, else the CPU; ``COURSE_DEVICE=cpu`` forces the CPU (the batch
    grader sets it: its sandbox has no GPU)."""
    if os.environ.get("COURSE_DEVICE", "").strip().lower() == "cpu":
        return torch.device("cpu")
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def device_name(device: Any) -> str:
    return str(torch.device(device) if device is not None else default_device())


@contextlib.contextmanager
def captured() -> Iterator[list[str]]:
    """Record warnings and capture stderr (sys.stderr and fd 2) as notes: nbgrader scores a
    cell 0 as soon as it writes to stderr."""
    notes: list[str] = []
    buffer = io.StringIO()
    with contextlib.suppress(AttributeError, ValueError, OSError):
        sys.stderr.flush()
    try:
        tmp = tempfile.TemporaryFile(mode="w+b")
        saved_fd = os.dup(2)
        os.dup2(tmp.fileno(), 2)
    except OSError:  # no fd 2 (some embedded interpreters), or no room: Python-level only
        tmp = saved_fd = None
    try:
        with warnings.catch_warnings(record=True) as records, contextlib.redirect_stderr(buffer):
            warnings.simplefilter("always")
            try:
                yield notes
            finally:
                for r in records:
                    where = f"{Path(r.filename).name}:{r.lineno}"
                    notes.append(f"{r.category.__name__}: {r.message} ({where})")
    finally:
        if saved_fd is not None:
            os.dup2(saved_fd, 2)
            os.close(saved_fd)
        text = buffer.getvalue()
        if tmp is not None:
            tmp.seek(0)
            text += tmp.read(1 << 20).decode(errors="replace")
            tmp.close()
        if text.strip():
            notes.append("stderr: " + text.strip())


def plain(value: Any) -> Any:
    """``value`` as JSON data (tuples become lists, dtypes and devices their names); a
    ``TypeError`` for anything else: a check's inputs are plain."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return [plain(x) for x in value]
    if isinstance(value, dict) and all(isinstance(k, str) for k in value):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (torch.dtype, torch.device)):
        return str(value).removeprefix("torch.")
    raise TypeError(f"a check's inputs must be plain data, got {type(value).__name__}: {value!r}")


def round_trip(value: Any) -> Any:
    """``value`` after JSON encoding and decoding (NaN and infinities kept)."""
    return json.loads(json.dumps(plain(value)))


def canonical(value: Any) -> str:
    return json.dumps(plain(value), sort_keys=True)


def shorten(value: Any, limit: int = MAX_TEXT // 2, how: Any = repr) -> str:
    """``repr(value)`` (or ``how(value)``) cut to ``limit`` characters; never raises."""
    try:
        text = how(value)
        if not isinstance(text, str):
            raise TypeError
    except Exception:  # a student's __repr__ may raise, or return something else
        text = f"<{type(value).__name__} whose {how.__name__} failed>"
    return text if len(text) <= limit else text[:limit] + "..."


def describe_exception(error: BaseException) -> str:
    return f"{type(error).__name__}: {shorten(error, how=str)}"


def malformed(detail: str) -> GradingError:
    return GradingError(
        f"the observation of this check is malformed ({detail}): the test did not run as "
        "the grader runs it"
    )


def text(value: Any, limit: int = MAX_TEXT) -> str:
    """A string from an observation, checked and cut to ``limit`` characters."""
    if not isinstance(value, str):
        raise malformed("a text field is not a string")
    return value if len(value) <= limit else value[:limit] + "..."

"""What both halves of a check share: errors, tolerances, plain data, captured warnings.

This module runs in the student's sandboxed process (with :mod:`.observe` and
:mod:`.delegation`) as well as in the grader: it imports only the standard library and torch.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import math
import operator
import os
import struct
import sys
import tempfile
import textwrap
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

# Allowed elementwise error against torch: |got - expected| <= RTOL * max(|expected|, 1).
# float64 leaves room only for a different order of the same operations (measured: below
# 1e-13 after 100 steps); float32 for its rounding over 100+ steps on CPU or CUDA (measured:
# below 1e-6). A real mistake (bias correction, decay, eps placement) moves results by 1e-4
# or more on the inputs the checks use.
RTOL: dict[torch.dtype, float] = {torch.float64: 1e-9, torch.float32: 2e-5}
DTYPE_NAMES = {torch.float64: "float64", torch.float32: "float32"}
DTYPES_BY_NAME = {name: dtype for dtype, name in DTYPE_NAMES.items()}

# Plain Python float arithmetic (schedules, memory, scaling rules): relative tolerance.
FLOAT_RTOL = 1e-9

# Bounds on what an observation may carry (it is untrusted data).
MAX_TEXT = 2000  # characters of one repr or message
MAX_ITEMS = 100  # elements of a recorded collection (keys, letters, notes)
MAX_ELEMENTS = 1 << 20  # elements of one encoded tensor


class GradingError(AssertionError):
    """A check failed; the message says what to fix."""


def default_device() -> torch.device:
    """CUDA when available, else the CPU: the exercises run on either.

    ``COURSE_DEVICE=cpu`` forces the CPU (the batch grader sets it: its sandbox has no GPU).
    """
    if os.environ.get("COURSE_DEVICE", "").strip().lower() == "cpu":
        return torch.device("cpu")
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def device_name(device: Any) -> str:
    """The device a check runs on, as plain text: ``device`` or :func:`default_device`."""
    return str(torch.device(device) if device is not None else default_device())


# --------------------------------------------------------------------------------------
# Warnings and stderr: recorded, never printed to stderr while a check runs.
# --------------------------------------------------------------------------------------


@contextlib.contextmanager
def captured() -> Iterator[list[str]]:
    """Record warnings and capture stderr (sys.stderr and fd 2); yield a list of notes."""
    notes: list[str] = []
    buffer = io.StringIO()
    saved_fd = None
    tmp = None
    try:
        sys.stderr.flush()
    except (AttributeError, ValueError, OSError):
        pass
    try:
        tmp = tempfile.TemporaryFile(mode="w+b")
        saved_fd = os.dup(2)
        os.dup2(tmp.fileno(), 2)
    except OSError:  # no fd 2 (some embedded interpreters): Python-level capture only
        saved_fd = None
    try:
        with warnings.catch_warnings(record=True) as records, contextlib.redirect_stderr(buffer):
            warnings.simplefilter("always")
            try:
                yield notes
            finally:
                for record in records:
                    notes.append(
                        f"{record.category.__name__}: {record.message} "
                        f"({Path(record.filename).name}:{record.lineno})"
                    )
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


def print_notes(notes: list[str]) -> None:
    unique = list(dict.fromkeys(notes))
    if unique:
        print(
            f"Note: {len(unique)} warning(s) or stderr message(s) were captured; they cost no points:"
        )
        for note in unique[:5]:
            print("  " + textwrap.shorten(note, 300))


def hide_test_source_when_autograding() -> None:
    """While nbgrader autogrades, show a failing cell's error without its source lines.

    IPython's tracebacks quote the lines around the failure, and the feedback students get
    shows the outputs: in a test cell those lines are the hidden tests. nbgrader sets
    ``NBGRADER_EXECUTION=autograde`` while it executes a submission; then the traceback is
    reduced to the exception and its message, which say what is wrong.
    """
    if os.environ.get("NBGRADER_EXECUTION") != "autograde":
        return
    try:
        from IPython import get_ipython
    except ImportError:
        return
    shell = get_ipython()
    if shell is not None and getattr(shell, "InteractiveTB", None) is not None:
        if shell.InteractiveTB.mode != "Minimal":
            shell.InteractiveTB.set_mode(mode="Minimal")


# --------------------------------------------------------------------------------------
# Plain data: what crosses from the sandbox to the grader.
# --------------------------------------------------------------------------------------


def plain(value: Any) -> Any:
    """``value`` as JSON data: tuples become lists, dtypes and devices their names.

    Raises ``TypeError`` for anything else (a function, a tensor): a check's inputs are plain.
    """
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return [plain(x) for x in value]
    if isinstance(value, dict):
        if not all(isinstance(k, str) for k in value):
            raise TypeError(f"a check's inputs need string keys, got {list(value)!r}")
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, torch.dtype):
        return str(value).removeprefix("torch.")
    if isinstance(value, torch.device):
        return str(value)
    raise TypeError(f"a check's inputs must be plain data, got {type(value).__name__}: {value!r}")


def round_trip(value: Any) -> Any:
    """``value`` after JSON encoding and decoding (NaN and infinities kept)."""
    return json.loads(json.dumps(plain(value)))


def canonical(value: Any) -> str:
    """A JSON text that is equal for equal plain data (keys sorted)."""
    return json.dumps(plain(value), sort_keys=True)


def short_repr(value: Any, limit: int = MAX_TEXT // 2) -> str:
    """``repr(value)``, cut to ``limit`` characters; never raises."""
    try:
        text = repr(value)
    except Exception as error:  # a student's __repr__ may raise
        text = f"<{type(value).__name__} whose repr raised {type(error).__name__}>"
    if not isinstance(text, str):
        text = f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[:limit] + "..."


def short_str(value: Any, limit: int = MAX_TEXT // 2) -> str:
    """``str(value)``, cut to ``limit`` characters; never raises."""
    try:
        text = str(value)
    except Exception as error:
        text = f"<{type(value).__name__} whose str raised {type(error).__name__}>"
    if not isinstance(text, str):
        text = f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[:limit] + "..."


def describe_exception(error: BaseException) -> str:
    """``"ValueError: message"``, as a check's message quotes an exception."""
    return f"{type(error).__name__}: {short_str(error)}"


_STRUCT_CODES = {"float64": "d", "float32": "f"}


def encode_tensor(tensor: Tensor) -> dict[str, Any]:
    """A float64 or float32 tensor as plain data, exactly: dtype, shape, little-endian bytes."""
    name = DTYPE_NAMES.get(tensor.dtype)
    if name is None:
        raise TypeError(f"only float64 and float32 tensors are encoded, got {tensor.dtype}")
    values = tensor.detach().to("cpu").reshape(-1).tolist()
    data = struct.pack(f"<{len(values)}{_STRUCT_CODES[name]}", *values)
    return {
        "dtype": name,
        "shape": list(tensor.shape),
        "data": base64.b64encode(data).decode("ascii"),
    }


def decode_tensor(
    value: Any, what: str, *, shape: tuple[int, ...] | None = None, dtype: torch.dtype | None = None
) -> Tensor:
    """The CPU tensor :func:`encode_tensor` encoded; :class:`GradingError` when malformed or
    when it is not of the ``shape`` and ``dtype`` expected."""
    if not isinstance(value, dict) or set(value) != {"dtype", "shape", "data"}:
        raise malformed(f"{what} is not an encoded tensor")
    name, dims, data = value["dtype"], value["shape"], value["data"]
    if name not in _STRUCT_CODES:
        raise malformed(f"{what} has an unknown dtype")
    if (
        not isinstance(dims, list)
        or len(dims) > 8
        or not all(isinstance(d, int) and not isinstance(d, bool) and 0 <= d for d in dims)
    ):
        raise malformed(f"{what} has an invalid shape")
    numel = math.prod(dims)
    if numel > MAX_ELEMENTS or not isinstance(data, str):
        raise malformed(f"{what} is too large or has no data")
    if shape is not None and tuple(dims) != tuple(shape):
        raise malformed(f"{what} has shape {tuple(dims)} where {tuple(shape)} was recorded")
    if dtype is not None and DTYPES_BY_NAME[name] != dtype:
        raise malformed(f"{what} has dtype {name} where {DTYPE_NAMES.get(dtype)} was recorded")
    try:
        raw = base64.b64decode(data.encode("ascii"), validate=True)
    except (ValueError, UnicodeEncodeError) as error:
        raise malformed(f"{what} has data that is not base64") from error
    code = _STRUCT_CODES[name]
    if len(raw) != numel * struct.calcsize(code):
        raise malformed(f"{what} has {len(raw)} bytes of data for {numel} elements")
    values = struct.unpack(f"<{numel}{code}", raw)
    return torch.tensor(values, dtype=DTYPES_BY_NAME[name]).reshape(dims)


def describe_value(value: Any) -> dict[str, Any]:
    """Type, and for a tensor shape, dtype and device: what a result's checks look at."""
    if isinstance(value, Tensor):
        return {
            "is_tensor": True,
            "type": type(value).__name__,
            "shape": list(value.shape),
            "dtype": str(value.dtype),
            "device": str(value.device),
        }
    return {"is_tensor": False, "type": type(value).__name__}


def describe_number(value: Any) -> dict[str, Any]:
    """What :func:`number_from` needs to accept ``value`` as one number or say why not. An
    integer (a Python, NumPy or 0-d tensor integer) is kept as an ``int``: JSON carries it
    exactly, and byte counts, block counts and step numbers are judged exactly."""
    try:
        if isinstance(value, Tensor):
            if value.numel() != 1:
                return {"kind": "tensor", "shape": list(value.shape)}
            value = value.item()
        text = short_repr(value)
        if isinstance(value, bool) or (
            not isinstance(value, (int, float)) and not hasattr(value, "__float__")
        ):
            return {"kind": "not_number", "type": type(value).__name__, "repr": text}
        try:
            number = float(value)
        except Exception:
            return {"kind": "bad_number", "repr": text}
        if not isinstance(number, float):
            return {"kind": "bad_number", "repr": text}
        with contextlib.suppress(Exception):  # not an integer, or a misbehaving one
            integer = int(operator.index(value))
            if float(integer) == number:  # the same number, of a bounded size
                return {"kind": "number", "value": integer, "repr": text}
        return {"kind": "number", "value": number, "repr": text}
    except Exception as error:  # a student's object that misbehaves when looked at
        return {"kind": "bad_number", "repr": f"<{describe_exception(error)}>"}


# --------------------------------------------------------------------------------------
# Small helpers that both halves use.
# --------------------------------------------------------------------------------------


def malformed(detail: str) -> GradingError:
    """The error for an observation that is not what the check records."""
    return GradingError(
        f"the observation of this check is malformed ({detail}): the test did not run as "
        "the grader runs it"
    )


def close(got: float, expected: float, rtol: float = FLOAT_RTOL, atol: float = 0.0) -> bool:
    """``|got - expected| <= max(rtol * |expected|, atol)``; NaN is never close."""
    return math.isfinite(got) and abs(got - expected) <= max(rtol * abs(expected), atol)


def number_from(desc: Any, what: str) -> float:
    """The float :func:`describe_number` recorded, or the error :func:`as_float` raises."""
    if not isinstance(desc, dict):
        raise malformed(f"{what} is not a recorded number")
    kind = desc.get("kind")
    if kind == "tensor":
        shape = desc.get("shape")
        if not isinstance(shape, list) or len(shape) > 8:
            raise malformed(f"{what} has an invalid shape")
        raise GradingError(
            f"{what} should be one number, got a tensor of shape {tuple(shape)}"[:MAX_TEXT]
        )
    if kind == "not_number":
        raise GradingError(
            f"{what} should be a number, got {text(desc.get('type'))}: {text(desc.get('repr'))}"
        )
    if kind == "bad_number":
        raise GradingError(f"{what} should be a number, got {text(desc.get('repr'))}")
    if kind == "number":
        return recorded_float(desc.get("value"), what)
    raise malformed(f"{what} is not a recorded number")


def recorded_float(value: Any, what: str) -> float:
    """A number from an observation (untrusted): a float, or a malformed-observation error."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise malformed(f"{what} is not a number")
    try:
        return float(value)
    except OverflowError as error:
        raise malformed(f"{what} is out of range") from error


def text(value: Any, limit: int = MAX_TEXT) -> str:
    """A string from an observation, checked and cut to ``limit`` characters."""
    if not isinstance(value, str):
        raise malformed("a text field is not a string")
    return value if len(value) <= limit else value[:limit] + "..."

"""The checks behind the exercises' test cells: precise messages, no lost points to warnings.

The notebooks in ``exercises/`` call these functions in their test cells; so do the hidden
tests that nbgrader restores when it grades. Every check

- runs the student's code with warnings *recorded* and stderr captured (Python's and the
  process's file descriptor 2), because nbgrader scores a test cell 0 as soon as it writes
  to stderr; what was captured is printed to stdout afterwards, as a note that costs nothing;
- fails with :class:`GradingError`, an ``AssertionError`` whose message says which step,
  which parameter and which element went wrong, expected against got, the tolerance, and,
  when the result matches a known mistake, what that mistake is;
- refuses a solution that delegates to the reference (``torch.optim.Adam``/``AdamW``, their
  functional and fused kernels, ``course_lib``): see :func:`delegation_reasons`.

Nothing here contains an answer to an exercise that is not public anyway: the Adam
references are ``torch.optim`` itself. The schedules' and the checkpoint calculations'
references live in the hidden tests of ``solutions/``.
"""

from __future__ import annotations

import ast
import contextlib
import functools
import inspect
import io
import math
import os
import random
import sys
import tempfile
import textwrap
import threading
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
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

# Plain Python float arithmetic (schedules, memory, scaling rules): relative tolerance.
FLOAT_RTOL = 1e-9


class GradingError(AssertionError):
    """A check failed; the message says what to fix."""


def default_device() -> torch.device:
    """CUDA when available, else the CPU: the exercises run on either."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


# --------------------------------------------------------------------------------------
# Warnings and stderr: recorded, never printed to stderr while a check runs.
# --------------------------------------------------------------------------------------


@contextlib.contextmanager
def _captured() -> Iterator[list[str]]:
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
            text += tmp.read().decode(errors="replace")
            tmp.close()
        if text.strip():
            notes.append("stderr: " + text.strip())


def _print_notes(notes: list[str]) -> None:
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


def graded(check: Callable[..., None]) -> Callable[..., None]:
    """Run a check with warnings and stderr captured; print them to stdout afterwards."""

    @functools.wraps(check)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        hide_test_source_when_autograding()
        notes: list[str] = []
        try:
            with _captured() as notes:
                check(*args, **kwargs)
        finally:
            _print_notes(notes)
        # Returns None on purpose: a number returned here would be read by nbgrader as a
        # partial score.

    return wrapper


# --------------------------------------------------------------------------------------
# Delegation: the answer must not hand its work to the reference.
# --------------------------------------------------------------------------------------


def _module_file(name: str) -> str | None:
    module = sys.modules.get(name)
    if module is None:
        try:
            module = __import__(name, fromlist=["_"])
        except Exception:
            return None
    path = getattr(module, "__file__", None)
    return str(Path(path).resolve()) if path else None


def _package_dir(name: str) -> str | None:
    import importlib.util

    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return str(Path(next(iter(spec.submodule_search_locations))).resolve())


@dataclass(frozen=True)
class Forbidden:
    """What an answer must not run: source files, package folders, kernel names, identifiers."""

    files: frozenset[str] = frozenset()
    folders: frozenset[str] = frozenset()
    allowed_files: frozenset[str] = frozenset()
    kernel_fragments: tuple[str, ...] = ()
    identifiers: frozenset[str] = frozenset()  # attribute or string names in the source
    modules: tuple[str, ...] = ()  # import prefixes


_THIS_FILE = str(Path(__file__).resolve())
_COURSE_LIB = str(Path(__file__).resolve().parent)


def _forbidden_optimizers() -> Forbidden:
    files = {
        _module_file(name)
        for name in ("torch.optim.adam", "torch.optim.adamw", "torch.optim._functional")
    }
    return Forbidden(
        files=frozenset(f for f in files if f),
        folders=frozenset({_COURSE_LIB}),
        allowed_files=frozenset({_THIS_FILE}),
        kernel_fragments=("fused_adam",),
        identifiers=frozenset(
            {
                "Adam",
                "AdamW",
                "adam",
                "adamw",
                "_functional",
                "_single_tensor_adam",
                "_multi_tensor_adam",
                "_fused_adam",
                "_fused_adam_",
                "_fused_adamw_",
                "adam_step",
                "adam_multi_tensor",
                "course_lib",
            }
        ),
        modules=("course_lib", "torch.optim.adam", "torch.optim.adamw", "torch.optim._functional"),
    )


def _forbidden_schedules() -> Forbidden:
    files = {_module_file("torch.optim.lr_scheduler")}
    transformers_dir = _package_dir("transformers")
    if transformers_dir:
        files.add(str(Path(transformers_dir) / "optimization.py"))
    return Forbidden(
        files=frozenset(f for f in files if f),
        folders=frozenset({_COURSE_LIB}),
        allowed_files=frozenset({_THIS_FILE}),
        identifiers=frozenset({"course_lib", "lr_scheduler", "schedules", "optimization"}),
        modules=("course_lib", "torch.optim.lr_scheduler", "transformers"),
    )


def _forbidden_course_lib() -> Forbidden:
    return Forbidden(
        folders=frozenset({_COURSE_LIB}),
        allowed_files=frozenset({_THIS_FILE}),
        identifiers=frozenset({"course_lib"}),
        modules=("course_lib",),
    )


FORBIDDEN_KINDS: dict[str, Callable[[], Forbidden]] = {
    "optimizer": _forbidden_optimizers,
    "schedule": _forbidden_schedules,
    "course_lib": _forbidden_course_lib,
}


def forbidden(kind: str) -> Forbidden:
    """The delegation rules of one kind of exercise: ``optimizer``, ``schedule``, ``course_lib``."""
    if kind not in FORBIDDEN_KINDS:
        raise ValueError(f"Unknown kind {kind!r}: expected one of {', '.join(FORBIDDEN_KINDS)}")
    if kind not in _RULES:
        _RULES[kind] = FORBIDDEN_KINDS[kind]()
    return _RULES[kind]


_RULES: dict[str, Forbidden] = {}


def _is_forbidden_file(path: str, rules: Forbidden) -> bool:
    # Called for every Python call while an answer runs: cache by (rules, file name).
    key = (id(rules), path)
    cached = _FILE_VERDICTS.get(key)
    if cached is None:
        cached = _FILE_VERDICTS[key] = _judge_file(path, rules)
    return cached


_FILE_VERDICTS: dict[tuple[int, str], bool] = {}


def _judge_file(path: str, rules: Forbidden) -> bool:
    if not path or path.startswith("<"):
        return False
    try:
        path = str(Path(path).resolve())
    except OSError:
        return False
    if path in rules.allowed_files:
        return False
    if path in rules.files:
        return True
    return any(path.startswith(folder + os.sep) for folder in rules.folders)


class _Watch:
    """A profiler hook that records every call into forbidden code while the answer runs.

    Python functions are recognised by the file their code object comes from, so an alias
    (``from torch.optim.adam import _single_tensor_adam as f``) is caught as surely as the
    module attribute. Builtins (``torch._fused_adamw_``) and ``torch.ops`` overloads are
    recognised by name.
    """

    def __init__(self, rules: Forbidden) -> None:
        self.rules = rules
        self.hits: list[str] = []
        self._previous: Any = None
        self._previous_threading: Any = None
        self._bound_hook = self._hook  # one bound method, so that `is` recognises it

    def _hook(self, frame: Any, event: str, arg: Any) -> None:
        if self.hits and len(self.hits) > 20:
            return
        if event == "call":
            code = frame.f_code
            if _is_forbidden_file(code.co_filename, self.rules):
                self.hits.append(f"{_short_path(code.co_filename)}:{code.co_name}")
            elif self.rules.kernel_fragments and code.co_name == "__call__":
                owner = frame.f_locals.get("self")
                if type(owner).__module__ == "torch._ops":
                    name = str(owner)
                    if any(f in name for f in self.rules.kernel_fragments):
                        self.hits.append(f"torch.ops {name}")
        elif event == "c_call" and self.rules.kernel_fragments:
            name = getattr(arg, "__name__", "") or ""
            if any(f in name for f in self.rules.kernel_fragments):
                self.hits.append(f"torch.{name}")

    def __enter__(self) -> _Watch:
        self._previous = sys.getprofile()
        self._previous_threading = threading.getprofile()
        sys.setprofile(self._bound_hook)
        threading.setprofile(self._bound_hook)
        return self

    def __exit__(self, *exc: object) -> None:
        if sys.getprofile() is not self._bound_hook:
            self.hits.append("sys.setprofile (the answer replaced the grader's profiler)")
        try:
            sys.setprofile(self._previous)
        except TypeError:  # a C-level profiler (cProfile) cannot be handed back from Python
            sys.setprofile(None)
        threading.setprofile(self._previous_threading)


def _short_path(path: str) -> str:
    parts = Path(path).parts
    for anchor in ("torch", "course_lib", "transformers"):
        if anchor in parts:
            index = len(parts) - 1 - parts[::-1].index(anchor)
            return "/".join(parts[index:])
    return Path(path).name


def _source_of(obj: Any) -> list[tuple[str, str]]:
    """(label, source) of a function, or of every function defined in a class's body."""
    functions: list[tuple[str, Any]] = []
    if inspect.isclass(obj):
        for name, member in vars(obj).items():
            if isinstance(member, (staticmethod, classmethod)):
                member = member.__func__
            if isinstance(member, property):
                member = member.fget
            member = inspect.unwrap(member) if callable(member) else member
            if inspect.isfunction(member):
                functions.append((f"{obj.__name__}.{name}", member))
    elif inspect.isfunction(obj) or inspect.ismethod(obj):
        functions.append((obj.__name__, inspect.unwrap(obj)))
    sources = []
    for label, function in functions:
        try:
            sources.append((label, textwrap.dedent(inspect.getsource(function))))
        except (OSError, TypeError):
            continue
    return sources


def _dotted(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return "?"


def static_reasons(obj: Any, rules: Forbidden) -> list[str]:
    """Lines of the answer's own source that name the reference (AST, not text search)."""
    reasons = []
    for label, source in _source_of(obj):
        try:
            tree = ast.parse(source)
        except SyntaxError:
            continue
        lines = source.splitlines()

        def where(node: ast.AST, label: str = label, lines: list[str] = lines) -> str:
            line = lines[node.lineno - 1].strip() if 0 < node.lineno <= len(lines) else ""
            return f"{label}, line {node.lineno}: `{textwrap.shorten(line, 80)}`"

        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.startswith(rules.modules):
                        reasons.append(f"imports {alias.name} ({where(node)})")
            elif isinstance(node, ast.ImportFrom):
                module = node.module or ""
                names = {alias.name for alias in node.names}
                if module.startswith(rules.modules) or (
                    module.startswith("torch") and names & rules.identifiers
                ):
                    reasons.append(f"imports from {module} ({where(node)})")
            elif isinstance(node, ast.Attribute):
                dotted = _dotted(node)
                root = dotted.split(".")[0]
                if node.attr in rules.identifiers and root in {"torch", "optim", "course_lib"}:
                    reasons.append(f"uses {dotted} ({where(node)})")
            elif isinstance(node, ast.Name) and node.id == "course_lib":
                reasons.append(f"uses course_lib ({where(node)})")
            elif isinstance(node, ast.Constant) and isinstance(node.value, str):
                if node.value in rules.identifiers and node.value not in {"adam", "schedules"}:
                    reasons.append(f"names {node.value!r} in a string ({where(node)})")
    return list(dict.fromkeys(reasons))


def mro_reasons(cls: type, rules: Forbidden) -> list[str]:
    """Base classes that come from the reference (``torch.optim.AdamW``, ``course_lib``)."""
    reasons = []
    for base in cls.__mro__[1:]:
        try:
            path = inspect.getfile(base)
        except (TypeError, OSError):
            continue
        if _is_forbidden_file(path, rules):
            reasons.append(f"{cls.__name__} inherits from {base.__module__}.{base.__qualname__}")
    return reasons


def delegation_reasons(obj: Any, kind: str) -> list[str]:
    """Why ``obj`` (a function or a class) is not its author's own work, before running it.

    Two layers here, a third at run time (:func:`call_answer`):

    1. the class's MRO: a base class defined in ``torch.optim.adam``/``adamw`` or
       ``course_lib`` (a subclass of ``torch.optim.AdamW`` inherits its ``step``);
    2. the answer's source, parsed: imports of those modules and references such as
       ``torch.optim.AdamW``, ``torch._fused_adamw_`` or ``getattr(torch.optim, "AdamW")``.
    """
    rules = forbidden(kind)
    reasons = []
    if inspect.isclass(obj):
        reasons += mro_reasons(obj, rules)
    reasons += static_reasons(obj, rules)
    return reasons


def _refuse(name: str, reasons: Sequence[str]) -> None:
    listed = "\n  - ".join(reasons[:6])
    raise GradingError(
        f"{name} delegates to the reference, so this question scores 0:\n  - {listed}\n"
        "The exercise is to write the computation yourself with tensor operations."
    )


def check_not_delegating(obj: Any, name: str, kind: str) -> None:
    """Raise :class:`GradingError` naming each reason when ``obj`` delegates."""
    reasons = delegation_reasons(obj, kind)
    if reasons:
        _refuse(name, reasons)


_WARMED_UP = False


def _warm_up() -> None:
    """Construct one torch optimizer outside the watch.

    The first ``torch.optim.Optimizer`` of a process imports hundreds of modules lazily;
    under the profiler hook that takes seconds, and it is not the answer's work.
    """
    global _WARMED_UP
    if not _WARMED_UP:
        torch.optim.Optimizer([torch.zeros(1, requires_grad=True)], {"lr": 0.0})
        _WARMED_UP = True


def call_answer(
    function: Callable[..., Any], *args: Any, name: str, kind: str, **kwargs: Any
) -> Any:
    """Call the student's code, watching for delegation; wrap its exceptions with its name."""
    if kind == "optimizer":
        _warm_up()
    watch = _Watch(forbidden(kind))
    error: BaseException | None = None
    result = None
    with watch:
        try:
            result = function(*args, **kwargs)
        except Exception as exc:
            error = exc
    if watch.hits:
        _refuse(name, [f"running it called {hit}" for hit in dict.fromkeys(watch.hits)])
    if error is not None:
        raise GradingError(f"{name} raised {type(error).__name__}: {error}") from error
    return result


# --------------------------------------------------------------------------------------
# Comparing tensors and numbers, with messages a student can act on.
# --------------------------------------------------------------------------------------


def _tolerance(dtype: torch.dtype) -> float:
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


def _check_tensor(value: Any, like: Tensor, what: str) -> Tensor:
    if not isinstance(value, Tensor):
        raise GradingError(f"{what} should be a torch.Tensor, got {type(value).__name__}")
    if value.shape != like.shape:
        raise GradingError(f"{what} has shape {tuple(value.shape)}; expected {tuple(like.shape)}")
    if value.dtype != like.dtype:
        raise GradingError(
            f"{what} has dtype {value.dtype}; expected {like.dtype}, the dtype of the parameter"
        )
    if value.device != like.device:
        raise GradingError(
            f"{what} is on {value.device}; expected {like.device}, the parameter's device"
        )
    return value


def close(got: float, expected: float, rtol: float = FLOAT_RTOL, atol: float = 0.0) -> bool:
    """``|got - expected| <= max(rtol * |expected|, atol)``; NaN is never close."""
    return math.isfinite(got) and abs(got - expected) <= max(rtol * abs(expected), atol)


def as_float(value: Any, what: str) -> float:
    if isinstance(value, Tensor):
        if value.numel() != 1:
            raise GradingError(
                f"{what} should be one number, got a tensor of shape {tuple(value.shape)}"
            )
        value = value.item()
    if isinstance(value, bool) or (
        not isinstance(value, (int, float)) and not hasattr(value, "__float__")
    ):
        raise GradingError(f"{what} should be a number, got {type(value).__name__}: {value!r}")
    try:
        return float(value)
    except (TypeError, ValueError) as error:
        raise GradingError(f"{what} should be a number, got {value!r}") from error


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


def _hint(mistake: str, t: int, beta1: float, beta2: float) -> str:
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


@dataclass
class Probe:
    """A small float64 problem where each known mistake gives a visibly different result."""

    lr: float = 0.1
    beta1: float = 0.8
    beta2: float = 0.95
    eps: float = 1e-3
    weight_decay: float = 0.0
    steps: int = 6
    lr_change_at: int | None = None  # 0-based step before which lr is halved
    grads: list[list[float]] = field(default_factory=list)
    start: list[float] = field(default_factory=lambda: [0.5, -1.5, 0.02])

    @classmethod
    def random(cls, rng: random.Random, **overrides: Any) -> Probe:
        probe = cls(
            lr=rng.choice([0.05, 0.1, 0.2]),
            beta1=rng.choice([0.7, 0.8, 0.85]),
            beta2=rng.choice([0.9, 0.95, 0.97]),
            eps=rng.choice([1e-3, 3e-3]),
            start=[rng.uniform(0.2, 1.0), -rng.uniform(0.5, 2.0), rng.uniform(-0.05, 0.05)],
        )
        for key, value in overrides.items():
            setattr(probe, key, value)
        return probe

    def gradient(self, t: int) -> list[float]:
        """The gradient fed at update number ``t`` (1-based): mixed signs and sizes."""
        if self.grads:
            return self.grads[(t - 1) % len(self.grads)]
        return [0.3 + 0.1 * t, (-1.0) ** t * 2.0, 0.002 * t]

    def lr_at(self, t: int) -> float:
        if self.lr_change_at is not None and t - 1 >= self.lr_change_at:
            return self.lr * 0.5
        return self.lr

    def trajectory(self, decoupled: bool, mistake: str | None = None) -> list[tuple[Tensor, ...]]:
        p = torch.tensor(self.start, dtype=torch.float64)
        m, v = torch.zeros_like(p), torch.zeros_like(p)
        out = []
        for t in range(1, self.steps + 1):
            lr = self.lr if mistake == "lr_cached" else self.lr_at(t)
            g = torch.tensor(self.gradient(t), dtype=torch.float64)
            p, m, v = reference_update(
                p, g, m, v, t, lr=lr, beta1=self.beta1, beta2=self.beta2, eps=self.eps,
                weight_decay=self.weight_decay, decoupled=decoupled,
                mistake=None if mistake == "lr_cached" else mistake,
            )  # fmt: skip
            out.append((p, m, v))
        return out

    def settings(self) -> str:
        text = (
            f"lr={self.lr}, betas=({self.beta1}, {self.beta2}), eps={self.eps}, "
            f"weight_decay={self.weight_decay}, start={[round(x, 4) for x in self.start]}"
        )
        if self.lr_change_at is not None:
            text += f", lr halved before update {self.lr_change_at + 1}"
        return text


def _diagnose(
    got: list[Tensor], probe: Probe, decoupled: bool, candidates: Iterable[str]
) -> str | None:
    """The name of the known mistake whose parameter trajectory matches ``got``, if one does."""
    for mistake in candidates:
        expected = [p for p, _, _ in probe.trajectory(decoupled, mistake)]
        if len(expected) >= len(got) and all(
            first_mismatch(g, e, 1e-7) is None for g, e in zip(got, expected, strict=False)
        ):
            return mistake
    return None


def _first_nonfinite_hint(t: int) -> str:
    if t == 1:
        return (
            " The first update is not finite: if the bias correction is 1 - beta**(step - 1), "
            "it is 0 at the first update. step is the number of this update, 1 for the first: "
            "is `step` used before it is incremented?"
        )
    return " A value became inf or NaN: check for a division by a quantity that can be 0."


# --------------------------------------------------------------------------------------
# Assignment `adam`: one update as a function.
# --------------------------------------------------------------------------------------


def _call_update(
    update: Callable, p: Tensor, g: Tensor, m: Tensor, v: Tensor, t: int, hyper: dict
) -> tuple[Tensor, Tensor, Tensor]:
    result = call_answer(
        update, p.clone(), g.clone(), m.clone(), v.clone(), t, name="adam_update", kind="optimizer",
        lr=hyper["lr"], beta1=hyper["beta1"], beta2=hyper["beta2"], eps=hyper["eps"],
        weight_decay=hyper["weight_decay"],
    )  # fmt: skip
    if not isinstance(result, (tuple, list)) or len(result) != 3:
        raise GradingError(
            "adam_update should return the tuple (param, m, v) of new tensors; got "
            f"{type(result).__name__}"
            + (f" of length {len(result)}" if isinstance(result, (tuple, list)) else "")
        )
    names = ("the returned param", "the returned m", "the returned v")
    return tuple(_check_tensor(x, p, n) for x, n in zip(result, names, strict=True))  # type: ignore[return-value]


def _run_probe_update(
    update: Callable, probe: Probe, device: torch.device, dtype: torch.dtype
) -> None:
    rtol = _tolerance(dtype)
    p = torch.tensor(probe.start, dtype=dtype, device=device)
    m, v = torch.zeros_like(p), torch.zeros_like(p)
    expected = probe.trajectory(decoupled=False)
    got_params: list[Tensor] = []
    for t in range(1, probe.steps + 1):
        g = torch.tensor(probe.gradient(t), dtype=dtype, device=device)
        hyper = {"lr": probe.lr_at(t), "beta1": probe.beta1, "beta2": probe.beta2,
                 "eps": probe.eps, "weight_decay": probe.weight_decay}  # fmt: skip
        p, m, v = _call_update(update, p, g, m, v, t, hyper)
        got_params.append(p.detach().double().cpu())
        exp_p, exp_m, exp_v = expected[t - 1]
        for name, got, exp in (("m", m, exp_m), ("v", v, exp_v), ("param", p, exp_p)):
            index = first_mismatch(got, exp.to(dtype), rtol)
            if index is None:
                continue
            message = (
                f"adam_update({probe.settings()}, {DTYPE_NAMES[dtype]}): at step={t}, the "
                f"returned {name} is wrong, {describe_mismatch(got, exp, index, rtol)}."
            )
            if not torch.isfinite(got).all():
                message += _first_nonfinite_hint(t)
            else:
                candidates = ADAM_MISTAKES + (
                    ("no_weight_decay", "decoupled_in_adam") if probe.weight_decay else ()
                )
                mistake = (
                    _diagnose(got_params, probe, False, candidates) if name == "param" else None
                )
                if mistake is None and name != "param":
                    # m or v wrong: finish the probe's parameter to name the mistake if we can.
                    mistake = _diagnose_update_until(update, probe, device, t, candidates)
                if mistake:
                    message += " Likely mistake: " + _hint(mistake, t, probe.beta1, probe.beta2)
                elif name == "m":
                    message += " m = beta1 * m + (1 - beta1) * grad (with Adam's weight decay added to grad first)."
                elif name == "v":
                    message += " v = beta2 * v + (1 - beta2) * grad**2 (with Adam's weight decay added to grad first)."
            raise GradingError(message)


def _diagnose_update_until(
    update: Callable, probe: Probe, device: torch.device, steps: int, candidates: Iterable[str]
) -> str | None:
    p = torch.tensor(probe.start, dtype=torch.float64, device=device)
    m, v = torch.zeros_like(p), torch.zeros_like(p)
    got = []
    for t in range(1, steps + 1):
        g = torch.tensor(probe.gradient(t), dtype=torch.float64, device=device)
        hyper = {"lr": probe.lr_at(t), "beta1": probe.beta1, "beta2": probe.beta2,
                 "eps": probe.eps, "weight_decay": probe.weight_decay}  # fmt: skip
        p, m, v = _call_update(update, p, g, m, v, t, hyper)
        got.append(p.detach().double().cpu())
    return _diagnose(got, probe, False, candidates)


def _random_shape(rng: random.Random) -> tuple[int, ...]:
    return tuple(rng.randint(1, 5) for _ in range(rng.randint(0, 3)))


def _random_hyper(rng: random.Random) -> dict[str, float]:
    return {
        "lr": 10 ** rng.uniform(-4, -1),
        "beta1": rng.choice([0.0, 0.5, 0.9, rng.uniform(0.0, 0.99)]),
        "beta2": rng.choice([0.95, 0.999, rng.uniform(0.9, 0.9999)]),
        "eps": rng.choice([1e-8, 1e-6, 1e-3]),
        "weight_decay": rng.choice([0.0, 1e-4, 0.05, 0.1]),
    }


@graded
def check_adam_first_steps(
    adam_update: Callable, *, device: torch.device | str | None = None, seed: int | None = None
) -> None:
    """A few updates on a 3-element float64 parameter; diagnoses the usual mistakes.

    ``seed=None`` uses the fixed probe the notebook describes; a seed draws new settings.
    """
    check_not_delegating(adam_update, "adam_update", "optimizer")
    device = torch.device(device) if device is not None else default_device()
    rng = random.Random(seed)
    plain = Probe() if seed is None else Probe.random(rng)
    decay = Probe(weight_decay=0.1) if seed is None else Probe.random(rng, weight_decay=0.1)
    _run_probe_update(adam_update, plain, device, torch.float64)
    _run_probe_update(adam_update, decay, device, torch.float64)


@graded
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
    check_not_delegating(adam_update, "adam_update", "optimizer")
    device = torch.device(device) if device is not None else default_device()
    rng = random.Random(seed)
    gen = torch.Generator().manual_seed(seed)
    for case in range(cases):
        dtype = dtypes[case % len(dtypes)]
        rtol = _tolerance(dtype)
        shape = _random_shape(rng)
        hyper = _random_hyper(rng)
        scale = 10 ** rng.choice([-2, -1, 0, 1])
        start = torch.randn(shape, generator=gen, dtype=torch.float64).to(device, dtype)
        ref = start.clone()
        torch_opt = torch.optim.Adam(
            [ref], lr=hyper["lr"], betas=(hyper["beta1"], hyper["beta2"]), eps=hyper["eps"],
            weight_decay=hyper["weight_decay"], foreach=False,
        )  # fmt: skip
        p, m, v = start.clone(), torch.zeros_like(start), torch.zeros_like(start)
        for t in range(1, steps + 1):
            g = (torch.randn(shape, generator=gen, dtype=torch.float64) * scale).to(device, dtype)
            p, m, v = _call_update(adam_update, p, g, m, v, t, hyper)
            ref.grad = g.clone()
            torch_opt.step()
            index = first_mismatch(p, ref, rtol)
            if index is not None:
                settings = ", ".join(f"{k}={val:.4g}" for k, val in hyper.items())
                raise GradingError(
                    f"adam_update against torch.optim.Adam (seed {seed}, case {case}: shape "
                    f"{tuple(shape)}, {DTYPE_NAMES[dtype]} on {device}, {settings}, gradients of "
                    f"scale {scale:g}): after step={t} the parameter differs, "
                    f"{describe_mismatch(p, ref, index, rtol)}."
                    + (_first_nonfinite_hint(t) if not torch.isfinite(p).all() else "")
                )


@graded
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
    check_not_delegating(effective_steps, "effective_steps", "optimizer")
    for grads in sequences:
        expected = torch_effective_steps(grads, lr=lr, betas=betas, eps=eps)
        got = call_answer(
            effective_steps, list(grads), name="effective_steps", kind="optimizer",
            lr=lr, beta1=betas[0], beta2=betas[1], eps=eps,
        )  # fmt: skip
        try:
            got = torch.as_tensor(got, dtype=torch.float64).flatten().cpu()
        except (TypeError, ValueError, RuntimeError) as error:
            raise GradingError(
                f"effective_steps should return a list or 1-d tensor of numbers, got {type(got).__name__}"
            ) from error
        if got.numel() != len(grads):
            raise GradingError(
                f"effective_steps returned {got.numel()} values for {len(grads)} gradients: one per step"
            )
        for t in range(len(grads)):
            if not close(got[t].item(), expected[t].item(), rtol, atol=1e-12):
                shown = ", ".join(f"{x:g}" for x in list(grads)[:6]) + (
                    ", ..." if len(grads) > 6 else ""
                )
                raise GradingError(
                    f"effective_steps([{shown}], lr={lr}, beta1={betas[0]}, beta2={betas[1]}, "
                    f"eps={eps}): at step {t + 1} expected {expected[t].item():.8g}, got "
                    f"{got[t].item():.8g} (allowed relative error {rtol:g}). The effective step is "
                    "|theta_t - theta_(t-1)| / lr, from a fresh optimizer, gradients fed in order."
                )


def torch_effective_steps(
    grads: Sequence[float], *, lr: float, betas: tuple[float, float], eps: float
) -> Tensor:
    """|update_t| / lr of ``torch.optim.Adam`` on one float64 scalar fed ``grads`` in order."""
    p = torch.zeros((), dtype=torch.float64, requires_grad=False)
    opt = torch.optim.Adam([p], lr=lr, betas=betas, eps=eps, foreach=False)
    out = []
    for g in grads:
        before = p.clone()
        p.grad = torch.tensor(float(g), dtype=torch.float64)
        opt.step()
        out.append((p - before).abs().item() / lr)
    return torch.tensor(out, dtype=torch.float64)


# --------------------------------------------------------------------------------------
# Assignment `adamw`: an Optimizer subclass.
# --------------------------------------------------------------------------------------

ADAMW_MISTAKES = (
    "coupled",
    "decay_without_lr",
    "decay_after_update",
    "lr_cached",
    *ADAM_MISTAKES,
)


def _new_optimizer(cls: type, groups: Any, name: str, **kwargs: Any) -> Any:
    opt = call_answer(cls, groups, name=name, kind="optimizer", **kwargs)
    if not isinstance(opt, torch.optim.Optimizer):
        raise GradingError(
            f"{name}(...) should be a torch.optim.Optimizer, got {type(opt).__name__}"
        )
    return opt


def _step(opt: Any, name: str, closure: Callable | None = None) -> Any:
    return call_answer(opt.step, closure, name=f"{name}.step", kind="optimizer")


def _check_class(cls: Any, name: str) -> None:
    if not inspect.isclass(cls) or not issubclass(cls, torch.optim.Optimizer):
        raise GradingError(
            f"{name} should be a class derived from torch.optim.Optimizer, got {cls!r}"
        )
    check_not_delegating(cls, name, "optimizer")


@graded
def check_adamw_constructor(AdamW: type, *, seed: int | None = None) -> None:
    """Defaults like torch's, and ``ValueError`` for hyperparameters out of range."""
    name = "AdamW"
    _check_class(AdamW, name)
    p = torch.zeros(2, requires_grad=True)
    opt = _new_optimizer(AdamW, [p], name)
    group = opt.param_groups[0]
    defaults = {"lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 1e-2}
    for key, value in defaults.items():
        if key not in group:
            raise GradingError(
                f"param_groups[0] has no {key!r}: pass the hyperparameters as the defaults dict "
                "to torch.optim.Optimizer.__init__(params, defaults)"
            )
        got = tuple(group[key]) if key == "betas" else group[key]
        if got != value:
            raise GradingError(
                f"the default {key} should be {value} (as torch.optim.AdamW), got {got!r}"
            )
    # One step on a small parameter, so that an AdamW whose step() delegates is refused here
    # too: every test of the question gives 0 for a delegating answer.
    q = torch.zeros(2, requires_grad=True)
    q.grad = torch.ones(2)
    _step(_new_optimizer(AdamW, [q], name), name)
    rng = random.Random(seed)
    bad = [
        ({"lr": -rng.choice([1e-3, 0.5, 2.0])}, "lr"),
        ({"eps": -rng.choice([1e-8, 1e-3])}, "eps"),
        ({"betas": (rng.choice([1.0, 1.5, -0.1]), 0.999)}, "betas[0]"),
        ({"betas": (0.9, rng.choice([1.0, 1.2, -0.5]))}, "betas[1]"),
        ({"weight_decay": -rng.choice([1e-2, 0.3])}, "weight_decay"),
    ]
    if seed is not None:
        rng.shuffle(bad)
    for kwargs, what in bad:
        q = torch.zeros(2, requires_grad=True)
        watch = _Watch(forbidden("optimizer"))
        with watch:
            try:
                AdamW([q], **kwargs)
            except ValueError:
                continue
            except Exception as error:
                raise GradingError(
                    f"AdamW([p], {', '.join(f'{k}={v!r}' for k, v in kwargs.items())}) raised "
                    f"{type(error).__name__}: {error}; an invalid {what} should raise ValueError"
                ) from error
            finally:
                if watch.hits:
                    _refuse(name, [f"running it called {hit}" for hit in watch.hits])
        call = ", ".join(f"{k}={v!r}" for k, v in kwargs.items())
        raise GradingError(
            f"AdamW([p], {call}) was accepted: an invalid {what} should raise ValueError, "
            f"as torch.optim.AdamW does (e.g. ValueError('Invalid learning rate: -0.5'))"
        )


def _optimizer_probe(cls: type, name: str, probe: Probe, device: torch.device) -> list[Tensor]:
    p = torch.tensor(probe.start, dtype=torch.float64, device=device, requires_grad=True)
    opt = _new_optimizer(
        cls, [p], name, lr=probe.lr, betas=(probe.beta1, probe.beta2), eps=probe.eps,
        weight_decay=probe.weight_decay,
    )  # fmt: skip
    got = []
    for t in range(1, probe.steps + 1):
        for group in opt.param_groups:
            group["lr"] = probe.lr_at(t)
        p.grad = torch.tensor(probe.gradient(t), dtype=torch.float64, device=device)
        _step(opt, name)
        got.append(p.detach().double().cpu().clone())
    return got


@graded
def check_adamw_first_steps(AdamW: type, *, device: Any = None, seed: int | None = None) -> None:
    """A 3-element float64 parameter over a few steps, with weight decay and an lr change."""
    name = "AdamW"
    _check_class(AdamW, name)
    device = torch.device(device) if device is not None else default_device()
    rng = random.Random(seed)
    probes = [
        Probe(weight_decay=0.0, steps=5)
        if seed is None
        else Probe.random(rng, weight_decay=0.0, steps=5),
        Probe(weight_decay=0.2, steps=8, lr_change_at=5)
        if seed is None
        else Probe.random(
            rng, weight_decay=rng.choice([0.1, 0.2, 0.3]), steps=8, lr_change_at=rng.randint(3, 6)
        ),
    ]
    for probe in probes:
        got = _optimizer_probe(AdamW, name, probe, device)
        expected = [p for p, _, _ in probe.trajectory(decoupled=True)]
        for t, (g, e) in enumerate(zip(got, expected, strict=True), start=1):
            index = first_mismatch(g, e, RTOL[torch.float64])
            if index is None:
                continue
            message = (
                f"AdamW([p], {probe.settings()}) on float64: after step {t} the parameter is "
                f"wrong, {describe_mismatch(g, e, index, RTOL[torch.float64])}."
            )
            if not torch.isfinite(g).all():
                message += _first_nonfinite_hint(t)
            else:
                mistake = _diagnose(got, probe, True, ADAMW_MISTAKES)
                if mistake:
                    hint_t = (
                        probe.lr_change_at + 1
                        if mistake == "lr_cached" and probe.lr_change_at is not None
                        else t
                    )
                    message += " Likely mistake: " + _hint(
                        mistake, hint_t, probe.beta1, probe.beta2
                    )
            raise GradingError(message)


@graded
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
    name = "AdamW"
    _check_class(AdamW, name)
    device = torch.device(device) if device is not None else default_device()
    rng = random.Random(seed)
    gen = torch.Generator().manual_seed(seed)
    for case in range(cases):
        dtype = dtypes[case % len(dtypes)]
        rtol = _tolerance(dtype)
        shapes = [_random_shape(rng) for _ in range(rng.randint(2, 5))]
        n_groups = rng.randint(1, min(3, len(shapes)))
        group_hypers = []
        for _ in range(n_groups):
            h = _random_hyper(rng)
            group_hypers.append(
                {
                    "lr": h["lr"],
                    "betas": (h["beta1"], h["beta2"]),
                    "eps": h["eps"],
                    "weight_decay": h["weight_decay"],
                }
            )
        if n_groups > 1:
            del group_hypers[-1]["weight_decay"]  # this group takes the constructor's default
        common = {"lr": 10 ** rng.uniform(-4, -2), "weight_decay": rng.choice([0.01, 0.1])}
        del group_hypers[0]["lr"]  # and this one the constructor's lr
        starts = [
            torch.randn(s, generator=gen, dtype=torch.float64).to(device, dtype) for s in shapes
        ]
        ours = [s.clone().requires_grad_(True) for s in starts]
        theirs = [s.clone().requires_grad_(True) for s in starts]

        def groups(
            params: list[Tensor], hypers: list[dict] = group_hypers, n: int = n_groups
        ) -> list[dict]:
            return [{"params": params[i::n], **hypers[i]} for i in range(n)]

        student = _new_optimizer(AdamW, groups(ours), name, **common)
        reference = torch.optim.AdamW(groups(theirs), **common)
        change_at = rng.randint(steps // 3, 2 * steps // 3)
        factor = rng.choice([0.1, 0.3, 2.0])
        none_every = rng.choice([5, 7, 11])
        for step in range(steps):
            if step == change_at:
                for opt in (student, reference):
                    for group in opt.param_groups:
                        group["lr"] = group["lr"] * factor
            for i, (a, b) in enumerate(zip(ours, theirs, strict=True)):
                if (step + i) % none_every == 0:
                    a.grad = b.grad = None
                    continue
                scale = 10.0 ** (i % 3 - 1)
                g = (torch.randn(a.shape, generator=gen, dtype=torch.float64) * scale).to(
                    device, dtype
                )
                a.grad, b.grad = g.clone(), g.clone()
            _step(student, name)
            reference.step()
            for i, (a, b) in enumerate(zip(ours, theirs, strict=True)):
                index = first_mismatch(a, b, rtol)
                if index is None:
                    continue
                group_index = i % n_groups
                events = []
                if step >= change_at:
                    events.append(
                        f"every group's lr was multiplied by {factor} before step {change_at + 1}"
                    )
                if step >= none_every - 1 or i:
                    events.append(
                        f"parameter {i} had grad None at steps where (step - 1 + {i}) % {none_every} == 0 "
                        "(it must be skipped then, its state untouched)"
                    )
                raise GradingError(
                    f"AdamW against torch.optim.AdamW (seed {seed}, case {case}: {len(shapes)} "
                    f"parameters of shapes {shapes} in {n_groups} group(s), {DTYPE_NAMES[dtype]} on "
                    f"{device}; constructor {common}; group {group_index} settings "
                    f"{group_hypers[group_index]}): after step {step + 1}, parameter {i} "
                    f"differs, {describe_mismatch(a, b, index, rtol)}."
                    + (" Notes: " + "; ".join(events) + "." if events else "")
                    + (_first_nonfinite_hint(step + 1) if not torch.isfinite(a).all() else "")
                    + " Run check_adamw_first_steps for a diagnosis on a small example."
                )


@graded
def check_adamw_state_and_closure(AdamW: type, *, device: Any = None, seed: int = 0) -> None:
    """``step(closure)`` returns the closure's loss; ``state`` uses torch's keys and values."""
    name = "AdamW"
    _check_class(AdamW, name)
    device = torch.device(device) if device is not None else default_device()
    gen = torch.Generator().manual_seed(seed)
    rng = random.Random(seed)
    target = torch.randn(4, generator=gen, dtype=torch.float64).to(device)
    start = torch.randn(4, generator=gen, dtype=torch.float64).to(device)
    a = start.clone().requires_grad_(True)
    b = start.clone().requires_grad_(True)
    frozen = torch.zeros(3, dtype=torch.float64, device=device, requires_grad=True)
    lr = rng.choice([1e-2, 3e-2])
    student = _new_optimizer(AdamW, [a, frozen], name, lr=lr, weight_decay=0.0)
    reference = torch.optim.AdamW([b], lr=lr, weight_decay=0.0)
    steps = rng.randint(3, 6)
    for _t in range(1, steps + 1):
        losses: list[Tensor] = []

        def closure(p: Tensor = a, losses: list = losses) -> Tensor:
            student.zero_grad()
            loss = ((p - target) ** 2).sum()
            loss.backward()
            losses.append(loss)
            return loss

        loss = _step(student, name, closure)
        if not losses:
            raise GradingError(
                "AdamW.step(closure) did not call the closure: call it under "
                "torch.enable_grad() and use the gradients it computes"
            )
        if not isinstance(loss, Tensor) or loss.item() != losses[-1].item():
            raise GradingError(
                f"AdamW.step(closure) should return the closure's loss ({losses[-1].item():.6g}), "
                f"got {loss!r}"
            )
        reference.zero_grad()
        ((b - target) ** 2).sum().backward()
        reference.step()
    state = student.state.get(a)
    if not state:
        raise GradingError(
            "AdamW.state[p] is empty after steps: keep each parameter's state in self.state[p]"
        )
    for key in ("step", "exp_avg", "exp_avg_sq"):
        if key not in state:
            raise GradingError(
                f"AdamW.state[p] has keys {sorted(state)}; it should use torch's: 'step', 'exp_avg', 'exp_avg_sq'"
            )
    if as_float(state["step"], "state['step']") != steps:
        raise GradingError(
            f"after {steps} steps state['step'] should be {steps}, got {state['step']!r}"
        )
    ref_state = reference.state[b]
    for key in ("exp_avg", "exp_avg_sq"):
        value = _check_tensor(state[key], a.detach(), f"state[p][{key!r}]")
        index = first_mismatch(value, ref_state[key], RTOL[torch.float64])
        if index is not None:
            raise GradingError(
                f"after {steps} steps with a closure, state[p][{key!r}] differs from torch.optim.AdamW's: "
                f"{describe_mismatch(value, ref_state[key], index, RTOL[torch.float64])}"
            )
    if student.state.get(frozen):
        raise GradingError("a parameter whose .grad is None got state: skip it in step()")


# --------------------------------------------------------------------------------------
# Schedules and by-hand calculations: functions of their inputs, checked on many inputs.
# --------------------------------------------------------------------------------------


def _format_call(name: str, kwargs: dict[str, Any], positional: Sequence[Any] = ()) -> str:
    args = [repr(a) for a in positional] + [f"{k}={v!r}" for k, v in kwargs.items()]
    return f"{name}({', '.join(args)})"


@graded
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
    check_not_delegating(function, name, kind)
    for args, kwargs, expected, hint in cases:
        got = as_float(
            call_answer(function, *args, name=name, kind=kind, **kwargs), f"{name}'s result"
        )
        if not close(got, expected, rtol, atol):
            raise GradingError(
                f"{_format_call(name, kwargs, args)}: expected {expected:.10g}, got {got:.10g} "
                f"(allowed relative error {rtol:g}). {hint}".rstrip()
            )


@graded
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
    check_not_delegating(function, name, kind)
    for args, kwargs in cases:
        expected = float(reference(*args, **kwargs))
        got = as_float(
            call_answer(function, *args, name=name, kind=kind, **kwargs), f"{name}'s result"
        )
        if close(got, expected, rtol, atol):
            continue
        message = (
            f"{_format_call(name, kwargs, args)}: expected {expected:.10g}, got {got:.10g} "
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


@graded
def check_choice(
    answer: Any, name: str, *, options: str, count: int | None = None, ordered: bool = False
) -> None:
    """The answer's format: letters from ``options``; ``count`` of them when given."""
    if isinstance(answer, str):
        letters = [answer]
    elif isinstance(answer, (list, tuple, set, frozenset)):
        letters = list(answer)
    else:
        raise GradingError(f"{name} should be a letter or a collection of letters, got {answer!r}")
    if ordered and not isinstance(answer, (list, tuple)):
        raise GradingError(f"{name} should be a list in order, first fix first, got {answer!r}")
    bad = [x for x in letters if not isinstance(x, str) or x.strip().lower() not in options]
    if bad:
        raise GradingError(f"{name}: {bad!r} are not among the options {', '.join(options)}")
    if count is not None and len(letters) != count:
        raise GradingError(f"{name} should hold {count} letter(s), got {len(letters)}: {answer!r}")
    if len({x.strip().lower() for x in letters}) != len(letters):
        raise GradingError(f"{name} repeats a letter: {answer!r}")


def normalise_choice(answer: Any) -> list[str]:
    """The answer's letters, lower-case, in the order given."""
    letters = [answer] if isinstance(answer, str) else list(answer)
    return [str(x).strip().lower() for x in letters]


@graded
def check_answer_letters(
    answer: Any, name: str, expected: Sequence[str], *, ordered: bool, explanations: dict[str, str]
) -> None:
    """Compare a choice with the key; explain each wrong or missing letter."""
    got = normalise_choice(answer)
    want = [x.lower() for x in expected]
    if (got == want) if ordered else (set(got) == set(want) and len(got) == len(set(got))):
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
    raise GradingError(f"{name} = {answer!r}: " + " ".join(lines))


def random_cases(
    seed: int, count: int, draw: Callable[[random.Random], tuple[Sequence[Any], dict[str, Any]]]
) -> list[tuple[Sequence[Any], dict[str, Any]]]:
    """``count`` cases from ``draw(rng)``, reproducible from ``seed``."""
    rng = random.Random(seed)
    return [draw(rng) for _ in range(count)]


def rng(seed: int) -> random.Random:
    """A ``random.Random`` for a test cell's own draws (no import needed in the cell)."""
    return random.Random(seed)


# Importing this module is the first thing every exercise notebook does (in a locked cell,
# which nbgrader restores before grading): hidden tests that fail with a plain `assert` are
# covered too.
hide_test_source_when_autograding()

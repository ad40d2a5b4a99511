"""Delegation: an answer must not hand its work to the reference.

Three layers:

1. the class's MRO: a base class defined in ``torch.optim.adam``/``adamw`` or ``course_lib``
   (a subclass of ``torch.optim.AdamW`` inherits its ``step``);
2. the answer's source, parsed: imports of those modules and references such as
   ``torch.optim.AdamW``, ``torch._fused_adamw_`` or ``getattr(torch.optim, "AdamW")``; from
   the live object (:func:`static_reasons`) or from the notebook's cell sources
   (:func:`static_reasons_from_sources`, what the grader checks outside the sandbox);
3. at run time (:func:`call_watched`), a profiler hook that records every call into those
   files and every fused Adam kernel while the answer runs.

This module runs in the student's sandboxed process too: standard library, torch and
:mod:`.common` only.
"""

from __future__ import annotations

import ast
import copy
import functools
import inspect
import os
import sys
import textwrap
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from autograder.common import GradingError, describe_exception


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


_GRADING = Path(__file__).resolve().parent
# The references: the course's library, and the grader's own judges. The checks' own code
# that an answer calls back (a closure handed to step()) while it runs under the watch is
# allowed: the observation side, which is all the sandbox holds of the grader.
_COURSE_LIB = _package_dir("course_lib") or str(_GRADING.parent / "course_lib")
_REFERENCE_FOLDERS = frozenset({_COURSE_LIB, str(_GRADING)})
_ALLOWED = frozenset(
    str(_GRADING / name) for name in ("observe.py", "common.py", "delegation.py", "grading.py")
)


def _forbidden_optimizers() -> Forbidden:
    files = {
        _module_file(name)
        for name in ("torch.optim.adam", "torch.optim.adamw", "torch.optim._functional")
    }
    return Forbidden(
        files=frozenset(f for f in files if f),
        folders=_REFERENCE_FOLDERS,
        allowed_files=_ALLOWED,
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
        modules=(
            "course_lib",
            "autograder",
            "torch.optim.adam",
            "torch.optim.adamw",
            "torch.optim._functional",
        ),
    )


def _forbidden_schedules() -> Forbidden:
    files = {_module_file("torch.optim.lr_scheduler")}
    transformers_dir = _package_dir("transformers")
    if transformers_dir:
        files.add(str(Path(transformers_dir) / "optimization.py"))
    return Forbidden(
        files=frozenset(f for f in files if f),
        folders=_REFERENCE_FOLDERS,
        allowed_files=_ALLOWED,
        identifiers=frozenset({"course_lib", "lr_scheduler", "schedules", "optimization"}),
        modules=("course_lib", "autograder", "torch.optim.lr_scheduler", "transformers"),
    )


def _forbidden_course_lib() -> Forbidden:
    return Forbidden(
        folders=_REFERENCE_FOLDERS,
        allowed_files=_ALLOWED,
        identifiers=frozenset({"course_lib"}),
        modules=("course_lib", "autograder"),
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


class Watch:
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

    def __enter__(self) -> Watch:
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


def _source_reasons(label: str, source: str, rules: Forbidden) -> list[str]:
    """The AST rules on one function's (or one class header's) source."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return []
    lines = source.splitlines()
    reasons = []

    def where(node: ast.AST) -> str:
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
        elif isinstance(node, ast.Call) and _dotted(node.func).split(".")[-1] in _LOOKUPS:
            # getattr(torch.optim, "AdamW"), importlib.import_module("course_lib"): a name
            # looked up by string. A string elsewhere ("AdamW" in a __repr__) is no lookup.
            for arg in node.args:
                if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                    if arg.value.split(".")[-1] in rules.identifiers or arg.value.startswith(
                        rules.modules
                    ):
                        reasons.append(f"looks up {arg.value!r} by name ({where(node)})")
    return reasons


_LOOKUPS = {"getattr", "__getattribute__", "__import__", "import_module", "attrgetter"}


def static_reasons(obj: Any, rules: Forbidden) -> list[str]:
    """Lines of the answer's own source that name the reference (AST, not text search)."""
    reasons = []
    for label, source in _source_of(obj):
        reasons += _source_reasons(label, source, rules)
    return list(dict.fromkeys(reasons))


def _blank_magics(source: str) -> str:
    """IPython's ``%magic`` and ``!shell`` lines blanked, so that the rest parses."""
    return "\n".join(
        "" if line.lstrip().startswith(("%", "!")) else line for line in source.splitlines()
    )


def _segment(lines: list[str], node: ast.AST) -> str:
    """The source lines of ``node`` (with its decorators), dedented."""
    first = min([node.lineno] + [d.lineno for d in getattr(node, "decorator_list", [])])
    last = getattr(node, "end_lineno", None) or node.lineno
    return textwrap.dedent("\n".join(lines[first - 1 : last]))


#: A cell longer than this is not parsed for delegation (the sandbox holds no reference to
#: delegate to; this check only names one): parsing costs time and memory in the grader.
MAX_PARSED_CELL = 200_000


@functools.lru_cache(maxsize=64)
def _parsed(source: str) -> tuple[ast.Module, str] | None:
    """A cell's tree (magics blanked), parsed once per grader process however many checks
    and answers ask; None for a cell that does not parse or is too long."""
    if len(source) > MAX_PARSED_CELL:
        return None
    text = _blank_magics(source)
    try:
        return ast.parse(text), text
    except (SyntaxError, ValueError, MemoryError, RecursionError):
        return None


def static_reasons_from_sources(name: str, sources: Sequence[str], kind: str) -> list[str]:
    """:func:`static_reasons` for the top-level ``def``/``class`` called ``name`` in the
    notebook's code cells, from their text: what the grader checks outside the sandbox.

    The last definition wins, as when the cells run in order; cells that do not parse are
    skipped. For a class, every method is checked (labelled ``Class.method``), and so are its
    bases and the statements of its body outside the methods (labelled ``Class``).
    """
    rules = forbidden(kind)
    found: tuple[ast.AST, list[str]] | None = None
    for source in sources:
        parsed = _parsed(source) if isinstance(source, str) else None
        if parsed is None:
            continue
        tree, text = parsed
        for node in tree.body:
            if (
                isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
                and node.name == name
            ):
                found = (node, text.splitlines())
    if found is None:
        return []
    node, lines = found
    reasons: list[str] = []
    if isinstance(node, ast.ClassDef):
        header = []
        for item in node.body:
            if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)):
                reasons += _source_reasons(f"{name}.{item.name}", _segment(lines, item), rules)
            else:
                header.append(item)
        # The class statement without its methods: bases, keywords, class attributes.
        bare = copy.copy(node)
        bare.body = header or [ast.Pass()]
        reasons += _source_reasons(name, ast.unparse(bare), rules)
    else:
        reasons += _source_reasons(name, _segment(lines, node), rules)
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
    """Why ``obj`` (a function or a class) is not its author's own work, before running it:
    the MRO and the parsed source (layers 1 and 2)."""
    rules = forbidden(kind)
    reasons = []
    if inspect.isclass(obj):
        reasons += mro_reasons(obj, rules)
    reasons += static_reasons(obj, rules)
    return reasons


def refusal(name: str, reasons: Sequence[str]) -> GradingError:
    """The error that refuses a delegating answer, each reason listed."""
    listed = "\n  - ".join(reasons[:6])
    return GradingError(
        f"{name} delegates to the reference, so this question scores 0:\n  - {listed}\n"
        "The exercise is to write the computation yourself with tensor operations."
    )


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


@dataclass
class Outcome:
    """One call of the answer: its result, or the exception it raised, and what it ran."""

    result: Any = None
    error: str | None = None  # "ValueError: message"
    exception: BaseException | None = None
    hits: list[str] | None = None  # forbidden code it called, in order, without repeats


def call_watched(function: Callable[..., Any], *args: Any, kind: str, **kwargs: Any) -> Outcome:
    """Call the student's code under the watch; record its result or exception and its hits."""
    if kind == "optimizer":
        _warm_up()
    watch = Watch(forbidden(kind))
    outcome = Outcome()
    with watch:
        try:
            outcome.result = function(*args, **kwargs)
        except Exception as exc:
            outcome.exception = exc
            outcome.error = describe_exception(exc)
    outcome.hits = list(dict.fromkeys(watch.hits))
    return outcome

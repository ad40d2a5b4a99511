"""Delegation: an answer must not hand its work to the reference.

Three layers: the class's MRO (a base from ``torch.optim.adam``/``adamw`` or ``course_lib``);
the answer's source, parsed (imports of those modules, ``torch.optim.AdamW``,
``torch._fused_adamw_``, ``getattr(torch.optim, "AdamW")``), from the live object or, in the
grader, from the notebook's cells (:func:`static_reasons_from_sources`); and, while the
answer runs (:func:`call_watched`), a profiler hook that records every call into those files
and every fused Adam kernel. In the sandbox the reference is gone anyway (see ``kernel.py``);
in inline mode these layers are all there is. Standard library, torch and :mod:`.common`.
"""

from __future__ import annotations

import ast
import copy
import dataclasses
import functools
import importlib.util
import inspect
import os
import sys
import textwrap
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from autograder.common import GradingError

_GRADING = Path(__file__).resolve().parent
# The checks' own code that an answer calls back while it runs (a closure handed to step())
# is allowed: the observation side, all the sandbox holds of the grader.
_ALLOWED = frozenset(
    str(_GRADING / f"{n}.py") for n in ("observe", "common", "delegation", "grading")
)
_LOOKUPS = {"getattr", "__getattribute__", "__import__", "import_module", "attrgetter"}
#: A cell longer than this is not parsed (the sandbox holds no reference to delegate to; this
#: only names one): parsing costs the grader time and memory.
MAX_PARSED_CELL = 200_000


def _package_dir(name: str) -> str | None:
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return str(Path(next(iter(spec.submodule_search_locations))).resolve())


@dataclasses.dataclass(frozen=True, eq=False)  # hashed by identity: cached per call
class Rules:
    """What an answer of one kind must not run or name."""

    files: frozenset[str]  # source files and package folders (ending in os.sep)
    identifiers: frozenset[str]  # attribute or string names in the source
    modules: tuple[str, ...]  # import prefixes
    kernels: bool  # the fused Adam kernels, by name


_KINDS = {  # kind: (modules whose files are forbidden, identifiers, import prefixes)
    "optimizer": (
        ("torch.optim.adam", "torch.optim.adamw", "torch.optim._functional"),
        "Adam AdamW adam adamw _functional _single_tensor_adam _multi_tensor_adam _fused_adam "
        "_fused_adam_ _fused_adamw_ adam_step adam_multi_tensor course_lib",
        ("torch.optim.adam", "torch.optim.adamw", "torch.optim._functional"),
    ),
    "schedule": (
        ("torch.optim.lr_scheduler", "transformers.optimization"),
        "course_lib lr_scheduler schedules optimization",
        ("torch.optim.lr_scheduler", "transformers"),
    ),
    "course_lib": ((), "course_lib", ()),
}


@functools.cache
def forbidden(kind: str) -> Rules:
    """The rules of one kind of exercise: ``optimizer``, ``schedule``, ``course_lib``."""
    if kind not in _KINDS:
        raise ValueError(f"Unknown kind {kind!r}: expected one of {', '.join(_KINDS)}")
    modules, identifiers, prefixes = _KINDS[kind]
    files = set()
    for name in modules:  # found without importing them (transformers takes seconds)
        package, _, module = name.rpartition(".")
        folder = _package_dir(package)
        if folder:
            files.add(str(Path(folder, f"{module}.py")))
    course_lib = _package_dir("course_lib") or str(_GRADING.parent / "course_lib")
    files |= {course_lib + os.sep, str(_GRADING) + os.sep}  # the course's library, the judges
    return Rules(
        frozenset(files), frozenset(identifiers.split()),
        ("course_lib", "autograder", *prefixes), kind == "optimizer",
    )  # fmt: skip # the fields grouped by meaning, not one a line


@functools.lru_cache(maxsize=4096)  # called for every Python call while an answer runs
def _is_forbidden_file(path: str, rules: Rules) -> bool:
    if not path or path.startswith("<"):
        return False
    try:
        path = str(Path(path).resolve())
    except OSError:
        return False
    return path not in _ALLOWED and any(
        path == f or (f.endswith(os.sep) and path.startswith(f)) for f in rules.files
    )


class Watch:
    """A profiler hook recording every call into forbidden code while the answer runs: Python
    functions by the file of their code (an alias is caught as surely as the attribute),
    builtins (``torch._fused_adamw_``) and ``torch.ops`` overloads by name."""

    def __init__(self, rules: Rules) -> None:
        self.rules, self.hits = rules, []
        self._hook = self._profile  # one bound method, so that `is` recognises it

    def _profile(self, frame: Any, event: str, arg: Any) -> None:
        if len(self.hits) > 20:
            return
        if event == "call":
            code = frame.f_code
            if _is_forbidden_file(code.co_filename, self.rules):
                self.hits.append(f"{_short_path(code.co_filename)}:{code.co_name}")
            elif self.rules.kernels and code.co_name == "__call__":
                owner = frame.f_locals.get("self")
                if type(owner).__module__ == "torch._ops" and "fused_adam" in str(owner):
                    self.hits.append(f"torch.ops {owner}")
        elif event == "c_call" and self.rules.kernels:
            name = getattr(arg, "__name__", "") or ""
            if "fused_adam" in name:
                self.hits.append(f"torch.{name}")

    def __enter__(self) -> Watch:
        self._previous = sys.getprofile(), threading.getprofile()
        sys.setprofile(self._hook)
        threading.setprofile(self._hook)
        return self

    def __exit__(self, *exc: object) -> None:
        if sys.getprofile() is not self._hook:
            self.hits.append("sys.setprofile (the answer replaced the grader's profiler)")
        try:
            sys.setprofile(self._previous[0])
        except TypeError:  # a C-level profiler (cProfile) cannot be handed back from Python
            sys.setprofile(None)
        threading.setprofile(self._previous[1])


def _short_path(path: str) -> str:
    parts = Path(path).parts
    for anchor in ("torch", "course_lib", "transformers"):
        if anchor in parts:
            return "/".join(parts[len(parts) - 1 - parts[::-1].index(anchor) :])
    return Path(path).name


def _dotted(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return "?"


def _source_reasons(label: str, source: str, rules: Rules) -> list[str]:
    """The AST rules on one function's (or one class header's) source."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return []
    lines, reasons = source.splitlines(), []

    def where(node: ast.AST) -> str:
        line = lines[node.lineno - 1].strip() if 0 < node.lineno <= len(lines) else ""
        return f"{label}, line {node.lineno}: `{textwrap.shorten(line, 80)}`"

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith(rules.modules):
                    reasons.append(f"imports {alias.name} ({where(node)})")
        elif isinstance(node, ast.ImportFrom):
            module, names = node.module or "", {alias.name for alias in node.names}
            if module.startswith(rules.modules) or (
                module.startswith("torch") and names & rules.identifiers
            ):
                reasons.append(f"imports from {module} ({where(node)})")
        elif isinstance(node, ast.Attribute):
            dotted = _dotted(node)
            if node.attr in rules.identifiers and dotted.split(".")[0] in {
                "torch",
                "optim",
                "course_lib",
            }:
                reasons.append(f"uses {dotted} ({where(node)})")
        elif isinstance(node, ast.Name) and node.id == "course_lib":
            reasons.append(f"uses course_lib ({where(node)})")
        elif isinstance(node, ast.Call) and _dotted(node.func).split(".")[-1] in _LOOKUPS:
            # A name looked up by string; a string elsewhere ("AdamW" in a __repr__) is none.
            for arg in node.args:
                if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                    name = arg.value
                    if name.split(".")[-1] in rules.identifiers or name.startswith(rules.modules):
                        reasons.append(f"looks up {name!r} by name ({where(node)})")
    return reasons


@functools.lru_cache(maxsize=64)  # once per grader process however many checks ask
def _parsed(source: str) -> tuple[ast.Module, list[str]] | None:
    """A cell's tree, IPython's ``%magic`` and ``!shell`` lines blanked; None when it does
    not parse or is too long."""
    if len(source) > MAX_PARSED_CELL:
        return None
    lines = ["" if x.lstrip().startswith(("%", "!")) else x for x in source.splitlines()]
    try:
        return ast.parse("\n".join(lines)), lines
    except (SyntaxError, ValueError, MemoryError, RecursionError):
        return None


def static_reasons_from_sources(name: str, sources: Sequence[str], kind: str) -> list[str]:
    """The source rules on the last top-level ``def``/``class`` called ``name`` in the
    notebook's code cells, as they run in order: for a class, each method (``Class.method``),
    and its bases and body outside the methods (``Class``)."""
    rules, found = forbidden(kind), None
    for parsed in (_parsed(s) for s in sources if isinstance(s, str)):
        for node in parsed[0].body if parsed else ():
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                found = (node, parsed[1]) if node.name == name else found
    if found is None:
        return []
    node, lines = found

    def segment(node: ast.AST) -> str:  # with its decorators
        first = min([node.lineno] + [d.lineno for d in getattr(node, "decorator_list", [])])
        return textwrap.dedent("\n".join(lines[first - 1 : node.end_lineno]))

    if not isinstance(node, ast.ClassDef):
        return list(dict.fromkeys(_source_reasons(name, segment(node), rules)))
    reasons, header = [], []
    for item in node.body:
        if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)):
            reasons += _source_reasons(f"{name}.{item.name}", segment(item), rules)
        else:
            header.append(item)
    bare = copy.copy(node)  # the class statement without its methods
    bare.body = header or [ast.Pass()]
    return list(dict.fromkeys(reasons + _source_reasons(name, ast.unparse(bare), rules)))


def delegation_reasons(obj: Any, kind: str) -> list[str]:
    """Why ``obj`` (a function or a class) is not its author's own work, before it runs: its
    MRO and the source of its functions (of every function in a class's body)."""
    rules, reasons = forbidden(kind), []
    functions = [(obj.__name__, obj)] if inspect.isfunction(obj) or inspect.ismethod(obj) else []
    if inspect.isclass(obj):
        for base in obj.__mro__[1:]:
            try:
                if _is_forbidden_file(inspect.getfile(base), rules):
                    reasons.append(
                        f"{obj.__name__} inherits from {base.__module__}.{base.__qualname__}"
                    )
            except (TypeError, OSError):
                continue
        for name, member in vars(obj).items():
            member = getattr(member, "__func__", getattr(member, "fget", member))
            if callable(member) and inspect.isfunction(inspect.unwrap(member)):
                functions.append((f"{obj.__name__}.{name}", member))
    for label, function in functions:
        try:
            source = textwrap.dedent(inspect.getsource(inspect.unwrap(function)))
        except (OSError, TypeError):
            continue
        reasons += _source_reasons(label, source, rules)
    return list(dict.fromkeys(reasons))


def refusal(name: str, reasons: Sequence[str]) -> GradingError:
    listed = "\n  - ".join(reasons[:6])
    return GradingError(
        f"{name} delegates to the reference, so this question scores 0:\n  - {listed}\n"
        "The exercise is to write the computation yourself with tensor operations."
    )


@functools.cache
def _warm_up() -> None:
    """The first ``torch.optim.Optimizer`` of a process imports hundreds of modules lazily;
    under the profiler that takes seconds, and it is not the answer's work."""
    torch.optim.Optimizer([torch.zeros(1, requires_grad=True)], {"lr": 0.0})


def call_watched(
    function: Callable[..., Any], *args: Any, kind: str, **kwargs: Any
) -> tuple[Any, Exception | None, list[str]]:
    """``function(*args, **kwargs)`` under the watch: (result, exception, forbidden calls)."""
    if kind == "optimizer":
        _warm_up()
    result = exception = None
    with Watch(forbidden(kind)) as watch:
        try:
            result = function(*args, **kwargs)
        except Exception as exc:
            exception = exc
    return result, exception, list(dict.fromkeys(watch.hits))

"""Delegation: an answer must not hand its work to the reference.

Three layers: the class's MRO (a base from ``torch.optim.adam``/``adamw`` or ``course_lib``);
the answer's source, parsed (imports of those modules, ``torch.optim.AdamW``,
``getattr(torch.optim, "AdamW")``), from the live object or, in the grader, from the
notebook's cells; and a profiler hook while the answer runs (:func:`call_watched`). In the
sandbox the reference is gone anyway (``kernel.py``); inline, these layers are all there is.
Standard library, torch and :mod:`.common` only: this module runs in the sandbox.
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
_ALLOWED = {str(_GRADING / f"{n}.py") for n in ("observe", "common", "delegation", "grading")}
_ROOTS = {"torch", "optim", "course_lib"}  # where a forbidden attribute is looked up
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


_ADAM = ("torch.optim.adam", "torch.optim.adamw", "torch.optim._functional")
_KINDS = {  # kind: (modules whose files are forbidden, identifiers, import prefixes)
    "optimizer": (
        _ADAM,
        "Adam AdamW adam adamw _functional _single_tensor_adam _multi_tensor_adam _fused_adam "
        "_fused_adam_ _fused_adamw_ adam_step adam_multi_tensor course_lib",
        _ADAM,
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
    """The rules of one kind of exercise: ``optimizer``, ``schedule``, ``course_lib``
    (computed once per process, before the first watch)."""
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
    if kind == "optimizer":  # the first Optimizer of a process imports hundreds of modules
        # lazily: under the profiler that takes seconds, and it is not the answer's work
        torch.optim.Optimizer([torch.zeros(1, requires_grad=True)], {"lr": 0.0})
    prefixes = ("course_lib", "autograder", *prefixes)
    return Rules(frozenset(files), frozenset(identifiers.split()), prefixes)


@functools.lru_cache(maxsize=4096)  # called for every Python call while an answer runs
def _is_forbidden_file(path: str | None, rules: Rules) -> bool:
    if not path or path.startswith("<"):
        return False
    try:
        path = str(Path(path).resolve())
    except OSError:
        return False
    return path not in _ALLOWED and any(
        path == f or (f.endswith(os.sep) and path.startswith(f)) for f in rules.files
    )


def _short_path(path: str) -> str:
    """``path`` from its last ``torch``, ``course_lib`` or ``transformers`` folder."""
    parts = Path(path).parts
    anchors = [i for i, part in enumerate(parts) if part in ("torch", "course_lib", "transformers")]
    return "/".join(parts[anchors[-1] if anchors else -1 :])


def _dotted(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return "?"


def _source_reasons(label: str, tree: ast.AST, lines: list[str], rules: Rules) -> list[str]:
    """The AST rules on ``tree``, a module or a definition in a source of ``lines``; line
    numbers count from the definition's first line (its first decorator)."""
    decorators = getattr(tree, "decorator_list", [])
    first, reasons = min([getattr(tree, "lineno", 1)] + [d.lineno for d in decorators]), []

    def where(node: ast.AST) -> str:
        line = lines[node.lineno - 1].strip() if 0 < node.lineno <= len(lines) else ""
        return f"{label}, line {node.lineno - first + 1}: `{textwrap.shorten(line, 80)}`"

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
            if node.attr in rules.identifiers and dotted.split(".")[0] in _ROOTS:
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
    parts = [(name, node)]
    if isinstance(node, ast.ClassDef):  # each method, then the class statement without them
        methods = [x for x in node.body if isinstance(x, (ast.FunctionDef, ast.AsyncFunctionDef))]
        bare = copy.copy(node)
        bare.body = [x for x in node.body if x not in methods]
        parts = [(f"{name}.{x.name}", x) for x in methods] + [(name, bare)]
    reasons = [r for label, part in parts for r in _source_reasons(label, part, lines, rules)]
    return list(dict.fromkeys(reasons))


def delegation_reasons(obj: Any, kind: str) -> list[str]:
    """Why ``obj`` (a function or a class) is not its author's own work, before it runs: its
    MRO and the source of its functions (of every function in a class's body)."""
    rules, reasons = forbidden(kind), []
    functions = [(obj.__name__, obj)] if inspect.isfunction(obj) or inspect.ismethod(obj) else []
    if inspect.isclass(obj):
        for base in obj.__mro__[1:]:  # by the file of the module defining it, as inspect finds it
            module = sys.modules.get(base.__module__)
            if _is_forbidden_file(getattr(module, "__file__", None), rules):
                reasons.append(
                    f"{obj.__name__} inherits from {base.__module__}.{base.__qualname__}"
                )
        for name, member in vars(obj).items():
            member = getattr(member, "__func__", getattr(member, "fget", member))
            if callable(member) and inspect.isfunction(inspect.unwrap(member)):
                functions.append((f"{obj.__name__}.{name}", member))
    for label, function in functions:
        try:
            source = textwrap.dedent(inspect.getsource(inspect.unwrap(function)))
            tree = ast.parse(source)
        except (OSError, TypeError, SyntaxError):
            continue
        reasons += _source_reasons(label, tree, source.splitlines(), rules)
    return list(dict.fromkeys(reasons))


def refusal(name: str, reasons: Sequence[str]) -> GradingError:
    listed = "\n  - ".join(reasons[:6])
    return GradingError(
        f"{name} delegates to the reference, so this question scores 0:\n  - {listed}\n"
        "The exercise is to write the computation yourself with tensor operations."
    )


def call_watched(
    function: Callable[..., Any], *args: Any, kind: str, **kwargs: Any
) -> tuple[Any, Exception | None, list[str]]:
    """``function(*args, **kwargs)`` under a profiler hook that records every call into
    forbidden code: (result, exception, forbidden calls). Python functions are caught by the
    file of their code (an alias as surely as the attribute), builtins
    (``torch._fused_adamw_``) and ``torch.ops`` overloads by name."""
    rules, hits, kernels = forbidden(kind), [], kind == "optimizer"  # the fused Adam kernels

    def hook(frame: Any, event: str, arg: Any) -> None:
        if len(hits) > 20:
            return
        if event == "call":
            code = frame.f_code
            if _is_forbidden_file(code.co_filename, rules):
                hits.append(f"{_short_path(code.co_filename)}:{code.co_name}")
            elif kernels and code.co_name == "__call__":
                owner = frame.f_locals.get("self")
                if type(owner).__module__ == "torch._ops" and "fused_adam" in str(owner):
                    hits.append(f"torch.ops {owner}")
        elif event == "c_call" and kernels:
            name = getattr(arg, "__name__", "") or ""
            if "fused_adam" in name:
                hits.append(f"torch.{name}")

    result = exception = None
    previous = sys.getprofile(), threading.getprofile()
    sys.setprofile(hook)
    threading.setprofile(hook)
    try:
        result = function(*args, **kwargs)
    except Exception as exc:
        exception = exc
    finally:
        if sys.getprofile() is not hook:
            hits.append("sys.setprofile (the answer replaced the grader's profiler)")
        try:
            sys.setprofile(previous[0])
        except TypeError:  # a C-level profiler (cProfile) cannot be handed back from Python
            sys.setprofile(None)
        threading.setprofile(previous[1])
    return result, exception, list(dict.fromkeys(hits))

"""An assignment as the grader knows it: the source notebook (``solutions/``), the release
(``exercises/``), and each test cell's plan (its checks, run in plan mode here).
"""

from __future__ import annotations

import ast
import contextlib
import dataclasses
import hashlib
import io
import json
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from autograder import grading

HERE = Path(__file__).resolve().parent
#: Changes the fingerprint of every graded submission (a rerun regrades them all).
GRADER_VERSION = "2"


class GradingRefused(RuntimeError):
    """The batch cannot be graded here (no sandbox, no gradebook entry, another run)."""


@dataclasses.dataclass(frozen=True)
class SourceCell:
    index: int
    grade_id: str | None
    role: str  # "locked" (runs as is), "solution", "test", "markdown" (any other cell type)
    source: str  # the instructor's source (tests with their hidden part)
    release: str  # what students were given (hidden tests stripped, solutions stubbed)
    points: float = 0.0


@dataclasses.dataclass(frozen=True)
class Assignment:
    name: str  # also the notebook's name, without .ipynb
    root: Path  # the course folder
    cells: tuple[SourceCell, ...]
    answers: dict[str, tuple[str, ...]]  # solution grade_id -> names it defines
    plans: dict[str, list[dict]]  # test grade_id -> requests (grading plan mode)
    fingerprint: str  # changes when anything that decides a score changes

    @property
    def tests(self) -> list[SourceCell]:
        return [c for c in self.cells if c.role == "test"]

    @property
    def max_score(self) -> float:
        return sum(c.points for c in self.tests)

    def folder(self, kind: str, student: str) -> Path:
        """``autograder/<kind>/<student>/<name>/``: kind is submitted, autograded or feedback."""
        return self.root / "autograder" / kind / student / self.name


def cell_text(cell: Any) -> str | None:
    source = cell.get("source") if isinstance(cell, dict) else None
    if isinstance(source, list) and all(isinstance(s, str) for s in source):
        return "".join(source)
    return source if isinstance(source, str) else None


def nbgrader_meta(cell: dict) -> dict:
    metadata = cell.get("metadata")
    meta = metadata.get("nbgrader") if isinstance(metadata, dict) else None
    return meta if isinstance(meta, dict) else {}


def _defined_names(source: str) -> tuple[str, ...]:
    """Top-level names a solution cell defines (functions, classes, assignments)."""
    names: list[str] = []
    for node in ast.parse(source).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.append(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names += [sub.id for t in targets for sub in ast.walk(t) if isinstance(sub, ast.Name)]
    return tuple(dict.fromkeys(names))


def _quiet_exec(source: str, namespace: dict, label: str) -> None:
    with contextlib.redirect_stdout(io.StringIO()):
        exec(compile(source, label, "exec"), namespace)


def host_tests(
    name: str, cells: Iterable[SourceCell], answers: dict[str, tuple[str, ...]], ref: Callable
) -> Iterator[tuple[int, SourceCell, dict[str, Any]]]:
    """The test cells in order, each with the namespace the notebook has built up to it, as
    the grader's process holds it: locked cells run (the instructor's code), each solution
    cell binds its names to ``ref(name)`` placeholders. Yields (position, cell, namespace).
    Plan and judge both walk the cells this way, so they see the same names."""
    # Every answer is bound from the start: in the notebook the names exist wherever the
    # student defined them (an answer retyped into a new cell included).
    namespace: dict[str, Any] = {"__name__": "__grader__"}
    namespace.update({n: ref(n) for names in answers.values() for n in names})
    for position, cell in enumerate(cells):
        if cell.role == "locked":
            _quiet_exec(cell.source, namespace, f"<{name}:{cell.grade_id}>")
        elif cell.role == "solution":
            namespace.update({n: ref(n) for n in answers[cell.grade_id]})
        elif cell.role == "test":
            yield position, cell, namespace


def load_assignment(root: Path, name: str) -> Assignment:
    paths = [root / folder / name / f"{name}.ipynb" for folder in ("solutions", "exercises")]
    for path in paths:
        if not path.is_file():
            raise GradingRefused(f"{path} does not exist: is {name!r} an assignment?")
    source, release = (json.loads(path.read_text(encoding="utf-8"))["cells"] for path in paths)
    released = {nbgrader_meta(c).get("grade_id"): cell_text(c) or "" for c in release}
    cells, answers = [], {}
    for index, cell in enumerate(source):
        meta, text = nbgrader_meta(cell), cell_text(cell) or ""
        grade_id = meta.get("grade_id")
        role = "test" if meta.get("grade") else "locked"
        if cell["cell_type"] != "code":
            role = "markdown"
        elif meta.get("solution"):
            role = "solution"
            answers[grade_id] = _defined_names(text)
        points = float(meta.get("points") or 0) if role == "test" else 0.0
        # A test cell always has its release.
        cells.append(SourceCell(index, grade_id, role, text, released.get(grade_id, ""), points))
    # The plan: what each test cell will ask the sandbox to observe. The test cells run here,
    # in the grader, with every answer replaced by a placeholder.
    plans: dict[str, list[dict]] = {}
    for _, cell, namespace in host_tests(name, cells, answers, grading.AnswerRef):
        with grading.planning() as requests:  # requests hold plain JSON already
            _quiet_exec(cell.source, namespace, f"<{name}:{cell.grade_id}>")
        plans[cell.grade_id] = list(requests)
    digest = hashlib.sha256(GRADER_VERSION.encode())
    for path in sorted([*paths, *HERE.glob("*.py"), *HERE.glob("stubs/*.py")]):
        digest.update(path.name.encode() + path.read_bytes())
    return Assignment(name, root, tuple(cells), answers, plans, digest.hexdigest())

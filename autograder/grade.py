"""Grade every submission of an assignment: sandboxed, in parallel, crash-safe.

    python autograder/grade.py ASSIGNMENT [--workers N] [--student ID ...] [--force]
    make grade ASSIGNMENT=adamw [WORKERS=2]

Reads ``autograder/submitted/<student>/<assignment>/``, writes nbgrader's gradebook
(``autograder/gradebook.db``), ``autograder/grades.csv`` (``nbgrader export``'s format),
feedback HTML per student (``autograder/feedback/<student>/<assignment>/``) and the graded
notebook for the instructor (``autograder/autograded/<student>/<assignment>/``).

How one submission is graded (the threat model is in the design notes):

1. **Read** the notebook without trusting it: invalid JSON, an nbformat 3 file (converted), a
   renamed notebook (the only ``.ipynb`` in the folder), cells with broken, empty or
   future-versioned nbgrader metadata each get a score and a reason, never a crash.
2. **Assemble** what runs from the *source* notebook: its locked cells (setup, tests) in their
   order, and the student's answer cells and extra cells in between. Deleted, edited or
   duplicated test cells therefore change nothing.
3. **Run** it in a bubblewrap sandbox (``sandbox.py``; ``harness.py`` inside): no network, no
   host files, an empty environment, a size-limited tmpfs as its only writable place, limits
   on wall clock, memory, processes, output and file size. ``torch.optim.Adam``/``AdamW`` are
   stub modules there, and ``course_lib`` holds only the observation side of the checks. At
   each test cell the sandbox records what the student's answers *do*, as plain numbers.
4. **Judge** outside the sandbox, in this process: the test cells' own code (with the hidden
   tests) runs here with ``course_lib.grading`` in judge mode; it recomputes the references and
   compares them with the recorded numbers. Nothing the student's process did (monkeypatched
   ``torch.allclose``, IPython hooks, objects equal to everything) takes part in a comparison.

Workers grade different submissions at once (a pool of processes, each with its own sandbox
uid); only the main process writes the gradebook, one submission per transaction, and then a
marker next to the graded notebook. A run killed at any point and started again grades what
has no valid marker and skips the rest, so every submission ends graded once; grading twice
gives the same scores (the checks are deterministic).
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import dataclasses
import hashlib
import html
import io
import json
import multiprocessing
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import sandbox  # noqa: E402 -- autograder/ is a folder of scripts, not a package

GRADER_VERSION = "2"
#: The grader's modules that the sandbox holds (copied as they are): what runs in the
#: student's process. Everything else of the grader stays outside.
SANDBOX_MODULES = ("__init__.py", "grading.py", "common.py", "observe.py", "delegation.py")
#: torch's modules bound over by the files of autograder/stubs/ in the sandbox.
STUBS = ("adam", "adamw")
MAX_NOTEBOOK_BYTES = 20 * sandbox.MiB
STUDENT_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@+-]{0,99}$")
SANDBOX_HOME = "/home/student"
UID_BASE = 61000  # worker i runs its sandboxes as uid UID_BASE + i (when started as root)
LOCK_NAME = ".grade.lock"
MARKER_NAME = ".graded.json"


class GradingRefused(RuntimeError):
    """The batch cannot be graded here (no sandbox, no gradebook entry, another run)."""


# --------------------------------------------------------------------------------------
# The assignment, from the instructor's files.
# --------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class SourceCell:
    index: int
    cell_type: str  # "code" or "markdown"
    grade_id: str | None
    role: str  # "locked" (runs as is), "solution", "test", "markdown"
    source: str  # the instructor's source (tests with their hidden part)
    release: str  # what students were given (hidden tests stripped, solutions stubbed)
    points: float


@dataclasses.dataclass(frozen=True)
class Assignment:
    name: str
    notebook: str  # the notebook's name without .ipynb
    cells: tuple[SourceCell, ...]
    answers: dict[str, tuple[str, ...]]  # solution grade_id -> names it defines
    plans: dict[str, list[dict]]  # test grade_id -> requests (course_lib.grading plan mode)
    fingerprint: str  # changes when anything that decides a score changes

    @property
    def tests(self) -> list[SourceCell]:
        return [c for c in self.cells if c.role == "test"]

    @property
    def max_score(self) -> float:
        return sum(c.points for c in self.tests)


def _cell_text(cell: Any) -> str | None:
    source = cell.get("source") if isinstance(cell, dict) else None
    if isinstance(source, list) and all(isinstance(s, str) for s in source):
        return "".join(source)
    return source if isinstance(source, str) else None


def _nbgrader_meta(cell: dict) -> dict:
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
            for target in targets:
                for sub in ast.walk(target):
                    if isinstance(sub, ast.Name):
                        names.append(sub.id)
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
    namespace: dict[str, Any] = {"__name__": "__grader__"}
    for position, cell in enumerate(cells):
        if cell.role == "locked":
            _quiet_exec(cell.source, namespace, f"<{name}:{cell.grade_id}>")
        elif cell.role == "solution":
            namespace.update({n: ref(n) for n in answers[cell.grade_id]})
        elif cell.role == "test":
            yield position, cell, namespace


def load_assignment(root: Path, name: str) -> Assignment:
    from autograder import grading

    source_path = root / "solutions" / name / f"{name}.ipynb"
    release_path = root / "exercises" / name / f"{name}.ipynb"
    for path in (source_path, release_path):
        if not path.is_file():
            raise GradingRefused(f"{path} does not exist: is {name!r} an assignment?")
    source = json.loads(source_path.read_text(encoding="utf-8"))
    release = json.loads(release_path.read_text(encoding="utf-8"))
    released = {_nbgrader_meta(c).get("grade_id"): _cell_text(c) or "" for c in release["cells"]}
    cells, answers = [], {}
    for index, cell in enumerate(source["cells"]):
        meta = _nbgrader_meta(cell)
        grade_id = meta.get("grade_id")
        text = _cell_text(cell) or ""
        if cell["cell_type"] != "code":
            role = "markdown"
        elif meta.get("solution"):
            role = "solution"
            answers[grade_id] = _defined_names(text)
        elif meta.get("grade"):
            role = "test"
        else:
            role = "locked"
        cells.append(
            SourceCell(
                index=index,
                cell_type=cell["cell_type"],
                grade_id=grade_id,
                role=role,
                source=text,
                release=released.get(grade_id, ""),  # a test cell always has its release
                points=float(meta.get("points") or 0) if role == "test" else 0.0,
            )
        )
    # The plan: what each test cell will ask the sandbox to observe. The test cells run here,
    # in the grader, with every answer replaced by a placeholder.
    plans: dict[str, list[dict]] = {}
    for _, cell, namespace in host_tests(name, cells, answers, grading.AnswerRef):
        with grading.planning() as requests:  # requests hold plain JSON already
            _quiet_exec(cell.source, namespace, f"<{name}:{cell.grade_id}>")
        plans[cell.grade_id] = list(requests)
    digest = hashlib.sha256(GRADER_VERSION.encode())
    code = [HERE / "grade.py", HERE / "harness.py", HERE / "sandbox.py"]
    for path in sorted([source_path, release_path, *code, *HERE.glob("*.py")]):
        digest.update(path.name.encode() + path.read_bytes())
    return Assignment(
        name=name,
        notebook=source_path.stem,
        cells=tuple(cells),
        answers=answers,
        plans=plans,
        fingerprint=digest.hexdigest(),
    )


# --------------------------------------------------------------------------------------
# A submission, read without trusting it.
# --------------------------------------------------------------------------------------


@dataclasses.dataclass
class StudentCell:
    cell_type: str
    source: str
    grade_id: str | None


@dataclasses.dataclass
class Submission:
    cells: list[StudentCell]
    notes: list[str]
    path: Path


class Unreadable(Exception):
    """The submission cannot be graded at all; the message is the reason shown."""


def find_notebook(folder: Path, assignment: Assignment) -> tuple[Path, list[str]]:
    expected = folder / f"{assignment.notebook}.ipynb"
    if expected.is_file() and not expected.is_symlink():
        return expected, []
    found = sorted(p for p in folder.glob("*.ipynb") if p.is_file() and not p.is_symlink())
    if len(found) == 1:
        return found[0], [
            f"the notebook is named {found[0].name}, not {expected.name}; it was graded anyway"
        ]
    if not found:
        raise Unreadable(f"no notebook: {expected.name} is missing from the submission")
    names = ", ".join(p.name for p in found[:5])
    raise Unreadable(f"{expected.name} is missing and there are several notebooks ({names})")


def read_submission(folder: Path, assignment: Assignment) -> Submission:
    path, notes = find_notebook(folder, assignment)
    size = path.stat().st_size
    if size > MAX_NOTEBOOK_BYTES:
        raise Unreadable(
            f"{path.name} is {size / sandbox.MiB:.0f} MiB; notebooks over "
            f"{MAX_NOTEBOOK_BYTES // sandbox.MiB} MiB are not graded (clear the outputs)"
        )
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise Unreadable(
            f"{path.name} is not UTF-8 text ({error.reason} at byte {error.start})"
        ) from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise Unreadable(
            f"{path.name} is not valid JSON (line {error.lineno}, column {error.colno}: "
            f"{error.msg}); was it edited outside Jupyter?"
        ) from None
    if not isinstance(data, dict):
        raise Unreadable(f"{path.name} is JSON but not a notebook (no cells)")
    major = data.get("nbformat")
    if major == 3:
        import nbformat

        try:
            data = json.loads(nbformat.writes(nbformat.reads(text, as_version=4)))
        except Exception as error:
            raise Unreadable(f"{path.name} is an nbformat 3 notebook that could not be "
                             f"converted to nbformat 4: {error}") from None  # fmt: skip
        notes.append("the notebook was in the old nbformat 3 and was converted to nbformat 4")
    elif major != 4:
        raise Unreadable(
            f"{path.name} has nbformat {major!r}; only nbformat 4 (and 3, converted) is graded"
        )
    cells_in = data.get("cells")
    if not isinstance(cells_in, list):
        raise Unreadable(f"{path.name} is JSON but not a notebook: it has no list of cells")
    cells, skipped = [], 0
    for cell in cells_in:
        text_ = _cell_text(cell)
        if (
            not isinstance(cell, dict)
            or text_ is None
            or cell.get("cell_type")
            not in (
                "code",
                "markdown",
                "raw",
            )
        ):
            skipped += 1
            continue
        grade_id = _nbgrader_meta(cell).get("grade_id")
        cells.append(
            StudentCell(cell["cell_type"], text_, grade_id if isinstance(grade_id, str) else None)
        )
    if skipped:
        notes.append(f"{skipped} malformed cell(s) were ignored")
    return Submission(cells=cells, notes=notes, path=path)


def _norm(source: str) -> str:
    return "\n".join(line.rstrip() for line in source.strip().splitlines())


def assemble(assignment: Assignment, submission: Submission) -> tuple[list[dict], list[str]]:
    """What runs, in order: the source's locked cells, the student's answers and extras.

    Each item: {"kind": "code"|"test"|"markdown", "source", "origin": "course"|"student",
    "grade_id", "label"}. A student cell that carries a solution cell's grade_id replaces
    that cell; one with no (or an unknown) grade_id runs after the cell it followed in the
    student's notebook; cells carrying a locked cell's grade_id are ignored (the original is
    used), and so are exact copies of locked cells without metadata.
    """
    notes: list[str] = []
    by_id = {c.grade_id: c for c in assignment.cells if c.grade_id}
    locked_sources = {_norm(c.release) for c in assignment.cells if c.role != "solution"}
    first_solution = min(
        (c.index for c in assignment.cells if c.role == "solution"), default=len(assignment.cells)
    )
    placed: dict[int, list[StudentCell]] = {}  # source index -> student cells after it
    answer_cells: dict[str, StudentCell] = {}
    seen_locked: dict[str, int] = {}
    position = first_solution
    for cell in submission.cells:
        known = by_id.get(cell.grade_id) if cell.grade_id else None
        if known is not None:
            position = known.index
            if known.role == "solution" and cell.cell_type == "code":
                if known.grade_id in answer_cells:
                    notes.append(
                        f"the answer cell {known.grade_id!r} appears more than once; the copies "
                        "ran after the first one"
                    )
                    placed.setdefault(position, []).append(cell)
                else:
                    answer_cells[known.grade_id] = cell
                continue
            seen_locked[known.grade_id] = seen_locked.get(known.grade_id, 0) + 1
            if _norm(cell.source) != _norm(known.release):
                notes.append(
                    f"the locked cell {known.grade_id!r} was edited; the original was used"
                )
            continue
        if cell.cell_type != "code" or not cell.source.strip():
            continue
        if _norm(cell.source) in locked_sources:
            continue  # a copy of a locked cell whose metadata was lost
        placed.setdefault(position, []).append(cell)
    recognised = bool(answer_cells or seen_locked)
    for cell in assignment.cells if recognised else ():
        if cell.grade_id and cell.role != "solution" and cell.role != "markdown":
            count = seen_locked.get(cell.grade_id, 0)
            if count == 0:
                notes.append(
                    f"the locked cell {cell.grade_id!r} was deleted; the original was used"
                )
            elif count > 1:
                notes.append(
                    f"the locked cell {cell.grade_id!r} was duplicated; it ran once, as given"
                )
    missing = [g for g in assignment.answers if g not in answer_cells]
    if missing and not answer_cells and any(placed.values()):
        notes.append(
            "no cell carries the assignment's metadata (was it copied into a new notebook?); "
            "all code cells ran in their order, after the setup cells"
        )
    elif missing:
        notes.append(
            "answer cell(s) not found: " + ", ".join(missing) + " (the empty template was used)"
        )

    items: list[dict] = []
    extra = 0

    def add_extras(position: int) -> None:
        nonlocal extra
        for student_cell in placed.get(position, []):
            extra += 1
            items.append({"kind": "code", "source": student_cell.source, "origin": "student",
                          "grade_id": None, "label": f"your extra cell {extra}"})  # fmt: skip

    for cell in assignment.cells:
        if cell.role == "markdown":
            items.append({"kind": "markdown", "source": cell.release, "origin": "course",
                          "grade_id": cell.grade_id, "label": cell.grade_id})  # fmt: skip
        elif cell.role == "locked":
            items.append({"kind": "code", "source": cell.source, "origin": "course",
                          "grade_id": cell.grade_id, "label": f"the course's cell {cell.grade_id!r}"})  # fmt: skip
        elif cell.role == "solution":
            mine = answer_cells.get(cell.grade_id)
            items.append({"kind": "code", "source": mine.source if mine else cell.release,
                          "origin": "student" if mine else "course", "grade_id": cell.grade_id,
                          "label": f"your answer cell {cell.grade_id!r}"})  # fmt: skip
        else:
            items.append({"kind": "test", "source": cell.release, "origin": "course",
                          "grade_id": cell.grade_id, "label": f"the test {cell.grade_id!r}"})  # fmt: skip
        add_extras(cell.index)
    return items, notes


# --------------------------------------------------------------------------------------
# Running in the sandbox.
# --------------------------------------------------------------------------------------


def build_sandbox_lib(target: Path) -> dict[str, Path]:
    """The read-only folder the sandbox imports from, and the stub modules' binds.

    It holds the grader's files that run in the student's process, as they are: the harness
    and the observation side of the checks (``grading``, ``observe``, ``common``,
    ``delegation``). The declarations and judges (``checks``, ``judge``), which hold the
    references, are not there, and neither is ``course_lib``.
    """
    import torch.optim

    (target / "autograder").mkdir(parents=True)
    for name in SANDBOX_MODULES:
        shutil.copy2(HERE / name, target / "autograder" / name)
    shutil.copy2(HERE / "harness.py", target / "harness.py")
    optim = Path(torch.optim.__file__).resolve().parent
    binds = {str(optim / f"{module}.py"): HERE / "stubs" / f"{module}.py" for module in STUBS}
    for path in target.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)
    target.chmod(0o755)
    return binds


@dataclasses.dataclass(frozen=True)
class Settings:
    root: Path
    limits: sandbox.Limits
    allow_unsafe: bool = False


@dataclasses.dataclass
class Outcome:
    """What grading one submission produced (sent from a worker to the main process)."""

    student: str
    status: str  # "graded" or "unreadable"
    scores: dict[str, float]
    messages: dict[str, str]  # test grade_id -> why it failed (or passed)
    notes: list[str]
    reason: str | None  # for unreadable submissions, or how the run ended abnormally
    seconds: float
    fingerprint: str
    warning: str | None = None


class _Paths:
    def __init__(self, settings: Settings) -> None:
        self.host = sorted(
            {
                str(settings.root.resolve()),
                str(Path(sys.prefix).resolve()),
                os.path.abspath(sys.prefix),
                str(Path(sys.base_prefix).resolve()),
                str(HERE),
                os.path.expanduser("~"),
            },
            key=len,
            reverse=True,
        )

    def scrub(self, text: str, extra: tuple[str, ...] = ()) -> str:
        """Replace the instructor's paths (course, Python, home, scratch) in ``text``."""
        for path in sorted(extra, key=len, reverse=True) + self.host:
            if len(path) > 1:
                text = text.replace(path, "…")
        return text


def _read_records(data: bytes, count: int) -> tuple[dict[int, dict], bool, bool]:
    """Parse the sandbox's JSON lines (untrusted); keep well-formed cell and test records."""
    records: dict[int, dict] = {}
    ready = done = False
    for line in data.splitlines():
        try:
            record = json.loads(line)
        except (ValueError, RecursionError):
            continue
        if not isinstance(record, dict):
            continue
        kind, index = record.get("type"), record.get("index")
        if kind == "ready":
            ready = True
        elif kind == "done":
            done = True
        elif kind in ("cell", "test") and isinstance(index, int) and 0 <= index < count:
            records.setdefault(index, record)  # the first record of a cell is the harness's
    return records, ready, done


def _test_entries(record: dict | None) -> list[dict] | None:
    if record is None or record.get("type") != "test":
        return None
    entries = record.get("entries")
    if not isinstance(entries, list):
        return None
    return [e for e in entries if isinstance(e, dict)]


def _how_it_ended(result: sandbox.SandboxResult, limits: sandbox.Limits) -> str:
    if result.timed_out:
        return f"it ran longer than the time limit of {limits.wall_seconds:g} s and was stopped"
    code = result.returncode
    if code > 128 and code - 128 in {s.value for s in signal.Signals}:
        code = -(code - 128)  # bwrap reports its child's death by signal N as 128 + N
    if code < 0:
        name = signal.Signals(-code).name
        why = {
            "SIGKILL": "killed (its own kill, or the memory limit)",
            "SIGXFSZ": "stopped for writing a file over the size limit",
        }
        return f"its process was {why.get(name, f'killed by {name}')}"
    if code != 0:
        return f"its process exited with code {code} (sys.exit, os._exit or a crash)"
    return "its process ended early"


def grade_one(
    assignment: Assignment,
    settings: Settings,
    student: str,
    lib: Path,
    binds: dict[str, Path],
    uid: int,
) -> tuple[Outcome, str]:
    """Grade one submission; returns the outcome and the feedback notebook (JSON text)."""
    from autograder import grading

    start = time.monotonic()
    root = settings.root
    folder = root / "autograder" / "submitted" / student / assignment.name
    paths = _Paths(settings)
    zero = {c.grade_id: 0.0 for c in assignment.tests}
    fingerprint = _folder_fingerprint(folder, assignment)
    try:
        submission = read_submission(folder, assignment)
    except (Unreadable, OSError) as error:
        reason = paths.scrub(str(error))
        outcome = Outcome(student, "unreadable", zero, {}, [], reason, time.monotonic() - start,
                          fingerprint=fingerprint)  # fmt: skip
        return outcome, _feedback_notebook(assignment, outcome, [], {}, paths)
    items, notes = assemble(assignment, submission)
    notes = submission.notes + notes
    run_cells = []
    for item in items:
        if item["kind"] == "test":
            run_cells.append({"kind": "test", "requests": assignment.plans[item["grade_id"]]})
        elif item["kind"] == "code":
            run_cells.append({"kind": "code", "source": item["source"]})
        else:
            run_cells.append({"kind": "skip"})

    with tempfile.TemporaryDirectory(prefix="grade-") as tmp:
        scratch = Path(tmp, "in")
        scratch.mkdir()
        Path(tmp).chmod(0o755)
        (scratch / "run.json").write_text(json.dumps({"cells": run_cells}))
        budget = settings.limits.max_disk_bytes // 2  # data files handed in beside it
        for extra in sorted(folder.iterdir()):
            if extra.is_file() and not extra.is_symlink() and extra.suffix != ".ipynb":
                size = extra.stat().st_size
                if size <= min(settings.limits.max_file_bytes, budget):
                    shutil.copy2(extra, scratch / extra.name)
                    budget -= size
                else:
                    notes.append(f"{extra.name} was not copied: the files are over the limit")
        scratch.chmod(0o755)
        result = sandbox.run_sandboxed(
            ["python", "-I", str(lib / "harness.py"), str(scratch / "run.json"), str(lib)],
            scratch=scratch,
            readonly=[lib],
            limits=settings.limits,
            env={"COURSE_DEVICE": "cpu", "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"},
            allow_unsafe=settings.allow_unsafe,
            uid=uid,
            binds=binds,
            hide=[str(Path(next(iter(binds))).parent / "__pycache__")] if binds else [],
            workdir=SANDBOX_HOME,
            results=True,
        )
        scratch_paths = (str(scratch), tmp)
    records, ready, done = _read_records(result.results, len(run_cells))
    ended = None
    if not done:
        last = max((i for i in records), default=-1)
        running = next(
            (items[i]["label"] for i in range(last + 1, len(items)) if items[i]["kind"] == "code"),
            None,
        )
        ended = _how_it_ended(result, settings.limits)
        if not ready:
            ended += " before the first cell ran"
        elif running:
            ended += f", while running {running}"
        if result.results_truncated:
            ended = "it wrote more results than the grader accepts; " + ended
        stderr = paths.scrub(result.stderr.decode(errors="replace"), scratch_paths).strip()
        if stderr and not ready:
            ended += ": " + textwrap.shorten(stderr, 300)

    # Judge: the test cells' own code, here, in judge mode, on the recorded numbers.
    sources = [c.source for c in submission.cells if c.cell_type == "code"]
    refs = {
        n: grading.AnswerRef(n, sources) for names in assignment.answers.values() for n in names
    }
    scores, messages, outputs = {}, {}, {}
    previous = os.environ.get("COURSE_DEVICE")
    os.environ["COURSE_DEVICE"] = "cpu"
    try:
        walk = host_tests(assignment.name, _source_order(assignment, items), assignment.answers,
                          refs.__getitem__)  # fmt: skip
        for index, cell, namespace in walk:
            label = f"<{assignment.name}:{cell.grade_id}>"
            entries = _test_entries(records.get(index))
            if entries is None:
                with grading.planning():  # keeps the namespace as the notebook builds it
                    _quiet_exec(cell.source, namespace, label)
                scores[cell.grade_id] = 0.0
                messages[cell.grade_id] = (
                    f"not run: your notebook did not reach this test ({ended or 'unknown'})"
                )
                continue
            buffer = io.StringIO()
            try:
                with grading.judging(entries), contextlib.redirect_stdout(buffer):
                    exec(compile(cell.source, label, "exec"), namespace)
            except Exception as error:
                scores[cell.grade_id] = 0.0
                text = str(error) or type(error).__name__
                if not isinstance(error, AssertionError):
                    text = f"{type(error).__name__}: {text}"
                messages[cell.grade_id] = paths.scrub(text, scratch_paths)
            else:
                scores[cell.grade_id] = cell.points
                messages[cell.grade_id] = ""
            outputs[cell.grade_id] = paths.scrub(buffer.getvalue(), scratch_paths)
    finally:
        if previous is None:
            os.environ.pop("COURSE_DEVICE", None)
        else:
            os.environ["COURSE_DEVICE"] = previous
    outcome = Outcome(
        student=student,
        status="graded",
        scores=scores,
        messages=messages,
        notes=[paths.scrub(n) for n in notes],
        reason=ended,
        seconds=time.monotonic() - start,
        fingerprint=fingerprint,
        warning=result.warning,
    )
    cell_outputs = {}
    for index, record in records.items():
        if record.get("type") == "cell":
            parts = []
            for key in ("stdout", "stderr", "error"):
                value = record.get(key)
                if isinstance(value, str) and value:
                    parts.append(paths.scrub(value, scratch_paths)[:30_000])
            cell_outputs[index] = "\n".join(parts)
    feedback = _feedback_notebook(assignment, outcome, items, cell_outputs, paths, outputs)
    return outcome, feedback


def _source_order(assignment: Assignment, items: list[dict]) -> list[SourceCell]:
    """For every item, the source cell it stands for (student extras count as locked no-ops)."""
    by_id = {c.grade_id: c for c in assignment.cells}
    noop = SourceCell(-1, "code", None, "extra", "", "", 0.0)
    return [by_id[i["grade_id"]] if i["grade_id"] in by_id else noop for i in items]


def _folder_fingerprint(folder: Path, assignment: Assignment) -> str:
    digest = hashlib.sha256(assignment.fingerprint.encode())
    if folder.is_dir():
        for file in sorted(folder.iterdir()):
            if file.is_file() and not file.is_symlink():
                digest.update(file.name.encode() + b"\0" + file.read_bytes())
    return digest.hexdigest()


# --------------------------------------------------------------------------------------
# Feedback.
# --------------------------------------------------------------------------------------


def _feedback_notebook(
    assignment: Assignment,
    outcome: Outcome,
    items: list[dict],
    cell_outputs: dict[int, str],
    paths: _Paths,
    test_outputs: dict[str, str] | None = None,
) -> str:
    import nbformat
    from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output

    total = sum(outcome.scores.values())
    lines = [f"# Feedback: {assignment.name}", "",
             f"**Score: {total:g} / {assignment.max_score:g}**", ""]  # fmt: skip
    if outcome.status == "unreadable":
        lines += [
            f"Your submission could not be graded: {html.escape(outcome.reason or '', quote=False)}."
        ]
    else:
        for test in assignment.tests:
            mark = "passed" if outcome.scores.get(test.grade_id) == test.points else "failed"
            lines.append(
                f"- `{test.grade_id}`: {outcome.scores.get(test.grade_id, 0):g} / "
                f"{test.points:g} ({mark})"
            )
        if outcome.reason:
            lines += [
                "",
                f"Your notebook did not run to the end: {html.escape(outcome.reason, quote=False)}.",
            ]
    if outcome.notes:
        lines += ["", "Notes:"] + [f"- {html.escape(n, quote=False)}" for n in outcome.notes]
    cells = [new_markdown_cell("\n".join(lines))]
    for index, item in enumerate(items):
        if item["kind"] == "markdown":
            cells.append(new_markdown_cell(item["source"]))
            continue
        cell = new_code_cell(item["source"])
        if item["kind"] == "code":
            text = cell_outputs.get(index)
            if text:
                cell.outputs = [new_output("stream", name="stdout", text=text)]
        else:
            gid = item["grade_id"]
            test = next(t for t in assignment.tests if t.grade_id == gid)
            score = outcome.scores.get(gid, 0.0)
            text = (test_outputs or {}).get(gid, "")
            verdict = f"{score:g} / {test.points:g} points"
            if outcome.messages.get(gid):
                verdict += ": " + outcome.messages[gid]
            cell.outputs = [new_output("stream", name="stdout", text=(text + verdict).strip())]
        cells.append(cell)
    notebook = new_notebook(cells=cells, metadata={"language_info": {"name": "python"}})
    return nbformat.writes(notebook)


def feedback_html(notebook_json: str) -> str:
    import nbformat
    from nbconvert import HTMLExporter

    exporter = HTMLExporter(template_name="lab")
    body, _ = exporter.from_notebook_node(nbformat.reads(notebook_json, as_version=4))
    return body


_EMPTY_NOTEBOOK = '{"cells": [], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}'


def _atomic_write(path: Path, data: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


# --------------------------------------------------------------------------------------
# Workers.
# --------------------------------------------------------------------------------------

_WORKER: dict[str, Any] = {}


def _init_worker(uids: Any, settings: Settings, lib: str, binds: dict):
    try:  # die with the main process, even when it is SIGKILLed
        import ctypes

        ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the main process's to handle
    os.environ["COURSE_DEVICE"] = "cpu"
    import torch

    torch.set_num_threads(1)
    from autograder import checks  # noqa: F401 -- imported once, before the first task

    feedback_html(_EMPTY_NOTEBOOK)  # loads nbconvert's template while the main process prepares

    _WORKER.update(uid=uids.get(), settings=settings, lib=Path(lib),
                   binds={k: Path(v) for k, v in binds.items()})  # fmt: skip


def _work(assignment: Assignment, student: str) -> Outcome:
    w = _WORKER
    outcome, notebook = grade_one(
        assignment, w["settings"], student, w["lib"], w["binds"], w["uid"]
    )
    page = feedback_html(notebook)
    root = w["settings"].root
    name = assignment.name
    _atomic_write(root / "autograder" / "feedback" / student / name / f"{name}.html", page)
    _atomic_write(root / "autograder" / "autograded" / student / name / f"{name}.ipynb", notebook)
    return outcome


# --------------------------------------------------------------------------------------
# The gradebook, the markers, the CSV (main process only).
# --------------------------------------------------------------------------------------


def _gradebook(root: Path):
    from nbgrader.api import Gradebook

    return Gradebook(f"sqlite:///{root / 'autograder' / 'gradebook.db'}", "adam-course")


def _nbgrader(root: Path, *args: str) -> subprocess.CompletedProcess:
    bin_dir = str(Path(sys.executable).parent)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ.get('PATH', '')}"}
    return subprocess.run(
        [str(Path(bin_dir) / "nbgrader"), *args, f"--CourseDirectory.root={root}",
         f"--CourseDirectory.db_url=sqlite:///{root / 'autograder' / 'gradebook.db'}"],
        cwd=root / "autograder", env=env, capture_output=True, text=True, check=False,
    )  # fmt: skip


def ensure_in_gradebook(root: Path, assignment: Assignment) -> None:
    """The gradebook must know the assignment's test cells; record them if it does not."""
    from nbgrader.api import MissingEntry

    with _gradebook(root) as gb:
        try:
            gb.find_assignment(assignment.name)
            known = {
                c.name for c in gb.find_notebook(assignment.notebook, assignment.name).grade_cells
            }
        except MissingEntry:
            known = set()
    if {t.grade_id for t in assignment.tests} <= known:
        return
    print(f"recording {assignment.name} in the gradebook (nbgrader generate_assignment)")
    result = _nbgrader(root, "generate_assignment", assignment.name, "--force")
    if result.returncode != 0:
        raise GradingRefused(
            "nbgrader generate_assignment failed:\n" + (result.stderr or result.stdout)[-2000:]
        )


def _marker_path(root: Path, student: str, assignment: Assignment) -> Path:
    return root / "autograder" / "autograded" / student / assignment.name / MARKER_NAME


def already_graded(root: Path, student: str, assignment: Assignment, gb: Any) -> bool:
    """A valid marker, matching the submission as it is now and the gradebook's scores."""
    from nbgrader.api import MissingEntry

    marker = _marker_path(root, student, assignment)
    try:
        recorded = json.loads(marker.read_text())
    except (OSError, ValueError):
        return False
    folder = root / "autograder" / "submitted" / student / assignment.name
    if recorded.get("fingerprint") != _folder_fingerprint(folder, assignment):
        return False
    feedback = root / "autograder" / "feedback" / student / assignment.name
    if not (feedback / f"{assignment.name}.html").is_file():
        return False
    try:
        for gid, score in recorded.get("scores", {}).items():
            grade = gb.find_grade(gid, assignment.notebook, assignment.name, student)
            if grade.auto_score != score:
                return False
    except MissingEntry:
        return False
    return True


def record(root: Path, assignment: Assignment, outcome: Outcome, gb: Any) -> None:
    """One submission's scores into the gradebook (one commit), then its marker."""
    import warnings

    student = outcome.student
    warnings.filterwarnings("ignore", message=".*not in session.*")  # nbgrader's own, harmless
    gb.update_or_create_student(student)
    kwargs = {}
    stamp = root / "autograder" / "submitted" / student / assignment.name / "timestamp.txt"
    if stamp.is_file():
        from nbgrader import utils

        try:
            kwargs["timestamp"] = utils.parse_utc(stamp.read_text().strip())
        except Exception:
            pass
    gb.update_or_create_submission(assignment.name, student, **kwargs)
    for test in assignment.tests:
        grade = gb.find_grade(test.grade_id, assignment.notebook, assignment.name, student)
        grade.auto_score = float(outcome.scores.get(test.grade_id, 0.0))
        grade.needs_manual_grade = False
    gb.db.commit()
    marker = {"fingerprint": outcome.fingerprint, "scores": outcome.scores,
              "grader": GRADER_VERSION, "status": outcome.status}  # fmt: skip
    _atomic_write(_marker_path(root, student, assignment), json.dumps(marker, indent=1))


def export_csv(root: Path) -> Path:
    """``autograder/grades.csv`` as ``nbgrader export`` writes it (its own CSV plugin, run
    in this process: starting nbgrader would take seconds), replaced atomically."""
    from nbgrader.plugins import CsvExportPlugin

    path = root / "autograder" / "grades.csv"
    tmp = path.with_name(f".grades.csv.{os.getpid()}.tmp")
    plugin = CsvExportPlugin()
    plugin.to = str(tmp)
    with contextlib.redirect_stdout(io.StringIO()), _gradebook(root) as gb:
        plugin.export(gb)
    os.replace(tmp, path)
    return path


# --------------------------------------------------------------------------------------
# The batch.
# --------------------------------------------------------------------------------------


class Progress:
    def __init__(self, total: int, stream: Any = sys.stderr) -> None:
        self.total, self.done, self.failed = total, 0, 0
        self.start = time.monotonic()
        self.stream = stream
        self.tty = hasattr(stream, "isatty") and stream.isatty()

    def update(self, outcome: Outcome, score: float, max_score: float) -> None:
        self.done += 1
        self.failed += outcome.status != "graded" or bool(outcome.reason)
        elapsed = time.monotonic() - self.start
        eta = elapsed / self.done * (self.total - self.done)
        width = 30
        filled = int(width * self.done / max(self.total, 1))
        bar = "#" * filled + "." * (width - filled)
        line = (
            f"[{bar}] {self.done}/{self.total}  {elapsed:5.0f} s elapsed, ~{eta:.0f} s left  "
            f"| {outcome.student}: {score:g}/{max_score:g} ({outcome.seconds:.1f} s)"
        )
        if self.tty:
            self.stream.write("\r" + line[:150].ljust(150))
            if self.done == self.total:
                self.stream.write("\n")
        else:
            self.stream.write(line + "\n")
        self.stream.flush()


def discover(
    root: Path, assignment: Assignment, only: list[str] | None
) -> tuple[list[str], list[str]]:
    base = root / "autograder" / "submitted"
    students, rejected = [], []
    if base.is_dir():
        for folder in sorted(base.iterdir()):
            if not (folder / assignment.name).is_dir():
                continue
            if not STUDENT_ID.match(folder.name):
                rejected.append(folder.name)
                continue
            students.append(folder.name)
    if only:
        unknown = sorted(set(only) - set(students))
        if unknown:
            raise GradingRefused(f"no submission of {assignment.name} for: {', '.join(unknown)}")
        students = [s for s in students if s in only]
    return students, rejected


def grade_batch(
    root: Path,
    assignment_name: str,
    *,
    workers: int,
    limits: sandbox.Limits,
    allow_unsafe: bool = False,
    force: bool = False,
    only: list[str] | None = None,
    out: Any = sys.stdout,
) -> dict[str, Outcome]:
    root = root.resolve()
    ok, why = sandbox.bwrap_status()
    if not ok and not allow_unsafe:
        raise GradingRefused(
            f"REFUSING TO GRADE: no working bubblewrap sandbox on this machine: {why}. Student "
            "code would run with your permissions. Install bubblewrap (apt-get install "
            "bubblewrap), or pass --allow-unsafe to grade WITHOUT isolation (trusted "
            "submissions only)."
        )
    if not ok:
        print(f"WARNING: grading WITHOUT a sandbox ({why}); --allow-unsafe was given", file=out)
    lock_path = root / "autograder" / LOCK_NAME
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    import fcntl

    lock = open(lock_path, "w")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise GradingRefused(f"another grading run holds {lock_path}; wait for it") from None
    try:
        return _grade_locked(root, assignment_name, workers, limits, allow_unsafe, force, only, out)
    finally:
        lock.close()


def _grade_locked(root, assignment_name, workers, limits, allow_unsafe, force, only, out):
    os.environ["COURSE_DEVICE"] = "cpu"
    with tempfile.TemporaryDirectory(prefix="grade-lib-") as lib_tmp:
        Path(lib_tmp).chmod(0o755)
        lib = Path(lib_tmp, "lib")
        lib.mkdir()
        binds = build_sandbox_lib(lib)
        settings = Settings(root=root, limits=limits, allow_unsafe=allow_unsafe)
        pool = _Pool(workers, settings, lib, binds)  # workers start (import torch) meanwhile
        try:
            assignment = load_assignment(root, assignment_name)
            ensure_in_gradebook(root, assignment)
            students, rejected = discover(root, assignment, only)
            for name in rejected:
                print(f"skipped folder {name!r}: not a valid student id", file=out)
            with _gradebook(root) as gb:
                todo = [s for s in students if force or not already_graded(root, s, assignment, gb)]
            skipped = len(students) - len(todo)
            print(
                f"{assignment.name}: {len(students)} submission(s), {len(todo)} to grade"
                + (f", {skipped} already graded (--force regrades them)" if skipped else "")
                + f", {workers} worker(s), limits: {limits.wall_seconds:g} s, "
                f"{limits.memory_bytes / sandbox.GiB:g} GiB, {limits.max_processes} processes",
                file=out,
                flush=True,
            )
            outcomes = pool.grade(assignment, todo, out) if todo else {}
        finally:
            pool.close()
    _summary(assignment, outcomes, out)
    csv_path = export_csv(root)
    print(f"grades: {csv_path}", file=out)
    return outcomes


def _ready() -> None:
    """A first task per worker, so that they start while the main process prepares."""


class _Pool:
    """Worker processes (spawned: no state copied from this process), each with its uid."""

    def __init__(self, workers: int, settings: Settings, lib: Path, binds: dict) -> None:
        self.workers, self.settings = workers, settings
        self.context = multiprocessing.get_context("spawn")
        self.initargs = (settings, str(lib), {k: str(v) for k, v in binds.items()})
        self.executor = self._start()

    def _start(self) -> ProcessPoolExecutor:
        uids = self.context.Queue()
        for i in range(self.workers):
            uids.put(UID_BASE + i)
        executor = ProcessPoolExecutor(
            max_workers=self.workers,
            mp_context=self.context,
            initializer=_init_worker,
            initargs=(uids, *self.initargs),
        )
        for _ in range(self.workers):
            executor.submit(_ready)
        return executor

    def grade(self, assignment: Assignment, todo: list[str], out: Any) -> dict[str, Outcome]:
        progress = Progress(len(todo))
        outcomes: dict[str, Outcome] = {}
        pending = list(todo)
        with _gradebook(self.settings.root) as gb:
            while pending:
                futures = {self.executor.submit(_work, assignment, s): s for s in pending}
                remaining, broken = set(futures), False
                while remaining:
                    finished, remaining = wait(remaining, return_when=FIRST_COMPLETED)
                    for future in finished:
                        student = futures[future]
                        try:
                            outcome = future.result()
                        except BrokenProcessPool:
                            broken = True
                            continue
                        record(self.settings.root, assignment, outcome, gb)
                        outcomes[student] = outcome
                        pending.remove(student)
                        progress.update(outcome, sum(outcome.scores.values()), assignment.max_score)
                if broken:  # a grader process died (not a sandbox): start new ones
                    print(
                        f"\na grading worker died; restarting for {len(pending)} submission(s)",
                        file=out,
                    )
                    self.executor.shutdown(wait=True, cancel_futures=True)
                    self.executor = self._start()
        return outcomes

    def close(self) -> None:
        self.executor.shutdown(wait=True, cancel_futures=True)


def _summary(assignment: Assignment, outcomes: dict[str, Outcome], out: Any) -> None:
    sys.stderr.flush()
    if not outcomes:
        print("nothing to grade", file=out)
        return
    print(f"\n{'student':<24} {'score':>11}  {'time':>6}  notes", file=out)
    for student, outcome in sorted(outcomes.items()):
        score = f"{sum(outcome.scores.values()):g}/{assignment.max_score:g}"
        why = outcome.reason or ""
        if outcome.status == "unreadable":
            why = "NOT GRADED: " + why
        elif outcome.notes and not why:
            why = outcome.notes[0]
        print(f"{student:<24} {score:>11}  {outcome.seconds:5.1f}s  {textwrap.shorten(why, 90)}",
              file=out)  # fmt: skip
    problems = sum(1 for o in outcomes.values() if o.status != "graded" or o.reason)
    total = sum(o.seconds for o in outcomes.values())
    print(
        f"\n{len(outcomes)} graded ({problems} with a problem), {total:.0f} s of grading", file=out
    )
    warnings_ = {o.warning for o in outcomes.values() if o.warning}
    for warning in warnings_:
        print("WARNING: " + warning, file=out)


def _positive(kind: type, name: str):
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be a number, got {text!r}") from None
        if not value > 0:
            raise argparse.ArgumentTypeError(f"{name} must be positive, got {text!r}")
        return value

    return parse


def main(argv: list[str] | None = None) -> int:
    # nbgrader's Gradebook runs `alembic` by name: this interpreter's bin folder (.venv/bin)
    # goes first on the PATH, so that the grader works from a plain shell.
    bin_dir = str(Path(sys.executable).parent)
    if os.environ.get("PATH", "").split(os.pathsep)[0] != bin_dir:
        os.environ["PATH"] = bin_dir + os.pathsep + os.environ.get("PATH", "")
    defaults = sandbox.Limits(wall_seconds=120.0)
    parser = argparse.ArgumentParser(
        prog="grade.py",
        description="Grade every submission of ASSIGNMENT in autograder/submitted/ in a "
        "bubblewrap sandbox: gradebook, autograder/grades.csv and feedback HTML.",
    )
    parser.add_argument("assignment", help="the assignment's name (a folder of solutions/)")
    parser.add_argument("--workers", type=_positive(int, "--workers"), default=os.cpu_count() or 1,
                        help="submissions graded at once (default: the number of cores)")  # fmt: skip
    parser.add_argument("--student", action="append", help="grade only this student (repeatable)")
    parser.add_argument("--force", action="store_true", help="regrade submissions already graded")
    parser.add_argument("--timeout", type=_positive(float, "--timeout"), default=defaults.wall_seconds,
                        help="wall-clock seconds per submission (default %(default)g)")  # fmt: skip
    parser.add_argument("--memory-mb", type=_positive(int, "--memory-mb"),
                        default=defaults.memory_bytes // sandbox.MiB,
                        help="address space per process, MiB (default %(default)d)")  # fmt: skip
    parser.add_argument("--max-processes", type=_positive(int, "--max-processes"),
                        default=defaults.max_processes, help="processes per sandbox (default %(default)d)")  # fmt: skip
    parser.add_argument("--max-output-mb", type=_positive(float, "--max-output-mb"),
                        default=defaults.max_output_bytes / sandbox.MiB,
                        help="output kept per submission, MiB (default %(default)g)")  # fmt: skip
    parser.add_argument("--max-file-mb", type=_positive(int, "--max-file-mb"),
                        default=defaults.max_file_bytes // sandbox.MiB,
                        help="largest file a submission may write, MiB (default %(default)d)")  # fmt: skip
    parser.add_argument("--max-disk-mb", type=_positive(int, "--max-disk-mb"),
                        default=defaults.max_disk_bytes // sandbox.MiB,
                        help="size of the submission's writable tmpfs, MiB (default %(default)d)")  # fmt: skip
    parser.add_argument("--allow-unsafe", action="store_true",
                        help="grade WITHOUT a sandbox where bubblewrap cannot run (trusted code only)")  # fmt: skip
    parser.add_argument("--root", type=Path, default=HERE.parent,
                        help="the course folder (default: this repository)")  # fmt: skip
    args = parser.parse_args(argv)
    limits = sandbox.Limits(
        wall_seconds=args.timeout,
        memory_bytes=args.memory_mb * sandbox.MiB,
        max_processes=args.max_processes,
        max_output_bytes=int(args.max_output_mb * sandbox.MiB),
        max_file_bytes=args.max_file_mb * sandbox.MiB,
        max_disk_bytes=args.max_disk_mb * sandbox.MiB,
    )
    try:
        grade_batch(args.root, args.assignment, workers=args.workers, limits=limits,
                    allow_unsafe=args.allow_unsafe, force=args.force, only=args.student)  # fmt: skip
    except GradingRefused as error:
        print(f"grade.py: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""What is recorded of a graded submission: nbgrader's gradebook, a marker, the CSV. Only
the main process writes here: a submission's scores in one commit, then its marker
(``.graded.json``, fingerprints of the submission and the grader), which a rerun checks.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import json
import os
import warnings
from pathlib import Path
from typing import Any

from autograder.assignment import Assignment, GradingRefused
from autograder.make_exercises import ExerciseError, run_nbgrader

MARKER_NAME = ".graded.json"
#: Files up to this size are fingerprinted by their bytes, larger ones by name, size and time
#: (they are not copied into the sandbox either): reading them is not worth it.
MAX_HASHED_BYTES = 64 << 20
#: The most a stamp nbgrader's exchange writes beside a submission may hold.
MAX_STAMP_BYTES = 4096


@dataclasses.dataclass
class Outcome:
    """What grading one submission produced (sent from a worker to the main process)."""

    student: str
    status: str  # "graded", "unreadable" (0 points, the reason) or "failed" (a grader stage)
    scores: dict[str, float]
    messages: dict[str, str]  # test grade_id -> what its cell shows: output, score, why
    notes: list[str]
    reason: str | None  # why it was not graded, or how the run ended abnormally
    seconds: float = 0.0
    fingerprint: str = ""


def stamp(submitted: Path, name: str) -> Path | None:
    """An exchange stamp beside the submission (``timestamp.txt``), if one can be read."""
    path = submitted / name
    ok = path.is_file() and not path.is_symlink() and path.stat().st_size <= MAX_STAMP_BYTES
    return path if ok else None


def folder_fingerprint(assignment: Assignment, student: str) -> str:
    """The submission's files (names and bytes, streamed) and the assignment's fingerprint."""
    digest = hashlib.sha256(assignment.fingerprint.encode())
    for file in sorted(assignment.folder("submitted", student).iterdir()):
        if not file.is_file() or file.is_symlink():
            continue
        info = file.stat()
        digest.update(f"{file.name}\0{info.st_size}\0".encode())
        if info.st_size > MAX_HASHED_BYTES:
            digest.update(str(info.st_mtime_ns).encode())
            continue
        with open(file, "rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


def atomic_write(path: Path, data: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def open_gradebook(root: Path):
    from nbgrader.api import Gradebook

    return Gradebook(f"sqlite:///{root / 'autograder' / 'gradebook.db'}", "adam-course")


def ensure_in_gradebook(assignment: Assignment) -> None:
    """The gradebook must know the assignment's test cells; record them if it does not."""
    from nbgrader.api import MissingEntry

    known: set[str] = set()
    with open_gradebook(assignment.root) as gb, contextlib.suppress(MissingEntry):
        known = {c.name for c in gb.find_notebook(assignment.name, assignment.name).grade_cells}
    if {t.grade_id for t in assignment.tests} <= known:
        return
    print(f"recording {assignment.name} in the gradebook (nbgrader generate_assignment)")
    try:
        run_nbgrader(["generate_assignment", assignment.name, "--force"], assignment.root)
    except ExerciseError as error:
        raise GradingRefused(str(error)) from None


def already_graded(assignment: Assignment, student: str, gb: Any) -> bool:
    """A valid marker, matching the submission as it is now, its feedback and the gradebook's
    scores. On any doubt (an unreadable folder or marker, a missing row), no."""
    name = assignment.name
    try:
        recorded = json.loads((assignment.folder("autograded", student) / MARKER_NAME).read_text())
        return (
            recorded["fingerprint"] == folder_fingerprint(assignment, student)
            and (assignment.folder("feedback", student) / f"{name}.html").is_file()
            and all(
                gb.find_grade(gid, name, name, student).auto_score == score
                for gid, score in recorded["scores"].items()
            )
        )
    except Exception:
        return False


def record(assignment: Assignment, outcome: Outcome, gb: Any) -> None:
    """One submission's scores into the gradebook (one commit), then its marker. A failure
    here fails that submission (its status and reason say so), not the batch."""
    from nbgrader import utils

    student, name = outcome.student, assignment.name
    warnings.filterwarnings("ignore", message=".*not in session.*")  # nbgrader's own, harmless
    try:
        gb.update_or_create_student(student)
        when = {}
        if timestamp := stamp(assignment.folder("submitted", student), "timestamp.txt"):
            with contextlib.suppress(Exception):  # the student's file: a bad stamp is none
                when["timestamp"] = utils.parse_utc(timestamp.read_text().strip())
        gb.update_or_create_submission(name, student, **when)
        for test in assignment.tests:
            grade = gb.find_grade(test.grade_id, name, name, student)
            grade.auto_score = float(outcome.scores.get(test.grade_id, 0.0))
            grade.needs_manual_grade = False
        gb.db.commit()
        marker = dict(fingerprint=outcome.fingerprint, scores=outcome.scores, status=outcome.status)
        atomic_write(assignment.folder("autograded", student) / MARKER_NAME, json.dumps(marker))
    except Exception as error:
        gb.db.rollback()
        outcome.status = "failed"
        why = f"{type(error).__name__}: {str(error)[:500]}"
        outcome.reason = f"the grader failed while recording {student}'s submission: {why}"


def export_csv(root: Path) -> Path:
    """``autograder/grades.csv`` as ``nbgrader export`` writes it (its own CSV plugin, run
    in this process: starting nbgrader would take seconds), replaced atomically."""
    from nbgrader.plugins import CsvExportPlugin

    path = root / "autograder" / "grades.csv"
    tmp = path.with_name(f".grades.csv.{os.getpid()}.tmp")
    with contextlib.redirect_stdout(io.StringIO()), open_gradebook(root) as gb:
        CsvExportPlugin(to=str(tmp)).export(gb)
    os.replace(tmp, path)
    return path

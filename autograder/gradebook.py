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
from pathlib import Path
from typing import Any

from autograder.assignment import Assignment, GradingRefused
from autograder.make_exercises import ExerciseError, run_nbgrader

MARKER_NAME = ".graded.json"


@dataclasses.dataclass
class Outcome:
    """What grading one submission produced (sent from a worker to the main process)."""

    student: str
    status: str  # "graded", "unreadable" (0 points, the reason) or "failed" (a grader stage)
    scores: dict[str, float]
    messages: dict[str, str]  # test grade_id -> why it failed
    notes: list[str]
    reason: str | None  # why it was not graded, or how the run ended abnormally
    seconds: float = 0.0
    fingerprint: str = ""
    warning: str | None = None


#: Files up to this size are fingerprinted by their bytes, larger ones by name, size and time
#: (they are not copied into the sandbox either): reading them is not worth it.
MAX_HASHED_BYTES = 64 << 20
#: The most a stamp nbgrader's exchange writes beside a submission may hold.
MAX_STAMP_BYTES = 4096


def folder_fingerprint(folder: Path, assignment: Assignment) -> str:
    """The submission's files (names and bytes, streamed) and the assignment's fingerprint."""
    digest = hashlib.sha256(assignment.fingerprint.encode())
    if folder.is_dir():
        for file in sorted(folder.iterdir()):
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


def ensure_in_gradebook(root: Path, assignment: Assignment) -> None:
    """The gradebook must know the assignment's test cells; record them if it does not."""
    from nbgrader.api import MissingEntry

    with open_gradebook(root) as gb:
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
    try:
        run_nbgrader(["generate_assignment", assignment.name, "--force"], root)
    except ExerciseError as error:
        raise GradingRefused(str(error)) from None


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
    if recorded.get("fingerprint") != folder_fingerprint(folder, assignment):
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
    if stamp.is_file() and not stamp.is_symlink() and stamp.stat().st_size <= MAX_STAMP_BYTES:
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
    marker = {
        "fingerprint": outcome.fingerprint,
        "scores": outcome.scores,
        "status": outcome.status,
    }
    atomic_write(_marker_path(root, student, assignment), json.dumps(marker, indent=1))


def export_csv(root: Path) -> Path:
    """``autograder/grades.csv`` as ``nbgrader export`` writes it (its own CSV plugin, run
    in this process: starting nbgrader would take seconds), replaced atomically."""
    from nbgrader.plugins import CsvExportPlugin

    path = root / "autograder" / "grades.csv"
    tmp = path.with_name(f".grades.csv.{os.getpid()}.tmp")
    plugin = CsvExportPlugin()
    plugin.to = str(tmp)
    with contextlib.redirect_stdout(io.StringIO()), open_gradebook(root) as gb:
        plugin.export(gb)
    os.replace(tmp, path)
    return path

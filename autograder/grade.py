"""Grade every submission of an assignment: sandboxed, in parallel, crash-safe.

    course-grade ASSIGNMENT [--workers N] [--student ID ...] [--force]

Stages, one module each: read and assemble (:mod:`.submission`), run in the sandbox
(:mod:`.run`), judge here (below), feedback (:mod:`.feedback`). Any failure in any stage is
that submission's 0 with a reason naming the stage; the batch goes on. Only the main process
writes the gradebook (:mod:`.gradebook`).
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import io
import multiprocessing
import os
import re
import shutil
import signal
import sys
import tempfile
import textwrap
import time
import traceback
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

from autograder import gradebook, grading, run, sandbox
from autograder.assignment import (
    Assignment,
    GradingRefused,
    SourceCell,
    host_tests,
    load_assignment,
)
from autograder.feedback import Scrubber, feedback_html, feedback_notebook
from autograder.gradebook import Outcome, atomic_write, open_gradebook
from autograder.submission import Unreadable, assemble, read_submission

ROOT = Path(__file__).resolve().parent.parent
STUDENT_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@+-]{0,99}$")
# Worker i runs its sandboxes as uid UID_BASE + 64 * (pid % 4096) + i when started as root:
# the process limit counts every process of a uid on the machine, so two batches running at
# once (two courses, two test runs) must not share uids.
UID_BASE = 61000
LOCK_NAME = ".grade.lock"
# nbgrader's exchange stamps, copied to the feedback folder for `nbgrader release_feedback`.
EXCHANGE_FILES = ("timestamp.txt", "submission_secret.txt")


def printable(text: str) -> str:
    """``text`` with control characters (a file name's terminal escapes) shown as ``?``."""
    return "".join(c if c.isprintable() or c == "\n" else "?" for c in text)


def zero(assignment: Assignment, student: str, status: str, reason: str, **more: Any) -> Outcome:
    scores = {t.grade_id: 0.0 for t in assignment.tests}
    return Outcome(student, status, scores, {}, [], printable(reason[:2000]), **more)


def judge_tests(
    assignment: Assignment, items: list[dict], runs: run.Run, sources: list[str]
) -> tuple[dict[str, float], dict[str, str], dict[str, str]]:
    """The test cells' own code, run here in judge mode on the recorded observations:
    (scores, messages, printed output) by grade_id."""
    refs = {n: grading.AnswerRef(n, sources) for ns in assignment.answers.values() for n in ns}
    by_id = {c.grade_id: c for c in assignment.cells}
    extra = SourceCell(-1, "code", None, "extra", "", "", 0.0)  # a student's extra cell
    order = [by_id.get(item["grade_id"], extra) if item["grade_id"] else extra for item in items]
    scores, messages, outputs = {}, {}, {}
    walk = host_tests(assignment.name, order, assignment.answers, refs.__getitem__)
    for index, cell, namespace in walk:
        code = compile(cell.source, f"<{assignment.name}:{cell.grade_id}>", "exec")
        entries = runs.records.get(index, {}).get("entries")
        buffer = io.StringIO()
        scores[cell.grade_id], messages[cell.grade_id] = 0.0, ""
        try:
            if not isinstance(entries, list):
                with grading.planning(), contextlib.redirect_stdout(buffer):
                    exec(code, namespace)  # keeps the namespace as the notebook builds it
                ended = runs.ended or "unknown"
                messages[cell.grade_id] = (
                    f"not run: your notebook did not reach this test ({ended})"
                )
                continue
            with grading.judging(e for e in entries if isinstance(e, dict)):
                with contextlib.redirect_stdout(buffer):
                    exec(code, namespace)
            scores[cell.grade_id] = cell.points
        except Exception as error:
            text = str(error) or type(error).__name__
            is_check = isinstance(error, AssertionError)
            messages[cell.grade_id] = text if is_check else f"{type(error).__name__}: {text}"
        outputs[cell.grade_id] = buffer.getvalue()
    return scores, messages, outputs


def grade_one(assignment: Assignment, student: str, worker: dict[str, Any]) -> tuple[Outcome, str]:
    """One submission: the outcome and the feedback notebook (JSON text). Raises nothing."""
    start = time.monotonic()
    folder = worker["root"] / "autograder" / "submitted" / student / assignment.name
    scrub = Scrubber(worker["root"])
    stage, fingerprint = "reading", ""
    try:
        fingerprint = gradebook.folder_fingerprint(folder, assignment)
        submission = read_submission(folder, assignment)
        stage = "assembling"
        items, notes = assemble(assignment, submission)
        stage = "running"
        cells = [
            {"kind": "test", "requests": assignment.plans[i["grade_id"]]}
            if i["kind"] == "test"
            else {"kind": i["kind"], "source": i["source"]}
            for i in items
        ]
        runs = run.run_cells(
            cells, [i["label"] for i in items], data=folder, prepared=worker["prepared"],
            limits=worker["limits"], uid=worker["uid"], allow_unsafe=worker["allow_unsafe"],
            scrub=scrub,
        )  # fmt: skip # the arguments grouped by meaning, not one a line
        stage = "judging"
        sources = [i["source"] for i in items if i["origin"] == "student"]  # what ran
        scores, messages, outputs = judge_tests(assignment, items, runs, sources)
        notes = [printable(scrub(n)) for n in submission.notes + notes + runs.notes]
        outcome = Outcome(
            student, "graded", scores, {k: scrub(v) for k, v in messages.items()}, notes,
            runs.ended and printable(runs.ended), time.monotonic() - start, fingerprint,
            runs.warning,
        )  # fmt: skip # the fields in the dataclass's order
        stage = "writing the feedback of"
        cell_outputs = {}
        for index, rec in runs.records.items():
            if rec.get("type") == "cell":
                parts = [rec.get(k) for k in ("stdout", "stderr", "error")]
                cell_outputs[index] = scrub("\n".join(p for p in parts if isinstance(p, str) and p))
        outputs = {k: scrub(v) for k, v in outputs.items()}
        return outcome, feedback_notebook(assignment, outcome, items, cell_outputs, outputs)
    except Exception as error:
        if isinstance(error, (Unreadable, OSError)) and stage == "reading":
            status, reason = "unreadable", scrub(str(error))
        else:
            status = "failed"
            where = "".join(traceback.format_exception_only(type(error), error)).strip()
            reason = scrub(f"the grader failed while {stage} {student}'s submission: {where}")
        seconds = time.monotonic() - start
        outcome = zero(
            assignment, student, status, reason, seconds=seconds, fingerprint=fingerprint
        )
        return outcome, feedback_notebook(assignment, outcome, [], {}, {})


_WORKER: dict[str, Any] = {}


def _init_worker(uids: Any, settings: dict[str, Any]) -> None:
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

    feedback_html('{"cells": [], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}')  # warm
    _WORKER.update(settings, uid=uids.get())


def _work(assignment: Assignment, student: str) -> Outcome:
    outcome, notebook = grade_one(assignment, student, _WORKER)
    root, name = _WORKER["root"], assignment.name
    try:
        page = feedback_html(notebook)
    except Exception as error:  # the page of one submission must not stop the batch
        page = f"<p>The feedback page could not be made ({type(error).__name__}).</p>"
        outcome.notes.append(f"the feedback page could not be made ({type(error).__name__})")
    feedback = root / "autograder" / "feedback" / student / name
    atomic_write(feedback / f"{name}.html", page)
    atomic_write(root / "autograder" / "autograded" / student / name / f"{name}.ipynb", notebook)
    for file in EXCHANGE_FILES:
        given = root / "autograder" / "submitted" / student / name / file
        if (
            given.is_file()
            and not given.is_symlink()
            and given.stat().st_size <= gradebook.MAX_STAMP_BYTES
        ):
            shutil.copyfile(given, feedback / file)
    return outcome


def _ready() -> None:
    """A first task per worker, so that they start while the main process prepares."""


class _Pool:
    """Spawned worker processes (no state copied from this one), each with its own uid."""

    def __init__(self, workers: int, settings: dict[str, Any]) -> None:
        self.workers, self.settings = workers, settings
        self.context = multiprocessing.get_context("spawn")
        self.executor = self._start()

    def _start(self) -> ProcessPoolExecutor:
        uids = self.context.Queue()
        for i in range(self.workers):
            uids.put(UID_BASE + 64 * (os.getpid() % 4096) + i)
        executor = ProcessPoolExecutor(
            self.workers, self.context, initializer=_init_worker, initargs=(uids, self.settings)
        )
        for _ in range(self.workers):
            executor.submit(_ready)
        return executor

    def grade(self, assignment: Assignment, todo: list[str]) -> dict[str, Outcome]:
        from tqdm import tqdm

        outcomes: dict[str, Outcome] = {}
        pending, serial = list(todo), False
        bar = tqdm(total=len(todo), unit="submission", file=sys.stderr, dynamic_ncols=True)
        with bar, open_gradebook(self.settings["root"]) as gb:
            while pending:
                batch = pending[:1] if serial else pending
                futures = {self.executor.submit(_work, assignment, s): s for s in batch}
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
                        except Exception as error:  # a worker's own failure: this student's
                            why = f"{type(error).__name__}: {str(error)[:500]}"
                            reason = f"the grader failed on {student}'s submission: {why}"
                            outcome = zero(assignment, student, "failed", reason)
                        self._record(assignment, outcome, gb)
                        outcomes[student] = outcome
                        pending.remove(student)
                        score = f"{sum(outcome.scores.values()):g}/{assignment.max_score:g}"
                        bar.set_postfix_str(f"{student}: {score}", refresh=False)
                        bar.update()
                if broken:  # a grader process died (not a sandbox): start new ones
                    bar.write(f"a grading worker died; restarting for {len(pending)} submission(s)")
                    self.executor.shutdown(wait=True, cancel_futures=True)
                    self.executor = self._start()
                    if len(futures) == 1:  # graded alone, it killed its worker: its own zero
                        student = pending.pop(0)
                        reason = (
                            f"the grader's worker process died while grading {student}'s "
                            "submission (out of memory?); it was not graded"
                        )
                        outcomes[student] = zero(assignment, student, "failed", reason)
                        self._record(assignment, outcomes[student], gb)
                        bar.update()
                    serial = True  # from now on one at a time, so that a culprit is found
        return outcomes

    def _record(self, assignment: Assignment, outcome: Outcome, gb: Any) -> None:
        try:
            gradebook.record(self.settings["root"], assignment, outcome, gb)
        except Exception as error:
            gb.db.rollback()
            outcome.status = "failed"
            outcome.reason = f"could not be recorded: {type(error).__name__}: {error}"

    def close(self) -> None:
        self.executor.shutdown(wait=True, cancel_futures=True)


def discover(
    root: Path, assignment: Assignment, only: list[str] | None
) -> tuple[list[str], list[str]]:
    """The students with a submission folder (valid ids), and the folders that are none."""
    base = root / "autograder" / "submitted"
    folders = [f.name for f in sorted(base.glob("*")) if (f / assignment.name).is_dir()]
    students = [name for name in folders if STUDENT_ID.match(name)]
    if only:
        unknown = sorted(set(only) - set(students))
        if unknown:
            raise GradingRefused(f"no submission of {assignment.name} for: {', '.join(unknown)}")
        students = [s for s in students if s in only]
    return students, [name for name in folders if not STUDENT_ID.match(name)]


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
    with open(lock_path, "w") as lock, tempfile.TemporaryDirectory(prefix="grade-lib-") as lib:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise GradingRefused(f"another grading run holds {lock_path}; wait for it") from None
        os.environ["COURSE_DEVICE"] = "cpu"
        Path(lib).chmod(0o755)
        settings = {"root": root, "limits": limits, "allow_unsafe": allow_unsafe}
        settings["prepared"] = run.prepare(Path(lib, "lib"))
        pool = _Pool(workers, settings)  # workers start (import torch) meanwhile
        try:
            assignment = load_assignment(root, assignment_name)
            gradebook.ensure_in_gradebook(root, assignment)
            students, rejected = discover(root, assignment, only)
            for name in rejected:
                print(f"skipped folder {name!r}: not a valid student id", file=out)
            with open_gradebook(root) as gb:
                todo = [s for s in students if force or not _graded(root, s, assignment, gb)]
            skipped = len(students) - len(todo)
            print(
                f"{assignment.name}: {len(students)} submission(s), {len(todo)} to grade"
                + (f", {skipped} already graded (--force regrades them)" if skipped else "")
                + f", {workers} worker(s), limits: {limits.wall_seconds:g} s, "
                f"{limits.memory_bytes / sandbox.GiB:g} GiB, {limits.max_processes} processes",
                file=out,
                flush=True,
            )
            outcomes = pool.grade(assignment, todo) if todo else {}
        finally:
            pool.close()
    _summary(assignment, outcomes, out)
    print(f"grades: {gradebook.export_csv(root)}", file=out)
    return outcomes


def _graded(root: Path, student: str, assignment: Assignment, gb: Any) -> bool:
    """Whether a rerun may skip this submission; on any doubt (an unreadable folder), no."""
    try:
        return gradebook.already_graded(root, student, assignment, gb)
    except Exception:
        return False


def _summary(assignment: Assignment, outcomes: dict[str, Outcome], out: Any) -> None:
    sys.stderr.flush()
    if not outcomes:
        print("nothing to grade", file=out)
        return
    print(f"\n{'student':<24} {'score':>11}  {'time':>6}  notes", file=out)
    for student, outcome in sorted(outcomes.items()):
        score = f"{sum(outcome.scores.values()):g}/{assignment.max_score:g}"
        why = outcome.reason or ""
        if outcome.status != "graded":
            why = "NOT GRADED: " + why
        elif outcome.notes and not why:
            why = outcome.notes[0]
        line = f"{student:<24} {score:>11}  {outcome.seconds:5.1f}s  {textwrap.shorten(why, 90)}"
        print(line, file=out)
    problems = sum(1 for o in outcomes.values() if o.status != "graded" or o.reason)
    total = sum(o.seconds for o in outcomes.values())
    print(
        f"\n{len(outcomes)} graded ({problems} with a problem), {total:.0f} s of grading", file=out
    )
    for warning in {o.warning for o in outcomes.values() if o.warning}:
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
    # nbgrader's Gradebook runs `alembic` by name: this interpreter's bin folder goes first on
    # the PATH, so that the grader works from a plain shell.
    bin_dir = str(Path(sys.executable).parent)
    if os.environ.get("PATH", "").split(os.pathsep)[0] != bin_dir:
        os.environ["PATH"] = bin_dir + os.pathsep + os.environ.get("PATH", "")
    defaults, mib = sandbox.Limits(wall_seconds=120.0), sandbox.MiB
    parser = argparse.ArgumentParser(
        prog="course-grade",
        description="Grade every submission of ASSIGNMENT in autograder/submitted/ in a "
        "bubblewrap sandbox: gradebook, autograder/grades.csv and feedback HTML.",
    )
    add = parser.add_argument
    add("assignment", help="the assignment's name (a folder of solutions/)")
    add("--student", action="append", help="grade only this student (repeatable)")
    add("--force", action="store_true", help="regrade submissions already graded")
    unsafe = "grade WITHOUT a sandbox where bubblewrap cannot run (trusted code only)"
    add("--allow-unsafe", action="store_true", help=unsafe)
    add("--root", type=Path, default=ROOT, help="the course folder (default: this repository)")
    numbers = [  # option, type, default, help
        ("--workers", int, os.cpu_count() or 1, "submissions graded at once, one per core"),
        ("--timeout", float, defaults.wall_seconds, "wall-clock seconds per submission"),
        ("--memory-mb", int, defaults.memory_bytes // mib, "address space per process, MiB"),
        ("--max-processes", int, defaults.max_processes, "processes per sandbox"),
        ("--max-output-mb", float, defaults.max_output_bytes / mib, "output kept, MiB"),
        ("--max-file-mb", int, defaults.max_file_bytes // mib, "largest file written, MiB"),
        ("--max-disk-mb", int, defaults.max_disk_bytes // mib, "writable tmpfs per sandbox, MiB"),
    ]
    for option, kind, default, text in numbers:
        add(option, type=_positive(kind, option), default=default, help=f"{text} (%(default)g)")
    args = parser.parse_args(argv)
    limits = sandbox.Limits(
        wall_seconds=args.timeout, memory_bytes=args.memory_mb * mib,
        max_processes=args.max_processes, max_output_bytes=int(args.max_output_mb * mib),
        max_file_bytes=args.max_file_mb * mib, max_disk_bytes=args.max_disk_mb * mib,
    )  # fmt: skip # the limits in pairs, not one a line
    try:
        grade_batch(
            args.root, args.assignment, workers=args.workers, limits=limits,
            allow_unsafe=args.allow_unsafe, force=args.force, only=args.student,
        )  # fmt: skip # the arguments grouped by meaning, not one a line
    except GradingRefused as error:
        print(f"course-grade: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""``course-grade``: every submission of an assignment graded, sandboxed, in parallel, crash-safe.

Stages, one module each: read and assemble (:mod:`.submission`), run in the sandbox
(:mod:`.run`), judge here (below), feedback (:mod:`.feedback`). Any failure in any stage is
that submission's 0 with a reason naming the stage; the batch goes on. Only the main process
writes the gradebook (:mod:`.gradebook`).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
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
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

import nbformat
from tqdm import tqdm

from autograder import gradebook, grading, run, sandbox
from autograder.assignment import Assignment, GradingRefused, host_tests, load_assignment
from autograder.feedback import feedback_html, feedback_notebook, scrubber
from autograder.gradebook import Outcome, already_graded, atomic_write, open_gradebook
from autograder.submission import Item, Unreadable, assemble, read_submission

ROOT = Path(__file__).resolve().parent.parent
STUDENT_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@+-]{0,99}$")
# Worker i's sandboxes run as uid UID_BASE + 64 * (pid % 4096) + i (as root): the process
# limit counts every process of a uid on the machine, so two batches at once share none.
UID_BASE = 61000
LOCK_NAME = ".grade.lock"
# nbgrader's exchange stamps, copied to the feedback folder for `nbgrader release_feedback`.
EXCHANGE_FILES = ("timestamp.txt", "submission_secret.txt")


def printable(text: str) -> str:
    """``text`` with control characters (a file name's terminal escapes) shown as ``?``."""
    return "".join(c if c.isprintable() or c == "\n" else "?" for c in text)


def zero(assignment: Assignment, student: str, status: str, reason: str, *more: Any) -> Outcome:
    """A 0 for every test, and why; ``more``: the seconds it took and the fingerprint."""
    scores = {t.grade_id: 0.0 for t in assignment.tests}
    return Outcome(student, status, scores, {}, [], printable(reason[:2000]), *more)


def judge_tests(
    assignment: Assignment, items: list[Item], runs: run.Run
) -> tuple[dict[str, float], dict[str, str]]:
    """The test cells' own code, run here in judge mode on the recorded observations: the
    scores, and what each test cell shows (its printed output, score and message)."""
    sources = [i.source for i in items if i.origin == "student"]  # what ran
    refs = {n: grading.AnswerRef(n, sources) for ns in assignment.answers.values() for n in ns}
    by_id = {c.grade_id: c for c in assignment.cells if c.grade_id}
    known = [(i, by_id[item.grade_id]) for i, item in enumerate(items) if item.grade_id in by_id]
    scores = {t.grade_id: 0.0 for t in assignment.tests}
    why = f"not run: your notebook did not reach this test ({runs.ended or 'unknown'})"
    shown = {t.grade_id: f"0 / {t.points:g} points: {why}" for t in assignment.tests}
    walk = host_tests(assignment.name, [c for _, c in known], assignment.answers, refs.__getitem__)
    for position, cell, namespace in walk:
        index, gid = known[position][0], cell.grade_id  # index: its place among the cells run
        entries = runs.records.get(index, {}).get("entries")
        if not isinstance(entries, list):  # the run ended before this test, so before the rest
            break
        buffer, message = io.StringIO(), ""
        try:
            with grading.judging(entries), contextlib.redirect_stdout(buffer):
                exec(compile(cell.source, f"<{assignment.name}:{gid}>", "exec"), namespace)
            scores[gid] = cell.points
        except Exception as error:
            text = str(error) or type(error).__name__
            is_check = isinstance(error, AssertionError)
            message = text if is_check else f"{type(error).__name__}: {text}"
        verdict = f"{scores[gid]:g} / {cell.points:g} points" + (f": {message}" if message else "")
        shown[gid] = (buffer.getvalue() + verdict).strip()
    return scores, shown


_WORKER: dict[str, Any] = {}


def _init_worker(uids: Any, sandboxing: dict[str, Any]) -> None:
    ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG: die with the main process
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the main process's to handle
    import torch

    torch.set_num_threads(1)
    from autograder import checks  # noqa: F401 -- imported once, before the first task

    feedback_html(nbformat.v4.new_notebook())  # warm
    _WORKER.update(sandboxing, uid=uids.get())


def _work(assignment: Assignment, student: str) -> Outcome:
    """One submission, in a worker: graded, its feedback and graded notebook written. A failure
    in any stage is its 0 with a reason naming the stage, not an exception."""
    start, scrub = time.monotonic(), scrubber(assignment.root)
    submitted = assignment.folder("submitted", student)
    stage, fingerprint = "reading", ""
    try:
        fingerprint = gradebook.folder_fingerprint(assignment, student)
        cells, notes = read_submission(submitted, assignment)
        stage = "assembling"
        items, changes = assemble(assignment, cells)
        stage = "running"
        cells = [
            {"kind": "test", "requests": assignment.plans[i.grade_id]}
            if i.kind == "test"
            else {"kind": i.kind, "source": i.source}
            for i in items
        ]
        labels = [i.label for i in items]  # what was running, when a run ends early
        runs = run.run_cells(cells, labels, data=submitted, scrub=scrub, **_WORKER)
        stage = "judging"
        scores, shown = judge_tests(assignment, items, runs)
        notes = [printable(scrub(n)) for n in notes + changes + runs.notes]
        ended = runs.ended and printable(scrub(runs.ended))
        seconds = time.monotonic() - start
        outcome = Outcome(student, "graded", scores, shown, notes, ended, seconds, fingerprint)
        stage = "writing the feedback of"
        notebook = feedback_notebook(assignment, outcome, items, runs.records, scrub)
    except Exception as error:
        if isinstance(error, (Unreadable, OSError)) and stage == "reading":
            status, reason = "unreadable", scrub(str(error))
        else:
            status = "failed"
            where = "".join(traceback.format_exception_only(type(error), error)).strip()
            reason = scrub(f"the grader failed while {stage} {student}'s submission: {where}")
        outcome = zero(assignment, student, status, reason, time.monotonic() - start, fingerprint)
        notebook = feedback_notebook(assignment, outcome, [], {}, scrub)
    try:
        page = feedback_html(notebook)
    except Exception as error:  # the page of one submission must not stop the batch
        page = f"<p>The feedback page could not be made ({type(error).__name__}).</p>"
        outcome.notes.append(f"the feedback page could not be made ({type(error).__name__})")
    feedback, name = assignment.folder("feedback", student), assignment.name
    atomic_write(feedback / f"{name}.html", page)
    graded = assignment.folder("autograded", student) / f"{name}.ipynb"
    atomic_write(graded, nbformat.writes(notebook))
    for file in EXCHANGE_FILES:
        if gradebook.stamp(submitted, file):
            shutil.copyfile(submitted / file, feedback / file)
    return outcome


class _Pool:
    """Spawned worker processes (no state copied from this one), each with its own uid."""

    def __init__(self, workers: int, sandboxing: dict[str, Any]) -> None:
        self.workers, self.sandboxing = workers, sandboxing
        self.start()

    def start(self) -> None:
        context = multiprocessing.get_context("spawn")
        uids = context.Queue()
        for i in range(self.workers):
            uids.put(UID_BASE + 64 * (os.getpid() % 4096) + i)
        args = (uids, self.sandboxing)
        self.executor = ProcessPoolExecutor(self.workers, context, _init_worker, args)
        for _ in range(self.workers):  # a first task each: they start while this one prepares
            self.executor.submit(os.getpid)

    def grade(self, assignment: Assignment, todo: list[str]) -> dict[str, Outcome]:
        """Each submission in ``todo`` graded and recorded, as its worker finishes it."""
        outcomes: dict[str, Outcome] = {}
        pending, serial = list(todo), False
        bar = tqdm(total=len(todo), unit="submission", file=sys.stderr, dynamic_ncols=True)

        def finish(outcome: Outcome) -> None:
            gradebook.record(assignment, outcome, gb)
            outcomes[outcome.student] = outcome
            pending.remove(outcome.student)
            score = f"{sum(outcome.scores.values()):g}/{assignment.max_score:g}"
            bar.set_postfix_str(f"{outcome.student}: {score}", refresh=False)
            bar.update()

        with bar, open_gradebook(assignment.root) as gb:
            while pending:
                batch = pending[:1] if serial else pending
                futures = {self.executor.submit(_work, assignment, s): s for s in batch}
                broken = False
                for future in as_completed(futures):
                    student = futures[future]
                    try:
                        finish(future.result())
                    except BrokenProcessPool:  # a grader process died (not a sandbox)
                        broken = True
                        if len(futures) == 1:  # graded alone, it killed its worker: its own 0
                            reason = (
                                f"the grader's worker process died while grading {student}'s "
                                "submission (out of memory?); it was not graded"
                            )
                            finish(zero(assignment, student, "failed", reason))
                    except Exception as error:  # a worker's own failure: this student's
                        why = f"{type(error).__name__}: {str(error)[:500]}"
                        reason = f"the grader failed on {student}'s submission: {why}"
                        finish(zero(assignment, student, "failed", reason))
                if broken:  # start new workers, and grade one at a time to find a culprit
                    bar.write(f"a grading worker died; restarting for {len(pending)} submission(s)")
                    self.executor.shutdown(cancel_futures=True)
                    self.start()
                    serial = True
        return outcomes


def discover(assignment: Assignment, only: list[str] | None) -> list[str]:
    """The students with a submission folder (valid ids; the other folders are named)."""
    base = assignment.root / "autograder" / "submitted"
    folders = [f.name for f in sorted(base.glob("*")) if (f / assignment.name).is_dir()]
    students = [name for name in folders if STUDENT_ID.match(name)]
    for name in sorted(set(folders) - set(students)):
        print(f"skipped folder {name!r}: not a valid student id")
    if unknown := sorted(set(only or []) - set(students)):
        raise GradingRefused(f"no submission of {assignment.name} for: {', '.join(unknown)}")
    return [s for s in students if not only or s in only]


def grade_batch(
    root: Path,
    assignment_name: str,
    *,
    workers: int,
    limits: sandbox.Limits,
    allow_unsafe: bool = False,
    force: bool = False,
    only: list[str] | None = None,
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
        print(
            f"WARNING: grading WITHOUT a sandbox ({why}); --allow-unsafe was given: student code "
            "runs with your permissions, without the stub modules, under the limits only"
        )
    lock_path = root / "autograder" / LOCK_NAME
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "w") as lock, tempfile.TemporaryDirectory(prefix="grade-lib-") as lib:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise GradingRefused(f"another grading run holds {lock_path}; wait for it") from None
        os.environ["COURSE_DEVICE"] = "cpu"  # the workers inherit it
        prepared = run.prepare(Path(lib, "lib"))
        sandboxing = {"limits": limits, "allow_unsafe": allow_unsafe, "prepared": prepared}
        pool = _Pool(workers, sandboxing)  # workers start (import torch) meanwhile
        try:
            assignment = load_assignment(root, assignment_name)
            gradebook.ensure_in_gradebook(assignment)
            students = discover(assignment, only)
            with open_gradebook(root) as gb:
                done = [s for s in students if not force and already_graded(assignment, s, gb)]
            todo = [s for s in students if s not in done]
            print(
                f"{assignment.name}: {len(students)} submission(s), {len(todo)} to grade"
                + (f", {len(done)} already graded (--force regrades them)" if done else "")
                + f", {workers} worker(s), limits: {limits.wall_seconds:g} s, "
                f"{limits.memory_bytes / sandbox.GiB:g} GiB, {limits.max_processes} processes",
                flush=True,
            )
            outcomes = pool.grade(assignment, todo) if todo else {}
        finally:
            pool.executor.shutdown(cancel_futures=True)
    _summary(assignment, outcomes)
    print(f"grades: {gradebook.export_csv(root)}")
    return outcomes


def _summary(assignment: Assignment, outcomes: dict[str, Outcome]) -> None:
    sys.stderr.flush()
    if not outcomes:
        print("nothing to grade")
        return
    print(f"\n{'student':<24} {'score':>11}  {'time':>6}  notes")
    for student, outcome in sorted(outcomes.items()):
        score = f"{sum(outcome.scores.values()):g}/{assignment.max_score:g}"
        why = outcome.reason or (outcome.notes[0] if outcome.notes else "")
        why = why if outcome.status == "graded" else f"NOT GRADED: {why}"
        print(f"{student:<24} {score:>11}  {outcome.seconds:5.1f}s  {textwrap.shorten(why, 90)}")
    problems = sum(1 for o in outcomes.values() if o.status != "graded" or o.reason)
    total = sum(o.seconds for o in outcomes.values())
    print(f"\n{len(outcomes)} graded ({problems} with a problem), {total:.0f} s of grading")


def main(argv: list[str] | None = None) -> int:
    # nbgrader's Gradebook runs `alembic` by name: this interpreter's bin folder goes first on
    # the PATH, so that the grader works from a plain shell.
    os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
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
        add(option, type=kind, default=default, help=f"{text} (%(default)g)")
    args = parser.parse_args(argv)
    for option, *_ in numbers:
        if not getattr(args, option[2:].replace("-", "_")) > 0:
            parser.error(f"{option} must be positive")
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

"""Run one submission's cells in the sandbox and read back what its harness recorded.

The host side of the sandbox: :func:`prepare` builds, once per batch, the read-only folder of
the grader's files that run in the student's process (the harness and the observation side
of the checks) and the stub files bound over torch's Adam and AdamW; :func:`run_cells` runs
one submission's cells there (``harness.py``) and parses its records, which are untrusted.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import signal
import tempfile
import textwrap
from collections.abc import Callable
from pathlib import Path

from autograder import sandbox

HERE = Path(__file__).resolve().parent
#: The grader's modules that the sandbox holds (copied as they are): what runs in the
#: student's process. Everything else of the grader (the declarations and judges, which hold
#: the references) stays outside, and so does course_lib.
SANDBOX_MODULES = ("__init__.py", "grading.py", "common.py", "observe.py", "delegation.py")
#: torch's modules bound over by the files of autograder/stubs/ in the sandbox.
STUBS = ("adam", "adamw")
SANDBOX_HOME = "/home/student"
#: Files handed in beside the notebook (data) that are copied into the sandbox, at most.
MAX_DATA_FILES = 100


@dataclasses.dataclass(frozen=True)
class Prepared:
    lib: Path
    binds: dict[str, Path]


def prepare(target: Path) -> Prepared:
    """The read-only folder the sandbox imports from, and the stub modules' binds."""
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
    return Prepared(target, binds)


@dataclasses.dataclass
class Run:
    """What the sandbox recorded: per cell index, the harness's record (first one wins)."""

    records: dict[int, dict]
    ended: str | None  # None when the notebook ran to the end; else how it ended
    notes: list[str]  # about the data files handed in
    warning: str | None  # set when it ran without isolation


def run_cells(
    cells: list[dict],
    labels: list[str],
    *,
    data: Path,
    prepared: Prepared,
    limits: sandbox.Limits,
    uid: int,
    allow_unsafe: bool,
    scrub: Callable[[str], str],
) -> Run:
    """Run ``cells`` (``{"kind": "code", "source"}``, ``{"kind": "test", "requests"}`` or
    ``{"kind": "skip"}``) with the files of the folder ``data`` beside them (not notebooks)."""
    notes: list[str] = []
    with tempfile.TemporaryDirectory(prefix="grade-") as tmp:
        scratch = Path(tmp, "in")
        scratch.mkdir()
        Path(tmp).chmod(0o755)
        (scratch / "run.json").write_text(json.dumps({"cells": cells}))
        budget = limits.max_disk_bytes // 2
        for extra in sorted(data.iterdir()):
            if extra.is_file() and not extra.is_symlink() and extra.suffix != ".ipynb":
                size = extra.stat().st_size
                if size <= min(limits.max_file_bytes, budget):
                    shutil.copy2(extra, scratch / extra.name)
                    budget -= size
                else:
                    notes.append(f"{extra.name} was not copied: the files are over the limit")
        scratch.chmod(0o755)
        result = sandbox.run_sandboxed(
            ["python", "-I", str(prepared.lib / "harness.py"), str(scratch / "run.json"),
             str(prepared.lib)],
            scratch=scratch,
            readonly=[prepared.lib],
            limits=limits,
            env={"COURSE_DEVICE": "cpu", "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"},
            allow_unsafe=allow_unsafe,
            uid=uid,
            binds=prepared.binds,
            hide=[str(Path(next(iter(prepared.binds))).parent / "__pycache__")],
            workdir=SANDBOX_HOME,
            results=True,
        )  # fmt: skip
        records, ready, done = read_records(result.results, len(cells))
        ended = None
        if not done:
            last = max(records, default=-1)
            running = next(
                (labels[i] for i in range(last + 1, len(cells)) if cells[i]["kind"] == "code"),
                None,
            )
            ended = how_it_ended(result, limits)
            if not ready:
                ended += " before the first cell ran"
            elif running:
                ended += f", while running {running}"
            if result.results_truncated:
                ended = "it wrote more results than the grader accepts; " + ended
            stderr = scrub(result.stderr.decode(errors="replace").replace(tmp, "…")).strip()
            if stderr and not ready:
                ended += ": " + textwrap.shorten(stderr, 300)
    return Run(records=records, ended=ended, notes=notes, warning=result.warning)


def read_records(data: bytes, count: int) -> tuple[dict[int, dict], bool, bool]:
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


def how_it_ended(result: sandbox.SandboxResult, limits: sandbox.Limits) -> str:
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

"""Run one submission's cells in the sandbox and read back what its harness recorded.

:func:`prepare` builds, once per batch, the read-only folder of the grader's sandbox-side
files and the stubs bound over torch's Adam and AdamW; :func:`run_cells` runs one
submission there, with the files handed in beside the notebook copied into the sandbox's
work directory (on no import path of the grader's), and parses the untrusted records.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import os
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
#: Files handed in beside the notebook (data) that are copied into the sandbox, at most (the
#: first ones by name); the others are left out, with a note.
MAX_DATA_FILES = 100
#: Where the C/C++ compilers' own programs live (cc1, cc1plus, llc, ...): hidden in the sandbox.
COMPILER_DIRS = ("/usr/lib/gcc", "/usr/libexec/gcc", "/usr/lib/llvm-*")


@dataclasses.dataclass(frozen=True)
class Prepared:
    lib: Path
    binds: dict[str, Path]


def prepare(target: Path) -> Prepared:
    """The read-only folder the sandbox runs from, and the stub modules' binds."""
    import torch.optim

    (target / "autograder").mkdir(parents=True)
    for name in SANDBOX_MODULES:
        shutil.copy2(HERE / name, target / "autograder" / name)
    for name in ("harness.py", "kernel.py"):
        shutil.copy2(HERE / name, target / name)
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


def _data_files(data: Path) -> tuple[list[Path], bool]:
    """The files in ``data`` and its subfolders (as nbgrader copies them), by relative name:
    no links, no notebooks at the top; at most ``10 * MAX_DATA_FILES`` looked at."""
    found, looked = [], 0
    for folder, dirs, files in os.walk(data):  # os.walk follows no link to a folder
        dirs.sort()
        for name in sorted(files):
            looked += 1
            if looked > 10 * MAX_DATA_FILES:
                return found, True
            path = Path(folder, name)
            top = Path(folder) == data
            if path.is_file() and not path.is_symlink() and not (top and path.suffix == ".ipynb"):
                found.append(path.relative_to(data))
    return found, False


def copy_data(data: Path, target: Path, limits: sandbox.Limits) -> list[str]:
    """Copy the files beside the notebook in ``data``, subfolders included (not notebooks,
    not links) to ``target``: the first ``MAX_DATA_FILES`` by name, within half the sandbox's
    disk and the file size limit. Notes on what was left out."""
    files, more = _data_files(data)
    budget = limits.max_disk_bytes // 2
    too_big = []
    for rel in files[:MAX_DATA_FILES]:
        size = (data / rel).stat().st_size
        if size <= min(limits.max_file_bytes, budget):
            (target / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(data / rel, target / rel)
            budget -= size
        else:
            too_big.append(str(rel))
    notes = []
    if len(files) > MAX_DATA_FILES or more:
        count = f"more than {len(files)}" if more else str(len(files))
        notes.append(
            f"only {MAX_DATA_FILES} of the {count} files beside the notebook were copied into "
            f"the sandbox: it takes at most {MAX_DATA_FILES}"
        )
    if too_big:
        names = ", ".join(too_big[:5]) + (f" and {len(too_big) - 5} more" if too_big[5:] else "")
        notes.append(
            f"{names} not copied into the sandbox: over its limits ({limits.max_file_bytes >> 20}"
            f" MiB a file, {limits.max_disk_bytes // 2 >> 20} MiB in all)"
        )
    return notes


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
    with tempfile.TemporaryDirectory(prefix="grade-") as tmp:
        inputs = Path(tmp, "in")
        inputs.mkdir()
        Path(tmp).chmod(0o755)
        notes = copy_data(data, inputs, limits)
        inputs.chmod(0o755)
        pycache = Path(next(iter(prepared.binds))).parent / "__pycache__"
        hide = [str(pycache)] + [d for p in COMPILER_DIRS for d in sorted(glob.glob(p))]
        result = sandbox.run_sandboxed(
            ["python", "-I", str(prepared.lib / "harness.py"), str(prepared.lib), str(inputs)],
            scratch=inputs,
            readonly=[prepared.lib],
            limits=limits,
            env={"COURSE_DEVICE": "cpu", "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"},
            allow_unsafe=allow_unsafe,
            uid=uid,
            binds=prepared.binds,
            hide=hide,
            workdir=SANDBOX_HOME,
            results=True,
            stdin=json.dumps({"cells": cells}).encode(),
        )
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

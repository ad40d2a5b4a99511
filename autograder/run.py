"""Run one submission's cells in the sandbox and read back what its harness recorded.

:func:`prepare` builds, once per batch, the read-only folder of the grader's sandbox-side
files and the stubs bound over torch's Adam and AdamW; :func:`run_cells` runs one
submission there, with the files handed in beside the notebook copied into the sandbox's
work directory (on no import path of the grader's), and parses the untrusted records.
"""

from __future__ import annotations

import dataclasses
import glob
import itertools
import json
import os
import shutil
import signal
import tempfile
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

from autograder import sandbox

HERE = Path(__file__).resolve().parent
#: The grader's modules in the sandbox, what runs in the student's process; the rest of the
#: grader (the declarations and judges, which hold the references) and course_lib stay out.
SANDBOX_MODULES = ("__init__.py", "grading.py", "common.py", "observe.py", "delegation.py")
SANDBOX_HOME = "/home/student"
MAX_DATA_FILES = 100  # files beside the notebook copied into the sandbox, at most (first by name)
#: Where the C/C++ compilers' own programs live (cc1, cc1plus, llc, ...): hidden in the sandbox.
COMPILER_DIRS = ("/usr/lib/gcc", "/usr/libexec/gcc", "/usr/lib/llvm-*")


@dataclasses.dataclass(frozen=True)
class Prepared:
    lib: Path
    mounts: dict  # run_sandboxed's readonly, binds and hide: the grader's files in place


def prepare(target: Path) -> Prepared:
    """The read-only folder the sandbox runs from, the stub modules' binds and the folders
    hidden: the stubs' replaced bytecode and the compilers'."""
    import torch.optim

    (target / "autograder").mkdir(parents=True)
    for name in SANDBOX_MODULES:
        shutil.copy2(HERE / name, target / "autograder" / name)
    for name in ("harness.py", "kernel.py"):
        shutil.copy2(HERE / name, target / name)
    optim = Path(torch.optim.__file__).resolve().parent
    binds = {str(optim / f"{name}.py"): HERE / "stubs" / "optim.py" for name in ("adam", "adamw")}
    hide = [str(optim / "__pycache__")] + [d for p in COMPILER_DIRS for d in sorted(glob.glob(p))]
    for path in target.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)
    target.chmod(0o755)
    return Prepared(target, {"readonly": [target], "binds": binds, "hide": hide})


@dataclasses.dataclass
class Run:
    """What the sandbox recorded: per cell index, the harness's record (first one wins)."""

    records: dict[int, dict]
    ended: str | None  # None when the notebook ran to the end; else how it ended
    notes: list[str]  # about the data files handed in


def _walk(folder: Path) -> Iterator[Path]:
    """The files in ``folder`` and its subfolders, by name (os.walk follows no link to a folder)."""
    for top, dirs, files in os.walk(folder):
        dirs.sort()
        yield from (Path(top, name) for name in sorted(files))


def copy_data(data: Path, target: Path, limits: sandbox.Limits) -> list[str]:
    """Copy the files beside the notebook in ``data``, subfolders included (as nbgrader copies
    them; not links, no notebooks at the top) to ``target``: the first ``MAX_DATA_FILES`` by
    name, within half the sandbox's disk and the file size limit, with at most ``10 *
    MAX_DATA_FILES`` looked at. Notes on what was left out."""
    looked = list(itertools.islice(_walk(data), 10 * MAX_DATA_FILES + 1))
    more = looked[10 * MAX_DATA_FILES :]
    files = [
        path.relative_to(data)
        for path in looked[: 10 * MAX_DATA_FILES]
        if path.is_file() and not path.is_symlink()
        if not (path.parent == data and path.suffix == ".ipynb")
    ]
    budget, too_big = limits.max_disk_bytes // 2, []
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
        notes = copy_data(data, inputs, limits)
        result = sandbox.run_sandboxed(
            ["python", "-I", str(prepared.lib / "harness.py"), str(prepared.lib), str(inputs)],
            scratch=inputs,
            limits=limits,
            env={"COURSE_DEVICE": "cpu", "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"},
            allow_unsafe=allow_unsafe,
            uid=uid,
            workdir=SANDBOX_HOME,
            results=True,
            stdin=json.dumps({"cells": cells}).encode(),
            **prepared.mounts,
        )
        records, ready, done = read_records(result.results, len(cells))
        ended = None
        if not done and ready:
            after = range(max(records, default=-1) + 1, len(cells))
            running = next((labels[i] for i in after if cells[i]["kind"] == "code"), None)
            ended = how_it_ended(result, limits) + (f", while running {running}" if running else "")
        elif not done:
            stderr = scrub(result.stderr.decode(errors="replace").replace(tmp, "…")).strip()
            ended = how_it_ended(result, limits) + " before the first cell ran"
            ended += f": {textwrap.shorten(stderr, 300)}" if stderr else ""
        if ended and result.results_truncated:
            ended = "it wrote more results than the grader accepts; " + ended
    return Run(records=records, ended=ended, notes=notes)


def read_records(data: bytes, count: int) -> tuple[dict[int, dict], bool, bool]:
    """Parse the sandbox's JSON lines (untrusted); keep well-formed cell and test records."""
    records: dict[int, dict] = {}
    ready = done = False
    for line in data.splitlines():
        try:
            record = json.loads(line)
            kind, index = record.get("type"), record.get("index")
        except (ValueError, RecursionError, AttributeError):  # not JSON, or not an object
            continue
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

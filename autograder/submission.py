"""A submission, read without trusting it, and what of it runs: the assembly.

Reading raises nothing but :class:`Unreadable`, whose message is the reason the student sees.
Assembly finds the student's cells as nbgrader does, by ``grade_id`` (see :func:`assemble`).
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import NamedTuple

from autograder.assignment import Assignment, cell_text, nbgrader_meta

MAX_NOTEBOOK_BYTES = 20 << 20
MAX_EXTRA_CELLS = 2000  # more cells of one's own than any honest notebook; the rest do not run


class Item(NamedTuple):
    """A cell that runs (a markdown one is only shown), in the order it runs."""

    kind: str  # "code", "test" or "markdown"
    source: str  # a test's as released: the hidden part is restored outside the sandbox
    origin: str  # "course" or "student"
    grade_id: str | None
    label: str  # what the student is told was running when the run ended


class Unreadable(Exception):
    """The submission cannot be graded at all; the message is the reason shown."""


def read_submission(folder: Path, assignment: Assignment) -> tuple[list[tuple], list[str]]:
    """(cell type, source, grade_id or None) of each of the student's well-formed cells, and
    notes on what was changed to read them. A renamed notebook is read if it is the only one."""
    expected = folder / f"{assignment.name}.ipynb"
    found = sorted(p for p in folder.glob("*.ipynb") if p.is_file() and not p.is_symlink())
    if not found:
        raise Unreadable(f"no notebook: {expected.name} is missing from the submission")
    if expected not in found and len(found) > 1:
        names = ", ".join(p.name for p in found[:5])
        raise Unreadable(f"{expected.name} is missing and there are several notebooks ({names})")
    path = expected if expected in found else found[0]
    renamed = f"the notebook is named {path.name}, not {expected.name}; it was graded anyway"
    notes = [] if path == expected else [renamed]
    size = path.stat().st_size
    if size > MAX_NOTEBOOK_BYTES:
        raise Unreadable(
            f"{path.name} is {size >> 20} MiB; notebooks over {MAX_NOTEBOOK_BYTES >> 20} MiB are "
            "not graded (clear the outputs)"
        )
    try:
        text = path.read_bytes().decode("utf-8")
        data = json.loads(text)
    except UnicodeDecodeError as error:
        why = f"is not UTF-8 text ({error.reason} at byte {error.start})"
    except json.JSONDecodeError as error:
        why = f"is not valid JSON (line {error.lineno}, column {error.colno}: {error.msg}); "
        why += "was it edited outside Jupyter?"
    except RecursionError:
        why = "is JSON nested too deeply to be a notebook"
    else:
        why = None if isinstance(data, dict) else "is JSON but not a notebook (no cells)"
    if why:
        raise Unreadable(f"{path.name} {why}")
    if data.get("nbformat") == 3:
        import nbformat

        try:
            data = json.loads(nbformat.writes(nbformat.reads(text, as_version=4)))
        except Exception as error:
            raise Unreadable(
                f"{path.name} is an nbformat 3 notebook that could not be converted to "
                f"nbformat 4: {type(error).__name__}: {str(error)[:300]}"
            ) from None
        notes.append("the notebook was in the old nbformat 3 and was converted to nbformat 4")
    elif data.get("nbformat") != 4:
        raise Unreadable(
            f"{path.name} has nbformat {str(data.get('nbformat'))[:20]!r}; only nbformat 4 (and "
            "3, converted) is graded"
        )
    if not isinstance(data.get("cells"), list):
        raise Unreadable(f"{path.name} is JSON but not a notebook: it has no list of cells")
    cells = []
    for cell in data["cells"]:
        text = cell_text(cell)
        if text is not None and cell.get("cell_type") in ("code", "markdown", "raw"):
            gid = nbgrader_meta(cell).get("grade_id")
            cells.append((cell["cell_type"], text, gid if isinstance(gid, str) else None))
    if len(cells) < len(data["cells"]):
        notes.append(f"{len(data['cells']) - len(cells)} malformed cell(s) were ignored")
    return cells, notes


def _norm(source: str) -> str:
    return "\n".join(line.rstrip() for line in source.strip().splitlines())


def assemble(assignment: Assignment, student: list[tuple]) -> tuple[list[Item], list[str]]:
    """What runs, in order, and notes on what the student changed.

    A student cell is *placed* at a cell of the source notebook: the one whose ``grade_id`` it
    carries (or whose released text it repeats, when the metadata was lost); a cell that
    carries neither runs right after the last placed cell before it (or after the setup cells,
    when nothing before it is placed). Locked cells the student deleted run at their place in
    the source's order; a missing answer cell stays missing.
    """
    notes: list[str] = []
    cells = assignment.cells
    by_id = {c.grade_id: c for c in cells if c.grade_id}
    by_text = {_norm(c.release): c for c in cells if c.role in ("locked", "test") and c.release}
    first_answer = min((c.index for c in cells if c.role == "solution"), default=len(cells))
    setup = [c.index for c in cells if c.role == "locked" and c.index < first_answer]
    position = max(setup, default=-1)
    placed: dict[int, list[Item]] = {}  # source index -> items that run there, in order
    seen: Counter[str] = Counter()  # grade_id -> student cells that carry it
    extra, by_metadata = 0, False
    for cell_type, source, grade_id in student:
        known = by_id.get(grade_id)
        by_metadata |= known is not None
        if known is None and cell_type == "code":
            known = by_text.get(_norm(source))
        if known is not None and known.role != "markdown":
            gid = known.grade_id
            seen[gid] += 1
            answer = known.role == "solution" and cell_type == "code"
            if answer and seen[gid] > 1:
                notes.append(
                    f"the answer cell {gid!r} appears more than once; the copies ran where they "
                    "stand, as extra cells"
                )
            else:  # what follows runs after it (a non-code cell with an answer's id too)
                position = known.index
                locked = known.role != "solution"
                if answer:
                    item = Item("code", source, "student", gid, f"your answer cell {gid!r}")
                    placed.setdefault(position, []).insert(0, item)
                elif locked and seen[gid] == 1 and _norm(source) != _norm(known.release):
                    notes.append(f"the locked cell {gid!r} was edited; the original was used")
                elif locked and seen[gid] == 2:
                    notes.append(f"the locked cell {gid!r} was duplicated; it ran once, as given")
                continue
        if cell_type != "code" or not source.strip():
            continue
        extra += 1
        if extra <= MAX_EXTRA_CELLS:
            item = Item("code", source, "student", None, f"your extra cell {extra}")
            placed.setdefault(position, []).append(item)
    if extra > MAX_EXTRA_CELLS:
        notes.append(f"only the first {MAX_EXTRA_CELLS} of your {extra} extra code cells ran")

    items = placed.get(-1, [])
    for cell in cells:
        gid = cell.grade_id
        if cell.role == "markdown":
            items.append(Item("markdown", cell.release, "course", gid, ""))
        elif cell.role == "locked":
            items.append(Item("code", cell.source, "course", gid, f"the course's cell {gid!r}"))
        elif cell.role == "test":
            items.append(Item("test", cell.release, "course", gid, f"the test {gid!r}"))
        if by_metadata and gid not in seen and cell.role == "solution":
            notes.append(
                f"no cell carries the metadata of the answer cell {gid!r}: your cells ran in "
                "their order"
            )
        elif by_metadata and gid not in seen and cell.role != "markdown":
            notes.append(f"the locked cell {gid!r} was deleted; the original was used")
        items.extend(placed.get(cell.index, []))
    if not by_metadata and extra:
        notes.append(
            "no cell carries the assignment's metadata (was it copied into a new notebook?); "
            "your cells ran in their order, the course's cells where their text was found "
            "(after the setup cells otherwise)"
        )
    return items, notes

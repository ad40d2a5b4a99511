"""A submission, read without trusting it, and what of it runs: the assembly.

Reading raises nothing but :class:`Unreadable`, whose message is the reason the student sees.
Assembly finds the student's cells as nbgrader does, by ``grade_id`` (see :func:`assemble`).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from autograder.assignment import Assignment, SourceCell, cell_text, nbgrader_meta

MAX_NOTEBOOK_BYTES = 20 << 20
MAX_EXTRA_CELLS = 2000  # more cells of one's own than any honest notebook; the rest do not run


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


def _parse(path: Path) -> dict:
    size = path.stat().st_size
    if size > MAX_NOTEBOOK_BYTES:
        raise Unreadable(
            f"{path.name} is {size >> 20} MiB; notebooks over {MAX_NOTEBOOK_BYTES >> 20} MiB are "
            "not graded (clear the outputs)"
        )
    try:
        text = path.read_bytes().decode("utf-8")
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
    except RecursionError:
        raise Unreadable(f"{path.name} is JSON nested too deeply to be a notebook") from None
    if not isinstance(data, dict):
        raise Unreadable(f"{path.name} is JSON but not a notebook (no cells)")
    if data.get("nbformat") == 3:
        import nbformat

        try:
            data = json.loads(nbformat.writes(nbformat.reads(text, as_version=4)))
        except Exception as error:
            raise Unreadable(
                f"{path.name} is an nbformat 3 notebook that could not be converted to "
                f"nbformat 4: {type(error).__name__}: {str(error)[:300]}"
            ) from None
        data["_converted"] = True
    elif data.get("nbformat") != 4:
        raise Unreadable(
            f"{path.name} has nbformat {str(data.get('nbformat'))[:20]!r}; only nbformat 4 (and "
            "3, converted) is graded"
        )
    if not isinstance(data.get("cells"), list):
        raise Unreadable(f"{path.name} is JSON but not a notebook: it has no list of cells")
    return data


def read_submission(folder: Path, assignment: Assignment) -> Submission:
    path, notes = find_notebook(folder, assignment)
    data = _parse(path)
    if data.get("_converted"):
        notes.append("the notebook was in the old nbformat 3 and was converted to nbformat 4")
    cells, skipped = [], 0
    for cell in data["cells"]:
        text = cell_text(cell)
        if text is None or cell.get("cell_type") not in ("code", "markdown", "raw"):
            skipped += 1
            continue
        grade_id = nbgrader_meta(cell).get("grade_id")
        cells.append(
            StudentCell(cell["cell_type"], text, grade_id if isinstance(grade_id, str) else None)
        )
    if skipped:
        notes.append(f"{skipped} malformed cell(s) were ignored")
    return Submission(cells=cells, notes=notes, path=path)


def _norm(source: str) -> str:
    return "\n".join(line.rstrip() for line in source.strip().splitlines())


def _item(kind: str, source: str, origin: str, cell: SourceCell | None, label: str) -> dict:
    return {
        "kind": kind,
        "source": source,
        "origin": origin,
        "grade_id": cell.grade_id if cell else None,
        "label": label,
    }


def assemble(assignment: Assignment, submission: Submission) -> tuple[list[dict], list[str]]:
    """What runs, in order, and notes on what the student changed.

    Each item: ``{"kind": "code"|"test"|"markdown", "source", "origin": "course"|"student",
    "grade_id", "label"}``. A student cell is *placed* at a cell of the source notebook: the
    one whose ``grade_id`` it carries (or whose released text it repeats, when the metadata
    was lost); a cell that carries neither runs right after the last placed cell before it
    (or after the setup cells, when nothing before it is placed). Locked cells the student
    deleted run at their place in the source's order; a missing answer cell stays missing.
    """
    notes: list[str] = []
    cells = assignment.cells
    by_id = {c.grade_id: c for c in cells if c.grade_id}
    by_text = {_norm(c.release): c for c in cells if c.role in ("locked", "test") and c.release}
    solutions = [c.index for c in cells if c.role == "solution"]
    setup_end = max(
        (
            c.index
            for c in cells
            if c.role == "locked" and c.index < min(solutions, default=len(cells))
        ),
        default=-1,
    )
    placed: dict[int, list[dict]] = {}  # source index -> items that run there, in order
    seen: dict[str, int] = {}
    position = setup_end
    extra = 0
    by_metadata = False
    for cell in submission.cells:
        known = by_id.get(cell.grade_id) if cell.grade_id else None
        by_metadata |= known is not None
        if known is None and cell.cell_type == "code":
            known = by_text.get(_norm(cell.source))
        if known is not None and known.role != "markdown":
            seen[known.grade_id] = seen.get(known.grade_id, 0) + 1
            if known.role == "solution" and cell.cell_type == "code":
                if seen[known.grade_id] == 1:
                    position = known.index
                    label = f"your answer cell {known.grade_id!r}"
                    item = _item("code", cell.source, "student", known, label)
                    placed.setdefault(position, []).insert(0, item)
                    continue
                notes.append(
                    f"the answer cell {known.grade_id!r} appears more than once; the "
                    "copies ran where they stand, as extra cells"
                )
            elif known.role == "solution":  # a non-code cell with an answer's id: in place
                position = known.index
            else:
                position = known.index
                if seen[known.grade_id] == 1 and _norm(cell.source) != _norm(known.release):
                    notes.append(
                        f"the locked cell {known.grade_id!r} was edited; the original was used"
                    )
                elif seen[known.grade_id] == 2:
                    notes.append(
                        f"the locked cell {known.grade_id!r} was duplicated; it ran once, as given"
                    )
                continue
        if cell.cell_type != "code" or not cell.source.strip():
            continue
        extra += 1
        if extra <= MAX_EXTRA_CELLS:
            label = f"your extra cell {extra}"
            item = _item("code", cell.source, "student", None, label)
            placed.setdefault(position, []).append(item)
    if extra > MAX_EXTRA_CELLS:
        notes.append(f"only the first {MAX_EXTRA_CELLS} of your {extra} extra code cells ran")

    items: list[dict] = []
    items.extend(placed.get(-1, []))
    for cell in cells:
        if cell.role == "markdown":
            items.append(_item("markdown", cell.release, "course", cell, cell.grade_id or ""))
        elif cell.role == "locked":
            items.append(
                _item("code", cell.source, "course", cell, f"the course's cell {cell.grade_id!r}")
            )
        elif cell.role == "test":
            items.append(_item("test", cell.release, "course", cell, f"the test {cell.grade_id!r}"))
        elif cell.grade_id not in seen and by_metadata:
            notes.append(
                f"no cell carries the metadata of the answer cell {cell.grade_id!r}: your "
                "cells ran in their order"
            )
        if by_metadata and cell.role in ("locked", "test") and cell.grade_id not in seen:
            notes.append(f"the locked cell {cell.grade_id!r} was deleted; the original was used")
        items.extend(placed.get(cell.index, []))
    if not by_metadata and extra:
        notes.append(
            "no cell carries the assignment's metadata (was it copied into a new notebook?); "
            "your cells ran in their order, the course's cells where their text was found "
            "(after the setup cells otherwise)"
        )
    return items, notes

"""The feedback a student gets: their cells with outputs, each test's score and message.

Test cells are shown as released (no hidden test); paths of the instructor's are replaced
(:class:`Scrubber`); at most :data:`MAX_CELLS` of the student's cells and
:data:`MAX_CELL_TEXT` characters a cell are shown, with a note where something was cut.
"""

from __future__ import annotations

import html
import os
import sys
from pathlib import Path

from autograder.assignment import Assignment
from autograder.gradebook import Outcome

MAX_CELLS = 200
MAX_CELL_TEXT = 30_000  # above the harness's own cap per cell and stream, with its note


class Scrubber:
    """Replaces the instructor's paths (course, Python, home, scratch) with an ellipsis."""

    def __init__(self, root: Path) -> None:
        here = Path(__file__).resolve().parent
        # Not the interpreter's base prefix: /usr says nothing about the instructor.
        paths = {
            str(root.resolve()),
            str(Path(sys.prefix).resolve()),
            os.path.abspath(sys.prefix),
            str(here),
            os.path.expanduser("~"),
        }
        self.paths = sorted((p for p in paths if len(p) > 1), key=len, reverse=True)

    def __call__(self, text: str) -> str:
        for path in self.paths:
            text = text.replace(path, "…")
        return text


def _cut(text: str, what: str) -> str:
    if len(text) <= MAX_CELL_TEXT:
        return text
    return text[:MAX_CELL_TEXT] + f"\n[... {len(text) - MAX_CELL_TEXT} more characters of {what}]"


def feedback_notebook(
    assignment: Assignment,
    outcome: Outcome,
    items: list[dict],
    cell_outputs: dict[int, str],
    test_outputs: dict[str, str],
) -> str:
    """The feedback as a notebook (JSON text): a summary, then the cells that ran."""
    import nbformat
    from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output

    said: list[str] = []  # what the student's files and code can influence: shown as text
    total = sum(outcome.scores.values())
    lines = [
        f"# Feedback: {assignment.name}",
        "",
        f"**Score: {total:g} / {assignment.max_score:g}**",
        "",
    ]
    if outcome.status != "graded":
        said.append(f"Your submission could not be graded: {outcome.reason or ''}.")
    else:
        for test in assignment.tests:
            mark = "passed" if outcome.scores.get(test.grade_id) == test.points else "failed"
            score = outcome.scores.get(test.grade_id, 0)
            lines.append(f"- `{test.grade_id}`: {score:g} / {test.points:g} ({mark})")
        if outcome.reason:
            said.append(f"Your notebook did not run to the end: {outcome.reason}.")
    notes = list(outcome.notes)
    shown = [i for i, item in enumerate(items) if item["origin"] == "student"]
    hidden = set(shown[MAX_CELLS:])
    if hidden:
        notes.append(
            f"{len(hidden)} of your cells are not shown here (the feedback shows the "
            f"first {MAX_CELLS}); they ran all the same"
        )
    said += [f"Note: {n}" for n in notes[:50]]
    if said:  # in a <pre> block, escaped: Markdown and HTML in a file name stay text
        lines += [
            "",
            '<pre style="white-space: pre-wrap">',
            *(html.escape(" ".join(t.split()), quote=False) for t in said),
        ]
        lines.append("</pre>")
    cells = [new_markdown_cell("\n".join(lines))]
    points = {t.grade_id: t.points for t in assignment.tests}
    for index, item in enumerate(items):
        if index in hidden:
            continue
        if item["kind"] == "markdown":
            cells.append(new_markdown_cell(item["source"]))
            continue
        cell = new_code_cell(_cut(item["source"], "source"))
        if item["kind"] == "code":
            text = _cut(cell_outputs.get(index, ""), "output")
        else:
            gid = item["grade_id"]
            verdict = f"{outcome.scores.get(gid, 0.0):g} / {points[gid]:g} points"
            if outcome.messages.get(gid):
                verdict += ": " + outcome.messages[gid]
            text = _cut(test_outputs.get(gid, "") + verdict, "output").strip()
        if text:
            cell.outputs = [new_output("stream", name="stdout", text=text)]
        cells.append(cell)
    notebook = new_notebook(cells=cells, metadata={"language_info": {"name": "python"}})
    return nbformat.writes(notebook)


def feedback_html(notebook_json: str) -> str:
    import nbformat
    from nbconvert import HTMLExporter

    exporter = HTMLExporter(template_name="lab")
    body, _ = exporter.from_notebook_node(nbformat.reads(notebook_json, as_version=4))
    return body

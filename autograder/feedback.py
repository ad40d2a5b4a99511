"""The feedback a student gets: their cells with outputs, each test's score and message.

Test cells are shown as released (no hidden test); paths of the instructor's are replaced
(:func:`scrubber`); at most :data:`MAX_CELLS` of the student's cells and
:data:`MAX_CELL_TEXT` characters a cell are shown, with a note where something was cut.
"""

from __future__ import annotations

import functools
import html
import os
import re
import sys
from collections.abc import Callable
from pathlib import Path

from nbformat import NotebookNode
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output

from autograder.assignment import Assignment
from autograder.gradebook import Outcome
from autograder.submission import Item

MAX_CELLS = 200
MAX_CELL_TEXT = 30_000  # above the harness's own cap per cell and stream, with its note


def scrubber(root: Path) -> Callable[[str], str]:
    """Replaces the instructor's paths (course, Python, home, the grader's) with an ellipsis."""
    # Not the interpreter's base prefix: /usr says nothing about the instructor.
    paths = {str(root.resolve()), str(Path(sys.prefix).resolve()), os.path.abspath(sys.prefix)}
    paths |= {str(Path(__file__).resolve().parent), os.path.expanduser("~")}
    pattern = "|".join(re.escape(p) for p in sorted(paths, key=len, reverse=True) if len(p) > 1)
    return functools.partial(re.compile(pattern).sub, "…")


def _cut(text: str, what: str) -> str:
    more = f"\n[... {len(text) - MAX_CELL_TEXT} more characters of {what}]"
    return text if len(text) <= MAX_CELL_TEXT else text[:MAX_CELL_TEXT] + more


def feedback_notebook(
    assignment: Assignment, outcome: Outcome, items: list[Item], records: dict, scrub: Callable
) -> NotebookNode:
    """The feedback as a notebook: a summary, then the cells that ran, each code cell with what
    its run recorded (``records``, by index), each test with its message; text scrubbed."""
    said: list[str] = []  # what the student's files and code can influence: shown as text
    total = f"{sum(outcome.scores.values()):g} / {assignment.max_score:g}"
    lines = [f"# Feedback: {assignment.name}", "", f"**Score: {total}**", ""]
    if outcome.status != "graded":
        said.append(f"Your submission could not be graded: {outcome.reason or ''}.")
    else:
        for test in assignment.tests:
            score = outcome.scores.get(test.grade_id, 0)
            mark = "passed" if score == test.points else "failed"
            lines.append(f"- `{test.grade_id}`: {score:g} / {test.points:g} ({mark})")
        if outcome.reason:
            said.append(f"Your notebook did not run to the end: {outcome.reason}.")
    said += [f"Note: {n}" for n in outcome.notes[:50]]
    shown = [i for i, item in enumerate(items) if item.origin == "student"]
    if hidden := set(shown[MAX_CELLS:]):
        said.append(
            f"Note: {len(hidden)} of your cells are not shown here (the feedback shows the "
            f"first {MAX_CELLS}); they ran all the same"
        )
    if said:  # in a <pre> block, escaped: Markdown and HTML in a file name stay text
        escaped = [html.escape(" ".join(t.split()), quote=False) for t in said]
        lines += ["", '<pre style="white-space: pre-wrap">', *escaped, "</pre>"]
    cells = [new_markdown_cell("\n".join(lines))]
    for index, item in enumerate(items):
        if index in hidden:
            continue
        if item.kind == "markdown":
            cells.append(new_markdown_cell(item.source))
            continue
        cell = new_code_cell(_cut(item.source, "source"))
        if item.kind == "code":
            parts = [records.get(index, {}).get(k) for k in ("stdout", "stderr", "error")]
            text = "\n".join(p for p in parts if isinstance(p, str) and p)
        else:
            text = outcome.messages.get(item.grade_id, "")
        if text:
            cell.outputs = [new_output("stream", name="stdout", text=_cut(scrub(text), "output"))]
        cells.append(cell)
    return new_notebook(cells=cells, metadata={"language_info": {"name": "python"}})


def feedback_html(notebook: NotebookNode) -> str:
    from nbconvert import HTMLExporter

    return HTMLExporter(template_name="lab").from_notebook_node(notebook)[0]

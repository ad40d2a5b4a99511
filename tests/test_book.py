"""The book builds with every chapter executed at small scale, and no cell fails.

One session-scoped build (fresh execution cache, warnings are errors), then one test per
chapter that reads what the build produced.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
JUPYTER_BOOK = Path(sys.executable).with_name("jupyter-book")


def toc_files() -> list[str]:
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    files = [toc["root"]]

    def walk(entries):
        for entry in entries:
            if "file" in entry:
                files.append(entry["file"])
            walk(entry.get("sections", []))
            for part in entry.get("chapters", []):
                walk([part])

    walk(toc.get("chapters", []))
    for part in toc.get("parts", []):
        walk(part.get("chapters", []))
    return files


CHAPTERS = toc_files()


@pytest.fixture(scope="session")
def built_book(tmp_path_factory) -> Path:
    if not JUPYTER_BOOK.exists():
        pytest.fail(f"{JUPYTER_BOOK} not found: run the tests from the course's .venv (make test)")
    out = tmp_path_factory.mktemp("book")
    env = {**os.environ, "COURSE_SCALE": "small", "COURSE_PROGRESS": "0"}
    env.pop("COURSE_DEVICE", None)
    result = subprocess.run(
        [str(JUPYTER_BOOK), "build", str(ROOT), "--path-output", str(out), "-W", "--keep-going"],
        env=env,
        capture_output=True,
        text=True,
        timeout=3600,
    )
    log = result.stdout + result.stderr
    (out / "build.log").write_text(log)
    assert result.returncode == 0, (
        f"the book build failed (exit {result.returncode}):\n{log[-8000:]}"
    )
    return out / "_build" / "html"


def test_every_chapter_in_the_toc_exists():
    for name in CHAPTERS:
        assert (ROOT / f"{name}.md").exists(), f"_toc.yml lists {name} but {name}.md is missing"


@pytest.mark.book
@pytest.mark.parametrize("chapter", CHAPTERS)
def test_chapter_executed_without_errors(built_book, chapter):
    page = built_book / f"{chapter}.html"
    assert page.exists(), f"{page} was not built"
    html = page.read_text()
    assert "Traceback" not in html and "output error" not in html, f"{chapter} shows an error"
    source = (ROOT / f"{chapter}.md").read_text()
    if "{code-cell}" in source:
        assert re.search(r"device: (cpu|cuda|mps)", html), f"{chapter} does not print its device"
        n_plots = source.count("subplots(")
        n_images = len(re.findall(r'<img[^>]+src="[^"]*_images/', html))
        assert n_images >= n_plots, (
            f"{chapter}: {n_plots} figures in the source, {n_images} in the page"
        )


@pytest.mark.book
def test_adam_chapter_shows_bit_exact_parity(built_book):
    html = (built_book / "book" / "adam.html").read_text()
    parity = re.findall(
        r"course_lib.{0,40}vs torch, float(?:32|64)\s+largest weight difference over \d+ steps: ([0-9.e+-]+)",
        html,
    )
    assert len(parity) == 3, "the Adam chapter should report three course_lib-vs-torch comparisons"
    assert all(float(value) == 0.0 for value in parity), f"course_lib and torch differ: {parity}"
    text = re.sub(r"<[^>]+>", "", html)  # highlighted code is split into spans
    assert "def adam_step(" in text, "adam_step's source is not included in the chapter"
    assert "def step(self" in text, "Adam.step's source is not included in the chapter"

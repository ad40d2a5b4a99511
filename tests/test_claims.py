"""Checked claims: the mechanism (course_lib.claims), and the chapters' prose using it.

The prose test reads each chapter's MyST source and fails on a number with three or more
significant digits that no cell produced: numbers in prose are glued from the cell that
computed them. A number may stand in the text only as an input the chapter's code sets (it
appears in a code cell), a year, or a fact from a source cited in the same sentence.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from course_lib.claims import ClaimError, Claims

ROOT = Path(__file__).resolve().parents[1]
CHAPTERS = sorted((ROOT / "book").glob("*.md"))

# ---------------------------------------------------------------------------------------
# The mechanism


def test_check_fails_naming_chapter_and_sentence():
    claims = Claims("warmup")
    with pytest.raises(ClaimError, match=r"'warmup'.*'warmup 25 ends lowest'.*0\.13 against 0\.11"):
        claims.check("lowest", 0.13 < 0.11, "warmup 25 ends lowest", evidence="0.13 against 0.11")
    assert claims.stated == {}


def test_check_that_holds_records_the_sentence_and_shows_nothing_in_the_cell():
    claims = Claims("adam")
    assert claims.check("bound", 3.1 <= 3.17, "the step stays under the bound") is None
    assert claims.stated == {"bound": "the step stays under the bound"}


def test_number_formats_and_either_picks_from_the_data():
    claims = Claims("batch_size")
    claims.number("exponent", 0.51234, ".2f")
    claims.number("steps", 16, "d")
    claims.either("rule", 0.2 < 0.1, "linear fits", "square root fits")
    assert claims.stated == {"exponent": "0.51", "steps": "16", "rule": "square root fits"}


@pytest.mark.parametrize(
    "call",
    [
        lambda c: c.number("bad key", 1.0),
        lambda c: c.number("x", "abc", ".3f"),
        lambda c: c.check("x", True, "  "),
        lambda c: c.text("x", ""),
    ],
)
def test_bad_input_is_a_clear_error(call):
    with pytest.raises(ValueError, match="memory"):
        call(Claims("memory"))


def test_a_key_cannot_be_glued_with_two_texts():
    claims = Claims("memory")
    claims.number("ratio", 0.97, ".2f")
    claims.number("ratio", 0.97, ".2f")  # the same text again is harmless (a re-run cell)
    with pytest.raises(ValueError, match="glued twice"):
        claims.number("ratio", 1.2, ".2f")


# ---------------------------------------------------------------------------------------
# Prose numbers

FENCE = re.compile(r"^(`{3,}|~{3,}|:{3,})")
NUMBER = re.compile(r"(?<![\w.$\\])[-+]?\d[\d,]*(?:\.\d+)?(?:[eE][-+]?\d+)?(?![\w]|\.\d)")
GLUE = re.compile(r"\{glue(?::\w+)?\}`[^`]*`")
CITATION = re.compile(r"\{cite(?::\w+)?\}`|\]\(https?://")


def significant_digits(token: str) -> int:
    mantissa = re.split(r"[eE]", token.lstrip("+-").replace(",", ""))[0]
    if "." in mantissa:
        return len(mantissa.replace(".", "").lstrip("0"))
    return len(mantissa.strip("0")) if mantissa.strip("0") else 1


def split_chapter(text: str) -> tuple[str, str]:
    """(prose, code) of a MyST chapter: front matter, fences and directive options removed."""
    text = re.sub(r"\A---\n.*?\n---\n", "", text, flags=re.S)
    prose, code, fence = [], [], None
    for line in text.splitlines():
        match = FENCE.match(line.strip())
        if fence is None and match:
            fence = match.group(1)
            continue
        if fence is not None:
            if line.strip() == fence:
                fence = None
            elif fence.startswith(":"):  # a colon-fence directive: its body is prose
                if not line.strip().startswith(":"):
                    prose.append(line)
            else:
                code.append(line)
            continue
        prose.append(line)
    return "\n".join(prose), "\n".join(code)


def typed_numbers(text: str) -> list[str]:
    prose, code = split_chapter(text)
    code_numbers = {n.replace(",", "") for n in NUMBER.findall(code)}
    found = []
    for paragraph in re.split(r"\n\s*\n", prose):
        paragraph = GLUE.sub("", paragraph)
        paragraph = re.sub(r"\bPython \d+\.\d+", "", paragraph)  # versions are not results
        paragraph = re.sub(r"\]\([^)]*\)", "]", paragraph)  # link targets
        paragraph = re.sub(r"\{(?:ref|numref|doc|eq)\}`[^`]*`", "", paragraph)
        for sentence in re.split(r"(?<=[.!?])\s+(?=[A-Z(*{$])", paragraph):
            if CITATION.search(sentence):
                continue  # a fact from the cited source
            sentence = re.sub(r"`[^`]*`", "", sentence)  # inline code
            for token in NUMBER.findall(sentence):
                plain = token.lstrip("+-").replace(",", "")
                if re.fullmatch(r"(19|20)\d\d", plain) or plain in code_numbers:
                    continue
                if significant_digits(token) >= 3:
                    found.append(f"{token!r} in: {sentence.strip()[:160]}")
    return found


def test_the_number_scanner():
    assert significant_digits("0.112") == 3 and significant_digits("1200") == 2
    assert significant_digits("3.16") == 3 and significant_digits("10,000") == 1
    assert significant_digits("6.25e-5") == 3 and significant_digits("1.0") == 2
    chapter = (
        "---\nkernelspec: x\n---\n"
        "Warmup 25 ends at 0.112 against 0.127.\n\n"
        "The bound is 3.16 lr {cite:p}`kingma2015adam`. In 2024 it was {glue:text}`loss`.\n\n"
        "```{code-cell} python\nbatch = 4096\n```\n\nWe train at batch 4096 for 1200 steps.\n"
    )
    assert [f.split(" in:")[0] for f in typed_numbers(chapter)] == ["'0.112'", "'0.127'"]


@pytest.mark.parametrize("chapter", CHAPTERS, ids=lambda p: p.stem)
def test_prose_has_no_typed_measured_numbers(chapter):
    found = typed_numbers(chapter.read_text())
    assert not found, (
        f"{chapter.name}: numbers in prose that no cell produced (glue them from the cell "
        "that computes them with course_lib.claims, or cite their source in the sentence):\n"
        + "\n".join(found)
    )


@pytest.mark.book
@pytest.mark.slow
@pytest.mark.parametrize("holds", [True, False])
def test_a_sentence_the_data_does_not_support_fails_the_build(tmp_path, holds):
    """End to end, with the book's own configuration: what holds is pasted, what does not
    stops the build with the chapter and the sentence in its log."""
    import shutil
    import subprocess
    import sys

    shutil.copy2(ROOT / "_config.yml", tmp_path)
    shutil.copytree(ROOT / "book" / "_static", tmp_path / "book" / "_static")
    shutil.copy2(ROOT / "book" / "references.bib", tmp_path / "book")
    (tmp_path / "_toc.yml").write_text("format: jb-book\nroot: book/page\n")
    loss = "0.112 < 0.127" if holds else "0.112 > 0.127"
    (tmp_path / "book" / "page.md").write_text(
        "---\njupytext:\n  text_representation:\n    extension: .md\n    format_name: myst\n"
        "kernelspec:\n  display_name: Python 3\n  language: python\n  name: python3\n---\n"
        "# Page\n\n```{code-cell} python\nfrom course_lib.claims import Claims\n"
        "claims = Claims('warmup')\nclaims.number('loss', 0.11234, '.3f')\n"
        f"claims.check('lowest', {loss}, 'warmup 25 ends lowest', evidence='0.112 vs 0.127')\n"
        "```\n\nIt ends at {glue:text}`loss`: {glue:text}`lowest`.\n"
    )
    result = subprocess.run(
        [str(Path(sys.executable).parent / "jupyter-book"), "build", ".", "-W", "--keep-going"],
        cwd=tmp_path,
        env={**os.environ, "COURSE_PROGRESS": "0"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    log = re.sub(r"\x1b\[[0-9;]*m", "", result.stdout + result.stderr)  # colours
    if holds:
        assert result.returncode == 0, log[-4000:]
        html = (tmp_path / "_build/html/book/page.html").read_text()
        assert re.search(r"It ends at <span[^>]*>0\.112</span>: <span[^>]*>warmup 25 ends", html)
    else:
        assert result.returncode != 0
        assert "ClaimError: chapter 'warmup'" in log and "'warmup 25 ends lowest'" in log, log

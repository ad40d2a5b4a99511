"""The built book, read in a real browser: headless Chromium, as a reader offline sees it.

The book is the one tests/test_book.py builds (one build per session, shared). It is served
from 127.0.0.1 by http.server in a thread; every request for anything else is recorded and
refused, so a page that works here works without a network. Each page must load with no
console error, render its math with the book's own MathJax, load every figure (with alt text,
legible at the column's width), and show every output block without horizontal scrolling at
a 1280-pixel window. On the scheduling page the explorer must respond to its controls and
draw what course_lib.schedules computes.

Chromium is Debian's ``chromium`` (``make setup`` installs it as root), driven by Playwright
through ``executable_path``: nothing here downloads a browser. Without either, the tests are
skipped with the reason.
"""

from __future__ import annotations

import functools
import http.server
import json
import re
import shutil
import threading
from pathlib import Path

import pytest
from test_book import CHAPTERS, build_book

from course_lib import plotting
from course_lib import schedule_explorer as X

pytestmark = [pytest.mark.browser, pytest.mark.slow]

CHROMIUM_NAMES = ("chromium", "chromium-browser")
WINDOW = {"width": 1280, "height": 900}
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
REPORT: dict[str, dict] = {}


def chromium_path() -> str | None:
    return next((shutil.which(name) for name in CHROMIUM_NAMES if shutil.which(name)), None)


@pytest.fixture(scope="session")
def browser():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("playwright is not installed: make setup installs it with the course")
    executable = chromium_path()
    if executable is None:
        pytest.skip(
            "Chromium is not installed: make setup installs it as root "
            "(or run: sudo apt-get install chromium)"
        )
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=ARGS)
        yield browser
        browser.close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # the test output is the report, not the access log
        pass


@pytest.fixture(scope="session")
def site(browser, tmp_path_factory):
    """The built book served from 127.0.0.1 on a free port; yields its base URL."""
    html = build_book(tmp_path_factory)
    handler = functools.partial(_QuietHandler, directory=str(html))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    if REPORT:
        (Path(html).parent / "browser-report.json").write_text(json.dumps(REPORT, indent=2))


@pytest.fixture
def open_page(browser, site):
    """Open a page of the book the way an offline reader would; yield (page, record)."""
    context = browser.new_context(viewport=WINDOW)
    record = {"external": [], "console_errors": [], "page_errors": [], "failed": []}

    def route(route):
        if route.request.url.startswith(site):
            route.continue_()
        else:
            record["external"].append(route.request.url)
            route.abort()

    def opener(path: str):
        page = context.new_page()
        page.route("**/*", route)
        page.on(
            "console",
            lambda m: record["console_errors"].append(m.text) if m.type == "error" else None,
        )
        page.on("pageerror", lambda error: record["page_errors"].append(str(error)))
        page.on("requestfailed", lambda r: record["failed"].append(r.url))
        page.goto(f"{site}/{path}", wait_until="load")
        # MathJax typesets after the page has loaded: wait for its first pass to finish
        page.evaluate(
            "() => window.MathJax && MathJax.startup && MathJax.startup.promise"
            " ? MathJax.startup.promise.then(() => true) : true"
        )
        page.wait_for_load_state("networkidle")
        return page, record

    yield opener
    context.close()


MEASURE = """() => {
  const main = document.querySelector("main") || document.body;
  const clone = main.cloneNode(true);
  clone.querySelectorAll("pre, code, script, style, mjx-container, .highlight")
    .forEach(e => e.remove());
  const overflowing = (selector) => [...main.querySelectorAll(selector)]
    .filter(e => e.scrollWidth > e.clientWidth + 1)
    .map(e => ({width: e.scrollWidth, shown: e.clientWidth,
                text: e.textContent.trim().split("\\n")[0].slice(0, 80)}));
  return {
    text: clone.innerText,
    math: main.querySelectorAll("mjx-container").length,
    mathErrors: main.querySelectorAll("mjx-merror, .MathJax_Error").length,
    images: [...main.querySelectorAll("img")].map(img => ({
      src: img.getAttribute("src"), alt: img.getAttribute("alt") || "",
      complete: img.complete, natural: img.naturalWidth, shown: img.clientWidth,
      link: img.closest("a") ? img.closest("a").getAttribute("href") : null})),
    outputs: main.querySelectorAll(".cell_output").length,
    overflowingOutputs: overflowing(".cell_output pre, .cell_output .output"),
    codeBlocks: main.querySelectorAll("div.highlight pre").length,
    overflowingCode: overflowing("div.highlight pre"),
  };
}"""

RAW_TEX = re.compile(r"\\\(|\\\)|\\\[|\\\]|\$\$|\\(?:frac|beta|eta|hat|sqrt|lambda|mathrm|text)\b")


@pytest.mark.parametrize("chapter", CHAPTERS)
def test_page_offline(open_page, chapter):
    page, record = open_page(f"{chapter}.html")
    seen = page.evaluate(MEASURE)
    source = Path(__file__).resolve().parents[1].joinpath(f"{chapter}.md").read_text()
    REPORT[chapter] = {
        "figures": sum("_images/" in image["src"] for image in seen["images"]),
        "external_requests": record["external"],
        "console_errors": record["console_errors"] + record["page_errors"],
        "output_blocks": seen["outputs"],
        "overflowing_outputs": len(seen["overflowingOutputs"]),
        "code_blocks": seen["codeBlocks"],
        "overflowing_code_blocks": len(seen["overflowingCode"]),
        "math": seen["math"],
    }
    print(f"\n{chapter}: {json.dumps(REPORT[chapter])}")

    assert record["external"] == [], f"{chapter} requested from outside: {record['external']}"
    errors = record["console_errors"] + record["page_errors"]
    assert errors == [], f"{chapter} logged errors: {errors}"
    assert record["failed"] == [], f"{chapter}: requests failed: {record['failed']}"

    # math is typeset by the local MathJax, and no TeX is left in the visible text
    if "$" in source:
        assert seen["math"] > 0, f"{chapter} has math but no MathJax output"
    assert seen["mathErrors"] == 0, f"{chapter}: MathJax reported errors"
    raw = RAW_TEX.findall(seen["text"])
    assert not raw, f"{chapter} shows raw TeX: {raw[:5]}"

    # every figure loaded, says what it shows, opens at full resolution, and is legible
    for image in seen["images"]:
        assert image["complete"] and image["natural"] > 0, f"{chapter}: {image['src']} is broken"
        assert image["alt"].strip(), f"{chapter}: {image['src']} has no alt text"
        if "_images/" not in image["src"]:
            continue
        alt = image["alt"]
        assert len(alt.split()) >= 5 and "_images" not in alt and ".png" not in alt, (
            f"{chapter}: {image['src']} has no alt text saying what it shows: {alt!r}"
        )
        assert image["link"] and image["link"].endswith(image["src"].split("/")[-1]), (
            f"{chapter}: {image['src']} does not open at full resolution on click"
        )
        scale = image["shown"] / image["natural"]
        smallest = plotting.MIN_FONT_SIZE * plotting.DPI * scale / 96
        assert smallest >= 9.0, (
            f"{chapter}: {image['src']} ({image['natural']} px) is shown at {image['shown']} px:"
            f" its smallest text is {smallest:.1f} pt on screen, below 9 pt"
        )

    # what the prose cites can be read without scrolling sideways
    assert seen["overflowingOutputs"] == [], (
        f"{chapter}: output blocks wider than the column at 1280 px: {seen['overflowingOutputs']}"
    )


EXPLORER = """(root) => ({
  curve: root.explorerCurve,
  path: root.querySelector('[data-role="curve"]').getAttribute("d"),
  summary: root.querySelector('[data-role="summary"]').textContent,
  warmup: root.querySelector('[data-role="warmup-out"]').textContent,
  peak: root.querySelector('[data-role="peak-out"]').textContent,
  warmupDisabled: root.querySelector('[data-role="warmup"]').disabled,
  ticks: [...root.querySelectorAll("svg text")].map(t => t.textContent).join(" "),
})"""


def set_control(page, root, role, value):
    """Set a control as a reader would: the value, then the events the page listens to."""
    page.evaluate(
        """([root, role, value]) => {
             const control = root.querySelector(`[data-role="${role}"]`);
             if (control.type === "checkbox") control.checked = value; else control.value = value;
             control.dispatchEvent(new Event("input", {bubbles: true}));
             control.dispatchEvent(new Event("change", {bubbles: true}));
           }""",
        [root, role, value],
    )


def library_rates(state, kind, warmup, floor):
    schedule = X.explorer_schedule(
        kind,
        peak_lr=state["curve"]["peak"],
        num_training_steps=state["curve"]["length"],
        warmup_fraction=warmup,
        floor_fraction=floor,
    )
    return [schedule(step) for step in state["curve"]["steps"]]


def test_schedule_explorer_responds_and_draws_the_library(open_page):
    page, record = open_page("book/scheduling.html")
    root = page.query_selector(".course-schedule-explorer")
    assert root is not None, "the scheduling page has no explorer"
    first = page.evaluate(EXPLORER, root)
    assert first["path"].startswith("M") and first["summary"], "the explorer drew nothing"

    # another schedule: the plotted path and the read-outs change
    set_control(page, root, "kind", str(X.KINDS.index("one-cycle")))
    one_cycle = page.evaluate(EXPLORER, root)
    assert one_cycle["path"] != first["path"] and one_cycle["summary"] != first["summary"]
    assert one_cycle["warmupDisabled"] and "30%" in one_cycle["warmup"]
    rates, steps = one_cycle["curve"]["rates"], one_cycle["curve"]["steps"]
    top = steps[max(range(len(rates)), key=rates.__getitem__)]
    length = one_cycle["curve"]["length"]
    assert abs(top - (0.3 * length - 1)) <= length / 200, (
        f"one-cycle peaks at step {top} of {length}, not at 30% of the run"
    )

    # a slider: the path and its read-out change
    set_control(page, root, "kind", str(X.KINDS.index("cosine")))
    before = page.evaluate(EXPLORER, root)
    set_control(page, root, "warmup", str(X.WARMUP_FRACTIONS.index(0.2)))
    after = page.evaluate(EXPLORER, root)
    assert after["path"] != before["path"] and after["warmup"] != before["warmup"]
    assert after["summary"] != before["summary"]
    set_control(page, root, "peak", "-2")
    peaked = page.evaluate(EXPLORER, root)
    # on a linear axis the curve keeps its shape (the axis is scaled to the peak); its rates
    # and the axis labels change
    assert peaked["peak"] != after["peak"] and peaked["curve"]["rates"] != after["curve"]["rates"]
    assert peaked["ticks"] != after["ticks"]

    # every kind, at every run length, draws course_lib.schedules' values
    floor_index = X.FLOOR_FRACTIONS.index(0.1)
    set_control(page, root, "floor", str(floor_index))
    for kind_index, kind in enumerate(X.KINDS):
        set_control(page, root, "kind", str(kind_index))
        for exponent in range(2, 7):
            set_control(page, root, "length", str(exponent))
            state = page.evaluate(EXPLORER, root)
            assert state["curve"]["kind"] == kind and state["curve"]["length"] == 10**exponent
            floor = 0.1 if kind in X._USES_FLOOR else 0.0
            expected = library_rates(state, kind, 0.2, floor)
            assert state["curve"]["rates"] == pytest.approx(expected, rel=5e-4, abs=1e-15), (
                f"the explorer's {kind} over {10**exponent} steps is not the library's"
            )
    assert record["console_errors"] == [] and record["page_errors"] == []


def test_search_and_index_pages_offline(open_page):
    """The pages Sphinx adds: the search (which must find a chapter) and the index."""
    page, record = open_page("search.html?q=warmup")
    page.wait_for_selector("#search-results li, ul.search li", timeout=30_000)
    hits = page.eval_on_selector_all("#search-results li a, ul.search li a", "a => a.length")
    assert hits > 0, "searching the book for 'warmup' finds nothing"
    page, record = open_page("genindex.html")
    base = page.url.rsplit("/", 1)[0]
    page.goto(f"{base}/index.html")  # a redirect to the preface
    page.wait_for_url("**/book/preface.html")
    page.wait_for_load_state("networkidle")
    assert record["external"] == [], f"requests left the site: {record['external']}"
    errors = record["console_errors"] + record["page_errors"]
    assert errors == [], f"errors logged: {errors}"

"""The instructor's documented commands, run as written from a plain shell.

The shell has only ``HOME`` and a system ``PATH`` (no virtual environment activated, no
``.venv/bin`` on the PATH), in a scratch copy of the course: ``make grade``, and the plain
nbgrader commands of ``README.md`` and ``autograder/README.md`` (release, collect, autograde,
feedback, release_feedback, export) with one submission through nbgrader's exchange and one
placed by hand, and the formgrader listing the assignment.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import nbformat
import pytest
from test_grade import solved

from autograder import make_exercises, sandbox

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent  # .venv/bin, named by path as the READMEs do
PLAIN = {"HOME": os.environ.get("HOME", "/root"), "PATH": "/usr/local/bin:/usr/bin:/bin"}


def shell(command: list[str], cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    done = subprocess.run(
        command, cwd=cwd, env=PLAIN, capture_output=True, text=True, timeout=timeout, check=False
    )
    assert done.returncode == 0, f"{command}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


@pytest.fixture(scope="module")
def course(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = make_exercises.scratch_course(
        tmp_path_factory.mktemp("instructor") / "course", names=["adamw"]
    )
    make_exercises.generate(root, ["adamw"])
    folder = root / "autograder" / "submitted" / "bob" / "adamw"
    folder.mkdir(parents=True)
    nbformat.write(solved(root, "adamw"), str(folder / "adamw.ipynb"))
    return root


@pytest.mark.skipif(not sandbox.bwrap_status()[0], reason="no bubblewrap sandbox")
def test_make_grade_from_a_plain_shell(course):
    args = f"--root {course} --workers 1"
    done = shell(["make", "-C", str(ROOT), "grade", "ASSIGNMENT=adamw", f"GRADE_ARGS={args}"], ROOT)
    assert "bob" in done.stdout and "7/7" in done.stdout, done.stdout[-2000:]
    rows = (course / "autograder" / "grades.csv").read_text()
    assert "adamw" in rows and ",bob," in rows


def test_plain_nbgrader_commands_from_a_plain_shell(course, tmp_path):
    nbgrader = str(BIN / "nbgrader")
    here = course / "autograder"
    exchange = here / "exchange"
    shell([nbgrader, "generate_assignment", "adamw", "--force"], here)
    shell([nbgrader, "release_assignment", "adamw", "--force"], here)
    assert (exchange / "adam-course" / "outbound" / "adamw" / "adamw.ipynb").is_file()
    # A student fetches and submits through the exchange (their own folder, same machine).
    student = tmp_path / "student"
    student.mkdir()
    where = ["--course", "adam-course", f"--Exchange.root={exchange}"]
    shell([nbgrader, "fetch_assignment", "adamw", *where], student)
    nbformat.write(solved(course, "adamw"), str(student / "adamw" / "adamw.ipynb"))
    shell([nbgrader, "submit", "adamw", *where], student)
    shell([nbgrader, "collect", "adamw"], here)
    submitted = sorted(p.name for p in (here / "submitted").iterdir())
    assert len(submitted) == 2 and "bob" in submitted
    shell([nbgrader, "autograde", "adamw", "--force"], here)
    shell([nbgrader, "generate_feedback", "adamw", "--force"], here)
    # bob's notebook was placed by hand: no timestamp.txt or submission_secret.txt, so his
    # feedback cannot go through the exchange; the other student's does.
    released = shell([nbgrader, "release_feedback", "adamw"], here)
    assert "Not releasing feedback for 'bob'" in released.stderr, released.stderr[-2000:]
    assert len(list((exchange / "adam-course" / "feedback").glob("*.html"))) == 1
    shell([nbgrader, "export"], here)
    rows = (here / "grades.csv").read_text().splitlines()
    scores = {row.split(",")[3]: float(row.split(",")[7]) for row in rows[1:]}
    assert scores["bob"] == 7.0 and len(scores) == 2 and set(scores.values()) == {7.0}


def test_formgrader_lists_the_assignments(course):
    with socket.socket() as probe:  # a free port (with --port=0 Jupyter reports a wrong one)
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [str(BIN / "jupyter"), "server", "--no-browser", "--allow-root", f"--port={port}"]
    command += ["--ServerApp.port_retries=0", "--ServerApp.ip=127.0.0.1"]
    command += ["--IdentityProvider.token=course-test"]
    server = subprocess.Popen(
        command,
        cwd=course / "autograder",
        env=PLAIN,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    found: list[str] = []
    log: list[str] = []
    running = threading.Event()

    def read_log() -> None:  # its log says where it runs once it listens; read it to the end
        for line in server.stderr:
            log.append(line)
            match = re.search(r"(http://127\.0\.0\.1:\d+)/", line)
            if match and not found:
                found.append(match.group(1))
                running.set()
        running.set()

    reader = threading.Thread(target=read_log, daemon=True)
    reader.start()
    try:
        assert running.wait(120) and found, "jupyter server did not start"
        url = f"{found[0]}/formgrader/api/assignments?token=course-test"
        # Jupyter logs its URL a moment before it accepts connections: retry those refused.
        for attempt in range(300):
            try:
                with urllib.request.urlopen(url, timeout=60) as response:
                    listed = json.loads(response.read())
                break
            except urllib.error.URLError as error:
                if not isinstance(error.reason, ConnectionRefusedError) or attempt == 299:
                    pytest.fail(f"{error}\n{''.join(log)[-5000:]}")
                time.sleep(0.2)
    finally:
        server.terminate()
        server.wait(timeout=60)
        reader.join(timeout=60)
    assert [a["name"] for a in listed] == ["adamw"], listed
    assert listed[0]["max_score"] == 7.0

"""The sandboxed batch grader (``course-grade``, ``autograder/grade.py``) against an adversarial corpus.

One scratch course, one batch: a correct submission and every hostile or broken one the
threat model names, graded together by ``grade.py`` with 2 workers, the way an instructor runs
it. Each submission has its expected outcome (total score, and words its feedback must show);
the correct one must still get full marks, the gradebook must hold each student's own scores
and nothing else, and no file of the course may change except what the grader writes.
Then the batch is killed with SIGKILL halfway and rerun, and graded twice: every submission
ends graded exactly once, with the same scores.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
from autograder import grade, make_exercises, sandbox  # noqa: E402
from autograder.gradebook import MARKER_NAME  # noqa: E402

BWRAP_OK, BWRAP_REASON = sandbox.bwrap_status()
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not BWRAP_OK, reason=f"no bubblewrap sandbox: {BWRAP_REASON}"),
]

SECRET = "grader-secret-7f3a9c"  # in the grader's environment; must never reach a student
TIMEOUT = 25  # seconds per submission in these runs (hangs cost this much)
MEMORY_MB = 2048


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def solved(root: Path, assignment: str) -> nbformat.NotebookNode:
    """The release with every answer cell holding the solution's code (no markers)."""
    source = nbformat.read(str(root / "solutions" / assignment / f"{assignment}.ipynb"), 4)
    release = nbformat.read(str(root / "exercises" / assignment / f"{assignment}.ipynb"), 4)
    answers = {
        c.metadata["nbgrader"]["grade_id"]: "\n".join(
            line for line in c.source.splitlines() if "### " not in line
        )
        for c in source.cells
        if c.metadata.get("nbgrader", {}).get("solution")
    }
    for cell in release.cells:
        grade_id = cell.metadata.get("nbgrader", {}).get("grade_id")
        if grade_id in answers:
            cell.source = answers[grade_id]
    return release


def answer_cell(nb: nbformat.NotebookNode, grade_id: str = "adamw") -> nbformat.NotebookNode:
    return next(c for c in nb.cells if c.metadata.get("nbgrader", {}).get("grade_id") == grade_id)


def locked_tests(nb: nbformat.NotebookNode) -> list[nbformat.NotebookNode]:
    return [c for c in nb.cells if c.metadata.get("nbgrader", {}).get("grade")]


# A wrong AdamW (plain SGD) that the monkeypatching submissions try to pass off as right.
SGD = """
class AdamW(torch.optim.Optimizer):
    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2):
        if lr < 0 or eps < 0 or weight_decay < 0 or not all(0 <= b < 1 for b in betas):
            raise ValueError("Invalid hyperparameter")
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    state = self.state[p]
                    state["step"] = state.get("step", 0) + 1
                    state.setdefault("exp_avg", torch.zeros_like(p))
                    state.setdefault("exp_avg_sq", torch.zeros_like(p))
                    p.add_(p.grad, alpha=-group["lr"])
        return loss
"""


SUBPROCESS_FUSED = '\nimport subprocess, sys, pickle, struct\n_HELPER = """\nimport sys, pickle, struct, torch\ntorch.set_num_threads(1)\nf = getattr(torch, "_fused_" + "adamw_")\ninp, out = sys.stdin.buffer, sys.stdout.buffer\nwhile True:\n    hdr = inp.read(8)\n    if len(hdr) < 8: break\n    req = pickle.loads(inp.read(struct.unpack("<Q", hdr)[0]))\n    ps, gs, ms, vs, ss, kw = req\n    f(ps, gs, ms, vs, [], ss, amsgrad=False, maximize=False, **kw)\n    data = pickle.dumps((ps, ms, vs))\n    out.write(struct.pack("<Q", len(data))); out.write(data); out.flush()\n"""\n_proc = []\ndef _call(req):\n    if not _proc:\n        _proc.append(subprocess.Popen([sys.executable, "-I", "-c", _HELPER], stdin=subprocess.PIPE, stdout=subprocess.PIPE))\n    p = _proc[0]\n    data = pickle.dumps(req)\n    p.stdin.write(struct.pack("<Q", len(data))); p.stdin.write(data); p.stdin.flush()\n    return pickle.loads(p.stdout.read(struct.unpack("<Q", p.stdout.read(8))[0]))\n\nclass AdamW(torch.optim.Optimizer):\n    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2):\n        if lr < 0 or eps < 0 or weight_decay < 0 or not all(0 <= b < 1 for b in betas):\n            raise ValueError("Invalid hyperparameter")\n        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay))\n\n    @torch.no_grad()\n    def step(self, closure=None):\n        loss = None\n        if closure is not None:\n            with torch.enable_grad():\n                loss = closure()\n        for group in self.param_groups:\n            ps, ms, vs, ss = [], [], [], []\n            for p in group["params"]:\n                if p.grad is None:\n                    continue\n                st = self.state[p]\n                if not st:\n                    st["step"] = torch.tensor(0.0)\n                    st["exp_avg"] = torch.zeros_like(p)\n                    st["exp_avg_sq"] = torch.zeros_like(p)\n                st["step"] += 1\n                ps.append(p); ms.append(st["exp_avg"]); vs.append(st["exp_avg_sq"]); ss.append(st["step"])\n            if not ps:\n                continue\n            b1, b2 = group["betas"]\n            kw = dict(lr=group["lr"], beta1=b1, beta2=b2, weight_decay=group["weight_decay"], eps=group["eps"])\n            rp, rm, rv = _call(([p.detach().clone() for p in ps], [p.grad.clone() for p in ps], [m.clone() for m in ms], [v.clone() for v in vs], [s.clone() for s in ss], kw))\n            for dst, src in zip(ps + ms + vs, rp + rm + rv):\n                dst.copy_(src)\n        return loss\n'


def corpus(root: Path, port: int) -> dict[str, tuple[object, float, list[str]]]:
    """student -> (notebook or raw bytes or (file name, bytes), expected total, words)."""
    nb = lambda: solved(root, "adamw")  # noqa: E731
    full = 7.0

    def with_answer(extra: str, base: str | None = None) -> nbformat.NotebookNode:
        book = nb()
        cell = answer_cell(book)
        cell.source = (base if base is not None else cell.source) + "\n" + extra
        return book

    def with_cell(code: str) -> nbformat.NotebookNode:
        book = nb()
        book.cells.append(nbformat.v4.new_code_cell(code))
        return book

    def edited(change) -> nbformat.NotebookNode:
        book = nb()
        change(book)
        return book

    secret_paths = _b64(f"{root}/solutions/adamw/adamw.ipynb|{root}/autograder/gradebook.db")
    patch_all = (
        "import builtins, numpy, torch, torch.testing\n"
        "torch.allclose = lambda *a, **k: True\n"
        "torch.equal = lambda *a, **k: True\n"
        "numpy.allclose = lambda *a, **k: True\n"
        "torch.testing.assert_close = lambda *a, **k: None\n"
        "builtins.AssertionError = type('Nothing', (Exception,), {})\n"
    )
    ip_hooks = (
        "ip = get_ipython()\n"
        "ip.input_transformers_post.append(lambda lines: ['pass\\n'])\n"
        "import ast\n"
        "class Gut(ast.NodeTransformer):\n"
        "    def visit_Assert(self, node):\n"
        "        return None\n"
        "ip.ast_transformers.append(Gut())\n"
        "ip.showtraceback = lambda *a, **k: None\n"
        "ip.set_custom_exc((BaseException,), lambda *a, **k: None)\n"
    )
    cases: dict[str, tuple[object, float, list[str]]] = {
        "correct": (nb(), full, []),
        "untouched": (
            nbformat.read(str(root / "exercises" / "adamw" / "adamw.ipynb"), 4),
            0.0,
            ["NotImplementedError"],
        ),
        "infinite_loop": (with_answer("while True:\n    pass"), 0.0, ["time limit"]),
        "sleep_ignoring_signals": (
            with_answer(
                "import signal, time\n"
                "for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):\n"
                "    signal.signal(s, signal.SIG_IGN)\n"
                "while True:\n    time.sleep(1000)"
            ),
            0.0,
            ["time limit"],
        ),
        # sys.exit in a notebook does not end the kernel: the answer is graded.
        "sys_exit": (with_answer("import sys\nsys.exit(0)"), full, []),
        "os_exit": (with_answer("import os\nos._exit(3)"), 0.0, ["exited with code 3"]),
        "kills_its_kernel": (
            with_answer("import os, signal\nos.kill(os.getpid(), signal.SIGKILL)"),
            0.0,
            ["killed"],
        ),
        # Memory, output and files over the limits fail the statement that exceeds them,
        # not the grading: the answer defined before still gets its points.
        "memory_hog": (
            with_answer("hog = bytearray(64 * 2**30)  # 64 GiB"),
            full,
            ["MemoryError"],
        ),
        "fork_bomb": (
            with_cell(
                "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass"
            ),
            full,
            ["time limit"],
        ),
        "prints_a_gigabyte": (
            with_cell(
                "import os, sys\nfor _ in range(512):\n    sys.stdout.write('x' * 2**20)\n"
                "for _ in range(512):\n    os.write(1, b'y' * 2**20)\nprint('printed')"
            ),
            full,
            ["characters of output were dropped"],
        ),
        "huge_file": (
            with_cell(
                "with open('big.bin', 'wb') as f:\n    for _ in range(1024):\n"
                "        f.write(b'x' * 2**20)"
            ),
            full,
            ["File too large"],
        ),
        "deleted_tests": (
            edited(
                lambda b: b.cells.__setitem__(
                    slice(None), [c for c in b.cells if c not in locked_tests(b)]
                )
            ),
            full,
            ["was deleted"],
        ),
        "edited_tests": (
            edited(lambda b: [setattr(c, "source", "pass") for c in locked_tests(b)]),
            full,
            ["was edited"],
        ),
        "duplicated_tests": (
            edited(
                lambda b: b.cells.extend(
                    nbformat.from_dict(json.loads(json.dumps(locked_tests(b))))
                )
            ),
            full,
            ["was duplicated"],
        ),
        "duplicate_cell_ids": (
            edited(lambda b: [setattr(c, "id", "same") for c in b.cells]),
            full,
            [],
        ),
        "empty_metadata": (
            edited(lambda b: [c.metadata.pop("nbgrader", None) for c in b.cells]),
            full,
            ["no cell carries the assignment's metadata"],
        ),
        # The answer cell deleted and the same code typed into a new cell in its place, as a
        # student does in Jupyter: nbgrader runs it, and so does this grader.
        "retyped_answer": (
            edited(
                lambda b: b.cells.__setitem__(
                    b.cells.index(answer_cell(b)), nbformat.v4.new_code_cell(answer_cell(b).source)
                )
            ),
            full,
            ["no cell carries the metadata of the answer cell 'adamw'"],
        ),
        # The fused AdamW kernel called from a fresh interpreter started by the answer: no
        # process of the kernel's may run another program, so the call fails.
        "fused_in_a_subprocess": (
            with_answer("", base=SUBPROCESS_FUSED),
            0.0,
            ["Operation not permitted"],
        ),
        # A string that happens to name the reference is no delegation.
        "names_adamw_in_a_string": (
            with_answer('    def __repr__(self):\n        return "AdamW"'),
            full,
            [],
        ),
        # A copy of the answer cell (same grade_id, a wrong draft) pasted after the tests runs
        # where it stands, after them, as in Jupyter.
        "answer_copy_after_tests": (
            edited(lambda b: b.cells.append(nbformat.from_dict({**answer_cell(b), "source": SGD}))),
            full,
            ["appears more than once"],
        ),
        # A file name that is Markdown and terminal escapes: shown as text.
        "markdown_file_name": (
            (
                "[click](javascript:alert(1)) # Score 7 \x1b[31mRED.ipynb",
                nbformat.writes(nb()).encode(),
            ),
            full,
            ["[click](javascript:alert(1))"],
        ),
        # The answer imported from a package in a folder beside the notebook, as nbgrader
        # copies it.
        "answer_in_a_subfolder": (
            {
                "adamw.ipynb": nbformat.writes(
                    edited(
                        lambda b: setattr(
                            answer_cell(b), "source", "from helpers.adamw_impl import AdamW"
                        )
                    )
                ).encode(),
                "helpers/__init__.py": b"",
                "helpers/adamw_impl.py": ("import torch\n" + answer_cell(nb()).source).encode(),
            },
            full,
            [],
        ),
        # A 100 GiB (sparse) file beside the notebook: not read, not copied, graded.
        "huge_data_file": (
            {"adamw.ipynb": nbformat.writes(nb()).encode(), "weights.bin": 100 << 30},
            full,
            ["weights.bin not copied into the sandbox"],
        ),
        # 40,000 cells: the first 2,000 extra cells run, the feedback shows 200, bounded.
        "forty_thousand_cells": (
            edited(
                lambda b: b.cells.extend(nbformat.v4.new_code_cell("x = 1") for _ in range(40_000))
            ),
            full,
            ["only the first 2000 of your 40000 extra code cells ran", "are not shown here"],
        ),
        # About 200 kB of nested JSON: Python's parser gives up (RecursionError), the
        # submission is not graded and says why, and the batch goes on.
        "deeply_nested_json": (
            b'{"cells": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
            0.0,
            ["nested too deeply"],
        ),
        "future_metadata": (
            edited(
                lambda b: [
                    c.metadata["nbgrader"].update(schema_version=99)
                    for c in b.cells
                    if "nbgrader" in c.metadata
                ]
            ),
            full,
            [],
        ),
        "invalid_json": (nbformat.writes(nb())[:-200].encode(), 0.0, ["not valid JSON"]),
        "nbformat3": (
            nbformat.writes(nbformat.convert(nb(), 3), version=3).encode(),
            full,
            ["nbformat 3"],
        ),
        "renamed": (("my_adamw.ipynb", nbformat.writes(nb()).encode()), full, ["my_adamw.ipynb"]),
        "subclasses_torch": (
            with_answer("", base="class AdamW(torch.optim.AdamW):\n    pass\n"),
            0.0,
            ["torch.optim.AdamW"],
        ),
        "calls_torch_hidden": (
            with_answer(
                "",
                base="import torch\n"
                "class AdamW(torch.optim.Optimizer):\n"
                "    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2):\n"
                "        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay))\n"
                "        self.inner = getattr(torch.optim, 'Ada' + 'mW')(self.param_groups)\n"
                "    def step(self, closure=None):\n"
                "        return self.inner.step(closure)\n",
            ),
            0.0,
            ["not available while your notebook is graded"],
        ),
        "imports_course_lib": (
            with_answer("", base="from course_lib.optim import AdamW\n"),
            0.0,
            ["course_lib"],
        ),
        # SGD passes only the constructor test (1 point) however the comparisons are patched.
        "monkeypatches_comparisons": (with_answer(patch_all, base=SGD), 1.0, ["differs"]),
        # Parameters turned into objects equal to everything: compared as numbers, outside.
        "always_equal": (
            with_answer(
                "class Same(torch.Tensor):\n"
                "    def __eq__(self, other):\n        return True\n"
                "    __ne__ = lambda self, other: False\n"
                "    def allclose(self, *a, **k):\n        return True\n"
                "_step = AdamW.step\n"
                "def step(self, closure=None):\n"
                "    loss = _step(self, closure)\n"
                "    for group in self.param_groups:\n"
                "        for p in group['params']:\n"
                "            p.__class__ = Same\n"
                "    return loss\n"
                "AdamW.step = step\n",
                base=SGD,
            ),
            1.0,
            ["differs"],
        ),
        "ipython_hooks": (with_answer(ip_hooks, base=SGD), 1.0, ["differs"]),
        "reads_solutions_and_gradebook": (
            with_cell(
                "import base64\n"
                f"for path in base64.b64decode('{secret_paths}').decode().split('|'):\n"
                "    try:\n        print(open(path, 'rb').read()[:3000])\n"
                "    except OSError as error:\n        print('cannot read:', error)"
            ),
            full,
            ["cannot read"],
        ),
        "writes_gradebook": (
            with_cell(
                "import base64, sqlite3\n"
                f"path = base64.b64decode('{secret_paths}').decode().split('|')[1]\n"
                "db = sqlite3.connect(path)\n"
                "db.execute('update grade set auto_score = 100')\ndb.commit()"
            ),
            full,
            ["OperationalError"],
        ),
        "opens_network": (
            with_cell(
                "import socket\nfor host in ('127.0.0.1', 'pypi.org', '8.8.8.8'):\n"
                "    try:\n"
                f"        socket.create_connection((host, {port} if host == '127.0.0.1' else 443), timeout=3)\n"
                "        print('connected to', host)\n"
                "    except OSError as error:\n        print('no connection to', host, error)"
            ),
            full,
            ["no connection to 127.0.0.1", "no connection to pypi.org"],
        ),
        "reads_environment": (
            with_cell(
                "import os\nprint(dict(os.environ))\nprint(open('/proc/1/environ','rb').read())"
            ),
            full,
            ["HOME"],
        ),
    }
    return cases


def _snapshot(root: Path) -> dict[str, str]:
    """Hashes of every course file the grader must not change."""
    written = {"autograded", "feedback", "gradebook.db", "grades.csv", grade.LOCK_NAME}
    out = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if path.is_file() and not (rel.parts[0] == "autograder" and rel.parts[1] in written):
            info = path.stat()
            if info.st_size > 1 << 26:  # the sparse 100 GiB file: its size and time
                out[str(rel)] = f"{info.st_size} {info.st_mtime_ns}"
            else:
                out[str(rel)] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def _run_grader(root: Path, *args: str, env: dict | None = None, timeout: int = 1500):
    return subprocess.run(
        [sys.executable, "-m", "autograder.grade", *args, "--root", str(root),
         "--timeout", str(TIMEOUT), "--memory-mb", str(MEMORY_MB)],
        capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})},
        check=False,
    )  # fmt: skip


def _scores(root: Path, assignment: str) -> dict[str, float]:
    from nbgrader.api import Gradebook

    with Gradebook(f"sqlite:///{root / 'autograder' / 'gradebook.db'}") as gb:
        return {s.student.id: float(s.score) for s in gb.find_assignment(assignment).submissions}


class _Listener:
    """A TCP server on the host's loopback that records any connection."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen()
        self.sock.settimeout(0.5)
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        self.stop = False
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self.stop:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.connections += 1
            conn.close()

    def close(self) -> None:
        self.stop = True
        self.thread.join()
        self.sock.close()


@pytest.fixture(scope="module")
def graded(tmp_path_factory: pytest.TempPathFactory):
    root = make_exercises.scratch_course(
        tmp_path_factory.mktemp("grade") / "course", names=["adamw"]
    )
    make_exercises.generate(root, ["adamw"])
    listener = _Listener()
    cases = corpus(root, listener.port)
    for student, (content, _, _) in cases.items():
        folder = root / "autograder" / "submitted" / student / "adamw"
        folder.mkdir(parents=True)
        name = "adamw.ipynb"
        if isinstance(content, tuple):
            name, content = content
        if isinstance(content, nbformat.NotebookNode):
            # Plain JSON, not nbformat.writes: that would repair the duplicate ids.
            content = json.dumps(content, indent=1).encode()
        files = content if isinstance(content, dict) else {name: content}
        for relative, data in files.items():
            path = folder / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(data, int):  # a sparse file of that many bytes
                with open(path, "wb") as handle:
                    handle.truncate(data)
            else:
                path.write_bytes(data)
    before = _snapshot(root)
    start = time.monotonic()
    result = _run_grader(root, "adamw", "--workers", "2", env={"GRADER_SECRET_TOKEN": SECRET})
    seconds = time.monotonic() - start
    listener.close()
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return {"root": root, "cases": cases, "result": result, "before": before,
            "listener": listener, "seconds": seconds}  # fmt: skip


def _feedback(root: Path, student: str) -> str:
    return (root / "autograder" / "feedback" / student / "adamw" / "adamw.html").read_text()


def _report(root: Path, student: str) -> str:
    return (root / "autograder" / "autograded" / student / "adamw" / "adamw.ipynb").read_text()


def test_every_submission_gets_its_expected_score(graded):
    scores = _scores(graded["root"], "adamw")
    expected = {student: total for student, (_, total, _) in graded["cases"].items()}
    wrong = {s: (scores.get(s), want) for s, want in expected.items() if scores.get(s) != want}
    assert not wrong, f"student: (got, expected): {wrong}\n{graded['result'].stdout[-4000:]}"


@pytest.mark.parametrize("student", ["infinite_loop", "os_exit", "invalid_json", "renamed",
                                     "subclasses_torch", "imports_course_lib", "memory_hog",
                                     "monkeypatches_comparisons", "empty_metadata", "always_equal",
                                     "ipython_hooks",
                                     "prints_a_gigabyte", "huge_file", "opens_network",
                                     "reads_solutions_and_gradebook", "deleted_tests",
                                     "nbformat3", "fork_bomb", "kills_its_kernel",
                                     "retyped_answer", "forty_thousand_cells",
                                     "deeply_nested_json", "fused_in_a_subprocess",
                                     "answer_copy_after_tests", "markdown_file_name",
                                     "huge_data_file"])  # fmt: skip
def test_feedback_gives_the_reason(graded, student):
    report = json.loads(_report(graded["root"], student))
    text = json.dumps(report)
    for words in graded["cases"][student][2]:
        assert words in text, f"{student}: {words!r} is not in its feedback"


def test_the_batch_summary_names_every_submission(graded):
    out = graded["result"].stdout
    for student in graded["cases"]:
        assert student in out
    assert "NOT GRADED" in out  # the invalid JSON one, with its reason
    assert f"{len(graded['cases'])} graded" in out


def test_student_text_in_the_feedback_stays_text(graded):
    page = _feedback(graded["root"], "markdown_file_name")
    assert "javascript:alert" in page and 'href="javascript' not in page
    assert "\x1b" not in page and "\x1b" not in graded["result"].stdout


def test_grades_csv_has_one_row_per_student(graded):
    import csv

    with open(graded["root"] / "autograder" / "grades.csv") as handle:
        rows = [r for r in csv.DictReader(handle) if r["assignment"] == "adamw"]
    assert sorted(r["student_id"] for r in rows) == sorted(graded["cases"])
    assert {r["student_id"]: float(r["raw_score"]) for r in rows}["correct"] == 7.0


def test_no_course_file_changed_and_nothing_reached_the_network(graded):
    assert _snapshot(graded["root"]) == graded["before"]
    assert graded["listener"].connections == 0


def test_feedback_leaks_nothing(graded):
    root = graded["root"]
    source = (root / "solutions" / "adamw" / "adamw.ipynb").read_text()
    hidden = [
        line.strip()
        for cell in json.loads(source)["cells"]
        for line in "".join(cell["source"]).split("### BEGIN HIDDEN TESTS")[1:]
        for line in line.split("### END HIDDEN TESTS")[0].splitlines()
        if len(line.strip()) > 20
    ]
    assert hidden, "the source has hidden tests to look for"
    for student in graded["cases"]:
        for text in (_feedback(root, student), _report(root, student)):
            assert "BEGIN SOLUTION" not in text and "HIDDEN TESTS" not in text
            assert not [h for h in hidden if h in text], student
            assert SECRET not in text, f"{student}: the grader's environment leaked"
            assert str(root) not in text, f"{student}: an instructor path leaked"
            assert str(ROOT) not in text, f"{student}: an instructor path leaked"
    # The submission that tried shows the errors it got, not the files.
    report = _report(root, "reads_solutions_and_gradebook")
    assert "cannot read" in report and "No such file" in report


def test_rerun_skips_what_is_graded_and_force_regrades_identically(graded):
    root = graded["root"]
    before = _scores(root, "adamw")
    again = _run_grader(root, "adamw", "--workers", "2")
    assert again.returncode == 0, again.stderr[-2000:]
    assert "0 to grade" in again.stdout
    subset = ["correct", "monkeypatches_comparisons", "renamed", "invalid_json"]
    forced = _run_grader(root, "adamw", "--force", *[x for s in subset for x in ("--student", s)])
    assert forced.returncode == 0, forced.stderr[-2000:]
    assert f"{len(subset)} to grade" in forced.stdout
    assert _scores(root, "adamw") == before


def test_killed_halfway_and_rerun_grades_everything_once(tmp_path):
    root = make_exercises.scratch_course(tmp_path / "course", names=["adamw"])
    make_exercises.generate(root, ["adamw"])
    students = [f"s{i:02d}" for i in range(6)]
    for i, student in enumerate(students):
        folder = root / "autograder" / "submitted" / student / "adamw"
        folder.mkdir(parents=True)
        book = solved(root, "adamw")
        if i % 2:
            answer_cell(book).source = SGD
        nbformat.write(book, str(folder / "adamw.ipynb"))
    command = [sys.executable, "-m", "autograder.grade", "adamw", "--root",
               str(root), "--workers", "2"]  # fmt: skip
    # The progress bar (stderr) prints one line per submission once its gradebook row and
    # marker are written: kill the batch right after the second, and wait for every process
    # it started (workers, sandboxes) to be gone, by their pidfds, not by sleeping.
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    finished = 0
    for line in proc.stderr:  # tqdm's lines: "... 2/6 [...]"
        finished = max([finished, *map(int, re.findall(r"\b(\d+)/6\b", line))])
        if finished >= 2:
            break
    assert finished >= 2, "the grader ended before it could be killed"
    family = [proc.pid, *_descendants(proc.pid)]
    pidfds = [fd for fd in map(_pidfd, family) if fd is not None]
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    proc.stderr.close()
    try:  # PR_SET_PDEATHSIG: the workers die with it, and their sandboxes with them
        for fd in pidfds:
            assert select.select([fd], [], [], 60)[0], "a worker outlived the killed grader"
    finally:
        for fd in pidfds:
            os.close(fd)
    markers = root / "autograder" / "autograded"
    done_before = len(list(markers.rglob(MARKER_NAME)))
    assert 2 <= done_before < len(students)
    rerun = subprocess.run(command, capture_output=True, text=True, timeout=900, check=False)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert f"{len(students) - done_before} to grade" in rerun.stdout
    scores = _scores(root, "adamw")
    assert scores == {s: (1.0 if i % 2 else 7.0) for i, s in enumerate(students)}
    from nbgrader.api import Gradebook

    with Gradebook(f"sqlite:///{root / 'autograder' / 'gradebook.db'}") as gb:
        assert len(gb.find_assignment("adamw").submissions) == len(students)


def _descendants(pid: int) -> list[int]:
    """Every live process below ``pid``, from /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            parent = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(parent, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _pidfd(pid: int) -> int | None:
    """A pidfd of ``pid`` (readable once it has exited); None when it is gone already."""
    try:
        return os.pidfd_open(pid)
    except ProcessLookupError:
        return None


def test_refuses_without_a_sandbox_unless_told(tmp_path, monkeypatch):
    monkeypatch.setattr(sandbox, "bwrap_status", lambda: (False, "bwrap is not installed"))
    with pytest.raises(grade.GradingRefused, match="--allow-unsafe"):
        grade.grade_batch(tmp_path, "adamw", workers=1, limits=sandbox.Limits())


def test_help_and_bad_arguments():
    command = [sys.executable, "-m", "autograder.grade"]
    shown = subprocess.run([*command, "--help"], capture_output=True, text=True)
    assert (
        shown.returncode == 0 and "--workers" in shown.stdout and "--allow-unsafe" in shown.stdout
    )
    bad = subprocess.run([*command, "adamw", "--workers", "0"], capture_output=True, text=True)
    assert bad.returncode == 2 and "--workers must be positive" in bad.stderr

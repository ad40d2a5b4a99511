"""The grader's own process in the grading sandbox (started by ``run.py``; never by hand).

The harness H never runs student code. It reads the run spec (the cells, the test cells'
requests) from its stdin, holds the results channel (``GRADER_RESULTS_FD``), makes itself
non-dumpable (no process of its uid may open its fds or memory, or trace it), and starts the
kernel K (``kernel.py``, the student's process) without the channel. H asks K for one cell at
a time with a fresh nonce, takes as the answer only a line with that nonce and index, and
writes every record itself: a record of cell i exists only once H asked for cell i, the
hidden tests' inputs reach K only at their test, and nothing K writes becomes another record.
If K ends, H exits as K did (its code, or 128 + the signal). The residual risks (K reports on
its own answer; K may kill H) are in ``autograder/README.md``.

Usage (inside the sandbox): ``python -I harness.py LIB_DIR INPUTS_DIR < spec.json``.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import secrets
import selectors
import shutil
import subprocess
import sys

CELL_OUTPUT_CAP = 20_000  # characters kept per cell and stream (as in kernel.py, plus a note)
MAX_ANSWER_BYTES = 16 << 20  # one answer line from K; longer lines are dropped
PR_SET_DUMPABLE = 4


class Kernel:
    """K as H sees it: the child process, the request pipe to it and the answer pipe back."""

    def __init__(self, lib: str) -> None:
        requests_r, self.requests = os.pipe()
        self.answers, answers_w = os.pipe()
        kernel = os.path.join(lib, "kernel.py")
        self.proc = subprocess.Popen(
            [sys.executable, "-I", kernel, lib, str(requests_r), str(answers_w)],
            stdin=subprocess.DEVNULL, close_fds=True, pass_fds=(requests_r, answers_w),
        )  # fmt: skip # the arguments grouped by meaning, not one a line
        os.close(requests_r)
        os.close(answers_w)
        self.exited = os.pidfd_open(self.proc.pid)
        os.set_blocking(self.requests, False)
        os.set_blocking(self.answers, False)
        self.partial = bytearray()  # the line K's process is writing

    def ask(self, request: dict) -> dict | None:
        """Send ``request`` with a fresh nonce; K's answer to it, or None once K has ended."""
        nonce = secrets.token_hex(16)
        unsent = memoryview(json.dumps({**request, "nonce": nonce}).encode() + b"\n")
        wanted = (nonce, request["index"])
        with selectors.DefaultSelector() as sel:
            sel.register(self.requests, selectors.EVENT_WRITE)
            sel.register(self.answers, selectors.EVENT_READ)
            sel.register(self.exited, selectors.EVENT_READ)
            while True:
                events = {key.fd for key, _ in sel.select()}
                if self.requests in events:
                    try:
                        unsent = unsent[os.write(self.requests, unsent) :]
                    except BlockingIOError:
                        pass
                    except OSError:  # K closed its end: only its exit is left to see
                        unsent = unsent[:0]
                    if not unsent:
                        sel.unregister(self.requests)
                if self.answers in events or self.exited in events:
                    exited = self.exited in events
                    # Once K has ended, read what it left, up to one more answer's worth.
                    answers, closed = self._receive(MAX_ANSWER_BYTES + (1 << 16) if exited else 1)
                    for answer in answers:
                        if (answer.get("nonce"), answer.get("index")) == wanted:
                            return answer
                    if exited:
                        return None
                    if closed:  # no process holds the pipe's other end any more
                        sel.unregister(self.answers)

    def _receive(self, budget: int) -> tuple[list[dict], bool]:
        """The JSON objects on the lines K's process has completed (reading at least once, then
        on while ``budget`` bytes last and there is data), and whether the pipe is at its end."""
        answers, closed = [], False
        while budget > 0 and not closed:
            try:
                chunk = os.read(self.answers, 1 << 16)
            except BlockingIOError:
                break
            closed, budget = not chunk, budget - len(chunk)
            *lines, rest = chunk.split(b"\n")
            for line in lines:
                with contextlib.suppress(ValueError, RecursionError):
                    answers.append(json.loads(self.partial + line))
                self.partial = bytearray()
            self.partial += rest
            if len(self.partial) > MAX_ANSWER_BYTES:  # dropped; its tail is read as any line of K's
                self.partial = bytearray()
        return [answer for answer in answers if isinstance(answer, dict)], closed


def _text(value: object) -> str | None:
    return value[: CELL_OUTPUT_CAP + 100] if isinstance(value, str) else None


def record(index: int, cell: dict, answer: dict) -> dict:
    """The record of cell ``index`` from K's answer, with only what H knows taken from H."""
    if cell["kind"] == "code":
        streams = {name: _text(answer.get(name)) or "" for name in ("stdout", "stderr")}
        return {"type": "cell", "index": index, **streams, "error": _text(answer.get("error"))}
    got = answer.get("entries")
    got = got if isinstance(got, list) else []
    entries = []
    for j, request in enumerate(cell["requests"]):
        entry = {"check": request["check"], "inputs": request["inputs"]}
        part = got[j] if j < len(got) and isinstance(got[j], dict) else {}
        if isinstance(part.get("failed"), str):
            entry["failed"] = part["failed"][:2000]
        elif "obs" in part:
            entry["obs"] = part["obs"]
        else:
            entry["failed"] = "the kernel's answer for this check was malformed"
        entries.append(entry)
    return {"type": "test", "index": index, "entries": entries}


def send(channel: int, record: dict) -> None:
    data = memoryview(json.dumps(record, allow_nan=True, separators=(",", ":")).encode() + b"\n")
    with contextlib.suppress(OSError):  # the grader stopped listening (its cap on results)
        while data:
            data = data[os.write(channel, data) :]


def main() -> None:
    lib, inputs = sys.argv[1], sys.argv[2]
    channel = int(os.environ.pop("GRADER_RESULTS_FD"))
    if ctypes.CDLL(None, use_errno=True).prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_DUMPABLE, 0) failed")
    spec = json.loads(sys.stdin.buffer.read())
    # The data files (and their folders), beside the student's work only; on a full disk the
    # cells run with what was copied.
    with contextlib.suppress(OSError):
        shutil.copytree(inputs, ".", dirs_exist_ok=True, copy_function=shutil.copyfile)
    kernel = Kernel(lib)
    cells = [(i, cell) for i, cell in enumerate(spec["cells"]) if cell["kind"] in ("code", "test")]
    for index, cell in [(-1, {"kind": "ready"}), *cells]:
        answer = kernel.ask({"index": index, **cell})
        if answer is None:  # K has ended: exit as it did (its code, or 128 + the signal)
            code = kernel.proc.wait()
            sys.exit(code if code >= 0 else 128 - code)
        send(channel, record(index, cell, answer) if index >= 0 else {"type": "ready"})
    send(channel, {"type": "done"})
    kernel.proc.kill()


if __name__ == "__main__":
    main()

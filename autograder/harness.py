"""Runs one submission inside the grading sandbox (started by ``grade.py``; never by hand).

This process is the student's: everything in it, this file included once the first student
cell has run, may be changed by the student's code. So it decides nothing. It executes the
cells it is given in order, in one IPython shell (the student's code cells, and the locked
cells of the assignment), and at each test cell it only *observes* the student's answers:
``course_lib.grading.observe`` calls them on inputs made from the test's plain arguments and
records what they returned, as plain JSON. The grader, outside, recomputes the references
and compares, on those numbers. A student who monkeypatches ``torch.allclose``, the checks
or IPython, or who forges the records, can only make its own record wrong.

Before any student code runs it also
- takes the results channel (a pipe to the grader) away from fd numbers a student would
  guess, and writes one JSON line per cell to it as soon as the cell has run, so a crash or a
  kill later still leaves the earlier cells' records;
- makes the fused Adam kernels raise (``torch.optim.Adam``/``AdamW`` are stub modules in
  the sandbox, and ``course_lib`` holds only the observation code): an answer cannot hand its
  work to the reference;
- ignores SIGXFSZ, so a file over the size limit fails that write, not the whole run;
- caps what each cell may print (the rest is counted and dropped).

Usage (inside the sandbox): ``python -I harness.py RUN_JSON LIB_DIR``.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import sys
import time
import traceback

CELL_OUTPUT_CAP = 20_000  # characters kept per cell and stream


class _Capped(io.TextIOBase):
    """A text stream that keeps the first ``cap`` characters and counts the rest."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.parts: list[str] = []
        self.kept = 0
        self.dropped = 0

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        if not isinstance(text, str):
            text = str(text)
        room = self.cap - self.kept
        if room > 0:
            self.parts.append(text[:room])
            self.kept += min(room, len(text))
        self.dropped += max(0, len(text) - max(room, 0))
        return len(text)

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return False

    def value(self) -> str:
        text = "".join(self.parts)
        if self.dropped:
            text += f"\n[... {self.dropped} more characters of output were dropped]"
        return text


class _Channel:
    """The results pipe, on a high fd number; one JSON object per line."""

    def __init__(self) -> None:
        fd = int(os.environ.pop("GRADER_RESULTS_FD"))
        self.fd = os.dup2(fd, 1000 + os.getpid() % 20000) if fd < 1000 else fd
        if self.fd != fd:
            os.close(fd)

    def send(self, record: dict) -> None:
        data = (json.dumps(record, allow_nan=True, separators=(",", ":")) + "\n").encode()
        view = memoryview(data)
        while view:
            try:
                written = os.write(self.fd, view)
            except InterruptedError:
                continue
            except OSError:
                return  # the grader stopped listening (output cap): nothing more to say
            view = view[written:]


def _block_fused_adam() -> None:
    """Make every fused Adam/AdamW kernel raise on the CPU, before student code runs."""
    import warnings

    import torch

    def refuse(*args, **kwargs):
        raise RuntimeError(
            "torch's fused Adam/AdamW kernels are not available while grading: "
            "write the update with tensor operations"
        )

    library = torch.library.Library("aten", "IMPL")
    names = [n for n in torch._C._dispatch_get_all_op_names() if "fused_adam" in n]
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)  # torch warns about each override, in C++
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for name in names:
                op = name.split("::", 1)[1]
                for key in ("CPU", "CompositeExplicitAutograd"):
                    try:
                        library.impl(op, refuse, key)
                    except Exception:  # an overload without a kernel for this key
                        continue
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)
    _block_fused_adam.library = library  # the overrides last as long as the object


def _error_text(exc: BaseException) -> str:
    text = "".join(traceback.format_exception_only(type(exc), exc)).strip()
    return text[:2000]


def _jsonable(value: object) -> object:
    """``value`` when it survives a JSON round trip as plain data; raises otherwise."""
    return json.loads(json.dumps(value, allow_nan=True))


def main() -> None:
    run_path, lib_dir = sys.argv[1], sys.argv[2]
    channel = _Channel()
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    # The grader's observation code as the sandbox holds it comes first; the editable
    # install's finder points at the course folder, which is not in the sandbox anyway.
    sys.path.insert(0, lib_dir)
    sys.meta_path[:] = [f for f in sys.meta_path if "editable" not in getattr(f, "__module__", "")]
    os.environ.setdefault("MPLBACKEND", "Agg")
    with open(run_path, encoding="utf-8") as handle:
        run = json.load(handle)
    # Files handed in beside the notebook (data), copied into the working directory.
    inputs = os.path.dirname(os.path.abspath(run_path))
    for name in os.listdir(inputs):
        if name != os.path.basename(run_path) and os.path.isfile(os.path.join(inputs, name)):
            try:
                shutil.copyfile(os.path.join(inputs, name), name)
            except OSError:
                pass

    started = time.monotonic()
    import torch

    torch.set_num_threads(1)
    _block_fused_adam()
    from autograder import observe as observe_module
    from IPython.core.interactiveshell import InteractiveShell

    observe = observe_module.observe
    shell = InteractiveShell.instance()
    try:
        shell.colors = "nocolor"
    except Exception:  # older IPython spells it NoColor
        shell.colors = "NoColor"
    channel.send({"type": "ready", "seconds": round(time.monotonic() - started, 3)})

    for index, item in enumerate(run["cells"]):
        if item["kind"] == "code":
            out, err = _Capped(CELL_OUTPUT_CAP), _Capped(CELL_OUTPUT_CAP)
            saved = sys.stdout, sys.stderr
            sys.stdout, sys.stderr = out, err
            error = None
            try:
                result = shell.run_cell(item["source"], store_history=True)
                failure = result.error_before_exec or result.error_in_exec
                if failure is not None:
                    error = _error_text(failure)
            except BaseException as exc:
                error = _error_text(exc)
            finally:
                sys.stdout, sys.stderr = saved
            channel.send(
                {
                    "type": "cell",
                    "index": index,
                    "stdout": out.value(),
                    "stderr": err.value(),
                    "error": error,
                }
            )
        elif item["kind"] == "test":
            entries = []
            for request in item["requests"]:
                entry = {"check": request["check"], "inputs": request["inputs"]}
                name = request["answer"]
                out, err = _Capped(CELL_OUTPUT_CAP), _Capped(CELL_OUTPUT_CAP)
                saved = sys.stdout, sys.stderr
                sys.stdout, sys.stderr = out, err
                try:
                    if name not in shell.user_ns:
                        entry["failed"] = f"NameError: name {name!r} is not defined"
                    else:
                        entry["obs"] = _jsonable(
                            observe(request["observer"], shell.user_ns[name], request["inputs"])
                        )
                except BaseException as exc:
                    entry.pop("obs", None)
                    entry["failed"] = f"observing {name} failed: {_error_text(exc)}"
                finally:
                    sys.stdout, sys.stderr = saved
                entries.append(entry)
            channel.send({"type": "test", "index": index, "entries": entries})
    channel.send({"type": "done", "seconds": round(time.monotonic() - started, 3)})
    sys.stdout.flush()
    os._exit(0)  # no atexit handlers of the student's


if __name__ == "__main__":
    main()

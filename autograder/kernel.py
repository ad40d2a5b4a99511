"""The student's process in the grading sandbox (started by ``harness.py``; never by hand).

It runs the cells the harness asks for in one IPython shell, and at a test cell observes the
answers (:func:`autograder.observe.observe`). Before any student code runs it puts the
grader's read-only folder first on ``sys.path`` and imports all it needs (no file of the
student's shadows the grader's), makes torch's fused Adam kernels raise in every thread
(:func:`block_fused_adam`, through a registration no Python object reaches) and forbids
running any other program (:func:`forbid_exec`: a fresh interpreter would have the kernels
back). What remains is code that writes this process's memory or calls libtorch's symbols
through ``ctypes``; the sandbox hides the C compilers.

Usage (by the harness): ``python -I kernel.py LIB_DIR REQUESTS_FD ANSWERS_FD``.
"""

from __future__ import annotations

import contextlib
import ctypes
import io
import json
import os
import platform
import signal
import struct
import sys
import tempfile
import traceback

CELL_OUTPUT_CAP = 20_000  # characters kept per cell and stream


class _Capped(io.StringIO):
    """A text stream that keeps the first ``CELL_OUTPUT_CAP`` characters and counts the rest."""

    dropped = 0

    def write(self, text: str) -> int:
        text = str(text)
        self.dropped += len(text) - super().write(text[: CELL_OUTPUT_CAP - self.tell()])
        return len(text)

    def value(self) -> str:
        dropped = f"\n[... {self.dropped} more characters of output were dropped]"
        return self.getvalue() + (dropped if self.dropped else "")


def _refuse(*args: object, **kwargs: object) -> None:
    raise RuntimeError(
        "torch's fused Adam/AdamW kernels are not available while grading: write the update "
        "with tensor operations"
    )


def block_fused_adam() -> None:
    """Register ``_refuse`` for every fused Adam operator, out of the student's reach."""
    import torch

    module = torch._C._dispatch_library("IMPL", "aten", "")
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)  # torch warns about each override, in C++
    try:
        for name in torch._C._dispatch_get_all_op_names():
            if "fused_adam" in name:
                for key in ("CPU", "CompositeExplicitAutograd"):
                    with contextlib.suppress(RuntimeError):  # an overload without this key
                        module.impl(name.split("::", 1)[1], key, _refuse)
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)
    # The registrations last as long as `module`: one reference that no Python object holds.
    ctypes.pythonapi.Py_IncRef(ctypes.py_object(module))


# execve and execveat by architecture (seccomp's AUDIT_ARCH_* values), and the x32 bit.
_EXEC_SYSCALLS = {"x86_64": (0xC000003E, (59, 322)), "aarch64": (0xC00000B7, (221, 281))}


def forbid_exec() -> None:
    """No process of the kernel's may run another program, ever (a seccomp filter, inherited
    by every child and never removed): a fresh interpreter would have torch's fused kernels
    back, so only copies of this process, where they raise, can exist. Forks still work."""
    if platform.machine() not in _EXEC_SYSCALLS:
        raise RuntimeError(f"no exec system call numbers known for {platform.machine()}")
    arch, calls = _EXEC_SYSCALLS[platform.machine()]
    errno = 0x00050000 | 1  # SECCOMP_RET_ERRNO | EPERM
    allow = 0x7FFF0000  # SECCOMP_RET_ALLOW
    jeq, ld, ret, jge = 0x15, 0x20, 0x06, 0x35  # BPF_JMP|BPF_JEQ|BPF_K, BPF_LD|BPF_W|BPF_ABS, ...
    program = [(ld, 0, 0, 4), (jeq, 1, 0, arch), (ret, 0, 0, errno), (ld, 0, 0, 0)]
    program.append((jge, len(calls) + 1, 0, 0x40000000))  # the x32 ABI: refused whole
    for index, number in enumerate(calls):
        program.append((jeq, len(calls) - index, 0, number))
    program += [(ret, 0, 0, allow), (ret, 0, 0, errno)]
    # Jumps above: to the last instruction (refuse) from each check; otherwise allow.
    code = b"".join(struct.pack("HBBI", *instruction) for instruction in program)
    buffer = ctypes.create_string_buffer(code)
    fprog = struct.pack("HxxxxxxQ", len(program), ctypes.addressof(buffer))
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(38, 1, 0, 0, 0) != 0:  # PR_SET_NO_NEW_PRIVS
        raise OSError(ctypes.get_errno(), "PR_SET_NO_NEW_PRIVS failed")
    if libc.prctl(22, 2, ctypes.c_char_p(fprog), 0, 0) != 0:  # PR_SET_SECCOMP, FILTER
        raise OSError(ctypes.get_errno(), "the seccomp filter could not be installed")


def _error_text(exc: BaseException) -> str:
    return "".join(traceback.format_exception_only(type(exc), exc)).strip()[:2000]


def run_code(shell, source: str) -> dict:
    out, err = _Capped(), _Capped()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            result = shell.run_cell(source, store_history=True)
            failure = result.error_before_exec or result.error_in_exec
            error = None if failure is None else _error_text(failure)
        except BaseException as exc:
            error = _error_text(exc)
    return {"stdout": out.value(), "stderr": err.value(), "error": error}


def observe_test(shell, observe, requests: list[dict]) -> dict:
    entries = []
    for request in requests:
        name = request["answer"]
        with contextlib.redirect_stdout(_Capped()) as sink, contextlib.redirect_stderr(sink):
            try:
                if name not in shell.user_ns:
                    entries.append({"failed": f"NameError: name {name!r} is not defined"})
                else:
                    obs = observe(request["protocol"], shell.user_ns[name], request["inputs"])
                    entries.append({"obs": json.loads(json.dumps(obs, allow_nan=True))})
            except BaseException as exc:
                entries.append({"failed": f"observing {name} failed: {_error_text(exc)}"})
    return {"entries": entries}


def main() -> None:
    lib, requests, answers = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    # The grader's folder first; the editable install's finder points at the course folder,
    # which is not in the sandbox anyway.
    sys.path.insert(0, lib)
    sys.meta_path[:] = [f for f in sys.meta_path if "editable" not in getattr(f, "__module__", "")]
    import torch

    torch.set_num_threads(1)
    block_fused_adam()
    from IPython.core.interactiveshell import InteractiveShell
    from traitlets.config import Config

    from autograder.observe import observe

    config = Config({"HistoryManager": {"enabled": False}})
    # The IPython folder is only needed to start (and /tmp is the host's without bwrap).
    with tempfile.TemporaryDirectory(prefix="ipython-") as ipython_dir:
        shell = InteractiveShell.instance(config=config, ipython_dir=ipython_dir)
    shell.colors = "nocolor"
    forbid_exec()
    sys.path.append(os.getcwd())
    with open(requests, "rb") as incoming, open(answers, "wb") as outgoing:
        for line in incoming:
            try:  # the student's code may have written to this pipe too
                request = json.loads(line)
                answer = {"nonce": request["nonce"], "index": request["index"]}
            except (ValueError, TypeError, KeyError):
                continue
            if request.get("kind") == "code":
                answer.update(run_code(shell, request["source"]))
            elif request.get("kind") == "test":
                answer.update(observe_test(shell, observe, request["requests"]))
            outgoing.write(json.dumps(answer, allow_nan=True).encode() + b"\n")
            outgoing.flush()
    os._exit(0)  # the harness closed the requests: no atexit handlers of the student's


if __name__ == "__main__":
    main()

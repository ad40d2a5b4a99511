"""Run one untrusted command in a bubblewrap sandbox with operating-system limits.

New network, PID, IPC, UTS (and cgroup) namespaces: no network, not even the host's
``127.0.0.1``. Read-only: what Python needs (``/usr`` and its links, a few pieces of ``/etc``,
the interpreter's prefix and venv) and the paths the caller names; writable: the scratch
directory (or a tmpfs work directory) and a private ``/tmp``. An empty environment plus
``PATH``, ``HOME``, ``LANG`` and the caller's. ``setrlimit`` limits on address space,
processes, file size and core dumps; a wall-clock limit that kills everything the command
started; a cap on captured output.

``RLIMIT_NPROC`` does not bind root: as root, bubblewrap starts without a user namespace (it
must read the interpreter under ``/root``) and ``setpriv`` drops to an unprivileged uid,
without groups, capabilities or new privileges, before the command starts. The process limit
counts every process of that uid, so concurrent runs need their own uids.

Without a working bubblewrap, :func:`run_sandboxed` refuses unless ``allow_unsafe``: then the
command runs with the limits only, and the result carries a warning.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import os
import resource
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import BinaryIO

GiB, MiB = 1 << 30, 1 << 20
SYSTEM_DIRS = ("/usr", "/lib", "/lib32", "/lib64", "/libx32", "/bin", "/sbin")
# What dynamic linking and the C library want of /etc; nothing with secrets.
SYSTEM_ETC = ("ld.so.cache", "ld.so.conf", "ld.so.conf.d", "alternatives", "localtime")
DEFAULT_PATH = "/usr/local/bin:/usr/bin:/bin"
KILL_GRACE_SECONDS = 2.0  # how long to drain the pipes after killing, at most
UNSAFE_WARNING = (
    "UNSAFE: bubblewrap is not available, the command ran WITHOUT isolation (it could read "
    "every file this user can, use the network and see the whole environment); only the "
    "rlimits and the wall-clock limit applied"
)


@dataclasses.dataclass(frozen=True)
class Limits:
    wall_seconds: float = 300.0
    memory_bytes: int = 4 * GiB  # RLIMIT_AS, per process
    max_processes: int = 64  # RLIMIT_NPROC, for the sandbox's uid
    max_output_bytes: int = 1 * MiB  # stdout and stderr together; the rest is discarded
    max_file_bytes: int = 64 * MiB  # RLIMIT_FSIZE
    max_disk_bytes: int = 256 * MiB  # size of each writable tmpfs (/tmp, the work directory)
    max_results_bytes: int = 16 * MiB  # the results channel (fd given in GRADER_RESULTS_FD)

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            kind = "number" if field.name == "wall_seconds" else "integer"
            valid = isinstance(value, (int, float) if kind == "number" else int)
            if isinstance(value, bool) or not valid or not value > 0:  # `not >` also rejects NaN
                raise ValueError(f"Limits.{field.name} must be a positive {kind}, got {value!r}")


@dataclasses.dataclass(frozen=True)
class SandboxResult:
    returncode: int
    stdout: bytes
    stderr: bytes
    timed_out: bool
    truncated: bool
    killed_reason: str | None
    wall_seconds: float
    warning: str | None = None  # set when the command ran without isolation
    results: bytes = b""  # what the command wrote to the results channel, when asked for
    results_truncated: bool = False


def _bwrap_args(
    scratch: Path,
    uid: int,
    info_fd: int,
    limits: Limits,
    readonly: Sequence[Path],
    binds: Mapping[str, Path] | None,
    hide: Sequence[str],
    workdir: str | None,
) -> list[str]:
    as_root = os.geteuid() == 0
    args = ["bwrap", "--unshare-ipc", "--unshare-pid", "--unshare-net", "--unshare-uts"]
    args += ["--unshare-cgroup-try", "--die-with-parent", "--new-session"]
    args += ["--hostname", "sandbox", "--info-fd", str(info_fd)]  # the pid of the sandbox's init
    if as_root:  # no user namespace: keep only what setpriv needs to drop to the uid
        args += ["--cap-drop", "ALL", "--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID"]
        args += ["--cap-add", "CAP_SETPCAP"]
    else:
        args += ["--unshare-user", "--disable-userns"]
    bound: list[str] = []  # bind mounts so far: directories under them exist
    for d in SYSTEM_DIRS:
        if os.path.islink(d):
            args += ["--symlink", os.readlink(d), d]
        elif os.path.isdir(d):
            args += ["--ro-bind", d, d]
            bound.append(d)
    args += ["--perms", "0755", "--dir", "/etc"]
    for f in (f"/etc/{name}" for name in SYSTEM_ETC):
        args += ["--ro-bind-try", f, f]
    size = ["--size", str(limits.max_disk_bytes)]
    args += ["--proc", "/proc", "--dev", "/dev", "--perms", "1777", *size, "--tmpfs", "/tmp"]
    made = {"/etc", "/proc", "/dev", "/tmp"}

    def parents(path: str) -> None:
        # bwrap makes missing parents 0700, which the unprivileged uid could not cross.
        for parent in (str(p) for p in reversed(Path(path).parents[:-1])):
            if parent not in made and not any(Path(parent).is_relative_to(m) for m in bound):
                args.extend(["--perms", "0755", "--dir", parent])
                made.add(parent)

    paths = {str(Path(p).resolve()) for p in readonly} | set(_interpreter_paths())
    # With a work directory, the scratch directory only brings the inputs: read-only.
    mounts = [(p, "--ro-bind") for p in paths]
    mounts.append((str(scratch), "--ro-bind" if workdir else "--bind"))
    for path, flag in sorted(mounts, key=lambda b: (len(Path(b[0]).parts), b[0])):
        parents(path)  # parents before children, so that no bind hides another
        args += [flag, path, path]
        bound.append(path)
    if workdir:
        parents(workdir)
        args += ["--perms", "1777", *size, "--tmpfs", workdir]
    # Last, over the rest: files bound over others (stub modules), folders hidden.
    for dest, source in sorted((binds or {}).items()):
        args += ["--ro-bind", str(Path(source).resolve()), str(dest)]
    for dest in hide:
        args += ["--size", "4096", "--tmpfs", dest, "--remount-ro", dest]
    args += ["--chdir", workdir or str(scratch)]
    if as_root:
        args += ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups"]
        args += ["--inh-caps=-all", "--bounding-set=-all", "--no-new-privs", "--"]
    return args


def _interpreter_paths() -> list[str]:
    """The base installation, the venv, and the venv's own path (its bin/python is a link)."""
    paths = {str(Path(sys.base_prefix).resolve()), str(Path(sys.prefix).resolve())}
    return sorted(paths | {os.path.abspath(sys.prefix)})


@functools.lru_cache(maxsize=1)
def bwrap_status() -> tuple[bool, str]:
    """Whether bubblewrap can start a sandbox here, as ``run_sandboxed`` would, and why not."""
    if (bwrap := shutil.which("bwrap")) is None:
        return False, "bubblewrap (bwrap) is not installed (Debian/Ubuntu package: bubblewrap)"
    as_root = os.geteuid() == 0
    if as_root and shutil.which("setpriv") is None:
        return False, "setpriv (util-linux) is missing; it is needed to drop root in the sandbox"
    with tempfile.TemporaryDirectory(prefix="sandbox-probe-") as tmp:
        scratch = Path(tmp)
        probe = [sys.executable, "-c", "open('probe', 'w')"]
        try:
            r = run_sandboxed(probe, scratch=scratch, limits=Limits(wall_seconds=30), _probe=True)
        except OSError as exc:
            return False, f"bubblewrap could not start a sandbox: {exc}"
        if r.returncode != 0:
            err = r.stderr.decode(errors="replace").strip()[-500:]
            how = r.killed_reason or f"exit {r.returncode}"
            return False, f"bubblewrap could not start a sandbox ({how}): {err}"
        if not (scratch / "probe").exists():
            return False, "bubblewrap ran, but the probe could not write its scratch directory"
    return True, f"bubblewrap works ({bwrap}{', dropping root with setpriv' if as_root else ''})"


def run_sandboxed(
    argv: Sequence[str],
    *,
    scratch: Path,
    limits: Limits,
    readonly: Sequence[Path] = (),
    env: Mapping[str, str] | None = None,
    allow_unsafe: bool = False,
    uid: int = 65534,  # "nobody": the uid a command runs as when the caller is root
    binds: Mapping[str, Path] | None = None,
    hide: Sequence[str] = (),
    workdir: str | None = None,
    results: bool = False,
    stdin: bytes | None = None,
    _probe: bool = False,
) -> SandboxResult:
    """Run ``argv`` in a sandbox whose only writable directory is ``scratch``.

    ``readonly`` paths are bound read-only where they are, as the interpreter always is.
    ``binds`` maps a path inside to a host file or folder bound over it read-only (stub
    modules); ``hide`` lists folders replaced by an empty read-only tmpfs. With ``workdir``,
    the working directory and home is a fresh tmpfs of ``limits.max_disk_bytes`` there and
    ``scratch`` (the inputs) is read-only. With ``results``, the command gets a pipe whose fd
    is in ``GRADER_RESULTS_FD``; what it writes there is ``result.results``. ``stdin`` is
    written to the command's standard input (else ``/dev/null``), then closed. ``_probe``:
    :func:`bwrap_status`'s own run, which uses bubblewrap without asking whether it works.
    """
    scratch = Path(scratch).resolve()
    if not scratch.is_dir() or scratch == Path("/"):  # as root, it is chowned to the uid
        raise ValueError(f"scratch directory {scratch} must be an existing folder other than /")
    as_root = os.geteuid() == 0
    if as_root and not 0 < uid < 2**32 - 1:
        raise ValueError(f"uid must be a positive unprivileged uid, got {uid}")
    ok, reason = (True, "") if _probe else bwrap_status()
    warning = None
    if not ok:
        if not allow_unsafe:
            raise RuntimeError(
                "REFUSING TO RUN UNTRUSTED CODE: no working bubblewrap sandbox on this machine: "
                f"{reason}. Install bubblewrap (apt-get install bubblewrap) and make sure it can "
                "create namespaces here, or pass allow_unsafe=True to run WITHOUT isolation."
            )
        warning = f"{UNSAFE_WARNING} ({reason})"
        if as_root:
            warning += "; running as root, so the process limit did not apply"
        if workdir is not None:
            warning += f"; the work directory was {scratch} itself, not a tmpfs at {workdir}"
        if binds or hide:
            warning += "; the stub modules and hidden folders were NOT put in place"
    elif as_root:  # bwrap, without CAP_DAC_OVERRIDE, enters the scratch before setpriv
        scratch.chmod(0o755)
        os.chown(scratch, uid, uid, follow_symlinks=False)
        for folder, dirs, files in os.walk(scratch):
            for name in dirs + files:
                os.chown(os.path.join(folder, name), uid, uid, follow_symlinks=False)
    venv_bin = os.path.join(os.path.abspath(sys.prefix), "bin")
    home = workdir if ok and workdir else str(scratch)
    env = {"PATH": f"{venv_bin}:{DEFAULT_PATH}", "HOME": home, "LANG": "C.UTF-8", **(env or {})}
    pipes = [os.pipe() for _ in range(4)]  # (read, write): stdout, stderr, results, bwrap's info
    (out_r, out_w), (err_r, err_w), (res_r, res_w), (info_r, info_w) = pipes
    try:
        pass_fds = ([res_w] if results else []) + ([info_w] if ok else [])
        if results:
            env["GRADER_RESULTS_FD"] = str(res_w)
        mounts = (readonly, binds, hide, workdir)  # env: bwrap passes it on as it is
        cmd = _bwrap_args(scratch, uid, info_w, limits, *mounts) if ok else []
        proc = subprocess.Popen(
            cmd + [os.fspath(a) for a in argv], cwd=scratch, env=env, close_fds=True,
            stdin=subprocess.DEVNULL if stdin is None else subprocess.PIPE, stdout=out_w,
            stderr=err_w, pass_fds=pass_fds, start_new_session=True,
            preexec_fn=functools.partial(_set_limits, limits),
        )  # fmt: skip # the arguments grouped by meaning, not one a line
    except BaseException:
        for fd, _ in pipes:
            os.close(fd)
        raise
    finally:  # the child holds the write ends: EOF once it is all gone
        for _, fd in pipes:
            os.close(fd)
    with open(info_r, "rb", buffering=0) as info:
        result = _collect(proc, limits, stdin, (out_r, err_r, res_r), info if ok else None)
    return dataclasses.replace(result, warning=warning)


def _set_limits(limits: Limits) -> None:  # runs in the child between fork and exec: minimal
    # (SIGXFSZ and SIGPIPE are back to their defaults already: Popen's restore_signals)
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    resource.setrlimit(resource.RLIMIT_AS, (limits.memory_bytes, limits.memory_bytes))
    resource.setrlimit(resource.RLIMIT_NPROC, (limits.max_processes, limits.max_processes))
    resource.setrlimit(resource.RLIMIT_FSIZE, (limits.max_file_bytes, limits.max_file_bytes))


def _collect(
    proc: subprocess.Popen, limits: Limits, stdin: bytes | None, fds: tuple, info: BinaryIO | None
) -> SandboxResult:
    """Drain the command's stdout, stderr and results (the pipes ``fds``, each closed by its
    thread once at its end) within the limits and feed it ``stdin``, by threads started only
    now (``preexec_fn`` is not safe with threads running); at its end or the deadline kill its
    process group and the sandbox's init (from bwrap's ``info``), and wait for them."""
    start = time.monotonic()
    out_r, err_r, res_r = fds
    parts: dict[int, list[bytes]] = {out_r: [], err_r: [], res_r: []}
    room = {out_r: limits.max_output_bytes, res_r: limits.max_results_bytes}
    cut = {out_r: False, res_r: False}  # stdout and stderr share one budget
    lock = threading.Lock()

    def drain(fd: int, budget: int) -> None:
        with contextlib.suppress(OSError):
            while data := os.read(fd, 65536):
                with lock:
                    cut[budget] |= len(data) > room[budget]
                    parts[fd].append(data[: room[budget]])
                    room[budget] -= len(parts[fd][-1])
        os.close(fd)  # here, not by the caller: this thread may outlive the call

    def feed() -> None:
        with contextlib.suppress(OSError), proc.stdin:  # the command closed its stdin or is gone
            proc.stdin.write(stdin)

    budgets = {out_r: out_r, err_r: out_r, res_r: res_r}
    threads = [threading.Thread(target=drain, args=item, daemon=True) for item in budgets.items()]
    threads += [threading.Thread(target=feed, daemon=True)] if stdin is not None else []
    for thread in threads:
        thread.start()
    init = None if info is None else _sandbox_init(info)
    timed_out = False
    try:
        proc.wait(timeout=limits.wall_seconds)
    except subprocess.TimeoutExpired:
        timed_out = True
    finally:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)  # nothing of the command outlives the call
        proc.wait()
        if init is not None:  # its exit means every process of the sandbox is gone
            with contextlib.suppress(ProcessLookupError):  # gone already
                signal.pidfd_send_signal(init, signal.SIGKILL)
                _readable(init, 10.0)  # readable once it has exited
            os.close(init)
    # Drain what is left, within a grace time: something outside the group (without bwrap)
    # may still hold the pipes, and is given up on.
    until = time.monotonic() + KILL_GRACE_SECONDS
    for thread in threads:
        thread.join(max(0.0, until - time.monotonic()))
    with lock:  # a thread still reading adds nothing more
        out, err, res = (b"".join(parts[fd]) for fd in budgets)
        room.update({out_r: 0, res_r: 0})
    rc = proc.returncode
    killed = f"wall-clock limit of {limits.wall_seconds:g} s exceeded" if timed_out else None
    if killed is None and rc < 0:
        killed = f"killed by signal {signal.Signals(-rc).name}"
    return SandboxResult(
        rc, out, err, timed_out, cut[out_r], killed, time.monotonic() - start, results=res,
        results_truncated=cut[res_r],
    )  # fmt: skip # the fields in the dataclass's order


def _readable(fd: int | BinaryIO, timeout: float) -> bool:
    with selectors.DefaultSelector() as selector:
        selector.register(fd, selectors.EVENT_READ)
        return bool(selector.select(timeout))  # does not block once timeout <= 0


def _sandbox_init(info: BinaryIO) -> int | None:
    """A pidfd of the sandbox's PID 1, from bwrap's ``--info-fd`` (None when bwrap failed before
    starting the sandbox, or it is gone already): killing it empties the PID namespace."""
    data, deadline = b"", time.monotonic() + 10
    while b"}" not in data and _readable(info, deadline - time.monotonic()):
        if not (chunk := info.read(4096)):
            break
        data += chunk
    try:
        pid = int(json.loads(data)["child-pid"])
        pidfd = os.pidfd_open(pid)
    except (ValueError, KeyError, TypeError, OSError):
        return None
    with contextlib.suppress(OSError, IndexError):  # not a reused pid: PID 1 of its namespace
        nspid = Path(f"/proc/{pid}/status").read_text().split("NSpid:")[1].split("\n")[0].split()
        if len(nspid) >= 2 and nspid[-1] == "1":
            return pidfd
    os.close(pidfd)
    return None

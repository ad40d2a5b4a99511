"""Run one untrusted command in a bubblewrap sandbox with operating-system limits.

- New network, PID, IPC, UTS (and cgroup) namespaces: no network, not even the host's
  ``127.0.0.1``.
- A read-only root of what Python needs (``/usr`` and its links, a few pieces of ``/etc``, the
  interpreter's prefix and venv, the paths the caller names); writable: the scratch
  directory (or a tmpfs work directory) and a private ``/tmp``.
- An empty environment plus ``PATH``, ``HOME``, ``LANG`` and what the caller passes.
- ``setrlimit`` limits on address space, processes, file size and core dumps, a wall-clock
  limit that kills everything the command started, a cap on captured output.

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

GiB, MiB = 1 << 30, 1 << 20
DEFAULT_UID = 65534  # "nobody": the uid a command runs as when the caller is root
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
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"Limits.{field.name} must be a number, got {value!r}")
            if field.name != "wall_seconds" and not isinstance(value, int):
                raise ValueError(f"Limits.{field.name} must be an integer, got {value!r}")
            if not value > 0:  # also rejects NaN
                raise ValueError(f"Limits.{field.name} must be positive, got {value!r}")


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
    *,
    scratch: str,
    readonly: Sequence[str],
    env: Mapping[str, str],
    as_root: bool,
    uid: int,
    info_fd: int | None = None,
    binds: Mapping[str, str] | None = None,
    hide: Sequence[str] = (),
    workdir: str | None = None,
    disk_bytes: int | None = None,
) -> list[str]:
    args = ["bwrap", "--unshare-ipc", "--unshare-pid", "--unshare-net", "--unshare-uts"]
    args += ["--unshare-cgroup-try", "--die-with-parent", "--new-session", "--clearenv"]
    args += ["--hostname", "sandbox"]
    if info_fd is not None:  # bwrap reports the pid of the sandbox's init there
        args += ["--info-fd", str(info_fd)]
    if as_root:  # no user namespace: keep only what setpriv needs to drop to the uid
        args += ["--cap-drop", "ALL", "--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID"]
        args += ["--cap-add", "CAP_SETPCAP"]
    else:
        args += ["--unshare-user", "--disable-userns"]
    mounts: list[str] = []  # bind mounts so far: directories under them exist
    for d in SYSTEM_DIRS:
        if os.path.islink(d):
            args += ["--symlink", os.readlink(d), d]
        elif os.path.isdir(d):
            args += ["--ro-bind", d, d]
            mounts.append(d)
    args += ["--perms", "0755", "--dir", "/etc"]
    for f in (f"/etc/{name}" for name in SYSTEM_ETC):
        if os.path.lexists(f):
            args += ["--ro-bind", f, f]
    size = ["--size", str(disk_bytes)] if disk_bytes else []
    args += ["--proc", "/proc", "--dev", "/dev", "--perms", "1777", *size, "--tmpfs", "/tmp"]
    made = {"/etc", "/proc", "/dev", "/tmp"}

    def parents(path: str) -> None:
        # bwrap makes missing parents 0700, which the unprivileged uid could not cross.
        for parent in (str(p) for p in reversed(Path(path).parents[:-1])):
            if parent not in made and not any(Path(parent).is_relative_to(m) for m in mounts):
                args.extend(["--perms", "0755", "--dir", parent])
                made.add(parent)

    # With a work directory, the scratch directory only brings the inputs: read-only.
    mounts_in = [(p, "--ro-bind") for p in readonly]
    mounts_in.append((scratch, "--ro-bind" if workdir else "--bind"))
    for path, flag in sorted(mounts_in, key=lambda b: (len(Path(b[0]).parts), b[0])):
        parents(path)  # parents before children, so that no bind hides another
        args += [flag, path, path]
        mounts.append(path)
    if workdir:
        parents(workdir)
        args += ["--perms", "1777", *size, "--tmpfs", workdir]
    # Last, over the rest: files bound over others (stub modules), folders hidden.
    for dest, source in sorted((binds or {}).items()):
        args += ["--ro-bind", source, dest]
    for dest in hide:
        args += ["--size", "4096", "--tmpfs", dest, "--remount-ro", dest]
    for key, value in env.items():
        args += ["--setenv", key, value]
    args += ["--chdir", workdir or scratch]
    if as_root:
        args += ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups"]
        args += ["--inh-caps=-all", "--bounding-set=-all", "--no-new-privs", "--"]
    return args


def _interpreter_paths() -> list[str]:
    """The base installation, the venv, and the venv's own path (its bin/python is a link)."""
    paths = {str(Path(sys.base_prefix).resolve()), str(Path(sys.prefix).resolve())}
    return sorted(paths | {os.path.abspath(sys.prefix)})


def _minimal_env(home: str, env: Mapping[str, str] | None) -> dict[str, str]:
    venv_bin = os.path.join(os.path.abspath(sys.prefix), "bin")
    full = {"PATH": f"{venv_bin}:{DEFAULT_PATH}", "HOME": home, "LANG": "C.UTF-8"}
    for key, value in (env or {}).items():
        if not isinstance(key, str) or not isinstance(value, str) or "=" in key or not key:
            raise ValueError(f"bad environment entry {key!r}={value!r}")
        full[key] = value
    return full


@functools.lru_cache(maxsize=1)
def bwrap_status() -> tuple[bool, str]:
    """Whether bubblewrap can start a sandbox here, as ``run_sandboxed`` would, and why not."""
    bwrap = shutil.which("bwrap")
    if bwrap is None:
        return False, "bubblewrap (bwrap) is not installed (Debian/Ubuntu package: bubblewrap)"
    as_root = os.geteuid() == 0
    if as_root and shutil.which("setpriv") is None:
        return False, "setpriv (util-linux) is missing; it is needed to drop root in the sandbox"
    with tempfile.TemporaryDirectory(prefix="sandbox-probe-") as tmp:
        scratch = Path(tmp, "scratch")
        scratch.mkdir()
        if as_root:
            os.chmod(tmp, 0o755)
            os.chown(scratch, DEFAULT_UID, DEFAULT_UID)
        argv = _bwrap_args(
            scratch=str(scratch), readonly=_interpreter_paths(), as_root=as_root,
            env=_minimal_env(str(scratch), None), uid=DEFAULT_UID,
        )  # fmt: skip # the arguments grouped by meaning, not one a line
        probe = "import os; open('probe', 'w').write(str(os.getuid()))"
        try:
            proc = subprocess.run(
                [*argv, os.path.abspath(sys.executable), "-c", probe],
                stdin=subprocess.DEVNULL, capture_output=True, timeout=30, check=False,
            )  # fmt: skip # the arguments grouped by meaning, not one a line
        except (OSError, subprocess.TimeoutExpired) as exc:
            return False, f"bubblewrap could not start a sandbox: {exc}"
        if proc.returncode != 0:
            err = proc.stderr.decode(errors="replace").strip()[-500:]
            return False, f"bubblewrap could not start a sandbox (exit {proc.returncode}): {err}"
        if not (scratch / "probe").exists():
            return False, "bubblewrap ran, but the probe could not write its scratch directory"
    return True, f"bubblewrap works ({bwrap}{', dropping root with setpriv' if as_root else ''})"


def _preexec(limits: Limits):
    mem, nproc, fsize = limits.memory_bytes, limits.max_processes, limits.max_file_bytes

    def preexec() -> None:  # runs in the child between fork and exec: keep it minimal
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        resource.setrlimit(resource.RLIMIT_AS, (mem, mem))
        resource.setrlimit(resource.RLIMIT_NPROC, (nproc, nproc))
        resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))
        signal.signal(signal.SIGXFSZ, signal.SIG_DFL)
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)

    return preexec


def run_sandboxed(
    argv: Sequence[str],
    *,
    scratch: Path,
    limits: Limits,
    readonly: Sequence[Path] = (),
    env: Mapping[str, str] | None = None,
    allow_unsafe: bool = False,
    uid: int | None = None,
    binds: Mapping[str, Path] | None = None,
    hide: Sequence[str] = (),
    workdir: str | None = None,
    results: bool = False,
    stdin: bytes | None = None,
) -> SandboxResult:
    """Run ``argv`` in a sandbox whose only writable directory is ``scratch``.

    ``readonly`` paths are bound read-only where they are, as the interpreter always is;
    ``uid``: the unprivileged uid when the caller is root (default ``DEFAULT_UID``).
    ``binds`` maps a path inside to a host file or folder bound over it read-only (stub
    modules); ``hide`` lists folders replaced by an empty read-only tmpfs. With ``workdir``,
    the working directory and home is a fresh tmpfs of ``limits.max_disk_bytes`` there and
    ``scratch`` (the inputs) is read-only. With ``results``, the command gets a pipe whose fd
    is in ``GRADER_RESULTS_FD``; what it writes there is ``result.results``. ``stdin`` is
    written to the command's standard input (else ``/dev/null``), then closed.
    """
    scratch = Path(scratch).resolve()
    if not scratch.is_dir() or scratch == Path("/"):  # as root, it is chowned to the uid
        raise ValueError(f"scratch directory {scratch} must be an existing folder other than /")
    ro = [str(Path(p).resolve()) for p in readonly]
    bind_map = {str(dest): str(Path(source).resolve()) for dest, source in (binds or {}).items()}
    as_root = os.geteuid() == 0
    uid = DEFAULT_UID if uid is None else int(uid)
    if as_root and not 0 < uid < 2**32 - 1:
        raise ValueError(f"uid must be a positive unprivileged uid, got {uid}")
    pipes: list[int] = []  # results (read, write), bwrap's info (read, write)
    if results:
        pipes += os.pipe()
        env = {**(env or {}), "GRADER_RESULTS_FD": str(pipes[1])}
    full_env = _minimal_env(workdir or str(scratch), env)
    ok, reason = bwrap_status()
    try:
        if ok:
            if as_root:
                os.chown(scratch, uid, uid, follow_symlinks=False)
                for folder, dirs, files in os.walk(scratch):
                    for name in dirs + files:
                        os.chown(os.path.join(folder, name), uid, uid, follow_symlinks=False)
            pipes += os.pipe()
            readonly = sorted(set(_interpreter_paths()) | set(ro))
            cmd = _bwrap_args(
                scratch=str(scratch), info_fd=pipes[-1], readonly=readonly, env=full_env,
                as_root=as_root, uid=uid, binds=bind_map, hide=hide, workdir=workdir,
                disk_bytes=limits.max_disk_bytes,
            )  # fmt: skip # the arguments grouped by meaning, not one a line
            env_run, warning = {"PATH": DEFAULT_PATH}, None
        elif allow_unsafe:
            warning = f"{UNSAFE_WARNING} ({reason})"
            if as_root:
                warning += "; running as root, so the process limit did not apply"
            if workdir is not None:
                warning += f"; the work directory was {scratch} itself, not a tmpfs at {workdir}"
                full_env["HOME"] = str(scratch)
            if binds or hide:
                warning += "; the stub modules and hidden folders were NOT put in place"
            cmd, env_run = [], full_env
        else:
            raise RuntimeError(
                "REFUSING TO RUN UNTRUSTED CODE: no working bubblewrap sandbox on this machine: "
                f"{reason}. Install bubblewrap (apt-get install bubblewrap) and make sure it can "
                "create namespaces here, or pass allow_unsafe=True to run WITHOUT isolation."
            )
        cmd += [os.fspath(a) for a in argv]
        fds = (pipes[0] if results else None, pipes[-2] if ok else None)  # results, bwrap's info
        return _run(cmd, str(scratch), env_run, limits, warning, pipes, *fds, stdin)
    finally:
        for fd in pipes:
            if fd >= 0:
                os.close(fd)


def _run(
    cmd: list[str],
    cwd: str,
    env: dict[str, str],
    limits: Limits,
    warning: str | None,
    pipes: list[int],
    res_fd: int | None,
    info_fd: int | None,
    stdin: bytes | None,
) -> SandboxResult:
    """Run ``cmd`` in its own process group, its pipes drained by threads within the limits,
    and kill it all at the deadline. ``pipes``: (read, write) pairs; the child gets the write
    ends, closed here (-1) once it has them."""
    start = time.monotonic()
    proc = subprocess.Popen(
        cmd, stdin=subprocess.DEVNULL if stdin is None else subprocess.PIPE,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=cwd, env=env,
        start_new_session=True, preexec_fn=_preexec(limits), close_fds=True,
        pass_fds=tuple(pipes[1::2]),
    )  # fmt: skip # the arguments grouped by meaning, not one a line
    for i in range(1, len(pipes), 2):  # the child holds the write ends: EOF when it is gone
        os.close(pipes[i])
        pipes[i] = -1
    init = _SandboxInit(info_fd) if info_fd is not None else None
    out_fd, err_fd = proc.stdout.fileno(), proc.stderr.fileno()
    chunks: dict[int | None, list[bytes]] = {out_fd: [], err_fd: [], res_fd: []}
    room = {out_fd: limits.max_output_bytes, res_fd: limits.max_results_bytes}
    cut = {out_fd: False, res_fd: False}  # stdout and stderr share one budget
    lock = threading.Lock()

    def drain(fd: int, budget: int | None) -> None:
        while data := _read(fd):
            with lock:
                cut[budget] |= len(data) > room[budget]
                chunks[fd].append(data[: room[budget]])
                room[budget] -= len(chunks[fd][-1])

    def feed() -> None:
        with contextlib.suppress(OSError):  # the command closed its stdin or is gone
            proc.stdin.write(stdin)
        with contextlib.suppress(OSError):
            proc.stdin.close()

    threads = [
        threading.Thread(target=drain, args=(fd, res_fd if fd == res_fd else out_fd))
        for fd in (out_fd, err_fd, res_fd)
        if fd is not None
    ]
    threads += [threading.Thread(target=feed)] if stdin is not None else []
    for thread in threads:
        thread.daemon = True
        thread.start()
    timed_out, killed_reason = False, None
    try:
        proc.wait(timeout=limits.wall_seconds)
    except subprocess.TimeoutExpired:
        timed_out = True
        killed_reason = f"wall-clock limit of {limits.wall_seconds:g} s exceeded"
    finally:
        _kill_group(proc.pid)  # nothing of the command outlives the call
        proc.wait()
        if init is not None:
            init.kill_and_wait()
    # Drain what is left, within a grace time: something outside the group (without bwrap)
    # may still hold the pipes, and is given up on.
    until = time.monotonic() + KILL_GRACE_SECONDS
    for thread in threads:
        thread.join(max(0.0, until - time.monotonic()))
    with lock:  # a thread still reading adds nothing more, and its pipe stays open
        out = b"".join(chunks[out_fd]), b"".join(chunks[err_fd]), b"".join(chunks[res_fd])
        room.update({out_fd: 0, res_fd: 0})
    for thread, file in zip(threads, (proc.stdout, proc.stderr), strict=False):
        if not thread.is_alive():
            file.close()
    rc = proc.returncode
    if killed_reason is None and rc < 0:
        killed_reason = f"killed by signal {signal.Signals(-rc).name}"
    return SandboxResult(
        rc, out[0], out[1], timed_out, cut[out_fd], killed_reason, time.monotonic() - start,
        warning, out[2], cut[res_fd],
    )  # fmt: skip # the fields in the dataclass's order


def _read(fd: int) -> bytes:
    try:
        return os.read(fd, 65536)
    except OSError:
        return b""


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


class _SandboxInit:
    """The sandbox's PID 1, from bwrap's ``--info-fd``: killing it empties the PID namespace,
    and its exit means every process of the sandbox is gone."""

    def __init__(self, info_r: int) -> None:
        self.pidfd: int | None = None
        data = b""
        deadline = time.monotonic() + 10
        with selectors.DefaultSelector() as sel:
            sel.register(info_r, selectors.EVENT_READ)
            while time.monotonic() < deadline and b"}" not in data:
                if not sel.select(timeout=deadline - time.monotonic()):
                    break
                chunk = os.read(info_r, 4096)
                if not chunk:
                    break
                data += chunk
        try:
            pid = int(json.loads(data)["child-pid"])
            pidfd = os.pidfd_open(pid)
        except (ValueError, KeyError, TypeError, OSError):
            return  # bwrap failed before starting the sandbox, or it is gone already
        try:  # the pid was not reused: it is PID 1 of a namespace of its own
            nspid = Path(f"/proc/{pid}/status").read_text().split("NSpid:")[1].split("\n")[0]
            if nspid.split()[-1] != "1" or len(nspid.split()) < 2:
                raise ValueError(nspid)
        except (OSError, IndexError, ValueError):
            os.close(pidfd)
            return
        self.pidfd = pidfd

    def kill_and_wait(self, timeout: float = 10.0) -> None:
        if self.pidfd is None:
            return
        try:
            signal.pidfd_send_signal(self.pidfd, signal.SIGKILL)
            with selectors.DefaultSelector() as sel:
                sel.register(self.pidfd, selectors.EVENT_READ)
                sel.select(timeout=timeout)  # readable once it has exited
        except ProcessLookupError:
            pass
        finally:
            os.close(self.pidfd)
            self.pidfd = None

"""Run one untrusted command in a bubblewrap sandbox with operating-system limits.

The primitive the grading runner builds on (see "The autograder's threat model" in the
design notes). One call runs one command:

- in new network, PID, IPC, UTS (and cgroup) namespaces: no network at all, only the
  sandbox's own loopback, so even the host's ``127.0.0.1`` is out of reach;
- on a root filesystem that holds only what running Python needs, read-only: ``/usr`` (with
  the ``/lib``, ``/lib64``, ``/bin``, ``/sbin`` links or binds), a few pieces of ``/etc``, the
  interpreter's real prefix (``sys.base_prefix`` resolved), the virtual environment, and the
  paths the caller names; the scratch directory is the only writable place besides a private
  ``/tmp``. Everything else (``solutions/``, the gradebook, other submissions, the instructor's
  home) does not exist inside;
- with an empty environment plus ``PATH``, ``HOME`` (the scratch directory), ``LANG`` and what
  the caller passes;
- with ``setrlimit`` limits on address space, processes, file size and core dumps, a
  wall-clock limit that kills everything the command started, and a cap on captured output.

``RLIMIT_NPROC`` is not enforced for root, so when this runs as root the command runs as an
unprivileged uid (``DEFAULT_UID``, or the ``uid`` argument): bubblewrap itself starts as root
(it must read the interpreter under ``/root``, which that uid cannot) without a user namespace,
and ``setpriv`` drops to the uid, clears groups, capabilities and the bounding set and sets
``no_new_privs`` before the command starts. The process limit counts every process of that uid
on the machine, so concurrent runs should each get their own uid.

Where bubblewrap is missing or cannot start a sandbox, ``run_sandboxed`` refuses with a
``RuntimeError`` unless the caller passes ``allow_unsafe=True``; then the command runs with the
limits but without any isolation, and the result carries a warning.
"""

from __future__ import annotations

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
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

GiB = 1 << 30
MiB = 1 << 20

#: The uid (and gid) a command runs as when the caller is root and names none ("nobody").
DEFAULT_UID = 65534

#: Host directories bound read-only (or recreated as the same symlink) when they exist.
SYSTEM_DIRS = ("/usr", "/lib", "/lib32", "/lib64", "/libx32", "/bin", "/sbin")
#: The pieces of /etc that dynamic linking and the C library want; nothing with secrets.
SYSTEM_ETC = (
    "/etc/ld.so.cache",
    "/etc/ld.so.conf",
    "/etc/ld.so.conf.d",
    "/etc/alternatives",
    "/etc/localtime",
)
DEFAULT_PATH = "/usr/local/bin:/usr/bin:/bin"
KILL_GRACE_SECONDS = 2.0  # how long to drain the pipes after killing, at most
UNSAFE_WARNING = (
    "UNSAFE: bubblewrap is not available, the command ran WITHOUT isolation (it could read "
    "every file this user can, use the network and see the whole environment); only the "
    "rlimits and the wall-clock limit applied"
)


@dataclass(frozen=True)
class Limits:
    """Resource limits for one sandboxed command."""

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


@dataclass(frozen=True)
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


# --- building the bubblewrap command line -------------------------------------------------


def _ancestors(path: str) -> list[str]:
    """The proper ancestors of an absolute path, outermost first, without "/"."""
    parts = Path(path).parts[1:-1]
    return ["/" + "/".join(parts[: i + 1]) for i in range(len(parts))]


def _inside(path: str, mounts: Iterable[str]) -> bool:
    return any(path == m or path.startswith(m.rstrip("/") + "/") for m in mounts)


def _bwrap_args(
    *,
    scratch: str,
    info_fd: int | None = None,
    readonly: Sequence[str],
    env: Mapping[str, str],
    as_root: bool,
    uid: int,
    binds: Mapping[str, str] | None = None,
    hide: Sequence[str] = (),
    workdir: str | None = None,
    disk_bytes: int | None = None,
) -> list[str]:
    args = [
        "bwrap",
        "--unshare-ipc",
        "--unshare-pid",
        "--unshare-net",
        "--unshare-uts",
        "--unshare-cgroup-try",
        "--die-with-parent",
        "--new-session",
        "--clearenv",
        "--hostname",
        "sandbox",
    ]
    if info_fd is not None:  # bwrap reports the pid of the sandbox's init there
        args += ["--info-fd", str(info_fd)]
    if as_root:
        # No user namespace: the command must run as a real unprivileged uid for
        # RLIMIT_NPROC to hold. Keep only what setpriv needs to drop to that uid.
        args += ["--cap-drop", "ALL"]
        args += ["--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID", "--cap-add", "CAP_SETPCAP"]
    else:
        args += ["--unshare-user", "--disable-userns"]

    mounts: list[str] = []  # bind mounts set up so far: directories under them exist
    for d in SYSTEM_DIRS:
        if os.path.islink(d):
            args += ["--symlink", os.readlink(d), d]
        elif os.path.isdir(d):
            args += ["--ro-bind", d, d]
            mounts.append(d)
    args += ["--perms", "0755", "--dir", "/etc"]
    for f in SYSTEM_ETC:
        if os.path.lexists(f):
            args += ["--ro-bind", f, f]
    size = ["--size", str(disk_bytes)] if disk_bytes else []
    args += ["--proc", "/proc", "--dev", "/dev", "--perms", "1777", *size, "--tmpfs", "/tmp"]
    made = {"/etc", "/proc", "/dev", "/tmp"}  # exist already; new directories may go in /tmp

    # With a work directory, the scratch directory only brings the inputs: read-only.
    mounts_in = [(p, "--ro-bind") for p in readonly]
    mounts_in.append((scratch, "--ro-bind" if workdir else "--bind"))
    # Parents before children, so that a child bind is not hidden by its parent's.
    mounts_in.sort(key=lambda b: (len(Path(b[0]).parts), b[0]))
    for path, flag in mounts_in:
        for parent in _ancestors(path):
            # bwrap creates missing parents with mode 0700, which the unprivileged uid could
            # not cross; create them 0755 (unless they exist already or sit in a bind mount).
            if parent in made or _inside(parent, mounts):
                continue
            args += ["--perms", "0755", "--dir", parent]
            made.add(parent)
        args += [flag, path, path]
        mounts.append(path)
    if workdir:
        for parent in _ancestors(workdir):
            if parent not in made and not _inside(parent, mounts):
                args += ["--perms", "0755", "--dir", parent]
                made.add(parent)
        args += ["--perms", "1777", *size, "--tmpfs", workdir]
    # Overlays last: a file or folder bound over one inside an earlier mount (a stub module),
    # and folders hidden behind an empty read-only tmpfs.
    for dest, source in sorted((binds or {}).items()):
        args += ["--ro-bind", source, dest]
    for dest in hide:
        args += ["--size", "4096", "--tmpfs", dest, "--remount-ro", dest]

    for key, value in env.items():
        args += ["--setenv", key, value]
    args += ["--chdir", workdir or scratch]
    if as_root:
        args += [
            "setpriv",
            f"--reuid={uid}",
            f"--regid={uid}",
            "--clear-groups",
            "--inh-caps=-all",
            "--bounding-set=-all",
            "--no-new-privs",
            "--",
        ]
    return args


def _interpreter_paths() -> list[str]:
    """The real prefixes the running Python needs: the base installation and the venv."""
    paths = {str(Path(sys.base_prefix).resolve()), str(Path(sys.prefix).resolve())}
    # The venv's own path (its bin/python is a symlink; the link must resolve inside too).
    paths.add(os.path.abspath(sys.prefix))
    return sorted(paths)


def _minimal_env(home: str, env: Mapping[str, str] | None) -> dict[str, str]:
    venv_bin = os.path.join(os.path.abspath(sys.prefix), "bin")
    full = {"PATH": f"{venv_bin}:{DEFAULT_PATH}", "HOME": home, "LANG": "C.UTF-8"}
    for key, value in (env or {}).items():
        if not isinstance(key, str) or not isinstance(value, str) or "=" in key or not key:
            raise ValueError(f"bad environment entry {key!r}={value!r}")
        full[key] = value
    return full


# --- availability --------------------------------------------------------------------------


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
        probe = "import os; open('probe', 'w').write(str(os.getuid()))"
        bwrap = _bwrap_args(
            scratch=str(scratch),
            readonly=_interpreter_paths(),
            env=_minimal_env(str(scratch), None),
            as_root=as_root,
            uid=DEFAULT_UID,
        )
        argv = [*bwrap, os.path.abspath(sys.executable), "-c", probe]
        try:
            proc = subprocess.run(
                argv, stdin=subprocess.DEVNULL, capture_output=True, timeout=30, check=False
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            return False, f"bubblewrap could not start a sandbox: {exc}"
        if proc.returncode != 0:
            err = proc.stderr.decode(errors="replace").strip()[-500:]
            return False, f"bubblewrap could not start a sandbox (exit {proc.returncode}): {err}"
        if not (scratch / "probe").exists():
            return False, "bubblewrap ran, but the probe could not write its scratch directory"
    return True, f"bubblewrap works ({bwrap}{', dropping root with setpriv' if as_root else ''})"


# --- running -------------------------------------------------------------------------------


def _chown_tree(root: Path, uid: int) -> None:
    os.chown(root, uid, uid, follow_symlinks=False)
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            os.chown(os.path.join(dirpath, name), uid, uid, follow_symlinks=False)


def _make_preexec(limits: Limits):
    mem, nproc, fsize = limits.memory_bytes, limits.max_processes, limits.max_file_bytes

    def preexec() -> None:  # runs in the child between fork and exec: keep it minimal
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        resource.setrlimit(resource.RLIMIT_AS, (mem, mem))
        resource.setrlimit(resource.RLIMIT_NPROC, (nproc, nproc))
        resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))
        signal.signal(signal.SIGXFSZ, signal.SIG_DFL)
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)

    return preexec


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def run_sandboxed(
    argv: Sequence[str],
    *,
    scratch: Path,
    readonly: Sequence[Path] = (),
    limits: Limits,
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

    ``readonly`` paths are bound read-only at the same place; the running interpreter's
    prefix and venv always are. ``uid`` is the unprivileged uid the command runs as when the
    caller is root (default ``DEFAULT_UID``); give concurrent runs distinct uids, since the
    process limit counts all processes of the uid. Raises ``RuntimeError`` when bubblewrap
    cannot sandbox here, unless ``allow_unsafe`` (then no isolation, and ``result.warning``).

    ``binds`` maps a path inside the sandbox to a host file or folder bound there read-only,
    over whatever the other mounts put there (stub modules); ``hide`` lists folders replaced
    by an empty read-only tmpfs. With ``workdir``, the command's working directory and home
    is a fresh tmpfs of ``limits.max_disk_bytes`` at that path, and ``scratch`` is read-only
    (it carries the inputs): nothing the command writes reaches the host's disk. With
    ``results``, the command gets a pipe whose fd number is in ``GRADER_RESULTS_FD``; what it
    writes there (up to ``limits.max_results_bytes``) is ``result.results``. ``stdin`` is
    written to the command's standard input, which is then closed (without it, stdin is
    ``/dev/null``); a command that does not read it all is not waited for.
    """
    if isinstance(argv, (str, bytes)) or not argv:
        raise ValueError("argv must be a non-empty sequence of strings")
    if not isinstance(limits, Limits):
        raise TypeError("limits must be a Limits")
    scratch = Path(scratch).resolve()
    if not scratch.is_dir():
        raise ValueError(f"scratch directory {scratch} does not exist")
    if scratch == Path("/"):
        raise ValueError("scratch must not be /")
    ro = [str(Path(p).resolve()) for p in readonly]
    for p in ro:
        if not os.path.exists(p):
            raise ValueError(f"read-only path {p} does not exist")
    if workdir is not None and (not workdir.startswith("/") or workdir == "/"):
        raise ValueError(f"workdir must be an absolute path other than /, got {workdir!r}")
    bind_map = {}
    for dest, source in (binds or {}).items():
        if not str(dest).startswith("/") or not os.path.exists(source):
            raise ValueError(f"bind {source} -> {dest}: needs an existing source, absolute dest")
        bind_map[str(dest)] = str(Path(source).resolve())
    res: list[int | None] = [None, None]  # read end, write end (None once closed)
    if results:
        res[:] = os.pipe()
        env = {**(env or {}), "GRADER_RESULTS_FD": str(res[1])}
    try:
        return _run_sandboxed(
            argv, scratch=scratch, ro=ro, limits=limits, env=env, allow_unsafe=allow_unsafe,
            uid=uid, binds=bind_map, hide=hide, workdir=workdir, res=res, stdin=stdin,
        )  # fmt: skip # the arguments grouped by meaning, not one a line
    finally:
        for fd in res:
            if fd is not None:
                os.close(fd)


def _run_sandboxed(
    argv: Sequence[str],
    *,
    scratch: Path,
    ro: list[str],
    limits: Limits,
    env: Mapping[str, str] | None,
    allow_unsafe: bool,
    uid: int | None,
    binds: dict[str, str],
    hide: Sequence[str],
    workdir: str | None,
    res: list[int | None],
    stdin: bytes | None,
) -> SandboxResult:
    full_env = _minimal_env(workdir or str(scratch), env)
    as_root = os.geteuid() == 0
    uid = DEFAULT_UID if uid is None else int(uid)
    if as_root and not 0 < uid < 2**32 - 1:
        raise ValueError(f"uid must be a positive unprivileged uid, got {uid}")

    ok, reason = bwrap_status()
    if ok:
        if as_root:
            _chown_tree(scratch, uid)
        readonly_all = sorted(set(_interpreter_paths()) | set(ro))
        info_r, info_w = os.pipe()
        cmd = _bwrap_args(
            scratch=str(scratch),
            info_fd=info_w,
            readonly=readonly_all,
            env=full_env,
            as_root=as_root,
            uid=uid,
            binds=binds,
            hide=hide,
            workdir=workdir,
            disk_bytes=limits.max_disk_bytes,
        ) + [os.fspath(a) for a in argv]
        try:
            return _run(
                cmd,
                cwd=str(scratch),
                env={"PATH": DEFAULT_PATH},
                limits=limits,
                warning=None,
                info=(info_r, info_w),
                res=res,
                stdin=stdin,
            )
        finally:
            os.close(info_r)
    if allow_unsafe:
        warning = f"{UNSAFE_WARNING} ({reason})"
        if as_root:
            warning += "; running as root, so the process limit did not apply"
        cmd = [os.fspath(a) for a in argv]
    else:
        raise RuntimeError(
            "REFUSING TO RUN UNTRUSTED CODE: no working bubblewrap sandbox on this machine: "
            f"{reason}. Install bubblewrap (apt-get install bubblewrap) and make sure it can "
            "create namespaces here, or pass allow_unsafe=True to run WITHOUT isolation."
        )
    if workdir is not None:
        warning += f"; the work directory was {scratch} itself, not a tmpfs at {workdir}"
        full_env["HOME"] = str(scratch)
    if binds or hide:
        warning += "; the stub modules and hidden folders were NOT put in place"
    return _run(
        cmd, cwd=str(scratch), env=full_env, limits=limits, warning=warning, info=None, res=res,
        stdin=stdin,
    )  # fmt: skip # the arguments grouped by meaning, not one a line


def _run(
    cmd: list[str],
    *,
    cwd: str,
    env: dict[str, str],
    limits: Limits,
    warning: str | None,
    info: tuple[int, int] | None,
    res: list[int | None] | None = None,
    stdin: bytes | None = None,
) -> SandboxResult:
    res = res if res is not None else [None, None]
    start = time.monotonic()
    deadline = start + limits.wall_seconds
    proc = subprocess.Popen(
        cmd,
        stdin=subprocess.DEVNULL if stdin is None else subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=cwd,
        env=env,
        start_new_session=True,  # its own process group, killed as a whole on timeout
        preexec_fn=_make_preexec(limits),
        close_fds=True,
        pass_fds=tuple(fd for fd in ((info[1] if info else None), res[1]) if fd is not None),
    )
    if info:
        os.close(info[1])
    res_fd = res[0]
    if res[1] is not None:
        os.close(res[1])  # the child holds the write end now: EOF when it (and its children) exit
        res[1] = None
    init = _SandboxInit(info[0]) if info else None
    pgid = proc.pid
    out_fd, err_fd = proc.stdout.fileno(), proc.stderr.fileno()
    chunks: dict[int, list[bytes]] = {out_fd: [], err_fd: []}
    kept = 0
    res_chunks: list[bytes] = []
    res_kept = 0
    truncated = res_truncated = timed_out = False
    killed_reason: str | None = None
    sel = selectors.DefaultSelector()
    to_write = memoryview(stdin or b"")
    in_fd = proc.stdin.fileno() if proc.stdin is not None else None
    try:
        for f in (proc.stdout, proc.stderr):
            os.set_blocking(f.fileno(), False)
            sel.register(f.fileno(), selectors.EVENT_READ)
        if in_fd is not None:
            os.set_blocking(in_fd, False)
            sel.register(in_fd, selectors.EVENT_WRITE)
        if res_fd is not None:
            os.set_blocking(res_fd, False)
            sel.register(res_fd, selectors.EVENT_READ)
        drain_until: float | None = None
        while sel.get_map():
            now = time.monotonic()
            if drain_until is None and now >= deadline:
                timed_out = True
                killed_reason = f"wall-clock limit of {limits.wall_seconds:g} s exceeded"
                _kill_group(pgid)
                drain_until = now + KILL_GRACE_SECONDS
            if drain_until is not None and now >= drain_until:
                break  # something outside the group still holds the pipes; give up on them
            limit = drain_until if drain_until is not None else deadline
            for key, _ in sel.select(timeout=max(0.0, min(limit - now, 0.5))):
                fd = key.fd
                if fd == in_fd:
                    try:
                        to_write = to_write[os.write(fd, to_write[:65536]) :]
                    except BlockingIOError:
                        continue
                    except OSError:  # the command closed its stdin or is gone
                        to_write = to_write[:0]
                    if not to_write:
                        sel.unregister(fd)
                        proc.stdin.close()
                    continue
                try:
                    data = os.read(fd, 65536)
                except BlockingIOError:
                    continue
                if not data:
                    sel.unregister(fd)
                    continue
                if fd == res_fd:
                    room = limits.max_results_bytes - res_kept
                    if len(data) > room:
                        res_truncated = True
                        data = data[: max(room, 0)]
                    res_chunks.append(data)
                    res_kept += len(data)
                    continue
                room = limits.max_output_bytes - kept
                if len(data) > room:
                    truncated = True
                    data = data[: max(room, 0)]
                if data:
                    chunks[fd].append(data)
                    kept += len(data)
        # The pipes are closed (or abandoned); the process itself may still be running.
        remaining = deadline - time.monotonic()
        if drain_until is None:
            try:
                proc.wait(timeout=max(remaining, 0.0))
            except subprocess.TimeoutExpired:
                timed_out = True
                killed_reason = f"wall-clock limit of {limits.wall_seconds:g} s exceeded"
    finally:
        sel.close()
        _kill_group(pgid)  # nothing of the command outlives the call
        proc.wait()
        if init is not None:
            init.kill_and_wait()
        for f in (proc.stdin, proc.stdout, proc.stderr):
            if f is not None:
                f.close()
    rc = proc.returncode
    if killed_reason is None and rc < 0:
        killed_reason = f"killed by signal {signal.Signals(-rc).name}"
    return SandboxResult(
        returncode=rc,
        stdout=b"".join(chunks[out_fd]),
        stderr=b"".join(chunks[err_fd]),
        timed_out=timed_out,
        truncated=truncated,
        killed_reason=killed_reason,
        wall_seconds=time.monotonic() - start,
        warning=warning,
        results=b"".join(res_chunks),
        results_truncated=res_truncated,
    )


class _SandboxInit:
    """The sandbox's PID 1, from bwrap's ``--info-fd``: killing it empties the PID namespace,
    and its exit means every process of the sandbox is gone."""

    def __init__(self, info_r: int) -> None:
        self.pidfd: int | None = None
        data = b""
        sel = selectors.DefaultSelector()
        sel.register(info_r, selectors.EVENT_READ)
        deadline = time.monotonic() + 10
        try:
            while time.monotonic() < deadline and b"}" not in data:
                if not sel.select(timeout=deadline - time.monotonic()):
                    break
                chunk = os.read(info_r, 4096)
                if not chunk:
                    break
                data += chunk
        finally:
            sel.close()
        try:
            pid = int(json.loads(data)["child-pid"])
        except (ValueError, KeyError, TypeError):
            return  # bwrap failed before starting the sandbox
        try:
            pidfd = os.pidfd_open(pid)
        except OSError:
            return  # already gone and reaped: its namespace is empty
        try:  # make sure the pid was not reused: it must be PID 1 of a namespace of its own
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
            try:
                signal.pidfd_send_signal(self.pidfd, signal.SIGKILL)
            except ProcessLookupError:
                return
            sel = selectors.DefaultSelector()
            sel.register(self.pidfd, selectors.EVENT_READ)
            try:
                sel.select(timeout=timeout)  # readable once it has exited
            finally:
                sel.close()
        finally:
            os.close(self.pidfd)
            self.pidfd = None

"""The sandbox primitive of the grading runner (``autograder/sandbox.py``).

Every case runs a short Python program under ``run_sandboxed`` and checks one promise of the
threat model: no view of files outside the scratch directory and the bound interpreter, no
network, an empty environment, and limits on wall clock, memory, processes, output and file
size, enforced by the operating system. Cases that need bubblewrap are skipped, with the
reason, where it cannot start a sandbox.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import socket
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
from autograder import sandbox  # noqa: E402

PYTHON = os.path.abspath(sys.executable)
BWRAP_OK, BWRAP_REASON = sandbox.bwrap_status()
needs_bwrap = pytest.mark.skipif(not BWRAP_OK, reason=f"no bubblewrap sandbox: {BWRAP_REASON}")
QUICK = sandbox.Limits(wall_seconds=20)


@pytest.fixture
def uid() -> int:
    """A uid of its own per test (when run as root), so that process counts and the leftover
    check see only this test's processes, even beside other sessions on the machine."""
    return random.randrange(3_900_000, 3_999_999)


@pytest.fixture
def scratch(tmp_path: Path) -> Path:
    path = tmp_path / "scratch"
    path.mkdir()
    if os.geteuid() == 0:
        tmp_path.chmod(0o755)  # only matters for the unsafe fallback
    return path


def processes_of(uid: int) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            status = Path(f"/proc/{entry}/status").read_text()
        except OSError:
            continue
        for line in status.splitlines():
            if line.startswith("Uid:") and int(line.split()[1]) == uid:
                pids.append(int(entry))
    return pids


def run_py(code: str, scratch: Path, uid: int, limits: sandbox.Limits = QUICK, **kwargs):
    return sandbox.run_sandboxed(
        [PYTHON, "-c", code], scratch=scratch, limits=limits, uid=uid, **kwargs
    )


@pytest.fixture(autouse=True)
def no_leftovers(uid: int):
    yield
    if os.geteuid() == 0:
        left = processes_of(uid)
        for pid in left:  # clean up before failing: never leave processes behind
            os.kill(pid, signal.SIGKILL)
        assert not left, f"processes of uid {uid} outlived the call: {left}"


# --- isolation -----------------------------------------------------------------------------


@needs_bwrap
def test_python_runs_with_only_the_given_environment(scratch, uid, monkeypatch):
    monkeypatch.setenv("HOST_SECRET", "s3cret")
    code = "import os, json; print(json.dumps(dict(os.environ))); open('out.txt', 'w').write('hi')"
    r = run_py(code, scratch, uid, env={"STUDENT": "alice"})
    assert r.returncode == 0, r.stderr
    assert not (r.timed_out or r.truncated or r.killed_reason or r.warning)
    env = json.loads(r.stdout)
    assert env["STUDENT"] == "alice"
    assert env["HOME"] == str(scratch)
    assert "HOST_SECRET" not in env
    assert set(env) <= {"STUDENT", "HOME", "PATH", "LANG", "PWD"}
    assert (scratch / "out.txt").read_text() == "hi"


@needs_bwrap
def test_unbound_directories_do_not_exist_inside(tmp_path, scratch, uid):
    solutions = tmp_path / "solutions"
    solutions.mkdir()
    (solutions / "secret.txt").write_text("the answer")
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "data.txt").write_text("given")
    home = Path.home()
    code = f"""
import os
for p in [{str(solutions / "secret.txt")!r}, {str(ROOT / "solutions")!r},
          {str(ROOT / "autograder")!r}, "/home", "/etc/passwd", "/etc/shadow"]:
    print(p, os.path.exists(p))
try:
    open({str(solutions / "secret.txt")!r}).read(); print("READ SECRET")
except OSError as e:
    print("denied", type(e).__name__)
def listing(path):
    try:
        return sorted(os.listdir(path))
    except FileNotFoundError:
        return None
print("home:", listing({str(home)!r}))
print("shared:", open({str(shared / "data.txt")!r}).read())
"""
    r = run_py(code, scratch, uid, readonly=[shared])
    out = r.stdout.decode()
    assert r.returncode == 0, r.stderr
    assert "READ SECRET" not in out and "denied FileNotFoundError" in out
    assert " True" not in out, out
    assert "shared: given" in out
    # The caller's home folder exists inside only as the path down to something bound there
    # (the interpreter, when it lives under the home folder): whatever else it holds is gone.
    inside = eval(out.split("home:", 1)[1].splitlines()[0])
    needed = {
        Path(p).relative_to(home).parts[0]
        for p in [*sandbox._interpreter_paths(), str(ROOT)]
        if Path(p).is_relative_to(home) and Path(p) != home
    }
    assert inside is None or set(inside) <= needed, (inside, needed)


@needs_bwrap
def test_cannot_write_outside_scratch(tmp_path, scratch, uid):
    shared = tmp_path / "shared"
    shared.mkdir()
    targets = [tmp_path / "outside.txt", shared / "x.txt", Path(sys.prefix) / "pwned.txt", "/x"]
    code = f"""
import os
for p in {[str(t) for t in targets]!r}:
    try:
        open(p, "w").write("x"); print("WROTE", p)
    except OSError as e:
        print("denied", p, type(e).__name__)
open("/tmp/private.txt", "w").write("tmpfs")  # /tmp is the sandbox's own
"""
    r = run_py(code, scratch, uid, readonly=[shared])
    assert r.returncode == 0, r.stderr
    assert b"WROTE" not in r.stdout
    for t in targets:
        assert not Path(t).exists()
    assert not Path("/tmp/private.txt").exists()


@needs_bwrap
def test_no_network_not_even_the_hosts_loopback(scratch, uid):
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        port = listener.getsockname()[1]
        code = f"""
import socket, time
for addr in [("127.0.0.1", {port}), ("1.1.1.1", 80), ("8.8.8.8", 53)]:
    t = time.monotonic()
    try:
        socket.create_connection(addr, timeout=2).close(); print("CONNECTED", addr)
    except OSError as e:
        print("refused", addr, type(e).__name__, round(time.monotonic() - t, 2))
"""
        r = run_py(code, scratch, uid)
        listener.setblocking(False)
        with pytest.raises(BlockingIOError):
            listener.accept()  # nobody reached the host's listener
    assert r.returncode == 0, r.stderr
    assert b"CONNECTED" not in r.stdout
    assert r.stdout.count(b"refused") == 3
    assert r.wall_seconds < 3  # fails at once (no route), not by timing out


# --- limits --------------------------------------------------------------------------------


@needs_bwrap
def test_infinite_loop_is_killed_at_the_wall_limit(scratch, uid):
    r = run_py("while True: pass", scratch, uid, sandbox.Limits(wall_seconds=1.5))
    assert r.timed_out and r.returncode != 0
    assert "wall-clock" in r.killed_reason
    assert 1.4 < r.wall_seconds < 4


@needs_bwrap
def test_sleep_ignoring_sigterm_dies_too(scratch, uid):
    code = (
        "import signal, time, subprocess\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "subprocess.Popen(['sleep', '60'], start_new_session=True)\n"  # escapes the group
        "print('sleeping', flush=True); time.sleep(60)\n"
    )
    r = run_py(code, scratch, uid, sandbox.Limits(wall_seconds=1.5))
    assert r.timed_out and r.stdout == b"sleeping\n"
    assert r.wall_seconds < 4
    # no_leftovers checks that the escaped sleep died with the sandbox


@needs_bwrap
def test_memory_hog_fails(scratch, uid):
    code = "x = bytearray(2 * 1024**3); print('ALLOCATED')"
    r = run_py(code, scratch, uid, sandbox.Limits(wall_seconds=20, memory_bytes=256 * 2**20))
    assert r.returncode != 0
    assert b"ALLOCATED" not in r.stdout
    assert b"MemoryError" in r.stderr


@needs_bwrap
@pytest.mark.skipif(os.geteuid() != 0, reason="the per-test uid needs root to drop to")
def test_fork_bomb_is_stopped_and_nothing_survives(scratch, uid):
    code = """
import subprocess
procs = []
try:
    for _ in range(200):
        procs.append(subprocess.Popen(["sleep", "3600"]))
except OSError as e:
    print("stopped", len(procs), type(e).__name__)
"""
    r = run_py(code, scratch, uid, sandbox.Limits(wall_seconds=20, max_processes=20))
    assert r.returncode == 0, r.stderr
    started = int(r.stdout.split()[1])
    assert r.stdout.startswith(b"stopped") and started < 20
    # The sleeps (an hour each) died with the sandbox: had the runner waited for them, it
    # would have hit the wall-clock limit.
    assert not r.timed_out
    assert processes_of(uid) == []


@needs_bwrap
def test_flood_of_output_is_truncated(scratch, uid):
    code = "import sys\nfor _ in range(50): sys.stdout.buffer.write(b'x' * 10**6)\nprint('done')"
    limits = sandbox.Limits(wall_seconds=20, max_output_bytes=2**20)
    r = run_py(code, scratch, uid, limits)
    assert r.returncode == 0
    assert r.truncated and not r.timed_out
    assert len(r.stdout) + len(r.stderr) == 2**20


@needs_bwrap
def test_file_bigger_than_the_limit_fails(scratch, uid):
    code = """
try:
    with open("big.bin", "wb") as f:
        f.write(b"x" * (2 * 2**20))
    print("WROTE")
except OSError as e:
    print("denied", e.errno)
"""
    r = run_py(code, scratch, uid, sandbox.Limits(wall_seconds=20, max_file_bytes=2**20))
    assert b"WROTE" not in r.stdout
    assert (scratch / "big.bin").stat().st_size <= 2**20


# --- the API -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "field", ["wall_seconds", "memory_bytes", "max_processes", "max_output_bytes", "max_file_bytes"]
)
@pytest.mark.parametrize("value", [0, -1])
def test_limits_reject_non_positive_values(field, value):
    with pytest.raises(ValueError, match=field):
        sandbox.Limits(**{field: value})


def test_limits_defaults():
    limits = sandbox.Limits()
    assert limits.wall_seconds == 300 and limits.memory_bytes == 4 * 2**30
    assert limits.max_processes == 64 and limits.max_output_bytes == 2**20
    assert limits.max_file_bytes == 64 * 2**20


def test_without_bubblewrap_it_refuses_unless_told(scratch, uid, monkeypatch):
    monkeypatch.setattr(sandbox, "bwrap_status", lambda: (False, "bwrap missing (test)"))
    with pytest.raises(RuntimeError, match=r"bwrap missing \(test\).*allow_unsafe"):
        run_py("print('ran')", scratch, uid)
    monkeypatch.setenv("HOST_SECRET", "s3cret")
    r = run_py(
        "import os; print(os.environ.get('HOST_SECRET')); print(os.getcwd(), flush=True)\nwhile True: pass",
        scratch,
        uid,
        sandbox.Limits(wall_seconds=1.5),
        allow_unsafe=True,
    )
    assert r.warning and "UNSAFE" in r.warning and "bwrap missing (test)" in r.warning
    assert r.timed_out
    assert r.stdout.splitlines() == [b"None", str(scratch).encode()]


# --- what the grader adds: stub modules, a tmpfs work directory, a results channel ----------


@needs_bwrap
def test_stub_binds_hide_folders_and_a_bounded_tmpfs_workdir(tmp_path, scratch, uid):
    (scratch / "input.txt").write_text("given")
    real = tmp_path / "pkg"
    (real / "__pycache__").mkdir(parents=True)
    (real / "mod.py").write_text("VALUE = 'the real one'\n")
    (real / "__pycache__" / "compiled.pyc").write_bytes(b"secret bytes")
    stub = tmp_path / "stub.py"
    stub.write_text("VALUE = 'the stub'\n")
    for path in (tmp_path, real, real / "__pycache__"):
        path.chmod(0o755)
    code = f"""
import os, sys
sys.path.insert(0, {str(tmp_path)!r})
import pkg.mod
print("module:", pkg.mod.VALUE)
print("pycache:", os.listdir({str(real / "__pycache__")!r}))
print("cwd:", os.getcwd(), os.environ["HOME"])
print("input:", open({str(scratch / "input.txt")!r}).read())
try:
    open({str(scratch / "new.txt")!r}, "w")
except OSError as error:
    print("scratch read-only:", type(error).__name__)
for where in (".", "/tmp"):
    try:
        with open(os.path.join(where, "fill"), "wb") as f:
            for _ in range(64):
                f.write(b"x" * 2**20)
                f.flush()
        print("filled", where)
    except OSError as error:
        print("full", where, error.errno)
"""
    limits = sandbox.Limits(wall_seconds=20, max_disk_bytes=8 * sandbox.MiB)
    r = run_py(code, scratch, uid, limits=limits, readonly=[tmp_path],
               binds={str(real / "mod.py"): stub}, hide=[str(real / "__pycache__")],
               workdir="/home/student")  # fmt: skip
    out = r.stdout.decode()
    assert r.returncode == 0, r.stderr
    assert "module: the stub" in out
    assert "pycache: []" in out
    assert "cwd: /home/student /home/student" in out
    assert "input: given" in out and "scratch read-only" in out
    assert "full . 28" in out and "full /tmp 28" in out  # ENOSPC at 8 MiB, not 64
    assert not (scratch / "fill").exists() and (real / "mod.py").read_text().startswith(
        "VALUE = 'the real"
    )


@needs_bwrap
def test_results_channel_is_separate_and_capped(scratch, uid):
    code = """
import os
fd = int(os.environ["GRADER_RESULTS_FD"])
os.write(fd, b'{"ok": 1}\\n')
print("to stdout")
os.write(fd, b"z" * 5000)
"""
    limits = sandbox.Limits(wall_seconds=20, max_results_bytes=1000)
    r = run_py(code, scratch, uid, limits=limits, results=True)
    assert r.returncode == 0, r.stderr
    assert r.results.startswith(b'{"ok": 1}\n') and len(r.results) == 1000
    assert r.results_truncated and not r.truncated
    assert r.stdout == b"to stdout\n"


@pytest.mark.parametrize("isolated", [pytest.param(True, marks=needs_bwrap), False])
def test_stdin_is_written_then_closed(scratch, uid, monkeypatch, isolated):
    if not isolated:
        monkeypatch.setattr(sandbox, "bwrap_status", lambda: (False, "bwrap missing (test)"))
    data = os.urandom(3 * sandbox.MiB)  # more than a pipe holds
    code = "import hashlib, sys; print(hashlib.sha256(sys.stdin.buffer.read()).hexdigest())"
    r = run_py(code, scratch, uid, stdin=data, allow_unsafe=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout.decode().strip() == hashlib.sha256(data).hexdigest()
    assert (r.warning is None) == isolated
    # A command that does not read it is not waited for; without stdin, it reads /dev/null.
    r = run_py("print('ignored')", scratch, uid, stdin=data, allow_unsafe=True)
    assert r.stdout == b"ignored\n" and not r.timed_out and r.wall_seconds < 10
    r = run_py("import sys; print(repr(sys.stdin.read()))", scratch, uid, allow_unsafe=True)
    assert r.stdout == b"''\n"

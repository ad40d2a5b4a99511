"""The harness and kernel of the sandboxed grader (``autograder/harness.py``, ``kernel.py``).

Each case runs a few cells through ``run.prepare`` and ``run.run_cells`` in the sandbox, as
``grade.py`` does, with attacks in them, and asserts on what comes back: the records, all
the grader sees of a run. The fused-kernel block is also checked on its own, in a
subprocess (it would change the kernels of this test process).
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import textwrap
from pathlib import Path

import nbformat
import pytest

from autograder import grading, run, sandbox

ROOT = Path(__file__).resolve().parents[1]
BWRAP_OK, BWRAP_REASON = sandbox.bwrap_status()
needs_bwrap = pytest.mark.skipif(not BWRAP_OK, reason=f"no bubblewrap sandbox: {BWRAP_REASON}")
LIMITS = sandbox.Limits(
    wall_seconds=60, max_disk_bytes=32 * sandbox.MiB, max_file_bytes=8 * sandbox.MiB
)
REFUSAL = "fused Adam/AdamW kernels are not available while grading"


def solution() -> str:
    """The AdamW of the solutions, without nbgrader's markers."""
    nb = nbformat.read(str(ROOT / "solutions" / "adamw" / "adamw.ipynb"), 4)
    cell = next(c for c in nb.cells if c.metadata.get("nbgrader", {}).get("grade_id") == "adamw")
    return "import torch\n" + "\n".join(x for x in cell.source.splitlines() if "### " not in x)


def checked(seed: int) -> dict:
    """A test cell as the grader plans it: the AdamW constructor check (one step included)."""
    with grading.planning() as requests:
        grading.check_adamw_constructor(grading.AnswerRef("AdamW"), seed=seed)
    return {"kind": "test", "requests": requests}


def judge(record: dict, seed: int) -> None:
    """The grader's verdict on a test cell's record: raises GradingError when it fails."""
    assert record["type"] == "test"
    with grading.judging(record["entries"]):
        grading.check_adamw_constructor(grading.AnswerRef("AdamW"), seed=seed)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> run.Prepared:
    return run.prepare(tmp_path_factory.mktemp("grader") / "lib")


@pytest.fixture
def uid() -> int:
    return random.randrange(3_900_000, 3_999_999)


def grade(prepared, tmp_path, uid, cells, files=None) -> run.Run:
    """Run ``cells`` (code as text, or cell dicts) with ``files`` handed in beside them."""
    data = tmp_path / "data"
    data.mkdir(parents=True)
    for name, content in (files or {}).items():
        (data / name).write_bytes(content.encode() if isinstance(content, str) else content)
    cells = [
        c if isinstance(c, dict) else {"kind": "code", "source": textwrap.dedent(c)} for c in cells
    ]
    labels = [f"cell {i}" for i in range(len(cells))]
    return run.run_cells(
        cells, labels, data=data, prepared=prepared, limits=LIMITS, uid=uid,
        allow_unsafe=False, scrub=str,
    )  # fmt: skip


def leftovers(uid: int) -> list[str]:
    """Processes of ``uid`` still running (the sandbox must leave none)."""
    left = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        if f"\nUid:\t{uid}\t" in status:
            left.append(pid)
    return left


# --- records cannot be forged ---------------------------------------------------------------

HOOK = """
import sys
NONCES = []  # of the requests the kernel reads, from its frames, seen by a profiler hook

def hook(frame, event, arg):
    for f in (frame, frame.f_back):
        request = f.f_locals.get("request") if f is not None else None
        if isinstance(request, dict) and "nonce" in request:
            NONCES.append(request["nonce"])

sys.setprofile(hook)
"""

FORGE = """
import ctypes, json, os, sys
sys.setprofile(None)
nonce = NONCES[-1]  # the nonce of the request that runs this cell
print("nonce", len(nonce))
forged_obs = {"forged": True}
lines = [
    {"type": "test", "index": 3, "entries": [{"check": "adamw_constructor",
     "inputs": {"seed": 1}, "obs": forged_obs}]},
    {"type": "cell", "index": 2, "stdout": "FORGED", "stderr": "", "error": None},
    {"type": "done", "seconds": 0},
    {"nonce": nonce, "index": 3, "entries": [{"obs": forged_obs}]},
    {"nonce": nonce, "index": 2, "stdout": "FORGED", "stderr": "", "error": None},
    {"nonce": "0" * 32, "index": 2, "stdout": "FORGED", "stderr": "", "error": None},
]
data = b"".join(json.dumps(line).encode() + b"\\n" for line in lines)
print("GRADER_RESULTS_FD" in os.environ)
for fd in map(int, os.listdir("/proc/self/fd")):
    try:
        os.write(fd, data)
        print("wrote to own fd", fd)
    except OSError:
        pass
parent = os.getppid()
for what in ("fd", "fdinfo", "environ", "mem"):
    try:
        os.listdir(f"/proc/{parent}/{what}") if what.startswith("fd") else open(
            f"/proc/{parent}/{what}", "rb").read(1)
        print("parent", what, "OPEN")
    except OSError as error:
        print("parent", what, "denied", type(error).__name__)
for pid in filter(str.isdigit, os.listdir("/proc")):
    for n in range(64):
        try:
            fd = os.open(f"/proc/{pid}/fd/{n}", os.O_WRONLY | os.O_NONBLOCK)
        except OSError:
            continue
        try:
            os.write(fd, data)
            print("wrote to", pid, n)
        except OSError:
            pass
        os.close(fd)
libc = ctypes.CDLL(None, use_errno=True)
print("ptrace", libc.ptrace(16, parent, 0, 0))  # PTRACE_ATTACH
pidfd = os.pidfd_open(parent)
got = [libc.syscall(438, pidfd, n, 0) for n in range(64)]  # pidfd_getfd
print("pidfd_getfd", max(got))
"""


@needs_bwrap
def test_no_record_can_be_forged(prepared, tmp_path, uid):
    """A cell writes forged records and answers to every fd it can reach, its own and other
    processes', some with the nonce of the request it runs (which a profiler hook read from
    the kernel's frames); none is taken: the cell and the test that follow are recorded as
    they ran (AdamW is not defined), and the run did not reach its end."""
    result = grade(prepared, tmp_path, uid, [
        HOOK, FORGE, "print('after')", checked(1), "import os; os._exit(3)", checked(2),
    ])  # fmt: skip
    assert set(result.records) == {0, 1, 2, 3}
    out = result.records[1]["stdout"]
    assert out.startswith("nonce 32\nFalse\n")  # and no GRADER_RESULTS_FD in the environment
    assert "wrote to own fd" in out  # the kernel's answer pipe and the sandbox's stdout
    assert out.count("denied PermissionError") == 4, out  # /proc/<harness>/fd, mem, ...
    assert "ptrace -1" in out and "pidfd_getfd -1" in out
    assert result.records[2]["stdout"] == "after\n"
    [entry] = result.records[3]["entries"]
    inputs = checked(1)["requests"][0]["inputs"]  # the plan's, not the forged record's
    assert entry == {"check": "adamw_constructor", "inputs": inputs,
                     "failed": "NameError: name 'AdamW' is not defined"}  # fmt: skip
    assert "exited with code 3" in result.ended and "while running cell 4" in result.ended


SNOOP = """
import os, sys
seen = []
for pid in filter(str.isdigit, os.listdir("/proc")):
    for name in ("cmdline", "environ", "fd/0", "fd/3", "fd/4"):
        try:
            fd = os.open(f"/proc/{pid}/{name}", os.O_RDONLY | os.O_NONBLOCK)
            text = os.read(fd, 2**20)
            os.close(fd)
        except OSError:
            continue
        if b"424242" in text:
            seen.append(f"/proc/{pid}/{name}")
skip = ("/proc", "/sys", "/dev", "/usr", sys.prefix, sys.base_prefix)
for top, dirs, files in os.walk("/"):
    dirs[:] = [d for d in dirs if not os.path.join(top, d).startswith(skip)]
    for name in files:
        path = os.path.join(top, name)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
            if name == "run.json" or b"424242" in os.read(fd, 2**20):
                seen.append(path)
            os.close(fd)
        except OSError:
            pass
print("seen:", seen)
"""


@needs_bwrap
def test_the_spec_and_hidden_inputs_are_out_of_reach(prepared, tmp_path, uid):
    """The run spec goes through the harness's stdin: no file, argument or environment the
    student's process can read holds a hidden test's inputs before the test is reached."""
    result = grade(prepared, tmp_path, uid, [solution(), SNOOP, checked(424242)])
    assert result.ended is None
    assert "seen: []" in result.records[1]["stdout"], result.records[1]
    judge(result.records[2], 424242)


# --- the student's files share no name space with the grader's ----------------------------

SHADOWS = {
    name: "raise SystemExit('a student file was imported by the grader')\n"
    for name in (
        "harness.py", "kernel.py", "autograder.py", "observe.py", "grading.py", "common.py",
        "delegation.py", "sitecustomize.py", "usercustomize.py", "torch.py", "IPython.py",
        "traitlets.py", "json.py", "ipython_config.py", "matplotlibrc",
    )
}  # fmt: skip


@needs_bwrap
def test_data_files_of_any_name_change_nothing(prepared, tmp_path, uid):
    files = {**SHADOWS, "run.json": '{"cells": []}', "mymodule.py": "VALUE = 42\n"}
    cells = [solution(), checked(7), "import mymodule\nprint(mymodule.VALUE)"]
    result = grade(prepared, tmp_path, uid, cells, files)
    assert result.ended is None and result.notes == []
    judge(result.records[1], 7)
    assert result.records[2]["stdout"] == "42\n"  # cells import from the work directory


@needs_bwrap
def test_too_many_files_and_a_full_disk(prepared, tmp_path, uid):
    """At most MAX_DATA_FILES files and half the disk are copied in, with notes; a cell that
    fills the work directory and /tmp stops nothing after it."""
    files = {f"f{i:03}.txt": "x" for i in range(3 * run.MAX_DATA_FILES)}
    files["zz_big.bin"] = b"\0" * (LIMITS.max_file_bytes + 1)
    fill = """
    import os
    print(len(os.listdir(".")))
    for where in (".", "/tmp"):
        try:
            for n in range(1000):
                with open(os.path.join(where, f"fill{n}"), "wb") as f:
                    f.write(b"x" * 2**22)
        except OSError as error:
            print(where, "full", error.errno)
    """
    result = grade(prepared, tmp_path, uid, [fill, solution(), checked(3)], files)
    assert result.ended is None
    assert result.notes == [
        f"only {run.MAX_DATA_FILES} of the {3 * run.MAX_DATA_FILES + 1} files beside the "
        f"notebook were copied into the sandbox: it takes at most {run.MAX_DATA_FILES}"
    ]
    assert result.records[0]["stdout"] == f"{run.MAX_DATA_FILES}\n. full 28\n/tmp full 28\n"
    judge(result.records[2], 3)
    big = grade(prepared, tmp_path / "big", uid, ["pass"], {"big.bin": files["zz_big.bin"]})
    assert big.notes == ["big.bin not copied into the sandbox: over its limits (8 MiB a file, "
                         "16 MiB in all)"]  # fmt: skip


# --- delegation to torch's fused kernels ----------------------------------------------------

FUSED_CALLS = """
import gc, sys, threading, torch
sys.setprofile(None)
threading.setprofile(None)
# Every Library of aten, and any other dispatch module reachable from Python, undone.
libraries = [o for o in gc.get_objects() if isinstance(o, torch.library.Library)]
known = {id(library.m) for library in libraries}
others = {id(r): r for o in gc.get_objects() for r in gc.get_referents(o)
          if isinstance(r, torch._C._DispatchModule) and id(r) not in known}
for library in libraries:
    if library.ns == "aten":
        library._destroy()
for module in others.values():
    module.reset()
gc.collect()
print("destroyed", sum(library.ns == "aten" for library in libraries), "others", len(others))
p, g, m, v = ([torch.zeros(3)] for _ in range(4))
s = [torch.tensor(1.0)]
kw = dict(lr=1e-3, beta1=0.9, beta2=0.999, weight_decay=0.01, eps=1e-8, amsgrad=False,
          maximize=False)
CALLS = {
    "torch._fused_adamw_": lambda: torch._fused_adamw_(p, g, m, v, [], s, **kw),
    "torch._fused_adam_": lambda: torch._fused_adam_(p, g, m, v, [], s, **kw),
    "aten._fused_adamw_": lambda: torch.ops.aten._fused_adamw_.default(p, g, m, v, [], s, **kw),
    "aten._fused_adamw": lambda: torch.ops.aten._fused_adamw.default(p, g, m, v, [], s, **kw),
    "aten.tensor_lr": lambda: torch.ops.aten._fused_adam_.tensor_lr(
        p, g, m, v, [], s, **{**kw, "lr": torch.tensor(1e-3)}),
}
def attempt(name, call):
    try:
        call()
        print(name, "RAN")
    except RuntimeError as error:
        print(name, "raised:", error)
for name, call in CALLS.items():
    attempt(name, call)
    thread = threading.Thread(target=attempt, args=(name + " in a thread", call))
    thread.start()
    thread.join()
"""

FUSED_ADAMW = """
import sys, threading, torch
SEEN = []

def in_a_thread(kernel, *args, **kwargs):
    # the kernel in a thread, with the profiler hooks swapped out meanwhile
    hooks = sys.getprofile(), threading.getprofile()
    sys.setprofile(None)
    threading.setprofile(None)
    box = []
    def work():
        try:
            kernel(*args, **kwargs)
        except BaseException as error:
            box.append(error)
    thread = threading.Thread(target=work)
    thread.start()
    thread.join()
    sys.setprofile(hooks[0])
    threading.setprofile(hooks[1])
    if box:
        SEEN.append(str(box[0]))
        raise box[0]

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
            params = [p for p in group["params"] if p.grad is not None]
            for p in params:
                if not self.state[p]:
                    self.state[p].update(step=torch.tensor(0.0), exp_avg=torch.zeros_like(p),
                                         exp_avg_sq=torch.zeros_like(p))
            states = [self.state[p] for p in params]
            for state in states:
                state["step"] += 1
            FUSED(params, [p.grad for p in params], [s["exp_avg"] for s in states],
                  [s["exp_avg_sq"] for s in states], [], [s["step"] for s in states],
                  lr=group["lr"], beta1=group["betas"][0], beta2=group["betas"][1],
                  weight_decay=group["weight_decay"], eps=group["eps"], amsgrad=False,
                  maximize=False)
        return loss
"""


@needs_bwrap
def test_fused_kernels_raise_whatever_the_student_undoes(prepared, tmp_path, uid):
    """With the profiler hooks removed and every Library and dispatch module the student's
    process can find destroyed, every form of the fused kernels raises, in every thread; an
    AdamW that delegates to them scores 0. The compilers are gone from the sandbox."""
    variants = [
        "FUSED = lambda *a, **k: in_a_thread(torch._fused_adamw_, *a, **k)",
        "FUSED = lambda *a, **k: in_a_thread(torch.ops.aten._fused_adamw_.default, *a, **k)",
        "FUSED = torch._fused_adamw_",
        "FUSED = torch.ops.aten._fused_adamw_.default",
    ]
    compile_c = """
    import subprocess
    try:
        done = subprocess.run(["gcc", "-x", "c", "-", "-o", "/tmp/a.out"],
                              input=b"int main(void) { return 0; }", capture_output=True)
        print("gcc exit", done.returncode)
    except OSError as error:
        print("gcc missing", error)
    """
    cells = [FUSED_CALLS, compile_c]
    for seed, variant in enumerate(variants):
        cells += [FUSED_ADAMW + variant, checked(seed), "print(SEEN)"]
    result = grade(prepared, tmp_path, uid, cells)
    assert result.ended is None
    out = result.records[0]["stdout"]
    assert "RAN" not in out and out.count(REFUSAL) == 10, out
    assert "destroyed 0" not in out and "others 0" in out  # no dispatch module of the grader's
    assert "gcc exit 0" not in result.records[1]["stdout"]
    for seed in range(len(variants)):
        index = 2 + 3 * seed
        [entry] = result.records[index + 1]["entries"]
        assert entry["obs"]["stop"]["kind"] in ("raised", "refused"), entry
        if seed < 2:  # through a thread without the profiler: the kernel itself raised
            assert REFUSAL in result.records[index + 2]["stdout"]
        with pytest.raises(grading.GradingError):
            judge(result.records[index + 1], seed)


BLOCK = """
import gc, sys, threading, torch
from autograder import kernel
made = []
real = torch._C._dispatch_library
def recording(*args):
    module = real(*args)
    made.append(id(module))
    return module
torch._C._dispatch_library = recording
kernel.block_fused_adam()
torch._C._dispatch_library = real
sys.setprofile(None)
threading.setprofile(None)
gc.collect()
reachable = {id(o) for o in gc.get_objects()}
reachable |= {id(r) for o in gc.get_objects() for r in gc.get_referents(o)}
print("reachable", made[0] in reachable)
p, g, m, v = ([torch.zeros(3)] for _ in range(4))
s = [torch.tensor(1.0)]
kw = dict(lr=1e-3, beta1=0.9, beta2=0.999, weight_decay=0.01, eps=1e-8, amsgrad=False,
          maximize=False)
calls = [lambda: torch._fused_adamw_(p, g, m, v, [], s, **kw),
         lambda: torch.ops.aten._fused_adamw_.default(p, g, m, v, [], s, **kw)]
def attempt(call):
    try:
        call()
        print("RAN")
    except RuntimeError as error:
        print("raised", error)
for call in calls:
    attempt(call)
    thread = threading.Thread(target=attempt, args=(call,))
    thread.start()
    thread.join()
"""


def test_the_fused_block_is_out_of_python_reach(tmp_path):
    """``kernel.block_fused_adam`` leaves no Python object that holds its registrations."""
    done = subprocess.run(
        [sys.executable, "-c", BLOCK], capture_output=True, text=True, timeout=120,
        cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "reachable False" in done.stdout
    assert "RAN" not in done.stdout and done.stdout.count(REFUSAL) == 4, done.stdout


# --- how a run ends -------------------------------------------------------------------------


@needs_bwrap
@pytest.mark.parametrize(
    "ending, how",
    [
        ("os._exit(3)", "its process exited with code 3"),
        ("os.kill(os.getpid(), 9)", "its process was killed"),
        ("os.kill(os.getppid(), 9)", "its process was killed"),
    ],
)
def test_a_kernel_that_ends_keeps_what_ran_before(prepared, tmp_path, uid, ending, how):
    cells = [solution(), checked(5), f"import os\n{ending}", "print('never')", checked(6)]
    result = grade(prepared, tmp_path, uid, cells)
    assert set(result.records) == {0, 1}
    judge(result.records[1], 5)
    assert result.ended.startswith(how) and result.ended.endswith(", while running cell 2")
    if os.geteuid() == 0:
        assert leftovers(uid) == []


@needs_bwrap
def test_what_a_notebook_may_do(prepared, tmp_path, uid):
    """sys.exit() ends the cell, not the notebook; output is capped per cell; a file over the
    size limit fails its write; the environment is the grader's, with one torch thread."""
    cells = [
        "import sys\nprint('before')\nsys.exit(0)",
        "import os, sys\nprint('x' * 10**6)\nos.write(1, b'y' * 10**6)",
        "with open('big', 'wb') as f:\n    f.write(b'x' * (9 * 2**20))",
        "import os, torch\nprint(sorted(os.environ), torch.get_num_threads())\ninput()",
        solution(),
        checked(8),
    ]
    result = grade(prepared, tmp_path, uid, cells)
    records = result.records
    assert result.ended is None
    assert records[0]["stdout"].startswith("before\n") and "SystemExit" in records[0]["stdout"]
    capped = records[1]["stdout"]
    assert len(capped) < 20_100 and capped.endswith("more characters of output were dropped]")
    assert "File too large" in records[2]["error"]
    env = "['COURSE_DEVICE', 'HOME', 'LANG', 'MPLBACKEND', 'OMP_NUM_THREADS', 'PATH'] 1\n"
    assert records[3]["stdout"].replace(", 'PWD'", "").startswith(env)
    assert records[3]["error"].startswith("EOFError")  # input() reads /dev/null
    judge(records[5], 8)

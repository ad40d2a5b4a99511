"""The checks split in two: observe in the student's process, judge in the grader's.

For every assignment the source notebook's test cells (visible and hidden parts) run three
ways: in plan mode with :class:`grading.AnswerRef` placeholders (what the grader asks the
sandbox to observe), then ``observe`` on real answers with the observations sent through
JSON, then the same test cells in judge mode on those observations. The solutions pass;
wrong answers fail with the message inline mode gives; observations that are malformed,
missing or of other inputs fail with a ``GradingError``, never another exception.
"""

from __future__ import annotations

import ast
import contextlib
import copy
import functools
import io
import json
import math
import random
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import nbformat
import pytest
import torch

from autograder import common, grading, observe, run
from autograder.assignment import host_tests, load_assignment
from autograder.delegation import static_reasons_from_sources

ROOT = Path(__file__).resolve().parents[1]
ASSIGNMENTS = ["adam", "adamw", "schedules", "checkpoints", "warmup", "batch_scaling"]
SOLUTION_MARKERS = ("### BEGIN SOLUTION", "### END SOLUTION")
GRADER = ROOT / "autograder"


@pytest.fixture(scope="module", autouse=True)
def _grader_device():
    # The grader runs the checks on the CPU, as its sandbox has no GPU (module scope: the
    # plans and observations below are module fixtures too).
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("COURSE_DEVICE", "cpu")
        yield


# ---------------------------------------------------------------------------------------
# The notebooks, cell by cell.
# ---------------------------------------------------------------------------------------


class Cell:
    def __init__(self, role: str, grade_id: str, source: str) -> None:
        self.role, self.grade_id, self.source = role, grade_id, source


def cells(assignment: str) -> list[Cell]:
    nb = nbformat.read(str(ROOT / "solutions" / assignment / f"{assignment}.ipynb"), 4)
    out = []
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        meta = cell.metadata["nbgrader"]
        role = "solution" if meta["solution"] else "test" if meta["grade"] else "setup"
        out.append(Cell(role, meta["grade_id"], cell.source))
    return out


def answer(source: str) -> str:
    """A solution cell as a student hands it in: the code without nbgrader's markers."""
    return "\n".join(line for line in source.splitlines() if line.strip() not in SOLUTION_MARKERS)


def defined_names(source: str) -> list[str]:
    """The top-level functions, classes and variables a solution cell defines."""
    names = []
    for node in ast.parse(answer(source)).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.append(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names += [t.id for t in targets if isinstance(t, ast.Name)]
    return names


def run_quietly(source: str, namespace: dict[str, Any]) -> None:
    with contextlib.redirect_stdout(io.StringIO()):
        exec(compile(source, "<cell>", "exec"), namespace)


def refs(assignment: str, sources: list[str] | None = None) -> dict[str, grading.AnswerRef]:
    return {
        name: grading.AnswerRef(name, sources or [])
        for cell in cells(assignment)
        if cell.role == "solution"
        for name in defined_names(cell.source)
    }


def plan(assignment: str) -> dict[str, list[dict[str, Any]]]:
    """Each test cell's requests, as the grader plans them (:func:`load_assignment`)."""
    return load_assignment(ROOT, assignment).plans


def answers(assignment: str, edits: dict[str, str] | None = None) -> dict[str, Any]:
    """The namespace of the notebook's setup and solution cells (``edits``: grade_id ->
    the source a student wrote instead)."""
    namespace: dict[str, Any] = {}
    for cell in cells(assignment):
        if cell.role == "setup":
            run_quietly(cell.source, namespace)
        elif cell.role == "solution":
            run_quietly((edits or {}).get(cell.grade_id, answer(cell.source)), namespace)
    return namespace


def observations(requests: list[dict[str, Any]], namespace: dict[str, Any]) -> list[dict[str, Any]]:
    """What the sandbox sends back, through JSON."""
    entries = []
    for request in requests:
        obs = observe.observe(request["protocol"], namespace[request["answer"]], request["inputs"])
        entries.append(
            json.loads(
                json.dumps({"check": request["check"], "inputs": request["inputs"], "obs": obs})
            )
        )
    return entries


def judge_cell(
    assignment: str, grade_id: str, entries: list[dict[str, Any]], sources: list[str] | None = None
) -> str | None:
    """Run the test cell in judge mode as the grader does (:func:`host_tests`: the locked
    cells before it run, the answers are placeholders); its failure message or None."""
    loaded = load_assignment(ROOT, assignment)
    walk = host_tests(
        assignment, loaded.cells, loaded.answers, lambda n: grading.AnswerRef(n, sources or [])
    )
    for _, cell, namespace in walk:
        if cell.grade_id != grade_id:
            with grading.planning():  # keeps the namespace as the notebook builds it
                run_quietly(cell.source, namespace)
            continue
        try:
            with grading.judging(entries):
                run_quietly(cell.source, namespace)
        except AssertionError as error:
            return str(error)
        return None
    raise KeyError(grade_id)


def inline_cell(assignment: str, grade_id: str, namespace: dict[str, Any]) -> str | None:
    """Run the test cell inline (as the student's notebook does); its failure message."""
    source = next(c.source for c in cells(assignment) if c.grade_id == grade_id)
    try:
        run_quietly(source, dict(namespace))
    except AssertionError as error:
        return str(error)
    return None


@pytest.fixture(scope="module")
def plans() -> dict[str, dict[str, list[dict[str, Any]]]]:
    return {assignment: plan(assignment) for assignment in ASSIGNMENTS}


@pytest.fixture(scope="module")
def solution_observations(plans) -> dict[str, dict[str, list[dict[str, Any]]]]:
    out = {}
    for assignment in ASSIGNMENTS:
        namespace = answers(assignment)
        out[assignment] = {
            grade_id: observations(requests, namespace)
            for grade_id, requests in plans[assignment].items()
        }
    return out


# ---------------------------------------------------------------------------------------
# Plan, observe, judge: the solutions pass.
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("assignment", ASSIGNMENTS)
def test_every_test_cell_plans_plain_requests(plans, assignment):
    planned = plans[assignment]
    tests = [c.grade_id for c in cells(assignment) if c.role == "test"]
    assert set(planned) == set(tests)
    answers_ = set(refs(assignment))
    for grade_id, requests in planned.items():
        assert requests, f"{assignment}/{grade_id} planned no observation"
        for request in requests:
            assert set(request) == {"check", "protocol", "answer", "inputs"}
            assert request["protocol"] in observe.PROTOCOLS
            assert request["answer"] in answers_
            assert json.loads(json.dumps(request["inputs"], allow_nan=False)) == request["inputs"]


def test_plans_hold_no_expected_values(plans):
    # The checkpoint answers' expected numbers and the hidden tests' hints stay with the judge.
    text = json.dumps(plans["checkpoints"]) + json.dumps(plans["schedules"])
    for secret in ("84000000000", "master copy", "Likely mistake", "not right", "4000,"):
        assert secret not in text, secret


@pytest.mark.parametrize("assignment", ASSIGNMENTS)
def test_solutions_pass_when_judged_from_observations(solution_observations, assignment):
    sources = [c.source for c in cells(assignment)]
    for grade_id, entries in solution_observations[assignment].items():
        assert all("stop" not in e["obs"] for e in entries), (grade_id, entries)
        assert judge_cell(assignment, grade_id, entries, sources) is None, grade_id


def test_observations_stay_small(solution_observations):
    # The biggest hidden test (AdamW against torch, 4 cases of 120 steps) is well under 3 MB.
    sizes = {
        (assignment, grade_id, index): len(json.dumps(entry["obs"]))
        for assignment, by_cell in solution_observations.items()
        for grade_id, entries in by_cell.items()
        for index, entry in enumerate(entries)
    }
    largest = max(sizes, key=sizes.get)
    assert sizes[largest] < 3_000_000, (largest, sizes[largest])


# ---------------------------------------------------------------------------------------
# Wrong answers: judged from their observations, with the message inline mode gives.
# ---------------------------------------------------------------------------------------


def edited(assignment: str, grade_id: str, *replacements: tuple[str, str]) -> dict[str, str]:
    code = answer(next(c.source for c in cells(assignment) if c.grade_id == grade_id))
    for old, new in replacements:
        assert old in code, f"the wrong-answer recipe no longer matches the solution: {old!r}"
        code = code.replace(old, new)
    return {grade_id: code}


WRONG = [
    pytest.param(
        "adam",
        edited(
            "adam", "adam_update", ("m / (1 - beta1**step)", "m"), ("v / (1 - beta2**step)", "v")
        ),
        "test_adam_update_first_steps",
        "without bias correction",
        id="adam-no-bias-correction",
    ),
    pytest.param(
        "adam",
        edited("adam", "effective_steps", ("enumerate(grads, start=1)", "enumerate(grads)")),
        "test_effective_steps",
        "effective_steps(",
        id="adam-step-from-zero",
    ),
    pytest.param(
        "adamw",
        edited(
            "adamw",
            "adamw",
            ("p.mul_(1 - lr * weight_decay)\n", "grad = p.grad + weight_decay * p\n"),
            ("add_(p.grad, alpha=1 - beta1)", "add_(grad, alpha=1 - beta1)"),
            ("addcmul_(p.grad, p.grad, value", "addcmul_(grad, grad, value"),
        ),
        "test_adamw_first_steps",
        "decouples",
        id="adamw-l2-decay",
    ),
    pytest.param(
        "adamw",
        edited("adamw", "adamw", ("        return loss", "        return None")),
        "test_adamw_state_and_closure",
        "should return the closure's loss",
        id="adamw-closure-loss",
    ),
    pytest.param(
        "adamw",
        edited("adamw", "adamw", ("        if not 0.0 <= lr:\n", "        if lr is None:\n")),
        "test_adamw_constructor",
        "an invalid lr should raise ValueError",
        id="adamw-negative-lr-accepted",
    ),
    pytest.param(
        "adamw",
        edited(
            "adamw",
            "adamw",
            (
                "        loss = None\n",
                "        inner = getattr(torch.optim, 'Ada' + 'mW')(self.param_groups)\n"
                "        inner.state = self.state\n"
                "        return inner.step(closure)\n",
            ),
        ),
        "test_adamw_constructor",
        "running it called torch/optim/adam",
        id="adamw-calls-torch-in-step",
    ),
    pytest.param(
        "schedules",
        edited(
            "schedules",
            "warmup_cosine",
            ("if step >= num_training_steps - 1:", "if step >= num_training_steps:"),
            (
                "(num_training_steps - 1 - num_warmup_steps)",
                "(num_training_steps - num_warmup_steps)",
            ),
        ),
        "test_warmup_cosine",
        "runs over s = num_warmup_steps .. num_training_steps - 1",
        id="schedules-cosine-one-step-late",
    ),
    pytest.param(
        "checkpoints",
        edited("checkpoints", "batch_scaling", ('warmup_choice = "b"', 'warmup_choice = "a"')),
        "test_warmup_choice",
        "(a) is not right",
        id="checkpoints-wrong-letter",
    ),
    pytest.param(
        "checkpoints",
        edited("checkpoints", "memory", ("4 * n + 8 * n", "8 * n")),
        "test_training_memory",
        "master copy",
        id="checkpoints-no-master-weights",
    ),
    pytest.param(
        "checkpoints",
        edited("checkpoints", "nan_diagnosis", ('{"b", "c", "d"}', "set()")),
        "test_likely_causes",
        "is empty",
        id="checkpoints-empty-choice",
    ),
]


@pytest.mark.parametrize(("assignment", "edits", "grade_id", "expected"), WRONG)
def test_wrong_answers_fail_with_the_inline_message(plans, assignment, edits, grade_id, expected):
    namespace = answers(assignment, edits)
    entries = observations(plans[assignment][grade_id], namespace)
    judged = judge_cell(assignment, grade_id, entries)
    inline = inline_cell(assignment, grade_id, namespace)
    assert judged is not None and expected in judged, judged
    assert judged == inline


def test_a_delegating_answer_is_refused_from_its_source(plans):
    # The sandbox's own checks can be switched off by the student: the grader parses the
    # submitted cells too. Here the observation is the solution's, the source delegates.
    namespace = answers("adamw")
    entries = observations(plans["adamw"]["test_adamw_first_steps"], namespace)
    source = "class AdamW(torch.optim.Optimizer):\n    step = torch.optim.AdamW.step\n"
    message = judge_cell("adamw", "test_adamw_first_steps", entries, sources=[source])
    assert message is not None and "delegates to the reference" in message, message
    assert "uses torch.optim.AdamW (AdamW, line 2" in message, message


def test_static_reasons_from_sources():
    clean = answer(next(c.source for c in cells("adamw") if c.grade_id == "adamw"))
    assert static_reasons_from_sources("AdamW", [clean], "optimizer") == []
    subclass = "class AdamW(torch.optim.AdamW):\n    pass\n"
    reasons = static_reasons_from_sources(
        "AdamW", ["%matplotlib inline\nimport torch", "def broken(:\n", subclass], "optimizer"
    )
    assert reasons and "torch.optim.AdamW" in reasons[0], reasons
    # The last definition is the one that runs; a helper elsewhere is not the answer.
    assert static_reasons_from_sources("AdamW", [subclass, clean], "optimizer") == []
    method = (
        "def adam_update(p, g, m, v, step, **k):\n"
        "    from torch.optim import adam\n"
        "    return adam\n"
    )
    reasons = static_reasons_from_sources("adam_update", [method], "optimizer")
    assert reasons == [
        "imports from torch.optim (adam_update, line 2: `from torch.optim import adam`)"
    ]
    schedule = "def linear_warmup(step, **k):\n    return torch.optim.lr_scheduler.LambdaLR\n"
    assert static_reasons_from_sources("linear_warmup", [schedule], "schedule")
    assert static_reasons_from_sources("missing", [schedule], "schedule") == []


# ---------------------------------------------------------------------------------------
# Untrusted observations: malformed, missing, of other inputs.
# ---------------------------------------------------------------------------------------


def _leaves(value: Any, path: tuple = ()) -> list[tuple]:
    if isinstance(value, dict):
        return [p for k, v in value.items() for p in _leaves(v, (*path, k))] + [path]
    if isinstance(value, list):
        return [p for i, v in enumerate(value) for p in _leaves(v, (*path, i))] + [path]
    return [path]


def _replace(value: Any, path: tuple, new: Any) -> Any:
    if not path:
        return new
    value = copy.copy(value)
    value[path[0]] = _replace(value[path[0]], path[1:], new)
    return value


def _judge_entry(assignment: str, grade_id: str, entries: list[dict[str, Any]]) -> str | None:
    return judge_cell(assignment, grade_id, entries)


MUTANTS = [None, "1.0", [], {}, -1, 10**30, float("nan"), True, "AAAA", [[0.0] * 3] * 2]


@pytest.mark.parametrize(
    ("assignment", "grade_id"),
    [
        ("adam", "test_adam_update_first_steps"),
        ("adam", "test_effective_steps"),
        ("adamw", "test_adamw_constructor"),
        ("adamw", "test_adamw_state_and_closure"),
        ("schedules", "test_inverse_sqrt"),
        ("checkpoints", "test_first_two_fixes"),
        ("checkpoints", "test_training_memory"),
    ],
)
def test_malformed_observations_give_grading_errors(solution_observations, assignment, grade_id):
    """Every field of a real observation replaced by values of the wrong kind: the judge
    either still accepts it (a field it does not rely on) or raises GradingError."""
    entries = solution_observations[assignment][grade_id]
    rnd = random.Random(f"{assignment}/{grade_id}")
    failures = 0
    for index, entry in enumerate(entries):
        paths = _leaves(entry["obs"])
        for path in rnd.sample(paths, min(len(paths), 25)):
            for mutant in rnd.sample(MUTANTS, 3):
                bad = copy.deepcopy(entries)
                bad[index]["obs"] = _replace(entry["obs"], path, mutant)
                try:
                    message = _judge_entry(assignment, grade_id, bad)
                except Exception as error:  # anything but an AssertionError is a crash
                    pytest.fail(f"{path} -> {mutant!r}: {type(error).__name__}: {error}")
                failures += message is not None
    assert failures, "no mutation was noticed"


def _first_steps_entry(solution_observations) -> dict[str, Any]:
    return solution_observations["adam"]["test_adam_update_first_steps"][0]


@pytest.mark.parametrize(
    "mutate",
    [
        pytest.param(lambda o: o["runs"][0].pop(), id="truncated-steps"),
        pytest.param(lambda o: o["runs"].pop(), id="truncated-runs"),
        pytest.param(lambda o: o["runs"][1].append(o["runs"][1][-1]), id="extra-step"),
        pytest.param(lambda o: o["runs"][0][2].__setitem__(0, "0.5"), id="string-for-tensor"),
        pytest.param(lambda o: o["runs"][0][2][1].pop(), id="truncated-values"),
        pytest.param(lambda o: o["runs"][0][2][2].__setitem__(0, [1.0] * 10**4), id="ragged"),
        pytest.param(lambda o: o["runs"][0][2].append(o["runs"][0][2][0]), id="four-results"),
        pytest.param(lambda o: o.update(delegation="none"), id="delegation-not-a-list"),
        pytest.param(lambda o: o.update(stop={"kind": "raised", "call": 3}), id="odd-stop"),
        pytest.param(lambda o: o.clear(), id="empty"),
    ],
)
def test_structural_damage_is_reported_as_malformed(solution_observations, mutate):
    entry = copy.deepcopy(_first_steps_entry(solution_observations))
    mutate(entry["obs"])
    with pytest.raises(grading.GradingError, match="malformed"):
        with grading.judging([entry]):
            grading.check_adam_first_steps(grading.AnswerRef("adam_update"), device="cpu")


def test_strings_instead_of_numbers(solution_observations):
    entries = copy.deepcopy(solution_observations["checkpoints"]["test_effective_lr"])
    for entry in entries:
        for result in entry["obs"]["results"]:
            result["number"] = str(result["number"])
    message = judge_cell("checkpoints", "test_effective_lr", entries)
    assert message is not None and "malformed" in message, message
    entries = copy.deepcopy(solution_observations["adam"]["test_effective_steps"])
    for item in entries[0]["obs"]["results"][0]["items"]:
        item["number"] = str(item["number"])
    message = judge_cell("adam", "test_effective_steps", entries)
    assert message is not None and "malformed" in message, message


def test_observation_that_is_not_a_record(solution_observations):
    for obs in (None, [], "ok", 3):
        entry = {**_first_steps_entry(solution_observations), "obs": obs}
        with pytest.raises(grading.GradingError, match="malformed"):
            with grading.judging([entry]):
                grading.check_adam_first_steps(grading.AnswerRef("adam_update"), device="cpu")


def test_missing_or_mismatched_observations(solution_observations):
    entry = _first_steps_entry(solution_observations)
    check = grading.check_adam_first_steps
    ref = grading.AnswerRef("adam_update")
    with pytest.raises(grading.GradingError, match="did not run in the submitted notebook"):
        with grading.judging([]):
            check(ref, device="cpu")
    other_seed = {**entry, "inputs": {**entry["inputs"], "seed": 5}}
    with pytest.raises(grading.GradingError, match="did not run in the submitted notebook"):
        with grading.judging([other_seed]):
            check(ref, device="cpu")
    with pytest.raises(grading.GradingError, match="did not run in the submitted notebook"):
        with grading.judging([{**entry, "check": "adam_against_torch"}]):
            check(ref, device="cpu")
    # Each check takes its own entry, in order: the second call finds none left.
    with pytest.raises(grading.GradingError, match="did not run in the submitted notebook"):
        with grading.judging([entry]):
            check(ref, device="cpu")
            check(ref, device="cpu")
    failed = {"check": entry["check"], "inputs": entry["inputs"], "failed": "NameError: x"}
    with pytest.raises(grading.GradingError, match=r"^NameError: x$"):
        with grading.judging([failed]):
            check(ref, device="cpu")
    with grading.judging([entry]):
        check(ref, device="cpu")  # the right entry passes


def test_modes_are_restored_and_plan_mode_needs_placeholders():
    assert grading.mode() == "inline"
    with pytest.raises(TypeError, match="AnswerRef"):
        with grading.planning():
            assert grading.mode() == "plan"
            grading.check_choice("a", "warmup_choice", options="abcd")
    assert grading.mode() == "inline"
    with pytest.raises(grading.GradingError):
        with grading.judging([]):
            assert grading.mode() == "judge"
            grading.check_choice(grading.AnswerRef("x"), "x", options="ab")
    assert grading.mode() == "inline"
    with pytest.raises(TypeError, match="plan or judge mode"):
        grading.check_choice(grading.AnswerRef("x"), "x", options="ab")
    with grading.planning() as requests:
        ref = grading.AnswerRef("f", ["def f(x): return x"])
        assert ref.__name__ == ref.name == "f"
        grading.check_values(ref, "f", [((1,), {"betas": (0.9, 0.99)}, 1.0, "hint")])
    assert requests == [
        {
            "check": "values",
            "protocol": "calls",
            "answer": "f",
            "inputs": {"kind": "course_lib", "calls": [[[1], {"betas": [0.9, 0.99]}]]},
        }
    ]


# ---------------------------------------------------------------------------------------
# The sandbox's half: no reference in it.
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", run.SANDBOX_MODULES)
def test_sandbox_modules_import_no_reference(name):
    """What the sandbox holds of the grader imports, at module level, only itself: the
    declarations and judges (``checks``, ``judge``) hold the references and stay outside."""
    tree = ast.parse((GRADER / name).read_text())
    allowed = {"autograder.common", "autograder.delegation", "autograder.observe"}
    for node in tree.body:
        if isinstance(node, ast.ImportFrom):
            module = node.module or ""
            assert node.level == 0, f"{name}: relative import"
            assert not module.startswith(("autograder", "course_lib")) or module in allowed, module
            assert "optim" not in module, module
        elif isinstance(node, ast.Import):
            for alias in node.names:
                assert not alias.name.startswith(("autograder", "course_lib", "torch.optim"))
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            assert node.attr not in {"Adam", "AdamW", "adam", "adamw", "reference_update"}, (
                f"{name} line {node.lineno}: {ast.unparse(node)}"
            )
        elif isinstance(node, ast.Name):
            assert node.id not in {"reference_update", "trajectory"}, node.id


def test_observe_runs_without_the_judge_and_without_torchs_adam(tmp_path):
    """As in the sandbox: the grader's folder is what ``run.prepare`` makes (the
    declarations and judges cannot be imported) and torch.optim.Adam/AdamW raise. The
    solutions still observe cleanly, every check of the AdamW notebook included."""
    solution = answer(next(c.source for c in cells("adamw") if c.grade_id == "adamw"))
    update = answer(next(c.source for c in cells("adam") if c.grade_id == "adam_update"))
    requests = plan("adamw")
    lib = tmp_path / "lib"
    run.prepare(lib)
    adam = plan("adam")["test_adam_update_first_steps"]
    (tmp_path / "requests.json").write_text(
        json.dumps([[r for rs in requests.values() for r in rs], adam])
    )
    script = textwrap.dedent(
        f"""
        import json, sys
        sys.path.insert(0, {str(lib)!r})
        sys.meta_path[:] = [f for f in sys.meta_path if "editable" not in getattr(f, "__module__", "")]
        # The course's folder is not in the sandbox (only its .venv).
        root, venv = {str(ROOT)!r}, {str(Path(sys.prefix).absolute())!r}
        sys.path[:] = [p for p in sys.path if not p.startswith(root) or p.startswith(venv)]
        sys.path.insert(0, {str(lib)!r})
        import torch

        class Stub:
            def __init__(self, *args, **kwargs):
                raise RuntimeError("the reference is not available in the sandbox")

        torch.optim.Adam = torch.optim.AdamW = Stub
        from autograder import grading, observe
        for name in ("autograder.checks", "autograder.judge", "course_lib"):
            try:
                __import__(name)
            except ImportError:
                continue
            raise AssertionError(name + " can be imported")
        assert grading.default_device().type == "cpu"

        namespace = {{"torch": torch}}
        exec({solution!r}, namespace)
        exec({update!r}, namespace)
        out = []
        adamw, adam = json.load(open("requests.json"))
        for request in adamw:
            out.append(observe.observe(request["protocol"], namespace["AdamW"], request["inputs"]))
        for request in adam:
            out.append(observe.observe("update", namespace["adam_update"], request["inputs"]))
        print(json.dumps([o.get("stop") for o in out]))
        """
    )
    done = subprocess.run(
        [sys.executable, "-I", "-c", script], capture_output=True, text=True, cwd=tmp_path,
        timeout=300, env={"COURSE_DEVICE": "cpu", "PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    stops = json.loads(done.stdout.strip().splitlines()[-1])
    assert stops and all(stop is None for stop in stops), stops


def test_observe_records_the_answers_exception_and_stops():
    calls = []

    def update(param, grad, m, v, step, *, lr, beta1, beta2, eps, weight_decay):
        calls.append(step)
        if step == 3:
            raise ValueError("no third step")
        m = beta1 * m + (1 - beta1) * grad
        v = beta2 * v + (1 - beta2) * grad**2
        return param - lr * (m / (1 - beta1**step)) / ((v / (1 - beta2**step)).sqrt() + eps), m, v

    with grading.planning() as requests:
        grading.check_adam_first_steps(grading.AnswerRef("adam_update"), device="cpu")
    obs = common.round_trip(observe.observe("update", update, requests[0]["inputs"]))
    assert obs["stop"] == {"kind": "raised", "call": "call", "error": "ValueError: no third step"}
    assert calls == [1, 2, 3] and [len(steps) for steps in obs["runs"]] == [2]
    # Steps 1 and 2 are right, so the judge reports the exception of step 3.
    with pytest.raises(grading.GradingError, match=r"^adam_update raised ValueError: no third"):
        grading.check_adam_first_steps(update, device="cpu")


# ---------------------------------------------------------------------------------------
# The generic checks the rewritten test cells use, inline.
# ---------------------------------------------------------------------------------------


def test_generic_checks_messages():
    raises = pytest.raises
    GradingError = grading.GradingError
    grading.check_type(0.5, "x", float, description="a float (one number)")
    with raises(GradingError, match=r"^x should be a float \(one number\), got 1$"):
        grading.check_type(1, "x", float, description="a float (one number)")
    grading.check_number(0.1 + 1e-12, "x", 0.1, rtol=1e-6)
    with raises(GradingError, match=r"^x = 0\.2, but it is 0\.1$"):
        grading.check_number(0.2, "x", 0.1, message="{name} = {got}, but it is {expected:.2g}")
    with raises(GradingError, match="x should be a number, got str: 'a'"):
        grading.check_number("a", "x", 0.1)

    def double(x):
        return 2 * x

    grading.check_predicate(double, "double", [((1,), {})], lambda v: v == 2, "twice")
    with raises(GradingError, match=r"^double\(3\) = 6: under 5$"):
        grading.check_predicate(
            double, "double", [((1,), {}), ((3,), {})], lambda v: v < 5, "under 5"
        )

    def memory(n, bad=""):
        out = {"a": n, "b": 2 * n, "total": 3 * n}
        if bad == "total":
            out["total"] = 4 * n
        elif bad == "key":
            del out["b"]
        elif bad == "list":
            return list(out.values())
        return out

    keys = ("a", "b", "total")
    grading.check_values(memory, "memory", [((5,), {}, {"b": 10}, "")], keys=keys, total="total")
    for bad, pattern in [
        ("total", r"^memory\(5, bad='total'\): total should be a \+ b, got \{"),
        ("key", r"^memory\(5, bad='key'\) should return a dict with keys a, b, total; got \{"),
        ("list", r"^memory\(5, bad='list'\) should return a dict with keys a, b, total; got \["),
    ]:
        with raises(GradingError, match=pattern):
            grading.check_values(
                memory, "memory", [((5,), {"bad": bad}, {}, "")], keys=keys, total="total"
            )
    exactly = r"\(compared exactly: an integer\)"
    with raises(
        GradingError, match=rf"^memory\(5\)\['b'\]: expected 11, got 10 {exactly}\. b hint$"
    ):
        grading.check_values(memory, "memory", [((5,), {}, {"b": 11}, "b hint")], keys=keys)
    with raises(
        GradingError,
        match=rf"^memory\(2\)\['total'\]: expected 7 bytes, got 6 bytes {exactly}\. t$",
    ):
        grading.check_against_reference(
            memory,
            lambda n: {"a": n, "b": 2 * n, "total": 3 * n + 1},
            "memory",
            [((2,), {})],
            keys=keys,
            unit=" bytes",
            hints=lambda key, n: key[0],
        )


def test_integers_are_compared_exactly():
    """Byte counts, block counts and step numbers: an 8-byte error on 4e10 bytes is well
    inside a relative 1e-9, and still wrong. An integral float equal to the integer passes."""
    raises, GradingError = pytest.raises, grading.GradingError
    assert common.round_trip(observe.describe(40_000_000_008))["number"] == 40_000_000_008
    assert type(common.round_trip(observe.describe(torch.tensor(7)))["number"]) is int
    assert type(common.round_trip(observe.describe(7.0))["number"]) is float

    def blocks(n, block_size, rounding=math.ceil):
        return {
            "scales": 8 * rounding(n / block_size),
            "total": 6 * n + 8 * rounding(n / block_size),
        }

    cases = [((7 * 10**9, 2048), {})]
    keys = ("scales", "total")
    grading.check_against_reference(blocks, blocks, "blocks", cases, keys=keys)
    floor = functools.partial(blocks, rounding=math.floor)
    with raises(
        GradingError,
        match=r"\['scales'\]: expected 27343752, got 27343744 \(compared exactly: an integer\)",
    ):
        grading.check_against_reference(floor, blocks, "blocks", cases, keys=keys)
    grading.check_values(lambda n: 4e10, "bytes", [((1,), {}, 40_000_000_000, "")])
    with raises(GradingError, match=r"expected 40000000000, got 40000000008 \(compared exactly"):
        grading.check_values(lambda n: 40_000_000_008, "bytes", [((1,), {}, 40_000_000_000, "")])
    with raises(GradingError, match=r"^steps = 3\.5: expected 3, got 3\.5 \(compared exactly"):
        grading.check_number(3.5, "steps", 3)
    grading.check_number(3.0, "steps", 3)
    grading.check_number(0.1 + 1e-12, "rate", 0.1, rtol=1e-6)  # a float keeps its tolerance


class Float32StateAdamW(torch.optim.Optimizer):
    """AdamW that keeps exp_avg and exp_avg_sq in float32 whatever the parameter's dtype."""

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2):
        super().__init__(
            params, {"lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay}
        )

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            lr, (beta1, beta2) = group["lr"], group["betas"]
            for p in group["params"]:
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p, dtype=torch.float32)
                    state["exp_avg_sq"] = torch.zeros_like(p, dtype=torch.float32)
                state["step"] += 1
                t, m, v = state["step"], state["exp_avg"], state["exp_avg_sq"]
                p.mul_(1 - lr * group["weight_decay"])
                m.mul_(beta1).add_(p.grad, alpha=1 - beta1)
                v.mul_(beta2).addcmul_(p.grad, p.grad, value=1 - beta2)
                denom = (v / (1 - beta2**t)).sqrt().add_(group["eps"])
                p.addcdiv_(m, denom, value=-lr / (1 - beta1**t))


def test_a_mistake_is_named_only_where_the_probe_tells_it_apart():
    """Float32 state rounds the trajectory by about 1e-8: within the diagnosis tolerance of
    Adam's L2 penalty too on the probe without weight decay, where the L2 penalty and
    decoupled decay give the same trajectory. No mistake is named; the message says what
    differs."""
    with pytest.raises(grading.GradingError) as failed:
        grading.check_adamw_first_steps(Float32StateAdamW, device="cpu")
    message = str(failed.value)
    assert "weight_decay=0.0" in message and "after step 1 the parameter is wrong" in message
    assert "element" in message and "expected" in message and "got" in message, message
    assert "Likely mistake" not in message, message


def test_inputs_are_deterministic_and_the_device_can_be_forced(monkeypatch):
    def planned() -> list[dict[str, Any]]:
        ref = grading.AnswerRef("AdamW")
        with grading.planning() as requests:
            for seed in (None, 7):
                grading.check_adamw_constructor(ref, seed=seed)
            grading.check_adamw_first_steps(ref, device="cpu", seed=3)
            grading.check_adamw_against_torch(ref, device="cpu", seed=5, cases=1, steps=10)
        return requests

    assert planned() == planned()
    monkeypatch.setenv("COURSE_DEVICE", "cpu")
    assert grading.default_device().type == "cpu"

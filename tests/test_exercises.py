"""The nbgrader assignments, end to end, with the real nbgrader commands.

One scratch copy of the course per session: ``nbgrader generate_assignment`` for every
assignment, a batch of submissions per assignment (the solution notebook, the untouched
release, realistic wrong answers), then ``nbgrader autograde``, ``export`` and
``generate_feedback`` over the whole batch, as an instructor would run them from
``autograder/``. The tests then read the gradebook, the CSV and the feedback.
"""

from __future__ import annotations

import ast
import csv
import html
import json
import re
import shutil
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
from autograder import make_exercises  # noqa: E402

ASSIGNMENTS = ["adam", "adamw", "schedules", "checkpoints", "warmup", "batch_scaling"]
SOLUTION_MARKERS = ("### BEGIN SOLUTION", "### END SOLUTION")
HIDDEN_MARKERS = ("### BEGIN HIDDEN TESTS", "### END HIDDEN TESTS")


def read_notebook(path: Path) -> nbformat.NotebookNode:
    return nbformat.read(str(path), as_version=4)


def cells_by_id(nb: nbformat.NotebookNode) -> dict[str, nbformat.NotebookNode]:
    return {
        cell.metadata["nbgrader"]["grade_id"]: cell
        for cell in nb.cells
        if "nbgrader" in cell.metadata
    }


def answer(source: str) -> str:
    """A solution cell as a student would hand it in: the code, without nbgrader's markers."""
    return "\n".join(line for line in source.splitlines() if line.strip() not in SOLUTION_MARKERS)


def between(source: str, begin: str, end: str) -> list[str]:
    """The meaningful lines between marker pairs (what must never reach a student)."""
    lines, inside = [], False
    for line in source.splitlines():
        if line.strip() == begin:
            inside = True
        elif line.strip() == end:
            inside = False
        elif inside and len(line.strip()) > 12:
            lines.append(line.strip())
    return lines


def strip_marked(source: str) -> str:
    """The source without the lines between (and of) solution and hidden-test markers."""
    kept, inside = [], False
    for line in source.splitlines():
        if line.strip() in (SOLUTION_MARKERS[0], HIDDEN_MARKERS[0]):
            inside = True
        elif line.strip() in (SOLUTION_MARKERS[1], HIDDEN_MARKERS[1]):
            inside = False
        elif not inside:
            kept.append(line)
    return "\n".join(kept)


def strip_hidden(source: str) -> str:
    """The source without its hidden-test blocks."""
    kept, inside = [], False
    for line in source.splitlines():
        if line.strip() == HIDDEN_MARKERS[0]:
            inside = True
        elif line.strip() == HIDDEN_MARKERS[1]:
            inside = False
        elif not inside:
            kept.append(line)
    return "\n".join(kept)


def edited(source: str, *replacements: tuple[str, str]) -> str:
    """The solution's code with each replacement applied; each must apply."""
    code = answer(source)
    for old, new in replacements:
        assert old in code, f"the wrong-answer recipe no longer matches the solution: {old!r}"
        code = code.replace(old, new)
    return code


# The batch of submissions: student id -> (how to build the notebook, expected score per test).
# A builder gets the solution notebook's cells and returns {solution cell id: new source}.
Recipe = tuple[object, dict[str, float]]


def _adam_recipes() -> dict[str, Recipe]:
    full = {
        "test_adam_update_first_steps": 2,
        "test_adam_update_matches_torch": 3,
        "test_effective_steps": 2,
    }
    return {
        "solution": ("solution", full),
        "untouched": ("release", dict.fromkeys(full, 0)),
        # The classic: m and v used without bias correction.
        "no_bias_correction": (
            lambda c: {
                "adam_update": edited(
                    c["adam_update"].source,
                    ("m / (1 - beta1**step)", "m"),
                    ("v / (1 - beta2**step)", "v"),
                )
            },
            dict.fromkeys(full, 0),
        ),
        # adam_update right; the effective step counts updates from 0.
        "step_from_zero": (
            lambda c: {
                "effective_steps": edited(
                    c["effective_steps"].source, ("enumerate(grads, start=1)", "enumerate(grads)")
                )
            },
            {**full, "test_effective_steps": 0},
        ),
        # Weight decay applied to the parameter after the update instead of as an L2 term in
        # the gradient: only the tests that use weight decay can see it.
        "decay_after_update": (
            lambda c: {
                "adam_update": edited(
                    c["adam_update"].source,
                    ("    if weight_decay != 0:\n        grad = grad + weight_decay * param\n", ""),
                    (
                        "    return new_param, m, v",
                        "    new_param = new_param - lr * weight_decay * param\n"
                        "    return new_param, m, v",
                    ),
                )
            },
            {**full, "test_adam_update_first_steps": 0, "test_adam_update_matches_torch": 0},
        ),
    }


def _adamw_recipes() -> dict[str, Recipe]:
    full = {
        "test_adamw_constructor": 1,
        "test_adamw_first_steps": 2,
        "test_adamw_matches_torch": 3,
        "test_adamw_state_and_closure": 1,
    }
    zero = dict.fromkeys(full, 0)
    return {
        "solution": ("solution", full),
        "untouched": ("release", zero),
        # Adam's L2 penalty instead of decoupled weight decay. The closure test runs with
        # weight_decay=0, so it still passes.
        "coupled_decay": (
            lambda c: {
                "adamw": edited(
                    c["adamw"].source,
                    ("p.mul_(1 - lr * weight_decay)\n", "grad = p.grad + weight_decay * p\n"),
                    ("add_(p.grad, alpha=1 - beta1)", "add_(grad, alpha=1 - beta1)"),
                    ("addcmul_(p.grad, p.grad, value", "addcmul_(grad, grad, value"),
                )
            },
            {**zero, "test_adamw_constructor": 1, "test_adamw_state_and_closure": 1},
        ),
        # exp_avg and exp_avg_sq kept in float32 for float64 parameters: a rounding error
        # no known mistake explains (on the probe without weight decay, Adam's L2 penalty
        # gives the same trajectory as decoupled decay, so it must not be named).
        "float32_state": (
            lambda c: {
                "adamw": edited(
                    c["adamw"].source,
                    (
                        'state["exp_avg"] = torch.zeros_like(p)',
                        'state["exp_avg"] = torch.zeros_like(p, dtype=torch.float32)',
                    ),
                    (
                        'state["exp_avg_sq"] = torch.zeros_like(p)',
                        'state["exp_avg_sq"] = torch.zeros_like(p, dtype=torch.float32)',
                    ),
                )
            },
            {**zero, "test_adamw_constructor": 1},
        ),
        "subclass_torch": (
            lambda c: {
                "adamw": "class AdamW(torch.optim.AdamW):\n    pass\n",
            },
            zero,
        ),
        # Hides the delegation from a text search; the run-time watch still sees it.
        "calls_torch_in_step": (
            lambda c: {
                "adamw": edited(
                    c["adamw"].source,
                    (
                        "        loss = None\n",
                        "        inner = getattr(torch.optim, 'Ada' + 'mW')(self.param_groups)\n"
                        "        inner.state = self.state\n"
                        "        return inner.step(closure)\n"
                        "        loss = None\n",
                    ),
                )
            },
            zero,
        ),
    }


def _schedules_recipes() -> dict[str, Recipe]:
    full = {
        "test_linear_warmup": 2,
        "test_warmup_cosine": 2,
        "test_inverse_sqrt": 2,
        "test_warmup_stable_decay": 2,
    }
    return {
        "solution": ("solution", full),
        "untouched": ("release", dict.fromkeys(full, 0)),
        # Warmup one step ahead (lr(0) > 0), and a cosine that ends at num_training_steps.
        "off_by_one": (
            lambda c: {
                "linear_warmup": edited(
                    c["linear_warmup"].source,
                    (
                        "peak_lr * step / num_warmup_steps",
                        "peak_lr * (step + 1) / num_warmup_steps",
                    ),
                ),
                "warmup_cosine": edited(
                    c["warmup_cosine"].source,
                    ("if step >= num_training_steps - 1:", "if step >= num_training_steps:"),
                    (
                        "(num_training_steps - 1 - num_warmup_steps)",
                        "(num_training_steps - num_warmup_steps)",
                    ),
                ),
            },
            {**full, "test_linear_warmup": 0, "test_warmup_cosine": 0},
        ),
        # The cosine decays to 0 whatever the floor.
        "floor_ignored": (
            lambda c: {
                "warmup_cosine": edited(
                    c["warmup_cosine"].source,
                    ("        return min_lr\n", "        return 0.0\n"),
                    ("min_lr + (peak_lr - min_lr) * 0.5", "peak_lr * 0.5"),
                )
            },
            {**full, "test_warmup_cosine": 0},
        ),
        # The inverse square root counted from update 1 instead of from step 0.
        "inverse_sqrt_shifted": (
            lambda c: {
                "inverse_sqrt": edited(
                    c["inverse_sqrt"].source,
                    (
                        "math.sqrt(num_warmup_steps / step)",
                        "math.sqrt(num_warmup_steps / (step + 1))",
                    ),
                )
            },
            {**full, "test_inverse_sqrt": 0},
        ),
        # The cooldown fraction read as where the cooldown starts.
        "cooldown_from_the_start": (
            lambda c: {
                "warmup_stable_decay": edited(
                    c["warmup_stable_decay"].source,
                    (
                        "cooldown_start = num_training_steps"
                        " - round(cooldown_fraction * num_training_steps)",
                        "cooldown_start = round(cooldown_fraction * num_training_steps)",
                    ),
                )
            },
            {**full, "test_warmup_stable_decay": 0},
        ),
    }


def _checkpoints_recipes() -> dict[str, Recipe]:
    full = {
        "test_effective_lr": 2,
        "test_batch_scaling": 2,
        "test_warmup_choice": 1,
        "test_likely_causes": 1,
        "test_first_two_fixes": 1,
        "test_training_memory": 3,
    }
    return {
        "solution": ("solution", full),
        "untouched": ("release", dict.fromkeys(full, 0)),
        # The question's numbers typed in, mixed precision without master weights, and
        # wrong choices for the warmup (2000 steps kept although beta2 became 0.992) and the
        # order of the fixes.
        "hard_coded": (
            lambda c: {
                "effective_lr": edited(
                    c["effective_lr"].source,
                    ("return lr * (1 - beta1) / (1 + beta1)", "return 5.2631578947368424e-05"),
                ),
                "batch_scaling": edited(
                    c["batch_scaling"].source, ('warmup_choice = "b"', 'warmup_choice = "a"')
                ),
                "memory": edited(c["memory"].source, ("4 * n + 8 * n", "8 * n")),
                "nan_diagnosis": edited(c["nan_diagnosis"].source, ('["r", "s"]', '["s", "r"]')),
            },
            {
                **full,
                "test_effective_lr": 0,
                "test_warmup_choice": 0,
                "test_first_two_fixes": 0,
                "test_training_memory": 0,
            },
        ),
        # The linear rule where the square-root rule was asked.
        "linear_for_sqrt": (
            lambda c: {
                "batch_scaling": edited(
                    c["batch_scaling"].source,
                    (
                        "return lr * math.sqrt(new_batch_size / batch_size)",
                        "return lr * new_batch_size / batch_size",
                    ),
                )
            },
            {**full, "test_batch_scaling": 0},
        ),
        # "Adam normalises the gradient, so both move by lr": momentum's cancellation missed.
        "alternating_moves_lr": (
            lambda c: {
                "effective_lr": edited(
                    c["effective_lr"].source,
                    ("return lr * (1 - beta1) / (1 + beta1)", "return lr"),
                )
            },
            {**full, "test_effective_lr": 0},
        ),
        # Mixed precision counted without the fp32 master weights.
        "no_master_weights": (
            lambda c: {"memory": edited(c["memory"].source, ("4 * n + 8 * n", "8 * n"))},
            {**full, "test_training_memory": 0},
        ),
        # The 8-bit state's blocks counted with floor: 8 bytes short on 4.2e10, inside a
        # relative 1e-9, and still a wrong byte count (integers are compared exactly).
        "floor_blocks": (
            lambda c: {
                "memory": edited(
                    c["memory"].source,
                    ("math.ceil(n / block_size)", "math.floor(n / block_size)"),
                )
            },
            {**full, "test_training_memory": 0},
        ),
    }


def _warmup_recipes() -> dict[str, Recipe]:
    full = {
        "test_rho": 2,
        "test_rectification": 2,
        "test_first_adaptive_step": 1,
        "test_untuned_warmup_steps": 1,
        "test_exponential_warmup": 1,
        "test_gi_adam_first_update": 2,
        "test_diagnosis": 1,
    }
    return {
        "solution": ("solution", full),
        "untouched": ("release", dict.fromkeys(full, 0)),
        # r_t without its square root: the ratio of the variances itself.
        "rectification_without_sqrt": (
            lambda c: {
                "rectification": edited(
                    c["rectification"].source,
                    (
                        "return math.sqrt((r - 4) * (r - 2) * inf / ((inf - 4) * (inf - 2) * r))",
                        "return (r - 4) * (r - 2) * inf / ((inf - 4) * (inf - 2) * r)",
                    ),
                )
            },
            {**full, "test_rectification": 0},
        ),
        # The paper's threshold whatever `threshold` says: PyTorch's > 5 comes out as > 4.
        "threshold_ignored": (
            lambda c: {
                "rectification": edited(
                    c["rectification"].source,
                    ("while not rho(t, beta2) > threshold:", "while not rho(t, beta2) > 4:"),
                )
            },
            {**full, "test_first_adaptive_step": 0},
        ),
        # 2 / (1 - beta2) truncated: 1999.9999999999982 becomes 1999.
        "untuned_truncated": (
            lambda c: {
                "untuned_warmup": edited(
                    c["untuned_warmup"].source,
                    ("return round(2 / (1 - beta2))", "return int(2 / (1 - beta2))"),
                )
            },
            {**full, "test_untuned_warmup_steps": 0},
        ),
        # The exponential warmup at t = s, so lr(0) = 0.
        "exponential_one_behind": (
            lambda c: {
                "untuned_warmup": edited(c["untuned_warmup"].source, ("(step + 1)", "step"))
            },
            {**full, "test_exponential_warmup": 0},
        ),
        # v started at zero: plain Adam's first step, lr * sign(g).
        "gi_adam_is_plain_adam": (
            lambda c: {
                "gi_adam": edited(
                    c["gi_adam"].source,
                    (
                        "v = beta2 * grad**2 + (1 - beta2) * grad**2  # v_0 = grad**2",
                        "v = (1 - beta2) * grad**2  # v_0 = 0",
                    ),
                )
            },
            {**full, "test_gi_adam_first_update": 0},
        ),
        # A catapult read as a divergence.
        "catapult_read_as_divergence": (
            lambda c: {
                "loss_curve": edited(c["loss_curve"].source, ('diagnosis = "b"', 'diagnosis = "a"'))
            },
            {**full, "test_diagnosis": 0},
        ),
    }


def _batch_scaling_recipes() -> dict[str, Recipe]:
    full = {
        "test_linear_rule": 1,
        "test_sqrt_rule": 2,
        "test_beta_half_life_examples": 1,
        "test_beta2_for_batch": 1,
        "test_accumulated_gradient": 3,
        "test_two_batch_noise_scale": 2,
    }
    return {
        "solution": ("solution", full),
        "untouched": ("release", dict.fromkeys(full, 0)),
        # The square-root rule with eps left alone.
        "sqrt_rule_keeps_eps": (
            lambda c: {
                "rules": edited(
                    c["rules"].source, ('"eps": eps / math.sqrt(kappa),', '"eps": eps,')
                )
            },
            {**full, "test_sqrt_rule": 0},
        ),
        # The warmup kept in steps under both rules: question 1, both of its tests.
        "warmup_kept_in_steps": (
            lambda c: {
                "rules": edited(
                    c["rules"].source,
                    (
                        "steps = max(1, round(samples / batch_size)) if samples else 0",
                        "steps = warmup_steps",
                    ),
                )
            },
            {**full, "test_linear_rule": 0, "test_sqrt_rule": 0},
        ),
        # The square-root rule's first-order form where the half-life rule was asked.
        "beta2_first_order": (
            lambda c: {
                "half_life": edited(
                    c["half_life"].source,
                    (
                        "return beta2 ** (new_batch_size / batch_size)",
                        "return 1 - new_batch_size / batch_size * (1 - beta2)",
                    ),
                )
            },
            {**full, "test_beta2_for_batch": 0},
        ),
        # The classic: micro-batch means averaged with equal weights.
        "equal_micro_batch_weights": (
            lambda c: {
                "accumulation": edited(
                    c["accumulation"].source,
                    (
                        "grad += micro_mean * len(mx) / total",
                        "grad += micro_mean / math.ceil(total / micro_batch_size)",
                    ),
                )
            },
            {**full, "test_accumulated_gradient": 0},
        ),
        # B_simple upside down: signal over noise.
        "noise_scale_upside_down": (
            lambda c: {
                "noise_scale": edited(
                    c["noise_scale"].source,
                    (
                        '"b_simple": trace_cov / grad_sq_norm',
                        '"b_simple": grad_sq_norm / trace_cov',
                    ),
                )
            },
            {**full, "test_two_batch_noise_scale": 0},
        ),
    }


RECIPES: dict[str, dict[str, Recipe]] = {
    "adam": _adam_recipes(),
    "adamw": _adamw_recipes(),
    "schedules": _schedules_recipes(),
    "checkpoints": _checkpoints_recipes(),
    "warmup": _warmup_recipes(),
    "batch_scaling": _batch_scaling_recipes(),
}


class Course:
    """A scratch copy of the course after generate, submit, autograde, export and feedback.

    The batch is split over two copies of the course, each with its own gradebook, graded
    side by side: each nbgrader command takes seconds to start, and the machine has two cores.
    """

    def __init__(self, roots: dict[str, Path]) -> None:
        self.roots = roots  # assignment -> the scratch course that grades it

    def autograder(self, assignment: str) -> Path:
        return self.roots[assignment] / "autograder"

    def release(self, assignment: str) -> Path:
        return self.roots[assignment] / "exercises" / assignment

    def scores(self, assignment: str, student: str) -> dict[str, float]:
        from nbgrader.api import Gradebook

        db = f"sqlite:///{self.autograder(assignment) / 'gradebook.db'}"
        with Gradebook(db) as gb:
            nb = gb.find_submission_notebook(assignment, assignment, student)
            return {grade.name: grade.score for grade in nb.grades}

    def grades_csv(self) -> list[dict[str, str]]:
        rows = []
        for root in sorted(set(self.roots.values())):
            with (root / "autograder" / "grades.csv").open() as handle:
                rows += list(csv.DictReader(handle))
        return rows

    def autograded(self, assignment: str, student: str) -> nbformat.NotebookNode:
        folder = self.autograder(assignment) / "autograded" / student / assignment
        return read_notebook(folder / f"{assignment}.ipynb")

    def feedback_html(self, assignment: str, student: str) -> str:
        folder = self.autograder(assignment) / "feedback" / student / assignment
        return (folder / f"{assignment}.html").read_text(encoding="utf-8")


def submission(assignment: str, student: str, root: Path) -> nbformat.NotebookNode:
    """The notebook ``student`` hands in, built from the source or the generated release."""
    build = RECIPES[assignment][student][0]
    source = read_notebook(root / "solutions" / assignment / f"{assignment}.ipynb")
    release = read_notebook(root / "exercises" / assignment / f"{assignment}.ipynb")
    if build == "solution":
        return source
    if build == "release":
        return release
    # A student's notebook: the release with every answer written in, then the recipe's
    # changes to some of them.
    nb = nbformat.from_dict(json.loads(json.dumps(release)))
    cells = cells_by_id(nb)
    source_cells = cells_by_id(source)
    for grade_id, cell in source_cells.items():
        if cell.metadata["nbgrader"]["solution"]:
            cells[grade_id].source = answer(cell.source)
    for grade_id, code in build(source_cells).items():
        cells[grade_id].source = code
    return nb


def grade_batch(root: Path, assignments: list[str]) -> None:
    """The instructor's sequence, in one scratch course: generate, (collect), autograde,
    export, feedback."""
    make_exercises.generate(root, assignments)
    for assignment in assignments:
        for student in RECIPES[assignment]:
            folder = root / "autograder" / "submitted" / student / assignment
            folder.mkdir(parents=True)
            nb = submission(assignment, student, root)
            nbformat.write(nb, str(folder / f"{assignment}.ipynb"))
            (folder / "timestamp.txt").write_text("2025-01-01 12:00:00.000000 UTC\n")
    make_exercises.run_nbgrader(["autograde", "*", "--force"], root)
    make_exercises.run_nbgrader(["export"], root)
    make_exercises.run_nbgrader(["generate_feedback", "*", "--force"], root)


BATCHES = [["adamw", "schedules", "warmup"], ["adam", "checkpoints", "batch_scaling"]]


@pytest.fixture(scope="session")
def course(tmp_path_factory: pytest.TempPathFactory) -> Course:
    base = tmp_path_factory.mktemp("courses")
    roots = {}
    for index, batch in enumerate(BATCHES):
        root = make_exercises.scratch_course(base / f"course{index}", names=batch)
        roots.update(dict.fromkeys(batch, root))
    with ThreadPoolExecutor(max_workers=len(BATCHES)) as pool:
        futures = [pool.submit(grade_batch, roots[batch[0]], batch) for batch in BATCHES]
        for future in futures:
            future.result()
    return Course(roots)


# ---------------------------------------------------------------------------------------
# The release: generated from the source, nothing hidden in it, no outputs committed.
# ---------------------------------------------------------------------------------------


def test_every_assignment_has_its_notebook():
    assert make_exercises.assignments() == sorted(ASSIGNMENTS)
    for name in ASSIGNMENTS:
        assert (ROOT / "exercises" / name / f"{name}.ipynb").is_file(), (
            f"exercises/{name}/{name}.ipynb is missing: run `make exercises`"
        )


@pytest.mark.slow  # runs the nbgrader pipeline (the module's `course` fixture)
def test_committed_exercises_are_what_nbgrader_generates(course):
    """What `make exercises` would write equals what is committed (the --check logic)."""
    diffs = []
    for root in sorted(set(course.roots.values())):
        names = sorted(a for a, r in course.roots.items() if r == root)
        diffs += make_exercises.stale(root, names)
    assert set(ASSIGNMENTS) == set(course.roots)
    assert not diffs, "exercises/ is out of date, run `make exercises`:\n" + "\n".join(diffs)


@pytest.mark.slow  # runs the nbgrader pipeline (the module's `course` fixture)
def test_a_stale_release_is_detected(course, tmp_path):
    # A hand edit in a copy of the committed release is reported, and so is a release
    # folder whose source is gone.
    fake_root = tmp_path / "repo"
    shutil.copytree(ROOT / "exercises", fake_root / "exercises")
    path = fake_root / "exercises" / "schedules" / "schedules.ipynb"
    path.write_text(path.read_text().replace("YOUR CODE HERE", "my own code"))
    shutil.copytree(fake_root / "exercises" / "adam", fake_root / "exercises" / "old")
    (fake_root / "exercises" / "old" / "adam.ipynb").rename(
        fake_root / "exercises" / "old" / "old.ipynb"
    )
    diffs = make_exercises.stale(
        course.roots["schedules"], ["schedules"], every=ASSIGNMENTS, root=fake_root
    )
    assert diffs == [
        "schedules/schedules.ipynb differs from what nbgrader generates",
        "old/ has no source in solutions/",
    ]


@pytest.mark.parametrize("assignment", ASSIGNMENTS)
def test_release_contains_no_solution_and_no_hidden_test(assignment):
    source = read_notebook(ROOT / "solutions" / assignment / f"{assignment}.ipynb")
    released_text = (ROOT / "exercises" / assignment / f"{assignment}.ipynb").read_text()
    released = read_notebook(ROOT / "exercises" / assignment / f"{assignment}.ipynb")
    for marker in SOLUTION_MARKERS + HIDDEN_MARKERS:
        assert marker not in released_text, f"{assignment}: the release contains {marker!r}"
    secret = []
    for cell in source.cells:
        secret += between(cell.source, *SOLUTION_MARKERS)
        secret += between(cell.source, *HIDDEN_MARKERS)
    assert secret, f"{assignment}: the source has no solution or hidden test to check"
    public = "\n".join(cell.source for cell in released.cells)
    # Lines that the visible part of the source has too (a call repeated with new inputs)
    # are not secret.
    visible = "\n".join(
        line for cell in source.cells for line in strip_marked(cell.source).splitlines()
    )
    leaked = [line for line in secret if line in public and line not in visible]
    assert not leaked, (
        f"{assignment}: lines of the solution or hidden tests in the release: {leaked}"
    )
    # Every solution cell became the stub; every test cell kept its visible part.
    released_cells = cells_by_id(released)
    for grade_id, cell in cells_by_id(source).items():
        meta = cell.metadata["nbgrader"]
        if meta["solution"]:
            assert "raise NotImplementedError()" in released_cells[grade_id].source
        if meta["grade"]:
            assert released_cells[grade_id].source.strip(), f"{grade_id} is empty in the release"


@pytest.mark.parametrize("folder", ["solutions", "exercises"])
def test_notebooks_are_committed_without_outputs(folder):
    problems = [
        problem
        for path in sorted((ROOT / folder).glob("*/*.ipynb"))
        for problem in make_exercises.notebook_problems(path)
    ]
    assert not problems, "\n".join(problems)


# ---------------------------------------------------------------------------------------
# Grading: full marks, zero, and the partial scores of realistic mistakes.
# ---------------------------------------------------------------------------------------

CASES = [
    pytest.param(assignment, student, id=f"{assignment}-{student}")
    for assignment, recipes in RECIPES.items()
    for student in recipes
]


@pytest.mark.slow  # runs the nbgrader pipeline (the module's `course` fixture)
@pytest.mark.parametrize(("assignment", "student"), CASES)
def test_autograded_scores(course, assignment, student):
    expected = RECIPES[assignment][student][1]
    scores = course.scores(assignment, student)
    got = {name: scores.get(name) for name in expected}
    assert got == expected, (
        f"{assignment}/{student}: per-test scores {got}, expected {expected}\n"
        + failure_outputs(course.autograded(assignment, student))
    )


def failure_outputs(nb: nbformat.NotebookNode) -> str:
    """The error and stderr outputs of an autograded notebook, for a failing test's message."""
    lines = []
    for cell in nb.cells:
        for output in cell.get("outputs", []):
            if output.output_type == "error":
                lines.append(
                    f"{cell.metadata.get('nbgrader', {}).get('grade_id')}: {output.ename}: {output.evalue[:600]}"
                )
            elif output.output_type == "stream" and output.name == "stderr":
                lines.append(f"stderr: {output.text[:600]}")
    return "\n".join(lines)


def error_text(course: Course, assignment: str, student: str, grade_id: str) -> str:
    cell = cells_by_id(course.autograded(assignment, student))[grade_id]
    return "\n".join(o.evalue for o in cell.outputs if o.output_type == "error")


@pytest.mark.slow  # runs the nbgrader pipeline (the module's `course` fixture)
def test_solutions_pass_with_no_stderr(course):
    """Full marks, and not one line on stderr that nbgrader could take for a failure."""
    for assignment in ASSIGNMENTS:
        nb = course.autograded(assignment, "solution")
        noisy = [
            cell.metadata["nbgrader"]["grade_id"]
            for cell in nb.cells
            if cell.cell_type == "code"
            and any(o.output_type == "stream" and o.name == "stderr" for o in cell.outputs)
        ]
        assert not noisy, f"{assignment}: cells writing to stderr: {noisy}"


@pytest.mark.slow  # runs the nbgrader pipeline (the module's `course` fixture)
def test_messages_name_the_mistake(course):
    message = error_text(course, "adam", "no_bias_correction", "test_adam_update_first_steps")
    assert "without bias correction" in message and "1 - 0.8**" in message, message
    message = error_text(course, "adamw", "coupled_decay", "test_adamw_first_steps")
    assert "added to the gradient" in message and "decouples" in message, message
    message = error_text(course, "adamw", "float32_state", "test_adamw_first_steps")
    assert "weight_decay=0.0" in message and "after step 1 the parameter is wrong" in message
    assert "Likely mistake" not in message, message
    message = error_text(course, "schedules", "off_by_one", "test_linear_warmup")
    expected = "linear_warmup(0, peak_lr=0.0003, num_warmup_steps=2000): expected 0"
    assert expected in message, message
    message = error_text(course, "schedules", "off_by_one", "test_warmup_cosine")
    assert "runs over s = num_warmup_steps .. num_training_steps - 1" in message, message
    message = error_text(course, "checkpoints", "floor_blocks", "test_training_memory")
    assert "compared exactly" in message and "ceil(n_params / block_size)" in message, message
    message = error_text(course, "checkpoints", "hard_coded", "test_warmup_choice")
    assert "(a) is not right" in message and "2/(1-0.992) = 250 steps" in message, message
    message = error_text(course, "warmup", "gi_adam_is_plain_adam", "test_gi_adam_first_update")
    assert "expected -3.162277658e-05, got -0.00099999998" in message, message
    assert "not -lr * sign(g)" in message, message
    message = error_text(course, "warmup", "threshold_ignored", "test_first_adaptive_step")
    assert "first_adaptive_step(0.999, threshold=5.0): expected 6, got 5" in message, message
    message = error_text(course, "warmup", "catapult_read_as_divergence", "test_diagnosis")
    assert "(a) is not right: a divergence does not come back" in message, message
    message = error_text(
        course, "batch_scaling", "equal_micro_batch_weights", "test_accumulated_gradient"
    )
    assert "expected -7.4, got -10.33333333" in message and "len(micro) / 5" in message, message
    message = error_text(course, "batch_scaling", "sqrt_rule_keeps_eps", "test_sqrt_rule")
    assert "['eps']: expected 3.535533906e-09, got 1e-08" in message, message


@pytest.mark.slow  # runs the nbgrader pipeline (the module's `course` fixture)
def test_delegation_scores_zero_with_the_reason(course):
    message = error_text(course, "adamw", "subclass_torch", "test_adamw_matches_torch")
    assert "inherits from torch.optim.adamw.AdamW" in message, message
    message = error_text(course, "adamw", "calls_torch_in_step", "test_adamw_constructor")
    assert "delegates to the reference" in message and "torch/optim/adam.py" in message, message


@pytest.mark.slow  # runs the nbgrader pipeline (the module's `course` fixture)
def test_wrong_answers_that_pass_the_visible_checks_fail_the_hidden_ones(course):
    # A number typed in for the question fails the visible property check already ...
    message = error_text(course, "checkpoints", "hard_coded", "test_effective_lr")
    assert "with beta1 = 0 there is no momentum" in message, message
    # ... and mixed precision without the master weights passes the visible checks (the
    # structure, fp32) but fails on the hidden inputs, with the hint.
    message = error_text(course, "checkpoints", "hard_coded", "test_training_memory")
    assert "['optimizer']: expected" in message and "master copy" in message, message
    message = error_text(course, "checkpoints", "hard_coded", "test_first_two_fixes")
    assert "the order is not right" in message, message


@pytest.mark.slow  # runs the nbgrader pipeline (the module's `course` fixture)
def test_export_lists_every_submission(course):
    rows = course.grades_csv()
    by_key = {(row["assignment"], row["student_id"]): float(row["score"]) for row in rows}
    for assignment, recipes in RECIPES.items():
        for student, (_build, expected) in recipes.items():
            assert by_key[(assignment, student)] == pytest.approx(sum(expected.values())), (
                f"grades.csv: {assignment}/{student}"
            )


@pytest.mark.slow  # runs the nbgrader pipeline (the module's `course` fixture)
@pytest.mark.parametrize("assignment", ASSIGNMENTS)
def test_feedback_shows_no_hidden_test(course, assignment):
    source = read_notebook(ROOT / "solutions" / assignment / f"{assignment}.ipynb")
    # Lines found only in hidden tests (not in the visible tests or the solution).
    elsewhere = "\n".join(
        line for cell in source.cells for line in strip_hidden(cell.source).splitlines()
    )
    hidden = [
        line
        for cell in source.cells
        for line in between(cell.source, *HIDDEN_MARKERS)
        if line not in elsewhere
    ]
    assert hidden
    for student in RECIPES[assignment]:
        page = course.feedback_html(assignment, student)
        assert "HIDDEN TESTS" not in page, f"{assignment}/{student}: feedback shows hidden tests"
        text = html.unescape(re.sub(r"<[^>]+>", "", page))
        leaked = [line for line in hidden if line in text]
        assert not leaked, f"{assignment}/{student} feedback shows hidden test lines: {leaked[:3]}"


# ---------------------------------------------------------------------------------------
# The checks' machinery, in process (fast): warnings, stderr, kernels called by name.
# ---------------------------------------------------------------------------------------


def test_the_librarys_schedules_pass_the_schedules_exercise(monkeypatch):
    """The schedules the exercise asks for are those the book shows from course_lib.schedules:
    the same names, keyword arguments and step convention. Bound by name to the library's own
    functions, every test cell passes, hidden tests included. (The functions run from a copy
    of the module's source, so that the checks do not refuse them as calls to course_lib.)"""
    from course_lib import schedules

    monkeypatch.setenv("COURSE_DEVICE", "cpu")
    library = {"__name__": "course_lib_schedules_copy"}
    source = Path(schedules.__file__).read_text(encoding="utf-8")
    exec(compile(source, "<copy of course_lib/schedules.py>", "exec"), library)
    namespace: dict = {}
    for cell in read_notebook(ROOT / "solutions" / "schedules" / "schedules.ipynb").cells:
        if cell.cell_type != "code":
            continue
        if not cell.metadata["nbgrader"]["solution"]:
            exec(compile(cell.source, cell.metadata["nbgrader"]["grade_id"], "exec"), namespace)
            continue
        for node in ast.parse(answer(cell.source)).body:
            assert node.name in schedules.__all__, f"course_lib.schedules has no {node.name}"
            namespace[node.name] = library[node.name]


def test_a_warning_or_stderr_output_costs_nothing(capfd):
    import os
    import warnings

    from autograder import grading

    def noisy_warmup(step, *, peak_lr, warmup_steps):
        warnings.warn("a deprecation the student cannot help", DeprecationWarning, stacklevel=1)
        print("debug output on stderr", file=sys.stderr)
        os.write(2, b"C-level stderr\n")
        return peak_lr * min(step / warmup_steps, 1.0)

    grading.check_values(
        noisy_warmup,
        "noisy_warmup",
        [
            ((0,), {"peak_lr": 1.0, "warmup_steps": 4}, 0.0, ""),
            ((2,), {"peak_lr": 1.0, "warmup_steps": 4}, 0.5, ""),
        ],
    )
    out, err = capfd.readouterr()
    assert err == "", f"a check wrote to stderr, which nbgrader scores 0: {err!r}"
    assert "cost no points" in out and "a deprecation the student cannot help" in out
    assert "C-level stderr" in out


def test_fused_and_torch_ops_kernels_are_refused():
    import torch

    from autograder import grading

    def fused(param, grad, m, v, step, *, lr, beta1, beta2, eps, weight_decay):
        p, m, v = param.clone(), m.clone(), v.clone()
        kernel = getattr(torch.ops.aten, "_fused_" + "adam_").default
        kernel(
            [p], [grad], [m], [v], [], [torch.tensor(float(step))],
            lr=lr, beta1=beta1, beta2=beta2, weight_decay=weight_decay, eps=eps,
            amsgrad=False, maximize=False,
        )  # fmt: skip
        return p, m, v

    with pytest.raises(
        grading.GradingError, match=r"(?s)delegates to the reference.*aten._fused_adam_"
    ):
        grading.check_adam_against_torch(fused, device="cpu", cases=1, steps=2)


def test_a_correct_update_passes_and_a_wrong_one_is_diagnosed():
    import torch

    from autograder import grading

    def update(param, grad, m, v, step, *, lr, beta1, beta2, eps, weight_decay):
        grad = grad + weight_decay * param
        m = beta1 * m + (1 - beta1) * grad
        v = beta2 * v + (1 - beta2) * grad**2
        return param - lr * (m / (1 - beta1**step)) / ((v / (1 - beta2**step)).sqrt() + eps), m, v

    def eps_inside(param, grad, m, v, step, *, lr, beta1, beta2, eps, weight_decay):
        grad = grad + weight_decay * param
        m = beta1 * m + (1 - beta1) * grad
        v = beta2 * v + (1 - beta2) * grad**2
        return param - lr * (m / (1 - beta1**step)) / (v / (1 - beta2**step) + eps).sqrt(), m, v

    grading.check_adam_first_steps(update, device="cpu", seed=3)
    grading.check_adam_against_torch(update, device="cpu", seed=3, cases=2, steps=100)
    with pytest.raises(grading.GradingError, match="eps inside the square root"):
        grading.check_adam_first_steps(eps_inside, device="cpu", seed=3)
    with pytest.raises(grading.GradingError, match=r"float(32|64) on cpu"):
        grading.check_adam_against_torch(
            eps_inside, device="cpu", seed=3, cases=4, steps=100, dtypes=(torch.float64,)
        )

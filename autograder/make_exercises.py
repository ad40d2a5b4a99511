"""Generate ``exercises/`` (nbgrader's release) from ``solutions/`` (nbgrader's source).

The real ``nbgrader generate_assignment`` in a scratch copy of the course with a scratch
gradebook (the instructor's is never touched); source notebooks must carry no outputs, and no
released notebook may contain a solution or hidden-test marker.
"""

from __future__ import annotations

import argparse
import filecmp
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SOURCE = "solutions"
RELEASE = "exercises"
FORBIDDEN_IN_RELEASE = ("BEGIN SOLUTION", "END SOLUTION", "BEGIN HIDDEN TESTS", "END HIDDEN TESTS")


class ExerciseError(Exception):
    """The source or the generated release is not in a state that can be committed."""


def assignments(root: Path = ROOT) -> list[str]:
    """Every assignment: a folder of ``solutions/`` holding a notebook named after it."""
    found = []
    for folder in sorted((root / SOURCE).iterdir()):
        if not folder.is_dir() or folder.name.startswith((".", "_")):
            continue
        notebooks = sorted(p.name for p in folder.glob("*.ipynb"))
        if notebooks != [f"{folder.name}.ipynb"]:
            raise ExerciseError(
                f"{folder.relative_to(root)} should hold exactly one notebook, "
                f"{folder.name}.ipynb; it holds {notebooks or 'none'}"
            )
        found.append(folder.name)
    return found


def notebook_problems(path: Path) -> list[str]:
    """Outputs or execution counts left in a notebook (they must not be committed)."""
    try:
        nb = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        return [f"{path}: not a readable notebook ({error})"]
    code = [(i, c) for i, c in enumerate(nb.get("cells", [])) if c.get("cell_type") == "code"]
    outputs = [f"{path}: cell {i} has outputs" for i, c in code if c.get("outputs")]
    counts = [i for i, c in code if c.get("execution_count") is not None]
    return outputs + [f"{path}: cell {i} has an execution count" for i in counts]


def run_nbgrader(args: list[str], course: Path) -> None:
    """``nbgrader <args>`` from ``course/autograder``: its ``nbgrader_config.py`` puts the root
    and the gradebook in ``course``, and this interpreter's bin first on the PATH (``alembic``)."""
    command = [sys.executable, "-m", "nbgrader", *args]
    result = subprocess.run(command, cwd=course / "autograder", capture_output=True, text=True)
    if result.returncode != 0:
        raise ExerciseError(
            f"{' '.join(command[2:4])} failed (exit {result.returncode}):\n{result.stderr[-4000:]}"
        )


def scratch_course(destination: Path, names: list[str]) -> Path:
    """A copy of what nbgrader needs: the ``names`` of ``solutions/`` and the configuration."""
    for name in names:
        shutil.copytree(ROOT / SOURCE / name, destination / SOURCE / name)
    (destination / "autograder").mkdir(parents=True)
    shutil.copy2(ROOT / "autograder" / "nbgrader_config.py", destination / "autograder")
    return destination


def generate(course: Path, names: list[str]) -> None:
    """``nbgrader generate_assignment --force`` in a course holding ``names`` only
    (:func:`scratch_course`): one nbgrader process for all, as starting one takes seconds."""
    run_nbgrader(["generate_assignment", "*", "--force"], course)
    for name in names:
        for path in (course / RELEASE / name).rglob("*.ipynb"):
            text = path.read_text(encoding="utf-8")
            if leaked := [marker for marker in FORBIDDEN_IN_RELEASE if marker in text]:
                raise ExerciseError(f"{path.name}: the release still contains {leaked}")


def stale(
    course: Path, names: list[str], every: list[str] | None = None, root: Path = ROOT
) -> list[str]:
    """How ``root/exercises`` differs from the release generated in ``course``, file by file;
    with ``every`` (all assignments), release folders that have no source are reported too."""
    diffs = []
    for name in names:
        generated, committed = course / RELEASE / name, root / RELEASE / name
        if not committed.is_dir():
            diffs.append(f"{name}/ is missing")
            continue
        made = {p.relative_to(generated) for p in generated.rglob("*") if p.is_file()}
        kept = {p.relative_to(committed) for p in committed.rglob("*") if p.is_file()}
        for rel in sorted(made | kept):
            if rel not in kept:
                diffs.append(f"{name}/{rel} is missing")
            elif rel not in made:
                diffs.append(f"{name}/{rel} is not generated from {SOURCE}/ (stale)")
            elif not filecmp.cmp(generated / rel, committed / rel, shallow=False):
                diffs.append(f"{name}/{rel} differs from what nbgrader generates")
    if every is not None:
        for folder in sorted((root / RELEASE).iterdir()):
            if folder.is_dir() and folder.name not in every and any(folder.glob("*.ipynb")):
                diffs.append(f"{folder.name}/ has no source in {SOURCE}/")
    return diffs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("assignments", nargs="*", help="default: every folder of solutions/")
    check = "change nothing; exit 1 if exercises/ is out of date"
    parser.add_argument("--check", action="store_true", help=check)
    args = parser.parse_args(argv)
    try:
        every = assignments()
        names = args.assignments or every
        if unknown := sorted(set(names) - set(every)):
            raise ExerciseError(f"no such assignment in {SOURCE}/: {', '.join(unknown)}")
        paths = [ROOT / SOURCE / name / f"{name}.ipynb" for name in names]
        if problems := [p for path in paths for p in notebook_problems(path)]:
            clear = "commit notebooks without outputs (Kernel > Restart & Clear Output):"
            raise ExerciseError("\n  ".join([clear, *problems]))
        with tempfile.TemporaryDirectory(prefix="exercises-") as tmp:
            course = scratch_course(Path(tmp) / "course", names)
            generate(course, names)
            if args.check:
                if diffs := stale(course, names, every if not args.assignments else None):
                    out_of_date = "exercises/ is out of date; run `make exercises`:"
                    print(out_of_date, *diffs, sep="\n  ", file=sys.stderr)
                    return 1
                print(f"exercises/ is up to date ({', '.join(names)})")
                return 0
            for name in names:
                target = ROOT / RELEASE / name
                staging = ROOT / RELEASE / f".{name}.new"
                shutil.rmtree(staging, ignore_errors=True)
                shutil.copytree(course / RELEASE / name, staging)
                shutil.rmtree(target, ignore_errors=True)
                staging.rename(target)
                print(f"wrote {target.relative_to(ROOT)}/")
        return 0
    except ExerciseError as error:
        print(f"make_exercises: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

"""Grading throughput: plain ``nbgrader autograde`` against the sandboxed ``course-grade``.

The same submissions (by default 20 of the ``adamw`` assignment: correct ones and wrong ones,
as a class hands them in) are graded three ways in one scratch course, one after the other,
``--rounds`` times in rotating order:

- ``nbgrader``: plain sequential ``nbgrader autograde`` (no sandbox, one kernel per notebook);
- ``sandbox_1``: ``course-grade --workers 1``;
- ``sandbox_2``: ``course-grade --workers 2``.

Each way starts from an empty gradebook row (``--force``) and its wall time covers the whole
command, start-up and CSV export included. The JSON (``benchmarks/results/grading_cpu.json``)
holds every sample, the medians, the machine and its load, and the ratios:
``sandbox_1 / nbgrader`` (target <= 1.15) and ``sandbox_1 / sandbox_2`` (target >= 1.7).

    python -m benchmarks.grading [--submissions 20] [--rounds 2]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from tqdm import tqdm

from benchmarks.common import RESULTS, describe_machine, loadavg, summarise, write_json

ROOT = Path(__file__).resolve().parents[1]
from autograder import make_exercises  # noqa: E402

WRONG_STEP = ("p.mul_(1 - lr * weight_decay)", "p.mul_(1 - weight_decay)")


def make_class(course: Path, count: int) -> list[str]:
    """``count`` submissions of adamw: every third one with decay not scaled by lr."""
    import nbformat

    source = nbformat.read(str(course / "solutions" / "adamw" / "adamw.ipynb"), 4)
    release = nbformat.read(str(course / "exercises" / "adamw" / "adamw.ipynb"), 4)
    answers = {
        c.metadata["nbgrader"]["grade_id"]: "\n".join(
            line for line in c.source.splitlines() if "### " not in line
        )
        for c in source.cells
        if c.metadata.get("nbgrader", {}).get("solution")
    }
    students = []
    for i in range(count):
        nb = nbformat.from_dict(nbformat.reads(nbformat.writes(release), 4))
        for cell in nb.cells:
            grade_id = cell.metadata.get("nbgrader", {}).get("grade_id")
            if grade_id in answers:
                cell.source = answers[grade_id]
                if i % 3 == 2:
                    cell.source = cell.source.replace(*WRONG_STEP)
        student = f"student{i:03d}"
        folder = course / "autograder" / "submitted" / student / "adamw"
        folder.mkdir(parents=True)
        nbformat.write(nb, str(folder / "adamw.ipynb"))
        students.append(student)
    return students


def commands(course: Path) -> dict[str, list[str]]:
    grade = [sys.executable, "-m", "autograder.grade", "adamw", "--root",
             str(course), "--force"]  # fmt: skip
    nbgrader = [str(Path(sys.executable).parent / "nbgrader"), "autograde", "adamw", "--force",
                f"--CourseDirectory.root={course}"]  # fmt: skip
    return {
        "nbgrader": nbgrader,
        "sandbox_1": [*grade, "--workers", "1"],
        "sandbox_2": [*grade, "--workers", "2"],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.grading",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--submissions", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=2, help="timed rounds per way")
    parser.add_argument("--output", type=Path, default=RESULTS / "grading_cpu.json")
    args = parser.parse_args(argv)
    if args.submissions < 1 or args.rounds < 1:
        parser.error("--submissions and --rounds must be at least 1")
    bin_dir = str(Path(sys.executable).parent)
    env = {"PATH": f"{bin_dir}:/usr/local/bin:/usr/bin:/bin", "HOME": str(Path.home())}
    machine = describe_machine(torch.device("cpu"))
    with tempfile.TemporaryDirectory(prefix="bench-grading-") as tmp:
        course = make_exercises.scratch_course(Path(tmp) / "course", names=["adamw"])
        make_exercises.generate(course, ["adamw"])
        students = make_class(course, args.submissions)
        ways = commands(course)
        samples: dict[str, list[float]] = {name: [] for name in ways}
        names = list(ways)
        runs = [(r, names[(i + r) % len(names)]) for r in range(args.rounds)
                for i in range(len(names))]  # fmt: skip
        for _, name in tqdm(runs, desc="grading runs", file=sys.stderr):
            start = time.perf_counter()
            result = subprocess.run(ways[name], cwd=course / "autograder", env=env,
                                    capture_output=True, text=True, check=False)  # fmt: skip
            seconds = time.perf_counter() - start
            if result.returncode != 0:
                print(result.stdout[-3000:], result.stderr[-3000:], file=sys.stderr)
                raise SystemExit(f"{name} failed with exit code {result.returncode}")
            samples[name].append(seconds)
        shutil.rmtree(course / "autograder" / "autograded", ignore_errors=True)
    medians = {name: statistics.median(s) for name, s in samples.items()}
    data = {
        "benchmark": "grading",
        "machine": {**machine, "loadavg_at_end": loadavg()},
        "submissions": len(students),
        "assignment": "adamw",
        "rounds": args.rounds,
        "results": {name: summarise(s) for name, s in samples.items()},
        "per_submission_s": {name: m / len(students) for name, m in medians.items()},
        "ratios": {
            "sandbox_1_over_nbgrader": medians["sandbox_1"] / medians["nbgrader"],
            "speedup_2_workers": medians["sandbox_1"] / medians["sandbox_2"],
        },
        "targets": {"sandbox_1_over_nbgrader_max": 1.15, "speedup_2_workers_min": 1.7},
    }
    path = write_json(data, args.output)
    for name, m in medians.items():
        print(f"{name:>10}: {m:6.1f} s for {len(students)} submissions")
    for name, value in data["ratios"].items():
        print(f"{name}: {value:.3f}")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

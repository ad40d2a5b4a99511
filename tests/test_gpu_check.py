"""benchmarks/gpu_check.py: the CPU side of `make gpu-check` (the conversion, the dry run)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import gpu_check

ROOT = Path(__file__).resolve().parents[1]


def test_converted_chapter_is_up_to_date_with_its_myst_source():
    pytest.importorskip("jupytext")
    committed = gpu_check.CHAPTER_SCRIPT.read_text()
    assert committed == gpu_check.chapter_script_text(), (
        f"{gpu_check.CHAPTER_SCRIPT.name} is stale: book/memory.md changed since it was "
        "converted; run `make gpu-check` (or python -m benchmarks.gpu_check --prepare) and "
        "commit it"
    )
    compile(committed, str(gpu_check.CHAPTER_SCRIPT), "exec")  # a valid Python script
    assert "runtime.setup" in committed, "the script must set up (and print) its device"


def test_dry_run_lists_every_step_and_runs_nothing():
    result = subprocess.run(
        [sys.executable, "benchmarks/gpu_check.py", "--dry-run"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "gpu-check plan (4 steps, budget 480 s)" in out
    assert "pytest -m cuda" in out and "tests/test_fast_adamw.py" in out
    assert "benchmarks.adamw_step --device cuda --sets large --params 1073741824" in out
    assert "benchmarks.adamw8bit --device cuda" in out
    assert "COURSE_SCALE=full" in out and "benchmarks/gpu_check_memory.py" in out


def test_plan_finds_the_cuda_test_files_and_fits_the_budget():
    files = gpu_check.cuda_test_files()
    assert "tests/test_fast_adamw.py" in files and "tests/test_optim.py" in files
    assert "tests/test_gpu_check.py" not in files
    assert sum(step.timeout_s for step in gpu_check.plan()) <= 8 * 60


def test_without_a_gpu_it_says_so_and_exits_0(capsys, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert gpu_check.main([]) == 0
    out = capsys.readouterr().out
    assert "No CUDA device" in out and "gpu-check plan" in out


def test_targets_are_read_from_the_step_results():
    step = {
        "sets": {
            "large": {
                "ratios": {
                    "course_lib_fastest": "course_lib fused (compiled)",
                    "course_fastest_over_torch_fastest": 1.05,
                },
                "implementations": {"course_lib fused (compiled)": {"effective_gbps": 3400.0}},
                "copy": {"gbps": 4000.0},
            }
        }
    }
    targets = gpu_check.summarise_targets({"adamw_step_1b": {"results": step}})
    assert targets["adamw_fraction_of_copy_bandwidth"] == 0.85
    assert targets["adamw_at_least_80pct_of_copy"] is True
    assert targets["adamw_within_1.1x_of_fused"] is True


def test_bad_budget_is_refused():
    with pytest.raises(SystemExit):
        gpu_check.main(["--budget", "0"])

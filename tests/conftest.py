"""Shared test set-up: the hypothesis profiles, the CUDA marker, and a closing line that says
how many sandbox tests were skipped and why."""

from __future__ import annotations

import os

import pytest
import torch

try:
    from hypothesis import HealthCheck, settings
except ImportError:  # `make gpu-check` runs the CUDA tests where only pytest may be installed
    settings = None

# Every machine runs the same examples: derandomized, no example database. `make fuzz`
# selects the "fuzz" profile (random exploration, more examples) with HYPOTHESIS_PROFILE.
if settings is not None:
    settings.register_profile(
        "ci",
        derandomize=True,
        database=None,
        print_blob=True,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow],
    )
    settings.register_profile("fuzz", derandomize=False, max_examples=1000, deadline=None)
    settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

CUDA_REASON = "CUDA is not available on this machine; these tests run where a GPU is present"

DEVICES = [
    pytest.param("cpu", id="cpu"),
    pytest.param(
        "cuda",
        id="cuda",
        marks=[
            pytest.mark.cuda,
            pytest.mark.skipif(not torch.cuda.is_available(), reason=CUDA_REASON),
        ],
    ),
]


def pytest_unconfigure(config):
    """The run's last line, when sandbox tests were skipped: how many, why, and the fix."""
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    if reporter is None:
        return
    reasons: dict[str, int] = {}
    for report in reporter.stats.get("skipped", []):
        reason = str(report.longrepr[-1]) if isinstance(report.longrepr, tuple) else ""
        if "bubblewrap" in reason or "sandbox" in reason:
            reasons[reason] = reasons.get(reason, 0) + 1
    for reason, count in reasons.items():
        reporter.write_line(
            f"{count} sandbox test(s) SKIPPED: {reason.removeprefix('Skipped: ')}. "
            "Install it with: sudo apt-get install bubblewrap (make setup does this as root)",
            yellow=True,
        )

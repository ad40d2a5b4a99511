"""The schedule explorer draws each schedule exactly as course_lib.schedules computes it.

Every curve the static (no-kernel) explorer embeds, for every kind, warmup, floor and run
length its controls offer, is compared with the library's schedule built here independently,
from the hyperparameters the Scheduling chapter gives each schedule; then the page's own
script (run under node) is checked to hand the drawing those values times the peak. The
browser tests (tests/test_browser.py) drive the same explorer in the built book.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
from functools import partial

import pytest

from course_lib import schedule_explorer as X
from course_lib import schedules as S

DATA = X.explorer_data()


def library_schedule(kind: str, total: int, warmup_fraction: float, floor_fraction: float):
    """The schedule the explorer promises for its controls, from course_lib.schedules."""
    warmup = round(warmup_fraction * (total - 1))
    run = {"peak_lr": 1.0, "num_warmup_steps": warmup, "num_training_steps": total}
    floor = {"min_lr": floor_fraction}
    after = total - warmup
    return {
        "cosine": lambda: partial(S.cosine_schedule, **run, **floor),
        "linear": lambda: partial(S.linear_schedule, **run, **floor),
        "wsd (linear cooldown)": lambda: partial(
            S.wsd_schedule, **run, **floor, cooldown_fraction=0.2, cooldown="linear"
        ),
        "wsd (1-sqrt cooldown)": lambda: partial(
            S.wsd_schedule, **run, **floor, cooldown_fraction=0.2, cooldown="1-sqrt"
        ),
        "constant": lambda: partial(S.constant_schedule, peak_lr=1.0, num_warmup_steps=warmup),
        "inverse sqrt": lambda: partial(
            S.inverse_sqrt_schedule,
            peak_lr=1.0,
            num_warmup_steps=warmup,
            timescale=warmup or max(1, total // 100),
        ),
        "step decay": lambda: partial(
            S.step_decay_schedule,
            peak_lr=1.0,
            num_warmup_steps=warmup,
            step_size=math.ceil(after / 3),
            gamma=0.1,
        ),
        "cosine restarts": lambda: partial(
            S.cosine_restarts_schedule,
            peak_lr=1.0,
            num_warmup_steps=warmup,
            cycle_steps=math.ceil(after / 15),
            cycle_mult=2,
            **floor,
        ),
        # The chapter: one-cycle rises over the first 30% of the run, whatever the warmup.
        "one-cycle": lambda: partial(S.one_cycle_schedule, peak_lr=1.0, num_training_steps=total),
    }[kind]()


def runs():
    """(length, x, curve of (kind index, curve index)) for every run length offered."""
    yield X.REFERENCE_STEPS, DATA["x"], lambda k, i: DATA["kinds"][k]["curves"][i]
    for length, run in DATA["runs"].items():
        yield int(length), run["x"], lambda k, i, run=run: run["table"][run["curves"][k][i]]


def settings(kind):
    floors = DATA["floor"] if kind["usesFloor"] else [0.0]
    for w, warmup in enumerate(DATA["warmup"]):
        for f, floor in enumerate(floors):
            yield w * len(floors) + f, warmup, floor


def test_every_offered_length_has_curves():
    lengths = sorted([X.REFERENCE_STEPS, *map(int, DATA["runs"])])
    assert lengths == list(X.LENGTHS) == DATA["lengths"]
    # the length slider steps through powers of ten: exactly the lengths that have curves
    page = X.static_explorer_html(element_id="lengths")
    slider = page.split('data-role="length"', 1)[1].split(">", 1)[0]
    low, high = (int(slider.split(f'{bound}="', 1)[1].split('"', 1)[0]) for bound in ("min", "max"))
    assert [10**e for e in range(low, high + 1)] == list(X.LENGTHS)


@pytest.mark.parametrize("kind_index", range(len(X.KINDS)), ids=list(X.KINDS))
def test_every_curve_is_the_library_schedule(kind_index):
    kind = DATA["kinds"][kind_index]
    assert kind["name"] == X.KINDS[kind_index]
    for length, x, curve_of in runs():
        steps = [round(f * (length - 1)) for f in x]
        assert steps[0] == 0 and steps[-1] == length - 1 and steps == sorted(set(steps))
        assert len(steps) == min(length, X.NUM_POINTS)
        for index, warmup, floor in settings(kind):
            expected = library_schedule(kind["name"], length, warmup, floor)
            curve = curve_of(kind_index, index)
            for step, drawn in zip(steps, curve, strict=True):
                want = expected(step)
                assert drawn == pytest.approx(want, rel=5e-4, abs=1e-12), (
                    f"{kind['name']}, {length} steps, warmup {warmup:.0%}, floor {floor:.0%}: "
                    f"the explorer draws {drawn!r} at step {step}, the library computes {want!r}"
                )


@pytest.mark.parametrize("length", X.LENGTHS)
def test_one_cycle_rises_over_30_percent_whatever_the_warmup(length):
    """The bug this file was written for: one-cycle used to peak at the warmup control."""
    index = X.KINDS.index("one-cycle")
    kind = DATA["kinds"][index]
    assert kind["usesWarmup"] is False and kind["usesFloor"] is False
    for run_length, x, curve_of in runs():
        if run_length != length:
            continue
        steps = [round(f * (length - 1)) for f in x]
        peak_step = 0.3 * length - 1  # OneCycleLR's end of the first phase
        for w in range(len(DATA["warmup"])):
            curve = curve_of(index, w)
            top = max(range(len(curve)), key=curve.__getitem__)
            spacing = (length - 1) / (len(steps) - 1)
            assert abs(steps[top] - peak_step) <= spacing, (
                f"one-cycle over {length} steps peaks at step {steps[top]}, not near "
                f"{peak_step:.0f} (30% of the run), with the warmup control at "
                f"{DATA['warmup'][w]:.0%}"
            )
            assert curve[0] == pytest.approx(1 / 25, rel=1e-3)


def test_explorer_schedule_matches_the_library_at_any_length():
    for kind in X.KINDS:
        for total in (3, 4, 37, 5000, 12_345):
            for warmup in (0.0, 0.05, 0.5):
                lr = X.explorer_schedule(
                    kind, peak_lr=1.0, num_training_steps=total, warmup_fraction=warmup
                )
                if kind == "one-cycle" and 0.3 * total <= 1:
                    continue  # too short for a 30% rise: the explorer peaks at step 1
                expected = library_schedule(kind, total, warmup, 0.0)
                for step in {0, 1, total // 3, total // 2, total - 2, total - 1}:
                    assert lr(step) == expected(step), (kind, total, warmup, step)


PICK = """
const explorer = require(process.argv[2]);
const out = [];
for (const [k, w, f, peak, length] of JSON.parse(process.argv[3])) {
  out.push(explorer.pickCurve(explorer.DATA, k, w, f, peak, length));
}
console.log(JSON.stringify(out));
"""


@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")
def test_the_page_script_draws_the_library_values(tmp_path):
    """pickCurve, as the page runs it, gives each offered setting's schedule times the peak."""
    page = X.static_explorer_html(element_id="pick")
    (tmp_path / "explorer.js").write_text(page.split("<script>", 1)[1].split("</script>", 1)[0])
    (tmp_path / "pick.js").write_text(PICK)
    cases = []
    for k, kind in enumerate(DATA["kinds"]):
        for length in X.LENGTHS:
            w, f = (k + length) % len(DATA["warmup"]), k % len(DATA["floor"])
            cases.append((k, w, f if kind["usesFloor"] else 0, 10 ** (-3.5 + k % 3), length))
    result = subprocess.run(
        ["node", str(tmp_path / "pick.js"), str(tmp_path / "explorer.js"), json.dumps(cases)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    for (k, w, f, peak, length), picked in zip(cases, json.loads(result.stdout), strict=True):
        kind = DATA["kinds"][k]
        floor = DATA["floor"][f] if kind["usesFloor"] else 0.0
        expected = library_schedule(kind["name"], length, DATA["warmup"][w], floor)
        assert all(isinstance(step, int) for step in picked["steps"])
        want = [peak * expected(step) for step in picked["steps"]]
        assert picked["rates"] == pytest.approx(want, rel=5e-4, abs=1e-15), (
            f"{kind['name']}, {length} steps: the page draws other rates than the library"
        )

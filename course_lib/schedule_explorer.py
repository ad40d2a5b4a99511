"""Interactive views of the learning-rate schedules in :mod:`course_lib.schedules`.

Two views of the same curves, both computed by :mod:`course_lib.schedules` (no formula is
written twice):

- :func:`explorer` returns an ipywidgets UI (schedule kind, peak rate, warmup, floor, run
  length, log scale) that redraws a matplotlib plot. It needs a running kernel.
- :func:`static_explorer_html` returns a self-contained HTML snippet that still responds on a
  static web page, such as the built book, with no kernel: Python precomputes the curves of
  every setting the page offers (kind x warmup fraction x floor fraction x run length, at
  most 201 integer steps each, rate as a fraction of the peak) and a few lines of inline
  JavaScript pick the curve the controls name and multiply it by the chosen peak (every
  schedule here is proportional to its peak). So the page draws, at every step it plots,
  the rate :mod:`course_lib.schedules` computes. Nothing is fetched from the network.
  Display it in a notebook cell with ``IPython.display.HTML(static_explorer_html())``.

Both views build their schedules with :func:`explorer_schedule`, which maps the sliders
(fractions of the run and of the peak) onto each schedule's own hyperparameters.
"""

from __future__ import annotations

import functools
import html
import io
import itertools
import json
import math
from collections.abc import Sequence
from functools import partial
from typing import TYPE_CHECKING, Any

from course_lib import schedules as S

if TYPE_CHECKING:
    import ipywidgets

__all__ = [
    "FLOOR_FRACTIONS",
    "KINDS",
    "LENGTHS",
    "ONE_CYCLE_PCT_START",
    "REFERENCE_STEPS",
    "WARMUP_FRACTIONS",
    "explorer",
    "explorer_data",
    "explorer_schedule",
    "static_explorer_html",
]

KINDS = (
    "cosine",
    "linear",
    "wsd (linear cooldown)",
    "wsd (1-sqrt cooldown)",
    "constant",
    "inverse sqrt",
    "step decay",
    "cosine restarts",
    "one-cycle",
)
"""The schedule kinds both explorers offer, in menu order."""

_USES_FLOOR = frozenset(
    {"cosine", "linear", "wsd (linear cooldown)", "wsd (1-sqrt cooldown)", "cosine restarts"}
)
_NO_WARMUP = frozenset({"one-cycle"})
"""Kinds whose warmup is part of their own formula: the warmup control does not apply."""

ONE_CYCLE_PCT_START = 0.3
"""One-cycle rises over this fraction of the run (``OneCycleLR``'s and the library's default)."""

MAX_WARMUP_FRACTION = 0.5
"""The longest warmup the explorers offer, as a fraction of the run."""

WARMUP_FRACTIONS = (0.0, 0.01, 0.02, 0.05, 0.1, 0.2)
"""Warmup lengths of the static explorer's grid, as fractions of the run."""

FLOOR_FRACTIONS = (0.0, 0.01, 0.1, 0.3)
"""Floors (``min_lr``) of the static explorer's grid, as fractions of the peak."""

LENGTHS = (100, 1_000, 10_000, 100_000, 1_000_000)
"""The run lengths the static explorer offers; its curves are computed for each of them."""

REFERENCE_STEPS = 10_000
"""The static explorer's default run length (steps 0 .. 9999), whose curves are the top level
of :func:`explorer_data`; a length that :data:`LENGTHS` does not list is drawn from them."""

NUM_POINTS = 201
"""Points per curve of the static explorer (fewer for runs shorter than that): the integer
steps ``round(i * (T - 1) / 200)``, ``i = 0 .. 200``, first and last step included."""


def explorer_schedule(
    kind: str,
    *,
    peak_lr: float,
    num_training_steps: int,
    warmup_fraction: float = 0.05,
    floor_fraction: float = 0.0,
) -> S.Schedule:
    """The schedule the explorers draw for ``kind``, as a picklable ``functools.partial``.

    The warmup lasts ``W = round(warmup_fraction * (T - 1))`` steps and the floor is
    ``min_lr = floor_fraction * peak_lr``. Each kind fixes its other hyperparameters relative
    to the run, so that its shape depends on the fractions only:

    - ``wsd``: 20% cooldown; ``inverse sqrt``: ``timescale = W`` (``T // 100`` without warmup);
    - ``step decay``: ``gamma = 0.1`` at each third of the steps after the warmup;
    - ``cosine restarts``: cycles doubling in length, four of them after the warmup;
    - ``one-cycle``: :func:`course_lib.schedules.one_cycle_schedule` with its (OneCycleLR's)
      defaults: it rises from ``peak / 25`` over the first 30% of the run
      (:data:`ONE_CYCLE_PCT_START`; to step 1 in runs shorter than 4 steps) and anneals to
      ``peak / 250000``. Its warmup is part of its formula, so ``warmup_fraction`` does not
      change it.

    ``constant``, ``inverse sqrt``, ``step decay`` and ``one-cycle`` have no floor.
    """
    S._check_choice("kind", kind, KINDS)
    peak_lr = S._check_peak(peak_lr)
    total = S._check_int("num_training_steps", num_training_steps, minimum=3)
    warmup_fraction = S._check_real(
        "warmup_fraction", warmup_fraction, low=0.0, high=MAX_WARMUP_FRACTION
    )
    floor_fraction = S._check_real("floor_fraction", floor_fraction, low=0.0, high=1.0)
    warmup = round(warmup_fraction * (total - 1))
    run = {"peak_lr": peak_lr, "num_warmup_steps": warmup, "num_training_steps": total}
    floor = {"min_lr": floor_fraction * peak_lr}
    after_warmup = total - warmup
    schedule: S.Schedule
    if kind == "cosine":
        schedule = partial(S.cosine_schedule, **run, **floor)
    elif kind == "linear":
        schedule = partial(S.linear_schedule, **run, **floor)
    elif kind.startswith("wsd"):
        cooldown = "linear" if "linear" in kind else "1-sqrt"
        schedule = partial(S.wsd_schedule, **run, **floor, cooldown_fraction=0.2, cooldown=cooldown)
    elif kind == "constant":
        schedule = partial(S.constant_schedule, peak_lr=peak_lr, num_warmup_steps=warmup)
    elif kind == "inverse sqrt":
        schedule = partial(
            S.inverse_sqrt_schedule,
            peak_lr=peak_lr,
            num_warmup_steps=warmup,
            timescale=warmup or max(1, total // 100),
        )
    elif kind == "step decay":
        schedule = partial(
            S.step_decay_schedule,
            peak_lr=peak_lr,
            num_warmup_steps=warmup,
            step_size=max(1, -(-after_warmup // 3)),  # ceil: three levels, peak to peak / 100
            gamma=0.1,
        )
    elif kind == "cosine restarts":
        schedule = partial(
            S.cosine_restarts_schedule,
            peak_lr=peak_lr,
            num_warmup_steps=warmup,
            cycle_steps=max(1, -(-after_warmup // 15)),  # 1 + 2 + 4 + 8 = 15 cycle units
            cycle_mult=2,
            **floor,
        )
    else:  # "one-cycle": the library's defaults; OneCycleLR peaks at pct_start * T - 1
        pct_start = ONE_CYCLE_PCT_START if ONE_CYCLE_PCT_START * total > 1 else 2 / total
        if pct_start == ONE_CYCLE_PCT_START:
            schedule = partial(S.one_cycle_schedule, peak_lr=peak_lr, num_training_steps=total)
        else:  # a run of 3 steps: 30% of it ends before step 1
            schedule = partial(
                S.one_cycle_schedule, peak_lr=peak_lr, num_training_steps=total, pct_start=pct_start
            )
    schedule(0)  # check the combination now
    return schedule


def _sample_steps(total: int = REFERENCE_STEPS) -> list[int]:
    """The integer steps a static curve of a run of ``total`` steps is drawn at."""
    return sorted({round(i * (total - 1) / (NUM_POINTS - 1)) for i in range(NUM_POINTS)})


def _curves(total: int) -> tuple[list[float], list[dict[str, Any]]]:
    """``x`` (sample step / (T - 1)) and, per kind, its curves for a run of ``total`` steps."""
    steps = _sample_steps(total)
    kinds = []
    for kind in KINDS:
        uses_floor = kind in _USES_FLOOR
        floors = FLOOR_FRACTIONS if uses_floor else (0.0,)
        curves = []
        for warmup_fraction, floor_fraction in itertools.product(WARMUP_FRACTIONS, floors):
            schedule = explorer_schedule(
                kind,
                peak_lr=1.0,
                num_training_steps=total,
                warmup_fraction=warmup_fraction,
                floor_fraction=floor_fraction,
            )
            curves.append([float(f"{schedule(s):.4g}") for s in steps])
        kinds.append(
            {
                "name": kind,
                "usesFloor": uses_floor,
                "usesWarmup": kind not in _NO_WARMUP,
                "curves": curves,
            }
        )
    return [s / (total - 1) for s in steps], kinds


def explorer_data() -> dict[str, Any]:
    """The static explorer's curves, as embedded in its HTML.

    The top level is the run of :data:`REFERENCE_STEPS` steps: ``x[i]`` is a sample step as a
    fraction of the run (``step / (T - 1)``, an integer step once multiplied back), and every
    curve gives the rate as a fraction of the peak, to 4 significant digits. A kind that uses
    the floor has one curve per (warmup, floor) pair, at index ``warmup_index * len(floor) +
    floor_index``; the others one curve per warmup (one-cycle's are all the same: its warmup
    is its own). ``runs`` holds the other lengths of :data:`LENGTHS` by their number of steps
    (as a string), each with its own ``x`` and, per kind, ``curves`` indexed the same way as
    rows of its ``table`` (identical curves are stored once). Returns a fresh copy on every
    call.
    """
    return json.loads(_explorer_json())


@functools.lru_cache(maxsize=1)
def _explorer_json() -> str:
    """:func:`explorer_data` as compact JSON, computed once per session (a few seconds)."""
    x, kinds = _curves(REFERENCE_STEPS)
    runs = {}
    for total in LENGTHS:
        if total == REFERENCE_STEPS:
            continue
        run_x, run_kinds = _curves(total)
        table: list[list[float]] = []
        rows: dict[str, int] = {}
        index = []
        for kind in run_kinds:
            row_of_curve = []
            for curve in kind["curves"]:
                key = json.dumps(curve)
                if key not in rows:
                    rows[key] = len(table)
                    table.append(curve)
                row_of_curve.append(rows[key])
            index.append(row_of_curve)
        runs[str(total)] = {"x": run_x, "table": table, "curves": index}
    data = {
        "referenceSteps": REFERENCE_STEPS,
        "lengths": list(LENGTHS),
        "onePctStart": ONE_CYCLE_PCT_START,
        "x": x,
        "warmup": list(WARMUP_FRACTIONS),
        "floor": list(FLOOR_FRACTIONS),
        "kinds": kinds,
        "runs": runs,
    }
    return json.dumps(data, separators=(",", ":"))


# The script only reads the curves: pickCurve chooses one and multiplies it by the peak,
# draw() makes the SVG and the read-outs. It runs under node too (module.exports), which is
# how the tests check pickCurve; the browser tests read root.explorerCurve, the drawn curve.
_SCRIPT = r"""
(function () {
  "use strict";
  var DATA = __DATA__;
  var ROOT_ID = "__ROOT_ID__";

  // The curve course_lib.schedules computed for the chosen kind, warmup, floor and length,
  // times the peak. A length with no curves of its own stretches the reference run's.
  function pickCurve(data, kindIndex, warmupIndex, floorIndex, peak, length) {
    var kind = data.kinds[kindIndex];
    var index = kind.usesFloor ? warmupIndex * data.floor.length + floorIndex : warmupIndex;
    var run = data.runs && data.runs[String(length)];
    var x = run ? run.x : data.x;
    var curve = run ? run.table[run.curves[kindIndex][index]] : kind.curves[index];
    return {
      steps: x.map(function (f) { return run ? Math.round(f * (length - 1)) : f * (length - 1); }),
      rates: curve.map(function (y) { return y * peak; })
    };
  }

  function niceTicks(lo, hi) {
    var raw = (hi - lo) / 5, mag = Math.pow(10, Math.floor(Math.log10(raw)));
    var step = [1, 2, 5, 10].map(function (m) { return m * mag; })
      .filter(function (s) { return s >= raw; })[0];
    var ticks = [];
    for (var t = Math.ceil(lo / step) * step; t <= hi + 1e-9 * step; t += step) ticks.push(t);
    return ticks;
  }

  function fmtStep(v) {
    if (v >= 1e6) return +(v / 1e6).toPrecision(3) + "M";
    if (v >= 1e3) return +(v / 1e3).toPrecision(3) + "k";
    return String(Math.round(v));
  }

  function fmtRate(v) { return v === 0 ? "0" : v.toExponential(1); }

  function draw(root) {
    function el(role) { return root.querySelector('[data-role="' + role + '"]'); }
    function say(role, text) { var node = el(role); if (node) node.textContent = text; }
    var kindIndex = +el("kind").value, warmupIndex = +el("warmup").value;
    var floorIndex = +el("floor").value, log = el("log").checked;
    var peak = Math.pow(10, +el("peak").value);
    var length = Math.round(Math.pow(10, +el("length").value));
    var kind = DATA.kinds[kindIndex];
    var usesWarmup = kind.usesWarmup !== false;
    el("floor").disabled = !kind.usesFloor;
    el("warmup").disabled = !usesWarmup;
    say("peak-out", fmtRate(peak));
    say("length-out", fmtStep(length) + " steps");
    say("warmup-out", usesWarmup ?
      Math.round(DATA.warmup[warmupIndex] * 100) + "% (" +
        fmtStep(Math.round(DATA.warmup[warmupIndex] * (length - 1))) + " steps)" :
      "not used: " + kind.name + " rises over " + Math.round(DATA.onePctStart * 100) + "%");
    say("floor-out", kind.usesFloor ?
      DATA.floor[floorIndex] * 100 + "% of peak" : "not used by " + kind.name);

    var curve = pickCurve(DATA, kindIndex, warmupIndex, floorIndex, peak, length);
    root.explorerCurve = {kind: kind.name, peak: peak, length: length, steps: curve.steps,
                          rates: curve.rates};
    var top = 0;
    for (var k = 1; k < curve.rates.length; k++) if (curve.rates[k] > curve.rates[top]) top = k;
    say("summary", kind.name + ": starts at " + fmtRate(curve.rates[0]) + ", highest " +
      fmtRate(curve.rates[top]) + " at step " + fmtStep(curve.steps[top]) + ", ends at " +
      fmtRate(curve.rates[curve.rates.length - 1]));

    var W = 640, H = 320, left = 72, right = 16, top_ = 12, bottom = 48;
    var xMax = Math.max(1, length - 1);
    function px(step) { return left + (W - left - right) * step / xMax; }
    var py, yTicks;
    if (log) {
      var positive = curve.rates.filter(function (r) { return r > 0; });
      var lo = Math.floor(Math.log10(Math.min.apply(null, positive.concat([peak])))) ;
      var hi = Math.ceil(Math.log10(peak * 1.0001));
      if (hi === lo) hi = lo + 1;
      py = function (r) { return top_ + (H - top_ - bottom) * (hi - Math.log10(r)) / (hi - lo); };
      yTicks = [];
      for (var e = lo; e <= hi; e++) yTicks.push(Math.pow(10, e));
    } else {
      var yMax = peak * 1.05;
      py = function (r) { return top_ + (H - top_ - bottom) * (1 - r / yMax); };
      yTicks = niceTicks(0, yMax);
    }
    var path = "", pen = "M";
    for (var i = 0; i < curve.steps.length; i++) {
      if (log && !(curve.rates[i] > 0)) { pen = "M"; continue; }
      path += pen + px(curve.steps[i]).toFixed(1) + "," + py(curve.rates[i]).toFixed(1) + " ";
      pen = "L";
    }
    var svg = '<rect x="' + left + '" y="' + top_ + '" width="' + (W - left - right) +
      '" height="' + (H - top_ - bottom) + '" fill="none" stroke="#888"/>';
    niceTicks(0, xMax).forEach(function (t) {
      svg += '<line x1="' + px(t) + '" x2="' + px(t) + '" y1="' + (H - bottom) + '" y2="' +
        (H - bottom + 5) + '" stroke="#888"/><text x="' + px(t) + '" y="' + (H - bottom + 18) +
        '" text-anchor="middle" font-size="13">' + fmtStep(t) + "</text>";
    });
    yTicks.forEach(function (t) {
      svg += '<line x1="' + (left - 5) + '" x2="' + left + '" y1="' + py(t) + '" y2="' + py(t) +
        '" stroke="#888"/><text x="' + (left - 8) + '" y="' + (py(t) + 4) +
        '" text-anchor="end" font-size="13">' + fmtRate(t) + "</text>";
    });
    svg += '<text x="' + ((W + left - right) / 2) + '" y="' + (H - 8) +
      '" text-anchor="middle" font-size="14">step</text>';
    svg += '<text transform="translate(16,' + ((H + top_ - bottom) / 2) +
      ') rotate(-90)" text-anchor="middle" font-size="14">learning rate</text>';
    svg += '<path d="' + path +
      '" data-role="curve" fill="none" stroke="#1f77b4" stroke-width="2"/>';
    el("plot").innerHTML = svg;
  }

  if (typeof module !== "undefined" && module.exports) {
    module.exports = { DATA: DATA, pickCurve: pickCurve };
  }
  if (typeof document !== "undefined") {
    var root = document.getElementById(ROOT_ID);
    if (root) {
      root.querySelectorAll("select, input").forEach(function (control) {
        control.addEventListener("input", function () { draw(root); });
        control.addEventListener("change", function () { draw(root); });
      });
      draw(root);
    }
  }
})();
"""

_HTML = """\
<div id="{root_id}" class="course-schedule-explorer"
     style="font-family: sans-serif; font-size: 14px; max-width: 680px;">
  <div style="display: grid; grid-template-columns: 7em 1fr 11em; gap: 4px 8px;
              align-items: center;">
    <label for="{root_id}-kind">schedule</label>
    <select id="{root_id}-kind" data-role="kind">{options}</select><span></span>
    <label for="{root_id}-peak">peak rate</label>
    <input id="{root_id}-peak" data-role="peak" type="range" min="-5" max="-1" step="0.1"
           value="-3.5"><output data-role="peak-out"></output>
    <label for="{root_id}-warmup">warmup</label>
    <input id="{root_id}-warmup" data-role="warmup" type="range" min="0" max="{max_warmup}"
           step="1" value="{warmup_value}"><output data-role="warmup-out"></output>
    <label for="{root_id}-floor">floor</label>
    <input id="{root_id}-floor" data-role="floor" type="range" min="0" max="{max_floor}"
           step="1" value="{floor_value}"><output data-role="floor-out"></output>
    <label for="{root_id}-length">run length</label>
    <input id="{root_id}-length" data-role="length" type="range" min="{min_length}"
           max="{max_length}" step="1" value="{length_value}"><output data-role="length-out"></output>
    <span></span>
    <label><input data-role="log" type="checkbox"> log scale</label><span></span>
  </div>
  <output data-role="summary" style="display: block; margin-top: 6px;"></output>
  <svg data-role="plot" viewBox="0 0 640 320" width="100%" role="img"
       aria-label="The chosen learning-rate schedule: learning rate against step"></svg>
  <p style="font-size: 13px; color: #555;">Each curve is <code>course_lib.schedules</code>'s
  value at up to {num_points} integer steps of the run, computed when this page was built for
  every schedule, warmup, floor and run length offered here, and multiplied by the peak.</p>
</div>
<script>{script}</script>
"""

_counter = itertools.count()


def static_explorer_html(*, element_id: str | None = None) -> str:
    """A self-contained HTML snippet: the schedule explorer without a kernel.

    A ``<select>`` for the kind, range inputs for the peak rate (log scale, 1e-5 to 1e-1),
    the warmup (a fraction of the run), the floor (a fraction of the peak) and the run length
    (:data:`LENGTHS`, 100 to 1,000,000 steps), a log-scale checkbox, a read-out of where the
    curve starts, peaks and ends, and an inline SVG plot with labelled axes, all driven by an
    inline ``<script>`` that holds the curves of :func:`explorer_data` as JSON. No external scripts, styles or fonts. ``element_id`` names the outer ``<div>``
    (default: a fresh id per call), so several explorers can share a page.
    """
    root_id = element_id or f"course-schedule-explorer-{next(_counter)}"
    if not isinstance(root_id, str) or not root_id.replace("-", "").replace("_", "").isalnum():
        raise ValueError(
            f"Invalid element_id: {element_id!r} (expected letters, digits, '-' and '_')"
        )
    data = _explorer_json().replace("</", "<\\/")
    script = _SCRIPT.replace("__DATA__", data).replace("__ROOT_ID__", root_id)
    options = "".join(
        f'<option value="{i}">{html.escape(kind)}</option>' for i, kind in enumerate(KINDS)
    )
    return _HTML.format(
        root_id=root_id,
        options=options,
        max_warmup=len(WARMUP_FRACTIONS) - 1,
        warmup_value=WARMUP_FRACTIONS.index(0.05),
        max_floor=len(FLOOR_FRACTIONS) - 1,
        floor_value=FLOOR_FRACTIONS.index(0.1),
        min_length=round(math.log10(LENGTHS[0])),
        max_length=round(math.log10(LENGTHS[-1])),
        length_value=round(math.log10(REFERENCE_STEPS)),
        num_points=NUM_POINTS,
        script=script,
    )


def explorer(
    *,
    kind: str = "cosine",
    peak_lr: float = 3e-4,
    num_training_steps: int = 10_000,
    warmup_fraction: float = 0.05,
    floor_fraction: float = 0.1,
    num_points: int = 2000,
) -> ipywidgets.VBox:
    """An ipywidgets UI that redraws a schedule as its sliders move (needs a kernel).

    Controls: the schedule kind, the peak rate (log slider), the run length, the warmup as a
    fraction of the run, the floor as a fraction of the peak, and a log-scale checkbox. The
    plot is a PNG in an ``ipywidgets.Image``, drawn in the course's style with
    :func:`course_lib.schedules.plot_schedules` at ``num_points`` evenly spaced steps (no
    pyplot state is touched); sliders redraw when released.
    """
    import ipywidgets as widgets
    import matplotlib
    from matplotlib.figure import Figure

    from course_lib import plotting

    explorer_schedule(  # fail now, with the argument's name, on bad starting values
        kind,
        peak_lr=peak_lr,
        num_training_steps=num_training_steps,
        warmup_fraction=warmup_fraction,
        floor_fraction=floor_fraction,
    )
    style = {"description_width": "8em"}
    layout = widgets.Layout(width="32em")
    common = {"style": style, "layout": layout, "continuous_update": False}
    kind_w = widgets.Dropdown(options=KINDS, value=kind, description="schedule", style=style)
    log_w = widgets.Checkbox(value=False, description="log scale", indent=False)
    peak_w = widgets.FloatLogSlider(
        value=peak_lr,
        base=10,
        min=min(-5, math.floor(math.log10(peak_lr))),
        max=max(-1, math.ceil(math.log10(peak_lr))),
        step=0.1,
        description="peak rate",
        readout_format=".1e",
        **common,
    )
    length_w = widgets.IntSlider(
        value=num_training_steps,
        min=min(100, num_training_steps),
        max=max(100_000, num_training_steps),
        step=100,
        description="run length",
        **common,
    )
    warmup_w = widgets.FloatSlider(
        value=warmup_fraction,
        min=0.0,
        max=MAX_WARMUP_FRACTION,
        step=0.01,
        description="warmup",
        readout_format=".0%",
        **common,
    )
    floor_w = widgets.FloatSlider(
        value=floor_fraction,
        min=0.0,
        max=1.0,
        step=0.01,
        description="floor / peak",
        readout_format=".2f",
        **common,
    )
    info = widgets.HTML()
    image = widgets.Image(format="png")

    def redraw(_change: object = None) -> None:
        total = length_w.value
        try:
            schedule = explorer_schedule(
                kind_w.value,
                peak_lr=peak_w.value,
                num_training_steps=total,
                warmup_fraction=warmup_w.value,
                floor_fraction=floor_w.value,
            )
        except (ValueError, TypeError) as err:
            info.value = f"<b>cannot draw:</b> {html.escape(str(err))}"
            return
        floor_w.disabled = kind_w.value not in _USES_FLOOR
        warmup_steps = round(warmup_w.value * (total - 1))
        floor_text = (
            f"floor {floor_w.value * peak_w.value:.2e}"
            if kind_w.value in _USES_FLOOR
            else "no floor"
        )
        info.value = (
            f"warmup {warmup_steps} steps, peak {peak_w.value:.2e}, {floor_text}; "
            f"final rate {schedule(total - 1):.2e}"
        )
        with matplotlib.rc_context(plotting.STYLE):
            figure = Figure(figsize=(7, 3.6), layout="constrained")
            ax = figure.subplots()
            S.plot_schedules(
                {kind_w.value: schedule}, total, ax=ax, log=log_w.value, num_points=num_points
            )
            buffer = io.BytesIO()
            figure.savefig(buffer, format="png", dpi=96)
        image.value = buffer.getvalue()

    controls: Sequence[widgets.ValueWidget] = (kind_w, log_w, peak_w, length_w, warmup_w, floor_w)
    for control in controls:
        control.observe(redraw, names="value")
    redraw()
    return widgets.VBox(
        [widgets.HBox([kind_w, log_w]), peak_w, length_w, warmup_w, floor_w, info, image]
    )

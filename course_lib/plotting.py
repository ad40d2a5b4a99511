"""The course's figure style, in one place.

Figures are drawn for the book's text column, not for a screen: every figure is
:data:`COLUMN_WIDTH` inches wide with one or two panels per row, and the page shows it at the
column's width (about 700 to 800 CSS pixels at a 1280-pixel window). Its PNG has :data:`DPI`
pixels per inch, twice what the page needs, so it stays sharp on high-density screens and
opens at full resolution when clicked. Text is never smaller than :data:`MIN_FONT_SIZE`
points in the figure, which is at least 9 points as displayed in a column of
:data:`MIN_COLUMN_PX` CSS pixels or more (:func:`displayed_points` does the arithmetic).
"""

from __future__ import annotations

import matplotlib as mpl
import matplotlib.pyplot as plt

COLUMN_WIDTH = 7.0
"""Width of every figure, in inches (the width of the book's text column)."""

DPI = 200
"""Pixels per inch of the figures' PNGs: a figure is ``COLUMN_WIDTH * DPI`` pixels wide."""

MIN_FONT_SIZE = 9.0
"""The smallest font size the style and the chapters use, in points (legends, annotations)."""

MIN_COLUMN_PX = 680
"""The narrowest text column (CSS pixels) for which the figures' text is legible as drawn."""

ROW_HEIGHT = {1: 3.9, 2: 3.2}
"""Height of a row of panels, in inches, for one and for two panels per row."""

STYLE = {
    "figure.figsize": (COLUMN_WIDTH, ROW_HEIGHT[1]),
    "figure.dpi": DPI,
    "savefig.dpi": DPI,
    "font.size": 11.0,
    "axes.titlesize": 11.0,
    "axes.labelsize": 11.0,
    "xtick.labelsize": 10.0,
    "ytick.labelsize": 10.0,
    "legend.fontsize": 9.5,
    "legend.title_fontsize": 10.0,
    "figure.titlesize": 12.0,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "legend.frameon": False,
    "lines.linewidth": 1.6,
}


def displayed_points(font_size: float, column_px: float = MIN_COLUMN_PX) -> float:
    """How large text of ``font_size`` points looks, in points, with the figure scaled to a
    column ``column_px`` CSS pixels wide (96 CSS pixels per inch, 72 points per inch)."""
    scale = column_px / (COLUMN_WIDTH * 96.0)
    return font_size * scale


def use_course_style() -> None:
    """Apply the course's matplotlib style to every figure that follows."""
    mpl.rcParams.update(STYLE)


def subplots(ncols: int = 1, nrows: int = 1, **kwargs):
    """``plt.subplots`` in the course style: the column's width, one or two panels per row.

    The figure is :data:`COLUMN_WIDTH` inches wide whatever the number of panels, and
    ``nrows`` rows of :data:`ROW_HEIGHT` high; pass ``figsize`` to override.
    """
    if not isinstance(ncols, int) or not 1 <= ncols <= 2:
        raise ValueError(
            f"Invalid ncols: {ncols!r} (expected 1 or 2 panels per row: the figure has the "
            "width of the text column; stack more panels in rows)"
        )
    use_course_style()
    kwargs.setdefault("figsize", (COLUMN_WIDTH, ROW_HEIGHT[ncols] * nrows))
    kwargs.setdefault("layout", "constrained")
    return plt.subplots(nrows, ncols, **kwargs)

"""The course's figure style, in one place."""

from __future__ import annotations

import matplotlib as mpl
import matplotlib.pyplot as plt

STYLE = {
    "figure.figsize": (7.0, 4.0),
    "figure.dpi": 100,
    "savefig.dpi": 150,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.titlesize": "medium",
    "legend.frameon": False,
    "lines.linewidth": 1.6,
}


def use_course_style() -> None:
    """Apply the course's matplotlib style to every figure that follows."""
    mpl.rcParams.update(STYLE)


def subplots(ncols: int = 1, nrows: int = 1, **kwargs):
    """``plt.subplots`` in the course style, sized for the number of panels."""
    use_course_style()
    width, height = STYLE["figure.figsize"]
    kwargs.setdefault("figsize", (width * min(ncols, 2) if ncols > 1 else width, height * nrows))
    kwargs.setdefault("layout", "constrained")
    return plt.subplots(nrows, ncols, **kwargs)

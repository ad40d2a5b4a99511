"""Sweeps over a hyperparameter whose best value must lie inside the grid, not on its edge.

An optimum on the edge of a grid is only a bound: the true best may lie beyond it.
:func:`interior_best` refuses such an optimum and says which side to extend;
:func:`sweep_until_interior` extends a geometric grid on that side until the best value is
inside it::

    grid, losses = sweep_until_interior(final_loss, [1e-3, 2e-3, 4e-3], factor=2)

``final_loss(x)`` may return one number or an array of numbers (one per seed): the sweep
compares their means, so a noisy seed does not pick the side alone.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from tqdm.auto import tqdm

from course_lib.train import progress_enabled

__all__ = ["EdgeOptimum", "interior_best", "log_vertex", "mean_score", "sweep_until_interior"]


class EdgeOptimum(ValueError):
    """The best value of a sweep is on the edge of its grid; ``side`` is "low" or "high"."""

    def __init__(self, message: str, side: str):
        super().__init__(message)
        self.side = side


def interior_best(grid: Sequence[float], values: Sequence) -> int:
    """Index of the smallest (mean) value; :class:`EdgeOptimum` if it is the first or last.

    ``values[i]`` is a number or the results of several seeds at ``grid[i]``. A minimum at
    either end is refused: the message names the side to extend.
    """
    grid = np.asarray(grid, dtype=float)
    means = np.array([np.mean(v) for v in values], dtype=float)
    if grid.ndim != 1 or len(grid) != len(means):
        raise ValueError(f"grid has {grid.size} points but {len(means)} values were given")
    if len(grid) < 3:
        raise ValueError(f"an interior optimum needs a grid of at least 3 points, got {len(grid)}")
    if not np.all(np.diff(grid) > 0):
        raise ValueError(f"the grid must increase: {grid.tolist()}")
    if np.all(np.isnan(means)):
        raise ValueError("every value is NaN: nothing on this grid trained")
    best = int(np.nanargmin(means))
    if best == 0:
        raise EdgeOptimum(
            f"the best value is at the grid's low edge {grid[0]:g}: extend it lower", "low"
        )
    if best == len(grid) - 1:
        raise EdgeOptimum(
            f"the best value is at the grid's high edge {grid[-1]:g}: extend it higher", "high"
        )
    return best


def mean_score(value) -> float:
    """One grid point's score: the mean over its seeds, ``inf`` if any seed diverged (inf or
    NaN), so that a diverged point is worse than any that trained."""
    value = np.asarray(value, dtype=float)
    return float(value.mean()) if np.all(np.isfinite(value)) else np.inf


def log_vertex(grid: np.ndarray, scores: np.ndarray, best: int) -> float:
    """Refine ``grid[best]`` between grid points: the vertex, on a log axis, of the parabola
    through the three scores around it (the three nearest the edge when ``best`` is on it),
    clipped to the grid. ``grid[best]`` itself when a score there is not finite or the
    parabola has no minimum (three equal scores)."""
    centre = min(max(best, 1), len(grid) - 2)
    x = np.log(grid[centre - 1 : centre + 2])
    y = scores[centre - 1 : centre + 2]
    if not np.all(np.isfinite(y)):
        return float(grid[best])
    a, b, _ = np.polyfit(x - x[1], y, 2)
    if a <= 0:
        return float(grid[best])
    vertex = x[1] - b / (2 * a)
    return float(np.exp(np.clip(vertex, np.log(grid[0]), np.log(grid[-1]))))


def sweep_until_interior(
    evaluate: Callable[[float], float | Sequence[float]],
    grid: Sequence[float],
    *,
    factor: float = 2.0,
    max_extensions: int = 6,
    desc: str | None = None,
) -> tuple[list[float], list]:
    """Evaluate ``grid``, then extend it by ``factor`` on the side of an edge optimum.

    Returns the final grid (increasing) and the values, one per point. Raises
    :class:`EdgeOptimum` if the optimum is still on an edge after ``max_extensions``.
    A value that is not finite (a diverged run) counts as worse than any finite one.
    """
    if factor <= 1:
        raise ValueError(f"factor must be greater than 1, got {factor}")
    points = sorted(float(x) for x in grid)
    bar = tqdm(total=len(points), desc=desc or "sweep", disable=not progress_enabled(), leave=False)
    values = {}
    for x in points:
        values[x] = evaluate(x)
        bar.update()
    for extension in range(max_extensions + 1):
        keys = sorted(values)
        try:
            interior_best(keys, [mean_score(values[k]) for k in keys])
            bar.close()
            return keys, [values[k] for k in keys]
        except EdgeOptimum as edge:
            if extension == max_extensions:
                bar.close()
                raise EdgeOptimum(
                    f"{edge} (still on the edge after {max_extensions} extensions)", edge.side
                ) from None
            x = keys[0] / factor if edge.side == "low" else keys[-1] * factor
            bar.total += 1
            values[x] = evaluate(x)
            bar.update()
    raise AssertionError("unreachable")

"""course_lib.sweeps: an optimum must be inside its grid, and the grid grows until it is."""

from __future__ import annotations

import numpy as np
import pytest

from course_lib.sweeps import (
    EdgeOptimum,
    interior_best,
    log_vertex,
    mean_score,
    sweep_until_interior,
)


def test_interior_best_refuses_an_edge_and_names_the_side():
    grid = [1.0, 2.0, 4.0, 8.0]
    assert interior_best(grid, [3.0, 1.0, 2.0, 5.0]) == 1
    assert interior_best(grid, [[3.0, 3.2], [2.0, 2.4], [1.0, 9.0], [4.0, 4.0]]) == 1  # means
    with pytest.raises(EdgeOptimum, match="high edge 8: extend it higher") as edge:
        interior_best(grid, [4.0, 3.0, 2.0, 1.0])
    assert edge.value.side == "high"
    with pytest.raises(EdgeOptimum, match="low edge 1") as edge:
        interior_best(grid, [1.0, 2.0, 3.0, 4.0])
    assert edge.value.side == "low"


def test_sweep_extends_until_the_optimum_is_inside():
    calls = []

    def loss(lr):  # a valley at lr = 32, diverging (inf) above 200
        calls.append(lr)
        return np.inf if lr > 200 else (np.log2(lr) - 5.0) ** 2 + 0.1 * lr / 32

    grid, values = sweep_until_interior(loss, [1.0, 2.0, 4.0])
    assert grid == [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0]
    assert grid[int(np.argmin(values))] == 32.0
    assert sorted(calls) == grid  # each point evaluated once
    low_grid, _ = sweep_until_interior(loss, [256.0, 512.0, 1024.0], factor=4)
    assert low_grid[0] < 32.0 < low_grid[-1]
    with pytest.raises(EdgeOptimum, match="after 2 extensions"):
        sweep_until_interior(lambda lr: -lr, [1.0, 2.0, 3.0], max_extensions=2)


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: interior_best([1.0, 2.0], [1.0, 2.0]), "at least 3 points"),
        (lambda: interior_best([1.0, 3.0, 2.0], [1.0, 0.0, 2.0]), "must increase"),
        (lambda: interior_best([1.0, 2.0, 3.0], [1.0, 2.0]), "3 points but 2 values"),
        (lambda: sweep_until_interior(lambda x: x, [1.0, 2.0, 3.0], factor=1), "factor"),
    ],
)
def test_bad_sweeps_are_clear_errors(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_mean_score_counts_a_diverged_seed_as_worst():
    assert mean_score([1.0, 3.0]) == 2.0
    assert mean_score([1.0, float("nan")]) == float("inf")
    assert mean_score(float("inf")) == float("inf")


def test_log_vertex_places_the_minimum_between_grid_points():
    grid = np.array([1.0, 2.0, 4.0, 8.0, 16.0])
    scores = (np.log(grid) - np.log(3.0)) ** 2  # a parabola in log(x), minimum at 3
    assert log_vertex(grid, scores, 1) == pytest.approx(3.0, rel=1e-9)
    edge = (np.log(grid) - np.log(100.0)) ** 2  # minimum beyond the grid: clipped to it
    assert log_vertex(grid, edge, 4) == pytest.approx(16.0)
    assert log_vertex(grid, np.ones(5), 2) == 4.0  # no curvature: the grid point
    assert log_vertex(grid, np.array([1.0, np.inf, 0.5, 2.0, 3.0]), 2) == 4.0  # diverged neighbour

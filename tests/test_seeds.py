"""course_lib.seeds: runs over seeds, their spread, and bootstrap intervals."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from course_lib.seeds import bootstrap_interval, over_seeds


def test_each_run_starts_from_its_own_seed():
    # the same draw whatever ran before: run 1 is the same alone or after run 0
    both = over_seeds(lambda seed: torch.randn(3).numpy(), seeds=[0, 1])
    alone = over_seeds(lambda seed: torch.randn(3).numpy(), seeds=[1, 2])
    np.testing.assert_array_equal(both.values[1], alone.values[0])
    assert not np.array_equal(both.values[0], both.values[1])
    assert both.seeds == (0, 1)


def test_mean_std_and_spread_of_numbers_and_arrays():
    runs = over_seeds(lambda seed: float(seed), seeds=[1, 2, 6])
    assert runs.mean == pytest.approx(3.0)
    assert runs.std == pytest.approx(np.std([1, 2, 6], ddof=1))
    assert runs.spread == (1.0, 6.0)
    curves = over_seeds(lambda seed: np.array([seed, 2 * seed]), seeds=3)
    np.testing.assert_allclose(curves.mean, [1.0, 2.0])
    assert curves.values.shape == (3, 2)


def test_bootstrap_interval_covers_the_mean_and_narrows_with_more_runs():
    rng = np.random.default_rng(1)
    few, many = rng.normal(5.0, 1.0, size=5), rng.normal(5.0, 1.0, size=200)
    lo_few, hi_few = bootstrap_interval(few)
    lo_many, hi_many = bootstrap_interval(many)
    assert lo_few < few.mean() < hi_few
    assert lo_many < 5.0 < hi_many
    assert hi_many - lo_many < (hi_few - lo_few) / 3
    # a fixed generator: the same interval every build
    assert bootstrap_interval(few) == bootstrap_interval(few)


def test_bootstrap_interval_of_another_statistic():
    samples = np.array([[1.0, 0.0], [3.0, 0.0], [5.0, 0.0]])
    lo, hi = bootstrap_interval(samples, lambda s: s.max(axis=0))
    np.testing.assert_allclose(hi, [5.0, 0.0])
    assert 1.0 <= lo[0] <= 5.0


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: over_seeds(lambda s: 0.0, seeds=1), "at least 2 seeds"),
        (lambda: over_seeds(lambda s: 0.0, seeds=[3, 3]), "repeat"),
        (lambda: over_seeds(lambda s: np.zeros(s + 1), seeds=2), "same shape"),
        (lambda: bootstrap_interval(np.array([1.0])), "at least 2 runs"),
        (lambda: bootstrap_interval(np.ones(3), level=1.5), "level"),
    ],
)
def test_bad_input_is_a_clear_error(call, message):
    with pytest.raises(ValueError, match=message):
        call()

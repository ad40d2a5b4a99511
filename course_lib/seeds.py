"""Run an experiment over seeds and say how much its result moves: mean, spread, interval.

One small-scale run is noise plus signal. Every experiment whose result the book quotes runs
through :func:`over_seeds`, and the prose quotes the mean with its spread or its bootstrap
interval, so a reader can see whether a difference is larger than the noise::

    runs = over_seeds(lambda seed: final_loss(lr=1e-3, seed=seed), seeds=3, desc="lr 1e-3")
    runs.mean, runs.std, runs.interval()   # numbers, or arrays when the function returns arrays

:func:`bootstrap_interval` resamples any statistic of the runs (a fitted exponent, an
argmin) with a fixed generator, so a build gives the same interval every time.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
from tqdm.auto import tqdm

from course_lib import runtime
from course_lib.train import progress_enabled

__all__ = ["SeedRuns", "bootstrap_interval", "over_seeds"]


def bootstrap_interval(
    samples: np.ndarray,
    statistic: Callable[[np.ndarray], float | np.ndarray] = lambda s: np.mean(s, axis=0),
    *,
    level: float = 0.95,
    resamples: int = 2000,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Percentile bootstrap interval of ``statistic`` over the first axis of ``samples``.

    ``samples[i]`` is the result of run ``i`` (a number or an array); ``statistic`` maps a
    resampled stack of runs to a number or an array. Returns ``(low, high)``.
    """
    samples = np.asarray(samples, dtype=float)
    if samples.ndim == 0 or len(samples) < 2:
        raise ValueError(f"a bootstrap interval needs at least 2 runs, got {np.size(samples)}")
    if not 0 < level < 1:
        raise ValueError(f"level must be between 0 and 1, got {level}")
    if resamples < 100:
        raise ValueError(f"use at least 100 resamples, got {resamples}")
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(samples), size=(resamples, len(samples)))
    values = np.stack([np.asarray(statistic(samples[p]), dtype=float) for p in picks])
    tail = (1 - level) / 2
    return np.quantile(values, tail, axis=0), np.quantile(values, 1 - tail, axis=0)


@dataclass(frozen=True)
class SeedRuns:
    """The results of one experiment at several seeds, run ``i`` at ``seeds[i]``."""

    seeds: tuple[int, ...]
    values: np.ndarray  # shape (len(seeds), *result shape)

    @property
    def mean(self) -> np.ndarray | float:
        return self.values.mean(axis=0)

    @property
    def std(self) -> np.ndarray | float:
        """Sample standard deviation across seeds (``ddof=1``)."""
        return self.values.std(axis=0, ddof=1)

    @property
    def spread(self) -> tuple[np.ndarray, np.ndarray]:
        """The smallest and largest result across seeds."""
        return self.values.min(axis=0), self.values.max(axis=0)

    def interval(self, level: float = 0.95, **kwargs) -> tuple[np.ndarray, np.ndarray]:
        """Bootstrap interval of the mean across seeds."""
        return bootstrap_interval(self.values, level=level, **kwargs)


def over_seeds(
    run: Callable[[int], float | np.ndarray],
    seeds: int | Iterable[int] = 3,
    *,
    desc: str | None = None,
) -> SeedRuns:
    """Call ``run(seed)`` for each seed (``seeds=3`` means 0, 1, 2); stack the results.

    Each call starts from :func:`course_lib.runtime.seed_everything` at its seed, so a run
    does not depend on what ran before it. Results must all have the same shape.
    """
    seeds = tuple(range(seeds)) if isinstance(seeds, int) else tuple(int(s) for s in seeds)
    if len(seeds) < 2:
        raise ValueError(f"an experiment needs at least 2 seeds to show its spread, got {seeds}")
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds repeat: {seeds}")
    results = []
    for seed in tqdm(seeds, desc=desc or "seeds", disable=not progress_enabled(), leave=False):
        runtime.seed_everything(seed)
        value = np.asarray(run(seed), dtype=float)
        if results and value.shape != results[0].shape:
            raise ValueError(
                f"seed {seed} returned shape {value.shape}, seed {seeds[0]} returned "
                f"{results[0].shape}: every run must return the same shape"
            )
        results.append(value)
    return SeedRuns(seeds, np.stack(results))

"""Uncertainty a reader can act on: bootstrap intervals for a row's mean recall and for its gain over random.

The unit that is resampled is the **seed**: each seed is one distillation scored by its students, and its
value is the mean over those students. Resampling seeds with all of their students is the cluster
bootstrap, which carries both the seed-to-seed and the student-to-student variation; resampling students
inside seeds as well would count the student variance twice. The gain over random is paired by seed (a
method's seed s against random's seed s, whose students start from the same initialisations), so what the
seeds share cancels. Intervals are percentile intervals of ``scipy.stats.bootstrap`` with a fixed seed:
the same records always give the same table. With fewer than two seeds there is no interval; with three
the 95% interval is close to the range of the seeds' values, which is what three seeds can tell.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.stats import bootstrap

CONFIDENCE = 0.95
RESAMPLES = 9999
BOOTSTRAP_SEED = 0


def mean_interval(values: np.ndarray | list[float]) -> tuple[float, float]:
    """95% percentile-bootstrap interval of the mean of per-seed values; (nan, nan) below two seeds."""
    values = np.asarray(values, dtype=np.float64)
    if len(values) < 2:
        return math.nan, math.nan
    if np.all(values == values[0]):
        return float(values[0]), float(values[0])
    result = bootstrap((values,), np.mean, n_resamples=RESAMPLES, confidence_level=CONFIDENCE, method="percentile",
                       rng=np.random.default_rng(BOOTSTRAP_SEED))
    return float(result.confidence_interval.low), float(result.confidence_interval.high)


def paired_gain(method: dict[int, float], baseline: dict[int, float]) -> tuple[float, float, float]:
    """Gain of ``method`` over ``baseline`` (values by seed): mean of the per-seed differences over the seeds
    both have, with its interval; the plain difference of means (no interval) when they share no seed."""
    common = sorted(set(method) & set(baseline))
    if not common:
        if not method or not baseline:
            return math.nan, math.nan, math.nan
        return float(np.mean(list(method.values())) - np.mean(list(baseline.values()))), math.nan, math.nan
    diffs = np.asarray([method[s] - baseline[s] for s in common])
    low, high = mean_interval(diffs)
    return float(diffs.mean()), low, high


def indistinguishable(low: float, high: float) -> bool:
    """True when an interval for a gain contains 0 (the row is '~ random')."""
    return not (math.isnan(low) or math.isnan(high)) and low <= 0.0 <= high


__all__ = ["CONFIDENCE", "indistinguishable", "mean_interval", "paired_gain"]

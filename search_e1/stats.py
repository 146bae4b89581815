"""Confidence intervals for evaluation figures: pure functions, no torch.

An EM figure is a proportion over questions, so its 95% interval is Wilson's score interval
(`wilson_interval`), which stays inside [0, 1] and keeps its coverage near 0 and 1 where the normal
("Wald") interval collapses. A gain measured on the same questions before and after training is a
paired difference (`paired_difference_interval`): each question contributes ``after - before`` in
{-1, 0, 1}, and the interval is Student's t interval of their mean, much narrower than the
difference of two independent proportions when most questions keep their score. Figures averaged
over a few seeds get Student's t interval (`mean_interval`).

    >>> lo, hi = wilson_interval(60, 300)
    >>> round(lo, 3), round(hi, 3)
    (0.159, 0.249)
"""

from __future__ import annotations

import math
from collections.abc import Sequence

Z95 = 1.959963984540054
"""The standard normal quantile of a two-sided 95% interval."""

# two-sided 95% Student t quantiles by degrees of freedom (df > 30: the normal one is within 4%)
_T95 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145,
        2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048,
        2.045, 2.042)


def wilson_interval(successes: float, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson's score interval of a proportion ``successes / n`` (95% by default); (0, 1) when n = 0.

    >>> wilson_interval(0, 10)[0], round(wilson_interval(0, 10)[1], 4)
    (0.0, 0.2775)
    """
    if n < 0 or not 0 <= successes <= n:
        raise ValueError(f"wilson_interval: need 0 <= successes <= n, got {successes} of {n}")
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    z2 = z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def t_quantile(df: int) -> float:
    """The two-sided 95% quantile of Student's t with ``df`` degrees of freedom (normal beyond 30)."""
    if df < 1:
        raise ValueError(f"t_quantile: df must be >= 1, got {df}")
    return _T95[df - 1] if df <= len(_T95) else Z95


def mean_interval(values: Sequence[float]) -> tuple[float, float, float]:
    """``(mean, low, high)``: Student's t 95% interval of the mean of ``values`` (seeds, say); a single
    value gives a zero-width interval.

    >>> [round(x, 3) for x in mean_interval([0.1, 0.2, 0.3])]
    [0.2, -0.048, 0.448]
    """
    n = len(values)
    if n == 0:
        raise ValueError("mean_interval: no values")
    mean = sum(values) / n
    if n == 1:
        return mean, mean, mean
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = t_quantile(n - 1) * sd / math.sqrt(n)
    return mean, mean - half, mean + half


def paired_difference_interval(after: Sequence[float], before: Sequence[float]) -> tuple[float, float, float]:
    """``(mean difference, low, high)`` of ``after[i] - before[i]`` over paired items (the same
    questions evaluated twice): Student's t 95% interval of the mean difference (normal beyond 30).

    >>> [round(x, 3) for x in paired_difference_interval([1, 1, 1, 0], [0, 1, 1, 0])]
    [0.25, -0.545, 1.046]
    """
    if len(after) != len(before):
        raise ValueError(f"paired_difference_interval: {len(after)} values after but {len(before)} before")
    diffs = [a - b for a, b in zip(after, before, strict=True)]
    n = len(diffs)
    if n == 0:
        raise ValueError("paired_difference_interval: no pairs")
    mean = sum(diffs) / n
    if n == 1:
        return mean, mean, mean
    sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / (n - 1))
    half = t_quantile(n - 1) * sd / math.sqrt(n)
    return mean, mean - half, mean + half

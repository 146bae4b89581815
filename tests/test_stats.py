"""Confidence intervals (`search_e1.stats`) against values derived by hand."""

from __future__ import annotations

import math

import pytest

from search_e1.stats import (
    Z95,
    mean_interval,
    paired_difference_interval,
    t_quantile,
    wilson_interval,
)


def test_wilson_interval_by_hand():
    # 60 of 300, z^2 = 3.841459: centre = (0.2 + z^2/600) / (1 + z^2/300) = 0.2064024 / 1.012805 = 0.203793
    # half = z * sqrt(0.2 * 0.8 / 300 + z^2 / 360000) / 1.012805 = 1.959964 * 0.0233239 / 1.012805 = 0.045136
    lo, hi = wilson_interval(60, 300)
    assert lo == pytest.approx(0.158657, abs=2e-6) and hi == pytest.approx(0.248929, abs=2e-6)
    # 8 of 40: centre = 0.2480182 / 1.0960365 = 0.226287, half = 1.959964 * 0.0678250 / 1.0960365 = 0.121287
    lo, hi = wilson_interval(8, 40)
    assert lo == pytest.approx(0.105000, abs=2e-6) and hi == pytest.approx(0.347574, abs=2e-6)
    # 0 of 10: centre = half = (z^2 / 20) / (1 + z^2 / 10) = 0.192073 / 1.384146 = 0.138766
    assert wilson_interval(0, 10) == (0.0, pytest.approx(0.277532, abs=2e-6))
    # all of 10: the mirror image
    assert wilson_interval(10, 10) == pytest.approx((1 - 0.277532, 1.0), abs=2e-6)


def test_wilson_half_width_at_300_questions_is_about_five_points():
    # the power target: n = 300 keeps the interval within about +-0.05 at any EM
    widest = max(wilson_interval(k, 300)[1] - wilson_interval(k, 300)[0] for k in range(301))
    assert 0.10 < widest <= 0.113  # at p = 0.5: 2 * 1.96 * sqrt(0.25 / 300) = 0.1132 (Wald)


def test_wilson_refuses_impossible_counts_and_covers_nothing_when_empty():
    assert wilson_interval(0, 0) == (0.0, 1.0)
    for successes, n in ((5, 4), (-1, 4)):
        with pytest.raises(ValueError, match="successes"):
            wilson_interval(successes, n)


def test_t_quantiles():
    assert t_quantile(1) == 12.706 and t_quantile(4) == 2.776 and t_quantile(30) == 2.042
    assert t_quantile(31) == pytest.approx(1.96, abs=1e-3) and Z95 == pytest.approx(1.959964, abs=1e-6)
    with pytest.raises(ValueError):
        t_quantile(0)


def test_mean_interval_by_hand():
    # 5 seeds: mean 0.3, sample sd sqrt(((-.1)^2 + 0 + .1^2 + (-.2)^2 + .2^2) / 4) = sqrt(0.025) = 0.158114
    # half = t(4) * sd / sqrt(5) = 2.776 * 0.0707107 = 0.196293
    mean, lo, hi = mean_interval([0.2, 0.3, 0.4, 0.1, 0.5])
    assert (mean, lo, hi) == pytest.approx((0.3, 0.103707, 0.496293), abs=1e-6)
    assert mean_interval([0.7]) == (0.7, 0.7, 0.7)
    with pytest.raises(ValueError):
        mean_interval([])


def test_paired_difference_interval_by_hand():
    # differences [1, 0, 0, 0]: mean 0.25, sd sqrt((0.5625 + 3 * 0.0625) / 3) = 0.5, half = 3.182 * 0.5 / 2
    mean, lo, hi = paired_difference_interval([1, 1, 1, 0], [0, 1, 1, 0])
    assert (mean, lo, hi) == pytest.approx((0.25, 0.25 - 0.7955, 0.25 + 0.7955))
    # 300 questions, 60 gained and 15 lost: mean 0.15, sd^2 = (75 - 300 * 0.0225) / 299 = 0.228261
    after = [1] * 60 + [0] * 15 + [1] * 50 + [0] * 175
    before = [0] * 60 + [1] * 15 + [1] * 50 + [0] * 175
    mean, lo, hi = paired_difference_interval(after, before)
    half = 1.959964 * math.sqrt(0.228261 / 300)
    assert mean == pytest.approx(0.15) and (lo, hi) == pytest.approx((0.15 - half, 0.15 + half), abs=1e-5)
    with pytest.raises(ValueError, match="before"):
        paired_difference_interval([1, 0], [1])

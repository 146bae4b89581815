"""Tests for search_e1.metrics.QAMetric (CPU): values, validation, and merging rank states."""

from __future__ import annotations

import math

import pytest
import torch

from search_e1.metrics import QAMetric
from search_e1.rewards import exact_match, f1_score

PREDS: list[str | None] = ["An apple.", "big red dog", None, "Paris", "cat", "the New York"]
GOLDS: list[list[str]] = [
    ["apple"],
    ["red dog"],
    ["x"],
    ["London", "paris"],
    ["dog"],
    ["new york city"],
]
# per question EM: 1, 0, 0, 1, 0, 0 -> mean 2/6
# per question F1: 1, 0.8, 0, 1, 0, (P=1, R=2/3 -> 0.8) -> sum 3.6, mean 0.6
EXPECTED_EM, EXPECTED_F1 = 2 / 6, 3.6 / 6


def test_values_match_hand_derived() -> None:
    metric = QAMetric()
    metric.update(PREDS, GOLDS)
    out = metric.compute()
    assert set(out) == {"em", "f1", "searches", "tokens"}
    assert out["em"].item() == pytest.approx(EXPECTED_EM, abs=1e-12)
    assert out["f1"].item() == pytest.approx(EXPECTED_F1, abs=1e-12)


def test_uses_reward_functions() -> None:
    # the metric and the reward share one normalisation: means of the reward functions
    metric = QAMetric()
    metric.update(PREDS, GOLDS)
    em = sum(exact_match(p, g) for p, g in zip(PREDS, GOLDS, strict=True)) / len(PREDS)
    f1 = sum(f1_score(p, g) for p, g in zip(PREDS, GOLDS, strict=True)) / len(PREDS)
    out = metric.compute()
    assert out["em"].item() == pytest.approx(em, abs=1e-12)
    assert out["f1"].item() == pytest.approx(f1, abs=1e-12)


def test_batches_accumulate_and_reset() -> None:
    metric = QAMetric()
    metric.update(PREDS[:2], GOLDS[:2])
    metric.update(PREDS[2:], GOLDS[2:])
    assert int(metric.total) == 6
    assert metric.compute()["em"].item() == pytest.approx(EXPECTED_EM, abs=1e-12)
    metric.reset()
    metric.update(["apple"], [["apple"]])
    assert metric.compute()["em"].item() == 1.0  # the earlier batches are gone


def test_single_string_gold_and_empty_batch() -> None:
    metric = QAMetric()
    metric.update([], [])  # no-op
    metric.update(["apple"], ["An apple"])  # a gold given as one string
    assert metric.compute()["em"].item() == 1.0


def test_length_mismatch_raises() -> None:
    with pytest.raises(ValueError, match="2 predictions but 1 gold"):
        QAMetric().update(["a", "b"], [["a"]])
    with pytest.raises(ValueError, match="2 predictions but 2 gold lists, 1 search counts"):
        QAMetric().update(["a", "b"], [["a"], ["b"]], searches=[1])


def test_searches_and_tokens_are_means_per_question() -> None:
    metric = QAMetric()
    metric.update(PREDS[:2], GOLDS[:2], searches=[0, 3], tokens=[10, 31])
    metric.update(PREDS[2:3], GOLDS[2:3], searches=[2], tokens=[4])
    out = metric.compute()
    assert out["searches"].item() == pytest.approx(5 / 3, abs=1e-12)
    assert out["tokens"].item() == pytest.approx(45 / 3, abs=1e-12)


def test_compute_before_update_is_nan() -> None:
    with pytest.warns(UserWarning):  # torchmetrics warns about compute() before update()
        out = QAMetric().compute()
    assert math.isnan(out["em"].item()) and math.isnan(out["f1"].item())


def test_states_are_float64_sums_that_merge_by_adding() -> None:
    """The states are sums (what a cross-rank sync adds up): after two ranks' updates are merged,
    each state is the hand-derived total over all six questions."""
    rank0, rank1 = QAMetric(), QAMetric()
    assert rank0.full_state_update is False
    rank0.update(PREDS[:4], GOLDS[:4], searches=[1, 2, 0, 1], tokens=[10, 20, 30, 40])
    rank1.update(PREDS[4:], GOLDS[4:], searches=[3, 0], tokens=[5, 7])
    rank0.merge_state(rank1)
    assert rank0.em_sum.dtype == torch.float64
    assert rank0.em_sum.item() == pytest.approx(2.0, abs=1e-12)
    assert rank0.f1_sum.item() == pytest.approx(3.6, abs=1e-12)
    assert rank0.searches_sum.item() == 7 and rank0.tokens_sum.item() == 112 and rank0.total.item() == 6


def test_merge_two_ranks_equals_one_metric_over_all_data() -> None:
    # simulate 2 ranks: each sees half of the questions (uneven split: 4 and 2)
    rank0, rank1, single = QAMetric(), QAMetric(), QAMetric()
    rank0.update(PREDS[:4], GOLDS[:4])
    rank1.update(PREDS[4:], GOLDS[4:])
    single.update(PREDS, GOLDS)
    # the rank-local means differ from the global one (rank0 EM 2/4, rank1 EM 0/2) ... (computing
    # before the merge also checks that the merge drops torchmetrics' cached compute() result)
    assert rank0.compute()["em"].item() == pytest.approx(0.5)
    assert rank1.compute()["em"].item() == pytest.approx(0.0)
    # ... but the summed states give the global mean, not the mean of the means
    rank0.merge_state(rank1)
    merged, expected = rank0.compute(), single.compute()
    assert int(rank0.total) == 6
    for key in ("em", "f1"):
        assert merged[key].item() == pytest.approx(expected[key].item(), abs=1e-12)
    assert merged["em"].item() == pytest.approx(EXPECTED_EM, abs=1e-12)


def test_merge_from_state_dict() -> None:
    # the same merge from a plain dict of states (what a gathered state would look like)
    a, b = QAMetric(), QAMetric()
    a.update(PREDS[:3], GOLDS[:3])
    b.update(PREDS[3:], GOLDS[3:])
    a.merge_state({name: getattr(b, name) for name in ("em_sum", "f1_sum", "searches_sum", "tokens_sum", "total")})
    assert a.compute()["f1"].item() == pytest.approx(EXPECTED_F1, abs=1e-12)

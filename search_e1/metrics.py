"""`QAMetric`: exact match and F1 of predicted answers, as a torchmetrics ``Metric``.

It accumulates per-question scores from `search_e1.rewards.exact_match` / `f1_score`, so the metric
uses the very same normalisation as the training reward. States are sums (``dist_reduce_fx="sum"``),
so Lightning syncs them across ranks and ``merge_state`` combines instances.

Departures from Search-R1: Search-R1 logs the mean reward of validation rollouts as its score; here
EM and F1 are separate from the reward (which may carry a format term) and are averaged over
questions on all ranks. torchmetrics' own ``SQuAD`` metric is not used because it expects SQuAD's
dict layout, reports percentages, and would be a second normalisation function to keep in sync.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor
from torchmetrics import Metric

from search_e1.rewards import exact_match, f1_score


class QAMetric(Metric):
    """Mean exact match and token F1 over questions (fractions in [0, 1]; NaN before any update).

    >>> m = QAMetric()
    >>> m.update(["An apple.", None], [["apple"], ["pear"]])
    >>> {k: round(v.item(), 3) for k, v in m.compute().items()}
    {'em': 0.5, 'f1': 0.5}
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    em_sum: Tensor
    f1_sum: Tensor
    total: Tensor

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)
        # scalar sums; float64 so that long evaluations do not lose precision
        self.add_state(
            "em_sum", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum"
        )
        self.add_state(
            "f1_sum", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum"
        )
        self.add_state("total", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(
        self, predictions: Sequence[str | None], golden_answers: Sequence[Sequence[str] | str]
    ) -> None:
        """Add one batch: ``predictions[i]`` (None when no answer) against ``golden_answers[i]``."""
        if len(predictions) != len(golden_answers):
            raise ValueError(
                f"QAMetric.update: {len(predictions)} predictions but {len(golden_answers)} gold lists"
            )
        self.em_sum += sum(
            exact_match(p, g) for p, g in zip(predictions, golden_answers, strict=True)
        )
        self.f1_sum += sum(f1_score(p, g) for p, g in zip(predictions, golden_answers, strict=True))
        self.total += len(predictions)

    def merge_state(self, incoming_state: dict[str, Any] | Metric) -> None:
        """Add another instance's (or a dict of) states, e.g. gathered from other ranks.

        Also drops the cached ``compute()`` result, which torchmetrics 1.9 keeps across a merge.
        """
        super().merge_state(incoming_state)
        self._computed = None

    def compute(self) -> dict[str, Tensor]:
        """``{"em": mean EM, "f1": mean F1}`` over all questions seen (0-d float64 tensors)."""
        total = self.total.to(torch.float64)
        return {"em": self.em_sum / total, "f1": self.f1_sum / total}

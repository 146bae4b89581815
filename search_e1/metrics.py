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
    """Mean exact match and token F1 over questions (fractions in [0, 1]), and the mean searches and
    sampled tokens per answer when the rollout gives them (NaN before any update).

    >>> m = QAMetric()
    >>> m.update(["An apple.", None], [["apple"], ["pear"]], searches=[1, 3], tokens=[20, 40])
    >>> {k: round(v.item(), 3) for k, v in m.compute().items()}
    {'em': 0.5, 'f1': 0.5, 'searches': 2.0, 'tokens': 30.0}
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    em_sum: Tensor
    f1_sum: Tensor
    searches_sum: Tensor
    tokens_sum: Tensor
    total: Tensor

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)
        # scalar sums; float64 so that long evaluations do not lose precision
        for name in ("em_sum", "f1_sum", "searches_sum", "tokens_sum"):
            self.add_state(name, default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("total", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(
        self, predictions: Sequence[str | None], golden_answers: Sequence[Sequence[str] | str],
        searches: Sequence[float] | None = None, tokens: Sequence[float] | None = None,
    ) -> None:
        """Add one batch: ``predictions[i]`` (None when no answer) against ``golden_answers[i]``, with
        the searches and sampled tokens of each answer's trajectory (optional)."""
        n = len(predictions)
        if len(golden_answers) != n or any(x is not None and len(x) != n for x in (searches, tokens)):
            raise ValueError(f"QAMetric.update: {n} predictions but {len(golden_answers)} gold lists"
                             + ("" if searches is None else f", {len(searches)} search counts")
                             + ("" if tokens is None else f", {len(tokens)} token counts"))
        self.em_sum += sum(exact_match(p, g) for p, g in zip(predictions, golden_answers, strict=True))
        self.f1_sum += sum(f1_score(p, g) for p, g in zip(predictions, golden_answers, strict=True))
        self.searches_sum += float(sum(searches or ()))
        self.tokens_sum += float(sum(tokens or ()))
        self.total += n

    def merge_state(self, incoming_state: dict[str, Any] | Metric) -> None:
        """Add another instance's (or a dict of) states, e.g. gathered from other ranks.

        Also drops the cached ``compute()`` result, which torchmetrics 1.9 keeps across a merge.
        """
        super().merge_state(incoming_state)
        self._computed = None

    def compute(self) -> dict[str, Tensor]:
        """Means over all questions seen (0-d float64 tensors): ``em``, ``f1``, ``searches``, ``tokens``."""
        total = self.total.to(torch.float64)
        return {"em": self.em_sum / total, "f1": self.f1_sum / total, "searches": self.searches_sum / total,
                "tokens": self.tokens_sum / total}

"""Evaluation: greedy rollouts on QA examples -> EM with its 95% interval, F1, searches, tokens.

Used by the `Evolver` after the warm-up and every round (the val split and every held-out world)
and by ``search-e1 evaluate`` (any QA files, reported per file and on average). Figures are given
per data source, over ``all`` questions, and per hop count (``1-hop``, ``2-hop``, ...) when the
examples say it (``metadata["hops"]``, as the demo world's do). EM comes with Wilson's 95%
interval (`search_e1.stats.wilson_interval`): at n = 40 it is about +-0.13 around 0.2, at n = 300
about +-0.05. Under torch.distributed each rank evaluates its share of the examples and the sums
are reduced (torchmetrics), so every rank returns the same numbers.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch
import torch.distributed as dist

from search_e1.distributed import is_distributed, max_over_ranks, rank_share, rank_world
from search_e1.metrics import QAMetric
from search_e1.progress import progress_bar
from search_e1.rewards import exact_match, f1_score
from search_e1.rollout import SearchEnv
from search_e1.stats import wilson_interval

log = logging.getLogger(__name__)

FIELDS = ("n", "em", "em_lo", "em_hi", "f1", "searches", "tokens")
"""The figures of every group of `evaluate_policy`'s result."""


def hop_group(example: Any) -> str | None:
    """``"<h>-hop"`` for an example whose ``metadata["hops"]`` is an integer, else None."""
    hops = (getattr(example, "metadata", None) or {}).get("hops")
    return f"{hops}-hop" if isinstance(hops, int) and not isinstance(hops, bool) else None


def _groups(example: Any) -> tuple[str, ...]:
    hop = hop_group(example)
    return (example.data_source or "qa", "all") + ((hop,) if hop else ())


@torch.no_grad()
def evaluate_policy(
    policy: Any, env: SearchEnv, examples: Sequence[Any], batch_size: int = 16, progress: bool = True,
    records: list[dict[str, Any]] | None = None, description: str = "evaluate",
) -> dict[str, dict[str, float]]:
    """Greedy (temperature 0, one sample) evaluation of ``examples`` (objects with ``question``,
    ``golden_answers``, ``data_source`` and optionally ``id`` and ``metadata``) in ``env``.

    Returns ``{group: {"n", "em", "em_lo", "em_hi", "f1", "searches", "tokens"}}`` for every data
    source, ``"all"``, and every hop count present (``"1-hop"``, ``"2-hop"``): EM and F1 averaged over
    questions, EM's Wilson 95% interval, searches per question, sampled tokens per answer. One
    `QAMetric` per group, synced across ranks by torchmetrics when ``compute`` runs. With a
    ``records`` list, one dict per question (``id``, ``data_source``, ``hops``, ``answer``, ``em``,
    ``f1``, ``searches``, ``tokens``) is appended to it in the order of ``examples``, on every rank.
    """
    examples = list(examples)
    device = next(policy.parameters()).device
    names = sorted({g for e in examples for g in _groups(e)} | {"all"}, key=_group_order)  # the same on every rank
    metrics = {s: QAMetric().to(device) for s in names}
    for m in metrics.values():  # a rank may hold no question of a group: it still counts as updated
        m.update([], [])
    rank = rank_world()[0]
    mine = rank_share(range(len(examples)))
    n_batches = max_over_ranks(-(-len(mine) // batch_size))
    local: list[tuple[int, dict[str, Any]]] = []
    with progress_bar(n_batches, description, progress and rank == 0, unit="batches", transient=True) as advance:
        for b in range(n_batches):
            idx = mine[b * batch_size : (b + 1) * batch_size]
            batch = [examples[i] for i in idx]
            traj = env.rollout(policy, [e.question for e in batch], [list(e.golden_answers) for e in batch],
                               greedy=True)
            for j, (i, ex) in enumerate(zip(idx, batch, strict=True)):
                searches, tokens = float(traj.num_searches[j]), float(traj.response_lengths[j])
                for key in _groups(ex):
                    metrics[key].update([traj.answers[j]], [ex.golden_answers], [searches], [tokens])
                if records is not None:
                    local.append((i, _record(ex, traj.answers[j], searches, tokens)))
            advance(1)
    out = {key: summarise_metric(m) for key, m in metrics.items()}
    if records is not None:
        records.extend(r for _, r in sorted(_gather(local), key=lambda item: item[0]))
    return out


def _record(ex: Any, answer: str | None, searches: float, tokens: float) -> dict[str, Any]:
    return {"id": getattr(ex, "id", None), "data_source": ex.data_source,
            "hops": (getattr(ex, "metadata", None) or {}).get("hops"), "answer": answer,
            "em": exact_match(answer, ex.golden_answers), "f1": f1_score(answer, ex.golden_answers),
            "searches": int(searches), "tokens": int(tokens)}


def _gather(local: list[Any]) -> list[Any]:
    """Every rank's items, concatenated on every rank (the items themselves when not distributed)."""
    if not is_distributed():
        return local
    parts: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(parts, local)
    return [item for part in parts for item in part]


def _group_order(name: str) -> tuple[int, str]:
    """Data sources first, then ``all``, then the hop groups in hop order."""
    if name == "all":
        return 1, ""
    if name.endswith("-hop") and name[:-4].isdigit():
        return 2, name[:-4].zfill(4)
    return 0, name


def summarise_metric(metric: QAMetric) -> dict[str, float]:
    """The figures of `FIELDS` from one group's `QAMetric` (zeros and the (0, 1) interval when empty)."""
    values = {k: float(v) for k, v in metric.compute().items()}
    n = int(metric.total)
    if not n:
        return {"n": 0.0, "em": 0.0, "em_lo": 0.0, "em_hi": 1.0, "f1": 0.0, "searches": 0.0, "tokens": 0.0}
    lo, hi = wilson_interval(round(float(metric.em_sum)), n)
    return {"n": float(n), "em": values["em"], "em_lo": lo, "em_hi": hi, "f1": values["f1"],
            "searches": values["searches"], "tokens": values["tokens"]}

"""Evaluation: greedy rollouts on QA examples -> EM, F1, searches per question, tokens per answer.

Used by the `Evolver` after every round (val split) and by ``search-e1 evaluate`` (any QA files,
reported per file and on average). Under torch.distributed each rank evaluates its share of the
examples and the sums are reduced, so every rank returns the same numbers.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch

from search_e1.distributed import max_over_ranks, rank_world
from search_e1.metrics import QAMetric
from search_e1.progress import progress_bar
from search_e1.rollout import SearchEnv

log = logging.getLogger(__name__)

_FIELDS = ("n", "em", "f1", "searches", "tokens")


@torch.no_grad()
def evaluate_policy(
    policy: Any, env: SearchEnv, examples: Sequence[Any], batch_size: int = 16, progress: bool = True,
) -> dict[str, dict[str, float]]:
    """Greedy (temperature 0, one sample) evaluation of ``examples`` (objects with ``question``,
    ``golden_answers`` and ``data_source``) in ``env``.

    Returns ``{data_source: {"n", "em", "f1", "searches", "tokens"}}`` plus ``"all"``: EM and F1
    averaged over questions, searches per question, sampled tokens per answer. One `QAMetric` per
    source, synced across ranks by torchmetrics when ``compute`` runs.
    """
    examples = list(examples)
    device = next(policy.parameters()).device
    sources = sorted({e.data_source or "qa" for e in examples}) + ["all"]  # the same on every rank
    metrics = {s: QAMetric().to(device) for s in sources}
    for m in metrics.values():  # a rank may hold no question of a source: it still counts as updated
        m.update([], [])
    rank, world = rank_world()
    mine = examples[rank::world]
    n_batches = max_over_ranks(-(-len(mine) // batch_size))
    with progress_bar(n_batches, "evaluate", progress and rank == 0, unit="batches", transient=True) as advance:
        for b in range(n_batches):
            batch = mine[b * batch_size : (b + 1) * batch_size]
            traj = env.rollout(policy, [e.question for e in batch], [list(e.golden_answers) for e in batch],
                               greedy=True)
            for i, ex in enumerate(batch):
                for key in (ex.data_source or "qa", "all"):
                    metrics[key].update([traj.answers[i]], [ex.golden_answers], [float(traj.num_searches[i])],
                                        [float(traj.response_lengths[i])])
            advance(1)
    out = {}
    for key, m in metrics.items():
        values = {k: float(v) for k, v in m.compute().items()}
        n = int(m.total)
        out[key] = {"n": float(n), **({k: values[k] for k in _FIELDS[1:]} if n else dict.fromkeys(_FIELDS[1:], 0.0))}
    return out

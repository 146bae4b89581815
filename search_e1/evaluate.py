"""Evaluation: greedy rollouts on QA examples -> EM, F1, searches per question, tokens per answer.

Used by the `Evolver` after every round (val split) and by ``search-e1 evaluate`` (any QA files,
reported per file and on average). Under torch.distributed each rank evaluates its share of the
examples and the sums are reduced, so every rank returns the same numbers.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import torch
import torch.distributed as dist

from search_e1.distributed import is_distributed, max_over_ranks, rank_world
from search_e1.protocol import PromptConfig
from search_e1.retrieval.base import Retriever
from search_e1.rewards import RewardConfig, exact_match, f1_score
from search_e1.rollout import GeneratorFactory, RolloutConfig, make_generator, rollout

log = logging.getLogger(__name__)

_FIELDS = ("n", "em", "f1", "searches", "tokens")


def _progress(enabled: bool) -> Any:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(TextColumn("[bold]evaluate"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    disable=not enabled, transient=True)


@torch.no_grad()
def evaluate_policy(
    policy: Any, retriever: Retriever, examples: Sequence[Any], rollout_config: RolloutConfig,
    prompt: PromptConfig, reward: RewardConfig | None = None, batch_size: int = 16,
    progress: bool = True, generator_factory: GeneratorFactory | None = None,
) -> dict[str, dict[str, float]]:
    """Greedy (temperature 0, one sample) evaluation of ``examples`` (objects with ``question``,
    ``golden_answers`` and ``data_source``).

    Returns ``{data_source: {"n", "em", "f1", "searches", "tokens"}}`` plus ``"all"``: EM and F1
    averaged over questions, searches per question, sampled tokens per answer.
    """
    cfg = replace(rollout_config, group_size=1, temperature=0.0)
    rank, world = rank_world()
    mine = list(examples)[rank::world]
    sums: dict[str, dict[str, float]] = defaultdict(lambda: dict.fromkeys(_FIELDS, 0.0))
    was_training = policy.training
    policy.eval()
    n_batches = max_over_ranks(-(-len(mine) // batch_size))
    try:
        with _progress(progress and rank == 0) as bar:
            task = bar.add_task("evaluate", total=n_batches)
            for b in range(n_batches):
                batch = mine[b * batch_size : (b + 1) * batch_size]
                traj = rollout(policy, retriever, [e.question for e in batch],
                               [list(e.golden_answers) for e in batch], cfg, prompt, reward,
                               generator=(generator_factory or make_generator)(policy, cfg))
                for i, ex in enumerate(batch):
                    for key in (ex.data_source or "qa", "all"):
                        s = sums[key]
                        s["n"] += 1
                        s["em"] += exact_match(traj.answers[i], ex.golden_answers)
                        s["f1"] += f1_score(traj.answers[i], ex.golden_answers)
                        s["searches"] += float(traj.num_searches[i])
                        s["tokens"] += float(traj.response_lengths[i])
                bar.advance(task)
    finally:
        policy.train(was_training)
    return _reduce(sums)


def _reduce(sums: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
    """Sum the per-source sums over ranks, then divide by the question counts."""
    if is_distributed():
        parts: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(parts, dict(sums))
        merged: dict[str, dict[str, float]] = defaultdict(lambda: dict.fromkeys(_FIELDS, 0.0))
        for part in parts:
            for key, s in part.items():
                for f in _FIELDS:
                    merged[key][f] += s[f]
        sums = merged
    out = {}
    for key, s in sums.items():
        n = max(s["n"], 1.0)
        out[key] = {"n": s["n"], **{f: s[f] / n for f in _FIELDS if f != "n"}}
    if "all" not in out:
        out["all"] = dict.fromkeys(_FIELDS, 0.0)
    return out

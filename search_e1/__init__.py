"""search-e1: GRPO interleaved with offline self-distillation (OFSD) for search-augmented agents.

The public API (DESIGN section 5) is importable from here. Heavy members (torch, transformers,
faiss) are imported lazily so that ``import search_e1`` and ``search-e1 --help`` stay fast.

    >>> from search_e1 import Policy, RetrievalDataModule
    >>> from search_e1.protocol import parse_action
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> module that defines it
_LAZY: dict[str, str] = {
    "Policy": "search_e1.policy",
    "RetrievalDataModule": "search_e1.data",
    "Trajectory": "search_e1.rollout",
    "RolloutConfig": "search_e1.rollout",
    "rollout": "search_e1.rollout",
    "SearchEnv": "search_e1.rollout",
    "OptimConfig": "search_e1.rounds.base",
    "evaluate_policy": "search_e1.rounds.evaluate",
    "Passage": "search_e1.retrieval",
    "Retriever": "search_e1.retrieval",
    "DenseRetriever": "search_e1.retrieval",
    "PromptConfig": "search_e1.protocol",
    "parse_action": "search_e1.protocol",
    "extract_answer": "search_e1.protocol",
    "normalize_answer": "search_e1.rewards",
    "exact_match": "search_e1.rewards",
    "f1_score": "search_e1.rewards",
    "QAMetric": "search_e1.metrics",
    "GRPOModule": "search_e1.rounds.grpo",
    "GRPOConfig": "search_e1.rounds.grpo",
    "OFSDModule": "search_e1.rounds.ofsd",
    "OFSDConfig": "search_e1.rounds.ofsd",
    "Evolver": "search_e1.rounds.evolver",
    "EvolverConfig": "search_e1.rounds.evolver",
    "WarmupModule": "search_e1.rounds.warmup",
    "WarmupConfig": "search_e1.rounds.warmup",
}
_SUBMODULES = {
    "algos", "data", "demo_world", "metrics", "policy", "protocol", "retrieval", "rewards", "rollout", "rounds",
}

__all__ = sorted(_LAZY) + sorted(_SUBMODULES)

if TYPE_CHECKING:  # pragma: no cover
    from search_e1.data import RetrievalDataModule  # noqa: F401
    from search_e1.metrics import QAMetric  # noqa: F401
    from search_e1.policy import Policy  # noqa: F401
    from search_e1.protocol import PromptConfig, extract_answer, parse_action  # noqa: F401
    from search_e1.retrieval import DenseRetriever, Passage, Retriever  # noqa: F401
    from search_e1.rewards import exact_match, f1_score, normalize_answer  # noqa: F401
    from search_e1.rollout import RolloutConfig, SearchEnv, Trajectory, rollout  # noqa: F401
    from search_e1.rounds.base import OptimConfig  # noqa: F401
    from search_e1.rounds.evaluate import evaluate_policy  # noqa: F401
    from search_e1.rounds.evolver import Evolver, EvolverConfig  # noqa: F401
    from search_e1.rounds.grpo import GRPOConfig, GRPOModule  # noqa: F401
    from search_e1.rounds.ofsd import OFSDConfig, OFSDModule  # noqa: F401
    from search_e1.rounds.warmup import WarmupConfig, WarmupModule  # noqa: F401


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    if name in _SUBMODULES:
        return importlib.import_module(f"search_e1.{name}")
    raise AttributeError(f"module 'search_e1' has no attribute {name!r}")

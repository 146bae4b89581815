"""The turn contract every generation backend honours: what one turn of one row yields
(`TurnOutput`), the generator's call signature (`TurnGenerator`, built by a `GeneratorFactory`), and
the pure helpers that cut a sampled turn where the protocol says it ends (`cut_turn`) and pad
contexts (`left_pad`). The HF reference (`search_e1.rollout.generation`) and the vLLM engine
(`search_e1.rollout.vllm_backend`) both build on it; neither imports the other.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import Tensor

from search_e1.protocol import STOP_STRINGS


@dataclass
class TurnOutput:
    """What one row produced in one turn."""

    ids: list[int]
    """Sampled token ids, cut just after the stop string or the EOS token."""
    logprobs: list[float]
    """Sampling log-prob of each id."""
    stop: str
    """Why the turn ended: "stop" (a stop string), "eos" or "length"."""


class TurnGenerator(Protocol):
    """Generates one turn for each context; ``max_new_tokens`` is a per-row budget. A generator may
    also have ``end_rollout()``, called once a rollout's last turn is done."""

    def __call__(self, contexts: list[list[int]], max_new_tokens: list[int]) -> list[TurnOutput]: ...


GeneratorFactory = Callable[[Any, Any], TurnGenerator]
"""``(policy, rollout_config) -> TurnGenerator``: how the modules build their rollout backend."""


def left_pad(contexts: list[list[int]], pad_id: int) -> tuple[Tensor, Tensor]:
    """Left-pad token lists into ``input_ids [B, T]`` and ``attention_mask [B, T]``."""
    width = max(len(c) for c in contexts)
    ids = torch.full((len(contexts), width), pad_id, dtype=torch.long)  # [B, T]
    mask = torch.zeros((len(contexts), width), dtype=torch.long)  # [B, T]
    for i, ctx in enumerate(contexts):
        ids[i, width - len(ctx) :] = torch.tensor(ctx, dtype=torch.long)
        mask[i, width - len(ctx) :] = 1
    return ids, mask


def stop_cut(tokenizer: Any, ids: list[int], stops: tuple[str, ...] = STOP_STRINGS) -> int | None:
    """Length of the shortest prefix of ``ids`` whose text contains a stop string, or None.

    Binary search over prefixes (containment is monotone in the prefix length).
    """
    if not ids or not any(s in tokenizer.decode(ids) for s in stops):
        return None
    lo, hi = 1, len(ids)
    while lo < hi:
        mid = (lo + hi) // 2
        if any(s in tokenizer.decode(ids[:mid]) for s in stops):
            hi = mid
        else:
            lo = mid + 1
    return lo


def cut_turn(tokenizer: Any, new_ids: list[int], eos_ids: set[int]) -> tuple[int, str]:
    """Where a row's turn ends inside ``new_ids``: ``(length, reason)``."""
    eos_at = next((i for i, t in enumerate(new_ids) if t in eos_ids), None)
    stop_at = stop_cut(tokenizer, new_ids if eos_at is None else new_ids[:eos_at])
    if stop_at is not None:
        return stop_at, "stop"
    if eos_at is not None:
        return eos_at + 1, "eos"
    return len(new_ids), "length"

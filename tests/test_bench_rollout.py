"""bin/bench_rollout.py's accounting: the prompt tokens a perfect prefix cache computes."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import SimpleNamespace

import torch

SCRIPT = Path(__file__).resolve().parents[1] / "bin" / "bench_rollout.py"


def _bench():
    spec = importlib.util.spec_from_file_location("bench_rollout", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_minimum_prompt_tokens_by_hand():
    """Two rows of one question (prompt 3) and one of another (prompt 2); S = sampled, E = environment:

    row 0: PPP SS EEE SSS       -> prompt 3 + env 3 + 1 (last token of the first turn) = 7
    row 1: PPP SSSS E S EE      -> same prompt, cached: env 1 + 1, the final turn and the unread
                                   trailing env text not counted = 2
    row 2: PP  SS (padding)     -> prompt 2, one turn: 2
    """
    rows = [([0, 0, 0, 1, 1, 0, 0, 0, 1, 1, 1], 3, 0),
            ([0, 0, 0, 1, 1, 1, 1, 0, 1, 0, 0], 3, 0),
            ([0, 0, 1, 1, 0, 0, 0, 0, 0, 0, 0], 2, 1)]
    lengths = [11, 11, 4]
    traj = _Rows(
        loss_mask=torch.tensor([m for m, _, _ in rows]),
        prompt_lengths=torch.tensor([p for _, p, _ in rows]),
        group_ids=torch.tensor([g for _, _, g in rows]),
        attention_mask=torch.tensor([[1] * n + [0] * (11 - n) for n in lengths]),
    )
    assert _bench().minimum_prompt_tokens(traj) == 7 + 2 + 2


class _Rows(SimpleNamespace):
    """The `Trajectory` fields the function reads, with its length."""

    def __len__(self) -> int:
        return len(self.loss_mask)

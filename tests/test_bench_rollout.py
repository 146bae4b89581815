"""bin/bench_rollout.py's accounting: the prompt tokens a perfect prefix cache computes."""

from __future__ import annotations

from types import SimpleNamespace

import torch
from conftest import load_script


def _bench():
    return load_script("bench_rollout")


def test_minimum_prompt_tokens_by_hand():
    """Prompt 5 6 7 (question A) and 5 6 9 (question B: the template's first two tokens shared).
    S = sampled (loss mask 1), E = environment; a context is sent at the start of every turn.

    row 0: 5 6 7 | S1 S2 | E8 E9 E9 | S3 S3 S3    sent prefixes 1..8 (8 nodes), of which [.. 1]
                                                  was decoded (S2 followed it): 7
    row 1: the same up to its last turn (S4 S4 S4): no new node: 0
    row 2: 5 6 7 | S1 S3 S3 | E8 E8 | S2 S2       prefixes 1..8, 4 new after [5 6 7 1]; of
                                                  those [.. 1 3] was decoded: 3
    row 3: 5 6 9 | S1 S1                          prefixes 1..3, new: [5 6 9]: 1
    row 4: 5 6 9 | S2 | E8 E8                     the trailing environment text is never sent: 0
    """
    rows = [([5, 6, 7, 1, 2, 8, 9, 9, 3, 3, 3], [0, 0, 0, 1, 1, 0, 0, 0, 1, 1, 1], 3),
            ([5, 6, 7, 1, 2, 8, 9, 9, 4, 4, 4], [0, 0, 0, 1, 1, 0, 0, 0, 1, 1, 1], 3),
            ([5, 6, 7, 1, 3, 3, 8, 8, 2, 2], [0, 0, 0, 1, 1, 1, 0, 0, 1, 1], 3),
            ([5, 6, 9, 1, 1], [0, 0, 0, 1, 1], 3),
            ([5, 6, 9, 2, 8, 8], [0, 0, 0, 1, 0, 0], 3)]

    def pad(xs: list[int]) -> list[int]:
        return xs + [0] * (11 - len(xs))

    traj = _Rows(
        input_ids=torch.tensor([pad(ids) for ids, _, _ in rows]),
        loss_mask=torch.tensor([pad(m) for _, m, _ in rows]),
        prompt_lengths=torch.tensor([p for _, _, p in rows]),
        attention_mask=torch.tensor([pad([1] * len(ids)) for ids, _, _ in rows]),
    )
    assert _bench().minimum_prompt_tokens(traj) == 7 + 0 + 3 + 1 + 0


class _Rows(SimpleNamespace):
    """The `Trajectory` fields the function reads, with its length."""

    def __len__(self) -> int:
        return len(self.loss_mask)

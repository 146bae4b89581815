"""Trajectory's batch operations on hand-built rows: select, trim, concat (group ids stay distinct,
padding uses the pad id and mask 0)."""

from __future__ import annotations

import torch

from search_e1.rollout import Trajectory

PAD = 0


def batch(rows: list[list[int]], prompt: list[int], groups: list[int], tag: str) -> Trajectory:
    """Right-padded rows; the tokens after each row's prompt are 'sampled' (mask 1, log-prob -0.5)."""
    width = max(map(len, rows))
    ids = torch.tensor([r + [PAD] * (width - len(r)) for r in rows])  # [N, L]
    attention = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])  # [N, L]
    cols = torch.arange(width)[None]  # [1, L]
    loss = ((cols >= torch.tensor(prompt)[:, None]) & (attention == 1)).float()  # [N, L]
    n = len(rows)
    return Trajectory(ids, attention, loss, -0.5 * loss, torch.tensor(prompt), torch.arange(n),
                      torch.ones(n, dtype=torch.long), torch.arange(n).float(), torch.tensor(groups),
                      answers=[f"{tag}{i}" for i in range(n)],
                      finish_reasons=["answer"] * n, questions=[f"q{tag}{g}" for g in groups],
                      golden_answers=[[tag]] * n)


def test_select_keeps_the_chosen_rows_in_order_and_trim_drops_all_padding_columns():
    t = batch([[5, 6, 7], [5, 6, 7, 8, 9], [5, 6]], prompt=[1, 2, 1], groups=[0, 0, 1], tag="a")
    s = t.select([2, 0])
    assert s.input_ids.tolist() == [[5, 6, PAD, PAD, PAD], [5, 6, 7, PAD, PAD]]  # columns kept by select
    assert s.answers == ["a2", "a0"] and s.rewards.tolist() == [2.0, 0.0] and s.group_ids.tolist() == [1, 0]
    trimmed = s.trim()
    assert trimmed.input_ids.tolist() == [[5, 6, PAD], [5, 6, 7]]
    assert trimmed.loss_mask.tolist() == [[0, 1, 0], [0, 1, 1]] and trimmed.logprobs.tolist() == [[0, -0.5, 0],
                                                                                                 [0, -0.5, -0.5]]
    assert t.trim().input_ids.shape == (3, 5)  # the longest row has no padding: nothing to drop


def test_concat_pads_to_the_longest_row_and_offsets_group_ids():
    a = batch([[1, 2], [1, 3]], prompt=[1, 1], groups=[0, 0], tag="a")  # one question, two samples
    b = batch([[4, 5, 6, 7], [4, 6], [8, 9, 9]], prompt=[2, 1, 1], groups=[0, 1, 1], tag="b")  # two questions
    c = Trajectory.concat([a, b], pad_id=PAD)
    assert c.input_ids.tolist() == [[1, 2, 0, 0], [1, 3, 0, 0], [4, 5, 6, 7], [4, 6, 0, 0], [8, 9, 9, 0]]
    assert c.attention_mask.sum(-1).tolist() == [2, 2, 4, 2, 3]
    assert c.loss_mask.sum(-1).tolist() == [1, 1, 2, 1, 2]  # padding is never 'sampled'
    assert c.group_ids.tolist() == [0, 0, 1, 2, 2]  # b's questions come after a's one
    assert c.answers == ["a0", "a1", "b0", "b1", "b2"] and c.questions[2:] == ["qb0", "qb1", "qb1"]
    assert c.prompt_lengths.tolist() == [1, 1, 2, 1, 1]
    assert len(Trajectory.concat([c.select([]), a], pad_id=PAD)) == 2  # an empty part adds nothing


def test_saved_records_load_back_as_the_same_batch(tmp_path):
    """save_jsonl then from_records: every tensor and list field equal (a data set on disk is a batch again)."""
    import json

    t = batch([[5, 6, 7], [5, 6, 7, 8, 9], [5, 6]], prompt=[1, 2, 1], groups=[0, 0, 1], tag="a")
    path = t.save_jsonl(tmp_path / "rows.jsonl", sibling=[1, -1, -1])
    records = [json.loads(line) for line in path.open()]
    back = Trajectory.from_records(records, pad_id=PAD)
    for name in Trajectory._TENSORS:
        assert torch.equal(getattr(back, name), getattr(t, name).to(getattr(back, name).dtype)), name
    assert (back.answers, back.questions, back.golden_answers, back.finish_reasons) == (
        t.answers, t.questions, t.golden_answers, t.finish_reasons)
    assert len(Trajectory.from_records([], pad_id=PAD)) == 0

"""CPU tests of search_e1.algos.siblings: hand cases and a slow pairwise reference."""

from __future__ import annotations

import pytest
import torch

from search_e1.algos import (
    SIBLING_SELECTORS,
    get_sibling_selector,
    register_sibling_selector,
    select_siblings,
)


def _t(*xs):
    return torch.tensor(xs, dtype=torch.long)


def _slow_select(group_ids, correct, searches, tokens):
    """Pairwise loop reference: cheapest correct same-group j != i with (s_j, t_j) < (s_i, t_i)."""
    n = len(group_ids)
    out = []
    for i in range(n):
        best = None
        for j in range(n):
            if j == i or group_ids[j] != group_ids[i] or not correct[j]:
                continue
            if (searches[j], tokens[j]) < (searches[i], tokens[i]):
                key = (searches[j], tokens[j], j)
                best = key if best is None or key < best else best
        out.append(-1 if best is None else best[2])
    return torch.tensor(out, dtype=torch.long)


def _run(g, c, s, t):
    return select_siblings(_t(*g), torch.tensor(c, dtype=torch.bool), _t(*s), _t(*t))


def test_no_correct_trajectory_gives_minus_one():
    assert _run([0, 0, 0], [False] * 3, [1, 2, 3], [5, 6, 7]).tolist() == [-1, -1, -1]


def test_all_correct_point_to_the_cheapest():
    # costs (2,100), (1,50), (1,80): the cheapest is 1 (fewest searches, then fewest tokens);
    # 2 ties 1 on searches and is beaten on tokens; 1 itself has no cheaper sibling
    assert _run([0, 0, 0], [True] * 3, [2, 1, 1], [100, 50, 80]).tolist() == [1, -1, 1]


def test_full_ties_break_to_lowest_index_and_equal_cost_is_not_cheaper():
    # 2 and 4 are correct with the same cost (1, 10): 0 (incorrect, (2, 5)) gets the lower index 2;
    # 2 and 4 have no STRICTLY cheaper sibling; 3 (incorrect, (1, 10)) ties them -> -1
    got = _run([0] * 5, [False, False, True, False, True], [2, 3, 1, 1, 1], [5, 1, 10, 10, 10])
    assert got.tolist() == [2, 2, -1, -1, -1]


def test_incorrect_cheaper_than_every_correct_gets_none():
    # 0 is incorrect with 0 searches; the only correct one (1) costs (1, 30) -> 0 gets -1, 2 gets 1
    assert _run([0, 0, 0], [False, True, False], [0, 1, 2], [99, 30, 10]).tolist() == [-1, -1, 1]


def test_non_contiguous_interleaved_groups():
    # group 10: idx 0 (1,40 correct), 2 (0,70 correct) -> 0 -> 2, 2 -> -1
    # group 3: idx 1 (2,10 wrong), 3 (1,90 correct) -> 1 -> 3, 3 -> -1; group -7: idx 4 alone
    got = _run(
        [10, 3, 10, 3, -7], [True, False, True, True, True], [1, 2, 0, 1, 0], [40, 10, 70, 90, 5]
    )
    assert got.tolist() == [2, 3, -1, -1, -1]


def test_matches_slow_pairwise_reference():
    gen = torch.Generator().manual_seed(1)
    n = 300
    g = torch.randint(0, 40, (n,), generator=gen) * 3 + 11
    c = torch.rand(n, generator=gen) < 0.4
    s = torch.randint(0, 4, (n,), generator=gen)
    t = torch.randint(0, 6, (n,), generator=gen)  # many ties
    fast = select_siblings(g, c, s, t)
    slow = _slow_select(g.tolist(), c.tolist(), s.tolist(), t.tolist())
    assert torch.equal(fast, slow)
    assert select_siblings(*(torch.tensor([], dtype=torch.long),) * 4).numel() == 0


def test_registry():
    assert get_sibling_selector("most_efficient") is select_siblings
    assert "most_efficient" in SIBLING_SELECTORS
    with pytest.raises(ValueError, match="most_efficient"):
        get_sibling_selector("cheapest_ever")
    with pytest.raises(ValueError, match="already registered"):
        register_sibling_selector("most_efficient")(select_siblings)


def test_correct_then_cheaper_gives_wrong_rows_the_cheapest_correct_sibling():
    from search_e1.algos import get_sibling_selector

    fn = get_sibling_selector("correct_then_cheaper")
    # group 0: the docstring example; group 1: no correct member; group 2: a wrong row cheaper than
    # the correct one still learns from it, the correct one has no cheaper correct sibling
    groups = torch.tensor([0, 0, 0, 1, 1, 2, 2])
    correct = torch.tensor([1, 0, 1, 0, 0, 0, 1])
    searches = torch.tensor([1, 1, 1, 0, 2, 0, 2])
    tokens = torch.tensor([20, 20, 25, 5, 9, 4, 30])
    assert fn(groups, correct, searches, tokens).tolist() == [-1, 0, 0, -1, -1, 6, -1]
    strict = get_sibling_selector("most_efficient")(groups, correct, searches, tokens)
    assert strict.tolist() == [-1, -1, 0, -1, -1, -1, -1]

"""Choose, for each trajectory, the more efficient correct sibling that the OFSD teacher sees.

A sibling of trajectory ``i`` is another trajectory ``j`` of the same question (same group id).
It is *more efficient* when it is correct and strictly cheaper in the lexicographic cost
``(num_searches, num_tokens)``: ``(s_j, t_j) < (s_i, t_i)``. Selectors are picked by name from
`SIBLING_SELECTORS` and return ``[N]`` long: the index of the chosen sibling, or -1 when there is
none (trajectory ``i`` then gets no OFSD loss).

``most_efficient`` picks, among the more efficient siblings, the cheapest one (fewest searches,
then fewest tokens, then the lowest index). Consequences: a correct trajectory can still have a
cheaper correct sibling; the cheapest correct trajectory of a group has none; a group with no
correct trajectory gives -1 everywhere; an incorrect trajectory cheaper than every correct one
gets -1.

Implementation: no ``[N, N]`` comparison is needed. Let ``j*`` be the cheapest correct member of
the group in the order ``(s, t, index)``; if any correct ``j`` satisfies ``(s_j, t_j) <
(s_i, t_i)``, then so does ``j*`` (it is minimal in ``(s, t)``) and it is the cheapest such ``j``
(and ``j* != i`` since the inequality is strict). So the answer is ``j*`` if ``(s_j*, t_j*) <
(s_i, t_i)`` else -1: one lexicographic sort and one scatter-min, O(N log N).

Departure from the paper: the paper describes the sibling as "correct and cheaper"; the tie-break
by lowest index (deterministic) and the strictness (an equally cheap sibling is not a teacher) are
our choices.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from search_e1.registry import Registry

SiblingFn = Callable[[Tensor, Tensor, Tensor, Tensor], Tensor]
"""``(group_ids [N], correct [N], num_searches [N], num_tokens [N]) -> sibling index [N] (-1: none)``."""

__all__ = [
    "SIBLING_SELECTORS",
    "SiblingFn",
    "get_sibling_selector",
    "lexicographic_rank",
    "placebo_siblings",
    "register_sibling_selector",
    "select_siblings",
]


def lexicographic_rank(primary: Tensor, secondary: Tensor) -> tuple[Tensor, Tensor]:
    """Sort order and rank of ``N`` items by ``(primary, secondary, index)``.

    Returns ``(order [N], rank [N])`` with ``order[rank[i]] == i``; ``order[0]`` is the smallest.
    """
    n = primary.numel()
    order = torch.arange(n, device=primary.device)  # [N] ties -> lowest index (stable sorts)
    order = order[torch.sort(secondary[order], stable=True).indices]  # [N]
    order = order[torch.sort(primary[order], stable=True).indices]  # [N]
    rank = torch.empty_like(order)  # [N]
    rank[order] = torch.arange(n, device=primary.device)  # [N]
    return order, rank


def select_siblings(
    group_ids: Tensor, correct: Tensor, num_searches: Tensor, num_tokens: Tensor
) -> Tensor:
    """Index of the cheapest correct same-group sibling strictly cheaper than each trajectory.

    Args:
        group_ids: ``[N]`` long, any integer id per question.
        correct: ``[N]`` bool (or 0/1), whether the trajectory's answer is correct.
        num_searches: ``[N]`` long, search calls made.
        num_tokens: ``[N]`` long, tokens the policy generated.

    Returns:
        ``[N]`` long: the sibling index ``j != i``, or -1 when none is strictly cheaper.
    """
    n = group_ids.numel()
    for name, x in (
        ("correct", correct),
        ("num_searches", num_searches),
        ("num_tokens", num_tokens),
    ):
        if x.shape != group_ids.shape or x.dim() != 1:
            raise ValueError(f"{name} {tuple(x.shape)} must match group_ids [N] = {(n,)}")
    j = cheapest_correct(group_ids, correct, num_searches, num_tokens)  # [N]
    jc = j.clamp(min=0)  # [N] (meaningless where j < 0)
    s_i, t_i, s_j, t_j = num_searches, num_tokens, num_searches[jc], num_tokens[jc]  # [N] each
    cheaper = (s_j < s_i) | ((s_j == s_i) & (t_j < t_i))  # [N]
    return torch.where((j >= 0) & cheaper, j, torch.full_like(j, -1))  # [N]


def cheapest_correct(group_ids: Tensor, correct: Tensor, num_searches: Tensor, num_tokens: Tensor) -> Tensor:
    """``[N]`` long: the cheapest correct member of each row's group in the order ``(s, t, index)``,
    or -1 when the group has none."""
    n = group_ids.numel()
    if n == 0:
        return torch.full((0,), -1, dtype=torch.long, device=group_ids.device)
    order, rank = lexicographic_rank(num_searches, num_tokens)  # [N], [N]
    _, inv = torch.unique(group_ids, return_inverse=True)  # [N] in [0, G)
    cand_rank = torch.where(correct.bool(), rank, torch.full_like(rank, n))  # [N]; n = not correct
    best = torch.full((int(inv.max().item()) + 1,), n, dtype=torch.long, device=rank.device)  # [G]
    best_rank = best.scatter_reduce(0, inv, cand_rank, reduce="amin", include_self=True)[inv]  # [N]
    return torch.where(best_rank < n, order[best_rank.clamp(max=n - 1)], torch.full_like(best_rank, -1))  # [N]


# --- registry ---------------------------------------------------------------------------------

SIBLING_SELECTORS: Registry[SiblingFn] = Registry("sibling selector")
"""Sibling selectors by name."""
register_sibling_selector = SIBLING_SELECTORS.register
get_sibling_selector = SIBLING_SELECTORS.get


register_sibling_selector("most_efficient")(select_siblings)


@register_sibling_selector("correct_then_cheaper")
def select_siblings_correct_first(
    group_ids: Tensor, correct: Tensor, num_searches: Tensor, num_tokens: Tensor
) -> Tensor:
    """Like ``most_efficient`` with correctness ranked before cost: an incorrect trajectory gets
    the cheapest correct sibling even when that sibling is not cheaper (a wrong answer achieved
    nothing with its searches); a correct one still needs a strictly cheaper correct sibling.

    Example (one group): ``correct = [1, 0, 1]``, ``(searches, tokens) = (1, 20), (1, 20), (1, 25)``:
    ``most_efficient`` gives ``[-1, -1, 0]``; this gives ``[-1, 0, 0]`` (row 1 is wrong at equal cost).
    """
    strict = select_siblings(group_ids, correct, num_searches, num_tokens)  # [N]
    best = cheapest_correct(group_ids, correct, num_searches, num_tokens)  # [N]
    return torch.where(~correct.bool() & (best >= 0), best, strict)  # [N]


def placebo_siblings(group_ids: Tensor, siblings: Tensor, correct: Tensor,
                     generator: torch.Generator | None = None) -> Tensor:
    """The placebo control of a sibling selection: every row that has a sibling (``siblings[i] >= 0``)
    gets instead a correct trajectory of ANOTHER question, drawn uniformly from the siblings chosen
    for the other questions' rows (so what the teacher is shown keeps the real siblings' format and
    length distribution), else from any correct trajectory of another question; -1 where there is
    none (every correct trajectory belongs to the row's own question) and where there was no sibling.

    Args:
        group_ids: ``[N]`` long, the question of each row.
        siblings: ``[N]`` long, the real selection (a `SIBLING_SELECTORS` output).
        correct: ``[N]`` bool (or 0/1).
        generator: the draws' random generator.

    Returns:
        ``[N]`` long: for each row, a correct row of another group, or -1.

    >>> placebo_siblings(torch.tensor([0, 0, 1, 1]), torch.tensor([-1, 0, -1, 2]), torch.tensor([1, 0, 1, 0]))
    tensor([-1,  2, -1,  0])
    """
    chosen = [int(j) for j in siblings.tolist() if j >= 0]
    correct_rows = [int(j) for j in torch.nonzero(correct.bool()).flatten().tolist()]
    groups = group_ids.tolist()
    out = torch.full_like(siblings, -1)  # [N]
    for i, j in enumerate(siblings.tolist()):
        if j < 0:
            continue
        pool = [k for k in chosen if groups[k] != groups[i]] or [k for k in correct_rows if groups[k] != groups[i]]
        if pool:
            out[i] = pool[int(torch.randint(len(pool), (1,), generator=generator))]
    return out

"""CPU tests of search_e1.algos.advantages: hand-derived values, a slow loop reference, registry."""

from __future__ import annotations

import math

import pytest
import torch

from search_e1.algos import (
    ADVANTAGE_ESTIMATORS,
    get_advantage_estimator,
    group_advantages,
    mixed_group_fraction,
    register_advantage_estimator,
)


def _slow_group_advantages(rewards, group_ids, eps, scale_by_std):
    """Loop reference: per group, (r - mean) / (unbiased std + eps); lone members get 0."""
    out = []
    r, g = rewards.tolist(), group_ids.tolist()
    for i in range(len(r)):
        members = [r[j] for j in range(len(r)) if g[j] == g[i]]
        if len(members) == 1:
            out.append(0.0)
            continue
        mean = sum(members) / len(members)
        std = math.sqrt(sum((x - mean) ** 2 for x in members) / (len(members) - 1))
        out.append((r[i] - mean) / (std + eps) if scale_by_std else r[i] - mean)
    return torch.tensor(out, dtype=torch.float64)


def test_one_group_hand_values():
    # rewards [1, 0, 0, 1]: mean 0.5, unbiased std sqrt((4 * 0.25) / 3) = sqrt(1/3) = 0.57735
    # -> advantages +-0.5 / 0.57735 = +-0.8660254 (eps = 0)
    r = torch.tensor([1.0, 0.0, 0.0, 1.0], dtype=torch.float64)
    adv = group_advantages(r, torch.zeros(4, dtype=torch.long), eps=0.0)
    s = math.sqrt(3) / 2
    torch.testing.assert_close(
        adv, torch.tensor([s, -s, -s, s], dtype=torch.float64), rtol=0, atol=1e-12
    )
    # Dr.GRPO (no std): just r - 0.5
    adv = get_advantage_estimator("grpo_no_std")(r, torch.zeros(4, dtype=torch.long))
    torch.testing.assert_close(adv, torch.tensor([0.5, -0.5, -0.5, 0.5], dtype=torch.float64))


def test_non_contiguous_groups_singletons_and_ties():
    # group 5: [1, 0] -> mean 0.5, std sqrt(0.5) = 0.70711 -> [+0.70711, -0.70711]
    # group 2: [0, 0.5] -> mean 0.25, std sqrt(0.125) = 0.35355 -> [-0.70711, +0.70711]
    # group 9: a single member -> 0;  group 4: [1, 1] -> 0 / (0 + eps) = 0
    r = torch.tensor([1.0, 0.0, 0.0, 0.5, 1.0, 1.0, 1.0])
    g = torch.tensor([5, 2, 5, 2, 9, 4, 4])
    adv = group_advantages(r, g, eps=0.0 + 1e-6)
    h = 1 / math.sqrt(2)
    expected = torch.tensor([h, -h, -h, h, 0.0, 0.0, 0.0])
    torch.testing.assert_close(adv, expected, rtol=0, atol=1e-5)
    assert torch.isfinite(group_advantages(r, g, eps=0.0)).all()  # lone/equal groups: no NaN


def test_integer_rewards_are_accepted():
    adv = group_advantages(torch.tensor([1, 0]), torch.tensor([0, 0]), eps=0.0)
    h = 1 / math.sqrt(2)
    torch.testing.assert_close(adv, torch.tensor([h, -h]), rtol=0, atol=1e-6)


@pytest.mark.parametrize("scale_by_std", [True, False])
def test_vectorised_matches_slow_loop(scale_by_std):
    gen = torch.Generator().manual_seed(0)
    n = 200
    rewards = torch.rand(n, generator=gen, dtype=torch.float64)
    rewards[::3] = torch.randint(0, 2, (len(rewards[::3]),), generator=gen).double()
    group_ids = torch.randint(-40, 40, (n,), generator=gen) * 7  # sparse ids, some singletons
    fast = group_advantages(rewards, group_ids, eps=1e-6, scale_by_std=scale_by_std)
    slow = _slow_group_advantages(rewards, group_ids, 1e-6, scale_by_std)
    torch.testing.assert_close(fast, slow, rtol=1e-9, atol=1e-9)


def test_mixed_group_fraction():
    # groups a=[1, 1] (equal), b=[0, 1] (mixed), c=[0, 0] (equal), d=[1] (equal) -> 1 / 4
    r = torch.tensor([1.0, 0.0, 1.0, 0.0, 1.0, 0.0])
    g = torch.tensor([3, 8, 3, 1, 8, 1])
    assert (
        mixed_group_fraction(torch.cat([r, torch.ones(1)]), torch.cat([g, torch.tensor([42])]))
        == 0.25
    )
    assert mixed_group_fraction(torch.tensor([]), torch.tensor([], dtype=torch.long)) == 0.0


def test_registry_names_unknown_and_duplicates():
    assert {"grpo", "grpo_no_std"} <= set(ADVANTAGE_ESTIMATORS)
    with pytest.raises(ValueError, match="grpo_no_std"):
        get_advantage_estimator("nope")
    with pytest.raises(ValueError, match="already registered"):
        register_advantage_estimator("grpo")(lambda r, g, eps=1e-6: r)


def test_groups_of_equal_rewards_get_exactly_zero_whatever_the_values():
    """Non-dyadic equal rewards (F1 scores, format weights) and their float rounding: a uniform group's
    advantage is exactly 0 (its tiny ``r - mean`` over a tiny std would otherwise be up to ~0.06)."""
    gen = torch.Generator().manual_seed(0)
    for dtype in (torch.float32, torch.float64):
        for _ in range(50):
            values = torch.rand(4, generator=gen, dtype=dtype)
            rewards = values.repeat_interleave(5)  # [20]: 4 uniform groups of 5
            groups = torch.arange(4).repeat_interleave(5)
            perm = torch.randperm(20, generator=gen)
            for scale in (True, False):
                adv = group_advantages(rewards[perm], groups[perm], scale_by_std=scale)
                assert torch.equal(adv, torch.zeros_like(adv))
    mixed = group_advantages(torch.tensor([0.7, 0.7, 0.1]), torch.tensor([0, 0, 0]))
    assert (mixed != 0).all()  # a mixed group keeps its advantages

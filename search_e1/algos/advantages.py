"""Group-relative advantages for GRPO (pure tensor functions + a registry by name).

Every trajectory ``i`` belongs to a group (the ``G`` samples of one question, ``group_ids[i]``);
its advantage is its outcome reward minus the mean reward of its group, optionally divided by the
group's standard deviation. The advantage is one scalar per trajectory; the policy loss broadcasts
it over the trajectory's sampled tokens.

Estimators are picked by name from `ADVANTAGE_ESTIMATORS`:

- ``grpo``: ``(r - mean_g) / (std_g + eps)`` (DeepSeekMath GRPO, Search-R1's GRPO).
- ``grpo_no_std``: ``r - mean_g`` (Dr.GRPO: no std scaling, which otherwise up-weights groups
  whose rewards barely differ).

Departures from Search-R1 / veRL:

- Groups are given by arbitrary integer ids (not necessarily contiguous or sorted) and everything
  is vectorised with ``unique`` + ``index_add``; no Python loop over groups or dict of lists.
- The std is the UNBIASED one (``torch.std`` default, divisor ``n - 1``), as in veRL; a group of a
  single member has advantage exactly 0 (veRL sets its mean 0 and std 1, which hands a lone
  sample its raw reward as advantage; here a lone sample carries no relative signal).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from search_e1.registry import Registry

AdvantageFn = Callable[..., Tensor]
"""``(rewards [N], group_ids [N] long, eps: float = 1e-6) -> advantages [N]``."""

__all__ = [
    "ADVANTAGE_ESTIMATORS",
    "AdvantageFn",
    "get_advantage_estimator",
    "group_advantages",
    "group_stats",
    "mixed_group_fraction",
    "mixed_group_rows",
    "register_advantage_estimator",
]


def _float(rewards: Tensor) -> Tensor:
    """Rewards as a floating tensor (keeps float64 input in float64)."""
    return rewards if rewards.is_floating_point() else rewards.float()  # [N]


def group_stats(rewards: Tensor, group_ids: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Per-trajectory group ``(mean, unbiased std, size)``, each gathered back to shape ``[N]``.

    The std of a group of one member is 0 (not NaN).
    """
    r = _float(rewards)  # [N]
    _, inv = torch.unique(group_ids, return_inverse=True)  # inv: [N] in [0, G)
    num_groups = int(inv.max().item()) + 1 if inv.numel() else 0
    count = torch.zeros(num_groups, dtype=r.dtype, device=r.device)  # [G]
    count.index_add_(0, inv, torch.ones_like(r))  # [G]
    total = torch.zeros_like(count).index_add_(0, inv, r)  # [G]
    mean = (total / count)[inv]  # [N]
    sq = torch.zeros_like(count).index_add_(0, inv, (r - mean) ** 2)  # [G]
    std = (sq / (count - 1).clamp(min=1)).sqrt()[inv]  # [N]
    return mean, std, count[inv]


def group_advantages(
    rewards: Tensor, group_ids: Tensor, eps: float = 1e-6, scale_by_std: bool = True
) -> Tensor:
    """GRPO advantages: reward minus its group mean, over ``(group std + eps)`` if ``scale_by_std``.

    Args:
        rewards: ``[N]`` outcome reward per trajectory.
        group_ids: ``[N]`` long, any integer id per group (need not be contiguous).
        eps: added to the std in the denominator.
        scale_by_std: divide by the unbiased group std (``False``: Dr.GRPO mean-centering only).

    Returns:
        ``[N]`` advantages (floating; exactly 0 for a group of one member and for a group whose
        rewards are all equal, whatever the float rounding of its mean: for non-dyadic rewards such
        as F1 ``r - mean`` is not exactly 0 there, and over a tiny std it would be large).

    Example: rewards ``[1, 0, 0, 1]`` in one group have mean 0.5 and unbiased std
    ``sqrt(1/3) = 0.5774``, so advantages ``[0.866, -0.866, -0.866, 0.866]``.
    """
    if rewards.shape != group_ids.shape or rewards.dim() != 1:
        raise ValueError(
            f"rewards and group_ids must both be [N]; got {tuple(rewards.shape)} and "
            f"{tuple(group_ids.shape)}"
        )
    r = _float(rewards)  # [N]
    if r.numel() == 0:
        return r.clone()
    mean, std, size = group_stats(r, group_ids)  # [N] each
    adv = r - mean  # [N]
    keep = (size > 1) & mixed_group_rows(r, group_ids)  # [N] equal rewards: exactly 0, whatever the rounding
    if scale_by_std:
        denom = std + eps  # [N]
        keep = keep & (denom > 0)  # [N] an all-equal group with eps = 0: 0, not 0/0
        adv = adv / torch.where(keep, denom, torch.ones_like(denom))  # [N]
    return torch.where(keep, adv, torch.zeros_like(adv))  # [N]


def _mixed_groups(rewards: Tensor, group_ids: Tensor) -> tuple[Tensor, Tensor]:
    """``(mixed [G] bool, inv [N])``: whether each group's rewards differ, and each row's group."""
    r = _float(rewards)  # [N]
    _, inv = torch.unique(group_ids, return_inverse=True)  # [N]
    num_groups = int(inv.max().item()) + 1
    init = torch.zeros(num_groups, dtype=r.dtype, device=r.device)  # [G]
    hi = init.scatter_reduce(0, inv, r, reduce="amax", include_self=False)  # [G]
    lo = init.scatter_reduce(0, inv, r, reduce="amin", include_self=False)  # [G]
    return hi != lo, inv


def mixed_group_fraction(rewards: Tensor, group_ids: Tensor) -> float:
    """Share of groups whose rewards are not all equal (only those give GRPO a gradient signal).

    Returns 0.0 for an empty batch.
    """
    if rewards.numel() == 0:
        return 0.0
    mixed, _ = _mixed_groups(rewards, group_ids)
    return float(mixed.float().mean().item())


def mixed_group_rows(rewards: Tensor, group_ids: Tensor) -> Tensor:
    """``[N]`` bool: the row's group has rewards that are not all equal (DAPO's dynamic sampling
    keeps exactly these rows).

    >>> mixed_group_rows(torch.tensor([1.0, 0.0, 1.0, 1.0]), torch.tensor([0, 0, 1, 1]))
    tensor([ True,  True, False, False])
    """
    if rewards.numel() == 0:
        return torch.zeros(0, dtype=torch.bool, device=rewards.device)
    mixed, inv = _mixed_groups(rewards, group_ids)
    return mixed[inv]


# --- registry ---------------------------------------------------------------------------------

ADVANTAGE_ESTIMATORS: Registry[AdvantageFn] = Registry("advantage estimator")
"""Advantage estimators ``(rewards [N], group_ids [N], eps) -> [N]`` by name."""
register_advantage_estimator = ADVANTAGE_ESTIMATORS.register
get_advantage_estimator = ADVANTAGE_ESTIMATORS.get


@register_advantage_estimator("grpo")
def grpo_advantages(rewards: Tensor, group_ids: Tensor, eps: float = 1e-6) -> Tensor:
    """``(r - mean_g) / (std_g + eps)``: ``[N] -> [N]``."""
    return group_advantages(rewards, group_ids, eps=eps, scale_by_std=True)  # [N]


@register_advantage_estimator("grpo_no_std")
def grpo_no_std_advantages(rewards: Tensor, group_ids: Tensor, eps: float = 1e-6) -> Tensor:
    """``r - mean_g`` (Dr.GRPO); ``eps`` is accepted for a common signature and unused."""
    return group_advantages(rewards, group_ids, eps=eps, scale_by_std=False)  # [N]

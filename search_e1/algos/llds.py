"""LLDS: the likelihood-preserving regulariser against Lazy Likelihood Displacement (pure, registry).

Deng et al., 2025, "On GRPO Collapse in Agent Search: The Lazy Likelihood-Displacement" (arXiv
2512.04220) trace GRPO's collapse in search agents to the likelihood of good trajectories
stagnating or falling during updates, and add a penalty that acts only where it fell. What is
implemented here (from the paper's description and its authors' reference implementation):

* the preserving set: trajectories with advantage ``A_i >= 0`` (zero-advantage rows included);
* per token ``delta_t = log pi_old(y_t) - log pi(y_t)`` (``pi_old`` = the rollout policy, not the
  frozen reference), penalised as ``max(0, delta_t)``: only tokens whose own likelihood fell;
* a gate, so the term acts only when the likelihood of a whole unit fell:

  - ``action`` (the paper's best, "A" gate): an action is a maximal run of sampled tokens (loss
    mask 1) between two environment insertions, i.e. one turn's ``<think>/<search>`` or
    ``<answer>`` text; its tokens are penalised only if ``sum_{t in action} delta_t > 0``;
  - ``response`` ("R" gate): all of a trajectory's sampled tokens, gated on their sum;

* ``L_LLDS = lambda * sum_{i,t} m_it g_it max(0, delta_it) / sum_{i,t} m_it``: a token mean over
  ALL sampled tokens of the batch (rows outside the preserving set count in the denominator),
  ADDED to the minimised loss, so its gradient raises the gated tokens' likelihood. The authors
  use ``lambda = 0.2``. It is 0 on the first update after a rollout (``pi = pi_old``), so it only
  acts with several optimiser steps per rollout (``ppo_epochs`` or mini-batches).

`llds_penalty` returns the per-token matrix; aggregate it with ``agg_loss(..., "token-mean")``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from search_e1.registry import Registry

__all__ = ["LLDS_GATES", "action_ids", "get_llds_gate", "llds_penalty"]

GateFn = Callable[[Tensor, Tensor], Tensor]
"""``(delta [B, T] under the preserving mask, preserve [B, T] bool) -> gate [B, T] bool``."""

LLDS_GATES: Registry[GateFn] = Registry("LLDS gate")
"""Where LLDS decides that a likelihood fell: per ``action`` or per ``response``."""
get_llds_gate = LLDS_GATES.get


def action_ids(mask: Tensor) -> Tensor:
    """``[B, T]`` long: 1, 2, ... for each maximal run of ``mask != 0`` in a row, 0 elsewhere.

    >>> action_ids(torch.tensor([[0, 1, 1, 0, 1], [1, 0, 0, 1, 1]]))
    tensor([[0, 1, 1, 0, 2],
            [1, 0, 0, 2, 2]])
    """
    on = mask != 0  # [B, T]
    prev = torch.zeros_like(on)
    prev[:, 1:] = on[:, :-1]
    starts = on & ~prev  # [B, T]
    return torch.where(on, starts.long().cumsum(-1), 0)  # [B, T]


@LLDS_GATES.register("action")
def _action_gate(delta: Tensor, preserve: Tensor) -> Tensor:
    """An action's tokens are gated in when the action's summed ``delta`` is > 0."""
    ids = action_ids(preserve)  # [B, T]
    n_actions = int(ids.max()) + 1 if ids.numel() else 1
    flat = (torch.arange(ids.shape[0], device=ids.device).unsqueeze(-1) * n_actions + ids).reshape(-1)  # [B*T]
    sums = torch.zeros(ids.shape[0] * n_actions, dtype=delta.dtype, device=delta.device)
    sums.index_add_(0, flat, torch.where(preserve, delta, 0.0).reshape(-1))  # [B*A]
    return preserve & (sums[flat].reshape(ids.shape) > 0)  # [B, T]


@LLDS_GATES.register("response")
def _response_gate(delta: Tensor, preserve: Tensor) -> Tensor:
    """A trajectory's tokens are gated in when its summed ``delta`` is > 0."""
    total = torch.where(preserve, delta, 0.0).sum(-1, keepdim=True)  # [B, 1]
    return preserve & (total > 0)  # [B, T]


def llds_penalty(logprobs: Tensor, old_logprobs: Tensor, advantages: Tensor, mask: Tensor,
                 gate: str = "action") -> Tensor:
    """Per-token LLDS penalty ``g_it * max(0, log pi_old - log pi)`` ``[B, T]`` (grad flows into
    ``logprobs``), 0 outside the preserving set (``A_i >= 0``), under mask 0 and where the gate is off.

    Worked example (2 sequences x 3 tokens, all sampled, ``A = [1, -1]``): ``delta = old - new =
    [[0.2, -0.5, 0.4], [0.3, 0.3, 0.3]]``. Row 2 is outside the preserving set: 0. Row 1 is one
    action with ``sum delta = 0.1 > 0``: penalty ``[0.2, 0, 0.4]`` (the middle token rose). With
    ``delta`` row 1 ``[0.2, -0.5, 0.1]`` the sum is -0.2: the gate is off and the row gives 0.
    """
    adv = advantages.detach()
    adv = adv[:, 0] if adv.dim() == 2 else adv  # [B]
    preserve = (mask != 0) & (adv >= 0).unsqueeze(-1)  # [B, T]
    delta = old_logprobs.detach() - logprobs  # [B, T]
    g = get_llds_gate(gate)(delta.detach(), preserve)  # [B, T] bool
    return torch.where(g, torch.clamp(delta, min=0.0), 0.0)  # [B, T]

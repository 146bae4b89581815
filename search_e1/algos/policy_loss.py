"""Masked reductions, loss aggregation modes and the PPO clipped surrogate (pure, registries).

- `masked_sum` / `masked_mean`: reductions under the loss mask (1 = sampled by the policy,
  0 = prompt / inserted information / padding; float or bool ``[B, T]``).
- `agg_loss`: the ONE place that turns a per-token loss matrix into a scalar. Modes by name from
  `LOSS_AGG_MODES`: ``token-mean`` (default; every sampled token weighs the same),
  ``seq-mean-token-mean`` (each trajectory weighs the same, the GRPO paper's form) and
  ``seq-mean-token-sum`` (sum over a trajectory's tokens, mean over trajectories).
- `clipped_policy_loss`: the PPO clipped surrogate per token; registered as ``ppo_clip`` in
  `POLICY_LOSSES`.

Departures from veRL / Search-R1:

- Gradient accumulation is explicit: pass the GLOBAL normaliser of the mini-batch (``num_tokens``
  for ``token-mean``, ``num_seqs`` for the ``seq-mean-*`` modes) and the micro-batch losses SUM
  to exactly the loss of the whole mini-batch, instead of averaging per-micro-batch means.
- ``seq-mean-*`` averages over the trajectories that have at least one sampled token, so all-pad
  rows (uneven micro-batches, FSDP padding) do not dilute the mean; an empty mask gives 0, not NaN.
- The log-ratio is zeroed under mask 0 and clamped to [-20, 20] before ``exp`` so garbage
  log-probs on padding can neither overflow nor produce NaN gradients.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from search_e1.registry import Registry

AggFn = Callable[[Tensor, Tensor, float | None, float | None], Tensor]
"""``(loss_mat [B, T], mask [B, T], num_tokens, num_seqs) -> scalar``."""
PolicyLossFn = Callable[..., tuple[Tensor, dict[str, Tensor]]]
"""``(logprobs, old_logprobs, advantages, mask, clip_low, clip_high) -> (loss_mat, stats)``."""

__all__ = [
    "LOSS_AGG_MODES",
    "POLICY_LOSSES",
    "agg_loss",
    "clipped_policy_loss",
    "get_agg_mode",
    "get_policy_loss",
    "masked_mean",
    "masked_sum",
    "register_agg_mode",
    "register_policy_loss",
]

_MAX_LOG_RATIO = 20.0


def masked_sum(x: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Sum of ``x`` where ``mask`` is 1 (over ``dim``, or everything when ``None``)."""
    m = mask.to(x.dtype)  # [B, T]
    return (x * m).sum() if dim is None else (x * m).sum(dim)


def masked_mean(x: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Mean of ``x`` over the positions where ``mask`` is 1; 0 where the mask is empty."""
    m = mask.to(x.dtype)  # [B, T]
    count = m.sum() if dim is None else m.sum(dim)  # [] or reduced shape
    return masked_sum(x, m, dim) / count.clamp(min=1.0)


# --- aggregation modes -------------------------------------------------------------------------

LOSS_AGG_MODES: Registry[AggFn] = Registry("loss aggregation mode")
"""Loss aggregation modes ``(loss_mat, mask, num_tokens, num_seqs) -> scalar`` by name."""
register_agg_mode = LOSS_AGG_MODES.register
get_agg_mode = LOSS_AGG_MODES.get


def _seq_mean(per_seq: Tensor, mask: Tensor, num_seqs: float | None) -> Tensor:
    """Mean of ``per_seq [B]`` over rows with a sampled token (or sum / ``num_seqs``)."""
    has_tokens = (mask != 0).any(-1).to(per_seq.dtype)  # [B]
    total = (per_seq * has_tokens).sum()  # []
    denom = has_tokens.sum().clamp(min=1.0) if num_seqs is None else float(num_seqs)
    return total / denom


@register_agg_mode("token-mean")
def _token_mean(
    loss_mat: Tensor, mask: Tensor, num_tokens: float | None = None, num_seqs: float | None = None
) -> Tensor:
    """Sum over sampled tokens / their number (or / ``num_tokens`` of the whole mini-batch)."""
    if num_tokens is None:
        return masked_mean(loss_mat, mask)
    return masked_sum(loss_mat, mask) / float(num_tokens)


@register_agg_mode("seq-mean-token-mean")
def _seq_mean_token_mean(
    loss_mat: Tensor, mask: Tensor, num_tokens: float | None = None, num_seqs: float | None = None
) -> Tensor:
    """Token mean within each trajectory, then mean over trajectories."""
    per_seq = masked_mean(loss_mat, mask, dim=-1)  # [B]
    return _seq_mean(per_seq, mask, num_seqs)


@register_agg_mode("seq-mean-token-sum")
def _seq_mean_token_sum(
    loss_mat: Tensor, mask: Tensor, num_tokens: float | None = None, num_seqs: float | None = None
) -> Tensor:
    """Token sum within each trajectory, then mean over trajectories."""
    per_seq = masked_sum(loss_mat, mask, dim=-1)  # [B]
    return _seq_mean(per_seq, mask, num_seqs)


def agg_loss(
    loss_mat: Tensor,
    mask: Tensor,
    mode: str = "token-mean",
    num_tokens: float | None = None,
    num_seqs: float | None = None,
) -> Tensor:
    """Aggregate a per-token loss ``[B, T]`` under ``mask [B, T]`` into a scalar.

    Args:
        loss_mat: ``[B, T]`` per-token loss (any value under mask 0; it is ignored).
        mask: ``[B, T]`` loss mask, 1 = sampled by the policy.
        mode: a name in `LOSS_AGG_MODES`.
        num_tokens: ``token-mean`` only: divide the masked sum by this instead of the micro-batch's
            own token count (the mini-batch's token count, for gradient accumulation).
        num_seqs: ``seq-mean-*`` only: divide the sum of per-trajectory losses by this instead of
            the micro-batch's count of non-empty trajectories.
    """
    if loss_mat.shape != mask.shape:
        raise ValueError(f"loss_mat {tuple(loss_mat.shape)} and mask {tuple(mask.shape)} differ")
    return get_agg_mode(mode)(loss_mat, mask, num_tokens, num_seqs)


# --- policy losses -----------------------------------------------------------------------------

POLICY_LOSSES: Registry[PolicyLossFn] = Registry("policy loss")
"""Per-token policy losses ``(...) -> (loss_mat [B, T], stats)`` by name."""
register_policy_loss = POLICY_LOSSES.register
get_policy_loss = POLICY_LOSSES.get


@register_policy_loss("ppo_clip")
def clipped_policy_loss(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    mask: Tensor,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
) -> tuple[Tensor, dict[str, Tensor]]:
    """PPO clipped surrogate per token: ``max(-A * r, -A * clip(r, 1 - clip_low, 1 + clip_high))``.

    Args:
        logprobs: ``[B, T]`` log-probs of the sampled tokens under the current policy (grad flows).
        old_logprobs: ``[B, T]`` log-probs under the policy that sampled them (constant).
        advantages: ``[B]`` one advantage per trajectory (broadcast over T), or ``[B, T]``.
        mask: ``[B, T]`` loss mask, 1 = sampled by the policy.
        clip_low, clip_high: the ratio is clipped to ``[1 - clip_low, 1 + clip_high]``
            (asymmetric "clip-higher" when they differ).

    Returns:
        ``loss_mat [B, T]`` (0 where mask is 0; aggregate it with `agg_loss`) and detached scalar
        stats over masked tokens: ``clip_frac`` (share where the clipped branch is strictly the
        larger, i.e. the one whose gradient is 0), ``approx_kl`` (mean of ``old - new`` log-prob:
        the k1 estimate of ``KL(pi_old || pi)`` from tokens sampled by ``pi_old``) and
        ``ratio_mean``.
    """
    on = mask != 0  # [B, T] bool
    adv = advantages.detach()  # [B] or [B, T], a constant
    adv = adv.unsqueeze(-1) if adv.dim() == 1 else adv  # [B, 1] or [B, T]
    adv = adv.to(logprobs.dtype)  # [B, 1] or [B, T]
    log_ratio = torch.where(on, logprobs - old_logprobs.detach(), 0.0)  # [B, T]
    log_ratio = log_ratio.clamp(-_MAX_LOG_RATIO, _MAX_LOG_RATIO)  # [B, T]
    ratio = torch.exp(log_ratio)  # [B, T]
    unclipped = -adv * ratio  # [B, T]
    clipped = -adv * torch.clamp(ratio, 1.0 - clip_low, 1.0 + clip_high)  # [B, T]
    loss_mat = torch.where(on, torch.maximum(unclipped, clipped), 0.0)  # [B, T]
    with torch.no_grad():
        stats = {
            "clip_frac": masked_mean((clipped > unclipped).to(logprobs.dtype), on),
            "approx_kl": masked_mean(-log_ratio, on),
            "ratio_mean": masked_mean(ratio, on),
        }
    return loss_mat, stats

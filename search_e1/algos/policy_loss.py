"""Masked reductions, loss aggregation modes and the PPO clipped surrogate (pure, registries).

- `masked_sum` / `masked_mean`: reductions under the loss mask (1 = sampled by the policy,
  0 = prompt / inserted information / padding; float or bool ``[B, T]``).
- `agg_loss`: the ONE place that turns a per-token loss matrix into a scalar. Modes by name from
  `LOSS_AGG_MODES`: ``token-mean`` (default; every sampled token weighs the same),
  ``seq-mean-token-mean`` (each trajectory weighs the same, the GRPO paper's form) and
  ``seq-mean-token-sum`` (sum over a trajectory's tokens, mean over trajectories) and
  ``seq-mean-token-sum-norm`` (Dr.GRPO: token sum over a constant, mean over trajectories).
- `clipped_policy_loss`: the PPO clipped surrogate per token (``ppo_clip`` in `POLICY_LOSSES`;
  DAPO's clip-higher is ``clip_high > clip_low``).
- `gspo_policy_loss`: GSPO's sequence-level clipped surrogate (``gspo``).

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

AggFn = Callable[..., Tensor]
"""``(loss_mat [B, T], mask [B, T], num_tokens, num_seqs, norm_tokens) -> scalar``."""
PolicyLossFn = Callable[..., tuple[Tensor, dict[str, Tensor]]]
"""``(logprobs, old_logprobs, advantages, mask, clip_low, clip_high) -> (loss_mat, stats)``."""

__all__ = [
    "LOSS_AGG_MODES",
    "POLICY_LOSSES",
    "agg_loss",
    "clipped_policy_loss",
    "get_agg_mode",
    "gspo_policy_loss",
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
    loss_mat: Tensor, mask: Tensor, num_tokens: float | None = None, num_seqs: float | None = None,
    norm_tokens: float | None = None,
) -> Tensor:
    """Sum over sampled tokens / their number (or / ``num_tokens`` of the whole mini-batch)."""
    if num_tokens is None:
        return masked_mean(loss_mat, mask)
    return masked_sum(loss_mat, mask) / float(num_tokens)


@register_agg_mode("seq-mean-token-mean")
def _seq_mean_token_mean(
    loss_mat: Tensor, mask: Tensor, num_tokens: float | None = None, num_seqs: float | None = None,
    norm_tokens: float | None = None,
) -> Tensor:
    """Token mean within each trajectory, then mean over trajectories."""
    per_seq = masked_mean(loss_mat, mask, dim=-1)  # [B]
    return _seq_mean(per_seq, mask, num_seqs)


@register_agg_mode("seq-mean-token-sum")
def _seq_mean_token_sum(
    loss_mat: Tensor, mask: Tensor, num_tokens: float | None = None, num_seqs: float | None = None,
    norm_tokens: float | None = None,
) -> Tensor:
    """Token sum within each trajectory, then mean over trajectories."""
    per_seq = masked_sum(loss_mat, mask, dim=-1)  # [B]
    return _seq_mean(per_seq, mask, num_seqs)


@register_agg_mode("seq-mean-token-sum-norm")
def _seq_mean_token_sum_norm(
    loss_mat: Tensor, mask: Tensor, num_tokens: float | None = None, num_seqs: float | None = None,
    norm_tokens: float | None = None,
) -> Tensor:
    """Dr.GRPO (Liu et al., 2025, "Understanding R1-Zero-Like Training"): a trajectory's token SUM
    divided by a CONSTANT ``norm_tokens`` (the generation budget), then the mean over trajectories:
    ``L = (1/N) sum_i sum_t l_it / C``. Unlike ``seq-mean-token-mean`` a long wrong answer is not
    penalised less per token than a short one (the length bias Dr.GRPO removes).

    Worked example, 2 sequences x 3 tokens, ``l = [[1, 2, 3], [4, 5, 6]]``, mask ``[[1, 1, 0],
    [1, 1, 1]]``, ``C = 10``: token sums 3 and 15 -> ``(3/10 + 15/10) / 2 = 0.9``.
    """
    if norm_tokens is None or norm_tokens <= 0:
        raise ValueError("seq-mean-token-sum-norm needs norm_tokens > 0 (the constant generation budget)")
    per_seq = masked_sum(loss_mat, mask, dim=-1) / float(norm_tokens)  # [B]
    return _seq_mean(per_seq, mask, num_seqs)


def agg_loss(
    loss_mat: Tensor,
    mask: Tensor,
    mode: str = "token-mean",
    num_tokens: float | None = None,
    num_seqs: float | None = None,
    norm_tokens: float | None = None,
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
        norm_tokens: ``seq-mean-token-sum-norm`` only: the constant a trajectory's token sum is
            divided by (Dr.GRPO uses the generation budget).
    """
    if loss_mat.shape != mask.shape:
        raise ValueError(f"loss_mat {tuple(loss_mat.shape)} and mask {tuple(mask.shape)} differ")
    return get_agg_mode(mode)(loss_mat, mask, num_tokens, num_seqs, norm_tokens)


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


@register_policy_loss("gspo")
def gspo_policy_loss(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    mask: Tensor,
    clip_low: float = 3e-4,
    clip_high: float = 4e-4,
) -> tuple[Tensor, dict[str, Tensor]]:
    """GSPO (Zheng et al., 2025, "Group Sequence Policy Optimization"), in its GSPO-token form.

    The importance ratio is one per SEQUENCE, the length-normalised likelihood ratio
    ``s_i = exp((1/|y_i|) sum_t (log pi(y_it) - log pi_old(y_it)))`` over the sampled tokens, and it
    is clipped per sequence: ``L_i = max(-A_i s_i, -A_i clip(s_i, 1 - clip_low, 1 + clip_high))``.
    Written per token as ``s_it = sg[s_i] * pi(y_it) / sg[pi(y_it)]`` (value ``s_i`` at every
    token), so with ``loss_agg: seq-mean-token-mean`` the mean over sequences of ``L_i`` has GSPO's
    gradient ``-A_i s_i (1/|y_i|) sum_t grad log pi(y_it)`` (0 for a clipped sequence). The paper's
    clip ranges are 3e-4 / 4e-4 (a sequence ratio moves far less than a token ratio).

    Worked example (2 sequences x 3 tokens, mask ``[[1, 1, 0], [1, 1, 1]]``): log-ratios
    ``[[0.1, -0.3, *], [0.2, 0.2, 0.2]]`` give ``s = [exp(-0.1), exp(0.2)] = [0.905, 1.221]``; with
    ``A = [1, -1]`` and clip 0.2/0.2: sequence 1 ``max(-0.905, -0.905) = -0.905`` (inside the
    range), sequence 2 ``max(1.221, 1.2) = 1.221`` (unclipped branch, gradient flows).

    Returns ``loss_mat [B, T]`` (``L_i`` on every sampled token of row ``i``, 0 elsewhere) and
    detached stats: ``clip_frac`` (share of sequences on the clipped branch), ``approx_kl`` (token
    mean of ``old - new``), ``ratio_mean`` (mean ``s_i``).
    """
    on = mask != 0  # [B, T]
    adv = advantages.detach()
    if adv.dim() != 1 or adv.shape[0] != logprobs.shape[0]:
        raise ValueError(f"gspo_policy_loss: advantages must be one per sequence [B] = [{logprobs.shape[0]}], got "
                         f"{tuple(adv.shape)} (GSPO's advantage is sequence-level)")
    adv = adv.to(logprobs.dtype)  # [B]
    log_ratio = torch.where(on, logprobs - old_logprobs.detach(), 0.0)  # [B, T]
    n_tok = on.sum(-1).clamp(min=1).to(logprobs.dtype)  # [B]
    seq_log_ratio = (log_ratio.sum(-1) / n_tok).clamp(-_MAX_LOG_RATIO, _MAX_LOG_RATIO)  # [B]
    seq_ratio = torch.exp(seq_log_ratio).detach()  # [B], sg[s_i]
    token_lp = torch.where(on, logprobs, 0.0)  # [B, T]
    ratio = seq_ratio.unsqueeze(-1) * torch.exp(token_lp - token_lp.detach())  # [B, T], value s_i
    a = adv.unsqueeze(-1)  # [B, 1]
    unclipped = -a * ratio  # [B, T]
    clipped = -a * torch.clamp(ratio, 1.0 - clip_low, 1.0 + clip_high)  # [B, T]
    loss_mat = torch.where(on, torch.maximum(unclipped, clipped), 0.0)  # [B, T]
    with torch.no_grad():
        rows = on.any(-1)  # [B]
        seq_clipped = (-adv * torch.clamp(seq_ratio, 1.0 - clip_low, 1.0 + clip_high)) > (-adv * seq_ratio)  # [B]
        n_rows = rows.sum().clamp(min=1)
        stats = {
            "clip_frac": (seq_clipped & rows).sum().to(logprobs.dtype) / n_rows,
            "approx_kl": masked_mean(-log_ratio, on),
            "ratio_mean": (seq_ratio * rows).sum() / n_rows,
        }
    return loss_mat, stats

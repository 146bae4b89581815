"""Per-token estimators of KL(pi || pi_ref) from tokens sampled by pi (pure, registry by name).

With ``d = log pi_ref(x) - log pi(x)`` for a token ``x`` sampled from ``pi`` (Schulman's
"Approximating KL divergence" note):

- ``k1``: ``-d = log pi - log pi_ref`` -- unbiased, high variance, can be negative per token.
- ``k2``: ``0.5 * d**2`` -- biased, low variance, always >= 0.
- ``k3`` (alias ``low_var_kl``): ``exp(d) - d - 1`` -- unbiased, low variance, always >= 0; the
  estimator GRPO (DeepSeekMath) and Search-R1 use for the KL-to-reference penalty.

All return ``[B, T]`` and let gradients flow into ``logprobs`` (``ref_logprobs`` is a constant);
mask and aggregate with `search_e1.algos.agg_loss`, so tokens inserted by the environment never
enter the KL term (a Search-R1 pitfall).

Departure from veRL: ``k3`` is clamped to [-10, 10] like veRL, but ``d`` is first clamped to
[-20, 20] so that ``exp`` cannot overflow; this changes no value (``k3 > 10`` at both ends of that
range, so the output clamp already applies) and keeps the backward pass free of ``0 * inf = NaN``
on garbage log-probs under padding.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from search_e1.registry import Registry

KLFn = Callable[[Tensor, Tensor], Tensor]
"""``(logprobs [B, T], ref_logprobs [B, T]) -> per-token KL estimate [B, T]``."""

__all__ = ["KL_ESTIMATORS", "KLFn", "get_kl_estimator", "kl_estimate", "register_kl_estimator"]

K3_CLAMP = 10.0
"""``k3`` is clamped to ``[-K3_CLAMP, K3_CLAMP]`` (it is >= 0, so in effect to at most 10)."""
_MAX_LOG_RATIO = 20.0

KL_ESTIMATORS: Registry[KLFn] = Registry("KL estimator")
"""Per-token KL(pi || pi_ref) estimators by name."""
register_kl_estimator = KL_ESTIMATORS.register
get_kl_estimator = KL_ESTIMATORS.get


@register_kl_estimator("k1")
def kl_k1(logprobs: Tensor, ref_logprobs: Tensor) -> Tensor:
    """``log pi - log pi_ref`` per token."""
    return logprobs - ref_logprobs.detach()  # [B, T]


@register_kl_estimator("k2")
def kl_k2(logprobs: Tensor, ref_logprobs: Tensor) -> Tensor:
    """``0.5 * (log pi - log pi_ref)**2`` per token."""
    return 0.5 * (logprobs - ref_logprobs.detach()) ** 2  # [B, T]


@register_kl_estimator("k3", "low_var_kl")
def kl_k3(logprobs: Tensor, ref_logprobs: Tensor) -> Tensor:
    """``exp(d) - d - 1`` with ``d = log pi_ref - log pi``, clamped to [-10, 10] per token."""
    d = (ref_logprobs.detach() - logprobs).clamp(-_MAX_LOG_RATIO, _MAX_LOG_RATIO)  # [B, T]
    kl = torch.exp(d) - d - 1.0  # [B, T]
    return kl.clamp(-K3_CLAMP, K3_CLAMP)  # [B, T]


def kl_estimate(logprobs: Tensor, ref_logprobs: Tensor, kind: str = "k3") -> Tensor:
    """Per-token estimate ``[B, T]`` of KL(pi || pi_ref) by the estimator named ``kind``.

    Args:
        logprobs: ``[B, T]`` log-probs of the sampled tokens under the current policy pi.
        ref_logprobs: ``[B, T]`` log-probs of the same tokens under the frozen reference.
        kind: a name in `KL_ESTIMATORS` (``k1``, ``k2``, ``k3`` / ``low_var_kl``).
    """
    if logprobs.shape != ref_logprobs.shape:
        raise ValueError(
            f"logprobs {tuple(logprobs.shape)} and ref_logprobs {tuple(ref_logprobs.shape)} differ"
        )
    return get_kl_estimator(kind)(logprobs, ref_logprobs)  # [B, T]

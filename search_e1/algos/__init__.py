"""Pure tensor functions of Search-E1's two rounds, with variants picked by name from registries.

- `advantages`: GRPO group-relative advantages (``grpo``, ``grpo_no_std``), mixed-group share.
- `policy_loss`: masked reductions, `agg_loss` (``token-mean``, ``seq-mean-token-mean``,
  ``seq-mean-token-sum``), the PPO clipped surrogate (``ppo_clip``).
- `kl`: per-token KL(pi || pi_ref) estimators (``k1``, ``k2``, ``k3`` / ``low_var_kl``).
- `distill`: token-level forward KL(teacher || student), full vocabulary and teacher top-k
  (``forward_kl``, ``forward_kl_topk``), chunked with an analytic backward.
- `siblings`: the more efficient correct sibling shown to the OFSD teacher (``most_efficient``).

The loss mask has one meaning everywhere: 1 = token sampled by the policy, 0 = prompt, inserted
information, padding. Every registry refuses duplicate names (``ValueError``) and its ``get_*``
lists the known names when asked for an unknown one.

    >>> import torch
    >>> from search_e1.algos import group_advantages
    >>> group_advantages(torch.tensor([1.0, 0.0]), torch.tensor([7, 7]), eps=0.0)
    tensor([ 0.7071, -0.7071])
"""

from __future__ import annotations

from search_e1.algos.advantages import (
    ADVANTAGE_ESTIMATORS,
    get_advantage_estimator,
    group_advantages,
    group_stats,
    mixed_group_fraction,
    register_advantage_estimator,
)
from search_e1.algos.distill import (
    DISTILL_LOSSES,
    FullTeacher,
    TeacherTargets,
    TopKTeacher,
    forward_kl,
    forward_kl_topk,
    get_distill_loss,
    make_teacher_targets,
    register_distill_loss,
    teacher_topk,
)
from search_e1.algos.kl import (
    KL_ESTIMATORS,
    get_kl_estimator,
    kl_estimate,
    register_kl_estimator,
)
from search_e1.algos.policy_loss import (
    LOSS_AGG_MODES,
    POLICY_LOSSES,
    agg_loss,
    clipped_policy_loss,
    get_agg_mode,
    get_policy_loss,
    masked_mean,
    masked_sum,
    register_agg_mode,
    register_policy_loss,
)
from search_e1.algos.siblings import (
    SIBLING_SELECTORS,
    get_sibling_selector,
    register_sibling_selector,
    select_siblings,
)

__all__ = [
    "ADVANTAGE_ESTIMATORS",
    "DISTILL_LOSSES",
    "KL_ESTIMATORS",
    "LOSS_AGG_MODES",
    "POLICY_LOSSES",
    "SIBLING_SELECTORS",
    "FullTeacher",
    "TeacherTargets",
    "TopKTeacher",
    "agg_loss",
    "clipped_policy_loss",
    "forward_kl",
    "forward_kl_topk",
    "get_advantage_estimator",
    "get_agg_mode",
    "get_distill_loss",
    "get_kl_estimator",
    "get_policy_loss",
    "get_sibling_selector",
    "group_advantages",
    "group_stats",
    "kl_estimate",
    "make_teacher_targets",
    "masked_mean",
    "masked_sum",
    "mixed_group_fraction",
    "register_advantage_estimator",
    "register_agg_mode",
    "register_distill_loss",
    "register_kl_estimator",
    "register_policy_loss",
    "register_sibling_selector",
    "select_siblings",
    "teacher_topk",
]

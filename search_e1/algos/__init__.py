"""Pure tensor functions of Search-E1's two rounds, with variants picked by name from registries.

- `advantages`: GRPO group-relative advantages (``grpo``, ``grpo_no_std`` = Dr.GRPO), mixed groups.
- `policy_loss`: masked reductions, `agg_loss` (``token-mean``, ``seq-mean-token-mean``,
  ``seq-mean-token-sum``, ``seq-mean-token-sum-norm`` = Dr.GRPO), the PPO clipped surrogate
  (``ppo_clip``, DAPO's clip-higher with ``clip_high > clip_low``) and GSPO's sequence-level one
  (``gspo``).
- `llds`: the likelihood-preserving LLDS regulariser (gates ``action``, ``response``).
- `kl`: per-token KL(pi || pi_ref) estimators (``k1``, ``k2``, ``k3`` / ``low_var_kl``).
- `distill`: token-level divergences teacher -> student: forward KL, full vocabulary and teacher
  top-k (``forward_kl``, ``forward_kl_topk``, chunked with an analytic backward), ``reverse_kl``
  and ``jsd`` (generalised JSD with ``beta``).
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
    mixed_group_rows,
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
    jsd,
    make_teacher_targets,
    register_distill_loss,
    reverse_kl,
    teacher_topk,
)
from search_e1.algos.kl import (
    KL_ESTIMATORS,
    get_kl_estimator,
    kl_estimate,
    register_kl_estimator,
)
from search_e1.algos.llds import LLDS_GATES, get_llds_gate, llds_penalty
from search_e1.algos.policy_loss import (
    LOSS_AGG_MODES,
    POLICY_LOSSES,
    agg_loss,
    clipped_policy_loss,
    get_agg_mode,
    get_policy_loss,
    gspo_policy_loss,
    masked_mean,
    masked_sum,
    register_agg_mode,
    register_policy_loss,
)
from search_e1.algos.siblings import (
    SIBLING_SELECTORS,
    get_sibling_selector,
    placebo_siblings,
    register_sibling_selector,
    select_siblings,
)

__all__ = [
    "ADVANTAGE_ESTIMATORS",
    "DISTILL_LOSSES",
    "KL_ESTIMATORS",
    "LLDS_GATES",
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
    "get_llds_gate",
    "get_policy_loss",
    "get_sibling_selector",
    "group_advantages",
    "group_stats",
    "gspo_policy_loss",
    "jsd",
    "kl_estimate",
    "llds_penalty",
    "make_teacher_targets",
    "masked_mean",
    "masked_sum",
    "mixed_group_fraction",
    "mixed_group_rows",
    "register_advantage_estimator",
    "register_agg_mode",
    "register_distill_loss",
    "register_kl_estimator",
    "register_policy_loss",
    "register_sibling_selector",
    "reverse_kl",
    "placebo_siblings",
    "select_siblings",
    "teacher_topk",
]

"""GRPO round: vanilla group-relative policy optimisation over multi-turn search rollouts.

One training step = one batch of questions: roll out ``group_size`` trajectories per question
with the shared policy, score them (EM by default), compute group advantages, old and reference
log-probs, then run ``ppo_epochs`` passes of clipped-surrogate updates over mini-batches (one
optimiser step each) built from micro-batches (gradient accumulation), with gradient clipping.
Every loss term sees only the tokens the policy sampled (loss mask 1): prompt, ``<information>``
blocks, feedback and padding never carry gradient, the KL term included.

As in Search-R1's GRPO recipe, except: generation stops at ``</search>``; the KL term is the k3
estimator to a frozen copy of the initial policy, added to the loss (not to the reward); losses
are aggregated by `search_e1.algos.agg_loss` (token mean over the mini-batch by default).

The GRPO family, a config line each (see the README's recipe table):

* Dr.GRPO: ``advantage: grpo_no_std`` and ``loss_agg: seq-mean-token-sum-norm`` (token sums over
  the constant ``loss_norm_tokens``);
* DAPO: ``clip_high: 0.28`` (clip-higher), ``dynamic_sampling: true`` (groups whose rewards are
  all equal are dropped and the batch is refilled with fresh questions, up to
  ``dynamic_sampling_max_rollouts`` extra rollouts), ``overlong_filter: true`` (trajectories cut by
  ``rollout.max_total_tokens`` carry no loss);
* GSPO: ``policy_loss: gspo`` with ``clip_low: 3.0e-4, clip_high: 4.0e-4``, ``loss_agg:
  seq-mean-token-mean`` and ``recompute_old_logprobs: true`` (sequence-level ratio,
  `search_e1.algos.gspo_policy_loss`; the sampling engine's log-probs differ from a bf16 training
  forward by more than the clip range, which would clip sequences the policy never moved);
* LLDS: ``llds_coef: 0.2`` (with any of the above; `search_e1.algos.llds`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from search_e1.algos import (
    agg_loss,
    get_advantage_estimator,
    get_agg_mode,
    get_kl_estimator,
    get_llds_gate,
    get_policy_loss,
    llds_penalty,
    masked_mean,
    mixed_group_rows,
)
from search_e1.config import check_range, plain
from search_e1.distributed import any_rank, max_over_ranks
from search_e1.policy import Policy
from search_e1.rollout import SearchEnv, Trajectory, rollout_stats
from search_e1.rounds.base import REFILL_STREAM, OptimConfig, QuestionSource, RoundModule, question_seed

log = logging.getLogger(__name__)



@dataclass
class GRPOConfig:
    """Hyperparameters of a GRPO round."""

    group_size: int = 5
    """Trajectories sampled per question (G)."""
    optim: OptimConfig = field(default_factory=OptimConfig)
    """AdamW, learning-rate warmup and gradient clipping of the GRPO rounds."""
    ppo_epochs: int = 1
    """Passes over each rollout batch."""
    mini_batch_size: int = 0
    """Trajectories per optimiser step; 0 = the whole rollout batch (one step per pass)."""
    micro_batch_size: int = 4
    """Trajectories per forward/backward (gradient accumulation inside a mini-batch)."""
    clip_low: float = 0.2
    """PPO clip range below 1 for the probability ratio."""
    clip_high: float = 0.2
    """PPO clip range above 1 for the probability ratio."""
    kl_coef: float = 1e-3
    """Weight of the KL term to the frozen reference policy; 0 disables it (no reference copy)."""
    kl_estimator: str = "k3"
    """KL estimator: k1, k2, k3 (low variance)."""
    advantage: str = "grpo"
    """Advantage estimator: grpo (mean and std of the group) or grpo_no_std (Dr.GRPO: mean only)."""
    policy_loss: str = "ppo_clip"
    """Policy loss: ppo_clip (token ratio; DAPO's clip-higher with clip_high > clip_low) or gspo (sequence ratio, clip
    3e-4/4e-4)."""
    loss_agg: str = "token-mean"
    """Loss aggregation: token-mean, seq-mean-token-mean, seq-mean-token-sum, seq-mean-token-sum-norm (Dr.GRPO)."""
    loss_norm_tokens: int = 0
    """seq-mean-token-sum-norm's constant divisor; 0 = the rollout's sampling budget (max_turns x max_new_tokens)."""
    dynamic_sampling: bool = False
    """DAPO: drop groups whose rewards are all equal and refill the batch with fresh questions."""
    dynamic_sampling_max_rollouts: int = 3
    """DAPO: extra rollouts per step at most while refilling; then the step trains on the groups it has."""
    overlong_filter: bool = False
    """DAPO: trajectories cut by rollout.max_total_tokens carry no loss (their tokens are masked)."""
    llds_coef: float = 0.0
    """LLDS: weight of the likelihood-preserving term (the authors use 0.2); 0 = off."""
    llds_gate: str = "action"
    """LLDS gate: action (each turn's sampled tokens, the paper's best) or response (the whole trajectory)."""
    entropy_coef: float = 0.0
    """Entropy bonus weight (0 = off, as in vanilla GRPO)."""
    recompute_old_logprobs: bool = True
    """Recompute old log-probs with a forward pass (else use the sampling log-probs)."""
    skip_zero_advantage: bool = True
    """Skip the forward/backward of rows with advantage 0 when no KL or entropy term uses them (their gradient is
    exactly 0)."""
    log_text_every: int = 5
    """Log trajectories as TensorBoard text every N steps (rank 0); 0 disables."""
    log_text_samples: int = 2
    """Trajectories per text sample."""

    def __post_init__(self) -> None:
        for name in ("group_size", "ppo_epochs", "micro_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"GRPOConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.group_size < 2:
            raise ValueError("GRPOConfig.group_size must be >= 2: a group of one sample has advantage 0, "
                             "so no gradient")
        check_range(self, at_least=dict.fromkeys(("kl_coef", "clip_low", "clip_high", "llds_coef", "entropy_coef",
                                                  "loss_norm_tokens", "dynamic_sampling_max_rollouts",
                                                  "mini_batch_size", "log_text_every", "log_text_samples"), 0))
        for name, getter in (("advantage", get_advantage_estimator), ("kl_estimator", get_kl_estimator),
                             ("policy_loss", get_policy_loss), ("loss_agg", get_agg_mode),
                             ("llds_gate", get_llds_gate)):
            try:
                getter(getattr(self, name))
            except ValueError as err:
                raise ValueError(f"GRPOConfig.{name}: {err}") from None


class GRPOModule(RoundModule):
    """GRPO on the shared policy. Batches are dicts of questions and gold answers.

    Args:
        policy: the shared policy (trained in place).
        env: the search environment (the data module's retriever, rollout budgets, prompt, reward).
        config: GRPO hyperparameters.
        reference: frozen reference policy for the KL term (required when ``kl_coef > 0``).
        question_source: ``(k, seed) -> [(question, golden_answers)]``, fresh training questions for
            DAPO's dynamic sampling (the Evolver passes the data module's).
    """

    def __init__(self, policy: Policy, env: SearchEnv | None = None, config: GRPOConfig | None = None,
                 reference: Policy | None = None, question_source: QuestionSource | None = None) -> None:
        config = config or GRPOConfig()
        if config.kl_coef > 0 and reference is None:
            raise ValueError("GRPOModule: kl_coef > 0 needs a reference policy (Policy.reference())")
        super().__init__(policy, env, config.optim, reference if config.kl_coef > 0 else None)
        self.config = config
        self.question_source = question_source
        self.dynamic_sampling_short = 0
        if config.policy_loss == "gspo" and not config.recompute_old_logprobs:
            log.warning("grpo.policy_loss gspo with recompute_old_logprobs false: the sampling engine's log-probs "
                        "differ from the training forward by more than GSPO's clip range, so unmoved sequences "
                        "get clipped; set grpo.recompute_old_logprobs true")
        self.save_hyperparameters({"grpo": plain(config), "rollout": plain(env.config) if env else None})

    @property
    def norm_tokens(self) -> float:
        """The constant of ``seq-mean-token-sum-norm``: ``loss_norm_tokens``, else the sampling budget."""
        if self.config.loss_norm_tokens:
            return float(self.config.loss_norm_tokens)
        cfg = self.env.config if self.env is not None else None
        return float(cfg.max_turns * cfg.max_new_tokens) if cfg is not None else 1.0

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        c = self.config
        traj = self.rollout_questions(batch["question"], batch["golden_answers"], c.group_size)
        extra: dict[str, float] = {"sampled": float(len(traj))}  # rolled out by this rank, refills included
        sampled = traj  # the step's own questions, before dynamic sampling keeps the mixed groups
        if c.dynamic_sampling:
            traj, dynamic = self._dynamic_sampling(traj, len(batch["question"]))
            extra.update(dynamic)
            extra["sampled"] += dynamic["dynamic_rollouts"] * len(batch["question"]) * c.group_size
        advantages = get_advantage_estimator(c.advantage)(traj.rewards, traj.group_ids)  # [N]
        train = traj
        if c.overlong_filter:
            train, extra["overlong_frac"] = overlong_filtered(traj)
        with torch.no_grad():
            old = self._logprobs(self.policy, train) if c.recompute_old_logprobs else train.logprobs
            ref = self._logprobs(self.reference, train) if self.reference is not None else None
        stats = self.update(train, advantages, old, ref)
        stats.update(rollout_stats(sampled))  # what the policy does, not what dynamic sampling kept
        stats.update(extra)
        stats["lr"] = self.current_lr
        self.record_step(stats)
        self.log_dict({f"grpo/{k}": v for k, v in stats.items()}, on_step=True, on_epoch=False,
                      batch_size=len(batch["question"]), sync_dist=True)
        self.log("reward", stats["reward_mean"], prog_bar=True, logger=False, batch_size=1)
        if c.log_text_every and batch_idx % c.log_text_every == 0:
            self.log_trajectories("grpo/trajectories", traj, list(range(min(c.log_text_samples, len(traj)))))

    def _logprobs(self, policy: Policy, traj: Trajectory) -> torch.Tensor:
        """Masked per-token log-probs of every row, in micro-batches.  # [N, L]"""
        out = torch.zeros_like(traj.logprobs)
        for idx in torch.arange(len(traj)).split(self.config.micro_batch_size):
            lp, _ = policy.token_logprobs(traj.input_ids[idx], traj.attention_mask[idx], traj.loss_mask[idx],
                                          temperature=self.sampling_temperature,
                                          start=int(traj.prompt_lengths[idx].min()))
            out[idx] = lp
        return out

    def update(self, traj: Trajectory, advantages: torch.Tensor, old: torch.Tensor,
               ref: torch.Tensor | None) -> dict[str, float]:
        """PPO epochs over shuffled mini-batches, one optimiser step each; returns the mean of
        the per-micro-batch statistics and of the gradient norms."""
        c = self.config
        gen = torch.Generator().manual_seed(int(self.log_step))
        sums: dict[str, float] = {}
        micro_count, norms, trained = 0, [], 0
        for _ in range(c.ppo_epochs):
            for mb in torch.randperm(len(traj), generator=gen).split(c.mini_batch_size or len(traj)):
                norm = (float(traj.loss_mask[mb].sum().clamp(min=1.0)), len(mb))
                rows = self._rows_to_train(mb, advantages, ref)
                trained += len(rows)
                for micro in rows.split(c.micro_batch_size) if len(rows) else ():  # split of nothing: one empty
                    for k, v in self._micro_step(traj, micro, advantages, old, ref, norm).items():
                        sums[k] = sums.get(k, 0.0) + v
                    micro_count += 1
                norms.append(self.optimizer_step_clipped())
        stats = {k: v / max(micro_count, 1) for k, v in sums.items()}
        stats["grad_norm"] = sum(norms) / max(len(norms), 1)
        stats["optimizer_steps"] = float(len(norms))
        stats["trained_frac"] = trained / max(c.ppo_epochs * len(traj), 1)
        return stats

    def _dynamic_sampling(self, traj: Trajectory, n_questions: int) -> tuple[Trajectory, dict[str, float]]:
        """DAPO's dynamic sampling: keep the groups whose rewards differ; while fewer than
        ``n_questions`` groups are kept (on any rank), roll out ``n_questions`` fresh questions from
        ``question_source``, at most ``dynamic_sampling_max_rollouts`` times; cut to ``n_questions``
        groups. Short of groups at the end, the step trains on what it has (a debug line with the
        counts; ``grpo/dynamic_groups`` in TensorBoard and the round summary); with none, on the
        uniform batch (no gradient, as plain GRPO)."""
        c = self.config
        parts = [traj.select(torch.nonzero(mixed_group_rows(traj.rewards, traj.group_ids)).flatten().cpu())]
        kept = lambda: sum(len(torch.unique(p.group_ids)) for p in parts if len(p))  # noqa: E731
        rollouts = 0
        while (self.question_source is not None and rollouts < c.dynamic_sampling_max_rollouts
               and any_rank(kept() < n_questions)):  # every rank rolls out as often (collectives)
            rollouts += 1
            fresh = self.question_source(n_questions, question_seed(self.log_step, rollouts, REFILL_STREAM))
            more = self.rollout_questions([q for q, _ in fresh], [a for _, a in fresh], c.group_size)
            parts.append(more.select(torch.nonzero(mixed_group_rows(more.rewards, more.group_ids)).flatten().cpu()))
        n_kept = kept()
        stats = {"dynamic_groups": float(min(n_kept, n_questions)), "dynamic_rollouts": float(rollouts)}
        if n_kept < n_questions:
            self.dynamic_sampling_short += 1
            log.debug("DAPO dynamic sampling: %d of %d groups with mixed rewards after %d extra rollout(s); "
                      "the step trains on %s (%d short step(s) so far)", n_kept, n_questions, rollouts,
                      f"those {n_kept}" if n_kept else "the uniform batch (no gradient)", self.dynamic_sampling_short)
        if n_kept == 0:
            return traj, stats
        merged = Trajectory.concat([p for p in parts if len(p)], self.policy.tokenizer.pad_token_id)
        first = sorted(torch.unique(merged.group_ids).tolist())[:n_questions]
        rows = torch.nonzero(torch.isin(merged.group_ids, torch.tensor(first, device=merged.group_ids.device)))
        return merged.select(rows.flatten().cpu()).trim().to(self.device), stats

    def _rows_to_train(self, mb: torch.Tensor, advantages: torch.Tensor, ref: torch.Tensor | None) -> torch.Tensor:
        """The rows of mini-batch ``mb`` that get a forward/backward.

        A row with advantage 0 adds exactly 0 to the policy loss and its gradient, so when no KL or
        entropy term reads it (``skip_zero_advantage``, ``kl_coef = 0`` or no reference,
        ``entropy_coef = 0``) the rows with a non-zero advantage come first and the rest are cut
        after the last micro-batch that needs one. The loss keeps the whole mini-batch's
        normalisation, so the optimiser step is the unskipped one. Under torch.distributed every
        rank runs the largest micro-batch count of any rank (its own zero rows fill the gap), so the
        collectives of sharded forward/backward passes stay matched. LLDS reads zero-advantage rows
        (they are in its preserving set), so with ``llds_coef > 0`` nothing is skipped."""
        c = self.config
        if not c.skip_zero_advantage or ref is not None or c.entropy_coef or c.llds_coef:
            return mb
        active = advantages[mb] != 0
        n_micro = max_over_ranks(-(-int(active.sum()) // c.micro_batch_size))
        return torch.cat([mb[active], mb[~active]])[: n_micro * c.micro_batch_size]

    def _micro_step(self, traj: Trajectory, micro: torch.Tensor, advantages: torch.Tensor,
                    old: torch.Tensor, ref: torch.Tensor | None, norm: tuple[float, int]) -> dict[str, float]:
        """Forward/backward of one micro-batch; the loss is normalised by the mini-batch's
        ``norm = (tokens, sequences)`` so micro-batch gradients add up to the mini-batch's."""
        c = self.config
        mask = traj.loss_mask[micro]  # [b, L]
        lp, ent = self.policy.token_logprobs(traj.input_ids[micro], traj.attention_mask[micro], mask,
                                             temperature=self.sampling_temperature, with_entropy=True,
                                             start=int(traj.prompt_lengths[micro].min()))
        loss_mat, stats = get_policy_loss(c.policy_loss)(lp, old[micro], advantages[micro], mask,
                                                         c.clip_low, c.clip_high)

        def agg(mat: torch.Tensor) -> torch.Tensor:
            return agg_loss(mat, mask, c.loss_agg, num_tokens=norm[0], num_seqs=norm[1], norm_tokens=self.norm_tokens)

        loss = agg(loss_mat)
        if c.llds_coef:  # a token mean over the mini-batch's sampled tokens, whatever loss_agg says
            pen = llds_penalty(lp, old[micro], advantages[micro], mask, c.llds_gate)  # [b, L]
            loss = loss + c.llds_coef * agg_loss(pen, mask, "token-mean", num_tokens=norm[0])
            stats["llds"] = masked_mean(pen.detach(), mask)
        if ref is not None:
            kl = get_kl_estimator(c.kl_estimator)(lp, ref[micro])  # [b, L]
            loss = loss + c.kl_coef * agg(kl)
            stats["kl"] = masked_mean(kl.detach(), mask)
        if c.entropy_coef:
            loss = loss - c.entropy_coef * agg(ent)
        self.manual_backward(loss)
        stats.update(pg_loss=masked_mean(loss_mat.detach(), mask), entropy=masked_mean(ent.detach(), mask))
        return {k: float(v) for k, v in stats.items()}



def overlong_filtered(traj: Trajectory) -> tuple[Trajectory, float]:
    """DAPO's overlong filtering: the trajectories that ``rollout.max_total_tokens`` cut (finish
    reason ``max_total_tokens``) get loss mask 0, so they carry no loss; returns the filtered batch
    and the share of rows filtered."""
    cut = torch.tensor([f == "max_total_tokens" for f in traj.finish_reasons], dtype=torch.bool,
                       device=traj.loss_mask.device)  # [N]
    if not bool(cut.any()):
        return traj, 0.0
    mask = traj.loss_mask.masked_fill(cut.unsqueeze(-1), 0.0)  # [N, L]
    return replace(traj, loss_mask=mask, logprobs=traj.logprobs * mask), float(cut.float().mean())

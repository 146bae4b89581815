"""What the GRPO and OFSD LightningModules share: the policy, sharding, optimiser, logging.

Both modules receive the SAME `Policy` object (and GRPO the frozen reference), built once by the
`Evolver`; every round gets a fresh module and a fresh ``Trainer`` around them. Under
``ModelParallelStrategy`` ``configure_model`` shards them with FSDP2, once: the next round's
module finds them already sharded. The optimiser is rebuilt per round (AdamW, linear warmup).

Logged steps live on one axis across rounds: the Evolver's `OffsetTensorBoardLogger` adds the
steps of the previous rounds to whatever step Lightning logs at; `log_step` gives the same
number for text samples.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_only

from search_e1.distributed import shard_policy
from search_e1.policy import Policy
from search_e1.protocol import PromptConfig
from search_e1.retrieval.base import Retriever
from search_e1.rewards import RewardConfig
from search_e1.rollout import GeneratorFactory, RolloutConfig, Trajectory, make_generator, rollout

log = logging.getLogger(__name__)


class RoundModule(L.LightningModule):
    """Base of `GRPOModule` and `OFSDModule` (manual optimisation, one shared policy)."""

    def __init__(
        self, policy: Policy, retriever: Retriever | None, rollout_config: RolloutConfig,
        prompt: PromptConfig, reward: RewardConfig, reference: Policy | None = None,
        generator_factory: GeneratorFactory | None = None,
    ) -> None:
        super().__init__()
        self.generator_factory = generator_factory or make_generator
        self.automatic_optimization = False
        self.policy = policy
        self.reference = reference
        self.retriever = retriever
        self.rollout_config, self.prompt_config, self.reward_config = rollout_config, prompt, reward
        self._batch_idx = 0

    # ---------------------------------------------------------------- model and optimiser
    def on_fit_start(self) -> None:
        """Train mode for the policy (loaded models start in eval mode, and Lightning keeps module
        modes): gradient checkpointing and dropout follow it; rollouts switch to eval themselves."""
        self.policy.train()

    def configure_model(self) -> None:
        mesh = getattr(self, "_device_mesh", None)
        if mesh is None:
            return
        bf16 = self.trainer.precision.startswith("bf16") and self.device.type == "cuda"
        shard_policy(self.policy.model, mesh["data_parallel"], bf16=bf16)
        if self.reference is not None:
            shard_policy(self.reference.model, mesh["data_parallel"], bf16=bf16)

    def make_optimizer(self, lr: float, weight_decay: float, warmup_steps: int) -> Any:
        return make_optimizer(self.policy, lr, weight_decay, warmup_steps)

    def optimizer_step_clipped(self, max_grad_norm: float) -> float:
        """Clip, step the optimiser and the scheduler; returns the pre-clip gradient norm. A parameter
        that no backward reached (every row skipped) steps with a zero gradient, as it would have."""
        opt = self.optimizers()
        params = [p for p in self.policy.parameters() if p.requires_grad]
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        norm = torch.nn.utils.clip_grad_norm_(params, max_grad_norm if max_grad_norm > 0 else float("inf"))
        if hasattr(norm, "full_tensor"):  # DTensor under FSDP2
            norm = norm.full_tensor()
        opt.step()
        opt.zero_grad(set_to_none=True)
        self.policy.mark_weights_changed()
        sched = self.lr_schedulers()
        if sched is not None:
            sched.step()
        return float(norm)

    @property
    def current_lr(self) -> float:
        return float(self.optimizers().param_groups[0]["lr"])

    # ---------------------------------------------------------------- rollouts
    @torch.no_grad()
    def rollout_questions(
        self, questions: list[str], golden: list[list[str]], group_size: int, **overrides: Any,
    ) -> Trajectory:
        """Sample ``group_size`` trajectories per question with the current policy (eval mode)."""
        if self.retriever is None:
            raise RuntimeError(f"{type(self).__name__} needs a retriever (pass the data module's)")
        cfg = replace(self.rollout_config, group_size=group_size, **overrides)
        was_training = self.policy.training
        self.policy.eval()
        try:
            traj = rollout(self.policy, self.retriever, questions, golden, cfg, self.prompt_config,
                           self.reward_config, generator=self.generator_factory(self.policy, cfg))
        finally:
            self.policy.train(was_training)
        return traj.trim().to(self.device)

    # ---------------------------------------------------------------- logging
    @property
    def log_step(self) -> int:
        """The global (cross-round) step at which this batch's metrics are logged."""
        offset = getattr(self.logger, "step_offset", 0) if self.logger is not None else 0
        return offset + self._batch_idx

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        """Remember the batch index: a round is one epoch, so it is the step Lightning logs at."""
        self._batch_idx = batch_idx

    @rank_zero_only
    def log_trajectories(self, tag: str, traj: Trajectory, rows: list[int]) -> None:
        """A few trajectories as TensorBoard text (markdown, responses in code fences)."""
        experiment = getattr(self.logger, "experiment", None)
        if experiment is None or not hasattr(experiment, "add_text"):
            return
        parts = []
        for i in rows:
            text = traj.response_text(i, self.policy.tokenizer).replace("```", "'''")
            parts.append(
                f"**question:** {traj.questions[i]}  \n**gold:** {traj.golden_answers[i]}  \n"
                f"**answer:** {traj.answers[i]}  **reward:** {float(traj.rewards[i]):.2f}  "
                f"**searches:** {int(traj.num_searches[i])}\n\n```\n{text}\n```"
            )
        experiment.add_text(tag, "\n\n---\n\n".join(parts), global_step=self.log_step)


def make_optimizer(policy: torch.nn.Module, lr: float, weight_decay: float, warmup_steps: int) -> dict[str, Any]:
    """AdamW over the trainable parameters with a linear learning-rate warmup, as Lightning's
    ``configure_optimizers`` returns it."""
    params = [p for p in policy.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    warm = max(0, warmup_steps)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / (warm + 1)))
    return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

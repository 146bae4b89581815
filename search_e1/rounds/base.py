"""What the round LightningModules share: the policy, sharding, the optimiser (`OptimConfig`), logging.

Both modules receive the SAME `Policy` object (and GRPO the frozen reference), built once by the
`Evolver`; every round gets a fresh module and a fresh ``Trainer`` around them. Under
``ModelParallelStrategy`` ``configure_model`` shards them with FSDP2, once: the next round's
module finds them already sharded. Rollouts go through the `SearchEnv`.

The optimiser (AdamW, linear learning-rate warm-up) of a round kind outlives its round, as a
long-running trainer's does: the Evolver gives the module the directory of the state the previous
round of its kind left (``optimizer_from``: moments and step count, `search_e1.optim`); the
warm-up continues from the saved step count, the moments are read just before the round's first
optimiser step (where a fresh AdamW would allocate its own, so the round's rollout runs without
them), and the state is written to ``optimizer_to`` when the round ends. A fresh AdamW's first step
moves every weight by
about the learning rate whatever the gradient's size (its moments are one gradient's); carried
moments keep the steps of later rounds in proportion to their gradients.

Logged steps live on one axis across rounds: the Evolver's `OffsetTensorBoardLogger` adds the
steps of the previous rounds to whatever step Lightning logs at; `log_step` gives the same
number for text samples.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_only

from search_e1.algos import agg_loss
from search_e1.distributed import shard_policy
from search_e1.optim import (
    STATE_DTYPES,
    BF16StateAdamW,
    load_optimizer_state,
    save_optimizer_state,
    saved_optimizer_steps,
)
from search_e1.policy import Policy
from search_e1.rollout import SearchEnv, Trajectory

log = logging.getLogger(__name__)

QuestionSource = Callable[[int, int], list[tuple[str, list[str]]]]
"""``(k, seed) -> k (question, golden_answers) pairs`` drawn from the training split (DAPO's refills,
on-policy OFSD refreshes; the Evolver passes the data module's)."""


def question_seed(step: int, attempt: int, stream: int) -> int:
    """The seed of the questions a round draws at ``step`` (``attempt``: the how-many-th draw of that
    step), distinct per ``stream`` (one per kind of draw: `REFILL_STREAM`, `REFRESH_STREAM`)."""
    return stream * (step + 1) + attempt


REFILL_STREAM = 1_000_003
"""`question_seed` stream of DAPO's refills."""
REFRESH_STREAM = 7919
"""`question_seed` stream of on-policy OFSD refreshes."""


def token_mean_backward(n_rows: int, micro_batch_size: int, per_token_loss: Callable[[torch.Tensor], tuple[
        torch.Tensor, torch.Tensor]], backward: Callable[[torch.Tensor], Any], n_tokens: float) -> float:
    """Gradient accumulation of a token-mean loss over ``n_rows`` rows, one ``backward`` per micro-batch.

    ``per_token_loss(rows) -> (loss [b, T], mask [b, T])`` for a micro-batch's row indices; each
    micro-batch's masked sum is divided by the whole batch's ``n_tokens``, so the micro-batch
    gradients add up to the batch's. Returns the batch's loss."""
    total = 0.0
    for rows in torch.arange(n_rows).split(micro_batch_size):
        per_token, mask = per_token_loss(rows)
        loss = agg_loss(per_token, mask, "token-mean", num_tokens=n_tokens)
        backward(loss)
        total += float(loss.detach())
    return total


@dataclass
class OptimConfig:
    """AdamW with a linear learning-rate warmup and clipping by global gradient norm (one per round kind)."""

    lr: float = 1e-6
    """AdamW learning rate."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    warmup_steps: int = 0
    """Linear learning-rate warm-up over this round kind's first optimiser steps (counted across rounds while the
    optimiser persists)."""
    max_grad_norm: float = 1.0
    """Gradient clipping by global norm; 0 disables clipping."""
    betas: tuple[float, float] = (0.9, 0.999)
    """AdamW's moment decay rates (beta1, beta2)."""
    fused: bool = True
    """torch's fused AdamW (no weight-sized temporaries in the step); False = the multi-tensor (foreach) one."""
    state_dtype: Literal["float32", "bfloat16"] = "float32"
    """dtype of AdamW's two moments: float32 (torch's AdamW) or bfloat16 (`BF16StateAdamW`: half the optimiser memory,
    stochastic rounding, slightly slower steps on CPU)."""

    def __post_init__(self) -> None:
        if not self.lr > 0:
            raise ValueError(f"OptimConfig.lr must be > 0, got {self.lr}")
        for name in ("weight_decay", "warmup_steps", "max_grad_norm"):
            if getattr(self, name) < 0:
                raise ValueError(f"OptimConfig.{name} must be >= 0, got {getattr(self, name)}")
        if len(self.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.betas):
            raise ValueError(f"OptimConfig.betas must be two numbers in [0, 1), got {self.betas}")
        if self.state_dtype not in STATE_DTYPES:
            raise ValueError(f"OptimConfig.state_dtype must be one of {list(STATE_DTYPES)}, got {self.state_dtype!r}")


class RoundModule(L.LightningModule):
    """Base of `GRPOModule`, `OFSDModule` and `WarmupModule` (manual optimisation, one shared policy).

    Args:
        policy: the shared policy (trained in place).
        env: the search environment rollouts run in (None for a round that does not roll out).
        optim: optimiser settings.
        reference: frozen reference policy (GRPO's KL term), sharded beside the policy.
    """

    def __init__(self, policy: Policy, env: SearchEnv | None, optim: OptimConfig,
                 reference: Policy | None = None) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.policy = policy
        # a tuple, not a submodule: the frozen copy stays in eval mode without Lightning counting it as
        # "modules in eval mode", and it is no part of this module's parameters or state dict
        self.frozen: tuple[Policy, ...] = (reference,) if reference is not None else ()
        self.env = env
        self.optim = optim
        self._batch_idx = 0
        self._step_lr: float | None = None  # the learning rate of the last optimiser step
        self.optimizer_from: Path | None = None
        """A directory of `save_optimizer_state` to restore when the optimiser is built (set by the Evolver)."""
        self.optimizer_to: Path | None = None
        """Where the optimiser's state is written when training ends, if it stepped (set by the Evolver)."""
        self.step_stats: dict[str, list[float]] = {}
        """Per-step scalars of this round (the Evolver's one-line round summary reads them)."""

    @property
    def reference(self) -> Policy | None:
        """The frozen reference policy (GRPO's KL term), or None."""
        return self.frozen[0] if self.frozen else None

    # ---------------------------------------------------------------- model and optimiser
    def on_fit_start(self) -> None:
        """Train mode for the policy (loaded models start in eval mode, and Lightning keeps module
        modes): gradient checkpointing and dropout follow it; rollouts switch to eval themselves.
        The reference follows the policy's device (Lightning moves only submodules)."""
        self.policy.train()
        if self.reference is not None and self.device_mesh is None:
            self.reference.to(self.device)

    def configure_model(self) -> None:
        mesh = self.device_mesh  # set by ModelParallelStrategy (trainer.strategy: fsdp)
        if mesh is None:
            return
        bf16 = self.trainer.precision.startswith("bf16") and self.device.type == "cuda"
        shard_policy(self.policy.model, mesh["data_parallel"], bf16=bf16)
        if self.reference is not None:
            shard_policy(self.reference.model, mesh["data_parallel"], bf16=bf16)

    def configure_optimizers(self) -> Any:
        done = saved_optimizer_steps(self.optimizer_from) if self.optimizer_from is not None else 0
        return make_optimizer(self.policy, self.optim, done)

    def on_train_end(self) -> None:
        """Write the optimiser's state to ``optimizer_to`` (every rank its shards), unless it never stepped."""
        if self.optimizer_to is None:
            return
        opt = self.optimizers()
        opt = getattr(opt, "optimizer", opt)
        if opt.state:
            save_optimizer_state(self.policy, opt, self.optimizer_to)

    def record_step(self, stats: dict[str, float]) -> None:
        """Keep this step's scalars for the round summary."""
        for key, value in stats.items():
            self.step_stats.setdefault(key, []).append(float(value))

    def optimizer_step_clipped(self) -> float:
        """Clip, step the optimiser and the scheduler; returns the pre-clip gradient norm. A parameter
        that no backward reached (every row skipped) steps with a zero gradient, as it would have."""
        opt = self.optimizers()
        params = [p for p in self.policy.parameters() if p.requires_grad]
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        max_norm = self.optim.max_grad_norm
        norm = torch.nn.utils.clip_grad_norm_(params, max_norm if max_norm > 0 else float("inf"))
        if hasattr(norm, "full_tensor"):  # DTensor under FSDP2
            norm = norm.full_tensor()
        self._step_lr = float(opt.param_groups[0]["lr"])
        if self.optimizer_from is not None and not getattr(opt, "optimizer", opt).state:  # the first step
            load_optimizer_state(self.policy, getattr(opt, "optimizer", opt), self.optimizer_from)
            log.info("optimiser state restored from %s", self.optimizer_from)
        opt.step()
        opt.zero_grad(set_to_none=True)
        self.policy.mark_weights_changed()
        sched = self.lr_schedulers()
        if sched is not None:
            sched.step()
        return float(norm)

    @property
    def current_lr(self) -> float:
        """The learning rate of the last optimiser step (before the schedule moved it on)."""
        return self._step_lr if self._step_lr is not None else float(self.optimizers().param_groups[0]["lr"])

    # ---------------------------------------------------------------- rollouts
    def rollout_questions(self, questions: Sequence[str], golden: Sequence[Sequence[str]],
                          group_size: int) -> Trajectory:
        """Sample ``group_size`` trajectories per question with the current policy, on this device."""
        if self.env is None or self.env.retriever is None:
            raise RuntimeError(f"{type(self).__name__} needs a SearchEnv with a retriever to roll out")
        return self.env.rollout(self.policy, questions, golden, group_size).trim().to(self.device)

    @property
    def sampling_temperature(self) -> float:
        """The temperature rollouts sample at: ratios and KLs compare the policy's distribution at that
        temperature, so sampling log-probs are valid old log-probs (ratio 1 at the first step), as in veRL."""
        return self.env.sampling_temperature if self.env is not None else 1.0
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


def make_optimizer(policy: torch.nn.Module, optim: OptimConfig, done: int = 0) -> dict[str, Any]:
    """AdamW over the trainable parameters (moments in ``optim.state_dtype``) with a linear
    learning-rate warm-up that continues after ``done`` steps already taken, as Lightning's
    ``configure_optimizers`` returns it."""
    params = [p for p in policy.parameters() if p.requires_grad]
    kwargs = {"lr": optim.lr, "betas": tuple(optim.betas), "weight_decay": optim.weight_decay,
              "fused": optim.fused or None}
    if optim.state_dtype == "bfloat16":
        opt: torch.optim.Optimizer = BF16StateAdamW(params, **kwargs)
    else:
        opt = torch.optim.AdamW(params, **kwargs)
    warm = optim.warmup_steps
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + done + 1) / (warm + 1)))
    return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


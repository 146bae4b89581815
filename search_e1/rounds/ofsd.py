"""OFSD round: offline self-distillation from a privileged view of the policy itself.

At the start of the round (``on_fit_start``) the current policy rolls out ``group_size``
trajectories for each of the round's training questions; they are written to
``<round dir>/trajectories.jsonl`` (one JSON object per trajectory: text, token ids, loss mask,
reward, searches, the chosen sibling). For each trajectory ``tau`` with a more efficient correct
sibling ``tau'`` (`search_e1.algos.select_siblings`), a distillation example pairs

* the **student** context: the ordinary prompt + ``tau`` (what the policy sees at inference), and
* the **teacher** context: the same prompt whose last user message also shows ``tau'`` (its
  reasoning, queries and answer; its retrieved documents elided unless ``show_documents``),
  followed by the same tokens of ``tau``.

The loss at every token of ``tau`` the policy sampled (mask 1) is the forward
``KL(p_teacher || p_student)`` over the vocabulary (or the teacher's top-k), the teacher being the
same weights under ``no_grad``. Questions with no correct trajectory contribute nothing.

Departures from the paper's description: none intended; the wording of the privileged block is
ours (``OFSDConfig.privileged_template``), and the round's data set is sampled afresh each round
from ``num_questions`` training questions.
"""

from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch.utils.checkpoint import checkpoint
from torch.utils.data import DataLoader

from search_e1.algos import (
    agg_loss,
    get_distill_loss,
    get_sibling_selector,
    make_teacher_targets,
)
from search_e1.config import plain
from search_e1.distributed import rank_world
from search_e1.policy import Policy
from search_e1.protocol import PromptConfig, build_messages
from search_e1.rollout import SearchEnv, Trajectory, rollout_stats
from search_e1.rollout.generation import left_pad
from search_e1.rounds.base import OptimConfig, RoundModule

log = logging.getLogger(__name__)

PRIVILEGED_TEMPLATE = (
    "For reference, here is a correct and efficient solution to this question found earlier:\n"
    "{sibling}\nNow solve the question yourself."
)
_INFO_RE = re.compile(r"<information>.*?</information>", re.DOTALL)
ELIDED = "<information> [retrieved documents elided] </information>"


@dataclass
class OFSDConfig:
    """Hyperparameters of an OFSD round."""

    group_size: int = 5
    """Trajectories sampled per question for the round's offline data set."""
    num_questions: int = 64
    """Training questions rolled out at the start of each round."""
    optim: OptimConfig = field(default_factory=OptimConfig)
    """AdamW, learning-rate warmup and gradient clipping of the OFSD rounds."""
    batch_size: int = 4
    """Distillation examples (trajectories) per optimiser step."""
    micro_batch_size: int = 2
    """Examples per forward/backward (gradient accumulation)."""
    loss: str = "forward_kl"
    """Distillation loss: forward_kl (full vocabulary) or forward_kl_topk."""
    teacher_topk: int = 0
    """Teacher tokens kept per position by forward_kl_topk (0 with forward_kl)."""
    temperature: float = 1.0
    """Softmax temperature of teacher and student in the loss."""
    sibling_selector: str = "most_efficient"
    """Sibling shown to the teacher: most_efficient (correct, strictly cheaper) or correct_then_cheaper (wrong rows: any correct)."""
    show_documents: bool = False
    """Show the sibling's retrieved documents in the privileged block (default: elided)."""
    privileged_template: str = PRIVILEGED_TEMPLATE
    """Text appended to the teacher's last user message; {sibling} is replaced by the sibling."""
    max_epochs: float = 1.0
    """Passes over the round's examples at most: with few examples the round takes fewer than
    `steps` optimiser steps rather than repeating the same examples many times."""
    kl_eval_examples: int = 16
    """Examples on which the teacher-student KL is measured before and after the round."""
    log_text_samples: int = 2
    """Distillation pairs logged as TensorBoard text at the start of the round (rank 0)."""

    def __post_init__(self) -> None:
        for name in ("group_size", "num_questions", "batch_size", "micro_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"OFSDConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.group_size < 2:
            raise ValueError("OFSDConfig.group_size must be >= 2: a trajectory's sibling is another sample of its question")
        if self.max_epochs <= 0:
            raise ValueError(f"OFSDConfig.max_epochs must be > 0, got {self.max_epochs}")
        if "{sibling}" not in self.privileged_template:
            raise ValueError("OFSDConfig.privileged_template must contain '{sibling}'")
        if (self.loss == "forward_kl_topk") != (self.teacher_topk > 0):
            raise ValueError("OFSDConfig: use teacher_topk > 0 exactly when loss is forward_kl_topk")
        for name, getter in (("loss", get_distill_loss), ("sibling_selector", get_sibling_selector)):
            try:
                getter(getattr(self, name))
            except ValueError as err:
                raise ValueError(f"OFSDConfig.{name}: {err}") from None


@dataclass
class DistillExample:
    """One trajectory to distil: the same response after the student and teacher prompts."""

    student_ids: list[int]
    teacher_ids: list[int]
    response_mask: list[float]  # 1 = sampled by the policy, over the response tokens only


# ---------------------------------------------------------------- pure helpers
def response_runs(traj: Trajectory, i: int) -> list[tuple[bool, list[int]]]:
    """Maximal runs of the response of row ``i`` with the same mask: (sampled, ids)."""
    start, end = int(traj.prompt_lengths[i]), int(traj.attention_mask[i].sum())
    runs: list[tuple[bool, list[int]]] = []
    for tok, m in zip(traj.input_ids[i, start:end].tolist(), traj.loss_mask[i, start:end].tolist(), strict=True):
        if runs and runs[-1][0] == bool(m):
            runs[-1][1].append(tok)
        else:
            runs.append((bool(m), [tok]))
    return runs


def render_sibling(traj: Trajectory, i: int, tokenizer: Any, show_documents: bool = False) -> str:
    """The sibling as shown to the teacher: its own turns verbatim; each information block kept or
    replaced by `ELIDED`; other environment text (feedback, template glue) dropped."""
    parts = []
    for sampled, ids in response_runs(traj, i):
        text = tokenizer.decode(ids, skip_special_tokens=sampled)
        if sampled:
            parts.append(text.strip())
        else:
            parts += [m if show_documents else ELIDED for m in _INFO_RE.findall(text)]
    return "\n".join(p for p in parts if p)


def privileged_messages(question: str, sibling_text: str, prompt: PromptConfig, template: str) -> list[dict[str, str]]:
    """The student's chat messages with the sibling block appended to the last user message."""
    messages = build_messages(question, prompt)
    last = dict(messages[-1])
    last["content"] = last["content"] + "\n\n" + template.replace("{sibling}", sibling_text)
    return messages[:-1] + [last]


def build_examples(traj: Trajectory, siblings: torch.Tensor, tokenizer: Any, prompt: PromptConfig,
                   cfg: OFSDConfig) -> list[DistillExample]:
    """Distillation examples for every row with a sibling (``siblings[i] >= 0``)."""
    examples = []
    for i, j in enumerate(siblings.tolist()):
        if j < 0:
            continue
        start, end = int(traj.prompt_lengths[i]), int(traj.attention_mask[i].sum())
        response = traj.input_ids[i, start:end].tolist()
        sibling = render_sibling(traj, j, tokenizer, cfg.show_documents)
        messages = privileged_messages(traj.questions[i], sibling, prompt, cfg.privileged_template)
        text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        teacher_prompt = list(tokenizer(text, add_special_tokens=False)["input_ids"])
        examples.append(DistillExample(
            student_ids=traj.input_ids[i, :end].tolist(), teacher_ids=teacher_prompt + response,
            response_mask=traj.loss_mask[i, start:end].tolist(),
        ))
    return examples


def collate_examples(examples: list[DistillExample], pad_id: int) -> dict[str, torch.Tensor]:
    """Left-pad both contexts so every response ends at the last column; the mask is aligned with
    the last ``R`` columns of both.  student/teacher ids [B, Ls]/[B, Lt], mask [B, R]."""
    s_ids, s_mask = left_pad([e.student_ids for e in examples], pad_id)
    t_ids, t_mask = left_pad([e.teacher_ids for e in examples], pad_id)
    r = max(len(e.response_mask) for e in examples)
    mask = torch.zeros(len(examples), r)  # [B, R]
    for b, e in enumerate(examples):
        mask[b, r - len(e.response_mask) :] = torch.tensor(e.response_mask)
    return {"student_ids": s_ids, "student_mask": s_mask, "teacher_ids": t_ids, "teacher_mask": t_mask,
            "response_mask": mask}


def empty_reason(traj: Trajectory) -> str:
    """Why a round found no distillation example: no correct trajectory, or no cheaper one."""
    correct = traj.rewards >= 1.0  # [N]
    if not bool(correct.any()):
        return "no question had a correct trajectory"
    solved = len({int(g) for g, c in zip(traj.group_ids.tolist(), correct.tolist(), strict=True) if c})
    return (f"{solved} question(s) had a correct trajectory, but none was cheaper (fewer searches, then "
            "fewer tokens) than a sibling")


class _NoBatches(torch.utils.data.IterableDataset):
    """The data of an empty round: iterates nothing and has no length, so Lightning runs no step
    and does not warn about a zero-length DataLoader."""

    def __iter__(self) -> Any:
        return iter(())


def response_hidden(policy: Policy, ids: torch.Tensor, attention: torch.Tensor, r: int) -> torch.Tensor:
    """Final hidden states predicting the last ``r`` tokens of each (left-padded) row.  # [B, R, H]"""
    return policy.hidden_states(ids, attention)[:, -r - 1 : -1]


def chunked_distill(policy: Policy, batch: dict[str, torch.Tensor], loss: str, topk: int, temperature: float,
                    chunk_size: int = 256) -> torch.Tensor:
    """The registered distillation loss ``loss`` at every masked response position ``[B, R]``,
    with no ``[B, R, V]`` tensor: teacher and student hidden states are projected onto the
    vocabulary ``chunk_size`` positions at a time, each chunk under activation checkpointing (the
    student's chunk logits are recomputed in backward). Equal to the whole-response computation."""
    mask = batch["response_mask"]  # [B, R]
    r = mask.shape[1]
    with torch.no_grad():
        teacher = response_hidden(policy, batch["teacher_ids"], batch["teacher_mask"], r)  # [B, R, H]
    student = response_hidden(policy, batch["student_ids"], batch["student_mask"], r)  # [B, R, H]
    b, t = (mask != 0).nonzero(as_tuple=True)  # [M], [M]
    loss_fn = get_distill_loss(loss)

    def chunk_loss(s_hidden: torch.Tensor, t_hidden: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            targets = make_teacher_targets(policy.project(t_hidden)[None], topk=topk or None,
                                           temperature=temperature)  # over [1, n, V]
        return loss_fn(policy.project(s_hidden)[None], targets, None)[0]  # [n]

    parts = [checkpoint(chunk_loss, student[b[c : c + chunk_size], t[c : c + chunk_size]],
                        teacher[b[c : c + chunk_size], t[c : c + chunk_size]], use_reentrant=False)
             for c in range(0, b.numel(), chunk_size)]
    out = torch.zeros(mask.shape, dtype=torch.float32, device=mask.device)  # [B, R]
    return out.index_put((b, t), torch.cat(parts).float()) if parts else out


class OFSDModule(RoundModule):
    """Offline self-distillation on the shared policy.

    Args:
        policy: the shared policy (student and, under no_grad, teacher).
        env: the search environment of the round's rollouts (correct = reward >= 1).
        questions: this round's training questions as ``(question, golden_answers)`` pairs.
        steps: optimiser steps of the round.
        config: OFSD hyperparameters.
        out_dir: where the round's trajectory data set is written.
    """

    def __init__(
        self, policy: Policy, env: SearchEnv | None, questions: list[tuple[str, list[str]]], steps: int,
        config: OFSDConfig | None = None, out_dir: str | Path | None = None,
    ) -> None:
        config = config or OFSDConfig()
        super().__init__(policy, env, config.optim)
        self.config = config
        self.questions, self.steps = list(questions), steps
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.examples: list[DistillExample] = []
        self.save_hyperparameters({"ofsd": plain(self.config), "steps": steps})

    # ---------------------------------------------------------------- the offline data set
    def on_fit_start(self) -> None:
        super().on_fit_start()
        traj = self._rollout_round()
        correct = traj.rewards >= 1.0  # [N]
        siblings = get_sibling_selector(self.config.sibling_selector)(
            traj.group_ids, correct, traj.num_searches, traj.response_lengths)  # [N]
        self.examples = build_examples(traj, siblings, self.policy.tokenizer, self.env.prompt, self.config)
        self._save_dataset(traj, siblings)
        self._log_start(traj, siblings)

    def _rollout_round(self) -> Trajectory:
        """Roll out this rank's share of the questions; all ranks then hold every trajectory."""
        rank, world = rank_world()
        mine = self.questions[rank::world]
        traj = self.rollout_questions([q for q, _ in mine], [g for _, g in mine], self.config.group_size)
        if world == 1:
            return traj.to("cpu")
        parts: list[Any] = [None] * world
        dist.all_gather_object(parts, (traj.to("cpu"), rank))
        return Trajectory.concat([t for t, _ in sorted(parts, key=lambda p: p[1])], self.policy.tokenizer.pad_token_id)

    def _save_dataset(self, traj: Trajectory, siblings: torch.Tensor) -> None:
        if self.out_dir is None or self.global_rank != 0:
            return
        traj.save_jsonl(self.out_dir / "trajectories.jsonl", self.policy.tokenizer, sibling=siblings.tolist())

    def _log_start(self, traj: Trajectory, siblings: torch.Tensor) -> None:
        stats = {f"ofsd/rollout_{k}": v for k, v in rollout_stats(traj).items()}
        stats["ofsd/sibling_frac"] = float((siblings >= 0).float().mean()) if len(siblings) else 0.0
        stats["ofsd/examples"] = float(len(self.examples))
        if self.examples:
            stats["ofsd/kl_before"] = self.mean_kl()
        if self.logger is not None:
            self.logger.log_metrics(stats, step=0)
        log.info("OFSD round: %d trajectories, %d with a more efficient correct sibling%s", len(traj),
                 len(self.examples), f", teacher-student KL {stats['ofsd/kl_before']:.4f}" if self.examples
                 else f": nothing to distil this round ({empty_reason(traj)})")
        rows = [i for i, j in enumerate(siblings.tolist()) if j >= 0][: self.config.log_text_samples]
        if rows:
            self.log_trajectories("ofsd/distilled_trajectories", traj, rows)

    def on_fit_end(self) -> None:
        if self.logger is not None and self.examples:
            self.logger.log_metrics({"ofsd/kl_after": self.mean_kl()}, step=self.steps)

    @torch.no_grad()
    def mean_kl(self) -> float:
        """Mean per-token teacher-student KL over the first ``kl_eval_examples`` examples."""
        subset = self.examples[: self.config.kl_eval_examples]
        total, tokens = torch.zeros((), dtype=torch.float64), torch.zeros((), dtype=torch.float64)
        for start in range(0, len(subset), self.config.micro_batch_size):
            batch = collate_examples(subset[start : start + self.config.micro_batch_size], self.policy.tokenizer.pad_token_id)
            per_token, mask = self._per_token_kl({k: v.to(self.device) for k, v in batch.items()})
            total += float((per_token * mask).sum())
            tokens += float(mask.sum())
        return float(total / tokens.clamp(min=1.0))

    def train_dataloader(self) -> DataLoader:
        """``steps * batch_size`` examples for this rank (its slice of the examples, cycled), at most
        ``max_epochs`` passes over the slice: the last batch may be smaller, and fewer batches run."""
        rank, world = rank_world()
        pool = self.examples[rank::world] or self.examples
        if not pool:  # an empty round: no steps, and no zero-length-DataLoader warning from Lightning
            return DataLoader(_NoBatches(), batch_size=None)
        n = min(self.steps * self.config.batch_size, max(1, math.ceil(self.config.max_epochs * len(pool))))
        items = [pool[k % len(pool)] for k in range(n)]
        pad = self.policy.tokenizer.pad_token_id
        return DataLoader(items, batch_size=self.config.batch_size, shuffle=False,
                          collate_fn=lambda b: collate_examples(b, pad))

    # ---------------------------------------------------------------- training
    def _per_token_kl(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Teacher-student KL at every response position ``[B, R]`` (0 under mask 0), and the mask."""
        mask = batch["response_mask"]  # [B, R]
        c = self.config
        if not self.policy.chunkable:  # FSDP-sharded or soft-capped head: whole-response logits
            r = mask.shape[1]
            with torch.no_grad():
                teacher = self.policy(batch["teacher_ids"], batch["teacher_mask"], r + 1)[:, :-1]  # [B, R, V]
            student = self.policy(batch["student_ids"], batch["student_mask"], r + 1)[:, :-1]  # [B, R, V]
            targets = make_teacher_targets(teacher, topk=c.teacher_topk or None, temperature=c.temperature)
            return get_distill_loss(c.loss)(student, targets, mask), mask
        return chunked_distill(self.policy, batch, c.loss, c.teacher_topk, c.temperature), mask

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        c = self.config
        n_tokens = float(batch["response_mask"].sum().clamp(min=1.0))
        total = 0.0
        for idx in torch.arange(batch["response_mask"].shape[0]).split(c.micro_batch_size):
            micro = {k: v[idx] for k, v in batch.items()}
            per_token, mask = self._per_token_kl(micro)  # [b, R]
            loss = agg_loss(per_token, mask, "token-mean", num_tokens=n_tokens)
            self.manual_backward(loss)
            total += float(loss.detach())
        grad_norm = self.optimizer_step_clipped()
        stats = {"distill_loss": total, "tokens": n_tokens, "grad_norm": grad_norm, "lr": self.current_lr}
        self.log_dict({f"ofsd/{k}": v for k, v in stats.items()}, on_step=True, on_epoch=False,
                      batch_size=batch["response_mask"].shape[0], sync_dist=True)
        self.log("kl", total, prog_bar=True, logger=False, batch_size=1)

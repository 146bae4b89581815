"""OFSD round: offline self-distillation from a privileged view of the policy itself.

At the start of the round (``on_fit_start``) the current policy rolls out ``group_size``
trajectories for each of the round's training questions; they are written to
``<round dir>/trajectories.jsonl`` (one JSON object per trajectory: text, token ids, loss mask,
reward, searches, the chosen sibling). For each trajectory ``tau`` with a more efficient correct
sibling ``tau'`` (`search_e1.algos.select_siblings`), a distillation example pairs

* the **student** context: the ordinary prompt + ``tau`` (what the policy sees at inference), and
* the **teacher** context: the same prompt whose last user message also shows ``tau'`` (its
  reasoning, queries and answer; its retrieved documents elided; ``teacher_view`` shows them, or
  only its queries, or only its answer), followed by the same tokens of ``tau``.

The loss at every token of ``tau`` the policy sampled (mask 1; ``tokens: queries`` keeps only the
tokens of its search queries, as SD-Search) is the forward ``KL(p_teacher || p_student)`` over the
vocabulary (or the teacher's top-k; ``loss: reverse_kl`` or ``jsd`` swap the divergence), the
teacher being the same weights under ``no_grad``. Questions with no correct trajectory contribute
nothing. With ``refresh_every: N`` the data set is rebuilt from the current policy every ``N``
optimiser steps (on-policy self-distillation, the paper's second version) instead of once.

Two controls, each one config line, change one thing and keep the rest (rows distilled, steps,
optimiser) equal:

* ``privileged: placebo``: the teacher is shown a correct trajectory of a DIFFERENT question (one of
  the siblings chosen for the other questions, `search_e1.algos.placebo_siblings`), so a gain that
  survives it comes from changing the context, not from what the sibling shows;
* ``objective: rft``: rejection-sampling fine-tuning: supervised NLL on each chosen sibling's own
  trajectory (ordinary prompt) instead of the KL to the privileged teacher.

Each round writes ``summary.json`` beside its data set: examples, how the rows got their sibling
(``cheaper``: a correct row with a cheaper correct sibling; ``wrong_row``: a wrong row with a correct
one), and the teacher-student KL before and after the round over all distilled tokens, over the
tokens of search queries and over the rest (where the privileged context moves the teacher most).

Departures from the paper's description: none intended; the wording of the privileged block is
ours (``OFSDConfig.privileged_template``), and the round's data set is sampled afresh each round
from ``num_questions`` training questions.
"""

from __future__ import annotations

import inspect
import json
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader

from search_e1.algos import (
    get_distill_loss,
    get_sibling_selector,
    make_teacher_targets,
    placebo_siblings,
)
from search_e1.config import plain
from search_e1.distributed import rank_share, rank_world
from search_e1.policy import Policy, at_positions
from search_e1.registry import Registry
from search_e1.rollout import SearchEnv, Trajectory, rollout_stats
from search_e1.rounds.base import (
    REFRESH_STREAM,
    OptimConfig,
    QuestionSource,
    RoundModule,
    question_seed,
    token_mean_backward,
)
from search_e1.rounds.ofsd_data import (
    ELIDED,
    PRIVILEGED_TEMPLATE,
    SIBLING_VIEWS,
    TOKEN_SELECTIONS,
    DistillExample,
    build_examples,
    collate_examples,
    empty_reason,
    query_token_mask,
    render_sibling,
    rft_examples,
    sibling_cases,
)

__all__ = [
    "ELIDED", "OBJECTIVES", "PRIVILEGED_CONTEXTS", "SIBLING_VIEWS", "TOKEN_SELECTIONS", "DistillExample", "Objective",
    "OFSDConfig", "OFSDModule", "build_examples",
    "chunked_distill", "collate_examples", "distill_loss_fn", "empty_reason", "query_token_mask", "render_sibling",
]

log = logging.getLogger(__name__)

PrivilegedContext = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Generator], torch.Tensor]
PRIVILEGED_CONTEXTS: Registry[PrivilegedContext] = Registry("privileged context")
"""``OFSDConfig.privileged`` -> ``(group_ids, siblings, correct, generator) -> shown [N]``: the row whose
trajectory each row's teacher is shown (-1: no example for that row)."""
PRIVILEGED_CONTEXTS.register("sibling")(lambda group_ids, siblings, correct, generator: siblings)
PRIVILEGED_CONTEXTS.register("placebo")(placebo_siblings)


@dataclass(frozen=True)
class Objective:
    """What an OFSD round trains (`OBJECTIVES`)."""

    examples: Callable[[list[DistillExample], Trajectory, torch.Tensor], list[DistillExample]]
    """``(teacher/student pairs, trajectories, chosen siblings [N]) -> the examples trained``."""
    per_token_loss: Callable[[Any, dict[str, torch.Tensor]], tuple[torch.Tensor, torch.Tensor]]
    """``(module, batch) -> (loss [B, R], mask [B, R])``."""


OBJECTIVES: Registry[Any] = Registry("OFSD objective")
"""``OFSDConfig.objective`` -> its `Objective` (filled below `OFSDModule`, whose methods they use)."""

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
    """Divergence teacher -> student: forward_kl (full vocabulary), forward_kl_topk, reverse_kl, jsd."""
    jsd_beta: float = 0.5
    """jsd only: the mixture weight beta of the generalised JSD (0 < beta < 1; 0.5 = symmetric)."""
    tokens: str = "all"
    """Where the loss applies: all (every sampled token) or queries (only the tokens of search queries, as
    SD-Search)."""
    teacher_topk: int = 0
    """Teacher tokens kept per position by forward_kl_topk (0 with forward_kl)."""
    temperature: float = 1.0
    """Softmax temperature of teacher and student in the loss."""
    sibling_selector: str = "most_efficient"
    """Sibling shown to the teacher: most_efficient (correct, strictly cheaper) or correct_then_cheaper (wrong rows:
    any correct)."""
    teacher_view: str = "elided"
    """What the teacher sees of the sibling: elided (its turns, documents elided), documents (with them), queries (its
    searches only), answer (its answer only)."""
    privileged: str = "sibling"
    """The privileged block shows: sibling (the chosen sibling, the method) or placebo (a correct trajectory of another
    question: a control)."""
    objective: str = "distill"
    """What is trained: distill (the divergence to the privileged teacher, the method) or rft (NLL on each chosen
    sibling's trajectory: a control)."""
    refresh_every: int = 0
    """Data schedule: 0 = offline, one data set per round; N = on-policy, a fresh data set from the current policy
    every N optimiser steps."""
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
            raise ValueError("OFSDConfig.group_size must be >= 2: a trajectory's sibling is another sample "
                             "of its question")
        if self.max_epochs <= 0:
            raise ValueError(f"OFSDConfig.max_epochs must be > 0, got {self.max_epochs}")
        if "{sibling}" not in self.privileged_template:
            raise ValueError("OFSDConfig.privileged_template must contain '{sibling}'")
        if (self.loss == "forward_kl_topk") != (self.teacher_topk > 0):
            raise ValueError("OFSDConfig: use teacher_topk > 0 exactly when loss is forward_kl_topk")
        if not 0.0 < self.jsd_beta < 1.0:
            raise ValueError(f"OFSDConfig.jsd_beta must be in (0, 1), got {self.jsd_beta}")
        if self.tokens not in TOKEN_SELECTIONS:
            raise ValueError(f"OFSDConfig.tokens: expected one of {tuple(TOKEN_SELECTIONS)}, got {self.tokens!r}")
        if self.teacher_view not in SIBLING_VIEWS:
            raise ValueError(f"OFSDConfig.teacher_view: expected one of {tuple(SIBLING_VIEWS)}, "
                             f"got {self.teacher_view!r}")
        if self.refresh_every < 0:
            raise ValueError(f"OFSDConfig.refresh_every must be >= 0, got {self.refresh_every}")
        if self.privileged not in PRIVILEGED_CONTEXTS:
            raise ValueError(f"OFSDConfig.privileged: expected one of {tuple(PRIVILEGED_CONTEXTS)}, "
                             f"got {self.privileged!r}")
        if self.objective not in OBJECTIVES:
            raise ValueError(f"OFSDConfig.objective: expected one of {tuple(OBJECTIVES)}, got {self.objective!r}")
        for name, getter in (("loss", get_distill_loss), ("sibling_selector", get_sibling_selector)):
            try:
                getter(getattr(self, name))
            except ValueError as err:
                raise ValueError(f"OFSDConfig.{name}: {err}") from None


class _NoBatches(torch.utils.data.IterableDataset):
    """The data of an empty round: iterates nothing and has no length, so Lightning runs no step
    and does not warn about a zero-length DataLoader."""

    def __iter__(self) -> Any:
        return iter(())


def response_hidden(policy: Policy, ids: torch.Tensor, attention: torch.Tensor, r: int) -> torch.Tensor:
    """Final hidden states predicting the last ``r`` tokens of each (left-padded) row.  # [B, R, H]"""
    return policy.hidden_states(ids, attention)[:, -r - 1 : -1]


def distill_loss_fn(cfg: OFSDConfig) -> Callable[..., torch.Tensor]:
    """The registered divergence ``cfg.loss``; one that takes ``beta`` (``jsd``) gets ``cfg.jsd_beta``."""
    fn = get_distill_loss(cfg.loss)
    return partial(fn, beta=cfg.jsd_beta) if "beta" in inspect.signature(fn).parameters else fn


def chunked_distill(policy: Policy, batch: dict[str, torch.Tensor], loss: str | Callable[..., torch.Tensor],
                    topk: int, temperature: float, chunk_size: int = 256) -> torch.Tensor:
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
    loss_fn = get_distill_loss(loss) if isinstance(loss, str) else loss

    def chunk_loss(s_hidden: torch.Tensor, t_hidden: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            targets = make_teacher_targets(policy.project(t_hidden)[None], topk=topk or None,
                                           temperature=temperature)  # over [1, n, V]
        return loss_fn(policy.project(s_hidden)[None], targets, None)[0]  # [n]

    return at_positions(chunk_loss, (b, t), mask.shape, (student[b, t], teacher[b, t]), chunk_size)[0]  # [B, R]


class OFSDModule(RoundModule):
    """Offline self-distillation on the shared policy.

    Args:
        policy: the shared policy (student and, under no_grad, teacher).
        env: the search environment of the round's rollouts (correct = reward >= 1).
        questions: this round's training questions as ``(question, golden_answers)`` pairs.
        steps: optimiser steps of the round.
        config: OFSD hyperparameters.
        out_dir: where the round's trajectory data set(s) are written.
        question_source: ``(k, seed) -> [(question, golden_answers)]``: fresh questions for each
            on-policy refresh (``refresh_every``); without it a refresh rolls out ``questions`` again.
    """

    def __init__(
        self, policy: Policy, env: SearchEnv | None, questions: list[tuple[str, list[str]]], steps: int,
        config: OFSDConfig | None = None, out_dir: str | Path | None = None,
        question_source: QuestionSource | None = None,
    ) -> None:
        config = config or OFSDConfig()
        super().__init__(policy, env, config.optim)
        self.config = config
        self.questions, self.steps = list(questions), steps
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.question_source = question_source
        self.examples: list[DistillExample] = []
        """The current data set's training examples (distillation pairs, or RFT's sibling trajectories)."""
        self.pairs: list[DistillExample] = []
        """The current data set's student/teacher pairs (the teacher-student KL is measured on them)."""
        self._data_start = 0  # the step at which the current data set was built
        self.summary: dict[str, Any] = {}
        self.empty_steps = 0
        self.save_hyperparameters({"ofsd": plain(self.config), "steps": steps})

    # ---------------------------------------------------------------- the data set(s)
    def on_fit_start(self) -> None:
        super().on_fit_start()
        self._build_data(self.questions, step=0)

    def _build_data(self, questions: list[tuple[str, list[str]]], step: int) -> None:
        """Roll out ``questions`` with the current policy and make the distillation examples."""
        c = self.config
        traj = self._rollout_round(questions)
        correct = traj.rewards >= 1.0  # [N]
        siblings = get_sibling_selector(c.sibling_selector)(
            traj.group_ids, correct, traj.num_searches, traj.response_lengths)  # [N]
        self.summary = {"trajectories": len(traj), **sibling_cases(correct, siblings)}
        gen = torch.Generator().manual_seed(int(self.log_step) + step)
        shown = PRIVILEGED_CONTEXTS.get(c.privileged)(traj.group_ids, siblings, correct, gen)  # [N]
        self.summary["placebo_missing"] = int(((siblings >= 0) & (shown < 0)).sum())
        self.pairs = build_examples(traj, shown, self.policy.tokenizer, self.env.prompt, c.teacher_view,
                                    c.privileged_template, c.tokens)
        self.examples = OBJECTIVES.get(c.objective).examples(self.pairs, traj, siblings)
        self._data_start = step
        self._save_dataset(traj, siblings, shown, step)
        self._log_data(traj, siblings, step)

    def _rollout_round(self, questions: list[tuple[str, list[str]]]) -> Trajectory:
        """Roll out this rank's share of the questions; all ranks then hold every trajectory."""
        rank, world = rank_world()
        mine = rank_share(questions)
        traj = self.rollout_questions([q for q, _ in mine], [g for _, g in mine], self.config.group_size)
        if world == 1:
            return traj.to("cpu")
        parts: list[Any] = [None] * world
        dist.all_gather_object(parts, (traj.to("cpu"), rank))
        return Trajectory.concat([t for t, _ in sorted(parts, key=lambda p: p[1])], self.policy.tokenizer.pad_token_id)

    def _save_dataset(self, traj: Trajectory, siblings: torch.Tensor, shown: torch.Tensor, step: int) -> None:
        """The data set as JSON lines: every trajectory with its chosen sibling (and, under the
        placebo, the other question's trajectory the teacher was shown instead)."""
        if self.out_dir is None or self.global_rank != 0:
            return
        name = "trajectories.jsonl" if step == 0 else f"trajectories_step{step}.jsonl"
        extra = {"shown": shown.tolist()} if shown is not siblings else {}
        traj.save_jsonl(self.out_dir / name, self.policy.tokenizer, sibling=siblings.tolist(), **extra)

    def _log_data(self, traj: Trajectory, siblings: torch.Tensor, step: int) -> None:
        stats = {f"ofsd/rollout_{k}": v for k, v in rollout_stats(traj).items()}
        stats["ofsd/sibling_frac"] = float((siblings >= 0).float().mean()) if len(siblings) else 0.0
        stats["ofsd/examples"] = float(len(self.examples))
        stats.update({f"ofsd/cases_{k}": float(self.summary[k]) for k in ("cheaper", "wrong_row")})
        if self.pairs:
            stats.update({f"ofsd/kl_before{part}": v for part, v in self.kl_parts().items()})
        self.summary.update(examples=len(self.examples),
                            **{k.removeprefix("ofsd/"): v for k, v in stats.items() if "kl_" in k})
        self.record_step({k.removeprefix("ofsd/"): v for k, v in stats.items()})
        if self.logger is not None:
            self.logger.log_metrics(stats, step=step)
        what = "OFSD round" if step == 0 else f"OFSD data refreshed at step {step}"
        log.info("%s: %d trajectories, %d with a more efficient correct sibling (%d cheaper, %d of a wrong "
                 "row)%s", what, len(traj), len(self.examples), self.summary["cheaper"], self.summary["wrong_row"],
                 f", teacher-student KL {stats['ofsd/kl_before']:.4f}" if self.pairs
                 else f": nothing to distil {'this round' if step == 0 else 'until the next refresh'} "
                      f"({empty_reason(traj)})")
        rows = [i for i, j in enumerate(siblings.tolist()) if j >= 0][: self.config.log_text_samples]
        if rows and step == 0:
            self.log_trajectories("ofsd/distilled_trajectories", traj, rows)

    def on_fit_end(self) -> None:
        if self.pairs:
            after = {f"kl_after{part}": v for part, v in self.kl_parts().items()}
            self.record_step({"kl_after": after["kl_after"]})
            self.summary.update(after, steps=len(self.step_stats.get("grad_norm", ())))
            if self.logger is not None:
                self.logger.log_metrics({f"ofsd/{k}": v for k, v in after.items()}, step=self.steps)
        if self.out_dir is not None and self.global_rank == 0 and self.summary:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            (self.out_dir / "summary.json").write_text(json.dumps(self.summary, indent=2) + "\n")

    @torch.no_grad()
    def kl_parts(self) -> dict[str, float]:
        """Mean per-token teacher-student KL over the first ``kl_eval_examples`` pairs: over every
        distilled token (key ``""``), over the tokens of search queries (``_queries``) and over the
        rest (``_rest``); 0 where a part has no token."""
        subset = self.pairs[: self.config.kl_eval_examples]
        sums = dict.fromkeys(("", "_queries", "_rest"), 0.0)
        counts = dict.fromkeys(sums, 0.0)
        for start in range(0, len(subset), self.config.micro_batch_size):
            batch = collate_examples(subset[start : start + self.config.micro_batch_size],
                                     self.policy.tokenizer.pad_token_id)
            batch = {k: v.to(self.device) for k, v in batch.items()}
            per_token, mask = self._per_token_kl(batch)  # [b, R], [b, R]
            q = batch["query_mask"] * mask  # [b, R]
            for part, m in (("", mask), ("_queries", q), ("_rest", mask - q)):
                sums[part] += float((per_token * m).sum())
                counts[part] += float(m.sum())
        return {part: sums[part] / counts[part] if counts[part] else 0.0 for part in sums}

    def _data_items(self) -> int:
        """Examples the current data set serves on each rank: ``batch_size`` per step until the next
        refresh (or the round's end), at most ``max_epochs`` passes over a rank's slice."""
        c = self.config
        if not self.examples:
            return 0
        window = min(c.refresh_every or self.steps, self.steps - self._data_start)
        per_rank = math.ceil(len(self.examples) / rank_world()[1])  # the same on every rank
        return min(window * c.batch_size, max(1, math.ceil(c.max_epochs * per_rank)))

    def train_dataloader(self) -> DataLoader:
        """Step indices; `batch` builds each step's examples from the data set current at that step.
        Offline, ``ceil(items / batch_size)`` steps run; on-policy (``refresh_every``), every step
        index runs and a step past its data set's budget trains nothing."""
        n = self.steps if self.config.refresh_every else math.ceil(self._data_items() / self.config.batch_size)
        if not n:  # an empty round: no steps, and no zero-length-DataLoader warning from Lightning
            return DataLoader(_NoBatches(), batch_size=None)
        return DataLoader(range(n), batch_size=None)

    def batch(self, step: int) -> dict[str, torch.Tensor] | None:
        """The examples of ``step`` on this rank (its slice of the data set, cycled), collated on this
        device; None when the current data set has served its budget or is empty."""
        c = self.config
        lo = (step - self._data_start) * c.batch_size
        hi = min(lo + c.batch_size, self._data_items())
        if lo >= hi:
            return None
        pool = rank_share(self.examples) or self.examples
        batch = collate_examples([pool[k % len(pool)] for k in range(lo, hi)], self.policy.tokenizer.pad_token_id)
        return {k: v.to(self.device) for k, v in batch.items()}

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
            return distill_loss_fn(c)(student, targets, mask), mask
        return chunked_distill(self.policy, batch, distill_loss_fn(c), c.teacher_topk, c.temperature), mask

    def _per_token_nll(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """RFT: the student's NLL of each response token ``[B, R]`` (0 under mask 0), and the mask."""
        mask = batch["response_mask"]  # [B, R]
        ids, attention = batch["student_ids"], batch["student_mask"]  # [B, L]
        r, width = mask.shape[1], ids.shape[1]
        full = torch.cat([mask.new_zeros(mask.shape[0], width - r), mask], dim=1)  # [B, L]
        lp, _ = self.policy.token_logprobs(ids, attention, full, temperature=self.config.temperature,
                                           start=width - r)  # [B, L]
        return -lp[:, width - r :], mask

    def training_step(self, step: Any, batch_idx: int) -> None:
        c = self.config
        step = int(step)
        if c.refresh_every and step > 0 and step % c.refresh_every == 0:  # on-policy: a fresh data set
            source = self.question_source
            seed = question_seed(self.log_step, 0, REFRESH_STREAM)
            questions = source(c.num_questions, seed) if source is not None else self.questions
            self._build_data(questions, step)
        batch = self.batch(step)
        if batch is None:
            self.empty_steps += 1
            return
        n_tokens = float(batch["response_mask"].sum().clamp(min=1.0))
        per_token_loss = OBJECTIVES.get(c.objective).per_token_loss
        total = token_mean_backward(batch["response_mask"].shape[0], c.micro_batch_size,
                                    lambda rows: per_token_loss(self, {k: v[rows] for k, v in batch.items()}),  # [b, R]
                                    self.manual_backward, n_tokens)
        grad_norm = self.optimizer_step_clipped()
        stats = {"distill_loss": total, "tokens": n_tokens, "grad_norm": grad_norm, "lr": self.current_lr}
        self.record_step(stats)
        self.log_dict({f"ofsd/{k}": v for k, v in stats.items()}, on_step=True, on_epoch=False,
                      batch_size=batch["response_mask"].shape[0], sync_dist=True)
        self.log("kl", total, prog_bar=True, logger=False, batch_size=1)


OBJECTIVES.register("distill")(Objective(lambda pairs, traj, siblings: pairs, OFSDModule._per_token_kl))
OBJECTIVES.register("rft")(Objective(lambda pairs, traj, siblings: rft_examples(traj, siblings),
                                     OFSDModule._per_token_nll))

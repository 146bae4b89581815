"""Warm-up: supervised fine-tuning on demonstrations, once, before the first GRPO round.

A documented departure from the paper for small models. Search-E1 starts from Qwen2.5-3B, which
already follows the search protocol; the embedded SmolLM2-135M almost never does (DESIGN section
4), so GRPO would see no reward and OFSD no correct sibling. A few optimiser steps of next-token
loss on demonstrations (e.g. the demo world's oracle ``demonstrations.jsonl``: search the entity
the question names, then the bridge entity, answer from the passage) teach the protocol. It is off
unless ``warmup.demonstrations`` is set; both arms of a comparison should start from the same one.

Demonstrations are JSON lines ``{"messages": [{"role", "content"}, ...]}`` in one of two shapes:

* a full conversation that starts with system/user messages: everything before the first
  assistant message is the prompt, rendered with the chat template
  (``apply_chat_template(..., add_generation_prompt=True)``);
* a line with a ``"question"`` whose ``messages`` start at the first assistant turn: the prompt is
  built exactly as the rollout builds it (`Renderer.prompt_ids`, i.e. ``prompt`` config), so the
  warm-up trains the prompt the rollouts use.

After the prompt every message is rendered as a rollout would render it: an assistant message
through `Renderer.encode` (loss mask 1: the tokens the policy samples), a user message
(information or feedback) through `Renderer.observation` with its chat-template glue (loss mask
0). Nothing follows an assistant message: the rollout stops generating right after ``</search>`` /
``</answer>``, so no end-of-turn token is ever sampled there, and none is trained. User messages
are used verbatim (not cut to ``rollout.max_info_tokens``, and without the final-turn note). The
loss mask itself is built by `Trajectory.from_rows`, the one place that builds it.

Bad input (missing file, bad JSON, missing or ill-typed ``messages``, an unknown role, no
assistant turn, an example longer than ``rollout.max_total_tokens``) raises `DemonstrationError`
naming ``file:line`` before any training starts; over-long examples are refused, not skipped.

The loss is the token mean of the negative log-likelihood over mask-1 tokens of each optimiser
step's batch (micro-batches are normalised by the whole batch's token count, so their gradients
add up to the batch's). ``steps * batch_size`` examples are drawn by cycling the demonstrations,
each pass a fresh permutation (seeded): ``steps * batch_size / len(demonstrations)`` epochs.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader

from search_e1.config import plain
from search_e1.data import iter_jsonl
from search_e1.distributed import rank_share, rank_world
from search_e1.errors import UserInputError
from search_e1.policy import Policy
from search_e1.protocol import PromptConfig
from search_e1.rollout import Renderer, RolloutConfig, Segment, Trajectory
from search_e1.rounds.base import OptimConfig, RoundModule, token_mean_backward

_ROLES = ("system", "user", "assistant")


class DemonstrationError(UserInputError):
    """A demonstrations file that cannot be used; the message starts with ``file:line``."""


@dataclass
class WarmupConfig:
    """Supervised warm-up on demonstrations before round 1 (off unless demonstrations is set)."""

    demonstrations: str | None = None
    """Chat-message JSONL file of demonstrations; None = no warm-up."""
    steps: int = 8
    """Optimiser steps of the warm-up (the demonstrations are cycled to fill them)."""
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=3e-5))
    """AdamW, learning-rate warmup and gradient clipping of the warm-up (lr 3e-5 by default)."""
    batch_size: int = 8
    """Demonstrations per optimiser step (per process)."""
    micro_batch_size: int = 4
    """Demonstrations per forward/backward (gradient accumulation)."""
    max_examples: int = 0
    """Use only the first N demonstrations of the file; 0 = all."""
    seed: int | None = None
    """Seed of the order in which demonstrations are drawn (a fresh permutation per pass); None = the run's seed
    (evolver.seed), 0 outside a run."""

    def __post_init__(self) -> None:
        if self.demonstrations is not None and not str(self.demonstrations).strip():
            raise ValueError("WarmupConfig.demonstrations must be a file path or None, got ''")
        for name in ("steps", "batch_size", "micro_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"WarmupConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.max_examples < 0:
            raise ValueError(f"WarmupConfig.max_examples must be >= 0, got {self.max_examples}")


@dataclass
class WarmupExample:
    """One demonstration as token ids: the prompt, then policy (sampled) and environment segments."""

    prompt: list[int]
    segments: list[Segment]
    where: str
    """``file:line`` of the demonstration."""

    def __len__(self) -> int:
        return len(self.prompt) + sum(len(s.ids) for s in self.segments)


# ---------------------------------------------------------------- reading and encoding
def _messages(record: Mapping[str, Any], where: str) -> list[dict[str, str]]:
    """The checked ``messages`` of a demonstration line."""
    if "messages" not in record:
        raise DemonstrationError(f'{where}: missing field \'messages\' (expected a list of {{"role", '
                                 '"content"}} chat messages)')
    messages = record["messages"]
    if not isinstance(messages, list) or not messages:
        raise DemonstrationError(f"{where}: field 'messages': expected a non-empty list of chat "
                                 f"messages, got {messages!r:.80}")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            raise DemonstrationError(f"{where}: messages[{i}]: expected {{\"role\": str, \"content\": str}}, "
                                     f"got {m!r:.80}")
        if m["role"] not in _ROLES:
            raise DemonstrationError(f"{where}: messages[{i}]: unknown role {m['role']!r}; expected one of "
                                     f"{', '.join(_ROLES)}")
    first = next((i for i, m in enumerate(messages) if m["role"] == "assistant"), None)
    if first is None:
        raise DemonstrationError(f"{where}: no assistant message: nothing for the policy to learn")
    late = next((i for i, m in enumerate(messages) if i > first and m["role"] == "system"), None)
    if late is not None:
        raise DemonstrationError(f"{where}: messages[{late}]: a system message after the first assistant "
                                 "turn (only user and assistant turns can follow it)")
    return messages


def encode_demonstration(record: Mapping[str, Any], env: Renderer, where: str = "demonstration") -> WarmupExample:
    """Token ids of one demonstration line, rendered as the rollout renders a trajectory."""
    messages = _messages(record, where)
    first = next(i for i, m in enumerate(messages) if m["role"] == "assistant")
    if first == 0:  # shape (b): the rollout's own prompt for the question
        question = record.get("question")
        if not isinstance(question, str) or not question.strip():
            raise DemonstrationError(f"{where}: messages start with an assistant turn, so field 'question' "
                                     f"(a non-empty string) is required to build the prompt; got {question!r:.80}")
        prompt = env.prompt_ids(question.strip())
    else:  # shape (a): the conversation's own system/user messages
        text = env.tokenizer.apply_chat_template(messages[:first], add_generation_prompt=True, tokenize=False)
        prompt = env.encode(text)
    segments = []
    for m in messages[first:]:
        if m["role"] == "assistant":
            ids = env.encode(m["content"])
            segments.append(Segment(ids, sampled=True, logprobs=[0.0] * len(ids)))
        else:
            segments.append(Segment(env.observation(m["content"]), sampled=False))
    if not any(s.sampled and s.ids for s in segments):
        raise DemonstrationError(f"{where}: every assistant message is empty: nothing for the policy to learn")
    return WarmupExample(prompt, [s for s in segments if s.ids], where)


def load_demonstrations(
    path: str | Path, tokenizer: Any, prompt: PromptConfig, rollout: RolloutConfig, max_examples: int = 0,
) -> list[WarmupExample]:
    """Read, check and encode a demonstrations file (the first ``max_examples`` lines; 0 = all).

    Raises:
        FileNotFoundError: no such file.
        DemonstrationError: a malformed line, or one longer than ``rollout.max_total_tokens``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"demonstrations file not found: {path}")
    env = Renderer(tokenizer, prompt, rollout.max_info_tokens)
    examples: list[WarmupExample] = []
    for where, record in iter_jsonl(path, DemonstrationError):
        ex = encode_demonstration(record, env, where)
        if len(ex) > rollout.max_total_tokens:
            raise DemonstrationError(f"{where}: {len(ex)} tokens, longer than rollout.max_total_tokens = "
                                     f"{rollout.max_total_tokens} (shorten it, or raise the limit)")
        examples.append(ex)
        if max_examples and len(examples) == max_examples:
            break
    if not examples:
        raise DemonstrationError(f"{path}: no demonstrations (the file is empty)")
    return examples


def collate_demonstrations(examples: list[WarmupExample], pad_id: int) -> dict[str, Tensor]:
    """Right-padded batch: input_ids, attention_mask [B, L] long, loss_mask [B, L] float (built by
    `Trajectory.from_rows`), prompt_lengths [B] long."""
    n = len(examples)
    traj = Trajectory.from_rows(  # the per-row statistics of a rollout mean nothing here
        [e.prompt for e in examples], [e.segments for e in examples], pad_id, num_searches=[0] * n,
        num_turns=[0] * n, group_ids=list(range(n)), rewards=[0.0] * n)
    return {"input_ids": traj.input_ids, "attention_mask": traj.attention_mask, "loss_mask": traj.loss_mask,
            "prompt_lengths": traj.prompt_lengths}


def cycled_order(n: int, total: int, seed: int) -> list[int]:
    """``total`` indices into ``n`` items: consecutive seeded permutations, cut to length.

    >>> sorted(cycled_order(3, 6, seed=0)) == [0, 0, 1, 1, 2, 2]
    True
    """
    gen = torch.Generator().manual_seed(seed)
    out: list[int] = []
    while len(out) < total:
        out += torch.randperm(n, generator=gen).tolist()
    return out[:total]


# ---------------------------------------------------------------- the loss
def nll_backward(
    policy: Policy, batch: Mapping[str, Tensor], micro_batch_size: int, backward: Callable[[Tensor], Any],
) -> tuple[float, float]:
    """Token-mean NLL of the batch's mask-1 tokens, one ``backward`` per micro-batch.

    Each micro-batch's loss is its masked NLL sum divided by the whole batch's token count, so the
    micro-batch gradients add up to the full batch's. Returns ``(loss, tokens)`` of the batch.
    """
    mask = batch["loss_mask"]  # [B, L]
    n_tokens = float(mask.sum().clamp(min=1.0))

    def nll(idx: Tensor) -> tuple[Tensor, Tensor]:
        idx = idx.to(mask.device)
        attention = batch["attention_mask"][idx]  # [b, L]
        width = int(attention.sum(-1).max())  # right-padded: drop columns that are padding everywhere
        m = mask[idx, :width]  # [b, W]
        lp, _ = policy.token_logprobs(batch["input_ids"][idx, :width], attention[:, :width], m,
                                      start=int(batch["prompt_lengths"][idx].min()))  # [b, W]
        return -lp, m

    return token_mean_backward(mask.shape[0], micro_batch_size, nll, backward, n_tokens), n_tokens


@torch.no_grad()
def demonstration_nll(policy: Policy, examples: list[WarmupExample], batch_size: int = 8) -> float:
    """Mean NLL per mask-1 token of ``examples`` under the policy (no gradient)."""
    pad, device = policy.tokenizer.pad_token_id, next(policy.parameters()).device
    total, tokens = 0.0, 0.0
    for start in range(0, len(examples), batch_size):
        batch = {k: v.to(device) for k, v in collate_demonstrations(examples[start : start + batch_size], pad).items()}
        loss, n = nll_backward(policy, batch, batch_size, lambda _: None)
        total, tokens = total + loss * n, tokens + n
    return total / max(tokens, 1.0)


# ---------------------------------------------------------------- the module
class WarmupModule(RoundModule):
    """Supervised fine-tuning of the shared policy on encoded demonstrations.

    Args:
        policy: the shared policy (trained in place).
        examples: demonstrations from `load_demonstrations`.
        config: warm-up hyperparameters (``steps`` optimiser steps of ``batch_size`` examples).
    """

    def __init__(self, policy: Policy, examples: list[WarmupExample], config: WarmupConfig | None = None) -> None:
        config = config or WarmupConfig()
        super().__init__(policy, None, config.optim)
        if not examples:
            raise ValueError("WarmupModule needs at least one demonstration")
        self.config = config
        self.examples = list(examples)
        self.save_hyperparameters({"warmup": plain(self.config), "demonstrations": len(self.examples)})

    def train_dataloader(self) -> DataLoader:
        """``steps * batch_size`` demonstrations for this rank (the ranks draw disjoint slices of one
        cycled order)."""
        c = self.config
        order = cycled_order(len(self.examples), c.steps * c.batch_size * rank_world()[1], c.seed or 0)
        items = [self.examples[i] for i in rank_share(order)]
        return DataLoader(items, batch_size=c.batch_size, shuffle=False,
                          collate_fn=partial(collate_demonstrations, pad_id=self.policy.tokenizer.pad_token_id))

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        c = self.config
        loss, tokens = nll_backward(self.policy, batch, c.micro_batch_size, self.manual_backward)
        grad_norm = self.optimizer_step_clipped()
        stats = {"loss": loss, "tokens": tokens, "grad_norm": grad_norm, "lr": self.current_lr}
        self.log_dict({f"warmup/{k}": v for k, v in stats.items()}, on_step=True, on_epoch=False,
                      batch_size=batch["loss_mask"].shape[0], sync_dist=True)
        self.log("nll", loss, prog_bar=True, logger=False, batch_size=1)

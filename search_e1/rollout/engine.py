"""Batched multi-turn rollout: an explicit per-row state machine over the search protocol.

Every row (one sample of one question) moves through three states::

    GENERATE --(</search>)--> SEARCH --(information appended)--> GENERATE
    GENERATE --(</answer> | EOS | last turn | no budget left)--> DONE
    GENERATE --(invalid action, turns left)--> GENERATE  (feedback appended)

Each turn the engine (1) generates for every GENERATE row through a `TurnGenerator`, (2) lets
one handler per outcome update each row, (3) retrieves for every SEARCH row in ONE batched
`Retriever.search` call and appends the ``<information>`` block. Sampled tokens are kept as
token ids (never decoded and re-tokenised); only environment text is tokenised. With
``info_format="turn"`` the information block is wrapped in the chat template's user turn, and the
template glue is environment tokens (loss mask 0).

Departures from Search-R1: generation stops at ``</search>`` (no wasted tokens after the
query); environment text never contains protocol tags, so answers and the format check read
the response alone; a search issued in the last
allowed turn is not executed (the row ends without an answer), and the observation before the
last turn says so (``PromptConfig.final_turn_note``).
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from search_e1.config import check_range
from search_e1.distributed import any_rank
from search_e1.protocol import (
    PromptConfig,
    build_messages,
    extract_answer,
    feedback_text,
    information_text,
    must_answer,
    parse_action,
)
from search_e1.retrieval.base import Retriever, format_passages
from search_e1.rewards import RewardConfig, compute_reward
from search_e1.rollout.backends import BACKENDS, make_generator
from search_e1.rollout.trajectory import Segment, Trajectory
from search_e1.rollout.turn import TurnGenerator, TurnOutput
from search_e1.rollout.vllm_backend import VLLMConfig

log = logging.getLogger(__name__)

_SENTINEL_A, _SENTINEL_U = "\x00SE1_ASSISTANT\x00", "\x00SE1_USER\x00"


@dataclass
class RolloutConfig:
    """Sampling and turn budgets of the multi-turn rollout."""

    max_turns: int = 4
    """Generation turns per trajectory; at most max_turns - 1 searches are executed."""
    max_new_tokens: int = 500
    """Token budget of one generation turn."""
    max_info_tokens: int = 500
    """Retrieved text kept per information block, in tokens (the rest is cut)."""
    max_total_tokens: int = 4096
    """Context length limit per trajectory (prompt included); a row that reaches it ends."""
    passages_per_search: int = 3
    """Passages retrieved per search (the retriever's top k)."""
    temperature: float = 1.0
    """Sampling temperature; 0 selects greedy decoding (evaluation)."""
    top_k: int = 0
    """Top-k truncation while sampling; 0 disables it."""
    top_p: float = 1.0
    """Nucleus truncation while sampling; 1.0 disables it."""
    generation_batch_size: int = 64
    """Rows per generate call of the hf backend (vllm schedules its own batches)."""
    backend: str = "hf"
    """Generation backend: hf (transformers generate, the reference) or vllm (colocated vLLM engine)."""
    vllm: VLLMConfig = field(default_factory=VLLMConfig)
    """Engine settings of the vllm backend (KV cache, threads, compilation)."""

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ValueError(f"RolloutConfig.backend: expected one of {sorted(BACKENDS)}, got {self.backend!r}")
        for name in ("max_turns", "max_new_tokens", "max_total_tokens", "passages_per_search",
                     "generation_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"RolloutConfig.{name} must be >= 1, got {getattr(self, name)}")
        check_range(self, at_least={"max_info_tokens": 0, "temperature": 0, "top_k": 0}, above={"top_p": 0},
                    at_most={"top_p": 1})


class State(enum.Enum):
    GENERATE = "generate"
    SEARCH = "search"
    DONE = "done"


@dataclass
class Row:
    """The rollout state of one sample."""

    group: int
    prompt: list[int]
    segments: list[Segment] = field(default_factory=list)
    state: State = State.GENERATE
    turns: int = 0
    searches: int = 0
    query: str | None = None
    finish: str = ""

    @property
    def length(self) -> int:
        return len(self.prompt) + sum(len(s.ids) for s in self.segments)

    def context(self) -> list[int]:
        return self.prompt + [t for s in self.segments for t in s.ids]


class Renderer:
    """Turns protocol text into token ids for one tokenizer and prompt configuration."""

    def __init__(self, tokenizer: Any, prompt: PromptConfig, max_info_tokens: int) -> None:
        self.tokenizer, self.prompt, self.max_info_tokens = tokenizer, prompt, max_info_tokens
        self._turn_glue = self._template_glue() if prompt.info_format == "turn" else ("", "")

    def prompt_ids(self, question: str) -> list[int]:
        messages = build_messages(question, self.prompt)
        text = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        return self.encode(text)

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def observation(self, content: str) -> list[int]:
        """Environment tokens for an observation (information or feedback) after a policy turn."""
        before, after = self._turn_glue
        return self.encode(before + content + after)

    def information(self, passages_text: str, last_turn_next: bool) -> list[int]:
        """``<information>`` block (cut to ``max_info_tokens`` of passage text) as tokens."""
        ids = self.encode(passages_text)
        if len(ids) > self.max_info_tokens:
            passages_text = self.tokenizer.decode(ids[: self.max_info_tokens])
        return self.observation(information_text(passages_text, self.prompt, last_turn_next))

    def feedback(self, last_turn_next: bool) -> list[int]:
        """Invalid-action feedback as tokens."""
        return self.observation(feedback_text(self.prompt, last_turn_next))

    def _template_glue(self) -> tuple[str, str]:
        """Text the chat template puts between an assistant turn's content and a user turn's
        content, and after the user turn up to the next assistant generation prompt."""
        messages = [{"role": "user", "content": "q"}, {"role": "assistant", "content": _SENTINEL_A},
                    {"role": "user", "content": _SENTINEL_U}]
        text = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        a, u = text.find(_SENTINEL_A), text.find(_SENTINEL_U)
        if a < 0 or u < a:
            raise ValueError("info_format='turn' needs a chat template that renders assistant and "
                             "user turns in order; use info_format='inline' with this tokenizer")
        return text[a + len(_SENTINEL_A) : u], text[u + len(_SENTINEL_U) :]


def check_prompt_fits(tokenizer: Any, prompt: PromptConfig, cfg: RolloutConfig) -> int:
    """The prompt template's length without a question; `UserInputError` when it leaves no room for
    one turn of ``max_new_tokens`` within ``max_total_tokens`` (checked before any work starts)."""
    from search_e1.errors import UserInputError

    base = len(Renderer(tokenizer, prompt, cfg.max_info_tokens).prompt_ids(""))
    if base + cfg.max_new_tokens > cfg.max_total_tokens:
        raise UserInputError(
            f"rollout.max_total_tokens ({cfg.max_total_tokens}) leaves no room for a turn: the prompt template "
            f"alone is {base} tokens and a turn may sample rollout.max_new_tokens ({cfg.max_new_tokens}); raise "
            "max_total_tokens or shorten prompt.instruction / prompt.few_shot")
    return base


def rollout(
    policy: Any, retriever: Retriever, questions: Sequence[str],
    golden_answers: Sequence[Sequence[str]], config: RolloutConfig | None = None,
    prompt: PromptConfig | None = None, reward: RewardConfig | None = None,
    generator: TurnGenerator | None = None, group_size: int = 1,
) -> Trajectory:
    """Roll out ``group_size`` trajectories per question and score them (`SearchEnv.rollout` is the
    usual entry point: it also switches the policy to eval mode and picks the backend).

    Args:
        policy: a `search_e1.Policy` (its ``model``, ``tokenizer`` and ``eos_token_ids`` are used).
        retriever: any `Retriever`; called once per turn with every pending query.
        questions: ``Q`` questions.
        golden_answers: ``Q`` lists of gold answers (for the reward).
        config: budgets and sampling; defaults to `RolloutConfig()`.
        prompt: prompt template and information format; defaults to `PromptConfig()`.
        reward: reward definition; defaults to exact match.
        generator: per-turn generation backend; defaults to the one ``config.backend`` names.
        group_size: samples per question, G.

    Returns:
        A `Trajectory` of ``Q * group_size`` rows, the samples of question ``q`` in rows
        ``q * G .. q * G + G - 1``.
    """
    cfg, prompt, reward = config or RolloutConfig(), prompt or PromptConfig(), reward or RewardConfig()
    tok = policy.tokenizer
    env = Renderer(tok, prompt, cfg.max_info_tokens)
    gen = generator or make_generator(policy, cfg)
    prompts = [env.prompt_ids(q) for q in questions]
    rows = [Row(group=q, prompt=prompts[q]) for q in range(len(questions)) for _ in range(group_size)]
    too_long = [r for r in rows if r.length + 1 > cfg.max_total_tokens]  # no room for one sampled token
    for r in too_long:
        r.state, r.finish = State.DONE, "prompt_too_long"
    if too_long:
        log.warning("%d of %d questions not rolled out: their prompt fills rollout.max_total_tokens (%d); "
                    "they score 0 (finish reason prompt_too_long)", len(too_long) // group_size,
                    len(questions), cfg.max_total_tokens)
    for turn in range(cfg.max_turns):
        active = [r for r in rows if r.state is State.GENERATE]
        if not any_rank(bool(active)):  # every rank runs the same number of turns
            break
        budgets = [min(cfg.max_new_tokens, cfg.max_total_tokens - r.length) for r in active]
        outputs = gen([r.context() for r in active], budgets)
        for row, out in zip(active, outputs, strict=True):
            _on_turn(row, out, turn, cfg, env, tok)
        _run_searches([r for r in rows if r.state is State.SEARCH], retriever, turn, cfg, env)
    for r in rows:
        if r.state is not State.DONE:
            r.state, r.finish = State.DONE, r.finish or "max_turns"
    if hasattr(gen, "end_rollout"):  # the backend may drop what only this rollout needed (vLLM's KV pages)
        gen.end_rollout()
    return _assemble(rows, questions, golden_answers, reward, tok)


def _on_turn(row: Row, out: TurnOutput, turn: int, cfg: RolloutConfig, env: Renderer, tok: Any) -> None:
    """Handler of the GENERATE state: record the sampled turn and pick the next state."""
    row.turns += 1
    if out.ids:
        row.segments.append(Segment(out.ids, sampled=True, logprobs=out.logprobs))
    action = parse_action(tok.decode(out.ids))
    last = must_answer(turn, cfg.max_turns)
    if action.kind == "answer":
        row.state, row.finish = State.DONE, "answer"
    elif action.kind == "search" and not last:
        row.state, row.query = State.SEARCH, action.content
    elif action.kind == "search":
        row.state, row.finish = State.DONE, "search_on_last_turn"
    elif out.stop == "eos":
        row.state, row.finish = State.DONE, "eos"
    elif last:
        row.state, row.finish = State.DONE, "max_turns"
    else:
        _append_env(row, env.feedback(must_answer(turn + 1, cfg.max_turns)), cfg)
    if row.state is not State.DONE and row.length >= cfg.max_total_tokens:
        row.state, row.finish = State.DONE, "max_total_tokens"


def _run_searches(rows: list[Row], retriever: Retriever, turn: int, cfg: RolloutConfig, env: Renderer) -> None:
    """Handler of the SEARCH state: one batched retrieval for every pending query."""
    if not rows:
        return
    results = retriever.search([r.query or "" for r in rows], cfg.passages_per_search)
    if len(results) != len(rows):
        raise RuntimeError(f"retriever returned {len(results)} result lists for {len(rows)} queries")
    for row, passages in zip(rows, results, strict=True):
        row.query = None
        info = env.information(format_passages(passages), must_answer(turn + 1, cfg.max_turns))
        row.searches += _append_env(row, info, cfg)


def _append_env(row: Row, ids: list[int], cfg: RolloutConfig) -> bool:
    """Append environment tokens and resume generation; end the row if they do not fit."""
    if row.length + len(ids) >= cfg.max_total_tokens:
        row.state, row.finish = State.DONE, "max_total_tokens"
        return False
    row.segments.append(Segment(ids, sampled=False))
    row.state = State.GENERATE
    return True


def _assemble(rows: list[Row], questions: Sequence[str], golden: Sequence[Sequence[str]],
              reward: RewardConfig, tok: Any) -> Trajectory:
    answers, rewards = [], []
    for r in rows:
        response = tok.decode([t for s in r.segments for t in s.ids])
        answers.append(extract_answer(response))
        rewards.append(compute_reward(response, list(golden[r.group]), reward))
    return Trajectory.from_rows(
        [r.prompt for r in rows], [r.segments for r in rows], tok.pad_token_id,
        num_searches=[r.searches for r in rows], num_turns=[r.turns for r in rows],
        group_ids=[r.group for r in rows], rewards=rewards, answers=answers,
        finish_reasons=[r.finish for r in rows], questions=[questions[r.group] for r in rows],
        golden_answers=[list(golden[r.group]) for r in rows],
    )

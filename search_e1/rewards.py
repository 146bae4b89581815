"""Answer normalisation, exact match / F1, the format check and the outcome reward (pure).

`normalize_answer` is the ONE normalisation used by both the training reward and the evaluation
metric (`search_e1.metrics.QAMetric`): SQuAD's (lowercase, drop ASCII punctuation, drop the
articles a/an/the, collapse whitespace), so scores are comparable with torchmetrics' ``SQuAD`` and
with Search-R1's EM. Reward functions are picked by name from a registry (``em``, ``f1``); register
more with `register_reward`.

Departures from Search-R1 (and the paper):

- The answer is taken from the response only (`search_e1.protocol.extract_answer`), never from the
  prompt, and never from inside ``<information>`` blocks.
- Search-R1's EM reward is 0/1 with no format term; here too by default. An optional format term
  (``RewardConfig.format_weight``, off by default) adds a bonus for a well-formed response
  (`is_well_formed`); it is a shaping knob for small models, not part of the paper's recipe.
- F1 follows SQuAD's token-level F1 without FlashRAG's special cases for yes/no/noanswer.
"""

from __future__ import annotations

import math
import re
import string
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from search_e1.protocol import (
    ANSWER,
    INFORMATION,
    SEARCH,
    TAG_RE,
    extract_answer,
)
from search_e1.registry import Registry

Golden = str | Iterable[str]
RewardFn = Callable[[str | None, Golden], float]

_ARTICLES_RE = re.compile(r"\b(a|an|the)\b")
_PUNCT_TABLE = str.maketrans("", "", string.punctuation)


def normalize_answer(s: str) -> str:
    """SQuAD normalisation: lowercase, drop punctuation, drop articles, collapse whitespace.

    >>> normalize_answer("  The  Velna-River, (an old one)! ")
    'velnariver old one'
    >>> normalize_answer("THE the Theatre")
    'theatre'
    """
    s = s.lower().translate(_PUNCT_TABLE)
    s = _ARTICLES_RE.sub(" ", s)
    return " ".join(s.split())


def _golds(golden_answers: Golden) -> list[str]:
    """Gold answers as a list of strings; a single string is one answer (not its characters)."""
    if isinstance(golden_answers, str):
        return [golden_answers]
    return [str(g) for g in golden_answers]


def exact_match(prediction: str | None, golden_answers: Golden) -> float:
    """1.0 if the normalised prediction equals any normalised gold answer, else 0.0 (None: 0.0).

    >>> exact_match("An apple.", ["apple", "pear"])
    1.0
    >>> exact_match("apple pie", "apple")
    0.0
    >>> exact_match(None, ["apple"])
    0.0
    """
    if prediction is None:
        return 0.0
    pred = normalize_answer(prediction)
    return float(any(pred == normalize_answer(g) for g in _golds(golden_answers)))


def _token_f1(pred_tokens: list[str], gold_tokens: list[str]) -> float:
    if not pred_tokens or not gold_tokens:
        return float(pred_tokens == gold_tokens)  # both empty: 1.0, one empty: 0.0
    same = sum((Counter(pred_tokens) & Counter(gold_tokens)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred_tokens), same / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def f1_score(prediction: str | None, golden_answers: Golden) -> float:
    """SQuAD token-level F1 on normalised tokens, max over gold answers (None: 0.0).

    >>> round(f1_score("big red dog", ["red dog"]), 4)  # P = 2/3, R = 1 -> F1 = 0.8
    0.8
    >>> f1_score("the", ["a"])  # both normalise to empty
    1.0
    """
    if prediction is None:
        return 0.0
    pred = normalize_answer(prediction).split()
    return max(
        (_token_f1(pred, normalize_answer(g).split()) for g in _golds(golden_answers)), default=0.0
    )


# --- reward registry --------------------------------------------------------------------------

REWARDS: Registry[RewardFn] = Registry("reward")
"""Outcome reward functions ``(prediction, golden_answers) -> float`` by name."""
register_reward = REWARDS.register
get_reward_fn = REWARDS.get


register_reward("em")(exact_match)
register_reward("f1")(f1_score)


@dataclass
class RewardConfig:
    """Which outcome reward to use and the optional format term."""

    name: str = "em"
    """Registered outcome reward: ``em`` (Search-R1, 0/1) or ``f1``."""
    format_weight: float = 0.0
    """Bonus added when the response is well formed (`is_well_formed`); 0 disables it."""

    def __post_init__(self) -> None:
        if self.name not in REWARDS:
            raise ValueError(
                f"RewardConfig.name: unknown reward {self.name!r}; registered: {sorted(REWARDS)}"
            )
        if not math.isfinite(self.format_weight) or self.format_weight < 0:
            raise ValueError(
                f"RewardConfig.format_weight must be finite and >= 0, got {self.format_weight}"
            )


def _blocks(response: str) -> list[tuple[str, str]] | None:
    """The response as a flat list of ``(tag, content)`` blocks, or None if tags are unbalanced,
    nested, or closed without being opened. Text outside blocks is not returned."""
    blocks: list[tuple[str, str]] = []
    open_name: str | None = None
    open_end = 0
    for m in TAG_RE.finditer(response):
        closing, name = bool(m.group(1)), m.group(2)
        if open_name is None and not closing:
            open_name, open_end = name, m.end()
        elif open_name is not None and closing and name == open_name:
            blocks.append((name, response[open_end : m.start()]))
            open_name = None
        else:
            return None  # nested open, mismatched close, or stray close
    return None if open_name is not None else blocks


def is_well_formed(response: str) -> bool:
    """Whether a response follows the protocol. All of:

    1. Protocol tags (think, search, answer, information) form a flat sequence of blocks: every
       opening tag is closed by its own closing tag before any other tag (no nesting, no stray or
       mismatched closes, nothing left open).
    2. Every ``<search>`` block is immediately followed by an ``<information>`` block, and every
       ``<information>`` block immediately follows a ``<search>`` block.
    3. There is exactly one ``<answer>`` block and it is the last block.
    4. Search and answer contents are non-empty after stripping.

    Text outside blocks (whitespace, chat-template markers between turns) is not checked.

    >>> is_well_formed("<think> a </think><search> q </search><information> d </information>"
    ...                "<think> b </think><answer> x </answer>")
    True
    >>> is_well_formed("<search> q </search><answer> x </answer>")  # search without information
    False
    """
    blocks = _blocks(response)
    if not blocks or blocks[-1][0] != ANSWER or sum(b[0] == ANSWER for b in blocks) != 1:
        return False
    for i, (name, content) in enumerate(blocks):
        if name in (SEARCH, ANSWER) and not content.strip():
            return False
        if name == SEARCH and blocks[i + 1][0] != INFORMATION:
            return False
        if name == INFORMATION and (i == 0 or blocks[i - 1][0] != SEARCH):
            return False
    return True


def compute_reward(response: str, golden_answers: Golden, cfg: RewardConfig) -> float:
    """Outcome reward of a response: ``REWARDS[cfg.name](extract_answer(response), golden)`` plus
    ``cfg.format_weight`` if `is_well_formed`. Pass the response only, never the prompt.

    >>> compute_reward("<answer> The Velna </answer>", ["Velna"], RewardConfig())
    1.0
    >>> compute_reward("<answer> Velna </answer>", ["Velna"], RewardConfig(format_weight=0.5))
    1.5
    """
    outcome = get_reward_fn(cfg.name)(extract_answer(response), golden_answers)
    if cfg.format_weight:
        outcome += cfg.format_weight * float(is_well_formed(response))
    return outcome

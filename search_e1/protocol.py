"""The search-tag protocol: tags, action parsing, answer extraction and prompt rendering (pure).

A trajectory interleaves text written by the policy with text inserted by the environment::

    <think> ... </think> <search> query </search>
    <information> Doc 1 (Title: ...) ... </information>      <- environment
    <think> ... </think> <answer> final answer </answer>

`parse_action` reads the policy's latest turn and returns what it asked for (search, answer or an
invalid action); `extract_answer` reads a whole response and returns the final answer used by the
reward and the metrics; `PromptConfig` and `build_messages` render the chat messages of a question;
`information_text` renders retrieved passages for either information layout.

Departures from Search-R1 (and the paper):

- Search-R1 runs its answer regex over prompt + response, so the example ``<answer>`` written in its
  instruction can be taken as the model's answer. `extract_answer` is given the RESPONSE only, and it
  ignores everything inside ``<information>`` blocks (retrieved documents may contain ``<answer>``).
- Search-R1 takes the first ``<(search|answer)>(.*?)</\\1>`` regex match. `parse_action` is stricter:
  it reads only the text after the last ``</information>``, and a block whose content is empty or
  contains another protocol tag (nesting, mismatched close) is an invalid action with a reason.
- The information block can be rendered inline in the assistant response (Search-R1) or as its own
  user turn of the chat template (``info_format="turn"``, tool-style): the tiny SmolLM2-135M only
  follows the tags with few-shot chat turns in the turn layout (DESIGN section 4).
- The environment may tell the policy that its next turn is the last one (`must_answer`).

No torch here: everything is plain strings, testable in microseconds.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

THINK, SEARCH, ANSWER, INFORMATION = "think", "search", "answer", "information"
PROTOCOL_TAGS: tuple[str, ...] = (THINK, SEARCH, ANSWER, INFORMATION)
STOP_STRINGS: tuple[str, ...] = (f"</{SEARCH}>", f"</{ANSWER}>")
"""Generation stops at these: the environment acts after a search, the episode ends after an answer."""

# Tags are case-sensitive and exact: "<search>" is a tag, "<Search>" or "< search >" is plain text.
TAG_RE = re.compile(r"<(/?)(" + "|".join(PROTOCOL_TAGS) + r")>")
"""Any protocol tag; group 1 is ``/`` for a closing tag, group 2 the tag name."""
_INFO_OPEN, _INFO_CLOSE = f"<{INFORMATION}>", f"</{INFORMATION}>"
_ACTION_TAGS = (SEARCH, ANSWER)
_EMPTY_REASON = {SEARCH: "empty query", ANSWER: "empty answer"}
NO_BLOCK_REASON = "no complete <search> or <answer> block"

InfoFormat = Literal["inline", "turn"]
_INFO_FORMATS: tuple[str, ...] = ("inline", "turn")
_ROLES = ("system", "user", "assistant")


@dataclass(frozen=True)
class Action:
    """What the policy asked for in its latest turn."""

    kind: Literal["search", "answer", "invalid"]
    """``search`` (content = query), ``answer`` (content = answer) or ``invalid`` (content = reason)."""
    content: str
    """The stripped block content, or a short human-readable reason for an invalid action."""


@dataclass(frozen=True)
class _Tag:
    name: str
    closing: bool
    start: int
    end: int


def _tags(text: str) -> list[_Tag]:
    """All protocol tags of ``text`` in order of appearance."""
    return [_Tag(m.group(2), bool(m.group(1)), m.start(), m.end()) for m in TAG_RE.finditer(text)]


def _tag_str(tag: _Tag) -> str:
    return f"</{tag.name}>" if tag.closing else f"<{tag.name}>"


def _policy_tail(text: str) -> str:
    """The text after the last ``</information>``, cut at an unclosed ``<information>``.

    >>> _policy_tail("<search> a </search><information> <answer> x </answer> </information> b")
    ' b'
    >>> _policy_tail("b <information> <answer> x </answer>")
    'b '
    """
    tail = text.rpartition(_INFO_CLOSE)[2]
    return tail.partition(_INFO_OPEN)[0]


def parse_action(text: str) -> Action:
    """Parse the policy's latest action from ``text`` (a turn, or the response so far).

    Rules, in order:

    1. Only the text after the last ``</information>`` is read; an ``<information>`` opened after it
       and never closed hides everything from it on (environment text is never an action).
    2. The first opening ``<search>`` or ``<answer>`` tag starts the block (stray closing tags and
       ``<think>`` blocks before it are ignored). None: invalid, ``no complete <search> or <answer>
       block``.
    3. The next protocol tag after it must be its own closing tag. None: invalid (``unclosed
       <search>``); another opening tag: invalid (``nested <answer> inside <search>``); another
       closing tag: invalid (``mismatched </answer> closes <search>``).
    4. The content is stripped; empty content is invalid (``empty query`` / ``empty answer``).

    Later blocks are never read: the first one wins, valid or not. Tags are reserved words wherever
    they appear: a ``<search>`` written inside ``<think>`` opens a block (then ``</think>`` makes it
    a mismatched close), matching `search_e1.rewards.is_well_formed`, which forbids nesting.

    >>> parse_action("<think> need the date </think>\\n<search> Velna River length </search>")
    Action(kind='search', content='Velna River length')
    >>> parse_action("<answer> Lake Somerin </answer> <answer> other </answer>")
    Action(kind='answer', content='Lake Somerin')
    >>> parse_action("<search>  </search>")
    Action(kind='invalid', content='empty query')
    >>> parse_action("<search> a <answer> b </answer></search>")
    Action(kind='invalid', content='nested <answer> inside <search>')
    """
    tail = _policy_tail(text)
    tags = _tags(tail)
    first = next((i for i, t in enumerate(tags) if not t.closing and t.name in _ACTION_TAGS), None)
    if first is None:
        return Action("invalid", NO_BLOCK_REASON)
    open_tag = tags[first]
    if first + 1 == len(tags):
        return Action("invalid", f"unclosed <{open_tag.name}>")
    nxt = tags[first + 1]
    if not nxt.closing:
        return Action("invalid", f"nested {_tag_str(nxt)} inside <{open_tag.name}>")
    if nxt.name != open_tag.name:
        return Action("invalid", f"mismatched {_tag_str(nxt)} closes <{open_tag.name}>")
    content = tail[open_tag.end : nxt.start].strip()
    if not content:
        return Action("invalid", _EMPTY_REASON[open_tag.name])
    return Action(open_tag.name, content)  # type: ignore[arg-type]


def extract_answer(response_text: str) -> str | None:
    """The content of the last complete, non-empty ``<answer>`` block of a response, else None.

    Pass the RESPONSE only, never the prompt: an instruction that shows an example
    ``<answer> ... </answer>`` would otherwise be read as the model's answer (Search-R1's bug).
    Text inside ``<information> ... </information>`` (and after an unclosed ``<information>``) is
    ignored. A block counts when the tag right after ``<answer>`` is ``</answer>`` (no nested or
    mismatched tags) and its stripped content is non-empty.

    >>> extract_answer("<think> hm </think><answer> Velna River </answer>")
    'Velna River'
    >>> extract_answer("<information>Doc 1 <answer> fake </answer></information> no answer") is None
    True
    >>> extract_answer("<answer> first </answer> then <answer> second </answer> <answer> </answer>")
    'second'
    """
    tags = _tags(response_text)
    answer: str | None = None
    in_info = False
    for i, tag in enumerate(tags):
        if tag.name == INFORMATION:
            in_info = not tag.closing
            continue
        if in_info or tag.closing or tag.name != ANSWER or i + 1 == len(tags):
            continue
        nxt = tags[i + 1]
        if nxt.closing and nxt.name == ANSWER:
            content = response_text[tag.end : nxt.start].strip()
            if content:
                answer = content
    return answer


def must_answer(turn: int, max_turns: int) -> bool:
    """Whether generation turn ``turn`` (0-based) is the last allowed one: ``turn >= max_turns - 1``.

    The rollout appends `PromptConfig.final_turn_note` to the observation that precedes the last
    turn, and a search issued in the last turn is not executed: the trajectory ends without answer.

    >>> [must_answer(t, 3) for t in range(3)]
    [False, False, True]
    """
    if max_turns < 1 or turn < 0:
        raise ValueError(
            f"need max_turns >= 1 and turn >= 0, got turn={turn}, max_turns={max_turns}"
        )
    return turn >= max_turns - 1


ZERO_SHOT_INSTRUCTION = (
    "Answer the question below. Reason step by step inside <think> and </think>. "
    "When a fact is missing, look it up by writing <search> query </search>; the search results "
    "will be shown between <information> and </information>. You may search as many times as you "
    "need. When you know the answer, give it in a few words, without explanation, as "
    "<answer> answer </answer>, for example <answer> Lisbon </answer>.\n"
    "Question: {question}"
)
"""Search-R1-style zero-shot instruction (in our own words); ``{question}`` is replaced."""

FEW_SHOT_INSTRUCTION = (
    "Look facts up with <search> query </search>; results come back in <information>. "
    "End with <answer> short answer </answer>.\nQuestion: {question}"
)
"""Short instruction for small models; the worked examples of `few_shot_preset` carry the rest."""

INVALID_FEEDBACK = (
    "Invalid action. Write a search query inside the search tags, or the final answer inside the "
    "answer tags."
)
FINAL_TURN_NOTE = "This is your last turn: give the final answer now, inside the answer tags."
# Environment text never contains protocol tags: otherwise a response holding it would look as if
# the policy had searched or answered (PromptConfig refuses such text).


@dataclass
class PromptConfig:
    """How a question is rendered as chat messages and how the environment talks back."""

    instruction: str = ZERO_SHOT_INSTRUCTION
    """User-message template; must contain ``{question}`` (replaced literally, other braces kept)."""
    system: str | None = None
    """System message; None keeps the chat template's default."""
    few_shot: list[dict[str, str]] = field(default_factory=list)
    """Example chat turns (``{"role", "content"}``) placed before the question."""
    info_format: InfoFormat = "inline"
    """inline: <information> inside the assistant response (Search-R1); turn: its own user turn."""
    invalid_feedback: str = INVALID_FEEDBACK
    """Environment text inserted after an invalid action."""
    final_turn_note: str = FINAL_TURN_NOTE
    """Environment text telling the policy that its next turn is the last one and must answer."""
    preset: str | None = None
    """Named instruction + examples: zero_shot (Search-R1 style) or few_shot (two worked examples); None = the fields
    above."""

    def __post_init__(self) -> None:
        if self.preset is not None:
            self._apply_preset()
        if "{question}" not in self.instruction:
            raise ValueError("PromptConfig.instruction must contain the placeholder '{question}'")
        for name in ("invalid_feedback", "final_turn_note"):
            if TAG_RE.search(getattr(self, name)):
                raise ValueError(
                    f"PromptConfig.{name} must not contain protocol tags (<search>, <answer>, ...): "
                    "environment text would be read as the policy's own action"
                )
        if self.info_format not in _INFO_FORMATS:
            raise ValueError(
                f"PromptConfig.info_format must be one of {_INFO_FORMATS}, got {self.info_format!r}"
            )
        for i, turn in enumerate(self.few_shot):
            if not isinstance(turn, dict) or not {"role", "content"} <= set(turn):
                raise ValueError(
                    f"PromptConfig.few_shot[{i}] needs 'role' and 'content' keys: {turn!r}"
                )
            if turn["role"] not in _ROLES:
                raise ValueError(
                    f"PromptConfig.few_shot[{i}].role must be one of {_ROLES}, got {turn['role']!r}"
                )
            if not isinstance(turn["content"], str):
                raise ValueError(f"PromptConfig.few_shot[{i}].content must be a string")


    def _apply_preset(self) -> None:
        """Fill ``instruction`` and ``few_shot`` from the preset (rendered in this ``info_format``)."""
        if self.preset not in PRESETS:
            raise ValueError(f"PromptConfig.preset: unknown preset {self.preset!r}; choose one of {sorted(PRESETS)}")
        base = PRESETS[self.preset](self.info_format)
        if (self.instruction, self.few_shot) not in ((ZERO_SHOT_INSTRUCTION, []), (base.instruction, base.few_shot)):
            raise ValueError(f"PromptConfig: preset {self.preset!r} sets instruction and few_shot; give either a "
                             "preset or your own instruction / few_shot, not both")
        self.instruction, self.few_shot = base.instruction, base.few_shot


def render_instruction(question: str, cfg: PromptConfig) -> str:
    """The user message for ``question``: ``{question}`` replaced by str.replace, not str.format,
    so braces elsewhere in the template or in the question need no escaping.

    >>> render_instruction("What is {x}?", PromptConfig(instruction="Q: {question} {not a field}"))
    'Q: What is {x}? {not a field}'
    """
    return cfg.instruction.replace("{question}", question)


def build_messages(question: str, cfg: PromptConfig) -> list[dict[str, str]]:
    """System message (if set) + few-shot turns + the user message of ``question``.

    >>> build_messages("Who?", PromptConfig(instruction="Q: {question}", system="Be brief."))
    [{'role': 'system', 'content': 'Be brief.'}, {'role': 'user', 'content': 'Q: Who?'}]
    """
    messages = [] if cfg.system is None else [{"role": "system", "content": cfg.system}]
    messages += [{"role": t["role"], "content": t["content"]} for t in cfg.few_shot]
    messages.append({"role": "user", "content": render_instruction(question, cfg)})
    return messages


def _observation(body: str, cfg: PromptConfig, final_turn: bool) -> str:
    note = f"\n{cfg.final_turn_note}" if final_turn else ""
    if cfg.info_format == "inline":
        return f"\n\n{body}{note}\n\n"
    return body + note


def information_text(passages_text: str, cfg: PromptConfig, final_turn: bool = False) -> str:
    """Environment text for retrieved passages.

    inline: ``"\\n\\n<information>...</information>\\n\\n"`` appended to the response; turn:
    ``"<information>...</information>"``, which the rollout wraps in a user turn of the chat
    template. With ``final_turn`` the `PromptConfig.final_turn_note` follows the block on a new line.

    >>> information_text("Doc 1 (Title: A) a.", PromptConfig())
    '\\n\\n<information>Doc 1 (Title: A) a.</information>\\n\\n'
    >>> information_text("D", PromptConfig(info_format="turn", final_turn_note="Last turn."), True)
    '<information>D</information>\\nLast turn.'
    """
    return _observation(f"{_INFO_OPEN}{passages_text}{_INFO_CLOSE}", cfg, final_turn)


def feedback_text(cfg: PromptConfig, final_turn: bool = False) -> str:
    """Environment text after an invalid action, in the same layout as `information_text`.

    >>> feedback_text(PromptConfig(info_format="turn", invalid_feedback="Try again."))
    'Try again.'
    """
    return _observation(cfg.invalid_feedback, cfg, final_turn)


# --- few-shot preset: a made-up world of rivers and boats (disjoint from the demo world's people,
# cities and companies) ---------------------------------------------------------------------------

_EXAMPLES: list[tuple[str, list[tuple[str, str]], str]] = [
    # (question, [(assistant text ending in a search, passages shown for it)], final assistant text)
    (
        "On which river does the steamboat Grey Lantern carry passengers?",
        [
            (
                "<think> I need to find the steamboat Grey Lantern. </think>\n"
                "<search> Grey Lantern steamboat </search>",
                "Doc 1 (Title: Grey Lantern) Grey Lantern is a paddle steamboat that carries "
                "passengers along the Velna River.\nDoc 2 (Title: Lantern Reach) Lantern Reach is a "
                "bend of a canal known for its fog.",
            )
        ],
        "<think> Grey Lantern sails on the Velna River. </think>\n<answer> Velna River </answer>",
    ),
    (
        "Into which lake does the river used by the barge Copper Finch drain?",
        [
            (
                "<think> First I need the river of the barge Copper Finch. </think>\n"
                "<search> Copper Finch barge </search>",
                "Doc 1 (Title: Copper Finch) Copper Finch is a grain barge that travels on the "
                "Ardel River.",
            ),
            (
                "<think> The barge uses the Ardel River. Now I need where the Ardel drains. </think>\n"
                "<search> Ardel River drains into </search>",
                "Doc 1 (Title: Ardel River) The Ardel River is a slow river that drains into "
                "Lake Somerin.",
            ),
        ],
        "<think> The Ardel River drains into Lake Somerin. </think>\n<answer> Lake Somerin </answer>",
    ),
]


def _example_turns(cfg: PromptConfig) -> list[dict[str, str]]:
    """Render `_EXAMPLES` as chat turns in ``cfg.info_format``."""
    turns: list[dict[str, str]] = []
    for question, steps, final in _EXAMPLES:
        turns.append({"role": "user", "content": render_instruction(question, cfg)})
        if cfg.info_format == "turn":
            for searched, passages in steps:
                turns.append({"role": "assistant", "content": searched})
                turns.append({"role": "user", "content": information_text(passages, cfg)})
            turns.append({"role": "assistant", "content": final})
        else:
            text = "".join(s + information_text(p, cfg) for s, p in steps) + final
            turns.append({"role": "assistant", "content": text})
    return turns


def zero_shot_preset(info_format: InfoFormat = "inline") -> PromptConfig:
    """Search-R1-style instruction, no examples."""
    return PromptConfig(info_format=info_format)


def few_shot_preset(info_format: InfoFormat = "inline") -> PromptConfig:
    """Short instruction plus two worked examples (one single-hop, one two-hop) as chat turns.

    >>> cfg = few_shot_preset("turn")
    >>> [t["role"] for t in cfg.few_shot]
    ['user', 'assistant', 'user', 'assistant', 'user', 'assistant', 'user', 'assistant', 'user', 'assistant']
    """
    cfg = PromptConfig(instruction=FEW_SHOT_INSTRUCTION, info_format=info_format)
    cfg.few_shot = _example_turns(cfg)
    return cfg


PRESETS: dict[str, Callable[[InfoFormat], PromptConfig]] = {
    "zero_shot": zero_shot_preset,
    "few_shot": few_shot_preset,
}
"""Prompt presets by name; each takes the info_format."""


def get_prompt_preset(name: str, info_format: InfoFormat = "inline") -> PromptConfig:
    """The preset ``name`` (see `PRESETS`) rendered for ``info_format``.

    >>> get_prompt_preset("zero_shot").instruction == ZERO_SHOT_INSTRUCTION
    True
    """
    if name not in PRESETS:
        raise ValueError(f"unknown prompt preset {name!r}; choose one of {sorted(PRESETS)}")
    return PRESETS[name](info_format)

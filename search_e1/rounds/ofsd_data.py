"""The OFSD data set, as pure functions: what the teacher sees of a sibling (`render_sibling`),
which tokens are distilled (`query_token_mask`), the student/teacher example pairs
(`build_examples`), the RFT control's examples of the same selection (`rft_examples`), how the rows
got their sibling (`sibling_cases`) and the batches (`collate_examples`)."""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from search_e1.protocol import PromptConfig, build_messages, parse_action
from search_e1.registry import Registry
from search_e1.rollout import Trajectory
from search_e1.rollout.turn import left_pad

_INFO_RE = re.compile(r"<information>.*?</information>", re.DOTALL)
_QUERY_RE = re.compile(r"<search>(.*?)</search>", re.DOTALL)
ELIDED = "<information> [retrieved documents elided] </information>"


@dataclass
class DistillExample:
    """One trajectory to distil: the same response after the student and teacher prompts."""

    student_ids: list[int]
    teacher_ids: list[int]
    response_mask: list[float]  # 1 = sampled by the policy, over the response tokens only
    query_mask: list[float] | None = None  # 1 on the tokens of search queries, over the response tokens


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


SiblingView = Callable[[Trajectory, int, Any], str]
SIBLING_VIEWS: Registry[SiblingView] = Registry("teacher view")
"""``OFSDConfig.teacher_view`` -> ``(traj, i, tokenizer) -> str``: what the teacher sees of sibling ``i``."""


def _turns(traj: Trajectory, i: int, tokenizer: Any, information: Callable[[str], str]) -> str:
    """The sampled turns of row ``i`` verbatim, each information block as ``information`` renders it."""
    parts = []
    for sampled, ids in response_runs(traj, i):
        text = tokenizer.decode(ids, skip_special_tokens=sampled)
        parts += [text.strip()] if sampled else [information(m) for m in _INFO_RE.findall(text)]
    return "\n".join(p for p in parts if p)


@SIBLING_VIEWS.register("elided")
def _elided_view(traj: Trajectory, i: int, tokenizer: Any) -> str:
    return _turns(traj, i, tokenizer, lambda block: ELIDED)


@SIBLING_VIEWS.register("documents")
def _documents_view(traj: Trajectory, i: int, tokenizer: Any) -> str:
    return _turns(traj, i, tokenizer, lambda block: block)


@SIBLING_VIEWS.register("queries")
def _queries_view(traj: Trajectory, i: int, tokenizer: Any) -> str:
    actions = [parse_action(tokenizer.decode(ids, skip_special_tokens=True))
               for sampled, ids in response_runs(traj, i) if sampled]
    return "\n".join(f"<search> {a.content} </search>" for a in actions if a.kind == "search")


@SIBLING_VIEWS.register("answer")
def _answer_view(traj: Trajectory, i: int, tokenizer: Any) -> str:
    return f"<answer> {traj.answers[i]} </answer>" if traj.answers[i] is not None else ""


def render_sibling(traj: Trajectory, i: int, tokenizer: Any, view: str = "elided") -> str:
    """The sibling as shown to the teacher (`SIBLING_VIEWS`):

    * ``elided``: its own turns verbatim, each information block replaced by `ELIDED`;
    * ``documents``: its own turns and the information blocks verbatim;
    * ``queries``: only its search queries, one ``<search> query </search>`` per line;
    * ``answer``: only its final ``<answer> answer </answer>``.

    Other environment text (feedback, template glue) is never shown."""
    return SIBLING_VIEWS.get(view)(traj, i, tokenizer)


def query_token_mask(ids: list[int], tokenizer: Any) -> list[float]:
    """1.0 on the tokens of ``ids`` (one sampled turn) that overlap the text of a search query (the
    stripped text between ``<search>`` and ``</search>``); 0.0 elsewhere. Character offsets come from decoding
    token by token."""
    pieces = [tokenizer.decode([t]) for t in ids]
    ends = list(itertools.accumulate(len(p) for p in pieces))
    text = "".join(pieces)
    spans = [(m.start(1) + len(q) - len(q.lstrip()), m.end(1) - len(q) + len(q.rstrip()))  # the query, stripped
             for m in _QUERY_RE.finditer(text) for q in [m.group(1)]]
    return [1.0 if any(e - len(p) < hi and e > lo for lo, hi in spans) else 0.0
            for p, e in zip(pieces, ends, strict=True)]


TOKEN_SELECTIONS: Registry[Callable[[list[float], list[float]], list[float]]] = Registry("distilled-token selection")
"""``OFSDConfig.tokens`` -> ``(sampled_mask, query_mask) -> mask`` over a response: where the loss applies."""
TOKEN_SELECTIONS.register("all")(lambda sampled, queries: sampled)
TOKEN_SELECTIONS.register("queries")(lambda sampled, queries: [m * q for m, q in zip(sampled, queries, strict=True)])


def privileged_messages(question: str, sibling_text: str, prompt: PromptConfig, template: str) -> list[dict[str, str]]:
    """The student's chat messages with the sibling block appended to the last user message."""
    messages = build_messages(question, prompt)
    last = dict(messages[-1])
    last["content"] = last["content"] + "\n\n" + template.replace("{sibling}", sibling_text)
    return messages[:-1] + [last]


PRIVILEGED_TEMPLATE = (
    "For reference, here is a correct and efficient solution to this question found earlier:\n"
    "{sibling}\nNow solve the question yourself."
)
"""The privileged block appended to the teacher's last user message; ``{sibling}`` is the sibling."""


def build_examples(traj: Trajectory, siblings: torch.Tensor, tokenizer: Any, prompt: PromptConfig,
                   view: str = "elided", template: str = PRIVILEGED_TEMPLATE,
                   tokens: str = "all") -> list[DistillExample]:
    """Distillation examples for every row with a sibling (``siblings[i] >= 0``): the student sees the
    ordinary prompt, the teacher the prompt with ``template`` showing the sibling as ``view`` renders
    it (`SIBLING_VIEWS`); ``tokens`` (`TOKEN_SELECTIONS`) says which sampled tokens are distilled."""
    select = TOKEN_SELECTIONS.get(tokens)
    examples = []
    for i, j in enumerate(siblings.tolist()):
        if j < 0:
            continue
        start, end = int(traj.prompt_lengths[i]), int(traj.attention_mask[i].sum())
        response = traj.input_ids[i, start:end].tolist()
        sibling = render_sibling(traj, j, tokenizer, view)
        messages = privileged_messages(traj.questions[i], sibling, prompt, template)
        text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        teacher_prompt = list(tokenizer(text, add_special_tokens=False)["input_ids"])
        queries = _query_mask(traj, i, tokenizer)
        mask = select(traj.loss_mask[i, start:end].tolist(), queries)
        if not any(mask):  # e.g. only query tokens distilled and the trajectory searched nothing
            continue
        examples.append(DistillExample(
            student_ids=traj.input_ids[i, :end].tolist(), teacher_ids=teacher_prompt + response, response_mask=mask,
            query_mask=queries,
        ))
    return examples


def rft_examples(traj: Trajectory, siblings: torch.Tensor) -> list[DistillExample]:
    """Rejection-sampling fine-tuning data of the same selection: for every row with a sibling
    (``siblings[i] >= 0``) one example of the SIBLING's own trajectory (its ordinary prompt and
    response, loss on its sampled tokens), to be trained with supervised NLL; no teacher context."""
    examples = []
    for j in siblings.tolist():
        if j < 0:
            continue
        start, end = int(traj.prompt_lengths[j]), int(traj.attention_mask[j].sum())
        examples.append(DistillExample(student_ids=traj.input_ids[j, :end].tolist(), teacher_ids=[],
                                       response_mask=traj.loss_mask[j, start:end].tolist()))
    return examples


def sibling_cases(correct: torch.Tensor, siblings: torch.Tensor) -> dict[str, int]:
    """How the rows with a sibling got it (``correct``: ``[N]`` bool per row): ``cheaper`` (the row
    is correct and the sibling cheaper) or ``wrong_row`` (the row is wrong and the sibling correct)."""
    has = siblings >= 0  # [N]
    cheaper = int((correct.bool() & has).sum())
    return {"cheaper": cheaper, "wrong_row": int(has.sum()) - cheaper}


def _query_mask(traj: Trajectory, i: int, tokenizer: Any) -> list[float]:
    """`query_token_mask` over the response of row ``i`` (0 on environment tokens)."""
    out: list[float] = []
    for sampled, ids in response_runs(traj, i):
        out += query_token_mask(ids, tokenizer) if sampled else [0.0] * len(ids)
    return out


def collate_examples(examples: list[DistillExample], pad_id: int) -> dict[str, torch.Tensor]:
    """Left-pad both contexts so every response ends at the last column; the masks are aligned with
    the last ``R`` columns of both.  student/teacher ids [B, Ls]/[B, Lt], masks [B, R] (``query_mask``
    0 where an example has none; an example without a teacher context gets a one-pad teacher row)."""
    s_ids, s_mask = left_pad([e.student_ids for e in examples], pad_id)
    t_ids, t_mask = left_pad([e.teacher_ids or [pad_id] for e in examples], pad_id)
    r = max(len(e.response_mask) for e in examples)
    mask = torch.zeros(len(examples), r)  # [B, R]
    queries = torch.zeros(len(examples), r)  # [B, R]
    for b, e in enumerate(examples):
        mask[b, r - len(e.response_mask) :] = torch.tensor(e.response_mask)
        if e.query_mask is not None:
            queries[b, r - len(e.query_mask) :] = torch.tensor(e.query_mask)
    return {"student_ids": s_ids, "student_mask": s_mask, "teacher_ids": t_ids, "teacher_mask": t_mask,
            "response_mask": mask, "query_mask": queries}


def empty_reason(traj: Trajectory) -> str:
    """Why a round found no distillation example: no correct trajectory, or no cheaper one."""
    correct = traj.rewards >= 1.0  # [N]
    if not bool(correct.any()):
        return "no question had a correct trajectory"
    solved = len({int(g) for g, c in zip(traj.group_ids.tolist(), correct.tolist(), strict=True) if c})
    return (f"{solved} question(s) had a correct trajectory, but none was cheaper (fewer searches, then "
            "fewer tokens) than a sibling")

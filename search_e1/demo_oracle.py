"""Oracle demonstrations of the demo world's training questions, for the warm-up (`search_e1.rounds.warmup`).

Each training question gets one demonstration of the ideal search path, as chat messages that start
at the first assistant turn (the warm-up builds the prompt exactly as the rollout does)::

    {"id": "train_3", "question": "...", "golden_answers": [...], "messages": [
        {"role": "assistant", "content": "<search> NAME </search>"},
        {"role": "user", "content": "<information>Doc 1 (Title: NAME) ...</information>"},
        {"role": "assistant", "content": "<search> BRIDGE </search>"},          # two-hop only
        {"role": "user", "content": "<information>Doc 1 (Title: BRIDGE) ...</information>"},
        {"role": "assistant", "content": "<answer> ANSWER </answer>"}]}

NAME is the entity the question names (the title of its first supporting passage), BRIDGE the
entity named in that passage whose own passage holds the answer, ANSWER the first golden answer.
Each information turn shows the supporting passage alone, rendered as the rollout renders retrieved
passages (`format_passages`, `information_text` with ``info_format="turn"``), not the retriever's
top-k and without the final-turn note. Only the training split is used: val and test questions
never appear.
"""

from __future__ import annotations

from typing import Any

from search_e1.protocol import TAG_RE, PromptConfig, information_text
from search_e1.retrieval.base import Passage, format_passages

_TURN = PromptConfig(info_format="turn")


def oracle_demonstrations(passages: list[dict[str, str]], questions: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One demonstration per question of ``questions`` (FlashRAG lines with ``metadata.supporting_ids``),
    over the corpus lines ``passages`` (ids ``"0".."N-1"`` in order)."""
    out = []
    for q in questions:
        messages: list[dict[str, str]] = []
        for pid in q["metadata"]["supporting_ids"]:
            line = passages[int(pid)]
            passage = Passage.from_contents(line["id"], line["contents"])
            if TAG_RE.search(passage.contents):  # the environment's text never carries protocol tags
                raise ValueError(f"passage {pid} contains a protocol tag: {passage.contents!r:.80}")
            messages.append({"role": "assistant", "content": f"<search> {passage.title} </search>"})
            messages.append({"role": "user", "content": information_text(format_passages([passage]), _TURN)})
        messages.append({"role": "assistant", "content": f"<answer> {q['golden_answers'][0]} </answer>"})
        out.append({"id": q["id"], "question": q["question"], "golden_answers": q["golden_answers"],
                    "messages": messages})
    return out

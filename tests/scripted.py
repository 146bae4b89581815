"""Test backends: a tiny model's real logits, with sampling forced to scripted texts.

`ScriptedTurns` draws, for each row of each generate call, one of ``texts`` and forces the model
to emit exactly it. The recorded log-probs are the model's own (from the raw logits), so every
training computation is exercised for real, while rewards, searches and siblings are controlled.
"""

from __future__ import annotations

import torch
from transformers import LogitsProcessor, LogitsProcessorList

from search_e1.retrieval.base import Passage
from search_e1.rollout import HFTurnGenerator

TEXTS = ("<answer> Talmor </answer>", "<answer> Bexley </answer>", "<search> where </search>")
GOLD = "Talmor"


class ForceOneOf(LogitsProcessor):
    def __init__(self, choices: list[list[int]], generator: torch.Generator) -> None:
        self.choices, self.generator, self.start, self.last, self.plan = choices, generator, None, None, None

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if self.start is None or input_ids.shape[1] <= self.last:  # a new generate call
            self.start = input_ids.shape[1]
            self.plan = torch.randint(len(self.choices), (input_ids.shape[0],), generator=self.generator)
        self.last = input_ids.shape[1]
        step = input_ids.shape[1] - self.start
        forced = torch.full_like(scores, float("-inf"))
        for b in range(input_ids.shape[0]):
            target = self.choices[int(self.plan[b])]
            forced[b, target[min(step, len(target) - 1)]] = 0.0
        return forced


class ScriptedTurns:
    def __init__(self, policy, cfg, texts=TEXTS, seed: int = 0) -> None:
        tok = policy.tokenizer
        self.choices = [tok(t, add_special_tokens=False)["input_ids"] for t in texts]
        self.inner = HFTurnGenerator(policy.model, tok, policy.eos_token_ids, temperature=cfg.temperature,
                                     batch_size=cfg.generation_batch_size)
        self.generator = torch.Generator().manual_seed(seed)

    def __call__(self, contexts, max_new_tokens):
        proc = ForceOneOf(self.choices, self.generator)
        self.inner.generate_kwargs = {"logits_processor": LogitsProcessorList([proc])}
        return self.inner(contexts, max_new_tokens)


def scripted_factory(policy, cfg):
    return ScriptedTurns(policy, cfg, seed=int(torch.initial_seed()) % 2**31)


class EchoRetriever:
    """One passage per query, title = query."""

    def search(self, queries, topk):
        return [[Passage(str(i), q, f"{q} is near Talmor.") for i in range(topk)] for q in queries]


def write_qa(path, n: int, prefix: str) -> str:
    import json

    with open(path, "w") as f:
        for i in range(n):
            f.write(json.dumps({"id": f"{prefix}{i}", "question": f"Where is item {prefix}{i}?",
                                "golden_answers": [GOLD]}) + "\n")
    return str(path)


def write_demonstrations(path, n: int, prefix: str) -> str:
    """Oracle demonstrations (shape: question + messages from the first assistant turn) of the
    `write_qa` questions, in EchoRetriever's passage format."""
    import json

    with open(path, "w") as f:
        for i in range(n):
            item = f"item {prefix}{i}"
            messages = [
                {"role": "assistant", "content": f"<search> {item} </search>"},
                {"role": "user", "content": f"<information>Doc 1 (Title: {item}) {item} is near {GOLD}.</information>"},
                {"role": "assistant", "content": f"<answer> {GOLD} </answer>"},
            ]
            f.write(json.dumps({"id": f"{prefix}{i}", "question": f"Where is {item}?", "messages": messages}) + "\n")
    return str(path)

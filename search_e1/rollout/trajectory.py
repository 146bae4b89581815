"""`Trajectory`: a batch of finished multi-turn rollouts, in one padded layout.

Each row is ``prompt + response`` where the response interleaves tokens the policy sampled with
tokens the environment inserted (``<information>`` blocks, invalid-action feedback, chat-template
glue around an information turn). Rows are right-padded to a common length ``L``; the ``G``
samples of one question are contiguous and share a ``group_ids`` value.

The loss mask has ONE meaning everywhere in search-e1: 1 = the token was sampled by the policy,
0 = everything else (prompt, inserted information, feedback, template glue, padding). It is built
here, in `Trajectory.from_rows`, and nowhere else.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from search_e1.algos import mixed_group_fraction
from search_e1.rewards import exact_match


@dataclass
class Segment:
    """A run of tokens appended to a row by one actor (policy or environment)."""

    ids: list[int]
    """Token ids, exactly as sampled or as the environment tokenised its text."""
    sampled: bool
    """True when the policy sampled these tokens (loss mask 1)."""
    logprobs: list[float] | None = None
    """Sampling log-probs, one per id (policy segments only)."""


@dataclass
class Trajectory:
    """A batch of ``N`` rollouts (``N`` = questions x samples per question).

    Shapes: ``N`` rows, ``L`` = longest row. Tensors live on the device they were built on
    (CPU by default); `to` moves them.
    """

    input_ids: Tensor  # [N, L] long: prompt + response, right-padded with the pad token
    attention_mask: Tensor  # [N, L] long: 1 on real tokens, 0 on padding
    loss_mask: Tensor  # [N, L] float: 1 = sampled by the policy, 0 = prompt/env/padding
    logprobs: Tensor  # [N, L] float: sampling log-prob of token t at column t; 0 where loss_mask 0
    prompt_lengths: Tensor  # [N] long: number of prompt tokens at the start of each row
    num_searches: Tensor  # [N] long: searches whose information block was inserted
    num_turns: Tensor  # [N] long: generation turns used
    rewards: Tensor  # [N] float
    group_ids: Tensor  # [N] long: index of the question within the batch
    answers: list[str | None] = field(default_factory=list)  # [N] extracted answer per row
    finish_reasons: list[str] = field(default_factory=list)  # [N] answer | eos | max_turns | ...
    questions: list[str] = field(default_factory=list)  # [N] question text per row
    golden_answers: list[list[str]] = field(default_factory=list)  # [N] gold answers per row

    _TENSORS = (
        "input_ids", "attention_mask", "loss_mask", "logprobs", "prompt_lengths",
        "num_searches", "num_turns", "rewards", "group_ids",
    )

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    @property
    def response_lengths(self) -> Tensor:
        """Tokens sampled by the policy per row.  # [N]"""
        return self.loss_mask.sum(-1).long()

    def to(self, device: torch.device | str) -> Trajectory:
        moved = {n: getattr(self, n).to(device) for n in self._TENSORS}
        rest = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in moved}
        return Trajectory(**moved, **rest)

    def select(self, index: Sequence[int] | Tensor) -> Trajectory:
        """Rows ``index`` as a new batch (columns kept; use `trim` to drop all-padding columns)."""
        idx = torch.as_tensor(index, dtype=torch.long)
        picked = {n: getattr(self, n)[idx.to(getattr(self, n).device)] for n in self._TENSORS}
        lists = {
            name: [getattr(self, name)[i] for i in idx.tolist()]
            for name in ("answers", "finish_reasons", "questions", "golden_answers")
        }
        return Trajectory(**picked, **lists)

    def trim(self) -> Trajectory:
        """Drop trailing columns that are padding in every row."""
        length = int(self.attention_mask.sum(-1).max().item()) if len(self) else 0
        out = self.to(self.input_ids.device)
        for name in ("input_ids", "attention_mask", "loss_mask", "logprobs"):
            setattr(out, name, getattr(out, name)[:, :length])
        return out

    def response_text(self, i: int, tokenizer: Any) -> str:
        """Decoded response of row ``i`` (everything after the prompt, special tokens kept)."""
        start, end = int(self.prompt_lengths[i]), int(self.attention_mask[i].sum())
        return tokenizer.decode(self.input_ids[i, start:end].tolist(), skip_special_tokens=False)

    def to_records(self, tokenizer: Any | None = None, **columns: Sequence[Any]) -> list[dict[str, Any]]:
        """One JSON-serialisable dict per row (token ids, mask, log-probs, stats, text), plus one
        field per extra ``columns`` entry (a value per row)."""
        for name, values in columns.items():
            if len(values) != len(self):
                raise ValueError(f"column {name!r} has {len(values)} values for {len(self)} rows")
        records = []
        for i in range(len(self)):
            n = int(self.attention_mask[i].sum())
            rec: dict[str, Any] = {
                "group_id": int(self.group_ids[i]), "question": self.questions[i],
                "golden_answers": self.golden_answers[i], "answer": self.answers[i],
                "reward": float(self.rewards[i]), "num_searches": int(self.num_searches[i]),
                "num_turns": int(self.num_turns[i]), "finish_reason": self.finish_reasons[i],
                "prompt_length": int(self.prompt_lengths[i]),
                "input_ids": self.input_ids[i, :n].tolist(),
                "loss_mask": self.loss_mask[i, :n].long().tolist(),
                "logprobs": [round(x, 6) for x in self.logprobs[i, :n].tolist()],
            }
            if tokenizer is not None:
                rec["response"] = self.response_text(i, tokenizer)
            rec.update({name: values[i] for name, values in columns.items()})
            records.append(rec)
        return records

    def save_jsonl(self, path: str | Path, tokenizer: Any | None = None, **columns: Sequence[Any]) -> Path:
        """Write `to_records` as JSON lines (a data set anyone can open)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w", encoding="utf-8") as f:
            for rec in self.to_records(tokenizer, **columns):
                f.write(json.dumps(rec, ensure_ascii=False) + "\n")
        return path

    @classmethod
    def from_records(cls, records: Sequence[dict[str, Any]], pad_id: int) -> Trajectory:
        """The rows of `to_records` dicts (e.g. the lines of an OFSD round's ``trajectories.jsonl``)
        back as a batch, right-padded with ``pad_id``; log-probs are those rounded to 6 decimals."""
        length = max((len(r["input_ids"]) for r in records), default=0)

        def padded(key: str, value: float, dtype: torch.dtype) -> Tensor:
            return torch.tensor([r[key] + [value] * (length - len(r[key])) for r in records], dtype=dtype)

        return cls(
            input_ids=padded("input_ids", pad_id, torch.long),
            attention_mask=torch.tensor([[1] * len(r["input_ids"]) + [0] * (length - len(r["input_ids"]))
                                         for r in records], dtype=torch.long),
            loss_mask=padded("loss_mask", 0, torch.float), logprobs=padded("logprobs", 0.0, torch.float),
            **{name: torch.tensor([r[key] for r in records], dtype=dtype) for name, key, dtype in (
                ("prompt_lengths", "prompt_length", torch.long), ("num_searches", "num_searches", torch.long),
                ("num_turns", "num_turns", torch.long), ("rewards", "reward", torch.float),
                ("group_ids", "group_id", torch.long))},
            answers=[r["answer"] for r in records], finish_reasons=[r["finish_reason"] for r in records],
            questions=[r["question"] for r in records], golden_answers=[r["golden_answers"] for r in records],
        )

    @classmethod
    def concat(cls, parts: Sequence[Trajectory], pad_id: int) -> Trajectory:
        """Rows of several batches in one (e.g. gathered from ranks); group ids are offset so
        that groups stay distinct."""
        length = max(p.input_ids.shape[1] for p in parts)
        pad_value = {"input_ids": pad_id}
        columns: dict[str, Any] = {}
        for name in ("input_ids", "attention_mask", "loss_mask", "logprobs"):
            columns[name] = torch.cat([
                torch.nn.functional.pad(getattr(p, name), (0, length - p.input_ids.shape[1]),
                                        value=pad_value.get(name, 0))
                for p in parts])
        offsets, total = [], 0
        for p in parts:
            offsets.append(total)
            total += int(p.group_ids.max()) + 1 if len(p) else 0
        columns["group_ids"] = torch.cat([p.group_ids + o for p, o in zip(parts, offsets, strict=True)])
        for name in ("prompt_lengths", "num_searches", "num_turns", "rewards"):
            columns[name] = torch.cat([getattr(p, name) for p in parts])
        for name in ("answers", "finish_reasons", "questions", "golden_answers"):
            columns[name] = [x for p in parts for x in getattr(p, name)]
        return cls(**columns)

    @classmethod
    def from_rows(
        cls, prompts: Sequence[Sequence[int]], segments: Sequence[Sequence[Segment]], pad_id: int,
        **per_row: Any,
    ) -> Trajectory:
        """Assemble padded tensors from per-row prompts and response segments.

        ``per_row`` holds the remaining fields: tensors-to-be as lists (``num_searches``,
        ``num_turns``, ``rewards``, ``group_ids``) and the list fields.
        """
        rows = []
        for prompt, segs in zip(prompts, segments, strict=True):
            ids, mask, lps = list(prompt), [0.0] * len(prompt), [0.0] * len(prompt)
            for seg in segs:
                ids += seg.ids
                mask += [1.0 if seg.sampled else 0.0] * len(seg.ids)
                seg_lp = seg.logprobs if seg.sampled and seg.logprobs is not None else None
                if seg.sampled and (seg_lp is None or len(seg_lp) != len(seg.ids)):
                    raise ValueError("a sampled segment needs one log-prob per token")
                lps += list(seg_lp) if seg_lp is not None else [0.0] * len(seg.ids)
            rows.append((ids, mask, lps))
        n, length = len(rows), max((len(r[0]) for r in rows), default=0)
        input_ids = torch.full((n, length), pad_id, dtype=torch.long)  # [N, L]
        attention = torch.zeros((n, length), dtype=torch.long)  # [N, L]
        loss_mask = torch.zeros((n, length), dtype=torch.float32)  # [N, L]
        logprobs = torch.zeros((n, length), dtype=torch.float32)  # [N, L]
        for i, (ids, mask, lps) in enumerate(rows):
            input_ids[i, : len(ids)] = torch.tensor(ids, dtype=torch.long)
            attention[i, : len(ids)] = 1
            loss_mask[i, : len(ids)] = torch.tensor(mask)
            logprobs[i, : len(ids)] = torch.tensor(lps)
        as_long = {k: torch.tensor(per_row.pop(k), dtype=torch.long)
                   for k in ("num_searches", "num_turns", "group_ids")}
        rewards = torch.tensor(per_row.pop("rewards"), dtype=torch.float32)
        return cls(
            input_ids=input_ids, attention_mask=attention, loss_mask=loss_mask, logprobs=logprobs,
            prompt_lengths=torch.tensor([len(p) for p in prompts], dtype=torch.long),
            rewards=rewards, **as_long, **per_row,
        )


def rollout_stats(traj: Trajectory) -> dict[str, float]:
    """Scalars describing a batch of trajectories (rewards, EM, searches, lengths)."""
    em = [exact_match(a, g) for a, g in zip(traj.answers, traj.golden_answers, strict=True)]
    return {
        "reward_mean": float(traj.rewards.mean()),
        "em": sum(em) / max(len(em), 1),
        "mixed_group_frac": mixed_group_fraction(traj.rewards, traj.group_ids),
        "searches_mean": float(traj.num_searches.float().mean()),
        "response_length": float(traj.response_lengths.float().mean()),
        "answered_frac": sum(a is not None for a in traj.answers) / max(len(traj), 1),
    }

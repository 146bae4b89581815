#!/usr/bin/env python
"""What does the privileged teacher want to do first? A probe of an OFSD round's data set.

For every distilled row of an OFSD round (``<run>/ofsd/round_<r>/trajectories.jsonl``: the rows with
a sibling), the probability that the response opens with ``<answer>`` and with ``<search>`` under

* the student prompt (the ordinary question), and
* the teacher prompt (the question plus the privileged block showing the sibling as ``--views``
  renders it, `search_e1.rounds.ofsd_data.SIBLING_VIEWS`),

with the policy the round started from (``--policy``: a checkpoint directory) at the rollout
temperature. Forward KL at the first response position moves the student's choice between
searching and answering toward the teacher's; a teacher that answers at once where the student
searches teaches the student not to search. Prints a table and writes ``--out`` (JSON).

Run::

    python bin/probe_first_action.py --policy runs/x/checkpoints/round_1 \\
        --data runs/x/ofsd/round_2/trajectories.jsonl --views elided,queries
"""

from __future__ import annotations

import os

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TAGS = ("<answer>", "<search>")


def tag_probability(model: Any, prefix: list[int], tag: list[int], temperature: float) -> float:
    """P(the next tokens are ``tag`` | ``prefix``) at ``temperature`` (teacher-forced)."""
    ids = torch.tensor([prefix + tag])  # [1, P + K]
    logits = model(ids).logits[0, len(prefix) - 1 : -1].float() / temperature  # [K, V]
    return float(torch.log_softmax(logits, -1).gather(-1, torch.tensor(tag)[:, None]).sum().exp())


def probe(model: Any, tokenizer: Any, records: list[dict[str, Any]], prompt: Any, template: str, view: str,
          temperature: float) -> list[dict[str, Any]]:
    """Per distilled row: P(first tag) under the student and the teacher prompt."""
    from search_e1.rollout import Trajectory
    from search_e1.rounds.ofsd_data import build_examples

    traj = Trajectory.from_records(records, tokenizer.pad_token_id)
    siblings = torch.tensor([r["sibling"] for r in records])
    rows = [i for i, s in enumerate(siblings.tolist()) if s >= 0]
    examples = build_examples(traj, siblings, tokenizer, prompt, view, template)
    tags = {t: tokenizer(t, add_special_tokens=False)["input_ids"] for t in TAGS}
    out = []
    with torch.no_grad():
        for i, ex in zip(rows, examples, strict=True):
            r = len(ex.response_mask)
            student, teacher = ex.student_ids[: len(ex.student_ids) - r], ex.teacher_ids[: len(ex.teacher_ids) - r]
            row = {"row": i, "reward": records[i]["reward"], "searches": records[i]["num_searches"]}
            for who, prefix in (("student", student), ("teacher", teacher)):
                for t, ids in tags.items():
                    row[f"{who} {t}"] = tag_probability(model, prefix, ids, temperature)
            out.append(row)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--policy", required=True, help="checkpoint directory of the policy the round started from")
    ap.add_argument("--data", required=True, help="an OFSD round's trajectories.jsonl")
    ap.add_argument("--config", default=str(ROOT / "conf" / "quickstart.yaml"), help="the run's prompt and OFSD")
    ap.add_argument("--views", default="elided", help="comma-separated teacher views")
    ap.add_argument("--out", default="probe_first_action.json")
    args = ap.parse_args()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from search_e1.cli import fit_parser

    parser = fit_parser()
    cfg = parser.instantiate(parser.parse_args(["--config", args.config]))  # the config groups as objects
    tokenizer = AutoTokenizer.from_pretrained(args.policy)
    model = AutoModelForCausalLM.from_pretrained(args.policy, dtype=torch.float32).eval()
    records = [json.loads(line) for line in Path(args.data).open()]
    result: dict[str, Any] = {"policy": args.policy, "data": args.data, "temperature": cfg.rollout.temperature}
    print(f"| view | rows | student {TAGS[0]} | student {TAGS[1]} | teacher {TAGS[0]} | teacher {TAGS[1]} |")  # noqa: T201
    print("|---|---|---|---|---|---|")  # noqa: T201
    for view in args.views.split(","):
        rows = probe(model, tokenizer, records, cfg.prompt, cfg.ofsd.privileged_template, view, cfg.rollout.temperature)
        if not rows:
            raise SystemExit(f"{args.data}: no row has a sibling (the round distilled nothing)")
        means = {k: statistics.fmean(r[k] for r in rows) for k in rows[0] if k.startswith(("student", "teacher"))}
        result[view] = {"rows": rows, "mean": means}
        print(f"| {view} | {len(rows)} | " + " | ".join(f"{v:.3f}" for v in means.values()) + " |")  # noqa: T201
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()

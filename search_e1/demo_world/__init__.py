"""Deterministic generator of a fictional world: a wiki-18 style corpus and single/two-hop QA sets.

The world has countries, rivers, cities, organisations and people with made-up, pronounceable
names (no name word is a substring of another, case-insensitive), attributes (years, occupations)
and relations (born in, mentored by, worked for, founded, headquartered in, lies on, capital of).
Every entity gets one passage whose title is its name and whose text opens with that name.
Questions name their first entity exactly; a single-hop answer sits in that entity's own passage,
a two-hop answer in the passage of the bridge entity named there (and never in the first passage).

How it departs from Search-R1: Search-R1 trains on NQ + HotpotQA over wiki-18, whose answers are
in any LLM's memory, so a small demo could not tell searching from remembering; here every fact is
invented, so a correct answer needs retrieval. The file formats are Search-R1's (corpus) and
FlashRAG's (QA), so the same code paths read the real data.

Scale: ``size`` people, size/4 organisations, size/5 cities, size/25 countries and twice as many
rivers (~1.57 * size passages); 2 * size questions, half single-hop (14 types, `_SINGLE`) and half
two-hop (12 types, `_TWO`), drawn round-robin over types, split 80/10/10 within each hop count.
Same ``(seed, size)`` gives byte-identical files: one ``random.Random(seed)`` drives everything.
With all-MiniLM-L6-v2 the supporting passage of every single-hop question is in the top 3
(measured recall@3 = 1.00 at sizes 200 and 2000).

`write_world` also writes ``demonstrations.jsonl``: one oracle demonstration per TRAINING question
(search the entity the question names, for two-hop questions then the bridge entity, answer from
the passage), the chat-message file that ``warmup.demonstrations`` reads (`search_e1.demo_oracle`).

A held-out world (`write_heldout_world`) is evaluation-only: another seed, every question in one
file ``eval.jsonl`` (half single-hop, half two-hop), no training split and no demonstrations, and
no name word shared with a given training corpus (nor contained in one of its words, nor
containing one), so a policy evaluated on it can only score by searching and reading, never by
remembering the training world.

The package: ``entities`` makes the names, entities and passage texts (the facts); this module
turns them into questions, splits and the files.

Run::

    python -m search_e1.demo_world --out demo/world --size 200 --seed 0
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import random
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from search_e1.demo_world.entities import (
    _Country,
    _Entities,
    _make_geography,
    _make_orgs,
    _make_people,
    _Names,
    _passages,
    _River,
)

__all__ = ["EVAL_SPLIT", "SPLITS", "World", "corpus_title_words", "generate_world", "write_heldout_world",
           "write_world"]

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
EVAL_SPLIT = "eval"
"""The one split of a held-out (evaluation-only) world."""
MIN_SIZE = 10
_MIN_PER_SPLIT = 2  # per hop count, so every split has at least 4 questions


class _Question(NamedTuple):
    type: str
    question: str
    answers: list[str]
    support: list[tuple[str, int]]  # (kind, index) of each supporting entity, in hop order


def _river_answers(r: _River) -> list[str]:
    return [r.name, r.name.removesuffix(" River")]


def _country_answers(k: _Country) -> list[str]:
    return [k.name, f"{k.form} of {k.name}"]


def _opt(kind: str, i: int | None) -> tuple[str, int] | None:
    return None if i is None else (kind, i)


_Answers = Callable[[_Entities, Any], "list[str] | None"]

# single-hop type -> (entity kind, question template, answers; None when the entity lacks it)
_SINGLE: dict[str, tuple[str, str, _Answers]] = {
    "birth_city": ("person", "In which city was {} born?",
                   lambda e, p: [e.cities[p.birth_city].name]),
    "birth_year": ("person", "In what year was {} born?", lambda e, p: [str(p.birth_year)]),
    "occupation": ("person", "What was the occupation of {}?", lambda e, p: [p.occupation]),
    "mentor": ("person", "Who was the mentor of {}?",
               lambda e, p: None if p.mentor is None else [e.people[p.mentor].name]),
    "employer": ("person", "Which organisation did {} work for?",
                 lambda e, p: None if p.employer is None else [e.orgs[p.employer].name]),
    "founder": ("org", "Who founded {}?", lambda e, o: [e.people[o.founder].name]),
    "org_founded_year": ("org", "In what year was {} founded?",
                         lambda e, o: [str(o.founded_year)]),
    "headquarters": ("org", "In which city is {} headquartered?",
                     lambda e, o: [e.cities[o.hq].name]),
    "city_country": ("city", "In which country is the city of {}?",
                     lambda e, c: _country_answers(e.countries[c.country])),
    "city_founded_year": ("city", "In what year was the city of {} founded?",
                          lambda e, c: [str(c.founded_year)]),
    "city_river": ("city", "On which river does {} lie?",
                   lambda e, c: None if c.river is None else _river_answers(e.rivers[c.river])),
    "capital": ("country", "What is the capital of {}?", lambda e, k: [e.cities[k.capital].name]),
    "country_founded_year": ("country", "In what year was {} established?",
                             lambda e, k: [str(k.founded_year)]),
    "river_country": ("river", "In which country does the {} flow?",
                      lambda e, r: _country_answers(e.countries[r.country])),
}

# two-hop type -> (first entity kind, question template, bridge entity of the first one (named in
# its passage), single-hop type whose answer about the bridge entity is the answer). The bridge's
# passage must not name the first entity (else one search would reach the answer).
_TWO: dict[str, tuple[str, str, Callable[[Any], tuple[str, int] | None], str]] = {
    "birth_country": ("person", "In which country was {} born?",
                      lambda p: ("city", p.birth_city), "city_country"),
    "birth_city_river": ("person", "On which river lies the city where {} was born?",
                         lambda p: ("city", p.birth_city), "city_river"),
    "mentor_birth_city": ("person", "In which city was the mentor of {} born?",
                          lambda p: _opt("person", p.mentor), "birth_city"),
    "mentor_birth_year": ("person", "In what year was the mentor of {} born?",
                          lambda p: _opt("person", p.mentor), "birth_year"),
    "mentor_occupation": ("person", "What was the occupation of the mentor of {}?",
                          lambda p: _opt("person", p.mentor), "occupation"),
    "employer_founder": ("person", "Who founded the organisation that {} worked for?",
                         lambda p: _opt("org", p.employer), "founder"),
    "employer_hq": ("person", "In which city was the employer of {} headquartered?",
                    lambda p: _opt("org", p.employer), "headquarters"),
    "employer_founded_year": ("person", "In what year was the employer of {} founded?",
                              lambda p: _opt("org", p.employer), "org_founded_year"),
    "founder_birth_city": ("org", "In which city was the founder of {} born?",
                           lambda o: ("person", o.founder), "birth_city"),
    "founder_birth_year": ("org", "In what year was the founder of {} born?",
                           lambda o: ("person", o.founder), "birth_year"),
    "founder_occupation": ("org", "What was the occupation of the founder of {}?",
                           lambda o: ("person", o.founder), "occupation"),
    "hq_country": ("org", "In which country is {} headquartered?",
                   lambda o: ("city", o.hq), "city_country"),
}


def _single_hop(e: _Entities) -> dict[str, list[_Question]]:
    out: dict[str, list[_Question]] = {}
    for t, (kind, template, answers) in _SINGLE.items():
        for i, entity in enumerate(e.of_kind(kind)):
            ans = answers(e, entity)
            if ans:
                out.setdefault(t, []).append(
                    _Question(t, template.format(entity.name), ans, [(kind, i)]))
    return out


def _two_hop(e: _Entities, texts: dict[tuple[str, int], str]) -> dict[str, list[_Question]]:
    out: dict[str, list[_Question]] = {}
    for t, (kind, template, bridge_of, attribute) in _TWO.items():
        bridge_kind, _, answers = _SINGLE[attribute]
        for i, entity in enumerate(e.of_kind(kind)):
            bridge = bridge_of(entity)
            if bridge is None:
                continue
            assert bridge[0] == bridge_kind, (t, bridge)
            ans = answers(e, e.of_kind(bridge_kind)[bridge[1]])
            # neither the first passage alone, nor the second one found by the first's name
            if ans and ans[0] not in texts[(kind, i)] and entity.name not in texts[bridge]:
                out.setdefault(t, []).append(
                    _Question(t, template.format(entity.name), ans, [(kind, i), bridge]))
    return out


def _balanced(rng: random.Random, by_type: dict[str, list[_Question]], n: int) -> list[_Question]:
    """Draw ``n`` questions round-robin over types, so rare types are not drowned by person ones."""
    pools = [rng.sample(qs, len(qs)) for _, qs in sorted(by_type.items())]
    out: list[_Question] = []
    while len(out) < n and any(pools):
        for pool in pools:
            if pool and len(out) < n:
                out.append(pool.pop())
    rng.shuffle(out)
    return out


def _split(rng: random.Random, hops: list[list[_Question]]) -> dict[str, list[_Question]]:
    """80/10/10 per hop count (at least ``_MIN_PER_SPLIT`` of each in val and test)."""
    splits: dict[str, list[_Question]] = {s: [] for s in SPLITS}
    for qs in hops:
        n_eval = max(_MIN_PER_SPLIT, round(0.1 * len(qs)))
        if len(qs) < 2 * n_eval + _MIN_PER_SPLIT:
            raise ValueError(f"only {len(qs)} questions of one hop count; use a larger size")
        splits["val"] += qs[:n_eval]
        splits["test"] += qs[n_eval:2 * n_eval]
        splits["train"] += qs[2 * n_eval:]
    for qs in splits.values():
        rng.shuffle(qs)
    return splits


@dataclass
class World:
    """A generated world: corpus lines (wiki-18 format) and QA lines (FlashRAG format) per split."""

    seed: int
    size: int
    passages: list[dict[str, str]]
    """Corpus lines ``{"id": "0", "contents": "\\"Title\\"\\ntext"}``, ids "0".."N-1"."""
    splits: dict[str, list[dict[str, Any]]]
    """QA lines per split (train/val/test): id, question, golden_answers, metadata."""
    entity_counts: dict[str, int]
    """Number of entities (= passages) per kind."""

    def meta(self) -> dict[str, Any]:
        """The content of ``world.json``."""
        hops = {s: {str(h): sum(q["metadata"]["hops"] == h for q in qs) for h in (1, 2)}
                for s, qs in self.splits.items()}
        return {"generator": "search_e1.demo_world", "version": 1, "seed": self.seed,
                "size": self.size, "passages": len(self.passages), "entities": self.entity_counts,
                "questions": {s: len(qs) for s, qs in self.splits.items()}, "hops": hops}


def generate_world(seed: int = 0, size: int = 200, avoid: Iterable[str] = (), eval_only: bool = False) -> World:
    """Generate the world for ``seed`` with ``size`` people (other kinds scale with it).

    About ``1.6 * size`` passages and ``2 * size`` questions (half single-hop, half two-hop), split
    80/10/10 into train/val/test, or all in one ``eval`` split when ``eval_only``. No generated name
    word equals, contains or is contained in a word of ``avoid`` (case-insensitive; words under 4
    letters excepted); an empty ``avoid`` leaves the draws, hence the files, as they were.
    """
    if size < MIN_SIZE:
        raise ValueError(f"size must be >= {MIN_SIZE}, got {size}")
    with _gc_paused():
        return _generate(seed, size, avoid, eval_only)


@contextmanager
def _gc_paused() -> Iterator[None]:
    """Pause the cyclic GC: generation makes no cycles, and full collections re-scanning the
    name sets (millions of entries) made large worlds superlinear (60k people: 11 s -> 5 s)."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _generate(seed: int, size: int, avoid: Iterable[str], eval_only: bool) -> World:
    rng = random.Random(seed)
    names = _Names(rng, avoid)
    countries, rivers, cities = _make_geography(rng, names, size)
    people = _make_people(rng, names, size, len(cities))
    orgs = _make_orgs(rng, names, people, len(cities))
    e = _Entities(countries, rivers, cities, orgs, people)
    passages = _passages(e)
    texts = {(k, i): passages[int(e.pid(k, i))]["contents"]
             for k, items in e.kinds() for i in range(len(items))}
    single = _balanced(rng, _single_hop(e), size)
    two = _balanced(rng, _two_hop(e, texts), size)
    parts = {EVAL_SPLIT: rng.sample(single + two, len(single) + len(two))} if eval_only else _split(rng, [single, two])
    splits = {s: [_qa_line(e, f"{s}_{j}", q) for j, q in enumerate(qs)] for s, qs in parts.items()}
    return World(seed, size, passages, splits, {k: len(v) for k, v in e.kinds()})


def _qa_line(e: _Entities, qid: str, q: _Question) -> dict[str, Any]:
    return {"id": qid, "question": q.question, "golden_answers": q.answers,
            "metadata": {"hops": len(q.support), "supporting_ids": [e.pid(*s) for s in q.support],
                         "type": q.type}}


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def write_world(out_dir: str | Path, seed: int = 0, size: int = 200) -> dict[str, Path]:
    """Write ``corpus.jsonl``, ``{train,val,test}.jsonl``, ``world.json`` and
    ``demonstrations.jsonl`` (oracle demonstrations of the training questions) into ``out_dir``.

    Returns the paths keyed ``corpus``, ``train``, ``val``, ``test``, ``world``, ``demonstrations``.
    """
    from search_e1.demo_oracle import oracle_demonstrations

    world = generate_world(seed, size)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"corpus": out / "corpus.jsonl", **{s: out / f"{s}.jsonl" for s in SPLITS},
             "world": out / "world.json", "demonstrations": out / "demonstrations.jsonl"}
    _write_jsonl(paths["corpus"], world.passages)
    for s in SPLITS:
        _write_jsonl(paths[s], world.splits[s])
    _write_jsonl(paths["demonstrations"], oracle_demonstrations(world.passages, world.splits["train"]))
    paths["world"].write_text(json.dumps(world.meta(), indent=2) + "\n", encoding="utf-8")
    log.info("wrote a world of %d passages and %s questions to %s", len(world.passages),
             world.meta()["questions"], out)
    return paths


def corpus_title_words(corpus: str | Path) -> set[str]:
    """The words of every passage title of a wiki-18 style corpus (``"\"Title\"\ntext"``)."""
    words: set[str] = set()
    with open(corpus, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                title = json.loads(line)["contents"].split("\n", 1)[0].strip('"')
                words.update(title.split())
    return words


def write_heldout_world(out_dir: str | Path, training_corpus: str | Path, seed: int = 1, size: int = 150) -> dict[str,
                                                                                                                  Path]:
    """Write an evaluation-only world: ``corpus.jsonl``, ``eval.jsonl`` (all ``2 * size`` questions,
    half of each hop count) and ``world.json``, whose names share no word with the titles of
    ``training_corpus`` (`corpus_title_words`). Returns the paths keyed ``corpus``, ``eval``, ``world``."""
    world = generate_world(seed, size, avoid=corpus_title_words(training_corpus), eval_only=True)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"corpus": out / "corpus.jsonl", EVAL_SPLIT: out / f"{EVAL_SPLIT}.jsonl", "world": out / "world.json"}
    _write_jsonl(paths["corpus"], world.passages)
    _write_jsonl(paths[EVAL_SPLIT], world.splits[EVAL_SPLIT])
    meta = {**world.meta(), "heldout_of": str(training_corpus)}
    paths["world"].write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    log.info("wrote a held-out world of %d passages and %d questions to %s (no name shared with %s)",
             len(world.passages), len(world.splits[EVAL_SPLIT]), out, training_corpus)
    return paths


def main(argv: list[str] | None = None) -> dict[str, Path]:
    """``python -m search_e1.demo_world --out DIR [--seed S] [--size N]``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--seed", type=int, default=0, help="random seed")
    parser.add_argument("--size", type=int, default=200, help="number of people")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    return write_world(args.out, args.seed, args.size)

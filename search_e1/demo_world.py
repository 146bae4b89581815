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

Run::

    python -m search_e1.demo_world --out demo/world --size 200 --seed 0
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import random
from bisect import bisect_right
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

__all__ = ["SPLITS", "World", "generate_world", "write_world"]

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
MIN_SIZE = 10
_MIN_PER_SPLIT = 2  # per hop count, so every split has at least 4 questions

_ONSETS = ("b", "br", "d", "dr", "f", "fl", "g", "gr", "h", "k", "kl", "l", "m", "n", "p", "pr",
           "r", "s", "sk", "st", "t", "tr", "v", "z", "th", "sh", "c", "j")
_VOWELS = ("a", "e", "i", "o", "u", "a", "e", "o", "ai", "ou")
_SOFT_CODAS = ("", "", "", "", "", "", "n", "r", "l", "s")  # inside a word
_CODAS = ("", "", "", "n", "r", "l", "s", "m", "th", "nd", "x", "k", "sk")  # at its end
_COUNTRY_ENDINGS = ("ia", "ova", "ara", "esh", "mark", "istan")
_FORMS = ("Kingdom", "Republic", "Principality", "Federation", "Duchy")
_ORG_KINDS = (("Labs", "research laboratory"), ("Works", "engineering firm"),
              ("Foundry", "metal foundry"), ("Press", "publishing house"),
              ("Mills", "textile company"), ("Shipping", "shipping company"),
              ("Bank", "bank"), ("Brewery", "brewery"), ("Observatory", "observatory"),
              ("Institute", "research institute"))
_OCCUPATIONS = ("cartographer", "glassblower", "astronomer", "botanist", "shipwright", "violinist",
                "archivist", "clockmaker", "engineer", "physician", "poet", "sculptor",
                "translator", "geologist", "brewer", "weaver", "mathematician", "architect",
                "chemist", "diplomat", "painter", "historian", "lawyer", "composer", "judge",
                "merchant", "surveyor", "printer", "beekeeper", "falconer")
# generic words of the templates: no generated name may contain one
_RESERVED = ("river", "city", "country", "capital", "founded", "born", "kingdom", "republic") + \
    tuple(k.lower() for k, _ in _ORG_KINDS)


class _Names:
    """Unique capitalised words; no word contains another (case-insensitive), so names never nest."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self._words: set[str] = set(_RESERVED)  # accepted words (lowercase)
        self._inner: set[str] = set()  # every substring (len >= 4) of an accepted word

    def word(self, syllables: tuple[int, int] = (2, 3), ending: str = "") -> str:
        for _ in range(10_000):
            n = self.rng.randint(*syllables)
            w = "".join(self._syllable(k == n - 1 and not ending) for k in range(n)) + ending
            if len(w) >= 4 and self._accept(w.lower()):
                return w.capitalize()
        raise RuntimeError("name space exhausted; use a smaller world")

    def _syllable(self, last: bool) -> str:
        r = self.rng
        coda = r.choice(_CODAS) if last else r.choice(_SOFT_CODAS)
        return r.choice(_ONSETS) + r.choice(_VOWELS) + coda

    def _accept(self, w: str) -> bool:
        if w in self._inner:
            return False
        subs = {w[i:j] for i in range(len(w)) for j in range(i + 4, len(w) + 1)}
        if not subs.isdisjoint(self._words):
            return False
        self._words.add(w)
        self._inner |= subs
        return True


@dataclass
class _Person:
    name: str
    pronoun: str
    birth_year: int
    birth_city: int
    occupation: str
    mentor: int | None = None
    employer: int | None = None


@dataclass
class _Org:
    name: str
    industry: str
    founded_year: int
    founder: int
    hq: int


@dataclass
class _City:
    name: str
    country: int
    founded_year: int
    river: int | None = None


@dataclass
class _Country:
    name: str
    form: str
    founded_year: int
    capital: int = -1


@dataclass
class _River:
    name: str
    country: int
    length_km: int
    cities: list[int] = field(default_factory=list)


@dataclass
class _Entities:
    countries: list[_Country]
    rivers: list[_River]
    cities: list[_City]
    orgs: list[_Org]
    people: list[_Person]

    def kinds(self) -> list[tuple[str, list[Any]]]:
        """Entity lists in passage-id order."""
        return [("country", self.countries), ("river", self.rivers), ("city", self.cities),
                ("org", self.orgs), ("person", self.people)]

    def __post_init__(self) -> None:
        self._offset: dict[str, int] = {}
        for kind, _ in self.kinds():
            self._offset[kind] = sum(len(v) for _, v in self.kinds()[: len(self._offset)])

    def of_kind(self, kind: str) -> list[Any]:
        """The entity list of ``kind``."""
        return dict(self.kinds())[kind]

    def pid(self, kind: str, i: int) -> str:
        """Passage id of entity ``i`` of ``kind`` (ids are assigned kind by kind)."""
        return str(self._offset[kind] + i)


def _make_geography(
    rng: random.Random, names: _Names, size: int
) -> tuple[list[_Country], list[_River], list[_City]]:
    n_countries, n_cities = max(3, size // 25), max(6, size // 5)
    countries = [_Country(names.word((1, 2), rng.choice(_COUNTRY_ENDINGS)), rng.choice(_FORMS),
                          rng.randint(900, 1700)) for _ in range(n_countries)]
    rivers = [_River(f"{names.word()} River", k % n_countries, rng.randint(40, 2400))
              for k in range(2 * n_countries)]
    cities = []
    for c in range(n_cities):
        country = c % n_countries  # every country has at least one city
        city = _City(names.word(), country, rng.randint(800, 1800))
        if rng.random() < 0.8:
            city.river = rng.choice((2 * country, 2 * country + 1))
            rivers[city.river].cities.append(c)
        cities.append(city)
    for k, country in enumerate(countries):
        country.capital = rng.choice(range(k, n_cities, n_countries))
    return countries, rivers, cities


def _make_people(rng: random.Random, names: _Names, size: int, n_cities: int) -> list[_Person]:
    first = [names.word((1, 2)) for _ in range(max(12, size // 8))]
    people = [_Person(f"{rng.choice(first)} {names.word()}", rng.choice(("He", "She")),
                      rng.randint(1700, 1960), rng.randrange(n_cities), rng.choice(_OCCUPATIONS))
              for _ in range(size)]
    people.sort(key=lambda p: p.birth_year)  # stable: order still fixed by the rng draws
    years = [p.birth_year for p in people]
    mentees = [0] * size
    for p in people:  # mentor: born 15-45 years earlier, at most 2 mentees each
        lo, hi = bisect_right(years, p.birth_year - 46), bisect_right(years, p.birth_year - 15)
        for _ in range(3 if hi > lo else 0):
            m = rng.randrange(lo, hi)
            if mentees[m] < 2:
                p.mentor, mentees[m] = m, mentees[m] + 1
                break
    return people


def _make_orgs(
    rng: random.Random, names: _Names, people: list[_Person], n_cities: int
) -> list[_Org]:
    n_orgs = max(4, len(people) // 4)
    founders = rng.sample(range(len(people)), n_orgs)
    orgs = []
    for f in founders:
        suffix, industry = rng.choice(_ORG_KINDS)
        year = people[f].birth_year + rng.randint(22, 50)
        orgs.append(_Org(f"{names.word()} {suffix}", industry, year, f, rng.randrange(n_cities)))
    by_year = sorted(range(n_orgs), key=lambda o: orgs[o].founded_year)
    years = [orgs[o].founded_year for o in by_year]
    staff = [0] * n_orgs
    for p in people:  # employer: founded before the person turned 40, at most 8 staff each
        hi = bisect_right(years, p.birth_year + 40)
        for _ in range(3 if hi and rng.random() < 0.85 else 0):
            o = by_year[rng.randrange(hi)]
            if staff[o] < 8:
                p.employer, staff[o] = o, staff[o] + 1
                break
    return orgs


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _person_text(e: _Entities, p: _Person) -> str:
    city = e.cities[p.birth_city].name
    s = [f"{p.name} was {_article(p.occupation)} {p.occupation} born in {p.birth_year} in {city}."]
    if p.mentor is not None:
        s.append(f"{p.pronoun} was mentored by {e.people[p.mentor].name}.")
    if p.employer is not None:
        s.append(f"{p.pronoun} worked for {e.orgs[p.employer].name}.")
    return " ".join(s)


def _org_text(e: _Entities, o: _Org) -> str:
    return (f"{o.name} is {_article(o.industry)} {o.industry} founded in {o.founded_year} by "
            f"{e.people[o.founder].name}. {o.name} is headquartered in {e.cities[o.hq].name}.")


def _city_text(e: _Entities, c: _City) -> str:
    s = f"{c.name} is a city in {e.countries[c.country].name}, founded in {c.founded_year}."
    return s if c.river is None else f"{s} It lies on the {e.rivers[c.river].name}."


def _country_text(e: _Entities, k: _Country) -> str:
    return (f"{k.name}, officially the {k.form} of {k.name}, is a country established in "
            f"{k.founded_year}. Its capital is {e.cities[k.capital].name}.")


def _river_text(e: _Entities, r: _River) -> str:
    s = f"The {r.name} is a river in {e.countries[r.country].name}, {r.length_km} kilometres long."
    if r.cities:
        shown = [e.cities[c].name for c in r.cities[:4]]
        listed = shown[0] if len(shown) == 1 else ", ".join(shown[:-1]) + " and " + shown[-1]
        s += f" It flows past {listed}."
    return s


_RENDER: dict[str, Callable[[_Entities, Any], str]] = {
    "country": _country_text, "river": _river_text, "city": _city_text, "org": _org_text,
    "person": _person_text}


def _passages(e: _Entities) -> list[dict[str, str]]:
    out: list[dict[str, str]] = []
    for kind, items in e.kinds():
        for item in items:
            out.append({"id": str(len(out)), "contents": f'"{item.name}"\n{_RENDER[kind](e, item)}'})
    return out


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


def generate_world(seed: int = 0, size: int = 200) -> World:
    """Generate the world for ``seed`` with ``size`` people (other kinds scale with it).

    About ``1.6 * size`` passages and ``2 * size`` questions (half single-hop, half two-hop).
    """
    if size < MIN_SIZE:
        raise ValueError(f"size must be >= {MIN_SIZE}, got {size}")
    with _gc_paused():
        return _generate(seed, size)


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


def _generate(seed: int, size: int) -> World:
    rng = random.Random(seed)
    names = _Names(rng)
    countries, rivers, cities = _make_geography(rng, names, size)
    people = _make_people(rng, names, size, len(cities))
    orgs = _make_orgs(rng, names, people, len(cities))
    e = _Entities(countries, rivers, cities, orgs, people)
    passages = _passages(e)
    texts = {(k, i): passages[int(e.pid(k, i))]["contents"]
             for k, items in e.kinds() for i in range(len(items))}
    single = _balanced(rng, _single_hop(e), size)
    two = _balanced(rng, _two_hop(e, texts), size)
    splits = {s: [_qa_line(e, f"{s}_{j}", q) for j, q in enumerate(qs)]
              for s, qs in _split(rng, [single, two]).items()}
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


def main(argv: list[str] | None = None) -> dict[str, Path]:
    """``python -m search_e1.demo_world --out DIR [--seed S] [--size N]``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--seed", type=int, default=0, help="random seed")
    parser.add_argument("--size", type=int, default=200, help="number of people")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    return write_world(args.out, args.seed, args.size)


if __name__ == "__main__":
    main()

"""Entities of the demo world and their passages: pronounceable unique names, the entity records
(countries, rivers, cities, organisations, people), their seeded generation, and the text of the
one passage each entity gets (title = its name, text opening with it).

A module of its own because it holds the world's facts; `search_e1.demo_world` turns them into
questions, splits and files. Every draw comes from the caller's ``random.Random``, in the same
order as before the split, so the same seed still gives byte-identical files.
"""

from __future__ import annotations

import random
from bisect import bisect_right
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

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

    def __init__(self, rng: random.Random, avoid: Iterable[str] = ()) -> None:
        self.rng = rng
        self._words: set[str] = set(_RESERVED)  # accepted words (lowercase)
        self._inner: set[str] = set()  # every substring (len >= 4) of an accepted word
        for w in avoid:  # another world's words: never reused, never nested in a new word or around one
            self._words.add(w.lower())
            self._inner |= _substrings(w.lower())

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
        subs = _substrings(w)
        if not subs.isdisjoint(self._words):
            return False
        self._words.add(w)
        self._inner |= subs
        return True


def _substrings(w: str) -> set[str]:
    """Every substring of ``w`` of at least 4 characters."""
    return {w[i:j] for i in range(len(w)) for j in range(i + 4, len(w) + 1)}


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

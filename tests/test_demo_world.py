"""The demo world: determinism, file formats, split hygiene, answerability and two-hop chains."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from search_e1.demo_world import SPLITS, generate_world, main, write_world
from search_e1.protocol import TAG_RE, PromptConfig, information_text
from search_e1.retrieval.base import Passage, format_passages

# generic words that follow a generated name ("Zorvex Labs", "Oskel River")
_KIND_WORDS = {"River", "Labs", "Works", "Foundry", "Press", "Mills", "Shipping", "Bank",
               "Brewery", "Observatory", "Institute"}


def _read_jsonl(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f]


@pytest.fixture(scope="module")
def world():
    return generate_world(seed=3, size=300)


@pytest.fixture(scope="module")
def passages(world) -> dict[str, Passage]:
    return {p["id"]: Passage.from_contents(p["id"], p["contents"]) for p in world.passages}


def _all_questions(world) -> list[dict]:
    return [q for s in SPLITS for q in world.splits[s]]


def test_same_seed_gives_byte_identical_files(tmp_path: Path) -> None:
    a = write_world(tmp_path / "a", seed=5, size=60)
    b = write_world(tmp_path / "b", seed=5, size=60)
    assert set(a) == {"corpus", "train", "val", "test", "world", "demonstrations"}
    for key in a:
        assert a[key].read_bytes() == b[key].read_bytes(), key


def test_other_seed_gives_other_files(tmp_path: Path) -> None:
    a = write_world(tmp_path / "a", seed=5, size=60)
    b = write_world(tmp_path / "b", seed=6, size=60)
    for key in ("corpus", "train", "val", "test"):
        assert a[key].read_bytes() != b[key].read_bytes(), key


def test_file_formats(tmp_path: Path) -> None:
    paths = write_world(tmp_path, seed=1, size=50)
    corpus = _read_jsonl(paths["corpus"])
    assert [p["id"] for p in corpus] == [str(i) for i in range(len(corpus))]
    for line in corpus:
        assert set(line) == {"id", "contents"}
        title, text = line["contents"].split("\n", 1)
        assert title.startswith('"') and title.endswith('"') and text
    meta = json.loads(paths["world"].read_text())
    assert meta["seed"] == 1 and meta["size"] == 50 and meta["passages"] == len(corpus)
    assert sum(meta["entities"].values()) == len(corpus) and meta["entities"]["person"] == 50
    for split in SPLITS:
        rows = _read_jsonl(paths[split])
        assert meta["questions"][split] == len(rows)
        assert [q["id"] for q in rows] == [f"{split}_{i}" for i in range(len(rows))]
        for q in rows:
            assert set(q) == {"id", "question", "golden_answers", "metadata"}
            assert q["question"].endswith("?") and q["golden_answers"]
            assert all(isinstance(a, str) and a for a in q["golden_answers"])
            assert set(q["metadata"]) == {"hops", "supporting_ids", "type"}
            assert len(q["metadata"]["supporting_ids"]) == q["metadata"]["hops"]


def test_passages_open_with_their_entity_name(passages: dict[str, Passage]) -> None:
    titles = [p.title for p in passages.values()]
    assert len(set(titles)) == len(titles)
    for p in passages.values():
        assert p.text.startswith(p.title) or p.text.startswith(f"The {p.title}")


def test_name_words_never_nest(passages: dict[str, Passage]) -> None:
    """No generated name word contains another: "Tars" and "Tarsk" cannot both exist."""
    words = sorted({w.lower() for p in passages.values() for w in p.title.split()
                    if w not in _KIND_WORDS})
    nested = [(a, b) for a in words for b in words if a != b and a in b]
    assert nested == []


def test_splits_are_disjoint_and_balanced(world) -> None:
    texts = [q["question"] for q in _all_questions(world)]
    assert len(texts) == len(set(texts)) == 2 * world.size  # no duplicate, within or across
    n = {s: len(world.splits[s]) for s in SPLITS}
    assert n["val"] == n["test"] == 60 and n["train"] == 480  # 10% of 300 per hop, x2 hops
    for split in SPLITS:
        hops = [q["metadata"]["hops"] for q in world.splits[split]]
        assert hops.count(1) == hops.count(2)  # split per hop count, so exactly half each


def test_question_types_are_varied(world) -> None:
    types = {h: {q["metadata"]["type"] for q in _all_questions(world) if q["metadata"]["hops"] == h}
             for h in (1, 2)}
    assert len(types[1]) == 14 and len(types[2]) == 12
    assert {"birth_city", "founder", "capital"} <= types[1]
    assert {"founder_birth_city", "birth_country", "mentor_birth_city"} <= types[2]


def test_answers_verbatim_in_last_supporting_passage(world, passages) -> None:
    for q in _all_questions(world):
        ids = q["metadata"]["supporting_ids"]
        assert q["golden_answers"][0] in passages[ids[-1]].text, q
        assert passages[ids[0]].title in q["question"], q  # the question names its first entity


def test_two_hop_chain(world, passages) -> None:
    """Hop 1 names the bridge entity (title of hop 2) but not the answer; hop 2 has the answer."""
    two = [q for q in _all_questions(world) if q["metadata"]["hops"] == 2]
    assert two
    for q in two:
        first, second = (passages[i] for i in q["metadata"]["supporting_ids"])
        assert first.id != second.id
        assert second.title in first.text, q
        assert second.title not in q["question"], q
        assert q["golden_answers"][0] not in first.text, q
        assert first.title not in second.text, q  # no backlink: one search cannot do


def test_founder_birth_city_chain_by_hand(world, passages) -> None:
    q = next(q for q in _all_questions(world) if q["metadata"]["type"] == "founder_birth_city")
    org, person = (passages[i] for i in q["metadata"]["supporting_ids"])
    assert q["question"] == f"In which city was the founder of {org.title} born?"
    assert f"by {person.title}." in org.text
    assert "born in " in person.text and f" in {q['golden_answers'][0]}." in person.text


def test_aliases(world) -> None:
    by_type = {q["metadata"]["type"]: q for q in _all_questions(world)}
    river = by_type["city_river"]["golden_answers"]
    assert river[0].endswith(" River") and river[1] == river[0].removesuffix(" River")
    country = by_type["city_country"]["golden_answers"]
    assert country[1].endswith(f" of {country[0]}")


def test_smallest_world_has_every_split() -> None:
    w = generate_world(seed=0, size=10)
    for split in SPLITS:
        hops = [q["metadata"]["hops"] for q in w.splits[split]]
        assert hops.count(1) >= 2 and hops.count(2) >= 2
    with pytest.raises(ValueError, match="size must be >= 10"):
        generate_world(seed=0, size=9)


def test_larger_world_scales() -> None:
    w = generate_world(seed=0, size=3000)
    assert len(w.passages) == sum(w.entity_counts.values()) > 4000
    titles = [p["contents"].split("\n", 1)[0] for p in w.passages]
    assert len(set(titles)) == len(titles)


def test_main_writes_files(tmp_path: Path) -> None:
    paths = main(["--out", str(tmp_path / "w"), "--size", "20", "--seed", "2"])
    assert all(p.is_file() for p in paths.values())
    assert json.loads(paths["world"].read_text())["size"] == 20


# ---------------------------------------------------------------- oracle demonstrations
def test_demonstrations_cover_the_training_split_only(tmp_path: Path) -> None:
    paths = write_world(tmp_path, seed=3, size=60)
    demos = _read_jsonl(paths["demonstrations"])
    train = {q["id"]: q for q in _read_jsonl(paths["train"])}
    held_out = {q["question"] for s in ("val", "test") for q in _read_jsonl(paths[s])}
    assert [d["id"] for d in demos] == list(train)  # every training question, in file order
    assert not {d["question"] for d in demos} & held_out
    for d in demos:
        q = train[d["id"]]
        assert d["question"] == q["question"] and d["golden_answers"] == q["golden_answers"]
        roles = [m["role"] for m in d["messages"]]
        assert roles == ["assistant", "user"] * q["metadata"]["hops"] + ["assistant"]
        final = d["messages"][-1]["content"]
        assert final.startswith("<answer> ") and final.endswith(" </answer>")
        assert final.removeprefix("<answer> ").removesuffix(" </answer>") in q["golden_answers"]
        for m in d["messages"][1:-1:2]:  # information turns: only the environment's own tags
            assert [t.group(0) for t in TAG_RE.finditer(m["content"])] == ["<information>", "</information>"]


def test_demonstrations_name_the_entity_of_the_question(world_paths) -> None:
    corpus = {p["id"]: Passage.from_contents(p["id"], p["contents"]) for p in _read_jsonl(world_paths["corpus"])}
    train = {q["id"]: q for q in _read_jsonl(world_paths["train"])}
    for d in _read_jsonl(world_paths["demonstrations"]):
        support = [corpus[i] for i in train[d["id"]]["metadata"]["supporting_ids"]]
        searches = [m["content"] for m in d["messages"][0:-1:2]]
        assert searches == [f"<search> {p.title} </search>" for p in support]
        assert support[0].title in d["question"]


@pytest.mark.slow
def test_demonstrations_searches_find_the_passages_they_show(world_paths, demo_retriever) -> None:
    """Each <search> of a demonstration, run through MiniLM over the demo corpus, returns the passage
    that the following information turn shows within the top 3 (rendered exactly as shown)."""
    turn = PromptConfig(info_format="turn")
    queries, shown = [], []
    for d in _read_jsonl(world_paths["demonstrations"]):
        for search, info in zip(d["messages"][0:-1:2], d["messages"][1:-1:2], strict=True):
            queries.append(search["content"].removeprefix("<search> ").removesuffix(" </search>"))
            shown.append(info["content"])
    results = demo_retriever.search(queries, 3)
    missed = [(q, s) for q, s, found in zip(queries, shown, results, strict=True)
              if s not in {information_text(format_passages([p]), turn) for p in found}]
    assert len(queries) > 200 and missed == [], missed[:3]


def test_heldout_world_shares_no_entity_name_with_the_training_world(tmp_path: Path) -> None:
    from search_e1.demo_world import EVAL_SPLIT, corpus_title_words, write_heldout_world

    train = write_world(tmp_path / "world", seed=0, size=300)
    held = write_heldout_world(tmp_path / "heldout", train["corpus"], seed=1, size=100)
    assert set(held) == {"corpus", EVAL_SPLIT, "world"}  # evaluation-only: no training split, no demonstrations
    titles = lambda path: {p["contents"].split("\n", 1)[0].strip('"') for p in _read_jsonl(path)}  # noqa: E731
    assert not titles(train["corpus"]) & titles(held["corpus"])
    train_words = corpus_title_words(train["corpus"]) - _KIND_WORDS
    held_words = corpus_title_words(held["corpus"]) - _KIND_WORDS
    assert len(held_words) > 100 and not train_words & held_words
    # no held-out name word contains a training one (or the reverse): no question's entity is findable by a prefix
    lower = [w.lower() for w in train_words if len(w) >= 4]
    assert not [w for w in held_words for t in lower if t in w.lower() or w.lower() in t]
    questions = _read_jsonl(held[EVAL_SPLIT])
    assert len(questions) == 200 and sum(q["metadata"]["hops"] == 1 for q in questions) == 100
    meta = json.loads(held["world"].read_text())
    assert meta["questions"] == {EVAL_SPLIT: 200} and meta["heldout_of"] == str(train["corpus"])


def test_avoiding_no_names_leaves_the_world_unchanged() -> None:
    a, b = generate_world(seed=4, size=60), generate_world(seed=4, size=60, avoid=())
    assert a.passages == b.passages and a.splits == b.splits
    c = generate_world(seed=4, size=60, avoid={"Zzzzzz"})  # a word no draw makes: same draws
    assert c.passages == a.passages

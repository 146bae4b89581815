"""Retrieval: corpus loading and its errors, the embedder, faiss index files, the dense retriever.

Fast tests use a hashing encoder or a tiny random BERT; tests marked slow use the embedded MiniLM
on the session's demo world (~157 passages).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from search_e1.retrieval import (
    Corpus,
    CorpusFormatError,
    DenseRetriever,
    Embedder,
    EmbedderConfig,
    Passage,
    Retriever,
    RetrieverConfig,
    build_flat_index,
    build_index,
    build_retriever,
    load_corpus,
    load_index,
    save_index,
)
from search_e1.retrieval.embedder import resolve_embedder_path

GOOD = [
    '{"id": "0", "contents": "\\"Ada\\"\\nAda was a poet."}',
    '{"id": 1, "contents": "\\"Bob\\"\\nBob was a cook."}',
]


def _write(tmp_path: Path, lines: list[str]) -> Path:
    path = tmp_path / "corpus.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


# ---------------------------------------------------------------- corpus
def test_load_corpus_reads_lines_skipping_blank_ones(tmp_path: Path) -> None:
    corpus = load_corpus(_write(tmp_path, [GOOD[0], "", "   ", GOOD[1]]))
    assert len(corpus) == 2 and corpus.ids == ["0", "1"]  # the integer id became a string
    assert corpus[1] == Passage("1", "Bob", "Bob was a cook.")
    assert corpus.get_by_id("1").title == "Bob" and corpus.position("0") == 0
    got = corpus.get_by_position([1, 0], [0.5, 0.25])
    assert [(p.id, p.score) for p in got] == [("1", 0.5), ("0", 0.25)]
    assert corpus.texts_for_embedding() == ["Ada\nAda was a poet.", "Bob\nBob was a cook."]
    assert [p.id for p in corpus] == ["0", "1"]


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ('{"id": "2", "contents": ', "invalid JSON"),
        ('["2", "text"]', "expected a JSON object"),
        ('"just a string"', "expected a JSON object"),
        ('{"id": "2", "text": "no contents"}', 'missing "contents"'),
        ('{"id": "2", "contents": 7}', '"contents" must be a string, got int'),
        ('{"id": "2", "contents": null}', '"contents" must be a string, got NoneType'),
        ('{"contents": "\\"T\\"\\nno id"}', 'missing "id"'),
        ('{"id": null, "contents": "x"}', '"id" must be a string or an integer'),
        ('{"id": "0", "contents": "again"}', "duplicate id '0' (first on line 1)"),
    ],
)
def test_malformed_line_names_path_and_line(tmp_path: Path, bad: str, message: str) -> None:
    # line 1 good, line 2 blank (still counted), line 3 good, line 4 bad, line 5 good
    path = _write(tmp_path, [GOOD[0], "", GOOD[1], bad, '{"id": "9", "contents": "x"}'])
    with pytest.raises(CorpusFormatError) as err:
        load_corpus(path)
    assert str(err.value).startswith(f"{path}:4: ")
    assert message in str(err.value)
    assert isinstance(err.value, ValueError)


def test_missing_corpus_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        load_corpus(tmp_path / "nope.jsonl")


def test_corpus_from_records_and_title_less_contents() -> None:
    corpus = Corpus.from_records([{"id": 3, "contents": "no title line"}])
    assert corpus[0] == Passage("3", "", "no title line")
    assert corpus.texts_for_embedding() == ["no title line"]


# ---------------------------------------------------------------- embedder
@pytest.mark.parametrize(
    ("kwargs", "field"),
    [({"pooling": "max"}, "pooling"), ({"max_length": 0}, "max_length"),
     ({"batch_size": 0}, "batch_size"), ({"dtype": "int8"}, "dtype"), ({"path": ""}, "path")],
)
def test_embedder_config_errors_name_the_field(kwargs: dict, field: str) -> None:
    with pytest.raises(ValueError, match=f"EmbedderConfig.{field}"):
        EmbedderConfig(**kwargs)


def test_resolve_embedder_path(tmp_path: Path, minilm_dir: Path) -> None:
    assert (minilm_dir / "config.json").is_file() and minilm_dir.name == "model"
    with pytest.raises(FileNotFoundError, match="not found: .*missing"):
        resolve_embedder_path(tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match="no config.json"):
        resolve_embedder_path(tmp_path)
    with pytest.raises(FileNotFoundError, match=str(tmp_path)):
        Embedder(EmbedderConfig(path=str(tmp_path)))


def test_embedder_shapes_order_norms_and_prefixes(tiny_bert_dir: Path) -> None:
    emb = Embedder(EmbedderConfig(path=str(tiny_bert_dir), batch_size=2, query_prefix="query: "))
    texts = ["a much longer text than the others, with many words in it", "short", "mid size"]
    out = emb.encode(texts, "passage")
    assert out.shape == (3, 32) and out.dtype == np.float32 and emb.dim == 32
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
    one_by_one = np.concatenate([emb.encode([t], "passage") for t in texts])
    np.testing.assert_allclose(out, one_by_one, atol=1e-5)  # length sorting keeps input order
    assert not np.allclose(emb.encode(["short"], "query"), out[1:2], atol=1e-4)  # prefix used
    assert emb.encode([], "query").shape == (0, 32)
    with pytest.raises(ValueError, match="kind"):
        emb.encode(texts, "document")  # type: ignore[arg-type]


def test_embedder_cls_pooling_and_no_normalisation(tiny_bert_dir: Path) -> None:
    mean = Embedder(EmbedderConfig(path=str(tiny_bert_dir), normalize=False))
    cls = Embedder(EmbedderConfig(path=str(tiny_bert_dir), pooling="cls", normalize=False))
    a, b = mean.encode(["one two three"], "query"), cls.encode(["one two three"], "query")
    assert not np.allclose(a, b) and not np.isclose(np.linalg.norm(a), 1.0)


# ---------------------------------------------------------------- index files
def test_flat_index_save_load_gives_identical_results(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((50, 16)).astype(np.float32)  # [N, D]
    q = rng.standard_normal((4, 16)).astype(np.float32)  # [Q, D]
    index = build_flat_index(x)
    d0, i0 = index.search(q, 5)
    np.testing.assert_allclose(d0[:, 0], (q @ x.T).max(1), rtol=1e-5)  # exact inner product
    path = save_index(index, tmp_path / "sub" / "index.faiss")
    for loaded in (load_index(path), load_index(path, mmap=True), load_index(tmp_path / "sub")):
        d1, i1 = loaded.search(q, 5)
        np.testing.assert_array_equal(i0, i1)
        np.testing.assert_array_equal(d0, d1)


def test_index_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="index.faiss"):
        load_index(tmp_path / "index.faiss")
    with pytest.raises(ValueError, match="shape"):
        build_flat_index(np.zeros(5, dtype=np.float32))


# ---------------------------------------------------------------- dense retriever
@pytest.fixture(scope="module")
def hash_retriever(hash_embedder, world_corpus) -> DenseRetriever:
    vectors = hash_embedder.encode(world_corpus.texts_for_embedding(), "passage")
    return DenseRetriever(hash_embedder, build_flat_index(vectors), world_corpus)


def test_passage_text_queries_hit_their_passage(hash_retriever, world_corpus) -> None:
    assert isinstance(hash_retriever, Retriever)
    texts = world_corpus.texts_for_embedding()
    results = hash_retriever.search(texts, topk=3)
    assert [r[0].id for r in results] == world_corpus.ids
    for r in results:
        scores = [p.score for p in r]
        assert all(isinstance(s, float) for s in scores) and scores == sorted(scores, reverse=True)
        assert r[0].score == pytest.approx(1.0, abs=1e-5)  # a unit vector against itself


def test_search_edge_cases(hash_retriever, world_corpus) -> None:
    assert hash_retriever.search([], topk=3) == []
    assert hash_retriever.search(["a", "b"], topk=0) == [[], []]
    assert hash_retriever.search(["a"], topk=-2) == [[]]
    assert len(hash_retriever.search(["a"], topk=10**6)[0]) == len(world_corpus)
    with pytest.raises(TypeError, match="list of strings"):
        hash_retriever.search("a question", topk=3)  # type: ignore[arg-type]


def test_retriever_checks_index_against_corpus(hash_embedder, world_corpus) -> None:
    small = build_flat_index(hash_embedder.encode(["x", "y"], "passage"))
    with pytest.raises(ValueError, match="2 rows but the corpus"):
        DenseRetriever(hash_embedder, small, world_corpus)


def test_build_index_writes_meta_and_reloads(tmp_path, world_paths, world_corpus, hash_embedder):
    out = build_index(world_paths["corpus"], tmp_path / "idx", EmbedderConfig(path="x"),
                      progress=False, embedder=hash_embedder)
    meta = json.loads((out / "meta.json").read_text())
    assert meta["num_passages"] == len(world_corpus) and meta["dim"] == 256
    assert meta["index"] == "Flat" and meta["embedder"]["path"] == "x"
    assert Path(meta["corpus"]) == Path(world_paths["corpus"]).resolve()
    r = DenseRetriever.from_index_dir(out, embedder=hash_embedder)  # corpus path from meta.json
    assert r.search([world_corpus.texts_for_embedding()[7]], 1)[0][0].id == world_corpus.ids[7]
    other = _write(tmp_path, GOOD)
    with pytest.raises(ValueError, match="meta.json was built from .* but .* has 2"):
        DenseRetriever.from_index_dir(out, corpus_path=other, embedder=hash_embedder)


def test_index_notices_a_corpus_edited_with_the_same_line_count(tmp_path, world_paths, hash_embedder):
    """The index records the corpus's content hash (the store's, equal to the in-memory corpus's):
    one passage's text changed, same number of lines, is refused with the reason."""
    from search_e1.retrieval import load_corpus
    from search_e1.retrieval.store import open_corpus_store

    corpus = tmp_path / "corpus.jsonl"
    lines = Path(world_paths["corpus"]).read_text().splitlines()
    corpus.write_text("\n".join(lines) + "\n")
    out = build_index(corpus, tmp_path / "idx", EmbedderConfig(path="x"), progress=False, embedder=hash_embedder)
    meta = json.loads((out / "meta.json").read_text())
    assert meta["corpus_hash"] == open_corpus_store(corpus, progress=False).content_hash == \
        load_corpus(corpus).content_hash
    DenseRetriever.from_index_dir(out, embedder=hash_embedder)  # unchanged: loads
    record = json.loads(lines[5])
    record["contents"] += " (edited)"
    lines[5] = json.dumps(record)
    corpus.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match="same count, .* but another content hash\\): the corpus was edited"):
        DenseRetriever.from_index_dir(out, embedder=hash_embedder)


def test_retriever_config_validation(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="RetrieverConfig.corpus"):
        RetrieverConfig(corpus="")
    cfg = RetrieverConfig(corpus=str(tmp_path / "c.jsonl"), embedder={"pooling": "cls"})
    assert isinstance(cfg.embedder, EmbedderConfig) and cfg.embedder.pooling == "cls"
    assert cfg.resolved_index_dir() == tmp_path / "index"


def test_build_retriever_builds_once_and_checks(tmp_path, world_paths, tiny_bert_dir) -> None:
    emb = EmbedderConfig(path=str(tiny_bert_dir))
    cfg = RetrieverConfig(corpus=str(world_paths["corpus"]), index_dir=str(tmp_path / "ix"),
                          embedder=emb, build_if_missing=False)
    with pytest.raises(FileNotFoundError, match=f"no index in {tmp_path / 'ix'}"):
        build_retriever(cfg)
    cfg.build_if_missing = True
    r = build_retriever(cfg, progress=False)
    assert len(r.search(["In which city was anyone born?"], 4)[0]) == 4
    stamp = (tmp_path / "ix" / "index.faiss").stat().st_mtime_ns
    build_retriever(cfg, progress=False)  # loads, does not rebuild
    assert (tmp_path / "ix" / "index.faiss").stat().st_mtime_ns == stamp
    bad = RetrieverConfig(corpus=cfg.corpus, index_dir=cfg.index_dir,
                          embedder=EmbedderConfig(path=str(tiny_bert_dir), pooling="cls"))
    with pytest.raises(ValueError, match="pooling='cls' .index: 'mean'."):
        build_retriever(bad)
    other = _write(tmp_path, GOOD)
    with pytest.raises(ValueError, match="belongs to another corpus"):
        build_retriever(RetrieverConfig(corpus=str(other), index_dir=cfg.index_dir, embedder=emb))


# ---------------------------------------------------------------- the real MiniLM
@pytest.mark.slow
def test_minilm_passage_text_queries_hit_their_passage(demo_retriever, world_corpus) -> None:
    texts = world_corpus.texts_for_embedding()
    results = demo_retriever.search(texts, topk=1)
    assert [r[0].id for r in results] == world_corpus.ids


@pytest.mark.slow
def test_minilm_single_hop_recall_at_3(demo_retriever, world_paths) -> None:
    questions = [q for s in ("train", "val", "test") for q in _read(world_paths[s])
                 if q["metadata"]["hops"] == 1]
    results = demo_retriever.search([q["question"] for q in questions], topk=3)
    hits = [q["metadata"]["supporting_ids"][0] in {p.id for p in r}
            for q, r in zip(questions, results, strict=True)]
    assert len(hits) == 100
    assert sum(hits) / len(hits) >= 0.95  # measured 1.00 on seeds 0 (sizes 100, 200 and 2000)


@pytest.mark.slow
def test_minilm_index_dir_round_trip(minilm_index_dir: Path, world_corpus) -> None:
    """from_index_dir alone (corpus and embedder config from meta.json) finds the same passages."""
    r = DenseRetriever.from_index_dir(minilm_index_dir)
    assert r.embedder.cfg.path == "minilm" and len(r.corpus) == len(world_corpus)
    top = r.search(["In which country is the city of nowhere?"], 3)[0]
    assert len(top) == 3 and top[0].score >= top[1].score >= top[2].score


def _read(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f]

"""Retrieval at wiki-18 scale, on small generated worlds: the memory-mapped corpus store, every
faiss index kind, memory-mapped loading, resumable sharded indexing, and Search-R1's bare index
files. No model is loaded: the encoder is the hashing encoder of conftest, rotated by a fixed
random orthogonal matrix (inner products unchanged, so Flat results are those of the hashing
encoder; the components become dense, as real embeddings are, which quantisers need).

The GPU path (IndexConfig.gpu: fp16 shards over GPUs) needs faiss-gpu and CUDA and is not run
here; only its refusal on faiss-cpu is.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import HashEmbedder

from search_e1.demo_world import write_world
from search_e1.retrieval import (
    CorpusFormatError,
    DenseRetriever,
    EmbedderConfig,
    RetrieverConfig,
    build_index,
    build_retriever,
    load_corpus,
)
from search_e1.retrieval import dense as dense_module
from search_e1.retrieval.base import Passage
from search_e1.retrieval.index import (
    IndexConfig,
    IndexConfigError,
    IndexMismatchError,
    apply_search_params,
    build_flat_index,
    import_faiss,
    index_to_gpus,
    load_index,
    open_index,
    save_index,
)
from search_e1.retrieval.store import (
    CorpusStore,
    CorpusStoreError,
    convert_corpus,
    default_store_dir,
    open_corpus_store,
)

ROOT = Path(__file__).resolve().parents[1]


class RotatedHash:
    """HashEmbedder times a fixed random orthogonal matrix; counts passage calls; can be made to
    fail after ``fail_after`` passage calls (a killed indexing run)."""

    def __init__(self, dim: int = 64, fail_after: int | None = None) -> None:
        self.inner = HashEmbedder(dim)
        q, _ = np.linalg.qr(np.random.default_rng(1).standard_normal((dim, dim)))
        self.rotation = q.astype(np.float32)  # [D, D], orthogonal
        self.fail_after = fail_after
        self.passage_calls = 0

    @property
    def dim(self) -> int:
        return self.inner.dim

    def encode(self, texts: list[str], kind: str = "query", progress: bool = False) -> np.ndarray:
        if kind == "passage":
            if self.fail_after is not None and self.passage_calls >= self.fail_after:
                raise KeyboardInterrupt("killed")
            self.passage_calls += 1
        return self.inner.encode(texts, kind) @ self.rotation  # [N, D]


# ---------------------------------------------------------------- corpus store
UNICODE = [
    {"id": "ü-1", "contents": '"Zoë 北京"\nNaïve café — emoji 🚀 and “quotes”.'},
    {"id": 9077, "contents": '"Tab\there"\nline one\nline two with "escaped" quotes'},
    {"id": "no-title", "contents": "no title line at all"},
    {"id": "empty", "contents": ""},
    {"id": "sep", "contents": '"U+2028"\ntext\u2028with line separator, NUL \u0000 and é\u0301'},
]


@pytest.fixture(scope="module")
def unicode_corpus(tmp_path_factory) -> Path:
    """The seed-0 size-100 world plus tricky lines, with blank lines in between."""
    world = write_world(tmp_path_factory.mktemp("uworld"), seed=0, size=100)
    lines = world["corpus"].read_text(encoding="utf-8").splitlines()
    lines[3:3] = ["", "   "]
    lines += [json.dumps(r, ensure_ascii=k % 2 == 0) for k, r in enumerate(UNICODE)]
    path = world["corpus"].with_name("mixed.jsonl")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_store_returns_exactly_the_jsonl_passages(unicode_corpus: Path, tmp_path: Path) -> None:
    corpus = load_corpus(unicode_corpus)
    store = convert_corpus(unicode_corpus, tmp_path / "s", progress=False)
    assert len(store) == len(corpus) == 162 and store.path == str(unicode_corpus.resolve())
    assert list(store) == list(corpus)  # ids, titles, texts (unicode, empty, no title)
    assert [store.contents_at(i) for i in range(len(store))] == corpus.contents
    assert list(store.ids) == corpus.ids and store.ids[-5:] == corpus.ids[-5:]
    rows = [160, 0, 157, -1]
    assert store.get_by_position(rows, [0.5, 0.25, 1.0, 2.0]) == corpus.get_by_position(
        rows, [0.5, 0.25, 1.0, 2.0])
    assert store.get_by_position(np.array([3, 3])) == [corpus[3], corpus[3]]
    assert store[157] == Passage("ü-1", "Zoë 北京", "Naïve café — emoji 🚀 and “quotes”.")
    assert store.get_by_id("9077").text == 'line one\nline two with "escaped" quotes'
    assert store.position("sep") == 161 and "ü-1" in store.ids and "nope" not in store.ids
    for fmt in ("title_text", "contents"):
        assert store.texts_for_embedding(format=fmt) == corpus.texts_for_embedding(format=fmt)
        assert store.texts_for_embedding(10, 13, fmt) == corpus.texts_for_embedding(10, 13, fmt)
    with pytest.raises(IndexError):
        store.get_by_position([162])
    with pytest.raises(KeyError):
        store.position("nope")
    again = pickle.loads(pickle.dumps(store))  # maps do not pickle: reopened by path
    assert again[157] == store[157] and CorpusStore.open(tmp_path / "s")[0] == corpus[0]


def test_open_corpus_store_converts_once_and_again_when_changed(tmp_path: Path) -> None:
    src = tmp_path / "wiki.jsonl"
    src.write_text('{"id": "a", "contents": "\\"A\\"\\nfirst"}\n', encoding="utf-8")
    assert default_store_dir(src) == tmp_path / "wiki.store"
    store = open_corpus_store(src, progress=False)
    stamp = (tmp_path / "wiki.store" / "store.json").stat().st_mtime_ns
    assert len(open_corpus_store(src, progress=False)) == 1  # reopened, not converted
    assert (tmp_path / "wiki.store" / "store.json").stat().st_mtime_ns == stamp
    with open(src, "a", encoding="utf-8") as f:
        f.write('{"id": "b", "contents": "\\"B\\"\\nsecond"}\n')
    store = open_corpus_store(src, progress=False)  # the jsonl changed: converted again
    assert [p.text for p in store] == ["first", "second"]
    src.unlink()  # the store alone is enough
    assert len(open_corpus_store(src, progress=False)) == 2
    assert not [p for p in (tmp_path / "wiki.store").iterdir() if ".tmp" in p.name]


GOOD = ['{"id": "0", "contents": "\\"Ada\\"\\nAda was a poet."}',
        '{"id": 1, "contents": "\\"Bob\\"\\nBob was a cook."}']


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ('{"id": "2", "contents": ', "invalid JSON"),
        ('["2", "text"]', "expected a JSON object"),
        ('{"id": "2", "text": "no contents"}', 'missing "contents"'),
        ('{"id": "2", "contents": 7}', '"contents" must be a string, got int'),
        ('{"id": null, "contents": "x"}', '"id" must be a string or an integer'),
        ('{"id": "0", "contents": "again"}', "duplicate id '0' (first on line 1)"),
    ],
)
def test_store_conversion_errors_name_the_line(tmp_path: Path, bad: str, message: str) -> None:
    # the same lines and messages as load_corpus: line 2 blank, line 4 bad
    path = tmp_path / "c.jsonl"
    path.write_text("\n".join([GOOD[0], "", GOOD[1], bad, '{"id": "9", "contents": "x"}']) + "\n")
    with pytest.raises(CorpusFormatError) as err:
        convert_corpus(path, tmp_path / "s", progress=False)
    assert str(err.value).startswith(f"{path}:4: ") and message in str(err.value)
    assert os.listdir(tmp_path / "s") == []  # no store.json, no temporary files left


def test_store_reports_the_first_problem_in_file_order(tmp_path: Path) -> None:
    path = tmp_path / "c.jsonl"
    path.write_bytes(("\n".join([GOOD[0], GOOD[1], '{"id": 1, "contents": "dup"}', "{bad"])
                      + "\n").encode() + b'{"id": "x", "contents": "\xff"}\n')
    with pytest.raises(CorpusFormatError, match=r"c.jsonl:3: duplicate id '1' \(first on line 2"):
        convert_corpus(path, tmp_path / "s", progress=False)
    path.write_bytes(b'{"id": "x", "contents": "caf\xe9"}\n')
    with pytest.raises(CorpusFormatError, match="c.jsonl:1: not UTF-8"):
        convert_corpus(path, tmp_path / "s", progress=False)


def test_incomplete_store_is_refused(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no corpus store in .*convert_corpus"):
        CorpusStore.open(tmp_path)
    src = tmp_path / "c.jsonl"
    src.write_text("\n".join(GOOD) + "\n")
    convert_corpus(src, tmp_path / "s", progress=False)
    with open(tmp_path / "s" / "contents.bin", "ab") as f:
        f.write(b"x")
    with pytest.raises(CorpusStoreError, match="contents.bin does not match .*delete"):
        CorpusStore.open(tmp_path / "s")


# ---------------------------------------------------------------- index kinds
@pytest.fixture(scope="module")
def big_world(tmp_path_factory) -> dict:
    """2,041 passages (seed 0, size 1300), their store, and the Flat top hit of every 7th one."""
    paths = write_world(tmp_path_factory.mktemp("big"), seed=0, size=1300)
    store = open_corpus_store(paths["corpus"], progress=False)
    enc = RotatedHash(64)
    queries = store.texts_for_embedding()[::7]  # 292 queries that ARE corpus passages
    flat = build_flat_index(enc.encode(store.texts_for_embedding(), "passage"))
    _, top = flat.search(enc.encode(queries, "query"), 1)
    return {"corpus": paths["corpus"], "store": store, "enc": enc, "queries": queries,
            "flat_top": [store.id_at(int(i)) for i in top[:, 0]]}


# kind, whether its top hit must equal Flat's for every query (else, for the lossy PQ codes:
# Flat's top hit among its top 3 for every query, and its top hit for >= 98%; measured 99.3% and
# 99.7%). 4-bit PQ (x4) trains in about a second here; 8-bit PQ codes take ~12 s on 2 cores.
KINDS = [("Flat", True), ("IVF16,Flat", True), ("SQ8", True), ("HNSW32", True),
         ("IVF16,PQ32x4", False), ("OPQ32,IVF16,PQ32x4", False)]


@pytest.mark.parametrize(("factory", "exact"), KINDS, ids=[k for k, _ in KINDS])
def test_every_index_kind_finds_the_flat_top_hit(big_world, tmp_path, factory, exact) -> None:
    cfg = IndexConfig(factory=factory, train_sample=1000, nprobe=16, ef_search=64,
                      shard_size=512, keep_shards=True)
    out = build_index(big_world["corpus"], tmp_path / "ix", EmbedderConfig(path="hash"),
                      progress=False, embedder=big_world["enc"], corpus=big_world["store"],
                      index=cfg)
    meta = json.loads((out / "meta.json").read_text())
    assert meta["index"] == factory and meta["index_config"]["train_sample"] == 1000
    assert len(list((out / "shards").glob("shard_*.npy"))) == 4  # 2041 / 512
    r = DenseRetriever.from_index_dir(out, embedder=big_world["enc"], corpus=big_world["store"],
                                      index=cfg)
    hits = [[p.id for p in h] for h in r.search(big_world["queries"], 3)]
    top1 = np.mean([h[0] == f for h, f in zip(hits, big_world["flat_top"], strict=True)])
    if exact:
        assert top1 == 1.0
    else:
        assert all(f in h for h, f in zip(hits, big_world["flat_top"], strict=True))
        assert top1 >= 0.98


def test_search_knobs_reach_the_index(tmp_path: Path) -> None:
    faiss = import_faiss()
    x = np.random.default_rng(0).standard_normal((400, 16)).astype(np.float32)  # [N, D]
    cfg = IndexConfig(nprobe=7, ef_search=33)
    ivf = faiss.index_factory(16, "OPQ4,IVF8,Flat", faiss.METRIC_INNER_PRODUCT)
    ivf.train(x)
    hnsw = faiss.index_factory(16, "HNSW8", faiss.METRIC_INNER_PRODUCT)
    assert apply_search_params(ivf, cfg) == ["nprobe"]
    assert faiss.extract_index_ivf(ivf).nprobe == 7  # reached through the OPQ transform
    assert apply_search_params(hnsw, cfg) == ["efSearch"] and hnsw.hnsw.efSearch == 33
    assert apply_search_params(faiss.IndexFlatIP(16), cfg) == []


def test_mmap_loaded_flat_equals_in_memory(big_world, tmp_path) -> None:
    enc, store = big_world["enc"], big_world["store"]
    path = save_index(build_flat_index(enc.encode(store.texts_for_embedding(), "passage")),
                      tmp_path / "e5_Flat.index")
    q = enc.encode(big_world["queries"][:50], "query")  # [50, D]
    in_memory, mapped = open_index(path), open_index(path, IndexConfig(mmap=True))
    d0, i0 = in_memory.search(q, 5)
    d1, i1 = mapped.search(q, 5)
    np.testing.assert_array_equal(i0, i1)
    np.testing.assert_array_equal(d0, d1)
    a = DenseRetriever(enc, in_memory, store).search(big_world["queries"][:20], 4)
    b = DenseRetriever(enc, mapped, store).search(big_world["queries"][:20], 4)
    assert a == b


def test_index_config_errors_name_the_field(tmp_path: Path) -> None:
    for kwargs, field in [({"factory": " "}, "factory"), ({"metric": "cosine"}, "metric"),
                          ({"nprobe": 0}, "nprobe"), ({"train_sample": -1}, "train_sample"),
                          ({"shard_dtype": "int8"}, "shard_dtype")]:
        with pytest.raises(IndexConfigError, match=f"IndexConfig.{field}"):
            IndexConfig(**kwargs)
    src = tmp_path / "c.jsonl"
    src.write_text("\n".join(GOOD) + "\n")
    with pytest.raises(IndexConfigError, match="IndexConfig.factory 'IVF4,Nope'"):
        build_index(src, tmp_path / "a", progress=False, embedder=RotatedHash(16),
                    index=IndexConfig(factory="IVF4,Nope"))
    with pytest.raises(IndexConfigError, match="training on 2 vectors failed.*train_sample"):
        build_index(src, tmp_path / "b", progress=False, embedder=RotatedHash(16),
                    index=IndexConfig(factory="IVF4,Flat"))
    if not hasattr(import_faiss(), "StandardGpuResources"):  # faiss-cpu: a clear refusal
        with pytest.raises(IndexConfigError, match="IndexConfig.gpu .*faiss-gpu"):
            index_to_gpus(build_flat_index(np.eye(4, dtype=np.float32)), IndexConfig(gpu=True))


# ---------------------------------------------------------------- resumable indexing
@pytest.mark.parametrize("factory", ["Flat", "IVF4,Flat"])
def test_killed_build_resumes_without_reencoding(world_paths, tmp_path, factory) -> None:
    corpus = world_paths["corpus"]  # 157 passages: 5 shards of 32
    cfg = IndexConfig(factory=factory, shard_size=32, train_sample=100, keep_shards=True)
    emb_cfg = EmbedderConfig(path="hash")
    reference = build_index(corpus, tmp_path / "ref", emb_cfg, False, embedder=RotatedHash(),
                            index=cfg)
    killed = RotatedHash(fail_after=2)
    with pytest.raises(KeyboardInterrupt):
        build_index(corpus, tmp_path / "ix", emb_cfg, False, embedder=killed, index=cfg)
    shards = tmp_path / "ix" / "shards"
    assert sorted(p.name for p in shards.iterdir()) == [
        "manifest.json", "shard_00000.npy", "shard_00001.npy"]  # no partial shard, no meta
    assert not (tmp_path / "ix" / "meta.json").exists()
    resumed = RotatedHash()
    build_index(corpus, tmp_path / "ix", emb_cfg, False, embedder=resumed, index=cfg)
    assert resumed.passage_calls == 3  # shards 2, 3, 4 only
    for k in range(5):
        name = f"shard_{k:05d}.npy"
        assert (shards / name).read_bytes() == (reference / "shards" / name).read_bytes()
    faiss = import_faiss()
    a, b = load_index(reference), load_index(tmp_path / "ix")
    np.testing.assert_array_equal(faiss.serialize_index(a), faiss.serialize_index(b))
    # all shards there: no encoder is even loaded (this model path does not exist)
    build_index(corpus, tmp_path / "ix", EmbedderConfig(path=str(tmp_path / "no-model")), False,
                index=cfg)
    with pytest.raises(IndexMismatchError, match="passage_format='contents' .shards: 'title_text'"):
        build_index(corpus, tmp_path / "ix", EmbedderConfig(path="hash", passage_format="contents"),
                    False, embedder=resumed, index=cfg)


# ---------------------------------------------------------------- Search-R1 files
class _FakeEmbedderFactory:
    """Stands in for dense.Embedder: hands out one RotatedHash, or fails if ``forbidden``."""

    def __init__(self, forbidden: bool = False) -> None:
        self.forbidden = forbidden
        self.made: list[RotatedHash] = []

    def __call__(self, cfg: EmbedderConfig) -> RotatedHash:
        assert not self.forbidden, "the encoder was loaded"
        self.made.append(RotatedHash())
        return self.made[-1]


def _search_r1_layout(world_paths, tmp_path: Path, rows: int | None = None) -> Path:
    """wiki-18.jsonl + e5_Flat.index (a bare faiss file) in one directory, as Search-R1 ships."""
    d = tmp_path / "search-r1"
    d.mkdir()
    shutil.copy(world_paths["corpus"], d / "wiki-18.jsonl")
    contents = load_corpus(d / "wiki-18.jsonl").texts_for_embedding(format="contents")
    vectors = RotatedHash().encode(contents[:rows], "passage")  # [N, D]
    save_index(build_flat_index(vectors), d / "e5_Flat.index")
    return d


def test_search_r1_bare_index_loads_without_encoding(world_paths, tmp_path, monkeypatch) -> None:
    d = _search_r1_layout(world_paths, tmp_path)
    factory = _FakeEmbedderFactory()
    monkeypatch.setattr(dense_module, "Embedder", factory)
    cfg = RetrieverConfig(corpus=str(d / "wiki-18.jsonl"), index_path=str(d / "e5_Flat.index"),
                          embedder=EmbedderConfig.e5(str(tmp_path / "e5-base-v2"), device="cpu"),
                          index=IndexConfig(mmap=True), build_if_missing=False)
    r = build_retriever(cfg, progress=False)
    assert factory.made[0].passage_calls == 0  # nothing re-encoded
    assert sorted(p.name for p in d.iterdir()) == ["e5_Flat.index", "wiki-18.jsonl",
                                                   "wiki-18.store"]
    store = open_corpus_store(d / "wiki-18.jsonl")
    queries = store.texts_for_embedding(0, 40, "contents")
    assert [h[0].id for h in r.search(queries, 2)] == list(store.ids[:40])


def test_search_r1_index_of_another_corpus_is_a_clear_error(world_paths, tmp_path,
                                                            monkeypatch) -> None:
    d = _search_r1_layout(world_paths, tmp_path, rows=100)
    monkeypatch.setattr(dense_module, "Embedder", _FakeEmbedderFactory(forbidden=True))
    cfg = RetrieverConfig(corpus=str(d / "wiki-18.jsonl"), index_path=str(d / "e5_Flat.index"))
    with pytest.raises(IndexMismatchError, match=r"e5_Flat.index has 100 rows but the corpus "
                       r".*wiki-18.jsonl has 157 passages"):
        build_retriever(cfg, progress=False)  # before any encoder is loaded
    with pytest.raises(FileNotFoundError, match="RetrieverConfig.index_path"):
        build_retriever(RetrieverConfig(corpus=cfg.corpus, index_path=str(d / "nope.index")))


def test_build_retriever_builds_the_configured_kind_over_the_store(world_paths, tmp_path,
                                                                   monkeypatch) -> None:
    factory = _FakeEmbedderFactory()
    monkeypatch.setattr(dense_module, "Embedder", factory)
    cfg = RetrieverConfig(corpus=str(world_paths["corpus"]), index_dir=str(tmp_path / "hnsw"),
                          store_dir=str(tmp_path / "store"), embedder=EmbedderConfig(path="hash"),
                          index=IndexConfig(factory="HNSW32", ef_search=16))
    r = build_retriever(cfg, progress=False)
    assert isinstance(r.corpus, CorpusStore) and (tmp_path / "store" / "store.json").is_file()
    assert type(r.index).__name__ == "IndexHNSWFlat" and r.index.hnsw.efSearch == 16
    assert not (tmp_path / "hnsw" / "shards").exists()  # removed after a finished build
    assert len(factory.made) == 1 and factory.made[0].passage_calls == 1  # 157 passages, 1 call
    texts = r.corpus.texts_for_embedding(0, 20)
    assert [h[0].id for h in r.search(texts, 1)] == list(r.corpus.ids[:20])


def test_e5_preset_and_its_config_file() -> None:
    e5 = EmbedderConfig.e5("/models/e5-base-v2")
    assert (e5.pooling, e5.query_prefix, e5.passage_prefix, e5.normalize) == (
        "mean", "query: ", "passage: ", True)
    assert (e5.device, e5.dtype, e5.passage_format, e5.max_length) == (
        "cuda", "float16", "contents", 256)
    assert EmbedderConfig.e5("x", device="cpu", batch_size=8).dtype == "float32"
    path = ROOT / "conf" / "retrieval" / "e5-base-v2.yaml"
    cfg = RetrieverConfig(**yaml.safe_load(path.read_text())["data"]["retriever"])
    assert cfg.index.mmap and cfg.index_path.endswith("e5_Flat.index")
    assert cfg.embedder == EmbedderConfig.e5("/models/e5-base-v2", batch_size=512)


def test_e5_config_file_merges_through_the_cli(capsys) -> None:
    from search_e1.cli import main

    with pytest.raises(SystemExit):
        main(["fit", "--config", str(ROOT / "conf" / "qwen2.5-3b-8gpu.yaml"), "--config",
              str(ROOT / "conf" / "retrieval" / "e5-base-v2.yaml"), "--print_config"])
    retriever = yaml.safe_load(capsys.readouterr().out)["data"]["retriever"]
    assert retriever["index_path"] == "/data/wiki-18/e5_Flat.index"
    assert retriever["index"]["gpu"] and retriever["embedder"]["passage_format"] == "contents"


def test_opq_with_fewer_training_vectors_than_dimensions_is_refused(tmp_path) -> None:
    """faiss would abort the process; we refuse with a clear error instead."""
    from search_e1.retrieval.index import train_and_add

    shard = tmp_path / "shard_00000.npy"
    np.save(shard, np.random.default_rng(0).standard_normal((20, 32)).astype("float32"))
    with pytest.raises(IndexConfigError, match="OPQ needs at least 32 training vectors"):
        train_and_add([shard], 32, IndexConfig(factory="OPQ4,IVF2,Flat"), progress=False)

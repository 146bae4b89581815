"""Dense retrieval in process: encode queries, search a faiss index, map rows back to passages.

`DenseRetriever` implements the `Retriever` protocol over an encoder, a faiss index and the
passages it was built from (a memory-mapped `CorpusStore`, or an in-memory `Corpus` for small
cases). `build_retriever(RetrieverConfig(...))` is the one-call path used by the data module and
the CLI: it opens the corpus store (converting the jsonl on first use), finds (or builds) the
index, checks that the index belongs to this corpus and this encoder, and returns the retriever.
An index comes either from an index directory (index.faiss + meta.json, built by
`build_index`) or from a bare faiss file built elsewhere (``index_path``, e.g. Search-R1's
``e5_Flat.index`` with its ``wiki-18.jsonl``), used as it is without encoding anything.

How it departs from Search-R1: Search-R1's ``retrieval_server.py`` only runs as an HTTP service
and trusts that the index, corpus and encoder flags agree; here the retriever also runs in the
trainer's process (no server for small corpora and tests), and a mismatched corpus (passage
count) or encoder (pooling, prefixes, normalisation, dim) is an error at load time instead of
silently wrong passages. With a bare index file only the count and dim can be checked.

Run::

    from search_e1.retrieval import EmbedderConfig, IndexConfig, RetrieverConfig, build_retriever
    retriever = build_retriever(RetrieverConfig(corpus="demo/world/corpus.jsonl"))
    retriever.search(["Who founded Zorvex Labs?"], topk=3)
    search_r1 = build_retriever(RetrieverConfig(       # Search-R1's files, nothing re-encoded
        corpus="wiki-18.jsonl", index_path="e5_Flat.index",
        embedder=EmbedderConfig.e5("e5-base-v2"), index=IndexConfig(mmap=True)))
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from search_e1.errors import UserInputError
from search_e1.retrieval.base import Passage
from search_e1.retrieval.corpus import PassageSource
from search_e1.retrieval.embedder import (
    Embedder,
    EmbedderConfig,
    TextEncoder,
    resolve_embedder_path,
)
from search_e1.retrieval.http import HTTPRetriever, HTTPRetrieverConfig, RetrievalServiceError
from search_e1.retrieval.index import (
    INDEX_FILE,
    META_FILE,
    VECTOR_FIELDS,
    IndexConfig,
    IndexMismatchError,
    build_index,
    import_faiss,
    open_index,
    read_meta,
)
from search_e1.retrieval.store import open_corpus_store

if TYPE_CHECKING:  # pragma: no cover
    import faiss

__all__ = ["DenseRetriever", "RetrieverConfig", "build_retriever"]

log = logging.getLogger(__name__)

# EmbedderConfig fields that change the vectors: an index is only valid with the same values
# (max_length and dtype only shift them slightly: a built index is not refused for those)
_VECTOR_FIELDS = tuple(f for f in VECTOR_FIELDS if f not in ("max_length", "dtype"))


class DenseRetriever:
    """Top-k passages by similarity between the query vector and the passage vectors."""

    def __init__(self, embedder: TextEncoder, index: faiss.Index, corpus: PassageSource) -> None:
        _check_rows(index.ntotal, corpus, "the index")
        if index.d != embedder.dim:
            raise IndexMismatchError(f"the index has dim {index.d} but the embedder gives "
                                     f"{embedder.dim}: it was built with another encoder")
        self.embedder = embedder
        self.index = index
        self.corpus = corpus

    def search(self, queries: list[str], topk: int) -> list[list[Passage]]:
        """The ``topk`` best passages per query, best first, with float scores."""
        if isinstance(queries, str):
            raise TypeError("queries must be a list of strings, got a single string")
        if not queries:
            return []
        k = min(topk, len(self.corpus))
        if k <= 0:
            return [[] for _ in queries]
        vectors = self.embedder.encode(list(queries), "query")  # [Q, D]
        scores, rows = self.index.search(np.ascontiguousarray(vectors, dtype=np.float32), k)
        out = []
        for row_scores, row_ids in zip(scores, rows, strict=True):  # [k], [k]; -1 marks "no hit"
            keep = row_ids >= 0
            out.append(self.corpus.get_by_position(row_ids[keep].tolist(),
                                                   row_scores[keep].tolist()))
        return out

    @classmethod
    def from_index_dir(
        cls,
        index_dir: str | Path,
        corpus_path: str | Path | None = None,
        embedder: TextEncoder | None = None,
        *,
        corpus: PassageSource | None = None,
        mmap: bool = False,
        index: IndexConfig | None = None,
    ) -> DenseRetriever:
        """Load ``index_dir`` (``index.faiss`` + ``meta.json``).

        The corpus path and the embedder config come from ``meta.json`` unless ``corpus_path`` /
        ``corpus`` or ``embedder`` are given; the corpus is served from its memory-mapped store
        (converted on first use). ``index`` sets mmap, nprobe / efSearch and GPUs (``mmap=True``
        alone also maps the file). A passage count that differs from the index is an error
        naming both files.
        """
        index_dir = Path(index_dir)
        meta = read_meta(index_dir)
        if corpus is None:
            corpus = open_corpus_store(corpus_path if corpus_path is not None else meta["corpus"])
        _check_count(meta, corpus, index_dir)
        if embedder is None:
            embedder = Embedder(_embedder_config_from_meta(meta))
        icfg = index or IndexConfig()
        if mmap and not icfg.mmap:
            icfg = dataclasses.replace(icfg, mmap=True)
        return cls(embedder, open_index(index_dir / INDEX_FILE, icfg), corpus)

    @classmethod
    def from_index_file(
        cls,
        index_path: str | Path,
        corpus: PassageSource,
        embedder: TextEncoder | Callable[[], TextEncoder],
        index: IndexConfig | None = None,
    ) -> DenseRetriever:
        """Load a bare faiss file built elsewhere (Search-R1's ``e5_Flat.index``: row i = corpus
        row i, no meta.json), checking its row count before loading the encoder.

        ``embedder`` may be a callable that loads the encoder, so a mismatched corpus fails fast.
        """
        icfg = index or IndexConfig()
        _check_rows(_peek_ntotal(index_path), corpus, f"the index {index_path}")
        faiss_index = open_index(index_path, icfg)
        _check_rows(faiss_index.ntotal, corpus, f"the index {index_path}")
        if getattr(faiss_index, "metric_type", None) != import_faiss().METRIC_INNER_PRODUCT:
            log.warning("%s does not use inner product: scores are not cosine similarities",
                        index_path)
        encoder = embedder if isinstance(embedder, TextEncoder) else embedder()
        log.info("loaded %s (%d vectors) without meta.json: the encoder settings are not "
                 "checked (Search-R1's e5 index needs EmbedderConfig.e5)", index_path,
                 faiss_index.ntotal)
        return cls(encoder, faiss_index, corpus)


def _peek_ntotal(path: str | Path) -> int | None:
    """The row count of an index file without reading it (memory-mapped); None if unknown."""
    try:
        return int(open_index(path, IndexConfig(mmap=True)).ntotal)
    except RuntimeError:  # a kind faiss cannot map
        return None


def _check_rows(ntotal: int | None, corpus: PassageSource, what: str) -> None:
    if ntotal is not None and ntotal != len(corpus):
        raise IndexMismatchError(
            f"{what} has {ntotal} rows but the corpus {corpus.path or ''} has {len(corpus)} "
            "passages: row i of the index must be passage i of the corpus (Search-R1's "
            "e5_Flat.index goes with its wiki-18.jsonl)")


def _check_count(meta: dict[str, Any], corpus: PassageSource, index_dir: Path) -> None:
    """The index was built from this corpus: same passage count, and the same content hash when
    both record one (an edit that keeps the line count is noticed)."""
    if meta["num_passages"] != len(corpus):
        raise IndexMismatchError(
            f"{index_dir / META_FILE} was built from {meta['num_passages']} passages "
            f"({meta['corpus']}) but {corpus.path} has {len(corpus)}: the index belongs to "
            f"another corpus; delete {index_dir} to rebuild it"
        )
    built, now = meta.get("corpus_hash"), getattr(corpus, "content_hash", None)
    if built and now and built != now:
        raise IndexMismatchError(
            f"{index_dir / META_FILE} was built from other passages than {corpus.path} holds now (same "
            f"count, {len(corpus)}, but another content hash): the corpus was edited; delete {index_dir} "
            "to rebuild it")


def _embedder_config_from_meta(meta: dict[str, Any]) -> EmbedderConfig:
    known = {f.name for f in dataclasses.fields(EmbedderConfig)}
    return EmbedderConfig(**{k: v for k, v in meta["embedder"].items() if k in known})


def _check_embedder(meta: dict[str, Any], cfg: EmbedderConfig, index_dir: Path) -> None:
    """Refuse an encoder whose vectors differ from the index's; warn on a different model path."""
    built = meta.get("embedder", {})
    bad = [f"{name}={getattr(cfg, name)!r} (index: {built[name]!r})"
           for name in _VECTOR_FIELDS if name in built and built[name] != getattr(cfg, name)]
    if bad:
        raise IndexMismatchError(f"embedder settings differ from those {index_dir} was built "
                                 f"with: {', '.join(bad)}; use the index's settings or rebuild "
                                 "the index")
    if "path" in built and _same_model(built["path"], cfg.path) is False:
        log.warning("index %s was built with embedder %s, queries use %s", index_dir,
                    built["path"], cfg.path)


def _same_model(a: str, b: str) -> bool | None:
    try:
        return resolve_embedder_path(a) == resolve_embedder_path(b)
    except FileNotFoundError:
        return None if a == b else False


RETRIEVER_KINDS = ("dense", "http")


@dataclass
class RetrieverConfig:
    """The retriever: in-process dense search (corpus, index, query encoder) or a retrieval service."""

    kind: str = "dense"
    """dense: this process searches corpus + index; http: a `search-e1 serve` (or Search-R1) service at http.url."""
    corpus: str | None = None
    """Path of the wiki-18 style corpus jsonl (kind dense)."""
    index_dir: str | None = None
    """Directory of index.faiss + meta.json (built when missing); None: "<corpus dir>/index"."""
    index_path: str | None = None
    """A bare faiss file made elsewhere (Search-R1's e5_Flat.index), used as is; beats index_dir."""
    store_dir: str | None = None
    """Corpus store (converted from the jsonl on first use); None: "<corpus stem>.store" by it."""
    embedder: EmbedderConfig = field(default_factory=EmbedderConfig)
    """Encoder for queries (and for passages when the index is built)."""
    index: IndexConfig = field(default_factory=IndexConfig)
    """Index kind and build knobs, and how to search it (mmap, nprobe, efSearch, GPUs)."""
    build_if_missing: bool = True
    """Build the index when index_dir has none (slow for big corpora), else raise."""
    mmap: bool = False
    """Memory-map the index file (same as index.mmap; kept for older configs)."""
    http: HTTPRetrieverConfig = field(default_factory=HTTPRetrieverConfig)
    """The service's URL, timeout and retries (kind http); several trainers can share one service."""

    def __post_init__(self) -> None:
        if self.kind not in RETRIEVER_KINDS:
            raise ValueError(f"RetrieverConfig.kind: expected one of {list(RETRIEVER_KINDS)}, got {self.kind!r}")
        if self.kind == "dense" and not self.corpus:
            raise ValueError("RetrieverConfig.corpus must be the path of a corpus jsonl file (kind dense)")
        for name in ("index_dir", "store_dir"):
            path = getattr(self, name)
            if path and Path(path).exists() and not Path(path).is_dir():
                raise ValueError(f"RetrieverConfig.{name}: {path} is an existing file; expected a directory")
        if isinstance(self.http, dict):
            self.http = HTTPRetrieverConfig(**self.http)
        if isinstance(self.embedder, dict):  # from plain YAML / OmegaConf containers
            self.embedder = EmbedderConfig(**self.embedder)
        if not isinstance(self.embedder, EmbedderConfig):
            raise TypeError(f"RetrieverConfig.embedder must be an EmbedderConfig, "
                            f"got {type(self.embedder).__name__}")
        if isinstance(self.index, dict):
            self.index = IndexConfig(**self.index)
        if not isinstance(self.index, IndexConfig):
            raise TypeError(f"RetrieverConfig.index must be an IndexConfig, "
                            f"got {type(self.index).__name__}")

    def resolved_index_dir(self) -> Path:
        """``index_dir``, or ``index/`` beside the corpus when it is None."""
        return Path(self.index_dir) if self.index_dir else Path(self.corpus).parent / "index"

    def index_config(self) -> IndexConfig:
        """``index`` with ``mmap`` turned on when either field asks for it."""
        return dataclasses.replace(self.index, mmap=True) if self.mmap else self.index


def build_retriever(cfg: RetrieverConfig, progress: bool = True) -> DenseRetriever | HTTPRetriever:
    """The retriever of ``cfg``: a client of the service (kind http), or the dense retriever, its
    index built first when missing and allowed."""
    if cfg.kind == "http":
        log.info("retrieval service at %s", cfg.http.url)
        client = HTTPRetriever.from_config(cfg.http)
        try:  # one search now: a service that is not there is named before any work starts
            client.search(["search-e1 connection check"], 1)
        except RetrievalServiceError as err:
            client.close()
            raise UserInputError(f"data.retriever.http.url: {err}; start the service (search-e1 serve --config "
                                 "...) or point the url at a running one") from None
        return client
    assert cfg.corpus is not None  # checked by RetrieverConfig
    store = open_corpus_store(cfg.corpus, cfg.store_dir, progress=progress)
    if cfg.index_path:
        if not Path(cfg.index_path).is_file():
            raise FileNotFoundError(f"RetrieverConfig.index_path: no such file {cfg.index_path}")
        return DenseRetriever.from_index_file(cfg.index_path, store,
                                              lambda: Embedder(cfg.embedder), cfg.index_config())
    index_dir = cfg.resolved_index_dir()
    embedder: Embedder | None = None
    if not ((index_dir / META_FILE).is_file() and (index_dir / INDEX_FILE).is_file()):
        if not cfg.build_if_missing:
            raise FileNotFoundError(
                f"no index in {index_dir} (needs {INDEX_FILE} and {META_FILE}); build it with "
                f"search_e1.retrieval.build_index or set build_if_missing=True"
            )
        log.info("no index in %s: building it from %s", index_dir, cfg.corpus)
        embedder = Embedder(cfg.embedder)
        build_index(cfg.corpus, index_dir, cfg.embedder, progress, embedder=embedder,
                    corpus=store, index=cfg.index)
    meta = read_meta(index_dir)
    _check_count(meta, store, index_dir)  # before loading an encoder for nothing
    _check_embedder(meta, cfg.embedder, index_dir)
    if meta.get("index", "Flat") != cfg.index.factory:
        log.warning("the index in %s is %r (meta.json); index.factory %r applies only when "
                    "building", index_dir, meta.get("index"), cfg.index.factory)
    return DenseRetriever.from_index_dir(index_dir, embedder=embedder or Embedder(cfg.embedder),
                                         corpus=store, index=cfg.index_config())

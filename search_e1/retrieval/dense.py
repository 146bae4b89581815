"""Dense retrieval in process: encode queries, search a faiss index, map rows back to passages.

`DenseRetriever` implements the `Retriever` protocol over an encoder, a faiss index and the
`Corpus` it was built from. `build_retriever(RetrieverConfig(...))` is the one-call path used by
the data module and the CLI: it finds (or builds) the index directory next to the corpus, checks
that the index belongs to this corpus and this encoder, and returns the retriever.

How it departs from Search-R1: Search-R1's ``retrieval_server.py`` only runs as an HTTP service
and trusts that the index, corpus and encoder flags agree; here the retriever also runs in the
trainer's process (no server for small corpora and tests), and a mismatched corpus (passage
count) or encoder (pooling, prefixes, normalisation, dim) is an error at load time instead of
silently wrong passages.

Run::

    from search_e1.retrieval import RetrieverConfig, build_retriever
    retriever = build_retriever(RetrieverConfig(corpus="demo/world/corpus.jsonl"))
    retriever.search(["Who founded Zorvex Labs?"], topk=3)
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from search_e1.retrieval.base import Passage
from search_e1.retrieval.corpus import Corpus, load_corpus
from search_e1.retrieval.embedder import (
    Embedder,
    EmbedderConfig,
    TextEncoder,
    resolve_embedder_path,
)
from search_e1.retrieval.index import (
    INDEX_FILE,
    META_FILE,
    build_index,
    load_index,
    read_meta,
)

if TYPE_CHECKING:  # pragma: no cover
    import faiss

__all__ = ["DenseRetriever", "RetrieverConfig", "build_retriever"]

log = logging.getLogger(__name__)

# EmbedderConfig fields that change the vectors: an index is only valid with the same values
_VECTOR_FIELDS = ("pooling", "query_prefix", "passage_prefix", "normalize")


class DenseRetriever:
    """Top-k passages by inner product between the query vector and the passage vectors."""

    def __init__(self, embedder: TextEncoder, index: faiss.Index, corpus: Corpus) -> None:
        if index.ntotal != len(corpus):
            raise ValueError(f"the index has {index.ntotal} rows but the corpus "
                             f"{corpus.path or ''} has {len(corpus)} passages")
        if index.d != embedder.dim:
            raise ValueError(f"the index has dim {index.d} but the embedder gives {embedder.dim}")
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
        corpus: Corpus | None = None,
        mmap: bool = False,
    ) -> DenseRetriever:
        """Load ``index_dir`` (``index.faiss`` + ``meta.json``).

        The corpus path and the embedder config come from ``meta.json`` unless ``corpus_path`` /
        ``corpus`` or ``embedder`` are given. A passage count that differs from the index is an
        error naming both files.
        """
        index_dir = Path(index_dir)
        meta = read_meta(index_dir)
        if corpus is None:
            corpus = load_corpus(corpus_path if corpus_path is not None else meta["corpus"])
        _check_count(meta, corpus, index_dir)
        if embedder is None:
            embedder = Embedder(_embedder_config_from_meta(meta))
        return cls(embedder, load_index(index_dir / INDEX_FILE, mmap=mmap), corpus)


def _check_count(meta: dict[str, Any], corpus: Corpus, index_dir: Path) -> None:
    if meta["num_passages"] != len(corpus):
        raise ValueError(
            f"{index_dir / META_FILE} was built from {meta['num_passages']} passages "
            f"({meta['corpus']}) but {corpus.path} has {len(corpus)}: the index belongs to "
            f"another corpus; delete {index_dir} to rebuild it"
        )


def _embedder_config_from_meta(meta: dict[str, Any]) -> EmbedderConfig:
    known = {f.name for f in dataclasses.fields(EmbedderConfig)}
    return EmbedderConfig(**{k: v for k, v in meta["embedder"].items() if k in known})


def _check_embedder(meta: dict[str, Any], cfg: EmbedderConfig, index_dir: Path) -> None:
    """Refuse an encoder whose vectors differ from the index's; warn on a different model path."""
    built = meta.get("embedder", {})
    bad = [f"{name}={getattr(cfg, name)!r} (index: {built[name]!r})"
           for name in _VECTOR_FIELDS if name in built and built[name] != getattr(cfg, name)]
    if bad:
        raise ValueError(f"embedder settings differ from those {index_dir} was built with: "
                         f"{', '.join(bad)}; use the index's settings or rebuild the index")
    if "path" in built and _same_model(built["path"], cfg.path) is False:
        log.warning("index %s was built with embedder %s, queries use %s", index_dir,
                    built["path"], cfg.path)


def _same_model(a: str, b: str) -> bool | None:
    try:
        return resolve_embedder_path(a) == resolve_embedder_path(b)
    except FileNotFoundError:
        return None if a == b else False


@dataclass
class RetrieverConfig:
    """An in-process dense retriever: corpus, index directory and query encoder."""

    corpus: str
    """Path of the wiki-18 style corpus jsonl."""
    index_dir: str | None = None
    """Directory with index.faiss + meta.json; None means "<corpus dir>/index"."""
    embedder: EmbedderConfig = field(default_factory=EmbedderConfig)
    """Encoder for queries (and for passages when the index is built)."""
    build_if_missing: bool = True
    """Build the index when index_dir has none (slow for big corpora), else raise."""
    mmap: bool = False
    """Memory-map index.faiss instead of reading it into memory (large indexes)."""

    def __post_init__(self) -> None:
        if not self.corpus:
            raise ValueError("RetrieverConfig.corpus must be the path of a corpus jsonl file")
        if isinstance(self.embedder, dict):  # from plain YAML / OmegaConf containers
            self.embedder = EmbedderConfig(**self.embedder)
        if not isinstance(self.embedder, EmbedderConfig):
            raise TypeError(f"RetrieverConfig.embedder must be an EmbedderConfig, "
                            f"got {type(self.embedder).__name__}")

    def resolved_index_dir(self) -> Path:
        """``index_dir``, or ``index/`` beside the corpus when it is None."""
        return Path(self.index_dir) if self.index_dir else Path(self.corpus).parent / "index"


def build_retriever(cfg: RetrieverConfig, progress: bool = True) -> DenseRetriever:
    """Load the retriever of ``cfg``, building its index first when missing and allowed."""
    index_dir = cfg.resolved_index_dir()
    corpus = load_corpus(cfg.corpus)
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
                    corpus=corpus)
    meta = read_meta(index_dir)
    _check_count(meta, corpus, index_dir)  # before loading an encoder for nothing
    _check_embedder(meta, cfg.embedder, index_dir)
    return DenseRetriever.from_index_dir(
        index_dir, embedder=embedder or Embedder(cfg.embedder), corpus=corpus, mmap=cfg.mmap
    )

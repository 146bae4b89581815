"""Retrieval: corpus store, text embedder, faiss index files and the dense retriever.

Everything a rollout needs is the `Retriever` protocol (``search(queries, topk)``); the dense
implementation is `DenseRetriever`, built in one call by `build_retriever(RetrieverConfig(...))`.
The modules: ``base`` (Passage, Retriever, format_passages), ``corpus`` (jsonl loading),
``embedder`` (HF encoder + pooling), ``index`` (faiss files), ``dense`` (the retriever).

How it departs from Search-R1: Search-R1 retrieves only through its HTTP server; here the same
retriever also runs in process (small corpora, tests), and index directories carry the encoder
settings they were built with (``meta.json``), checked at load time.

Run::

    from search_e1.retrieval import RetrieverConfig, build_retriever, format_passages
    r = build_retriever(RetrieverConfig(corpus="demo/world/corpus.jsonl"))
    print(format_passages(r.search(["Who founded Zorvex Labs?"], topk=3)[0]))
"""

from __future__ import annotations

from search_e1.retrieval.base import Passage, Retriever, format_passages
from search_e1.retrieval.corpus import Corpus, CorpusFormatError, load_corpus
from search_e1.retrieval.dense import DenseRetriever, RetrieverConfig, build_retriever
from search_e1.retrieval.embedder import Embedder, EmbedderConfig
from search_e1.retrieval.index import (
    IndexConfig,
    build_flat_index,
    build_index,
    load_index,
    open_index,
    save_index,
)
from search_e1.retrieval.store import CorpusStore, convert_corpus, open_corpus_store

__all__ = [
    "CorpusStore",  # memory-mapped corpus, indexes of any faiss kind (store.py, index.py)
    "IndexConfig",
    "convert_corpus",
    "open_corpus_store",
    "open_index",
    "Corpus",
    "CorpusFormatError",
    "DenseRetriever",
    "Embedder",
    "EmbedderConfig",
    "Passage",
    "Retriever",
    "RetrieverConfig",
    "build_flat_index",
    "build_index",
    "build_retriever",
    "format_passages",
    "load_corpus",
    "load_index",
    "save_index",
]

# The HTTP service and client need fastapi/uvicorn/httpx (not core dependencies): imported on use.
_LAZY = {"HTTPRetriever": "http", "HTTPRetrieverConfig": "http", "RetrievalServiceError": "http",
         "ServeConfig": "service", "create_app": "service", "serve": "service"}
__all__ += sorted(_LAZY)


def __getattr__(name: str) -> object:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"search_e1.retrieval.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

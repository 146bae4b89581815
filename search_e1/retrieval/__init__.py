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
from search_e1.retrieval.index import build_flat_index, build_index, load_index, save_index

__all__ = [
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

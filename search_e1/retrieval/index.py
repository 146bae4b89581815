"""faiss index files: build a Flat inner-product index from a corpus, save it, load it.

An index directory holds ``index.faiss`` (row ``i`` = corpus line ``i``) and ``meta.json``
(corpus path, passage count, dim, the embedder config, index kind), so a retriever can be
rebuilt from the directory alone. ``meta.json`` is written last and both files are written to
temporary names first, so an interrupted build never looks complete.

How it departs from Search-R1: Search-R1's ``index_builder.py`` saves the embeddings and the index
but not the encoder settings, so a query encoder can silently mismatch its index; here they travel
in ``meta.json``. Passages are encoded and added in chunks, so memory holds one chunk of vectors
beyond the index itself. Compressed indexes (IVF-PQ, SQ8, HNSW) are a later addition.

Run::

    from search_e1.retrieval import EmbedderConfig, build_index
    build_index("demo/world/corpus.jsonl", "demo/world/index", EmbedderConfig())
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from search_e1.retrieval.corpus import Corpus, load_corpus
from search_e1.retrieval.embedder import Embedder, EmbedderConfig, TextEncoder, progress_bar

if TYPE_CHECKING:  # pragma: no cover
    import faiss

__all__ = ["INDEX_FILE", "META_FILE", "build_flat_index", "build_index", "import_faiss",
           "load_index", "read_meta", "save_index"]

log = logging.getLogger(__name__)

INDEX_FILE = "index.faiss"
META_FILE = "meta.json"
_CHUNK = 4096  # passages encoded and added to the index per step


def import_faiss() -> Any:
    """Import faiss, or say which extra installs it."""
    try:
        import faiss
    except ImportError as err:
        raise ImportError(
            "faiss is not installed: pip install 'search-e1[cpu]' (faiss-cpu), "
            "or 'search-e1[gpu]' (faiss-gpu) on CUDA machines"
        ) from err
    return faiss


def _as_matrix(embeddings: np.ndarray) -> np.ndarray:
    if embeddings.ndim != 2 or embeddings.shape[1] == 0:
        raise ValueError(f"embeddings must be [N, D] with D > 0, got shape {embeddings.shape}")
    return np.ascontiguousarray(embeddings, dtype=np.float32)


def build_flat_index(embeddings: np.ndarray) -> faiss.Index:
    """An exact inner-product index (``IndexFlatIP``) over ``embeddings`` ``[N, D]``."""
    faiss = import_faiss()
    x = _as_matrix(embeddings)  # [N, D]
    index = faiss.IndexFlatIP(x.shape[1])
    if len(x):
        index.add(x)
    return index


def save_index(index: faiss.Index, path: str | Path) -> Path:
    """Write ``index`` to ``path`` (parents created; via a temporary file, then renamed)."""
    faiss = import_faiss()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    faiss.write_index(index, str(tmp))
    os.replace(tmp, path)
    return path


def load_index(path: str | Path, mmap: bool = False) -> faiss.Index:
    """Read an index file; ``mmap=True`` maps it instead of reading it into memory."""
    faiss = import_faiss()
    path = Path(path)
    if path.is_dir():
        path = path / INDEX_FILE
    if not path.is_file():
        raise FileNotFoundError(f"faiss index not found: {path} (build it with build_index)")
    flags = faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY if mmap else 0
    return faiss.read_index(str(path), flags)


def read_meta(index_dir: str | Path) -> dict[str, Any]:
    """The ``meta.json`` of an index directory (FileNotFoundError naming it when absent)."""
    path = Path(index_dir) / META_FILE
    if not path.is_file():
        raise FileNotFoundError(f"index metadata not found: {path} (build it with build_index)")
    return json.loads(path.read_text(encoding="utf-8"))


def _encode_into(index: faiss.Index, encoder: TextEncoder, texts: list[str], progress: bool):
    with progress_bar(len(texts), "indexing passages", progress) as advance:
        for start in range(0, len(texts), _CHUNK):
            chunk = texts[start : start + _CHUNK]
            index.add(_as_matrix(encoder.encode(chunk, "passage")))  # [chunk, D]
            advance(len(chunk))


def build_index(
    corpus_path: str | Path,
    out_dir: str | Path,
    embedder_cfg: EmbedderConfig | None = None,
    progress: bool = True,
    *,
    embedder: TextEncoder | None = None,
    corpus: Corpus | None = None,
) -> Path:
    """Encode every passage of ``corpus_path`` and write ``out_dir/index.faiss`` + ``meta.json``.

    ``embedder`` (an already loaded encoder matching ``embedder_cfg``) and ``corpus`` (the loaded
    ``corpus_path``) only save reloading them. Returns ``out_dir``.
    """
    faiss = import_faiss()
    cfg = embedder_cfg or EmbedderConfig()
    corpus = corpus if corpus is not None else load_corpus(corpus_path)
    encoder = embedder if embedder is not None else Embedder(cfg)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / META_FILE).unlink(missing_ok=True)  # an interrupted rebuild must not look complete
    start = time.perf_counter()
    index = faiss.IndexFlatIP(encoder.dim)
    _encode_into(index, encoder, corpus.texts_for_embedding(), progress)
    seconds = time.perf_counter() - start
    save_index(index, out / INDEX_FILE)
    meta = {
        "corpus": str(Path(corpus_path).resolve()),
        "num_passages": len(corpus),
        "dim": encoder.dim,
        "embedder": dataclasses.asdict(cfg),
        "index": "Flat",
        "metric": "inner_product",
        "build_seconds": round(seconds, 3),
    }
    tmp = out / (META_FILE + ".tmp")
    tmp.write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, out / META_FILE)
    log.info("indexed %d passages in %.1f s (%.0f passages/s) into %s", len(corpus), seconds,
             len(corpus) / max(seconds, 1e-9), out)
    return out

#!/usr/bin/env python
"""Retrieval benchmark (issue 4, part 6): our retrieval code against bare torch / faiss, one run.

Sections (``--sections a,b,c,d``; all by default), every figure written to ``OUT/results.json``
and printed as rich tables:

a. Embedder throughput: `Embedder.encode` against a bare transformers forward (AutoTokenizer +
   AutoModel, masked mean pooling, normalisation, ``torch.inference_mode``) on the same passages
   of a generated world, same max_length and batch size. The bare forward runs twice: in the
   same length-sorted batches as ours (what our code costs on top of torch) and in input order
   (what the length sort saves). Chunks of texts are timed interleaved, so load drifts hit all.
b. Search throughput on ``--num-vectors`` seeded random unit vectors (384-d): `DenseRetriever`
   searching precomputed query vectors (a lookup encoder; the passages come from a real
   `CorpusStore`) against ``faiss`` ``index.search``, for Flat and one compressed kind; and with
   encoding, `DenseRetriever` + `Embedder` against the bare forward + ``index.search``.
c. A sweep of compressed kinds on MiniLM embeddings of >= ``--num-passages`` generated passages,
   queries = the world's questions: recall@10 against Flat, speed against Flat (batch 64, best of
   up to 3 passes), serialized size against Flat, build time (the library's `train_and_add`).
   Plot: ``OUT/sweep.png`` (needs matplotlib; skipped without it).
d. The ``/retrieve`` service (`serve_in_thread`, 127.0.0.1, port 0) under 16 concurrent
   `HTTPRetriever` clients (4 queries per request, topk 3) against the in-process retriever doing
   the same queries in the batches the service forms (64) and request by request (4).

Embeddings are cached under ``--cache`` (worlds, corpus stores, encoded shards via the
library's resumable `encode_shards`, 1M-vector IVF index), so a second run encodes nothing.

Departures from a plain measurement: ``OMP_WAIT_POLICY=PASSIVE`` is set unless given (on 2 cores
the spinning OpenMP runtimes of torch, faiss and OpenBLAS stall each other: PQ training ran 3x
slower); Flat in (b) uses fewer queries (a 64-query batch on 1M vectors takes seconds on 2 cores);
OPQ trains with ``niter=8`` on 16k vectors (faiss's default 50 iterations took > 10 min).

Run::

    python bin/bench_retrieval.py                      # everything, ~35 min the first time
    python bin/bench_retrieval.py --sections a,d --out bench/retrieval
    python bin/bench_retrieval.py --quick              # smoke run, < 60 s
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import math  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from search_e1.demo_world import SPLITS, write_world  # noqa: E402
from search_e1.retrieval import (  # noqa: E402
    CorpusStore,
    DenseRetriever,
    Embedder,
    EmbedderConfig,
    IndexConfig,
    build_flat_index,
    convert_corpus,
    open_corpus_store,
)
from search_e1.retrieval.corpus import passage_text  # noqa: E402
from search_e1.retrieval.index import (  # noqa: E402
    apply_search_params,
    encode_shards,
    import_faiss,
    load_index,
    new_index,
    save_index,
    train_and_add,
)

log = logging.getLogger("bench_retrieval")
console = Console(width=None if sys.stdout.isatty() else 120)
PASSAGES_PER_SIZE = 1.56  # demo_world: ~1.57 passages per unit of size (kept >= the request)


# ---------------------------------------------------------------- settings
@dataclass(frozen=True)
class Sweep:
    """One built index of section (c) and the search knob swept over it."""

    family: str
    factory: str
    knob: str  # "nprobe", "efSearch" or "" (nothing to sweep)
    values: tuple[int, ...] = (0,)


# "np": no polysemous training (faiss's factory default for IVF-PQ; it took ~45 s per index on
# 2 cores and only serves polysemous filtering, which nothing here turns on)
FULL_SWEEP = (  # the generated world is low-contrast (top-10 scores ~0.59, top-100 ~0.52): high
    # nprobe / efSearch are needed; IVF-Flat shows what the coarse quantizer alone loses
    Sweep("IVF-Flat", "IVF1024,Flat", "nprobe", (64, 256)),
    Sweep("IVF-SQ8", "IVF256,SQ8", "nprobe", (8, 16, 32, 64)),
    Sweep("IVF-SQ8", "IVF1024,SQ8", "nprobe", (16, 32, 64, 128, 256)),
    Sweep("IVF-SQ6", "IVF256,SQ6", "nprobe", (16, 32, 64)),
    Sweep("IVF-SQ6", "IVF1024,SQ6", "nprobe", (32, 64, 128, 256)),
    Sweep("IVF-SQ4", "IVF1024,SQ4", "nprobe", (32, 64, 128, 256)),
    Sweep("IVF-PQ", "IVF1024,PQ32np", "nprobe", (16, 64)),
    Sweep("IVF-PQ", "IVF1024,PQ64np", "nprobe", (32, 64, 128)),
    Sweep("IVF-PQ", "IVF1024,PQ192np", "nprobe", (64, 128, 256)),
    Sweep("IVF-PQ", "IVF1024,PQ64x4fs", "nprobe", (32, 128)),
    Sweep("IVF-PQ", "IVF1024,PQ128x4fs", "nprobe", (32, 64, 128, 256)),
    Sweep("OPQ-IVF-PQ", "OPQ64,IVF1024,PQ64np", "nprobe", (32, 64, 128)),
    Sweep("HNSW", "HNSW32", "efSearch", (32, 64, 128, 256, 512)),
)
QUICK_SWEEP = (
    Sweep("IVF-SQ8", "IVF8,SQ8", "nprobe", (2, 4)),
    Sweep("IVF-PQ", "IVF8,PQ16x4np", "nprobe", (4,)),
    Sweep("OPQ-IVF-PQ", "OPQ16,IVF8,PQ16x4np", "nprobe", (4,)),
    Sweep("HNSW", "HNSW16", "efSearch", (32,)),
)


@dataclass
class Sizes:
    """How much each section measures (``--quick`` shrinks everything)."""

    embed_passages: int = 2048
    """(a) passages encoded by each encoder."""
    num_vectors: int = 1_000_000
    """(b) random 384-d unit vectors in the index."""
    search_queries: int = 2048
    """(b) queries for the compressed kind (and Flat, capped by flat_queries)."""
    flat_queries: int = 320
    """(b) queries for Flat (each batch of 64 scans every vector)."""
    compressed: str = "IVF1024,SQ8"
    """(b) the compressed kind."""
    compressed_nprobe: int = 32
    """(b) nprobe of the compressed kind."""
    num_passages: int = 100_000
    """(c) at least this many generated passages."""
    sweep_queries: int = 2048
    """(c) questions of the world used as queries."""
    sweep: tuple[Sweep, ...] = FULL_SWEEP
    """(c) the configurations."""
    service_passages: int = 20_000
    """(a), (d) passages of the service world."""
    clients: int = 16
    """(d) concurrent clients."""
    requests_per_client: int = 32
    """(d) requests each client sends."""
    queries_per_request: int = 4
    """(d) queries per request."""
    batch: int = 64
    """Queries per search call in (b), (c) and the batched in-process run of (d)."""
    train_sample: int = 65_536
    """Vectors sampled to train IVF / PQ / SQ kinds."""
    time_limit_s: float = 240.0
    """Bound on each timed loop (it stops early, the figures use what ran)."""


QUICK = Sizes(embed_passages=64, num_vectors=20_000, search_queries=256, flat_queries=128,
              compressed="IVF64,SQ8", compressed_nprobe=8, num_passages=500, sweep_queries=128,
              sweep=QUICK_SWEEP, service_passages=500, requests_per_client=2, train_sample=5_000,
              time_limit_s=20.0)


# ---------------------------------------------------------------- shared state
class Bench:
    """Cache paths and lazily loaded models shared by the sections."""

    def __init__(self, cache: Path, sizes: Sizes, seed: int) -> None:
        self.cache = cache
        self.sizes = sizes
        self.seed = seed
        self.cfg = EmbedderConfig(path="minilm")
        self._embedder: Embedder | None = None
        self._bare: BareEncoder | None = None

    @property
    def embedder(self) -> Embedder:
        if self._embedder is None:
            self._embedder = Embedder(self.cfg)
        return self._embedder

    @property
    def bare(self) -> BareEncoder:
        if self._bare is None:
            self._bare = BareEncoder(self.embedder.model_dir, self.cfg)
        return self._bare

    def world(self, passages: int) -> World:
        """A generated world of >= ``passages`` passages with its MiniLM vectors (cached)."""
        size = max(10, math.ceil(passages / PASSAGES_PER_SIZE))
        root = self.cache / f"world-s{self.seed}-n{size}"
        if not (root / "world.json").is_file():
            write_world(root, seed=self.seed, size=size)
        store = open_corpus_store(root / "corpus.jsonl", root / "corpus.store", progress=False)
        started = time.perf_counter()
        shards = encode_shards(store, lambda: self.embedder, root / "minilm-shards", self.cfg,
                               IndexConfig(shard_size=16_384), progress=True)
        encode_s = time.perf_counter() - started
        questions = [json.loads(line)["question"] for s in SPLITS
                     for line in (root / f"{s}.jsonl").read_text(encoding="utf-8").splitlines()]
        return World(root, store, shards, questions, encode_s)

    def query_vectors(self, world: World, n: int) -> tuple[list[str], np.ndarray]:
        """``n`` distinct questions of ``world`` (seeded sample) and their MiniLM vectors."""
        rng = np.random.default_rng(self.seed)
        unique = sorted(set(world.questions))
        texts = [unique[i] for i in rng.choice(len(unique), min(n, len(unique)), replace=False)]
        path = world.root / f"queries-minilm-{len(texts)}.npy"
        if path.is_file():
            return texts, np.load(path)
        vectors = self.embedder.encode(texts, "query")  # [Q, D]
        np.save(path, vectors)
        return texts, vectors


@dataclass
class World:
    root: Path
    store: CorpusStore
    shards: list[Path]
    questions: list[str]
    encode_s: float
    """Seconds spent encoding in this run (0 when every shard was cached)."""

    def vectors(self) -> np.ndarray:
        return np.concatenate([np.load(p) for p in self.shards])  # [N, D]


class BareEncoder:
    """The reference: AutoTokenizer + AutoModel, masked mean pooling, L2 normalisation."""

    def __init__(self, model_dir: Path, cfg: EmbedderConfig) -> None:
        import torch
        from transformers import AutoModel, AutoTokenizer

        self.torch = torch
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
        self.model = AutoModel.from_pretrained(model_dir, local_files_only=True).eval()
        self.max_length = cfg.max_length
        self.batch_size = cfg.batch_size

    def encode(self, texts: list[str]) -> np.ndarray:
        """float32 ``[len(texts), D]``, batches of ``batch_size`` in the order given."""
        torch = self.torch
        out = []
        with torch.inference_mode():
            for start in range(0, len(texts), self.batch_size):
                batch = self.tokenizer(texts[start : start + self.batch_size], padding=True,
                                       truncation=True, max_length=self.max_length,
                                       return_tensors="pt")
                hidden = self.model(**batch).last_hidden_state  # [B, T, D]
                mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)  # [B, T, 1]
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)  # [B, D]
                out.append(torch.nn.functional.normalize(pooled, dim=-1).numpy())
        return np.concatenate(out)  # [N, D]


class LookupEncoder:
    """A `TextEncoder` returning precomputed vectors for known query strings (no model)."""

    def __init__(self, texts: list[str], vectors: np.ndarray) -> None:
        self.row = {t: i for i, t in enumerate(texts)}
        self.vectors = vectors  # [Q, D]

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])

    def encode(self, texts: list[str], kind: str, progress: bool = False) -> np.ndarray:
        return self.vectors[[self.row[t] for t in texts]]  # [B, D]


def interleaved(fns: dict[str, Callable[[int], object]], n_chunks: int,
                time_limit_s: float) -> tuple[dict[str, float], int]:
    """Run every ``fn(chunk)`` on each chunk, alternating their order; seconds per name, chunks.

    A warm-up call of each on chunk 0 is not timed; stops early past ``time_limit_s``.
    """
    for fn in fns.values():
        fn(0)
    names = list(fns)
    totals = dict.fromkeys(names, 0.0)
    deadline = time.monotonic() + time_limit_s
    done = 0
    for chunk in range(n_chunks):  # bounded by n_chunks and the deadline
        for name in names if chunk % 2 == 0 else names[::-1]:
            start = time.perf_counter()
            fns[name](chunk)
            totals[name] += time.perf_counter() - start
        done += 1
        if time.monotonic() > deadline:
            log.warning("time limit: stopped after %d of %d chunks", done, n_chunks)
            break
    return totals, done


# ---------------------------------------------------------------- (a) embedder
def bench_embedder(b: Bench) -> dict[str, Any]:
    world = b.world(b.sizes.service_passages)
    rng = np.random.default_rng(b.seed)
    rows = rng.choice(len(world.store), min(b.sizes.embed_passages, len(world.store)),
                      replace=False)
    texts = [passage_text(world.store.contents_at(int(i))) for i in rows]
    chunk = 8 * b.cfg.batch_size
    chunks = [texts[i : i + chunk] for i in range(0, len(texts), chunk)]
    ours, bare = b.embedder, b.bare
    results: dict[str, list[np.ndarray]] = {"ours": [], "bare": []}

    def run_ours(i: int) -> None:
        results["ours"].append(ours.encode(chunks[i], "passage"))

    def run_bare_sorted(i: int) -> None:  # the batches Embedder.encode forms (length-sorted)
        order = sorted(range(len(chunks[i])), key=lambda j: len(chunks[i][j]))
        out = np.empty((len(order), ours.dim), dtype=np.float32)
        out[order] = bare.encode([chunks[i][j] for j in order])
        results["bare"].append(out)

    def run_bare_input_order(i: int) -> None:
        bare.encode(chunks[i])

    totals, done = interleaved({"ours": run_ours, "bare_same_batches": run_bare_sorted,
                                "bare_input_order": run_bare_input_order}, len(chunks),
                               b.sizes.time_limit_s)
    n = sum(len(c) for c in chunks[:done])
    diff = max(float(np.abs(o - r).max()) for o, r in zip(results["ours"], results["bare"],
                                                         strict=True))
    pps = {k: n / v for k, v in totals.items()}
    return {"passages": n, "batch_size": b.cfg.batch_size, "max_length": b.cfg.max_length,
            "ours_pps": pps["ours"], "bare_same_batches_pps": pps["bare_same_batches"],
            "bare_input_order_pps": pps["bare_input_order"],
            "ratio_ours_bare": pps["ours"] / pps["bare_same_batches"],
            "ratio_ours_bare_input_order": pps["ours"] / pps["bare_input_order"],
            "max_abs_diff": diff}


# ---------------------------------------------------------------- (b) search
def random_vectors(n: int, dim: int, seed: int, chunk: int = 131_072):
    """Yield seeded random unit vectors ``[<=chunk, dim]`` float32, ``n`` in all."""
    rng = np.random.default_rng(seed)
    for start in range(0, n, chunk):
        x = rng.standard_normal((min(chunk, n - start), dim), dtype=np.float32)
        yield x / np.linalg.norm(x, axis=1, keepdims=True)


def random_store(b: Bench, n: int) -> CorpusStore:
    """A corpus store of ``n`` short passages, one per random vector (cached)."""
    root = b.cache / f"random-{n}"
    if (root / "store" / "store.json").is_file():
        return CorpusStore(root / "store")
    root.mkdir(parents=True, exist_ok=True)
    src = root / "corpus.jsonl"
    with open(src, "w", encoding="utf-8") as f:
        for i in range(n):
            f.write(json.dumps({"id": str(i), "contents": f'"Vector {i}"\nRandom unit vector '
                                                          f"number {i}."}) + "\n")
    store = convert_corpus(src, root / "store", progress=False)
    src.unlink()
    return store


def random_indexes(b: Bench, dim: int) -> tuple[dict[str, Any], float | None]:
    """Flat and the compressed kind over the random vectors, and the compressed kind's build
    seconds (None when it came from the cache)."""
    s = b.sizes
    cfg = IndexConfig(factory=s.compressed, train_sample=s.train_sample, train_seed=b.seed,
                      nprobe=s.compressed_nprobe)
    path = b.cache / f"random-{s.num_vectors}" / f"{s.compressed.replace(',', '_')}.faiss"
    cached = path.is_file()
    flat = new_index(dim, IndexConfig(factory="Flat"))
    small = load_index(path) if cached else new_index(dim, cfg)
    build_s = 0.0
    for k, x in enumerate(random_vectors(s.num_vectors, dim, b.seed)):  # [chunk, D]
        flat.add(x)
        if cached:
            continue
        start = time.perf_counter()
        if k == 0:  # train on a seeded sample of the first chunk
            rows = np.random.default_rng(b.seed).choice(len(x), min(s.train_sample, len(x)),
                                                        replace=False)
            small.train(x[np.sort(rows)])
        small.add(x)
        build_s += time.perf_counter() - start
    if not cached:
        save_index(small, path)
    apply_search_params(small, cfg)
    return {"Flat": flat, s.compressed: small}, None if cached else build_s


def search_fns(index: Any, store: CorpusStore, b: Bench, queries: np.ndarray,
               questions: list[str], topk: int) -> dict[str, Callable[[int], object]]:
    """Batch ``i`` searched four ways: bare faiss and ours, without and with encoding."""
    names = [f"q{i}" for i in range(len(queries))]
    ours = DenseRetriever(LookupEncoder(names, queries), index, store)
    ours_enc = DenseRetriever(b.embedder, index, store)
    bs = b.sizes.batch

    def rows(i: int) -> slice:
        return slice(i * bs, (i + 1) * bs)

    return {
        "bare": lambda i: index.search(queries[rows(i)], topk),
        "ours": lambda i: ours.search(names[rows(i)], topk),
        "bare_enc": lambda i: index.search(b.bare.encode(questions[rows(i)]), topk),
        "ours_enc": lambda i: ours_enc.search(questions[rows(i)], topk),
    }


def bench_search(b: Bench) -> dict[str, Any]:
    s, dim, topk, bs = b.sizes, b.embedder.dim, 3, b.sizes.batch
    store = random_store(b, s.num_vectors)
    indexes, build_s = random_indexes(b, dim)
    queries = next(random_vectors(s.search_queries, dim, b.seed + 1))  # [Q, D]
    questions = sorted(set(b.world(s.service_passages).questions))[: s.search_queries]
    rows = []
    for kind, index in indexes.items():
        n = min(len(queries), s.flat_queries) if kind == "Flat" else len(queries)
        fns = search_fns(index, store, b, queries, questions, topk)
        totals, done = interleaved(fns, n // bs, s.time_limit_s)
        qps = {k: done * bs / v for k, v in totals.items()}
        rows.append({"kind": kind, "queries": done * bs, "topk": topk, "batch": bs,
                     **{f"{k}_qps": v for k, v in qps.items()},
                     "ratio": qps["ours"] / qps["bare"],
                     "ratio_enc": qps["ours_enc"] / qps["bare_enc"]})
    return {"num_vectors": s.num_vectors, "dim": dim, "kinds": rows,
            "compressed_nprobe": s.compressed_nprobe, "compressed_build_s": build_s}


# ---------------------------------------------------------------- (c) sweep
def timed_search(index: Any, queries: np.ndarray, k: int, batch: int,
                 repeats: int = 3, budget_s: float = 20.0) -> tuple[float, np.ndarray]:
    """Best seconds of up to ``repeats`` passes over ``queries`` in batches; the ids ``[Q, k]``.

    Stops repeating once the passes so far took more than ``budget_s``.
    """
    best, spent, ids = math.inf, 0.0, None
    index.search(queries[:batch], k)  # warm-up
    for _ in range(repeats):
        start = time.perf_counter()
        parts = [index.search(queries[i : i + batch], k)[1] for i in range(0, len(queries), batch)]
        seconds = time.perf_counter() - start
        best, spent, ids = min(best, seconds), spent + seconds, np.concatenate(parts)
        if spent > budget_s:
            break
    return best, ids


def recall_at(ids: np.ndarray, truth: np.ndarray) -> float:
    """Mean share of each row of ``truth`` ``[Q, k]`` found in the same row of ``ids``."""
    hits = [len(set(a.tolist()) & set(t.tolist())) for a, t in zip(ids, truth, strict=True)]
    return float(np.mean(hits)) / truth.shape[1]


def build_config(sweep: Sweep, shards: list[Path], dim: int, b: Bench) -> tuple[Any, float]:
    """The library build (`train_and_add`); OPQ gets fewer iterations (see the docstring)."""
    faiss = import_faiss()
    cfg = IndexConfig(factory=sweep.factory, train_sample=b.sizes.train_sample,
                      train_seed=b.seed)
    start = time.perf_counter()
    if not sweep.factory.startswith("OPQ"):
        return train_and_add(shards, dim, cfg, progress=False), time.perf_counter() - start
    index = new_index(dim, cfg)  # the same steps as train_and_add, OPQ's knobs set first
    opq = faiss.downcast_VectorTransform(faiss.downcast_index(index).chain.at(0))
    opq.niter, opq.max_train_points = 8, 16_384
    x = np.concatenate([np.load(p) for p in shards])  # [N, D]
    rows = np.random.default_rng(b.seed).choice(len(x), min(len(x), cfg.train_sample),
                                                replace=False)
    index.train(x[np.sort(rows)])
    index.add(x)
    return index, time.perf_counter() - start


def bench_sweep(b: Bench, out: Path) -> dict[str, Any]:
    faiss = import_faiss()
    s, k = b.sizes, 10
    world = b.world(s.num_passages)
    x = world.vectors()  # [N, D]
    _, queries = b.query_vectors(world, s.sweep_queries)  # [Q, D]
    started = time.perf_counter()
    flat = build_flat_index(x)
    flat_build = time.perf_counter() - started
    flat_s, truth = timed_search(flat, queries, k, s.batch)  # truth [Q, k]
    flat_bytes = len(faiss.serialize_index(flat))
    del x
    rows = []
    for sweep in s.sweep:
        index, build_s = build_config(sweep, world.shards, flat.d, b)
        size = len(faiss.serialize_index(index))
        for value in sweep.values:
            apply_search_params(index, IndexConfig(nprobe=max(value, 1), ef_search=max(value, 1)))
            seconds, ids = timed_search(index, queries, k, s.batch)
            rows.append({"family": sweep.family, "factory": sweep.factory, "knob": sweep.knob,
                         "value": value, "recall_at_10": recall_at(ids, truth),
                         "speedup": flat_s / seconds, "qps": len(queries) / seconds,
                         "memory_ratio": size / flat_bytes, "bytes": size,
                         "build_s": build_s})
        del index
    target = [r for r in rows if r["recall_at_10"] >= 0.90 and r["speedup"] >= 3.0
              and r["memory_ratio"] <= 0.25]
    tiny = [r for r in rows if r["memory_ratio"] <= 1 / 16]
    result = {
        "num_passages": len(world.store), "queries": len(queries), "k": k, "batch": s.batch,
        "encode_s_this_run": world.encode_s,
        "flat": {"qps": len(queries) / flat_s, "bytes": flat_bytes, "build_s": flat_build},
        "configs": rows,
        "best_target": max(target, key=lambda r: (r["speedup"], r["recall_at_10"]),
                           default=None),
        "best_recall_at_1_16_memory": max(tiny, key=lambda r: (r["recall_at_10"], r["speedup"]),
                                          default=None),
    }
    result["plot"] = plot_sweep(rows, out / "sweep.png")
    return result


def plot_sweep(rows: list[dict[str, Any]], path: Path) -> str | None:
    """recall@10 against speedup, colour = memory ratio (log); None without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.colors import LogNorm
    except ImportError:
        log.warning("matplotlib is not installed: no plot (pip install matplotlib)")
        return None
    fig, ax = plt.subplots(figsize=(9, 6))
    markers = dict(zip(sorted({r["family"] for r in rows}), "osD^vP*X", strict=False))
    norm = LogNorm(vmin=min(r["memory_ratio"] for r in rows),
                   vmax=max(max(r["memory_ratio"] for r in rows), 1.0))
    for family, marker in markers.items():
        sub = [r for r in rows if r["family"] == family]
        sc = ax.scatter([r["speedup"] for r in sub], [r["recall_at_10"] for r in sub],
                        c=[r["memory_ratio"] for r in sub], norm=norm, cmap="viridis",
                        marker=marker, s=60, edgecolors="k", label=family)
    for r in rows:
        ax.annotate(f"{r['factory']} {r['knob'][:2]}{r['value']}", (r["speedup"],
                    r["recall_at_10"]), fontsize=5, xytext=(3, 2), textcoords="offset points")
    ax.axhline(0.9, color="grey", ls="--", lw=0.8)
    ax.axvline(3.0, color="grey", ls="--", lw=0.8)
    ax.set_xscale("log")
    ax.set_xlabel("search speed relative to Flat (batch 64)")
    ax.set_ylabel("recall@10 against Flat")
    ax.legend(fontsize=8)
    fig.colorbar(sc, ax=ax, label="index size relative to Flat")
    fig.tight_layout()
    fig.savefig(path, dpi=150)
    plt.close(fig)
    return str(path)


# ---------------------------------------------------------------- (d) service
def bench_service(b: Bench) -> dict[str, Any]:
    from search_e1.retrieval.http import HTTPRetriever
    from search_e1.retrieval.service import ServeConfig, serve_in_thread

    s = b.sizes
    world = b.world(s.service_passages)
    retriever = DenseRetriever(b.embedder, build_flat_index(world.vectors()), world.store)
    per = s.queries_per_request
    total = s.clients * s.requests_per_client * per
    unique = sorted(set(world.questions))
    questions = [unique[i] for i in np.random.default_rng(b.seed).permutation(len(unique))[:total]]
    total = len(questions) - len(questions) % (s.clients * per)
    requests = [questions[i : i + per] for i in range(0, total, per)]  # [R][per]
    batch_q = s.clients * per

    def run_batched(i: int) -> None:
        retriever.search(questions[i * batch_q : (i + 1) * batch_q], 3)

    def run_per_request(i: int) -> None:
        for r in requests[i * s.clients : (i + 1) * s.clients]:
            retriever.search(r, 3)

    totals, done = interleaved({"batched": run_batched, "per_request": run_per_request},
                               total // batch_q, s.time_limit_s)
    inproc_qps = {k: done * batch_q / v for k, v in totals.items()}
    with serve_in_thread(retriever, ServeConfig(port=0, log_level="warning")) as service:
        clients = [HTTPRetriever(service.url, timeout_s=60, retries=0) for _ in range(s.clients)]
        clients[0].search(requests[0], 3)  # warm-up
        before = clients[0].health()
        sent = [0] * s.clients
        deadline = time.monotonic() + s.time_limit_s

        def client(c: int) -> None:
            for r in requests[c :: s.clients]:  # bounded: its share of the requests, and time
                clients[c].search(r, 3)
                sent[c] += 1
                if time.monotonic() > deadline:
                    break

        threads = [threading.Thread(target=client, args=(c,)) for c in range(s.clients)]
        start = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join(s.time_limit_s + 60)
        seconds = time.perf_counter() - start
        after = clients[0].health()
        for c in clients:
            c.close()
    stats = {k: after[k] - before[k] for k in ("requests", "batches", "queries",
                                               "unique_queries")}
    stats["mean_batch_queries"] = stats["queries"] / max(stats["batches"], 1)
    service_qps = sum(sent) * per / seconds
    return {"passages": len(world.store), "clients": s.clients, "queries_per_request": per,
            "topk": 3, "requests": sum(sent), "service_qps": service_qps,
            "service_rps": sum(sent) / seconds, "inproc_batched_qps": inproc_qps["batched"],
            "inproc_per_request_qps": inproc_qps["per_request"], "inproc_batch": batch_q,
            "ratio_vs_batched": service_qps / inproc_qps["batched"],
            "ratio_vs_per_request": service_qps / inproc_qps["per_request"],
            "service_stats": stats}


# ---------------------------------------------------------------- report
SECTIONS: dict[str, tuple[str, Callable[[Bench, Path], dict[str, Any]]]] = {
    "a": ("embedder throughput", lambda b, out: bench_embedder(b)),
    "b": ("search throughput", lambda b, out: bench_search(b)),
    "c": ("compressed index sweep", bench_sweep),
    "d": ("service throughput", lambda b, out: bench_service(b)),
}


def targets(res: dict[str, Any]) -> list[tuple[str, str, bool]]:
    """(target, measured, met) for every section that ran."""
    rows = []
    if "a" in res:
        a = res["a"]
        rows.append(("(a) Embedder.encode >= 0.90 x bare forward (same batches)",
                     f"{a['ratio_ours_bare']:.3f}", a["ratio_ours_bare"] >= 0.90))
    for k in res.get("b", {}).get("kinds", []):
        rows.append((f"(b) {k['kind']}: ours >= 0.90 x bare faiss",
                     f"{k['ratio']:.3f}", k["ratio"] >= 0.90))
        rows.append((f"(b) {k['kind']}: ours >= 0.90 x bare encoder + faiss",
                     f"{k['ratio_enc']:.3f}", k["ratio_enc"] >= 0.90))
    if "c" in res:
        best = res["c"]["best_target"]
        rows.append(("(c) recall@10 >= 0.90 at >= 3x Flat speed, <= 1/4 memory",
                     _config_name(best) if best else "none", best is not None))
        tiny = res["c"]["best_recall_at_1_16_memory"]
        rows.append(("(c) best recall@10 at <= 1/16 memory (report)",
                     _config_name(tiny) if tiny else "none", tiny is not None))
    if "d" in res:
        d = res["d"]
        rows.append(("(d) service >= 0.80 x in-process (same batches of "
                     f"{d['inproc_batch']})", f"{d['ratio_vs_batched']:.3f}",
                     d["ratio_vs_batched"] >= 0.80))
        rows.append(("(d) service >= 0.80 x in-process (request by request)",
                     f"{d['ratio_vs_per_request']:.3f}", d["ratio_vs_per_request"] >= 0.80))
    return rows


def _config_name(r: dict[str, Any]) -> str:
    knob = f" {r['knob']}={r['value']}" if r["knob"] else ""
    return (f"{r['factory']}{knob}: recall {r['recall_at_10']:.3f}, {r['speedup']:.1f}x, "
            f"memory {r['memory_ratio']:.3f}")


def print_tables(res: dict[str, Any]) -> None:
    if "a" in res:
        a = res["a"]
        t = Table(title=f"(a) embedder: {a['passages']} passages, batch {a['batch_size']}, "
                        f"max_length {a['max_length']} (max |diff| {a['max_abs_diff']:.1e})")
        for col in ("encoder", "passages/s", "ours / this"):
            t.add_column(col, justify="right" if col != "encoder" else "left")
        for name, key in (("Embedder.encode (ours)", "ours_pps"),
                          ("bare forward, same batches", "bare_same_batches_pps"),
                          ("bare forward, input order", "bare_input_order_pps")):
            t.add_row(name, f"{a[key]:,.1f}", f"{a['ours_pps'] / a[key]:.3f}")
        console.print(t)
    if "b" in res:
        bb = res["b"]
        t = Table(title=f"(b) search: {bb['num_vectors']:,} random {bb['dim']}-d vectors, "
                        f"batch 64, topk 3 (queries/s)")
        for col in ("kind", "queries", "bare faiss", "ours", "ratio", "bare enc+faiss",
                    "ours enc+search", "ratio"):
            t.add_column(col, justify="left" if col == "kind" else "right")
        for k in bb["kinds"]:
            t.add_row(k["kind"], str(k["queries"]), f"{k['bare_qps']:,.1f}",
                      f"{k['ours_qps']:,.1f}", f"{k['ratio']:.3f}", f"{k['bare_enc_qps']:,.1f}",
                      f"{k['ours_enc_qps']:,.1f}", f"{k['ratio_enc']:.3f}")
        console.print(t)
    if "c" in res:
        c = res["c"]
        t = Table(title=f"(c) sweep: {c['num_passages']:,} MiniLM passages, {c['queries']} "
                        f"questions, batch {c['batch']}; Flat {c['flat']['qps']:,.0f} q/s, "
                        f"{c['flat']['bytes'] / 2**20:,.0f} MiB")
        for col in ("factory", "knob", "recall@10", "speed x", "memory x", "build s"):
            t.add_column(col, justify="left" if col in ("factory", "knob") else "right")
        for r in c["configs"]:
            t.add_row(r["factory"], f"{r['knob']}={r['value']}" if r["knob"] else "",
                      f"{r['recall_at_10']:.3f}", f"{r['speedup']:.2f}",
                      f"{r['memory_ratio']:.3f}", f"{r['build_s']:.1f}")
        console.print(t)
    if "d" in res:
        d = res["d"]
        t = Table(title=f"(d) service: {d['passages']:,} passages, {d['clients']} clients x "
                        f"{d['queries_per_request']} queries, topk {d['topk']} (queries/s)")
        for col in ("path", "queries/s", "service / this"):
            t.add_column(col, justify="left" if col == "path" else "right")
        t.add_row(f"service ({d['requests']} requests, {d['service_rps']:.1f} req/s)",
                  f"{d['service_qps']:,.1f}", "1.000")
        t.add_row(f"in-process, batches of {d['inproc_batch']}",
                  f"{d['inproc_batched_qps']:,.1f}", f"{d['ratio_vs_batched']:.3f}")
        t.add_row(f"in-process, batches of {d['queries_per_request']}",
                  f"{d['inproc_per_request_qps']:,.1f}", f"{d['ratio_vs_per_request']:.3f}")
        console.print(t)
    t = Table(title="targets")
    for col in ("target", "measured", "met"):
        t.add_column(col)
    for name, value, met in res["targets"]:
        t.add_row(name, value, "yes" if met else "NO")
    console.print(t)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    cache = Path(os.environ.get("SEARCH_E1_CACHE", Path.home() / ".cache" / "search-e1"))
    p.add_argument("--out", type=Path, default=Path("bench/retrieval"),
                   help="directory for results.json and sweep.png")
    p.add_argument("--cache", type=Path, default=cache / "bench",
                   help="cache of worlds, encoded vectors and built indexes")
    p.add_argument("--sections", default="a,b,c,d", help="comma-separated subset of a,b,c,d")
    p.add_argument("--quick", action="store_true", help="small sizes (smoke test, < 60 s)")
    p.add_argument("--num-vectors", type=int, help="(b) random vectors (default 1,000,000)")
    p.add_argument("--num-passages", type=int, help="(c) passages (default 100,000)")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                   help="torch and faiss threads")
    p.add_argument("--seed", type=int, default=0, help="seed of worlds, vectors and samples")
    args = p.parse_args(argv)
    args.sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    bad = [s for s in args.sections if s not in SECTIONS]
    if bad or not args.sections:
        p.error(f"--sections takes a comma-separated subset of {','.join(SECTIONS)}, got {bad}")
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    import faiss
    import torch

    torch.set_num_threads(args.threads)
    faiss.omp_set_num_threads(args.threads)
    sizes = QUICK if args.quick else Sizes()
    overrides = {k: v for k, v in (("num_vectors", args.num_vectors),
                                   ("num_passages", args.num_passages)) if v is not None}
    sizes = dataclasses.replace(sizes, **overrides)
    args.out.mkdir(parents=True, exist_ok=True)
    bench = Bench(args.cache, sizes, args.seed)
    res: dict[str, Any] = {"meta": {
        "quick": args.quick, "sections": args.sections, "threads": args.threads,
        "seed": args.seed, "sizes": {k: v for k, v in dataclasses.asdict(sizes).items()
                                     if k != "sweep"},
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"), "cpu_count": os.cpu_count(),
        "machine": platform.platform(), "python": platform.python_version(),
        "torch": torch.__version__, "faiss": faiss.__version__, "embedder": "minilm",
        "seconds": {}}}
    started = time.perf_counter()
    for name in args.sections:
        title, fn = SECTIONS[name]
        console.log(f"({name}) {title} ...")
        t0 = time.perf_counter()
        res[name] = fn(bench, args.out)
        res["meta"]["seconds"][name] = round(time.perf_counter() - t0, 1)
    res["meta"]["seconds"]["total"] = round(time.perf_counter() - started, 1)
    res["targets"] = targets(res)
    path = args.out / "results.json"
    path.write_text(json.dumps(res, indent=2) + "\n", encoding="utf-8")
    print_tables(res)
    console.print(f"results: {path}  ({res['meta']['seconds']})")
    return res


if __name__ == "__main__":
    main()

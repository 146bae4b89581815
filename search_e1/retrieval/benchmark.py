"""Measurement pieces of the retrieval benchmark (``bin/bench_retrieval.py``), kept out of the
script so it holds only the CLI, the sections and the tables:

* `Sweep`, `FULL_SWEEP`, `QUICK_SWEEP` - the compressed index kinds of section (c) and their knob;
* `Sizes`, `QUICK` - how much each section measures (full run and ``--quick`` smoke run);
* `Bench`, `World` - the cache (generated worlds, their MiniLM vector shards, query vectors) and
  the lazily loaded encoders that the sections share;
* `BareEncoder` - the reference encoder (bare transformers forward, mean pooling, L2 norm);
* `LookupEncoder` - a `TextEncoder` of precomputed query vectors (search timed without a model);
* `interleaved` - times several callables chunk by chunk in alternating order (fair under drift);
* `random_vectors`, `random_store`, `random_indexes` - the seeded random-vector fixture of (b)
  and its cached corpus store, Flat and compressed indexes;
* `timed_search` - best-of-N batched ``index.search`` seconds and the ids it returned;
* `recall_at` - recall@k of searched ids against exact ones;
* `build_config` - builds one sweep kind with the library's `train_and_add` (OPQ's knobs set);
* `plot_sweep` - recall@10 against speed-up scatter of the sweep (needs matplotlib);
* `targets` - the pass/fail targets of every section that ran, from ``results.json`` content.

Why a module: these are plain functions and classes over arrays, indexes and cache paths,
importable (and testable) without running a benchmark; the script keeps only the CLI, what each
section measures and the printed tables.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from search_e1.demo_world import SPLITS, write_world
from search_e1.retrieval.embedder import Embedder, EmbedderConfig
from search_e1.retrieval.index import (
    IndexConfig,
    apply_search_params,
    encode_shards,
    import_faiss,
    load_index,
    new_index,
    save_index,
    train_and_add,
)
from search_e1.retrieval.store import CorpusStore, convert_corpus, open_corpus_store

__all__ = [
    "FULL_SWEEP", "PASSAGES_PER_SIZE", "QUICK", "QUICK_SWEEP", "BareEncoder", "Bench",
    "LookupEncoder", "Sizes", "Sweep", "World", "build_config", "interleaved", "plot_sweep",
    "random_indexes", "random_store", "random_vectors", "recall_at", "targets", "timed_search",
]

log = logging.getLogger(__name__)
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


# ---------------------------------------------------------------- encoders and timing
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
    """A generated world: its corpus store, MiniLM vector shards and questions."""

    root: Path
    store: CorpusStore
    shards: list[Path]
    questions: list[str]
    encode_s: float
    """Seconds spent encoding in this run (0 when every shard was cached)."""

    def vectors(self) -> np.ndarray:
        return np.concatenate([np.load(p) for p in self.shards])  # [N, D]


# ---------------------------------------------------------------- (b) random vectors
def random_vectors(n: int, dim: int, seed: int, chunk: int = 131_072) -> Iterator[np.ndarray]:
    """Yield seeded random unit vectors ``[<=chunk, dim]`` float32, ``n`` in all."""
    rng = np.random.default_rng(seed)
    for start in range(0, n, chunk):
        x = rng.standard_normal((min(chunk, n - start), dim), dtype=np.float32)
        yield x / np.linalg.norm(x, axis=1, keepdims=True)


def random_store(cache: Path, n: int) -> CorpusStore:
    """A corpus store of ``n`` short passages, one per random vector (cached under ``cache``)."""
    root = cache / f"random-{n}"
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


def random_indexes(cache: Path, s: Sizes, seed: int,
                   dim: int) -> tuple[dict[str, Any], float | None]:
    """Flat and the compressed kind over the random vectors, and the compressed kind's build
    seconds (None when it came from the cache)."""
    cfg = IndexConfig(factory=s.compressed, train_sample=s.train_sample, train_seed=seed,
                      nprobe=s.compressed_nprobe)
    path = cache / f"random-{s.num_vectors}" / f"{s.compressed.replace(',', '_')}.faiss"
    cached = path.is_file()
    flat = new_index(dim, IndexConfig(factory="Flat"))
    small = load_index(path) if cached else new_index(dim, cfg)
    build_s = 0.0
    for k, x in enumerate(random_vectors(s.num_vectors, dim, seed)):  # [chunk, D]
        flat.add(x)
        if cached:
            continue
        start = time.perf_counter()
        if k == 0:  # train on a seeded sample of the first chunk
            rows = np.random.default_rng(seed).choice(len(x), min(s.train_sample, len(x)),
                                                      replace=False)
            small.train(x[np.sort(rows)])
        small.add(x)
        build_s += time.perf_counter() - start
    if not cached:
        save_index(small, path)
    apply_search_params(small, cfg)
    return {"Flat": flat, s.compressed: small}, None if cached else build_s


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


def build_config(sweep: Sweep, shards: list[Path], dim: int, train_sample: int,
                 seed: int) -> tuple[Any, float]:
    """The library build (`train_and_add`) and its seconds; OPQ gets fewer iterations
    (``niter=8`` on 16k vectors: faiss's default 50 iterations took > 10 min on 2 cores)."""
    faiss = import_faiss()
    cfg = IndexConfig(factory=sweep.factory, train_sample=train_sample, train_seed=seed)
    start = time.perf_counter()
    if not sweep.factory.startswith("OPQ"):
        return train_and_add(shards, dim, cfg, progress=False), time.perf_counter() - start
    index = new_index(dim, cfg)  # the same steps as train_and_add, OPQ's knobs set first
    opq = faiss.downcast_VectorTransform(faiss.downcast_index(index).chain.at(0))
    opq.niter, opq.max_train_points = 8, 16_384
    x = np.concatenate([np.load(p) for p in shards])  # [N, D]
    rows = np.random.default_rng(seed).choice(len(x), min(len(x), cfg.train_sample),
                                              replace=False)
    index.train(x[np.sort(rows)])
    index.add(x)
    return index, time.perf_counter() - start


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


# ---------------------------------------------------------------- targets
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

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
import platform  # noqa: E402
import sys  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from search_e1.retrieval import (  # noqa: E402
    CorpusStore,
    DenseRetriever,
    IndexConfig,
    build_flat_index,
)
from search_e1.retrieval.benchmark import (  # noqa: E402
    QUICK,
    Bench,
    LookupEncoder,
    Sizes,
    build_config,
    interleaved,
    plot_sweep,
    random_indexes,
    random_store,
    random_vectors,
    recall_at,
    targets,
    timed_search,
)
from search_e1.retrieval.corpus import passage_text  # noqa: E402
from search_e1.retrieval.index import apply_search_params, import_faiss  # noqa: E402

console = Console(width=None if sys.stdout.isatty() else 120)


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
    store = random_store(b.cache, s.num_vectors)
    indexes, build_s = random_indexes(b.cache, s, b.seed, dim)
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
        index, build_s = build_config(sweep, world.shards, flat.d, s.train_sample, b.seed)
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

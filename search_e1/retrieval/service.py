"""The ``/retrieve`` HTTP service: Search-R1's retrieval API over any `Retriever`, in shared batches.

What: `create_app(retriever, ServeConfig(...))` builds a FastAPI app with

- ``POST /retrieve`` taking ``{"queries": [str], "topk": int, "return_scores": bool}`` and answering
  ``{"result": [[{"document": {"id": str, "contents": str}, "score": float}, ...], ...]}`` when
  ``return_scores`` is true, ``{"result": [[{"id": str, "contents": str}, ...], ...]}`` when false.
  ``topk`` and ``return_scores`` are optional: missing/null/0 ``topk`` means ``default_topk`` (3),
  ``return_scores`` defaults to false, as in Search-R1's ``QueryRequest``.
- ``GET /health``: ``{"status": "ok", "passages": int | null, "queue_depth": int, ...}``.

`serve(retriever, cfg)` runs it with uvicorn (blocking); `ServiceThread` runs any ASGI app in a
background thread (tests, a service inside the trainer's process).

Batching: every request puts its queries on one asyncio queue
(`search_e1.retrieval.batcher.MicroBatcher`). A single worker
task takes the first waiting request, waits up to ``batch_wait_ms`` for more (or until
``max_batch_queries`` queries are waiting), de-duplicates the queries, calls ``retriever.search``
ONCE with the largest ``topk`` of the batch in a worker thread (the event loop keeps accepting
requests meanwhile, so they form the next batch), and hands each request its own rows cut to its
own ``topk``. Searches never overlap, so the retriever needs no locking.

Departures from Search-R1's ``search_r1/search/retrieval_server.py``:

- concurrent requests share one search call (Search-R1 runs ``batch_search`` once per request);
- input is validated strictly (no type coercion) against limits; errors are JSON
  ``{"detail": message, "field": name}`` with 400 (malformed JSON), 413 (too large), 422 (wrong
  type or value); a failing retriever gives 500 and a search slower than ``request_timeout_s``
  504, and the service stays up; a request whose client disconnects before it is searched is
  dropped (counted in ``/health`` as ``abandoned_requests``);
- ``return_scores: false`` works (Search-R1's handler unpacks ``results, scores`` regardless);
- a document is ``{"id", "contents"}`` (Search-R1 returns the whole corpus row); a passage with no
  score (or a non-finite one) gets ``"score": null``;
- binds 127.0.0.1 unless another host is given (Search-R1 binds 0.0.0.0).

Run::

    from search_e1.retrieval import RetrieverConfig, build_retriever
    from search_e1.retrieval.service import ServeConfig, serve
    serve(build_retriever(RetrieverConfig(corpus="demo/world/corpus.jsonl")), ServeConfig(port=8000))
    # curl -s 127.0.0.1:8000/retrieve -d '{"queries": ["Who founded Zorvex Labs?"], "topk": 3}'
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
import time
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, ValidationError

from search_e1.retrieval.base import Passage, Retriever
from search_e1.retrieval.batcher import MicroBatcher, RetrieverFailure

__all__ = [
    "MicroBatcher",
    "RetrieveRequest",
    "ServeConfig",
    "ServiceThread",
    "create_app",
    "serve",
    "serve_in_thread",
]

log = logging.getLogger(__name__)

_LOOPBACK = ("127.0.0.1", "localhost", "::1")


@dataclass
class ServeConfig:
    """Settings of the ``/retrieve`` service (``search-e1 serve``)."""

    host: str = "127.0.0.1"
    """Interface to bind. Loopback by default: serving other machines ("0.0.0.0") must be explicit."""
    port: int = 8000
    """TCP port; 0 picks a free one (tests)."""
    default_topk: int = 3
    """Passages per query when a request omits ``topk`` or sends null/0 (Search-R1's default: 3)."""
    max_topk: int = 100
    """Largest ``topk`` a request may ask for (422 above it)."""
    max_queries_per_request: int = 8192
    """Most queries in one request (413 above it); Search-R1 sends a whole rollout batch at once."""
    max_query_chars: int = 4096
    """Longest query string, in characters (413 above it)."""
    max_body_bytes: int = 64 * 2**20
    """Largest request body, in bytes (413 above it, checked before parsing)."""
    batch_wait_ms: float = 5.0
    """How long the first waiting request waits for others to share its search call."""
    max_batch_queries: int = 1024
    """Stop collecting a shared batch at this many queries (a larger single request goes alone)."""
    search_chunk_queries: int = 256
    """Queries per retriever call within a batch; a batch whose clients all went away stops after the current chunk."""
    request_timeout_s: float = 120.0
    """A request waiting longer than this for its search (queue included) gets 504."""
    log_level: str = "info"
    """uvicorn's log level for `serve`: critical, error, warning, info, debug or trace."""

    def __post_init__(self) -> None:
        if not isinstance(self.host, str) or not self.host:
            raise ValueError(f"ServeConfig.host must be a non-empty string, got {self.host!r}")
        if not isinstance(self.port, int) or not 0 <= self.port <= 65535:
            raise ValueError(f"ServeConfig.port must be an int in [0, 65535], got {self.port!r}")
        for name in ("max_topk", "max_queries_per_request", "max_query_chars", "max_body_bytes",
                     "max_batch_queries", "search_chunk_queries"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"ServeConfig.{name} must be a positive int, got {value!r}")
        if not isinstance(self.default_topk, int) or not 1 <= self.default_topk <= self.max_topk:
            raise ValueError(f"ServeConfig.default_topk must be an int in [1, max_topk={self.max_topk}], "
                             f"got {self.default_topk!r}")
        if not self.batch_wait_ms >= 0:
            raise ValueError(f"ServeConfig.batch_wait_ms must be >= 0, got {self.batch_wait_ms!r}")
        if not self.request_timeout_s > 0:
            raise ValueError(f"ServeConfig.request_timeout_s must be > 0, got {self.request_timeout_s!r}")
        if self.log_level not in LOG_LEVELS:
            raise ValueError(f"ServeConfig.log_level: expected one of {', '.join(LOG_LEVELS)}, got {self.log_level!r}")


LOG_LEVELS = ("critical", "error", "warning", "info", "debug", "trace")
"""uvicorn's log levels (`ServeConfig.log_level`)."""


class RetrieveRequest(BaseModel):
    """Body of ``POST /retrieve`` (Search-R1's ``QueryRequest``, validated strictly)."""

    model_config = ConfigDict(strict=True, extra="ignore")

    queries: list[str]
    topk: int | None = None
    return_scores: bool = False


class ApiError(Exception):
    """A request the service answers with ``status`` and ``{"detail": message, "field": field}``."""

    def __init__(self, status: int, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.field = field


# ------------------------------------------------------------------ micro-batching
# ------------------------------------------------------------------ request handling
async def _read_body(request: Request, limit: int) -> bytes:
    """The request body, refused (413) as soon as it exceeds ``limit`` bytes."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise ApiError(413, f"the body has {declared} bytes; max_body_bytes is {limit}", "body")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():  # bounded: at most `limit` bytes are kept
        size += len(chunk)
        if size > limit:
            raise ApiError(413, f"the body exceeds max_body_bytes={limit}", "body")
        chunks.append(chunk)
    return b"".join(chunks)


def _validation_error(exc: ValidationError) -> ApiError:
    """400 for unparseable JSON, 422 for wrong types; the message names the field(s)."""
    errors = exc.errors(include_url=False)
    parts, fields = [], []
    for err in errors[:3]:
        name = ".".join(str(x) for x in err.get("loc", ())) or "body"
        fields.append(name)
        parts.append(f"{name}: {err.get('msg', 'invalid')}")
    more = f" (and {len(errors) - 3} more errors)" if len(errors) > 3 else ""
    status = 400 if any(err.get("type") == "json_invalid" for err in errors) else 422
    if status == 400:
        return ApiError(400, f"the body is not valid JSON: {parts[0]}", "body")
    return ApiError(422, "; ".join(parts) + more, fields[0] if fields else "body")


def parse_request(body: bytes, cfg: ServeConfig) -> tuple[list[str], int, bool]:
    """Validate a ``/retrieve`` body against ``cfg``'s limits: (queries, topk, return_scores)."""
    try:
        req = RetrieveRequest.model_validate_json(body)
    except ValidationError as exc:
        raise _validation_error(exc) from None
    if not req.queries:
        raise ApiError(422, "queries must hold at least one query string", "queries")
    if len(req.queries) > cfg.max_queries_per_request:
        raise ApiError(413, f"queries has {len(req.queries)} entries; max_queries_per_request "
                            f"is {cfg.max_queries_per_request}", "queries")
    for i, query in enumerate(req.queries):
        if not query.strip():
            raise ApiError(422, f"queries.{i} is empty or blank; every query must hold text", f"queries.{i}")
        if len(query) > cfg.max_query_chars:
            raise ApiError(413, f"queries.{i} has {len(query)} characters; max_query_chars is "
                                f"{cfg.max_query_chars}", f"queries.{i}")
    topk = req.topk or cfg.default_topk  # null or 0 -> default, as Search-R1's `if not topk`
    if topk < 0:
        raise ApiError(422, f"topk must be >= 1 (or 0/null for the default), got {topk}", "topk")
    if topk > cfg.max_topk:
        raise ApiError(422, f"topk is {topk}; max_topk is {cfg.max_topk}", "topk")
    return req.queries, topk, req.return_scores


def _score(passage: Passage) -> float | None:
    score = passage.score
    return float(score) if score is not None and math.isfinite(score) else None


def format_result(rows: list[list[Passage]], return_scores: bool) -> list[list[dict[str, Any]]]:
    """Search-R1's ``result`` field: document dicts, wrapped with their score when asked."""
    if return_scores:
        return [[{"document": {"id": p.id, "contents": p.contents}, "score": _score(p)}
                 for p in row] for row in rows]
    return [[{"id": p.id, "contents": p.contents} for p in row] for row in rows]


def _passage_count(retriever: Retriever) -> int | None:
    """``len(retriever)``, else ``len(retriever.corpus)``, else None."""
    for obj in (retriever, getattr(retriever, "corpus", None)):
        try:
            return len(obj)  # type: ignore[arg-type]
        except TypeError:
            continue
    return None


class ClientGone(Exception):
    """The client of a request closed its connection before the answer was ready."""


async def _while_connected(request: Request, work: Awaitable[Any], poll_s: float = 0.05) -> Any:
    """Await ``work``; if the client disconnects first, cancel it (a request still waiting for its
    batch is then never searched) and raise `ClientGone`."""
    task = asyncio.ensure_future(work)
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=poll_s)
            if done:
                return task.result()
            if await request.is_disconnected():
                raise ClientGone
    finally:
        if not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


def create_app(retriever: Retriever, cfg: ServeConfig | None = None) -> FastAPI:
    """The FastAPI app serving ``retriever`` (see the module docstring for the API)."""
    cfg = cfg or ServeConfig()
    batcher = MicroBatcher(retriever, cfg.batch_wait_ms / 1000.0, cfg.max_batch_queries, cfg.search_chunk_queries)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        batcher.start()
        yield
        await batcher.stop()

    app = FastAPI(title="search-e1 retrieval", lifespan=lifespan)
    app.state.batcher = batcher
    app.state.config = cfg

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse({"detail": exc.message, "field": exc.field}, status_code=exc.status)

    @app.post("/retrieve")
    async def retrieve(request: Request) -> JSONResponse:
        """Search-R1's retrieval endpoint."""
        body = await _read_body(request, cfg.max_body_bytes)
        queries, topk, return_scores = parse_request(body, cfg)
        try:
            rows = await _while_connected(request, asyncio.wait_for(batcher.submit(queries, topk),
                                                                    cfg.request_timeout_s))
        except ClientGone:
            batcher.stats.abandoned_requests += 1
            log.info("client went away: its request of %d queries is dropped", len(queries))
            return Response(status_code=499)  # nginx's "client closed request"; nobody reads it
        except asyncio.TimeoutError:
            raise ApiError(504, f"retrieval took longer than request_timeout_s="
                                f"{cfg.request_timeout_s}") from None
        except RetrieverFailure as exc:
            raise ApiError(500, f"retrieval failed: {exc}") from None
        return JSONResponse({"result": format_result(rows, return_scores)})

    @app.get("/health")
    async def health() -> dict[str, Any]:
        """Liveness, corpus size and queue state."""
        stats = batcher.stats
        return {"status": "ok", "passages": _passage_count(retriever),
                "queue_depth": batcher.queue_depth, "in_flight_queries": batcher.in_flight_queries,
                "requests": stats.requests, "batches": stats.batches, "queries": stats.queries,
                "unique_queries": stats.unique_queries, "failed_batches": stats.failed_batches,
                "abandoned_requests": stats.abandoned_requests, "abandoned_queries": stats.abandoned_queries}

    return app


# ------------------------------------------------------------------ running it
def serve(retriever: Retriever, cfg: ServeConfig | None = None) -> None:
    """Serve ``retriever`` with uvicorn until interrupted (blocking)."""
    cfg = cfg or ServeConfig()
    if cfg.host not in _LOOPBACK:
        log.warning("the retrieval service binds %s: reachable from other machines", cfg.host)
    log.info("serving /retrieve on http://%s:%d", cfg.host, cfg.port)
    uvicorn.run(create_app(retriever, cfg), host=cfg.host, port=cfg.port, log_level=cfg.log_level)


class ServiceThread:
    """Runs an ASGI app with uvicorn in a daemon thread; a context manager (tests, in-process)."""

    def __init__(self, app: Any, host: str = "127.0.0.1", port: int = 0, *,
                 startup_timeout_s: float = 10.0, shutdown_timeout_s: float = 5.0,
                 log_level: str = "warning") -> None:
        config = uvicorn.Config(app, host=host, port=port, log_level=log_level, lifespan="on",
                                timeout_graceful_shutdown=max(1, math.ceil(shutdown_timeout_s)))
        self.server = uvicorn.Server(config)
        self.host = host
        self.startup_timeout_s = startup_timeout_s
        self.shutdown_timeout_s = shutdown_timeout_s
        self._thread = threading.Thread(target=self.server.run, name="retrieval-service",
                                        daemon=True)

    def start(self) -> ServiceThread:
        """Start serving; returns once the socket listens (TimeoutError/RuntimeError otherwise).

        Idempotent, so ``with serve_in_thread(...) as running:`` works.
        """
        if self._thread.ident is not None:
            return self
        self._thread.start()
        deadline = time.monotonic() + self.startup_timeout_s
        while not self.server.started:  # bounded by the deadline
            if not self._thread.is_alive():
                raise RuntimeError(f"the service on {self.host} failed to start (see the log)")
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError(f"the service did not start in {self.startup_timeout_s} s")
            time.sleep(0.01)
        return self

    @property
    def port(self) -> int:
        """The bound port (the real one when 0 was asked)."""
        return int(self.server.servers[0].sockets[0].getsockname()[1])

    @property
    def url(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:40123`` (append ``/retrieve``)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def stop(self) -> None:
        """Ask uvicorn to exit and wait (bounded) for the thread."""
        self.server.should_exit = True
        if self._thread.is_alive():
            self._thread.join(self.shutdown_timeout_s + self.startup_timeout_s)
        if self._thread.is_alive():
            log.warning("the retrieval service thread did not stop in time")

    def __enter__(self) -> ServiceThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def serve_in_thread(retriever: Retriever, cfg: ServeConfig | None = None) -> ServiceThread:
    """Start `create_app(retriever, cfg)` in a background thread (``cfg.port=0``: a free port)."""
    cfg = cfg or ServeConfig(port=0)
    return ServiceThread(create_app(retriever, cfg), cfg.host, cfg.port).start()

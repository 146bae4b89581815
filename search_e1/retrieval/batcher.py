"""`MicroBatcher`: the queries of concurrent ``/retrieve`` requests in shared ``Retriever.search`` calls.

One worker task takes the first waiting request, waits up to ``batch_wait_s`` for more (or until
``max_batch_queries`` queries wait), de-duplicates the queries, calls ``retriever.search`` once
with the batch's largest ``topk`` in a worker thread (``search_chunk`` queries per call), and hands
each request its own rows. A request abandoned while it waits (its caller timed out or its client
went away) is never searched; a batch whose every request is abandoned while it is searched stops
after the chunk in progress, so the next request does not wait behind queries nobody will read.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from dataclasses import dataclass

from search_e1.retrieval.base import Passage, Retriever

log = logging.getLogger(__name__)


class RetrieverFailure(RuntimeError):
    """``retriever.search`` raised, or returned the wrong number of rows."""


@dataclass
class _Waiting:
    queries: list[str]
    topk: int
    future: asyncio.Future[list[list[Passage]]]


@dataclass
class BatchStats:
    """Counters shown by ``GET /health``."""

    requests: int = 0
    batches: int = 0
    queries: int = 0
    unique_queries: int = 0
    failed_batches: int = 0
    abandoned_requests: int = 0
    abandoned_queries: int = 0
    """Queries of abandoned requests that were never searched (a batch stopped between chunks)."""


class MicroBatcher:
    """Coalesces the queries of concurrent requests into shared ``Retriever.search`` calls.

    Use it from one event loop: `submit` from request handlers; the worker task starts on the
    first `submit` (or `start`) and runs until `stop`.
    """

    def __init__(self, retriever: Retriever, batch_wait_s: float = 0.005,
                 max_batch_queries: int = 1024, search_chunk: int = 256) -> None:
        self.retriever = retriever
        self.batch_wait_s = batch_wait_s
        self.max_batch_queries = max_batch_queries
        self.search_chunk = search_chunk
        """Queries per ``retriever.search`` call: a batch whose every request was abandoned (client
        gone, timed out) stops after the chunk in progress instead of searching everything."""
        self.stats = BatchStats()
        self._waiting: collections.deque[_Waiting] = collections.deque()
        self._waiting_queries = 0
        self._in_flight = 0
        self._wakeup: asyncio.Event | None = None
        self._worker: asyncio.Task[None] | None = None

    @property
    def queue_depth(self) -> int:
        """Requests waiting for a batch (not counting the one being searched)."""
        return len(self._waiting)

    @property
    def in_flight_queries(self) -> int:
        """Queries of the search call running now (0 when idle)."""
        return self._in_flight

    def start(self) -> None:
        """Start the worker task on the running loop (idempotent; restarts a dead worker)."""
        if self._wakeup is None:
            self._wakeup = asyncio.Event()
        if self._worker is None or self._worker.done():
            self._worker = asyncio.get_running_loop().create_task(self._run(), name="micro-batcher")

    async def stop(self) -> None:
        """Stop the worker; requests still waiting fail with RetrieverFailure."""
        if self._worker is not None:
            self._worker.cancel()
            await asyncio.gather(self._worker, return_exceptions=True)
            self._worker = None
        while self._waiting:
            item = self._waiting.popleft()
            if not item.future.done():
                item.future.set_exception(RetrieverFailure("the service is shutting down"))
        self._waiting_queries = 0

    async def submit(self, queries: list[str], topk: int) -> list[list[Passage]]:
        """The ``topk`` best passages per query, searched together with concurrent requests."""
        if not queries:
            return []
        self.start()
        assert self._wakeup is not None
        future: asyncio.Future[list[list[Passage]]] = asyncio.get_running_loop().create_future()
        self._waiting.append(_Waiting(list(queries), topk, future))
        self._waiting_queries += len(queries)
        self.stats.requests += 1
        self._wakeup.set()
        try:
            return await future
        except asyncio.CancelledError:  # the caller gave up (timeout, client gone): not searched if still waiting
            future.cancel()
            raise

    async def _run(self) -> None:
        while True:  # one iteration per batch; ends when stop() cancels the task
            batch = await self._collect()
            if batch:
                await self._search(batch)

    async def _collect(self) -> list[_Waiting]:
        """Wait for a first request, then up to ``batch_wait_s`` for more; take one batch."""
        assert self._wakeup is not None
        while not self._waiting:
            self._wakeup.clear()
            await self._wakeup.wait()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.batch_wait_s
        while self._waiting_queries < self.max_batch_queries:  # bounded by the deadline
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            self._wakeup.clear()
            try:
                await asyncio.wait_for(self._wakeup.wait(), remaining)
            except asyncio.TimeoutError:
                break
        batch: list[_Waiting] = []
        size = 0
        while self._waiting and (not batch or size + len(self._waiting[0].queries)
                                 <= self.max_batch_queries):
            item = self._waiting.popleft()
            self._waiting_queries -= len(item.queries)
            if not item.future.done():  # skip requests abandoned while waiting (timeout, client gone)
                batch.append(item)
                size += len(item.queries)
        return batch

    async def _search(self, batch: list[_Waiting]) -> None:
        """One ``retriever.search`` call for the batch (in a thread); rows go back per request."""
        unique = list(dict.fromkeys(q for item in batch for q in item.queries))
        topk = max(item.topk for item in batch)
        self.stats.batches += 1
        self.stats.queries += sum(len(item.queries) for item in batch)
        self.stats.unique_queries += len(unique)
        self._in_flight = len(unique)
        try:
            rows: list[list[Passage]] = []
            for start in range(0, len(unique), self.search_chunk):
                if all(item.future.done() for item in batch):  # every caller went away: stop searching
                    self.stats.abandoned_queries += len(unique) - start
                    return
                chunk = unique[start : start + self.search_chunk]
                part = await asyncio.to_thread(self.retriever.search, chunk, topk)
                if len(part) != len(chunk):
                    raise RetrieverFailure(f"the retriever returned {len(part)} rows for {len(chunk)} queries")
                rows += part
        except Exception as exc:  # any retriever error fails this batch only
            self.stats.failed_batches += 1
            log.exception("retriever.search failed for a batch of %d queries", len(unique))
            error = exc if isinstance(exc, RetrieverFailure) else RetrieverFailure(
                f"{type(exc).__name__}: {exc}")
            for item in batch:
                if not item.future.done():
                    item.future.set_exception(error)
            return
        finally:
            self._in_flight = 0
        by_query = dict(zip(unique, rows, strict=True))
        for item in batch:
            if not item.future.done():
                item.future.set_result([list(by_query[q][: item.topk]) for q in item.queries])

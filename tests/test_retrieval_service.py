"""The ``/retrieve`` service (search_e1.retrieval.service) and its HTTP client (search_e1.retrieval.http).

Everything runs on 127.0.0.1 with ephemeral ports, against an in-memory `FakeRetriever` (six
passages, deterministic scores, a log of its ``search`` calls) or small scripted stub apps; no model
and no index. Also checks the service with `tests/search_r1_client.py`, an independent stdlib client
written from the API description in DESIGN.md section 3.

Run::

    OMP_NUM_THREADS=1 python -m pytest tests/test_retrieval_service.py -q
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import search_r1_client  # tests/ is on sys.path (pytest rootdir-relative import)
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from search_e1.retrieval import Passage, Retriever
from search_e1.retrieval.batcher import MicroBatcher
from search_e1.retrieval.http import (
    HTTPRetriever,
    HTTPRetrieverConfig,
    RetrievalServiceError,
)
from search_e1.retrieval.service import (
    ServeConfig,
    ServiceThread,
    create_app,
    serve_in_thread,
)

PASSAGES = [
    ("p0", "Ada Lovelace", "Ada wrote the first program for the analytical engine."),
    ("p1", "Bob Marsh", "Bob is a cook in the harbour town of Velm."),
    ("p2", "Zorvex Labs", "Zorvex Labs was founded by Ada Lovelace and Bob Marsh."),
    ("p3", "Velm", "Velm is a harbour town on the northern coast."),
    ("p4", "Analytical engine", "The analytical engine is a mechanical computer."),
    ("p5", "Harbour", "A harbour shelters ships from the sea."),
]


def rank(query: str, topk: int) -> list[Passage]:
    """Reference answer: score = shared lowercase words + a tie-break of (6 - row) / 100."""
    words = set(query.lower().split())
    scored = []
    for row, (pid, title, text) in enumerate(PASSAGES):
        overlap = len(words & set(f"{title} {text}".lower().replace(".", "").split()))
        scored.append(Passage(pid, title, text, overlap + (len(PASSAGES) - row) / 100))
    return sorted(scored, key=lambda p: -p.score)[:topk]


class FakeRetriever:
    """Deterministic in-memory retriever; records every ``search`` call."""

    def __init__(self, delay_s: float = 0.0) -> None:
        self.delay_s = delay_s
        self.fail = False
        self.calls: list[tuple[list[str], int]] = []
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(PASSAGES)

    def search(self, queries: list[str], topk: int) -> list[list[Passage]]:
        with self._lock:
            self.calls.append((list(queries), topk))
        if self.delay_s:
            time.sleep(self.delay_s)
        if self.fail:
            raise RuntimeError("index exploded")
        return [rank(q, topk) for q in queries]


def as_scored(passages: list[Passage]) -> list[dict[str, Any]]:
    return [{"document": {"id": p.id, "contents": p.contents}, "score": p.score} for p in passages]


def as_plain(passages: list[Passage]) -> list[dict[str, Any]]:
    return [{"id": p.id, "contents": p.contents} for p in passages]


SMALL = dict(max_queries_per_request=16, max_query_chars=200, max_topk=5, max_body_bytes=4096,
             batch_wait_ms=5.0, request_timeout_s=5.0)


@pytest.fixture(scope="module")
def fake() -> FakeRetriever:
    return FakeRetriever()


@pytest.fixture(scope="module")
def service(fake: FakeRetriever) -> Iterator[str]:
    with serve_in_thread(fake, ServeConfig(port=0, **SMALL)) as running:
        yield running.url


def post(url: str, body: Any = None, content: bytes | None = None) -> httpx.Response:
    if content is not None:
        return httpx.post(url + "/retrieve", content=content, timeout=5.0)
    return httpx.post(url + "/retrieve", json=body, timeout=5.0)


def assert_still_up(url: str) -> None:
    response = post(url, {"queries": ["velm harbour"], "topk": 2, "return_scores": True})
    assert response.status_code == 200, response.text
    assert response.json() == {"result": [as_scored(rank("velm harbour", 2))]}


# ------------------------------------------------------------------ answers
def test_retrieve_with_scores(service: str) -> None:
    queries = ["ada program", "bob cook velm"]
    response = post(service, {"queries": queries, "topk": 2, "return_scores": True})
    assert response.status_code == 200, response.text
    # "ada program": p0 shares 2 words (2 + 6/100), p2 shares 1 (1 + 4/100), then no overlap:
    # p1 (5/100); "bob cook velm": p1 shares 3 (3.05), p2 1 (bob: 1.04), p3 1 (velm: 1.03)
    assert response.json() == {"result": [as_scored(rank(q, 2)) for q in queries]}
    assert response.json()["result"][0][0] == {
        "document": {"id": "p0", "contents": '"Ada Lovelace"\nAda wrote the first program for '
                                             'the analytical engine.'}, "score": 2.06}


def test_retrieve_without_scores_and_defaults(service: str) -> None:
    # Search-R1's QueryRequest: topk optional (server default 3, also for null/0), scores off
    for body in ({"queries": ["zorvex"]}, {"queries": ["zorvex"], "topk": None},
                 {"queries": ["zorvex"], "topk": 0, "return_scores": False}):
        response = post(service, body)
        assert response.status_code == 200, response.text
        assert response.json() == {"result": [as_plain(rank("zorvex", 3))]}


def test_health(service: str) -> None:
    body = httpx.get(service + "/health", timeout=5.0).json()
    assert body["status"] == "ok" and body["passages"] == 6 and body["queue_depth"] == 0


# ------------------------------------------------------------------ shared batches
def test_concurrent_requests_share_search_calls() -> None:
    fake = FakeRetriever(delay_s=0.1)
    cfg = ServeConfig(port=0, batch_wait_ms=100.0, request_timeout_s=5.0)
    queries = [f"{w} harbour" for w in ("ada", "bob", "velm", "zorvex", "engine", "sea", "cook",
                                        "town")]

    async def fire(url: str) -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=5.0) as client:
            return await asyncio.gather(*[
                client.post(url + "/retrieve", json={"queries": [q], "topk": 1 + i % 5,
                                                     "return_scores": True})
                for i, q in enumerate(queries)])

    with serve_in_thread(fake, cfg) as running:
        responses = asyncio.run(fire(running.url))
        health = httpx.get(running.url + "/health", timeout=5.0).json()
    for i, (q, response) in enumerate(zip(queries, responses, strict=True)):
        assert response.status_code == 200, response.text
        assert response.json() == {"result": [as_scored(rank(q, 1 + i % 5))]}
    assert len(fake.calls) <= 3, fake.calls  # 8 requests -> 1 to 3 shared searches
    assert sorted(q for call, _ in fake.calls for q in call) == sorted(queries)
    topk_of = {q: 1 + i % 5 for i, q in enumerate(queries)}
    assert all(k == max(topk_of[q] for q in call) for call, k in fake.calls)  # max, then cut
    assert health["requests"] == 8 and health["batches"] == len(fake.calls)


def test_micro_batcher_batches_dedupes_and_caps() -> None:
    async def run(batcher: MicroBatcher, requests: list[list[str]]) -> list[Any]:
        try:
            return await asyncio.gather(*[batcher.submit(qs, 2) for qs in requests])
        finally:
            await batcher.stop()

    # 8 requests enqueued before the worker runs: one call, duplicates searched once
    fake = FakeRetriever()
    requests = [["ada", "bob"], ["ada", "velm"]] * 4
    out = asyncio.run(run(MicroBatcher(fake, batch_wait_s=0.05, max_batch_queries=1024), requests))
    assert fake.calls == [(["ada", "bob", "velm"], 2)]
    assert out == [[rank(q, 2) for q in qs] for qs in requests]
    # max_batch_queries=4 with 2-query requests: 16 queries -> exactly 4 calls of 2 requests
    fake = FakeRetriever()
    requests = [[f"q{i}a", f"q{i}b"] for i in range(8)]
    asyncio.run(run(MicroBatcher(fake, batch_wait_s=0.05, max_batch_queries=4), requests))
    assert [len(queries) for queries, _ in fake.calls] == [4, 4, 4, 4]


# ------------------------------------------------------------------ limits and garbage
@pytest.mark.parametrize("body, status, field", [
    ({"queries": []}, 422, "queries"),
    ({"queries": [f"q{i}" for i in range(17)]}, 413, "queries"),     # max_queries_per_request=16
    ({"queries": ["ok", "x" * 201]}, 413, "queries.1"),                # max_query_chars=200
    ({"queries": ["ok", "  "]}, 422, "queries.1"),                     # blank query
    ({"queries": [""]}, 422, "queries.0"),                             # empty query
    ({"queries": ["ok"], "topk": 6}, 422, "topk"),                     # max_topk=5
    ({"queries": ["ok"], "topk": -1}, 422, "topk"),
    ({"queries": ["ok"], "pad": "x" * 5000}, 413, "body"),             # max_body_bytes=4096
])
def test_limits_answer_4xx_naming_the_field(service: str, body: Any, status: int,
                                            field: str) -> None:
    response = post(service, body)
    assert response.status_code == status, response.text
    assert response.json()["field"] == field
    assert field.split(".")[0] in response.json()["detail"]
    assert_still_up(service)


@pytest.mark.parametrize("content, status, field", [
    (b"{not json", 400, "body"),
    (b"", 400, "body"),
    (b"\xff\xfe garbage", 400, "body"),
    (b"[1, 2]", 422, "body"),
    (b'{"topk": 3}', 422, "queries"),
    (b'{"queries": "one string"}', 422, "queries"),
    (b'{"queries": null}', 422, "queries"),
    (b'{"queries": [1, "x"]}', 422, "queries.0"),
    (b'{"queries": ["x"], "topk": "3"}', 422, "topk"),
    (b'{"queries": ["x"], "topk": 2.5}', 422, "topk"),
    (b'{"queries": ["x"], "return_scores": "yes"}', 422, "return_scores"),
])
def test_malformed_requests_answer_4xx_and_service_stays_up(service: str, content: bytes,
                                                             status: int, field: str) -> None:
    response = post(service, content=content)
    assert response.status_code == status, response.text
    body = response.json()
    assert body["field"] == field and isinstance(body["detail"], str) and body["detail"]
    assert_still_up(service)


def test_retriever_exception_gives_500_then_service_answers(service: str,
                                                           fake: FakeRetriever) -> None:
    fake.fail = True
    try:
        response = post(service, {"queries": ["ada"], "topk": 1})
    finally:
        fake.fail = False
    assert response.status_code == 500
    assert "index exploded" in response.json()["detail"]
    assert_still_up(service)


def test_slow_search_gives_504() -> None:
    cfg = ServeConfig(port=0, request_timeout_s=0.1)
    with serve_in_thread(FakeRetriever(delay_s=0.4), cfg) as running:
        response = post(running.url, {"queries": ["ada"]})
    assert response.status_code == 504
    assert "request_timeout_s" in response.json()["detail"]


def test_a_request_whose_client_went_away_is_not_searched() -> None:
    """A search is running (0.6 s); a second client sends its request and disconnects while it waits
    for the next batch: its queries never reach the retriever, /health counts it, and the service
    answers the next request."""
    fake = FakeRetriever(delay_s=0.6)
    with serve_in_thread(fake, ServeConfig(port=0)) as running:
        first = threading.Thread(target=post, args=(running.url, {"queries": ["ada"]}))
        first.start()
        time.sleep(0.2)  # the first search runs now
        host, port = running.url.removeprefix("http://").split(":")
        body = json.dumps({"queries": ["gone client"]}).encode()
        with socket.create_connection((host, int(port))) as sock:
            sock.sendall(b"POST /retrieve HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                         + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
            time.sleep(0.1)  # the request is read and waits behind the running search
        first.join()
        time.sleep(0.3)
        health = httpx.get(running.url + "/health", timeout=5.0).json()
        assert_still_up(running.url)
    searched = [q for queries, _ in fake.calls for q in queries]
    assert "ada" in searched and "gone client" not in searched
    assert health["abandoned_requests"] == 1


def test_a_client_gone_during_its_search_stops_it_after_the_chunk_in_progress() -> None:
    """A 1,000-query request is searched 100 queries at a time (0.2 s a chunk); its client disconnects
    during the first chunk: the service searches no further chunk, counts the rest as abandoned, and
    the next request is answered at once instead of after the 2 s the whole request would take."""
    fake = FakeRetriever(delay_s=0.2)
    cfg = ServeConfig(port=0, search_chunk_queries=100, max_queries_per_request=2000)
    with serve_in_thread(fake, cfg) as running:
        host, port = running.url.removeprefix("http://").split(":")
        body = json.dumps({"queries": [f"q{i}" for i in range(1000)]}).encode()
        with socket.create_connection((host, int(port))) as sock:
            sock.sendall(b"POST /retrieve HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                         + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
            time.sleep(0.1)  # the first chunk is being searched
        start = time.perf_counter()
        response = post(running.url, {"queries": ["ada"]})
        waited = time.perf_counter() - start
        health = httpx.get(running.url + "/health", timeout=5.0).json()
    assert response.status_code == 200 and waited < 1.0
    chunks = [queries for queries, _ in fake.calls if queries[0].startswith("q")]
    assert len(chunks) <= 2 and all(len(c) == 100 for c in chunks)  # the running chunk (and at most one more)
    assert health["abandoned_requests"] == 1 and health["abandoned_queries"] >= 800


def test_config_validation_names_the_field() -> None:
    with pytest.raises(ValueError, match="max_topk"):
        ServeConfig(max_topk=0)
    with pytest.raises(ValueError, match="default_topk"):
        ServeConfig(default_topk=10, max_topk=5)
    with pytest.raises(ValueError, match="batch_wait_ms"):
        ServeConfig(batch_wait_ms=-1)
    with pytest.raises(ValueError, match="log_level: expected one of critical, error"):
        ServeConfig(log_level="loud")
    with pytest.raises(ValueError, match="url"):
        HTTPRetrieverConfig(url="ftp://127.0.0.1/retrieve")
    with pytest.raises(ValueError, match="retries"):
        HTTPRetrieverConfig(retries=-1)
    with pytest.raises(ValueError, match="timeout_s"):
        HTTPRetrieverConfig(timeout_s=0)


# ------------------------------------------------------------------ HTTPRetriever
def test_http_retriever_against_the_service(service: str) -> None:
    queries = ["ada program", "velm harbour", "ada program"]
    with HTTPRetriever(service + "/retrieve", timeout_s=5.0) as retriever:
        assert isinstance(retriever, Retriever)
        assert retriever.search(queries, 3) == [rank(q, 3) for q in queries]
        assert retriever.search([], 3) == []
        assert retriever.health()["passages"] == 6
    with HTTPRetriever(service, timeout_s=5.0, return_scores=False) as retriever:  # bare base URL
        plain = retriever.search(["zorvex"], 2)
    assert plain == [[Passage(p.id, p.title, p.text, None) for p in rank("zorvex", 2)]]


def test_retriever_kind_http_in_config_reaches_the_service(service: str) -> None:
    """``data.retriever.kind: http`` builds a client of a running service (several trainers can
    share one); kind dense needs a corpus; an unknown kind is refused with the choices."""
    from search_e1.retrieval.dense import RetrieverConfig, build_retriever

    retriever = build_retriever(RetrieverConfig(kind="http", http={"url": service, "timeout_s": 5.0}))
    assert isinstance(retriever, HTTPRetriever) and retriever.config.timeout_s == 5.0
    assert retriever.search(["ada program"], 2) == [rank("ada program", 2)]
    with pytest.raises(ValueError, match="corpus must be the path"):
        RetrieverConfig(kind="dense")
    with pytest.raises(ValueError, match=r"kind: expected one of \['dense', 'http'\], got 'grpc'"):
        RetrieverConfig(kind="grpc", corpus="c.jsonl")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_http_retriever_service_down_is_a_clear_bounded_error() -> None:
    url = f"http://127.0.0.1:{free_port()}/retrieve"
    start = time.monotonic()
    with HTTPRetriever(url, timeout_s=1.0, retries=2, backoff_s=0.05) as retriever:
        with pytest.raises(RetrievalServiceError) as info:
            retriever.search(["ada"], 3)
    elapsed = time.monotonic() - start
    assert info.value.attempts == 3 and info.value.status is None and info.value.url == url
    assert url in str(info.value) and "3 attempt" in str(info.value)
    assert "connect" in str(info.value).lower()
    assert 0.15 <= elapsed < 3.0  # backoff 0.05 + 0.1


def test_http_retriever_slow_service_times_out_after_retries() -> None:
    with socket.socket() as listener:  # accepts connections (kernel backlog) but never answers
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        url = f"http://127.0.0.1:{listener.getsockname()[1]}/retrieve"
        start = time.monotonic()
        with HTTPRetriever(url, timeout_s=0.2, retries=1, backoff_s=0.05) as retriever:
            with pytest.raises(RetrievalServiceError) as info:
                retriever.search(["ada"], 3)
        elapsed = time.monotonic() - start
    assert info.value.attempts == 2 and "timeout_s=0.2" in str(info.value) and url in str(info.value)
    assert 0.45 <= elapsed < 3.0  # two 0.2 s timeouts + 0.05 s backoff


class Script:
    """HTTP statuses a stub service answers with, in order (the last one repeats)."""

    def __init__(self) -> None:
        self.statuses = [200]
        self.calls = 0


@pytest.fixture(scope="module")
def stub() -> Iterator[tuple[str, Script]]:
    script = Script()
    app = FastAPI()

    @app.post("/retrieve")
    async def retrieve(request: Request) -> JSONResponse:
        body = await request.json()
        status = script.statuses[min(script.calls, len(script.statuses) - 1)]
        script.calls += 1
        if status != 200:
            return JSONResponse({"detail": f"scripted {status}"}, status_code=status)
        hit = {"document": {"id": "p0", "contents": '"Ada Lovelace"\nAda.'}, "score": 1.5}
        return JSONResponse({"result": [[hit] for _ in body["queries"]]})

    with ServiceThread(app) as running:
        yield running.url + "/retrieve", script


def test_http_retriever_retries_5xx_then_succeeds(stub: tuple[str, Script]) -> None:
    url, script = stub
    script.statuses, script.calls = [503, 200], 0
    with HTTPRetriever(url, timeout_s=2.0, retries=2, backoff_s=0.01) as retriever:
        rows = retriever.search(["a", "b"], 3)
    assert script.calls == 2
    assert rows == [[Passage("p0", "Ada Lovelace", "Ada.", 1.5)]] * 2


def test_http_retriever_gives_up_after_repeated_5xx(stub: tuple[str, Script]) -> None:
    url, script = stub
    script.statuses, script.calls = [500], 0
    with HTTPRetriever(url, timeout_s=2.0, retries=2, backoff_s=0.01) as retriever:
        with pytest.raises(RetrievalServiceError, match="scripted 500") as info:
            retriever.search(["a"], 3)
    assert script.calls == 3 and info.value.attempts == 3 and info.value.status == 500


def test_http_retriever_does_not_retry_4xx(stub: tuple[str, Script]) -> None:
    url, script = stub
    script.statuses, script.calls = [422, 200], 0
    with HTTPRetriever(url, timeout_s=2.0, retries=3, backoff_s=0.01) as retriever:
        with pytest.raises(RetrievalServiceError, match="refused.*HTTP 422: scripted 422"):
            retriever.search(["a"], 3)
    assert script.calls == 1


# ------------------------------------------------------------------ Search-R1-style client
def test_independent_search_r1_client(service: str) -> None:
    url = service + "/retrieve"
    queries = ["ada program", "bob cook velm"]
    scored = search_r1_client.retrieve(url, queries, topk=3, return_scores=True)
    plain = search_r1_client.retrieve(url, queries, topk=2, return_scores=False)
    assert scored == [as_scored(rank(q, 3)) for q in queries]
    assert plain == [as_plain(rank(q, 2)) for q in queries]
    assert search_r1_client.titles(scored[0]) == ["Ada Lovelace", "Zorvex Labs", "Bob Marsh"]
    assert search_r1_client.titles(plain[1]) == ["Bob Marsh", "Zorvex Labs"]
    assert all(isinstance(hit["score"], float) for row in scored for hit in row)
    json.dumps(scored)  # plain JSON types only


def test_create_app_over_asgi_transport() -> None:
    """No socket: the app answers through httpx's ASGI transport (lifespan not run)."""
    async def call() -> httpx.Response:
        transport = httpx.ASGITransport(app=create_app(FakeRetriever(), ServeConfig()))
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return await client.post("/retrieve", json={"queries": ["sea"], "topk": 1,
                                                        "return_scores": True})

    response = asyncio.run(call())
    assert response.json() == {"result": [as_scored(rank("sea", 1))]}

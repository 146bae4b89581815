"""A `Retriever` that calls a ``/retrieve`` service (ours, `search_e1.retrieval.service`, or Search-R1's).

What: `HTTPRetriever(url).search(queries, topk)` posts ``{"queries", "topk", "return_scores"}`` and
turns either answer shape, ``[[{"document": {"id", "contents"}, "score"}, ...]]`` or plain
``[[{"id", "contents"}, ...]]``, into `Passage` lists. One pooled ``httpx.Client`` per retriever
(thread-safe); every call has a timeout; connection errors, timeouts, 5xx and 429 are retried with
exponential backoff (``backoff_s``, doubled per retry, capped at ``max_backoff_s``); other 4xx are
not retried. When the service stays down, slow or erroring, `RetrievalServiceError` names the URL,
the number of attempts and the last failure.

Departures from Search-R1's client (``LLMGenerationManager._batch_search`` in
``search_r1/llm_agent/generation.py``): Search-R1 calls ``requests.post(url, json=payload).json()``
with no timeout, no retry and no status check, so a dead or hung server blocks or crashes the
rollout with an unrelated error; here failures are bounded in time and explicit. A ``url`` with no
path gets ``/retrieve`` appended. Corpus rows without ``contents`` but with ``title``/``text``
(Search-R1's BM25 answers) are accepted.

Run::

    from search_e1.retrieval.http import HTTPRetriever
    with HTTPRetriever("http://127.0.0.1:8000/retrieve", timeout_s=10, retries=3) as r:
        print(r.search(["Who founded Zorvex Labs?"], topk=3)[0][0].title)
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx

from search_e1.retrieval.base import Passage

__all__ = ["HTTPRetriever", "HTTPRetrieverConfig", "RetrievalServiceError"]

log = logging.getLogger(__name__)

_RETRY_STATUS = 429  # "too many requests": transient, the one 4xx that is retried


class RetrievalServiceError(RuntimeError):
    """The retrieval service did not give a usable answer (down, too slow, erroring, malformed)."""

    def __init__(self, message: str, *, url: str, attempts: int, status: int | None = None) -> None:
        super().__init__(message)
        self.url = url
        """The endpoint that was called."""
        self.attempts = attempts
        """How many requests were sent (1 + retries when every retry failed)."""
        self.status = status
        """The last HTTP status, None when no answer came (connection error, timeout)."""


@dataclass
class HTTPRetrieverConfig:
    """Settings of `HTTPRetriever`."""

    url: str = "http://127.0.0.1:8000/retrieve"
    """The service's ``/retrieve`` endpoint (a bare ``http://host:port`` gets ``/retrieve``)."""
    timeout_s: float = 30.0
    """Per-request timeout (connect, send, each read) in seconds."""
    retries: int = 3
    """Retries after the first attempt, on connection errors, timeouts, 5xx and 429."""
    backoff_s: float = 0.5
    """Sleep before the first retry; doubled for each further retry."""
    max_backoff_s: float = 8.0
    """Cap on the sleep between two attempts."""
    pool_size: int = 8
    """Most open connections (and kept-alive ones) to the service."""
    return_scores: bool = True
    """Ask for scores (``Passage.score``); False gives ``score=None`` passages."""

    def __post_init__(self) -> None:
        parts = urlsplit(self.url) if isinstance(self.url, str) else None
        if parts is None or parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"HTTPRetrieverConfig.url must be an http(s) URL such as http://127.0.0.1:8000/retrieve, "
                             f"got {self.url!r}")
        if not (isinstance(self.timeout_s, (int, float)) and math.isfinite(self.timeout_s)
                and self.timeout_s > 0):
            raise ValueError(f"HTTPRetrieverConfig.timeout_s must be a finite number > 0, got {self.timeout_s!r}")
        if not isinstance(self.retries, int) or isinstance(self.retries, bool) or self.retries < 0:
            raise ValueError(f"HTTPRetrieverConfig.retries must be an int >= 0, got {self.retries!r}")
        if not (isinstance(self.backoff_s, (int, float)) and self.backoff_s >= 0):
            raise ValueError(f"HTTPRetrieverConfig.backoff_s must be a number >= 0, got {self.backoff_s!r}")
        if not (isinstance(self.max_backoff_s, (int, float)) and self.max_backoff_s >= 0):
            raise ValueError(f"HTTPRetrieverConfig.max_backoff_s must be a number >= 0, got {self.max_backoff_s!r}")
        if not isinstance(self.pool_size, int) or isinstance(self.pool_size, bool) \
                or self.pool_size < 1:
            raise ValueError(f"HTTPRetrieverConfig.pool_size must be an int >= 1, got {self.pool_size!r}")


def _endpoint(url: str) -> str:
    """``url`` itself, or ``url + "/retrieve"`` when it has no path."""
    return url.rstrip("/") + "/retrieve" if urlsplit(url).path in ("", "/") else url


class HTTPRetriever:
    """The `Retriever` protocol over HTTP: ``search(queries, topk) -> list[list[Passage]]``."""

    def __init__(self, url: str, timeout_s: float = 30.0, retries: int = 3, backoff_s: float = 0.5,
                 pool_size: int = 8, *, max_backoff_s: float = 8.0,
                 return_scores: bool = True) -> None:
        self.config = HTTPRetrieverConfig(url=url, timeout_s=timeout_s, retries=retries,
                                          backoff_s=backoff_s, max_backoff_s=max_backoff_s,
                                          pool_size=pool_size, return_scores=return_scores)
        self.url = _endpoint(url)
        limits = httpx.Limits(max_connections=pool_size, max_keepalive_connections=pool_size)
        self._client = httpx.Client(timeout=httpx.Timeout(timeout_s), limits=limits)

    @classmethod
    def from_config(cls, cfg: HTTPRetrieverConfig) -> HTTPRetriever:
        """Build from an `HTTPRetrieverConfig`."""
        return cls(cfg.url, cfg.timeout_s, cfg.retries, cfg.backoff_s, cfg.pool_size,
                   max_backoff_s=cfg.max_backoff_s, return_scores=cfg.return_scores)

    def search(self, queries: list[str], topk: int) -> list[list[Passage]]:
        """The ``topk`` best passages per query, best first (RetrievalServiceError on failure)."""
        if isinstance(queries, str):
            raise TypeError("queries must be a list of strings, got a single string")
        if not queries:
            return []
        if topk <= 0:
            return [[] for _ in queries]
        payload = {"queries": list(queries), "topk": int(topk),
                   "return_scores": self.config.return_scores}
        data, attempts = self._post(payload)
        try:
            return parse_result(data, len(queries), topk)
        except (AttributeError, KeyError, TypeError, ValueError) as exc:
            raise RetrievalServiceError(f"retrieval service at {self.url} sent a malformed "
                                        f"answer: {exc}", url=self.url, attempts=attempts) from None

    def health(self) -> dict[str, Any]:
        """``GET /health`` of our service (one attempt; RetrievalServiceError when unreachable)."""
        url = self.url[: -len("/retrieve")] + "/health" if self.url.endswith("/retrieve") \
            else self.url.rstrip("/") + "/health"
        try:
            response = self._client.get(url)
            response.raise_for_status()
            return response.json()
        except (httpx.HTTPError, ValueError) as exc:
            raise RetrievalServiceError(f"retrieval service at {url} is not healthy: "
                                        f"{type(exc).__name__}: {exc}", url=url,
                                        attempts=1) from None

    def _post(self, payload: dict[str, Any]) -> tuple[Any, int]:
        """POST with retries; the decoded JSON answer and the number of attempts it took."""
        attempts = self.config.retries + 1
        last, status = "no attempt", None
        for attempt in range(1, attempts + 1):  # bounded: 1 + retries
            try:
                response = self._client.post(self.url, json=payload)
            except httpx.TimeoutException as exc:
                last, status = (f"no answer within timeout_s={self.config.timeout_s} "
                                f"({type(exc).__name__})"), None
            except httpx.TransportError as exc:
                last, status = f"cannot connect ({type(exc).__name__}: {exc})", None
            else:
                status = response.status_code
                if 200 <= status < 300:
                    return self._decode(response, attempt), attempt
                last = f"HTTP {status}: {_detail(response)}"
                if status < 500 and status != _RETRY_STATUS:
                    raise RetrievalServiceError(f"retrieval service at {self.url} refused the "
                                                f"request: {last}", url=self.url,
                                                attempts=attempt, status=status)
            if attempt < attempts:
                delay = min(self.config.backoff_s * 2 ** (attempt - 1), self.config.max_backoff_s)
                log.warning("retrieval service at %s: %s; retry %d/%d in %.2f s", self.url, last,
                            attempt, attempts - 1, delay)
                time.sleep(delay)
        raise RetrievalServiceError(f"retrieval service at {self.url} failed after {attempts} "
                                    f"attempt(s): {last}", url=self.url, attempts=attempts,
                                    status=status)

    def _decode(self, response: httpx.Response, attempt: int) -> Any:
        try:
            return response.json()
        except ValueError as exc:
            raise RetrievalServiceError(f"retrieval service at {self.url} answered with invalid "
                                        f"JSON: {exc}", url=self.url, attempts=attempt,
                                        status=response.status_code) from None

    def close(self) -> None:
        """Close the pooled connections."""
        self._client.close()

    def __enter__(self) -> HTTPRetriever:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"HTTPRetriever({self.url!r})"


def _detail(response: httpx.Response) -> str:
    """The service's error message (our ``detail``), else the start of the body."""
    try:
        body = response.json()
    except ValueError:
        return response.text[:200] or response.reason_phrase
    if isinstance(body, dict) and "detail" in body:
        return str(body["detail"])[:500]
    return str(body)[:200]


def _passage(item: dict[str, Any]) -> Passage:
    """One element of a ``result`` row, with or without the ``{"document", "score"}`` wrapper."""
    doc, score = item, None
    if isinstance(item.get("document"), dict):
        doc, score = item["document"], item.get("score")
    score = float(score) if isinstance(score, (int, float)) and not isinstance(score, bool) \
        else None
    doc_id = str(doc.get("id", ""))
    if "contents" in doc:
        return Passage.from_contents(doc_id, str(doc["contents"]), score)
    return Passage(doc_id, str(doc["title"]).strip('"'), str(doc.get("text", "")), score)


def parse_result(data: Any, n_queries: int, topk: int) -> list[list[Passage]]:
    """``{"result": [[...], ...]}`` (either Search-R1 shape) -> one Passage list per query.

    >>> parse_result({"result": [[{"document": {"id": "1", "contents": '"A"\\nx'}, "score": 2}]]}, 1, 3)
    [[Passage(id='1', title='A', text='x', score=2.0)]]
    >>> parse_result({"result": [[{"id": "1", "contents": '"A"\\nx'}]]}, 1, 3)[0][0].score is None
    True
    """
    result = data.get("result") if isinstance(data, dict) else None
    if not isinstance(result, list):
        raise ValueError(f"expected {{'result': [...]}}, got {str(data)[:200]}")
    if len(result) != n_queries:
        raise ValueError(f"{len(result)} result rows for {n_queries} queries")
    rows = []
    for row in result:
        if not isinstance(row, list):
            raise ValueError(f"a result row is {type(row).__name__}, not a list")
        rows.append([_passage(item) for item in row[:topk]])
    return rows

"""An independent client of the ``/retrieve`` API, written only from DESIGN.md section 3.

The API as described there: ``POST /retrieve`` with ``{"queries": [str], "topk": int,
"return_scores": bool}`` answers ``{"result": [[{"document": {"id", "contents"}, "score": float},
...], ...]}``, or plain document lists ``[[{"id", "contents"}, ...], ...]`` when scores are off.
Corpus ``contents`` are ``"Title"\\ntext``. Standard library only and no search_e1 import, so it
checks the service against the description rather than against our own client code.

Run (with a service listening)::

    python tests/search_r1_client.py http://127.0.0.1:8000/retrieve "Who founded Zorvex Labs?"
"""

from __future__ import annotations

import json
import sys
import urllib.request
from typing import Any


def retrieve(url: str, queries: list[str], topk: int = 3, return_scores: bool = True,
             timeout_s: float = 10.0) -> list[list[dict[str, Any]]]:
    """POST the queries and return the ``result`` field (one list of hits per query)."""
    payload = {"queries": queries, "topk": topk, "return_scores": return_scores}
    request = urllib.request.Request(url, data=json.dumps(payload).encode("utf-8"),
                                     headers={"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(request, timeout=timeout_s) as response:
        body = json.loads(response.read().decode("utf-8"))
    return body["result"]


def titles(hits: list[dict[str, Any]]) -> list[str]:
    """The titles of one query's hits, whichever of the two shapes they come in."""
    docs = [hit["document"] if "document" in hit else hit for hit in hits]
    return [doc["contents"].split("\n")[0].strip('"') for doc in docs]


if __name__ == "__main__":
    for row in retrieve(sys.argv[1], sys.argv[2:] or ["test"]):
        print(json.dumps(row, indent=2))

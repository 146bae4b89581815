"""The passage store: a wiki-18 style jsonl corpus held in memory, addressed by position.

Each line is ``{"id": ..., "contents": "\\"Title\\"\\ntext"}``; position ``i`` in the file is row
``i`` of the faiss index built from it, so retrievers map index hits back with
`Corpus.get_by_position`. Malformed lines fail loudly with ``path:line: what was expected``.

How it departs from Search-R1: Search-R1 loads the corpus with ``datasets.load_dataset("json")``
(an Arrow cache on disk) and silently accepts any line shape; here loading is plain ``json``,
validated line by line, and duplicate ids are an error (two rows with one id make recall
metrics and supporting-passage checks ambiguous). Integer ids are accepted and kept as strings.

Run::

    from search_e1.retrieval import load_corpus
    corpus = load_corpus("demo/world/corpus.jsonl"); corpus[0].title
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from search_e1.errors import UserInputError
from search_e1.retrieval.base import Passage

__all__ = ["Corpus", "CorpusFormatError", "load_corpus"]


class CorpusFormatError(UserInputError):
    """A corpus line is not ``{"id": str|int, "contents": str}`` (the message names the line)."""


class Corpus:
    """Passages in file order; ``corpus[i]`` is the passage behind index row ``i``."""

    def __init__(self, ids: list[str], contents: list[str], path: str | None = None) -> None:
        if len(ids) != len(contents):
            raise ValueError(f"{len(ids)} ids but {len(contents)} contents")
        self.ids = ids
        """Passage ids, in file order."""
        self.contents = contents
        """wiki-18 ``contents`` strings (``"Title"\\ntext``), in file order."""
        self.path = path
        """The file it was loaded from, when it was loaded from one."""
        self._position: dict[str, int] | None = None

    @classmethod
    def from_records(cls, records: Iterable[dict[str, Any]], path: str | None = None) -> Corpus:
        """Build from ``{"id", "contents"}`` dicts (e.g. `search_e1.demo_world.World.passages`)."""
        ids, contents = [], []
        for rec in records:
            ids.append(str(rec["id"]))
            contents.append(rec["contents"])
        return cls(ids, contents, path)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> Passage:
        if not isinstance(i, int):
            raise TypeError(f"Corpus positions are ints, got {type(i).__name__}")
        return Passage.from_contents(self.ids[i], self.contents[i])

    def __iter__(self) -> Iterator[Passage]:
        for i in range(len(self)):
            yield self[i]

    def get_by_position(
        self, positions: Sequence[int], scores: Sequence[float] | None = None
    ) -> list[Passage]:
        """Passages at ``positions`` (index rows), with ``scores`` attached when given."""
        if scores is not None and len(scores) != len(positions):
            raise ValueError(f"{len(positions)} positions but {len(scores)} scores")
        return [
            Passage.from_contents(
                self.ids[p], self.contents[p], None if scores is None else float(scores[k])
            )
            for k, p in enumerate(positions)
        ]

    def position(self, id: str) -> int:
        """Row of the passage with this ``id`` (KeyError when absent)."""
        if self._position is None:
            self._position = {pid: i for i, pid in enumerate(self.ids)}
        return self._position[str(id)]

    def get_by_id(self, id: str) -> Passage:
        """The passage with this ``id``."""
        return self[self.position(id)]

    def texts_for_embedding(self) -> list[str]:
        """``title\\ntext`` per passage (the wiki-18 quotes dropped), in index-row order."""
        out = []
        for c in self.contents:
            p = Passage.from_contents("", c)
            out.append(f"{p.title}\n{p.text}" if p.title else p.text)
        return out


def _parse_line(line: str, where: str) -> tuple[str, str]:
    try:
        rec = json.loads(line)
    except json.JSONDecodeError as err:
        raise CorpusFormatError(f"{where}: invalid JSON ({err.msg} at column {err.colno})") from None
    if not isinstance(rec, dict):
        raise CorpusFormatError(
            f'{where}: expected a JSON object {{"id": ..., "contents": ...}}, '
            f"got {type(rec).__name__}"
        )
    if "id" not in rec:
        raise CorpusFormatError(f'{where}: missing "id"')
    pid = rec["id"]
    if isinstance(pid, bool) or not isinstance(pid, (str, int)):
        raise CorpusFormatError(f'{where}: "id" must be a string or an integer, got {pid!r}')
    if "contents" not in rec:
        raise CorpusFormatError(f'{where}: missing "contents" (expected "\\"Title\\"\\ntext")')
    contents = rec["contents"]
    if not isinstance(contents, str):
        raise CorpusFormatError(
            f'{where}: "contents" must be a string, got {type(contents).__name__}'
        )
    return str(pid), contents


def load_corpus(path: str | Path) -> Corpus:
    """Read a wiki-18 style jsonl corpus; blank lines are skipped, anything else malformed raises
    `CorpusFormatError` (``path:line: ...``), and so does a repeated id."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"corpus file not found: {path}")
    ids: list[str] = []
    contents: list[str] = []
    position: dict[str, int] = {}
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            pid, text = _parse_line(line, f"{path}:{lineno}")
            if pid in position:
                raise CorpusFormatError(
                    f"{path}:{lineno}: duplicate id {pid!r} "
                    f"(first on line {_line_of_row(path, position[pid])})"
                )
            position[pid] = len(ids)
            ids.append(pid)
            contents.append(text)
    corpus = Corpus(ids, contents, str(path))
    corpus._position = position
    return corpus


def _line_of_row(path: Path, row: int) -> int:
    """Line number of the ``row``-th non-blank line (only on the error path: no bookkeeping)."""
    with open(path, encoding="utf-8") as f:
        seen = -1
        for lineno, line in enumerate(f, 1):
            seen += bool(line.strip())
            if seen == row:
                return lineno
    raise AssertionError("unreachable")

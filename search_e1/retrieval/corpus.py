"""Corpus lines: validation of wiki-18 style jsonl, and an in-memory `Corpus` for small cases.

Each line is ``{"id": ..., "contents": "\\"Title\\"\\ntext"}``; position ``i`` among the non-blank
lines is row ``i`` of the faiss index built from the file, so retrievers map index hits back with
``get_by_position``. Malformed lines fail loudly with ``path:line: what was expected``.
`iter_corpus` is the one validating reader: `load_corpus` (everything in memory, for small
corpora and tests) and `search_e1.retrieval.store.convert_corpus` (the memory-mapped store the
retrievers use, for corpora of any size) both read through it. `passage_text` is the one place
that turns ``contents`` into the text an encoder sees.

How it departs from Search-R1: Search-R1 loads the corpus with ``datasets.load_dataset("json")``
(an Arrow cache on disk) and silently accepts any line shape; here every line is validated, a
line that is not UTF-8 is named, and duplicate ids are an error (two rows with one id make recall
metrics and supporting-passage checks ambiguous). Integer ids are accepted and kept as strings.
Search-R1 encodes passages as the raw ``contents`` (title in quotes); the default here drops the
quotes (``"title_text"``), and ``passage_format="contents"`` reproduces Search-R1.

Run::

    from search_e1.retrieval import load_corpus
    corpus = load_corpus("demo/world/corpus.jsonl"); corpus[0].title
"""

from __future__ import annotations

import bisect
import hashlib
import json
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

from search_e1.errors import UserInputError
from search_e1.retrieval.base import Passage

__all__ = ["PASSAGE_FORMATS", "Corpus", "CorpusFormatError", "PassageSource", "iter_corpus",
           "load_corpus", "passage_text"]

PassageFormat = Literal["title_text", "contents"]
PASSAGE_FORMATS: tuple[str, ...] = ("title_text", "contents")
"""``title_text``: ``Title\\ntext`` (quotes dropped); ``contents``: the raw wiki-18 string."""


class CorpusFormatError(UserInputError):
    """A corpus line is not ``{"id": str|int, "contents": str}`` (the message names the line)."""


def passage_text(contents: str, format: PassageFormat = "title_text") -> str:
    """The text an encoder sees for one wiki-18 ``contents`` string.

    >>> passage_text('"Ada"\\nA poet.'), passage_text('"Ada"\\nA poet.', "contents")
    ('Ada\\nA poet.', '"Ada"\\nA poet.')
    >>> passage_text("no title line")
    'no title line'
    """
    if format == "contents":
        return contents
    if format != "title_text":
        raise ValueError(f"passage format must be one of {PASSAGE_FORMATS}, got {format!r}")
    p = Passage.from_contents("", contents)
    return f"{p.title}\n{p.text}" if p.title else p.text


@runtime_checkable
class PassageSource(Protocol):
    """Passages by index row: `Corpus` (in memory) or `CorpusStore` (memory-mapped)."""

    path: str | None

    def __len__(self) -> int: ...

    def __getitem__(self, i: int) -> Passage: ...

    def get_by_position(
        self, positions: Sequence[int], scores: Sequence[float] | None = None
    ) -> list[Passage]: ...

    def texts_for_embedding(
        self, start: int = 0, stop: int | None = None, format: PassageFormat = "title_text"
    ) -> list[str]: ...


class ContentDigest:
    """A 128-bit blake2b over a corpus's (id, contents) pairs in row order, each length-prefixed:
    an index records it, so a corpus edited without changing its passage count is noticed."""

    def __init__(self) -> None:
        self._h = hashlib.blake2b(digest_size=16)

    def add(self, pid: bytes, contents: bytes) -> None:
        self._h.update(len(pid).to_bytes(8, "little") + pid + len(contents).to_bytes(8, "little") + contents)

    def hexdigest(self) -> str:
        return self._h.hexdigest()


class Corpus:
    """Passages in file order held as Python strings; ``corpus[i]`` is index row ``i``."""

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

    @property
    def content_hash(self) -> str:
        """`ContentDigest` of every (id, contents) pair in order: the same as the store's."""
        digest = ContentDigest()
        for pid, text in zip(self.ids, self.contents, strict=True):
            digest.add(pid.encode("utf-8", "surrogatepass"), text.encode("utf-8", "surrogatepass"))
        return digest.hexdigest()

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

    def texts_for_embedding(
        self, start: int = 0, stop: int | None = None, format: PassageFormat = "title_text"
    ) -> list[str]:
        """Encoder texts (see `passage_text`) of rows ``start:stop``, in index-row order."""
        return [passage_text(c, format) for c in self.contents[start:stop]]


# ---------------------------------------------------------------- validated reading
class LineMap:
    """Row -> line number of a corpus file, remembering only where blank lines shift them."""

    def __init__(self) -> None:
        self._rows: list[int] = []  # rows where the line numbering jumps
        self._lines: list[int] = []  # line number of that row

    def note(self, row: int, lineno: int) -> None:
        """Record that ``row`` is on line ``lineno`` (cheap when nothing jumped)."""
        if lineno != self.line(row):
            self._rows.append(row)
            self._lines.append(lineno)

    def line(self, row: int) -> int:
        """Line number (from 1) of ``row`` (from 0)."""
        k = bisect.bisect_right(self._rows, row) - 1
        return row + 1 if k < 0 else self._lines[k] + row - self._rows[k]


def _parse_line(line: str | bytes, where: str) -> tuple[str, str]:
    if isinstance(line, bytes):
        try:
            line = line.decode("utf-8")
        except UnicodeDecodeError as err:
            raise CorpusFormatError(
                f"{where}: not UTF-8 ({err.reason} at byte {err.start})") from None
    try:  # a UTF-8 byte-order mark is accepted, as in QA and demonstration files
        rec = json.loads(line.removeprefix("\ufeff").rstrip("\r\n"))  # columns within the line
    except json.JSONDecodeError as err:
        raise CorpusFormatError(
            f"{where}: invalid JSON ({err.msg} at column {err.pos + 1})") from None
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


def iter_corpus(
    path: str | Path, advance: Callable[[int], None] | None = None
) -> Iterator[tuple[int, str, str]]:
    """``(line number, id, contents)`` for every non-blank line of a wiki-18 jsonl, validated.

    A malformed line raises `CorpusFormatError` naming ``path:line``, and so does a file without
    any passage (empty or blank); duplicates are the caller's to check. ``advance(n)`` is called
    with the bytes of each line read (progress).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"corpus file not found: {path}")
    found = False
    with open(path, "rb") as f:
        for lineno, line in enumerate(f, 1):
            if advance is not None:
                advance(len(line))
            if line.strip():
                pid, contents = _parse_line(line, f"{path}:{lineno}")
                found = True
                yield lineno, pid, contents
    if not found:
        raise CorpusFormatError(f"{path}: no passages (the file is empty or blank); expected one JSON "
                                'object per line with "id" and "contents"')


def duplicate_id_error(path: str | Path, pid: str, line: int, first_line: int) -> CorpusFormatError:
    """The error for a repeated id (one wording for every reader)."""
    return CorpusFormatError(f"{path}:{line}: duplicate id {pid!r} (first on line {first_line})")


def load_corpus(path: str | Path) -> Corpus:
    """Read a wiki-18 style jsonl corpus into memory; blank lines are skipped, anything else
    malformed raises `CorpusFormatError` (``path:line: ...``), and so does a repeated id.

    For large corpora use `search_e1.retrieval.open_corpus_store` (memory-mapped) instead.
    """
    ids: list[str] = []
    contents: list[str] = []
    position: dict[str, int] = {}
    lines = LineMap()
    for lineno, pid, text in iter_corpus(path):
        if pid in position:
            raise duplicate_id_error(path, pid, lineno, lines.line(position[pid]))
        lines.note(len(ids), lineno)
        position[pid] = len(ids)
        ids.append(pid)
        contents.append(text)
    corpus = Corpus(ids, contents, str(path))
    corpus._position = position
    return corpus

"""QA file readers: FlashRAG jsonl and Search-R1 parquet into `QAExample` lists, with line-precise errors.

Two question-answer formats are read, picked by file extension (`load_qa`):

* ``.jsonl`` -- FlashRAG: one object per line,
  ``{"id": "test_0", "question": "who wrote X?", "golden_answers": ["Ann Smith"]}``, with an
  optional ``"metadata"`` object. Blank lines are skipped; other keys are ignored. A bare string in
  ``golden_answers`` is accepted as a one-answer list. A missing ``id`` becomes the 0-based index of
  the record in the file (blank lines not counted).
* ``.parquet`` -- Search-R1 training files: ``data_source``, ``prompt`` (chat messages),
  ``reward_model.ground_truth.target`` (answers), ``extra_info`` (``index``, ``split``), often with
  the FlashRAG columns ``id``, ``question``, ``golden_answers`` kept by Search-R1's preprocessing.
  The question is the ``question`` column when present, else the text after the last
  ``"Question:"`` of the last user message of ``prompt`` (`question_from_prompt`). The answers are
  ``reward_model.ground_truth.target``, else ``golden_answers``.

Each example's ``data_source`` is, in order: the ``data_source`` argument of `load_qa`, the
parquet ``data_source`` column, the file stem (``nq.jsonl`` -> ``"nq"``), so evaluation can report
per file. Malformed input raises `QADataError` whose message starts with ``path:line`` (jsonl) or
``path: row N`` (parquet) and names the field or column.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from search_e1.errors import UserInputError

log = logging.getLogger(__name__)

QUESTION_MARKER = "Question:"
"""Search-R1's prompt ends with ``Question: {question}``; the question follows the last marker."""


MAX_QUESTION_CHARS = 20_000
"""Longest question accepted from a QA file (characters); a longer one is refused at load time."""


class QADataError(UserInputError):
    """A QA file that cannot be read; the message starts with the file (and line or row)."""


@dataclass(frozen=True)
class QAExample:
    """One question with its gold answers."""

    id: str
    """Identifier from the file (``id`` field / column), or the record index when absent."""
    question: str
    """The question text, stripped, without any instruction around it."""
    golden_answers: tuple[str, ...]
    """Accepted answers; exact match against any of them scores 1."""
    data_source: str = ""
    """Which data set the example comes from (parquet ``data_source`` or the file stem)."""
    metadata: dict[str, Any] = field(default_factory=dict, hash=False)
    """Free-form extras: FlashRAG ``metadata``, Search-R1 ``extra_info`` under ``"extra_info"``."""


# --------------------------------------------------------------------------------------------
# reading files


def load_qa(path: str | Path, data_source: str | None = None) -> list[QAExample]:
    """Read a FlashRAG ``.jsonl`` or a Search-R1 ``.parquet`` QA file.

    Args:
        path: The file; its extension picks the reader.
        data_source: Overrides every example's ``data_source`` (default: the parquet column,
            else the file stem).

    Raises:
        FileNotFoundError: The file does not exist.
        QADataError: Unsupported extension, an empty file, or a malformed line / row.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"QA file not found: {path}")
    if path.suffix.lower() not in _READERS:
        supported = ", ".join(f"{ext} ({name})" for ext, (name, _) in _READERS.items())
        raise QADataError(
            f"{path}: unsupported QA file extension {path.suffix!r}; supported: {supported}"
        )
    _, read = _READERS[path.suffix.lower()]
    examples = read(path, data_source)
    if not examples:
        raise QADataError(f"{path}: no examples (the file is empty)")
    log.info("loaded %d QA examples from %s", len(examples), path)
    return examples


def question_from_prompt(messages: Sequence[Mapping[str, Any]]) -> str:
    """Recover the question from a Search-R1 chat prompt.

    Takes the last ``user`` message and returns the stripped text after its last ``"Question:"``,
    or the whole message when it has no such marker.

    >>> question_from_prompt([{"role": "user", "content": "Answer it. Question: who wrote X?\\n"}])
    'who wrote X?'
    >>> question_from_prompt([{"role": "user", "content": " who wrote X? "}])
    'who wrote X?'

    Raises:
        ValueError: No user message with text content, or an empty question.
    """
    if hasattr(messages, "tolist"):  # numpy object array from pandas
        messages = messages.tolist()
    if isinstance(messages, str) or not isinstance(messages, Sequence):
        raise ValueError(f"expected a list of chat messages, got {type(messages).__name__}")
    users = [m for m in messages if isinstance(m, Mapping) and m.get("role") == "user"]
    if not users:
        raise ValueError("expected a list of chat messages with at least one 'user' message")
    content = users[-1].get("content")
    if not isinstance(content, str):
        raise ValueError("the last user message has no text 'content'")
    _, marker, tail = content.rpartition(QUESTION_MARKER)
    question = (tail if marker else content).strip()
    if not question:
        raise ValueError("the last user message has no question text")
    return question


def _as_answers(value: Any, where: str, what: str) -> tuple[str, ...]:
    """Normalise gold answers: a list / tuple / numpy array of strings, or one string."""
    if hasattr(value, "tolist") and not isinstance(value, str):
        value = value.tolist()
    if isinstance(value, str):
        value = [value]
    if (
        not isinstance(value, (list, tuple))
        or not all(isinstance(a, str) for a in value)
        or not any(a.strip() for a in value)
    ):
        raise QADataError(
            f"{where}: {what}: expected a non-empty list of strings (or one string), got {value!r:.80}"
        )
    return tuple(value)


def _as_id(value: Any, where: str, what: str) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise QADataError(f"{where}: {what}: expected a string or an integer, got {value!r:.80}")
    return str(value)


# FlashRAG jsonl ------------------------------------------------------------------------------


def iter_jsonl(
    path: str | Path, error: type[UserInputError] = QADataError
) -> Iterator[tuple[str, dict[str, Any]]]:
    """``("path:line", object)`` for every non-blank line of a JSON-lines file.

    A line that is not valid JSON, or not a JSON object, raises ``error`` (a `UserInputError`)
    whose message starts with ``path:line``; the caller checks the fields, naming the same place.
    """
    with Path(path).open("rb") as f:
        for lineno, raw in enumerate(f, 1):
            where = f"{path}:{lineno}"
            try:
                line = raw.decode("utf-8").removeprefix("\ufeff")
            except UnicodeDecodeError as e:
                raise error(f"{where}: not UTF-8 text (byte {raw[e.start]:#04x} at column {e.start + 1}); "
                            "re-encode the file as UTF-8") from None
            if not line.strip():
                continue
            try:
                record = json.loads(line.rstrip("\r\n"))  # columns within the line
            except json.JSONDecodeError as e:
                raise error(f"{where}: invalid JSON ({e.msg} at column {e.pos + 1})") from None
            if not isinstance(record, dict):
                raise error(f"{where}: expected a JSON object, got {type(record).__name__}")
            yield where, record


def _read_flashrag_jsonl(path: Path, data_source: str | None) -> list[QAExample]:
    source = data_source if data_source is not None else path.stem
    return [_parse_flashrag_record(record, where, i, source)
            for i, (where, record) in enumerate(iter_jsonl(path))]


def _parse_flashrag_record(record: dict[str, Any], where: str, index: int, source: str) -> QAExample:
    question = record.get("question")
    if "question" not in record:
        raise QADataError(f"{where}: missing field 'question' (expected a non-empty string)")
    if not isinstance(question, str) or not question.strip():
        raise QADataError(
            f"{where}: field 'question': expected a non-empty string, got {question!r:.80}"
        )
    _check_length(question, where, "field 'question'")
    if "golden_answers" not in record:
        raise QADataError(f"{where}: missing field 'golden_answers' (expected a list of strings)")
    metadata = record.get("metadata") or {}
    if not isinstance(metadata, dict):
        raise QADataError(f"{where}: field 'metadata': expected an object, got {metadata!r:.80}")
    return QAExample(
        id=_as_id(record.get("id", index), where, "field 'id'"),
        question=question.strip(),
        golden_answers=_as_answers(record["golden_answers"], where, "field 'golden_answers'"),
        data_source=source,
        metadata=metadata,
    )


# Search-R1 parquet ---------------------------------------------------------------------------

_PARQUET_COLUMNS = (
    "id", "question", "golden_answers", "data_source", "prompt", "reward_model", "extra_info",
    "metadata",
)  # fmt: skip


def _read_searchr1_parquet(path: Path, data_source: str | None) -> list[QAExample]:
    import pyarrow.parquet as pq

    try:
        names = set(pq.read_schema(path).names)
        _require_column(path, names, ("question", "prompt"), "the question")
        _require_column(path, names, ("reward_model", "golden_answers"), "the gold answers")
        table = pq.read_table(path, columns=[c for c in _PARQUET_COLUMNS if c in names])
    except QADataError:
        raise
    except Exception as e:  # pyarrow raises several types for a file that is not parquet
        raise QADataError(f"{path}: cannot read as parquet: {e}") from e
    return [
        _parse_searchr1_row(row, f"{path}: row {i}", i, path.stem, data_source)
        for i, row in enumerate(table.to_pylist())
    ]


def _require_column(path: Path, names: set[str], options: tuple[str, ...], what: str) -> None:
    if not names.intersection(options):
        wanted = " or ".join(repr(c) for c in options)
        raise QADataError(f"{path}: no column for {what}: expected {wanted}; found {sorted(names)}")


def _parse_searchr1_row(
    row: dict[str, Any], where: str, index: int, stem: str, data_source: str | None
) -> QAExample:
    extra_info = row.get("extra_info")
    extra = extra_info if isinstance(extra_info, dict) else {}
    metadata = dict(row.get("metadata") or {})
    if extra_info is not None:
        metadata["extra_info"] = extra_info
    row_id = row.get("id")
    if row_id is None:
        row_id = extra.get("index", index)
    return QAExample(
        id=_as_id(row_id, where, "column 'id'"),
        question=_row_question(row, where),
        golden_answers=_row_answers(row, where),
        data_source=data_source if data_source is not None else str(row.get("data_source") or stem),
        metadata=metadata,
    )


def _check_length(question: str, where: str, what: str) -> str:
    if len(question) > MAX_QUESTION_CHARS:
        raise QADataError(f"{where}: {what} holds {len(question)} characters; at most {MAX_QUESTION_CHARS} "
                          "are accepted (a prompt must fit rollout.max_total_tokens)")
    return question


def _row_question(row: dict[str, Any], where: str) -> str:
    question = row.get("question")
    if isinstance(question, str) and question.strip():
        return _check_length(question.strip(), where, "column 'question'")
    if row.get("prompt") is None:
        raise QADataError(
            f"{where}: column 'question' is {question!r:.80} and there is no 'prompt'"
        )
    try:
        question = question_from_prompt(row["prompt"])
    except ValueError as e:
        raise QADataError(f"{where}: column 'prompt': {e}") from None
    return _check_length(question, where, "column 'prompt'")


def _row_answers(row: dict[str, Any], where: str) -> tuple[str, ...]:
    reward_model = row.get("reward_model")
    if isinstance(reward_model, dict):
        truth = reward_model.get("ground_truth")
        target = truth.get("target") if isinstance(truth, dict) else truth
        if target is not None:
            return _as_answers(target, where, "column 'reward_model' (ground_truth.target)")
    if row.get("golden_answers") is not None:
        return _as_answers(row["golden_answers"], where, "column 'golden_answers'")
    raise QADataError(
        f"{where}: column 'reward_model' has no ground_truth.target and column 'golden_answers' "
        "is absent or null"
    )


_READERS: dict[str, tuple[str, Callable[[Path, str | None], list[QAExample]]]] = {
    ".jsonl": ("FlashRAG", _read_flashrag_jsonl),
    ".parquet": ("Search-R1", _read_searchr1_parquet),
}
"""Extension -> (format name, reader)."""

"""QA data for search agents: file readers and the `RetrievalDataModule` that owns the retriever.

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

`RetrievalDataModule` is the one data module shared by the GRPO and OFSD rounds: it loads the QA
splits, builds the retriever once in ``setup`` and yields batches of plain Python lists
(`collate_questions`); the rollout engine tokenises them. Usage::

    dm = RetrievalDataModule(train_files=["data/nq/train.parquet"], val_files="data/nq/test.jsonl",
                             retriever=RetrieverConfig(corpus="wiki-18.jsonl", index_dir="idx"))
    dm.setup("fit")
    passages = dm.retriever.search(["who wrote X?"], topk=3)
    batch = next(iter(dm.train_dataloader()))  # {"id": [...], "question": [...], ...}

Another project can bring its own retriever: ``dm.set_retriever(my_retriever)`` before setup.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, is_dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader

from search_e1.distributed import rank_world
from search_e1.errors import UserInputError
from search_e1.retrieval.base import Retriever
from search_e1.retrieval.dense import RetrieverConfig

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
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise error(f"{where}: invalid JSON ({e.msg} at column {e.colno})") from None
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


# --------------------------------------------------------------------------------------------
# batching and the data module


def collate_questions(examples: list[QAExample]) -> dict[str, list[Any]]:
    """Batch examples as a dict of lists (no tensors: the rollout engine tokenises).

    >>> collate_questions([QAExample("1", "q?", ("a", "b"), "nq")])
    {'id': ['1'], 'question': ['q?'], 'golden_answers': [['a', 'b']], 'data_source': ['nq']}
    """
    return {
        "id": [e.id for e in examples],
        "question": [e.question for e in examples],
        "golden_answers": [list(e.golden_answers) for e in examples],
        "data_source": [e.data_source for e in examples],
    }


def _build_retriever(config: RetrieverConfig, progress: bool = True) -> Retriever:
    """Build a retriever from its config (imported lazily: faiss and the embedder are heavy)."""
    from search_e1.retrieval import build_retriever

    return build_retriever(config, progress=progress)


SPLITS = ("train", "val", "test")
_STAGE_SPLITS: dict[str, tuple[str, ...]] = {
    "fit": ("train",),  # val is optional while fitting: loaded when val_files is given
    "validate": ("val",),
    "test": ("test",),
    "predict": ("test",),
}
"""Stage -> the splits it requires."""


class RetrievalDataModule(L.LightningDataModule):
    """QA splits plus the retriever, shared by the GRPO and OFSD rounds.

    ``setup(stage)`` loads the splits the stage needs (fit: train, and val when given; validate:
    val; test and predict: test) and builds the retriever once; later calls load only splits not
    yet loaded and never rebuild the retriever. Several files per split are concatenated in order.

    Args:
        train_files: Training QA files (``.jsonl`` FlashRAG or ``.parquet`` Search-R1); one path
            or a list.
        val_files: Validation QA files, evaluated during fit when given.
        test_files: Test QA files (``trainer.test`` / ``predict``, evaluation).
        retriever: The retriever: ``kind: dense`` (corpus, index, embedder: searched in this
            process) or ``kind: http`` (a running ``search-e1 serve``: url, timeout, retries); built
            in ``setup``; ``--data.retriever.help RetrieverConfig`` lists every field. None when one
            is injected with ``set_retriever`` or when only the questions are needed.
        batch_size: Questions per training batch (each is expanded to a group of rollouts).
        val_batch_size: Questions per validation / test batch; defaults to ``batch_size``.
        max_train_examples: Keep only the first N training questions (after concatenation).
        max_val_examples: Keep only the first N validation questions.
        shuffle: Shuffle the training questions each epoch.
        seed: Seed of the training shuffle (same seed, same order).
        num_workers: DataLoader worker processes (0 = load in the main process).
    """

    def __init__(
        self,
        train_files: list[str] | str | None = None,
        val_files: list[str] | str | None = None,
        test_files: list[str] | str | None = None,
        retriever: RetrieverConfig | None = None,
        batch_size: int = 8,
        val_batch_size: int | None = None,
        max_train_examples: int | None = None,
        max_val_examples: int | None = None,
        shuffle: bool = True,
        seed: int = 0,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        self.files: dict[str, tuple[str, ...]] = {
            "train": _as_file_list(train_files, "train_files"),
            "val": _as_file_list(val_files, "val_files"),
            "test": _as_file_list(test_files, "test_files"),
        }
        if retriever is not None and callable(getattr(retriever, "search", None)):
            raise TypeError(
                "retriever: expected a RetrieverConfig, got a built retriever "
                f"({type(retriever).__name__}); inject built retrievers with set_retriever()"
            )
        self.retriever_config = retriever
        self.batch_size = _check_int(batch_size, "batch_size", minimum=1)
        self.val_batch_size = _check_int(val_batch_size, "val_batch_size", minimum=1, optional=True)
        self.limits: dict[str, int | None] = {
            "train": _check_int(max_train_examples, "max_train_examples", minimum=1, optional=True),
            "val": _check_int(max_val_examples, "max_val_examples", minimum=1, optional=True),
            "test": None,
        }
        if not isinstance(shuffle, bool):
            raise TypeError(f"shuffle: expected a bool, got {shuffle!r}")
        self.shuffle = shuffle
        self.seed = _check_int(seed, "seed")
        self.num_workers = _check_int(num_workers, "num_workers", minimum=0)
        self._examples: dict[str, list[QAExample]] = {}
        self._retriever: Retriever | None = None
        self._round: tuple[int, int] | None = None
        # plain types only (checkpoints load with weights_only); not sent to the logger, so keys
        # such as `seed` or `batch_size` cannot clash with the LightningModule's hparams
        self.save_hyperparameters(
            {
                **{f"{split}_files": list(files) for split, files in self.files.items()},
                "retriever": plain(retriever),
                "batch_size": batch_size,
                "val_batch_size": val_batch_size,
                "max_train_examples": max_train_examples,
                "max_val_examples": max_val_examples,
                "shuffle": shuffle,
                "seed": seed,
                "num_workers": num_workers,
            },
            logger=False,
        )

    # retriever ------------------------------------------------------------------------------

    def set_retriever(self, retriever: Retriever) -> None:
        """Use an already-built retriever (anything with ``search(queries, topk)``); setup then
        builds none."""
        if not callable(getattr(retriever, "search", None)):
            raise TypeError(
                f"set_retriever: expected an object with a search(queries, topk) method, "
                f"got {type(retriever).__name__}"
            )
        self._retriever = retriever

    @property
    def retriever(self) -> Retriever:
        """The retriever built in ``setup`` (or injected with ``set_retriever``)."""
        if self._retriever is not None:
            return self._retriever
        if self.retriever_config is None:
            raise RuntimeError(
                "RetrievalDataModule has no retriever: pass retriever=RetrieverConfig(...) "
                "or call set_retriever(...)"
            )
        raise RuntimeError(
            "RetrievalDataModule.retriever is built in setup(): call setup() first "
            "(the Trainer does it in fit / validate / test)"
        )

    # setup ----------------------------------------------------------------------------------

    def setup(self, stage: str | None = None) -> None:
        """Load the splits ``stage`` needs (all given splits when None) and build the retriever.

        Idempotent: loaded splits and the retriever are kept across calls.
        """
        if stage is not None and stage not in _STAGE_SPLITS:
            raise ValueError(
                f"setup: unknown stage {stage!r}; expected one of {list(_STAGE_SPLITS)}"
            )
        required = _STAGE_SPLITS[stage] if stage is not None else ()
        optional = ("val",) if stage == "fit" else SPLITS if stage is None else ()
        for split in required:
            self._load_split(split)
        for split in optional:
            if self.files[split]:
                self._load_split(split)
        self._ensure_retriever()

    def _load_split(self, split: str) -> None:
        if split in self._examples:
            return
        files = self.files[split]
        if not files:
            raise ValueError(f"{split}_files: the {split} split is needed but no files were given")
        examples = [example for path in files for example in load_qa(path)]
        limit = self.limits[split]
        if limit is not None:
            examples = examples[:limit]
        self._examples[split] = examples
        log.info("%s split: %d questions from %d file(s)", split, len(examples), len(files))

    def _ensure_retriever(self) -> None:
        if self._retriever is not None:
            return
        if self.retriever_config is None:
            log.warning("no retriever configured: pass retriever=... or call set_retriever()")
            return
        trainer = getattr(self, "trainer", None)
        progress = trainer is None or trainer.is_global_zero
        self._retriever = _build_retriever(self.retriever_config, progress=progress)

    def examples(self, split: str) -> list[QAExample]:
        """The loaded examples of ``split`` ("train", "val" or "test"), in file order."""
        if split not in SPLITS:
            raise ValueError(f"examples: unknown split {split!r}; expected one of {list(SPLITS)}")
        if not self.files[split]:
            raise ValueError(f"{split}_files: the {split} split is needed but no files were given")
        if split not in self._examples:
            raise RuntimeError(f"the {split} split is not loaded: call setup() first")
        return self._examples[split]

    # dataloaders ----------------------------------------------------------------------------

    def schedule_round(self, start_batch: int, num_batches: int) -> None:
        """Make the next ``train_dataloader()`` yield exactly ``num_batches`` batches, taken from
        the endless stream of training questions (re-shuffled every epoch with ``seed + epoch``)
        from global batch ``start_batch`` on. Under torch.distributed a global batch holds
        ``batch_size`` questions per rank and each rank gets its own slice (use the Trainer
        with ``use_distributed_sampler=False``). The `Evolver` calls this before each GRPO round,
        so rounds continue where the previous one stopped, also after a resume."""
        self._round = (_check_int(start_batch, "start_batch", minimum=0),
                       _check_int(num_batches, "num_batches", minimum=0))

    def stream_indices(self, start: int, count: int) -> list[int]:
        """Positions ``start .. start + count - 1`` of the endless training stream, as indices
        into ``examples("train")``."""
        n = len(self.examples("train"))
        out, perms = [], {}
        for pos in range(start, start + count):
            epoch = pos // n
            if epoch not in perms:
                perms[epoch] = (torch.randperm(n, generator=torch.Generator().manual_seed(self.seed + epoch))
                                if self.shuffle else torch.arange(n)).tolist()
            out.append(perms[epoch][pos % n])
        return out

    def sample_train(self, k: int, seed: int) -> list[QAExample]:
        """``k`` training questions drawn without replacement (all of them when ``k >= n``)."""
        examples = self.examples("train")
        order = torch.randperm(len(examples), generator=torch.Generator().manual_seed(seed)).tolist()
        return [examples[i] for i in order[: min(k, len(examples))]]

    def train_dataloader(self) -> DataLoader:
        """Training questions: the scheduled round (`schedule_round`) or, without a schedule,
        one epoch shuffled with a generator seeded by ``seed`` when ``shuffle``."""
        if self._round is None:
            generator = torch.Generator().manual_seed(self.seed) if self.shuffle else None
            return self._loader("train", self.batch_size, generator)
        start, count = self._round
        rank, world = rank_world()
        per_global = self.batch_size * world
        flat = self.stream_indices(start * per_global, count * per_global)
        batches = [flat[b * per_global + rank * self.batch_size : b * per_global + (rank + 1) * self.batch_size]
                   for b in range(count)]
        return DataLoader(self.examples("train"), batch_sampler=batches,  # type: ignore[arg-type]
                          collate_fn=collate_questions, num_workers=self.num_workers)

    def val_dataloader(self) -> DataLoader:
        """Validation questions in file order (needs ``val_files``; without them set
        ``trainer.limit_val_batches=0`` or give the module no ``validation_step``)."""
        return self._loader("val", self.val_batch_size or self.batch_size)

    def test_dataloader(self) -> DataLoader:
        """Test questions in file order."""
        return self._loader("test", self.val_batch_size or self.batch_size)

    def predict_dataloader(self) -> DataLoader:
        """The test questions, for ``trainer.predict``."""
        return self.test_dataloader()

    def _loader(
        self, split: str, batch_size: int, generator: torch.Generator | None = None
    ) -> DataLoader:
        return DataLoader(
            self.examples(split),  # type: ignore[arg-type]  # a list is a map-style dataset
            batch_size=batch_size,
            shuffle=generator is not None,
            generator=generator,
            collate_fn=collate_questions,
            num_workers=self.num_workers,
        )


# --------------------------------------------------------------------------------------------
# argument checks


def _as_file_list(value: Any, name: str) -> tuple[str, ...]:
    """None -> (); one path -> (path,); a list of paths -> tuple; anything else -> TypeError."""
    if value is None:
        return ()
    items = [value] if isinstance(value, (str, os.PathLike)) else value
    if not isinstance(items, (list, tuple)) or not all(
        isinstance(p, (str, os.PathLike)) for p in items
    ):
        raise TypeError(f"{name}: expected a path or a list of paths, got {value!r:.80}")
    files = tuple(os.fspath(p) for p in items)
    if any(not f.strip() for f in files):
        raise ValueError(f"{name}: empty path in {list(files)}")
    return files


def _check_int(value: Any, name: str, minimum: int | None = None, optional: bool = False) -> Any:
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(
            f"{name}: expected an integer{' or None' if optional else ''}, got {value!r}"
        )
    if minimum is not None and value < minimum:
        raise ValueError(f"{name}: must be >= {minimum}, got {value}")
    return value


def plain(config: Any) -> Any:
    """A config as JSON-plain data (dicts, lists, strings, numbers): safe for hparams and yaml."""
    if config is None:
        return None
    data = asdict(config) if is_dataclass(config) and not isinstance(config, type) else config
    return json.loads(json.dumps(data, default=str))

"""`RetrievalDataModule` is the one data module shared by the GRPO and OFSD rounds: it loads the QA
splits, builds the retriever once in ``setup`` and yields batches of plain Python lists
(`collate_questions`); the rollout engine tokenises them. Usage::

    dm = RetrievalDataModule(train_files=["data/nq/train.parquet"], val_files="data/nq/test.jsonl",
                             retriever=RetrieverConfig(corpus="wiki-18.jsonl", index_dir="idx"))
    dm.setup("fit")
    passages = dm.retriever.search(["who wrote X?"], topk=3)
    batch = next(iter(dm.train_dataloader()))  # {"id": [...], "question": [...], ...}

Another project can bring its own retriever: ``dm.set_retriever(my_retriever)`` before setup.

Held-out worlds (``eval_worlds``) are evaluation-only QA sets with their own corpus and retriever:
questions about entities the policy never trained on, so their scores tell searching and reading
apart from remembering the training world. ``eval_sets("val")`` lists the training world's val split
first, then each held-out world, each with the retriever its questions are searched in.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import lightning as L
import torch
from torch.utils.data import DataLoader

from search_e1.config import plain
from search_e1.data.readers import QAExample, load_qa
from search_e1.distributed import rank_world
from search_e1.retrieval.base import Retriever
from search_e1.retrieval.dense import RetrieverConfig

log = logging.getLogger(__name__)


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


@dataclass
class EvalWorldConfig:
    """A held-out evaluation world: QA files the policy never trains on, searched in their own corpus."""

    name: str = "heldout"
    """Its name in val_table.csv (the world column) and TensorBoard (val_<name>/... tags)."""
    files: list[str] = field(default_factory=list)
    """Its QA files (FlashRAG jsonl or Search-R1 parquet), evaluated with the val split."""
    retriever: RetrieverConfig | None = None
    """Its retriever (its own corpus and index); None = the training world's retriever."""

    def __post_init__(self) -> None:
        if not self.name or not all(c.isalnum() or c in "-_" for c in self.name) or self.name == TRAIN_WORLD:
            raise ValueError(f"EvalWorldConfig.name: expected letters, digits, '-' or '_' and not {TRAIN_WORLD!r}, "
                             f"got {self.name!r}")
        if not self.files:
            raise ValueError(f"EvalWorldConfig.files: held-out world {self.name!r} needs at least one QA file")
        if isinstance(self.retriever, dict):
            self.retriever = RetrieverConfig(**self.retriever)


class EvalSet(NamedTuple):
    """One set of evaluation questions with the retriever they are searched in."""

    world: str
    """``train`` for the training world's split, else the held-out world's name."""
    examples: list[QAExample]
    retriever: Retriever


TRAIN_WORLD = "train"
"""The `EvalSet.world` of the training world's own val / test split."""

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
        seed: Seed of the training shuffle (same seed,
                                            same order); None = the run's seed (evolver.seed), 0 outside a run.
        num_workers: DataLoader worker processes (0 = load in the main process).
        eval_worlds: Held-out worlds evaluated beside the val split (their own QA files and
            retriever); each gets its own rows in val_table.csv and its own TensorBoard tags.
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
        seed: int | None = None,
        num_workers: int = 0,
        eval_worlds: list[EvalWorldConfig] | None = None,
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
        self.seed = _check_int(seed, "seed", optional=True)
        self.num_workers = _check_int(num_workers, "num_workers", minimum=0)
        self.eval_worlds = [EvalWorldConfig(**w) if isinstance(w, dict) else w for w in eval_worlds or ()]
        names = [w.name for w in self.eval_worlds]
        if len(set(names)) != len(names):
            raise ValueError(f"eval_worlds: names must be unique, got {names}")
        self._examples: dict[str, list[QAExample]] = {}
        self._retriever: Retriever | None = None
        self._worlds: dict[str, tuple[list[QAExample], Retriever]] = {}
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
                "eval_worlds": [plain(w) for w in self.eval_worlds],
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
        if stage in ("fit", "validate", None):
            self._load_eval_worlds()

    def _load_eval_worlds(self) -> None:
        """Read every held-out world's questions and build its retriever (once)."""
        for w in self.eval_worlds:
            if w.name in self._worlds:
                continue
            examples = [example for path in w.files for example in load_qa(path)]
            retriever = self.retriever if w.retriever is None else _build_retriever(w.retriever,
                                                                                    progress=self._progress)
            self._worlds[w.name] = (examples, retriever)
            log.info("held-out world %s: %d questions from %d file(s)", w.name, len(examples), len(w.files))

    def eval_sets(self, split: str = "val") -> list[EvalSet]:
        """The training world's ``split`` (when it has files) and, for ``val``, every held-out world,
        each with its retriever (after ``setup``)."""
        out = [EvalSet(TRAIN_WORLD, self.examples(split), self.retriever)] if self.files[split] else []
        if split == "val":
            out += [EvalSet(name, examples, retriever) for name, (examples, retriever) in self._worlds.items()]
        return out

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
        self._retriever = _build_retriever(self.retriever_config, progress=self._progress)

    @property
    def _progress(self) -> bool:
        """Progress bars on rank 0 only."""
        trainer = getattr(self, "trainer", None)
        return trainer is None or trainer.is_global_zero

    def has_split(self, split: str) -> bool:
        """True when files were given for ``split`` (train, val or test)."""
        return bool(self.files[split])

    def teardown(self, stage: str) -> None:
        """After each phase's ``fit``: forget that phase's Trainer, which would otherwise keep its
        module and optimiser state alive until the next phase (the data and the retriever stay)."""
        self.trainer = None

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
                perms[epoch] = (torch.randperm(n, generator=torch.Generator().manual_seed((self.seed or 0) + epoch))
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
            generator = torch.Generator().manual_seed(self.seed or 0) if self.shuffle else None
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


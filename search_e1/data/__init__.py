"""QA data: the file readers (`readers`) and the `RetrievalDataModule` that owns the retriever (`datamodule`)."""

from search_e1.data.datamodule import (
    SPLITS,
    TRAIN_WORLD,
    EvalSet,
    EvalWorldConfig,
    RetrievalDataModule,
    collate_questions,
)
from search_e1.data.readers import (
    MAX_QUESTION_CHARS,
    QADataError,
    QAExample,
    iter_jsonl,
    load_qa,
    question_from_prompt,
)

__all__ = [
    "MAX_QUESTION_CHARS", "QADataError", "QAExample", "RetrievalDataModule", "SPLITS", "TRAIN_WORLD", "EvalSet",
    "EvalWorldConfig", "collate_questions", "iter_jsonl", "load_qa", "question_from_prompt",
]

"""Tests for search_e1.data: FlashRAG jsonl and Search-R1 parquet readers, RetrievalDataModule.

The parquet files are written here in the shape Search-R1's preprocessing produces; the retriever
is a fake (the real one is built by search_e1.retrieval, which these tests never import).
"""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path
from typing import Any

import lightning as L
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from search_e1.data import (
    QADataError,
    QAExample,
    RetrievalDataModule,
    collate_questions,
    datamodule,
    load_qa,
    question_from_prompt,
    readers,
)
from search_e1.retrieval.base import Passage

# a paraphrase of Search-R1's base instruction; what matters is the "Question: ...\n" ending
INSTRUCTION = (
    "Answer the given question. Reason inside <think> and </think> whenever you get new "
    "information. If you lack knowledge, call a search engine with <search> query </search>; "
    "results come back between <information> and </information>. Give the final answer inside "
    "<answer> and </answer>, for example <answer> Beijing </answer>. Question: {question}\n"
)

SEARCHR1_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("question", pa.string()),
        ("golden_answers", pa.list_(pa.string())),
        ("data_source", pa.string()),
        ("prompt", pa.list_(pa.struct([("content", pa.string()), ("role", pa.string())]))),
        ("ability", pa.string()),
        (
            "reward_model",
            pa.struct(
                [
                    ("ground_truth", pa.struct([("target", pa.list_(pa.string()))])),
                    ("style", pa.string()),
                ]
            ),
        ),
        ("extra_info", pa.struct([("index", pa.int64()), ("split", pa.string())])),
    ]
)


def searchr1_row(index: int, question: str, answers: list[str], source: str = "nq") -> dict:
    return {
        "id": f"train_{index}",
        "question": question,
        "golden_answers": answers,
        "data_source": source,
        "prompt": [{"content": INSTRUCTION.format(question=question), "role": "user"}],
        "ability": "fact-reasoning",
        "reward_model": {"ground_truth": {"target": answers}, "style": "rule"},
        "extra_info": {"index": index, "split": "train"},
    }


def write_parquet(path: Path, rows: list[dict], drop: tuple[str, ...] = ()) -> Path:
    table = pa.Table.from_pylist(rows, schema=SEARCHR1_SCHEMA)
    pq.write_table(table.drop_columns(list(drop)), path)
    return path


def write_jsonl(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def qa_lines(n: int, prefix: str = "q") -> list[str]:
    return [
        json.dumps(
            {
                "id": f"{prefix}{i}",
                "question": f"{prefix} question {i}?",
                "golden_answers": [f"a{i}"],
            }
        )
        for i in range(n)
    ]


# --------------------------------------------------------------------------------------------
# FlashRAG jsonl


def test_jsonl_parses_records_skipping_blank_lines(tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path / "nq.jsonl",
        [
            '{"id": "test_0", "question": " who wrote X? ", "golden_answers": ["Ann Smith", "A. Smith"]}',
            "",
            "   ",
            '{"id": 7, "question": "where is Y?", "golden_answers": ["Paris"], "metadata": {"hops": 2}}',
        ],
    )
    assert load_qa(path) == [
        QAExample("test_0", "who wrote X?", ("Ann Smith", "A. Smith"), "nq"),
        QAExample("7", "where is Y?", ("Paris",), "nq", {"hops": 2}),
    ]


def test_jsonl_bare_string_answer_and_missing_id(tmp_path: Path) -> None:
    # the blank first line is not counted: the record index of the first record is 0
    path = write_jsonl(
        tmp_path / "popqa.jsonl",
        [
            "",
            '{"question": "q0?", "golden_answers": "Rome"}',
            '{"question": "q1?", "golden_answers": ["x"]}',
        ],
    )
    examples = load_qa(path, data_source="pop")
    assert [e.id for e in examples] == ["0", "1"]
    assert examples[0].golden_answers == ("Rome",)
    assert {e.data_source for e in examples} == {"pop"}


@pytest.mark.parametrize(
    ("bad_line", "expected"),
    [
        ('{"id": "x", "question": "q?", "golden_answers": ["a"]', "invalid JSON"),
        ('["not", "an", "object"]', "expected a JSON object, got list"),
        ('{"id": "x", "golden_answers": ["a"]}', "missing field 'question'"),
        (
            '{"id": "x", "question": "  ", "golden_answers": ["a"]}',
            "field 'question': expected a non-empty string",
        ),
        ('{"id": "x", "question": "q?"}', "missing field 'golden_answers'"),
        (
            '{"id": "x", "question": "q?", "golden_answers": []}',
            "field 'golden_answers': expected a non-empty list",
        ),
        (
            '{"id": "x", "question": "q?", "golden_answers": ["a", 3]}',
            "field 'golden_answers': expected a non-empty list",
        ),
        ('{"id": "x", "question": "q?", "golden_answers": {"a": 1}}', "field 'golden_answers'"),
        (
            '{"id": ["x"], "question": "q?", "golden_answers": ["a"]}',
            "field 'id': expected a string or an integer",
        ),
        (
            '{"id": "x", "question": "q?", "golden_answers": ["a"], "metadata": [1]}',
            "field 'metadata': expected an object",
        ),
    ],
)
def test_jsonl_malformed_line_names_line_and_field(
    tmp_path: Path, bad_line: str, expected: str
) -> None:
    # line 1 good, line 2 blank, line 3 bad, line 4 good: the error must say line 3
    path = write_jsonl(tmp_path / "bad.jsonl", [qa_lines(1)[0], "", bad_line, qa_lines(2)[1]])
    with pytest.raises(QADataError) as info:
        load_qa(path)
    message = str(info.value)
    assert message.startswith(f"{path}:3: "), message
    assert expected in message


def test_empty_missing_and_unsupported_files(tmp_path: Path) -> None:
    empty = write_jsonl(tmp_path / "empty.jsonl", ["", "  "])
    with pytest.raises(QADataError, match="no examples"):
        load_qa(empty)
    with pytest.raises(FileNotFoundError, match="nowhere.jsonl"):
        load_qa(tmp_path / "nowhere.jsonl")
    csv = tmp_path / "qa.csv"
    csv.write_text("id,question\n")
    with pytest.raises(QADataError) as info:
        load_qa(csv)
    assert (
        "'.csv'" in str(info.value)
        and ".jsonl" in str(info.value)
        and ".parquet" in str(info.value)
    )


# --------------------------------------------------------------------------------------------
# Search-R1 parquet


def test_parquet_with_question_column(tmp_path: Path) -> None:
    rows = [
        searchr1_row(0, "who wrote X?", ["Ann Smith"]),
        searchr1_row(1, "where is Y?", ["Paris", "paris, fr"], "hotpotqa"),
    ]
    rows[1]["golden_answers"] = ["ignored: reward_model wins"]
    examples = load_qa(write_parquet(tmp_path / "train.parquet", rows))
    assert [(e.id, e.question, e.golden_answers, e.data_source) for e in examples] == [
        ("train_0", "who wrote X?", ("Ann Smith",), "nq"),
        ("train_1", "where is Y?", ("Paris", "paris, fr"), "hotpotqa"),
    ]
    assert examples[1].metadata == {"extra_info": {"index": 1, "split": "train"}}


def test_parquet_without_flashrag_columns_recovers_question_from_prompt(tmp_path: Path) -> None:
    rows = [searchr1_row(i, f"who wrote book {i}?", [f"author {i}"]) for i in (5, 9)]
    path = write_parquet(
        tmp_path / "train.parquet", rows, drop=("id", "question", "golden_answers")
    )
    examples = load_qa(path)
    # ids come from extra_info.index; questions from the text after "Question:" in the prompt
    assert [(e.id, e.question, e.golden_answers) for e in examples] == [
        ("5", "who wrote book 5?", ("author 5",)),
        ("9", "who wrote book 9?", ("author 9",)),
    ]


def test_parquet_golden_answers_column_when_no_reward_model(tmp_path: Path) -> None:
    rows = [searchr1_row(0, "who wrote X?", ["Ann Smith"])]
    path = write_parquet(tmp_path / "dev.parquet", rows, drop=("reward_model", "data_source"))
    (example,) = load_qa(path)
    assert example.golden_answers == ("Ann Smith",)
    assert example.data_source == "dev"  # no data_source column: the file stem


def test_parquet_single_string_target(tmp_path: Path) -> None:
    table = pa.Table.from_pylist(
        [
            {
                "prompt": [{"role": "user", "content": "Question: q?\n"}],
                "reward_model": {"ground_truth": {"target": "Rome"}},
            }
        ]
    )
    pq.write_table(table, tmp_path / "s.parquet")
    (example,) = load_qa(tmp_path / "s.parquet")
    assert (example.id, example.question, example.golden_answers) == ("0", "q?", ("Rome",))


def test_answers_accept_numpy_arrays() -> None:
    np = pytest.importorskip("numpy")
    # pandas-read Search-R1 files hold ground_truth.target as a numpy object array
    assert readers._as_answers(np.array(["a", "b"], dtype=object), "f", "col") == ("a", "b")


def test_parquet_missing_answer_columns_names_them(tmp_path: Path) -> None:
    rows = [searchr1_row(0, "who wrote X?", ["Ann Smith"])]
    path = write_parquet(tmp_path / "bad.parquet", rows, drop=("reward_model", "golden_answers"))
    with pytest.raises(QADataError) as info:
        load_qa(path)
    message = str(info.value)
    assert (
        message.startswith(str(path))
        and "'reward_model'" in message
        and "'golden_answers'" in message
    )


def test_parquet_bad_row_names_row_and_column(tmp_path: Path) -> None:
    rows = [
        searchr1_row(0, "q0?", ["a"]),
        searchr1_row(1, "q1?", ["b"]),
        searchr1_row(2, "q2?", ["c"]),
    ]
    rows[2]["reward_model"]["ground_truth"]["target"] = []
    with pytest.raises(QADataError, match=r"bad\.parquet: row 2: column 'reward_model'"):
        load_qa(write_parquet(tmp_path / "bad.parquet", rows))

    rows = [searchr1_row(0, "q0?", ["a"]), searchr1_row(1, "q1?", ["b"])]
    rows[1]["prompt"] = [{"role": "system", "content": "Question: q1?"}]
    path = write_parquet(tmp_path / "noq.parquet", rows, drop=("question",))
    with pytest.raises(QADataError, match=r"noq\.parquet: row 1: column 'prompt'.*'user'"):
        load_qa(path)


def test_not_a_parquet_file(tmp_path: Path) -> None:
    path = tmp_path / "junk.parquet"
    path.write_bytes(b"this is not parquet")
    with pytest.raises(QADataError, match="junk.parquet: cannot read as parquet"):
        load_qa(path)


def test_question_from_prompt_uses_last_user_message_and_last_marker() -> None:
    prompt = [
        {"role": "system", "content": "Question: not this"},
        {"role": "user", "content": "Question: nor this"},
        {"role": "assistant", "content": "ok"},
        {"role": "user", "content": "Example. Question: a? Now yours. Question:  who wrote X?\n"},
    ]
    assert question_from_prompt(prompt) == "who wrote X?"
    assert (
        question_from_prompt([{"role": "user", "content": "  plain question?\n"}])
        == "plain question?"
    )
    with pytest.raises(ValueError, match="no question text"):
        question_from_prompt([{"role": "user", "content": "Question:  \n"}])


# --------------------------------------------------------------------------------------------
# RetrievalDataModule


class FakeRetriever:
    def search(self, queries: list[str], topk: int) -> list[list[Passage]]:
        return [[Passage("1", "T", f"about {q}")] * topk for q in queries]


@pytest.fixture
def build_calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[Any, bool]]:
    """Replace the lazy builder in data.py; record each (config, progress) it is called with."""
    calls: list[tuple[Any, bool]] = []

    def fake_build(config: Any, progress: bool = True) -> FakeRetriever:
        calls.append((config, progress))
        return FakeRetriever()

    monkeypatch.setattr(datamodule, "_build_retriever", fake_build)
    return calls


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    return {
        "nq": write_jsonl(tmp_path / "nq.jsonl", qa_lines(5, "nq")),
        "hotpot": write_parquet(
            tmp_path / "hotpot.parquet",
            [searchr1_row(i, f"hotpot question {i}?", [f"h{i}"], source="") for i in range(3)],
        ),
        "big": write_jsonl(tmp_path / "big.jsonl", qa_lines(20, "b")),
    }


CONFIG = types.SimpleNamespace(
    corpus="corpus.jsonl", index_dir="idx"
)  # stands in for RetrieverConfig


def test_setup_builds_retriever_once(
    files: dict[str, Path], build_calls: list, monkeypatch: pytest.MonkeyPatch
) -> None:
    loaded: list[str] = []
    real_load_qa = readers.load_qa
    monkeypatch.setattr(datamodule, "load_qa", lambda path: loaded.append(path) or real_load_qa(path))
    dm = RetrievalDataModule(
        train_files=str(files["nq"]), test_files=[str(files["nq"])], retriever=CONFIG
    )
    dm.setup("fit")
    retriever = dm.retriever
    dm.setup("fit")
    dm.setup("test")
    assert build_calls == [(CONFIG, True)]
    assert loaded == [str(files["nq"])] * 2  # train once, test once: no split is read twice
    assert dm.retriever is retriever
    assert len(dm.retriever.search(["q"], topk=2)[0]) == 2


def test_build_path_imports_search_e1_retrieval_lazily(
    files: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[tuple[Any, bool]] = []
    fake_module = types.ModuleType("search_e1.retrieval")
    fake_module.build_retriever = lambda cfg, progress=True: (
        calls.append((cfg, progress)) or FakeRetriever()
    )  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "search_e1.retrieval", fake_module)
    dm = RetrievalDataModule(train_files=str(files["nq"]), retriever=CONFIG)
    dm.setup("fit")
    dm.setup("fit")
    assert calls == [(CONFIG, True)]
    assert isinstance(dm.retriever, FakeRetriever)


def test_set_retriever_injects_and_skips_build(files: dict[str, Path], build_calls: list) -> None:
    dm = RetrievalDataModule(train_files=str(files["nq"]), retriever=CONFIG)
    mine = FakeRetriever()
    dm.set_retriever(mine)
    dm.setup("fit")
    assert dm.retriever is mine and build_calls == []
    with pytest.raises(TypeError, match="set_retriever: expected an object with a search"):
        dm.set_retriever(object())  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="retriever: expected a RetrieverConfig.*set_retriever"):
        RetrievalDataModule(retriever=FakeRetriever())  # type: ignore[arg-type]


def test_errors_before_setup(files: dict[str, Path], build_calls: list) -> None:
    dm = RetrievalDataModule(train_files=str(files["nq"]), retriever=CONFIG)
    with pytest.raises(RuntimeError, match=r"call setup\(\) first"):
        _ = dm.retriever
    with pytest.raises(RuntimeError, match=r"train split is not loaded: call setup\(\) first"):
        dm.train_dataloader()
    no_retriever = RetrievalDataModule(train_files=str(files["nq"]))
    no_retriever.setup("fit")
    with pytest.raises(RuntimeError, match="no retriever.*set_retriever"):
        _ = no_retriever.retriever


def test_batches_have_keys_and_lengths(files: dict[str, Path], build_calls: list) -> None:
    dm = RetrievalDataModule(
        train_files=str(files["nq"]),
        val_files=str(files["hotpot"]),
        batch_size=2,
        val_batch_size=3,
        shuffle=False,
    )
    dm.setup("fit")
    train = list(dm.train_dataloader())
    assert [len(b["id"]) for b in train] == [2, 2, 1]
    assert set(train[0]) == {"id", "question", "golden_answers", "data_source"}
    assert train[0] == {
        "id": ["nq0", "nq1"],
        "question": ["nq question 0?", "nq question 1?"],
        "golden_answers": [["a0"], ["a1"]],
        "data_source": ["nq", "nq"],
    }
    val = list(dm.val_dataloader())
    assert [len(b["question"]) for b in val] == [3]
    # empty parquet data_source column -> the file stem
    assert val[0]["data_source"] == ["hotpot"] * 3
    assert val[0]["question"][2] == "hotpot question 2?"


def test_shuffle_is_seeded_and_deterministic(files: dict[str, Path], build_calls: list) -> None:
    def order(seed: int) -> list[str]:
        dm = RetrievalDataModule(train_files=str(files["big"]), batch_size=4, seed=seed)
        dm.setup("fit")
        return [i for batch in dm.train_dataloader() for i in batch["id"]]

    file_order = [f"b{i}" for i in range(20)]
    first = order(seed=1)
    assert sorted(first) == sorted(file_order)
    assert first != file_order  # shuffled (20! orders: identity by chance is negligible)
    assert order(seed=1) == first
    assert order(seed=2) != first


def test_concatenates_files_with_file_stem_sources(
    files: dict[str, Path], build_calls: list
) -> None:
    dm = RetrievalDataModule(test_files=[str(files["nq"]), str(files["hotpot"])], batch_size=100)
    dm.setup("test")
    (batch,) = list(dm.test_dataloader())
    assert batch["data_source"] == ["nq"] * 5 + ["hotpot"] * 3
    assert batch["id"][:5] == [f"nq{i}" for i in range(5)] and batch["id"][5:] == [
        "train_0",
        "train_1",
        "train_2",
    ]
    assert [len(b["id"]) for b in dm.predict_dataloader()] == [8]


def test_truncation_keeps_first_examples(files: dict[str, Path], build_calls: list) -> None:
    dm = RetrievalDataModule(
        train_files=[str(files["nq"]), str(files["big"])],
        val_files=str(files["big"]),
        max_train_examples=7,
        max_val_examples=3,
        shuffle=False,
    )
    dm.setup("fit")
    assert [e.id for e in dm.examples("train")] == [f"nq{i}" for i in range(5)] + ["b0", "b1"]
    assert [e.id for e in dm.examples("val")] == ["b0", "b1", "b2"]


def test_split_without_files_names_the_argument(files: dict[str, Path], build_calls: list) -> None:
    dm = RetrievalDataModule(train_files=str(files["nq"]))
    with pytest.raises(ValueError, match="test_files"):
        dm.setup("test")
    with pytest.raises(ValueError, match="val_files"):
        dm.setup("validate")
    dm.setup("fit")  # val is optional while fitting
    with pytest.raises(ValueError, match="val_files"):
        dm.val_dataloader()
    with pytest.raises(ValueError, match="train_files"):
        RetrievalDataModule(val_files=str(files["nq"])).setup("fit")
    with pytest.raises(ValueError, match="unknown stage 'tune'"):
        dm.setup("tune")


def test_setup_none_loads_every_given_split(files: dict[str, Path], build_calls: list) -> None:
    dm = RetrievalDataModule(train_files=str(files["nq"]), test_files=str(files["hotpot"]))
    dm.setup()
    assert len(dm.examples("train")) == 5 and len(dm.examples("test")) == 3


def test_empty_file_in_a_split_is_an_error(tmp_path: Path, build_calls: list) -> None:
    dm = RetrievalDataModule(train_files=str(write_jsonl(tmp_path / "e.jsonl", [])))
    with pytest.raises(QADataError, match="e.jsonl: no examples"):
        dm.setup("fit")


@pytest.mark.parametrize(
    ("kwargs", "error", "name"),
    [
        ({"batch_size": 0}, ValueError, "batch_size"),
        ({"batch_size": 2.0}, TypeError, "batch_size"),
        ({"val_batch_size": -1}, ValueError, "val_batch_size"),
        ({"max_train_examples": 0}, ValueError, "max_train_examples"),
        ({"max_val_examples": "5"}, TypeError, "max_val_examples"),
        ({"num_workers": -1}, ValueError, "num_workers"),
        ({"seed": "1"}, TypeError, "seed"),
        ({"shuffle": "yes"}, TypeError, "shuffle"),
        ({"train_files": 3}, TypeError, "train_files"),
        ({"test_files": ["ok.jsonl", ""]}, ValueError, "test_files"),
    ],
)
def test_constructor_validates_arguments(kwargs: dict, error: type, name: str) -> None:
    with pytest.raises(error, match=rf"^{name}: "):
        RetrievalDataModule(**kwargs)


def test_hparams_are_plain() -> None:
    dm = RetrievalDataModule(train_files=Path("a.jsonl"), retriever=CONFIG)  # type: ignore[arg-type]
    assert dm.hparams["train_files"] == ["a.jsonl"]
    assert dm.hparams["val_files"] == []
    # SimpleNamespace is not a dataclass: stored as its string form, never as the object
    assert isinstance(dm.hparams["retriever"], str)


def test_collate_questions() -> None:
    batch = collate_questions(
        [QAExample("1", "q1?", ("a",), "nq"), QAExample("2", "q2?", ("b", "c"))]
    )
    assert batch == {
        "id": ["1", "2"],
        "question": ["q1?", "q2?"],
        "golden_answers": [["a"], ["b", "c"]],
        "data_source": ["nq", ""],
    }


class _Recorder(L.LightningModule):
    """Smallest module that consumes question batches; records what the Trainer fed it."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.seen: list[list[str]] = []

    def training_step(self, batch: dict[str, list], batch_idx: int) -> torch.Tensor:
        self.seen.append(batch["id"])
        assert self.trainer.datamodule.retriever.search(batch["question"], topk=1)
        return (self.weight - 1.0).pow(2).sum()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_trainer_fit_uses_datamodule(
    files: dict[str, Path], build_calls: list, tmp_path: Path
) -> None:
    dm = RetrievalDataModule(
        train_files=str(files["nq"]), retriever=CONFIG, batch_size=2, shuffle=False
    )
    module = _Recorder()
    trainer = L.Trainer(
        max_epochs=2, accelerator="cpu", logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
    )  # fmt: skip
    trainer.fit(module, datamodule=dm)
    assert module.seen == [["nq0", "nq1"], ["nq2", "nq3"], ["nq4"]] * 2
    assert len(build_calls) == 1 and build_calls[0][1] is True  # rank 0 shows progress

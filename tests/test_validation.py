"""Bad input is refused with a message naming the file, field or line, before any long work."""

from __future__ import annotations

import json
import os
from dataclasses import replace

import pytest
import torch
from conftest import make_tiny_policy
from scripted import EchoRetriever, write_qa

from search_e1 import Evolver, RetrievalDataModule
from search_e1.cli import config_changes, record_config
from search_e1.data import MAX_QUESTION_CHARS, QADataError, load_qa
from search_e1.errors import UserInputError
from search_e1.protocol import PromptConfig
from search_e1.rollout import RolloutConfig, check_prompt_fits, rollout
from search_e1.rounds.evolver import STATE_FILE, EvolverConfig
from search_e1.rounds.grpo import GRPOConfig
from search_e1.rounds.ofsd import OFSDConfig


@pytest.mark.parametrize("cls", [GRPOConfig, OFSDConfig])
def test_group_size_one_is_refused_where_it_can_never_learn(cls):
    with pytest.raises(ValueError, match="group_size must be >= 2"):
        cls(group_size=1)


def test_negative_eval_questions_are_refused():
    with pytest.raises(ValueError, match=r"EvolverConfig.eval_max_questions must be >= 0, got -1"):
        EvolverConfig(eval_max_questions=-1)


@pytest.mark.parametrize(("cls", "field", "value", "expected"), [
    (GRPOConfig, "clip_low", -0.2, ">= 0"), (GRPOConfig, "mini_batch_size", -1, ">= 0"),
    (RolloutConfig, "top_k", -5, ">= 0"), (RolloutConfig, "top_p", 0.0, "> 0"), (RolloutConfig, "top_p", 1.5, "<= 1"),
])
def test_each_field_is_refused_by_name_with_its_value(cls, field, value, expected):
    with pytest.raises(ValueError, match=rf"^{cls.__name__}\.{field} must be {expected}, got {value}$"):
        cls(**{field: value})


def test_non_utf8_qa_file_names_file_and_line(tmp_path):
    path = tmp_path / "qa.jsonl"
    path.write_bytes(b'{"question": "ok?", "golden_answers": ["a"]}\n'
                     b'{"question": "caf\xe9?", "golden_answers": ["b"]}\n')
    with pytest.raises(QADataError, match=r"qa\.jsonl:2: not UTF-8 text \(byte 0xe9 at column 18\)"):
        load_qa(path)


def test_invalid_json_names_file_line_and_the_column_in_that_line(tmp_path):
    """An object left open at the end of a line: the column is where the line ends (json's own colno
    would say column 1 of the next 'line', the newline)."""
    from search_e1.retrieval.corpus import CorpusFormatError, load_corpus

    qa, corpus = tmp_path / "qa.jsonl", tmp_path / "corpus.jsonl"
    qa.write_text('{"question": "a?", "golden_answers": ["a"]}\n{"question": "b?", "golden_answers": ["b"]\n')
    with pytest.raises(QADataError, match=r"qa\.jsonl:2: invalid JSON \(Expecting ',' delimiter at column 43\)$"):
        load_qa(qa)
    corpus.write_text('{"id": 1, "contents": "a"}\n{"id": 2, "contents": "b"\n')
    with pytest.raises(CorpusFormatError,
                       match=r"corpus\.jsonl:2: invalid JSON \(Expecting ',' delimiter at column 26\)$"):
        load_corpus(corpus)


def test_a_huge_question_is_refused_at_load_time(tmp_path):
    path = tmp_path / "qa.jsonl"
    path.write_text(json.dumps({"question": "x" * (MAX_QUESTION_CHARS + 1), "golden_answers": ["a"]}) + "\n")
    with pytest.raises(QADataError, match=rf"qa\.jsonl:1: field 'question' holds {MAX_QUESTION_CHARS + 1} characters"):
        load_qa(path)


def test_a_prompt_template_longer_than_the_budget_is_refused(smol_tokenizer):
    prompt = PromptConfig()
    base = check_prompt_fits(smol_tokenizer, prompt, RolloutConfig(max_total_tokens=4096))
    assert base > 10
    with pytest.raises(UserInputError, match=rf"prompt template alone is {base} tokens"):
        check_prompt_fits(smol_tokenizer, prompt, RolloutConfig(max_total_tokens=base + 5, max_new_tokens=8))


def test_over_long_questions_are_not_rolled_out_and_counted(tiny_policy, caplog):
    prompt = PromptConfig()
    cfg = RolloutConfig(max_turns=2, max_new_tokens=4)
    base = check_prompt_fits(tiny_policy.tokenizer, prompt, replace(cfg, max_total_tokens=4096))
    cfg = replace(cfg, max_total_tokens=base + 12)
    with caplog.at_level("WARNING"):
        traj = rollout(tiny_policy, EchoRetriever(), ["Short?", "long " * 50 + "?"], [["a"], ["b"]], cfg, prompt,
                       group_size=2)
    assert traj.finish_reasons[2:] == ["prompt_too_long"] * 2 and "prompt_too_long" not in traj.finish_reasons[:2]
    assert "1 of 2 questions not rolled out" in caplog.text


def test_resuming_with_a_different_config_is_refused_with_the_keys(tmp_path):
    saved = "policy:\n  path: embedded\ngrpo:\n  lr: 1.0e-05\nevolver:\n  rounds: 2\n"
    new = "policy:\n  path: other\ngrpo:\n  lr: 2.0e-05\nevolver:\n  rounds: 3\n"
    assert config_changes(saved, new) == ["grpo.lr: 1e-05 -> 2e-05", "policy.path: 'embedded' -> 'other'"]
    (tmp_path / "config.yaml").write_text(saved)
    (tmp_path / STATE_FILE).write_text("{}")
    with pytest.raises(UserInputError, match="differing keys:\n  grpo.lr: 1e-05 -> 2e-05\n  policy.path"):
        record_config(tmp_path, new, EvolverConfig())
    record_config(tmp_path, new, EvolverConfig(accept_config_change=True))
    assert (tmp_path / "config.yaml").read_text() == saved  # the original record stays
    assert "grpo.lr: 1e-05 -> 2e-05" in (tmp_path / "config_changes.log").read_text()
    record_config(tmp_path, saved.replace("rounds: 2", "rounds: 5"), EvolverConfig())  # a longer schedule is fine


def test_a_moved_run_directory_resumes(tmp_path):
    """Only evolver.run_dir differs (the directory was moved or renamed): the run resumes, unrefused."""
    saved = "evolver:\n  run_dir: /old/place/run\n  rounds: 2\n"
    (tmp_path / "config.yaml").write_text(saved)
    (tmp_path / STATE_FILE).write_text("{}")
    assert config_changes(saved, saved.replace("/old/place/run", str(tmp_path))) == []
    record_config(tmp_path, saved.replace("/old/place/run", str(tmp_path)), EvolverConfig())
    assert (tmp_path / "config.yaml").read_text() == saved


def test_a_deleted_config_yaml_is_refused_with_the_way_out(tmp_path, caplog):
    (tmp_path / STATE_FILE).write_text("{}")  # a run started here, its config.yaml is gone
    with pytest.raises(UserInputError, match="config.yaml is missing.*restore config.yaml, or set "
                                             "evolver.accept_config_change true"):
        record_config(tmp_path, "grpo:\n  lr: 3.0e-05\n", EvolverConfig())
    assert not (tmp_path / "config.yaml").exists()
    record_config(tmp_path, "grpo:\n  lr: 3.0e-05\n", EvolverConfig(accept_config_change=True))
    assert (tmp_path / "config.yaml").read_text() == "grpo:\n  lr: 3.0e-05\n" and "had no config.yaml" in caplog.text


def test_greedy_training_rollouts_are_refused(tmp_path, smol_tokenizer):
    """rollout.temperature 0 makes a group's samples identical: every advantage 0, nothing learnt."""
    from search_e1.rollout import RolloutConfig, SearchEnv

    dm = RetrievalDataModule(train_files=write_qa(tmp_path / "train.jsonl", 4, "t"), batch_size=2)
    dm.set_retriever(EchoRetriever())
    make = lambda steps: Evolver(make_tiny_policy(smol_tokenizer), dm, SearchEnv(config=RolloutConfig(temperature=0.0)),  # noqa: E731
                                 grpo=GRPOConfig(group_size=2, kl_coef=0.0),
                                 config=EvolverConfig(run_dir=str(tmp_path / "run"), grpo_steps=steps, ofsd_steps=0,
                                                      eval_initial=False),
                                 trainer={"accelerator": "cpu", "devices": 1})
    with pytest.raises(UserInputError, match="rollout.temperature is 0 .* every GRPO advantage is 0"):
        make(2).fit()
    assert not (tmp_path / "run").exists()  # refused before any file
    make(0).fit()  # no training step: greedy is fine (an evaluation-only schedule)


def test_a_damaged_state_file_or_a_missing_checkpoint_is_named(tmp_path, smol_tokenizer):
    from search_e1.rounds.evolver import read_state

    path = tmp_path / STATE_FILE
    for text, why in (("{oops", "not JSON"), ("[]", "not an object"), ('{"round": 1}', "'phase' missing"),
                      ('{"round": 1, "phase": 7, "step_offset": 0, "grpo_batches": 0}', "phase 7 out of range")):
        path.write_text(text)
        with pytest.raises(UserInputError, match=f"{STATE_FILE} is damaged \\({why}"):
            read_state(path)
    dm = RetrievalDataModule(train_files=write_qa(tmp_path / "train.jsonl", 4, "t"), batch_size=2)
    run = tmp_path / "run"
    run.mkdir()
    state = {"round": 2, "phase": 0, "step_offset": 4, "grpo_batches": 2, "checkpoint": "round_1"}
    (run / STATE_FILE).write_text(json.dumps(state))
    evolver = Evolver(make_tiny_policy(smol_tokenizer), dm, config=EvolverConfig(run_dir=str(run)))
    with pytest.raises(UserInputError, match="names checkpoint 'round_1', but .*round_1 does not exist"):
        evolver._maybe_resume()


def test_a_run_that_never_started_takes_the_new_config(tmp_path):
    (tmp_path / "config.yaml").write_text("grpo:\n  lr: 1.0\n")
    record_config(tmp_path, "grpo:\n  lr: 2.0\n", EvolverConfig())
    assert (tmp_path / "config.yaml").read_text() == "grpo:\n  lr: 2.0\n"


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories")
def test_read_only_run_dir_is_named(tmp_path):
    tmp_path.chmod(0o500)
    try:
        with pytest.raises(UserInputError, match=f"evolver.run_dir {tmp_path / 'run'}: cannot write"):
            record_config(tmp_path / "run", "a: 1\n", EvolverConfig())
    finally:
        tmp_path.chmod(0o700)


def test_unwritable_run_dir_is_named(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(UserInputError, match=f"evolver.run_dir {blocker / 'run'}: cannot write"):
        record_config(blocker / "run", "a: 1\n", EvolverConfig())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_checkpoint_of_another_model_gives_one_clear_error(tmp_path, smol_tokenizer):
    make_tiny_policy(smol_tokenizer, layers=2).model.save_pretrained(tmp_path / "ckpt")
    other = make_tiny_policy(smol_tokenizer, layers=3)
    with pytest.raises(UserInputError,
                       match=r"does not fit the policy: 9 tensors missing, 0 unexpected "
                             r"\(first: model.layers.2.self_attn.q_proj.weight\); "
                             r"was the run started with another policy.path"):
        other.load_weights(tmp_path / "ckpt")


def test_bad_trainer_settings_are_refused_before_any_file_is_written(tmp_path, smol_tokenizer):
    dm = RetrievalDataModule(train_files=write_qa(tmp_path / "train.jsonl", 4, "t"), batch_size=2)
    dm.set_retriever(EchoRetriever())
    evolver = Evolver(make_tiny_policy(smol_tokenizer), dm, grpo=GRPOConfig(group_size=2, kl_coef=0.0),
                      config=EvolverConfig(run_dir=str(tmp_path / "run")),
                      trainer={"accelerator": "cuda" if not torch.cuda.is_available() else "tpu", "devices": 1})
    with pytest.raises(UserInputError, match="invalid trainer settings"):
        evolver.fit()
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("text", ["", "\n  \n\n"])
def test_empty_or_blank_corpus_is_an_error_not_an_empty_index(tmp_path, text):
    from search_e1.retrieval.corpus import CorpusFormatError, load_corpus
    from search_e1.retrieval.store import convert_corpus

    path = tmp_path / "corpus.jsonl"
    path.write_text(text)
    with pytest.raises(CorpusFormatError, match=r"corpus\.jsonl: no passages \(the file is empty or blank\)"):
        load_corpus(path)
    with pytest.raises(CorpusFormatError, match="no passages"):
        convert_corpus(path, tmp_path / "store", progress=False)
    assert not (tmp_path / "store" / "store.json").exists()

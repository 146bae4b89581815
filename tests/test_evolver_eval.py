"""The Evolver's persistent optimisers and its powered evaluation (held-out worlds, intervals, gains)."""

from __future__ import annotations

import csv
import json
from dataclasses import replace

import pytest
import torch
from scripted import EchoRetriever, write_qa
from test_evolver import make_evolver, scalars

import search_e1.rounds.base as base
from search_e1 import Evolver, RetrievalDataModule
from search_e1.data import EvalWorldConfig
from search_e1.optim import saved_optimizer_steps
from search_e1.rollout import RolloutConfig, SearchEnv
from search_e1.rollout.vllm_backend import VLLMConfig
from search_e1.rounds.evolver import VAL_FIELDS, phase_summary, with_run_seed


def grpo_lrs(run_dir) -> list[float]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    values = []
    for path in sorted((run_dir / "tensorboard").rglob("events.out.tfevents.*")):
        acc = EventAccumulator(str(path), size_guidance={"scalars": 0})
        acc.Reload()
        if "grpo/lr" in acc.Tags()["scalars"]:
            values += [(e.step, e.value) for e in acc.Scalars("grpo/lr")]
    return [v for _, v in sorted(values)]


@pytest.mark.parametrize("persist", [True, False], ids=["persistent", "fresh-per-round"])
def test_optimizer_state_crosses_the_round_boundary(tmp_path, smol_tokenizer, persist):
    """Two rounds of 2 GRPO steps with a 4-step lr warm-up: a persistent optimiser continues the
    warm-up in round 2 (lr x 3/5, 4/5) and ends with 4 steps counted; a fresh one restarts it."""
    torch.manual_seed(0)
    evolver = make_evolver(tmp_path, smol_tokenizer, rounds=2, cls=Evolver)
    evolver.grpo = replace(evolver.grpo, optim=replace(evolver.grpo.optim, warmup_steps=4))
    evolver.config = replace(evolver.config, persist_optimizers=persist)
    evolver.fit()
    run = tmp_path / "run"
    lr = evolver.grpo.optim.lr
    factors = [1, 2, 3, 4] if persist else [1, 2, 1, 2]  # (step + 1) / (warmup + 1)
    assert grpo_lrs(run) == pytest.approx([lr * f / 5 for f in factors])
    ckpts = run / "checkpoints"
    assert not (ckpts / "round_1" / "optimizer").exists()  # only the newest checkpoint keeps optimiser states
    assert not list(ckpts.glob(".optimizer_*"))  # every staged state was moved into a checkpoint
    if persist:
        assert sorted(p.name for p in (ckpts / "round_2" / "optimizer").iterdir()) == ["grpo", "ofsd"]
        assert saved_optimizer_steps(ckpts / "round_2" / "optimizer" / "grpo") == 4
    else:
        assert not (ckpts / "round_2" / "optimizer").exists()


def test_a_run_stopped_after_round_one_resumes_with_the_same_moments_and_step_counts(
        tmp_path, smol_tokenizer, monkeypatch):
    saved: dict[str, dict[str, torch.Tensor]] = {}
    loaded: dict[str, dict[str, torch.Tensor]] = {}

    def snapshot(model, opt):
        names = {p: n for n, p in model.named_parameters()}
        return {names[p]: {k: v.detach().clone() for k, v in s.items()} for p, s in opt.state.items()}

    def save(model, opt, path):
        saved[path.name.removeprefix(".optimizer_")] = snapshot(model, opt)
        return save_orig(model, opt, path)

    def load(model, opt, path):
        load_orig(model, opt, path)
        loaded.setdefault(path.name, snapshot(model, opt))  # the first load of each kind: round 2's

    save_orig, load_orig = base.save_optimizer_state, base.load_optimizer_state
    monkeypatch.setattr(base, "save_optimizer_state", save)
    monkeypatch.setattr(base, "load_optimizer_state", load)

    class Killed(Evolver):
        def _evaluate(self, label):
            if str(label) == "1":
                raise KeyboardInterrupt("killed after round 1")
            return super()._evaluate(label)

    torch.manual_seed(0)
    with pytest.raises(KeyboardInterrupt):
        make_evolver(tmp_path, smol_tokenizer, rounds=2, cls=Killed).fit()
    state = json.loads((tmp_path / "run" / "evolver_state.json").read_text())
    assert state["checkpoint"] == "round_1" and state["pending_eval"] == 1
    before = dict(saved)
    assert set(before) == {"grpo", "ofsd"} and not loaded
    resumed = make_evolver(tmp_path, smol_tokenizer, rounds=2, cls=Evolver)
    assert resumed.fit()["round"] == 3
    assert set(loaded) == {"grpo", "ofsd"}
    for kind in ("grpo", "ofsd"):
        assert loaded[kind].keys() == before[kind].keys()
        for name, state_before in before[kind].items():
            for key, value in state_before.items():  # exp_avg, exp_avg_sq, step: bit for bit
                assert torch.equal(loaded[kind][name][key], value), (kind, name, key)
    assert int(next(iter(loaded["grpo"].values()))["step"]) == 2
    rows = [(r["round"], r["world"]) for r in csv.DictReader((tmp_path / "run" / "val_table.csv").open())]
    assert rows == [("0", "train"), ("1", "train"), ("2", "train")]  # the owed row written once


def test_held_out_worlds_get_their_own_rows_intervals_gains_and_tags(tmp_path, smol_tokenizer):
    """val split (5 questions) + a held-out world (4 questions): one row per world and evaluation,
    Wilson intervals, the paired gain over round 0, 2 questions at the round in between."""
    dm = RetrievalDataModule(train_files=write_qa(tmp_path / "train.jsonl", 6, "t"),
                             val_files=write_qa(tmp_path / "val5.jsonl", 5, "v"), batch_size=2,
                             eval_worlds=[EvalWorldConfig(name="other", files=[write_qa(tmp_path / "o.jsonl", 4,
                                                                                        "o")])])
    dm.set_retriever(EchoRetriever())
    torch.manual_seed(0)
    evolver = make_evolver(tmp_path, smol_tokenizer, rounds=2, cls=Evolver)
    evolver.datamodule = dm
    evolver.config = replace(evolver.config, eval_round_questions=2, grpo_steps=1, ofsd_steps=1)
    evolver.fit()
    run = tmp_path / "run"
    with (run / "val_table.csv").open() as f:
        assert next(csv.reader(f)) == list(VAL_FIELDS)
    rows = list(csv.DictReader((run / "val_table.csv").open()))
    assert [(r["round"], r["world"], r["n"]) for r in rows] == [
        ("0", "train", "5"), ("0", "other", "4"), ("1", "train", "2"), ("1", "other", "2"),
        ("2", "train", "5"), ("2", "other", "4")]
    for r in rows:
        em, lo, hi = float(r["em"]), float(r["em_lo"]), float(r["em_hi"])
        assert 0 <= lo <= em <= hi <= 1 and hi - lo > 0.2  # Wilson at n <= 5 is wide
        assert r["em_1hop"] == r["em_2hop"] == ""  # these questions carry no hop count
    read = lambda lbl, w: {q["id"]: q["em"] for q in map(json.loads, (run / "eval" / lbl / f"{w}.jsonl").open())}  # noqa: E731
    for r in rows[2:]:  # gains over round 0, paired on the questions both evaluated
        now, before = read(r["round"], r["world"]), read("0", r["world"])
        assert len(now) == int(r["n"]) and set(now) <= set(before)
        assert float(r["gain"]) == pytest.approx(sum(now[q] - before[q] for q in now) / len(now), abs=1e-4)
        assert float(r["gain_lo"]) <= float(r["gain"]) <= float(r["gain_hi"])
    assert rows[0]["gain"] == rows[1]["gain"] == ""
    tags, _ = scalars(run)
    assert {"val/em", "val/em_lo", "val/em_hi", "val/gain", "val_other/em", "val_other/gain"} <= set(tags)


def test_run_seed_fills_the_unset_seeds(tmp_path):
    dm = RetrievalDataModule(train_files=write_qa(tmp_path / "t.jsonl", 2, "t"))
    env = with_run_seed(SearchEnv(config=RolloutConfig(vllm=VLLMConfig())), dm, 7)
    assert dm.seed == 7 and env.config.vllm.seed == 7
    dm = RetrievalDataModule(train_files=write_qa(tmp_path / "t.jsonl", 2, "t"), seed=3)
    env = with_run_seed(SearchEnv(config=RolloutConfig(vllm=VLLMConfig(seed=5))), dm, 7)
    assert dm.seed == 3 and env.config.vllm.seed == 5  # set ones are kept


def test_phase_summary_line():
    stats = {"reward_mean": [0.25, 0.5], "searches_mean": [1.5, 0.0], "grad_norm": [1.0, 2.0]}
    assert phase_summary("grpo", 2, stats, 12.4) == \
        "round 2 grpo: 2 steps in 12 s, reward_mean 0.25 -> 0.5, searches_mean 1.5 -> 0"
    assert phase_summary("ofsd", 1, {}, 0.2) == "round 1 ofsd: 0 steps in 0 s"


def test_eval_world_config_is_checked():
    with pytest.raises(ValueError, match="name"):
        EvalWorldConfig(name="has space", files=["x.jsonl"])
    with pytest.raises(ValueError, match="name"):
        EvalWorldConfig(name="train", files=["x.jsonl"])
    with pytest.raises(ValueError, match="at least one QA file"):
        EvalWorldConfig(name="other", files=[])
    with pytest.raises(ValueError, match="unique"):
        RetrievalDataModule(eval_worlds=[EvalWorldConfig(files=["a"]), EvalWorldConfig(files=["b"])])



def test_zero_rounds_runs_only_the_warmup_and_its_evaluation(tmp_path, smol_tokenizer):
    from test_evolver import warmup_config

    torch.manual_seed(0)
    evolver = make_evolver(tmp_path, smol_tokenizer, rounds=0, cls=Evolver, warmup=warmup_config(tmp_path))
    evolver.config = replace(evolver.config, eval_initial=False)
    state = evolver.fit()
    assert state == {"round": 1, "phase": 0, "step_offset": 2, "grpo_batches": 0, "checkpoint": "warmup",
                     "warmup": "done"}
    rows = list(csv.DictReader((tmp_path / "run" / "val_table.csv").open()))
    assert [(r["round"], r["world"], r["n"]) for r in rows] == [("warmup", "train", "3")]
    again = make_evolver(tmp_path, smol_tokenizer, rounds=0, cls=Evolver, warmup=warmup_config(tmp_path))
    assert again.fit() == state  # finished: nothing runs twice

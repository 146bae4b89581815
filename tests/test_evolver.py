"""End to end: a tiny random model evolves through GRPO and OFSD rounds (files, logs, resume)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
from conftest import load_script, make_tiny_policy
from scripted import EchoRetriever, ScriptedTurns, scripted_factory, write_demonstrations, write_qa

from search_e1 import Evolver, RetrievalDataModule
from search_e1.rollout import RolloutConfig, SearchEnv
from search_e1.rounds.base import OptimConfig
from search_e1.rounds.evolver import EvolverConfig
from search_e1.rounds.grpo import GRPOConfig
from search_e1.rounds.ofsd import OFSDConfig
from search_e1.rounds.warmup import WarmupConfig, WarmupModule

GRPO_TAGS = {"reward_mean", "em", "mixed_group_frac", "searches_mean", "response_length", "kl", "clip_frac",
             "entropy", "grad_norm", "lr", "pg_loss"}
OFSD_TAGS = {"distill_loss", "tokens", "grad_norm", "lr", "sibling_frac", "examples", "kl_before", "kl_after"}


class RecordingEvolver(Evolver):
    """Keeps a copy of the parameters after each phase."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.snapshots = [self._params()]

    def _params(self):
        return [p.detach().clone() for p in self.policy.parameters()]

    def _advance(self, steps):
        self.snapshots.append(self._params())
        super()._advance(steps)


def make_evolver(tmp_path, smol_tokenizer, rounds: int, cls=RecordingEvolver, warmup: WarmupConfig | None = None):
    dm = RetrievalDataModule(train_files=write_qa(tmp_path / "train.jsonl", 6, "t"),
                             val_files=write_qa(tmp_path / "val.jsonl", 3, "v"), batch_size=2)
    dm.set_retriever(EchoRetriever())
    return cls(
        make_tiny_policy(smol_tokenizer), dm,
        grpo=GRPOConfig(group_size=4, optim=OptimConfig(lr=5e-3), micro_batch_size=4, kl_coef=0.01, log_text_every=1),
        ofsd=OFSDConfig(group_size=4, num_questions=3, optim=OptimConfig(lr=5e-3), batch_size=2, micro_batch_size=1,
                        kl_eval_examples=2),
        env=SearchEnv(config=RolloutConfig(max_turns=2, max_new_tokens=12, passages_per_search=1),
                      generator_factory=scripted_factory),
        config=EvolverConfig(run_dir=str(tmp_path / "run"), rounds=rounds, grpo_steps=2, ofsd_steps=2,
                             eval_batch_size=4),
        trainer={"accelerator": "cpu", "devices": 1, "enable_progress_bar": False, "enable_model_summary": False},
        warmup=warmup,
    )


def scalars(run_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out, texts = {}, set()
    for events in sorted((run_dir / "tensorboard").rglob("events.out.tfevents.*")):
        acc = EventAccumulator(str(events), size_guidance={"scalars": 0, "tensors": 0})
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            out.setdefault(tag, []).extend(e.step for e in acc.Scalars(tag))
        texts.update(t for t in acc.Tags()["tensors"] if "trajectories" in t)
    return out, texts


def test_one_round_changes_parameters_in_both_phases_and_writes_outputs(tmp_path, smol_tokenizer):
    torch.manual_seed(0)
    evolver = make_evolver(tmp_path, smol_tokenizer, rounds=1)
    state = evolver.fit()
    assert state == {"round": 2, "phase": 0, "step_offset": 4, "grpo_batches": 2, "checkpoint": "round_1"}
    initial, after_grpo, after_ofsd = evolver.snapshots
    changed = lambda a, b: max((x - y).abs().max().item() for x, y in zip(a, b, strict=True))  # noqa: E731
    assert changed(initial, after_grpo) > 1e-4, "GRPO did not update the policy"
    assert changed(after_grpo, after_ofsd) > 1e-4, "OFSD did not update the policy"

    run = tmp_path / "run"
    assert (run / "checkpoints" / "round_1" / "model.safetensors").is_file()
    assert not (run / "checkpoints" / "last").exists()  # superseded by the round checkpoint
    assert json.loads((run / "evolver_state.json").read_text())["round"] == 2
    records = [json.loads(line) for line in (run / "ofsd" / "round_1" / "trajectories.jsonl").open()]
    assert len(records) == 3 * 4 and {"response", "sibling", "loss_mask", "reward"} <= set(records[0])
    with_sibling = [r for r in records if r["sibling"] >= 0]
    assert with_sibling and all(records[r["sibling"]]["reward"] == 1.0 for r in with_sibling)
    rows = list(csv.DictReader((run / "val_table.csv").open()))
    assert [int(r["round"]) for r in rows] == [0, 1] and float(rows[1]["n"]) == 3

    tags, texts = scalars(run)
    assert {f"grpo/{t}" for t in GRPO_TAGS} <= set(tags), set(tags)
    assert {f"ofsd/{t}" for t in OFSD_TAGS} <= set(tags), set(tags)
    assert {"val/em", "val/f1", "val/searches", "val/tokens"} <= set(tags)
    assert sorted(tags["grpo/reward_mean"]) == [0, 1] and sorted(tags["ofsd/distill_loss"]) == [2, 3]
    assert "grpo/trajectories" in {t.split("/text_summary")[0] for t in texts}
    # what bin/bench_learning.py counts from these logs: 2 GRPO steps x 2 questions x 4 samples and one
    # optimiser step each, then the OFSD round's 3 questions x 4 samples and its 2 steps
    bench = load_script("bench_learning")
    assert json.loads((run / "ofsd" / "round_1" / "summary.json").read_text())["steps"] == 2
    assert bench.logged_budget(run) == {"trajectories": 2 * 2 * 4 + 3 * 4, "optimizer_steps": 2 + 2}


def test_resume_continues_with_the_next_round(tmp_path, smol_tokenizer):
    torch.manual_seed(0)
    make_evolver(tmp_path, smol_tokenizer, rounds=1, cls=Evolver).fit()
    saved = json.loads((tmp_path / "run" / "evolver_state.json").read_text())
    resumed = make_evolver(tmp_path, smol_tokenizer, rounds=2)
    # the fresh random policy is replaced by the checkpoint before any training
    from safetensors.torch import load_file

    weights = load_file(str(tmp_path / "run" / "checkpoints" / saved["checkpoint"] / "model.safetensors"))
    resumed._maybe_resume()
    for name, p in resumed.policy.model.named_parameters():
        if name in weights:
            assert torch.equal(p.detach(), weights[name]), name
    assert resumed.state == saved
    state = resumed.fit()
    assert state["round"] == 3 and state["step_offset"] == 8 and state["grpo_batches"] == 4
    tags, _ = scalars(tmp_path / "run")
    assert sorted(tags["grpo/reward_mean"]) == [0, 1, 4, 5]  # one increasing axis across runs
    rows = list(csv.DictReader((tmp_path / "run" / "val_table.csv").open()))
    assert [int(r["round"]) for r in rows] == [0, 1, 2]


def test_grpo_requires_reference_when_kl_is_on(smol_tokenizer):
    from search_e1.rounds.grpo import GRPOModule

    with pytest.raises(ValueError, match="reference"):
        GRPOModule(make_tiny_policy(smol_tokenizer), config=GRPOConfig(kl_coef=0.1))


@pytest.mark.slow
@pytest.mark.parametrize("warmup", [False, True], ids=["rounds", "warmup+rounds"])
def test_fsdp_evolution_on_two_cpu_processes(tmp_path, warmup):
    """The same evolution with strategy fsdp (FSDP2, gloo, 2 processes): it finishes, the policy
    changed, and both ranks hold equal parameters afterwards (also after a warm-up phase)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).with_name("fsdp_evolve.py")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(script), str(tmp_path)] + (["warmup"] if warmup else []),
                          capture_output=True, text=True, timeout=900, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    r0, r1 = (torch.load(tmp_path / f"params_rank{r}.pt", weights_only=False) for r in (0, 1))
    assert r0["state"] == r1["state"]
    expected = {"round": 2, "phase": 0, "step_offset": 4, "grpo_batches": 2, "checkpoint": "round_1"}
    assert r0["state"] == (expected | {"warmup": "done", "step_offset": 6} if warmup else expected)
    assert r0["changed"] > 1e-4
    assert r0["params"].keys() == r1["params"].keys()
    for k in r0["params"]:
        assert torch.equal(r0["params"][k], r1["params"][k]), k
    assert (tmp_path / "run" / "checkpoints" / "round_1" / "model.safetensors").is_file()
    assert val_rounds(tmp_path / "run") == (["0", "warmup", "1"] if warmup else ["0", "1"])  # rank 0 only
    assert (tmp_path / "run" / "checkpoints" / "warmup").is_dir() == warmup


@pytest.mark.slow
def test_two_nodes_of_one_process_each_through_torchrun(tmp_path):
    """A multi-node launch as a cluster runs it: two torchrun node processes (node ranks 0 and 1, one
    process each) rendezvous on localhost (gloo), `trainer.num_nodes 2` shards the policy over both,
    two rounds run (the optimisers' sharded states saved after round 1 restored in round 2), and
    both nodes end with equal parameters."""
    import os
    import socket
    import subprocess
    import sys
    from pathlib import Path

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    script = Path(__file__).with_name("fsdp_evolve.py")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1",
           "--master-addr", "127.0.0.1", "--master-port", str(port)]
    nodes = [subprocess.Popen([*cmd, "--node-rank", str(r), str(script), str(tmp_path), "nodes"], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for r in (0, 1)]
    outputs = [p.communicate(timeout=900)[0] for p in nodes]
    assert [p.returncode for p in nodes] == [0, 0], "\n".join(o[-3000:] for o in outputs)
    r0, r1 = (torch.load(tmp_path / f"params_rank{r}.pt", weights_only=False) for r in (0, 1))
    assert r0["state"] == r1["state"] == {"round": 3, "phase": 0, "step_offset": 8, "grpo_batches": 4,
                                          "checkpoint": "round_2"}
    assert r0["changed"] > 1e-4 and r0["params"].keys() == r1["params"].keys()
    for k in r0["params"]:
        assert torch.equal(r0["params"][k], r1["params"][k]), k
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints" / "round_2" / "optimizer").iterdir()) == \
        ["grpo", "ofsd"]
    assert "optimiser state restored" in outputs[0] + outputs[1]


def test_run_killed_during_ofsd_resumes_without_redoing_grpo(tmp_path, smol_tokenizer):
    class Crash(Evolver):
        def _run_ofsd(self):
            raise KeyboardInterrupt("killed")

    torch.manual_seed(0)
    with pytest.raises(KeyboardInterrupt):
        make_evolver(tmp_path, smol_tokenizer, rounds=1, cls=Crash).fit()
    state = json.loads((tmp_path / "run" / "evolver_state.json").read_text())
    assert state == {"round": 1, "phase": 1, "step_offset": 2, "grpo_batches": 2, "checkpoint": "last"}
    resumed = make_evolver(tmp_path, smol_tokenizer, rounds=1)
    final = resumed.fit()
    assert final == {"round": 2, "phase": 0, "step_offset": 4, "grpo_batches": 2, "checkpoint": "round_1"}
    assert len(resumed.snapshots) == 2  # only the OFSD phase ran
    tags, _ = scalars(tmp_path / "run")
    assert sorted(tags["grpo/reward_mean"]) == [0, 1] and sorted(tags["ofsd/distill_loss"]) == [2, 3]


def test_inspection_notebook_runs_on_a_run_directory(tmp_path, smol_tokenizer, capsys):
    from pathlib import Path

    torch.manual_seed(0)
    make_evolver(tmp_path, smol_tokenizer, rounds=1, cls=Evolver).fit()
    nb = json.loads((Path(__file__).resolve().parents[1] / "notebooks" / "inspect_run.ipynb").read_text())
    scope = {"RUN_DIR": tmp_path / "run"}
    for cell in nb["cells"]:
        if cell["cell_type"] == "code":
            exec("".join(cell["source"]), scope)  # noqa: S102 - our own notebook
    out = capsys.readouterr().out
    assert "grpo/reward_mean" in out and "with a sibling" in out and "'round': '1'" in out


def test_finished_run_is_not_overwritten(tmp_path, smol_tokenizer, caplog):
    from dataclasses import replace

    from search_e1.errors import UserInputError

    torch.manual_seed(0)
    make_evolver(tmp_path, smol_tokenizer, rounds=1, cls=Evolver).fit()
    again = make_evolver(tmp_path, smol_tokenizer, rounds=1, cls=RecordingEvolver)
    assert again.fit()["round"] == 2 and len(again.snapshots) == 1  # finished: nothing ran
    assert "nothing to do" in caplog.text
    fresh = make_evolver(tmp_path, smol_tokenizer, rounds=1, cls=Evolver)
    fresh.config = replace(fresh.config, resume=False)
    with pytest.raises(UserInputError, match="already holds a run"):
        fresh.fit()


# ---------------------------------------------------------------- the warm-up phase
def warmup_config(tmp_path) -> WarmupConfig:
    return WarmupConfig(demonstrations=write_demonstrations(tmp_path / "demos.jsonl", 4, "t"), steps=2,
                        optim=OptimConfig(lr=5e-3),
                        batch_size=2, micro_batch_size=1)


def weights_of(path):
    from safetensors.torch import load_file

    return load_file(str(path / "model.safetensors"))


def same_weights(model, weights) -> bool:
    params = dict(model.named_parameters())
    return all(torch.equal(params[k].detach(), v) for k, v in weights.items() if k in params)


def ordered_steps(run_dir):
    """Every scalar tag's steps in the order they were written (wall time, across event files)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events: dict[str, list[tuple[float, int]]] = {}
    for path in (run_dir / "tensorboard").rglob("events.out.tfevents.*"):
        acc = EventAccumulator(str(path), size_guidance={"scalars": 0})
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            events.setdefault(tag, []).extend((e.wall_time, e.step) for e in acc.Scalars(tag))
    return {tag: [step for _, step in sorted(pairs)] for tag, pairs in events.items()}


def val_rounds(run_dir) -> list[str]:
    return [r["round"] for r in csv.DictReader((run_dir / "val_table.csv").open())]


def test_warmup_runs_once_before_round_one(tmp_path, smol_tokenizer):
    torch.manual_seed(0)
    evolver = make_evolver(tmp_path, smol_tokenizer, rounds=1, warmup=warmup_config(tmp_path))
    initial = {k: v.detach().clone() for k, v in evolver.policy.model.named_parameters()}
    state = evolver.fit()
    assert state == {"round": 2, "phase": 0, "step_offset": 6, "grpo_batches": 2, "checkpoint": "round_1",
                     "warmup": "done"}
    run = tmp_path / "run"
    warm = weights_of(run / "checkpoints" / "warmup")
    assert max((warm[k] - v).abs().max().item() for k, v in initial.items() if k in warm) > 1e-4
    assert same_weights(evolver.reference.model, warm)  # GRPO's reference: the policy entering round 1
    assert same_weights(evolver.policy.model, weights_of(run / "checkpoints" / "round_1"))
    assert val_rounds(run) == ["0", "warmup", "1"]
    tags = ordered_steps(run)
    assert {f"warmup/{t}" for t in ("loss", "tokens", "grad_norm", "lr")} <= set(tags)
    assert tags["warmup/loss"] == [0, 1] and tags["grpo/reward_mean"] == [2, 3] and tags["ofsd/distill_loss"] == [4, 5]
    assert tags["val/em"] == [0, 2, 6]  # round 0, after the warm-up, after round 1


def test_run_killed_during_warmup_reruns_it_from_the_initial_weights(tmp_path, smol_tokenizer, monkeypatch):
    step = WarmupModule.training_step

    def killed_after_one_step(self, batch, batch_idx):
        if batch_idx == 1:
            raise RuntimeError("killed")
        return step(self, batch, batch_idx)

    monkeypatch.setattr(WarmupModule, "training_step", killed_after_one_step)
    torch.manual_seed(0)
    with pytest.raises(RuntimeError, match="killed"):
        make_evolver(tmp_path, smol_tokenizer, rounds=1, cls=Evolver, warmup=warmup_config(tmp_path)).fit()
    run = tmp_path / "run"
    assert json.loads((run / "evolver_state.json").read_text()) == {
        "round": 1, "phase": 0, "step_offset": 0, "grpo_batches": 0, "warmup": "started"}
    assert not (run / "checkpoints" / "warmup").exists()
    monkeypatch.undo()

    torch.manual_seed(0)
    resumed = make_evolver(tmp_path, smol_tokenizer, rounds=1, warmup=warmup_config(tmp_path))
    initial = [p.detach().clone() for p in resumed.policy.parameters()]
    resumed._maybe_resume()  # nothing to load: the warm-up restarts from the initial weights
    assert all(torch.equal(a, b.detach()) for a, b in zip(initial, resumed.policy.parameters(), strict=True))
    state = resumed.fit()
    # the killed attempt may have logged steps 0-1: the rerun's warm-up takes 2-3, round 1 steps 4-7
    assert state == {"round": 2, "phase": 0, "step_offset": 8, "grpo_batches": 2, "checkpoint": "round_1",
                     "warmup": "done"}
    assert val_rounds(run) == ["0", "warmup", "1"]
    tags = ordered_steps(run)
    assert tags["warmup/loss"] == [0, 2, 3]  # the killed attempt's one step, then the rerun
    for tag, steps in tags.items():
        assert steps == sorted(set(steps)), (tag, steps)  # strictly increasing


def test_resume_after_the_warmup_uses_its_checkpoint_for_policy_and_reference(tmp_path, smol_tokenizer):
    class Crash(Evolver):
        def _run_grpo(self):
            raise RuntimeError("killed")

    torch.manual_seed(0)
    with pytest.raises(RuntimeError, match="killed"):
        make_evolver(tmp_path, smol_tokenizer, rounds=1, cls=Crash, warmup=warmup_config(tmp_path)).fit()
    run = tmp_path / "run"
    assert json.loads((run / "evolver_state.json").read_text()) == {
        "round": 1, "phase": 0, "step_offset": 2, "grpo_batches": 0, "warmup": "done", "checkpoint": "warmup"}
    warm = weights_of(run / "checkpoints" / "warmup")
    resumed = make_evolver(tmp_path, smol_tokenizer, rounds=1, warmup=warmup_config(tmp_path))
    assert not same_weights(resumed.policy.model, warm)  # a fresh policy holds the initial weights
    resumed._maybe_resume()
    assert same_weights(resumed.policy.model, warm) and same_weights(resumed.reference.model, warm)
    assert resumed.fit()["checkpoint"] == "round_1"
    assert val_rounds(run) == ["0", "warmup", "1"]
    assert ordered_steps(run)["warmup/loss"] == [0, 1]  # not run again

    later = make_evolver(tmp_path, smol_tokenizer, rounds=2, warmup=warmup_config(tmp_path))
    later._maybe_resume()  # resuming at round 2: the policy is round 1's, the reference still the warm-up's
    assert same_weights(later.policy.model, weights_of(run / "checkpoints" / "round_1"))
    assert same_weights(later.reference.model, warm) and not same_weights(later.policy.model, warm)


def test_empty_ofsd_round_says_why_and_raises_no_lightning_warning(tmp_path, smol_tokenizer, caplog):
    """No correct trajectory: OFSD logs the reason, takes no step, and Lightning does not warn
    about a zero-length DataLoader."""
    import logging
    import warnings

    import lightning as L

    from search_e1.rounds.ofsd import OFSDModule

    wrong = ("<answer> Bexley </answer>",)
    policy = make_tiny_policy(smol_tokenizer)
    env = SearchEnv(EchoRetriever(), RolloutConfig(max_turns=2, max_new_tokens=12, passages_per_search=1),
                    generator_factory=lambda p, c: ScriptedTurns(p, c, texts=wrong))
    module = OFSDModule(policy, env, [("Where is item a?", ["Talmor"])] * 2, steps=2,
                        config=OFSDConfig(group_size=3, num_questions=2, batch_size=2))
    before = [p.detach().clone() for p in policy.parameters()]
    trainer = L.Trainer(accelerator="cpu", devices=1, max_epochs=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)
    with warnings.catch_warnings(record=True) as caught, caplog.at_level(logging.INFO, logger="search_e1.rounds.ofsd"):
        warnings.simplefilter("always")
        trainer.fit(module)
    assert not [w for w in caught if "zero" in str(w.message).lower()]
    assert "nothing to distil this round (no question had a correct trajectory)" in caplog.text
    assert trainer.global_step == 0
    assert all(torch.equal(a, b) for a, b in zip(before, policy.parameters(), strict=True))


def test_ofsd_round_makes_at_most_max_epochs_passes(smol_tokenizer):
    """3 examples, 4 steps of 2: one pass (batches of 2 and 1), not 8 repeats of 3 examples;
    max_epochs 2 gives 6 examples in 3 batches."""
    from search_e1.rounds.ofsd import DistillExample, OFSDModule

    examples = [DistillExample([1, 2, 3], [4, 1, 2, 3], [1.0]) for _ in range(3)]
    for epochs, sizes in ((1.0, [2, 1]), (2.0, [2, 2, 2])):
        module = OFSDModule(make_tiny_policy(smol_tokenizer), None, [], steps=4,
                            config=OFSDConfig(batch_size=2, micro_batch_size=1, max_epochs=epochs))
        module.examples = examples
        assert [module.batch(int(k))["response_mask"].shape[0] for k in module.train_dataloader()] == sizes


def test_finished_phases_leave_no_trainer_module_or_optimiser_alive(tmp_path, smol_tokenizer):
    """The Trainer, LightningModule and AdamW moments (2x the weights) of each phase (warm-up, GRPO,
    OFSD) are freed when it ends: nothing the Evolver or its data module keeps refers to them."""
    import gc

    import lightning as L

    evolver = make_evolver(tmp_path, smol_tokenizer, rounds=1, cls=Evolver, warmup=warmup_config(tmp_path))
    evolver.fit()
    gc.collect()
    alive = [type(o).__name__ for o in gc.get_objects()
             if isinstance(o, torch.optim.Optimizer | L.LightningModule | L.Trainer)]
    assert alive == []


def test_a_full_disk_during_a_checkpoint_is_named_and_leaves_no_tmp(tmp_path, smol_tokenizer, monkeypatch):
    """save_pretrained fails half-way (ENOSPC): one error naming the checkpoint, its .tmp removed,
    and the state still names the last finished phase, so the same command resumes later."""
    import errno

    from search_e1.errors import UserInputError

    torch.manual_seed(0)
    evolver = make_evolver(tmp_path, smol_tokenizer, rounds=1, cls=Evolver, warmup=warmup_config(tmp_path))

    def full_disk(directory, **kwargs):
        Path(directory).mkdir(parents=True, exist_ok=True)
        (Path(directory) / "model.safetensors").write_bytes(b"half")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(evolver.policy.model, "save_pretrained", full_disk)
    run = tmp_path / "run"
    with pytest.raises(UserInputError, match=f"cannot write {run / 'checkpoints' / 'warmup'} "
                                             r"\(No space left on device\); the run keeps"):
        evolver.fit()
    assert not list(run.rglob("*.tmp"))
    assert json.loads((run / "evolver_state.json").read_text())["warmup"] == "started"


class CountingRetriever(EchoRetriever):
    """`EchoRetriever` that counts the queries it answered (behind the HTTP service)."""

    def __init__(self) -> None:
        self.queries = 0

    def search(self, queries, topk):
        self.queries += len(queries)
        return super().search(queries, topk)


def test_a_run_with_an_http_retriever_trains_against_search_e1_serve(tmp_path, smol_tokenizer):
    """``data.retriever.kind: http``: the data module builds a client of a running ``search-e1 serve``
    and a whole round (GRPO, OFSD, evaluations) searches through it."""
    from search_e1.retrieval.dense import RetrieverConfig
    from search_e1.retrieval.service import ServeConfig, serve_in_thread

    backend = CountingRetriever()
    with serve_in_thread(backend, ServeConfig(port=0)) as running:
        dm = RetrievalDataModule(train_files=write_qa(tmp_path / "train.jsonl", 6, "t"),
                                 val_files=write_qa(tmp_path / "val.jsonl", 3, "v"), batch_size=2,
                                 retriever=RetrieverConfig(kind="http", http={"url": running.url, "timeout_s": 10.0}))
        torch.manual_seed(0)
        evolver = RecordingEvolver(
            make_tiny_policy(smol_tokenizer), dm,
            env=SearchEnv(config=RolloutConfig(max_turns=2, max_new_tokens=12, passages_per_search=1),
                          generator_factory=scripted_factory),
            grpo=GRPOConfig(group_size=4, optim=OptimConfig(lr=5e-3), micro_batch_size=4, kl_coef=0.0),
            ofsd=OFSDConfig(group_size=4, num_questions=3, optim=OptimConfig(lr=5e-3), batch_size=2,
                            micro_batch_size=1, kl_eval_examples=2),
            config=EvolverConfig(run_dir=str(tmp_path / "run"), rounds=1, grpo_steps=2, ofsd_steps=2,
                                 eval_batch_size=4),
            trainer={"accelerator": "cpu", "devices": 1, "enable_progress_bar": False, "enable_model_summary": False},
        )
        state = evolver.fit()
    assert type(evolver.env.retriever).__name__ == "HTTPRetriever"
    assert state["round"] == 2 and state["checkpoint"] == "round_1"
    initial, after_grpo, after_ofsd = evolver.snapshots
    assert max((x - y).abs().max().item() for x, y in zip(initial, after_grpo, strict=True)) > 1e-4
    assert max((x - y).abs().max().item() for x, y in zip(after_grpo, after_ofsd, strict=True)) > 1e-4
    rows = list(csv.DictReader((tmp_path / "run" / "val_table.csv").open()))
    assert [r["round"] for r in rows] == ["0", "1"]
    assert backend.queries > 0  # every search went over HTTP to the service's retriever

"""bin/bench_learning.py's accounting: equal budgets per arm and the figures of an evaluation."""

from __future__ import annotations

import pytest
from conftest import load_script


@pytest.fixture(scope="module")
def bench():
    return load_script("bench_learning")


def flag(flags, name):
    return flags[flags.index(name) + 1]


def test_every_arm_gets_the_same_steps_and_trajectories(bench):
    # S = 4 GRPO steps, B = 4 questions, G = 4 samples, k = 20 OFSD questions / 4 = 5 OFSD steps
    steps, k, batch, group = 4, 5, 4, 4
    grpo = bench.arm_flags("grpo", steps, k, batch, group)
    assert flag(grpo, "--evolver.grpo_steps") == "9" and flag(grpo, "--evolver.ofsd_steps") == "0"
    for arm in ("search-e1", "placebo", "rft"):
        f = bench.arm_flags(arm, steps, k, batch, group)
        # 4 GRPO steps x 4 x 4 + 20 OFSD questions x 4 = 9 x 16 trajectories; 4 + 5 optimiser steps
        assert (flag(f, "--evolver.grpo_steps"), flag(f, "--evolver.ofsd_steps")) == ("4", "5")
        assert (flag(f, "--ofsd.num_questions"), flag(f, "--ofsd.group_size")) == ("20", "4")
        assert int(flag(f, "--ofsd.max_epochs")) >= 100  # k steps even from a few examples
    assert flag(bench.arm_flags("placebo", steps, k, batch, group), "--ofsd.privileged") == "placebo"
    assert flag(bench.arm_flags("rft", steps, k, batch, group), "--ofsd.objective") == "rft"
    dapo = bench.arm_flags("dapo", steps, k, batch, group)
    # half the questions per rollout and at most one refill of as many: never more than 4 x 4 per step
    assert flag(dapo, "--data.batch_size") == "2" and flag(dapo, "--grpo.dynamic_sampling_max_rollouts") == "1"
    assert flag(dapo, "--evolver.grpo_steps") == "9"
    for arm in ("grpo", "search-e1", "placebo", "rft"):  # whatever the config's default, one rollout per step
        assert flag(bench.arm_flags(arm, steps, k, batch, group), "--grpo.dynamic_sampling") == "false"


def test_figures_of_an_evaluation_by_hand(bench):
    rec = lambda em, hops, s, t: {"em": em, "hops": hops, "searches": s, "tokens": t}  # noqa: E731
    now = {"a": rec(1.0, 1, 1, 20), "b": rec(1.0, 2, 2, 30), "c": rec(0.0, 1, 1, 10), "d": rec(0.0, 2, 0, 40)}
    before = {"a": rec(0.0, 1, 1, 20), "b": rec(1.0, 2, 2, 30), "c": rec(1.0, 1, 1, 10), "d": rec(0.0, 2, 0, 40)}
    f = bench.figures(now, before)
    # EM 2/4; 1-hop a, c: 1/2; 2-hop b, d: 1/2; searches per correct answer (1 + 2) / 2; tokens 100 / 4
    assert (f["n"], f["em"], f["em_1hop"], f["em_2hop"]) == (4, 0.5, 0.5, 0.5)
    assert f["searches_per_correct"] == 1.5 and f["tokens_per_answer"] == 25.0 and f["searches"] == 1.0
    # paired differences [1, 0, -1, 0]: mean 0, sd sqrt(2/3), half-width t(3) * sd / 2 = 1.299
    assert f["gain"] == 0.0 and f["gain_hi"] == pytest.approx(3.182 * (2 / 3) ** 0.5 / 2, abs=1e-6)


def test_paired_difference_to_grpo_is_per_seed(bench):
    res = lambda em: {"train": {"em": em, "n": 300, "gain": 0.0, "gain_lo": 0.0, "gain_hi": 0.0}}  # noqa: E731
    runs = [{"arm": a, "seed": s, "wall_s": 1.0, "trajectories": 10, "optimizer_steps": 2, "result": res(em)}
            for a, s, em in (("grpo", 0, 0.30), ("grpo", 1, 0.40), ("search-e1", 0, 0.35), ("search-e1", 1, 0.50),
                             ("placebo", 0, 0.25), ("placebo", 1, 0.30))]
    summary = bench.summarise_arms(runs, ["train"])
    d = summary["search-e1"]["train/em_minus_grpo"]  # differences 0.05 and 0.10: mean 0.075
    assert d["mean"] == pytest.approx(0.075) and d["n"] == 2 and "train/em_minus_grpo" not in summary["grpo"]
    d = summary["placebo"]["train/em_minus_search-e1"]  # the control against the method: -0.10 and -0.20
    assert d["mean"] == pytest.approx(-0.15) and "train/em_minus_search-e1" not in summary["search-e1"]
    assert summary["grpo"]["train/em"]["mean"] == pytest.approx(0.35)


def _write_scalars(directory, scalars):
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(directory))
    for tag, values in scalars.items():
        for step, value in values.items():
            writer.add_scalar(tag, value, step)
    writer.close()


def test_budget_is_counted_from_what_a_run_logged(bench, tmp_path):
    """Per GRPO step the logged samples and optimiser steps (refills included); per OFSD round its
    summary.json; a run logged before those tags: its logged steps x its own config's rollout size."""
    import json

    new = tmp_path / "new"
    _write_scalars(new / "tensorboard" / "version_0", {"grpo/sampled": {1: 16.0, 2: 32.0},  # step 2 refilled once
                                                         "grpo/optimizer_steps": {1: 1.0, 2: 1.0},
                                                         "grpo/grad_norm": {1: 0.5, 2: 0.5}})
    (new / "ofsd" / "round_1").mkdir(parents=True)
    (new / "ofsd" / "round_1" / "summary.json").write_text(json.dumps({"trajectories": 80, "steps": 5}))
    assert bench.logged_budget(new) == {"trajectories": 16 + 32 + 80, "optimizer_steps": 2 + 5}

    old = tmp_path / "old"
    (old / "config.yaml").parent.mkdir(parents=True)
    (old / "config.yaml").write_text("data:\n  batch_size: 2\ngrpo:\n  group_size: 4\n")
    _write_scalars(old / "tensorboard" / "version_0", {"grpo/grad_norm": {1: 0.1, 2: 0.2, 3: 0.3},
                                                         "grpo/dynamic_rollouts": {1: 0.0, 2: 1.0, 3: 0.0}})
    _write_scalars(old / "tensorboard" / "version_1", {"grpo/grad_norm": {3: 0.3}})  # step 3 again after a resume
    assert bench.logged_budget(old) == {"trajectories": 8 + 16 + 8, "optimizer_steps": 3}

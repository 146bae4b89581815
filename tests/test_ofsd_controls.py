"""The OFSD controls of the ablation: the placebo sibling (another question's correct trajectory),
RFT (NLL on the chosen sibling instead of the KL), how rows got their sibling, and the round summary
with the teacher-student KL split over query tokens and the rest."""

from __future__ import annotations

import json

import lightning as L
import pytest
import torch
from conftest import make_tiny_policy
from scripted import EchoRetriever, ScriptedTurns

from search_e1.algos import placebo_siblings, select_siblings
from search_e1.rollout import RolloutConfig, SearchEnv
from search_e1.rounds.base import OptimConfig
from search_e1.rounds.ofsd import (
    OFSDConfig,
    OFSDModule,
    collate_examples,
    rft_examples,
    sibling_cases,
)


def test_placebo_shows_a_correct_trajectory_of_another_question_drawn_from_the_real_siblings():
    # questions 0, 1, 2 with 3 rows each; correct rows: 0 and 1 (q0), 4 (q1), 6 and 7 (q2)
    groups = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 2])
    correct = torch.tensor([1, 1, 0, 0, 1, 0, 1, 1, 0])
    searches = torch.tensor([1, 2, 1, 1, 1, 2, 1, 1, 1])
    tokens = torch.tensor([20, 20, 20, 20, 20, 20, 20, 25, 20])
    real = select_siblings(groups, correct, searches, tokens)
    assert real.tolist() == [-1, 0, -1, -1, -1, 4, -1, 6, -1]  # strictly cheaper correct ones only
    for seed in range(20):
        fake = placebo_siblings(groups, real, correct, torch.Generator().manual_seed(seed))
        assert ((fake >= 0) == (real >= 0)).all()  # the same rows are distilled
        for i in torch.nonzero(real >= 0).flatten().tolist():
            j = int(fake[i])
            assert groups[j] != groups[i] and correct[j]  # a correct trajectory of ANOTHER question
            assert j in {int(k) for k, g in zip(real.tolist(), groups.tolist(), strict=True)
                         if k >= 0 and groups[k] != groups[i]}  # drawn from the other rows' real siblings


def test_placebo_falls_back_to_any_correct_row_and_gives_none_when_no_other_question_was_solved():
    groups, correct = torch.tensor([0, 0, 1, 1]), torch.tensor([1, 0, 1, 1])
    real = torch.tensor([-1, 0, -1, -1])  # only question 0's row 1 has a sibling
    assert placebo_siblings(groups, real, correct).tolist()[1] in (2, 3)  # no other sibling: any correct row of q1
    alone = placebo_siblings(torch.tensor([0, 0]), torch.tensor([-1, 0]), torch.tensor([1, 0]))
    assert alone.tolist() == [-1, -1]


def test_sibling_cases_and_rft_examples(smol_tokenizer):
    from search_e1.rollout import rollout

    policy = make_tiny_policy(smol_tokenizer)
    cfg = RolloutConfig(max_turns=2, max_new_tokens=12, passages_per_search=1)
    gen = ScriptedTurns(policy, cfg, texts=("<answer> Talmor </answer>", "<answer> Bexley </answer>"), seed=1)
    traj = rollout(policy, EchoRetriever(), ["Where is a?"], [["Talmor"]], cfg, generator=gen, group_size=4).trim()
    correct = (traj.rewards >= 1).tolist()
    assert 0 < sum(correct) < 4
    j = correct.index(True)
    siblings = torch.tensor([j if (not c) else -1 for c in correct])  # the wrong rows learn from row j
    assert sibling_cases(traj.rewards >= 1, siblings) == {"cheaper": 0, "wrong_row": 4 - sum(correct)}
    examples = rft_examples(traj, siblings)
    assert len(examples) == 4 - sum(correct)
    start, end = int(traj.prompt_lengths[j]), int(traj.attention_mask[j].sum())
    for e in examples:  # the sibling's own prompt and response, its sampled tokens as the loss mask
        assert e.student_ids == traj.input_ids[j, :end].tolist() and e.teacher_ids == []
        assert e.response_mask == traj.loss_mask[j, start:end].tolist()
    batch = collate_examples(examples, smol_tokenizer.pad_token_id)
    assert batch["teacher_ids"].shape == (len(examples), 1) and batch["query_mask"].sum() == 0

    # RFT's per-token loss is the policy's NLL of the sibling's sampled tokens: an unpadded full
    # forward of the sibling row gives the same values
    module = OFSDModule(policy, None, [], steps=1, config=OFSDConfig(objective="rft"))
    nll, mask = module._per_token_nll(batch)  # [B, R]
    with torch.no_grad():
        logits = policy.model(traj.input_ids[j : j + 1, :end]).logits.float()  # [1, L, V]
    ref = -torch.log_softmax(logits[0, start - 1 : end - 1], -1).gather(-1, traj.input_ids[j, start:end, None])[:, 0]
    r = end - start
    for b in range(len(examples)):
        torch.testing.assert_close(nll[b, -r:].detach(), ref * mask[b, -r:], atol=2e-4, rtol=1e-4)
    assert (nll.detach() * (1 - mask)).abs().max() == 0  # nothing outside the sampled tokens


def run_round(tmp_path, smol_tokenizer, **cfg):
    policy = make_tiny_policy(smol_tokenizer)
    texts = ("<answer> Talmor </answer>", "<answer> Bexley </answer>", "<search> where </search>")
    env = SearchEnv(EchoRetriever(), RolloutConfig(max_turns=2, max_new_tokens=12, passages_per_search=1),
                    generator_factory=lambda p, c: ScriptedTurns(p, c, texts=texts, seed=5))
    questions = [(f"Where is item {k}?", ["Talmor"]) for k in "abc"]
    module = OFSDModule(policy, env, questions, steps=2, out_dir=tmp_path,
                        config=OFSDConfig(group_size=4, num_questions=3, batch_size=2, micro_batch_size=1,
                                          optim=OptimConfig(lr=5e-3), sibling_selector="correct_then_cheaper",
                                          kl_eval_examples=4, **cfg))
    before = [p.detach().clone() for p in policy.parameters()]
    L.Trainer(accelerator="cpu", devices=1, max_epochs=1, logger=False, enable_checkpointing=False,
              enable_progress_bar=False, enable_model_summary=False).fit(module)
    moved = max((a - b).abs().max().item() for a, b in zip(before, policy.parameters(), strict=True))
    return module, json.loads((tmp_path / "summary.json").read_text()), moved


@pytest.mark.parametrize("variant", [{}, {"privileged": "placebo"}, {"objective": "rft"}],
                         ids=["sibling", "placebo", "rft"])
def test_every_variant_trains_the_same_rows_and_writes_its_summary(tmp_path, smol_tokenizer, variant):
    torch.manual_seed(0)
    module, summary, moved = run_round(tmp_path, smol_tokenizer, **variant)
    records = [json.loads(line) for line in (tmp_path / "trajectories.jsonl").open()]
    rows = [r for r in records if r["sibling"] >= 0]
    assert rows and summary["examples"] == len(module.examples) == len(rows)
    assert summary["cheaper"] + summary["wrong_row"] == len(rows) and summary["trajectories"] == 12
    assert moved > 1e-5 and summary["steps"] == 2
    for part in ("", "_queries", "_rest"):  # measured on the teacher pairs in every variant
        assert summary[f"kl_before{part}"] >= 0 and summary[f"kl_after{part}"] >= 0
    # the KL over all distilled tokens is the token-weighted mean of its two parts
    assert min(summary["kl_before_queries"], summary["kl_before_rest"]) - 1e-6 <= summary["kl_before"] \
        <= max(summary["kl_before_queries"], summary["kl_before_rest"]) + 1e-6
    if variant.get("privileged") == "placebo":
        for r in rows:  # what the teacher saw: a correct trajectory of another question
            shown = records[r["shown"]]
            assert shown["question"] != r["question"] and shown["reward"] == 1.0
    else:
        assert "shown" not in records[0]


def test_control_settings_are_checked():
    with pytest.raises(ValueError, match="privileged"):
        OFSDConfig(privileged="random")
    with pytest.raises(ValueError, match="objective"):
        OFSDConfig(objective="sft")

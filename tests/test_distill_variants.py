"""The self-distillation variants: reverse KL and JSD (hand values, autograd references), what the
teacher sees of the sibling, the query-token mask, and on-policy data refreshes in an OFSD round."""

from __future__ import annotations

import json
import math

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from conftest import make_tiny_policy
from scripted import EchoRetriever, ScriptedTurns

from search_e1.algos import get_distill_loss, jsd, make_teacher_targets, reverse_kl
from search_e1.rollout import RolloutConfig, SearchEnv, rollout
from search_e1.rounds.ofsd import (
    OFSDConfig,
    OFSDModule,
    build_examples,
    query_token_mask,
    render_sibling,
)

F64 = torch.float64


def test_reverse_kl_and_jsd_hand_values():
    # p_s = [0.5, 0.5], p_t = [0.8, 0.2]: reverse KL = 0.5 ln(0.5/0.8) + 0.5 ln(0.5/0.2) = 0.2231;
    # JSD(0.5), m = [0.65, 0.35]: 0.5 (0.8 ln(0.8/0.65) + 0.2 ln(0.2/0.35))
    #                           + 0.5 (0.5 ln(0.5/0.65) + 0.5 ln(0.5/0.35)) = 0.0507
    zs = torch.log(torch.tensor([[[0.5, 0.5]]], dtype=F64))
    zt = torch.log(torch.tensor([[[0.8, 0.2]]], dtype=F64))
    assert float(reverse_kl(zs, zt)) == pytest.approx(0.5 * math.log(0.5 / 0.8) + 0.5 * math.log(0.5 / 0.2), abs=1e-12)
    expected = 0.5 * (0.8 * math.log(0.8 / 0.65) + 0.2 * math.log(0.2 / 0.35)) + 0.5 * (
        0.5 * math.log(0.5 / 0.65) + 0.5 * math.log(0.5 / 0.35))
    assert float(jsd(zs, zt, beta=0.5)) == pytest.approx(expected, abs=1e-12)
    assert float(jsd(zs, zs, beta=0.3)) == pytest.approx(0.0, abs=1e-12)  # equal distributions
    with pytest.raises(ValueError, match="0 < beta < 1"):
        jsd(zs, zt, beta=1.0)


def _ref(zs, zt, mask, tau, kind, beta=0.5):
    ls, lt = F.log_softmax(zs / tau, -1), F.log_softmax(zt / tau, -1)
    if kind == "reverse_kl":
        out = (ls.exp() * (ls - lt)).sum(-1)
    else:
        m = beta * lt.exp() + (1 - beta) * ls.exp()
        out = beta * (lt.exp() * (lt - m.log())).sum(-1) + (1 - beta) * (ls.exp() * (ls - m.log())).sum(-1)
    return out * mask


@pytest.mark.parametrize("kind", ["reverse_kl", "jsd"])
def test_value_and_gradient_equal_plain_autograd(kind):
    gen = torch.Generator().manual_seed(0)
    zs = torch.randn(3, 5, 11, generator=gen, dtype=F64, requires_grad=True)
    zt = torch.randn(3, 5, 11, generator=gen, dtype=F64)
    mask = (torch.rand(3, 5, generator=gen) > 0.3).to(F64)
    fn = get_distill_loss(kind)
    kwargs = {"beta": 0.3} if kind == "jsd" else {}
    got = fn(zs, make_teacher_targets(zt, None, temperature=1.3), mask, **kwargs)
    ref = _ref(zs, zt, mask, 1.3, kind, beta=0.3)
    torch.testing.assert_close(got, ref)
    (g_got,) = torch.autograd.grad(got.sum(), zs)
    (g_ref,) = torch.autograd.grad(ref.sum(), zs)
    torch.testing.assert_close(g_got, g_ref)
    with pytest.raises(TypeError, match="full distribution"):
        fn(zs, make_teacher_targets(zt, 3), mask)


@pytest.fixture(scope="module")
def sibling_traj(smol_tokenizer):
    """One question, two samples: row 0 searches then answers (two turns), row 1 answers at once."""
    policy = make_tiny_policy(smol_tokenizer)
    cfg = RolloutConfig(max_turns=3, max_new_tokens=16, passages_per_search=1)

    class Plan:
        def __init__(self):
            self.calls = 0
            self.right = ScriptedTurns(policy, cfg, texts=("<answer> Talmor </answer>",))
            self.search = ScriptedTurns(policy, cfg, texts=("<think>hm</think><search> where is a </search>",))

        def __call__(self, contexts, budgets):
            self.calls += 1
            if self.calls == 1:  # first turn: row 0 searches, row 1 answers
                return self.search(contexts[:1], budgets[:1]) + self.right(contexts[1:], budgets[1:])
            return self.right(contexts, budgets)

    traj = rollout(policy, EchoRetriever(), ["Where is a?"], [["Talmor"]], cfg, generator=Plan(), group_size=2)
    return policy, traj.trim()


def test_teacher_views_of_the_sibling(sibling_traj, smol_tokenizer):
    _, traj = sibling_traj
    elided = render_sibling(traj, 0, smol_tokenizer, "elided")
    documents = render_sibling(traj, 0, smol_tokenizer, "documents")
    assert "<search> where is a </search>" in elided and "[retrieved documents elided]" in elided
    assert "is near Talmor" in documents and "elided" not in documents
    assert render_sibling(traj, 0, smol_tokenizer, "queries") == "<search> where is a </search>"
    assert render_sibling(traj, 0, smol_tokenizer, "answer") == "<answer> Talmor </answer>"
    assert render_sibling(traj, 1, smol_tokenizer, "queries") == ""  # it never searched


def test_a_registered_teacher_view_is_what_the_teacher_sees(sibling_traj, smol_tokenizer):
    """Another project adds a view by name (`SIBLING_VIEWS`); build_examples puts it in the teacher prompt."""
    from search_e1.rounds.ofsd_data import SIBLING_VIEWS, build_examples

    _, traj = sibling_traj
    SIBLING_VIEWS.register("shout")(lambda t, i, tok: f"THE ANSWER IS {t.answers[i].upper()}")
    try:
        examples = build_examples(traj, torch.tensor([1, -1]), smol_tokenizer, SearchEnv().prompt, "shout")
        assert OFSDConfig(teacher_view="shout").teacher_view == "shout"  # the config accepts a registered view
    finally:
        del SIBLING_VIEWS["shout"]
    assert len(examples) == 1
    assert "THE ANSWER IS TALMOR" in smol_tokenizer.decode(examples[0].teacher_ids)
    with pytest.raises(ValueError, match="unknown teacher view 'shout'"):
        render_sibling(traj, 0, smol_tokenizer, "shout")
    with pytest.raises(ValueError, match="OFSDConfig.teacher_view: expected one of"):
        OFSDConfig(teacher_view="shout")


def test_query_token_mask_covers_exactly_the_query(smol_tokenizer):
    ids = smol_tokenizer("<think>hm</think><search> where is a </search>", add_special_tokens=False)["input_ids"]
    mask = query_token_mask(ids, smol_tokenizer)
    picked = smol_tokenizer.decode([t for t, m in zip(ids, mask, strict=True) if m])
    assert picked.strip() == "where is a" and "<search>" not in picked
    assert query_token_mask(smol_tokenizer("<answer> a </answer>")["input_ids"], smol_tokenizer) == [0.0] * len(
        smol_tokenizer("<answer> a </answer>")["input_ids"])


def test_distilling_only_query_tokens(sibling_traj, smol_tokenizer):
    _, traj = sibling_traj
    siblings = torch.tensor([1, 0])  # each row learns from the other (the test picks them)
    every = build_examples(traj, siblings, smol_tokenizer, SearchEnv().prompt)
    queries = build_examples(traj, siblings, smol_tokenizer, SearchEnv().prompt, tokens="queries")
    assert len(every) == 2 and len(queries) == 1  # row 1 searched nothing: dropped
    q = queries[0]
    response = q.student_ids[-len(q.response_mask):]
    picked = smol_tokenizer.decode([t for t, m in zip(response, q.response_mask, strict=True) if m])
    assert picked.strip() == "where is a"
    assert 0 < sum(q.response_mask) < sum(every[0].response_mask)


def test_on_policy_refresh_rebuilds_the_data_every_n_steps(tmp_path, smol_tokenizer):
    policy = make_tiny_policy(smol_tokenizer)
    env = SearchEnv(EchoRetriever(), RolloutConfig(max_turns=2, max_new_tokens=12, passages_per_search=1),
                    generator_factory=lambda p, c: ScriptedTurns(p, c, seed=3))
    asked = []

    def source(k, seed):
        asked.append((k, seed))
        return [(f"Where is item r{seed}-{i}?", ["Talmor"]) for i in range(k)]

    module = OFSDModule(policy, env, [("Where is item a?", ["Talmor"])] * 2, steps=4,
                        config=OFSDConfig(group_size=4, num_questions=2, batch_size=2, micro_batch_size=1,
                                          refresh_every=2, kl_eval_examples=2),
                        out_dir=tmp_path, question_source=source)
    trainer = L.Trainer(accelerator="cpu", devices=1, max_epochs=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(module)
    assert [k for k, _ in asked] == [2]  # one refresh (at step 2), of num_questions fresh questions
    files = sorted(p.name for p in tmp_path.glob("trajectories*.jsonl"))
    assert files == ["trajectories.jsonl", "trajectories_step2.jsonl"]
    refreshed = [json.loads(line) for line in (tmp_path / "trajectories_step2.jsonl").open()]
    assert len(refreshed) == 2 * 4 and all(r["question"].startswith("Where is item r") for r in refreshed)
    assert trainer.global_step + module.empty_steps == 4

"""The GRPO family inside `GRPOModule`: DAPO's dynamic sampling (refill, and the bounded stop when
every group stays uniform), overlong filtering, Dr.GRPO's constant, LLDS in the update."""

from __future__ import annotations

import logging

import pytest
import torch
from conftest import make_tiny_policy
from scripted import EchoRetriever, ScriptedTurns

from search_e1.rollout import RolloutConfig, SearchEnv
from search_e1.rounds.base import OptimConfig
from search_e1.rounds.grpo import GRPOConfig, GRPOModule, overlong_filtered

RIGHT, WRONG = "<answer> Talmor </answer>", "<answer> Bexley </answer>"


class ByQuestion:
    """Rows of questions that contain ``fresh`` answer right on even rows and wrong on odd ones (so
    each group of 4 is mixed); every other row answers wrong (its group is uniform)."""

    def __init__(self, policy, cfg):
        self.tok = policy.tokenizer
        self.right = ScriptedTurns(policy, cfg, texts=(RIGHT,))
        self.wrong = ScriptedTurns(policy, cfg, texts=(WRONG,))

    def __call__(self, contexts, budgets):
        good = [i % 2 == 0 and "fresh" in self.tok.decode(c) for i, c in enumerate(contexts)]
        out = [None] * len(contexts)
        for gen, want in ((self.right, True), (self.wrong, False)):
            idx = [i for i, g in enumerate(good) if g is want]
            if idx:
                for i, o in zip(idx, gen([contexts[i] for i in idx], [budgets[i] for i in idx]), strict=True):
                    out[i] = o
        return out


def module(smol_tokenizer, source, **config):
    env = SearchEnv(EchoRetriever(), RolloutConfig(max_turns=2, max_new_tokens=12, passages_per_search=1),
                    generator_factory=ByQuestion)
    cfg = GRPOConfig(group_size=4, kl_coef=0.0, optim=OptimConfig(lr=1e-3), **config)
    return GRPOModule(make_tiny_policy(smol_tokenizer), env, cfg, question_source=source)


def fresh(k, seed):
    return [(f"Where is fresh item {seed}-{i}?", ["Talmor"]) for i in range(k)]


def stale(k, seed):
    return [(f"Where is item {seed}-{i}?", ["Talmor"]) for i in range(k)]


def test_dapo_refill_keeps_the_batch_size(smol_tokenizer):
    m = module(smol_tokenizer, fresh, dynamic_sampling=True)
    traj = m.rollout_questions(["Where is item a?", "Where is item b?"], [["Talmor"]] * 2, 4)
    assert traj.rewards.sum() == 0  # the batch's own groups are uniform
    out, stats = m._dynamic_sampling(traj, 2)
    assert len(out) == 2 * 4 and len(torch.unique(out.group_ids)) == 2
    assert stats == {"dynamic_groups": 2.0, "dynamic_rollouts": 1.0}
    assert all("fresh" in q for q in out.questions) and out.rewards.sum() == 4  # 2 right per group
    assert m.dynamic_sampling_short == 0


def test_dapo_stops_after_its_budget_when_every_group_stays_uniform(smol_tokenizer, caplog):
    m = module(smol_tokenizer, stale, dynamic_sampling=True, dynamic_sampling_max_rollouts=2)
    traj = m.rollout_questions(["Where is item a?", "Where is item b?"], [["Talmor"]] * 2, 4)
    with caplog.at_level(logging.DEBUG, logger="search_e1.rounds.grpo"):
        out, stats = m._dynamic_sampling(traj, 2)
    assert out is traj and stats == {"dynamic_groups": 0.0, "dynamic_rollouts": 2.0}
    assert "0 of 2 groups with mixed rewards after 2 extra rollout(s)" in caplog.text
    assert "(1 short step(s) so far)" in caplog.text
    # without a question source there is nothing to refill from: no rollout at all
    m = module(smol_tokenizer, None, dynamic_sampling=True)
    assert m._dynamic_sampling(traj, 2)[1]["dynamic_rollouts"] == 0.0


def test_overlong_filter_masks_only_cut_trajectories(smol_tokenizer):
    m = module(smol_tokenizer, None)
    traj = m.rollout_questions(["Where is fresh a?"], [["Talmor"]], 4)
    traj.finish_reasons[1] = "max_total_tokens"
    out, frac = overlong_filtered(traj)
    assert frac == 0.25 and out.loss_mask[1].sum() == 0 and (out.logprobs[1] == 0).all()
    assert torch.equal(out.loss_mask[[0, 2, 3]], traj.loss_mask[[0, 2, 3]])


def test_dr_grpo_constant_defaults_to_the_sampling_budget(smol_tokenizer):
    assert module(smol_tokenizer, None, loss_agg="seq-mean-token-sum-norm").norm_tokens == 2 * 12
    assert module(smol_tokenizer, None, loss_norm_tokens=500).norm_tokens == 500


class Captured(GRPOModule):
    log_step = 0

    def manual_backward(self, loss, *args, **kwargs):
        loss.backward()

    def optimizer_step_clipped(self):
        self.grads = {n: p.grad.clone() for n, p in self.policy.model.named_parameters() if p.grad is not None}
        self.policy.model.zero_grad(set_to_none=True)
        return 0.0


@pytest.mark.parametrize("variant", [dict(policy_loss="gspo", clip_low=3e-4, clip_high=4e-4,
                                          loss_agg="seq-mean-token-mean"),
                                     dict(advantage="grpo_no_std", loss_agg="seq-mean-token-sum-norm"),
                                     dict(llds_coef=0.2)])
def test_every_variant_updates_with_the_gradient_of_its_registered_loss(smol_tokenizer, variant):
    env = SearchEnv(EchoRetriever(), RolloutConfig(max_turns=2, max_new_tokens=12, passages_per_search=1),
                    generator_factory=ByQuestion)
    config = GRPOConfig(group_size=4, kl_coef=0.0, micro_batch_size=1, **variant)  # 4 micro-batches accumulate
    m = Captured(make_tiny_policy(smol_tokenizer), env, config)
    traj = m.rollout_questions(["Where is fresh a?"], [["Talmor"]], 4)
    adv = torch.tensor([1.0, -1.0, 1.0, -1.0])
    old = traj.logprobs - 0.05 * traj.loss_mask  # pi moved up since sampling: LLDS off, ratios != 1
    stats = m.update(traj, adv, old, None)
    # the module's micro-batched update gives the gradient of the registered loss over the whole batch
    from search_e1.algos import agg_loss, get_policy_loss, llds_penalty

    c, mask = m.config, traj.loss_mask
    lp, _ = m.policy.token_logprobs(traj.input_ids, traj.attention_mask, mask, temperature=m.sampling_temperature,
                                    start=int(traj.prompt_lengths.min()))
    loss_mat, _ = get_policy_loss(c.policy_loss)(lp, old, adv, mask, c.clip_low, c.clip_high)
    loss = agg_loss(loss_mat, mask, c.loss_agg, num_tokens=float(mask.sum()), num_seqs=len(traj),
                    norm_tokens=m.norm_tokens)
    if c.llds_coef:
        loss = loss + c.llds_coef * agg_loss(llds_penalty(lp, old, adv, mask, c.llds_gate), mask, "token-mean",
                                             num_tokens=float(mask.sum()))
    m.policy.model.zero_grad(set_to_none=True)
    loss.backward()
    for name, p in m.policy.model.named_parameters():
        if p.grad is not None:
            torch.testing.assert_close(m.grads[name], p.grad, rtol=1e-4, atol=1e-7)
    assert max(g.abs().max().item() for g in m.grads.values()) > 1e-4  # and there is one
    if "llds_coef" in variant:  # old above new on every token: LLDS acts on the A >= 0 rows
        stats = m.update(traj, adv, traj.logprobs + 0.05 * traj.loss_mask, None)
        assert stats["llds"] > 0


def test_gspo_without_recomputed_old_logprobs_warns(smol_tokenizer, caplog):
    with caplog.at_level(logging.WARNING):
        module(smol_tokenizer, None, policy_loss="gspo", recompute_old_logprobs=False)
    assert "set grpo.recompute_old_logprobs true" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        module(smol_tokenizer, None, policy_loss="gspo", recompute_old_logprobs=True)
    assert "recompute_old_logprobs" not in caplog.text


def test_step_stats_describe_what_the_policy_sampled_not_the_groups_kept(smol_tokenizer, monkeypatch):
    """With dynamic sampling the step trains on refilled mixed groups, but reward, searches and the
    share of mixed groups are those of the step's own questions: a policy that stops earning rewards
    shows as reward 0 and no mixed group, with ``dynamic_groups`` counting what was kept."""
    m = module(smol_tokenizer, fresh, dynamic_sampling=True, log_text_every=0)
    trained: list[int] = []
    monkeypatch.setattr(m, "update", lambda traj, *_: trained.append(len(traj)) or {"grad_norm": 0.0})
    monkeypatch.setattr(m, "log_dict", lambda *a, **k: None)
    monkeypatch.setattr(m, "log", lambda *a, **k: None)
    m._step_lr = 1e-3
    m.on_train_batch_start(None, 0)
    m.training_step({"question": ["Where is item a?", "Where is item b?"], "golden_answers": [["Talmor"]] * 2}, 0)
    s = m.step_stats
    assert s["reward_mean"] == [0.0] and s["mixed_group_frac"] == [0.0]  # the sampled batch: all wrong
    assert s["dynamic_groups"] == [2.0] and s["sampled"] == [16.0] and trained == [8]  # trained on the refill

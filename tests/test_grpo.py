"""GRPO's update on a real multi-turn batch of a tiny model: gradient accumulation over
micro-batches equals the full-batch step, and skipping rows with advantage 0 changes nothing."""

from __future__ import annotations

import pytest
import torch
from conftest import make_tiny_policy
from scripted import TEXTS, EchoRetriever, ScriptedTurns

from search_e1.algos import get_advantage_estimator
from search_e1.grpo import GRPOConfig, GRPOModule
from search_e1.rollout import RolloutConfig, rollout


class Captured(GRPOModule):
    """A GRPOModule without a Trainer: backward is plain autograd, and each optimiser step records
    the accumulated gradients instead of stepping."""

    log_step = 0

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.steps: list[dict[str, torch.Tensor]] = []

    def manual_backward(self, loss, *args, **kwargs):
        loss.backward()

    def optimizer_step_clipped(self, max_grad_norm):
        grads = {n: (p.grad.clone() if p.grad is not None else torch.zeros_like(p))
                 for n, p in self.policy.model.named_parameters()}
        self.steps.append(grads)
        self.policy.model.zero_grad(set_to_none=True)
        return 0.0


@pytest.fixture(scope="module")
def batch(smol_tokenizer):
    """Two questions x 4 scripted samples (2-turn rows of different lengths: some answer right away,
    some search first), rewards 1 for Talmor: mixed and uniform groups."""
    policy = make_tiny_policy(smol_tokenizer, seed=3)
    cfg = RolloutConfig(max_turns=2, max_new_tokens=12, topk=1, group_size=4)
    torch.manual_seed(0)
    traj = rollout(policy, EchoRetriever(), ["Where is a?", "Where is b?"], [["Talmor"], ["Talmor"]], cfg,
                   generator=ScriptedTurns(policy, cfg, texts=TEXTS, seed=5))
    return policy, traj.trim()


def step_grads(policy, traj, advantages, **config):
    config = {"group_size": 4, "kl_coef": 0.0, "lr": 1e-3, **config}
    module = Captured(policy, config=GRPOConfig(**config))
    module.update(traj, advantages, traj.logprobs, None)
    return module.steps


def max_diff(a, b):
    return max((a[k] - b[k]).abs().max().item() for k in a)


def test_batch_has_zero_and_nonzero_advantages(batch):
    _, traj = batch
    adv = get_advantage_estimator("grpo")(traj.rewards, traj.group_ids)
    assert (adv == 0).any() and (adv != 0).any(), traj.rewards


@pytest.mark.parametrize("agg", ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum"])
def test_accumulated_micro_batches_give_the_full_batch_gradient(batch, agg):
    policy, traj = batch
    adv = torch.linspace(-1.0, 1.0, len(traj))  # every row carries gradient
    full = step_grads(policy, traj, adv, micro_batch_size=len(traj), loss_agg=agg)
    accumulated = step_grads(policy, traj, adv, micro_batch_size=3, loss_agg=agg)
    assert len(full) == len(accumulated) == 1
    scale = max(g.abs().max().item() for g in full[0].values())
    assert scale > 0 and max_diff(full[0], accumulated[0]) <= 1e-5 * max(1.0, scale)


def test_mini_batches_step_once_each(batch):
    policy, traj = batch
    adv = torch.linspace(-1.0, 1.0, len(traj))
    steps = step_grads(policy, traj, adv, micro_batch_size=2, mini_batch_size=4, ppo_epochs=2)
    assert len(steps) == 2 * (len(traj) // 4)


def test_skipping_zero_advantage_rows_leaves_the_gradient_unchanged(batch):
    policy, traj = batch
    adv = get_advantage_estimator("grpo")(traj.rewards, traj.group_ids)
    kept = step_grads(policy, traj, adv, micro_batch_size=2, skip_zero_advantage=False)
    skipped = step_grads(policy, traj, adv, micro_batch_size=2, skip_zero_advantage=True)
    scale = max(g.abs().max().item() for g in kept[0].values())
    assert scale > 0 and max_diff(kept[0], skipped[0]) <= 1e-5 * max(1.0, scale)
    module = Captured(policy, config=GRPOConfig(group_size=4, kl_coef=0.0, micro_batch_size=2))
    rows = module._rows_to_train(torch.arange(len(traj)), adv, None)
    assert len(rows) == 2 * -(-int((adv != 0).sum()) // 2) < len(traj)  # whole micro-batches of the rest
    assert set((adv != 0).nonzero().flatten().tolist()) <= set(rows.tolist())


def test_nothing_is_skipped_when_an_entropy_or_kl_term_reads_every_row(batch):
    policy, traj = batch
    adv = get_advantage_estimator("grpo")(traj.rewards, traj.group_ids)
    rows = torch.arange(len(traj))
    entropy = Captured(policy, config=GRPOConfig(group_size=4, kl_coef=0.0, entropy_coef=0.01))
    assert torch.equal(entropy._rows_to_train(rows, adv, None), rows)
    assert torch.equal(entropy._rows_to_train(rows, adv, torch.zeros(1)), rows)

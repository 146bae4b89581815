"""The rounds' updates on a tiny model. GRPO on a real multi-turn batch: gradient accumulation over
micro-batches equals the full-batch step, and skipping rows with advantage 0 changes nothing. OFSD:
the batched teacher-student KL equals an unbatched per-example reference at every position."""

from __future__ import annotations

import pytest
import torch
from conftest import make_tiny_policy
from scripted import TEXTS, EchoRetriever, ScriptedTurns

from search_e1.algos import get_advantage_estimator
from search_e1.rollout import RolloutConfig, rollout
from search_e1.rounds.base import OptimConfig
from search_e1.rounds.grpo import GRPOConfig, GRPOModule


class Captured(GRPOModule):
    """A GRPOModule without a Trainer: backward is plain autograd, and each optimiser step records
    the accumulated gradients instead of stepping."""

    log_step = 0

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.steps: list[dict[str, torch.Tensor]] = []

    def manual_backward(self, loss, *args, **kwargs):
        loss.backward()

    def optimizer_step_clipped(self):
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
    cfg = RolloutConfig(max_turns=2, max_new_tokens=12, passages_per_search=1)
    torch.manual_seed(0)
    traj = rollout(policy, EchoRetriever(), ["Where is a?", "Where is b?"], [["Talmor"], ["Talmor"]], cfg,
                   generator=ScriptedTurns(policy, cfg, texts=TEXTS, seed=5), group_size=4)
    return policy, traj.trim()


def step_grads(policy, traj, advantages, **config):
    config = {"group_size": 4, "kl_coef": 0.0, "optim": OptimConfig(lr=1e-3), **config}
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


def test_a_batch_of_uniform_groups_runs_no_forward_and_still_steps(batch):
    """Every advantage 0: no micro-batch at all, and the optimiser still steps once (with zero
    gradients, as the unskipped update would)."""
    policy, traj = batch
    steps = step_grads(policy, traj, torch.zeros(len(traj)), micro_batch_size=2)
    assert len(steps) == 1 and all(float(g.abs().max()) == 0.0 for g in steps[0].values())


def test_nothing_is_skipped_when_an_entropy_or_kl_term_reads_every_row(batch):
    policy, traj = batch
    adv = get_advantage_estimator("grpo")(traj.rewards, traj.group_ids)
    rows = torch.arange(len(traj))
    entropy = Captured(policy, config=GRPOConfig(group_size=4, kl_coef=0.0, entropy_coef=0.01))
    assert torch.equal(entropy._rows_to_train(rows, adv, None), rows)
    assert torch.equal(entropy._rows_to_train(rows, adv, torch.zeros(1)), rows)


# ---------------------------------------------------------------- OFSD alignment
@pytest.mark.parametrize("chunked", [True, False])
def test_ofsd_batched_kl_at_each_response_position_equals_an_unbatched_reference(smol_tokenizer, chunked,
                                                                                   monkeypatch):
    """Three examples of different prompt and response lengths, left-padded into one batch: the
    teacher-student KL at every response position equals KL(teacher || student) computed one
    example at a time from plain forwards (teacher after its own prompt, student after its own)."""
    from search_e1.rounds.ofsd import DistillExample, OFSDConfig, OFSDModule, collate_examples

    policy = make_tiny_policy(smol_tokenizer, seed=7)
    gen = torch.Generator().manual_seed(0)
    examples = []
    for s_len, t_len, r_len in ((9, 14, 5), (4, 20, 8), (12, 6, 3)):
        response = torch.randint(100, 5000, (r_len,), generator=gen).tolist()
        mask = [1.0] * r_len
        mask[r_len // 2] = 0.0  # an environment token inside the response carries no loss
        examples.append(DistillExample(
            student_ids=torch.randint(100, 5000, (s_len,), generator=gen).tolist() + response,
            teacher_ids=torch.randint(100, 5000, (t_len,), generator=gen).tolist() + response,
            response_mask=mask))
    module = OFSDModule(policy, None, [], 1, OFSDConfig(group_size=2, temperature=0.8))
    if not chunked:  # the whole-response path (FSDP-sharded or soft-capped heads)
        monkeypatch.setattr(type(policy), "chunkable", property(lambda self: False))
    batch = collate_examples(examples, smol_tokenizer.pad_token_id)
    with torch.no_grad():
        kl, mask = module._per_token_kl(batch)  # [B, R]
    r = mask.shape[1]
    for b, e in enumerate(examples):
        n = len(e.response_mask)
        with torch.no_grad():
            t_logits = policy.model(torch.tensor([e.teacher_ids])).logits[0, -n - 1 : -1] / 0.8  # [n, V]
            s_logits = policy.model(torch.tensor([e.student_ids])).logits[0, -n - 1 : -1] / 0.8
        t_lp, s_lp = torch.log_softmax(t_logits.double(), -1), torch.log_softmax(s_logits.double(), -1)
        reference = (t_lp.exp() * (t_lp - s_lp)).sum(-1) * torch.tensor(e.response_mask, dtype=torch.float64)
        assert torch.equal(mask[b, r - n :], torch.tensor(e.response_mask))
        assert (mask[b, : r - n] == 0).all() and (kl[b, : r - n] == 0).all()
        assert (kl[b, r - n :].double() - reference).abs().max().item() <= 1e-5, (b, kl[b], reference)
        assert reference.max().item() > 1e-3  # teacher and student contexts differ: a real KL


def test_token_mean_backward_adds_micro_batches_up_to_the_batch_gradient():
    """Accumulating micro-batches of 1, 2 and 3 rows gives the whole batch's token-mean loss and
    gradient (each micro-batch divided by the batch's token count, not its own)."""
    from search_e1.rounds.base import token_mean_backward

    torch.manual_seed(0)
    x = torch.randn(5, 4, 3)  # [B, T, H]
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1], [0, 1, 0, 0], [1, 0, 1, 0], [1, 1, 1, 0]]).float()  # [B, T]
    w = torch.randn(3, requires_grad=True)
    full = ((x @ w) ** 2 * mask).sum() / mask.sum()  # the batch's token mean, by hand
    (expected,) = torch.autograd.grad(full, w)
    for size in (1, 2, 3, 5):
        w.grad = None
        loss = token_mean_backward(5, size, lambda rows: ((x[rows] @ w) ** 2, mask[rows]), torch.Tensor.backward,
                                   float(mask.sum()))
        assert loss == pytest.approx(float(full), rel=1e-6)
        torch.testing.assert_close(w.grad, expected, rtol=1e-5, atol=1e-6)


def test_question_seeds_differ_across_steps_attempts_and_streams():
    from search_e1.rounds.base import REFILL_STREAM, REFRESH_STREAM, question_seed

    seeds = {question_seed(step, attempt, stream) for step in range(50) for attempt in range(3)
             for stream in (REFILL_STREAM, REFRESH_STREAM)}
    assert len(seeds) == 50 * 3 * 2
    assert question_seed(0, 0, REFRESH_STREAM) == 7919 and question_seed(2, 1, REFILL_STREAM) == 3_000_010

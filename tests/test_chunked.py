"""The lean training forward: chunked log-probs / entropies / OFSD KL equal the whole-logits ones.

The references below materialise ``[B, T, V]`` logits with one forward and score them directly;
the fast paths project hidden states a few positions at a time under activation checkpointing.
Values and gradients must agree to 1e-5 (float32).
"""

from __future__ import annotations

import copy

import torch

from search_e1.algos import get_distill_loss, make_teacher_targets
from search_e1.rounds.ofsd import chunked_distill


def _batch(vocab: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, vocab, (3, 14), generator=g)  # [B, T]
    attn = torch.ones_like(ids)
    attn[1, :4] = 0  # a left-padded row
    loss_mask = torch.zeros(3, 14)
    loss_mask[:, 6:9] = 1.0
    loss_mask[:, 11:] = 1.0  # two sampled runs with an environment run between them
    return ids, attn, loss_mask


def _reference_logprobs(policy, ids, attn, loss_mask):
    logits = policy.forward(ids, attn)[:, :-1].float()  # [B, T-1, V]
    logp = torch.log_softmax(logits, -1)
    lp = logp.gather(-1, ids[:, 1:, None]).squeeze(-1)  # [B, T-1]
    ent = -(logp.exp() * logp).sum(-1)  # [B, T-1]
    zero = lp.new_zeros(lp.shape[0], 1)
    return torch.cat([zero, lp], 1) * loss_mask, torch.cat([zero, ent], 1) * loss_mask


def test_chunked_logprobs_entropy_and_grads_equal_unchunked(tiny_policy):
    policy = copy.deepcopy(tiny_policy)
    assert policy.chunkable
    ids, attn, loss_mask = _batch(len(policy.tokenizer))
    ref_lp, ref_ent = _reference_logprobs(policy, ids, attn, loss_mask)
    (ref_lp.sum() + 0.3 * ref_ent.sum()).backward()
    ref_grads = [p.grad.clone() for p in policy.parameters()]
    policy.zero_grad()
    lp, ent = policy.token_logprobs(ids, attn, loss_mask, with_entropy=True, start=5, chunk_size=4)  # 5 chunks
    (lp.sum() + 0.3 * ent.sum()).backward()
    assert (lp - ref_lp).abs().max().item() <= 1e-5
    assert (ent - ref_ent).abs().max().item() <= 1e-5
    assert (lp[loss_mask == 0] == 0).all() and (lp[loss_mask == 1] < 0).all()
    _assert_grads_close(policy, ref_grads)


def _assert_grads_close(policy, ref_grads) -> None:
    """Gradients agree up to float32 summation order: 1e-5 relative to the largest entry (the tied
    embedding sums every position's contribution, in another order when chunked)."""
    for p, g in zip(policy.parameters(), ref_grads, strict=True):
        assert (p.grad - g).abs().max().item() <= 1e-5 * max(1.0, g.abs().max().item())


def _distill_batch(vocab: int):
    g = torch.Generator().manual_seed(1)
    response = torch.randint(3, vocab, (2, 7), generator=g)  # [B, R]
    s_prompt = torch.randint(3, vocab, (2, 5), generator=g)
    t_prompt = torch.randint(3, vocab, (2, 9), generator=g)  # the privileged context is longer
    s_ids, t_ids = torch.cat([s_prompt, response], 1), torch.cat([t_prompt, response], 1)
    s_mask, t_mask = torch.ones_like(s_ids), torch.ones_like(t_ids)
    s_mask[0, :2] = 0
    t_mask[1, :3] = 0
    mask = torch.ones(2, 7)
    mask[:, 2:4] = 0  # an information block inside the response
    return {"student_ids": s_ids, "student_mask": s_mask, "teacher_ids": t_ids, "teacher_mask": t_mask,
            "response_mask": mask}


def test_chunked_distillation_equals_whole_response(tiny_policy):
    policy = copy.deepcopy(tiny_policy)
    batch = _distill_batch(len(policy.tokenizer))
    for loss, topk in (("forward_kl", 0), ("forward_kl_topk", 5)):
        policy.zero_grad()
        r = batch["response_mask"].shape[1]
        with torch.no_grad():
            teacher = policy(batch["teacher_ids"], batch["teacher_mask"], r + 1)[:, :-1]  # [B, R, V]
        student = policy(batch["student_ids"], batch["student_mask"], r + 1)[:, :-1]  # [B, R, V]
        targets = make_teacher_targets(teacher, topk=topk or None, temperature=1.5)
        ref = get_distill_loss(loss)(student, targets, batch["response_mask"])  # [B, R]
        ref.sum().backward()
        ref_grads = [p.grad.clone() for p in policy.parameters()]
        policy.zero_grad()
        fast = chunked_distill(policy, batch, loss, topk, 1.5, chunk_size=3)
        fast.sum().backward()
        assert (fast - ref).abs().max().item() <= 1e-5, loss
        assert (fast[:, 2:4] == 0).all() and (fast[:, :2] > 0).all()
        _assert_grads_close(policy, ref_grads)


def test_at_positions_scatters_each_output_and_handles_no_positions():
    """`at_positions` evaluates per chunk and scatters every output to its ``(b, t)``; with no
    position it returns zero grids of the asked number of outputs (a batch whose rows are all masked)."""
    from search_e1.policy import at_positions

    b, t = torch.tensor([0, 0, 1, 2, 2]), torch.tensor([1, 3, 0, 2, 4])  # [M = 5]
    values = torch.arange(5.0, requires_grad=True)  # [M]
    calls = []

    def fn(v):
        calls.append(v.numel())
        return v * 2, v + 1

    doubled, plus_one = at_positions(fn, (b, t), torch.Size([3, 5]), (values,), chunk_size=2, outputs=2)
    assert calls[:3] == [2, 2, 1]  # three chunks (checkpointing may call again in backward)
    assert doubled[b, t].tolist() == [0.0, 2.0, 4.0, 6.0, 8.0] and plus_one[b, t].tolist() == [1.0, 2.0, 3.0, 4.0, 5.0]
    assert doubled.sum().item() == 20.0 and plus_one.sum().item() == 15.0  # zeros everywhere else
    doubled.sum().backward()
    assert values.grad.tolist() == [2.0] * 5
    empty = torch.tensor([], dtype=torch.long)
    grids = at_positions(fn, (empty, empty), torch.Size([2, 3]), (values[:0],), chunk_size=2, outputs=2)
    assert len(grids) == 2 and all(g.shape == (2, 3) and not g.any() for g in grids)

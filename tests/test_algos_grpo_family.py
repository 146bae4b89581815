"""CPU tests of the GRPO-family variants: Dr.GRPO aggregation, GSPO, LLDS (hand values in the
comments, slow loop references for the vectorised functions, gradients)."""

from __future__ import annotations

import math

import pytest
import torch

from search_e1.algos import agg_loss, get_policy_loss
from search_e1.algos.llds import action_ids, llds_penalty
from search_e1.algos.policy_loss import gspo_policy_loss

F64 = torch.float64
MASK = torch.tensor([[1, 1, 0], [1, 1, 1]], dtype=torch.bool)


def test_dr_grpo_aggregation_hand_value_and_accumulation():
    # l = [[1, 2, 3], [4, 5, 6]] under MASK, C = 10: token sums 3 and 15 -> (0.3 + 1.5) / 2 = 0.9
    loss = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]], dtype=F64)
    assert agg_loss(loss, MASK, "seq-mean-token-sum-norm", norm_tokens=10) == pytest.approx(0.9, abs=1e-12)
    # micro-batches of one row, each with the mini-batch's sequence count, add up to the whole
    parts = [agg_loss(loss[i : i + 1], MASK[i : i + 1], "seq-mean-token-sum-norm", num_seqs=2, norm_tokens=10)
             for i in range(2)]
    assert float(sum(parts)) == pytest.approx(0.9, abs=1e-12)
    with pytest.raises(ValueError, match="norm_tokens > 0"):
        agg_loss(loss, MASK, "seq-mean-token-sum-norm")


def test_gspo_hand_values():
    # log-ratios [[0.1, -0.3, *], [0.2, 0.2, 0.2]]: s = [exp(-0.1), exp(0.2)] = [0.9048, 1.2214];
    # A = [1, -1], clip 0.2 / 0.2: row 1 inside the range -> -0.9048 on its two tokens; row 2:
    # max(-A s, -A clip(s)) = max(1.2214, 1.2) = 1.2214 (unclipped, gradient flows)
    old = torch.zeros(2, 3, dtype=F64)
    new = torch.tensor([[0.1, -0.3, 5.0], [0.2, 0.2, 0.2]], dtype=F64, requires_grad=True)
    loss_mat, stats = gspo_policy_loss(new, old, torch.tensor([1.0, -1.0], dtype=F64), MASK, 0.2, 0.2)
    s1, s2 = math.exp(-0.1), math.exp(0.2)
    torch.testing.assert_close(loss_mat.detach(), torch.tensor([[-s1, -s1, 0.0], [s2, s2, s2]], dtype=F64))
    assert float(stats["clip_frac"]) == 0.0 and float(stats["ratio_mean"]) == pytest.approx((s1 + s2) / 2)
    # seq-mean-token-mean gives GSPO's gradient: -A_i s_i / |y_i| on each sampled token
    agg_loss(loss_mat, MASK, "seq-mean-token-mean").backward()
    expected = torch.tensor([[-s1 / 2 / 2, -s1 / 2 / 2, 0.0], [s2 / 3 / 2] * 3], dtype=F64)
    torch.testing.assert_close(new.grad, expected)


def test_gspo_clips_whole_sequences():
    # A = 1 and s = exp(0.5) > 1 + 0.2: the clipped branch wins for the whole row, no gradient
    new = torch.tensor([[0.5, 0.5, 0.5]], dtype=F64, requires_grad=True)
    loss_mat, stats = gspo_policy_loss(new, torch.zeros(1, 3, dtype=F64), torch.ones(1, dtype=F64),
                                       torch.ones(1, 3, dtype=torch.bool), 0.2, 0.2)
    torch.testing.assert_close(loss_mat.detach(), torch.full((1, 3), -1.2, dtype=F64))
    loss_mat.sum().backward()
    assert float(stats["clip_frac"]) == 1.0 and new.grad.abs().max() == 0


def _gspo_loop(new, old, adv, mask, lo, hi):
    """Slow reference: one sequence at a time, the paper's formula."""
    out = []
    for i in range(new.shape[0]):
        idx = [t for t in range(new.shape[1]) if mask[i, t]]
        s = math.exp(sum(float(new[i, t] - old[i, t]) for t in idx) / max(len(idx), 1))
        a = float(adv[i])
        out.append(max(-a * s, -a * min(max(s, 1 - lo), 1 + hi)))
    return torch.tensor(out, dtype=F64)


def test_gspo_equals_the_loop_reference_and_is_registered():
    gen = torch.Generator().manual_seed(0)
    new, old = (torch.randn(6, 9, generator=gen, dtype=F64) * 0.05 for _ in range(2))
    mask = torch.rand(6, 9, generator=gen) > 0.3
    adv = torch.randn(6, generator=gen, dtype=F64)
    loss_mat, _ = get_policy_loss("gspo")(new, old, adv, mask, 0.01, 0.02)
    per_seq = torch.stack([loss_mat[i][mask[i]].mean() for i in range(6)])
    torch.testing.assert_close(per_seq, _gspo_loop(new, old, adv, mask, 0.01, 0.02))


def test_action_ids_and_llds_hand_values():
    # delta = old - new = [[0.2, -0.5, 0.4], [0.3, 0.3, 0.3]], A = [1, -1], all sampled: row 2 is
    # outside the preserving set; row 1 is one action with sum 0.1 > 0 -> [0.2, 0, 0.4]
    old = torch.zeros(2, 3, dtype=F64)
    new = torch.tensor([[-0.2, 0.5, -0.4], [-0.3, -0.3, -0.3]], dtype=F64, requires_grad=True)
    full = torch.ones(2, 3, dtype=torch.bool)
    pen = llds_penalty(new, old, torch.tensor([1.0, -1.0], dtype=F64), full)
    torch.testing.assert_close(pen.detach(), torch.tensor([[0.2, 0.0, 0.4], [0.0, 0.0, 0.0]], dtype=F64))
    # the gradient raises the gated tokens' log-probs: d(pen)/d(new) = -1 where it acts
    pen.sum().backward()
    torch.testing.assert_close(new.grad, torch.tensor([[-1.0, 0.0, -1.0], [0.0, 0.0, 0.0]], dtype=F64))
    # delta [0.2, -0.5, 0.1]: the action's sum is -0.2, the gate is off
    off = llds_penalty(torch.tensor([[-0.2, 0.5, -0.1]], dtype=F64), torch.zeros(1, 3, dtype=F64),
                       torch.ones(1, dtype=F64), torch.ones(1, 3, dtype=torch.bool))
    assert off.abs().max() == 0
    # two actions split by an environment token (mask 0): gated separately
    mask = torch.tensor([[1, 1, 0, 1, 1]], dtype=torch.bool)
    assert action_ids(mask).tolist() == [[1, 1, 0, 2, 2]]
    new = -torch.tensor([[0.3, -0.1, 9.0, -0.4, 0.1]], dtype=F64)  # action sums 0.2 (on), -0.3 (off)
    pen = llds_penalty(new, torch.zeros(1, 5, dtype=F64), torch.zeros(1, dtype=F64), mask, gate="action")
    torch.testing.assert_close(pen, torch.tensor([[0.3, 0.0, 0.0, 0.0, 0.0]], dtype=F64))
    # the response gate sums both actions: -0.1 -> off
    resp = llds_penalty(new, torch.zeros(1, 5, dtype=F64), torch.zeros(1, dtype=F64), mask, gate="response")
    assert resp.abs().max() == 0


def _llds_loop(new, old, adv, mask, gate):
    out = torch.zeros_like(new)
    for i in range(new.shape[0]):
        if adv[i] < 0:
            continue
        runs, cur = [], []
        for t in range(new.shape[1]):
            if mask[i, t]:
                cur.append(t)
            elif cur:
                runs.append(cur)
                cur = []
        if cur:
            runs.append(cur)
        units = runs if gate == "action" else [[t for r in runs for t in r]]
        for unit in units:
            if sum(float(old[i, t] - new[i, t]) for t in unit) > 0:
                for t in unit:
                    out[i, t] = max(0.0, float(old[i, t] - new[i, t]))
    return out


@pytest.mark.parametrize("gate", ["action", "response"])
def test_llds_equals_the_loop_reference(gate):
    gen = torch.Generator().manual_seed(1)
    new, old = (torch.randn(8, 12, generator=gen, dtype=F64) * 0.1 for _ in range(2))
    mask = torch.rand(8, 12, generator=gen) > 0.35
    adv = torch.randn(8, generator=gen, dtype=F64)
    adv[0] = 0.0  # zero advantage is in the preserving set
    torch.testing.assert_close(llds_penalty(new, old, adv, mask, gate), _llds_loop(new, old, adv, mask, gate))


def test_dapo_clip_higher_hand_values():
    # ratios exp([[0.22, -0.3, 0.1], [0.22, 0.22, *]]) = [[1.246, 0.741, 1.105], [1.246, 1.246, *]],
    # A = [1, -1]. Row 1 (A > 0): clip_high 0.28 keeps 1.246 (symmetric 0.2 would clip it at 1.2,
    # gradient 0); 0.741 is below 1 - 0.2, and for A > 0 the unclipped -0.741 is the larger: kept.
    # Row 2 (A < 0): max(1.246, clip(1.246) = 1.246) -> unclipped under 0.28.
    old = torch.zeros(2, 3, dtype=F64)
    new = torch.tensor([[0.22, -0.3, 0.1], [0.22, 0.22, 0.0]], dtype=F64, requires_grad=True)
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]], dtype=torch.bool)
    adv = torch.tensor([1.0, -1.0], dtype=F64)
    loss, stats = get_policy_loss("ppo_clip")(new, old, adv, mask, 0.2, 0.28)
    r = math.exp(0.22)
    torch.testing.assert_close(loss.detach(), torch.tensor([[-r, -math.exp(-0.3), -math.exp(0.1)], [r, r, 0.0]],
                                                           dtype=F64))
    assert float(stats["clip_frac"]) == 0.0
    _, symmetric = get_policy_loss("ppo_clip")(new, old, adv, mask, 0.2, 0.2)
    assert float(symmetric["clip_frac"]) == pytest.approx(1 / 5)  # row 1's 1.246 token is clipped at 1.2


def test_dr_grpo_aggregation_equals_a_loop():
    gen = torch.Generator().manual_seed(2)
    loss = torch.randn(5, 7, generator=gen, dtype=F64)
    mask = torch.rand(5, 7, generator=gen) > 0.4
    mask[3] = False  # an all-padding row does not count as a sequence
    rows = [float(loss[i][mask[i]].sum()) / 64 for i in range(5) if mask[i].any()]
    assert float(agg_loss(loss, mask, "seq-mean-token-sum-norm", norm_tokens=64)) == pytest.approx(
        sum(rows) / len(rows), abs=1e-12)


def test_gspo_takes_one_advantage_per_sequence_only():
    new = torch.zeros(2, 3, dtype=F64)
    with pytest.raises(ValueError, match=r"one per sequence \[B\] = \[2\], got \(2, 3\)"):
        gspo_policy_loss(new, new, torch.ones(2, 3, dtype=F64), MASK)

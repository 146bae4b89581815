"""CPU tests of search_e1.algos.policy_loss and .kl: hand values, loop references, registries."""

from __future__ import annotations

import math

import pytest
import torch

from search_e1.algos import (
    KL_ESTIMATORS,
    LOSS_AGG_MODES,
    agg_loss,
    clipped_policy_loss,
    get_agg_mode,
    get_kl_estimator,
    get_policy_loss,
    kl_estimate,
    masked_mean,
    masked_sum,
    register_agg_mode,
    register_kl_estimator,
    register_policy_loss,
)

F64 = torch.float64
LOSS = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0], [7.0, 8.0, 9.0]], dtype=F64)
MASK = torch.tensor([[1, 1, 0], [0, 0, 1], [0, 0, 0]], dtype=torch.bool)  # row 2: all padding


def _close(a, b, tol=1e-12):
    torch.testing.assert_close(
        torch.as_tensor(a, dtype=F64), torch.as_tensor(b, dtype=F64), rtol=0, atol=tol
    )


# --- masked reductions and aggregation -----------------------------------------------------------


def test_masked_reductions_hand_values():
    _close(masked_sum(LOSS, MASK), 9.0)  # 1 + 2 + 6
    _close(masked_mean(LOSS, MASK), 3.0)  # 9 / 3
    _close(masked_mean(LOSS, MASK.float(), dim=-1), [1.5, 6.0, 0.0])  # empty row -> 0, not NaN


def test_agg_modes_hand_values():
    # token-mean: (1 + 2 + 6) / 3 = 3;  seq-mean-token-mean: (1.5 + 6) / 2 = 3.75
    # seq-mean-token-sum: (3 + 6) / 2 = 4.5  (the all-pad row 2 is not counted)
    _close(agg_loss(LOSS, MASK, "token-mean"), 3.0)
    _close(agg_loss(LOSS, MASK, "seq-mean-token-mean"), 3.75)
    _close(agg_loss(LOSS, MASK, "seq-mean-token-sum"), 4.5)
    _close(agg_loss(LOSS, MASK, "token-mean", num_tokens=6), 1.5)  # 9 / 6
    _close(agg_loss(LOSS, torch.zeros_like(MASK), "seq-mean-token-mean"), 0.0)


def _slow_agg(loss, mask, mode):
    rows = []
    for b in range(loss.shape[0]):
        vals = [loss[b, t].item() for t in range(loss.shape[1]) if mask[b, t]]
        if vals:
            rows.append(vals)
    if mode == "token-mean":
        flat = [v for r in rows for v in r]
        return sum(flat) / len(flat)
    per = [sum(r) / len(r) if mode == "seq-mean-token-mean" else sum(r) for r in rows]
    return sum(per) / len(per)


@pytest.mark.parametrize("mode", ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum"])
def test_agg_modes_match_slow_loop(mode):
    gen = torch.Generator().manual_seed(2)
    loss = torch.randn(7, 13, generator=gen, dtype=F64)
    mask = torch.rand(7, 13, generator=gen) < 0.5
    mask[3] = False
    _close(agg_loss(loss, mask.float(), mode), _slow_agg(loss, mask, mode), 1e-12)


def test_micro_batches_with_global_normaliser_sum_to_full_batch():
    gen = torch.Generator().manual_seed(3)
    loss = torch.randn(6, 9, generator=gen)
    mask = (torch.rand(6, 9, generator=gen) < 0.6).float()
    mask[5] = 0.0
    n_tok, n_seq = mask.sum().item(), (mask.sum(-1) > 0).sum().item()
    parts = [(loss[:2], mask[:2]), (loss[2:], mask[2:])]
    full = agg_loss(loss, mask, "token-mean")
    summed = sum(agg_loss(lm, m, "token-mean", num_tokens=n_tok) for lm, m in parts)
    torch.testing.assert_close(summed, full, rtol=0, atol=1e-6)
    for mode in ("seq-mean-token-mean", "seq-mean-token-sum"):
        summed = sum(agg_loss(lm, m, mode, num_seqs=n_seq) for lm, m in parts)
        torch.testing.assert_close(summed, agg_loss(loss, mask, mode), rtol=0, atol=1e-6)


# --- PPO clipped surrogate -----------------------------------------------------------------------


def test_clipped_loss_hand_values_stats_and_gradient():
    # A = [1, -1]; old log-probs 0, so ratio = exp(logprobs); clip range [0.8, 1.2].
    # row 0 (A=+1): r=1.5 -> max(-1.5, -1.2) = -1.2 (clipped, grad 0); r=0.5 -> max(-0.5, -0.8) = -0.5
    # row 1 (A=-1): r=1.1 -> max(1.1, 1.1) = 1.1 (tie, not clipped); r=0.7 -> max(0.7, 0.8) = 0.8 (clipped)
    # column 2: mask 0 with a garbage log-prob (1000) -> loss 0, grad 0, no NaN
    ratios = torch.tensor([[1.5, 0.5], [1.1, 0.7]], dtype=F64)
    logp = torch.cat([ratios.log(), torch.full((2, 1), 1000.0, dtype=F64)], dim=1).requires_grad_()
    mask = torch.tensor([[1, 1, 0], [1, 1, 0]], dtype=F64)
    loss, stats = clipped_policy_loss(
        logp, torch.zeros(2, 3, dtype=F64), torch.tensor([1.0, -1.0]), mask
    )
    _close(loss, [[-1.2, -0.5, 0.0], [1.1, 0.8, 0.0]])
    _close(stats["clip_frac"], 0.5)  # 2 of 4 masked tokens
    _close(stats["ratio_mean"], (1.5 + 0.5 + 1.1 + 0.7) / 4)  # 0.95
    _close(stats["approx_kl"], -math.log(1.5 * 0.5 * 1.1 * 0.7) / 4)  # mean(old - new) = 0.137256
    assert not any(v.requires_grad for v in stats.values())
    loss.sum().backward()
    # d/dlogp of -A * r = -A * r where unclipped; 0 where clipped
    _close(logp.grad, [[0.0, -0.5, 0.0], [1.1, 0.0, 0.0]])


def test_clip_higher_asymmetric():
    # A=+1, r=1.25: clip_high 0.28 -> 1.25 is inside [0.8, 1.28] -> loss -1.25, not clipped
    logp = torch.tensor([[math.log(1.25)]], dtype=F64)
    loss, stats = clipped_policy_loss(
        logp, torch.zeros_like(logp), torch.ones(1), torch.ones(1, 1), 0.2, 0.28
    )
    _close(loss, [[-1.25]])
    _close(stats["clip_frac"], 0.0)


def test_clipped_loss_matches_slow_loop():
    gen = torch.Generator().manual_seed(4)
    b, t, lo, hi = 5, 8, 0.2, 0.3
    logp = torch.randn(b, t, generator=gen, dtype=F64) * 0.3 - 1.0
    old = logp + torch.randn(b, t, generator=gen, dtype=F64) * 0.3
    adv = torch.randn(b, generator=gen, dtype=F64)
    mask = (torch.rand(b, t, generator=gen) < 0.7).double()
    loss, stats = get_policy_loss("ppo_clip")(logp, old, adv, mask, lo, hi)
    slow, n_clip = torch.zeros(b, t, dtype=F64), 0
    for i in range(b):
        for j in range(t):
            if mask[i, j]:
                r = math.exp(logp[i, j] - old[i, j])
                a = adv[i].item()
                u, c = -a * r, -a * min(max(r, 1 - lo), 1 + hi)
                slow[i, j], n_clip = max(u, c), n_clip + (c > u)
    _close(loss, slow, 1e-12)
    _close(stats["clip_frac"], n_clip / mask.sum().item(), 1e-12)


# --- KL estimators -------------------------------------------------------------------------------


def test_kl_hand_values_and_gradient():
    # logp = log 0.5, ref = log 0.25: d = ref - logp = -ln 2 = -0.693147
    # k1 = ln 2 = 0.693147; k2 = 0.5 (ln 2)^2 = 0.240227; k3 = e^d - d - 1 = 0.5 + 0.693147 - 1 = 0.193147
    logp = torch.tensor([[math.log(0.5)]], dtype=F64, requires_grad=True)
    ref = torch.tensor([[math.log(0.25)]], dtype=F64)
    ln2 = math.log(2)
    _close(kl_estimate(logp, ref, "k1"), [[ln2]])
    _close(kl_estimate(logp, ref, "k2"), [[0.5 * ln2**2]])
    k3 = kl_estimate(logp, ref)
    _close(k3, [[0.5 + ln2 - 1]])
    k3.sum().backward()
    _close(logp.grad, [[1 - 0.5]])  # d k3 / d logp = 1 - e^d = 0.5
    assert get_kl_estimator("low_var_kl") is get_kl_estimator("k3")


def test_k3_clamp_is_nan_free():
    # d = -50 -> k3 = 49 -> 10;  d = +30 -> e^30 -> 10; gradients are 0 there, not NaN
    logp = torch.tensor([[0.0, -30.0]], requires_grad=True)
    ref = torch.tensor([[-50.0, 0.0]])
    k3 = kl_estimate(logp, ref, "k3")
    _close(k3.detach(), [[10.0, 10.0]])
    k3.sum().backward()
    _close(logp.grad, [[0.0, 0.0]])


def test_k3_matches_slow_loop():
    gen = torch.Generator().manual_seed(5)
    logp = torch.randn(4, 6, generator=gen, dtype=F64) - 2
    ref = logp + torch.randn(4, 6, generator=gen, dtype=F64) * 2
    slow = [
        [min(10.0, math.exp(r - lp) - (r - lp) - 1) for lp, r in zip(a, b, strict=True)]
        for a, b in zip(logp.tolist(), ref.tolist(), strict=True)
    ]
    _close(kl_estimate(logp, ref, "k3"), slow, 1e-12)


# --- registries ----------------------------------------------------------------------------------


def test_registries_refuse_duplicates_and_list_names():
    assert set(LOSS_AGG_MODES) == {"token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm"}
    assert {"k1", "k2", "k3", "low_var_kl"} <= set(KL_ESTIMATORS)
    with pytest.raises(ValueError, match="token-mean"):
        get_agg_mode("sum")
    with pytest.raises(ValueError, match="k3"):
        kl_estimate(torch.zeros(1, 1), torch.zeros(1, 1), "k4")
    with pytest.raises(ValueError, match="ppo_clip"):
        get_policy_loss("reinforce")
    for register, name in (
        (register_agg_mode, "token-mean"),
        (register_policy_loss, "ppo_clip"),
        (register_kl_estimator, "low_var_kl"),
    ):
        with pytest.raises(ValueError, match="already registered"):
            register(name)(lambda *a: a)

"""CPU tests of search_e1.algos.distill: value AND gradient vs plain autograd references."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from search_e1.algos import (
    DISTILL_LOSSES,
    FullTeacher,
    TopKTeacher,
    forward_kl,
    forward_kl_topk,
    get_distill_loss,
    make_teacher_targets,
    register_distill_loss,
    teacher_topk,
)

F64 = torch.float64


def _ref_kl(zs, zt, mask, tau=1.0):
    """Plain autograd reference: sum_v p_t (log p_t - log_softmax(z_s / tau)), times the mask."""
    logp_t = F.log_softmax(zt / tau, -1)  # [B, T, V]
    kl = (logp_t.exp() * (logp_t - F.log_softmax(zs / tau, -1))).sum(-1)  # [B, T]
    return kl * mask


def _ref_topk_kl(zs, ids, lp, mask, tau=1.0):
    logq = lp - torch.logsumexp(lp, -1, keepdim=True)  # [B, T, K] renormalised
    logp_s = F.log_softmax(zs / tau, -1).gather(-1, ids)  # [B, T, K]
    return (logq.exp() * (logq - logp_s)).sum(-1) * mask


def _inputs(b=3, t=5, v=11, dtype=F64, seed=0):
    gen = torch.Generator().manual_seed(seed)
    zs = (torch.randn(b, t, v, generator=gen, dtype=dtype) * 2).requires_grad_()
    zt = torch.randn(b, t, v, generator=gen, dtype=dtype) * 2
    mask = (torch.rand(b, t, generator=gen) < 0.6).to(dtype)
    up = torch.randn(b, t, generator=gen, dtype=dtype)  # random upstream gradient
    return zs, zt, mask, up


def _grad(fn, zs, up):
    zs.grad = None
    out = fn(zs)
    (out.to(up.dtype) * up).sum().backward()
    return out.detach(), zs.grad.clone()


def test_hand_value_and_gradient():
    # teacher [0, 0] -> p_t = [.5, .5]; student [ln 3, 0] -> p_s = [.75, .25]
    # KL = .5 ln(.5/.75) + .5 ln(.5/.25) = .5 ln(4/3) = 0.143841; dKL/dz_s = p_s - p_t = [.25, -.25]
    zs = torch.tensor([[[math.log(3), 0.0]]], dtype=F64, requires_grad=True)
    kl = forward_kl(zs, torch.zeros(1, 1, 2, dtype=F64))
    torch.testing.assert_close(
        kl, torch.tensor([[0.5 * math.log(4 / 3)]], dtype=F64), rtol=0, atol=1e-12
    )
    kl.sum().backward()
    torch.testing.assert_close(
        zs.grad, torch.tensor([[[0.25, -0.25]]], dtype=F64), rtol=0, atol=1e-12
    )


@pytest.mark.parametrize("tau", [1.0, 2.0])
@pytest.mark.parametrize("chunk", [1, 4, 1024])
def test_forward_kl_matches_autograd_reference(tau, chunk):
    zs, zt, mask, up = _inputs()
    out, g = _grad(lambda z: forward_kl(z, zt, mask, tau, chunk_size=chunk), zs, up)
    ref, g_ref = _grad(lambda z: _ref_kl(z, zt, mask, tau), zs, up)
    # float64 logits are computed in float64
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-10)
    torch.testing.assert_close(g, g_ref, rtol=0, atol=1e-10)
    assert (out[mask == 0] == 0).all() and (g[mask == 0] == 0).all()


def test_forward_kl_float32_and_bf16_student():
    zs, zt, mask, up = _inputs(dtype=torch.float32, seed=1)
    out, g = _grad(lambda z: forward_kl(z, zt, mask.bool()), zs, up.float())
    ref, g_ref = _grad(lambda z: _ref_kl(z, zt, mask), zs, up.float())
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-5)
    torch.testing.assert_close(g, g_ref, rtol=0, atol=1e-6)
    zb = zs.detach().bfloat16().requires_grad_()
    out_b = forward_kl(zb, zt.bfloat16(), mask)
    out_b.sum().backward()
    assert out_b.dtype == torch.float32 and zb.grad.dtype == torch.bfloat16


def test_teacher_gets_no_gradient_and_masked_vocab_is_finite():
    zs, zt, mask, _ = _inputs(seed=2)
    zt = zt.clone().requires_grad_()
    forward_kl(zs, zt, mask).sum().backward()
    assert zt.grad is None
    # teacher logit -inf on token 1 (p_t = 0): that token contributes 0, not NaN
    z_t = torch.tensor([[[0.0, float("-inf"), 0.0]]], dtype=F64)
    z_s = torch.tensor([[[1.0, 2.0, 3.0]]], dtype=F64)
    logp_s = F.log_softmax(z_s, -1)[0, 0]
    expected = 0.5 * (math.log(0.5) - logp_s[0]) + 0.5 * (math.log(0.5) - logp_s[2])
    torch.testing.assert_close(forward_kl(z_s, z_t)[0, 0], expected, rtol=0, atol=1e-12)


def test_gradcheck_small():
    zs, zt, mask, _ = _inputs(b=2, t=3, v=4, seed=3)
    assert torch.autograd.gradcheck(lambda z: forward_kl(z, zt, mask, 1.5, 2), (zs,))


def test_teacher_topk_values():
    _, zt, _, _ = _inputs(seed=4)
    ids, lp = teacher_topk(zt, 3, temperature=2.0)
    full = F.log_softmax(zt / 2.0, -1)  # [B, T, V]
    torch.testing.assert_close(lp, full.gather(-1, ids), rtol=0, atol=1e-12)
    assert torch.equal(ids, full.topk(3, -1).indices)


@pytest.mark.parametrize("tau", [1.0, 0.7])
def test_topk_with_k_equal_v_is_the_full_kl(tau):
    zs, zt, mask, up = _inputs(seed=5)
    ids, lp = teacher_topk(zt, zt.shape[-1], tau)
    out, g = _grad(lambda z: forward_kl_topk(z, ids, lp, mask, tau, chunk_size=3), zs, up)
    ref, g_ref = _grad(lambda z: forward_kl(z, zt, mask, tau), zs, up)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-10)
    torch.testing.assert_close(g, g_ref, rtol=0, atol=1e-10)


def test_topk_matches_renormalised_reference():
    zs, zt, mask, up = _inputs(seed=6)
    ids, lp = teacher_topk(zt, 4)
    out, g = _grad(lambda z: forward_kl_topk(z, ids, lp, mask), zs, up)
    ref, g_ref = _grad(lambda z: _ref_topk_kl(z, ids, lp, mask), zs, up)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-10)
    torch.testing.assert_close(g, g_ref, rtol=0, atol=1e-10)
    assert (out >= -1e-6).all()  # a proper KL after renormalisation


def test_registry_and_targets():
    zs, zt, mask, _ = _inputs(seed=7)
    full = make_teacher_targets(zt, temperature=1.3)
    top = make_teacher_targets(zt, topk=5, temperature=1.3)
    assert isinstance(full, FullTeacher) and isinstance(top, TopKTeacher) and top.ids.shape[-1] == 5
    torch.testing.assert_close(
        get_distill_loss("forward_kl")(zs, full, mask), forward_kl(zs, zt, mask, 1.3)
    )
    torch.testing.assert_close(
        get_distill_loss("forward_kl_topk")(zs, top, mask),
        forward_kl_topk(zs, top.ids, top.logprobs, mask, 1.3),
    )
    with pytest.raises(TypeError, match="TopKTeacher"):
        get_distill_loss("forward_kl_topk")(zs, full, mask)
    with pytest.raises(TypeError, match="FullTeacher"):
        get_distill_loss("forward_kl")(zs, top, mask)
    with pytest.raises(ValueError, match="forward_kl_topk"):
        get_distill_loss("no_such_divergence")  # the error lists the known names
    with pytest.raises(ValueError, match="already registered"):
        register_distill_loss("forward_kl")(DISTILL_LOSSES["forward_kl"])
    with pytest.raises(ValueError, match=r"\[B, T, K\]"):
        TopKTeacher(top.ids, top.logprobs[..., :2])


def test_only_the_inputs_are_saved_for_backward():
    # the memory claim: autograd keeps the logits themselves, never a new [B, T, V] tensor
    zs, zt, mask, _ = _inputs(seed=8)
    ids, lp = teacher_topk(zt, 3)
    inputs = {zs.data_ptr(), zt.data_ptr(), ids.data_ptr(), lp.data_ptr()}
    saved = []

    def pack(x):
        saved.append(x)
        return x

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x):
        forward_kl(zs, zt, mask).sum().backward()
        forward_kl_topk(zs, ids, lp, mask).sum().backward()
    big = [x for x in saved if x.dim() == 3]
    assert big and all(x.data_ptr() in inputs for x in big)

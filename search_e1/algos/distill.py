"""Token-level divergences teacher -> student for offline self-distillation (OFSD), memory-lean.

At every position the policy sampled (loss mask 1) the OFSD loss is ``KL(p_t || p_s) =
sum_v p_t(v) (log p_t(v) - log p_s(v))``: teacher = the policy without gradient on the privileged
context, student = the policy on the ordinary context; both ``[B, T, V]`` logits already aligned
on the trajectory's tokens.

- `forward_kl` (full vocabulary): a custom ``autograd.Function`` walks the masked rows in chunks of
  ``chunk_size`` in float32 (float64 for float64 logits), saves only its inputs (the logits) and
  recomputes per chunk in backward the analytic ``dKL/dz_s = (softmax(z_s/tau) - p_t) / tau``. No
  ``[B, T, V]`` log-prob tensor is materialised or kept for autograd (memory: logits + gradient +
  one chunk), and unmasked rows (prompt, information) cost nothing.
- `forward_kl_topk`: over the teacher's top-k ids with the teacher's probabilities RENORMALISED
  over them (``q_k = p_t(id_k) / sum_j p_t(id_j)``) and the student's FULL softmax. It stays a
  proper KL (>= 0, equal to the full KL when ``k = V``); not renormalising would silently drop the
  teacher's tail mass and make the loss scale depend on ``k``. Same chunked Function, so a teacher
  pass keeps only ``K`` ids and log-probs per token (`teacher_topk`).

- `reverse_kl`: ``KL(p_s || p_t) = sum_v p_s (log p_s - log p_t)`` (mode-seeking: the student
  concentrates on what the teacher deems likely), full vocabulary.
- `jsd`: the generalised Jensen-Shannon divergence of GKD (Agarwal et al., 2024) with ``beta``:
  ``beta KL(p_t || m) + (1 - beta) KL(p_s || m)``, ``m = beta p_t + (1 - beta) p_s``; bounded,
  symmetric at ``beta = 0.5``.

Both walk the masked rows in chunks with ordinary autograd (their backward keeps one chunk's
``[C, V]`` tensors); only a `FullTeacher` has the teacher's whole distribution they need.

Common signature (registry `DISTILL_LOSSES`): ``loss_fn(student_logits [B, T, V], teacher:
TeacherTargets, mask [B, T] | None) -> [B, T]``; `TeacherTargets` is `FullTeacher` (logits) or
`TopKTeacher` (ids + log-probs), each carrying the temperature that also scales the student.
``forward_kl`` needs a `FullTeacher`, ``forward_kl_topk`` a `TopKTeacher`; `make_teacher_targets`
builds either. Reduce the ``[B, T]`` result with ``agg_loss``.

Departures: no ``tau**2`` factor (Hinton et al.); the result is float32 (float64 for float64
logits) whatever the logits' dtype; the teacher is a constant even if its logits require grad.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

from search_e1.registry import Registry

__all__ = [
    "DISTILL_LOSSES",
    "FullTeacher",
    "TeacherTargets",
    "TopKTeacher",
    "forward_kl",
    "forward_kl_topk",
    "get_distill_loss",
    "jsd",
    "reverse_kl",
    "make_teacher_targets",
    "register_distill_loss",
    "teacher_topk",
]


# --- teacher distribution per chunk ------------------------------------------------------------


def _compute_dtype(x: Tensor) -> torch.dtype:
    """float32, or float64 when ``x`` is float64 (bf16/fp16 logits are upcast)."""
    return torch.promote_types(x.dtype, torch.float32)


def _full_teacher_chunk(b: Tensor, t: Tensor, tau: float, logits: Tensor) -> tuple[Tensor, Tensor]:
    """Teacher probs ``[C, V]`` and ``sum_v p log p`` ``[C]`` from full logits ``[B, T, V]``."""
    logq = F.log_softmax(logits[b, t].to(_compute_dtype(logits)) / tau, dim=-1)  # [C, V]
    q = logq.exp()  # [C, V]
    neg_ent = torch.where(q > 0, q * logq, torch.zeros_like(q)).sum(-1)  # [C]
    return q, neg_ent


def _topk_teacher_chunk(
    b: Tensor, t: Tensor, ids: Tensor, logprobs: Tensor, vocab: int
) -> tuple[Tensor, Tensor]:
    """Renormalised top-k teacher probs scattered to ``[C, V]`` and ``sum q log q`` ``[C]``.

    The temperature was applied when the log-probs were computed (`teacher_topk`).
    """
    lp = logprobs[b, t].to(_compute_dtype(logprobs))  # [C, K]
    logq = lp - torch.logsumexp(lp, dim=-1, keepdim=True)  # [C, K]
    qk = logq.exp()  # [C, K]
    q = torch.zeros((b.numel(), vocab), dtype=lp.dtype, device=lp.device)  # [C, V]
    q.scatter_(1, ids[b, t], qk)  # [C, V]
    neg_ent = torch.where(qk > 0, qk * logq, torch.zeros_like(qk)).sum(-1)  # [C]
    return q, neg_ent


def _teacher_chunk(
    kind: str, b: Tensor, t: Tensor, tau: float, vocab: int, teacher: tuple[Tensor, ...]
) -> tuple[Tensor, Tensor]:
    """Teacher probs ``[C, V]`` and ``sum p log p`` ``[C]`` on rows ``(b, t)`` for ``kind``."""
    if kind == "full":
        return _full_teacher_chunk(b, t, tau, *teacher)
    return _topk_teacher_chunk(b, t, *teacher, vocab)


def _chunks(b_idx: Tensor, t_idx: Tensor, size: int) -> Iterator[tuple[Tensor, Tensor]]:
    """Consecutive slices of ``size`` row indices."""
    for start in range(0, b_idx.numel(), size):
        yield b_idx[start : start + size], t_idx[start : start + size]  # [C], [C]


class _ChunkedForwardKL(torch.autograd.Function):
    """KL(teacher || softmax(student/tau)) on the rows ``(b_idx, t_idx)``; 0 elsewhere."""

    @staticmethod
    def forward(ctx, student_logits, b_idx, t_idx, tau, chunk_size, kind, *teacher):
        bsz, seq, vocab = student_logits.shape
        dtype = _compute_dtype(student_logits)
        out = torch.zeros((bsz, seq), dtype=dtype, device=student_logits.device)  # [B, T]
        for b, t in _chunks(b_idx, t_idx, chunk_size):
            logp_s = F.log_softmax(student_logits[b, t].to(dtype) / tau, dim=-1)  # [C, V]
            q, neg_ent = _teacher_chunk(kind, b, t, tau, vocab, teacher)  # [C, V], [C]
            q = q.to(dtype)  # [C, V]
            cross = torch.where(q > 0, q * logp_s, torch.zeros_like(q)).sum(-1)  # [C]
            out[b, t] = neg_ent.to(dtype) - cross  # [C]
        ctx.save_for_backward(student_logits, b_idx, t_idx, *teacher)
        ctx.tau, ctx.chunk_size, ctx.kind = tau, chunk_size, kind
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        student_logits, b_idx, t_idx, *teacher = ctx.saved_tensors
        grad = None
        if ctx.needs_input_grad[0]:
            vocab = student_logits.shape[-1]
            dtype = _compute_dtype(student_logits)
            grad = torch.zeros_like(student_logits)  # [B, T, V]
            for b, t in _chunks(b_idx, t_idx, ctx.chunk_size):
                p_s = F.softmax(student_logits[b, t].to(dtype) / ctx.tau, dim=-1)  # [C, V]
                q, _ = _teacher_chunk(ctx.kind, b, t, ctx.tau, vocab, tuple(teacher))  # [C, V]
                scale = (grad_out[b, t].to(dtype) / ctx.tau).unsqueeze(-1)  # [C, 1]
                grad[b, t] = ((p_s - q.to(dtype)) * scale).to(grad.dtype)  # [C, V]
        return (grad, None, None, None, None, None, *([None] * len(teacher)))


def _apply(
    logits: Tensor, mask: Tensor | None, tau: float, chunk_size: int, kind: str, *teacher: Tensor
) -> Tensor:
    """Run `_ChunkedForwardKL` on the rows where ``mask [B, T]`` != 0 (all rows when ``None``)."""
    bsz, seq, _ = logits.shape
    if mask is None:
        mask = torch.ones((bsz, seq), dtype=torch.bool, device=logits.device)  # [B, T]
    if mask.shape != (bsz, seq):
        raise ValueError(f"mask {tuple(mask.shape)} does not match logits [B, T] = {(bsz, seq)}")
    b_idx, t_idx = torch.nonzero(mask != 0, as_tuple=True)  # [M], [M]
    args = (float(tau), int(chunk_size), kind)
    return _ChunkedForwardKL.apply(logits, b_idx, t_idx, *args, *teacher)  # [B, T]


def forward_kl(
    student_logits: Tensor,
    teacher_logits: Tensor,
    mask: Tensor | None = None,
    temperature: float = 1.0,
    chunk_size: int = 1024,
) -> Tensor:
    """Per-token ``KL(softmax(z_t/tau) || softmax(z_s/tau))`` ``[B, T]``, 0 under mask 0.

    Args:
        student_logits: ``[B, T, V]`` student logits (gradient flows into them).
        teacher_logits: ``[B, T, V]`` teacher logits on the same positions (a constant).
        mask: ``[B, T]`` loss mask (1 = sampled by the policy) or ``None`` for all positions.
        temperature: ``tau`` applied to both sides.
        chunk_size: rows (masked positions) processed at once.
    """
    if teacher_logits.shape != student_logits.shape or student_logits.dim() != 3:
        raise ValueError(
            f"student {tuple(student_logits.shape)} and teacher {tuple(teacher_logits.shape)} "
            "logits must both be [B, T, V]"
        )
    return _apply(student_logits, mask, temperature, chunk_size, "full", teacher_logits.detach())


def forward_kl_topk(
    student_logits: Tensor,
    teacher_topk_ids: Tensor,
    teacher_topk_logprobs: Tensor,
    mask: Tensor | None = None,
    temperature: float = 1.0,
    chunk_size: int = 1024,
) -> Tensor:
    """Per-token ``sum_k q_k (log q_k - log p_s(id_k))`` ``[B, T]``, q = renormalised top-k teacher.

    Args:
        student_logits: ``[B, T, V]`` student logits; ``log p_s`` = full log-softmax at ``tau``.
        teacher_topk_ids: ``[B, T, K]`` long, distinct token ids per position (from `teacher_topk`).
        teacher_topk_logprobs: ``[B, T, K]`` teacher log-probs of those ids (any normalisation;
            they are renormalised over the K ids).
        mask: ``[B, T]`` loss mask or ``None``.
        temperature: the student's ``tau`` (use the one the teacher log-probs were computed at).
        chunk_size: rows processed at once.
    """
    if student_logits.dim() != 3 or teacher_topk_ids.shape != teacher_topk_logprobs.shape:
        raise ValueError("expected student [B, T, V] and teacher ids / log-probs both [B, T, K]")
    if teacher_topk_ids.shape[:2] != student_logits.shape[:2]:
        raise ValueError(
            f"teacher top-k {tuple(teacher_topk_ids.shape)} does not match student "
            f"{tuple(student_logits.shape)} on [B, T]"
        )
    ids, logprobs = teacher_topk_ids.long(), teacher_topk_logprobs.detach()  # [B, T, K] each
    return _apply(student_logits, mask, temperature, chunk_size, "topk", ids, logprobs)


@torch.no_grad()
def teacher_topk(teacher_logits: Tensor, k: int, temperature: float = 1.0) -> tuple[Tensor, Tensor]:
    """The teacher's ``k`` most likely ids ``[B, T, K]`` and their full-vocab log-probs ``[B, T, K]``.

    The log-probs are ``z/tau - logsumexp(z/tau)`` over the FULL vocabulary (float32 or wider),
    so they sum (in probability) to at most 1; the loss renormalises them.
    """
    vals, ids = teacher_logits.topk(k, dim=-1)  # [B, T, K] each
    dtype = _compute_dtype(teacher_logits)
    lse = torch.logsumexp(teacher_logits.to(dtype) / temperature, dim=-1, keepdim=True)  # [B, T, 1]
    return ids, vals.to(dtype) / temperature - lse  # [B, T, K], [B, T, K]


# --- teacher targets and the registry -----------------------------------------------------------


@dataclass(frozen=True)
class FullTeacher:
    """The teacher's full logits on the trajectory's positions."""

    logits: Tensor  # [B, T, V]
    temperature: float = 1.0
    """Softmax temperature applied to teacher and student."""

    def __post_init__(self) -> None:
        if self.logits.dim() != 3 or self.temperature <= 0:
            raise ValueError("FullTeacher needs logits [B, T, V] and a temperature > 0")


@dataclass(frozen=True)
class TopKTeacher:
    """The teacher's top-k ids and full-vocab log-probs per position (what a teacher pass keeps)."""

    ids: Tensor  # [B, T, K] long
    logprobs: Tensor  # [B, T, K]
    temperature: float = 1.0
    """Temperature the log-probs were computed at; the student is scaled by it too."""

    def __post_init__(self) -> None:
        if self.ids.shape != self.logprobs.shape or self.ids.dim() != 3 or self.temperature <= 0:
            raise ValueError("TopKTeacher needs ids, logprobs both [B, T, K] and temperature > 0")

    @classmethod
    def from_logits(cls, logits: Tensor, k: int, temperature: float = 1.0) -> TopKTeacher:
        """Keep only the top-``k`` of teacher logits ``[B, T, V]``."""
        ids, logprobs = teacher_topk(logits, k, temperature)  # [B, T, K] each
        return cls(ids, logprobs, temperature)


TeacherTargets = FullTeacher | TopKTeacher
"""What a distillation loss receives as the teacher side."""

DistillLossFn = Callable[[Tensor, TeacherTargets, Tensor | None], Tensor]
"""``(student_logits [B, T, V], teacher, mask [B, T] | None) -> per-token loss [B, T]``."""

DISTILL_LOSSES: Registry[DistillLossFn] = Registry("distillation loss")
"""Token-level distillation losses by name."""
register_distill_loss = DISTILL_LOSSES.register
get_distill_loss = DISTILL_LOSSES.get


def make_teacher_targets(
    teacher_logits: Tensor, topk: int | None = None, temperature: float = 1.0
) -> TeacherTargets:
    """`FullTeacher` when ``topk`` is None, else `TopKTeacher` of the ``topk`` best ids."""
    if topk is None:
        return FullTeacher(teacher_logits.detach(), temperature)
    return TopKTeacher.from_logits(teacher_logits, topk, temperature)


@register_distill_loss("forward_kl")
def forward_kl_loss(student_logits: Tensor, teacher: TeacherTargets, mask: Tensor | None) -> Tensor:
    """`forward_kl` against a `FullTeacher`: ``[B, T, V] -> [B, T]``."""
    if not isinstance(teacher, FullTeacher):
        raise TypeError("'forward_kl' needs FullTeacher (make_teacher_targets(z, topk=None))")
    return forward_kl(student_logits, teacher.logits, mask, teacher.temperature)  # [B, T]


@register_distill_loss("forward_kl_topk")
def forward_kl_topk_loss(
    student_logits: Tensor, teacher: TeacherTargets, mask: Tensor | None
) -> Tensor:
    """`forward_kl_topk` against a `TopKTeacher`: ``[B, T, V] -> [B, T]``."""
    if not isinstance(teacher, TopKTeacher):
        raise TypeError("'forward_kl_topk' needs TopKTeacher (make_teacher_targets(z, topk=k))")
    return forward_kl_topk(
        student_logits, teacher.ids, teacher.logprobs, mask, teacher.temperature
    )  # [B, T]


def _masked_rows(student_logits: Tensor, teacher_logits: Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor]:
    if teacher_logits.shape != student_logits.shape or student_logits.dim() != 3:
        raise ValueError(f"student {tuple(student_logits.shape)} and teacher {tuple(teacher_logits.shape)} "
                         "logits must both be [B, T, V]")
    if mask is None:
        mask = torch.ones(student_logits.shape[:2], dtype=torch.bool, device=student_logits.device)
    return torch.nonzero(mask != 0, as_tuple=True)  # [M], [M]


def _per_row(student_logits: Tensor, teacher_logits: Tensor, mask: Tensor | None, tau: float, chunk_size: int,
             fn: Callable[[Tensor, Tensor], Tensor]) -> Tensor:
    """``fn(log p_s [C, V], log p_t [C, V]) -> [C]`` on the masked rows, chunk by chunk; ``[B, T]``."""
    b_idx, t_idx = _masked_rows(student_logits, teacher_logits, mask)
    dtype = _compute_dtype(student_logits)
    parts = []
    for b, t in _chunks(b_idx, t_idx, chunk_size):
        ls = F.log_softmax(student_logits[b, t].to(dtype) / tau, dim=-1)  # [C, V]
        lt = F.log_softmax(teacher_logits[b, t].detach().to(dtype) / tau, dim=-1)  # [C, V]
        parts.append(fn(ls, lt))  # [C]
    out = torch.zeros(student_logits.shape[:2], dtype=dtype, device=student_logits.device)  # [B, T]
    return out.index_put((b_idx, t_idx), torch.cat(parts)) if parts else out


def reverse_kl(student_logits: Tensor, teacher_logits: Tensor, mask: Tensor | None = None,
               temperature: float = 1.0, chunk_size: int = 1024) -> Tensor:
    """Per-token ``KL(softmax(z_s/tau) || softmax(z_t/tau))`` ``[B, T]``, 0 under mask 0.

    Worked example (V = 2, one position): ``p_s = [0.5, 0.5]``, ``p_t = [0.8, 0.2]``:
    ``0.5 log(0.5/0.8) + 0.5 log(0.5/0.2) = 0.2231``.
    """
    return _per_row(student_logits, teacher_logits, mask, temperature, chunk_size,
                    lambda ls, lt: (ls.exp() * (ls - lt)).sum(-1))


def jsd(student_logits: Tensor, teacher_logits: Tensor, mask: Tensor | None = None, beta: float = 0.5,
        temperature: float = 1.0, chunk_size: int = 1024) -> Tensor:
    """Per-token generalised JSD ``beta KL(p_t || m) + (1 - beta) KL(p_s || m)``,
    ``m = beta p_t + (1 - beta) p_s`` ``[B, T]``, 0 under mask 0; ``0 < beta < 1``.

    Worked example (V = 2, beta = 0.5): ``p_s = [0.5, 0.5]``, ``p_t = [0.8, 0.2]``, ``m = [0.65, 0.35]``:
    ``0.5 (0.8 log(0.8/0.65) + 0.2 log(0.2/0.35)) + 0.5 (0.5 log(0.5/0.65) + 0.5 log(0.5/0.35)) = 0.0507``.
    """
    if not 0.0 < beta < 1.0:
        raise ValueError(f"jsd needs 0 < beta < 1, got {beta}")
    lb, l1b = math.log(beta), math.log1p(-beta)

    def fn(ls: Tensor, lt: Tensor) -> Tensor:
        lm = torch.logsumexp(torch.stack([lt + lb, ls + l1b]), dim=0)  # [C, V]
        return beta * (lt.exp() * (lt - lm)).sum(-1) + (1 - beta) * (ls.exp() * (ls - lm)).sum(-1)

    return _per_row(student_logits, teacher_logits, mask, temperature, chunk_size, fn)


def _full(name: str, teacher: TeacherTargets) -> FullTeacher:
    if not isinstance(teacher, FullTeacher):
        raise TypeError(f"{name!r} needs the teacher's full distribution (FullTeacher: ofsd.teacher_topk 0)")
    return teacher


@register_distill_loss("reverse_kl")
def reverse_kl_loss(student_logits: Tensor, teacher: TeacherTargets, mask: Tensor | None) -> Tensor:
    """`reverse_kl` against a `FullTeacher`: ``[B, T, V] -> [B, T]``."""
    t = _full("reverse_kl", teacher)
    return reverse_kl(student_logits, t.logits, mask, t.temperature)


@register_distill_loss("jsd")
def jsd_loss(student_logits: Tensor, teacher: TeacherTargets, mask: Tensor | None, beta: float = 0.5) -> Tensor:
    """`jsd` against a `FullTeacher`: ``[B, T, V] -> [B, T]`` (``beta`` from ``ofsd.jsd_beta``)."""
    t = _full("jsd", teacher)
    return jsd(student_logits, t.logits, mask, beta, t.temperature)

"""The torch implementation of the fused KD loss: chunks of positions, gradients computed in the forward.

For each chunk it computes both models' logits, the loss, and (Liger style) the gradients with respect to the
student's hidden states, head weight and bias right away, so nothing of size ``vocab`` survives a chunk. The public
entry point is :func:`hf_salt.salt.losses.fused_kd_loss`.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
import torch.nn.functional as F

from hf_salt.salt.divergences import kd_divergence, transform_logits


class _ChunkCfg(NamedTuple):
    kd_weight: float
    divergence: str
    temperature: float
    beta: float
    chunk_size: int
    ignore_index: int
    s_scale: float | None
    s_softcap: float | None
    t_scale: float | None
    t_softcap: float | None
    analytic: bool = False  # closed-form gradient (forward KL / CE without logit transforms)


def _chunk_terms(
    z_raw: torch.Tensor, zt: torch.Tensor | None, tgt: torch.Tensor, cfg: _ChunkCfg
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Per-chunk sums (CE, KD) from fp32 student logits ``z_raw`` (pre-transform) and teacher logits ``zt``."""
    z = transform_logits(z_raw, cfg.s_scale, cfg.s_softcap)
    ce = F.cross_entropy(z, tgt, ignore_index=cfg.ignore_index, reduction="sum")
    if zt is None:
        return ce, ce, None
    mask = tgt != cfg.ignore_index
    kd = (
        kd_divergence(z, zt, divergence=cfg.divergence, temperature=cfg.temperature, beta=cfg.beta) * mask
    ).sum()
    return (1.0 - cfg.kd_weight) * ce + cfg.kd_weight * kd, ce, kd


def _autograd_chunk(hs, w_s, b_s, ht, w_t, b_t, tgt, cfg: _ChunkCfg, inv_norm, want_grad: bool, bufs):
    """Any divergence or logit transform: the chunk's terms through autograd, dz taken right away.
    Same signature and returns as :func:`_closed_form_chunk` (``bufs`` unused)."""
    acc = torch.promote_types(hs.dtype, torch.float32)
    zt = tce = None
    if ht is not None:
        zt = transform_logits(F.linear(ht, w_t, b_t).to(acc), cfg.t_scale, cfg.t_softcap)
        tce = F.cross_entropy(zt, tgt, ignore_index=cfg.ignore_index, reduction="sum")
    z_raw = F.linear(hs, w_s, b_s).to(acc)
    if not want_grad:
        return (*_chunk_terms(z_raw, zt, tgt, cfg), tce, None)
    with torch.enable_grad():
        z_raw.requires_grad_(True)
        total, ce, kd = _chunk_terms(z_raw, zt, tgt, cfg)
        (dz,) = torch.autograd.grad(total * inv_norm, z_raw)
    return total, ce, kd, tce, dz


def _logits_into(out: torch.Tensor, h: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
    """``h @ w.T + b`` written into a reused buffer: a fresh ``[chunk, vocab]`` tensor per chunk costs more than
    the passes over it on CPU (page faults of a new allocation)."""
    # under autocast an out= matmul would run in the buffer's fp32 instead of bf16: let autocast pick, then copy
    if h.dtype == w.dtype == out.dtype and not torch.is_autocast_enabled(h.device.type):
        return torch.mm(h, w.t(), out=out) if b is None else torch.addmm(b, h, w.t(), out=out)
    return out.copy_(F.linear(h, w, b))


def _closed_form_chunk(
    hs: torch.Tensor,
    w_s: torch.Tensor,
    b_s: torch.Tensor | None,
    ht: torch.Tensor | None,
    w_t: torch.Tensor | None,
    b_t: torch.Tensor | None,
    tgt: torch.Tensor,
    cfg: _ChunkCfg,
    inv_norm: Any,
    want_grad: bool,
    bufs: list[torch.Tensor],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """Closed form for the default case (CE and/or forward KL, no student logit transform): no graph, no fresh
    ``[chunk, vocab]`` tensor at tau = 1 (three reused buffers ``bufs``), one exp pass per model, and CE, teacher
    CE, KL and the gradient all read the same buffers. Returns (total, ce, kd, teacher_ce, dz); ``dz`` is a view
    of a buffer, valid until the next chunk.

    With p = softmax(zt / tau), q_tau = softmax(z / tau) and e_t = exp(zt / tau - max), s_t = sum e_t, per row
    KL(p || q_tau) = sum_v e_t (zt - z) / (tau s_t) - lse(zt / tau) + lse(z / tau), and d/dz of
    (1-w) CE + w tau^2 KL is (1-w) (softmax(z) - onehot(y)) + w tau (q_tau - p)."""
    rows = hs.shape[0]
    has_t = ht is not None
    w = cfg.kd_weight if has_t else 0.0
    tau = cfg.temperature
    valid = (tgt != cfg.ignore_index).to(bufs[0].dtype)
    tgt0 = tgt.clamp_min(0).unsqueeze(1)
    kd = tce = e_t = s_t = None
    if has_t:
        zt, e_t = _logits_into(bufs[1][:rows], ht, w_t, b_t), bufs[2][:rows]
        if cfg.t_scale not in (None, 1.0) or cfg.t_softcap:
            zt.copy_(transform_logits(zt, cfg.t_scale, cfg.t_softcap))
        gold_t = zt.gather(1, tgt0)
        lse_t1 = torch.logsumexp(zt, dim=-1, keepdim=True) if tau != 1.0 else None
        if tau != 1.0:
            zt.div_(tau)
        m_t = zt.amax(-1, keepdim=True)
        s_t = torch.sub(zt, m_t, out=e_t).exp_().sum(-1, keepdim=True)
        lse_t = s_t.log().add_(m_t)  # lse(zt / tau)
        tce = ((lse_t if lse_t1 is None else lse_t1) - gold_t).squeeze(1).mul(valid).sum()
    z = _logits_into(bufs[0][:rows], hs, w_s, b_s)
    gold = z.gather(1, tgt0)
    m = z.amax(-1, keepdim=True)
    if has_t:  # sum_v e_t (zt - z) / tau, computed in zt's buffer (zt is not needed any more)
        cross = zt.sub_(z, alpha=1.0 / tau).mul_(e_t).sum(-1, keepdim=True)
    e_q = None
    if has_t and tau != 1.0:
        e_q = torch.sub(z, m).div_(tau).exp_()
        s_q = e_q.sum(-1, keepdim=True)
        lse_q = s_q.log().add_(m / tau)
    s = z.sub_(m).exp_().sum(-1, keepdim=True)  # z's buffer now holds exp(z - max)
    lse = s.log().add_(m)
    ce = (lse - gold).squeeze(1).mul(valid).sum()
    if has_t:
        if e_q is None:
            lse_q = lse
        kd = (cross / s_t - lse_t + lse_q).squeeze(1).mul(valid).sum() * (tau * tau)
    total = (1.0 - w) * ce + w * kd if has_t else ce
    if not want_grad:
        return total, ce, kd, tce, None
    r = (valid * inv_norm).unsqueeze(1)  # the loss's normaliser, 0 on ignored rows
    dz = z
    if e_q is None:  # (1 - w) softmax(z) + w tau softmax(z / tau) = softmax(z) at tau = 1
        dz.mul_(r / s)
    else:
        dz.mul_((1.0 - w) * r / s).addcmul_(e_q, (w * tau) * r / s_q)
    if has_t:
        dz.addcmul_(e_t, -(w * tau) * r / s_t)
    dz.scatter_add_(1, tgt0, (-(1.0 - w) * r).to(dz.dtype))
    return total, ce, kd, tce, dz


class _FusedKD(torch.autograd.Function):
    """Chunked loss with gradients computed in the forward pass (no logits kept for backward)."""

    @staticmethod
    def forward(ctx, h_s, w_s, b_s, h_t, w_t, b_t, targets, inv_norm, cfg: _ChunkCfg):  # type: ignore[override]
        need_h, need_w, need_b = ctx.needs_input_grad[0], ctx.needs_input_grad[1], ctx.needs_input_grad[2]
        any_grad = need_h or need_w or need_b
        n = h_s.shape[0]
        grad_h = torch.zeros_like(h_s) if need_h else None
        acc = torch.promote_types(h_s.dtype, torch.float32)  # fp32, or fp64 for reference checks
        grad_w = torch.zeros(w_s.shape, dtype=acc, device=w_s.device) if need_w else None
        grad_b = torch.zeros(b_s.shape, dtype=acc, device=b_s.device) if need_b else None
        zero = torch.zeros((), dtype=acc, device=h_s.device)
        loss_acc, ce_acc = zero.clone(), zero.clone()
        kd_acc = tce_acc = None
        if h_t is not None:
            kd_acc, tce_acc = zero.clone(), zero.clone()
        bufs: list[torch.Tensor] = []
        if cfg.analytic:
            rows, vocab = min(cfg.chunk_size, n), w_s.shape[0]
            bufs = [
                torch.empty(rows, vocab, dtype=acc, device=h_s.device)
                for _ in range(1 + 2 * (h_t is not None))
            ]
        chunk_fn = _closed_form_chunk if cfg.analytic else _autograd_chunk
        for start in range(0, n, cfg.chunk_size):
            end = min(start + cfg.chunk_size, n)
            hs, tgt = h_s[start:end], targets[start:end]
            ht = h_t[start:end] if h_t is not None else None
            total, ce, kd, tce, dz = chunk_fn(hs, w_s, b_s, ht, w_t, b_t, tgt, cfg, inv_norm, any_grad, bufs)
            if dz is not None:
                if need_h:
                    grad_h[start:end] = (dz.to(w_s.dtype) @ w_s).to(h_s.dtype)
                if need_w:
                    grad_w.addmm_(dz.t(), hs.to(acc))
                if need_b:
                    grad_b += dz.sum(0)
                del dz
            loss_acc += total.detach()
            ce_acc += ce.detach()
            if kd is not None:
                kd_acc += kd.detach()
                tce_acc += tce
        ctx.save_for_backward(
            grad_h if grad_h is not None else torch.empty(0),
            grad_w.to(w_s.dtype) if grad_w is not None else torch.empty(0),
            grad_b.to(b_s.dtype) if grad_b is not None else torch.empty(0),
        )
        ctx.mark_non_differentiable(ce_acc)
        outs = [loss_acc * inv_norm, ce_acc]
        if kd_acc is not None:
            ctx.mark_non_differentiable(kd_acc, tce_acc)
            outs += [kd_acc, tce_acc]
        return tuple(outs)

    @staticmethod
    def backward(ctx, grad_loss, *_unused):  # type: ignore[override]
        grad_h, grad_w, grad_b = ctx.saved_tensors
        need_h, need_w, need_b = ctx.needs_input_grad[0], ctx.needs_input_grad[1], ctx.needs_input_grad[2]
        return (
            grad_h * grad_loss.to(grad_h.dtype) if need_h else None,
            grad_w * grad_loss.to(grad_w.dtype) if need_w else None,
            grad_b * grad_loss.to(grad_b.dtype) if need_b else None,
            None,
            None,
            None,
            None,
            None,
            None,
        )

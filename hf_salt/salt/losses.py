"""Knowledge-distillation losses for SALT, computed from hidden states without full logits.

The objective of one optimizer step (``N`` = tokens with a label, over all micro-batches and ranks)::

    L = 1/N * sum_t [ (1 - w) * CE(y_t, q_t) + w * tau^2 * D(p_t^tau, q_t^tau) ]

``q`` is the student's next-token distribution, ``p`` the teacher's, ``x^tau = softmax(z / tau)``, and ``D`` one of

- ``forward_kl``: KL(p || q) = sum_v p_v (log p_v - log q_v). Cross-entropy to the teacher's distribution
  (the usual reading of SALT) equals KL(p || q) + H(p); H(p) does not depend on the student, so both have the
  same gradient. We report the KL because it is 0 when the student matches the teacher.
- ``reverse_kl``: KL(q || p).
- ``jsd``: generalised Jensen-Shannon with ``beta`` (TRL/Liger convention): with m = beta * p + (1 - beta) * q,
  ``beta * KL(p || m) + (1 - beta) * KL(q || m)``; ``beta = 0`` is forward KL and ``beta = 1`` reverse KL.

The KD term is multiplied by ``tau^2`` (Hinton et al. 2015) so its gradient keeps the same scale whatever the
temperature; at the default ``tau = 1`` this changes nothing. The hard CE always uses ``tau = 1``.

Memory: :func:`fused_kd_loss` never builds ``[batch, seq, vocab]`` logits for either model. It walks over chunks
of positions; for each chunk it computes both models' logits, the loss, and (Liger style) the gradients with
respect to the student's hidden states, head weight and bias right away, so nothing of size ``vocab`` survives a
chunk and the student head matmul runs once per chunk in the forward and twice in the backward (the minimum).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100


# ----------------------------------------------------------------------------------------------------------------
# Per-position divergences on log-probabilities (shape [..., vocab] -> [...])
# ----------------------------------------------------------------------------------------------------------------
def forward_kl(student_logp: torch.Tensor, teacher_logp: torch.Tensor) -> torch.Tensor:
    """KL(teacher || student) per position."""
    return (teacher_logp.exp() * (teacher_logp - student_logp)).sum(-1)


def reverse_kl(student_logp: torch.Tensor, teacher_logp: torch.Tensor) -> torch.Tensor:
    """KL(student || teacher) per position."""
    return (student_logp.exp() * (student_logp - teacher_logp)).sum(-1)


def jsd(student_logp: torch.Tensor, teacher_logp: torch.Tensor, beta: float = 0.5) -> torch.Tensor:
    """Generalised JSD per position: beta * KL(p || m) + (1 - beta) * KL(q || m), m = beta p + (1 - beta) q."""
    if beta == 0.0:
        return forward_kl(student_logp, teacher_logp)
    if beta == 1.0:
        return reverse_kl(student_logp, teacher_logp)
    log_m = torch.logsumexp(
        torch.stack([teacher_logp + math.log(beta), student_logp + math.log(1.0 - beta)]), dim=0
    )
    kl_p = (teacher_logp.exp() * (teacher_logp - log_m)).sum(-1)
    kl_q = (student_logp.exp() * (student_logp - log_m)).sum(-1)
    return beta * kl_p + (1.0 - beta) * kl_q


# ----------------------------------------------------------------------------------------------------------------
# The divergence registry: what each fused backend can compute is declared here, next to the divergence
# ----------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Divergence:
    """A KD divergence and what the fused backends know about it.

    Attributes:
        name: the ``kd_divergence`` value.
        fn: ``fn(student_logp, teacher_logp, beta) -> [...]`` per position, on log-probabilities.
        liger_beta: the ``beta`` of Liger's fused generalised JSD that computes exactly this divergence
            (``beta -> beta'``); None when Liger cannot compute it (the liger backend then refuses and ``auto``
            falls back to torch, rather than training on another divergence).
        closed_form: the torch backend's analytic gradient applies (no autograd inside the chunk loop).
    """

    name: str
    fn: Callable[[torch.Tensor, torch.Tensor, float], torch.Tensor]
    liger_beta: Callable[[float], float] | None = None
    closed_form: bool = False


DIVERGENCES: dict[str, Divergence] = {}


def register_divergence(divergence: Divergence) -> Divergence:
    """Add a divergence (``kd_divergence=name`` then selects it); returns it."""
    DIVERGENCES[divergence.name] = divergence
    return divergence


register_divergence(
    Divergence(
        "forward_kl", lambda s, t, beta: forward_kl(s, t), liger_beta=lambda beta: 0.0, closed_form=True
    )
)
register_divergence(
    Divergence("reverse_kl", lambda s, t, beta: reverse_kl(s, t), liger_beta=lambda beta: 1.0)
)
register_divergence(Divergence("jsd", jsd, liger_beta=lambda beta: beta))


def get_divergence(name: str) -> Divergence:
    try:
        return DIVERGENCES[name]
    except KeyError:
        raise ValueError(f"divergence must be one of {tuple(DIVERGENCES)}, got {name!r}.") from None


def kd_divergence(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    *,
    divergence: str = "forward_kl",
    temperature: float = 1.0,
    beta: float = 0.5,
) -> torch.Tensor:
    """Per-position KD term ``tau^2 * D(p^tau, q^tau)`` from (already transformed) logits."""
    _check_divergence(divergence, temperature, beta)
    s = F.log_softmax(student_logits / temperature, dim=-1)
    t = F.log_softmax(teacher_logits / temperature, dim=-1)
    return get_divergence(divergence).fn(s, t, beta) * (temperature * temperature)


def transform_logits(
    logits: torch.Tensor, logit_scale: float | None = None, softcap: float | None = None
) -> torch.Tensor:
    """Apply a model's final logit transform: multiply by ``logit_scale`` (Cohere; Granite uses 1/logits_scaling),
    then soft-cap ``softcap * tanh(z / softcap)`` (Gemma 2/3)."""
    if logit_scale is not None and logit_scale != 1.0:
        logits = logits * logit_scale
    if softcap:
        logits = softcap * torch.tanh(logits / softcap)
    return logits


def logit_transform(config: Any) -> tuple[float | None, float | None]:
    """(scale, softcap) a model applies to its final logits, read from its config: Cohere ``logit_scale``,
    Granite 1/``logits_scaling``, Gemma 2/3 ``final_logit_softcapping``. The one place that knows them; the
    fused KD loss and SALT_DS scoring both apply it with :func:`transform_logits`."""
    scale = getattr(config, "logit_scale", None)
    if getattr(config, "logits_scaling", None):
        scale = 1.0 / config.logits_scaling
    return scale, getattr(config, "final_logit_softcapping", None)


def shift_targets(labels: torch.Tensor, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """HF causal-LM convention: hidden[t] predicts labels[t + 1]. The last position predicts nothing.

    This is the single place where the shift happens; everything downstream is position-aligned.
    """
    return F.pad(labels[..., 1:], (0, 1), value=ignore_index)


class KDLossOutput(NamedTuple):
    """Result of the KD losses. Only ``loss`` carries gradient; the rest are detached sums for logging."""

    loss: torch.Tensor
    ce_sum: torch.Tensor
    kd_sum: torch.Tensor | None
    teacher_ce_sum: torch.Tensor | None
    num_tokens: torch.Tensor


def kd_loss_from_logits(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor | None,
    labels: torch.Tensor,
    *,
    kd_weight: float = 1.0,
    divergence: str = "forward_kl",
    temperature: float = 1.0,
    beta: float = 0.5,
    num_items_in_batch: torch.Tensor | int | None = None,
    shift_labels: bool = True,
    ignore_index: int = IGNORE_INDEX,
) -> KDLossOutput:
    """Plain reference of the SALT objective from full logits. The specification :func:`fused_kd_loss` must match;
    also handy for small models. Logits are used as given (apply :func:`transform_logits` first)."""
    targets = shift_targets(labels, ignore_index) if shift_labels else labels
    v = student_logits.shape[-1]
    z = (
        student_logits.reshape(-1, v).float()
        if student_logits.dtype != torch.float64
        else student_logits.reshape(-1, v)
    )
    tgt = targets.reshape(-1)
    mask = tgt != ignore_index
    n = mask.sum()
    norm = n.clamp_min(1) if num_items_in_batch is None else num_items_in_batch
    ce = F.cross_entropy(z, tgt, ignore_index=ignore_index, reduction="sum")
    kd = tce = None
    total = (1.0 - kd_weight) * ce if teacher_logits is not None else ce
    if teacher_logits is not None:
        zt = teacher_logits.reshape(-1, teacher_logits.shape[-1]).to(z.dtype)
        kd = (kd_divergence(z, zt, divergence=divergence, temperature=temperature, beta=beta) * mask).sum()
        tce = F.cross_entropy(zt, tgt, ignore_index=ignore_index, reduction="sum")
        total = total + kd_weight * kd
        kd, tce = kd.detach(), tce.detach()
    return KDLossOutput(total / norm, ce.detach(), kd, tce, n)


# ----------------------------------------------------------------------------------------------------------------
# Fused, chunked loss from hidden states
# ----------------------------------------------------------------------------------------------------------------
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


def liger_available() -> bool:
    try:
        import liger_kernel.chunked_loss  # noqa: F401
    except ImportError:
        return False
    return True


def _liger_refusal(divergence: Divergence, plain_logits: bool) -> str | None:
    if divergence.liger_beta is None:
        return f"has no kernel for kd_divergence={divergence.name!r}; use 'torch' or 'auto'"
    if not plain_logits:
        return "does not support logit soft-capping or a logit scale; use 'torch' or 'auto'"
    return None


@dataclass(frozen=True)
class LossBackend:
    """An implementation of the fused KD loss and its capabilities.

    Attributes:
        name: the ``kd_loss_backend`` value.
        available: whether its package is installed; ``install`` says how to get it.
        refusal: ``refusal(divergence, plain_logits)`` says why this backend cannot compute that case exactly
            (None when it can). An explicit choice that is refused raises; ``auto`` falls back to torch.
        auto_devices: device types on which ``auto`` prefers this backend over torch.
    """

    name: str
    available: Callable[[], bool]
    refusal: Callable[[Divergence, bool], str | None]
    auto_devices: tuple[str, ...] = ()
    install: str = ""


LOSS_BACKENDS: dict[str, LossBackend] = {
    "torch": LossBackend("torch", lambda: True, lambda divergence, plain_logits: None),
    "liger": LossBackend(
        "liger",
        liger_available,
        _liger_refusal,
        auto_devices=("cuda",),
        install="liger-kernel: `pip install hf-salt[liger]` (or liger-kernel>=0.6)",
    ),
}
BACKENDS = ("auto", *LOSS_BACKENDS)


def resolve_backend(
    backend: str,
    *,
    device: torch.device,
    plain_logits: bool,
    has_teacher: bool,
    divergence: str = "forward_kl",
) -> str:
    """Pick the implementation from the registered capabilities. ``auto`` uses a specialised backend only where
    it computes exactly our objective (e.g. Liger: CUDA, a teacher, a divergence it has a kernel for, no logit
    scale/soft-capping); an explicit backend that cannot raises instead of computing something else. Without a
    teacher (stage 2) every backend computes the plain chunked CE with torch."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}.")
    div = get_divergence(divergence)
    if backend == "auto":
        for impl in LOSS_BACKENDS.values():
            if (
                has_teacher
                and device.type in impl.auto_devices
                and impl.available()
                and impl.refusal(div, plain_logits) is None
            ):
                return impl.name
        return "torch"
    impl = LOSS_BACKENDS[backend]
    if not impl.available():
        raise ImportError(
            f"kd_loss_backend={backend!r} needs {impl.install}, or use kd_loss_backend='auto' / 'torch'."
        )
    reason = impl.refusal(div, plain_logits)
    if reason is not None:
        raise ValueError(f"kd_loss_backend={backend!r} {reason}.")
    return backend if has_teacher else "torch"


def _teacher_ce_sum(h_t, w_t, b_t, targets, cfg: _ChunkCfg) -> torch.Tensor:
    """Sum of the teacher's next-token CE, chunked and without grad: the NaN/inf-teacher guard and the
    ``teacher_ce`` log read it, whichever backend computed the loss."""
    acc = torch.promote_types(h_t.dtype, torch.float32)
    total = torch.zeros((), dtype=acc, device=h_t.device)
    with torch.no_grad():
        for start in range(0, h_t.shape[0], cfg.chunk_size):
            end = start + cfg.chunk_size
            zt = F.linear(h_t[start:end], w_t, b_t).to(acc)
            total += F.cross_entropy(zt, targets[start:end], ignore_index=cfg.ignore_index, reduction="sum")
    return total


def _liger_loss(h_s, w_s, b_s, h_t, w_t, b_t, targets, norm, cfg: _ChunkCfg, n_local) -> KDLossOutput:
    """Liger's fused linear JSD with weights chosen to give our objective; the same logged components as the
    torch backend (``kd_sum`` with its tau^2, ``teacher_ce_sum``)."""
    from liger_kernel.chunked_loss import LigerFusedLinearJSDLoss

    beta = get_divergence(cfg.divergence).liger_beta(cfg.beta)
    t2 = cfg.temperature * cfg.temperature
    fn = LigerFusedLinearJSDLoss(
        weight_hard_loss=1.0 - cfg.kd_weight,
        weight_soft_loss=cfg.kd_weight * t2,
        beta=beta,
        ignore_index=cfg.ignore_index,
        temperature=cfg.temperature,
        compiled=h_s.device.type
        == "cuda",  # torch.compile of the chunk step: worth it (and tested) on CUDA only
        chunk_size=cfg.chunk_size,
        return_soft_hard_loss=True,
    )
    loss, soft, hard = fn(h_s, w_s, h_t, w_t, targets, b_s, b_t)
    # Liger divides by the local count of valid tokens; we want sums, and the global normaliser for the loss.
    scale = n_local.clamp_min(1).to(loss.dtype)
    tce = _teacher_ce_sum(h_t, w_t, b_t, targets, cfg)
    return KDLossOutput(loss * scale / norm, hard.detach() * scale, soft.detach() * scale * t2, tce, n_local)


def fused_kd_loss(
    student_hidden: torch.Tensor,
    student_head_weight: torch.Tensor,
    teacher_hidden: torch.Tensor | None,
    teacher_head_weight: torch.Tensor | None,
    labels: torch.Tensor,
    *,
    kd_weight: float = 1.0,
    divergence: str = "forward_kl",
    temperature: float = 1.0,
    beta: float = 0.5,
    num_items_in_batch: torch.Tensor | int | None = None,
    student_bias: torch.Tensor | None = None,
    teacher_bias: torch.Tensor | None = None,
    student_logit_scale: float | None = None,
    student_softcap: float | None = None,
    teacher_logit_scale: float | None = None,
    teacher_softcap: float | None = None,
    chunk_size: int = 1024,
    shift_labels: bool = True,
    ignore_index: int = IGNORE_INDEX,
    backend: str = "auto",
) -> KDLossOutput:
    """SALT loss ``sum_t [(1 - w) CE + w tau^2 D] / num_items_in_batch`` from final hidden states.

    Args:
        student_hidden: ``[batch, seq, H_s]`` (or ``[tokens, H_s]``) final hidden states (what the LM head reads).
        student_head_weight: ``[vocab, H_s]`` output-layer weight.
        teacher_hidden / teacher_head_weight: the same for the teacher (``H_t`` may differ from ``H_s``);
            ``None`` gives the plain chunked cross-entropy (SALT stage 2) without touching a teacher.
        labels: token ids with -100 where no loss is wanted; unshifted (HF convention) unless
            ``shift_labels=False`` (then ``labels[t]`` is the target of ``hidden[t]``).
        kd_weight: w in the formula; 1.0 gives pure KD.
        num_items_in_batch: the normaliser (tokens in the whole optimizer step and all ranks); defaults to the
            number of valid tokens here.
        chunk_size: positions per chunk; memory is O(chunk_size * vocab).

    Returns:
        :class:`KDLossOutput`; ``loss`` is differentiable w.r.t. the student's hidden states, head weight and
        bias. ``ce_sum``, ``kd_sum``, ``teacher_ce_sum`` are detached sums over valid tokens (unnormalised).
    """
    _check_divergence(divergence, temperature, beta)
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}.")
    if (teacher_hidden is None) != (teacher_head_weight is None):
        raise ValueError("Pass both teacher_hidden and teacher_head_weight, or neither.")
    targets = shift_targets(labels, ignore_index) if shift_labels else labels
    h_s = student_hidden.reshape(-1, student_hidden.shape[-1])
    tgt = targets.reshape(-1).to(h_s.device)
    if tgt.shape[0] != h_s.shape[0]:
        raise ValueError(f"labels give {tgt.shape[0]} positions but student_hidden has {h_s.shape[0]}.")
    h_t = None
    if teacher_hidden is not None:
        h_t = teacher_hidden.reshape(-1, teacher_hidden.shape[-1]).detach()
        if h_t.shape[0] != h_s.shape[0]:
            raise ValueError(f"teacher_hidden has {h_t.shape[0]} positions, student_hidden {h_s.shape[0]}.")
        if teacher_head_weight.shape[0] != student_head_weight.shape[0]:
            raise ValueError(
                f"Teacher vocabulary ({teacher_head_weight.shape[0]}) != student vocabulary "
                f"({student_head_weight.shape[0]}); slice both head weights to the shared tokenizer length."
            )
        teacher_head_weight = teacher_head_weight.detach()
        teacher_bias = teacher_bias.detach() if teacher_bias is not None else None
    n_local = (tgt != ignore_index).sum()
    norm = n_local.clamp_min(1) if num_items_in_batch is None else num_items_in_batch
    if torch.is_tensor(norm):
        norm = norm.to(device=h_s.device, dtype=torch.promote_types(h_s.dtype, torch.float32))
    cfg = _ChunkCfg(
        float(kd_weight) if h_t is not None else 0.0,
        divergence,
        float(temperature),
        float(beta),
        int(chunk_size),
        int(ignore_index),
        student_logit_scale,
        student_softcap,
        teacher_logit_scale,
        teacher_softcap,
        analytic=(h_t is None or get_divergence(divergence).closed_form)
        and student_logit_scale in (None, 1.0)
        and not student_softcap,
    )
    plain = not (
        student_logit_scale not in (None, 1.0)
        or student_softcap
        or teacher_logit_scale not in (None, 1.0)
        or teacher_softcap
    )
    impl = resolve_backend(
        backend, device=h_s.device, plain_logits=plain, has_teacher=h_t is not None, divergence=divergence
    )
    if impl == "liger":
        return _liger_loss(
            h_s,
            student_head_weight,
            student_bias,
            h_t,
            teacher_head_weight,
            teacher_bias,
            tgt,
            norm,
            cfg,
            n_local,
        )
    inv_norm = 1.0 / norm
    outs = _FusedKD.apply(
        h_s, student_head_weight, student_bias, h_t, teacher_head_weight, teacher_bias, tgt, inv_norm, cfg
    )
    if h_t is None:
        return KDLossOutput(outs[0], outs[1], None, None, n_local)
    return KDLossOutput(outs[0], outs[1], outs[2], outs[3], n_local)


def _check_divergence(divergence: str, temperature: float, beta: float) -> None:
    get_divergence(divergence)
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}.")
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"jsd beta must be in [0, 1], got {beta}.")

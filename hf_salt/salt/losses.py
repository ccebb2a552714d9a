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

from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F

from hf_salt.salt.divergences import (  # noqa: F401  (re-exported: the loss API names them)
    DIVERGENCES,
    Divergence,
    _check_divergence,
    forward_kl,
    get_divergence,
    jsd,
    kd_divergence,
    logit_transform,
    register_divergence,
    reverse_kl,
    transform_logits,
)
from hf_salt.salt.kernels.chunked import _ChunkCfg, _FusedKD
from hf_salt.salt.kernels.liger import liger_available, liger_loss

IGNORE_INDEX = -100


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
# Backends of the fused loss (hf_salt.salt.kernels) and what each can compute
# ----------------------------------------------------------------------------------------------------------------
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
        return KDLossOutput(
            *liger_loss(
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
        )
    inv_norm = 1.0 / norm
    outs = _FusedKD.apply(
        h_s, student_head_weight, student_bias, h_t, teacher_head_weight, teacher_bias, tgt, inv_norm, cfg
    )
    if h_t is None:
        return KDLossOutput(outs[0], outs[1], None, None, n_local)
    return KDLossOutput(outs[0], outs[1], outs[2], outs[3], n_local)

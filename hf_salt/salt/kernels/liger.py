"""Liger-Kernel's fused linear JSD as a backend of the fused KD loss (CUDA; optional ``liger-kernel``)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from hf_salt.salt.divergences import get_divergence
from hf_salt.salt.kernels.chunked import _ChunkCfg


def liger_available() -> bool:
    try:
        import liger_kernel.chunked_loss  # noqa: F401
    except ImportError:
        return False
    return True


def teacher_ce_sum(h_t, w_t, b_t, targets, cfg: _ChunkCfg) -> torch.Tensor:
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


def liger_loss(h_s, w_s, b_s, h_t, w_t, b_t, targets, norm, cfg: _ChunkCfg, n_local) -> tuple:
    """Liger's fused linear JSD with weights chosen to give our objective; the same logged components as the
    torch backend (``kd_sum`` with its tau^2, ``teacher_ce_sum``), as the fields of a ``KDLossOutput``."""
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
    tce = teacher_ce_sum(h_t, w_t, b_t, targets, cfg)
    return loss * scale / norm, hard.detach() * scale, soft.detach() * scale * t2, tce, n_local

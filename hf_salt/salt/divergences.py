"""KD divergences and the models' final logit transforms: the math the SALT losses are made of.

Divergences act per position on log-probabilities (``[..., vocab] -> [...]``); each is registered with what the fused
backends know about it (:class:`Divergence`), so an implementation never computes another divergence than the one
asked. See :mod:`hf_salt.salt.losses` for the objective they enter.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F


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


def _check_divergence(divergence: str, temperature: float, beta: float) -> None:
    get_divergence(divergence)
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}.")
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"jsd beta must be in [0, 1], got {beta}.")

"""Which way SALT computes a model's loss: the fused chunked head, or the model's own logits — proven per model.

The fused loss (:func:`hf_salt.salt.losses.fused_kd_loss`) recomputes the logits as
``transform(head(base_model(x)))``, with the transforms :func:`~hf_salt.salt.losses.logit_transform` knows. A model
whose forward does anything else (a transform before the projection, a multiplier under another name, a logits
bias, an extra term in its loss) would train on another objective than its own, with no error. So before the first
step each model is probed once, on a short fixed sequence with dropout off:

1. its own ``forward(input_ids, labels=input_ids)`` gives the reference logits and loss;
2. the fused path must reproduce those logits, and the cross-entropy of the logits must be the model's loss;
3. a difference in the loss that is exactly ``router_aux_loss_coef * aux_loss`` (MoE models whose config enables
   the router's auxiliary loss) is added the same way the model adds it, on the model's-logits path (the fused
   path has no router outputs).

Outcome: ``fused`` (memory-light, the default for most models), ``logits`` (the model's own forward and its full
``[batch, seq, vocab]`` logits: correct, memory-heavier, logged once), or a ``ValueError`` naming the model type
and what differs, when even the model's own logits do not give its own loss.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import nn

from hf_salt.salt.losses import kd_loss_from_logits

PROBE_TOKENS = 16


@dataclass(frozen=True)
class OutputPath:
    """How one model's loss is computed in SALT, and why.

    Attributes:
        model_type: ``config.model_type`` of the probed model.
        fused: the student may take the fused chunked path: its head reproduces the model's logits and its loss
            has no extra term.
        head_exact: ``transform(head(base_model(x)))`` reproduces the model's logits (all a teacher needs).
        aux_loss_coef: the weight of the router's auxiliary loss the model adds to its own loss, else None.
        reason: why the fused path is not used (None when it is).
        logit_error: max |fused logits - own logits| / max(1, max |own logits|) on the probe.
    """

    model_type: str
    fused: bool
    head_exact: bool
    aux_loss_coef: float | None = None
    reason: str | None = None
    logit_error: float = 0.0

    def describe(self) -> str:
        if self.fused:
            return f"{self.model_type}: fused chunked head (reproduces the model's logits)"
        return f"{self.model_type}: the model's own logits ({self.reason})"


def probe_ids(vocab_size: int, device: torch.device | str, length: int = PROBE_TOKENS) -> torch.Tensor:
    """A fixed, rank-independent probe sequence (every rank reaches the same decision, so sharded runs stay in
    step): spread over the vocabulary, no special structure."""
    ids = (torch.arange(length, dtype=torch.long) * 7919 + 13) % max(int(vocab_size), 1)
    return ids.unsqueeze(0).to(device)


def _tolerance(dtype: torch.dtype) -> float:
    return 1e-4 if dtype in (torch.float32, torch.float64) else 3e-2


def _loss_tolerance(dtype: torch.dtype) -> float:
    """Relative tolerance for comparing a loss with the CE of the same logits (the same arithmetic, fp32)."""
    return 2e-5 if dtype in (torch.float32, torch.float64) else 3e-2


def relative_logit_error(ours: torch.Tensor, own: torch.Tensor) -> float:
    """max |ours - own| relative to the logits' magnitude (at least 1): one number to compare with a tolerance."""
    ours, own = ours.float(), own.float()
    if ours.shape != own.shape:
        return float("inf")
    scale = float(own.abs().max().clamp(min=1.0))
    return float((ours - own).abs().max()) / scale


def logits_match(ours: torch.Tensor, own: torch.Tensor) -> bool:
    """Does ``ours`` reproduce the model's ``own`` logits, within the precision of their dtype?"""
    return relative_logit_error(ours, own) <= _tolerance(own.dtype)


@contextlib.contextmanager
def probing(module: nn.Module) -> Iterator[None]:
    """Dropout off and no gradient for the probe, then every module's train/eval flag and the RNG as they were
    (so the probe changes nothing a resumed run would see)."""
    flags = [(m, m.training) for m in module.modules()]
    devices = []
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        devices = [torch.cuda.current_device()]
    with torch.random.fork_rng(devices=devices), torch.no_grad():
        module.eval()
        try:
            yield
        finally:
            for m, training in flags:
                m.training = training


def aux_loss_coef(lm: nn.Module) -> float | None:
    """The router auxiliary-loss weight a MoE model adds to its own loss when its config enables it (JetMoe calls
    it ``aux_loss_coef``)."""
    config = getattr(lm, "config", None)
    if not getattr(config, "output_router_logits", False):
        return None
    for name in ("router_aux_loss_coef", "aux_loss_coef"):
        coef = getattr(lm, name, getattr(config, name, None))
        if coef is not None:
            return float(coef)
    return None


def probe_output_path(
    model_type: str,
    own_forward: Callable[[torch.Tensor], object],
    fused_logits: Callable[[torch.Tensor], torch.Tensor],
    ids: torch.Tensor,
    *,
    aux_coef: float | None,
    what: str,
) -> OutputPath:
    """Decide between the fused path and the model's own logits (see the module docstring).

    Args:
        model_type: for messages.
        own_forward: ``(ids, labels) -> output`` of the model's own forward (``.logits``, ``.loss`` when labels are
            given, and ``.aux_loss`` for MoE models).
        fused_logits: ``ids -> transform(F.linear(base_model(ids), head.weight, head.bias))``, exactly the logits the
            fused path computes (a head whose own forward does more than that must not pass).
        ids: the probe sequence, ``[1, T]``.
        aux_coef: the model's router auxiliary-loss weight when its config enables it (:func:`aux_loss_coef`).
        what: "the student" / "the teacher", for messages.
    """
    # Labels the model itself would predict next: with them the next-token CE is far from the CE of any other
    # alignment (an unshifted loss, for one), even for a freshly initialised, near-uniform model.
    first = own_forward(ids, None).logits
    labels = ids.clone()
    labels[:, 1:] = first[:, :-1].argmax(-1)
    out = own_forward(ids, labels)
    own_logits, own_loss = out.logits, getattr(out, "loss", None)
    if own_loss is None:
        raise ValueError(
            f"{what} ({model_type}) returns no loss for labels=input_ids, so SALT cannot check that it trains "
            "on the model's own objective. SALT needs a *ForCausalLM model that computes its loss from labels."
        )
    tol = _tolerance(own_logits.dtype)
    loss_tol = _loss_tolerance(own_logits.dtype)
    ce = kd_loss_from_logits(own_logits, None, labels).loss  # the next-token CE, SALT's own reference
    extra = float(own_loss.float() - ce)
    aux = getattr(out, "aux_loss", None)
    scale = 1.0 + abs(float(own_loss))
    if abs(extra) > loss_tol * scale:
        explained = (
            aux is not None
            and aux_coef is not None
            and abs(extra - aux_coef * float(aux)) <= loss_tol * scale
        )
        if not explained:
            raise ValueError(
                f"{what} ({model_type}): the model's own loss ({float(own_loss):.6f}) is not the next-token "
                f"cross-entropy of its own logits ({float(ce):.6f}; difference {extra:+.6f}"
                + (f", router aux loss {float(aux):.6f} x {aux_coef}" if aux is not None else "")
                + "). SALT would train on another objective than the model's, so it refuses this model type."
            )
    elif aux is not None and aux_coef is not None and abs(aux_coef * float(aux)) > loss_tol * scale:
        raise ValueError(
            f"{what} ({model_type}) reports a router aux loss ({float(aux):.6f} x {aux_coef}) that its own loss "
            "does not contain; SALT cannot tell how the model weighs it, so it refuses this model type."
        )
    with_aux = aux is not None and aux_coef is not None
    try:
        error = relative_logit_error(fused_logits(ids), own_logits)
    except (RuntimeError, ValueError):  # e.g. a head that projects to another width first (RemBERT)
        error = float("inf")
    if with_aux:
        reason = f"its loss adds the router aux loss x {aux_coef}, which only its own forward returns"
        return OutputPath(model_type, False, error <= tol, aux_coef, reason, error)
    if error > tol:
        reason = (
            f"head(base_model(x)) differs from its logits by {error:.3g} (relative): an output transform "
            "SALT's fused head does not know"
        )
        return OutputPath(model_type, False, False, None, reason, error)
    return OutputPath(model_type, True, True, None, None, error)

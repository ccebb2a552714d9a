"""Checks that a clone computes its source's function: logits, and tiled hidden states."""

from __future__ import annotations

import torch
from transformers import PreTrainedModel


def _inputs(
    model: PreTrainedModel, input_ids: torch.Tensor | None, batch_size: int, seq_len: int, seed: int
) -> torch.Tensor:
    if input_ids is not None:
        return input_ids
    g = torch.Generator().manual_seed(seed)
    vocab = model.get_input_embeddings().num_embeddings
    return torch.randint(0, vocab, (batch_size, seq_len), generator=g)


def _device(model: PreTrainedModel) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def _run(model: PreTrainedModel, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, hidden: bool):
    was_training = model.training
    model.eval()  # dropout off: the comparison must be deterministic
    try:
        kwargs = {"attention_mask": None if attention_mask is None else attention_mask.to(_device(model))}
        return model(input_ids.to(_device(model)), output_hidden_states=hidden, use_cache=False, **kwargs)
    finally:
        model.train(was_training)


def verify(
    small: PreTrainedModel,
    large: PreTrainedModel,
    input_ids: torch.Tensor | None = None,
    *,
    attention_mask: torch.Tensor | None = None,
    batch_size: int = 2,
    seq_len: int = 16,
    seed: int = 0,
) -> float:
    """Largest absolute logit difference between ``small`` and its clone ``large`` (eval mode, no grad).

    With ``input_ids=None`` a seeded random batch is used. In fp32 a correct clone gives ~1e-6 or less.
    """
    ids = _inputs(small, input_ids, batch_size, seq_len, seed)
    a = _run(small, ids, attention_mask, False).logits.double().cpu()
    b = _run(large, ids, attention_mask, False).logits.double().cpu()
    if a.shape != b.shape:
        raise ValueError(
            f"Logit shapes differ: {tuple(a.shape)} vs {tuple(b.shape)} (different vocabularies?)."
        )
    return float((a - b).abs().max())


def hidden_state_error(
    small: PreTrainedModel,
    large: PreTrainedModel,
    input_ids: torch.Tensor | None = None,
    *,
    attention_mask: torch.Tensor | None = None,
    batch_size: int = 2,
    seq_len: int = 16,
    seed: int = 0,
) -> float:
    """Largest ``|h_large - tile(h_small)|`` over every hidden state (embeddings, each block, final).

    Width clones only (a depth-grown clone has more hidden states). The final state follows the final norm;
    when the clone keeps a tied head it was rescaled by ``config.hypercloning['final_norm_scale']``, which is
    undone here. States that were not widened (OPT after ``project_out``) are compared directly.
    """
    ids = _inputs(small, input_ids, batch_size, seq_len, seed)
    hs_small = _run(small, ids, attention_mask, True).hidden_states
    hs_large = _run(large, ids, attention_mask, True).hidden_states
    if len(hs_small) != len(hs_large):
        raise ValueError(
            f"{len(hs_small)} vs {len(hs_large)} hidden states: hidden_state_error compares width clones only."
        )
    info = getattr(large.config, "hypercloning", None) or {}
    last_scale = float(info.get("final_norm_scale", 1.0))
    worst = 0.0
    for i, (hs, hl) in enumerate(zip(hs_small, hs_large)):
        hs, hl = hs.double().cpu(), hl.double().cpu()
        if i == len(hs_small) - 1 and hl.shape != hs.shape:
            hl = hl / last_scale
        if hl.shape[-1] % hs.shape[-1]:
            raise ValueError(f"Hidden state {i}: width {hl.shape[-1]} is not a multiple of {hs.shape[-1]}.")
        reps = hl.shape[-1] // hs.shape[-1]
        worst = max(worst, float((hl - hs.repeat(1, 1, reps)).abs().max()))
    return worst

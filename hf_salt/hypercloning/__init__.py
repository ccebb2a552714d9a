"""HyperCloning (Samragh et al. 2024, arXiv 2409.12903): grow a trained causal LM, same function.

``clone`` / ``from_pretrained`` widen a model (n x hidden size and heads at the same head_dim, m x FFN);
``grow_depth`` (or ``clone(..., depth_multiplier=k)``) adds identity blocks. The growth is read off the model
(no per-family tables) and checked by a traced forward; what cannot grow exactly raises
``HyperCloningRefused`` with a reason from ``REASONS``. Outputs are ordinary models of the source's class.
"""

from __future__ import annotations

from hf_salt.io import save_pretrained_atomic

from .core import clone, from_pretrained, grow_depth
from .optim import GrownLRMixin, lr_scales, ramp_lr_scales, scale_param_groups
from .refusals import REASONS, HyperCloningRefused, UnverifiedCloneWarning
from .verify import hidden_state_error, verify

__all__ = [
    "REASONS",
    "HyperCloningRefused",
    "clone",
    "from_pretrained",
    "grow_depth",
    "GrownLRMixin",
    "lr_scales",
    "ramp_lr_scales",
    "scale_param_groups",
    "hidden_state_error",
    "save_pretrained_atomic",
    "UnverifiedCloneWarning",
    "verify",
]

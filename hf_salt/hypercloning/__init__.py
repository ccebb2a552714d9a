"""HyperCloning (Samragh et al. 2024, arXiv 2409.12903): grow a trained causal LM, same function.

``clone`` / ``from_pretrained`` widen a model (n x hidden size and heads at the same head_dim, m x FFN);
``grow_depth`` (or ``clone(..., depth_multiplier=k)``) adds identity blocks; ``verify`` and
``hidden_state_error`` check the result. Outputs are ordinary models of the source's class.
"""

from __future__ import annotations

from .adapters import Adapter, Shape, get_adapter, register_adapter, supported_model_types
from .core import clone, from_pretrained, grow_depth
from .io import save_pretrained_atomic
from .rules import Rule, apply_rule
from .verify import hidden_state_error, verify

__all__ = [
    "Adapter",
    "Rule",
    "Shape",
    "apply_rule",
    "clone",
    "from_pretrained",
    "get_adapter",
    "grow_depth",
    "hidden_state_error",
    "register_adapter",
    "save_pretrained_atomic",
    "supported_model_types",
    "verify",
]

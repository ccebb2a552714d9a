"""hf-salt: make language-model training cheaper by putting small models to work.

The public API (what a user calls: trainers, configs, callbacks, SALT_DS, data and model helpers) is imported lazily, so `import hf_salt` (and the CLI) start fast and a
missing optional dependency only fails the feature that needs it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> module that defines it
_LAZY: dict[str, str] = {
    # SALT
    "SALTConfig": "hf_salt.salt.config",
    "SALTTrainer": "hf_salt.salt.trainer",
    "KDScheduleCallback": "hf_salt.salt.schedules",
    "kd_weight_at": "hf_salt.salt.schedules",
    "fused_kd_loss": "hf_salt.salt.losses",
    "Divergence": "hf_salt.salt.divergences",
    "register_divergence": "hf_salt.salt.divergences",
    "KDSchedule": "hf_salt.salt.schedules",
    "register_schedule": "hf_salt.salt.schedules",
    "KDState": "hf_salt.salt.schedules",
    # SALT_DS
    "SALTDSSampler": "hf_salt.salt_ds",
    "SALTDSSource": "hf_salt.salt_ds",
    # distilling step-by-step
    "StepByStepConfig": "hf_salt.step_by_step.config",
    "StepByStepTrainer": "hf_salt.step_by_step.trainer",
    "StepByStepCollator": "hf_salt.step_by_step.collator",
    "load_step_by_step": "hf_salt.step_by_step.data",
    "from_prompt_completion": "hf_salt.step_by_step.data",
    "generate_rationales": "hf_salt.step_by_step.rationales",
    "safe_arithmetic": "hf_salt.step_by_step.metrics",
    # checkpoints and resuming
    "AtomicCheckpointMixin": "hf_salt.checkpoints",
    "AtomicCheckpointTrainer": "hf_salt.checkpoints",
    "latest_complete_checkpoint": "hf_salt.checkpoints",
    "resolve_resume": "hf_salt.checkpoints",
    "hold_output": "hf_salt.io",
    "OutputInUse": "hf_salt.io",
    # the Hub
    "HubUploadError": "hf_salt.hub",
    # data and models
    "load_corpus": "hf_salt.data",
    "load_tokenizer": "hf_salt.data",
    "train_tokenizer": "hf_salt.data",
    "pack_dataset": "hf_salt.data",
    "prepare_sft_dataset": "hf_salt.data.sft",
    "SFTDataArguments": "hf_salt.data.sft",
    "build_model": "hf_salt.zoo",
    "build_config": "hf_salt.zoo",
    "load_model": "hf_salt.zoo",
}

# sub-packages reachable as attributes: hf_salt.hypercloning, hf_salt.salt_ds, ... (the experiment engine behind
# `hf-salt demo` / `benchmark`, with `register_arm`, is hf_salt.experiments)
_SUBMODULES = {"salt", "salt_ds", "step_by_step", "hypercloning", "data", "zoo", "cli", "experiments"}

__all__ = sorted(_LAZY) + sorted(_SUBMODULES) + ["__version__"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    if name in _SUBMODULES:
        module = importlib.import_module(f"hf_salt.{name}")
        globals()[name] = module
        return module
    raise AttributeError(f"module 'hf_salt' has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__


if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs only
    from hf_salt.data import load_corpus, load_tokenizer, pack_dataset, train_tokenizer  # noqa: F401
    from hf_salt.zoo import build_config, build_model  # noqa: F401

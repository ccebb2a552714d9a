"""PEFT for the hf-salt trainers: `peft_config=` works as in TRL, with errors for what cannot work.

The fused KD loss computes logits chunk by chunk from the decoder's hidden states and the output layer's
*weight* (`model.get_output_embeddings().weight`), never calling the output layer's `forward`. Two PEFT
set-ups would therefore be silently ignored by that loss, so they are refused when the loss reads the
output layer (`reads_output_layer=True`):

- an adapter (LoRA, IA3, LoHa, ...) on the output layer (`lm_head`, `embed_out`, ...): its low-rank
  delta lives in the layer's `forward`, which the fused loss bypasses;
- prompt learning (prompt/prefix/p-tuning): it edits the inputs inside `PeftModel.forward`, which the
  fused loss bypasses as well.

Training the whole output layer with `modules_to_save=["lm_head"]` is fine: the wrapper exposes the
trainable copy as `.weight`.
"""

from __future__ import annotations

import logging
import re
from typing import Any

import torch
from accelerate.utils import is_peft_model
from transformers import PreTrainedModel, TrainingArguments

logger = logging.getLogger(__name__)

__all__ = ["apply_peft", "output_layer_names"]


def output_layer_names(model: torch.nn.Module) -> list[str]:
    """Qualified names of the module that `get_output_embeddings()` returns (`lm_head`, `embed_out`, ...)."""
    base = model.get_base_model() if is_peft_model(model) else model
    get = getattr(base, "get_output_embeddings", None)
    head = get() if callable(get) else None
    if head is None:
        return []
    prefix = "" if base is model else _prefix_of(model, base)
    names = [name for name, module in base.named_modules() if module is head or _wrapped(module) is head]
    return [prefix + name for name in names] if names else []


def apply_peft(
    model: PreTrainedModel | torch.nn.Module,
    peft_config: Any,
    *,
    args: TrainingArguments,
    reads_output_layer: bool,
) -> torch.nn.Module:
    """Wrap `model` with `peft.get_peft_model(model, peft_config)` the way TRL's trainers do.

    - `peft_config=None`: the model is returned unchanged (an existing `PeftModel` is still checked).
    - `peft_config` must be a `peft.PeftConfig`; a `PeftModel` together with a config is an error
      (train the existing adapter with `peft_config=None`, or `merge_and_unload()` first).
    - The adapters are initialised from `args.seed` (the global RNG is left as it was).
    - Under DeepSpeed ZeRO-3 the adapters are not autocast to fp32 (mixed dtypes break ZeRO-3's
      partitioned buffers); with gradient checkpointing the inputs get `requires_grad` so the frozen
      embeddings still pass gradients to the checkpointed adapters.
    """
    if peft_config is None:
        if is_peft_model(model):
            _check_output_layer_untouched(model, reads_output_layer)
        return model

    try:
        from peft import PeftConfig, get_peft_model
    except ImportError as err:  # pragma: no cover - peft is a dependency of hf-salt
        raise ImportError("peft_config needs the `peft` package: pip install peft") from err

    if not isinstance(peft_config, PeftConfig):
        raise TypeError(
            f"peft_config must be a peft.PeftConfig (e.g. peft.LoraConfig(...)), got {type(peft_config).__name__}."
        )
    if is_peft_model(model):
        raise ValueError(
            "The model is already a PeftModel and a peft_config was given as well. Pass peft_config=None to "
            "train the existing adapter, or call model.merge_and_unload() first to add a new one."
        )
    if reads_output_layer:
        if getattr(peft_config, "is_prompt_learning", False):
            raise ValueError(
                f"{peft_config.peft_type} (prompt learning) cannot be used with the fused KD loss: it edits the "
                "inputs inside PeftModel.forward, which the fused loss does not call. Use LoRA (or another "
                "adapter on the decoder layers), or turn the fused loss off."
            )
        for name in output_layer_names(model):
            if _targets(peft_config, name):
                raise ValueError(
                    f"peft_config puts a {peft_config.peft_type} adapter on the output layer {name!r}, but the "
                    "fused KD loss reads that layer's weight directly, so the adapter would be silently ignored. "
                    f"Remove {name!r} from target_modules (and target_parameters), train the whole layer with "
                    f"modules_to_save=[{name.split('.')[-1]!r}] instead, or turn the fused loss off."
                )

    if getattr(model, "is_loaded_in_4bit", False) or getattr(model, "is_loaded_in_8bit", False):
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(
            model,
            use_gradient_checkpointing=_checkpointing(args),
            gradient_checkpointing_kwargs=getattr(args, "gradient_checkpointing_kwargs", None),
        )
    elif _checkpointing(args) and hasattr(model, "enable_input_require_grads"):
        model.enable_input_require_grads()

    from transformers.integrations.deepspeed import is_deepspeed_zero3_enabled

    autocast = not is_deepspeed_zero3_enabled()
    # adapters start from args.seed, not from whatever the global RNG went through before (model loading,
    # data preparation): the same run then gives the same adapters under 1 or N processes
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(args.seed)
        peft_model = get_peft_model(model, peft_config, autocast_adapter_dtype=autocast)
    if logger.isEnabledFor(logging.INFO):
        trainable, total = peft_model.get_nb_trainable_parameters()
        logger.info("PEFT %s: %d of %d parameters trainable", peft_config.peft_type, trainable, total)
    return peft_model


# --------------------------------------------------------------------------- helpers
def _wrapped(module: torch.nn.Module) -> torch.nn.Module | None:
    """The layer inside a PEFT wrapper (LoRA layer, ModulesToSaveWrapper), else None."""
    for attr in ("base_layer", "original_module"):
        inner = module.__dict__.get("_modules", {}).get(attr)
        if inner is not None:
            return inner
    return None


def _prefix_of(root: torch.nn.Module, child: torch.nn.Module) -> str:
    for name, module in root.named_modules():
        if module is child:
            return f"{name}." if name else ""
    return ""


def _targets(config: Any, name: str) -> bool:
    """Whether `config` would put an adapter on module `name` (PEFT's own matching rules)."""
    from peft.tuners.tuners_utils import check_target_module_exists

    if getattr(config, "target_modules", None) is not None:
        found = check_target_module_exists(config, name)
        if found and type(found).__name__ != "_ExcludedModule":
            return True
    for param in getattr(config, "target_parameters", None) or []:
        if re.fullmatch(rf"(.*\.)?{re.escape(str(param))}", f"{name}.weight") or str(param) == name:
            return True
    return False


def _check_output_layer_untouched(model: torch.nn.Module, reads_output_layer: bool) -> None:
    """An existing PeftModel must not carry an adapter on the output layer when the fused loss reads it."""
    if not reads_output_layer:
        return
    from peft.tuners.tuners_utils import BaseTunerLayer

    config = next(iter(model.peft_config.values()), None)
    if config is not None and getattr(config, "is_prompt_learning", False):
        raise ValueError(
            f"The PeftModel uses {config.peft_type} (prompt learning), which the fused KD loss bypasses. "
            "Use an adapter method such as LoRA, or turn the fused loss off."
        )
    head = model.get_output_embeddings()
    if isinstance(head, BaseTunerLayer):
        raise ValueError(
            f"The PeftModel has an adapter on its output layer ({type(head).__name__}); the fused KD loss reads "
            "that layer's weight directly and would ignore the adapter. Merge it (merge_and_unload()) or use an "
            "adapter without the output layer."
        )


def _checkpointing(args: Any) -> bool:
    # transformers 5.23 renamed gradient_checkpointing to activation_checkpointing (the old name is an alias)
    return bool(
        getattr(args, "activation_checkpointing", False) or getattr(args, "gradient_checkpointing", False)
    )

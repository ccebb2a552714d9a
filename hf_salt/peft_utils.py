"""PEFT for the hf-salt trainers: `peft_config=` works as in TRL's trainers, with the same refusals.

The fused KD loss computes logits chunk by chunk from the decoder's hidden states and the output layer's
*weight* (`model.get_output_embeddings().weight`), never calling the output layer's `forward` or
`PeftModel.forward`. Like TRL's distillation / GRPO trainers, hf-salt therefore refuses (when the loss reads
the output layer, `reads_output_layer=True`) an adapter on the output layer and prompt learning, whose effect
lives in exactly those `forward`s. TRL runs these checks inline in each trainer's `__init__`, after
`get_peft_model` has already changed the user's model, and exposes no helper to call; what hf-salt adds is the
refusal of a new `peft_config` *before* the model is touched (matched with PEFT's own rules, on whatever
`get_output_embeddings()` returns: `lm_head`, `embed_out`, BERT's `cls.predictions.decoder`, ...), and adapters
seeded from `args.seed`.

Training the whole output layer with `modules_to_save=["lm_head"]` is fine: the wrapper exposes the
trainable copy as `.weight`.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from accelerate.utils import is_peft_model
from transformers import PreTrainedModel, TrainingArguments

logger = logging.getLogger(__name__)

__all__ = ["apply_peft", "output_layer_names"]


def output_layer_names(model: torch.nn.Module) -> list[str]:
    """Qualified names of the module that `get_output_embeddings()` returns (`lm_head`, `embed_out`, ...)."""
    get = getattr(model, "get_output_embeddings", None)  # a PeftModel forwards it to the wrapped model
    head = get() if callable(get) else None
    return [name for name, module in model.named_modules() if module is head] if head is not None else []


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
        if is_peft_model(model) and reads_output_layer:
            _refuse_bypassed_adapters(model)
        return model

    try:
        from peft import PeftConfig, PromptLearningConfig, get_peft_model
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
        if isinstance(peft_config, PromptLearningConfig):
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
def _targets(config: Any, name: str) -> bool:
    """Whether `config` would put an adapter on module `name` (PEFT's own matching rules)."""
    from peft.tuners.tuners_utils import check_target_module_exists

    if getattr(config, "target_modules", None) is not None:
        found = check_target_module_exists(config, name)
        if found and type(found).__name__ != "_ExcludedModule":
            return True
    key = f"{name}.weight"  # PEFT matches target_parameters by the parameter's full name or a dotted suffix
    return any(key == t or key.endswith(f".{t}") for t in getattr(config, "target_parameters", None) or [])


def _refuse_bypassed_adapters(model: torch.nn.Module) -> None:
    """TRL's check of an existing PeftModel: no adapter on the output layer, no prompt learning."""
    from peft import PromptLearningConfig
    from peft.tuners.tuners_utils import BaseTunerLayer

    prompt = [c.peft_type for c in model.peft_config.values() if isinstance(c, PromptLearningConfig)]
    if prompt:
        raise ValueError(
            f"The PeftModel uses {prompt[0]} (prompt learning), which the fused KD loss bypasses. "
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

"""Training a clone: keep each grown tensor's relative optimizer step the source's.

HyperCloning divides a tensor's entries by n where its input axis was tiled n times (``config.hypercloning
['lr_scale']`` records which, as name patterns). Adam's step has about the same size per entry whatever the
entry's magnitude, so the same learning rate moves those tensors n times further relative to their weights than
it moved the source's, and the clone gives back part of the head start it was grown for. Scaling their learning rate by 1/n
(as muP scales hidden matrices by 1/fan-in), and their decoupled weight decay by n so that lr x decay stays the
same, gives them the source's relative step: an Adam(W) step on an exact clone is then exactly the clone of the
source's step (tests/test_hypercloning_optim.py). Embeddings, norms and biases keep the full rate.
:func:`ramp_lr_scales` lets each factor rise to 1 over the first steps instead. Both keep more of the early head
start, but over a whole run of the payoff benchmark the clone at one learning rate reached the plain model's
quality sooner than with either, so hf-salt's trainers apply them only when asked (docs/hypercloning.md,
"Training a clone").
"""

from __future__ import annotations

import fnmatch
from typing import Any

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

# the param-group keys a scaled group carries: its recorded factor and the weight decay it had before scaling
SCALE_KEY, DECAY_KEY = "hypercloning_lr_scale", "hypercloning_weight_decay"


def lr_scales(model: nn.Module) -> dict[str, float]:
    """Parameter name -> learning-rate multiplier for a clone's grown tensors (empty for any other model).

    Names may carry wrapper prefixes (``module.``, ``_orig_mod.``, PEFT's ``base_model.model.``): a recorded
    pattern matches a name or any dotted suffix of it.
    """
    config = getattr(getattr(model, "module", model), "config", None) or getattr(model, "config", None)
    record = getattr(config, "hypercloning", None) or {}
    patterns: dict[str, float] = record.get("lr_scale") or {}
    if not patterns:
        return {}
    out: dict[str, float] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        for pattern, scale in patterns.items():
            if fnmatch.fnmatchcase(name, pattern) or fnmatch.fnmatchcase(name, "*." + pattern):
                out[name] = float(scale)
                break
    return out


def scale_param_groups(optimizer: torch.optim.Optimizer, model: nn.Module) -> torch.optim.Optimizer:
    """Split ``optimizer``'s groups so a clone's grown tensors get ``lr x`` their recorded scale, in place.

    Call it on a fresh optimizer (no state yet), before a learning-rate scheduler is built on it: the scheduler
    then decays every group from its own peak. A model without a clone record is left as it is.
    """
    scales = lr_scales(model)
    if not scales:
        return optimizer
    if optimizer.state:
        raise ValueError(
            "scale_param_groups needs a fresh optimizer: this one has taken steps already. Call it right after "
            "creating the optimizer, before training."
        )
    scale_of = {id(p): scales[n] for n, p in model.named_parameters() if n in scales}
    groups = []
    for group in optimizer.param_groups:
        by_scale: dict[float, list[torch.nn.Parameter]] = {}
        for p in group["params"]:
            by_scale.setdefault(scale_of.get(id(p), 1.0), []).append(p)
        for scale, params in by_scale.items():
            # decoupled weight decay shrinks by lr x weight_decay per step: keep that product the source's
            extra: dict[str, Any] = {SCALE_KEY: scale}
            if "weight_decay" in group:
                extra.update(weight_decay=group["weight_decay"] / scale, **{DECAY_KEY: group["weight_decay"]})
            groups.append({**group, "params": params, "lr": group["lr"] * scale, **extra})
    optimizer.param_groups.clear()
    for group in groups:
        optimizer.add_param_group(group)
    return optimizer


def ramp_lr_scales(scheduler: LambdaLR, steps: int) -> LambdaLR:
    """Raise each scaled group's factor linearly from its recorded scale to 1 over the first ``steps``, in place.

    The first step is still exactly the clone of the source's step; from ``steps`` on the grown tensors train at
    the full rate, so the clone does not learn more slowly for the whole run. Weight decay follows, so that
    ``lr x weight_decay`` stays the source's. ``scheduler`` is a ``LambdaLR`` (every schedule of
    ``transformers.get_scheduler``) on an optimizer split by :func:`scale_param_groups`.
    """
    if steps < 1:
        raise ValueError(f"ramp_lr_scales needs steps >= 1, got {steps}.")
    if not isinstance(scheduler, LambdaLR):
        raise TypeError(
            f"ramp_lr_scales needs a LambdaLR scheduler (what transformers.get_scheduler builds), got "
            f"{type(scheduler).__name__}."
        )
    groups = scheduler.optimizer.param_groups
    for i, group in enumerate(groups):
        scale = group.get(SCALE_KEY, 1.0)
        if scale == 1.0:
            continue

        def ramped(step: int, i: int = i, base=scheduler.lr_lambdas[i], scale: float = scale) -> float:
            factor = scale + (1.0 - scale) * min(1.0, step / steps)
            # looked up at each call: loading a checkpoint replaces the group dicts
            live = scheduler.optimizer.param_groups[i]
            if live.get(DECAY_KEY) is not None:
                live["weight_decay"] = live[DECAY_KEY] / factor
            return base(step) * factor / scale  # the group's lr is already lr x scale

        scheduler.lr_lambdas[i] = ramped
    # LambdaLR set the first step's rates when it was built: set them again through the ramped factors
    rates = [
        base_lr * fn(scheduler.last_epoch) for base_lr, fn in zip(scheduler.base_lrs, scheduler.lr_lambdas)
    ]
    for group, rate in zip(groups, rates):
        group["lr"] = rate
    scheduler._last_lr = rates
    return scheduler


def refuse_deepspeed_optimizer(trainer: Any) -> None:
    """Refuse a DeepSpeed config that names its own optimizer or scheduler when a clone's LR scales are on.

    With ``"optimizer"`` in the DS config, Trainer never calls ``create_optimizer`` (DeepSpeed builds one group at
    one rate); with ``"scheduler"``, DeepSpeed's schedulers set one rate on every group. Either way the scales (and
    the ramp) would be dropped without a word, so say so before training.
    """
    if not getattr(trainer, "is_deepspeed_enabled", False):
        return
    plugin = trainer.accelerator.state.deepspeed_plugin
    config = getattr(getattr(plugin, "hf_ds_config", None), "config", None) or getattr(
        plugin, "deepspeed_config", {}
    )
    named = [key for key in ("optimizer", "scheduler") if key in config]
    if named:
        what = ", ".join(f'"{key}": {config[key].get("type", "?")!r}' for key in named)
        raise ValueError(
            f"The DeepSpeed config names its own {' and '.join(named)} ({what}): DeepSpeed would then train the "
            "clone's grown tensors at one learning rate and drop hypercloning_lr_scale (and its ramp) silently. "
            f"Remove the {' and '.join(repr(k) for k in named)} section(s) from the DeepSpeed config so that "
            "Trainer builds them (set --learning_rate, --lr_scheduler_type etc. instead), or turn the scales off "
            "(--hypercloning_lr_scale false)."
        )


class GrownLRMixin:
    """Trainer mixin: a clone's grown tensors train at their recorded learning-rate scale.

    ``class MyTrainer(GrownLRMixin, Trainer)``. A model that is not a clone trains as under the plain Trainer.
    Training arguments with a ``hypercloning_lr_scale`` field (``SALTConfig``, off by default) decide; without
    the field the mixin applies. ``hypercloning_lr_scale_steps`` (an argument field, or the ``lr_scale_steps``
    keyword of this class) lets the scales rise to 1 over that many steps (:func:`ramp_lr_scales`); 0 keeps them.
    """

    def __init__(self, *args: Any, lr_scale_steps: int | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if lr_scale_steps is None:
            lr_scale_steps = getattr(self.args, "hypercloning_lr_scale_steps", 0)
        if lr_scale_steps < 0:
            raise ValueError(f"lr_scale_steps must be >= 0 (0 keeps the scales), got {lr_scale_steps}.")
        self.lr_scale_steps = lr_scale_steps
        if self._lr_scaled() and lr_scales(self.model):
            refuse_deepspeed_optimizer(self)

    def _lr_scaled(self) -> bool:
        return bool(getattr(self.args, "hypercloning_lr_scale", True))

    def create_optimizer(self, model: Any = None) -> torch.optim.Optimizer:
        fresh = self.optimizer is None
        optimizer = super().create_optimizer(model)
        if fresh and self._lr_scaled():
            scale_param_groups(optimizer, self.model if model is None else model)
        return optimizer

    def create_scheduler(self, num_training_steps: int, optimizer: Any = None) -> Any:
        fresh = self.lr_scheduler is None
        scheduler = super().create_scheduler(num_training_steps, optimizer)
        if fresh and self.lr_scale_steps and self._lr_scaled():
            ramp_lr_scales(scheduler, self.lr_scale_steps)
        return scheduler


_GROWN_LR_CLASSES: dict[type, type] = {}


def with_grown_lr(trainer_cls: type) -> type:
    """``trainer_cls`` with :class:`GrownLRMixin` (itself if it has it; each class is built once)."""
    if issubclass(trainer_cls, GrownLRMixin):
        return trainer_cls
    if trainer_cls not in _GROWN_LR_CLASSES:
        _GROWN_LR_CLASSES[trainer_cls] = type(trainer_cls.__name__, (GrownLRMixin, trainer_cls), {})
    return _GROWN_LR_CLASSES[trainer_cls]

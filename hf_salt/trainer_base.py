"""What the hf-salt trainers share, in TRL's `_BaseTrainer` manner.

A trainer declares who it is as class attributes (`_name`, `_method`, `_tag_names`, `_paper`,
`_template_file`) and says what its card records in :meth:`TrainerBase.method_info`; the base tags the
model, writes the one model card, and merges the one metrics buffer into the Trainer's logs. It is a mixin
placed before the transformers class (`class SALTTrainer(TrainerBase, Trainer)`) so it serves `Trainer`
and `Seq2SeqTrainer` alike.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import torch

from hf_salt.checkpoints import AtomicCheckpointMixin


class MetricsBuffer:
    """Weighted sums of logged quantities, kept on the device between two logs.

    ``add`` only does tensor arithmetic (no host sync, so it may run every micro-batch); ``pop`` sums the
    buffer over all processes with one reduction, reads it with one host transfer and returns
    ``{name: value_sum / weight_sum}`` for each name that received weight, then empties the buffer.
    The names are fixed up front so every process reduces a tensor of the same shape.
    """

    def __init__(self, names: Sequence[str]) -> None:
        self.names = tuple(names)
        self._index = {name: i for i, name in enumerate(self.names)}
        self._sums: torch.Tensor | None = None  # [2, len(names)]: value sums, weight sums

    def add(self, name: str, value: torch.Tensor | float, weight: torch.Tensor | float = 1.0) -> None:
        """Add ``value`` (a sum over ``weight`` items, e.g. a token-loss sum and its token count)."""
        i = self._index[name]
        if self._sums is None:
            device = value.device if torch.is_tensor(value) else None
            self._sums = torch.zeros(2, len(self.names), dtype=torch.float32, device=device)
        if torch.is_tensor(value):
            if value.device != self._sums.device and self._sums.device.type == "cpu":
                self._sums = self._sums.to(value.device)  # started from a host number: follow the tensors
            value = value.detach().to(self._sums.device, torch.float32)
        if torch.is_tensor(weight):
            weight = weight.detach().to(self._sums.device, torch.float32)
        self._sums[0, i] += value
        self._sums[1, i] += weight

    def pop(self, accelerator: Any = None) -> dict[str, float]:
        """The means since the last pop (over all processes when ``accelerator`` is given); empties it."""
        sums, self._sums = self._sums, None
        if sums is None:
            return {}
        if accelerator is not None and accelerator.num_processes > 1:
            sums = accelerator.reduce(sums.to(accelerator.device), reduction="sum")
        values, weights = sums.tolist()
        return {name: v / w for name, v, w in zip(self.names, values, weights) if w > 0}


class TrainerBase(AtomicCheckpointMixin):
    """Mixin for the hf-salt trainers: identity as class attributes, one model card, one metrics buffer,
    checkpoints saved atomically (:class:`hf_salt.checkpoints.AtomicCheckpointMixin`).

    Subclasses set the class attributes below, call :meth:`_init_base` once the Trainer is built (it tags the
    model and creates the buffer), record their metrics with ``self._metrics.add(...)``, and override
    :meth:`method_info` (and :meth:`card_method` if the method depends on the run).
    """

    _name: ClassVar[str] = "hf-salt"  # the method's display name
    _method: ClassVar[str] = ""  # hf_salt.model_card.METHODS key of the method
    _tag_names: ClassVar[list[str]] = [
        "hf-salt"
    ]  # Hub tags, also added to the model (push_to_hub keeps them)
    _paper: ClassVar[dict[str, str]] = {}  # title, url, citation (BibTeX)
    _template_file: ClassVar[str | None] = None  # another Jinja card template; None = hf-salt's
    _metric_names: ClassVar[tuple[str, ...]] = ()  # what the buffer logs besides the Trainer's own keys

    def _init_base(self) -> None:
        self._metrics = MetricsBuffer(self._metric_names)
        model = getattr(self, "model", None)
        if hasattr(model, "add_model_tags"):
            model.add_model_tags(self._tag_names)

    # ------------------------------------------------------------------------------------------ hooks
    def method_info(self) -> dict[str, Any]:
        """The method's settings the model card records (see `hf_salt.model_card` for the known keys)."""
        return {}

    def card_method(self) -> str:
        """The model card's method (a `+`-joined combination when the run used several)."""
        return self._method

    # ------------------------------------------------------------------------------------------ Trainer
    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Merge the buffered metrics into the training logs (one reduction, one host read per log)."""
        if "loss" in logs:
            world = getattr(self.args, "world_size", 1)
            logs.update(self._metrics.pop(self.accelerator if world > 1 else None))
            self._add_to_training_log(logs)
        super().log(logs, start_time)  # type: ignore[misc]

    def _add_to_training_log(self, logs: dict[str, float]) -> None:
        """Hook: entries computed from the merged metrics of a training log (default: none)."""

    def create_model_card(
        self,
        model_name: str | None = None,
        dataset_name: str | list[str] | None = None,
        tags: str | list[str] | None = None,
        **kwargs: Any,
    ) -> str:
        """Write output_dir/README.md: the hf-salt card with this trainer's method, settings and tags."""
        from hf_salt.model_card import write_model_card

        extra = [tags] if isinstance(tags, str) else list(tags or [])
        if self._template_file is not None:
            kwargs.setdefault("template_path", self._template_file)
        return write_model_card(
            self,
            method=self.card_method(),
            method_info=self.method_info(),
            model_name=model_name,
            dataset_name=dataset_name,
            tags=list(dict.fromkeys([*self._tag_names, *extra])),
            **kwargs,
        )


def paper(method: str) -> dict[str, str]:
    """The `_paper` class attribute of a method, from the model card's record of it (one source)."""
    from hf_salt.model_card import METHODS

    spec = METHODS[method]
    return {"title": spec.paper_title, "url": spec.paper_url, "citation": spec.bibtex}

"""What the hf-salt trainers share, in TRL's `_BaseTrainer` manner.

A trainer declares who it is as class attributes (`_name`, `_method`, `_tag_names`, `_paper`,
`_template_file`) and says what its card records in :meth:`TrainerBase.method_info`; the base tags the
model, writes the one model card, and merges the one metrics buffer into the Trainer's logs. It is a mixin
placed before the transformers class (`class SALTTrainer(TrainerBase, Trainer)`) so it serves `Trainer`
and `Seq2SeqTrainer` alike.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import torch

from hf_salt.checkpoints import AtomicCheckpointMixin

logger = logging.getLogger(__name__)


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
        extra_info: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> str:
        """Write output_dir/README.md (or `output_dir=` given as a keyword): the hf-salt card with this trainer's
        method, settings and tags. `extra_info`: settings the trainer cannot know (the CLI's corpus)."""
        from hf_salt.model_card import write_model_card

        extra = [tags] if isinstance(tags, str) else list(tags or [])
        if self._template_file is not None:
            kwargs.setdefault("template_path", self._template_file)
        return write_model_card(
            self,
            method=self.card_method(),
            method_info={**self.method_info(), **(extra_info or {})},
            model_name=model_name,
            dataset_name=dataset_name,
            tags=list(dict.fromkeys([*self._tag_names, *extra])),
            **kwargs,
        )

    # ------------------------------------------------------------------------------------------ Hub
    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """`Trainer.save_model`; a PEFT adapter folder gets the hf-salt card instead of PEFT's blank one."""
        super().save_model(output_dir, _internal_call=True)  # type: ignore[misc]
        from accelerate.utils import is_peft_model

        from hf_salt.model_card import unwrap

        if not _internal_call and is_peft_model(unwrap(self)) and self.is_world_process_zero():  # type: ignore[attr-defined]
            self.create_model_card(output_dir=output_dir or self.args.output_dir)  # type: ignore[attr-defined]
        if self.args.push_to_hub and not _internal_call:  # type: ignore[attr-defined]
            self.push_to_hub(commit_message="Model save", revision=self.args.hub_revision)  # type: ignore[attr-defined]

    def init_hf_repo(self, token: str | None = None, private: bool | None = None) -> None:
        """`Trainer.init_hf_repo`, but a Hub that cannot be reached (offline, no connection, no token) does not
        stop training: nothing is uploaded during the run and `push_to_hub` says why at the end."""
        from hf_salt.hub import hub_failure_reason

        reason = hub_failure_reason(token=token if token is not None else self.args.hub_token)  # type: ignore[attr-defined]
        if reason is None:
            try:
                super().init_hf_repo(token=token, private=private)  # type: ignore[misc]
                return
            except Exception as err:
                reason = hub_failure_reason(err)
                if reason is None:
                    raise
        self.hub_model_id = None
        self.push_in_progress = None
        logger.warning(
            f"push_to_hub: the Hub cannot be reached ({reason}); training goes on and saves locally."
        )

    def _push_from_checkpoint(self, checkpoint_folder: str) -> None:
        if (
            getattr(self, "hub_model_id", None) is None
        ):  # the Hub was unreachable at the start: nothing to push to
            return
        super()._push_from_checkpoint(checkpoint_folder)  # type: ignore[misc]

    def push_to_hub(
        self,
        commit_message: str | None = "End of training",
        blocking: bool = True,
        token: str | None = None,
        revision: str | None = None,
        private: bool | None = None,
        **kwargs: Any,
    ) -> Any:
        """`Trainer.push_to_hub` that saves the model and its card *before* it contacts the Hub, and fails with a
        one-line :class:`hf_salt.hub.HubUploadError` (why, and where the model is saved) when it cannot upload."""
        from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
        from transformers.utils.hub import hf_api

        from hf_salt.hub import HubUploadError, failure_message, hub_failure_reason

        args = self.args  # type: ignore[attr-defined]
        self.callback_handler.on_push_begin(args, self.state, self.control)  # type: ignore[attr-defined]
        model_name = kwargs.pop("model_name", None)
        if model_name is None and args.should_save:
            model_name = (args.hub_model_id or Path(args.output_dir).name).split("/")[-1]
        token = token if token is not None else args.hub_token
        self.save_model(_internal_call=True)  # the whole local save first: a failed upload loses nothing
        if not self.is_world_process_zero():  # type: ignore[attr-defined]
            return None
        model_tags = getattr(self.model, "model_tags", None)  # type: ignore[attr-defined]
        if model_tags:
            tags = kwargs.get("tags") or []
            tags = [tags] if isinstance(tags, str) else list(tags)
            kwargs["tags"] = tags + [t for t in model_tags if t not in tags]
        self.create_model_card(model_name=model_name, **kwargs)
        repo_id = (
            getattr(self, "hub_model_id", None) or args.hub_model_id or Path(args.output_dir).absolute().name
        )
        reason = hub_failure_reason(token=token)
        try:
            if reason is None:
                if getattr(self, "hub_model_id", None) is None:
                    super().init_hf_repo(token=token, private=private)  # type: ignore[misc]
                self._finish_current_push()  # type: ignore[attr-defined]
                return hf_api().upload_folder(
                    repo_id=self.hub_model_id,
                    folder_path=args.output_dir,
                    commit_message=commit_message,
                    token=token,
                    run_as_future=not blocking,
                    ignore_patterns=["_*", f"{PREFIX_CHECKPOINT_DIR}-*"],
                    revision=revision if revision is not None else args.hub_revision,
                )
        except Exception as err:
            reason = hub_failure_reason(err)
            if reason is None:
                raise
        raise HubUploadError(failure_message(reason, args.output_dir, repo_id)) from None


def paper(method: str) -> dict[str, str]:
    """The `_paper` class attribute of a method, from the model card's record of it (one source)."""
    from hf_salt.model_card import METHODS

    spec = METHODS[method]
    return {"title": spec.paper_title, "url": spec.paper_url, "citation": spec.bibtex}

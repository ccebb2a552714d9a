"""TRL's dataset formats for hf-salt trainers: `text`, `prompt`/`completion` and `messages` rows.

A TRL user's SFT data works unchanged: given a ``processing_class`` (tokenizer), raw rows are tokenized the way
``trl.SFTTrainer`` prepares them (chat template for conversational rows, EOS appended to plain text, prompt tokens
masked with ``-100`` under ``completion_only_loss``, truncation to ``max_length`` or packing with
``trl.pack_dataset``) and batched by TRL's own collator. The settings carry ``trl.SFTConfig``'s names and defaults.
Built on ``trl.data_utils`` (``is_conversational``, ``maybe_convert_to_chatml``, ``pack_dataset``,
``common_prefix_length``); TRL is imported only when a raw dataset needs it (``pip install 'hf-salt[trl]'``).
Datasets that already have ``input_ids`` (e.g. packed blocks from ``hf_salt.data.pack_dataset``) pass through as is.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from typing import Any

logger = logging.getLogger(__name__)

PACKING_STRATEGIES = ("bfd", "bfd_split", "wrapped")


def import_trl() -> Any:
    """``trl.data_utils``, or an ImportError that says how to install it."""
    try:
        import trl.data_utils as data_utils
    except ImportError as err:
        raise ImportError(
            "Raw text / prompt-completion / messages datasets are prepared with TRL's data utilities: "
            "pip install 'hf-salt[trl]' (or pass a pre-tokenized dataset with an 'input_ids' column)."
        ) from err
    return data_utils


@dataclass
class SFTDataArguments:
    """How raw datasets are prepared: the fields of ``trl.SFTConfig`` with the same names and defaults."""

    dataset_text_field: str = field(
        default="text",
        metadata={"help": "Column with the text of language-modeling rows (as in trl.SFTConfig)."},
    )
    max_length: int | None = field(
        default=1024,
        metadata={
            "help": "Tokens per sequence: longer ones are truncated (keep_start); with packing, the packed length. "
            "None: no truncation. Ignored for pre-tokenized datasets."
        },
    )
    packing: bool = field(
        default=False,
        metadata={"help": "Pack several sequences into each max_length row with trl.pack_dataset."},
    )
    packing_strategy: str = field(
        default="bfd",
        metadata={
            "help": "bfd (best-fit decreasing, sequence boundaries kept, padding-free batches), bfd_split, or "
            "wrapped (concatenate and cut into full rows, like pre-training blocks).",
            "choices": list(PACKING_STRATEGIES),
        },
    )
    padding_free: bool = field(
        default=False,
        metadata={
            "help": "Flatten each batch into one sequence with position_ids (needs a flash-attention model to keep "
            "sequences apart); on by itself with bfd packing, as in SFTTrainer."
        },
    )
    completion_only_loss: bool | None = field(
        default=None,
        metadata={
            "help": "Mask the prompt of prompt/completion rows in the loss (labels -100). None: True for "
            "prompt/completion datasets."
        },
    )

    def check_sft_data(self) -> None:
        """Validate the fields (called from the config's ``__post_init__``)."""
        if self.packing_strategy not in PACKING_STRATEGIES:
            raise ValueError(
                f"packing_strategy must be one of {PACKING_STRATEGIES}, got {self.packing_strategy!r}."
            )
        if self.max_length is not None and self.max_length < 1:
            raise ValueError(f"max_length must be >= 1 or None, got {self.max_length}.")
        if self.packing and self.max_length is None:
            raise ValueError("packing=True packs rows to max_length; set max_length (e.g. 1024).")

    @property
    def uses_padding_free(self) -> bool:
        return self.padding_free or (self.packing and self.packing_strategy in ("bfd", "bfd_split"))


def column_names(dataset: Any) -> list[str]:
    names = getattr(dataset, "column_names", None)
    if names is None:  # an IterableDataset without known features
        names = list(next(iter(dataset)).keys())
    return list(names)


def is_raw(dataset: Any) -> bool:
    """True for a ``datasets`` dataset without ``input_ids``: rows TRL's SFT would tokenize."""
    if dataset is None or not hasattr(dataset, "map"):
        return False
    return "input_ids" not in column_names(dataset)


def _render(tokenizer: Any, value: Any, **chat_kwargs: Any) -> list[int]:
    """Token ids of a string (``tokenizer(text=...)``) or of a message list (``apply_chat_template``)."""
    if isinstance(value, list):
        return list(
            tokenizer.apply_chat_template(value, tokenize=True, return_dict=True, **chat_kwargs)["input_ids"]
        )
    return list(tokenizer(text=value)["input_ids"])


def _tokenize_row(example: dict[str, Any], tokenizer: Any, text_field: str) -> dict[str, Any]:
    utils = import_trl()
    tools = example.get("tools")
    chat_kwargs = {
        "tools": json.loads(tools) if isinstance(tools, str) else tools,
        **(example.get("chat_template_kwargs") or {}),
    }
    conversational = utils.is_conversational(example)
    if "prompt" in example:
        if conversational:
            prompt_ids = _render(tokenizer, example["prompt"], add_generation_prompt=True, **chat_kwargs)
            ids = _render(tokenizer, example["prompt"] + example["completion"], **chat_kwargs)
        else:
            prompt_ids = _render(tokenizer, example["prompt"])
            ids = _render(tokenizer, example["prompt"] + example["completion"])
        # the completion starts where the two tokenizations diverge (a merge across the boundary moves it)
        start = utils.common_prefix_length(prompt_ids, ids)
        return {"input_ids": ids, "completion_mask": [0] * start + [1] * (len(ids) - start)}
    if conversational:
        return {"input_ids": _render(tokenizer, example["messages"], **chat_kwargs)}
    return {"input_ids": _render(tokenizer, example[text_field])}


def prepare_sft_dataset(
    dataset: Any, processing_class: Any, args: SFTDataArguments, *, name: str = "train"
) -> Any:
    """Tokenize (and pack or truncate) raw SFT rows into ``input_ids`` / ``labels`` (+ ``seq_lengths`` when packed
    with bfd), as ``trl.SFTTrainer`` prepares them. A dataset with ``input_ids`` is returned unchanged."""
    if not is_raw(dataset):
        return dataset
    if processing_class is None:
        raise ValueError(
            f"The {name} dataset has raw rows ({column_names(dataset)}); pass processing_class=<tokenizer> so they "
            "can be tokenized, or pass pre-tokenized rows with 'input_ids'."
        )
    utils = import_trl()
    tokenizer = getattr(processing_class, "tokenizer", processing_class)
    first = next(iter(dataset))
    if utils.is_conversational_from_value(first):
        dataset = dataset.map(
            utils.maybe_convert_to_chatml,
            remove_columns=["conversations"] if "conversations" in column_names(dataset) else None,
        )
        first = next(iter(dataset))
    conversational = utils.is_conversational(first)
    if conversational and getattr(tokenizer, "chat_template", None) is None:
        raise ValueError(
            f"The {name} dataset is conversational ('messages' or prompt/completion message lists) but the "
            "tokenizer has no chat_template; set tokenizer.chat_template (a Jinja template) first."
        )
    if "prompt" in first and "completion" not in first:
        raise ValueError(f"The {name} dataset has a 'prompt' column but no 'completion' column.")
    if not conversational and "prompt" not in first and args.dataset_text_field not in first:
        raise ValueError(
            f"The {name} dataset has no {args.dataset_text_field!r} column (dataset_text_field); its columns are "
            f"{column_names(dataset)}."
        )
    if not conversational:  # plain text ends with EOS, as in SFTTrainer (conversations: the template's end)
        eos = tokenizer.eos_token
        target = "completion" if "prompt" in first else args.dataset_text_field

        def add_eos(example: dict[str, Any]) -> dict[str, Any]:
            if not example[target].endswith(eos):
                example[target] = example[target] + eos
            return example

        dataset = dataset.map(add_eos)
    raw_columns = column_names(dataset)
    dataset = dataset.map(
        _tokenize_row,
        fn_kwargs={"tokenizer": tokenizer, "text_field": args.dataset_text_field},
        remove_columns=raw_columns,
    )
    prompt_completion = "completion_mask" in column_names(dataset)
    mask = args.completion_only_loss if args.completion_only_loss is not None else prompt_completion

    def build_labels(example: dict[str, Any]) -> dict[str, Any]:
        if mask and prompt_completion:
            return {
                "labels": [t if m else -100 for t, m in zip(example["input_ids"], example["completion_mask"])]
            }
        return {"labels": list(example["input_ids"])}

    dataset = dataset.map(build_labels, remove_columns=["completion_mask"] if prompt_completion else None)
    if args.packing:
        return utils.pack_dataset(
            dataset.select_columns(["input_ids", "labels"]), args.max_length, args.packing_strategy
        )
    if args.max_length is not None:
        n = args.max_length
        dataset = dataset.map(lambda ex: {"input_ids": ex["input_ids"][:n], "labels": ex["labels"][:n]})
        # rows whose labels are all -100 after truncation (a prompt filling max_length) add no loss: drop them
        dataset = dataset.filter(lambda ex: any(label != -100 for label in ex["labels"]))
    return dataset


def sft_collator(processing_class: Any, args: SFTDataArguments) -> Any:
    """TRL's language-modeling collator (pads ``input_ids`` / ``labels``; padding-free batches carry
    ``position_ids`` that restart at every packed sequence)."""
    import_trl()
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    tokenizer = getattr(processing_class, "tokenizer", processing_class)
    pad = tokenizer.pad_token or tokenizer.eos_token
    return DataCollatorForLanguageModeling(
        pad_token_id=tokenizer.convert_tokens_to_ids(pad), padding_free=args.uses_padding_free
    )


def prepare_trainer_data(args: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
    """Trainer hook: tokenize raw ``train_dataset`` / ``eval_dataset`` (a dataset or a dict of them) with
    ``processing_class`` and default the collator to TRL's. Returns the updated trainer kwargs."""
    train, evals = kwargs.get("train_dataset"), kwargs.get("eval_dataset")
    eval_list = list(evals.values()) if isinstance(evals, dict) else [evals]
    if not any(is_raw(d) for d in (train, *eval_list)):
        return kwargs
    kwargs = dict(kwargs)
    tok = kwargs.get("processing_class")
    kwargs["train_dataset"] = prepare_sft_dataset(train, tok, args, name="train")
    if isinstance(evals, dict):
        kwargs["eval_dataset"] = {
            k: prepare_sft_dataset(v, tok, args, name=f"eval {k!r}") for k, v in evals.items()
        }
    elif evals is not None:
        kwargs["eval_dataset"] = prepare_sft_dataset(evals, tok, args, name="eval")
    if kwargs.get("data_collator") is None:
        kwargs["data_collator"] = sft_collator(tok, args)
        if args.uses_padding_free and args.remove_unused_columns:
            # the collator reads 'seq_lengths', which the Trainer would drop; prepared rows hold nothing else
            args.remove_unused_columns = False
    elif args.uses_padding_free:
        raise ValueError(
            "padding-free batches (padding_free, or bfd packing) need TRL's collator; drop data_collator."
        )
    return kwargs

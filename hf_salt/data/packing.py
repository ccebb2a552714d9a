"""Tokenize and pack text into fixed-length blocks for causal-LM pre-training.

Each document (row) is followed by the EOS token, the token stream is cut into `block_size` blocks, and
each block carries its own labels (equal to its input ids: the model shifts), so no label crosses a block.
"""

from __future__ import annotations

from typing import Any

from datasets import Dataset, IterableDataset
from transformers import PretrainedConfig, PreTrainedTokenizerBase

from hf_salt.checks import position_limit


def check_block_size(block_size: int, config: PretrainedConfig) -> None:
    """Raise if `block_size` exceeds the model's context (learned positions would index out of range)."""
    limit = position_limit(config)
    if limit and block_size > limit:
        raise ValueError(
            f"block_size={block_size} is larger than the model's context ({limit} positions). "
            f"Use --block_size {limit} or smaller, or a model with a longer context."
        )


def _pack_batch(
    texts: list[str], tokenizer: PreTrainedTokenizerBase, block_size: int
) -> dict[str, list[Any]]:
    eos = tokenizer.eos_token_id
    stream: list[int] = []
    for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]:
        stream.extend(ids)
        stream.append(eos)
    n = len(stream) // block_size * block_size
    blocks = [stream[i : i + block_size] for i in range(0, n, block_size)]
    return {
        "input_ids": blocks,
        "attention_mask": [[1] * block_size for _ in blocks],
        "labels": [list(b) for b in blocks],
    }


def pack_dataset(
    dataset: Dataset | IterableDataset,
    tokenizer: PreTrainedTokenizerBase,
    block_size: int,
    *,
    text_column: str = "text",
    batch_size: int = 2000,
    num_proc: int | None = None,
    name: str | None = None,
) -> Dataset | IterableDataset:
    """Return a dataset of `input_ids`/`attention_mask`/`labels` blocks of exactly `block_size` tokens.

    Runs as a batched, cached `datasets.map` (re-running on the same data and tokenizer costs nothing). The
    tail of each map batch that doesn't fill a block is dropped (at most `block_size - 1` tokens per
    `batch_size` documents). Works on `Dataset` and streaming `IterableDataset`. `name` (e.g. the split and its
    files) names the text in the error raised when it is too short for one block.
    """
    if block_size < 2:
        raise ValueError(f"block_size must be at least 2, got {block_size}.")
    if tokenizer.eos_token_id is None:
        raise ValueError(
            "The tokenizer has no eos_token: set one (documents are separated by EOS when packed)."
        )
    columns = dataset.column_names
    if columns is not None and text_column not in columns:
        raise ValueError(f"The dataset has no {text_column!r} column (columns: {columns}).")
    kwargs: dict[str, Any] = {
        "batched": True,
        "batch_size": batch_size,
        "input_columns": [text_column],
        "remove_columns": columns if columns is not None else [text_column],
        "fn_kwargs": {"tokenizer": tokenizer, "block_size": block_size},
    }
    if isinstance(dataset, Dataset):
        kwargs.update(num_proc=num_proc, desc=f"Packing into {block_size}-token blocks")
    packed = dataset.map(_pack_batch, **kwargs)
    if isinstance(packed, Dataset) and len(packed) == 0:
        what = name or "the text"
        raise ValueError(
            f"Packing {what} produced no full block of {block_size} tokens: it is too short. "
            f"Use a smaller block_size or add text to {what}."
        )
    return packed

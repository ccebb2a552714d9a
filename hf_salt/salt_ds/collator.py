"""`SALTDSCollator`: the KD stage reads the selected pool, the rest of the run the full training set.

Mechanism (chosen for exact, cheap resume): the collator builds a *curriculum dataset*, a deterministic
virtual sequence of rows, and the trainer reads it in order (SequentialSampler):

    rows [0, B)            the selected pool, shuffled with the seed (re-shuffled per pass if it is
                           repeated to fill the budget)        B = kd_steps x global batch size
    rows [B, total)        the full training set, shuffled per virtual epoch with the seed

Row i is a pure function of (i, seed), so `Trainer`'s resume, which skips the first N batches of the
same order, lands on exactly the rows an uninterrupted run would read next. Under DDP, accelerate gives
rank r the batches r, r + W, r + 2W, ... of that order, so optimizer step s (all ranks, all accumulation
micro-batches) consumes rows [s x global batch, (s + 1) x global batch): the global order, and therefore
the stage switch at step kd_steps, is the same for any number of processes.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import datasets
import numpy as np
import torch
from torch.utils.data import Dataset as TorchDataset

from hf_salt.salt_ds.selection import kd_budget

logger = logging.getLogger(__name__)

MODEL_COLUMNS = ("input_ids", "attention_mask", "labels")


def default_collate(features: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
    """Stack fixed-length packed blocks; `salt_ds_*` and other non-model columns are dropped.

    Missing `labels` become `input_ids` with padding (attention_mask == 0) set to -100.
    """
    batch: dict[str, torch.Tensor] = {}
    for name in MODEL_COLUMNS:
        if name in features[0]:
            try:
                batch[name] = torch.stack([torch.as_tensor(f[name], dtype=torch.long) for f in features])
            except RuntimeError as err:
                raise ValueError(
                    f"Rows of {name!r} have different lengths; SALTDSCollator's default stacks packed blocks. "
                    "Pass base_collator=DataCollatorForLanguageModeling(...) for ragged rows."
                ) from err
    if "input_ids" not in batch:
        raise ValueError(f"Rows need an 'input_ids' field, got {sorted(features[0])}.")
    if "labels" not in batch:
        labels = batch["input_ids"].clone()
        if "attention_mask" in batch:
            labels = labels.masked_fill(batch["attention_mask"] == 0, -100)
        batch["labels"] = labels
    return batch


class CurriculumDataset(TorchDataset):
    """Read-in-order view: `budget` rows from the shuffled pool, then the shuffled full set, `length` rows.

    Nothing is materialised: permutations are drawn per pass from `np.random.default_rng((seed, tag, pass))`
    when first needed, so memory is one permutation per pass touched.
    """

    def __init__(
        self, pool: datasets.Dataset, train: datasets.Dataset, *, budget: int, length: int, seed: int
    ):
        self.pool, self.train = pool, train
        self.budget, self.length, self.seed = budget, length, seed
        self._perms: dict[tuple[int, int], np.ndarray] = {}

    def __len__(self) -> int:
        return self.length

    def _perm(self, tag: int, epoch: int, size: int) -> np.ndarray:
        key = (tag, epoch)
        if key not in self._perms:
            if len(self._perms) > 8:  # long runs: keep only recent passes
                self._perms.pop(next(iter(self._perms)))
            self._perms[key] = np.random.default_rng((self.seed, tag, epoch)).permutation(size)
        return self._perms[key]

    def source(self, index: int) -> tuple[str, int]:
        """("pool" | "train", row of that dataset) read at position `index` of the curriculum."""
        if not 0 <= index < self.length:
            raise IndexError(f"index {index} out of range for a curriculum of {self.length} rows")
        if index < self.budget:
            size = len(self.pool)
            return "pool", int(self._perm(0, index // size, size)[index % size])
        j = index - self.budget
        size = len(self.train)
        return "train", int(self._perm(1, j // size, size)[j % size])

    def __getitem__(self, index: int) -> dict[str, Any]:
        which, row = self.source(index)
        return (self.pool if which == "pool" else self.train)[row]


class SALTDSCollator:
    """Data collator for SALT_DS: pass it to `SALTTrainer` like any collator.

    `SALTTrainer` sees the `curriculum` method and trains on `curriculum(train_dataset, ...)` read in order,
    so the first `kd_steps` optimizer steps see only `selected_dataset` (from `select`) and later steps the
    full training set. Calling the collator collates a batch with `base_collator` (default: stack
    `input_ids` / `attention_mask` / `labels`), dropping the `salt_ds_*` columns first.

    Args:
        selected_dataset: the KD-stage pool, rows with the same fields and block length as the train set.
        base_collator: collates the rows (e.g. `DataCollatorForLanguageModeling(tok, mlm=False)`).
        seed: shuffling seed; None uses the seed the trainer passes (`args.seed`).
    """

    def __init__(
        self,
        selected_dataset: datasets.Dataset,
        base_collator: Callable[[list[dict[str, Any]]], dict[str, Any]] | None = None,
        seed: int | None = None,
    ):
        if not isinstance(selected_dataset, datasets.Dataset):
            raise TypeError(
                f"selected_dataset must be a datasets.Dataset, got {type(selected_dataset).__name__}."
            )
        if "input_ids" not in selected_dataset.column_names:
            raise ValueError(f"selected_dataset has no 'input_ids' column ({selected_dataset.column_names}).")
        if len(selected_dataset) == 0:
            raise ValueError("selected_dataset is empty: select at least one sequence for the KD stage.")
        self.selected_dataset = selected_dataset
        self.base_collator = base_collator
        self.seed = seed

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        features = [{k: v for k, v in f.items() if not k.startswith("salt_ds_")} for f in features]
        if self.base_collator is not None:
            return self.base_collator(features)
        return default_collate(features)

    def curriculum(
        self,
        train_dataset: datasets.Dataset,
        *,
        kd_steps: int,
        global_batch_size: int,
        total_samples: int,
        seed: int = 0,
    ) -> CurriculumDataset:
        """The dataset to read in order: `kd_steps x global_batch_size` pool rows, then the full set.

        A pool smaller than the budget is repeated (each pass re-shuffled) with a warning; `total_samples`
        (max_steps x global batch) rows in all, the full set repeated as needed (each virtual epoch
        re-shuffled).
        """
        if not isinstance(train_dataset, datasets.Dataset):
            raise TypeError(f"train_dataset must be a datasets.Dataset, got {type(train_dataset).__name__}.")
        if len(train_dataset) == 0:
            raise ValueError("train_dataset is empty.")
        if total_samples < 1:
            raise ValueError(f"total_samples must be >= 1, got {total_samples}.")
        missing = [
            c
            for c in MODEL_COLUMNS
            if c in train_dataset.column_names and c not in self.selected_dataset.column_names
        ]
        if missing or "input_ids" not in train_dataset.column_names:
            raise ValueError(
                f"The selected pool and the train set must have the same model columns: pool has "
                f"{self.selected_dataset.column_names}, train set has {train_dataset.column_names}."
            )
        pool_len, train_len = len(self.selected_dataset[0]["input_ids"]), len(train_dataset[0]["input_ids"])
        if self.base_collator is None and pool_len != train_len:
            raise ValueError(
                f"The pool's blocks have {pool_len} tokens and the train set's {train_len}: pack both with the "
                "same block_size (or pass a padding base_collator)."
            )
        budget = min(kd_budget(kd_steps, global_batch_size), total_samples)
        if budget > len(self.selected_dataset):
            logger.warning(
                "SALT_DS: the KD stage reads %d sequences but the pool holds %d; the pool is repeated "
                "(%.1f passes, re-shuffled each pass).",
                budget,
                len(self.selected_dataset),
                budget / len(self.selected_dataset),
            )
        seed = self.seed if self.seed is not None else seed
        return CurriculumDataset(
            self.selected_dataset, train_dataset, budget=budget, length=total_samples, seed=seed
        )

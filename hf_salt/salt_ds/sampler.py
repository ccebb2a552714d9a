"""SALT_DS as a data source: the KD stage reads the selected pool, the rest of the run the full training set.

`SALTTrainer(..., train_dataset=train, salt_ds_pool=pool)` builds its training loader on a
:class:`SALTDSSource` (``len(train)`` rows per epoch, so the Trainer counts exactly the steps of plain SALT, in
``max_steps`` and in ``num_train_epochs`` mode) read by a :class:`SALTDSSampler`. The sampler is a pure
function of (epoch, offset in the epoch, seed):

- offset ``o`` of epoch ``e`` belongs to optimizer step ``e x steps_per_epoch + o // global_batch``
  (accelerate hands rank ``r`` the batches ``r, r + W, ...``, and each rank groups ``gradient_accumulation_steps``
  micro-batches per step, so this holds for any number of processes and any accumulation);
- a position whose step is below n_KD reads the next row of the pool stream (the pool shuffled with the seed,
  re-shuffled per pass if the KD stage reads it more than once);
- any other position reads the train row that plain training reads there: ``randperm(len(train))`` from a
  generator seeded ``seed + epoch`` (the order of the Trainer's default seedable sampler) or the identity for
  ``train_sampling_strategy="sequential"``.

The epoch reaches the sampler through ``set_epoch`` (accelerate's ``DataLoaderShard.set_epoch``; on a resumed
DDP loader, whose ``SkipBatchSampler(BatchSamplerShard(...))`` hides the sampler, through the dataset's
``set_epoch``: both land in the source). Resume skips the batches already read of the same deterministic order,
so it is exact.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import datasets
import numpy as np
import torch
from torch.utils.data import Dataset as TorchDataset
from torch.utils.data import Sampler

logger = logging.getLogger(__name__)

#: the train orders the sampler reproduces (``TrainingArguments.train_sampling_strategy``)
SAMPLING_STRATEGIES = ("random", "sequential")


class SALTDSSource(TorchDataset):
    """Train rows and pool rows behind one index: ``i < len(train)`` is train row ``i``, ``len(train) + j`` is pool
    row ``j``. ``len()`` is ``len(train)``: one epoch is as long as the train set's.

    Pool rows are read with the train set's columns (``salt_ds_*`` scores and other extras are left out), so
    the collator sees one kind of row.
    """

    def __init__(self, train: datasets.Dataset, pool: datasets.Dataset):
        if not isinstance(train, datasets.Dataset):
            raise TypeError(
                f"SALT_DS needs train_dataset to be a datasets.Dataset (map-style, with a length), got "
                f"{type(train).__name__}."
            )
        if not isinstance(pool, datasets.Dataset):
            raise TypeError(f"salt_ds_pool must be a datasets.Dataset, got {type(pool).__name__}.")
        if len(train) == 0:
            raise ValueError("train_dataset is empty.")
        if len(pool) == 0:
            raise ValueError("salt_ds_pool is empty: select at least one sequence for the KD stage.")
        missing = [c for c in train.column_names if c not in pool.column_names]
        if missing:
            raise ValueError(
                f"salt_ds_pool lacks the train set's column(s) {missing} (pool: {pool.column_names}, train: "
                f"{train.column_names}); build both the same way (e.g. pack_dataset with the same block_size)."
            )
        self.train = train
        self.pool = pool.select_columns(train.column_names)
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.train)

    def __getitem__(self, index: int) -> dict[str, Any]:
        n = len(self.train)
        return self.train[index] if index < n else self.pool[index - n]

    def set_epoch(self, epoch: int) -> None:
        """Called by accelerate where it cannot reach the sampler (a resumed DDP loader)."""
        self.epoch = int(epoch)


@dataclass(frozen=True)
class SALTDSPlan:
    """What the order depends on, fixed when training starts (`SALTTrainer.set_initial_training_values`).

    ``kd_steps``: n_KD (under ``kd_schedule="auto"`` the cap). ``global_batch_size``: per-device batch x
    accumulation x processes. ``steps_per_epoch``: the Trainer's optimizer steps per epoch.
    """

    kd_steps: int
    global_batch_size: int
    steps_per_epoch: int

    def __post_init__(self) -> None:
        if self.kd_steps < 0 or self.global_batch_size < 1 or self.steps_per_epoch < 1:
            raise ValueError(f"Invalid SALT_DS plan {self}: need kd_steps >= 0 and positive batch and steps.")


class SALTDSSampler(Sampler[int]):
    """Yields :class:`SALTDSSource` indices: pool rows for the positions of the first n_KD optimizer steps, the
    train rows of plain training elsewhere. A pure function of (epoch, offset, seed); see the module docstring.

    Args:
        source: the :class:`SALTDSSource` the loader reads.
        plan: the :class:`SALTDSPlan`, or a callable returning it, read when an epoch starts (the trainer
            knows n_KD and the steps per epoch only once training starts).
        seed: shuffling seed (the Trainer's ``data_seed``, else ``seed``).
        shuffle: False reads the train set in its own order (``train_sampling_strategy="sequential"``).
    """

    def __init__(
        self,
        source: SALTDSSource,
        plan: SALTDSPlan | Callable[[], SALTDSPlan],
        *,
        seed: int = 0,
        shuffle: bool = True,
    ):
        self.source = source
        self._plan = plan
        self.seed = int(seed)
        self.shuffle = shuffle
        self._pool_perms: dict[int, np.ndarray] = {}
        self._warned = False

    @property
    def plan(self) -> SALTDSPlan:
        return self._plan() if callable(self._plan) else self._plan

    def __len__(self) -> int:
        return len(self.source)

    def set_epoch(self, epoch: int) -> None:
        self.source.set_epoch(epoch)

    def pool_positions(self, epoch: int, plan: SALTDSPlan | None = None) -> int:
        """How many positions of ``epoch`` (its first ones) read the pool."""
        plan = plan or self.plan
        steps_left = plan.kd_steps - epoch * plan.steps_per_epoch
        return min(len(self.source), max(0, steps_left * plan.global_batch_size))

    def _pool_row(self, k: int) -> int:
        m = len(self.source.pool)
        npass = k // m
        if npass not in self._pool_perms:
            if len(self._pool_perms) > 8:  # long KD stages: keep only recent passes
                self._pool_perms.pop(next(iter(self._pool_perms)))
            self._pool_perms[npass] = np.random.default_rng((self.seed, 0, npass)).permutation(m)
        return int(self._pool_perms[npass][k % m])

    def train_order(self, epoch: int) -> list[int]:
        """The train rows plain training reads in ``epoch``."""
        n = len(self.source)
        if not self.shuffle:
            return list(range(n))
        return torch.randperm(n, generator=torch.Generator().manual_seed(self.seed + epoch)).tolist()

    def epoch_indices(self, epoch: int) -> list[int]:
        """The source indices of ``epoch``, in reading order."""
        plan = self.plan
        n = len(self.source)
        pool_before = sum(self.pool_positions(e, plan) for e in range(epoch))
        n_pool = self.pool_positions(epoch, plan)
        if not self._warned:
            self._warned = True
            total = sum(
                self.pool_positions(e, plan) for e in range(-(-plan.kd_steps // plan.steps_per_epoch))
            )
            if total > len(self.source.pool):
                logger.warning(
                    "SALT_DS: the KD stage reads %d sequences but the pool holds %d; the pool is repeated "
                    "(%.1f passes, re-shuffled each pass).",
                    total,
                    len(self.source.pool),
                    total / len(self.source.pool),
                )
        pool = [n + self._pool_row(pool_before + o) for o in range(n_pool)]
        return pool + self.train_order(epoch)[n_pool:]

    def __iter__(self) -> Iterator[int]:
        yield from self.epoch_indices(self.source.epoch)

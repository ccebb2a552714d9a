"""SALT_DS scoring: one offline pass of the small model over the candidate sequences.

Score of a sequence x (our reading of Eq. 10 of Rawat et al. 2024, arXiv 2410.18779; see docs/salt_ds.md):

    T_k(x) = { t : x_t is among the teacher's top-k predictions at position t }   ("learnable")
    s(x)   = median_{t in T_k(x)}  -log p_teacher(x_t | x_<t)                       ("challenging")

Positions whose target is -100 (or padding, attention_mask == 0) never count. The score is computed from the
teacher's final hidden states through its output head, chunk by chunk over positions, so no
[batch, seq, vocab] float32 tensor exists beyond one chunk, and positions without a target are never
projected at all.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
from pathlib import Path
from typing import Any, Literal

import datasets
import numpy as np
import torch
from torch import nn

from hf_salt.checks import check_finite
from hf_salt.salt.divergences import logit_transform, transform_logits
from hf_salt.salt.output_path import logits_match

logger = logging.getLogger(__name__)

SCORE_COLUMN = "salt_ds_score"
MEDIAN_COLUMN = "salt_ds_median"
MEAN_COLUMN = "salt_ds_mean"
NUM_LEARNABLE_COLUMN = "salt_ds_num_learnable"
SCORE_COLUMNS = (SCORE_COLUMN, MEDIAN_COLUMN, MEAN_COLUMN, NUM_LEARNABLE_COLUMN)
# Score of a sequence without a single learnable position: it sorts below every real score, so "top"
# selection never picks it, and `select` drops such sequences from every pool.
NO_LEARNABLE_SCORE = float("-inf")
# Bump when the definition of the score changes: it is part of the cache fingerprint.
_SCORE_VERSION = "salt_ds-score-v1"

Statistic = Literal["median", "mean"]


def teacher_fingerprint(teacher: nn.Module) -> str:
    """Hash of the teacher's config and every parameter and buffer (names, dtypes, shapes, bytes).

    Part of the cache key: a retrained or differently initialised teacher must never reuse old scores.
    Cost: one read of the weights (about a second per GB), small next to a scoring pass.
    """
    h = hashlib.blake2b(digest_size=16)
    config = getattr(teacher, "config", None)
    if config is not None:
        h.update(config.to_json_string(use_diff=False).encode())
    h.update(type(teacher).__name__.encode())
    for name, tensor in teacher.state_dict().items():
        h.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}".encode())
        flat = tensor.detach().reshape(-1).contiguous()
        h.update(flat.view(torch.uint8).cpu().numpy().tobytes())
    return h.hexdigest()


def teacher_vocab_size(teacher: nn.Module) -> int:
    """Rows of the output head: the number of token ids the teacher can score."""
    head = teacher.get_output_embeddings()
    if head is None or not hasattr(head, "weight"):
        raise ValueError(
            f"{type(teacher).__name__} has no output embedding layer; SALT_DS needs a causal LM with an LM head."
        )
    return int(head.weight.shape[0])


def check_token_ids(dataset: datasets.Dataset, vocab_size: int, *, what: str = "the teacher") -> None:
    """Raise if a token id in `input_ids` / `labels` falls outside `[0, vocab_size)` (labels may be -100).

    One vectorised Arrow pass, so a tokenizer/teacher mismatch fails before any forward pass.
    """
    import pyarrow.compute as pc

    columns = [c for c in ("input_ids", "labels") if c in dataset.column_names]
    lo, hi = None, None
    for batch in dataset.with_format("arrow", columns=columns).iter(batch_size=4096):
        for name in columns:
            values = pc.list_flatten(batch[name])
            if len(values) == 0:
                continue
            if name == "labels":
                values = pc.filter(values, pc.not_equal(values, -100))
                if len(values) == 0:
                    continue
            mm = pc.min_max(values)
            lo = mm["min"].as_py() if lo is None else min(lo, mm["min"].as_py())
            hi = mm["max"].as_py() if hi is None else max(hi, mm["max"].as_py())
    if hi is not None and (hi >= vocab_size or lo < 0):
        raise ValueError(
            f"The dataset holds token ids in [{lo}, {hi}] but {what} has a vocabulary of {vocab_size}: "
            "tokenize the data with the tokenizer the model was trained with."
        )


def check_lengths(dataset: datasets.Dataset, teacher: nn.Module) -> None:
    """Raise if a row is longer than the teacher's positions (learned positions would index out of range)."""
    import pyarrow.compute as pc

    from hf_salt.checks import check_positions

    longest = 0
    for batch in dataset.with_format("arrow", columns=["input_ids"]).iter(batch_size=4096):
        if len(batch):
            longest = max(longest, pc.max(pc.list_value_length(batch["input_ids"])).as_py() or 0)
    check_positions(longest, teacher.config, "score_dataset", "Pack the data into shorter blocks.")


def _pad(values: Any, pad: int) -> torch.Tensor:
    if isinstance(values, torch.Tensor):
        return values
    return torch.nn.utils.rnn.pad_sequence(
        [torch.as_tensor(v) for v in values], batch_first=True, padding_value=pad
    )


def _final_logit_transform(teacher: nn.Module):
    """The teacher's final logit transform (scale, soft-cap; see `hf_salt.salt.losses.logit_transform`), or
    None when its logits are plain head(hidden)."""
    scale, cap = logit_transform(getattr(teacher, "config", None))
    if scale in (None, 1.0) and not cap:
        return None
    return functools.partial(transform_logits, logit_scale=scale, softcap=cap)


@torch.no_grad()
def position_stats(
    hidden: torch.Tensor | None,
    targets: torch.Tensor,
    head: nn.Module | None,
    *,
    top_k: int,
    chunk_size: int,
    logits: torch.Tensor | None = None,
    transform=None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-position teacher loss and top-k membership, `chunk_size` rows of logits at a time.

    `hidden` [N, H] (projected through `head`) or `logits` [N, V] (overwritten in place); `targets` [N].
    Returns float32 loss
    -log p(target) and a bool "learnable" mask: the target's logit is >= the k-th largest logit, i.e.
    fewer than k logits are strictly larger (ties at the k-th place count as learnable).
    """
    rows = targets.shape[0]
    device = targets.device
    loss = torch.empty(rows, dtype=torch.float32, device=device)
    learnable = torch.empty(rows, dtype=torch.bool, device=device)
    for start in range(0, rows, chunk_size):
        end = min(start + chunk_size, rows)
        chunk = head(hidden[start:end]) if logits is None else logits[start:end]
        chunk = chunk.float()  # a fresh tensor (head output or the caller's copy): overwritten below
        if transform is not None:
            chunk = transform(chunk)
        true = chunk.gather(1, targets[start:end, None])
        # "fewer than k logits strictly above the target's" == "target >= k-th largest"; cheaper than topk
        above = (chunk > true).sum(dim=-1, dtype=torch.int32)
        learnable[start:end] = above < top_k
        # logsumexp in place: no [chunk, vocab] temporaries beyond the chunk itself
        peak = chunk.amax(dim=-1, keepdim=True)
        total = chunk.sub_(peak).exp_().sum(dim=-1)
        loss[start:end] = total.log_() + peak[:, 0] - true[:, 0]
    return loss, learnable


def sequence_stats(
    loss: torch.Tensor, learnable: torch.Tensor, index: torch.Tensor, shape: tuple[int, int]
) -> dict[str, torch.Tensor]:
    """Median / mean of the learnable losses per sequence (vectorised: one sort of a [batch, seq] tensor).

    The median is the conventional one (mean of the two middle values for an even count). A sequence with
    no learnable position scores `NO_LEARNABLE_SCORE` (-inf) for both statistics, never NaN.
    """
    batch, positions = shape
    keep = index[learnable]
    vals = torch.full((batch * positions,), float("inf"), dtype=torch.float64, device=loss.device)
    vals[keep] = loss[learnable].double()
    vals = vals.view(batch, positions)
    count = torch.zeros(batch * positions, dtype=torch.long, device=loss.device)
    count[keep] = 1
    count = count.view(batch, positions).sum(-1)
    finite = torch.where(torch.isinf(vals), torch.zeros_like(vals), vals)
    mean = finite.sum(-1) / count.clamp(min=1)
    ordered = vals.sort(dim=-1).values
    lo = ((count - 1).clamp(min=0) // 2)[:, None]
    hi = (count // 2).clamp(max=positions - 1)[:, None]
    median = (ordered.gather(1, lo) + ordered.gather(1, hi))[:, 0] / 2
    empty = count == 0
    median = median.masked_fill(empty, NO_LEARNABLE_SCORE)
    mean = mean.masked_fill(empty, NO_LEARNABLE_SCORE)
    return {"median": median, "mean": mean, "count": count}


class _Scorer:
    """The `Dataset.map` function: one teacher forward per batch, chunked head, per-sequence statistics."""

    def __init__(
        self, teacher: nn.Module, *, top_k: int, statistic: str, chunk_size: int, device: torch.device
    ):
        self.teacher = teacher
        self.base = teacher.base_model
        self.head = teacher.get_output_embeddings()
        self.transform = _final_logit_transform(teacher)
        self.top_k = top_k
        self.statistic = statistic
        self.chunk_size = chunk_size
        self.device = device
        self.use_hidden: bool | None = None  # decided on the first batch

    def _hidden(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        out = self.base(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
        return out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]

    def _check_head(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> bool:
        """Does head(base_model(x)) reproduce the model's own logits? (Architectures with extra logit
        scaling would silently score wrong otherwise.) One sequence, once per call."""
        ids = input_ids[:1, :16]  # the head doesn't depend on length: keep the check cheap
        am = None if attention_mask is None else attention_mask[:1, :16]
        ref = self.teacher(
            input_ids=ids, attention_mask=am, use_cache=False
        ).logits  # its dtype sets the tolerance
        try:
            ours = self.head(self._hidden(ids, am)).float()
        except (RuntimeError, ValueError):  # a head that projects to another width first (RemBERT)
            ok = False
        else:
            if self.transform is not None:
                ours = self.transform(ours)
            ok = logits_match(ours, ref)  # the same rule as SALTTrainer's output-path probe
        if not ok:
            logger.warning(
                "SALT_DS: %s's logits are not head(last_hidden_state); scoring from the full logits instead "
                "(correct, but one [batch, seq, vocab] tensor per batch).",
                type(self.teacher).__name__,
            )
        return ok

    @torch.no_grad()
    def __call__(self, batch: dict[str, Any]) -> dict[str, np.ndarray]:
        input_ids = _pad(batch["input_ids"], 0).to(self.device)
        attention_mask = batch.get("attention_mask")
        if attention_mask is not None:
            attention_mask = _pad(attention_mask, 0).to(self.device)
        elif not isinstance(batch["input_ids"], torch.Tensor):  # ragged rows without a mask: mask the padding
            attention_mask = _pad([torch.ones(len(r), dtype=torch.long) for r in batch["input_ids"]], 0).to(
                self.device
            )
        labels = batch.get("labels")
        labels = input_ids.clone() if labels is None else _pad(labels, -100).to(self.device)
        if attention_mask is not None:
            labels = labels.masked_fill(attention_mask == 0, -100)

        targets = labels[:, 1:]
        valid = targets != -100
        if attention_mask is not None:  # a position with padding as input predicts nothing
            valid &= attention_mask[:, :-1] != 0
        bsz, positions = targets.shape
        index = valid.reshape(-1).nonzero().squeeze(1)
        flat_targets = targets.reshape(-1).index_select(0, index)

        if self.use_hidden is None:
            self.use_hidden = self._check_head(input_ids, attention_mask)
        if self.use_hidden:
            hidden = self._hidden(input_ids, attention_mask)[:, :-1]
            hidden = hidden.reshape(-1, hidden.shape[-1]).index_select(0, index)
            loss, learnable = position_stats(
                hidden,
                flat_targets,
                self.head,
                top_k=self.top_k,
                chunk_size=self.chunk_size,
                transform=self.transform,
            )
        else:
            logits = self.teacher(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits
            logits = logits[:, :-1].reshape(-1, logits.shape[-1]).index_select(0, index)
            loss, learnable = position_stats(
                None, flat_targets, None, top_k=self.top_k, chunk_size=self.chunk_size, logits=logits
            )
        stats = sequence_stats(loss, learnable, index, (bsz, positions))
        primary = stats[self.statistic]
        return {
            SCORE_COLUMN: primary.cpu().numpy(),
            MEDIAN_COLUMN: stats["median"].cpu().numpy(),
            MEAN_COLUMN: stats["mean"].cpu().numpy(),
            NUM_LEARNABLE_COLUMN: stats["count"].cpu().numpy(),
        }


def _default_device(teacher: nn.Module) -> torch.device:
    from accelerate import PartialState

    state_device = PartialState().device
    param = next(teacher.parameters())
    if param.device.type != "cpu":
        return param.device
    return torch.device(state_device)


def _cache_dir(dataset: datasets.Dataset, cache_dir: str | os.PathLike | None) -> Path:
    if cache_dir is not None:
        return Path(cache_dir)
    if dataset.cache_files:  # next to the dataset's own Arrow files, like `Dataset.map`
        return Path(dataset.cache_files[0]["filename"]).parent
    return Path(datasets.config.HF_DATASETS_CACHE) / "hf_salt" / "salt_ds"


def score_dataset(
    dataset: datasets.Dataset,
    teacher: nn.Module,
    *,
    top_k: int = 10,
    statistic: Statistic = "median",
    batch_size: int = 16,
    chunk_size: int | None = None,
    device: str | torch.device | None = None,
    cache_dir: str | os.PathLike | None = None,
    load_from_cache_file: bool | None = None,
    teacher_hash: str | None = None,
) -> datasets.Dataset:
    """Score every sequence of `dataset` with `teacher`; return the dataset plus the SALT_DS columns.

    Added columns: `salt_ds_score` (the chosen `statistic`), `salt_ds_median`, `salt_ds_mean` (both are
    computed, selection can switch), `salt_ds_num_learnable` (positions in the teacher's top-k). A sequence
    with no learnable position scores -inf.

    Args:
        dataset: rows with `input_ids` (packed blocks or ragged rows), optionally `attention_mask` and
            `labels` (-100 = ignore; defaults to `input_ids`). Row t's loss is for predicting token t+1.
        teacher: a causal LM (`*ForCausalLM`) with the data's vocabulary; used in eval mode, no grad.
        top_k: a target is learnable when its logit is >= the k-th largest logit (the paper's k = 10).
        statistic: "median" (the paper) or "mean" of the learnable losses, stored in `salt_ds_score`.
        batch_size: sequences per teacher forward.
        chunk_size: positions per logits chunk (default: 4M logits = 16 MB float32 on CPU, 64M on GPU).
        device: where to run; default the teacher's accelerator, else accelerate's device (GPU if any).
            The teacher is moved there for the call and moved back afterwards.
        cache_dir: where the cached score file goes (default: next to the dataset's Arrow files, or
            `$HF_DATASETS_CACHE/hf_salt/salt_ds` for an in-memory dataset).
        load_from_cache_file: reuse a cached result (default: `datasets.is_caching_enabled()`).
        teacher_hash: skip hashing the weights by giving a stable identifier of the teacher yourself.

    The cache key is the dataset fingerprint + a hash of the teacher's config and weights + `top_k` +
    `statistic`: a second call with the same teacher and data loads the score file and runs no forward.
    Under `accelerate launch` every rank scores its contiguous shard; the scores are gathered so every rank
    returns the full scored dataset.
    """
    if not isinstance(dataset, datasets.Dataset):
        raise TypeError(f"score_dataset needs a map-style datasets.Dataset, got {type(dataset).__name__}.")
    if "input_ids" not in dataset.column_names:
        raise ValueError(
            f"The dataset has no 'input_ids' column (columns: {dataset.column_names}); pack it first."
        )
    clash = [c for c in SCORE_COLUMNS if c in dataset.column_names]
    if clash:
        raise ValueError(f"The dataset already has SALT_DS columns {clash}; remove them to score again.")
    if statistic not in ("median", "mean"):
        raise ValueError(f"statistic must be 'median' or 'mean', got {statistic!r}.")
    vocab = teacher_vocab_size(teacher)
    if not 1 <= top_k <= vocab:
        raise ValueError(f"top_k must be in [1, {vocab}] (the teacher's vocabulary), got {top_k}.")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
    if len(dataset) == 0:
        raise ValueError("The dataset is empty: nothing to score.")
    check_token_ids(dataset, vocab)
    check_lengths(dataset, teacher)
    check_finite(
        teacher, "the scoring teacher"
    )  # NaN weights give NaN scores, which select nothing meaningful
    dev = torch.device(device) if device is not None else _default_device(teacher)
    if chunk_size is None:  # CPU: a chunk that stays near the caches; GPU: large enough to fill the device
        chunk_size = max(64, (2**22 if dev.type == "cpu" else 2**26) // vocab)

    from accelerate import PartialState

    state = PartialState()
    shard = dataset
    if state.num_processes > 1:
        shard = dataset.shard(num_shards=state.num_processes, index=state.process_index, contiguous=True)

    key = hashlib.blake2b(digest_size=16)
    for part in (
        _SCORE_VERSION,
        shard._fingerprint,
        teacher_hash or teacher_fingerprint(teacher),
        top_k,
        statistic,
    ):
        key.update(f"{part}|".encode())
    fingerprint = key.hexdigest()
    directory = _cache_dir(dataset, cache_dir)
    directory.mkdir(parents=True, exist_ok=True)
    cache_file = directory / f"salt_ds-{fingerprint}.arrow"

    columns = [c for c in ("input_ids", "attention_mask", "labels") if c in shard.column_names]
    scores = None
    if load_from_cache_file is not False and datasets.is_caching_enabled() and cache_file.exists():
        scores = datasets.Dataset.from_file(str(cache_file))  # no teacher involved at all
    if scores is None:
        original_device = next(teacher.parameters()).device
        was_training = teacher.training
        dispatched = getattr(teacher, "hf_device_map", None) is not None  # big-model dispatch: don't move
        if dispatched:
            dev = original_device
        else:
            teacher.to(dev)
        teacher.eval()
        try:
            scores = shard.with_format("torch", columns=columns).map(
                _Scorer(teacher, top_k=top_k, statistic=statistic, chunk_size=chunk_size, device=dev),
                batched=True,
                batch_size=batch_size,
                remove_columns=shard.column_names,
                new_fingerprint=fingerprint,
                cache_file_name=str(cache_file),
                load_from_cache_file=load_from_cache_file,
                desc=f"SALT_DS scoring (rank {state.process_index})"
                if state.num_processes > 1
                else "SALT_DS scoring",
            )
        finally:
            if not dispatched:
                teacher.to(original_device)
            teacher.train(was_training)
        scores = scores.with_format(None)

    if state.num_processes > 1:
        from accelerate.utils import gather_object

        mine = scores.to_dict()  # plain lists: a few numbers per sequence
        parts = gather_object([(state.process_index, mine)])
        parts = sorted(parts, key=lambda p: p[0])
        merged = {c: [v for _, part in parts for v in part[c]] for c in SCORE_COLUMNS}
        scores = datasets.Dataset.from_dict(merged, features=scores.features)
    scored = datasets.concatenate_datasets([dataset, scores], axis=1)
    # how it was scored, for the model card (`select` carries it into `salt_ds_selection`)
    scored.salt_ds_scoring = {"top_k": top_k, "statistic": statistic}
    return scored

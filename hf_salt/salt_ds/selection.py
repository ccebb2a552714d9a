"""SALT_DS selection: which scored sequences feed the KD stage.

The paper (Rawat et al. 2024) keeps "challenging yet learnable" sequences but does not publish the rule, so
both readings are offered: the top scores (default) or a percentile band (low, high) of the scores.
"""

from __future__ import annotations

import datasets
import numpy as np

from hf_salt.salt_ds.scoring import (
    MEAN_COLUMN,
    MEDIAN_COLUMN,
    NUM_LEARNABLE_COLUMN,
    SCORE_COLUMN,
    check_token_ids,
)

_STATISTIC_COLUMNS = {None: SCORE_COLUMN, "median": MEDIAN_COLUMN, "mean": MEAN_COLUMN}


def kd_budget(kd_steps: int, global_batch_size: int) -> int:
    """Sequences the KD stage consumes: `kd_steps` optimizer steps of `global_batch_size` sequences
    (per-device batch x gradient accumulation x number of processes)."""
    if kd_steps < 0 or global_batch_size < 1:
        raise ValueError(
            f"kd_steps must be >= 0 and global_batch_size >= 1, got {kd_steps} and {global_batch_size}."
        )
    return int(kd_steps) * int(global_batch_size)


def select(
    scored: datasets.Dataset,
    *,
    n: int | None = None,
    fraction: float | None = None,
    band: tuple[float, float] | None = None,
    statistic: str | None = None,
    kd_steps: int | None = None,
    global_batch_size: int | None = None,
    seed: int = 0,
    vocab_size: int | None = None,
) -> datasets.Dataset:
    """Pick the KD-stage pool from a dataset scored by `score_dataset`.

    How many: `n`, or `fraction` of the eligible sequences, or `kd_budget(kd_steps, global_batch_size)`
    (exactly one of the three; with `band` and none of them, the whole band). Eligible = at least one
    learnable position (sequences scored -inf are never selected).

    Which: without `band`, the `n` highest scores (ties broken by row order). With `band=(low, high)`,
    percentiles in [0, 100] of the eligible scores (rank-based: row of rank r among m has percentile
    100 r / m; kept if low <= percentile < high, or <= 100 for high == 100); if fewer than the band are
    wanted, a `seed`-ed random subset of it.

    `statistic`: None uses `salt_ds_score` (what `score_dataset` was asked for); "median"/"mean" use that
    column. `vocab_size`: the student's vocabulary; token ids outside it are an error here, not at step 1.
    The result keeps the dataset's row order (the SALT_DS sampler shuffles it).
    """
    if statistic not in _STATISTIC_COLUMNS:
        raise ValueError(f"statistic must be None, 'median' or 'mean', got {statistic!r}.")
    column = _STATISTIC_COLUMNS[statistic]
    missing = [c for c in (column, NUM_LEARNABLE_COLUMN, "input_ids") if c not in scored.column_names]
    if missing:
        raise ValueError(
            f"The dataset lacks column(s) {missing} (has {scored.column_names}): "
            "score it with hf_salt.salt_ds.score_dataset (or `hf-salt score`) first."
        )
    given = [name for name, v in (("n", n), ("fraction", fraction), ("kd_steps", kd_steps)) if v is not None]
    if len(given) > 1:
        raise ValueError(f"Give only one of n, fraction, kd_steps (+ global_batch_size); got {given}.")
    if kd_steps is not None:
        if global_batch_size is None:
            raise ValueError(
                "kd_steps needs global_batch_size (per-device batch x accumulation x processes)."
            )
        n = kd_budget(kd_steps, global_batch_size)
    if not given and band is None:
        raise ValueError(
            "Say how many sequences to select: n=..., fraction=..., or kd_steps=... with global_batch_size=... "
            "(the KD budget, see kd_budget)."
        )
    if vocab_size is not None:
        check_token_ids(scored, vocab_size, what="the student")

    scores = np.asarray(scored.with_format("numpy", columns=[column])[column], dtype=np.float64)
    learnable = np.asarray(scored.with_format("numpy", columns=[NUM_LEARNABLE_COLUMN])[NUM_LEARNABLE_COLUMN])
    if np.isnan(scores).any():
        raise ValueError(f"Column {column!r} holds NaN scores; re-score the dataset with score_dataset.")
    eligible = np.flatnonzero((learnable > 0) & np.isfinite(scores))
    if eligible.size == 0:
        raise ValueError("Empty selection: no scored sequence has a learnable token (all scores are -inf).")

    if fraction is not None:
        if not 0.0 < fraction <= 1.0:
            raise ValueError(f"fraction must be in (0, 1], got {fraction}.")
        n = max(1, int(round(fraction * eligible.size)))
    if n is not None and n < 1:
        raise ValueError(f"Empty selection: n must be >= 1, got {n}.")

    # eligible rows, highest score first; stable sort keeps row order among ties
    order = eligible[np.argsort(-scores[eligible], kind="stable")]
    if band is None:
        if n > order.size:
            raise ValueError(
                f"The budget ({n} sequences) is larger than the pool ({order.size} scored sequences with a "
                "learnable token): score more data, lower n / kd_steps, or reuse the pool on purpose by "
                "passing n=len(pool) (the SALT_DS sampler then repeats it)."
            )
        chosen = order[:n]
    else:
        low, high = _check_band(band)
        m = order.size
        ascending = order[::-1]
        pct = 100.0 * np.arange(m) / m
        in_band = ascending[(pct >= low) & ((pct < high) | (high == 100.0))]
        if in_band.size == 0:
            raise ValueError(f"Empty selection: the band {band} holds no sequence of the {m} eligible ones.")
        if n is None:
            chosen = in_band
        elif n > in_band.size:
            raise ValueError(
                f"The budget ({n} sequences) is larger than the band {band} ({in_band.size} sequences): "
                "widen the band, score more data or lower n / kd_steps."
            )
        else:
            chosen = np.random.default_rng(seed).choice(in_band, size=n, replace=False)
    pool = scored.select(np.sort(chosen))
    # recorded for the model card (SALTTrainer.create_model_card reads it from salt_ds_pool)
    scoring = getattr(scored, "salt_ds_scoring", None) or {}  # set by score_dataset / `pretrain --salt_ds`
    pool.salt_ds_selection = {
        "pool_size": len(scored),
        "selected_size": len(pool),
        "top_k": scoring.get("top_k"),
        "statistic": statistic or scoring.get("statistic") or "as scored",
        "band": f"{band[0]:g}-{band[1]:g} percentile" if band is not None else "top scores",
    }
    return pool


def _check_band(band: tuple[float, float]) -> tuple[float, float]:
    try:
        low, high = (float(b) for b in band)
    except (TypeError, ValueError):
        raise ValueError(f"band must be a pair (low, high) of percentiles, got {band!r}.") from None
    if not 0.0 <= low < high <= 100.0:
        raise ValueError(f"band must satisfy 0 <= low < high <= 100 (percentiles), got {band!r}.")
    return low, high

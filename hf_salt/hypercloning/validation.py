"""Argument checks shared by the Python API and ``hf-salt grow``: one rule, one message, before any work.

Paths (the source model, the output folder) are checked by :mod:`hf_salt.checks`, as in every other command.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

DEPTH_MODES = ("interleave", "append")


def check_multiplier(name: str, value: Any) -> int:
    if isinstance(value, float) and value.is_integer() and value >= 1:
        return int(value)
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or int(value) < 1:
        raise ValueError(
            f"{name} must be a positive integer (HyperCloning repeats every vector an integer number of times), "
            f"got {value!r}. Fractional growth cannot preserve the function exactly."
        )
    return int(value)


MIN_SNR_DB = -10.0  # noise 10x the weights' power: the paired noise still cancels, rounding grows with it


def check_snr_db(snr_db: Any) -> float | None:
    """``None`` (no noise) or a finite signal-to-noise ratio in dB, at least ``MIN_SNR_DB``."""
    if snr_db is None:
        return None
    if isinstance(snr_db, bool) or not isinstance(snr_db, numbers.Real) or not math.isfinite(snr_db):
        raise ValueError(f"snr_db must be a finite number of decibels (e.g. 0) or None, got {snr_db!r}.")
    if snr_db < MIN_SNR_DB:
        raise ValueError(
            f"snr_db={snr_db:g} dB would add noise more than {10 ** (-MIN_SNR_DB / 10):g}x stronger than the "
            "weights; the paired noise cancels only up to rounding, which grows with it, and training would "
            f"start from mostly noise. Use snr_db >= {MIN_SNR_DB:g} (0 is the recipe's default)."
        )
    return float(snr_db)


def check_tolerance(tolerance: Any) -> float | None:
    if tolerance is None:
        return None
    if isinstance(tolerance, bool) or not isinstance(tolerance, numbers.Real) or not tolerance > 0:
        raise ValueError(f"tolerance must be a positive number (e.g. 1e-4), got {tolerance!r}.")
    if not math.isfinite(tolerance):
        raise ValueError("tolerance must be finite: an infinite tolerance would accept any clone.")
    return float(tolerance)


def check_depth_mode(mode: Any) -> str:
    if mode not in DEPTH_MODES:
        raise ValueError(f"depth_mode must be 'interleave' or 'append', got {mode!r}.")
    return mode


def check_grow_args(
    width_multiplier: Any,
    ffn_multiplier: Any,
    depth_multiplier: Any,
    snr_db: Any,
    depth_mode: Any,
    tolerance: Any = None,
) -> tuple[int, int, int, float | None]:
    """Every growth argument at once; returns ``(n, m, depth, snr_db)``."""
    n = check_multiplier("width_multiplier", width_multiplier)
    m = check_multiplier("ffn_multiplier", n if ffn_multiplier is None else ffn_multiplier)
    depth = check_multiplier("depth_multiplier", depth_multiplier)
    check_depth_mode(depth_mode)
    check_tolerance(tolerance)
    return n, m, depth, check_snr_db(snr_db)

"""Argument checks shared by the Python API and ``hf-salt grow``: one rule, one message, before any work."""

from __future__ import annotations

import math
import numbers
import os
from pathlib import Path
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


def check_snr_db(snr_db: Any) -> float | None:
    """``None`` (no noise) or a finite, non-negative signal-to-noise ratio in dB."""
    if snr_db is None:
        return None
    if isinstance(snr_db, bool) or not isinstance(snr_db, numbers.Real) or not math.isfinite(snr_db):
        raise ValueError(f"snr_db must be a finite number of decibels (e.g. 10) or None, got {snr_db!r}.")
    if snr_db < 0:
        raise ValueError(
            f"snr_db={snr_db:g} dB would add noise stronger than the weights themselves; the function would only "
            "survive up to rounding and training would start from mostly noise. Use snr_db >= 0 (10 is typical)."
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


def looks_like_local_path(src: str | os.PathLike) -> bool:
    """A path (not a Hub repo id): absolute, relative with ``./`` ``../`` ``~``, or with more than one ``/``."""
    text = os.fspath(src)
    return (
        isinstance(src, Path)
        or text.startswith(("/", "./", "../", "~", "."))
        or text.count("/") > 1
        or os.sep != "/"
        and os.sep in text
    )


def check_source_folder(src: str | os.PathLike) -> None:
    """Refuse a local path that does not exist with "no such folder" (instead of a Hub repo-id error)."""
    path = Path(src).expanduser()
    if looks_like_local_path(src) and not path.exists():
        raise FileNotFoundError(
            f"no such folder: {os.fspath(src)!r} (the source model must be a local folder or a Hub id)."
        )
    if path.exists() and not path.is_dir():
        raise ValueError(f"{os.fspath(src)!r} is a file, not a model folder.")
    if path.is_dir():
        from hf_salt.checks import check_model_path

        check_model_path(os.fspath(src), "the source model")  # config.json that parses, a weights file


def check_output_folder(dst: str | os.PathLike, overwrite: bool) -> Path:
    """The output folder must be creatable and writable, checked before any growing starts."""
    path = Path(dst).expanduser().absolute()
    if path.exists() and not path.is_dir():
        raise ValueError(
            f"{os.fspath(dst)!r} exists and is a file; choose a folder path for the grown model."
        )
    if path.exists() and any(path.iterdir()) and not overwrite:
        raise ValueError(
            f"{os.fspath(dst)!r} exists and is not empty; choose another folder or pass overwrite."
        )
    parent = path.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise ValueError(f"cannot create {os.fspath(dst)!r}: {str(parent)!r} is a file, not a folder.")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ValueError(f"cannot write {os.fspath(dst)!r}: no write permission in {str(parent)!r}.")
    return path

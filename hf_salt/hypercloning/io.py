"""Write a grown model atomically: a complete folder or nothing."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from transformers import PreTrainedModel

from hf_salt.io import atomic_directory


def save_pretrained_atomic(
    model: PreTrainedModel,
    save_directory: str | os.PathLike,
    *,
    tokenizer: Any | None = None,
    overwrite: bool = False,
    **save_kwargs: Any,
) -> Path:
    """``save_pretrained`` into a temporary folder beside ``save_directory``, then rename it into place.

    An interrupted or failing save leaves no half-written checkpoint that a later load would half-read.
    """
    dst = Path(save_directory).absolute()
    if dst.exists() and (not dst.is_dir() or any(dst.iterdir())) and not overwrite:
        raise FileExistsError(
            f"{dst} already exists and is not empty; choose another folder or pass overwrite=True."
        )
    with atomic_directory(dst) as tmp:
        model.save_pretrained(tmp, **save_kwargs)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
    return dst

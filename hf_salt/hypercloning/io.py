"""Write a grown model atomically: a complete folder or nothing."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from transformers import PreTrainedModel


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
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dst.name}.tmp-", dir=dst.parent))
    try:
        model.save_pretrained(tmp, **save_kwargs)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        if dst.exists():
            old = dst.with_name(f".{dst.name}.old-{os.getpid()}")
            os.rename(dst, old)
            os.rename(tmp, dst)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, dst)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dst

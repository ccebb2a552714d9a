"""Write output folders completely or not at all."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_directory(path: str | Path, overwrite: bool = True) -> Iterator[Path]:
    """Yield a temporary folder beside `path`; on success it replaces `path` in one rename.

    On any error the temporary folder is removed and `path` is left as it was, so a crash never leaves a
    half-written model folder behind.
    """
    path = Path(path).expanduser().resolve()
    if path.exists() and not overwrite:
        raise FileExistsError(f"{str(path)!r} already exists; choose another folder or pass overwrite=True.")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        yield tmp
        backup = None
        if path.exists():
            backup = path.with_name(f".{path.name}.old-{os.getpid()}")
            os.replace(path, backup)
        os.replace(tmp, path)
        if backup is not None:
            shutil.rmtree(backup, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def save_pretrained_atomic(path: str | Path, *objects: object) -> Path:
    """`save_pretrained` each object (model, tokenizer, ...) into `path`, atomically."""
    with atomic_directory(path) as tmp:
        for obj in objects:
            obj.save_pretrained(str(tmp))  # type: ignore[attr-defined]
    return Path(path)

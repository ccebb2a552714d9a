"""Old names kept working: options and config fields that were renamed are mapped to their current names."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any


def rename_keys(
    values: dict[str, Any], renamed: dict[str, str], where: str | None = None, stacklevel: int = 3
) -> dict[str, Any]:
    """``values`` with old option names (``renamed``: old name -> new name) replaced by the current ones.

    Said with a FutureWarning naming ``where`` (a config file, a class's keywords); ``where=None`` renames
    silently, for records saved under the old name (nothing for the user to update)."""
    out = dict(values)
    for old in [k for k in out if k in renamed]:
        if where is not None:
            warnings.warn(
                f"{where}: {old} is deprecated; use {renamed[old]} (same meaning).",
                FutureWarning,
                stacklevel=stacklevel,
            )
        out[renamed[old]] = out.pop(old)
    return out


def rename_options(argv: Sequence[str], renamed: dict[str, str], prog: str | None = None) -> list[str]:
    """Old option names -> current ones (``renamed``: old name -> new name, without dashes), with a
    FutureWarning each, so scripts written against an old name keep working while they are updated."""
    out = []
    for arg in argv:
        flag, eq, value = arg.partition("=")
        old = flag[2:].replace("-", "_") if flag.startswith("--") else None
        if old in renamed:
            warnings.warn(
                f"{prog or 'hf-salt'}: --{old} is deprecated; use --{renamed[old]} (same meaning).",
                FutureWarning,
                stacklevel=3,
            )
            arg = f"--{renamed[old]}{eq}{value}"
        out.append(arg)
    return out

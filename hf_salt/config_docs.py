"""Config docstrings from the fields' own ``help`` metadata, grouped as TRL's configs are.

Each setting is described once, in its ``field(metadata={"help": ...})``; :func:`document_fields` appends a
grouped ``Parameters:`` list built from those to the class docstring, so ``help(SALTConfig)``, IDEs and doc
builders show the same text as ``--help``. A field the groups forget raises at import, so the list cannot drift.
"""

from __future__ import annotations

import dataclasses
import textwrap
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def _type_name(field: dataclasses.Field) -> str:
    hint = field.type if isinstance(field.type, str) else getattr(field.type, "__name__", str(field.type))
    return hint.replace("typing.", "")


def _default(field: dataclasses.Field) -> str:
    if field.default is not dataclasses.MISSING:
        return repr(field.default)
    if field.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return repr(field.default_factory())  # type: ignore[misc]
    return "required"


def document_fields(groups: dict[str, tuple[str, ...]]) -> Callable[[type[T]], type[T]]:
    """Class decorator: append the ``Parameters:`` of the fields named in ``groups`` (title -> field names).

    Every field the class declares itself (not inherited from ``TrainingArguments``) must be in a group, and
    every named field must exist.
    """

    def decorate(cls: type[T]) -> type[T]:
        fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        named = [name for names in groups.values() for name in names]
        unknown = sorted(set(named) - set(fields))
        own = [n for n in cls.__dict__.get("__annotations__", {}) if n in fields]
        missing = sorted(set(own) - set(named))
        if unknown or missing:
            raise TypeError(f"{cls.__name__} docs: unknown fields {unknown}, undocumented fields {missing}.")
        lines = ["", "Parameters:"]
        for title, names in groups.items():
            lines += [f"    > {title}", ""]
            for name in names:
                field = fields[name]
                lines.append(f"    {name} (`{_type_name(field)}`, defaults to `{_default(field)}`):")
                text = field.metadata.get("help", "").strip() or "(no description)"
                lines += textwrap.wrap(text, 108, initial_indent=" " * 8, subsequent_indent=" " * 8)
            lines.append("")
        doc = (cls.__doc__ or "").rstrip()
        body = [line for line in doc.splitlines()[1:] if line.strip()]
        indent = min((len(line) - len(line.lstrip()) for line in body), default=4) * " "
        cls.__doc__ = doc + "\n" + "\n".join(indent + line if line else "" for line in lines) + indent
        return cls

    return decorate

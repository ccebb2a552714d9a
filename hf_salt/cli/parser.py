"""Argument parsing shared by all subcommands: `HfArgumentParser` plus `--config FILE.{yaml,json}`.

Values from the config file become defaults; flags on the command line override them, as in
`trl sft --config` and `accelerate launch --config_file`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from transformers import HfArgumentParser


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Read a YAML or JSON mapping of option names to values."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Config file {str(path)!r} does not exist.")
    text = path.read_text()
    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (yaml.YAMLError, json.JSONDecodeError) as err:
        kind = "JSON" if path.suffix == ".json" else "YAML"
        raise ValueError(f"Config file {str(path)!r} is not valid {kind}: {err}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ValueError(
            f"Config file {str(path)!r} must hold a mapping of option: value, got {type(data).__name__}."
        )
    return data


def parse_args(
    dataclass_types: Sequence[type],
    argv: Sequence[str],
    prog: str | None = None,
    description: str | None = None,
) -> tuple[Any, ...]:
    """Parse `argv` into one instance per dataclass; `--config` supplies defaults.

    Unknown keys in the config file are an error (a typo must not be silently ignored).
    """
    parser = HfArgumentParser(list(dataclass_types), prog=prog, description=description)
    parser.add_argument(
        "--config", type=str, default=None, help="YAML or JSON file with option values (flags override)."
    )
    argv = list(argv)
    config_path = None
    if "--config" in argv:
        i = argv.index("--config")
        if i + 1 >= len(argv):
            parser.error("--config needs a file path")
        config_path = argv[i + 1]
        del argv[i : i + 2]
    else:
        for i, a in enumerate(argv):
            if a.startswith("--config="):
                config_path = a.split("=", 1)[1]
                del argv[i]
                break
    if config_path is not None:
        values = load_config_file(config_path)
        known = {action.dest for action in parser._actions}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(
                f"Unknown option(s) in {config_path}: {', '.join(unknown)}. Run with --help to list options."
            )
        # dict values (e.g. teacher_model_init_kwargs) are passed as JSON strings, like on the command line
        defaults = {k: (json.dumps(v) if isinstance(v, dict) else v) for k, v in values.items()}
        parser.set_defaults(**defaults)
        for action in parser._actions:  # a value from the file satisfies a required option
            if action.dest in defaults:
                action.required = False
    try:
        outputs = parser.parse_args_into_dataclasses(args=argv, return_remaining_strings=False)
    except (TypeError, ValueError) as err:
        if config_path is None:
            raise
        raise type(err)(f"{err} (check the values in {config_path})") from err
    return tuple(o for o in outputs if not isinstance(o, argparse.Namespace))


@dataclass
class Command:
    """A subcommand: the dataclasses it parses and the function that runs them."""

    dataclass_types: Sequence[type]
    run: Callable[..., int | None]
    description: str | None = None

    def main(self, argv: Sequence[str], prog: str | None = None) -> int:
        try:
            parsed = parse_args(self.dataclass_types, argv, prog=prog, description=self.description)
        except (ValueError, TypeError, FileNotFoundError) as err:
            print(f"{prog or 'hf-salt'}: error: {err}", file=sys.stderr)
            return 2
        try:
            return int(self.run(*parsed) or 0)
        except (ValueError, FileNotFoundError, NotImplementedError) as err:
            if os.environ.get("HF_SALT_DEBUG"):
                raise
            print(
                f"{prog or 'hf-salt'}: error: {err}\n(set HF_SALT_DEBUG=1 for the traceback)", file=sys.stderr
            )
            return 2

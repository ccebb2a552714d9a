"""Argument parsing shared by all subcommands: `HfArgumentParser` plus `--config FILE.{yaml,json}`.

Values from the config file become defaults; flags on the command line override them, as in
`trl sft --config` and `accelerate launch --config_file`.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import os
import shlex
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


def last_complete_checkpoint(output: str | os.PathLike) -> Path | None:
    """The complete checkpoint a resume of this output continues: the highest step in `output` (pretrain,
    distill-step-by-step), else the newest one in a run below it (the demo and benchmark keep one folder per run)."""
    from hf_salt.checkpoints import checkpoint_problem, latest_complete_checkpoint

    output = Path(output)
    if not output.is_dir():
        return None
    with contextlib.suppress(OSError):  # an unreadable folder: no checkpoint to name
        last = latest_complete_checkpoint(output)
        if last is not None:
            return last
        nested = [p for p in output.glob("**/checkpoint-*") if p.is_dir() and checkpoint_problem(p) is None]
        return max(nested, key=lambda p: (p / "trainer_state.json").stat().st_mtime, default=None)
    return None


@dataclass
class Command:
    """A subcommand: the dataclasses it parses and the function that runs them."""

    dataclass_types: Sequence[type]
    run: Callable[..., int | None]
    description: str | None = None
    # the option naming what the command writes: the run holds it (hf_salt.io.hold_output), so a second
    # command writing the same output is refused instead of mixing its files with this one's
    output_option: str | None = "output_dir"

    def output(self, parsed: Sequence[Any]) -> str | None:
        """The output path the parsed options name (None: the command writes nothing of its own)."""
        for obj in parsed:
            value = getattr(obj, self.output_option, None) if self.output_option else None
            if isinstance(value, (str, os.PathLike)):
                return os.fspath(value)
        return None

    def main(self, argv: Sequence[str], prog: str | None = None) -> int:
        try:
            parsed = parse_args(self.dataclass_types, argv, prog=prog, description=self.description)
        except (ValueError, TypeError, FileNotFoundError) as err:
            print(f"{prog or 'hf-salt'}: error: {err}", file=sys.stderr)
            return 2
        try:
            with self._hold(parsed, prog):
                return int(self.run(*parsed) or 0)
        except KeyboardInterrupt:
            if os.environ.get("HF_SALT_DEBUG"):
                raise
            print(
                f"{prog or 'hf-salt'}: interrupted. {self.where_to_resume(parsed, argv, prog)}",
                file=sys.stderr,
            )
            return 130  # 128 + SIGINT, as a shell reports a process stopped by Ctrl-C
        except (ValueError, FileNotFoundError, FileExistsError, NotImplementedError) as err:
            if os.environ.get("HF_SALT_DEBUG"):
                raise
            print(
                f"{prog or 'hf-salt'}: error: {err}\n(set HF_SALT_DEBUG=1 for the traceback)", file=sys.stderr
            )
            return 2
        except OSError as err:
            if err.errno != errno.ENOSPC or os.environ.get("HF_SALT_DEBUG"):
                raise
            print(
                f"{prog or 'hf-salt'}: error: no space left on the device while writing "
                f"{err.filename or 'the output'}. Outputs are written whole or not at all, so the previous one (if "
                "any) is intact and the latest complete checkpoint can be resumed (--resume_from_checkpoint "
                "latest); free some space and rerun.",
                file=sys.stderr,
            )
            return 1

    def where_to_resume(self, parsed: Sequence[Any], argv: Sequence[str], prog: str | None) -> str:
        """After Ctrl-C: the last complete checkpoint and the command that resumes from it, or what is left.

        Outputs are written whole or not at all (checkpoints, models, datasets), so nothing half-written stays.
        """
        resumable = any(hasattr(obj, "resume_from_checkpoint") for obj in parsed)
        path = self.output(parsed)
        last = last_complete_checkpoint(path) if resumable and path is not None else None
        if last is None:
            where = f" in {path}" if path is not None else ""
            if not resumable:
                return f"Nothing half-written is left{where}: rerun the command."
            return (
                f"No complete checkpoint{where} (save checkpoints with --save_strategy steps --save_steps N to be "
                "able to resume); nothing half-written is left: rerun the command to start again."
            )
        args = list(argv)
        for i, a in enumerate(args):  # the same command, resuming from the latest complete checkpoint
            if a == "--resume_from_checkpoint" and i + 1 < len(args):
                del args[i : i + 2]
                break
            if a.startswith("--resume_from_checkpoint="):
                del args[i]
                break
        command = shlex.join([*(prog or "hf-salt").split(), *args, "--resume_from_checkpoint", "latest"])
        return f"The last complete checkpoint is {last}; resume from it with: {command}"

    def _hold(self, parsed: Sequence[Any], prog: str | None) -> contextlib.AbstractContextManager:
        """Hold the output for the whole run, on the main process only (the ranks of one distributed run
        share it; rank 0 is the one that writes)."""
        path = self.output(parsed)
        from hf_salt.checks import check_writable
        from hf_salt.io import held_here, hold_output

        if path is None or int(os.environ.get("RANK", "0")) != 0 or held_here(path):
            return contextlib.nullcontext()

        check_writable(Path(path).expanduser().absolute().parent, f"the folder of --{self.output_option}")
        return hold_output(path, command=f"{prog or 'hf-salt'} --{self.output_option} {path}")

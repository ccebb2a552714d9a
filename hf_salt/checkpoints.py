"""Checkpoints a killed run can resume from: saved atomically, and only complete ones are ever picked.

`transformers.Trainer` writes `checkpoint-N/` file by file (weights, optimizer, scheduler, RNG states and,
last, `trainer_state.json`), and `get_last_checkpoint` takes the highest `checkpoint-N` folder whatever it
holds, so a run killed mid-save leaves a folder that resuming then fails on. Here:

- :class:`AtomicCheckpointMixin` makes the Trainer write each checkpoint into a hidden staging folder and
  rename it to `checkpoint-N` only once every file is written (one rename: never observable half-done);
- :func:`latest_complete_checkpoint` skips (and names) any incomplete `checkpoint-N` left by other writers;
- :func:`resolve_resume` turns `--resume_from_checkpoint DIR|latest` into a folder, or a clear error before
  any work.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

from transformers import Trainer
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, rotate_checkpoints
from transformers.utils import logging

from hf_salt.io import MARKER, mark_as_ours, remove_stale, writer_alive

logger = logging.get_logger(__name__)

TRAINER_STATE = "trainer_state.json"
LATEST = "latest"
RESUME_HELP = (
    "Resume training from this checkpoint-N folder, or from 'latest': the latest complete checkpoint in "
    "--output_dir (incomplete ones, from a killed save, are skipped). Checkpoints need --save_strategy steps."
)
_CHECKPOINT_RE = re.compile(rf"^{PREFIX_CHECKPOINT_DIR}-(\d+)$")
_STAGING_PREFIX = f".{PREFIX_CHECKPOINT_DIR}-"
_STAGING_SUFFIX = ".tmp"
_WEIGHTS = (
    "model.safetensors",
    "pytorch_model.bin",
    "adapter_model.safetensors",
    "adapter_model.bin",
)
_WEIGHT_INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")


def checkpoint_problem(folder: str | Path) -> str | None:
    """Why `folder` is not a complete Trainer checkpoint, or None when it is.

    Complete = `trainer_state.json` parses (the Trainer writes it last) and the model weights it needs are
    there: one weights file, every shard an index names, or a DeepSpeed/FSDP state folder.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return "it is not a folder"
    state = folder / TRAINER_STATE
    if not state.is_file():
        return f"it has no {TRAINER_STATE} (the save was interrupted)"
    try:
        json.loads(state.read_text())
    except (OSError, ValueError):
        return f"its {TRAINER_STATE} is truncated or unreadable (the save was interrupted)"
    if any((folder / name).is_file() for name in _WEIGHTS):
        return None
    for index in _WEIGHT_INDEXES:
        if (folder / index).is_file():
            try:
                shards = set(json.loads((folder / index).read_text())["weight_map"].values())
            except (OSError, ValueError, KeyError):
                return f"its {index} is truncated or unreadable"
            missing = sorted(s for s in shards if not (folder / s).is_file())
            return f"weight shard(s) {', '.join(missing)} are missing" if missing else None
    if any(p.is_dir() and (p.name.startswith("global_step") or "fsdp" in p.name) for p in folder.iterdir()):
        return None  # DeepSpeed / FSDP sharded state
    return "it holds no model weights"


def _checkpoints(output_dir: Path) -> list[Path]:
    """`checkpoint-N` folders of `output_dir`, highest step first."""
    if not output_dir.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in output_dir.iterdir() if (m := _CHECKPOINT_RE.match(p.name))]
    return [p for _, p in sorted(found, reverse=True) if p.is_dir()]


def latest_complete_checkpoint(output_dir: str | Path) -> Path | None:
    """The highest-step complete checkpoint in `output_dir`; warns about every incomplete one skipped."""
    for folder in _checkpoints(Path(output_dir)):
        problem = checkpoint_problem(folder)
        if problem is None:
            return folder
        logger.warning(f"Skipping incomplete checkpoint {folder}: {problem}.")
    return None


def resolve_resume(value: str | bool | None, output_dir: str | Path | None) -> str | None:
    """`--resume_from_checkpoint`: None, a checkpoint folder, or `latest` (or True) -> a folder or None.

    Raises before any work when the folder does not exist, is incomplete, or `latest` finds nothing.
    """
    if value in (None, False, ""):
        return None
    if value is True or str(value).lower() == LATEST:
        if output_dir is None:
            raise ValueError(
                "--resume_from_checkpoint latest needs --output_dir (where the checkpoints are)."
            )
        found = latest_complete_checkpoint(output_dir)
        if found is None:
            raise ValueError(
                f"--resume_from_checkpoint latest: no complete {PREFIX_CHECKPOINT_DIR}-N folder in "
                f"{str(output_dir)!r}. Check --output_dir, or drop the flag to start a new run."
            )
        print(f"Resuming from {found} (the latest complete checkpoint in {output_dir}).")
        return str(found)
    path = Path(str(value)).expanduser()
    if not path.exists():
        raise FileNotFoundError(
            f"--resume_from_checkpoint {str(value)!r} does not exist: pass a {PREFIX_CHECKPOINT_DIR}-N folder "
            f"or 'latest' (the latest complete checkpoint in --output_dir)."
        )
    problem = checkpoint_problem(path)
    if problem is not None:
        hint = ""
        if output_dir is not None and (found := latest_complete_checkpoint(output_dir)) is not None:
            hint = f" The latest complete one is {found} (or pass 'latest')."
        raise ValueError(
            f"--resume_from_checkpoint {str(value)!r} is not a complete checkpoint: {problem}.{hint}"
        )
    return str(path)


def check_fresh_start(output_dir: str | Path | None, resume: str | None, overwrite: bool = False) -> None:
    """A new run (no `--resume_from_checkpoint`) must not mix its checkpoints with an earlier run's.

    Its own `checkpoint-N` would replace the earlier run's one by one, and `latest` could later pick a
    leftover of the earlier run: refuse before any work and say how to continue or start over; with
    `overwrite` (`--overwrite_output_dir`) the earlier run's checkpoints are removed instead.
    """
    if resume is not None or output_dir is None:
        return
    found = _checkpoints(Path(output_dir))
    if found and overwrite:
        for folder in found:
            shutil.rmtree(folder)
        print(
            f"Removed {len(found)} checkpoint(s) of an earlier run from {output_dir} (--overwrite_output_dir)."
        )
    elif found:
        raise ValueError(
            f"--output_dir {str(output_dir)!r} holds checkpoints of an earlier run ({found[0].name}"
            f"{f' and {len(found) - 1} more' if len(found) > 1 else ''}): pass --resume_from_checkpoint latest "
            "to continue it, or choose another --output_dir (or remove them) to start a new run."
        )


def _staging_name(step: int) -> str:
    return f"{_STAGING_PREFIX}{step}{_STAGING_SUFFIX}"


class AtomicCheckpointMixin:
    """Mix into a `transformers.Trainer` subclass (before `Trainer`) so checkpoints appear whole or not at all.

    `Trainer._save_checkpoint` writes into `_get_output_dir()/checkpoint-N`; during the save that directory is
    redirected to a hidden staging folder beside the checkpoints, renamed into place once every rank has
    written. Rotation (`save_total_limit`) and `best_model_checkpoint` then refer to the real folders. A
    staging folder left by a killed save is removed at the next save, when its writer is no longer alive.
    """

    _hf_salt_staging: str | None = None

    def _get_output_dir(self, trial: Any) -> str:
        if self._hf_salt_staging is not None:
            return self._hf_salt_staging
        return super()._get_output_dir(trial)  # type: ignore[misc]

    def _save_checkpoint(self, model: Any, trial: Any) -> None:
        if getattr(self.args, "push_to_hub", False):  # the hub upload reads the folder after this returns
            super()._save_checkpoint(model, trial)  # type: ignore[misc]
            return
        run_dir = Path(self._get_output_dir(trial))
        step = self.state.global_step
        name = f"{PREFIX_CHECKPOINT_DIR}-{step}"
        staging = run_dir / _staging_name(step)
        accelerator = self.accelerator
        if self.args.should_save:
            remove_stale(run_dir, f"{_STAGING_PREFIX}*{_STAGING_SUFFIX}")
            if staging.exists():
                if writer_alive(staging) and json.loads((staging / MARKER).read_text())["pid"] != os.getpid():
                    raise RuntimeError(
                        f"{staging} is being written by another live process: one run per output_dir."
                    )
                shutil.rmtree(staging)
            staging.mkdir(parents=True)
            mark_as_ours(staging)
        accelerator.wait_for_everyone()
        self._hf_salt_staging = str(staging)
        try:
            super()._save_checkpoint(model, trial)  # type: ignore[misc]
        finally:
            self._hf_salt_staging = None
        accelerator.wait_for_everyone()
        if self.args.should_save:
            final = run_dir / name
            if self.state.best_model_checkpoint == str(staging / name):
                self.state.best_model_checkpoint = str(final)  # the Trainer saw the staged copy
                self.state.save_to_json(str(staging / name / TRAINER_STATE))
            if final.exists():
                shutil.rmtree(final)
            os.replace(staging / name, final)
            shutil.rmtree(staging)
            rotate_checkpoints(
                output_dir=str(run_dir),
                save_total_limit=self.args.save_total_limit,
                best_model_checkpoint=self.state.best_model_checkpoint,
                use_mtime=True,
            )
        accelerator.wait_for_everyone()


class AtomicCheckpointTrainer(AtomicCheckpointMixin, Trainer):
    """`transformers.Trainer` whose checkpoints are written atomically (see :class:`AtomicCheckpointMixin`)."""

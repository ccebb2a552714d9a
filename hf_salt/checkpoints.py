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


# ----------------------------------------------------------------------------------- resume with the same settings
RUN_SETTINGS = "hf_salt_settings.json"  # in each checkpoint: the settings that decide the run's result
ALLOW_CHANGED_HELP = (
    "Resume even though settings that decide the result (learning rate, schedule, KD settings, teacher weights, "
    "block size, max_steps, seed, ...) differ from the checkpoint's; the run then matches neither setting."
)
# TrainingArguments fields that change what training computes; the others (logging, saving, evaluation,
# reporting, output paths, dataloader workers) do not change the weights
_RESULT_ARGS = (
    "seed", "data_seed", "full_determinism", "learning_rate", "weight_decay", "adam_beta1", "adam_beta2",
    "adam_epsilon", "max_grad_norm", "num_train_epochs", "max_steps", "lr_scheduler_type", "lr_scheduler_kwargs",
    "warmup_steps", "per_device_train_batch_size", "gradient_accumulation_steps", "optim", "optim_args", "bf16",
    "fp16", "label_smoothing_factor", "train_sampling_strategy", "average_tokens_across_devices",
    "neftune_noise_alpha",
)  # fmt: skip
# fields of hf-salt's own configs that change memory or speed, or how a run is started, not its result
_NOT_RESULT = frozenset(
    {
        "overwrite_output_dir",
        "resume_from_checkpoint",
        "allow_changed_settings",
        "teacher_offload_after_kd",
        "teacher_sharding",
        "kd_chunk_size",
        "kd_loss_backend",
    }
)


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def _weights_fingerprint(folder: str) -> str | None:
    """sha256 of a local model folder's weight files (None for a Hub id): a teacher replaced in place shows."""
    import hashlib

    path = Path(folder).expanduser()
    files = sorted(p for p in path.glob("*") if p.suffix in (".safetensors", ".bin") and p.is_file())
    if not path.is_dir() or not files:
        return None
    digest = hashlib.sha256()
    for file in files:
        digest.update(file.name.encode())
        with file.open("rb") as f:
            while chunk := f.read(1 << 24):
                digest.update(chunk)
    return digest.hexdigest()


def _differences(saved: dict[str, Any], now: dict[str, Any]) -> list[str]:
    same_teacher = saved.get("teacher_weights") is not None and saved.get("teacher_weights") == now.get(
        "teacher_weights"
    )
    out = []
    for key in sorted(set(saved) | set(now)):
        if key == "teacher_model_name_or_path" and same_teacher:
            continue  # the same teacher weights, moved
        if saved.get(key) != now.get(key):
            if key == "teacher_weights":
                out.append("teacher weights (the files in the teacher folder differ)")
            else:
                out.append(f"{key}: {saved.get(key)!r} in the checkpoint, {now.get(key)!r} now")
    return out


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
    # settings that decide the result but are not in `args` (the CLI adds model, corpus, block size, ...)
    run_settings: dict[str, Any] | None = None
    # resume even when the settings differ from the checkpoint's (a warning names them instead of an error)
    allow_changed_settings: bool = False
    _hf_salt_teacher_fingerprint: tuple[str, str | None] | None = None

    def result_settings(self) -> dict[str, Any]:
        """What decides this run's result: the result-changing `TrainingArguments`, every field hf-salt's config
        adds (KD, teacher, data preparation), the teacher's weights and :attr:`run_settings`."""
        from dataclasses import fields

        from transformers import TrainingArguments

        base = {f.name for f in fields(TrainingArguments)}
        args = self.args  # type: ignore[attr-defined]
        settings = {name: getattr(args, name) for name in _RESULT_ARGS if hasattr(args, name)}
        for f in fields(args):
            if f.name not in base and f.name not in _NOT_RESULT and not f.name.startswith("_"):
                settings[f.name] = getattr(args, f.name)
        teacher = getattr(args, "teacher_model_name_or_path", None)
        if isinstance(teacher, str):
            cached = self._hf_salt_teacher_fingerprint
            if cached is None or cached[0] != teacher:
                cached = self._hf_salt_teacher_fingerprint = (teacher, _weights_fingerprint(teacher))
            settings["teacher_weights"] = cached[1]
        settings.update(self.run_settings or {})
        return _jsonable(settings)

    def check_resume_settings(self, checkpoint: str | os.PathLike) -> None:
        """Refuse to resume with settings that differ from the checkpoint's (each one named), unless
        :attr:`allow_changed_settings`: a resumed run promises the result of an uninterrupted one."""
        path = Path(checkpoint) / RUN_SETTINGS
        if not path.is_file():
            logger.warning(
                f"{checkpoint} does not record its run's settings ({RUN_SETTINGS}: saved by another trainer or "
                "an older hf-salt); resuming without checking that they match."
            )
            return
        differ = _differences(json.loads(path.read_text()), self.result_settings())
        if not differ:
            return
        listed = "; ".join(differ)
        if self.allow_changed_settings:
            logger.warning(f"Resuming from {checkpoint} with changed settings (allowed): {listed}.")
            return
        raise ValueError(
            f"Resuming from {checkpoint} with settings that differ from the checkpoint's: {listed}. A resumed "
            "run continues the checkpoint's run exactly only with the same settings: pass them as before, or "
            "--allow_changed_settings to continue with the new ones (or start a new run in another folder)."
        )

    def train(self, resume_from_checkpoint: str | bool | None = None, *args: Any, **kwargs: Any) -> Any:
        from hf_salt.checks import check_finite

        check_finite(self.model, "the model to train")  # type: ignore[attr-defined]
        teacher = getattr(self, "teacher_model", None)
        if teacher is not None and hasattr(teacher, "named_parameters"):
            check_finite(teacher, "the teacher")
        if resume_from_checkpoint:
            folder = resume_from_checkpoint
            if folder is True:
                folder = latest_complete_checkpoint(self.args.output_dir)  # type: ignore[attr-defined]
            if folder:
                self.check_resume_settings(folder)
        return super().train(resume_from_checkpoint, *args, **kwargs)  # type: ignore[misc]

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
        except BaseException:  # a full disk, Ctrl-C: no half-written staging folder stays behind
            if self.args.should_save:
                shutil.rmtree(staging, ignore_errors=True)
            raise
        finally:
            self._hf_salt_staging = None
        accelerator.wait_for_everyone()
        if self.args.should_save:
            final = run_dir / name
            try:
                (staging / name / RUN_SETTINGS).write_text(json.dumps(self.result_settings(), indent=1))
                if self.state.best_model_checkpoint == str(staging / name):
                    self.state.best_model_checkpoint = str(final)  # the Trainer saw the staged copy
                    self.state.save_to_json(str(staging / name / TRAINER_STATE))
            except BaseException:
                shutil.rmtree(staging, ignore_errors=True)
                raise
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

"""Resuming a killed experiment: each run (teacher, arm) continues from its own checkpoints under `_runs/`.

`--resume_from_checkpoint latest` continues every unfinished run from its latest complete checkpoint (a run
without one starts over); a `checkpoint-N` folder continues that run from it (the others as with `latest`).
Without the flag, checkpoints of an earlier unfinished experiment are an error before any work, so a fresh
experiment never mixes with them.
"""

from __future__ import annotations

from pathlib import Path

from hf_salt.checkpoints import LATEST, checkpoint_problem, latest_complete_checkpoint

RUNS = "_runs"


def _stale_checkpoints(runs: Path) -> list[Path]:
    if not runs.is_dir():
        return []
    return sorted(p for p in runs.rglob("checkpoint-*") if p.is_dir() and p.name.split("-")[-1].isdigit())


def check_resume(value: str | None, output_dir: str | Path) -> None:
    """Refuse, before any work, a resume that cannot work and a fresh start over an unfinished experiment."""
    runs = Path(output_dir) / RUNS
    if value is None:
        stale = _stale_checkpoints(runs)
        if stale:
            raise ValueError(
                f"{runs} holds checkpoints of an earlier, unfinished experiment ({stale[0]}"
                f"{' and more' if len(stale) > 1 else ''}): pass --resume_from_checkpoint latest to continue "
                f"it, or remove {runs} to start over."
            )
        return
    if value.lower() == LATEST:
        if not runs.is_dir():
            raise ValueError(
                f"--resume_from_checkpoint latest: {runs} does not exist, so there is nothing to resume. "
                "Check --output_dir, or drop the flag to start a new experiment."
            )
        return
    path = Path(value).expanduser()
    if not path.exists():
        raise FileNotFoundError(
            f"--resume_from_checkpoint {value!r} does not exist: pass 'latest' or a checkpoint-N folder under {runs}."
        )
    if runs.resolve() not in path.resolve().parents:
        raise ValueError(
            f"--resume_from_checkpoint {value!r} is not a checkpoint of this experiment (under {runs})."
        )
    problem = checkpoint_problem(path)
    if problem is not None:
        raise ValueError(f"--resume_from_checkpoint {value!r} is not a complete checkpoint: {problem}.")


def checkpoint_for(value: str | None, run_dir: Path) -> str | None:
    """The checkpoint the run in `run_dir` continues from (None: start it from step 0)."""
    if value is None:
        return None
    if value.lower() != LATEST and Path(value).resolve().parent == run_dir.resolve():
        return value
    found = latest_complete_checkpoint(run_dir)
    if found is not None:
        print(f"[hf-salt] resuming {run_dir.name} from {found}")
    return None if found is None else str(found)


def remove_checkpoints(run_dir: Path) -> None:
    """A finished run's checkpoints are only for resuming it: remove them once its results are saved."""
    import shutil

    for folder in _stale_checkpoints(run_dir):
        shutil.rmtree(folder, ignore_errors=True)

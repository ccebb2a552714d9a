"""Reproduction benchmark: does SALT / SALT_DS / HyperCloning make pre-training cheaper, measured?

One config (YAML/JSON via ``--config``, plus flags) -> the teacher is trained once (or once per seed), then the
student is trained under every arm with the same data order, optimizer, LR schedule and step budget, for
several seeds (the engine of :mod:`hf_salt.experiments.engine`). Per arm it reports the validation-loss curve, the
step and the wall-clock at which the arm first reaches the baseline's final validation loss (as fractions of the
baseline's), the final validation perplexity and the spread across seeds; it writes ``results.json``, a markdown
table, a PNG plot and a RESULTS.md block into the run's folder. See ``docs/reproduction.md``.

- **Resumable**: each (seed, arm) run is saved as JSON when done; re-running the command skips finished runs.
- **Parallel seeds**: ``workers > 1`` trains seeds in separate ``hf-salt benchmark`` processes.

Run: ``hf-salt benchmark --config benchmarks/configs/cpu.yaml`` (or ``python benchmarks/reproduce.py ...``).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import re
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from hf_salt.experiments.arms import ARMS
from hf_salt.experiments.config import SharedSettings, like
from hf_salt.experiments.engine import Engine, digest
from hf_salt.experiments.metrics import (
    SALT_WALL_TARGET,
    aggregate,
    check_targets,
    markdown_table,
    teacher_seed_for,
)
from hf_salt.experiments.report import command_line, hardware, now, write_report
from hf_salt.experiments.resume import check_resume
from hf_salt.io import held_here, hold_output, write_text_atomic
from hf_salt.salt.schedules import check_kd_steps


@dataclass
class BenchmarkConfig(SharedSettings):
    """Everything one benchmark run needs; the YAML files under ``benchmarks/configs/`` fill it."""

    max_steps: int = like(SharedSettings, "max_steps", 1000)
    teacher_steps: int = like(SharedSettings, "teacher_steps", 1000)
    batch_size: int = like(SharedSettings, "batch_size", 16)
    warmup_steps: int = like(SharedSettings, "warmup_steps", 50)
    eval_every: int = like(SharedSettings, "eval_every", 50)
    eval_blocks: int = like(SharedSettings, "eval_blocks", 256)
    eval_batch_size: int = like(SharedSettings, "eval_batch_size", 32)
    arms: list[str] = like(SharedSettings, "arms", ["all"])
    output_dir: str = field(
        default="outputs/benchmark-cpu",
        metadata={"help": "Run folder: teacher, per-run JSON (for resuming), results.json and the report."},
    )
    single_epoch: bool = field(
        default=False,
        metadata={"help": "Refuse a budget that reads a training block twice (max_steps x batch > blocks)."},
    )
    corpus_fraction: float = field(
        default=0.0,
        metadata={
            "help": "If > 0: set max_steps (and cap teacher_steps) so each run reads this fraction of one epoch "
            "of the packed corpus, capped by max_steps and rounded down to a multiple of eval_every. For corpora "
            "whose size depends on the machine (build_code_corpus.py)."
        },
    )
    seeds: list[int] = field(
        default_factory=lambda: [0, 1],
        metadata={"help": "Seeds: each fixes the student init and the data order (the same for all arms)."},
    )
    teacher_seed: int = field(default=0, metadata={"help": "Seed of the teacher (init and data order)."})
    teacher_per_seed: bool = field(
        default=False,
        metadata={
            "help": "Train one teacher per seed (its seed = the student's) instead of one for all seeds."
        },
    )
    target_evals: int = field(
        default=3,
        metadata={
            "help": "The target quality is the mean of the baseline's last this many validation losses (one "
            "evaluation carries its own noise)."
        },
    )
    step_cost_rounds: int = field(
        default=5,
        metadata={
            "help": "Interleaved rounds that price a student, KD and teacher step for the wall-clock columns "
            "(benchmark step costs; 0 = use each run's own timed steps instead)."
        },
    )
    num_threads: int = field(default=0, metadata={"help": "torch CPU threads (0 = torch's default)."})
    resume: bool = field(default=True, metadata={"help": "Skip (seed, arm) runs whose JSON already exists."})
    report_only: bool = field(
        default=False,
        metadata={
            "help": "Train nothing: report the saved runs that match this config (missing ones are listed)."
        },
    )
    workers: int = field(
        default=1,
        metadata={
            "help": "Seeds trained in parallel, one process each (num_threads threads each); on a small CPU, "
            "2 single-thread processes beat 1 two-thread process for these small models."
        },
    )
    report: bool = field(
        default=True, metadata={"help": "Write results.json, the table, the plot, RESULTS.md."}
    )
    label: str = field(
        default="cpu", metadata={"help": "Name of this scale; used in file names and RESULTS.md markers."}
    )
    salt_wall_target: float = field(
        default=SALT_WALL_TARGET,
        metadata={
            "help": "SALT's wall-clock target in the report: reach the baseline's final loss within this fraction "
            "of its wall-clock (teacher forwards included). Reporting only."
        },
    )
    report_dir: str | None = field(
        default=None,
        metadata={
            "help": "Where the markdown table and PNG plot go (default: output_dir). The shipped ones are "
            "refreshed only when asked: --report_dir benchmarks."
        },
    )
    results_md: str | None = field(
        default=None,
        metadata={
            "help": "RESULTS.md whose Reproduction section gets the table (default: <report_dir>/RESULTS.md; "
            "'' = none). The shipped one changes only when asked: --results_md benchmarks/RESULTS.md."
        },
    )

    def __post_init__(self) -> None:
        if isinstance(self.seeds, (int, str)):
            self.seeds = [int(s) for s in re.split(r"[,\s]+", str(self.seeds)) if s]
        super().__post_init__()
        if not self.seeds:
            raise ValueError("seeds must list at least one seed, e.g. --seeds 0 1.")
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds must be distinct, got {self.seeds}.")
        if self.max_steps % self.eval_every:
            raise ValueError(
                f"max_steps ({self.max_steps}) must be a multiple of eval_every ({self.eval_every}) so every arm "
                "is evaluated at its last step."
            )
        if not 0.0 <= self.corpus_fraction <= 1.0:
            raise ValueError(
                f"corpus_fraction must be in [0, 1] (0 = use max_steps), got {self.corpus_fraction}."
            )
        if self.target_evals < 1:
            raise ValueError(f"target_evals must be >= 1 (evaluations averaged), got {self.target_evals}.")
        if self.step_cost_rounds < 0:
            raise ValueError(f"step_cost_rounds must be >= 0, got {self.step_cost_rounds}.")
        if self.workers < 1:
            raise ValueError(f"workers must be >= 1, got {self.workers}.")

    def report_paths(self) -> tuple[Path, Path | None]:
        """(folder of the table and plot, RESULTS.md to update or None): the run's own folder unless asked."""
        report_dir = Path(self.report_dir) if self.report_dir else Path(self.output_dir)
        if self.results_md is None:
            return report_dir, report_dir / "RESULTS.md"
        return report_dir, Path(self.results_md) if self.results_md else None


class Benchmark(Engine):
    """The engine over several seeds, resumable; :meth:`run` trains everything and returns the results."""

    execution_fields = (
        "seeds", "arms", "num_threads", "workers", "disable_tqdm", "output_dir", "resume", "report_only", "label",
        "report", "report_dir", "results_md", "salt_wall_target", "target_evals", "step_cost_rounds",
    )  # fmt: skip

    def __init__(self, cfg: BenchmarkConfig, command: str | None = None, **hooks: Any) -> None:
        super().__init__(cfg, **hooks)
        self.command = command or command_line()

    def load_data(self) -> None:
        super().load_data()
        cfg = self.cfg
        if cfg.corpus_fraction:
            steps = int(cfg.corpus_fraction * len(self.train)) // cfg.global_batch_size
            steps = min(steps, cfg.max_steps) // cfg.eval_every * cfg.eval_every
            if steps < cfg.eval_every:
                raise ValueError(
                    f"corpus_fraction={cfg.corpus_fraction} of {len(self.train)} blocks is less than eval_every "
                    f"({cfg.eval_every}) steps of {cfg.global_batch_size} blocks: use more data or smaller batches."
                )
            cfg.max_steps, cfg.teacher_steps = steps, min(cfg.teacher_steps, steps)
            check_kd_steps(cfg.kd_steps, steps, n=cfg.resolved_kd_steps)  # a step count may not fit any more
            print(f"[benchmark] corpus_fraction={cfg.corpus_fraction}: {steps} steps per run")
        need = max(cfg.max_steps, cfg.teacher_steps) * cfg.global_batch_size
        self.epochs = need / len(self.train)
        if cfg.single_epoch and need > len(self.train):
            raise ValueError(
                f"single_epoch: {max(cfg.max_steps, cfg.teacher_steps)} steps x {cfg.global_batch_size} blocks = "
                f"{need} blocks, but the corpus has {len(self.train)}. Lower max_steps/batch_size or use more data."
            )

    def teacher(
        self, seed: int, folder: Path | None = None, *, reuse: bool | None = None
    ) -> tuple[Any, dict]:
        return super().teacher(seed, folder, reuse=self.cfg.resume if reuse is None else reuse)

    # ---------------------------------------------------------------- everything
    def run(self) -> dict[str, Any]:
        """Teacher(s), then every (seed, arm), baseline first; saves as it goes; returns the results."""
        import torch
        from tqdm.auto import tqdm

        cfg = self.cfg
        if cfg.num_threads:
            torch.set_num_threads(cfg.num_threads)
        if not cfg.report_only:
            check_resume(cfg.resume_from_checkpoint, cfg.output_dir)
        self.out.mkdir(parents=True, exist_ok=True)
        self.load_data()
        results: dict[str, Any] = {
            "config": asdict(cfg),
            "kd_steps": cfg.resolved_kd_steps,
            "command": self.command,
            "hardware": hardware(),
            "started": now(),
            "train_blocks": len(self.train),
            "train_tokens": len(self.train) * cfg.block_size,
            "epochs": self.epochs,
            "validation_blocks": len(self.validation),
            "teachers": {},
            "runs": {},
        }
        if cfg.workers > 1 and len(cfg.seeds) > 1 and not cfg.report_only:
            self._run_workers()
        jobs = [(seed, arm) for seed in cfg.seeds for arm in cfg.arms]
        teachers: dict[int, tuple[Any, dict[str, Any]]] = {}
        results["missing"] = []
        for seed, arm in tqdm(jobs, desc=f"benchmark {cfg.label}", unit="run", disable=cfg.disable_tqdm):
            tseed = teacher_seed_for(cfg, seed)
            if cfg.report_only:
                record = self._saved_run(seed, arm, tseed)
                meta = self.out / f"teacher-seed{tseed}" / "teacher.json"
                if meta.exists():
                    results["teachers"][str(tseed)] = json.loads(meta.read_text())
                if record is None:
                    results["missing"].append([seed, arm])
                else:
                    results["runs"].setdefault(str(seed), {})[arm] = record
                continue
            if not ARMS[arm].uses_teacher:  # the baseline: no teacher trained or loaded for it
                teacher, trecord = None, {"seed": None, "path": None}
            else:
                if tseed not in teachers:
                    teachers.clear()  # one teacher in memory at a time
                    teachers[tseed] = self.teacher(tseed)
                    results["teachers"][str(tseed)] = teachers[tseed][1]
                teacher, trecord = teachers[tseed]
            path = self._run_path(seed, arm)
            record = self._saved_run(seed, arm, tseed) if cfg.resume else None
            if record is None:
                print(f"[benchmark] seed {seed}: {arm}")
                record = self.run_arm(arm, seed, teacher, trecord)
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(json.dumps(record, indent=1))
            else:
                print(f"[benchmark] seed {seed}: {arm} (reused {path})")
            results["runs"].setdefault(str(seed), {})[arm] = record
        results["finished"] = now()
        results["step_costs"] = self.step_costs() if cfg.report else None
        if cfg.report_only:  # when the saved runs were made, not when this report was written
            stamps = [
                self._run_path(int(sd), arm).stat().st_mtime
                for sd, runs in results["runs"].items()
                for arm in runs
            ]
            if stamps:
                fmt = "%Y-%m-%d %H:%M UTC"
                results["started"] = _dt.datetime.fromtimestamp(min(stamps), _dt.timezone.utc).strftime(fmt)
                results["finished"] = _dt.datetime.fromtimestamp(max(stamps), _dt.timezone.utc).strftime(fmt)
                results["started"] = f"runs saved from {results['started']}"
        if cfg.report:
            (self.out / "results.json").write_text(json.dumps(results, indent=1))
        return results

    def step_costs(self) -> dict[str, Any] | None:
        """Seconds per student / KD / teacher step from one interleaved measurement (saved in
        ``step_costs.json`` and reused while the models and batch shape are the same); None when
        ``step_cost_rounds`` is 0 or, for ``report_only``, when none was saved."""
        from hf_salt.experiments.step_costs import measure_step_costs

        cfg = self.cfg
        if not cfg.step_cost_rounds:
            return None
        shape = dict(
            teacher_preset=cfg.teacher_preset,
            student_preset=cfg.student_preset,
            vocab_size=len(self.tokenizer),
            block_size=cfg.block_size,
            batch_size=cfg.global_batch_size,
        )
        key = digest({**shape, "rounds": cfg.step_cost_rounds, "threads": cfg.num_threads})
        path = self.out / "step_costs.json"
        if path.exists():
            saved = json.loads(path.read_text())
            if saved.get("key") == key:
                return saved
        if cfg.report_only:
            return None
        print(
            f"[benchmark] pricing a student, KD and teacher step ({cfg.step_cost_rounds} interleaved rounds)"
        )
        costs = {**measure_step_costs(**shape, rounds=cfg.step_cost_rounds), "key": key, "measured": now()}
        write_text_atomic(path, json.dumps(costs, indent=1))
        return costs

    def _run_path(self, seed: int, arm: str) -> Path:
        return self.out / "runs" / f"seed{seed}" / f"{arm.replace('+', '_plus_')}.json"

    def _saved_run(self, seed: int, arm: str, tseed: int) -> dict[str, Any] | None:
        """The saved run of (seed, arm) if it was made with this config and teacher, else None."""
        path = self._run_path(seed, arm)
        if not path.exists():
            return None
        record = json.loads(path.read_text())
        if record.get("key") != self.run_key(arm):
            return None
        if ARMS[arm].uses_teacher and record.get("teacher_seed") != tseed:
            return None
        return record

    def _run_workers(self) -> None:
        """Train the teacher(s) here, then the seeds in ``workers`` parallel processes; they save every run as
        JSON, which :meth:`run` then picks up (resume)."""
        cfg = self.cfg
        if any(ARMS[arm].uses_teacher for arm in cfg.arms):  # trained once here, not by every worker
            for tseed in sorted({teacher_seed_for(cfg, s) for s in cfg.seeds}):
                self.teacher(tseed)
        (self.out / "_runs").mkdir(parents=True, exist_ok=True)  # the workers resume "latest": it must exist
        config_path = self.out / "worker-config.json"
        worker_cfg = asdict(cfg)
        if (
            cfg.save_steps and cfg.resume_from_checkpoint is None
        ):  # the other workers' checkpoints are not stale
            worker_cfg["resume_from_checkpoint"] = "latest"
        config_path.write_text(json.dumps(worker_cfg))
        groups = [cfg.seeds[i :: cfg.workers] for i in range(min(cfg.workers, len(cfg.seeds)))]
        # the workers write this output on our behalf (hf_salt.io.HELD_ENV); hold it if the caller does not
        held = contextlib.nullcontext() if held_here(self.out) else hold_output(self.out, "hf-salt benchmark")
        with held:
            env = dict(os.environ)
            if cfg.num_threads:
                env["OMP_NUM_THREADS"] = str(cfg.num_threads)
            procs = []
            for group in groups:
                log = self.out / f"worker-seeds{'-'.join(map(str, group))}.log"
                cmd = [
                    sys.executable, "-m", "hf_salt.cli.main", "benchmark", "--config", str(config_path),
                    "--seeds", *map(str, group), "--workers", "1", "--report", "false", "--resume", "true",
                ]  # fmt: skip
                print(f"[benchmark] worker for seeds {group}: log {log}")
                with open(log, "w") as handle:
                    procs.append(
                        (group, subprocess.Popen(cmd, stdout=handle, stderr=subprocess.STDOUT, env=env))
                    )
            failed = [(group, p.wait()) for group, p in procs]
        failed = [(g, code) for g, code in failed if code != 0]
        if failed:
            raise RuntimeError(
                f"benchmark worker(s) failed: {failed}; see the worker-*.log files in {self.out}."
            )


def run(cfg: BenchmarkConfig) -> int:
    """Entry point of ``hf-salt benchmark`` (and ``python benchmarks/reproduce.py``)."""
    results = Benchmark(cfg).run()
    if not cfg.report:
        return 0
    written = write_report(results, *cfg.report_paths())
    rows = aggregate(results)
    print()
    teachers = list(results["teachers"].values())
    print(markdown_table(rows, teachers[0] if len(teachers) == 1 else None, results.get("step_costs")))
    print()
    for target, measured, met in check_targets(rows, cfg.salt_wall_target):
        print(f"- {target}: {measured} -> {'not run' if met is None else 'met' if met else 'MISSED'}")
    print()
    for what, path in written.items():
        print(f"{what}: {path}")
    return 0

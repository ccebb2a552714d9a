"""Sweep omega (kd_weight) and tau (kd_temperature) of SALT at CPU scale, to pick SALTConfig's defaults from evidence.

Same engine as ``hf-salt benchmark`` (same data order, optimizer, schedule, step budget, one teacher); one seed; arms: the baseline once, then ``salt`` (step schedule) at every (omega, tau) of the grid. Reports, per
grid point, the final validation loss, its difference to the baseline, and the fraction of the baseline's steps
at which SALT first reaches the baseline's final validation loss. Writes ``sweep_kd_<label>.png``,
a markdown table, and the "omega / tau sweep" block of a RESULTS.md (in the run folder unless --report_dir /
--results_md name the shipped ones).

Run: ``python benchmarks/sweep_kd.py --config benchmarks/configs/cpu.yaml --max_steps 300 --teacher_steps 300
--weights 0.25 0.5 0.75 --temperatures 1 2``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from hf_salt.experiments.benchmark import Benchmark, BenchmarkConfig
from hf_salt.experiments.metrics import run_metrics, teacher_seed_for
from hf_salt.experiments.report import command_line, hardware, update_results_md


@dataclass
class SweepArgs:
    """The grid; everything else comes from the benchmark config (first seed only)."""

    weights: list[float] = field(
        default_factory=lambda: [0.25, 0.5, 0.75], metadata={"help": "omega values."}
    )
    temperatures: list[float] = field(default_factory=lambda: [1.0, 2.0], metadata={"help": "tau values."})
    jobs: list[int] = field(
        default_factory=list, metadata={"help": "Internal: run only these job indices (worker processes)."}
    )

    def __post_init__(self) -> None:
        for w in self.weights:
            if not 0.0 < w < 1.0:
                raise ValueError(f"every omega must be in (0, 1), got {w}.")
        for t in self.temperatures:
            if t <= 0:
                raise ValueError(f"every tau must be > 0, got {t}.")


def _grid(sweep: SweepArgs) -> list[tuple[float, float] | None]:
    """Job list: None = the baseline, then (omega, tau) pairs."""
    return [None] + [(w, t) for w in sweep.weights for t in sweep.temperatures]


def _job_path(out: Path, seed: int, job: tuple[float, float] | None) -> Path:
    name = "baseline" if job is None else f"salt-w{job[0]:g}-t{job[1]:g}"
    return out / "runs" / f"seed{seed}" / f"{name}.json"


def _run_jobs(cfg: BenchmarkConfig, sweep: SweepArgs, indices: list[int]) -> None:
    """Train the given jobs (reusing finished ones) and save each as JSON."""
    import torch

    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    seed = cfg.seeds[0]
    grid = _grid(sweep)
    bench = Benchmark(cfg)
    bench.load_data()
    teacher, trecord = bench.teacher(teacher_seed_for(cfg, seed))
    for i in indices:
        job = grid[i]
        arm = "baseline" if job is None else "salt"
        point = cfg if job is None else dataclasses.replace(cfg, kd_weight=job[0], kd_temperature=job[1])
        path = _job_path(bench.out, seed, job)
        bench.cfg = point
        if cfg.resume and path.exists() and json.loads(path.read_text()).get("key") == bench.run_key(arm):
            print(f"[sweep] reusing {path}")
            continue
        print(f"[sweep] {arm} {job or ''}")
        record = bench.run_arm(arm, seed, teacher, trecord)
        record.update(kd_weight_value=point.kd_weight, kd_temperature_value=point.kd_temperature)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(record, indent=1))


def _spawn(cfg: BenchmarkConfig, sweep: SweepArgs) -> None:
    """Teacher here, then the jobs split over ``cfg.workers`` processes of this script."""
    import torch

    if cfg.num_threads:  # the teacher is timed under the same per-process resources as the students
        torch.set_num_threads(cfg.num_threads)
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    bench = Benchmark(cfg)
    bench.load_data()
    bench.teacher(teacher_seed_for(cfg, cfg.seeds[0]))
    config_path = out / "sweep-config.json"
    config_path.write_text(json.dumps(asdict(cfg)))
    n = len(_grid(sweep))
    env = dict(os.environ)
    if cfg.num_threads:
        env["OMP_NUM_THREADS"] = str(cfg.num_threads)
    procs = []
    for w in range(min(cfg.workers, n)):
        idx = list(range(w, n, cfg.workers))
        cmd = [
            sys.executable, __file__, "--config", str(config_path), "--workers", "1", "--report", "false",
            "--weights", *map(str, sweep.weights), "--temperatures", *map(str, sweep.temperatures),
            "--jobs", *map(str, idx),
        ]  # fmt: skip
        log = out / f"sweep-worker{w}.log"
        print(f"[sweep] worker {w}: jobs {idx}, log {log}")
        with open(log, "w") as handle:
            procs.append(subprocess.Popen(cmd, stdout=handle, stderr=subprocess.STDOUT, env=env))
    codes = [p.wait() for p in procs]
    if any(codes):
        raise RuntimeError(f"sweep worker(s) failed with {codes}; see {out}/sweep-worker*.log.")


def collect(cfg: BenchmarkConfig, sweep: SweepArgs) -> dict[str, Any]:
    """Read the saved runs back and compute the per-point metrics."""
    out, seed = Path(cfg.output_dir), cfg.seeds[0]
    runs = {
        job: json.loads(_job_path(out, seed, job).read_text())
        for job in _grid(sweep)
        if _job_path(out, seed, job).exists()
    }
    missing = [job for job in _grid(sweep) if job not in runs]
    tmeta = out / f"teacher-seed{teacher_seed_for(cfg, seed)}" / "teacher.json"
    teacher = json.loads(tmeta.read_text())
    base = runs[None]
    points = []
    for job, run in runs.items():
        if job is None:
            continue
        m = run_metrics(run, base, teacher["train_time_s"])
        points.append({"kd_weight": job[0], "kd_temperature": job[1], **m, "curve": run["curve"]})
    return {"baseline": base, "teacher": teacher, "points": points, "seed": seed, "missing": missing}


def sweep_markdown(cfg: BenchmarkConfig, data: dict[str, Any], plot_rel: str, command: str) -> str:
    base_loss = data["baseline"]["curve"]["loss"][-1]
    lines = [
        f"### omega / tau sweep ({cfg.label} scale, seed {data['seed']})",
        "",
        f"Command: `{command}`  ",
        f"Hardware: {hardware()['summary']}; {cfg.workers} worker process(es) x {cfg.num_threads or 'default'} "
        f"thread(s)  ",
        f"Budget: {cfg.max_steps} steps x {cfg.global_batch_size} x {cfg.block_size} tokens, n_KD = {cfg.resolved_kd_steps} "
        f"({cfg.resolved_kd_steps / cfg.max_steps:.0%} of the steps, step schedule), teacher {cfg.teacher_preset} ({cfg.teacher_steps} steps, final "
        f"val loss {data['teacher']['final_loss']:.3f}), student {cfg.student_preset}; baseline final val loss "
        f"{base_loss:.3f}. One seed: differences of a few thousandths are within noise.",
        "",
        "| omega | tau | final val loss | Δ vs baseline | steps to baseline's final loss (fraction) |",
        "| --- | --- | --- | --- | --- |",
    ]
    for p in sorted(data["points"], key=lambda p: (p["kd_weight"], p["kd_temperature"])):
        frac = "not reached" if p["step_frac"] is None else f"{p['step_frac']:.2f}"
        lines.append(
            f"| {p['kd_weight']:g} | {p['kd_temperature']:g} | {p['final_loss']:.3f} "
            f"| {p['final_minus_baseline']:+.3f} | {frac} |"
        )
    best_loss = min(data["points"], key=lambda p: p["final_loss"])
    reached = [p for p in data["points"] if p["step_frac"] is not None]
    best_frac = min(reached, key=lambda p: p["step_frac"]) if reached else None
    lines += [
        "",
        f"Lowest final loss: omega = {best_loss['kd_weight']:g}, tau = {best_loss['kd_temperature']:g} "
        f"({best_loss['final_loss']:.3f}, {best_loss['final_minus_baseline']:+.3f} vs baseline).  ",
        (
            f"Fewest steps to the baseline's final loss: omega = {best_frac['kd_weight']:g}, "
            f"tau = {best_frac['kd_temperature']:g} ({best_frac['step_frac']:.2f})."
            if best_frac
            else "No grid point reached the baseline's final loss."
        ),
        "",
        *(
            [
                f"Not run (no saved run): {', '.join(f'omega {w:g} / tau {t:g}' for w, t in data['missing'])}.",
                "",
            ]
            if data.get("missing")
            else []
        ),
        f"![omega/tau sweep]({plot_rel})",
        "",
    ]
    return "\n".join(lines)


def plot_sweep(data: dict[str, Any], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    base = data["baseline"]["curve"]
    ax.plot(base["step"], base["loss"], "k--", label="baseline")
    for p in sorted(data["points"], key=lambda p: (p["kd_weight"], p["kd_temperature"])):
        ax.plot(
            p["curve"]["step"],
            p["curve"]["loss"],
            label=f"omega={p['kd_weight']:g}, tau={p['kd_temperature']:g}",
        )
    ax.axhline(base["loss"][-1], color="black", lw=0.7, ls=":")
    tail = [v for p in data["points"] for v in p["curve"]["loss"][1:]] + base["loss"][1:]
    ax.set_ylim(min(tail) - 0.05, sorted(tail)[len(tail) // 2] + 0.5)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("validation loss")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("SALT omega / tau sweep (step schedule)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def run(cfg: BenchmarkConfig, sweep: SweepArgs) -> int:
    grid = _grid(sweep)
    if sweep.jobs:
        _run_jobs(cfg, sweep, sweep.jobs)
        return 0
    if cfg.report_only:
        pass  # report the saved runs only
    elif cfg.workers > 1:
        _spawn(cfg, sweep)
    else:
        _run_jobs(cfg, sweep, list(range(len(grid))))
    if not cfg.report:
        return 0
    data = collect(cfg, sweep)
    report_dir, results_md = cfg.report_paths()
    report_dir.mkdir(parents=True, exist_ok=True)
    plot = plot_sweep(data, report_dir / f"sweep_kd_{cfg.label}.png")
    command = command_line()
    plot_rel = os.path.relpath(plot, results_md.parent) if results_md else plot.name
    block = sweep_markdown(cfg, data, plot_rel, command)
    (report_dir / f"sweep_kd_{cfg.label}.md").write_text(block.replace(plot_rel, plot.name))
    (Path(cfg.output_dir) / "sweep.json").write_text(
        json.dumps({k: v for k, v in data.items() if k != "teacher"}, indent=1, default=str)
    )
    if results_md is not None:
        update_results_md(results_md, f"reproduce:sweep-kd-{cfg.label}", block)
    print(block)
    return 0


def main(argv: list[str] | None = None) -> int:
    from hf_salt.cli.parser import Command
    from hf_salt.experiments.config import RENAMED

    return Command([BenchmarkConfig, SweepArgs], run, description=__doc__, renamed=RENAMED).main(
        list(sys.argv[1:] if argv is None else argv), prog="sweep_kd.py"
    )


if __name__ == "__main__":
    sys.exit(main())

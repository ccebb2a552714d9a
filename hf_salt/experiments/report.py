"""Reports of the reproduction benchmark: the plot, the markdown table and the RESULTS.md block.

A run writes them into its own folder (``report_dir``, default the run's ``output_dir``); the shipped
``benchmarks/RESULTS.md`` and ``benchmarks/reproduction_<label>.{md,png}`` change only when a run is pointed at them
(``--report_dir benchmarks --results_md benchmarks/RESULTS.md``).
"""

from __future__ import annotations

import datetime as _dt
import os
import platform
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np

from hf_salt.experiments.metrics import (
    SALT_WALL_TARGET,
    aggregate,
    check_targets,
    equal_steps_table,
    markdown_table,
)


def plot_results(results: dict[str, Any], path: Path) -> Path:
    """Mean validation-loss curves with min–max seed bands, against steps and against step wall-clock,
    plus the kd_weight schedules."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cfg = results["config"]
    fig = plt.figure(figsize=(13, 7.5))
    grid = fig.add_gridspec(2, 2, height_ratios=[3, 1])
    ax_step, ax_wall, ax_kd = (
        fig.add_subplot(grid[0, 0]),
        fig.add_subplot(grid[0, 1]),
        fig.add_subplot(grid[1, 0]),
    )
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    lows, highs = [], []
    base_finals = []
    for i, arm in enumerate(cfg["arms"]):
        runs = [results["runs"][str(s)][arm] for s in cfg["seeds"] if arm in results["runs"].get(str(s), {})]
        if not runs:
            continue
        steps = runs[0]["curve"]["step"]
        if any(r["curve"]["step"] != steps for r in runs):
            continue  # seeds evaluated at different steps cannot be averaged point-wise
        losses = np.array([r["curve"]["loss"] for r in runs])
        walls = np.array([r["curve"]["wall"] for r in runs])
        mean = losses.mean(0)
        color = colors[i % len(colors)]
        style = "--" if arm == "baseline" else "-"
        label = f"{arm} (n={len(runs)})"
        ax_step.plot(steps, mean, style, color=color, label=label, lw=1.6)
        ax_step.fill_between(steps, losses.min(0), losses.max(0), color=color, alpha=0.18)
        ax_wall.plot(walls.mean(0), mean, style, color=color, label=label, lw=1.6)
        ax_wall.fill_between(walls.mean(0), losses.min(0), losses.max(0), color=color, alpha=0.18)
        lows.append(losses[:, 1:].min() if losses.shape[1] > 1 else losses.min())
        highs.append(np.median(mean))
        if arm == "baseline":
            base_finals = losses[:, -1].tolist()
        kd = [r["kd_weight"] for r in runs if r.get("kd_weight", {}).get("step")]
        if kd:
            ax_kd.plot(kd[0]["step"], kd[0]["weight"], color=color, label=arm)
    if base_finals:
        for ax in (ax_step, ax_wall):
            ax.axhline(
                float(np.mean(base_finals)), color="black", lw=0.8, ls=":", label="baseline final (mean)"
            )
    for t in results["teachers"].values():
        ax_step.axhline(
            t["final_loss"], color="gray", lw=0.8, ls="-.", label=f"teacher final (seed {t['seed']})"
        )
    if lows:
        ax_step.set_ylim(min(lows) - 0.05, max(highs) + 0.4)
        ax_wall.set_ylim(min(lows) - 0.05, max(highs) + 0.4)
    ax_step.set_xlabel("optimizer step")
    ax_wall.set_xlabel("wall-clock of the student's steps (s, mean over seeds; teacher forwards included)")
    for ax in (ax_step, ax_wall):
        ax.set_ylabel("validation loss")
        ax.grid(alpha=0.3)
    ax_step.legend(fontsize=7, ncol=2)
    ax_kd.set_xlabel("optimizer step")
    ax_kd.set_ylabel("kd_weight (omega)")
    ax_kd.grid(alpha=0.3)
    if ax_kd.lines:
        ax_kd.legend(fontsize=7, ncol=2)
    ax_txt = fig.add_subplot(grid[1, 1])
    ax_txt.axis("off")
    ax_txt.text(
        0.0, 1.0,
        f"{cfg['student_preset']} student, {cfg['teacher_preset']} teacher, {cfg['corpus']}\n"
        f"{cfg['max_steps']} steps x {cfg['batch_size'] * cfg['gradient_accumulation_steps']} x "
        f"{cfg['block_size']} tokens; n_KD = {results['kd_steps']}\n"
        f"omega = {cfg['kd_weight']}, tau = {cfg['kd_temperature']}; seeds {cfg['seeds']}\n"
        "lines: mean over seeds; bands: min-max over seeds",
        va="top", fontsize=9,
    )  # fmt: skip
    fig.suptitle(f"Reproduction ({cfg['label']}): validation loss per arm")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def report_markdown(results: dict[str, Any], rows: list[dict[str, Any]], plot_rel: str) -> str:
    """The block that goes into RESULTS.md (and benchmarks/reproduction_<label>.md)."""
    cfg = results["config"]
    hw = results["hardware"]
    teachers = list(results["teachers"].values())
    teacher = teachers[0] if len(teachers) == 1 else None
    teacher_note = (
        "one teacher per seed"
        if cfg["teacher_per_seed"]
        else f"one teacher for all seeds, seed {cfg['teacher_seed']}"
    )
    decay_note = (
        f"; salt-linear and salt-linear_ratio hold omega for the first {cfg['kd_decay_start']:.0%} of n_KD, then "
        "decay it to 0 at n_KD"
        if cfg.get("kd_decay_start") is not None
        else ""
    )
    lines = [
        f"### Scale: {cfg['label']} — {cfg['student_preset']} student, {cfg['teacher_preset']} teacher, {cfg['corpus']}",
        "",
        f"Command: `{results['command']}`  ",
        f"Date: {results['started']} to {results.get('finished', '?')}  ",
        f"Hardware: {hw['summary']}; {cfg['workers']} worker process(es) x "
        f"{cfg['num_threads'] or 'default'} thread(s) (seeds in parallel when > 1)  ",
        f"Budget: {cfg['max_steps']} steps x {cfg['batch_size'] * cfg['gradient_accumulation_steps']} blocks x "
        f"{cfg['block_size']} tokens = {cfg['max_steps'] * cfg['batch_size'] * cfg['gradient_accumulation_steps'] * cfg['block_size']:,} "
        f"tokens per arm ({results['epochs']:.2f} epochs of {results['train_tokens']:,} training tokens); "
        f"teacher {cfg['teacher_steps']} steps; n_KD = {results['kd_steps']} ({results['kd_steps'] / cfg['max_steps']:.0%} of the steps{decay_note}); "
        f"omega = {cfg['kd_weight']}, tau = {cfg['kd_temperature']}; AdamW, peak LR {cfg['learning_rate']}, "
        f"{cfg['warmup_steps']} warm-up steps then cosine; "
        f"HyperCloning LR {cfg['hc_learning_rate'] or cfg['learning_rate']}, warm-up "
        f"{cfg['hc_warmup_steps'] if cfg['hc_warmup_steps'] is not None else cfg['warmup_steps']}, "
        f"snr_db {cfg['hypercloning_snr_db']}; seeds {cfg['seeds']} "
        f"({teacher_note}); "
        f"validation: {results['validation_blocks']} blocks evaluated every {cfg['eval_every']} steps.",
        "",
        markdown_table(rows, teacher, results.get("step_costs")),
        "",
        _columns_note(results),
        "",
        "Validation loss minus the baseline's at equal steps (paired per seed; negative = ahead):",
        "",
        equal_steps_table(rows),
        "",
        "Targets (judged on the seed means):",
        "",
    ]
    for target, measured, met in check_targets(rows, cfg.get("salt_wall_target", SALT_WALL_TARGET)):
        verdict = "not run" if met is None else ("**met**" if met else "**missed**")
        lines.append(f"- {target}: {measured} — {verdict}")
    missing = results.get("missing") or []
    if missing:
        lines += [
            "",
            "**Not finished** (no saved run; re-running the command above trains only these, it resumes): "
            + ", ".join(f"{arm} seed {seed}" for seed, arm in missing)
            + ".",
        ]
    lines += ["", f"![validation curves]({plot_rel})", ""]
    return "\n".join(lines)


def _columns_note(results: dict[str, Any]) -> str:
    """What the table's columns mean for this run (target, pricing)."""
    cfg = results["config"]
    evals = cfg.get("target_evals", 1)
    target = (
        "the baseline's final validation loss"
        if evals == 1
        else f"the mean of the baseline's last {evals} validation losses"
    )
    costs = results.get("step_costs")
    if costs:
        kinds = ", ".join(f"{k} {costs[k] * 1000:.0f} ms" for k in ("student", "kd", "teacher") if k in costs)
        rounds = len(next(iter(costs["rounds"].values())))
        wall = (
            f"Wall-clock is priced, not read off each run: seconds per step from one interleaved measurement "
            f"in one process ({kinds}; median of {rounds} rounds, {costs.get('measured', '')}), times each "
            "arm's steps of each kind (KD steps at the KD price); SALT_DS's offline scoring is added, and the "
            "last wall-clock column adds the teacher's own training at the teacher's price."
        )
    else:
        wall = (
            "The wall-clock columns time each run's optimizer steps (evaluations excluded); teacher forwards "
            "during KD are inside the steps, SALT_DS's offline scoring is added, and the last column also adds "
            "the teacher's own training."
        )
    return (
        f"The target is {target}. Fractions are per seed against the same seed's baseline (same init, same data "
        "order), the arm's steps (or seconds) to the target over the baseline's own, then mean ± sample std "
        f"[min–max] over seeds. {wall}"
    )


def update_results_md(path: Path, marker: str, block: str, section: str = "## Reproduction") -> None:
    """Replace the text between ``<!-- marker:begin -->`` and ``<!-- marker:end -->`` in RESULTS.md, or insert
    the marked block at the end of the section whose heading starts with ``section``. Other sections are kept."""
    text = path.read_text() if path.exists() else "# Benchmark results\n\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    begin, end = f"<!-- {marker}:begin -->", f"<!-- {marker}:end -->"
    marked = f"{begin}\n{block.rstrip()}\n{end}"
    if begin in text and end in text:
        before, rest = text.split(begin, 1)
        _, after = rest.split(end, 1)
        text = before + marked + after
    else:
        lines = text.splitlines()
        start = next((i for i, line in enumerate(lines) if line.startswith(section)), None)
        if start is None:
            lines += ["", section, "", marked]
        else:
            stop = next((j for j in range(start + 1, len(lines)) if lines[j].startswith("## ")), len(lines))
            body = [line for line in lines[start + 1 : stop] if line.strip() != "_Not measured yet._"]
            while body and not body[-1].strip():
                body.pop()
            lines = lines[: start + 1] + body + ["", marked, ""] + lines[stop:]
        text = "\n".join(lines) + "\n"
    path.write_text(text)


def write_report(results: dict[str, Any], report_dir: Path, results_md: Path | None) -> dict[str, Path]:
    """Table (markdown) and plot (PNG) in ``report_dir``, the block in ``results_md`` (None: no block); returns
    the paths written."""
    cfg = results["config"]
    report_dir.mkdir(parents=True, exist_ok=True)
    rows = aggregate(results)
    plot = plot_results(results, report_dir / f"reproduction_{cfg['label']}.png")
    plot_rel = os.path.relpath(plot, results_md.parent) if results_md else plot.name
    block = report_markdown(results, rows, plot_rel)
    table = report_dir / f"reproduction_{cfg['label']}.md"
    table.write_text(block.replace(f"]({plot_rel})", f"]({os.path.relpath(plot, table.parent)})"))
    written = {"plot": plot, "table": table}
    if results_md is not None:
        update_results_md(results_md, f"reproduce:{cfg['label']}", block)
        written["results_md"] = results_md
    return written


def hardware() -> dict[str, Any]:
    """What ran it: CPU model and cores (lscpu / nproc), GPU name, library versions."""
    import torch
    import transformers

    cpu = platform.processor() or platform.machine()
    try:
        for line in subprocess.run(
            ["lscpu"], capture_output=True, text=True, check=False
        ).stdout.splitlines():
            if line.startswith("Model name:"):
                cpu = line.split(":", 1)[1].strip()
    except OSError:
        pass
    cores = os.cpu_count()
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    summary = (
        (f"{gpu} + " if gpu else "")
        + f"{cpu}, {cores} CPU cores (nproc), torch {torch.__version__}, transformers {transformers.__version__}"
    )
    return {"cpu": cpu, "cores": cores, "gpu": gpu, "torch": torch.__version__, "summary": summary}


def now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def command_line() -> str:
    argv = [Path(sys.argv[0]).name if sys.argv[0].endswith("hf-salt") else sys.argv[0], *sys.argv[1:]]
    if argv and argv[0].endswith(".py"):
        argv[0] = os.path.relpath(argv[0]) if os.path.isabs(argv[0]) else argv[0]
        argv.insert(0, "python")
    return " ".join(shlex.quote(a) for a in argv)

"""`hf-salt demo`'s run: the engine for one seed, with every model saved and a table and a plot.

Reported per arm: the validation-loss curve, wall-clock of the student's training steps, the teacher's cost in a
separate column (teacher pre-training, plus SALT_DS scoring), the final validation perplexity, and "steps to
baseline": the first step at which the arm's validation loss reaches the baseline's final validation loss,
linearly interpolated between the two evaluations that bracket the crossing, as a fraction of the baseline's
steps (None if never reached).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from hf_salt.experiments.arms import ARMS
from hf_salt.experiments.config import ExperimentConfig
from hf_salt.experiments.engine import Engine
from hf_salt.experiments.metrics import first_crossing
from hf_salt.experiments.resume import RUNS, check_resume
from hf_salt.io import write_text_atomic

#: the demo's name for :func:`first_crossing` (a step, interpolated between evaluations)
steps_to_reach = first_crossing


def _demo_curve(record: dict[str, Any]) -> dict[str, list]:
    kd = record["kd_weight"]
    return {
        "steps": record["curve"]["step"],
        "eval_loss": record["curve"]["loss"],
        "kd_steps": kd["step"],
        "kd_weight": kd["weight"],
    }


def run_experiment(config: ExperimentConfig) -> dict[str, Any]:
    """Train the teacher, then every arm; write models, results.json and the plot; return the results."""
    check_resume(config.resume_from_checkpoint, config.output_dir)
    out = Path(config.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    engine = Engine(config)
    engine.load_data()
    results: dict[str, Any] = {"config": asdict(config), "arms": {}, "device": _device_name(config)}
    resume = config.resume_from_checkpoint is not None
    teacher, trecord = engine.teacher(config.seed, out / "teacher", reuse=resume)
    results["teacher"] = {
        "preset": config.teacher_preset,
        "steps": config.teacher_steps,
        "train_time_s": trecord["train_time_s"],
        "final_eval_loss": trecord["final_loss"],
        "final_ppl": math.exp(trecord["final_loss"]),
        "curve": {"steps": trecord["curve"]["step"], "eval_loss": trecord["curve"]["loss"]},
        "path": trecord["path"],
    }
    for name in tqdm(config.arms, desc="arms", unit="arm", disable=config.disable_tqdm):
        saved = out / RUNS / f"seed{config.seed}" / f"{name.replace('+', '_plus_')}.json"
        record = _finished(saved, {engine.run_key(name)}) if resume else None
        if record is None:
            saved.unlink(missing_ok=True)
            record = engine.run_arm(
                name, config.seed, teacher, trecord, save_to=out / name.replace("+", "_plus_")
            )
            write_text_atomic(saved, json.dumps(record, indent=1))
        else:
            print(f"[hf-salt] reusing the finished {name} run ({saved})")
        uses_teacher = record["uses_teacher"]
        final = record["curve"]["loss"][-1]
        results["arms"][name] = {
            "description": ARMS[name].description,
            "steps": config.max_steps,
            "kd_steps": record["kd_steps"],
            "train_time_s": record["train_time_s"],
            "teacher_cost_s": trecord["train_time_s"] + record["offline_teacher_s"] if uses_teacher else 0.0,
            "final_eval_loss": final,
            "final_ppl": math.exp(final),
            "curve": _demo_curve(record),
            "path": record["path"],
        }
    base = results["arms"]["baseline"]
    for rec in results["arms"].values():
        reached = steps_to_reach(rec["curve"]["steps"], rec["curve"]["eval_loss"], base["final_eval_loss"])
        rec["steps_to_baseline"] = reached
        rec["steps_to_baseline_fraction"] = None if reached is None else reached / base["steps"]
        rec["total_time_s"] = rec["train_time_s"] + rec["teacher_cost_s"]
    results["plot"] = str(plot_curves(results, out / "curves.png"))
    write_text_atomic(out / "results.json", json.dumps(results, indent=2))
    results["results_json"] = str(out / "results.json")
    return results


def _finished(saved: Path, keys: set[str]) -> dict[str, Any] | None:
    """The record of a finished arm run of this config (its model saved), else None."""
    if not saved.is_file():
        return None
    record = json.loads(saved.read_text())
    ok = record.get("key") in keys and Path(record.get("path", "")).is_dir()
    return record if ok else None


def _device_name(config: ExperimentConfig) -> str:
    if torch.cuda.is_available() and not config.use_cpu:
        return torch.cuda.get_device_name(0)
    return f"cpu ({os.cpu_count()} cores, {torch.get_num_threads()} threads)"


def plot_curves(results: dict[str, Any], path: Path) -> Path:
    """Validation-loss curves of teacher and arms, and the kd_weight curve of each SALT arm."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(8, 7), sharex=True, height_ratios=[3, 1])
    t = results["teacher"]
    ax1.axhline(t["final_eval_loss"], color="gray", ls=":", label=f"teacher final ({t['preset']})")
    base = results["arms"]["baseline"]["final_eval_loss"]
    ax1.axhline(base, color="black", ls="--", lw=0.8, label="baseline final")
    for i, (name, rec) in enumerate(results["arms"].items()):
        c, color = rec["curve"], f"C{i}"  # one colour per arm in both panels
        ax1.plot(c["steps"], c["eval_loss"], marker=".", label=name, color=color)
        if c["kd_weight"]:
            ax2.plot(c["kd_steps"], c["kd_weight"], label=name, drawstyle="steps-pre", color=color)
    lows = [v for rec in results["arms"].values() for v in rec["curve"]["eval_loss"][1:]]
    if lows:
        ax1.set_ylim(min(lows + [t["final_eval_loss"]]) - 0.2, max(lows) + 0.3)
    ax1.set_ylabel("validation loss")
    ax1.legend(fontsize=8)
    ax1.grid(alpha=0.3)
    ax2.set_ylabel("kd_weight (omega)")
    ax2.set_xlabel("optimizer step")
    ax2.grid(alpha=0.3)
    if ax2.lines:
        ax2.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def format_table(results: dict[str, Any]) -> str:
    """A plain-text table of the results."""
    rows = [
        (
            "model",
            "val loss",
            "val ppl",
            "steps",
            "reach baseline",
            "train wall s",
            "teacher wall s",
            "total wall s",
        )
    ]
    t = results["teacher"]
    rows.append(
        (
            "teacher (" + t["preset"] + ")",
            f"{t['final_eval_loss']:.3f}",
            f"{t['final_ppl']:.1f}",
            str(t["steps"]),
            "-",
            f"{t['train_time_s']:.0f}",
            "-",
            "-",
        )
    )
    for name, r in results["arms"].items():
        frac = r["steps_to_baseline_fraction"]
        reach = "never" if frac is None else f"{frac:.0%} ({r['steps_to_baseline']:.0f})"
        rows.append(
            (
                name,
                f"{r['final_eval_loss']:.3f}",
                f"{r['final_ppl']:.1f}",
                str(r["steps"]),
                reach,
                f"{r['train_time_s']:.0f}",
                f"{r['teacher_cost_s']:.0f}",
                f"{r['total_time_s']:.0f}",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    lines.append(
        "wall s: raw wall-clock seconds, arms run one after another, so other load on the machine changes them; "
        "compare methods by steps ('reach baseline'), not by these seconds."
    )
    return "\n".join(lines)

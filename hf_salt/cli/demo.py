"""`hf-salt demo`: teacher, baseline, SALT (and friends) on the embedded WikiText-2, with a table and a plot.

The default takes about 11 minutes on 2 idle CPU cores (measured); `--scale gpu` picks a GPU-sized run (bigger
presets, longer blocks, more steps); any field can be set by hand (`--max_steps`, `--student_preset`, ...).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from hf_salt.cli.parser import Command
from hf_salt.experiments import ExperimentConfig, format_table, run_experiment

SCALES: dict[str, dict] = {
    # the per-arm budget of benchmarks/configs/cpu.yaml (one seed): ~1.5-2 minutes per arm on 2 cores
    "cpu": dict(
        block_size=64,
        batch_size=8,
        max_steps=480,
        teacher_steps=240,
        warmup_steps=24,
        eval_every=24,
        eval_blocks=128,
        learning_rate=2e-3,  # the settings of the benchmark's CPU table (RESULTS.md, "Closing the gap")
        kd_fraction=0.4,
        hypercloning_snr_db=10.0,
    ),
    "tiny": dict(  # seconds: for tests and smoke checks
        teacher_preset="llama-tiny",
        student_preset="llama-tiny-2x",
        block_size=32,
        max_steps=8,
        teacher_steps=8,
        batch_size=4,
        eval_every=4,
        eval_blocks=8,
        warmup_steps=0,
    ),
    "gpu": dict(
        teacher_preset="llama-40m",
        student_preset="llama-160m",
        block_size=512,
        max_steps=3000,
        teacher_steps=3000,
        batch_size=32,
        learning_rate=1e-3,
        teacher_learning_rate=1.5e-3,
        warmup_steps=200,
        eval_every=100,
        eval_blocks=256,
        eval_batch_size=32,
        bf16=True,
    ),
}


@dataclass
class DemoArgs:
    scale: str = field(
        default="cpu",
        metadata={
            "help": "Size of the run: cpu (about 11 minutes on 2 CPU cores), tiny (seconds), gpu.",
            "choices": list(SCALES),
        },
    )


def run(demo: DemoArgs, config: ExperimentConfig) -> int:
    defaults = ExperimentConfig()
    for key, value in SCALES[demo.scale].items():
        if getattr(config, key) == getattr(defaults, key):  # explicit flags win over the scale preset
            setattr(config, key, value)
    print(
        f"hf-salt demo ({demo.scale}): teacher {config.teacher_preset}, student {config.student_preset}, "
        f"{config.max_steps} steps x {config.batch_size} x {config.block_size} tokens, arms {config.arms}"
    )
    results = run_experiment(config)
    print()
    print(f"Results on {config.corpus} validation ({results['device']}):")
    print(format_table(results))
    print()
    print(
        "'reach baseline': first step at which the arm's validation loss reaches the baseline's final one, "
        "as a fraction of the baseline's steps (interpolated between evaluations)."
    )
    print(
        "'teacher s': the teacher's own training (+ SALT_DS scoring); 'train s' includes the teacher forwards of KD steps."
    )
    print(f"Plot:    {results['plot']}")
    print(f"Results: {results['results_json']}")
    print(
        f"Models:  {results['teacher']['path']} (teacher), "
        + ", ".join(r["path"] for r in results["arms"].values())
    )
    return 0


COMMAND = Command([DemoArgs, ExperimentConfig], run, description=__doc__)

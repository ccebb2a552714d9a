"""`hf-salt demo`: teacher, baseline, SALT (and friends) on the embedded WikiText-2, with a table and a plot.

The default takes about 11 minutes on 2 idle CPU cores (measured); `--scale gpu` picks a GPU-sized run (bigger
presets, longer blocks, more steps); any field can be set by hand (`--max_steps`, `--student_preset`, ...).
"""

from __future__ import annotations

import typing
from dataclasses import dataclass, field, fields, make_dataclass
from typing import Any

from hf_salt.checks import check_no_finished_run, check_writable
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
        kd_steps=0.4,
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
        hypercloning_snr_db=10.0,  # as at every scale: without noise the clone's copies never separate
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
        hypercloning_snr_db=10.0,
    ),
}


@dataclass
class DemoArgs:
    scale: str = field(
        default="cpu",
        metadata={
            "help": "Size of the run: cpu (about 11 minutes on 2 idle CPU cores), tiny (seconds), gpu. Sets "
            "every option whose help says 'from --scale'; an option given by hand always wins.",
            "choices": list(SCALES),
        },
    )
    overwrite_output_dir: bool = field(
        default=False,
        metadata={
            "help": "Allow an output_dir that already holds a finished demo (its results are replaced)."
        },
    )


SCALED = sorted({key for preset in SCALES.values() for key in preset})


def _scale_help(key: str) -> str:
    base = ExperimentConfig.__dataclass_fields__[key]
    values = ", ".join(f"{name} {preset.get(key, base.default)}" for name, preset in SCALES.items())
    return f"{base.metadata['help']} None (not given): from --scale ({values})."


def _demo_field(key: str, hint: Any):
    metadata: dict[str, Any] = {"help": _scale_help(key)}
    if hint is bool:  # `--bf16` alone still means true
        metadata.update(nargs="?", const=True)
    return field(default=None, metadata=metadata)


def _demo_config_class() -> type:
    """`ExperimentConfig` with the scaled options defaulting to None ('not given'), resolved in `resolve`."""
    hints = typing.get_type_hints(ExperimentConfig)
    fields = [(key, typing.Optional[hints[key]], _demo_field(key, hints[key])) for key in SCALED]  # noqa: UP045
    cls = make_dataclass(
        "DemoConfig",
        fields,
        bases=(ExperimentConfig,),
        namespace={
            # scaled options are None until `resolve`, which builds (and so validates) the real ExperimentConfig
            "__post_init__": lambda self: None,
            "__doc__": "ExperimentConfig for `hf-salt demo`.",
        },
    )
    cls.__module__ = __name__
    return cls


DemoConfig = _demo_config_class()


def resolve(demo: DemoArgs, config: Any) -> ExperimentConfig:
    """The scale preset fills every scaled option the user did not give; explicit flags win, whatever their value."""
    values = {f.name: getattr(config, f.name) for f in fields(ExperimentConfig)}
    defaults = ExperimentConfig.__dataclass_fields__
    for key in SCALED:
        if values[key] is None:
            values[key] = SCALES[demo.scale].get(key, defaults[key].default)
    return ExperimentConfig(**values)  # validates the resolved values


def check_inputs(demo: DemoArgs, config: ExperimentConfig) -> None:
    """What can be checked before the first training step."""
    from hf_salt.data.packing import check_block_size
    from hf_salt.zoo import build_config

    check_writable(config.output_dir, "--output_dir")
    resuming = config.resume_from_checkpoint is not None  # reuses the finished runs on purpose
    check_no_finished_run(config.output_dir, FINISHED_RUN, demo.overwrite_output_dir or resuming)
    for preset in (config.teacher_preset, config.student_preset):
        check_block_size(config.block_size, build_config(preset))


FINISHED_RUN = ("results.json",)


def run(demo: DemoArgs, given: Any) -> int:
    config = resolve(demo, given)
    check_inputs(demo, config)
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


COMMAND = Command([DemoArgs, DemoConfig], run, description=__doc__)

"""What every arm of an experiment shares: data, models, optimizer, evaluation, KD and HyperCloning settings.

`SharedSettings` holds them; `ExperimentConfig` is the demo's config (one seed); `hf_salt.experiments.benchmark.BenchmarkConfig` adds seeds,
resuming and reporting. The KD settings are SALTConfig's own fields (name, help, default) and SALTConfig checks
them, so the demo, the benchmark and a plain SALT run mean the same by each.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import re
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from hf_salt.experiments.arms import ArmContext, auto_salt_fields, resolve_arms
from hf_salt.salt.config import SALTConfig
from hf_salt.salt.schedules import int_or_fraction, resolve_kd_steps

# the KD settings of an experiment: SALTConfig's fields of the same names (salt_field)
KD_SETTINGS = (
    "kd_weight",
    "kd_temperature",
    "kd_steps",
    "kd_decay_start",
    "kd_auto_margin",
    "kd_auto_decay_steps",
)

# arms whose SALTConfig fields SALTConfig checks beyond the step schedule's (the schedule's own rules, n_KD in
# steps against kd_decay_start or the decay window): how each arm's builder derives them from the config
CHECKED_ARM_FIELDS: dict[str, Callable[[ArmContext], dict[str, Any]]] = {
    "salt-linear": lambda ctx: ctx.salt_fields(kd_schedule="linear"),
    "salt-linear_ratio": lambda ctx: ctx.salt_fields(kd_schedule="linear_ratio"),
    "salt-auto": auto_salt_fields,
}


def salt_default(name: str) -> Any:
    """SALTConfig's default of field ``name`` (one definition of the KD defaults)."""
    for f in dataclasses.fields(SALTConfig):
        if f.name == name:
            return f.default
    raise KeyError(f"SALTConfig has no field {name!r}.")


def salt_field(name: str, note: str = "") -> Any:
    """SALTConfig's field ``name`` for an experiment config: its help (plus ``note``) and its default, so the
    demo, the benchmark and a plain SALT run name, document and default each KD setting once."""
    source = next(f for f in dataclasses.fields(SALTConfig) if f.name == name)
    metadata = {**source.metadata, "help": f"{source.metadata['help']} {note}".strip()}
    return field(default=salt_default(name), metadata=metadata)


def like(cls: type, name: str, default: Any) -> Any:
    """A dataclass field with ``cls``'s help for ``name`` and another default (a subclass's own defaults)."""
    source = next(f for f in dataclasses.fields(cls) if f.name == name)
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=source.metadata)
    return field(default=default, metadata=source.metadata)


@dataclass
class SharedSettings:
    """The settings every arm of an experiment shares (data, models, optimizer, evaluation, KD, HyperCloning)."""

    # data and models
    corpus: str = field(
        default="wikitext-2",
        metadata={
            "help": "Corpus: embedded name (wikitext-2, tinyshakespeare) or a local path (see load_corpus)."
        },
    )
    tokenizer: str | None = field(
        default=None, metadata={"help": "Tokenizer folder; default: the shipped 8192-token BPE."}
    )
    teacher_preset: str = field(
        default="llama-small", metadata={"help": "hf_salt.zoo preset of the small teacher."}
    )
    student_preset: str = field(
        default="llama-small-2x", metadata={"help": "hf_salt.zoo preset of the student."}
    )
    block_size: int = field(default=128, metadata={"help": "Tokens per packed training block."})
    max_train_blocks: int = field(
        default=0, metadata={"help": "Use only this many packed training blocks (0 = all); for smoke runs."}
    )
    # optimisation (identical for every arm)
    max_steps: int = field(default=200, metadata={"help": "Optimizer steps of every student arm."})
    teacher_steps: int = field(
        default=200, metadata={"help": "Optimizer steps of the teacher's pre-training."}
    )
    batch_size: int = field(default=8, metadata={"help": "Blocks per device per micro-batch."})
    gradient_accumulation_steps: int = field(
        default=1, metadata={"help": "Micro-batches per optimizer step."}
    )
    learning_rate: float = field(default=3e-3, metadata={"help": "Peak learning rate of every student arm."})
    teacher_learning_rate: float = field(
        default=3e-3, metadata={"help": "Peak learning rate of the teacher."}
    )
    warmup_steps: int = field(default=20, metadata={"help": "Linear warm-up steps, then cosine decay to 0."})
    weight_decay: float = field(default=0.1, metadata={"help": "AdamW weight decay."})
    adam_beta2: float = field(default=0.95, metadata={"help": "AdamW beta2."})
    max_grad_norm: float = field(default=1.0, metadata={"help": "Gradient clipping norm."})
    # evaluation
    eval_every: int = field(default=25, metadata={"help": "Evaluate every this many optimizer steps."})
    eval_blocks: int = field(
        default=64,
        metadata={"help": "Validation blocks (evenly spaced over the split) per evaluation; 0 = all."},
    )
    eval_batch_size: int = field(default=16, metadata={"help": "Blocks per evaluation forward."})
    # arms
    arms: list[str] = field(
        default_factory=lambda: ["default"],
        metadata={
            "help": "Arms to train (the baseline always runs); 'default' = the default arms whose modules import, "
            "'all' = every registered arm. See hf_salt.experiments.ARMS."
        },
    )
    # SALT: SALTConfig's own fields (name, help, default), checked by SALTConfig itself (see check_kd_settings)
    kd_weight: float = salt_field("kd_weight")
    kd_temperature: float = salt_field("kd_temperature")
    kd_steps: float = salt_field(
        "kd_steps",
        "Here at least 1 step (leave the KD arms out to train without KD); the salt-auto arm's upper bound.",
    )
    kd_decay_start: float | None = salt_field(
        "kd_decay_start", "Used by the salt-linear and salt-linear_ratio arms."
    )
    kd_auto_margin: float = salt_field("kd_auto_margin", "Used by the salt-auto arm.")
    kd_auto_decay_steps: float = salt_field("kd_auto_decay_steps", "Used by the salt-auto arm.")
    salt_ds_pool: int = field(
        default=4,
        metadata={"help": "SALT_DS scores this many KD budgets (n_KD x global batch) of candidate blocks."},
    )
    # HyperCloning
    hypercloning_snr_db: float | None = field(
        default=None,
        metadata={"help": "Symmetry-breaking noise of the clone (SNR in dB); None = exact copy."},
    )
    hc_learning_rate: float | None = field(
        default=None, metadata={"help": "Peak LR of the HyperCloning arms (None = learning_rate)."}
    )
    hc_warmup_steps: int | None = field(
        default=None, metadata={"help": "LR re-warm-up steps of the HyperCloning arms (None = warmup_steps)."}
    )
    hc_lr_scale: bool = field(
        default=False,
        metadata={
            "help": "Train a clone's grown matrices at the learning rate times the scale the clone records "
            "(1/n where entries were divided by n; hf_salt.hypercloning.optim), so their relative step is the "
            "source's. Off by default: it keeps the early head start but ended 0.09 nats worse on the payoff "
            "benchmark's tuning seed (benchmarks/RESULTS.md)."
        },
    )
    hc_lr_scale_steps: int = field(
        default=0,
        metadata={
            "help": "With hc_lr_scale: raise each grown tensor's learning-rate scale linearly to 1 over this many "
            "steps (hf_salt.hypercloning.ramp_lr_scales); 0 keeps the scales for the whole run."
        },
    )
    # execution
    bf16: bool = field(default=False, metadata={"help": "bf16 mixed precision (GPU)."})
    use_cpu: bool = field(default=False, metadata={"help": "Force CPU even when a GPU is present."})
    disable_tqdm: bool = field(default=False, metadata={"help": "Hide the Trainer's progress bars."})
    output_dir: str = field(
        default="hf-salt-demo", metadata={"help": "Where models, results.json and the plot go."}
    )
    save_steps: int = field(
        default=0,
        metadata={
            "help": "Checkpoint every run (teacher, each arm) every N optimizer steps under output_dir/_runs, "
            "so a killed run can resume mid-way; 0 = never."
        },
    )
    resume_from_checkpoint: str | None = field(
        default=None,
        metadata={
            "help": "latest: reuse the finished runs in output_dir and continue each unfinished one from its "
            "latest complete checkpoint (needs save_steps); or one run's checkpoint-N folder under "
            "output_dir/_runs (the others as with latest)."
        },
    )

    def __post_init__(self) -> None:
        if isinstance(self.arms, str):
            self.arms = [a for a in self.arms.replace(",", " ").split() if a]
        self.arms = resolve_arms(self.arms)
        for name in ("max_steps", "teacher_steps", "batch_size", "gradient_accumulation_steps", "eval_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}.")
        if self.block_size < 2:
            raise ValueError(f"block_size must be >= 2, got {self.block_size}.")
        self.kd_steps = int_or_fraction(self.kd_steps, "kd_steps", "of max_steps")
        if self.kd_steps < 1 and isinstance(self.kd_steps, int):
            raise ValueError(
                f"kd_steps={self.kd_steps}: every KD arm needs n_KD >= 1; give a step count in [1, max_steps] "
                "or a fraction of max_steps in (0, 1), e.g. 0.2 (leave the KD arms out to train without KD)."
            )
        self.check_kd_settings()
        if self.salt_ds_pool < 1:
            raise ValueError(f"salt_ds_pool must be >= 1 (KD budgets scored), got {self.salt_ds_pool}.")
        if self.warmup_steps < 0 or (self.hc_warmup_steps is not None and self.hc_warmup_steps < 0):
            raise ValueError("warmup_steps and hc_warmup_steps must be >= 0.")
        if self.hc_lr_scale_steps < 0:
            raise ValueError(
                "hc_lr_scale_steps must be >= 0 (0 keeps the learning-rate scales for the whole run)."
            )
        if self.hc_lr_scale_steps and not self.hc_lr_scale:
            raise ValueError(
                f"hc_lr_scale_steps={self.hc_lr_scale_steps} ramps the learning-rate scales of hc_lr_scale, which is "
                "off: set hc_lr_scale true, or hc_lr_scale_steps 0."
            )
        if self.save_steps < 0:
            raise ValueError(f"save_steps must be >= 0 (0 = no checkpoints), got {self.save_steps}.")

    def check_kd_settings(self) -> None:
        """Check the KD settings with SALTConfig's own validation, so an experiment accepts what SALTConfig accepts:
        as given (kd_steps against max_steps, with the step schedule), then as each selected arm of
        CHECKED_ARM_FIELDS passes them to its SALTConfig (n_KD in steps). A ValueError names the flags to change.

        The throwaway SALTConfig writes nothing (its output_dir is never created); like every TrainingArguments it
        sets up accelerate's (CPU) state, which the runs' own TrainingArguments set up again.
        """
        given = {
            name: getattr(self, name)
            for name in ("kd_weight", "kd_temperature", "kd_steps", "kd_decay_start")
        }
        ctx = ArmContext(config=self, tokenizer=None, train=None, validation=None, teacher=None, seed=0)
        checks: list[tuple[str, Callable[[], dict[str, Any]]]] = [("the KD settings as given", lambda: given)]
        checks += [
            (f"the {arm} arm's SALTConfig fields", functools.partial(CHECKED_ARM_FIELDS[arm], ctx))
            for arm in self.arms
            if arm in CHECKED_ARM_FIELDS
        ]
        for what, fields_of in checks:
            kd: dict[str, Any] = {}
            try:
                # inside the try: a bad derived value (an arm's decay window in steps) is reported the same way
                kd = fields_of()
                SALTConfig(
                    output_dir=os.path.join(tempfile.gettempdir(), "hf-salt-kd-check-not-written"),
                    max_steps=self.max_steps,
                    use_cpu=True,
                    report_to="none",
                    # with a teacher SALTConfig checks kd_steps against max_steps (nothing is loaded)
                    teacher_model_name_or_path=self.teacher_preset,
                    **kd,
                )
            except ValueError as err:
                found = {n: m.start() for n in KD_SETTINGS if (m := re.search(rf"\b{n}\b", str(err)))}
                named = sorted(found, key=found.get) or list(given)  # the setting the message is about first
                values = ", ".join(
                    f"{k}={v!r}" for k, v in kd.items() if k in KD_SETTINGS or k == "kd_schedule"
                )
                raise ValueError(
                    f"{', '.join(f'--{n}' for n in named)}: {err} (SALTConfig's check of {what}, "
                    f"max_steps={self.max_steps}{': ' + values if values else ''})"
                ) from err

    @property
    def resolved_kd_steps(self) -> int:
        """n_KD in optimizer steps: ``kd_steps`` itself, or a fraction of max_steps rounded as SALTTrainer rounds it
        (check_kd_settings refuses one that rounds to 0)."""
        return resolve_kd_steps(self.kd_steps, self.max_steps)

    @property
    def global_batch_size(self) -> int:
        return self.batch_size * self.gradient_accumulation_steps


@dataclass
class ExperimentConfig(SharedSettings):
    """What to train and how, for one seed; `hf-salt demo` fills it from the command line."""

    seed: int = field(
        default=0,
        metadata={"help": "Seed of model init and data order (the same for all arms and the teacher)."},
    )

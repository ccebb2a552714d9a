"""What every arm of an experiment shares: data, models, optimizer, evaluation, KD and HyperCloning settings.

`SharedSettings` holds them; `ExperimentConfig` is the demo's config (one seed); `hf_salt.experiments.benchmark.BenchmarkConfig` adds seeds,
resuming and reporting. The KD defaults are SALTConfig's, so the demo, the benchmark and a plain SALT run agree.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from hf_salt.experiments.arms import resolve_arms
from hf_salt.salt.config import SALTConfig
from hf_salt.salt.schedules import check_kd_steps, int_or_fraction, resolve_kd_steps


def salt_default(name: str) -> Any:
    """SALTConfig's default of field ``name`` (one definition of the KD defaults)."""
    for f in dataclasses.fields(SALTConfig):
        if f.name == name:
            return f.default
    raise KeyError(f"SALTConfig has no field {name!r}.")


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
    # SALT (defaults: SALTConfig's)
    kd_weight: float = field(
        default=salt_default("kd_weight"),
        metadata={"help": "omega, the KD weight during the KD stage (default: SALTConfig's)."},
    )
    kd_temperature: float = field(
        default=salt_default("kd_temperature"),
        metadata={"help": "tau, the KD temperature (default: SALTConfig's)."},
    )
    kd_steps: float = field(
        default=salt_default("kd_steps"),
        metadata={
            "help": "n_KD: optimizer steps with KD, an integer in [1, max_steps] or a fraction in (0, 1) of "
            "max_steps, as in SALTConfig (default: SALTConfig's)."
        },
    )
    kd_decay_start: float | None = field(
        default=salt_default("kd_decay_start"),
        metadata={"help": "linear / linear_ratio: where the decay starts, as a fraction of n_KD (None = 0)."},
    )
    kd_auto_cap: float = field(
        default=0.5,
        metadata={
            "help": "salt-auto: upper bound on n_KD as a fraction of max_steps (kd_steps with kd_schedule=auto)."
        },
    )
    kd_auto_margin: float = field(
        default=salt_default("kd_auto_margin"),
        metadata={"help": "salt-auto: kd_auto_margin in nats (default: SALTConfig's)."},
    )
    kd_auto_decay: float = field(
        default=salt_default("kd_auto_decay_steps"),
        metadata={"help": "salt-auto: decay window as a fraction of max_steps (default: SALTConfig's)."},
    )
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
        default=True,
        metadata={
            "help": "Train a clone's grown matrices at the learning rate times the scale the clone records "
            "(1/n where entries were divided by n; hf_salt.hypercloning.optim), so their relative step is the "
            "source's. False = one learning rate for every tensor."
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
        check_kd_steps(self.kd_steps, self.max_steps, n=self.resolved_kd_steps)
        if self.kd_decay_start is not None and not 0.0 <= self.kd_decay_start < 1.0:
            raise ValueError(
                f"kd_decay_start must be a fraction of n_KD in [0, 1), got {self.kd_decay_start}."
            )
        if not 0.0 <= self.kd_weight < 1.0:
            raise ValueError(f"kd_weight must be in [0, 1) (linear_ratio needs < 1), got {self.kd_weight}.")
        if self.kd_temperature <= 0:
            raise ValueError(f"kd_temperature must be > 0, got {self.kd_temperature}.")
        if not 0.0 < self.kd_auto_cap < 1.0 or not 0.0 <= self.kd_auto_decay <= self.kd_auto_cap:
            raise ValueError(
                f"salt-auto needs 0 < kd_auto_cap < 1 and 0 <= kd_auto_decay <= kd_auto_cap (fractions of "
                f"max_steps), got {self.kd_auto_cap} and {self.kd_auto_decay}."
            )
        if self.salt_ds_pool < 1:
            raise ValueError(f"salt_ds_pool must be >= 1 (KD budgets scored), got {self.salt_ds_pool}.")
        if self.warmup_steps < 0 or (self.hc_warmup_steps is not None and self.hc_warmup_steps < 0):
            raise ValueError("warmup_steps and hc_warmup_steps must be >= 0.")
        if self.save_steps < 0:
            raise ValueError(f"save_steps must be >= 0 (0 = no checkpoints), got {self.save_steps}.")

    @property
    def resolved_kd_steps(self) -> int:
        """n_KD in optimizer steps: ``kd_steps`` itself, or a fraction rounded as SALTTrainer rounds it (at least 1)."""
        return max(1, resolve_kd_steps(self.kd_steps, self.max_steps))

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

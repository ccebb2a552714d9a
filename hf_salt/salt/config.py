"""`SALTConfig`: `TrainingArguments` plus the knobs of SALT (KD from a small teacher, then plain training)."""

from __future__ import annotations

import json
import math
from dataclasses import MISSING, dataclass, field, fields
from typing import Any

from transformers import TrainingArguments
from transformers.trainer_utils import IntervalStrategy

from hf_salt.checks import check_field_types
from hf_salt.config_docs import document_fields
from hf_salt.data.sft import SFTDataArguments
from hf_salt.salt.losses import BACKENDS, DIVERGENCES
from hf_salt.salt.schedules import SCHEDULES, check_kd_steps, get_schedule, int_or_fraction

TEACHER_OFFLOAD = ("keep", "cpu", "free")
TEACHER_SHARDING = ("replicate", "shard")


@document_fields(
    {
        "The teacher": ("teacher_model_name_or_path", "teacher_model_init_kwargs"),
        "The KD objective": ("kd_weight", "kd_temperature", "kd_divergence", "kd_jsd_beta"),
        "When KD runs": (
            "kd_steps",
            "kd_schedule",
            "kd_decay_start",
            "kd_auto_margin",
            "kd_auto_smoothing",
            "kd_auto_decay_steps",
        ),
        "Memory and speed": ("kd_chunk_size", "kd_loss_backend", "kd_truncate_vocab"),
        "Where the teacher lives": ("teacher_sharding", "teacher_offload_after_kd"),
        "A grown student (HyperCloning)": ("hypercloning_lr_scale", "hypercloning_lr_scale_steps"),
        "Raw datasets (trl.SFTConfig's names and defaults)": (
            "dataset_text_field",
            "max_length",
            "packing",
            "packing_strategy",
            "padding_free",
            "completion_only_loss",
        ),
    }
)
@dataclass
class SALTConfig(SFTDataArguments, TrainingArguments):
    """Arguments of :class:`hf_salt.SALTTrainer`.

    Stage 1 (optimizer steps ``t < n_KD``) minimises ``(1 - w_t) * CE + w_t * tau^2 * D(teacher || student)``
    per token; stage 2 is plain next-token training (the teacher is not run). See ``docs/salt.md``. Every
    ``TrainingArguments`` field works as usual; SALT's own are below.
    """

    _VALID_DICT_FIELDS = [*TrainingArguments._VALID_DICT_FIELDS, "teacher_model_init_kwargs"]

    teacher_model_name_or_path: str | None = field(
        default=None,
        metadata={
            "help": "Teacher (the SMALL model): a local folder or Hub id, used when no teacher_model is passed."
        },
    )
    teacher_model_init_kwargs: dict[str, Any] | str | None = field(
        default=None,
        metadata={
            "help": "Keyword arguments for AutoModelForCausalLM.from_pretrained of the teacher, as a dict or a JSON "
            'string, e.g. {"dtype": "bfloat16"}. The dtype is also applied to a teacher passed as a model.'
        },
    )
    kd_weight: float = field(
        default=0.75,
        metadata={
            "help": "omega: weight of the KD term during stage 1; the loss is (1-omega)*CE + omega*KD. In [0, 1]. "
            "Default 0.75 from the CPU-scale sweep in benchmarks/RESULTS.md (0.25/0.5/0.75/0.9 x tau 1/2)."
        },
    )
    kd_temperature: float = field(
        default=1.0,
        metadata={
            "help": "tau: softmax temperature of both models in the KD term (the term is scaled by tau^2). > 0."
        },
    )
    kd_divergence: str = field(
        default="forward_kl",
        metadata={
            "help": "KD divergence: forward_kl (KL(teacher||student), same gradient as cross-entropy to the "
            "teacher distribution), reverse_kl, or jsd (see kd_jsd_beta).",
            "choices": list(DIVERGENCES),
        },
    )
    kd_jsd_beta: float = field(
        default=0.5,
        metadata={
            "help": "beta of the generalised JSD (0 = forward KL, 1 = reverse KL, 0.5 = symmetric). In [0, 1]."
        },
    )
    kd_steps: float = field(
        default=0.2,
        metadata={
            "help": "n_KD: number of optimizer steps with KD (an integer), or a fraction in (0, 1) of the run's total "
            "optimizer steps (max_steps, or what the epochs amount to). 0 disables KD. With kd_schedule=auto "
            "it is the upper bound: KD ends by this step whatever the losses say."
        },
    )
    kd_schedule: str = field(
        default="step",
        metadata={
            "help": "How omega goes to 0: step (omega until n_KD, then 0), linear (linear decay from kd_decay_start "
            "to n_KD), linear_ratio (the ratio omega/(1-omega) decays linearly over the same window), auto "
            "(n_KD decided from the training: omega decays over kd_auto_decay_steps once the student's "
            "cross-entropy on the training batches is within kd_auto_margin of the teacher's; see docs/salt.md).",
            "choices": list(SCHEDULES),
        },
    )
    kd_auto_margin: float = field(
        default=0.0,
        metadata={
            "help": "kd_schedule=auto: leave KD once the smoothed (student CE - teacher CE) on the training batches "
            "is <= this many nats. 0 = when the student has caught up with the teacher; > 0 leaves earlier."
        },
    )
    kd_auto_smoothing: float = field(
        default=0.5,
        metadata={
            "help": "kd_schedule=auto: coefficient of the moving average of that gap over logging windows, in "
            "[0, 1) (0 = judge each window alone). The decision is made at logging steps (see logging_steps)."
        },
    )
    kd_auto_decay_steps: float = field(
        default=0.1,
        metadata={
            "help": "kd_schedule=auto: optimizer steps over which omega decays linearly to 0 after the switch (an "
            "integer, or a fraction in (0, 1) of max_steps). 0 = drop omega at once."
        },
    )
    kd_decay_start: float | None = field(
        default=None,
        metadata={
            "help": "Step where the linear and linear_ratio decays begin (an integer, or a fraction of n_KD in "
            "[0, 1)). Default: 0, i.e. decay over the whole KD stage. Ignored by the step schedule."
        },
    )
    kd_chunk_size: int = field(
        default=1024,
        metadata={
            "help": "Token positions per chunk of the fused loss; memory of the loss is O(chunk * vocab)."
        },
    )
    kd_loss_backend: str = field(
        default="auto",
        metadata={
            "help": "Fused loss implementation: auto (Liger on CUDA when installed and applicable, else torch), "
            "torch, or liger (needs liger-kernel).",
            "choices": list(BACKENDS),
        },
    )
    teacher_offload_after_kd: str = field(
        default="cpu",
        metadata={
            "help": "What happens to the teacher once omega is 0 for good (after n_KD): keep (stays on the device), "
            "cpu (moved to CPU memory), free (deleted).",
            "choices": list(TEACHER_OFFLOAD),
        },
    )
    kd_truncate_vocab: bool = field(
        default=False,
        metadata={
            "help": "Allow teacher and student output layers of different sizes when both cover the tokenizer "
            "(padded vocabularies): the KD and CE softmax then use only the first len(tokenizer) rows."
        },
    )
    teacher_sharding: str = field(
        default="replicate",
        metadata={
            "help": "Under DeepSpeed: replicate (a full teacher copy on every rank, no all-gathers; best for a small "
            "teacher) or shard (a ZeRO-3 teacher engine, for a teacher that does not fit).",
            "choices": list(TEACHER_SHARDING),
        },
    )

    hypercloning_lr_scale: bool = field(
        default=False,
        metadata={
            "help": "When the student is a HyperCloning clone: train each grown tensor at the learning rate times "
            "the scale the clone recorded (1/n where its entries were divided by n), so its relative step is "
            "the source's: the clone keeps its early head start, but ended worse over a full run in the payoff "
            "benchmark, so it is off by default (docs/hypercloning.md, 'Training a clone'). No effect on other "
            "models."
        },
    )
    hypercloning_lr_scale_steps: int = field(
        default=0,
        metadata={
            "help": "With hypercloning_lr_scale: raise each grown tensor's scale linearly to 1 over this many "
            "optimizer steps (hf_salt.hypercloning.ramp_lr_scales), so the clone starts at the source's relative "
            "step and then trains at the full rate (ramps of 400 and 800 steps still reached the payoff benchmark's "
            "target later than one learning rate). 0 keeps the scales for the whole run."
        },
    )

    def __post_init__(self) -> None:
        check_field_types(self, SALTConfig)
        if self.max_steps == 0:
            raise ValueError(
                "max_steps=0 trains nothing: give a positive step count, or -1 to train by epochs."
            )
        self.check_sft_data()  # dataset_text_field, max_length, packing, ...: how raw TRL-format datasets are prepared
        if isinstance(self.teacher_model_init_kwargs, str):
            try:
                self.teacher_model_init_kwargs = json.loads(self.teacher_model_init_kwargs)
            except json.JSONDecodeError as err:
                raise ValueError(
                    f"teacher_model_init_kwargs must be a JSON object string, got {self.teacher_model_init_kwargs!r}: {err}"
                ) from err
        if self.teacher_model_init_kwargs is not None and not isinstance(
            self.teacher_model_init_kwargs, dict
        ):
            raise ValueError("teacher_model_init_kwargs must be a dict (or a JSON object string).")
        super().__post_init__()
        if not 0.0 <= self.kd_weight <= 1.0:
            raise ValueError(f"kd_weight must be in [0, 1] (the KD share of the loss), got {self.kd_weight}.")
        if not self.kd_temperature > 0:
            raise ValueError(
                f"kd_temperature must be > 0, got {self.kd_temperature}; use 1.0 for raw probabilities."
            )
        if self.kd_divergence not in DIVERGENCES:
            raise ValueError(
                f"kd_divergence must be one of {tuple(DIVERGENCES)}, got {self.kd_divergence!r}."
            )
        if not 0.0 <= self.kd_jsd_beta <= 1.0:
            raise ValueError(f"kd_jsd_beta must be in [0, 1], got {self.kd_jsd_beta}.")
        if self.hypercloning_lr_scale_steps < 0:
            raise ValueError(
                f"hypercloning_lr_scale_steps must be >= 0 (0 keeps the scales), got {self.hypercloning_lr_scale_steps}."
            )
        if self.hypercloning_lr_scale_steps and not self.hypercloning_lr_scale:
            raise ValueError(
                f"hypercloning_lr_scale_steps={self.hypercloning_lr_scale_steps} ramps the scales of "
                "hypercloning_lr_scale, which is off: set hypercloning_lr_scale=True (--hypercloning_lr_scale true)."
            )
        self.kd_steps = int_or_fraction(self.kd_steps, "kd_steps", "of max_steps")
        if self.kd_steps < 0:
            raise ValueError(
                f"kd_steps must be >= 0 (steps) or in (0, 1) (fraction of max_steps), got {self.kd_steps}."
            )
        if self.max_steps > 0 and self.teacher_model_name_or_path and self.kd_weight > 0:
            # without a teacher path (plain training, or a teacher passed to SALTTrainer as a model) n_KD is
            # checked when training starts, by KDScheduleCallback.resolve, and only if there is a teacher;
            # with kd_weight=0 KD is off whatever kd_steps says
            check_kd_steps(self.kd_steps, self.max_steps)
        if self.kd_schedule not in SCHEDULES:
            raise ValueError(f"kd_schedule must be one of {tuple(SCHEDULES)}, got {self.kd_schedule!r}.")
        if get_schedule(self.kd_schedule).decided_in_training:
            self._check_auto()
        if get_schedule(self.kd_schedule).needs_weight_below_one and self.kd_weight >= 1.0:
            raise ValueError(
                f"kd_schedule={self.kd_schedule!r} needs kd_weight < 1; lower kd_weight or use 'linear'."
            )
        if self.kd_decay_start is not None:
            self._check_within_kd_steps("kd_decay_start", "of kd_steps", "; lower it or raise kd_steps")
        if self.kd_chunk_size < 1:
            raise ValueError(f"kd_chunk_size must be >= 1, got {self.kd_chunk_size}.")
        if self.kd_loss_backend not in BACKENDS:
            raise ValueError(f"kd_loss_backend must be one of {BACKENDS}, got {self.kd_loss_backend!r}.")
        if self.teacher_offload_after_kd not in TEACHER_OFFLOAD:
            raise ValueError(
                f"teacher_offload_after_kd must be one of {TEACHER_OFFLOAD}, got {self.teacher_offload_after_kd!r}."
            )
        if self.teacher_sharding not in TEACHER_SHARDING:
            raise ValueError(
                f"teacher_sharding must be one of {TEACHER_SHARDING}, got {self.teacher_sharding!r}."
            )

    def kd_settings_changed(self) -> list[str]:
        """The SALT fields (KD and teacher settings) whose values differ from their defaults: a run without a
        teacher uses none of them, so the command line names them in a warning instead of ignoring them."""
        changed = []
        for f in fields(SALTConfig):
            if f.name in _BASE_FIELDS or f.default is MISSING:
                continue
            if getattr(self, f.name) != f.default:
                changed.append(f.name)
        return changed

    def _check_auto(self) -> None:
        """kd_schedule='auto' needs a cap, a KD weight, and logging steps to judge at."""
        if self.kd_steps == 0 or self.kd_weight == 0.0:
            raise ValueError(
                "kd_schedule='auto' needs kd_steps > 0 (the upper bound on n_KD) and kd_weight > 0; "
                "set them, or use kd_schedule='step' with kd_steps=0 to train without KD."
            )
        if self.kd_decay_start is not None:
            raise ValueError(
                "kd_decay_start does not apply to kd_schedule='auto' (the decay starts when the student catches "
                "up with the teacher); drop it and set kd_auto_decay_steps for the decay's length."
            )
        if self.logging_strategy != IntervalStrategy.STEPS:
            raise ValueError(
                "kd_schedule='auto' judges the losses at logging steps; set logging_strategy='steps' "
                f"(got {self.logging_strategy.value!r}) and a logging_steps a few times smaller than kd_steps."
            )
        if not math.isfinite(self.kd_auto_margin):
            raise ValueError(f"kd_auto_margin must be a finite number of nats, got {self.kd_auto_margin}.")
        if not 0.0 <= self.kd_auto_smoothing < 1.0:
            raise ValueError(f"kd_auto_smoothing must be in [0, 1), got {self.kd_auto_smoothing}.")
        self._check_within_kd_steps(
            "kd_auto_decay_steps",
            "of max_steps",
            ", the cap that KD ends by; shorten the decay or raise kd_steps",
        )

    def _check_within_kd_steps(self, name: str, of: str, fix: str) -> None:
        """Field ``name``: a step count or a fraction (``of`` what), and at most kd_steps when both are counts."""
        value = int_or_fraction(getattr(self, name), name, of, allow_zero=True)
        if value < 0:
            raise ValueError(f"{name} must be >= 0, got {value}.")
        if isinstance(self.kd_steps, int) and isinstance(value, int) and value > self.kd_steps:
            raise ValueError(f"{name} ({value}) must be <= kd_steps ({self.kd_steps}){fix}.")
        setattr(self, name, value)


# fields of the bases (TrainingArguments, SFT data options): not SALT settings
_BASE_FIELDS = frozenset(f.name for f in fields(TrainingArguments)) | frozenset(
    f.name for f in fields(SFTDataArguments)
)

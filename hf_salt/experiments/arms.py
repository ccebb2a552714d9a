"""The arms of an experiment: a registry of named ways to initialise and train the same student.

An arm is an :class:`Arm`: a name, a ``build(ctx) -> ArmSetup`` function and what it needs. Add one with::

    @register_arm("salt-cosine", description="SALT with my schedule", depends_on=KD_FIELDS)
    def _salt_cosine(ctx: ArmContext) -> ArmSetup:
        return ArmSetup(ctx.fresh_student(), salt=ctx.salt_fields(kd_schedule=my_schedule))

and run it with ``hf-salt demo --arms salt-cosine`` or ``hf-salt benchmark --arms salt-cosine``: the engine
(:mod:`hf_salt.experiments.engine`) gives every arm the same data order, optimizer, schedule and step budget.
"""

from __future__ import annotations

import importlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hf_salt.salt.schedules import steps_of

# the config fields a run's result depends on beyond the shared ones, by arm family (see Arm.depends_on)
KD_FIELDS = ("kd_weight", "kd_temperature", "kd_steps", "kd_decay_start")
# salt-auto: kd_steps is its cap, as in SALTConfig
AUTO_FIELDS = ("kd_weight", "kd_temperature", "kd_steps", "kd_auto_margin", "kd_auto_decay_steps")
HYPERCLONING_FIELDS = (
    "hypercloning_snr_db", "hc_learning_rate", "hc_warmup_steps", "hc_lr_scale", "hc_lr_scale_steps",
)  # fmt: skip
# the clone's optimizer schedule without the growth: what the no-growth control depends on
CONTINUE_FIELDS = ("hc_learning_rate", "hc_warmup_steps")


@dataclass
class ArmSetup:
    """What an arm's ``build`` returns: the student and how to train it.

    ``salt``: SALTConfig fields (the run uses SALTTrainer with the trained teacher) or None (plain
    ``transformers.Trainer``). ``offline_teacher_s``: teacher work done before training (SALT_DS scoring), charged
    to the arm's wall-clock. ``step_kind``: which model's step cost prices the run's plain steps.
    """

    model: Any
    salt: dict[str, Any] | None = None
    trainer_kwargs: dict[str, Any] = field(default_factory=dict)
    offline_teacher_s: float = 0.0
    trainer_cls: type | None = None  # None: SALTTrainer when ``salt`` is set, else transformers.Trainer
    step_kind: str = "student"  # whose step cost the run's plain steps have: "student" or "teacher"


@dataclass
class ArmContext:
    """What arm builders may use: the config, the tokenizer, this seed's training rows in reading order, the
    validation blocks and the trained teacher."""

    config: Any  # ExperimentConfig or a subclass
    tokenizer: Any
    train: Any
    validation: Any
    teacher: Any
    seed: int

    def fresh_student(self) -> Any:
        from hf_salt.zoo import build_model

        return build_model(self.config.student_preset, vocab_size=len(self.tokenizer), seed=self.seed)

    def clone_teacher(self) -> Any:
        from hf_salt.hypercloning import clone

        return clone(self.teacher, width_multiplier=2, snr_db=self.config.hypercloning_snr_db)

    def salt_fields(self, **overrides: Any) -> dict[str, Any]:
        """SALTConfig fields from the experiment's KD settings (step schedule unless overridden)."""
        c = self.config
        fields: dict[str, Any] = dict(
            kd_weight=c.kd_weight,
            kd_temperature=c.kd_temperature,
            kd_steps=c.resolved_kd_steps,
            kd_schedule="step",
            teacher_offload_after_kd="cpu",
        )
        fields.update(overrides)
        if c.kd_decay_start is not None and fields["kd_schedule"] in ("linear", "linear_ratio"):
            fields.setdefault("kd_decay_start", c.kd_decay_start)
        return fields


@dataclass(frozen=True)
class Arm:
    """A registered arm.

    ``depends_on``: config fields the arm's result depends on beyond the shared data/optimizer ones (a saved
    benchmark run is reused only if they match). ``grown``: the student starts from the teacher (HyperCloning), so
    ``hc_learning_rate`` / ``hc_warmup_steps`` apply. ``default``: part of the ``default`` arm set.
    """

    name: str
    build: Callable[[ArmContext], ArmSetup]
    description: str = ""
    requires: tuple[str, ...] = ()
    uses_teacher: bool = True
    grown: bool = False
    default: bool = False
    depends_on: tuple[str, ...] = ()

    def available(self) -> bool:
        for mod in self.requires:
            try:
                importlib.import_module(mod)
            except ImportError:
                return False
        return True


ARMS: dict[str, Arm] = {}


def register_arm(
    name: str,
    *,
    description: str = "",
    requires: tuple[str, ...] = (),
    uses_teacher: bool = True,
    grown: bool = False,
    default: bool = False,
    depends_on: tuple[str, ...] = (),
) -> Callable[[Callable[[ArmContext], ArmSetup]], Callable[[ArmContext], ArmSetup]]:
    """Decorator: ``@register_arm("my-arm")`` on ``def build(ctx: ArmContext) -> ArmSetup``.

    Arms run in registration order; the fields of :class:`Arm` say what the arm needs.
    """

    def deco(fn: Callable[[ArmContext], ArmSetup]) -> Callable[[ArmContext], ArmSetup]:
        if name in ("default", "all"):
            raise ValueError(f"{name!r} names a set of arms; pick another name.")
        ARMS[name] = Arm(
            name, fn, description, tuple(requires), uses_teacher, grown, default, tuple(depends_on)
        )
        return fn

    return deco


def resolve_arms(arms: list[str]) -> list[str]:
    """Arm names in registration order, the baseline first; 'default' = the default arms whose modules import,
    'all' = every registered arm whose modules import. Unknown names are an error."""
    unknown = [a for a in arms if a not in ARMS and a not in ("default", "all")]
    if unknown:
        raise ValueError(f"Unknown arm(s) {unknown}; known: {', '.join(ARMS)} (or 'default', 'all').")
    wanted = {"baseline"}  # every fraction is relative to it
    for a in arms:
        if a == "default":
            wanted |= {n for n, arm in ARMS.items() if arm.default and arm.available()}
        elif a == "all":
            wanted |= {n for n, arm in ARMS.items() if arm.available()}
        else:
            wanted.add(a)
    return [n for n in ARMS if n in wanted]


# --------------------------------------------------------------------------------------------------- the arms
@register_arm(
    "baseline",
    uses_teacher=False,
    default=True,
    description="plain next-token training (transformers.Trainer)",
)
def _baseline(ctx: ArmContext) -> ArmSetup:
    return ArmSetup(ctx.fresh_student())


def _salt_arm(schedule: str) -> Callable[[ArmContext], ArmSetup]:
    def build(ctx: ArmContext) -> ArmSetup:
        return ArmSetup(ctx.fresh_student(), salt=ctx.salt_fields(kd_schedule=schedule))

    return build


register_arm(
    "salt", default=True, depends_on=KD_FIELDS, description="KD from the teacher for n_KD steps, then plain"
)(_salt_arm("step"))
register_arm("salt-linear", depends_on=KD_FIELDS, description="SALT with linear decay of omega to 0 at n_KD")(
    _salt_arm("linear")
)
register_arm(
    "salt-linear_ratio", depends_on=KD_FIELDS, description="SALT with linear decay of omega/(1-omega)"
)(_salt_arm("linear_ratio"))


@register_arm(
    "salt-auto",
    depends_on=AUTO_FIELDS,
    description="SALT with kd_schedule=auto: n_KD decided from the training (student CE vs teacher CE)",
)
def _salt_auto(ctx: ArmContext) -> ArmSetup:
    return ArmSetup(ctx.fresh_student(), salt=auto_salt_fields(ctx))


def auto_salt_fields(ctx: ArmContext) -> dict[str, Any]:
    """salt-auto's SALTConfig fields: ``kd_steps`` (n_KD) is the cap, as in SALTConfig; the decay window in steps,
    so SALTConfig compares it with the cap when the config is checked, not when training starts."""
    c = ctx.config
    return ctx.salt_fields(
        kd_schedule="auto",
        kd_auto_margin=c.kd_auto_margin,
        kd_auto_decay_steps=steps_of(
            c.kd_auto_decay_steps, c.max_steps, "kd_auto_decay_steps", "of max_steps"
        ),
    )


@register_arm("rkd", depends_on=KD_FIELDS, description="KD for the whole run (the paper's RKD strawman)")
def _rkd(ctx: ArmContext) -> ArmSetup:
    fields = ctx.salt_fields(kd_steps=ctx.config.max_steps, teacher_offload_after_kd="keep")
    return ArmSetup(ctx.fresh_student(), salt=fields)


@register_arm(
    "salt_ds",
    requires=("hf_salt.salt_ds",),
    default=True,
    depends_on=(*KD_FIELDS, "salt_ds_pool"),
    description="SALT whose KD stage reads teacher-selected blocks, then the baseline's rows",
)
def _salt_ds(ctx: ArmContext) -> ArmSetup:
    """Candidates: the first ``salt_ds_pool`` KD budgets of this seed's order; the top-scored budget is the KD
    stage (shuffled), then rows [budget, end) of the order: from step n_KD on, exactly the baseline's rows."""
    from hf_salt.salt_ds import kd_budget, score_dataset, select
    from hf_salt.salt_ds.scoring import NUM_LEARNABLE_COLUMN

    c = ctx.config
    budget = kd_budget(c.resolved_kd_steps, c.global_batch_size)
    start = time.perf_counter()
    pool = ctx.train.select(range(min(len(ctx.train), c.salt_ds_pool * budget)))
    scored = score_dataset(
        pool,
        ctx.teacher,
        top_k=10,
        batch_size=c.eval_batch_size,
        cache_dir=str(Path(c.output_dir) / "salt_ds_cache"),
        load_from_cache_file=False,  # the scoring time is part of the arm's cost
    )
    eligible = int(np.count_nonzero(np.asarray(scored[NUM_LEARNABLE_COLUMN]) > 0))
    if eligible == 0:
        raise ValueError(
            "SALT_DS: no candidate block has a token in the teacher's top-10; is the teacher trained?"
        )
    selected = select(scored, n=min(budget, eligible))  # a smaller pool is repeated by the sampler
    scoring_s = time.perf_counter() - start

    # "sequential": positions from step n_KD on read rows [n_KD x global batch, end) of this seed's order, the
    # rows the baseline reads at those steps (the engine's order already spans the whole run)
    fields = ctx.salt_fields(train_sampling_strategy="sequential")
    return ArmSetup(
        ctx.fresh_student(),
        salt=fields,
        trainer_kwargs={"salt_ds_pool": selected},
        offline_teacher_s=scoring_s,
    )


@register_arm(
    "hypercloning",
    requires=("hf_salt.hypercloning",),
    grown=True,
    default=True,
    depends_on=HYPERCLONING_FIELDS,
    description="student initialised as a 2x clone of the teacher",
)
def _hypercloning(ctx: ArmContext) -> ArmSetup:
    return ArmSetup(ctx.clone_teacher())


@register_arm(
    "teacher-continue",
    grown=True,
    depends_on=CONTINUE_FIELDS,
    description="the no-growth control: the teacher itself trained on, with the clone's schedule and data",
)
def _teacher_continue(ctx: ArmContext) -> ArmSetup:
    import copy

    return ArmSetup(copy.deepcopy(ctx.teacher).train().requires_grad_(True), step_kind="teacher")


@register_arm(
    "hypercloning+salt",
    requires=("hf_salt.hypercloning",),
    grown=True,
    default=True,
    depends_on=(*KD_FIELDS, *HYPERCLONING_FIELDS),
    description="HyperCloning init, then SALT",
)
def _hypercloning_salt(ctx: ArmContext) -> ArmSetup:
    return ArmSetup(ctx.clone_teacher(), salt=ctx.salt_fields())

"""The engine behind `hf-salt demo` (and the reproduction benchmark): one teacher, several student arms.

Every arm trains the same student preset for the same number of steps on the same packed blocks, in the same
order (same seed), so validation curves are comparable. Arms are pluggable: :func:`register_arm` adds one.

Reported per arm: the validation-loss curve, wall-clock of the student's training steps, the teacher's cost in a
separate column (teacher pre-training, plus SALT_DS scoring), the final validation perplexity, and "steps to
baseline": the first step at which the arm's validation loss reaches the baseline's final validation loss,
linearly interpolated between the two evaluations that bracket the crossing, as a fraction of the baseline's
steps (None if never reached).
"""

from __future__ import annotations

import importlib
import json
import math
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm
from transformers import Trainer, TrainerCallback, TrainingArguments, set_seed
from transformers.trainer_callback import ProgressCallback

from hf_salt.salt.config import SALTConfig
from hf_salt.salt.trainer import SALTTrainer


@dataclass
class ExperimentConfig:
    """What to train and how; the demo and the benchmark fill it from the command line."""

    corpus: str = field(
        default="wikitext-2",
        metadata={"help": "Corpus: embedded name (wikitext-2, tinyshakespeare) or a local path."},
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
    block_size: int = field(default=128, metadata={"help": "Tokens per training block."})
    max_steps: int = field(default=200, metadata={"help": "Optimizer steps of every student arm."})
    teacher_steps: int = field(default=200, metadata={"help": "Optimizer steps to pre-train the teacher."})
    batch_size: int = field(default=8, metadata={"help": "Blocks per optimizer step (per device)."})
    learning_rate: float = field(default=3e-3, metadata={"help": "Peak learning rate (students)."})
    teacher_learning_rate: float = field(
        default=3e-3, metadata={"help": "Peak learning rate of the teacher."}
    )
    warmup_steps: int = field(default=20, metadata={"help": "Linear warm-up steps (then cosine decay)."})
    eval_every: int = field(default=25, metadata={"help": "Evaluate every this many steps."})
    eval_blocks: int = field(
        default=64, metadata={"help": "Validation blocks used for every evaluation (0 = all)."}
    )
    seed: int = field(
        default=0, metadata={"help": "Seed of model init and data order (the same for all arms)."}
    )
    output_dir: str = field(
        default="hf-salt-demo", metadata={"help": "Where models, results.json and the plot go."}
    )
    arms: list[str] = field(
        default_factory=lambda: ["default"],
        metadata={
            "help": "Arms to train; 'default' = baseline, salt and every optional arm whose module imports."
        },
    )
    kd_weight: float = field(
        default=0.75, metadata={"help": "SALT omega during the KD stage (SALTConfig default)."}
    )
    kd_temperature: float = field(default=1.0, metadata={"help": "SALT tau."})
    kd_fraction: float = field(default=0.25, metadata={"help": "n_KD as a fraction of max_steps, in (0, 1)."})
    salt_ds_pool: int = field(
        default=4,
        metadata={"help": "SALT_DS scores this many times the KD budget (n_KD x batch) of training blocks."},
    )
    hypercloning_snr_db: float | None = field(
        default=None, metadata={"help": "Noise (SNR, dB) added when cloning; None = exact."}
    )
    bf16: bool = field(default=False, metadata={"help": "bf16 mixed precision (GPU)."})
    use_cpu: bool = field(default=False, metadata={"help": "Force CPU even when a GPU is present."})

    def __post_init__(self) -> None:
        if self.max_steps < 1 or self.teacher_steps < 1:
            raise ValueError("max_steps and teacher_steps must be >= 1.")
        if not 0.0 < self.kd_fraction < 1.0:
            raise ValueError(f"kd_fraction must be in (0, 1), got {self.kd_fraction}.")
        if self.eval_every < 1:
            raise ValueError("eval_every must be >= 1.")
        if isinstance(self.arms, str):
            self.arms = [a for a in self.arms.split(",") if a]
        unknown = [a for a in self.arms if a not in ARMS and a not in ("default", "all")]
        if unknown:
            raise ValueError(f"Unknown arm(s) {unknown}; known: {sorted(ARMS)} (or 'default', 'all').")

    @property
    def kd_steps(self) -> int:
        return max(1, int(round(self.kd_fraction * self.max_steps)))


@dataclass
class ArmSpec:
    """An arm: a builder returning (student, trainer class, extra SALTConfig fields, trainer kwargs, teacher cost)."""

    name: str
    build: Callable[[Context], tuple[Any, type[Trainer], dict[str, Any], dict[str, Any], float]]
    requires: tuple[str, ...] = ()
    uses_teacher: bool = True
    description: str = ""

    def available(self) -> bool:
        for mod in self.requires:
            try:
                importlib.import_module(mod)
            except ImportError:
                return False
        return True


ARMS: dict[str, ArmSpec] = {}


def register_arm(
    name: str, *, requires: tuple[str, ...] = (), uses_teacher: bool = True, description: str = ""
):
    """Decorator: ``@register_arm("my-arm")`` on ``def build(ctx) -> (student, trainer_cls, cfg, kwargs, cost)``."""

    def deco(fn):
        ARMS[name] = ArmSpec(name, fn, requires, uses_teacher, description)
        return fn

    return deco


@dataclass
class Context:
    """What arms may use: the config, tokenizer, packed data, the trained teacher."""

    config: ExperimentConfig
    tokenizer: Any
    train: Any
    validation: Any
    teacher: Any
    teacher_cost_s: float

    def fresh_student(self):
        from hf_salt.zoo import build_model

        return build_model(self.config.student_preset, vocab_size=len(self.tokenizer), seed=self.config.seed)

    def salt_fields(self, **overrides: Any) -> dict[str, Any]:
        c = self.config
        fields = dict(
            kd_weight=c.kd_weight,
            kd_temperature=c.kd_temperature,
            kd_steps=c.kd_steps,
            kd_schedule="step",
            teacher_offload_after_kd="cpu",
        )
        fields.update(overrides)
        return fields


# --------------------------------------------------------------------------------------------------- the arms
@register_arm("baseline", uses_teacher=False, description="plain next-token training (transformers.Trainer)")
def _baseline(ctx: Context):
    return ctx.fresh_student(), Trainer, {}, {}, 0.0


def _salt_arm(schedule: str):
    def build(ctx: Context):
        from hf_salt.salt.trainer import SALTTrainer

        return ctx.fresh_student(), SALTTrainer, ctx.salt_fields(kd_schedule=schedule), {}, ctx.teacher_cost_s

    return build


register_arm("salt", description="KD from the teacher for n_KD steps (step schedule), then plain")(
    _salt_arm("step")
)
register_arm("salt-linear", description="SALT with linear decay of omega to 0 at n_KD")(_salt_arm("linear"))
register_arm("salt-linear_ratio", description="SALT with linear decay of omega/(1-omega)")(
    _salt_arm("linear_ratio")
)


@register_arm("rkd", description="KD for the whole run (the paper's RKD strawman)")
def _rkd(ctx: Context):
    from hf_salt.salt.trainer import SALTTrainer

    fields = ctx.salt_fields(kd_steps=ctx.config.max_steps, teacher_offload_after_kd="keep")
    return ctx.fresh_student(), SALTTrainer, fields, {}, ctx.teacher_cost_s


def _clone(ctx: Context):
    from hf_salt.hypercloning import clone

    return clone(ctx.teacher, width_multiplier=2, snr_db=ctx.config.hypercloning_snr_db)


@register_arm(
    "hypercloning",
    requires=("hf_salt.hypercloning",),
    description="student initialised as a 2x clone of the teacher",
)
def _hypercloning(ctx: Context):
    return _clone(ctx), Trainer, {}, {}, ctx.teacher_cost_s


@register_arm(
    "hypercloning+salt", requires=("hf_salt.hypercloning",), description="HyperCloning init, then SALT"
)
def _hypercloning_salt(ctx: Context):
    from hf_salt.salt.trainer import SALTTrainer

    return _clone(ctx), SALTTrainer, ctx.salt_fields(), {}, ctx.teacher_cost_s


@register_arm(
    "salt_ds", requires=("hf_salt.salt_ds",), description="SALT on teacher-selected blocks during KD"
)
def _salt_ds(ctx: Context):
    from hf_salt.salt.trainer import SALTTrainer
    from hf_salt.salt_ds import SALTDSCollator, score_dataset, select

    c = ctx.config
    start = time.perf_counter()
    budget = c.kd_steps * c.batch_size
    pool = ctx.train.shuffle(seed=c.seed).select(range(min(len(ctx.train), c.salt_ds_pool * budget)))
    scored = score_dataset(pool, ctx.teacher, top_k=10)
    selected = select(scored, n=budget)
    scoring_s = time.perf_counter() - start
    fields = ctx.salt_fields()
    fields["remove_unused_columns"] = False
    return (
        ctx.fresh_student(),
        SALTTrainer,
        fields,
        {"data_collator": SALTDSCollator(selected)},
        ctx.teacher_cost_s + scoring_s,
    )


DEFAULT_ARMS = ("baseline", "salt", "hypercloning", "hypercloning+salt", "salt_ds")


def resolve_arms(arms: list[str]) -> list[str]:
    """'default': baseline, salt and the optional arms whose modules import; 'all': every registered arm."""
    out: list[str] = []
    for a in arms:
        names = DEFAULT_ARMS if a == "default" else tuple(ARMS) if a == "all" else (a,)
        for n in names:
            if n not in out and (a == n or ARMS[n].available()):
                out.append(n)
    if "baseline" not in out:
        out.insert(0, "baseline")  # steps-to-baseline needs it
    return out


# --------------------------------------------------------------------------------------------------- running
class _StepTimer(TrainerCallback):
    """Wall-clock of the optimizer steps only (evaluation and checkpointing excluded)."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self._t0 = 0.0

    def on_step_begin(self, args, state, control, **kwargs):
        self._t0 = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self.seconds += time.perf_counter() - self._t0


class QuietProgress(ProgressCallback):
    """One progress bar per run with the latest losses as its postfix, instead of a printed dict per log.

    The demo logs every ``eval_every / 5`` steps (the KD-weight curve needs them) and evaluates every
    ``eval_every``; printing each of those, plus a bar per evaluation, buries the table the user is waiting for.
    """

    _SHOWN = ("loss", "eval_loss", "kd_weight")

    def __init__(self, desc: str = "") -> None:
        super().__init__()
        self.desc = desc
        self.postfix: dict[str, str] = {}

    def on_train_begin(self, args, state, control, **kwargs):
        super().on_train_begin(args, state, control, **kwargs)
        if self.training_bar is not None and self.desc:
            self.training_bar.set_description(self.desc)

    def on_prediction_step(self, args, state, control, eval_dataloader=None, **kwargs):
        pass  # no bar per evaluation: the result shows up in the training bar's postfix

    def on_log(self, args, state, control, logs=None, **kwargs):
        for key in self._SHOWN:
            if logs and isinstance(logs.get(key), (int, float)):
                self.postfix[key] = f"{logs[key]:.4g}"
        if state.is_world_process_zero and self.training_bar is not None:
            self.training_bar.set_postfix(self.postfix, refresh=False)


def quiet_progress(trainer: Trainer, desc: str = "") -> Trainer:
    """Swap the Trainer's progress bar for :class:`QuietProgress` (a no-op with ``disable_tqdm``: no bar then)."""
    if trainer.args.disable_tqdm:
        return trainer
    trainer.remove_callback(ProgressCallback)
    trainer.add_callback(QuietProgress(desc))
    return trainer


def _training_args(
    cls: type[TrainingArguments], config: ExperimentConfig, out: Path, steps: int, lr: float, **extra
):
    return cls(
        output_dir=str(out),
        max_steps=steps,
        per_device_train_batch_size=config.batch_size,
        per_device_eval_batch_size=max(config.batch_size, 16),
        learning_rate=lr,
        lr_scheduler_type="cosine",
        warmup_steps=min(config.warmup_steps, steps // 10),
        weight_decay=0.1,
        adam_beta2=0.95,
        eval_strategy="steps",
        eval_steps=config.eval_every,
        logging_steps=max(1, config.eval_every // 5),
        save_strategy="no",
        report_to="none",
        seed=config.seed,
        data_seed=config.seed,
        bf16=config.bf16,
        use_cpu=config.use_cpu,
        dataloader_num_workers=0,
        **extra,
    )


def _curve(trainer: Trainer, initial: float) -> dict[str, list]:
    steps, losses = [0], [initial]
    kd_steps, kd = [], []
    for rec in trainer.state.log_history:
        if "eval_loss" in rec and rec["step"] != steps[-1]:  # the final evaluate() repeats the last step
            steps.append(rec["step"])
            losses.append(rec["eval_loss"])
        if "kd_weight" in rec:
            kd_steps.append(rec["step"])
            kd.append(rec["kd_weight"])
    return {"steps": steps, "eval_loss": losses, "kd_steps": kd_steps, "kd_weight": kd}


def steps_to_reach(steps: list[int], losses: list[float], target: float) -> float | None:
    """First step at which the curve reaches ``target``, interpolated linearly between evaluations."""
    for i, (s, v) in enumerate(zip(steps, losses)):
        if v <= target:
            if i == 0:
                return float(s)
            s0, v0 = steps[i - 1], losses[i - 1]
            return s0 + (v0 - target) / (v0 - v) * (s - s0) if v0 != v else float(s)
    return None


def run_experiment(config: ExperimentConfig) -> dict[str, Any]:
    """Train the teacher, then every arm; write models, results.json and the plot; return the results."""
    from hf_salt.data import load_corpus, load_tokenizer, pack_dataset
    from hf_salt.zoo import build_model

    out = Path(config.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    set_seed(config.seed)
    tokenizer = load_tokenizer(config.tokenizer)
    corpus = load_corpus(config.corpus)
    train = pack_dataset(corpus["train"], tokenizer, config.block_size)
    validation = pack_dataset(corpus["validation"], tokenizer, config.block_size)
    if config.eval_blocks and len(validation) > config.eval_blocks:
        validation = validation.select(range(config.eval_blocks))
    arms = resolve_arms(config.arms)
    results: dict[str, Any] = {"config": asdict(config), "arms": {}, "device": _device_name(config)}

    # teacher
    teacher = build_model(config.teacher_preset, vocab_size=len(tokenizer), seed=config.seed)
    targs = _training_args(
        TrainingArguments,
        config,
        out / "_runs" / "teacher",
        config.teacher_steps,
        config.teacher_learning_rate,
    )
    timer = _StepTimer()
    trainer = Trainer(
        model=teacher, args=targs, train_dataset=train, eval_dataset=validation, callbacks=[timer]
    )
    quiet_progress(trainer, f"teacher ({config.teacher_preset})")
    initial = trainer.evaluate()["eval_loss"]
    trainer.train()
    final = trainer.evaluate()["eval_loss"]
    trainer.save_model(str(out / "teacher"))
    tokenizer.save_pretrained(str(out / "teacher"))
    results["teacher"] = {
        "preset": config.teacher_preset,
        "steps": config.teacher_steps,
        "train_time_s": timer.seconds,
        "final_eval_loss": final,
        "final_ppl": math.exp(final),
        "curve": _curve(trainer, initial),
        "path": str(out / "teacher"),
    }
    teacher = trainer.model.eval()
    ctx = Context(config, tokenizer, train, validation, teacher, timer.seconds)

    for name in tqdm(arms, desc="arms", unit="arm"):
        set_seed(config.seed)
        student, trainer_cls, salt_fields, kwargs, teacher_cost = ARMS[name].build(ctx)
        uses_salt = trainer_cls is not Trainer
        args_cls = SALTConfig if uses_salt else TrainingArguments
        if uses_salt:  # recorded in the model card; the teacher itself is passed in memory below
            salt_fields = {**salt_fields, "teacher_model_name_or_path": results["teacher"]["path"]}
        args = _training_args(
            args_cls, config, out / "_runs" / name, config.max_steps, config.learning_rate, **salt_fields
        )
        timer = _StepTimer()
        if uses_salt:
            kwargs = {**kwargs, "teacher_model": teacher}
        trainer = trainer_cls(
            model=student,
            args=args,
            train_dataset=train,
            eval_dataset=validation,
            callbacks=[timer],
            **kwargs,
        )
        quiet_progress(trainer, name)
        initial = trainer.evaluate()["eval_loss"]
        trainer.train()
        final = trainer.evaluate()["eval_loss"]
        path = out / name.replace("+", "_plus_")
        trainer.save_model(str(path))
        tokenizer.save_pretrained(str(path))
        _write_card(trainer, name, path)
        results["arms"][name] = {
            "description": ARMS[name].description,
            "steps": config.max_steps,
            "kd_steps": config.kd_steps if uses_salt else 0,
            "train_time_s": timer.seconds,
            "teacher_cost_s": teacher_cost if ARMS[name].uses_teacher else 0.0,
            "final_eval_loss": final,
            "final_ppl": math.exp(final),
            "curve": _curve(trainer, initial),
            "path": str(path),
        }
        del trainer, student

    base = results["arms"]["baseline"]
    for rec in results["arms"].values():
        reached = steps_to_reach(rec["curve"]["steps"], rec["curve"]["eval_loss"], base["final_eval_loss"])
        rec["steps_to_baseline"] = reached
        rec["steps_to_baseline_fraction"] = None if reached is None else reached / base["steps"]
        total = rec["train_time_s"] + rec["teacher_cost_s"]
        rec["total_time_s"] = total
    results["plot"] = str(plot_results(results, out / "curves.png"))
    (out / "results.json").write_text(json.dumps(results, indent=2))
    results["results_json"] = str(out / "results.json")
    return results


def _write_card(trainer: Trainer, arm: str, path: Path) -> None:
    """Give every hf-salt arm's model folder its model card (method, teacher, schedule, grown-from, metrics)."""
    if isinstance(trainer, SALTTrainer):
        trainer.create_model_card(model_name=f"hf-salt-demo-{arm}")
    elif getattr(trainer.model.config, "hypercloning", None):
        from hf_salt.model_card import write_model_card

        write_model_card(trainer, method="hypercloning", method_info={}, model_name=f"hf-salt-demo-{arm}")
    else:
        return
    card = Path(trainer.args.output_dir) / "README.md"
    if card.exists():
        shutil.copy(card, path / "README.md")


def _device_name(config: ExperimentConfig) -> str:
    if torch.cuda.is_available() and not config.use_cpu:
        return torch.cuda.get_device_name(0)
    return f"cpu ({os.cpu_count()} cores, {torch.get_num_threads()} threads)"


def plot_results(results: dict[str, Any], path: Path) -> Path:
    """Validation-loss curves of teacher and arms, and the kd_weight curve of each SALT arm."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(8, 7), sharex=True, height_ratios=[3, 1])
    t = results["teacher"]
    ax1.axhline(t["final_eval_loss"], color="gray", ls=":", label=f"teacher final ({t['preset']})")
    base = results["arms"]["baseline"]["final_eval_loss"]
    ax1.axhline(base, color="black", ls="--", lw=0.8, label="baseline final")
    for name, rec in results["arms"].items():
        c = rec["curve"]
        ax1.plot(c["steps"], c["eval_loss"], marker=".", label=name)
        if c["kd_weight"]:
            ax2.plot(c["kd_steps"], c["kd_weight"], label=name, drawstyle="steps-pre")
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
    rows = [("model", "val loss", "val ppl", "steps", "reach baseline", "train s", "teacher s", "total s")]
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
    return "\n".join(lines)

"""Reproduction benchmark: does SALT / SALT_DS / HyperCloning make pre-training cheaper, measured?

One config (YAML/JSON via ``--config``, plus flags) -> the teacher is trained once (or once per seed), then the
student is trained under every arm with the same data order, optimizer, LR schedule and step budget, for
several seeds. Per arm it reports the validation-loss curve, the step and the wall-clock at which the arm first
reaches the baseline's final validation loss (as fractions of the baseline's), the final validation
perplexity and the spread across seeds; it writes a markdown table, PNG plots and the "Reproduction" section
of ``benchmarks/RESULTS.md``. See ``docs/reproduction.md``.

The arms come from the engine of ``hf-salt demo`` (:mod:`hf_salt.experiments`, ``register_arm``) so the demo and
the benchmark train the same things. What this file adds around them, and why:

- **Same data order in every arm.** Each seed fixes one permutation of the packed training blocks and every
  trainer reads it in order (a ``SequentialSampler``), so arms differ only in what they are about. SALT_DS's
  KD stage reads its selected pool; from step n_KD on it reads exactly the baseline's rows for those steps.
- **Wall-clock of the optimizer steps only**, recorded at every evaluation (evaluations are not timed), so the
  crossing time can be interpolated like the crossing step. Teacher forwards during KD are inside the steps;
  offline teacher work (SALT_DS scoring) and the teacher's own training are separate columns.
- **Resumable**: each (seed, arm) run is saved as JSON when done; re-running the command skips finished runs.

Run: ``python benchmarks/reproduce.py --config benchmarks/configs/cpu.yaml`` (or ``hf-salt benchmark ...``).
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import gc
import hashlib
import json
import math
import os
import platform
import re
import shlex
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
ALL_ARMS = (
    "baseline",
    "salt",
    "salt-linear",
    "salt-linear_ratio",
    "rkd",
    "salt_ds",
    "hypercloning",
    "hypercloning+salt",
)
HYPERCLONING_ARMS = ("hypercloning", "hypercloning+salt")


# ================================================================================================ config
@dataclass
class BenchmarkConfig:
    """Everything one benchmark run needs; the YAML files under ``benchmarks/configs/`` fill it."""

    # data and models
    corpus: str = field(
        default="wikitext-2",
        metadata={
            "help": "Corpus: embedded name (wikitext-2, tinyshakespeare) or a local path (see load_corpus)."
        },
    )
    tokenizer: str | None = field(
        default=None, metadata={"help": "Tokenizer folder; default: the shipped BPE."}
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
    single_epoch: bool = field(
        default=False,
        metadata={"help": "Refuse a budget that reads a training block twice (max_steps x batch > blocks)."},
    )
    corpus_fraction: float = field(
        default=0.0,
        metadata={
            "help": "If > 0: set max_steps (and cap teacher_steps) so each run reads this fraction of one epoch "
            "of the packed corpus, capped by max_steps and rounded down to a multiple of eval_every. For corpora "
            "whose size depends on the machine (build_code_corpus.py)."
        },
    )
    # optimisation (identical for every arm)
    max_steps: int = field(default=1000, metadata={"help": "Optimizer steps of every student arm."})
    teacher_steps: int = field(
        default=1000, metadata={"help": "Optimizer steps of the teacher's pre-training."}
    )
    batch_size: int = field(default=16, metadata={"help": "Blocks per device per micro-batch."})
    gradient_accumulation_steps: int = field(
        default=1, metadata={"help": "Micro-batches per optimizer step."}
    )
    learning_rate: float = field(default=3e-3, metadata={"help": "Peak learning rate of every student arm."})
    teacher_learning_rate: float = field(
        default=3e-3, metadata={"help": "Peak learning rate of the teacher."}
    )
    warmup_steps: int = field(default=50, metadata={"help": "Linear warm-up steps, then cosine decay to 0."})
    weight_decay: float = field(default=0.1, metadata={"help": "AdamW weight decay."})
    adam_beta2: float = field(default=0.95, metadata={"help": "AdamW beta2."})
    max_grad_norm: float = field(default=1.0, metadata={"help": "Gradient clipping norm."})
    # evaluation
    eval_every: int = field(default=50, metadata={"help": "Evaluate every this many optimizer steps."})
    eval_blocks: int = field(
        default=256,
        metadata={"help": "Validation blocks (evenly spaced over the split) per evaluation; 0 = all."},
    )
    eval_batch_size: int = field(default=32, metadata={"help": "Blocks per evaluation forward."})
    # seeds and arms
    seeds: list[int] = field(
        default_factory=lambda: [0, 1],
        metadata={"help": "Seeds: each fixes the student init and the data order (the same for all arms)."},
    )
    teacher_seed: int = field(default=0, metadata={"help": "Seed of the teacher (init and data order)."})
    teacher_per_seed: bool = field(
        default=False,
        metadata={
            "help": "Train one teacher per seed (its seed = the student's) instead of one for all seeds."
        },
    )
    arms: list[str] = field(
        default_factory=lambda: list(ALL_ARMS),
        metadata={"help": "Arms to run (baseline is always run first): " + ", ".join(ALL_ARMS) + "."},
    )
    # SALT
    kd_weight: float = field(default=0.5, metadata={"help": "omega, the KD weight during the KD stage."})
    kd_temperature: float = field(default=1.0, metadata={"help": "tau, the KD temperature."})
    kd_fraction: float = field(default=0.2, metadata={"help": "n_KD as a fraction of max_steps, in (0, 1)."})
    kd_decay_start: float | None = field(
        default=None,
        metadata={"help": "linear / linear_ratio: where the decay starts, as a fraction of n_KD (None = 0)."},
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
    # execution
    bf16: bool = field(default=False, metadata={"help": "bf16 mixed precision (GPU)."})
    use_cpu: bool = field(default=False, metadata={"help": "Force CPU even when a GPU is present."})
    num_threads: int = field(default=0, metadata={"help": "torch CPU threads (0 = torch's default)."})
    disable_tqdm: bool = field(default=False, metadata={"help": "Hide the Trainer's per-step progress bars."})
    output_dir: str = field(
        default="outputs/benchmark-cpu",
        metadata={"help": "Run folder: teacher, per-run JSON (for resuming), results.json."},
    )
    resume: bool = field(default=True, metadata={"help": "Skip (seed, arm) runs whose JSON already exists."})
    report_only: bool = field(
        default=False,
        metadata={
            "help": "Train nothing: report the saved runs that match this config (missing ones are listed)."
        },
    )
    workers: int = field(
        default=1,
        metadata={
            "help": "Seeds trained in parallel, one process each (num_threads threads each); on a small CPU, "
            "2 single-thread processes beat 1 two-thread process for these small models."
        },
    )
    report: bool = field(default=True, metadata={"help": "Write results.json, the table, plots, RESULTS.md."})
    label: str = field(
        default="cpu", metadata={"help": "Name of this scale; used in file names and RESULTS.md markers."}
    )
    report_dir: str = field(
        default="benchmarks", metadata={"help": "Where the markdown table and PNG plots are written."}
    )
    results_md: str = field(
        default="benchmarks/RESULTS.md",
        metadata={"help": "RESULTS.md whose Reproduction section gets the table ('' = don't touch it)."},
    )

    def __post_init__(self) -> None:
        if isinstance(self.arms, str):
            self.arms = [a for a in re.split(r"[,\s]+", self.arms) if a]
        if isinstance(self.seeds, (int, str)):
            self.seeds = [int(s) for s in re.split(r"[,\s]+", str(self.seeds)) if s]
        unknown = [a for a in self.arms if a not in ALL_ARMS]
        if unknown:
            raise ValueError(f"Unknown arm(s) {unknown}; choose from {', '.join(ALL_ARMS)}.")
        if "baseline" not in self.arms:
            self.arms.insert(0, "baseline")  # every fraction is relative to it
        self.arms = [a for a in ALL_ARMS if a in self.arms]  # canonical order, no duplicates
        if not self.seeds:
            raise ValueError("seeds must list at least one seed, e.g. --seeds 0 1.")
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds must be distinct, got {self.seeds}.")
        for name in ("max_steps", "teacher_steps", "batch_size", "gradient_accumulation_steps", "eval_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}.")
        if self.block_size < 2:
            raise ValueError(f"block_size must be >= 2, got {self.block_size}.")
        if not 0.0 < self.kd_fraction < 1.0:
            raise ValueError(f"kd_fraction must be in (0, 1) (n_KD / max_steps), got {self.kd_fraction}.")
        if self.kd_decay_start is not None and not 0.0 <= self.kd_decay_start < 1.0:
            raise ValueError(
                f"kd_decay_start must be a fraction of n_KD in [0, 1), got {self.kd_decay_start}."
            )
        if not 0.0 <= self.kd_weight < 1.0:
            raise ValueError(f"kd_weight must be in [0, 1) (linear_ratio needs < 1), got {self.kd_weight}.")
        if self.kd_temperature <= 0:
            raise ValueError(f"kd_temperature must be > 0, got {self.kd_temperature}.")
        if self.salt_ds_pool < 1:
            raise ValueError(f"salt_ds_pool must be >= 1 (KD budgets scored), got {self.salt_ds_pool}.")
        if self.max_steps % self.eval_every:
            raise ValueError(
                f"max_steps ({self.max_steps}) must be a multiple of eval_every ({self.eval_every}) so every arm "
                "is evaluated at its last step."
            )
        if not 0.0 <= self.corpus_fraction <= 1.0:
            raise ValueError(
                f"corpus_fraction must be in [0, 1] (0 = use max_steps), got {self.corpus_fraction}."
            )
        if self.workers < 1:
            raise ValueError(f"workers must be >= 1, got {self.workers}.")
        if self.warmup_steps < 0 or (self.hc_warmup_steps is not None and self.hc_warmup_steps < 0):
            raise ValueError("warmup_steps and hc_warmup_steps must be >= 0.")

    @property
    def kd_steps(self) -> int:
        """n_KD in optimizer steps (the same rounding as hf_salt.experiments)."""
        return max(1, int(round(self.kd_fraction * self.max_steps)))

    @property
    def global_batch_size(self) -> int:
        return self.batch_size * self.gradient_accumulation_steps

    def teacher_key(self) -> str:
        """Fields that define the teacher: a saved teacher is reused only if they match."""
        keys = (
            "corpus", "tokenizer", "teacher_preset", "block_size", "max_train_blocks", "teacher_steps",
            "batch_size", "gradient_accumulation_steps", "teacher_learning_rate", "warmup_steps",
            "weight_decay", "adam_beta2", "max_grad_norm", "bf16",
        )  # fmt: skip
        return _digest({k: getattr(self, k) for k in keys})

    def run_key(self, arm: str) -> str:
        """Fields that define the run of ``arm``: a saved run is reused only if they match (the baseline does
        not depend on the KD or HyperCloning settings, so a sweep of omega reuses one baseline)."""
        skip = set(_EXECUTION_FIELDS)
        if arm in ("baseline", "hypercloning"):
            skip |= {"kd_weight", "kd_temperature", "kd_fraction", "kd_decay_start", "salt_ds_pool"}
        if arm != "salt_ds":
            skip.add("salt_ds_pool")
        if arm not in HYPERCLONING_ARMS:
            skip |= {"hypercloning_snr_db", "hc_learning_rate", "hc_warmup_steps"}
        return _digest({k: v for k, v in asdict(self).items() if k not in skip})


# fields that change how a run executes or where it reports, not what it computes
_EXECUTION_FIELDS = (
    "seeds", "arms", "num_threads", "workers", "disable_tqdm", "output_dir", "resume", "report_only", "label", "report",
    "report_dir", "results_md",
)  # fmt: skip


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


# ================================================================================================ metrics
def first_crossing(xs: Sequence[float], losses: Sequence[float], target: float) -> float | None:
    """First x at which a loss curve reaches ``target`` (loss <= target), or None if it never does.

    Linear interpolation between the two evaluations that bracket the first crossing; if the very first
    evaluation is already at or below the target, its x (the "first-eval rule": we cannot know earlier).
    ``xs`` may be steps or seconds; both use the same rule.
    """
    if len(xs) != len(losses):
        raise ValueError(f"xs and losses differ in length ({len(xs)} vs {len(losses)}).")
    for i, (x, loss) in enumerate(zip(xs, losses)):
        if loss <= target:
            if i == 0:
                return float(x)
            x0, l0 = xs[i - 1], losses[i - 1]
            if l0 == loss:
                return float(x)
            return float(x0 + (l0 - target) / (l0 - loss) * (x - x0))
    return None


@dataclass(frozen=True)
class Spread:
    """Mean, sample std (ddof=1; 0 for one value), min and max of per-seed values."""

    mean: float
    std: float
    min: float
    max: float
    n: int

    def fmt(self, digits: int = 2, pct: bool = False) -> str:
        scale, unit = (100.0, "%") if pct else (1.0, "")
        if self.n == 1:
            return f"{self.mean * scale:.{digits}f}{unit}"
        return (
            f"{self.mean * scale:.{digits}f} ± {self.std * scale:.{digits}f}{unit} "
            f"[{self.min * scale:.{digits}f}–{self.max * scale:.{digits}f}]"
        )


def spread(values: Sequence[float]) -> Spread:
    """Spread across seeds: mean ± std (sample std) and min–max."""
    arr = np.asarray(list(values), dtype=np.float64)
    if arr.size == 0:
        raise ValueError("spread() needs at least one value.")
    std = float(arr.std(ddof=1)) if arr.size > 1 else 0.0
    return Spread(float(arr.mean()), std, float(arr.min()), float(arr.max()), int(arr.size))


def run_metrics(run: dict[str, Any], baseline: dict[str, Any], teacher_train_s: float) -> dict[str, Any]:
    """Per-seed metrics of one arm against the baseline of the same seed.

    - ``step_frac``: first step reaching the baseline's final loss / the baseline's steps (None: never);
    - ``wall_frac``: the arm's step wall-clock at that point plus its offline teacher work (SALT_DS scoring)
      / the baseline's total step wall-clock (teacher forwards of KD steps are inside the steps);
    - ``wall_frac_with_teacher``: the same plus the teacher's own training time (arms that use a teacher).
    """
    target = baseline["curve"]["loss"][-1]
    curve = run["curve"]
    step = first_crossing(curve["step"], curve["loss"], target)
    wall = first_crossing(curve["wall"], curve["loss"], target)
    base_steps = baseline["curve"]["step"][-1]
    base_wall = baseline["train_time_s"]
    offline = run.get("offline_teacher_s", 0.0)
    teacher = teacher_train_s if run.get("uses_teacher") else 0.0
    final = curve["loss"][-1]
    return {
        "target_loss": target,
        "step": step,
        "step_frac": None if step is None else step / base_steps,
        "wall_frac": None if wall is None else (wall + offline) / base_wall,
        "wall_frac_with_teacher": None if wall is None else (wall + offline + teacher) / base_wall,
        "final_loss": final,
        "final_ppl": math.exp(final),
        "final_minus_baseline": final - target,
        "train_time_s": run["train_time_s"],
    }


def _fmt_frac(values: list[float | None], digits: int = 2) -> str:
    """Spread of fractions; runs that never reach the target are counted and shown as '>1'."""
    reached = [v for v in values if v is not None]
    missed = len(values) - len(reached)
    if not reached:
        return f"not reached ({missed}/{len(values)} seeds)"
    text = spread(reached).fmt(digits)
    return text + (f"; not reached in {missed}/{len(values)} seeds" if missed else "")


def aggregate(results: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per arm: per-seed metrics and their spreads (paired with the same seed's baseline)."""
    rows = []
    for arm in results["config"]["arms"]:
        per_seed = []
        for seed in results["config"]["seeds"]:
            runs = results["runs"].get(str(seed), {})
            if arm not in runs or "baseline" not in runs:
                continue
            teacher_s = results["teachers"][str(_teacher_seed_for(results["config"], seed))]["train_time_s"]
            per_seed.append(run_metrics(runs[arm], runs["baseline"], teacher_s))
        if not per_seed:
            continue
        rows.append(
            {
                "arm": arm,
                "seeds": len(per_seed),
                "per_seed": per_seed,
                "step_frac": [m["step_frac"] for m in per_seed],
                "wall_frac": [m["wall_frac"] for m in per_seed],
                "wall_frac_with_teacher": [m["wall_frac_with_teacher"] for m in per_seed],
                "final_loss": spread([m["final_loss"] for m in per_seed]),
                "final_ppl": spread([m["final_ppl"] for m in per_seed]),
                "final_minus_baseline": spread([m["final_minus_baseline"] for m in per_seed]),
            }
        )
    return rows


def markdown_table(rows: list[dict[str, Any]], teacher: dict[str, Any] | None = None) -> str:
    """The results table (means ± sample std [min–max] over seeds)."""
    head = (
        "| arm | seeds | steps to baseline's final loss (fraction) | wall-clock fraction (teacher forwards + offline "
        "scoring included) | wall-clock fraction + teacher training | final val loss | Δ vs baseline (paired) "
        "| final val ppl |\n| --- | --- | --- | --- | --- | --- | --- | --- |"
    )
    lines = [head]
    if teacher is not None:
        lines.append(
            f"| teacher ({teacher['preset']}, {teacher['steps']} steps, {teacher['train_time_s']:.0f} s) | 1 | – | – | – "
            f"| {teacher['final_loss']:.3f} | – | {math.exp(teacher['final_loss']):.1f} |"
        )
    for r in rows:
        lines.append(
            f"| {r['arm']} | {r['seeds']} | {_fmt_frac(r['step_frac'])} | {_fmt_frac(r['wall_frac'])} "
            f"| {_fmt_frac(r['wall_frac_with_teacher'])} | {r['final_loss'].fmt(3)} "
            f"| {r['final_minus_baseline'].fmt(3)} | {r['final_ppl'].fmt(1)} |"
        )
    return "\n".join(lines)


# ================================================================================================ targets
def _mean_or_none(values: list[float | None]) -> float | None:
    """Mean over seeds, None if any seed missed (a target is met only if every seed meets it on average)."""
    if not values or any(v is None for v in values):
        return None
    return float(np.mean(values))


def check_targets(rows: list[dict[str, Any]]) -> list[tuple[str, str, bool | None]]:
    """(target, measured, met) for the issue's targets, judged on seed means; None = arm not run."""
    by = {r["arm"]: r for r in rows}
    out: list[tuple[str, str, bool | None]] = []

    def frac(arm: str, key: str) -> tuple[str, float | None]:
        if arm not in by:
            return "not run", None
        m = _mean_or_none(by[arm][key])
        return ("not reached in every seed" if m is None else f"{m:.2f}"), m

    # the targets are SALT's: judged for every schedule that was run (the step schedule is always listed)
    salt_arms = ["salt"] + [a for a in ("salt-linear", "salt-linear_ratio") if a in by]
    for arm in salt_arms:
        text, m = frac(arm, "step_frac")
        out.append((f"{arm}: steps ≤ 0.70", text, None if arm not in by else (m is not None and m <= 0.70)))
        text, m = frac(arm, "wall_frac")
        out.append((f"{arm}: wall-clock ≤ 0.75 (teacher forwards included)", text, None if arm not in by else (m is not None and m <= 0.75)))  # fmt: skip
        if arm in by:
            d = by[arm]["final_minus_baseline"]
            out.append((f"{arm}: ends below baseline", f"Δ final loss {d.fmt(3)}", d.mean < 0))
    for arm, limit in (("hypercloning", 0.45), ("hypercloning+salt", 0.40)):
        text, m = frac(arm, "step_frac")
        out.append(
            (f"{arm}: steps ≤ {limit:.2f}", text, None if arm not in by else (m is not None and m <= limit))
        )
    if "rkd" in by and "salt" in by:
        diff = by["rkd"]["final_loss"].mean - by["salt"]["final_loss"].mean
        out.append(("rkd ends worse than salt", f"rkd − salt final loss = {diff:+.3f}", diff > 0))
    return out


# ================================================================================================ data
def ordered_indices(n_rows: int, n_samples: int, seed: int) -> np.ndarray:
    """The data order of a seed: concatenated fresh permutations of ``range(n_rows)``, ``n_samples`` long.

    A pure function of (n_rows, n_samples, seed): every arm of a seed reads exactly these rows in this order.
    """
    if n_rows < 1 or n_samples < 0:
        raise ValueError(f"need n_rows >= 1 and n_samples >= 0, got {n_rows}, {n_samples}.")
    rng = np.random.default_rng(seed)
    parts, have = [], 0
    while have < n_samples:
        parts.append(rng.permutation(n_rows))
        have += n_rows
    return np.concatenate(parts)[:n_samples] if parts else np.zeros(0, dtype=np.int64)


def _even_rows(n_rows: int, k: int) -> list[int]:
    """k evenly spaced rows (all if k == 0 or k >= n_rows): a validation subset that spans the split."""
    if k <= 0 or k >= n_rows:
        return list(range(n_rows))
    return sorted({int(i) for i in np.linspace(0, n_rows - 1, k).round()})


# ================================================================================================ training
class _InOrder:
    """Mixin: read the training set in its given order (the benchmark fixes the order per seed)."""

    def _get_train_sampler(self, train_dataset=None):  # noqa: ANN001 - Trainer's signature
        from torch.utils.data import SequentialSampler

        return SequentialSampler(train_dataset if train_dataset is not None else self.train_dataset)


_IN_ORDER_CLASSES: dict[type, type] = {}


def in_order(trainer_cls: type) -> type:
    """``trainer_cls`` with the in-order sampler (cached, so each class is built once)."""
    if trainer_cls not in _IN_ORDER_CLASSES:
        _IN_ORDER_CLASSES[trainer_cls] = type(f"InOrder{trainer_cls.__name__}", (_InOrder, trainer_cls), {})
    return _IN_ORDER_CLASSES[trainer_cls]


def _curve_recorder():
    """A callback timing the optimizer steps (not evaluations) and recording (step, wall, loss) per eval."""
    from transformers import TrainerCallback

    class CurveRecorder(TrainerCallback):
        def __init__(self) -> None:
            self.seconds = 0.0
            self._t0 = 0.0
            self.curve: dict[str, list[float]] = {"step": [], "wall": [], "loss": []}
            self.kd: dict[str, list[float]] = {"step": [], "weight": []}

        def on_step_begin(self, args, state, control, **kwargs):
            self._t0 = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            self.seconds += time.perf_counter() - self._t0

        def on_evaluate(self, args, state, control, metrics=None, **kwargs):
            if metrics and "eval_loss" in metrics:
                step = state.global_step
                if self.curve["step"] and self.curve["step"][-1] == step:  # the same point twice
                    return
                self.curve["step"].append(step)
                self.curve["wall"].append(self.seconds)
                self.curve["loss"].append(float(metrics["eval_loss"]))

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "kd_weight" in logs:
                self.kd["step"].append(state.global_step)
                self.kd["weight"].append(float(logs["kd_weight"]))

    return CurveRecorder()


def _training_args(cfg: BenchmarkConfig, cls: type, out: Path, *, steps: int, lr: float, warmup: int,
                   seed: int, **extra: Any):  # fmt: skip
    return cls(
        output_dir=str(out),
        max_steps=steps,
        per_device_train_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        per_device_eval_batch_size=cfg.eval_batch_size,
        learning_rate=lr,
        lr_scheduler_type="cosine",
        warmup_steps=warmup,
        weight_decay=cfg.weight_decay,
        adam_beta2=cfg.adam_beta2,
        max_grad_norm=cfg.max_grad_norm,
        eval_strategy="steps",
        eval_steps=cfg.eval_every,
        logging_steps=max(1, cfg.eval_every // 5),
        save_strategy="no",
        report_to="none",
        seed=seed,
        data_seed=seed,
        bf16=cfg.bf16,
        use_cpu=cfg.use_cpu,
        dataloader_num_workers=0,
        disable_tqdm=cfg.disable_tqdm,
        **extra,
    )


def _train(trainer: Any, recorder: Any, max_steps: int) -> None:
    """Evaluate at step 0, train (evaluating every eval_every steps), make sure the last step is evaluated."""
    trainer.evaluate()
    trainer.train()
    if recorder.curve["step"][-1] != max_steps:
        trainer.evaluate()


def _experiment_config(cfg: BenchmarkConfig, seed: int) -> Any:
    """The demo engine's config for the arm builders (only the fields both know)."""
    from hf_salt.experiments import ExperimentConfig

    known = {f.name for f in dataclasses.fields(ExperimentConfig)}
    values = {k: v for k, v in asdict(cfg).items() if k in known}
    values.update(seed=seed, arms=["baseline"], teacher_steps=cfg.teacher_steps)
    return ExperimentConfig(**values)


def _salt_ds_same_order(ctx: Any, cfg: BenchmarkConfig) -> tuple[Any, type, dict, dict, float]:
    """SALT_DS whose stage 2 reads the baseline's rows: candidates = the first ``salt_ds_pool`` KD budgets of
    this seed's order, the top-scored budget becomes the KD stage, then rows [budget, end) of the order."""
    import torch

    from hf_salt.salt.trainer import SALTTrainer
    from hf_salt.salt_ds import SALTDSCollator, score_dataset, select

    budget = cfg.kd_steps * cfg.global_batch_size
    start = time.perf_counter()
    pool = ctx.train.select(range(min(len(ctx.train), cfg.salt_ds_pool * budget)))
    scored = score_dataset(
        pool,
        ctx.teacher,
        top_k=10,
        batch_size=cfg.eval_batch_size,
        cache_dir=str(Path(cfg.output_dir) / "salt_ds_cache"),
        load_from_cache_file=False,  # the scoring time is part of the arm's cost
    )
    from hf_salt.salt_ds.scoring import NUM_LEARNABLE_COLUMN

    eligible = int(np.count_nonzero(np.asarray(scored[NUM_LEARNABLE_COLUMN]) > 0))
    if eligible == 0:
        raise ValueError(
            "SALT_DS: no candidate block has a token in the teacher's top-10; is the teacher trained?"
        )
    selected = select(scored, n=min(budget, eligible))  # a smaller pool is repeated by the curriculum
    scoring_s = time.perf_counter() - start

    class SameOrderCollator(SALTDSCollator):
        """Pool (shuffled) for the KD stage, then exactly the rows the baseline reads at those steps."""

        def curriculum(self, train_dataset, *, kd_steps, global_batch_size, total_samples, seed=0):
            n_kd = min(kd_steps * global_batch_size, total_samples)
            perm = np.random.default_rng((seed, 7)).permutation(len(self.selected_dataset))
            reps = math.ceil(n_kd / len(perm))
            pool_rows = np.concatenate([perm] * reps)[:n_kd]
            return torch.utils.data.ConcatDataset(
                [
                    self.selected_dataset.select(pool_rows.tolist()),
                    train_dataset.select(range(n_kd, total_samples)),
                ]
            )

    keep = [c for c in ("input_ids", "attention_mask", "labels") if c in selected.column_names]
    collator = SameOrderCollator(selected.select_columns(keep))
    fields = ctx.salt_fields()
    fields["remove_unused_columns"] = False
    return ctx.fresh_student(), SALTTrainer, fields, {"data_collator": collator}, scoring_s


def _build_arm(name: str, ctx: Any, cfg: BenchmarkConfig) -> tuple[Any, type, dict, dict, float, bool]:
    """(student, trainer class, SALTConfig fields, trainer kwargs, offline teacher seconds, uses teacher)."""
    from hf_salt.experiments import ARMS

    if name == "salt_ds":
        student, cls, fields, kwargs, offline = _salt_ds_same_order(ctx, cfg)
        return student, cls, fields, kwargs, offline, True
    if name not in ARMS:
        raise ValueError(f"hf_salt.experiments has no arm {name!r} (registered: {sorted(ARMS)}).")
    spec = ARMS[name]
    student, cls, fields, kwargs, _teacher_cost = spec.build(ctx)  # teacher training is accounted here
    fields = dict(fields)
    if cfg.kd_decay_start is not None and fields.get("kd_schedule") in ("linear", "linear_ratio"):
        fields["kd_decay_start"] = cfg.kd_decay_start
    return student, cls, fields, dict(kwargs), 0.0, spec.uses_teacher


def _schedule(trainer: Any, steps: int) -> dict[str, list[float]]:
    """omega at every optimizer step, from the trainer's own schedule (exact, not a logging-window mean)."""
    callback = trainer.kd_callback
    return {"step": list(range(steps)), "weight": [callback.weight_at(s) for s in range(steps)]}


def _teacher_seed_for(config: dict[str, Any] | BenchmarkConfig, seed: int) -> int:
    get = config.get if isinstance(config, dict) else lambda k: getattr(config, k)
    return seed if get("teacher_per_seed") else get("teacher_seed")


class Benchmark:
    """Holds the data and teachers of one config; :meth:`run` trains everything and returns the results."""

    def __init__(self, cfg: BenchmarkConfig, command: str | None = None) -> None:
        self.cfg = cfg
        self.out = Path(cfg.output_dir)
        self.command = command or _command_line()
        self._orders: dict[int, Any] = {}

    # ---------------------------------------------------------------- data
    def load_data(self) -> None:
        from hf_salt.data import check_block_size, load_corpus, load_tokenizer, pack_dataset
        from hf_salt.zoo import build_config

        cfg = self.cfg
        for preset in (cfg.teacher_preset, cfg.student_preset):
            check_block_size(cfg.block_size, build_config(preset))
        self.tokenizer = load_tokenizer(cfg.tokenizer)
        corpus = load_corpus(cfg.corpus)
        self.train = pack_dataset(corpus["train"], self.tokenizer, cfg.block_size)
        if cfg.max_train_blocks and len(self.train) > cfg.max_train_blocks:
            self.train = self.train.select(range(cfg.max_train_blocks))
        validation = pack_dataset(corpus["validation"], self.tokenizer, cfg.block_size)
        self.validation = validation.select(_even_rows(len(validation), cfg.eval_blocks))
        if cfg.corpus_fraction:
            steps = int(cfg.corpus_fraction * len(self.train)) // cfg.global_batch_size
            steps = min(steps, cfg.max_steps) // cfg.eval_every * cfg.eval_every
            if steps < cfg.eval_every:
                raise ValueError(
                    f"corpus_fraction={cfg.corpus_fraction} of {len(self.train)} blocks is less than eval_every "
                    f"({cfg.eval_every}) steps of {cfg.global_batch_size} blocks: use more data or smaller batches."
                )
            cfg.max_steps, cfg.teacher_steps = steps, min(cfg.teacher_steps, steps)
            print(f"[benchmark] corpus_fraction={cfg.corpus_fraction}: {steps} steps per run")
        need = max(cfg.max_steps, cfg.teacher_steps) * cfg.global_batch_size
        self.epochs = need / len(self.train)
        if cfg.single_epoch and need > len(self.train):
            raise ValueError(
                f"single_epoch: {max(cfg.max_steps, cfg.teacher_steps)} steps x {cfg.global_batch_size} blocks = "
                f"{need} blocks, but the corpus has {len(self.train)}. Lower max_steps/batch_size or use more data."
            )

    def order(self, seed: int, steps: int) -> Any:
        """The training set in the seed's order, ``steps`` x global batch rows long."""
        key = (seed, steps)
        if key not in self._orders:
            rows = ordered_indices(len(self.train), steps * self.cfg.global_batch_size, seed)
            self._orders[key] = self.train.select(rows.tolist())
        return self._orders[key]

    # ---------------------------------------------------------------- teacher
    def teacher(self, seed: int) -> tuple[Any, dict[str, Any]]:
        """Train (or reload) the teacher of ``seed``; returns (model, record)."""
        from transformers import AutoModelForCausalLM, Trainer, TrainingArguments

        from hf_salt.zoo import build_model

        cfg = self.cfg
        folder = self.out / f"teacher-seed{seed}"
        meta = folder / "teacher.json"
        if cfg.resume and meta.exists():
            record = json.loads(meta.read_text())
            if record.get("key") == cfg.teacher_key():
                print(f"[benchmark] reusing the teacher in {folder}")
                return AutoModelForCausalLM.from_pretrained(folder).eval(), record
        model = build_model(cfg.teacher_preset, vocab_size=len(self.tokenizer), seed=seed)
        recorder = _curve_recorder()
        args = _training_args(
            cfg, TrainingArguments, self.out / "_runs" / f"teacher-seed{seed}", steps=cfg.teacher_steps,
            lr=cfg.teacher_learning_rate, warmup=cfg.warmup_steps, seed=seed,
        )  # fmt: skip
        trainer = in_order(Trainer)(
            model=model,
            args=args,
            train_dataset=self.order(seed, cfg.teacher_steps),
            eval_dataset=self.validation,
            callbacks=[recorder],
        )
        print(
            f"[benchmark] training the teacher ({cfg.teacher_preset}, seed {seed}, {cfg.teacher_steps} steps)"
        )
        _train(trainer, recorder, cfg.teacher_steps)
        trainer.save_model(str(folder))
        record = {
            "key": cfg.teacher_key(),
            "preset": cfg.teacher_preset,
            "seed": seed,
            "steps": cfg.teacher_steps,
            "train_time_s": recorder.seconds,
            "curve": recorder.curve,
            "final_loss": recorder.curve["loss"][-1],
        }
        meta.write_text(json.dumps(record, indent=1))
        return trainer.model.eval(), record

    # ---------------------------------------------------------------- one arm
    def run_arm(self, arm: str, seed: int, teacher: Any, teacher_record: dict[str, Any]) -> dict[str, Any]:
        """Train the student of ``arm`` for ``seed``; returns its record (curve, timings)."""
        from transformers import Trainer, TrainingArguments, set_seed

        from hf_salt.experiments import Context
        from hf_salt.salt.config import SALTConfig

        cfg = self.cfg
        set_seed(seed)
        train = self.order(seed, cfg.max_steps)
        ctx = Context(_experiment_config(cfg, seed), self.tokenizer, train, self.validation, teacher, 0.0)
        student, trainer_cls, fields, kwargs, offline_s, uses_teacher = _build_arm(arm, ctx, cfg)
        uses_salt = trainer_cls is not Trainer
        hc = arm in HYPERCLONING_ARMS
        lr = cfg.hc_learning_rate if hc and cfg.hc_learning_rate is not None else cfg.learning_rate
        warmup = cfg.hc_warmup_steps if hc and cfg.hc_warmup_steps is not None else cfg.warmup_steps
        args = _training_args(
            cfg, SALTConfig if uses_salt else TrainingArguments, self.out / "_runs" / f"seed{seed}" / arm,
            steps=cfg.max_steps, lr=lr, warmup=warmup, seed=seed, **fields,
        )  # fmt: skip
        if uses_salt:
            kwargs["teacher_model"] = teacher
        recorder = _curve_recorder()
        trainer = in_order(trainer_cls)(
            model=student,
            args=args,
            train_dataset=train,
            eval_dataset=self.validation,
            callbacks=[recorder],
            **kwargs,
        )
        _train(trainer, recorder, cfg.max_steps)
        record = {
            "key": cfg.run_key(arm),
            "arm": arm,
            "seed": seed,
            "teacher_seed": teacher_record["seed"],
            "uses_teacher": bool(uses_teacher),
            "kd_steps": int(getattr(trainer, "kd_steps", 0) or 0) if uses_salt else 0,
            "learning_rate": lr,
            "warmup_steps": warmup,
            "train_time_s": recorder.seconds,
            "offline_teacher_s": offline_s,
            "curve": recorder.curve,
            "kd_weight": _schedule(trainer, cfg.max_steps) if uses_salt else {"step": [], "weight": []},
        }
        del trainer, student
        gc.collect()
        return record

    # ---------------------------------------------------------------- everything
    def run(self) -> dict[str, Any]:
        """Teacher(s), then every (seed, arm), baseline first; saves as it goes; returns the results."""
        import torch
        from tqdm.auto import tqdm

        cfg = self.cfg
        if cfg.num_threads:
            torch.set_num_threads(cfg.num_threads)
        self.out.mkdir(parents=True, exist_ok=True)
        self.load_data()
        results: dict[str, Any] = {
            "config": asdict(cfg),
            "kd_steps": cfg.kd_steps,
            "command": self.command,
            "hardware": hardware(),
            "started": _now(),
            "train_blocks": len(self.train),
            "train_tokens": len(self.train) * cfg.block_size,
            "epochs": self.epochs,
            "validation_blocks": len(self.validation),
            "teachers": {},
            "runs": {},
        }
        if cfg.workers > 1 and len(cfg.seeds) > 1 and not cfg.report_only:
            self._run_workers()
        jobs = [(seed, arm) for seed in cfg.seeds for arm in cfg.arms]
        teachers: dict[int, tuple[Any, dict[str, Any]]] = {}
        results["missing"] = []
        for seed, arm in tqdm(jobs, desc=f"benchmark {cfg.label}", unit="run"):
            tseed = _teacher_seed_for(cfg, seed)
            if cfg.report_only:
                record = self._saved_run(seed, arm, tseed)
                meta = self.out / f"teacher-seed{tseed}" / "teacher.json"
                if meta.exists():
                    results["teachers"][str(tseed)] = json.loads(meta.read_text())
                if record is None:
                    results["missing"].append([seed, arm])
                else:
                    results["runs"].setdefault(str(seed), {})[arm] = record
                continue
            if tseed not in teachers:
                teachers.clear()  # one teacher in memory at a time
                teachers[tseed] = self.teacher(tseed)
                results["teachers"][str(tseed)] = teachers[tseed][1]
            teacher, trecord = teachers[tseed]
            path = self._run_path(seed, arm)
            record = self._saved_run(seed, arm, tseed) if cfg.resume else None
            if record is None:
                print(f"[benchmark] seed {seed}: {arm}")
                record = self.run_arm(arm, seed, teacher, trecord)
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(json.dumps(record, indent=1))
            else:
                print(f"[benchmark] seed {seed}: {arm} (reused {path})")
            results["runs"].setdefault(str(seed), {})[arm] = record
        results["finished"] = _now()
        if cfg.report_only:  # when the saved runs were made, not when this report was written
            stamps = [
                self._run_path(int(sd), arm).stat().st_mtime
                for sd, runs in results["runs"].items()
                for arm in runs
            ]
            if stamps:
                fmt = "%Y-%m-%d %H:%M UTC"
                results["started"] = _dt.datetime.fromtimestamp(min(stamps), _dt.timezone.utc).strftime(fmt)
                results["finished"] = _dt.datetime.fromtimestamp(max(stamps), _dt.timezone.utc).strftime(fmt)
                results["started"] = f"runs saved from {results['started']}"
        if cfg.report:
            (self.out / "results.json").write_text(json.dumps(results, indent=1))
        return results

    def _run_path(self, seed: int, arm: str) -> Path:
        return self.out / "runs" / f"seed{seed}" / f"{arm.replace('+', '_plus_')}.json"

    def _saved_run(self, seed: int, arm: str, tseed: int) -> dict[str, Any] | None:
        """The saved run of (seed, arm) if it was made with this config and teacher, else None."""
        path = self._run_path(seed, arm)
        if not path.exists():
            return None
        record = json.loads(path.read_text())
        if record.get("key") != self.cfg.run_key(arm) or record.get("teacher_seed") != tseed:
            return None
        return record

    def _run_workers(self) -> None:
        """Train the teacher(s) here, then the seeds in ``workers`` parallel processes of this script; they
        save every run as JSON, which :meth:`run` then picks up (resume)."""
        cfg = self.cfg
        for tseed in sorted({_teacher_seed_for(cfg, s) for s in cfg.seeds}):
            self.teacher(tseed)
        config_path = self.out / "worker-config.json"
        config_path.write_text(json.dumps(asdict(cfg)))
        groups = [cfg.seeds[i :: cfg.workers] for i in range(min(cfg.workers, len(cfg.seeds)))]
        env = dict(os.environ)
        if cfg.num_threads:
            env["OMP_NUM_THREADS"] = str(cfg.num_threads)
        procs = []
        for group in groups:
            log = self.out / f"worker-seeds{'-'.join(map(str, group))}.log"
            cmd = [
                sys.executable, str(Path(__file__).resolve()), "--config", str(config_path),
                "--seeds", *map(str, group), "--workers", "1", "--report", "false", "--resume", "true",
            ]  # fmt: skip
            print(f"[benchmark] worker for seeds {group}: log {log}")
            with open(log, "w") as handle:
                procs.append((group, subprocess.Popen(cmd, stdout=handle, stderr=subprocess.STDOUT, env=env)))
        failed = [(group, p.wait()) for group, p in procs]
        failed = [(g, code) for g, code in failed if code != 0]
        if failed:
            raise RuntimeError(
                f"benchmark worker(s) failed: {failed}; see the worker-*.log files in {self.out}."
            )


# ================================================================================================ report
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
        f"teacher {cfg['teacher_steps']} steps; n_KD = {results['kd_steps']} ({cfg['kd_fraction']:.0%}{decay_note}); "
        f"omega = {cfg['kd_weight']}, tau = {cfg['kd_temperature']}; AdamW, peak LR {cfg['learning_rate']}, "
        f"{cfg['warmup_steps']} warm-up steps then cosine; "
        f"HyperCloning LR {cfg['hc_learning_rate'] or cfg['learning_rate']}, warm-up "
        f"{cfg['hc_warmup_steps'] if cfg['hc_warmup_steps'] is not None else cfg['warmup_steps']}, "
        f"snr_db {cfg['hypercloning_snr_db']}; seeds {cfg['seeds']} "
        f"({teacher_note}); "
        f"validation: {results['validation_blocks']} blocks evaluated every {cfg['eval_every']} steps.",
        "",
        markdown_table(rows, teacher),
        "",
        "Fractions are per seed against the same seed's baseline (same init, same data order), then "
        "mean ± sample std [min–max] over seeds. The wall-clock columns time the optimizer steps only "
        "(evaluations excluded); teacher forwards during KD are inside the steps, SALT_DS's offline scoring is "
        "added, and the last column also adds the teacher's own training.",
        "",
        "Targets (judged on the seed means):",
        "",
    ]
    for target, measured, met in check_targets(rows):
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


def update_results_md(path: Path, marker: str, block: str, section: str = "## Reproduction") -> None:
    """Replace the text between ``<!-- marker:begin -->`` and ``<!-- marker:end -->`` in RESULTS.md, or insert
    the marked block at the end of the section whose heading starts with ``section``. Other sections are kept."""
    text = path.read_text() if path.exists() else "# Benchmark results\n\n"
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


def write_report(results: dict[str, Any]) -> dict[str, Path]:
    """Table (markdown), plot (PNG) and the RESULTS.md block; returns the paths written."""
    cfg = results["config"]
    report_dir = Path(cfg["report_dir"])
    rows = aggregate(results)
    plot = plot_results(results, report_dir / f"reproduction_{cfg['label']}.png")
    results_md = Path(cfg["results_md"]) if cfg["results_md"] else None
    plot_rel = os.path.relpath(plot, results_md.parent) if results_md else plot.name
    block = report_markdown(results, rows, plot_rel)
    table = report_dir / f"reproduction_{cfg['label']}.md"
    table.write_text(block.replace(f"]({plot_rel})", f"]({os.path.relpath(plot, table.parent)})"))
    written = {"plot": plot, "table": table}
    if results_md is not None:
        update_results_md(results_md, f"reproduce:{cfg['label']}", block)
        written["results_md"] = results_md
    return written


# ================================================================================================ misc
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


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def _command_line() -> str:
    argv = [Path(sys.argv[0]).name if sys.argv[0].endswith("hf-salt") else sys.argv[0], *sys.argv[1:]]
    if argv and argv[0].endswith(".py"):
        argv[0] = os.path.relpath(argv[0]) if os.path.isabs(argv[0]) else argv[0]
        argv.insert(0, "python")
    return " ".join(shlex.quote(a) for a in argv)


def run(cfg: BenchmarkConfig) -> int:
    """Entry point of ``python benchmarks/reproduce.py`` and ``hf-salt benchmark``."""
    results = Benchmark(cfg).run()
    if not cfg.report:
        return 0
    written = write_report(results)
    rows = aggregate(results)
    print()
    teachers = list(results["teachers"].values())
    print(markdown_table(rows, teachers[0] if len(teachers) == 1 else None))
    print()
    for target, measured, met in check_targets(rows):
        print(f"- {target}: {measured} -> {'not run' if met is None else 'met' if met else 'MISSED'}")
    print()
    for what, path in written.items():
        print(f"{what}: {path}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    sys.path.insert(0, str(REPO))
    from hf_salt.cli.parser import Command

    return Command([BenchmarkConfig], run, description=__doc__).main(
        list(sys.argv[1:] if argv is None else argv), prog="reproduce.py"
    )


if __name__ == "__main__":
    sys.exit(main())

"""Metrics of the reproduction benchmark: crossings of the baseline's final loss, seed spreads, targets.

Every fraction is per seed against the same seed's baseline (same init, same data order), then summarised over
seeds as mean ± sample std [min–max]. See docs/reproduction.md, "The columns".
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np


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


#: points of the run (fractions of max_steps) where arms are compared at equal steps
EQUAL_STEPS = (0.25, 0.5, 0.75, 1.0)


def target_loss(baseline: dict[str, Any], evals: int = 1) -> float:
    """The quality every arm is timed to: the mean of the baseline's last ``evals`` validation losses.

    One evaluation carries its own noise; a mean over the last few is a steadier target while the baseline
    still improves only slowly there.
    """
    losses = baseline["curve"]["loss"]
    return float(np.mean(losses[-max(1, evals) :]))


def loss_at(run: dict[str, Any], step: float) -> float:
    """The run's validation loss at ``step``, interpolated between evaluations."""
    return float(np.interp(step, run["curve"]["step"], run["curve"]["loss"]))


def step_cost(run: dict[str, Any], steps: float, costs: dict[str, float]) -> float:
    """Seconds of ``steps`` optimizer steps of ``run`` from the interleaved per-step costs: KD steps at the KD
    cost (student step + teacher forward + KD loss), the others at the cost of the run's model."""
    kd = min(steps, float(run.get("kd_steps", 0) or 0))
    return kd * costs["kd"] + (steps - kd) * costs[run.get("step_kind", "student")]


def run_metrics(
    run: dict[str, Any],
    baseline: dict[str, Any],
    teacher_train_s: float,
    *,
    costs: dict[str, float] | None = None,
    teacher_steps: int | None = None,
    target_evals: int = 1,
) -> dict[str, Any]:
    """Per-seed metrics of one arm against the baseline of the same seed.

    The target is :func:`target_loss`; every fraction divides the arm's figure at its first crossing of the
    target by the baseline's own at its first crossing (the baseline is 1.0 by construction).

    - ``step_frac``: steps to the target / the baseline's steps to it (None: never reached);
    - ``wall_frac``: the same in seconds plus offline teacher work (SALT_DS scoring). With ``costs`` (seconds per
      step of each kind, from one interleaved measurement: ``student``, ``kd``, ``teacher``) the seconds are
      steps x cost; without, the run's own timed steps (noisy on a shared machine);
    - ``wall_frac_with_teacher``: the same plus the teacher's own training (arms that use a teacher):
      ``teacher_steps`` x the teacher's step cost with ``costs``, else ``teacher_train_s``;
    - ``at_steps``: the arm's loss minus the baseline's at each fraction of the run in :data:`EQUAL_STEPS`.
    """
    target = target_loss(baseline, target_evals)
    curve, base_curve = run["curve"], baseline["curve"]
    step = first_crossing(curve["step"], curve["loss"], target)
    # at its first evaluation already (a run that learned nothing): the whole run is the reference
    base_step = first_crossing(base_curve["step"], base_curve["loss"], target) or base_curve["step"][-1]
    offline = run.get("offline_teacher_s", 0.0)
    if costs is not None:
        wall = None if step is None else step_cost(run, step, costs)
        base_wall = step_cost(baseline, base_step, costs)
        teacher = (teacher_steps or 0) * costs["teacher"]
    else:
        wall = first_crossing(curve["wall"], curve["loss"], target)
        base_wall = first_crossing(base_curve["wall"], base_curve["loss"], target) or base_curve["wall"][-1]
        teacher = teacher_train_s
    teacher = teacher if run.get("uses_teacher") else 0.0
    last = base_curve["step"][-1]
    final = curve["loss"][-1]
    return {
        "target_loss": target,
        "step": step,
        "step_frac": None if step is None else step / base_step,
        "wall_frac": None if wall is None else (wall + offline) / base_wall,
        "wall_frac_with_teacher": None if wall is None else (wall + offline + teacher) / base_wall,
        "at_steps": {f: loss_at(run, f * last) - loss_at(baseline, f * last) for f in EQUAL_STEPS},
        "final_loss": final,
        "final_ppl": math.exp(final),
        "final_minus_baseline": final - base_curve["loss"][-1],
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
            teacher = results["teachers"].get(str(teacher_seed_for(results["config"], seed)), {})
            teacher_s = teacher.get("train_time_s", 0.0)
            per_seed.append(
                run_metrics(
                    runs[arm],
                    runs["baseline"],
                    teacher_s,
                    costs=results.get("step_costs"),
                    teacher_steps=results["config"].get("teacher_steps"),
                    target_evals=results["config"].get("target_evals", 1),
                )
            )
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
                "at_steps": {f: spread([m["at_steps"][f] for m in per_seed]) for f in EQUAL_STEPS},
            }
        )
    return rows


def markdown_table(
    rows: list[dict[str, Any]], teacher: dict[str, Any] | None = None, costs: dict[str, Any] | None = None
) -> str:
    """The results table (means ± sample std [min–max] over seeds). With ``costs``, the teacher's row shows
    its training as a fraction of the baseline's (mean) cost to the target."""
    priced = "priced by the interleaved step costs" if costs else "timed steps"
    head = (
        "| arm | seeds | steps to the target (fraction of the baseline's) | wall-clock fraction "
        f"({priced}; teacher forwards + offline scoring included) | wall-clock fraction + teacher training "
        "| final val loss | Δ final vs baseline (paired) | final val ppl |\n"
        "| --- | --- | --- | --- | --- | --- | --- | --- |"
    )
    lines = [head]
    if teacher is not None:
        cost = ""
        base = next((r for r in rows if r["arm"] == "baseline"), None)
        if costs and base is not None:
            base_s = float(np.mean([m["step"] for m in base["per_seed"]])) * costs["student"]
            cost = (
                f"; its training costs {teacher['steps'] * costs['teacher'] / base_s:.2f} of the baseline's"
            )
        else:
            cost = f", {teacher['train_time_s']:.0f} s"
        lines.append(
            f"| teacher ({teacher['preset']}, {teacher['steps']} steps{cost}) | 1 | – | – | – "
            f"| {teacher['final_loss']:.3f} | – | {math.exp(teacher['final_loss']):.1f} |"
        )
    for r in rows:
        lines.append(
            f"| {r['arm']} | {r['seeds']} | {_fmt_frac(r['step_frac'])} | {_fmt_frac(r['wall_frac'])} "
            f"| {_fmt_frac(r['wall_frac_with_teacher'])} | {r['final_loss'].fmt(3)} "
            f"| {r['final_minus_baseline'].fmt(3)} | {r['final_ppl'].fmt(1)} |"
        )
    return "\n".join(lines)


def equal_steps_table(rows: list[dict[str, Any]]) -> str:
    """Validation loss minus the baseline's at equal steps (paired per seed; negative = ahead)."""
    head = "| arm | " + " | ".join(f"Δ at {f:.0%} of the steps" for f in EQUAL_STEPS) + " |"
    lines = [head, "| --- |" + " --- |" * len(EQUAL_STEPS)]
    for r in rows:
        if r["arm"] == "baseline":
            continue
        lines.append(f"| {r['arm']} | " + " | ".join(r["at_steps"][f].fmt(3) for f in EQUAL_STEPS) + " |")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------ targets
def _mean_or_none(values: list[float | None]) -> float | None:
    """Mean over seeds, None if any seed missed (a target is met only if every seed meets it on average)."""
    if not values or any(v is None for v in values):
        return None
    return float(np.mean(values))


SALT_WALL_TARGET = (
    0.75  # default wall-clock target of SALT (fraction of the baseline's); configs may set their own
)


def check_targets(
    rows: list[dict[str, Any]], salt_wall: float = SALT_WALL_TARGET
) -> list[tuple[str, str, bool | None]]:
    """(target, measured, met) for the benchmark's targets, judged on seed means; None = arm not run.

    ``salt_wall``: SALT's wall-clock target (a fraction of the baseline's, teacher forwards included)."""
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
        out.append((f"{arm}: wall-clock ≤ {salt_wall:.2f} (teacher forwards included)", text, None if arm not in by else (m is not None and m <= salt_wall)))  # fmt: skip
        if arm in by:
            d = by[arm]["final_minus_baseline"]
            out.append((f"{arm}: ends below baseline", f"Δ final loss {d.fmt(3)}", d.mean < 0))
    for arm, limit in (("hypercloning", 0.45), ("hypercloning+salt", 0.40)):
        text, m = frac(arm, "step_frac")
        out.append(
            (f"{arm}: steps ≤ {limit:.2f}", text, None if arm not in by else (m is not None and m <= limit))
        )
    if "hypercloning" in by and "teacher-continue" in by:
        hc, tc = by["hypercloning"], by["teacher-continue"]
        # never reaching the target counts as slower than any crossing
        hc_steps = [math.inf if v is None else v for v in hc["step_frac"]]
        tc_steps = [math.inf if v is None else v for v in tc["step_frac"]]
        gain = spread([a["final_loss"] - b["final_loss"] for a, b in zip(hc["per_seed"], tc["per_seed"])])
        text = (
            f"steps {np.mean(hc_steps):.2f} vs {np.mean(tc_steps):.2f}; final loss hypercloning − "
            f"teacher-continue = {gain.fmt(3)}"
        )
        out.append(
            ("hypercloning: ahead of teacher-continue", text, bool(np.mean(hc_steps) < np.mean(tc_steps)))
        )
    if "rkd" in by and "salt" in by:
        diff = by["rkd"]["final_loss"].mean - by["salt"]["final_loss"].mean
        out.append(("rkd ends worse than salt", f"rkd − salt final loss = {diff:+.3f}", diff > 0))
    return out


def teacher_seed_for(config: dict[str, Any] | Any, seed: int) -> int:
    """The teacher seed of a student seed: its own with ``teacher_per_seed``, else ``teacher_seed``."""
    get = config.get if isinstance(config, dict) else lambda k: getattr(config, k)
    return seed if get("teacher_per_seed") else get("teacher_seed")

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
            teacher_s = results["teachers"][str(teacher_seed_for(results["config"], seed))]["train_time_s"]
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
    if "rkd" in by and "salt" in by:
        diff = by["rkd"]["final_loss"].mean - by["salt"]["final_loss"].mean
        out.append(("rkd ends worse than salt", f"rkd − salt final loss = {diff:+.3f}", diff > 0))
    return out


def teacher_seed_for(config: dict[str, Any] | Any, seed: int) -> int:
    """The teacher seed of a student seed: its own with ``teacher_per_seed``, else ``teacher_seed``."""
    get = config.get if isinstance(config, dict) else lambda k: getattr(config, k)
    return seed if get("teacher_per_seed") else get("teacher_seed")

"""The KD weight omega as a pure function of the optimizer step, and the callback that applies it.

Because omega depends only on ``state.global_step`` (the number of optimizer updates done), a run resumed from a
checkpoint continues exactly the same schedule; the callback's state is also exported to checkpoints.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from transformers import TrainerCallback
from transformers.trainer_callback import ExportableState

Schedule = str | Callable[[int], float]


@dataclass(frozen=True)
class KDSchedule:
    """A named omega schedule and what it needs from the other settings.

    Attributes:
        name: the ``kd_schedule`` value.
        decay: ``decay(omega, frac) -> omega_t`` inside the decay window, ``frac`` = (n_KD - t) / (n_KD - start)
            going from 1 to 0; None: omega stays constant until n_KD (``kd_decay_start`` is ignored).
        needs_weight_below_one: the schedule is undefined at omega = 1.
    """

    name: str
    decay: Callable[[float, float], float] | None = None
    needs_weight_below_one: bool = False

    @property
    def uses_decay_start(self) -> bool:
        return self.decay is not None


def _linear_ratio(omega: float, frac: float) -> float:
    r = omega / (1.0 - omega) * frac
    return r / (1.0 + r)


SCHEDULES: dict[str, KDSchedule] = {}


def register_schedule(schedule: KDSchedule) -> KDSchedule:
    """Add a schedule (``kd_schedule=name`` then selects it); returns it."""
    SCHEDULES[schedule.name] = schedule
    return schedule


register_schedule(KDSchedule("step"))
register_schedule(KDSchedule("linear", decay=lambda omega, frac: omega * frac))
register_schedule(KDSchedule("linear_ratio", decay=_linear_ratio, needs_weight_below_one=True))


def get_schedule(name: str) -> KDSchedule:
    try:
        return SCHEDULES[name]
    except KeyError:
        raise ValueError(
            f"kd_schedule must be one of {tuple(SCHEDULES)} or a callable, got {name!r}."
        ) from None


def resolve_kd_steps(kd_steps: int | float, max_steps: int) -> int:
    """``kd_steps`` is a step count (int >= 0) or a fraction of ``max_steps`` (float in (0, 1))."""
    if isinstance(kd_steps, float) and not kd_steps.is_integer():
        if not 0.0 < kd_steps < 1.0:
            raise ValueError(f"kd_steps as a fraction must be in (0, 1), got {kd_steps}.")
        if max_steps <= 0:
            raise ValueError(
                "kd_steps is a fraction of max_steps, but max_steps is unknown; pass an int kd_steps."
            )
        return int(round(kd_steps * max_steps))
    if kd_steps < 0:
        raise ValueError(f"kd_steps must be >= 0, got {kd_steps}.")
    return int(kd_steps)


def resolve_decay_start(decay_start: int | float | None, kd_steps: int) -> int:
    """``kd_decay_start``: None = 0 (decay over the whole KD stage), an int step, or a fraction in [0, 1) of n_KD."""
    if decay_start is None:
        return 0
    if isinstance(decay_start, float) and 0.0 <= decay_start < 1.0:
        return int(round(decay_start * kd_steps))
    start = int(decay_start)
    if start < 0 or start > kd_steps:
        raise ValueError(f"kd_decay_start must be in [0, kd_steps={kd_steps}], got {decay_start}.")
    return start


def kd_weight_at(
    step: int, *, kd_weight: float, kd_steps: int, schedule: Schedule = "step", decay_start: int | None = None
) -> float:
    """omega for the optimizer step ``step`` (0-based: the step that makes update number ``step + 1``).

    - ``step``: omega for step < n_KD, then 0 (exactly n_KD KD steps).
    - ``linear``: omega until ``decay_start``, then ``omega * (n_KD - t) / (n_KD - decay_start)``, 0 from n_KD.
    - ``linear_ratio``: the ratio r = omega / (1 - omega) decays linearly over the same window;
      omega_t = r_t / (1 + r_t).
    - a callable ``f(step) -> float``: used as is.
    """
    if callable(schedule):
        value = float(schedule(step))
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"The KD schedule returned {value} at step {step}; it must be in [0, 1].")
        return value
    spec = get_schedule(schedule)
    if not 0.0 <= kd_weight <= 1.0:
        raise ValueError(f"kd_weight must be in [0, 1], got {kd_weight}.")
    if step >= kd_steps or kd_weight == 0.0:
        return 0.0
    start = 0 if decay_start is None else int(decay_start)
    if spec.decay is None or step < start:
        return float(kd_weight)
    if spec.needs_weight_below_one and kd_weight >= 1.0:
        raise ValueError(f"schedule={spec.name!r} needs kd_weight < 1.")
    return float(spec.decay(float(kd_weight), (kd_steps - step) / (kd_steps - start)))


@dataclass
class KDState:
    """What the schedule shares with the trainer (the trainer reads it; it never touches ``args``)."""

    kd_weight: float = 0.0  # omega for the optimizer step in progress
    kd_steps: int | None = None  # n_KD, resolved once when training starts (None before)
    kd_done: bool = False  # True once step >= n_KD (omega is 0 from here on): the teacher may be offloaded


class KDScheduleCallback(TrainerCallback, ExportableState):
    """Sets omega for the coming optimizer step in ``on_step_begin`` (all micro-batches of a step share it)."""

    def __init__(
        self,
        kd_weight: float = 0.5,
        kd_steps: int | float = 0,
        schedule: str | None = "step",
        decay_start: int | float | None = None,
        schedule_fn: Callable[[int], float] | None = None,
    ) -> None:
        self.kd_weight = float(kd_weight)
        self.kd_steps = kd_steps
        self.schedule = schedule
        self.decay_start = decay_start
        self.schedule_fn = schedule_fn  # a user callable; not exported (not JSON), the trainer re-attaches it
        self.kd = KDState(kd_weight=0.0)
        self._resolved_start = 0

    def resolve(self, max_steps: int) -> int:
        """Turn fractions into step counts once ``max_steps`` is known; the first call fixes n_KD for the run,
        later calls return it unchanged."""
        if self.kd.kd_steps is None:
            self.kd.kd_steps = resolve_kd_steps(self.kd_steps, max_steps)
        self._resolved_start = resolve_decay_start(self.decay_start, self.kd.kd_steps)
        return self.kd.kd_steps

    def weight_at(self, step: int) -> float:
        schedule: Schedule = self.schedule_fn if self.schedule_fn is not None else (self.schedule or "step")
        return kd_weight_at(
            step,
            kd_weight=self.kd_weight,
            kd_steps=self.kd.kd_steps,
            schedule=schedule,
            decay_start=self._resolved_start,
        )

    def update(self, step: int) -> None:
        self.kd.kd_weight = self.weight_at(step)
        never = self.schedule_fn is None and self.kd_weight == 0.0  # omega is 0 at every step
        self.kd.kd_done = (never or step >= self.kd.kd_steps) and self.kd.kd_weight == 0.0

    def on_train_begin(self, args, state, control, **kwargs):
        self.resolve(state.max_steps)
        self.update(state.global_step)

    def on_step_begin(self, args, state, control, **kwargs):
        self.update(state.global_step)

    def state(self) -> dict:
        return {
            "args": {
                "kd_weight": self.kd_weight,
                "kd_steps": self.kd_steps,
                "schedule": None if self.schedule_fn is not None else self.schedule,
                "decay_start": self.decay_start,
            },
            "attributes": {},
        }

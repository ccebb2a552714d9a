"""The KD weight omega as a pure function of the optimizer step, and the callback that applies it.

Because omega depends only on ``state.global_step`` (the number of optimizer updates done), a run resumed from a
checkpoint continues exactly the same schedule; the callback's state is also exported to checkpoints.
``kd_schedule="auto"`` (:mod:`hf_salt.salt.auto_switch`) also depends on the logged losses; its decision state
travels with the checkpoint, so a resumed run continues it exactly.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from transformers import TrainerCallback
from transformers.trainer_callback import ExportableState
from transformers.utils import logging

from hf_salt.salt.auto_switch import AutoSwitch

logger = logging.get_logger(__name__)

Schedule = str | Callable[[int], float]


@dataclass(frozen=True)
class KDSchedule:
    """A named omega schedule and what it needs from the other settings.

    Attributes:
        name: the ``kd_schedule`` value.
        decay: ``decay(omega, frac) -> omega_t`` inside the decay window, ``frac`` = (n_KD - t) / (n_KD - start)
            going from 1 to 0; None: omega stays constant until n_KD (``kd_decay_start`` is ignored).
        needs_weight_below_one: the schedule is undefined at omega = 1.
        decided_in_training: the decay window is placed during training from the logged losses (``auto``);
            ``kd_steps`` is then an upper bound and ``kd_decay_start`` does not apply.
    """

    name: str
    decay: Callable[[float, float], float] | None = None
    needs_weight_below_one: bool = False
    decided_in_training: bool = False

    @property
    def uses_decay_start(self) -> bool:
        return self.decay is not None and not self.decided_in_training


def _linear_ratio(omega: float, frac: float) -> float:
    r = omega / (1.0 - omega) * frac
    return r / (1.0 + r)


SCHEDULES: dict[str, KDSchedule] = {}


def register_schedule(schedule: KDSchedule) -> KDSchedule:
    """Add a schedule (``kd_schedule=name`` then selects it); returns it."""
    SCHEDULES[schedule.name] = schedule
    return schedule


def _linear(omega: float, frac: float) -> float:
    return omega * frac


register_schedule(KDSchedule("step"))
register_schedule(KDSchedule("linear", decay=_linear))
register_schedule(KDSchedule("linear_ratio", decay=_linear_ratio, needs_weight_below_one=True))
# linear decay over kd_auto_decay_steps, from the step where the student caught up (hf_salt.salt.auto_switch)
AUTO = register_schedule(KDSchedule("auto", decay=_linear, decided_in_training=True)).name


def get_schedule(name: str) -> KDSchedule:
    try:
        return SCHEDULES[name]
    except KeyError:
        raise ValueError(
            f"kd_schedule must be one of {tuple(SCHEDULES)} or a callable, got {name!r}."
        ) from None


def int_or_fraction(value: float, name: str, of: str, allow_zero: bool = False) -> int | float:
    """Integral values become step counts; others must be fractions in (0, 1) (or [0, 1) with allow_zero)."""
    value = float(value)
    if value.is_integer():
        return int(value)
    low_ok = value >= 0.0 if allow_zero else value > 0.0
    if not (low_ok and value < 1.0):
        raise ValueError(f"{name}={value} is neither an integer step count nor a fraction {of} in (0, 1).")
    return value


def steps_of(value: int | float, total: int, name: str, of: str) -> int:
    """The one reading of "a step count, or a fraction of ``total``": integral values are steps (>= 0), others a
    fraction in [0, 1) of ``total``, rounded to steps."""
    value = int_or_fraction(value, name, of, allow_zero=True)
    if isinstance(value, float):
        if total <= 0:
            raise ValueError(f"{name} is a fraction {of}, but that is unknown here; pass a step count.")
        return int(round(value * total))
    if value < 0:
        raise ValueError(f"{name} must be >= 0, got {value}.")
    return value


def resolve_kd_steps(kd_steps: int | float, max_steps: int) -> int:
    """n_KD in steps: ``kd_steps`` is a step count or a fraction of ``max_steps``."""
    return steps_of(kd_steps, max_steps, "kd_steps", "of max_steps")


def check_kd_steps(kd_steps: int | float, max_steps: int, n: int | None = None) -> None:
    """Refuse the silent no-ops of n_KD (``n``, resolved from ``kd_steps`` when not given) in a run of
    ``max_steps``: KD on more steps than the run has (the teacher never switches off: that is RKD, not SALT),
    and a fraction that rounds to 0 steps."""
    if n is None:
        n = resolve_kd_steps(kd_steps, max_steps)
    if n > max_steps:
        raise ValueError(
            f"kd_steps={kd_steps} is more than the run's {max_steps} steps, so KD would never stop; use "
            f"kd_steps <= {max_steps} (or a fraction of the run, e.g. 0.2)."
        )
    if n == 0 and kd_steps > 0:
        raise ValueError(
            f"kd_steps={kd_steps} of {max_steps} steps rounds to 0 KD steps, so the teacher is never used; "
            f"use a fraction of at least {1 / max_steps:.3g} or an integer step count (0 disables KD)."
        )


def resolve_decay_start(decay_start: int | float | None, kd_steps: int) -> int:
    """``kd_decay_start``: None = 0 (decay over the whole KD stage), a step, or a fraction in [0, 1) of n_KD."""
    if decay_start is None:
        return 0
    start = steps_of(decay_start, kd_steps, "kd_decay_start", "of kd_steps")
    if start > kd_steps:
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
    - ``auto``: as ``linear``, with ``decay_start`` and ``kd_steps`` placed during training (the callback).
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
    """Sets omega for the coming optimizer step in ``on_step_begin`` (all micro-batches of a step share it).

    With ``schedule="auto"`` the trainer hands it each logging window's losses (:meth:`observe_window`); the
    decision state is exported with checkpoints and restored when training resumes.
    """

    def __init__(
        self,
        kd_weight: float = 0.5,
        kd_steps: int | float = 0,
        schedule: str | None = "step",
        decay_start: int | float | None = None,
        schedule_fn: Callable[[int], float] | None = None,
        auto_margin: float = 0.0,
        auto_smoothing: float = 0.5,
        auto_decay_steps: int | float = 0,
    ) -> None:
        self.kd_weight = float(kd_weight)
        self.kd_steps = kd_steps
        self.schedule = schedule
        self.decay_start = decay_start
        self.schedule_fn = schedule_fn  # a user callable; not exported (not JSON), the trainer re-attaches it
        self.auto_margin = float(auto_margin)
        self.auto_smoothing = float(auto_smoothing)
        self.auto_decay_steps = auto_decay_steps
        self.kd = KDState(kd_weight=0.0)
        self.auto: AutoSwitch | None = None  # schedule="auto" only, built when training starts
        self._resolved_start = 0

    @property
    def is_auto(self) -> bool:
        return self.schedule_fn is None and self.schedule == AUTO

    def resolve(self, max_steps: int) -> int:
        """Turn fractions into step counts once ``max_steps`` is known; the first call fixes n_KD for the run,
        later calls return it unchanged. With ``auto`` that first value is the cap; the decision lowers it."""
        if self.kd.kd_steps is None:
            self.kd.kd_steps = resolve_kd_steps(self.kd_steps, max_steps)
            if self.kd_weight > 0 or self.schedule_fn is not None:  # kd_weight=0: KD is off whatever n_KD is
                check_kd_steps(self.kd_steps, max_steps, self.kd.kd_steps)
        if not self.is_auto:
            self._resolved_start = resolve_decay_start(self.decay_start, self.kd.kd_steps)
        elif self.auto is None:
            cap = resolve_kd_steps(self.kd_steps, max_steps)
            window = resolve_kd_steps(self.auto_decay_steps, max_steps)
            if window > cap:
                raise ValueError(
                    f"kd_auto_decay_steps ({window} steps) is longer than the cap kd_steps ({cap} steps); "
                    "shorten the decay or raise kd_steps."
                )
            self.auto = AutoSwitch(
                margin=self.auto_margin, smoothing=self.auto_smoothing, decay_steps=window, cap=cap
            )
        return self.kd.kd_steps

    def weight_at(self, step: int) -> float:
        if self.is_auto:
            start = self.auto.decay_start
            return kd_weight_at(
                step,
                kd_weight=self.kd_weight,
                kd_steps=start + self.auto.decay_steps,
                schedule=AUTO,
                decay_start=start,
            )
        schedule: Schedule = self.schedule_fn if self.schedule_fn is not None else (self.schedule or "step")
        return kd_weight_at(
            step,
            kd_weight=self.kd_weight,
            kd_steps=self.kd.kd_steps,
            schedule=schedule,
            decay_start=self._resolved_start,
        )

    def update(self, step: int) -> None:
        if self.is_auto:
            if self.auto.force(step):
                logger.warning(self.auto.describe())
            self.kd.kd_steps = self.auto.kd_end
        self.kd.kd_weight = self.weight_at(step)
        never = self.schedule_fn is None and self.kd_weight == 0.0  # omega is 0 at every step
        self.kd.kd_done = (never or step >= self.kd.kd_steps) and self.kd.kd_weight == 0.0

    def observe_window(self, step: int, logs: dict[str, float]) -> dict[str, float]:
        """auto: judge one logging window (``loss_ce`` and ``teacher_ce``, already reduced over ranks).

        Returns the entries to add to the log: the smoothed gap while deciding, and ``kd_auto_switch_step`` in
        the first entry after the decision (made here or, at the cap, in ``on_step_begin``).
        """
        auto = self.auto if self.is_auto else None
        if auto is None:
            return {}
        extra: dict[str, float] = {}
        if not auto.decided and "loss_ce" in logs and "teacher_ce" in logs:
            if auto.observe(step, logs["loss_ce"], logs["teacher_ce"]):
                self.kd.kd_steps = auto.kd_end
                logger.warning(auto.describe())
            extra["kd_auto_gap"] = auto.smoothed()
        if auto.decided and not auto.reported:
            extra["kd_auto_switch_step"] = float(auto.switch_step)
            auto.reported = True
        return extra

    def on_train_begin(self, args, state, control, **kwargs):
        self.resolve(state.max_steps)
        if self.is_auto and state.global_step > 0:
            self._restore_auto(state)
        self.update(state.global_step)

    def _restore_auto(self, state) -> None:
        """Continue the decision saved with the checkpoint (the settings themselves come from the arguments)."""
        stored = state.stateful_callbacks.get(type(self).__name__)
        if isinstance(stored, list):
            stored = stored[0] if stored else None
        saved = ((stored or {}).get("attributes") or {}).get("auto_state")
        if not saved:
            logger.warning(
                "kd_schedule=auto: the checkpoint holds no decision state (saved by another schedule?); "
                f"judging afresh from step {state.global_step}."
            )
            return
        self.auto.load_state(saved)

    def on_step_begin(self, args, state, control, **kwargs):
        self.update(state.global_step)

    def on_step_end(self, args, state, control, **kwargs):
        self._close_window_at_save(control)

    def on_epoch_end(self, args, state, control, **kwargs):
        self._close_window_at_save(control)

    def _close_window_at_save(self, control) -> None:
        """auto: log at every checkpoint, so a checkpoint never falls inside a judged window (exact resume)."""
        if self.is_auto and self.auto is not None and not self.auto.decided and control.should_save:
            control.should_log = True

    def state(self) -> dict:
        return {
            "args": {
                "kd_weight": self.kd_weight,
                "kd_steps": self.kd_steps,
                "schedule": None if self.schedule_fn is not None else self.schedule,
                "decay_start": self.decay_start,
                "auto_margin": self.auto_margin,
                "auto_smoothing": self.auto_smoothing,
                "auto_decay_steps": self.auto_decay_steps,
            },
            # read back by on_train_begin from the resumed TrainerState (whatever restore_callback_states_...)
            "attributes": {"auto_state": self.auto.export()} if self.auto is not None else {},
        }

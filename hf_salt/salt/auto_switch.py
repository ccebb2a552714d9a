"""``kd_schedule="auto"``: decide n_KD from the training itself.

SALT's weak points are the bump after the switch and a best n_KD that depends on how far the teacher is from
what the student can reach. The student learns from the teacher while it is behind it; once its cross-entropy
on the training batches is as low as the teacher's on the *same* batches (plus ``margin``), the teacher has
little left to teach and its soft targets start to hold the student back. So: keep omega while the smoothed
gap ``student CE - teacher CE`` is above ``margin``, then decay omega linearly to 0 over ``decay_steps``.

- The gap is judged only at logging steps, from the window sums the trainer already reduces across ranks in
  ``log()``: no per-step host sync, and every rank sees the same numbers, hence makes the same decision.
- Smoothing is a bias-corrected exponential moving average over logging windows, so one noisy window does not
  switch; it is plain float arithmetic on logged values: deterministic.
- ``cap`` (the resolved ``kd_steps``) bounds n_KD: if the student has not caught up by ``cap - decay_steps``,
  the decay starts there, so KD always ends by step ``cap``.
- The whole state is a few numbers, exported with the checkpoint: a resumed run continues the decision (and a
  decay in progress) exactly.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

CAUGHT_UP = "caught_up"
CAP = "cap"


@dataclass
class AutoSwitch:
    """The decision of the automatic schedule and its (exportable) state."""

    margin: float = 0.0  # nats: switch once smoothed (student CE - teacher CE) <= margin
    smoothing: float = 0.5  # EMA coefficient per logging window, in [0, 1); 0 = each window alone
    decay_steps: int = 0  # resolved decay window W (optimizer steps)
    cap: int = 0  # resolved upper bound on n_KD
    # state
    ema: float = 0.0
    count: int = 0
    switch_step: int | None = None  # the first step of the decay (omega still full there)
    reason: str | None = None  # CAUGHT_UP or CAP
    smoothed_gap: float | None = None  # the smoothed gap when the decision was made
    reported: bool = False  # the switch step has been written to a log entry

    @property
    def latest_start(self) -> int:
        """The decay starts here at the latest, so that KD ends by ``cap``."""
        return max(0, self.cap - self.decay_steps)

    @property
    def decided(self) -> bool:
        return self.switch_step is not None

    @property
    def decay_start(self) -> int:
        return self.switch_step if self.switch_step is not None else self.latest_start

    @property
    def kd_end(self) -> int:
        """n_KD: the first step with omega = 0 (the cap until the decision is made)."""
        return self.decay_start + self.decay_steps if self.decided else self.cap

    def smoothed(self) -> float | None:
        if self.count == 0:
            return None
        return self.ema / (1.0 - self.smoothing**self.count)

    def observe(self, step: int, student_ce: float, teacher_ce: float) -> bool:
        """Fold in one logging window (after ``step`` optimizer updates); True if it makes the switch."""
        if self.decided:
            return False
        gap = float(student_ce) - float(teacher_ce)
        if not math.isfinite(gap):
            raise FloatingPointError(
                f"kd_schedule='auto': the logged CE gap is not finite at step {step} "
                f"(student {student_ce}, teacher {teacher_ce}); check the models' dtype and learning rate."
            )
        self.count += 1
        self.ema = self.smoothing * self.ema + (1.0 - self.smoothing) * gap
        smoothed = self.smoothed()
        if smoothed is not None and smoothed <= self.margin:
            self._decide(min(step, self.latest_start), CAUGHT_UP, smoothed)
            return True
        return False

    def force(self, step: int) -> bool:
        """At the start of optimizer step ``step``: start the decay if the cap leaves no more room."""
        if self.decided or step < self.latest_start:
            return False
        self._decide(self.latest_start, CAP, self.smoothed())
        return True

    def _decide(self, step: int, reason: str, smoothed: float | None) -> None:
        self.switch_step, self.reason, self.smoothed_gap = int(step), reason, smoothed

    def describe(self) -> str:
        """One sentence for the log and the model card."""
        if not self.decided:
            return (
                f"kd_schedule=auto: not switched yet (the student CE is still more than {self.margin:g} nats above "
                f"the teacher's); KD ends by step {self.cap} at the latest."
            )
        gap = "n/a" if self.smoothed_gap is None else f"{self.smoothed_gap:.4f}"
        if self.reason == CAUGHT_UP:
            why = (
                f"the smoothed student-minus-teacher CE on the training batches reached {gap} nats "
                f"(<= margin {self.margin:g})"
            )
        else:
            why = f"the cap kd_steps={self.cap} was reached first (smoothed CE gap {gap} nats > margin {self.margin:g})"
        return (
            f"kd_schedule=auto: switched at step {self.switch_step} because {why}; omega decays to 0 over "
            f"{self.decay_steps} steps, KD ends at step {self.kd_end}."
        )

    def export(self) -> dict[str, Any]:
        """JSON-able state (floats round-trip exactly through JSON)."""
        return asdict(self)

    def load_state(self, data: dict[str, Any]) -> None:
        """Continue a saved decision; the settings (margin, smoothing, window, cap) stay those of this run."""
        for name in _STATE_FIELDS:
            setattr(self, name, data[name])


_STATE_FIELDS = ("ema", "count", "switch_step", "reason", "smoothed_gap", "reported")

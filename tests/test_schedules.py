"""omega as a pure function of the optimizer step, and the callback around it."""

from __future__ import annotations

import pytest
from transformers import TrainerControl, TrainerState

from hf_salt.salt.schedules import KDScheduleCallback, kd_weight_at, resolve_decay_start, resolve_kd_steps


def test_step_schedule():
    w = [kd_weight_at(t, kd_weight=0.7, kd_steps=4, schedule="step") for t in range(6)]
    assert w == [0.7, 0.7, 0.7, 0.7, 0.0, 0.0]  # exactly n_KD steps with KD


def test_linear_schedule_with_decay_start():
    w = [kd_weight_at(t, kd_weight=0.8, kd_steps=10, schedule="linear", decay_start=6) for t in range(12)]
    assert w[:7] == [0.8] * 7  # constant until decay_start (inclusive)
    assert w[7:] == pytest.approx([0.8 * 3 / 4, 0.8 * 2 / 4, 0.8 * 1 / 4, 0.0, 0.0])


def test_linear_schedule_default_decays_over_whole_stage():
    w = [kd_weight_at(t, kd_weight=0.5, kd_steps=4, schedule="linear") for t in range(5)]
    assert w == pytest.approx([0.5, 0.375, 0.25, 0.125, 0.0])


def test_linear_ratio_schedule():
    # omega = 0.75 -> r0 = 3; r decays 3, 2, 1, 0 -> omega = 3/4, 2/3, 1/2, 0
    w = [kd_weight_at(t, kd_weight=0.75, kd_steps=3, schedule="linear_ratio") for t in range(4)]
    assert w == pytest.approx([0.75, 2 / 3, 0.5, 0.0])
    with pytest.raises(ValueError, match="kd_weight < 1"):
        kd_weight_at(0, kd_weight=1.0, kd_steps=3, schedule="linear_ratio")


def test_callable_and_bad_schedules():
    assert kd_weight_at(3, kd_weight=0.5, kd_steps=1, schedule=lambda t: 0.1 * t) == pytest.approx(0.3)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        kd_weight_at(20, kd_weight=0.5, kd_steps=1, schedule=lambda t: 0.1 * t)
    with pytest.raises(ValueError, match="schedule must be one of"):
        kd_weight_at(0, kd_weight=0.5, kd_steps=1, schedule="cosine")


def test_resolution_of_fractions():
    assert resolve_kd_steps(0.25, 200) == 50
    assert resolve_kd_steps(30, 200) == 30
    assert resolve_decay_start(0.5, 50) == 25
    assert resolve_decay_start(None, 50) == 0
    with pytest.raises(ValueError, match="kd_decay_start"):
        resolve_decay_start(60, 50)


def test_callback_sets_weight_for_coming_step_and_exports_state():
    cb = KDScheduleCallback(kd_weight=0.6, kd_steps=0.5, schedule="linear", decay_start=None)
    state, control = TrainerState(max_steps=8), TrainerControl()
    cb.on_train_begin(None, state, control)
    assert cb.kd.kd_steps == 4
    seen = []
    for step in range(6):
        state.global_step = step
        cb.on_step_begin(None, state, control)
        seen.append((cb.kd.kd_weight, cb.kd.kd_done))
    assert [w for w, _ in seen] == pytest.approx([0.6, 0.45, 0.3, 0.15, 0.0, 0.0])
    assert [d for _, d in seen] == [False] * 4 + [True] * 2
    # the exported state rebuilds an equivalent callback (what Trainer does on resume)
    restored = KDScheduleCallback(**cb.state()["args"])
    restored.resolve(8)
    assert [restored.weight_at(t) for t in range(6)] == [cb.weight_at(t) for t in range(6)]


def test_schedule_registry(monkeypatch):
    """A registered schedule is selectable by name; its capabilities drive validation."""
    from hf_salt.salt.schedules import SCHEDULES, KDSchedule, get_schedule, register_schedule

    monkeypatch.setitem(SCHEDULES, "square", SCHEDULES["linear"])  # restored after the test
    register_schedule(KDSchedule("square", decay=lambda omega, frac: omega * frac * frac))
    w = [kd_weight_at(t, kd_weight=0.8, kd_steps=4, schedule="square") for t in range(5)]
    assert w == pytest.approx([0.8, 0.8 * 9 / 16, 0.8 * 4 / 16, 0.8 * 1 / 16, 0.0])
    assert not get_schedule("step").uses_decay_start and get_schedule("linear").uses_decay_start
    assert get_schedule("linear_ratio").needs_weight_below_one
    with pytest.raises(ValueError, match="needs kd_weight < 1"):
        kd_weight_at(0, kd_weight=1.0, kd_steps=4, schedule="linear_ratio")

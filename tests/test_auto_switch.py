"""kd_schedule="auto": the decision on logged values, the callback's omega, exact resume, config errors."""

from __future__ import annotations

import json

import pytest
import torch
from datasets import Dataset
from test_salt_trainer import SEQ, _args, _model
from transformers import TrainerControl, TrainerState

from hf_salt.salt.auto_switch import CAP, CAUGHT_UP, AutoSwitch
from hf_salt.salt.config import SALTConfig
from hf_salt.salt.schedules import KDScheduleCallback
from hf_salt.salt.trainer import SALTTrainer


def _reference_smoothed(gaps: list[float], beta: float) -> list[float]:
    """The bias-corrected EMA, written out independently."""
    out = []
    for t in range(1, len(gaps) + 1):
        weights = [(1 - beta) * beta ** (t - i) for i in range(1, t + 1)]
        out.append(sum(w * g for w, g in zip(weights, gaps[:t])) / sum(weights))
    return out


def test_decision_on_a_synthetic_sequence():
    gaps = [1.2, 0.9, 0.5, 0.3, 0.12, 0.05, 0.0, -0.1]  # student CE - teacher CE per logging window
    expected = _reference_smoothed(gaps, 0.5)  # 1.2, 1.0, 0.714, 0.493, 0.297, 0.170, 0.085, ...
    auto = AutoSwitch(margin=0.1, smoothing=0.5, decay_steps=4, cap=100)
    seen = []
    for i, gap in enumerate(gaps):
        switched = auto.observe(step=10 * (i + 1), student_ce=3.0 + gap, teacher_ce=3.0)
        seen.append(auto.smoothed())
        if switched:
            break
    # the raw gap is under the margin first at window 6 (0.05); the smoothed one at window 7 (0.085)
    assert seen == pytest.approx(expected[:7], abs=1e-12)
    assert auto.switch_step == 70 and auto.reason == CAUGHT_UP and auto.kd_end == 74
    assert auto.smoothed_gap == pytest.approx(expected[6], abs=1e-12)
    assert not auto.observe(80, 0.0, 3.0) and auto.switch_step == 70  # decided once, for good
    assert "switched at step 70" in auto.describe() and "margin 0.1" in auto.describe()


def test_one_noisy_window_does_not_switch_and_the_cap_ends_kd():
    auto = AutoSwitch(margin=0.1, smoothing=0.5, decay_steps=4, cap=20)
    for step, gap in [(2, 1.0), (4, 1.0), (6, -0.5), (8, 1.0)]:  # one lucky window at step 6
        assert not auto.observe(step, 2.0 + gap, 2.0)
    assert _reference_smoothed([1.0, 1.0, -0.5], 0.5)[-1] > 0.1  # what it saw at step 6
    assert not auto.force(15) and auto.force(16)  # decay must start at 20 - 4 to end by the cap
    assert (auto.switch_step, auto.reason, auto.kd_end) == (16, CAP, 20)
    assert "cap kd_steps=20" in auto.describe()


def test_no_smoothing_judges_each_window_and_a_non_finite_gap_is_an_error():
    auto = AutoSwitch(margin=0.0, smoothing=0.0, decay_steps=0, cap=50)
    assert not auto.observe(5, 3.01, 3.0) and auto.observe(10, 2.99, 3.0)
    assert auto.kd_end == 10  # no decay window: omega drops at the switch
    with pytest.raises(FloatingPointError, match="not finite at step 3"):
        AutoSwitch(cap=10).observe(3, float("nan"), 3.0)


def _callback(**kw) -> tuple[KDScheduleCallback, TrainerState, TrainerControl]:
    settings = dict(
        kd_weight=0.8, kd_steps=40, schedule="auto", auto_margin=0.0, auto_smoothing=0.0, auto_decay_steps=4
    )
    settings.update(kw)
    cb = KDScheduleCallback(**settings)
    state, control = TrainerState(max_steps=100), TrainerControl()
    cb.on_train_begin(None, state, control)
    return cb, state, control


def _drive(cb: KDScheduleCallback, state: TrainerState, gaps: dict[int, float], steps: range) -> list[float]:
    """on_step_begin for each step; after step s (s updates done) the window ending at s is logged."""
    omegas = []
    for step in steps:
        state.global_step = step
        cb.on_step_begin(None, state, TrainerControl())
        omegas.append(cb.kd.kd_weight)
        done = step + 1
        if done in gaps:
            cb.observe_window(done, {"loss_ce": 3.0 + gaps[done], "teacher_ce": 3.0})
    return omegas


def test_callback_omega_around_the_switch():
    cb, state, _ = _callback()
    omegas = _drive(cb, state, {5: 0.5, 10: -0.01, 15: -0.2}, range(20))
    # decided after 10 updates: full omega through step 10, then 0.8 * 3/4, 2/4, 1/4, and 0 from step 14
    assert omegas == pytest.approx([0.8] * 11 + [0.6, 0.4, 0.2] + [0.0] * 6)
    assert cb.kd.kd_steps == 14 and cb.kd.kd_done
    # the switch is written once, in the entry that decides it
    cb2, state2, _ = _callback()
    entries = []
    for step in (5, 10, 15):
        state2.global_step = step
        entries.append(cb2.observe_window(step, {"loss_ce": 3.5 if step == 5 else 2.0, "teacher_ce": 3.0}))
    assert entries == [{"kd_auto_gap": 0.5}, {"kd_auto_gap": -1.0, "kd_auto_switch_step": 10.0}, {}]
    # no teacher in the window (nothing to compare): nothing judged
    cb3, _, _ = _callback()
    assert cb3.observe_window(5, {"loss_ce": 1.0}) == {} and cb3.auto.count == 0


def test_callback_state_survives_json_and_resumes_mid_decision_and_mid_decay():
    gaps = {4: 0.6, 8: 0.3, 12: 0.1, 16: -0.05, 20: -0.3}
    full_cb, full_state, _ = _callback(auto_smoothing=0.5)
    full = _drive(full_cb, full_state, gaps, range(30))
    assert full_cb.auto.switch_step == 20  # smoothed: 0.6, 0.4, 0.229, 0.08, -0.077
    for stop in (9, 22):  # after a judged window but before the switch; in the decay (steps 20-23)
        cb, state, _ = _callback(auto_smoothing=0.5)
        _drive(cb, state, gaps, range(stop))
        saved = json.loads(json.dumps({"KDScheduleCallback": cb.state()}))
        resumed = KDScheduleCallback(**saved["KDScheduleCallback"]["args"])
        state = TrainerState(max_steps=100, global_step=stop)
        state.stateful_callbacks = saved
        resumed.on_train_begin(None, state, TrainerControl())
        rest = _drive(resumed, state, gaps, range(stop, 30))
        assert rest == full[stop:], stop
        assert resumed.auto.export() == full_cb.auto.export()


def test_checkpoint_steps_close_the_window():
    cb, _, _ = _callback()
    control = TrainerControl(should_save=True)
    cb.on_step_end(None, TrainerState(), control)
    assert control.should_log  # a checkpoint never lands inside a judged window
    fixed = KDScheduleCallback(kd_weight=0.5, kd_steps=10)
    control = TrainerControl(should_save=True)
    fixed.on_step_end(None, TrainerState(), control)
    assert not control.should_log


def test_config_validation():
    ok = SALTConfig(output_dir="x", kd_schedule="auto", kd_steps=0.5, kd_auto_decay_steps=0.1)
    assert ok.kd_auto_decay_steps == 0.1 and ok.kd_steps == 0.5
    for kwargs, match in [
        (dict(kd_steps=0), "kd_steps > 0"),
        (dict(kd_weight=0.0), "kd_weight > 0"),
        (dict(kd_decay_start=0.5), "kd_auto_decay_steps"),
        (dict(logging_strategy="epoch"), "logging_strategy='steps'"),
        (dict(kd_auto_smoothing=1.0), "kd_auto_smoothing"),
        (dict(kd_auto_margin=float("inf")), "kd_auto_margin"),
        (dict(kd_steps=10, kd_auto_decay_steps=20), "kd_auto_decay_steps"),
        (dict(kd_auto_decay_steps=1.5), "kd_auto_decay_steps"),
    ]:
        with pytest.raises(ValueError, match=match):
            SALTConfig(output_dir="x", kd_schedule="auto", **kwargs)
    with pytest.raises(ValueError, match="longer than the cap"):  # fractions: known when training starts
        KDScheduleCallback(kd_steps=0.1, schedule="auto", auto_decay_steps=0.2).resolve(100)


def _learnable_data() -> Dataset:
    """8 distinct tokens: the student learns their frequencies within a few steps, the random teacher cannot."""
    ids = torch.randint(0, 8, (64, SEQ), generator=torch.Generator().manual_seed(0))
    return Dataset.from_dict({"input_ids": ids.tolist(), "labels": ids.tolist()})


def _auto_run(out, resume=None, **kw) -> SALTTrainer:
    args = _args(
        out,
        max_steps=16,
        kd_steps=12,
        kd_schedule="auto",
        kd_auto_margin=-0.9,  # the student must get 0.9 nats below the (random) teacher
        kd_auto_smoothing=0.5,
        kd_auto_decay_steps=4,
        logging_steps=2,
        save_strategy="steps",
        save_steps=3,  # not a multiple of logging_steps: checkpoints at 3 and 9 fall inside logging windows
        learning_rate=1e-2,
        **kw,
    )
    trainer = SALTTrainer(
        model=_model(32, 0), args=args, teacher_model=_model(16, 1), train_dataset=_learnable_data()
    )
    trainer.train(resume_from_checkpoint=resume)
    return trainer


def _entries(trainer: SALTTrainer, key: str) -> dict[int, float]:
    return {r["step"]: r[key] for r in trainer.state.log_history if key in r}


def test_resume_mid_decision_and_mid_decay_is_exact(tmp_path):
    full = _auto_run(tmp_path / "full")
    switch = full.kd_callback.auto.switch_step
    # smoothed gap > -0.9 at the logs of steps 2, 3 and 4, <= -0.9 at step 6: decay over steps 6-9
    assert switch == 6 and full.kd_callback.auto.reason == CAUGHT_UP and full.kd_steps == 10
    assert sorted(_entries(full, "kd_auto_gap")) == [
        2,
        3,
        4,
        6,
    ]  # step 3: the log closing the checkpoint's window
    assert _entries(full, "kd_auto_switch_step") == {6: 6.0}
    assert [_entries(full, "kd_weight")[s] for s in (8, 10, 12)] == pytest.approx(
        [0.5 * 7 / 8, 0.5 * 3 / 8, 0.0]
    )
    full.create_model_card()
    card = (tmp_path / "full" / "README.md").read_text()
    assert "switched at step 6" in card and "KD ends at step 10" in card
    for ckpt in (3, 9):  # mid-decision (2 windows judged), mid-decay (omega 0.125 at step 9)
        resumed = _auto_run(  # at 9 also through the Trainer's own callback restore (a rebuilt callback)
            tmp_path / f"resumed-{ckpt}",
            resume=str(tmp_path / "full" / f"checkpoint-{ckpt}"),
            restore_callback_states_from_checkpoint=ckpt == 9,
        )
        for (name, a), (_, b) in zip(full.model.named_parameters(), resumed.model.named_parameters()):
            assert torch.equal(a, b), (ckpt, name)
        assert resumed.kd_callback.auto.export() == full.kd_callback.auto.export()
        # while deciding, every judged window is the same as in the uninterrupted run (after the switch, a
        # checkpoint may split a logging window, as for any Trainer run: the logs then differ, not the weights)
        keys = ("kd_auto_gap", "kd_auto_switch_step") + (("kd_weight", "loss_ce") if ckpt < switch else ())
        for key in keys:
            assert _entries(resumed, key) == _entries(full, key), (ckpt, key)

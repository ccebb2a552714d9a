"""The payoff benchmark's measurement: the target from the baseline's last evaluations, wall-clock priced by
interleaved step costs, losses at equal steps, the teacher-continue control, and a claimed fraction confirmed by
a run of that length (benchmarks/confirm_fraction.py)."""

from __future__ import annotations

import json

import pytest
import yaml

from hf_salt.experiments import metrics


def _run(losses, *, steps=(0, 10, 20, 30, 40), uses_teacher=False, kd_steps=0, step_kind="student"):
    return {
        "curve": {"step": list(steps), "wall": [0.0] * len(steps), "loss": list(losses)},
        "train_time_s": 1.0,
        "uses_teacher": uses_teacher,
        "offline_teacher_s": 0.0,
        "kd_steps": kd_steps,
        "step_kind": step_kind,
    }


BASE = _run([9.0, 6.0, 5.0, 4.2, 4.0])
COSTS = {"student": 2.0, "kd": 3.0, "teacher": 0.5}


def test_target_is_the_mean_of_the_baselines_last_evaluations():
    assert metrics.target_loss(BASE, 2) == pytest.approx(4.1)
    assert metrics.target_loss(BASE, 1) == 4.0
    # the baseline crosses 4.1 halfway between steps 30 (4.2) and 40 (4.0): it is 1.0 of itself
    base = metrics.run_metrics(BASE, BASE, 0.0, costs=COSTS, target_evals=2)
    assert base["step"] == pytest.approx(35.0) and base["step_frac"] == pytest.approx(1.0)
    assert base["wall_frac"] == pytest.approx(1.0)


def test_wall_clock_is_priced_by_step_kind():
    # SALT with 10 KD steps crosses 4.1 at step 20 (5.0 -> 4.0 between 10 and 20: 4.1 at 19)
    salt = _run([9.0, 5.0, 4.0, 3.9, 3.8], uses_teacher=True, kd_steps=10)
    m = metrics.run_metrics(salt, BASE, 99.0, costs=COSTS, teacher_steps=20, target_evals=2)
    assert m["step"] == pytest.approx(19.0)
    assert m["step_frac"] == pytest.approx(19.0 / 35.0)
    kd_then_plain = 10 * 3.0 + 9 * 2.0  # KD steps at the KD price, the rest at the student's
    assert m["wall_frac"] == pytest.approx(kd_then_plain / (35.0 * 2.0))
    # the teacher's training at the teacher's price, not the run's own (noisy) timer: 20 x 0.5 s
    assert m["wall_frac_with_teacher"] == pytest.approx((kd_then_plain + 10.0) / 70.0)
    # the teacher-continue control pays the teacher's step price for every step
    tc = _run([4.5, 4.3, 4.15, 4.05, 4.0], uses_teacher=True, step_kind="teacher")
    m = metrics.run_metrics(tc, BASE, 99.0, costs=COSTS, teacher_steps=20, target_evals=2)
    assert m["step"] == pytest.approx(25.0)
    assert m["wall_frac"] == pytest.approx(25 * 0.5 / 70.0)
    # equal steps: the arm minus the baseline, interpolated
    assert m["at_steps"][0.5] == pytest.approx(4.15 - 5.0)
    assert m["at_steps"][1.0] == pytest.approx(0.0)


def test_hypercloning_is_judged_against_the_no_growth_control():
    results = {
        "config": {"arms": ["baseline", "hypercloning", "teacher-continue"], "seeds": [0, 1], "teacher_seed": 7,
                   "teacher_per_seed": False, "target_evals": 1, "teacher_steps": 20},
        "teachers": {"7": {"train_time_s": 1.0}},
        "runs": {
            str(s): {
                "baseline": BASE,
                "hypercloning": _run([4.6, 4.3, 4.0, 3.9, 3.8], uses_teacher=True),  # reaches 4.0 at step 20
                "teacher-continue": _run([4.6, 4.4, 4.3, 4.2, 4.1], uses_teacher=True, step_kind="teacher"),
            }
            for s in (0, 1)
        },
        "step_costs": COSTS,
    }  # fmt: skip
    rows = metrics.aggregate(results)
    verdicts = {t: (text, met) for t, text, met in metrics.check_targets(rows)}
    text, met = verdicts["hypercloning: ahead of teacher-continue"]
    assert met is True  # the control never reaches the target
    assert "final loss hypercloning − teacher-continue = -0.300" in text
    table = metrics.equal_steps_table(rows)
    hc_row = next(line for line in table.splitlines() if line.startswith("| hypercloning |"))
    # at 50 percent (step 20): 4.0 - 5.0; at 100 percent: 3.8 - 4.0
    assert hc_row.split(" | ")[2].startswith("-1.000 ± 0.000") and hc_row.split(" | ")[4].startswith("-0.200")
    assert "| baseline |" not in table


def test_payoff_arms_end_to_end_then_a_confirming_run(tmp_path):
    """baseline, hypercloning and teacher-continue at a tiny budget through the CLI, priced step costs, a
    baseline that does not depend on the teacher, then benchmarks/confirm_fraction.py on the result."""
    from hf_salt.cli.main import main

    cfg = {
        "corpus": "tinyshakespeare", "max_train_blocks": 400, "teacher_preset": "llama-tiny",
        "student_preset": "llama-tiny-2x", "block_size": 32, "max_steps": 8, "teacher_steps": 10, "batch_size": 4,
        "eval_every": 4, "eval_blocks": 8, "warmup_steps": 1, "seeds": [0], "hypercloning_snr_db": 10.0,
        "arms": ["baseline", "hypercloning", "teacher-continue"], "target_evals": 2, "step_cost_rounds": 1,
        "disable_tqdm": True, "output_dir": str(tmp_path / "run"), "results_md": "",
    }  # fmt: skip
    config = tmp_path / "payoff.yaml"
    config.write_text(yaml.safe_dump(cfg))
    assert main(["benchmark", "--config", str(config)]) == 0
    out = tmp_path / "run"
    results = json.loads((out / "results.json").read_text())
    runs = results["runs"]["0"]
    teacher = results["teachers"]["1000" if "1000" in results["teachers"] else "0"]
    # the control is the teacher itself, trained on: it starts at the teacher's loss and is priced as the teacher
    assert runs["teacher-continue"]["curve"]["loss"][0] == pytest.approx(teacher["final_loss"], abs=1e-4)
    assert (
        runs["teacher-continue"]["step_kind"] == "teacher" and runs["hypercloning"]["step_kind"] == "student"
    )
    costs = json.loads((out / "step_costs.json").read_text())
    assert all(costs[k] > 0 for k in ("student", "kd", "teacher")) and len(costs["rounds"]["kd"]) == 1
    report = (out / f"reproduction_{results['config']['label']}.md").read_text()
    assert "mean of the baseline's last 2 validation losses" in report
    assert "hypercloning: ahead of teacher-continue" in report and "Δ at 50% of the steps" in report
    assert "priced by the interleaved step costs" in report
    # a baseline does not depend on the teacher: another teacher budget reuses it, the teacher arms re-run
    before = runs["baseline"]["curve"]
    log = tmp_path / "again.log"
    argv = ["benchmark", "--config", str(config), "--teacher_steps", "12", "--arms", "baseline"]
    assert main(argv) == 0
    again = json.loads((out / "results.json").read_text())["runs"]["0"]["baseline"]
    assert again["curve"] == before and "teacher" not in log.name  # reused, not retrained
    assert again["key"] == runs["baseline"]["key"]

    import confirm_fraction  # benchmarks/ is on the path (tests/conftest.py)

    confirm = confirm_fraction.main(
        ["--config", str(config), "--arm", "hypercloning", "--seed", "0", "--fraction", "0.5"]
    )
    assert confirm["steps"] == 4 and confirm["of_steps"] == 8
    assert confirm["curve"]["step"][-1] == 4  # its own, shorter schedule
    assert confirm["target_loss"] == pytest.approx(metrics.target_loss(runs["baseline"], 2))
    assert confirm["reached"] == (confirm["final_loss"] <= confirm["target_loss"])
    assert (out / "confirm" / "hypercloning-seed0-4.json").exists()
    # a run on other data, or with another teacher, is refused by name before any training
    argv = ["--config", str(config), "--arm", "hypercloning", "--seed", "0", "--fraction", "0.5"]
    with pytest.raises(SystemExit, match="baseline.json was trained with other settings"):
        confirm_fraction.main([*argv, "--corpus", "wikitext-2"])
    cfg["teacher_steps"] = 12  # the teacher saved in the run's folder is the 10-step one
    config.write_text(yaml.safe_dump(cfg))
    with pytest.raises(SystemExit, match="teacher-seed.* holds no teacher trained with these settings"):
        confirm_fraction.main(argv)

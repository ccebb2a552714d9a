"""The reproduction benchmark (`hf_salt.experiments.benchmark`, driven by `benchmarks/reproduce.py` and
`hf-salt benchmark`): its metric code against hand-computed values, and a tiny end-to-end run of every arm through
`hf-salt benchmark` so the engine cannot rot."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from hf_salt.experiments import ARMS, ArmContext, engine, metrics, report
from hf_salt.experiments import benchmark as bench_mod


# ------------------------------------------------------------------------------------------ first crossing
def test_first_crossing_interpolates_between_bracketing_evals():
    steps, losses = [0, 10, 20, 30], [5.0, 4.0, 3.0, 2.5]
    # 3.5 lies half-way between 4.0 (step 10) and 3.0 (step 20)
    assert metrics.first_crossing(steps, losses, 3.5) == pytest.approx(15.0)
    # 2.8 between 3.0 (step 20) and 2.5 (step 30): 20 + (3.0 - 2.8) / 0.5 * 10 = 24
    assert metrics.first_crossing(steps, losses, 2.8) == pytest.approx(24.0)
    assert metrics.first_crossing(steps, losses, 3.0) == pytest.approx(20.0)  # exact hit
    assert metrics.first_crossing(steps, losses, 2.0) is None  # never reached


def test_first_crossing_first_eval_rule_and_first_of_several_crossings():
    assert metrics.first_crossing([0, 10], [2.0, 1.0], 3.0) == 0.0  # already below at the first evaluation
    # the curve dips below, rises, dips again: the FIRST crossing counts (between step 10 and 20)
    steps, losses = [0, 10, 20, 30, 40], [4.0, 3.2, 2.8, 3.1, 2.0]
    assert metrics.first_crossing(steps, losses, 3.0) == pytest.approx(15.0)


def test_first_crossing_on_wall_clock_and_bad_input():
    walls, losses = [0.0, 1.5, 4.5], [6.0, 5.0, 3.0]
    assert metrics.first_crossing(walls, losses, 4.0) == pytest.approx(3.0)  # 1.5 + 0.5 * 3.0
    with pytest.raises(ValueError, match="differ in length"):
        metrics.first_crossing([0, 1], [1.0], 0.5)


# ------------------------------------------------------------------------------------------ spread
def test_spread_is_mean_sample_std_min_max():
    s = metrics.spread([1.0, 2.0, 3.0])
    assert (s.mean, s.std, s.min, s.max, s.n) == (2.0, 1.0, 1.0, 3.0, 3)
    two = metrics.spread([0.6, 0.8])
    assert two.mean == pytest.approx(0.7)
    assert two.std == pytest.approx(math.sqrt(0.02))  # ddof=1: sqrt(((0.1)^2 + (0.1)^2) / 1)
    assert two.fmt(2) == "0.70 ± 0.14 [0.60–0.80]"
    one = metrics.spread([0.5])
    assert one.std == 0.0 and one.fmt(2) == "0.50"
    with pytest.raises(ValueError):
        metrics.spread([])


# ------------------------------------------------------------------------------------------ per-seed metrics
def _run(losses, walls, *, train_time, uses_teacher=False, offline=0.0, steps=(0, 10, 20, 30, 40)):
    return {
        "curve": {"step": list(steps), "wall": list(walls), "loss": list(losses)},
        "train_time_s": train_time,
        "uses_teacher": uses_teacher,
        "offline_teacher_s": offline,
        "kd_weight": {"step": [], "weight": []},
    }


BASE = _run([9.0, 6.0, 5.0, 4.5, 4.0], [0, 10, 20, 30, 40], train_time=40.0)
SALT = _run([9.0, 5.0, 4.0, 3.8, 3.7], [0, 15, 27, 37, 47], train_time=47.0, uses_teacher=True, offline=2.0)


def test_run_metrics_against_hand_computed_values():
    m = metrics.run_metrics(SALT, BASE, teacher_train_s=10.0)
    assert m["target_loss"] == 4.0
    assert m["step"] == pytest.approx(20.0) and m["step_frac"] == pytest.approx(0.5)
    # wall at the crossing = 27 s; + 2 s offline scoring = 29 s; / baseline's 40 s
    assert m["wall_frac"] == pytest.approx(29.0 / 40.0)
    assert m["wall_frac_with_teacher"] == pytest.approx(39.0 / 40.0)  # + 10 s teacher training
    assert m["final_loss"] == 3.7 and m["final_ppl"] == pytest.approx(math.exp(3.7))
    assert m["final_minus_baseline"] == pytest.approx(-0.3)
    base = metrics.run_metrics(BASE, BASE, teacher_train_s=10.0)  # the baseline reaches its own end at 1.0
    assert base["step_frac"] == 1.0 and base["wall_frac"] == 1.0 and base["wall_frac_with_teacher"] == 1.0
    never = metrics.run_metrics(_run([9, 8, 7, 6, 5], [0, 1, 2, 3, 4], train_time=4.0), BASE, 10.0)
    assert never["step_frac"] is None and never["wall_frac"] is None


def _synthetic_results():
    runs = {
        "0": {"baseline": BASE, "salt": SALT},
        "1": {
            "baseline": _run([9.0, 6.2, 5.2, 4.6, 4.2], [0, 10, 20, 30, 40], train_time=40.0),
            # crosses 4.2 between step 20 (4.4) and 30 (4.0): 25 -> 0.625
            "salt": _run([9.0, 5.2, 4.4, 4.0, 3.9], [0, 15, 27, 37, 47], train_time=47.0, uses_teacher=True),
        },
    }
    cfg = {
        "arms": ["baseline", "salt"],
        "seeds": [0, 1],
        "teacher_seed": 7,
        "teacher_per_seed": False,
        "label": "synthetic",
        "student_preset": "s",
        "teacher_preset": "t",
        "corpus": "c",
        "max_steps": 40,
        "batch_size": 2,
        "gradient_accumulation_steps": 1,
        "block_size": 8,
        "kd_weight": 0.5,
        "kd_temperature": 1.0,
    }
    teacher = {"seed": 7, "train_time_s": 10.0, "final_loss": 5.0, "preset": "t", "steps": 40}
    return {"config": cfg, "runs": runs, "teachers": {"7": teacher}, "kd_steps": 8}


def test_aggregate_table_and_targets_on_synthetic_curves(tmp_path):
    results = _synthetic_results()
    rows = metrics.aggregate(results)
    salt = next(r for r in rows if r["arm"] == "salt")
    assert salt["step_frac"] == [pytest.approx(0.5), pytest.approx(0.625)]
    assert salt["final_minus_baseline"].mean == pytest.approx(((3.7 - 4.0) + (3.9 - 4.2)) / 2)
    table = metrics.markdown_table(rows, results["teachers"]["7"])
    assert "| salt | 2 | 0.56 ± 0.09 [0.50–0.62]" in table
    targets = {t: met for t, _, met in metrics.check_targets(rows)}
    assert targets["salt: steps ≤ 0.70"] is True
    assert targets["salt: ends below baseline"] is True
    assert targets["hypercloning: steps ≤ 0.45"] is None  # not run
    assert not any(t.startswith("salt-linear") for t in targets)  # smooth schedules are judged only when run
    walls = [m["wall_frac"] for m in salt["per_seed"]]
    for limit in (min(walls) - 0.01, max(walls) + 0.01):  # the wall-clock target is the config's, not fixed
        judged = {t: met for t, _, met in metrics.check_targets(rows, salt_wall=limit)}
        assert judged[f"salt: wall-clock ≤ {limit:.2f} (teacher forwards included)"] is (
            sum(walls) / 2 <= limit
        )
    png = report.plot_results(results, tmp_path / "curves.png")
    assert png.stat().st_size > 5000


def test_targets_judge_every_salt_schedule_that_ran():
    results = _synthetic_results()
    results["config"]["arms"] = ["baseline", "salt", "salt-linear_ratio"]
    slow = _run([9.0, 8.0, 6.0, 4.5, 3.95], [0, 12, 24, 36, 48], train_time=48.0, uses_teacher=True)
    for seed in ("0", "1"):
        results["runs"][seed]["salt-linear_ratio"] = slow
    targets = {t: met for t, _, met in metrics.check_targets(metrics.aggregate(results))}
    assert targets["salt: steps ≤ 0.70"] is True
    assert targets["salt-linear_ratio: steps ≤ 0.70"] is False  # crosses 4.0 / 4.2 late or never
    assert targets["salt-linear_ratio: ends below baseline"] is True
    assert "salt-linear: steps ≤ 0.70" not in targets


def test_update_results_md_only_touches_its_block(tmp_path):
    md = tmp_path / "RESULTS.md"
    md.write_text("# R\n\n## Reproduction: x\n\n_Not measured yet._\n\n## SALT step cost\n\nkeep me\n")
    report.update_results_md(md, "reproduce:cpu", "table one")
    text = md.read_text()
    assert "_Not measured yet._" not in text and "keep me" in text
    assert text.index("table one") < text.index("## SALT step cost")
    report.update_results_md(md, "reproduce:cpu", "table two")
    report.update_results_md(md, "reproduce:sweep", "sweep")
    text = md.read_text()
    assert "table one" not in text and text.count("table two") == 1 and "sweep" in text
    assert text.endswith("## SALT step cost\n\nkeep me\n")


def test_ordered_indices_is_a_deterministic_concatenation_of_permutations():
    a = engine.ordered_indices(5, 12, seed=3)
    assert len(a) == 12 and np.array_equal(a, engine.ordered_indices(5, 12, seed=3))
    assert sorted(a[:5]) == list(range(5)) and sorted(a[5:10]) == list(range(5))
    assert not np.array_equal(a, engine.ordered_indices(5, 12, seed=4))


def test_config_validation_messages():
    with pytest.raises(ValueError, match="Unknown arm"):
        bench_mod.BenchmarkConfig(arms=["nope"])
    with pytest.raises(ValueError, match="multiple of eval_every"):
        bench_mod.BenchmarkConfig(max_steps=10, eval_every=3)
    assert bench_mod.BenchmarkConfig(arms=["salt"]).arms == ["baseline", "salt"]
    assert bench_mod.BenchmarkConfig(max_steps=100, kd_steps=0.2).resolved_kd_steps == 20


# ------------------------------------------------------------------------------------------ end to end
def test_every_arm_end_to_end_through_the_cli(tmp_path):
    """All 8 arms, 1 seed, 8 steps of 4 x 32 tokens of llama-tiny-2x: the whole pipeline in seconds."""
    from hf_salt.cli.main import main

    md = tmp_path / "RESULTS.md"
    md.write_text("# R\n\n## Reproduction: x\n\n_Not measured yet._\n\n## Other\n\nother\n")
    out = tmp_path / "run"
    argv = [
        "benchmark", "--corpus", "tinyshakespeare", "--max_train_blocks", "400",
        "--teacher_preset", "llama-tiny", "--student_preset", "llama-tiny-2x", "--block_size", "32",
        "--max_steps", "8", "--teacher_steps", "8", "--batch_size", "4", "--eval_every", "4",
        "--eval_blocks", "8", "--warmup_steps", "1", "--seeds", "0", "--kd_steps", "0.25", "--kd_weight", "0.5",
        "--hypercloning_snr_db", "10", "--hc_warmup_steps", "2", "--disable_tqdm", "true",
        "--output_dir", str(out), "--report_dir", str(tmp_path), "--results_md", str(md), "--label", "tiny",
    ]  # fmt: skip
    assert main(argv) == 0
    results = json.loads((out / "results.json").read_text())
    runs = results["runs"]["0"]
    assert list(runs) == list(ARMS)
    for arm, run in runs.items():
        assert run["curve"]["step"] == [0, 4, 8], arm
        assert all(math.isfinite(v) for v in run["curve"]["loss"]), arm
        assert run["train_time_s"] > 0
    assert runs["salt"]["kd_steps"] == 2 and runs["rkd"]["kd_steps"] == 8
    assert runs["salt"]["kd_weight"]["weight"][:3] == [0.5, 0.5, 0.0]
    assert runs["salt-linear"]["kd_weight"]["weight"][:3] == [0.5, 0.25, 0.0]
    # salt-auto: its cap is kd_steps, as in SALTConfig (0.25 x 8 = 2 steps), decay round(0.1 * 8) = 1 step (the
    # default kd_auto_decay_steps); the decision is recorded
    auto = runs["salt-auto"]["kd_auto"]
    assert auto["cap"] == 2 and auto["decay_steps"] == 1 and auto["reason"] in ("caught_up", "cap")
    assert runs["salt-auto"]["kd_steps"] == auto["switch_step"] + 1 <= 2
    assert runs["salt-auto"]["kd_weight"]["weight"][: auto["switch_step"] + 2] == [0.5] * (
        auto["switch_step"] + 1
    ) + [0.0]
    assert runs["salt_ds"]["offline_teacher_s"] > 0  # scoring is charged to the arm
    teacher_loss = results["teachers"]["0"]["final_loss"]
    # a clone computes the teacher's function: it starts at the teacher's validation loss
    assert runs["hypercloning"]["curve"]["loss"][0] == pytest.approx(teacher_loss, abs=1e-4)
    assert runs["hypercloning"]["warmup_steps"] == 2 and runs["baseline"]["warmup_steps"] == 1
    # same init: baseline and SALT start from the same weights (evaluated by different loss code: ~1e-6)
    assert runs["salt"]["curve"]["loss"][0] == pytest.approx(runs["baseline"]["curve"]["loss"][0], abs=1e-5)
    text = md.read_text()
    assert "| hypercloning+salt |" in text and "other" in text and "_Not measured yet._" not in text
    assert (tmp_path / "reproduction_tiny.png").stat().st_size > 5000
    # resuming reuses every run (no training): same numbers
    assert main(argv) == 0
    again = json.loads((out / "results.json").read_text())
    assert again["runs"]["0"]["salt"]["curve"] == runs["salt"]["curve"]
    # a saved run whose key is not this config's (another n_KD) is trained again, not reused
    saved = out / "runs" / "seed0" / "salt.json"
    record = json.loads(saved.read_text())
    saved.write_text(json.dumps({**record, "key": "another-config", "saved_with": "other"}))
    assert main(argv) == 0
    again = json.loads((out / "results.json").read_text())
    assert "saved_with" not in again["runs"]["0"]["salt"]
    retrained = again["runs"]["0"]["salt"]["curve"]
    assert (
        retrained["loss"] == runs["salt"]["curve"]["loss"]
    )  # retrained: same losses (the wall-clock differs)


def test_same_data_order_in_every_arm(tmp_path):
    """Each seed fixes one order; an in-order trainer reads exactly it, and SALT_DS's stage 2 reads the
    baseline's rows for the same steps."""
    from transformers import Trainer, TrainingArguments

    from hf_salt.zoo import build_model

    cfg = bench_mod.BenchmarkConfig(
        corpus="tinyshakespeare", max_train_blocks=200, teacher_preset="llama-tiny",
        student_preset="llama-tiny-2x", block_size=32, max_steps=8, batch_size=4, eval_every=4,
        eval_blocks=8, kd_steps=0.25, salt_ds_pool=2, output_dir=str(tmp_path),
    )  # fmt: skip
    bench = bench_mod.Benchmark(cfg)
    bench.load_data()
    order = bench.order(0, cfg.max_steps)
    assert len(order) == 32
    expected = bench.train.select(engine.ordered_indices(len(bench.train), 32, 0).tolist())["input_ids"]
    assert order["input_ids"] == expected
    # the data-order hook: another order function, the same machinery (here: the corpus in its own order)
    natural = bench_mod.Benchmark(cfg, order=lambda n_rows, n, seed: np.arange(n) % n_rows)
    natural.train = bench.train
    assert natural.order(0, cfg.max_steps)["input_ids"] == bench.train["input_ids"][:32]
    # the engine's training arguments read the rows in the order it fixed (a public TrainingArguments field)
    args = bench.training_args(TrainingArguments, tmp_path / "t", steps=8, lr=1e-3, warmup=0, seed=0)
    assert args.train_sampling_strategy == "sequential"
    trainer = Trainer(
        model=build_model("llama-tiny", seed=0), args=args, train_dataset=order, eval_dataset=bench.validation
    )
    first = next(iter(trainer.get_train_dataloader()))
    assert first["input_ids"].tolist() == order["input_ids"][:4]

    teacher = build_model("llama-tiny", seed=1).eval()
    ctx = ArmContext(cfg, bench.tokenizer, order, bench.validation, teacher, 0)
    setup = ARMS["salt_ds"].build(ctx)
    kwargs, scoring_s, uses_teacher = (
        setup.trainer_kwargs,
        setup.offline_teacher_s,
        ARMS["salt_ds"].uses_teacher,
    )
    from hf_salt.salt_ds import SALTDSPlan, SALTDSSampler, SALTDSSource

    assert setup.salt["train_sampling_strategy"] == "sequential" and uses_teacher and scoring_s > 0
    source = SALTDSSource(order, kwargs["salt_ds_pool"])
    plan = SALTDSPlan(kd_steps=2, global_batch_size=4, steps_per_epoch=8)
    rows = [source[i]["input_ids"] for i in SALTDSSampler(source, plan, seed=0, shuffle=False)]
    assert len(rows) == 32 and all(r in kwargs["salt_ds_pool"]["input_ids"] for r in rows[:8])
    assert rows[8:] == order["input_ids"][8:]  # stage 2 = the baseline's rows for steps 2..7


def test_default_paths_write_into_the_run_folder_not_the_shipped_results(tmp_path, monkeypatch):
    """`hf-salt benchmark --config benchmarks/configs/cpu.yaml` (a user's run, default paths) writes its table,
    plot and RESULTS.md into its output folder; the shipped files change only when asked."""
    from pathlib import Path

    from hf_salt.cli.main import main

    config = Path(__file__).resolve().parents[1] / "benchmarks" / "configs" / "cpu.yaml"
    monkeypatch.chdir(tmp_path)
    shipped = {
        name: f"shipped {name}" for name in ("RESULTS.md", "reproduction_cpu.md", "reproduction_cpu.png")
    }
    (tmp_path / "benchmarks").mkdir()
    for name, text in shipped.items():
        (tmp_path / "benchmarks" / name).write_text(text)
    argv = [
        "benchmark", "--config", str(config), "--corpus", "tinyshakespeare", "--max_train_blocks", "64",
        "--teacher_preset", "llama-tiny", "--student_preset", "llama-tiny-2x", "--block_size", "16",
        "--max_steps", "2", "--teacher_steps", "2", "--batch_size", "2", "--eval_every", "2", "--eval_blocks", "2",
        "--warmup_steps", "0", "--seeds", "0", "--workers", "1", "--arms", "baseline",
    ]  # fmt: skip
    assert main(argv) == 0
    for name, text in shipped.items():
        assert (tmp_path / "benchmarks" / name).read_text() == text, name
    run = tmp_path / "outputs" / "benchmark-cpu"  # cpu.yaml's output_dir
    assert "| baseline | 1 |" in (run / "RESULTS.md").read_text()
    assert "| baseline | 1 |" in (run / "reproduction_cpu.md").read_text()
    assert (run / "reproduction_cpu.png").stat().st_size > 1000
    # asked for: the shipped RESULTS.md gets the block (other text kept), the table goes to benchmarks/
    assert main([*argv, "--report_dir", "benchmarks", "--results_md", "benchmarks/RESULTS.md"]) == 0
    text = (tmp_path / "benchmarks" / "RESULTS.md").read_text()
    assert text.startswith("shipped RESULTS.md") and "<!-- reproduce:cpu:begin -->" in text
    assert "| baseline | 1 |" in (tmp_path / "benchmarks" / "reproduction_cpu.md").read_text()

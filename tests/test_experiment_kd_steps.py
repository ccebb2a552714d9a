"""n_KD in the experiment configs: `kd_steps` as in SALTConfig (steps or a fraction of max_steps), as a keyword,
a flag and a config-file key."""

from __future__ import annotations

import json

import pytest

from hf_salt.cli import benchmark as bench_cli
from hf_salt.cli import demo as demo_cli
from hf_salt.cli.parser import parse_args
from hf_salt.experiments import demo, report
from hf_salt.experiments.benchmark import Benchmark, BenchmarkConfig


def test_int_kd_steps_are_steps():
    cfg = BenchmarkConfig(max_steps=100, kd_steps=30)
    assert cfg.kd_steps == 30 and isinstance(cfg.kd_steps, int) and cfg.resolved_kd_steps == 30
    from_flag = BenchmarkConfig(max_steps=100, kd_steps=30.0)  # what HfArgumentParser passes for "30"
    assert from_flag.kd_steps == 30 and isinstance(from_flag.kd_steps, int)
    assert BenchmarkConfig(max_steps=100, kd_steps=100).resolved_kd_steps == 100
    # a step count and a fraction are different configs: their saved runs are not mixed up
    assert Benchmark(cfg).run_key("salt") != Benchmark(BenchmarkConfig(max_steps=100, kd_steps=0.3)).run_key(
        "salt"
    )
    assert Benchmark(cfg).run_key("baseline") == Benchmark(BenchmarkConfig(max_steps=100)).run_key("baseline")


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (0, "every KD arm needs n_KD >= 1"),
        (-3, "every KD arm needs n_KD >= 1"),
        (1.5, "neither an integer step count nor a fraction of max_steps"),
        (-0.2, "neither an integer step count nor a fraction of max_steps"),
        (500, "more than the run's 100 steps"),
    ],
)
def test_bad_kd_steps_say_what_to_change(value, message):
    with pytest.raises(ValueError, match=message):
        BenchmarkConfig(max_steps=100, kd_steps=value)


def test_kd_steps_flag_and_config_key(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text("max_steps: 100\nkd_steps: 0.25\n")
    (cfg,) = parse_args(bench_cli.COMMAND.dataclass_types, ["--config", str(config)])
    assert cfg.kd_steps == 0.25 and cfg.resolved_kd_steps == 25
    args, given = parse_args(demo_cli.COMMAND.dataclass_types, ["--scale", "tiny", "--kd_steps", "0.5"])
    assert demo_cli.resolve(args, given).resolved_kd_steps == 4  # tiny: 8 steps
    args, given = parse_args(demo_cli.COMMAND.dataclass_types, ["--kd_steps", "96"])
    assert demo_cli.resolve(args, given).kd_steps == 96
    args, given = parse_args(demo_cli.COMMAND.dataclass_types, [])
    assert demo_cli.resolve(args, given).resolved_kd_steps == 192  # the cpu scale: 40 percent of 480 steps


def test_saved_run_is_reused_only_under_its_own_key(tmp_path):
    cfg = BenchmarkConfig(max_steps=100, kd_steps=0.4, output_dir=str(tmp_path), seeds=[0])
    bench = Benchmark(cfg)
    path = bench._run_path(0, "salt")
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"key": bench.run_key("salt"), "teacher_seed": 0, "arm": "salt"}))
    assert bench._saved_run(0, "salt", 0)["arm"] == "salt"
    other = Benchmark(BenchmarkConfig(max_steps=100, kd_steps=0.3, output_dir=str(tmp_path), seeds=[0]))
    assert other._saved_run(0, "salt", 0) is None  # another n_KD: trained again
    # the demo's resume reads its saved arms the same way
    model = tmp_path / "salt"
    model.mkdir()
    path.write_text(json.dumps({"key": bench.run_key("salt"), "path": str(model)}))
    assert demo._finished(path, {bench.run_key("salt")}) is not None
    assert demo._finished(path, {other.run_key("salt")}) is None


def _report_results(config_kd: dict) -> dict:
    cfg = {
        "label": "t", "student_preset": "s", "teacher_preset": "t", "corpus": "c", "workers": 1, "num_threads": 0,
        "max_steps": 40, "batch_size": 2, "gradient_accumulation_steps": 1, "block_size": 8, "teacher_steps": 40,
        "kd_decay_start": None, "kd_weight": 0.5, "kd_temperature": 1.0, "learning_rate": 1e-3, "warmup_steps": 0,
        "hc_learning_rate": None, "hc_warmup_steps": None, "hypercloning_snr_db": None, "seeds": [0],
        "teacher_per_seed": False, "teacher_seed": 0, "eval_every": 10, **config_kd,
    }  # fmt: skip
    return {
        "config": cfg, "hardware": {"summary": "cpu"}, "teachers": {}, "command": "c", "started": "now",
        "epochs": 1.0, "train_tokens": 640, "validation_blocks": 4, "kd_steps": 10,
    }  # fmt: skip


@pytest.mark.parametrize("config_kd", [{"kd_steps": 10}, {"kd_steps": 0.25}])
def test_report_gives_n_kd_and_its_share_of_the_run(config_kd):
    text = report.report_markdown(_report_results(config_kd), [], "plot.png")
    assert "n_KD = 10 (25% of the steps)" in text


# ------------------------------------------------------------------ KD settings: SALTConfig's own fields
KD_NAMES = (
    "kd_weight",
    "kd_temperature",
    "kd_steps",
    "kd_decay_start",
    "kd_auto_margin",
    "kd_auto_decay_steps",
)


def test_kd_settings_are_salt_configs_fields():
    """One definition: each KD setting is SALTConfig's field of the same name, its default and its help."""
    from dataclasses import fields

    from hf_salt import SALTConfig
    from hf_salt.experiments import ExperimentConfig

    salt = {f.name: f for f in fields(SALTConfig)}
    for cls in (ExperimentConfig, BenchmarkConfig):
        own = {f.name: f for f in fields(cls)}
        for name in KD_NAMES:
            assert own[name].default == salt[name].default, (cls.__name__, name)
            assert own[name].metadata["help"].startswith(salt[name].metadata["help"]), (cls.__name__, name)
        assert not {"kd_auto_cap", "kd_auto_decay"} & set(
            own
        )  # no second name for kd_steps / kd_auto_decay_steps


def _accepted(make) -> bool:
    try:
        make()
    except ValueError:
        return False
    return True


@pytest.mark.parametrize(
    "kd",
    [
        dict(kd_weight=1.0),
        dict(kd_weight=1.01),
        dict(kd_weight=-0.1),
        dict(kd_temperature=0.0),
        dict(kd_temperature=0.5),
        dict(kd_steps=100),
        dict(kd_steps=101),
        dict(kd_steps=0.004),  # rounds to 0 of 100 steps
        dict(kd_steps=20, kd_decay_start=10),  # a step count, as in SALTConfig
        dict(kd_steps=20, kd_decay_start=30),
        dict(kd_decay_start=0.5),
        dict(kd_decay_start=1.5),
    ],
)
def test_kd_settings_accepted_exactly_when_salt_config_accepts_them(kd):
    """The reference is SALTConfig itself, with a teacher and the same max_steps (n_KD >= 1 aside)."""
    from hf_salt import SALTConfig

    expected = _accepted(
        lambda: SALTConfig(
            output_dir="unused",
            max_steps=100,
            use_cpu=True,
            report_to="none",
            teacher_model_name_or_path="t",
            **kd,
        )
    )
    assert _accepted(lambda: BenchmarkConfig(max_steps=100, arms=["salt", "salt-linear"], **kd)) == expected


@pytest.mark.parametrize(
    ("kd", "flag", "message"),
    [
        (dict(kd_weight=1.0, arms=["salt-linear_ratio"]), "--kd_weight", "needs kd_weight < 1"),
        (dict(kd_steps=0.2, kd_decay_start=30, arms=["salt-linear"]), "--kd_decay_start", r"\(30\) must be <= kd_steps \(20\)"),
        (dict(kd_steps=0.2, kd_auto_decay_steps=0.3, arms=["salt-auto"]), "--kd_auto_decay_steps", r"\(30\) must be <= kd_steps \(20\)"),
        (dict(kd_auto_margin=float("nan"), arms=["salt-auto"]), "--kd_auto_margin", "finite"),
        (dict(kd_steps=0.004), "--kd_steps", "rounds to 0 KD steps"),
    ],
)  # fmt: skip
def test_salt_config_errors_name_the_flag(kd, flag, message):
    """An arm's own rules apply when it is selected: n_KD in steps against the decay start / window, its schedule."""
    with pytest.raises(ValueError, match=message) as err:
        BenchmarkConfig(max_steps=100, **kd)
    assert str(err.value).startswith(flag)
    if "arms" in kd:  # the arm's rule only: accepted without that arm
        BenchmarkConfig(max_steps=100, **{**kd, "arms": ["salt"]})


def test_kd_check_writes_nothing(tmp_path, monkeypatch):
    import tempfile

    monkeypatch.setattr(tempfile, "gettempdir", lambda: str(tmp_path))
    monkeypatch.chdir(tmp_path)
    BenchmarkConfig(max_steps=100, arms=["all"], kd_steps=0.2)
    assert list(tmp_path.iterdir()) == []


def test_salt_auto_cap_is_kd_steps():
    from hf_salt.experiments.arms import ArmContext, auto_salt_fields

    cfg = BenchmarkConfig(max_steps=100, kd_steps=0.4, kd_auto_decay_steps=0.1, arms=["salt-auto"])
    fields = auto_salt_fields(ArmContext(cfg, None, None, None, None, 0))
    assert (fields["kd_schedule"], fields["kd_steps"], fields["kd_auto_decay_steps"]) == ("auto", 40, 10)


def test_run_keys_depend_only_on_each_arms_own_settings():
    """Saved runs are matched by run_key: a KD, salt-auto or HyperCloning setting (renamed or new) must not enter the
    key of an arm that does not declare it, so changing it never invalidates a baseline's or a clone's saved runs."""
    from hf_salt.experiments.arms import ARMS

    bench = Benchmark(BenchmarkConfig(max_steps=100))
    family = ("kd_", "hc_", "hypercloning", "salt_ds")
    for arm in ARMS:
        keyed = {k for k in bench._run_fields(arm) if k.startswith(family)}
        assert keyed <= set(ARMS[arm].depends_on), (arm, keyed - set(ARMS[arm].depends_on))
    changed = dict(
        kd_weight=0.5,
        kd_temperature=2.0,
        kd_steps=0.4,
        kd_decay_start=0.5,
        kd_auto_margin=0.2,
        kd_auto_decay_steps=0.2,
    )
    for name, value in changed.items():
        other = Benchmark(BenchmarkConfig(max_steps=100, **{name: value}))
        for arm in ("baseline", "hypercloning", "teacher-continue"):
            assert other.run_key(arm) == bench.run_key(arm), (name, arm)
        assert (other.run_key("salt-auto") != bench.run_key("salt-auto")) == (
            name in ARMS["salt-auto"].depends_on
        )


def test_a_ramped_lr_scale_is_its_own_run_and_needs_the_scale():
    """hc_lr_scale_steps joins the clone's key only when set, so clones saved before it existed keep their keys."""
    plain = Benchmark(BenchmarkConfig(max_steps=100, hc_lr_scale=True))
    assert "hc_lr_scale_steps" not in plain._run_fields("hypercloning")
    ramped = Benchmark(BenchmarkConfig(max_steps=100, hc_lr_scale=True, hc_lr_scale_steps=40))
    assert ramped.run_key("hypercloning") != plain.run_key("hypercloning")
    assert ramped.run_key("baseline") == plain.run_key("baseline")
    with pytest.raises(ValueError, match="set hc_lr_scale true"):
        BenchmarkConfig(max_steps=100, hc_lr_scale_steps=40)
    with pytest.raises(ValueError, match="hc_lr_scale_steps must be >= 0"):
        BenchmarkConfig(max_steps=100, hc_lr_scale=True, hc_lr_scale_steps=-1)

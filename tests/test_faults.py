"""Fault tests: processes are SIGKILLed for real (tests/kill_point.py), then the command is run again.

A resumed run must end with exactly the weights of an uninterrupted one; a re-run after a kill must finish
and leave no temporary folder behind.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from hf_salt.checkpoints import latest_complete_checkpoint, resolve_resume
from hf_salt.cli.main import main
from hf_salt.io import MARKER, atomic_directory, mark_as_ours, remove_stale

KILL_POINT = Path(__file__).with_name("kill_point.py")
STEPS = 8
# SALT with a linear decay, killed mid-decay as in the reported fault; checkpoints every 3 steps
PRETRAIN = [
    "pretrain", "--model", "llama-tiny", "--block_size", "32", "--max_train_blocks", "64", "--max_eval_blocks", "4",
    "--max_steps", str(STEPS), "--per_device_train_batch_size", "4", "--kd_steps", "6", "--kd_schedule", "linear",
    "--save_strategy", "steps", "--save_steps", "3", "--logging_steps", "1", "--disable_tqdm", "true",
    "--report_to", "none", "--warmup_steps", "0", "--learning_rate", "1e-2",
]  # fmt: skip


def kill_at(point: str, argv: list[str], tmp_path: Path, timeout: float = 240) -> None:
    """Run `hf-salt argv` in a subprocess, SIGKILL it when it reaches `point`."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    log = (tmp_path / "killed.stderr").open("w")
    proc = subprocess.Popen(
        [sys.executable, str(KILL_POINT), point, "--", *argv],
        stdout=subprocess.PIPE,
        stderr=log,
        text=True,
        env=env,
    )
    deadline = time.monotonic() + timeout
    try:
        for line in proc.stdout:
            if line.startswith("KILL-POINT"):
                proc.send_signal(signal.SIGKILL)
                break
            assert time.monotonic() < deadline, f"{point} not reached in {timeout}s"
        assert proc.wait(timeout=30) == -signal.SIGKILL, (tmp_path / "killed.stderr").read_text()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()


def weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "model.safetensors"))


def assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for key in wa:
        assert torch.equal(wa[key], wb[key]), key


def hidden(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


@pytest.fixture(scope="module")
def teacher(tmp_path_factory) -> Path:
    from hf_salt.data import load_tokenizer
    from hf_salt.zoo import build_model

    path = tmp_path_factory.mktemp("teacher") / "teacher"
    build_model("llama-tiny", vocab_size=len(load_tokenizer()), seed=1).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, teacher) -> Path:
    out = tmp_path_factory.mktemp("reference") / "run"
    assert main([*PRETRAIN, "--teacher_model_name_or_path", str(teacher), "--output_dir", str(out)]) == 0
    return out


@pytest.mark.parametrize("point", ["step:5", "save:6"])
def test_pretrain_killed_then_resumed_from_cli_matches_uninterrupted(
    point, tmp_path, teacher, uninterrupted, capsys
):
    out = tmp_path / "run"
    argv = [*PRETRAIN, "--teacher_model_name_or_path", str(teacher), "--output_dir", str(out)]
    kill_at(point, argv, tmp_path)
    assert not (out / "model").exists()
    if point.startswith("save"):  # killed inside the save: a hidden staging folder, no checkpoint-6
        assert not (out / "checkpoint-6").exists()
        assert hidden(out) == [".checkpoint-6.tmp"]
    assert latest_complete_checkpoint(out) == out / "checkpoint-3"
    saved_at = (out / "checkpoint-3" / "trainer_state.json").stat().st_mtime_ns
    assert main(argv) == 2  # a new run over the killed one's checkpoints is refused before any work
    assert "holds checkpoints of an earlier run (checkpoint-3)" in capsys.readouterr().err

    assert main([*argv, "--resume_from_checkpoint", "latest"]) == 0
    # resumed, not restarted: a restart would write checkpoint-3 again
    assert (out / "checkpoint-3" / "trainer_state.json").stat().st_mtime_ns == saved_at
    assert f"Resuming from {out / 'checkpoint-3'}" in capsys.readouterr().out
    assert_same_weights(out / "model", uninterrupted / "model")
    assert_same_weights(out / "checkpoint-6", uninterrupted / "checkpoint-6")
    assert hidden(out) == []  # the killed save's staging folder is gone


def test_pretrain_killed_in_the_final_model_save_is_not_a_finished_run(
    tmp_path, teacher, uninterrupted, capsys
):
    """The finished-run marker (all_results.json) comes after model/: a kill during the model's save leaves a
    run that `--resume_from_checkpoint latest` finishes (it used to be refused as 'already holds a finished run')."""
    out = tmp_path / "run"
    argv = [*PRETRAIN, "--teacher_model_name_or_path", str(teacher), "--output_dir", str(out)]
    kill_at("model", argv, tmp_path)
    assert not (out / "model").exists() and not (out / "all_results.json").exists()
    assert main([*argv, "--resume_from_checkpoint", "latest"]) == 0, capsys.readouterr().err
    assert_same_weights(out / "model", uninterrupted / "model")
    assert json.loads((out / "all_results.json").read_text())["eval_loss"] == pytest.approx(
        json.loads((uninterrupted / "all_results.json").read_text())["eval_loss"]
    )
    assert hidden(out) == []


def test_resume_with_other_settings_names_each_and_needs_allow_changed_settings(
    tmp_path, tmp_path_factory, teacher, uninterrupted, capsys, caplog
):
    """A resume with another kd_weight, block_size, seed or teacher weights used to continue silently and end
    away from either run; now each differing setting is named, and only --allow_changed_settings continues."""
    import shutil

    from hf_salt.checkpoints import RUN_SETTINGS
    from hf_salt.data import load_tokenizer
    from hf_salt.zoo import build_model

    out = tmp_path / "run"
    shutil.copytree(uninterrupted / "checkpoint-3", out / "checkpoint-3")
    assert (out / "checkpoint-3" / RUN_SETTINGS).is_file()
    argv = [*PRETRAIN, "--teacher_model_name_or_path", str(teacher), "--output_dir", str(out)]
    argv += ["--resume_from_checkpoint", "latest"]
    # the same teacher folder, weights replaced in place
    other = tmp_path_factory.mktemp("other") / "teacher"
    shutil.copytree(teacher, other)
    build_model("llama-tiny", vocab_size=len(load_tokenizer()), seed=7).save_pretrained(other)
    changed = {
        ("--kd_weight", "0.5"): "kd_weight: 0.75 in the checkpoint, 0.5 now",
        ("--seed", "3"): "seed: 42 in the checkpoint, 3 now",
        ("--block_size", "16"): "block_size: 32 in the checkpoint, 16 now",
        ("--kd_schedule", "step"): "kd_schedule: 'linear' in the checkpoint, 'step' now",
        ("--max_steps", "9"): "max_steps: 8 in the checkpoint, 9 now",
    }
    for flags, named in changed.items():
        assert main([*argv, *flags]) == 2, flags
        err = capsys.readouterr().err
        assert named in err and "--allow_changed_settings" in err, err
    moved = [*PRETRAIN, "--teacher_model_name_or_path", str(other), "--output_dir", str(out)]
    assert main([*moved, "--resume_from_checkpoint", "latest"]) == 2
    assert "teacher weights (the files in the teacher folder differ)" in capsys.readouterr().err
    assert not (out / "model").exists() and not (out / "checkpoint-6").exists()  # refused before training

    with caplog.at_level("WARNING"):
        assert main([*argv, "--kd_weight", "0.5", "--allow_changed_settings"]) == 0
    assert "with changed settings (allowed): kd_weight: 0.75 in the checkpoint, 0.5 now" in caplog.text


def test_resume_path_that_does_not_exist_fails_before_any_work(tmp_path, capsys):
    out = tmp_path / "run"
    code = main([*PRETRAIN, "--output_dir", str(out), "--resume_from_checkpoint", str(tmp_path / "nope")])
    assert code == 2
    assert "does not exist" in capsys.readouterr().err
    assert not out.exists()
    assert main([*PRETRAIN, "--output_dir", str(out), "--resume_from_checkpoint", "latest"]) == 2
    assert "no complete checkpoint-N folder" in capsys.readouterr().err


def _fake_checkpoint(folder: Path, *, state: str | None = "{}", weights: bool = True) -> Path:
    folder.mkdir(parents=True)
    if weights:
        (folder / "model.safetensors").write_bytes(b"x")
    if state is not None:
        (folder / "trainer_state.json").write_text(state)
    return folder


def test_latest_skips_and_names_incomplete_checkpoints(tmp_path, caplog):
    good = _fake_checkpoint(tmp_path / "checkpoint-20")
    _fake_checkpoint(tmp_path / "checkpoint-30", state=None, weights=False)  # empty: killed at once
    _fake_checkpoint(tmp_path / "checkpoint-40", state=None)  # config and weights only
    _fake_checkpoint(tmp_path / "checkpoint-50", state='{"global_st')  # killed while writing the state
    _fake_checkpoint(tmp_path / "checkpoint-60", weights=False)
    with caplog.at_level("WARNING"):
        assert latest_complete_checkpoint(tmp_path) == good
    for step in (30, 40, 50, 60):
        assert f"checkpoint-{step}" in caplog.text
    assert resolve_resume("latest", tmp_path) == str(good)
    with pytest.raises(ValueError, match="not a complete checkpoint.*latest complete one is"):
        resolve_resume(str(tmp_path / "checkpoint-40"), tmp_path)


def test_sharded_checkpoint_needs_every_shard(tmp_path):
    folder = _fake_checkpoint(tmp_path / "checkpoint-1", weights=False)
    (folder / "model.safetensors.index.json").write_text(
        '{"weight_map": {"a": "model-00001.safetensors", "b": "model-00002.safetensors"}}'
    )
    (folder / "model-00001.safetensors").write_bytes(b"x")
    assert latest_complete_checkpoint(tmp_path) is None
    (folder / "model-00002.safetensors").write_bytes(b"x")
    assert latest_complete_checkpoint(tmp_path) == folder


def test_atomic_directory_removes_only_dead_writers_leftovers(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    ours_dead = tmp_path / ".out.tmp-dead"
    ours_dead.mkdir()
    (ours_dead / MARKER).write_text(f'{{"host": "{socket.gethostname()}", "pid": {dead.pid}}}')
    live = tmp_path / ".out.tmp-live"  # a live writer: this very process
    live.mkdir()
    mark_as_ours(live)
    foreign = tmp_path / ".out.tmp-foreign"  # no marker: not created by hf-salt
    foreign.mkdir()
    with atomic_directory(tmp_path / "out") as staged:
        (staged / "f").write_text("1")
    assert (tmp_path / "out" / "f").read_text() == "1"
    assert not (tmp_path / "out" / MARKER).exists()
    assert (tmp_path / "out").stat().st_mode & 0o777 == 0o777 & ~_umask()
    assert not ours_dead.exists() and live.exists() and foreign.exists()


def test_killed_swap_puts_the_previous_output_back(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    backup = tmp_path / ".out.old-x"
    (backup / "previous").mkdir(parents=True)
    (backup / "previous" / "f").write_text("old")
    (backup / MARKER).write_text(f'{{"host": "{socket.gethostname()}", "pid": {dead.pid}}}')
    assert remove_stale(tmp_path, ".out.old-*") == [backup]
    assert (tmp_path / "out" / "f").read_text() == "old" and not backup.exists()


def test_distill_step_by_step_resume_path_must_exist(tmp_path, capsys):
    out = tmp_path / "sbs"
    argv = [
        "distill-step-by-step",
        "--output_dir",
        str(out),
        "--resume_from_checkpoint",
        str(tmp_path / "nope"),
    ]
    assert main(argv) == 2
    assert "does not exist" in capsys.readouterr().err
    assert not out.exists()


def test_grow_killed_while_saving_then_rerun_leaves_no_litter(tmp_path):
    dst = tmp_path / "grown"
    argv = ["grow", "llama-tiny", str(dst)]
    kill_at("grow", argv, tmp_path)
    assert not dst.exists()
    # the staging folder, and the output lock of the killed writer (its flock died with it)
    assert sorted(p.name.split("-")[0] for p in tmp_path.glob(".grown.*")) == [".grown.hf", ".grown.tmp"]
    assert main(argv) == 0
    assert (dst / "model.safetensors").is_file()
    assert hidden(tmp_path) == []


def test_score_killed_while_saving_then_rerun_leaves_no_litter(tmp_path):
    from datasets import load_from_disk

    dst = tmp_path / "scored"
    argv = [
        "score",
        "--teacher_model_name_or_path",
        "llama-tiny",
        "--output_dir",
        str(dst),
        "--block_size",
        "32",
        "--max_blocks",
        "8",
    ]
    kill_at("score", argv, tmp_path)
    assert not dst.exists()
    assert len(list(tmp_path.glob(".scored.tmp-*"))) == 1
    assert main(argv) == 0
    assert len(load_from_disk(str(dst))) == 8
    assert hidden(tmp_path) == []


def test_atomic_checkpoints_keep_rotation_and_best_model(tmp_path, tokenizer):
    from transformers import TrainingArguments

    from hf_salt.checkpoints import AtomicCheckpointTrainer
    from hf_salt.data import load_corpus, pack_dataset
    from hf_salt.zoo import build_model

    blocks = pack_dataset(load_corpus("tinyshakespeare")["validation"], tokenizer, 16).select(range(32))
    args = TrainingArguments(
        output_dir=str(tmp_path), max_steps=6, per_device_train_batch_size=4, learning_rate=1e-2,
        eval_strategy="steps", eval_steps=2, save_strategy="steps", save_steps=2, save_total_limit=1,
        load_best_model_at_end=True, report_to="none", disable_tqdm=True, use_cpu=True,
    )  # fmt: skip
    model = build_model("llama-tiny", vocab_size=len(tokenizer), seed=0)
    trainer = AtomicCheckpointTrainer(
        model=model, args=args, train_dataset=blocks, eval_dataset=blocks.select(range(8))
    )
    trainer.train()
    best = Path(trainer.state.best_model_checkpoint)
    assert best.parent == tmp_path and best.is_dir()
    kept = sorted(p.name for p in tmp_path.glob("checkpoint-*"))
    assert kept == sorted({best.name, "checkpoint-6"})  # rotation kept the best and the latest
    assert hidden(tmp_path) == []
    saved = json.loads((tmp_path / "checkpoint-6" / "trainer_state.json").read_text())
    assert saved["best_model_checkpoint"] == str(best)


def test_write_text_atomic_replaces_whole_files(tmp_path):
    from hf_salt.io import write_text_atomic

    target = tmp_path / "sub" / "record.json"
    write_text_atomic(target, '{"a": 1}')
    write_text_atomic(target, '{"a": 2}')
    assert json.loads(target.read_text()) == {"a": 2}
    assert sorted(p.name for p in target.parent.iterdir()) == ["record.json"]
    assert target.stat().st_mode & 0o777 == 0o666 & ~_umask()


def test_save_pretrained_atomic_uses_an_empty_folder_and_replaces_only_when_asked(tmp_path):
    """One atomic model save (hf_salt.io, also hf_salt.hypercloning's): an empty folder is fine, a full one is
    refused unless overwrite=True, and then replaced whole."""
    from hf_salt import hypercloning
    from hf_salt.io import save_pretrained_atomic

    assert hypercloning.save_pretrained_atomic is save_pretrained_atomic

    class Model:
        def __init__(self, name: str) -> None:
            self.name = name

        def save_pretrained(self, folder: str) -> None:
            Path(folder, self.name).write_text(self.name)

    out = tmp_path / "model"
    out.mkdir()
    assert save_pretrained_atomic(Model("a"), out) == out
    with pytest.raises(FileExistsError, match="not empty; choose another folder or pass overwrite=True"):
        save_pretrained_atomic(Model("b"), out)
    assert sorted(p.name for p in out.iterdir()) == ["a"]
    save_pretrained_atomic(Model("b"), out, overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == ["b"]


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


DEMO = [
    "demo",
    "--scale",
    "tiny",
    "--arms",
    "baseline",
    "salt",
    "--save_steps",
    "2",
    "--disable_tqdm",
    "true",
]


def test_demo_killed_in_an_arm_then_resumed_matches_uninterrupted(tmp_path, capsys):
    reference, out = tmp_path / "reference", tmp_path / "run"
    assert main([*DEMO, "--output_dir", str(reference)]) == 0
    # the 3rd training run to reach step 5: teacher, baseline, then the SALT arm (mid-KD, checkpoint-4 saved)
    kill_at("step:5:3", [*DEMO, "--output_dir", str(out)], tmp_path)
    assert (out / "baseline" / "model.safetensors").is_file() and not (out / "salt").exists()
    assert latest_complete_checkpoint(out / "_runs" / "seed0" / "salt") is not None
    code = main([*DEMO, "--output_dir", str(out)])  # a fresh start over the killed one is refused
    assert code == 2 and "--resume_from_checkpoint latest" in capsys.readouterr().err

    assert main([*DEMO, "--output_dir", str(out), "--resume_from_checkpoint", "latest"]) == 0
    printed = capsys.readouterr().out
    assert "reusing the teacher" in printed and "reusing the finished baseline run" in printed
    assert "resuming salt from" in printed
    for arm in ("teacher", "baseline", "salt"):
        assert_same_weights(out / arm, reference / arm)
    ref, got = (json.loads((d / "results.json").read_text()) for d in (reference, out))
    assert got["arms"]["salt"]["curve"]["steps"] == ref["arms"]["salt"]["curve"]["steps"]
    assert got["arms"]["salt"]["curve"]["eval_loss"] == ref["arms"]["salt"]["curve"]["eval_loss"]
    assert not list((out / "_runs").rglob("checkpoint-*"))  # finished runs keep no checkpoints


def test_experiment_resume_is_checked_before_any_work(tmp_path):
    from hf_salt.experiments.resume import check_resume

    runs = tmp_path / "_runs"
    with pytest.raises(ValueError, match="nothing to resume"):
        check_resume("latest", tmp_path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        check_resume(str(runs / "seed0" / "salt" / "checkpoint-4"), tmp_path)
    elsewhere = _fake_checkpoint(tmp_path / "other" / "checkpoint-4")
    with pytest.raises(ValueError, match="not a checkpoint of this experiment"):
        check_resume(str(elsewhere), tmp_path)
    half = _fake_checkpoint(runs / "seed0" / "salt" / "checkpoint-4", state=None)
    with pytest.raises(ValueError, match="not a complete checkpoint"):
        check_resume(str(half), tmp_path)
    with pytest.raises(ValueError, match="unfinished experiment"):
        check_resume(None, tmp_path)
    check_resume("latest", tmp_path)


def test_overwrite_removes_an_earlier_runs_checkpoints(tmp_path):
    from hf_salt.checkpoints import check_fresh_start

    _fake_checkpoint(tmp_path / "checkpoint-3")
    with pytest.raises(ValueError, match="holds checkpoints of an earlier run"):
        check_fresh_start(tmp_path, None)
    check_fresh_start(tmp_path, str(tmp_path / "checkpoint-3"))  # resuming it: fine, nothing removed
    assert (tmp_path / "checkpoint-3").is_dir()
    check_fresh_start(tmp_path, None, overwrite=True)
    assert not (tmp_path / "checkpoint-3").exists()


def test_distill_step_by_step_killed_then_resumed_matches_uninterrupted(tmp_path, capsys):
    argv = [
        "distill-step-by-step", "--model", "t5-tiny", "--dataset", "svamp", "--train_fraction", "0.05",
        "--max_steps", "5", "--per_device_train_batch_size", "4", "--max_eval_samples", "4",
        "--generation_max_length", "4", "--save_strategy", "steps", "--save_steps", "2", "--use_cpu", "true",
        "--disable_tqdm", "true",
    ]  # fmt: skip
    reference, out = tmp_path / "reference", tmp_path / "run"
    assert main([*argv, "--output_dir", str(reference)]) == 0
    kill_at("step:3", [*argv, "--output_dir", str(out)], tmp_path)
    assert latest_complete_checkpoint(out) == out / "checkpoint-2" and not (out / "model").exists()
    assert main([*argv, "--output_dir", str(out), "--resume_from_checkpoint", "latest"]) == 0
    assert f"Resuming from {out / 'checkpoint-2'}" in capsys.readouterr().out
    assert_same_weights(out / "model", reference / "model")


def test_benchmark_resume_path_must_exist(tmp_path, capsys):
    out = tmp_path / "bench"
    argv = ["benchmark", "--output_dir", str(out), "--resume_from_checkpoint", str(tmp_path / "nope")]
    assert main(argv) == 2
    assert "does not exist" in capsys.readouterr().err
    assert not out.exists()

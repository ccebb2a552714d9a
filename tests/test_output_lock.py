"""One writer per output: every command holds its output (`hf_salt.io.hold_output`) for the whole run.

Run for real with separate processes: two `hf-salt pretrain` into one `--output_dir` at once (the second used to
exit 0 after printing "model saved" over files that were then replaced by the first), a holder killed with
SIGKILL (its lock must not outlive it), and each command refused while another process holds its output.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hf_salt.io import lock_path

HF_SALT = str(Path(sys.executable).with_name("hf-salt"))
TINY = ["--model", "llama-tiny", "--block_size", "32", "--max_train_blocks", "64", "--max_eval_blocks", "2"]
TINY += ["--disable_tqdm", "true", "--report_to", "none", "--logging_steps", "1000"]


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.1)


def test_second_pretrain_into_the_same_output_dir_is_refused_and_a_killed_holder_is_taken_over(tmp_path):
    out = tmp_path / "run"
    lock = lock_path(out)
    first = subprocess.Popen(
        [HF_SALT, "pretrain", *TINY, "--max_steps", "100000", "--output_dir", str(out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _wait_for(lock, first)
        second = subprocess.run(
            [HF_SALT, "pretrain", *TINY, "--max_steps", "2", "--output_dir", str(out)],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert second.returncode == 2, second.stderr
        assert "is being written by" in second.stderr and f"PID {first.pid} " in second.stderr, second.stderr
        assert "model saved" not in second.stdout
        assert first.poll() is None  # the holder goes on
    finally:
        first.send_signal(signal.SIGKILL)
        first.communicate()
    assert lock.exists()  # nothing ran after SIGKILL, yet the lock must not block the next run
    third = subprocess.run(
        [HF_SALT, "pretrain", *TINY, "--max_steps", "2", "--output_dir", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert third.returncode == 0, third.stderr
    assert f"PID {first.pid} " in third.stderr and "is no longer running" in third.stderr
    assert (out / "model" / "config.json").exists()
    assert not lock.exists()  # released at the end


HOLDER = """
import sys, time
from hf_salt.io import hold_output
with hold_output(sys.argv[1], "the test's holder"):
    print("held", flush=True)
    time.sleep(120)
"""


def _commands(tmp_path: Path) -> dict[str, tuple[list[str], Path]]:
    data = tmp_path / "rows.jsonl"
    data.write_text('{"input": "1 + 1"}\n')
    (tmp_path / "llm").mkdir()
    o = tmp_path / "out"
    return {
        "pretrain": (["pretrain", "--output_dir", str(o)], o),
        "distill-step-by-step": (["distill-step-by-step", "--output_dir", str(o)], o),
        "grow": (["grow", "llama-tiny", str(o)], o),
        "score": (["score", "--teacher_model_name_or_path", "llama-tiny", "--output_dir", str(o)], o),
        "demo": (["demo", "--scale", "tiny", "--output_dir", str(o)], o),
        "benchmark": (["benchmark", "--output_dir", str(o)], o),
        "generate-rationales": (
            [
                "generate-rationales",
                "--model",
                str(tmp_path / "llm"),
                "--data",
                str(data),
                "--output",
                str(o),
            ],
            o,
        ),
    }


@pytest.mark.parametrize(
    "command",
    ["pretrain", "distill-step-by-step", "grow", "score", "demo", "benchmark", "generate-rationales"],
)
def test_every_command_is_refused_while_another_process_holds_its_output(tmp_path, command, capsys):
    from hf_salt.cli.main import main

    argv, held = _commands(tmp_path)[command]
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(held)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "held", holder.stderr.read()
        code = main(argv)  # the holder is another live process, as with two commands started at once
    finally:
        holder.kill()
        holder.communicate()
    err = capsys.readouterr().err
    assert code == 2, err
    assert f"is being written by the test's holder (PID {holder.pid} on host" in err
    assert not held.exists()  # refused before writing anything


def test_the_lock_is_taken_over_from_a_dead_holder_and_child_processes_share_it(tmp_path):
    from hf_salt.io import HELD_ENV, OutputInUse, held_here, hold_output

    out = tmp_path / "out"
    with hold_output(out, "outer") as lock:
        assert held_here(out) and str(lock) in os.environ[HELD_ENV]
        child = subprocess.run(
            [sys.executable, "-c", f"from hf_salt.io import held_here; assert held_here({str(out)!r})"],
            capture_output=True,
            text=True,
        )
        assert child.returncode == 0, child.stderr  # e.g. benchmark workers write on the holder's behalf
        stranger = subprocess.run(
            [
                sys.executable,
                "-c",
                f"from hf_salt.io import hold_output\nwith hold_output({str(out)!r}): pass",
            ],
            capture_output=True,
            text=True,
            env={k: v for k, v in os.environ.items() if k != HELD_ENV},
        )
        assert stranger.returncode != 0 and "OutputInUse" in stranger.stderr and "outer" in stranger.stderr
    assert not lock.exists() and not held_here(out)
    with hold_output(out):  # free again
        pass
    assert issubclass(OutputInUse, ValueError)  # the CLI prints it as an error, without a traceback


def test_a_full_disk_is_reported_in_one_line_without_a_traceback(tmp_path, capsys, monkeypatch):
    """The write itself is simulated (no test fills a disk): the error a full disk raises, from inside a run."""
    import errno

    from hf_salt.cli import grow
    from hf_salt.cli.main import main

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "grown" / "model.safetensors"))

    monkeypatch.setattr(grow, "run", full)
    monkeypatch.setattr(grow.COMMAND, "run", full)
    assert main(["grow", "llama-tiny", str(tmp_path / "grown")]) == 1
    err = capsys.readouterr().err
    assert "no space left on the device while writing" in err and "model.safetensors" in err
    assert "Traceback" not in err and not lock_path(tmp_path / "grown").exists()  # the lock is released

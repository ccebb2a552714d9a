"""Errors that used to be unclear (issue #21): each one now names its cause and its fix, without a traceback.

Signals are sent for real, to `hf-salt` subprocesses stopped at a chosen point (tests/kill_point.py).
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

KILL_POINT = Path(__file__).with_name("kill_point.py")
# plain training, checkpoints every 3 steps
PRETRAIN = [
    "pretrain", "--model", "llama-tiny", "--block_size", "32", "--max_train_blocks", "32", "--max_eval_blocks", "2",
    "--max_steps", "6", "--per_device_train_batch_size", "4", "--save_strategy", "steps", "--save_steps", "3",
    "--logging_steps", "1", "--disable_tqdm", "true", "--report_to", "none",
]  # fmt: skip


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}


def interrupt_at(point: str, argv: list[str], timeout: float = 240) -> subprocess.CompletedProcess:
    """Run `hf-salt argv` in a subprocess, send it SIGINT (Ctrl-C) at `point`, return how it ended."""
    proc = subprocess.Popen(
        [sys.executable, str(KILL_POINT), point, "--", *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(),
    )
    deadline = time.monotonic() + timeout
    out = []
    try:
        for line in proc.stdout:
            out.append(line)
            if line.startswith("KILL-POINT"):
                proc.send_signal(signal.SIGINT)
                break
            assert time.monotonic() < deadline, f"{point} not reached in {timeout}s"
        rest, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    return subprocess.CompletedProcess(proc.args, proc.returncode, "".join(out) + rest, err)


def test_ctrl_c_mid_run_names_the_last_checkpoint_and_the_command_that_resumes(tmp_path):
    out = tmp_path / "run"
    ended = interrupt_at("step:4", [*PRETRAIN, "--output_dir", str(out)])
    assert ended.returncode == 130, ended.stderr[-3000:]
    assert "Traceback" not in ended.stderr, ended.stderr[-3000:]
    last = [line for line in ended.stderr.splitlines() if "interrupted" in line]
    assert len(last) == 1, ended.stderr[-3000:]
    assert f"The last complete checkpoint is {out / 'checkpoint-3'}" in last[0]
    # the command it prints resumes the run: it starts from checkpoint-3 and finishes
    command = shlex.split(last[0].split("resume from it with: ", 1)[1])
    assert command[:2] == ["hf-salt", "pretrain"] and command[-2:] == ["--resume_from_checkpoint", "latest"]
    exe = Path(sys.executable).with_name("hf-salt")
    resumed = subprocess.run([str(exe), *command[1:]], capture_output=True, text=True, env=_env())
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"Resuming from {out / 'checkpoint-3'}" in resumed.stdout
    assert (out / "model" / "model.safetensors").is_file()


def test_ctrl_c_inside_the_first_checkpoint_save_leaves_nothing_half_written(tmp_path):
    out = tmp_path / "run"
    ended = interrupt_at("save:3", [*PRETRAIN, "--output_dir", str(out)])
    assert ended.returncode == 130, ended.stderr[-3000:]
    assert "Traceback" not in ended.stderr, ended.stderr[-3000:]
    assert f"No complete checkpoint in {out}" in ended.stderr
    assert sorted(p.name for p in out.iterdir() if p.name.startswith((".checkpoint", "checkpoint"))) == []

"""Shared by the multi-process tests: run examples/salt_pretrain.py alone or under `accelerate launch`.

Every run trains the same saved student and teacher (so the initialisation can't differ between a plain
and a ZeRO-3 run, where `zero.Init` draws random numbers differently) on the same packed WikiText-2
blocks, and returns the `log_history` that `trainer.save_state()` wrote.
"""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "examples" / "salt_pretrain.py"
CONFIGS = REPO / "examples" / "accelerate"
STEPS = 6
KD_STEPS = 4
GLOBAL_BATCH = 4
# tiny but real: 6 optimizer steps, KD for the first 4 (so both SALT stages run), a high learning rate so
# that a wrong data split or gradient scale shows in the loss curve within a few steps
COMMON = [
    "--max_steps", str(STEPS), "--kd_steps", str(KD_STEPS), "--kd_weight", "0.5", "--learning_rate", "1e-2",
    "--block_size", "32", "--max_train_texts", "200", "--max_eval_blocks", "8", "--logging_steps", "1",
    "--save_strategy", "no", "--disable_tqdm", "true", "--seed", "0", "--warmup_steps", "0",
]  # fmt: skip
CURVE_KEYS = ("loss", "loss_ce", "loss_kd", "teacher_ce", "kd_weight", "grad_norm")


def save_models(folder: Path) -> tuple[Path, Path]:
    """The student (llama-tiny-2x) and the small teacher (llama-tiny), saved once, loaded by every run."""
    from hf_salt.data import load_tokenizer
    from hf_salt.zoo import build_model

    vocab = len(load_tokenizer())
    student, teacher = folder / "student", folder / "teacher"
    build_model("llama-tiny-2x", vocab_size=vocab, seed=0).save_pretrained(student)
    build_model("llama-tiny", vocab_size=vocab, seed=1).save_pretrained(teacher)
    return student, teacher


def load_script() -> Any:
    """examples/salt_pretrain.py as a module (registered, so its dataclasses resolve their annotations)."""
    name = "salt_pretrain_example"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, SCRIPT)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def run_single(out: Path, models: tuple[Path, Path], *extra: str) -> list[dict[str, Any]]:
    """One process, the whole global batch on it; run in this interpreter (saves a start-up)."""
    student, teacher = models
    argv = [
        "--output_dir", str(out), "--student", str(student), "--teacher", str(teacher),
        "--per_device_train_batch_size", str(GLOBAL_BATCH), "--use_cpu", "true", *COMMON, *extra,
    ]  # fmt: skip
    if "--report_to" not in extra:
        argv += ["--report_to", "none"]
    load_script().main(argv)
    return log_history(out)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_launch(
    out: Path,
    models: tuple[Path, Path],
    config: str,
    num_processes: int,
    *extra: str,
    mixed_precision: str = "no",
    timeout: int = 400,
) -> list[dict[str, Any]]:
    """`accelerate launch --config_file examples/accelerate/<config>` with the global batch split over ranks."""
    student, teacher = models
    cmd = [
        sys.executable, "-m", "accelerate.commands.launch",
        "--config_file", str(CONFIGS / config), "--num_processes", str(num_processes),
        "--mixed_precision", mixed_precision, "--main_process_port", str(free_port()),
        str(SCRIPT),
        "--output_dir", str(out), "--student", str(student), "--teacher", str(teacher),
        "--per_device_train_batch_size", str(GLOBAL_BATCH // num_processes), "--report_to", "none",
        *COMMON, *extra,
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        pytest.fail(f"accelerate launch failed ({proc.returncode}):\n{(proc.stdout + proc.stderr)[-6000:]}")
    return log_history(out)


def run_torchrun(script: Path, *args: str, timeout: int = 300) -> None:
    """``python -m torch.distributed.run --nproc_per_node 2 <script> <args>`` on CPU (1 thread per rank)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        str(free_port()),
    ]
    proc = subprocess.run(
        [*cmd, str(script), *args], env=env, capture_output=True, text=True, timeout=timeout
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]


LR_SCALED = ("--hypercloning_lr_scale", "true", "--hypercloning_lr_scale_steps", "4")


def save_clone(folder: Path, teacher: Path) -> Path:
    """The teacher grown 2x without noise (its copies drift apart only through the data), saved in ``folder``."""
    import warnings

    from transformers import AutoModelForCausalLM

    from hf_salt.hypercloning import clone

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        clone(AutoModelForCausalLM.from_pretrained(teacher), 2).save_pretrained(folder)
    return folder


def assert_lr_scales_act(scaled: list[dict], one_rate: list[dict]) -> None:
    """The scaled clone's first step is the one-rate clone's; from the second step on its losses differ."""
    ref, other = curve(scaled), curve(one_rate)
    assert ref[1]["loss"] == pytest.approx(other[1]["loss"], abs=1e-6)
    assert max(abs(ref[s]["loss"] - other[s]["loss"]) for s in range(2, STEPS + 1)) > 1e-3


def log_history(out: Path) -> list[dict[str, Any]]:
    return json.loads((out / "trainer_state.json").read_text())["log_history"]


def launch_info(out: Path) -> dict[str, Any]:
    return json.loads((out / "launch_info.json").read_text())


def curve(history: list[dict[str, Any]]) -> dict[int, dict[str, float]]:
    """step -> the per-step training metrics (the entries logged every step)."""
    return {h["step"]: {k: h[k] for k in CURVE_KEYS if k in h} for h in history if "loss" in h}


def assert_same_curve(reference: list[dict], other: list[dict], atol: float, grad_rtol: float) -> None:
    ref, got = curve(reference), curve(other)
    assert sorted(ref) == sorted(got) == list(range(1, STEPS + 1))
    for step in ref:
        assert set(ref[step]) == set(got[step]), (step, ref[step], got[step])
        for key, value in ref[step].items():
            tol = grad_rtol * abs(value) if key == "grad_norm" else atol
            assert abs(got[step][key] - value) <= tol, f"step {step} {key}: {got[step][key]} vs {value}"
    final = lambda h: [e["eval_loss"] for e in h if "eval_loss" in e][-1]  # noqa: E731
    assert abs(final(other) - final(reference)) <= atol

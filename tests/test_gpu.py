"""GPU checks of SALT at scale-out settings: DDP/ZeRO-2/ZeRO-3/FSDP2 on one GPU in bf16, and the fp32 reference.

Each run launches examples/salt_pretrain.py with a shipped accelerate config (`--num_processes 1`), trains the
same saved student/teacher, and must (a) use the intended layout (DeepSpeed stage, FSDP, teacher replicated),
(b) learn (final loss below the first), and (c) stay close to the fp32 single-GPU loss curve (bf16 tolerance).
Skipped without CUDA (conftest adds the skip to every `gpu` test); ZeRO tests also need deepspeed.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device; none is present"),
]

from salt_launch import curve, launch_info, log_history, run_launch, run_single, save_models  # noqa: E402

HAS_DEEPSPEED = importlib.util.find_spec("deepspeed") is not None


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> tuple[Path, Path]:
    return save_models(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="module")
def reference(tmp_path_factory, models) -> list[dict]:
    """fp32 on one GPU (run_single passes --use_cpu; override it)."""
    return run_single(tmp_path_factory.mktemp("fp32"), models, "--use_cpu", "false")


@pytest.mark.parametrize(
    ("config", "expected_type", "stage"),
    [
        ("ddp.yaml", "NO", None),  # one process: plain single-GPU run, bf16
        pytest.param(
            "deepspeed_zero2.yaml",
            "DEEPSPEED",
            2,
            marks=pytest.mark.skipif(not HAS_DEEPSPEED, reason="deepspeed is not installed"),
        ),
        pytest.param(
            "deepspeed_zero3.yaml",
            "DEEPSPEED",
            3,
            marks=pytest.mark.skipif(not HAS_DEEPSPEED, reason="deepspeed is not installed"),
        ),
        ("fsdp.yaml", "FSDP", None),
    ],
    ids=["bf16", "zero2", "zero3", "fsdp2"],
)
def test_salt_bf16_on_one_gpu(tmp_path, models, reference, config, expected_type, stage) -> None:
    history = run_launch(tmp_path, models, config, 1, "--bf16", "true", mixed_precision="bf16")
    info = launch_info(tmp_path)
    assert info["distributed_type"] == expected_type
    assert info["zero_stage"] == stage
    assert info["teacher_partitioned"] is False and info["teacher_is_deepspeed_engine"] is False
    got, ref = curve(history), curve(reference)
    assert got[max(got)]["loss_ce"] < got[1]["loss_ce"]
    for step in ref:  # bf16 against fp32: loose, but a wrong loss scale or data split is far outside it
        assert got[step]["loss_ce"] == pytest.approx(ref[step]["loss_ce"], abs=0.05), step
        assert got[step]["kd_weight"] == ref[step]["kd_weight"]
    assert log_history(tmp_path)

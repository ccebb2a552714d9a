"""SALT under DeepSpeed ZeRO-2 and ZeRO-3 on CPU (gloo, 2 processes), against a plain one-process run.

Checks the small-teacher policy: the teacher is a full replica on every rank (not a DeepSpeed engine, not
partitioned) while the student is sharded (ZeRO-3 partitions its parameters); the fused KD loss gathers the
student's output layer under ZeRO-3 (else the loss would be computed against empty shards); and the loss
curve (loss, loss_ce, loss_kd, teacher_ce, kd_weight, grad_norm) equals the plain run's within tolerance.
"""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip(
    "deepspeed",
    reason="deepspeed is not installed: DS_BUILD_OPS=0 DS_BUILD_SHM_COMM=1 pip install --no-build-isolation deepspeed==0.19.8",
)

from salt_launch import assert_same_curve, launch_info, log_history, run_launch, run_single, save_models  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> tuple[Path, Path]:
    return save_models(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="module")
def reference(tmp_path_factory, models) -> list[dict]:
    return run_single(tmp_path_factory.mktemp("single"), models)


@pytest.mark.parametrize(
    ("config", "stage", "student_partitioned"),
    [("deepspeed_zero2.yaml", 2, False), ("deepspeed_zero3.yaml", 3, True)],
    ids=["zero2", "zero3"],
)
def test_salt_under_deepspeed_matches_plain_run(
    tmp_path, models, reference, config, stage, student_partitioned
):
    # DeepSpeed on CPU: no --use_cpu (that would turn DeepSpeed off); gloo named explicitly, since accelerate
    # finds no default backend without CUDA
    history = run_launch(tmp_path, models, config, 2, "--ddp_backend", "gloo")
    info = launch_info(tmp_path)
    assert info["distributed_type"] == "DEEPSPEED" and info["num_processes"] == 2
    assert info["zero_stage"] == stage
    assert info["student_partitioned"] is student_partitioned
    assert info["teacher_partitioned"] is False and info["teacher_is_deepspeed_engine"] is False
    assert_same_curve(reference, history, atol=1e-3, grad_rtol=1e-2)
    # the consolidated model loads as an ordinary transformers model with the trained weights
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert model.get_output_embeddings().weight.shape[0] == model.config.vocab_size
    mean_loss = lambda h: next(e["train_loss"] for e in h if "train_loss" in e)  # noqa: E731
    assert mean_loss(log_history(tmp_path)) == pytest.approx(mean_loss(reference), abs=1e-3)

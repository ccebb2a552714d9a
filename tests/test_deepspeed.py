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

from salt_launch import (  # noqa: E402
    LR_SCALED,
    assert_lr_scales_act,
    assert_same_curve,
    launch_info,
    log_history,
    run_launch,
    run_single,
    save_clone,
    save_models,
)

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


@pytest.mark.parametrize("config", ["deepspeed_zero2.yaml", "deepspeed_zero3.yaml"], ids=["zero2", "zero3"])
def test_a_clone_trains_at_its_lr_scales_under_deepspeed_as_in_one_process(tmp_path, models, config) -> None:
    """GrownLRMixin under DeepSpeed (no optimizer or scheduler in the DS config, so the Trainer builds both):
    ZeRO keeps the scaled param groups and the ramped LambdaLR, giving the one-process curve, and they act."""
    _, teacher = models
    student = save_clone(tmp_path / "clone", teacher)
    one = run_single(tmp_path / "one", (student, teacher), *LR_SCALED)
    plain = run_single(tmp_path / "plain", (student, teacher))
    ds = run_launch(tmp_path / "ds", (student, teacher), config, 2, "--ddp_backend", "gloo", *LR_SCALED)
    assert launch_info(tmp_path / "ds")["distributed_type"] == "DEEPSPEED"
    assert_same_curve(one, ds, atol=1e-3, grad_rtol=1e-2)
    assert_lr_scales_act(one, plain)


REFUSAL_SCRIPT = """
import json, os, sys, warnings
from transformers import Trainer, TrainingArguments
from hf_salt.hypercloning import GrownLRMixin, clone
from hf_salt.zoo import build_model

warnings.simplefilter("ignore")
ds = {"train_micro_batch_size_per_gpu": "auto", "zero_optimization": {"stage": 2}, **json.loads(sys.argv[1])}
args = TrainingArguments(output_dir=sys.argv[2], deepspeed=ds, ddp_backend="gloo", report_to="none")


class GrownTrainer(GrownLRMixin, Trainer):
    pass


model = clone(build_model("llama-micro", vocab_size=256, seed=0), 2)
try:
    GrownTrainer(model=model, args=args)
except ValueError as error:
    print("REFUSED:", error)
else:
    print("ACCEPTED")
"""


@pytest.mark.parametrize(
    ("section", "named"),
    [
        ({"optimizer": {"type": "AdamW", "params": {"lr": "auto"}}}, "optimizer (\"optimizer\": 'AdamW')"),
        ({"scheduler": {"type": "WarmupLR", "params": {}}}, "scheduler (\"scheduler\": 'WarmupLR')"),
        ({}, None),
    ],
    ids=["ds-optimizer", "ds-scheduler", "trainer-builds-both"],
)
def test_a_deepspeed_config_with_its_own_optimizer_or_scheduler_is_refused_for_a_scaled_clone(
    tmp_path, section, named
) -> None:
    """With "optimizer" in the DS config Trainer never calls create_optimizer, and DeepSpeed's schedulers set one
    rate on every group: the scales would be dropped silently, so GrownLRMixin refuses, naming the section."""
    import json
    import os
    import subprocess
    import sys

    from salt_launch import REPO, free_port

    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()), "RANK": "0"}
    env.update(LOCAL_RANK="0", WORLD_SIZE="1", OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    proc = subprocess.run(
        [sys.executable, "-c", REFUSAL_SCRIPT, json.dumps(section), str(tmp_path)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = proc.stdout.strip().splitlines()[-1]
    if named is None:
        assert out == "ACCEPTED"
    else:
        assert out.startswith("REFUSED:") and f"names its own {named}" in out, out
        assert "Remove the" in out and "--hypercloning_lr_scale false" in out

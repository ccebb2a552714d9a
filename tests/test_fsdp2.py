"""SALT with the student sharded by FSDP2 (`torch.distributed.fsdp.fully_shard`), 2 gloo ranks on CPU.

Each rank computes SALT's loss on its half of a batch through the sharded student; the summed losses, the
logged components and the gradients (FSDP's mean over ranks, gathered with ``full_tensor()``) must equal one
unsharded process on the whole batch. Calling the student's body directly, as the fused loss once did, skips the
root's all-gather and fails with "got mixed torch.Tensor and DTensor".
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from salt_launch import run_torchrun

WORKER = Path(__file__).with_name("fsdp2_worker.py")

pytestmark = pytest.mark.slow


def test_fsdp2_sharded_student_matches_unsharded(tmp_path) -> None:
    run_torchrun(WORKER, str(tmp_path))
    for rank in (0, 1):
        res = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert res["n_params"] > 0
        assert res["loss_sum_over_ranks"] == pytest.approx(res["ref_loss"], rel=1e-6)
        # the gradients are real (not all zero) and equal the unsharded ones
        assert res["min_grad_scale"] > 0
        assert res["max_grad_diff"] <= 1e-6, res["worst"]
        for key in ("loss_ce", "loss_kd", "teacher_ce"):
            assert res["metrics"][key] == pytest.approx(res["ref_metrics"][key], rel=1e-6), key
        assert res["ref_metrics"]["loss_kd"] > 0  # student and teacher differ: KD is really on


LR_WORKER = Path(__file__).with_name("fsdp2_lr_worker.py")


def test_fsdp2_sharded_clone_trains_at_its_lr_scales_as_unsharded(tmp_path) -> None:
    """GrownLRMixin's param groups (by name) and ramped LambdaLR on a clone sharded with fully_shard: same groups,
    same scales and rates as unsharded, and 3 AdamW steps give the unsharded parameters (full_tensor())."""
    run_torchrun(LR_WORKER, str(tmp_path))
    for rank in (0, 1):
        res = json.loads((tmp_path / f"rank{rank}.json").read_text())
        # every parameter is a DTensor shard, whether sharded before the optimizer was built or after (the order
        # of Trainer + accelerate's FSDP2 prepare, which moves each group onto the sharded parameters)
        assert len(res["sharded"]) == len(res["late_sharded"]) == res["n_params"] > 0
        scales = res["scales"]
        assert scales and set(scales.values()) == {0.5}  # a 2x clone: the grown input axes are halved
        assert res["groups"] == res["late_groups"] == res["ref_groups"]
        for group in res["groups"]:  # each group holds exactly the names of its recorded scale
            assert {scales.get(name, 1.0) for name in group["names"]} == {group["scale"]}, group
        # the linear schedule (lr 1e-2 to 0 over 4 steps) times each factor ramped from its scale to 1 over 2
        lr = lambda k: 1e-2 * (1 - k / 4)  # noqa: E731
        expected = [
            [lr(k) * (g["scale"] + (1 - g["scale"]) * min(1, k / 2)) for g in res["groups"]] for k in range(3)
        ]
        for got in (res["rates"], res["late_rates"], res["ref_rates"]):
            assert [r for step in got for r in step] == pytest.approx(
                [r for step in expected for r in step], rel=1e-9
            )
        assert res["max_param_diff"] <= 1e-6, res["worst"]
        # the steps moved the weights, and the scales acted (the plain Trainer's one-rate steps land elsewhere)
        assert res["moved"] > 1e-3 and res["scaled_vs_one_rate"] > 1e-3

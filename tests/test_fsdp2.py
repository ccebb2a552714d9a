"""SALT with the student sharded by FSDP2 (`torch.distributed.fsdp.fully_shard`), 2 gloo ranks on CPU.

Each rank computes SALT's loss on its half of a batch through the sharded student; the summed losses, the
logged components and the gradients (FSDP's mean over ranks, gathered with ``full_tensor()``) must equal one
unsharded process on the whole batch. Calling the student's body directly, as the fused loss once did, skips the
root's all-gather and fails with "got mixed torch.Tensor and DTensor".
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from salt_launch import free_port

WORKER = Path(__file__).with_name("fsdp2_worker.py")

pytestmark = pytest.mark.slow


def test_fsdp2_sharded_student_matches_unsharded(tmp_path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    port = str(free_port())
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", port]
    proc = subprocess.run(
        [*cmd, str(WORKER), str(tmp_path)], env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
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

"""SALT_DS under 2 CPU processes (torchrun + gloo): per-rank scoring shards; training in one process's order."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import datasets
import pytest
import torch
from salt_launch import run_torchrun

from hf_salt.salt_ds import score_dataset
from hf_salt.zoo import build_model

SCRIPT = textwrap.dedent(
    """
    import json, sys, datasets, torch
    from accelerate import PartialState
    from hf_salt.salt_ds import score_dataset
    from hf_salt.zoo import build_model

    state = PartialState(cpu=True)  # gloo process group from torchrun's environment
    datasets.disable_progress_bars()
    ids = torch.randint(0, 96, (11, 16), generator=torch.Generator().manual_seed(0)).tolist()
    scored = score_dataset(datasets.Dataset.from_dict({"input_ids": ids}), build_model("llama-tiny", vocab_size=96, seed=0),
                           top_k=30, batch_size=4, cache_dir=sys.argv[1])
    with open(f"{sys.argv[1]}/rank{state.process_index}.json", "w") as f:
        json.dump({"n": state.num_processes, "scores": list(scored["salt_ds_score"])}, f)
    """
)


@pytest.mark.slow
def test_two_ranks_gather_the_full_scores(tmp_path):
    (tmp_path / "score.py").write_text(SCRIPT)
    run_torchrun(tmp_path / "score.py", str(tmp_path), timeout=240)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["n"] == ranks[1]["n"] == 2
    assert len(list(tmp_path.glob("salt_ds-*.arrow"))) == 2  # one cached shard per rank
    ids = torch.randint(0, 96, (11, 16), generator=torch.Generator().manual_seed(0)).tolist()
    single = score_dataset(
        datasets.Dataset.from_dict({"input_ids": ids}),
        build_model("llama-tiny", vocab_size=96, seed=0),
        top_k=30,
        cache_dir=tmp_path / "single",
    )
    assert ranks[0]["scores"] == ranks[1]["scores"]
    assert ranks[0]["scores"] == pytest.approx(list(single["salt_ds_score"]), abs=1e-6)


TRAIN_SCRIPT = textwrap.dedent(
    """
    import json, sys, datasets, torch
    sys.path.insert(0, sys.argv[2])
    from test_salt_ds_order import POOL_MARK, TRAIN_MARK, Recording, _rows
    from hf_salt.salt.config import SALTConfig
    from hf_salt.zoo import build_model

    datasets.disable_progress_bars()
    out = sys.argv[1]

    def run(resume=None):
        args = SALTConfig(output_dir=out + "/run", per_device_train_batch_size=2, num_train_epochs=3, kd_steps=5,
                          save_strategy="steps", save_steps=6, learning_rate=1e-3, report_to="none",
                          disable_tqdm=True, use_cpu=True, seed=0)
        trainer = Recording(model=build_model("llama-tiny", vocab_size=64, seed=1), args=args,
                            teacher_model=build_model("llama-tiny", vocab_size=64, seed=0),
                            train_dataset=_rows(16, TRAIN_MARK, 1), salt_ds_pool=_rows(12, POOL_MARK, 0, scored=True))
        trainer.seen = []
        trainer.train(resume_from_checkpoint=resume)
        return trainer

    full = run()
    resumed = run(out + "/run/checkpoint-6")  # epoch 1, 2 batches per rank skipped
    rank = full.args.process_index
    with open(f"{out}/rank{rank}.json", "w") as f:
        json.dump({"n": full.args.world_size, "steps": full.state.global_step, "full": full.seen,
                   "resumed": resumed.seen}, f)
    """
)


@pytest.mark.slow
def test_two_ranks_read_the_single_process_order_and_resume_exactly(tmp_path):
    """SALT_DS under 2 gloo ranks (batch 2 each): optimizer step s reads, over both ranks, exactly the rows one
    process with batch 4 reads at step s (pool for the 5 KD steps, across the epoch boundary, then plain SALT's
    rows); a resume in epoch 1 (where accelerate reaches the epoch through the dataset) reads the same rows."""
    from pathlib import Path

    from test_salt_ds_order import POOL_MARK, TRAIN_MARK, _rows, _run

    (tmp_path / "train.py").write_text(TRAIN_SCRIPT)
    tests = str(Path(__file__).resolve().parent)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
    done = subprocess.run(
        [*cmd, str(tmp_path / "train.py"), str(tmp_path), tests], capture_output=True, text=True, timeout=480
    )
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["n"] == 2 and ranks[0]["steps"] == ranks[1]["steps"] == 12
    ddp = [[tuple(x) for x in a + b] for a, b in zip(ranks[0]["full"], ranks[1]["full"])]

    single = _run(
        tmp_path / "single",
        _rows(16, TRAIN_MARK, 1),
        _rows(12, POOL_MARK, 0, scored=True),
        num_train_epochs=3,
        kd_steps=5,
        per_device_train_batch_size=4,
    )
    assert ddp == single.seen
    assert all(m == POOL_MARK for b in ddp[:5] for m, _ in b)
    assert all(m == TRAIN_MARK for b in ddp[5:] for m, _ in b)
    for r in (0, 1):
        assert ranks[r]["resumed"] == ranks[r]["full"][6:]

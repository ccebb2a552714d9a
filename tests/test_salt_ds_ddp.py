"""SALT_DS scoring under 2 CPU processes (torchrun + gloo): shards scored per rank, every rank gets all scores."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import datasets
import pytest
import torch

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
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        str(tmp_path / "score.py"),
        str(tmp_path),
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
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

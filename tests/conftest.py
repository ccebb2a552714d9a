"""Test-wide settings: offline, deterministic, one thread per xdist worker (CI has 2 cores)."""

import os
import sys
from pathlib import Path

# the tiny model builders and the model-type matrices are project tooling in benchmarks/, not in the wheel:
# tests import them as `tiny_models` and `hypercloning_coverage` (appended, so nothing installed is shadowed)
BENCHMARKS = str(Path(__file__).resolve().parent.parent / "benchmarks")
if BENCHMARKS not in sys.path:
    sys.path.append(BENCHMARKS)

for key, value in {
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "MPLBACKEND": "Agg",
    "OMP_NUM_THREADS": "1",
    "WANDB_DISABLED": "true",
}.items():
    os.environ.setdefault(key, value)

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tokenizer():
    from hf_salt.data import load_tokenizer

    return load_tokenizer()


def pytest_collection_modifyitems(config, items):
    """GPU tests skip with a reason when no CUDA device is present."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device; none is present on this machine")
    for item in items:
        if item.get_closest_marker("gpu") is not None:  # not `in item.keywords`: a folder named gpu is one
            item.add_marker(skip)

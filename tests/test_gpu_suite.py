"""The GPU suite (benchmarks/gpu/suite.py) in --smoke mode: every part's code path on CPU at tiny sizes, through
the same driver (one process per part, its budget, its JSON), so the one-shot GPU run cannot rot."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

SUITE = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu" / "suite.py"


def _suite():
    spec = importlib.util.spec_from_file_location("hf_salt_gpu_suite", SUITE)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_smoke_runs_every_part_and_writes_its_figures(tmp_path):
    suite = _suite()
    summary = suite.drive(list(suite.PARTS), tmp_path, smoke=True)
    assert list(summary["parts"]) == ["tests", "step", "salt_ds", "hypercloning", "reproduce"]
    for name, entry in summary["parts"].items():
        assert entry["status"] == "ok", (name, entry.get("log_tail"))
        assert (tmp_path / f"{name}.json").is_file()
    assert json.loads((tmp_path / "summary.json").read_text()) == json.loads(json.dumps(summary))

    tests = json.loads((tmp_path / "tests.json").read_text())
    assert tests["cases"] and tests["counts"]["skipped"] == len(tests["cases"])  # no CUDA here: all skip
    step = json.loads((tmp_path / "step.json").read_text())
    variants = [r["variant"] for r in step["rows"]]
    assert variants[0] == "plain" and {"salt-stage1", "salt-stage2"} <= set(variants)
    if importlib.util.find_spec("liger_kernel") is not None:
        assert "salt-stage1-liger" in variants
    assert all(r["time_ratio"] > 0 for r in step["rows"]) and step["rows"][0]["time_ratio"] == 1.0
    assert 1.0 < step["flop_floor"] < 1.5
    assert json.loads((tmp_path / "salt_ds.json").read_text())["wall_ratio"] > 0
    hc = json.loads((tmp_path / "hypercloning.json").read_text())["runs"]
    assert (
        hc["float32"]["max_logit_diff"] < 1e-4
        and hc["float32"]["clone_params"] > hc["float32"]["source_params"]
    )
    assert set(hc) == {"float32", "bfloat16"}
    repro = json.loads((tmp_path / "reproduce.json").read_text())
    assert set(repro["arms"]) == {"baseline", "salt", "hypercloning"}
    assert repro["arms"]["baseline"]["step_frac"] == [1.0]
    assert "salt" in suite.table(summary) and "reproduce" in suite.table(summary)

"""The small-vocabulary CPU benchmark in seconds: the corpus builder, the BPE and slice builder, and
`hf-salt benchmark --config benchmarks/configs/cpu_small_vocab.yaml` on a tiny budget (its presets, its arms, and
salt-auto as the config's comment says it ran, with its recorded decision), so the full-size path cannot rot."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def _script(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def test_small_vocab_benchmark_end_to_end(tmp_path):
    from hf_salt.cli.main import main

    corpus = tmp_path / "code-corpus"  # this package's own sources stand in for site-packages
    roots = [str(REPO / "hf_salt")]
    _script("build_code_corpus").main(
        ["--output", str(corpus), "--roots", *roots, "--validation_fraction", "0.2", "--token_sample", "0.1"]
    )
    tok = _script("build_code_tokenizer").main(
        ["--corpus", str(corpus), "--vocab_size", "320", "--sample_mb", "0.5", "--slice_mb", "0.5"]
    )
    data = corpus / "slice-0.5mb" / "data"
    train_rows = (data / "train.jsonl").read_text().splitlines()
    assert 0 < sum(len(json.loads(r)["text"].encode()) for r in train_rows) < 0.5e6 + 2e5  # ~the slice asked
    assert (data / "validation.jsonl").read_bytes() == (corpus / "data" / "validation.jsonl").read_bytes()

    out = tmp_path / "run"
    argv = [
        "benchmark", "--config", str(REPO / "benchmarks" / "configs" / "cpu_small_vocab.yaml"),
        "--corpus", str(data), "--tokenizer", str(tok), "--block_size", "32", "--batch_size", "4",
        "--max_steps", "8", "--teacher_steps", "8", "--eval_every", "4", "--eval_blocks", "8", "--warmup_steps", "1",
        "--seeds", "0", "--workers", "1", "--output_dir", str(out), "--report_dir", str(out), "--results_md", "",
    ]  # fmt: skip
    assert main(argv) == 0
    results = json.loads((out / "results.json").read_text())
    runs = results["runs"]["0"]
    assert list(runs) == ["baseline", "salt", "rkd", "hypercloning", "hypercloning+salt"]
    for arm, run in runs.items():
        assert run["curve"]["step"] == [0, 4, 8] and all(math.isfinite(v) for v in run["curve"]["loss"]), arm
    # the config's presets and one epoch: llama-micro teacher, its 2x-wide student, no block read twice
    config = results["config"]
    assert (config["teacher_preset"], config["student_preset"], config["single_epoch"]) == (
        "llama-micro",
        "llama-micro-2x",
        True,
    )
    # the report judges SALT's wall-clock against this scale's own target (salt_wall_target: 0.80)
    report_md = (out / f"reproduction_{config['label']}.md").read_text()
    assert "salt: wall-clock ≤ 0.80 (teacher forwards included)" in report_md

    # salt-auto as its RESULTS.md rows were run (the config's comment): --arms salt-auto --kd_steps 0.5, in the same
    # folder (teacher and baseline reused); the cap is kd_steps, its decision is recorded, omega follows it
    baseline = runs["baseline"]
    assert main([*argv, "--arms", "salt-auto", "--kd_steps", "0.5"]) == 0
    runs = json.loads((out / "results.json").read_text())["runs"]["0"]
    assert list(runs) == ["baseline", "salt-auto"]
    assert runs["baseline"] == baseline  # reused as saved: kd_steps is not part of the baseline's run key
    auto = runs["salt-auto"]["kd_auto"]
    assert auto["cap"] == 4 and auto["switch_step"] is not None and "switched at step" in auto["summary"]
    assert runs["salt-auto"]["kd_steps"] == auto["switch_step"] + auto["decay_steps"] <= 4
    assert runs["salt-auto"]["kd_weight"]["weight"][runs["salt-auto"]["kd_steps"] :] == [0.0] * (
        8 - runs["salt-auto"]["kd_steps"]
    )

"""Smoke run of examples/lora_finetune_step_by_step.py at tiny size: LoRA on a saved student, shipped CQA."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import pytest
import torch
from huggingface_hub import ModelCard
from peft import PeftModel
from transformers import AutoModelForCausalLM

from hf_salt.data import load_tokenizer
from hf_salt.zoo import build_model

SCRIPT = Path(__file__).resolve().parent.parent / "examples" / "lora_finetune_step_by_step.py"


def _load_example():
    name = "lora_finetune_step_by_step_example"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, SCRIPT)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def test_lora_finetune_example(tmp_path: Path) -> None:
    # stands in for the demo's SALT student folder (hf-salt-demo/salt): weights and tokenizer
    student_dir = tmp_path / "salt"
    tokenizer = load_tokenizer()
    build_model("llama-tiny-2x", vocab_size=len(tokenizer), seed=0).save_pretrained(student_dir)
    tokenizer.save_pretrained(student_dir)
    out = tmp_path / "lora"

    metrics = _load_example().main(
        [
            "--model", str(student_dir), "--output_dir", str(out), "--dataset", "cqa",
            "--max_train_samples", "16", "--max_eval_samples", "4", "--max_steps", "3",
            "--per_device_train_batch_size", "4", "--per_device_eval_batch_size", "4", "--learning_rate", "1e-2",
            "--max_source_length", "64", "--max_rationale_length", "32", "--generation_max_length", "4",
            "--lora_r", "4", "--lora_target_modules", "q_proj,v_proj", "--logging_steps", "1",
            "--use_cpu", "true", "--disable_tqdm", "true", "--merge", "true",
        ]
    )  # fmt: skip
    assert math.isfinite(metrics["eval_loss"])

    # an adapter folder, not full weights, with the hf-salt card
    assert (out / "adapter_config.json").is_file() and (out / "adapter_model.safetensors").is_file()
    assert not (out / "model.safetensors").exists()
    card = ModelCard.load(out / "README.md")
    assert card.data.library_name == "peft"
    assert {"hf-salt", "distilling-step-by-step"} <= set(card.data.tags)
    text = (out / "README.md").read_text()
    assert "| task data | cqa |" in text and "| label task prefix | `predict: ` |" in text

    # only the adapters trained: base weights as saved, LoRA B moved away from its zero init
    base = AutoModelForCausalLM.from_pretrained(student_dir)
    original = {k: v.clone() for k, v in base.state_dict().items()}
    tuned = PeftModel.from_pretrained(base, out)
    lora_b = [p for n, p in tuned.named_parameters() if "lora_B" in n]
    assert len(lora_b) == 2 * base.config.num_hidden_layers and all(p.abs().sum() > 0 for p in lora_b)
    for name, value in tuned.get_base_model().state_dict().items():
        key = name.replace(".base_layer", "")
        if key in original:
            assert torch.equal(value, original[key]), name

    # the merged model is an ordinary transformers model computing the same function
    merged = AutoModelForCausalLM.from_pretrained(out / "merged")
    ids = torch.tensor([[5, 17, 42, 7]])
    tuned.eval()
    with torch.no_grad():
        torch.testing.assert_close(merged(ids).logits, tuned(ids).logits, atol=1e-4, rtol=1e-4)


def test_lora_example_two_processes_match_one(tmp_path: Path) -> None:
    """PEFT + StepByStepTrainer under `accelerate launch` (2 gloo processes): the 1-process loss curve."""
    import json
    import os
    import subprocess

    student_dir = tmp_path / "salt"
    tokenizer = load_tokenizer()
    build_model("llama-tiny-2x", vocab_size=len(tokenizer), seed=0).save_pretrained(student_dir)
    tokenizer.save_pretrained(student_dir)
    common = [
        "--model", str(student_dir), "--dataset", "cqa", "--max_train_samples", "32", "--max_eval_samples", "8",
        "--max_steps", "4", "--learning_rate", "1e-2", "--max_source_length", "64", "--max_rationale_length", "32",
        "--generation_max_length", "4", "--lora_r", "4", "--lora_dropout", "0", "--lora_target_modules",
        "q_proj,v_proj", "--logging_steps", "1", "--use_cpu", "true", "--disable_tqdm", "true", "--seed", "0",
    ]  # fmt: skip
    _load_example().main(
        ["--output_dir", str(tmp_path / "one"), "--per_device_train_batch_size", "8", *common]
    )
    from salt_launch import CONFIGS, free_port

    cmd = [
        sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(CONFIGS / "ddp_cpu.yaml"),
        "--main_process_port", str(free_port()), str(SCRIPT),
        "--output_dir", str(tmp_path / "two"), "--per_device_train_batch_size", "4", *common,
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-5000:]

    def steps(folder: str) -> list[dict]:
        history = json.loads((tmp_path / folder / "trainer_state.json").read_text())["log_history"]
        return [h for h in history if "loss" in h]

    one, two = steps("one"), steps("two")
    assert [h["step"] for h in one] == [h["step"] for h in two] == [1, 2, 3, 4]
    for a, b in zip(one, two):
        for key in ("loss", "loss_label", "loss_rationale", "grad_norm"):
            assert b[key] == pytest.approx(a[key], rel=1e-4), (a["step"], key)

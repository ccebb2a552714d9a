"""The Hub and model cards on real tiny runs: a failed upload says why in one line after the model is saved;
cards name local models as local folders, record what the run knows, and replace PEFT's blank adapter card."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from datasets import Dataset
from huggingface_hub import ModelCard
from peft import LoraConfig
from transformers import Trainer, TrainingArguments

from hf_salt import SALTConfig, SALTTrainer
from hf_salt.hub import HubUploadError
from hf_salt.model_card import write_model_card
from hf_salt.zoo import build_model

HF_SALT = Path(sys.executable).with_name("hf-salt")


def _data(vocab_size: int, n: int = 8, length: int = 16) -> Dataset:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab_size, (n, length), generator=g).tolist()
    return Dataset.from_dict({"input_ids": ids, "labels": ids})


def _salt_trainer(tmp_path: Path, **kwargs) -> SALTTrainer:
    args = SALTConfig(
        output_dir=str(tmp_path / "out"),
        max_steps=2,
        kd_steps=1,
        per_device_train_batch_size=4,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        disable_tqdm=True,
        **kwargs,
    )
    student = build_model("llama-tiny", vocab_size=128, seed=0)
    teacher = build_model("llama-tiny", vocab_size=128, seed=1)
    return SALTTrainer(model=student, args=args, teacher_model=teacher, train_dataset=_data(128))


def test_push_to_hub_offline_saves_first_then_fails_in_one_line(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # push_to_hub=True makes Trainer.__init__ create the repo: offline, training must still go ahead
    trainer = _salt_trainer(tmp_path, push_to_hub=True, hub_model_id="me/tiny-salt")
    trainer.train()
    with pytest.raises(HubUploadError) as info:
        trainer.push_to_hub()
    out = Path(trainer.args.output_dir).absolute()
    message = str(info.value)
    assert "\n" not in message and info.value.__cause__ is None and info.value.__suppress_context__
    assert "could not upload to the Hub (me/tiny-salt)" in message and "HF_HUB_OFFLINE=1" in message
    assert f"saved locally at {out}" in message
    assert {"model.safetensors", "config.json", "README.md"} <= {p.name for p in out.iterdir()}
    card = ModelCard.load(out / "README.md")
    assert "salt" in card.data.tags and "| n_KD (distillation steps) | 1 |" in card.text


def test_push_to_hub_without_token_says_so(tmp_path, monkeypatch) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))  # no stored token either
    monkeypatch.setattr("huggingface_hub.get_token", lambda: None)
    trainer = _salt_trainer(tmp_path)
    trainer.train()
    with pytest.raises(HubUploadError, match="no Hugging Face token .* saved locally at"):
        trainer.push_to_hub()
    assert (Path(trainer.args.output_dir) / "model.safetensors").is_file()


def test_cli_push_to_hub_unreachable_and_card_of_a_local_teacher(tmp_path) -> None:
    """`hf-salt pretrain --push_to_hub` against a closed loopback port: the run finishes and saves, then one
    line says the upload failed and why. Its card names the local teacher as a local model and leaves
    nothing the run knows as "not recorded"."""
    teacher = tmp_path / "teacher" / "model"
    build_model("llama-tiny", seed=1).save_pretrained(teacher)
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    env.update(HF_ENDPOINT="http://127.0.0.1:9", HF_TOKEN="hf_not_a_real_token", HF_HOME=str(tmp_path / "hf"))
    out = tmp_path / "student"
    argv = [
        str(HF_SALT), "pretrain", "--model", "llama-tiny", "--teacher_model_name_or_path", str(teacher),
        "--kd_steps", "2", "--max_steps", "3", "--max_train_blocks", "12", "--max_eval_blocks", "2",
        "--block_size", "32", "--per_device_train_batch_size", "4", "--logging_steps", "1",
        "--output_dir", str(out), "--push_to_hub", "--hub_model_id", "me/tiny-student", "--use_cpu", "true",
    ]  # fmt: skip
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 1, done.stderr[-3000:]
    assert "Traceback" not in done.stderr and "ConnectError" not in done.stderr.replace("(ConnectError", "")
    errors = [line for line in done.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1, done.stderr[-3000:]
    assert "could not upload to the Hub (me/tiny-student): no connection to http://127.0.0.1:9" in errors[0]
    assert f"saved locally at {out / 'model'}" in errors[0]
    assert (out / "model" / "model.safetensors").is_file() and (out / "all_results.json").is_file()

    card = ModelCard.load(out / "model" / "README.md")
    assert card.data.base_model is None  # a local teacher is not the Hub base model
    text = card.text
    assert "not recorded" not in text, text
    assert "| teacher | a local model (`teacher/model`) |" in text
    assert "Its (smaller) teacher: a local model (`teacher/model`)." in text
    assert str(tmp_path) not in text and "hf.co" not in text
    assert "automatic switch" not in text  # kd_schedule=step: the auto switch is not part of this run
    assert "| n_KD (distillation steps) | 2 |" in text and "| omega (KD weight) | 0.75 |" in text
    assert "| dataset | wikitext-2 |" in text  # the corpus the CLI trained on


def test_cli_distill_step_by_step_card_and_offline_push(tmp_path, capsys) -> None:
    from hf_salt.cli.main import main

    assert os.environ["HF_HUB_OFFLINE"] == "1"  # tests/conftest.py
    config = tmp_path / "cfg.yaml"
    config.write_text("model: t5-tiny\nmax_steps: 2\nper_device_train_batch_size: 4\nmax_eval_samples: 4\n")
    out = tmp_path / "out"
    argv = [
        "distill-step-by-step", "--config", str(config), "--dataset", "svamp", "--train_fraction", "0.05",
        "--output_dir", str(out), "--generation_max_length", "4", "--use_cpu", "true", "--push_to_hub",
        "--max_test_samples", "2",
    ]  # fmt: skip
    assert main(argv) == 1
    captured = capsys.readouterr()
    assert "--push_to_hub: HF_HUB_OFFLINE=1 is set" in captured.out  # said before training, too
    errors = [line for line in captured.err.splitlines() if "error:" in line]
    assert len(errors) == 1 and "Traceback" not in captured.err
    assert errors[0].startswith("hf-salt distill-step-by-step: error: could not upload to the Hub (out): ")
    assert (
        f"HF_HUB_OFFLINE=1 is set (offline mode). The model is saved locally at {out / 'model'};" in errors[0]
    )
    assert (out / "model" / "model.safetensors").is_file() and (out / "all_results.json").is_file()

    card = ModelCard.load(out / "model" / "README.md")
    assert card.data.tags == ["hf-salt", "distilling-step-by-step", "rationale-distillation"]
    assert card.data.datasets is None  # "svamp" is the shipped copy, not a Hub data set id
    text = card.text
    assert "not recorded" not in text, text
    assert "| task data | svamp |" in text
    assert "| rationales from | PaLM-540B (the paper's released rationales) |" in text
    results = json.loads((out / "all_results.json").read_text())
    assert f"| eval_accuracy (label accuracy) | {results['eval_accuracy']:.4g} |" in text
    assert f"| test_accuracy (label accuracy) | {results['test_accuracy']:.4g} |" in text


def test_card_of_a_model_grown_from_a_local_folder(tmp_path, monkeypatch) -> None:
    from hf_salt import hypercloning as hc

    # "models/small" is a relative LOCAL folder that reads like a Hub id (so does the clone's name): the card
    # must not present it as one. It exists before the load, and the tests run offline: nothing is downloaded.
    monkeypatch.chdir(tmp_path)
    import huggingface_hub.constants

    # a load that went to the Hub would fail here, not download (the constant is read once, at import)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    build_model("llama-tiny", vocab_size=128, seed=0).save_pretrained("models/small")
    assert (tmp_path / "models" / "small" / "config.json").is_file()
    grown = hc.from_pretrained("models/small", width_multiplier=2)  # no noise: an exact copy
    assert grown.config._name_or_path == "models/small-hypercloned-2x"
    args = TrainingArguments(
        output_dir=str(tmp_path / "out"), max_steps=1, report_to="none", use_cpu=True, save_strategy="no"
    )
    trainer = Trainer(model=grown, args=args, train_dataset=_data(128))
    trainer.train()
    text = write_model_card(trainer, method="hypercloning", method_info={})
    card = ModelCard.load(Path(args.output_dir) / "README.md")
    assert card.data.base_model is None
    assert "| grown from | a local model (`small`) |" in text
    assert "Grown from: a local model (`small`)." in text and "hf.co" not in text
    assert "| width multiplier | 2 |" in text and "| FFN multiplier | 2 |" in text
    assert "| depth multiplier | 1 |" in text
    assert "| noise SNR (dB) | none (an exact copy of the source's function) |" in text
    assert "not recorded" not in text


def test_peft_save_model_writes_the_hf_salt_card(tmp_path) -> None:
    args = SALTConfig(
        output_dir=str(tmp_path / "out"), max_steps=1, kd_steps=1, per_device_train_batch_size=4,
        save_strategy="no", report_to="none", use_cpu=True, disable_tqdm=True,
    )  # fmt: skip
    base = build_model("llama-tiny", vocab_size=128, seed=0)
    base.config._name_or_path = "me/tiny-base"
    trainer = SALTTrainer(
        model=base,
        args=args,
        teacher_model=build_model("llama-tiny", vocab_size=128, seed=1),
        train_dataset=_data(128),
        peft_config=LoraConfig(r=4, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"),
    )
    trainer.train()
    adapter = tmp_path / "adapter"
    trainer.save_model(str(adapter))
    assert (adapter / "adapter_config.json").is_file()
    card = ModelCard.load(adapter / "README.md")
    assert card.data.library_name == "peft"
    assert card.data.base_model == "me/tiny-base"
    assert card.data.tags[:3] == ["hf-salt", "salt", "knowledge-distillation"]
    assert "[More Information Needed]" not in card.text  # PEFT's blank card is gone
    assert "**PEFT adapter** (LORA)" in card.text and "loads on top of\n`me/tiny-base`" in card.text
    assert "| n_KD (distillation steps) | 1 |" in card.text
    assert f'from_pretrained("{adapter}")' in card.text  # the quick start loads the adapter folder


def test_cli_grow_writes_the_hypercloning_card_with_the_weights(tmp_path, monkeypatch) -> None:
    """The real `hf-salt grow` from a relative local folder that reads like a Hub id: the grown folder's card
    states what the clone's own `config.hypercloning` records, and shows the source as a local folder."""
    from transformers import AutoModelForCausalLM

    build_model("llama-tiny", vocab_size=128, seed=0).save_pretrained(tmp_path / "models" / "small")
    argv = [
        str(HF_SALT), "grow", "models/small", "grown", "--width-multiplier", "2", "--ffn-multiplier", "3",
        "--snr-db", "10", "--depth-multiplier", "2",
    ]  # fmt: skip
    done = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    dst = tmp_path / "grown"
    facts = AutoModelForCausalLM.from_pretrained(dst).config.hypercloning
    assert facts["source"] == "models/small" and facts["verified"] is True

    card = ModelCard.load(dst / "README.md")
    assert card.data.tags == ["hf-salt", "hypercloning"] and card.data.library_name == "transformers"
    assert card.data.base_model is None  # a local folder is no Hub base model
    text = card.text
    for row in (
        "| grown from | a local model (`small`) |",
        f"| width multiplier | {facts['width_multiplier']} |",
        f"| FFN multiplier | {facts['ffn_multiplier']} |",
        f"| depth multiplier | {facts['depth_multiplier']} |",
        f"| noise SNR (dB) | {facts['snr_db']:g} |",
        "| checked against the source | yes |",
    ):
        assert row in text, row
    diff = re.search(r"\| max \\\|logit difference\\\| on the 2 x 8 probe tokens \| (\S+) \|", text)
    assert diff and float(diff.group(1)) == pytest.approx(facts["probe_max_logit_diff"], rel=1e-5)
    assert "arXiv:2409.12903" in text and "Samragh" in text  # the citation
    assert "not recorded" not in text and str(tmp_path) not in text and "hf.co" not in text
    assert "Training hyperparameters" not in text  # grown, not trained: nothing to report
    code = re.search(r"```python\n(.*?)```", text, re.S).group(1)
    monkeypatch.chdir(tmp_path)  # the quick start names DST as it was given on the command line
    scope: dict = {}
    exec(code, scope)
    assert scope["model"].config.hypercloning == facts


def test_grow_writes_no_weights_without_their_card(tmp_path, monkeypatch, capsys) -> None:
    """The card is part of the grown folder: when it cannot be written, the folder is not written either."""
    import errno

    import hf_salt.model_card
    from hf_salt.cli.main import main

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "grown" / "README.md"))

    monkeypatch.setattr(hf_salt.model_card, "render_model_card", full)
    assert main(["grow", "llama-tiny", str(tmp_path / "grown"), "--snr-db", "10"]) == 1
    assert "free some space" in capsys.readouterr().err  # the CLI's disk-full message
    assert not (tmp_path / "grown").exists() and not list(tmp_path.glob(".grown.tmp-*"))

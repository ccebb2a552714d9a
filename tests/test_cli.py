import subprocess
import sys
import warnings
from pathlib import Path

import pytest
from transformers import AutoModelForCausalLM

from hf_salt.cli.main import COMMANDS, main
from hf_salt.cli.parser import parse_args
from hf_salt.cli.pretrain import DataArguments, ModelArguments, PretrainArguments

PRETRAIN = [ModelArguments, DataArguments, PretrainArguments]


def test_top_level_help_lists_every_command(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in COMMANDS:
        assert name in out


def test_console_script_pretrain_help_lists_training_arguments():
    exe = Path(sys.executable).with_name("hf-salt")
    out = subprocess.run([str(exe), "pretrain", "--help"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    for flag in (
        "--model",
        "--corpus",
        "--block_size",
        "--learning_rate",
        "--max_steps",
        "--config",
        "--report_to",
    ):
        assert flag in out.stdout


def test_yaml_config_sets_defaults_and_flags_override(tmp_path):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("model: gpt2-tiny\nblock_size: 32\nlearning_rate: 0.01\nmax_steps: 7\n")
    model_args, data_args, train_args = parse_args(PRETRAIN, ["--config", str(cfg), "--max_steps", "9"])
    assert model_args.model == "gpt2-tiny" and data_args.block_size == 32
    assert train_args.learning_rate == 0.01 and train_args.max_steps == 9
    cfg.write_text("modle: gpt2-tiny\n")
    with pytest.raises(ValueError, match="Unknown option.*modle"):
        parse_args(PRETRAIN, ["--config", str(cfg)])


def test_json_config_is_read(tmp_path):
    cfg = tmp_path / "cfg.json"
    cfg.write_text('{"corpus": "tinyshakespeare", "max_eval_blocks": 3}')
    _, data_args, _ = parse_args(PRETRAIN, [f"--config={cfg}"])
    assert data_args.corpus == "tinyshakespeare" and data_args.max_eval_blocks == 3


def test_pretrain_end_to_end_tiny(tmp_path, capsys):
    out = tmp_path / "run"
    args = [
        "pretrain",
        "--corpus",
        "tinyshakespeare",
        "--block_size",
        "32",
        "--max_steps",
        "4",
        "--max_train_blocks",
        "64",
    ]
    args += [
        "--max_eval_blocks",
        "8",
        "--output_dir",
        str(out),
        "--logging_steps",
        "2",
        "--disable_tqdm",
        "true",
    ]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert main(args) == 0
    assert not [w for w in caught if "pin_memory" in str(w.message)]  # no accelerator warning on CPU
    printed = capsys.readouterr().out
    assert "perplexity" in printed
    model = AutoModelForCausalLM.from_pretrained(out / "model")
    assert model.config.hidden_size == 32
    assert (out / "model" / "tokenizer.json").exists()
    assert not list(out.glob(".model.tmp-*"))


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--model", "llama-tinny"], "neither a zoo preset"),
        (["--corpus", "no/such/file.txt"], "neither an embedded corpus"),
        (["--block_size", "4096"], "larger than the model's context"),
    ],
)
def test_pretrain_bad_input_fails_before_writing(tmp_path, capsys, extra, message):
    out = tmp_path / "run"
    assert main(["pretrain", "--output_dir", str(out), *extra]) == 2
    assert message in capsys.readouterr().err
    assert not (out / "model").exists()


def test_pretrain_empty_corpus(tmp_path, capsys):
    (tmp_path / "train.txt").write_text("\n\n   \n")
    assert (
        main(["pretrain", "--corpus", str(tmp_path / "train.txt"), "--output_dir", str(tmp_path / "o")]) == 2
    )
    assert "empty" in capsys.readouterr().err


def test_unknown_command(capsys):
    assert main(["frobnicate"]) == 2
    assert "unknown command" in capsys.readouterr().err

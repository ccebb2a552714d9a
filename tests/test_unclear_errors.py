"""Errors that used to be unclear (issue #21): each one now names its cause and its fix, without a traceback.

Signals are sent for real, to `hf-salt` subprocesses stopped at a chosen point (tests/kill_point.py).
"""

from __future__ import annotations

import errno
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from datasets import Dataset

from hf_salt.cli.main import main
from hf_salt.data import load_corpus, load_tokenizer
from hf_salt.salt_ds import score_dataset
from hf_salt.step_by_step import load_step_by_step
from hf_salt.zoo import build_model, load_model

KILL_POINT = Path(__file__).with_name("kill_point.py")
# plain training, checkpoints every 3 steps
PRETRAIN = [
    "pretrain", "--model", "llama-tiny", "--block_size", "32", "--max_train_blocks", "32", "--max_eval_blocks", "2",
    "--max_steps", "6", "--per_device_train_batch_size", "4", "--save_strategy", "steps", "--save_steps", "3",
    "--logging_steps", "1", "--disable_tqdm", "true", "--report_to", "none",
]  # fmt: skip


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}


def interrupt_at(point: str, argv: list[str], timeout: float = 240) -> subprocess.CompletedProcess:
    """Run `hf-salt argv` in a subprocess, send it SIGINT (Ctrl-C) at `point`, return how it ended."""
    proc = subprocess.Popen(
        [sys.executable, str(KILL_POINT), point, "--", *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(),
    )
    deadline = time.monotonic() + timeout
    out = []
    try:
        for line in proc.stdout:
            out.append(line)
            if line.startswith("KILL-POINT"):
                proc.send_signal(signal.SIGINT)
                break
            assert time.monotonic() < deadline, f"{point} not reached in {timeout}s"
        rest, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    return subprocess.CompletedProcess(proc.args, proc.returncode, "".join(out) + rest, err)


def test_ctrl_c_mid_run_names_the_last_checkpoint_and_the_command_that_resumes(tmp_path):
    out = tmp_path / "run"
    ended = interrupt_at("step:4", [*PRETRAIN, "--output_dir", str(out)])
    assert ended.returncode == 130, ended.stderr[-3000:]
    assert "Traceback" not in ended.stderr, ended.stderr[-3000:]
    last = [line for line in ended.stderr.splitlines() if "interrupted" in line]
    assert len(last) == 1, ended.stderr[-3000:]
    assert f"The last complete checkpoint is {out / 'checkpoint-3'}" in last[0]
    # the command it prints resumes the run: it starts from checkpoint-3 and finishes
    command = shlex.split(last[0].split("resume from it with: ", 1)[1])
    assert command[:2] == ["hf-salt", "pretrain"] and command[-2:] == ["--resume_from_checkpoint", "latest"]
    exe = Path(sys.executable).with_name("hf-salt")
    resumed = subprocess.run([str(exe), *command[1:]], capture_output=True, text=True, env=_env())
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"Resuming from {out / 'checkpoint-3'}" in resumed.stdout
    assert (out / "model" / "model.safetensors").is_file()


def test_ctrl_c_inside_the_first_checkpoint_save_leaves_nothing_half_written(tmp_path):
    out = tmp_path / "run"
    ended = interrupt_at("save:3", [*PRETRAIN, "--output_dir", str(out)])
    assert ended.returncode == 130, ended.stderr[-3000:]
    assert "Traceback" not in ended.stderr, ended.stderr[-3000:]
    assert f"No complete checkpoint in {out}" in ended.stderr
    assert sorted(p.name for p in out.iterdir() if p.name.startswith((".checkpoint", "checkpoint"))) == []


# --------------------------------------------------------------------------------------------------- model folders
@pytest.fixture(scope="module")
def teacher(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("teacher") / "teacher"
    tokenizer = load_tokenizer()
    build_model("llama-tiny", vocab_size=len(tokenizer), seed=1).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """A small UTF-8 corpus (train and validation files), so a run gets to the teacher in seconds."""
    folder = tmp_path_factory.mktemp("corpus")
    words = "the small model teaches the large one while it learns the easy tokens first".split()
    lines = [" ".join(words[i % 7 :] + words[: i % 7]) for i in range(300)]
    (folder / "train.txt").write_text("\n".join(lines) + "\n")
    (folder / "valid.txt").write_text("\n".join(lines[:40]) + "\n")
    return folder


def _commands(folder: Path, tmp_path: Path, corpus: Path) -> dict[str, list[str]]:
    """The commands that load a teacher/source model folder, each with `folder` as that model."""
    return {
        "pretrain": [
            "pretrain", *TINY, "--corpus", str(corpus), "--output_dir", str(tmp_path / "run"),
            "--teacher_model_name_or_path", str(folder), "--kd_steps", "1",
        ],
        "score": [
            "score", "--teacher_model_name_or_path", str(folder), "--output_dir", str(tmp_path / "scored"),
            "--corpus", str(corpus), "--block_size", "32", "--max_blocks", "4",
        ],
        "grow": ["grow", str(folder), str(tmp_path / "grown")],
    }  # fmt: skip


TINY = [
    "--model", "llama-tiny", "--block_size", "32", "--max_train_blocks", "8", "--max_eval_blocks", "2",
    "--max_steps", "2", "--disable_tqdm", "true", "--report_to", "none",
]  # fmt: skip


@pytest.mark.parametrize("command", ["pretrain", "score", "grow"])
def test_a_model_folder_without_weights_is_named_before_any_work(command, tmp_path, teacher, corpus, capsys):
    folder = tmp_path / "no-weights"
    folder.mkdir()
    shutil.copy(teacher / "config.json", folder / "config.json")
    assert main(_commands(folder, tmp_path, corpus)[command]) == 2
    err = capsys.readouterr().err
    assert f"{str(folder)!r} holds no weights" in err and "it holds config.json" in err, err
    assert "save_pretrained" in err
    assert not any(p.name in ("run", "scored", "grown") for p in tmp_path.iterdir())


@pytest.mark.parametrize("command", ["pretrain", "score", "grow"])
def test_a_config_json_that_does_not_parse_is_named_with_its_line(command, tmp_path, teacher, corpus, capsys):
    folder = tmp_path / "bad-config"
    shutil.copytree(teacher, folder)
    (folder / "config.json").write_text('{\n  "model_type": "llama",\n  "hidden_size": 64,,\n}\n')
    assert main(_commands(folder, tmp_path, corpus)[command]) == 2
    err = capsys.readouterr().err
    assert f"{str(folder / 'config.json')!r} is not valid JSON (line 3" in err, err


def test_an_unknown_key_in_the_teacher_init_kwargs_is_named(tmp_path, teacher, corpus, capsys):
    argv = _commands(teacher, tmp_path, corpus)["pretrain"]
    assert main([*argv, "--teacher_model_init_kwargs", '{"dtype": "float32", "bogus_key": 1}']) == 2
    err = capsys.readouterr().err
    assert (
        "'bogus_key' is not an option of from_pretrained" in err and "--teacher_model_init_kwargs" in err
    ), err
    with pytest.raises(ValueError, match="'bogus_key' is not an option"):  # the Python API says the same
        load_model(str(teacher), flag="the teacher", bogus_key=1)


def test_a_corrupt_safetensors_header_in_the_grow_source_names_the_file(tmp_path, teacher, capsys):
    src = tmp_path / "src"
    shutil.copytree(teacher, src)
    weights = src / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[:8] + b"{garbage" + data[16:])  # the header's JSON no longer parses
    assert main(["grow", str(src), str(tmp_path / "grown")]) == 2
    err = capsys.readouterr().err
    assert f"{str(weights)!r} is truncated or corrupt" in err, err
    assert not (tmp_path / "grown").exists()


# --------------------------------------------------------------------------------------------------- data files
def test_a_latin1_corpus_names_the_file_the_line_and_the_encoding(tmp_path, capsys):
    folder = tmp_path / "latin"
    folder.mkdir()
    text = "plain ascii line\n" * 5 + "caf\xe9 na\xefve r\xe9sum\xe9\n" + "more text\n" * 50
    (folder / "train.txt").write_bytes(text.encode("latin-1"))
    with pytest.raises(ValueError) as raised:
        load_corpus(folder)
    message = str(raised.value)
    assert f"{str(folder / 'train.txt')!r} is not UTF-8 text: byte 0xe9 on line 6" in message
    assert "Latin-1" in message and "iconv -f latin1 -t utf-8" in message
    assert main(["pretrain", *TINY, "--corpus", str(folder), "--output_dir", str(tmp_path / "run")]) == 2
    assert "is not UTF-8 text" in capsys.readouterr().err


def test_a_valid_file_too_short_to_pack_is_the_file_named(tmp_path, corpus, capsys):
    folder = tmp_path / "short-valid"
    folder.mkdir()
    shutil.copy(corpus / "train.txt", folder / "train.txt")
    (folder / "valid.txt").write_text("too short\n")
    assert main(["pretrain", *TINY, "--corpus", str(folder), "--output_dir", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert f"Packing the validation split ({str(folder / 'valid.txt')!r}) produced no full block" in err, err
    assert "train.txt" not in err


def test_a_nan_teacher_is_refused_by_score_naming_the_weights(tmp_path, corpus, capsys):
    folder = tmp_path / "nan-teacher"
    tokenizer = load_tokenizer()
    model = build_model("llama-tiny", vocab_size=len(tokenizer), seed=1)
    with torch.no_grad():
        model.model.norm.weight[0] = float("nan")
    model.save_pretrained(folder)
    argv = _commands(folder, tmp_path, corpus)["score"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "has NaN or inf weights in model.norm.weight" in err, err
    assert not (tmp_path / "scored").exists()
    blocks = Dataset.from_dict({"input_ids": [[1, 2, 3, 4]] * 2})
    with pytest.raises(ValueError, match="the scoring teacher has NaN or inf weights"):
        score_dataset(blocks, model)


@pytest.mark.parametrize(
    "template, named",
    [
        ("Q: {question}\nA:", "placeholder(s) {question} that nothing fills"),
        ("Q: {input} {context}\nA:", "placeholder(s) {context} that nothing fills"),
        ("Q: {input} {}\nA:", "placeholder(s) {} that nothing fills"),
        ("Q: {input} {\nA:", "has a stray brace"),
        ("Q: {input} }\nA:", "has a stray brace"),
    ],
)
def test_rationale_template_errors_name_the_placeholder_before_the_llm_loads(
    template, named, tmp_path, teacher, capsys
):
    data = tmp_path / "rows.jsonl"
    data.write_text(json.dumps({"input": "2 + 2?"}) + "\n")
    argv = [
        "generate-rationales",
        "--model",
        str(teacher),
        "--data",
        str(data),
        "--output",
        str(tmp_path / "o.jsonl"),
    ]
    assert main([*argv, "--input_template", template, "--max_new_tokens", "2"]) == 2
    err = capsys.readouterr().err
    assert named in err and "{{" in err, err
    from hf_salt.step_by_step.rationales import check_input_template

    with pytest.raises(ValueError, match="nothing fills|stray brace"):
        check_input_template(template)
    check_input_template("Q: {input}\nA: {{literal}}")  # literal braces, written doubled, are fine


def test_malformed_step_by_step_json_names_the_file_and_the_line(tmp_path, capsys):
    row = json.dumps({"input": "q", "label": "a", "rationale": "r"})
    lines = tmp_path / "train.jsonl"
    lines.write_text(f"{row}\n{row}\n" + '{"input": "q", "label": \n' + f"{row}\n")
    with pytest.raises(ValueError, match=r"train.jsonl' is not valid JSON Lines: line 3 does not parse"):
        load_step_by_step(lines)
    whole = tmp_path / "data.json"
    whole.write_text(f"[\n{row},\n{row}\n{row}\n]\n")  # a missing comma on line 3
    with pytest.raises(ValueError, match=r"data.json' is not valid JSON: line 4"):
        load_step_by_step(whole)
    assert main(["distill-step-by-step", "--dataset", str(lines), "--output_dir", str(tmp_path / "o")]) == 2
    assert "line 3 does not parse" in capsys.readouterr().err


def test_ctrl_c_inside_grow_save_leaves_no_temporary_folder_and_says_so(tmp_path):
    dst = tmp_path / "grown"
    ended = interrupt_at("grow", ["grow", "llama-tiny", str(dst)])
    assert ended.returncode == 130, ended.stderr[-3000:]
    assert "Traceback" not in ended.stderr, ended.stderr[-3000:]
    assert (
        f"hf-salt grow: interrupted. Nothing half-written is left in {dst}: rerun the command" in ended.stderr
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no grown/, no .grown.tmp-*, no lock


def test_a_full_disk_inside_a_checkpoint_save_leaves_no_staging_folder(tmp_path, monkeypatch, capsys):
    """The staging folder used to stay until the next save (there is none after a failed run)."""
    from transformers import Trainer

    def full(self, output_dir):
        raise OSError(errno.ENOSPC, "No space left on device", str(Path(output_dir) / "rng_state.pth"))

    monkeypatch.setattr(Trainer, "_save_rng_state", full)
    out = tmp_path / "run"
    assert main([*PRETRAIN, "--output_dir", str(out)]) == 1
    err = capsys.readouterr().err
    assert "no space left on the device while writing" in err and "rng_state.pth" in err, err
    assert sorted(p.name for p in out.iterdir() if "checkpoint" in p.name) == []

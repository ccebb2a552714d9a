"""Bad inputs get a clear error before any work (or a warning where the run is legitimate).

Each test here would fail without the check it covers: the input used to be accepted silently, or to fail
with an error that names nothing (a Hub repo-id error for a local path, `SafetensorError` without a file name,
`TypeError: '<=' not supported`, an `IndexError` in the embedding).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from datasets import Dataset

from hf_salt.cli.main import main
from hf_salt.data import load_tokenizer
from hf_salt.salt.config import SALTConfig
from hf_salt.salt.schedules import KDScheduleCallback
from hf_salt.zoo import build_model

REPO = Path(__file__).resolve().parents[1]


def _error(capsys) -> str:
    return capsys.readouterr().err


# --------------------------------------------------------------------------------------------------- SALTConfig
@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(kd_steps=500, max_steps=10), "more than the run's 10 steps"),
        (dict(kd_steps=0.2, max_steps=2), "rounds to 0 KD steps"),
        (dict(max_steps=0), "max_steps=0 trains nothing"),
    ],
)
def test_salt_config_refuses_silent_noops(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SALTConfig(output_dir="unused", teacher_model_name_or_path="teacher", **kwargs)


def test_salt_config_without_a_teacher_does_not_check_kd_against_the_run_length():
    # the defaults (kd_steps=0.2) in a 2-step run without a teacher: nothing to refuse, there is no KD
    assert SALTConfig(output_dir="unused", max_steps=2).kd_steps == 0.2
    assert SALTConfig(output_dir="unused", max_steps=2).kd_settings_changed() == []
    changed = SALTConfig(output_dir="unused", max_steps=2, kd_weight=0.9, kd_steps=2).kd_settings_changed()
    assert changed == ["kd_weight", "kd_steps"]


def test_pretrain_without_a_teacher_runs_with_default_kd_settings_and_warns_about_given_ones(tmp_path):
    tiny = ["--model", "llama-tiny", "--max_steps", "2", "--block_size", "32", "--max_train_blocks", "16"]
    tiny += ["--max_eval_blocks", "2", "--disable_tqdm", "true", "--report_to", "none"]
    exe = Path(sys.executable).with_name("hf-salt")
    plain = subprocess.run(
        [str(exe), "pretrain", *tiny, "--output_dir", str(tmp_path / "a")], capture_output=True, text=True
    )
    assert plain.returncode == 0, plain.stderr
    assert "do nothing" not in plain.stderr
    flagged = subprocess.run(
        [
            str(exe),
            "pretrain",
            *tiny,
            "--kd_weight",
            "0.9",
            "--kd_steps",
            "2",
            "--output_dir",
            str(tmp_path / "b"),
        ],
        capture_output=True,
        text=True,
    )
    assert flagged.returncode == 0, flagged.stderr
    assert "--kd_weight, --kd_steps do nothing" in flagged.stderr


def test_salt_config_accepts_kd_on_every_step_and_disabled_kd():
    assert SALTConfig(output_dir="unused", kd_steps=10, max_steps=10).kd_steps == 10
    assert SALTConfig(output_dir="unused", kd_steps=0, max_steps=10).kd_steps == 0


def test_kd_steps_checked_at_train_start_when_max_steps_comes_from_epochs():
    cb = KDScheduleCallback(kd_weight=0.5, kd_steps=500)
    with pytest.raises(ValueError, match="more than the run's 3 steps"):
        cb.resolve(3)
    cb = KDScheduleCallback(kd_weight=0.5, kd_steps=0.1)
    with pytest.raises(ValueError, match="rounds to 0"):
        cb.resolve(4)


@pytest.mark.parametrize("value", ["0.5", [0.5], True])
def test_salt_config_type_errors_name_the_field(value):
    with pytest.raises(TypeError, match="kd_weight must be float or int, got"):
        SALTConfig(output_dir="unused", kd_weight=value)


def test_yaml_type_and_syntax_errors_name_the_file(tmp_path, capsys):
    bad_type = tmp_path / "type.yaml"
    bad_type.write_text("kd_weight: [0.5]\nmax_steps: 2\n")
    assert main(["pretrain", "--config", str(bad_type)]) == 2
    err = _error(capsys)
    assert "kd_weight must be float or int, got list [0.5]" in err and str(bad_type) in err
    bad_syntax = tmp_path / "syntax.yaml"
    bad_syntax.write_text("max_steps: [2\n")
    assert main(["pretrain", "--config", str(bad_syntax)]) == 2
    err = _error(capsys)
    assert "is not valid YAML" in err and str(bad_syntax) in err


# --------------------------------------------------------------------------------------------------- pretrain
def test_pretrain_refuses_before_any_work(tmp_path, capsys):
    a_file = tmp_path / "file"
    a_file.write_text("x")
    finished = tmp_path / "finished"
    (finished / "model").mkdir(parents=True)
    cases = [
        (["--max_steps", "0"], "max_steps=0"),
        (
            ["--kd_steps", "500", "--max_steps", "3", "--teacher_model_name_or_path", str(tmp_path)],
            "more than the run's 3 steps",
        ),
        (["--output_dir", str(a_file / "out")], "is a file, not a folder"),
        (["--output_dir", str(finished)], "already holds a finished run (model)"),
        (
            ["--teacher_model_name_or_path", str(tmp_path / "no" / "such" / "teacher")],
            "does not exist (no such local folder)",
        ),
    ]
    for argv, match in cases:
        if "--output_dir" not in argv:
            argv = argv + ["--output_dir", str(tmp_path / "out")]
        assert main(["pretrain", *argv]) == 2, argv
        captured = capsys.readouterr()
        assert match in captured.err, (argv, captured.err)
        assert "Training" not in captured.out  # refused before loading data or models


def test_pretrain_overwrite_output_dir_lets_a_finished_run_be_replaced(tmp_path):
    from hf_salt.cli.parser import parse_args
    from hf_salt.cli.pretrain import COMMAND, check_inputs

    (tmp_path / "model").mkdir()
    parsed = parse_args(COMMAND.dataclass_types, ["--output_dir", str(tmp_path), "--overwrite_output_dir"])
    check_inputs(*parsed)  # no error


# --------------------------------------------------------------------------------------------------- demo
def test_demo_explicit_flag_wins_over_the_scale_even_when_equal_to_a_default():
    from hf_salt.cli.demo import COMMAND, resolve
    from hf_salt.cli.parser import parse_args

    assert (
        resolve(*parse_args(COMMAND.dataclass_types, ["--scale", "tiny", "--max_steps", "200"])).max_steps
        == 200
    )
    tiny = resolve(*parse_args(COMMAND.dataclass_types, ["--scale", "tiny"]))
    assert (tiny.max_steps, tiny.block_size) == (8, 32)
    assert resolve(*parse_args(COMMAND.dataclass_types, ["--scale", "gpu", "--bf16", "false"])).bf16 is False


def test_demo_help_shows_the_scale_defaults(capsys):
    with pytest.raises(SystemExit):
        main(["demo", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "from --scale (cpu 480, tiny 8, gpu 3000)" in text
    assert "(default: 200)" not in text  # the old ExperimentConfig default, used by no scale


def test_demo_refuses_before_any_work(tmp_path, capsys):
    finished = tmp_path / "done"
    finished.mkdir()
    (finished / "results.json").write_text("{}")
    for argv, match in [
        (["--block_size", "4096", "--output_dir", str(tmp_path / "d")], "larger than the model's context"),
        (["--output_dir", str(finished)], "already holds a finished run (results.json)"),
    ]:
        assert main(["demo", "--scale", "tiny", *argv]) == 2
        captured = capsys.readouterr()
        assert match in captured.err and "hf-salt demo (tiny)" not in captured.out


# --------------------------------------------------------------------------------------------------- models
def _tiny_blocks(n: int, length: int) -> Dataset:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 100, (n, length), generator=g).tolist()
    return Dataset.from_dict({"input_ids": ids, "labels": ids})


def test_salt_trainer_missing_teacher_path_is_not_a_hub_error(tmp_path):
    from hf_salt.salt.trainer import SALTTrainer

    args = SALTConfig(output_dir=str(tmp_path), max_steps=1, kd_steps=1, use_cpu=True, report_to="none")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        SALTTrainer(
            model=build_model("llama-tiny"), args=args, teacher_model=str(tmp_path / "out/teacher/model")
        )


def test_non_causal_models_are_refused_in_one_line(tmp_path):
    from hf_salt.salt.trainer import SALTTrainer

    t5 = build_model("t5-tiny")
    t5.save_pretrained(tmp_path / "t5")
    args = SALTConfig(output_dir=str(tmp_path / "o"), max_steps=1, kd_steps=1, use_cpu=True, report_to="none")
    with pytest.raises(ValueError, match="is a t5 model .* not a causal language model") as err:
        SALTTrainer(model=build_model("llama-tiny"), args=args, teacher_model=str(tmp_path / "t5"))
    assert len(str(err.value)) < 300  # not the Auto classes' list of supported configs
    with pytest.raises(ValueError, match="the student is a t5 model"):
        SALTTrainer(model=t5, args=args, teacher_model=build_model("llama-tiny"))


def _bert_without_architectures(folder: Path) -> Path:
    import json

    from transformers import BertConfig, BertForMaskedLM

    config = BertConfig(vocab_size=8192, hidden_size=32, num_hidden_layers=1, num_attention_heads=2)
    config.intermediate_size = 64
    BertForMaskedLM(config).save_pretrained(folder)
    spec = json.loads((folder / "config.json").read_text())
    spec.pop("architectures", None)  # as in a folder written by hand or by another tool
    (folder / "config.json").write_text(json.dumps(spec))
    return folder


def test_bert_folder_without_architectures_is_not_taken_for_a_causal_lm(tmp_path, capsys):
    from hf_salt.zoo import load_model

    bert = _bert_without_architectures(tmp_path / "bert")
    match = "is a bert model, an encoder with bidirectional attention"
    with pytest.raises(ValueError, match=match):  # a KD teacher (BertLMHeadModel, bidirectional) before
        load_model(str(bert), flag="the teacher", causal=True)
    with pytest.raises(ValueError, match=match):  # the distill-step-by-step task model
        load_model(str(bert))
    assert main(["grow", str(bert), str(tmp_path / "grown")]) == 2  # "OK; saved" before
    assert match in _error(capsys)
    assert not (tmp_path / "grown").exists()


def test_models_with_nan_or_inf_weights_are_refused_by_name(tmp_path, capsys):
    tok = load_tokenizer()
    model = build_model("llama-tiny", vocab_size=len(tok))
    with torch.no_grad():
        model.model.layers[0].mlp.up_proj.weight[0, 0] = float("nan")
    model.save_pretrained(tmp_path / "nan")
    assert main(["grow", str(tmp_path / "nan"), str(tmp_path / "grown")]) == 2  # "verify: nan ... OK" before
    assert "has NaN or inf weights in model.layers.0.mlp.up_proj.weight" in _error(capsys)
    assert not (tmp_path / "grown").exists()
    inf = build_model("llama-tiny", vocab_size=len(tok))
    with torch.no_grad():
        inf.model.embed_tokens.weight[5] = float("inf")
    inf.save_pretrained(tmp_path / "inf")
    argv = ["pretrain", "--model", str(tmp_path / "inf"), "--max_steps", "2", "--block_size", "32"]
    argv += ["--max_train_blocks", "16", "--max_eval_blocks", "2", "--output_dir", str(tmp_path / "o")]
    assert main(argv) == 2  # trained to validation loss nan and exited 0 before
    assert "the model to train has NaN or inf weights in model.embed_tokens.weight" in _error(capsys)
    assert not (tmp_path / "o" / "model").exists()


def test_salt_trainer_refuses_sequences_longer_than_the_positions(tmp_path):
    from hf_salt.salt.trainer import SALTTrainer

    student = build_model("gpt2-tiny", vocab_size=128)
    limit = student.config.n_positions
    args = SALTConfig(
        output_dir=str(tmp_path), max_steps=1, kd_steps=1, use_cpu=True, report_to="none", disable_tqdm=True
    )
    trainer = SALTTrainer(
        model=student,
        args=args,
        teacher_model=build_model("gpt2-tiny", vocab_size=128, seed=1),
        train_dataset=_tiny_blocks(2, limit + 1),
    )
    with pytest.raises(ValueError, match=f"{limit + 1} tokens are longer than the model's {limit} positions"):
        trainer.train()


def test_score_dataset_refuses_sequences_longer_than_the_positions():
    from hf_salt.salt_ds import score_dataset

    teacher = build_model("gpt2-tiny", vocab_size=128)
    with pytest.raises(ValueError, match="score_dataset: sequences of 300 tokens"):
        score_dataset(_tiny_blocks(2, 300), teacher)


def test_truncated_safetensors_is_named(tmp_path, capsys):
    from hf_salt.salt.trainer import SALTTrainer

    build_model("llama-tiny").save_pretrained(tmp_path / "teacher")
    weights = tmp_path / "teacher" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    args = SALTConfig(output_dir=str(tmp_path / "o"), max_steps=1, kd_steps=1, use_cpu=True, report_to="none")
    with pytest.raises(ValueError, match="model.safetensors' is truncated or corrupt"):
        SALTTrainer(model=build_model("llama-tiny"), args=args, teacher_model=str(tmp_path / "teacher"))
    assert main(["pretrain", "--model", str(tmp_path / "teacher"), "--output_dir", str(tmp_path / "p")]) == 2
    assert "model.safetensors' is truncated or corrupt" in _error(capsys)


def test_truncated_arrow_for_salt_ds_is_named(tmp_path):
    from hf_salt.cli.pretrain import DataArguments, PretrainArguments, _salt_ds_pool

    _tiny_blocks(64, 16).save_to_disk(str(tmp_path / "scored"))
    arrow = next((tmp_path / "scored").glob("*.arrow"))
    arrow.write_bytes(arrow.read_bytes()[:200])
    data = DataArguments(salt_ds=str(tmp_path / "scored"), block_size=16)
    args = PretrainArguments(
        output_dir=str(tmp_path / "o"), teacher_model_name_or_path="llama-tiny", max_steps=4
    )
    with pytest.raises(ValueError, match=f"{arrow.name}' is truncated or corrupt"):
        _salt_ds_pool(data, args, load_tokenizer())


def _swapped_tokenizer(folder: Path) -> Path:
    """The shipped tokenizer with two token ids swapped: same size and special tokens, other meaning."""
    import json

    load_tokenizer().save_pretrained(folder)
    spec = json.loads((folder / "tokenizer.json").read_text())
    vocab = spec["model"]["vocab"]
    by_id = {i: t for t, i in vocab.items()}
    a, b = by_id[1000], by_id[2000]
    vocab[a], vocab[b] = 2000, 1000
    (folder / "tokenizer.json").write_text(json.dumps(spec))
    return folder


def test_teacher_folder_with_another_tokenizer_is_refused_naming_the_difference(tmp_path):
    from hf_salt import SALTTrainer

    tok = load_tokenizer()
    teacher = tmp_path / "teacher"
    build_model("llama-tiny", vocab_size=len(tok), seed=1).save_pretrained(teacher)
    _swapped_tokenizer(teacher)
    args = SALTConfig(output_dir=str(tmp_path / "o"), max_steps=4, kd_steps=2, use_cpu=True, report_to="none")
    student = build_model("llama-tiny", vocab_size=len(tok))
    with pytest.raises(
        ValueError, match=r"ships another tokenizer than the run's: 2 of 8192 tokens have another id"
    ):
        SALTTrainer(model=student, args=args, teacher_model=str(teacher), processing_class=tok)
    # the same vocabulary with another pad token: legitimate, a warning names it
    other_pad = load_tokenizer()
    other_pad.pad_token = other_pad.eos_token
    other_pad.save_pretrained(teacher)
    with pytest.warns(UserWarning, match="other special tokens: pad_token '<|pad|>' vs '<|endoftext|>'"):
        SALTTrainer(model=student, args=args, teacher_model=str(teacher), processing_class=tok)


def test_salt_ds_scored_with_another_tokenizer_is_refused(tmp_path, capsys):
    from hf_salt.cli.pretrain import (
        DataArguments,
        PretrainArguments,
        _salt_ds_pool,
        check_scored_tokenizer,
    )

    other = _swapped_tokenizer(tmp_path / "other")
    scored = tmp_path / "scored"
    argv = ["score", "--teacher_model_name_or_path", "llama-tiny", "--corpus", "tinyshakespeare"]
    argv += [
        "--block_size",
        "16",
        "--max_blocks",
        "8",
        "--output_dir",
        str(scored),
        "--tokenizer",
        str(other),
    ]
    assert main(argv) == 0, _error(capsys)
    data = DataArguments(salt_ds=str(scored), block_size=16)
    args = PretrainArguments(
        output_dir=str(tmp_path / "o"), teacher_model_name_or_path="llama-tiny", max_steps=4, kd_steps=1
    )
    with pytest.raises(ValueError, match="was tokenized by another tokenizer .* than this run's"):
        _salt_ds_pool(data, args, load_tokenizer())
    check_scored_tokenizer(
        str(scored), load_tokenizer(str(other))
    )  # the tokenizer it was scored with: accepted


def test_kd_off_with_a_teacher_warns_and_does_not_load_it(tmp_path):
    tok = load_tokenizer()
    teacher = tmp_path / "teacher"
    build_model("llama-tiny", vocab_size=len(tok), seed=1).save_pretrained(teacher)
    weights = teacher / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])  # loading it would fail: the run shows it is never loaded
    argv = ["--model", "llama-tiny", "--max_steps", "2", "--block_size", "32", "--max_train_blocks", "16"]
    argv += ["--max_eval_blocks", "2", "--disable_tqdm", "true", "--report_to", "none"]
    argv += [
        "--teacher_model_name_or_path",
        str(teacher),
        "--kd_weight",
        "0",
        "--output_dir",
        str(tmp_path / "o"),
    ]
    run = subprocess.run(
        [str(Path(sys.executable).with_name("hf-salt")), "pretrain", *argv], capture_output=True, text=True
    )
    assert run.returncode == 0, run.stderr
    assert "--kd_weight 0 turn KD off, so the teacher" in run.stderr and "plain" in run.stdout
    args = SALTConfig(output_dir=str(tmp_path / "p"), max_steps=2, kd_steps=0, use_cpu=True, report_to="none")
    with pytest.warns(UserWarning, match="KD is off, so the teacher is loaded and never run"):
        from hf_salt import SALTTrainer

        SALTTrainer(model=build_model("llama-tiny"), args=args, teacher_model=build_model("llama-tiny"))


def test_score_and_rationales_refuse_bad_paths_before_any_work(tmp_path, capsys):
    a_file = tmp_path / "file"
    a_file.write_text("x")
    assert (
        main(["score", "--teacher_model_name_or_path", "llama-tiny", "--output_dir", str(a_file / "scored")])
        == 2
    )
    captured = capsys.readouterr()
    assert "is a file, not a folder" in captured.err and "Scoring" not in captured.out
    data = tmp_path / "rows.jsonl"
    data.write_text('{"input": "1 + 1"}\n')
    argv = ["generate-rationales", "--model", str(tmp_path / "nope" / "llm"), "--data", str(data)]
    assert main([*argv, "--output", str(tmp_path / "r.jsonl")]) == 2
    assert "is not a local model folder" in _error(capsys)


# --------------------------------------------------------------------------------------------------- data
def test_empty_corpus_file_is_named(tmp_path):
    from hf_salt.data import load_corpus

    (tmp_path / "train.txt").write_text("")
    with pytest.raises(ValueError, match="train.txt' are empty"):
        load_corpus(tmp_path / "train.txt")


def test_step_by_step_empty_train_set_and_over_long_causal_rows(tmp_path, tokenizer):
    from hf_salt.step_by_step.config import StepByStepConfig
    from hf_salt.step_by_step.trainer import StepByStepTrainer

    args = StepByStepConfig(output_dir=str(tmp_path), max_steps=1, use_cpu=True, report_to="none")
    rows = {"input": ["what is 2 + 2"], "label": ["4"], "rationale": ["two and two"], "llm_label": ["4"]}
    empty = Dataset.from_dict({k: [] for k in rows}, features=Dataset.from_dict(rows).features)
    with pytest.raises(ValueError, match="training set is empty"):
        StepByStepTrainer(build_model("llama-tiny"), args, train_dataset=empty, processing_class=tokenizer)
    long_rows = Dataset.from_dict({**rows, "rationale": ["word " * 400]})
    args = StepByStepConfig(
        output_dir=str(tmp_path), max_steps=1, use_cpu=True, report_to="none", max_rationale_length=512
    )
    with pytest.raises(ValueError, match="longer than the model's 256 positions"):
        StepByStepTrainer(
            build_model("gpt2-tiny", vocab_size=len(tokenizer)),
            args,
            train_dataset=long_rows,
            processing_class=tokenizer,
        )


def test_safe_evaluator_huge_integer_literal_is_none():
    from hf_salt.step_by_step.metrics import equation_value

    assert equation_value("9" * 309) is None  # beyond float range: OverflowError before
    assert equation_value("1" + "0" * 400 + " - 1") is None
    assert equation_value("12 * 3") == 36.0


# --------------------------------------------------------------------------------------------------- newcomer
def _make(*args: str) -> str:
    return subprocess.run(
        ["make", "-n", "-B", "VENV=/nonexistent-venv", *args], cwd=REPO, capture_output=True, text=True
    ).stdout


def test_make_demo_does_not_build_deepspeed_and_make_clean_removes_the_demo_output():
    assert "deepspeed" not in _make("demo").lower()
    assert "deepspeed" in _make("test").lower()
    assert "hf-salt-demo" in _make("clean")
    ignored = subprocess.run(["git", "check-ignore", "-q", "hf-salt-demo/results.json"], cwd=REPO)
    assert ignored.returncode == 0


# ------------------------------------------------------------------------------------ SALTTrainer API misuse
def _salt_args(tmp_path: Path) -> SALTConfig:
    return SALTConfig(
        output_dir=str(tmp_path / "o"), max_steps=4, kd_steps=2, kd_weight=0.5, use_cpu=True, report_to="none"
    )


def test_the_student_as_its_own_teacher_is_refused(tmp_path):
    from hf_salt import SALTTrainer

    student = build_model("llama-tiny", vocab_size=128)
    with pytest.raises(ValueError, match="The teacher shares weights with the student"):
        SALTTrainer(model=student, args=_salt_args(tmp_path), teacher_model=student)


def test_token_ids_outside_the_vocabulary_are_named_at_the_first_batch(tmp_path):
    from hf_salt import SALTTrainer

    student, teacher = build_model("llama-tiny", vocab_size=128), build_model("llama-tiny", vocab_size=128)
    trainer = SALTTrainer(model=student, args=_salt_args(tmp_path), teacher_model=teacher)
    ids = torch.randint(0, 128, (2, 8))
    ids[1, 3] = 500
    with pytest.raises(ValueError, match="token id 500, outside the student's vocabulary of 128 ids"):
        trainer.compute_loss(student, {"input_ids": ids, "labels": ids.clone()})


def test_a_teacher_with_peft_adapters_distils_through_its_adapters(tmp_path):
    """A PeftModel teacher: its adapters take part (fused path through its layers), and its CE is its own."""
    import copy

    from peft import LoraConfig, get_peft_model

    from hf_salt import SALTTrainer

    student = build_model("llama-tiny", vocab_size=128, seed=0)
    base = build_model("llama-tiny", vocab_size=128, seed=1)
    teacher = get_peft_model(copy.deepcopy(base), LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    # non-zero adapters: the teacher is not its base model any more
    for name, p in teacher.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.5)
    ids = torch.randint(0, 128, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        own = float(teacher.eval()(input_ids=ids, labels=ids).loss)
        without = float(base.eval()(input_ids=ids, labels=ids).loss)
    assert abs(own - without) > 1e-3
    trainer = SALTTrainer(model=student, args=_salt_args(tmp_path), teacher_model=teacher)
    trainer.kd_callback.resolve(4)
    trainer.kd_state.kd_weight = 0.5
    trainer.current_gradient_accumulation_steps = 1  # set by the training loop; compute_loss reads it
    student.train()
    trainer.compute_loss(student, {"input_ids": ids, "labels": ids.clone()})
    logged = trainer._metrics.pop()
    assert logged["teacher_ce"] == pytest.approx(own, rel=1e-5)

"""The command line end to end: teacher -> SALT student -> SALT_DS student, all through `hf-salt`."""

from transformers import AutoModelForCausalLM

from hf_salt.cli.main import main

COMMON = [
    "--corpus",
    "tinyshakespeare",
    "--block_size",
    "32",
    "--max_eval_blocks",
    "4",
    "--disable_tqdm",
    "true",
]


def test_pretrain_salt_and_salt_ds_from_the_command_line(tmp_path, capsys):
    teacher = tmp_path / "teacher"
    assert (
        main(
            [
                "pretrain",
                *COMMON,
                "--max_steps",
                "3",
                "--max_train_blocks",
                "48",
                "--output_dir",
                str(teacher),
            ]
        )
        == 0
    )
    scored = tmp_path / "scored"
    assert (
        main(
            [
                "score",
                "--teacher_model_name_or_path",
                str(teacher / "model"),
                "--corpus",
                "tinyshakespeare",
                "--block_size",
                "32",
            ]
            + ["--max_blocks", "48", "--output_dir", str(scored)]
        )
        == 0
    )
    student = tmp_path / "student"
    args = ["pretrain", *COMMON, "--model", "llama-tiny-2x", "--max_steps", "4", "--max_train_blocks", "48"]
    args += [
        "--teacher_model_name_or_path",
        str(teacher / "model"),
        "--kd_steps",
        "2",
        "--per_device_train_batch_size",
        "4",
    ]
    assert main([*args, "--output_dir", str(student)]) == 0
    out = capsys.readouterr().out
    assert "SALT)" in out and "perplexity" in out
    assert AutoModelForCausalLM.from_pretrained(student / "model").config.hidden_size == 64

    assert main([*args, "--salt_ds", str(scored), "--output_dir", str(tmp_path / "ds")]) == 0
    out = capsys.readouterr().out
    # n_KD = 2 steps x global batch 4 = 8 blocks from the scored pool
    assert "SALT_DS: 8 of 48 scored blocks feed the 2 KD steps" in out
    assert (tmp_path / "ds" / "model" / "model.safetensors").exists()
    card = (tmp_path / "ds" / "model" / "README.md").read_text()
    assert (
        "salt-ds" in card and "| candidate pool size | 48 |" in card and "| selected examples | 8 |" in card
    )
    # the teacher is a local folder: named as one, not as a Hub id; how the pool was scored comes from `score`
    assert "| teacher | a local model (`teacher/model`) |" in card
    assert "| top-k | 10 |" in card and "| score statistic | median |" in card
    assert "| dataset | tinyshakespeare |" in card and "not recorded" not in card


def test_salt_ds_needs_a_teacher(tmp_path, capsys):
    assert main(["pretrain", *COMMON, "--salt_ds", str(tmp_path), "--output_dir", str(tmp_path / "o")]) == 2
    assert "pass --teacher_model_name_or_path" in capsys.readouterr().err

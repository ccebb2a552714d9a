"""Distilling step-by-step: rationale generation (resume, parse failures), trainer and CLI end to end."""

from __future__ import annotations

import json

import pytest
from datasets import Dataset

from hf_salt.cli.main import main
from hf_salt.data import load_tokenizer
from hf_salt.step_by_step.rationales import generate_rationales, parse_continuation
from hf_salt.zoo import build_model

INPUTS = [{"input": f"question number {i}", "label": str(i)} for i in range(7)]


def test_parse_continuation():
    text = " The sky scatters blue light. So the answer is (b) blue.\nQ: made-up next exemplar"
    assert parse_continuation(text) == ("The sky scatters blue light.", "blue")
    assert parse_continuation("no marker at all") == ("", "")


def test_generation_resumes_and_keeps_unparsed_rows(tmp_path, monkeypatch):
    tok = load_tokenizer()
    model = build_model("llama-tiny", seed=0)  # random weights: its outputs never contain the marker
    calls: list[int] = []
    original = model.generate

    def counting_generate(*args, **kwargs):
        calls.append(kwargs["input_ids"].shape[0])
        return original(*args, **kwargs)

    monkeypatch.setattr(model, "generate", counting_generate)
    out = tmp_path / "rationales.jsonl"
    kwargs = dict(
        few_shot_prompt="Q: 1+1\nA: one plus one. So the answer is 2.\n\n", batch_size=3, max_new_tokens=4
    )
    first = generate_rationales(INPUTS, model, tok, out, **kwargs, show_progress=False)
    assert calls == [3, 3, 1] and len(first) == 7
    assert first["parse_ok"] == [False] * 7 and all(first["raw_output"])  # flagged, never lost
    assert first["label"] == [r["label"] for r in INPUTS]  # extra columns carried along
    # simulate a crash: 4 rows written, then a torn line
    lines = out.read_text().splitlines(keepends=True)
    out.write_text("".join(lines[:4]) + lines[4][:10])
    calls.clear()
    second = generate_rationales(INPUTS, model, tok, out, **kwargs, show_progress=False)
    assert calls == [3]  # only rows 4, 5, 6 are generated again
    assert second["input"] == [r["input"] for r in INPUTS]
    assert [json.loads(line)["index"] for line in out.read_text().splitlines()] == list(range(7))
    calls.clear()
    generate_rationales(INPUTS, model, tok, out, **kwargs, show_progress=False)
    assert calls == []  # all done: nothing regenerated


def test_resume_with_other_inputs_or_a_template_without_input_is_refused(tmp_path, capsys):
    tok = load_tokenizer()
    model = build_model("llama-tiny", seed=0)
    out = tmp_path / "rationales.jsonl"
    kwargs = dict(batch_size=4, max_new_tokens=2, show_progress=False)
    generate_rationales(INPUTS[:3], model, tok, out, **kwargs)
    other = [{**row, "input": row["input"] + " (other file)"} for row in INPUTS]
    before = out.read_text()
    with pytest.raises(
        ValueError, match=r"holds rows generated from other inputs than these \(3 of 3 differ; row 0"
    ):
        generate_rationales(other, model, tok, out, **kwargs)  # kept 3 old rows, appended 4 new ones before
    assert out.read_text() == before
    generate_rationales(INPUTS, model, tok, out, **kwargs)  # the same inputs, more of them: resumes
    assert [json.loads(line)["input"] for line in out.read_text().splitlines()] == [
        r["input"] for r in INPUTS
    ]
    with pytest.raises(ValueError, match="has no {input}: every row would get the same prompt"):
        generate_rationales(INPUTS, model, tok, tmp_path / "b.jsonl", input_template="Q: ?\nA:", **kwargs)
    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in INPUTS))
    (tmp_path / "llm").mkdir()
    argv = ["generate-rationales", "--model", str(tmp_path / "llm"), "--data", str(data)]
    assert main([*argv, "--output", str(tmp_path / "c.jsonl"), "--input_template", "Q: ?"]) == 2
    assert "has no {input}" in capsys.readouterr().err


def test_custom_parser_marks_success(tmp_path):
    tok = load_tokenizer()
    model = build_model("llama-tiny", seed=0)
    result = generate_rationales(
        INPUTS[:2],
        model,
        tok,
        tmp_path / "r.jsonl",
        parser=lambda t: ("why", "what"),
        max_new_tokens=2,
        show_progress=False,
    )
    assert result["parse_ok"] == [True, True] and result["llm_label"] == ["what", "what"]
    with pytest.raises(ValueError, match="Unknown parser"):
        generate_rationales(INPUTS, model, tok, tmp_path / "x.jsonl", parser="gsm8k")


@pytest.mark.parametrize("preset", ["t5-tiny", "llama-tiny"])
def test_trainer_end_to_end(preset, tmp_path):
    from hf_salt.step_by_step.config import StepByStepConfig
    from hf_salt.step_by_step.trainer import StepByStepTrainer

    rows = [
        {
            "input": f"{a} plus {b}",
            "label": str(a + b),
            "rationale": f"{a} + {b} = {a + b}" if a % 3 else "",
            "llm_label": "",
        }
        for a in range(1, 9)
        for b in range(1, 4)
    ]
    args = StepByStepConfig(
        output_dir=str(tmp_path),
        max_steps=3,
        per_device_train_batch_size=8,
        per_device_eval_batch_size=8,
        logging_steps=1,
        report_to=[],
        use_cpu=True,
        save_strategy="no",
        disable_tqdm=True,
        generation_max_length=4,
    )
    tok = load_tokenizer()
    trainer = StepByStepTrainer(
        build_model(preset, seed=0),
        args,
        train_dataset=Dataset.from_list(rows),
        eval_dataset=Dataset.from_list(rows[:6]),
        processing_class=tok,
    )
    assert trainer.collator_stats["no_rationale"] == 6  # a = 3 and 6, three rows each: label task only
    trainer.train()
    logs = [h for h in trainer.state.log_history if "loss" in h]
    assert len(logs) == 3 and all(h["loss_label"] > 0 and h["loss_rationale"] > 0 for h in logs)
    metrics = trainer.evaluate()
    assert {"eval_loss", "eval_accuracy", "eval_exact_match"} <= set(metrics)
    assert {"hf-salt", "distilling-step-by-step"} <= set(trainer.model.model_tags)


def test_cli_distill_step_by_step(tmp_path, capsys):
    from hf_salt.cli.main import main

    config = tmp_path / "cfg.yaml"
    config.write_text(
        "model: t5-tiny\nmax_steps: 2\nper_device_train_batch_size: 4\nmax_eval_samples: 4\nmax_test_samples: 3\n"
    )
    rc = main(
        [
            "distill-step-by-step",
            "--config",
            str(config),
            "--dataset",
            "svamp",
            "--train_fraction",
            "0.05",
            "--output_dir",
            str(tmp_path / "out"),
            "--generation_max_length",
            "4",
            "--use_cpu",
            "true",
        ]
    )
    assert rc == 0
    out = capsys.readouterr().out
    assert "equation" in out and "label accuracy" in out and ", test " in out
    assert (tmp_path / "out" / "model" / "config.json").is_file()
    # validation and the test split (evaluated once, after training) are written beside the model
    metrics = json.loads((tmp_path / "out" / "all_results.json").read_text())
    assert {"eval_accuracy", "test_accuracy", "test_exact_match"} <= set(metrics)
    assert "test_accuracy" in json.loads((tmp_path / "out" / "test_results.json").read_text())


def test_cli_generate_rationales(tmp_path, capsys):
    from hf_salt.cli.main import main

    build_model("llama-tiny", seed=0).save_pretrained(tmp_path / "llm")
    load_tokenizer().save_pretrained(tmp_path / "llm")
    data = tmp_path / "unlabeled.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in INPUTS[:3]))
    out = tmp_path / "out.jsonl"
    argv = [
        "generate-rationales",
        "--model",
        str(tmp_path / "llm"),
        "--data",
        str(data),
        "--output",
        str(out),
    ]
    assert main([*argv, "--max_new_tokens", "2", "--device", "cpu"]) == 0
    assert "3 rows" in capsys.readouterr().out
    assert len(out.read_text().splitlines()) == 3


@pytest.mark.parametrize("preset", ["t5-tiny", "llama-tiny"])
def test_generated_labels_stop_and_score(preset, tmp_path):
    """A constant label is learned in a few steps; scoring it 1.0 needs targets that end in EOS."""
    from hf_salt.step_by_step.config import StepByStepConfig
    from hf_salt.step_by_step.trainer import StepByStepTrainer

    rows = [{"input": f"item {i}", "label": "yes", "rationale": "", "llm_label": ""} for i in range(16)]
    args = StepByStepConfig(
        output_dir=str(tmp_path),
        max_steps=25,
        learning_rate=1e-2,
        per_device_train_batch_size=8,
        report_to=[],
        use_cpu=True,
        save_strategy="no",
        disable_tqdm=True,
        generation_max_length=4,
    )
    data = Dataset.from_list(rows)
    trainer = StepByStepTrainer(
        build_model(preset, seed=0),
        args,
        train_dataset=data,
        eval_dataset=data.select(range(4)),
        processing_class=load_tokenizer(),
    )
    trainer.train()
    assert trainer.evaluate()["eval_accuracy"] == 1.0

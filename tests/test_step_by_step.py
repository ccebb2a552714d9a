"""Distilling step-by-step: loader, collator, loss, GA parity, safe evaluator, rationales, end to end."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from hf_salt.data import load_tokenizer
from hf_salt.step_by_step.collator import IGNORE_INDEX, StepByStepCollator
from hf_salt.step_by_step.config import StepByStepConfig
from hf_salt.step_by_step.data import load_step_by_step, parse_anli, parse_cqa, parse_esnli, parse_svamp
from hf_salt.step_by_step.metrics import (
    UnsafeExpressionError,
    compute_label_metrics,
    equation_accuracy,
    exact_match,
    safe_arithmetic,
)
from hf_salt.step_by_step.trainer import StepByStepTrainer
from hf_salt.zoo import build_model

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "step_by_step"

ROWS = [
    {"input": "two plus two", "label": "four", "rationale": "2 + 2 = 4 so it is four", "llm_label": "four"},
    {
        "input": "a much longer question about the colour of the sky",
        "label": "blue",
        "rationale": "",
        "llm_label": "blue",
    },
    {"input": "x", "label": "yes indeed", "rationale": "short", "llm_label": "no"},
    {
        "input": "what is one",
        "label": "one",
        "rationale": "the word one is one, always and everywhere",
        "llm_label": "",
    },
]


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer()


@pytest.fixture(scope="module")
def cqa():
    return load_step_by_step("cqa")


# ----------------------------------------------------------------------------- loader
def test_cqa_official_rows_and_parsing(cqa):
    assert {k: len(v) for k, v in cqa.items()} == {"train": 8766, "validation": 975, "test": 1221}
    row = cqa["test"][0]
    assert row["input"].startswith("A beaver is know for building prowess")
    assert row["input"].endswith("(c) wooded area\n(d) pay debts\n(e) zoo")
    assert row["label"] == "wooded area" and row["llm_label"] == "wooded area"
    assert row["rationale"].startswith("The answer must be the place where beavers get their supplies.")
    # PaLM label agreement on test, as the data README computes it with the official parsing: 77.23 %
    hits = sum(a == b for a, b in zip(cqa["test"]["label"], cqa["test"]["llm_label"]))
    assert hits == 943


def test_svamp_official_rows_and_parsing():
    ds = load_step_by_step("svamp")
    assert {k: len(v) for k, v in ds.items()} == {"train": 720, "validation": 80, "test": 200}
    row = ds["test"][0]
    assert row["label"] == "( 10.0 * 45.0 )" and row["llm_label"] == "(10 * 45)"
    assert row["rationale"].endswith("10 * 45 is 450.")
    # README: 2 test outputs have no "The answer is"; equations by value agree on 74.0 percent
    assert sum(1 for r in ds["test"]["rationale"] if not r) == 2
    assert equation_accuracy(ds["test"]["llm_label"], ds["test"]["label"]) == pytest.approx(0.74)


def test_parsers_on_official_shapes():
    assert parse_cqa("Only math problem fits. So the answer is (d) math problem.\n\nQ: next") == (
        "Only math problem fits.",
        "math problem",
    )
    assert parse_svamp("84 / 2 = 42. The answer is (84 / 2).\n\nQ: There are (1 + 2)") == (
        "84 / 2 = 42.",
        "(84 / 2)",
    )
    assert parse_svamp("no marker here") == ("", "")
    assert parse_esnli("Not implied.\nAnswer: neutral\n\nPremise: x") == ("Not implied.", "neutral")
    assert parse_anli("It says so. So the answer is entailment.\n\nPremise: y") == (
        "It says so.",
        "entailment",
    )
    assert parse_anli("garbage without marker") == ("", "")


@pytest.mark.skipif(not SHARED.is_dir(), reason="needs the shared e-SNLI/ANLI copies (not shipped)")
def test_nli_from_local_path():
    anli = load_step_by_step(SHARED / "anli1", train_split="valid")
    assert len(anli["test"]) == 1000 and anli["test"][0]["label"] == "entailment"
    assert "</s>The first Ernest Jones store" in anli["test"][0]["input"]
    assert sum(a == b for a, b in zip(anli["test"]["label"], anli["test"]["llm_label"])) == 656
    with pytest.raises(FileNotFoundError, match="lacks its train inputs"):
        load_step_by_step(SHARED / "esnli")


def test_unknown_name_and_user_files(tmp_path):
    with pytest.raises(ValueError, match="shipped names are cqa, svamp"):
        load_step_by_step("gsm8k")
    (tmp_path / "mine.jsonl").write_text("\n".join(json.dumps(r) for r in ROWS * 5))
    ds = load_step_by_step(tmp_path / "mine.jsonl", valid_fraction=0.2)
    assert len(ds["train"]) == 16 and len(ds["validation"]) == 4
    assert set(ds["train"].column_names) == {"input", "label", "rationale", "llm_label"}
    (tmp_path / "bad.csv").write_text("question,answer\nq,a\n")
    with pytest.raises(ValueError, match="needs the columns input and label"):
        load_step_by_step(tmp_path / "bad.csv")


# ----------------------------------------------------------------------------- collator
def test_collator_seq2seq(tok):
    col = StepByStepCollator(tok, is_encoder_decoder=True, max_source_length=12, max_rationale_length=4)
    batch = col(ROWS)
    assert batch["input_ids"].shape[0] == 4 and batch["labels"].shape[0] == 4
    # rows 0, 2, 3 have a rationale; row 1 trains on the label task only
    assert batch["rationale_input_ids"].shape[0] == 3
    assert col.stats["no_rationale"] == 1 and col.stats["truncated_source"] >= 1
    assert batch["input_ids"].shape[1] <= 12 and batch["rationale_labels"].shape[1] <= 4
    first = tok("predict: two plus two")["input_ids"]
    assert batch["input_ids"][0, : len(first)].tolist() == first
    n = len(tok(text_target="four")["input_ids"]) + 1  # the shipped BPE adds no EOS: the collator does
    assert batch["labels"][0, n - 1] == tok.eos_token_id
    assert (batch["labels"][0, n:] == IGNORE_INDEX).all() and (batch["labels"][0, :n] != IGNORE_INDEX).all()
    assert batch["attention_mask"].sum(1).tolist() == [
        min(12, len(tok("predict: " + r["input"])["input_ids"])) for r in ROWS
    ]


def test_collator_causal_left_padding(tok):
    col = StepByStepCollator(tok, is_encoder_decoder=False)
    batch = col(ROWS)
    ids, labels, mask = batch["input_ids"], batch["labels"], batch["attention_mask"]
    for i, row in enumerate(ROWS):
        prompt = (
            tok("predict: " + row["input"])["input_ids"] + tok("\n", add_special_tokens=False)["input_ids"]
        )
        target = tok(row["label"], add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        n = len(prompt) + len(target)
        assert ids[i, -n:].tolist() == prompt + target  # left padded: the target ends the row
        assert mask[i].sum() == n and (mask[i, :-n] == 0).all()
        assert (
            labels[i, -len(target) :].tolist() == target and (labels[i, : -len(target)] == IGNORE_INDEX).all()
        )
        assert batch["prompt_input_ids"][i, -len(prompt) :].tolist() == prompt
    assert batch["position_ids"][0, -1] == mask[0].sum() - 1
    assert batch["target_positions"] == max(
        len(tok(r["label"], add_special_tokens=False)["input_ids"]) + 1 for r in ROWS
    )


def test_collator_pad_token_handling(tok):
    no_pad = load_tokenizer()
    no_pad.pad_token = None
    with pytest.raises(ValueError, match="no pad token"):
        StepByStepCollator(no_pad, is_encoder_decoder=True)
    StepByStepCollator(no_pad, is_encoder_decoder=False)  # causal: falls back to EOS, with a warning
    assert no_pad.pad_token_id == no_pad.eos_token_id


# ----------------------------------------------------------------------------- loss
def _trainer(preset: str, tok, tmp_path, **overrides) -> StepByStepTrainer:
    args = StepByStepConfig(
        output_dir=str(tmp_path / preset),
        report_to=[],
        use_cpu=True,
        save_strategy="no",
        disable_tqdm=True,
        **{"rationale_weight": 0.7, **overrides},
    )
    return StepByStepTrainer(build_model(preset, seed=0), args, processing_class=tok)


def _manual_task_loss(model, tok, rows, prefix, key, encoder_decoder):
    """Sum CE over every row run alone (no padding), and the number of target tokens."""
    total, count = 0.0, 0
    sep = tok("\n", add_special_tokens=False)["input_ids"]
    for row in rows:
        if not row[key]:
            continue
        src = tok(prefix + row["input"])["input_ids"]
        if encoder_decoder:
            tgt = tok(text_target=row[key])["input_ids"] + [tok.eos_token_id]
            dec = model.prepare_decoder_input_ids_from_labels(labels=torch.tensor([tgt]))
            logits = model(input_ids=torch.tensor([src]), decoder_input_ids=dec).logits[0]
            total = total + F.cross_entropy(logits, torch.tensor(tgt), reduction="sum")
        else:
            tgt = tok(row[key], add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
            full = torch.tensor([src + sep + tgt])
            logits = model(input_ids=full).logits[0, len(src) + len(sep) - 1 : -1]
            total = total + F.cross_entropy(logits, torch.tensor(tgt), reduction="sum")
        count += len(tgt)
    return total, count


@pytest.mark.parametrize("preset", ["t5-tiny", "llama-tiny"])
def test_loss_matches_manual_computation(preset, tok, tmp_path):
    trainer = _trainer(preset, tok, tmp_path)
    model = trainer.model
    model.train()  # tiny presets have no dropout, so train mode is deterministic
    batch = trainer.data_collator(ROWS)
    enc_dec = model.config.is_encoder_decoder
    loss = trainer.compute_loss(model, batch)
    label_sum, n_label = _manual_task_loss(model, tok, ROWS, "predict: ", "label", enc_dec)
    rat_sum, n_rat = _manual_task_loss(model, tok, ROWS, "explain: ", "rationale", enc_dec)
    expected = label_sum / n_label + 0.7 * rat_sum / n_rat
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-5)
    # with step-level counts (GA / DDP) the sums are divided by those counts instead
    counts = torch.tensor([n_label * 3, n_rat * 5])
    loss_step = trainer.compute_loss(model, batch, num_items_in_batch=counts)
    torch.testing.assert_close(
        loss_step, label_sum / (3 * n_label) + 0.7 * rat_sum / (5 * n_rat), rtol=1e-5, atol=1e-5
    )
    assert trainer._get_num_items_in_batch([batch, batch], torch.device("cpu")).tolist() == [
        2 * n_label,
        2 * n_rat,
    ]


@pytest.mark.parametrize("preset", ["t5-tiny", "llama-tiny"])
def test_gradient_accumulation_parity(preset, tok, tmp_path):
    """One SGD step with GA=2 x 2 rows must equal GA=1 x 4 rows (uneven label and rationale lengths)."""
    from datasets import Dataset

    data = Dataset.from_list(ROWS)
    params = []
    for ga, bs in ((2, 2), (1, 4)):
        trainer = _trainer(
            preset,
            tok,
            tmp_path / f"ga{ga}",
            max_steps=1,
            per_device_train_batch_size=bs,
            gradient_accumulation_steps=ga,
            optim="sgd",
            learning_rate=1.0,
            max_grad_norm=0.0,
            lr_scheduler_type="constant",
            logging_steps=1,
            seed=3,
        )
        trainer.train_dataset = trainer._tokenize(data, trainer.data_collator, train=True)
        before = [p.detach().clone() for p in trainer.model.parameters()]
        trainer.train()
        params.append([p.detach() - b for p, b in zip(trainer.model.parameters(), before)])
        assert {"loss_label", "loss_rationale"} <= set(trainer.state.log_history[0])
    for a, b in zip(*params):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    assert any(a.abs().sum() > 0 for a in params[0])


# ----------------------------------------------------------------------------- safe evaluator
@pytest.mark.parametrize(
    "text,value",
    [
        ("( 84.0 / 2.0 )", 42.0),
        ("((18 - 10) * 15)", 120.0),
        ("-(3) + +2", -1.0),
        ("2 ** -1", 0.5),
        ("1e3", 1000.0),
    ],
)
def test_safe_arithmetic_values(text, value):
    assert safe_arithmetic(text) == pytest.approx(value)


@pytest.mark.parametrize(
    "text",
    [
        "__import__('os').system('echo pwned')",
        "(lambda: 1)()",
        "9**9**9",
        "10 ** 65",
        "().__class__.__bases__[0]",
        "open('/etc/passwd')",
        "x + 1",
        "'a' * 3",
        "[1, 2]",
        "1 if 1 else 2",
        "True + 1",
        "(" * 300 + "1" + ")" * 300,
        "1e308 * 1e308",
    ],
)
def test_safe_arithmetic_rejects(text):
    with pytest.raises(UnsafeExpressionError):
        safe_arithmetic(text)


def test_label_metrics():
    assert exact_match(["a", "b"], ["a", "c"]) == 0.5
    assert equation_accuracy(
        ["(84 / 2)", "__import__('os')", "1/0"], ["( 84.0 / 2.0 )", "1", "1"]
    ) == pytest.approx(1 / 3)
    m = compute_label_metrics(["wooded area", "zoo "], ["wooded area", "park"])
    assert m == {"exact_match": 0.5, "accuracy": 0.5}
    assert compute_label_metrics(["(1 + 1)"], ["( 2.0 )"], metric="equation") == {
        "exact_match": 0.0,
        "accuracy": 1.0,
    }


def test_generated_rationales_without_gold_labels_load_with_the_llm_labels(tmp_path):
    """`hf-salt generate-rationales` writes input/rationale/llm_label rows and no `label`; the step-by-step
    guide trains on them with --use_llm_labels, so they load with the LLM's label standing in."""
    rows = [
        {
            "input": f"q{i}",
            "rationale": f"because {i}",
            "llm_label": f"(a{i})",
            "raw_output": "",
            "parse_ok": True,
        }
        for i in range(10)
    ]
    (tmp_path / "rationales.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    ds = load_step_by_step(tmp_path / "rationales.jsonl", valid_fraction=0.2)
    for split in ds.values():
        assert split["label"] == split["llm_label"] and all(split["label"])

"""TRL's dataset formats in SALTTrainer: `text`, `prompt`/`completion` and `messages` rows are prepared exactly as
`trl.SFTTrainer` prepares them (same input_ids and labels), packed or not, and train."""

from __future__ import annotations

import sys

import pytest
import torch
from datasets import Dataset

from hf_salt.data import load_tokenizer
from hf_salt.salt.config import SALTConfig
from hf_salt.salt.trainer import SALTTrainer
from hf_salt.zoo import build_model

trl = pytest.importorskip(
    "trl", reason="the TRL-format tests compare against trl.SFTTrainer (pip install 'hf-salt[trl]')"
)

# a small ChatML-like template: the shipped tokenizer has none
TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|endoftext|>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
WORDS = "the cat sat on a mat while dogs ran over hills and rivers under bright skies".split()


def _sentence(i: int, n: int = 9) -> str:
    return " ".join(WORDS[(i * 7 + k * 3) % len(WORDS)] for k in range(n + i % 5))


@pytest.fixture(scope="module")
def tok():
    t = load_tokenizer(None)
    t.chat_template = TEMPLATE
    return t


@pytest.fixture(scope="module")
def models(tok):
    return build_model("llama-tiny", vocab_size=len(tok), seed=0), build_model(
        "llama-tiny", vocab_size=len(tok), seed=1
    )


def _text(n=12):
    return Dataset.from_dict({"text": [_sentence(i) for i in range(n)]})


def _prompt_completion(n=12):
    return Dataset.from_dict(
        {
            "prompt": [_sentence(i, 4) for i in range(n)],
            "completion": [" " + _sentence(i + 1, 3) for i in range(n)],
        }
    )


def _messages(n=12):
    rows = [
        [{"role": "user", "content": _sentence(i, 4)}, {"role": "assistant", "content": _sentence(i + 2, 3)}]
        for i in range(n)
    ]
    return Dataset.from_dict({"messages": rows})


def _salt(tmp_path, tok, models, dataset, **kw):
    student, teacher = models
    args = SALTConfig(
        output_dir=str(tmp_path / "salt"), report_to="none", per_device_train_batch_size=4, max_steps=2,
        kd_steps=1, use_cpu=True, save_strategy="no", **kw,
    )  # fmt: skip
    return SALTTrainer(
        model=student, teacher_model=teacher, args=args, train_dataset=dataset, processing_class=tok
    )


def _sft(tmp_path, tok, models, dataset, **kw):
    """TRL's own SFT preparation of the same rows, for reference."""
    args = trl.SFTConfig(output_dir=str(tmp_path / "sft"), report_to="none", use_cpu=True, **kw)
    return trl.SFTTrainer(
        model=models[0], args=args, train_dataset=dataset, processing_class=tok
    ).train_dataset


def _columns(dataset, names=("input_ids", "labels")):
    return {n: dataset[n] for n in names}


def test_text_rows_match_sft_and_end_with_eos(tmp_path, tok, models):
    ds = _text()
    trainer = _salt(tmp_path, tok, models, ds, max_length=8)
    prepared = trainer.train_dataset
    ref = _sft(tmp_path, tok, models, ds, max_length=8)
    assert _columns(prepared) == _columns(ref)
    assert max(len(ids) for ids in prepared["input_ids"]) == 8  # truncated (keep_start)
    full = _salt(tmp_path, tok, models, ds, max_length=None).train_dataset
    assert full["input_ids"][0] == tok(ds[0]["text"])["input_ids"] + [tok.eos_token_id]
    assert full["labels"] == full["input_ids"]


def test_prompt_completion_masks_the_prompt_like_completion_only_loss(tmp_path, tok, models):
    ds = _prompt_completion()
    trainer = _salt(tmp_path, tok, models, ds)
    prepared = trainer.train_dataset
    assert _columns(prepared) == _columns(_sft(tmp_path, tok, models, ds))
    n_prompt = len(tok(ds[0]["prompt"])["input_ids"])
    labels, ids = prepared[0]["labels"], prepared[0]["input_ids"]
    assert labels[:n_prompt] == [-100] * n_prompt and labels[n_prompt:] == ids[n_prompt:]
    assert ids[-1] == tok.eos_token_id
    unmasked = _salt(tmp_path, tok, models, ds, completion_only_loss=False).train_dataset
    assert unmasked[0]["labels"] == unmasked[0]["input_ids"]
    # the collator carries the mask into the loss (right-padded with -100)
    rows = [prepared[i] for i in range(4)]
    batch = trainer.data_collator(rows)
    width = max(len(r["labels"]) for r in rows)
    assert batch["labels"].tolist() == [r["labels"] + [-100] * (width - len(r["labels"])) for r in rows]
    trainer.train()
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())


def test_messages_use_the_chat_template_like_sft(tmp_path, tok, models):
    ds = _messages()
    prepared = _salt(tmp_path, tok, models, ds).train_dataset
    assert _columns(prepared) == _columns(_sft(tmp_path, tok, models, ds))
    rendered = tok.apply_chat_template(ds[0]["messages"], tokenize=False)
    assert prepared[0]["input_ids"] == tok(rendered)["input_ids"]
    no_template = load_tokenizer(None)
    with pytest.raises(ValueError, match="chat_template"):
        _salt(tmp_path, no_template, models, ds)


@pytest.mark.parametrize("strategy", ["bfd", "wrapped"])
def test_packing_matches_sft_and_trains(tmp_path, tok, models, strategy):
    ds = _text(24)
    trainer = _salt(tmp_path, tok, models, ds, packing=True, max_length=32, packing_strategy=strategy)
    prepared = trainer.train_dataset
    ref = _sft(tmp_path, tok, models, ds, packing=True, max_length=32, packing_strategy=strategy)
    names = ("input_ids", "labels", "seq_lengths") if strategy == "bfd" else ("input_ids", "labels")
    assert _columns(prepared, names) == _columns(ref, names)
    assert len(prepared) < len(ds) and all(len(r) <= 32 for r in prepared["input_ids"])
    batch = next(iter(trainer.get_train_dataloader()))
    if strategy == "bfd":  # padding-free: one flattened row, positions restart at every packed sequence
        assert batch["input_ids"].shape[0] == 1 and "attention_mask" not in batch
        assert int((batch["position_ids"] == 0).sum()) == sum(len(s) for s in prepared["seq_lengths"][:4])
    else:
        assert batch["input_ids"].shape == (4, 32)
    trainer.train()
    assert trainer.state.global_step == 2


def test_pretokenized_blocks_pass_through_and_errors_say_what_to_do(tmp_path, tok, models, monkeypatch):
    blocks = Dataset.from_dict({"input_ids": [[1, 2, 3, 4]] * 8})
    assert _salt(tmp_path, tok, models, blocks).train_dataset is blocks
    student, teacher = models
    args = SALTConfig(output_dir=str(tmp_path / "x"), report_to="none", use_cpu=True)
    with pytest.raises(ValueError, match="processing_class"):
        SALTTrainer(model=student, teacher_model=teacher, args=args, train_dataset=_text())
    with pytest.raises(ValueError, match="dataset_text_field"):
        _salt(
            tmp_path,
            tok,
            models,
            Dataset.from_dict({"text": ["a b"], "body": ["c d"]}),
            dataset_text_field="body2",
        )
    with pytest.raises(ValueError, match="max_length"):
        SALTConfig(output_dir=str(tmp_path / "y"), packing=True, max_length=None)
    monkeypatch.setitem(sys.modules, "trl.data_utils", None)  # TRL not installed
    with pytest.raises(ImportError, match=r"hf-salt\[trl\]"):
        _salt(tmp_path, tok, models, _text())


# ------------------------------------------------------------------ step-by-step (decoder-only) on prompt/completion
def _step_trainer(tmp_path, tok, dataset):
    from hf_salt.step_by_step import StepByStepConfig, StepByStepTrainer

    args = StepByStepConfig(
        output_dir=str(tmp_path / "sbs"), report_to=[], use_cpu=True, save_strategy="no", disable_tqdm=True,
        max_steps=1, per_device_train_batch_size=4,
    )  # fmt: skip
    model = build_model("llama-tiny", vocab_size=len(tok), seed=0)
    return StepByStepTrainer(model, args, processing_class=tok, train_dataset=dataset)


def test_step_by_step_takes_prompt_completion_rows(tmp_path, tok):
    prompts = [_sentence(i, 4) for i in range(8)]
    answers = [_sentence(i + 1, 2) for i in range(8)]
    rationales = [_sentence(i + 3, 3) if i % 2 else "" for i in range(8)]
    pc = Dataset.from_dict({"prompt": prompts, "completion": answers, "rationale": rationales})
    native = Dataset.from_dict(
        {"input": prompts, "label": answers, "rationale": rationales, "llm_label": answers}
    )
    trainer = _step_trainer(tmp_path, tok, pc)
    reference = _step_trainer(tmp_path, tok, native)
    assert trainer.train_dataset[:] == reference.train_dataset[:]  # the same token ids as input/label rows
    assert trainer.collator_stats["no_rationale"] == 4
    trainer.train()
    assert trainer.state.global_step == 1
    # conversational rows: rendered with the chat template (trl.maybe_apply_chat_template)
    chat = Dataset.from_dict(
        {
            "prompt": [[{"role": "user", "content": p}] for p in prompts],
            "completion": [[{"role": "assistant", "content": a}] for a in answers],
        }
    )
    from hf_salt.step_by_step.data import from_prompt_completion

    rows = from_prompt_completion(chat, tok)
    assert rows[0]["input"] == f"<|user|>{prompts[0]}<|endoftext|><|assistant|>"
    assert (
        rows[0]["label"] == f"{answers[0]}<|endoftext|>" and rows[0]["rationale"] == ""
    )  # the rest of the chat
    assert len(_step_trainer(tmp_path, tok, chat).train_dataset) == 8


def test_load_step_by_step_reads_prompt_completion_files(tmp_path):
    import json

    from hf_salt.step_by_step import load_step_by_step

    rows = [{"prompt": f"q{i}?", "completion": f"a{i}", "rationale": f"because {i}"} for i in range(10)]
    path = tmp_path / "train.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    data = load_step_by_step(str(path), valid_fraction=0.2)
    row = data["train"][0]
    assert set(data["train"].column_names) == {"input", "label", "rationale", "llm_label"}
    i = int(row["input"][1:-1])
    assert row == {"input": f"q{i}?", "label": f"a{i}", "rationale": f"because {i}", "llm_label": f"a{i}"}
    assert len(data["train"]) + len(data["validation"]) == 10
    chat = tmp_path / "chat.jsonl"
    chat.write_text(
        json.dumps(
            {
                "prompt": [{"role": "user", "content": "q"}],
                "completion": [{"role": "assistant", "content": "a"}],
            }
        )
    )
    with pytest.raises(ValueError, match="chat template"):
        load_step_by_step(str(chat))


def test_padding_free_rows_longer_than_the_positions_are_checked_per_sequence(tmp_path, tok, models):
    """bfd packing flattens a batch into one row longer than llama-tiny's 256 positions; each packed sequence
    fits, so it trains. A sequence that itself exceeds the positions is still refused, naming the limit."""
    limit = models[0].config.max_position_embeddings
    ds = _text(160)
    trainer = _salt(tmp_path, tok, models, ds, packing=True, max_length=128)
    trainer.args.per_device_train_batch_size = 8  # 8 rows of up to 128 tokens: ~1,000 flattened tokens
    batch = next(iter(trainer.get_train_dataloader()))
    assert batch["input_ids"].shape[0] == 1 and batch["input_ids"].shape[1] > limit  # the case under test
    trainer.train()
    assert trainer.state.global_step == 2

    flat = {k: v for k, v in batch.items() if k not in ("max_length_q", "max_length_k")}
    trainer._check_length(flat)  # without the collator's max_length_q: read from position_ids
    long_row = {
        "input_ids": torch.zeros(1, limit + 8, dtype=torch.long),
        "position_ids": torch.arange(limit + 8).unsqueeze(0),
    }
    with pytest.raises(
        ValueError, match=f"sequences of {limit + 8} tokens are longer than the model's {limit}"
    ):
        trainer._check_length(long_row)
    with pytest.raises(ValueError, match="longer than the model's"):  # no position_ids: one sequence
        trainer._check_length({"input_ids": torch.zeros(1, limit + 8, dtype=torch.long)})

import json
from pathlib import Path

import pytest
from datasets import Dataset, IterableDataset

from hf_salt.data import check_block_size, load_corpus, pack_dataset
from hf_salt.zoo import build_config


def test_embedded_wikitext_has_the_published_splits():
    ds = load_corpus("wikitext-2")
    # non-blank lines of the tokenized WikiText-2 files (shared/data/corpora/README.md)
    assert {k: len(v) for k, v in ds.items()} == {"train": 23767, "validation": 2461, "test": 2891}
    assert ds["train"][0]["text"].strip() == "= Valkyria Chronicles III ="


def test_tinyshakespeare_is_split_contiguously():
    ds = load_corpus("tinyshakespeare")
    n = sum(len(v) for v in ds.values())
    assert (
        len(ds["validation"]) == len(ds["test"]) == int(n * 0.05) or abs(len(ds["validation"]) - n * 0.05) < 2
    )
    assert ds["train"][0]["text"] == "First Citizen:"


def test_local_files_are_split_by_name(tmp_path: Path):
    (tmp_path / "train.txt").write_text("alpha beta\n\ngamma\n")
    (tmp_path / "valid.txt").write_text("delta\n")
    ds = load_corpus(tmp_path)
    assert ds["train"]["text"] == ["alpha beta", "gamma"]
    assert ds["validation"]["text"] == ["delta"]
    rows = [{"content": f"row {i}"} for i in range(40)]
    (tmp_path / "j").mkdir()
    (tmp_path / "j" / "data.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    ds = load_corpus(tmp_path / "j", text_column="content")
    assert len(ds["train"]) == 36 and ds["validation"]["text"] == ["row 36", "row 37"]


def test_save_to_disk_folder(tmp_path: Path):
    Dataset.from_dict({"text": [f"line {i}" for i in range(60)]}).save_to_disk(str(tmp_path / "d"))
    ds = load_corpus(tmp_path / "d")
    assert len(ds["train"]) + len(ds["validation"]) + len(ds["test"]) == 60


def test_missing_and_empty_corpora_are_clear_errors(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match="neither an embedded corpus"):
        load_corpus(tmp_path / "missing.txt")
    (tmp_path / "empty.txt").write_text("\n  \n\n")
    with pytest.raises(ValueError, match="empty"):
        load_corpus(tmp_path / "empty.txt")
    (tmp_path / "x.docx").write_text("hi")
    with pytest.raises(ValueError, match="Don't know how to read"):
        load_corpus(tmp_path / "x.docx")


def _stream(tokenizer, texts):
    out = []
    for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]:
        out += ids + [tokenizer.eos_token_id]
    return out


def test_packing_makes_full_blocks_without_label_leakage(tokenizer):
    texts = [f"document number {i} " + "word " * (i % 7) for i in range(50)]
    packed = pack_dataset(Dataset.from_dict({"text": texts}), tokenizer, 16)
    stream = _stream(tokenizer, texts)
    assert len(packed) == len(stream) // 16
    for i, row in enumerate(packed):
        assert len(row["input_ids"]) == len(row["labels"]) == len(row["attention_mask"]) == 16
        # each block's labels are its own tokens: nothing from a neighbouring block
        assert row["labels"] == row["input_ids"] == stream[16 * i : 16 * (i + 1)]
    # documents are separated by EOS
    assert stream.count(tokenizer.eos_token_id) == 50


def test_packing_streaming_matches_map_style(tokenizer):
    texts = [f"streamed text {i} with some words" for i in range(30)]
    eager = pack_dataset(Dataset.from_dict({"text": texts}), tokenizer, 8)
    streamed = pack_dataset(
        IterableDataset.from_generator(lambda: ({"text": t} for t in texts)), tokenizer, 8
    )
    assert [r["input_ids"] for r in streamed] == eager["input_ids"]


def test_packing_errors(tokenizer):
    with pytest.raises(ValueError, match="no full block"):
        pack_dataset(Dataset.from_dict({"text": ["hi"]}), tokenizer, 64)
    with pytest.raises(ValueError, match="no 'text' column"):
        pack_dataset(Dataset.from_dict({"body": ["hi"]}), tokenizer, 4)
    with pytest.raises(ValueError, match="larger than the model's context"):
        check_block_size(512, build_config("llama-tiny"))
    check_block_size(256, build_config("llama-tiny"))

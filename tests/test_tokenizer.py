from pathlib import Path

import pytest
from transformers import AutoTokenizer

from hf_salt.data import train_tokenizer
from hf_salt.data.tokenizer import TOKENIZER_DIR, load_tokenizer

SAMPLES = [
    " = Valkyria Chronicles III = ",
    "Senjō no Valkyria 3 : <unk> Chronicles ( Japanese : 戦場のヴァルキュリア3 ) is a role @-@ playing game .",
    "def f(x):\n    return x ** 2  # emoji 🚀 and tabs\t!",
]


def test_shipped_tokenizer_loads_offline_with_auto_and_round_trips():
    tok = AutoTokenizer.from_pretrained(str(TOKENIZER_DIR), local_files_only=True)
    assert len(tok) == 8192
    assert tok.eos_token == "<|endoftext|>" and tok.eos_token_id == 0
    assert tok.pad_token == "<|pad|>" and tok.pad_token_id == 1
    for text in SAMPLES:
        ids = tok(text, add_special_tokens=False)["input_ids"]
        assert tok.decode(ids) == text
    # trained on WikiText-2: common words are single tokens, so the text compresses well
    english = " The game was released in January 2011 in Japan , and it is the third game in the series ."
    assert len(tok(english, add_special_tokens=False)["input_ids"]) < len(english) / 3


def test_train_tokenizer_on_own_corpus(tmp_path: Path):
    corpus = ["the cat sat on the mat", "the dog sat on the log"] * 50
    tok = train_tokenizer(corpus, vocab_size=300, save_to=tmp_path / "tok", show_progress=False)
    reloaded = load_tokenizer(tmp_path / "tok")
    assert len(reloaded) == len(tok) <= 300
    assert reloaded.decode(reloaded("the cat sat")["input_ids"]) == "the cat sat"
    assert len(reloaded("the cat sat on the mat")["input_ids"]) < len("the cat sat on the mat")


def test_train_tokenizer_rejects_empty_corpus_and_tiny_vocab():
    with pytest.raises(ValueError, match="empty"):
        train_tokenizer(["", "   "], vocab_size=600, show_progress=False)
    with pytest.raises(ValueError, match="too small"):
        train_tokenizer(["abc"], vocab_size=100, show_progress=False)


def test_missing_tokenizer_folder_is_a_clear_error(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_tokenizer(tmp_path / "nope")

"""Shared data: embedded corpora, the shipped tokenizer, packing; `sft.py`: TRL-format datasets (imports TRL lazily)."""

from hf_salt.data.corpora import EMBEDDED_CORPORA, load_corpus
from hf_salt.data.packing import check_block_size, pack_dataset
from hf_salt.data.tokenizer import load_tokenizer, train_tokenizer

__all__ = [
    "EMBEDDED_CORPORA",
    "check_block_size",
    "load_corpus",
    "load_tokenizer",
    "pack_dataset",
    "train_tokenizer",
]

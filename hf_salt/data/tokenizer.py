"""The shipped byte-level BPE tokenizer, and `train_tokenizer` to make one for your own corpus.

The shipped tokenizer was trained on WikiText-2 train with `train_tokenizer` (vocabulary 8192); it is a
plain `PreTrainedTokenizerFast` folder, so `AutoTokenizer.from_pretrained(path)` loads it offline.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

TOKENIZER_DIR = Path(__file__).resolve().parent.parent / "assets" / "tokenizer"
EOS_TOKEN = "<|endoftext|>"
PAD_TOKEN = "<|pad|>"


def load_tokenizer(name_or_path: str | Path | None = None) -> PreTrainedTokenizerBase:
    """Load the shipped tokenizer (`None`) or any local tokenizer folder, never touching the network."""
    path = TOKENIZER_DIR if name_or_path is None else Path(name_or_path)
    if not path.is_dir():
        raise FileNotFoundError(
            f"Tokenizer folder {str(path)!r} does not exist. Pass a local folder saved with "
            "`tokenizer.save_pretrained(...)`, or nothing for the tokenizer shipped with hf-salt."
        )
    return AutoTokenizer.from_pretrained(str(path), local_files_only=True)


def _batches(texts: Iterable[str], size: int = 1000) -> Iterator[list[str]]:
    batch: list[str] = []
    for text in texts:
        if text and not text.isspace():
            batch.append(text)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def train_tokenizer(
    texts: Iterable[str],
    vocab_size: int = 8192,
    min_frequency: int = 2,
    model_max_length: int = 2048,
    save_to: str | Path | None = None,
    show_progress: bool = True,
) -> PreTrainedTokenizerFast:
    """Train a GPT-2-style byte-level BPE tokenizer on `texts` (any iterable of strings).

    Byte-level BPE never produces unknown tokens, so one tokenizer covers any text. Special tokens:
    `<|endoftext|>` (document separator, also BOS/UNK) and `<|pad|>` (padding, never a label).
    """
    if vocab_size <= 258:
        raise ValueError(
            f"vocab_size={vocab_size} is too small: byte-level BPE needs the 256 byte tokens, 2 special tokens "
            "and room for merges; use a few thousand (8192 is the shipped size)."
        )
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=[EOS_TOKEN, PAD_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=show_progress,
    )
    tok.train_from_iterator(_batches(texts), trainer=trainer)
    if tok.get_vocab_size() == 2 + 256 and vocab_size > 258:
        # nothing was learned beyond the alphabet: almost certainly an empty corpus
        raise ValueError("The corpus given to train_tokenizer is empty (no non-blank text).")
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token=EOS_TOKEN,
        bos_token=EOS_TOKEN,
        unk_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        model_max_length=model_max_length,
    )
    if save_to is not None:
        fast.save_pretrained(str(save_to))
    return fast

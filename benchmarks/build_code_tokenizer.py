"""Train a small byte-level BPE on the code corpus (``benchmarks/build_code_corpus.py``) for the small-vocabulary
CPU benchmark (``benchmarks/configs/cpu_small_vocab.yaml``).

Why a small vocabulary: with the shipped 8192-token BPE the output layer of a model with hidden size 128 costs
more than its whole body, so a CPU run spends its time on the softmax. With 2048 tokens the models' body does
most of the work, and the same CPU time buys several times more tokens.

Deterministic: the BPE is trained on the first ``--sample_mb`` MB of ``train.jsonl`` (files are stored in
the order of their SHA-256, so the sample depends only on the corpus' content).

``--slice_mb N`` also writes ``<corpus>/slice-<N>mb/data/{train,validation}.jsonl``: the first N MB of the
training files (the same hash order; at ~0.34 tokens per byte, 60 MB hold ~20M tokens) and the whole validation
split. A run that reads a few million tokens then packs only what it can read, not all 231 MB.

Run (after the corpus):
    python benchmarks/build_code_corpus.py --output outputs/code-corpus
    python benchmarks/build_code_tokenizer.py --corpus outputs/code-corpus --vocab_size 2048 --slice_mb 48
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path


def read_texts(path: Path, max_bytes: int | None = None) -> Iterator[str]:
    """The documents of a ``{"text": ...}`` JSON-lines file, in order, up to ``max_bytes`` of UTF-8 text."""
    total = 0
    with path.open(encoding="utf-8") as fh:
        for line in fh:
            text = json.loads(line)["text"]
            yield text
            total += len(text.encode("utf-8"))
            if max_bytes is not None and total >= max_bytes:
                return


def write_slice(corpus: Path, megabytes: float) -> Path:
    """The first ``megabytes`` MB of the training files and the whole validation split, as a corpus folder."""
    out = corpus / f"slice-{megabytes:g}mb" / "data"
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / "train.jsonl.tmp"
    with tmp.open("w", encoding="utf-8") as fh:
        for text in read_texts(corpus / "data" / "train.jsonl", int(megabytes * 1e6)):
            fh.write(json.dumps({"text": text}) + "\n")
    tmp.replace(out / "train.jsonl")
    shutil.copyfile(corpus / "data" / "validation.jsonl", out / "validation.jsonl")
    return out


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--corpus", default="outputs/code-corpus", help="Output folder of build_code_corpus.py."
    )
    parser.add_argument("--vocab_size", type=int, default=2048, help="BPE vocabulary size (with 2 specials).")
    parser.add_argument(
        "--sample_mb", type=float, default=16.0, help="MB of training text the BPE learns from."
    )
    parser.add_argument(
        "--output", default=None, help="Tokenizer folder (default: <corpus>/tokenizer-<vocab>)."
    )
    parser.add_argument("--slice_mb", type=float, default=0.0, help="Also write a corpus of the first N MB.")
    args = parser.parse_args(argv)

    from hf_salt.data import train_tokenizer

    corpus = Path(args.corpus)
    train, validation = corpus / "data" / "train.jsonl", corpus / "data" / "validation.jsonl"
    if not train.is_file() or not validation.is_file():
        raise SystemExit(
            f"{corpus}/data has no train.jsonl/validation.jsonl: build the corpus first with "
            f"python benchmarks/build_code_corpus.py --output {corpus}"
        )
    out = Path(args.output) if args.output else corpus / f"tokenizer-{args.vocab_size}"
    start = time.perf_counter()
    tok = train_tokenizer(
        read_texts(train, int(args.sample_mb * 1e6)),
        vocab_size=args.vocab_size,
        save_to=out,
        show_progress=False,
    )
    elapsed = time.perf_counter() - start
    texts = list(read_texts(validation))
    n_bytes = sum(len(t.encode("utf-8")) for t in texts)
    n_tokens = sum(len(ids) for ids in tok(texts, add_special_tokens=False)["input_ids"])
    print(
        f"{out}: {len(tok)} tokens, trained on {args.sample_mb:g} MB in {elapsed:.0f} s; validation split: "
        f"{n_tokens:,} tokens from {n_bytes / 1e6:.1f} MB ({n_tokens / n_bytes:.3f} tokens/byte)"
    )
    if args.slice_mb > 0:
        print(f"corpus slice: {write_slice(corpus, args.slice_mb)}")
    return out


if __name__ == "__main__":
    main()

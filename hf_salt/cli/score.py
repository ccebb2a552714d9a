"""`hf-salt score`: SALT_DS scoring of a corpus with a small model; saves the scored dataset.

The corpus (embedded name or local files) is packed into `--block_size` blocks with the tokenizer, scored
with `hf_salt.salt_ds.score_dataset` (cached, batched, GPU when present; under `accelerate launch` every
rank scores a shard) and written with `save_to_disk` to a temporary folder renamed into place, so
`--output_dir` holds a complete dataset or nothing. Train with it: `hf-salt pretrain --salt_ds OUTPUT_DIR`
(with the same `--teacher_model_name_or_path` and `--block_size`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from hf_salt.checks import check_writable
from hf_salt.cli.parser import Command
from hf_salt.zoo import DTYPE_CHOICES, parse_dtype


@dataclass
class ScoreArguments:
    teacher_model_name_or_path: str = field(
        metadata={
            "help": "The scoring model (SALT's small teacher): a local model folder or an hf-salt zoo preset name."
        }
    )
    output_dir: str = field(metadata={"help": "Folder for the scored dataset (save_to_disk format)."})
    corpus: str = field(
        default="wikitext-2",
        metadata={
            "help": "Embedded corpus name (wikitext-2, tinyshakespeare) or a path to text/json/parquet files."
        },
    )
    split: str = field(default="train", metadata={"help": "Split of the corpus to score."})
    text_column: str = field(default="text", metadata={"help": "Column holding the raw text."})
    tokenizer: str | None = field(
        default=None,
        metadata={"help": "Tokenizer folder (default: the teacher folder's, else the shipped one)."},
    )
    block_size: int = field(
        default=256, metadata={"help": "Tokens per packed block (use the training block size)."}
    )
    max_blocks: int | None = field(default=None, metadata={"help": "Score only the first N blocks."})
    top_k: int = field(
        default=10, metadata={"help": "A token is learnable if it is in the teacher's top-k (paper: 10)."}
    )
    salt_ds_statistic: str = field(
        default="median",
        metadata={
            "help": "Per-sequence statistic of the learnable losses: median (paper) or mean.",
            "choices": ["median", "mean"],
        },
    )
    batch_size: int = field(default=16, metadata={"help": "Sequences per teacher forward."})
    chunk_size: int | None = field(
        default=None, metadata={"help": "Positions per logits chunk (default: automatic)."}
    )
    dtype: str = field(
        default="float32",
        metadata={
            "help": "Teacher dtype: float32, bfloat16, float16, or auto (the checkpoint's).",
            "choices": list(DTYPE_CHOICES),
        },
    )
    seed: int = field(default=0, metadata={"help": "Initialisation seed when the teacher is a zoo preset."})
    overwrite: bool = field(default=False, metadata={"help": "Replace --output_dir if it exists."})

    def __post_init__(self) -> None:
        if self.block_size < 2:
            raise ValueError(f"--block_size must be at least 2, got {self.block_size}.")
        if self.top_k < 1:
            raise ValueError(f"--top_k must be >= 1, got {self.top_k}.")
        if self.batch_size < 1:
            raise ValueError(f"--batch_size must be >= 1, got {self.batch_size}.")
        if self.max_blocks is not None and self.max_blocks < 1:
            raise ValueError(f"--max_blocks must be >= 1, got {self.max_blocks}.")
        if self.salt_ds_statistic not in ("median", "mean"):
            raise ValueError("--salt_ds_statistic must be median or mean.")
        parse_dtype(self.dtype, "--dtype")
        check_writable(self.output_dir, "--output_dir")
        if Path(self.output_dir).exists() and any(Path(self.output_dir).iterdir()) and not self.overwrite:
            raise ValueError(
                f"--output_dir {self.output_dir!r} exists and is not empty: pass --overwrite or pick another."
            )


SCORED_WITH = "hf_salt_tokenizer.json"  # in a scored dataset's folder: which tokenizer made its token ids


def run(args: ScoreArguments) -> int:
    from accelerate import PartialState

    from hf_salt.checks import check_finite, check_model_path, tokenizer_fingerprint
    from hf_salt.data import check_block_size, load_corpus, load_tokenizer, pack_dataset
    from hf_salt.data.corpora import describe_split
    from hf_salt.io import atomic_directory
    from hf_salt.salt_ds import score_dataset
    from hf_salt.zoo import load_model

    teacher_path = args.teacher_model_name_or_path
    check_model_path(teacher_path, "--teacher_model_name_or_path")  # before its tokenizer files are read
    tokenizer_path = args.tokenizer
    if tokenizer_path is None and Path(teacher_path, "tokenizer.json").is_file():
        tokenizer_path = teacher_path
    tokenizer = load_tokenizer(tokenizer_path)
    teacher = load_model(
        teacher_path,
        vocab_size=len(tokenizer),
        seed=args.seed,
        dtype=args.dtype,
        flag="--teacher_model_name_or_path",
        causal=True,
    )
    check_finite(teacher, f"--teacher_model_name_or_path {teacher_path!r}")  # NaN scores rank nothing
    check_block_size(args.block_size, teacher.config)
    corpus = load_corpus(args.corpus)
    if args.split not in corpus:
        raise ValueError(f"--split {args.split!r} is not in the corpus (splits: {', '.join(corpus)}).")
    name = describe_split(args.corpus, args.split)
    blocks = pack_dataset(
        corpus[args.split], tokenizer, args.block_size, text_column=args.text_column, name=name
    )
    if args.max_blocks:
        blocks = blocks.select(range(min(len(blocks), args.max_blocks)))
    state = PartialState()
    if state.is_main_process:
        print(
            f"Scoring {len(blocks)} blocks of {args.block_size} tokens from {args.corpus}/{args.split} with {teacher_path}."
        )
    scored = score_dataset(
        blocks,
        teacher,
        top_k=args.top_k,
        statistic=args.salt_ds_statistic,
        batch_size=args.batch_size,
        chunk_size=args.chunk_size,
    )
    if state.is_main_process:
        with atomic_directory(args.output_dir, overwrite=True) as tmp:
            scored.save_to_disk(str(tmp))
            # the tokenizer the ids come from: `pretrain --salt_ds` refuses a run with another one
            (tmp / SCORED_WITH).write_text(
                json.dumps(
                    {
                        "tokenizer": tokenizer_path or "shipped",
                        "vocab_sha256": tokenizer_fingerprint(tokenizer),
                        "top_k": args.top_k,  # how it was scored, for the model card
                        "statistic": args.salt_ds_statistic,
                    }
                )
            )
        n = sum(1 for c in scored["salt_ds_num_learnable"] if c > 0)
        print(f"Saved {len(scored)} scored blocks ({n} with a learnable token) to {args.output_dir}.")
    state.wait_for_everyone()
    return 0


COMMAND = Command([ScoreArguments], run, description=__doc__)

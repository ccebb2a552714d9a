"""`hf-salt pretrain`: train one causal LM on a corpus and report validation loss and perplexity.

Plain next-token training by default; SALT when `--teacher_model_name_or_path` names a (small, trained) teacher;
SALT_DS when `--salt_ds` also names a dataset scored by `hf-salt score`. Every `TrainingArguments` and
`SALTConfig` flag works (`--learning_rate`, `--bf16`, `--kd_weight`, `--report_to tensorboard`, ...), and so
does `--config file.yaml`.
"""

from __future__ import annotations

import json
import math
import shutil
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from transformers import Trainer, default_data_collator

from hf_salt.checkpoints import (
    ALLOW_CHANGED_HELP,
    RESUME_HELP,
    AtomicCheckpointTrainer,
    check_fresh_start,
    resolve_resume,
)
from hf_salt.checks import (
    check_model_path,
    check_no_finished_run,
    check_writable,
    naming_corrupt_files,
)
from hf_salt.cli.parser import Command
from hf_salt.data import check_block_size, load_corpus, load_tokenizer, pack_dataset
from hf_salt.hub import push_cli_output, take_push_request
from hf_salt.hypercloning.optim import with_grown_lr
from hf_salt.io import atomic_directory
from hf_salt.salt.config import SALTConfig
from hf_salt.salt.schedules import resolve_kd_steps
from hf_salt.zoo import PRESETS, load_model


@dataclass
class ModelArguments:
    model: str = field(
        default="llama-tiny",
        metadata={"help": f"A zoo preset ({', '.join(PRESETS)}) or a local model folder."},
    )
    tokenizer: str | None = field(
        default=None,
        metadata={"help": "A local tokenizer folder; default: the tokenizer shipped with hf-salt."},
    )


@dataclass
class DataArguments:
    corpus: str = field(
        default="wikitext-2",
        metadata={
            "help": "Embedded corpus (wikitext-2, tinyshakespeare), text/json/csv/parquet files, or a datasets folder."
        },
    )
    block_size: int = field(default=128, metadata={"help": "Tokens per packed training block."})
    max_train_blocks: int | None = field(
        default=None, metadata={"help": "Use at most this many training blocks."}
    )
    max_eval_blocks: int | None = field(
        default=256, metadata={"help": "Evaluate on at most this many validation blocks."}
    )
    salt_ds: str | None = field(
        default=None,
        metadata={
            "help": "SALT_DS: a dataset scored by `hf-salt score` (same corpus and block size); its best blocks "
            "feed the KD stage. Needs --teacher_model_name_or_path."
        },
    )
    salt_ds_band: list[float] | None = field(
        default=None,
        metadata={
            "help": "SALT_DS: pick from this percentile band of scores (e.g. 50 95) instead of the top."
        },
    )
    salt_ds_statistic: str | None = field(
        default=None,
        metadata={
            "help": "SALT_DS: median (default, as scored) or mean.",
            "choices": [None, "median", "mean"],
        },
    )


@dataclass
class PretrainArguments(SALTConfig):
    """`SALTConfig` with defaults that train a tiny model on the CPU in under a minute."""

    output_dir: str | None = field(
        default="outputs/pretrain", metadata={"help": "Where checkpoints and the model go."}
    )
    max_steps: int = field(default=120, metadata={"help": "Total optimizer steps."})
    per_device_train_batch_size: int = field(
        default=8, metadata={"help": "Batch size per device for training."}
    )
    per_device_eval_batch_size: int = field(
        default=32, metadata={"help": "Batch size per device for evaluation."}
    )
    learning_rate: float = field(default=3e-3, metadata={"help": "Peak learning rate (AdamW)."})
    warmup_steps: float = field(
        default=0.1, metadata={"help": "Linear warm-up: steps, or a fraction of max_steps if < 1."}
    )
    lr_scheduler_type: str = field(default="cosine", metadata={"help": "Learning-rate schedule."})
    logging_steps: float = field(default=25, metadata={"help": "Log every N steps."})
    save_strategy: str = field(default="no", metadata={"help": "Checkpoint strategy (no, steps, epoch)."})
    resume_from_checkpoint: str | None = field(default=None, metadata={"help": RESUME_HELP})
    overwrite_output_dir: bool = field(
        default=False,
        metadata={"help": "Allow an output_dir that already holds a finished run (its model is replaced)."},
    )
    allow_changed_settings: bool = field(default=False, metadata={"help": ALLOW_CHANGED_HELP})


FINISHED_RUN = ("model", "all_results.json")  # what a finished `hf-salt pretrain` leaves in output_dir


def check_inputs(model_args: ModelArguments, data_args: DataArguments, args: PretrainArguments) -> None:
    """Everything that can be checked before loading data or models."""
    check_writable(args.output_dir, "--output_dir")
    check_no_finished_run(args.output_dir, FINISHED_RUN, args.overwrite_output_dir)
    if args.teacher_model_name_or_path:
        check_model_path(args.teacher_model_name_or_path, "--teacher_model_name_or_path")
    if data_args.salt_ds and not args.teacher_model_name_or_path:
        raise ValueError("--salt_ds selects data for the KD stage: pass --teacher_model_name_or_path too.")
    if not args.teacher_model_name_or_path:
        ignored = args.kd_settings_changed()
        if ignored:
            warnings.warn(
                f"No --teacher_model_name_or_path, so this is plain training and {', '.join('--' + n for n in ignored)} "
                "do nothing; pass a teacher to train with SALT.",
                stacklevel=2,
            )


def check_scored_tokenizer(salt_ds: str, tokenizer) -> None:
    """Refuse a scored dataset whose token ids come from another tokenizer than the run's."""
    from hf_salt.checks import tokenizer_fingerprint
    from hf_salt.cli.score import SCORED_WITH

    record = Path(salt_ds) / SCORED_WITH
    if not record.is_file():
        warnings.warn(
            f"--salt_ds {salt_ds!r} does not say which tokenizer made its token ids (scored by an older hf-salt); "
            "make sure it is the run's tokenizer.",
            stacklevel=2,
        )
        return
    scored_with = json.loads(record.read_text())
    if scored_with.get("vocab_sha256") != tokenizer_fingerprint(tokenizer):
        raise ValueError(
            f"--salt_ds {salt_ds!r} was tokenized by another tokenizer ({scored_with.get('tokenizer')!r}) than "
            "this run's (--tokenizer): its token ids would mean other tokens. Score the corpus with the run's "
            "tokenizer (hf-salt score --tokenizer ...), or train with the scored dataset's tokenizer."
        )


def _drop_unused_teacher(data_args: DataArguments, args: PretrainArguments) -> None:
    """KD switched off (kd_weight 0 or kd_steps 0) with a teacher: the teacher would be loaded and never run, so
    say so and train without it (plain training). With --salt_ds the KD-stage data still needs it."""
    if not args.teacher_model_name_or_path or data_args.salt_ds:
        return
    off = [f"--{name} 0" for name in ("kd_weight", "kd_steps") if getattr(args, name) == 0]
    if off:
        warnings.warn(
            f"{' and '.join(off)} turn KD off, so the teacher {args.teacher_model_name_or_path!r} would never be "
            "used: it is not loaded, and this run is plain training.",
            stacklevel=2,
        )
        args.teacher_model_name_or_path = None


def _salt_ds_pool(data_args: DataArguments, args: PretrainArguments, tokenizer):
    """Load the scored dataset and pick the KD-stage pool (n_KD x global batch blocks)."""
    from datasets import load_from_disk

    from hf_salt.cli.score import SCORED_WITH
    from hf_salt.salt_ds import select

    if not Path(data_args.salt_ds).is_dir():
        raise FileNotFoundError(
            f"--salt_ds {data_args.salt_ds!r} is not a folder written by `hf-salt score`."
        )
    check_scored_tokenizer(data_args.salt_ds, tokenizer)
    vocab_size = len(tokenizer)
    with naming_corrupt_files(data_args.salt_ds, "--salt_ds"):
        scored = load_from_disk(data_args.salt_ds)
        record = Path(data_args.salt_ds) / SCORED_WITH  # how it was scored (top-k, statistic): for the card
        if record.is_file():
            scored.salt_ds_scoring = json.loads(record.read_text())
        first = len(scored[0]["input_ids"]) if len(scored) else None  # reads the data, not just the header
    if first is not None and first != data_args.block_size:
        raise ValueError(
            f"The scored dataset has blocks of {len(scored[0]['input_ids'])} tokens but --block_size is "
            f"{data_args.block_size}; score with the same block size."
        )
    kd_steps = resolve_kd_steps(args.kd_steps, args.max_steps)
    global_batch = args.per_device_train_batch_size * args.gradient_accumulation_steps * args.world_size
    band = tuple(data_args.salt_ds_band) if data_args.salt_ds_band else None
    pool = select(
        scored,
        kd_steps=kd_steps,
        global_batch_size=global_batch,
        band=band,
        statistic=data_args.salt_ds_statistic,
        seed=args.seed,
        vocab_size=vocab_size,
    )
    print(f"SALT_DS: {len(pool)} of {len(scored)} scored blocks feed the {kd_steps} KD steps.")
    return pool


def run(model_args: ModelArguments, data_args: DataArguments, training_args: PretrainArguments) -> int:
    check_inputs(model_args, data_args, training_args)
    _drop_unused_teacher(data_args, training_args)
    resume = resolve_resume(training_args.resume_from_checkpoint, training_args.output_dir)
    check_fresh_start(training_args.output_dir, resume, training_args.overwrite_output_dir)
    push = take_push_request(training_args)  # uploaded once, after the model folder is saved
    tokenizer = load_tokenizer(model_args.tokenizer)
    model = load_model(model_args.model, vocab_size=len(tokenizer), seed=training_args.seed, causal=True)
    check_block_size(data_args.block_size, model.config)
    corpus = load_corpus(data_args.corpus)
    pool = _salt_ds_pool(data_args, training_args, tokenizer) if data_args.salt_ds else None
    from hf_salt.data.corpora import describe_split  # names a split's files when it is too short to pack

    train = pack_dataset(
        corpus["train"], tokenizer, data_args.block_size, name=describe_split(data_args.corpus, "train")
    )
    evaluation = pack_dataset(
        corpus["validation"],
        tokenizer,
        data_args.block_size,
        name=describe_split(data_args.corpus, "validation"),
    )
    if data_args.max_train_blocks:
        train = train.select(range(min(len(train), data_args.max_train_blocks)))
    if data_args.max_eval_blocks:
        evaluation = evaluation.select(range(min(len(evaluation), data_args.max_eval_blocks)))
    method = (
        "SALT_DS" if data_args.salt_ds else "SALT" if training_args.teacher_model_name_or_path else "plain"
    )
    print(
        f"Training {model_args.model} ({model.num_parameters() / 1e6:.2f}M parameters, {method}) on "
        f"{data_args.corpus}: {len(train)} blocks of {data_args.block_size} tokens."
    )
    if not torch.cuda.is_available() or training_args.use_cpu:
        training_args.dataloader_pin_memory = (
            False  # pinning needs an accelerator; torch warns on every loader
        )
    kwargs = dict(
        model=model,
        args=training_args,
        train_dataset=train,
        eval_dataset=evaluation,
        data_collator=default_data_collator,
        processing_class=tokenizer,
    )
    if training_args.teacher_model_name_or_path:
        from hf_salt.salt.trainer import SALTTrainer

        trainer: Trainer = SALTTrainer(**kwargs, salt_ds_pool=pool)
    else:
        trainer = with_grown_lr(AtomicCheckpointTrainer)(**kwargs)  # a grown student: its LR scales
    # what decides the result besides the training arguments: checked against the checkpoint on resume
    trainer.run_settings = {**asdict(model_args), **asdict(data_args)}
    trainer.run_settings.pop("max_eval_blocks")
    trainer.allow_changed_settings = training_args.allow_changed_settings
    trainer.train(resume_from_checkpoint=resume)
    metrics = trainer.evaluate()
    ppl = math.exp(min(metrics["eval_loss"], 50.0))
    trainer.log_metrics("eval", {**metrics, "perplexity": ppl})
    if training_args.teacher_model_name_or_path:
        trainer.create_model_card(  # output_dir/README.md, copied into the model folder below
            model_name=Path(training_args.output_dir).name,
            model_path=str(Path(training_args.output_dir) / "model"),
            extra_info={"dataset": data_args.corpus},
        )
    if trainer.is_world_process_zero():
        out = Path(training_args.output_dir) / "model"
        with atomic_directory(out) as tmp:
            trainer.model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
            card = Path(training_args.output_dir) / "README.md"
            if card.exists():
                shutil.copy(card, tmp / "README.md")
    # output_dir/eval_results.json and all_results.json, beside model/: written last, as they mark the run finished
    trainer.save_metrics("eval", {**metrics, "perplexity": ppl})
    if trainer.is_world_process_zero():
        print(f"validation loss {metrics['eval_loss']:.4f}  perplexity {ppl:.2f}  model saved to {out}")
        if push:
            return push_cli_output(training_args, out, "hf-salt pretrain")
    return 0


COMMAND = Command([ModelArguments, DataArguments, PretrainArguments], run, description=__doc__)

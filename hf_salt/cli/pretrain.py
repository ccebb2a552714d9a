"""`hf-salt pretrain`: train one causal LM on a corpus and report validation loss and perplexity.

Every `TrainingArguments` flag works (`--learning_rate`, `--bf16`, `--report_to tensorboard`, ...), and so
does `--config file.yaml`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from transformers import (
    AutoModelForCausalLM,
    PreTrainedModel,
    Trainer,
    TrainingArguments,
    default_data_collator,
)

from hf_salt.cli.parser import Command
from hf_salt.data import check_block_size, load_corpus, load_tokenizer, pack_dataset
from hf_salt.io import save_pretrained_atomic
from hf_salt.zoo import PRESETS, build_model, count_parameters


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


@dataclass
class PretrainArguments(TrainingArguments):
    """`TrainingArguments` with defaults that train a tiny model on the CPU in under a minute."""

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


def load_model(name_or_path: str, vocab_size: int, seed: int) -> PreTrainedModel:
    """A zoo preset (random init) or a local folder; refuses a model smaller than the tokenizer's vocabulary."""
    if name_or_path in PRESETS:
        return build_model(name_or_path, vocab_size=vocab_size, seed=seed)
    if not Path(name_or_path).is_dir():
        raise ValueError(
            f"--model {name_or_path!r} is neither a zoo preset ({', '.join(PRESETS)}) nor a local model folder."
        )
    model = AutoModelForCausalLM.from_pretrained(name_or_path, local_files_only=True)
    if model.get_input_embeddings().num_embeddings < vocab_size:
        raise ValueError(
            f"The model at {name_or_path!r} has {model.get_input_embeddings().num_embeddings} embeddings but the "
            f"tokenizer has {vocab_size} tokens: use the model's own tokenizer (--tokenizer)."
        )
    return model


def run(model_args: ModelArguments, data_args: DataArguments, training_args: PretrainArguments) -> int:
    tokenizer = load_tokenizer(model_args.tokenizer)
    model = load_model(model_args.model, len(tokenizer), training_args.seed)
    check_block_size(data_args.block_size, model.config)
    corpus = load_corpus(data_args.corpus)
    train = pack_dataset(corpus["train"], tokenizer, data_args.block_size)
    evaluation = pack_dataset(corpus["validation"], tokenizer, data_args.block_size)
    if data_args.max_train_blocks:
        train = train.select(range(min(len(train), data_args.max_train_blocks)))
    if data_args.max_eval_blocks:
        evaluation = evaluation.select(range(min(len(evaluation), data_args.max_eval_blocks)))
    print(
        f"Training {model_args.model} ({count_parameters(model) / 1e6:.2f}M parameters) on {data_args.corpus}: "
        f"{len(train)} blocks of {data_args.block_size} tokens."
    )
    trainer = Trainer(
        model=model,
        args=training_args,
        train_dataset=train,
        eval_dataset=evaluation,
        data_collator=default_data_collator,
        processing_class=tokenizer,
    )
    trainer.train()
    metrics = trainer.evaluate()
    ppl = math.exp(min(metrics["eval_loss"], 50.0))
    trainer.log_metrics("eval", {**metrics, "perplexity": ppl})
    if trainer.is_world_process_zero():
        out = save_pretrained_atomic(Path(training_args.output_dir) / "model", trainer.model, tokenizer)
        print(f"validation loss {metrics['eval_loss']:.4f}  perplexity {ppl:.2f}  model saved to {out}")
    return 0


COMMAND = Command([ModelArguments, DataArguments, PretrainArguments], run, description=__doc__)

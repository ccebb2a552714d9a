"""A short SALT pre-training run that works alone or under `accelerate launch` (DDP, FSDP, DeepSpeed).

    # one process
    python examples/salt_pretrain.py --output_dir outputs/salt --max_steps 200
    # 8 GPUs, DeepSpeed ZeRO-3 (student sharded, small teacher replicated)
    accelerate launch --config_file examples/accelerate/deepspeed_zero3.yaml examples/salt_pretrain.py \
        --output_dir outputs/salt --teacher outputs/teacher/model --student llama-160m
    # 2 CPU processes (gloo)
    accelerate launch --config_file examples/accelerate/ddp_cpu.yaml examples/salt_pretrain.py --use_cpu true ...

Every `SALTConfig` / `TrainingArguments` flag works (`--kd_steps`, `--kd_weight`, `--report_to tensorboard`,
`--push_to_hub`, ...), and so does `--config run.yaml` (flags override the file).

The teacher should be a *trained* small model (a local folder, e.g. from `hf-salt pretrain`). A zoo preset
name gives a randomly initialised teacher: fine for smoke tests and for checking a launch set-up, useless
for results.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import PreTrainedModel, default_data_collator

from hf_salt import zoo
from hf_salt.cli.parser import parse_args
from hf_salt.data import check_block_size, load_corpus, load_tokenizer, pack_dataset
from hf_salt.salt.config import SALTConfig
from hf_salt.salt.trainer import SALTTrainer
from hf_salt.zoo import PRESETS

logger = logging.getLogger("salt_pretrain")


@dataclass
class ScriptArguments:
    student: str = field(
        default="llama-tiny-2x",
        metadata={"help": "The student: a zoo preset (random init) or a local model folder."},
    )
    teacher: str = field(
        default="llama-tiny",
        metadata={
            "help": "The small teacher: a local folder of a trained model, or a zoo preset (random: smoke tests)."
        },
    )
    tokenizer: str | None = field(
        default=None, metadata={"help": "Tokenizer folder; default: the shipped one."}
    )
    corpus: str = field(
        default="wikitext-2",
        metadata={"help": "Embedded corpus name, text/json/parquet files or a datasets folder."},
    )
    block_size: int = field(default=128, metadata={"help": "Tokens per packed training block."})
    max_train_texts: int | None = field(
        default=None, metadata={"help": "Pack only the first N training texts (quick runs and tests)."}
    )
    max_train_blocks: int | None = field(default=None, metadata={"help": "Train on at most N packed blocks."})
    max_eval_blocks: int | None = field(
        default=64,
        metadata={"help": "Evaluate on at most N validation blocks; 0 skips the final evaluation."},
    )


def load_model(name_or_path: str, vocab_size: int, seed: int, role: str) -> PreTrainedModel:
    """A zoo preset (random init, reproducible from `seed`) or a local folder (hf_salt.zoo.load_model)."""
    if role == "teacher" and name_or_path in PRESETS:
        logger.warning(
            "The teacher %r is a randomly initialised preset: use it for smoke tests only.", name_or_path
        )
    return zoo.load_model(name_or_path, vocab_size=vocab_size, seed=seed, flag=f"--{role}")


@contextlib.contextmanager
def full_copy():
    """Build a model as full tensors even under ZeRO-3, where transformers would partition it (zero.Init).

    A replicated teacher is never wrapped by DeepSpeed, so nothing would gather partitioned weights for it.
    """
    from transformers.integrations import deepspeed as hf_ds

    ref = hf_ds._hf_deepspeed_config_weak_ref
    hf_ds.unset_hf_deepspeed_config()
    try:
        yield
    finally:
        hf_ds._hf_deepspeed_config_weak_ref = ref


def check_launch(args: SALTConfig) -> None:
    """Several processes on a machine without CUDA must say --use_cpu, or each would train on its own."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    deepspeed = os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true"
    backend = getattr(args, "ddp_backend", None)
    if world > 1 and not torch.cuda.is_available() and not args.use_cpu and not deepspeed and backend is None:
        raise ValueError(
            f"{world} processes were launched on a machine without CUDA: pass --use_cpu true so that they train "
            "together over gloo (otherwise every process would train a separate model)."
        )


def launch_info(trainer: SALTTrainer) -> dict[str, object]:
    """How the run is laid out: processes, DeepSpeed stage, and whether student and teacher are sharded."""
    state = trainer.accelerator.state
    plugin = getattr(state, "deepspeed_plugin", None)
    zero_stage = (
        plugin.deepspeed_config.get("zero_optimization", {}).get("stage") if plugin is not None else None
    )

    def partitioned(model: torch.nn.Module) -> bool:  # ZeRO-3 keeps only a shard in each parameter
        return any(
            getattr(p, "ds_tensor", None) is not None and p.ds_tensor.numel() < p.ds_numel
            for p in model.parameters()
        )

    teacher = trainer.teacher_model
    return {
        "distributed_type": str(getattr(state.distributed_type, "value", state.distributed_type)),
        "num_processes": state.num_processes,
        "zero_stage": zero_stage,
        "student_partitioned": partitioned(trainer.model),
        "teacher_partitioned": partitioned(getattr(teacher, "module", teacher)),
        "teacher_is_deepspeed_engine": type(teacher).__name__ == "DeepSpeedEngine",
    }


def main(argv: list[str] | None = None) -> dict[str, float]:
    script_args, args = parse_args([ScriptArguments, SALTConfig], sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO if args.should_log else logging.WARNING)
    check_launch(args)

    tokenizer = load_tokenizer(script_args.tokenizer)
    with args.main_process_first(desc="packing the corpus"):  # rank 0 fills the datasets cache first
        corpus = load_corpus(script_args.corpus)
        texts = corpus["train"]
        if script_args.max_train_texts:
            texts = texts.select(range(min(len(texts), script_args.max_train_texts)))
        train = pack_dataset(texts, tokenizer, script_args.block_size)
        evaluation = None
        if script_args.max_eval_blocks:
            evaluation = pack_dataset(corpus["validation"], tokenizer, script_args.block_size)
            evaluation = evaluation.select(range(min(len(evaluation), script_args.max_eval_blocks)))
    if script_args.max_train_blocks:
        train = train.select(range(min(len(train), script_args.max_train_blocks)))

    student = load_model(script_args.student, len(tokenizer), args.seed, "student")
    replicate = args.teacher_sharding == "replicate"
    with full_copy() if replicate else contextlib.nullcontext():
        teacher = load_model(script_args.teacher, len(tokenizer), args.seed + 1, "teacher")
    check_block_size(script_args.block_size, student.config)

    trainer = SALTTrainer(
        model=student,
        args=args,
        teacher_model=teacher,
        train_dataset=train,
        eval_dataset=evaluation,
        data_collator=default_data_collator,
        processing_class=tokenizer,
    )
    info = launch_info(trainer)
    logger.info("SALT launch: %s", info)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and info["distributed_type"] == "NO":
        raise ValueError(
            "Several processes were launched but accelerate set up no distributed training (FSDP needs CUDA). "
            "On CPU use examples/accelerate/ddp_cpu.yaml with --use_cpu true, or a DeepSpeed config."
        )
    trainer.train()
    metrics: dict[str, float] = {}
    if evaluation is not None:
        metrics = trainer.evaluate()
        metrics["eval_perplexity"] = math.exp(min(metrics["eval_loss"], 50.0))
        trainer.log_metrics("eval", metrics)
    trainer.save_model()
    trainer.save_state()  # trainer_state.json with the loss curve (log_history)
    if trainer.is_world_process_zero():
        (Path(args.output_dir) / "launch_info.json").write_text(json.dumps(info, indent=2))
    if args.push_to_hub:
        trainer.push_to_hub(dataset_name=script_args.corpus)
    else:
        trainer.create_model_card(dataset_name=script_args.corpus)
    return metrics


if __name__ == "__main__":
    main()

"""Fine-tune a SALT-trained student with LoRA on the shipped distilling step-by-step data (CQA).

The model SALT produced is an ordinary causal LM, so the usual PEFT recipe applies: `StepByStepTrainer`
takes `peft_config=` like TRL's trainers, trains only the adapters (label task + rationale task), and
saves an adapter folder with an hf-salt model card.

    hf-salt demo                                  # trains the demo's SALT student into hf-salt-demo/salt
    python examples/lora_finetune_step_by_step.py --model hf-salt-demo/salt --output_dir outputs/lora_cqa
    # several GPUs: accelerate launch --config_file examples/accelerate/ddp.yaml examples/lora_finetune_step_by_step.py ...

Every `StepByStepConfig` flag works (`--rationale_weight`, `--max_steps`, `--push_to_hub`, ...), and so
does `--config run.yaml`. `--merge true` also writes the merged full model (`<output_dir>/merged`).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

from peft import LoraConfig
from transformers import AutoModelForCausalLM, PreTrainedModel

from hf_salt.cli.parser import parse_args
from hf_salt.data import load_tokenizer
from hf_salt.step_by_step.config import StepByStepConfig
from hf_salt.step_by_step.data import load_step_by_step
from hf_salt.step_by_step.trainer import StepByStepTrainer
from hf_salt.zoo import PRESETS, build_model


@dataclass
class ScriptArguments:
    model: str = field(
        default="hf-salt-demo/salt",
        metadata={
            "help": "The SALT student: a local model folder (default: where `hf-salt demo` saves it) or a preset."
        },
    )
    dataset: str = field(
        default="cqa", metadata={"help": "Shipped step-by-step data (cqa, svamp) or a local file."}
    )
    max_train_samples: int | None = field(default=None, metadata={"help": "Train on at most N rows."})
    max_eval_samples: int | None = field(
        default=200, metadata={"help": "Evaluate on at most N validation rows."}
    )
    lora_r: int = field(default=16, metadata={"help": "LoRA rank."})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA scaling numerator (scale = alpha / r)."})
    lora_dropout: float = field(default=0.05, metadata={"help": "Dropout on the LoRA input."})
    lora_target_modules: str = field(
        default="all-linear",
        metadata={
            "help": "all-linear (every linear layer but the output layer) or a comma list, e.g. q_proj,v_proj."
        },
    )
    merge: bool = field(default=False, metadata={"help": "Also save the adapter merged into the model."})


@dataclass
class LoRAStepByStepConfig(StepByStepConfig):
    """`StepByStepConfig` with defaults for a LoRA run of a small causal LM on a CPU."""

    output_dir: str | None = field(
        default="outputs/lora_step_by_step", metadata={"help": "Where the adapter goes."}
    )
    max_steps: int = field(default=200, metadata={"help": "Total optimizer steps."})
    per_device_train_batch_size: int = field(default=16, metadata={"help": "Training batch size per device."})
    learning_rate: float = field(default=1e-3, metadata={"help": "Peak learning rate of the adapters."})
    max_source_length: int = field(default=256, metadata={"help": "Max tokens of a prefixed input."})
    max_rationale_length: int = field(default=128, metadata={"help": "Max tokens of a rationale target."})
    logging_steps: float = field(default=25, metadata={"help": "Log every N steps."})
    save_strategy: str = field(default="no", metadata={"help": "Checkpoint strategy (no, steps, epoch)."})
    report_to: str | None = field(
        default="none", metadata={"help": "Trackers (none, tensorboard, wandb, ...)."}
    )


def load_student(name_or_path: str, vocab_size: int, seed: int) -> PreTrainedModel:
    if Path(name_or_path).is_dir():
        return AutoModelForCausalLM.from_pretrained(name_or_path, local_files_only=True)
    if name_or_path in PRESETS:  # random weights: smoke tests only
        return build_model(name_or_path, vocab_size=vocab_size, seed=seed)
    raise ValueError(
        f"--model {name_or_path!r} is not a local folder: run `hf-salt demo` first (it saves the SALT student in "
        f"hf-salt-demo/salt), or pass a model folder or a zoo preset ({', '.join(PRESETS)})."
    )


def main(argv: list[str] | None = None) -> dict[str, float]:
    script, args = parse_args([ScriptArguments, LoRAStepByStepConfig], sys.argv[1:] if argv is None else argv)
    data = load_step_by_step(script.dataset)
    train, evaluation = data["train"], data["validation"]
    if script.max_train_samples:
        train = train.select(range(min(len(train), script.max_train_samples)))
    if script.max_eval_samples:
        evaluation = evaluation.select(range(min(len(evaluation), script.max_eval_samples)))

    # the demo saves its tokenizer next to the model; a preset uses the shipped one
    has_tokenizer = (Path(script.model) / "tokenizer_config.json").is_file()
    tokenizer = load_tokenizer(script.model if has_tokenizer else None)
    model = load_student(script.model, len(tokenizer), args.seed)
    targets = script.lora_target_modules
    peft_config = LoraConfig(
        task_type="CAUSAL_LM",
        r=script.lora_r,
        lora_alpha=script.lora_alpha,
        lora_dropout=script.lora_dropout,
        target_modules=targets
        if targets == "all-linear"
        else [t.strip() for t in targets.split(",") if t.strip()],
    )
    trainer = StepByStepTrainer(
        model,
        args,
        train_dataset=train,
        eval_dataset=evaluation,
        processing_class=tokenizer,
        peft_config=peft_config,
    )
    trainer.model.print_trainable_parameters()
    trainer.train()
    metrics = trainer.evaluate()
    trainer.log_metrics("eval", metrics)
    trainer.save_model()  # the adapter (adapter_config.json + adapter_model.safetensors) and the tokenizer
    trainer.save_state()
    if args.push_to_hub:
        trainer.push_to_hub(dataset_name=script.dataset)
    else:
        trainer.create_model_card(dataset_name=script.dataset)
    if script.merge and trainer.is_world_process_zero():
        merged = trainer.model.merge_and_unload()
        merged.save_pretrained(Path(args.output_dir) / "merged")
        tokenizer.save_pretrained(Path(args.output_dir) / "merged")
    return metrics


if __name__ == "__main__":
    main()

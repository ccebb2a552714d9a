"""`hf-salt distill-step-by-step`: train a small task model on labels and LLM rationales.

Defaults: the shipped CQA data (PaLM-540B rationales) and the `t5-small` zoo preset, a CPU-sized run.
Every `StepByStepConfig` / `Seq2SeqTrainingArguments` flag works, and so does `--config file.yaml`.
`--rationale_weight 0` gives standard fine-tuning; `--use_llm_labels` the task-distillation baseline.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

from hf_salt.checkpoints import ALLOW_CHANGED_HELP, RESUME_HELP, check_fresh_start, resolve_resume
from hf_salt.checks import check_no_finished_run, check_writable
from hf_salt.cli.parser import Command
from hf_salt.data import load_tokenizer
from hf_salt.hub import push_cli_output, take_push_request
from hf_salt.io import atomic_directory, write_text_atomic
from hf_salt.step_by_step.config import StepByStepConfig
from hf_salt.step_by_step.data import SHIPPED_DATASETS, load_step_by_step
from hf_salt.step_by_step.trainer import StepByStepTrainer
from hf_salt.zoo import load_model


@dataclass
class StepByStepScriptArguments:
    dataset: str = field(
        default="cqa",
        metadata={
            "help": f"Shipped data ({', '.join(SHIPPED_DATASETS)}), a folder in the official release format "
            "(esnli, anli1, ...), or a json/csv/parquet file with columns input, label, rationale, llm_label."
        },
    )
    model: str = field(
        default="t5-small", metadata={"help": "A zoo preset (t5-* or a causal LM) or a local model folder."}
    )
    tokenizer: str | None = field(
        default=None, metadata={"help": "Local tokenizer folder; default: the shipped one."}
    )
    train_fraction: float = field(
        default=1.0, metadata={"help": "Seeded random share of train to use (official --subsample)."}
    )
    max_eval_samples: int | None = field(
        default=500, metadata={"help": "Evaluate on at most this many validation rows."}
    )
    max_test_samples: int | None = field(
        default=None,
        metadata={
            "help": "Report the test split (once, after training) on at most this many rows; 0 skips it."
        },
    )
    train_split: str = field(
        default="train", metadata={"help": "Official split used for training (valid for e-SNLI/ANLI)."}
    )

    def __post_init__(self) -> None:
        if not 0 < self.train_fraction <= 1:
            raise ValueError(f"train_fraction must be in (0, 1], got {self.train_fraction}.")


@dataclass
class StepByStepCLIConfig(StepByStepConfig):
    """`StepByStepConfig` with defaults that finish on a CPU in a few minutes."""

    output_dir: str | None = field(default="outputs/step_by_step", metadata={"help": "Where the model goes."})
    max_steps: int = field(default=200, metadata={"help": "Total optimizer steps."})
    per_device_train_batch_size: int = field(default=16, metadata={"help": "Training batch size per device."})
    per_device_eval_batch_size: int = field(
        default=64, metadata={"help": "Evaluation batch size per device."}
    )
    learning_rate: float = field(
        default=1e-3, metadata={"help": "Peak learning rate (AdamW; official 5e-5 for pre-trained T5)."}
    )
    max_source_length: int = field(default=256, metadata={"help": "Max tokens of a prefixed input."})
    max_rationale_length: int = field(default=128, metadata={"help": "Max tokens of a rationale target."})
    logging_steps: float = field(default=25, metadata={"help": "Log every N steps."})
    save_strategy: str = field(default="no", metadata={"help": "Checkpoint strategy (no, steps, epoch)."})
    resume_from_checkpoint: str | None = field(default=None, metadata={"help": RESUME_HELP})
    report_to: str | None = field(
        default="none", metadata={"help": "Trackers to report to (none, tensorboard, ...)."}
    )
    overwrite_output_dir: bool = field(
        default=False,
        metadata={"help": "Allow an output_dir that already holds a finished run (its model is replaced)."},
    )
    allow_changed_settings: bool = field(default=False, metadata={"help": ALLOW_CHANGED_HELP})


def run(script: StepByStepScriptArguments, args: StepByStepCLIConfig) -> int:
    check_writable(args.output_dir, "--output_dir")
    check_no_finished_run(args.output_dir, ("model", "all_results.json"), args.overwrite_output_dir)
    resume = resolve_resume(args.resume_from_checkpoint, args.output_dir)
    check_fresh_start(args.output_dir, resume, args.overwrite_output_dir)
    push = take_push_request(args)  # uploaded once, after the model folder is saved
    data = load_step_by_step(script.dataset, train_split=script.train_split)
    if Path(script.dataset).name.lower() == "svamp" and args.label_metric == "exact_match":
        args.label_metric = "equation"  # SVAMP labels are equations: compare them by value
        print("SVAMP: scoring equations by value (--label_metric equation).")
    train = data["train"]
    if script.train_fraction < 1:
        train = train.train_test_split(test_size=1 - script.train_fraction, seed=args.seed)["train"]
    evaluation = data["validation"]
    if script.max_eval_samples:
        evaluation = evaluation.select(range(min(len(evaluation), script.max_eval_samples)))
    tokenizer = load_tokenizer(script.tokenizer)
    model = load_model(script.model, vocab_size=len(tokenizer), seed=args.seed)
    trainer = StepByStepTrainer(
        model, args, train_dataset=train, eval_dataset=evaluation, processing_class=tokenizer
    )
    # what decides the result besides the training arguments: checked against the checkpoint on resume
    trainer.run_settings = {
        k: v for k, v in asdict(script).items() if k not in ("max_eval_samples", "max_test_samples")
    }
    trainer.allow_changed_settings = args.allow_changed_settings
    trainer.train(resume_from_checkpoint=resume)
    metrics = trainer.evaluate()
    trainer.log_metrics("eval", metrics)
    test = data.get("test")
    if script.max_test_samples is not None and test is not None:
        test = test.select(range(min(len(test), script.max_test_samples)))
    if test is not None and len(test):  # reported once, after training: selection uses validation only
        test_metrics = trainer.evaluate(test, metric_key_prefix="test")
        trainer.log_metrics("test", test_metrics)
    out = Path(args.output_dir) / "model"
    card = _write_card(trainer, script, out)
    if trainer.is_world_process_zero():
        with atomic_directory(out) as tmp:  # the finished-run check came first
            trainer.model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
            write_text_atomic(tmp / "README.md", card)
    # eval/test_results.json and all_results.json mark the run finished: written after model/
    trainer.save_metrics("eval", metrics)
    if test is not None and len(test):
        trainer.save_metrics("test", test_metrics)
        metrics.update(test_metrics)
    if trainer.is_world_process_zero():
        summary = f"validation label accuracy {metrics.get('eval_accuracy', float('nan')):.4f}"
        if "test_accuracy" in metrics:
            summary += f", test {metrics['test_accuracy']:.4f}"
        print(f"{summary}; model saved to {out}, metrics in {Path(args.output_dir) / 'all_results.json'}")
        if push:
            return push_cli_output(args, out, "hf-salt distill-step-by-step")
    return 0


def _write_card(trainer: StepByStepTrainer, script: StepByStepScriptArguments, folder: Path) -> str:
    """The hf-salt card (output_dir/README.md, returned for the model folder), with the task data and where its
    rationales come from: the shipped sets carry the paper's PaLM-540B rationales, other data its own column."""
    shipped = script.dataset.lower() in SHIPPED_DATASETS and not Path(script.dataset).exists()
    source = "PaLM-540B (the paper's released rationales)" if shipped else "the data's `rationale` column"
    return trainer.create_model_card(
        model_name=Path(trainer.args.output_dir).name,
        extra_info={"dataset": script.dataset, "rationale_source": source},
        model_path=str(folder),
    )


COMMAND = Command([StepByStepScriptArguments, StepByStepCLIConfig], run, description=__doc__)

"""`StepByStepConfig`: training arguments for distilling step-by-step (Hsieh et al. 2023, arXiv 2305.02301)."""

from __future__ import annotations

from dataclasses import dataclass, field

from transformers import Seq2SeqTrainingArguments

from hf_salt.config_docs import document_fields

LABEL_METRICS = ("exact_match", "equation")


@document_fields(
    {
        "The two tasks": (
            "rationale_weight",
            "label_prefix",
            "rationale_prefix",
            "use_llm_labels",
            "prompt_separator",
        ),
        "Lengths": ("max_source_length", "max_target_length", "max_rationale_length"),
        "Evaluation": ("label_metric", "predict_with_generate", "generation_max_length"),
        "Data columns": ("remove_unused_columns",),
    }
)
@dataclass
class StepByStepConfig(Seq2SeqTrainingArguments):
    """Seq2SeqTrainingArguments plus the two-task (label + rationale) options.

    Defaults follow the official code: prefixes `"predict: "` / `"explain: "`, max input 1024 tokens,
    targets 256 tokens, generation length 64, generation-based evaluation. The loss is
    `L_label + rationale_weight * L_rationale` (the official `alpha=0.5` is `rationale_weight=1` up to a
    factor of 2). A dataclass subclass so `HfArgumentParser` and `--config` files read it.
    """

    rationale_weight: float = field(
        default=1.0,
        metadata={"help": "Lambda: weight of the rationale-generation loss (0 gives standard fine-tuning)."},
    )
    label_prefix: str = field(
        default="predict: ",
        metadata={
            "help": "Task prefix of the label-prediction view. Kept with rationale_weight 0 too, so the standard "
            "fine-tuning baseline differs from step-by-step only by the rationale task; the official "
            "standard mode uses no prefix: pass an empty string for that."
        },
    )
    rationale_prefix: str = field(
        default="explain: ", metadata={"help": "Task prefix of the rationale-generation view."}
    )
    max_source_length: int = field(
        default=1024,
        metadata={"help": "Max tokens of a (prefixed) input; longer inputs are truncated and counted."},
    )
    max_target_length: int = field(default=256, metadata={"help": "Max tokens of a label target."})
    max_rationale_length: int = field(default=256, metadata={"help": "Max tokens of a rationale target."})
    use_llm_labels: bool = field(
        default=False,
        metadata={
            "help": "Train on the LLM's labels (column llm_label) instead of the gold labels: the task "
            "distillation baseline, or data with no gold labels. Evaluation labels stay gold."
        },
    )
    prompt_separator: str = field(
        default="\n",
        metadata={
            "help": "Causal LMs only: text between the prompt and the target (the model answers after it)."
        },
    )
    label_metric: str = field(
        default="exact_match",
        metadata={
            "help": "How generated labels are scored: exact_match (string equality, official) or equation "
            "(SVAMP: equations compared by value with a safe arithmetic evaluator)."
        },
    )
    predict_with_generate: bool = field(
        default=True, metadata={"help": "Generate labels at evaluation to compute label accuracy."}
    )
    generation_max_length: int | None = field(
        default=64, metadata={"help": "Max new tokens generated for a label at evaluation (official: 64)."}
    )
    remove_unused_columns: bool = field(
        default=False,
        metadata={
            "help": "Kept False: the trainer needs the raw input, label, rationale and llm_label columns."
        },
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.rationale_weight < 0:
            raise ValueError(f"rationale_weight must be >= 0, got {self.rationale_weight}.")
        for name in ("max_source_length", "max_target_length", "max_rationale_length"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be a positive number of tokens, got {getattr(self, name)}.")
        if self.label_prefix == self.rationale_prefix:
            raise ValueError(
                "label_prefix and rationale_prefix must differ, otherwise the model cannot tell the tasks apart."
            )
        if self.label_metric not in LABEL_METRICS:
            raise ValueError(f"label_metric must be one of {LABEL_METRICS}, got {self.label_metric!r}.")
        if self.remove_unused_columns:
            raise ValueError(
                "remove_unused_columns must be False for StepByStepTrainer (it tokenizes the raw text columns)."
            )
        if self.generation_max_length is not None and self.generation_max_length < 1:
            raise ValueError(f"generation_max_length must be positive, got {self.generation_max_length}.")

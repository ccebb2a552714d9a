"""`hf-salt generate-rationales`: few-shot chain-of-thought rationales and labels from a local causal LM.

Reads rows with an `input` column (json/jsonl/csv/parquet), prompts the LLM with `--prompt_file` (the
few-shot exemplars) + `Q: <input>\\nA:`, and appends parsed rows to `--output` (JSON Lines). Rerun the
same command to resume; rows that do not parse are kept with `parse_ok=false`. The output file loads
with `hf_salt.data.load_step_by_step(output)` for `hf-salt distill-step-by-step --dataset output`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from datasets import load_dataset
from transformers import AutoTokenizer

from hf_salt.checks import check_writable_file, naming_unreadable_data
from hf_salt.cli.parser import Command
from hf_salt.step_by_step.rationales import (
    DEFAULT_MARKER,
    DEFAULT_TEMPLATE,
    check_input_template,
    generate_rationales,
)
from hf_salt.zoo import DTYPE_CHOICES, load_model, parse_dtype

_BUILDERS = {".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet"}


@dataclass
class RationaleArguments:
    model: str = field(
        metadata={"help": "Local folder of the causal LM that writes the rationales (the LLM)."}
    )
    data: str = field(metadata={"help": "json/jsonl/csv/parquet file whose rows have an input column."})
    output: str = field(metadata={"help": "JSON Lines output, written incrementally; rerun to resume."})
    prompt_file: str | None = field(default=None, metadata={"help": "Text file with the few-shot exemplars."})
    input_template: str = field(
        default=DEFAULT_TEMPLATE, metadata={"help": "How one input is shown to the LLM."}
    )
    input_column: str = field(default="input", metadata={"help": "Column with the inputs."})
    answer_marker: str = field(
        default=DEFAULT_MARKER, metadata={"help": "Text before the label in the output."}
    )
    parser: str | None = field(
        default=None,
        metadata={"help": "Official parser (cqa, svamp, esnli, anli1) instead of answer_marker."},
    )
    batch_size: int = field(default=8, metadata={"help": "Prompts per generate call."})
    max_new_tokens: int = field(default=128, metadata={"help": "Max tokens generated per row."})
    max_rows: int | None = field(default=None, metadata={"help": "Only the first N rows (smoke tests)."})
    dtype: str = field(
        default="auto",
        metadata={"help": "Model dtype: auto, float32, bfloat16 or float16.", "choices": list(DTYPE_CHOICES)},
    )
    device: str | None = field(
        default=None, metadata={"help": "cuda, cpu, ...; default: cuda when available."}
    )

    def __post_init__(self) -> None:
        if Path(self.data).suffix not in _BUILDERS:
            raise ValueError(f"--data must be one of {sorted(_BUILDERS)} files, got {self.data!r}.")
        parse_dtype(self.dtype, "--dtype")
        if not Path(self.model).is_dir():
            raise FileNotFoundError(
                f"--model {self.model!r} is not a local model folder (it does not exist)."
            )
        if not Path(self.data).is_file():
            raise FileNotFoundError(f"--data {self.data!r} does not exist.")
        check_writable_file(self.output, "--output")
        check_input_template(self.input_template, "--input_template")


def run(a: RationaleArguments) -> int:
    with naming_unreadable_data([a.data], "--data"):
        rows = load_dataset(_BUILDERS[Path(a.data).suffix], data_files=a.data, split="train")
    if a.max_rows:
        rows = rows.select(range(min(a.max_rows, len(rows))))
    prompt = ""
    if a.prompt_file:
        with naming_unreadable_data([a.prompt_file], "--prompt_file"):
            prompt = Path(a.prompt_file).read_text(encoding="utf-8")
    device = a.device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = parse_dtype(a.dtype, "--dtype")
    tokenizer = AutoTokenizer.from_pretrained(a.model, local_files_only=True)
    model = load_model(a.model, dtype=dtype, causal=True).to(device)
    result = generate_rationales(
        rows,
        model,
        tokenizer,
        a.output,
        few_shot_prompt=prompt,
        input_template=a.input_template,
        input_column=a.input_column,
        answer_marker=a.answer_marker,
        parser=a.parser,
        batch_size=a.batch_size,
        max_new_tokens=a.max_new_tokens,
    )
    failed = sum(1 for ok in result["parse_ok"] if not ok)
    print(f"{len(result)} rows in {a.output}; {failed} did not parse (kept, parse_ok=false).")
    return 0


COMMAND = Command([RationaleArguments], run, description=__doc__, output_option="output")

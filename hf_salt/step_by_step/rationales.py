"""Generate chain-of-thought rationales and labels for unlabeled data with any local HF causal LM.

This is step 1 of distilling step-by-step (Hsieh et al. 2023) for a user's own data: a few-shot CoT prompt
("Q: ...\nA: <rationale> So the answer is <label>.\n\n" exemplars) is continued by the LLM for every
input, and the continuation is parsed into `rationale` and `llm_label`.

Resumable and lossless: every finished batch is appended to a JSON Lines file (one row per line, flushed
and fsync'ed), rows already in the file are skipped on restart, and a torn last line from a crash is
dropped. Rows whose output does not parse are kept with `parse_ok=False` and their raw output.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from datasets import Dataset
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from hf_salt.step_by_step.data import PARSERS

logger = logging.getLogger(__name__)

DEFAULT_TEMPLATE = "Q: {input}\nA:"


def check_input_template(template: str, what: str = "input_template") -> None:
    """Refuse a template that `str.format(input=...)` cannot fill, naming the placeholder or the brace, before
    the LLM is loaded (it used to fail at the first batch with `KeyError: 'question'` or `IndexError`)."""
    import string

    fix = "Only {input} is filled in (each row's input); write a literal brace as {{ or }}."
    try:
        fields = [name for _, name, _, _ in string.Formatter().parse(template) if name is not None]
    except ValueError as err:  # a single { or }
        raise ValueError(f"{what} {template!r} has a stray brace ({err}). {fix}") from None
    other = sorted({name for name in fields if name != "input"})
    if other:
        shown = ", ".join("{" + name + "}" for name in other)
        raise ValueError(f"{what} {template!r} has placeholder(s) {shown} that nothing fills. {fix}")
    if "input" not in fields:
        raise ValueError(
            f"{what} {template!r} has no {{input}}: every row would get the same prompt. Put "
            "{input} where each row's input goes, e.g. 'Q: {input}\\nA:'."
        )


DEFAULT_MARKER = "So the answer is"
DEFAULT_STOPS = ("\nQ:", "\n\n")


def parse_continuation(
    text: str, answer_marker: str = DEFAULT_MARKER, stops: Sequence[str] = DEFAULT_STOPS
) -> tuple[str, str]:
    """Split a continuation into (rationale, label); ("", "") when the answer marker is missing.

    The text is cut at the first stop sequence (the LLM starts a made-up next exemplar), then split on
    the answer marker; the label loses a trailing period and a leading "(x)" choice letter.
    """
    for stop in stops:
        text = text.split(stop)[0]
    if answer_marker not in text:
        return "", ""
    rationale, label = text.split(answer_marker, 1)
    label = label.strip()
    if len(label) > 3 and label[0] == "(" and label[2] == ")":
        label = label[3:].strip()
    if label.endswith("."):
        label = label[:-1].rstrip()
    return rationale.strip(), label


def _read_done(path: Path) -> dict[int, dict[str, Any]]:
    """Rows already generated, by index; a torn final line (crash mid-write) is cut off the file."""
    done: dict[int, dict[str, Any]] = {}
    if not path.exists():
        return done
    good_bytes = 0
    with path.open("rb") as f:
        for raw in f:
            try:
                row = json.loads(raw)
                done[int(row["index"])] = row
            except (json.JSONDecodeError, KeyError, ValueError, TypeError):
                logger.warning("%s: dropping a torn or invalid line after %d good rows.", path, len(done))
                break
            good_bytes += len(raw)
    if good_bytes != path.stat().st_size:
        with path.open("r+b") as f:
            f.truncate(good_bytes)
    return done


def _check_same_inputs(
    done: dict[int, dict[str, Any]], rows: Sequence[dict[str, Any]], input_column: str, path: Path
) -> None:
    """A resume continues the same inputs: rows already in the output must be the rows at those indexes now,
    or the file would mix generations for two datasets."""
    differ = [
        i for i, row in done.items() if i < len(rows) and row.get(input_column) != rows[i].get(input_column)
    ]
    if differ:
        i = min(differ)
        raise ValueError(
            f"{path} holds rows generated from other inputs than these ({len(differ)} of {len(done)} differ; row {i}: "
            f"{done[i].get(input_column)!r} in the file, {rows[i].get(input_column)!r} now): it is the output of "
            "another --data. Choose another --output, or rerun with the data it was generated from."
        )
    beyond = sorted(i for i in done if i >= len(rows))
    if beyond:
        logger.warning(
            "%s holds %d rows beyond the %d inputs given (rows %d..%d); they are kept in the file but not returned.",
            path,
            len(beyond),
            len(rows),
            beyond[0],
            beyond[-1],
        )


def _append(path: Path, rows: Iterable[dict[str, Any]]) -> None:
    data = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    with path.open("a", encoding="utf-8") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


@torch.no_grad()
def generate_rationales(
    dataset: Dataset | Sequence[dict[str, Any]],
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    output_path: str | Path,
    *,
    few_shot_prompt: str = "",
    input_template: str = DEFAULT_TEMPLATE,
    input_column: str = "input",
    answer_marker: str = DEFAULT_MARKER,
    parser: str | Callable[[str], tuple[str, str]] | None = None,
    stops: Sequence[str] = DEFAULT_STOPS,
    batch_size: int = 8,
    max_new_tokens: int = 128,
    max_prompt_length: int | None = None,
    show_progress: bool = True,
) -> Dataset:
    """Generate, parse and save a rationale and label for every row; returns all rows in input order.

    Args:
        dataset: rows with `input_column` (other columns, e.g. a gold `label`, are carried along).
        model, tokenizer: any causal LM (the "LLM"); generation is greedy and batched with left padding.
        output_path: JSON Lines file written incrementally; rerunning with the same path resumes.
        few_shot_prompt: the exemplars, each formatted like `input_template` plus its answer.
        parser: an official parser name (`cqa`, `svamp`, `esnli`, `anli1`) or a function text ->
            (rationale, label); default `parse_continuation` with `answer_marker` and `stops`.
    Returns:
        a Dataset with the input columns plus `rationale`, `llm_label`, `raw_output`, `parse_ok`.
    """
    if batch_size < 1 or max_new_tokens < 1:
        raise ValueError("batch_size and max_new_tokens must be positive.")
    check_input_template(input_template)
    if getattr(model.config, "is_encoder_decoder", False):
        raise ValueError("generate_rationales expects a decoder-only causal LM as the LLM.")
    if isinstance(parser, str):
        if parser not in PARSERS:
            raise ValueError(f"Unknown parser {parser!r}; use one of {sorted(PARSERS)} or a function.")
        parse = PARSERS[parser]
    elif parser is None:

        def parse(text: str) -> tuple[str, str]:
            return parse_continuation(text, answer_marker, stops)
    else:
        parse = parser
    rows = list(dataset) if not isinstance(dataset, Dataset) else dataset.to_list()
    if rows and input_column not in rows[0]:
        raise ValueError(f"Rows need an {input_column!r} column; found {sorted(rows[0])}.")
    if tokenizer.pad_token_id is None:
        if tokenizer.eos_token_id is None:
            raise ValueError(
                "The tokenizer has neither a pad nor an EOS token; set tokenizer.pad_token first."
            )
        tokenizer.pad_token = tokenizer.eos_token
    path = Path(output_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    done = _read_done(path)
    _check_same_inputs(done, rows, input_column, path)
    todo = [i for i in range(len(rows)) if i not in done]
    if done:
        logger.info("%s: resuming, %d of %d rows already generated.", path, len(rows) - len(todo), len(rows))
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    try:
        for start in tqdm(
            range(0, len(todo), batch_size), desc="rationales", disable=not show_progress, unit="batch"
        ):
            idx = todo[start : start + batch_size]
            prompts = [few_shot_prompt + input_template.format(input=rows[i][input_column]) for i in idx]
            enc = tokenizer(
                prompts,
                return_tensors="pt",
                padding=True,
                add_special_tokens=True,
                truncation=max_prompt_length is not None,
                max_length=max_prompt_length,
            ).to(device)
            out = model.generate(
                **enc, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id
            )
            texts = tokenizer.batch_decode(out[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)
            new_rows = []
            for i, text in zip(idx, texts):
                rationale, label = parse(text)
                ok = bool(rationale.strip()) and bool(label.strip())
                new_rows.append(
                    {
                        **rows[i],
                        "index": i,
                        "rationale": rationale,
                        "llm_label": label,
                        "raw_output": text,
                        "parse_ok": ok,
                    }
                )
            _append(path, new_rows)
            done.update({r["index"]: r for r in new_rows})
    finally:
        tokenizer.padding_side = side
        model.train(was_training)
    failed = sum(1 for r in done.values() if not r["parse_ok"])
    if failed:
        logger.warning(
            "%d of %d rows did not parse; kept with parse_ok=False (see raw_output).", failed, len(done)
        )
    ordered = [{k: v for k, v in done[i].items() if k != "index"} for i in range(len(rows))]
    return Dataset.from_list(ordered)

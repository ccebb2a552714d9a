"""Data for distilling step-by-step (Hsieh et al. 2023, arXiv 2305.02301).

`load_step_by_step` returns a `DatasetDict` (train / validation / test) with the columns `input`, `label`,
`rationale` and `llm_label`, from

- a shipped dataset name (`"cqa"`, `"svamp"`: the official release with PaLM-540B rationales, gzipped
  under `hf_salt/assets/step_by_step/`, Apache-2.0, so it works offline),
- a local folder in the official release format (`<ds>_<split>.json` split files plus
  `llm/<split>_CoT_<k>.json` PaLM continuations) for cqa, svamp, esnli or anli1,
- a user's own JSON / JSON Lines / CSV / parquet file(s) or `save_to_disk` folder with those columns, or with
  TRL's `prompt` / `completion` (+ optional `rationale`) columns (see `from_prompt_completion`).

The PaLM continuations are parsed with the official per-dataset rules (`data_utils.py` of
google-research/distilling-step-by-step), made total: where the official code would crash or return
`" "`, the parser returns empty strings, which downstream means "no rationale" / "no LLM label".
"""

from __future__ import annotations

import gzip
import json
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from datasets import Dataset, DatasetDict, load_dataset, load_from_disk

from hf_salt.checks import naming_unreadable_data

logger = logging.getLogger(__name__)

ASSETS_DIR = Path(__file__).resolve().parent.parent / "assets" / "step_by_step"
SHIPPED_DATASETS: tuple[str, ...] = ("cqa", "svamp")
COLUMNS: tuple[str, ...] = ("input", "label", "rationale", "llm_label")
NLI_LABELS = {0: "entailment", 1: "neutral", 2: "contradiction"}
_USER_EXTENSIONS = {".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet"}


# --------------------------------------------------------------------------- parsing rules
def parse_cqa(output: str) -> tuple[str, str]:
    """CQA: cut at "Q:", split on "So the answer is", label = text after "(x)" without a final period."""
    head = output.split("Q:")[0].rstrip()
    if "So the answer is" not in head:
        return "", ""
    rationale, label = head.split("So the answer is", 1)
    parts = re.split(r"\(.\)", label)
    label = parts[1].strip() if len(parts) > 1 else ""
    if label.endswith("."):
        label = label[:-1]
    return rationale.strip(), label


def parse_svamp(output: str) -> tuple[str, str]:
    """SVAMP: cut at "Q:", split on "The answer is", label = first "(" ... last ")" (greedy, as official)."""
    head = output.split("Q:")[0].rstrip()
    if "The answer is" not in head:
        return "", ""
    rationale, label = head.split("The answer is", 1)
    match = re.search(r"\(.*\)", label)
    return rationale.strip(), match.group(0) if match else ""


def parse_esnli(output: str) -> tuple[str, str]:
    """e-SNLI: rationale before "Answer:", label after "Answer: " up to "Premise"."""
    rationale = output.split("Answer:")[0].strip()
    if "Answer: " not in output:
        return rationale, ""
    label = output.split("Answer: ")[1].split("Premise")[0].strip()
    return rationale, label


def parse_anli(output: str) -> tuple[str, str]:
    """ANLI: cut at "Premise:", split on "So the answer is", drop the label's last character (the period)."""
    parts = output.split("Premise:")[0].rstrip().split("So the answer is")
    if len(parts) != 2:  # the official code gives up (empty rationale and label) here
        return "", ""
    rationale, label = parts
    return rationale.strip(), label.lstrip()[:-1].strip()


@dataclass(frozen=True)
class OfficialFormat:
    """How one dataset of the official release is laid out and parsed."""

    chunk_size: int
    has_valid: bool
    parse: Callable[[str], tuple[str, str]]
    make_row: Callable[[dict[str, Any], str], dict[str, str]]


def _cqa_row(row: dict[str, Any], _sep: str) -> dict[str, str]:
    c = row["choices"]
    text = f"{row['question']}\nAnswer Choices:\n(a) {c[0]}\n(b) {c[1]}\n(c) {c[2]}\n(d) {c[3]}\n(e) {c[4]}"
    return {"input": text, "label": row["answer"]}


def _svamp_row(row: dict[str, Any], _sep: str) -> dict[str, str]:
    return {"input": row["input"], "label": row["label"]}


def _nli_row(row: dict[str, Any], sep: str) -> dict[str, str]:
    label = row["label"]
    return {"input": f"{row['premise']}{sep}{row['hypothesis']}", "label": NLI_LABELS.get(label, str(label))}


FORMATS: dict[str, OfficialFormat] = {
    "cqa": OfficialFormat(1000, False, parse_cqa, _cqa_row),
    "svamp": OfficialFormat(500, False, parse_svamp, _svamp_row),
    "esnli": OfficialFormat(5500, True, parse_esnli, _nli_row),
    "anli1": OfficialFormat(5000, True, parse_anli, _nli_row),
}
PARSERS: dict[str, Callable[[str], tuple[str, str]]] = {name: f.parse for name, f in FORMATS.items()}


# --------------------------------------------------------------------------- file helpers
def _find(folder: Path, name: str) -> Path | None:
    for candidate in (folder / name, folder / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


def _read_text(path: Path) -> str:
    if path.suffix == ".gz":
        with gzip.open(path, "rt", encoding="utf-8") as f:
            return f.read()
    return path.read_text(encoding="utf-8")


def _read_json_lines(path: Path) -> list[dict[str, Any]]:
    with naming_unreadable_data([path], "the step-by-step data"):  # names the file and the line that fails
        return [json.loads(line) for line in _read_text(path).splitlines() if line.strip()]


def _llm_chunks(folder: Path, split: str) -> list[Path]:
    chunks = []
    k = 0
    while (path := _find(folder / "llm", f"{split}_CoT_{k}.json")) is not None:
        chunks.append(path)
        k += 1
    return chunks


def _load_official_split(folder: Path, name: str, split: str, nli_separator: str) -> Dataset:
    fmt = FORMATS[name]
    split_file = _find(folder, f"{name}_{split}.json")
    chunks = _llm_chunks(folder, split)
    if split_file is None:
        hint = ""
        if name in {"esnli", "anli1"} and split == "train":
            hint = (
                f" The public {name} release lacks its train inputs ({name}_train.json): only the PaLM outputs "
                "survive. Add the inputs in the original HF order, or train on the validation split "
                f"(load_step_by_step(path, train_split='valid'))."
            )
        raise FileNotFoundError(f"{folder}: missing {name}_{split}.json.{hint}")
    rows = [fmt.make_row(r, nli_separator) for r in _read_json_lines(split_file)]
    outputs: list[str] = []
    for path in chunks:
        with naming_unreadable_data([path], "the step-by-step LLM outputs"):
            chunk = json.loads(_read_text(path))
        if not isinstance(chunk, list):
            raise ValueError(f"{path}: expected a JSON array of LLM continuations.")
        outputs.extend(chunk)
    if chunks and len(outputs) < len(rows):
        # the official loader keeps only the rows its LLM chunks cover
        logger.warning(
            "%s/%s: %d LLM outputs for %d rows; keeping the first %d rows.",
            name,
            split,
            len(outputs),
            len(rows),
            len(outputs),
        )
        rows = rows[: len(outputs)]
    elif len(outputs) > len(rows):
        raise ValueError(
            f"{name}/{split}: {len(outputs)} LLM outputs but only {len(rows)} rows; the chunks do not match."
        )
    failed = 0
    for i, row in enumerate(rows):
        rationale, llm_label = fmt.parse(outputs[i]) if outputs else ("", "")
        failed += int(bool(outputs) and not llm_label)
        row["rationale"], row["llm_label"] = rationale, llm_label
    if failed:
        logger.info("%s/%s: %d of %d LLM outputs have no parsable label.", name, split, failed, len(rows))
    return Dataset.from_list(rows) if rows else Dataset.from_dict({c: [] for c in COLUMNS})


def _detect_official(folder: Path, dataset: str | None) -> str | None:
    if dataset is not None:
        return dataset
    for name in FORMATS:
        if _find(folder, f"{name}_test.json") or _find(folder, f"{name}_train.json"):
            return name
    return None


def _normalise_user(ds: Dataset, source: str) -> Dataset:
    if "input" not in ds.column_names and "prompt" in ds.column_names and len(ds):
        if isinstance(ds[0]["prompt"], list):
            raise ValueError(
                f"{source}: conversational prompt/completion rows need a chat template to become text; load them "
                "with datasets and pass them to StepByStepTrainer with processing_class=<tokenizer with a "
                "chat_template>."
            )
        ds = from_prompt_completion(ds)  # TRL prompt/completion rows: prompt -> input, completion -> label
    if "label" not in ds.column_names and "llm_label" in ds.column_names:
        # `hf-salt generate-rationales` output has no gold labels: the LLM's labels stand in (for
        # --use_llm_labels training), so validation accuracy measures agreement with the LLM.
        logger.warning(
            "%s has no `label` column: using `llm_label` as the label, so accuracy is agreement with the LLM.",
            source,
        )
        ds = ds.add_column("label", list(ds["llm_label"]))
    missing = [c for c in ("input", "label") if c not in ds.column_names]
    if missing:
        raise ValueError(
            f"{source}: needs the columns input and label (or llm_label; rationale optional); missing {missing}. "
            f"Found {ds.column_names}."
        )
    for col in ("rationale", "llm_label"):
        if col not in ds.column_names:
            ds = ds.add_column(col, [""] * len(ds))

    def clean(batch: dict[str, list[Any]]) -> dict[str, list[str]]:
        return {c: ["" if v is None else str(v) for v in batch[c]] for c in COLUMNS}

    return ds.map(clean, batched=True, remove_columns=[c for c in ds.column_names if c not in COLUMNS])


def _split_valid(ds: DatasetDict, valid_fraction: float, seed: int) -> DatasetDict:
    if "validation" in ds or "train" not in ds or valid_fraction <= 0:
        return ds
    parts = ds["train"].train_test_split(test_size=valid_fraction, seed=seed)
    out = {"train": parts["train"], "validation": parts["test"]}
    out.update({k: v for k, v in ds.items() if k != "train"})
    return DatasetDict(out)


# --------------------------------------------------------------------------- public API
def load_step_by_step(
    name_or_path: str | Path = "cqa",
    *,
    dataset: str | None = None,
    valid_fraction: float = 0.1,
    seed: int = 0,
    nli_separator: str = "</s>",
    train_split: str = "train",
) -> DatasetDict:
    """Load step-by-step data as `DatasetDict(train, validation, test)` with `input/label/rationale/llm_label`.

    Args:
        name_or_path: a shipped name (`"cqa"`, `"svamp"`), a folder in the official release format, a data
            file (.json/.jsonl/.csv/.parquet), a folder of `<split>.<ext>` files, or a `save_to_disk` folder.
        dataset: which official dataset a folder holds (`cqa`, `svamp`, `esnli`, `anli1`); guessed from
            the split file names when None.
        valid_fraction: share of train held out as `validation` when the data has no validation split
            (the official code: 0.1 with seed 0, i.e. cqa 8,766/975 and svamp 720/80).
        seed: seed of that hold-out split.
        nli_separator: joins premise and hypothesis for NLI (official: T5's eos token `</s>`).
        train_split: the official split used as `train` (e.g. `"valid"` for e-SNLI/ANLI, whose train
            inputs are not public; `validation` is then cut from it).
    """
    if not 0 <= valid_fraction < 1:
        raise ValueError(f"valid_fraction must be in [0, 1), got {valid_fraction}.")
    key = str(name_or_path)
    if key.lower() in SHIPPED_DATASETS and not Path(key).exists():
        return _load_official(
            ASSETS_DIR / key.lower(), key.lower(), valid_fraction, seed, nli_separator, train_split
        )
    path = Path(key).expanduser()
    if not path.exists():
        names = ", ".join(SHIPPED_DATASETS)
        raise ValueError(
            f"Unknown step-by-step dataset {key!r}: shipped names are {names}; anything else must be a local "
            "folder in the official format (esnli, anli1 or another copy of cqa/svamp) or a json/csv/parquet "
            "file with columns input, label, rationale, llm_label."
        )
    if path.is_dir():
        if (path / "dataset_dict.json").is_file() or (path / "dataset_info.json").is_file():
            loaded = load_from_disk(str(path))
            loaded = loaded if isinstance(loaded, DatasetDict) else DatasetDict({"train": loaded})
            return _split_valid(
                DatasetDict({k: _normalise_user(v, str(path)) for k, v in loaded.items()}),
                valid_fraction,
                seed,
            )
        name = _detect_official(path, dataset)
        if name is not None:
            if name not in FORMATS:
                raise ValueError(f"dataset must be one of {sorted(FORMATS)}, got {name!r}.")
            return _load_official(path, name, valid_fraction, seed, nli_separator, train_split)
        files = {p.stem: p for p in sorted(path.iterdir()) if p.suffix in _USER_EXTENSIONS}
        if not files:
            raise ValueError(
                f"{path}: no official split files and no .json/.jsonl/.csv/.parquet files found."
            )
        return _load_user_files(files, valid_fraction, seed)
    if path.suffix not in _USER_EXTENSIONS:
        raise ValueError(
            f"{path}: unsupported file type {path.suffix!r}; use one of {sorted(_USER_EXTENSIONS)}."
        )
    return _load_user_files({"train": path}, valid_fraction, seed)


def _load_user_files(files: dict[str, Path], valid_fraction: float, seed: int) -> DatasetDict:
    alias = {"valid": "validation", "val": "validation", "dev": "validation"}
    out = {}
    for split, file in files.items():
        builder = _USER_EXTENSIONS[file.suffix]
        with naming_unreadable_data([file], "the step-by-step data"):
            raw = load_dataset(builder, data_files=str(file), split="train")
        out[alias.get(split, split)] = _normalise_user(raw, str(file))
    return _split_valid(DatasetDict(out), valid_fraction, seed)


def _load_official(
    folder: Path, name: str, valid_fraction: float, seed: int, nli_separator: str, train_split: str
) -> DatasetDict:
    fmt = FORMATS[name]
    splits: dict[str, Dataset] = {"train": _load_official_split(folder, name, train_split, nli_separator)}
    if fmt.has_valid and train_split != "valid":
        splits["validation"] = _load_official_split(folder, name, "valid", nli_separator)
    splits["test"] = _load_official_split(folder, name, "test", nli_separator)
    return _split_valid(DatasetDict(splits), valid_fraction, seed)


def from_prompt_completion(
    dataset: Dataset, tokenizer: Any = None, *, rationale_column: str = "rationale"
) -> Dataset:
    """TRL ``prompt``/``completion`` rows as step-by-step rows: prompt -> ``input``, completion -> ``label``.

    A ``rationale`` column (``rationale_column``), if present, is the rationale task's target; without one the rows
    train the label task only. Conversational rows (message lists) are rendered as text with the tokenizer's chat
    template by ``trl.maybe_apply_chat_template`` (needs ``pip install 'hf-salt[trl]'``). Rows already in the
    step-by-step format are returned unchanged.
    """
    names = dataset.column_names
    if "input" in names or "prompt" not in names:
        return dataset
    if "completion" not in names:
        raise ValueError(f"Prompt rows need a 'completion' column (the answer to learn); found {names}.")
    first = dataset[0]
    if isinstance(first["prompt"], list):  # conversational: render with the chat template, as TRL does
        from hf_salt.data.sft import import_trl

        utils = import_trl()
        if tokenizer is None or getattr(tokenizer, "chat_template", None) is None:
            raise ValueError("Conversational prompt/completion rows need a tokenizer with a chat_template.")
        dataset = dataset.map(
            lambda ex: utils.maybe_apply_chat_template(
                {"prompt": ex["prompt"], "completion": ex["completion"]}, tokenizer
            )
        )

    def convert(batch: dict[str, list[Any]]) -> dict[str, list[str]]:
        n = len(batch["prompt"])
        rationale = batch.get(rationale_column) or [""] * n
        return {
            "input": batch["prompt"],
            "label": batch["completion"],
            "rationale": ["" if r is None else str(r) for r in rationale],
            "llm_label": batch["completion"],
        }

    return dataset.map(convert, batched=True, remove_columns=names)

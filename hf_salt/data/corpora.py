"""Corpora as `datasets.DatasetDict`s with train/validation/test splits and a `text` column.

WikiText-2 (the default pre-training corpus) and Tiny Shakespeare ship inside the package, gzip-compressed,
so nothing is ever downloaded. Any local text/JSON/CSV/parquet files or a `save_to_disk` folder work too.
"""

from __future__ import annotations

from pathlib import Path

from datasets import DatasetDict, IterableDatasetDict, load_dataset, load_from_disk

CORPORA_DIR = Path(__file__).resolve().parent.parent / "assets" / "corpora"

# name -> split -> file (relative to CORPORA_DIR)
EMBEDDED_CORPORA: dict[str, dict[str, str]] = {
    "wikitext-2": {
        "train": "wikitext-2/train.txt.gz",
        "validation": "wikitext-2/valid.txt.gz",
        "test": "wikitext-2/test.txt.gz",
    },
    "tinyshakespeare": {"train": "tinyshakespeare/input.txt.gz"},
}

_BUILDERS = {".txt": "text", ".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet"}


def _builder_for(path: Path) -> str:
    suffixes = [s for s in path.suffixes if s not in {".gz", ".bz2", ".xz", ".zst"}]
    ext = suffixes[-1] if suffixes else ".txt"
    if ext not in _BUILDERS:
        raise ValueError(
            f"Don't know how to read {str(path)!r}: use one of {sorted(_BUILDERS)} (optionally .gz)."
        )
    return _BUILDERS[ext]


def _data_files(name_or_path: str | Path) -> tuple[str, dict[str, list[str]] | None, Path | None]:
    """Return (builder, data_files, save_to_disk folder) for an embedded name or a local path."""
    if str(name_or_path) in EMBEDDED_CORPORA:
        files = {
            split: [str(CORPORA_DIR / rel)] for split, rel in EMBEDDED_CORPORA[str(name_or_path)].items()
        }
        return "text", files, None
    path = Path(name_or_path).expanduser()
    if not path.exists():
        raise FileNotFoundError(
            f"Corpus {str(name_or_path)!r} is neither an embedded corpus ({', '.join(EMBEDDED_CORPORA)}) "
            "nor an existing file or folder."
        )
    if path.is_dir() and ((path / "dataset_dict.json").exists() or (path / "dataset_info.json").exists()):
        return "", None, path
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    files = [p for p in files if not p.name.startswith(".")]
    if not files:
        raise FileNotFoundError(f"Folder {str(path)!r} holds no data files.")
    empty = [str(p) for p in files if p.stat().st_size == 0]
    if empty:
        raise ValueError(f"Corpus file(s) {', '.join(map(repr, empty))} are empty: remove them or add text.")
    builders = {_builder_for(p) for p in files}
    if len(builders) > 1:
        raise ValueError(f"{str(path)!r} mixes file types ({sorted(builders)}); keep one type per corpus.")
    splits: dict[str, list[str]] = {}
    for p in files:
        stem = p.name.split(".")[0].lower()
        split = {"valid": "validation", "val": "validation", "dev": "validation"}.get(stem, stem)
        split = split if split in {"train", "validation", "test"} else "train"
        splits.setdefault(split, []).append(str(p))
    return builders.pop(), splits, None


def load_corpus(
    name_or_path: str | Path = "wikitext-2",
    *,
    text_column: str = "text",
    validation_fraction: float = 0.05,
    streaming: bool = False,
    seed: int = 0,
) -> DatasetDict | IterableDatasetDict:
    """Load a corpus into train/validation/test splits with a `text` column.

    Files named `train.*`, `valid*.*`/`validation.*`/`dev.*` and `test.*` become those splits; anything else is
    train. A corpus with only a train split gets validation and test carved off its end (contiguous, so
    documents don't straddle splits), `validation_fraction` each. Blank lines are dropped.
    """
    if not 0.0 < validation_fraction < 0.5:
        raise ValueError(f"validation_fraction must be in (0, 0.5), got {validation_fraction}.")
    builder, data_files, disk = _data_files(name_or_path)
    if disk is not None:
        if streaming:
            raise ValueError("A save_to_disk folder can't be streamed; pass streaming=False.")
        ds = load_from_disk(str(disk))
        ds = ds if isinstance(ds, DatasetDict) else DatasetDict({"train": ds})
    else:
        from hf_salt.checks import naming_unreadable_data

        files = [f for split_files in (data_files or {}).values() for f in split_files]
        with naming_unreadable_data(files, f"Corpus {str(name_or_path)!r}"):
            ds = load_dataset(builder, data_files=data_files, streaming=streaming)
    for split in ds:
        cols = ds[split].column_names
        if cols is not None and text_column not in cols:
            raise ValueError(
                f"Split {split!r} of {str(name_or_path)!r} has no {text_column!r} column (columns: {cols})."
            )
    if text_column != "text":
        ds = ds.rename_column(text_column, "text")
    ds = ds.filter(lambda row: bool(row["text"]) and not row["text"].isspace())
    if streaming:
        return ds
    if "train" not in ds or len(ds["train"]) == 0:
        raise ValueError(f"Corpus {str(name_or_path)!r} is empty: its train split has no non-blank text.")
    if "validation" not in ds:
        n = len(ds["train"])
        k = max(1, int(n * validation_fraction))
        if n < 3 * k:
            raise ValueError(f"Corpus {str(name_or_path)!r} has only {n} non-blank rows: too few to split.")
        train = ds["train"]
        ds = DatasetDict(
            {
                "train": train.select(range(n - 2 * k)),
                "validation": train.select(range(n - 2 * k, n - k)),
                "test": ds["test"] if "test" in ds else train.select(range(n - k, n)),
            }
        )
    return ds


def describe_split(name_or_path: str | Path, split: str) -> str:
    """Which files a split of `load_corpus(name_or_path)` comes from, for messages that must name them."""
    try:
        _, data_files, disk = _data_files(name_or_path)
    except (OSError, ValueError):
        return f"the {split} split of {str(name_or_path)!r}"
    if disk is not None:
        return f"the {split} split of the saved dataset {str(disk)!r}"
    files = (data_files or {}).get(split)
    if files:
        return f"the {split} split ({', '.join(map(repr, files))})"
    train = ", ".join(map(repr, (data_files or {}).get("train", [])))
    return f"the {split} split (carved from the end of the train file(s) {train})"

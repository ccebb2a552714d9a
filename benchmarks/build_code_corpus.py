"""Build a pre-training corpus without downloading anything: the Python source files of the installed packages.

Why: the GPU scale of the reproduction benchmark needs ~100M+ tokens read once (no repeated epochs, which turn
KD into a regulariser), and hf-salt never downloads data. Every machine that runs hf-salt has a site-packages
folder full of real, human-written code.

Recipe (deterministic given the same installed files):
1. Walk every site-packages / dist-packages folder of this interpreter (``site.getsitepackages()`` plus the user
   site, or the ``--roots`` given), following no symlinks, and take every ``*.py`` file.
2. Drop files that are not UTF-8, empty, larger than ``--max_bytes`` (default 1 MB: generated tables), or with
   a line longer than ``--max_line`` characters (default 1000: minified or data blobs).
3. Deduplicate by the SHA-256 of the file's bytes (the same vendored file in several packages counts once).
4. Split by file: a file goes to validation when ``int(sha256[:8], 16) % 1000 < 1000 * validation_fraction``
   (default 1 percent), otherwise to train. The split depends only on the file's content.
5. Write ``<output>/data/train.jsonl`` and ``<output>/data/validation.jsonl`` (one JSON object
   ``{"text": file content}`` per line, files ordered by hash) and ``<output>/manifest.json`` (roots, counts,
   sizes, the settings, the per-file path/hash list, and the installed distributions with versions). Load with
   ``hf_salt.data.load_corpus("<output>/data")``; each file is one document (EOS-separated when packed).

It then counts tokens with the shipped tokenizer on a deterministic sample of files (``--token_sample``, the
files whose hash falls in the first fraction; 1.0 = all) and extrapolates by bytes.

Run: ``python benchmarks/build_code_corpus.py --output outputs/code-corpus``
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import site
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path


@dataclass
class SourceFile:
    rel: str  # path relative to its root (e.g. torch/nn/modules/linear.py)
    sha256: str
    text: str


def default_roots() -> list[Path]:
    """This interpreter's site-packages folders (system and user), existing ones only, without duplicates."""
    candidates = list(site.getsitepackages()) + [site.getusersitepackages()]
    roots, seen = [], set()
    for c in candidates:
        p = Path(c)
        if p.is_dir() and p.resolve() not in seen:
            seen.add(p.resolve())
            roots.append(p)
    return roots


def iter_sources(
    roots: list[Path], max_bytes: int, max_line: int, stats: dict[str, int]
) -> Iterator[SourceFile]:
    """Every acceptable ``*.py`` file under ``roots`` (symlinks not followed), in sorted path order."""
    for root in roots:
        for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
            dirnames.sort()
            for name in sorted(filenames):
                if not name.endswith(".py"):
                    continue
                path = Path(dirpath) / name
                if path.is_symlink():
                    continue
                stats["seen"] += 1
                try:
                    data = path.read_bytes()
                except OSError:
                    stats["unreadable"] += 1
                    continue
                if not data.strip():
                    stats["empty"] += 1
                    continue
                if len(data) > max_bytes:
                    stats["too_large"] += 1
                    continue
                try:
                    text = data.decode("utf-8")
                except UnicodeDecodeError:
                    stats["not_utf8"] += 1
                    continue
                if max((len(line) for line in text.splitlines()), default=0) > max_line:
                    stats["long_lines"] += 1
                    continue
                yield SourceFile(str(path.relative_to(root)), hashlib.sha256(data).hexdigest(), text)


def is_validation(sha256: str, validation_fraction: float) -> bool:
    """The split of a file: a pure function of its content hash."""
    return int(sha256[:8], 16) % 1000 < round(1000 * validation_fraction)


def in_sample(sha256: str, fraction: float) -> bool:
    """Deterministic sample for token counting (independent of the split: other hash digits)."""
    return fraction >= 1.0 or int(sha256[8:16], 16) % 10_000 < round(10_000 * fraction)


def installed_distributions() -> list[str]:
    from importlib.metadata import distributions

    names = {f"{d.metadata['Name']}=={d.version}" for d in distributions() if d.metadata["Name"]}
    return sorted(names, key=str.lower)


def build(
    output: Path,
    roots: list[Path],
    *,
    validation_fraction: float = 0.01,
    max_bytes: int = 1_000_000,
    max_line: int = 1000,
    token_sample: float = 0.05,
) -> dict:
    """Collect, deduplicate, split and write the corpus; returns the manifest (also written as JSON)."""
    if not 0.0 < validation_fraction < 0.5:
        raise ValueError(f"validation_fraction must be in (0, 0.5), got {validation_fraction}.")
    if not 0.0 < token_sample <= 1.0:
        raise ValueError(f"token_sample must be in (0, 1], got {token_sample}.")
    start = time.time()
    stats = dict.fromkeys(
        ("seen", "unreadable", "empty", "too_large", "not_utf8", "long_lines", "duplicates"), 0
    )
    unique: dict[str, SourceFile] = {}
    for f in iter_sources(roots, max_bytes, max_line, stats):
        if f.sha256 in unique:
            stats["duplicates"] += 1
            continue
        unique[f.sha256] = f
    if not unique:
        raise ValueError(f"No Python source file found under {[str(r) for r in roots]}.")
    data_dir = output / "data"  # only the data files: load_corpus reads every file of the folder it is given
    data_dir.mkdir(parents=True, exist_ok=True)
    splits = {"train": [], "validation": []}
    for sha in sorted(unique):
        splits["validation" if is_validation(sha, validation_fraction) else "train"].append(unique[sha])
    summary: dict[str, dict] = {}
    for split, files in splits.items():
        path = data_dir / f"{split}.jsonl"
        with path.open("w", encoding="utf-8") as handle:
            for f in files:
                handle.write(json.dumps({"text": f.text}, ensure_ascii=False) + "\n")
        summary[split] = {
            "files": len(files),
            "bytes": sum(len(f.text.encode("utf-8")) for f in files),
            "jsonl_bytes": path.stat().st_size,
        }
    tokens = count_tokens(splits, token_sample)
    for split in splits:
        summary[split].update(tokens[split])
    manifest = {
        "recipe": "benchmarks/build_code_corpus.py (see its docstring)",
        "load_with": f'hf_salt.data.load_corpus("{data_dir}")',
        "python": sys.version.split()[0],
        "roots": [str(r) for r in roots],
        "settings": {
            "validation_fraction": validation_fraction,
            "max_bytes": max_bytes,
            "max_line": max_line,
            "token_sample": token_sample,
        },
        "filter_counts": stats,
        "splits": summary,
        "seconds": round(time.time() - start, 1),
        "distributions": installed_distributions(),
        "files": {split: [[f.rel, f.sha256] for f in files] for split, files in splits.items()},
    }
    (output / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return manifest


def count_tokens(splits: dict[str, list[SourceFile]], fraction: float) -> dict[str, dict]:
    """Tokens per split with the shipped tokenizer, counted on a hash sample and extrapolated by bytes."""
    from hf_salt.data import load_tokenizer

    tok = load_tokenizer()
    out = {}
    for split, files in splits.items():
        sample = [f.text for f in files if in_sample(f.sha256, fraction)] or [f.text for f in files[:50]]
        n_tokens = 0
        for i in range(0, len(sample), 256):
            n_tokens += sum(
                len(ids) + 1 for ids in tok(sample[i : i + 256], add_special_tokens=False)["input_ids"]
            )
        sample_bytes = sum(len(t.encode("utf-8")) for t in sample)
        total_bytes = sum(len(f.text.encode("utf-8")) for f in files)
        out[split] = {
            "token_sample_files": len(sample),
            "tokens_per_byte": n_tokens / max(1, sample_bytes),
            "tokens_estimated": int(round(n_tokens / max(1, sample_bytes) * total_bytes)),
        }
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--output", default="outputs/code-corpus", help="Folder: data/*.jsonl + manifest.json."
    )
    parser.add_argument("--roots", nargs="*", default=None, help="Folders to scan (default: site-packages).")
    parser.add_argument(
        "--validation_fraction", type=float, default=0.01, help="Share of files in validation."
    )
    parser.add_argument("--max_bytes", type=int, default=1_000_000, help="Skip larger files (generated).")
    parser.add_argument(
        "--max_line", type=int, default=1000, help="Skip files with a longer line (minified)."
    )
    parser.add_argument("--token_sample", type=float, default=0.05, help="Share of files tokenized to count.")
    args = parser.parse_args(argv)
    roots = [Path(r) for r in args.roots] if args.roots else default_roots()
    print(f"scanning {', '.join(map(str, roots))}")
    m = build(
        Path(args.output),
        roots,
        validation_fraction=args.validation_fraction,
        max_bytes=args.max_bytes,
        max_line=args.max_line,
        token_sample=args.token_sample,
    )
    for split, s in m["splits"].items():
        print(
            f"{split}: {s['files']:,} files, {s['bytes'] / 1e6:.1f} MB of source, ~{s['tokens_estimated'] / 1e6:.1f}M "
            f"tokens (shipped tokenizer, {s['tokens_per_byte']:.3f} tokens/byte on {s['token_sample_files']} files)"
        )
    print(f"filters: {m['filter_counts']}; {m['seconds']} s; load with {m['load_with']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

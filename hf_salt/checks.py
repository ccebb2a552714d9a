"""Input checks shared by the commands and trainers: bad input gets a clear error before any work.

Each check raises `ValueError` / `FileNotFoundError` / `TypeError` with a message that names the input and says
what to change; the CLI prints those without a traceback.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import types
import typing
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any


# --------------------------------------------------------------------------------------------------- outputs
def check_writable(
    path: str | os.PathLike,
    what: str = "the output",
    *,
    overwrite: bool = True,
    overwrite_flag: str = "--overwrite_output_dir",
) -> None:
    """Raise unless `path` could be created (or replaced) by this process; with ``overwrite=False`` an existing
    folder must also be empty (`overwrite_flag` is the option the message names).

    Called before any work, so a typo in an output path costs seconds, not a finished training run.
    """
    path = Path(path).expanduser().absolute()
    if path.exists() and not path.is_dir():
        raise ValueError(f"{what} {str(path)!r} is a file, not a folder: choose another path.")
    if not overwrite and path.is_dir() and any(path.iterdir()):
        raise ValueError(
            f"{what} {str(path)!r} exists and is not empty: choose another folder, or pass {overwrite_flag} "
            "to replace it."
        )
    ancestor = path if path.exists() else path.parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise ValueError(
            f"{what} {str(path)!r} cannot be created: {str(ancestor)!r} is a file, not a folder."
        )
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise ValueError(f"{what} {str(path)!r} cannot be written: no write permission in {str(ancestor)!r}.")


def check_writable_file(path: str | os.PathLike, what: str = "the output file") -> None:
    """`check_writable` for an output *file*: its folder must be creatable, the path must not be a folder."""
    path = Path(path).expanduser().absolute()
    if path.is_dir():
        raise ValueError(f"{what} {str(path)!r} is a folder; give a file path.")
    if path.exists() and not os.access(path, os.W_OK):
        raise ValueError(f"{what} {str(path)!r} cannot be written: no write permission.")
    check_writable(path.parent, what=f"the folder of {what}")


def check_no_finished_run(
    output_dir: str | os.PathLike,
    markers: Iterable[str],
    overwrite: bool,
    flag: str = "--overwrite_output_dir",
) -> None:
    """Refuse an `output_dir` that already holds a finished run (any of `markers`) unless `overwrite`.

    Writing a second run into it would replace or, worse, mix the first run's models and results.
    """
    output_dir = Path(output_dir)
    found = [m for m in markers if (output_dir / m).exists()]
    if found and not overwrite:
        raise ValueError(
            f"{str(output_dir)!r} already holds a finished run ({', '.join(found)}): choose another output "
            f"folder, or pass {flag} to replace it."
        )


# --------------------------------------------------------------------------------------------------- models
def looks_like_local_path(name: str | os.PathLike) -> bool:
    """True for what cannot be a Hub repo id (`org/name`): a `Path`, a name starting with `.` `/` `~`
    (`./`, `../`), one with backslashes or several slashes, a Windows drive."""
    if not isinstance(name, str):
        return isinstance(name, os.PathLike)
    return (
        name.startswith((".", "/", "~"))
        or "\\" in name
        or name.count("/") > 1
        or (len(name) > 1 and name[1] == ":")  # a Windows drive
    )


def check_model_path(name_or_path: str | os.PathLike, what: str = "the model") -> None:
    """Raise a clear error for a local path that does not exist, instead of the Hub's repo-id error; an existing
    folder must be one `save_pretrained` wrote (a config.json that parses, a weights file)."""
    if not isinstance(name_or_path, (str, os.PathLike)):
        raise TypeError(f"{what} must be a model or a path string, got {type(name_or_path).__name__}.")
    name = os.fspath(name_or_path)
    path = Path(name).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ValueError(
                f"{what} {name!r} is a file, not a model folder: give the folder save_pretrained wrote."
            )
        if not (path / "config.json").is_file():
            raise ValueError(
                f"{what} {name!r} has no config.json: it is not a folder written by save_pretrained."
            )
        check_model_folder(path, what)
        return
    if looks_like_local_path(name_or_path):
        raise FileNotFoundError(
            f"{what} {name!r} does not exist (no such local folder): give a model folder or a Hub id."
        )


_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")


def check_model_folder(path: str | os.PathLike, what: str = "the model") -> None:
    """Refuse a model folder whose config.json does not parse or that holds no weights file, naming the file and
    the fix, before any work (`from_pretrained` says `OSError: ... is not a valid JSON file` or `no file named
    model.safetensors`, after the data is loaded)."""
    import json

    path = Path(path).expanduser()
    config = path / "config.json"
    if config.is_file():
        try:
            json.loads(config.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            where = f" ({err.reason})" if isinstance(err, UnicodeDecodeError) else ""
            if isinstance(err, json.JSONDecodeError):
                where = f" (line {err.lineno}, column {err.colno}: {err.msg})"
            raise ValueError(
                f"{what}: {str(config)!r} is not valid JSON{where}. Write the folder again with save_pretrained, "
                "or copy config.json again if it was copied or edited by hand."
            ) from None
    if not any(p.suffix in _WEIGHT_SUFFIXES and p.is_file() for p in path.iterdir()):
        present = sorted(p.name for p in path.iterdir())
        listed = ", ".join(present[:6]) + (f" and {len(present) - 6} more" if len(present) > 6 else "")
        raise ValueError(
            f"{what} {str(path)!r} holds no weights (no model.safetensors or pytorch_model.bin; it holds {listed}): "
            "it was saved without them or copied incompletely. Save the model again with "
            "save_pretrained(folder), or copy its weights files into the folder."
        )


def _is_causal_class(name: str) -> bool:
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    names: set[str] = set()
    for value in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values():
        names.update((value,) if isinstance(value, str) else value)
    return name in names or name.endswith(("ForCausalLM", "LMHeadModel"))


def check_causal_lm(model_or_config: Any, what: str = "the model") -> None:
    """Raise unless `model_or_config` is (the config of) a decoder-only causal LM.

    Says so in one line, instead of the Auto classes' list of ~200 supported configs or a failure at the first
    KD step.
    """
    from transformers import MODEL_FOR_CAUSAL_LM_MAPPING, PretrainedConfig

    if isinstance(model_or_config, PretrainedConfig):
        config, cls_names = model_or_config, list(getattr(model_or_config, "architectures", None) or [])
        known = type(config) in MODEL_FOR_CAUSAL_LM_MAPPING
    else:
        model = model_or_config
        if hasattr(model, "get_base_model"):  # PEFT
            model = model.get_base_model()
        config, cls_names, known = getattr(model, "config", None), [type(model).__name__], True
        if config is None:
            return
    causal = known and not getattr(config, "is_encoder_decoder", False)
    if causal and cls_names:
        causal = any(_is_causal_class(n) for n in cls_names)
    if not causal:
        arch = ", ".join(cls_names) or type(config).__name__
        raise ValueError(
            f"{what} is a {config.model_type} model ({arch}), not a causal language model: it must be a "
            "decoder-only *ForCausalLM model (Llama, GPT-2, Qwen, ...)."
        )
    if _bidirectional(config):
        raise ValueError(
            f"{what} is a {config.model_type} model, an encoder with bidirectional attention (is_decoder=False): "
            "its causal-LM class would see the tokens it predicts. It must be a decoder-only *ForCausalLM model "
            "(Llama, GPT-2, Qwen, ...)."
        )


def _bidirectional(config: Any) -> bool:
    """An encoder family (BERT, RoBERTa, ...: it has a masked-LM head) whose causal-LM class attends both ways
    unless the config says is_decoder=True. Such a folder without `architectures` passes the causal-LM mapping."""
    from transformers import MODEL_FOR_MASKED_LM_MAPPING

    if type(config) not in MODEL_FOR_MASKED_LM_MAPPING:
        return False
    return not getattr(config, "is_decoder", False) and not getattr(config, "causal", False)


def check_finite(model: Any, what: str = "the model") -> None:
    """Refuse a model with NaN or inf weights (named): training it gives NaN losses, growing it a NaN clone,
    and neither says why. One pass over the weights, before any work."""
    import torch

    named = [(n, p) for n, p in model.named_parameters() if p.numel() and p.is_floating_point()]
    # min and max per tensor (NaN propagates, +-inf is an extremum), one host sync per device and dtype:
    # isfinite() would write a bool per weight (slow in bf16 on CPUs without native bf16 arithmetic)
    groups: dict[tuple, list[tuple[int, torch.Tensor]]] = {}
    with torch.no_grad():
        for i, (_, p) in enumerate(named):
            try:
                ends = torch.stack(torch.aminmax(p))
            except (RuntimeError, NotImplementedError):  # a dtype without aminmax (float8)
                ends = torch.isfinite(p).all().reshape(1)
            groups.setdefault((p.device, ends.dtype), []).append((i, ends))
        flags: dict[int, bool] = {}
        for members in groups.values():
            ok = torch.stack([e for _, e in members])
            ok = ok if ok.dtype == torch.bool else ok.isfinite()
            flags.update(zip((i for i, _ in members), ok.all(dim=1).tolist()))
    bad = [named[i][0] for i in sorted(flags) if not flags[i]]
    if bad:
        more = f" and {len(bad) - 3} more" if len(bad) > 3 else ""
        raise ValueError(
            f"{what} has NaN or inf weights in {', '.join(bad[:3])}{more}: it cannot be trained or grown. Use "
            "the checkpoint it came from before it diverged, or train it again (e.g. with a lower learning rate)."
        )


# --------------------------------------------------------------------------------------------------- tokenizers
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model")
_SPECIAL = ("bos_token", "eos_token", "unk_token", "pad_token")


def tokenizer_differences(ours: Any, theirs: Any) -> tuple[list[str], list[str]]:
    """(vocabulary differences, special-token differences) between two tokenizers, each one named.

    The vocabulary is what KD and a token-id dataset depend on (the same id must mean the same token); special
    tokens that differ over one vocabulary (a pad token set in one folder only) do not change the ids.
    """
    va, vb = ours.get_vocab(), theirs.get_vocab()
    vocab = []
    if len(va) != len(vb):
        vocab.append(f"{len(va)} vs {len(vb)} tokens")
    moved = sorted(t for t, i in va.items() if vb.get(t) != i)
    if moved:
        examples = ", ".join(f"{t!r} is id {va[t]} vs {vb.get(t)}" for t in moved[:3])
        vocab.append(f"{len(moved)} of {len(va)} tokens have another id or are missing ({examples})")
    special = [
        f"{name} {getattr(ours, name, None)!r} vs {getattr(theirs, name, None)!r}"
        for name in _SPECIAL
        if getattr(ours, name, None) != getattr(theirs, name, None)
    ]
    return vocab, special


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """sha256 of the vocabulary (token -> id): equal for tokenizers that give every token the same id."""
    import hashlib
    import json

    return hashlib.sha256(json.dumps(sorted(tokenizer.get_vocab().items())).encode()).hexdigest()


def check_model_tokenizer(tokenizer: Any, model_or_path: Any, what: str = "the teacher") -> None:
    """Refuse a model whose folder ships a tokenizer other than the run's: KD compares the two models' token
    probabilities id by id, so an id must mean the same token to both. Special tokens that differ over one
    vocabulary get a warning. Nothing to compare (no tokenizer given, a model without a local folder or without
    tokenizer files) passes."""
    import warnings

    if tokenizer is None or not hasattr(tokenizer, "get_vocab"):
        return
    path = model_or_path if isinstance(model_or_path, (str, os.PathLike)) else None
    if path is None:
        path = getattr(getattr(model_or_path, "config", None), "_name_or_path", None) or None
    folder = Path(path).expanduser() if path else None
    if folder is None or not folder.is_dir() or not any((folder / f).is_file() for f in _TOKENIZER_FILES):
        return
    from transformers import AutoTokenizer

    try:
        theirs = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    except Exception as err:  # a folder whose tokenizer files do not load: say we could not compare
        warnings.warn(
            f"{what}: the tokenizer in {str(folder)!r} does not load ({err}); not compared.", stacklevel=3
        )
        return
    vocab, special = tokenizer_differences(tokenizer, theirs)
    if vocab:
        raise ValueError(
            f"{what} ({str(folder)!r}) ships another tokenizer than the run's: {'; '.join(vocab)}. KD compares "
            "the models' predictions token id by token id, so both must use one tokenizer: pick a teacher "
            "trained with the run's tokenizer, or run with the teacher's tokenizer."
        )
    if special:
        warnings.warn(
            f"{what} ({str(folder)!r}) ships the run's vocabulary with other special tokens: {'; '.join(special)}.",
            stacklevel=3,
        )


@contextlib.contextmanager
def naming_corrupt_files(path: str | os.PathLike, what: str = "the model") -> Iterator[None]:
    """Re-raise a safetensors / Arrow read error as a `ValueError` naming the damaged file under `path`."""
    try:
        yield
    except Exception as err:
        if not _is_corrupt_file_error(err):
            raise
        bad = _find_corrupt_file(Path(path))
        where = repr(str(bad)) if bad is not None else f"a weights or data file in {str(path)!r}"
        raise ValueError(
            f"{what}: {where} is truncated or corrupt ({type(err).__name__}: {err}). Write it again "
            "(save_pretrained / save_to_disk), or copy it again if it was copied."
        ) from err


def _is_corrupt_file_error(err: BaseException) -> bool:
    name = type(err).__name__
    text = str(err)
    return (
        name in ("SafetensorError", "ArrowInvalid", "HeaderTooLarge", "HeaderTooSmall")
        or "incomplete metadata" in text
        or "Expected to be able to read" in text
        or "deserializing header" in text
    )


def _find_corrupt_file(path: Path) -> Path | None:
    """The first `.safetensors` / `.arrow` file under `path` that cannot be opened and read in full."""
    if path.is_file():
        return path
    if not path.is_dir():
        return None
    for file in sorted(path.rglob("*.safetensors")):
        try:
            from safetensors import safe_open

            with safe_open(str(file), framework="pt") as f:
                for key in f.keys():
                    f.get_slice(key)
            end = _safetensors_end(file)
            if end is not None and file.stat().st_size < end:
                return file
        except Exception:
            return file
    for file in sorted(path.rglob("*.arrow")):
        try:
            import pyarrow as pa

            with pa.memory_map(str(file)) as source:
                pa.ipc.open_stream(source).read_all()
        except Exception:
            return file
    return None


def _safetensors_end(file: Path) -> int | None:
    """The byte length a safetensors file must have, from its header (None if the header is unreadable)."""
    import json
    import struct

    try:
        with open(file, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(n))
    except Exception:
        return None
    ends = [v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"]
    return 8 + n + max(ends, default=0)


def position_limit(config: Any) -> int | None:
    """The longest sequence the model's positions cover (None when it has no such limit)."""
    for attr in ("max_position_embeddings", "n_positions", "n_ctx"):
        limit = getattr(config, attr, None)
        if limit and int(limit) > 0:  # XLNet's -1 (and 0) mean "no limit"
            return int(limit)
    return None


def check_positions(length: int, config: Any, what: str, fix: str) -> None:
    """Raise if sequences of `length` tokens exceed the model's position limit (learned positions crash)."""
    limit = position_limit(config)
    if limit and length > limit:
        raise ValueError(
            f"{what}: sequences of {length} tokens are longer than the model's {limit} positions. {fix}"
        )


# --------------------------------------------------------------------------------------------------- configs
def check_field_types(obj: Any, cls: type) -> None:
    """Raise a `TypeError` naming the field when a number field of `cls` (not its parents) holds another type.

    Without it, `kd_weight: [0.5]` in a YAML file or `kd_weight="0.5"` in Python fails later as
    `TypeError: '<=' not supported ...`, naming nothing.
    """
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name not in cls.__dict__.get("__annotations__", {}):
            continue
        allowed = _number_types(hints.get(f.name))
        if not allowed:
            continue
        value = getattr(obj, f.name)
        if value is None and type(None) in allowed:
            continue
        if isinstance(value, bool) or not isinstance(value, tuple(t for t in allowed if t is not type(None))):
            names = " or ".join(t.__name__ for t in allowed if t is not type(None))
            raise TypeError(f"{f.name} must be {names}, got {type(value).__name__} {value!r}.")


def _number_types(hint: Any) -> tuple[type, ...]:
    """(float, int[, NoneType]) for float / int / optional number annotations; () for anything else."""
    args = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
    if not args or any(a not in (float, int, type(None)) for a in args) or args == (type(None),):
        return ()
    out = {int, float} if float in args else {int}
    if type(None) in args:
        out.add(type(None))
    return tuple(sorted(out, key=lambda t: t.__name__))


# --------------------------------------------------------------------------------------------------- data files
_OPENERS = {".gz": "gzip", ".bz2": "bz2", ".xz": "lzma"}


def _read_bytes(file: Path) -> bytes:
    import importlib

    opener = _OPENERS.get(file.suffix)
    if opener is None:
        return file.read_bytes()
    with importlib.import_module(opener).open(file, "rb") as f:
        return f.read()


def _not_utf8(file: Path, data: bytes) -> str | None:
    """Why `data` is not UTF-8 text, naming the line, the byte and the likely encoding (None when it is)."""
    try:
        data.decode("utf-8")
        return None
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        byte = data[err.start]
        if data[:2] in (b"\xff\xfe", b"\xfe\xff"):
            likely = "UTF-16 (it starts with a UTF-16 byte-order mark)"
            fix = f"iconv -f utf-16 -t utf-8 {str(file)!r} > converted"
        else:
            likely = "Latin-1 (ISO-8859-1) or Windows-1252, the usual 8-bit encodings"
            fix = f"iconv -f latin1 -t utf-8 {str(file)!r} > converted"
        return (
            f"{str(file)!r} is not UTF-8 text: byte 0x{byte:02x} on line {line} is not valid UTF-8; the file is "
            f"probably {likely}. Data files must be UTF-8: convert it (e.g. `{fix}`, or in Python read it with "
            "encoding='latin-1' and write it with encoding='utf-8') and use the converted file."
        )


def _bad_json(file: Path, text: str) -> str | None:
    """The first line of a JSON / JSON Lines file that does not parse (None when the file parses)."""
    import json

    try:
        json.loads(text)
        return None
    except json.JSONDecodeError as whole:
        lines = text.splitlines()
        first = next((i for i, line in enumerate(lines) if line.strip()), None)
        try:  # JSON Lines: one object per line
            json_lines = first is not None and isinstance(json.loads(lines[first]), dict) and len(lines) > 1
        except json.JSONDecodeError:
            json_lines = False
        if not json_lines:
            return (
                f"{str(file)!r} is not valid JSON: line {whole.lineno}, column {whole.colno}: {whole.msg}. Fix that "
                "line (a JSON file holds one list of objects, a .jsonl file one object per line)."
            )
        for i, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                json.loads(line)
            except json.JSONDecodeError as err:
                return (
                    f"{str(file)!r} is not valid JSON Lines: line {i} does not parse ({err.msg}, column "
                    f"{err.colno}): {line[:80]!r}. Fix or remove that line (one JSON object per line)."
                )
        return None


@contextlib.contextmanager
def naming_unreadable_data(files: Iterable[str | os.PathLike], what: str = "the data") -> Iterator[None]:
    """Re-raise a failure to load data files (`datasets.load_dataset`) as a `ValueError` naming the file, the line
    and the fix when a file is not UTF-8 or holds malformed JSON; anything else is raised as it was.

    `datasets` says `UnicodeDecodeError` or `Expected object or value at position 23` without naming the file.
    The files are only read again after a failure.
    """
    try:
        yield
    except Exception as err:
        for file in map(Path, files):
            try:
                data = _read_bytes(file)
            except OSError:
                continue
            problem = _not_utf8(file, data)
            kinds = [s for s in file.suffixes if s not in _OPENERS]
            if problem is None and kinds and kinds[-1] in (".json", ".jsonl"):
                problem = _bad_json(file, data.decode("utf-8"))
            if problem is not None:
                raise ValueError(f"{what}: {problem}") from err
        raise

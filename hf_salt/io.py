"""Write output folders completely or not at all, and clean up what a killed writer left behind.

Every temporary folder hf-salt creates holds a marker file naming its writer (host, PID, process start
time). A later writer to the same place removes such a folder only when the marker is there and its writer
is no longer alive on this host, so it never deletes a folder it did not create, nor one a live process is
still writing.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from transformers.utils import logging

logger = logging.get_logger(__name__)

MARKER = ".hf-salt-writer.json"
_PREVIOUS = "previous"  # inside a `.NAME.old-*` folder: the output it replaced, until the swap is done


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (Linux), so a reused PID is not taken for it."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]  # field 22 of proc(5), counted after the "(comm)" field


def _usual_mode(path: Path, mode: int) -> None:
    """What a plain mkdir/open would give (mkdtemp/mkstemp make outputs private to this user)."""
    umask = os.umask(0)
    os.umask(umask)
    path.chmod(mode & ~umask)


def mark_as_ours(folder: str | Path) -> None:
    """Write the marker that lets a later run recognise `folder` as hf-salt's and check its writer."""
    pid = os.getpid()
    record = {"host": socket.gethostname(), "pid": pid, "start_time": _start_time(pid)}
    tmp = Path(folder) / f"{MARKER}.{pid}"
    tmp.write_text(json.dumps(record))
    os.replace(tmp, Path(folder) / MARKER)  # the marker is whole or absent


def writer_alive(folder: str | Path) -> bool | None:
    """True/False when `folder` carries our marker and its writer is/is not running; None when not ours."""
    try:
        record = json.loads((Path(folder) / MARKER).read_text())
        host, pid = record["host"], int(record["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if host != socket.gethostname():
        return True  # another machine's process: we cannot tell, so leave it alone
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by another user
    started = record.get("start_time")
    return started is None or _start_time(pid) in (None, started)


def remove_stale(parent: str | Path, pattern: str) -> list[Path]:
    """Remove folders in `parent` matching `pattern` that hf-salt created and whose writer has died.

    A `.NAME.old-*` folder still holding the output it was replacing is put back first when NAME is missing
    (the writer was killed between the two renames of the swap).
    """
    removed = []
    parent = Path(parent)
    if not parent.is_dir():
        return removed
    for folder in sorted(parent.glob(pattern)):
        if not folder.is_dir() or writer_alive(folder) is not False:
            continue
        previous = folder / _PREVIOUS
        name = folder.name[1:].split(".old-", 1)[0] if ".old-" in folder.name else None
        if name and previous.is_dir() and not (parent / name).exists():
            os.replace(previous, parent / name)
            logger.warning(
                f"Restored {parent / name} from {folder}, left by a run killed while replacing it."
            )
        shutil.rmtree(folder, ignore_errors=True)
        logger.warning(f"Removed {folder}, a temporary folder left by a killed hf-salt run.")
        removed.append(folder)
    return removed


@contextlib.contextmanager
def atomic_directory(path: str | Path, overwrite: bool = True) -> Iterator[Path]:
    """Yield a temporary folder beside `path`; on success it replaces `path` in one rename.

    On any error the temporary folder is removed and `path` is left as it was, so a crash never leaves a
    half-written model folder behind; after a kill (nothing runs), the next write to `path` removes the
    temporary folders of writers that are gone.
    """
    path = Path(path).expanduser().resolve()
    remove_stale(path.parent, f".{glob.escape(path.name)}.old-*")
    if path.exists() and not overwrite:
        raise FileExistsError(f"{str(path)!r} already exists; choose another folder or pass overwrite=True.")
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale(path.parent, f".{glob.escape(path.name)}.tmp-*")
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        mark_as_ours(tmp)
        yield tmp
        (tmp / MARKER).unlink()
        _usual_mode(tmp, 0o777)
        backup = None
        if path.exists():
            backup = Path(tempfile.mkdtemp(prefix=f".{path.name}.old-", dir=path.parent))
            mark_as_ours(backup)
            os.replace(path, backup / _PREVIOUS)
        os.replace(tmp, path)
        if backup is not None:
            shutil.rmtree(backup, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write a small file (a JSON record, a report) whole or not at all: a kill mid-write leaves the old one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        _usual_mode(Path(tmp), 0o666)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def save_pretrained_atomic(
    model: Any,
    save_directory: str | os.PathLike,
    *,
    tokenizer: Any | None = None,
    overwrite: bool = False,
    files: dict[str, str] | None = None,
    **save_kwargs: Any,
) -> Path:
    """``model.save_pretrained`` (and the tokenizer's) into `save_directory`, atomically: a complete folder or
    nothing (see :func:`atomic_directory`), so a later load never half-reads an interrupted save. An existing
    folder that is not empty is replaced only with ``overwrite=True``; an empty one is used. `files`: text files
    (name -> text, e.g. the model card's ``README.md``) written into the same folder, so they come with the
    weights or not at all."""
    dst = Path(save_directory).expanduser().absolute()
    if not overwrite and dst.exists() and (not dst.is_dir() or any(dst.iterdir())):
        raise FileExistsError(
            f"{dst} already exists and is not empty; choose another folder or pass overwrite=True."
        )
    with atomic_directory(dst) as tmp:
        model.save_pretrained(str(tmp), **save_kwargs)
        if tokenizer is not None:
            tokenizer.save_pretrained(str(tmp))
        for name, text in (files or {}).items():
            (tmp / name).write_text(text, encoding="utf-8")
    return dst


# ------------------------------------------------------------------------------------------- output lock
LOCK_SUFFIX = ".hf-salt-lock"
# lock files held by this process or the process that started it (os.pathsep-separated): its child processes
# (e.g. `hf-salt benchmark --workers N`) write the same output on its behalf
HELD_ENV = "HF_SALT_HELD_OUTPUTS"


def held_here(path: str | os.PathLike) -> bool:
    """True when this process, or the hf-salt run that started it, already holds the output `path`."""
    return str(lock_path(path)) in os.environ.get(HELD_ENV, "").split(os.pathsep)


class OutputInUse(ValueError):
    """Another live process holds the output this run would write (see :func:`hold_output`)."""


def lock_path(path: str | os.PathLike) -> Path:
    """The lock file of an output (folder or file): ``.NAME.hf-salt-lock`` beside it, so it survives the atomic
    replacement of the output itself."""
    path = Path(path).expanduser().absolute()
    return path.parent / f".{path.name}{LOCK_SUFFIX}"


def _describe(record: dict[str, Any]) -> str:
    what = record.get("command") or "an hf-salt run"
    return (
        f"{what} (PID {record.get('pid', '?')} on host {record.get('host', '?')}, "
        f"started {record.get('started', '?')})"
    )


def _read_record(fd: int) -> dict[str, Any] | None:
    os.lseek(fd, 0, os.SEEK_SET)
    data = b""
    while chunk := os.read(fd, 65536):
        data += chunk
    try:
        record = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return None
    return record if isinstance(record, dict) else None


@contextlib.contextmanager
def hold_output(path: str | os.PathLike, command: str | None = None) -> Iterator[Path]:
    """Hold the output `path` for this process while the block runs; a second writer is refused.

    The lock is an advisory ``flock`` on ``.NAME.hf-salt-lock`` beside `path`, holding the holder's command,
    host, PID and start time for the message a refused writer prints. The kernel releases the lock when its
    holder dies, however it dies (``kill -9`` included), so a killed run never blocks the next one: the next
    writer takes the lock over and says whose it was.

    Raises:
        OutputInUse: a live process holds `path`; the message names it.
    """
    import datetime
    import fcntl

    lock = lock_path(path)
    lock.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            record = _read_record(fd)
            os.close(fd)
            holder = _describe(record) if record else "another hf-salt run (starting up)"
            raise OutputInUse(
                f"{str(Path(path))!r} is being written by {holder}; two runs writing one output would mix "
                "their files. Wait for it to finish (or stop it), or choose another output."
            ) from None
        except OSError as err:  # a file system without locks: run unprotected, but say so
            os.close(fd)
            logger.warning(f"Cannot lock {lock} ({err}); nothing stops a second run from writing {path}.")
            yield lock
            return
        try:  # a holder that just finished unlinks the file: then we locked a file nobody else will see
            same = os.stat(lock).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        previous = _read_record(fd)
        if previous:
            logger.warning(
                f"Took over {path}: its previous writer, {_describe(previous)}, is no longer running."
            )
        pid = os.getpid()
        record = {
            "command": command,
            "host": socket.gethostname(),
            "pid": pid,
            "start_time": _start_time(pid),
            "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(record).encode("utf-8"), 0)
        before = os.environ.get(HELD_ENV)
        os.environ[HELD_ENV] = os.pathsep.join(filter(None, [before, str(lock)]))
        try:
            yield lock
        finally:
            if before is None:
                os.environ.pop(HELD_ENV, None)
            else:
                os.environ[HELD_ENV] = before
    finally:
        with contextlib.suppress(OSError):
            if os.stat(lock).st_ino == os.fstat(fd).st_ino:
                os.unlink(lock)  # while still locked, so no one locks a file that is about to vanish
        os.close(fd)

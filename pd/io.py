"""File input and output: atomic writes, UTF-8 reading, JSONL and content hashing.

Every artifact is written to a temporary name beside its target and renamed only when
complete: a killed job never leaves a file that looks finished. Every text file is read
through :func:`read_text`: UTF-8, a byte-order mark dropped, anything else refused with a
one-line :class:`~pd.errors.DataError` that names the file.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterable, Iterator

from pd.errors import DataError, OutputError


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside ``target``; rename it onto ``target`` on success.

    Works for files and for directories (the caller creates what it likes at the
    yielded path). On an exception the temporary is removed and the target untouched.
    The temporary's name is unique (``.<name>.<random>.tmp<suffix>``), so concurrent
    writers of one target never share it; the last rename wins.

    Args:
        target: the file or folder to (over)write; its parent folders are created.
        suffix: appended to the temporary's name (e.g. ``.safetensors`` for tools that look at it).

    Returns:
        A context manager yielding the temporary path (nothing exists there yet).

    What is kept is readable as a normal file is: every file and folder written at the temporary
    path gets at least the read (and, for folders, search) bits the umask allows (0644 / 0755
    under umask 022), also when the writer made it private (``mkstemp``, ``mkdtemp``: 0600 / 0700).

    Raises:
        FileNotFoundError: the block finished without creating anything at the temporary path.
        OutputError: the target's folder cannot be created or written (the message names it).
    """
    target = Path(target)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=f".tmp{suffix}", dir=target.parent)
    except PermissionError:
        raise OutputError(f"{target.parent}: cannot write there (permission denied); "
                          "make the folder writable or choose another output folder") from None
    except OSError as err:
        raise OutputError(f"{target.parent}: cannot write there ({err.strerror or err})") from None
    os.close(fd)
    tmp = Path(tmp_name)
    tmp.unlink()
    try:
        yield tmp
        if not tmp.exists():
            raise FileNotFoundError(f"nothing was written to {tmp} for {target}")
        _share(tmp)
        if target.is_dir() and not target.is_symlink():
            _rmtree(target)
        os.replace(tmp, target)
    except BaseException:
        if tmp.is_dir():
            _rmtree(tmp)
        elif tmp.exists():
            tmp.unlink()
        raise


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _share(path: Path) -> None:
    """Add the read bits (search bits for folders) the umask allows to ``path`` and, for a folder, all below it."""
    mask = _umask()
    for p in [path, *(path.rglob("*") if path.is_dir() and not path.is_symlink() else ())]:
        if p.is_symlink():
            continue
        st = p.stat()
        want = (0o755 if p.is_dir() else 0o644) & ~mask
        if st.st_mode & want != want:
            p.chmod((st.st_mode | want) & 0o7777)


def _rmtree(path: Path) -> None:
    import shutil

    shutil.rmtree(path)


# --------------------------------------------------------------------------- reading


def read_text(path: str | os.PathLike) -> str:
    """The text of a UTF-8 file, without a leading byte-order mark.

    Every text input a user supplies (documents, questions files, prompt overrides,
    instruction data) is read through here, so a BOM written by a spreadsheet program
    never reaches a column name, a JSON parser or a document's text.

    Args:
        path: the file to read.

    Returns:
        The decoded text, with ``\ufeff`` removed from its start (line endings as in the file).

    Raises:
        DataError: the file is not valid UTF-8 (the message names the file, the byte
            offset and the line of the first bad byte), not a regular file, or not readable.
        FileNotFoundError: the file does not exist (callers that take a user's path check first).
    """
    p = Path(path)
    if p.exists() and not p.is_file():
        raise DataError(f"{path}: not a regular file (a folder, pipe or device); give a text file")
    try:
        data = p.read_bytes()
    except (PermissionError, IsADirectoryError) as err:
        raise DataError(f"{path}: cannot read ({err.strerror})") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        raise DataError(f"{path}: not UTF-8 text (byte 0x{data[err.start]:02x} at offset {err.start}, line {line}); "
                        "save the file as UTF-8") from None
    return text.removeprefix("\ufeff")


def read_json(path: str | os.PathLike) -> Any:
    """One JSON document from a UTF-8 file (a leading BOM is dropped).

    Args:
        path: the file to read.

    Returns:
        The parsed value.

    Raises:
        DataError: the file is not UTF-8, not valid JSON or nested too deeply (the message names the file and line).
    """
    try:
        return json.loads(read_text(path))
    except json.JSONDecodeError as err:
        raise DataError(f"{path}:{err.lineno}: not valid JSON ({err.msg})") from None
    except RecursionError:
        raise DataError(f"{path}: JSON nested too deeply to read") from None


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """The rows of a JSONL file: one JSON object per line, blank lines skipped, BOM dropped.

    Lines are split at ``\n`` only (a raw U+2028 inside a JSON string, which
    :func:`write_jsonl` may write, stays in its row).

    Args:
        path: the file to read.

    Returns:
        One dict per non-blank line, in file order.

    Raises:
        DataError: the file is not UTF-8, a line is not valid JSON or nested too deeply, or a line holds
            something other than a JSON object (the message names file and line).
    """
    rows = []
    for lineno, line in enumerate(read_text(path).split("\n"), 1):
        line = line.strip()
        if not line:
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataError(f"{path}:{lineno}: not valid JSON ({err.msg})") from None
        except RecursionError:
            raise DataError(f"{path}:{lineno}: JSON nested too deeply to read") from None
        if not isinstance(row, dict):
            raise DataError(f"{path}:{lineno}: expected a JSON object ({{...}}), got a {_json_type(row)}")
        rows.append(row)
    return rows


def _json_type(value: Any) -> str:
    names = {list: "list", str: "string", bool: "boolean", int: "number", float: "number", type(None): "null"}
    return names.get(type(value), type(value).__name__)


# --------------------------------------------------------------------------- writing


def write_text(target: str | os.PathLike, text: str) -> None:
    """Write UTF-8 text atomically (see :func:`atomic_path`).

    Args:
        target: the file to (over)write; parent folders are created.
        text: the content.
    """
    with atomic_path(target) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(target: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as indented JSON with sorted keys, atomically.

    Args:
        target: the file to (over)write.
        obj: a JSON-serialisable value; paths, arrays (``tolist``) and dataclasses are converted.

    Raises:
        TypeError: a value cannot be serialised.
    """
    write_text(target, json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n")


def write_jsonl(target: str | os.PathLike, rows: Iterable[dict]) -> int:
    """Write rows as JSONL (one object per line, UTF-8 unescaped), atomically.

    Args:
        target: the file to (over)write.
        rows: the rows, in order.

    Returns:
        The number of rows written.

    Raises:
        TypeError: a value cannot be serialised (no file is left behind).
    """
    n = 0
    with atomic_path(target) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False, default=_json_default) + "\n")
                n += 1
    return n


def stats_path(path: str | os.PathLike) -> Path:
    """Where the stats of an output JSONL go: ``x.jsonl`` -> ``x.stats.json``.

    Args:
        path: the JSONL output.

    Returns:
        The stats file beside it.
    """
    p = Path(path)
    return p.with_name((p.name[:-6] if p.name.endswith(".jsonl") else p.name) + ".stats.json")


def write_with_stats(path: str | os.PathLike, rows: list[dict], stats: dict) -> None:
    """Write a generation output and its yield stats (:func:`stats_path`), each atomically.

    Args:
        path: the JSONL output.
        rows: its rows.
        stats: the counts written beside it as JSON.
    """
    write_jsonl(path, rows)
    write_json(stats_path(path), stats)


def _json_default(obj: Any) -> Any:
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if hasattr(obj, "__dataclass_fields__"):
        import dataclasses

        return dataclasses.asdict(obj)
    raise TypeError(f"cannot serialise {type(obj).__name__} to JSON")


def stable_hash(obj: Any, length: int = 16) -> str:
    """A content hash of a JSON-serialisable object, stable across runs and machines.

    Args:
        obj: the value (keys are sorted; paths, arrays and dataclasses as in :func:`write_json`).
        length: hex digits kept.

    Returns:
        The first ``length`` hex digits of the SHA-256 of its canonical JSON.
    """
    blob = json.dumps(obj, sort_keys=True, ensure_ascii=False, default=_json_default, separators=(",", ":"))
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:length]


def file_hash(path: str | os.PathLike, length: int = 16) -> str:
    """SHA-256 of a file's bytes, or of every file under a directory (names included).

    Args:
        path: a file or a folder.
        length: hex digits kept.

    Returns:
        The first ``length`` hex digits of the hash.

    Raises:
        FileNotFoundError: the path does not exist.
    """
    path = Path(path)
    h = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for p in files:
        if path.is_dir():
            h.update(str(p.relative_to(path)).encode())
        with open(p, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()[:length]

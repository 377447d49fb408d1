"""Reading user files and writing output files with one-line errors, shared by every importer and exporter.

Readers: UTF-8 text and JSON Lines. Writers: an output file is checked before any work (its folder must exist, it
must not be a folder) and written to a temporary file beside it that is renamed over it, so a failed write never
leaves a partial file behind.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from builder.errors import TsrError


def _os_reason(exc: OSError) -> str:
    return exc.strerror or type(exc).__name__


def read_bytes(path: Path, what: str = "file") -> bytes:
    """The file's bytes; a missing path, a folder or an unreadable file is a one-line error naming it."""
    path = Path(path)
    if not path.exists():
        raise TsrError(f"{path}: no such {what}")
    if path.is_dir():
        raise TsrError(f"{path}: is a folder, not a {what}")
    if not path.is_file():
        raise TsrError(f"{path}: not a regular file ({what})")
    try:
        return path.read_bytes()
    except OSError as exc:
        raise TsrError(f"{path}: cannot read {what} ({_os_reason(exc)})") from None


def decode_utf8(path: Path, raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise TsrError(f"{path}: line {line}: not UTF-8 text (byte {exc.start})") from None


def read_utf8(path: Path) -> str:
    """The file's text; an empty or non-UTF-8 file is an error naming the line."""
    raw = read_bytes(path)
    if not raw.strip():
        raise TsrError(f"{path}: file is empty")
    return decode_utf8(path, raw)


def read_text_file(path: Path, what: str) -> str:
    """The text of a small user file such as a template: missing, a folder, unreadable or not UTF-8 is one line."""
    path = Path(path)
    return decode_utf8(path, read_bytes(path, what))


def jsonl_records(path: Path, content: str) -> list[tuple[int, dict[str, Any]]]:
    """(line number, object) for every non-blank line; invalid JSON or a non-object names its line."""
    records = []
    for number, line in enumerate(content.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            hint = ""
            if number == 1 and line.strip() in ("[", "{"):
                hint = "; JSON Lines holds one complete object per line"
            raise TsrError(f"{path}: line {number}: invalid JSON ({exc.msg}){hint}") from None
        except RecursionError:
            raise TsrError(f"{path}: line {number}: invalid JSON (nested too deeply)") from None
        if not isinstance(record, dict):
            hint = " (JSON Lines holds one object per line, not an array)" if isinstance(record, list) else ""
            raise TsrError(f"{path}: line {number}: expected a JSON object, got {type(record).__name__}{hint}")
        records.append((number, record))
    return records


# ---- output files -------------------------------------------------------------------------------------------------


def check_output_file(path: Path, flag: str = "--out") -> Path:
    """Check, before any work, that `path` can be written as a file: its folder exists, it is not a folder."""
    path = Path(path)
    if path.is_dir():
        raise TsrError(f"{flag} {path}: is a folder; give a file name")
    if path.name in ("", ".", ".."):
        raise TsrError(f"{flag} {path}: not a file name")
    parent = path.parent
    if not parent.exists():
        raise TsrError(f"{flag} {path}: folder {parent} does not exist")
    if not parent.is_dir():
        raise TsrError(f"{flag} {path}: {parent} is not a folder")
    if path.exists() and not path.is_file():
        raise TsrError(f"{flag} {path}: exists and is not a regular file")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise TsrError(f"{flag} {path}: folder {parent} is not writable")
    return path


def check_output_dir(path: Path, flag: str = "--out") -> Path:
    """Check, before any work, that `path` is a folder or can be made one (missing parents are made later)."""
    path = Path(path)
    if path.exists():
        if not path.is_dir():
            raise TsrError(f"{flag} {path}: exists and is not a folder")
        if not os.access(path, os.W_OK | os.X_OK):
            raise TsrError(f"{flag} {path}: folder is not writable")
        return path
    ancestor = path.absolute().parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise TsrError(f"{flag} {path}: {ancestor} is not a folder")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise TsrError(f"{flag} {path}: cannot create it, {ancestor} is not writable")
    return path


def make_output_dir(path: Path, flag: str = "--out") -> Path:
    path = check_output_dir(path, flag)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise TsrError(f"{flag} {path}: cannot create folder ({_os_reason(exc)})") from None
    return path


def write_atomic(path: Path, write: Callable[[Path], object], flag: str = "--out") -> Path:
    """Call write(tmp) for a temporary file beside `path`, then rename it over `path`; on any failure remove it."""
    path = check_output_file(path, flag)
    try:
        handle, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise TsrError(f"{flag} {path}: cannot write ({_os_reason(exc)})") from None
    os.close(handle)
    tmp = Path(name)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise TsrError(f"{flag} {path}: cannot write ({_os_reason(exc)})") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def write_text_atomic(path: Path, text: str, flag: str = "--out") -> Path:
    return write_atomic(path, lambda tmp: tmp.write_text(text, "utf-8"), flag)


def write_bytes_atomic(path: Path, data: bytes, flag: str = "--out") -> Path:
    return write_atomic(path, lambda tmp: tmp.write_bytes(data), flag)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask

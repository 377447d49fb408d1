"""Reading user files with one-line errors: UTF-8 text and JSON Lines, shared by every importer."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from builder.errors import TsrError


def read_utf8(path: Path) -> str:
    """The file's text; an empty or non-UTF-8 file is an error naming the line."""
    raw = path.read_bytes()
    if not raw.strip():
        raise TsrError(f"{path}: file is empty")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise TsrError(f"{path}: line {line}: not UTF-8 text (byte {exc.start})") from None


def jsonl_records(path: Path, content: str) -> list[tuple[int, dict[str, Any]]]:
    """(line number, object) for every non-blank line; invalid JSON or a non-object names its line."""
    records = []
    for number, line in enumerate(content.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise TsrError(f"{path}: line {number}: invalid JSON ({exc.msg})") from None
        if not isinstance(record, dict):
            raise TsrError(f"{path}: line {number}: expected a JSON object, got {type(record).__name__}")
        records.append((number, record))
    return records

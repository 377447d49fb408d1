"""Prompt import: read JSONL, CSV or Parquet, deduplicate by normalized text, split into per-iteration chunks.

A prompt's id is the hash of its normalized text, so the same prompt has the same id in every set and every
store. A set's version is the hash of its prompt ids in order plus the chunking settings: importing the same
content again is a no-op.
"""

from __future__ import annotations

import csv
import io
import re
import unicodedata
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from builder.errors import TsrError
from builder.fingerprint import content_hash, stage_fingerprint
from builder.readers import jsonl_records, read_utf8
from builder.stages.base import Plan, Stage, rows_as_given, run_stage
from builder.store import Manifest, Store
from schemas.tables import PROMPTS

STAGE = "prompts.import"
CODE_VERSION = 1
TEXT_COLUMN_GUESSES = ("prompt", "instruction", "text", "question")
DEFAULT_PROMPTS = "prompts.jsonl"  # shipped in builder/data
FIX = "pass --chunks N or --chunk-size N"  # how a user fixes too many chunks for a file's prompts


@dataclass(frozen=True)
class Chunking:
    """How a prompt set is split into disjoint per-iteration chunks (exactly one of the two sizes is set)."""

    chunks: int | None = None
    chunk_size: int | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if (self.chunks is None) == (self.chunk_size is None):
            raise TsrError("give exactly one of --chunks and --chunk-size")
        for flag, value in (("--chunks", self.chunks), ("--chunk-size", self.chunk_size)):
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int):
                raise TsrError(f"{flag} must be a whole number, got {value!r}")
            if value < 1:
                raise TsrError(f"{flag} must be at least 1, got {value}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise TsrError(f"--seed must be a whole number, got {self.seed!r}")


def normalize(text: str) -> str:
    """The dedup key of a prompt: NFKC, case-folded, whitespace collapsed."""
    return re.sub(r"\s+", " ", unicodedata.normalize("NFKC", text)).strip().casefold()


def prompt_id(text: str) -> str:
    return content_hash(normalize(text))


def read_texts(path: Path, text_column: str | None = None) -> list[str]:
    """The prompt texts of a JSONL, CSV or Parquet file, in file order, with one-line errors on bad input."""
    if not path.exists():
        raise TsrError(f"{path}: no such file")
    if not path.is_file():
        raise TsrError(f"{path}: not a file")
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        rows = _read_parquet(path, text_column)
    else:
        content = read_utf8(path)
        if suffix in (".jsonl", ".ndjson", ".json"):
            rows = _read_jsonl(path, content, text_column)
        elif suffix in (".csv", ".tsv"):
            rows = _read_csv(path, content, text_column, "\t" if suffix == ".tsv" else ",")
        else:
            raise TsrError(f"{path}: unknown format {suffix or '(no suffix)'}; use .jsonl, .csv or .parquet")
    if not rows:
        raise TsrError(f"{path}: file has no rows")
    return rows


def _pick_column(path: Path, columns: list[str], text_column: str | None) -> str:
    if text_column is not None:
        if text_column not in columns:
            raise TsrError(f"{path}: no column {text_column!r} (columns: {_names(columns)})")
        return text_column
    for guess in TEXT_COLUMN_GUESSES:
        if guess in columns:
            return guess
    raise TsrError(
        f"{path}: no prompt column among {_names(columns)}; name it with --text-column"
    )


def _check_text(path: Path, where: str, column: str, value: object) -> str:
    if not isinstance(value, str):
        raise TsrError(f"{path}: {where}: column {column!r} is {type(value).__name__}, expected text")
    if not value.strip():
        raise TsrError(f"{path}: {where}: column {column!r} is empty")
    if "\x00" in value:
        raise TsrError(f"{path}: {where}: column {column!r} holds a NUL byte (is this a binary file?)")
    return value


def _read_jsonl(path: Path, content: str, text_column: str | None) -> list[str]:
    texts: list[str] = []
    column = None
    for number, record in jsonl_records(path, content):
        if column is None:
            column = _pick_column(path, list(record), text_column)
        if column not in record:
            raise TsrError(f"{path}: line {number}: missing column {column!r}")
        texts.append(_check_text(path, f"line {number}", column, record[column]))
    return texts


def _read_csv(path: Path, content: str, text_column: str | None, delimiter: str) -> list[str]:
    lines = io.StringIO(content, newline="").readlines()  # physical lines, split as the csv module splits them
    reader = csv.reader(lines, delimiter=delimiter)
    records: list[tuple[int, list[str]]] = []  # (first physical line, fields); the header is line 1
    start = 1
    try:
        for fields in reader:
            if fields:  # a blank line is no record (as csv.DictReader has it)
                records.append((start, fields))
            start = reader.line_num + 1
    except csv.Error as exc:
        hint = "; is a quote left open?" if "field larger than field limit" in str(exc) else ""
        raise TsrError(f"{path}: line {start}: malformed CSV ({exc}){hint}") from None
    if records:
        _check_closed_quote(path, lines, records[-1][0], delimiter)
    if not records:
        return []
    header = records[0][1]
    column = _pick_column(path, header, text_column)
    index = header.index(column)
    return [_check_text(path, f"line {line}", column, fields[index] if index < len(fields) else None)
            for line, fields in records[1:]]


def _check_closed_quote(path: Path, lines: list[str], start: int, delimiter: str) -> None:
    """A quote that is never closed makes the last record run to the end of the file: an error, not a prompt."""
    tail = lines[start - 1:]
    try:
        for _ in csv.reader(tail, delimiter=delimiter, strict=True):
            pass
    except csv.Error as exc:
        if "unexpected end of data" in str(exc):
            raise TsrError(f"{path}: line {start}: malformed CSV (a quote opened here is never closed, so the "
                           f"field would run to the end of the file at line {len(lines)})") from None


def _names(columns: list[str]) -> str:
    """Column names fit for a one-line message (a quoted header or a JSON key can hold line breaks)."""
    shown = [name if name.isprintable() else repr(name) for name in columns[:20]]
    more = f" and {len(columns) - 20} more" if len(columns) > 20 else ""
    return (", ".join(shown) or "none") + more


def _read_parquet(path: Path, text_column: str | None) -> list[str]:
    try:
        schema = pq.read_schema(path)
    except (OSError, pa.ArrowException) as exc:
        raise TsrError(f"{path}: not a readable Parquet file ({str(exc).splitlines()[0]})") from None
    column = _pick_column(path, schema.names, text_column)
    field = schema.field(column)
    if not (pa.types.is_string(field.type) or pa.types.is_large_string(field.type)):
        raise TsrError(f"{path}: column {column!r} has type {field.type}, expected text")
    try:
        values = pq.read_table(path, columns=[column]).column(column).to_pylist()
    except (OSError, pa.ArrowException) as exc:
        raise TsrError(f"{path}: not a readable Parquet file ({str(exc).splitlines()[0]})") from None
    return [_check_text(path, f"row {i + 1}", column, value) for i, value in enumerate(values)]


def check_chunking(texts: list[str], where: str, chunking: Chunking, fix: str = FIX) -> None:
    """Fail, naming the file, when the distinct prompts cannot fill the chunks (before anything is written)."""
    distinct = len({prompt_id(text) for text in texts})
    _check_fill(distinct, len(texts), where, chunking, fix)


def _check_fill(distinct: int, rows: int, where: str, chunking: Chunking, fix: str) -> None:
    if chunking.chunks is not None and chunking.chunks > distinct:
        plural = "prompt" if distinct == 1 else "prompts"
        raise TsrError(f"{where}: {distinct} distinct {plural} ({rows - distinct} duplicates dropped) cannot fill "
                       f"{chunking.chunks} chunks; {fix}")


def check_prompt_file(path: Path, text_column: str | None, chunking: Chunking, fix: str = FIX) -> None:
    """Everything `import_prompts` checks, without a store: the file's rows, and that they fill the chunks."""
    check_chunking(read_texts(path, text_column), str(path), chunking, fix)


def build_prompt_set(texts: list[str], source: str, chunking: Chunking, *, where: str | None = None,
                     fix: str = FIX) -> tuple[str, pa.Table, dict]:
    """Deduplicate, id and chunk `texts`. Returns (set version, table, stats)."""
    first_seen: dict[str, tuple[int, str]] = {}
    for position, text in enumerate(texts):
        first_seen.setdefault(prompt_id(text), (position, text.strip()))
    ids = list(first_seen)
    _check_fill(len(ids), len(texts), where or source, chunking, fix)
    config = {"prompt_ids": content_hash(ids), "chunks": chunking.chunks, "chunk_size": chunking.chunk_size,
              "seed": chunking.seed}
    version = stage_fingerprint(STAGE, CODE_VERSION, config, parents=[])
    # Seeded shuffle that does not depend on Python's RNG: order by hash(seed, id).
    shuffled = sorted(ids, key=lambda pid: content_hash([chunking.seed, pid]))
    total = len(shuffled)
    if chunking.chunks is not None:
        chunk_of = {pid: rank * chunking.chunks // total + 1 for rank, pid in enumerate(shuffled)}
    else:
        assert chunking.chunk_size is not None
        chunk_of = {pid: rank // chunking.chunk_size + 1 for rank, pid in enumerate(shuffled)}
    table = pa.Table.from_pydict(
        {
            "prompt_id": ids,
            "text": [first_seen[pid][1] for pid in ids],
            "source": [source] * total,
            "set_version": [version] * total,
            "chunk": [chunk_of[pid] for pid in ids],
            "position": [first_seen[pid][0] for pid in ids],
        },
        schema=PROMPTS,
    )
    stats = {"rows_read": len(texts), "duplicates": len(texts) - total, "prompts": total,
             "chunks": max(chunk_of.values())}
    return version, table, stats


PROMPTS_STAGE = Stage(name=STAGE, code_version=CODE_VERSION, table="prompts", partition=("set",),
                      id_column="prompt_id", reads=("prompt_id", "text", "chunk", "position"), compute=rows_as_given)


def import_prompts(
    store: Store, path: Path, *, text_column: str | None = None, chunking: Chunking, fix: str = FIX
) -> tuple[Manifest, bool]:
    """Import a prompt file as a prompt-set version. Returns (manifest, created) where created is False on a no-op."""
    texts = read_texts(path, text_column)
    version, table, stats = build_prompt_set(texts, path.name, chunking, where=str(path), fix=fix)
    existing = store.manifest(version)
    if existing is not None:
        return existing, False
    config = {"source": path.name, "text_column": text_column, "chunks": chunking.chunks,
              "chunk_size": chunking.chunk_size, "seed": chunking.seed}
    # A prompt set's id is the hash of its content and chunking (build_prompt_set), not a stage fingerprint.
    plan = Plan(config=config, parents=[], partition_value=version, snapshot_id=None, version=version, rows=table,
                extra_stats=lambda _rows: stats)
    run_stage(store, PROMPTS_STAGE, plan)
    return store.manifest(version), True


def default_prompts_path() -> Path:
    return Path(str(resources.files("builder") / "data" / DEFAULT_PROMPTS))


def prompt_chunk(store: Store, prompt_set: str, chunk: int, limit: int | None = None) -> pl.DataFrame:
    """Prompts (prompt_id, text) of one chunk of a prompt set, in file order, optionally only the first `limit`."""
    table = pl.from_arrow(store.read("prompts", versions=[prompt_set]))
    assert isinstance(table, pl.DataFrame)
    selected = table.filter(pl.col("chunk") == chunk).sort("position").select("prompt_id", "text")
    if selected.is_empty():
        raise TsrError(f"prompt set {prompt_set} has {table['chunk'].max()} chunk(s); chunk {chunk} does not exist")
    return selected.head(limit) if limit else selected


def resolve_prompt_set(store: Store, prompt_set: str | None, chunks: int) -> str:
    """The prompt-set version a command names, or the shipped default prompts (imported once, in `chunks`)."""
    if prompt_set:
        manifest = store.find_version(prompt_set)
        if manifest.table != "prompts":
            raise TsrError(f"version {manifest.version} is a {manifest.table} version, not a prompt set")
        return manifest.version
    manifest, _ = import_prompts(store, default_prompts_path(), chunking=Chunking(chunks=chunks))
    return manifest.version

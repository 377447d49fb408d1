"""DuckDB over the store: one view per table, plus `versions` (the manifests) and named queries.

Views read exactly the files that manifests list, so a version being written (or a file orphaned by a crash)
never shows. The plain duckdb CLI can read the same folders with a glob; see the README.
"""

from __future__ import annotations

import json
import re
from importlib import resources
from pathlib import Path

import duckdb
import pyarrow as pa

from builder.errors import TsrError
from builder.store import Store
from schemas.tables import MANIFEST, PARTITIONS, TABLES


def connect(store: Store, *, verify: bool = True) -> duckdb.DuckDBPyConnection:
    """A sandboxed in-memory DuckDB connection with a view per table of `store`.

    The session may read the files the manifests list and nothing else: external access is off except for an
    allow-list of exactly those files, extensions neither install nor load, nothing spills to a temp folder, and
    the configuration is locked so no query can undo any of it. `check_read_only` is the second layer: the file
    allow-list alone would let a COPY overwrite a listed file.
    """
    if verify:
        store.verify()
    con = duckdb.connect(":memory:", config={"autoinstall_known_extensions": False,
                                             "autoload_known_extensions": False})
    views: list[str] = []
    readable: list[str] = []
    for table, schema in TABLES.items():
        files = [str(p.absolute()) for p in store.files(table)]
        readable += files
        if files:
            partitions = PARTITIONS[table]
            # A view cannot take prepared parameters, so the file list is inlined as SQL string literals.
            listing = ", ".join(_sql_string(f) for f in files)
            views.append(
                f"CREATE VIEW {table} AS SELECT * FROM read_parquet([{listing}], "
                f"hive_partitioning={str(bool(partitions)).lower()}, hive_types_autocast=false, union_by_name=true)"
            )
        else:
            # An empty table still answers queries (count(*) = 0) instead of failing on a missing view.
            columns = [(f.name, duck_type(f.type)) for f in schema] + [(k, "VARCHAR") for k in PARTITIONS[table]]
            views.append(f"CREATE VIEW {table} AS SELECT {_typed_nulls(columns)} WHERE false")
    # The manifests themselves, read as JSON by DuckDB. (Registering an Arrow table would make DuckDB import
    # pandas, which costs more than the rest of a small query.)
    columns = [(f.name, duck_type(f.type)) for f in MANIFEST]
    manifest_files = [str((store.root / "manifests" / f"{m.version}.json").absolute()) for m in store.manifests()]
    readable += manifest_files
    if manifest_files:
        listing = ", ".join(_sql_string(f) for f in manifest_files)
        spec = ", ".join(f"{_sql_string(name)}: {_sql_string(kind)}" for name, kind in columns)
        views.append(f"CREATE VIEW versions AS SELECT * FROM read_json([{listing}], format='auto', "
                     f"columns={{{spec}}})")
    else:
        views.append(f"CREATE VIEW versions AS SELECT {_typed_nulls(columns)} WHERE false")
    # allowed_paths must be set while external access is still on; the lock comes last.
    con.execute(f"SET allowed_paths = [{', '.join(_sql_string(f) for f in readable)}]")
    con.execute("SET temp_directory = ''")
    con.execute("SET enable_external_access = false")
    for view in views:
        con.execute(view)
    con.execute("SET lock_configuration = true")
    return con


# Statement kinds that only read. EXPLAIN is allowed when what it explains is itself a read (EXPLAIN ANALYZE runs
# it); MULTI is how DuckDB parses PIVOT, a read that declares a temporary enum first.
_READ_STATEMENTS = {"SELECT", "EXPLAIN", "MULTI"}
_EXPLAIN_PREFIX = re.compile(r"^\s*explain(\s+analy[sz]e)?\b", re.IGNORECASE)
_PIVOT_PREFIX = re.compile(r"^\s*(with\b.*\b)?(un)?pivot\b", re.IGNORECASE | re.DOTALL)


def check_read_only(con: duckdb.DuckDBPyConnection, sql: str) -> None:
    """Refuse, with a one-line error naming it, any statement of `sql` that is not a read."""
    try:
        statements = con.extract_statements(sql)
    except duckdb.Error as exc:
        raise TsrError(f"SQL error: {_first_line(exc)}") from None
    if not statements:
        raise TsrError("SQL error: no statement to run")
    for statement in statements:
        kind = statement.type.name
        text = statement.query.strip()
        if kind == "EXPLAIN":
            check_read_only(con, _EXPLAIN_PREFIX.sub("", text, count=1))
            continue
        if kind == "MULTI" and not _PIVOT_PREFIX.match(text):
            kind = "MULTI (not a PIVOT)"
        if kind not in _READ_STATEMENTS:
            shown = " ".join(text.split())
            shown = shown if len(shown) <= 60 else shown[:57] + "..."
            raise TsrError(f"SQL refused: {kind} statement {shown!r}; tsr sql only reads the store "
                           "(SELECT, WITH, DESCRIBE, SUMMARIZE, PIVOT, EXPLAIN)")


def duck_type(kind: pa.DataType) -> str:
    """The DuckDB type of an Arrow type, for the types the declared schemas use."""
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        return "VARCHAR"
    if pa.types.is_list(kind):
        return f"{duck_type(kind.value_type)}[]"
    if pa.types.is_struct(kind):
        return "STRUCT(" + ", ".join(f'"{f.name}" {duck_type(f.type)}' for f in kind) + ")"
    if pa.types.is_timestamp(kind):
        return "TIMESTAMPTZ" if kind.tz else "TIMESTAMP"
    simple = {pa.int32(): "INTEGER", pa.int64(): "BIGINT", pa.float64(): "DOUBLE", pa.float32(): "FLOAT",
              pa.bool_(): "BOOLEAN"}
    if kind in simple:
        return simple[kind]
    raise TypeError(f"no DuckDB type for {kind}")


def _typed_nulls(columns: list[tuple[str, str]]) -> str:
    return ", ".join(f'CAST(NULL AS {kind}) AS "{name}"' for name, kind in columns)


def _sql_string(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def run_query(store: Store, sql: str) -> pa.Table:
    con = connect(store)
    try:
        check_read_only(con, sql)
        relation = con.sql(sql)
        if relation is None:  # only reads get here; a read always has a result, but be safe
            return pa.table({})
        # duckdb 2 renamed fetch_arrow_table to to_arrow_table; support both.
        fetch = getattr(relation, "to_arrow_table", None) or relation.fetch_arrow_table
        return fetch()
    except duckdb.Error as exc:
        raise TsrError(f"SQL error: {_first_line(exc)}") from None
    finally:
        con.close()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def named_queries() -> dict[str, str]:
    """The SQL files shipped in builder/queries, by name (file stem)."""
    folder = resources.files("builder") / "queries"
    found = {}
    for entry in folder.iterdir():
        if entry.name.endswith(".sql"):
            found[entry.name[: -len(".sql")]] = entry.read_text("utf-8")
    return dict(sorted(found.items()))


def named_query(name: str) -> str:
    queries = named_queries()
    if name not in queries:
        raise TsrError(f"no named query {name!r}; known: {', '.join(queries) or 'none'}")
    return queries[name]


def write_result(result: pa.Table, fmt: str, out: Path | None) -> str | None:
    """Render a query result as table, csv, json (one object per line) or parquet (needs `out`)."""
    import polars as pl

    frame = pl.from_arrow(result)
    assert isinstance(frame, pl.DataFrame)
    from builder.readers import check_output_file, write_atomic, write_text_atomic

    if out is not None:
        check_output_file(out)  # a missing folder or a folder as --out: one line, before rendering
    if fmt == "parquet":
        if out is None:
            raise TsrError("--format parquet needs --out FILE")
        write_atomic(out, frame.write_parquet)
        return None
    if fmt == "csv":
        text = frame.write_csv()
    elif fmt == "json":
        text = "".join(json.dumps(row, default=str, ensure_ascii=False) + "\n" for row in frame.to_dicts())
    else:
        with pl.Config(tbl_rows=100, tbl_cols=-1, fmt_str_lengths=80, tbl_hide_dataframe_shape=True):
            text = str(frame) + "\n"
    if out is not None:
        write_text_atomic(out, text)  # a temporary file beside it, renamed: never a partial file
        return None
    return text

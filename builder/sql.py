"""DuckDB over the store: one view per table, plus `versions` (the manifests) and named queries.

Views read exactly the files that manifests list, so a version being written (or a file orphaned by a crash)
never shows. The plain duckdb CLI can read the same folders with a glob; see the README.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

import duckdb
import pyarrow as pa

from builder.errors import TsrError
from builder.store import Store
from schemas.tables import MANIFEST, PARTITIONS, TABLES


def connect(store: Store, *, verify: bool = True) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB connection with a view per table of `store`."""
    if verify:
        store.verify()
    con = duckdb.connect(":memory:")
    for table, schema in TABLES.items():
        files = [str(p) for p in store.files(table)]
        if files:
            partitions = PARTITIONS[table]
            # A view cannot take prepared parameters, so the file list is inlined as SQL string literals.
            listing = ", ".join(_sql_string(f) for f in files)
            con.execute(
                f"CREATE VIEW {table} AS SELECT * FROM read_parquet([{listing}], "
                f"hive_partitioning={str(bool(partitions)).lower()}, hive_types_autocast=false, union_by_name=true)"
            )
        else:
            # An empty table still answers queries (count(*) = 0) instead of failing on a missing view.
            columns = [(f.name, duck_type(f.type)) for f in schema] + [(k, "VARCHAR") for k in PARTITIONS[table]]
            con.execute(f"CREATE VIEW {table} AS SELECT {_typed_nulls(columns)} WHERE false")
    # The manifests themselves, read as JSON by DuckDB. (Registering an Arrow table would make DuckDB import
    # pandas, which costs more than the rest of a small query.)
    columns = [(f.name, duck_type(f.type)) for f in MANIFEST]
    manifest_files = [str(store.root / "manifests" / f"{m.version}.json") for m in store.manifests()]
    if manifest_files:
        listing = ", ".join(_sql_string(f) for f in manifest_files)
        spec = ", ".join(f"{_sql_string(name)}: {_sql_string(kind)}" for name, kind in columns)
        con.execute(f"CREATE VIEW versions AS SELECT * FROM read_json([{listing}], format='auto', "
                    f"columns={{{spec}}})")
    else:
        con.execute(f"CREATE VIEW versions AS SELECT {_typed_nulls(columns)} WHERE false")
    return con


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
        relation = con.sql(sql)
        if relation is None:  # a statement without a result (CREATE, SET, ...)
            return pa.table({})
        # duckdb 2 renamed fetch_arrow_table to to_arrow_table; support both.
        fetch = getattr(relation, "to_arrow_table", None) or relation.fetch_arrow_table
        return fetch()
    except duckdb.Error as exc:
        message = str(exc).strip().splitlines()[0]
        raise TsrError(f"SQL error: {message}") from None


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
    if fmt == "parquet":
        if out is None:
            raise TsrError("--format parquet needs --out FILE")
        frame.write_parquet(out)
        return None
    if fmt == "csv":
        text = frame.write_csv()
    elif fmt == "json":
        text = "".join(json.dumps(row, default=str, ensure_ascii=False) + "\n" for row in frame.to_dicts())
    else:
        with pl.Config(tbl_rows=100, tbl_cols=-1, fmt_str_lengths=80, tbl_hide_dataframe_shape=True):
            text = str(frame) + "\n"
    if out is not None:
        Path(out).write_text(text, "utf-8")
        return None
    return text

"""Check a table against its declared schema and say, in one line, what is wrong."""

from __future__ import annotations

import pyarrow as pa

from schemas.tables import TABLES


class SchemaError(ValueError):
    """A table does not match its declared schema. The message names table, column and problem."""


def check_table(table: pa.Table, name: str, schema: pa.Schema | None = None) -> pa.Table:
    """Return `table` cast to the declared schema of table `name`, or raise SchemaError.

    Extra columns are an error (they would vanish silently otherwise); missing columns, mistyped columns that
    cannot be cast losslessly, and nulls in non-nullable columns are errors too.
    """
    schema = schema or TABLES[name]
    problems: list[str] = []
    missing = [f.name for f in schema if f.name not in table.column_names]
    if missing:
        problems.append(f"missing column(s) {', '.join(missing)}")
    extra = [c for c in table.column_names if c not in schema.names]
    if extra:
        problems.append(f"unexpected column(s) {', '.join(extra)}")
    if problems:
        raise SchemaError(f"table {name}: {'; '.join(problems)}")
    columns = []
    for field in schema:
        column = table.column(field.name)
        if column.type != field.type:
            try:
                column = column.cast(field.type, safe=True)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                raise SchemaError(
                    f"table {name}: column {field.name} has type {column.type}, expected {field.type}"
                ) from None
        if not field.nullable and column.null_count:
            raise SchemaError(f"table {name}: column {field.name} has {column.null_count} null value(s)")
        columns.append(column)
    return pa.Table.from_arrays(columns, schema=schema)

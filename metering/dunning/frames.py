"""Small frame helpers shared by the dunning modules: conform to a schema, read optional tables."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import duckdb
import polars as pl


def conform(frame: pl.DataFrame | None, schema: dict[str, pl.DataType]) -> pl.DataFrame:
    """Select the schema's columns in order, casting; columns the frame lacks become NULL."""
    if frame is None:
        return pl.DataFrame(schema=schema)
    exprs = [
        (pl.col(name) if name in frame.columns else pl.lit(None)).cast(dtype).alias(name)
        for name, dtype in schema.items()
    ]
    return frame.select(exprs)


def read_frame(con: duckdb.DuckDBPyConnection, sql: str, params: Sequence[Any] = ()) -> pl.DataFrame:
    """A parameterised query as a Polars frame (Decimals stay Decimals)."""
    return pl.from_arrow(con.execute(sql, list(params)).to_arrow_table())  # type: ignore[return-value]


def table_columns(con: duckdb.DuckDBPyConnection, table: str) -> set[str]:
    """The columns of `table` in the current schema (empty when the table does not exist)."""
    rows = con.execute(
        "SELECT column_name FROM information_schema.columns"
        " WHERE table_name = ? AND table_schema = current_schema()",
        [table],
    ).fetchall()
    return {r[0] for r in rows}


def table_exists(con: duckdb.DuckDBPyConnection, table: str) -> bool:
    return bool(table_columns(con, table))

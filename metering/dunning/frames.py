"""Small frame helpers shared by the dunning modules: conform to a schema, tell whether an optional
table is there."""

from __future__ import annotations

import duckdb
import polars as pl

from metering.warehouse import table_columns


def conform(frame: pl.DataFrame | None, schema: dict[str, pl.DataType]) -> pl.DataFrame:
    """Select the schema's columns in order, casting; columns the frame lacks become NULL."""
    if frame is None:
        return pl.DataFrame(schema=schema)
    exprs = [
        (pl.col(name) if name in frame.columns else pl.lit(None)).cast(dtype).alias(name)
        for name, dtype in schema.items()
    ]
    return frame.select(exprs)


def table_exists(con: duckdb.DuckDBPyConnection, table: str) -> bool:
    return bool(table_columns(con, table))

"""Who is suspended for non-payment, published for the product.

A customer is suspended while at least one of its invoices has a performed `suspend` step and is
still unpaid (`in_dunning` or `written_off`). Paying (or voiding) the invoice lifts it at the next
publication. Published as the `suspensions` table and as `suspensions.csv` / `suspensions.json` in
the published folder (`METERING_PUBLISHED_DIR`, default `data/published/`), each replaced
atomically (temp file, fsync, rename): a reader sees the old list or the new one, never half.
"""

from __future__ import annotations

import json
import os
from datetime import datetime
from pathlib import Path

import duckdb
import polars as pl

from metering import config
from metering.dunning.money import minor_to_text_expr
from metering.dunning.frames import conform
from metering.dunning.state import IN_DUNNING, STATE_SCHEMA, TS, WRITTEN_OFF, utc
from metering.files import replacing_all
from metering.warehouse import replace_rows

SUSPENDED_STATES = (IN_DUNNING, WRITTEN_OFF)
SUSPENSION_SCHEMA: dict[str, pl.DataType] = {
    "stripe_customer": pl.String, "customer_id": pl.String, "currency": pl.String,
    "invoice_ids": pl.String, "amount_remaining_minor": pl.Int64, "amount_remaining": pl.String,
    "suspended_since": TS, "published_at": TS,
}


PUBLISHED_ENV = "METERING_PUBLISHED_DIR"


def published_dir(explicit: str | os.PathLike[str] | None = None) -> Path:
    """Where suspensions are published: explicit, else `METERING_PUBLISHED_DIR`, else `data/published/`."""
    return config.resolve_path(explicit, PUBLISHED_ENV, lambda: config.data_dir() / "published")


def compute_suspensions(state: pl.DataFrame, ledger: pl.DataFrame, now: datetime) -> pl.DataFrame:
    """One row per customer x currency currently suspended (SUSPENSION_SCHEMA)."""
    suspended = (
        ledger.filter((pl.col("action") == "suspend") & (pl.col("status") == "done"))
        .select("invoice_id", pl.col("completed_at").alias("suspended_at"))
        .join(
            conform(state, STATE_SCHEMA).filter(pl.col("state").is_in(SUSPENDED_STATES)),
            on="invoice_id", how="inner",
        )
        .with_columns(stripe_customer=pl.coalesce("stripe_customer", "customer_id"))
    )
    out = (
        suspended.sort("invoice_id")
        .group_by("stripe_customer", "currency")
        .agg(
            pl.col("customer_id").drop_nulls().first(),
            pl.col("invoice_id").str.join(",").alias("invoice_ids"),
            pl.col("amount_remaining").fill_null(0).sum().alias("amount_remaining_minor"),
            pl.col("suspended_at").min().alias("suspended_since"),
        )
        .with_columns(
            amount_remaining=minor_to_text_expr("amount_remaining_minor", "currency"),
            published_at=pl.lit(utc(now), dtype=TS),
        )
    )
    return conform(out, SUSPENSION_SCHEMA).sort("stripe_customer", "currency")


def _iso(value: datetime | None) -> str | None:
    return value.isoformat().replace("+00:00", "Z") if value is not None else None


def publish_suspensions(
    con: duckdb.DuckDBPyConnection, suspensions: pl.DataFrame, now: datetime,
    folder: str | os.PathLike[str] | None = None,
) -> Path:
    """Replace the `suspensions` table and the CSV/JSON files, together: the files are written beside
    theirs, then the table committed, then the files put in place (a full disk once left the table
    updated and the files, which the product reads, on the old list). Returns the folder."""
    target = published_dir(folder)
    text = suspensions.with_columns(
        pl.col("suspended_since", "published_at").dt.strftime("%Y-%m-%dT%H:%M:%S%.fZ")
    )
    document = {
        "published_at": _iso(utc(now)),
        "suspended": [
            {
                "customer_id": row["customer_id"],
                "stripe_customer": row["stripe_customer"],
                "currency": row["currency"],
                "invoice_ids": row["invoice_ids"].split(","),
                "amount_remaining_minor": row["amount_remaining_minor"],
                "amount_remaining": row["amount_remaining"],
                "suspended_since": _iso(row["suspended_since"]),
            }
            for row in suspensions.iter_rows(named=True)
        ],
    }
    # both files written first, the table committed, and only then the files put in place: a commit
    # that fails (a full disk meets the log there first) leaves the files as they were too
    with replacing_all([target / "suspensions.csv", target / "suspensions.json"]) as (csv_tmp, json_tmp):
        csv_tmp.write_bytes(text.write_csv().encode("utf-8"))
        json_tmp.write_text(json.dumps(document, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        replace_rows(con, "suspensions", "TRUE", [], suspensions)
    return target

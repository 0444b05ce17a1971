"""`metering publish`: the analyst snapshot."""

from __future__ import annotations

import click

from metering import warehouse
from metering.cli.options import UserPath


@click.command()
@click.option("--warehouse", "warehouse_path", type=UserPath(dir_okay=False), default=None,
              help="Warehouse file (default: $METERING_WAREHOUSE or data/warehouse.duckdb).")
@click.option("--snapshot", type=UserPath(dir_okay=False), default=None,
              help="Snapshot file (default: $METERING_SNAPSHOT or data/snapshot.duckdb).")
def publish(warehouse_path: str | None, snapshot: str | None) -> None:
    """Copy the warehouse to the read-only analyst snapshot and swap it in atomically."""
    dest = warehouse.publish(warehouse_path, snapshot)
    click.echo(f"published {dest}")

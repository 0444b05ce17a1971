"""Partitions, defined once and imported everywhere (all time partitions share one start date, UTC)."""

from __future__ import annotations

import dagster as dg

START_DATE = "2026-01-01"

daily_usage = dg.DailyPartitionsDefinition(start_date=START_DATE, timezone="UTC", end_offset=1)
"""One partition per UTC event date, today included (`end_offset=1`): usage arriving today is
ingested and pushed hourly. Ingestion, aggregation, pushes."""

monthly_billing = dg.MonthlyPartitionsDefinition(start_date=START_DATE, timezone="UTC", end_offset=1)
"""One partition per calendar month (keys look like 2026-10-01), the current month included so
invoice previews are live: rating, reconciliation, reports. A partition holds the billing periods
that START in its month."""

RANGE_START_TAG, RANGE_END_TAG = "dagster/asset_partition_range_start", "dagster/asset_partition_range_end"
"""The tags of a single-run backfill over a partition range (a run of many keys has no `dagster/partition`)."""

"""Partitions, defined once and imported everywhere (all time partitions share one start date, UTC)."""

from __future__ import annotations

import dagster as dg

START_DATE = "2026-01-01"

daily_usage = dg.DailyPartitionsDefinition(start_date=START_DATE, timezone="UTC")
"""One partition per UTC event date: ingestion, aggregation, pushes."""

monthly_billing = dg.MonthlyPartitionsDefinition(start_date=START_DATE, timezone="UTC")
"""One partition per calendar month (keys look like 2026-10-01): rating, reconciliation, reports."""

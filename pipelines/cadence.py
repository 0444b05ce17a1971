"""Whether schedules and the raw-file sensor start running: only in production.

Everything ships stopped (turn it on in the UI, or with `DAGSTER_HOME=$PWD dagster schedule start` /
`dagster sensor start` from the repo root) unless `METERING_ENV=production`, where every schedule and `raw_usage_files_sensor` start
RUNNING. The webhook landing sensor always runs: it only moves what the receiver already stored.
"""

from __future__ import annotations

import os

import dagster as dg


def in_production() -> bool:
    return os.environ.get("METERING_ENV") == "production"


SCHEDULE_STATUS = dg.DefaultScheduleStatus.RUNNING if in_production() else dg.DefaultScheduleStatus.STOPPED
SENSOR_STATUS = dg.DefaultSensorStatus.RUNNING if in_production() else dg.DefaultSensorStatus.STOPPED
